"""Error answers become the exception of their `data.kind`; sockets we cannot trust are refused."""

from __future__ import annotations

import os
import unittest

import daemon as support
import omemod_client as om
from daemon import DaemonTest, element, introduce
from omemod_client import OMEMO2, Client

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.org"


class Errors(DaemonTest):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.c = self.daemon.client()
        await self.c.connect()
        self.addAsyncCleanup(self.c.close)

    async def expect(self, cls: type, call: object, kind: str, code: int) -> om.RpcError:
        with self.assertRaises(cls) as ctx:
            await call  # type: ignore[misc]
        e = ctx.exception
        self.assertIsInstance(e, om.RpcError)
        self.assertEqual((e.kind, e.code, e.data["kind"]), (kind, code, kind))
        self.assertIsInstance(e.message, str)
        self.assertTrue(e.cause is None or isinstance(e.cause, str))
        return e

    async def test_each_kind_has_its_class(self) -> None:
        c = self.c
        await self.expect(om.AccountRequired, c.fingerprint_get(), "account_required", 1003)  # no account yet
        await c.account_create(ALICE)
        await self.expect(om.AccountExists, c.account_create(ALICE), "account_exists", 1002)
        await self.expect(om.InvalidJid, c.account_create("not a jid"), "invalid_jid", 1004)
        await self.expect(om.UnknownAccount, c.fingerprint_get(account="nobody@example.org"),
                          "unknown_account", 1001)
        await self.expect(om.MethodNotFound, c.call("no.such_method"), "method_not_found", -32601)
        await self.expect(om.InvalidParams, c.call("status", {"misspelt": 1}), "invalid_params", -32602)
        await self.expect(om.UnknownSubscription, c.unsubscribe(12345), "unknown_subscription", -32005)
        await self.expect(om.InvalidBundle, c.bundle_update(BOB, 7, OMEMO2, "<bundle xmlns='urn:xmpp:omemo:2'/>"),
                          "invalid_bundle", 1103)
        await self.expect(om.InvalidMessage, c.decrypt(BOB, "<encrypted xmlns='urn:xmpp:omemo:2'/>"),
                          "invalid_message", 1204)
        await c.account_create(BOB)
        await self.expect(om.AccountRequired, c.fingerprint_get(), "account_required", 1003)

    async def test_decrypt_errors(self) -> None:
        await self.c.account_create(ALICE)
        await self.c.account_create(BOB)
        a, b = self.daemon.client(ALICE), self.daemon.client(BOB)
        async with a, b:
            await introduce(a, ALICE, b, BOB)
            sent = await a.encrypt([BOB], "only for bob, in a chat with bob", namespaces=[OMEMO2])
            # Presented as a message addressed elsewhere: the envelope does not match.
            e = await self.expect(om.SceMismatch, b.decrypt(ALICE, element(sent, OMEMO2), to="carol@example.org"),
                                  "sce_mismatch", 1209)
            self.assertNotIn("only for bob", str(e))
            got = await b.decrypt(ALICE, element(sent, OMEMO2), to=BOB)
            self.assertEqual(got["body"], "only for bob, in a chat with bob")
            # Our own message (a sent carbon) is read back, not refused.
            to_alice = await b.encrypt([ALICE], "for alice", namespaces=[OMEMO2])
            own = await b.decrypt(BOB, element(to_alice, OMEMO2), to=ALICE)
            self.assertEqual((own["own"], own["body"]), (True, "for alice"))
            # A message for another device than ours: alice's to carol, read by bob.
            await self.c.account_create(CAROL)
            async with self.daemon.client(CAROL) as c:
                await introduce(a, ALICE, c, CAROL)
            to_carol = await a.encrypt([CAROL], "for carol", namespaces=[OMEMO2])
            e = await self.expect(om.NotForThisDevice, b.decrypt(ALICE, element(to_carol, OMEMO2)),
                                  "not_for_this_device", 1202)
            self.assertIn("recipients", e.data)
            self.assertNotIn("for carol", str(e))

    async def test_own_message_not_kept(self) -> None:
        # Nothing is kept with redelivery off: our own copy cannot be read back.
        d = support.Daemon("--redelivery-retention", "0")
        self.addCleanup(d.cleanup)
        async with d.client() as c:
            await c.account_create(ALICE)
            await c.account_create(BOB)
        async with d.client(ALICE) as a, d.client(BOB) as b:
            await introduce(a, ALICE, b, BOB)
            sent = await a.encrypt([BOB], "not kept", namespaces=[OMEMO2])
            await self.expect(om.UnknownOwnMessage, a.decrypt(ALICE, element(sent, OMEMO2), to=BOB),
                              "unknown_own_message", 1213)
            # Nobody reached: the kind and each device's report.
            await a.trust_set(BOB, (await a.trust_list(jid=BOB))[0]["fingerprint"], "distrusted")
            e = await self.expect(om.NoDeviceReached, a.encrypt([BOB], "to nobody", namespaces=[OMEMO2]),
                                  "no_device_reached", 1212)
            self.assertEqual([x["status"] for x in e.data["devices"]], ["untrusted"])

    async def test_unknown_kind_is_a_plain_rpc_error(self) -> None:
        e = om.error_from("x", {"code": 4242, "message": "new", "data": {"kind": "brand_new", "cause": "peer"}})
        self.assertIs(type(e), om.RpcError)
        self.assertEqual((e.kind, e.code, e.cause), ("brand_new", 4242, "peer"))


class Sockets(DaemonTest):
    """The checks of docs/rpc.md "Connecting", before any byte is sent."""

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        self.dir = os.path.join(self.daemon.dir, "links")
        os.mkdir(self.dir, 0o700)

    async def refused(self, path: str, words: str) -> None:
        with self.assertRaises(om.SocketNotTrusted) as ctx:
            await Client(path).connect()
        self.assertIn(words, str(ctx.exception))

    async def test_a_symlink_is_refused(self) -> None:
        link = os.path.join(self.dir, "omemod.sock")
        os.symlink(self.daemon.socket, link)
        await self.refused(link, "symbolic link")

    async def test_a_directory_open_to_others_is_refused(self) -> None:
        path = os.path.join(self.dir, "omemod.sock")
        os.link(self.daemon.socket, path)
        os.chmod(self.dir, 0o777)
        await self.refused(path, "writable by other users")
        os.chmod(self.dir, 0o700)
        async with Client(path) as c:  # the same socket, once the directory is closed again
            self.assertIn("version", await c.status())

    async def test_not_a_socket_is_refused(self) -> None:
        path = os.path.join(self.dir, "omemod.sock")
        open(path, "w").close()
        await self.refused(path, "not a socket")

    async def test_no_daemon(self) -> None:
        with self.assertRaises(om.DaemonUnavailable):
            await Client(os.path.join(self.dir, "nothing.sock")).connect()

    def test_default_path(self) -> None:
        old = {k: os.environ.pop(k, None) for k in ("OMEMOD_SOCKET", "XDG_RUNTIME_DIR")}
        try:
            os.environ["XDG_RUNTIME_DIR"] = "/run/user/4242"
            self.assertEqual(om.default_socket_path(), "/run/user/4242/omemod/omemod.sock")
            os.environ["OMEMOD_SOCKET"] = "/somewhere/else.sock"
            self.assertEqual(om.default_socket_path(), "/somewhere/else.sock")
        finally:
            for k, v in old.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v


if __name__ == "__main__":
    unittest.main()
