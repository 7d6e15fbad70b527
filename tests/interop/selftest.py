#!/usr/bin/env python3
"""Self-test of the python-omemo peer: two peer processes (alice, bob) talk to each other.

Run with the interop venv:  .venv/bin/python tests/interop/selftest.py   (scripts/setup-python makes it)
Prints one line per check and "N passed, M failed" at the end; exits non-zero on any failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
OLD_NS = "eu.siacs.conversations.axolotl"
TWO_NS = "urn:xmpp:omemo:2"
ALICE = "alice@example.org"
BOB = "bob@example.net"


class PeerError(Exception):
    pass


class Peer:
    """One peer.py process, spoken to over JSON lines."""

    def __init__(self, name: str, jid: str, storage: str, stderr_path: str) -> None:
        self.name = name
        self.jid = jid
        self.storage = storage
        self.stderr = open(stderr_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, PEER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.device_id = 0

    def raw(self, line: str) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise PeerError(f"{self.name}: peer exited (rc={self.proc.poll()})")
        return json.loads(out)

    def call(self, cmd: str, **args: Any) -> Dict[str, Any]:
        """Send a command; return the reply, raising PeerError if it is not ok."""
        reply = self.try_call(cmd, **args)
        if not reply.get("ok"):
            raise PeerError(f"{self.name} {cmd}: {reply.get('error')}: {reply.get('message')}")
        return reply

    def try_call(self, cmd: str, **args: Any) -> Dict[str, Any]:
        return self.raw(json.dumps({"cmd": cmd, **args}))

    def init(self) -> Dict[str, Any]:
        reply = self.call("init", jid=self.jid, storage=self.storage)
        self.device_id = reply["device_id"]
        return reply

    def quit(self) -> int:
        try:
            reply = self.try_call("quit")
            assert reply.get("ok"), reply
        finally:
            rc = self.proc.wait(timeout=30)
            self.stderr.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.stderr.closed:
            self.stderr.close()


class Runner:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except Exception as e:
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if os.environ.get("SELFTEST_TRACE"):
                traceback.print_exc()
            return None
        self.passed += 1
        print(f"ok   {name}", flush=True)
        return result


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def publish(src: Peer, dst: Peer, ns: str) -> None:
    """What PEP would deliver: src's device list and bundle for ns, fed to dst."""
    dl = src.call("devicelist", ns=ns)["xml"]
    b = src.call("bundle", ns=ns)
    expect(b["device_id"] == src.device_id, "bundle device id")
    dst.call("add_bundle", jid=src.jid, device_id=src.device_id, ns=ns, xml=b["xml"])
    dst.call("add_devicelist", jid=src.jid, ns=ns, xml=dl)


def key_elements(xml: str, ns: str) -> List[ET.Element]:
    return list(ET.fromstring(xml).iter(f"{{{ns}}}key"))


def is_kex(key: ET.Element, ns: str) -> bool:
    attr = "prekey" if ns == OLD_NS else "kex"
    return key.get(attr) in ("true", "1")


def send(src: Peer, dst: Peer, ns: str, body: str) -> str:
    reply = src.call("encrypt", to=[dst.jid], body=body, ns=[ns])
    expect(reply["errors"] == [], f"encryption errors: {reply['errors']}")
    expect(list(reply["messages"]) == [ns], f"messages for {list(reply['messages'])}, wanted only {ns}")
    return reply["messages"][ns]


def receive(dst: Peer, src: Peer, ns: str, xml: str, body: Optional[str]) -> Dict[str, Any]:
    reply = dst.call("decrypt", **{"from": src.jid, "xml": xml})
    expect(reply["ns"] == ns, f"ns {reply['ns']}")
    expect(reply["sender_device_id"] == src.device_id, "sender device id")
    if body is None:
        expect(reply["empty"] is True and reply["body"] is None, f"expected empty message, got {reply}")
    else:
        expect(reply["empty"] is False, "unexpected empty message")
        expect(reply["body"] == body, f"body {reply['body']!r} != {body!r}")
        if ns == TWO_NS:
            expect(reply["sce_from"] == src.jid, f"SCE <from> {reply.get('sce_from')}")
            expect(reply["sce_rpad"] is True, "SCE <rpad> missing")
            expect(reply["envelope"].startswith("<envelope xmlns='urn:xmpp:sce:1'>"), "SCE envelope root")
    return reply


