#!/usr/bin/env python3
"""omemo-chat: a small XMPP chat client (slixmpp) whose OMEMO encryption is done by omemod.

The OMEMO part is the slixmpp plugin `omemod` (client-examples/python, `omemod_client.slixmpp_plugin`):
it publishes our device lists and bundles, follows contacts' device lists, encrypts, decrypts
(live messages, carbons, the archive) and does what omemod asks. This file is the chat around it:
commands, output, the archive position, rooms.

Run it against your own server:

    omemod serve &                                  # once, or the systemd user unit
    omemod init --jid you@example.org               # once: create the OMEMO device
    OMEMO_CHAT_PASSWORD=... python3 omemo_chat.py --jid you@example.org

Then type `/to friend@example.org` and chat; `/help` lists the commands.
"""

import argparse
import asyncio
import getpass
import json
import logging
import os
import stat
import sys
import threading
import urllib.parse
from typing import Any, Dict, Optional, Set

HERE = os.path.dirname(os.path.abspath(__file__))
# Run from the repository: the library next door, ahead of any installed copy.
if os.path.isdir(os.path.join(HERE, "..", "python", "omemod_client")):
    sys.path.insert(0, os.path.join(HERE, "..", "python"))

import slixmpp  # noqa: E402
from slixmpp import JID  # noqa: E402
from slixmpp.exceptions import IqError, IqTimeout  # noqa: E402

import omemod_client.slixmpp_plugin  # noqa: E402,F401  (registers the plugin "omemod")
from omemod_client import OLDMEMO, OMEMO2, OmemodError, default_socket_path  # noqa: E402
from omemod_client.slixmpp_plugin import (ArchivedMessage, Decryption, DecryptionFailure,  # noqa: E402
                                          NoRecipientDevice)
from omemod_client.files import file_link  # noqa: E402
from omemod_client.slixmpp_plugin import UploadUnavailable  # noqa: E402

SHORT = {"omemo2": [OMEMO2], "oldmemo": [OLDMEMO], "auto": None}
STANZA_ID = "urn:xmpp:sid:0"

log = logging.getLogger("omemo-chat")


