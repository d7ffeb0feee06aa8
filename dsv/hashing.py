"""Content hashing: the one hash function of dsv (blake3) and how ids are made.

Owns: hashing bytes, files (mmap, all threads for large files) and streams, and the
random short ids of datasets and versions. Must never touch the store or the index.
"""

from __future__ import annotations

import os
import re
import secrets

import blake3

HASH_HEX_LEN = 64
# Files at least this big are hashed with blake3's multithreaded mmap path; below it the
# thread start-up costs more than it saves.
MMAP_THRESHOLD = 4 * 1024 * 1024
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def hash_bytes(data: bytes | memoryview) -> str:
    """The blake3 hex digest of `data`: the id of an object holding exactly these bytes."""
    return blake3.blake3(data).hexdigest()


def hash_file(path: str | os.PathLike[str], size: int | None = None) -> str:
    """The blake3 hex digest of a file's contents."""
    if size is None:
        size = os.stat(path).st_size
    if size >= MMAP_THRESHOLD:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(os.fspath(path))
        return hasher.hexdigest()
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest()


def new_hasher() -> "blake3.blake3":
    """An incremental hasher, for bytes that arrive in pieces."""
    return blake3.blake3()


def is_hash(text: str) -> bool:
    """Whether `text` has the shape of an object id (64 lowercase hex digits)."""
    return _HASH_RE.fullmatch(text) is not None


def random_id(length: int) -> str:
    """A random lowercase base-36 id; 10 chars carry ~51 bits, enough across offline clients."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))
