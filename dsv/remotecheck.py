"""`dsv verify --remote`: checking a remote as restic's `check` checks a repository.

Owns the structural check of a remote (every pack index hashes to its name and names a
whole pack; every ref names a version record of its own dataset; every record's tree,
subtrees and blobs are on the remote), the data check (`--read-data`, or a random
`--read-data-subset`: every object read back and re-hashed), and repair (`--repair`:
objects the remote lacks or holds damaged are uploaded again from good local copies,
then a damaged pack and its index are deleted once every object in it is safe
elsewhere), holding the remote's maintenance lease as `remote maintain` and `gc
--remote` do (sync.maintain.Lease). Must never change the local store's versions or
refs; it only refreshes what the store knows of the remote.
"""

from __future__ import annotations

import functools
import itertools
import operator
import random
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from .core import Core
from . import tree
from .errors import CorruptObject, DsvError, InvalidInput
from .faults import crashpoint
from .hashing import hash_bytes, is_hash, new_hasher, raw_id
from .reports import RemoteCheckReport
from .objects import (KIND_BLOB, KIND_TREE, KIND_VERSION, PackInfo, PackTables, encode_pack,
                      pack_tail_size, parse_pack_index_table)
from .records import Record, parse_record
from .remotes.base import MAX_GET_BYTES, NotFound, RemoteError, RemoteRefused
from .remotes import layout
from .remotes.layout import MAINTAIN_LOCK, index_key, loose_key, pack_key
from .sync.maintain import Lease, maintenance_until, when
from .sync.remote import Sent, record_sent
from .sync.remote import UPLOAD_PACK_SIZE, WORKERS, Remote
from .reporting import plural


def parse_subset(text: str | None) -> float | None:
    """`--read-data-subset 10%` (or `0.1`) as a fraction in (0, 1]."""
    if text is None:
        return None
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise InvalidInput(f"not a subset: {text!r}", hint="write a percentage, e.g. 10%")
    return value


def check_remote(core: Core, remote: Remote, read_data: bool = False,
                 subset: float | None = None, repair: bool = False) -> RemoteCheckReport:
    """Check `remote`; with `repair`, fix what good local copies can fix, then check again
    (the report's `problems` are what remains, `found` what the first pass saw). A
    repair holds the remote's maintenance lease throughout (RemoteError, nothing
    changed, while another client holds it): a gc beside it would take the pack it has
    just uploaded, not yet indexed, for a leftover, and the repair would then delete the
    damaged pack whose objects that pack held."""
    remote.scope = None  # every dataset is checked
    remote.connect()
    if not repair:
        report = _check(core, remote, read_data, subset, None)
        if (until := maintenance_until(remote)) is not None:
            report.warnings.append(f"another client is maintaining {remote.name} (its "
                                   f"lease holds until {when(until)}): what it changes "
                                   f"meanwhile may show as problems here")
        return report
    lease = Lease(remote)
    if not lease.take():
        raise RemoteError(f"another client is maintaining {remote.name} (a gc, a repack or "
                          f"a repair: its lease {MAINTAIN_LOCK} holds until "
                          f"{lease.holder_until}); nothing was repaired",
                          hint="run it again later (without --repair, verify --remote "
                               "only checks, and runs beside it)")
    try:
        report = _check(core, remote, read_data, subset, lease)
        if not report.repaired:
            report.found = list(report.problems)
            return report
        # (the packs the repair uploaded are named in the catalogs of the datasets
        # needing them as this second pass finds them)
        again = _check(core, remote, read_data, subset, None, repair_catalogs=True)
        again.found, again.repaired = report.problems, report.repaired + again.repaired
        return again
    finally:
        lease.give_back()


