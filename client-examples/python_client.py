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
import stat
import struct
import sys


def check_socket(path):
    """Refuses a socket another local user could have planted: the socket and its directory must
    be ours, not symlinks, and the directory must not be writable by others. A directory that is
    ours and closed to others cannot have its socket swapped after this check."""
    directory = os.path.dirname(os.path.abspath(path))
    for p in (directory, path):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            raise SystemExit(f"{p} is a symbolic link; refusing to use it")
        if st.st_uid != os.getuid():
            raise SystemExit(f"{p} is owned by uid {st.st_uid}, not by us; refusing to use it")
    if os.lstat(directory).st_mode & 0o022:
        raise SystemExit(f"{directory} is writable by other users; refusing to use it")
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise SystemExit(f"{path} is not a socket")


class Omemod:
    def __init__(self, path):
        check_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        # The daemon must run as us too (SO_PEERCRED: pid, uid, gid).
        _, uid, _ = struct.unpack("3i", self.sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            raise SystemExit(f"the process on {path} runs as uid {uid}, not as us; refusing")
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