class Chat(slixmpp.ClientXMPP):
    def __init__(self, args: argparse.Namespace, password: str):
        super().__init__(args.jid, password)
        self.args = args
        self.me = JID(args.jid).bare
        self.out = Output(args.json)
        self.target: Optional[str] = None
        self.rooms: Dict[str, str] = {}  # room bare JID -> our nick
        self.room_archive_ids: Dict[str, str] = {}  # room bare JID -> last of its archive ids seen
        self.seen: Set[str] = set()  # archive ids already handled
        self.state_file = args.state
        self.last_archive_id: Optional[str] = self._load_state()
        self.ready = False
        self.quitting = False
        self.failed = asyncio.Event()
        for plugin in ("xep_0030", "xep_0004", "xep_0045", "xep_0199"):
            self.register_plugin(plugin)
        self.register_plugin("omemod", {"socket": args.socket, "account": args.account or self.me,
                                        "create_account": args.create_account,
                                        "namespaces": SHORT[args.namespace]})
        self.add_event_handler("omemo_initialized", self.on_omemo_ready)
        self.add_event_handler("omemo_failed", self.on_omemo_failed)
        self.add_event_handler("omemo_message", self.on_decrypted)
        self.add_event_handler("omemo_empty_message", self.on_decrypted)
        self.add_event_handler("omemo_decryption_failed", self.on_failure)
        self.add_event_handler("omemo_message", self.on_file_link)
        self.add_event_handler("omemo_identity_changed", lambda e: self.out.emit(
            "identity_changed", f"! {e['peer']} device {e['device_id']} shows a new key {e['new_fingerprint']} "
            f"(was {e['old_fingerprint']})", **e))
        self.add_event_handler("omemo_trust_decision_needed", lambda e: self.out.emit(
            "trust_decision_needed", f"! {e['peer']} device {e['device_id']} key {e['fingerprint']}: trust it?", **e))
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_plain)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("failed_auth", lambda _: (self.out.error("login failed"), self.give_up()))
        self.auto_authorize = True
        self.auto_subscribe = True

    @property
    def omemo(self) -> Any:
        return self.plugin["omemod"]

    # ---- start-up ---------------------------------------------------------------------------

    async def on_session_start(self, _event: Any) -> None:
        # The plugin does OMEMO's start-up by itself (and fires omemo_initialized).
        self.send_presence()
        await self.get_roster()

    async def on_omemo_ready(self, _event: Any) -> None:
        try:
            await self.read_archive()
            for room in list(self.rooms):
                await self.join(room, self.rooms[room])
        except (OmemodError, IqError, IqTimeout) as e:
            self.out.error(f"start-up: {e}")
        self.ready = True
        self.out.emit("ready", f"online as {self.boundjid.full}, device {self.omemo.device_id}, "
                      f"fingerprint {self.omemo.fingerprint}", jid=self.boundjid.full, device_id=self.omemo.device_id)

    def on_omemo_failed(self, error: Exception) -> None:
        self.out.error(f"start-up failed: {error}")
        self.give_up()

    def give_up(self, *_args: Any) -> None:
        self.quitting = True
        self.failed.set()
        self.disconnect()

    def on_disconnected(self, _event: Any) -> None:
        self.ready = False
        if not self.quitting:
            # Connect again; the plugin then republishes, and we rejoin rooms and read the archive.
            self.out.error("disconnected from the server, reconnecting in 5 s")
            asyncio.get_running_loop().call_later(5, self.connect_again)

    def connect_again(self) -> None:
        if not self.quitting:
            self.connect(self.args.host, self.args.port) if self.args.host else self.connect()

    # ---- receiving --------------------------------------------------------------------------

    def archive_id(self, msg: Any) -> Optional[str]:
        by = msg["from"].bare if msg["type"] == "groupchat" else self.me
        for sid in msg.xml.findall(f"{{{STANZA_ID}}}stanza-id"):
            if sid.get("by") == by:
                return sid.get("id")
        return None

    def first_time(self, msg: Any, archive_id: Optional[str]) -> bool:
        """False for a message already shown (live and again from the archive)."""
        if archive_id is None:
            return True
        if archive_id in self.seen:
            return False
        self.seen.add(archive_id)
        self._remember(archive_id, msg["from"].bare if msg["type"] == "groupchat" else None)
        return True

    def on_decrypted(self, d: Decryption) -> None:
        if d.archived or self.first_time(d.stanza, self.archive_id(d.stanza)):
            self.show(d)

    def show(self, d: Decryption) -> None:
        if d.own:
            # What this device sent, read back: a room's live reflection is not shown again; a
            # sent carbon or an archived copy (a room's too: another process of ours sent it, or
            # we did before a restart) is shown as sent.
            if (d.room is None or d.archived) and not d.empty:
                to = d.room or d.stanza["to"].bare
                self.out.emit("own", f"(sent) -> {to}: {d.body}", to=to, body=d.body, namespace=d.namespace,
                              archived=d.archived, carbon=d.carbon, room=d.room)
            return
        if d.empty:
            self.out.emit("empty", f"{d.sender}: (empty OMEMO message)", sender=d.sender, room=d.room,
                          namespace=d.namespace, device_id=d.device_id, archived=d.archived)
            return
        where = f"{d.room} " if d.room else ""
        self.out.emit("message", f"{where}{d.sender} [{d.trust}]: {d.body}", sender=d.sender, body=d.body,
                      room=d.room, namespace=d.namespace, device_id=d.device_id, trust=d.trust,
                      archived=d.archived, redelivered=d.redelivered, carbon=d.carbon)

    def on_file_link(self, d: Decryption) -> None:
        # Shown as text too; this says it is a file, to open with /open (never in a browser:
        # the link's fragment is the key).
        link = file_link(d.body)
        if link is not None and not d.own:
            self.out.emit("file_link", f"{d.sender} sent a file: /open {link}", sender=d.sender, link=link,
                          room=d.room, namespace=d.namespace)

    def on_failure(self, f: DecryptionFailure) -> None:
        if not self.first_time(f.stanza, self.archive_id(f.stanza)):
            return
        self.show_failure(f.sender or "?", f.kind, f.stanza, f.room, f.archived)

    def show_failure(self, sender: str, kind: str, stanza: Any, room: Optional[str], archived: bool) -> None:
        if sender == self.me and kind in ("not_for_this_device", "unknown_own_message"):
            # Sent by this very device (from another process on the same omemod, seen again as
            # a carbon or in the archive) and not kept (or an omemod that keeps none): never
            # encrypted for us.
            log.info("our own message %s, not readable here", stanza["id"])
        elif kind == "duplicate_message":
            # Decrypted before: by us (archive and live copy) or by another process sharing
            # this device (an omemod without redelivery support cannot give the text again).
            self.out.emit("duplicate", f"{sender}: message {stanza['id']} was decrypted before", sender=sender,
                          room=room, archived=archived, id=stanza["id"])
        else:
            self.out.emit("undecryptable", f"{sender}: cannot decrypt ({kind})", sender=sender, kind=kind,
                          room=room, archived=archived)

    def on_plain(self, msg: Any) -> None:
        if msg["type"] in ("chat", "normal", "groupchat") and msg["body"] and not self.omemo.is_encrypted(msg):
            if msg["type"] == "groupchat" and msg["from"].resource == self.rooms.get(msg["from"].bare):
                return
            if self.first_time(msg, self.archive_id(msg)):
                self.out.emit("plain", f"{msg['from']} (NOT ENCRYPTED): {msg['body']}", sender=msg["from"].bare,
                              body=msg["body"], archived=False)

    # ---- archive (XEP-0313) -----------------------------------------------------------------

    async def read_archive(self, room: Optional[str] = None) -> None:
        """Reads the messages archived (in our account's archive, or `room`'s) since the last one
        we saw (nothing on a first run)."""
        after = self.room_archive_ids.get(room) if room else self.last_archive_id
        if after is None:
            return
        count = 0
        try:
            async for item in self.omemo.archive(after=after, room=room):
                self.show_archived(item, room)
                count += 1
        except (IqError, IqTimeout) as e:
            self.out.error(f"archive query failed: {e}")
        self.out.emit("archive", f"read {count} archived messages" + (f" of {room}" if room else ""),
                      count=count, room=room)

    def show_archived(self, item: ArchivedMessage, room: Optional[str] = None) -> None:
        if item.archive_id in self.seen:
            return
        self.seen.add(item.archive_id)
        if item.decryption is not None:
            self.show(item.decryption)
        elif item.error is not None:
            kind = getattr(item.error, "kind", type(item.error).__name__)
            self.show_failure(item.stanza["from"].bare, kind, item.stanza, room, True)
        self._remember(item.archive_id, room)

    def _load_state(self) -> Optional[str]:
        """The account's archive position; the rooms (rejoined at start-up) and theirs."""
        if not self.state_file:
            return None
        try:
            with open(self.state_file, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        for room, r in state.get("rooms", {}).items():
            if not isinstance(r, dict) or not r.get("nick"):
                continue
            self.rooms[room] = r["nick"]
            if r.get("last_archive_id"):
                self.room_archive_ids[room] = r["last_archive_id"]
        return state.get("last_archive_id")

    def _remember(self, archive_id: Optional[str], room: Optional[str] = None) -> None:
        if archive_id is not None:
            if room is None:
                self.last_archive_id = archive_id
            else:
                self.room_archive_ids[room] = archive_id
        if self.state_file:
            rooms = {r: {"nick": nick, "last_archive_id": self.room_archive_ids.get(r)}
                     for r, nick in self.rooms.items()}
            tmp = self.state_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"last_archive_id": self.last_archive_id, "rooms": rooms}, f)
            os.replace(tmp, self.state_file)

    # ---- group chat (XEP-0045, members-only and non-anonymous) ------------------------------

    async def join(self, room: str, nick: str) -> None:
        await self.plugin["xep_0045"].join_muc_wait(JID(room), nick, maxstanzas=0, timeout=20)
        self.rooms[room] = nick
        self._remember(None)
        members = await self.omemo.learn_room(room)
        self.out.emit("joined", f"joined {room} as {nick}", room=room, members=members)
        # What was said while we were away (a room joined before: from where we left it).
        await self.read_archive(room)

    # ---- sending ----------------------------------------------------------------------------

    async def send_text(self, body: Optional[str]) -> None:
        if self.target is None:
            self.out.error("no recipient: use /to JID or /join ROOM")
            return
        mtype = "groupchat" if self.target in self.rooms else "chat"
        try:
            sent = await self.omemo.send_message(self.target, body, mtype)
        except NoRecipientDevice as e:
            self.out.error(f"could not encrypt for {self.target}: {e}")
            return
        if sent.missed:
            self.out.emit("warning", "! not encrypted for " + ", ".join(
                f"{d['jid']}/{d['device_id']} ({d['status']})" for d in sent.missed), devices=sent.missed)
        self.out.emit("sent", f"-> {self.target}: {body if body is not None else '(empty OMEMO message)'}",
                      to=self.target, body=body, namespaces=sent.namespaces, devices=len(sent.reached))

    async def send_file(self, path: str) -> None:
        if self.target is None:
            self.out.error("no recipient: use /to JID or /join ROOM")
            return
        mtype = "groupchat" if self.target in self.rooms else "chat"
        try:
            link, sent = await self.omemo.send_file(self.target, path, mtype)
        except (NoRecipientDevice, UploadUnavailable, OSError) as e:
            self.out.error(f"could not send {path}: {e}")
            return
        self.out.emit("file_sent", f"-> {self.target}: {path} ({os.path.getsize(path)} bytes)", to=self.target,
                      path=path, link=link, size=os.path.getsize(path), namespaces=sent.namespaces)

    async def open_file(self, arg: str) -> None:
        link, _, dest = arg.partition(" ")
        # Default: the link's file name, in the current directory (never a path it names).
        name = os.path.basename(urllib.parse.unquote(link.partition("#")[0]))
        dest = dest.strip() or (name if name not in ("", ".", "..") else "download")
        try:
            size = await self.omemo.open_file(link, dest)
        except (OmemodError, OSError, ValueError) as e:
            self.out.emit("file_failed", f"! could not open {dest}: {e}", path=dest,
                          kind=getattr(e, "kind", type(e).__name__), message=str(e))
            return
        self.out.emit("file_opened", f"saved {dest} ({size} bytes)", path=dest, size=size)

    # ---- the line-based user interface ------------------------------------------------------

    async def command(self, line: str) -> bool:
        """Runs one input line; returns False on /quit."""
        if not line.startswith("/"):
            await self.send_text(line)
            return True
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd == "/quit":
            return False
        if cmd == "/to" and arg:
            self.target = JID(arg).bare
            self.send_presence_subscription(pto=self.target)
            await self.omemo.refresh_device_lists([self.target], force_download=True)
            self.out.emit("target", f"now talking to {self.target}", to=self.target)
        elif cmd == "/join" and arg:
            room, _, nick = arg.partition(" ")
            await self.join(JID(room).bare, nick or self.boundjid.user + "-" + self.boundjid.resource)
            self.target = JID(room).bare
        elif cmd == "/ns" and arg in SHORT:
            self.omemo.namespaces = SHORT[arg]
            self.out.emit("namespace", f"encrypting with {arg}", namespace=arg)
        elif cmd == "/empty":
            await self.send_text(None)
        elif cmd == "/say":
            await self.send_text(arg)  # also sends an empty text: "/say"
        elif cmd == "/archive":
            await self.read_archive()
        elif cmd == "/file" and arg:
            await self.send_file(arg)
        elif cmd == "/open" and arg:
            await self.open_file(arg)
        else:
            self.out.info(HELP)
        return True


