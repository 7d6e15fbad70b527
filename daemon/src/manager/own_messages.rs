//! Our own messages, read back: `decrypt` of an `<encrypted>` element this very device sent (a
//! sent carbon, a room's reflection, an archived copy) answers what was sent, marked `own`, for
//! every process of the user.
//!
//! An element is never encrypted for the device that sends it, so its content cannot be
//! recovered from the ratchet. Instead the `encrypt` that makes it stores, in its own transaction,
//! the payload's key material per element (never the plaintext), found again by a digest of the
//! element's key elements, with a digest of its payload (a copy with another payload is refused)
//! and the conversation it was sent in (a copy read in another one is refused, in OMEMO 0.3 too,
//! which has no envelope). Kept as long as redelivery data, under the same bounds
//! ([`crate::config::RedeliveryConfig`]). As for redelivery, the table has no index: digest
//! prefix → row id lives in memory, so an `encrypt` appends one row and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use protocol_core::session::Decrypted;
use protocol_core::xml::{Encrypted, KeyElement};
use protocol_core::Version;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::account::Account;
use super::decrypt::{
    check_envelope, open_payload, same_jid, Conversation, DecryptError, DecryptOutcome,
};
use super::encrypt::EncryptOutcome;
use super::{Manager, StorageError};
use crate::storage::own_messages::{self as store, OwnMessageRow};
use crate::storage::redelivery::prefix;
use crate::storage::trust::{TrustLevel, TrustRow, TrustSource};
use crate::storage::DeviceAddr;

/// Records between two inline prunes (besides the hourly one).
const PRUNE_EVERY: u64 = 256;

/// The manager's own-message state: where each kept element is (digest prefix → row id;
/// entries are added after their commit, before the answer that carries the element, so no
/// copy can be looked up too early; a false hit is harmless, the row's digest is checked), and
/// the count of records for the inline prunes.
#[derive(Debug, Default)]
pub struct State {
    index: Mutex<HashMap<u64, i64>>,
    records: AtomicU64,
}

