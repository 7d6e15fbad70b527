//! Our own device per account: identity, signed prekeys, the one-time prekey pool, and the
//! bundle we publish from them.

use super::error::{DeviceIdError, ErrorCause, InvalidJid, StorageError};
use super::resident::Resident;
use crate::storage::{self, accounts, identity, prekeys, signed_prekeys, SecretKey, Store};
use protocol_core::bundle::{Bundle, PreKeyPublic};
use protocol_core::consts::{MAX_DEVICE_ID, OLDMEMO_MAX_PREKEY_ID, PREKEY_POOL_SIZE};
use protocol_core::keys::identity::SignedPreKey;
use protocol_core::keys::{IdentityKeyPair, KeyPair, PrivateKey, PublicKey};
use protocol_core::Version;
use rand::rngs::OsRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

pub use accounts::TrustMode;

/// How long a signed prekey is used before it is replaced (python-omemo's default).
pub const SIGNED_PREKEY_ROTATION_SECS: i64 = 7 * 24 * 60 * 60;
/// How long a replaced signed prekey still answers delayed key exchanges.
pub const SIGNED_PREKEY_GRACE_SECS: i64 = SIGNED_PREKEY_ROTATION_SECS;

/// One of our one-time prekeys.
#[derive(Debug, Clone)]
pub struct OwnPreKey {
    /// The key pair.
    pub key_pair: KeyPair,
    /// Used by a key exchange during catch-up: no longer published, kept until catch-up ends.
    pub used: bool,
    /// The pool it belongs to (`None`: made before the pools were split; no longer published).
    pub namespace: Option<Version>,
    /// The ephemeral key of the key exchange that used it during catch-up: only that one may
    /// use it again.
    pub used_by: Option<[u8; 32]>,
}

/// One of our signed prekeys.
#[derive(Debug, Clone)]
pub struct OwnSignedPreKey {
    /// Key, id and signatures.
    pub key: SignedPreKey,
    /// Unix seconds.
    pub created_at: i64,
    /// When it was replaced (None for the current one).
    pub retired_at: Option<i64>,
}

/// The mutable part of an account's own keys; guarded by the account's lock.
#[derive(Debug)]
pub struct OwnKeys {
    /// Signed prekeys by id (the current one and those in their grace period).
    pub signed_prekeys: BTreeMap<u32, OwnSignedPreKey>,
    /// One-time prekeys by id.
    pub prekeys: BTreeMap<u32, OwnPreKey>,
    /// Change counter of the published bundle.
    pub bundle_version: i64,
    /// Whether the client is replaying its archive.
    pub catchup: bool,
    /// When catch-up began.
    pub catchup_since: Option<i64>,
    /// Trust policy for new identity keys.
    pub trust_mode: TrustMode,
    /// Our device's label, signed (published in the OMEMO 2 device list).
    pub label: Option<super::labels::OwnLabel>,
}

impl OwnKeys {
    /// Whether catch-up is on at `now`: it ends by itself after
    /// [`super::trust::CATCHUP_TIMEOUT_SECS`] even if the client never calls `catchup.end`.
    pub fn catchup_active(&self, now: i64) -> bool {
        self.catchup
            && self
                .catchup_since
                .is_none_or(|since| now - since < super::trust::CATCHUP_TIMEOUT_SECS)
    }

    /// The signed prekey in use.
    pub fn current_signed_prekey(&self) -> Option<&OwnSignedPreKey> {
        self.signed_prekeys
            .values()
            .filter(|s| s.retired_at.is_none())
            .max_by_key(|s| s.key.id)
    }

    /// Published (not used) prekeys of one namespace's pool.
    pub fn live_prekeys(&self, version: Version) -> impl Iterator<Item = (&u32, &OwnPreKey)> {
        self.prekeys
            .iter()
            .filter(move |(_, p)| !p.used && p.namespace == Some(version))
    }

