"""Downloads: bringing objects a version needs into the core, every one verified.

Owns coalescing packed objects into ranged GETs, reading from the cluster cache first
(filling it from the origin), loose objects streamed with a size cap, the free-space
check before any byte arrives, and `BlobSource` (what checkout and file reads call
when a fetched version's blobs are not here yet). Everything lands in the caller's
Ingest; the caller publishes. Must never move refs.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .. import fileio
from ..core import Core
from ..errors import (CorruptObject, InvalidInput, MissingObject)
from ..fileio import read_at_most
from ..hashing import hash_bytes
from ..model import Version
from ..reports import FetchReport, PullReport
from ..objects import KIND_BLOB, PACK_THRESHOLD, Ingest, pack_tail_size, parse_whole_pack
from ..remotes.base import (MAX_GET_BYTES, NotFound, RemoteError,
                            RemoteRefused)
from ..remotes.cache import ClusterCache
from ..remotes.layout import (loose_key,
                              pack_key)
from .remote import (WORKERS, Remote, open_origin_of, caches, read_cache, bounded, getters,
                     try_fill as _try_fill)
from ..reporting import Advance, FileBytes, plural


RANGE_GAP = 256 << 10        # fetch neighbouring objects in one GET across gaps this small


RANGE_MAX = 8 << 20          # but no single GET larger than this (keeps memory flat)


WHOLE_PACK_SHARE = 0.5       # with a cache: fetch (and cache) a pack whole if we need this much


RETRIES = 2
"""How many more times bytes that do not hash to their id are read from the origin."""


PACK_MOVES = 3
"""How many times a download reads the remote's picture afresh when a pack it was reading
went (another client repacked it) before it gives up."""


def coalesce(missing: dict[str, tuple[str, int, int]]
            ) -> list[tuple[str, int, int, list[tuple[str, int, int]]]]:
    """Coalesce object locations into GETs: (pack, start, length, [(oid, offset, length)])."""
    by_pack: dict[str, list[tuple[str, int, int]]] = {}
    for oid, (pack, offset, length) in missing.items():
        by_pack.setdefault(pack, []).append((oid, offset, length))
    out = []
    for pack, items in by_pack.items():
        items.sort(key=lambda it: it[1])
        start, end, group = items[0][1], items[0][1] + items[0][2], [items[0]]
        for oid, offset, length in items[1:]:
            if offset - end <= RANGE_GAP and offset + length - start <= RANGE_MAX:
                end = max(end, offset + length)
                group.append((oid, offset, length))
            else:
                out.append((pack, start, end - start, group))
                start, end, group = offset, offset + length, [(oid, offset, length)]
        out.append((pack, start, end - start, group))
    return out


class PackGone(MissingObject):
    """A pack the store's picture of the remote names is no longer there (another client
    repacked it, or `verify --remote --repair` replaced it)."""


Run = tuple[memoryview, list[tuple[str, int, int]]]
"""Objects of one ranged read, each checked against its id: the bytes read, and each
object's (oid, start, length) in them, in pack order."""


def download_packed(core: Core, remote: Remote, missing: dict[str, tuple[str, int, int]],
                    label: str, report: FetchReport | PullReport
                    ) -> Iterator[tuple[str, memoryview]]:
    """(oid, bytes) of packed objects, each verified against its oid (see
    `download_packed_runs`)."""
    for view, run in download_packed_runs(core, remote, missing, label, report):
        for oid, start, length in run:
            yield oid, view[start:start + length]


def download_packed_runs(core: Core, remote: Remote,
                         missing: dict[str, tuple[str, int, int]], label: str,
                         report: FetchReport | PullReport, reuse: bool = False
                         ) -> Iterator[Run]:
    """Packed objects, a ranged read at a time, each verified against its oid; read from
    a cluster cache where it holds the pack, else from the remote (caching packs mostly
    needed). When a pack has gone from the remote meanwhile, the picture of the remote
    is refreshed and what is still missing is read from where it is now (PACK_MOVES
    times at most: a refresh may list a pack a maintainer deletes the moment after).

    With `reuse`, a run's bytes lie in a buffer that a later read fills again once the
    caller asks for the next run: for a caller that copies each run before it asks (into
    a pack, into files), which then costs no new buffer a read (see `_range_buffer`)."""
    done: set[str] = set()
    todo = missing
    for moves in range(PACK_MOVES + 1):
        try:
            for view, run in _download_packed(core, remote, todo, label, report, reuse):
                done.update(oid for oid, _start, _length in run)
                yield view, run
            return
        except PackGone:
            if moves == PACK_MOVES:
                raise
            # An origin that cannot be reached says so here (a directory remote that is
            # gone would list as empty, and every object seem deleted from it).
            remote.connect()
            # (a store reading some datasets may have missed the move in their catalogs)
            if not remote.widen():
                remote.refresh()
        rest = [oid for oid in missing if oid not in done]
        todo = core.index.remote_locate_many(remote.name, rest)
        for oid in rest:
            if oid not in todo:
                raise MissingObject(f"object {oid[:12]} is no longer on {remote.name}",
                                    hint="another client changed the remote; run the "
                                         "command again")
            if todo[oid][2] != missing[oid][2]:
                raise CorruptObject(f"object {oid[:12]} changed length on {remote.name}",
                                    hint="the remote is damaged or hostile; nothing was "
                                         "stored")


