#!/usr/bin/env python3
"""python-omemo peer for omemod's interop tests, driven by JSON lines on stdin.

One JSON object per line in, one JSON object per line out (see tests/interop/README.md). The peer
wraps the real python-omemo stack (omemo.SessionManager with the oldmemo and twomemo backends) and
speaks only the network formats: device lists, bundles and <encrypted> elements are XEP-0384 XML
strings. There is no XMPP server: a "fake PEP" inside the peer holds the device lists and bundles the
test fed in, plus the items this peer published itself. The OMEMO state and the fake PEP are kept in
one JSON file (given at init), so a restarted peer carries on where it stopped.

Standard library and the packages pinned in tests/interop/requirements.txt only. Logs go to stderr;
set OMEMO_PEER_LOG=DEBUG for python-omemo's own debug log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import string
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional

import omemo
import oldmemo
import oldmemo.etree
import twomemo
import twomemo.etree

OLD_NS = oldmemo.oldmemo.NAMESPACE  # eu.siacs.conversations.axolotl
TWO_NS = twomemo.twomemo.NAMESPACE  # urn:xmpp:omemo:2
SCE_NS = "urn:xmpp:sce:1"
CLIENT_NS = "jabber:client"
ALL_NS = [TWO_NS, OLD_NS]  # default priority order when a command names none

# Trust level names stored by python-omemo (its "custom" trust levels are plain strings).
TRUST_LEVELS = {
    "TRUSTED": omemo.TrustLevel.TRUSTED,
    "DISTRUSTED": omemo.TrustLevel.DISTRUSTED,
    "UNDECIDED": omemo.TrustLevel.UNDECIDED,
}

log = logging.getLogger("omemo-peer")


class BadRequest(Exception):
    """The command line is malformed: not JSON, unknown command, missing or ill-typed field."""


class NotInitialized(Exception):
    """A command other than init/quit arrived before init."""


# --------------------------------------------------------------------------------------------------
# Storage: omemo.Storage persisted to a JSON file
# --------------------------------------------------------------------------------------------------

def _to_plain_json(value: Any) -> Any:
    """Deep copy of a python-omemo JSONType value into plain dicts/lists (and check it is JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _to_plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"value of type {type(value).__name__} is not JSON")


