//! The listening socket and the daemon's lifetime: bind (or take systemd's socket), accept,
//! shut down cleanly on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{ServeConfig, SHUTDOWN_GRACE};
use crate::manager::Manager;
use crate::rpc::connection::{serve_connection, Activity, Limits, Service};
use crate::rpc::ctx::Ctx;
use crate::rpc::dispatch::error_line;
use crate::rpc::dispatch::Dispatcher;
use crate::rpc::error::{ErrorKind, RpcError};
use crate::rpc::methods::unlock::{UnlockError, UnlockRequest};
use crate::rpc::registry::RegistryError;
use crate::storage::sealing::keys::KeyError;
use crate::storage::{StorageError, Store};
use crate::systemd;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process answers on the socket path.
    #[error("another daemon is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// The socket's directory is not safe to use.
    #[error(transparent)]
    Trust(#[from] crate::socket_trust::TrustError),
    /// The socket path has no parent directory.
    #[error("socket path {0} has no directory")]
    NoDirectory(PathBuf),
    /// An I/O step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Method registration failed (a bug).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The database could not be opened.
    #[error("database: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The session manager could not load its state.
    #[error("loading state: {0}")]
    Manager(#[source] crate::storage::StorageError),
    /// Another daemon uses the database (or its lock file is unusable).
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ServeError + 'p {
    move |source| ServeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Our socket: where it is and whether we created it (and so must remove it).
struct Bound {
    listener: UnixListener,
    path: PathBuf,
    /// `(dev, ino)` of the socket file we created; `None` when systemd owns it.
    ours: Option<(u64, u64)>,
}

/// Creates `dir` (mode 0700) or checks that an existing one is ours, private and not a
/// symlink; an existing directory's mode is never changed (`socket_trust`).
fn prepare_directory(dir: &Path) -> Result<(), ServeError> {
    crate::socket_trust::prepare_private_dir(dir)?;
    Ok(())
}

/// Refuses a socket path that another daemon answers on or that is not a socket; `true` when
/// a stale socket file is in the way.
fn check_socket_path(path: &Path) -> Result<bool, ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::AlreadyRunning(path.to_path_buf())),
        Err(_) => Ok(true),
    }
}

/// Removes a stale socket file, unless a daemon still answers on it.
fn clear_stale_socket(path: &Path) -> Result<(), ServeError> {
    if check_socket_path(path)? {
        tracing::info!(socket = %path.display(), "removing stale socket");
        std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))?;
    }
    Ok(())
}

/// The socket systemd handed over, if any; else the socket path is checked (not served by
/// another daemon, not something else), before anything is created: a refused start leaves
/// no database behind.
fn take_or_check_socket(
    config: &ServeConfig,
) -> Result<Option<std::os::unix::net::UnixListener>, ServeError> {
    let activated = systemd::take_activated_listener()
        .map_err(io_err("cannot use socket from systemd", &config.socket))?;
    if activated.is_none() {
        check_socket_path(&config.socket)?;
    }
    Ok(activated)
}

fn bind(
    activated: Option<std::os::unix::net::UnixListener>,
    config: &ServeConfig,
) -> Result<Bound, ServeError> {
    if let Some(std_listener) = activated {
        std_listener
            .set_nonblocking(true)
            .map_err(io_err("cannot use socket from systemd", &config.socket))?;
        let listener = UnixListener::from_std(std_listener)
            .map_err(io_err("cannot use socket from systemd", &config.socket))?;
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| config.socket.clone());
        tracing::info!(socket = %path.display(), "using socket from systemd");
        return Ok(Bound {
            listener,
            path,
            ours: None,
        });
    }
    let path = config.socket.clone();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| ServeError::NoDirectory(path.clone()))?;
    prepare_directory(dir)?;
    clear_stale_socket(&path)?;
    // The umask (0o077, set at start) already makes the socket 0600; set it explicitly anyway.
    let listener = UnixListener::bind(&path).map_err(io_err("cannot listen on", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot restrict socket", &path))?;
    let meta = std::fs::metadata(&path).map_err(io_err("cannot inspect", &path))?;
    Ok(Bound {
        listener,
        path,
        ours: Some((meta.dev(), meta.ino())),
    })
}

/// Removes the socket file if it is still the one we created.
fn remove_socket(path: &Path, ours: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == ours => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove socket");
            }
        }
        _ => {}
    }
}

