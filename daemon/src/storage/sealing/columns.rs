//! The sealed columns: the one place that names them and what binds each to its row. A table
//! module reads and writes its secret column through [`super::Sealer`] with the key parts listed
//! here, in this order; the passes below (sealing a plaintext database, re-sealing under a new
//! data key, exports and imports) walk [`ALL`]. Sealing one more column is one constant here,
//! its line in [`ALL`], and its table module's reads and writes.

use rusqlite::types::Value;
use rusqlite::Connection;
use zeroize::Zeroizing;

use super::{KeyPart, SealError, Sealer};
use crate::storage::error::{Result, StorageError};

/// A sealed column and the columns of its row bound into its associated data.
#[derive(Debug, PartialEq, Eq)]
pub struct SealedColumn {
    /// Table.
    pub table: &'static str,
    /// The secret column (BLOB; NULL stays NULL).
    pub column: &'static str,
    /// The row's key columns, in associated-data order.
    pub key: &'static [&'static str],
}

/// One session's key columns.
const DEVICE: &[&str] = &["account_id", "jid", "namespace", "device_id"];

/// `identity.private_key`: our identity's X25519 scalar.
pub const IDENTITY_PRIVATE_KEY: SealedColumn = SealedColumn {
    table: "identity",
    column: "private_key",
    key: &["account_id"],
};
/// `signed_prekeys.private_key`.
pub const SIGNED_PREKEY_PRIVATE_KEY: SealedColumn = SealedColumn {
    table: "signed_prekeys",
    column: "private_key",
    key: &["account_id", "id"],
};
/// `prekeys.private_key`.
pub const PREKEY_PRIVATE_KEY: SealedColumn = SealedColumn {
    table: "prekeys",
    column: "private_key",
    key: &["account_id", "id"],
};
/// `sessions.state`: the ratchet (root, chain and skipped keys).
pub const SESSION_STATE: SealedColumn = SealedColumn {
    table: "sessions",
    column: "state",
    key: DEVICE,
};
/// `previous_sessions.state`: an archived ratchet, bound to its device (several rows may hold
/// states of one device; any of them is a state of that device).
pub const PREVIOUS_SESSION_STATE: SealedColumn = SealedColumn {
    table: "previous_sessions",
    column: "state",
    key: DEVICE,
};
/// `skipped_keys.message_key`.
pub const SKIPPED_MESSAGE_KEY: SealedColumn = SealedColumn {
    table: "skipped_keys",
    column: "message_key",
    key: &[
        "account_id",
        "jid",
        "namespace",
        "device_id",
        "ratchet_key",
        "n",
    ],
};
/// `redelivery.key_material`: what opens a decrypted message again, bound to its digest.
pub const REDELIVERY_KEY_MATERIAL: SealedColumn = SealedColumn {
    table: "redelivery",
    column: "key_material",
    key: &["account_id", "digest"],
};
/// `own_messages.key_material`: what opens an element this device sent, bound to its digest.
pub const OWN_MESSAGE_KEY_MATERIAL: SealedColumn = SealedColumn {
    table: "own_messages",
    column: "key_material",
    key: &["account_id", "digest"],
};

/// Every sealed column.
pub const ALL: &[&SealedColumn] = &[
    &IDENTITY_PRIVATE_KEY,
    &SIGNED_PREKEY_PRIVATE_KEY,
    &PREKEY_PRIVATE_KEY,
    &SESSION_STATE,
    &PREVIOUS_SESSION_STATE,
    &SKIPPED_MESSAGE_KEY,
    &REDELIVERY_KEY_MATERIAL,
    &OWN_MESSAGE_KEY_MATERIAL,
];

/// The sealed columns of `table`.
pub fn of_table(table: &str) -> impl Iterator<Item = &'static SealedColumn> + '_ {
    ALL.iter().copied().filter(move |c| c.table == table)
}

