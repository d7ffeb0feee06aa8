"""Push, fetch, pull and clone: moving versions between a store and its remotes.

Owns the remote layout (docs/format.md, "Remotes"), what a remote is known to hold (the
`remote_*` tables, refreshed from the remote's pack indexes), the publish order that keeps
a remote consistent when a push dies at any moment (blobs, then trees, then version
records, each phase complete before the next; refs last, by compare-and-swap), the
fast-forward rule for refs, and downloads that verify every object's blake3 before it
enters the store (from the cluster cache first, else the origin, filling the cache).
Must never print: progress goes through the store's Reporter.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from .core import Core
from . import refs, tree
from .errors import CorruptObject, DsvError, InvalidInput, MissingObject, RefConflict
from .faults import crashpoint
from .hashing import hash_bytes, hash_file, is_hash
from .refs import LATEST, RefChange
from .model import Dataset, FetchReport, PullReport, PushReport, Version
from .objects import (KIND_BLOB, KIND_TREE, KIND_VERSION, PACK_THRESHOLD, Ingest, encode_pack,
                      pack_tail_size, parse_pack_index)
from .jsonio import load_bounded
from .paths import is_under, normalize_user_path
from .records import MAX_RECORD_BYTES, Record, parse_record
from .remotes import layout
from .remotes.layout import (REMOTE_FORMAT, REMOTE_MARKER, RemoteRef, index_key, loose_key,
                             pack_key, ref_key)
from .remotes.base import (Backend, NotFound, RemoteError,
                           MAX_GET_BYTES, MAX_REF_BYTES, RemoteRefused, RemoteSpec,
                           check_outside_stores, open_backend)
from .remotes.cache import ClusterCache


WORKERS = 8
UPLOAD_PACK_SIZE = 16 << 20
RANGE_GAP = 256 << 10        # fetch neighbouring objects in one GET across gaps this small
RANGE_MAX = 8 << 20          # but no single GET larger than this (keeps memory flat)
WHOLE_PACK_SHARE = 0.5       # with a cache: fetch (and cache) a pack whole if we need this much
IN_FLIGHT = 3                # upload packs held in memory at once
LOOSE_AT_ONCE = 2            # large files uploaded side by side (each in MULTIPART parts)


def _ref_body(ds: Dataset, ref: str, v: Version) -> bytes:
    return layout.ref_body(ds.id, v.id, v.record, ds.name, ds.path, latest=ref == LATEST)


# ---- reports ----------------------------------------------------------------------------

_Parsed = dict[str, tuple[Record, bytes | None]]
"""Version records read in a fetch: record oid → (parsed record, raw bytes if new here)."""


# ---- remote names -----------------------------------------------------------------------

# ---- plumbing ---------------------------------------------------------------------------

class Remote:
    """One configured remote, opened: its backend, and the store's record of it."""

    def __init__(self, store: Core, spec: RemoteSpec) -> None:
        self.store = store
        self.spec = spec
        self.name = spec.name
        self.backend: Backend = open_backend(spec)

    def connect(self, must_exist: bool = True) -> None:
        """Fail fast if unreachable; with `must_exist`, also if it is not a dsv remote."""
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
            body = json.dumps({"format": REMOTE_FORMAT, "hash": "blake3"}).encode() + b"\n"
            self.backend.write_ref(REMOTE_MARKER, body, None)
            return
        except ValueError:
            raise RemoteError(f"{self.spec.url}/{REMOTE_MARKER} is unreadable") from None
        if not isinstance(marker, dict) or marker.get("format") != REMOTE_FORMAT:
            raise RemoteError(f"{self.spec.url} has remote format "
                              f"{marker.get('format') if isinstance(marker, dict) else '?'}; "
                              f"this dsv reads format {REMOTE_FORMAT}")

    def refresh(self) -> None:
        """Bring the store's picture of the remote's packs up to date (list `index/`;
        read each new pack index, which must hash to its pack's name)."""
        index = self.store.index
        listed = {key.rpartition("/")[2]: size for key, size in self.backend.list("index/")}
        listed = {p: size for p, size in listed.items() if is_hash(p)}
        known = index.remote_packs(self.name)
        new = [p for p in listed if p not in known]
        gone = [p for p in known if p not in listed]

        def read(pack_id: str) -> tuple[str, list, int] | None:
            try:
                data = self.backend.get(index_key(pack_id),
                                        max_size=min(listed[pack_id], MAX_GET_BYTES))
                entries, size = parse_pack_index(data, pack_id)
            except (CorruptObject, RemoteRefused) as exc:
                # One damaged or hostile index must not stop every clone: its pack is
                # never read (`dsv verify --remote` reports it).
                self.store.reporter.notice(f"warning: ignored pack index {pack_id[:12]} on "
                                           f"{self.name}: {exc.message}")
                return None
            return pack_id, entries, size

        with ThreadPoolExecutor(WORKERS) as pool:
            results = [r for r in pool.map(read, new) if r is not None]
        with index.transaction():
            for pack_id, entries, size in results:
                index.add_remote_pack(self.name, pack_id, size, entries)
            for pack_id in gone:
                index.forget_remote_pack(self.name, pack_id)
            if gone:  # the remote lost data (or was reset): trust nothing we remember of it
                index.forget_remote_loose(self.name)

    def read_refs(self) -> dict[tuple[str, str], RemoteRef]:
        keys = [key for key, _size in self.backend.list("refs/")]

        def read(key: str) -> RemoteRef | None:
            try:
                got = self.backend.read_ref(key)
            except RemoteRefused as exc:
                # One hostile ref (a FIFO, a huge file, a link) is ignored, not fatal.
                self.store.reporter.notice(f"warning: ignored remote ref {key}: {exc.message}")
                return None
            return layout.parse_ref(key, *got) if got else None

        with ThreadPoolExecutor(WORKERS) as pool:
            found = [r for r in pool.map(read, keys) if r is not None]
        return {(r.dataset, r.ref): r for r in found}


