"""Push: what the remote lacks, in the order that keeps it consistent, then its refs.

Owns the publish order (blobs, then trees, then version records, each phase complete
before the next; refs last, by compare-and-swap with retries), packing small objects
into new ~16 MiB packs, write-through to cluster caches, and remembering what the
remote holds. The judgement of each ref is sync.policy's. Must never change local refs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .. import refs, tree
from ..core import Core
from ..errors import (CorruptObject, DsvError, InvalidInput, MissingObject,
                      RefConflict, RemoteError)
from ..faults import crashpoint
from ..hashing import hash_bytes
from ..tree import is_chunk_list
from ..model import Dataset, Version
from ..reports import PushReport
from ..objects import (KIND_BLOB, KIND_TREE, KIND_VERSION, ObjectStore, PackEntry, encode_pack,
                       pack_tail_size)
from ..refs import LATEST
from ..remotes import layout
from ..remotes.cache import ClusterCache
from ..remotes.layout import (RemoteRef, index_key, is_tombstone, loose_key, pack_key,
                              ref_key, tombstone)
from .policy import decide_push
from .remote import (UPLOAD_PACK_SIZE, WORKERS, Remote, Sent, caches, resolve_target, stage_sent,
                     try_fill)
from . import maintain
from .fetch import fetch
from ..reporting import Advance, FileBytes, plural




IN_FLIGHT = 3                # upload packs held in memory at once


LOCATOR_JOBS = 4             # uploads a group of locators is split into
LOCATOR_LEAVES = 20_000      # blobs named by the trees of one group of locators (memory)

LOOSE_AT_ONCE = 2            # large files uploaded side by side (each in MULTIPART parts)


def _ref_body(ds: Dataset, ref: str, v: Version) -> bytes:
    return layout.ref_body(ds.id, v.id, v.record, ds.name, ds.path, latest=ref == LATEST)


def _push_plan(core: Core, targets: list[str]
               ) -> tuple[list[Version], list[tuple[Dataset, str, Version, bool]]]:
    """Versions to send and refs to set: (dataset, ref, version, required)."""
    ref_plan: list[tuple[Dataset, str, Version, bool]] = []
    roots: list[Version] = []
    if not targets:
        targets = [ds.id for ds in core.index.datasets() if ds.latest]
    for target in targets:
        ds = None
        if ":" not in target and "~" not in target:
            try:
                ds = refs.find_dataset(core.index, target)
            except DsvError:
                ds = None
        if ds is not None:
            if ds.latest is None:   # (no committed version)
                continue
            # What its refs reach, as a fetch brings: a version no ref reaches (left out
            # of latest's history by `commit --force`, its tag deleted, or deleted here
            # and fetched back) stays here, and is not sent again after a remote gc.
            planned = [(ds, LATEST, core.version(ds.latest), True)]
            planned += [(ds, f"tags/{name}", core.version(vid), True)
                        for _d, name, vid, _c in core.index.tags(ds.id)]
            ref_plan += planned
            roots += [v for _ds, _ref, v, _required in planned]
            continue
        v = resolve_target(core, target)
        if v.is_draft:
            raise InvalidInput(f"{target} is a draft; only committed versions are pushed",
                               hint=f"commit it first: dsv versions commit {v.id}")
        owner = core.index.dataset_by("id", v.dataset)
        assert owner is not None
        roots.append(v)
        ref_plan.append((owner, LATEST, v, False))
        for name in core.index.tags_of(v.id):
            ref_plan.append((owner, f"tags/{name}", v, True))
    return refs.ancestry(core.index, roots), ref_plan


_CONFLICT_HINT = ("run `dsv pull` to get the remote's versions, or push with --force to "
                  "overwrite (the remote's versions stay stored)")


def push(core: Core, remote: Remote, targets: list[str], force: bool = False) -> PushReport:
    """Upload what the remote lacks of the `targets` (by default every dataset with a
    committed version), then move its refs by compare-and-swap; refs it would refuse
    raise RefConflict before anything is sent. The push holds a lease on the remote
    throughout (a remote gc waits for it, and it waits for a remote gc)."""
    report = PushReport(remote.name)
    remote.connect(must_exist=False)
    lock = maintain.PushLock(remote)
    try:
        lock.take()
        _push(core, remote, targets, force, report, lock)
    finally:
        lock.release()
    if report.rejected:
        raise RefConflict(f"{plural(len(report.rejected), 'ref')} rejected by {remote.name} "
                          f"(another "
                          f"push won the race): " + "; ".join(report.rejected),
                          hint=_CONFLICT_HINT, report=report)
    return report


def _push(core: Core, remote: Remote, targets: list[str], force: bool, report: PushReport,
          lock: maintain.PushLock) -> None:
    versions, ref_plan = _push_plan(core, targets)
    if remote.scope is not None and {ds.id for ds, *_ in ref_plan} - set(remote.scope):
        # A store that reads only some datasets reads those it pushes too from now on.
        remote.scope = sorted(set(remote.scope) | {ds.id for ds, *_ in ref_plan})
        with core.index.transaction():
            core.index.set_remote_scope(remote.name, remote.scope)
    # A store that reads every dataset of the remote reads, to push, only the pack
    # indexes the catalogs of the datasets it pushes name (and of those of its own it
    # pushed there before): a push to a remote shared by many datasets costs in
    # proportion to this store's. What only other datasets' packs hold, and this store
    # never read, is then uploaded again (stored twice, as when two pushers race:
    # space, never data).
    local = {ds.id for ds in core.index.datasets()}
    mine = sorted({ds.id for ds, *_ in ref_plan}
                  | (core.index.catalog_datasets(remote.name) & local))
    remote.refresh(mine)
    report.versions = len(versions)
    refused = _preflight(core, remote, ref_plan, force)
    if refused:
        report.rejected = refused
        raise RefConflict(f"push to {remote.name} refused, nothing was sent: "
                          + "; ".join(refused), hint=_CONFLICT_HINT, report=report)
    _send(core, remote, versions, report, lock, mine)
    _settle_pending(core, remote)

    def ready() -> None:  # before each ref write: the lease held throughout, or look again
        if not lock.unbroken():
            _send(core, remote, versions, report, lock, mine, lapsed=True)

    for ds, ref, v, required in ref_plan:
        _push_ref(core, remote, ds, ref, v, required, force, report, ready)
    core.index.checkpoint()
    if not report.rejected and len(maintain.small_packs(core, remote)) >= \
            maintain.AUTO_MAINTAIN_PACKS:
        # Many small pushes leave many small packs, which every first fetch reads. Best
        # effort: the push itself is done (another maintainer, or a missing delete right,
        # only means the packs stay as they are).
        try:
            report.maintained = maintain.maintain(core, remote, refresh=False,
                                                  wait=False).to_json()
        except DsvError as exc:
            core.reporter.notice(f"warning: could not repack {remote.name}'s small packs: "
                                 f"{exc.message}")


def _send(core: Core, remote: Remote, versions: list[Version], report: PushReport,
          lock: maintain.PushLock, mine: list[str], lapsed: bool = False) -> None:
    """Upload what the remote lacks of `versions`, until the push's lease has held
    throughout: if it lapsed, a remote gc may have deleted anything the push found there
    or uploaded itself, so the lease is taken again, the remote looked at afresh (the
    catalogs of the datasets `mine`: see `_push`), and every object of every version
    checked against it again."""
    compare = True  # with bases (`_bases`) until one proves not whole
    for _attempt in range(3):
        if lapsed:
            core.reporter.notice(f"warning: this push's lease on {remote.name} lapsed (was "
                                 f"the process stopped?); a remote gc may have run "
                                 f"meanwhile: looking at the remote again")
            lock.take()
            remote.refresh(mine)
            _forget_lost_packs(core, remote)
            new = versions  # a record on the remote no longer vouches for its version
            bases: dict[str, tuple[str, str]] = {}
            report.based_on = []
        else:
            _forget_lost_packs(core, remote)
            on_remote = {oid for oid, *_ in
                         core.index.remote_objects_of_kind(remote.name, KIND_VERSION)}
            new = [v for v in versions if v.record not in on_remote]
            report.versions_sent = len(new)
            bases = _bases(core, remote, new, on_remote) if compare else {}
            report.based_on = sorted({vid for vid, _tree in bases.values()})
        if new:
            try:
                _send_objects(core, remote, new, report, bases,
                              held=lambda: lock.unbroken(look=True))
            except _Lapsed:
                lapsed = True
                continue
            except _NotWhole as exc:
                if not bases:
                    raise RemoteError(f"object {exc.oid[:12]} went missing from "
                                      f"{remote.name} during this push; no ref was moved",
                                      hint="push again") from None
                core.reporter.notice(f"warning: {remote.name} lacks object {exc.oid[:12]} "
                                     f"of a version it held whole; this push checks every "
                                     f"object of its versions (`dsv verify --remote "
                                     f"{remote.name}` lists what is missing)")
                compare = False
                continue
        _write_catalogs(core, remote, versions, new)
        crashpoint("push:objects-sent")
        if lock.unbroken(look=True):
            return
        lapsed = True
    raise RemoteError(f"the push's lease on {remote.name} kept lapsing; no ref was moved",
                      hint="push again")


class _Lapsed(Exception):
    """The push's lease lapsed before its records went up (`_send_objects`)."""


