"""`dsv verify` of the local store, and `--repair`.

Owns the check (every pack and loose object re-hashed; every version walked down to its
blobs; what remains damaged named with the versions and paths it reaches) and the repair:
a good copy of each object found damaged or missing and some version needs, looked for
in the working directories (a dataset's file at the path a version gives it) and then on
every origin remote in turn, the default first, each read through the cluster cache as
pulls are; every copy checked against its id before it is kept. A damaged pack is
rewritten (its intact objects plus the good copies; an object no source has keeps its
damaged bytes, never silently dropped, so the next check names it again), a damaged
loose file is replaced by a rename over it, intact packs the index lost are indexed, and
packs gone from disk are forgotten. Must never change a version, a ref or a working
directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

from . import refs, tree, worktree
from .core import Core
from .errors import CorruptObject, DsvError, MissingObject
from .hashing import hash_bytes, new_hasher
from .model import COMMITTED, Version
from .objects import KIND_BLOB, KIND_TREE, KIND_VERSION, PACK_THRESHOLD, Ingest, PackEntry
from .records import parse_record
from .remotes.base import RemoteError
from .reporting import number, plural
from .reports import MAX_AFFECTED, FetchReport, PullReport, VerifyReport
from .sync.download import download_loose, download_packed
from .sync.remote import Remote

LOOSE = "loose"
"""Where a damaged object is when it is not in a pack (`Damage.corrupt`)."""

REPAIR_ROUNDS = 3
"""Check-and-repair rounds at most: a round that brings back a damaged tree lets the next
check see (and repair) what lies below it."""

WORKTREE_CANDIDATES = 100_000
"""(version, path) pairs at most looked at for working-directory copies."""


@dataclass
class Damage:
    """What one check found that a repair can act on."""

    corrupt: dict[str, str] = field(default_factory=dict)   # oid → pack id, or LOOSE
    bad_packs: set[str] = field(default_factory=set)         # indexed packs to rewrite
    lost_packs: set[str] = field(default_factory=set)        # indexed, gone from disk
    stray_packs: set[str] = field(default_factory=set)       # intact, on disk, not indexed
    misplaced: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    #   intact pack → (oid, offset, length, kind) its table gives objects the index's rows
    #   place in it otherwise
    missing: dict[str, int] = field(default_factory=dict)    # needed, nowhere: oid → kind
    unreadable: set[str] = field(default_factory=set)        # trees present but not valid
    sizes: dict[str, int] = field(default_factory=dict)      # sizes trees give the damage
    reached: set[str] = field(default_factory=set)           # trees, and the damaged or
    #                                                          missing objects, versions need
    trees: set[str] = field(default_factory=set)             # the readable trees among them
    chunked: dict[str, tuple[str, int]] = field(default_factory=dict)  # ... chunk lists:
    #                                                          the file's id and size
    blind: bool = False     # a tree could not be read: `reached` misses what is below it

    def __bool__(self) -> bool:
        return bool(self.corrupt or self.bad_packs or self.lost_packs or self.stray_packs
                    or self.misplaced or self.missing or self.unreadable)


class Affected(NamedTuple):
    """A version and path that need a damaged or missing object."""

    version: Version
    path: str          # "" the version record, "/" the root tree, "dir/" a directory's tree
    oid: str
    problem: str       # "corrupt" or "missing"


def verify(core: Core, repair: bool = False) -> VerifyReport:
    """Re-hash every object and check that every version is complete. With `repair`
    (under the store lock), repair what the check found and check again, up to
    REPAIR_ROUNDS times: `found` is what the first check saw, `repaired` what was done,
    `problems` what remains, and `affected` the versions and paths it reaches."""
    with core.locked("verify --repair") if repair else nullcontext():
        report, damage = check(core)
        found, repaired = list(report.problems), []
        for _round in range(REPAIR_ROUNDS if repair else 0):
            if not damage:
                break
            done = _repair(core, damage)
            if not done:
                break
            repaired += done
            report, damage = check(core)
        if repair and found:
            report.found, report.repaired = found, repaired
        names = {ds.id: ds.name for ds in core.index.datasets()}
        report.affected = [
            {"version": f"{names.get(a.version.dataset, a.version.dataset)}:{a.version.id}",
             "path": a.path, "object": a.oid, "problem": a.problem}
            for a in affected(core, damage, MAX_AFFECTED)]
    return report


def check(core: Core) -> tuple[VerifyReport, Damage]:
    """One full check of the store: every pack and loose object re-hashed, every version
    walked down to its blobs."""
    report = VerifyReport()
    damage = Damage()
    packs = core.index.packs()
    on_disk = set(core.objects.iter_pack_ids())
    with core.reporter.task("verifying packs", len(on_disk)) as advance:
        for pack_id in sorted(on_disk):
            try:
                ok, bad, entries = core.objects.check_pack(pack_id)
                size = core.objects.pack_path(pack_id).lstat().st_size   # (never a link's target)
            except (FileNotFoundError, MissingObject):
                continue  # removed meanwhile (by gc, or a repair): no longer part of the store
            report.objects_checked += len(entries)
            report.bytes_checked += size
            indexed = pack_id in packs
            if not ok:
                report.problems.append(
                    f"pack {pack_id[:12]}: contents do not match its name" if indexed else
                    f"pack {pack_id[:12]} is damaged and not in the index (left by an "
                    f"interrupted write or repair: `dsv gc` removes it)")
            if indexed and not ok:
                # The pack's own table is damaged: check what the index says it holds.
                held = core.index.pack_objects(pack_id)
                try:
                    core.objects.pack_fd(pack_id)
                except CorruptObject as exc:   # no regular file: none of it can be read
                    report.problems.append(exc.message)
                    bad = [oid for oid, _off, _length, _kind in held]
                else:
                    bad = [oid for oid, off, length, _kind in held
                           if hash_bytes(core.objects.read_packed((pack_id, off, length)))
                           != oid]
            for oid in bad:
                report.problems.append(f"object {oid[:12]} in pack {pack_id[:12]} is corrupt")
                if indexed:
                    damage.corrupt[oid] = pack_id
            if indexed and (bad or not ok):
                damage.bad_packs.add(pack_id)
            elif indexed:
                _check_rows(core, pack_id, entries, report, damage)
            elif not indexed and ok and not bad:
                damage.stray_packs.add(pack_id)  # (a killed writer's; gc removes it)
            advance(1, size)
    for pack_id in packs:
        if pack_id not in on_disk:
            report.problems.append(f"pack {pack_id[:12]} is in the index but missing")
            damage.lost_packs.add(pack_id)
    loose = list(core.objects.iter_loose())
    with core.reporter.task("verifying objects", len(loose)) as advance:
        for oid in loose:
            try:
                size = core.objects.loose_path(oid).lstat().st_size
                intact = core.objects.verify_loose(oid)
            except FileNotFoundError:
                continue  # removed meanwhile
            report.objects_checked += 1
            report.bytes_checked += size
            if not intact:
                report.problems.append(f"object {oid[:12]} is corrupt")
                damage.corrupt[oid] = LOOSE
            advance(1, size)
    _verify_versions(core, report, damage, set(loose))
    _verify_chunked(core, report, damage)
    return report, damage


def _check_rows(core: Core, pack_id: str, entries: list[PackEntry], report: VerifyReport,
                damage: Damage) -> None:
    """The index's rows for the trees, chunk lists and version records of an intact pack
    must say what its own table (`entries`) says: a row another process touched (another
    offset, a length no object has) would have every read of the object fail, or read
    other bytes, and the version walk would call a whole tree unreadable.

    Blobs' rows are left out: a million of them cost 6.5-7.3 s here (each pack's ids are
    scattered over the whole index), a third of a million-file verify, where these are
    a few per cent of the objects. A blob is read only at the size its tree gives, and
    checked against its id, so a wrong row for one is reported by the read."""
    table = {e.oid: (e.offset, e.length, e.kind) for e in entries if e.kind != KIND_BLOB}
    for oid, offset, length, kind in core.index.pack_rows_among(pack_id, table):
        if (offset, length, kind) != table[oid]:
            report.problems.append(
                f"object {oid[:12]}: the index places it at offset {number(offset)} of "
                f"pack {pack_id[:12]} for {number(length)} bytes; the pack's table says "
                f"{table[oid][0]:,} for {table[oid][1]:,}")
            damage.misplaced.setdefault(pack_id, []).append((oid, *table[oid]))


def _verify_chunked(core: Core, report: VerifyReport, damage: Damage) -> None:
    """Each chunked file's chunks, put together, must hash to the file's own id (what its
    row names it by, what `b3sum` prints): each chunk was checked against its own id
    above, but a chunk list from elsewhere could list other bytes than the file's."""
    total = sum(size for _oid, size in damage.chunked.values())
    with core.reporter.task("verifying chunked files", len(damage.chunked), total) as advance:
        for listed, (whole, size) in damage.chunked.items():
            chunks = tree.read_chunks(core.read_tree, listed, whole, size)
            if any(c in damage.corrupt or c in damage.missing for c, _n in chunks.chunks):
                advance(1, size)
                continue   # (reported already)
            hasher = new_hasher(threads=True)
            wrong = ""
            try:
                for chunk, length in chunks.chunks:
                    data = core.objects.read(chunk, verify=False)
                    if len(data) != length:   # (a checkout refuses the chunk: so must this)
                        wrong = (f"chunk {chunk[:12]} has {len(data)} bytes where chunk list "
                                 f"{listed[:12]} says {length}")
                        break
                    hasher.update(data)
            except DsvError:
                advance(1, size)
                continue   # (a pack gone meanwhile: reported by the next check)
            if wrong:
                report.problems.append(wrong)
                damage.unreadable.add(listed)
            elif hasher.hexdigest() != chunks.oid:
                report.problems.append(f"chunk list {listed[:12]}: its chunks do not make "
                                       f"file {chunks.oid[:12]}")
                damage.unreadable.add(listed)
            advance(1, chunks.size)


