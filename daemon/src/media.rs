//! File transfers of XEP-0454 media sharing: a file encrypted for upload, or a downloaded file
//! decrypted, streamed through the RPC connection in chunks (protocol-core's `media` does the
//! crypto and the piece bookkeeping; this module keeps the transfers and their bounds).
//!
//! A transfer belongs to the connection that began it ([`Transfers`], one per connection) and
//! ends with it, when it completes, when it is cancelled, or after `--file-idle-timeout` without a
//! call. [`TransferSlots`] counts the transfers of the whole daemon against
//! `--max-file-transfers`. Between calls a transfer holds its cipher state and, while decrypting,
//! 16 bytes per chunk; no file data.
//!
//! Decryption takes two passes over the same chunks: the first checks the tag of the whole file,
//! and only then does the second release plaintext, chunk by chunk, for chunks identical to those
//! checked. A file that does not authenticate never gives a byte of plaintext.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use protocol_core::error::ErrorCause;
use protocol_core::media::gcm::MAX_PLAINTEXT_LEN;
use protocol_core::media::{
    AesgcmLink, AesgcmLinkError, MediaError, MediaKey, MediaOpener, MediaSealer, MediaVerifier,
    TAG_LEN,
};
use zeroize::Zeroizing;

use crate::config::FileLimits;

/// What the daemon allows and how many transfers are open: one per daemon.
#[derive(Debug)]
pub struct TransferSlots {
    limits: FileLimits,
    chunk_len: NonZeroUsize,
    idle: Duration,
    open: Arc<AtomicUsize>,
}

impl TransferSlots {
    /// Slots for `limits`, with chunks of `chunk_len` bytes (at least 1).
    pub fn new(limits: FileLimits, chunk_len: usize) -> TransferSlots {
        TransferSlots {
            limits,
            chunk_len: NonZeroUsize::new(chunk_len).unwrap_or(NonZeroUsize::MIN),
            idle: limits.idle_timeout(),
            open: Arc::default(),
        }
    }

    /// Bytes of a file per chunk call.
    pub fn chunk_len(&self) -> usize {
        self.chunk_len.get()
    }

    /// Transfers open in the daemon.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Checks the size, then takes a slot.
    fn take(&self, plaintext_len: u64) -> Result<Slot, LimitError> {
        let max = self.limits.max_file_bytes.min(MAX_PLAINTEXT_LEN);
        if plaintext_len > max {
            return Err(LimitError::TooLarge {
                size: plaintext_len,
                max,
            });
        }
        let max = self.limits.max_transfers;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| LimitError::TooMany { max })?;
        Ok(Slot(Arc::clone(&self.open)))
    }
}

/// One open transfer counted in [`TransferSlots`], given back on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Where a transfer is.
enum Stage {
    /// Encrypting the plaintext.
    Sealing(MediaSealer),
    /// Decrypting, first pass: checking the tag.
    Verifying(MediaVerifier),
    /// Decrypting, second pass: the tag verified, releasing the plaintext.
    Opening(MediaOpener),
}

/// What a transfer takes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A chunk of plaintext to encrypt (`file.encrypt.chunk`).
    EncryptChunk,
    /// Nothing more to encrypt: the tag (`file.encrypt.finish`).
    EncryptFinish,
    /// A chunk of the downloaded file to check (`file.decrypt.check`).
    DecryptCheck,
    /// The same chunk again, to decrypt (`file.decrypt.read`).
    DecryptRead,
}

impl std::fmt::Display for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Next::EncryptChunk => "a chunk to encrypt",
            Next::EncryptFinish => "the end of encryption",
            Next::DecryptCheck => "a chunk to check",
            Next::DecryptRead => "a chunk to decrypt",
        })
    }
}

impl Stage {
    /// What comes next, and at which offset.
    fn next(&self) -> (Next, u64) {
        match self {
            Stage::Sealing(s) if s.pieces().is_complete() => {
                (Next::EncryptFinish, s.pieces().next_offset())
            }
            Stage::Sealing(s) => (Next::EncryptChunk, s.pieces().next_offset()),
            Stage::Verifying(v) => (Next::DecryptCheck, v.pieces().next_offset()),
            Stage::Opening(o) => (Next::DecryptRead, o.pieces().next_offset()),
        }
    }
}

struct Transfer {
    /// `None` only while the verifier turns into the opener.
    stage: Option<Stage>,
    last_used: Instant,
    _slot: Slot,
    _watchdog: AbortOnDrop,
}

