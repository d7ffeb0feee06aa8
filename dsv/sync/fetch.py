"""Fetch: a remote's version records, trees and refs (no file contents).

Owns reading records (untrusted: parsed by records.parse_record, a forged one is left
out with its history), accepting only refs that name their own dataset's versions,
checking history before anything is stored, fetching the trees of the versions the refs
name (of their whole history only when asked: the rest are `unfetched`, and `fault_in`
brings a version's trees the first time something reads them), and recording it all in
one transaction. Which local refs then move is sync.policy's decision. Must never
download blobs.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from .. import refs, tree
from ..core import Core
from ..errors import CorruptObject, DsvError, MissingObject, UnsafePath
from ..model import COMMITTED, Dataset, Version
from ..reports import FetchReport
from ..objects import (KIND_TREE, KIND_VERSION, Ingest)
from ..records import MAX_RECORD_BYTES, Record, parse_record
from ..refs import LATEST
from ..remotes.base import RemoteError, RemoteRefused
from ..remotes.layout import RemoteRef, ref_key
from .policy import plan_pull
from .remote import Remote, open_origin_of
from .download import download_packed, origin_down

MAX_RECORDS_HELD = 256 << 20
"""Bytes of version records (every one of the datasets fetched, as the remote's pack
indexes give their lengths) a fetch reads and holds parsed at most. A record is a few
hundred bytes, so this is hundreds of thousands of versions, more than years of hourly
pushes of dozens of datasets. A hostile remote listing many records near
MAX_RECORD_BYTES is refused before any is read, where it could otherwise make a fetch
hold gigabytes."""


_Parsed = dict[str, tuple[Record, bytes | None]]
"""Version records read in a fetch: record oid → (parsed record, raw bytes if new here)."""


def fetch(core: Core, remote: Remote, datasets: list[str] | None = None,
          whole: bool = False, history: bool = False
          ) -> tuple[FetchReport, dict[tuple[str, str], RemoteRef]]:
    """Bring the remote's version records, trees and refs (not file contents): of every
    dataset (`whole`, or a store that reads them all), of the store's remembered scope
    (a `clone --dataset`), or of `datasets` (ids) added to it. Where the remote keeps
    catalogs, a scoped fetch reads only what the datasets' catalogs name.

    Trees come for the versions the remote's refs name (its `latest`s and tags), and
    with `history` for every version they reach; the others are recorded as `unfetched`
    (their trees come when first read, see `fault_in`): a first fetch reads trees in
    proportion to the content, not to the number of pushes."""
    report = FetchReport(remote.name)
    remote.connect()
    if whole:
        remote.scope = None
    elif datasets:
        if remote.scope is not None:  # a store reading some datasets reads these too now
            remote.scope = sorted(set(datasets) | set(remote.scope))
            with core.index.transaction():
                core.index.set_remote_scope(remote.name, remote.scope)
        else:  # (a store reading everything reads only these this time)
            remote.scope = sorted(set(datasets))
    scope = remote.scope
    remote.refresh()
    remote_refs = remote.read_refs()
    index = core.index
    for _attempt in range(2):
        if all(index.remote_locate_many(remote.name, [r.record])
               for r in remote_refs.values()):
            break
        # A push moved a ref after the packs were listed (its record is in a pack that
        # listing missed), or a catalog read is not whole: look once more (at every
        # pack index, then), then judge the refs as they are.
        if not remote.widen():
            remote.refresh()
        remote_refs = remote.read_refs()
    # Records first (small), then only the history the remote's refs reach: versions of
    # lost races or forced-over pushes stay on the remote but are not fetched, as in git.
    records = {oid: (pack, off, ln) for oid, pack, off, ln in
               index.remote_objects_of_kind(remote.name, KIND_VERSION)}
    parsed: _Parsed = {}
    wanted = {oid: w for oid, w in records.items() if w[2] <= MAX_RECORD_BYTES}
    for oid in records.keys() - wanted.keys():
        core.reporter.notice(f"warning: version record {oid[:12]} on {remote.name} claims "
                              f"more than {MAX_RECORD_BYTES} bytes (ignored)")
    claimed = sum(length for _pack, _offset, length in wanted.values())
    if claimed > MAX_RECORDS_HELD:
        raise RemoteRefused(f"{remote.name} holds {claimed:,} bytes of version records, "
                            f"more than the {MAX_RECORDS_HELD:,} a fetch holds at once; "
                            f"nothing was fetched", hint="the remote is damaged or "
                            "hostile; or clone only some of its datasets (--dataset)")
    local = core.objects.locate_many(wanted)
    for oid, data in download_packed(core, remote, {o: w for o, w in wanted.items()
                                                      if o not in local}, "fetching", report):
        _parse_into(parsed, oid, bytes(data), True, core)
    for oid in wanted:
        if oid in local:
            _parse_into(parsed, oid, core.objects.read(oid), False, core)
    kept = _owned_refs(remote_refs, parsed, core)
    remote.ignored_refs.update(ref_key(ds, ref) for ds, ref in remote_refs.keys() - kept.keys())
    remote_refs = kept
    reachable = _reachable_records({r.record for r in remote_refs.values()}, parsed)
    _check_history(reachable, parsed, core)
    named = {r.record for r in remote_refs.values()}
    roots = {parsed[r][0].version.tree for r in reachable if history or r in named}
    with _Scratch(core.objects.tmp_root) as trees:
        _fetch_checked_trees(core, remote, roots, report, trees)
        _store_fetched(core, remote, report, parsed, reachable, remote_refs, trees, scope,
                       roots)
    changes, report.updated, _kept = plan_pull(refs.History(core.index), remote.name, remote_refs,
                                                fast_forward=False)
    with index.transaction():
        core.refs.apply(changes)
    index.checkpoint()
    return report, remote_refs


class _Scratch:
    """The trees a fetch read, kept in an unnamed temp file until they are stored (only
    where each one is stays in memory: a fetch holds no more than a few trees at once)."""

    def __init__(self, tmp_dir: Path) -> None:
        tmp_dir.mkdir(exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=tmp_dir)
        self._fd = self._file.fileno()
        self.where: dict[str, tuple[int, int]] = {}
        self._end = 0

    def __enter__(self) -> "_Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __contains__(self, oid: object) -> bool:
        return oid in self.where

    def add(self, oid: str, data: bytes | memoryview) -> None:
        """Keep one tree's bytes."""
        if oid not in self.where:
            os.pwrite(self._fd, data, self._end)
            self.where[oid] = (self._end, len(data))
            self._end += len(data)

    def read(self, oid: str) -> bytes:
        """A kept tree's bytes."""
        offset, length = self.where[oid]
        return os.pread(self._fd, length, offset)


