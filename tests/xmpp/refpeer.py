"""The independent peer of the XMPP test: slixmpp + slixmpp-omemo (python-omemo) from PyPI.

slixmpp-omemo 2.2 handles device lists, bundles, sessions and OMEMO 0.3 messages by itself; it does
not build or open the OMEMO 2 SCE envelope (XEP-0420), so for OMEMO 2 this peer wraps the library's
session manager: it builds the envelope before `SessionManager.encrypt` and opens it after
`SessionManager.decrypt`, checking the `<from>` / `<to>` affixes.
"""

import asyncio
import base64
import logging
import os
import re
import sys
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any, Dict, FrozenSet, List, Optional, Set

import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp import JID, ClientXMPP
from slixmpp.plugins import register_plugin
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp_omemo import XEP_0384

OMEMO2 = twomemo.twomemo.NAMESPACE
OLDMEMO = oldmemo.oldmemo.NAMESPACE
SCE = "urn:xmpp:sce:1"
HTTP_UPLOAD = "urn:xmpp:http:upload:0"
BUNDLE_NODE = {OMEMO2: lambda device: ("urn:xmpp:omemo:2:bundles", str(device)),
               OLDMEMO: lambda device: (f"eu.siacs.conversations.axolotl.bundles:{device}", "current")}

log = logging.getLogger("refpeer")


class MemoryStorage(Storage):
    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class OmemoPlugin(XEP_0384):
    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self._storage = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted: FrozenSet[DeviceInformation],
                                       identifier: Optional[str]) -> None:
        log.info("blindly trusted %d devices", len(blindly_trusted))

    async def _prompt_manual_trust(self, manually_trusted: FrozenSet[DeviceInformation],
                                   identifier: Optional[str]) -> None:
        raise RuntimeError("manual trust is not used in this test")


register_plugin(OmemoPlugin)


