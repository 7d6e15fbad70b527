#!/usr/bin/env python3
"""XEP-0454 files (AES-256-GCM, the 16-byte tag appended) with Python's `cryptography`, i.e.
OpenSSL: the independent implementation tests/interop/files.rs holds omemod's against.

    aesgcm.py encrypt FRAGMENT IN OUT   writes ciphertext || tag
    aesgcm.py decrypt FRAGMENT IN OUT   exit 1, no OUT, when the file does not authenticate

FRAGMENT is a link's fragment: hex IV (12 or 16 bytes) then hex key (32 bytes). Files stream in
1 MiB pieces, so a file of any size passes in little memory.
"""

import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PIECE = 1 << 20
TAG = 16


def key_and_iv(fragment):
    raw = bytes.fromhex(fragment)
    if len(raw) not in (44, 48):
        raise SystemExit(f"fragment of {len(raw)} bytes")
    return raw[-32:], raw[:-32]


def encrypt(key, iv, src, dst):
    enc = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    while piece := src.read(PIECE):
        dst.write(enc.update(piece))
    dst.write(enc.finalize())
    dst.write(enc.tag)


def decrypt(key, iv, src, dst):
    size = os.fstat(src.fileno()).st_size
    if size < TAG:
        raise InvalidTag()
    src.seek(size - TAG)
    tag = src.read(TAG)
    src.seek(0)
    dec = Cipher(algorithms.AES(key), modes.GCM(iv, tag)).decryptor()
    left = size - TAG
    while left:
        piece = src.read(min(PIECE, left))
        left -= len(piece)
        dst.write(dec.update(piece))
    dec.finalize()


def main():
    mode, fragment, src_path, dst_path = sys.argv[1:5]
    key, iv = key_and_iv(fragment)
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        try:
            (encrypt if mode == "encrypt" else decrypt)(key, iv, src, dst)
        except InvalidTag:
            dst.close()
            os.unlink(dst_path)
            print("InvalidTag", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
