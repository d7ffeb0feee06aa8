"""An opened remote: its backend, its marker, and the store's record of what it holds.

Owns connecting (the `dsv-remote.json` marker and its format), refreshing the
`remote_*` tables from the remote's pack indexes (each must hash to its pack's name;
a bad one is ignored with a warning), reading its refs, and the cluster caches a store
uses. Must never decide what to send or which refs to move.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from dataclasses import dataclass
from collections.abc import Callable, Container, Iterable, Iterator
from functools import partial
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

from ..core import Core
from ..errors import AmbiguousRef, CorruptObject, DatasetNotFound, InvalidInput, RefError
from ..hashing import is_hash
from ..jsonio import load_bounded
from ..model import LATEST, Version
from ..objects import PackEntry, parse_pack_index
from ..records import is_id
from ..remotes import layout
from ..remotes.connect import open_backend
from ..remotes.base import (MAX_GET_BYTES, MAX_REF_BYTES, Backend, NotFound, RemoteError,
                            RemoteRefused, RemoteSpec, check_outside_stores)
from ..remotes.cache import ClusterCache
from ..remotes.layout import (REMOTE_MARKER, RemoteRef)


WORKERS = 8
T = TypeVar("T")
R = TypeVar("R")


class Remote:
    """One configured remote, opened: its backend, and the store's record of it."""

    def __init__(self, core: Core, spec: RemoteSpec, backend: Backend | None = None) -> None:
        self.core = core
        self.spec = spec
        self.name = spec.name
        self.backend: Backend = backend if backend is not None else open_backend(spec)
        self.format = layout.REMOTE_FORMAT  # as its marker says, once connected
        self.scope: list[str] | None = core.index.remote_scope(spec.name)
        """The datasets this store reads of the remote (None: every one). Honoured only
        where the remote keeps complete catalogs (format 3); else everything is read."""
        self.widened = False
        """Whether a lacking picture made this store read every pack index (`widen`)."""
        self.connected = self.refreshed = False
        """Whether `connect` and `refresh` went through (for `ready`)."""
        self.ignored_refs: set[str] = set()
        """Refs read and ignored as damaged or hostile (each with a warning)."""

    def ready(self) -> None:
        """`connect` and `refresh`, unless this Remote did both already (see
        `one_opening`)."""
        if not self.connected:
            self.connect()
        if not self.refreshed:
            self.refresh()

    def connect(self, must_exist: bool = True) -> None:
        """Fail fast if unreachable; with `must_exist`, also if it is not a dsv remote."""
        self.connected = False
        self.backend.check_reachable()
        try:
            marker = load_bounded(self.backend.get(REMOTE_MARKER, max_size=MAX_REF_BYTES),
                                  MAX_REF_BYTES)
        except NotFound:
            if must_exist and not self.spec.is_s3 and not os.path.isdir(self.spec.url):
                raise RemoteError(f"remote directory {self.spec.url} does not exist",
                                  hint="check the path (is the volume mounted?)") from None
            if must_exist:
                raise RemoteError(f"{self.spec.url} is not a dsv remote (nothing was pushed "
                                  f"to it yet)", hint="push to it first, or check the URL") \
                    from None
            self.backend.write_ref(REMOTE_MARKER, layout.marker_body(), None)
            self.format = layout.REMOTE_FORMAT
            self.connected = True
            return
        except ValueError:
            raise RemoteError(f"{self.spec.url}/{REMOTE_MARKER} is unreadable") from None
        self.format = layout.marker_format(self.spec.url, marker)
        self.connected = True

    def raise_format(self, to: int) -> None:
        """Raise the remote's format to `to` (by compare-and-swap of its marker): a
        format-1 remote becomes 2 before a gc deletes anything (a dsv that knows only
        format 1 takes no push lease); one whose catalogs gc wrote becomes 3; one a push
        sends its first chunk list becomes 4 (a dsv that knows only 3 would take a chunked
        file's row for damage)."""
        got = self.backend.read_ref(REMOTE_MARKER)
        if got is None:
            return
        try:
            fmt = load_bounded(got[0], MAX_REF_BYTES).get("format")
        except (ValueError, AttributeError):
            return
        if isinstance(fmt, int) and fmt < to:
            if self.backend.write_ref(REMOTE_MARKER, layout.marker_body(to), got[1]) is None:
                raise RemoteError(f"{REMOTE_MARKER} on {self.name} changed meanwhile; "
                                  f"nothing was changed", hint="run the command again")
            self.format = to

    @property
    def scoped(self) -> list[str] | None:
        """The datasets reads are limited to, if they can be (complete catalogs, and no
        reason found to doubt them)."""
        return self.scope if self.format >= layout.CATALOG_FORMAT and not self.widened \
            else None

    def widen(self) -> bool:
        """A store that reads only some datasets found its picture lacking (a catalog
        that is not whole: an older dsv pushed, a maintainer raced a push, a pack went):
        read every pack index once, as a store reading everything does. False if the
        picture was whole already (nothing more to read)."""
        if self.scoped is None:
            return False
        self.core.reporter.notice(f"warning: the catalogs of {self.name} do not name "
                                   f"everything these datasets need; reading all of its "
                                   f"pack indexes (`dsv verify --remote --repair` mends "
                                   f"the catalogs)")
        self.widened = True
        self.refresh()
        return True

    def refresh(self, datasets: list[str] | None = None) -> None:
        """Bring the store's picture of the remote's packs up to date (list `index/` and
        `packs/`; read each new pack index, which must hash to its pack's name). After a
        remote gc (its generation in `gc.json` changed) the picture is read afresh. A
        store that reads only some datasets lists their catalogs instead, and reads only
        the indexes they name, and those of the packs a push of this store began to
        upload and never recorded (`Index.sending`: killed before its catalogs went up,
        they are in none; found, they are not sent again).

        With `datasets` (a push from a store that reads every dataset), the listings are
        the same, but of the new indexes only those are read that these datasets'
        catalogs name, or that the store began to upload: a push of one dataset to a
        remote shared by many reads what that dataset needs. The others stay new for the
        next refresh without `datasets` (a fetch)."""
        self.refreshed = False
        if self.scoped is not None:
            self._refresh_scoped(self.scoped)
            self.refreshed = True
            return
        index = self.core.index
        begun = self._begun()
        generation = self.gc_generation()
        catalogs = self.list_catalogs(datasets) \
            if self.format >= layout.CATALOG_FORMAT and datasets is not None else None
        listed = {pid: size for key, size in self.backend.list(layout.INDEX)
                  if (pid := layout.index_id_of_key(key)) is not None and is_hash(pid)}
        # An index whose pack is not there (a gc deleted it under a push that was
        # stopped, say) names nothing a reader can read.
        whole = {pid for key, _size in self.backend.list(layout.PACKS)
                 if (pid := layout.pack_id_of_key(key)) is not None}
        listed = {pid: size for pid, size in listed.items() if pid in whole}
        known = index.remote_packs(self.name)
        new = [p for p in listed if p not in known]
        gone = [p for p in known if p not in listed]
        reset = bool(gone) or generation != index.remote_gc_generation(self.name)
        if reset:
            # Packs went (repacked by another client, replaced by a repair, deleted by a
            # gc): their objects may be in packs known already, whose rows named the gone
            # pack first. Read every index again rather than lose an object from the
            # picture, and forget the loose objects (a gc may have deleted some).
            new, gone = list(listed), list(known)
        if catalogs is not None:
            named = set().union(begun, *catalogs.values())
            new = [p for p in new if p in named]

        index.stage_remote_packs(self.name, self._read_new(new, listed))  # (no lock)
        with index.transaction():
            # (first: an object's row names the first pack holding it)
            index.forget_remote_packs(self.name, gone)
            if reset:  # the remote lost data (or was reset): trust nothing we remember of it
                index.forget_remote_loose(self.name)
                index.forget_catalogs(self.name)
            index.add_staged_remote_packs()
            for ds, packs in (catalogs or {}).items():
                index.set_catalog(self.name, ds, packs, replace=True)
            index.set_remote_gc_generation(self.name, generation)
            index.forget_sending(self.name, begun)   # (listed and read, or not there)
        self.refreshed = True

    def _begun(self) -> set[str]:
        """The packs a push of this store began to upload here (`Index.sending`): only
        ids that are hashes (the index is a file another hand may have touched; an id
        becomes a key)."""
        return {p for p in self.core.index.sending(self.name) if is_hash(p)}

    def _read_new(self, packs: list[str], sizes: dict[str, int]
                  ) -> Iterator[tuple[str, list[PackEntry], int]]:
        """`_read_indexes` of `packs`, through the multi-pack indexes a push wrote
        (`midx/`) where MULTI_MIN_PACKS or more are new: those that name one of them
        first are read (one LIST, one GET each), then the index files of the rest. Not
        for a store reading some datasets: `midx/` grows with the whole bucket."""
        covered: set[str] = set()
        if len(packs) >= layout.MULTI_MIN_PACKS:
            for found in self._read_multi(set(packs)):
                if found[0] not in covered:
                    covered.add(found[0])
                    yield found
        yield from self._read_indexes([p for p in packs if p not in covered], sizes)

    def _read_multi(self, wanted: set[str]) -> Iterator[tuple[str, list[PackEntry], int]]:
        """The entries of the packs of `wanted` that the multi-pack indexes naming one of
        them hold (each index checked against its pack id, as an index file is; a damaged
        multi-pack index is ignored with a warning, its packs read one by one)."""
        keys = [named for key, size in self.backend.list(layout.MULTI_INDEX)
                if (named := layout.multi_index_of_key(key)) is not None
                and named[0] in wanted and size <= layout.MAX_MULTI_BYTES]

        def read(named: tuple[str, str]) -> list[tuple[str, list[PackEntry], int]]:
            try:
                return self.read_multi_index(named, wanted)
            except NotFound:
                return []   # (deleted since the listing: a gc or maintainer went by)
            except (CorruptObject, RemoteRefused) as exc:
                self.core.reporter.notice(f"warning: ignored multi-pack index "
                                           f"{named[1][:12]} on {self.name}: {exc.message}")
                return []

        # (half the window of index files: each holds the entries of many packs)
        for found in bounded(getters(), read, keys, WORKERS // 2):
            yield from found

    def read_multi_index(self, named: tuple[str, str], wanted: Container[str] | None = None
                         ) -> list[tuple[str, list[PackEntry], int]]:
        """(pack id, entries, pack size) of each pack the multi-pack index `named` (its
        first pack, the id of its bytes) holds (of `wanted` only, if given): read within
        MAX_MULTI_BYTES, checked against its key, each index in it against its pack id
        as an `index/` file is. NotFound, RemoteRefused or CorruptObject otherwise."""
        raw = self.backend.get(layout.multi_index_key(*named), max_size=layout.MAX_MULTI_BYTES)
        return [(pack_id, *parse_pack_index(bytes(data), pack_id))
                for pack_id, data in layout.parse_multi_index(raw, *named)
                if wanted is None or pack_id in wanted]

    def _read_indexes(self, packs: list[str], sizes: dict[str, int]
                      ) -> Iterator[tuple[str, list[PackEntry], int]]:
        """The entries and pack size of each pack index that can be read (one that is
        gone since it was listed, or damaged, is left out), a few packs at a time: a
        picture of a million objects is never in memory at once (it was 313 MB of a
        million-file clone's peak)."""
        def read(pack_id: str) -> tuple[str, list[PackEntry], int] | None:
            # (one damaged or hostile index must not stop every clone: read from its pack
            # instead, or, where that cannot tell either, its pack is never read; `dsv
            # verify --remote` reports it)
            got = layout.read_pack_index(self.backend, pack_id, self.name,
                                         self.core.reporter.notice,
                                         min(sizes.get(pack_id, MAX_GET_BYTES), MAX_GET_BYTES))
            return None if got is None else (pack_id, *got)

        yield from (r for r in bounded(getters(), read, packs, WORKERS) if r is not None)

    def list_catalog(self, dataset: str) -> set[str]:
        """The packs `dataset`'s catalog on the remote names (one LIST per 1,000; none
        for a word that is no dataset id: the ids come from the index, which another
        hand may have touched, and an id becomes a key)."""
        found: set[str] = set()
        if not is_id(dataset):
            return found
        for key, _size in self.backend.list(layout.catalog_prefix(dataset)):
            entry = layout.catalog_entry_of_key(key)
            if entry is not None and entry[0] == dataset:
                found.add(entry[1])
        return found

    def list_catalogs(self, datasets: list[str]) -> dict[str, set[str]]:
        """`list_catalog` of each of `datasets`, side by side."""
        with ThreadPoolExecutor(WORKERS) as pool:
            return dict(zip(datasets, pool.map(self.list_catalog, datasets), strict=True))

    def add_to_catalog(self, dataset: str, packs: Iterable[str]) -> None:
        """Name `packs` in `dataset`'s catalog on the remote (idempotent)."""
        keys = [layout.catalog_key(dataset, p) for p in packs]
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda k: self.backend.put_bytes(k, layout.CATALOG_ENTRY), keys))

    def _refresh_scoped(self, scope: list[str]) -> None:
        """Refresh only what `scope`'s datasets need: list their catalogs, read the
        indexes of the packs they name that the picture lacks. A pack gone from a
        catalog (repacked, or collected) makes that dataset's packs all read again (an
        object's row names only the first pack holding it)."""
        index = self.core.index
        generation = self.gc_generation()
        reset = generation != index.remote_gc_generation(self.name)
        listed = self.list_catalogs(scope)
        known = set(index.remote_packs(self.name))
        forget: set[str] = set(known) if reset else set()
        for ds, packs in listed.items():
            if index.catalog_packs(self.name, ds) - packs:
                forget |= known & (index.catalog_packs(self.name, ds) | packs)
        begun = self._begun()   # (in no catalog if the push was killed)
        wanted = set().union(begun, *listed.values())
        index.stage_remote_packs(self.name, self._read_indexes(
            sorted(wanted - (known - forget)), {}))   # (no lock held meanwhile)
        with index.transaction():
            index.forget_remote_packs(self.name, forget)
            if reset:
                index.forget_remote_loose(self.name)
                index.forget_catalogs(self.name)
            index.add_staged_remote_packs()
            for ds, packs in listed.items():
                index.set_catalog(self.name, ds, packs, replace=True)
            index.set_remote_gc_generation(self.name, generation)
            index.forget_sending(self.name, begun)   # (read, or never whole there)

    def gc_generation(self) -> str:
        """The remote's gc generation ('' before its first gc; '?' when unreadable: no gc
        wrote that, and the next one replaces it)."""
        try:
            got = self.backend.read_ref(layout.GC_STATE)
        except RemoteRefused:
            return "?"
        if got is None:
            return ""
        try:
            body = load_bounded(got[0], MAX_REF_BYTES)
        except ValueError:
            return "?"  # not a gc's: the next gc replaces it (and so changes it)
        value = body.get("generation") if isinstance(body, dict) else None
        return value if isinstance(value, str) and len(value) <= 64 else "?"

    def dataset_ids(self, words: list[str]) -> list[str]:
        """The ids of the remote's datasets `words` name, each by id or by the name its
        `latest` ref carries (one LIST of `refs/`, then, for names, one small GET per
        dataset). InvalidInput for a word that names none."""
        ids = sorted({parts[1] for key, _size in self.backend.list(layout.REFS)
                      if len(parts := key.split("/")) >= 3})
        names: dict[str, str] = {}
        if any(w not in ids for w in words):
            def latest(ds: str) -> RemoteRef | None:
                try:
                    got = self.backend.read_ref(layout.ref_key(ds, LATEST))
                except RemoteRefused:
                    return None
                return layout.parse_ref(layout.ref_key(ds, LATEST), *got) \
                    if got else None
            with ThreadPoolExecutor(WORKERS) as pool:
                for ref in pool.map(latest, ids):
                    if ref is not None and ref.name:
                        names.setdefault(ref.name, ref.dataset)
        out = []
        for word in words:
            found = word if word in ids else names.get(word)
            if found is None:
                raise InvalidInput(f"{self.spec.url} has no dataset {word!r}",
                                   hint=f"its datasets: {', '.join(sorted(names) or ids)}")
            out.append(found)
        return out

    def read_refs(self) -> dict[tuple[str, str], RemoteRef]:
        """Every ref on the remote (of the scope's datasets only, in a store that reads
        only some, catalogs or not): (dataset id, ref) → RemoteRef; a ref that cannot be
        read safely is skipped with a warning."""
        prefixes = [layout.REFS] if self.scope is None else \
            [f"{layout.REFS}{ds}/" for ds in self.scope if is_id(ds)]   # (see list_catalog)
        keys: list[str] = []
        for prefix in prefixes:
            for key, _size in self.backend.list(prefix):
                keys.append(key)
                if len(keys) > layout.MAX_REFS:   # (gc must never go on with some of them)
                    raise RemoteRefused(f"{self.name} lists more than {layout.MAX_REFS:,} "
                                        f"refs; dsv reads no more than that", hint="the "
                                        "remote is damaged or hostile, or holds more tags "
                                        "than dsv supports")

        def ignore(key: str, warning: str) -> None:
            self.ignored_refs.add(key)
            self.core.reporter.notice(warning)

        def read(key: str) -> RemoteRef | None:
            try:
                got = self.backend.read_ref(key)
            except RemoteRefused as exc:
                # One hostile ref (a FIFO, a huge file, a link) is ignored, not fatal.
                ignore(key, f"warning: ignored remote ref {key}: {exc.message}")
                return None
            return layout.parse_listed_ref(key, *got, partial(ignore, key)) if got else None

        with ThreadPoolExecutor(WORKERS) as pool:
            found = [r for r in pool.map(read, keys) if r is not None]
        return {(r.dataset, r.ref): r for r in found}