def _own_blobs(core: Core, promised: dict[str, str], lazy: set[str]) -> dict[str, set[str]]:
    """The blobs each promised version made in this store holds beyond the version it
    was made from: version id → blob ids. A draft of a fetched version, or a `commit
    PATH` on one, is promised (its other blobs may be only on the remote), but what it
    added is on no remote until pushed: that must be here. A version counts as made
    here when its record is not on its remote as far as this store knows; it is compared
    with its nearest ancestor whose record is (none, or one whose trees are still on the
    remote: nothing of it is checked, as for a fetched version)."""
    out: dict[str, set[str]] = {}
    for vid, remote in promised.items():
        v = core.index.version(vid)
        if v is None or v.tree in lazy:
            continue

        def on_remote(x: Version, remote: str = remote) -> bool:
            return x.record is not None and \
                bool(core.index.remote_locate_many(remote, [x.record]))

        if on_remote(v):
            continue
        base = refs.nearest_ancestor(core.index, v, on_remote)
        if base is None or base.tree in lazy:
            continue
        try:
            out[vid] = {oid for oid, _size in
                        tree.blob_sizes(v.tree, core.read_tree, base.tree)}
        except DsvError:
            continue  # (a tree missing or damaged: the walk reports it)
    return out


def _verify_versions(core: Core, report: VerifyReport, damage: Damage, loose: set[str]) -> None:
    """Walk every version: each object it needs must be here (a tree whose bytes are
    damaged was reported by the object check; the walk goes on with the other trees).
    Versions fetched from a remote may lack blobs (pulled on checkout): they are walked
    last, so a tree shared with a complete version is judged as that version needs it."""
    # Memory holds the trees and what is damaged, never a set of every object: whether
    # a tree's children are here is asked of the index, a query per few hundred.
    lost = {oid for rows in core.index.packs_objects(damage.lost_packs).values()
            for oid, *_ in rows}
    watched = set(damage.corrupt) | lost   # the objects whose `reached` and size matter
    promised = core.index.promised()
    lazy = core.index.unfetched_roots()   # (trees left on a remote, by design)
    own = _own_blobs(core, promised, lazy)
    seen: set[str] = set()
    lists_seen: set[str] = set()   # (apart: a row may name a directory's tree)

    def here(oids: list[str]) -> set[str]:
        packed = core.index.packed_among(oids)
        return {oid for oid in oids
                if (oid in packed and packed[oid] not in damage.lost_packs) or oid in loose}

    def lacks(oid: str, kind: int, label: str) -> None:
        if oid not in damage.missing:
            damage.missing[oid] = kind
            what = {KIND_TREE: "tree", KIND_VERSION: "version record"}.get(kind, "file")
            report.problems.append(f"{label}: {what} {oid[:12]} is missing")

    def chunks_of(row: tree.Row, label: str) -> list[tuple[str, int]]:
        """The chunks a chunked file's row names through its chunk list (none when the
        list is missing or damaged: reported, and the file then counts as damaged)."""
        damage.reached.add(row[5])
        if not here([row[5]]):
            lacks(row[5], KIND_TREE, label)
            return []
        try:
            chunks = tree.read_chunks(core.read_tree, row[5], row[4], row[3], trusted=False)
        except DsvError as exc:
            if row[5] not in damage.corrupt:
                damage.unreadable.add(row[5])
                report.problems.append(f"{label}: {exc.message}")
            return []
        damage.trees.add(row[5])
        damage.chunked[row[5]] = (row[4], row[3])
        return chunks.chunks

    versions = core.index.all_versions()
    # (a tree a fetched version shares with one made here is judged as the fetched one's)
    versions.sort(key=lambda v: (v.id in promised, v.id in own))
    for v in versions:
        report.versions_checked += 1
        label = f"version {v.id}"
        # (tree object, the shard prefix it must stand at)
        stack = [(v.tree, "")] if v.tree not in lazy else []
        while stack:
            oid, prefix = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            damage.reached.add(oid)
            if not here([oid]):
                lacks(oid, KIND_TREE, label)
                damage.blind = True
                continue
            try:
                node = tree.node_at(core.read_tree, oid, prefix, trusted=False)
            except DsvError as exc:
                damage.blind = True
                if oid not in damage.corrupt:
                    damage.unreadable.add(oid)
                    report.problems.append(f"{label}: {exc.message}")
                continue
            damage.trees.add(oid)
            stack.extend((r[4], "") for r in node.rows if r[1] == tree.DIR)
            stack.extend((c, prefix + d) for d, c in node.shards)
            blobs = [(r[4], r[3]) for r in node.rows if r[1] != tree.DIR and not r[5]]
            for r in node.rows:
                if r[5] and r[5] not in lists_seen:
                    lists_seen.add(r[5])
                    blobs += chunks_of(r, label)
                elif r[5] in damage.chunked and damage.chunked[r[5]] != (r[4], r[3]) \
                        and r[5] not in damage.unreadable:
                    # (another row named this list as the file it lists: read_chunks
                    # refuses it for this one, and the list was read once only)
                    damage.unreadable.add(r[5])
                    report.problems.append(f"{label}: object {r[5][:12]} is not the chunk "
                                           f"list of file {r[4][:12]}")
            present = here([oid for oid, _size in blobs])
            for child, size in blobs:
                if child in watched:
                    damage.reached.add(child)
                    damage.sizes[child] = size
                if child not in present and (v.id not in promised or
                                             child in own.get(v.id, ())):
                    damage.reached.add(child)
                    damage.sizes[child] = size
                    lacks(child, KIND_BLOB, label)
        if v.state == COMMITTED:
            if v.record:
                damage.reached.add(v.record)
            if not v.record or not here([v.record]):
                if v.record:
                    lacks(v.record, KIND_VERSION, label)
                else:
                    report.problems.append(f"{label}: its version record is missing")
            elif v.record not in damage.corrupt:
                try:
                    sealed = parse_record(core.objects.read(v.record), v.record).version
                    if sealed.id != v.id or sealed.tree != v.tree:
                        report.problems.append(f"{label}: record disagrees with the index")
                except DsvError as exc:
                    report.problems.append(f"{label}: bad record ({exc.message})")
    names = {}
    for ds in core.index.datasets():
        names[ds.id] = ds.name
        for field_name in ("latest", "head"):
            vid = getattr(ds, field_name)
            if vid and core.index.version(vid) is None:
                report.problems.append(f"dataset {ds.name}: {field_name} {vid} is missing")
    for ds_id, name, vid, _created in core.index.tags():
        if core.index.version(vid) is None:
            report.problems.append(f"dataset {names.get(ds_id, ds_id)}: tag {name} names "
                                   f"version {vid}, which is missing")


