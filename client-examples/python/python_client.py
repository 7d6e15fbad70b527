#!/usr/bin/env python3
"""An omemod client in Python, on the omemod_client library (standard library only).

    python_client.py [--socket PATH] [--account JID] COMMAND [ARGS]

    status                          the daemon, its accounts, and ours
    publish-info                    what to publish to PEP, for both OMEMO namespaces
    encrypt --to JID [--to JID…] --body TEXT [--namespace NS] [--room ROOM]
                                    prints one <encrypted> element per line (XML)
    decrypt --from JID --xml FILE|- [--to JID] [--group-chat]
                                    prints the body; sender and trust go to stderr
    events [--count N]              subscribes and prints events as they come

The socket is --socket, else $OMEMOD_SOCKET, else $XDG_RUNTIME_DIR/omemod/omemod.sock, else
/run/user/<uid>/omemod/omemod.sock (or /tmp/omemod-<uid>/omemod.sock without /run/user/<uid>).
The account is --account, else $OMEMOD_ACCOUNT, else the daemon's only account. This client never
creates an account: `omemod init --jid you@example.org` does.

It runs from the repository as is (the library is the `omemod_client` package next to it) or
anywhere once the library is installed (`pip install ./client-examples/python`).

Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error or no daemon.
"""

import argparse
import asyncio
import itertools
import json
import os
import sys
from typing import Any, Dict, List, Optional

import omemod_client as om
from omemod_client import NAMESPACES, Client


async def status(c: Client) -> int:
    s = await c.status()
    print(f"omemod {s['version']} (pid {s['pid']}) on {s['socket']}")
    for a in await c.account_list():
        print(f"account {a['jid']} device {a['device_id']}")
    me = await c.fingerprint_get()
    print(f"using {me['jid']} device {me['device_id']} fingerprint {me['fingerprint']}")
    return 0


async def publish_info(c: Client) -> int:
    # Before publishing a device list, fetch the one already on the server and hand it to
    # devicelist.update (jid = our own JID): publishing ours blindly would drop our other devices.
    for ns in NAMESPACES:
        for what, get in (("devicelist", c.devicelist_get), ("bundle", c.bundle_get)):
            item = await get(ns)
            opts = ", ".join(f"{k}={v}" for k, v in item["publish_options"].items())
            print(f"{ns} {what}: node {item['node']} item {item['item_id']} options {opts}")
            print(f"  {item['xml']}")
    return 0


async def encrypt(c: Client, to: List[str], body: str, namespace: Optional[str], room: Optional[str]) -> int:
    # A group chat: `to` lists the members' real JIDs, the SCE envelope (sce_to) names the room.
    r = await c.encrypt(to, body, namespaces=[namespace] if namespace else None, sce_to=room)
    for dev in r["devices"]:
        note = f" ({dev['reason']})" if dev.get("reason") else ""
        print(f"{dev['jid']} device {dev['device_id']} [{dev['namespace']}]: {dev['status']}{note}",
              file=sys.stderr)
    show_actions(r["actions"])
    if not r["messages"]:
        print("nothing to send: no device of the contact could be encrypted for", file=sys.stderr)
        return 1
    # Each element goes into the <message type='chat' to=JID> (all of them into the same one),
    # next to a fallback <body>, an EME hint (urn:xmpp:eme:0) and <store xmlns='urn:xmpp:hints'/>:
    # see docs/clients.md.
    for m in r["messages"]:
        print(m["xml"])
    return 0


async def decrypt(c: Client, sender: str, xml: str, to: Optional[str], group_chat: bool) -> int:
    # `to` is where the stanza was addressed (us, or the room); the daemon compares it with the
    # OMEMO 2 envelope so that a message for someone else cannot be replayed to us.
    to = to or c.account or (await c.fingerprint_get())["jid"]
    try:
        r = await c.decrypt(sender, xml, to=to, group_chat=group_chat)
    except om.InvalidParams:
        # An omemod without the `to` param: decrypt without it and check the envelope here.
        r = await c.decrypt(sender, xml)
        env = r.get("envelope")
        if env and (env.get("to") != to or env.get("from") != sender):
            print(f"refused: the envelope says from {env.get('from')} to {env.get('to')}, "
                  f"the stanza from {sender} to {to}", file=sys.stderr)
            return 1
    s = r["sender"]
    extra = " key exchange" if r["key_exchange"] else ""
    if r.get("redelivered"):  # seen before (e.g. from the archive): do not notify again
        extra += f" redelivered (first at {r.get('first_decrypted_at')})"
    print(f"from {s['jid']} device {s['device_id']} [{r['namespace']}] trust {s['trust']}{extra}",
          file=sys.stderr)
    show_actions(r["actions"])
    if r["empty"]:
        print("(empty message: nothing to show)", file=sys.stderr)
    else:
        print(r.get("body") or "")
    return 0


