//! [`Client`]: one connection to omemod, with a method per call the daemon serves.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::connection::Connection;
use crate::event::Pushed;
use crate::methods::{
    Account, DecryptOutcome, DecryptRequest, Device, EncryptOutcome, EncryptRequest, LabelSet,
    LinkVerified, OwnLink, Plan, Publishable, Status, TrustEntry,
};
use crate::{trust, Error, RpcError};

/// One connection to omemod. Calls may run concurrently on it (`&self`); the answers are
/// matched by id, and events pushed by the daemon go to the receiver of
/// [`Client::take_events`]. Dropping the client closes the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), omemod_client::Error> {
/// use omemod_client::{Client, OMEMO2};
/// use serde_json::json;
/// let mut client = Client::connect(&omemod_client::default_socket_path()).await?;
/// client.set_account(Some("me@example.org".into())); // never leave the choice to luck
/// // Typed methods for the common calls…
/// let bundle = client.bundle(OMEMO2).await?;
/// println!("publish to {} item {}: {}", bundle.node, bundle.item_id, bundle.xml);
/// // …and any method by name, with the daemon's error answers typed.
/// match client.call("trust.list", json!({"jid": "you@example.org"})).await {
///     Ok(decisions) => println!("{decisions}"),
///     Err(e) if e.kind() == Some("unknown_account") => println!("no such account"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub struct Client {
    conn: Connection,
    events: Mutex<Option<mpsc::UnboundedReceiver<Pushed>>>,
    account: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, after checking that nobody else could have put the socket there (they would
    /// read every plaintext we send, [`trust`]): the socket and its directory must be ours and
    /// not symlinks, the directory not writable by others, and the process behind it ours.
    /// Must run inside a tokio runtime (the connection has two tasks of its own).
    pub async fn connect(path: &Path) -> Result<Client, Error> {
        trust::check_socket(path)?;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect {
                path: path.to_owned(),
                source,
            })?;
        trust::check_peer(path, &stream)?;
        let (conn, events) = Connection::start(stream);
        Ok(Client {
            conn,
            events: Mutex::new(Some(events)),
            account: None,
        })
    }

    /// The account the typed calls below act on; `None` leaves it to the daemon, which works
    /// only while it has exactly one (else: `account_required`). [`Client::call`] and
    /// [`Client::batch`] send their params as given.
    pub fn set_account(&mut self, account: Option<String>) {
        self.account = account;
    }

    /// The receiver of pushed events (once). Take it before `subscribe`; events are queued for
    /// it until read, so a subscriber should read them.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Pushed>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Any method by name: its `result`, or [`Error::Rpc`] with the daemon's error answer.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        let answers = self.conn.exchange(&[(method, &params)], false).await?;
        match answers.into_iter().next() {
            Some(Ok(result)) => Ok(result),
            Some(Err(error)) => Err(RpcError::from_object(method, error).into()),
            None => Err(Error::Closed),
        }
    }

    /// Any method by name, with its result deserialized.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, Error> {
        let v = self.call(method, params).await?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("{method}: {e}")))
    }

    /// Several calls in one JSON-RPC batch (one line; the daemon runs them concurrently and
    /// takes at most 256): each call's result or error answer, in the order of `calls`.
    ///
    /// ```no_run
    /// # async fn demo(client: &omemod_client::Client) -> Result<(), omemod_client::Error> {
    /// use serde_json::json;
    /// let answers = client
    ///     .batch(&[("status", json!({})), ("account.list", json!({}))])
    ///     .await?;
    /// for a in answers {
    ///     match a {
    ///         Ok(result) => println!("{result}"),
    ///         Err(e) => println!("refused: {e}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn batch(
        &self,
        calls: &[(&str, Value)],
    ) -> Result<Vec<Result<Value, RpcError>>, Error> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<(&str, &Value)> = calls.iter().map(|(m, p)| (*m, p)).collect();
        let answers = self.conn.exchange(&refs, true).await?;
        Ok(answers
            .into_iter()
            .zip(calls)
            .map(|(a, (method, _))| a.map_err(|e| RpcError::from_object(method, e)))
            .collect())
    }

    fn with_account(&self, mut params: Value) -> Value {
        if let (Some(a), Some(o)) = (&self.account, params.as_object_mut()) {
            o.insert("account".into(), json!(a));
        }
        params
    }

    /// The daemon: version, pid, socket, uptime.
    pub async fn status(&self) -> Result<Status, Error> {
        self.call_as("status", json!({})).await
    }

    /// Every account of the daemon.
    pub async fn accounts(&self) -> Result<Vec<Account>, Error> {
        self.call_as("account.list", json!({})).await
    }

    /// Our JID, device id and fingerprint.
    pub async fn me(&self) -> Result<Account, Error> {
        self.call_as("fingerprint.get", self.with_account(json!({})))
            .await
    }

    /// Our device list to publish (after handing the server's copy to `devicelist_update`).
    pub async fn devicelist(&self, namespace: &str) -> Result<Publishable, Error> {
        let p = self.with_account(json!({"namespace": namespace}));
        self.call_as("devicelist.get", p).await
    }

    /// Our device list to publish without our own devices `remove` (the user chose to remove
    /// them, e.g. after an `offer_device_removal`).
    pub async fn devicelist_without(
        &self,
        namespace: &str,
        remove: &[u32],
    ) -> Result<Publishable, Error> {
        let p = self.with_account(json!({"namespace": namespace, "remove": remove}));
        self.call_as("devicelist.get", p).await
    }

    /// Known devices (of `jid`, or everyone's, ours included): fingerprint, trust, staleness.
    pub async fn devices(&self, jid: Option<&str>) -> Result<Vec<Device>, Error> {
        let mut p = self.with_account(json!({}));
        if let Some(j) = jid {
            p["jid"] = json!(j);
        }
        self.call_as("devices.list", p).await
    }

    /// Trust decisions (about `jid`'s keys, or everyone's), each with the devices using it.
    pub async fn trust_list(&self, jid: Option<&str>) -> Result<Vec<TrustEntry>, Error> {
        let mut p = self.with_account(json!({}));
        if let Some(j) = jid {
            p["jid"] = json!(j);
        }
        self.call_as("trust.list", p).await
    }

    /// What an `encrypt` to `to` would cover now and what to fetch first; changes nothing.
    pub async fn encrypt_plan(
        &self,
        to: &[&str],
        namespaces: Option<&[&str]>,
    ) -> Result<Plan, Error> {
        let mut p = json!({"to": to});
        if let Some(ns) = namespaces {
            p["namespaces"] = json!(ns);
        }
        self.call_as("encrypt.plan", self.with_account(p)).await
    }

    /// Our bundle to publish.
    pub async fn bundle(&self, namespace: &str) -> Result<Publishable, Error> {
        let p = self.with_account(json!({"namespace": namespace}));
        self.call_as("bundle.get", p).await
    }

    /// A device list received from PEP (`jid` is ours for our own list).
    pub async fn devicelist_update(
        &self,
        jid: &str,
        namespace: &str,
        xml: &str,
    ) -> Result<Value, Error> {
        let p = self.with_account(json!({"jid": jid, "namespace": namespace, "xml": xml}));
        self.call("devicelist.update", p).await
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
        self.call("bundle.update", p).await
    }

    /// Encrypts a body to every device of the recipients (and our own other devices). When no
    /// device of the recipients can get it, the daemon refuses with `no_device_reached`
    /// ([`Error::unreached`] gives each device's report).
    pub async fn encrypt(&self, req: &EncryptRequest<'_>) -> Result<EncryptOutcome, Error> {
        let mut p = json!({"to": req.to, "body": req.body});
        if let Some(ns) = req.namespaces {
            p["namespaces"] = json!(ns);
        }
        if let Some(room) = req.sce_to {
            p["sce_to"] = json!(room);
        }
        self.call_as("encrypt", self.with_account(p)).await
    }

    /// Decrypts an `<encrypted>` element. `to` is where the stanza was addressed (our JID, or
    /// the room's for a group chat): the daemon compares it with the OMEMO 2 envelope. With an
    /// omemod that does not know `to` yet, the envelope is checked here instead.
    pub async fn decrypt(&self, req: &DecryptRequest<'_>) -> Result<DecryptOutcome, Error> {
        let mut p = self.with_account(json!({"from": req.from, "xml": req.xml}));
        p["to"] = json!(req.to);
        p["group_chat"] = json!(req.group_chat);
        match self.call_as("decrypt", p.clone()).await {
            Err(e) if e.kind() == Some("invalid_params") => {
                if let Some(o) = p.as_object_mut() {
                    o.remove("to");
                    o.remove("group_chat");
                }
                let r: DecryptOutcome = self.call_as("decrypt", p).await?;
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

    /// Our verification link, to show as a QR code, and our fingerprint as other clients
    /// display it.
    pub async fn link(&self) -> Result<OwnLink, Error> {
        self.call_as("link.get", self.with_account(json!({}))).await
    }

    /// Applies a scanned verification link: all its keys become verified, or none (the error
    /// then says, key by key, what did not match).
    pub async fn verify_link(&self, link: &str) -> Result<LinkVerified, Error> {
        let p = self.with_account(json!({"link": link}));
        self.call_as("link.verify", p).await
    }

    /// Names our device (`None` removes the label); then publish the OMEMO 2 device list.
    pub async fn set_label(&self, label: Option<&str>) -> Result<LabelSet, Error> {
        let p = self.with_account(json!({"label": label}));
        self.call_as("account.set_label", p).await
    }

    /// Subscribes this connection to every event type (unknown types included, so that a newer
    /// daemon's events are seen too). Events arrive on [`Client::take_events`]'s receiver.
    pub async fn subscribe(&self) -> Result<u64, Error> {
        let r = self.call("subscribe", json!({})).await?;
        r["subscription"]
            .as_u64()
            .ok_or_else(|| Error::Protocol(format!("subscribe: {r}")))
    }
}
