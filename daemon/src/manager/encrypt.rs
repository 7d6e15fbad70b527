//! Encryption to every active device of a set of JIDs (our own other devices included), in
//! the namespaces those devices support; sessions are built lazily from stored bundles.

use super::account::Account;
use super::bundle_cache::VerifiedBundle;
use super::peer_bundle::StoredBundle;
use super::sessions::{session_row, session_row_with_state, SessionMeta};
use super::{check_bare_jid, Manager, ManagerError, Result};
use crate::events::Action;
use crate::storage::trust::{TrustLevel, TrustRow};
use crate::storage::{
    self, device_state, sessions as session_store, trust as trust_store, DeviceAddr,
};
use protocol_core::payload;
use protocol_core::sce::{build_envelope, EnvelopeOptions};
use protocol_core::session::{PendingEncrypt, Session};
use protocol_core::xml::{Encrypted, KeyElement};
use protocol_core::{Plaintext, Version};
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What happened for one device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// A key for it is in the message.
    Encrypted,
    /// No session and no bundle: fetch the bundle (see `action`).
    NoBundle,
    /// Its identity key is not trusted: nothing was encrypted for it.
    Untrusted,
    /// Something else went wrong (see `reason`).
    Failed,
}

/// The per-device report.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, serde::Deserialize)]
pub struct DeviceReport {
    /// Owner's bare JID.
    pub jid: String,
    /// Device id.
    pub device_id: u32,
    /// Namespace.
    pub namespace: String,
    /// Outcome.
    pub status: DeviceStatus,
    /// Whether its key is a key exchange.
    pub kex: bool,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the client should do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// One `<encrypted>` element, in both forms unless the client asked for one (`forms`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, serde::Deserialize)]
pub struct EncryptedMessage {
    /// Its namespace.
    pub namespace: String,
    /// The element as XML (left out only when `forms` does not name `xml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
    /// The same element as structured JSON (left out only when `forms` does not name
    /// `element`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub element: Option<Encrypted>,
}

/// Result of an encryption.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, serde::Deserialize)]
pub struct EncryptOutcome {
    /// One element per namespace that has at least one key.
    pub messages: Vec<EncryptedMessage>,
    /// What happened per device.
    pub devices: Vec<DeviceReport>,
    /// Recipients with no known device in a requested namespace: fetch their device lists.
    pub actions: Vec<Action>,
}

/// Who to encrypt to.
#[derive(Debug, Clone)]
pub struct EncryptRequest {
    /// Recipient bare JIDs (our own other devices are always added).
    pub to: Vec<String>,
    /// The body; `None` builds an empty (key transport) message.
    pub body: Option<Plaintext>,
    /// Namespaces in order of preference.
    pub namespaces: Vec<Version>,
    /// Encrypt each device in its first supported namespace only (python-omemo's rule); when
    /// false, in every namespace it is listed in.
    pub one_namespace_per_device: bool,
    /// The SCE `<to>` (OMEMO 2); defaults to the recipient when there is exactly one.
    pub sce_to: Option<String>,
    /// A client-chosen key: a retry with the same key gets the same answer.
    pub idempotency_key: Option<String>,
}

struct Target {
    addr: DeviceAddr,
    force_new: bool,
}

/// What building a new session from a stored bundle changes besides the session.
struct Fresh {
    /// The stored bundle without the one-time prekey we used.
    bundle_xml: String,
    /// The same, to cache after COMMIT.
    rest: Arc<VerifiedBundle>,
    /// The session it replaces, kept as a previous state.
    archive: Option<Zeroizing<Vec<u8>>>,
}

/// How one device's session moves on in an encryption.
enum Step {
    /// The cached session, stepped only once the new state is committed.
    Existing(PendingEncrypt),
    /// A new session from a stored bundle (and what it changes besides, until handed to the
    /// transaction).
    Fresh(Box<Session>, Option<Box<Fresh>>),
}

/// Payload and per-device key material of one namespace.
struct NsPayload {
    key_material: Zeroizing<Vec<u8>>,
    iv: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

fn payload_for(acct: &Account, ns: Version, body: Option<&str>, sce_to: Option<&str>) -> NsPayload {
    match (ns, body) {
        // 0.3 cannot carry an empty text: an empty <payload/> is unreadable to python-omemo
        // and the libsignal family, so it goes out as an empty (key transport) message.
        (Version::Oldmemo, Some(b)) if !b.is_empty() => {
            let p = payload::oldmemo::encrypt(b.as_bytes(), &mut OsRng);
            NsPayload {
                key_material: Zeroizing::new(p.key_material.to_vec()),
                iv: Some(p.iv.to_vec()),
                payload: Some(p.ciphertext),
            }
        }
        (Version::Oldmemo, _) => {
            let (km, iv) = payload::oldmemo::key_transport(&mut OsRng);
            NsPayload {
                key_material: Zeroizing::new(km.to_vec()),
                iv: Some(iv.to_vec()),
                payload: None,
            }
        }
        (Version::Twomemo, Some(b)) => {
            let envelope = build_envelope(
                b,
                &EnvelopeOptions {
                    from: &acct.jid,
                    to: sce_to,
                    time: None,
                },
                &mut OsRng,
            );
            let p = payload::twomemo::encrypt(envelope.as_bytes(), &mut OsRng);
            NsPayload {
                key_material: Zeroizing::new(p.key_material.to_vec()),
                iv: None,
                payload: Some(p.ciphertext),
            }
        }
        (Version::Twomemo, None) => NsPayload {
            key_material: Zeroizing::new(payload::twomemo::EMPTY_KEY_MATERIAL.to_vec()),
            iv: None,
            payload: None,
        },
    }
}

fn report(
    addr: &DeviceAddr,
    status: DeviceStatus,
    kex: bool,
    reason: Option<String>,
    action: Option<Action>,
) -> DeviceReport {
    DeviceReport {
        jid: addr.jid.clone(),
        device_id: addr.device_id,
        namespace: addr.namespace.namespace().to_owned(),
        status,
        kex,
        reason,
        action,
    }
}

/// The outcome of a one-device call, or the error that explains why there is no message.
fn single_device(
    out: EncryptOutcome,
    jid: &str,
    namespace: Version,
    device_id: u32,
) -> Result<EncryptOutcome> {
    match out.devices.first() {
        Some(r) if r.status == DeviceStatus::Encrypted => Ok(out),
        Some(r) if r.status == DeviceStatus::NoBundle => Err(ManagerError::NoBundle {
            jid: jid.to_owned(),
            namespace,
            device_id,
        }),
        Some(r) => Err(ManagerError::BrokenSession(
            r.reason.clone().unwrap_or_default(),
        )),
        None => Err(ManagerError::UnknownDevice {
            jid: jid.to_owned(),
            namespace,
            device_id,
        }),
    }
}

fn failed(addr: &DeviceAddr, reason: impl Into<String>) -> DeviceReport {
    report(addr, DeviceStatus::Failed, false, Some(reason.into()), None)
}

impl Manager {
    /// Encrypts `req.body` (or an empty message) to every active device of `req.to`.
    pub async fn encrypt(
        &self,
        account: Option<&str>,
        req: EncryptRequest,
    ) -> Result<EncryptOutcome> {
        let acct = self.account(account)?;
        let mut jids: Vec<String> = Vec::new();
        for j in &req.to {
            let j = check_bare_jid(j)?;
            if !jids.contains(&j) {
                jids.push(j);
            }
        }
        if jids.is_empty() {
            return Err(ManagerError::InvalidParams(
                "`to` names no recipient".into(),
            ));
        }
        if req.namespaces.is_empty() {
            return Err(ManagerError::InvalidParams("`namespaces` is empty".into()));
        }
        if let Some(to) = &req.sce_to {
            check_bare_jid(to)?;
        }
        // With several recipients the conversation is ambiguous: the receivers check `<to>`.
        if req.sce_to.is_none()
            && jids.len() > 1
            && req.body.is_some()
            && req.namespaces.contains(&Version::Twomemo)
        {
            return Err(ManagerError::InvalidParams(
                "`sce_to` is required with several recipients (the room's bare JID in a group chat)"
                    .into(),
            ));
        }
        let sce_to = req
            .sce_to
            .clone()
            .or_else(|| (jids.len() == 1).then(|| jids[0].clone()));
        let (addrs, actions) =
            self.select_targets(&acct, &jids, &req.namespaces, req.one_namespace_per_device);
        let targets = addrs
            .into_iter()
            .map(|addr| Target {
                addr,
                force_new: false,
            })
            .collect();
        let Some(key) = req.idempotency_key.as_deref() else {
            return self
                .encrypt_to(
                    &acct,
                    targets,
                    req.body.as_deref(),
                    sce_to.as_deref(),
                    actions,
                    None,
                )
                .await;
        };
        // One idempotent encrypt at a time, so two copies of a request cannot both miss.
        let _serial = self.redelivery.encrypt_lock.lock().await;
        let digest = super::redelivery::request_digest(&req);
        if let Some(out) = self.stored_encrypt(&acct, key, &digest).await? {
            return Ok(out);
        }
        let keep = self
            .redelivery
            .config()
            .enabled()
            .then(|| (key.to_owned(), digest));
        self.encrypt_to(
            &acct,
            targets,
            req.body.as_deref(),
            sce_to.as_deref(),
            actions,
            keep,
        )
        .await
    }