def build_envelope(body: str, sender: str, to: str) -> bytes:
    """An SCE envelope (XEP-0420) with a body, random padding and the affixes XEP-0384 requires."""
    env = ET.Element(f"{{{SCE}}}envelope")
    content = ET.SubElement(env, f"{{{SCE}}}content")
    ET.SubElement(content, "{jabber:client}body").text = body
    ET.SubElement(env, f"{{{SCE}}}rpad").text = base64.b64encode(os.urandom(os.urandom(1)[0] % 32 + 1)).decode()
    ET.SubElement(env, f"{{{SCE}}}to", {"jid": to})
    ET.SubElement(env, f"{{{SCE}}}from", {"jid": sender})
    ET.SubElement(env, f"{{{SCE}}}time", {"stamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return ET.tostring(env)


def open_envelope(data: bytes) -> Dict[str, Optional[str]]:
    env = ET.fromstring(data)
    if env.tag != f"{{{SCE}}}envelope":
        raise ValueError(f"not an SCE envelope: {env.tag}")
    content = env.find(f"{{{SCE}}}content")
    body = None
    if content is not None:
        for child in content:
            if child.tag.endswith("}body") or child.tag == "body":
                body = child.text or ""
                break
    affix = {name: (env.find(f"{{{SCE}}}{name}").get("jid") if env.find(f"{{{SCE}}}{name}") is not None else None)
             for name in ("from", "to")}
    return {"body": body, "from": affix["from"], "to": affix["to"]}


class Received:
    def __init__(self, sender: str, body: Optional[str], namespace: str, room: Optional[str], device_id: int):
        self.sender = sender
        self.body = body
        self.namespace = namespace
        self.room = room
        self.device_id = device_id

    def __repr__(self) -> str:
        return f"Received({self.sender}, {self.body!r}, {self.namespace}, room={self.room})"


class RefPeer(ClientXMPP):
    def __init__(self, jid: str, password: str):
        super().__init__(jid, password)
        self.me = JID(jid).bare
        self.received: List[Received] = []
        self.errors: List[str] = []
        self.arrived = asyncio.Event()
        self.initialized = asyncio.Event()
        self.rooms: Dict[str, str] = {}
        for plugin in ("xep_0030", "xep_0004", "xep_0045", "xep_0060", "xep_0163", "xep_0115",
                       "xep_0199", "xep_0280", "xep_0334", "xep_0380"):
            self.register_plugin(plugin)
        self.register_plugin("xep_0384", module=sys.modules[__name__])
        self.enable_plaintext = True
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.plugin["feature_mechanisms"].unencrypted_scram = True
        self.auto_authorize = True
        self.auto_subscribe = True
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("omemo_initialized", lambda _: self.initialized.set())
        # slixmpp's "message" event needs a <body>; empty OMEMO messages have none.
        for ns in (OMEMO2, OLDMEMO):
            self.register_handler(Callback(f"omemo {ns}", MatchXPath(f"{{jabber:client}}message/{{{ns}}}encrypted"),
                                           lambda msg: asyncio.ensure_future(self.on_message(msg))))

    @property
    def omemo(self) -> OmemoPlugin:
        return self.plugin["xep_0384"]

    async def on_start(self, _event: Any) -> None:
        self.send_presence()
        await self.get_roster()

    # ---- sending ----------------------------------------------------------------------------

    async def send_text(self, to: str, body: str, namespace: str, room: Optional[str] = None,
                        resource: Optional[str] = None) -> str:
        """Encrypts `body` in `namespace` for `to` (a bare JID) or, in `room`, for every occupant;
        sent to `to`'s `resource` when given (then the other resources get a carbon)."""
        recipients = self.room_members(room) if room else [to]
        await self.omemo.refresh_device_lists({JID(j) for j in recipients}, force_download=True)
        if namespace == OMEMO2:
            plaintext = build_envelope(body, self.me, room or to)
        else:
            plaintext = body.encode("utf-8")
        sm = await self.omemo.get_session_manager()
        messages, errors = await sm.encrypt(frozenset(recipients), {namespace: plaintext},
                                            backend_priority_order=[namespace])
        if errors:
            log.warning("encryption errors: %s", errors)
        msg = self.make_message(mto=room or (f"{to}/{resource}" if resource else to),
                                mtype="groupchat" if room else "chat")
        for m in messages:
            ser = twomemo.etree.serialize_message(m) if m.namespace == OMEMO2 else oldmemo.etree.serialize_message(m)
            msg.append(ser)
            msg.append(ET.Element("{urn:xmpp:eme:0}encryption", {"namespace": m.namespace}))
        if not messages:
            raise RuntimeError(f"python-omemo produced no message for {recipients}: {errors}")
        msg["body"] = "This message is OMEMO encrypted."
        msg.enable("store")
        msg.send()
        return msg["id"]

    # ---- receiving --------------------------------------------------------------------------

    async def on_message(self, msg: Any) -> None:
        try:
            await self.receive(msg)
        except Exception as e:  # recorded: the test fails on any of these
            log.exception("receive failed")
            self.errors.append(f"{type(e).__name__}: {e}")
            self.arrived.set()

    async def receive(self, msg: Any) -> None:
        group = msg["type"] == "groupchat"
        room = msg["from"].bare if group else None
        two = msg.xml.find(f"{{{OMEMO2}}}encrypted")
        old = msg.xml.find(f"{{{OLDMEMO}}}encrypted")
        if two is None and old is None:
            return
        if group:
            nick = msg["from"].resource
            if nick == self.rooms.get(room):
                return
            real = self.plugin["xep_0045"].get_jid_property(JID(room), nick, "jid")
            if not real:
                raise RuntimeError(f"no real JID for {room}/{nick}")
            sender = JID(real).bare
        else:
            sender = msg["from"].bare
        log.info("decrypting a message from %s", sender)
        sm = await self.omemo.get_session_manager()
        if two is not None:
            message = twomemo.etree.parse_message(two, sender)
        else:
            message = await oldmemo.etree.parse_message(old, sender, self.me, sm)
        log.info("parsed %s", message)
        plaintext, device, _ = await sm.decrypt(message)
        body: Optional[str] = None
        if plaintext is not None:
            if message.namespace == OMEMO2:
                env = open_envelope(plaintext)
                if env["from"] is None or JID(env["from"]).bare != sender:
                    raise RuntimeError(f"SCE <from> {env['from']} is not {sender}")
                expected_to = room or self.me
                if env["to"] is None or JID(env["to"]).bare != expected_to:
                    raise RuntimeError(f"SCE <to> {env['to']} is not {expected_to}")
                body = env["body"] if env["body"] is not None else ""
            else:
                body = plaintext.decode("utf-8")
        self.received.append(Received(sender, body, message.namespace, room, device.device_id))
        log.info("received %r", self.received[-1])
        self.arrived.set()

    async def wait_for(self, pred, timeout: float = 30.0) -> Received:
        """The first received message matching `pred` (removed from the list)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.errors:
                raise AssertionError(f"python-omemo peer failed to decrypt: {self.errors}")
            for i, r in enumerate(self.received):
                if pred(r):
                    return self.received.pop(i)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"python-omemo peer: nothing matching arrived; got {self.received}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    # ---- files (XEP-0454 over XEP-0363), with `cryptography`'s AES-GCM ----------------------------

    async def send_file(self, to: str, data: bytes, namespace: str, service: str, filename: str = "photo.jpg",
                        iv_bytes: int = 12) -> str:
        """Encrypts `data` as XEP-0454 says (AES-256-GCM, the tag appended), uploads it to a slot of
        `service` and sends the link `http://…#<IV><key>` in an OMEMO message; returns the link.
        (The test server's uploads are plain HTTP, and XEP-0454 turns only HTTPS URLs into
        `aesgcm://`.) `iv_bytes`: 12, or 16 as older clients wrote."""
        key, iv = AESGCM.generate_key(bit_length=256), os.urandom(iv_bytes)
        upload = AESGCM(key).encrypt(iv, data, None)
        iq = self.make_iq_get(ito=service)
        iq.append(ET.Element(f"{{{HTTP_UPLOAD}}}request", {"filename": filename, "size": str(len(upload)),
                                                          "content-type": "application/octet-stream"}))
        slot = (await iq.send(timeout=20)).xml.find(f"{{{HTTP_UPLOAD}}}slot")
        put, get = slot.find(f"{{{HTTP_UPLOAD}}}put"), slot.find(f"{{{HTTP_UPLOAD}}}get")
        headers = {h.get("name"): h.text for h in put.findall(f"{{{HTTP_UPLOAD}}}header")}
        headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(put.get("url"), data=upload, method="PUT", headers=headers)
        status = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=60).status)
        if status != 201:
            raise RuntimeError(f"upload answered HTTP {status}")
        link = f"{get.get('url')}#{iv.hex()}{key.hex()}"
        await self.send_text(to, link, namespace)
        return link

    @staticmethod
    async def open_file(link: str) -> bytes:
        """Downloads and decrypts a XEP-0454 link (`aesgcm://` read as `https://`, or
        `http(s)://…#fragment`); the last 16 bytes of the download are the tag."""
        m = re.fullmatch(r"(aesgcm|https?)(://[^#]+)#([0-9a-fA-F]{88}|[0-9a-fA-F]{96})", link)
        if m is None:
            raise ValueError(f"not a XEP-0454 link: {link}")
        url = ("https" if m.group(1) == "aesgcm" else m.group(1)) + m.group(2)
        secret = bytes.fromhex(m.group(3))
        iv, key = secret[:-32], secret[-32:]
        download = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=60).read())
        return AESGCM(key).decrypt(iv, download, None)

    # ---- bundles ------------------------------------------------------------------------------

    async def published_bundle(self, namespace: str) -> str:
        """Our bundle in `namespace` as the server holds it now (XML)."""
        sm = await self.omemo.get_session_manager()
        own, _ = await sm.get_own_device_information()
        node, item = BUNDLE_NODE[namespace](own.device_id)
        iq = await self.plugin["xep_0060"].get_item(self.me, node, item, timeout=20)
        return "".join(tostring(i.xml[0]) for i in iq["pubsub"]["items"] if len(i.xml))

    # ---- group chat -------------------------------------------------------------------------

    async def create_room(self, room: str, nick: str, members: List[str]) -> None:
        """Creates a members-only, non-anonymous, persistent room and makes `members` members."""
        muc = self.plugin["xep_0045"]
        await muc.join_muc_wait(JID(room), nick, maxstanzas=0, timeout=20)
        self.rooms[room] = nick
        form = self.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
        form.add_field(var="muc#roomconfig_membersonly", ftype="boolean", value=True)
        form.add_field(var="muc#roomconfig_whois", ftype="list-single", value="anyone")
        form.add_field(var="muc#roomconfig_persistentroom", ftype="boolean", value=True)
        form.add_field(var="muc#roomconfig_publicroom", ftype="boolean", value=False)
        await muc.set_room_config(JID(room), form)
        for m in members:
            await muc.set_affiliation(JID(room), "member", jid=JID(m))

    def room_members(self, room: str) -> List[str]:
        muc = self.plugin["xep_0045"]
        out: Set[str] = set()
        for nick in muc.get_roster(JID(room)) or []:
            real = muc.get_jid_property(JID(room), nick, "jid")
            if real and JID(real).bare != self.me:
                out.add(JID(real).bare)
        return sorted(out)