async def events(c: Client, count: Optional[int]) -> int:
    sub = await c.subscribe()
    print(f"subscribed ({sub.id}); waiting for events", flush=True)
    for _ in itertools.count() if count is None else range(count):
        e = await sub.next()
        # in_answer: the call that caused it got it as an action and does it; just note it.
        print(describe(e) + (" (the caller does it)" if e.get("in_answer") else ""), flush=True)
    return 0


def describe(e: Dict[str, Any]) -> str:
    """One line per event. Older omemod versions name two events bundle_changed and
    heartbeat_due. Unknown types are shown, never fatal."""
    t = e.get("type")
    ns = e.get("namespace")
    peer = e.get("jid") or e.get("peer")
    if t in ("publish_bundle", "bundle_changed"):
        return f"{t}: publish our {ns} bundle (bundle.get)"
    if t == "publish_devicelist":
        return f"{t}: publish our {ns} device list (devicelist.get)"
    if t in ("send_heartbeat", "heartbeat_due"):
        return f"{t}: send an empty message to {peer} device {e.get('device_id')} (heartbeat)"
    if t == "fetch_bundle":
        return f"{t}: fetch {peer}'s bundle from {e.get('node')} item {e.get('item_id')}, then bundle.update"
    if t == "fetch_devicelist":
        return f"{t}: fetch {peer}'s device list from {e.get('node')}, then devicelist.update"
    if t == "devicelist_changed":
        return f"{t}: {peer}'s {ns} devices are now {e.get('device_ids')}"
    if t in ("trust_decision_needed", "identity_changed"):
        return f"{t}: {peer} device {e.get('device_id')} has key {e.get('fingerprint')}: decide with trust.set"
    if t == "events_lost":
        return f"{t}: {e.get('missed')} events were lost: re-read the state you need"
    return f"{t}: {json.dumps(e)}"


def show_actions(actions: List[Dict[str, Any]]) -> None:
    for a in actions:
        print(f"then: {describe(a)}", file=sys.stderr)


async def explain(c: Client, err: om.RpcError, account: Optional[str]) -> str:
    """A friendly message for the errors a user can act on, chosen by the error's class."""
    if isinstance(err, om.AccountRequired):
        try:
            jids = [a["jid"] for a in await c.account_list()]
        except om.OmemodError:
            jids = []
        if not jids:
            return "omemod has no account yet: create one with `omemod init --jid you@example.org`"
        return (f"omemod has several accounts ({', '.join(jids)}): choose one with "
                f"--account JID or OMEMOD_ACCOUNT=JID")
    if isinstance(err, om.UnknownAccount):
        return f"omemod has no account {account}: see `omemod call account.list`"
    if isinstance(err, om.DuplicateMessage):
        return "this message was already decrypted (a replay or a second delivery)"
    if isinstance(err, om.NotForThisDevice):
        return f"this message is not encrypted for our device (it is for {err.data.get('recipients')})"
    if isinstance(err, (om.NoSession, om.BrokenSession)):
        return "no usable session with the sender: ask them to resend, or call session.replace"
    if isinstance(err, om.Distrusted):
        return "the sender's key is distrusted: the message was refused"
    return str(err)


async def run(args: argparse.Namespace) -> int:
    # A command-line tool does not wait for a daemon that is restarting: one try, then exit 2.
    c = Client(args.socket, account=args.account, reconnect_window=0)
    try:
        await c.connect()
    except (om.DaemonUnavailable, om.SocketNotTrusted) as e:
        print(f"cannot use omemod's socket {c.socket_path}: {e} (is `omemod serve` running?)",
              file=sys.stderr)
        return 2
    try:
        if args.cmd == "status":
            return await status(c)
        if args.cmd == "publish-info":
            return await publish_info(c)
        if args.cmd == "encrypt":
            return await encrypt(c, args.to, args.body, args.namespace, args.room)
        if args.cmd == "decrypt":
            xml = sys.stdin.read() if args.xml == "-" else open(args.xml, encoding="utf-8").read()
            return await decrypt(c, args.sender, xml.strip(), args.to, args.group_chat)
        return await events(c, args.count)
    except om.RpcError as e:
        print(f"error: {await explain(c, e, args.account)}", file=sys.stderr)
        return 1
    except (om.OmemodError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        await c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--socket", default=None)
    ap.add_argument("--account", default=os.environ.get("OMEMOD_ACCOUNT") or None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    sub.add_parser("publish-info")
    e = sub.add_parser("encrypt")
    e.add_argument("--to", required=True, action="append", help="a recipient's bare JID")
    e.add_argument("--body", required=True)
    e.add_argument("--namespace", choices=NAMESPACES)
    e.add_argument("--room", help="a group chat: the room's bare JID (members in --to)")
    de = sub.add_parser("decrypt")
    de.add_argument("--from", dest="sender", required=True)
    de.add_argument("--xml", required=True, help="file with the <encrypted> element, or - for stdin")
    de.add_argument("--to", help="where the stanza was addressed (default: our JID; a room's JID)")
    de.add_argument("--group-chat", action="store_true")
    ev = sub.add_parser("events")
    ev.add_argument("--count", type=int, help="stop after N events")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
