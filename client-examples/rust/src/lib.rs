//! A typed async client for omemod's socket (JSON-RPC 2.0, one JSON value per line).
//!
//! ```no_run
//! # async fn demo() -> Result<(), omemod_client::Error> {
//! use omemod_client::{Client, OMEMO2};
//! let mut client = Client::connect(&omemod_client::default_socket_path()).await?;
//! client.set_account(Some("me@example.org".into())); // never leave the choice to luck
//! let bundle = client.bundle(OMEMO2).await?;
//! println!("publish to {} item {}: {}", bundle.node, bundle.item_id, bundle.xml);
//! # Ok(()) }
//! ```
//!
//! One [`Client`] is one connection. Calls may run concurrently on it (`&self`); the answers are
//! matched by id, and events pushed by the daemon go to the receiver of [`Client::take_events`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// OMEMO 2.
pub const OMEMO2: &str = "urn:xmpp:omemo:2";
/// OMEMO 0.3 (what Conversations, Dino, Gajim … speak).
pub const OLDMEMO: &str = "eu.siacs.conversations.axolotl";
/// Both namespaces, OMEMO 2 first.
pub const NAMESPACES: [&str; 2] = [OMEMO2, OLDMEMO];

/// An error answer of the daemon. Switch on `kind` (stable); `message` is for people.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub method: String,
    pub code: i64,
    pub kind: String,
    pub message: String,
    /// The whole `data` object (some kinds add fields, e.g. `recipients`).
    pub data: Value,
}

/// Everything a call can fail with.
#[derive(Debug)]
pub enum Error {
    /// The socket could not be used.
    Io(std::io::Error),
    /// The socket, or the process serving it, belongs to another user.
    NotOurs { path: PathBuf, uid: u32 },
    /// The daemon answered with an error.
    Rpc(RpcError),
    /// An answer we could not understand (a bug on one side).
    Protocol(String),
    /// The connection closed before the answer came.
    Closed,
    /// The OMEMO 2 envelope names other parties than the stanza: the message must be dropped.
    EnvelopeMismatch {
        envelope_from: Option<String>,
        envelope_to: Option<String>,
    },
}

impl Error {
    /// `data.kind` of an error answer, if this is one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Error::Rpc(e) => Some(&e.kind),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::NotOurs { path, uid } => {
                write!(f, "{} belongs to uid {uid}, not to us", path.display())
            }
            Error::Rpc(e) => write!(f, "{}: {} ({})", e.method, e.message, e.kind),
            Error::Protocol(m) => write!(f, "unexpected answer: {m}"),
            Error::Closed => write!(f, "omemod closed the connection"),
            Error::EnvelopeMismatch {
                envelope_from,
                envelope_to,
            } => write!(
                f,
                "the envelope says from {} to {}, not what the stanza says",
                envelope_from.as_deref().unwrap_or("nobody"),
                envelope_to.as_deref().unwrap_or("nobody")
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// The socket path: `$OMEMOD_SOCKET`, else `$XDG_RUNTIME_DIR/omemod/omemod.sock`, else
/// `/run/user/<uid>/omemod/omemod.sock` (`/tmp/omemod-<uid>/omemod.sock` without `/run/user/<uid>`).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OMEMOD_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("omemod/omemod.sock");
    }
    let uid = current_uid().unwrap_or(0);
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        run_user.join("omemod/omemod.sock")
    } else {
        PathBuf::from(format!("/tmp/omemod-{uid}/omemod.sock"))
    }
}

/// Our real uid, read from `/proc/self/status` (the standard library does not expose getuid).
pub fn current_uid() -> std::io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| std::io::Error::other("no Uid line in /proc/self/status"))
}

