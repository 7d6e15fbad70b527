//! The errors methods answer, as RPC error kinds: one table per error enum, from which both the
//! answer ([`MethodError::into_rpc`]) and the list of kinds ([`MethodError::kinds`], the
//! method's OpenRPC `errors`) are generated, so the two cannot disagree. The answer carries the
//! error's own cause (`error.data.cause`).

use crate::manager::account::CreateAccountError;
use crate::manager::decrypt::DecryptError;
use crate::manager::device_id::RenewDeviceIdError;
use crate::manager::devicelist::DevicelistError;
use crate::manager::encrypt::{EncryptError, HeartbeatError, ReplaceSessionError};
use crate::manager::error::{
    AccountLookupError, ChangedIdentity, DeviceIdError, InvalidFingerprint, InvalidJid,
    RateLimited, RecipientsError,
};
use crate::manager::labels::LabelError;
use crate::manager::lifecycle::DeleteAccountError;
use crate::manager::links::{LinkError, OwnLinkError};
use crate::manager::own_bundle::{OwnBundleError, OwnDevicelistError};
use crate::manager::peer_bundle::{BundleUpdateError, StoredBundleError};
use crate::manager::pinning::IdentityError;
use crate::manager::plan::PlanError;
use crate::manager::trust::{CatchupError, ListError, TrustError};
use crate::media::{
    CancelError, CheckError, ChunkError, DecryptBeginError, EncryptBeginError, LimitError, Next,
    OpenError,
};
use crate::rpc::ctx::SubscribeError;
use crate::rpc::error::{ErrorKind, MethodError, RpcError};
use crate::rpc::methods::file;
use crate::rpc::methods::subscription::UnsubscribeError;
use crate::rpc::registry::Method;
use crate::storage::StorageError;
use protocol_core::media::AesgcmLinkError;
use protocol_core::Version;
use serde_json::{json, Value};

/// Implements [`MethodError`] for an error type from one table of its variants. Each arm is a
/// pattern and how it is answered: `[Kind]`, `[Kind, data]` (fields added to `error.data`), or
/// `[via e: Type]` for a variant that nests an error `e` of another type, answered as that one
/// is. The answer is one exhaustive match over the arms, and the kinds are read off the same
/// arms: a variant cannot be answered with a kind its method does not list.
macro_rules! answers {
    (@kinds via $e:ident : $inner:ty) => {
        <$inner as MethodError>::kinds()
    };
    (@kinds $kind:ident $(, $data:expr)?) => {
        vec![ErrorKind::$kind]
    };
    (@answer $message:ident $cause:ident via $e:ident : $inner:ty) => {{
        let _ = ($message, $cause);
        <$inner as MethodError>::into_rpc($e)
    }};
    (@answer $message:ident $cause:ident $kind:ident) => {
        RpcError::new(ErrorKind::$kind, $message).with_cause($cause)
    };
    (@answer $message:ident $cause:ident $kind:ident, $data:expr) => {
        RpcError::new(ErrorKind::$kind, $message)
            .with_cause($cause)
            .with_data($data)
    };
    ($ty:ty { $($pat:pat => [$($how:tt)*]),+ $(,)? }) => {
        impl MethodError for $ty {
            fn kinds() -> Vec<ErrorKind> {
                [$( answers!(@kinds $($how)*) ),+].concat()
            }

            fn into_rpc(self) -> RpcError {
                let (message, cause) = (self.to_string(), self.cause());
                match self {
                    $( $pat => answers!(@answer message cause $($how)*), )+
                }
            }
        }
    };
}

/// `error.data` naming a remote device.
fn device(jid: &str, namespace: Version, device_id: u32) -> Value {
    json!({"jid": jid, "namespace": namespace.namespace(), "device_id": device_id})
}

/// `error.data` of `no_bundle`: the device and where its bundle is published.
fn bundle_location(jid: &str, namespace: Version, device_id: u32) -> Value {
    let (node, item_id) = namespace.bundle_node(device_id);
    json!({
        "jid": jid, "namespace": namespace.namespace(), "device_id": device_id,
        "node": node, "item_id": item_id,
    })
}

/// `error.data` of `transfer_out_of_order`: the call and offset the transfer takes next.
fn expected_call(next: Next, offset: u64) -> Value {
    let method = match next {
        Next::EncryptChunk => file::FileEncryptChunk::NAME,
        Next::EncryptFinish => file::FileEncryptFinish::NAME,
        Next::DecryptCheck => file::FileDecryptCheck::NAME,
        Next::DecryptRead => file::FileDecryptRead::NAME,
    };
    json!({"expected_method": method, "expected_offset": offset})
}

