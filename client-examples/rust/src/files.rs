//! Files of XEP-0454 media sharing (`aesgcm://` links) through omemod: the typed `file.*` calls
//! of [`crate::Client`], and whole-file helpers on the blocking client
//! ([`crate::blocking::Client::encrypt_file`], [`crate::blocking::Client::decrypt_file`]).
//!
//! Chunks travel as base64. Decryption reads the downloaded file twice: omemod first checks the
//! tag of the whole file and only then answers plaintext, for the same chunks sent again.

use std::io::{Read, Seek, SeekFrom, Write};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::Error;

/// `file.encrypt.begin`'s answer: how to send the file, and its key.
#[derive(Clone, Deserialize)]
pub struct EncryptTransfer {
    /// The transfer's id on this connection.
    pub transfer: u64,
    /// Bytes of plaintext per chunk (the last one shorter).
    pub chunk_size: usize,
    /// What to upload (and ask the XEP-0363 slot for): the file plus the 16-byte tag.
    pub upload_size: u64,
    /// The key as the link's fragment (IV then key, hex). Secret.
    pub fragment: String,
    /// The `aesgcm://` link, when the upload URL was given. Secret.
    #[serde(default)]
    pub link: Option<String>,
}

impl std::fmt::Debug for EncryptTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptTransfer")
            .field("transfer", &self.transfer)
            .field("chunk_size", &self.chunk_size)
            .field("upload_size", &self.upload_size)
            .finish_non_exhaustive()
    }
}

/// `file.decrypt.begin`'s answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DecryptTransfer {
    /// The transfer's id on this connection.
    pub transfer: u64,
    /// Bytes of the downloaded file per chunk (the last one shorter).
    pub chunk_size: usize,
    /// The plaintext's length.
    pub plaintext_size: u64,
}

/// The key of a file to decrypt.
#[derive(Clone, Copy)]
pub enum FileKey<'a> {
    /// An `aesgcm://` link.
    Link(&'a str),
    /// A link's fragment alone (IV then key, hex), e.g. of an `https://…#…` link.
    Fragment(&'a str),
}

impl std::fmt::Debug for FileKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKey::Link(_) => "FileKey::Link(..)",
            FileKey::Fragment(_) => "FileKey::Fragment(..)",
        })
    }
}

impl<'a> FileKey<'a> {
    /// A link (anything with `://`) or else a fragment; a whole `http(s)://…#fragment` link
    /// gives its fragment.
    pub fn guess(s: &'a str) -> FileKey<'a> {
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        match s.split_once('#') {
            Some((_, fragment))
                if lower.starts_with("http://") || lower.starts_with("https://") =>
            {
                FileKey::Fragment(fragment)
            }
            _ if s.contains("://") => FileKey::Link(s),
            _ => FileKey::Fragment(s),
        }
    }
}

/// What the file helpers report while they work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Encrypting: `done` of `total` plaintext bytes.
    Encrypting,
    /// Decrypting, first pass: `done` of `total` downloaded bytes checked.
    Checking,
    /// Decrypting, second pass: `done` of `total` downloaded bytes decrypted.
    Decrypting,
}

/// Progress of a file helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What it does.
    pub stage: Stage,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// A file encrypted by [`crate::blocking::Client::encrypt_file`].
#[derive(Clone)]
pub struct EncryptedFile {
    /// Bytes written (the upload's size).
    pub upload_size: u64,
    /// The key as the link's fragment. Secret.
    pub fragment: String,
    /// The `aesgcm://` link, when the upload URL was given. Secret.
    pub link: Option<String>,
}

impl std::fmt::Debug for EncryptedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedFile")
            .field("upload_size", &self.upload_size)
            .finish_non_exhaustive()
    }
}

fn b64_field(v: &serde_json::Value, method: &str, field: &str) -> Result<Vec<u8>, Error> {
    v[field]
        .as_str()
        .and_then(|s| BASE64.decode(s).ok())
        .ok_or_else(|| Error::Protocol(format!("{method}: no base64 `{field}` in {v}")))
}