def split_remote(core: Core, words: list[str]) -> tuple[str | None, list[str]]:
    """`[REMOTE] [ITEM…]` as push and pull take them: the first word is a remote when one
    has that name (remote names win over dataset names)."""
    names = {s.name for s in core.remote_specs()}
    if words and words[0] in names:
        return words[0], words[1:]
    if words and not names:
        resolve_target(core, words[0])  # with no remote, it can only be a local dataset
    return None, words


def resolve_target(core: Core, target: str) -> Version:
    """The version a push or pull target names; a bare word that names no dataset (nor a
    remote, or it would have been split off) says so, with the remotes there are."""
    try:
        return core.resolve(target)
    except (DatasetNotFound, RefError) as exc:
        # (inside a dataset's directory a bare word may also be its tag or version)
        if ":" in target or "~" in target or isinstance(exc, AmbiguousRef):
            raise
        names = sorted(s.name for s in core.remote_specs())
        raise InvalidInput(
            f"no remote or dataset named {target!r}",
            hint=(f"remotes: {', '.join(names)}; `dsv datasets list` shows the datasets"
                  if names else "no remote is configured: add one with `dsv remote add NAME "
                                "URL`")) from None


def open_remote(core: Core, name: str | None, kind: str = "origin",
                backend: Backend | None = None) -> Remote:
    """The configured remote `name` (default: the default one of `kind`), opened; within
    `one_opening`, the one opened there already. `backend`: one opened for that remote's
    spec already, to use where a new one would be opened (a clone checks its remote
    before the store exists: a second S3 client cost 43 ms of a 3.2 s clone)."""
    spec = core.remote_spec(name, kind)
    held = _OPENED.get(core)
    if held is None:
        return Remote(core, spec, backend)
    if spec.name not in held or held[spec.name].spec != spec:
        held[spec.name] = Remote(core, spec, backend)
    return held[spec.name]


