//! The WAL stays bounded (issue 11): an outside reader that blocks checkpoints is reported in
//! the log, and once it lets go the WAL is copied back and cut to `journal_size_limit`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use omemod::storage::accounts::{self, TrustMode};
use omemod::storage::sessions::{self, Initiator, SessionRow};
use omemod::storage::{now, Durability, Namespace, SecretBlob, Store, StoreConfig};

fn session(a: i64, device_id: u32, size: usize) -> SessionRow {
    SessionRow {
        account_id: a,
        jid: "x@example.net".into(),
        namespace: Namespace::Twomemo,
        device_id,
        state: SecretBlob::new(vec![device_id as u8; size]),
        state_format: 1,
        identity_key: [0xC0; 32],
        initiated_by: Initiator::Us,
        confirmed: false,
        created_at: 1,
        updated_at: 1,
        messages_sent: 0,
        messages_received: 0,
        unanswered: 0,
        suspect: false,
    }
}

fn wal_len(path: &std::path::Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn an_outside_reader_blocking_checkpoints_is_reported_and_the_wal_shrinks_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("omemod.db");
    let store = Store::open_with(
        &path,
        StoreConfig {
            durability: Durability::Normal,
            checkpoint_interval: Duration::from_millis(50),
            checkpoint_pages: 50,
            checkpoint_stall_warning: Duration::from_millis(300),
            // The key file beside the state directory, not in the user's ~/.config.
            keys: omemod::storage::KeySettings {
                source: Some(omemod::storage::SourceKind::KeyFile),
                key_file: Some(dir.path().join("keys/omemod.key")),
                ..Default::default()
            },
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let a = store
        .write_blocking(|tx| accounts::insert(tx, "alice@example.org", 1, TrustMode::Btbv, now()))
        .unwrap();
    // Like `sqlite3 omemod.db` with a transaction left open.
    let mut outside = rusqlite::Connection::open(&path).unwrap();
    let tx = outside.transaction().unwrap();
    let _: i64 = tx
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    let write = |from: u32, to: u32| {
        for i in from..to {
            store
                .write_blocking(move |tx| sessions::upsert(tx, &session(a, i, 8_000)))
                .unwrap();
        }
    };
    // New rows each time: an upsert that changes nothing writes no WAL frames.
    write(1, 1_300);
    let blocked_wal = wal_len(&path);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .checkpoint_stats()
        .stalled_warnings
        .load(Ordering::Relaxed)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "no warning about blocked checkpoints"
        );
        write(1_300, 1_302);
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("figure: WAL with an outside reader: {blocked_wal} bytes");
    assert!(blocked_wal > 8 * 1024 * 1024, "{blocked_wal}");
    // The reader lets go: the next checkpoints complete, the WAL restarts and is cut to the
    // journal size limit (8 MiB) at the next commit.
    drop(tx);
    drop(outside);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next = 2_000;
    loop {
        write(next, next + 2);
        next += 2;
        let len = wal_len(&path);
        if len <= 8 * 1024 * 1024 {
            eprintln!("figure: WAL after the reader left: {len} bytes");
            break;
        }
        assert!(Instant::now() < deadline, "WAL still {len} bytes");
        std::thread::sleep(Duration::from_millis(50));
    }
    store.close().unwrap();
}