def open_remote(store: Core, name: str | None, kind: str = "origin") -> Remote:
    spec = store.remote_spec(name, kind)
    return Remote(store, spec)


def caches(store: Core, write_through: bool = False) -> list[ClusterCache]:
    """The store's cluster caches (only those pushes write through to, if asked)."""
    for spec in store.remote_specs():
        check_outside_stores(spec.url)
    return [ClusterCache(s.url) for s in store.remote_specs()
            if s.kind == "cache" and (s.write_through or not write_through)]


def _read_cache(store: Core) -> ClusterCache | None:
    """The cluster cache reads go to first (the first configured), if any."""
    found = caches(store)
    return found[0] if found else None


def _bounded(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
             window: int) -> Iterator[Any]:
    """pool.map that keeps at most `window` results pending (memory stays flat)."""
    pending: list[Future] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


# ---- push -------------------------------------------------------------------------------

def _push_plan(store: Core, targets: list[str]
               ) -> tuple[list[Version], list[tuple[Dataset, str, Version, bool]]]:
    """Versions to send and refs to set: (dataset, ref, version, required)."""
    ref_plan: list[tuple[Dataset, str, Version, bool]] = []
    roots: list[Version] = []
    if not targets:
        targets = [ds.id for ds in store.index.datasets() if ds.latest]
    for target in targets:
        ds = None
        if ":" not in target and "~" not in target:
            try:
                ds = refs.find_dataset(store.index, target)
            except DsvError:
                ds = None
        if ds is not None:
            committed = store.index.versions(ds.id, "committed")
            if not committed:
                continue
            roots.extend(committed)
            ref_plan.append((ds, LATEST, store.version(ds.latest), True))
            for _d, name, vid, _c in store.index.tags(ds.id):
                ref_plan.append((ds, f"tags/{name}", store.version(vid), True))
            continue
        v = store.resolve(target)
        if v.is_draft:
            raise InvalidInput(f"{target} is a draft; only committed versions are pushed",
                               hint=f"commit it first: dsv versions commit {v.id}")
        owner = store.index.dataset_by("id", v.dataset)
        assert owner is not None
        roots.append(v)
        ref_plan.append((owner, LATEST, v, False))
        for name in store.index.tags_of(v.id):
            ref_plan.append((owner, f"tags/{name}", v, True))
    return refs.ancestry(store.index, roots), ref_plan


_CONFLICT_HINT = ("run `dsv pull` to get the remote's versions, or push with --force to "
                  "overwrite (the remote's versions stay stored)")


def push(store: Core, remote: Remote, targets: list[str], force: bool = False) -> PushReport:
    report = PushReport(remote.name)
    remote.connect(must_exist=False)
    remote.refresh()
    versions, ref_plan = _push_plan(store, targets)
    report.versions = len(versions)
    refused = _preflight(store, remote, ref_plan, force)
    if refused:
        report.rejected = refused
        raise RefConflict(f"push to {remote.name} refused, nothing was sent: "
                          + "; ".join(refused), hint=_CONFLICT_HINT, report=report)
    on_remote = {oid for oid, *_ in store.index.remote_objects_of_kind(remote.name, KIND_VERSION)}
    new = [v for v in versions if v.record not in on_remote]
    report.versions_sent = len(new)
    if new:
        _send_objects(store, remote, new, report)
    crashpoint("push:objects-sent")
    _settle_pending(store, remote)
    for ds, ref, v, required in ref_plan:
        _push_ref(store, remote, ds, ref, v, required, force, report)
    store.index.checkpoint()
    if report.rejected:
        raise RefConflict(f"{len(report.rejected)} ref(s) rejected by {remote.name} (another "
                          f"push won the race): " + "; ".join(report.rejected),
                          hint=_CONFLICT_HINT, report=report)
    return report


def _settle_pending(store: Core, remote: Remote) -> None:
    """Clear write-through markers of entries the origin now holds (a killed push left them)."""
    for cache in caches(store, write_through=True):
        marked = cache.pending()
        packs = store.index.remote_packs(remote.name)
        loose = store.index.remote_loose(remote.name, [os.path.basename(p) for p in marked])
        for path in marked:
            name = os.path.basename(path)
            if name.removesuffix(".pack") in packs or name in loose:
                cache.clear_pending(path)


def _needed_objects(store: Core, versions: list[Version]) -> dict[str, int]:
    """Every object the versions need, with its kind: blobs, trees, then records."""
    needed: dict[str, int] = {}
    for v in versions:
        if v.tree not in needed:
            for kind, oid in tree.subtree_ids(v.tree, store.read_tree):
                needed.setdefault(oid, KIND_TREE if kind == tree.DIR else KIND_BLOB)
        assert v.record is not None
        needed[v.record] = KIND_VERSION
    return needed


