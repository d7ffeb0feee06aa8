"""Atomic, durable file writes and fast file copies: the one place dsv makes files appear.

Owns: write-to-temp + fsync + rename, directory fsync, kernel-side copies
(reflink, copy_file_range) and temp-file naming. Every writer in dsv goes through here,
so atomicity lives in one place. Must never know what the bytes mean.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import select
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .errors import InvalidInput
from .native import copy_into as _copy_bytes

TMP_PREFIX = ".dsv-tmp-"
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_COPY_CHUNK = 1 << 30
# With a progress callback, copies go in pieces this big: a 1.5 GiB file moves a bar ~24
# times, and one syscall per 64 MiB costs nothing measurable.
PROGRESS_CHUNK = 64 << 20
_READ_CHUNK = 8 << 20   # the read/write fallback's buffer


_TMP_BASE = os.urandom(4).hex()   # per process; the counter makes each name new
_tmp_count = itertools.count()


def tmp_name(directory: str | os.PathLike[str]) -> str:
    """A fresh temp path inside `directory` (`.dsv-tmp-` and 16 hex digits, see
    paths.is_temp_name): the prefix lets crash leftovers be found, and no syscall is
    spent per name (checkout makes one per file)."""
    return os.path.join(directory, f"{TMP_PREFIX}{_TMP_BASE}{next(_tmp_count):08x}")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray, mode: int = 0o644,
                       tmp_dir: str | os.PathLike[str] | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never
    a part."""
    path = os.fspath(path)
    tmp = tmp_name(tmp_dir or os.path.dirname(path) or ".")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    publish(tmp, path)