/// The transfers of one connection. Dropped with the connection, and every transfer with it.
#[derive(Default)]
pub struct Transfers {
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    transfers: HashMap<u64, Arc<Mutex<Transfer>>>,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers")
            .field("open", &lock(&self.open).transfers.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A transfer begun to encrypt a file. `Debug` leaves out the key (the fragment and link).
pub struct EncryptStart {
    /// The transfer's id on this connection.
    pub transfer: u64,
    /// Bytes of plaintext per chunk.
    pub chunk_len: usize,
    /// What the client uploads: the plaintext's length plus the tag.
    pub upload_size: u64,
    /// The key: the link's fragment (IV then key, hex).
    pub fragment: Zeroizing<String>,
    /// The link to send, when the upload URL was given.
    pub link: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for EncryptStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptStart")
            .field("transfer", &self.transfer)
            .field("chunk_len", &self.chunk_len)
            .field("upload_size", &self.upload_size)
            .finish_non_exhaustive()
    }
}

/// A transfer begun to decrypt a downloaded file.
#[derive(Debug)]
pub struct DecryptStart {
    /// The transfer's id on this connection.
    pub transfer: u64,
    /// Bytes of the downloaded file per chunk.
    pub chunk_len: usize,
    /// The plaintext's length: the file's less the tag.
    pub plaintext_size: u64,
}

/// Where the key of a file to decrypt comes from. Both forms carry the file's key, so `Debug`
/// names the form only.
pub enum KeySource<'a> {
    /// An `aesgcm://` link.
    Link(&'a str),
    /// A link's fragment alone (IV then key, hex): for links that are not `aesgcm://`.
    Fragment(&'a str),
}

impl std::fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Link(_) => f.write_str("Link(<redacted>)"),
            KeySource::Fragment(_) => f.write_str("Fragment(<redacted>)"),
        }
    }
}

/// A chunk checked in the first pass of decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The next chunk's offset (bytes checked so far).
    pub offset: u64,
    /// Whether the whole file arrived and authenticated: read it now.
    pub verified: bool,
}

/// A chunk decrypted in the second pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Plaintext bytes at the start of the chunk's buffer.
    pub plaintext_len: usize,
    /// The next chunk's offset.
    pub offset: u64,
    /// Whether this was the last chunk (the transfer is over).
    pub done: bool,
}

impl Transfers {
    /// Starts encrypting a file of `size` bytes under a fresh key; with the upload's HTTPS URL,
    /// also gives the link to send.
    pub fn begin_encrypt(
        &self,
        slots: &TransferSlots,
        size: u64,
        url: Option<&str>,
    ) -> Result<EncryptStart, EncryptBeginError> {
        let key = MediaKey::generate(&mut rand::rngs::OsRng);
        let fragment = key.fragment();
        let link = url
            .map(|u| AesgcmLink::for_upload(u, key.clone()).map(|l| l.to_link()))
            .transpose()?;
        let slot = slots.take(size)?;
        let sealer =
            MediaSealer::new(&key, size, slots.chunk_len).map_err(|_| LimitError::TooLarge {
                size,
                max: MAX_PLAINTEXT_LEN,
            })?;
        let transfer = self.insert(Stage::Sealing(sealer), slot, slots)?;
        Ok(EncryptStart {
            transfer,
            chunk_len: slots.chunk_len(),
            upload_size: size + TAG_LEN as u64,
            fragment,
            link,
        })
    }

    /// Starts decrypting a downloaded file of `size` bytes (ciphertext and tag).
    pub fn begin_decrypt(
        &self,
        slots: &TransferSlots,
        key: KeySource<'_>,
        size: u64,
    ) -> Result<DecryptStart, DecryptBeginError> {
        let key = match key {
            KeySource::Link(l) => AesgcmLink::parse(l)?.into_key(),
            KeySource::Fragment(f) => MediaKey::from_fragment(f)?,
        };
        let plaintext_size = size
            .checked_sub(TAG_LEN as u64)
            .ok_or(DecryptBeginError::Truncated { size })?;
        let slot = slots.take(plaintext_size)?;
        let verifier = MediaVerifier::new(&key, size, slots.chunk_len).map_err(|e| match e {
            MediaError::Truncated { .. } => DecryptBeginError::Truncated { size },
            _ => DecryptBeginError::Limit(LimitError::TooLarge {
                size: plaintext_size,
                max: MAX_PLAINTEXT_LEN,
            }),
        })?;
        let transfer = self.insert(Stage::Verifying(verifier), slot, slots)?;
        Ok(DecryptStart {
            transfer,
            chunk_len: slots.chunk_len(),
            plaintext_size,
        })
    }