def deliver_outbox(src: Peer, dst: Peer, ns: str, min_count: int = 1) -> int:
    """Deliver src's queued empty messages for ns to dst; check each decrypts as empty."""
    msgs = src.call("outbox")["messages"]
    mine = [m for m in msgs if m["ns"] == ns and m["to"] == dst.jid]
    expect(len(mine) == len(msgs), f"unexpected outbox entries: {msgs}")
    expect(len(mine) >= min_count, f"outbox has {len(mine)} messages for {dst.name}, wanted >= {min_count}")
    for m in mine:
        expect("<payload" not in m["xml"], "empty message carries a payload")
        receive(dst, src, ns, m["xml"], None)
    return len(mine)


def run_namespace(r: Runner, alice: Peer, bob: Peer, ns: str) -> None:
    tag = "0.3" if ns == OLD_NS else "2"
    first: Dict[str, str] = {}

    def kex() -> None:
        xml = send(alice, bob, ns, f"hello bob ({tag})")
        keys = key_elements(xml, ns)
        expect(len(keys) == 1 and keys[0].get("rid") == str(bob.device_id), "one key, for bob's device")
        expect(is_kex(keys[0], ns), "first message is a key exchange")
        first["xml"] = xml
        receive(bob, alice, ns, xml, f"hello bob ({tag})")
    r.check(f"[{tag}] alice -> bob key exchange message, bob decrypts", kex)

    r.check(f"[{tag}] bob's session-completion empty message (outbox) decrypts at alice",
            lambda: deliver_outbox(bob, alice, ns))

    def reply() -> None:
        xml = send(bob, alice, ns, f"hi alice ({tag}) – ünïcödé & <xml>")
        expect(not any(is_kex(k, ns) for k in key_elements(xml, ns)), "reply is not a key exchange")
        receive(alice, bob, ns, xml, f"hi alice ({tag}) – ünïcödé & <xml>")
    r.check(f"[{tag}] bob -> alice reply", reply)

    def alice_no_kex_now() -> None:
        xml = send(alice, bob, ns, "confirmed")
        expect(not any(is_kex(k, ns) for k in key_elements(xml, ns)), "alice still sends kex after reply")
        receive(bob, alice, ns, xml, "confirmed")
    r.check(f"[{tag}] alice's session is confirmed (no more key exchange)", alice_no_kex_now)

    last: Dict[str, str] = {}
    for i in range(5):
        def a2b(i: int = i) -> None:
            xml = send(alice, bob, ns, f"a2b #{i}")
            receive(bob, alice, ns, xml, f"a2b #{i}")
            last["a2b"] = xml
        r.check(f"[{tag}] alice -> bob #{i + 1}", a2b)
    for i in range(5):
        def b2a(i: int = i) -> None:
            xml = send(bob, alice, ns, f"b2a #{i}")
            receive(alice, bob, ns, xml, f"b2a #{i}")
        r.check(f"[{tag}] bob -> alice #{i + 1}", b2a)

    def out_of_order() -> None:
        x1 = send(alice, bob, ns, "ooo 1")
        x2 = send(alice, bob, ns, "ooo 2")
        receive(bob, alice, ns, x2, "ooo 2")
        receive(bob, alice, ns, x1, "ooo 1")
    r.check(f"[{tag}] out-of-order delivery (skipped message key)", out_of_order)

    def replay(xml_key: str, holder: Dict[str, str]) -> Callable[[], None]:
        def fn() -> None:
            rep = bob.try_call("decrypt", **{"from": alice.jid, "xml": holder[xml_key]})
            expect(rep["ok"] is False, f"replay accepted: {rep}")
            print(f"     replay rejected with {rep['error']} (cause {rep.get('cause')}): {rep['message']}")
        return fn
    def replay_same_chain() -> None:
        x1 = send(alice, bob, ns, "dup 1")
        x2 = send(alice, bob, ns, "dup 2")
        receive(bob, alice, ns, x1, "dup 1")
        receive(bob, alice, ns, x2, "dup 2")
        rep = bob.try_call("decrypt", **{"from": alice.jid, "xml": x1})
        expect(rep["ok"] is False, f"replay accepted: {rep}")
        expect(rep["error"] == "DecryptionFailed" and rep.get("cause") == "DuplicateMessageException",
               f"replay on the current chain: {rep}")
    r.check(f"[{tag}] replay on the current receiving chain -> DecryptionFailed/DuplicateMessageException",
            replay_same_chain)
    r.check(f"[{tag}] replayed normal message rejected", replay("a2b", last))
    r.check(f"[{tag}] replayed key exchange message rejected", replay("xml", first))

    def staleness() -> None:
        # python-omemo sends a heartbeat once the receiving chain is longer than STALENESS_MAGIC_NUMBER (53).
        for i in range(55):
            xml = send(alice, bob, ns, f"burst {i}")
            receive(bob, alice, ns, xml, f"burst {i}")
        n = deliver_outbox(bob, alice, ns)
        print(f"     {n} heartbeat message(s) delivered")
        xml = send(alice, bob, ns, "after heartbeat")
        receive(bob, alice, ns, xml, "after heartbeat")
    r.check(f"[{tag}] heartbeat after 55 unanswered messages (outbox) decrypts", staleness)

    def outbox_empty() -> None:
        expect(alice.call("outbox")["messages"] == [], "alice outbox not empty")
        expect(bob.call("outbox")["messages"] == [], "bob outbox not empty")
    r.check(f"[{tag}] outboxes drained", outbox_empty)