/// `error.data` naming a remote device, with what starts a new session with it.
fn device_actions(
    jid: &str,
    namespace: Version,
    device_id: u32,
    actions: &[crate::events::Action],
) -> Value {
    let mut data = device(jid, namespace, device_id);
    data["actions"] = json!(actions);
    data
}

/// `error.data` of an error that says how to start a new session: `actions`, when there are.
fn new_session(actions: &[crate::events::Action]) -> Value {
    match actions {
        [] => json!({}),
        _ => json!({ "actions": actions }),
    }
}

/// The database failed: logged here, where it is answered.
impl MethodError for StorageError {
    fn kinds() -> Vec<ErrorKind> {
        vec![ErrorKind::StorageError]
    }

    fn into_rpc(self) -> RpcError {
        tracing::error!(error = %self, "storage failure");
        RpcError::new(ErrorKind::StorageError, format!("storage: {self}")).with_cause(self.cause())
    }
}

answers!(crate::rpc::methods::unlock::UnlockError {
    crate::rpc::methods::unlock::UnlockError::WrongPassphrase => [WrongPassphrase],
    crate::rpc::methods::unlock::UnlockError::Storage(e) => [via e: StorageError],
});

answers!(InvalidJid {
    InvalidJid { .. } => [InvalidJid],
});

answers!(AccountLookupError {
    AccountLookupError::Jid(e) => [via e: InvalidJid],
    AccountLookupError::Unknown(_) => [UnknownAccount],
    AccountLookupError::NoneYet | AccountLookupError::Several => [AccountRequired],
});

answers!(RecipientsError {
    RecipientsError::Jid(e) => [via e: InvalidJid],
    RecipientsError::NoRecipient | RecipientsError::NoNamespace => [InvalidParams],
});

answers!(DeviceIdError {
    DeviceIdError::TooManyAvoided { .. }
    | DeviceIdError::AvoidedOutOfRange(_)
    | DeviceIdError::NoneFree => [InvalidParams],
});

answers!(InvalidFingerprint {
    InvalidFingerprint => [InvalidParams],
});

answers!(ChangedIdentity {
    ChangedIdentity { jid, namespace, device_id, old_fingerprint, new_fingerprint } => [IdentityChanged, json!({
        "jid": jid, "namespace": namespace.namespace(), "device_id": device_id,
        "old_fingerprint": old_fingerprint, "new_fingerprint": new_fingerprint,
    })],
});

answers!(RateLimited {
    RateLimited { retry_after_secs } => [RateLimited, json!({"retry_after_secs": retry_after_secs})],
});

answers!(CreateAccountError {
    CreateAccountError::Jid(e) => [via e: InvalidJid],
    CreateAccountError::Exists(_) => [AccountExists],
    CreateAccountError::DeviceId(e) => [via e: DeviceIdError],
    CreateAccountError::Storage(e) => [via e: StorageError],
});

answers!(DeleteAccountError {
    DeleteAccountError::Jid(e) => [via e: InvalidJid],
    DeleteAccountError::Unknown(_) => [UnknownAccount],
    DeleteAccountError::Storage(e) => [via e: StorageError],
});

answers!(RenewDeviceIdError {
    RenewDeviceIdError::Account(e) => [via e: AccountLookupError],
    RenewDeviceIdError::DeviceId(e) => [via e: DeviceIdError],
    RenewDeviceIdError::Storage(e) => [via e: StorageError],
});

answers!(OwnBundleError {
    OwnBundleError::Account(e) => [via e: AccountLookupError],
    OwnBundleError::NoSignedPreKey => [BrokenSession],
    OwnBundleError::Storage(e) => [via e: StorageError],
});
answers!(OwnDevicelistError {
    OwnDevicelistError::Account(e) => [via e: AccountLookupError],
    OwnDevicelistError::Storage(e) => [via e: StorageError],
});

answers!(StoredBundleError {
    StoredBundleError::NotUtf8
    | StoredBundleError::Invalid(_)
    | StoredBundleError::ParserFailed => [InvalidBundle],
    StoredBundleError::Storage(e) => [via e: StorageError],
});