def _store_fetched(core: Core, remote: Remote, report: FetchReport, parsed: _Parsed,
                   reachable: list[str], remote_refs: dict[tuple[str, str], RemoteRef],
                   trees: _Scratch, scope: list[str] | None, roots: set[str]) -> None:
    """Store the new records and trees, and record the versions and refs, in one
    transaction. A new version whose trees were not fetched (not under `roots`) is
    marked unfetched, unless its root tree is here already."""
    index = core.index
    # Only what the accepted refs reach enters the store: records no ref reaches were
    # never checked as history, and must not turn up later (in `index rebuild`, say).
    records = [parsed[oid][0] for oid in reachable]
    names = {ref.dataset: ref for ref in remote_refs.values() if ref.ref == LATEST}
    # (no dataset is named as another one of this fetch is identified: ids win over
    # names, so the name would lead to the other one, whatever the listing says)
    ids = {rec.version.dataset for rec in records}

    def record() -> None:
        for rec in sorted(records, key=lambda r: r.version.committed or 0):
            v = rec.version
            known = index.version(v.id)
            if known is not None:
                if known.record != v.record and known.state == COMMITTED:
                    raise CorruptObject(f"version {v.id} on {remote.name} has record "
                                        f"{(v.record or '-')[:12]}, but this store's has "
                                        f"{(known.record or '-')[:12]}",
                                        hint="two versions share one id (a collision, or "
                                             "tampering); nothing was fetched")
                continue
            if index.dataset_by("id", v.dataset) is None:
                report.new_datasets.append(
                    _create_dataset(core, v, rec.dataset_name, names.get(v.dataset), ids))
            index.insert_version(v)
            index.add_promised(v.id, remote.name)
            if v.tree not in roots:
                index.add_unfetched(v.id, remote.name)
            report.new_versions.append(v.id)
        # (trees validated now, or stored as trees earlier: those versions' marks go)
        index.drop_unfetched_roots(roots)
        index.drop_unfetched_stored(KIND_TREE)
        report.unfetched = len(index.unfetched())
        index.replace_remote_refs(remote.name, [(r.dataset, r.ref, r.version, r.record, r.etag)
                                                for r in remote_refs.values()], scope)
        for ref in remote_refs.values():
            ds = index.dataset_by("id", ref.dataset)
            report.refs[f"{ds.name if ds else ref.dataset}:{ref.ref.rpartition('/')[2]}"] = \
                ref.version

    with Ingest(core.objects) as ingest:
        for oid in reachable:
            raw = parsed[oid][1]
            if raw is not None:
                ingest.add(oid, KIND_VERSION, raw)
        for oid in trees.where:
            ingest.add(oid, KIND_TREE, trees.read(oid))
        core.commit_objects(ingest, record, crash="fetch:objects-written")