class _NotWhole(Exception):
    """A file shared with a push's base is not on the remote (`_locate`): the base was
    not whole there after all, and comparing with it skipped what the remote lost."""

    def __init__(self, oid: str) -> None:
        super().__init__(oid)
        self.oid = oid


def _write_catalogs(core: Core, remote: Remote, versions: list[Version],
                    in_need: list[Version]) -> None:
    """Make each version's dataset catalog on the remote name every pack holding its
    objects, before any ref names the version (a reader of one dataset reads only what
    its catalog names). The pack of the version's record is named last, so a catalog
    naming it names the rest too; a version whose record's pack is named is skipped.
    `in_need` are the versions whose objects the `need` set holds now."""
    index = core.index
    where = index.remote_locate_many(remote.name, [v.record for v in versions if v.record])
    by_dataset: dict[str, list[Version]] = {}
    for v in versions:
        by_dataset.setdefault(v.dataset, []).append(v)
    for ds_id, ds_versions in by_dataset.items():
        known = index.catalog_packs(remote.name, ds_id)
        todo = _unnamed(ds_versions, where, known)
        if todo:
            known |= remote.list_catalog(ds_id)
            todo = _unnamed(ds_versions, where, known)
        if not todo:
            continue
        if {v.id for v in todo} - {v.id for v in in_need}:
            _collect_needed(core, todo)
            in_need = todo
        packs = index.need_remote_packs(remote.name)
        last = {where[v.record][0] for v in todo if v.record in where}
        remote.add_to_catalog(ds_id, sorted(packs - last - known))
        remote.add_to_catalog(ds_id, sorted(last - known))  # last: see above
        with index.transaction():
            index.set_catalog(remote.name, ds_id, known | packs)