    /// The devices an encryption to `jids` (and our own other devices) covers, and the device
    /// lists to fetch first (recipients with no known device in a namespace).
    pub(crate) fn select_targets(
        &self,
        acct: &Account,
        jids: &[String],
        namespaces: &[Version],
        one_namespace_per_device: bool,
    ) -> (Vec<DeviceAddr>, Vec<Action>) {
        let mut all = jids.to_vec();
        if !all.contains(&acct.jid) {
            all.push(acct.jid.clone());
        }
        let mut targets = Vec::new();
        let mut actions = Vec::new();
        self.with_directory(acct.id, |d| {
            for jid in &all {
                let mut seen: Vec<u32> = Vec::new();
                for ns in namespaces {
                    let active = d.active(jid, *ns);
                    if active.is_empty() && *jid != acct.jid {
                        actions.push(Action::FetchDevicelist {
                            jid: jid.clone(),
                            namespace: *ns,
                            node: ns.devicelist_node().to_owned(),
                        });
                    }
                    for id in active {
                        if *jid == acct.jid && id == acct.device_id {
                            continue;
                        }
                        if one_namespace_per_device && seen.contains(&id) {
                            continue;
                        }
                        seen.push(id);
                        targets.push(Self::addr(acct, jid, *ns, id));
                    }
                }
            }
        });
        (targets, actions)
    }