def main() -> int:
    r = Runner()
    tmp = tempfile.mkdtemp(prefix="omemo-peer-selftest-")
    log_path = os.path.join(tmp, "peers.log")
    alice = Peer("alice", ALICE, os.path.join(tmp, "alice.json"), log_path)
    bob = Peer("bob", BOB, os.path.join(tmp, "bob.json"), log_path)
    peers = [alice, bob]
    try:
        r.check("alice init", alice.init)
        r.check("bob init", bob.init)
        r.check("device ids differ", lambda: expect(alice.device_id != bob.device_id, "same id"))

        def robust() -> None:
            for bad in ["not json", "[1,2]", '{"cmd":"nope"}', '{"cmd":"encrypt"}',
                        '{"cmd":"decrypt","from":"x@y","xml":"<oops"}', '{"cmd":"bundle","ns":"urn:x"}']:
                rep = alice.raw(bad)
                expect(rep["ok"] is False and rep["error"] and "message" in rep, f"{bad}: {rep}")
        r.check("bad commands get ok:false and the peer lives on", robust)

        def own_lists() -> None:
            for ns, local in [(OLD_NS, "list"), (TWO_NS, "devices")]:
                xml = alice.call("devicelist", ns=ns)["xml"]
                elt = ET.fromstring(xml)
                expect(elt.tag == f"{{{ns}}}{local}", f"device list root {elt.tag}")
                ids = [d.get("id") for d in elt.iter(f"{{{ns}}}device")]
                expect(ids == [str(alice.device_id)], f"device list ids {ids}")
                b = ET.fromstring(alice.call("bundle", ns=ns)["xml"])
                expect(b.tag == f"{{{ns}}}bundle", f"bundle root {b.tag}")
        r.check("own device lists and bundles are XEP-0384 XML", own_lists)

        for ns in (OLD_NS, TWO_NS):
            r.check(f"exchange device lists and bundles ({ns})",
                    lambda ns=ns: (publish(alice, bob, ns), publish(bob, alice, ns)))

        for ns in (OLD_NS, TWO_NS):
            run_namespace(r, alice, bob, ns)

        def not_for_us() -> None:
            xml = send(alice, bob, TWO_NS, "x")
            rep = alice.try_call("decrypt", **{"from": ALICE, "xml": xml})
            expect(rep["ok"] is False and rep["error"] == "MessageNotForUs", f"{rep}")
            receive(bob, alice, TWO_NS, xml, "x")  # keep bob in step
        r.check("decrypting a message not addressed to us -> MessageNotForUs", not_for_us)

        def unknown_sender() -> None:
            for ns, name in ((OLD_NS, "carol"), (TWO_NS, "dave")):
                c = Peer(name, f"{name}@example.com", os.path.join(tmp, f"{name}.json"), log_path)
                peers.append(c)
                c.init()
                publish(c, alice, ns)
                xml = send(alice, c, ns, "who am I?")
                # c knows neither alice's device list nor her bundle
                rep = c.try_call("decrypt", **{"from": ALICE, "xml": xml})
                expect(rep["ok"] is False and rep["error"] == "SenderNotFound", f"{ns} no list: {rep}")
                # device list alone is not enough: the identity key comes from the bundle
                c.call("add_devicelist", jid=ALICE, ns=ns, xml=alice.call("devicelist", ns=ns)["xml"])
                rep = c.try_call("decrypt", **{"from": ALICE, "xml": xml})
                expect(rep["ok"] is False and rep["error"] == "SenderNotFound", f"{ns} no bundle: {rep}")
                # bundle added to the fake PEP: now it decrypts
                b = alice.call("bundle", ns=ns)
                c.call("add_bundle", jid=ALICE, device_id=alice.device_id, ns=ns, xml=b["xml"])
                receive(c, alice, ns, xml, "who am I?")
                expect(c.quit() == 0, f"{name} quit")
            alice.call("outbox")
        r.check("decrypt needs the sender's device list and bundle (else SenderNotFound)", unknown_sender)

        def history_sync() -> None:
            alice.call("before_history_sync")
            alice.call("after_history_sync")
        r.check("before_history_sync / after_history_sync commands", history_sync)

        def priority() -> None:
            for order in ([TWO_NS, OLD_NS], [OLD_NS, TWO_NS]):
                rep = alice.call("encrypt", to=[BOB], body="prio", ns=order)
                expect(list(rep["messages"]) == [order[0]], f"order {order}: got {list(rep['messages'])}")
                receive(bob, alice, order[0], rep["messages"][order[0]], "prio")
        r.check("namespace priority order picks one namespace per device", priority)

        def restart() -> None:
            rc = bob.quit()
            expect(rc == 0, f"bob exit code {rc}")
            new_bob = Peer("bob", BOB, bob.storage, log_path)
            peers.append(new_bob)
            rep = new_bob.init()
            expect(rep["restored"] is True and rep["device_id"] == bob.device_id, f"restart: {rep}")
            for ns in (OLD_NS, TWO_NS):
                xml = send(alice, new_bob, ns, f"after restart {ns}")
                receive(new_bob, alice, ns, xml, f"after restart {ns}")
                xml = send(new_bob, alice, ns, f"bob back {ns}")
                receive(alice, new_bob, ns, xml, f"bob back {ns}")
            expect(new_bob.quit() == 0, "bob quit")
        r.check("bob restarts from his state file and both sessions go on", restart)

        r.check("alice quits with exit code 0", lambda: expect(alice.quit() == 0, "alice rc"))
    finally:
        for p in peers:
            p.kill()

    if r.failed:
        print(f"(peer logs and state files kept in {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{r.passed} passed, {r.failed} failed")
    return 0 if r.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