answers!(BundleUpdateError {
    BundleUpdateError::Jid(e) => [via e: InvalidJid],
    BundleUpdateError::Account(e) => [via e: AccountLookupError],
    BundleUpdateError::DeviceIdOutOfRange(_) => [InvalidParams],
    BundleUpdateError::Malformed(_)
    | BundleUpdateError::Invalid(_)
    | BundleUpdateError::ParserFailed => [InvalidBundle],
    BundleUpdateError::InvalidSignature(_) => [InvalidSignature],
    BundleUpdateError::Storage(e) => [via e: StorageError],
});

answers!(DevicelistError {
    DevicelistError::Jid(e) => [via e: InvalidJid],
    DevicelistError::Account(e) => [via e: AccountLookupError],
    DevicelistError::Malformed(_) | DevicelistError::ParserFailed => [InvalidDevicelist],
    DevicelistError::TooManyDevices { count, max } => [TooManyDevices, json!({"count": count, "max": max})],
    DevicelistError::Storage(e) => [via e: StorageError],
});

answers!(EncryptError {
    EncryptError::Account(e) => [via e: AccountLookupError],
    EncryptError::Recipients(e) => [via e: RecipientsError],
    EncryptError::SceTo(e) => [via e: InvalidJid],
    EncryptError::SceToRequired | EncryptError::IdempotencyKeyLength { .. } => [InvalidParams],
    EncryptError::IdempotencyKeyReused => [IdempotencyKeyReused],
    EncryptError::TooLarge(e) => [MessageTooLarge, json!({
        "namespace": e.namespace.namespace(), "bytes": e.bytes, "keys": e.keys,
        "max_bytes": e.max_bytes, "max_keys": e.max_keys,
    })],
    EncryptError::NoDeviceReached { devices, actions } => [NoDeviceReached, json!({"devices": devices, "actions": actions})],
    EncryptError::Storage(e) => [via e: StorageError],
});

answers!(HeartbeatError {
    HeartbeatError::Jid(e) => [via e: InvalidJid],
    HeartbeatError::Account(e) => [via e: AccountLookupError],
    HeartbeatError::NoBundle { jid, namespace, device_id } => [NoBundle, bundle_location(&jid, namespace, device_id)],
    HeartbeatError::NotEncrypted(_) => [BrokenSession],
    HeartbeatError::UnknownDevice { jid, namespace, device_id } => [UnknownDevice, device(&jid, namespace, device_id)],
    HeartbeatError::IdentityChanged(e) => [via e: ChangedIdentity],
    HeartbeatError::Storage(e) => [via e: StorageError],
});

answers!(ReplaceSessionError {
    ReplaceSessionError::Message(e) => [via e: HeartbeatError],
    ReplaceSessionError::RateLimited(e) => [via e: RateLimited],
});

answers!(PlanError {
    PlanError::Account(e) => [via e: AccountLookupError],
    PlanError::Recipients(e) => [via e: RecipientsError],
    PlanError::Storage(e) => [via e: StorageError],
});

answers!(DecryptError {
    DecryptError::Jid(e) => [via e: InvalidJid],
    DecryptError::Account(e) => [via e: AccountLookupError],
    DecryptError::Unreadable(_)
    | DecryptError::InvalidElement(_)
    | DecryptError::Malformed(_)
    | DecryptError::NotUtf8(_)
    | DecryptError::InvalidEnvelope(_) => [InvalidMessage],
    DecryptError::NotForThisDevice { recipients } => [NotForThisDevice, json!({"recipients": recipients})],
    DecryptError::AuthenticationFailed
    | DecryptError::Payload(_)
    | DecryptError::OwnMessageAltered => [AuthenticationFailed],
    DecryptError::DuplicateMessage => [DuplicateMessage],
    DecryptError::TooManySkipped(_) => [TooManySkipped],
    DecryptError::NoSession { jid, namespace, device_id } => [NoSession, device(&jid, namespace, device_id)],
    DecryptError::UnknownSignedPreKey { actions, .. }
    | DecryptError::PreKeyUnavailable { actions, .. } => [BrokenSession, new_session(&actions)],
    DecryptError::LostState(_) => [BrokenSession],
    DecryptError::PossibleReplay { jid, namespace, device_id, actions } => [PossibleReplay, device_actions(&jid, namespace, device_id, &actions)],
    DecryptError::RestoredSession { jid, namespace, device_id, actions, .. } => [BrokenSession, device_actions(&jid, namespace, device_id, &actions)],
    DecryptError::Distrusted => [Distrusted],
    DecryptError::IdentityChanged(e) => [via e: ChangedIdentity],
    DecryptError::RateLimited(e) => [via e: RateLimited],
    DecryptError::SceMismatch(_) => [SceMismatch],
    DecryptError::SenderMismatch { from, owner, namespace, device_id } => [SenderMismatch, json!({
        "from": from, "jid": owner, "namespace": namespace.namespace(), "device_id": device_id,
    })],
    DecryptError::UnlistedDevice { jid, namespace, device_id, actions } => [UnlistedDevice, json!({
        "jid": jid, "namespace": namespace.namespace(), "device_id": device_id, "actions": actions,
    })],
    DecryptError::UnknownOwnMessage => [UnknownOwnMessage],
    DecryptError::Storage(e) => [via e: StorageError],
});

