#!/usr/bin/env python3
"""omemo-chat: a small XMPP chat client (slixmpp) whose OMEMO encryption is done by omemod.

The client moves stanzas and PEP items; omemod (reached over its Unix socket with JSON-RPC 2.0,
one object per line) owns the OMEMO device: it says what to publish, encrypts and decrypts, and
tells us which bundles and device lists it needs (its "actions").

Run it against your own server:

    omemod serve &                                  # once, or the systemd user unit
    omemod init --jid you@example.org               # once: create the OMEMO device
    OMEMO_CHAT_PASSWORD=... python3 omemo_chat.py --jid you@example.org

Then type `/to friend@example.org` and chat; `/help` lists the commands.
"""

import argparse
import asyncio
import getpass
import json
import logging
import os
import stat
import sys
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional, Set

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

OMEMO2 = "urn:xmpp:omemo:2"
OLDMEMO = "eu.siacs.conversations.axolotl"
NAMESPACES = (OMEMO2, OLDMEMO)
DEVICELIST_NODE = {OMEMO2: "urn:xmpp:omemo:2:devices", OLDMEMO: "eu.siacs.conversations.axolotl.devicelist"}
NODE_NAMESPACE = {node: ns for ns, node in DEVICELIST_NODE.items()}
SHORT = {"omemo2": [OMEMO2], "oldmemo": [OLDMEMO], "auto": None}
FALLBACK = "I sent you an OMEMO encrypted message but your client doesn't seem to support that."
EME = "urn:xmpp:eme:0"
HINTS = "urn:xmpp:hints"
STANZA_ID = "urn:xmpp:sid:0"
ACTION_TYPES = ("publish_bundle", "publish_devicelist", "send_heartbeat", "fetch_bundle", "fetch_devicelist")
RPC_TIMEOUT = 30.0
IQ_TIMEOUT = 20

log = logging.getLogger("omemo-chat")


class RpcError(Exception):
    """An error answer of omemod; switch on `kind` (the stable `data.kind`)."""

    def __init__(self, error: Dict[str, Any]):
        self.code = error.get("code")
        self.data = error.get("data") or {}
        self.kind = self.data.get("kind", "unknown")
        super().__init__(f"{self.kind}: {error.get('message')}")


class Omemod:
    """A JSON-RPC line client for omemod that survives a daemon restart.

    Answers may come out of order, so they are matched by id. When the connection drops, pending
    calls fail, the client reconnects (bounded), subscribes again and retries each call once.
    """

    def __init__(self, path: str, account: str, on_event: Callable[[Dict[str, Any]], None]):
        self.path = path
        self.account = account
        self.on_event = on_event
        self.next_id = 1
        self.pending: Dict[int, asyncio.Future] = {}
        self.writer: Optional[asyncio.StreamWriter] = None
        self.ready = asyncio.Event()
        self.reconnecting: Optional[asyncio.Task] = None
        self.closed = False
        self.params: Dict[str, Set[str]] = {}

    async def connect(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=32 << 20)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot reach omemod at {self.path}: {e}") from e
                await asyncio.sleep(0.2)
        self.writer = writer
        asyncio.ensure_future(self._read(reader))
        self.ready.set()
        # Events announce what to republish; answers to our own calls carry the other actions.
        await self.call("subscribe", {}, with_account=False)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("method") == "event":
                event = (msg.get("params") or {}).get("event") or {}
                try:
                    self.on_event(event)
                except Exception:  # an event handler bug must not kill the connection
                    log.exception("event handler failed")
                continue
            fut = self.pending.pop(msg.get("id"), None) if isinstance(msg, dict) else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
        # Connection lost: fail what is pending and reconnect in the background.
        self.ready.clear()
        self.writer = None
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("omemod connection lost"))
        self.pending.clear()
        if not self.closed and self.reconnecting is None:
            self.reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            log.warning("omemod connection lost, reconnecting")
            await self.connect(timeout=60.0)
        except Exception as e:
            log.error("omemod is gone: %s", e)
        finally:
            self.reconnecting = None

    async def call(self, method: str, params: Dict[str, Any], with_account: bool = True) -> Any:
        if with_account and self.account:
            params = dict(params, account=self.account)
        for attempt in (1, 2):
            try:
                await asyncio.wait_for(self.ready.wait(), 60.0)
                assert self.writer is not None
                rid = self.next_id
                self.next_id += 1
                fut = asyncio.get_running_loop().create_future()
                self.pending[rid] = fut
                req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
                self.writer.write(json.dumps(req).encode() + b"\n")
                await self.writer.drain()
                reply = await asyncio.wait_for(fut, RPC_TIMEOUT)
            except (ConnectionError, OSError, AssertionError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)
                continue
            if "error" in reply:
                raise RpcError(reply["error"])
            return reply.get("result")
        raise ConnectionError("unreachable")

    async def decrypt(self, sender: str, xml: str, to: str, group_chat: bool) -> Dict[str, Any]:
        """`decrypt`, passing `to` / `group_chat` only if this omemod knows them (newer versions)."""
        known = await self.params_of("decrypt")
        params: Dict[str, Any] = {"from": sender, "xml": xml}
        if "to" in known:
            params["to"] = to
        if "group_chat" in known:
            params["group_chat"] = group_chat
        try:
            return await self.call("decrypt", params)
        except RpcError as e:
            if e.kind != "invalid_params" or ("to" not in params and "group_chat" not in params):
                raise
            self.params["decrypt"] = set()
            return await self.call("decrypt", {"from": sender, "xml": xml})

    async def params_of(self, method: str) -> Set[str]:
        """The param names `method` accepts, from `rpc.discover` (once)."""
        if not self.params:
            try:
                doc = await self.call("rpc.discover", {}, with_account=False)
            except RpcError:
                doc = {}
            for m in doc.get("methods", []):
                self.params[m.get("name")] = {p.get("name") for p in m.get("params", [])}
        return self.params.get(method, set())

    def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            self.writer.close()


