//! `sessions`: Double Ratchet sessions, one per remote device and namespace.

use std::sync::OnceLock;

use rusqlite::{params, Connection, Row};

use super::error::Result;
use super::sealing::columns::SESSION_STATE;
use super::types::{
    blob32, bool_col, counter_param, device_key, enum_col, id_param, int, namespace, text, u32_col,
    u64_col, DeviceAddr, Namespace, SecretBlob,
};
use super::Db;

const T: &str = "sessions";

/// Who started the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// We fetched their bundle and sent the key exchange.
    Us,
    /// They sent us a key exchange.
    Them,
}

impl Initiator {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Us => "us",
            Initiator::Them => "them",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "us" => Some(Initiator::Us),
            "them" => Some(Initiator::Them),
            _ => None,
        }
    }
}

/// One row of `sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Owning account.
    pub account_id: i64,
    /// Peer's bare JID.
    pub jid: String,
    /// OMEMO version of the session.
    pub namespace: Namespace,
    /// Peer's device id.
    pub device_id: u32,
    /// Versioned ratchet snapshot (secret).
    pub state: SecretBlob,
    /// Format version of `state`.
    pub state_format: u32,
    /// Curve25519 u of the peer's identity key.
    pub identity_key: [u8; 32],
    /// Who started it.
    pub initiated_by: Initiator,
    /// The peer has answered.
    pub confirmed: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Messages encrypted with it.
    pub messages_sent: u64,
    /// Messages decrypted with it.
    pub messages_received: u64,
    /// Messages encrypted with it since the last one decrypted from the device (device
    /// hygiene: a device that stays silent becomes stale).
    pub unanswered: u64,
    /// Found in a restored or copied database: what decrypts on it may be a replay, and its next
    /// message starts a new session.
    pub suspect: bool,
}

impl SessionRow {
    /// The row's address.
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(
            self.account_id,
            self.jid.clone(),
            self.namespace,
            self.device_id,
        )
    }
}

const COLUMNS: &str =
    "account_id, jid, namespace, device_id, state, state_format, identity_key, initiated_by, \
                       confirmed, created_at, updated_at, messages_sent, messages_received, unanswered, \
                       suspect";

fn from_row(db: &Db, r: &Row<'_>) -> Result<SessionRow> {
    let addr = DeviceAddr::new(
        int(r, T, "account_id")?,
        text(r, T, "jid")?,
        namespace(r, T, "namespace")?,
        u32_col(r, T, "device_id")?,
    );
    let state = db.secret_blob(r, &SESSION_STATE, &device_key(&addr))?;
    let DeviceAddr {
        account_id,
        jid,
        namespace,
        device_id,
    } = addr;
    Ok(SessionRow {
        account_id,
        jid,
        namespace,
        device_id,
        state,
        state_format: u32_col(r, T, "state_format")?,
        identity_key: blob32(r, T, "identity_key")?,
        initiated_by: enum_col(r, T, "initiated_by", Initiator::parse)?,
        confirmed: bool_col(r, T, "confirmed")?,
        created_at: int(r, T, "created_at")?,
        updated_at: int(r, T, "updated_at")?,
        messages_sent: u64_col(r, T, "messages_sent")?,
        messages_received: u64_col(r, T, "messages_received")?,
        unanswered: u64_col(r, T, "unanswered")?,
        suspect: bool_col(r, T, "suspect")?,
    })
}

const UPSERT_TAIL: &str = " ON CONFLICT (account_id, jid, namespace, device_id) DO UPDATE SET \
    state = excluded.state, state_format = excluded.state_format, \
    created_at = CASE WHEN identity_key = excluded.identity_key AND initiated_by = excluded.initiated_by \
                      THEN created_at ELSE excluded.created_at END, \
    identity_key = excluded.identity_key, initiated_by = excluded.initiated_by, \
    confirmed = excluded.confirmed, updated_at = excluded.updated_at, \
    messages_sent = excluded.messages_sent, messages_received = excluded.messages_received, \
    unanswered = excluded.unanswered, suspect = excluded.suspect, mark = excluded.mark";

