//! Moving state in and out of the database: deleting every row of an account, online backups
//! (SQLite's backup API), restoring one, and exporting / importing one account.
//!
//! Every table holding an account's data has an `account_id` column; the functions here find
//! those tables in the schema rather than naming them, so that tables added by later migrations
//! are deleted, exported and imported too.
//!
//! Every copy that can be put back carries the restored-copy stamp ([`super::generation`]): a
//! backup, the database a restore puts in place, an exported account (and so the imported one).
//! A daemon starting on it treats its accounts as restored from an older state.
//!
//! Sealing (issue 24): a backup is a copy of the sealed file and opens only with the
//! installation's key; a restore checks that the key opens the backup before it replaces
//! anything. An account export opens the account's sealed values and seals the whole document
//! under a passphrase ([`super::sealing::envelope`]), for another machine whose database has
//! another data key; an import seals them again under the importing database's key, bound to
//! their new rows.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Map, Value};

use super::error::{Result, StorageError};
use super::sealing::{columns, envelope, keys, KeyPart, Sealer};
use super::{io_err, migrations, Db, KeySettings};

/// The `format` field of an account export.
pub const EXPORT_FORMAT: &str = "omemod-account-export";
/// Its version.
pub const EXPORT_VERSION: u64 = 1;

fn bad(what: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidInput {
        what,
        reason: reason.into(),
    }
}

/// The tables (other than `accounts`) with an `account_id` column, in creation order (so a
/// table comes after those it references).
pub fn account_tables(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT m.name FROM sqlite_master m \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> 'accounts' \
         AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) c WHERE c.name = 'account_id') \
         ORDER BY m.rowid",
    )?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// Deletes every row of account `id`, children first (no reliance on `foreign_keys`); returns
/// how many rows went. Call it on a connection with `secure_delete` on, so that the freed
/// space is zeroed.
pub fn delete_account_rows(conn: &Connection, id: i64) -> Result<usize> {
    let mut n = 0;
    for table in account_tables(conn)?.iter().rev() {
        n += conn.execute(
            &format!("DELETE FROM \"{table}\" WHERE account_id = ?1"),
            [id],
        )?;
    }
    n += conn.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
    Ok(n)
}

/// Creates `path` (mode 0600), refusing to overwrite anything.
fn create_private(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating", path))
}

fn integrity_ok(conn: &Connection, path: &Path) -> Result<()> {
    let r: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if r == "ok" {
        Ok(())
    } else {
        Err(StorageError::Io {
            action: "checking",
            path: path.to_owned(),
            source: std::io::Error::other(format!("integrity check failed: {r}")),
        })
    }
}

