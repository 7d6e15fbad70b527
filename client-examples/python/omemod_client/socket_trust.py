"""Where omemod's socket is, and the checks that make sure it is ours before we talk to it.

Whoever can put a socket where we look can read every plaintext we hand to "omemod". So, as
docs/rpc.md ("Connecting") asks: the directory must be ours, not a symlink and not writable by
group or others (then nobody can swap the socket after the check); the socket must be a socket
owned by us; and after connecting, the process behind it must run as us (`SO_PEERCRED`).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys


def default_socket_path() -> str:
    """`$OMEMOD_SOCKET`, else `$XDG_RUNTIME_DIR/omemod/omemod.sock`, else
    `/run/user/<uid>/omemod/omemod.sock` where that directory exists, else
    `/tmp/omemod-<uid>/omemod.sock`: where `omemod serve` puts it by default."""
    if os.environ.get("OMEMOD_SOCKET"):
        return os.environ["OMEMOD_SOCKET"]
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime and os.path.isdir(f"/run/user/{uid}"):
        runtime = f"/run/user/{uid}"
    if runtime:
        return os.path.join(runtime, "omemod", "omemod.sock")
    return f"/tmp/omemod-{uid}/omemod.sock"


def check_socket_path(path: str) -> None:
    """Raises PermissionError (the caller wraps it) unless `path` is a socket we can trust.

    The directory is opened without following a symlink and checked on its descriptor, and the
    socket is looked up relative to that descriptor, so the two checks see the same directory.
    """
    directory, name = os.path.split(os.path.abspath(path))
    uid = os.getuid()
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(directory):
            raise PermissionError(f"{directory} is a symbolic link") from e
        raise
    try:
        d = os.fstat(fd)
        if d.st_uid != uid:
            raise PermissionError(f"{directory} belongs to uid {d.st_uid}, not to us ({uid})")
        if d.st_mode & 0o022:
            raise PermissionError(f"{directory} is writable by other users")
        s = os.stat(name, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
    if stat.S_ISLNK(s.st_mode):
        raise PermissionError(f"{path} is a symbolic link")
    if s.st_uid != uid:
        raise PermissionError(f"{path} belongs to uid {s.st_uid}, not to us ({uid})")
    if not stat.S_ISSOCK(s.st_mode):
        raise PermissionError(f"{path} is not a socket")


def check_peer(sock: socket.socket, path: str) -> None:
    """Raises PermissionError unless the process serving the connected `sock` runs as us."""
    if not sys.platform.startswith("linux"):
        return  # SO_PEERCRED is Linux's; elsewhere the file checks stand alone
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", cred)
    if uid != os.getuid():
        raise PermissionError(f"{path} is served by uid {uid}, not by us ({os.getuid()})")