    fn insert(&self, stage: Stage, slot: Slot, slots: &TransferSlots) -> Result<u64, LimitError> {
        let mut open = lock(&self.open);
        let max = slots.limits.max_transfers_per_connection;
        if open.transfers.len() >= max {
            return Err(LimitError::TooManyOnConnection { max });
        }
        open.next_id += 1;
        let id = open.next_id;
        let watchdog = watch_idle(Arc::downgrade(&self.open), id, slots.idle);
        let transfer = Transfer {
            stage: Some(stage),
            last_used: Instant::now(),
            _slot: slot,
            _watchdog: watchdog,
        };
        open.transfers.insert(id, Arc::new(Mutex::new(transfer)));
        Ok(id)
    }

    /// Runs `step` on transfer `id` (one call at a time); ends the transfer when `step` says so.
    fn with<T, E>(
        &self,
        id: u64,
        step: impl FnOnce(&mut Option<Stage>) -> Result<(T, bool), E>,
    ) -> Result<T, E>
    where
        E: From<ChunkError>,
    {
        let transfer = lock(&self.open)
            .transfers
            .get(&id)
            .cloned()
            .ok_or(ChunkError::UnknownTransfer { transfer: id })?;
        let (result, end) = {
            let mut t = match transfer.try_lock() {
                Ok(t) => t,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    return Err(ChunkError::Busy { transfer: id }.into())
                }
            };
            t.last_used = Instant::now();
            match step(&mut t.stage) {
                Ok((value, end)) => (Ok(value), end || t.stage.is_none()),
                Err(e) => (Err(e), t.stage.is_none()),
            }
        };
        if end {
            lock(&self.open).transfers.remove(&id);
        }
        result
    }

    /// Encrypts the chunk at `offset` in place; the next offset.
    pub fn seal(&self, id: u64, offset: u64, chunk: &mut [u8]) -> Result<u64, ChunkError> {
        self.with(id, |stage| match stage {
            Some(Stage::Sealing(s)) if !s.pieces().is_complete() => {
                let sealed = s.seal(offset, chunk);
                let next = s.pieces().next_offset();
                sealed.map_err(|e| chunk_error(id, e, offset, (Next::EncryptChunk, next)))?;
                Ok((next, false))
            }
            other => Err(out_of_order(id, other.as_ref())),
        })
    }

    /// The tag that ends an encrypted file; ends the transfer.
    pub fn finish(&self, id: u64) -> Result<[u8; TAG_LEN], ChunkError> {
        self.with(id, |stage| match stage.take() {
            Some(Stage::Sealing(s)) if s.pieces().is_complete() => {
                let next = (Next::EncryptChunk, s.pieces().next_offset());
                let tag = s.finish().map_err(|e| chunk_error(id, e, 0, next))?;
                Ok((tag, true))
            }
            other => {
                let e = out_of_order(id, other.as_ref());
                *stage = other;
                Err(e)
            }
        })
    }

    /// Checks the chunk at `offset` of a downloaded file; after the last one, the tag. A file
    /// that does not authenticate ends the transfer.
    pub fn check(&self, id: u64, offset: u64, chunk: &[u8]) -> Result<Checked, CheckError> {
        self.with(id, |stage| {
            let Some(Stage::Verifying(v)) = stage else {
                return Err(out_of_order(id, stage.as_ref()).into());
            };
            let checked = v.update(offset, chunk);
            let next = v.pieces().next_offset();
            checked.map_err(|e| chunk_error(id, e, offset, (Next::DecryptCheck, next)))?;
            let offset = next;
            if !v.pieces().is_complete() {
                return Ok((
                    Checked {
                        offset,
                        verified: false,
                    },
                    false,
                ));
            }
            let Some(Stage::Verifying(v)) = stage.take() else {
                return Err(out_of_order(id, None).into());
            };
            let opener = v.verify().map_err(|_| CheckError::AuthenticationFailed)?;
            *stage = Some(Stage::Opening(opener));
            Ok((
                Checked {
                    offset,
                    verified: true,
                },
                false,
            ))
        })
    }

    /// Decrypts in place the chunk at `offset` of a file that authenticated, if it is the chunk
    /// checked there; after the last one the transfer ends.
    pub fn open(&self, id: u64, offset: u64, chunk: &mut [u8]) -> Result<Opened, OpenError> {
        self.with(id, |stage| {
            let Some(Stage::Opening(o)) = stage else {
                return Err(out_of_order(id, stage.as_ref()).into());
            };
            match o.open(offset, chunk) {
                Ok(plaintext_len) => {
                    let done = o.pieces().is_complete();
                    let opened = Opened {
                        plaintext_len,
                        offset: o.pieces().next_offset(),
                        done,
                    };
                    Ok((opened, done))
                }
                Err(MediaError::Changed { offset }) => {
                    *stage = None;
                    Err(OpenError::Changed { offset })
                }
                Err(e) => {
                    let next = (Next::DecryptRead, o.pieces().next_offset());
                    Err(chunk_error(id, e, offset, next).into())
                }
            }
        })
    }

    /// Ends a transfer.
    pub fn cancel(&self, id: u64) -> Result<(), CancelError> {
        match lock(&self.open).transfers.remove(&id) {
            Some(_) => Ok(()),
            None => Err(CancelError::UnknownTransfer { transfer: id }),
        }
    }
}