def _download_packed(core: Core, remote: Remote, missing: dict[str, tuple[str, int, int]],
                     label: str, report: FetchReport | PullReport, reuse: bool
                     ) -> Iterator[Run]:
    if not missing:
        return
    cache = read_cache(core)
    whole: set[str] = set()
    sizes = core.index.remote_packs(remote.name)
    if cache is not None:
        need: dict[str, int] = {}
        for pack, _off, length in missing.values():
            need[pack] = need.get(pack, 0) + length
        counts = core.index.remote_pack_counts(remote.name)
        whole = {p for p, n in need.items() if cache.has(cache.pack_path(p))
                 or n >= WHOLE_PACK_SHARE * (sizes.get(p, 1 << 62)
                                             - pack_tail_size(counts.get(p, 0)))}
    total = sum(w[2] for w in missing.values())

    def get(job: tuple[str, int, int, list[tuple[str, int, int]]]
            ) -> tuple[memoryview, list[tuple[str, int, int]], bool, mmap.mmap | None]:
        pack, start, length, group = job
        buf: mmap.mmap | None = None   # (read into, where `reuse`)

        def from_origin() -> bytes | memoryview:
            try:
                if buf is None:
                    return remote.backend.get_range(pack_key(pack), start, length)
                view = memoryview(buf)[:length]
                remote.backend.get_range_into(pack_key(pack), start, view)
                return view
            except NotFound:
                raise PackGone(f"{remote.name} has no pack {pack[:12]}"
                               + (" and the cluster cache does not hold it" if cache else ""),
                               hint="run `dsv fetch` to refresh what the remote holds; is "
                                    "the remote reachable?") from None

        data: bytes | memoryview | None = None
        cached = False
        if cache is not None and pack in whole:
            path = cache.pack_path(pack)
            data = cache.read_range(path, start, length)
            cached = data is not None
            if data is None and _fill_cache_pack(core, cache, remote, pack, sizes.get(pack)):
                data = cache.read_range(path, start, length)
        if data is None:
            buf = _range_buffer(length) if reuse else None
            data = from_origin()
        run, bad = _split_verified(data, start, group)
        if bad and cached:
            # A damaged cache entry costs a download, never data: drop it, ask the origin.
            assert cache is not None
            cache.drop(cache.pack_path(pack))
            cached = False
        for _retry in range(RETRIES if bad else 0):
            # Bytes damaged once in transit (or by a flaky gateway) must not fail a pull.
            data = from_origin()
            run, bad = _split_verified(data, start, group)
            if not bad:
                break
        if bad:
            raise CorruptObject(f"object {bad[:12]} from {remote.name} is corrupt (pack "
                                f"{pack[:12]})", hint="nothing corrupt was stored; the remote "
                                "holds damaged data (`dsv verify --remote` checks it)")
        return memoryview(data), run, cached, buf

    with core.reporter.task(label, len(missing), total) as advance:
        for view, run, cached, buf in bounded(getters(), get, coalesce(missing), WORKERS):
            nbytes = sum(length for _oid, _start, length in run)
            report.from_cache += len(run) if cached else 0
            report.objects_received += len(run)
            report.bytes_received += nbytes
            advance(len(run), nbytes)
            yield view, run
            if buf is not None:   # (the caller has asked for the next run: done with it)
                _give_range_buffer(buf)


def _range_buffer(length: int) -> mmap.mmap:
    """A buffer for a ranged read of `length` bytes, from the buffers finished reads and
    writers gave back (`fileio.take_buffer`): a new 8 MiB buffer for every read cost a
    page fault per 4 KiB received (a 1 GiB clone: 260,000 faults, a third of its kernel
    time). RANGE_MAX bytes, the size of almost every read, so that they are shared."""
    return fileio.take_buffer(max(length, RANGE_MAX))


