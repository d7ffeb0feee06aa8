"""Content hashing: the one hash function of dsv (blake3) and how ids are made.

Owns: hashing bytes, files (mmap, all threads for large files) and streams, and the
random short ids of datasets and versions. Must never touch the store or the index.
"""

from __future__ import annotations

import os
import re

import blake3

HASH_HEX_LEN = 64
# Files bigger than this are hashed in chunks of this size with all threads.
LARGE_READ = 16 << 20
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def hash_bytes(data: bytes | memoryview) -> str:
    """The blake3 hex digest of `data`: the id of an object holding exactly these bytes."""
    return blake3.blake3(data).hexdigest()


def hash_file(path: str | os.PathLike[str], size: int | None = None) -> str:
    """The blake3 hex digest of a file's contents."""
    if size is None:
        size = os.stat(path).st_size
    if size < LARGE_READ:
        with open(path, "rb") as f:
            return blake3.blake3(f.read()).hexdigest()
    # Chunked reads into one buffer rather than mmap: the same speed, but a mapped file
    # counts fully in the process's resident memory.
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(LARGE_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


def new_hasher(threads: bool = False) -> "blake3.blake3":
    """An incremental hasher, for bytes that arrive in pieces (big pieces: `threads`)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO) if threads else blake3.blake3()


def is_hash(text: str) -> bool:
    """Whether `text` has the shape of an object id (64 lowercase hex digits)."""
    return _HASH_RE.fullmatch(text) is not None


def random_id(length: int) -> str:
    """A random lowercase base-36 id; 10 chars carry ~51 bits, enough across offline clients."""
    import secrets  # imported here: it pulls in hashlib, which read-only commands never need

    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))