/// Drops transfer `id` once it has had no call for `idle`; the task ends with the transfer.
fn watch_idle(open: Weak<Mutex<Open>>, id: u64, idle: Duration) -> AbortOnDrop {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return AbortOnDrop(None);
    };
    let task = runtime.spawn(async move {
        let mut wait = idle;
        loop {
            tokio::time::sleep(wait).await;
            let Some(open) = open.upgrade() else { return };
            let mut open = lock(&open);
            let Some(transfer) = open.transfers.get(&id) else {
                return;
            };
            // A transfer in a call is not idle.
            let quiet = match transfer.try_lock() {
                Ok(t) => t.last_used.elapsed(),
                Err(_) => Duration::ZERO,
            };
            if quiet >= idle {
                tracing::info!(
                    transfer = id,
                    idle_s = idle.as_secs(),
                    "file transfer dropped: no call within the idle timeout"
                );
                // Dropping it aborts this task: leave first.
                let dropped = open.transfers.remove(&id);
                drop(open);
                drop(dropped);
                return;
            }
            wait = idle - quiet;
        }
    });
    AbortOnDrop(Some(task.abort_handle()))
}

/// A piece error of protocol-core as the chunk error the client sees; `expects` is what the
/// transfer takes next, and where.
fn chunk_error(id: u64, e: MediaError, offset: u64, expects: (Next, u64)) -> ChunkError {
    let (next, next_offset) = expects;
    match e {
        MediaError::PieceLength { expected, got } => ChunkError::Length {
            offset,
            expected,
            got,
        },
        // Chunks cannot meet the others (lengths are checked when a transfer begins, the tag
        // and a changed chunk have errors of their own): they say what the transfer expects.
        MediaError::Offset { .. }
        | MediaError::Incomplete { .. }
        | MediaError::Truncated { .. }
        | MediaError::TooLong { .. }
        | MediaError::TagMismatch
        | MediaError::Changed { .. } => ChunkError::OutOfOrder {
            transfer: id,
            next,
            offset: next_offset,
        },
    }
}

/// The transfer is not at the stage the call is for.
fn out_of_order(id: u64, stage: Option<&Stage>) -> ChunkError {
    match stage.map(Stage::next) {
        Some((next, offset)) => ChunkError::OutOfOrder {
            transfer: id,
            next,
            offset,
        },
        None => ChunkError::UnknownTransfer { transfer: id },
    }
}

/// A transfer refused by a bound.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The file is larger than `--max-file-bytes` (or than GCM allows).
    #[error("a file of {size} bytes is larger than the {max} bytes this daemon takes (--max-file-bytes)")]
    TooLarge {
        /// The plaintext's length.
        size: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The connection has `--max-file-transfers-per-connection` transfers open.
    #[error("this connection has {max} file transfers open already; finish or cancel one")]
    TooManyOnConnection {
        /// The limit.
        max: usize,
    },
    /// The daemon has `--max-file-transfers` transfers open.
    #[error("the daemon has {max} file transfers open already; try again later")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

impl LimitError {
    /// Always a limit of the daemon's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Policy
    }
}

