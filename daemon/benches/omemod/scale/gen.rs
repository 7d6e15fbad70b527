//! The database of one size, made with the daemon's own code: accounts by
//! `manager::account::create` (identity, signed prekey, both prekey pools), and for each contact
//! device a real OMEMO device (protocol-core) whose bundle we start a session from. The session is
//! carried through a whole handshake (our key exchange, their answer, our decryption of it), so
//! the row is a confirmed session as a conversation leaves it; one in twenty also holds two
//! skipped message keys (their messages 1 and 2 never arrived). Rows go through omemod's storage
//! functions (device lists, the bundle without the prekey we used, the session, its skipped
//! keys, the trust decision), many accounts per transaction, while worker threads make the next
//! ones. One contact in twenty also has a device that dropped out of its list ten days ago, and
//! the redelivery table holds as many digests as sessions (up to its cap), the newest with key
//! material, as a busy daemon leaves it.
//!
//! A random sample of the peers (their device and their side of the session) is kept in
//! `peers.json` beside the database: the traffic of [`super::measure`] is theirs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use omemod::manager::account::{self, TrustMode};
use omemod::manager::sessions::{session_row, SessionMeta};
use omemod::storage::bundles::{self, BundleRow};
use omemod::storage::devices::{self, DeviceListEntry};
use omemod::storage::redelivery::{self, ConversationTag, RedeliveryRow};
use omemod::storage::sessions::{self, SessionRow};
use omemod::storage::trust::{self, TrustLevel, TrustRow, TrustSource};
use omemod::storage::{skipped_keys, DeviceAddr, Durability, Store, StoreConfig};
use protocol_core::double_ratchet::skipped_keys::SkippedKey;
use protocol_core::keys::{fingerprint, IdentityKeyPair};
use protocol_core::session::Session;
use protocol_core::xml::{bundle_to_xml, Encrypted, KeyElement};
use protocol_core::Version;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::{Layout, PeerState};
use crate::peer::Device;

const DAY: i64 = 24 * 3600;
/// Accounts written per transaction.
const ACCOUNTS_PER_TX: usize = 8;
/// The redelivery table's digest cap (`manager::redelivery::MAX_DIGESTS`) and default key cap.
const REDELIVERY_DIGESTS: usize = 200_000;
const REDELIVERY_WITH_KEYS: usize = 50_000;

/// The JID of account `a`.
pub fn account_jid(a: usize) -> String {
    format!("user{a}@gateway.example")
}

/// The JID of contact `c` of account `a` (every account has its own contacts).
pub fn contact_jid(a: usize, c: usize) -> String {
    format!("contact{c}.of{a}@peers.example")
}

/// One of our accounts, as the workers need it.
#[derive(Clone)]
struct Ours {
    index: usize,
    id: i64,
    jid: String,
    device_id: u32,
    identity: IdentityKeyPair,
}

/// What one account's contacts put in the database.
struct AccountRows {
    account_id: i64,
    namespace: Version,
    lists: Vec<(String, Vec<DeviceListEntry>, Option<u32>)>,
    sessions: Vec<(SessionRow, Vec<SkippedKey>)>,
    bundles: Vec<BundleRow>,
    trust: Vec<TrustRow>,
    sampled: Vec<PeerState>,
}