/// Parameters per row (the mark is not one: [`super::writer`] gives it, see [`super::marks`]).
const ROW_PARAMS: usize = 15;

/// Most rows of one multi-row statement. Chunks are powers of two up to it, so at most 7
/// statement texts reach the connection's statement cache.
const MAX_ROWS_PER_STATEMENT: usize = 64;

/// `INSERT … VALUES (…), … ON CONFLICT …` for `n` rows (`n` a power of two up to
/// [`MAX_ROWS_PER_STATEMENT`]), built once per size.
fn upsert_sql(n: usize) -> &'static str {
    const SIZES: usize = MAX_ROWS_PER_STATEMENT.ilog2() as usize + 1;
    static SQL: [OnceLock<String>; SIZES] = [const { OnceLock::new() }; SIZES];
    let k = (n.ilog2() as usize).min(SIZES - 1);
    SQL[k].get_or_init(|| {
        let row = format!(
            "({}, {})",
            vec!["?"; ROW_PARAMS].join(", "),
            super::marks::BATCH_MARK_SQL
        );
        let values = vec![row.as_str(); 1 << k].join(", ");
        format!("INSERT INTO sessions ({COLUMNS}, mark) VALUES {values}{UPSERT_TAIL}")
    })
}

/// Binds the row's 15 values from parameter `first` on, its state sealed (`state`).
fn bind_row(
    st: &mut rusqlite::Statement<'_>,
    first: usize,
    row: &SessionRow,
    state: &[u8],
) -> Result<()> {
    st.raw_bind_parameter(first, row.account_id)?;
    st.raw_bind_parameter(first + 1, row.jid.as_str())?;
    st.raw_bind_parameter(first + 2, row.namespace.namespace())?;
    st.raw_bind_parameter(first + 3, id_param(row.device_id))?;
    st.raw_bind_parameter(first + 4, state)?;
    st.raw_bind_parameter(first + 5, id_param(row.state_format))?;
    st.raw_bind_parameter(first + 6, &row.identity_key[..])?;
    st.raw_bind_parameter(first + 7, row.initiated_by.as_str())?;
    st.raw_bind_parameter(first + 8, row.confirmed)?;
    st.raw_bind_parameter(first + 9, row.created_at)?;
    st.raw_bind_parameter(first + 10, row.updated_at)?;
    st.raw_bind_parameter(
        first + 11,
        counter_param("messages_sent", row.messages_sent)?,
    )?;
    st.raw_bind_parameter(
        first + 12,
        counter_param("messages_received", row.messages_received)?,
    )?;
    st.raw_bind_parameter(first + 13, counter_param("unanswered", row.unanswered)?)?;
    st.raw_bind_parameter(first + 14, row.suspect)?;
    Ok(())
}

/// Stores a session, replacing the one of the same device (its `created_at` is kept only if
/// the identity key is unchanged), stamped with the writer's batch mark. Skipped message keys
/// of the device are kept; delete them with [`super::skipped_keys::delete_for_session`] if they
/// no longer apply.
pub fn upsert(conn: &Db, row: &SessionRow) -> Result<()> {
    upsert_many(conn, std::slice::from_ref(row))
}

/// [`upsert`] for several rows, in a few multi-row statements instead of one per row (a
/// fan-out stores a hundred sessions at once). Rows are written in order, so the result is
/// that of calling [`upsert`] on each.
pub fn upsert_many<R: std::borrow::Borrow<SessionRow>>(conn: &Db, rows: &[R]) -> Result<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        // The largest power of two that fits, capped.
        let n = MAX_ROWS_PER_STATEMENT.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(n);
        let mut st = conn.prepare_cached(upsert_sql(n))?;
        let states: Vec<Vec<u8>> = chunk
            .iter()
            .map(|row| {
                let row = row.borrow();
                conn.seal(&SESSION_STATE, &device_key(&row.addr()), row.state.expose())
            })
            .collect();
        for (i, (row, state)) in chunk.iter().zip(&states).enumerate() {
            bind_row(&mut st, i * ROW_PARAMS + 1, row.borrow(), state)?;
        }
        st.raw_execute()?;
        rest = tail;
    }
    Ok(())
}