def _check(core: Core, remote: Remote, read_data: bool, subset: float | None,
           lease: Lease | None, repair_catalogs: bool = False) -> RemoteCheckReport:
    """One pass; with `lease` (held by the caller), repairing what it finds."""
    repair = lease is not None
    report = RemoteCheckReport(remote.name)
    listing = {key: size for key, size in remote.backend.list("")}
    indexes = {pid: s for k, s in listing.items()
               if (pid := layout.index_id_of_key(k)) is not None}
    packs = {pid: s for k, s in listing.items() if (pid := layout.pack_id_of_key(k)) is not None}
    loose = {k.rpartition("/")[2]: s for k, s in listing.items() if k.startswith(layout.LOOSE)}
    report.packs, report.loose = len(packs), len(loose)
    for key in listing:
        top = key.split("/", 1)[0]
        if top not in layout.TOP_LEVEL and key != "refs.lock":
            report.warnings.append(f"unexpected file {key}")
    for name in loose:
        if not is_hash(name) or layout.loose_key(name) not in listing:
            report.problems.append(f"loose file {name[:40]} is not named by a blake3 id")

    # 1. pack indexes: each must hash to its name and describe a whole pack.
    bad_packs: set[str] = set()
    entries_of = PackTables()
    for pack_id, size in sorted(indexes.items()):
        if not is_hash(pack_id):
            report.problems.append(f"index file {pack_id[:40]} is not named by a pack id")
            continue
        try:
            table = parse_pack_index_table(
                remote.backend.get(index_key(pack_id), max_size=min(size, MAX_GET_BYTES)),
                pack_id)
        except (CorruptObject, RemoteRefused) as exc:
            report.problems.append(f"pack index {pack_id[:12]}: {exc.message}")
            bad_packs.add(pack_id)
            continue
        entries_of.tables[pack_id] = table
        total = table.size
        if pack_id not in packs:
            report.problems.append(f"pack {pack_id[:12]} is indexed but missing")
            bad_packs.add(pack_id)
        elif packs[pack_id] != total:
            report.problems.append(f"pack {pack_id[:12]} is {packs[pack_id]} bytes; its index "
                                   f"says {total}")
            bad_packs.add(pack_id)
    for pack_id in packs:
        if pack_id not in indexes:
            report.warnings.append(f"pack {pack_id[:12]} has no index (left by an interrupted "
                                   f"push; never read)")
    remote.refresh()  # the store's picture of the remote, for the walks below
    where = _Where(entries_of.tables, bad_packs, loose)

    # 2. data: every object (or a random subset of packs and loose files) re-hashed.
    damaged: dict[str, str] = {}   # oid → where it is damaged (a pack id, or "loose")
    if read_data or subset is not None:
        _read_data(core, remote, entries_of, bad_packs, loose, subset, report, damaged)

    # 3. refs → records → trees → blobs, all on the remote.
    needed: dict[str, tuple[int, int]] = {}    # oid → (kind, size or -1)
    reach = _Reach()
    _walk_refs(core, remote, where, report, needed, damaged, reach)
    _check_catalogs(remote, listing, entries_of, where, bad_packs, reach, report,
                    repair or repair_catalogs)
    _check_locators(core, remote, listing, read_data or subset is not None,
                    repair, report)
    _check_multi_indexes(core, remote, listing, packs, read_data or subset is not None,
                         repair, report)
    bad_packs |= {where_ for where_ in damaged.values() if where_ != "loose"}
    missing = [oid for oid in needed if not where.holds(oid)]
    for oid in missing:
        report.problems.append(f"object {oid[:12]} ({_KIND[needed[oid][0]]}) is needed by a "
                               f"version but not on the remote")
    if lease is not None:
        _repair(core, remote, report, missing, damaged, needed, entries_of, bad_packs,
                lease, _catalog_owners(listing))
    core.index.checkpoint()
    return report


_KIND = {KIND_BLOB: "file", KIND_TREE: "tree", KIND_VERSION: "version record"}