def _unnamed(versions: list[Version], where: dict[str, tuple[str, int, int]],
             named: set[str]) -> list[Version]:
    """The versions whose record is in no pack of `named` (or not known on the remote)."""
    return [v for v in versions if v.record not in where or where[v.record][0] not in named]


def _settle_pending(core: Core, remote: Remote) -> None:
    """Clear write-through markers of entries the origin now holds (a killed push left them)."""
    packs = core.index.remote_packs(remote.name)
    for cache in caches(core, write_through=True):
        marked = cache.pending()
        loose = core.index.remote_loose(remote.name, [os.path.basename(p) for p in marked])
        for path in marked:
            name = os.path.basename(path)
            if name.removesuffix(".pack") in packs or name in loose:
                cache.clear_pending(path)


def _bases(core: Core, remote: Remote, versions: list[Version], on_remote: set[str]
           ) -> dict[str, tuple[str, str]]:
    """For each of `versions` that has one, its nearest ancestor that the remote holds
    whole: its record is there (records go up last, after their trees and blobs) and
    the dataset's catalog there is known to name the record's pack (a catalog naming it
    names the rest). Only what a version holds beyond that ancestor's tree then needs
    looking at (`_collect_needed`): a push after a commit of a few files costs what
    changed, not what the version holds. Version id → (base id, its tree).

    A push whose lease lapsed uses none: a record on the remote no longer vouches for
    its version then (`_send`). Nor does a dataset whose catalog names a pack the remote
    no longer lists: gc and maintain take a pack out of the catalogs before deleting it,
    so the remote lost it otherwise (deleted by hand, a damaged bucket), and the versions
    whose objects it held are no longer whole; each object is then checked against what
    the remote lists, and what it lost is sent again."""
    unfetched = core.index.unfetched()
    listed = set(core.index.remote_packs(remote.name))
    catalogs: dict[str, set[str]] = {}

    def whole(parent: Version) -> bool:
        if parent.id in unfetched or parent.record is None or parent.record not in on_remote:
            return False
        if parent.dataset not in catalogs:
            named = core.index.catalog_packs(remote.name, parent.dataset)
            lost = named - listed
            if lost:
                ds = core.index.dataset_by("id", parent.dataset)
                core.reporter.notice(
                    f"warning: {remote.name} lost {plural(len(lost), 'pack')} the catalog "
                    f"of {ds.name if ds else parent.dataset} names (e.g. "
                    f"{min(lost)[:12]}); this push "
                    f"checks every object of its versions (`dsv verify --remote "
                    f"{remote.name}` lists what is missing)")
            catalogs[parent.dataset] = set() if lost else named
        where = core.index.remote_locate_many(remote.name, [parent.record])
        return parent.record in where and where[parent.record][0] in catalogs[parent.dataset]

    out: dict[str, tuple[str, str]] = {}
    for v in versions:
        if v.files < refs.COMPARE_MIN_FILES:
            continue
        base = refs.nearest_ancestor(core.index, v, whole)
        if base is not None:
            out[v.id] = (base.id, base.tree)
    return out