class Chat(slixmpp.ClientXMPP):
    def __init__(self, args: argparse.Namespace, password: str):
        super().__init__(args.jid, password)
        self.args = args
        self.me = JID(args.jid).bare
        self.out = Output(args.json)
        self.rpc = Omemod(args.socket, args.account or self.me, self.on_omemod_event)
        self.namespaces: Optional[List[str]] = SHORT[args.namespace]
        self.target: Optional[str] = None
        self.rooms: Dict[str, str] = {}  # room bare JID -> our nick
        self.seen: Set[str] = set()  # archive ids already handled
        self.state_file = args.state
        self.last_archive_id: Optional[str] = self._load_state()
        self.ready = False
        self.quitting = False
        self.failed = asyncio.Event()
        for plugin in ("xep_0030", "xep_0004", "xep_0059", "xep_0060", "xep_0163", "xep_0115",
                       "xep_0045", "xep_0297", "xep_0313", "xep_0334", "xep_0380", "xep_0199"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.on_session_start)
        # slixmpp's "message" event needs a <body>; empty OMEMO messages (heartbeats) have none.
        for ns in NAMESPACES:
            self.register_handler(Callback(f"omemo {ns}", MatchXPath(f"{{jabber:client}}message/{{{ns}}}encrypted"),
                                           self.on_encrypted))
        self.add_event_handler("message", self.on_plain)
        self.add_event_handler("groupchat_presence", self.on_room_presence)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("failed_auth", lambda _: (self.out.error("login failed"), self.give_up()))
        for ns, node in DEVICELIST_NODE.items():
            self.plugin["xep_0060"].map_node_event(node, "devicelist_" + ns)
            # +notify in our disco/caps: the server pushes contacts' device lists to us.
            self.plugin["xep_0163"].add_interest(node)
            self.add_event_handler("devicelist_" + ns + "_publish", self.on_devicelist_event)
        self.auto_authorize = True
        self.auto_subscribe = True

    # ---- start-up ---------------------------------------------------------------------------

    async def on_session_start(self, _event: Any) -> None:
        try:
            await self.start_up()
        except Exception as e:
            self.out.error(f"start-up failed: {e}")
            log.debug("start-up failed", exc_info=True)
            self.give_up()

    def give_up(self, *_args: Any) -> None:
        self.quitting = True
        self.failed.set()
        self.disconnect()

    async def start_up(self) -> None:
        self.send_presence()
        await self.get_roster()
        if self.rpc.writer is None:
            await self.rpc.connect()
        accounts = await self.rpc.call("account.list", {}, with_account=False)
        if self.rpc.account not in [a["jid"] for a in accounts]:
            if not self.args.create_account:
                raise RuntimeError(f"omemod has no account {self.rpc.account}: run `omemod init --jid "
                                   f"{self.rpc.account}` or pass --create-account")
            await self.rpc.call("account.create", {"jid": self.rpc.account}, with_account=False)
        # Our own device lists first, so that publishing ours keeps our other devices in them.
        for ns in NAMESPACES:
            await self.fetch_devicelist(self.me, ns)
        for ns in NAMESPACES:
            await self.publish("devicelist.get", ns)
            await self.publish("bundle.get", ns)
        await self.read_archive()
        for room in list(self.rooms):
            await self.join(room, self.rooms[room])
        self.ready = True
        fp = await self.rpc.call("fingerprint.get", {})
        self.out.emit("ready", f"online as {self.boundjid.full}, device {fp['device_id']}, "
                      f"fingerprint {fp['fingerprint']}", jid=self.boundjid.full, device_id=fp["device_id"])

    def on_disconnected(self, _event: Any) -> None:
        self.ready = False
        if not self.quitting:
            # Connect again; session_start then republishes, rejoins rooms and reads the archive.
            self.out.error("disconnected from the server, reconnecting in 5 s")
            asyncio.get_running_loop().call_later(5, self.connect_again)

    def connect_again(self) -> None:
        if not self.quitting:
            self.connect(self.args.host, self.args.port) if self.args.host else self.connect()

    # ---- PEP: device lists and bundles ------------------------------------------------------

    async def publish(self, method: str, ns: str) -> None:
        """Publishes what `bundle.get` / `devicelist.get` returns, at the node and item it names."""
        item = await self.rpc.call(method, {"namespace": ns})
        form = Form()
        form["type"] = "submit"
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
        for var, value in item["publish_options"].items():
            form.add_field(var=var, value=value)
        payload = ET.fromstring(item["xml"])
        pubsub = self.plugin["xep_0060"]
        try:
            await pubsub.publish(self.me, item["node"], id=item["item_id"], payload=payload,
                                 options=form, timeout=IQ_TIMEOUT)
        except IqError as e:
            # An existing node with other options: reconfigure it, then publish again.
            if e.iq["error"]["condition"] != "conflict" and \
                    e.iq.xml.find(".//{http://jabber.org/protocol/pubsub#errors}precondition-not-met") is None:
                raise
            config = Form()
            config["type"] = "submit"
            config.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
            for var, value in item["publish_options"].items():
                config.add_field(var=var, value=value)
            await pubsub.set_node_config(self.me, item["node"], config, timeout=IQ_TIMEOUT)
            await pubsub.publish(self.me, item["node"], id=item["item_id"], payload=payload,
                                 options=form, timeout=IQ_TIMEOUT)
        log.info("published %s %s", item["node"], item["item_id"])

    async def fetch_devicelist(self, jid: str, ns: str) -> None:
        try:
            iq = await self.plugin["xep_0060"].get_items(jid, DEVICELIST_NODE[ns], max_items=1, timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout) as e:
            log.info("no %s device list for %s (%s)", ns, jid, e)
            return
        for item in iq["pubsub"]["items"]:
            payload = item.xml[0] if len(item.xml) else None
            if payload is not None:
                await self.devicelist_update(jid, ns, payload)
                return

    async def devicelist_update(self, jid: str, ns: str, payload: ET.Element) -> None:
        result = await self.rpc.call("devicelist.update", {"jid": jid, "namespace": ns, "xml": tostring(payload)})
        await self.handle_actions(result.get("actions", []))

    async def on_devicelist_event(self, msg: Any) -> None:
        node = msg["pubsub_event"]["items"]["node"]
        ns = NODE_NAMESPACE.get(node)
        if ns is None:
            return
        for item in msg["pubsub_event"]["items"]:
            if len(item.xml):
                try:
                    await self.devicelist_update(msg["from"].bare, ns, item.xml[0])
                except Exception as e:
                    self.out.error(f"device list of {msg['from'].bare}: {e}")

    async def fetch_bundle(self, action: Dict[str, Any]) -> bool:
        try:
            iq = await self.plugin["xep_0060"].get_item(action["jid"], action["node"], action["item_id"], timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout) as e:
            log.info("bundle %s/%s unavailable: %s", action["jid"], action["device_id"], e)
            return False
        for item in iq["pubsub"]["items"]:
            if len(item.xml):
                try:
                    await self.rpc.call("bundle.update", {
                        "jid": action["jid"], "namespace": action["namespace"],
                        "device_id": action["device_id"], "xml": tostring(item.xml[0])})
                    return True
                except RpcError as e:
                    self.out.error(f"bundle of {action['jid']}/{action['device_id']} refused: {e.kind}")
        return False

    async def handle_actions(self, actions: List[Dict[str, Any]]) -> bool:
        """Does what omemod asks; returns whether a bundle or device list was fetched."""
        fetched = False
        done: Set[str] = set()
        for a in actions:
            key = json.dumps(a, sort_keys=True)
            if key in done:
                continue
            done.add(key)
            kind = a.get("type")
            try:
                if kind == "publish_bundle":
                    await self.publish("bundle.get", a["namespace"])
                elif kind == "publish_devicelist":
                    await self.publish("devicelist.get", a["namespace"])
                elif kind == "fetch_bundle":
                    fetched |= await self.fetch_bundle(a)
                elif kind == "fetch_devicelist":
                    await self.fetch_devicelist(a["jid"], a["namespace"])
                    fetched = True
                elif kind == "send_heartbeat":
                    hb = await self.rpc.call("heartbeat", {"jid": a["jid"], "namespace": a["namespace"],
                                                            "device_id": a["device_id"]})
                    self.send_encrypted(a["jid"], "chat", hb["messages"], None)
                    log.info("sent a heartbeat to %s/%s", a["jid"], a["device_id"])
                else:
                    log.info("ignoring action %s", kind)
            except (RpcError, IqError, IqTimeout) as e:
                self.out.error(f"action {kind} failed: {e}")
        return fetched

    def on_omemod_event(self, event: Dict[str, Any]) -> None:
        # A duty is done once. The process whose call caused it finds it in the call's answer
        # (`actions`); the event then says `in_answer: true` and is only news. Duties no call caused
        # (`in_answer: false`, e.g. after a signed prekey rotation) go to one subscriber, which does
        # them. Older omemods send neither field nor the new names: republishing is idempotent,
        # so every process does it (`bundle_changed`); their `heartbeat_due` goes with an answer.
        kind = event.get("type")
        in_answer = event.get("in_answer")
        if kind in ACTION_TYPES:
            if in_answer is False or (in_answer is None and kind in ("publish_bundle", "publish_devicelist")):
                asyncio.ensure_future(self.handle_actions([event]))
        elif kind == "bundle_changed":
            asyncio.ensure_future(self.handle_actions([{"type": "publish_bundle", "namespace": event["namespace"]}]))
        elif kind == "events_lost":
            # Missed duties: republishing what omemod holds now covers the ones that matter.
            log.warning("omemod dropped %s events", event.get("missed"))
            asyncio.ensure_future(self.handle_actions(
                [{"type": t, "namespace": ns} for ns in NAMESPACES for t in ("publish_devicelist", "publish_bundle")]))
        else:
            log.debug("event %s", kind)  # unknown and informational types are fine to ignore

    # ---- sending ----------------------------------------------------------------------------

    async def encrypt(self, recipients: List[str], body: Optional[str], sce_to: Optional[str],
                      key: Optional[str] = None) -> Dict[str, Any]:
        params: Dict[str, Any] = {"to": recipients}
        if key and "idempotency_key" in await self.rpc.params_of("encrypt"):
            # A retry after a lost answer (omemod restarted) then gets the same message back.
            params["idempotency_key"] = key
        if body is not None:
            params["body"] = body
        if self.namespaces:
            params["namespaces"] = self.namespaces
        if sce_to:
            params["sce_to"] = sce_to
        result = await self.rpc.call("encrypt", params)
        asked: Set[str] = set()
        for _ in range(3):  # device list, then bundles: at most a few rounds
            wanted = [d["action"] for d in result.get("devices", []) if d.get("action")]
            wanted += [a for a in result.get("actions", []) if a.get("type") in ("fetch_bundle", "fetch_devicelist")]
            wanted = [a for a in wanted if json.dumps(a, sort_keys=True) not in asked]
            asked.update(json.dumps(a, sort_keys=True) for a in wanted)
            if not wanted or not await self.handle_actions(wanted):
                break
            # Fetched something new: encrypt again so that those devices are included.
            if "idempotency_key" in params:
                params["idempotency_key"] = f"{key}/{len(asked)}"  # another request: another key
            result = await self.rpc.call("encrypt", params)
        await self.handle_actions([a for a in result.get("actions", [])
                                   if a.get("type") not in ("fetch_bundle", "fetch_devicelist")])
        return result

    def send_encrypted(self, to: str, mtype: str, messages: List[Dict[str, Any]], body: Optional[str],
                       sid: Optional[str] = None) -> Any:
        msg = self.make_message(mto=to, mtype=mtype)
        if sid:
            msg["id"] = sid
        for m in messages:
            msg.append(ET.fromstring(m["xml"]))
            # XEP-0380: tell clients without OMEMO why there is nothing to read.
            msg.append(ET.Element(f"{{{EME}}}encryption", {"namespace": m["namespace"],
                                                           "name": "OMEMO" if m["namespace"] == OMEMO2 else "OMEMO (0.3)"}))
        if body is not None:
            msg["body"] = FALLBACK
        msg.append(ET.Element(f"{{{HINTS}}}store"))
        msg.send()
        return msg

    async def send_text(self, body: Optional[str]) -> None:
        if self.target is None:
            self.out.error("no recipient: use /to JID or /join ROOM")
            return
        target = self.target
        sid = self.new_id()
        occupants: List[str] = []
        if target in self.rooms:
            occupants = self.room_members(target)
            if not occupants:
                self.out.error(f"nobody else in {target}")
                return
            result = await self.encrypt(occupants, body, sce_to=target, key=sid)
            mtype = "groupchat"
        else:
            result = await self.encrypt([target], body, sce_to=None, key=sid)
            mtype = "chat"
        recipients = occupants if target in self.rooms else [target]
        devices = result.get("devices", [])
        reached = [d for d in devices if d["status"] == "encrypted" and d["jid"] in recipients]
        missed = [d for d in devices if d["status"] != "encrypted"]
        if not result["messages"] or not reached:
            reasons = "; ".join(f"{d['jid']}/{d['device_id']}: {d['status']}" for d in missed)
            self.out.error(f"could not encrypt for {target}: {reasons or 'no devices'}")
            return
        if missed:
            self.out.emit("warning", "! not encrypted for " + ", ".join(
                f"{d['jid']}/{d['device_id']} ({d['status']})" for d in missed), devices=missed)
        self.send_encrypted(target, mtype, result["messages"], body, sid)
        self.out.emit("sent", f"-> {target}: {body if body is not None else '(empty OMEMO message)'}",
                      to=target, body=body, namespaces=[m["namespace"] for m in result["messages"]],
                      devices=len(reached))

    # ---- receiving --------------------------------------------------------------------------

    def on_encrypted(self, msg: Any) -> None:
        asyncio.ensure_future(self.on_message(msg))

    async def on_plain(self, msg: Any) -> None:
        if not any(msg.xml.find(f"{{{ns}}}encrypted") is not None for ns in NAMESPACES):
            await self.on_message(msg)

    async def on_message(self, msg: Any) -> None:
        if msg["type"] not in ("chat", "normal", "groupchat"):
            return
        archive_id = self._archive_id(msg, msg["to"].bare if msg["type"] != "groupchat" else msg["from"].bare)
        await self.receive(msg, archive_id, archived=False)
        if archive_id and msg["type"] != "groupchat":
            self._remember(archive_id)

    def _archive_id(self, msg: Any, by: str) -> Optional[str]:
        for sid in msg.xml.findall(f"{{{STANZA_ID}}}stanza-id"):
            if sid.get("by") == by:
                return sid.get("id")
        return None

    async def receive(self, msg: Any, archive_id: Optional[str], archived: bool) -> None:
        if archive_id is not None:
            if archive_id in self.seen:
                return
            self.seen.add(archive_id)
        encrypted = {ns: msg.xml.find(f"{{{ns}}}encrypted") for ns in NAMESPACES}
        encrypted = {ns: e for ns, e in encrypted.items() if e is not None}
        group = msg["type"] == "groupchat"
        room = msg["from"].bare if group else None
        if group:
            nick = msg["from"].resource
            if nick == self.rooms.get(room):
                return  # our own message reflected by the room: it was not encrypted for us
            real = self.plugin["xep_0045"].get_jid_property(JID(room), nick, "jid")
            if not real:
                self.out.error(f"{room}/{nick}: no real JID (the room must be non-anonymous)")
                return
            sender = JID(real).bare
            to = room
        else:
            sender = msg["from"].bare
            to = self.me
            if sender == self.me:
                return  # our own sent message (archive or carbon); not encrypted for this device
        if not encrypted:
            if msg["body"]:
                self.out.emit("plain", f"{msg['from']} (NOT ENCRYPTED): {msg['body']}", sender=sender,
                              body=msg["body"], room=room, archived=archived)
            return
        result = None
        error: Optional[RpcError] = None
        # OMEMO 2 first; a stanza may carry both versions, for different devices.
        for ns in (OMEMO2, OLDMEMO):
            if ns not in encrypted:
                continue
            try:
                result = await self.decrypt_listed(sender, tostring(encrypted[ns]), to, group)
                break
            except RpcError as e:
                error = e
        if result is None:
            assert error is not None
            if error.kind == "duplicate_message":
                # Decrypted before: by us (archive and live copy) or by another process sharing
                # this device (an omemod without redelivery support cannot give the text again).
                self.out.emit("duplicate", f"{sender}: message {msg['id']} was decrypted before", sender=sender,
                              room=room, archived=archived, id=msg["id"])
                return
            self.out.emit("undecryptable", f"{sender}: cannot decrypt ({error.kind})", sender=sender,
                          kind=error.kind, room=room, archived=archived)
            return
        envelope = result.get("envelope")
        if envelope:
            # SCE affixes: the envelope must name the real sender and this conversation.
            if envelope.get("from") and JID(envelope["from"]).bare != sender:
                self.out.error(f"dropped: SCE <from> {envelope['from']} is not {sender}")
                return
            if envelope.get("to") and JID(envelope["to"]).bare != to:
                self.out.error(f"dropped: SCE <to> {envelope['to']} is not {to}")
                return
        device = result.get("sender", {})
        await self.handle_actions(result.get("actions", []))
        if result.get("empty"):
            self.out.emit("empty", f"{sender}: (empty OMEMO message)", sender=sender, room=room,
                          namespace=result.get("namespace"), device_id=device.get("device_id"), archived=archived)
            return
        body = result.get("body")
        if body is None:
            body = ""
        where = f"{room} " if room else ""
        self.out.emit("message", f"{where}{sender} [{device.get('trust')}]: {body}", sender=sender, body=body,
                      room=room, namespace=result.get("namespace"), device_id=device.get("device_id"),
                      trust=device.get("trust"), archived=archived, redelivered=bool(result.get("redelivered")))

    async def decrypt_listed(self, sender: str, xml: str, to: str, group: bool) -> Dict[str, Any]:
        """`decrypt`; a group message from a device its sender's list does not name (yet) is
        refused (`unlisted_device`): fetch that list as the error asks, then try once more."""
        try:
            return await self.rpc.decrypt(sender, xml, to, group)
        except RpcError as e:
            if e.kind != "unlisted_device" or not await self.handle_actions(e.data.get("actions", [])):
                raise
        return await self.rpc.decrypt(sender, xml, to, group)

    # ---- archive (XEP-0313) -----------------------------------------------------------------

    async def read_archive(self) -> None:
        """Reads the messages archived since the last one we saw (nothing on a first run)."""
        if self.last_archive_id is None:
            return
        begun = False
        try:
            await self.rpc.call("catchup.begin", {})
            begun = True
        except RpcError as e:
            log.info("catchup.begin: %s", e.kind)
        count = 0
        try:
            async for forwarded in self.plugin["xep_0313"].iterate(rsm={"after": self.last_archive_id, "max": 50}):
                result = forwarded["mam_result"]
                inner = result["forwarded"]["stanza"]
                await self.receive(inner, result["id"], archived=True)
                self._remember(result["id"])
                count += 1
                if count >= 1000:
                    break
        except (IqError, IqTimeout) as e:
            self.out.error(f"archive query failed: {e}")
        finally:
            if begun:
                end = await self.rpc.call("catchup.end", {})
                await self.handle_actions(end.get("actions", []))
        self.out.emit("archive", f"read {count} archived messages", count=count)

    def _load_state(self) -> Optional[str]:
        if not self.state_file:
            return None
        try:
            with open(self.state_file, encoding="utf-8") as f:
                return json.load(f).get("last_archive_id")
        except (OSError, ValueError):
            return None

    def _remember(self, archive_id: str) -> None:
        self.last_archive_id = archive_id
        if self.state_file:
            tmp = self.state_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"last_archive_id": archive_id}, f)
            os.replace(tmp, self.state_file)

    # ---- group chat (XEP-0045, members-only and non-anonymous) ------------------------------

    async def join(self, room: str, nick: str) -> None:
        await self.plugin["xep_0045"].join_muc_wait(JID(room), nick, maxstanzas=0, timeout=IQ_TIMEOUT)
        self.rooms[room] = nick
        # Everyone's device lists, also of members who are not our contacts.
        for jid in self.room_members(room):
            for ns in NAMESPACES:
                await self.fetch_devicelist(jid, ns)
        self.out.emit("joined", f"joined {room} as {nick}", room=room, members=self.room_members(room))

    async def on_room_presence(self, pres: Any) -> None:
        # A new occupant: learn their devices before the next message to the room.
        room, nick = pres["from"].bare, pres["from"].resource
        if room not in self.rooms or nick == self.rooms[room] or pres["type"] == "unavailable":
            return
        real = pres["muc"]["jid"]
        if real and real.bare != self.me:
            for ns in NAMESPACES:
                await self.fetch_devicelist(real.bare, ns)

    def room_members(self, room: str) -> List[str]:
        muc = self.plugin["xep_0045"]
        jids = set()
        for nick in muc.get_roster(JID(room)) or []:
            real = muc.get_jid_property(JID(room), nick, "jid")
            if real and JID(real).bare != self.me:
                jids.add(JID(real).bare)
        return sorted(jids)

    # ---- the line-based user interface ------------------------------------------------------

    async def command(self, line: str) -> bool:
        """Runs one input line; returns False on /quit."""
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            if cmd == "/quit":
                return False
            if cmd == "/to" and arg:
                self.target = JID(arg).bare
                self.send_presence_subscription(pto=self.target)
                for ns in NAMESPACES:
                    await self.fetch_devicelist(self.target, ns)
                self.out.emit("target", f"now talking to {self.target}", to=self.target)
            elif cmd == "/join" and arg:
                room, _, nick = arg.partition(" ")
                await self.join(JID(room).bare, nick or self.boundjid.user + "-" + self.boundjid.resource)
                self.target = JID(room).bare
            elif cmd == "/ns" and arg in SHORT:
                self.namespaces = SHORT[arg]
                self.out.emit("namespace", f"encrypting with {arg}", namespace=arg)
            elif cmd == "/empty":
                await self.send_text(None)
            elif cmd == "/say":
                await self.send_text(arg)  # also sends an empty text: "/say"
            elif cmd == "/archive":
                await self.read_archive()
            else:
                self.out.info(HELP)
            return True
        await self.send_text(line)
        return True