HELP = """commands:
  /to JID          talk to JID (asks for presence subscription, fetches its device lists)
  /join ROOM [NICK] join a members-only, non-anonymous room and talk there
  /ns auto|omemo2|oldmemo  which OMEMO version to encrypt with (auto: OMEMO 2, else 0.3)
  /say TEXT        send TEXT (may be empty); any line not starting with / is sent too
  /empty           send an empty OMEMO message (no text; moves the ratchet forward)
  /archive         read the archive (XEP-0313) since the last message seen
  /file PATH       upload PATH encrypted (XEP-0454, XEP-0363) and send its link
  /open LINK [DEST] download a received file link, decrypt it, save it as DEST
  /quit            leave"""


class Output:
    """Human-readable lines, or one JSON object per line with --json (for scripts and tests)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def emit(self, event: str, text: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps(dict(fields, event=event)), flush=True)
        else:
            print(text, flush=True)

    def error(self, text: str) -> None:
        self.emit("error", "! " + text, message=text)

    def info(self, text: str) -> None:
        self.emit("info", text, message=text)


async def read_lines(chat: Chat) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if sys.stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    else:
        # A regular file or /dev/null cannot be polled: read it in a (daemon) thread.
        def pump() -> None:
            for raw in sys.stdin.buffer:
                loop.call_soon_threadsafe(reader.feed_data, raw)
            loop.call_soon_threadsafe(reader.feed_eof)
        threading.Thread(target=pump, daemon=True).start()
    failed = asyncio.ensure_future(chat.failed.wait())
    while True:
        read = asyncio.ensure_future(reader.readline())
        await asyncio.wait({read, failed}, return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            read.cancel()
            return 1
        raw = read.result()
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line and not chat.args.json:
            continue
        if not chat.ready:
            for _ in range(600):  # wait at most 60 s for start-up
                if chat.ready:
                    break
                await asyncio.sleep(0.1)
        try:
            if not await chat.command(line):
                break
        except (OmemodError, IqError, IqTimeout, ConnectionError) as e:
            chat.out.error(f"{line.split(' ')[0]}: {e}")
    chat.quitting = True
    chat.disconnect()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="omemo_chat.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A line-based XMPP chat client with OMEMO (both versions) done by omemod.",
        epilog="""Running it against your own server:
  1. start omemod (`omemod serve`, or the systemd user unit) and create your OMEMO device once
     with `omemod init --jid you@example.org` (or pass --create-account);
  2. export OMEMO_CHAT_PASSWORD=... (or type the password at the prompt);
  3. python3 omemo_chat.py --jid you@example.org