    /// Adds freshly stored prekeys.
    pub fn add_prekeys(&mut self, rows: Vec<(prekeys::PreKeyRow, KeyPair)>) {
        for (r, kp) in rows {
            self.prekeys.insert(
                r.id,
                OwnPreKey {
                    key_pair: kp,
                    used: false,
                    namespace: r.namespace,
                    used_by: None,
                },
            );
        }
    }

    /// Our bundle in `version`.
    pub fn bundle(&self, version: Version, identity: &IdentityKeyPair) -> Option<Bundle> {
        let spk = self.current_signed_prekey()?;
        Some(Bundle::from_keys(
            version,
            identity,
            &spk.key,
            self.live_prekeys(version)
                .map(|(id, p)| PreKeyPublic {
                    id: *id,
                    key: p.key_pair.public.0,
                })
                .collect(),
        ))
    }
}

impl OwnKeys {
    /// Rows it holds (for [`Resident`]).
    fn rows(&self) -> usize {
        self.prekeys.len() + self.signed_prekeys.len()
    }
}

/// An account: its immutable identity and its lock-guarded keys.
#[derive(Debug)]
pub struct Account {
    /// `accounts.id`.
    pub id: i64,
    /// Our bare JID.
    pub jid: String,
    /// Our device id (both namespaces).
    pub device_id: u32,
    /// Our identity key pair.
    pub identity: IdentityKeyPair,
    /// Keys that change, loaded on first use.
    pub keys: AccountKeys,
}

/// Where accounts' keys are loaded from, and the record of the accounts whose state is in
/// memory ([`super::resident`]).
#[derive(Debug, Clone)]
pub struct KeySource {
    store: Arc<Store>,
    resident: Arc<Mutex<Resident>>,
}

impl KeySource {
    /// Keys from `store`, none in memory yet.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            resident: Arc::default(),
        }
    }

    /// The accounts whose state is in memory.
    pub(crate) fn resident(&self) -> std::sync::MutexGuard<'_, Resident> {
        self.resident.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A locked account's keys.
pub type KeysGuard<'a> = tokio::sync::MappedMutexGuard<'a, OwnKeys>;

/// The account's own keys: read from the database by the first [`AccountKeys::lock`], and
/// dropped again by [`AccountKeys::unload`] when the account has long been idle (the manager
/// decides, [`super::resident`]). One lock for the account's key operations, loaded or not.
#[derive(Debug)]
pub struct AccountKeys {
    account_id: i64,
    source: KeySource,
    keys: tokio::sync::Mutex<Option<OwnKeys>>,
}

impl AccountKeys {
    /// Keys to be read on first use.
    pub(crate) fn unloaded(account_id: i64, source: &KeySource) -> Self {
        Self {
            account_id,
            source: source.clone(),
            keys: tokio::sync::Mutex::new(None),
        }
    }

    /// Keys already in memory (a new account, or taken over from an old handle).
    pub(crate) fn loaded(account_id: i64, source: &KeySource, keys: OwnKeys) -> Self {
        source.resident().add(account_id, keys.rows());
        Self {
            account_id,
            source: source.clone(),
            keys: tokio::sync::Mutex::new(Some(keys)),
        }
    }

    /// Locks the keys, reading them first if they are not in memory.
    pub async fn lock(&self) -> Result<KeysGuard<'_>, StorageError> {
        let mut slot = self.keys.lock().await;
        let keys = match slot.take() {
            Some(keys) => keys,
            None => {
                let keys = load_keys(&self.source.store, self.account_id).await?;
                self.source.resident().add(self.account_id, keys.rows());
                keys
            }
        };
        Ok(tokio::sync::MutexGuard::map(slot, |s| s.insert(keys)))
    }

    /// Locks the keys as they are: `None` if they are not in memory (they stay out, and no
    /// one reads them while the guard lives, so a change committed under it is in memory or
    /// in the next read).
    pub(crate) async fn lock_loaded(&self) -> tokio::sync::MutexGuard<'_, Option<OwnKeys>> {
        self.keys.lock().await
    }

    /// Drops the keys from memory unless they are locked; whether they are out.
    pub(crate) fn unload(&self) -> bool {
        match self.keys.try_lock() {
            Ok(mut slot) => {
                slot.take();
                true
            }
            Err(_) => false,
        }
    }
}

