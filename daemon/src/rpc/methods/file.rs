//! `file.*`: files of XEP-0454 media sharing, encrypted for upload and decrypted after download,
//! in chunks of base64 over the connection (docs/rpc.md "Files" says why chunks and not file
//! descriptors). The transfers live in [`crate::media`]; this layer decodes and encodes the chunks
//! off the runtime thread.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use protocol_core::media::{AesgcmLink, AesgcmLinkError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::media::{
    CancelError, CheckError, ChunkError, DecryptBeginError, EncryptBeginError, KeySource, OpenError,
};
use crate::rpc::ctx::{Conn, Ctx};
use crate::rpc::error::{CallError, MethodError};
use crate::rpc::registry::Method;

/// Runs a chunk's work (base64 and AES) on the blocking pool when the chunk is large.
async fn off_thread<T: Send + 'static, E: MethodError>(
    len: usize,
    work: impl FnOnce() -> Result<T, CallError<E>> + Send + 'static,
) -> Result<T, CallError<E>> {
    crate::bounds::parse_off_thread(len, work)
        .await
        .unwrap_or_else(|| Err(CallError::Internal("a file chunk's work failed".to_owned())))
}

fn decode<E>(data: &str) -> Result<Vec<u8>, CallError<E>> {
    BASE64
        .decode(data)
        .map_err(|_| CallError::InvalidParams("`data` is not base64 (RFC 4648, padded)".to_owned()))
}

/// `file.link.parse`.
pub struct FileLinkParse;

/// Params of `file.link.parse`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileLinkParams {
    /// An `aesgcm://` link from a message body.
    pub link: String,
}

/// Result of `file.link.parse`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileLinkResult {
    /// Where to download the encrypted file: the link with `https` and no fragment.
    pub url: String,
}

impl Method for FileLinkParse {
    const NAME: &'static str = "file.link.parse";
    const SUMMARY: &'static str =
        "Checks an aesgcm:// link (XEP-0454) and gives the HTTPS URL to download.";
    type Params = FileLinkParams;
    type Result = FileLinkResult;
    type Error = AesgcmLinkError;

    async fn call(
        _ctx: Arc<Ctx>,
        _conn: Conn,
        p: FileLinkParams,
    ) -> Result<FileLinkResult, CallError<AesgcmLinkError>> {
        let link = AesgcmLink::parse(&p.link)?;
        Ok(FileLinkResult {
            url: link.https_url(),
        })
    }
}

/// `file.encrypt.begin`.
pub struct FileEncryptBegin;

/// Params of `file.encrypt.begin`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEncryptBeginParams {
    /// The file's length in bytes.
    pub size: u64,
    /// The upload slot's HTTPS GET URL (XEP-0363), when known: the answer then has the link.
    #[serde(default)]
    pub url: Option<String>,
}

/// Result of `file.encrypt.begin`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEncryptBeginResult {
    /// The transfer's id on this connection.
    pub transfer: u64,
    /// Bytes of plaintext per `file.encrypt.chunk` (the last chunk is shorter).
    pub chunk_size: usize,
    /// What to upload: `size` + 16 (the tag). Ask the upload slot for this size.
    pub upload_size: u64,
    /// The key as the link's fragment: IV then key, hex (88 characters). Secret.
    pub fragment: String,
    /// The `aesgcm://` link to send once uploaded (when `url` was given). Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Method for FileEncryptBegin {
    const NAME: &'static str = "file.encrypt.begin";
    const SUMMARY: &'static str =
        "Starts encrypting a file for upload (XEP-0454): a fresh key, the upload size, the link.";
    const DESCRIPTION: &'static str = "Then send the file in chunks of chunk_size bytes to \
        file.encrypt.chunk and upload each answer's data in order, then upload the tag of \
        file.encrypt.finish. The transfer belongs to this connection.";
    type Params = FileEncryptBeginParams;
    type Result = FileEncryptBeginResult;
    type Error = EncryptBeginError;

    async fn call(
        ctx: Arc<Ctx>,
        conn: Conn,
        p: FileEncryptBeginParams,
    ) -> Result<FileEncryptBeginResult, CallError<EncryptBeginError>> {
        let start = conn
            .transfers()
            .begin_encrypt(&ctx.files, p.size, p.url.as_deref())?;
        Ok(FileEncryptBeginResult {
            transfer: start.transfer,
            chunk_size: start.chunk_len,
            upload_size: start.upload_size,
            fragment: start.fragment.to_string(),
            link: start.link.map(|l| l.to_string()),
        })
    }
}