The server is found through DNS SRV records of your domain, or give --host/--port. Your server
needs PEP (XEP-0163) for the OMEMO device lists and bundles, and MAM (XEP-0313) to read messages
that arrived while you were offline. Run two processes with different --resource values on one
omemod: they share the OMEMO device.

""" + HELP)
    parser.add_argument("--jid", required=True, help="your JID (bare, or with a resource)")
    parser.add_argument("--resource", help="resource to bind (default: the one in --jid, else random)")
    parser.add_argument("--socket", default=default_socket_path(), help="omemod's socket (default: %(default)s)")
    parser.add_argument("--account", help="the omemod account (default: the bare JID)")
    parser.add_argument("--create-account", action="store_true", help="create the omemod account if missing")
    parser.add_argument("--password-env", default="OMEMO_CHAT_PASSWORD",
                        help="environment variable holding the password (default: %(default)s); else prompt")
    parser.add_argument("--host", help="server host (skips the DNS SRV lookup)")
    parser.add_argument("--port", type=int, default=5222)
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="no TLS at all (only for a test server on 127.0.0.1)")
    parser.add_argument("--namespace", choices=sorted(SHORT), default="auto", help="OMEMO version to encrypt with")
    parser.add_argument("--state", help="file that remembers the rooms joined and the last archived message seen, "
                        "of the account and of each room (for MAM)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event (for scripts)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args()
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    jid = JID(args.jid)
    if args.resource:
        jid.resource = args.resource
        args.jid = str(jid)
    if args.state is None:
        state_dir = os.path.join(os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "omemo-chat")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        args.state = os.path.join(state_dir, f"{jid.bare}-{jid.resource or 'default'}.json")
    password = os.environ.get(args.password_env) or getpass.getpass(f"password for {jid.bare}: ")
    chat = Chat(args, password)
    if args.insecure_plaintext:
        chat.enable_plaintext = True
        chat.enable_starttls = False
        chat.enable_direct_tls = False
        chat.plugin["feature_mechanisms"].unencrypted_scram = True
    chat.connect_again()
    loop = asyncio.get_event_loop()
    code = loop.run_until_complete(read_lines(chat))
    loop.run_until_complete(asyncio.sleep(0.2))
    return code


if __name__ == "__main__":
    sys.exit(main())