def _send_objects(store: Core, remote: Remote, versions: list[Version],
                  report: PushReport) -> None:
    index, objects = store.index, store.objects
    needed = _needed_objects(store, versions)
    local = objects.locate_many(needed)
    remote_has = index.remote_locate_many(remote.name, needed)
    large = [oid for oid in needed if oid not in local]
    known_loose = index.remote_loose(remote.name, large)
    for oid in large:
        if oid not in known_loose and not objects.has_loose(oid):
            raise MissingObject(f"object {oid[:12]} is not in this store, so the versions "
                                f"that need it cannot be pushed",
                                hint="pull those versions completely first, or run `dsv verify`")
    with ThreadPoolExecutor(WORKERS) as pool:
        unknown = [oid for oid in large if oid not in known_loose]
        sizes = dict(zip(unknown, pool.map(lambda o: remote.backend.head(loose_key(o)), unknown)))
    present = [oid for oid, size in sizes.items() if size is not None]
    if present:
        with index.transaction():
            index.add_remote_loose(remote.name, present)
    send_small = {oid: local[oid] for oid in needed if oid in local and oid not in remote_has}
    send_large = [oid for oid in large if oid not in known_loose and sizes.get(oid) is None]
    large_sizes = {oid: os.stat(objects.loose_path(oid)).st_size for oid in send_large}
    report.objects_skipped = len(needed) - len(send_small) - len(send_large)
    report.bytes_skipped = sum(w[2] for w in remote_has.values()) + sum(
        objects.loose_path(o).stat().st_size for o in large
        if o not in large_sizes and objects.has_loose(o))
    total_bytes = sum(w[2] for w in send_small.values()) + sum(large_sizes.values())
    write_through = caches(store, write_through=True)
    loose_slots = threading.Semaphore(LOOSE_AT_ONCE)
    with store.reporter.task("pushing", len(send_small) + len(send_large), total_bytes) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        # Publish order: blobs, then trees, then records; each phase whole before the next,
        # so a record on the remote always has its tree and blobs there too.
        for kind in (KIND_BLOB, KIND_TREE, KIND_VERSION):
            phase = {o: w for o, w in send_small.items() if needed[o] == kind}
            jobs: list[Future] = []

            def submit(fn: Callable[..., _Sent], *args: Any) -> None:
                job = pool.submit(fn, *args)
                job.add_done_callback(lambda f: f.exception() or advance(f.result().count,
                                                                         f.result().nbytes))
                jobs.append(job)

            if kind == KIND_BLOB:
                for oid in send_large:
                    submit(_upload_loose, remote, objects, oid, large_sizes[oid], write_through,
                           loose_slots)
            for batch in _read_batches(store, phase, kind):
                submit(_upload_pack, remote, encode_pack(batch), write_through)
                while sum(not j.done() for j in jobs) >= IN_FLIGHT:
                    _first_done(jobs)
            for job in jobs:
                sent = job.result()
                report.objects_sent += sent.count
                report.bytes_sent += sent.nbytes
            _record_sent(store, remote, [j.result() for j in jobs])
            crashpoint("push:phase-sent")


def _first_done(jobs: list[Future]) -> None:
    wait([j for j in jobs if not j.done()], return_when=FIRST_COMPLETED)


def _read_batches(store: Core, phase: dict[str, tuple[str, int, int]], kind: int
                  ) -> Iterator[list[tuple[str, int, bytes]]]:
    """The phase's objects read from local packs (in pack order), verified, in batches
    of about UPLOAD_PACK_SIZE bytes."""
    batch: list[tuple[str, int, bytes]] = []
    size = 0
    for oid, where in sorted(phase.items(), key=lambda item: item[1][:2]):
        data = store.objects.read_packed(where)
        if hash_bytes(data) != oid:
            raise CorruptObject(f"object {oid[:12]} is corrupt in this store; not pushed",
                                hint="run `dsv verify` to list every damaged object")
        batch.append((oid, kind, data))
        size += len(data)
        if size >= UPLOAD_PACK_SIZE:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class _Sent:
    """What one upload put on the remote, for the store's record of it."""

    count: int
    nbytes: int
    pack: tuple[str, int, list] | None = None   # (pack id, size, entries)
    loose: str | None = None                    # a loose object's oid


def _upload_pack(remote: Remote, pack: tuple[str, bytes, list],
                 write_through: list[ClusterCache]) -> _Sent:
    pack_id, data, entries = pack
    for cache in write_through:
        _write_through(cache, cache.pack_path(pack_id), data=data)
    # The pack first, then its index: an index on the remote always names a whole pack.
    remote.backend.put_bytes(pack_key(pack_id), data)
    remote.backend.put_bytes(index_key(pack_id), data[len(data) - pack_tail_size(len(entries)):])
    for cache in write_through:
        cache.clear_pending(cache.pack_path(pack_id))
    crashpoint("push:uploaded")
    return _Sent(len(entries), sum(e.length for e in entries), (pack_id, len(data), entries))


def _upload_loose(remote: Remote, objects: Any, oid: str, size: int,
                  write_through: list[ClusterCache], slots: threading.Semaphore) -> _Sent:
    path = str(objects.loose_path(oid))
    # Every object is re-hashed before it leaves: a bit flipped on local disk must never
    # become every clone's problem.
    if hash_file(path) != oid:
        raise CorruptObject(f"object {oid[:12]} is corrupt in this store; not pushed",
                            hint="run `dsv verify` to list every damaged object")
    for cache in write_through:
        _write_through(cache, cache.loose_path(oid), src=path)
    with slots:  # each large upload is itself parallel (multipart): few at once
        remote.backend.put_file(loose_key(oid), path)
    for cache in write_through:
        cache.clear_pending(cache.loose_path(oid))
    crashpoint("push:uploaded")
    return _Sent(1, size, loose=oid)


def _write_through(cache: ClusterCache, path: str, data: bytes | None = None,
                   src: str | None = None) -> None:
    """Copy an upload into a cache, marked pending (never evicted) until the origin has it."""
    cache.mark_pending(path)
    if cache.has(path):
        return
    if data is not None:
        cache.fill_bytes(path, data)
    else:
        assert src is not None
        cache.fill_file(path, src)


