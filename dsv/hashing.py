"""Content hashing: the one hash function of dsv (blake3) and how ids are made.

Owns: hashing bytes, files (mmap, all threads for large files) and streams, and the
random short ids of datasets and versions. Must never touch the store or the index.
"""

from __future__ import annotations

import errno
import os
import re
import stat

import blake3

# Files bigger than this are hashed with all threads, through mapped windows of
# HASH_WINDOW bytes (measured here: 16 MiB windows are as fast as mapping the whole file).
LARGE_READ = 8 << 20
HASH_WINDOW = 16 << 20  # × up to 4 checkout threads: resident memory stays small
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def hash_bytes(data: bytes | memoryview) -> str:
    """The blake3 hex digest of `data`: the id of an object holding exactly these bytes."""
    return blake3.blake3(data).hexdigest()


def hash_file(path: str | os.PathLike[str], size: int | None = None) -> str:
    """The blake3 hex digest of a file's contents. Regular files only: something else
    put in a file's place (a FIFO, whose open would never return; a device) is refused
    with OSError EINVAL before a byte is read. (Opened non-blocking, which changes
    nothing for a regular file.)"""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return hash_fd(fd, size, os.fspath(path))
    finally:
        os.close(fd)


def hash_fd(fd: int, size: int | None = None, name: str | None = None) -> str:
    """`hash_file` of the file open at `fd` (read from its start, by position: the fd's
    offset is left as it was)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", name)
    if (st.st_size if size is None else size) >= LARGE_READ:
        return _hash_mapped(fd, st.st_size)
    hasher = blake3.blake3()
    offset = 0
    while piece := os.pread(fd, LARGE_READ, offset):
        hasher.update(piece)
        offset += len(piece)
    return hasher.hexdigest()


def _hash_mapped(fd: int, size: int) -> str:
    """Mapped windows, not one map of the whole file: the same speed as blake3's own
    update_mmap, but resident memory stays at one window. (A file truncated by another
    process while it is mapped kills the reader with SIGBUS, as in git; every dsv write
    is crash-safe, so that costs a retry, never data. Commit does not hash through a
    map: it hashes the private copy it writes, see objects.add_large_file.)"""
    import mmap

    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    offset = 0
    while offset < size:
        length = min(HASH_WINDOW, size - offset)
        window = mmap.mmap(fd, length, offset=offset, access=mmap.ACCESS_READ)
        try:
            with memoryview(window) as view:
                hasher.update(view)
        finally:
            window.close()
        offset += length
    return hasher.hexdigest()


def new_hasher(threads: bool = False) -> "blake3.blake3":
    """An incremental hasher, for bytes that arrive in pieces (big pieces: `threads`)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO) if threads else blake3.blake3()


def is_hash(text: str) -> bool:
    """Whether `text` has the shape of an object id (64 lowercase hex digits)."""
    return _HASH_RE.fullmatch(text) is not None


def raw_id(oid: str) -> bytes | None:
    """The 32 bytes of an object id written as dsv writes it (64 lowercase hex digits);
    None for text that is no id (what a set of raw ids never holds)."""
    return bytes.fromhex(oid) if is_hash(oid) else None


def random_id(length: int) -> str:
    """A random lowercase base-36 id; 10 chars carry ~51 bits, enough across offline clients."""
    import secrets  # imported here: it pulls in hashlib, which read-only commands never need

    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))
