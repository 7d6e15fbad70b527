//! Decryption of an `<encrypted>` element addressed to our device: key exchanges (which
//! consume a one-time prekey), out-of-order messages, replays, then the payload.

use super::account::{new_prekey_rows, wrap_prekey_id, Account, OwnKeys};
use super::sessions::{apply_skipped_changes, replace_skipped, session_row, SessionMeta};
use super::{check_bare_jid, Action, Manager, ManagerError, Result};
use crate::events::Event;
use crate::storage::trust::{TrustLevel, TrustRow};
use crate::storage::{
    self, accounts, devices, prekeys, sessions as session_store, trust as trust_store,
};
use protocol_core::consts::{HEARTBEAT_COUNTER, PREKEY_POOL_SIZE};
use protocol_core::double_ratchet::RatchetError;
use protocol_core::payload;
use protocol_core::sce::parse_envelope;
use protocol_core::session::{Decrypted, KeyExchange, Session, SessionError};
use protocol_core::xml::Encrypted;
use protocol_core::Version;
use rand::rngs::OsRng;
use serde::Serialize;

/// The sender of a decrypted message.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Sender {
    /// Bare JID.
    pub jid: String,
    /// Device id.
    pub device_id: u32,
    /// Fingerprint of its identity key.
    pub fingerprint: String,
    /// Trust level of that key: trusted, undecided (decrypted, but warn) or distrusted.
    pub trust: String,
}

/// The result of a decryption.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DecryptOutcome {
    /// Namespace of the element.
    pub namespace: String,
    /// Who sent it.
    pub sender: Sender,
    /// The body text; absent for an empty (key transport / heartbeat) message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// OMEMO 2: the decrypted SCE `<content>` (inner XML), for elements other than the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_xml: Option<String>,
    /// OMEMO 2: the envelope's `<from>`, `<to>` and `<time>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<EnvelopeInfo>,
    /// Whether it carried no payload.
    pub empty: bool,
    /// Whether it was a key exchange (a new session was built, or the same one confirmed).
    pub key_exchange: bool,
    /// Follow-up actions.
    pub actions: Vec<Action>,
}

/// SCE affix elements of an OMEMO 2 message.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EnvelopeInfo {
    /// `<from jid>`.
    pub from: Option<String>,
    /// `<to jid>`.
    pub to: Option<String>,
    /// `<time stamp>`.
    pub time: Option<String>,
}

fn session_error(e: SessionError) -> ManagerError {
    match e {
        SessionError::Malformed(w) => ManagerError::InvalidMessage(w.to_string()),
        SessionError::AuthenticationFailed => ManagerError::AuthenticationFailed,
        SessionError::Ratchet(RatchetError::DuplicateMessage(_)) => ManagerError::DuplicateMessage,
        SessionError::Ratchet(
            RatchetError::TooManySkipped(_) | RatchetError::MessageKeyDropped(_),
        ) => ManagerError::TooManySkipped,
        SessionError::Ratchet(r) => ManagerError::InvalidMessage(r.to_string()),
        SessionError::X3dh(x) => ManagerError::InvalidMessage(x.to_string()),
        SessionError::InvalidKey(k) => ManagerError::InvalidMessage(k.to_string()),
        SessionError::MissingPreKey => ManagerError::InvalidMessage(e.to_string()),
        other => ManagerError::InvalidMessage(other.to_string()),
    }
}

/// What a key exchange did to our prekeys.
struct PreKeyUse {
    id: u32,
    catchup: bool,
}

