"""`dsv://` for fsspec: the files of any version, read-only, for pandas, pyarrow, Dask, ….

    import pandas as pd
    pd.read_csv("dsv://raw:v1/train.csv")                       # in a workspace
    pd.read_csv("dsv://raw:v1/train.csv", storage_options={"store": "/data/lab"})
    pd.read_parquet("dsv://raw:latest/part-0.parquet",
                    storage_options={"remote": "s3://bucket/prefix", "cache": "/mnt/cache"})

A path is `REF[/PATH]`: any ref (`DATASET:latest`, `:TAG`, `:VERSION`, `~N`; a bare
`DATASET` is its latest) then a path in that version. Each ref is resolved once per file
system object, so every read through it sees one version even while `latest` moves.
Files come from a store (`store=`, else found as the CLI finds it) or, with `remote=`,
straight from a remote with no store (dsv.open_remote: locators, ranged reads, the
cluster cache). Every byte is checked against its id. Registered under the protocol
`dsv` through the `fsspec.specs` entry point; fsspec is imported only here.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fsspec import AbstractFileSystem  # type: ignore[import-untyped]

from .errors import DatasetNotFound, InvalidInput, RefError, UnsafePath
from .model import FileRow, Version
from .model import Entry
from .objects import PACK_THRESHOLD
from .paths import check_relpath, resolve_link
from .tree import DIR, FILE, LINK

_TYPES = {"file": "file", "link": "link", "dir": "directory"}
_KINDS = {"file": FILE, "link": LINK, "dir": DIR}
LISTED_ROWS = 250_000
"""Entries of directory listings a file system keeps (a version never changes)."""
AHEAD_FILES = 256
AHEAD_BYTES = 4 << 20
"""Small files (and their bytes) read ahead, at most, when files of one directory of a
remote are opened one after another (the window doubles with each such open)."""
SEQUENTIAL_GAP = 4
"""An open at most this many entries after the last one in its directory counts as
reading the directory in order."""
_READING_KEPT = 1024


class DsvFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """A read-only file system over the versions of a store or a remote (see the module)."""

    protocol = "dsv"
    root_marker = ""

    def __init__(self, store: str | os.PathLike[str] | None = None, remote: str | None = None,
                 endpoint_url: str | None = None, profile: str | None = None,
                 cache: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> None:  # noqa: ANN401 - fsspec's own options
        super().__init__(**kwargs)
        if store is not None and remote is not None:
            raise InvalidInput("give dsv:// a store or a remote, not both")
        self._store_path = os.fspath(store) if store is not None else None
        self._remote = remote
        self._endpoint_url, self._profile = endpoint_url, profile
        self._cache = os.fspath(cache) if cache is not None else None
        self._stores = _Stores(self._store_path)
        self._reader: Any = None
        self._lock = threading.Lock()
        self._versions: dict[str, Version] = {}
        self._listings: OrderedDict[tuple[str, str], _Listing] = OrderedDict()
        self._listed = 0
        self._reading: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        _LIVE[id(self)] = self

    def _after_fork(self) -> None:
        """In a forked child (a DataLoader worker): the parent's remote reader (its GET
        threads do not exist here; its connections are the parent's) and its Stores
        (SQLite handles must not cross a fork) are left to the parent, and fresh ones are
        opened on first use. What was resolved and listed stays: a version never changes."""
        self._lock = threading.Lock()   # (another thread may have held it at the fork)
        self._reader = None
        self._stores = _Stores(self._store_path)

    # ---- where versions come from -------------------------------------------------------
    @contextmanager
    def _store(self) -> Iterator[Any]:
        """A Store for one operation, from a small pool: threads take one and give it
        back (a Store may serve any thread, one at a time), so a caller that runs each
        operation on a new thread (libfuse does) opens no new descriptors each time."""
        store = self._stores.take()
        try:
            yield store
        finally:
            self._stores.give(store)

    def _remote_reader(self) -> Any:  # noqa: ANN401 - dsv.RemoteReader, imported lazily
        with self._lock:
            if self._reader is None:
                from . import open_remote
                self._reader = open_remote(self._remote or "", endpoint_url=self._endpoint_url,
                                           profile=self._profile, cache=self._cache)
            return self._reader

    def _split(self, path: str) -> tuple[Version, str]:
        """(version, path in it) of a `REF[/PATH]`: the one place every path of the fsspec
        interface is read. A path is taken literally, as fsspec's memory file system and
        object stores take theirs (only trailing slashes are dropped): a `.`, `..` or
        empty component, a NUL, a reserved name or a ref that names no version names
        nothing here, FileNotFoundError (percent signs are characters like any other)."""
        path = self._strip_protocol(path)
        ref, _, rel = path.partition("/")
        if not ref:
            raise FileNotFoundError(errno.ENOENT, "dsv:// paths begin with a ref, e.g. "
                                    "dsv://raw:v1/a.csv", path)
        if rel:
            why = _no_name(rel)
            if why:
                raise FileNotFoundError(errno.ENOENT, f"no such file ({why})", path)
        try:
            return self._resolve(ref), rel
        except (RefError, DatasetNotFound, InvalidInput) as exc:
            raise FileNotFoundError(errno.ENOENT, exc.message, path) from None

    def _resolve(self, ref: str) -> Version:
        """The version `ref` names (resolved once by this object); dsv's errors if none."""
        if ":" not in ref and "~" not in ref:
            ref += ":latest"
        with self._lock:
            found = self._versions.get(ref)
        if found is None:
            if self._remote:
                found = self._remote_reader().resolve(ref)
            else:
                with self._store() as store:
                    found = store.resolve(ref)
            with self._lock:
                found = self._versions.setdefault(ref, found)
        return found

    def _rows(self, version: Version, rel: str, recursive: bool = False) -> list[FileRow]:
        try:
            if self._remote:
                return list(self._remote_reader().files(version, rel, recursive))
            with self._store() as store:
                return list(store.files(f"{version.dataset}:{version.id}", rel, recursive))
        except InvalidInput:
            raise FileNotFoundError(rel) from None

    def _listing(self, version: Version, rel: str) -> _Listing:
        """The rows of directory `rel` (a file's path: that file), kept (LISTED_ROWS)."""
        key = (version.id, rel)
        with self._lock:
            found = self._listings.get(key)
            if found is not None:
                self._listings.move_to_end(key)
                return found
        rows = self._rows(version, rel)
        found = _Listing(rows, {row.path: i for i, row in enumerate(rows)})
        with self._lock:
            if key not in self._listings:
                self._listings[key] = found
                self._listed += len(rows)
            while self._listed > LISTED_ROWS and len(self._listings) > 1:
                _key, old = self._listings.popitem(last=False)
                self._listed -= len(old.rows)
        return found

    def _row(self, version: Version, rel: str) -> FileRow | None:
        listing = self._listing(version, rel.rpartition("/")[0])
        i = listing.where.get(rel)
        return listing.rows[i] if i is not None else None

    def _ahead(self, version: Version, parent: str, listing: _Listing, i: int) -> list[Entry]:
        """The small files after entry i of a directory to read with it: none, unless
        the directory is being opened in order (then a window that doubles each time)."""
        key = (version.id, parent)
        with self._lock:
            last, window = self._reading.pop(key, (-SEQUENTIAL_GAP - 1, 0))
            in_order = last < i <= last + SEQUENTIAL_GAP
            window = min(max(1, 2 * window), AHEAD_FILES) if in_order else 0
            self._reading[key] = (i, window)
            while len(self._reading) > _READING_KEPT:
                self._reading.popitem(last=False)
        out: list[Entry] = []
        total = 0
        for row in listing.rows[i + 1:i + 1 + window]:
            if row.kind == "file" and not row.chunks and row.size <= PACK_THRESHOLD:
                total += row.size
                if total > AHEAD_BYTES:
                    break
                out.append(_entry(row))
        return out

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:  # noqa: ANN401 - fsspec passes anything
        text = os.fspath(path) if not isinstance(path, str) else path
        if text.startswith("dsv://"):
            text = text[len("dsv://"):]
        return text.rstrip("/")

    # ---- the fsspec interface ---------------------------------------------------------
    def ls(self, path: str, detail: bool = True,
           **kwargs: Any) -> list[Any]:  # noqa: ANN401 - fsspec's own options
        """A directory's entries (a file's path lists that file)."""
        path = self._strip_protocol(path)
        version, rel = self._split(path)
        ref = path.partition("/")[0]
        rows = self._listing(version, rel).rows
        out = [self._info(ref, row) for row in rows]
        return out if detail else [o["name"] for o in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:  # noqa: ANN401
        """One file's or directory's details: name, size, type, and its blake3 hash."""
        path = self._strip_protocol(path)
        version, rel = self._split(path)
        ref = path.partition("/")[0]
        if not rel:
            return {"name": ref, "size": version.size, "type": "directory",
                    "version": version.id}
        row = self._row(version, rel)
        if row is None:
            raise FileNotFoundError(path)
        return self._info(ref, row)

    @staticmethod
    def _info(ref: str, row: FileRow) -> dict[str, Any]:
        return {"name": f"{ref}/{row.path}", "size": row.size, "type": _TYPES[row.kind],
                "hash": row.oid, "mode": row.mode}

    def version(self, path: str) -> Version:
        """The version a `REF[/PATH]` names (resolved once by this object); dsv's own
        errors (RefError, DatasetNotFound, …) when it names none."""
        return self._resolve(self._strip_protocol(path).partition("/")[0])

    def readlink(self, path: str) -> str:
        """A symlink's target, as the version holds it (checked against its id)."""
        version, rel = self._split(path)
        row = self._row(version, rel) if rel else None
        if row is None or row.kind != "link":
            raise FileNotFoundError(path)
        return self._target(version, rel, row)

    def _link_of(self, version: Version, rel: str) -> str | None:
        """The target of the symlink at `rel`, None if there is none (what
        paths.resolve_link asks of each step)."""
        try:
            row = self._row(version, rel)
        except FileNotFoundError:
            return None
        return self._target(version, rel, row) if row is not None and row.kind == "link" \
            else None

    def _target(self, version: Version, rel: str, row: FileRow) -> str:
        from .tree import validate_links
        entry = _entry(row)
        if self._remote:
            reader = self._remote_reader()
            return validate_links({rel: entry}, lambda oid: reader.read_blob(oid, row.size))[rel]
        from .checkout import ensure_blobs
        with self._store() as store:
            ensure_blobs(store.core, version, [entry])
            return validate_links({rel: entry}, store.core.objects.read)[rel]

    def _open(self, path: str, mode: str = "rb",
              **kwargs: Any) -> BinaryIO:  # noqa: ANN401 - fsspec's own options
        if mode != "rb":
            raise PermissionError("dsv:// is read-only: commit new versions with dsv")
        version, rel = self._split(path)
        parent = rel.rpartition("/")[0]
        listing = self._listing(version, parent) if rel else _Listing([], {})
        i = listing.where.get(rel)
        if i is not None and listing.rows[i].kind == "link":
            # Opened as the kernel opens a link: through it (and any link on the way),
            # never out of the version.
            rel = resolve_link(rel, lambda at: self._link_of(version, at))
            parent = rel.rpartition("/")[0]
            listing = self._listing(version, parent) if rel else _Listing([], {})
            i = listing.where.get(rel)
        if i is None or listing.rows[i].kind != "file":
            raise FileNotFoundError(path)
        entry = _entry(listing.rows[i])
        opened: Any
        if self._remote:
            reader = self._remote_reader()
            ahead = self._ahead(version, parent, listing, i)
            opened = reader.open(entry, ahead)
        else:
            store = self._stores.take()  # (held while the file is open: it reads through it)
            try:
                handle = store.open_entry(version, rel, entry)
            except BaseException:
                self._stores.give(store)
                raise
            opened = io.BufferedReader(_Lending(handle, lambda: self._stores.give(store)))
        opened.size = entry.size  # (as fsspec's own files: read_block and others use it)
        return opened  # type: ignore[no-any-return]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:  # noqa: ANN401 - fsspec's own options
        """Bytes [start, end) of a file, as a Python slice takes them: a negative bound
        counts from the end, bounds past the end stop there, and an empty range is b""."""
        with self.open(path, "rb") as f:
            first, stop, _step = slice(start, end).indices(f.size)
            if stop <= first:
                return b""
            f.seek(first)
            return bytes(f.read(stop - first))

    def ukey(self, path: str) -> str:
        """What identifies a file's contents: its blake3."""
        return str(self.info(path)["hash"])


_LIVE: weakref.WeakValueDictionary[int, DsvFileSystem] = weakref.WeakValueDictionary()
"""Every file system of this process (by id: fsspec's hash and == are by options), told
when the process forks."""


def _forked() -> None:
    for fs in list(_LIVE.values()):
        fs._after_fork()


os.register_at_fork(after_in_child=_forked)


@dataclass(frozen=True)
class _Listing:
    """A directory's rows, in order, and where each path is among them."""

    rows: list[FileRow]
    where: dict[str, int]


def _no_name(rel: str) -> str | None:
    """Why the path `rel` in a version can name no file (None if it can)."""
    if "\0" in rel:
        return "a path with NUL names no file"
    for part in rel.split("/"):
        if part in (".", "..") or not part:
            return f"{repr(part) if part else '//'} names no file: dsv:// paths are " \
                   f"taken literally"
    try:
        check_relpath(rel)
    except UnsafePath as exc:
        return exc.message
    return None


def _entry(row: FileRow) -> Entry:
    return Entry(_KINDS[row.kind], row.mode, row.size, row.oid, row.chunks)


class _Stores:
    """Open Stores of one store path, lent out one operation (or one open file) at a
    time; at most KEEP idle ones stay open."""

    KEEP = 4

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def take(self) -> Any:  # noqa: ANN401 - dsv.Store, imported lazily
        with self._lock:
            if self._idle:
                return self._idle.pop()
        from .store import Store, find_store
        where = self._path or os.environ.get("DSV_DIR")
        return Store(find_store(Path(where or "."), bool(where)))

    def give(self, store: Any) -> None:  # noqa: ANN401 - dsv.Store
        with self._lock:
            if len(self._idle) < self.KEEP:
                self._idle.append(store)
                return
        store.close()


class _Lending(io.RawIOBase):
    """A file of a store, giving the Store it reads through back when it is closed."""

    def __init__(self, inner: BinaryIO, release: Callable[[], None]) -> None:
        super().__init__()
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def readable(self) -> bool:
        """Always: a reader."""
        return True

    def seekable(self) -> bool:
        """Always."""
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - any writable buffer
        """Fill `buffer` from the file."""
        data = self._inner.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move in the file."""
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        """Where the next read starts."""
        return self._inner.tell()

    def close(self) -> None:
        """Close the file and give its Store back (once)."""
        if self._release is not None:
            release, self._release = self._release, None
            try:
                self._inner.close()
            finally:
                release()
        super().close()
