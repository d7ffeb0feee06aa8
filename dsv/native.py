"""The loops that run once per file of a dataset: in C when dsv/_native.c was built (the
normal `pip install` builds it), else their Python twins here, which give the same
results (tests/test_native.py runs both on the same trees).

`stat_names` is what a status or commit of a large directory costs; `read_files` is the
read half of a cold commit. The C versions make their syscalls without the GIL, so a
thread reading the next files overlaps the hashing of the last ones."""
from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from types import ModuleType

FileRow = tuple[str, tuple[int, int, int, int, str]]
Stats = tuple[list[FileRow], list[str], list[str], list[str]]

_IFMT, _IFREG, _IFDIR, _IFLNK = 0o170000, 0o100000, 0o040000, 0o120000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_READ = 1 << 30  # the largest size `read_files` takes


def _check_names(names: list[str]) -> None:
    """Refuse, before any syscall (as the C twin encodes every name first), a name that
    is no str, holds a NUL or cannot be encoded as os.stat encodes names."""
    for name in names:
        if not isinstance(name, str):
            raise TypeError("names must be str")
        if b"\0" in os.fsencode(name):
            raise ValueError("embedded null byte")


def stat_names_py(dir_fd: int, names: list[str], prefix: str, file_kind: str,
                  link_kind: str) -> Stats:
    """Each of `names` lstat'ed relative to the open directory `dir_fd`, never following a
    link: (files, links, dirs, others). files: (prefix + name, (size, mtime_ns, ino,
    mode & 0o7777, kind)) of the regular files (`file_kind`) and symlinks (`link_kind`),
    in the order of `names`; links: prefix + name of the symlinks; dirs: names of the
    directories; others: names of everything else. A name gone since it was listed is
    left out; any other failure raises OSError."""
    names = list(names)
    _check_names(names)
    files: list[FileRow] = []
    links: list[str] = []
    dirs: list[str] = []
    others: list[str] = []
    add = files.append
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since it was listed
        mode = st.st_mode
        kind = mode & _IFMT
        if kind == _IFREG:
            add((prefix + name, (st.st_size, st.st_mtime_ns, st.st_ino, mode & 0o7777,
                                 file_kind)))
        elif kind == _IFLNK:
            add((prefix + name, (st.st_size, st.st_mtime_ns, st.st_ino, mode & 0o7777,
                                 link_kind)))
            links.append(prefix + name)
        elif kind == _IFDIR:
            dirs.append(name)
        else:
            others.append(name)
    return files, links, dirs, others


def read_files_py(root_fd: int, rels: list[str], sizes: list[int]) -> list[bytes]:
    """Each file's whole content. `rels` are paths under the open directory `root_fd`
    ("a/b/c"; an empty, "." or ".." part raises EINVAL); every part is opened relative
    to the one before without following a link (ELOOP), a directory once for a run of
    files in it, and a file without blocking on a FIFO; one that is not a regular file
    raises EINVAL. A file is read with one read of size + 1 bytes (`sizes` as last
    seen, each at most MAX_READ), to its end if that found it grown. The first failure
    raises OSError."""
    rels, sizes = list(rels), list(sizes)
    if len(rels) != len(sizes):
        raise ValueError("names and sizes differ in length")
    if any(not isinstance(size, int) or not 0 <= size <= MAX_READ for size in sizes):
        raise ValueError("a size out of range")
    _check_names(rels)
    out = []
    here, here_fd = "", root_fd
    try:
        for rel, size in zip(rels, sizes, strict=True):
            parts = rel.split("/")
            if any(part in ("", ".", "..") for part in parts):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), rel)
            folder = rel.rpartition("/")[0]
            try:
                if folder != here:
                    if here_fd != root_fd:
                        os.close(here_fd)
                    here, here_fd = "", root_fd
                    for part in parts[:-1]:
                        next_fd = os.open(part, _DIR_FLAGS, dir_fd=here_fd)
                        if here_fd != root_fd:
                            os.close(here_fd)
                        here_fd = next_fd
                    here = folder
                data = _read_whole(parts[-1], here_fd, size)
            except OSError as exc:  # (named by the whole path, as the C twin names it)
                raise OSError(exc.errno, exc.strerror, rel) from None
            out.append(data)
    finally:
        if here_fd != root_fd:
            os.close(here_fd)
    return out


def _read_whole(name: str, dir_fd: int, size: int) -> bytes:
    fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device in its place
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.set_blocking(fd, True)  # (O_NONBLOCK was for the open only)
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        chunks = [data]  # it grew since its size was taken: all of it
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
Written = tuple[int, int, int, int] | int


def write_new_files_py(dir_fd: int, names: list[str],
                       datas: Sequence[bytes | bytearray | memoryview],
                       modes: list[int]) -> list[Written]:
    """Create each of `names` (plain names) in the open directory `dir_fd` with O_CREAT |
    O_EXCL | O_NOFOLLOW (never through anything already there) and its mode, holding its
    bytes whole. For each, in order: its (size, mtime_ns, ino, mode & 0o7777) once
    written, or the errno that stopped it (EEXIST: something was there, left as it was;
    a failed write removes the file it made). A name with a "/", or "", "." or "..":
    EINVAL. The first failure other than EEXIST ends the batch: the names after it are
    ECANCELED, not made."""
    names, datas, modes = list(names), list(datas), list(modes)
    if not len(names) == len(datas) == len(modes):
        raise ValueError("names, datas and modes differ in length")
    if any(not isinstance(mode, int) or not 0 <= mode <= 0o7777 for mode in modes):
        raise ValueError("a mode out of range")
    _check_names(names)
    views = [memoryview(data).cast("B") for data in datas]
    out: list[Written] = []
    stopped = False
    for name, view, mode in zip(names, views, modes, strict=True):
        if stopped:
            out.append(errno.ECANCELED)
            continue
        result = errno.EINVAL if name in ("", ".", "..") or "/" in name \
            else _write_new(dir_fd, name, view, mode)
        out.append(result)
        stopped = isinstance(result, int) and result != errno.EEXIST
    return out


