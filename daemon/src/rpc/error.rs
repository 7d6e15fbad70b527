//! The one table of RPC errors: every error a client can see has a stable numeric `code` and a stable
//! snake_case `kind` string (sent as `error.data.kind`). Clients should switch on `kind`.
//!
//! Ranges:
//! - `-32700 … -32600`: the standard JSON-RPC 2.0 codes.
//! - `-32000 … -32099`: server and transport errors of omemod (JSON-RPC's "server error" range).
//! - `1000 …`: domain errors, grouped by hundreds: 1000 accounts, 1100 devices/bundles,
//!   1200 sessions/messages, 1300 trust, 1400 storage, 1500 bounds, 1600 files.
//!
//! Every error also says whom it is due to, as `error.data.cause` (protocol-core's
//! [`ErrorCause`]): a kind has a usual cause ([`ErrorKind::cause`]), and a session-manager error
//! gives its own (an invalid bundle we stored is our state, one just received the peer's).
//!
//! A method answers the errors of its operation's enum ([`MethodError`]: the kinds come from
//! the enum's variants, `rpc::methods::convert`), and besides only the standard ones
//! ([`CallError`]). Adding a kind means adding a variant here, to [`ErrorKind::ALL`], and a
//! row in `docs/rpc.md`.

use protocol_core::error::ErrorCause;
use serde::Serialize;
use serde_json::{Map, Value};

/// Every error kind the RPC interface can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    // --- JSON-RPC 2.0 standard ---
    /// The line is not valid JSON.
    ParseError,
    /// Valid JSON, but not a JSON-RPC 2.0 request object (or an empty batch).
    InvalidRequest,
    /// No method of that name.
    MethodNotFound,
    /// The params do not match the method's schema.
    InvalidParams,
    /// A bug or an unexpected failure inside omemod.
    Internal,

    // --- server / transport (-32000 … -32099) ---
    /// The request line exceeded the configured size limit; the line was discarded.
    RequestTooLarge,
    /// The response exceeded the configured size limit.
    ResponseTooLarge,
    /// The peer's uid is not the daemon's uid; the connection is closed.
    Unauthorized,
    /// The connection already has the maximum number of subscriptions.
    TooManySubscriptions,
    /// `unsubscribe` named a subscription this connection does not have.
    UnknownSubscription,
    /// The daemon has `--max-connections` busy connections; this one was refused, or it was the
    /// longest idle and was closed to make room.
    TooManyConnections,
    /// A request line was not completed within `--partial-line-timeout`; the connection is closed.
    LineTimeout,

    // --- accounts (1000s) ---
    /// No account with that JID.
    UnknownAccount,
    /// An account with that JID already exists.
    AccountExists,
    /// Several accounts exist; the request must name one.
    AccountRequired,
    /// The string is not a valid bare JID.
    InvalidJid,
    /// `account.set_label`: the label is too long or holds control characters.
    InvalidLabel,

    // --- devices and bundles (1100s) ---
    /// The peer device is not known.
    UnknownDevice,
    /// No bundle is stored for the device.
    NoBundle,
    /// The bundle is malformed.
    InvalidBundle,
    /// The signed pre-key's signature does not verify.
    InvalidSignature,
    /// The device list is malformed.
    InvalidDevicelist,
    /// A group chat message from a device that is not on its sender's device list.
    UnlistedDevice,

    // --- sessions and messages (1200s) ---
    /// No session with the device.
    NoSession,
    /// The message carries no key for our device.
    NotForThisDevice,
    /// The message was already decrypted (replay).
    DuplicateMessage,
    /// The message is malformed.
    InvalidMessage,
    /// Message authentication failed (bad MAC or tag).
    AuthenticationFailed,
    /// The message skips more message keys than allowed.
    TooManySkipped,
    /// The session cannot continue; it must be rebuilt.
    BrokenSession,
    /// An `idempotency_key` was used before for a different request.
    IdempotencyKeyReused,
    /// Too many session replacements for one device; retry after `data.retry_after_secs`.
    RateLimited,
    /// The OMEMO 2 SCE envelope names another sender or conversation than the stanza (our own
    /// message: read in another conversation than it was sent in).
    SceMismatch,
    /// The `<encrypted>` element would be larger than `decrypt` accepts.
    MessageTooLarge,
    /// The message comes from a device of another JID than the request's `from`.
    SenderMismatch,
    /// `encrypt`: no device of the recipients could be encrypted for (`data.devices` says why
    /// for each, `data.actions` what to fetch).
    NoDeviceReached,
    /// Our own message (this device's id and JID), but not one this device keeps.
    UnknownOwnMessage,
    /// The message decrypts on a session restored from an older copy of the database: it may be
    /// a replay; refused, and a new session is started (`data.actions`).
    PossibleReplay,

    // --- trust (1300s) ---
    /// The device is not (yet) trusted.
    Untrusted,
    /// The device is explicitly distrusted.
    Distrusted,
    /// A key exchange carries another identity than the one held for the device.
    IdentityChanged,
    /// `link.verify`: a key of the link differs from the one held for its device.
    LinkMismatch,
    /// `link.verify`: the link names a device (or key) not known yet.
    LinkUnknownDevice,
    /// `link.verify`: the text is not a verification link.
    InvalidLink,

    // --- storage (1400s) ---
    /// The database failed.
    StorageError,
    /// The daemon is locked: its database's key is a passphrase, not given yet (`unlock`).
    Locked,
    /// `unlock`: the passphrase does not open the database's key.
    WrongPassphrase,

    // --- bounds (1500s) ---
    /// A device list has more devices than a contact may have.
    TooManyDevices,

    // --- files (1600s) ---
    /// An `aesgcm://` link (or its key fragment, or an upload URL) is malformed.
    InvalidAesgcmLink,
    /// A downloaded file is shorter than its tag.
    FileTruncated,
    /// A file is larger than `--max-file-bytes`.
    FileTooLarge,
    /// No file transfer with that id on this connection.
    UnknownTransfer,
    /// Too many file transfers open on this connection or in the daemon.
    TooManyTransfers,
    /// A file transfer expects another call (or offset) next.
    TransferOutOfOrder,
    /// A chunk of the second decryption pass differs from the one checked.
    FileChanged,
}