/// Why `file.encrypt.begin` failed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptBeginError {
    /// The upload URL cannot become a link.
    #[error(transparent)]
    Url(#[from] AesgcmLinkError),
    /// A bound refused it.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl EncryptBeginError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            EncryptBeginError::Url(e) => e.cause(),
            EncryptBeginError::Limit(e) => e.cause(),
        }
    }
}

/// Why `file.decrypt.begin` failed.
#[derive(Debug, thiserror::Error)]
pub enum DecryptBeginError {
    /// The link or fragment is malformed.
    #[error(transparent)]
    Link(#[from] AesgcmLinkError),
    /// The file is shorter than its tag.
    #[error("a file of {size} bytes is shorter than its {TAG_LEN}-byte tag: it was cut off")]
    Truncated {
        /// The file's length.
        size: u64,
    },
    /// A bound refused it.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl DecryptBeginError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            DecryptBeginError::Link(e) => e.cause(),
            DecryptBeginError::Truncated { .. } => ErrorCause::PeerMisbehaved,
            DecryptBeginError::Limit(e) => e.cause(),
        }
    }
}

/// Why a chunk (or `file.encrypt.finish`) was refused. The transfer stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// No such transfer on this connection.
    #[error("no file transfer {transfer} on this connection (it ended, was cancelled or idle too long, or never began)")]
    UnknownTransfer {
        /// The id given.
        transfer: u64,
    },
    /// The transfer expects something else next.
    #[error("file transfer {transfer} expects {next} at offset {offset} next")]
    OutOfOrder {
        /// The transfer.
        transfer: u64,
        /// What it expects.
        next: Next,
        /// At which offset.
        offset: u64,
    },
    /// Another call on the same transfer is running.
    #[error("file transfer {transfer} is busy with another call: send one chunk at a time")]
    Busy {
        /// The transfer.
        transfer: u64,
    },
    /// A chunk of the wrong length: every chunk has `chunk_size` bytes but the last.
    #[error("a chunk of {got} bytes at offset {offset}, where the transfer expects {expected}")]
    Length {
        /// The chunk's offset.
        offset: u64,
        /// Its expected length.
        expected: usize,
        /// Its length.
        got: usize,
    },
}

impl ChunkError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// Why `file.decrypt.check` failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The chunk was refused.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The whole file arrived and its tag does not match (a wrong key, a file cut off or
    /// altered); the transfer ended.
    #[error("the file does not authenticate: wrong key, or the file was cut off or altered")]
    AuthenticationFailed,
}

impl CheckError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            CheckError::Chunk(e) => e.cause(),
            CheckError::AuthenticationFailed => ErrorCause::PeerMisbehaved,
        }
    }
}

/// Why `file.decrypt.read` failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The chunk was refused.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The chunk differs from the one checked at its offset (the file changed between the two
    /// passes); nothing of it was decrypted and the transfer ended.
    #[error("the chunk at offset {offset} differs from the one checked there; the transfer ended")]
    Changed {
        /// The chunk's offset.
        offset: u64,
    },
}

impl OpenError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

/// Why `file.cancel` failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such transfer on this connection.
    #[error("no file transfer {transfer} on this connection")]
    UnknownTransfer {
        /// The id given.
        transfer: u64,
    },
}