answers!(ListError {
    ListError::Jid(e) => [via e: InvalidJid],
    ListError::Account(e) => [via e: AccountLookupError],
    ListError::Storage(e) => [via e: StorageError],
});

answers!(TrustError {
    TrustError::Jid(e) => [via e: InvalidJid],
    TrustError::Account(e) => [via e: AccountLookupError],
    TrustError::Fingerprint(e) => [via e: InvalidFingerprint],
    TrustError::Storage(e) => [via e: StorageError],
});

answers!(CatchupError {
    CatchupError::Account(e) => [via e: AccountLookupError],
    CatchupError::Storage(e) => [via e: StorageError],
});

answers!(IdentityError {
    IdentityError::Jid(e) => [via e: InvalidJid],
    IdentityError::Account(e) => [via e: AccountLookupError],
    IdentityError::Fingerprint(e) => [via e: InvalidFingerprint],
    IdentityError::SetAsideBundle(e) => [via e: StoredBundleError],
    IdentityError::Storage(e) => [via e: StorageError],
});

answers!(LabelError {
    LabelError::Account(e) => [via e: AccountLookupError],
    LabelError::TooLong { chars, max } => [InvalidLabel, json!({"chars": chars, "max_chars": max})],
    LabelError::ControlCharacter => [InvalidLabel],
    LabelError::Storage(e) => [via e: StorageError],
});

answers!(OwnLinkError {
    OwnLinkError::Account(e) => [via e: AccountLookupError],
    OwnLinkError::Storage(e) => [via e: StorageError],
});

answers!(LinkError {
    LinkError::Account(e) => [via e: AccountLookupError],
    LinkError::Invalid(_) => [InvalidLink],
    LinkError::Jid(e) => [via e: InvalidJid],
    LinkError::Mismatch { jid, keys } => [LinkMismatch, json!({"jid": jid, "keys": keys})],
    LinkError::UnknownDevice { jid, keys } => [LinkUnknownDevice, json!({"jid": jid, "keys": keys})],
    LinkError::Storage(e) => [via e: StorageError],
});

answers!(SubscribeError {
    SubscribeError::NoConnection | SubscribeError::Closing => [Internal],
    SubscribeError::TooMany { max } => [TooManySubscriptions, json!({"max": max})],
});

answers!(UnsubscribeError {
    UnsubscribeError::Unknown { subscription } => [UnknownSubscription, json!({"subscription": subscription})],
});

answers!(AesgcmLinkError {
    AesgcmLinkError::WrongScheme
    | AesgcmLinkError::Malformed
    | AesgcmLinkError::NoKey
    | AesgcmLinkError::KeyLength { .. }
    | AesgcmLinkError::NotHex
    | AesgcmLinkError::NotHttps
    | AesgcmLinkError::UrlHasFragment => [InvalidAesgcmLink],
});

answers!(LimitError {
    LimitError::TooLarge { max, .. } => [FileTooLarge, json!({"max_bytes": max})],
    LimitError::TooManyOnConnection { max } => [TooManyTransfers, json!({"max": max, "per_connection": true})],
    LimitError::TooMany { max } => [TooManyTransfers, json!({"max": max, "per_connection": false})],
});

answers!(EncryptBeginError {
    EncryptBeginError::Url(e) => [via e: AesgcmLinkError],
    EncryptBeginError::Limit(e) => [via e: LimitError],
});

answers!(DecryptBeginError {
    DecryptBeginError::Link(e) => [via e: AesgcmLinkError],
    DecryptBeginError::Truncated { .. } => [FileTruncated],
    DecryptBeginError::Limit(e) => [via e: LimitError],
});