class _Where:
    """Where the remote's sound pack indexes place each object, found in the packs' own
    tables: two sorted arrays, the first 64 bits of each row's id and the row (pack
    number << 32 | row number), 16 bytes an object (a dict of 64-bit keys took some 120,
    a dict of hex ids beside every pack's entries some 430). An id is looked up by its
    first 64 bits and then compared whole with the table's. Rows whose ids share their
    first 64 bits (as a hostile index may list by the million) are sorted by their whole
    id, so a lookup among them stays a binary search. `loose`: the remote's loose
    objects, also on it."""

    def __init__(self, tables: dict[str, PackInfo], bad: set[str], loose: dict[str, int]
                 ) -> None:
        self._packs = [p for p in tables if p not in bad]
        self._tables = [tables[p] for p in self._packs]
        self._loose = loose
        rows = sorted(first << 64 | n << 32 | i
                      for n, table in enumerate(self._tables)
                      for i, first in enumerate(table.first_bits()))
        self._keys = keys = array("Q", (row >> 64 for row in rows))
        self._rows = array("Q", (row & _LOW_64 for row in rows))
        del rows
        self._starts = array("Q", (bisect_left(keys, top << 48) for top in range(1 << 16)))
        self._starts.append(len(keys))   # (where the keys of each first 16 bits begin)
        shared = itertools.compress(range(1, len(keys)), map(operator.eq, keys[1:], keys))
        for i in sorted({bisect_left(keys, keys[k]) for k in shared}):
            j = bisect_right(keys, keys[i], i)   # (a run of one key: by whole id, then row)
            self._rows[i:j] = array("Q", sorted(self._rows[i:j],
                                                key=lambda at: (self._id(at), at)))

    def _id(self, at: int) -> bytes:
        raw: bytes = self._tables[at >> 32].row_at(at & 0xFFFFFFFF)[0]
        return raw

    def _find(self, raw: bytes) -> int:
        """Where the first row holding `raw` would be in the arrays."""
        key, keys = int.from_bytes(raw[:8], "big"), self._keys
        i = bisect_left(keys, key, self._starts[key >> 48], self._starts[(key >> 48) + 1])
        if i + 1 < len(keys) and keys[i + 1] == key:   # (ids sharing these 64 bits)
            i = bisect_left(range(len(keys)), raw, i, bisect_right(keys, key, i),
                            key=lambda k: self._id(self._rows[k]))
        return i

    def _first(self, raw: bytes | None) -> int | None:
        """The first sound table row holding the object `raw` (pack number << 32 | row)."""
        if raw is None:
            return None
        i = self._find(raw)
        if i < len(self._rows) and self._id(self._rows[i]) == raw:
            return self._rows[i]
        return None

    def get(self, oid: str) -> tuple[str, int, int, int] | None:
        """(pack id, offset, length, kind) of the first sound pack holding `oid`."""
        at = self._first(raw_id(oid))
        if at is None:
            return None
        _raw_id, offset, length, kind = self._tables[at >> 32].row_at(at & 0xFFFFFFFF)
        return self._packs[at >> 32], offset, length, kind

    def holds(self, oid: str) -> bool:
        """Whether the remote holds `oid`, packed or loose."""
        return self._first(raw_id(oid)) is not None or oid in self._loose

    def holders(self, oid: str) -> list[str]:
        """Every sound pack holding `oid`, by pack number."""
        raw = raw_id(oid)
        if raw is None:
            return []
        found: list[int] = []
        i, rows = self._find(raw), self._rows
        end = bisect_right(self._keys, int.from_bytes(raw[:8], "big"), i)
        while i < end and self._id(rows[i]) == raw:
            found.append(rows[i] >> 32)
            # (the next pack's rows: a pack may list one id many times)
            i = bisect_left(range(end), (raw, found[-1] + 1 << 32), i + 1, end,
                            key=lambda k: (self._id(rows[k]), rows[k]))
        return [self._packs[n] for n in found]


_LOW_64 = (1 << 64) - 1


def _read_data(core: Core, remote: Remote, entries_of: PackTables,
               bad_packs: set[str], loose: dict[str, int], subset: float | None,
               report: RemoteCheckReport, damaged: dict[str, str]) -> None:
    packs = sorted(p for p in entries_of if p not in bad_packs)
    files = sorted(o for o in loose if is_hash(o))
    if subset is not None:
        rng = random.Random()
        packs = [p for p in packs if rng.random() < subset] or packs[:1]
        files = [o for o in files if rng.random() < subset] or files[:1]
    total = len(packs) + len(files)
    with core.reporter.task("reading remote data", total) as advance:
        for pack_id in packs:
            entries = entries_of[pack_id]   # (one pack's at a time)
            size = (max((e.offset + e.length for e in entries), default=8)
                    + pack_tail_size(len(entries)))
            try:
                data = remote.backend.get(pack_key(pack_id), max_size=min(size, MAX_GET_BYTES))
            except (NotFound, RemoteRefused) as exc:
                report.problems.append(f"pack {pack_id[:12]}: {exc.message}")
                bad_packs.add(pack_id)
                advance(1, 0)
                continue
            view = memoryview(data)
            for e in entries:
                report.objects_read += 1
                report.bytes_read += e.length
                if hash_bytes(view[e.offset:e.offset + e.length]) != e.oid:
                    damaged[e.oid] = pack_id
                    report.problems.append(f"object {e.oid[:12]} in pack {pack_id[:12]} is "
                                           f"corrupt")
                    bad_packs.add(pack_id)
            advance(1, len(data))
        for oid in files:
            hasher = new_hasher(threads=True)
            got = 0
            try:
                for chunk in remote.backend.download(loose_key(oid)):
                    got += len(chunk)
                    if got > loose[oid]:
                        break
                    hasher.update(chunk)
            except (NotFound, RemoteRefused) as exc:
                report.problems.append(f"loose object {oid[:12]}: {exc.message}")
                damaged[oid] = "loose"
                continue
            report.objects_read += 1
            report.bytes_read += got
            if got != loose[oid] or hasher.hexdigest() != oid:
                damaged[oid] = "loose"
                report.problems.append(f"loose object {oid[:12]} is corrupt")
            advance(1, got)


