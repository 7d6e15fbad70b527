//! Where the data key comes from: a key-encryption key (KEK) from the installation's key source
//! wraps it, and the `sealing` table records the wrapped key with the source it needs. The
//! source is chosen when a database is first sealed and never changed except by `omemod rekey`:
//! a database whose recorded source is unavailable does not open (nothing falls back to another
//! source, let alone to plaintext).
//!
//! Sources, in the order a new database picks them when none is asked for:
//! - **systemd credential**: `$CREDENTIALS_DIRECTORY/omemod.key` (`LoadCredentialEncrypted=`,
//!   which can bind it to the TPM or the host key);
//! - **Secret Service**: an item of the desktop's keyring, when one runs on the session bus with
//!   its collection unlocked ([`super::secret_service`]);
//! - **key file**: a random key in a file outside the database's directory (default
//!   `$XDG_CONFIG_HOME/omemod/omemod.key`), created 0600 on first use;
//! - **passphrase** (only when asked): Argon2id with its parameters and salt recorded; the
//!   daemon starts locked.
//!
//! A credential's, keyring item's or key file's bytes become the KEK through HKDF-SHA256, so any length of at
//! least 32 bytes serves.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::DataKey;

/// The credential's name under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL: &str = "omemod.key";
/// Shortest credential or key file accepted.
const MIN_KEY_BYTES: usize = 32;

/// A key source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `$CREDENTIALS_DIRECTORY/omemod.key`.
    SystemdCredential,
    /// A passphrase typed by the user (`omemod unlock`).
    Passphrase,
    /// An item of the desktop's keyring (freedesktop Secret Service).
    SecretService,
    /// A key file outside the database's directory.
    KeyFile,
}

impl SourceKind {
    /// Every source.
    pub const ALL: [SourceKind; 4] = [
        SourceKind::SystemdCredential,
        SourceKind::Passphrase,
        SourceKind::SecretService,
        SourceKind::KeyFile,
    ];