/// Repeated accept failures are logged at most this often.
const ACCEPT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// At `--max-connections`: asks the longest idle connection (no request running) to close.
/// `false` when every connection is busy.
fn make_room(live: &HashMap<tokio::task::Id, Arc<Activity>>) -> bool {
    let idlest = live
        .values()
        .filter_map(|a| a.idle_for().map(|idle| (idle, a)))
        .max_by_key(|(idle, _)| *idle);
    match idlest {
        Some((_, activity)) => {
            activity.evict();
            true
        }
        None => false,
    }
}

/// Answers a connection over the limit with `too_many_connections` and closes it.
fn refuse_connection(stream: &tokio::net::UnixStream, max: usize) {
    tracing::warn!(max, "connection refused: every connection is busy");
    let err = RpcError::new(
        ErrorKind::TooManyConnections,
        format!("the daemon serves at most {max} connections and all are busy"),
    )
    .with_data(serde_json::json!({"max": max}));
    // A fresh socket's buffer takes one short line without blocking.
    let _ = stream.try_write((error_line(None, &err) + "\n").as_bytes());
}

/// SIGTERM and SIGINT, either of which stops the daemon.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn watch() -> Result<Self, ServeError> {
        let watch = |kind| signal(kind).map_err(io_err("cannot watch signals", Path::new("-")));
        Ok(Self {
            term: watch(SignalKind::terminate())?,
            int: watch(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

/// Opens the database with `keys`.
fn open_store(
    config: &ServeConfig,
    keys: &crate::storage::KeySettings,
) -> Result<Store, crate::storage::StorageError> {
    crate::storage::Store::open_with(
        &config.db,
        crate::storage::StoreConfig {
            durability: match config.durability {
                crate::config::Durability::Full => crate::storage::Durability::Full,
                crate::config::Durability::Normal => crate::storage::Durability::Normal,
            },
            keys: keys.clone(),
            ..crate::storage::StoreConfig::default()
        },
    )
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    // Every file we create (socket, database) is private to us.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut signals = Signals::watch()?;
    let activated = take_or_check_socket(&config)?;

    // One daemon per database: lock before opening, hold until the store is closed.
    let mut db_lock = crate::lock::DbLock::acquire(&config.db, Some(&config.socket))?;
    // Open the database first: a daemon that cannot reach its state must not listen. One whose
    // key is a passphrase listens locked, for `unlock`.
    let mut store = match open_store(&config, &config.keys) {
        Ok(store) => Some(Arc::new(store)),
        Err(StorageError::Key(KeyError::NeedPassphrase)) => None,
        Err(e) => return Err(e.into()),
    };
    let bound = bind(activated, &config)?;
    if bound.path != config.socket {
        db_lock.record(Some(&bound.path))?;
    }
    let ctx = Arc::new(Ctx::new(config.clone(), bound.path.clone()));
    let (unlock_tx, mut unlocks) = tokio::sync::mpsc::channel(4);
    let mut background = match &store {
        Some(store) => Some(Background::start(&ctx, store).await?),
        None => {
            let _ = ctx.unlock.set(unlock_tx);
            tracing::warn!("the database's key is a passphrase: locked until `omemod unlock`");
            None
        }
    };
    let service = Arc::new(service(Arc::clone(&ctx), &config)?);
    let mut connections = Connections::new(config.bounds.max_connections);

    tracing::info!(socket = %bound.path.display(), pid = std::process::id(), version = env!("CARGO_PKG_VERSION"), "listening");
    systemd::notify_ready();
    loop {
        tokio::select! {
            () = signals.recv() => break,
            Some(request) = unlocks.recv(), if store.is_none() => {
                if let Some((opened, started)) = unlock(&ctx, &config, request).await {
                    store = Some(opened);
                    background = Some(started);
                }
            }
            Some(done) = connections.set.join_next_with_id(), if !connections.set.is_empty() => {
                connections.finished(done);
            }
            accepted = bound.listener.accept(), if connections.may_accept() => match accepted {
                Ok((stream, _)) => connections.start(stream, &service),
                Err(e) => connections.accept_failed(&e).await,
            },
        }
    }

    systemd::notify_stopping();
    drop(bound.listener);
    if let Some(ours) = bound.ours {
        remove_socket(&bound.path, ours);
    }
    connections.stop().await;
    if let Some(background) = background {
        background.stop().await;
    }
    // Checkpoint and close the database off the async threads.
    if let Some(store) = store {
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        if let Ok(Err(e)) = closed {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }
    drop(db_lock);
    tracing::info!("stopped");
    Ok(())
}

/// Opens the database of a locked daemon with the passphrase of an `unlock` call and starts
/// what runs beside the requests; answers the call either way.
async fn unlock(
    ctx: &Arc<Ctx>,
    config: &ServeConfig,
    request: UnlockRequest,
) -> Option<(Arc<Store>, Background)> {
    let mut keys = config.keys.clone();
    keys.passphrase = Some(request.passphrase);
    let config = config.clone();
    // Argon2id takes a while and 64 MiB: off the runtime thread.
    let opened = tokio::task::spawn_blocking(move || open_store(&config, &keys)).await;
    let outcome = match opened {
        Ok(Ok(store)) => {
            let store = Arc::new(store);
            match Background::start(ctx, &store).await {
                Ok(background) => Ok((store, background)),
                Err(e) => Err(UnlockError::Storage(StorageError::Io {
                    action: "starting on",
                    path: ctx.config.db.clone(),
                    source: io::Error::other(e.to_string()),
                })),
            }
        }
        Ok(Err(StorageError::Key(KeyError::WrongKey { .. }))) => Err(UnlockError::WrongPassphrase),
        Ok(Err(e)) => Err(UnlockError::Storage(e)),
        Err(e) => Err(UnlockError::Storage(StorageError::Io {
            action: "opening",
            path: ctx.config.db.clone(),
            source: io::Error::other(e.to_string()),
        })),
    };
    match outcome {
        Ok(done) => {
            tracing::info!("unlocked");
            let _ = request.reply.send(Ok(()));
            Some(done)
        }
        Err(e) => {
            tracing::warn!(error = %e, "unlock refused");
            let _ = request.reply.send(Err(e));
            None
        }
    }
}

/// The methods, the dispatcher and the connection limits, as `config` says.
fn service(ctx: Arc<Ctx>, config: &ServeConfig) -> Result<Service, ServeError> {
    let methods = crate::rpc::methods::build(Arc::clone(&ctx), config.enable_debug_methods)?;
    if config.enable_debug_methods {
        tracing::warn!(
            "debug methods enabled: debug.sleep, debug.emit, debug.kill_after_commit, debug.clock"
        );
    }
    Ok(Service {
        ctx,
        dispatcher: Dispatcher::new(methods, config.max_response_bytes),
        limits: Limits {
            max_request_bytes: config.max_request_bytes,
            max_in_flight: config.max_in_flight,
            max_queued_bytes: config
                .max_response_bytes
                .max(crate::bounds::MIN_QUEUED_ANSWER_BYTES),
            partial_line_timeout: config.bounds.partial_line(),
            write_stall_timeout: config.bounds.write_stall(),
        },
    })
}

/// The session manager and the tasks that run beside the requests: the maintenance pass, and
/// flushing the generation record.
struct Background {
    maintenance: JoinHandle<()>,
    record: JoinHandle<()>,
}

impl Background {
    /// Notices (and treats) an older copy of the database, loads the manager into `ctx` and
    /// starts the tasks.
    async fn start(ctx: &Ctx, store: &Arc<Store>) -> Result<Self, ServeError> {
        // Before the manager loads its state: the treatment changes sessions and keys.
        let started = crate::rollback::Keeper::start(Arc::clone(store)).await?;
        if let Some(r) = started.rollback {
            let _ = ctx.rollback.set(r);
        }
        let _ = ctx.sealing.set(store.sealing().clone());
        let manager = Arc::new(
            Manager::open(Arc::clone(store), ctx.events.clone())
                .await
                .map_err(ServeError::Manager)?,
        );
        let _ = ctx.manager.set(Arc::clone(&manager));
        manager.set_redelivery_config(ctx.config.redelivery);
        manager.set_stale_config(ctx.config.stale);
        manager.announce_restored(&started.restored);
        Ok(Self {
            maintenance: tokio::spawn(maintain(manager, Maintenance::of(&ctx.config))),
            record: tokio::spawn(flush_record(started.keeper)),
        })
    }

    /// Stops the tasks (the writer flushes the record when the store closes).
    async fn stop(self) {
        self.maintenance.abort();
        self.record.abort();
    }
}

/// What the maintenance pass is configured with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maintenance {
    /// Time between passes (`manager::retention::maintenance_interval`).
    interval: std::time::Duration,
    /// `--skipped-key-max-age`, in seconds.
    skipped_key_max_age: i64,
    /// How long a copy moved aside by `restore` is kept, in seconds.
    restore_copy_lifetime: i64,
}

impl Maintenance {
    pub(crate) fn of(config: &ServeConfig) -> Self {
        use crate::manager::retention;
        Self {
            interval: retention::maintenance_interval(&config.redelivery),
            skipped_key_max_age: config.bounds.skipped_key_max_age_secs(),
            restore_copy_lifetime: retention::before_restore_lifetime_secs(&config.redelivery),
        }
    }
}

/// One of the passes of the maintenance, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MaintenancePass {
    /// Rotates signed prekeys past their period, drops retired ones past their grace.
    SignedPrekeys,
    /// Prunes the redelivery store.
    Redelivery,
    /// Deletes expired skipped message keys and long-dropped devices.
    Expiry,
    /// Ends catch-ups that timed out.
    Catchup,
    /// Deletes copies moved aside by `restore` past their lifetime.
    RestoreCopies,
    /// Truncates the WAL when key material was erased (here or by a request).
    WalTruncation,
}

impl MaintenancePass {
    /// Every pass, in the order the maintenance runs them.
    pub const ALL: [MaintenancePass; 6] = [
        MaintenancePass::SignedPrekeys,
        MaintenancePass::Redelivery,
        MaintenancePass::Expiry,
        MaintenancePass::Catchup,
        MaintenancePass::RestoreCopies,
        MaintenancePass::WalTruncation,
    ];

    /// Runs the pass as at `now`.
    pub(crate) async fn run(
        self,
        manager: &Manager,
        now: i64,
        m: &Maintenance,
    ) -> Result<(), crate::storage::StorageError> {
        match self {
            MaintenancePass::SignedPrekeys => manager.rotate_signed_prekeys(now).await.map(drop),
            MaintenancePass::Redelivery => manager.prune_redelivery(now).await.map(drop),
            MaintenancePass::Expiry => manager
                .prune_expired(now, m.skipped_key_max_age)
                .await
                .map(drop),
            MaintenancePass::Catchup => manager.expire_catchups(now).await,
            MaintenancePass::RestoreCopies => {
                let cutoff = now.saturating_sub(m.restore_copy_lifetime);
                manager.remove_restore_copies(cutoff).await.map(drop)
            }
            MaintenancePass::WalTruncation => {
                if !manager.truncate_wal_if_owed().await? {
                    tracing::warn!(
                        "WAL truncation after an erasure was blocked by a reader; retried at the next pass"
                    );
                }
                Ok(())
            }
        }
    }

    fn failed(self) -> &'static str {
        match self {
            MaintenancePass::SignedPrekeys => "signed prekey rotation failed",
            MaintenancePass::Redelivery => "pruning the redelivery store failed",
            MaintenancePass::Expiry => "expiring old rows failed",
            MaintenancePass::Catchup => "ending timed-out catch-up failed",
            MaintenancePass::RestoreCopies => "deleting expired restore copies failed",
            MaintenancePass::WalTruncation => "WAL truncation after an erasure failed",
        }
    }
}

/// At start, then every `m.interval` (an hour at most): rotates signed prekeys, prunes the
/// redelivery store, expires old rows and restore copies, ends timed-out catch-ups, and
/// truncates the WAL when key material was erased (here or by a request).
async fn maintain(manager: Arc<Manager>, m: Maintenance) {
    let mut tick = tokio::time::interval(m.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::storage::now();
        for pass in MaintenancePass::ALL {
            if let Err(e) = pass.run(&manager, now, &m).await {
                tracing::warn!(error = %e, "{}", pass.failed());
            }
        }
    }
}

/// Flushes the generation record to the disk every second while it changes.
async fn flush_record(keeper: crate::rollback::Keeper) {
    let mut tick = tokio::time::interval(crate::rollback::SYNC_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(e) = keeper.sync().await {
            tracing::warn!(error = %e, "flushing the generation record failed");
        }
    }
}

/// The connections being served, and what bounds them (`--max-connections`).
struct Connections {
    set: JoinSet<()>,
    live: HashMap<tokio::task::Id, Arc<Activity>>,
    /// Connections served at once (fewer than asked when the open-file limit is low).
    max: usize,
    /// Connections open at once, counting evicted ones still closing.
    ceiling: usize,
    accept_log: crate::bounds::RateLimitedLog,
    next_id: u64,
    stop: watch::Sender<bool>,
}

impl Connections {
    fn new(max_connections: usize) -> Self {
        let max = crate::bounds::raise_nofile_limit(max_connections);
        Self {
            set: JoinSet::new(),
            live: HashMap::new(),
            max,
            ceiling: max + crate::bounds::eviction_slack(max),
            accept_log: crate::bounds::RateLimitedLog::new(ACCEPT_LOG_EVERY),
            next_id: 1,
            stop: watch::channel(false).0,
        }
    }

    /// Whether to accept: beyond the ceiling, new clients wait in the listen backlog.
    fn may_accept(&self) -> bool {
        self.live.len() < self.ceiling
    }

    /// Serves a new connection, first making room at the limit (or refusing it).
    fn start(&mut self, stream: tokio::net::UnixStream, service: &Arc<Service>) {
        if self.live.len() >= self.max && !make_room(&self.live) {
            refuse_connection(&stream, self.max);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let activity = Activity::new();
        let handle = self.set.spawn(serve_connection(
            stream,
            id,
            Arc::clone(service),
            Arc::clone(&activity),
            self.stop.subscribe(),
        ));
        self.live.insert(handle.id(), activity);
    }

    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let task = match done {
            Ok((task, ())) => task,
            Err(e) => e.id(),
        };
        self.live.remove(&task);
    }

    /// EMFILE and the like: backs off briefly rather than spin, and says so once in a while
    /// rather than on every attempt.
    async fn accept_failed(&mut self, e: &io::Error) {
        if let Some(held_back) = self.accept_log.allow(std::time::Instant::now()) {
            tracing::warn!(error = %e, held_back, connections = self.live.len(), "accept failed");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    /// Asks every connection to close and waits for their requests, up to [`SHUTDOWN_GRACE`].
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.set.len(),
                "in-flight requests did not finish in time; abandoning them"
            );
            self.set.abort_all();
        }
    }
}
