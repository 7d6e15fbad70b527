#!/usr/bin/env python3
"""python-omemo baseline for omemod's benchmark (daemon/benches/omemod.rs, scripts/bench).

Measures python-omemo 2.1's own SessionManager (both backends loaded, as in peer.py) in one process:
every "device" is a SessionManager with its own in-memory omemo.Storage; a shared dict plays PEP
(bundles and device lists are handed over as python-omemo objects, so no XML is parsed or written:
this favours python-omemo). Operations, per namespace (OMEMO 2 and OMEMO 0.3):

  decrypt                  one message on an established, confirmed session (same chain, no DH step)
  decrypt_dh               one message that starts a new ratchet (ping-pong: DH step on every message)
  decrypt_persist          decrypt, then write the whole storage as JSON (temp file + fsync + rename,
                           as tests/interop/peer.py does) - what a python client must do to be durable
  decrypt_persist_nosync   the same without fsync (compare with omemod --durability normal)
  encrypt                  one message to one device, established session
  fanout100                one message to one JID with 100 devices, all sessions established
  fanout100_first          the same, first message: builds the 100 sessions (one sample per namespace)
  session_active           first encrypt to a fresh device whose bundle is known (X3DH + encrypt)
  session_active_persist   the same + JSON+fsync persist
  session_passive          decrypt of a first message (key exchange; pre key used and replaced)

OMEMO 2 plaintexts are SCE envelopes built (encrypt) and parsed (decrypt) inside the timed region, as
omemod does. Prints ONE JSON object on stdout: medians/p99 in microseconds. Logs go to stderr.
Iterations: OMEMOD_BENCH_QUICK=1 for a smoke run; OMEMOD_BENCH_SCALE=<float> multiplies counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import string
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

import omemo
import oldmemo
import twomemo

try:
    from importlib.metadata import version as pkg_version
except ImportError:  # pragma: no cover
    pkg_version = None  # type: ignore

OLD_NS = oldmemo.oldmemo.NAMESPACE
TWO_NS = twomemo.twomemo.NAMESPACE
SCE_NS = "urn:xmpp:sce:1"
CLIENT_NS = "jabber:client"
BODY = "Hello, this is a benchmark message of moderate length. \U0001F600"

log = logging.getLogger("bench-python")

# Longest one-sided chain in the decrypt runs (below python-omemo's heartbeat threshold, 53).
CHAIN = 50
QUICK = os.environ.get("OMEMOD_BENCH_QUICK", "") not in ("", "0")
SCALE = float(os.environ.get("OMEMOD_BENCH_SCALE", "1"))


def n(full: int, quick: int) -> int:
    return max(3, int((quick if QUICK else full) * SCALE))


# ------------------------------------------------------------------------------------------------
# Storage, fake PEP, one SessionManager class per device (python-omemo's callbacks are static)
# ------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class MemStorage(omemo.Storage):
    """In-memory key/value storage; flush() persists it all to one JSON file like peer.py."""

    def __init__(self, path: Optional[str] = None) -> None:
        super().__init__()
        self.data: Dict[str, Any] = {}
        self.path = path

    async def _load(self, key: str) -> omemo.Maybe[omemo.JSONType]:
        if key in self.data:
            return omemo.Just(self.data[key])
        return omemo.Nothing()

    async def _store(self, key: str, value: omemo.JSONType) -> None:
        self.data[key] = _plain(value)

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)

    def flush(self, sync: bool = True) -> None:
        assert self.path is not None
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.data, f, separators=(",", ":"))
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)


PEP_BUNDLES: Dict[Tuple[str, str, int], omemo.Bundle] = {}
PEP_LISTS: Dict[Tuple[str, str], Dict[int, Optional[str]]] = {}


class Device:
    """One python-omemo device (SessionManager + storage + outbox)."""

    def __init__(self, jid: str, state_dir: str) -> None:
        self.jid = jid
        self.outbox: List[Tuple[omemo.Message, str]] = []
        self.storage = MemStorage(os.path.join(state_dir, f"{jid}-{secrets.token_hex(4)}.json"))
        self.sm: Any = None
        self.device_id = 0

    async def start(self) -> "Device":
        dev = self

        class SM(omemo.SessionManager):
            @staticmethod
            async def _upload_bundle(bundle: omemo.Bundle) -> None:
                PEP_BUNDLES[(bundle.namespace, bundle.bare_jid, bundle.device_id)] = bundle

            @staticmethod
            async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
                b = PEP_BUNDLES.get((namespace, bare_jid, device_id))
                if b is None:
                    raise omemo.BundleNotFound(f"{bare_jid}/{device_id}")
                return b

            @staticmethod
            async def _delete_bundle(namespace: str, device_id: int) -> None:
                PEP_BUNDLES.pop((namespace, dev.jid, device_id), None)

            @staticmethod
            async def _upload_device_list(namespace: str, device_list: omemo.DeviceList) -> None:
                PEP_LISTS[(namespace, dev.jid)] = dict(device_list)

            @staticmethod
            async def _download_device_list(namespace: str, bare_jid: str) -> omemo.DeviceList:
                return dict(PEP_LISTS.get((namespace, bare_jid), {}))

            async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
                return omemo.TrustLevel.TRUSTED  # blind trust

            async def _make_trust_decision(self, undecided: Any, identifier: Optional[str]) -> None:
                for d in undecided:
                    await self.set_trust(d.bare_jid, d.identity_key, "TRUSTED")

            @staticmethod
            async def _send_message(message: omemo.Message, bare_jid: str) -> None:
                dev.outbox.append((message, bare_jid))

        self.sm = await SM.create(
            backends=[twomemo.Twomemo(self.storage), oldmemo.Oldmemo(self.storage)],
            storage=self.storage,
            own_bare_jid=self.jid,
            initial_own_label=None,
            undecided_trust_level_name="TRUSTED",
        )
        await self.sm.after_history_sync()
        own, _ = await self.sm.get_own_device_information()
        self.device_id = own.device_id
        return self

    async def learn(self, jid: str) -> None:
        for ns in (TWO_NS, OLD_NS):
            await self.sm.update_device_list(ns, jid, dict(PEP_LISTS.get((ns, jid), {})))

    async def encrypt(self, to: str, ns: str, body: str = BODY) -> omemo.Message:
        if ns == TWO_NS:
            plaintext = {TWO_NS: sce_envelope(body, self.jid, to)}
        else:
            plaintext = {OLD_NS: body.encode("utf-8")}
        messages, errors = await self.sm.encrypt(frozenset([to]), plaintext, backend_priority_order=[ns])
        if errors:
            raise RuntimeError(f"encrypt errors: {errors}")
        (message,) = list(messages)
        return message

    async def decrypt(self, message: omemo.Message) -> Optional[str]:
        plaintext, _device, _km = await self.sm.decrypt(message)
        if plaintext is None:
            return None
        if message.namespace == TWO_NS:
            env = ET.fromstring(plaintext)
            body = env.find(f"{{{SCE_NS}}}content/{{{CLIENT_NS}}}body")
            return None if body is None else body.text
        return plaintext.decode("utf-8")

    async def deliver_outbox(self, to: "Device") -> None:
        out, self.outbox = self.outbox, []
        for m, jid in out:
            if jid == to.jid:
                await to.decrypt(m)


def sce_envelope(body: str, from_jid: str, to_jid: str) -> bytes:
    alphabet = string.ascii_letters + string.digits
    rpad = "".join(secrets.choice(alphabet) for _ in range(secrets.randbelow(201)))
    esc = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        f"<envelope xmlns='{SCE_NS}'><content><body xmlns='{CLIENT_NS}'>{esc}</body></content>"
        f"<rpad>{rpad}</rpad><from jid='{from_jid}'/><to jid='{to_jid}'/></envelope>"
    ).encode("utf-8")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

def summary(samples_ns: List[int]) -> Dict[str, Any]:
    s = sorted(samples_ns)
    k = len(s)

    def pct(p: float) -> float:
        return s[min(k - 1, int(p * (k - 1) + 0.5))] / 1000.0

    return {"median_us": round(pct(0.5), 2), "p99_us": round(pct(0.99), 2), "n": k}


async def bench_namespace(ns: str, tag: str, state_dir: str, fans: List[Device]) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    alice = await Device(f"alice-{tag}@bench.example", state_dir).start()
    bob = await Device(f"bob-{tag}@bench.example", state_dir).start()
    await alice.learn(bob.jid)
    await bob.learn(alice.jid)

    # Establish and confirm: first message (key exchange), bob's automatic empty answer.
    m = await alice.encrypt(bob.jid, ns)
    assert await bob.decrypt(m) == BODY
    await bob.deliver_outbox(alice)
    # One more message the other way, so alice's session is surely confirmed.
    m = await bob.encrypt(alice.jid, ns)
    await alice.decrypt(m)
    log.info("%s: established", tag)

    # decrypt (same chain), with and without persisting.
    for key, persist, sync in (
        ("decrypt", False, False),
        ("decrypt_persist", True, True),
        ("decrypt_persist_nosync", True, False),
    ):
        count = n(500, 60) if not persist else n(300, 40)
        samples = []
        # Chains of at most CHAIN messages: python-omemo answers longer one-sided chains with
        # heartbeats (and refuses to skip more than 1000 keys), which would distort the figure.
        while len(samples) < count:
            msgs = [await alice.encrypt(bob.jid, ns) for _ in range(CHAIN)]
            # The first message of a chain costs bob a DH step: decrypt it untimed.
            assert await bob.decrypt(msgs[0]) == BODY
            for msg in msgs[1:]:
                t0 = time.perf_counter_ns()
                body = await bob.decrypt(msg)
                if persist:
                    bob.storage.flush(sync)
                samples.append(time.perf_counter_ns() - t0)
                assert body == BODY
            # Turn the ratchet so alice's next chain starts fresh.
            assert await alice.decrypt(await bob.encrypt(alice.jid, ns)) == BODY
            alice.outbox.clear()
            bob.outbox.clear()
        res[key] = summary(samples)
        log.info("%s %s %s", tag, key, res[key])

    # decrypt with a DH step: ping-pong.
    samples = []
    for _ in range(n(200, 30)):
        back = await bob.encrypt(alice.jid, ns)
        await alice.decrypt(back)
        msg = await alice.encrypt(bob.jid, ns)
        t0 = time.perf_counter_ns()
        body = await bob.decrypt(msg)
        samples.append(time.perf_counter_ns() - t0)
        assert body == BODY
    alice.outbox.clear()
    bob.outbox.clear()
    res["decrypt_dh"] = summary(samples)

    # encrypt, one device.
    samples = []
    for _ in range(n(500, 60)):
        t0 = time.perf_counter_ns()
        await alice.encrypt(bob.jid, ns)
        samples.append(time.perf_counter_ns() - t0)
    res["encrypt"] = summary(samples)
    log.info("%s encrypt %s", tag, res["encrypt"])

    # fan-out: one JID with 100 devices (shared by both namespaces; each has both backends).
    fan_jid = fans[0].jid
    await alice.learn(fan_jid)
    t0 = time.perf_counter_ns()
    first = await alice.encrypt(fan_jid, ns)
    res["fanout100_first"] = summary([time.perf_counter_ns() - t0])
    for f in fans:  # each answers the key exchange with an empty message: sessions confirmed
        await f.learn(alice.jid)
        assert await f.decrypt(first) == BODY
        await f.deliver_outbox(alice)
    samples = []
    for _ in range(n(40, 6)):
        t0 = time.perf_counter_ns()
        msg = await alice.encrypt(fan_jid, ns)
        samples.append(time.perf_counter_ns() - t0)
    res["fanout100"] = summary(samples)
    log.info("%s fanout100 %s", tag, res["fanout100"])

    # session creation: active (alice -> fresh device) and passive (carol <- fresh device).
    carol = await Device(f"carol-{tag}@bench.example", state_dir).start()
    active, active_p, passive = [], [], []
    for i in range(n(60, 8)):
        fresh = await Device(f"fresh{i}-{tag}@bench.example", state_dir).start()
        await alice.learn(fresh.jid)
        t0 = time.perf_counter_ns()
        await alice.encrypt(fresh.jid, ns)
        t1 = time.perf_counter_ns()
        alice.storage.flush(True)
        t2 = time.perf_counter_ns()
        active.append(t1 - t0)
        active_p.append(t2 - t0)
        await fresh.learn(carol.jid)
        await carol.learn(fresh.jid)
        first = await fresh.encrypt(carol.jid, ns)
        t0 = time.perf_counter_ns()
        body = await carol.decrypt(first)
        passive.append(time.perf_counter_ns() - t0)
        assert body == BODY
        carol.outbox.clear()
        await fresh.sm.shutdown()
    res["session_active"] = summary(active)
    res["session_active_persist"] = summary(active_p)
    res["session_passive"] = summary(passive)
    log.info("%s sessions active %s passive %s", tag, res["session_active"], res["session_passive"])
    for d in (alice, bob, carol):
        await d.sm.shutdown()
    return res


async def main_async() -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "python": platform.python_version(),
        "python_omemo": pkg_version("omemo") if pkg_version else getattr(omemo, "__version__", "?"),
        "quick": QUICK,
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="omemod-bench-py-") as d:
        fans = []
        t0 = time.perf_counter()
        for _ in range(100):
            fans.append(await Device("fan@bench.example", d).start())
        log.info("100 fan-out devices created in %.1f s", time.perf_counter() - t0)
        for ns, tag in ((TWO_NS, "twomemo"), (OLD_NS, "oldmemo")):
            out["results"][tag] = await bench_namespace(ns, tag, d, fans)
        for f in fans:
            await f.sm.shutdown()
    return out


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("OMEMOD_BENCH_PY_LOG", "WARNING").upper(),
        format="bench_python %(levelname)s: %(message)s",
    )
    if "OMEMOD_BENCH_PY_LOG" not in os.environ:
        # python-omemo warns about every device list it sees without its own id (normal here).
        logging.getLogger("omemo").setLevel(logging.ERROR)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(main_async())
    finally:
        loop.close()
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