/// Copies the database at `src` into `dst` in one step of SQLite's backup API: the copy is one
/// consistent snapshot even while a daemon writes (it holds a read transaction, which WAL lets
/// run beside the writer). `dst` is created 0600 and must not exist; it is a self-contained
/// file (rollback journal, no `-wal`).
fn copy_database(src_conn: &Connection, dst: &Path) -> Result<()> {
    drop(create_private(dst)?);
    let mut dst_conn = Connection::open(dst)?;
    {
        let backup = Backup::new(src_conn, &mut dst_conn)?;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                // Busy/Locked: someone holds a lock on the destination or the source is being
                // checkpointed; wait briefly and go on.
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
    let _: String = dst_conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
    integrity_ok(&dst_conn, dst)?;
    dst_conn.close().map_err(|(_, e)| StorageError::Sqlite(e))?;
    let f = OpenOptions::new()
        .read(true)
        .open(dst)
        .map_err(io_err("opening", dst))?;
    f.sync_all().map_err(io_err("syncing", dst))?;
    Ok(())
}

fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        return Err(StorageError::Io {
            action: "opening",
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// What a backup contains.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    /// The file written.
    pub file: PathBuf,
    /// Its schema version.
    pub schema_version: u32,
    /// Its accounts.
    pub accounts: Vec<String>,
    /// Its size in bytes.
    pub bytes: u64,
}

fn summary(conn: &Connection, file: &Path) -> Result<BackupSummary> {
    let schema_version = migrations::current_version(conn)?;
    let mut stmt = conn.prepare("SELECT jid FROM accounts ORDER BY jid")?;
    let accounts = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let bytes = std::fs::metadata(file)
        .map_err(io_err("inspecting", file))?
        .len();
    Ok(BackupSummary {
        file: file.to_owned(),
        schema_version,
        accounts,
        bytes,
    })
}

/// Brings the copy at `path` to this binary's schema and stamps every account of it as a
/// restored copy.
fn stamp_copy(path: &Path) -> Result<()> {
    let mut conn = Connection::open(path)?;
    migrations::migrate(&mut conn, migrations::MIGRATIONS)?;
    super::generation::stamp(&conn)?;
    conn.close().map_err(|(_, e)| StorageError::Sqlite(e))?;
    OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", path))
}

/// Writes a consistent copy of the database `db` to `dst` (which must not exist), stamped as a
/// restored copy. Safe while a daemon runs on `db`.
pub fn backup(db: &Path, dst: &Path) -> Result<BackupSummary> {
    let src = open_read_only(db)?;
    copy_database(&src, dst)?;
    drop(src);
    stamp_copy(dst)?;
    let check = open_read_only(dst)?;
    summary(&check, dst)
}

/// Checks that `file` is an omemod database this binary can open.
pub fn check_backup(file: &Path) -> Result<BackupSummary> {
    let conn = open_read_only(file)?;
    integrity_ok(&conn, file)?;
    let found = migrations::current_version(&conn)?;
    let supported = migrations::supported_version();
    if found > supported {
        return Err(StorageError::SchemaTooNew { found, supported });
    }
    let has_accounts: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'accounts')",
        [],
        |r| r.get(0),
    )?;
    if !has_accounts || found == 0 {
        return Err(bad("backup", "not an omemod database"));
    }
    summary(&conn, file)
}

/// Checks that the installation's key opens the sealed database at `file` (its data key
/// unwraps, and one sealed value opens). A database from before sealing has nothing to open.
pub fn check_key(file: &Path, keys: &KeySettings) -> Result<()> {
    let conn = open_read_only(file)?;
    if let Some(record) = keys::read_record(&conn)? {
        let key = keys::open(&record, keys)?;
        columns::check_one(&conn, &Sealer::new(&key))?;
    }
    Ok(())
}

/// The sealer of the database `conn` (whose key `keys` must give).
fn sealer_of(conn: &Connection, keys: &KeySettings) -> Result<Option<Sealer>> {
    keys::read_record(conn)?
        .map(|record| Ok(Sealer::new(&keys::open(&record, keys)?)))
        .transpose()
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    /// The restored backup.
    pub backup: BackupSummary,
    /// Where the database that was replaced went (`None` if there was none).
    pub previous: Option<PathBuf>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Replaces the database `db` by a copy of `file`, stamped as a restored copy (whatever made
/// `file`). The caller must hold the database's lock (no daemon may run). The replaced database
/// is kept next to it as `<db>.before-restore-<unix time>`; the record beside it
/// (`<db>.generation`) stays, and names the state the copy is older than.
pub fn restore(file: &Path, db: &Path, keys: &KeySettings) -> Result<RestoreSummary> {
    let checked = check_backup(file)?;
    check_key(file, keys)?;
    let tmp = with_suffix(db, ".restoring");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &tmp)(e)),
    }
    {
        let src = open_read_only(file)?;
        copy_database(&src, &tmp)?;
    }
    stamp_copy(&tmp)?;
    let mut previous = None;
    if db.exists() {
        // Fold the old WAL into the old file first: the WAL must never meet the new file.
        {
            let conn = Connection::open(db)?;
            let _: (i64, i64, i64) =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            let _: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
        }
        let kept = super::side_files::before_restore_path(db, super::now());
        std::fs::rename(db, &kept).map_err(io_err("moving aside", db))?;
        previous = Some(kept);
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let p = with_suffix(db, suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &p)(e)),
        }
    }
    std::fs::rename(&tmp, db).map_err(io_err("moving into place", db))?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(RestoreSummary {
        backup: BackupSummary {
            file: db.to_owned(),
            ..checked
        },
        previous,
    })
}

