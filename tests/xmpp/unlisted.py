"""Scenario `unlisted_sender` of the XMPP test (issue 19): a stranger's device speaks under a
member's name. Mallory, who is not a member of the room, makes a message with a device of her own
(python-omemo), its OMEMO 2 envelope claiming bob; bob's client (or a hostile server) relays it
into the members-only room, and into a 1:1 chat with alice. omemod must refuse it in the room
(`unlisted_device`, also after the example client fetched bob's device list again) and flag it in
the 1:1 chat (`trust: "unlisted"`, never trusted), while bob's own device is still read as his.

Kept apart from driver.py's scenarios so that it merges with their rework; driver.py runs it.
"""

import asyncio
import time
import xml.etree.ElementTree as ET
from typing import Any, Optional

import oldmemo.etree
import twomemo.etree
from slixmpp import JID

import server
from refpeer import OMEMO2, RefPeer, build_envelope

FALLBACK = "This message is OMEMO encrypted."


async def foreign_element(mallory: RefPeer, to: str, claimed: str, ns: str, room: Optional[str],
                          body: str) -> ET.Element:
    """An `<encrypted>` element made by mallory's device for `to`'s devices; in OMEMO 2 its envelope
    claims to come from `claimed`."""
    await mallory.omemo.refresh_device_lists({JID(to)}, force_download=True)
    plaintext = build_envelope(body, claimed, room or to) if ns == OMEMO2 else body.encode("utf-8")
    sm = await mallory.omemo.get_session_manager()
    messages, errors = await sm.encrypt(frozenset([to]), {ns: plaintext}, backend_priority_order=[ns])
    if not messages:
        raise AssertionError(f"python-omemo made no message for {to}: {errors}")
    m = next(iter(messages))
    return twomemo.etree.serialize_message(m) if ns == OMEMO2 else oldmemo.etree.serialize_message(m)


def relay(client: RefPeer, to: str, mtype: str, element: ET.Element, ns: str) -> None:
    """Sends `element` from `client` as it is, as an OMEMO message of type `mtype`."""
    msg: Any = client.make_message(mto=to, mtype=mtype)
    msg.append(element)
    msg.append(ET.Element("{urn:xmpp:eme:0}encryption", {"namespace": ns}))
    msg["body"] = FALLBACK
    msg.enable("store")
    msg.send()


async def unlisted_sender(w: Any, ns: str) -> None:
    """A non-member's device relayed under a member's name: refused in the room, flagged in 1:1."""
    alice, bob, mallory = w.user("alice"), w.user("bob"), w.user("mallory")
    room = "unlisted@" + server.MUC
    peer = await w.peer(bob)
    await peer.create_room(room, "bob", [alice])
    a = await w.bot("alice", alice, "desk", w.daemon("alice"))
    await a.send("/ns " + ("omemo2" if ns == OMEMO2 else "oldmemo"))
    await a.send(f"/join {room} alice")
    await a.expect(lambda e: e["event"] == "joined")
    deadline = time.monotonic() + 30
    while peer.room_members(room) != [alice] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert peer.room_members(room) == [alice], peer.room_members(room)
    # Bob's own device is read as his, trusted.
    await peer.send_text("", "from bob's own device", ns, room=room)
    e = await a.expect_message(bob, "from bob's own device", ns, room=room)
    assert e["trust"] == "trusted", e
    # Mallory's device, relayed into the room under bob's name: refused, even after the example
    # client fetched bob's device list again as omemod asked.
    m = await w.peer(mallory)
    element = await foreign_element(m, alice, bob, ns, room, "mallory speaking as bob")
    relay(peer, room, "groupchat", element, ns)
    e = await a.expect(lambda e: e["event"] == "undecryptable" and e.get("room") == room)
    assert e["sender"] == bob and e["kind"] == "unlisted_device", e
    assert not any(x.get("body") == "mallory speaking as bob" for x in a.events), a.events
    # The refusal changed nothing: bob's own device is still read as his.
    await peer.send_text("", "bob again", ns, room=room)
    await a.expect_message(bob, "bob again", ns, room=room)
    # In a 1:1 chat the same kind of message is decrypted but flagged, never trusted.
    element = await foreign_element(m, alice, bob, ns, None, "mallory in private as bob")
    relay(peer, alice, "chat", element, ns)
    e = await a.expect_message(bob, "mallory in private as bob", ns)
    assert e["trust"] == "unlisted", e