def _give_range_buffer(buf: mmap.mmap) -> None:
    if len(buf) == RANGE_MAX:   # (one object larger than a range: its own, let go)
        fileio.give_buffer(buf)


def _split_verified(data: bytes | memoryview, start: int, group: list[tuple[str, int, int]]
                    ) -> tuple[list[tuple[str, int, int]], str | None]:
    """The objects of one ranged read as (oid, start, length) in `data`, each checked
    against its id, and the first that fails (None when all are good)."""
    view = memoryview(data)  # slices share the buffer: no copy per object
    run: list[tuple[str, int, int]] = []
    for oid, offset, ln in group:
        at = offset - start
        piece = view[at:at + ln]
        if len(piece) != ln or hash_bytes(piece) != oid:
            return run, oid
        run.append((oid, at, ln))
    return run, None


def _fill_cache_pack(core: Core, cache: ClusterCache, remote: Remote, pack: str,
                     size: int | None) -> bool:
    """Copy a whole remote pack into the cache (checked against its name first); whether
    it was."""
    try:
        data = remote.backend.get(pack_key(pack), max_size=min(size or MAX_GET_BYTES,
                                                               MAX_GET_BYTES))
    except (NotFound, RemoteRefused):
        return False
    if size is not None and len(data) != size:
        return False
    try:
        parse_whole_pack(data, pack)
    except CorruptObject:
        return False  # not cached; the caller's per-object check reports the damage
    return _try_fill(core, cache, lambda: cache.fill_bytes(cache.pack_path(pack), data))


def origin_down(core: Core, exc: RemoteError) -> None:
    """Go on from the cluster cache when the origin cannot be reached (re-raise without one)."""
    if not caches(core):
        raise exc
    core.reporter.notice(f"warning: {exc.message}; reading from the cluster cache only")


class BlobSource:
    """Downloads the blobs (oid → size) a checkout of `version` needs and the store
    lacks: cluster cache first, then the remote the version was fetched from, else the
    default remote. That remote is opened and its picture refreshed at the first blob
    that is missing, once per checkout however many times it asks (a fresh checkout asks
    once per chunk of its files); nothing needs the network when every blob is here."""

    def __init__(self, core: Core, version: Version) -> None:
        self.core = core
        self.version = version
        self._opened = False
        self._remote: Remote | None = None
        self.report = PullReport("-", FetchReport("-"))  # what every call downloaded

    def __call__(self, entries: dict[str, int],
                 lacking: tuple[list[str], list[str]] | None = None,
                 tap: Tap | None = None) -> None:
        """Bring in those of `entries` (oid → size) the store lacks (`lacking`: what
        `ObjectStore.lacking` said of them just now, if the caller asked); `tap` sees
        each packed object downloaded, once it is checked (see `download_blobs`)."""
        small, large = lacking if lacking is not None else self.core.objects.lacking(entries)
        if not small and not large:
            return
        with Ingest(self.core.objects) as ingest:
            self.fetch_into(ingest, entries, (small, large), tap)
            self.core.commit_objects(ingest, crash="pull:objects-written")

    def fetch_into(self, ingest: Ingest, entries: dict[str, int],
                   lacking: tuple[list[str], list[str]], tap: Tap | None = None) -> None:
        """`__call__` into `ingest`, which the caller publishes and records (see
        core.Core.commit_objects)."""
        small, large = lacking
        remote = self._open()
        if len(entries) > DOWNLOAD_CHUNK:
            download_blobs(self.core, remote, entries, self.report, ingest,
                           label="downloading", tap=tap)
        else:
            _download_lacking(self.core, remote, entries, small, large, self.report, ingest,
                              "downloading", tap)

    def _open(self) -> Remote | None:
        if self._opened:
            return self._remote
        self._opened = True
        try:
            self._remote = open_origin_of(self.core,
                                          self.core.index.promised_by(self.version.id))
        except InvalidInput:
            return None
        try:
            self._remote.ready()
        except RemoteError as exc:
            origin_down(self.core, exc)
        return self._remote


DOWNLOAD_CHUNK = 20_000
"""Blobs a download plans at once: what it holds in memory does not grow with the
version (a million files are downloaded in chunks, each in remote pack order)."""