def affected(core: Core, damage: Damage, limit: int) -> list[Affected]:
    """Which versions and paths reach an object that is damaged or missing (at most
    `limit`): the damaged object's own path (a file, or a directory whose tree is bad).
    Every readable tree is read once, for the map of what names what; then each version
    is walked only down the trees that lead to damage."""
    bad = (set(damage.corrupt) | set(damage.missing) | damage.unreadable) & damage.reached
    if not bad:
        return []
    promised = core.index.promised()
    parents: dict[str, set[str]] = {}
    bad_chunk: dict[str, str] = {}   # chunk list → the first damaged or missing chunk in it
    for oid in damage.trees:
        node = tree.decode_node(core.read_tree(oid), oid, trusted=True)
        chunks = [c for c, _n in node.chunks.chunks if c in bad] if node.chunks is not None \
            else []
        if chunks:
            bad_chunk[oid] = chunks[0]
        for child in [*node.links, *(r[4] for r in node.rows if r[4] in bad), *chunks]:
            parents.setdefault(child, set()).add(oid)
    tainted: set[str] = set()   # trees that name a bad object, or a tainted tree
    todo = list(bad)
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in tainted:
                tainted.add(parent)
                todo.append(parent)
    out: list[Affected] = []

    def add(v: Version, path: str, oid: str) -> bool:
        problem = "corrupt" if oid in damage.corrupt or oid in damage.unreadable else "missing"
        out.append(Affected(v, path, oid, problem))
        return len(out) >= limit

    for v in core.index.all_versions():
        if (v.record in bad and add(v, "", v.record)) or (v.tree in bad and add(v, "/", v.tree)):
            return out
        stack = [("", v.tree)] if v.tree in tainted else []
        while stack:
            base, oid = stack.pop()
            node = tree.decode_node(core.read_tree(oid), oid, trusted=True)
            for name, kind, _mode, _size, child, listed in node.rows:
                path = f"{base}/{name}" if base else name
                if listed and (listed in bad or listed in tainted):
                    # (the file's chunk list is damaged or missing, or a chunk it names)
                    if add(v, path, listed if listed in bad else bad_chunk.get(listed, listed)):
                        return out
                    continue
                if child in bad:
                    if kind != tree.DIR and v.id in promised and child in damage.missing:
                        continue  # a fetched version's blob: pulled on checkout, by design
                    if add(v, path + ("/" if kind == tree.DIR else ""), child):
                        return out
                elif kind == tree.DIR and child in tainted:
                    stack.append((path, child))
            for _digit, child in node.shards:  # a shard of this same directory
                if child in bad:
                    if add(v, f"{base}/" if base else "/", child):
                        return out
                elif child in tainted:
                    stack.append((base, child))
    return out