def _check_locators(core: Core, remote: Remote, listing: dict[str, int], read: bool,
                    repair: bool, report: RemoteCheckReport) -> None:
    """`loc/`: every file named by an object id; with `read`, each one's object hashing
    to its name and its places in bounds. A damaged locator costs readers requests, not
    data (they read the object by the pack indexes), so it is a warning, and a repair
    deletes it."""
    keys = [k for k in listing if k.startswith(layout.LOCATORS)]
    for key in keys:
        if layout.locator_oid_of_key(key) is None:
            report.warnings.append(f"unexpected file {key}")
    if not read:
        return

    def check(oid: str) -> str | None:
        try:
            layout.parse_locator(remote.backend.get(layout.locator_key(oid),
                                                    max_size=MAX_GET_BYTES), oid)
        except (CorruptObject, RemoteRefused) as exc:
            return exc.message
        except NotFound:
            pass
        return None

    oids = [o for k in keys if (o := layout.locator_oid_of_key(k)) is not None]
    with core.reporter.task("reading locators", len(oids)) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        for oid, why in zip(oids, pool.map(check, oids), strict=True):
            advance(1, 0)
            if why is None:
                continue
            report.warnings.append(f"{why} (readers without a store read the object by "
                                   f"the pack indexes)")
            if repair:
                remote.backend.delete(layout.locator_key(oid))
                report.repaired.append(f"deleted damaged locator {oid[:12]}")


def _check_multi_indexes(core: Core, remote: Remote, listing: dict[str, int],
                         packs: dict[str, int], read: bool, repair: bool,
                         report: RemoteCheckReport) -> None:
    """`midx/`: every file named by a pack id and the hash of its bytes, that pack on the
    remote (else no reader reads it); with `read`, its bytes hashing to its name and
    each index in it to its pack. A damaged or stale one costs readers requests, not
    data (they read the index files one by one), so it is a warning, and a repair
    deletes it."""
    named: dict[str, tuple[str, str]] = {}
    for key in listing:
        if key.startswith(layout.MULTI_INDEX):
            if (got := layout.multi_index_of_key(key)) is None:
                report.warnings.append(f"unexpected file {key}")
            else:
                named[key] = got
    bad = {key: f"multi-pack index {body[:12]} is named by pack {pack[:12]}, which is not "
                f"on the remote (no reader reads it)"
           for key, (pack, body) in named.items() if pack not in packs}

    def check(key: str) -> str | None:
        try:
            remote.read_multi_index(named[key])
        except (CorruptObject, RemoteRefused) as exc:
            return f"{exc.message} (readers read the pack indexes one by one)"
        except NotFound:
            pass
        return None

    if read:
        keys = [k for k in named if k not in bad]
        with core.reporter.task("reading multi-pack indexes", len(keys)) as advance, \
                ThreadPoolExecutor(WORKERS) as pool:
            for key, why in zip(keys, pool.map(check, keys), strict=True):
                advance(1, 0)
                if why is not None:
                    bad[key] = why
    for key, why in sorted(bad.items()):
        report.warnings.append(why)
        if repair:
            remote.backend.delete(key)
            report.repaired.append(f"deleted multi-pack index {named[key][1][:12]}")