HELP = """commands:
  /to JID          talk to JID (asks for presence subscription, fetches its device lists)
  /join ROOM [NICK] join a members-only, non-anonymous room and talk there
  /ns auto|omemo2|oldmemo  which OMEMO version to encrypt with (auto: OMEMO 2, else 0.3)
  /say TEXT        send TEXT (may be empty); any line not starting with / is sent too
  /empty           send an empty OMEMO message (no text; moves the ratchet forward)
  /archive         read the archive (XEP-0313) since the last message seen
  /quit            leave"""


class Output:
    """Human-readable lines, or one JSON object per line with --json (for scripts and tests)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def emit(self, event: str, text: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps(dict(fields, event=event)), flush=True)
        else:
            print(text, flush=True)

    def error(self, text: str) -> None:
        self.emit("error", "! " + text, message=text)

    def info(self, text: str) -> None:
        self.emit("info", text, message=text)


async def read_lines(chat: Chat) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if sys.stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    else:
        # A regular file or /dev/null cannot be polled: read it in a (daemon) thread.
        def pump() -> None:
            for raw in sys.stdin.buffer:
                loop.call_soon_threadsafe(reader.feed_data, raw)
            loop.call_soon_threadsafe(reader.feed_eof)
        threading.Thread(target=pump, daemon=True).start()
    failed = asyncio.ensure_future(chat.failed.wait())
    while True:
        read = asyncio.ensure_future(reader.readline())
        await asyncio.wait({read, failed}, return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            read.cancel()
            chat.rpc.close()
            return 1
        raw = read.result()
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line and not chat.args.json:
            continue
        if not chat.ready:
            for _ in range(600):  # wait at most 60 s for start-up
                if chat.ready:
                    break
                await asyncio.sleep(0.1)
        try:
            if not await chat.command(line):
                break
        except (RpcError, IqError, IqTimeout, ConnectionError) as e:
            chat.out.error(f"{line.split(' ')[0]}: {e}")
    chat.quitting = True
    chat.rpc.close()
    chat.disconnect()
    return 0


def default_socket() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "omemod", "omemod.sock")
    uid = os.getuid()
    if os.path.isdir(f"/run/user/{uid}"):
        return f"/run/user/{uid}/omemod/omemod.sock"
    return f"/tmp/omemod-{uid}/omemod.sock"


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="omemo_chat.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A line-based XMPP chat client with OMEMO (both versions) done by omemod.",
        epilog="""Running it against your own server:
  1. start omemod (`omemod serve`, or the systemd user unit) and create your OMEMO device once
     with `omemod init --jid you@example.org` (or pass --create-account);
  2. export OMEMO_CHAT_PASSWORD=... (or type the password at the prompt);
  3. python3 omemo_chat.py --jid you@example.org