/// Params of a call that names a transfer only.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferParams {
    /// The transfer's id.
    pub transfer: u64,
}

/// Params of a chunk.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChunkParams {
    /// The transfer's id.
    pub transfer: u64,
    /// The chunk's offset in the file: the previous answer's `offset` (0 first).
    pub offset: u64,
    /// The chunk, base64: `chunk_size` bytes, fewer for the last one.
    pub data: String,
}

/// `file.encrypt.chunk`.
pub struct FileEncryptChunk;

/// Result of `file.encrypt.chunk` and `file.decrypt.read`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChunkResult {
    /// The chunk's ciphertext (encrypting) or plaintext (decrypting), base64.
    pub data: String,
    /// The next chunk's offset: the bytes of the file done so far.
    pub offset: u64,
}

impl Method for FileEncryptChunk {
    const NAME: &'static str = "file.encrypt.chunk";
    const SUMMARY: &'static str = "Encrypts the next chunk of a file; upload the answer's data.";
    type Params = ChunkParams;
    type Result = ChunkResult;
    type Error = ChunkError;

    async fn call(
        _ctx: Arc<Ctx>,
        conn: Conn,
        p: ChunkParams,
    ) -> Result<ChunkResult, CallError<ChunkError>> {
        off_thread(p.data.len(), move || {
            let mut chunk = decode(&p.data)?;
            let offset = conn.transfers().seal(p.transfer, p.offset, &mut chunk)?;
            Ok(ChunkResult {
                data: BASE64.encode(&chunk),
                offset,
            })
        })
        .await
    }
}

/// `file.encrypt.finish`.
pub struct FileEncryptFinish;

/// Result of `file.encrypt.finish`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEncryptFinishResult {
    /// The 16-byte tag, base64: upload it after the last chunk.
    pub tag: String,
}

impl Method for FileEncryptFinish {
    const NAME: &'static str = "file.encrypt.finish";
    const SUMMARY: &'static str =
        "Ends encrypting a file: the tag to upload last. The transfer ends.";
    type Params = TransferParams;
    type Result = FileEncryptFinishResult;
    type Error = ChunkError;

    async fn call(
        _ctx: Arc<Ctx>,
        conn: Conn,
        p: TransferParams,
    ) -> Result<FileEncryptFinishResult, CallError<ChunkError>> {
        let tag = conn.transfers().finish(p.transfer)?;
        Ok(FileEncryptFinishResult {
            tag: BASE64.encode(tag),
        })
    }
}

/// `file.decrypt.begin`.
pub struct FileDecryptBegin;

/// Params of `file.decrypt.begin`: the key as a link or as its fragment (one of the two).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDecryptBeginParams {
    /// The `aesgcm://` link.
    #[serde(default)]
    pub link: Option<String>,
    /// The link's fragment alone (IV then key, 88 or 96 hex digits), for a link of another
    /// scheme (`https://…#…` from a plain-HTTP upload service).
    #[serde(default)]
    pub fragment: Option<String>,
    /// The downloaded file's length in bytes (ciphertext and tag).
    pub size: u64,
}

/// Result of `file.decrypt.begin`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileDecryptBeginResult {
    /// The transfer's id on this connection.
    pub transfer: u64,
    /// Bytes of the downloaded file per chunk (the last chunk is shorter).
    pub chunk_size: usize,
    /// The plaintext's length: `size` − 16.
    pub plaintext_size: u64,
}

impl Method for FileDecryptBegin {
    const NAME: &'static str = "file.decrypt.begin";
    const SUMMARY: &'static str = "Starts decrypting a downloaded file given its link (XEP-0454).";
    const DESCRIPTION: &'static str = "Then send the whole file in chunks of chunk_size bytes to \
        file.decrypt.check, which checks the tag (nothing is decrypted yet), and once an answer \
        says verified, the same chunks again to file.decrypt.read, which answers the plaintext. \
        A file that does not authenticate gives none.";
    type Params = FileDecryptBeginParams;
    type Result = FileDecryptBeginResult;
    type Error = DecryptBeginError;

