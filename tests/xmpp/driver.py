"""End-to-end test on a real XMPP server: client-examples/xmpp-bot (OMEMO by omemod) against an
independent stack (slixmpp-omemo / python-omemo, refpeer.py), on a private prosody on 127.0.0.1.

    python driver.py SCENARIO     (omemod from $OMEMOD_BIN; run by `cargo test -p omemod --test xmpp`)

Exits 0 when every expected message arrived decrypted, with the right text, sender and namespace;
otherwise prints why and exits 1. Every wait is bounded.
"""

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import server  # noqa: E402
from poezio_term import Poezio, as_user, install_plugin, poezio_python  # noqa: E402
from refpeer import OLDMEMO, OMEMO2, RefPeer  # noqa: E402
from unlisted import unlisted_sender  # noqa: E402
from slixmpp.xmlstream import tostring  # noqa: E402

BOT = os.path.join(REPO, "client-examples", "xmpp-bot", "omemo_chat.py")
PASSWORD = "correct horse battery staple"
NS_ARG = {OMEMO2: "omemo2", OLDMEMO: "oldmemo"}
WAIT = 30.0

log = logging.getLogger("driver")


class Omemod:
    """One omemod daemon with its own database and socket."""

    def __init__(self, workdir: str, name: str, prefix: Optional[List[str]] = None):
        self.dir = os.path.join(workdir, "omemod-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "run", "omemod.sock")
        self.db = os.path.join(self.dir, "omemod.db")
        self.prefix = prefix or []  # e.g. poezio_term.as_user(): the same uid as its client
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        binary = os.environ["OMEMOD_BIN"]
        self.proc = subprocess.Popen([*self.prefix, binary, "serve", "--socket", self.socket, "--db", self.db],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     env=dict(os.environ, RUST_LOG="warn"), start_new_session=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("omemod did not start")
            time.sleep(0.05)

    def call(self, method: str, params: Dict[str, Any]) -> Any:
        out = subprocess.run([os.environ["OMEMOD_BIN"], "--socket", self.socket, "call", method, json.dumps(params)],
                             check=True, capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class Bot:
    """A process of the example client (`--json`), driven through its stdin."""

    def __init__(self, name: str, jid: str, resource: str, daemon: Omemod, prosody: server.Prosody, workdir: str):
        self.name = name
        self.jid = jid
        self.args = [sys.executable, BOT, "--jid", jid, "--resource", resource, "--socket", daemon.socket,
                     "--create-account", "--json", os.environ.get("BOT_VERBOSITY", "-v"),
                     "--state", os.path.join(workdir, f"{name}.state.json")] + server.args_for(prosody)
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.events: List[Dict[str, Any]] = []
        self.new_event = asyncio.Event()
        self.reader: Optional[asyncio.Task] = None
        self.device_id: Optional[int] = None

    async def start(self) -> None:
        self.events = []
        stderr = open(self.stderr_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            env=dict(os.environ, OMEMO_CHAT_PASSWORD=PASSWORD))
        stderr.close()
        self.reader = asyncio.ensure_future(self._read())
        ready = await self.expect(lambda e: e["event"] == "ready", timeout=60)
        self.device_id = ready["device_id"]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            log.info("%s: %s", self.name, event)
            self.events.append(event)
            self.new_event.set()
        self.events.append({"event": "exited"})
        self.new_event.set()

    async def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, pred: Callable[[Dict[str, Any]], bool], timeout: float = WAIT) -> Dict[str, Any]:
        """The first not yet consumed event matching `pred`; errors and an exit fail the test."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if pred(e):
                    return self.events.pop(i)
                if e["event"] in ("undecryptable", "exited"):
                    raise AssertionError(f"{self.name}: {e}\n{self.stderr_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: nothing matching arrived; events: {self.events}\n"
                                     f"{self.stderr_tail()}")
            self.new_event.clear()
            try:
                await asyncio.wait_for(self.new_event.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def expect_message(self, sender: str, body: str, namespace: str, room: Optional[str] = None,
                             archived: Optional[bool] = None) -> Dict[str, Any]:
        e = await self.expect(lambda e: e["event"] == "message" and e["body"] == body)
        assert e["sender"] == sender, e
        assert e["namespace"] == namespace, f"expected {namespace}: {e}"
        assert e.get("room") == room, e
        if archived is not None:
            assert e["archived"] == archived, e
        return e

    async def say(self, text: str) -> None:
        await self.send(text if text and not text.startswith("/") else "/say " + text)
        await self.expect(lambda e: e["event"] == "sent" and e.get("body") == text)

    def stderr_tail(self, n: int = 30) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await self.send("/quit")
                await asyncio.wait_for(self.proc.wait(), 15)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)
        self.proc = None


class World:
    """prosody, the daemons, the example-client processes and the python-omemo peer of one scenario."""

    def __init__(self, tls: bool = False) -> None:
        self.workdir = tempfile.mkdtemp(prefix="omemod-xmpp-")
        self.prosody = server.Prosody(self.workdir, tls=tls)
        self.daemons: List[Omemod] = []
        self.bots: List[Bot] = []
        self.peers: List[RefPeer] = []
        self.terminals: List[Poezio] = []

    def user(self, name: str) -> str:
        return self.prosody.register(name, PASSWORD)

    def daemon(self, name: str, prefix: Optional[List[str]] = None) -> Omemod:
        d = Omemod(self.workdir, name, prefix)
        d.start()
        self.daemons.append(d)
        return d

    async def bot(self, name: str, jid: str, resource: str, daemon: Omemod) -> Bot:
        b = Bot(name, jid, resource, daemon, self.prosody, self.workdir)
        self.bots.append(b)
        await b.start()
        return b

    async def peer(self, jid: str, resource: str = "ref") -> RefPeer:
        p = RefPeer(jid + "/" + resource, PASSWORD)
        self.peers.append(p)
        p.connect("127.0.0.1", self.prosody.port)
        await asyncio.wait_for(p.initialized.wait(), 60)
        return p

    async def close(self, keep: bool) -> None:
        for b in self.bots:
            try:
                await b.stop()
            except Exception as e:  # cleanup goes on
                log.warning("stopping %s: %s", b.name, e)
        for t in self.terminals:
            t.stop()
        for p in self.peers:
            p.disconnect()
        await asyncio.sleep(0.3)
        for d in self.daemons:
            d.stop()
        self.prosody.stop()
        if keep:
            print(f"kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------------


async def chat(w: World, ns: str) -> None:
    """First contact from the example client, several messages each way, empty messages."""
    alice, bob = w.user("alice"), w.user("bob")
    peer = await w.peer(bob)
    daemon = w.daemon("alice")
    bot = await w.bot("alice", alice, "desk", daemon)
    await bot.send(f"/ns {NS_ARG[ns]}")
    await bot.send(f"/to {bob}")
    await bot.expect(lambda e: e["event"] == "target")
    for i in range(3):
        await bot.say(f"hello bob {i} ✓")
        r = await peer.wait_for(lambda r: r.body == f"hello bob {i} ✓")
        assert r.sender == alice and r.namespace == ns and r.device_id == bot.device_id, r
    for i in range(3):
        await peer.send_text(alice, f"hi alice {i} <&>", ns)
        await bot.expect_message(bob, f"hi alice {i} <&>", ns)
    # An empty text each way, and an empty OMEMO message (no payload) from the example client.
    if ns == OMEMO2:
        # In OMEMO 0.3 an empty text is an empty <payload/>, which python-omemo cannot parse.
        await bot.say("")
        r = await peer.wait_for(lambda r: r.body == "")
        assert r.namespace == ns, r
    await bot.send("/empty")
    await bot.expect(lambda e: e["event"] == "sent" and e.get("body") is None)
    r = await peer.wait_for(lambda r: r.body is None)
    assert r.namespace == ns, r
    if ns == OMEMO2:
        await peer.send_text(alice, "", ns)
        await bot.expect_message(bob, "", ns)
    # python-omemo answers key exchanges with empty OMEMO messages of its own (no <body>, no
    # payload): the example client must have decrypted them too.
    e = await bot.expect(lambda e: e["event"] == "empty")
    assert e["sender"] == bob and e["namespace"] == ns, e
    await bot.say("still here")
    await peer.wait_for(lambda r: r.body == "still here")
    await peer.send_text(alice, "me too", ns)
    await bot.expect_message(bob, "me too", ns)
    # Bob adds a device. Its device list reaches alice's client only by PEP notification (+notify
    # in the client's caps, presence subscription from /to); the next message must reach both.
    peer2 = await w.peer(bob, resource="second")
    deadline = time.monotonic() + WAIT
    while True:
        active = [d for d in daemon.call("devices.list", {"jid": bob})
                  if d["namespace"] == ns and d["active"]]
        if len(active) == 2:
            break
        assert time.monotonic() < deadline, f"bob's new device never reached omemod: {active}"
        await asyncio.sleep(0.2)
    await bot.say("to both of your devices")
    for p in (peer, peer2):
        r = await p.wait_for(lambda r: r.body == "to both of your devices")
        assert r.sender == alice and r.namespace == ns, r


async def restart_archive(w: World, ns: str) -> None:
    """First contact from python-omemo; omemod restarted mid-chat; the archive read after a reconnect."""
    alice, bob = w.user("alice"), w.user("bob")
    daemon = w.daemon("alice")
    bot = await w.bot("alice", alice, "desk", daemon)
    peer = await w.peer(bob)
    await bot.send(f"/ns {NS_ARG[ns]}")
    await peer.send_text(alice, "first contact from python-omemo", ns)
    await bot.expect_message(bob, "first contact from python-omemo", ns)
    # omemod asks for a heartbeat after a key exchange (action send_heartbeat); python-omemo must
    # receive it as an empty OMEMO message from alice's device.
    r = await peer.wait_for(lambda r: r.body is None and r.sender == alice)
    assert r.namespace == ns and r.device_id == bot.device_id, r
    # The key exchange used one of alice's prekeys: omemod replaced it and asked for the bundle to
    # be published again (publish_bundle); the server must now hold omemod's current bundle.
    await published_bundle_is_current(peer, alice, ns, daemon, newer_than=1)
    await bot.send(f"/to {bob}")
    await bot.say("answer 1")
    await peer.wait_for(lambda r: r.body == "answer 1" and r.namespace == ns)
    # omemod goes away and comes back on the same database; the client reconnects to it.
    daemon.stop()
    daemon.start()
    await peer.send_text(alice, "after restart 1", ns)
    await bot.expect_message(bob, "after restart 1", ns)
    await bot.say("after restart 2")
    await peer.wait_for(lambda r: r.body == "after restart 2" and r.namespace == ns)
    # Offline: messages go to the archive only (the private server has no offline storage).
    await bot.stop()
    for i in range(3):
        await peer.send_text(alice, f"while you were away {i}", ns)
    await asyncio.sleep(1.0)
    await bot.start()
    for i in range(3):
        await bot.expect_message(bob, f"while you were away {i}", ns, archived=True)
    await bot.expect(lambda e: e["event"] == "archive" and e["count"] >= 3)
    await bot.send(f"/ns {NS_ARG[ns]}")
    await bot.send(f"/to {bob}")
    await bot.say("back online")
    await peer.wait_for(lambda r: r.body == "back online" and r.namespace == ns)


def prekey_ids(xml: str) -> List[str]:
    return sorted(re.findall(r"<(?:pk|preKeyPublic)\b[^>]*\b(?:id|preKeyId)=['\"](\d+)", xml))


async def published_bundle_is_current(peer: RefPeer, jid: str, ns: str, daemon: Omemod, newer_than: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        current = daemon.call("bundle.get", {"namespace": ns})
        iq = await peer.plugin["xep_0060"].get_item(jid, current["node"], current["item_id"], timeout=20)
        published = "".join(tostring(item.xml[0]) for item in iq["pubsub"]["items"] if len(item.xml))
        if current["bundle_version"] > newer_than and prekey_ids(published) == prekey_ids(current["xml"]):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"published bundle is not omemod's current one (version "
                                 f"{current['bundle_version']}): {prekey_ids(published)} vs "
                                 f"{prekey_ids(current['xml'])}")
        await asyncio.sleep(0.2)


async def bundle_republished(peer: RefPeer, ns: str, before: List[str]) -> None:
    """Waits until the server holds a bundle of `peer` other than the one offering `before`."""
    deadline = time.monotonic() + WAIT
    while prekey_ids(await peer.published_bundle(ns)) == before:
        assert time.monotonic() < deadline, f"python-omemo never republished its bundle ({before})"
        await asyncio.sleep(0.1)


async def two_processes(w: World, ns: str) -> None:
    """Two processes (resources) of the example client on one omemod: both read every message."""
    alice, bob = w.user("alice"), w.user("bob")
    daemon = w.daemon("alice")
    desk = await w.bot("desk", alice, "desk", daemon)
    phone = await w.bot("phone", alice, "phone", daemon)
    assert desk.device_id == phone.device_id
    peer = await w.peer(bob)
    for b in (desk, phone):
        await b.send(f"/ns {NS_ARG[ns]}")
        await b.send(f"/to {bob}")
        await b.expect(lambda e: e["event"] == "target")
    await desk.say("from the desk")
    await peer.wait_for(lambda r: r.body == "from the desk" and r.namespace == ns)
    await phone.say("from the phone")
    await peer.wait_for(lambda r: r.body == "from the phone" and r.namespace == ns)
    # Each process gets the other's message as a sent carbon, never encrypted for the device
    # they share: omemod reads it back as our own.
    for b, body in ((phone, "from the desk"), (desk, "from the phone")):
        e = await b.expect(lambda e: e["event"] == "own" and e["body"] == body)
        assert (e["to"], e["carbon"], e["namespace"]) == (bob, "sent", ns), e
    # Both processes get every message; the second decrypt of the same message is a redelivery.
    doc = json.dumps([m for m in daemon.call("rpc.discover", {})["methods"] if m["name"] == "decrypt"])
    redelivery = "redelivered" in doc
    for i in range(3):
        sid = await peer.send_text(alice, f"to both {i}", ns)
        if redelivery:
            first = await desk.expect_message(bob, f"to both {i}", ns)
            second = await phone.expect_message(bob, f"to both {i}", ns)
            assert first["redelivered"] != second["redelivered"], (first, second)
        else:
            # This omemod answers the second decrypt with duplicate_message: exactly one process
            # shows the text, the other reports the duplicate.
            got = []
            for b in (desk, phone):
                got.append(await b.expect(lambda e: e["event"] == "duplicate" and e["id"] == sid or
                                          (e["event"] == "message" and e["body"] == f"to both {i}")))
            assert sorted(e["event"] for e in got) == ["duplicate", "message"], got
    if not redelivery:
        print("two_processes: this omemod has no redelivery (decrypt `redelivered`): "
              "checked one reader + duplicate_message", file=sys.stderr)


async def own_archive(w: World, ns: str) -> None:
    """A process of the example client, offline while another process of the account (same
    omemod) writes to bob and into a room, catches up from the archives (MAM, the account's and
    the room's): each message shown once, as its own."""
    alice, bob = w.user("alice"), w.user("bob")
    room = "crypto@" + server.MUC
    daemon = w.daemon("alice")
    peer = await w.peer(bob)
    await peer.create_room(room, "bob", [alice])
    desk = await w.bot("desk", alice, "desk", daemon)
    phone = await w.bot("phone", alice, "phone", daemon)
    for b in (desk, phone):
        await b.send(f"/ns {NS_ARG[ns]}")
        await b.send(f"/join {room} alice-{b.name}")
        await b.expect(lambda e: e["event"] == "joined")
    # The client reads an archive from its last position on: the phone takes one of each, live.
    await peer.send_text("", "hello room", ns, room=room)
    await phone.expect_message(bob, "hello room", ns, room=room, archived=False)
    await peer.send_text(alice, "before you go", ns)
    await phone.expect_message(bob, "before you go", ns, archived=False)
    await phone.stop()
    # While the phone is offline: the desk writes into the room, then to bob, who answers once.
    await desk.say("into the room while the phone was off")
    await peer.wait_for(lambda r: r.body == "into the room while the phone was off" and r.room == room
                        and r.sender == alice and r.namespace == ns)
    await desk.send(f"/to {bob}")
    await desk.expect(lambda e: e["event"] == "target")
    sent = [f"while the phone was off {i} ✓" for i in range(3)]
    for i, body in enumerate(sent):
        await desk.say(body)
        r = await peer.wait_for(lambda r: r.body == body and r.namespace == ns)
        assert r.sender == alice and r.device_id == desk.device_id, r
        if i == 1:
            await peer.send_text(alice, "answer while the phone was off", ns)
            await desk.expect_message(bob, "answer while the phone was off", ns)
    # `ready` comes after the archives were read (the account's, then the room's once rejoined):
    # every event of the catch-up is in.
    await phone.start()
    shown = [e for e in phone.events if e["event"] in ("own", "message")]
    assert [(e["event"], e["body"]) for e in shown] == [
        ("own", sent[0]), ("own", sent[1]), ("message", "answer while the phone was off"), ("own", sent[2]),
        ("own", "into the room while the phone was off")], shown
    for e in shown:
        assert e["namespace"] == ns and e["archived"] is True, e
        if e["event"] == "own":
            assert e["to"] == (e["room"] or bob) and e["carbon"] is None, e
        else:
            assert e["sender"] == bob, e
    assert shown[-1]["to"] == shown[-1]["room"] == room, shown[-1]
    count = await phone.expect(lambda e: e["event"] == "archive" and e["room"] is None)
    assert count["count"] >= 4, count
    await phone.expect(lambda e: e["event"] == "archive" and e["room"] == room and e["count"] >= 1)
    # Started again, the phone reads the archive from after those: none is shown twice.
    await phone.stop()
    await phone.start()
    again = [e for e in phone.events if e["event"] in ("own", "message")]
    assert again == [], again
    await phone.expect(lambda e: e["event"] == "archive")


async def group(w: World, ns: str) -> None:
    """A members-only, non-anonymous room with alice and carol (example client, two omemods) and
    bob (python-omemo); each message must be decrypted by both others."""
    alice, bob, carol = w.user("alice"), w.user("bob"), w.user("carol")
    room = "crypto@" + server.MUC
    peer = await w.peer(bob)
    await peer.create_room(room, "bob", [alice, carol])
    a = await w.bot("alice", alice, "desk", w.daemon("alice"))
    c = await w.bot("carol", carol, "desk", w.daemon("carol"))
    for b, nick in ((a, "alice"), (c, "carol")):
        await b.send(f"/ns {NS_ARG[ns]}")
        await b.send(f"/join {room} {nick}")
        await b.expect(lambda e: e["event"] == "joined")
    # Carol joined last: alice and bob learn her real JID from her presence.
    deadline = time.monotonic() + WAIT
    while len(peer.room_members(room)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert peer.room_members(room) == sorted([alice, carol]), peer.room_members(room)
    offered = prekey_ids(await peer.published_bundle(ns))
    assert len(offered) >= 25, offered
    await a.say("hello room from alice")
    await peer.wait_for(lambda r: r.body == "hello room from alice" and r.room == room and r.sender == alice)
    # Alice's key exchange used one of bob's one-time prekeys; python-omemo deleted it and
    # publishes a bundle without it. Carol's first message builds her session to bob: the
    # plugin fetches bob's bundle then (not the one from when she joined, which still offers
    # alice's prekey), so once that bundle is on the server she cannot pick the used one.
    await bundle_republished(peer, ns, offered)
    await c.expect_message(alice, "hello room from alice", ns, room=room)
    await c.say("hello room from carol")
    await peer.wait_for(lambda r: r.body == "hello room from carol" and r.room == room and r.sender == carol)
    await a.expect_message(carol, "hello room from carol", ns, room=room)
    await peer.send_text("", "hello room from bob", ns, room=room)
    await a.expect_message(bob, "hello room from bob", ns, room=room)
    await c.expect_message(bob, "hello room from bob", ns, room=room)
    for i in range(2):
        await a.say(f"alice again {i}")
        await c.expect_message(alice, f"alice again {i}", ns, room=room)
        await peer.wait_for(lambda r: r.body == f"alice again {i}" and r.sender == alice)


FILE_SIZES = (1, 3 * 1024 * 1024 + 5)
"""A small file and one of a few MB (many of omemod's chunks, several HTTP reads)."""


async def files(w: World, ns: str) -> None:
    """Encrypted files (XEP-0454) on the server's XEP-0363 upload: the example client uploads and
    sends, python-omemo's peer opens the link with `cryptography`'s AES-GCM; the peer uploads and
    sends (12- and 16-byte IVs), the example client opens through omemod; an altered key is
    refused and leaves no file."""
    alice, bob = w.user("alice"), w.user("bob")
    peer = await w.peer(bob)
    bot = await w.bot("alice", alice, "desk", w.daemon("alice"))
    await bot.send(f"/ns {NS_ARG[ns]}")
    await bot.send(f"/to {bob}")
    await bot.expect(lambda e: e["event"] == "target")
    upload = f"http://127.0.0.1:{w.prosody.http_port}/file_share/"
    for size, iv_bytes in zip(FILE_SIZES, (12, 16)):
        data = os.urandom(size)
        path = os.path.join(w.workdir, f"sent-{size}.bin")
        with open(path, "wb") as f:
            f.write(data)
        await bot.send(f"/file {path}")
        sent = await bot.expect(lambda e: e["event"] in ("file_sent", "error"), timeout=60)
        assert sent["event"] == "file_sent" and sent["size"] == size, sent
        # The test server uploads over plain HTTP: the link keeps its scheme (XEP-0454 converts
        # only HTTPS), with the 12-byte IV and the key in lowercase hex.
        assert re.fullmatch(re.escape(upload) + r"[^#]+#[0-9a-f]{88}", sent["link"]), sent
        r = await peer.wait_for(lambda r: r.body == sent["link"])
        assert r.sender == alice and r.namespace == ns, r
        assert await peer.open_file(r.body) == data, f"python-omemo's peer read another file of {size} bytes"

        data = os.urandom(size)
        link = await peer.send_file(alice, data, ns, server.UPLOAD, iv_bytes=iv_bytes)
        got = await bot.expect(lambda e: e["event"] == "file_link" and e["link"] == link)
        assert got["sender"] == bob and got["namespace"] == ns, got
        dest = os.path.join(w.workdir, f"received-{size}.bin")
        await bot.send(f"/open {link} {dest}")
        opened = await bot.expect(lambda e: e["event"] in ("file_opened", "file_failed") and e["path"] == dest,
                                  timeout=60)
        assert opened["event"] == "file_opened" and opened["size"] == size, opened
        with open(dest, "rb") as f:
            assert f.read() == data, f"the example client read another file of {size} bytes"
    # The last link with one key digit changed: the tag does not match, nothing is written.
    url, _, secret = link.partition("#")
    forged = f"{url}#{secret[:-1]}{'0' if secret[-1] != '0' else '1'}"
    dest = os.path.join(w.workdir, "forged.bin")
    await bot.send(f"/open {forged} {dest}")
    failed = await bot.expect(lambda e: e["event"] in ("file_opened", "file_failed") and e["path"] == dest)
    assert failed["event"] == "file_failed" and failed["kind"] == "authentication_failed", failed
    assert not any(n.startswith((".forged", "forged")) for n in os.listdir(w.workdir)), os.listdir(w.workdir)


async def carbons(w: World, ns: str) -> None:
    """Carbons (XEP-0280): alice's example client sees the copies of messages another of her
    devices (python-omemo) receives and sends, and decrypts both."""
    alice, bob = w.user("alice"), w.user("bob")
    bot = await w.bot("alice", alice, "desk", w.daemon("alice"))
    phone = await w.peer(alice, resource="phone")
    peer = await w.peer(bob)
    await bot.send(f"/ns {NS_ARG[ns]}")
    await bot.send(f"/to {bob}")
    await bot.expect(lambda e: e["event"] == "target")
    # Bob writes to alice's phone (its full JID): the example client gets a received carbon.
    await peer.send_text(alice, "to your phone", ns, resource="phone")
    r = await phone.wait_for(lambda r: r.body == "to your phone")
    assert r.sender == bob and r.namespace == ns, r
    e = await bot.expect_message(bob, "to your phone", ns)
    assert e["carbon"] == "received", e
    # Alice writes from her phone: the example client gets a sent carbon, encrypted for it as
    # one of alice's other devices.
    await phone.send_text(bob, "from my phone", ns)
    await peer.wait_for(lambda r: r.body == "from my phone" and r.sender == alice)
    e = await bot.expect_message(alice, "from my phone", ns)
    assert e["carbon"] == "sent", e
    # And the other way round: the phone reads what the example client sends, as alice's device.
    await bot.say("from my desk")
    await peer.wait_for(lambda r: r.body == "from my desk" and r.sender == alice)


async def poezio(w: World, ns: str) -> None:
    """poezio with the omemod plugin (installed into its venv with pip), driven in a terminal,
    and python-omemo: messages both ways, decrypted on poezio's screen."""
    alice, bob = w.user("alice"), w.user("bob")
    python = poezio_python()
    install_plugin(python, w.workdir)
    daemon = w.daemon("alice", prefix=as_user())
    term = Poezio(w.workdir, "alice", alice, PASSWORD, w.prosody.port, daemon.socket,
                  NS_ARG[ns], python)
    w.terminals.append(term)
    term.start()
    await term.wait_log("Event triggered: omemo_initialized", timeout=60)
    await term.wait_screen("OMEMO by omemod: device")
    peer = await w.peer(bob)
    await term.type(f"/message {bob}")
    term.in_roster = False
    await term.type("/omemo")
    await term.wait_screen(f"omemo encryption enabled for {bob}")
    await term.type("hello from poezio ✓")
    r = await peer.wait_for(lambda r: r.body == "hello from poezio ✓")
    assert r.sender == alice and r.namespace == ns, r
    for i in range(2):
        await peer.send_text(alice, f"hello poezio {i} <&>", ns)
        await term.wait_screen(f"hello poezio {i} <&>")
    await term.type("and back again")
    r = await peer.wait_for(lambda r: r.body == "and back again")
    assert r.namespace == ns, r
    screen = term.screen()
    log.info("poezio's screen:\n%s", screen)
    assert "could not decrypt" not in screen and "OMEMO encrypted" not in screen, screen


SCENARIOS = {
    "chat": chat,
    "restart_archive": restart_archive,
    "two_processes": two_processes,
    "own_archive": own_archive,
    "group": group,
    "carbons": carbons,
    "files": files,
    "poezio": poezio,
    "unlisted_sender": unlisted_sender,
}


async def run(name: str, ns: str, keep: bool) -> None:
    w = World(tls=name == "poezio")  # poezio logs in only over TLS
    try:
        w.prosody.start()
        await asyncio.wait_for(SCENARIOS[name](w, ns), 300)
    except BaseException:
        print("--- prosody log ---\n" + w.prosody.log_tail(), file=sys.stderr)
        for b in w.bots:
            print(f"--- {b.name} stderr ---\n{b.stderr_tail()}", file=sys.stderr)
        for t in w.terminals:
            print(f"--- poezio {t.name} screen ---\n{t.screen()}\n--- its debug log ---\n{t.tail()}",
                  file=sys.stderr)
        raise
    finally:
        await w.close(keep)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("namespace", choices=sorted(NS_ARG.values()))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=(logging.DEBUG if os.environ.get("XMPP_DEBUG") else logging.INFO) if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ns = {v: k for k, v in NS_ARG.items()}[args.namespace]
    try:
        asyncio.run(run(args.scenario, ns, args.keep))
    except AssertionError as e:
        print(f"FAILED {args.scenario} {args.namespace}: {e}", file=sys.stderr)
        return 1
    print(f"ok {args.scenario} {args.namespace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