class _Reach:
    """What the walk saw, for judging each dataset's catalog: the records and root trees
    of each dataset, and each tree's children (as their raw ids, 32 bytes each: a
    million-file version's lists of hex ids took some 130 MB)."""

    def __init__(self) -> None:
        self.records: dict[str, set[str]] = {}
        self.roots: dict[str, set[str]] = {}
        self.children: dict[str, bytes] = {}

    def add(self, tree_oid: str, children: list[str]) -> None:
        self.children[tree_oid] = b"".join(bytes.fromhex(c) for c in children)

    def closure(self, ds_id: str) -> Iterator[str]:
        """Every object the dataset's refs reach (as far as the walk could read), a file
        met in two trees twice: only the trees met are held."""
        yield from self.records.get(ds_id, ())
        met: set[str] = set()
        stack = list(self.roots.get(ds_id, ()))
        while stack:
            oid = stack.pop()
            below = self.children.get(oid)
            if below is None:
                yield oid
            elif oid not in met:
                met.add(oid)
                yield oid
                stack.extend(below[i:i + 32].hex() for i in range(0, len(below), 32))


def _check_catalogs(remote: Remote, listing: dict[str, int],
                    entries_of: PackTables, where: _Where, bad_packs: set[str],
                    reach: _Reach, report: RemoteCheckReport, repair: bool) -> None:
    """On a format-3 remote, each dataset's catalog must name a pack holding every packed
    object its refs reach (a reader of that dataset reads no other pack index); with
    `repair`, the missing entries are written."""
    if remote.format < layout.CATALOG_FORMAT:
        return
    named: dict[str, set[str]] = {}
    for key in listing:
        if (entry := layout.catalog_entry_of_key(key)) is not None:
            named.setdefault(entry[0], set()).add(entry[1])
            if entry[1] not in entries_of:
                report.warnings.append(f"catalog entry {key[:60]} names no pack (harmless: "
                                       f"the next gc removes it)")
    for ds_id in sorted(reach.records):
        lacking: dict[str, str] = {}   # oid → a pack holding it
        for oid in reach.closure(ds_id):
            holders = [p for p in where.holders(oid) if p not in bad_packs]
            if holders and not named.get(ds_id, set()).intersection(holders):
                lacking.setdefault(oid, holders[0])
        if not lacking:
            continue
        if repair:
            remote.add_to_catalog(ds_id, sorted(set(lacking.values())))
            report.repaired.append(f"catalog of dataset {ds_id}: named the packs of "
                                   f"{len(lacking)} objects")
            continue
        report.problems.append(f"catalog of dataset {ds_id} names no pack holding "
                               f"{len(lacking)} of its objects (e.g. {next(iter(lacking))[:12]}): "
                               f"a reader of that dataset alone would miss them")


def _walk_refs(core: Core, remote: Remote, where: _Where,
               report: RemoteCheckReport, needed: dict[str, tuple[int, int]],
               damaged: dict[str, str], reach: _Reach) -> None:
    """Every ref, and the history, trees and blobs it reaches, must be on the remote."""
    refs = []
    for key, _size in remote.backend.list(layout.REFS):
        try:
            got = remote.backend.read_ref(key)
        except RemoteRefused as exc:
            report.problems.append(f"ref {key}: {exc.message}")
            continue
        if got is not None and layout.is_tombstone(key, got[0]):
            continue  # a deleted ref (`dsv push --delete`)
        ref = layout.parse_ref(key, *got) if got else None
        if ref is None:
            report.problems.append(f"ref {key} is not a ref dsv writes")
            continue
        refs.append(ref)
    report.refs = len(refs)
    # (each record read once; every ref and parent naming it is checked against what it
    # holds, also when another named it first, and it is walked from the first that
    # names it rightly)
    records: dict[str, Record | None] = {}   # (None: unreadable)
    walked: set[str] = set()
    trees_seen: dict[str, object] = {}
    stack = [(r.record, r.dataset, r.version, f"ref {r.dataset}/{r.ref}") for r in refs]
    while stack:
        record_oid, ds_id, vid, who = stack.pop()
        if record_oid not in records:
            records[record_oid] = None
            needed[record_oid] = (KIND_VERSION, -1)
            data = _read_object(remote, where, record_oid, KIND_VERSION, report, damaged)
            if data is None:
                continue  # reported as missing or damaged
            try:
                records[record_oid] = parse_record(data, record_oid)
            except CorruptObject as exc:
                report.problems.append(f"{who}: {exc.message}")
                continue
        parsed = records[record_oid]
        if parsed is None:
            continue
        version = parsed.version
        if version.dataset != ds_id or version.id != vid:
            report.problems.append(f"{who} names record {record_oid[:12]}, which is version "
                                   f"{version.id} of dataset {version.dataset}")
            continue
        if record_oid in walked:
            continue
        walked.add(record_oid)
        report.versions_checked += 1
        reach.records.setdefault(ds_id, set()).add(record_oid)
        reach.roots.setdefault(ds_id, set()).add(version.tree)
        for parent in parsed.parents:
            stack.append((parent.record, ds_id, parent.id, f"version {vid}"))
        _walk_tree(remote, where, version.tree, report, needed, trees_seen, f"version {vid}",
                   damaged, reach)