def _write_new(dir_fd: int, name: str, view: memoryview, mode: int) -> Written:
    try:
        fd = os.open(name, _NEW_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        return exc.errno or errno.EIO
    try:
        while view:
            view = view[os.write(fd, view):]
        st = os.fstat(fd)
    except BaseException as exc:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)  # (made just now by O_EXCL: ours)
        if isinstance(exc, OSError):
            return exc.errno or errno.EIO
        raise
    os.close(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode & 0o7777)


def pread_many_py(fds: list[int], offsets: list[int], lengths: list[int]) -> list[bytes]:
    """os.pread(fds[i], lengths[i], offsets[i]) for each i (the packed objects a checkout
    places, read in one go): fewer bytes where a file ends early; the first failure
    raises OSError."""
    fds, offsets, lengths = list(fds), list(offsets), list(lengths)
    if not len(fds) == len(offsets) == len(lengths):
        raise ValueError("fds, offsets and lengths differ in length")
    if any(not isinstance(v, int) for v in (*fds, *offsets, *lengths)):
        raise TypeError("fds, offsets and lengths must be int")
    if any(fd < 0 or fd > 0x7FFFFFFF for fd in fds) or any(off < 0 for off in offsets) or \
            any(not 0 <= ln <= MAX_READ for ln in lengths):
        raise ValueError("an fd, offset or length out of range")
    out = []
    for fd, offset, length in zip(fds, offsets, lengths, strict=True):
        chunks = []
        while length:
            chunk = os.pread(fd, length, offset)
            if not chunk:
                break  # the file ends early
            chunks.append(chunk)
            offset, length = offset + len(chunk), length - len(chunk)
        out.append(b"".join(chunks))
    return out


def cut_marks_py(run: list[FileRow], modulus: int) -> list[int]:
    """Where worktree._cuts may cut `run`: index + 1 of each (path, stat) whose path's
    CRC-32 (UTF-8, surrogateescape) is a multiple of `modulus`."""
    if not 0 < modulus <= 0xFFFFFFFF:
        raise ValueError("modulus out of range")
    crc32 = zlib.crc32
    return [i + 1 for i, (rel, _fs) in enumerate(run)
            if not crc32(rel.encode("utf-8", "surrogateescape")) % modulus]


_STATS = struct.Struct("<qqQq")  # size, mtime_ns, inode, permission bits


def run_payload_py(run: list[FileRow], after: str) -> bytes | None:
    r"""What a run's scan digest hashes after its header (worktree.ScanDigest):
    "\0".join([after, *paths]) in UTF-8 (surrogateescape), "\0", the kinds in ASCII,
    then each file's (size, mtime_ns, ino, mode) packed "<qqQq"; None when a value does
    not fit its field."""
    pack = _STATS.pack
    try:
        stats = b"".join([pack(fs[0], fs[1], fs[2], fs[3]) for _rel, fs in run])
    except struct.error:
        return None
    return b"".join([
        "\0".join([after, *[rel for rel, _fs in run]]).encode("utf-8", "surrogateescape"),
        b"\0", "".join([fs[4] for _rel, fs in run]).encode("ascii"), stats])


def copy_into_py(dst: memoryview, offset: int, src: bytes | memoryview) -> int:
    """Copy `src` into the writable buffer `dst` at `offset`; returns len(src). Refuses
    (ValueError) bytes that do not fit there. (The C twin makes large copies without
    the GIL.)"""
    n = len(src)
    if offset < 0 or offset > len(dst) or n > len(dst) - offset:
        raise ValueError("the bytes do not fit in the buffer there")
    dst[offset:offset + n] = src
    return n


ABI = 6  # what dsv/_native.c must say it offers (its ABI)


def _load() -> ModuleType | None:
    if os.environ.get("DSV_NO_NATIVE", "0") not in ("", "0"):  # to compare, or to rule
        return None  # the C module out
    try:
        from . import _native
    except ImportError:  # built without a C compiler
        return None
    # A build from older sources (an editable install not rebuilt since) is left unused.
    return _native if getattr(_native, "ABI", None) == ABI else None


_native = _load()
BUILT = _native is not None
stat_names = _native.stat_names if _native else stat_names_py
read_files = _native.read_files if _native else read_files_py
cut_marks = _native.cut_marks if _native else cut_marks_py
run_payload = _native.run_payload if _native else run_payload_py
write_new_files = _native.write_new_files if _native else write_new_files_py
pread_many = _native.pread_many if _native else pread_many_py
copy_into = _native.copy_into if _native else copy_into_py
cut_chunks = _native.cut_chunks if _native else None
"""FastCDC's cuts of a buffer (see _native.c); without the C module, dsv.chunking cuts
with pyfastcdc."""