_OPENED: weakref.WeakKeyDictionary[Core, dict[str, Remote]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def one_opening(core: Core) -> Iterator[None]:
    """Within it, `open_remote` gives the same Remote for the same name, and `ready`
    connects it and reads its picture once: a clone or a pull asked for its origin at
    each step (fetch, pull, each checkout's download), and each time made an S3 client,
    read the marker, listed `index/` and `packs/` and read `gc.json` again (30 ms of a
    2 s clone). For one command: a Store kept open for hours opens afresh each time."""
    if core in _OPENED:
        yield
        return
    _OPENED[core] = {}
    try:
        yield
    finally:
        del _OPENED[core]


def open_origin_of(core: Core, name: str | None) -> Remote:
    """The origin something was fetched from (`name`), opened; the default origin when
    that one is no longer configured (removed, or added again under another name)."""
    names = {s.name for s in core.remote_specs() if s.kind == "origin"}
    return open_remote(core, name if name in names else None)


def caches(core: Core, write_through: bool = False) -> list[ClusterCache]:
    """The store's cluster caches (only those pushes write through to, if asked)."""
    chosen = [s for s in core.remote_specs()
              if s.kind == "cache" and (s.write_through or not write_through)]
    for spec in chosen:
        check_outside_stores(spec.url)
    return [ClusterCache(s.url) for s in chosen]


def read_cache(core: Core) -> ClusterCache | None:
    """The cluster cache reads go to first (the first configured), if any."""
    found = caches(core)
    return found[0] if found else None


def try_fill(core: Core, cache: ClusterCache, fill: Callable[[], None]) -> bool:
    """`ClusterCache.try_fill`, warning on this store's reporter: a cache that cannot be
    written costs speed, never the download or the push."""
    return cache.try_fill(fill, core.reporter.notice)


def bounded(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T],
            window: int) -> Iterator[R]:
    """pool.map that keeps at most `window` results pending (memory stays flat); when
    the caller stops (an error), those not yet begun are cancelled and those running
    waited for."""
    pending: list[Future[R]] = []
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for fut in pending:
            fut.cancel()
        wait(pending)