impl ErrorKind {
    /// Every kind, in table order.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::ParseError,
        ErrorKind::InvalidRequest,
        ErrorKind::MethodNotFound,
        ErrorKind::InvalidParams,
        ErrorKind::Internal,
        ErrorKind::RequestTooLarge,
        ErrorKind::ResponseTooLarge,
        ErrorKind::Unauthorized,
        ErrorKind::TooManySubscriptions,
        ErrorKind::UnknownSubscription,
        ErrorKind::TooManyConnections,
        ErrorKind::LineTimeout,
        ErrorKind::UnknownAccount,
        ErrorKind::AccountExists,
        ErrorKind::AccountRequired,
        ErrorKind::InvalidJid,
        ErrorKind::InvalidLabel,
        ErrorKind::UnknownDevice,
        ErrorKind::NoBundle,
        ErrorKind::InvalidBundle,
        ErrorKind::InvalidSignature,
        ErrorKind::InvalidDevicelist,
        ErrorKind::UnlistedDevice,
        ErrorKind::NoSession,
        ErrorKind::NotForThisDevice,
        ErrorKind::DuplicateMessage,
        ErrorKind::InvalidMessage,
        ErrorKind::AuthenticationFailed,
        ErrorKind::TooManySkipped,
        ErrorKind::BrokenSession,
        ErrorKind::IdempotencyKeyReused,
        ErrorKind::RateLimited,
        ErrorKind::SceMismatch,
        ErrorKind::MessageTooLarge,
        ErrorKind::SenderMismatch,
        ErrorKind::NoDeviceReached,
        ErrorKind::UnknownOwnMessage,
        ErrorKind::PossibleReplay,
        ErrorKind::Untrusted,
        ErrorKind::Distrusted,
        ErrorKind::IdentityChanged,
        ErrorKind::LinkMismatch,
        ErrorKind::LinkUnknownDevice,
        ErrorKind::InvalidLink,
        ErrorKind::StorageError,
        ErrorKind::Locked,
        ErrorKind::WrongPassphrase,
        ErrorKind::TooManyDevices,
        ErrorKind::InvalidAesgcmLink,
        ErrorKind::FileTruncated,
        ErrorKind::FileTooLarge,
        ErrorKind::UnknownTransfer,
        ErrorKind::TooManyTransfers,
        ErrorKind::TransferOutOfOrder,
        ErrorKind::FileChanged,
    ];

    /// The JSON-RPC `error.code`.
    pub const fn code(self) -> i32 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::Internal => -32603,
            ErrorKind::RequestTooLarge => -32001,
            ErrorKind::ResponseTooLarge => -32002,
            ErrorKind::Unauthorized => -32003,
            ErrorKind::TooManySubscriptions => -32004,
            ErrorKind::UnknownSubscription => -32005,
            ErrorKind::TooManyConnections => -32006,
            ErrorKind::LineTimeout => -32007,
            ErrorKind::UnknownAccount => 1001,
            ErrorKind::AccountExists => 1002,
            ErrorKind::AccountRequired => 1003,
            ErrorKind::InvalidJid => 1004,
            ErrorKind::InvalidLabel => 1005,
            ErrorKind::UnknownDevice => 1101,
            ErrorKind::NoBundle => 1102,
            ErrorKind::InvalidBundle => 1103,
            ErrorKind::InvalidSignature => 1104,
            ErrorKind::InvalidDevicelist => 1105,
            ErrorKind::UnlistedDevice => 1106,
            ErrorKind::NoSession => 1201,
            ErrorKind::NotForThisDevice => 1202,
            ErrorKind::DuplicateMessage => 1203,
            ErrorKind::InvalidMessage => 1204,
            ErrorKind::AuthenticationFailed => 1205,
            ErrorKind::TooManySkipped => 1206,
            ErrorKind::BrokenSession => 1207,
            ErrorKind::IdempotencyKeyReused => 1220,
            ErrorKind::RateLimited => 1208,
            ErrorKind::SceMismatch => 1209,
            ErrorKind::MessageTooLarge => 1210,
            ErrorKind::SenderMismatch => 1211,
            ErrorKind::NoDeviceReached => 1212,
            ErrorKind::UnknownOwnMessage => 1213,
            ErrorKind::PossibleReplay => 1230,
            ErrorKind::Untrusted => 1301,
            ErrorKind::Distrusted => 1302,
            ErrorKind::IdentityChanged => 1303,
            ErrorKind::LinkMismatch => 1304,
            ErrorKind::LinkUnknownDevice => 1305,
            ErrorKind::InvalidLink => 1306,
            ErrorKind::StorageError => 1401,
            ErrorKind::Locked => 1402,
            ErrorKind::WrongPassphrase => 1403,
            ErrorKind::TooManyDevices => 1500,
            ErrorKind::InvalidAesgcmLink => 1601,
            ErrorKind::FileTruncated => 1602,
            ErrorKind::FileTooLarge => 1603,
            ErrorKind::UnknownTransfer => 1604,
            ErrorKind::TooManyTransfers => 1605,
            ErrorKind::TransferOutOfOrder => 1606,
            ErrorKind::FileChanged => 1607,
        }
    }

    /// The stable string sent as `error.data.kind`.
    pub const fn kind(self) -> &'static str {
        match self {
            ErrorKind::ParseError => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotFound => "method_not_found",
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::Internal => "internal",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::TooManySubscriptions => "too_many_subscriptions",
            ErrorKind::UnknownSubscription => "unknown_subscription",
            ErrorKind::TooManyConnections => "too_many_connections",
            ErrorKind::LineTimeout => "line_timeout",
            ErrorKind::UnknownAccount => "unknown_account",
            ErrorKind::AccountExists => "account_exists",
            ErrorKind::AccountRequired => "account_required",
            ErrorKind::InvalidJid => "invalid_jid",
            ErrorKind::InvalidLabel => "invalid_label",
            ErrorKind::UnknownDevice => "unknown_device",
            ErrorKind::NoBundle => "no_bundle",
            ErrorKind::InvalidBundle => "invalid_bundle",
            ErrorKind::InvalidSignature => "invalid_signature",
            ErrorKind::InvalidDevicelist => "invalid_devicelist",
            ErrorKind::UnlistedDevice => "unlisted_device",
            ErrorKind::NoSession => "no_session",
            ErrorKind::NotForThisDevice => "not_for_this_device",
            ErrorKind::DuplicateMessage => "duplicate_message",
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::AuthenticationFailed => "authentication_failed",
            ErrorKind::TooManySkipped => "too_many_skipped",
            ErrorKind::BrokenSession => "broken_session",
            ErrorKind::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::SceMismatch => "sce_mismatch",
            ErrorKind::MessageTooLarge => "message_too_large",
            ErrorKind::SenderMismatch => "sender_mismatch",
            ErrorKind::NoDeviceReached => "no_device_reached",
            ErrorKind::UnknownOwnMessage => "unknown_own_message",
            ErrorKind::PossibleReplay => "possible_replay",
            ErrorKind::Untrusted => "untrusted",
            ErrorKind::Distrusted => "distrusted",
            ErrorKind::IdentityChanged => "identity_changed",
            ErrorKind::LinkMismatch => "link_mismatch",
            ErrorKind::LinkUnknownDevice => "link_unknown_device",
            ErrorKind::InvalidLink => "invalid_link",
            ErrorKind::StorageError => "storage_error",
            ErrorKind::Locked => "locked",
            ErrorKind::WrongPassphrase => "wrong_passphrase",
            ErrorKind::TooManyDevices => "too_many_devices",
            ErrorKind::InvalidAesgcmLink => "invalid_aesgcm_link",
            ErrorKind::FileTruncated => "file_truncated",
            ErrorKind::FileTooLarge => "file_too_large",
            ErrorKind::UnknownTransfer => "unknown_transfer",
            ErrorKind::TooManyTransfers => "too_many_transfers",
            ErrorKind::TransferOutOfOrder => "transfer_out_of_order",
            ErrorKind::FileChanged => "file_changed",
        }
    }

    /// Whom an error of this kind is usually due to; a session-manager error says its own.
    /// `incompatible` is no kind's usual cause: a peer's unknown version or namespace is an
    /// `invalid_message` (or `invalid_bundle`) whose cause says so.
    pub const fn cause(self) -> ErrorCause {
        use ErrorCause::{LocalState, PeerMisbehaved, Policy, Request};
        match self {
            ErrorKind::ParseError
            | ErrorKind::InvalidRequest
            | ErrorKind::MethodNotFound
            | ErrorKind::InvalidParams
            | ErrorKind::RequestTooLarge
            | ErrorKind::ResponseTooLarge
            | ErrorKind::UnknownSubscription
            | ErrorKind::LineTimeout
            | ErrorKind::UnknownAccount
            | ErrorKind::AccountExists
            | ErrorKind::AccountRequired
            | ErrorKind::InvalidJid
            | ErrorKind::InvalidLabel
            | ErrorKind::InvalidLink
            | ErrorKind::SenderMismatch
            | ErrorKind::IdempotencyKeyReused
            | ErrorKind::WrongPassphrase
            | ErrorKind::MessageTooLarge
            | ErrorKind::UnknownTransfer
            | ErrorKind::TransferOutOfOrder
            | ErrorKind::FileChanged => Request,
            ErrorKind::Internal
            | ErrorKind::UnknownDevice
            | ErrorKind::NoBundle
            | ErrorKind::NoSession
            | ErrorKind::NotForThisDevice
            | ErrorKind::LinkUnknownDevice
            | ErrorKind::BrokenSession
            | ErrorKind::UnknownOwnMessage
            | ErrorKind::PossibleReplay
            | ErrorKind::Locked
            | ErrorKind::StorageError => LocalState,
            ErrorKind::InvalidBundle
            | ErrorKind::InvalidSignature
            | ErrorKind::InvalidDevicelist
            | ErrorKind::DuplicateMessage
            | ErrorKind::InvalidMessage
            | ErrorKind::AuthenticationFailed
            | ErrorKind::TooManySkipped
            | ErrorKind::SceMismatch
            | ErrorKind::LinkMismatch
            | ErrorKind::TooManyDevices
            | ErrorKind::InvalidAesgcmLink
            | ErrorKind::FileTruncated => PeerMisbehaved,
            ErrorKind::Unauthorized
            | ErrorKind::TooManySubscriptions
            | ErrorKind::TooManyConnections
            | ErrorKind::RateLimited
            | ErrorKind::NoDeviceReached
            | ErrorKind::Untrusted
            | ErrorKind::Distrusted
            | ErrorKind::IdentityChanged
            | ErrorKind::UnlistedDevice
            | ErrorKind::FileTooLarge
            | ErrorKind::TooManyTransfers => Policy,
        }
    }

    /// A short default message, used when the caller gives none and in the OpenRPC document.
    pub const fn default_message(self) -> &'static str {
        match self {
            ErrorKind::ParseError => "parse error",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::MethodNotFound => "method not found",
            ErrorKind::InvalidParams => "invalid params",
            ErrorKind::Internal => "internal error",
            ErrorKind::RequestTooLarge => "request too large",
            ErrorKind::ResponseTooLarge => "response too large",
            ErrorKind::Unauthorized => "unauthorized: peer uid differs from the daemon's",
            ErrorKind::TooManySubscriptions => "too many subscriptions on this connection",
            ErrorKind::UnknownSubscription => "unknown subscription",
            ErrorKind::TooManyConnections => "too many connections",
            ErrorKind::LineTimeout => "request line not completed in time",
            ErrorKind::UnknownAccount => "unknown account",
            ErrorKind::AccountExists => "account already exists",
            ErrorKind::AccountRequired => "several accounts exist; name one",
            ErrorKind::InvalidJid => "invalid JID",
            ErrorKind::InvalidLabel => "invalid device label",
            ErrorKind::UnknownDevice => "unknown device",
            ErrorKind::NoBundle => "no bundle for the device",
            ErrorKind::InvalidBundle => "invalid bundle",
            ErrorKind::InvalidSignature => "invalid signed pre-key signature",
            ErrorKind::InvalidDevicelist => "invalid device list",
            ErrorKind::UnlistedDevice => "device not on its owner's device list",
            ErrorKind::NoSession => "no session with the device",
            ErrorKind::NotForThisDevice => "message not encrypted for this device",
            ErrorKind::DuplicateMessage => "duplicate message",
            ErrorKind::InvalidMessage => "invalid message",
            ErrorKind::AuthenticationFailed => "message authentication failed",
            ErrorKind::TooManySkipped => "too many skipped messages",
            ErrorKind::BrokenSession => "broken session",
            ErrorKind::IdempotencyKeyReused => "idempotency key used for another request",
            ErrorKind::RateLimited => "too many session replacements; retry later",
            ErrorKind::SceMismatch => "SCE envelope does not match the stanza",
            ErrorKind::MessageTooLarge => "message too large to decrypt",
            ErrorKind::SenderMismatch => "the message comes from another JID than `from`",
            ErrorKind::NoDeviceReached => "no device of the recipients can be encrypted for",
            ErrorKind::UnknownOwnMessage => "our own message, not kept",
            ErrorKind::PossibleReplay => "possible replay on a session restored from an older copy",
            ErrorKind::Untrusted => "device not trusted",
            ErrorKind::Distrusted => "device distrusted",
            ErrorKind::IdentityChanged => "identity key of the device changed",
            ErrorKind::LinkMismatch => "the verification link does not match the keys held",
            ErrorKind::LinkUnknownDevice => "the verification link names unknown devices",
            ErrorKind::InvalidLink => "not a verification link",
            ErrorKind::StorageError => "storage error",
            ErrorKind::Locked => "the daemon is locked",
            ErrorKind::WrongPassphrase => "wrong passphrase",
            ErrorKind::TooManyDevices => "too many devices in the list",
            ErrorKind::InvalidAesgcmLink => "malformed aesgcm link",
            ErrorKind::FileTruncated => "file shorter than its tag",
            ErrorKind::FileTooLarge => "file too large",
            ErrorKind::UnknownTransfer => "unknown file transfer",
            ErrorKind::TooManyTransfers => "too many file transfers",
            ErrorKind::TransferOutOfOrder => "file transfer expects another call",
            ErrorKind::FileChanged => "file changed between the two passes",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// An error answered to a client: a kind, a human-readable message, whom it is due to, and
/// optional extra data.
///
/// The message is for people; it must never contain key material or plaintext.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RpcError {
    /// What went wrong, as a stable code and string.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
    /// Whom it is due to (`error.data.cause`).
    pub cause: ErrorCause,
    /// Extra structured data. An object's fields are merged into `error.data` next to `kind`;
    /// any other value is sent as `error.data.detail`.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error of `kind` with a message, due to the kind's usual cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            cause: kind.cause(),
            data: None,
        }
    }

    /// Adds structured data.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Says whom the error is due to, instead of the kind's usual cause.
    #[must_use]
    pub fn with_cause(mut self, cause: ErrorCause) -> Self {
        self.cause = cause;
        self
    }

    /// `invalid_params` with a message.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParams, message)
    }

    /// `internal` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The `error.data` object: `{"kind": …, "cause": …, …extra}`.
    pub fn data_object(&self) -> Value {
        let mut obj = Map::new();
        match &self.data {
            Some(Value::Object(extra)) => {
                for (k, v) in extra {
                    if k != "kind" && k != "cause" {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
            Some(other) => {
                obj.insert("detail".to_owned(), other.clone());
            }
            None => {}
        }
        obj.insert(
            "cause".to_owned(),
            Value::String(self.cause.name().to_owned()),
        );
        obj.insert(
            "kind".to_owned(),
            Value::String(self.kind.kind().to_owned()),
        );
        Value::Object(obj)
    }

    /// The JSON-RPC error object `{code, message, data}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "code": self.kind.code(),
            "message": self.message,
            "data": self.data_object(),
        })
    }
}