class JsonFileStorage(omemo.Storage):
    """Key/value storage for python-omemo, kept in memory and written to one JSON file.

    File layout: {"version": 1, "omemo": {key: value, ...}, "pep": {...}}. "omemo" holds exactly what
    python-omemo stored; "pep" is the fake PEP (see FakePep). flush() writes atomically (temp file +
    fsync + rename) and is called after every command, so the file always holds the state after the
    last completed command.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.data: Dict[str, Any] = {}
        self.pep: Dict[str, Any] = {}
        self.dirty = False
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "r", encoding="utf-8") as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or doc.get("version") != 1:
                raise ValueError(f"{self.path} is not a peer state file (version 1)")
            self.data = doc.get("omemo", {})
            self.pep = doc.get("pep", {})
            log.info("loaded state from %s (%d keys)", self.path, len(self.data))
        else:
            self.dirty = True

    @property
    def existed(self) -> bool:
        return "/own_device_id" in self.data

    async def _load(self, key: str) -> omemo.Maybe[omemo.JSONType]:
        if key in self.data:
            # Hand out a copy: the library must not be able to change stored state behind our back.
            return omemo.Just(_to_plain_json(self.data[key]))
        return omemo.Nothing()

    async def _store(self, key: str, value: omemo.JSONType) -> None:
        self.data[key] = _to_plain_json(value)
        self.dirty = True

    async def _delete(self, key: str) -> None:
        if key in self.data:
            del self.data[key]
            self.dirty = True

    def mark_dirty(self) -> None:
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        doc = {"version": 1, "omemo": self.data, "pep": self.pep}
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".peer-state-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.dirty = False


# --------------------------------------------------------------------------------------------------
# XML helpers
# --------------------------------------------------------------------------------------------------

def xml_to_string(elt: ET.Element) -> str:
    """Serialize without namespace prefixes: each element whose namespace differs from its parent's
    gets an xmlns='...' attribute, e.g. <list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>.
    (ElementTree's own writer would emit ns0: prefixes, or refuse un-namespaced attributes when given
    default_namespace.)"""

    def write(e: ET.Element, parent_ns: Optional[str]) -> str:
        if e.tag.startswith("{"):
            ns, local = e.tag[1:].split("}", 1)
        else:
            ns, local = "", e.tag
        attrs = "" if ns == parent_ns else f" xmlns='{_esc_attr(ns)}'"
        for k, v in e.attrib.items():
            if k.startswith("{"):
                raise ValueError(f"namespaced attribute {k} not supported")
            attrs += f" {k}='{_esc_attr(v)}'"
        inner = _esc_text(e.text or "") + "".join(write(c, ns) for c in e)
        out = f"<{local}{attrs}>{inner}</{local}>" if inner else f"<{local}{attrs}/>"
        return out + _esc_text(e.tail or "")

    return write(elt, None)


def _esc_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _esc_attr(s: str) -> str:
    return _esc_text(s).replace("'", "&apos;").replace('"', "&quot;")


def parse_xml(text: str, ns: str, local: str) -> ET.Element:
    try:
        elt = ET.fromstring(text)
    except ET.ParseError as e:
        raise BadRequest(f"not well-formed XML: {e}") from e
    if elt.tag != f"{{{ns}}}{local}":
        raise BadRequest(f"expected <{local} xmlns='{ns}'>, got {elt.tag}")
    return elt


def etree_module(ns: str) -> Any:
    if ns == OLD_NS:
        return oldmemo.etree
    if ns == TWO_NS:
        return twomemo.etree
    raise omemo.UnknownNamespace(f"unknown namespace {ns!r}")


DEVICE_LIST_ELEMENT = {OLD_NS: "list", TWO_NS: "devices"}


# --------------------------------------------------------------------------------------------------
# Fake PEP + the session manager subclass
# --------------------------------------------------------------------------------------------------

class FakePep:
    """What a PEP service would hold: device lists per (ns, jid), bundles per (ns, jid, device id).

    Items are kept as XML strings inside the storage file's "pep" section, so they survive restarts.
    """

    def __init__(self, storage: JsonFileStorage) -> None:
        self.storage = storage
        storage.pep.setdefault("devicelists", {})
        storage.pep.setdefault("bundles", {})

    @staticmethod
    def _dl_key(ns: str, jid: str) -> str:
        return f"{ns} {jid}"

    @staticmethod
    def _b_key(ns: str, jid: str, device_id: int) -> str:
        return f"{ns} {jid} {int(device_id)}"

    def get_device_list(self, ns: str, jid: str) -> Optional[str]:
        return self.storage.pep["devicelists"].get(self._dl_key(ns, jid))

    def put_device_list(self, ns: str, jid: str, xml: str) -> None:
        self.storage.pep["devicelists"][self._dl_key(ns, jid)] = xml
        self.storage.mark_dirty()

    def get_bundle(self, ns: str, jid: str, device_id: int) -> Optional[str]:
        return self.storage.pep["bundles"].get(self._b_key(ns, jid, device_id))

    def put_bundle(self, ns: str, jid: str, device_id: int, xml: str) -> None:
        self.storage.pep["bundles"][self._b_key(ns, jid, device_id)] = xml
        self.storage.mark_dirty()

    def delete_bundle(self, ns: str, jid: str, device_id: int) -> None:
        self.storage.pep["bundles"].pop(self._b_key(ns, jid, device_id), None)
        self.storage.mark_dirty()


class Context:
    """Process-wide state the (static) session manager callbacks need.

    python-omemo declares most callbacks as static methods and calls some of them from inside
    SessionManager.create(), before the instance is handed back, so they reach the peer through this
    module-level object (one peer = one account = one process).
    """

    def __init__(self) -> None:
        self.own_jid: str = ""
        self.pep: Optional[FakePep] = None
        self.outbox: List[Dict[str, Any]] = []
        self.blind_trust = True


CTX = Context()


class PeerSessionManager(omemo.SessionManager):
    @staticmethod
    async def _upload_bundle(bundle: omemo.Bundle) -> None:
        assert CTX.pep is not None
        ns = bundle.namespace
        xml = xml_to_string(etree_module(ns).serialize_bundle(bundle))
        CTX.pep.put_bundle(ns, bundle.bare_jid, bundle.device_id, xml)
        log.info("published own bundle ns=%s device=%d", ns, bundle.device_id)

    @staticmethod
    async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
        assert CTX.pep is not None
        mod = etree_module(namespace)
        xml = CTX.pep.get_bundle(namespace, bare_jid, device_id)
        if xml is None:
            raise omemo.BundleNotFound(f"no bundle for {bare_jid}/{device_id} in {namespace}")
        try:
            return mod.parse_bundle(ET.fromstring(xml), bare_jid, device_id)
        except Exception as e:
            raise omemo.BundleDownloadFailed(
                f"stored bundle for {bare_jid}/{device_id} in {namespace} does not parse: {e}"
            ) from e

    @staticmethod
    async def _delete_bundle(namespace: str, device_id: int) -> None:
        assert CTX.pep is not None
        etree_module(namespace)
        CTX.pep.delete_bundle(namespace, CTX.own_jid, device_id)

    @staticmethod
    async def _upload_device_list(namespace: str, device_list: omemo.DeviceList) -> None:
        assert CTX.pep is not None
        xml = xml_to_string(etree_module(namespace).serialize_device_list(device_list))
        CTX.pep.put_device_list(namespace, CTX.own_jid, xml)
        log.info("published own device list ns=%s ids=%s", namespace, sorted(device_list))

    @staticmethod
    async def _download_device_list(namespace: str, bare_jid: str) -> omemo.DeviceList:
        assert CTX.pep is not None
        mod = etree_module(namespace)
        xml = CTX.pep.get_device_list(namespace, bare_jid)
        if xml is None:
            return {}  # python-omemo: a missing device list is an empty one, not an error
        try:
            return mod.parse_device_list(ET.fromstring(xml))
        except Exception as e:
            raise omemo.DeviceListDownloadFailed(
                f"stored device list of {bare_jid} in {namespace} does not parse: {e}"
            ) from e

    async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
        level = TRUST_LEVELS.get(device.trust_level_name)
        if level is None:
            raise omemo.UnknownTrustLevel(f"unknown trust level {device.trust_level_name!r}")
        if level is omemo.TrustLevel.UNDECIDED and CTX.blind_trust:
            return omemo.TrustLevel.TRUSTED
        return level

    async def _make_trust_decision(
        self,
        undecided: FrozenSet[omemo.DeviceInformation],
        identifier: Optional[str]
    ) -> None:
        if not CTX.blind_trust:
            raise omemo.TrustDecisionFailed(
                "blind trust is off and these devices are undecided: "
                + ", ".join(f"{d.bare_jid}/{d.device_id}" for d in undecided)
            )
        for device in undecided:
            await self.set_trust(device.bare_jid, device.identity_key, "TRUSTED")

    @staticmethod
    async def _send_message(message: omemo.Message, bare_jid: str) -> None:
        ns = message.namespace
        xml = xml_to_string(etree_module(ns).serialize_message(message))
        CTX.outbox.append({"to": bare_jid, "ns": ns, "xml": xml})
        log.info("queued empty message to %s ns=%s", bare_jid, ns)


# --------------------------------------------------------------------------------------------------
# SCE envelope (OMEMO 2 plaintext)
# --------------------------------------------------------------------------------------------------

def build_sce_envelope(
    body: str,
    from_jid: str,
    to_jid: Optional[str],
    rpad_len: Optional[int] = None,
    time: Optional[str] = None,
) -> bytes:
    """XEP-0420 envelope as XEP-0384 (OMEMO 2) wants it: <content><body/></content>, <rpad>, <from>;
    `<time stamp>` (XEP-0082) first when given, and `rpad_len` padding characters instead of 0..200."""
    envelope = ET.Element(f"{{{SCE_NS}}}envelope")
    if time is not None:
        ET.SubElement(envelope, f"{{{SCE_NS}}}time", attrib={"stamp": time})
    content = ET.SubElement(envelope, f"{{{SCE_NS}}}content")
    ET.SubElement(content, f"{{{CLIENT_NS}}}body").text = body
    # Random-length (0..200) random padding, as XEP-0384 §SCE Profile asks.
    alphabet = string.ascii_letters + string.digits
    length = secrets.randbelow(201) if rpad_len is None else rpad_len
    ET.SubElement(envelope, f"{{{SCE_NS}}}rpad").text = "".join(
        secrets.choice(alphabet) for _ in range(length)
    )
    ET.SubElement(envelope, f"{{{SCE_NS}}}from", attrib={"jid": from_jid})
    if to_jid is not None:
        ET.SubElement(envelope, f"{{{SCE_NS}}}to", attrib={"jid": to_jid})
    return xml_to_string(envelope).encode("utf-8")


def parse_sce_envelope(data: bytes) -> Dict[str, Any]:
    """Extract body text and affix elements from a decrypted OMEMO 2 payload."""
    try:
        envelope = ET.fromstring(data)
    except ET.ParseError as e:
        raise BadEnvelope(f"decrypted OMEMO 2 payload is not XML: {e}") from e
    if envelope.tag != f"{{{SCE_NS}}}envelope":
        raise BadEnvelope(f"decrypted OMEMO 2 payload is <{envelope.tag}>, not an SCE envelope")
    content = envelope.find(f"{{{SCE_NS}}}content")
    if content is None:
        raise BadEnvelope("SCE envelope without <content>")
    body_elt = content.find(f"{{{CLIENT_NS}}}body")
    from_elt = envelope.find(f"{{{SCE_NS}}}from")
    to_elt = envelope.find(f"{{{SCE_NS}}}to")
    time_elt = envelope.find(f"{{{SCE_NS}}}time")
    return {
        "body": None if body_elt is None else (body_elt.text or ""),
        "sce_from": None if from_elt is None else from_elt.get("jid"),
        "sce_to": None if to_elt is None else to_elt.get("jid"),
        "sce_time": None if time_elt is None else time_elt.get("stamp"),
        "sce_rpad": envelope.find(f"{{{SCE_NS}}}rpad") is not None,
    }


class BadEnvelope(Exception):
    """An OMEMO 2 payload decrypted fine but is not a usable SCE envelope."""


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------

def field(cmd: Dict[str, Any], name: str, kind: Any, default: Any = ...) -> Any:
    if name not in cmd:
        if default is ...:
            raise BadRequest(f"missing field {name!r}")
        return default
    value = cmd[name]
    if kind is int and isinstance(value, bool):
        raise BadRequest(f"field {name!r} must be an integer")
    if not isinstance(value, kind):
        raise BadRequest(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def ns_field(cmd: Dict[str, Any], name: str = "ns") -> str:
    ns = field(cmd, name, str)
    if ns not in (OLD_NS, TWO_NS):
        raise omemo.UnknownNamespace(f"unknown namespace {ns!r}")
    return ns


def error_cause(e: BaseException) -> Optional[str]:
    cause = e.__cause__ or e.__context__
    return None if cause is None else type(cause).__name__


class Peer:
    def __init__(self) -> None:
        self.sm: Optional[PeerSessionManager] = None
        self.storage: Optional[JsonFileStorage] = None
        self.backends: Dict[str, omemo.Backend] = {}
        self.device_id = 0
        self.handlers: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "init": self.cmd_init,
            "devicelist": self.cmd_devicelist,
            "bundle": self.cmd_bundle,
            "add_devicelist": self.cmd_add_devicelist,
            "add_bundle": self.cmd_add_bundle,
            "encrypt": self.cmd_encrypt,
            "decrypt": self.cmd_decrypt,
            "outbox": self.cmd_outbox,
            "before_history_sync": self.cmd_before_history_sync,
            "after_history_sync": self.cmd_after_history_sync,
            "devices": self.cmd_devices,
            "set_trust": self.cmd_set_trust,
            "set_label": self.cmd_set_label,
        }

    def need_sm(self) -> PeerSessionManager:
        if self.sm is None:
            raise NotInitialized("send init first")
        return self.sm

    async def cmd_init(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        if self.sm is not None:
            raise BadRequest("already initialized")
        jid = field(cmd, "jid", str)
        path = field(cmd, "storage", str)
        CTX.blind_trust = field(cmd, "blind_trust", bool, True)
        history_sync = field(cmd, "history_sync", bool, False)
        if "/" in jid or "@" not in jid:
            raise BadRequest(f"jid must be a bare JID, got {jid!r}")

        storage = JsonFileStorage(path)
        CTX.own_jid = jid
        CTX.pep = FakePep(storage)
        self.backends = {TWO_NS: twomemo.Twomemo(storage), OLD_NS: oldmemo.Oldmemo(storage)}
        existed = storage.existed
        self.storage = storage
        self.sm = await PeerSessionManager.create(
            backends=[self.backends[TWO_NS], self.backends[OLD_NS]],
            storage=storage,
            own_bare_jid=jid,
            initial_own_label=None,
            undecided_trust_level_name="UNDECIDED",
        )
        own, _ = await self.sm.get_own_device_information()
        self.device_id = own.device_id
        # python-omemo starts in history synchronization mode (empty messages queued, pre keys only
        # hidden). A live client leaves it once caught up; the peer does so at once unless asked not to.
        if not history_sync:
            await self.sm.after_history_sync()
        log.info("init %s device=%d restored=%s", jid, self.device_id, existed)
        return {
            "device_id": self.device_id,
            "restored": existed,
            "fingerprint": "".join(self.sm.format_identity_key(own.identity_key)),
        }

    async def cmd_devicelist(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        self.need_sm()
        ns = ns_field(cmd)
        assert CTX.pep is not None
        xml = CTX.pep.get_device_list(ns, CTX.own_jid)
        if xml is None:
            raise omemo.DeviceListDownloadFailed(f"no own device list published for {ns}")
        return {"xml": xml}

    async def cmd_bundle(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        self.need_sm()
        ns = ns_field(cmd)
        assert CTX.pep is not None
        xml = CTX.pep.get_bundle(ns, CTX.own_jid, self.device_id)
        if xml is None:  # not published (should not happen): build it from the backend
            bundle = await self.backends[ns].get_bundle(CTX.own_jid, self.device_id)
            xml = xml_to_string(etree_module(ns).serialize_bundle(bundle))
        return {"device_id": self.device_id, "xml": xml}

    async def cmd_add_devicelist(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_sm()
        jid = field(cmd, "jid", str)
        ns = ns_field(cmd)
        xml = field(cmd, "xml", str)
        elt = parse_xml(xml, ns, DEVICE_LIST_ELEMENT[ns])
        device_list = etree_module(ns).parse_device_list(elt)  # schema-validates
        assert CTX.pep is not None
        CTX.pep.put_device_list(ns, jid, xml)
        await sm.update_device_list(ns, jid, device_list)
        return {"device_ids": sorted(device_list)}

    async def cmd_add_bundle(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        self.need_sm()
        jid = field(cmd, "jid", str)
        device_id = field(cmd, "device_id", int)
        ns = ns_field(cmd)
        xml = field(cmd, "xml", str)
        elt = parse_xml(xml, ns, "bundle")
        bundle = etree_module(ns).parse_bundle(elt, jid, device_id)  # validates schema and keys
        assert CTX.pep is not None
        CTX.pep.put_bundle(ns, jid, device_id, xml)
        return {"identity_key": base64.b64encode(bundle.identity_key).decode("ascii")}

    async def cmd_encrypt(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_sm()
        to = field(cmd, "to", list)
        if not to or not all(isinstance(j, str) for j in to):
            raise BadRequest("field 'to' must be a non-empty list of bare JIDs")
        body = field(cmd, "body", str)
        order = field(cmd, "ns", list, ALL_NS)
        for ns in order:
            if ns not in (OLD_NS, TWO_NS):
                raise omemo.UnknownNamespace(f"unknown namespace {ns!r}")
        # SCE <to>: the single recipient by default; "sce_to": null omits it, a string overrides it.
        sce_to: Optional[str] = to[0] if len(to) == 1 else None
        if "sce_to" in cmd:
            sce_to = None if cmd["sce_to"] is None else field(cmd, "sce_to", str)
        rpad_len = field(cmd, "rpad_len", int, None)
        time = field(cmd, "time", str, None)
        plaintext = {
            OLD_NS: body.encode("utf-8"),
            TWO_NS: build_sce_envelope(body, CTX.own_jid, sce_to, rpad_len, time),
        }
        messages, errors = await sm.encrypt(frozenset(to), plaintext, backend_priority_order=list(order))
        out: Dict[str, str] = {}
        for message in messages:
            ns = message.namespace
            out[ns] = xml_to_string(etree_module(ns).serialize_message(message))
        return {
            "messages": out,
            "errors": [
                {
                    "ns": e.namespace,
                    "jid": e.bare_jid,
                    "device_id": e.device_id,
                    "error": type(e.exception).__name__,
                    "message": str(e.exception),
                    "cause": error_cause(e.exception),
                }
                for e in sorted(errors, key=lambda e: (e.namespace, e.bare_jid, e.device_id))
            ],
        }

    async def cmd_decrypt(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_sm()
        sender = field(cmd, "from", str)
        xml = field(cmd, "xml", str)
        try:
            elt = ET.fromstring(xml)
        except ET.ParseError as e:
            raise BadRequest(f"not well-formed XML: {e}") from e
        ns = elt.tag[1:].split("}", 1)[0] if elt.tag.startswith("{") else ""
        if ns not in (OLD_NS, TWO_NS) or not elt.tag.endswith("}encrypted"):
            raise omemo.UnknownNamespace(f"not an OMEMO <encrypted> element: {elt.tag}")
        if ns == OLD_NS:
            # oldmemo needs the session manager: the 0.3 wire format lacks the sign bit of the sender's
            # Ed25519 identity key, which it takes from the sender's (downloaded) bundle.
            message = await oldmemo.etree.parse_message(elt, sender, CTX.own_jid, sm)
        else:
            message = twomemo.etree.parse_message(elt, sender)
        plaintext, device, _key_material = await sm.decrypt(message)
        reply: Dict[str, Any] = {
            "ns": ns,
            "sender_device_id": device.device_id,
            "empty": plaintext is None,
            "body": None,
        }
        if plaintext is not None:
            if ns == TWO_NS:
                reply["envelope"] = plaintext.decode("utf-8", errors="replace")
                reply.update(parse_sce_envelope(plaintext))
            else:
                reply["body"] = plaintext.decode("utf-8")
        return reply

    async def cmd_outbox(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        messages, CTX.outbox = CTX.outbox, []
        return {"messages": messages}

    async def cmd_before_history_sync(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        self.need_sm().before_history_sync()
        return {}

    async def cmd_after_history_sync(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        await self.need_sm().after_history_sync()
        return {}

    async def cmd_devices(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_sm()
        jid = field(cmd, "jid", str, CTX.own_jid)
        devices = await sm.get_device_information(jid)
        return {"devices": [
            {
                "device_id": d.device_id,
                "namespaces": sorted(d.namespaces),
                "active": {k: v for k, v in sorted(d.active)},
                "trust": d.trust_level_name,
                "identity_key": base64.b64encode(d.identity_key).decode("ascii"),
                "fingerprint": "".join(sm.format_identity_key(d.identity_key)),
                "label": d.label,
            }
            for d in sorted(devices, key=lambda d: d.device_id)
        ]}

    async def cmd_set_trust(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_sm()
        jid = field(cmd, "jid", str)
        device_id = field(cmd, "device_id", int)
        level = field(cmd, "level", str)
        if level not in TRUST_LEVELS:
            raise omemo.UnknownTrustLevel(f"unknown trust level {level!r}")
        device = next((d for d in await sm.get_device_information(jid) if d.device_id == device_id), None)
        if device is None:
            raise omemo.SenderNotFound(f"device {jid}/{device_id} not known")
        await sm.set_trust(jid, device.identity_key, level)
        return {}

    async def cmd_set_label(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        """Labels our device in the OMEMO 2 list only, as SessionManager.set_own_label would: that
        method also asks oldmemo to sign, which raises NotImplementedError (0.3 has no labels)."""
        self.need_sm()
        label = field(cmd, "label", str)
        device_list = await PeerSessionManager._download_device_list(TWO_NS, CTX.own_jid)
        device_list[self.device_id] = omemo.SignedLabel(
            label=label, signature=await self.backends[TWO_NS].sign_own_label(label)
        )
        await PeerSessionManager._upload_device_list(TWO_NS, device_list)
        assert CTX.pep is not None
        return {"xml": CTX.pep.get_device_list(TWO_NS, CTX.own_jid)}

    async def handle(self, line: str) -> Dict[str, Any]:
        try:
            try:
                cmd = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRequest(f"not JSON: {e}") from e
            if not isinstance(cmd, dict):
                raise BadRequest("a command must be a JSON object")
            name = field(cmd, "cmd", str)
            handler = self.handlers.get(name)
            if handler is None:
                raise BadRequest(f"unknown command {name!r}")
            reply = await handler(cmd)
            return {"ok": True, **reply}
        except Exception as e:  # the peer never dies on a bad command
            log.debug("command failed", exc_info=True)
            reply = {"ok": False, "error": type(e).__name__, "message": str(e)}
            cause = error_cause(e)
            if cause is not None:
                reply["cause"] = cause
            return reply
        finally:
            if self.storage is not None:
                try:
                    self.storage.flush()
                except Exception:
                    log.exception("could not write %s", self.storage.path)

    async def shutdown(self) -> None:
        if self.sm is not None:
            await self.sm.shutdown()
        if self.storage is not None:
            self.storage.flush()


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("OMEMO_PEER_LOG", "WARNING").upper(),
        format="%(asctime)s peer[%(process)d] %(name)s %(levelname)s: %(message)s",
    )
    out = sys.stdout
    sys.stdout = sys.stderr  # anything printed by accident must not corrupt the reply stream

    def reply(obj: Dict[str, Any]) -> None:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    peer = Peer()
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                is_quit = json.loads(line).get("cmd") == "quit"
            except Exception:
                is_quit = False
            if is_quit:
                loop.run_until_complete(peer.shutdown())
                reply({"ok": True})
                return 0
            reply(loop.run_until_complete(peer.handle(line)))
        loop.run_until_complete(peer.shutdown())  # stdin closed: same as quit
        return 0
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