/// Tops up each namespace's one-time prekey pool to [`PREKEY_POOL_SIZE`] with fresh keys
/// ([`prekeys::refill_pools`]); returns the new keys.
pub(crate) fn refill_prekey_pools(
    tx: &crate::storage::Db,
    account_id: i64,
    now: i64,
) -> Result<Vec<(prekeys::PreKeyRow, KeyPair)>, StorageError> {
    prekeys::refill_pools(tx, account_id, PREKEY_POOL_SIZE, |ids, ns| {
        new_prekey_rows(account_id, ids.map(wrap_prekey_id), ns, now)
    })
}

/// Fresh prekey rows of `namespace`'s pool with ids from `ids`.
pub(crate) fn new_prekey_rows(
    account_id: i64,
    ids: impl Iterator<Item = u32>,
    namespace: Version,
    now: i64,
) -> Vec<(prekeys::PreKeyRow, KeyPair)> {
    ids.map(|id| {
        let kp = KeyPair::generate(&mut OsRng);
        (
            prekeys::PreKeyRow {
                account_id,
                id,
                private_key: SecretKey::new(*kp.private.to_bytes()),
                public_key: kp.public.0,
                created_at: now,
                used_at: None,
                namespace: Some(namespace),
                used_by: None,
            },
            kp,
        )
    })
    .collect()
}

/// Prekey ids for 0.3 must stay ≤ 0xFFFFFE: wrap like libsignal does.
pub(crate) fn wrap_prekey_id(id: u32) -> u32 {
    ((id - 1) % OLDMEMO_MAX_PREKEY_ID) + 1
}

pub(crate) fn signed_prekey_row(
    account_id: i64,
    s: &SignedPreKey,
    now: i64,
) -> signed_prekeys::SignedPreKeyRow {
    signed_prekeys::SignedPreKeyRow {
        account_id,
        id: s.id,
        private_key: SecretKey::new(*s.key_pair.private.to_bytes()),
        public_key: s.key_pair.public.0,
        signature_oldmemo: s.signature_oldmemo,
        signature_twomemo: s.signature_twomemo,
        created_at: now,
        retired_at: None,
    }
}

/// Most ids `avoid` may list.
pub const MAX_AVOIDED_DEVICE_IDS: usize = 10_000;

/// A random device id in `1..=max` that is not in `avoid` (`None` if none was found).
pub(crate) fn pick_device_id(rng: &mut impl Rng, avoid: &[u32], max: u32) -> Option<u32> {
    // `avoid` is small against 2^31 ids: a few draws suffice; tiny ranges are for tests.
    (0..1000)
        .map(|_| rng.gen_range(1..=max))
        .find(|id| !avoid.contains(id))
}

/// Why `account.create` failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    /// The JID is not a bare JID.
    #[error(transparent)]
    Jid(#[from] InvalidJid),
    /// An account with this JID exists already.
    #[error("account {0} already exists")]
    Exists(String),
    /// `avoid` is unusable.
    #[error(transparent)]
    DeviceId(#[from] DeviceIdError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl CreateAccountError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            CreateAccountError::Jid(e) => e.cause(),
            CreateAccountError::Exists(_) => ErrorCause::Request,
            CreateAccountError::DeviceId(e) => e.cause(),
            CreateAccountError::Storage(e) => e.cause(),
        }
    }
}

/// Refuses an `avoid` list that is too long or names something that is not a device id.
pub(crate) fn check_avoided(avoid: &[u32]) -> Result<(), DeviceIdError> {
    if avoid.len() > MAX_AVOIDED_DEVICE_IDS {
        return Err(DeviceIdError::TooManyAvoided {
            max: MAX_AVOIDED_DEVICE_IDS,
        });
    }
    match avoid.iter().find(|i| **i == 0 || **i > MAX_DEVICE_ID) {
        Some(bad) => Err(DeviceIdError::AvoidedOutOfRange(*bad)),
        None => Ok(()),
    }
}