answers!(ChunkError {
    ChunkError::UnknownTransfer { transfer } => [UnknownTransfer, json!({"transfer": transfer})],
    ChunkError::OutOfOrder { next, offset, .. } => [TransferOutOfOrder, expected_call(next, offset)],
    ChunkError::Busy { .. } => [TransferOutOfOrder],
    ChunkError::Length { expected, .. } => [InvalidParams, json!({"expected_length": expected})],
});

answers!(CheckError {
    CheckError::Chunk(e) => [via e: ChunkError],
    CheckError::AuthenticationFailed => [AuthenticationFailed],
});

answers!(OpenError {
    OpenError::Chunk(e) => [via e: ChunkError],
    OpenError::Changed { offset } => [FileChanged, json!({"offset": offset})],
});

answers!(CancelError {
    CancelError::UnknownTransfer { transfer } => [UnknownTransfer, json!({"transfer": transfer})],
});

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_core::double_ratchet::RatchetError;
    use protocol_core::session::SessionError;
    use protocol_core::wire::WireError;

    fn answer<E: MethodError>(e: E) -> (ErrorKind, Value) {
        let r = e.into_rpc();
        (r.kind, r.data_object())
    }

    #[test]
    fn each_error_says_its_cause() {
        let (kind, data) = answer(DecryptError::Malformed(SessionError::Malformed(
            WireError::BadVersion { found: 9 },
        )));
        assert_eq!(kind, ErrorKind::InvalidMessage);
        assert_eq!(data["cause"], "incompatible");
        let (kind, data) = answer(DecryptError::AuthenticationFailed);
        assert_eq!(kind, ErrorKind::AuthenticationFailed);
        assert_eq!(data["cause"], "peer_misbehaved");
        // The same kind, two causes: a message too far ahead is the peer's, a key we dropped ours.
        let (kind, data) = answer(DecryptError::TooManySkipped(RatchetError::TooManySkipped(
            9,
        )));
        assert_eq!(
            (kind, &data["cause"]),
            (ErrorKind::TooManySkipped, &json!("peer_misbehaved"))
        );
        let (kind, data) = answer(DecryptError::TooManySkipped(
            RatchetError::MessageKeyDropped(3),
        ));
        assert_eq!(
            (kind, &data["cause"]),
            (ErrorKind::TooManySkipped, &json!("local_state"))
        );
        let (_, data) = answer(DecryptError::Distrusted);
        assert_eq!(data["cause"], "policy");
        let (kind, data) = answer(DecryptError::Account(AccountLookupError::Several));
        assert_eq!(
            (kind, &data["cause"]),
            (ErrorKind::AccountRequired, &json!("request"))
        );
        let (kind, data) = answer(EncryptError::Storage(StorageError::Closed));
        assert_eq!(
            (kind, &data["cause"]),
            (ErrorKind::StorageError, &json!("local_state"))
        );
    }

    #[test]
    fn nested_errors_keep_their_kind_and_data() {
        let e = ReplaceSessionError::RateLimited(RateLimited {
            retry_after_secs: 42,
        });
        let (kind, data) = answer(e);
        assert_eq!(kind, ErrorKind::RateLimited);
        assert_eq!(data["retry_after_secs"], 42);
        assert_eq!(data["cause"], "policy");
        let e = ReplaceSessionError::Message(HeartbeatError::NoBundle {
            jid: "b@x".into(),
            namespace: Version::Twomemo,
            device_id: 7,
        });
        let (kind, data) = answer(e);
        assert_eq!(kind, ErrorKind::NoBundle);
        assert_eq!(data["item_id"], "7");
        assert!(ReplaceSessionError::kinds().contains(&ErrorKind::NoBundle));
        assert!(ReplaceSessionError::kinds().contains(&ErrorKind::RateLimited));
    }

    #[test]
    fn messages_show_no_rust_debug_forms() {
        let messages = [
            InvalidJid::diagnose("not a jid").into_rpc().message,
            DecryptError::NotForThisDevice {
                recipients: vec![3, 4],
            }
            .into_rpc()
            .message,
            DecryptError::NotForThisDevice { recipients: vec![] }
                .into_rpc()
                .message,
            EncryptError::IdempotencyKeyReused.into_rpc().message,
        ];
        for m in &messages {
            assert!(
                !m.contains('"') && !m.contains('[') && !m.contains("Some("),
                "{m}"
            );
        }
        assert!(
            messages[1].ends_with("(it is for devices 3, 4)"),
            "{}",
            messages[1]
        );
    }
}