_GETTERS: ThreadPoolExecutor | None = None
_GETTERS_LOCK = threading.Lock()


def getters() -> ThreadPoolExecutor:
    """The WORKERS threads that run the requests of a download or a refresh, made once
    a process: a clone downloads a chunk of files at a time, and each thread started
    while others hold the GIL waits for it (a pool a round: 57 thread starts, 0.5 s of a
    100,000-file clone's main thread). Its tasks never wait for each other's."""
    global _GETTERS
    with _GETTERS_LOCK:
        if _GETTERS is None:
            _GETTERS = ThreadPoolExecutor(WORKERS, thread_name_prefix="dsv-get")
        return _GETTERS


UPLOAD_PACK_SIZE = 16 << 20
"""Bytes of objects a push (or a repack) puts in one remote pack."""


@dataclass
class Sent:
    """What one upload put on the remote, for the store's record of it."""

    count: int
    nbytes: int
    pack: tuple[str, int, list[PackEntry]] | None = None   # (pack id, size, entries)
    loose: str | None = None                    # a loose object's oid
    shown: int = 0                              # bytes already on the progress bar
    index: bytes | None = None                  # the pack's index, as uploaded


def record_sent(core: Core, remote: Remote, sent: list[Sent]) -> None:
    """Remember in the index what these uploads put on the remote."""
    with core.index.transaction():
        core.index.add_remote_packs(remote.name, _sent_packs(sent))
        core.index.add_remote_loose(remote.name, [s.loose for s in sent if s.loose])


def stage_sent(core: Core, remote: Remote, sent: list[Sent]) -> None:
    """`record_sent` for a push of many packs: their rows are staged (`more`, see
    `Index.stage_remote_packs`) until `Index.add_staged_remote_packs`; the loose objects,
    few and large, are recorded at once."""
    core.index.stage_remote_packs(remote.name, _sent_packs(sent), more=True)
    loose = [s.loose for s in sent if s.loose]
    if loose:
        with core.index.transaction():
            core.index.add_remote_loose(remote.name, loose)


def _sent_packs(sent: list[Sent]) -> list[tuple[str, list[PackEntry], int]]:
    return [(item.pack[0], item.pack[2], item.pack[1]) for item in sent if item.pack is not None]