# ---- repair ----------------------------------------------------------------------------

Wanted = dict[str, tuple[int, "int | None"]]
"""Objects to look for: oid → (kind, size when known)."""


def _repair(core: Core, damage: Damage) -> list[str]:
    """Repair what `damage` names (the caller holds the store lock); returns what was
    repaired. Nothing is removed before its replacement is published: an interrupted
    repair leaves the store as it found it."""
    objects = core.objects
    repaired: list[str] = []
    for pack_id in sorted(damage.stray_packs):
        entries = objects.read_pack_entries(pack_id)
        with core.index.transaction():
            core.index.add_pack(pack_id, objects.pack_path(pack_id).stat().st_size, entries)
        repaired.append(f"indexed pack {pack_id[:12]} (it was on disk, not in the index)")
        for e in entries:
            damage.missing.pop(e.oid, None)
    if damage.misplaced:
        with core.index.transaction():
            for pack_id, rows in damage.misplaced.items():
                core.index.correct_rows(pack_id, rows)
        count = sum(map(len, damage.misplaced.values()))
        whose = "the pack's own table" if len(damage.misplaced) == 1 else \
            f"the own tables of their {len(damage.misplaced)} packs"
        repaired.append(f"{plural(count, 'index row')} written again from {whose}")
    rows_of = core.index.packs_objects(damage.bad_packs | damage.lost_packs)
    with core.index.transaction():
        for pack_id in damage.lost_packs:  # what was in them is not here any more
            core.index.delete_pack(pack_id, [row[0] for row in rows_of[pack_id]])
    known = {oid: (kind, length) for rows in rows_of.values()
             for oid, _off, length, kind in rows}
    wanted: Wanted = {}
    for oid in damage.corrupt:
        kind, length = known.get(oid, (KIND_BLOB, None))
        wanted[oid] = (kind, damage.sizes.get(oid, length))
    for pack_id in damage.lost_packs:
        for oid, _off, length, kind in rows_of[pack_id]:
            wanted[oid] = (kind, length)
    for oid, kind in damage.missing.items():
        wanted[oid] = (kind, damage.sizes.get(oid))
    if not damage.blind:  # (else what lies below an unreadable tree may be needed too)
        wanted = {oid: w for oid, w in wanted.items() if oid in damage.reached}
    rewritten: list[str] = []
    got: dict[str, str] = {}
    objects.replacing = {oid for oid, where in damage.corrupt.items() if where == LOOSE}
    try:
        with Ingest(objects) as ingest:
            got.update(_from_worktrees(core, wanted, affected(core, damage,
                                                              WORKTREE_CANDIDATES), ingest))
            got.update(_obtain(core, {o: w for o, w in wanted.items() if o not in got},
                               ingest, damage))
            for pack_id in sorted(damage.bad_packs):
                line = _rewrite(core, pack_id, rows_of[pack_id], damage, got, ingest)
                if line:
                    rewritten.append(pack_id)
                    repaired.append(line)
            core.commit_objects(ingest, crash="verify:repaired",
                                retire={p: [row[0] for row in rows_of[p]] for p in rewritten})
    finally:
        objects.replacing = set()
    indexed = core.index.packs()
    for pack_id in rewritten:
        if pack_id in indexed:
            objects.reopen_pack(pack_id)  # the same objects in the same order: same name
        else:
            objects.delete_pack(pack_id)
    for oid, where in sorted(damage.corrupt.items()):
        if where == LOOSE and oid in got:
            if objects.locate_many([oid]):
                objects.delete_loose(oid)  # the good copy came packed: the pack serves it
            repaired.append(f"object {oid[:12]}: damaged loose file replaced by a good "
                            f"copy from {got[oid]}")
    for pack_id in sorted(damage.lost_packs):
        rows = rows_of[pack_id]
        back = [oid for oid, *_ in rows if oid in got]
        repaired.append(f"pack {pack_id[:12]} (gone from disk) forgotten; "
                        f"{plural(len(back), 'object')} of the {len(rows)} in it brought back"
                        + _from(got, back))
    in_lost_packs = {oid for p in damage.lost_packs for oid, *_ in rows_of[p]}
    lost = [oid for oid in got if oid not in damage.corrupt and oid not in in_lost_packs]
    if lost:
        repaired.append(f"{plural(len(lost), 'missing object')} brought back"
                        + _from(got, lost))
    core.index.checkpoint()
    return repaired