def _parse_into(parsed: _Parsed, oid: str,
                raw: bytes, new: bool, core: Core) -> None:
    """Parse one record into `parsed` (raw bytes kept only when they are new here). One
    forged record must not stop a clone: it is left out, with the refs and history that
    need it."""
    try:
        parsed[oid] = (parse_record(raw, oid), raw if new else None)
    except CorruptObject as exc:
        core.reporter.notice(f"warning: {exc.message} (ignored)")


def _owned_refs(remote_refs: dict[tuple[str, str], RemoteRef],
                parsed: _Parsed,
                core: Core) -> dict[tuple[str, str], RemoteRef]:
    """The remote's refs that name a version of their own dataset by its true id; any
    other ref is ignored with a notice (a ref of A naming B's version would make
    `A:tag` act on B's directory). So is a dataset whose id is a local dataset's name:
    ids win over names, so it would take that name over."""
    kept = {}
    for key, ref in remote_refs.items():
        if core.index.dataset_by("id", ref.dataset) is None and \
                core.index.dataset_by("name", ref.dataset) is not None:
            core.reporter.notice(f"warning: ignored remote dataset {ref.dataset}: its id is "
                                  f"the name of a dataset here")
            continue
        got = parsed.get(ref.record)
        if got is not None and got[0].version.id == ref.version and \
                got[0].version.dataset == ref.dataset:
            kept[key] = ref
        elif got is not None:
            core.reporter.notice(f"warning: ignored remote ref {ref.dataset}/{ref.ref}: it "
                                  f"names a version that is not {ref.version} of that dataset")
        else:
            core.reporter.notice(f"warning: ignored remote ref {ref.dataset}/{ref.ref}: its "
                                  f"version record is not in any pack the remote lists "
                                  f"(`dsv verify --remote` checks the remote)")
    return kept


def _check_history(reachable: list[str],
                   parsed: _Parsed,
                   core: Core) -> None:
    """History is a DAG within one dataset: every parent a record names (by id and
    record hash) is a version of the same dataset with that id. A parent that is neither
    on the remote nor here cannot be checked: it is left out of the version's parents
    (the index links versions by id, so an unchecked id could join another history)."""
    for oid in reachable:
        v = parsed[oid][0].version
        kept = []
        for parent in parsed[oid][0].parents:
            got = parsed.get(parent.record)
            local = core.index.version(parent.id)
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


def fault_in(core: Core, root: str) -> None:
    """Bring the trees under `root`, the root tree of versions fetched without their
    trees, from the remote their fetch left them on (the default origin if that one is
    no longer configured); validated as a fetch validates them, stored for good, and the
    versions' marks dropped. Under the store lock, judged again once it is held: another
    process may have brought them meanwhile."""
    with core.locked("fetch"):
        owners = core.index.unfetched_with_tree(root)
        if not owners:
            return
        if core.index.packed_of_kind([root], KIND_TREE):
            with core.index.transaction():  # (validated when it was stored as a tree)
                core.index.drop_unfetched_roots([root])
            return
        vid, name = owners[0]
        try:
            remote = open_origin_of(core, name)
            name = remote.name
        except DsvError as exc:
            raise MissingObject(f"the trees of version {vid} are on remote {name}, which "
                                f"cannot be opened: {exc.message}",
                                hint="add the remote again, or `dsv fetch --history` from "
                                     "another that holds them") from None
        core.reporter.notice(f"fetching the trees of version {vid} from {name}")
        down: RemoteError | None = None
        try:
            remote.connect()
            remote.refresh()
        except RemoteError as exc:
            # (as for files: where the origin's packs are is known from the last fetch,
            # and a cluster cache may hold them)
            origin_down(core, exc)
            down = exc
        located = _locate_trees(core, remote, [root])
        if root not in located and down is None and remote.widen():
            located = _locate_trees(core, remote, [root])
        if root not in located and down is not None:
            raise down  # (not known to be anywhere the cache could hold)
        if root not in located:
            raise MissingObject(f"the trees of version {vid} are no longer on {name}",
                                hint="a remote gc removes history no ref reaches any more "
                                     "(after a `push --force`); `dsv log` still lists the "
                                     "version, but its files cannot be read")
        with _Scratch(core.objects.tmp_root) as trees, Ingest(core.objects) as ingest:
            # (the root is fetched even when its bytes are here as a file: unvalidated)
            _fetch_checked_trees(core, remote, {root}, FetchReport(name), trees)
            for oid in trees.where:
                ingest.add(oid, KIND_TREE, trees.read(oid))
            core.commit_objects(ingest, lambda: core.index.drop_unfetched_roots([root]))