The server is found through DNS SRV records of your domain, or give --host/--port. Your server
needs PEP (XEP-0163) for the OMEMO device lists and bundles, and MAM (XEP-0313) to read messages
that arrived while you were offline. Run two processes with different --resource values on one
omemod: they share the OMEMO device.

""" + HELP)
    parser.add_argument("--jid", required=True, help="your JID (bare, or with a resource)")
    parser.add_argument("--resource", help="resource to bind (default: the one in --jid, else random)")
    parser.add_argument("--socket", default=default_socket(), help="omemod's socket (default: %(default)s)")
    parser.add_argument("--account", help="the omemod account (default: the bare JID)")
    parser.add_argument("--create-account", action="store_true", help="create the omemod account if missing")
    parser.add_argument("--password-env", default="OMEMO_CHAT_PASSWORD",
                        help="environment variable holding the password (default: %(default)s); else prompt")
    parser.add_argument("--host", help="server host (skips the DNS SRV lookup)")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="no TLS at all (only for a test server on 127.0.0.1)")
    parser.add_argument("--namespace", choices=sorted(SHORT), default="auto", help="OMEMO version to encrypt with")
    parser.add_argument("--state", help="file that remembers the last archived message seen (for MAM)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event (for scripts)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args()
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    jid = JID(args.jid)
    if args.resource:
        jid.resource = args.resource
        args.jid = str(jid)
    if args.state is None:
        state_dir = os.path.join(os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "omemo-chat")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        args.state = os.path.join(state_dir, f"{jid.bare}-{jid.resource or 'default'}.json")
    password = os.environ.get(args.password_env) or getpass.getpass(f"password for {jid.bare}: ")
    chat = Chat(args, password)
    if args.insecure_plaintext:
        chat.enable_plaintext = True
        chat.enable_starttls = False
        chat.enable_direct_tls = False
        chat.plugin["feature_mechanisms"].unencrypted_scram = True
    chat.connect_again()
    loop = asyncio.get_event_loop()
    code = loop.run_until_complete(read_lines(chat))
    loop.run_until_complete(asyncio.sleep(0.2))
    return code


if __name__ == "__main__":
    sys.exit(main())