def _forget_lost_packs(core: Core, remote: Remote) -> None:
    """A store that reads only some datasets lists no pack of the remote (a store that
    reads all of it does, at each refresh, and forgets those gone): before a push
    trusts its picture, it asks for each pack it knows of (a HEAD each) and forgets the
    ones the remote lost, so that what they held is sent again if a version needs it."""
    if remote.scoped is None:
        return
    known = sorted(core.index.remote_packs(remote.name))
    held = _held(remote, [pack_key(p) for p in known])
    lost = [p for p in known if pack_key(p) not in held]
    if not lost:
        return
    core.reporter.notice(f"warning: {remote.name} lost {plural(len(lost), 'pack')} this "
                         f"store knew of (e.g. {lost[0][:12]}); what the versions pushed "
                         f"need of them is sent again (`dsv verify --remote {remote.name}` "
                         f"lists what is missing)")
    with core.index.transaction():
        core.index.forget_remote_packs(remote.name, lost)


def _collect_needed(core: Core, versions: list[Version],
                    bases: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Every object the versions need, with its kind, into the index's `need` set (a temp
    table: a push of a million files holds none of their ids in memory); with `bases`
    (`_bases`), only what each version holds beyond its base's tree."""
    def rows() -> Iterator[tuple[str, int]]:
        # Each root once per base it is compared with: a version of another dataset with
        # the same tree and another base (or none) needs what the first one's base held,
        # in its own catalog (`_write_catalogs` names the packs of the `need` set).
        walked: set[tuple[str, str | None]] = set()
        for v in versions:
            assert v.record is not None
            yield v.record, KIND_VERSION
            base = (bases or {}).get(v.id)
            base_tree = base[1] if base else None
            if (v.tree, base_tree) in walked:
                continue
            walked.add((v.tree, base_tree))
            for kind, oid in tree.subtree_ids(v.tree, core.read_tree, base_tree):
                yield oid, KIND_TREE if kind == tree.DIR else KIND_BLOB

    core.index.need_fill(rows())


def _large_to_send(core: Core, remote: Remote, report: PushReport) -> dict[str, int]:
    """The large (loose) objects the versions need that the remote lacks: oid → size.
    Those not known to be there are asked for with HEAD."""
    index, objects = core.index, core.objects
    send: dict[str, int] = {}
    for batch in index.need_unpacked(remote.name):
        known_loose = index.remote_loose(remote.name, batch)
        for oid in batch:
            if oid not in known_loose and not objects.has_loose(oid):
                raise MissingObject(f"object {oid[:12]} is not in this store, so the versions "
                                    f"that need it cannot be pushed",
                                    hint="pull those versions completely first, or run "
                                         "`dsv verify`")
        found = _ask_loose(core, remote, [oid for oid in batch if oid not in known_loose])
        for oid in batch:
            on_remote = oid in known_loose or oid in found
            if not on_remote:
                send[oid] = os.stat(objects.loose_path(oid)).st_size
            elif objects.has_loose(oid):
                report.bytes_skipped += objects.loose_path(oid).stat().st_size
    return send


def _ask_loose(core: Core, remote: Remote, oids: list[str]) -> set[str]:
    """Which of `oids` the remote holds as loose objects (a HEAD each), remembered."""
    held = _held(remote, [loose_key(o) for o in oids])
    present = [oid for oid in oids if loose_key(oid) in held]
    if present:
        with core.index.transaction():
            core.index.add_remote_loose(remote.name, present)
    return set(present)


def _held(remote: Remote, keys: list[str]) -> set[str]:
    """Those of `keys` the remote holds (a HEAD each, in parallel)."""
    if not keys:  # (the usual case for a group of locators: no thread pool for nothing)
        return set()
    with ThreadPoolExecutor(WORKERS) as pool:
        sizes = list(pool.map(remote.backend.head, keys))
    return {key for key, size in zip(keys, sizes, strict=True) if size is not None}