fn to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) => json!(f),
        SqlValue::Text(t) => Value::String(t),
        SqlValue::Blob(b) => json!({ "hex": hex::encode(b) }),
    }
}

fn from_json(v: &Value) -> Result<SqlValue> {
    Ok(match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().ok_or_else(|| bad("export", "bad number"))?),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Object(o) => match o.get("hex").and_then(Value::as_str) {
            Some(h) if o.len() == 1 => {
                SqlValue::Blob(hex::decode(h).map_err(|_| bad("export", "bad hex blob"))?)
            }
            _ => return Err(bad("export", "unexpected object value")),
        },
        Value::Array(_) => return Err(bad("export", "unexpected array value")),
    })
}

fn rows_of(conn: &Connection, sql: &str, id: i64) -> Result<Vec<Map<String, Value>>> {
    let mut stmt = conn.prepare(sql)?;
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let rows = stmt
        .query_and_then([id], |r| -> Result<_> {
            let mut m = Map::new();
            for (i, name) in names.iter().enumerate() {
                m.insert(name.clone(), to_json(r.get::<_, SqlValue>(i)?));
            }
            Ok(m)
        })?
        .collect();
    rows
}

/// Replaces each sealed value of `row` (a row of `table`, as exported) by the value it opens to.
fn open_row(
    sealer: &Sealer,
    table: &str,
    row: &mut Map<String, Value>,
    account_id: i64,
) -> Result<()> {
    for column in columns::of_table(table) {
        let Some(Value::Object(o)) = row.get(column.column) else {
            continue;
        };
        let sealed = from_json(&Value::Object(o.clone()))?;
        let SqlValue::Blob(sealed) = sealed else {
            continue;
        };
        let values: Vec<(String, SqlValue)> = column
            .key
            .iter()
            .map(|k| {
                if *k == "account_id" {
                    Ok(((*k).to_owned(), SqlValue::Integer(account_id)))
                } else {
                    row.get(*k)
                        .map(|v| Ok(((*k).to_owned(), from_json(v)?)))
                        .unwrap_or_else(|| Err(bad("export", format!("{table} row without {k}"))))
                }
            })
            .collect::<Result<_>>()?;
        let key = columns::key_of(column, |name| {
            values.iter().find(|(k, _)| k == name).map(|(_, v)| v)
        })?;
        let plain = sealer.open(column, &key, &sealed)?;
        row.insert(
            column.column.to_owned(),
            json!({ "hex": hex::encode(&plain[..]) }),
        );
    }
    Ok(())
}

/// Every row of the account `jid` as one JSON document, its secrets opened (treat the document
/// as the account itself: [`export_account_to`] seals it under a passphrase). `keys` must give
/// the database's key. Safe while a daemon runs.
pub fn export_account(db: &Path, jid: &str, keys: &KeySettings) -> Result<Value> {
    let conn = open_read_only(db)?;
    let sealer = sealer_of(&conn, keys)?;
    // One read transaction: every table from the same snapshot.
    conn.execute_batch("BEGIN")?;
    let id: i64 = conn
        .query_row("SELECT id FROM accounts WHERE jid = ?1", [jid], |r| {
            r.get(0)
        })
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => StorageError::NotFound { what: "account" },
            e => e.into(),
        })?;
    let mut account = rows_of(&conn, "SELECT * FROM accounts WHERE id = ?1", id)?;
    let mut account = account
        .pop()
        .ok_or(StorageError::NotFound { what: "account" })?;
    account.remove("id");
    // The export is a copy: wherever it is imported it is treated as restored.
    account.insert("restored_copy".to_owned(), json!(1));
    let mut tables = Vec::new();
    for table in account_tables(&conn)? {
        let mut rows = rows_of(
            &conn,
            &format!("SELECT * FROM \"{table}\" WHERE account_id = ?1"),
            id,
        )?;
        for r in &mut rows {
            if let Some(sealer) = &sealer {
                open_row(sealer, &table, r, id)?;
            }
            r.remove("account_id");
        }
        tables.push(json!({"table": table, "rows": rows}));
    }
    let schema_version = migrations::current_version(&conn)?;
    conn.execute_batch("COMMIT")?;
    Ok(json!({
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "schema_version": schema_version,
        "exported_at": super::now(),
        "account": account,
        "tables": tables,
    }))
}

