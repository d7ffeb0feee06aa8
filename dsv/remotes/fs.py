"""A remote in a directory (a local disk, NFS, a mounted volume).

Owns the filesystem flavour of the `Backend` protocol: files appear by temp file +
fsync + rename (fileio's one way), so readers never see part of one; refs change under
an exclusive lock on `refs.lock` with the compare and the rename inside it, so two
pushers can never both move one ref. The directory is shared with others, so nothing in
it is trusted: keys must be plain relative paths (`check_key`), every step below the root
is opened without following links (`open_dirs`), and every file is opened as a regular
file only, size-capped, never blocking (`fileio.open_regular`). The temp files of
killed uploads are removed once a day old (`remove_stale_uploads`, called by `remote
maintain` and `gc --remote`). Must never touch the store.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from .. import fileio
from ..faults import crashpoint
from ..hashing import hash_bytes
from .base import (MAX_GET_BYTES, MAX_REF_BYTES, NotFound, NotRegular, Progress, RemoteError,
                   TooLarge, check_key, check_range, open_dirs)

_PIECE = 8 << 20
T = TypeVar("T")


class FsBackend:
    """A remote rooted at an absolute directory path."""

    def __init__(self, root: str) -> None:
        self.url = root
        self.root = root
        self.tmp = os.path.join(root, "tmp")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key))

    # ---- reading: nothing below the root is followed, nothing but regular files is read --
    def _at(self, key: str, read: Callable[[str, int], T]) -> T:
        """`read(name, dir_fd)` on the file at `key` (its directory opened by `open_dirs`),
        with every refusal turned into NotFound / NotRegular / TooLarge."""
        parts = check_key(key)
        try:
            parent = open_dirs(self.root, parts[:-1])
            try:
                return read(parts[-1], parent)
            finally:
                os.close(parent)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self._path(key)} does not exist") from None
        except fileio.NotRegularFile as exc:
            raise NotRegular(f"{self._path(key)} is {exc.strerror}; refusing to read it",
                             hint="something other than dsv wrote into the remote directory"
                             ) from None
        except fileio.FileTooLarge as exc:
            raise TooLarge(f"{self._path(key)} is too large to be what it claims "
                           f"({exc.strerror})",
                           hint="the remote holds a damaged or hostile file") from None

    def _open(self, key: str) -> int:
        """An fd of the regular file at `key` (fileio.open_regular; the caller closes it)."""
        return self._at(key, lambda name, parent: fileio.open_regular(name, dir_fd=parent))

    def check_reachable(self) -> None:
        """Backend.check_reachable: the directory, or its parent, must exist."""
        parent = os.path.dirname(self.root.rstrip("/")) or "/"
        if not os.path.isdir(self.root) and not os.path.isdir(parent):
            raise RemoteError(f"remote directory {self.root} does not exist, nor does its parent",
                              hint="check the path (is the shared volume mounted?); nothing "
                                   "was changed")

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Regular files only; symlinks (to files or directories) are neither reported nor
        followed, so a listing never leaves the root."""
        stem = prefix.rstrip("/")
        parts = check_key(stem) if stem else []
        try:
            top = open_dirs(self.root, parts)
        except (OSError, RemoteError):
            return  # absent, or not a real directory: nothing to list
        stack = [(top, "/".join(parts))]
        try:
            while stack:
                fd, rel = stack.pop()
                try:
                    with os.scandir(fd) as entries:
                        listed = list(entries)
                    for entry in listed:
                        name = entry.name
                        key = f"{rel}/{name}" if rel else name
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            try:
                                stack.append((os.open(name, os.O_RDONLY | os.O_DIRECTORY
                                                      | os.O_NOFOLLOW | os.O_CLOEXEC,
                                                      dir_fd=fd), key))
                            except OSError:
                                continue  # gone, or swapped for a link meanwhile
                        elif stat.S_ISREG(st.st_mode) and not name.startswith(fileio.TMP_PREFIX):
                            yield key, st.st_size
                finally:
                    os.close(fd)
        finally:
            for fd, _rel in stack:
                os.close(fd)

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """Backend.get, read through descriptors that follow no link."""
        cap = MAX_GET_BYTES if max_size is None else max_size
        return self._at(key, lambda name, parent: fileio.read_regular(name, cap,
                                                                      dir_fd=parent))

    def get_range_into(self, key: str, start: int, into: memoryview) -> None:
        """Backend.get_range_into, through `get_range` (a local read: one copy more costs
        nothing next to it)."""
        into[:] = self.get_range(key, start, len(into))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Backend.get_range, read through a descriptor that follows no link."""
        check_range(self._path(key), start, length, MAX_GET_BYTES)
        fd = self._open(key)
        try:
            size = os.fstat(fd).st_size
            if start + length > size:  # a claim past the end: refused, nothing allocated
                raise RemoteError(f"{self._path(key)}: asked for {length} bytes at {start}, "
                                  f"but it holds {size}")
            data = os.pread(fd, length, start)
        finally:
            os.close(fd)
        if len(data) != length:
            raise RemoteError(f"{self._path(key)}: asked for {length} bytes at {start}, "
                              f"got {len(data)}")
        return data

    def download(self, key: str) -> Iterator[bytes]:
        """Backend.download, in pieces of 8 MiB."""
        fd = self._open(key)
        try:
            while True:
                chunk = os.read(fd, _PIECE)
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)

    def head(self, key: str) -> int | None:
        """Backend.head: the size of the regular file at `key`, else None."""
        try:
            fd = self._open(key)
        except (NotFound, NotRegular):
            return None  # a FIFO or link where a file belongs: absent, an upload replaces it
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    # ---- writing: temp file + rename; directories below the root must be real ones ------
    def _dir(self, parts: Sequence[str]) -> str:  # (`list` is a method here)
        """The path of ROOT/PARTS…, created, with every step a real directory (NotRegular
        when one is a symlink or a file: a rename there could land outside the root)."""
        try:
            os.close(open_dirs(self.root, parts, create=True))
        except (fileio.NotRegularFile, NotADirectoryError):
            raise NotRegular(f"{os.path.join(self.root, *parts)} is not a directory (a "
                             f"symlink or a file); refusing to write through it",
                             hint="something other than dsv wrote into the remote directory"
                             ) from None
        return os.path.join(self.root, *parts)

    def _tmp_dir(self) -> str:
        return self._dir(["tmp"])

    def _parent(self, key: str) -> str:
        parts = check_key(key)
        return os.path.join(self._dir(parts[:-1]), parts[-1])

    @contextmanager
    def _replacing(self, key: str) -> Iterator[None]:
        """A rename over a directory fails (over a link or FIFO it replaces it): say so."""
        try:
            yield
        except IsADirectoryError:
            raise NotRegular(f"{self._path(key)} is a directory; refusing to replace it",
                             hint="something other than dsv wrote into the remote directory"
                             ) from None

    @contextmanager
    def _publishing(self, key: str, tmp: str | None) -> Iterator[None]:
        """A rename whose temp file is gone: removed as stale (`remove_stale_uploads`)
        while this process was stopped for longer than STALE_UPLOAD_AGE. Nothing was
        published; say so."""
        with self._replacing(key):
            try:
                yield
            except FileNotFoundError:
                if tmp is not None and os.path.lexists(tmp):
                    raise
                raise RemoteError(f"the temp file of {self._path(key)} was removed before "
                                  f"it was renamed into place (nothing wrote to it for a "
                                  f"day: `remote maintain` and `gc --remote` take such a "
                                  f"file for the leftover of a killed upload); nothing was "
                                  f"published there", hint="run the command again") from None

    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        """Backend.put_bytes: a temp file renamed into place."""
        path = self._parent(key)
        with self._publishing(key, None):
            fileio.atomic_write_bytes(path, data, 0o444, tmp_dir=self._tmp_dir())

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        """Backend.put_file: a copy into a temp file, renamed into place; `progress` hears
        each piece copied (fileio.copy_into: PROGRESS_CHUNK bytes at a time)."""
        dest = self._parent(key)
        tmp = fileio.tmp_name(self._tmp_dir())
        try:
            src = fileio.open_regular(path)
            try:
                dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o444)
                try:
                    size = os.fstat(src).st_size
                    fileio.copy_into(src, dst, size, progress)
                    os.fsync(dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        except BaseException:
            fileio.unlink_quietly(tmp)
            raise
        crashpoint("fs:temp-written")
        with self._publishing(key, tmp):
            fileio.publish(tmp, dest)

    def delete(self, key: str) -> None:
        """Remove the file at `key` (or a FIFO, socket or link there: unlink never follows);
        a missing key is fine; a directory is refused, never removed recursively."""
        parts = check_key(key)
        try:
            parent = open_dirs(self.root, parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return
        except fileio.NotRegularFile:
            raise NotRegular(f"{self._path(key)} is reached through a symlink; refusing to "
                             f"delete through it") from None
        try:
            os.unlink(parts[-1], dir_fd=parent)
            os.fsync(parent)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise NotRegular(f"{self._path(key)} is a directory; refusing to delete it") \
                from None
        finally:
            os.close(parent)

    def remove_stale_uploads(self, older_than: float) -> tuple[int, int]:
        """Backend.remove_stale_uploads: the `tmp/.dsv-tmp-*` entries (a killed upload's
        temp file, up to a whole large file) last written (mtime, as the file server
        sets it) more than `older_than` seconds ago. A live upload's
        file changes as it is written; removed anyway (its process stopped that long),
        its rename fails and nothing is published. Nothing is followed; directories are
        left alone."""
        try:
            fd = open_dirs(self.root, ["tmp"])
        except (OSError, RemoteError):
            return 0, 0  # no tmp/, or not a real directory: nothing of ours in it
        cutoff = time.time() - older_than
        count = nbytes = 0
        try:
            with os.scandir(fd) as entries:
                listed = [e for e in entries if e.name.startswith(fileio.TMP_PREFIX)]
            for entry in listed:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode) or st.st_mtime > cutoff:
                    continue
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                count += 1
                nbytes += st.st_size if stat.S_ISREG(st.st_mode) else 0
            if count:
                os.fsync(fd)
        finally:
            os.close(fd)
        return count, nbytes

    @contextmanager
    def _refs_locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        lock = os.path.join(self.root, "refs.lock")
        try:  # never through a planted link (it would create or lock a file elsewhere)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
            raise NotRegular(f"{lock} is not a regular file ({exc.strerror})",
                             hint="remove it; something other than dsv wrote it") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegular(f"{lock} is not a regular file",
                                 hint="remove it; something other than dsv wrote it")
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read_ref(self, key: str) -> tuple[bytes, str] | None:
        """Backend.read_ref; the version tag is the hash of the bytes."""
        try:
            data = self.get(key, MAX_REF_BYTES)
        except NotFound:
            return None
        return data, hash_bytes(data)

    def write_ref(self, key: str, data: bytes, expect: str | None) -> str | None:
        """Backend.write_ref, under a lock on the remote's refs."""
        with self._refs_locked():
            current = self.read_ref(key)
            if (current[1] if current else None) != expect:
                return None
            with self._replacing(key):
                fileio.atomic_write_bytes(self._parent(key), data, 0o644,
                                          tmp_dir=self._tmp_dir())
        return hash_bytes(data)