def _walk_tree(remote: Remote, where: _Where, root: str,
               report: RemoteCheckReport, needed: dict[str, tuple[int, int]],
               seen: dict[str, object], who: str, damaged: dict[str, str],
               reach: _Reach) -> None:
    """Every tree below `root` read back and checked; what each needs noted in `needed`
    (a file only when the remote lacks it or holds it damaged: the files a million-file
    version needs are never held)."""
    # (tree object, the shard prefix it must stand at; for a chunk list, the row naming it),
    # walked a level at a time: the trees of a level are read together (`_read_ahead`)
    queue: deque[tuple[str, str | tree.Row]] = deque([(root, "")])
    ahead: dict[str, bytes] = {}   # (read with the trees next in line, not checked yet)
    while queue:
        oid, at = queue.popleft()
        # Each object has one place (its prefix, or the file it lists); one met in another
        # place is reported once, as a fetch refuses it, whichever place came first.
        place = at if isinstance(at, str) else (at[4], at[3])
        if oid in seen:
            if seen[oid] not in (place, _TWO_PLACES):
                seen[oid] = _TWO_PLACES
                report.problems.append(f"{who}: tree {oid[:12]} is named in two different "
                                       f"places")
            continue
        seen[oid] = place
        needed[oid] = (KIND_TREE, -1)
        if oid not in ahead:   # (a batch is used up, in order, before the next is read)
            ahead = _read_ahead(remote, where, [oid, *(
                o for o, _a in itertools.islice(queue, TREES_AHEAD) if o not in seen)])
        data = _read_object(remote, where, oid, KIND_TREE, report, damaged, ahead.pop(oid, None))
        if data is None:
            continue
        try:
            if not isinstance(at, str):  # a chunked file's chunk list
                chunks = tree.read_chunks(functools.partial(_same, data), oid, at[4], at[3],
                                          trusted=False)
                reach.add(oid, [c for c, _n in chunks.chunks])
                for child, length in chunks.chunks:
                    if not where.holds(child) or child in damaged:
                        needed.setdefault(child, (KIND_BLOB, length))
                continue
            node = tree.check_place(tree.decode_node(data, oid), oid, at)
        except DsvError as exc:
            report.problems.append(f"{who}: {exc.message}")
            continue
        queue.extend((r[4], "") for r in node.rows if r[1] == tree.DIR)
        queue.extend((r[5], r) for r in node.rows if r[5])
        queue.extend((c, at + d) for d, c in node.shards)
        reach.add(oid, [r[5] or r[4] for r in node.rows] + [c for _d, c in node.shards])
        for _name, kind, _mode, size, child, listed in node.rows:
            if kind != tree.DIR and not listed and (not where.holds(child)
                                                    or child in damaged):
                needed.setdefault(child, (KIND_BLOB, size))


_TWO_PLACES = object()
"""In `_walk_tree`'s places: a tree already reported as named in two places."""


def _same(data: bytes, _oid: str) -> bytes:
    return data


TREES_AHEAD = 256
"""Trees `_walk_tree` reads at once: the one it needs and those next in line (a
million-file version has ~17,000; read one GET each, in turn, a walk took minutes)."""
AHEAD_GAP = 64 << 10      # bytes between two trees of a pack that one range still reads
AHEAD_RANGE = 16 << 20    # the bytes of one such range, at most
AHEAD_BYTES = 32 << 20    # the bytes a batch reads, and the bytes of trees it keeps, at most