impl State {
    /// Fills the index (from [`store::digest_ids`]), at start-up.
    pub(crate) fn load(&self, ids: Vec<(u64, i64)>) {
        self.lock().extend(ids);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, i64>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Memory follows a commit: rows below `below` are gone, `added` are new.
    fn committed(&self, below: Option<i64>, added: &[(u64, i64)]) {
        let mut index = self.lock();
        if let Some(below) = below {
            index.retain(|_, id| *id >= below);
        }
        index.extend(added.iter().copied());
    }
}

/// What an encryption's commit writes so that its elements can be read back, and now and then a
/// prune: (retention, row cap).
pub(crate) struct OwnWrite {
    rows: Vec<OwnMessageRow>,
    prune: Option<(i64, i64)>,
}

/// What [`OwnWrite::write`] committed, for memory to follow.
#[derive(Debug, Default)]
pub(crate) struct OwnWritten {
    /// (digest prefix, row id) of each new row.
    added: Vec<(u64, i64)>,
    /// Rows below this id were pruned.
    below: Option<i64>,
}

impl OwnWrite {
    /// In the encryption's transaction.
    pub(crate) fn write(
        &self,
        tx: &crate::storage::Db,
        now: i64,
    ) -> Result<OwnWritten, StorageError> {
        let mut written = OwnWritten::default();
        for row in &self.rows {
            written
                .added
                .push((prefix(&row.digest), store::insert(tx, row)?));
        }
        if let Some((retention, cap)) = self.prune {
            written.below = Some(store::prune(tx, now, retention, cap)?.below);
        }
        Ok(written)
    }
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// What finds a sent element again: its namespace, sender device and key elements (in any
/// order: a client may regroup them), which are random per message.
pub(crate) fn element_digest(element: &Encrypted) -> [u8; 32] {
    let mut keys: Vec<&KeyElement> = element.keys.iter().collect();
    keys.sort_by(|a, b| (&a.jid, a.rid, a.kex, &a.data).cmp(&(&b.jid, b.rid, b.kex, &b.data)));
    let mut h = Sha256::new();
    put(&mut h, b"omemod own message v1");
    put(&mut h, element.version.namespace().as_bytes());
    h.update(element.sid.to_be_bytes());
    h.update((keys.len() as u64).to_be_bytes());
    for k in keys {
        put(&mut h, k.jid.as_deref().unwrap_or("").as_bytes());
        h.update(k.rid.to_be_bytes());
        h.update([u8::from(k.kex)]);
        put(&mut h, &k.data);
    }
    h.finalize().into()
}

/// The element's content as sent: its iv and payload.
fn payload_digest(element: &Encrypted) -> [u8; 32] {
    let mut h = Sha256::new();
    put(&mut h, b"omemod own payload v1");
    for part in [&element.iv, &element.payload] {
        h.update([u8::from(part.is_some())]);
        put(&mut h, part.as_deref().unwrap_or_default());
    }
    h.finalize().into()
}

/// The conversation an encryption is sent in: the SCE `<to>` (given, or the only recipient),
/// else the one JID its devices belong to besides ours (a heartbeat's); `None` when that is
/// ambiguous.
pub(crate) fn conversation(
    sce_to: Option<&str>,
    own: &str,
    devices: &[DeviceAddr],
) -> Option<String> {
    if let Some(to) = sce_to {
        return Some(to.to_owned());
    }
    let all: Vec<&str> = devices.iter().map(|d| d.jid.as_str()).collect();
    let others: Vec<&str> = all.iter().copied().filter(|j| *j != own).collect();
    let jids = if others.is_empty() { all } else { others };
    match jids.split_first() {
        Some((first, rest)) if rest.iter().all(|j| j == first) => Some((*first).to_owned()),
        _ => None,
    }
}

impl Manager {
    /// The rows that let the elements of `out` be read back (their payloads were made with
    /// `materials`), sent in `conversation` at `now`; `None` when redelivery is off.
    pub(crate) fn own_write(
        &self,
        acct: &Account,
        out: &EncryptOutcome,
        materials: &BTreeMap<Version, Zeroizing<Vec<u8>>>,
        conversation: Option<String>,
        now: i64,
    ) -> Option<OwnWrite> {
        let config = self.redelivery.config();
        if !config.enabled() {
            return None;
        }
        let rows: Vec<OwnMessageRow> = out
            .messages
            .iter()
            .filter_map(|m| m.element.as_ref())
            .map(|element| OwnMessageRow {
                account_id: acct.id,
                digest: element_digest(element),
                payload_digest: payload_digest(element),
                key_material: element
                    .payload
                    .as_ref()
                    .filter(|p| !p.is_empty())
                    .and_then(|_| materials.get(&element.version).cloned()),
                conversation: conversation.clone(),
                created_at: now,
            })
            .collect();
        if rows.is_empty() {
            return None;
        }
        let n = self.own_messages.records.fetch_add(1, Ordering::Relaxed);
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Some(OwnWrite {
            rows,
            prune: (n % PRUNE_EVERY == PRUNE_EVERY - 1)
                .then(|| (clamp(config.retention_secs), clamp(config.max_entries))),
        })
    }

    /// `decrypt` of an element from this very device (`from` our JID, `sid` our device id): what
    /// was sent, if it is kept and the copy is intact and read in the conversation it was sent
    /// in.
    pub(crate) async fn read_own_message(
        &self,
        acct: &Account,
        element: &Encrypted,
        conv: &Conversation,
    ) -> Result<DecryptOutcome, DecryptError> {
        let config = self.redelivery.config();
        let (account_id, digest) = (acct.id, element_digest(element));
        let found = self.own_messages.lock().get(&prefix(&digest)).copied();
        let row = match found.filter(|_| config.enabled()) {
            Some(id) => {
                let read = move |c: &crate::storage::Db| store::get(c, id, account_id, &digest);
                self.store.read(read).await?
            }
            None => None,
        };
        let window = i64::try_from(config.retention_secs).unwrap_or(i64::MAX);
        let oldest = crate::storage::now().saturating_sub(window);
        let Some(row) = row.filter(|r| r.created_at >= oldest) else {
            return Err(not_kept(acct, element));
        };
        // Same key elements, another payload: not what we sent.
        if row.payload_digest != payload_digest(element) {
            return Err(DecryptError::OwnMessageAltered);
        }
        if let (Some(sent), Some(read)) = (row.conversation.as_deref(), conv.to.as_deref()) {
            if !same_jid(sent, read) {
                return Err(DecryptError::SceMismatch(format!(
                    "our own message was sent to {sent}, and is read in {read}"
                )));
            }
        }
        let d = Decrypted {
            plaintext: row.key_material.unwrap_or_default(),
            n: 0,
            skipped: Default::default(),
        };
        let opened = open_payload(element.version, element, &d)?;
        check_envelope(&opened, &acct.jid, conv)?;
        tracing::debug!(account = %acct.jid, ns = %element.version, "own message read back");
        Ok(DecryptOutcome {
            own: true,
            sent_at: Some(row.created_at),
            ..DecryptOutcome::new((element, &acct.jid, true), &own_key(acct), opened, false)
        })
    }