def _from(got: dict[str, str], oids: Iterable[str]) -> str:
    sources = sorted({got[oid] for oid in oids if oid in got})
    return f" from {', '.join(sources)}" if sources else ""


def _rewrite(core: Core, pack_id: str, rows: list[tuple[str, int, int, int]],
             damage: Damage, got: dict[str, str], ingest: Ingest) -> str | None:
    """Write a damaged pack's objects into a new pack (good copies for the damaged ones
    that were found); returns what was done, or None when rewriting would not help."""
    bad = [oid for oid, *_ in rows if damage.corrupt.get(oid) == pack_id]
    fixed = [oid for oid in bad if oid in got]
    dropped = [] if damage.blind else [oid for oid in bad if oid not in damage.reached]
    if bad and not fixed and not dropped:
        return None  # nothing better to write: the damage stays, and is reported
    kept = 0
    if any(oid not in got and oid not in dropped for oid, *_ in rows):
        try:
            core.objects.pack_fd(pack_id)
        except CorruptObject:
            return None  # no regular file: what no source has cannot be kept, so it stays
    for oid, offset, length, kind in rows:
        if oid in got or oid in dropped:
            continue  # a good copy is in `ingest` already; garbage no version needs goes
        data = core.objects.read_packed((pack_id, offset, length))
        kept += hash_bytes(data) != oid
        ingest.add_new(oid, kind, data)
    parts = [f"{plural(len(fixed), 'damaged object')} replaced by "
             f"{'a good copy' if len(fixed) == 1 else 'good copies'}{_from(got, fixed)}"
             ] if fixed else []
    if dropped:
        parts.append(f"{plural(len(dropped), 'damaged object')} no version needs removed")
    if kept:
        parts.append(f"{kept} still damaged (no good copy found)")
    if not bad:
        parts.append("its damaged table written anew")
    return f"pack {pack_id[:12]} rewritten: " + "; ".join(parts)


