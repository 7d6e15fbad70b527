"""Exceptions: one class per error kind omemod answers with, and the connection's own failures.

Switch on the class (or on `kind`, the stable `data.kind` string); `message` is for people. An
error kind this library does not know yet arrives as a plain `RpcError` with its `kind` set.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type


class OmemodError(Exception):
    """Everything this library raises."""


class SocketNotTrusted(OmemodError, PermissionError):
    """The socket, its directory or the daemon behind it is not ours: another local user could
    read what we send. Never retried."""


class DaemonUnavailable(OmemodError, ConnectionError):
    """No daemon answers on the socket (within the reconnect window)."""


class ConnectionLost(OmemodError, ConnectionError):
    """The connection broke before the answer came, for a call that is not safe to repeat
    (docs/rpc.md, "Retry rules"): it may or may not have happened."""

    def __init__(self, method: str):
        super().__init__(f"{method}: the connection to omemod broke before the answer; "
                         "the call may or may not have taken effect")
        self.method = method


class CallTimeout(OmemodError, TimeoutError):
    """No answer within the call's timeout."""


class RpcError(OmemodError):
    """An error answer. `kind` is `data.kind`; `cause` is `data.cause` when the daemon says what
    kind of failure it was (peer, local state, …); `data` holds the rest (e.g. `retry_after_secs`)."""

    kind: str = "unknown"
    code: Optional[int] = None

    def __init__(self, method: str, error: Mapping[str, Any]):
        data = error.get("data")
        self.method = method
        self.code = error.get("code", type(self).code)
        self.message: str = str(error.get("message", ""))
        self.data: Dict[str, Any] = dict(data) if isinstance(data, Mapping) else {}
        self.kind = str(self.data.get("kind", type(self).kind))
        cause = self.data.get("cause")
        self.cause: Optional[str] = str(cause) if cause is not None else None
        super().__init__(f"{method}: {self.message} ({self.kind})")


def _kind(kind: str, code: int, doc: str) -> Type[RpcError]:
    name = "".join(part.capitalize() for part in kind.split("_"))
    return type(name, (RpcError,), {"kind": kind, "code": code, "__doc__": doc, "__module__": __name__})


# The table of docs/rpc.md ("Errors"), in its order. A test compares it with the daemon's
# `x-error-kinds`, so a kind added there must be added here.
ParseError = _kind("parse_error", -32700, "The line is not valid JSON.")
InvalidRequest = _kind("invalid_request", -32600, "Not a JSON-RPC 2.0 request.")
MethodNotFound = _kind("method_not_found", -32601, "No such method (an older daemon?).")
InvalidParams = _kind("invalid_params", -32602, "The params do not match the method's schema.")
Internal = _kind("internal", -32603, "A bug or unexpected failure in omemod.")
RequestTooLarge = _kind("request_too_large", -32001, "The request line is over the daemon's limit.")
ResponseTooLarge = _kind("response_too_large", -32002, "The answer would exceed the response limit.")
Unauthorized = _kind("unauthorized", -32003, "The daemon runs as another user.")
TooManySubscriptions = _kind("too_many_subscriptions", -32004, "32 subscriptions on this connection.")
UnknownSubscription = _kind("unknown_subscription", -32005, "No such subscription on this connection.")
TooManyConnections = _kind("too_many_connections", -32006, "The daemon is at its connection limit.")
LineTimeout = _kind("line_timeout", -32007, "A request line was not completed in time.")
UnknownAccount = _kind("unknown_account", 1001, "No account with that JID.")
AccountExists = _kind("account_exists", 1002, "An account with that JID exists.")
AccountRequired = _kind("account_required", 1003, "Several accounts exist: name one.")
InvalidJid = _kind("invalid_jid", 1004, "Not a valid bare JID.")
InvalidLabel = _kind("invalid_label", 1005, "A device label over 53 code points or with a control character.")
UnknownDevice = _kind("unknown_device", 1101, "The peer device is not known.")
NoBundle = _kind("no_bundle", 1102, "No bundle stored for the device.")
InvalidBundle = _kind("invalid_bundle", 1103, "The bundle is malformed.")
InvalidSignature = _kind("invalid_signature", 1104, "The signed pre-key signature does not verify.")
InvalidDevicelist = _kind("invalid_devicelist", 1105, "The device list is malformed.")
UnlistedDevice = _kind("unlisted_device", 1106, "A group message from a device its sender's list does not name (yet).")
NoSession = _kind("no_session", 1201, "No session with the device.")
NotForThisDevice = _kind("not_for_this_device", 1202, "The message has no key for our device.")
DuplicateMessage = _kind("duplicate_message", 1203, "Already decrypted and not redeliverable (a replay).")
InvalidMessage = _kind("invalid_message", 1204, "Malformed message.")
AuthenticationFailed = _kind("authentication_failed", 1205, "Bad MAC or tag.")
TooManySkipped = _kind("too_many_skipped", 1206, "The message skips too many keys, or its key was dropped.")
BrokenSession = _kind("broken_session", 1207, "The session cannot continue and must be rebuilt.")
RateLimited = _kind("rate_limited", 1208, "Session replaced too often (`data['retry_after_secs']`).")
SceMismatch = _kind("sce_mismatch", 1209, "OMEMO 2: the envelope names another sender or conversation.")
MessageTooLarge = _kind("message_too_large", 1210, "The element would be larger than decrypt accepts.")
SenderMismatch = _kind("sender_mismatch", 1211, "The message comes from a device of another JID than `from`.")
NoDeviceReached = _kind("no_device_reached", 1212,
                        "encrypt: no device of the recipients can get the message (`data['devices']`: why each).")
