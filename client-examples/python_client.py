#!/usr/bin/env python3
"""A minimal omemod client in Python (standard library only).

Usage: python_client.py [SOCKET]
Creates an account if there is none, prints our fingerprint and our OMEMO 2 bundle item, and
listens for events for a few seconds.
"""
import itertools
import json
import os
import socket
import sys


class Omemod:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.ids = itertools.count(1)
        self.events = []

    def call(self, method, **params):
        rid = next(self.ids)
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if msg.get("method") == "event":  # a pushed event, not our answer
                self.events.append(msg["params"]["event"])
                continue
            if msg.get("id") != rid:
                continue
            if "error" in msg:
                err = msg["error"]
                raise RuntimeError(f"{method}: {err['data']['kind']}: {err['message']}")
            return msg["result"]


def default_socket():
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    return os.path.join(runtime, "omemod", "omemod.sock")


def main():
    d = Omemod(sys.argv[1] if len(sys.argv) > 1 else default_socket())
    d.call("subscribe")
    if not d.call("account.list"):
        d.call("account.create", jid="me@example.org")
    me = d.call("fingerprint.get")
    print(f"{me['jid']} device {me['device_id']}: {me['fingerprint']}")
    b = d.call("bundle.get", namespace="urn:xmpp:omemo:2")
    print(f"publish to node {b['node']} item {b['item_id']} with {b['publish_options']}")
    print(b["xml"][:120] + "…")
    print("events so far:", d.events)


if __name__ == "__main__":
    main()
