"""The open store: the `.dsv/` layout, its index, objects and lock, and the one publish path.

Owns finding, creating and opening a workspace's `.dsv/` (refusing unknown formats and
planted links), the store lock (whose first holder clears crash leftovers), the tree
cache, the dataset and ref lookups every operation starts from, and `commit_objects`:
the only way new objects become part of the store — publish the staged objects, then
record them in one index transaction, always under the store lock. Must never parse
command lines, print, or talk to a remote.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import fileio, refs, state, tree
from .errors import (
    CorruptObject,
    DatasetNotFound,
    DsvError,
    IndexDamaged,
    InvalidInput,
    MissingObject,
    RefError,
    StoreExists,
    StoreNotFound,
    UnsafePath,
)
from .faults import crashpoint
from .hashing import random_id
from .index import SCHEMA_VERSION, Index, is_write_failure
from .jsonio import load_bounded
from .lock import StoreLock
from .model import Dataset, Entry, Manifest, Version
from .objects import KIND_TREE, Ingest, ObjectStore, PackInfo, live_stages, remove_dead_stages
from .paths import STORE_DIR, check_relpath, is_reserved
from .reporting import Reporter

if TYPE_CHECKING:
    from .remotes.base import RemoteSpec

_KIND_WORDS = {"origin": "an origin", "cache": "a cluster cache"}


def _check_remote_row(row: dict[str, Any]) -> None:
    """A remote's row as dsv writes it (an index another hand touched may hold anything):
    else IndexDamaged, naming the remote and the cell."""
    texts = ("name", "url") + (() if row["endpoint_url"] is None else ("endpoint_url",)) \
        + (() if row["profile"] is None else ("profile",))
    wrong = [c for c in texts if type(row[c]) is not str]
    if row["kind"] not in _KIND_WORDS:
        wrong.append("kind")
    wrong += [c for c in ("ttl", "max_size")
              if row[c] is not None and (type(row[c]) not in (int, float) or row[c] < 0)]
    if wrong:
        raise IndexDamaged(f"the index's row for remote {row['name']!r} is damaged (its "
                           f"{', '.join(wrong)})", hint="recreate the index with `dsv index "
                           "rebuild` (it takes the remotes from .dsv/state.json)")


STORE_FORMAT = 3
"""The store format this dsv writes: 2 = 1 plus chunked files (tree rows naming a chunk
list); 3 = 2 with an index of schema 10 or later (object rows name their pack by number:
a dsv that reads format 2 would take the numbers for pack ids and every packed object
for lost). A store is created at 3; an older one is raised to 3 when this dsv opens it
and can write its index, just before the index is migrated (see Core.__init__). One
whose index cannot be written is read as it is."""
READ_STORE_FORMATS = (1, 2, 3)
DATASET_ID_LEN = 8
VERSION_ID_LEN = 10

T = TypeVar("T")


def find_store(start: Path, exact: bool = False) -> Path:
    """The workspace root: the nearest directory at or above `start` holding `.dsv/`
    (with `exact`, `start` itself must be the workspace or its `.dsv/`)."""
    if exact:
        return _store_root_from(start)
    here = start.resolve()
    for candidate in (here, *here.parents):
        if (candidate / STORE_DIR / "config.json").is_file():
            return candidate
    raise StoreNotFound(f"no dsv store in {here} or any parent directory",
                        hint="create one with `dsv init`")


def _store_root_from(path: Path) -> Path:
    path = path.resolve()
    if path.name == STORE_DIR and (path / "config.json").is_file():
        return path.parent
    if (path / STORE_DIR / "config.json").is_file():
        return path
    raise StoreNotFound(f"{path} is not a dsv store", hint="create one with `dsv init`")


def create_layout(root: Path) -> None:
    """Make an empty store in `root/.dsv/` (config.json last: a store is only found once
    it is complete)."""
    dsv_dir = root / STORE_DIR
    if (dsv_dir / "config.json").exists():
        raise StoreExists(f"{dsv_dir} already exists")
    root.mkdir(parents=True, exist_ok=True)
    dsv_dir.mkdir(exist_ok=True)
    (dsv_dir / "tmp").mkdir(exist_ok=True)
    ObjectStore.create_layout(dsv_dir / "objects")
    index = Index(dsv_dir / "index.db")
    index.create_schema()
    index.close()
    write_config(dsv_dir, STORE_FORMAT)


def write_config(dsv_dir: Path, fmt: int) -> None:
    """Write `.dsv/config.json` (atomically) saying the store has format `fmt`."""
    fileio.atomic_write_bytes(dsv_dir / "config.json", json.dumps(
        {"format": fmt, "hash": "blake3"}, indent=2).encode() + b"\n")


SEALED_BATCH = 100_000
"""Objects whose packs `commit_sealed` records in one index transaction. Each
transaction rewrites every index page its random ids land on: a million objects
recorded 20,000 at a time took 22 s, 100,000 at a time 13-15 s (measured); the
ingest holds some 100 bytes an object until then."""


class Core:
    """One open store: `index`, `objects`, the lock, and lookups shared by operations."""

    def __init__(self, root: Path, reporter: Reporter | None = None) -> None:
        self.root = root.resolve()
        self.dsv_dir = self.root / STORE_DIR
        self.tmp_root = self.dsv_dir / "tmp"
        self.reporter = reporter or Reporter()
        self.format = check_format(self.dsv_dir)
        check_store_files(self.dsv_dir)
        if not (self.dsv_dir / "index.db").is_file():
            raise StoreNotFound(f"{self.dsv_dir} has lost its index",
                                hint="recreate it from the objects with `dsv index rebuild`")
        self.index = Index(self.dsv_dir / "index.db")
        schema = self.index.schema_version()
        if schema is None:
            raise StoreNotFound(f"{self.dsv_dir}/index.db is empty or damaged",
                                hint="recreate it from the objects with `dsv index rebuild`")
        # (idempotent: adds what older stores lack. An index that can only be read is
        # read as it is where that works: schemas 8 and 9 only dropped indexes and
        # added a count that reads never use, and schema 10's pack numbers are read
        # through a view, see Index._view_unnumbered.)
        # The format first: a crash between the two leaves a store older dsvs refuse and
        # this one migrates on its next open, never a migrated index they would misread.
        # Where the migration cannot be written (a full disk), a store it need not read
        # is read as it is, its index as one that cannot be written.
        try:
            if self.format < STORE_FORMAT and not self.index.read_only:
                write_config(self.dsv_dir, STORE_FORMAT)
                self.format = STORE_FORMAT
            if schema < SCHEMA_VERSION and not (self.index.read_only and schema >= 7):
                self.index.create_schema()
        except (OSError, sqlite3.Error) as exc:
            if schema < 7 or self.index.read_only or not is_write_failure(exc):
                raise
            self.index.keep_schema(exc)
        self.index.on_change = lambda: state.save(self.index, self.dsv_dir)
        self.objects = ObjectStore(self.dsv_dir / "objects", self.index, self.tmp_root)
        self.lock = StoreLock(self.dsv_dir / "lock")
        self.refs = refs.RefStore(self.index)
        self._trees = _TreeCache(TREE_CACHE_BYTES)
        self.fault_trees: Callable[[str], None] | None = None
        """Brings the trees under a root tree that a fetch left on a remote (installed
        by the layer that opens remotes; see sync.fetch.fault_in)."""
        self._faulting = threading.Lock()

    @contextmanager
    def side_objects(self) -> Iterator[tuple[ObjectStore, Index]]:
        """The same objects, read through a connection of their own to the index, and
        that connection: for a thread that reads objects and records what it placed
        while this one downloads (a fresh checkout places one chunk of files while it
        downloads the next). It sees what was committed. An index that can only be read
        (see Index._connect_read_only: no other connection may share it) is shared
        instead (`self.objects`, `self.index`); this process then writes nothing to it."""
        if self.index.read_only:
            yield self.objects, self.index
            return
        index = Index(self.index.path)
        objects = ObjectStore(self.dsv_dir / "objects", index, self.tmp_root)
        try:
            yield objects, index
        finally:
            objects.close()
            index.close()

    def close(self) -> None:
        """Release the lock, then close the objects (dropping anything staged) and index."""
        self.lock.release()
        self.objects.close()
        self.index.close()

    # ---- the lock and the publish path -------------------------------------------------
    @contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """Hold the store lock; the first holder also clears what dead writers left."""
        first = not self.lock.held
        self.lock.acquire(what, on_wait=self.reporter.notice)
        try:
            if first:
                fileio.remove_tmp_files(self.tmp_root)
                remove_dead_stages(self.tmp_root)
            yield
        finally:
            self.lock.release()

    @contextmanager
    def locked_if_free(self, what: str) -> Iterator[bool]:
        """Hold the store lock if nobody else does right now; yields whether it is held
        (for work that may be skipped, such as remembering hashes)."""
        got = self.lock.try_acquire(what)
        try:
            yield got
        finally:
            if got:
                self.lock.release()

    def commit_objects(self, ingest: Ingest, record: Callable[[], T] | None = None,
                       crash: str | None = None,
                       retire: Mapping[str, Iterable[str]] | None = None,
                       index: Index | None = None) -> T | None:
        """Make `ingest`'s objects part of the store: publish them (fsynced, renamed into
        `objects/`), then in one index transaction record their packs and run `record`
        (the rows that name them). Packs in `retire` (gc's repacking: their live objects
        are in the new packs; pack id → the oids whose rows name it) leave the index in
        the same transaction.

        Under the store lock, so `gc` never sees a published object the index has not
        learned of; a crash between the two steps leaves only unreferenced objects, which
        the next `gc` removes. `index`: the connection to record them through, where not
        `self.index` (a thread of a checkout that records while this one downloads, see
        `side_objects`)."""
        index = self.index if index is None else index
        packs = self.publish_objects(ingest, crash)
        with index.transaction():
            for pack_id, oids in (retire or {}).items():
                # first: an object's row names the first pack holding it
                index.delete_pack(pack_id, oids)
            index.add_packs(packs)
            result = record() if record is not None else None
        return result

    def publish_objects(self, ingest: Ingest, crash: str | None = None) -> list[PackInfo]:
        """The first half of `commit_objects`: `ingest`'s objects published, their packs
        returned for the caller to record, under the store lock it holds until then (a
        fresh checkout records several chunks' packs at once: see checkout._Unrecorded)."""
        if not self.lock.held:
            raise DsvError("bug in dsv: objects published without the store lock")
        packs = ingest.publish()
        if crash:
            crashpoint(crash)
        return packs

    def commit_sealed(self, ingest: Ingest) -> None:
        """Make the packs `ingest` has sealed so far part of the store (as commit_objects
        does, recording no rows that name them), once they hold SEALED_BATCH objects: a
        long download or commit stays bounded in memory, and what it publishes early is,
        until its refs move, what a killed one would leave (unreferenced objects, which
        `gc` removes)."""
        if not self.lock.held:
            raise DsvError("bug in dsv: objects published without the store lock")
        if ingest.sealed_objects < SEALED_BATCH:
            return
        packs = ingest.publish_sealed()
        if packs:
            with self.index.transaction():
                self.index.add_packs(packs)

    def writers_alive(self) -> int:
        """Other live processes with a staging directory (see objects.live_stages)."""
        return live_stages(self.tmp_root, self.objects.staging_dir)

    # ---- trees -------------------------------------------------------------------------
    def read_tree(self, oid: str) -> bytes:
        """A tree object's bytes (cached: trees are immutable). The root tree of a
        version fetched without its trees is first brought, and validated, by
        `fault_trees`: even when an object of that id is here (a file's bytes may be a
        hostile tree that nothing validated)."""
        data = self._trees.get(oid)
        if data is None:
            if self.fault_trees is not None and self.index.is_unfetched_root(oid):
                with self._faulting:  # (one fetch of a root, whatever thread asks)
                    self.fault_trees(oid)
            data = self.objects.read(oid)
            self._trees.put(oid, data)
        return data

    def read_trees_ahead(self, wanted: str, later: Callable[[], list[str]]) -> None:
        """Read tree `wanted` and those of `later()` (the trees a walk reads next) into
        the tree cache at once, when `wanted` is not there already (`tree.iter_files`'s
        `read_ahead`): one lookup and one read for a directory's shards instead of two
        waits for the GIL each. The root of a version fetched without its trees is left
        to `read_tree`, as is anything not packed here or damaged."""
        if self._trees.get(wanted) is not None:
            return
        oids = [wanted, *(oid for oid in later() if self._trees.get(oid) is None)]
        if self.fault_trees is not None and len(oids) > 1:
            roots = self.index.unfetched_roots()
            oids = [oid for oid in oids if oid not in roots]
        if len(oids) < 2:
            return
        try:
            found = self.objects.read_many_packed(oids, self._trees.budget)
        except (OSError, DsvError):   # (a pack gone or unreadable: each read reports it)
            return
        for oid, data in found.items():
            self._trees.put(oid, data)

    def tree_writer(self, ingest: Ingest) -> Callable[[str, bytes], None]:
        """A `tree.build_tree` sink: new trees go into `ingest` and the tree cache."""
        def store(oid: str, data: bytes) -> None:
            self._trees.put(oid, data)
            ingest.add(oid, KIND_TREE, data)
        return store

    def blobs(self, entries: Iterable[Entry]) -> dict[str, int]:
        """The objects that hold the bytes of `entries` (oid → size): a file's or link's
        blob, or each chunk of a chunked file (its chunk list read here)."""
        out: dict[str, int] = {}
        for entry in entries:
            if entry.chunks:
                out.update(self.chunks(entry).chunks)
            else:
                out[entry.oid] = entry.size
        return out

    def chunks(self, entry: Entry) -> tree.ChunkList:
        """The chunk list of a chunked file's entry."""
        return tree.read_chunks(self.read_tree, entry.chunks, entry.oid, entry.size)

    def holds(self, entry: Entry) -> bool:
        """Whether every object holding the bytes of `entry` is in the store."""
        try:
            return not any(self.objects.lacking(self.blobs([entry])))
        except (MissingObject, CorruptObject):
            return False  # (its chunk list is not here, or damaged)

    def manifest(self, version: Version, prefix: str = "") -> Manifest:
        """The flat manifest of `version` (only what lies under `prefix`, if given)."""
        root = version.tree
        if prefix:
            found = tree.find(version.tree, self.read_tree, prefix)
            if found is None:
                return {}
            if found[1] != tree.DIR:
                return {prefix: Entry(*found[1:])}
            root = found[4]
        return tree.flatten(root, self.read_tree, prefix)

    # ---- ids ---------------------------------------------------------------------------
    def new_version_id(self) -> str:
        """A random version id no version of this store has."""
        vid = random_id(VERSION_ID_LEN)
        while self.index.version(vid) is not None:
            vid = random_id(VERSION_ID_LEN)
        return vid

    def new_dataset_id(self) -> str:
        """A random dataset id that is neither an id nor a name here."""
        ds_id = random_id(DATASET_ID_LEN)
        while self.index.dataset_by("id", ds_id) or self.index.dataset_by("name", ds_id):
            ds_id = random_id(DATASET_ID_LEN)
        return ds_id

    # ---- datasets and refs -------------------------------------------------------------
    def dataset_by_id(self, ds_id: str) -> Dataset | None:
        """The dataset with id `ds_id`, or None if there is none."""
        return self.index.dataset_by("id", ds_id)

    def dataset(self, key: str) -> Dataset:
        """A dataset by id or name."""
        return refs.find_dataset(self.index, key)

    def dataset_root(self, ds: Dataset) -> Path:
        """A dataset's working directory (InvalidInput if it has none)."""
        if ds.path is None:
            raise InvalidInput(f"dataset {ds.name!r} has no working directory",
                               hint=f"bind one with `dsv datasets update {ds.name} --path DIR`")
        return self.root if ds.path == "." else self.root / ds.path

    def dataset_at(self, cwd: str | os.PathLike[str] = ".") -> Dataset | None:
        """The dataset whose working directory holds `cwd` (the deepest one)."""
        here = Path(cwd).resolve()
        try:
            rel = here.relative_to(self.root).as_posix()
        except ValueError:
            return None
        best: Dataset | None = None
        best_depth = -1
        for ds in self.index.datasets():
            if ds.path is None:
                continue
            if ds.path == "." or rel == ds.path or rel.startswith(ds.path + "/"):
                depth = 0 if ds.path == "." else ds.path.count("/") + 1
                if depth > best_depth:
                    best, best_depth = ds, depth
        return best

    def pick_dataset(self, key: str | None, cwd: str | os.PathLike[str] = ".") -> Dataset:
        """The dataset named by `key`, else the one of `cwd`, else the only one."""
        if key:
            return self.dataset(key)
        here = self.dataset_at(cwd)
        if here is not None:
            return here
        all_ds = self.index.datasets()
        if len(all_ds) == 1:
            return all_ds[0]
        raise DatasetNotFound("no dataset given and none is bound to this directory",
                              hint="name one (see `dsv datasets list`), or run inside its "
                                   "directory")

    def workspace_path(self, path: str | os.PathLike[str]) -> str:
        """`path` relative to the workspace root (checked: inside it, not in a store)."""
        absolute = Path(path).resolve()
        try:
            rel = absolute.relative_to(self.root).as_posix()
        except ValueError:
            raise UnsafePath(f"{path} is outside the workspace {self.root}",
                             hint="dataset directories must be inside the workspace") from None
        if rel != "." and any(is_reserved(part) for part in rel.split("/")):
            raise UnsafePath(f"{path} is inside a store ('.dsv' is reserved for dsv)")
        if rel != ".":
            check_relpath(rel)
        return rel

    def excluded(self, ds: Dataset) -> list[str]:
        """Root-relative directories a dataset leaves out: the store and nested datasets."""
        base = "" if ds.path == "." else (ds.path or "")
        out = []
        for path in [STORE_DIR] + [d.path for d in self.index.datasets()
                                   if d.path and d.id != ds.id and d.path != "."]:
            if base == "":
                out.append(path)
            elif path.startswith(base + "/"):
                out.append(path[len(base) + 1:])
        return out

    def resolve(self, ref: str, cwd: str | os.PathLike[str] = ".") -> Version:
        """The version a ref names; a bare selector (`:v1`, `v1`) uses the cwd's dataset."""
        default = self.dataset_at(cwd)
        if ":" not in ref and default is not None:
            base = ref.split("~", 1)[0]
            is_dataset = (self.index.dataset_by("id", base) or self.index.dataset_by("name", base))
            if not is_dataset:
                ref = ":" + ref
        version = refs.resolve(self.index, refs.parse_ref(ref), default)
        version.tags = self.index.tags_of(version.id)
        return version

    def head(self, ds: Dataset) -> Version | None:
        """The version a dataset's working directory was last made to match."""
        return self.index.version(ds.head) if ds.head else None

    def version(self, vid: str) -> Version:
        """A version by its full id, with its tags."""
        found = self.index.version(vid)
        if found is None:
            raise RefError(f"no version {vid}")
        found.tags = self.index.tags_of(vid)
        return found

    # ---- remotes configured -----------------------------------------------------------
    def remote_specs(self) -> list[RemoteSpec]:
        """Every configured remote (origins and cluster caches)."""
        from .remotes.base import RemoteSpec  # here: local commands never load the backends
        rows = self.index.remotes()
        for r in rows:
            _check_remote_row(r)
        return [RemoteSpec(r["name"], r["url"], r["kind"], r["endpoint_url"], r["profile"],
                           r["ttl"], r["max_size"], bool(r["write_through"]),
                           bool(r["is_default"])) for r in rows]

    def remote_spec(self, name: str | None = None, kind: str | None = "origin") -> RemoteSpec:
        """A configured remote by name (of `kind`, unless None); without a name, the
        default remote of `kind`."""
        specs = self.remote_specs()
        if name is not None:
            for spec in specs:
                if spec.name == name and kind not in (None, spec.kind):
                    raise InvalidInput(f"{name} is {_KIND_WORDS[spec.kind]}, "
                                       f"not {_KIND_WORDS[kind]}")
                if spec.name == name:
                    return spec
            raise InvalidInput(f"no remote named {name!r}",
                               hint="`dsv remote list` shows the remotes")
        origins = [s for s in specs if s.kind == kind]
        chosen = [s for s in origins if s.is_default] or (origins if len(origins) == 1 else [])
        if not chosen:
            raise InvalidInput("no remote configured" if not origins else
                               "several remotes and none is the default",
                               hint="add one with `dsv remote add NAME URL`" if not origins else
                               "name the remote on the command line")
        return chosen[0]


def check_format(dsv_dir: Path) -> int:
    """The store's format; refuse stores written in a format this dsv does not know
    (never guess at them)."""
    try:
        config = load_bounded(fileio.read_regular(dsv_dir / "config.json", 64 << 10), 64 << 10)
        fmt = int(config.get("format", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        raise StoreNotFound(f"{dsv_dir}/config.json is unreadable",
                            hint="it must be a regular file written by dsv") from None
    if fmt not in READ_STORE_FORMATS:
        raise DsvError(f"{dsv_dir} has store format {fmt}; this dsv reads formats "
                       f"{', '.join(map(str, READ_STORE_FORMATS))}",
                       hint="use the dsv version that created it, or upgrade dsv")
    return fmt


def check_store_files(dsv_dir: Path) -> None:
    """`.dsv/` and the files dsv opens in it by name are what they seem: a directory and
    regular files, never links someone planted (SQLite and flock would follow them)."""
    for path, want in ((dsv_dir, stat.S_ISDIR), (dsv_dir / "objects", stat.S_ISDIR),
                       (dsv_dir / "tmp", stat.S_ISDIR),
                       (dsv_dir / "objects" / "packs", stat.S_ISDIR),
                       (dsv_dir / "objects" / "loose", stat.S_ISDIR),
                       (dsv_dir / "objects" / "links", stat.S_ISDIR),
                       (dsv_dir / "index.db", stat.S_ISREG), (dsv_dir / "lock", stat.S_ISREG),
                       (dsv_dir / "index.db-wal", stat.S_ISREG),
                       (dsv_dir / "index.db-shm", stat.S_ISREG)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not want(st.st_mode):
            kind = "directory" if want is stat.S_ISDIR else "regular file"
            raise UnsafePath(f"{path} is not a {kind} (a link or something else was put there)",
                             hint="remove it; dsv never follows links inside its store")
    # Loose objects lie in `loose/<xx>/`: a link there would take their reads, writes
    # and deletions out of the store (one directory read, however many objects).
    try:
        with os.scandir(dsv_dir / "objects" / "loose") as entries:
            for entry in entries:
                if len(entry.name) == 2 and not entry.is_dir(follow_symlinks=False):
                    raise UnsafePath(f"{entry.path} is not a directory (a link or something "
                                     f"else was put there)",
                                     hint="remove it; dsv never follows links inside its store")
    except (FileNotFoundError, NotADirectoryError):
        pass


TREE_CACHE_BYTES = 16 << 20
"""Bytes of tree objects a store keeps in memory (the least recently used go first): a
walk over a million-file version reads every tree once, and must not hold them all.
What repeats (the root and the directories above the paths looked up) stays; a second
walk of a version larger than the cache finds nothing of the first in it either way
(least recently used, in the same order), and reads its trees again from the packs.
At 64 MiB a million-file clone held 64 MiB of trees (tracemalloc: 12,040 objects) and
peaked at 254 MB; at 16 MiB at 210 MB; verify 100 -> 50 MB, gc 257 -> 207 MB, push 219
-> 170 MB, none slower (verify 9.87-9.92 s against 9.93-9.99 s)."""


class _TreeCache:
    """Tree objects by id, up to a byte budget, least recently used dropped first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, oid: str) -> bytes | None:
        with self._lock:
            data = self._items.get(oid)
            if data is not None:
                self._items.move_to_end(oid)
            return data

    def put(self, oid: str, data: bytes) -> None:
        with self._lock:
            if oid in self._items:
                return
            self._items[oid] = data
            self._bytes += len(data)
            while self._bytes > self.budget and len(self._items) > 1:
                _oid, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
