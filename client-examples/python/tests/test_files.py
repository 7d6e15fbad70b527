"""omemod_client.files: a file on disk to what to upload and back, through the daemon's `file.*`
calls; a download that does not authenticate leaves nothing behind; links in bodies recognised."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import unittest

from daemon import DaemonTest
from omemod_client import AuthenticationFailed
from omemod_client.files import TAG_BYTES, decrypt_file, download_url, encrypt_file, file_link

HEX88 = "0123456789abcdef" * 5 + "01234567"


class Files(DaemonTest):
    def setUp(self) -> None:
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="omemod-files-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def test_round_trip_through_both_passes(self) -> None:
        async with self.daemon.client() as c:
            # Empty, one byte, and more than one chunk (256 KiB by default) with a short last one.
            for size in (0, 1, 300_001):
                for url in ("https://upload.example.org/f/a.bin", "http://127.0.0.1:5280/f/a.bin"):
                    with self.subTest(size=size, url=url):
                        plain = os.urandom(size)
                        upload = io.BytesIO()
                        link, upload_size = await encrypt_file(c, self.write("plain", plain), upload, url=url)
                        self.assertEqual(upload_size, size + TAG_BYTES)
                        self.assertEqual(len(upload.getvalue()), upload_size)
                        if url.startswith("https://"):
                            self.assertRegex(link, r"^aesgcm://upload\.example\.org/f/a\.bin#[0-9a-f]{88}$")
                            self.assertEqual(await download_url(c, link), url)
                        else:
                            self.assertRegex(link, r"^http://127\.0\.0\.1:5280/f/a\.bin#[0-9a-f]{88}$")
                            self.assertEqual(await download_url(c, link), url)
                        self.assertEqual(file_link(link), link)
                        dest = os.path.join(self.dir, "out")
                        got = await decrypt_file(c, link, self.write("download", upload.getvalue()), dest)
                        self.assertEqual(got, size)
                        with open(dest, "rb") as f:
                            self.assertEqual(f.read(), plain)
                        os.unlink(dest)

    async def test_an_altered_download_leaves_no_file(self) -> None:
        async with self.daemon.client() as c:
            upload = io.BytesIO()
            link, _ = await encrypt_file(c, self.write("plain", b"x" * 5000), upload, url="http://h/f")
            altered = bytearray(upload.getvalue())
            altered[100] ^= 1
            download = self.write("download", bytes(altered))
            with self.assertRaises(AuthenticationFailed):
                await decrypt_file(c, link, download, os.path.join(self.dir, "out"))
            self.assertEqual(sorted(os.listdir(self.dir)), ["download", "plain"])
            # The daemon ended that transfer; the connection still works.
            self.assertEqual(await decrypt_file(c, link, self.write("ok", upload.getvalue()),
                                                os.path.join(self.dir, "out")), 5000)



class Links(unittest.TestCase):
    def test_links_in_bodies(self) -> None:
        link = f"aesgcm://up.example.org/x/photo.jpg#{HEX88}"
        self.assertEqual(file_link(link), link)
        self.assertEqual(file_link(link + "\ndata:image/jpeg,AAAA"), link)
        self.assertEqual(file_link(f"https://up.example.org/x#{HEX88.upper()}abcdef"), None)  # 94 digits
        self.assertEqual(file_link(f"http://h/x#{HEX88}deadbeef"), f"http://h/x#{HEX88}deadbeef")  # 96: 16-byte IV
        for body in (None, "", "hello", f"see {link}", f"{link} ", f"ftp://h/x#{HEX88}", "aesgcm://h/x#abc"):
            with self.subTest(body=body):
                self.assertIsNone(file_link(body))


if __name__ == "__main__":
    unittest.main()