fn check_socket(path: &Path, me: u32) -> Result<(), Error> {
    let refuse = |why: String| Err(Error::Io(std::io::Error::other(why)));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::env::current_dir()?,
    };
    for p in [dir.as_path(), path] {
        let m = std::fs::symlink_metadata(p)?;
        if m.file_type().is_symlink() {
            return refuse(format!("{} is a symbolic link", p.display()));
        }
        if m.uid() != me {
            return Err(Error::NotOurs {
                path: p.to_owned(),
                uid: m.uid(),
            });
        }
    }
    if std::fs::symlink_metadata(&dir)?.mode() & 0o022 != 0 {
        return refuse(format!("{} is writable by other users", dir.display()));
    }
    if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
        return refuse(format!("{} is not a socket", path.display()));
    }
    Ok(())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// One connection to omemod.
pub struct Client {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: Mutex<Option<mpsc::UnboundedReceiver<Pushed>>>,
    account: Option<String>,
}

impl Client {
    /// Connects, after checking that nobody else could have put the socket there (they would
    /// read every plaintext we send): the socket and its directory must be ours and not
    /// symlinks, the directory not writable by others, and the process behind it ours.
    pub async fn connect(path: &Path) -> Result<Client, Error> {
        let me = current_uid()?;
        check_socket(path, me)?;
        let stream = UnixStream::connect(path).await?;
        let peer = stream.peer_cred()?.uid();
        if peer != me {
            return Err(Error::NotOurs {
                path: path.to_owned(),
                uid: peer,
            });
        }
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(BufReader::new(read), pending.clone(), tx));
        Ok(Client {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events: Mutex::new(Some(rx)),
            account: None,
        })
    }

    /// The account the calls below act on; `None` leaves it to the daemon, which works only
    /// while it has exactly one (else: `account_required`).
    pub fn set_account(&mut self, account: Option<String>) {
        self.account = account;
    }

    /// The receiver of pushed events (once). Take it before `subscribe`; drop it if unused.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Pushed>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Any method, untyped.
    pub async fn call_raw(&self, method: &str, params: Value) -> Result<Value, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.writer.lock().await.write_all(&line).await?;
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(Error::Rpc(RpcError {
                method: method.to_owned(),
                code: error["code"].as_i64().unwrap_or(0),
                kind: error["data"]["kind"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
                message: error["message"].as_str().unwrap_or("").to_owned(),
                data: error["data"].clone(),
            })),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Any method, with the result deserialized.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T, Error> {
        let v = self.call_raw(method, params).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("{method}: {e}")))
    }

    fn with_account(&self, mut params: Value) -> Value {
        if let (Some(a), Some(o)) = (&self.account, params.as_object_mut()) {
            o.insert("account".into(), json!(a));
        }
        params
    }

    pub async fn status(&self) -> Result<Status, Error> {
        self.call("status", json!({})).await
    }

    pub async fn accounts(&self) -> Result<Vec<Account>, Error> {
        self.call("account.list", json!({})).await
    }

    /// Our JID, device id and fingerprint.
    pub async fn me(&self) -> Result<Account, Error> {
        self.call("fingerprint.get", self.with_account(json!({})))
            .await
    }

    /// Our device list to publish (after handing the server's copy to `devicelist_update`).
    pub async fn devicelist(&self, namespace: &str) -> Result<Publishable, Error> {
        let p = self.with_account(json!({"namespace": namespace}));
        self.call("devicelist.get", p).await
    }

    /// Our bundle to publish.
    pub async fn bundle(&self, namespace: &str) -> Result<Publishable, Error> {
        let p = self.with_account(json!({"namespace": namespace}));
        self.call("bundle.get", p).await
    }

    /// A device list received from PEP (`jid` is ours for our own list).
    pub async fn devicelist_update(
        &self,
        jid: &str,
        namespace: &str,
        xml: &str,
    ) -> Result<Value, Error> {
        let p = self.with_account(json!({"jid": jid, "namespace": namespace, "xml": xml}));
        self.call_raw("devicelist.update", p).await
    }

    /// A bundle fetched from PEP.
    pub async fn bundle_update(
        &self,
        jid: &str,
        namespace: &str,
        device_id: u32,
        xml: &str,
    ) -> Result<Value, Error> {
        let p = self.with_account(
            json!({"jid": jid, "namespace": namespace, "device_id": device_id, "xml": xml}),
        );
        self.call_raw("bundle.update", p).await
    }

    /// Encrypts a body to every device of the recipients (and our own other devices).
    pub async fn encrypt(&self, req: &EncryptRequest<'_>) -> Result<EncryptOutcome, Error> {
        let mut p = json!({"to": req.to, "body": req.body});
        if let Some(ns) = req.namespaces {
            p["namespaces"] = json!(ns);
        }
        if let Some(room) = req.sce_to {
            p["sce_to"] = json!(room);
        }
        self.call("encrypt", self.with_account(p)).await
    }

    /// Decrypts an `<encrypted>` element. `to` is where the stanza was addressed (our JID, or
    /// the room's for a group chat): the daemon compares it with the OMEMO 2 envelope. With an
    /// omemod that does not know `to` yet, the envelope is checked here instead.
    pub async fn decrypt(&self, req: &DecryptRequest<'_>) -> Result<DecryptOutcome, Error> {
        let mut p = self.with_account(json!({"from": req.from, "xml": req.xml}));
        p["to"] = json!(req.to);
        p["group_chat"] = json!(req.group_chat);
        match self.call("decrypt", p.clone()).await {
            Err(e) if e.kind() == Some("invalid_params") => {
                if let Some(o) = p.as_object_mut() {
                    o.remove("to");
                    o.remove("group_chat");
                }
                let r: DecryptOutcome = self.call("decrypt", p).await?;
                match &r.envelope {
                    Some(env)
                        if env.to.as_deref() != Some(req.to)
                            || env.from.as_deref() != Some(req.from) =>
                    {
                        Err(Error::EnvelopeMismatch {
                            envelope_from: env.from.clone(),
                            envelope_to: env.to.clone(),
                        })
                    }
                    _ => Ok(r),
                }
            }
            other => other,
        }
    }

    /// Subscribes this connection to every event type (unknown types included, so that a newer
    /// daemon's events are seen too). Events arrive on [`Client::take_events`]'s receiver.
    pub async fn subscribe(&self) -> Result<u64, Error> {
        let r = self.call_raw("subscribe", json!({})).await?;
        r["subscription"]
            .as_u64()
            .ok_or_else(|| Error::Protocol(format!("subscribe: {r}")))
    }
}

