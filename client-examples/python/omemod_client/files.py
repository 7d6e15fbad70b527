"""Encrypted files (XEP-0454) through omemod's `file.*` calls, between paths on disk.

omemod encrypts and decrypts; this module moves the bytes: the file to the daemon in chunks and
the ciphertext to a file to upload, or a download through both of omemod's passes to a temporary
file that becomes the destination only once the whole file authenticated (docs/clients.md 10).
The HTTP of XEP-0363 (PUT to the slot, GET of the link) is here too, with the standard library;
finding the upload service and asking for a slot is XMPP, the caller's part (the slixmpp plugin's
`send_file` / `open_file` do both).
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
import urllib.request
from typing import IO, Dict, Optional, Tuple

from .client import Client
from .errors import OmemodError

# XEP-0454: the fragment is the IV (12 bytes, or 16 in older clients) then the 32-byte key, in hex.
_FRAGMENT = r"#(?:[0-9A-Fa-f]{88}|[0-9A-Fa-f]{96})"
# The body is the link alone, or the link, one newline and a `data:` URI (a thumbnail).
_LINK = re.compile(r"((?:aesgcm|https?)://[^\s#]+" + _FRAGMENT + r")(?:\n(data:\S+))?")
SLOT_HEADERS = ("authorization", "cookie", "expires")
"""The only slot headers XEP-0363 lets a client copy into its PUT."""
HTTP_TIMEOUT = 60
TAG_BYTES = 16
"""The GCM tag after the ciphertext: an upload is the file's size + 16."""


def file_link(body: Optional[str]) -> Optional[str]:
    """The XEP-0454 link a decrypted body is, or None. Besides `aesgcm://…#<IV><key>` it accepts
    `http(s)://…#<IV><key>`, which Conversations sends for a server without HTTPS uploads."""
    if not body:
        return None
    m = _LINK.fullmatch(body)
    return m.group(1) if m else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _cancel(client: Client, transfer: str) -> None:
    """Ends a transfer that failed on our side; one the daemon already ended (a failed check,
    a lost connection) is gone, which is just as good."""
    try:
        await client.file_cancel(transfer)
    except OmemodError:
        pass


async def encrypt_file(client: Client, path: str, out: IO[bytes], *,
                       url: Optional[str] = None) -> Tuple[str, int]:
    """Encrypts the file at `path` into `out` (what to upload: ciphertext, then the tag) and
    returns its link and the upload size. `url` is the slot's GET URL: an `https://` one becomes
    the `aesgcm://` link; any other is sent as `url#fragment` (XEP-0454 converts only HTTPS);
    without `url`, the fragment alone is returned."""
    size = os.path.getsize(path)
    https = url is not None and url.startswith("https://")
    begin = await client.file_encrypt_begin(size, url=url if https else None)
    transfer, chunk = begin["transfer"], begin["chunk_size"]
    try:
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                data = f.read(chunk)
                if not data:
                    raise OSError(f"{path} shrank while it was read")
                answer = await client.file_encrypt_chunk(transfer, offset, _b64(data))
                out.write(base64.b64decode(answer["data"]))
                offset = answer["offset"]
        tag = (await client.file_encrypt_finish(transfer))["tag"]
    except BaseException:
        await _cancel(client, transfer)
        raise
    out.write(base64.b64decode(tag))
    link = begin.get("link") if https else f"{url}#{begin['fragment']}" if url else begin["fragment"]
    return link, begin["upload_size"]


async def decrypt_file(client: Client, link: str, download: str, dest: str) -> int:
    """Decrypts the downloaded file `download` of `link` into `dest`, written only when the whole
    file authenticated (through a hidden temporary file beside it); returns its size. A wrong
    key or an altered file raises `AuthenticationFailed` and leaves no `dest`."""
    size = os.path.getsize(download)
    if link.startswith("aesgcm://"):
        begin = await client.file_decrypt_begin(size, link=link)
    else:
        begin = await client.file_decrypt_begin(size, fragment=link.rpartition("#")[2])
    transfer, chunk = begin["transfer"], begin["chunk_size"]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", dir=os.path.dirname(os.path.abspath(dest)))
    try:
        with open(download, "rb") as f, os.fdopen(fd, "wb") as out:
            # First pass: omemod checks the tag and releases nothing.
            offset = 0
            while True:
                answer = await client.file_decrypt_check(transfer, offset, _b64(f.read(chunk)))
                if answer.get("verified"):
                    break
                offset = answer["offset"]
            # Second pass, the same chunks again: their plaintext.
            f.seek(0)
            offset = 0
            while True:
                answer = await client.file_decrypt_read(transfer, offset, _b64(f.read(chunk)))
                out.write(base64.b64decode(answer["data"]))
                if answer["done"]:
                    break
                offset = answer["offset"]
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        await _cancel(client, transfer)
        raise
    return begin["plaintext_size"]


def http_put(url: str, body: IO[bytes], size: int, headers: Dict[str, str],
             content_type: str = "application/octet-stream") -> int:
    """Uploads `size` bytes of `body` (from its start) to a slot's PUT URL, blocking; returns the
    HTTP status. Only the headers XEP-0363 allows are copied from the slot."""
    sent = {k: v for k, v in headers.items() if k.lower() in SLOT_HEADERS}
    sent.update({"Content-Length": str(size), "Content-Type": content_type})
    body.seek(0)
    req = urllib.request.Request(url, data=body, method="PUT", headers=sent)
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
        status: int = resp.status
        return status


def http_get(url: str, out: IO[bytes], max_bytes: Optional[int] = None) -> int:
    """Downloads `url` into `out` (blocking), at most `max_bytes`; returns the size."""
    total = 0
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
        while True:
            block = resp.read(1 << 16)
            if not block:
                return total
            total += len(block)
            if max_bytes is not None and total > max_bytes:
                raise ValueError(f"{url}: larger than {max_bytes} bytes")
            out.write(block)


async def download_url(client: Client, link: str) -> str:
    """Where to download a link from: the HTTPS URL of an `aesgcm://` link (omemod checks the
    link first: `InvalidAesgcmLink`), else the link without its fragment."""
    if link.startswith("aesgcm://"):
        url: str = (await client.file_link_parse(link))["url"]
        return url
    return link.partition("#")[0]