def _send_objects(core: Core, remote: Remote, versions: list[Version],
                  report: PushReport, bases: Mapping[str, tuple[str, str]],
                  held: Callable[[], bool]) -> None:
    """Upload what `versions` need that the remote lacks: blobs, then trees, then records.
    Records go up only while the lease still `held` since the push began (else _Lapsed):
    a gc that ran meanwhile may have deleted blobs the push found there, and a record on
    the remote vouches for everything under it (a later push compares with it)."""
    index, objects = core.index, core.objects
    _collect_needed(core, versions, bases)
    report.bytes_skipped = 0
    send_large = _large_to_send(core, remote, report)
    small_count, small_bytes = index.need_unsent_size(remote.name)
    report.objects_skipped = index.need_count() - small_count - len(send_large)
    report.bytes_skipped += index.need_on_remote(remote.name)[1]
    total_bytes = small_bytes + sum(send_large.values())
    write_through = caches(core, write_through=True)
    loose_slots = threading.Semaphore(LOOSE_AT_ONCE)
    buffers = _Buffers()
    multi = _MultiIndex(remote)
    with core.reporter.task("pushing", small_count + len(send_large),
                             total_bytes) as advance, ThreadPoolExecutor(WORKERS) as pool:
        # Publish order: blobs, then trees, then records; each phase whole before the next,
        # so a record on the remote always has its tree and blobs there too.
        for kind in (KIND_BLOB, KIND_TREE, KIND_VERSION):
            if kind == KIND_VERSION and not held():
                raise _Lapsed()
            phase = index.need_unsent(remote.name, kind)
            jobs: list[Future[Sent]] = []
            begun: list[str] = []
            index.stage_remote_packs(remote.name, [])  # (empty: see `_record_done`)

            def submit(fn: Callable[..., Sent], *args: Any) -> None:  # noqa: ANN401 - fn's
                job = pool.submit(fn, *args)
                # What a large upload showed while it was sent is not counted again.
                job.add_done_callback(lambda f: f.exception() or advance(
                    f.result().count, f.result().nbytes - f.result().shown))
                jobs.append(job)  # noqa: B023 - called only within this phase

            if kind == KIND_BLOB:
                for oid, size in send_large.items():
                    submit(_upload_loose, remote, objects, oid, size, write_through,
                           loose_slots, advance)
            for batch in _read_batches(core, phase, kind):
                if kind == KIND_TREE and remote.format < layout.CHUNK_FORMAT and \
                        any(is_chunk_list(data) for _oid, _kind, data in batch):
                    remote.raise_format(layout.CHUNK_FORMAT)
                if kind != KIND_BLOB:  # (every blob is on the remote by now)
                    for made in _locators(core, remote, batch):
                        step = max(1, -(-len(made) // LOCATOR_JOBS))
                        for start in range(0, len(made), step):
                            submit(_upload_locators, remote, made[start:start + step])
                        _fewer_than(jobs, IN_FLIGHT + LOCATOR_JOBS)
                pack = encode_pack(batch, into=buffers.take())
                with index.transaction():   # (before the upload: see `Remote.refresh`)
                    index.note_sending(remote.name, [pack[0]])
                begun.append(pack[0])
                submit(_upload_pack, remote, pack, write_through, buffers)
                _fewer_than(jobs, IN_FLIGHT)
                # Finished uploads are let go at once (a fast remote finishes them before
                # the window fills, and they would pile up until the phase ends).
                _record_done(core, remote, jobs, report, multi)
            wait(jobs)
            _record_done(core, remote, jobs, report, multi)
            with index.transaction():
                index.add_staged_remote_packs()
                index.forget_sending(remote.name, begun)
            crashpoint("push:phase-sent")
    multi.flush()   # (before any ref names what it indexes: a clone that follows reads it)


def _fewer_than(jobs: list[Future[Sent]], limit: int) -> None:
    """Wait until fewer than `limit` of `jobs` are unfinished."""
    while sum(not j.done() for j in jobs) >= limit:
        wait([j for j in jobs if not j.done()], return_when=FIRST_COMPLETED)


def _record_done(core: Core, remote: Remote, jobs: list[Future[Sent]],
                 report: PushReport, multi: _MultiIndex) -> None:
    """Stage what the finished uploads put on the remote, and let them go (a push of
    a million objects holds only the uploads in flight). The phase's packs are recorded
    when it ends; a push stopped before that leaves them for the next one's `refresh`
    to find (each was noted in `Index.sending` before its upload began)."""
    done = [j for j in jobs if j.done()]
    if not done:
        return
    sent = [j.result() for j in done]  # (an upload's error is raised here)
    for item in sent:
        report.objects_sent += item.count
        report.bytes_sent += item.nbytes
    stage_sent(core, remote, sent)
    multi.add(sent)
    gone = set(done)
    jobs[:] = [j for j in jobs if j not in gone]


def _read_batches(core: Core, phase: Iterable[tuple[str, tuple[str, int, int]]], kind: int
                  ) -> Iterator[list[tuple[str, int, bytes]]]:
    """The phase's objects read from local packs (given in pack order), verified, in
    batches of about UPLOAD_PACK_SIZE bytes."""
    batch: list[tuple[str, int, bytes]] = []
    size = 0
    for oid, where in phase:
        data = core.objects.read_packed(where)
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


def _locators(core: Core, remote: Remote, batch: list[tuple[str, int, bytes]]
              ) -> Iterator[list[tuple[str, bytes]]]:
    """(key, bytes) of the locator of each tree object and version record in `batch`
    (layout.Locator): its bytes, and where each blob or chunk it names is on the remote,
    so that a reader without a store reads a path of a version one request per step.
    A leaf shard of a big directory has none: its parent's locator carries it (one
    upload per directory of a few thousand files, not one per shard).
    Made a group at a time, each naming about LOCATOR_LEAVES blobs: memory follows
    that, not the batch (16 MiB of trees of a million-file dataset name 160,000)."""
    named: list[tuple[str, bytes, dict[str, bytes], dict[str, int]]] = []
    leaves = 0
    for oid, kind, data in batch:
        carried: dict[str, bytes] = {}
        mine: dict[str, int] = {}
        if kind == KIND_TREE:
            node = tree.decode_node(data, oid, trusted=True)
            if _is_leaf_shard(node):
                continue
            mine = tree.leaves(node)
            for _digit, child in node.shards:
                child_data = core.read_tree(child)
                child_node = tree.decode_node(child_data, child, trusted=True)
                if _is_leaf_shard(child_node):
                    carried[child] = child_data
                    mine.update(tree.leaves(child_node))
        named.append((oid, data, carried, mine))
        leaves += len(mine)
        if leaves >= LOCATOR_LEAVES:
            yield _locate(core, remote, named)
            named, leaves = [], 0
    if named:
        yield _locate(core, remote, named)


def _is_leaf_shard(node: tree.Node) -> bool:
    """Whether `node` is a leaf of a sharded directory (entries of one shard)."""
    return bool(node.prefix) and not node.shards


def _locate(core: Core, remote: Remote,
            named: list[tuple[str, bytes, dict[str, bytes], dict[str, int]]]
            ) -> list[tuple[str, bytes]]:
    """The locators of `named` (object id, its bytes, the objects it carries, the blobs
    it and they name: id → size)."""
    wanted = {leaf for _oid, _data, _carried, mine in named for leaf in mine}
    packed = core.index.remote_locate_many(remote.name, wanted)
    loose = core.index.remote_loose(remote.name, wanted - packed.keys())
    # A large file the push did not look at (shared with its base) is on the remote if
    # the base is whole there, unknown here: asked for, so that readers find it in one
    # request. One that is not there was lost (every blob this push sent is known).
    asked = sorted(leaf for leaf in wanted - packed.keys() - loose
                   if core.objects.has_loose(leaf))
    found = _ask_loose(core, remote, asked)
    if len(found) < len(asked):
        raise _NotWhole(min(set(asked) - found))
    loose |= found
    out = []
    for oid, data, carried, mine in named:
        places: dict[str, layout.Location] = {
            leaf: packed[leaf] if leaf in packed else (None, 0, size)
            for leaf, size in mine.items() if leaf in packed or leaf in loose}
        out.append((layout.locator_key(oid), layout.encode_locator(data, places, carried)))
    return out


def _upload_locators(remote: Remote, locators: list[tuple[str, bytes]]) -> Sent:
    for key, data in locators:
        remote.backend.put_bytes(key, data)
    return Sent(0, 0)


class _Buffers:
    """The buffers packs are built in for upload (IN_FLIGHT + 1 at once), each used again
    once its upload is done: a fresh 16 MiB buffer costs a page fault per 4 KiB."""

    def __init__(self) -> None:
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray()

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) <= IN_FLIGHT:
                self._free.append(buf)


def _upload_pack(remote: Remote, pack: tuple[str, bytearray, list[PackEntry]],
                 write_through: list[ClusterCache], buffers: _Buffers) -> Sent:
    pack_id, data, entries = pack
    try:
        written = [cache for cache in write_through
                   if _write_through(remote.core, cache, cache.pack_path(pack_id), data=data)]
        # The pack first, then its index: an index on the remote always names a whole pack.
        remote.backend.put_bytes(pack_key(pack_id), data)
        index = bytes(data[len(data) - pack_tail_size(len(entries)):])
        remote.backend.put_bytes(index_key(pack_id), index)
    finally:
        buffers.give(data)
    for cache in written:
        cache.clear_pending(cache.pack_path(pack_id))
    crashpoint("push:uploaded")
    return Sent(len(entries), sum(e.length for e in entries), (pack_id, len(data), entries),
                index=index)


class _MultiIndex:
    """The indexes of the packs a push uploads, gathered into multi-pack indexes
    (`midx/`, docs/format.md): a first fetch reads one file where it read one per pack (a
    1 GiB file is 66 packs: 66 GETs, a sixth of the clone's time before its first byte
    of data). Up to MAX_MULTI_BYTES each; fewer than MULTI_MIN_PACKS left at the end are
    read one by one. Only a saving: a push stopped before it writes one loses nothing."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.held: list[tuple[str, bytes]] = []
        self.nbytes = 0

    def add(self, sent: list[Sent]) -> None:
        for item in sent:
            if item.pack is None or item.index is None:
                continue
            size = len(item.index) + layout.MULTI_ENTRY_BYTES
            if size > layout.MAX_MULTI_BYTES - layout.MULTI_HEAD_BYTES:
                continue   # (a pack of very many objects: its own index serves)
            if self.nbytes + size > layout.MAX_MULTI_BYTES - layout.MULTI_HEAD_BYTES or \
                    len(self.held) == layout.MAX_MULTI_PACKS:
                self.flush()
            self.held.append((item.pack[0], item.index))
            self.nbytes += size

    def flush(self) -> None:
        """Upload what is held as one multi-pack index (if it is worth one)."""
        if len(self.held) >= layout.MULTI_MIN_PACKS:
            body = layout.encode_multi_index(self.held)
            self.remote.backend.put_bytes(
                layout.multi_index_key(self.held[0][0], hash_bytes(body)), body)
        self.held, self.nbytes = [], 0


def _upload_loose(remote: Remote, objects: ObjectStore, oid: str, size: int,
                  write_through: list[ClusterCache], slots: threading.Semaphore,
                  advance: Advance) -> Sent:
    path = str(objects.loose_path(oid))
    # Every object is re-hashed before it leaves: a bit flipped on local disk must never
    # become every clone's problem.
    if not objects.verify_loose(oid):
        raise CorruptObject(f"object {oid[:12]} is corrupt in this store; not pushed",
                            hint="run `dsv verify` to list every damaged object")
    written = [cache for cache in write_through
               if _write_through(remote.core, cache, cache.loose_path(oid), src=path)]
    # (S3 reports from several threads, and rewinds a part it sends again.)
    pieces = FileBytes(advance, size)
    with slots:  # each large upload is itself parallel (multipart): few at once
        remote.backend.put_file(loose_key(oid), path, pieces)
    for cache in written:
        cache.clear_pending(cache.loose_path(oid))
    crashpoint("push:uploaded")
    return Sent(1, size, loose=oid, shown=pieces.shown)


def _write_through(core: Core, cache: ClusterCache, path: str,
                   data: bytes | bytearray | None = None, src: str | None = None) -> bool:
    """Copy an upload into a cache, marked pending (never evicted) until the origin has
    it; whether it is there. A cache that cannot be written (read-only, full, another
    user's directories) costs the copy, never the push (`try_fill`: one warning)."""
    def fill() -> None:
        if data is not None:
            cache.fill_bytes(path, data)
        else:
            assert src is not None
            cache.fill_file(path, src)

    if not try_fill(core, cache, lambda: cache.mark_pending(path)):
        return False
    if cache.has(path) or try_fill(core, cache, fill):
        return True
    cache.clear_pending(path)  # nothing of ours to keep
    return False


def _label(ds: Dataset, ref: str) -> str:
    return f"{ds.name}:{ref.rpartition('/')[2]}"


def _preflight(core: Core, remote: Remote, ref_plan: list[tuple[Dataset, str, Version, bool]],
               force: bool) -> list[str]:
    """Refs the push would be refused, judged before anything is uploaded (the final
    compare-and-swap still decides races)."""
    def judge(item: tuple[Dataset, str, Version, bool]) -> str | None:
        ds, ref, v, required = item
        key = ref_key(ds.id, ref)
        verdict, why = decide_push(refs.History(core.index), ref, v, required, force,
                                   _ref_body(ds, ref, v), remote.backend.read_ref(key), key)
        return f"{_label(ds, ref)} {why}" if verdict == "reject" else None

    with ThreadPoolExecutor(WORKERS) as pool:
        refused = [r for r in pool.map(judge, ref_plan) if r]
        if refused:
            # The remote may merely be ahead, with versions this store has not seen yet:
            # fetch them (records and trees only) so ancestry can be judged.
            fetch(core, remote)
            refused = [r for r in pool.map(judge, ref_plan) if r]
    return refused


def _push_ref(core: Core, remote: Remote, ds: Dataset, ref: str, v: Version,
              required: bool, force: bool, report: PushReport,
              ready: Callable[[], None]) -> None:
    """Move one remote ref to `v` by compare-and-swap, if that is a fast-forward (or forced)."""
    key = ref_key(ds.id, ref)
    label = _label(ds, ref)
    body = _ref_body(ds, ref, v)
    for _attempt in range(5):
        current = remote.backend.read_ref(key)
        verdict, why = decide_push(refs.History(core.index), ref, v, required, force, body,
                                   current, key)
        if verdict == "same":
            assert current is not None
            report.refs_unchanged.append(label)
            _remember_ref(core, remote, ds.id, ref, v, current[1])
            return
        if verdict == "behind":
            report.behind.append(f"{label}: {why}")
            return
        if verdict == "skip":
            return
        if verdict == "reject":
            report.rejected.append(f"{label} {why}")
            return
        ready()
        etag = remote.backend.write_ref(key, body, current[1] if current else None)
        if etag is None:
            again = remote.backend.read_ref(key)
            if again is not None and again[0] == body:  # our retried write did land
                etag = again[1]
            else:
                continue  # lost a race: look again
        crashpoint("push:ref-written")
        report.refs_updated.append(f"{label} -> {v.id}")
        _remember_ref(core, remote, ds.id, ref, v, etag)
        return
    report.rejected.append(f"{label} kept changing on the remote while pushing")


def delete_refs(core: Core, remote: Remote, targets: list[str]) -> PushReport:
    """Delete refs on the remote: `DATASET:TAG` is one tag, `DATASET` the dataset's
    `latest` and every tag (a dataset deleted here is found by its name on the remote).
    Each ref is replaced by a tombstone by compare-and-swap, so a push racing with the
    delete is never lost silently; the versions they reached stay until a remote gc.
    Every named ref must exist: otherwise nothing is deleted."""
    report = PushReport(remote.name)
    if not targets:
        raise InvalidInput("name what to delete", hint="dsv push --delete DATASET:TAG, or "
                                                       "DATASET for all its refs")
    remote.connect()
    found = remote.read_refs()
    keys: dict[tuple[str, str], str] = {}   # (dataset id, ref) → label
    for target in targets:
        name, colon, tag = target.partition(":")
        if colon and not tag:   # (a tag forgotten must not widen to every ref)
            raise InvalidInput(f"{target} names no tag; nothing was deleted",
                               hint=f"dsv push --delete {name}:TAG deletes one tag, "
                                    f"{name} alone all its refs")
        ds_id = _remote_dataset(core, found, name, remote.name)
        ref = LATEST if tag == LATEST else f"tags/{tag}"
        if tag and (ds_id, ref) not in found:
            raise InvalidInput(f"{remote.name} has no ref {target}; nothing was deleted",
                               hint=f"`dsv fetch {remote.name}` and `dsv tags` show its "
                                    f"tags as DATASET:{remote.name}/TAG")
        if tag:
            keys[(ds_id, ref)] = target
        else:
            if not any(d == ds_id for d, _r in found):
                raise InvalidInput(f"{remote.name} has no ref of dataset {name}; nothing "
                                   f"was deleted")
            keys.update(((d, r), f"{name}:{r.removeprefix('tags/')}")
                        for (d, r) in sorted(found) if d == ds_id)
    for (ds_id, ref), label in keys.items():
        key = ref_key(ds_id, ref)
        # Compare-and-swap against what was read above: a ref moved since (a push that
        # landed meanwhile) is not deleted unseen.
        written = remote.backend.write_ref(key, tombstone(ds_id), found[(ds_id, ref)].etag)
        if written is None:
            again = remote.backend.read_ref(key)
            if again is None or not is_tombstone(key, again[0]):
                report.rejected.append(f"{label} changed on the remote since it was read")
                continue
        crashpoint("push:ref-deleted")
        report.refs_deleted.append(label)
        with core.index.transaction():
            core.index.drop_remote_ref(remote.name, ds_id, ref)
    if report.rejected:
        raise RefConflict(f"{plural(len(report.rejected), 'ref')} not deleted on "
                          f"{remote.name}: " + "; ".join(report.rejected),
                          hint="fetch to see what it is now, and delete again if it should "
                               "still go", report=report)
    return report


def _remote_dataset(core: Core, found: dict[tuple[str, str], RemoteRef], name: str,
                    remote: str) -> str:
    """The id of dataset `name` (here, or by the name the remote's `latest` carries)."""
    local = core.index.dataset_by("name", name) or core.index.dataset_by("id", name)
    if local is not None:
        return local.id
    ids = {r.dataset for r in found.values() if r.name == name or r.dataset == name}
    if len(ids) != 1:
        raise InvalidInput(f"no dataset named {name!r} here or on {remote}; nothing was "
                           f"deleted", hint="`dsv datasets list` shows the datasets")
    return ids.pop()


def _remember_ref(core: Core, remote: Remote, ds_id: str, ref: str, v: Version,
                  etag: str | None) -> None:
    assert v.record is not None
    with core.index.transaction():
        core.index.set_remote_ref(remote.name, ds_id, ref, v.id, v.record, etag)