/// Reads answers and events until the connection closes.
async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: mpsc::UnboundedSender<Pushed>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["method"] == "event" {
            // Nobody listening (receiver dropped) is fine.
            let e = &msg["params"]["event"];
            let _ = events.send(Pushed {
                in_answer: e["in_answer"].as_bool().unwrap_or(false),
                cause: e["cause"].as_str().map(str::to_owned),
                event: Event::from(e.clone()),
            });
            continue;
        }
        let Some(id) = msg["id"].as_u64() else {
            continue;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(w) = waiter {
            let answer = match msg.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(msg["result"].clone()),
            };
            let _ = w.send(answer);
        }
    }
    // Dropping the senders wakes every waiter with `Closed`.
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

/// `status`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub socket: String,
    pub uptime_secs: u64,
}

/// One of our accounts (`account.list`, `fingerprint.get`).
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub jid: String,
    pub device_id: u32,
    pub fingerprint: String,
}

/// Something to publish to PEP: the item's XML, its node and id, and the publish options.
#[derive(Debug, Clone, Deserialize)]
pub struct Publishable {
    pub namespace: String,
    pub xml: String,
    pub node: String,
    pub item_id: String,
    pub publish_options: BTreeMap<String, String>,
}

/// `encrypt`'s result.
#[derive(Debug, Clone, Deserialize)]
pub struct EncryptOutcome {
    /// One `<encrypted>` element per namespace used.
    pub messages: Vec<EncryptedMessage>,
    /// What happened for each device.
    pub devices: Vec<DeviceReport>,
    pub actions: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncryptedMessage {
    pub namespace: String,
    pub xml: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceReport {
    pub jid: String,
    pub device_id: u32,
    pub namespace: String,
    /// `encrypted`, `untrusted`, `no_bundle`, …
    pub status: String,
    #[serde(default)]
    pub kex: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What to encrypt.
#[derive(Debug, Clone)]
pub struct EncryptRequest<'a> {
    /// Recipients' bare JIDs (in a group chat: every member's real JID).
    pub to: &'a [&'a str],
    pub body: &'a str,
    /// Limits and orders the namespaces (default: OMEMO 2, then 0.3).
    pub namespaces: Option<&'a [&'a str]>,
    /// The SCE `<to>`: the room's bare JID in a group chat.
    pub sce_to: Option<&'a str>,
}