def _record_sent(store: Core, remote: Remote, sent: list[_Sent]) -> None:
    with store.index.transaction():
        for item in sent:
            if item.pack is not None:
                pack_id, size, entries = item.pack
                store.index.add_remote_pack(remote.name, pack_id, size, entries)
        store.index.add_remote_loose(remote.name, [s.loose for s in sent if s.loose])


def _decide(store: Core, ref: str, v: Version, required: bool, force: bool, body: bytes,
            current: tuple[bytes, str] | None, key: str) -> tuple[str, str]:
    """What to do with one remote ref: ("write" | "same" | "behind" | "skip" | "reject", why)."""
    if current is None:
        return "write", ""
    data, etag = current
    if data == body:
        return "same", ""
    seen = layout.parse_ref(key, data, etag)
    if seen is None or seen.record == v.record or force:
        return "write", ""
    if ref == LATEST and refs.descends_from(store.index, v, seen.record):
        return "write", ""
    if not required:
        return "skip", ""  # pushing one version does not have to move `latest`
    if ref == LATEST:
        theirs = store.index.version(seen.version)
        if theirs is not None and theirs.record == seen.record and v.record and \
                refs.descends_from(store.index, theirs, v.record):
            return "behind", f"the remote is ahead ({seen.version})"
        return "reject", f"is {seen.version} on the remote; {v.id} does not descend from it"
    return "reject", f"is {seen.version} on the remote, not {v.id} (tags move only with --force)"


def _label(ds: Dataset, ref: str) -> str:
    return f"{ds.name}:{ref.rpartition('/')[2]}"


def _preflight(store: Core, remote: Remote, ref_plan: list, force: bool) -> list[str]:
    """Refs the push would be refused, judged before anything is uploaded (the final
    compare-and-swap still decides races)."""
    def judge(item: tuple[Dataset, str, Version, bool]) -> str | None:
        ds, ref, v, required = item
        key = ref_key(ds.id, ref)
        verdict, why = _decide(store, ref, v, required, force, _ref_body(ds, ref, v),
                               remote.backend.read_ref(key), key)
        return f"{_label(ds, ref)} {why}" if verdict == "reject" else None

    with ThreadPoolExecutor(WORKERS) as pool:
        refused = [r for r in pool.map(judge, ref_plan) if r]
        if refused:
            # The remote may merely be ahead, with versions this store has not seen yet:
            # fetch them (records and trees only) so ancestry can be judged.
            fetch(store, remote)
            refused = [r for r in pool.map(judge, ref_plan) if r]
    return refused


def _push_ref(store: Core, remote: Remote, ds: Dataset, ref: str, v: Version,
              required: bool, force: bool, report: PushReport) -> None:
    """Move one remote ref to `v` by compare-and-swap, if that is a fast-forward (or forced)."""
    key = ref_key(ds.id, ref)
    label = _label(ds, ref)
    body = _ref_body(ds, ref, v)
    for _attempt in range(5):
        current = remote.backend.read_ref(key)
        verdict, why = _decide(store, ref, v, required, force, body, current, key)
        if verdict == "same":
            assert current is not None
            report.refs_unchanged.append(label)
            _remember_ref(store, remote, ds.id, ref, v, current[1])
            return
        if verdict == "behind":
            report.behind.append(f"{label}: {why}")
            return
        if verdict == "skip":
            return
        if verdict == "reject":
            report.rejected.append(f"{label} {why}")
            return
        etag = remote.backend.write_ref(key, body, current[1] if current else None)
        if etag is None:
            again = remote.backend.read_ref(key)
            if again is not None and again[0] == body:  # our retried write did land
                etag = again[1]
            else:
                continue  # lost a race: look again
        crashpoint("push:ref-written")
        report.refs_updated.append(f"{label} -> {v.id}")
        _remember_ref(store, remote, ds.id, ref, v, etag)
        return
    report.rejected.append(f"{label} kept changing on the remote while pushing")


def _remember_ref(store: Core, remote: Remote, ds_id: str, ref: str, v: Version,
                  etag: str | None) -> None:
    assert v.record is not None
    with store.index.transaction():
        store.index.set_remote_ref(remote.name, ds_id, ref, v.id, v.record, etag)


# ---- fetch ------------------------------------------------------------------------------