def _from_worktrees(core: Core, wanted: Wanted, candidates: list[Affected],
                    ingest: Ingest) -> dict[str, str]:
    """Intact copies of damaged or missing files that a dataset's working directory
    still holds at a path a version gives them: opened without following a link on the
    way, taken only at the size the tree gives and only if the bytes hash to the id (a
    file that differs is simply not used): oid → "the working directory"."""
    got: dict[str, str] = {}
    roots = {ds.id: core.dataset_root(ds) for ds in core.index.datasets() if ds.path}
    for version, path, oid, _problem in candidates:
        kind, size = wanted.get(oid, (None, None))
        root = roots.get(version.dataset)
        if oid in got or kind != KIND_BLOB or size is None or root is None or \
                path.endswith("/") or not path:
            continue
        try:
            fd = worktree.open_in_tree(root, path, size)
        except (OSError, DsvError):
            continue  # not there, not a regular file, too large, or a link on the way
        try:
            if os.fstat(fd).st_size != size:
                continue
            if size < PACK_THRESHOLD:
                data = os.pread(fd, size + 1, 0)
                if hash_bytes(data) != oid:
                    continue
                ingest.add_new(oid, KIND_BLOB, data)
            else:
                ingest.add_large_fd(fd, expect=oid)
        except (OSError, DsvError):
            continue  # not the same bytes
        finally:
            os.close(fd)
        got[oid] = "the working directory"
    return got