/// The session with a device.
pub fn get(db: &Db, addr: &DeviceAddr) -> Result<Option<SessionRow>> {
    super::types::get_by_addr(db, T, COLUMNS, addr, |r| from_row(db, r))
}

/// Replaces only the `state` of a session (its skipped keys changed, nothing else did).
pub fn set_state(conn: &Db, addr: &DeviceAddr, state: &[u8]) -> Result<bool> {
    let (a, j, n, d) = super::types::addr_params(addr);
    let state = conn.seal(&SESSION_STATE, &device_key(addr), state);
    let changed = conn
        .prepare_cached(&format!(
            "UPDATE sessions SET state = ?5 WHERE {}",
            super::types::WHERE_ADDR
        ))?
        .execute(params![a, j, n, d, state])?;
    Ok(changed > 0)
}

/// Deletes a session and its skipped message keys. Returns whether it existed.
pub fn delete(conn: &Connection, addr: &DeviceAddr) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "DELETE FROM sessions WHERE account_id = ?1 AND jid = ?2 AND namespace = ?3 AND device_id = ?4",
        )?
        .execute(params![addr.account_id, addr.jid, addr.namespace.namespace(), id_param(addr.device_id)])?;
    Ok(n > 0)
}

/// Forgets the session of a device that its owner does not list, with what it brought in: its
/// skipped keys and previous states, the device row its messages created, and the trust row of
/// its identity key unless the user decided it or another session or bundle uses the key.
/// Returns `None` if there was no session, else whether that trust row was deleted, with the key.
pub fn delete_unlisted(conn: &Db, addr: &DeviceAddr) -> Result<Option<([u8; 32], bool)>> {
    let Some(row) = get(conn, addr)? else {
        return Ok(None);
    };
    delete(conn, addr)?;
    // Its earlier states would let the same unlisted device come back.
    super::device_state::delete_previous_sessions(conn, addr)?;
    super::devices::delete_inactive(conn, addr)?;
    let key = row.identity_key;
    let (account_id, jid) = (addr.account_id, addr.jid.as_str());
    let mut forgotten = false;
    if !super::trust::key_in_use(conn, account_id, jid, &key)? {
        let manual = super::trust::get(conn, account_id, jid, &key)?
            .is_some_and(|t| t.source == super::trust::TrustSource::Manual);
        forgotten = !manual && super::trust::delete(conn, account_id, jid, &key)?;
    }
    Ok(Some((key, forgotten)))
}

/// Every session of the account, by jid, namespace and device id.
pub fn list(db: &Db, account_id: i64) -> Result<Vec<SessionRow>> {
    db.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE account_id = ?1 ORDER BY jid, namespace, device_id"
    ))?
    .query_and_then([account_id], |r| from_row(db, r))?
    .collect()
}

/// The sessions with every device of one JID (both namespaces).
pub fn list_for_jid(db: &Db, account_id: i64, jid: &str) -> Result<Vec<SessionRow>> {
    db.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE account_id = ?1 AND jid = ?2 ORDER BY namespace, device_id"
    ))?
        .query_and_then(params![account_id, jid], |r| from_row(db, r))?
        .collect()
}

/// Marks every session of the account suspect (found in a restored copy); returns how many.
pub fn mark_all_suspect(conn: &Connection, account_id: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("UPDATE sessions SET suspect = 1 WHERE account_id = ?1")?
        .execute([account_id])?)
}
