"""A slixmpp plugin that gives a slixmpp client OMEMO (0.3 and 2) with omemod as the engine.

It does for a slixmpp client what slixmpp-omemo does, with the keys, sessions and trust in
omemod (shared by every process of the user) instead of a storage of its own:

```python
import omemod_client.slixmpp_plugin  # registers the plugin "omemod"

xmpp.register_plugin("omemod", {"socket": None, "create_account": True})
xmpp.add_event_handler("omemo_initialized", ready)
xmpp.add_event_handler("omemo_message", lambda d: print(d.sender, d.body))
...
await xmpp["omemod"].send_message("bob@example.net", "hello")
```

What it does by itself (docs/clients.md's flow): at every session start our own device lists are
fetched and handed to omemod, then ours and our bundles are published with the publish options
omemod names (the node reconfigured on `precondition-not-met`); `+notify` for both device-list
nodes, and every list PEP pushes goes to `devicelist.update`; the actions omemod answers with are
done (fetch a device list or bundle, publish, send a heartbeat), and so are the duties of events
no call caused; carbons are enabled and both kinds are decrypted; incoming encrypted messages
(1:1 and members-only rooms, either namespace) are decrypted and fired as `omemo_message` events
(config `auto_decrypt`); our own messages (a room's reflection, a sent carbon or archived copy
of what this device sent, maybe from another process) are read back by omemod and fired with
`own` set; trust events become slixmpp events. Sending: `encrypt_message` / `send_message` build
one stanza carrying an `<encrypted>` element per namespace used, with an EME hint each, `<store/>`
and a fallback body on 0.3-only stanzas; in a room SCE's `to` is the room. Reading the archive:
`archive()` wraps it in `catchup.begin` / `catchup.end`.

Events fired on the slixmpp client: `omemo_initialized`, `omemo_message` (a `Decryption`),
`omemo_empty_message` (a `Decryption` of a heartbeat or key transport: nothing to show),
`omemo_decryption_failed` (a `DecryptionFailure`), `omemo_trust_decision_needed`,
`omemo_identity_changed`, `omemo_devicelist_changed` (omemod's event dict), `omemo_failed`
(start-up failed: the exception).

Files (XEP-0454): `send_file(jid, path)` uploads a file encrypted (XEP-0363 slot, `file.encrypt.*`)
and sends its link; `open_file(link, dest)` downloads and decrypts one (`files.file_link` finds a
link in a body).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import (Any, AsyncIterator, Dict, Iterable, List, Optional, Sequence, Set, Tuple,
                    Union)

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins import BasePlugin, register_plugin
from slixmpp.plugins.xep_0004 import Form
from slixmpp.stanza import Message
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from . import errors, files
from .client import Client
from .connection import Subscription
from .errors import OmemodError, RpcError
from .types import NAMESPACES, OLDMEMO, OMEMO2, Action, Decrypted, DeviceReport, Encrypted, Event

log = logging.getLogger("omemod_client.slixmpp")

DEVICELIST_NODE = {OMEMO2: "urn:xmpp:omemo:2:devices", OLDMEMO: "eu.siacs.conversations.axolotl.devicelist"}
NODE_NAMESPACE = {node: ns for ns, node in DEVICELIST_NODE.items()}
BUNDLE_NODE = {OMEMO2: lambda device: ("urn:xmpp:omemo:2:bundles", str(device)),
               OLDMEMO: lambda device: (f"eu.siacs.conversations.axolotl.bundles:{device}", "current")}
"""(node, item id) of a device's bundle, as omemod's `fetch_bundle` actions name them."""
EME = "urn:xmpp:eme:0"
EME_NAME = {OMEMO2: "OMEMO", OLDMEMO: "OMEMO (0.3)"}
HINTS = "urn:xmpp:hints"
XHTML_IM = "http://jabber.org/protocol/xhtml-im"
MUC_USER = "http://jabber.org/protocol/muc#user"
HTTP_UPLOAD = "urn:xmpp:http:upload:0"
FETCHES = ("fetch_bundle", "fetch_devicelist")
DUTIES = ("publish_bundle", "publish_devicelist", "send_heartbeat") + FETCHES
IQ_TIMEOUT = 20
SENT_CACHE = 200
"""Group messages this process sent, kept by id to show their reflection when omemod cannot read
it back (it keeps no own messages with redelivery off; older versions keep none)."""


class NoRecipientDevice(OmemodError):
    """No device of the recipients could be encrypted for (omemod's `no_device_reached`;
    `devices` says why for each)."""

    def __init__(self, devices: List[DeviceReport]):
        why = "; ".join(f"{d['jid']}/{d['device_id']}: {d['status']}" for d in devices) or "no devices known"
        super().__init__(f"nothing to send: {why}")
        self.devices = devices


class UploadUnavailable(OmemodError):
    """Our server offers no HTTP upload (XEP-0363), refused the slot, or the upload failed."""


class SenderUnknown(OmemodError):
    """A room message whose sender's real JID we do not know (the room is not non-anonymous)."""