Tap = Callable[[memoryview, list[tuple[str, int, int]]], None]
"""Shown each run of packed objects a download brings, after their check, in download
order: the buffer and each object's (oid, start, length) in it (a checkout's
`worktree.Spool.feed` writes them into the files that need them)."""


def download_blobs(core: Core, remote: Remote | None,
                   entries: Mapping[str, int] | Iterable[tuple[str, int]],
                   report: PullReport, ingest: Ingest, label: str = "pulling",
                   tap: Tap | None = None) -> None:
    """Fetch blobs (oid → size, or (oid, size) pairs as a walk yields them) the store
    lacks into `ingest` (the caller publishes), a chunk at a time; `tap`, if given, is
    shown each packed one that arrives."""
    pairs = entries.items() if isinstance(entries, Mapping) else entries
    chunk: dict[str, int] = {}
    for oid, size in pairs:
        if oid not in chunk and not ingest.holds(oid):
            chunk[oid] = size
            if len(chunk) >= DOWNLOAD_CHUNK:
                _download_chunk(core, remote, chunk, report, ingest, label, tap)
                # What is sealed goes into the store now: an ingest of a million blobs
                # would otherwise hold every id until the end.
                core.commit_sealed(ingest)
                chunk = {}
    _download_chunk(core, remote, chunk, report, ingest, label, tap)


def _download_chunk(core: Core, remote: Remote | None, entries: dict[str, int],
                    report: PullReport, ingest: Ingest, label: str, tap: Tap | None) -> None:
    small, large = core.objects.lacking(entries)
    _download_lacking(core, remote, entries, small, large, report, ingest, label, tap)


def _download_lacking(core: Core, remote: Remote | None, entries: dict[str, int],
                      small: list[str], large: list[str], report: PullReport, ingest: Ingest,
                      label: str, tap: Tap | None = None) -> None:
    """Fetch `small` (bound for packs) and `large` (loose), the blobs of `entries` the
    store was found to lack, into `ingest`."""
    report.objects_skipped += len(entries) - len(small) - len(large)
    todo = set(small) | set(large)
    report.bytes_skipped += sum(size for oid, size in entries.items() if oid not in todo)
    if remote is None:
        missing_any = small or large
        if missing_any:
            verb = "is" if len(missing_any) == 1 else "are"
            raise MissingObject(f"{plural(len(missing_any), 'object')} {verb} not in this "
                                f"store and no "
                                f"remote is configured", hint="add one with `dsv remote add`")
        return
    located = core.index.remote_locate_many(remote.name, small)
    if len(located) < len(small) and remote.widen():
        located = core.index.remote_locate_many(remote.name, small)
    for oid in small:
        if oid not in located:
            large.append(oid)  # not in any pack the remote lists: try it as a loose file
    packed = {oid: located[oid] for oid in small if oid in located}
    for oid, (_pack, _off, length) in packed.items():
        if length != entries[oid]:
            raise CorruptObject(f"object {oid[:12]} is {length} bytes on {remote.name}; the "
                                f"version says {entries[oid]}", hint="the remote is damaged "
                                "or hostile; nothing was stored")
    _check_free_space(core, sum(entries[o] for o in packed) + sum(entries[o] for o in large))
    # (`lacking` found them missing from the store just now: no second lookup per object)
    # (each run copied into a pack and into files before the next is asked for: `reuse`)
    for view, run in download_packed_runs(core, remote, packed, label, report, reuse=True):
        ingest.add_new_run(KIND_BLOB, view, run)
        if tap is not None:
            tap(view, run)
    if large:
        download_loose(core, remote, large, entries, report, ingest)


def _check_free_space(core: Core, nbytes: int) -> None:
    """Refuse a download the disk cannot hold, before any byte of it (sizes come from
    trees, which may be hostile: a tree claiming a 1 TiB file must not fill the disk)."""
    fileio.check_room(core.tmp_root, nbytes, "the download", hint="free some space, or "
                      "pull only some paths (--path)")