impl From<ErrorKind> for RpcError {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind, kind.default_message())
    }
}

/// An error a method answers: it converts to an [`RpcError`] and lists every kind it can be
/// answered with, from its variants (so a method's OpenRPC `errors` are what it returns).
/// `rpc::methods::convert` implements it for the session manager's errors.
pub trait MethodError: Send + 'static {
    /// Every kind an error of this type is answered with, in variant order (repeats allowed).
    fn kinds() -> Vec<ErrorKind>;
    /// The answer.
    fn into_rpc(self) -> RpcError;
}

/// A method that cannot fail besides the standard errors.
impl MethodError for std::convert::Infallible {
    fn kinds() -> Vec<ErrorKind> {
        Vec::new()
    }

    fn into_rpc(self) -> RpcError {
        match self {}
    }
}

/// What a method call fails with: the method's own error, or a standard error that any method
/// may answer (the OpenRPC document does not list those per method).
#[derive(Debug)]
pub enum CallError<E> {
    /// The method's own error.
    Method(E),
    /// Params the schema let through but the method refuses (`invalid_params`).
    InvalidParams(String),
    /// A failure inside omemod (`internal`).
    Internal(String),
    /// The daemon is locked (`locked`): any method that needs the database may answer it.
    Locked,
}

impl<E: MethodError> CallError<E> {
    /// The answer.
    pub fn into_rpc(self) -> RpcError {
        match self {
            CallError::Method(e) => e.into_rpc(),
            CallError::InvalidParams(m) => RpcError::invalid_params(m),
            CallError::Internal(m) => RpcError::internal(m),
            CallError::Locked => RpcError::new(
                ErrorKind::Locked,
                "the daemon is locked: its database's key is a passphrase; unlock it with \
                 `omemod unlock` (the `unlock` method)",
            ),
        }
    }
}