/// Writes [`export_account`] to `file` (created 0600; must not exist), sealed under
/// `passphrase`.
pub fn export_account_to(
    db: &Path,
    jid: &str,
    file: &Path,
    keys: &KeySettings,
    passphrase: &str,
) -> Result<usize> {
    let doc = export_account(db, jid, keys)?;
    let text = zeroize::Zeroizing::new(
        serde_json::to_vec(&doc).map_err(|e| bad("export", e.to_string()))?,
    );
    let sealed = envelope::seal(EXPORT_FORMAT, &text, passphrase)
        .map_err(|e| bad("export", e.to_string()))?;
    let out = serde_json::to_vec_pretty(&sealed).map_err(|e| bad("export", e.to_string()))?;
    let mut f = create_private(file)?;
    std::io::Write::write_all(&mut f, &out).map_err(io_err("writing", file))?;
    f.sync_all().map_err(io_err("syncing", file))?;
    Ok(doc["tables"].as_array().map_or(0, |t| {
        t.iter()
            .filter_map(|t| t["rows"].as_array())
            .map(Vec::len)
            .sum()
    }))
}

fn insert_row(tx: &Db, table: &str, row: &Map<String, Value>, id: Option<i64>) -> Result<()> {
    let cols: Vec<String> = {
        let mut stmt = tx.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let c = stmt
            .query_map([table], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        c
    };
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (k, v) in row {
        if !cols.contains(k) || k == "account_id" || (table == "accounts" && k == "id") {
            return Err(bad(
                "export",
                format!("column {table}.{k} is not in this database's schema"),
            ));
        }
        names.push(format!("\"{k}\""));
        values.push(from_json(v)?);
    }
    if let Some(id) = id {
        names.push("account_id".into());
        values.push(SqlValue::Integer(id));
    }
    seal_values(tx, table, &names, &mut values)?;
    let marks: Vec<String> = (1..=values.len()).map(|i| format!("?{i}")).collect();
    tx.execute(
        &format!(
            "INSERT INTO \"{table}\" ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        ),
        rusqlite::params_from_iter(values.iter()),
    )?;
    Ok(())
}

/// Seals the secret values of a row about to be inserted (`names` quoted as in the INSERT),
/// bound to the row's key as inserted.
fn seal_values(tx: &Db, table: &str, names: &[String], values: &mut [SqlValue]) -> Result<()> {
    let position = |name: &str| {
        names
            .iter()
            .position(|n| n == &format!("\"{name}\"") || n == name)
    };
    for column in columns::of_table(table) {
        let Some(at) = position(column.column) else {
            continue;
        };
        let SqlValue::Blob(plain) = &values[at] else {
            continue;
        };
        let plain = zeroize::Zeroizing::new(plain.clone());
        let key_values: Vec<SqlValue> = column
            .key
            .iter()
            .map(|k| {
                position(k)
                    .map(|i| values[i].clone())
                    .ok_or_else(|| bad("export", format!("{table} row without {k}")))
            })
            .collect::<Result<_>>()?;
        let key: Vec<KeyPart<'_>> = columns::key_of(column, |name| {
            column
                .key
                .iter()
                .position(|k| *k == name)
                .map(|i| &key_values[i])
        })?;
        let sealed = tx.seal(column, &key, &plain);
        values[at] = SqlValue::Blob(sealed);
    }
    Ok(())
}