@dataclass
class Encryption:
    """What `encrypt_message` made: `message` to send (None when no device could be reached),
    omemod's per-device report, and which recipients' devices got a key."""

    message: Optional[Message]
    devices: List[DeviceReport]
    namespaces: List[str]
    reached: List[DeviceReport] = field(default_factory=list)
    missed: List[DeviceReport] = field(default_factory=list)


@dataclass
class Decryption:
    """A decrypted message. `message` is a copy of the stanza with the plaintext as its `<body>`
    and the OMEMO elements removed; `result` is omemod's whole `decrypt` answer. `own`: sent by
    this very device (a room's reflection, a sent carbon, the archive); `result` is None when its
    text came from this process's memory instead of omemod."""

    stanza: Message
    message: Message
    sender: str
    body: Optional[str]
    namespace: Optional[str]
    device_id: Optional[int]
    trust: Optional[str]
    empty: bool
    redelivered: bool
    room: Optional[str]
    archived: bool
    carbon: Optional[str]
    own: bool = False
    result: Optional[Decrypted] = None


@dataclass
class DecryptionFailure:
    stanza: Message
    sender: Optional[str]
    error: Exception
    room: Optional[str]
    archived: bool
    carbon: Optional[str]

    @property
    def kind(self) -> str:
        return self.error.kind if isinstance(self.error, RpcError) else type(self.error).__name__


@dataclass
class ArchivedMessage:
    """One message of the archive: its archive id, the stanza, and its decryption (encrypted
    ones) or the error (those that failed)."""

    archive_id: str
    stanza: Message
    decryption: Optional[Decryption] = None
    error: Optional[Exception] = None