def fetch(store: Core, remote: Remote) -> tuple[FetchReport, dict[tuple[str, str], RemoteRef]]:
    """Bring the remote's version records, trees and refs (not file contents)."""
    report = FetchReport(remote.name)
    remote.connect()
    remote.refresh()
    remote_refs = remote.read_refs()
    index = store.index
    # Records first (small), then only the history the remote's refs reach: versions of
    # lost races or forced-over pushes stay on the remote but are not fetched, as in git.
    located = {kind: {oid: (pack, off, ln) for oid, pack, off, ln in
                      index.remote_objects_of_kind(remote.name, kind)}
               for kind in (KIND_TREE, KIND_VERSION)}
    parsed: _Parsed = {}
    wanted = {oid: w for oid, w in located[KIND_VERSION].items() if w[2] <= MAX_RECORD_BYTES}
    for oid in located[KIND_VERSION].keys() - wanted.keys():
        store.reporter.notice(f"warning: version record {oid[:12]} on {remote.name} claims "
                              f"more than {MAX_RECORD_BYTES} bytes (ignored)")
    local = store.objects.locate_many(wanted)
    for oid, data in _download_packed(store, remote, {o: w for o, w in wanted.items()
                                                      if o not in local}, "fetching", report):
        _parse_into(parsed, oid, bytes(data), True, store)
    for oid in wanted:
        if oid in local:
            _parse_into(parsed, oid, store.objects.read(oid), False, store)
    remote_refs = _owned_refs(remote_refs, parsed, store)
    reachable = _reachable_records({r.record for r in remote_refs.values()}, parsed)
    _check_history(reachable, parsed, store)
    trees = _fetch_trees(store, remote, {parsed[r][0].version.tree for r in reachable},
                         located[KIND_TREE], report)
    for root in {parsed[r][0].version.tree for r in reachable}:
        tree.check_expansion(root, lambda oid: trees.get(oid) or store.objects.read(oid))
    # Only what the accepted refs reach enters the store: records no ref reaches were
    # never checked as history, and must not turn up later (in `index rebuild`, say).
    records = [parsed[oid][0] for oid in reachable]
    names = {ref.dataset: ref for ref in remote_refs.values() if ref.ref == LATEST}

    def record() -> None:
        for rec in sorted(records, key=lambda r: r.version.committed or 0):
            v = rec.version
            known = index.version(v.id)
            if known is not None:
                if known.record != v.record and known.state == "committed":
                    raise CorruptObject(f"version {v.id} on {remote.name} has record "
                                        f"{v.record[:12]}, but this store's has "
                                        f"{(known.record or '-')[:12]}",
                                        hint="two versions share one id (a collision, or "
                                             "tampering); nothing was fetched")
                continue
            if index.dataset_by("id", v.dataset) is None:
                _create_dataset(store, v, rec.dataset_name, names.get(v.dataset))
                report.new_datasets.append(index.dataset_by("id", v.dataset).name)
            index.insert_version(v)
            index.add_promised(v.id, remote.name)
            report.new_versions.append(v.id)
        index.conn.execute("DELETE FROM remote_refs WHERE remote=?", (remote.name,))
        for ref in remote_refs.values():
            index.set_remote_ref(remote.name, ref.dataset, ref.ref, ref.version, ref.record,
                                 ref.etag)
            ds = index.dataset_by("id", ref.dataset)
            report.refs[f"{ds.name if ds else ref.dataset}:{ref.ref.rpartition('/')[2]}"] = \
                ref.version

    with Ingest(store.objects) as ingest:
        for oid in reachable:
            raw = parsed[oid][1]
            if raw is not None:
                ingest.add(oid, KIND_VERSION, raw)
        for oid, raw in trees.items():
            ingest.add(oid, KIND_TREE, raw)
        store.commit_objects(ingest, record, crash="fetch:objects-written")
    changes, report.updated, _kept = _plan_refs(store, remote.name, remote_refs,
                                                fast_forward=False)
    with index.transaction():
        store.refs.apply(changes)
    index.checkpoint()
    return report, remote_refs


def _parse_into(parsed: _Parsed, oid: str,
                raw: bytes, new: bool, store: Core) -> None:
    """Parse one record into `parsed` (raw bytes kept only when they are new here). One
    forged record must not stop a clone: it is left out, with the refs and history that
    need it."""
    try:
        parsed[oid] = (parse_record(raw, oid), raw if new else None)
    except CorruptObject as exc:
        store.reporter.notice(f"warning: {exc.message} (ignored)")


def _owned_refs(remote_refs: dict[tuple[str, str], RemoteRef],
                parsed: _Parsed,
                store: Core) -> dict[tuple[str, str], RemoteRef]:
    """The remote's refs that name a version of their own dataset by its true id; any
    other ref is ignored with a notice (a ref of A naming B's version would make
    `A:tag` act on B's directory). So is a dataset whose id is a local dataset's name:
    ids win over names, so it would take that name over."""
    kept = {}
    for key, ref in remote_refs.items():
        if store.index.dataset_by("id", ref.dataset) is None and \
                store.index.dataset_by("name", ref.dataset) is not None:
            store.reporter.notice(f"warning: ignored remote dataset {ref.dataset}: its id is "
                                  f"the name of a dataset here")
            continue
        got = parsed.get(ref.record)
        if got is not None and got[0].version.id == ref.version and \
                got[0].version.dataset == ref.dataset:
            kept[key] = ref
        elif got is not None:
            store.reporter.notice(f"warning: ignored remote ref {ref.dataset}/{ref.ref}: it "
                                  f"names a version that is not {ref.version} of that dataset")
        else:
            store.reporter.notice(f"warning: ignored remote ref {ref.dataset}/{ref.ref}: its "
                                  f"version record is not in any pack the remote lists "
                                  f"(`dsv verify --remote` checks the remote)")
    return kept


def _check_history(reachable: list[str],
                   parsed: _Parsed,
                   store: Core) -> None:
    """History is a DAG within one dataset: every parent a record names (by id and
    record hash) is a version of the same dataset with that id. A parent that is neither
    on the remote nor here cannot be checked: it is left out of the version's parents
    (the index links versions by id, so an unchecked id could join another history)."""
    for oid in reachable:
        v = parsed[oid][0].version
        kept = []
        for parent in parsed[oid][0].parents:
            got = parsed.get(parent.record)
            local = store.index.version(parent.id)
            if got is not None:
                pid, pds = got[0].version.id, got[0].version.dataset
            elif local is not None:
                if local.record != parent.record:
                    raise CorruptObject(f"version record {oid[:12]} names parent "
                                        f"{parent.id} with another record than this "
                                        f"store's", hint="the remote holds a forged history; "
                                                         "nothing was fetched")
                pid, pds = local.id, local.dataset
            else:
                continue  # history the remote does not hold: the walk stops here
            if pid != parent.id or pds != v.dataset:
                raise CorruptObject(f"version record {oid[:12]} names a parent ({parent.id}) "
                                    f"that is not a version of its own dataset",
                                    hint="the remote holds a forged history; nothing was "
                                         "fetched")
            kept.append(pid)
        v.parents = kept