def _capped(chunks: Iterable[bytes], size: int | None, oid: str) -> Iterator[bytes]:
    """A download's pieces, refusing more bytes than the tree says the object has (a
    hostile or broken remote must not fill the disk before the hash check)."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if size is not None and seen > size:
            raise CorruptObject(f"object {oid[:12]} is larger on the remote than its "
                                f"{size} bytes", hint="nothing corrupt was stored")
        yield chunk


def _counted(chunks: Iterable[bytes], pieces: FileBytes) -> Iterator[bytes]:
    """`chunks` as they come, each counted on the progress bar (a large file moves it by
    bytes, not only when it is done); a transfer read again counts from its start."""
    pieces.restart()
    for chunk in chunks:
        pieces(len(chunk))
        yield chunk


def _not_on(oid: str, remote: Remote) -> MissingObject:
    """An object in no pack the remote lists, and not a loose file there either."""
    return MissingObject(f"object {oid[:12]} is not on {remote.name}: in no pack it lists, "
                         f"nor a loose file", hint=f"a version needs it: the remote is damaged "
                         f"(a pack gone, or something other than a file in its place), or it "
                         f"was collected; `dsv verify --remote {remote.name}` checks it")


def download_loose(core: Core, remote: Remote, oids: list[str], sizes: dict[str, int],
                   report: PullReport, ingest: Ingest, label: str = "pulling large files"
                   ) -> None:
    """Stream large objects (each checked against its id, no bigger than `sizes` says)
    into `ingest`: the cluster cache first, filling it from the origin. One that `sizes`
    gives fewer than PACK_THRESHOLD bytes (a remote, or a cache that readers without a
    store filled, may hold a chunk or a small file as a loose file) goes into a pack:
    this store looks for small objects in its packs only."""
    cache = read_cache(core)
    total = sum(sizes.get(o, 0) for o in oids)
    packing = threading.Lock()   # (Ingest.add_new is for one thread at a time)
    with core.reporter.task(label, len(oids), total) as advance, \
            ThreadPoolExecutor(4) as pool:
        got = partial(_get_loose, core, remote, sizes, ingest, packing, cache, advance)
        for size, streamed, cached in pool.map(got, oids):
            report.from_cache += cached
            report.objects_received += 1
            report.bytes_received += size
            advance(1, max(0, size - streamed))


def _get_loose(core: Core, remote: Remote, sizes: dict[str, int], ingest: Ingest,
               packing: threading.Lock, cache: ClusterCache | None, advance: Advance,
               oid: str) -> tuple[int, int, bool]:
    """Stage one large object: (its size, bytes already counted on the bar, whether the
    cluster cache served it)."""
    count = FileBytes(advance, sizes.get(oid, 0))
    small = sizes.get(oid, PACK_THRESHOLD) < PACK_THRESHOLD

    def keep(pieces: Iterable[bytes]) -> int:
        """Stage the object's bytes: loose, or into a pack if small (see download_loose)."""
        if not small:
            return ingest.add_large_stream(pieces, expect=oid)[1]
        data = b"".join(pieces)
        if hash_bytes(data) != oid:
            raise CorruptObject(f"object {oid[:12]} arrived corrupt: its bytes do not match "
                                f"its hash", hint="nothing corrupt was stored; the source "
                                                  "holds damaged data")
        with packing:
            ingest.add_new(oid, KIND_BLOB, data)
        return len(data)

    def from_origin() -> int:
        try:
            return keep(_counted(_capped(remote.backend.download(loose_key(oid)),
                                         sizes.get(oid), oid), count))
        except NotFound:
            raise _not_on(oid, remote) from None

    def stage() -> tuple[int, bool]:
        reads = RETRIES + 1  # of the origin, a fill of the cache's among them
        if cache is not None:
            path = cache.loose_path(oid)
            cached = True
            fd = cache.open_entry(path)  # a regular file or None (anything else dropped)
            if fd is None:
                try:
                    filled = _try_fill(core, cache, lambda: cache.fill_stream(
                        path, _counted(_capped(remote.backend.download(loose_key(oid)),
                                               sizes.get(oid), oid), count), oid))
                except NotFound:
                    raise _not_on(oid, remote) from None
                except CorruptObject:  # damaged in transit (nothing cached): read it again
                    filled, reads = False, reads - 1
                cached = False
                fd = cache.open_entry(path) if filled else None
            if fd is not None:
                try:
                    size = sizes.get(oid, -1)
                    if os.fstat(fd).st_size == size:  # (and read no further: it may grow)
                        if small:
                            return keep([read_at_most(fd, size)]), cached
                        return ingest.add_large_fd(fd, oid, limit=size)[1], cached
                except CorruptObject:
                    pass
                finally:
                    os.close(fd)
                cache.drop(path)  # a damaged cache entry: drop it, read the origin
        for _retry in range(reads - 1):
            try:
                return from_origin(), False
            except CorruptObject:
                continue  # damaged in transit (or by a flaky gateway): read it again
        return from_origin(), False

    size, cached = stage()
    return size, count.shown, cached
