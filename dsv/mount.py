"""`dsv mount`: one version as a read-only FUSE file system, read lazily.

Listing a directory reads only its tree (through the store, or through locators from a
remote with no store); a file's bytes are read on first read, by range for chunked
files, checked against their ids, and kept in the store or the cluster cache (what
`dsv.fs.DsvFileSystem` does, which this module serves over FUSE). A file that fails its
check reads as EIO, never as other bytes. The binding is mfusepy (libfuse 3 or 2 through
ctypes); where FUSE is missing, mounting fails with one line.

`mount` returns once the file system answers (the FUSE loop runs in a child process,
in its own session, until `unmount`); `serve` runs it in the foreground.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

from .errors import DsvError
from .fileio import tell
from .mounting import FuseUnavailable, end_with, fuse_module, spawn
from .mounting import unmount as unmount  # (the CLI's `dsv umount`)

ENTRIES_KEPT = 200_000
"""Entries of directory listings a mount keeps in memory, over all the directories it
keeps (a version never changes under it), about 40 MB; the directory in use is kept
whatever its size. (A bound by directories let a `find` over a million files hold them
all, as fsspec's dicts: 260 MB for 200,000.)"""


class _Node(NamedTuple):
    """What a mount keeps of a directory entry: its kind (fsspec's `type`), size and mode."""

    kind: str
    size: int
    mode: int


_TOP = _Node("directory", 0, 0o755)
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _options(store: str | None, remote: str | None, endpoint_url: str | None,
             profile: str | None, cache: str | None) -> dict[str, Any]:
    """The file system's options: the remote, or the store found now, as an absolute
    path (libfuse moves the serving process to `/`)."""
    if remote:
        return {"remote": remote, "endpoint_url": endpoint_url, "profile": profile,
                "cache": cache or os.environ.get("DSV_CACHE") or None}
    from .core import find_store
    where = store or os.environ.get("DSV_DIR")
    return {"store": str(find_store(Path(where or "."), bool(where)).absolute())}


def _filesystem(opts: dict[str, Any]) -> Any:  # noqa: ANN401 - fsspec's class
    from .fs import DsvFileSystem
    return DsvFileSystem(skip_instance_cache=True, **opts)


def mount(ref: str, directory: str | os.PathLike[str], store: str | None = None,
          remote: str | None = None, endpoint_url: str | None = None,
          profile: str | None = None, cache: str | None = None) -> str:
    """Mount the version `ref` names read-only at `directory` (in the background) and
    return the version id, once the file system answers. From the store (`store`, else
    the one found from here) or, with `remote`, straight from a remote."""
    fuse_module()
    opts = _options(store, remote, endpoint_url, profile, cache)
    version = _filesystem(opts).version(_ref_path(ref))
    spawn(f"{version.dataset}:{version.id}", directory, opts.get("store"), remote,
          endpoint_url, profile, opts.get("cache"))
    return str(version.id)


def _ref_path(ref: str) -> str:
    return ref if (":" in ref or "~" in ref) else f"{ref}:latest"


def serve(ref: str, directory: str | os.PathLike[str], store: str | None = None,
          remote: str | None = None, endpoint_url: str | None = None,
          profile: str | None = None, cache: str | None = None,
          ready_fd: int | None = None, lifeline_fd: int | None = None) -> None:
    """Run the FUSE file system of `ref` at `directory` in the foreground, until it is
    unmounted; "ready" (or the error) is written to `ready_fd` once it answers. With
    `lifeline_fd`, it is unmounted once that pipe has no writer left (`end_with`)."""
    try:
        fuse = fuse_module()
        fs = _filesystem(_options(store, remote, endpoint_url, profile, cache))
        version = fs.version(_ref_path(ref))
        ops = _operations(fuse)(fs, f"{version.dataset}:{version.id}", version, ready_fd)
    except DsvError as exc:
        tell(ready_fd, f"{exc.message}")
        raise
    if lifeline_fd is not None:
        end_with(lifeline_fd, directory)
    try:
        fuse.FUSE(ops, str(directory), foreground=True, ro=True, nothreads=False,
                  fsname=f"dsv:{version.dataset}:{version.id}", default_permissions=True)
    except RuntimeError as exc:
        tell(ready_fd, f"cannot mount at {directory}: {exc} (is /dev/fuse usable here?)")
        raise FuseUnavailable(f"cannot mount at {directory}: {exc}") from None


def _operations(fuse: Any) -> type:  # noqa: ANN401 - mfusepy is untyped
    """The FUSE operations class (built on first use: mfusepy is imported only then)."""

    class VersionFiles(fuse.Operations):  # type: ignore[misc]
        """One version's files: directories from trees, bytes read on demand."""

        use_ns = True

        def __init__(self, fs: Any, ref: str, version: Any,  # noqa: ANN401
                     ready_fd: int | None) -> None:
            self.fs, self.ref, self.ready_fd = fs, ref, ready_fd
            # (run by hand with --foreground, no `dsv mount` waiting on it: its stderr is
            # the user's terminal, told why each read that fails gets EIO)
            self.tell_failures = ready_fd is None
            stamp = int((version.committed or version.created) * 1e9)
            self.times = {"st_mtime": stamp, "st_ctime": stamp, "st_atime": stamp}
            self.uid, self.gid = os.getuid(), os.getgid()
            self.dirs: OrderedDict[str, dict[str, _Node]] = OrderedDict()
            self.kept = 0   # (entries in `dirs`)
            # (no attribute may take an operation's name: `self.lock` hid FUSE's `lock`,
            # which each close then called, failing with a logged traceback)
            self._mutex = threading.Lock()
            self.files: dict[int, tuple[threading.Lock, Any]] = {}
            self.numbers = itertools.count(1)

        def init(self, path: str) -> None:
            tell(self.ready_fd, "ready")
            self.ready_fd = None

        def _listing(self, rel: str) -> dict[str, _Node]:
            with self._mutex:
                found = self.dirs.get(rel)
                if found is not None:
                    self.dirs.move_to_end(rel)
                    return found
            entries = self.fs.ls(f"{self.ref}/{rel}" if rel else self.ref, detail=True)
            found = {e["name"].rpartition("/")[2]: _Node(e["type"], e["size"], e.get("mode", 0))
                     for e in entries}
            del entries
            with self._mutex:
                old = self.dirs.pop(rel, None)   # (listed by two threads at once)
                self.kept += len(found) - (len(old) if old is not None else 0)
                self.dirs[rel] = found
                while self.kept > ENTRIES_KEPT and len(self.dirs) > 1:
                    self.kept -= len(self.dirs.popitem(last=False)[1])
            return found

        def _entry(self, path: str) -> _Node | None:
            rel = path.strip("/")
            if not rel:
                return _TOP
            # Each directory on the way, from the top (a loop: a path may be 2,048 deep).
            *above, name = rel.split("/")
            parent = ""
            for part in above:
                entry = self._listing(parent).get(part)
                if entry is None or entry.kind != "directory":
                    return None
                parent = f"{parent}/{part}" if parent else part
            return self._listing(parent).get(name)

        def _guard(self, call: Any) -> Any:  # noqa: ANN401
            try:
                return call()
            except fuse.FuseOSError:
                raise
            except FileNotFoundError:
                raise fuse.FuseOSError(errno.ENOENT) from None
            except Exception as exc:  # damage, an unreachable origin: the reader gets EIO
                if self.tell_failures:
                    why = exc.message if isinstance(exc, DsvError) else f"{exc!r}"
                    print(f"dsv mount: a read failed with EIO: {why}", file=sys.stderr,
                          flush=True)
                raise fuse.FuseOSError(errno.EIO) from None

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            entry = self._guard(lambda: self._entry(path))
            if entry is None:
                raise fuse.FuseOSError(errno.ENOENT)
            kind = entry.kind
            if kind == "directory":
                mode, links = stat.S_IFDIR | 0o555, 2
            elif kind == "link":
                mode, links = stat.S_IFLNK | 0o777, 1
            else:
                mode = stat.S_IFREG | (0o555 if entry.mode & 0o100 else 0o444)
                links = 1
            return {"st_mode": mode, "st_nlink": links, "st_size": entry.size,
                    "st_uid": self.uid, "st_gid": self.gid, **self.times}

        def readdir(self, path: str, fh: int) -> list[str]:
            rel = path.strip("/")
            return [".", ".."] + sorted(self._guard(lambda: self._listing(rel)))

        def readlink(self, path: str) -> str:
            return str(self._guard(lambda: self.fs.readlink(f"{self.ref}/{path.strip('/')}")))

        def open(self, path: str, flags: int) -> int:
            if flags & _WRITES:
                raise fuse.FuseOSError(errno.EROFS)
            handle = self._guard(lambda: self.fs.open(f"{self.ref}/{path.strip('/')}"))
            number = next(self.numbers)
            with self._mutex:
                self.files[number] = (threading.Lock(), handle)
            return number

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            lock, handle = self.files[fh]

            def read() -> bytes:
                with lock:
                    handle.seek(offset)
                    return bytes(handle.read(size))
            return bytes(self._guard(read))

        def release(self, path: str, fh: int) -> int:
            with self._mutex:
                _lock, handle = self.files.pop(fh, (None, None))
            if handle is not None:
                handle.close()
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 1 << 20, "f_frsize": 1 << 20, "f_blocks": 0, "f_bfree": 0,
                    "f_bavail": 0, "f_namemax": 255}

    return VersionFiles