impl Manager {
    /// Decrypts an element received from `from` (bare JID).
    pub async fn decrypt(
        &self,
        account: Option<&str>,
        from: &str,
        element: Encrypted,
    ) -> Result<DecryptOutcome> {
        check_bare_jid(from)?;
        let acct = self.account(account)?;
        let ns = element.version;
        let ours = element.keys.iter().find(|k| {
            k.rid == acct.device_id
                && (ns == Version::Oldmemo || k.jid.as_deref().is_none_or(|j| j == acct.jid))
        });
        let Some(key) = ours else {
            let mut recipients: Vec<u32> = element.keys.iter().map(|k| k.rid).collect();
            recipients.sort_unstable();
            recipients.dedup();
            return Err(ManagerError::NotForThisDevice { recipients });
        };
        if from == acct.jid && element.sid == acct.device_id {
            return Err(ManagerError::InvalidMessage(
                "message claims to come from this very device".into(),
            ));
        }
        let addr = Self::addr(&acct, from, ns, element.sid);
        let mut slot = self.sessions.lock(&self.store, &addr).await?;
        // A new session consumes one of our prekeys: hold the account's keys from the lookup
        // until memory reflects the commit, so no two key exchanges get the same prekey.
        let mut own_keys = None;

        // Advance a copy of the session; nothing is stored unless everything succeeds.
        let (mut session, decrypted, prekey_use, is_new, is_kex) = if key.kex {
            let kex = KeyExchange::parse(ns, &key.data).map_err(session_error)?;
            match slot.session.as_ref() {
                Some(existing) if existing.matches_key_exchange(&kex) => {
                    let mut s = existing.clone();
                    let d = s
                        .decrypt_key_exchange(&kex, &mut OsRng)
                        .map_err(session_error)?;
                    (s, d, None, false, true)
                }
                _ => {
                    let keys = acct.keys.lock().await;
                    let (s, d, used) = respond(&acct, &keys, &kex)?;
                    own_keys = Some(keys);
                    (s, d, Some(used), true, true)
                }
            }
        } else {
            let Some(existing) = slot.session.as_ref() else {
                return Err(ManagerError::NoSession {
                    jid: from.to_owned(),
                    namespace: ns,
                    device_id: element.sid,
                });
            };
            let mut s = existing.clone();
            let d = s.decrypt(&key.data, &mut OsRng).map_err(session_error)?;
            (s, d, None, false, false)
        };

        let curve = *session.remote_curve25519();
        let (mode, catchup) = match &own_keys {
            Some(k) => (k.trust_mode, k.catchup),
            None => {
                let k = acct.keys.lock().await;
                (k.trust_mode, k.catchup)
            }
        };
        let (trust, new_trust) = self.trust_for_key(&acct, mode, from, &curve);
        if trust.level == TrustLevel::Distrusted {
            return Err(ManagerError::Distrusted);
        }
        let opened = open_payload(&acct, ns, &element, &decrypted)?;

        // Commit: session, skipped keys, prekey use and refill, trust, last seen.
        let mut meta = if is_new {
            SessionMeta::default()
        } else {
            slot.meta.clone()
        };
        meta.messages_received += 1;
        let now = storage::now();
        let row = session_row(&addr, &session, &meta, now);
        let changes = decrypted.skipped.clone();
        let trust_row: Option<TrustRow> = new_trust.then(|| trust.clone());
        let account_id = acct.id;
        let fresh_session = is_new.then(|| session.clone());
        let touch = self.with_directory(acct.id, |d| d.needs_touch(&addr, now));
        let (refill, version) = {
            let prekey = prekey_use.as_ref().map(|p| (p.id, p.catchup));
            let addr2 = addr.clone();
            self.store
                .write(move |tx| {
                    session_store::upsert(tx, &row)?;
                    match &fresh_session {
                        Some(s) => replace_skipped(tx, &addr2, s, now)?,
                        None => apply_skipped_changes(tx, &addr2, &changes, now)?,
                    }
                    if let Some(t) = &trust_row {
                        trust_store::set(tx, t)?;
                    }
                    if touch {
                        devices::touch_last_seen(tx, &addr2, now)?;
                    }
                    let mut refill = Vec::new();
                    let mut version = None;
                    if let Some((id, catchup)) = prekey {
                        if catchup {
                            prekeys::mark_used(tx, account_id, id, now)?;
                        } else {
                            prekeys::delete(tx, account_id, id)?;
                        }
                        let live = prekeys::count_live(tx, account_id)?;
                        if live < PREKEY_POOL_SIZE {
                            let ids =
                                accounts::take_prekey_ids(tx, account_id, PREKEY_POOL_SIZE - live)?;
                            refill = new_prekey_rows(account_id, ids.map(wrap_prekey_id), now);
                            prekeys::insert_many(
                                tx,
                                &refill.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
                            )?;
                        }
                        version = Some(accounts::bump_bundle_version(tx, account_id)?);
                    }
                    Ok((refill, version))
                })
                .await?
        };

        // Committed: now memory may follow.
        if touch {
            self.with_directory(acct.id, |d| d.touched(&addr, now));
        }
        session = slot_update(&mut slot, session, meta);
        drop(slot);
        let mut actions = Vec::new();
        if let (Some(used), Some(v), Some(keys)) = (&prekey_use, version, own_keys.as_mut()) {
            if used.catchup {
                if let Some(p) = keys.prekeys.get_mut(&used.id) {
                    p.used = true;
                }
            } else {
                keys.prekeys.remove(&used.id);
            }
            for (r, kp) in refill {
                keys.prekeys.insert(
                    r.id,
                    super::account::OwnPreKey {
                        key_pair: kp,
                        used: false,
                    },
                );
            }
            keys.bundle_version = v;
        }
        drop(own_keys);
        if version.is_some() {
            for namespace in Version::ALL {
                actions.push(Action::PublishBundle { namespace });
                self.emit(Event::BundleChanged {
                    account: acct.jid.clone(),
                    namespace,
                    device_id: acct.device_id,
                });
            }
        }
        if new_trust {
            self.remember_trust(&acct, vec![trust.clone()], ns, element.sid);
        }
        if is_new {
            // Key exchanges from devices the contact never listed must not pile up.
            self.bound_unlisted_sessions(&acct, &addr).await;
        }
        // A new session is answered with an empty message so the peer stops sending key
        // exchanges; a long one-sided chain gets a heartbeat. During catch-up both wait.
        let heartbeat = (is_new && is_kex) || decrypted.n >= HEARTBEAT_COUNTER;
        if heartbeat {
            if catchup {
                self.defer_heartbeat(&acct, addr.clone());
            } else {
                actions.push(Action::SendHeartbeat {
                    jid: from.to_owned(),
                    namespace: ns,
                    device_id: element.sid,
                });
                self.emit(Event::HeartbeatDue {
                    account: acct.jid.clone(),
                    peer: from.to_owned(),
                    namespace: ns,
                    device_id: element.sid,
                });
            }
        }
        if !self.with_directory(acct.id, |d| d.active(from, ns).contains(&element.sid)) {
            actions.push(Action::FetchDevicelist {
                jid: from.to_owned(),
                namespace: ns,
                node: ns.devicelist_node().to_owned(),
            });
        }
        let _ = session;
        tracing::debug!(account = %acct.jid, peer = from, device = element.sid, %ns, kex = is_kex, "decrypted");
        Ok(DecryptOutcome {
            namespace: ns.namespace().to_owned(),
            sender: Sender {
                jid: from.to_owned(),
                device_id: element.sid,
                fingerprint: trust.fingerprint.clone(),
                trust: trust.level.as_str().to_owned(),
            },
            body: opened.body,
            content_xml: opened.content_xml,
            envelope: opened.envelope,
            empty: opened.empty,
            key_exchange: is_kex,
            actions,
        })
    }
}

