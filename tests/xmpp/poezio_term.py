"""poezio, the console XMPP client, run in a tmux terminal for the XMPP end-to-end test: typed
into with `send-keys`, read with `capture-pane`.

poezio runs from its own venv (`scripts/setup-python-poezio`, `$OMEMOD_POEZIO_PYTHON`), into
which the test installs the omemod-client package with pip: the way poezio plugins are installed,
found by poezio through the package's `poezio_plugins` entry point (`plugins_autoload = omemod`).
poezio refuses to run as root, so as root both poezio and its omemod run in a user namespace
(`unshare --user`) that maps uid 1000 to root: the two see the same uid, so the socket checks on
both sides hold, and the files stay writable.
"""

import asyncio
import os
import shutil
import subprocess
import time
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WAIT = 30.0


def as_user() -> List[str]:
    """The command prefix that runs a program as a non-root user (nothing when we are not root)."""
    if os.geteuid() != 0:
        return []
    return ["unshare", "--user", "--map-user=1000", "--map-group=1000"]


def poezio_python() -> str:
    python = os.environ.get("OMEMOD_POEZIO_PYTHON")
    if not python:
        out = subprocess.run([os.path.join(REPO, "scripts", "setup-python-poezio")], check=True,
                             stdout=subprocess.PIPE, text=True, timeout=600)
        python = out.stdout.strip().splitlines()[-1]
    return python


def install_plugin(python: str, workdir: str) -> None:
    """pip install of client-examples/python (a copy: the build writes into the tree) into
    poezio's venv, without touching its pinned packages."""
    src = os.path.join(workdir, "omemod-client-src")
    shutil.copytree(os.path.join(REPO, "client-examples", "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
                    "--no-deps", "--no-build-isolation", "--force-reinstall", src],
                   check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


CONFIG = """[Poezio]
jid = {jid}
password = {password}
custom_host = 127.0.0.1
custom_port = {port}
# the test server's certificate is self-signed
tls_verify_cert = false
ignore_certificate = true
plugins_autoload = omemod
# with MAM back-fill, a message that opens a tab is shown from the archive, undecrypted
mam_sync = false
use_remote_bookmarks = false
enable_avatars = false
enable_user_mood = false
enable_user_activity = false
enable_user_gaming = false
enable_user_tune = false
show_welcome_in_new_tabs = false
"""

PLUGIN_CONFIG = """[omemod]
socket = {socket}
namespaces = {namespaces}
"""


class Poezio:
    """One poezio process in a tmux session of its own tmux server."""

    def __init__(self, workdir: str, name: str, jid: str, password: str, port: int, socket: str,
                 namespaces: str, python: str):
        self.name = name
        self.dir = os.path.join(workdir, "poezio-" + name)
        self.tmux_socket = os.path.join(self.dir, "tmux.sock")
        self.debug_log = os.path.join(self.dir, "debug.log")
        self.in_roster = True  # poezio starts in its roster tab
        home = os.path.join(self.dir, "home")
        self.env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"),
                        XDG_DATA_HOME=os.path.join(home, "data"), XDG_CACHE_HOME=os.path.join(home, "cache"),
                        TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8")
        self.env.pop("TMUX", None)
        plugins = os.path.join(home, "config", "poezio", "plugins")
        os.makedirs(plugins)
        self.config = os.path.join(self.dir, "poezio.cfg")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(jid=jid, password=password, port=port))
        with open(os.path.join(plugins, "omemod.cfg"), "w", encoding="utf-8") as f:
            f.write(PLUGIN_CONFIG.format(socket=socket, namespaces=namespaces))
        self.command = as_user() + [os.path.join(os.path.dirname(python), "poezio"), "-f", self.config,
                                    "-d", self.debug_log]

    def tmux(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-S", self.tmux_socket, *args], env=self.env, check=check,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=20)
        return out.stdout

    def start(self) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux not found: install it (Debian: apt-get install tmux)")
        self.tmux("new-session", "-d", "-s", self.name, "-x", "160", "-y", "50", *self.command)
        self.tmux("set-option", "-t", self.name, "remain-on-exit", "on")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", self.name, check=False)

    def log(self) -> str:
        try:
            with open(self.debug_log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    async def wait_screen(self, text: str, timeout: float = WAIT) -> str:
        """Waits until the screen shows `text`; returns the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"poezio {self.name}: {text!r} never appeared; the screen:\n{screen}")
            await asyncio.sleep(0.2)

    async def wait_log(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"poezio {self.name}: {text!r} never logged; the screen:\n{self.screen()}")
            await asyncio.sleep(0.2)

    async def type(self, text: str) -> None:
        """Types a line. poezio takes keys that arrive together as a paste, and a paste loses
        its Enter: the text goes first, Enter alone after. In the roster tab `/` is a key that
        opens the command line, so it goes alone first."""
        if self.in_roster and text.startswith("/"):
            self.tmux("send-keys", "-t", self.name, "-l", "/")
            await asyncio.sleep(0.3)
            text = text[1:]
        self.tmux("send-keys", "-t", self.name, "-l", text)
        await asyncio.sleep(0.3)
        self.tmux("send-keys", "-t", self.name, "Enter")
        await asyncio.sleep(0.3)

    def stop(self) -> None:
        self.tmux("kill-server", check=False)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])