/// What to decrypt.
#[derive(Debug, Clone)]
pub struct DecryptRequest<'a> {
    /// The sender's bare JID (in a group chat: the occupant's real JID).
    pub from: &'a str,
    /// The `<encrypted>` element.
    pub xml: &'a str,
    /// Where the stanza was addressed: our bare JID, or the room's.
    pub to: &'a str,
    pub group_chat: bool,
}

/// `decrypt`'s result.
#[derive(Debug, Clone, Deserialize)]
pub struct DecryptOutcome {
    pub namespace: String,
    pub sender: Sender,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub envelope: Option<Envelope>,
    pub empty: bool,
    pub key_exchange: bool,
    /// Decrypted before (e.g. read again from the archive): show, but do not notify again.
    /// Older daemons do not say (false).
    #[serde(default)]
    pub redelivered: bool,
    #[serde(default)]
    pub first_decrypted_at: Option<u64>,
    pub actions: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sender {
    pub jid: String,
    pub device_id: u32,
    pub fingerprint: String,
    pub trust: String,
}

/// The OMEMO 2 SCE envelope's affixes.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub from: Option<String>,
    pub to: Option<String>,
    pub time: Option<String>,
}

/// An event pushed to a subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub event: Event,
    /// The call that caused it got it as an action, and its caller does it: only take note.
    /// (Older daemons do not say: false.)
    pub in_answer: bool,
    /// Why it happened (newer daemons), e.g. `prekey_used`, `new_session`.
    pub cause: Option<String>,
}

/// An event, or an action in a call's result (they share names). Older daemons' names
/// (`bundle_changed`, `heartbeat_due`) map onto the action names; anything else is kept as
/// [`Event::Other`], never an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Value")]
pub enum Event {
    PublishBundle {
        namespace: String,
    },
    PublishDevicelist {
        namespace: String,
    },
    SendHeartbeat {
        jid: String,
        namespace: String,
        device_id: u32,
    },
    FetchBundle {
        jid: String,
        namespace: String,
        device_id: u32,
        node: String,
        item_id: String,
    },
    FetchDevicelist {
        jid: String,
        namespace: String,
        node: String,
    },
    DevicelistChanged {
        jid: String,
        namespace: String,
        device_ids: Vec<u32>,
    },
    TrustDecisionNeeded {
        jid: String,
        device_id: u32,
        fingerprint: String,
    },
    EventsLost {
        missed: u64,
    },
    /// A type this client does not know (or a known one with unexpected fields).
    Other(Value),
}

