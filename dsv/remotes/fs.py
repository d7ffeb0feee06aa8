"""A remote in a directory (a local disk, NFS, a mounted volume).

Owns the filesystem flavour of the `Backend` protocol: files appear by temp file +
fsync + rename (fileio's one way), so readers never see part of one; refs change under
an exclusive lock on `refs.lock` with the compare and the rename inside it, so two
pushers can never both move one ref. Must never touch the store.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from .. import fileio
from ..hashing import hash_bytes
from .base import NotFound, Progress, RemoteError

_PIECE = 8 << 20


class FsBackend:
    """A remote rooted at an absolute directory path."""

    def __init__(self, root: str) -> None:
        self.url = root
        self.root = root
        self.tmp = os.path.join(root, "tmp")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def check_reachable(self) -> None:
        parent = os.path.dirname(self.root.rstrip("/")) or "/"
        if not os.path.isdir(self.root) and not os.path.isdir(parent):
            raise RemoteError(f"remote directory {self.root} does not exist, nor does its parent",
                              hint="check the path (is the shared volume mounted?); nothing "
                                   "was changed")

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not os.path.isdir(base):
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                if name.startswith(fileio.TMP_PREFIX):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
                yield (name if rel == "." else f"{rel}/{name}"), size

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"{self._path(key)} does not exist") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"{self._path(key)} does not exist") from None
        try:
            data = os.pread(fd, length, start)
        finally:
            os.close(fd)
        if len(data) != length:
            raise RemoteError(f"{self._path(key)}: asked for {length} bytes at {start}, "
                              f"got {len(data)}")
        return data

    def download(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound(f"{self._path(key)} does not exist") from None
        with f:
            yield from iter(lambda: f.read(_PIECE), b"")

    def head(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None

    def _tmp_dir(self) -> str:
        os.makedirs(self.tmp, exist_ok=True)
        return self.tmp

    def _parent(self, key: str) -> str:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._parent(key)
        fileio.atomic_write_bytes(path, data, 0o444, tmp_dir=self._tmp_dir())

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        dest = self._parent(key)
        tmp = fileio.tmp_name(self._tmp_dir())
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _PIECE)
                dst.flush()
                os.fsync(dst.fileno())
                if progress is not None:
                    progress(dst.tell())
            os.chmod(tmp, 0o444)
        except BaseException:
            fileio.unlink_quietly(tmp)
            raise
        fileio.publish(tmp, dest)

    @contextmanager
    def _refs_locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, "refs.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read_ref(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get(key)
        except NotFound:
            return None
        return data, hash_bytes(data)

    def write_ref(self, key: str, data: bytes, expect: str | None) -> str | None:
        with self._refs_locked():
            current = self.read_ref(key)
            if (current[1] if current else None) != expect:
                return None
            fileio.atomic_write_bytes(self._parent(key), data, 0o644, tmp_dir=self._tmp_dir())
        return hash_bytes(data)