impl<E: MethodError> From<E> for CallError<E> {
    fn from(e: E) -> Self {
        CallError::Method(e)
    }
}

/// The daemon runs without a session manager: it is locked (or it is `omemod openrpc`, which
/// calls nothing).
#[derive(Debug)]
pub struct NoManager;

impl<E: MethodError> From<NoManager> for CallError<E> {
    fn from(_: NoManager) -> Self {
        CallError::Locked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_kinds_are_unique() {
        let mut codes = HashSet::new();
        let mut kinds = HashSet::new();
        for k in ErrorKind::ALL {
            assert!(codes.insert(k.code()), "duplicate code {}", k.code());
            assert!(kinds.insert(k.kind()), "duplicate kind {}", k.kind());
            // The serde name and kind() agree.
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(Value::String(k.kind().to_owned()))
            );
        }
    }

    #[test]
    fn codes_are_in_their_ranges() {
        for k in ErrorKind::ALL {
            let c = k.code();
            assert!(
                (-32768..=-32000).contains(&c) || (1000..2000).contains(&c),
                "{k} {c}"
            );
        }
    }

    #[test]
    fn data_merges_extra_fields() {
        let e = RpcError::new(ErrorKind::NoSession, "x")
            .with_data(serde_json::json!({"device_id": 7, "kind": "spoof"}));
        assert_eq!(
            e.data_object(),
            serde_json::json!({"kind": "no_session", "cause": "local_state", "device_id": 7})
        );
        let e = RpcError::new(ErrorKind::Internal, "x").with_data(serde_json::json!("why"));
        assert_eq!(
            e.data_object(),
            serde_json::json!({"kind": "internal", "cause": "local_state", "detail": "why"})
        );
        let e = RpcError::new(ErrorKind::InvalidBundle, "x")
            .with_cause(ErrorCause::LocalState)
            .with_data(serde_json::json!({"cause": "spoof"}));
        assert_eq!(
            e.data_object(),
            serde_json::json!({"kind": "invalid_bundle", "cause": "local_state"})
        );
    }
}
