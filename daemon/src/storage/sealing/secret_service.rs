//! The Secret Service key source: the key-encryption key's bytes kept as an item of the desktop's
//! keyring (GNOME Keyring, KWallet, KeePassXC…) through the freedesktop Secret Service API on the
//! session bus. The item is found again by its attributes, `application` = `omemod` and
//! `omemod-key` = a random id recorded in the database (`sealing.source_ref`).
//!
//! omemod never prompts: a keyring that is not running, or whose collection is locked, is not
//! available (a new database then gets the key file), and a database whose key is in it does
//! not open until the user's session unlocks it.

use std::collections::HashMap;

use rand::RngCore;
use secret_service::blocking::{Collection, SecretService};
use secret_service::EncryptionType;
use zeroize::Zeroizing;

use super::keys::KeyError;

/// The well-known bus name of a Secret Service.
const BUS_NAME: &str = "org.freedesktop.secrets";
/// The attribute every omemod item carries.
const APPLICATION: (&str, &str) = ("application", "omemod");
/// The attribute that names one key.
const KEY_ATTRIBUTE: &str = "omemod-key";

fn failed(what: &'static str) -> impl FnOnce(secret_service::Error) -> KeyError {
    move |e| KeyError::SecretService {
        what,
        reason: e.to_string(),
    }
}

/// Whether a Secret Service runs on the session bus now (no service is started for the question).
pub fn running() -> bool {
    let Ok(conn) = zbus::blocking::Connection::session() else {
        return false;
    };
    let Ok(bus) = zbus::blocking::fdo::DBusProxy::new(&conn) else {
        return false;
    };
    BUS_NAME
        .try_into()
        .ok()
        .and_then(|name| bus.name_has_owner(name).ok())
        .unwrap_or(false)
}

/// The default collection, refused when locked (omemod does not prompt).
fn unlocked_collection<'a>(ss: &'a SecretService<'a>) -> Result<Collection<'a>, KeyError> {
    let collection = ss
        .get_default_collection()
        .map_err(failed("finding the default collection"))?;
    if collection
        .is_locked()
        .map_err(failed("asking whether the collection is locked"))?
    {
        return Err(KeyError::SecretService {
            what: "using the default collection",
            reason: "it is locked (unlock the keyring in the desktop session first)".into(),
        });
    }
    Ok(collection)
}

fn connect() -> Result<SecretService<'static>, KeyError> {
    SecretService::connect(EncryptionType::Dh).map_err(failed("connecting"))
}

/// Whether a new key can be stored now: a service runs and its default collection is unlocked.
pub fn available() -> bool {
    running() && connect().is_ok_and(|ss| unlocked_collection(&ss).is_ok())
}

/// Stores 32 new random bytes as an item labelled `label`; returns the item's id and the bytes.
pub fn store_new(label: &str) -> Result<(String, Zeroizing<Vec<u8>>), KeyError> {
    let ss = connect()?;
    let collection = unlocked_collection(&ss)?;
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let id = hex::encode(id);
    let mut secret = Zeroizing::new(vec![0u8; 32]);
    rand::thread_rng().fill_bytes(&mut secret[..]);
    let attributes = HashMap::from([APPLICATION, (KEY_ATTRIBUTE, id.as_str())]);
    collection
        .create_item(
            label,
            attributes,
            &secret,
            false,
            "application/octet-stream",
        )
        .map_err(failed("storing the key"))?;
    Ok((id, secret))
}

/// The bytes of the item `id`.
pub fn fetch(id: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let ss = connect()?;
    let found = ss
        .search_items(HashMap::from([APPLICATION, (KEY_ATTRIBUTE, id)]))
        .map_err(failed("searching for the key"))?;
    let Some(item) = found.unlocked.first() else {
        return Err(KeyError::SecretService {
            what: "finding the key",
            reason: if found.locked.is_empty() {
                format!("no item with {KEY_ATTRIBUTE}={id}")
            } else {
                "its collection is locked (unlock the keyring in the desktop session first)".into()
            },
        });
    };
    Ok(Zeroizing::new(
        item.get_secret().map_err(failed("reading the key"))?,
    ))
}
