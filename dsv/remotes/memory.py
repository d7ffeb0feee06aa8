"""A remote held in process memory, for tests and for experiments that need a remote but
no clone, no disk and no network.

Owns the in-memory flavour of the `Backend` protocol (base.py): a flat key space of
immutable files and compare-and-swap refs in one dict, behind one lock, so every
operation is atomic and a file is visible only once whole. It refuses what the other
backends refuse, with the same error types: keys (and listing prefixes) that are not
plain relative paths (`check_key` → BadKey), a missing key (NotFound; `head` and
`read_ref` say None), a `get` above its cap (`max_size`, default MAX_GET_BYTES), a
`get_range` longer than MAX_GET_BYTES or a ref above MAX_REF_BYTES (TooLarge), a range
past the end of a file (RemoteError). Its ref tags are those of the directory backend
(the blake3 hex digest of the ref's bytes), so the same bytes always carry the same tag.

Where the directory and S3 backends differ it follows the protocol's words: a listing
reports the keys below `prefix` taken as a directory (`list("refs")` is `list("refs/")`),
a zero-length range still needs the file and a start within it, and a key and a key
below it may both exist (a flat key space, as in S3).

Must never touch disk: it writes no file, makes no directory and takes no file lock; the
only file it ever opens is the source a caller hands to `put_file`, read-only. Must never
touch the network or the store; and its contents die with the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

from .. import fileio
from ..errors import RemoteError
from ..hashing import hash_bytes
from .base import (MAX_GET_BYTES, MAX_REF_BYTES, NotFound, Progress, TooLarge, check_key,
                   check_range)

_PIECE = 8 << 20  # what `download` yields at a time, and `put_file` reads at a time


class MemoryBackend:
    """A remote whose files live in a dict of this process (see the module docstring)."""

    def __init__(self, url: str = "memory://") -> None:
        """An empty remote; `url` only names it in messages."""
        self.url = url
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _where(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def _lookup(self, key: str) -> bytes | None:
        """The bytes at `key` (a checked key), or None."""
        check_key(key)
        with self._lock:
            return self._files.get(key)

    def _existing(self, key: str) -> bytes:
        data = self._lookup(key)
        if data is None:
            raise NotFound(f"{self._where(key)} does not exist")
        return data

    # ---- reading ------------------------------------------------------------------------
    def check_reachable(self) -> None:
        """Always reachable: the remote is this process's memory."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every file below `prefix`, taken as a directory (a trailing `/`
        or not; `""` is everything), in key order, as of the first item asked for. BadKey
        for a prefix that is not a plain relative path."""
        stem = prefix.rstrip("/")
        if stem:
            check_key(stem)
        below = stem + "/" if stem else ""
        with self._lock:
            found = sorted((key, len(data)) for key, data in self._files.items()
                           if key.startswith(below))
        yield from found

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """The whole file at `key`; NotFound if absent, TooLarge above `max_size` (default
        MAX_GET_BYTES)."""
        cap = MAX_GET_BYTES if max_size is None else max_size
        data = self._existing(key)
        if len(data) > cap:
            raise TooLarge(f"{self._where(key)} is {len(data)} bytes, more than the {cap} "
                           f"dsv reads for it",
                           hint="the remote holds a damaged or hostile file")
        return data

    def get_range_into(self, key: str, start: int, into: memoryview) -> None:
        """Backend.get_range_into, through `get_range`."""
        into[:] = self.get_range(key, start, len(into))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Exactly `length` bytes at `start`: RemoteError for a negative start or length or
        a range past the end (a zero-length one too: the file must exist and hold `start`),
        TooLarge for `length` above MAX_GET_BYTES, NotFound if absent."""
        check_range(self._where(key), start, length, MAX_GET_BYTES)
        data = self._existing(key)
        if start + length > len(data):
            raise RemoteError(f"{self._where(key)}: asked for {length} bytes at {start}, "
                              f"but it holds {len(data)}")
        return data[start:start + length]

    def download(self, key: str) -> Iterator[bytes]:
        """The file's bytes in pieces of at most 8 MiB (none for an empty file); NotFound
        (when iterated) if absent."""
        data = self._existing(key)
        view = memoryview(data)
        for offset in range(0, len(data), _PIECE):
            yield bytes(view[offset:offset + _PIECE])

    def head(self, key: str) -> int | None:
        """The size of the file at `key`, or None if there is none."""
        data = self._lookup(key)
        return None if data is None else len(data)

    # ---- writing ------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        """Store a copy of `data` at `key` (replacing what was there), all at once."""
        check_key(key)
        copy = bytes(data)
        with self._lock:
            self._files[key] = copy

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        """Store a copy of the regular file at `path` (read-only, never a FIFO or link:
        `fileio.open_regular`; FileNotFoundError / fileio.NotRegularFile as there), calling
        `progress` with the size of each piece read. Nothing is stored if reading fails."""
        check_key(key)
        pieces: list[bytes] = []
        fd = fileio.open_regular(path)
        try:
            while True:
                piece = os.read(fd, _PIECE)
                if not piece:
                    break
                pieces.append(piece)
                if progress is not None:
                    progress(len(piece))
        finally:
            os.close(fd)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        with self._lock:
            self._files[key] = data

    def delete(self, key: str) -> None:
        """Remove the file at `key`; a missing key is fine."""
        check_key(key)
        with self._lock:
            self._files.pop(key, None)

    def remove_stale_uploads(self, older_than: float) -> tuple[int, int]:
        """Backend.remove_stale_uploads: uploads here leave nothing behind."""
        return 0, 0

    # ---- refs: compare-and-swap under the lock --------------------------------------------
    def read_ref(self, key: str) -> tuple[bytes, str] | None:
        """The ref's bytes and tag (their blake3 digest), or None; TooLarge above
        MAX_REF_BYTES."""
        data = self._lookup(key)
        if data is None:
            return None
        if len(data) > MAX_REF_BYTES:
            raise TooLarge(f"{self._where(key)} is {len(data)} bytes, more than the "
                           f"{MAX_REF_BYTES} dsv reads for a ref",
                           hint="the remote holds a damaged or hostile file")
        return data, hash_bytes(data)

    def write_ref(self, key: str, data: bytes, expect: str | None) -> str | None:
        """Write `data` only if the ref's tag is still `expect` (None: only if there is no
        file at `key`); the new tag, or None when the ref is not as expected."""
        check_key(key)
        copy = bytes(data)
        tag = hash_bytes(copy)
        with self._lock:
            current = self._files.get(key)
            if (None if current is None else hash_bytes(current)) != expect:
                return None
            self._files[key] = copy
        return tag
