#!/usr/bin/env python3
"""An omemod client in Python, standard library only.

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

Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error or no daemon.
"""
import argparse
import itertools
import json
import os
import socket
import stat
import struct
import sys

NAMESPACES = ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl")


class RpcError(Exception):
    """An error answer. Programs switch on `kind` (stable); `message` is for people."""

    def __init__(self, method, error):
        self.method = method
        self.code = error.get("code")
        self.data = error.get("data") or {}
        self.kind = self.data.get("kind", "unknown")
        super().__init__(f"{method}: {error.get('message')} ({self.kind})")


class Omemod:
    """One connection. Answers are matched by id; events that arrive meanwhile are queued."""

    def __init__(self, path):
        check_owner(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        # The daemon checks our uid; we check that the socket is served by our uid too.
        cred = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", cred)
        if uid != os.getuid():
            raise PermissionError(f"{path} is served by uid {uid}, not by us")
        self.file = self.sock.makefile("rwb")
        self.ids = itertools.count(1)
        self.events = []

    def call(self, method, **params):
        rid = next(self.ids)
        request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        while True:
            msg = self.read()
            if msg.get("method") == "event":
                self.events.append(msg["params"]["event"])
            elif msg.get("id") == rid:
                if "error" in msg:
                    raise RpcError(method, msg["error"])
                return msg["result"]

    def read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("omemod closed the connection")
        return json.loads(line)

    def next_event(self):
        """The next pushed event (queued ones first)."""
        while not self.events:
            msg = self.read()
            if msg.get("method") == "event":
                self.events.append(msg["params"]["event"])
        return self.events.pop(0)


def default_socket():
    if os.environ.get("OMEMOD_SOCKET"):
        return os.environ["OMEMOD_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime and os.path.isdir(f"/run/user/{os.getuid()}"):
        runtime = f"/run/user/{os.getuid()}"
    if runtime:
        return os.path.join(runtime, "omemod", "omemod.sock")
    return f"/tmp/omemod-{os.getuid()}/omemod.sock"


def check_owner(path):
    """Refuse a socket another local user could have put there: they would read every plaintext
    we send. The socket and its directory must be ours and not symlinks, and the directory must
    not be writable by others (so nobody can swap the socket after this check)."""
    directory = os.path.dirname(os.path.abspath(path))
    for p in (directory, path):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            raise PermissionError(f"{p} is a symbolic link")
        if st.st_uid != os.getuid():
            raise PermissionError(f"{p} belongs to uid {st.st_uid}, not to us ({os.getuid()})")
    if os.lstat(directory).st_mode & 0o022:
        raise PermissionError(f"{directory} is writable by other users")
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise PermissionError(f"{path} is not a socket")


class Client:
    """The commands, on one connection and one explicitly chosen account."""

    def __init__(self, d, account):
        self.d = d
        self.account = account  # None: the daemon's only account

    def params(self, **p):
        if self.account:
            p["account"] = self.account
        return p

    def my_jid(self):
        return self.account or self.d.call("fingerprint.get")["jid"]

    def status(self):
        s = self.d.call("status")
        print(f"omemod {s['version']} (pid {s['pid']}) on {s['socket']}")
        for a in self.d.call("account.list"):
            print(f"account {a['jid']} device {a['device_id']}")
        me = self.d.call("fingerprint.get", **self.params())
        print(f"using {me['jid']} device {me['device_id']} fingerprint {me['fingerprint']}")

    def publish_info(self):
        # Before publishing a device list, fetch the one already on the server and hand it to
        # devicelist.update (jid = our own JID): publishing ours blindly would drop our other devices.
        for ns in NAMESPACES:
            for what in ("devicelist", "bundle"):
                item = self.d.call(f"{what}.get", namespace=ns, **self.params())
                opts = ", ".join(f"{k}={v}" for k, v in item["publish_options"].items())
                print(f"{ns} {what}: node {item['node']} item {item['item_id']} options {opts}")
                print(f"  {item['xml']}")

    def encrypt(self, to, body, namespace, room):
        p = self.params(to=to, body=body)
        if namespace:
            p["namespaces"] = [namespace]
        if room:
            # A group chat: `to` lists the members' real JIDs, the SCE envelope names the room.
            p["sce_to"] = room
        r = self.d.call("encrypt", **p)
        for dev in r["devices"]:
            note = f" ({dev['reason']})" if dev.get("reason") else ""
            print(f"{dev['jid']} device {dev['device_id']} [{dev['namespace']}]: {dev['status']}{note}",
                  file=sys.stderr)
        show_actions(r["actions"])
        if not r["messages"]:
            print("nothing to send: no device of the contact could be encrypted for", file=sys.stderr)
            return 1
        # Each element goes into a <message type='chat' to=JID>, next to a fallback <body>, an EME
        # hint (urn:xmpp:eme:0) and <store xmlns='urn:xmpp:hints'/>: see docs/clients.md.
        for m in r["messages"]:
            print(m["xml"])
        return 0

    def decrypt(self, sender, xml, to, group_chat):
        # `to` is where the stanza was addressed (us, or the room); the daemon compares it with the
        # OMEMO 2 envelope so that a message for someone else cannot be replayed to us.
        to = to or self.my_jid()
        p = self.params(**{"from": sender, "xml": xml, "to": to, "group_chat": group_chat})
        try:
            r = self.d.call("decrypt", **p)
        except RpcError as e:
            if e.kind != "invalid_params":
                raise
            # An omemod without the `to` param: decrypt without it and check the envelope here.
            del p["to"], p["group_chat"]
            r = self.d.call("decrypt", **p)
            env = r.get("envelope")
            if env and (env.get("to") != to or env.get("from") != sender):
                print(f"refused: the envelope says from {env.get('from')} to {env.get('to')}, "
                      f"the stanza from {sender} to {to}", file=sys.stderr)
                return 1
        s = r["sender"]
        extra = " key exchange" if r["key_exchange"] else ""
        if r.get("redelivered"):  # seen before (e.g. from the archive): do not notify again
            extra += f" redelivered (first at {r.get('first_decrypted_at')})"
        print(f"from {s['jid']} device {s['device_id']} [{r['namespace']}] "
              f"trust {s['trust']}{extra}", file=sys.stderr)
        show_actions(r["actions"])
        if r["empty"]:
            print("(empty message: nothing to show)", file=sys.stderr)
        else:
            print(r.get("body", ""))
        return 0

    def events(self, count):
        sub = self.d.call("subscribe")
        print(f"subscribed ({sub['subscription']}); waiting for events", flush=True)
        for _ in itertools.count() if count is None else range(count):
            e = self.d.next_event()
            # in_answer: the call that caused it got it as an action and does it; just note it.
            print(describe(e) + (" (the caller does it)" if e.get("in_answer") else ""), flush=True)


def describe(e):
    """One line per event. New omemod versions name events after the actions; older ones use
    bundle_changed / heartbeat_due. Unknown types are shown, never fatal."""
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


def show_actions(actions):
    for a in actions:
        print(f"then: {describe(a)}", file=sys.stderr)


def explain(d, err, account):
    """A friendly message for the errors a user can act on, chosen by data.kind."""
    if err.kind == "account_required":
        try:
            jids = [a["jid"] for a in d.call("account.list")]
        except (RpcError, OSError):
            jids = []
        if not jids:
            return "omemod has no account yet: create one with `omemod init --jid you@example.org`"
        return (f"omemod has several accounts ({', '.join(jids)}): choose one with "
                f"--account JID or OMEMOD_ACCOUNT=JID")
    if err.kind == "unknown_account":
        return f"omemod has no account {account}: see `omemod call account.list`"
    if err.kind == "duplicate_message":
        return "this message was already decrypted (a replay or a second delivery)"
    if err.kind == "not_for_this_device":
        return f"this message is not encrypted for our device (it is for {err.data.get('recipients')})"
    if err.kind in ("no_session", "broken_session"):
        return "no usable session with the sender: ask them to resend, or call session.replace"
    if err.kind == "distrusted":
        return "the sender's key is distrusted: the message was refused"
    return str(err)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = ap.parse_args()

    path = args.socket or default_socket()
    try:
        d = Omemod(path)
    except OSError as e:
        print(f"cannot use omemod's socket {path}: {e} (is `omemod serve` running?)", file=sys.stderr)
        return 2
    c = Client(d, args.account)
    try:
        if args.cmd == "status":
            c.status()
        elif args.cmd == "publish-info":
            c.publish_info()
        elif args.cmd == "encrypt":
            return c.encrypt(args.to, args.body, args.namespace, args.room)
        elif args.cmd == "decrypt":
            xml = sys.stdin.read() if args.xml == "-" else open(args.xml, encoding="utf-8").read()
            return c.decrypt(args.sender, xml.strip(), args.to, args.group_chat)
        elif args.cmd == "events":
            c.events(args.count)
    except RpcError as e:
        print(f"error: {explain(d, e, args.account)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