def _obtain(core: Core, wanted: Wanted, ingest: Ingest, damage: Damage) -> dict[str, str]:
    """Good copies of `wanted` into `ingest`, from each origin in turn: oid → the origin
    that had it. The children of a tree brought back that are not here are looked for
    too (the check could not see below a damaged tree)."""
    origins = sorted((s for s in core.remote_specs() if s.kind == "origin"),
                     key=lambda s: not s.is_default)
    got: dict[str, str] = {}
    if not wanted:
        return got
    if not origins:
        core.reporter.notice(f"warning: no remote is configured to bring good copies of "
                             f"{plural(len(wanted), 'object')} from (`dsv remote add` one "
                             f"that holds these versions)")
        return got
    todo = dict(wanted)
    for spec in origins:
        remote = Remote(core, spec)
        try:
            remote.connect()
            remote.refresh()
        except RemoteError as exc:
            # What this store knew of the remote may still find copies in a cluster cache.
            core.reporter.notice(f"warning: {exc.message}")
        for _round in range(tree.MAX_TREE_DEPTH):
            found = _from_remote(core, remote, todo, ingest)
            if not found:
                break
            below: Wanted = {}
            for oid, data in found.items():
                got[oid] = spec.name
                todo.pop(oid, None)
                if data is not None:
                    below.update(_absent_children(core, oid, data, got, damage))
            todo.update((oid, w) for oid, w in below.items() if oid not in got)
            if not below:
                break
        if not todo:
            break
    return got