def _locate_trees(core: Core, remote: Remote, oids: Iterable[str]
                  ) -> dict[str, tuple[str, int, int]]:
    """Where those of `oids` the store knows of as tree objects on `remote` are: oid →
    (pack, offset, length). Asked for a level of trees at a time: a remote's history
    holds any number of trees, and a fetch holds none but those it reads."""
    return core.index.remote_locate_many(remote.name, oids, KIND_TREE)


def _fetch_checked_trees(core: Core, remote: Remote, roots: set[str], report: FetchReport,
                         trees: _Scratch) -> None:
    """The trees under `roots` this store lacks, into `trees`: each validated, and each
    root's expansion bounded."""
    _fetch_trees(core, remote, roots, report, trees)
    walked: tuple[dict[str, tuple[int, int]], dict[str, str]] = ({}, {})
    for root in roots:
        tree.check_expansion(root, lambda oid: trees.read(oid) if oid in trees
                             else core.objects.read(oid), seen=walked)


def _fetch_trees(core: Core, remote: Remote, roots: set[str], report: FetchReport,
                 trees: _Scratch) -> None:
    """The trees under `roots` this store lacks, level by level, each validated, into
    `trees`: only what the versions reach is read (a remote may hold any amount of other
    trees). A stored tree has everything beneath it stored already."""
    seen: set[str] = set()
    frontier = set(roots)
    while frontier:
        seen |= frontier
        # Only what is stored *as a tree* was validated as one: a file whose bytes happen
        # to be named as a directory by a hostile version is fetched and checked.
        stored = core.index.packed_of_kind(frontier, KIND_TREE)
        lacking = frontier - stored
        need = _locate_trees(core, remote, lacking)
        if len(need) < len(lacking) and remote.widen():
            need = _locate_trees(core, remote, lacking)
        if len(need) < len(lacking):
            _missing_tree(min(lacking - need.keys()))
        below: set[str] = set()
        for oid, data in download_packed(core, remote, need, "fetching trees", report):
            try:
                node = tree.decode_node(bytes(data), oid)  # validated; trusted once stored
            except (UnsafePath, CorruptObject) as exc:
                # (which tree of which remote: a hostile tag must not fail a clone with
                # only a name from somewhere in it)
                raise type(exc)(f"tree {oid[:12]} on {remote.name}: {exc.message}",
                                hint="the remote is damaged or hostile (`dsv verify "
                                     "--remote` checks it); nothing was fetched") from None
            trees.add(oid, data)
            below.update(node.links)
        frontier = below - seen


def _missing_tree(oid: str) -> None:
    raise CorruptObject(f"tree {oid[:12]} is on neither the remote nor here, though a "
                        f"version needs it", hint="the remote is damaged; nothing was fetched")


def _create_dataset(core: Core, v: Version, dataset_name: str | None,
                    ref: RemoteRef | None, arriving: set[str]) -> str:
    """A dataset first seen on a remote: unbound, named as the remote names it, unless
    that name is taken here or is the id of a dataset `arriving` with it. Returns the
    name it got."""
    wanted = (ref.name if ref and ref.name else None) or dataset_name or v.dataset
    for name in (wanted, f"{wanted}-{v.dataset}", v.dataset):
        taken = core.index.dataset_by("name", name) or core.index.dataset_by("id", name)
        if refs.is_valid_name(name) and name != LATEST and \
                (taken is None or taken.id == v.dataset) and \
                (name == v.dataset or name not in arriving):
            break
    else:
        raise CorruptObject(f"dataset {v.dataset} on the remote cannot be named here: its id "
                            f"is taken", hint="nothing was fetched")
    if name != wanted and wanted in arriving:
        core.reporter.notice(f"warning: dataset {v.dataset} of the remote, {wanted} there, "
                             f"is named {name} here: {wanted} is the id of another of its "
                             f"datasets, which that name would lead to")
    core.index.insert_dataset(Dataset(id=v.dataset, name=name, created=time.time()))
    return name
