//! Values shared by the table modules: secret wrappers, device addresses, column decoding.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::Row;
use zeroize::Zeroizing;

use super::error::{Result, StorageError};

pub use protocol_core::Version as Namespace;

/// A 32-byte secret (private key, message key). Zeroed on drop; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// Wraps the bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies a slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut out = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return None;
        }
        out.copy_from_slice(bytes);
        Some(Self(out))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<Zeroizing<[u8; 32]>> for SecretKey {
    fn from(v: Zeroizing<[u8; 32]>) -> Self {
        Self(v)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret of variable length (a serialized ratchet state). Zeroed on drop; `Debug` prints
/// only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBlob(Zeroizing<Vec<u8>>);

impl SecretBlob {
    /// Wraps the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Takes over a buffer that already zeroes itself (no copy).
    pub fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Unwraps into the (still zeroizing) buffer.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBlob {
    fn from(v: Zeroizing<Vec<u8>>) -> Self {
        Self(v)
    }
}

impl fmt::Debug for SecretBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// One remote (or own) device in one namespace, as seen from one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceAddr {
    /// `accounts.id`.
    pub account_id: i64,
    /// Bare JID the device belongs to.
    pub jid: String,
    /// OMEMO version.
    pub namespace: Namespace,
    /// Device id.
    pub device_id: u32,
}

impl DeviceAddr {
    /// Builds an address.
    pub fn new(
        account_id: i64,
        jid: impl Into<String>,
        namespace: Namespace,
        device_id: u32,
    ) -> Self {
        Self {
            account_id,
            jid: jid.into(),
            namespace,
            device_id,
        }
    }
}

/// The row of `table` (columns `columns`) that belongs to one device, if any. Every per-device
/// The condition that selects one device's rows, with [`addr_params`] as `?1` to `?4`.
pub(crate) const WHERE_ADDR: &str =
    "account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4";

/// A device address as the parameters of [`WHERE_ADDR`].
pub(crate) fn addr_params(addr: &DeviceAddr) -> (i64, &str, &'static str, i64) {
    (
        addr.account_id,
        addr.jid.as_str(),
        addr.namespace.namespace(),
        id_param(addr.device_id),
    )
}

/// A device address as the key of a sealed value (the order of
/// [`super::sealing::columns::SESSION_STATE`]'s key).
pub(crate) fn device_key(addr: &DeviceAddr) -> [super::sealing::KeyPart<'_>; 4] {
    use super::sealing::KeyPart;
    [
        KeyPart::Int(addr.account_id),
        KeyPart::Text(&addr.jid),
        KeyPart::Text(addr.namespace.namespace()),
        KeyPart::Int(id_param(addr.device_id)),
    ]
}

/// The key of a sealed value bound to a message digest of an account (`redelivery`,
/// `own_messages`).
pub(crate) fn digest_key(account_id: i64, digest: &[u8; 32]) -> [super::sealing::KeyPart<'_>; 2] {
    use super::sealing::KeyPart;
    [KeyPart::Int(account_id), KeyPart::Blob(digest)]
}

/// The device address in the first four columns (`account_id, jid, namespace, device_id`);
/// `None` for an unknown namespace or a device id out of range.
pub(crate) fn addr_columns(r: &Row<'_>) -> rusqlite::Result<Option<DeviceAddr>> {
    let ns: String = r.get(2)?;
    let device_id: i64 = r.get(3)?;
    Ok(
        match (Namespace::from_namespace(&ns), u32::try_from(device_id)) {
            (Some(namespace), Ok(device_id)) => Some(DeviceAddr::new(
                r.get(0)?,
                r.get::<_, String>(1)?,
                namespace,
                device_id,
            )),
            _ => None,
        },
    )
}

/// table is keyed by (account_id, jid, namespace, device_id).
pub(crate) fn get_by_addr<T>(
    conn: &rusqlite::Connection,
    table: &'static str,
    columns: &str,
    addr: &DeviceAddr,
    from_row: impl FnOnce(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {columns} FROM {table} WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4"
    ))?;
    let mut rows = st.query(rusqlite::params![
        addr.account_id,
        addr.jid,
        addr.namespace.namespace(),
        id_param(addr.device_id)
    ])?;
    rows.next()?.map(from_row).transpose()
}

/// Seconds added to the system clock: moved only by `debug.clock` (tests, with
/// `--enable-debug-methods`), 0 otherwise.
static CLOCK_OFFSET: AtomicI64 = AtomicI64::new(0);

/// Current time as unix seconds (0 if the clock is before 1970), as the daemon sees it: every
/// time omemod stores or compares comes from here.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
        .saturating_add(CLOCK_OFFSET.load(Ordering::Relaxed))
}

/// Tests only (`debug.clock`): moves the daemon's clock `secs` forward (back if negative);
/// returns the new time.
pub fn advance_clock(secs: i64) -> i64 {
    CLOCK_OFFSET.fetch_add(secs, Ordering::Relaxed);
    now()
}