    async fn call(
        ctx: Arc<Ctx>,
        conn: Conn,
        p: FileDecryptBeginParams,
    ) -> Result<FileDecryptBeginResult, CallError<DecryptBeginError>> {
        let key = match (&p.link, &p.fragment) {
            (Some(link), None) => KeySource::Link(link),
            (None, Some(fragment)) => KeySource::Fragment(fragment),
            _ => {
                return Err(CallError::InvalidParams(
                    "give exactly one of `link` and `fragment`".to_owned(),
                ))
            }
        };
        let start = conn.transfers().begin_decrypt(&ctx.files, key, p.size)?;
        Ok(FileDecryptBeginResult {
            transfer: start.transfer,
            chunk_size: start.chunk_len,
            plaintext_size: start.plaintext_size,
        })
    }
}

/// `file.decrypt.check`.
pub struct FileDecryptCheck;

/// Result of `file.decrypt.check`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileDecryptCheckResult {
    /// The next chunk's offset: the bytes checked so far.
    pub offset: u64,
    /// True once the whole file arrived and authenticated: now send the same chunks to
    /// `file.decrypt.read`.
    pub verified: bool,
}

impl Method for FileDecryptCheck {
    const NAME: &'static str = "file.decrypt.check";
    const SUMMARY: &'static str =
        "First pass: checks the next chunk of a downloaded file; after the last, its tag.";
    type Params = ChunkParams;
    type Result = FileDecryptCheckResult;
    type Error = CheckError;

    async fn call(
        _ctx: Arc<Ctx>,
        conn: Conn,
        p: ChunkParams,
    ) -> Result<FileDecryptCheckResult, CallError<CheckError>> {
        off_thread(p.data.len(), move || {
            let chunk = decode(&p.data)?;
            let checked = conn.transfers().check(p.transfer, p.offset, &chunk)?;
            Ok(FileDecryptCheckResult {
                offset: checked.offset,
                verified: checked.verified,
            })
        })
        .await
    }
}

/// `file.decrypt.read`.
pub struct FileDecryptRead;

/// Result of `file.decrypt.read`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileDecryptReadResult {
    /// The chunk's plaintext, base64 (the tag's bytes at the end of the file give none).
    pub data: String,
    /// The next chunk's offset.
    pub offset: u64,
    /// True for the last chunk: the file is whole and the transfer ended.
    pub done: bool,
}

impl Method for FileDecryptRead {
    const NAME: &'static str = "file.decrypt.read";
    const SUMMARY: &'static str =
        "Second pass, after verification: the plaintext of the same chunk again.";
    type Params = ChunkParams;
    type Result = FileDecryptReadResult;
    type Error = OpenError;

    async fn call(
        _ctx: Arc<Ctx>,
        conn: Conn,
        p: ChunkParams,
    ) -> Result<FileDecryptReadResult, CallError<OpenError>> {
        off_thread(p.data.len(), move || {
            let mut chunk = Zeroizing::new(decode(&p.data)?);
            let opened = conn.transfers().open(p.transfer, p.offset, &mut chunk)?;
            Ok(FileDecryptReadResult {
                data: BASE64.encode(&chunk[..opened.plaintext_len]),
                offset: opened.offset,
                done: opened.done,
            })
        })
        .await
    }
}

/// `file.cancel`.
pub struct FileCancel;

/// Result of `file.cancel`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileCancelResult {
    /// Always true.
    pub cancelled: bool,
}

impl Method for FileCancel {
    const NAME: &'static str = "file.cancel";
    const SUMMARY: &'static str = "Ends a file transfer of this connection before its end.";
    type Params = TransferParams;
    type Result = FileCancelResult;
    type Error = CancelError;

    async fn call(
        _ctx: Arc<Ctx>,
        conn: Conn,
        p: TransferParams,
    ) -> Result<FileCancelResult, CallError<CancelError>> {
        conn.transfers().cancel(p.transfer)?;
        Ok(FileCancelResult { cancelled: true })
    }
}