impl CancelError {
    /// Always the request's.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::Request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(limits: FileLimits) -> TransferSlots {
        TransferSlots::new(limits, 100)
    }

    fn encrypt(t: &Transfers, slots: &TransferSlots, plain: &[u8]) -> (String, Vec<u8>) {
        let start = t.begin_encrypt(slots, plain.len() as u64, None).unwrap();
        let mut out = Vec::new();
        for (i, c) in plain.chunks(start.chunk_len).enumerate() {
            let mut buf = c.to_vec();
            t.seal(start.transfer, (i * start.chunk_len) as u64, &mut buf)
                .unwrap();
            out.extend_from_slice(&buf);
        }
        out.extend_from_slice(&t.finish(start.transfer).unwrap());
        (start.fragment.to_string(), out)
    }

    #[test]
    fn a_key_source_never_shows_its_key_in_debug() {
        let link = "aesgcm://h.example/f#00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677";
        assert_eq!(format!("{:?}", KeySource::Link(link)), "Link(<redacted>)");
        assert!(!format!("{:?}", KeySource::Fragment("0011aabb")).contains("0011"));
    }

    #[test]
    fn a_file_round_trips_and_its_transfers_end() {
        let s = slots(FileLimits::default());
        let t = Transfers::default();
        let plain: Vec<u8> = (0..1234u32).map(|i| i as u8).collect();
        let (fragment, file) = encrypt(&t, &s, &plain);
        assert_eq!(file.len(), plain.len() + TAG_LEN);
        let start = t
            .begin_decrypt(&s, KeySource::Fragment(&fragment), file.len() as u64)
            .unwrap();
        assert_eq!(start.plaintext_size, plain.len() as u64);
        let id = start.transfer;
        let mut verified = false;
        for (i, c) in file.chunks(100).enumerate() {
            // Nothing to read before the whole file checked.
            let mut early = c.to_vec();
            assert!(matches!(
                t.open(id, (i * 100) as u64, &mut early),
                Err(OpenError::Chunk(ChunkError::OutOfOrder {
                    next: Next::DecryptCheck,
                    ..
                }))
            ));
            verified = t.check(id, (i * 100) as u64, c).unwrap().verified;
        }
        assert!(verified);
        let mut out = Vec::new();
        for (i, c) in file.chunks(100).enumerate() {
            let mut buf = c.to_vec();
            let o = t.open(id, (i * 100) as u64, &mut buf).unwrap();
            out.extend_from_slice(&buf[..o.plaintext_len]);
        }
        assert_eq!(out, plain);
        assert_eq!(s.open(), 0, "both transfers ended");
        assert!(matches!(
            t.cancel(id),
            Err(CancelError::UnknownTransfer { .. })
        ));
    }

    #[test]
    fn a_bad_file_ends_its_transfer_with_a_typed_error() {
        let s = slots(FileLimits::default());
        let t = Transfers::default();
        let (fragment, mut file) = encrypt(&t, &s, &[7; 250]);
        file[3] ^= 1;
        let id = t
            .begin_decrypt(&s, KeySource::Fragment(&fragment), file.len() as u64)
            .unwrap()
            .transfer;
        let mut last = None;
        for (i, c) in file.chunks(100).enumerate() {
            last = Some(t.check(id, (i * 100) as u64, c));
        }
        assert!(matches!(last, Some(Err(CheckError::AuthenticationFailed))));
        assert_eq!(s.open(), 0);
        assert!(matches!(
            t.begin_decrypt(&s, KeySource::Fragment(&fragment), 15),
            Err(DecryptBeginError::Truncated { size: 15 })
        ));
        assert!(matches!(
            t.begin_decrypt(&s, KeySource::Link("https://h/f#00"), 100),
            Err(DecryptBeginError::Link(AesgcmLinkError::WrongScheme))
        ));
    }

    #[test]
    fn bounds_hold_per_connection_and_in_total() {
        let s = slots(FileLimits {
            max_file_bytes: 1000,
            max_transfers: 3,
            max_transfers_per_connection: 2,
            ..FileLimits::default()
        });
        let (a, b) = (Transfers::default(), Transfers::default());
        assert!(matches!(
            a.begin_encrypt(&s, 1001, None),
            Err(EncryptBeginError::Limit(LimitError::TooLarge {
                size: 1001,
                max: 1000
            }))
        ));
        let first = a.begin_encrypt(&s, 1000, None).unwrap().transfer;
        a.begin_encrypt(&s, 1, None).unwrap();
        assert!(matches!(
            a.begin_encrypt(&s, 1, None),
            Err(EncryptBeginError::Limit(LimitError::TooManyOnConnection {
                max: 2
            }))
        ));
        b.begin_encrypt(&s, 1, None).unwrap();
        assert!(matches!(
            b.begin_encrypt(&s, 1, None),
            Err(EncryptBeginError::Limit(LimitError::TooMany { max: 3 }))
        ));
        a.cancel(first).unwrap();
        b.begin_encrypt(&s, 1, None).unwrap();
        drop(b);
        assert_eq!(s.open(), 1, "a connection's transfers end with it");
    }

    #[tokio::test]
    async fn an_idle_transfer_is_dropped() {
        let mut s = slots(FileLimits::default());
        s.idle = Duration::from_millis(500);
        let t = Transfers::default();
        let id = t.begin_encrypt(&s, 300, None).unwrap().transfer;
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.seal(id, 0, &mut [0; 100]).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(s.open(), 1, "a call keeps it");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(s.open(), 0);
        assert!(matches!(
            t.seal(id, 100, &mut [0; 100]),
            Err(ChunkError::UnknownTransfer { .. })
        ));
    }
}