/// Formats a 32-byte public key the way clients show fingerprints: 8 groups of 8 lowercase hex
/// digits separated by spaces. The views compute the same string in SQL.
pub fn format_fingerprint(key: &[u8; 32]) -> String {
    let mut out = String::with_capacity(71);
    for (i, chunk) in key.chunks(4).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for b in chunk {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

// ---- column decoding ------------------------------------------------------------------------

fn bad(table: &'static str, column: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::BadData {
        table,
        column,
        reason: reason.into(),
    }
}

fn type_name(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Borrows a BLOB column.
pub(crate) fn blob<'r>(
    row: &'r Row<'_>,
    table: &'static str,
    column: &'static str,
) -> Result<&'r [u8]> {
    match row.get_ref(column)? {
        ValueRef::Blob(b) => Ok(b),
        other => Err(bad(
            table,
            column,
            format!("expected BLOB, found {}", type_name(&other)),
        )),
    }
}

/// A 32-byte public value.
pub(crate) fn blob32(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<[u8; 32]> {
    let b = blob(row, table, column)?;
    <[u8; 32]>::try_from(b).map_err(|_| {
        bad(
            table,
            column,
            format!("expected 32 bytes, found {}", b.len()),
        )
    })
}

/// A 64-byte public value (signature).
pub(crate) fn blob64(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<[u8; 64]> {
    let b = blob(row, table, column)?;
    <[u8; 64]>::try_from(b).map_err(|_| {
        bad(
            table,
            column,
            format!("expected 64 bytes, found {}", b.len()),
        )
    })
}

/// An INTEGER column.
pub(crate) fn int(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<i64> {
    match row.get_ref(column)? {
        ValueRef::Integer(i) => Ok(i),
        other => Err(bad(
            table,
            column,
            format!("expected INTEGER, found {}", type_name(&other)),
        )),
    }
}

/// A nullable INTEGER column.
pub(crate) fn opt_int(
    row: &Row<'_>,
    table: &'static str,
    column: &'static str,
) -> Result<Option<i64>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => Ok(Some(i)),
        other => Err(bad(
            table,
            column,
            format!("expected INTEGER or NULL, found {}", type_name(&other)),
        )),
    }
}

/// An INTEGER column that must fit a u32 (ids).
pub(crate) fn u32_col(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<u32> {
    let i = int(row, table, column)?;
    u32::try_from(i).map_err(|_| {
        bad(
            table,
            column,
            format!("{i} is out of range for a 32-bit id"),
        )
    })
}

/// A non-negative counter.
pub(crate) fn u64_col(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<u64> {
    let i = int(row, table, column)?;
    u64::try_from(i).map_err(|_| bad(table, column, format!("{i} is negative")))
}

/// A 0/1 column.
pub(crate) fn bool_col(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<bool> {
    match int(row, table, column)? {
        0 => Ok(false),
        1 => Ok(true),
        i => Err(bad(table, column, format!("expected 0 or 1, found {i}"))),
    }
}

/// A TEXT column.
pub(crate) fn text(row: &Row<'_>, table: &'static str, column: &'static str) -> Result<String> {
    match row.get_ref(column)? {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(str::to_owned)
            .map_err(|_| bad(table, column, "TEXT is not valid UTF-8")),
        other => Err(bad(
            table,
            column,
            format!("expected TEXT, found {}", type_name(&other)),
        )),
    }
}

/// A nullable TEXT column.
pub(crate) fn opt_text(
    row: &Row<'_>,
    table: &'static str,
    column: &'static str,
) -> Result<Option<String>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        _ => text(row, table, column).map(Some),
    }
}

/// A nullable BLOB column.
pub(crate) fn opt_blob(
    row: &Row<'_>,
    table: &'static str,
    column: &'static str,
) -> Result<Option<Vec<u8>>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        _ => blob(row, table, column).map(|b| Some(b.to_vec())),
    }
}

/// A namespace column.
pub(crate) fn namespace(
    row: &Row<'_>,
    table: &'static str,
    column: &'static str,
) -> Result<Namespace> {
    let s = text(row, table, column)?;
    Namespace::from_namespace(&s)
        .ok_or_else(|| bad(table, column, format!("unknown namespace `{s}`")))
}

/// A TEXT enum column, parsed by `parse`.
pub(crate) fn enum_col<T>(
    row: &Row<'_>,
    table: &'static str,
    column: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T> {
    let s = text(row, table, column)?;
    parse(&s).ok_or_else(|| bad(table, column, format!("unknown value `{s}`")))
}

/// A device id (or prekey id) argument as SQLite stores it.
pub(crate) fn id_param(v: u32) -> i64 {
    i64::from(v)
}

/// A counter argument; counters above i64::MAX are rejected.
pub(crate) fn counter_param(what: &'static str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StorageError::InvalidInput {
        what,
        reason: "exceeds i64::MAX".into(),
    })
}

/// Maps "no rows changed" to `NotFound`.
pub(crate) fn expect_one(changed: usize, what: &'static str) -> Result<()> {
    if changed == 0 {
        Err(StorageError::NotFound { what })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_eight_groups_of_eight_hex() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        let fp = format_fingerprint(&k);
        assert_eq!(
            fp,
            "00010203 04050607 08090a0b 0c0d0e0f 10111213 14151617 18191a1b 1c1d1e1f"
        );
    }

    #[test]
    fn secret_from_slice_checks_length() {
        assert!(SecretKey::from_slice(&[1; 31]).is_none());
        assert_eq!(SecretKey::from_slice(&[1; 32]).unwrap().expose(), &[1; 32]);
        assert_eq!(format!("{:?}", SecretKey::new([7; 32])), "<redacted>");
    }
}
