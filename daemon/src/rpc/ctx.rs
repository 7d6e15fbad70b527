//! What a method can see: the daemon-wide [`Ctx`] and the calling connection's [`Conn`] (its
//! subscriptions and file transfers).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{ServeConfig, MAX_SUBSCRIPTIONS_PER_CONNECTION};
use crate::events::{DutyTicket, Event, EventBus, EventType};
use crate::rpc::error::NoManager;
use protocol_core::error::ErrorCause;

/// Daemon-wide state shared by every request: methods reach the session manager through
/// [`Ctx::manager`], and the rest as fields. `rpc::server::serve` fills it.
#[derive(Debug)]
pub struct Ctx {
    /// Events pushed to subscribed clients.
    pub events: EventBus,
    /// When the daemon started.
    pub started: Instant,
    /// The socket we serve on.
    pub socket_path: PathBuf,
    /// The settings we were started with.
    pub config: ServeConfig,
    /// Currently connected (authorized) clients.
    pub clients: AtomicUsize,
    /// The OpenRPC document, set once all methods are registered.
    pub openrpc: OnceLock<Value>,
    /// The session manager (set once the database is open; absent for `omemod openrpc`).
    pub manager: OnceLock<Arc<crate::manager::Manager>>,
    /// Set when the database was found older than its generation file at start.
    pub rollback: OnceLock<crate::storage::generation::Rollback>,
    /// File transfers open in the daemon, and their bounds.
    pub files: crate::media::TransferSlots,
    /// How the database is sealed (set once it is open).
    pub sealing: OnceLock<crate::storage::SealingStatus>,
    /// Where `unlock` hands a passphrase (set when the daemon started locked).
    pub unlock: OnceLock<mpsc::Sender<crate::rpc::methods::unlock::UnlockRequest>>,
}

impl Ctx {
    /// A context with no clients and an empty event bus.
    pub fn new(config: ServeConfig, socket_path: PathBuf) -> Self {
        let chunk_len = config
            .files
            .chunk_len(config.max_request_bytes, config.max_response_bytes);
        Self {
            files: crate::media::TransferSlots::new(config.files, chunk_len),
            events: EventBus::new(),
            started: Instant::now(),
            socket_path,
            config,
            clients: AtomicUsize::new(0),
            openrpc: OnceLock::new(),
            manager: OnceLock::new(),
            rollback: OnceLock::new(),
            sealing: OnceLock::new(),
            unlock: OnceLock::new(),
        }
    }

    /// The session manager (a method answers `internal` if the daemon runs without one).
    pub fn manager(&self) -> Result<&crate::manager::Manager, NoManager> {
        self.manager.get().map(|m| m.as_ref()).ok_or(NoManager)
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Why `subscribe` failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The call has no connection (a unit test's detached one).
    #[error("this call has no connection to push events to")]
    NoConnection,
    /// The connection is closing.
    #[error("connection is closing")]
    Closing,
    /// The connection has as many subscriptions as it may.
    #[error("too many subscriptions on this connection")]
    TooMany {
        /// The most a connection may have.
        max: usize,
    },
}

impl SubscribeError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            SubscribeError::NoConnection | SubscribeError::Closing => ErrorCause::LocalState,
            SubscribeError::TooMany { .. } => ErrorCause::Policy,
        }
    }
}

/// Counts a connected client for as long as it lives.
#[derive(Debug)]
pub struct ClientGuard(Arc<Ctx>);

impl ClientGuard {
    /// Counts one more client.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        ctx.clients.fetch_add(1, Ordering::Relaxed);
        Self(ctx)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection a request came in on: its identity and its subscriptions.
///
/// Cheap to clone. The transport hands one to each call; calls made without a connection (unit
/// tests) get a detached one that cannot push events.
#[derive(Debug, Clone)]
pub struct Conn {
    shared: Arc<ConnShared>,
    /// Subscriptions created by the current request wait on these until its answer is queued,
    /// so that a client never sees an event before the id of its subscription.
    starters: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

#[derive(Debug)]
struct ConnShared {
    id: u64,
    peer_pid: Option<i32>,
    out: Option<mpsc::Sender<String>>,
    subs: Mutex<Subscriptions>,
    /// Its file transfers, which end with it.
    transfers: crate::media::Transfers,
}

#[derive(Debug, Default)]
struct Subscriptions {
    next_id: u64,
    tasks: HashMap<u64, JoinHandle<()>>,
    closed: bool,
}

impl Conn {
    /// A connection whose pushed lines go to `out`.
    pub fn new(id: u64, peer_pid: Option<i32>, out: mpsc::Sender<String>) -> Self {
        Self::build(id, peer_pid, Some(out))
    }