/// A new device's keys, made before the transaction that stores them.
struct NewDevice {
    device_id: u32,
    identity: IdentityKeyPair,
    /// Its id is the one the account's counter hands out in the transaction.
    signed_prekey: SignedPreKey,
}

/// Creates an account with a fresh identity, signed prekey and full prekey pools, in one
/// transaction. Its device id is none of `avoid` (the ids already on our own device lists).
pub async fn create(
    source: &KeySource,
    jid: &str,
    trust_mode: TrustMode,
    avoid: &[u32],
) -> Result<Account, CreateAccountError> {
    check_avoided(avoid)?;
    let device_id =
        pick_device_id(&mut OsRng, avoid, MAX_DEVICE_ID).ok_or(DeviceIdError::NoneFree)?;
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let device = NewDevice {
        device_id,
        signed_prekey: SignedPreKey::generate(1, &identity, &mut OsRng),
        identity,
    };
    let now = storage::now();
    let stored = store_new_account(&source.store, jid, &device, trust_mode, now)
        .await?
        .ok_or_else(|| CreateAccountError::Exists(jid.to_owned()))?;
    let spk = stored.signed_prekey;
    let mut keys = OwnKeys {
        signed_prekeys: BTreeMap::new(),
        prekeys: BTreeMap::new(),
        bundle_version: 1,
        catchup: false,
        catchup_since: None,
        trust_mode,
        label: None,
    };
    keys.add_prekeys(stored.prekeys);
    keys.signed_prekeys.insert(
        spk.id,
        OwnSignedPreKey {
            key: spk,
            created_at: now,
            retired_at: None,
        },
    );
    Ok(Account {
        id: stored.id,
        jid: jid.to_owned(),
        device_id: device.device_id,
        identity: device.identity,
        keys: AccountKeys::loaded(stored.id, source, keys),
    })
}

/// A new account as stored.
struct StoredAccount {
    id: i64,
    /// With the id the account's counter gave it.
    signed_prekey: SignedPreKey,
    prekeys: Vec<(prekeys::PreKeyRow, KeyPair)>,
}

/// Stores a new account (row, identity, signed prekey, prekey pools) in one transaction;
/// `None` if the JID has an account already.
async fn store_new_account(
    store: &Store,
    jid: &str,
    device: &NewDevice,
    trust_mode: TrustMode,
    now: i64,
) -> Result<Option<StoredAccount>, StorageError> {
    let jid = jid.to_owned();
    let device_id = device.device_id;
    // The account id is known only in the transaction.
    let mut identity_row = identity::IdentityRow {
        account_id: 0,
        private_key: SecretKey::new(*device.identity.private_bytes()),
        curve25519_public: *device.identity.curve25519(),
        ed25519_public: *device.identity.ed25519(),
        fingerprint: device.identity.fingerprint(),
        created_at: now,
    };
    let mut spk = device.signed_prekey.clone();
    store
        .write(move |tx| {
            if accounts::get_by_jid(tx, &jid)?.is_some() {
                return Ok(None);
            }
            let account_id = accounts::insert(tx, &jid, device_id, trust_mode, now)?;
            identity_row.account_id = account_id;
            identity::insert(tx, &identity_row)?;
            spk.id = accounts::take_signed_prekey_id(tx, account_id)?;
            signed_prekeys::insert(tx, &signed_prekey_row(account_id, &spk, now))?;
            let prekeys = refill_prekey_pools(tx, account_id, now)?;
            Ok(Some(StoredAccount {
                id: account_id,
                signed_prekey: spk,
                prekeys,
            }))
        })
        .await
}

