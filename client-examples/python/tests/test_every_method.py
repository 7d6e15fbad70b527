"""Every method of the daemon, called through the library in one conversation between two
accounts, with what each answer must say."""

from __future__ import annotations

import unittest

import daemon as support
from daemon import DaemonTest, discovered_methods, element, introduce
from omemod_client import OLDMEMO, OMEMO2, IdempotencyKeyReused, InvalidParams, NoDeviceReached

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.org"


class EveryMethod(DaemonTest):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        support.CALLED.clear()

    async def test_a_conversation_calls_every_method(self) -> None:
        async with self.daemon.client(ALICE) as a, self.daemon.client(BOB) as b:
            await self.accounts(a, b)
            await introduce(a, ALICE, b, BOB)
            await self.messages(a, b)
            await self.trust_and_catchup(a, b)
            await self.account_lifecycle(a)
            await self.files(a)
            doc = await a.rpc_discover()
        self.assertEqual(sorted(set(discovered_methods(doc)) - support.CALLED), [],
                         "methods the conversation never called")

    async def accounts(self, a: support.RecordingClient, b: support.RecordingClient) -> None:
        status = await a.status()
        self.assertEqual(status["pid"], self.daemon.proc.pid if self.daemon.proc else None)
        self.assertEqual((status["locked"], status["key_source"]), (False, "key-file"))
        # Not locked: nothing to unlock (the passphrase is not checked).
        self.assertEqual(await a.unlock("not asked for"), {"unlocked": False})
        self.assertEqual(status["socket"], self.daemon.socket)
        created = await a.account_create(ALICE, avoid=[1, 2, 3])
        self.assertNotIn(created["device_id"], (1, 2, 3))
        # Our own lists first: the answer asks to fetch them before anything is published.
        first = created.get("actions", [])[0]
        self.assertEqual((first["type"], first["jid"]), ("fetch_devicelist", ALICE))
        await b.account_create(BOB, trust_mode="btbv")
        self.assertEqual(sorted(x["jid"] for x in await a.account_list()), [ALICE, BOB])
        me = await a.fingerprint_get()
        self.assertEqual((me["jid"], me["device_id"]), (ALICE, created["device_id"]))
        self.a_device = me["device_id"]
        for ns, node in ((OMEMO2, "urn:xmpp:omemo:2:devices"), (OLDMEMO, "eu.siacs.conversations.axolotl.devicelist")):
            lst = await a.devicelist_get(ns)
            self.assertEqual(lst["node"], node)
            self.assertIn(str(self.a_device), lst["xml"])
            bundle = await a.bundle_get(ns)
            self.assertEqual((bundle["namespace"], bundle["device_id"]), (ns, self.a_device))
            self.assertEqual(bundle["publish_options"].get("pubsub#access_model"), "open")
        # The user removes own devices from the list; never this one.
        without = await a.devicelist_get(OMEMO2, remove=[self.a_device + 1])
        self.assertIn(str(self.a_device), without["xml"])
        with self.assertRaises(InvalidParams):
            await a.devicelist_get(OMEMO2, remove=[self.a_device])

    async def messages(self, a: support.RecordingClient, b: support.RecordingClient) -> None:
        devices = await a.devices_list(jid=BOB)
        self.assertEqual(sorted(d["namespace"] for d in devices if d["active"]), sorted([OMEMO2, OLDMEMO]))
        self.assertEqual({(d["fingerprint"] is not None, d["stale"], d["this_device"]) for d in devices},
                         {(True, False, False)})
        self.b_device = devices[0]["device_id"]
        plan = await a.encrypt_plan([BOB])
        self.assertTrue(plan["ready"], plan)
        self.assertEqual({d["status"] for d in plan["devices"]}, {"bundle"})
        events = await b.subscribe()

        sent = await a.encrypt([BOB], "hello bob ✓", namespaces=[OMEMO2], idempotency_key="m1")
        self.assertEqual([d["status"] for d in sent["devices"]], ["encrypted"])
        self.assertEqual(await a.encrypt([BOB], "hello bob ✓", namespaces=[OMEMO2], idempotency_key="m1"),
                         sent, "the same idempotency key gives the first answer again")
        with self.assertRaises(IdempotencyKeyReused):
            await a.encrypt([BOB], "something else", namespaces=[OMEMO2], idempotency_key="m1")

        got = await b.decrypt(ALICE, element(sent, OMEMO2), to=BOB)
        self.assertEqual((got["body"], got["key_exchange"], got["redelivered"]), ("hello bob ✓", True, False))
        self.assertEqual(got["sender"]["device_id"], self.a_device)
        heartbeat = [x for x in got["actions"] if x["type"] == "send_heartbeat"]
        self.assertEqual([(x["jid"], x["device_id"]) for x in heartbeat], [(ALICE, self.a_device)])
        again = await b.decrypt(ALICE, element(sent, OMEMO2), to=BOB)
        self.assertEqual((again["body"], again["redelivered"], again["actions"]), ("hello bob ✓", True, []))
        # The same duty, announced to the subscriber as done by the caller.
        while True:
            e = await events.next(timeout=10)
            if e["type"] == "send_heartbeat":
                self.assertTrue(e["in_answer"])
                break
        await b.unsubscribe(events)

        empty = await b.heartbeat(ALICE, OMEMO2, self.a_device)
        got = await a.decrypt(BOB, element(empty, OMEMO2), to=ALICE)
        self.assertTrue(got["empty"])
        self.assertNotIn("body", {k for k, v in got.items() if v is not None})
        fresh = await b.session_replace(ALICE, OLDMEMO, self.a_device)
        got = await a.decrypt(BOB, element(fresh, OLDMEMO), to=ALICE)
        self.assertEqual((got["empty"], got["key_exchange"], got["namespace"]), (True, True, OLDMEMO))

    async def trust_and_catchup(self, a: support.RecordingClient, b: support.RecordingClient) -> None:
        [entry] = await a.trust_list(jid=BOB)
        self.assertEqual(entry["level"], "trusted")
        decided = await a.trust_set(BOB, entry["fingerprint"], "distrusted")
        self.assertEqual(decided["level"], "distrusted")
        # No device of bob can get it: nothing to send, and each device's report says why.
        with self.assertRaises(NoDeviceReached) as refused:
            await a.encrypt([BOB], "not for a distrusted key", namespaces=[OMEMO2])
        self.assertEqual([d["status"] for d in refused.exception.data["devices"]], ["untrusted"])
        self.assertNotIn("messages", refused.exception.data)
        await a.trust_set(BOB, entry["fingerprint"], "trusted")
        self.assertEqual((await a.catchup_begin())["catchup"], True)
        self.assertEqual((await a.catchup_end())["catchup"], False)
        accepted = await a.identity_accept(BOB, OMEMO2, self.b_device, entry["fingerprint"])
        self.assertEqual(accepted["fingerprint"], entry["fingerprint"])
        # Bob's QR code, scanned by alice: the key it names is the one she holds.
        link = await b.link_get()
        self.assertTrue(link["link"].startswith(f"xmpp:{BOB}?omemo-sid-{self.b_device}="), link)
        verified = await a.link_verify(link["link"])
        self.assertEqual([(k["device_id"], k["status"]) for k in verified["keys"]],
                         [(self.b_device, "matches")])
        labelled = await b.account_set_label("bob's desk")
        self.assertIn("publish_devicelist", [x["type"] for x in labelled.get("actions", [])])

    async def files(self, a: support.RecordingClient) -> None:
        # XEP-0454: a small file encrypted for upload, then opened from its link, chunk by chunk.
        import base64
        plain = bytes(range(256)) * 5
        up = await a.file_encrypt_begin(len(plain), url="https://upload.example.org/f/photo.jpg")
        self.assertEqual(up["upload_size"], len(plain) + 16)
        uploaded, size = b"", up["chunk_size"]
        for off in range(0, len(plain), size):
            part = await a.file_encrypt_chunk(up["transfer"], off, base64.b64encode(plain[off:off + size]).decode())
            uploaded += base64.b64decode(part["data"])
        uploaded += base64.b64decode((await a.file_encrypt_finish(up["transfer"]))["tag"])
        parsed = await a.file_link_parse(up["link"])
        self.assertEqual(parsed["url"], "https://upload.example.org/f/photo.jpg")
        down = await a.file_decrypt_begin(len(uploaded), link=up["link"])
        chunks = [uploaded[o:o + down["chunk_size"]] for o in range(0, len(uploaded), down["chunk_size"])]
        off = 0
        for c in chunks:
            checked = await a.file_decrypt_check(down["transfer"], off, base64.b64encode(c).decode())
            off += len(c)
        self.assertTrue(checked["verified"], checked)
        opened, off = b"", 0
        for c in chunks:
            got = await a.file_decrypt_read(down["transfer"], off, base64.b64encode(c).decode())
            opened += base64.b64decode(got["data"])
            off += len(c)
        self.assertTrue(got["done"])
        self.assertEqual(opened, plain)
        other = await a.file_encrypt_begin(1)
        await a.file_cancel(other["transfer"])

    async def account_lifecycle(self, a: support.RecordingClient) -> None:
        carol = await a.account_create(CAROL)
        renewed = await a.account_renew_device_id(account=CAROL)
        self.assertEqual(renewed["fingerprint"], carol["fingerprint"])
        self.assertNotEqual(renewed["device_id"], carol["device_id"])
        self.assertEqual({x["type"] for x in renewed["actions"]}, {"publish_devicelist", "publish_bundle"})
        deleted = await a.account_delete(CAROL)
        self.assertEqual((deleted["jid"], deleted["device_id"]), (CAROL, renewed["device_id"]))
        self.assertGreater(deleted["rows"], 0)
        self.assertNotIn(CAROL, [x["jid"] for x in await a.account_list()])


if __name__ == "__main__":
    unittest.main()