    /// The stored (and shown) name.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::SystemdCredential => "systemd-credential",
            SourceKind::Passphrase => "passphrase",
            SourceKind::SecretService => "secret-service",
            SourceKind::KeyFile => "key-file",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the command line and the environment say about keys.
#[derive(Clone, Default)]
pub struct KeySettings {
    /// The source asked for (`--key-source`); `None`: the recorded one, or for a new database
    /// the first available.
    pub source: Option<SourceKind>,
    /// The key file (`--key-file`); `None`: the recorded path, else [`default_key_file`].
    pub key_file: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY`.
    pub credentials_dir: Option<PathBuf>,
    /// The passphrase, when the source is one and it was given.
    pub passphrase: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            source,
            key_file,
            credentials_dir,
            passphrase,
        } = self;
        f.debug_struct("KeySettings")
            .field("source", source)
            .field("key_file", key_file)
            .field("credentials_dir", credentials_dir)
            .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl KeySettings {
    /// Settings from the environment: `$CREDENTIALS_DIRECTORY` when systemd set it.
    pub fn from_env() -> Self {
        Self {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            ..Self::default()
        }
    }

    fn credential_path(&self) -> Option<PathBuf> {
        self.credentials_dir.as_ref().map(|d| d.join(CREDENTIAL))
    }
}

/// `$XDG_CONFIG_HOME/omemod/omemod.key`, default `~/.config/omemod/omemod.key`.
pub fn default_key_file() -> PathBuf {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CONFIG_HOME")
        .unwrap_or_else(|| {
            absolute("HOME")
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".config")
        })
        .join("omemod")
        .join("omemod.key")
}

/// Why the data key could not be had. Never carries key bytes or the passphrase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The database records another source than the one asked for.
    #[error(
        "the database's key comes from its {recorded}, not from a {asked}; omemod never changes \
         the key source by itself: stop the daemon and run `omemod rekey --key-source {asked}`"
    )]
    SourceMismatch {
        /// The recorded source.
        recorded: SourceKind,
        /// The source asked for.
        asked: SourceKind,
    },
    /// The key file cannot be read or created.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The key file or credential is shorter than a key.
    #[error("{path} holds {len} bytes; a key needs at least {MIN_KEY_BYTES}")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The key file would sit in the database's directory, where a copy of the directory or a
    /// backup of it would carry the key along.
    #[error(
        "key file {key_file} is inside the database's directory {db_dir}: a copy of that \
         directory would carry the key with it; keep the key elsewhere (--key-file)"
    )]
    KeyFileBesideDatabase {
        /// The key file.
        key_file: PathBuf,
        /// The database's directory.
        db_dir: PathBuf,
    },
    /// The systemd credential is not there.
    #[error(
        "no systemd credential {CREDENTIAL}: {why} (the unit needs \
         `LoadCredentialEncrypted={CREDENTIAL}:…`, see README)"
    )]
    NoCredential {
        /// What is missing.
        why: String,
    },
    /// The Secret Service failed or does not hold the key (omemod never prompts).
    #[error("Secret Service: {what}: {reason}")]
    SecretService {
        /// What omemod was doing.
        what: &'static str,
        /// What the service or the bus said.
        reason: String,
    },
    /// The source is a passphrase and none was given.
    #[error("the database's key is protected by a passphrase, and none was given")]
    NeedPassphrase,
    /// The key from the source does not unwrap the data key.
    #[error("the {kind} does not open this database's key (wrong {what})")]
    WrongKey {
        /// The source.
        kind: SourceKind,
        /// What the user got wrong.
        what: &'static str,
    },
    /// The passphrase key derivation failed (bad parameters).
    #[error("passphrase key derivation: {0}")]
    Kdf(String),
    /// The `sealing` record is not one this omemod understands.
    #[error("the database's sealing record is malformed: {0}")]
    BadRecord(String),
}

/// Argon2id parameters of a passphrase, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Memory, KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Salt, hex.
    pub salt: String,
}

impl KdfParams {
    /// Fresh parameters: 64 MiB, 3 passes, one lane (OWASP's second Argon2id choice), a new
    /// 16-byte salt.
    pub fn fresh() -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self {
            algorithm: "argon2id".into(),
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
            salt: hex::encode(salt),
        }
    }

    /// The key `passphrase` gives under these parameters.
    pub fn derive(&self, passphrase: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        if self.algorithm != "argon2id" {
            return Err(KeyError::Kdf(format!(
                "unknown algorithm {}",
                self.algorithm
            )));
        }
        let salt = hex::decode(&self.salt).map_err(|_| KeyError::Kdf("salt is not hex".into()))?;
        let params = argon2::Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut out[..])
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// The `sealing` row: which source wraps the data key, and the wrapped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The source.
    pub source: SourceKind,
    /// The key file's path or the credential's name; `None` for a passphrase.
    pub source_ref: Option<String>,
    /// The passphrase's KDF parameters.
    pub kdf: Option<KdfParams>,
    /// `nonce ‖ XChaCha20-Poly1305(KEK, data key)`.
    pub wrapped_key: Vec<u8>,
    /// [`DataKey::id`].
    pub key_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Whether the database has a `sealing` table (schema version 9 and later).
fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sealing')",
        [],
        |r| r.get(0),
    )
}

/// The database's sealing record; `None` for a database not sealed yet.
pub fn read_record(conn: &Connection) -> crate::storage::Result<Option<Record>> {
    if !has_table(conn)? {
        return Ok(None);
    }
    let row = conn
        .query_row(
            "SELECT source, source_ref, kdf, wrapped_key, key_id, created_at FROM sealing WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((source, source_ref, kdf, wrapped_key, key_id, created_at)) = row else {
        return Ok(None);
    };
    let source = SourceKind::parse(&source)
        .ok_or_else(|| KeyError::BadRecord(format!("unknown key source `{source}`")))?;
    let kdf = kdf
        .map(|k| serde_json::from_str(&k))
        .transpose()
        .map_err(|e| KeyError::BadRecord(format!("kdf: {e}")))?;
    Ok(Some(Record {
        source,
        source_ref,
        kdf,
        wrapped_key,
        key_id,
        created_at,
    }))
}

/// Writes (or replaces) the sealing record.
pub fn write_record(
    conn: &Connection,
    record: &Record,
    rekeyed: bool,
) -> crate::storage::Result<()> {
    let kdf = record
        .kdf
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| KeyError::BadRecord(e.to_string()))?;
    let now = crate::storage::now();
    conn.execute(
        "INSERT INTO sealing (id, source, source_ref, kdf, wrapped_key, key_id, created_at, rekeyed_at) \
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, NULL) \
         ON CONFLICT (id) DO UPDATE SET source = excluded.source, source_ref = excluded.source_ref, \
         kdf = excluded.kdf, wrapped_key = excluded.wrapped_key, key_id = excluded.key_id, \
         rekeyed_at = ?7",
        params![
            record.source.as_str(),
            record.source_ref,
            kdf,
            record.wrapped_key,
            record.key_id,
            record.created_at,
            rekeyed.then_some(now),
        ],
    )?;
    Ok(())
}

/// The associated data of a wrapped key: it names the source, so a key wrapped for one source
/// is not taken for another's.
fn wrap_ad(source: SourceKind) -> Vec<u8> {
    let mut ad = b"omemod data key v1\0".to_vec();
    ad.extend_from_slice(source.as_str().as_bytes());
    ad
}

fn wrap(kek: &[u8; 32], source: SourceKind, key: &DataKey) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aead = XChaCha20Poly1305::new(kek.into());
    let ad = wrap_ad(source);
    let sealed = aead
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &key.expose()[..],
                aad: &ad,
            },
        )
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    out
}

fn unwrap(kek: &[u8; 32], record: &Record) -> Result<DataKey, KeyError> {
    let wrong = KeyError::WrongKey {
        kind: record.source,
        what: match record.source {
            SourceKind::SystemdCredential => "credential",
            SourceKind::Passphrase => "passphrase",
            SourceKind::SecretService => "keyring item",
            SourceKind::KeyFile => "key file",
        },
    };
    if record.wrapped_key.len() < 24 {
        return Err(KeyError::BadRecord("wrapped key too short".into()));
    }
    let (nonce, sealed) = record.wrapped_key.split_at(24);
    let aead = XChaCha20Poly1305::new(kek.into());
    let ad = wrap_ad(record.source);
    let plain = Zeroizing::new(
        aead.decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &ad,
            },
        )
        .map_err(|_| wrong)?,
    );
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::BadRecord("data key is not 32 bytes".into()))?;
    let key = DataKey::from_bytes(Zeroizing::new(bytes));
    if key.id() != record.key_id {
        return Err(KeyError::BadRecord("data key does not match its id".into()));
    }
    Ok(key)
}

/// HKDF-SHA256 of a credential's or key file's bytes.
fn kek_from_bytes(bytes: &[u8], source: SourceKind) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"omemod key-encryption key v1"), bytes);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is within HKDF-SHA256's limit.
    let _ = hk.expand(source.as_str().as_bytes(), &mut out[..]);
    out
}

fn read_key_bytes(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::KeyFile {
        path: path.to_owned(),
        source,
    })?);
    if bytes.len() < MIN_KEY_BYTES {
        return Err(KeyError::TooShort {
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Refuses a key file inside the database's directory (at any depth).
fn check_outside(key_file: &Path, db: &Path) -> Result<(), KeyError> {
    let db_dir = crate::socket_trust::parent_of(db);
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let db_dir = canon(&db_dir);
    // The key file may not exist yet: its nearest existing ancestor decides.
    let mut probe = key_file.to_owned();
    let key_dir = loop {
        match probe.parent() {
            Some(p) if p.exists() => {
                break canon(p).join(key_file.strip_prefix(p).unwrap_or(key_file))
            }
            Some(p) => probe = p.to_owned(),
            None => break key_file.to_owned(),
        }
    };
    if key_dir.starts_with(&db_dir) {
        return Err(KeyError::KeyFileBesideDatabase {
            key_file: key_file.to_owned(),
            db_dir,
        });
    }
    Ok(())
}

/// Reads the key file, creating it (32 random bytes, hex, mode 0600, in a 0700 directory) when
/// `create` and it does not exist. Two processes creating it at once agree on one key: the file
/// appears whole (a hard link of a written temporary file) or not at all.
fn key_file_bytes(path: &Path, create: bool) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let io = |source| KeyError::KeyFile {
        path: path.to_owned(),
        source,
    };
    if create && !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(
            ".{}.{:x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => tracing::info!(key_file = %path.display(), "created the key file"),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(key_file = %path.display(), "key file is readable by other users; setting it to 0600");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    read_key_bytes(path)
}

/// Creates the key file at `path` (and its directory, 0700) unless it exists; checks it is a
/// key either way. For the systemd unit, whose sandbox cannot write where the key file lives.
pub fn ensure_key_file(path: &Path) -> Result<(), KeyError> {
    key_file_bytes(path, true).map(drop)
}

/// The KEK of `source`. `record`: the existing database's record (its key file path and KDF
/// parameters); `create`: a new key file may be made.
fn kek(
    source: SourceKind,
    settings: &KeySettings,
    record: Option<&Record>,
    kdf: Option<&KdfParams>,
    key_file: &Path,
    create: bool,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    match source {
        SourceKind::SystemdCredential => {
            let path =
                settings.credential_path().ok_or_else(|| {
                    KeyError::NoCredential {
                why: "$CREDENTIALS_DIRECTORY is not set (not started by systemd with credentials)"
                    .into(),
            }
                })?;
            if !path.exists() {
                return Err(KeyError::NoCredential {
                    why: format!("{} does not exist", path.display()),
                });
            }
            let bytes = read_key_bytes(&path)?;
            Ok(kek_from_bytes(&bytes, source))
        }
        SourceKind::KeyFile => {
            let bytes = key_file_bytes(key_file, create && record.is_none())?;
            Ok(kek_from_bytes(&bytes, source))
        }
        // A new item is made by `wrap_new`, which records its id.
        SourceKind::SecretService => {
            let id = record
                .and_then(|r| r.source_ref.as_deref())
                .ok_or_else(|| KeyError::BadRecord("Secret Service key without its id".into()))?;
            let bytes = super::secret_service::fetch(id)?;
            Ok(kek_from_bytes(&bytes, source))
        }
        SourceKind::Passphrase => {
            let pass = settings
                .passphrase
                .as_ref()
                .ok_or(KeyError::NeedPassphrase)?;
            let params = kdf.ok_or_else(|| KeyError::BadRecord("passphrase without kdf".into()))?;
            params.derive(pass)
        }
    }
}

/// The key file to use for the database at `db`: `--key-file`, else the recorded path, else the
/// default.
fn key_file_for(settings: &KeySettings, record: Option<&Record>) -> PathBuf {
    settings
        .key_file
        .clone()
        .or_else(|| {
            record
                .filter(|r| r.source == SourceKind::KeyFile)
                .and_then(|r| r.source_ref.clone())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_key_file)
}

/// Unwraps the data key of a sealed database with its recorded source.
pub fn open(record: &Record, settings: &KeySettings) -> Result<DataKey, KeyError> {
    if let Some(asked) = settings.source.filter(|s| *s != record.source) {
        return Err(KeyError::SourceMismatch {
            recorded: record.source,
            asked,
        });
    }
    let key_file = key_file_for(settings, Some(record));
    let kek = kek(
        record.source,
        settings,
        Some(record),
        record.kdf.as_ref(),
        &key_file,
        false,
    )?;
    unwrap(&kek, record)
}

/// The source a database being sealed for the first time (or rekeyed) gets: the one asked for,
/// else the systemd credential when there is one, else the Secret Service when one runs with
/// its collection unlocked, else the key file.
pub fn choose_source(settings: &KeySettings) -> SourceKind {
    settings
        .source
        .unwrap_or_else(|| match settings.credential_path() {
            Some(p) if p.exists() => SourceKind::SystemdCredential,
            _ if super::secret_service::available() => SourceKind::SecretService,
            _ => SourceKind::KeyFile,
        })
}

/// Wraps `key` for the source `settings` choose (creating the key file if needed), for the
/// database at `db`.
pub fn wrap_new(settings: &KeySettings, db: &Path, key: &DataKey) -> Result<Record, KeyError> {
    let source = choose_source(settings);
    let key_file = key_file_for(settings, None);
    let kdf = (source == SourceKind::Passphrase).then(KdfParams::fresh);
    if source == SourceKind::KeyFile {
        check_outside(&key_file, db)?;
    }
    let (kek, item) = if source == SourceKind::SecretService {
        let label = format!("omemod: the data key of {}", db.display());
        let (id, bytes) = super::secret_service::store_new(&label)?;
        (kek_from_bytes(&bytes, source), Some(id))
    } else {
        let kek = kek(source, settings, None, kdf.as_ref(), &key_file, true)?;
        (kek, None)
    };
    Ok(Record {
        source,
        source_ref: match source {
            SourceKind::SecretService => item,
            SourceKind::KeyFile => Some(
                std::fs::canonicalize(&key_file)
                    .unwrap_or(key_file)
                    .display()
                    .to_string(),
            ),
            SourceKind::SystemdCredential => Some(CREDENTIAL.to_owned()),
            SourceKind::Passphrase => None,
        },
        kdf,
        wrapped_key: wrap(&kek, source, key),
        key_id: key.id(),
        created_at: crate::storage::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> KeySettings {
        KeySettings {
            key_file: Some(dir.join("config/omemod.key")),
            ..KeySettings::default()
        }
    }

    #[test]
    fn a_key_file_is_made_once_and_opens_the_key_it_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state/omemod.db");
        let s = settings(dir.path());
        let key = DataKey::generate();
        let record = wrap_new(&s, &db, &key).unwrap();
        assert_eq!(record.source, SourceKind::KeyFile);
        let file = dir.path().join("config/omemod.key");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(open(&record, &s).unwrap().id(), key.id());
        // Another key file does not open it.
        std::fs::write(&file, "0".repeat(64)).unwrap();
        assert!(matches!(open(&record, &s), Err(KeyError::WrongKey { .. })));
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(open(&record, &s), Err(KeyError::KeyFile { .. })));
        assert!(!file.exists(), "opening never creates a key file");
    }

    #[test]
    fn a_key_file_in_the_database_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("omemod.db");
        let s = KeySettings {
            key_file: Some(dir.path().join("keys/omemod.key")),
            ..KeySettings::default()
        };
        assert!(matches!(
            wrap_new(&s, &db, &DataKey::generate()),
            Err(KeyError::KeyFileBesideDatabase { .. })
        ));
    }

    #[test]
    fn a_passphrase_opens_only_with_itself_and_the_recorded_source_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state/omemod.db");
        let mut s = settings(dir.path());
        s.source = Some(SourceKind::Passphrase);
        s.passphrase = Some(Zeroizing::new("correct horse".into()));
        let key = DataKey::generate();
        let mut record = wrap_new(&s, &db, &key).unwrap();
        // Cheap parameters for the rest of the test (the recorded ones are used to open).
        let cheap = KdfParams {
            m_cost: 64,
            t_cost: 1,
            ..record.kdf.clone().unwrap()
        };
        let kek = cheap.derive("correct horse").unwrap();
        record.wrapped_key = wrap(&kek, SourceKind::Passphrase, &key);
        record.kdf = Some(cheap);
        assert_eq!(open(&record, &s).unwrap().id(), key.id());
        s.passphrase = Some(Zeroizing::new("wrong horse".into()));
        assert!(matches!(open(&record, &s), Err(KeyError::WrongKey { .. })));
        s.passphrase = None;
        assert!(matches!(open(&record, &s), Err(KeyError::NeedPassphrase)));
        s.source = Some(SourceKind::KeyFile);
        assert!(matches!(
            open(&record, &s),
            Err(KeyError::SourceMismatch { .. })
        ));
        assert!(!format!("{s:?}").contains("horse"));
    }
}