impl crate::Client {
    /// `file.link.parse`: the HTTPS URL to download an `aesgcm://` link's file from.
    pub async fn file_link(&self, link: &str) -> Result<String, Error> {
        let v = self.call("file.link.parse", json!({"link": link})).await?;
        v["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol(format!("file.link.parse: {v}")))
    }

    /// `file.encrypt.begin`: a transfer for a file of `size` bytes, under a fresh key; with
    /// the upload slot's HTTPS `url`, the link too.
    pub async fn file_encrypt_begin(
        &self,
        size: u64,
        url: Option<&str>,
    ) -> Result<EncryptTransfer, Error> {
        let mut p = json!({ "size": size });
        if let Some(url) = url {
            p["url"] = json!(url);
        }
        self.call_as("file.encrypt.begin", p).await
    }

    /// A chunk call: `method` with the chunk at `offset` of `transfer`.
    async fn file_chunk(
        &self,
        method: &str,
        transfer: u64,
        offset: u64,
        chunk: &[u8],
    ) -> Result<serde_json::Value, Error> {
        let p = json!({"transfer": transfer, "offset": offset, "data": BASE64.encode(chunk)});
        self.call(method, p).await
    }

    /// `file.encrypt.chunk`: the ciphertext of the chunk at `offset`.
    pub async fn file_encrypt_chunk(
        &self,
        transfer: u64,
        offset: u64,
        chunk: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let method = "file.encrypt.chunk";
        let v = self.file_chunk(method, transfer, offset, chunk).await?;
        b64_field(&v, method, "data")
    }

    /// `file.encrypt.finish`: the tag to append; the transfer ends.
    pub async fn file_encrypt_finish(&self, transfer: u64) -> Result<Vec<u8>, Error> {
        let v = self
            .call("file.encrypt.finish", json!({ "transfer": transfer }))
            .await?;
        b64_field(&v, "file.encrypt.finish", "tag")
    }

    /// `file.decrypt.begin`: a transfer for a downloaded file of `size` bytes.
    pub async fn file_decrypt_begin(
        &self,
        key: FileKey<'_>,
        size: u64,
    ) -> Result<DecryptTransfer, Error> {
        let p = match key {
            FileKey::Link(link) => json!({"link": link, "size": size}),
            FileKey::Fragment(fragment) => json!({"fragment": fragment, "size": size}),
        };
        self.call_as("file.decrypt.begin", p).await
    }

    /// `file.decrypt.check`: whether the file verified (after its last chunk).
    pub async fn file_decrypt_check(
        &self,
        transfer: u64,
        offset: u64,
        chunk: &[u8],
    ) -> Result<bool, Error> {
        let method = "file.decrypt.check";
        let v = self.file_chunk(method, transfer, offset, chunk).await?;
        v["verified"]
            .as_bool()
            .ok_or_else(|| Error::Protocol(format!("file.decrypt.check: {v}")))
    }

    /// `file.decrypt.read`: the plaintext of the chunk at `offset`, after verification.
    pub async fn file_decrypt_read(
        &self,
        transfer: u64,
        offset: u64,
        chunk: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let method = "file.decrypt.read";
        let v = self.file_chunk(method, transfer, offset, chunk).await?;
        b64_field(&v, method, "data")
    }

    /// `file.cancel`: ends a transfer early.
    pub async fn file_cancel(&self, transfer: u64) -> Result<(), Error> {
        self.call("file.cancel", json!({ "transfer": transfer }))
            .await
            .map(drop)
    }
}

/// Reads `size` bytes of `input` in chunks of `chunk_size` (the last one shorter) and hands each
/// to `each` with its offset, then reports the progress of `stage`. A shorter input is an error.
fn each_chunk(
    input: &mut impl Read,
    size: u64,
    chunk_size: usize,
    stage: Stage,
    progress: &mut dyn FnMut(Progress),
    mut each: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; chunk_size];
    let mut offset = 0;
    while offset < size {
        let n = usize::try_from(size - offset).map_or(chunk_size, |n| n.min(chunk_size));
        input
            .read_exact(&mut buf[..n])
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::Io(std::io::Error::new(
                    e.kind(),
                    "the input ended before its announced size",
                )),
                _ => Error::Io(e),
            })?;
        each(offset, &buf[..n])?;
        offset += n as u64;
        progress(Progress {
            stage,
            done: offset,
            total: size,
        });
    }
    Ok(())
}