impl From<Value> for Event {
    fn from(v: Value) -> Event {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let n = |k: &str| v[k].as_u64();
        // Action fields say `jid`, event fields `peer`.
        let jid = s("jid").or_else(|| s("peer"));
        let ns = s("namespace");
        let id = n("device_id").and_then(|d| u32::try_from(d).ok());
        let parsed = match v["type"].as_str().unwrap_or("") {
            "publish_bundle" | "bundle_changed" => {
                ns.map(|namespace| Event::PublishBundle { namespace })
            }
            "publish_devicelist" => ns.map(|namespace| Event::PublishDevicelist { namespace }),
            "send_heartbeat" | "heartbeat_due" => match (jid, ns, id) {
                (Some(jid), Some(namespace), Some(device_id)) => Some(Event::SendHeartbeat {
                    jid,
                    namespace,
                    device_id,
                }),
                _ => None,
            },
            "fetch_bundle" => match (jid, ns, id, s("node"), s("item_id")) {
                (Some(jid), Some(namespace), Some(device_id), Some(node), Some(item_id)) => {
                    Some(Event::FetchBundle {
                        jid,
                        namespace,
                        device_id,
                        node,
                        item_id,
                    })
                }
                _ => None,
            },
            "fetch_devicelist" => match (jid, ns, s("node")) {
                (Some(jid), Some(namespace), Some(node)) => Some(Event::FetchDevicelist {
                    jid,
                    namespace,
                    node,
                }),
                _ => None,
            },
            "devicelist_changed" => {
                let ids = serde_json::from_value(v["device_ids"].clone()).ok();
                match (jid, ns, ids) {
                    (Some(jid), Some(namespace), Some(device_ids)) => {
                        Some(Event::DevicelistChanged {
                            jid,
                            namespace,
                            device_ids,
                        })
                    }
                    _ => None,
                }
            }
            "trust_decision_needed" => match (jid, id, s("fingerprint")) {
                (Some(jid), Some(device_id), Some(fingerprint)) => {
                    Some(Event::TrustDecisionNeeded {
                        jid,
                        device_id,
                        fingerprint,
                    })
                }
                _ => None,
            },
            "events_lost" => n("missed").map(|missed| Event::EventsLost { missed }),
            _ => None,
        };
        parsed.unwrap_or(Event::Other(v))
    }
}

impl fmt::Display for Event {
    /// One line saying what the client should do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PublishBundle { namespace } => {
                write!(f, "publish_bundle: publish our {namespace} bundle (bundle.get)")
            }
            Event::PublishDevicelist { namespace } => write!(
                f,
                "publish_devicelist: publish our {namespace} device list (devicelist.get)"
            ),
            Event::SendHeartbeat { jid, device_id, .. } => write!(
                f,
                "send_heartbeat: send an empty message to {jid} device {device_id} (heartbeat)"
            ),
            Event::FetchBundle {
                jid, node, item_id, ..
            } => write!(
                f,
                "fetch_bundle: fetch {jid}'s bundle from {node} item {item_id}, then bundle.update"
            ),
            Event::FetchDevicelist { jid, node, .. } => write!(
                f,
                "fetch_devicelist: fetch {jid}'s device list from {node}, then devicelist.update"
            ),
            Event::DevicelistChanged {
                jid,
                namespace,
                device_ids,
            } => write!(
                f,
                "devicelist_changed: {jid}'s {namespace} devices are now {device_ids:?}"
            ),
            Event::TrustDecisionNeeded {
                jid,
                device_id,
                fingerprint,
            } => write!(
                f,
                "trust_decision_needed: {jid} device {device_id} has key {fingerprint}: decide with trust.set"
            ),
            Event::EventsLost { missed } => write!(
                f,
                "events_lost: {missed} events were lost: re-read the state you need"
            ),
            Event::Other(v) => write!(f, "{}: {v}", v["type"].as_str().unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_event_names_parse_alike() {
        let old = json!({"type": "heartbeat_due", "account": "a@x", "peer": "b@x",
            "namespace": OMEMO2, "device_id": 7});
        let new = json!({"type": "send_heartbeat", "account": "a@x", "jid": "b@x",
            "namespace": OMEMO2, "device_id": 7, "cause": "decrypt"});
        assert_eq!(Event::from(old), Event::from(new.clone()));
        assert!(matches!(
            Event::from(new),
            Event::SendHeartbeat { device_id: 7, .. }
        ));
    }

    #[test]
    fn unknown_or_incomplete_events_are_kept() {
        let odd = json!({"type": "identity_changed", "jid": "b@x"});
        assert_eq!(Event::from(odd.clone()), Event::Other(odd));
        let short = json!({"type": "fetch_bundle", "jid": "b@x"});
        assert_eq!(Event::from(short.clone()), Event::Other(short));
    }
}