    /// An empty message to one device (session completion, heartbeat).
    pub async fn heartbeat(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
    ) -> Result<EncryptOutcome> {
        self.empty_message(account, jid, namespace, device_id, false)
            .await
    }

    /// Replaces the session with a device by a fresh key exchange from its stored bundle
    /// (keeping our identity) and returns the empty message that carries it.
    pub async fn replace_session(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
    ) -> Result<EncryptOutcome> {
        self.empty_message(account, jid, namespace, device_id, true)
            .await
    }

    /// An empty message to one device, on a new session if `force_new`.
    async fn empty_message(
        &self,
        account: Option<&str>,
        jid: &str,
        namespace: Version,
        device_id: u32,
        force_new: bool,
    ) -> Result<EncryptOutcome> {
        let jid = check_bare_jid(jid)?;
        let jid = jid.as_str();
        let acct = self.account(account)?;
        let addr = Self::addr(&acct, jid, namespace, device_id);
        if force_new {
            self.check_rebuild_allowed(&addr)?;
        }
        let t = Target {
            addr: addr.clone(),
            force_new,
        };
        let out = self
            .encrypt_to(&acct, vec![t], None, None, Vec::new(), None)
            .await?;
        let out = single_device(out, jid, namespace, device_id)?;
        if force_new {
            self.record_rebuild(&addr);
        }
        Ok(out)
    }