/// Builds a session from a key exchange with our own prekeys.
fn respond(
    acct: &Account,
    keys: &OwnKeys,
    kex: &KeyExchange,
) -> Result<(Session, Decrypted, PreKeyUse)> {
    let spk = keys
        .signed_prekeys
        .get(&kex.info.signed_pre_key_id)
        .map(|s| s.key.key_pair.clone())
        .ok_or_else(|| {
            ManagerError::BrokenSession(format!(
                "key exchange uses unknown signed prekey {}",
                kex.info.signed_pre_key_id
            ))
        })?;
    let opk = keys
        .prekeys
        .get(&kex.info.pre_key_id)
        .map(|p| p.key_pair.private.clone())
        .ok_or_else(|| {
            ManagerError::BrokenSession(format!(
                "key exchange uses one-time prekey {} which is already used or unknown",
                kex.info.pre_key_id
            ))
        })?;
    let catchup = keys.catchup;
    let (s, d) =
        Session::respond(&acct.identity, kex, &spk, &opk, &mut OsRng).map_err(session_error)?;
    Ok((
        s,
        d,
        PreKeyUse {
            id: kex.info.pre_key_id,
            catchup,
        },
    ))
}

fn slot_update(
    slot: &mut super::sessions::SlotGuard,
    session: Session,
    meta: SessionMeta,
) -> Session {
    slot.session = Some(session.clone());
    slot.meta = meta;
    session
}

struct Opened {
    body: Option<String>,
    content_xml: Option<String>,
    envelope: Option<EnvelopeInfo>,
    empty: bool,
}

fn open_payload(acct: &Account, ns: Version, element: &Encrypted, d: &Decrypted) -> Result<Opened> {
    let Some(ct) = element.payload.as_ref().filter(|p| !p.is_empty()) else {
        return Ok(Opened {
            body: None,
            content_xml: None,
            envelope: None,
            empty: true,
        });
    };
    match ns {
        Version::Oldmemo => {
            let iv = element.iv.as_deref().ok_or_else(|| {
                ManagerError::InvalidMessage("OMEMO 0.3 message without <iv>".into())
            })?;
            let pt = payload::oldmemo::decrypt(&d.plaintext, iv, ct)
                .map_err(|_| ManagerError::AuthenticationFailed)?;
            let body = String::from_utf8(pt.to_vec())
                .map_err(|_| ManagerError::InvalidMessage("body is not UTF-8".into()))?;
            Ok(Opened {
                body: Some(body),
                content_xml: None,
                envelope: None,
                empty: false,
            })
        }
        Version::Twomemo => {
            let pt = payload::twomemo::decrypt(&d.plaintext, ct)
                .map_err(|_| ManagerError::AuthenticationFailed)?;
            let text = std::str::from_utf8(&pt)
                .map_err(|_| ManagerError::InvalidMessage("envelope is not UTF-8".into()))?;
            let env = parse_envelope(text)
                .map_err(|e| ManagerError::InvalidMessage(format!("SCE envelope: {e}")))?;
            let _ = acct;
            Ok(Opened {
                body: env.body.clone(),
                content_xml: Some(env.content_xml.clone()),
                envelope: Some(EnvelopeInfo {
                    from: env.from.clone(),
                    to: env.to.clone(),
                    time: env.time.clone(),
                }),
                empty: false,
            })
        }
    }
}