/// Makes the database at `db` (which must not exist) with `layout`; `sample` is the probability
/// that a session's peer is kept for the traffic. Returns the kept peers.
pub fn generate(db: &Path, layout: &Layout, sample: f64, threads: usize) -> Vec<PeerState> {
    let t0 = Instant::now();
    let store = Arc::new(
        Store::open_with(
            db,
            StoreConfig {
                durability: Durability::Normal,
                ..StoreConfig::default()
            },
        )
        .expect("open the new database"),
    );
    let ours = create_accounts(&store, layout.accounts, threads);
    println!(
        "  {} accounts in {:.1} s",
        ours.len(),
        t0.elapsed().as_secs_f64()
    );
    let (tx, rx) = mpsc::sync_channel::<AccountRows>(threads * 2);
    let mut sampled = Vec::new();
    std::thread::scope(|s| {
        for w in 0..threads {
            let tx = tx.clone();
            let mine: Vec<Ours> = ours.iter().skip(w).step_by(threads).cloned().collect();
            s.spawn(move || {
                let mut rng = StdRng::from_entropy();
                for o in mine {
                    let rows = contacts_of(&o, layout, sample, &mut rng);
                    if tx.send(rows).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0usize;
        let mut pending = Vec::new();
        let mut last = Instant::now();
        for rows in rx {
            pending.push(rows);
            if pending.len() == ACCOUNTS_PER_TX {
                done += pending.len();
                sampled.extend(write(&store, std::mem::take(&mut pending)));
            }
            if last.elapsed().as_secs() >= 30 {
                last = Instant::now();
                println!(
                    "  {done}/{} accounts written, {:.0} s",
                    layout.accounts,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        sampled.extend(write(&store, pending));
    });
    fill_redelivery(&store, &ours, layout.sessions());
    store.close().expect("close the new database");
    println!(
        "  generated {} sessions in {:.1} s",
        layout.sessions(),
        t0.elapsed().as_secs_f64()
    );
    sampled
}

/// The accounts, through the daemon's own `account.create` (concurrently, so the key
/// generation of several runs at once).
fn create_accounts(store: &Arc<Store>, n: usize, threads: usize) -> Vec<Ours> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let made: Vec<Ours> = rt.block_on(async {
            let tasks = chunk.iter().map(|&a| {
                let store = Arc::clone(store);
                async move {
                    let jid = account_jid(a);
                    let acct = account::create(
                        &account::KeySource::new(Arc::clone(&store)),
                        &jid,
                        TrustMode::Btbv,
                        &[],
                    )
                    .await
                    .expect("account.create");
                    Ours {
                        index: a,
                        id: acct.id,
                        jid,
                        device_id: acct.device_id,
                        identity: acct.identity.clone(),
                    }
                }
            });
            futures_join_all(tasks).await
        });
        out.extend(made);
    }
    out
}

/// Runs the futures concurrently on the runtime's workers.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// The contacts of one account: device lists, bundles, sessions, trust.
fn contacts_of(o: &Ours, layout: &Layout, sample: f64, rng: &mut StdRng) -> AccountRows {
    let ns = layout.namespace;
    let now = omemod::storage::now();
    let mut rows = AccountRows {
        account_id: o.id,
        namespace: ns,
        lists: Vec::new(),
        sessions: Vec::new(),
        bundles: Vec::new(),
        trust: Vec::new(),
        sampled: Vec::new(),
    };
    for c in 0..layout.contacts {
        let jid = contact_jid(o.index, c);
        let mut ids = HashSet::new();
        while ids.len() < layout.devices {
            ids.insert(rng.gen_range(1..=0x7fff_ffffu32));
        }
        let ids: Vec<u32> = ids.into_iter().collect();
        // One contact in twenty: a device that left the list ten days ago.
        let dropped = (rng.gen_range(0..20) == 0).then(|| rng.gen_range(1..=0x7fff_ffffu32));
        let entries = ids
            .iter()
            .map(|&id| DeviceListEntry {
                device_id: id,
                label: None,
                labelsig: None,
            })
            .collect();
        rows.lists.push((jid.clone(), entries, dropped));
        for &dev in &ids {
            let created = now - rng.gen_range(0..60 * DAY);
            let skipped = rng.gen_range(0..20) == 0;
            let (s, peer) = handshake(o, &jid, dev, ns, layout.prekeys, skipped, rng);
            let addr = DeviceAddr::new(o.id, jid.clone(), ns, dev);
            let meta = SessionMeta {
                created_at: created,
                messages_sent: 1,
                messages_received: 1 + 2 * u64::from(skipped),
                unanswered: 0,
                suspect: false,
            };
            let row = session_row(&addr, &s, &meta, created);
            let curve = *s.remote_curve25519();
            let mut bundle = peer.bundle();
            // The prekey our key exchange used is gone from the stored bundle.
            bundle.prekeys.retain(|p| p.id != 1);
            rows.bundles.push(BundleRow {
                account_id: o.id,
                jid: jid.clone(),
                namespace: ns,
                device_id: dev,
                identity_key: bundle.identity_key,
                identity_curve25519: curve,
                prekey_count: bundle.prekeys.len() as u32,
                bundle: bundle_to_xml(&bundle).into_bytes(),
                fetched_at: created,
            });
            rows.trust.push(TrustRow {
                account_id: o.id,
                jid: jid.clone(),
                identity_key: curve,
                fingerprint: fingerprint(&curve),
                level: TrustLevel::Trusted,
                source: TrustSource::Blind,
                decided_at: created,
            });
            let skipped_keys: Vec<SkippedKey> = s.skipped_keys().cloned().collect();
            rows.sessions.push((row, skipped_keys));
            if rng.gen_bool(sample) {
                rows.sampled
                    .push(PeerState::of(o.jid.clone(), o.device_id, &peer));
            }
        }
    }
    rows
}

/// A session between our account and a new device `dev` of `jid`, as a first exchange leaves
/// it: we start it from the device's bundle and send a key exchange, the device answers (with
/// two lost messages before the answer when `skip`), we decrypt the answer. Returns our side,
/// and the device with its side.
fn handshake(
    o: &Ours,
    jid: &str,
    dev: u32,
    ns: Version,
    prekeys: usize,
    skip: bool,
    rng: &mut StdRng,
) -> (Session, Device) {
    let mut peer = Device::new(jid, dev, ns, 1, prekeys.saturating_sub(1));
    let mut ours = Session::initiate(&o.identity, &peer.bundle(), 1, rng).expect("initiate");
    let mut km = [0u8; 32];
    rng.fill_bytes(&mut km);
    let k = ours.encrypt(&km).expect("encrypt the key exchange");
    let kex = Encrypted {
        version: ns,
        sid: o.device_id,
        keys: vec![KeyElement {
            jid: (ns == Version::Twomemo).then(|| jid.to_owned()),
            rid: dev,
            kex: k.kex,
            data: k.data,
        }],
        iv: None,
        payload: None,
    }
    .to_xml();
    peer.receive(&o.jid, &kex);
    let to = [(o.jid.clone(), o.device_id)];
    let mut answer = peer.encrypt_to(&to, crate::BODY, &o.jid);
    if skip {
        for _ in 0..2 {
            answer = peer.encrypt_to(&to, crate::BODY, &o.jid);
        }
    }
    let e = Encrypted::from_xml(&answer).expect("parse the answer");
    let key = e
        .keys
        .iter()
        .find(|k| k.rid == o.device_id)
        .expect("a key for us");
    ours.decrypt(&key.data, rng).expect("decrypt the answer");
    (ours, peer)
}

/// Writes the rows of a few accounts in one transaction; returns their sampled peers.
fn write(store: &Store, batch: Vec<AccountRows>) -> Vec<PeerState> {
    let mut sampled = Vec::new();
    let mut work = Vec::with_capacity(batch.len());
    for mut b in batch {
        sampled.append(&mut b.sampled);
        work.push(b);
    }
    store
        .write_blocking(move |tx| {
            let now = omemod::storage::now();
            for b in &work {
                let ns = b.namespace;
                for (jid, entries, dropped) in &b.lists {
                    if let Some(d) = dropped {
                        let mut with = entries.clone();
                        with.push(DeviceListEntry {
                            device_id: *d,
                            label: None,
                            labelsig: None,
                        });
                        devices::replace_list(tx, b.account_id, jid, ns, &with, now - 30 * DAY)?;
                        devices::replace_list(tx, b.account_id, jid, ns, entries, now - 10 * DAY)?;
                    } else {
                        devices::replace_list(tx, b.account_id, jid, ns, entries, now - 30 * DAY)?;
                    }
                }
                for bundle in &b.bundles {
                    bundles::upsert(tx, bundle)?;
                }
                for t in &b.trust {
                    trust::set(tx, t)?;
                }
                let rows: Vec<&SessionRow> = b.sessions.iter().map(|(r, _)| r).collect();
                sessions::upsert_many(tx, &rows)?;
                for (row, keys) in &b.sessions {
                    if !keys.is_empty() {
                        skipped_keys::replace_for_session(tx, &row.addr(), keys, row.updated_at)?;
                    }
                }
            }
            Ok(())
        })
        .expect("write the rows");
    sampled
}

/// As many redelivery digests as sessions (at most the cap), oldest first over the digest
/// window; the newest ones (the default key cap's worth, within a week) keep key material.
fn fill_redelivery(store: &Store, ours: &[Ours], sessions: usize) {
    let n = sessions.min(REDELIVERY_DIGESTS);
    let now = omemod::storage::now();
    let mut rng = StdRng::from_entropy();
    let mut i = 0usize;
    while i < n {
        let end = (i + 10_000).min(n);
        let rows: Vec<(RedeliveryRow, bool)> = (i..end)
            .map(|k| {
                let with_key = n - k <= REDELIVERY_WITH_KEYS;
                // Spread from 80 days ago (k = 0) to now; the keyed ones within the last week.
                let age = if with_key {
                    ((n - k) as i64 * 7 * DAY) / REDELIVERY_WITH_KEYS as i64
                } else {
                    7 * DAY + ((n - k) as i64 * 73 * DAY) / n.max(1) as i64
                };
                let mut digest = [0u8; 32];
                rng.fill_bytes(&mut digest);
                let mut material = vec![0u8; 48];
                rng.fill_bytes(&mut material);
                let acct = &ours[rng.gen_range(0..ours.len())];
                (
                    RedeliveryRow {
                        account_id: acct.id,
                        digest,
                        payload_digest: digest,
                        key_material: Some(zeroize::Zeroizing::new(material)),
                        identity_key: [7; 32],
                        key_exchange: false,
                        created_at: now - age,
                        conversation: Some(ConversationTag {
                            to: None,
                            group_chat: false,
                        }),
                    },
                    with_key,
                )
            })
            .collect();
        store
            .write_blocking(move |tx| {
                for (row, keep) in &rows {
                    redelivery::record(tx, row, *keep)?;
                }
                Ok(())
            })
            .expect("redelivery rows");
        i = end;
    }
}
