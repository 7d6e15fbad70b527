//! `unlock`: gives a daemon whose database's key is a passphrase that passphrase. Until then the
//! daemon answers only `status`, `rpc.discover` and `unlock`; every other method is `locked`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::CallError;
use crate::rpc::registry::Method;
use crate::storage::StorageError;

/// `unlock`.
pub struct Unlock;

/// Params of `unlock`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockParams {
    /// The database's passphrase.
    pub passphrase: String,
}

impl std::fmt::Debug for UnlockParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { passphrase: _ } = self;
        f.write_str("UnlockParams { passphrase: <redacted> }")
    }
}

/// The answer of `unlock`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UnlockResult {
    /// Whether this call unlocked the daemon (`false`: it was not locked; the passphrase was
    /// not checked).
    pub unlocked: bool,
}

/// Why `unlock` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnlockError {
    /// The passphrase does not open the database's key.
    #[error("the passphrase does not open the database's key")]
    WrongPassphrase,
    /// The database failed to open with the right key.
    #[error(transparent)]
    Storage(StorageError),
}

impl UnlockError {
    /// Whom the error is due to.
    pub fn cause(&self) -> protocol_core::error::ErrorCause {
        match self {
            UnlockError::WrongPassphrase => protocol_core::error::ErrorCause::Request,
            UnlockError::Storage(e) => e.cause(),
        }
    }
}

/// A passphrase handed to the serving loop, which opens the database with it.
pub struct UnlockRequest {
    /// The passphrase.
    pub passphrase: Zeroizing<String>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<(), UnlockError>>,
}

impl Method for Unlock {
    const NAME: &'static str = "unlock";
    const SUMMARY: &'static str = "Opens the database of a daemon whose key source is a passphrase; until then every method but status, rpc.discover and unlock answers `locked`.";
    const DESCRIPTION: &'static str = "`omemod unlock` asks for the passphrase on the terminal. A \
        daemon that is not locked answers `unlocked: false` without checking the passphrase.";
    type Params = UnlockParams;
    type Result = UnlockResult;
    type Error = UnlockError;

    async fn call(
        ctx: Arc<Ctx>,
        _conn: Conn,
        p: UnlockParams,
    ) -> Result<UnlockResult, CallError<UnlockError>> {
        let passphrase = Zeroizing::new(p.passphrase);
        let Some(tx) = ctx.unlock.get().filter(|_| ctx.manager.get().is_none()) else {
            return Ok(UnlockResult { unlocked: false });
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(UnlockRequest { passphrase, reply }).await.is_err() {
            return Err(CallError::Internal("the daemon is stopping".into()));
        }
        match rx.await {
            Ok(Ok(())) => Ok(UnlockResult { unlocked: true }),
            Ok(Err(e)) => Err(CallError::Method(e)),
            Err(_) => Err(CallError::Internal("the daemon is stopping".into())),
        }
    }
}