impl crate::blocking::Client {
    /// Encrypts `size` bytes of `input` into `output` (what to upload: `size` + 16 bytes). With
    /// the upload slot's HTTPS `url`, the answer has the link to send.
    pub fn encrypt_file(
        &self,
        input: &mut impl Read,
        size: u64,
        output: &mut impl Write,
        url: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<EncryptedFile, Error> {
        let c = self.get_ref();
        let t = self.block_on(c.file_encrypt_begin(size, url))?;
        let run = (|| -> Result<(), Error> {
            each_chunk(
                input,
                size,
                t.chunk_size,
                Stage::Encrypting,
                progress,
                |offset, chunk| {
                    let sealed = self.block_on(c.file_encrypt_chunk(t.transfer, offset, chunk))?;
                    Ok(output.write_all(&sealed)?)
                },
            )?;
            let tag = self.block_on(c.file_encrypt_finish(t.transfer))?;
            output.write_all(&tag)?;
            output.flush()?;
            Ok(())
        })();
        if let Err(e) = run {
            let _ = self.block_on(c.file_cancel(t.transfer));
            return Err(e);
        }
        Ok(EncryptedFile {
            upload_size: t.upload_size,
            fragment: t.fragment.clone(),
            link: t.link.clone(),
        })
    }

    /// Decrypts a downloaded file (`input`, read twice) into `output`; the plaintext's length.
    /// Nothing is written before the whole file authenticated, but a failure in the second pass
    /// (the input changed, the connection broke) leaves part of it written: write to a place
    /// that is discarded on error.
    pub fn decrypt_file(
        &self,
        key: FileKey<'_>,
        input: &mut (impl Read + Seek),
        output: &mut impl Write,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<u64, Error> {
        let c = self.get_ref();
        let size = input.seek(SeekFrom::End(0))?;
        input.seek(SeekFrom::Start(0))?;
        let t = self.block_on(c.file_decrypt_begin(key, size))?;
        let run = (|| -> Result<(), Error> {
            input.seek(SeekFrom::Start(0))?;
            each_chunk(
                input,
                size,
                t.chunk_size,
                Stage::Checking,
                progress,
                |offset, chunk| {
                    self.block_on(c.file_decrypt_check(t.transfer, offset, chunk))
                        .map(drop)
                },
            )?;
            input.seek(SeekFrom::Start(0))?;
            each_chunk(
                input,
                size,
                t.chunk_size,
                Stage::Decrypting,
                progress,
                |offset, chunk| {
                    let plain = self.block_on(c.file_decrypt_read(t.transfer, offset, chunk))?;
                    Ok(output.write_all(&plain)?)
                },
            )?;
            output.flush()?;
            Ok(())
        })();
        if let Err(e) = run {
            // The transfer may have ended already (a failed tag ends it); nothing to report.
            let _ = self.block_on(c.file_cancel(t.transfer));
            return Err(e);
        }
        Ok(t.plaintext_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart() {
        let f = "ab".repeat(44);
        assert!(matches!(FileKey::guess(&f), FileKey::Fragment(x) if x == f));
        let link = format!("aesgcm://h/f#{f}");
        assert!(matches!(FileKey::guess(&link), FileKey::Link(x) if x == link));
        let http = format!("http://h/f#{f}");
        assert!(matches!(FileKey::guess(&http), FileKey::Fragment(x) if x == f));
        assert_eq!(format!("{:?}", FileKey::guess(&link)), "FileKey::Link(..)");
    }
}