UnknownOwnMessage = _kind("unknown_own_message", 1213, "Our own message, but not one this device still keeps.")
IdempotencyKeyReused = _kind("idempotency_key_reused", 1220, "`idempotency_key` used for another request.")
PossibleReplay = _kind("possible_replay", 1230, "Decrypts on a session restored from an older copy: refused, a new session starts.")
Untrusted = _kind("untrusted", 1301, "The device is not (yet) trusted.")
Distrusted = _kind("distrusted", 1302, "The device is explicitly distrusted.")
IdentityChanged = _kind("identity_changed", 1303, "Another identity key than the one held for the device.")
LinkMismatch = _kind("link_mismatch", 1304, "A key of the verification link differs from the one held; nothing trusted.")
LinkUnknownDevice = _kind("link_unknown_device", 1305, "The link names a device omemod does not know yet; nothing trusted.")
InvalidLink = _kind("invalid_link", 1306, "Not a verification link.")
StorageError = _kind("storage_error", 1401, "The database failed.")
Locked = _kind("locked", 1402, "The daemon is locked: its database's key is a passphrase (unlock).")
WrongPassphrase = _kind("wrong_passphrase", 1403, "unlock: the passphrase does not open the database's key.")
TooManyDevices = _kind("too_many_devices", 1500, "A device list names more devices than allowed.")
InvalidAesgcmLink = _kind("invalid_aesgcm_link", 1601, "A malformed aesgcm:// link or key fragment.")
FileTruncated = _kind("file_truncated", 1602, "A downloaded file is shorter than its tag.")
FileTooLarge = _kind("file_too_large", 1603, "A file over the daemon's --max-file-bytes.")
UnknownTransfer = _kind("unknown_transfer", 1604, "No file transfer with that id on this connection.")
TooManyTransfers = _kind("too_many_transfers", 1605, "Too many file transfers at once.")
TransferOutOfOrder = _kind("transfer_out_of_order", 1606, "The transfer expects another call or offset next.")
FileChanged = _kind("file_changed", 1607, "A chunk of the second pass differs from the one checked.")

ERROR_CLASSES: Dict[str, Type[RpcError]] = {
    cls.kind: cls for cls in RpcError.__subclasses__() if cls.__module__ == __name__
}
"""`data.kind` → exception class."""


def error_from(method: str, error: Mapping[str, Any]) -> RpcError:
    """The exception for an error object of the daemon."""
    data = error.get("data")
    kind = data.get("kind") if isinstance(data, Mapping) else None
    return ERROR_CLASSES.get(str(kind), RpcError)(method, error)


__all__ = ["OmemodError", "SocketNotTrusted", "DaemonUnavailable", "ConnectionLost", "CallTimeout",
           "RpcError", "ERROR_CLASSES", "error_from"] + [cls.__name__ for cls in ERROR_CLASSES.values()]
