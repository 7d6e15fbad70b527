"""The shapes of omemod's results and events, as TypedDicts.

Results are the JSON objects the daemon sends, unchanged: plain dicts, so a field a newer daemon
adds is there too. The TypedDicts give them names and types for editors and type checkers; keys a
result may leave out are in a `total=False` base. docs/rpc.md is the contract, `omemod openrpc`
its machine-readable form.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, TypedDict

OMEMO2 = "urn:xmpp:omemo:2"
"""OMEMO 2 (XEP-0384 0.8 and later)."""
OLDMEMO = "eu.siacs.conversations.axolotl"
"""OMEMO 0.3, what Conversations, Dino, Gajim, Monal and Profanity speak."""
NAMESPACES = (OMEMO2, OLDMEMO)

Namespace = Literal["urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"]
TrustLevel = Literal["trusted", "undecided", "distrusted"]
TrustMode = Literal["btbv", "tofu", "manual"]


class Action(TypedDict, total=False):
    """What to do after a call: `type` is `publish_bundle`, `publish_devicelist`,
    `send_heartbeat`, `fetch_bundle`, `fetch_devicelist` or (in `encrypt` and `encrypt.plan`
    reports only) `offer_device_removal`; the other keys depend on it."""

    type: str
    namespace: str
    jid: str
    device_id: int
    node: str
    item_id: str


class Event(TypedDict, total=False):
    """An event of a subscription. Every event has `type`; all but `events_lost` have `account`
    and `cause`. Action-named types carry the action's keys and `in_answer`. Ignore types and
    causes you do not know."""

    type: str
    account: str
    cause: str
    in_answer: bool
    namespace: str
    jid: str
    peer: str
    device_id: int
    node: str
    item_id: str
    device_ids: List[int]
    fingerprint: str
    old_fingerprint: str
    new_fingerprint: str
    missed: Optional[int]
    reconnected: bool


class Rollback(TypedDict):
    database_generation: int
    expected_generation: int
    detected_at: int
    sessions_to_rebuild: int


class Status(TypedDict):
    version: str
    uptime_secs: int
    pid: int
    socket: str
    db: str
    durability: str
    clients: int
    rollback: Optional[Rollback]
    locked: bool
    key_source: Optional[str]
    key_source_ref: Optional[str]


class _AccountOptional(TypedDict, total=False):
    actions: List[Action]


class Account(_AccountOptional):
    """`account.create`, `account.list` entries and `fingerprint.get`."""

    jid: str
    device_id: int
    fingerprint: str


class RenewedDeviceId(TypedDict):
    jid: str
    device_id: int
    fingerprint: str
    actions: List[Action]


class DeletedAccount(TypedDict):
    jid: str
    device_id: int
    rows: int
    wal_truncated: bool


class Publication(TypedDict):
    """`bundle.get` / `devicelist.get`: publish `xml` as item `item_id` of PEP `node`, with every
    entry of `publish_options` as a field of the publish-options form."""

    namespace: str
    node: str
    item_id: str
    publish_options: Dict[str, str]
    xml: str
    device_id: int
    bundle_version: Optional[int]


class DevicelistUpdated(TypedDict):
    device_ids: List[int]
    added: List[int]
    reactivated: List[int]
    deactivated: List[int]
    own_device_missing: bool
    actions: List[Action]


class _BundleUpdatedOptional(TypedDict, total=False):
    old_fingerprint: Optional[str]


class BundleUpdated(_BundleUpdatedOptional):
    fingerprint: str
    trust: str
    prekey_count: int
    identity_changed: bool


class _EncryptedMessageOptional(TypedDict, total=False):
    xml: str
    element: Dict[str, Any]


class EncryptedMessage(_EncryptedMessageOptional):
    """One `<encrypted>` element: as XML (`xml`) and as JSON (`element`), unless `forms` chose."""

    namespace: str


class _DeviceReportOptional(TypedDict, total=False):
    reason: Optional[str]
    action: Optional[Action]
    old_fingerprint: Optional[str]
    new_fingerprint: Optional[str]


class DeviceReport(_DeviceReportOptional):
    """Per device: `status` is `encrypted`, `no_bundle`, `untrusted`, `identity_changed` (with
    both fingerprints), `stale` (left out until it writes; ours with `offer_device_removal`) or
    `failed`."""

    jid: str
    device_id: int
    namespace: str
    status: str
    kex: bool


class Encrypted(TypedDict):
    """`encrypt`, `heartbeat` and `session.replace`."""

    messages: List[EncryptedMessage]
    devices: List[DeviceReport]
    actions: List[Action]


class _PlannedDeviceOptional(TypedDict, total=False):
    trust: Optional[str]
    reason: Optional[str]
    action: Optional[Action]
    old_fingerprint: Optional[str]
    new_fingerprint: Optional[str]


class PlannedDevice(_PlannedDeviceOptional):
    """`status`: `session`, `bundle` (a key exchange), `no_bundle` (fetch it first),
    `identity_changed` (left out until `identity.accept`) or `stale` (left out)."""

    jid: str
    device_id: int
    namespace: str
    status: str


class Plan(TypedDict):
    devices: List[PlannedDevice]
    actions: List[Action]
    ready: bool


class Sender(TypedDict):
    jid: str
    device_id: int
    fingerprint: str
    trust: str
    listed: bool
    key_trust: str


# OMEMO 2's SCE affixes (bare JIDs and the time) as the sender wrote them; `from` is a keyword.
Envelope = TypedDict("Envelope", {"from": Optional[str], "to": Optional[str], "time": Optional[str]})


class _DecryptedOptional(TypedDict, total=False):
    body: Optional[str]
    content_xml: Optional[str]
    envelope: Optional[Envelope]
    first_decrypted_at: Optional[int]
    sent_at: Optional[int]


class Decrypted(_DecryptedOptional):
    """`decrypt`. `empty`: a heartbeat or key transport, show nothing. `redelivered`: decrypted
    before (by anyone sharing this device); same content, no actions. `own`: sent by this very
    device (a sent carbon, a room's reflection), read back; `sent_at` is when (unix seconds)."""

    namespace: str
    sender: Sender
    empty: bool
    key_exchange: bool
    actions: List[Action]
    redelivered: bool
    own: bool


class IdentityAccepted(TypedDict):
    fingerprint: str
    trust: str
    session_dropped: bool
    bundle_installed: bool
    actions: List[Action]


class DeviceEntry(TypedDict):
    """`devices.list`: `label` only when its signature verifies (`label_status`); `trust` and
    `trust_source` (`blind`, `tofu`, `manual`, `policy`) of its key when one is known; `stale`:
    left out of messages until it writes again."""

    jid: str
    namespace: str
    device_id: int
    label: Optional[str]
    label_status: Optional[str]
    active: bool
    first_seen: int
    last_seen: Optional[int]
    fingerprint: Optional[str]
    trust: Optional[str]
    trust_source: Optional[str]
    unanswered: int
    stale: bool
    this_device: bool


class TrustEntry(TypedDict):
    """`trust.list`: a key's decision, and the contact's devices that use it."""

    jid: str
    fingerprint: str
    level: str
    source: str
    decided_at: int
    devices: List[Dict[str, Any]]


class Link(TypedDict):
    """`link.get`: the link to show as a QR code and the fingerprints to compare by eye."""
    jid: str
    link: str
    devices: List[Dict[str, Any]]
    fingerprints: Dict[str, str]


class LinkVerified(TypedDict):
    """`link.verify`: each key of the link and how many became trusted now."""
    jid: str
    keys: List[Dict[str, Any]]
    newly_verified: int


class Catchup(TypedDict):
    catchup: bool
    actions: List[Action]


class Subscribed(TypedDict):
    subscription: int


class Unsubscribed(TypedDict):
    unsubscribed: bool