def _absent_children(core: Core, oid: str, data: bytes, got: dict[str, str],
                     damage: Damage) -> Wanted:
    """What a tree brought back names that this store lacks or holds damaged. Blobs only
    when no version was fetched without its blobs: those are absent by design (pulled
    on checkout), and the next round's check asks for exactly what is needed."""
    try:
        node = tree.decode_node(data, oid)
    except DsvError:
        return {}
    blobs = not core.index.promised()
    out: Wanted = {}
    children = [(tree.DIR, None, child) for child in node.links] + \
        [(kind, size, child) for _name, kind, _mode, size, child, chunks in node.rows
         if kind != tree.DIR and not chunks]
    if node.chunks is not None:
        children += [(tree.FILE, length, child) for child, length in node.chunks.chunks]
    for kind, size, child in children:
        if child in got or (kind != tree.DIR and not blobs):
            continue
        if child in damage.corrupt or not core.objects.has(child):
            out[child] = (KIND_TREE, None) if kind == tree.DIR else (KIND_BLOB, size)
    return out


def _from_remote(core: Core, remote: Remote, todo: Wanted,
                 ingest: Ingest) -> dict[str, bytes | None]:
    """What `remote` (or the cluster cache in front of it) has of `todo`, verified and
    added to `ingest`: oid → the bytes of a tree (to look below it), else None."""
    located = core.index.remote_locate_many(remote.name, todo)
    report = PullReport("-", FetchReport("-"))
    found: dict[str, bytes | None] = {}
    by_pack: dict[str, dict[str, tuple[str, int, int]]] = {}
    for oid, where in located.items():
        by_pack.setdefault(where[0], {})[oid] = where
    for _pack, group in sorted(by_pack.items()):
        try:
            for oid, data in download_packed(core, remote, group, "repairing", report):
                kind = todo[oid][0]
                ingest.add_new(oid, kind, data)
                found[oid] = bytes(data) if kind == KIND_TREE else None
        except DsvError as exc:
            core.reporter.notice(f"warning: {exc.message}")
    for oid, (kind, size) in sorted(todo.items()):
        if oid in located or kind != KIND_BLOB:
            continue  # (trees and records travel only in packs)
        try:
            download_loose(core, remote, [oid], {oid: size} if size is not None else {},
                           report, ingest, label="repairing large files")
        except MissingObject:
            continue  # not on this remote
        except DsvError as exc:
            core.reporter.notice(f"warning: {exc.message}")
            continue
        found[oid] = None
    return found
