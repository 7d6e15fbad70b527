//! Device labels (XEP-0384 0.9): our own, signed with our identity key and published in the
//! OMEMO 2 device list (never in 0.3's, whose schema has none: python-omemo refuses such a
//! list); those of other devices, kept as listed and shown only while their `labelsig`
//! verifies against the identity key held for the device.
//!
//! The signature covers the UTF-8 label alone (no JID, no device id), so it binds the label to
//! the identity key only; a label is checked whenever it is shown, against the key the device
//! is pinned to then (the key may arrive, or change, after the list).

use super::{AccountLookupError, ErrorCause, Manager, StorageError};
use crate::events::{Action, Cause};
use crate::storage::{accounts, devices, DeviceAddr};
use protocol_core::keys::conversion::curve25519_to_ed25519;
use protocol_core::keys::xeddsa;
use protocol_core::Version;
use rand::rngs::OsRng;
use serde::Serialize;

/// Longest label accepted for our device, in Unicode code points (XEP-0384 0.9 recommends
/// staying under 53).
pub const MAX_LABEL_CHARS: usize = 53;

/// Our device's label and its signature (`labelsig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLabel {
    /// The label.
    pub text: String,
    /// Ed25519 signature of our identity key over the label's UTF-8 bytes.
    pub signature: [u8; 64],
}

/// What became of a listed label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LabelStatus {
    /// The signature verifies: the label is shown.
    Verified,
    /// The list gives no `labelsig`: ignored (XEP-0384 0.9), not shown.
    Unsigned,
    /// The `labelsig` does not verify against the device's identity key: ignored, not shown.
    BadSignature,
    /// No identity key is known for the device yet (fetch its bundle): not shown until it is.
    UnknownKey,
}

/// Result of `account.set_label`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LabelSet {
    /// Our device's label now (`null`: none).
    pub label: Option<String>,
    /// Publish the OMEMO 2 device list (`devicelist.get`) so that others see it.
    pub actions: Vec<Action>,
}

/// Why `account.set_label` failed.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// No account to label.
    #[error(transparent)]
    Account(#[from] AccountLookupError),
    /// The label is longer than allowed.
    #[error(
        "a label may have at most {max} characters (Unicode code points); this one has {chars}"
    )]
    TooLong {
        /// Its length in code points.
        chars: usize,
        /// The most allowed.
        max: usize,
    },
    /// The label holds a control character (a line break, a tab, …).
    #[error("a label may not contain control characters (line breaks, tabs)")]
    ControlCharacter,
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl LabelError {
    /// Whom the error is due to.
    pub fn cause(&self) -> ErrorCause {
        match self {
            LabelError::Account(e) => e.cause(),
            LabelError::TooLong { .. } | LabelError::ControlCharacter => ErrorCause::Request,
            LabelError::Storage(e) => e.cause(),
        }
    }
}

/// Refuses a label we would not publish.
fn check_label(label: &str) -> Result<(), LabelError> {
    let chars = label.chars().count();
    if chars > MAX_LABEL_CHARS {
        return Err(LabelError::TooLong {
            chars,
            max: MAX_LABEL_CHARS,
        });
    }
    if label.chars().any(char::is_control) {
        return Err(LabelError::ControlCharacter);
    }
    Ok(())
}

/// Whether `signature` is the device's signature over `label`. The device's key is known in
/// its Curve25519 form, which lacks the Edwards sign bit: both signs are tried (whoever holds
/// the private key of one holds the other's), as XEdDSA verification does.
pub fn verify_label(curve25519: &[u8; 32], label: &str, signature: &[u8]) -> bool {
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    [0u8, 1].iter().any(|&sign| {
        curve25519_to_ed25519(curve25519, sign)
            .is_ok_and(|ed| xeddsa::ed25519_verify(&ed, label.as_bytes(), &sig).is_ok())
    })
}

/// The label to show and its status, for a listed `label` with `labelsig` of a device whose
/// identity key is `identity` (if known).
pub(crate) fn checked(
    identity: Option<&[u8; 32]>,
    label: &str,
    labelsig: Option<&[u8]>,
) -> (Option<String>, LabelStatus) {
    let status = match (labelsig, identity) {
        (None, _) => LabelStatus::Unsigned,
        (Some(_), None) => LabelStatus::UnknownKey,
        (Some(sig), Some(key)) if verify_label(key, label, sig) => LabelStatus::Verified,
        (Some(_), Some(_)) => LabelStatus::BadSignature,
    };
    let shown = (status == LabelStatus::Verified).then(|| label.to_owned());
    (shown, status)
}