def _read_ahead(remote: Remote, where: _Where,
                wanted: list[str]) -> dict[str, bytes]:
    """The bytes, not checked, of the trees `wanted` that the remote's indexes place: one
    ranged GET for each stretch of a pack where they lie close together, the stretches
    read side by side. A batch reads at most AHEAD_BYTES and keeps at most AHEAD_BYTES of
    trees (a hostile index may list many trees over the same bytes: each is a copy). A
    tree left out, or in a stretch whose GET fails, is read alone by `_read_object`,
    which says what is wrong."""
    by_pack: dict[str, list[tuple[int, int, str]]] = {}
    for oid in wanted:
        got = where.get(oid)
        if got is not None and got[3] == KIND_TREE and got[2] <= AHEAD_RANGE:
            by_pack.setdefault(got[0], []).append((got[1], got[2], oid))
    stretches: list[tuple[str, int, int, list[tuple[int, int, str]]]] = []
    kept = spanned = 0
    for pack_id, places in by_pack.items():
        places.sort()
        for offset, length, oid in places:
            last = stretches[-1] if stretches else None
            joins = last is not None and last[0] == pack_id and \
                offset - last[2] <= AHEAD_GAP and offset + length - last[1] <= AHEAD_RANGE
            grown = max(last[2], offset + length) - last[2] if joins and last else length
            if kept + length > AHEAD_BYTES or spanned + grown > AHEAD_BYTES:
                continue   # (read alone, when its turn comes)
            kept += length
            spanned += grown
            if joins and last:
                last[3].append((offset, length, oid))
                stretches[-1] = (pack_id, last[1], last[2] + grown, last[3])
            else:
                stretches.append((pack_id, offset, offset + length, [(offset, length, oid)]))

    def read(stretch: tuple[str, int, int, list[tuple[int, int, str]]]) -> dict[str, bytes]:
        pack_id, start, end, places = stretch
        try:
            data = remote.backend.get_range(pack_key(pack_id), start, end - start)
        except RemoteError:
            return {}
        return {oid: data[offset - start:offset - start + length]
                for offset, length, oid in places}

    if len(stretches) <= 1:
        return read(stretches[0]) if stretches else {}
    found: dict[str, bytes] = {}
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="dsv-check") as pool:
        for part in pool.map(read, stretches):
            found.update(part)
    return found


def _read_object(remote: Remote, where: _Where, oid: str,
                 kind: int, report: RemoteCheckReport, damaged: dict[str, str],
                 fetched: bytes | None = None) -> bytes | None:
    """A tree or record the walk needs, read back and checked (`fetched`: its bytes read
    already with others, read again alone if they do not check). When the remote's copy
    is absent (reported by the caller as missing) or damaged (reported here), a good
    local copy lets the walk go on below it, so one pass finds (and repairs) everything."""
    got = where.get(oid)
    if got is None:
        return _local_copy(remote, oid)
    pack_id, offset, length, got_kind = got
    problem = None
    if got_kind != kind:
        problem = (f"object {oid[:12]} in pack {pack_id[:12]} is a {_KIND[got_kind]}, not a "
                   f"{_KIND[kind]}")
    elif fetched is not None and hash_bytes(fetched) == oid:
        return fetched
    else:
        try:
            data = remote.backend.get_range(pack_key(pack_id), offset, length)
        except (NotFound, RemoteRefused) as exc:
            problem = f"object {oid[:12]} in pack {pack_id[:12]} cannot be read: {exc.message}"
        else:
            if hash_bytes(data) == oid:
                return data
            problem = f"object {oid[:12]} in pack {pack_id[:12]} is corrupt"
    if oid not in damaged:
        damaged[oid] = pack_id
        report.problems.append(problem)
    return _local_copy(remote, oid)


def _local_copy(remote: Remote, oid: str) -> bytes | None:
    try:
        return remote.core.objects.read(oid)
    except DsvError:
        return None


def _catalog_owners(listing: dict[str, int]) -> dict[str, set[str]]:
    """Each pack's id → the datasets whose catalog names it (remote format 3 or more)."""
    owners: dict[str, set[str]] = {}
    for key in listing:
        if (entry := layout.catalog_entry_of_key(key)) is not None:
            owners.setdefault(entry[1], set()).add(entry[0])
    return owners


