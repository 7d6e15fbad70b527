"""Reconnection by docs/rpc.md's retry rules, and redelivery of an answer the crash took away."""

from __future__ import annotations

import asyncio
import time
import unittest

import omemod_client as om
from daemon import DaemonTest, element, introduce, wait_until
from omemod_client import OMEMO2

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL_LIST = "<devices xmlns='urn:xmpp:omemo:2'><device id='4242'/></devices>"


class Reconnect(DaemonTest):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        async with self.daemon.client() as c:
            await c.account_create(ALICE)
            await c.account_create(BOB)
        self.a = self.daemon.client(ALICE)
        self.b = self.daemon.client(BOB)
        for c in (self.a, self.b):
            await c.connect()
            self.addAsyncCleanup(c.close)

    async def restart_when_it_dies(self) -> None:
        """Waits until the daemon process has exited (it kills itself), then starts it again."""
        proc = self.daemon.proc
        assert proc is not None
        await wait_until(lambda: proc.poll() is not None, timeout=20)
        self.daemon.proc = None
        self.daemon.start()

    async def test_a_decrypt_whose_answer_was_lost_is_redelivered(self) -> None:
        await introduce(self.a, ALICE, self.b, BOB)
        sent = await self.a.encrypt([BOB], "the answer to this was lost", namespaces=[OMEMO2])
        # The daemon commits the decryption, then dies before answering: the library reconnects
        # to the restarted daemon and sends the decrypt again (safe to retry), which comes back
        # as a redelivery with the same content.
        await self.b.call("debug.kill_after_commit")
        restart = asyncio.ensure_future(self.restart_when_it_dies())
        got = await self.b.decrypt(ALICE, element(sent, OMEMO2), to=BOB)
        await restart
        self.assertEqual(got["body"], "the answer to this was lost")
        self.assertTrue(got["redelivered"], got)
        self.assertIsNotNone(got.get("first_decrypted_at"))
        self.assertEqual(got["actions"], [], "the duties went with the lost answer")
        # At least once: a dial that lands on the dying daemon's listener before it is gone is a
        # second lost link (seen on a loaded machine).
        self.assertGreaterEqual(self.b.reconnects, 1)
        # The other client reconnects too, on its next call.
        self.assertEqual((await self.a.fingerprint_get())["jid"], ALICE)
        self.assertGreaterEqual(self.a.reconnects, 1)

    async def test_a_call_not_safe_to_retry_fails_with_connection_lost(self) -> None:
        slow = asyncio.ensure_future(self.a.call("debug.sleep", {"ms": 5000}))
        await asyncio.sleep(0.3)
        self.daemon.kill()
        with self.assertRaises(om.ConnectionLost):
            await slow
        self.daemon.start()
        # The same call marked safe to retry is sent again on the next connection.
        slow = asyncio.ensure_future(self.a.call("debug.sleep", {"ms": 1000}, retry=True))
        await asyncio.sleep(0.3)
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(await slow, {"slept_ms": 1000})

    async def test_subscriptions_survive_a_restart(self) -> None:
        events = await self.a.subscribe(["devicelist_changed"])
        self.daemon.stop()
        self.daemon.start()
        # The first call after the restart reconnects and subscribes again; the gap is announced.
        await self.a.status()
        gap = await events.next(timeout=10)
        self.assertEqual((gap["type"], gap.get("reconnected"), gap.get("missed")), ("events_lost", True, None))
        await self.b.devicelist_update("carol@example.org", OMEMO2, CAROL_LIST, account=ALICE)
        e = await events.next(timeout=10)
        self.assertEqual((e["type"], e["peer"], e["device_ids"]), ("devicelist_changed", "carol@example.org", [4242]))
        await events.close()
        with self.assertRaises(StopAsyncIteration):
            await events.next(timeout=1)

    async def test_gives_up_after_the_reconnect_window(self) -> None:
        c = self.daemon.client(ALICE, reconnect_window=1.0)
        await c.connect()
        self.addAsyncCleanup(c.close)
        self.daemon.stop()
        started = time.monotonic()
        with self.assertRaises(om.DaemonUnavailable):
            await c.fingerprint_get()
        self.assertLess(time.monotonic() - started, 10)
        self.daemon.start()
        self.assertEqual((await c.fingerprint_get())["jid"], ALICE)

    async def test_a_call_waits_for_a_restarting_daemon(self) -> None:
        self.daemon.stop()
        call = asyncio.ensure_future(self.a.fingerprint_get())
        await asyncio.sleep(0.5)
        self.assertFalse(call.done())
        self.daemon.start()
        self.assertEqual((await call)["jid"], ALICE)


if __name__ == "__main__":
    unittest.main()
