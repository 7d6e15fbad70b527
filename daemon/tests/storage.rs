//! Integration tests of the storage layer: opening, migrations, typed access, group commit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use omemod::storage::accounts::{self, TrustMode};
use omemod::storage::bundles::{self, BundleRow};
use omemod::storage::devices::{self, DeviceListEntry};
use omemod::storage::identity::{self, IdentityRow};
use omemod::storage::migrations::{self, Migration};
use omemod::storage::prekeys::{self, PreKeyRow, PublicPreKey};
use omemod::storage::sessions::{self, Initiator, SessionRow};
use omemod::storage::signed_prekeys::{self, SignedPreKeyRow};
use omemod::storage::skipped_keys::{self, SkippedKeyRow};
use omemod::storage::trust::{self, TrustLevel, TrustRow, TrustSource};
use omemod::storage::{
    format_fingerprint, now, DeviceAddr, Durability, KeySettings, Namespace, SecretBlob, SecretKey,
    SourceKind, StorageError, Store, StoreConfig,
};
use rusqlite::{params, Connection};
use sha2::Digest;

const OLD: Namespace = Namespace::Oldmemo;
const TWO: Namespace = Namespace::Twomemo;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Key files of the stores these tests open: one per database, in a directory of this process
/// (never the user's `~/.config`, nor a desktop keyring).
static KEYS: std::sync::LazyLock<tempfile::TempDir> =
    std::sync::LazyLock::new(|| tempfile::tempdir().unwrap());

/// The key settings of the database at `path`: a key file of its own in [`KEYS`].
fn test_keys(path: &Path) -> KeySettings {
    let name = hex::encode(sha2::Sha256::digest(path.as_os_str().as_encoded_bytes()));
    KeySettings {
        source: Some(SourceKind::KeyFile),
        key_file: Some(KEYS.path().join(name)),
        ..KeySettings::default()
    }
}

/// The store at `path`, its data key wrapped by [`test_keys`].
fn open_store(path: &Path, durability: Durability) -> Result<Store, StorageError> {
    Store::open_with(
        path,
        StoreConfig {
            durability,
            keys: test_keys(path),
            ..StoreConfig::default()
        },
    )
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("omemod.db")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn key(b: u8) -> [u8; 32] {
    [b; 32]
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

/// An account with identity, signed prekeys and prekeys.
fn make_account(store: &Store, jid: &'static str, device_id: u32) -> i64 {
    store
        .write_blocking(move |tx| {
            let t = now();
            let id = accounts::insert(tx, jid, device_id, TrustMode::Btbv, t)?;
            let pubkey = key(device_id as u8);
            identity::insert(
                tx,
                &IdentityRow {
                    account_id: id,
                    private_key: SecretKey::new(key(0xAA)),
                    curve25519_public: pubkey,
                    ed25519_public: key(0xEE),
                    fingerprint: format_fingerprint(&pubkey),
                    created_at: t,
                },
            )?;
            Ok(id)
        })
        .unwrap()
}

// ---- opening ---------------------------------------------------------------------------------

#[test]
fn creates_private_dir_and_file() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, Durability::Full).unwrap();
    make_account(&store, "alice@example.org", 1);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert_eq!(
        mode(&wal),
        0o600,
        "SQLite gives the WAL the database file's mode"
    );
    store.close().unwrap();
}

#[test]
fn tightens_loose_existing_file() {
    let dir = tmp();
    let path = dir.path().join("omemod.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = open_store(&path, Durability::Full).unwrap();
    assert_eq!(mode(&path), 0o600);
    store.close().unwrap();
}

#[test]
fn pragmas_follow_durability() {
    for (durability, expected) in [(Durability::Full, 2), (Durability::Normal, 1)] {
        let dir = tmp();
        let store = open_store(&db_path(&dir), durability).unwrap();
        let (sync, fk, autockpt, journal) = store
            .write_blocking(|tx| {
                let q = |p: &str| -> rusqlite::Result<i64> {
                    tx.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                };
                let j: String = tx.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                Ok((
                    q("synchronous")?,
                    q("foreign_keys")?,
                    q("wal_autocheckpoint")?,
                    j,
                ))
            })
            .unwrap();
        assert_eq!(sync, expected);
        assert_eq!(fk, 1);
        assert_eq!(autockpt, 0);
        assert_eq!(journal, "wal");
        let reader_journal: String = store
            .read_blocking(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(reader_journal, "wal");
        store.close().unwrap();
        assert_eq!(
            raw(&db_path(&dir))
                .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .unwrap(),
            "wal",
            "WAL mode is persistent"
        );
    }
}

// ---- migrations ------------------------------------------------------------------------------

#[test]
fn migrates_empty_file_and_reopen_is_noop() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, Durability::Full).unwrap();
    let id = make_account(&store, "alice@example.org", 7);
    store.close().unwrap();
    let version = |p: &Path| {
        raw(p)
            .query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0))
            .unwrap()
    };
    assert_eq!(version(&path), migrations::supported_version());
    let schema_before: Vec<String> = schema_sql(&path);

    let store = open_store(&path, Durability::Full).unwrap();
    let acc = store
        .read_blocking(|c| accounts::get_by_jid(c, "alice@example.org"))
        .unwrap()
        .unwrap();
    assert_eq!(acc.id, id);
    store.close().unwrap();
    assert_eq!(version(&path), migrations::supported_version());
    assert_eq!(schema_sql(&path), schema_before);
}

