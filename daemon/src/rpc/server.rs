//! The listening socket and the daemon's lifetime: bind (or take systemd's socket), accept,
//! shut down cleanly on SIGTERM/SIGINT.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{current_uid, ServeConfig, SHUTDOWN_GRACE};
use crate::rpc::connection::{serve_connection, Limits};
use crate::rpc::ctx::Ctx;
use crate::rpc::dispatch::Dispatcher;
use crate::rpc::registry::RegistryError;
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
    /// The socket directory is not private to us.
    #[error("socket directory {path} is owned by uid {owner}, not by us (uid {us})")]
    ForeignDirectory {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        us: u32,
    },
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
    Manager(#[from] crate::manager::ManagerError),
    /// Another daemon uses the database (or its lock file is unusable).
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

/// How often signed prekeys are checked for rotation.
const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

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

/// Creates `dir` (mode 0700) or checks that an existing one is ours, and makes it 0700.
fn prepare_directory(dir: &Path) -> Result<(), ServeError> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io_err("cannot create directory", dir)(e)),
    }
    let meta = std::fs::metadata(dir).map_err(io_err("cannot inspect directory", dir))?;
    let us = current_uid();
    if meta.uid() != us {
        return Err(ServeError::ForeignDirectory {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            us,
        });
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot make directory private", dir))?;
    }
    Ok(())
}

/// Removes a stale socket file, unless a daemon still answers on it.
fn clear_stale_socket(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::AlreadyRunning(path.to_path_buf())),
        Err(_) => {
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))
        }
    }
}

fn bind(config: &ServeConfig) -> Result<Bound, ServeError> {
    if let Some(std_listener) = systemd::take_activated_listener()
        .map_err(io_err("cannot use socket from systemd", &config.socket))?
    {
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    // Every file we create (socket, database) is private to us.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err("cannot watch signals", Path::new("-")))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err("cannot watch signals", Path::new("-")))?;

    // One daemon per database: lock before opening, hold until the store is closed.
    let mut db_lock = crate::lock::DbLock::acquire(&config.db, Some(&config.socket))?;
    // Open the database first: a daemon that cannot reach its state must not listen.
    let store = Arc::new(crate::storage::Store::open(
        &config.db,
        match config.durability {
            crate::config::Durability::Full => crate::storage::Durability::Full,
            crate::config::Durability::Normal => crate::storage::Durability::Normal,
        },
    )?);
    let bound = bind(&config)?;
    if bound.path != config.socket {
        db_lock.record(Some(&bound.path))?;
    }
    let ctx = Arc::new(Ctx::new(config.clone(), bound.path.clone()));
    // Before the manager loads its state: a rollback marks sessions for a rebuild.
    let (keeper, rollback) = crate::rollback::Keeper::start(Arc::clone(&store)).await?;
    if let Some(r) = rollback {
        let _ = ctx.rollback.set(r);
    }
    let manager =
        Arc::new(crate::manager::Manager::open(Arc::clone(&store), ctx.events.clone()).await?);
    let _ = ctx.manager.set(Arc::clone(&manager));
    let maintenance = tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = manager.rotate_signed_prekeys(crate::storage::now()).await {
                tracing::warn!(error = %e, "signed prekey rotation failed");
            }
        }
    });
    let keeper = Arc::new(keeper);
    let generations = {
        let keeper = Arc::clone(&keeper);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::rollback::INTERVAL);
            loop {
                tick.tick().await;
                if let Err(e) = keeper.follow().await {
                    tracing::warn!(error = %e, "recording the database generation failed");
                }
            }
        })
    };
    let module = crate::rpc::methods::build(Arc::clone(&ctx), config.enable_debug_methods)?;
    if config.enable_debug_methods {
        tracing::warn!("debug methods enabled: debug.sleep, debug.emit");
    }
    let dispatcher = Arc::new(Dispatcher::new(module, config.max_response_bytes));
    let limits = Limits {
        max_request_bytes: config.max_request_bytes,
        max_in_flight: config.max_in_flight,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_conn: u64 = 1;

    tracing::info!(socket = %bound.path.display(), pid = std::process::id(), version = env!("CARGO_PKG_VERSION"), "listening");
    systemd::notify_ready();

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = next_conn;
                    next_conn += 1;
                    connections.spawn(serve_connection(
                        stream, id, Arc::clone(&ctx), Arc::clone(&dispatcher), limits, stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }

    systemd::notify_stopping();
    drop(bound.listener);
    if let Some(ours) = bound.ours {
        remove_socket(&bound.path, ours);
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "in-flight requests did not finish in time; abandoning them"
        );
        connections.abort_all();
    }
    maintenance.abort();
    generations.abort();
    if let Err(e) = keeper.follow().await {
        tracing::warn!(error = %e, "recording the database generation failed");
    }
    // Checkpoint and close the database off the async threads.
    let closed = tokio::task::spawn_blocking(move || store.close()).await;
    if let Ok(Err(e)) = closed {
        tracing::warn!(error = %e, "closing the database failed");
    }
    drop(db_lock);
    tracing::info!("stopped");
    Ok(())
}