    /// A connection that cannot receive pushed events.
    pub fn detached() -> Self {
        Self::build(0, None, None)
    }

    fn build(id: u64, peer_pid: Option<i32>, out: Option<mpsc::Sender<String>>) -> Self {
        Self {
            shared: Arc::new(ConnShared {
                id,
                peer_pid,
                out,
                subs: Mutex::new(Subscriptions {
                    next_id: 1,
                    ..Subscriptions::default()
                }),
                transfers: crate::media::Transfers::default(),
            }),
            starters: Arc::default(),
        }
    }

    /// A handle for one request on this connection (its own list of subscriptions to start).
    pub fn for_request(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            starters: Arc::default(),
        }
    }

    /// Called by the transport once the request's answer is queued (or was not due): starts the
    /// subscriptions it created.
    pub fn answer_queued(&self) {
        let starters = match self.starters.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for s in starters {
            let _ = s.send(());
        }
    }

    /// The connection's number (for logs).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The connection's file transfers.
    pub fn transfers(&self) -> &crate::media::Transfers {
        &self.shared.transfers
    }

    /// Subscribes this connection to `bus`, optionally only to some event types. Returns the
    /// subscription id, unique on this connection.
    pub fn subscribe(
        &self,
        bus: &EventBus,
        types: Option<HashSet<EventType>>,
    ) -> Result<u64, SubscribeError> {
        let Some(out) = self.shared.out.clone() else {
            return Err(SubscribeError::NoConnection);
        };
        let mut subs = lock(&self.shared.subs);
        if subs.closed {
            return Err(SubscribeError::Closing);
        }
        subs.tasks.retain(|_, t| !t.is_finished());
        if subs.tasks.len() >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return Err(SubscribeError::TooMany {
                max: MAX_SUBSCRIPTIONS_PER_CONNECTION,
            });
        }
        let id = subs.next_id;
        subs.next_id += 1;
        // Subscribe to the bus now, so that no event emitted after this call is missed.
        let rx = bus.subscribe();
        let ticket = bus.register(types.clone());
        let (start_tx, start_rx) = oneshot::channel();
        match self.starters.lock() {
            Ok(mut s) => s.push(start_tx),
            Err(poisoned) => poisoned.into_inner().push(start_tx),
        }
        let task = tokio::spawn(forward_events(
            id,
            rx,
            types,
            out,
            start_rx,
            (bus.clone(), ticket),
        ));
        subs.tasks.insert(id, task);
        tracing::debug!(conn = self.shared.id, peer_pid = ?self.shared.peer_pid, subscription = id, "subscribed");
        Ok(id)
    }

    /// Ends a subscription; `false` if this connection had none with that id.
    pub fn unsubscribe(&self, id: u64) -> bool {
        let task = lock(&self.shared.subs).tasks.remove(&id);
        match task {
            Some(t) => {
                t.abort();
                tracing::debug!(conn = self.shared.id, subscription = id, "unsubscribed");
                true
            }
            None => false,
        }
    }

    /// Ends every subscription and refuses new ones (the connection is going away).
    pub fn close(&self) {
        let mut subs = lock(&self.shared.subs);
        subs.closed = true;
        for (_, t) in subs.tasks.drain() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The JSON-RPC notification carrying an event (or an `events_lost` marker) to a subscriber.
fn event_notification(subscription: u64, event: &Value) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": "event",
        "params": {"subscription": subscription, "event": event},
    })
    .to_string()
}

async fn forward_events(
    id: u64,
    mut rx: broadcast::Receiver<Event>,
    types: Option<HashSet<EventType>>,
    out: mpsc::Sender<String>,
    start: oneshot::Receiver<()>,
    (bus, ticket): (EventBus, DutyTicket),
) {
    // Wait until the subscribe answer is queued; a dropped sender means it never will be.
    if start.await.is_err() {
        return;
    }
    loop {
        let line = match rx.recv().await {
            Ok(event) => {
                if types
                    .as_ref()
                    .is_some_and(|t| !t.contains(&event.event_type()))
                {
                    continue;
                }
                // A duty no answer carries is performed by one subscriber, not by all.
                if event.is_unanswered_duty() && !bus.is_duty_holder(&ticket, event.event_type()) {
                    continue;
                }
                match serde_json::to_value(&event) {
                    Ok(v) => event_notification(id, &v),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialize event");
                        continue;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(subscription = id, missed, "subscriber lagged; events lost");
                event_notification(
                    id,
                    &serde_json::json!({"type": "events_lost", "missed": missed}),
                )
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // Blocks only this subscription when the client reads slowly; the bus never waits.
        if out.send(line).await.is_err() {
            return;
        }
    }
}