/// A listed label to check: the device, the label and its signature as listed.
pub(crate) struct Listed {
    pub(crate) addr: DeviceAddr,
    pub(crate) label: String,
    pub(crate) labelsig: Option<Vec<u8>>,
}

impl Manager {
    /// Sets our device's label (`None` or an empty one removes it), signed with our identity
    /// key; the OMEMO 2 device list is then to be published.
    pub async fn set_label(
        &self,
        account: Option<&str>,
        label: Option<&str>,
    ) -> Result<LabelSet, LabelError> {
        let acct = self.account(account)?;
        let label = label.filter(|l| !l.is_empty());
        if let Some(l) = label {
            check_label(l)?;
        }
        let own = label.map(|text| OwnLabel {
            text: text.to_owned(),
            signature: acct.identity.sign_label(text, &mut OsRng),
        });
        let mut keys = acct.keys.lock().await?;
        let (id, stored) = (acct.id, own.clone());
        self.store
            .write(move |tx| {
                let l = stored.as_ref().map(|o| (o.text.as_str(), &o.signature));
                accounts::set_label(tx, id, l)
            })
            .await?;
        keys.label = own;
        drop(keys);
        let mut actions = Vec::new();
        let a = Action::PublishDevicelist {
            namespace: Version::Twomemo,
        };
        self.push_action(&acct, &mut actions, Cause::LabelChanged, a);
        tracing::info!(jid = %acct.jid, labelled = label.is_some(), "device label set");
        Ok(LabelSet {
            label: label.map(str::to_owned),
            actions,
        })
    }

    /// Each listed label checked against the identity key held for its device (ours for our
    /// own device): the label to show and its status, in `listed`'s order.
    pub(crate) async fn check_labels(
        &self,
        own: (&str, u32, &[u8; 32]),
        listed: Vec<Listed>,
    ) -> Result<Vec<(Option<String>, LabelStatus)>, StorageError> {
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let (own_jid, own_id, own_key) = (own.0.to_owned(), own.1, *own.2);
        self.store
            .read(move |conn| {
                listed
                    .iter()
                    .map(|l| {
                        let key = match l.addr.jid == own_jid && l.addr.device_id == own_id {
                            true => Some(own_key),
                            false => devices::known_identity(conn, &l.addr)?,
                        };
                        Ok(checked(key.as_ref(), &l.label, l.labelsig.as_deref()))
                    })
                    .collect()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_core::keys::IdentityKeyPair;

    #[test]
    fn labels_verify_against_the_curve_form_only_with_their_key() {
        for _ in 0..8 {
            let id = IdentityKeyPair::generate(&mut OsRng);
            let other = IdentityKeyPair::generate(&mut OsRng);
            let sig = id.sign_label("Phone 📱", &mut OsRng);
            assert!(verify_label(id.curve25519(), "Phone 📱", &sig));
            assert!(!verify_label(id.curve25519(), "Phone", &sig));
            assert!(!verify_label(other.curve25519(), "Phone 📱", &sig));
            assert!(!verify_label(id.curve25519(), "Phone 📱", &sig[..63]));
            let key = Some(id.curve25519());
            assert_eq!(
                checked(key, "Phone 📱", Some(&sig)),
                (Some("Phone 📱".to_owned()), LabelStatus::Verified)
            );
            assert_eq!(
                checked(key, "Tablet", Some(&sig)),
                (None, LabelStatus::BadSignature)
            );
            assert_eq!(
                checked(key, "Phone 📱", None),
                (None, LabelStatus::Unsigned)
            );
            assert_eq!(
                checked(None, "Phone 📱", Some(&sig)),
                (None, LabelStatus::UnknownKey)
            );
        }
    }

    #[test]
    fn our_label_is_checked_before_it_is_signed() {
        assert!(check_label(&"é".repeat(MAX_LABEL_CHARS)).is_ok());
        assert!(matches!(
            check_label(&"é".repeat(MAX_LABEL_CHARS + 1)),
            Err(LabelError::TooLong { chars: 54, max: 53 })
        ));
        assert!(matches!(
            check_label("two\nlines"),
            Err(LabelError::ControlCharacter)
        ));
    }
}
