"""Real omemod daemons for the tests: `$OMEMOD_BIN` (else `omemod` on PATH), each with its own
database and socket in a temporary directory, debug methods on."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from typing import Any, Dict, List, Optional, Set

from omemod_client import NAMESPACES, Client

# No session bus: a desktop keyring (Secret Service) there would become the daemons' key source.
DAEMON_ENV = {"RUST_LOG": "warn", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/omemod-tests-no-bus"}


def omemod_binary() -> str:
    path = os.environ.get("OMEMOD_BIN") or shutil.which("omemod")
    if not path:
        raise unittest.SkipTest("no omemod: set OMEMOD_BIN (cargo build -p omemod)")
    return path


class Daemon:
    """`omemod serve` on a private socket and database; start, stop, kill, start again."""

    def __init__(self, *extra: str):
        self.dir = tempfile.mkdtemp(prefix="omemod-pytest-")
        self.socket = os.path.join(self.dir, "run", "omemod.sock")
        self.db = os.path.join(self.dir, "state", "omemod.db")
        self.extra = ["--enable-debug-methods", *extra]
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, XDG_CONFIG_HOME=self.dir, **DAEMON_ENV)
        for var in ("OMEMOD_CONFIG", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
            env.pop(var, None)
        self.proc = subprocess.Popen([omemod_binary(), "serve", "--socket", self.socket, "--db", self.db,
                                      *self.extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     env=env)
        deadline = time.monotonic() + 20
        # The socket file appears at bind(), a moment before listen(): wait until it accepts.
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("omemod did not start")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.socket)
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """SIGTERM: the daemon finishes what is in flight and removes its socket."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: answers in flight are lost; the socket file stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.proc = None

    def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self, account: Optional[str] = None, **kw: Any) -> "RecordingClient":
        return RecordingClient(self.socket, account=account, **kw)


CALLED: Set[str] = set()
"""Every method any test called (successfully or not), for the coverage check."""


class RecordingClient(Client):
    """A Client that notes each method it calls in CALLED."""

    async def call(self, method: str, params: Any = None, *, retry: bool = False,
                   timeout: Optional[float] = None) -> Any:
        CALLED.add(method)
        return await super().call(method, params, retry=retry, timeout=timeout)

    async def _subscribe(self, types: Any) -> Any:
        CALLED.add("subscribe")
        return await super()._subscribe(types)


async def introduce(a: Client, a_jid: str, b: Client, b_jid: str) -> None:
    """What an XMPP client would carry between two accounts' PEP nodes: each one's device lists
    and bundles, in both namespaces, handed to the other."""
    for (me, them, them_jid) in ((a, b, b_jid), (b, a, a_jid)):
        for ns in NAMESPACES:
            lst = await them.devicelist_get(ns)
            await me.devicelist_update(them_jid, ns, lst["xml"])
            bundle = await them.bundle_get(ns)
            await me.bundle_update(them_jid, bundle["device_id"], ns, bundle["xml"])


def element(result: Dict[str, Any], ns: str) -> str:
    """The `<encrypted>` XML of namespace `ns` in an `encrypt` answer."""
    for m in result["messages"]:
        if m["namespace"] == ns:
            return m["xml"]
    raise AssertionError(f"no {ns} element in {result}")


def discovered_methods(doc: Dict[str, Any]) -> Dict[str, List[str]]:
    """`rpc.discover`'s method → param names, without the test-only `debug.*`."""
    return {m["name"]: sorted(p["name"] for p in m.get("params", []))
            for m in doc["methods"] if not m["name"].startswith("debug.")}


async def wait_until(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class DaemonTest(unittest.IsolatedAsyncioTestCase):
    """A test with its own daemon (`self.daemon`), stopped and removed afterwards."""

    def setUp(self) -> None:
        self.daemon = Daemon()
        self.addCleanup(self.daemon.cleanup)

    async def asyncSetUp(self) -> None:
        # Starting and stopping daemons blocks for a moment; asyncio's debug mode (on in these
        # tests) would report each as a slow callback.
        asyncio.get_running_loop().slow_callback_duration = 1.0