def publish(tmp: str, path: str) -> None:
    """Rename a finished, fsynced temp file over `path` and make the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def copy_into(src_fd: int, dst_fd: int, size: int,
              progress: Callable[[int], None] | None = None,
              src_offset: int = 0, dst_offset: int = 0) -> None:
    """Copy `size` bytes between open files in the kernel (copy_file_range, else a
    read/write loop), from `src_offset` in the source to `dst_offset` in the destination.
    `progress` hears the bytes of each piece as it lands (pieces of PROGRESS_CHUNK, or of
    the fallback's buffer): once per piece, never per byte."""
    chunk = _COPY_CHUNK if progress is None else PROGRESS_CHUNK
    remaining = size
    offset_in, offset_out = src_offset, dst_offset
    try:
        while remaining > 0:
            n = os.copy_file_range(src_fd, dst_fd, min(remaining, chunk), offset_in,
                                   offset_out)
            if n == 0:
                break
            offset_in += n
            offset_out += n
            remaining -= n
            if progress is not None:
                progress(n)
        if remaining == 0:
            return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    # Carries on where the kernel copy stopped: the bytes it reported are not sent again.
    while remaining > 0:
        data = os.pread(src_fd, min(remaining, _READ_CHUNK), offset_in)
        if not data:
            raise OSError(errno.EIO, "file shrank while it was being copied")
        view = memoryview(data)
        while view:
            written = os.pwrite(dst_fd, view, offset_out)
            view = view[written:]
            offset_out += written
        offset_in += len(data)
        remaining -= len(data)
        if progress is not None:
            progress(len(data))


def try_reflink(src_fd: int, dst_fd: int) -> bool:
    """Share `src`'s blocks with `dst` (btrfs, xfs, …); False where the filesystem can't."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
        return True
    except OSError:
        return False


def nearest_existing(path: str | os.PathLike[str]) -> str:
    """`path` if it exists, else the nearest directory above it that does."""
    at = os.path.abspath(path)
    while not os.path.lexists(at) and os.path.dirname(at) != at:
        at = os.path.dirname(at)
    return at


def free_bytes(path: str | os.PathLike[str]) -> int:
    """The bytes an unprivileged writer may still put on the filesystem holding `path`
    (for a path not made yet: holding the nearest directory above it that exists)."""
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


def check_room(path: str | os.PathLike[str], nbytes: int, what: str, hint: str) -> None:
    """Refuse work that puts `nbytes` on the filesystem holding `path` when it has not that
    much free, before any of it is written: `what` ("the download") needs …"""
    free = free_bytes(path)
    if nbytes > free:
        raise InvalidInput(f"{what} needs {nbytes:,} bytes in {os.fspath(path)} and its disk "
                           f"has {free:,} free", hint=hint)


def reflinks_between(src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str]
                     ) -> bool:
    """Whether a file in `src_dir` can share its blocks with a new one in `dst_dir` (the
    same btrfs or xfs filesystem): tried on a probe file of one block, removed after."""
    src, dst = tmp_name(src_dir), tmp_name(dst_dir)
    try:
        src_fd = os.open(src, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(src_fd, bytes(_ALIGN))
            dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                return try_reflink(src_fd, dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
    except OSError:
        return False
    finally:
        unlink_quietly(src)
        unlink_quietly(dst)


def remove_tmp_files(directory: str | os.PathLike[str]) -> int:
    """Delete leftovers of interrupted writes in `directory`; returns how many."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(TMP_PREFIX):
            unlink_quietly(os.path.join(directory, name))
            removed += 1
    return removed


def unlink_quietly(path: str) -> None:
    """Remove `path` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_DIRS = 64   # descriptors a walk keeps open (the deepest); the others reopen as `..`

DirEntries = list[tuple[str, os.stat_result]]


class TreeChanged(OSError):
    """A directory being walked was replaced, moved or removed meanwhile."""


@dataclass
class _Frame:
    """One directory on `walk_dirs`'s stack."""

    rel: str
    fd: int | None                          # None once closed to stay under _OPEN_DIRS
    ident: tuple[int, int]                  # (device, inode), to check a reopened one
    todo: list[tuple[str, tuple[int, int]]]  # subdirectories still to walk, and theirs


def walk_dirs(root_fd: int, visit: Callable[[str, int, DirEntries], None],
              leave: Callable[[int, str], None] | None = None) -> None:
    """Depth first over every directory under `root_fd`, by descriptor, following no
    link: `visit(rel_dir, dir_fd, entries)` gets each directory's (name, lstat) pairs
    (the root's rel_dir is ""); `leave(parent_fd, name)` follows once a subdirectory's
    whole subtree is done. A loop, not a recursion: any depth is walked. At most
    _OPEN_DIRS descriptors stay open (the deepest ones): an ancestor closed on the way
    down is reopened as `..` on the way back up, and must still be the same directory
    (device and inode). A directory replaced, moved or removed while it is walked raises
    TreeChanged."""
    frames: list[_Frame] = []

    def enter(rel: str, fd: int, ident: tuple[int, int]) -> None:
        frames.append(_Frame(rel, fd, ident, []))  # from here on, closed by the walk
        entries = []
        for name in os.listdir(fd):
            try:
                entries.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
            except FileNotFoundError:
                continue   # (gone since the listing: nothing to visit)
        visit(rel, fd, entries)
        frames[-1].todo = [(n, (st.st_dev, st.st_ino)) for n, st in entries
                           if stat.S_ISDIR(st.st_mode)]
        open_frames = [f for f in frames if f.fd is not None]
        if len(open_frames) > _OPEN_DIRS:
            oldest = open_frames[0]
            assert oldest.fd is not None
            os.close(oldest.fd)
            oldest.fd = None

    try:
        first = os.open(".", _DIR_NOFOLLOW, dir_fd=root_fd)
        st = os.fstat(first)
        enter("", first, (st.st_dev, st.st_ino))
        while frames:
            top = frames[-1]
            assert top.fd is not None   # (the deepest frame is always open)
            if not top.todo:
                frames.pop()
                try:
                    if frames and frames[-1].fd is None:   # (back up a step: `..`)
                        up = os.open("..", _DIR_NOFOLLOW, dir_fd=top.fd)
                        frames[-1].fd = up
                        st = os.fstat(up)
                        if (st.st_dev, st.st_ino) != frames[-1].ident:
                            raise TreeChanged(errno.EBUSY, "a directory was moved while it "
                                                           "was walked", top.rel)
                finally:
                    os.close(top.fd)
                if frames and leave is not None:
                    parent_fd = frames[-1].fd
                    assert parent_fd is not None
                    leave(parent_fd, top.rel.rpartition("/")[2])
                continue
            name, ident = top.todo.pop()
            rel = f"{top.rel}/{name}" if top.rel else name
            try:
                child = os.open(name, _DIR_NOFOLLOW, dir_fd=top.fd)
            except OSError:   # gone, or now a link or a file
                raise TreeChanged(errno.EBUSY, "a directory was replaced while it was "
                                               "walked", rel) from None
            st = os.fstat(child)
            if (st.st_dev, st.st_ino) != ident:
                os.close(child)
                raise TreeChanged(errno.EBUSY, "another directory was moved in while it was "
                                               "walked", rel)
            enter(rel, child, ident)
    finally:
        for frame in frames:
            if frame.fd is not None:
                os.close(frame.fd)


def remove_tree(path: str | os.PathLike[str], dir_fd: int | None = None) -> None:
    """Remove the directory `path` (relative to `dir_fd`, when given) and everything in
    it; nothing if it is gone. A link inside is removed, never followed; a link or file
    at `path` itself is refused (OSError ELOOP, NotADirectoryError) and left alone.

    By `walk_dirs`, not shutil.rmtree, which recurses a frame per level and fails past
    Python's 1,000: a directory as deep as a path may be (2,048 levels), or as deep as
    anyone planted, goes like a shallow one. A part of it moved elsewhere meanwhile is
    emptied as it is (it was the tree's), but the removal stops with TreeChanged at the
    step back up out of it: it never climbs into the directory that part was moved to.
    The first error stops it (the callers that may leave things behind ignore OSError)."""
    try:
        fd = os.open(path, _DIR_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return

    def visit(_rel: str, at: int, entries: DirEntries) -> None:
        for name, st in entries:
            if not stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=at)

    try:
        walk_dirs(fd, visit, lambda above, name: os.rmdir(name, dir_fd=above))
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path, dir_fd=dir_fd)


