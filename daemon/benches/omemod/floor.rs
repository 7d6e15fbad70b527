//! The floor: what the operations are made of, measured alone. X25519, Ed25519 sign / verify,
//! one small SQLite commit per durability, and a decrypt's commit part by part through omemod's
//! own store. (The empty RPC round trip is measured with the daemon, in [`crate::rpc`].)

use std::time::Instant;

use protocol_core::keys::{xeddsa, IdentityKeyPair, KeyPair};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::config::Cfg;
use crate::stats::{fig, time_each, Report};

pub fn bench_floor(cfg: &Cfg, r: &mut Report) {
    println!("\n== floor ==");
    let mut rng = StdRng::seed_from_u64(1);
    let k1 = KeyPair::generate(&mut rng);
    let k2 = KeyPair::generate(&mut rng);
    let n = cfg.n(3000, 300);
    r.fig(
        "floor.x25519",
        time_each(100, n, || {
            std::hint::black_box(k1.private.diffie_hellman(&k2.public).unwrap());
        }),
    );
    let id = IdentityKeyPair::generate(&mut rng);
    let z = [7u8; 64];
    let msg = b"32 bytes of a signed prekey....";
    r.fig(
        "floor.ed25519_sign",
        time_each(100, n, || {
            std::hint::black_box(id.sign_twomemo(msg, &z));
        }),
    );
    let sig = id.sign_twomemo(msg, &z);
    r.fig(
        "floor.ed25519_verify",
        time_each(100, n, || {
            xeddsa::ed25519_verify(id.ed25519(), msg, &sig).unwrap();
        }),
    );
    for &d in &cfg.durabilities {
        commit_floor(cfg, r, d);
    }
    commit_parts(cfg, r);
}

/// What a decrypt's commit costs in SQLite, part by part, through omemod's own store
/// (`--durability normal`, one commit per call, the variants in alternating blocks): the
/// session row alone; with the redelivery row beside it (issue 8); with a write to another
/// page instead (what a second WAL frame costs by itself); with the session row 1.2 KB larger
/// instead (what keeping eight redelivery records in the session's own row would cost).
fn commit_parts(cfg: &Cfg, r: &mut Report) {
    use omemod::storage::accounts::{self, TrustMode};
    use omemod::storage::redelivery::{self, ConversationTag, RedeliveryRow};
    use omemod::storage::sessions::{self, Initiator, SessionRow};
    use omemod::storage::{now, Durability, Namespace, SecretBlob, Store, StoreConfig};

    const PARTS: [&str; 4] = [
        "session_row",
        "session_row+redelivery_row",
        "session_row+other_page",
        "session_row_1.2KB_larger",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(
        &dir.path().join("state/parts.db"),
        StoreConfig {
            durability: Durability::Normal,
            // The key file beside the state directory, not in the user's ~/.config.
            keys: omemod::storage::KeySettings {
                source: Some(omemod::storage::SourceKind::KeyFile),
                key_file: Some(dir.path().join("keys/omemod.key")),
                ..Default::default()
            },
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let account = store
        .write_blocking(|tx| accounts::insert(tx, "alice@example.org", 1, TrustMode::Btbv, now()))
        .expect("account");
    store
        .write_blocking(|tx| {
            tx.execute_batch(
                "CREATE TABLE bench_other (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
                 INSERT INTO bench_other VALUES (1, 0);",
            )?;
            Ok(())
        })
        .expect("scratch table");
    // About an OMEMO 2 session's size; `n` changes it (an unchanged row writes no frame).
    let session = move |n: u32, larger: bool| SessionRow {
        account_id: account,
        jid: "bob@example.net".into(),
        namespace: Namespace::Twomemo,
        device_id: 7,
        state: SecretBlob::new(n.to_le_bytes().repeat(if larger { 418 } else { 110 })),
        state_format: 1,
        identity_key: [0xC0; 32],
        initiated_by: Initiator::Us,
        confirmed: true,
        created_at: 1,
        updated_at: i64::from(n),
        messages_sent: 0,
        messages_received: u64::from(n),
        unanswered: 0,
        suspect: false,
    };
    let record = move |n: u32| {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&n.to_le_bytes());
        RedeliveryRow {
            account_id: account,
            digest,
            payload_digest: [0x11; 32],
            key_material: Some(zeroize::Zeroizing::new(vec![0x22; 48])),
            identity_key: [0x33; 32],
            key_exchange: false,
            created_at: now(),
            conversation: Some(ConversationTag {
                to: Some([0x44; 32]),
                group_chat: false,
            }),
        }
    };
    let mut times: [Vec<u64>; 4] = Default::default();
    let mut n = 0u32;
    let (rounds, per_block) = (cfg.n(20, 4), cfg.n(500, 100));
    for round in 0..rounds {
        for k in 0..PARTS.len() {
            let part = (k + round) % PARTS.len();
            for _ in 0..per_block {
                n += 1;
                let t = Instant::now();
                store
                    .write_blocking(move |tx| {
                        sessions::upsert(tx, &session(n, part == 3))?;
                        match part {
                            1 => {
                                redelivery::record(tx, &record(n), true)?;
                            }
                            2 => {
                                tx.prepare_cached("UPDATE bench_other SET n = ?1 WHERE id = 1")?
                                    .execute([n])?;
                            }
                            _ => {}
                        }
                        Ok(())
                    })
                    .expect("commit");
                times[part].push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    for (part, t) in PARTS.iter().zip(&times) {
        r.fig(&format!("floor.decrypt_commit.{part}"), fig(t));
    }
    store.close().expect("close");
}

/// One small SQLite commit (WAL) with the given durability, through rusqlite.
pub fn commit_floor(cfg: &Cfg, r: &mut Report, d: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let c = rusqlite::Connection::open(dir.path().join(format!("floor-{d}.db"))).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={d};
             CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL);"
        ))
        .unwrap();
        let blob = vec![0x5au8; 200];
        let mut i = 0i64;
        let iters = if d == "full" {
            cfg.n(1000, 100)
        } else {
            cfg.n(3000, 300)
        };
        r.fig(
            &format!("floor.sqlite_commit.{d}"),
            time_each(20, iters, || {
                i += 1;
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                c.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                    .unwrap()
                    .execute(rusqlite::params![i % 64, blob])
                    .unwrap();
                c.execute_batch("COMMIT").unwrap();
            }),
        );
    }
}