def _reachable_records(tips: set[str], parsed: _Parsed) -> list[str]:
    """Record oids reachable from `tips` through parents (only records the remote has)."""
    seen: set[str] = set()
    stack = [t for t in tips if t in parsed]
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        for parent in parsed[oid][0].parents:
            if parent.record in parsed:
                stack.append(parent.record)
    return sorted(seen)


def _fetch_trees(store: Core, remote: Remote, roots: set[str],
                 located: dict[str, tuple[str, int, int]], report: FetchReport
                 ) -> dict[str, bytes]:
    """The trees under `roots` this store lacks, level by level, each validated: only
    what the versions reach is read (a remote may hold any amount of other trees). A
    stored tree has everything beneath it stored already."""
    trees: dict[str, bytes] = {}
    seen: set[str] = set()
    frontier = set(roots)
    while frontier:
        seen |= frontier
        stored = store.objects.locate_many(frontier)
        need = {}
        for oid in frontier:
            if oid in stored:
                continue
            if oid not in located:
                _missing_tree(oid)
            need[oid] = located[oid]
        below: set[str] = set()
        for oid, data in _download_packed(store, remote, need, "fetching trees", report):
            raw = bytes(data)
            rows = tree.decode_tree(raw, oid)  # validated here; trusted once stored
            trees[oid] = raw
            below.update(row[4] for row in rows if row[1] == tree.DIR)
        frontier = below - seen
    return trees


def _missing_tree(oid: str) -> None:
    raise CorruptObject(f"tree {oid[:12]} is on neither the remote nor here, though a "
                        f"version needs it", hint="the remote is damaged; nothing was fetched")


def _create_dataset(store: Core, v: Version, dataset_name: str | None,
                    ref: RemoteRef | None) -> None:
    """A dataset first seen on a remote: unbound, named as the remote names it."""
    name = (ref.name if ref and ref.name else None) or dataset_name or v.dataset
    if not refs.is_valid_name(name) or name == LATEST:
        name = v.dataset
    taken = store.index.dataset_by("name", name) or store.index.dataset_by("id", name)
    if taken is not None and taken.id != v.dataset:
        name = f"{name}-{v.dataset}" if refs.is_valid_name(f"{name}-{v.dataset}") else v.dataset
    store.index.insert_dataset(Dataset(id=v.dataset, name=name, created=time.time()))


# ---- downloads --------------------------------------------------------------------------

