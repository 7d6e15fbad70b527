//! Account lifecycle beyond creation: deleting an account for good.

use super::{ErrorCause, InvalidJid, Manager, StorageError};
use crate::storage::transfer;
use std::sync::PoisonError;

/// Why `account.delete` failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteAccountError {
    /// The JID is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// No account has this JID.
    #[error("no account {0}")]
    Unknown(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl DeleteAccountError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            DeleteAccountError::Jid(e) => e.cause(),
            DeleteAccountError::Unknown(_) => ErrorCause::Request,
            DeleteAccountError::Storage(e) => e.cause(),
        }
    }
}

/// What `account.delete` removed.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DeletedAccount {
    /// The account's (normalised) JID.
    pub jid: String,
    /// Its device id, now gone.
    pub device_id: u32,
    /// Rows deleted, every table together.
    pub rows: usize,
    /// Whether the WAL could be emptied at once (otherwise at the next maintenance pass that
    /// is not blocked by a reader).
    pub wal_truncated: bool,
    /// Copies moved aside by `omemod restore` that were deleted (they held the account's keys).
    pub restore_copies: usize,
}

impl Manager {
    /// Deletes the account `jid` and everything stored for it (identity, prekeys, sessions,
    /// skipped keys, device lists, bundles, trust), in one transaction. The database runs with
    /// `secure_delete`, so the freed space is zeroed; the WAL, which still holds the old pages,
    /// is then checkpointed and truncated, and the copies `restore` moved aside are deleted.
    pub async fn delete_account(&self, jid: &str) -> Result<DeletedAccount, DeleteAccountError> {
        let jid = super::check_bare_jid(jid)?;
        let acct = self
            .account_named(&jid)
            .ok_or(DeleteAccountError::Unknown(jid))?;
        // Own-key operations (rotation, bundle) of this account finish first.
        let _keys = acct.keys.lock().await?;
        let id = acct.id;
        let ticket = self.bundles.write_ticket();
        let cache = ticket.invalidator();
        let rows = self
            .store
            .write(move |tx| {
                cache.invalidate_account(id);
                transfer::delete_account_rows(tx, id)
            })
            .await?;
        drop(ticket);
        self.accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&acct.jid);
        self.directories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.key_source.resident().remove(id);
        self.sessions.forget_account(id);
        // The copies `restore` moved aside hold this account's keys too.
        let restore_copies = self
            .remove_restore_copies(i64::MAX)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "deleting the copies moved aside by restore failed");
                0
            });
        self.key_material_erased();
        let wal_truncated = self.truncate_wal_if_owed().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "checkpoint after account deletion failed");
            false
        });
        tracing::info!(jid = %acct.jid, rows, wal_truncated, restore_copies, "account deleted");
        Ok(DeletedAccount {
            jid: acct.jid.clone(),
            device_id: acct.device_id,
            rows,
            wal_truncated,
            restore_copies,
        })
    }
}