    async fn encrypt_to(
        &self,
        acct: &Account,
        targets: Vec<Target>,
        body: Option<&str>,
        sce_to: Option<&str>,
        mut actions: Vec<Action>,
        idempotency: Option<(String, [u8; 32])>,
    ) -> Result<EncryptOutcome> {
        let addrs: Vec<DeviceAddr> = targets.iter().map(|t| t.addr.clone()).collect();
        let mut guards = self.sessions.lock_many(&self.store, &addrs).await?;
        let any_forced = targets.iter().any(|t| t.force_new);
        let mode = acct.keys.lock().await.trust_mode;
        let mut reports = Vec::new();
        let mut payloads: BTreeMap<Version, NsPayload> = BTreeMap::new();
        let mut keys: BTreeMap<Version, Vec<KeyElement>> = BTreeMap::new();
        // (index into guards, the session's step, new meta) to commit.
        let mut updates: Vec<(usize, Step, SessionMeta)> = Vec::new();
        let mut new_trust: Vec<TrustRow> = Vec::new();

        for (i, (addr, guard)) in guards.iter().enumerate() {
            // After a rollback the stored session may be behind the peer's: start a new one.
            let rebuild = guard
                .session
                .is_some()
                .then(|| self.pending_rebuilds.requested_at(addr))
                .flatten();
            let force_new = rebuild.is_some()
                || (any_forced && targets.iter().any(|t| &t.addr == addr && t.force_new));
            let built = match (&guard.session, force_new) {
                (Some(_), false) => None,
                _ => {
                    // No usable bundle: the client fetches a fresh one.
                    let no_bundle = |addr: &DeviceAddr, why: &str| {
                        report(
                            addr,
                            DeviceStatus::NoBundle,
                            false,
                            Some(why.to_owned()),
                            Some(Action::fetch_bundle(
                                &addr.jid,
                                addr.namespace,
                                addr.device_id,
                            )),
                        )
                    };
                    // Every prekey of the stored bundle was used (by us).
                    const SPENT: &str = "every one-time prekey of the stored bundle is used";
                    let bundle = match self.stored_bundle(addr).await {
                        Ok(StoredBundle::Usable(b)) => b,
                        Ok(StoredBundle::Spent) => {
                            reports.push(no_bundle(addr, SPENT));
                            continue;
                        }
                        Ok(StoredBundle::Missing) => {
                            reports.push(no_bundle(
                                addr,
                                if rebuild.is_some() {
                                    "the session must be rebuilt after a rollback: fetch a \
                                     fresh bundle"
                                } else {
                                    "no session and no bundle"
                                },
                            ));
                            continue;
                        }
                        Err(e) => {
                            reports.push(failed(addr, e.to_string()));
                            continue;
                        }
                    };
                    let Some(pk) = bundle.bundle().prekeys.choose(&mut OsRng).map(|p| p.id) else {
                        reports.push(no_bundle(addr, SPENT));
                        continue;
                    };
                    // The stored bundle forgets the prekey we take, so no rebuild reuses it.
                    let rest = bundle.without_prekey(pk);
                    let fresh = Fresh {
                        bundle_xml: protocol_core::xml::bundle_to_xml(rest.bundle()),
                        rest: Arc::new(rest),
                        archive: guard.session.as_ref().map(|s| s.to_bytes(true)),
                    };
                    match Session::initiate_verified(&acct.identity, &bundle, pk, &mut OsRng) {
                        Ok(s) => Some((s, fresh)),
                        Err(e) => {
                            reports.push(failed(addr, e.to_string()));
                            continue;
                        }
                    }
                }
            };
            let Some(session) = built.as_ref().map(|(s, _)| s).or(guard.session.as_ref()) else {
                // Not reached: without a stored session one was built above.
                reports.push(failed(addr, "no session"));
                continue;
            };
            let curve = *session.remote_curve25519();
            let (level, new_row) = self.trust_level_for_key(acct, mode, &addr.jid, &curve);
            if let Some(trust) = new_row {
                if !new_trust
                    .iter()
                    .any(|t| t.jid == trust.jid && t.identity_key == trust.identity_key)
                {
                    new_trust.push(trust);
                }
            }
            // Empty messages are exempt: they carry no content.
            if body.is_some() && level != TrustLevel::Trusted {
                reports.push(report(
                    addr,
                    DeviceStatus::Untrusted,
                    false,
                    Some(format!("identity key is {}", level.as_str())),
                    None,
                ));
                continue;
            }
            let p = payloads
                .entry(addr.namespace)
                .or_insert_with(|| payload_for(acct, addr.namespace, body, sce_to));
            // An existing session is only stepped once its new state is committed; a new one
            // is ours until then.
            let encrypted = match built {
                Some((mut s, f)) => s
                    .encrypt(&p.key_material)
                    .map(|k| (k, Step::Fresh(Box::new(s), Some(Box::new(f))))),
                None => session
                    .prepare_encrypt(&p.key_material)
                    .map(|(k, pending)| (k, Step::Existing(pending))),
            };
            match encrypted {
                Ok((k, step)) => {
                    keys.entry(addr.namespace).or_default().push(KeyElement {
                        jid: (addr.namespace == Version::Twomemo).then(|| addr.jid.clone()),
                        rid: addr.device_id,
                        kex: k.kex,
                        data: k.data,
                    });
                    reports.push(report(addr, DeviceStatus::Encrypted, k.kex, None, None));
                    let mut meta = match step {
                        Step::Fresh(..) => SessionMeta::default(),
                        Step::Existing(_) => guard.meta.clone(),
                    };
                    meta.messages_sent += 1;
                    updates.push((i, step, meta));
                }
                Err(e) => reports.push(failed(addr, e.to_string())),
            }
        }

        let messages = keys
            .into_iter()
            .map(|(ns, keys)| {
                let p = payloads.remove(&ns);
                let element = Encrypted {
                    version: ns,
                    sid: acct.device_id,
                    keys,
                    iv: p.as_ref().and_then(|p| p.iv.clone()),
                    payload: p.and_then(|p| p.payload),
                };
                EncryptedMessage {
                    namespace: ns.namespace().to_owned(),
                    xml: Some(element.to_xml()),
                    element: Some(element),
                }
            })
            .collect();
        // Fetches for devices without a bundle go into `actions` as well.
        actions.extend(reports.iter().filter_map(|d| d.action.clone()));
        let out = EncryptOutcome {
            messages,
            devices: reports,
            actions,
        };
        let stored = match idempotency {
            Some((key, digest)) => {
                Some(super::redelivery::encrypt_record(acct, key, digest, &out)?)
            }
            None => None,
        };
        if !updates.is_empty() || !new_trust.is_empty() || stored.is_some() {
            let now = storage::now();
            let rebuilt: Vec<DeviceAddr> = updates
                .iter()
                .filter(|(i, step, _)| {
                    matches!(step, Step::Fresh(..)) && self.pending_rebuilds.contains(&guards[*i].0)
                })
                .map(|(i, ..)| guards[*i].0.clone())
                .collect();
            let mut rows: Vec<session_store::SessionRow> = Vec::with_capacity(updates.len());
            // New sessions also replace the stored bundle, archive the old session and set
            // their skipped keys: (index into `rows`, session, what it changes).
            let mut fresh: Vec<(usize, Session, Fresh)> = Vec::new();
            for (k, (i, step, meta)) in updates.iter_mut().enumerate() {
                let (addr, guard) = &guards[*i];
                match step {
                    Step::Existing(pending) => {
                        // The step was prepared from this session: it is there.
                        let Some(s) = guard.session.as_ref() else {
                            return Err(ManagerError::BrokenSession(
                                "the session went away during the encryption".into(),
                            ));
                        };
                        let state = s.to_bytes_after(pending, false);
                        rows.push(session_row_with_state(addr, s, state, meta, now));
                    }
                    Step::Fresh(s, f) => {
                        rows.push(session_row(addr, s, meta, now));
                        if let Some(f) = f.take() {
                            fresh.push((k, (**s).clone(), *f));
                        }
                    }
                }
            }
            let trust_rows = new_trust.clone();
            let rebuilt_in_tx = rebuilt.clone();
            // The stored bundles that lose a prekey, cached after COMMIT; the ticket is held
            // until then.
            let rests: Vec<(DeviceAddr, Arc<VerifiedBundle>)> = fresh
                .iter()
                .map(|(k, _, f)| (rows[*k].addr(), Arc::clone(&f.rest)))
                .collect();
            let bundle_ticket = (!rests.is_empty()).then(|| self.bundles.write_ticket());
            let cache = bundle_ticket.as_ref().map(|t| t.invalidator());
            self.store
                .write(move |tx| {
                    for (k, _, f) in &fresh {
                        let addr = rows[*k].addr();
                        if let Some(old) = &f.archive {
                            device_state::push_previous_session(
                                tx,
                                &addr,
                                old,
                                now,
                                protocol_core::consts::MAX_PREVIOUS_SESSIONS,
                            )?;
                        }
                        if let Some(c) = &cache {
                            c.invalidate(&addr);
                        }
                        device_state::set_bundle_xml(
                            tx,
                            &addr,
                            f.bundle_xml.as_bytes(),
                            u32::try_from(f.rest.bundle().prekeys.len()).unwrap_or(u32::MAX),
                        )?;
                    }
                    session_store::upsert_many(tx, &rows)?;
                    // After the rows they belong to exist.
                    for (k, s, _) in &fresh {
                        crate::storage::skipped_keys::replace_for_session(
                            tx,
                            &rows[*k].addr(),
                            s.skipped_keys(),
                            now,
                        )?;
                    }
                    for addr in &rebuilt_in_tx {
                        crate::storage::rebuilds::clear(tx, addr)?;
                    }
                    for t in &trust_rows {
                        trust_store::set(tx, t)?;
                    }
                    if let Some(r) = &stored {
                        crate::storage::redelivery::put_encrypt_result(tx, r)?;
                    }
                    Ok(())
                })
                .await?;
            if let Some(t) = &bundle_ticket {
                for (addr, rest) in rests {
                    self.bundles.publish(&addr, rest, t);
                }
            }
            drop(bundle_ticket);
            for addr in &rebuilt {
                self.pending_rebuilds.done(addr);
            }
        }
        for (i, step, meta) in updates {
            let g = &mut guards[i].1;
            match step {
                Step::Existing(pending) => {
                    let applied = g
                        .session
                        .as_mut()
                        .is_some_and(|s| s.commit_encrypt(pending));
                    if !applied {
                        // Not reached under the slot's lock; should it be, memory must not
                        // differ from the disk: reload from the database on next use.
                        g.session = None;
                        g.loaded = false;
                        continue;
                    }
                }
                Step::Fresh(s, _) => g.session = Some(*s),
            }
            g.meta = meta;
        }
        drop(guards);
        if let Some(first) = targets.first() {
            self.remember_trust(acct, new_trust, first.addr.namespace, first.addr.device_id);
        }

        Ok(out)
    }
}