def _ranges(missing: dict[str, tuple[str, int, int]]
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


def _download_packed(store: Core, remote: Remote, missing: dict[str, tuple[str, int, int]],
                     label: str, report: Any) -> Iterator[tuple[str, memoryview]]:
    """(oid, bytes) of packed objects, each verified against its oid; read from a cluster
    cache where it holds the pack, else from the remote (caching packs mostly needed)."""
    if not missing:
        return
    cache = _read_cache(store)
    whole: set[str] = set()
    sizes = store.index.remote_packs(remote.name)
    if cache is not None:
        need: dict[str, int] = {}
        for pack, _off, length in missing.values():
            need[pack] = need.get(pack, 0) + length
        counts = store.index.remote_pack_counts(remote.name)
        whole = {p for p, n in need.items() if cache.has(cache.pack_path(p))
                 or n >= WHOLE_PACK_SHARE * (sizes.get(p, 1 << 62)
                                             - pack_tail_size(counts.get(p, 0)))}
    total = sum(w[2] for w in missing.values())

    def get(job: tuple[str, int, int, list]) -> tuple[list[tuple[str, bytes]], bool]:
        pack, start, length, group = job
        data = None
        cached = False
        if cache is not None and pack in whole:
            path = cache.pack_path(pack)
            data = cache.read_range(path, start, length)
            cached = data is not None
            if data is None:
                _fill_cache_pack(cache, remote, pack, sizes.get(pack))
                data = cache.read_range(path, start, length)
        if data is None:
            try:
                data = remote.backend.get_range(pack_key(pack), start, length)
            except NotFound:
                raise MissingObject(f"{remote.name} has no pack {pack[:12]}"
                                    + (" and the cluster cache does not hold it" if cache else ""),
                                    hint="run `dsv fetch` to refresh what the remote holds; is "
                                         "the remote reachable?") from None
        out, bad = _split_verified(data, start, group)
        if bad and cache is not None and pack in whole:
            # A damaged cache entry costs a download, never data: drop it, ask the origin.
            cache.drop(cache.pack_path(pack))
            cached = False
            out, bad = _split_verified(remote.backend.get_range(pack_key(pack), start, length),
                                       start, group)
        if bad:
            raise CorruptObject(f"object {bad[:12]} from {remote.name} is corrupt (pack "
                                f"{pack[:12]})", hint="nothing corrupt was stored; the remote "
                                "holds damaged data (`dsv verify --remote` checks it)")
        return out, cached

    with store.reporter.task(label, len(missing), total) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        for got, cached in _bounded(pool, get, _ranges(missing), WORKERS):
            report.from_cache += len(got) if cached else 0
            for oid, data in got:
                report.objects_received += 1
                report.bytes_received += len(data)
                advance(1, len(data))
                yield oid, data


def _split_verified(data: bytes, start: int, group: list[tuple[str, int, int]]
                    ) -> tuple[list[tuple[str, memoryview]], str | None]:
    """The objects of one ranged read, each checked against its id, and the first that
    fails (None when all are good)."""
    view = memoryview(data)  # slices share the buffer: no copy per object
    out = []
    for oid, offset, ln in group:
        piece = view[offset - start:offset - start + ln]
        if len(piece) != ln or hash_bytes(piece) != oid:
            return out, oid
        out.append((oid, piece))
    return out, None


def _fill_cache_pack(cache: ClusterCache, remote: Remote, pack: str, size: int | None) -> None:
    """Copy a whole remote pack into the cache (checked against its name first)."""
    try:
        data = remote.backend.get(pack_key(pack), max_size=min(size or MAX_GET_BYTES,
                                                               MAX_GET_BYTES))
    except (NotFound, RemoteRefused):
        return
    if size is not None and len(data) != size:
        return
    try:
        count = int.from_bytes(data[-24:-16], "big")
        parse_pack_index(data[len(data) - pack_tail_size(count):], pack)
    except (CorruptObject, ValueError):
        return  # not cached; the caller's per-object check reports the damage
    cache.fill_bytes(cache.pack_path(pack), data)


def _lacking(store: Core, entries: dict[str, int]) -> tuple[list[str], list[str]]:
    """Blobs (oid → size) the store does not hold: (packed-size ones, loose-size ones)."""
    small = [oid for oid, size in entries.items() if size < PACK_THRESHOLD]
    present = store.objects.locate_many(small)
    return ([o for o in small if o not in present],
            [o for o, size in entries.items()
             if size >= PACK_THRESHOLD and not store.objects.has_loose(o)])


def _origin_down(store: Core, exc: RemoteError) -> None:
    """Go on from the cluster cache when the origin cannot be reached (re-raise without one)."""
    if not caches(store):
        raise exc
    store.reporter.notice(f"warning: {exc.message}; reading from the cluster cache only")


def ensure_blobs(store: Core, version: Version, entries: dict[str, int]) -> None:
    """Download the blobs (oid → size) a checkout of `version` needs and the store lacks:
    cluster cache first, then the remote the version was fetched from, else the default
    remote. Does nothing, and needs no network, when every blob is here."""
    if not any(_lacking(store, entries)):
        return
    name = store.index.promised().get(version.id)
    names = {s.name for s in store.remote_specs() if s.kind == "origin"}
    try:
        remote: Remote | None = open_remote(store, name if name in names else None)
    except InvalidInput:
        remote = None
    if remote is not None:
        try:
            remote.connect()
            remote.refresh()
        except RemoteError as exc:
            _origin_down(store, exc)
    report = PullReport("-", FetchReport("-"))
    with Ingest(store.objects) as ingest:
        download_blobs(store, remote, entries, report, ingest, label="downloading")
        store.commit_objects(ingest, crash="pull:objects-written")


def download_blobs(store: Core, remote: Remote | None, entries: dict[str, int],
                   report: Any, ingest: Ingest, label: str = "pulling") -> None:
    """Fetch blobs (oid → size) the store lacks into `ingest` (the caller publishes)."""
    small, large = _lacking(store, entries)
    report.objects_skipped += len(entries) - len(small) - len(large)
    todo = set(small) | set(large)
    report.bytes_skipped += sum(size for oid, size in entries.items() if oid not in todo)
    if remote is None:
        missing_any = small or large
        if missing_any:
            raise MissingObject(f"{len(missing_any)} object(s) are not in this store and no "
                                f"remote is configured", hint="add one with `dsv remote add`")
        return
    located = store.index.remote_locate_many(remote.name, small)
    for oid in small:
        if oid not in located:
            large.append(oid)  # not in any pack the remote lists: try it as a loose file
    packed = {oid: located[oid] for oid in small if oid in located}
    for oid, (_pack, _off, length) in packed.items():
        if length != entries[oid]:
            raise CorruptObject(f"object {oid[:12]} is {length} bytes on {remote.name}; the "
                                f"version says {entries[oid]}", hint="the remote is damaged "
                                "or hostile; nothing was stored")
    _check_free_space(store, sum(entries[o] for o in small) + sum(entries[o] for o in large))
    for oid, data in _download_packed(store, remote, packed, label, report):
        ingest.add(oid, KIND_BLOB, data)
    if large:
        _download_loose(store, remote, large, entries, report, ingest)


def _check_free_space(store: Core, nbytes: int) -> None:
    """Refuse a download the disk cannot hold, before any byte of it (sizes come from
    trees, which may be hostile: a tree claiming a 1 TiB file must not fill the disk)."""
    import shutil
    free = shutil.disk_usage(store.tmp_root).free
    if nbytes > free:
        raise InvalidInput(f"the download needs {nbytes:,} bytes and {store.tmp_root} has "
                           f"{free:,} free", hint="free some space, or pull only some paths "
                           "(--path)")


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


def _download_loose(store: Core, remote: Remote, oids: list[str], sizes: dict[str, int],
                    report: Any, ingest: Ingest) -> None:
    cache = _read_cache(store)

    def get(oid: str) -> tuple[int, bool]:
        if cache is not None:
            path = cache.loose_path(oid)
            cached = True
            fd = cache.open_entry(path)  # a regular file or None (anything else dropped)
            if fd is None:
                try:
                    cache.fill_stream(path, _capped(remote.backend.download(loose_key(oid)),
                                                    sizes.get(oid), oid), oid)
                except NotFound:
                    raise MissingObject(f"object {oid[:12]} is not on {remote.name}") from None
                cached = False
                fd = cache.open_entry(path)
            if fd is not None:
                try:
                    if os.fstat(fd).st_size == sizes.get(oid, -1):
                        return ingest.add_large_fd(fd, oid)[1], cached
                except CorruptObject:
                    pass
                finally:
                    os.close(fd)
                cache.drop(path)  # a damaged cache entry: drop it, read the origin
        try:
            return ingest.add_large_stream(_capped(remote.backend.download(loose_key(oid)),
                                                   sizes.get(oid), oid), expect=oid)[1], False
        except NotFound:
            raise MissingObject(f"object {oid[:12]} is not on {remote.name}") from None

    total = sum(sizes.get(o, 0) for o in oids)
    with store.reporter.task("pulling large files", len(oids), total) as advance, \
            ThreadPoolExecutor(4) as pool:
        for size, cached in pool.map(get, oids):
            report.from_cache += cached
            report.objects_received += 1
            report.bytes_received += size
            advance(1, size)


# ---- pull -------------------------------------------------------------------------------


def _plan_refs(store: Core, remote: str, remote_refs: dict[tuple[str, str], RemoteRef],
               force: bool = False, fast_forward: bool = True
               ) -> tuple[list[RefChange], list[str], list[str]]:
    """Which of the remote's refs to take where that loses nothing: tags this store lacks,
    `latest` of datasets that have none, and (with `fast_forward`, as pull does) `latest`
    moved forward along history. Returns (changes, their descriptions, refs kept because
    they differ)."""
    index = store.index
    changes: list[RefChange] = []
    updated: list[str] = []
    diverged: list[str] = []
    for (ds_id, ref), rr in sorted(remote_refs.items()):
        ds = index.dataset_by("id", ds_id)
        v = index.version(rr.version)
        if ds is None or v is None or v.record != rr.record or v.dataset != ds_id:
            continue
        if ref == LATEST:
            current = index.version(ds.latest) if ds.latest else None
            if current is None or (fast_forward and current.id != v.id and
                                   refs.descends_from(store.index, v, current.record or "")):
                changes.append((ds_id, LATEST, v.id))
                updated.append(f"{ds.name}:latest -> {v.id}")
            elif fast_forward and current.id != v.id and \
                    not refs.descends_from(store.index, current, v.record or ""):
                diverged.append(f"{ds.name}:latest is {current.id} here and {v.id} on {remote}")
        else:
            name = ref.rpartition("/")[2]
            mine = index.tag(ds_id, name)
            if mine is None or (mine != v.id and force):
                changes.append((ds_id, name, v.id))
                updated.append(f"{ds.name}:{name} -> {v.id}")
            elif mine != v.id:
                diverged.append(f"tag {ds.name}:{name} is {mine} here and {v.id} on {remote} "
                                f"(kept; --force takes theirs)")
    return changes, updated, diverged


def pull(store: Core, remote: Remote, targets: list[str], paths: list[str] | None,
         force: bool = False,
         prefetched: tuple[FetchReport, dict[tuple[str, str], RemoteRef]] | None = None
         ) -> PullReport:
    fetch_report = FetchReport(remote.name)
    remote_refs: dict[tuple[str, str], RemoteRef] | None = None
    try:
        fetch_report, remote_refs = prefetched or fetch(store, remote)
    except RemoteError as exc:
        # The origin is down: what the cluster cache holds can still be pulled, for the
        # versions this store already knows.
        _origin_down(store, exc)
    report = PullReport(remote.name, fetch_report)
    named = [store.resolve(t) for t in targets]
    changes: list[RefChange] = []
    if remote_refs is not None:
        if named:  # only the datasets asked for move
            scope = {v.dataset for v in named}
            remote_refs = {k: r for k, r in remote_refs.items() if k[0] in scope}
        changes, updated, report.diverged = _plan_refs(store, remote.name, remote_refs, force)
        report.updated = fetch_report.updated + updated
        on_remote = {ds_id for ds_id, _ref in remote_refs}
    else:
        on_remote = {row[0] for row in store.index.remote_refs(remote.name)}
    # Local refs move only once the objects are here (a failed pull moves nothing), so the
    # targets are resolved against the planned refs inside a savepoint that is rolled back.
    with store.index.rolled_back():
        store.refs.apply(changes)
        if targets:
            chosen = [store.resolve(t) for t in targets]
        else:
            chosen = [store.version(ds.latest) for ds in store.index.datasets()
                      if ds.latest and ds.id in on_remote]
        # A dataset whose latest moves gets that version too, so that a working
        # directory following latest can follow it.
        if not paths:
            chosen += [store.version(vid) for _ds, name, vid in changes if name == LATEST]
    chosen = list({v.id: v for v in chosen}.values())
    wanted: dict[str, int] = {}
    for v in chosen:
        report.versions.append(v.id)
        if not paths:
            # Each distinct tree once: no flat manifest of the whole version is built.
            wanted.update(tree.blob_sizes(v.tree, store.read_tree))
            continue
        manifest = store.manifest(v)
        if paths:
            selected = {normalize_user_path(p) for p in paths}
            manifest = {p: e for p, e in manifest.items() if is_under(p, selected)}
            if not manifest:
                ds = store.index.dataset_by("id", v.dataset)
                ref = f"{ds.name if ds else v.dataset}:{v.id}"
                raise InvalidInput(f"none of {', '.join(paths)} is in {ref}",
                                   hint=f"`dsv files list {ref} --recursive` shows its paths")
        for entry in manifest.values():
            wanted[entry.oid] = entry.size
    def record() -> None:
        store.refs.apply(changes)
        if not paths:
            store.index.drop_promised(v.id for v in chosen)

    with Ingest(store.objects) as ingest:
        download_blobs(store, remote, wanted, report, ingest)
        store.commit_objects(ingest, record, crash="pull:objects-written")
    store.index.checkpoint()
    return report