    /// After the encryption's commit, before its answer: the index follows.
    pub(crate) fn own_committed(&self, written: &OwnWritten) {
        self.own_messages.committed(written.below, &written.added);
    }

    /// Hourly (with the redelivery prune): deletes own-message rows past the bounds. Returns
    /// how many went.
    pub(crate) async fn prune_own_messages(&self, now: i64) -> Result<usize, StorageError> {
        let config = self.redelivery.config();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (retention, cap) = match config.enabled() {
            true => (clamp(config.retention_secs), clamp(config.max_entries)),
            false => (0, 0),
        };
        let pruned = self
            .store
            .write(move |tx| store::prune(tx, now, retention, cap))
            .await?;
        self.own_messages.committed(Some(pruned.below), &[]);
        Ok(pruned.deleted)
    }
}

/// Our own key, as the sender of our own messages.
fn own_key(acct: &Account) -> TrustRow {
    TrustRow {
        account_id: acct.id,
        jid: acct.jid.clone(),
        identity_key: *acct.identity.curve25519(),
        fingerprint: acct.identity.fingerprint(),
        level: TrustLevel::Trusted,
        source: TrustSource::Manual,
        decided_at: 0,
    }
}

/// Why an element from this very device cannot be read back: one that carries a key for us
/// cannot be ours (we never encrypt to ourselves); otherwise it was not kept.
fn not_kept(acct: &Account, element: &Encrypted) -> DecryptError {
    let for_us = element.keys.iter().any(|k| {
        k.rid == acct.device_id
            && (element.version == Version::Oldmemo || k.jid.as_deref() == Some(&acct.jid))
    });
    match for_us {
        true => DecryptError::InvalidElement("message claims to come from this very device".into()),
        false => DecryptError::UnknownOwnMessage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(keys: Vec<(u32, &[u8])>, payload: Option<&[u8]>) -> Encrypted {
        Encrypted {
            version: Version::Twomemo,
            sid: 5,
            keys: keys
                .into_iter()
                .map(|(rid, data)| KeyElement {
                    jid: Some("b@x".into()),
                    rid,
                    kex: false,
                    data: data.to_vec(),
                })
                .collect(),
            iv: None,
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn the_digest_finds_an_element_whatever_the_key_order() {
        let a = element(vec![(1, b"k1"), (2, b"k2")], Some(b"ct"));
        let b = element(vec![(2, b"k2"), (1, b"k1")], Some(b"ct"));
        assert_eq!(element_digest(&a), element_digest(&b));
        // The payload is not part of it: a tampered copy is found, then refused.
        let c = element(vec![(1, b"k1"), (2, b"k2")], Some(b"cu"));
        assert_eq!(element_digest(&a), element_digest(&c));
        assert_ne!(payload_digest(&a), payload_digest(&c));
        assert_ne!(
            element_digest(&a),
            element_digest(&element(vec![(1, b"k1"), (2, b"kX")], Some(b"ct")))
        );
        let mut other_sender = a.clone();
        other_sender.sid = 6;
        assert_ne!(element_digest(&a), element_digest(&other_sender));
    }

    #[test]
    fn the_conversation_is_the_sce_to_or_the_only_other_jid() {
        let d = |jid: &str| DeviceAddr::new(1, jid, Version::Twomemo, 1);
        let (a, b, c) = (d("a@x"), d("b@x"), d("c@x"));
        let conv = |sce_to, devices: &[DeviceAddr]| conversation(sce_to, "a@x", devices);
        assert_eq!(
            conv(Some("room@x"), &[b.clone(), c.clone()]).as_deref(),
            Some("room@x")
        );
        assert_eq!(
            conv(None, &[a.clone(), b.clone(), b.clone()]).as_deref(),
            Some("b@x")
        );
        assert_eq!(conv(None, std::slice::from_ref(&a)).as_deref(), Some("a@x"));
        assert_eq!(conv(None, &[b, c]), None);
        assert_eq!(conv(None, &[]), None);
    }
}