/// Whether `table`'s primary key is an `id INTEGER` column alone (an alias of the row id, which
/// nothing else refers to outside its account's rows).
fn has_rowid_alias(tx: &Connection, table: &str) -> Result<bool> {
    let (id_pk, pks): (i64, i64) = tx.query_row(
        "SELECT COALESCE(SUM(name = 'id' AND pk = 1 AND upper(type) = 'INTEGER'), 0), \
                COALESCE(SUM(pk > 0), 0) \
         FROM pragma_table_info(?1)",
        [table],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(id_pk == 1 && pks == 1)
}

/// Why an import needs a passphrase and did not get one (the CLI asks for it then).
pub fn needs_passphrase(doc: &Value) -> bool {
    envelope::is_envelope(doc)
}

/// Inserts an exported account into the database (inside the caller's transaction), its secrets
/// sealed under this database's key. `doc` is an export sealed under `passphrase`, or a
/// plaintext export written before sealing. Refuses a document of another format, a newer
/// schema, or a JID that already has an account. Returns the account's JID.
pub fn import_account(tx: &Db, doc: &Value, passphrase: Option<&str>) -> Result<String> {
    if envelope::is_envelope(doc) {
        let passphrase = passphrase.ok_or_else(|| {
            bad(
                "import",
                "the export is sealed under a passphrase, and none was given",
            )
        })?;
        let (what, text) =
            envelope::open(doc, passphrase).map_err(|e| bad("import", e.to_string()))?;
        if what != EXPORT_FORMAT {
            return Err(bad(
                "import",
                format!("the sealed file holds {what}, not an account"),
            ));
        }
        let inner: Value =
            serde_json::from_slice(&text).map_err(|e| bad("export", e.to_string()))?;
        return import_plain(tx, &inner);
    }
    import_plain(tx, doc)
}

fn import_plain(tx: &Db, doc: &Value) -> Result<String> {
    if doc["format"] != EXPORT_FORMAT || doc["version"] != EXPORT_VERSION {
        return Err(bad(
            "export",
            format!("not an {EXPORT_FORMAT} version {EXPORT_VERSION} file"),
        ));
    }
    let supported = u64::from(migrations::supported_version());
    let found = doc["schema_version"].as_u64().unwrap_or(u64::MAX);
    if found > supported {
        return Err(StorageError::SchemaTooNew {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: migrations::supported_version(),
        });
    }
    let account = doc["account"]
        .as_object()
        .ok_or_else(|| bad("export", "no account"))?;
    let jid = account
        .get("jid")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("export", "account without jid"))?
        .to_owned();
    // Its rows may come from a file that stored JIDs unnormalised: the next open checks them.
    super::jids::forget_normalised(tx)?;
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE jid = ?1)",
        [&jid],
        |r| r.get(0),
    )?;
    if exists {
        return Err(bad(
            "import",
            format!("an account {jid} already exists in this database"),
        ));
    }
    insert_row(tx, "accounts", account, None)?;
    let id = tx.last_insert_rowid();
    // A copy of an account that may have gone on elsewhere (exports of older versions carry
    // no stamp).
    tx.execute("UPDATE accounts SET restored_copy = 1 WHERE id = ?1", [id])?;
    let known = account_tables(tx)?;
    for t in doc["tables"]
        .as_array()
        .ok_or_else(|| bad("export", "no tables"))?
    {
        let table = t["table"]
            .as_str()
            .ok_or_else(|| bad("export", "table without name"))?;
        if !known.iter().any(|k| k == table) {
            return Err(bad(
                "export",
                format!("table {table} is not in this database's schema"),
            ));
        }
        // A row id of another database may be taken here by another account's row: such rows
        // get new ids, in the exported order (which keeps their age order).
        let renumber = has_rowid_alias(tx, table)?;
        for row in t["rows"].as_array().into_iter().flatten() {
            let row = row
                .as_object()
                .ok_or_else(|| bad("export", "row is not an object"))?;
            if renumber {
                let mut row = row.clone();
                row.remove("id");
                insert_row(tx, table, &row, Some(id))?;
            } else {
                insert_row(tx, table, row, Some(id))?;
            }
        }
    }
    Ok(jid)
}