/// Every account, with its identity (its keys are read on first use). The identity's public
/// keys are taken as stored: no scalar multiplication per account.
pub fn load_all(
    conn: &crate::storage::Db,
    source: &KeySource,
) -> Result<Vec<Account>, StorageError> {
    let mut identities: std::collections::HashMap<i64, identity::IdentityRow> =
        identity::list(conn)?
            .into_iter()
            .map(|r| (r.account_id, r))
            .collect();
    let mut out = Vec::new();
    for row in accounts::list(conn)? {
        let Some(id_row) = identities.remove(&row.id) else {
            tracing::warn!(jid = %row.jid, "account without identity; skipped");
            continue;
        };
        let identity = IdentityKeyPair::from_stored(
            PrivateKey::from_bytes(*id_row.private_key.expose()),
            id_row.curve25519_public,
            id_row.ed25519_public,
        );
        out.push(Account {
            id: row.id,
            jid: row.jid,
            device_id: row.device_id,
            identity,
            keys: AccountKeys::unloaded(row.id, source),
        });
    }
    Ok(out)
}

/// A stored key pair, its public half as stored (computed when it was made).
fn stored_pair(private: &SecretKey, public: [u8; 32]) -> KeyPair {
    KeyPair {
        private: PrivateKey::from_bytes(*private.expose()),
        public: PublicKey(public),
    }
}

/// The account's keys as stored; pools left short by an older version are filled first (and
/// the bundle to publish changes).
async fn load_keys(store: &Store, account_id: i64) -> Result<OwnKeys, StorageError> {
    let mut keys = store
        .read(move |conn| read_keys(conn, account_id))
        .await?
        .ok_or(StorageError::NotFound { what: "account" })?;
    let short = Version::ALL.into_iter().any(|v| {
        keys.live_prekeys(v).count() < usize::try_from(PREKEY_POOL_SIZE).unwrap_or(usize::MAX)
    });
    if short {
        let now = storage::now();
        let (fresh, version) = store
            .write(move |tx| {
                let rows = refill_prekey_pools(tx, account_id, now)?;
                let version = match rows.is_empty() {
                    true => None,
                    false => Some(accounts::bump_bundle_version(tx, account_id)?),
                };
                Ok((rows, version))
            })
            .await?;
        keys.add_prekeys(fresh);
        if let Some(v) = version {
            keys.bundle_version = v;
        }
    }
    Ok(keys)
}

/// The account's keys as stored (`None` if there is no such account).
fn read_keys(conn: &crate::storage::Db, account_id: i64) -> Result<Option<OwnKeys>, StorageError> {
    let Some(row) = accounts::get(conn, account_id)? else {
        return Ok(None);
    };
    let signed_prekeys = signed_prekeys::list(conn, account_id)?
        .into_iter()
        .map(|s| {
            (
                s.id,
                OwnSignedPreKey {
                    key: SignedPreKey {
                        id: s.id,
                        key_pair: stored_pair(&s.private_key, s.public_key),
                        signature_oldmemo: s.signature_oldmemo,
                        signature_twomemo: s.signature_twomemo,
                    },
                    created_at: s.created_at,
                    retired_at: s.retired_at,
                },
            )
        })
        .collect();
    let prekeys = prekeys::list(conn, account_id)?
        .into_iter()
        .map(|p| {
            (
                p.id,
                OwnPreKey {
                    key_pair: stored_pair(&p.private_key, p.public_key),
                    used: p.used_at.is_some(),
                    namespace: p.namespace,
                    used_by: p.used_by,
                },
            )
        })
        .collect();
    Ok(Some(OwnKeys {
        signed_prekeys,
        prekeys,
        bundle_version: row.bundle_version,
        catchup: row.catchup,
        catchup_since: storage::device_state::catchup_since(conn, account_id)?,
        trust_mode: row.trust_mode,
        label: accounts::label(conn, account_id)?
            .map(|(text, signature)| super::labels::OwnLabel { text, signature }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_avoids_listed_ids() {
        for _ in 0..50 {
            assert_eq!(pick_device_id(&mut OsRng, &[1, 2], 3), Some(3));
        }
        assert_eq!(pick_device_id(&mut OsRng, &[1, 2, 3], 3), None);
    }
}