fn schema_sql(path: &Path) -> Vec<String> {
    let c = raw(path);
    let mut st = c
        .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")
        .unwrap();
    let rows = st.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn upgrades_older_database() {
    let dir = tmp();
    let path = dir.path().join("old.db");
    let mut c = raw(&path);
    // A database written by a binary that knew only migration 1.
    assert_eq!(
        migrations::migrate(&mut c, &migrations::MIGRATIONS[..1]).unwrap(),
        1
    );
    c.execute(
        "INSERT INTO accounts (jid, device_id, created_at) VALUES ('alice@example.org', 5, 0)",
        [],
    )
    .unwrap();
    // A newer binary with a second migration.
    let mut list: Vec<Migration> = migrations::MIGRATIONS.to_vec();
    list.push((
        list.len() as u32 + 1,
        "ALTER TABLE accounts ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated';",
    ));
    let v = migrations::migrate(&mut c, &list).unwrap();
    assert_eq!(v, list.len() as u32);
    let (jid, note): (String, String) = c
        .query_row("SELECT jid, note FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (jid.as_str(), note.as_str()),
        ("alice@example.org", "migrated")
    );
    // Running it again changes nothing.
    assert_eq!(migrations::migrate(&mut c, &list).unwrap(), v);
}

#[test]
fn refuses_too_new_database() {
    let dir = tmp();
    let path = dir.path().join("new.db");
    raw(&path).pragma_update(None, "user_version", 999).unwrap();
    match open_store(&path, Durability::Full) {
        Err(StorageError::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert_eq!(supported, migrations::supported_version());
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

// ---- typed functions -------------------------------------------------------------------------

#[test]
fn accounts_round_trip() {
    let dir = tmp();
    let store = open_store(&db_path(&dir), Durability::Normal).unwrap();
    store
        .write_blocking(|tx| {
            let a = accounts::insert(tx, "alice@example.org", 11, TrustMode::Manual, 100)?;
            let b = accounts::insert(tx, "bob@example.net", 22, TrustMode::Btbv, 200)?;
            let row = accounts::get(tx, a)?.unwrap();
            assert_eq!(row.jid, "alice@example.org");
            assert_eq!(row.device_id, 11);
            assert_eq!(row.created_at, 100);
            assert_eq!(row.trust_mode, TrustMode::Manual);
            assert_eq!(
                (
                    row.bundle_version,
                    row.next_prekey_id,
                    row.next_signed_prekey_id
                ),
                (1, 1, 1)
            );
            assert!(!row.catchup);
            assert_eq!(accounts::get_by_jid(tx, "bob@example.net")?.unwrap().id, b);
            assert!(accounts::get_by_jid(tx, "nobody@example.com")?.is_none());
            assert_eq!(
                accounts::list(tx)?.iter().map(|r| r.id).collect::<Vec<_>>(),
                vec![a, b]
            );

            accounts::set_catchup(tx, a, true)?;
            accounts::set_trust_mode(tx, a, TrustMode::Tofu)?;
            assert_eq!(accounts::bump_bundle_version(tx, a)?, 2);
            assert_eq!(accounts::take_prekey_ids(tx, a, 100)?, 1..101);
            assert_eq!(accounts::take_prekey_ids(tx, a, 5)?, 101..106);
            assert_eq!(accounts::take_signed_prekey_id(tx, a)?, 1);
            assert_eq!(accounts::take_signed_prekey_id(tx, a)?, 2);
            let row = accounts::get(tx, a)?.unwrap();
            assert!(row.catchup);
            assert_eq!(row.trust_mode, TrustMode::Tofu);
            assert_eq!(
                (
                    row.bundle_version,
                    row.next_prekey_id,
                    row.next_signed_prekey_id
                ),
                (2, 106, 3)
            );

            assert!(matches!(
                accounts::set_catchup(tx, 999, true),
                Err(StorageError::NotFound { .. })
            ));
            assert!(matches!(
                accounts::bump_bundle_version(tx, 999),
                Err(StorageError::NotFound { .. })
            ));
            // Duplicate JID is a constraint error, not a panic.
            assert!(matches!(
                accounts::insert(tx, "alice@example.org", 3, TrustMode::Btbv, 0),
                Err(StorageError::Sqlite(_))
            ));
            assert!(accounts::delete(tx, b)?);
            assert!(!accounts::delete(tx, b)?);
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
}

#[test]
fn identity_and_prekeys_round_trip() {
    let dir = tmp();
    let store = open_store(&db_path(&dir), Durability::Normal).unwrap();
    let a = make_account(&store, "alice@example.org", 9);
    store
        .write_blocking(move |tx| {
            let id = identity::get(tx, a)?.unwrap();
            assert_eq!(id.private_key.expose(), &key(0xAA));
            assert_eq!(id.curve25519_public, key(9));
            assert_eq!(id.ed25519_public, key(0xEE));
            assert_eq!(id.fingerprint, format_fingerprint(&key(9)));
            assert!(identity::get(tx, a + 1)?.is_none());

            let ids = accounts::take_prekey_ids(tx, a, 3)?;
            let rows: Vec<PreKeyRow> = ids
                .map(|i| PreKeyRow {
                    account_id: a,
                    id: i,
                    private_key: SecretKey::new(key(i as u8)),
                    public_key: key(0x10 + i as u8),
                    created_at: 50,
                    used_at: None,
                    namespace: None,
                    used_by: None,
                })
                .collect();
            prekeys::insert_many(tx, &rows)?;
            assert_eq!(prekeys::get(tx, a, 2)?.as_ref(), Some(&rows[1]));
            assert_eq!(prekeys::count_live(tx, a)?, 3);
            assert!(prekeys::mark_used(tx, a, 2, 60, &key(9))?);
            assert!(!prekeys::mark_used(tx, a, 2, 61, &key(9))?, "already used");
            assert!(!prekeys::mark_used(tx, a, 77, 61, &key(9))?, "missing");
            assert_eq!(prekeys::get(tx, a, 2)?.unwrap().used_at, Some(60));
            assert_eq!(prekeys::count_live(tx, a)?, 2);
            assert_eq!(
                prekeys::list_live_public(tx, a)?,
                vec![
                    PublicPreKey {
                        id: 1,
                        public_key: key(0x11)
                    },
                    PublicPreKey {
                        id: 3,
                        public_key: key(0x13)
                    }
                ]
            );
            assert!(prekeys::delete(tx, a, 1)?);
            assert!(!prekeys::delete(tx, a, 1)?);
            assert_eq!(prekeys::delete_used(tx, a)?, 1);
            assert!(prekeys::get(tx, a, 2)?.is_none());
            assert_eq!(prekeys::count_live(tx, a)?, 1);

            let spk = |id: u32, created_at: i64| SignedPreKeyRow {
                account_id: a,
                id,
                private_key: SecretKey::new(key(0x50 + id as u8)),
                public_key: key(0x60 + id as u8),
                signature_oldmemo: [1; 64],
                signature_twomemo: [2; 64],
                created_at,
                retired_at: None,
            };
            assert!(signed_prekeys::current(tx, a)?.is_none());
            signed_prekeys::insert(tx, &spk(1, 100))?;
            signed_prekeys::insert(tx, &spk(2, 200))?;
            assert_eq!(signed_prekeys::current(tx, a)?.unwrap(), spk(2, 200));
            signed_prekeys::retire(tx, a, 2, 300)?;
            assert_eq!(signed_prekeys::current(tx, a)?.unwrap().id, 1);
            signed_prekeys::retire(tx, a, 1, 400)?;
            assert!(signed_prekeys::current(tx, a)?.is_none());
            assert_eq!(
                signed_prekeys::get(tx, a, 2)?.unwrap().retired_at,
                Some(300)
            );
            assert!(matches!(
                signed_prekeys::retire(tx, a, 9, 1),
                Err(StorageError::NotFound { .. })
            ));
            assert_eq!(signed_prekeys::delete_retired_before(tx, a, 350)?, 1);
            assert_eq!(
                signed_prekeys::list(tx, a)?
                    .iter()
                    .map(|r| r.id)
                    .collect::<Vec<_>>(),
                vec![1]
            );
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
}

#[test]
fn devices_and_bundles_round_trip() {
    let dir = tmp();
    let store = open_store(&db_path(&dir), Durability::Normal).unwrap();
    let a = make_account(&store, "alice@example.org", 9);
    store
        .write_blocking(move |tx| {
            let bob = "bob@example.net";
            let e = |id: u32, label: Option<&str>| DeviceListEntry {
                device_id: id,
                label: label.map(str::to_owned),
                labelsig: None,
            };
            let ch =
                devices::replace_list(tx, a, bob, TWO, &[e(1, Some("phone")), e(2, None)], 100)?;
            assert_eq!(
                (ch.added, ch.reactivated, ch.deactivated),
                (vec![1, 2], vec![], vec![])
            );
            let ch =
                devices::replace_list(tx, a, bob, TWO, &[e(2, Some("laptop")), e(3, None)], 200)?;
            assert_eq!(
                (ch.added, ch.reactivated, ch.deactivated),
                (vec![3], vec![], vec![1])
            );
            let ch = devices::replace_list(
                tx,
                a,
                bob,
                TWO,
                &[e(1, Some("phone")), e(2, Some("laptop")), e(3, None)],
                300,
            )?;
            assert_eq!(
                (ch.added, ch.reactivated, ch.deactivated),
                (vec![], vec![1], vec![])
            );
            // Other namespace is independent.
            devices::replace_list(tx, a, bob, OLD, &[e(1, None)], 300)?;
            let list = devices::list(tx, a, bob, TWO)?;
            assert_eq!(list.len(), 3);
            assert!(list.iter().all(|d| d.active));
            let d2 = devices::get(tx, &DeviceAddr::new(a, bob, TWO, 2))?.unwrap();
            assert_eq!(d2.label.as_deref(), Some("laptop"));
            assert_eq!(
                (d2.first_seen, d2.list_updated_at, d2.last_seen),
                (100, 300, None)
            );
            devices::replace_list(tx, a, bob, TWO, &[], 400)?;
            assert!(devices::list(tx, a, bob, TWO)?.iter().all(|d| !d.active));
            assert_eq!(devices::list(tx, a, bob, OLD)?.len(), 1);

            let addr = DeviceAddr::new(a, bob, OLD, 1);
            assert!(!devices::touch_last_seen(tx, &addr, 500)?);
            assert!(
                !devices::touch_last_seen(tx, &addr, 450)?,
                "never goes back"
            );
            assert_eq!(devices::get(tx, &addr)?.unwrap().last_seen, Some(500));
            let unknown = DeviceAddr::new(a, bob, OLD, 42);
            assert!(devices::touch_last_seen(tx, &unknown, 600)?);
            let d = devices::get(tx, &unknown)?.unwrap();
            assert!(!d.active);
            assert_eq!(d.last_seen, Some(600));
            assert_eq!(devices::list_all(tx, a)?.len(), 5);
            assert!(devices::delete(tx, &unknown)?);

            let mut b = BundleRow {
                account_id: a,
                jid: bob.into(),
                namespace: TWO,
                device_id: 1,
                identity_key: key(0xB0),
                identity_curve25519: key(0xB1),
                bundle: vec![1, 2, 3],
                prekey_count: 100,
                fetched_at: 700,
            };
            bundles::upsert(tx, &b)?;
            let addr = DeviceAddr::new(a, bob, TWO, 1);
            assert_eq!(bundles::get(tx, &addr)?.unwrap(), b);
            b.bundle = vec![4];
            b.prekey_count = 99;
            b.fetched_at = 800;
            bundles::upsert(tx, &b)?;
            assert_eq!(bundles::get(tx, &addr)?.unwrap(), b);
            assert!(bundles::delete(tx, &addr)?);
            assert!(bundles::get(tx, &addr)?.is_none());
            b.bundle.clear();
            assert!(matches!(
                bundles::upsert(tx, &b),
                Err(StorageError::InvalidInput { .. })
            ));
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
}

fn session(a: i64, jid: &str, ns: Namespace, device_id: u32, t: i64) -> SessionRow {
    SessionRow {
        account_id: a,
        jid: jid.into(),
        namespace: ns,
        device_id,
        state: SecretBlob::new(vec![0x5A; 300]),
        state_format: 1,
        identity_key: key(0xC0),
        initiated_by: Initiator::Us,
        confirmed: false,
        created_at: t,
        updated_at: t,
        messages_sent: 0,
        messages_received: 0,
        unanswered: 0,
        suspect: false,
    }
}

#[test]
fn sessions_skipped_keys_and_trust_round_trip() {
    let dir = tmp();
    let store = open_store(&db_path(&dir), Durability::Normal).unwrap();
    let a = make_account(&store, "alice@example.org", 9);
    store
        .write_blocking(move |tx| {
            let bob = "bob@example.net";
            let mut s = session(a, bob, TWO, 1, 100);
            sessions::upsert(tx, &s)?;
            let addr = s.addr();
            assert_eq!(sessions::get(tx, &addr)?.unwrap(), s);
            s.state = SecretBlob::new(vec![1, 2, 3]);
            s.confirmed = true;
            s.updated_at = 200;
            s.created_at = 150; // ignored: same identity, same initiator
            s.messages_sent = 5;
            s.messages_received = u64::from(u32::MAX) + 1;
            sessions::upsert(tx, &s)?;
            let got = sessions::get(tx, &addr)?.unwrap();
            assert_eq!(got.created_at, 100);
            assert_eq!(got.state.expose(), &[1, 2, 3]);
            assert!(got.confirmed);
            assert_eq!((got.messages_sent, got.messages_received), (5, 1 << 32));
            sessions::upsert(tx, &session(a, bob, OLD, 1, 100))?;
            sessions::upsert(tx, &session(a, "carol@example.com", TWO, 3, 100))?;
            assert_eq!(sessions::list(tx, a)?.len(), 3);
            assert_eq!(sessions::list_for_jid(tx, a, bob)?.len(), 2);
            s.messages_sent = u64::MAX;
            assert!(matches!(
                sessions::upsert(tx, &s),
                Err(StorageError::InvalidInput { .. })
            ));

            let sk = |n: u32, t: i64| SkippedKeyRow {
                addr: addr.clone(),
                ratchet_key: key(0xD0),
                n,
                message_key: SecretKey::new(key(n as u8)),
                created_at: t,
            };
            for n in 0..5 {
                assert!(skipped_keys::insert(tx, &sk(n, 1000 + i64::from(n)))?);
            }
            assert!(!skipped_keys::insert(tx, &sk(0, 5))?, "duplicate ignored");
            assert_eq!(skipped_keys::count(tx, &addr)?, 5);
            assert_eq!(
                skipped_keys::take(tx, &addr, &key(0xD0), 3)?
                    .unwrap()
                    .expose(),
                &key(3)
            );
            assert!(
                skipped_keys::take(tx, &addr, &key(0xD0), 3)?.is_none(),
                "used once"
            );
            assert!(skipped_keys::take(tx, &addr, &key(0xD1), 0)?.is_none());
            assert_eq!(skipped_keys::trim(tx, &addr, 2)?, 2);
            assert!(
                skipped_keys::take(tx, &addr, &key(0xD0), 4)?.is_some(),
                "newest kept"
            );
            assert!(skipped_keys::expired(tx, &addr, 1002)?.is_empty());
            assert_eq!(skipped_keys::delete_expired(tx, &addr, 1002)?, 0);
            assert_eq!(skipped_keys::count(tx, &addr)?, 1);
            assert_eq!(
                skipped_keys::expired(tx, &addr, 1005)?,
                vec![(key(0xD0), 2)]
            );
            // A skipped key needs its session.
            let mut orphan = sk(9, 0);
            orphan.addr.device_id = 99;
            assert!(matches!(
                skipped_keys::insert(tx, &orphan),
                Err(StorageError::Sqlite(_))
            ));
            // Deleting the session deletes its keys.
            assert!(sessions::delete(tx, &addr)?);
            assert_eq!(skipped_keys::count(tx, &addr)?, 0);
            sessions::upsert(tx, &session(a, bob, TWO, 1, 100))?;
            skipped_keys::insert(tx, &sk(1, 1))?;
            assert_eq!(skipped_keys::delete_for_session(tx, &addr)?, 1);

            let t = TrustRow {
                account_id: a,
                jid: bob.into(),
                identity_key: key(0xC0),
                fingerprint: format_fingerprint(&key(0xC0)),
                level: TrustLevel::Undecided,
                source: TrustSource::Blind,
                decided_at: 10,
            };
            trust::set(tx, &t)?;
            assert_eq!(trust::get(tx, a, bob, &key(0xC0))?.unwrap(), t);
            let t2 = TrustRow {
                level: TrustLevel::Trusted,
                source: TrustSource::Manual,
                decided_at: 20,
                ..t.clone()
            };
            trust::set(tx, &t2)?;
            assert_eq!(trust::get(tx, a, bob, &key(0xC0))?.unwrap(), t2);
            trust::set(
                tx,
                &TrustRow {
                    jid: "carol@example.com".into(),
                    ..t.clone()
                },
            )?;
            assert_eq!(trust::list(tx, a, None)?.len(), 2);
            assert_eq!(trust::list(tx, a, Some(bob))?, vec![t2]);
            assert!(trust::delete(tx, a, bob, &key(0xC0))?);
            assert!(trust::get(tx, a, bob, &key(0xC0))?.is_none());
            Ok(())
        })
        .unwrap();
    store.close().unwrap();
}

/// `sessions::upsert_many` (one statement per chunk of rows) leaves exactly what one
/// `sessions::upsert` per row leaves, on inserts and on updates (`created_at` kept or
/// replaced as the identity dictates, a row given twice ends as the later one), and the rows
/// read back the same after the database is closed and reopened.
#[test]
fn upsert_many_equals_single_upserts_across_restart() {
    let dirs = [tmp(), tmp()];
    let stores: Vec<Store> = dirs
        .iter()
        .map(|d| open_store(&db_path(d), Durability::Normal).unwrap())
        .collect();
    let a = make_account(&stores[0], "alice@example.org", 9);
    assert_eq!(make_account(&stores[1], "alice@example.org", 9), a);
    // 150 rows: chunks of 64, 64, 16, 4 and 2.
    let first: Vec<SessionRow> = (0..150u32)
        .map(|i| {
            let jid = format!("peer{}@example.net", i % 7);
            let ns = if i % 2 == 0 { TWO } else { OLD };
            let mut s = session(a, &jid, ns, 1000 + i, 100);
            s.state = SecretBlob::new(vec![i as u8; 200 + i as usize]);
            s
        })
        .collect();
    // Updates: a new identity (created_at replaced), the same one (created_at kept), new
    // counters and flags; new rows; one address twice.
    let mut second: Vec<SessionRow> = first
        .iter()
        .step_by(3)
        .enumerate()
        .map(|(k, s)| {
            let mut s = s.clone();
            s.state = SecretBlob::new(vec![0xEE; 50 + k]);
            s.created_at = 500;
            s.updated_at = 600;
            s.confirmed = k % 2 == 0;
            s.messages_sent = k as u64 * 3;
            s.messages_received = (1 << 40) + k as u64;
            if k % 4 == 0 {
                s.identity_key = key(0xC1);
            }
            if k % 5 == 0 {
                s.initiated_by = Initiator::Them;
            }
            s
        })
        .collect();
    second.extend((0..37u32).map(|i| session(a, "new@example.net", TWO, i, 700)));
    let mut again = second[3].clone();
    again.state = SecretBlob::new(vec![0x11; 9]);
    again.messages_sent = 77;
    second.push(again);
    for batch in [first, second] {
        let b = batch.clone();
        stores[0]
            .write_blocking(move |tx| sessions::upsert_many(tx, &b))
            .unwrap();
        stores[1]
            .write_blocking(move |tx| {
                for s in &batch {
                    sessions::upsert(tx, s)?;
                }
                Ok(())
            })
            .unwrap();
    }
    // A bad row fails the call.
    let mut bad = vec![session(a, "x@example.net", TWO, 1, 1); 3];
    bad[2].device_id = 2;
    bad[2].messages_sent = u64::MAX;
    assert!(matches!(
        stores[0].write_blocking(move |tx| sessions::upsert_many(tx, &bad)),
        Err(StorageError::InvalidInput { .. })
    ));
    for s in stores {
        s.close().unwrap();
    }
    let rows: Vec<Vec<SessionRow>> = dirs
        .iter()
        .map(|d| {
            let store = open_store(&db_path(d), Durability::Normal).unwrap();
            let rows = store
                .write_blocking(move |tx| sessions::list(tx, a))
                .unwrap();
            store.close().unwrap();
            rows
        })
        .collect();
    assert_eq!(rows[0].len(), 150 + 37);
    assert_eq!(rows[0], rows[1]);
    let twice = rows[0]
        .iter()
        .find(|r| r.messages_sent == 77)
        .expect("the later copy of a row given twice");
    assert_eq!(twice.state.expose(), &[0x11; 9]);
    let created: Vec<i64> = rows[0].iter().map(|r| r.created_at).collect();
    assert!(created.contains(&100) && created.contains(&500) && created.contains(&700));
}

#[test]
fn secrets_are_redacted_in_debug() {
    let row = IdentityRow {
        account_id: 1,
        private_key: SecretKey::new([0xAB; 32]),
        curve25519_public: [0; 32],
        ed25519_public: [0; 32],
        fingerprint: String::new(),
        created_at: 0,
    };
    let dbg = format!("{row:?}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
    assert!(
        !dbg.contains("171"),
        "secret byte 0xAB must not appear: {dbg}"
    );
    let blob = format!("{:?}", SecretBlob::new(vec![0xAB; 4]));
    assert_eq!(blob, "<redacted 4 bytes>");
}

#[test]
fn account_delete_cascades() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, Durability::Normal).unwrap();
    let a = make_account(&store, "alice@example.org", 9);
    let b = make_account(&store, "other@example.org", 10);
    populate(&store, a);
    populate(&store, b);
    let counts = |store: &Store| {
        store
            .read_blocking(|c| {
                let mut out = Vec::new();
                for t in TABLES {
                    out.push(c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
                        r.get::<_, i64>(0)
                    })?);
                }
                Ok(out)
            })
            .unwrap()
    };
    let before = counts(&store);
    assert!(before.iter().all(|&n| n > 0), "{before:?}");
    assert!(store
        .write_blocking(move |tx| accounts::delete(tx, a))
        .unwrap());
    let after = counts(&store);
    for (i, t) in TABLES.iter().enumerate() {
        assert_eq!(
            after[i] * 2,
            before[i],
            "{t}: half of the rows belonged to the deleted account"
        );
    }
    store.close().unwrap();
}

const TABLES: [&str; 9] = [
    "accounts",
    "identity",
    "signed_prekeys",
    "prekeys",
    "devices",
    "bundles",
    "sessions",
    "skipped_keys",
    "trust",
];

/// Fills every table for account `a` with the data the docs queries expect.
fn populate(store: &Store, a: i64) {
    store
        .write_blocking(move |tx| {
            let t = now();
            let ids = accounts::take_prekey_ids(tx, a, 4)?;
            let rows: Vec<PreKeyRow> = ids
                .map(|i| PreKeyRow {
                    account_id: a,
                    id: i,
                    private_key: SecretKey::new(key(1)),
                    public_key: key(2),
                    created_at: t,
                    used_at: None,
                    namespace: None,
                    used_by: None,
                })
                .collect();
            prekeys::insert_many(tx, &rows)?;
            prekeys::mark_used(tx, a, 1, t, &key(9))?;
            for (id, created, retired) in [
                (1, t - 10 * 86400, Some(t - 3 * 86400)),
                (2, t - 3 * 86400 - 100, None),
            ] {
                signed_prekeys::insert(
                    tx,
                    &SignedPreKeyRow {
                        account_id: a,
                        id,
                        private_key: SecretKey::new(key(3)),
                        public_key: key(4),
                        signature_oldmemo: [5; 64],
                        signature_twomemo: [6; 64],
                        created_at: created,
                        retired_at: retired,
                    },
                )?;
            }
            accounts::bump_bundle_version(tx, a)?;
            let bob = "bob@example.net";
            let e = |id: u32, label: Option<&str>| DeviceListEntry {
                device_id: id,
                label: label.map(str::to_owned),
                labelsig: None,
            };
            devices::replace_list(
                tx,
                a,
                bob,
                TWO,
                &[e(1, Some("phone")), e(2, Some("laptop")), e(4, None)],
                t,
            )?;
            devices::replace_list(
                tx,
                a,
                bob,
                TWO,
                &[e(1, Some("phone")), e(2, Some("laptop"))],
                t,
            )?; // 4 drops out
            devices::replace_list(tx, a, bob, OLD, &[e(1, None), e(3, None)], t)?;
            // Our own device list.
            let own = accounts::get(tx, a)?.unwrap();
            devices::replace_list(tx, a, &own.jid, TWO, &[e(own.device_id, None)], t)?;
            // Bob's device 1: sessions in both namespaces with the same identity (trusted).
            sessions::upsert(
                tx,
                &SessionRow {
                    identity_key: key(0x11),
                    ..session(a, bob, TWO, 1, t)
                },
            )?;
            sessions::upsert(
                tx,
                &SessionRow {
                    identity_key: key(0x11),
                    messages_sent: 3,
                    ..session(a, bob, OLD, 1, t)
                },
            )?;
            // Bob's device 2 (OMEMO 2): only a bundle, identity not decided.
            bundles::upsert(
                tx,
                &BundleRow {
                    account_id: a,
                    jid: bob.into(),
                    namespace: TWO,
                    device_id: 2,
                    identity_key: key(0xE2),
                    identity_curve25519: key(0x22),
                    bundle: vec![1],
                    prekey_count: 100,
                    fetched_at: t,
                },
            )?;
            // Bob's device 3 (0.3): nothing known yet.
            trust::set(
                tx,
                &TrustRow {
                    account_id: a,
                    jid: bob.into(),
                    identity_key: key(0x11),
                    fingerprint: format_fingerprint(&key(0x11)),
                    level: TrustLevel::Trusted,
                    source: TrustSource::Manual,
                    decided_at: t,
                },
            )?;
            // Skipped keys: 3 on bob/OLD/1, 1 on carol.
            let carol = DeviceAddr::new(a, "carol@example.com", TWO, 7);
            sessions::upsert(tx, &session(a, &carol.jid, TWO, 7, t))?;
            let bob_old = DeviceAddr::new(a, bob, OLD, 1);
            for (addr, n) in [(&bob_old, 0), (&bob_old, 1), (&bob_old, 2), (&carol, 0)] {
                skipped_keys::insert(
                    tx,
                    &SkippedKeyRow {
                        addr: addr.clone(),
                        ratchet_key: key(9),
                        n,
                        message_key: SecretKey::new(key(8)),
                        created_at: t,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
}

// ---- docs/schema.md --------------------------------------------------------------------------

fn doc_queries() -> Vec<String> {
    let doc = include_str!("../../docs/schema.md");
    let section = doc
        .split("## Useful queries")
        .nth(1)
        .expect("docs have a Useful queries section");
    section
        .split("```sql")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim().to_owned())
        .collect()
}

fn run_query(c: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    let rows = st
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                        rusqlite::types::ValueRef::Real(f) => f.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        rusqlite::types::ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
                    })
                })
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn strs(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[test]
fn documented_queries_return_expected_rows() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, Durability::Normal).unwrap();
    let a = make_account(&store, "alice@example.org", 9);
    populate(&store, a);
    store.close().unwrap();

    let queries = doc_queries();
    assert_eq!(queries.len(), 3, "docs/schema.md has three queries");
    // Read the way a user would: a separate, read-only connection.
    let c = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let fp11 = format_fingerprint(&key(0x11));
    let fp22 = format_fingerprint(&key(0x22));
    let ns2 = TWO.namespace();
    let ns0 = OLD.namespace();

    assert_eq!(
        run_query(&c, &queries[0]),
        strs(&[
            &[ns0, "1", "NULL", &fp11, "trusted", "1"],
            &[ns0, "3", "NULL", "NULL", "NULL", "0"],
            &[ns2, "1", "phone", &fp11, "trusted", "1"],
            &[ns2, "2", "laptop", &fp22, "undecided", "0"],
        ])
    );
    assert_eq!(
        run_query(&c, &queries[1]),
        strs(&[&["alice@example.org", "9", "3", "1", "2", "3", "2", "0"]])
    );
    assert_eq!(
        run_query(&c, &queries[2]),
        strs(&[
            &["bob@example.net", ns0, "1", "3", "3", "0"],
            &["carol@example.com", ns2, "7", "1", "0", "0"],
        ])
    );
    // The other views are usable too.
    let own: String = c
        .query_row("SELECT fingerprint FROM own_bundle_status", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(own, format_fingerprint(&key(9)));
    let n: i64 = c
        .query_row("SELECT count(*) FROM device_overview", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        n, 6,
        "bob: 3 OMEMO 2 devices (one inactive) + 2 OMEMO 0.3 devices, plus our own; carol has no list"
    );
}

// ---- bad data --------------------------------------------------------------------------------

#[test]
fn bad_data_gives_typed_errors() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, Durability::Normal).unwrap();
    let a = make_account(&store, "alice@example.org", 9);
    populate(&store, a);
    // Corrupt rows behind the daemon's back (CHECK constraints would refuse them otherwise).
    let c = raw(&path);
    c.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    c.execute(
        "UPDATE identity SET private_key = x'0102' WHERE account_id = ?1",
        [a],
    )
    .unwrap();
    c.execute(
        "UPDATE prekeys SET public_key = zeroblob(33) WHERE account_id = ?1 AND id = 2",
        [a],
    )
    .unwrap();
    c.execute(
        "UPDATE sessions SET identity_key = 'text' WHERE jid = 'carol@example.com'",
        [],
    )
    .unwrap();
    c.execute(
        "UPDATE devices SET namespace = 'urn:xmpp:omemo:99' WHERE device_id = 3",
        [],
    )
    .unwrap();
    c.execute("UPDATE devices SET label = x'00ff' WHERE device_id = 2", [])
        .unwrap();
    c.execute("UPDATE trust SET level = 'maybe'", []).unwrap();
    c.execute("UPDATE devices SET device_id = -5 WHERE device_id = 4", [])
        .unwrap();
    c.execute(
        "UPDATE skipped_keys SET message_key = x'00' WHERE n = 0 AND jid = 'carol@example.com'",
        [],
    )
    .unwrap();
    drop(c);

    let errs = store
        .read_blocking(move |c| {
            let bob = "bob@example.net";
            Ok(vec![
                identity::get(c, a).map(|_| ()),
                prekeys::get(c, a, 2).map(|_| ()),
                prekeys::list_live_public(c, a).map(|_| ()),
                sessions::get(c, &DeviceAddr::new(a, "carol@example.com", TWO, 7)).map(|_| ()),
                devices::get(c, &DeviceAddr::new(a, bob, TWO, 2)).map(|_| ()),
                devices::list_all(c, a).map(|_| ()),
                trust::list(c, a, None).map(|_| ()),
            ])
        })
        .unwrap();
    for (i, e) in errs.into_iter().enumerate() {
        match e {
            Err(StorageError::BadData {
                table,
                column,
                reason,
            }) => {
                assert!(!table.is_empty() && !column.is_empty() && !reason.is_empty());
            }
            other => panic!("case {i}: expected BadData, got {other:?}"),
        }
    }
    let carol = DeviceAddr::new(a, "carol@example.com", TWO, 7);
    let e = store
        .write_blocking(move |tx| skipped_keys::take(tx, &carol, &key(9), 0))
        .unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::BadData {
                column: "message_key",
                ..
            }
        ),
        "{e}"
    );
    let msg = store
        .read_blocking(move |c| identity::get(c, a).map(|_| ()))
        .unwrap_err()
        .to_string();
    // The identity key is sealed: a 2-byte value is not one (the length is named either way).
    assert!(msg.contains("found 2 bytes"), "{msg}");
    store.close().unwrap();
}

// ---- group commit ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_durable() {
    concurrent_writes_are_durable_under(Durability::Full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_durable_normal() {
    concurrent_writes_are_durable_under(Durability::Normal).await;
}

async fn concurrent_writes_are_durable_under(durability: Durability) {
    let dir = tmp();
    let path = db_path(&dir);
    let store = Arc::new(open_store(&path, durability).unwrap());
    let a = store
        .write(|tx| accounts::insert(tx, "alice@example.org", 1, TrustMode::Btbv, 0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..8u32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..200u32 {
                let jid = format!("contact{task}@example.net");
                store
                    .write(move |tx| {
                        let e = DeviceListEntry { device_id: i + 1, label: None, labelsig: None };
                        tx.execute(
                            "INSERT INTO devices (account_id, jid, namespace, device_id, active, first_seen, list_updated_at) \
                             VALUES (?1, ?2, ?3, ?4, 1, 0, 0)",
                            params![a, jid, TWO.namespace(), e.device_id],
                        )?;
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.writer_stats();
    let jobs = stats.jobs.load(std::sync::atomic::Ordering::Relaxed);
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(jobs, 1 + 8 * 200);
    assert!(
        batches < jobs,
        "group commit shares transactions: {batches} batches for {jobs} jobs"
    );
    let st = Arc::clone(&store);
    tokio::task::spawn_blocking(move || st.close())
        .await
        .unwrap()
        .unwrap();
    drop(store);

    let store = open_store(&path, durability).unwrap();
    let n = store
        .read(move |c| {
            let mut total = 0;
            for task in 0..8 {
                let list = devices::list(c, a, &format!("contact{task}@example.net"), TWO)?;
                assert_eq!(
                    list.iter().map(|d| d.device_id).collect::<Vec<_>>(),
                    (1..=200).collect::<Vec<_>>()
                );
                total += list.len();
            }
            Ok(total)
        })
        .await
        .unwrap();
    assert_eq!(n, 1600);
    store.close().unwrap();
}

/// Holds the writer thread inside a job until released, so that the jobs queued meanwhile
/// are guaranteed to form one batch.
fn block_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let gate = store.write(move |_tx| {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
        Ok(())
    });
    drop(gate); // dropping the future does not cancel the job
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    release_tx
}

fn insert_device(tx: &rusqlite::Connection, a: i64, id: u32) -> Result<(), StorageError> {
    devices::replace_list(
        tx,
        a,
        &format!("d{id}@example.net"),
        TWO,
        &[DeviceListEntry {
            device_id: id,
            label: None,
            labelsig: None,
        }],
        1,
    )?;
    Ok(())
}

#[tokio::test]
async fn failing_job_rolls_back_only_its_savepoint() {
    failing_job_rolls_back_only_its_savepoint_under(Durability::Full).await;
}

#[tokio::test]
async fn failing_job_rolls_back_only_its_savepoint_normal() {
    failing_job_rolls_back_only_its_savepoint_under(Durability::Normal).await;
}

async fn failing_job_rolls_back_only_its_savepoint_under(durability: Durability) {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, durability).unwrap();
    let a = make_account(&store, "alice@example.org", 1);
    let release = block_writer(&store);
    let ok1 = store.write(move |tx| insert_device(tx, a, 1));
    let bad = store.write(move |tx| {
        insert_device(tx, a, 2)?; // written, then rolled back with the savepoint
        Err::<(), _>(StorageError::InvalidInput {
            what: "test",
            reason: "fails on purpose".into(),
        })
    });
    let sql_bad = store.write(move |tx| {
        insert_device(tx, a, 3)?;
        tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
        Ok(())
    });
    let panicky = store.write(move |tx| {
        insert_device(tx, a, 4)?;
        if a > 0 {
            panic!("job panics on purpose");
        }
        Ok(())
    });
    let ok2 = store.write(move |tx| {
        insert_device(tx, a, 5)?;
        Ok(5u32)
    });
    release.send(()).unwrap();
    ok1.await.unwrap();
    assert!(matches!(
        bad.await,
        Err(StorageError::InvalidInput { what: "test", .. })
    ));
    assert!(matches!(sql_bad.await, Err(StorageError::Sqlite(_))));
    assert!(matches!(panicky.await, Err(StorageError::JobPanicked)));
    assert_eq!(ok2.await.unwrap(), 5);
    assert!(
        store
            .writer_stats()
            .max_batch
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5,
        "the five jobs shared one batch"
    );
    let c = raw(&path);
    let ids: Vec<u32> = c
        .prepare("SELECT device_id FROM devices ORDER BY device_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, vec![1, 5]);
    store.close().unwrap();
}

#[tokio::test]
async fn result_is_delivered_after_commit() {
    result_is_delivered_after_commit_under(Durability::Full).await;
}

#[tokio::test]
async fn result_is_delivered_after_commit_normal() {
    result_is_delivered_after_commit_under(Durability::Normal).await;
}

async fn result_is_delivered_after_commit_under(durability: Durability) {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, durability).unwrap();
    let a = make_account(&store, "alice@example.org", 1);
    // An independent connection, as another process would see the file.
    let observer = raw(&path);
    let visible = |id: u32| -> bool {
        observer
            .query_row(
                "SELECT count(*) FROM devices WHERE device_id = ?1",
                [id],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    };
    let release = block_writer(&store);
    let futs: Vec<_> = (1..=20u32)
        .map(|i| store.write(move |tx| insert_device(tx, a, i).map(|()| i)))
        .collect();
    assert!(!visible(1), "nothing committed while the batch is held");
    release.send(()).unwrap();
    for f in futs {
        let i = f.await.unwrap();
        assert!(
            visible(i),
            "row {i} visible to another connection when its result arrives"
        );
    }
    let r = store.write_blocking(move |tx| insert_device(tx, a, 99));
    assert!(r.is_ok() && visible(99));
    // A read issued after a write completed sees it.
    let seen = store
        .read(move |c| Ok(devices::list_all(c, a)?.len()))
        .await
        .unwrap();
    assert_eq!(seen, 21);
    store.close().unwrap();
}

/// Where a write job runs: under NORMAL the waiting caller commits on its own thread (no
/// hand-off to the writer thread and back); under FULL async callers leave the fsync to the
/// writer thread, so a single-threaded runtime keeps serving meanwhile.
#[test]
fn normal_commits_on_the_waiting_thread_full_on_the_writer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for durability in [Durability::Normal, Durability::Full] {
        let dir = tmp();
        let store = open_store(&db_path(&dir), durability).unwrap();
        let a = make_account(&store, "alice@example.org", 1);
        let here = std::thread::current().id();
        // A blocking caller leads on its own thread under both.
        let ran_on = store
            .write_blocking(move |tx| {
                insert_device(tx, a, 2)?;
                Ok(std::thread::current().id())
            })
            .unwrap();
        assert_eq!(
            ran_on, here,
            "{durability:?}: write_blocking commits on its thread"
        );
        let ran_on = rt.block_on(store.write(move |tx| {
            insert_device(tx, a, 1)?;
            Ok(std::thread::current().id())
        }));
        let ran_on = ran_on.unwrap();
        let inline = store
            .writer_stats()
            .inline_batches
            .load(std::sync::atomic::Ordering::Relaxed);
        match durability {
            Durability::Normal => {
                assert_eq!(ran_on, here, "NORMAL: the request's own thread commits");
                assert!(inline >= 1);
            }
            Durability::Full => assert_ne!(ran_on, here, "FULL: the writer thread commits"),
        }
        store.close().unwrap();
    }
}

/// On the daemon's single runtime thread, requests ready at the same time share one commit
/// under NORMAL too: the leader yields once before committing.
#[test]
fn normal_concurrent_requests_share_commits_on_one_runtime_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tmp();
    let path = db_path(&dir);
    let store = Arc::new(open_store(&path, Durability::Normal).unwrap());
    let a = make_account(&store, "alice@example.org", 1);
    let before = store
        .writer_stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..8u32 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..50u32 {
                    let id = task * 1000 + i + 1;
                    store
                        .write(move |tx| insert_device(tx, a, id))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let stats = store.writer_stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        batches <= 400 / 4,
        "8 concurrent requests share commits: {batches} batches for 400 jobs"
    );
    assert!(stats.max_batch.load(std::sync::atomic::Ordering::Relaxed) >= 8);
    Arc::try_unwrap(store).unwrap().close().unwrap();
    let n: i64 = raw(&path)
        .query_row("SELECT count(*) FROM devices", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 400);
}

/// A request cancelled while it holds the right to lead the next batch (it yields first) must
/// not strand the queued jobs: the writer thread takes over.
#[test]
fn cancelled_leader_hands_its_batch_to_the_writer() {
    let dir = tmp();
    let path = db_path(&dir);
    let store = Arc::new(open_store(&path, Durability::Normal).unwrap());
    let a = make_account(&store, "alice@example.org", 1);
    use std::future::Future as _;
    let mut fut = Box::pin(store.write(move |tx| insert_device(tx, a, 1)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Outside a runtime `yield_now` wakes at once; either way the first poll stops at the
    // yield, holding the leadership.
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    drop(fut);
    // The writer thread commits the orphaned job; a later writer is not blocked.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let st = Arc::clone(&store);
    std::thread::spawn(move || {
        let r = st.write_blocking(move |tx| insert_device(tx, a, 2));
        let _ = done_tx.send(r);
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a later write completes")
        .unwrap();
    let ids = store
        .read_blocking(move |c| {
            Ok(devices::list_all(c, a)?
                .into_iter()
                .map(|d| d.device_id)
                .collect::<Vec<_>>())
        })
        .unwrap();
    assert_eq!(ids, vec![1, 2]);
    store.close().unwrap();
}

// ---- checkpoints and shutdown ----------------------------------------------------------------

/// Under a steady stream of commits a background checkpoint never finds the log idle, so SQLite
/// never starts the WAL over: it grew for as long as the stream lasted, and every append walked a
/// longer wal-index hash chain (one entry per earlier frame of the same page). The writer now
/// finishes such a checkpoint between two commits of its own.
#[test]
fn wal_starts_over_under_a_steady_stream_of_commits() {
    let dir = tmp();
    let path = db_path(&dir);
    let config = StoreConfig {
        durability: Durability::Normal,
        checkpoint_pages: 100,
        keys: test_keys(&path),
        ..StoreConfig::default()
    };
    let store = Store::open_with(&path, config).unwrap();
    let a = make_account(&store, "alice@example.org", 1);
    let commits = 6_000u32;
    for i in 0..commits {
        // One changed row: one WAL frame per commit, always the same page.
        store
            .write_blocking(move |tx| {
                sessions::upsert(
                    tx,
                    &SessionRow {
                        state: SecretBlob::new(i.to_le_bytes().repeat(64)),
                        ..session(a, "x@example.net", TWO, 1, 0)
                    },
                )
            })
            .unwrap();
    }
    let frame = 4096 + 24;
    let wal = std::fs::metadata(format!("{}-wal", path.display()))
        .unwrap()
        .len();
    // The log starts over about every 150 frames (1.5 x checkpoint_pages), later if an fsync
    // of the checkpointer's holds the checkpoint lock meanwhile; before, it never did.
    assert!(
        wal < u64::from(commits / 4) * frame,
        "WAL of {} frames after {commits} one-frame commits",
        wal / frame
    );
    assert!(store.writer_stats().checkpoints.load(Ordering::Relaxed) > 0);
    store.close().unwrap();
}

#[test]
fn checkpointer_runs_and_close_truncates_wal() {
    let dir = tmp();
    let path = db_path(&dir);
    let config = StoreConfig {
        checkpoint_interval: Duration::from_millis(50),
        checkpoint_pages: 10,
        keys: test_keys(&path),
        ..StoreConfig::default()
    };
    let store = Store::open_with(&path, config).unwrap();
    let a = make_account(&store, "alice@example.org", 1);
    for i in 0..50u32 {
        store
            .write_blocking(move |tx| {
                sessions::upsert(
                    tx,
                    &SessionRow {
                        state: SecretBlob::new(vec![i as u8; 8000]),
                        ..session(a, "x@example.net", TWO, i + 1, 0)
                    },
                )
            })
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store
        .checkpoint_stats()
        .runs
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        store
            .checkpoint_stats()
            .requested
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    store.close().unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 0, "WAL truncated at close");
    // Closed store refuses work, closing twice is fine.
    assert!(matches!(
        store.write_blocking(|_| Ok(())),
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        store.read_blocking(|_| Ok(())),
        Err(StorageError::Closed)
    ));
    store.close().unwrap();
    // Data survived.
    let store = open_store(&path, Durability::Full).unwrap();
    assert_eq!(
        store
            .read_blocking(move |c| Ok(sessions::list(c, a)?.len()))
            .unwrap(),
        50
    );
}

#[tokio::test]
async fn batch_failure_reaches_every_job_and_writer_recovers() {
    batch_failure_reaches_every_job_and_writer_recovers_under(Durability::Full).await;
}

#[tokio::test]
async fn batch_failure_reaches_every_job_and_writer_recovers_normal() {
    batch_failure_reaches_every_job_and_writer_recovers_under(Durability::Normal).await;
}

async fn batch_failure_reaches_every_job_and_writer_recovers_under(durability: Durability) {
    let dir = tmp();
    let path = db_path(&dir);
    let store = open_store(&path, durability).unwrap();
    let a = make_account(&store, "alice@example.org", 1);
    let release = block_writer(&store);
    let first = store.write(move |tx| insert_device(tx, a, 1));
    // A job that ends the whole transaction behind the writer's back: its RELEASE fails, so
    // the batch cannot be committed.
    let saboteur = store.write(|tx| {
        tx.execute_batch("ROLLBACK")?;
        Ok(())
    });
    let last = store.write(move |tx| insert_device(tx, a, 3));
    release.send(()).unwrap();
    for r in [first.await, saboteur.await, last.await] {
        assert!(matches!(r, Err(StorageError::Batch(_))), "{r:?}");
    }
    // Nothing of that batch was stored, and the writer keeps going.
    store
        .write(move |tx| insert_device(tx, a, 4))
        .await
        .unwrap();
    let ids = store
        .read(move |c| {
            Ok(devices::list_all(c, a)?
                .into_iter()
                .map(|d| d.device_id)
                .collect::<Vec<_>>())
        })
        .await
        .unwrap();
    assert_eq!(ids, vec![4]);
    store.close().unwrap();
}