class XEP_0384_omemod(BasePlugin):
    """OMEMO through omemod. Config: `socket` (default: omemod's default path), `account` (default:
    our bare JID), `create_account` (create the omemod account when it is missing; default
    False: a new OMEMO device only when the user asks), `trust_mode` (for a created account),
    `namespaces` (preference order to encrypt with; default OMEMO 2, then 0.3),
    `fallback_message`, `auto_decrypt` (decrypt incoming messages and fire `omemo_message`;
    default True), `carbons` (enable XEP-0280; default True), `devicelist_max_age` (seconds
    before the device lists of a JID without presence subscription are fetched again)."""

    name = "omemod"
    description = "OMEMO (XEP-0384, 0.3 and 2) by omemod"
    dependencies = {"xep_0004", "xep_0030", "xep_0045", "xep_0059", "xep_0060", "xep_0115",
                    "xep_0163", "xep_0280", "xep_0313", "xep_0334", "xep_0380"}
    default_config = {
        "socket": None,
        "account": None,
        "create_account": False,
        "trust_mode": None,
        "namespaces": None,
        "fallback_message": "This message is OMEMO encrypted and your client cannot decrypt it.",
        "auto_decrypt": True,
        "carbons": True,
        "devicelist_max_age": 300.0,
        "timeout": 60.0,
    }

    # slixmpp may call post_init before plugin_init (while it enables the dependencies) and more
    # than once: it runs once, after plugin_init.
    _inited = False
    _post_inited = False

    # ---- life cycle -----------------------------------------------------------------------------

    def plugin_init(self) -> None:
        self.me = JID(self.account or self.xmpp.boundjid.bare).bare
        self.client = Client(self.socket, account=self.me, timeout=self.timeout)
        self.device_id: Optional[int] = None
        self.fingerprint: Optional[str] = None
        self.ready = asyncio.Event()
        self._events: Optional[Subscription] = None
        self._events_task: Optional[asyncio.Task] = None
        self._starting: Optional[asyncio.Task] = None
        self._incoming = asyncio.Lock()
        self._fetched: Dict[str, float] = {}
        self._bundle_failed: Dict[Tuple[str, str, int], float] = {}
        self._sent: "OrderedDict[str, str]" = OrderedDict()
        self._room_members: Dict[str, Set[str]] = {}
        self._upload_service: Optional[Tuple[str, Optional[int]]] = None
        for ns in NAMESPACES:
            self.xmpp.register_handler(Callback(f"omemod {ns}", MatchXPath(f"{{jabber:client}}message/{{{ns}}}encrypted"),
                                                lambda msg, ns=ns: self._on_encrypted(msg, ns)))
        self.xmpp.add_event_handler("carbon_received", self._on_carbon_received)
        self.xmpp.add_event_handler("carbon_sent", self._on_carbon_sent)
        self.xmpp.add_event_handler("groupchat_presence", self._on_room_presence)
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        for ns, node in DEVICELIST_NODE.items():
            event = f"omemod_devicelist_{'omemo2' if ns == OMEMO2 else 'oldmemo'}"
            self.xmpp.plugin["xep_0060"].map_node_event(node, event)
            self.xmpp.add_event_handler(event + "_publish", self._on_devicelist_event)
        self._inited = True

    def post_init(self) -> None:
        if not self._inited or self._post_inited:
            return
        self._post_inited = True
        # +notify for both device-list nodes in our disco features (and so in our caps): the
        # server then pushes our contacts' device lists, and ours.
        for node in DEVICELIST_NODE.values():
            self.xmpp.plugin["xep_0163"].add_interest(node)
        if getattr(self.xmpp, "sessionstarted", False):
            # Loaded into a running session (poezio loads its plugins after session start).
            asyncio.ensure_future(self.xmpp.plugin["xep_0115"].update_caps(broadcast=True))
            self._on_session_start(None)

    def plugin_end(self) -> None:
        for node in DEVICELIST_NODE.values():
            self.xmpp.plugin["xep_0163"].remove_interest(node)
        self.xmpp.del_event_handler("carbon_received", self._on_carbon_received)
        self.xmpp.del_event_handler("carbon_sent", self._on_carbon_sent)
        self.xmpp.del_event_handler("groupchat_presence", self._on_room_presence)
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        for ns in NAMESPACES:
            self.xmpp.remove_handler(f"omemod {ns}")
        if self._events_task is not None:
            self._events_task.cancel()
        asyncio.ensure_future(self.client.close())

    def _on_session_start(self, _event: Any) -> None:
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        try:
            await self.start()
        except Exception as e:  # reported as an event: a handler of session_start cannot raise
            log.warning("OMEMO start-up failed: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
            self.xmpp.event("omemo_failed", e)

    async def start(self) -> None:
        """The start-up of docs/clients.md 3, run at every session start: the account, our own
        device lists first, then publishing ours and our bundles; the event subscription;
        carbons. Fires `omemo_initialized` when done."""
        self.ready.clear()
        await self.client.connect(timeout=self.timeout)
        own = {ns: await self.fetch_devicelist(self.me, ns) for ns in NAMESPACES}
        if self.me not in [a["jid"] for a in await self.client.account_list()]:
            if not self.create_account:
                raise errors.UnknownAccount("account.list", {"message": f"omemod has no account {self.me}: "
                                            f"create it with `omemod init --jid {self.me}`",
                                            "data": {"kind": "unknown_account"}})
            avoid = sorted({int(d.get("id", 0)) for xml in own.values() if xml is not None
                            for d in ET.fromstring(xml).iter() if d.tag.endswith("}device")} - {0})
            await self.client.account_create(self.me, trust_mode=self.trust_mode, avoid=avoid)
        for ns, xml in own.items():
            if xml is not None:
                await self._devicelist_update(self.me, ns, xml)
        for ns in NAMESPACES:
            await self.publish(await self.client.devicelist_get(ns))
            await self.publish(await self.client.bundle_get(ns))
        me = await self.client.fingerprint_get()
        self.device_id, self.fingerprint = me["device_id"], me["fingerprint"]
        if self._events is None:
            self._events = await self.client.subscribe()
            self._events_task = asyncio.ensure_future(self._follow_events(self._events))
        if self.carbons:
            try:
                await self.xmpp.plugin["xep_0280"].enable(timeout=IQ_TIMEOUT)
            except (IqError, IqTimeout) as e:
                log.info("carbons not enabled: %s", e)
        self.ready.set()
        self.xmpp.event("omemo_initialized")

    # ---- PEP: publishing, device lists, bundles --------------------------------------------------

    async def publish(self, item: Any) -> None:
        """Publishes a `bundle.get` / `devicelist.get` answer at its node and item, with its
        publish options; reconfigures the node when the server says they do not match."""
        payload = ET.fromstring(item["xml"])
        options = self._form("http://jabber.org/protocol/pubsub#publish-options", item["publish_options"])
        pubsub = self.xmpp.plugin["xep_0060"]
        try:
            await pubsub.publish(self.me, item["node"], id=item["item_id"], payload=payload,
                                 options=options, timeout=IQ_TIMEOUT)
        except IqError as e:
            if e.iq.xml.find(".//{http://jabber.org/protocol/pubsub#errors}precondition-not-met") is None \
                    and e.iq["error"]["condition"] != "conflict":
                raise
            config = self._form("http://jabber.org/protocol/pubsub#node_config", item["publish_options"])
            await pubsub.set_node_config(self.me, item["node"], config, timeout=IQ_TIMEOUT)
            await pubsub.publish(self.me, item["node"], id=item["item_id"], payload=payload,
                                 options=options, timeout=IQ_TIMEOUT)
        log.info("published %s item %s", item["node"], item["item_id"])

    @staticmethod
    def _form(form_type: str, fields: Dict[str, str]) -> Form:
        form = Form()
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
        for var, value in fields.items():
            form.add_field(var=var, value=value)
        return form

    async def fetch_devicelist(self, jid: str, ns: str) -> Optional[str]:
        """The device list `jid` publishes in `ns`, as XML (None when there is none)."""
        try:
            iq = await self.xmpp.plugin["xep_0060"].get_items(jid, DEVICELIST_NODE[ns], max_items=1,
                                                              timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout) as e:
            log.info("no %s device list for %s (%s)", ns, jid, e)
            return None
        for item in iq["pubsub"]["items"]:
            if len(item.xml):
                return tostring(item.xml[0])
        return None

    async def refresh_device_lists(self, jids: Iterable[str], force_download: bool = False) -> None:
        """Fetches the device lists of `jids` we have not seen this session, or (for JIDs whose
        presence we are not subscribed to, so PEP does not push their changes) not for
        `devicelist_max_age` seconds; every one with `force_download`."""
        now = time.monotonic()
        for jid in {JID(j).bare for j in jids}:
            seen = self._fetched.get(jid)
            pushed = self.xmpp.client_roster[jid]["subscription"] in ("to", "both")
            if force_download or seen is None or (not pushed and now - seen > self.devicelist_max_age):
                for ns in NAMESPACES:
                    xml = await self.fetch_devicelist(jid, ns)
                    if xml is not None:
                        await self._devicelist_update(jid, ns, xml)
                self._fetched[jid] = now

    async def _devicelist_update(self, jid: str, ns: str, xml: str) -> None:
        result = await self.client.devicelist_update(jid, ns, xml)
        await self.do_actions(result["actions"])

    async def _on_devicelist_event(self, msg: Message) -> None:
        ns = NODE_NAMESPACE.get(msg["pubsub_event"]["items"]["node"])
        if ns is None:
            return
        jid = msg["from"].bare
        for item in msg["pubsub_event"]["items"]:
            if len(item.xml):
                try:
                    await self._devicelist_update(jid, ns, tostring(item.xml[0]))
                    self._fetched[jid] = time.monotonic()
                except OmemodError as e:
                    log.warning("device list of %s refused: %s", jid, e)

    async def fetch_bundle(self, action: Action) -> bool:
        """Fetches the bundle an action names and hands it to omemod; whether that worked."""
        key = (action["jid"], action["namespace"], action["device_id"])
        if time.monotonic() - self._bundle_failed.get(key, -1e9) < 600:
            return False  # failed a moment ago: a device without a bundle stays so for a while
        try:
            iq = await self.xmpp.plugin["xep_0060"].get_item(action["jid"], action["node"], action["item_id"],
                                                             timeout=IQ_TIMEOUT)
            payload = next((item.xml[0] for item in iq["pubsub"]["items"] if len(item.xml)), None)
            if payload is None:
                raise ValueError("empty item")
            await self.client.bundle_update(action["jid"], action["device_id"], action["namespace"],
                                            tostring(payload))
            return True
        except (IqError, IqTimeout, ValueError, RpcError) as e:
            log.info("bundle of %s/%s unavailable: %s", action["jid"], action["device_id"], e)
            self._bundle_failed[key] = time.monotonic()
            return False

    # ---- actions and events ----------------------------------------------------------------------

    async def do_actions(self, actions: Sequence[Action]) -> bool:
        """Does what omemod asks; returns whether a device list or bundle was fetched."""
        fetched = False
        done: Set[Tuple[Any, ...]] = set()
        for a in actions:
            key = tuple(sorted(a.items()))
            if key in done:
                continue
            done.add(key)
            kind = a.get("type")
            try:
                if kind == "publish_bundle":
                    await self.publish(await self.client.bundle_get(a["namespace"]))
                elif kind == "publish_devicelist":
                    await self.publish(await self.client.devicelist_get(a["namespace"]))
                elif kind == "fetch_bundle":
                    fetched |= await self.fetch_bundle(a)
                elif kind == "fetch_devicelist":
                    xml = await self.fetch_devicelist(a["jid"], a["namespace"])
                    if xml is not None:
                        await self._devicelist_update(a["jid"], a["namespace"], xml)
                        fetched = True
                    self._fetched[a["jid"]] = time.monotonic()
                elif kind == "send_heartbeat":
                    empty = await self.client.heartbeat(a["jid"], a["namespace"], a["device_id"])
                    self._send_empty(a["jid"], empty)
                else:
                    log.debug("ignoring action %s", kind)
            except (OmemodError, IqError, IqTimeout) as e:
                log.warning("%s failed: %s", kind, e)
        return fetched

    async def _follow_events(self, events: Subscription) -> None:
        async for event in events:
            if event.get("account") not in (None, self.me):
                continue
            try:
                await self._on_omemod_event(event)
            except Exception:  # one bad event must not end the subscription
                log.exception("handling omemod event %s", event.get("type"))

    async def _on_omemod_event(self, event: Event) -> None:
        kind = event.get("type")
        if kind in DUTIES:
            # A duty is done once: by the caller whose answer carried it (in_answer: true), or,
            # when no call caused it, by the one subscriber it was sent to.
            if event.get("in_answer") is False:
                await self.do_actions([event])  # type: ignore[list-item]
        elif kind == "events_lost":
            # Events were missed (or a reconnect left a gap): what matters is that what we
            # publish is current; republishing is harmless.
            await self.do_actions([{"type": t, "namespace": ns} for ns in NAMESPACES
                                   for t in ("publish_devicelist", "publish_bundle")])
        elif kind in ("trust_decision_needed", "identity_changed", "devicelist_changed"):
            self.xmpp.event("omemo_" + kind, event)

    # ---- sending ---------------------------------------------------------------------------------

    def room_members(self, room: str) -> List[str]:
        """The real bare JIDs of a room's members and occupants, without ours."""
        muc = self.xmpp.plugin["xep_0045"]
        jids = set(self._room_members.get(JID(room).bare, set()))
        for nick in muc.get_roster(JID(room)) or []:
            real = muc.get_jid_property(JID(room), nick, "jid")
            if real:
                jids.add(JID(real).bare)
        jids.discard(self.me)
        return sorted(jids)

    async def learn_room(self, room: str) -> List[str]:
        """Reads a room's member, admin and owner lists (where we may) and the occupants' device
        lists; call it after joining."""
        muc = self.xmpp.plugin["xep_0045"]
        members: Set[str] = set()
        for affiliation in ("owner", "admin", "member"):
            try:
                members.update(JID(j).bare for j in await muc.get_affiliation_list(JID(room), affiliation,
                                                                                     timeout=IQ_TIMEOUT))
            except (IqError, IqTimeout) as e:
                log.info("%s list of %s not readable: %s", affiliation, room, e)
        self._room_members[JID(room).bare] = members
        jids = self.room_members(room)
        await self.refresh_device_lists(jids)
        return jids

    async def _on_room_presence(self, pres: Any) -> None:
        real = pres["muc"]["jid"]
        if real and real.bare != self.me and pres["type"] != "unavailable":
            try:
                await self.refresh_device_lists([real.bare])
            except OmemodError as e:
                log.info("device lists of %s: %s", real.bare, e)

    async def encrypt_message(self, stanza: Message, recipient_jids: Union[None, str, JID, Iterable[Any]] = None, *,
                              namespaces: Optional[Sequence[str]] = None) -> Encryption:
        """Encrypts `stanza`'s body for `recipient_jids` (default: the stanza's `to`, or in a
        room every member) and our other devices. Returns the stanza to send (one, carrying
        an `<encrypted>` element per namespace used) with the report. An empty `stanza` (no
        body) becomes an empty OMEMO message."""
        group = stanza["type"] == "groupchat"
        room = stanza["to"].bare if group else None
        if recipient_jids is None:
            recipients = self.room_members(room) if room else [stanza["to"].bare]
        elif isinstance(recipient_jids, (str, JID)):
            recipients = [JID(recipient_jids).bare]
        else:
            recipients = sorted({JID(j).bare for j in recipient_jids} - {self.me})
        element = stanza.xml.find("{jabber:client}body")
        body = None if element is None else (element.text or "")
        namespaces = list(namespaces or self.namespaces or NAMESPACES)
        await self.refresh_device_lists(recipients)
        await self._prepare(recipients, namespaces)
        try:
            result = await self.client.encrypt(recipients, body, namespaces=namespaces, sce_to=room,
                                               idempotency_key=stanza["id"] or None, forms=["xml"])
        except errors.NoDeviceReached as e:
            # Nothing to send: each recipient device's report says why.
            devices = list(e.data.get("devices", []))
            return Encryption(None, devices, [], [], devices)
        await self.do_actions([a for a in result["actions"] if a["type"] not in FETCHES])
        return self._encryption(stanza, result, recipients, body)

    async def _prepare(self, recipients: List[str], namespaces: List[str]) -> None:
        """Fetches what omemod lacks for these recipients (device lists, then bundles)."""
        refreshed: Set[Tuple[str, str, int]] = set()
        for _ in range(3):
            plan = await self.client.encrypt_plan(recipients, namespaces=namespaces)
            fetches = [a for a in plan["actions"] if a["type"] in FETCHES] + self._stale_bundles(plan, refreshed)
            refreshed.update((a["jid"], a["namespace"], a["device_id"]) for a in fetches if a["type"] == "fetch_bundle")
            if not fetches or not await self.do_actions(fetches):
                return

    @staticmethod
    def _stale_bundles(plan: Any, refreshed: Set[Tuple[str, str, int]]) -> List[Action]:
        """A `fetch_bundle` for each device a session is about to be built with from a stored
        bundle (plan status `bundle`), once per encryption. That bundle may be older than a key
        exchange someone else made with the device, whose one-time prekey is gone: the device
        could not read a session built on it. A bundle fetched now no longer offers that prekey
        (Conversations and python-omemo also fetch the bundle when they build the session)."""
        out: List[Action] = []
        for d in plan["devices"]:
            key = (d["jid"], d["namespace"], d["device_id"])
            if d["status"] != "bundle" or d.get("trust") == "distrusted" or key in refreshed:
                continue
            node, item_id = BUNDLE_NODE[d["namespace"]](d["device_id"])
            out.append({"type": "fetch_bundle", "jid": d["jid"], "namespace": d["namespace"],
                        "device_id": d["device_id"], "node": node, "item_id": item_id})
        return out

    def _encryption(self, stanza: Message, result: Encrypted, recipients: List[str],
                    body: Optional[str]) -> Encryption:
        reached = [d for d in result["devices"] if d["status"] == "encrypted" and d["jid"] in recipients]
        missed = [d for d in result["devices"] if d["status"] != "encrypted"]
        out = Encryption(None, result["devices"], [m["namespace"] for m in result["messages"]], reached, missed)
        if not result["messages"] or (recipients and not reached):
            return out
        msg = copy.copy(stanza)
        for child in list(msg.xml):
            if child.tag in ("{jabber:client}body", f"{{{XHTML_IM}}}html"):
                msg.xml.remove(child)
        for m in result["messages"]:
            msg.append(ET.fromstring(m["xml"]))
            # XEP-0380: tells clients without (this version of) OMEMO why there is nothing to read.
            msg.append(ET.Element(f"{{{EME}}}encryption", {"namespace": m["namespace"], "name": EME_NAME[m["namespace"]]}))
        # XEP-0420 0.5: a stanza with an OMEMO 2 element carries no fallback body (its EME says
        # why there is nothing to read); one with only the 0.3 element keeps the notice.
        if body is not None and all(m["namespace"] != OMEMO2 for m in result["messages"]):
            msg["body"] = self.fallback_message
        msg.append(ET.Element(f"{{{HINTS}}}store"))
        if stanza["type"] == "groupchat" and body is not None and stanza["id"]:
            self._sent[stanza["id"]] = body
            while len(self._sent) > SENT_CACHE:
                self._sent.popitem(last=False)
        out.message = msg
        return out

    async def send_message(self, mto: Union[str, JID], body: Optional[str], mtype: str = "chat",
                           recipient_jids: Optional[Iterable[Any]] = None) -> Encryption:
        """Encrypts `body` (None: an empty message) for `mto` and sends it; raises
        `NoRecipientDevice` when no device of the recipients could get it."""
        msg = self.xmpp.make_message(mto=mto, mtype=mtype)
        msg["id"] = msg["id"] or self.xmpp.new_id()
        if body is not None:  # also an empty text, which msg["body"] = "" would leave out
            ET.SubElement(msg.xml, "{jabber:client}body").text = body
        out = await self.encrypt_message(msg, recipient_jids)
        if out.message is None:
            raise NoRecipientDevice(out.missed)
        out.message.send()
        return out

    def _send_empty(self, jid: str, empty: Encrypted) -> None:
        msg = self.xmpp.make_message(mto=jid, mtype="chat")
        for m in empty["messages"]:
            msg.append(ET.fromstring(m["xml"]))
        msg.append(ET.Element(f"{{{HINTS}}}store"))
        msg.send()

    # ---- receiving -------------------------------------------------------------------------------

    @staticmethod
    def is_encrypted(stanza: Message) -> Set[str]:
        """The OMEMO namespaces of the `<encrypted>` elements `stanza` carries."""
        return {ns for ns in NAMESPACES if stanza.xml.find(f"{{{ns}}}encrypted") is not None}

    def _our_nick(self, room: str) -> Optional[str]:
        try:
            return JID(self.xmpp.plugin["xep_0045"].get_our_jid_in_room(JID(room))).resource
        except KeyError:  # joined without slixmpp's MUC plugin (poezio has its own)
            return None

    def _real_sender(self, stanza: Message, room: str) -> Optional[str]:
        item = stanza.xml.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
        if item is not None and item.get("jid"):  # an archived message may carry it
            return JID(item.get("jid")).bare
        real = self.xmpp.plugin["xep_0045"].get_jid_property(JID(room), stanza["from"].resource, "jid")
        return JID(real).bare if real else None

    async def decrypt_message(self, stanza: Message, *, sender: Optional[str] = None, archived: bool = False,
                              carbon: Optional[str] = None) -> Decryption:
        """Decrypts `stanza` (raises the `RpcError` of omemod's answer, `SenderUnknown`, or
        ValueError when there is nothing to decrypt). `sender`: the real JID of a room occupant
        when the caller knows it. Actions of the answer are done."""
        present = self.is_encrypted(stanza)
        if not present:
            raise ValueError("no OMEMO element in the message")
        group = stanza["type"] == "groupchat"
        room = stanza["from"].bare if group else None
        if room is not None:
            # Our own message reflected by the room is decrypted as ours: omemod reads it back.
            ours = self._our_nick(room) == stanza["from"].resource
            sender = self.me if ours else (sender or self._real_sender(stanza, room))
            if not sender:
                raise SenderUnknown(f"{stanza['from']}: no real JID (the room must be non-anonymous)")
            sender = JID(sender).bare
            to = room
        else:
            sender = JID(sender).bare if sender else stanza["from"].bare
            # Ours from another device (a sent carbon, the archive): the conversation is its `to`.
            to = (stanza["to"].bare or self.me) if sender == self.me else self.me
        error: Optional[RpcError] = None
        for ns in (OMEMO2, OLDMEMO):  # a stanza may carry both, for different devices
            if ns not in present:
                continue
            xml = tostring(stanza.xml.find(f"{{{ns}}}encrypted"))
            try:
                try:
                    result = await self.client.decrypt(sender, xml, to=to, group_chat=group)
                except errors.UnlistedDevice as e:
                    # A group message from a device the sender's list does not name (yet): fetch
                    # that list as asked, then once more; refused again, the device is not theirs.
                    if not await self.do_actions(e.data.get("actions", [])):
                        raise
                    result = await self.client.decrypt(sender, xml, to=to, group_chat=group)
            except (errors.NotForThisDevice, errors.UnknownOwnMessage) as e:
                error = e
                continue
            await self.do_actions(result["actions"])
            return self._decryption(stanza, sender, result.get("body"), result, room, archived, carbon)
        assert error is not None
        if sender == self.me and room is not None and stanza["id"] in self._sent:
            # Our own reflection that omemod does not keep: the text this process sent.
            return self._decryption(stanza, self.me, self._sent[stanza["id"]], None, room, archived, carbon, own=True)
        raise error

    def _decryption(self, stanza: Message, sender: str, body: Optional[str], result: Optional[Decrypted],
                    room: Optional[str], archived: bool, carbon: Optional[str], own: bool = False) -> Decryption:
        msg = copy.copy(stanza)
        for child in list(msg.xml):
            if child.tag in {f"{{{ns}}}encrypted" for ns in NAMESPACES} | {f"{{{EME}}}encryption", "{jabber:client}body"}:
                msg.xml.remove(child)
        empty = bool(result and result["empty"])
        if not empty and body is not None:
            msg["body"] = body
        device = result["sender"] if result else None
        own = own or bool(result and result.get("own"))
        return Decryption(stanza, msg, sender, None if empty else (body or ""), result["namespace"] if result else None,
                          device["device_id"] if device else self.device_id, device["trust"] if device else None,
                          empty, bool(result and result["redelivered"]), room, archived, carbon, own, result)

    def _on_encrypted(self, msg: Message, ns: str) -> None:
        if ns == OLDMEMO and OMEMO2 in self.is_encrypted(msg):
            return  # one stanza with both: handled once, by the OMEMO 2 handler
        if msg["from"] == self.xmpp.boundjid:
            return  # what we sent to our own JID, delivered back to us: never encrypted for us
        if self.auto_decrypt and msg["type"] in ("chat", "normal", "groupchat"):
            asyncio.ensure_future(self._receive(msg))

    async def _on_carbon_received(self, msg: Message) -> None:
        inner = msg["carbon_received"]
        if self.auto_decrypt and self.is_encrypted(inner):
            await self._receive(inner, carbon="received")

    async def _on_carbon_sent(self, msg: Message) -> None:
        inner = msg["carbon_sent"]
        if self.auto_decrypt and self.is_encrypted(inner):
            await self._receive(inner, carbon="sent")

    async def _receive(self, msg: Message, carbon: Optional[str] = None) -> None:
        # One at a time, in arrival order: what is shown keeps the order it was sent in.
        async with self._incoming:
            await self.ready.wait()
            try:
                d = await self.decrypt_message(msg, carbon=carbon)
            except (OmemodError, ValueError) as e:
                group = msg["type"] == "groupchat"
                room = msg["from"].bare if group else None
                # In a room, the occupant's real JID when the room tells it (None otherwise).
                sender = (self._real_sender(msg, room) or None) if room else msg["from"].bare
                self.xmpp.event("omemo_decryption_failed",
                                DecryptionFailure(msg, sender, e, room, False, carbon))
                return
        self.xmpp.event("omemo_empty_message" if d.empty else "omemo_message", d)

    # ---- the archive (XEP-0313) ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def catching_up(self) -> AsyncIterator[None]:
        """`catchup.begin` … `catchup.end` around reading the archive; the heartbeats deferred
        meanwhile are sent at the end."""
        await self.client.catchup_begin()
        try:
            yield
        finally:
            end = await self.client.catchup_end()
            await self.do_actions(end["actions"])

    async def archive(self, after: Optional[str] = None, *, with_jid: Optional[str] = None,
                      room: Optional[str] = None, limit: int = 1000) -> AsyncIterator[ArchivedMessage]:
        """The archived messages after archive id `after` (of our account, or of `room`), oldest
        first, decrypted where encrypted, inside `catching_up()`."""
        mam = self.xmpp.plugin["xep_0313"]
        async with self.catching_up():
            count = 0
            async for page in mam.iterate(jid=JID(room) if room else None, with_jid=JID(with_jid) if with_jid else None,
                                          rsm={"after": after, "max": 50} if after else {"max": 50}):
                result = page["mam_result"]
                inner = result["forwarded"]["stanza"]
                item = ArchivedMessage(result["id"], inner)
                if self.is_encrypted(inner):
                    try:
                        item.decryption = await self.decrypt_message(inner, archived=True)
                    except (OmemodError, ValueError) as e:
                        item.error = e
                yield item
                count += 1
                if count >= limit:
                    break

    # ---- files (XEP-0454 over XEP-0363) ----------------------------------------------------------

    async def find_upload_service(self) -> Tuple[str, Optional[int]]:
        """Our server's XEP-0363 upload service (disco#items of our domain, then disco#info of
        each) and its `max-file-size` (None when it names none); remembered for the session."""
        if self._upload_service is not None:
            return self._upload_service
        disco = self.xmpp.plugin["xep_0030"]
        domain = self.xmpp.boundjid.domain
        items = await disco.get_items(jid=domain, timeout=IQ_TIMEOUT)
        for jid in [domain] + [str(i[0]) for i in items["disco_items"]["items"]]:
            try:
                info = await disco.get_info(jid=jid, timeout=IQ_TIMEOUT)
            except (IqError, IqTimeout):
                continue
            if HTTP_UPLOAD not in info["disco_info"]["features"]:
                continue
            limit = None
            for field_ in info.xml.iter("{jabber:x:data}field"):
                value = field_.find("{jabber:x:data}value")
                if field_.get("var") == "max-file-size" and value is not None and (value.text or "").isdigit():
                    limit = int(value.text or "0")
            self._upload_service = (jid, limit)
            return self._upload_service
        raise UploadUnavailable(f"{domain} offers no HTTP upload ({HTTP_UPLOAD})")

    async def request_slot(self, filename: str, size: int,
                           content_type: str = "application/octet-stream") -> Tuple[str, str, Dict[str, str]]:
        """An upload slot for `size` bytes: (PUT URL, GET URL, headers to send with the PUT)."""
        service, limit = await self.find_upload_service()
        if limit is not None and size > limit:
            raise UploadUnavailable(f"{size} bytes to upload; {service} takes at most {limit}")
        iq = self.xmpp.make_iq_get(ito=service)
        iq.append(ET.Element(f"{{{HTTP_UPLOAD}}}request",
                             {"filename": filename, "size": str(size), "content-type": content_type}))
        try:
            result = await iq.send(timeout=IQ_TIMEOUT)
        except IqError as e:  # e.g. <file-too-large/> with the limit, <not-allowed/>
            raise UploadUnavailable(f"{service} refused the slot: {e.iq['error']['condition']} "
                                    f"{e.iq['error']['text']}".rstrip()) from e
        put = result.xml.find(f"{{{HTTP_UPLOAD}}}slot/{{{HTTP_UPLOAD}}}put")
        get = result.xml.find(f"{{{HTTP_UPLOAD}}}slot/{{{HTTP_UPLOAD}}}get")
        if put is None or get is None or not put.get("url") or not get.get("url"):
            raise UploadUnavailable(f"{service} answered no slot")
        headers = {h.get("name", ""): h.text or "" for h in put.findall(f"{{{HTTP_UPLOAD}}}header")}
        return put.get("url", ""), get.get("url", ""), headers

    async def upload_file(self, path: str, *, filename: Optional[str] = None) -> str:
        """Encrypts the file at `path` (omemod's `file.*`), uploads it to a slot of our server and
        returns the link to send: `aesgcm://…` for an HTTPS slot, else `http://…#<IV><key>`."""
        size = os.path.getsize(path)
        put, get, headers = await self.request_slot(filename or os.path.basename(path), size + files.TAG_BYTES)
        with tempfile.TemporaryFile() as upload:
            link, upload_size = await files.encrypt_file(self.client, path, upload, url=get)
            upload.flush()
            try:
                status = await asyncio.to_thread(files.http_put, put, upload, upload_size, headers)
            except OSError as e:  # urllib's HTTPError (a 4xx or 5xx) and URLError are OSErrors
                raise UploadUnavailable(f"the upload failed: {e}") from e
        if status not in (200, 201):
            raise UploadUnavailable(f"the upload answered HTTP {status}")
        return link

    async def send_file(self, mto: Union[str, JID], path: str, mtype: str = "chat") -> Tuple[str, Encryption]:
        """Uploads the file at `path` encrypted (`upload_file`) and sends its link as the body of
        an OMEMO message to `mto` (a JID or, with `mtype="groupchat"`, a room): the link only
        ever travels encrypted. Returns the link and what `send_message` answered."""
        link = await self.upload_file(path)
        return link, await self.send_message(mto, link, mtype)

    async def open_file(self, link: str, dest: str, *, max_bytes: Optional[int] = None) -> int:
        """Downloads the file of a XEP-0454 link (`files.file_link` recognises one in a body) and
        decrypts it into `dest`, written only once the whole file authenticated; returns its
        size. A wrong key or an altered download raises `errors.AuthenticationFailed`."""
        url = await files.download_url(self.client, link)
        with tempfile.NamedTemporaryFile(prefix=".omemod-download-") as download:
            await asyncio.to_thread(files.http_get, url, download, max_bytes)
            download.flush()
            return await files.decrypt_file(self.client, link, download.name, dest)


register_plugin(XEP_0384_omemod)