/// The key parts of a row given as SQL values, `value(name)` giving each key column's.
pub fn key_of<'v>(
    column: &SealedColumn,
    mut value: impl FnMut(&str) -> Option<&'v Value>,
) -> Result<Vec<KeyPart<'v>>> {
    column
        .key
        .iter()
        .map(|name| match value(name) {
            Some(Value::Integer(i)) => Ok(KeyPart::Int(*i)),
            Some(Value::Text(t)) => Ok(KeyPart::Text(t)),
            Some(Value::Blob(b)) => Ok(KeyPart::Blob(b)),
            _ => Err(StorageError::BadData {
                table: column.table,
                column: column.column,
                reason: format!("key column {name} is missing or not a key value"),
            }),
        })
        .collect()
}

/// The key parts of values read in the order of `column.key`.
fn key_in_order<'v>(column: &SealedColumn, key: &'v [Value]) -> Result<Vec<KeyPart<'v>>> {
    key_of(column, |name| {
        column.key.iter().position(|k| *k == name).map(|i| &key[i])
    })
}

/// Rewrites every non-NULL value of every sealed column: `change` gets the column, the row's key
/// and the stored value, and returns the value to store. One statement per row, inside the
/// caller's transaction. Returns how many values were rewritten.
fn rewrite_all(
    conn: &Connection,
    mut change: impl FnMut(&SealedColumn, &[KeyPart<'_>], &[u8]) -> Result<Vec<u8>>,
) -> Result<usize> {
    let mut n = 0;
    for column in ALL {
        let select = format!(
            "SELECT rowid, {}, \"{}\" FROM \"{}\" WHERE \"{}\" IS NOT NULL",
            column.key.join(", "),
            column.column,
            column.table,
            column.column
        );
        let update = format!(
            "UPDATE \"{}\" SET \"{}\" = ?1 WHERE rowid = ?2",
            column.table, column.column
        );
        let rows: Vec<(i64, Vec<Value>, Zeroizing<Vec<u8>>)> = conn
            .prepare(&select)?
            .query_and_then([], |r| -> Result<_> {
                let key = (0..column.key.len())
                    .map(|i| r.get::<_, Value>(i + 1))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let value = Zeroizing::new(r.get::<_, Vec<u8>>(column.key.len() + 1)?);
                Ok((r.get(0)?, key, value))
            })?
            .collect::<Result<_>>()?;
        let mut st = conn.prepare(&update)?;
        for (rowid, key, value) in rows {
            let parts = key_in_order(column, &key)?;
            let new = change(column, &parts, &value)?;
            st.execute(rusqlite::params![new, rowid])?;
            n += 1;
        }
    }
    Ok(n)
}

/// Seals every value of a database written before sealing (all of them plaintext).
pub fn seal_plaintext(conn: &Connection, sealer: &Sealer) -> Result<usize> {
    rewrite_all(conn, |column, key, plain| {
        Ok(sealer.seal(column, key, plain))
    })
}

/// Opens every sealed value with `old` and seals it again with `new` (a new data key).
pub fn reseal(conn: &Connection, old: &Sealer, new: &Sealer) -> Result<usize> {
    rewrite_all(conn, |column, key, sealed| {
        let plain = old.open(column, key, sealed)?;
        Ok(new.seal(column, key, &plain))
    })
}

/// Opens one sealed value of the database (if it holds any) to check that `sealer` is its key.
pub fn check_one(conn: &Connection, sealer: &Sealer) -> Result<(), StorageError> {
    for column in ALL {
        let select = format!(
            "SELECT {}, \"{}\" FROM \"{}\" WHERE \"{}\" IS NOT NULL LIMIT 1",
            column.key.join(", "),
            column.column,
            column.table,
            column.column
        );
        let found: Option<(Vec<Value>, Vec<u8>)> = {
            let mut st = conn.prepare(&select)?;
            let mut rows = st.query([])?;
            match rows.next()? {
                None => None,
                Some(r) => Some((
                    (0..column.key.len())
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                    r.get(column.key.len())?,
                )),
            }
        };
        if let Some((key, sealed)) = found {
            let parts = key_in_order(column, &key)?;
            sealer
                .open(column, &parts, &sealed)
                .map_err(|e: SealError| StorageError::from(e))?;
            return Ok(());
        }
    }
    Ok(())
}