# Measured here: copying 8 MiB reads out of the page cache and hashing them keeps the
# buffer in the CPU caches; 16 MiB is 15% slower, 1 MiB 35% slower.
STREAM_BUFFER = 8 << 20
_ALIGN = 4096
WRITE_DEPTH = 3
"""Buffers a DirectWriter has being written at once (see there)."""


def _fill(fd: int, view: memoryview) -> int:
    """Read into `view` until it is full or the file ends; returns the bytes read."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


def pieces_at_most(fd: int, size: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """The first `size` bytes of `fd` (fewer if it ends first) in pieces, never more: a
    file another user may append to is read no further than the size that was checked."""
    got = 0
    while got < size:
        data = os.pread(fd, min(size - got, piece), got)
        if not data:
            return
        got += len(data)
        yield data


def read_at_most(fd: int, size: int) -> bytes:
    """`pieces_at_most` in one piece."""
    return b"".join(pieces_at_most(fd, size, 1 << 30))


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; whether it is on after (a filesystem that
    refuses it says EINVAL, and the file stays buffered)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as exc:
        if not on or exc.errno != errno.EINVAL:
            raise
        return False
    return on


def _pwrite_all(fd: int, data: memoryview, offset: int, direct: bool) -> bool:
    """Write all of `data` at `offset` (writes of one file may then run side by side);
    drops O_DIRECT if the filesystem refuses it. Returns `direct`."""
    while data:
        try:
            written = os.pwrite(fd, data, offset)
        except OSError as exc:
            if not direct or exc.errno != errno.EINVAL:
                raise
            direct = _set_direct(fd, False)
            continue
        data = data[written:]
        offset += written
    return direct


def _write_in_turn(fd: int, data: memoryview, offset: int, direct: bool,
                   observe: Callable[[memoryview], object] | None,
                   before: threading.Event | None, shown: threading.Event) -> bool:
    """One buffer of a DirectWriter: shown to `observe` once the buffer before it was
    (`before` set), then written at `offset` while the next ones are observed."""
    try:
        if observe is not None:
            if before is not None:
                before.wait()
            observe(data)
    finally:
        shown.set()
    return _pwrite_all(fd, data, offset, direct)


class DirectWriter:
    """Sequential writes to a new file through page-aligned buffers, flushed with
    O_DIRECT in whole blocks, buffered where the filesystem refuses O_DIRECT (tmpfs,
    some network filesystems). `finish` writes the tail, fsyncs and closes.

    Why O_DIRECT: on the machines dsv targets, filling the page cache with a gigabyte
    costs several times more kernel time than writing it to disk directly.

    Full buffers are written by background threads while the caller fills the next
    one, up to `depth` of them at once, each at its own offset: a disk written one
    buffer at a time waits for each write's round trip, and a download writing a pack
    and a file at once waited on its writes for half its time (a 1 GiB clone, 2.2 of
    4.4 s, with one write in flight per file). A write that failed is raised by the
    next call that waits for it, or by `finish`.

    `observe` (a hasher's update), if given, is shown every byte written, in order, a
    whole buffer at a time, by the threads that write them (each waits for the buffer
    before it to be shown): a file hashed as it is written costs its writer no time (a
    checkout writing what a download brings). Not for `copy_from`, which shows its
    caller's `observe` every piece itself.
    """

    def __init__(self, path: str, mode: int = 0o644, buffer: int = STREAM_BUFFER,
                 observe: Callable[[memoryview], object] | None = None,
                 depth: int = WRITE_DEPTH) -> None:
        # Created first, O_DIRECT asked for after: a filesystem that refuses it in open
        # (ramfs, tmpfs before Linux 6.6) does so only once the file exists, and O_EXCL
        # would then refuse a second open.
        self._buf: mmap.mmap | None = take_buffer(buffer)   # (first: nothing to undo)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, mode)
        try:
            self.direct = _set_direct(self.fd, True)
        except OSError:
            os.close(self.fd)
            give_buffer(self._buf)
            raise
        self._depth = max(1, depth)
        # Buffers being written, oldest first, each with its write and the event set
        # once `observe` has seen it.
        self._writing: collections.deque[tuple[Future[bool], mmap.mmap,
                                               threading.Event]] = collections.deque()
        self._view = memoryview(self._buf)
        self._used = 0
        self._observe = observe
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`; whole buffers go to disk as they fill."""
        used = self._used
        if used + len(data) < len(self._view):  # (most writes: one small object)
            self._used = used + _copy_bytes(self._view, used, data)
            return
        data = memoryview(data)
        while data:
            room = len(self._view) - self._used
            take = min(room, len(data))
            self._used += _copy_bytes(self._view, self._used, data[:take])
            data = data[take:]
            if self._used == len(self._view):
                self._flush_full()

    def copy_from(self, src_fd: int, observe: Callable[[memoryview], object],
                  limit: int | None = None) -> int:
        """Copy the rest of `src_fd` in (at most `limit` bytes: a file another user may
        grow is read no further than the size checked), showing every chunk to `observe`
        (a hasher) on its way from the source into the aligned buffer: the bytes observed
        are exactly the bytes written. Returns the bytes copied."""
        copied = 0
        while limit is None or copied < limit:
            if self._used == len(self._view):
                self._flush_full()
            room = self._view[self._used:]
            n = _fill(src_fd, room if limit is None else room[:limit - copied])
            if n == 0:
                return copied
            observe(self._view[self._used:self._used + n])
            self._used += n
            copied += n
        return copied

    def finish(self, durable: bool = True) -> int:
        """Write what is buffered, make the file durable (unless not `durable`: a
        working-directory file, which `cp` would not fsync either), close it; returns
        its size."""
        try:
            written = self._wait(0)
            if written is not None:
                give_buffer(written)
            total = self.size + self._used
            if self._used:
                if self._observe is not None:
                    self._observe(self._view[:self._used])
                padded = -(-self._used // _ALIGN) * _ALIGN if self.direct else self._used
                self._view[self._used:padded] = bytes(padded - self._used)
                self.direct = _pwrite_all(self.fd, self._view[:padded], self.size,
                                          self.direct)
                if padded != self._used:
                    os.ftruncate(self.fd, total)
            self._buffered()
            if durable:
                os.fsync(self.fd)
        finally:
            self.close()
        return total

    def _buffered(self) -> None:
        """Drop O_DIRECT before fsync and close: overlayfs over a filesystem without it
        takes the flag and fails every call after it (fsync and close included) with
        EINVAL, where a write, which drops it on EINVAL, was never made."""
        if self.direct and self.fd >= 0:
            self.direct = _set_direct(self.fd, False)

    def _flush_full(self) -> None:
        """Hand the full buffer to a writer thread and go on in another one (the oldest
        written one's, once `depth` are being written)."""
        assert self._buf is not None
        full = self._buf
        before = self._writing[-1][2] if self._writing else None
        shown = threading.Event()
        self._writing.append((_writer_pool().submit(
            _write_in_turn, self.fd, memoryview(full), self.size, self.direct,
            self._observe, before, shown), full, shown))
        self.size += self._used
        self._buf = None
        self._view = memoryview(b"")
        self._used = 0
        # A written buffer if there is one, a new one only while fewer than `depth` are
        # being written (a disk that keeps up never needs more than two: each new
        # buffer costs a page fault per 4 KiB when first filled).
        spare = self._wait(len(self._writing), done_only=True)
        if spare is None and len(self._writing) >= self._depth:
            spare = self._wait(self._depth - 1)
        self._buf = spare or take_buffer(len(full))
        self._view = memoryview(self._buf)

    def _wait(self, most: int, done_only: bool = False) -> mmap.mmap | None:
        """Wait until at most `most` buffers are being written, or with `done_only`
        only collect those already written; raise what a write raised. Returns one
        written buffer for the caller (None if none was); any others go to the pool."""
        spare = None
        while self._writing and (len(self._writing) > most or
                                 done_only and self._writing[0][0].done()):
            pending, buf, _shown = self._writing[0]
            try:
                direct = pending.result()
            finally:
                self._writing.popleft()
                if spare is not None:
                    give_buffer(spare)
                spare = buf
            self.direct = self.direct and direct
        return spare

    def close(self) -> None:
        """Close the file without finishing it (after a failure, Ctrl-C included)."""
        self._settle()
        try:
            if self.fd >= 0:
                try:
                    self._buffered()
                except OSError:
                    pass
                fd, self.fd = self.fd, -1
                os.close(fd)   # (Linux frees the descriptor even when close fails)
        finally:
            if self._buf is not None:
                give_buffer(self._buf)
            self._buf = None
            self._view = memoryview(b"")

    def _settle(self) -> None:
        """Wait for every buffer being written, whatever happens meanwhile: the
        descriptor must not be closed (and reused by another open) nor a buffer handed
        to another writer while a write runs. It ends within a few buffers' writes;
        their errors, if any, were or will be someone else's to report (this is only
        called on the way out)."""
        while self._writing:
            pending, buf, _shown = self._writing[0]
            try:
                pending.exception()
            except KeyboardInterrupt:
                continue
            self._writing.popleft()
            give_buffer(buf)


def read_ranges(path: str | os.PathLike[str], ranges: Iterable[tuple[int, int]],
                buffer: int = STREAM_BUFFER) -> Iterator[memoryview]:
    """The bytes of each (offset, length) of the file at `path`, in order, in pieces of
    at most `buffer` bytes; a piece is valid until the next one is asked for. Read with
    O_DIRECT where the filesystem allows (whole aligned blocks into an aligned buffer:
    a pack that a download or a commit wrote past the page cache is not pulled into it
    to be copied once), else buffered. Never through a link; a file shorter than a range
    raises OSError (EIO); a file of another kind, NotRegularFile (see `open_regular`)."""
    fd = open_regular(path)
    buf = take_buffer(buffer)
    view = memoryview(buf)
    try:
        direct = _set_direct(fd, True)
        for offset, length in ranges:
            pos, end = offset - offset % _ALIGN, offset + length
            while pos < end:
                want = min(len(view), -(-(end - pos) // _ALIGN) * _ALIGN)
                try:
                    got = os.preadv(fd, [view[:want]], pos)
                except OSError as exc:
                    if not direct or exc.errno != errno.EINVAL:
                        raise
                    direct = _set_direct(fd, False)
                    continue
                lo, hi = max(offset - pos, 0), min(got, end - pos)
                if hi <= lo:
                    raise OSError(errno.EIO, "file shorter than the range read from it",
                                  str(path))
                yield view[lo:hi]
                pos += got
    finally:
        view.release()
        give_buffer(buf)
        os.close(fd)


_WRITERS: ThreadPoolExecutor | None = None
_WRITERS_LOCK = threading.Lock()


def _writer_pool() -> ThreadPoolExecutor:
    """The threads that write DirectWriter's full buffers (each at its own offset, up
    to WRITE_DEPTH of one writer's at once)."""
    global _WRITERS
    with _WRITERS_LOCK:
        if _WRITERS is None:
            _WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dsv-write")
        return _WRITERS


_BUFFERS: list[mmap.mmap] = []
"""Buffers of closed writers and finished downloads, for the next ones: a fresh buffer
costs a page fault per 4 KiB when it is first filled, which on the target VMs cost more
than the copy itself (a commit of a 1 GiB chunked file fills 32 packs' buffers; a clone
of it received each byte into a new page, 300,000 faults, before its ranged reads took
their buffers from here)."""
_BUFFERS_KEPT = 16
"""Buffers kept: a clone's download window (8 ranges) beside its writers'."""
_BUFFERS_LOCK = threading.Lock()


def take_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of `size` bytes: a kept one of that size, else a new one.
    Give it back with `give_buffer` once nothing reads or writes it any more."""
    with _BUFFERS_LOCK:
        for i, buf in enumerate(_BUFFERS):
            if len(buf) == size:
                return _BUFFERS.pop(i)
    return mmap.mmap(-1, size)


def give_buffer(buf: mmap.mmap) -> None:
    """Keep `buf` for the next `take_buffer` of its size (or unmap it: enough kept)."""
    with _BUFFERS_LOCK:
        if len(_BUFFERS) < _BUFFERS_KEPT:
            _BUFFERS.append(buf)
            return
    try:
        buf.close()
    except BufferError:
        pass  # (a view of it is still held: unmapped when that goes)


# ---- reading files someone else wrote ------------------------------------------------------
# A remote, a shared cache or a pulled tree may hold a FIFO (an open() that never returns),
# a device, a symlink to /etc/passwd, or a 4 GiB sparse file where a few bytes belong. Such
# files are opened through `open_regular` only: it never follows a final symlink, never
# blocks, and says no before reading a byte.

_READ_REGULAR = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """Refused by `open_regular`: not a regular file. errno is ELOOP for a symlink, EISDIR
    for a directory, EINVAL for a FIFO, socket or device."""


class FileTooLarge(OSError):
    """Refused by `open_regular` / `read_regular`: larger than the reader's cap (EFBIG)."""


def _kind(mode: int) -> tuple[int, str]:
    if stat.S_ISLNK(mode):
        return errno.ELOOP, "a symlink"
    if stat.S_ISDIR(mode):
        return errno.EISDIR, "a directory"
    if stat.S_ISFIFO(mode):
        return errno.EINVAL, "a FIFO"
    if stat.S_ISSOCK(mode):
        return errno.EINVAL, "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return errno.EINVAL, "a device"
    return errno.EINVAL, "not a regular file"


def _refuse(mode: int, path: str) -> NotRegularFile:
    code, what = _kind(mode)
    return NotRegularFile(code, f"not a regular file ({what})", path)


def open_regular(path: str | os.PathLike[str], max_size: int | None = None, *,
                 dir_fd: int | None = None) -> int:
    """An fd (read-only, blocking, close-on-exec) of the regular file `path` (relative to
    `dir_fd` if given), or NotRegularFile (a FIFO, device, socket, directory; a symlink as
    the last component → ELOOP), FileTooLarge (more than `max_size` bytes), or the usual
    FileNotFoundError. Non-blocking and no-follow, so a hostile file costs no hang; the
    kind is checked with lstat first, so a device is not even opened."""
    path = os.fspath(path)
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(st.st_mode, path)
    try:
        fd = os.open(path, _READ_REGULAR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since the lstat
            raise NotRegularFile(errno.ELOOP, "not a regular file (a symlink)", path) from None
        raise
    try:
        st = os.fstat(fd)  # the file actually opened decides, not the lstat above
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(st.st_mode, path)
        if max_size is not None and st.st_size > max_size:
            raise FileTooLarge(errno.EFBIG, f"{st.st_size} bytes, more than the {max_size} "
                                            f"allowed", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], max_size: int, *,
                 dir_fd: int | None = None) -> bytes:
    """The whole of the regular file `path`, at most `max_size` bytes (see `open_regular`).
    Reads at most `max_size` + 1 bytes, so a file that grows after the check is refused
    too, never read to its end."""
    fd = open_regular(path, max_size, dir_fd=dir_fd)
    try:
        expected = os.fstat(fd).st_size
        parts: list[bytes] = []
        total = 0
        while True:
            want = min(max_size + 1 - total, max(expected + 1 - total, 1 << 16))
            chunk = os.read(fd, want)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > max_size:
                raise FileTooLarge(errno.EFBIG, f"more than the {max_size} bytes allowed",
                                   os.fspath(path))
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# ---- a child's one line on a pipe ------------------------------------------------------

def read_line(fd: int, timeout: float) -> str:
    """What a child process says on the pipe `fd` ("ready", or its error): one line of at
    most 4 KiB, within `timeout` seconds, decoded and stripped ("" when it said nothing).
    Closes `fd` (poll, not select: the descriptor may be above 1024)."""
    got = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    try:
        while time.monotonic() < deadline and not got.endswith(b"\n") and len(got) < 4096:
            if poller.poll(200):
                piece = os.read(fd, 4096)
                if not piece:
                    break
                got += piece
    finally:
        os.close(fd)
    return got.decode("utf-8", "replace").strip()


def tell(fd: int | None, line: str) -> None:
    """Say `line` on the pipe `fd` (if any; see `read_line`), then close it; a reader
    gone meanwhile is no error."""
    if fd is None:
        return
    try:
        os.write(fd, line.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass
    finally:
        os.close(fd)