def _repair(core: Core, remote: Remote, report: RemoteCheckReport, missing: list[str],
            damaged: dict[str, str], needed: dict[str, tuple[int, int]],
            entries_of: PackTables, bad_packs: set[str],
            lease: Lease, catalogs: dict[str, set[str]]) -> None:
    """Upload good local copies of what the remote lacks or holds damaged; then drop
    damaged packs whose every object is safe again, with the entries of `catalogs` (pack
    → datasets) naming them. (The catalogs that need the new packs name them in verify's
    second pass, see `check`.)"""
    objects = core.objects
    todo = set(missing) | set(damaged)
    for pack_id in bad_packs:
        todo.update(e.oid for e in entries_of.get(pack_id, []))
    local = objects.locate_many(todo)
    kinds = {e.oid: e.kind for p in bad_packs for e in entries_of.get(p, [])}
    fixed: set[str] = set()
    sent: list[Sent] = []
    packed: list[tuple[int, str]] = []   # (kind, oid) of the small ones
    for oid in sorted(todo):
        if oid in local:
            packed.append((kinds.get(oid, needed.get(oid, (KIND_BLOB, 0))[0]), oid))
        elif objects.has_loose(oid) and objects.verify_loose(oid):
            remote.backend.put_file(loose_key(oid), str(objects.loose_path(oid)))
            sent.append(Sent(1, objects.loose_path(oid).stat().st_size, loose=oid))
            fixed.add(oid)
            report.repaired.append(f"uploaded object {oid[:12]} again (loose)")
    uploaded: set[str] = set()

    def flush(batch: list[tuple[str, int, bytes]]) -> None:
        pack_id, pack, entries = encode_pack(batch)
        uploaded.add(pack_id)
        remote.backend.put_bytes(pack_key(pack_id), pack)
        crashpoint("repair:pack-uploaded")
        remote.backend.put_bytes(index_key(pack_id),
                                 pack[len(pack) - pack_tail_size(len(entries)):])
        sent.append(Sent(len(entries), len(pack), (pack_id, len(pack), entries)))
        fixed.update(oid for oid, _k, _d in batch)
        report.repaired.append(f"uploaded {plural(len(batch), 'object')} again in pack "
                               f"{pack_id[:12]}")

    # Blobs, then trees, then records: the publish order holds for repairs too. Packs of
    # about UPLOAD_PACK_SIZE, as a push makes them: one is in memory at a time.
    batch: list[tuple[str, int, bytes]] = []
    size = 0
    for kind, oid in sorted(packed):
        data = objects.read_packed(local[oid])
        if hash_bytes(data) != oid:
            continue
        if batch and (kind != batch[-1][1] or size + len(data) > UPLOAD_PACK_SIZE):
            flush(batch)
            batch, size = [], 0
        batch.append((oid, kind, data))
        size += len(data)
    if batch:
        flush(batch)
    record_sent(core, remote, sent)
    goes = sorted(bad_packs - uploaded)
    if goes and not lease.renew():
        report.problems.append(f"the lease on {remote.name} was lost before the damaged "
                               f"packs were deleted: they stay (run the repair again)")
        goes = []
    for pack_id in goes:
        # (A pack rebuilt from the same objects in the same order has the same id: the
        # upload has already replaced the damaged bytes, so it stays.)
        held = entries_of.get(pack_id)
        if held is None or any(e.oid not in fixed for e in held):
            lost = [e.oid for e in held or [] if e.oid not in fixed]
            if lost:
                report.problems.append(f"pack {pack_id[:12]} kept: {len(lost)} of its objects "
                                       f"have no good copy here")
            continue
        # The index goes first: an index on the remote always names a whole pack.
        remote.backend.delete(index_key(pack_id))
        remote.backend.delete(pack_key(pack_id))
        for ds_id in sorted(catalogs.get(pack_id, ())):
            remote.backend.delete(layout.catalog_key(ds_id, pack_id))
        report.repaired.append(f"deleted damaged pack {pack_id[:12]}")
    for oid in set(missing) | set(damaged):
        if oid not in fixed:
            report.problems.append(f"object {oid[:12]} has no good copy here; not repaired")
    remote.refresh()
