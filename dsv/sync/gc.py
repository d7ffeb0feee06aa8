"""`dsv gc --remote`: deleting what no ref of a remote reaches, with no server.

Owns deciding what is live on a remote (every version its refs reach through their
parents, with every tree and blob under them), rewriting the live objects of partly-live
packs into new packs, and deleting the rest: dead packs (index first), loose objects no
version needs, a pack without its index and an index without its pack (leftovers of
killed pushes), and the leases of killed pushes.

Safety with concurrent clients rests on two leases (sync.maintain): the gc holds the
remote's maintenance lease marked `gc`, and deletes nothing while any push holds a live
lease in `locks/`; a push waits while a gc's lease holds, and moves no ref unless its own
lease held throughout (else it looks at the remote afresh and uploads what is gone). A
file under refs/ that is no ref readers take still keeps the version records it names (it
may be a ref mid-write, damaged, or a newer dsv's); one that cannot be read at all stops
the gc. Before its first delete the gc changes the
remote's gc generation (`gc.json`), so every client reads its picture of the remote afresh
before it relies on it again. Readers take no lock: only what no ref reaches is deleted,
and a live object moves to its new pack before the old one goes.
Must never move a ref, delete an object a ref reaches, or upload an unchecked byte.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from .. import tree
from ..core import Core
from ..errors import CorruptObject, MissingObject
from ..faults import crashpoint
from ..hashing import hash_bytes, is_hash, raw_id
from ..objects import KIND_VERSION, PackEntry, PackInfo, PackTables, parse_pack_index_table
from ..remotes import layout
from ..records import MAX_RECORD_BYTES, parse_record
from ..remotes.base import (MAX_GET_BYTES, MAX_REF_BYTES, STALE_UPLOAD_AGE, NotFound,
                            RemoteError, RemoteRefused, TooLarge)
from ..remotes.layout import (GC_STATE, MAINTAIN_LOCK, RemoteRef, index_key,
                              pack_key)
from ..reporting import plural
from ..reports import RemoteGcReport
from .fetch import fetch
from .maintain import DELETE_BATCH, Gathered, Lease, live_push_locks, read_pack, when
from .remote import UPLOAD_PACK_SIZE, WORKERS, Remote, Sent


def collect(core: Core, remote: Remote, dry_run: bool = False) -> RemoteGcReport:
    """Delete from the remote every object no ref of it reaches (with `dry_run`, only
    count them: no lease is taken and nothing is written). RemoteError, with nothing
    deleted, while a push or another maintainer is at work on it, or when a ref or a
    pack index cannot be read."""
    report = RemoteGcReport(remote.name, dry_run=dry_run)
    remote.connect()
    if dry_run:
        live, report.leases_removed = live_push_locks(remote, remove_expired=False)
        if live:
            report.skipped.append(f"{_pushes(live, remote.name)}: what they uploaded so "
                                  f"far is counted as garbage")
        _collect(core, remote, report, None)
        return report
    lease = Lease(remote, gc=True)
    if not lease.take():
        raise RemoteError(f"another client is maintaining {remote.name} (its lease "
                          f"{MAINTAIN_LOCK} holds until {lease.holder_until}); nothing was "
                          f"deleted", hint="run it again later")
    try:
        # The lease first, the pushes' leases second (a push does the reverse).
        live, report.leases_removed = live_push_locks(remote, remove_expired=True)
        if live:
            raise RemoteError(f"{_pushes(live, remote.name)}; nothing was "
                              f"deleted", hint="run gc again once it is done (the lease of "
                                               "a push that was killed expires within 15 "
                                               "minutes)")
        _mend_gc_state(core, remote)
        _collect(core, remote, report, lease)
        # The temp files of killed uploads on a directory remote (no listing shows them).
        report.stale_uploads_removed, stale_bytes = \
            remote.backend.remove_stale_uploads(STALE_UPLOAD_AGE)
        report.bytes_freed += stale_bytes
    finally:
        lease.give_back()
    return report


def _mend_gc_state(core: Core, remote: Remote) -> None:
    """Before anything is uploaded: this gc changes `gc.json` before its first delete,
    and a generation no client can read tells no client to read the remote afresh. One
    that cannot be read (a link, a FIFO, a file too large: no gc wrote it) is replaced
    now by a new generation, so every client reads the remote afresh (never left absent:
    a client that last read it absent would then see no change); a directory, which dsv
    never removes, stops the gc here."""
    try:
        remote.backend.read_ref(GC_STATE)
        return
    except RemoteRefused as exc:
        why = exc.message
    try:
        remote.backend.delete(GC_STATE)
    except RemoteRefused as exc:
        raise RemoteError(f"{GC_STATE} on {remote.name} cannot be read, nor replaced by gc "
                          f"({exc.message}); nothing was deleted",
                          hint=f"remove {GC_STATE} from the remote by hand (it holds only "
                               f"the gc generation), then run gc again") from None
    core.reporter.notice(f"warning: {GC_STATE} on {remote.name} could not be read ({why}); "
                         f"replaced by a new gc generation")
    _new_generation(remote)


def _pushes(live: list[float], name: str) -> str:
    until = when(max(live), "%H:%M:%S")
    return f"{plural(len(live), 'push', 'pushes')} to {name} " \
        f"{'is' if len(live) == 1 else 'are'} in progress (lease until {until})"


def _collect(core: Core, remote: Remote, report: RemoteGcReport, lease: Lease | None) -> None:
    _fetch_report, remote_refs = fetch(core, remote, whole=True, history=True)
    strangers = _check_every_ref(core, remote, remote_refs)
    listing = _Listing(remote)
    entries, mended = _read_indexes(core, remote, listing, mend=lease is not None)
    if mended:  # (the fetch read the remote without those packs: again, with them)
        _fetch_report, remote_refs = fetch(core, remote, whole=True, history=True)
        strangers = _check_every_ref(core, remote, remote_refs)
        listing = _Listing(remote)
        entries, _mended = _read_indexes(core, remote, listing, mend=False)
    if set(entries) != set(core.index.remote_packs(remote.name)):
        raise RemoteError(f"the packs of {remote.name} changed while gc read them; nothing "
                          f"was deleted", hint="run gc again")
    keep, records = _reachable(core, remote, remote_refs, report,
                               {oid for named in strangers.values() for oid in named})
    _tell_strangers(core, remote, strangers, records)
    crashpoint("gc:planned")
    upgrade = lease is not None and remote.format < layout.CATALOG_FORMAT
    if upgrade:
        _write_catalogs(core, remote, remote_refs, entries, listing)
    _sweep(core, remote, keep, listing, entries, report, lease, {ds for ds, _r in remote_refs})
    if upgrade and not report.skipped:
        remote.raise_format(layout.CATALOG_FORMAT)
        report.upgraded = True


def _write_catalogs(core: Core, remote: Remote, remote_refs: dict[tuple[str, str], RemoteRef],
                    entries: Mapping[str, list[PackEntry]], listing: "_Listing") -> None:
    """Name in each dataset's catalog every pack holding an object its refs reach (a
    remote an older dsv wrote has none, or partial ones), so the remote can be raised to
    format 3. The fetch brought every record and tree the refs reach."""
    holder: dict[str, str] = {}
    for pack_id, rows in entries.items():
        for e in rows:
            holder.setdefault(e.oid, pack_id)
    tips: dict[str, set[str]] = {}
    for (ds_id, _ref), ref in remote_refs.items():
        tips.setdefault(ds_id, set()).add(ref.record)
    with core.reporter.task("writing dataset catalogs", len(tips)) as advance:
        for ds_id, records in sorted(tips.items()):
            packs: set[str] = set()
            roots: set[str] = set()
            stack, seen = list(records), set()
            while stack:
                record = stack.pop()
                if record in seen or record not in holder:
                    continue
                seen.add(record)
                packs.add(holder[record])
                parsed = parse_record(core.objects.read(record), record)
                roots.add(parsed.version.tree)
                stack.extend(p.record for p in parsed.parents)
            for root in roots:  # (tree objects included)
                packs.update(holder[o] for _k, o in tree.subtree_ids(root, core.read_tree)
                             if o in holder)
            new = sorted(packs - {p for p, named in listing.owners.items() if ds_id in named})
            remote.add_to_catalog(ds_id, new)
            for pack_id in new:
                listing.owners.setdefault(pack_id, set()).add(ds_id)
            advance(1, 0)


def _check_every_ref(core: Core, remote: Remote, accepted: dict[tuple[str, str], RemoteRef]
                     ) -> dict[str, list[str]]:
    """Every ref file on the remote is a tombstone, a ref the fetch accepted naming the
    same record (else a push moved it meanwhile: nothing is deleted), or a stranger:
    a file readers do not take for a ref (no ref name, a body that does not parse, one
    too large, a version not of its dataset). A stranger may still be a ref caught
    mid-write, damaged, or of a newer dsv, so it is not ignored outright: returned are,
    for each, the objects of the remote its bytes name by id (its first MAX_REF_BYTES),
    which gc keeps, with their history, where they are version records."""
    def read(key: str) -> tuple[str, tuple[bytes, str] | None]:
        try:
            return key, remote.backend.read_ref(key)
        except TooLarge:
            pass  # no ref; what it starts with is looked at all the same
        except RemoteRefused as exc:
            raise _unreadable(remote, key, exc.message) from None
        try:
            size = remote.backend.head(key)
            if size is None:
                return key, None
            return key, (remote.backend.get_range(key, 0, min(size, MAX_REF_BYTES)), "")
        except RemoteRefused as exc:
            raise _unreadable(remote, key, exc.message) from None

    with ThreadPoolExecutor(WORKERS) as pool:
        found = list(pool.map(read, [key for key, _size in remote.backend.list(layout.REFS)]))
    strangers: dict[str, list[str]] = {}
    for key, got in found:
        if got is None or layout.is_tombstone(key, got[0]):
            continue
        ref = layout.parse_ref(key, *got) if got[1] else None
        seen = accepted.get((ref.dataset, ref.ref)) if ref is not None else None
        if ref is None or seen is None:
            named = sorted({m.decode() for m in _OBJECT_ID.findall(got[0])})
            strangers[key] = sorted(core.index.remote_locate_many(remote.name, named))
        elif seen.record != ref.record:
            raise RemoteError(f"ref {key} on {remote.name} changed while gc ran (a push "
                              f"that takes no lease?); nothing was deleted",
                              hint="run gc again")
    return strangers


_OBJECT_ID = re.compile(rb"[0-9a-f]{64}")


def _tell_strangers(core: Core, remote: Remote, strangers: dict[str, list[str]],
                    records: set[str]) -> None:
    for key, named in sorted(strangers.items()):
        held = [oid for oid in named if oid in records]
        if held:
            more = f" and {plural(len(held) - 1, 'other')}" if len(held) > 1 else ""
            core.reporter.notice(f"warning: {key} on {remote.name} is not a ref dsv can "
                                 f"read, but names version record {held[0][:12]}{more}: "
                                 f"kept, with its history, as a ref's (remove {key} from "
                                 f"the remote if it is no ref)")
        else:
            core.reporter.notice(f"warning: ignored {key} on {remote.name}: not a ref dsv "
                                 f"can read, and it names no version record there")


def _unreadable(remote: Remote, key: str, why: str) -> RemoteError:
    return RemoteError(f"ref {key} on {remote.name} cannot be read ({why}); gc deletes "
                       f"nothing while a ref could reach anything",
                       hint=f"`dsv verify --remote {remote.name}` checks the remote")


def _reachable(core: Core, remote: Remote, remote_refs: dict[tuple[str, str], RemoteRef],
               report: RemoteGcReport, extra: set[str]) -> tuple[_Ids, set[str]]:
    """Every object a ref reaches, and the version records among them: the records of
    its version and of their ancestors on the remote (followed through the parent records
    each record names), and every tree and blob under them (the fetch brought every
    record and tree the refs reach, and `_Objects` what it could not see: a parent record
    a pack lists under another kind). `extra` are ids a file that may be a ref names:
    those that are version records are walked as a ref's."""
    objects = _Objects(core, remote)
    keep = _Ids()
    roots: set[str] = set()
    records: set[str] = set()
    stack = [(oid, False) for oid in sorted(extra)] + \
        [(r.record, True) for r in remote_refs.values()]
    while stack:
        record, named = stack.pop()
        if record in records or record in keep:
            continue
        data = objects.get(record, MAX_RECORD_BYTES)
        if data is None:
            continue  # history the remote does not hold ends the walk, as in a fetch
        try:
            parsed = parse_record(data, record)
        except CorruptObject:
            if named:  # (its own bytes, checked, but no record: nothing beyond)
                keep.add(record)
            continue
        records.add(record)
        roots.add(parsed.version.tree)
        stack.extend((p.record, True) for p in parsed.parents)
    keep.update(records)
    with core.reporter.task("finding what the refs reach", len(roots)) as advance:
        for root in roots:
            if root not in keep:
                keep.update(oid for _kind, oid in tree.subtree_ids(root, objects.tree))
            advance(1, 0)
    report.refs = len(remote_refs)
    report.versions = len(records)
    report.objects_kept = len(keep)
    return keep, records


class _Ids:
    """A set of object ids, each kept as its 32 bytes: 65 bytes an id where a hex string
    takes 113 (gc's set of every live object of a million-file remote). Text that is no
    id is never in it (no object has such an id)."""

    def __init__(self) -> None:
        self._raw: set[bytes] = set()

    def add(self, oid: str) -> None:
        if (raw := raw_id(oid)) is not None:
            self._raw.add(raw)

    def update(self, oids: Iterable[str]) -> None:
        for oid in oids:
            self.add(oid)

    def __contains__(self, oid: object) -> bool:
        raw = raw_id(oid) if isinstance(oid, str) else None
        return raw is not None and raw in self._raw

    def __len__(self) -> int:
        return len(self._raw)


class _Objects:
    """The records and trees the walk reads: from the store (as the fetch left it), else
    from the remote where its picture places them, whatever kind the pack's table gives
    (a record listed as a blob is still the record its child names by hash), each checked
    against its id. What cannot be read stops the gc, nothing deleted: what it reaches
    is unknown."""

    def __init__(self, core: Core, remote: Remote) -> None:
        self.core = core
        self.remote = remote
        # (the common case, in one query: records the picture lists as records)
        self.records = {oid for oid, *_ in core.index.remote_objects_of_kind(remote.name,
                                                                             KIND_VERSION)}

    def get(self, oid: str, cap: int) -> bytes | None:
        """Object `oid` of the remote, checked; None if the remote holds none."""
        if oid not in self.records and \
                not self.core.index.remote_locate_many(self.remote.name, [oid]):
            return None
        try:
            return self.core.objects.read(oid)
        except (MissingObject, CorruptObject):
            pass
        return self._download(oid, cap)

    def tree(self, oid: str) -> bytes:
        """A tree object of a version a ref reaches (`tree.subtree_ids` reads through it)."""
        try:
            return self.core.read_tree(oid)
        except (MissingObject, CorruptObject):
            pass
        data = self._download(oid, MAX_GET_BYTES)
        if data is None:
            raise RemoteError(f"tree {oid[:12]} of a version a ref of {self.remote.name} "
                              f"reaches is not on the remote; nothing was deleted",
                              hint=f"`dsv verify --remote {self.remote.name}` checks the "
                                   f"remote")
        return data

    def _download(self, oid: str, cap: int) -> bytes | None:
        where = self.core.index.remote_locate_many(self.remote.name, [oid]).get(oid)
        if where is None:
            return None
        pack_id, offset, length = where
        why = f"it claims {length} bytes" if length > cap else ""
        if not why:
            try:
                data = self.remote.backend.get_range(pack_key(pack_id), offset, length)
                why = "" if hash_bytes(data) == oid else "its bytes do not match its id"
            except RemoteError as exc:
                why = exc.message
        if why:
            raise RemoteError(f"object {oid[:12]} in pack {pack_id[:12]} on "
                              f"{self.remote.name}, which a ref reaches, cannot be read "
                              f"({why}); nothing was deleted",
                              hint=f"`dsv verify --remote {self.remote.name} --repair` "
                                   f"mends it")
        return data


class _Listing:
    """The remote's packs, pack indexes and loose objects, listed once."""

    def __init__(self, remote: Remote) -> None:
        self.sizes = {key: size for prefix in (layout.INDEX, layout.PACKS, layout.LOOSE,
                                               layout.CATALOG, layout.LOCATORS,
                                               layout.MULTI_INDEX)
                      for key, size in remote.backend.list(prefix)}
        self.owners: dict[str, set[str]] = {}   # pack id → datasets whose catalog names it
        for key in self.sizes:
            if (entry := layout.catalog_entry_of_key(key)) is not None:
                self.owners.setdefault(entry[1], set()).add(entry[0])
        # (a name that is no pack id is not dsv's: readers ignore it, and so does gc)
        self.indexes = {pid: size for key, size in self.sizes.items()
                        if (pid := layout.index_id_of_key(key)) is not None and is_hash(pid)}
        self.packs = {pid: size for key, size in self.sizes.items()
                      if (pid := layout.pack_id_of_key(key)) is not None and is_hash(pid)}
        self.loose = {oid: size for key, size in self.sizes.items()
                      if (oid := layout.loose_oid_of_key(key)) is not None}
        self.locators = {oid: size for key, size in self.sizes.items()
                         if (oid := layout.locator_oid_of_key(key)) is not None}
        self.multi = {key: named for key in self.sizes
                      if (named := layout.multi_index_of_key(key)) is not None}


def _sweep(core: Core, remote: Remote, keep: _Ids, listing: _Listing,
           entries: Mapping[str, list[PackEntry]], report: RemoteGcReport,
           lease: Lease | None, live_datasets: set[str]) -> None:
    dead, partial, whole = [], [], []
    for pack_id, rows in entries.items():
        live = sum(e.oid in keep for e in rows)
        if live == len(rows):
            whole.append(pack_id)
        elif live:
            partial.append(pack_id)
        else:
            dead.append(pack_id)
    # oid → a wholly live pack holding it, for the objects of partly-live packs (the
    # only ones looked up: a map of every object took some 120 MB a million)
    in_partial = {e.oid for p in partial for e in entries[p]}
    in_live_pack: dict[str, str] = {}
    for pack_id in whole if in_partial else ():
        in_live_pack.update((e.oid, pack_id) for e in entries[pack_id] if e.oid in in_partial)
    del in_partial
    strays = [index_key(p) for p in listing.indexes if p not in listing.packs] + \
        [pack_key(p) for p in listing.packs if p not in listing.indexes]
    gone_loose = [oid for oid in listing.loose if oid not in keep]
    # A locator goes with its object (a reader of a live one finds places that moved by
    # the pack indexes; one it lacks, likewise).
    gone_locators = [oid for oid in listing.locators if oid not in keep]
    left: set[str] = set()    # partly-live packs that could not be read whole
    written: dict[str, int] = {}
    if lease is None:  # a dry run: what the rewrite would upload, each live object once
        moved = {e.oid: e.length for p in partial for e in entries[p]
                 if e.oid in keep and e.oid not in in_live_pack}
        uploaded = sum(moved.values())
    else:
        live_owners = {p: named & live_datasets for p, named in listing.owners.items()}
        _drop_damaged_copies(remote, partial, entries, keep, in_live_pack)
        written = _rewrite(core, remote, partial, keep, set(in_live_pack), report, left,
                           live_owners)
        _name_survivors(remote, [p for p in partial if p not in left and p not in written],
                        entries, keep, in_live_pack, live_owners)
        uploaded = sum(written.values())
    # A pack written again as itself (same objects, same order: same id) stays.
    dead = [p for p in dead if p not in written]
    partial = [p for p in partial if p not in left and p not in written]
    strays = [k for k in strays if (layout.index_id_of_key(k) or layout.pack_id_of_key(k))
              not in written]
    # Records first, each wave whole before the next: a record on the remote always has
    # its tree and blobs there (a push skips a version whose record it finds).
    records = [p for p in dead + partial if any(e.kind == KIND_VERSION for e in entries[p])]
    holding_records = set(records)
    rest = [p for p in dead + partial if p not in holding_records]
    kept_records = [p for p in left if any(e.kind == KIND_VERSION and e.oid not in keep
                                           for e in entries[p])]
    if kept_records:
        # Dead records stay in a pack left alone: what they name stays too.
        report.skipped.append(f"{plural(len(kept_records), 'pack')} of version records left "
                              f"alone: only version records were deleted this time")
        rest, gone_loose, strays, gone_locators = [], [], [], []
    goes = {e.oid for p in records + rest for e in entries[p] if e.oid not in keep}
    going = set(records + rest)
    report.packs_deleted = len(going.intersection(dead))
    report.packs_rewritten = len(going.intersection(partial))
    report.objects_deleted = len(goes | set(gone_loose))
    report.loose_deleted = len(gone_loose)
    report.locators_deleted = len(gone_locators)
    report.strays_deleted = len(strays)
    report.bytes_freed = max(sum(listing.packs[p] + listing.indexes[p] for p in records + rest)
                             + sum(listing.loose[o] for o in gone_loose)
                             + sum(listing.locators[o] for o in gone_locators)
                             + sum(listing.sizes[k] for k in strays) - uploaded, 0)
    # Catalog entries go with their pack (before it), and with their dataset when no
    # ref of it is left; an entry naming no pack here is a leftover.
    going_packs = set(records + rest)
    loose_ends = [layout.catalog_key(ds, p) for p, named in listing.owners.items()
                  for ds in sorted(named)
                  if p not in going_packs and (ds not in live_datasets or
                                               (p not in listing.packs and p not in written))]
    # A multi-pack index goes with the pack its key names: only a client that lacks that
    # pack's index reads it (its other packs are then read one index at a time).
    stale_multi = [key for key, (named, _body) in listing.multi.items()
                   if named in going_packs or (named not in listing.packs
                                               and named not in written)]
    report.bytes_freed += sum(listing.sizes[k] for k in stale_multi)
    strays += loose_ends + stale_multi
    report.strays_deleted = len(strays)

    def with_catalog(p: str) -> list[str]:
        return [layout.catalog_key(ds, p) for ds in sorted(listing.owners.get(p, ()))] + \
            [index_key(p), pack_key(p)]
    waves = [[k for p in records for k in with_catalog(p)],
             [k for p in rest for k in with_catalog(p)]
             + [layout.loose_key(o) for o in gone_loose]
             + [layout.locator_key(o) for o in gone_locators] + strays]
    if lease is None or not any(waves):
        return
    if not lease.renew():
        _nothing_deleted(report, f"the lease on {remote.name} was lost before anything was "
                                 f"deleted: nothing was (run gc again)")
        return
    remote.raise_format(layout.LEASE_FORMAT)
    # Every client's picture may name what goes now: it reads the remote afresh next time.
    _new_generation(remote)
    crashpoint("gc:deleting")
    with core.reporter.task("deleting", sum(map(len, waves))) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        for wave in waves:
            for start in range(0, len(wave), DELETE_BATCH):
                if not lease.renew():
                    report.skipped.append(f"the lease on {remote.name} was lost while "
                                          f"deleting: the rest stays (run gc again)")
                    remote.refresh()
                    return
                # (each index before its pack: they are in that order, and a batch ends
                # only after every delete in it)
                batch = wave[start:start + DELETE_BATCH]
                for _ in pool.map(remote.backend.delete, _index_first(batch)):
                    advance(1, 0)
                for _ in pool.map(remote.backend.delete, _packs_after(batch)):
                    advance(1, 0)
            crashpoint("gc:wave-deleted")
    remote.refresh()


def _index_first(keys: list[str]) -> list[str]:
    return [k for k in keys if layout.pack_id_of_key(k) is None]


def _packs_after(keys: list[str]) -> list[str]:
    return [k for k in keys if layout.pack_id_of_key(k) is not None]


def _nothing_deleted(report: RemoteGcReport, why: str) -> None:
    report.skipped.append(why)
    report.packs_deleted = report.packs_rewritten = report.objects_deleted = 0
    report.loose_deleted = report.strays_deleted = report.bytes_freed = 0


def _read_indexes(core: Core, remote: Remote, listing: _Listing, mend: bool
                  ) -> tuple[Mapping[str, list[PackEntry]], list[str]]:
    """Each pack's entries from its index (which must hash to the pack's name), and the
    packs whose index was written again. An index that cannot be read could name
    anything a ref reaches: then nothing is deleted; but with `mend`, one whose pack is
    whole is first written again from the pack's own table and trailer (the index is
    their copy), so a damaged copy does not stop every gc for good."""
    def read(pack_id: str) -> tuple[str, PackInfo | None, bool]:
        try:
            data = remote.backend.get(index_key(pack_id), max_size=MAX_GET_BYTES)
            return pack_id, parse_pack_index_table(data, pack_id), False
        except NotFound:
            return pack_id, None, False  # deleted since the listing: gc runs again
        except (CorruptObject, RemoteRefused) as exc:
            why = exc.message
        rows = _index_from_pack(remote, pack_id) if mend else None
        if rows is None:
            raise RemoteError(f"pack index {pack_id[:12]} on {remote.name} cannot be read "
                              f"({why}); nothing was deleted",
                              hint=f"`dsv verify --remote {remote.name} --repair` uploads "
                                   f"its objects again from a store that holds them; once "
                                   f"`dsv verify --remote {remote.name}` finds nothing "
                                   f"missing, remove {index_key(pack_id)} and "
                                   f"{pack_key(pack_id)}")
        core.reporter.notice(f"warning: pack index {pack_id[:12]} on {remote.name} was "
                             f"damaged; written again from its pack")
        return pack_id, rows, True

    out = PackTables()
    mended = []
    wanted = [p for p in listing.indexes if p in listing.packs]
    with core.reporter.task("reading pack indexes", len(wanted)) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        for pack_id, rows, written in pool.map(read, wanted):
            if rows is None:
                raise RemoteError(f"pack index {pack_id[:12]} went from {remote.name} while "
                                  f"gc read it; nothing was deleted", hint="run gc again")
            out.tables[pack_id] = rows
            if written:
                mended.append(pack_id)
            advance(1, 0)
    return out, mended


def _index_from_pack(remote: Remote, pack_id: str) -> PackInfo | None:
    """Write `index/<pack_id>` again from the pack's own table and trailer, if the pack
    can tell them (they hash to its name, its size is what they say); its entries, or
    None when the pack cannot tell."""
    try:
        got = layout.read_pack_tail(remote.backend, pack_id)
    except RemoteError as exc:
        # A timeout or a 5xx says nothing of the pack: never call it damaged.
        raise RemoteError(f"{exc.message} (read to write its damaged index again); "
                          f"nothing was deleted", hint="run gc again") from None
    if got is None:
        return None   # (damaged, too large, not a file, or gone: it cannot tell)
    _rows, _size, tail = got
    remote.backend.put_bytes(index_key(pack_id), tail)
    return parse_pack_index_table(tail, pack_id)


def _name_survivors(remote: Remote, going: list[str], entries: Mapping[str, list[PackEntry]],
                    keep: _Ids, in_live_pack: dict[str, str],
                    owners: dict[str, set[str]]) -> None:
    """A live object of a partly-live pack that goes, which a wholly live pack also
    holds, is not rewritten: that pack is named in the catalogs that named the one going
    (before it goes), so every dataset keeps a named pack for it."""
    wanted: dict[str, set[str]] = {}
    for pack_id in going:
        named = owners.get(pack_id, set())
        for e in entries[pack_id] if named else ():
            holder = in_live_pack.get(e.oid)
            if e.oid in keep and holder is not None:
                for ds_id in named - owners.get(holder, set()):
                    wanted.setdefault(ds_id, set()).add(holder)
    for ds_id, packs in sorted(wanted.items()):
        remote.add_to_catalog(ds_id, sorted(packs))


def _drop_damaged_copies(remote: Remote, partial: list[str],
                         entries: Mapping[str, list[PackEntry]], keep: _Ids,
                         in_live_pack: dict[str, str]) -> None:
    """A live object of a partly-live pack is not rewritten when a wholly live pack holds
    it too, and its pack goes: so that other copy is read and checked first (its index
    is no proof of its bytes: a pack cut short or damaged keeps a whole index). One that
    cannot be read or fails its hash is dropped from `in_live_pack`: the object is
    rewritten from the partly-live pack, whose copy `read_pack` checks."""
    wanted = sorted({e.oid for p in partial for e in entries[p]
                     if e.oid in keep and e.oid in in_live_pack})
    # (the other copies' entries, from their packs only: not a map of the whole remote)
    where = {e.oid: e for pack_id in {in_live_pack[oid] for oid in wanted}
             for e in entries[pack_id] if in_live_pack.get(e.oid) == pack_id}

    def good(oid: str) -> bool:
        e = where[oid]
        try:
            data = remote.backend.get_range(pack_key(in_live_pack[oid]), e.offset, e.length)
        except RemoteError:
            return False
        return hash_bytes(data) == oid

    with ThreadPoolExecutor(WORKERS) as pool:
        for oid, fine in zip(wanted, pool.map(good, wanted), strict=True):
            if not fine:
                del in_live_pack[oid]


def _rewrite(core: Core, remote: Remote, partial: list[str], keep: _Ids,
             elsewhere: set[str], report: RemoteGcReport, left: set[str],
             owners: dict[str, set[str]]) -> dict[str, int]:
    """Upload the live objects of partly-live packs that no wholly-live pack holds, into
    new packs (named in the catalogs that named the packs they came from); a pack that
    cannot be read whole is left alone (added to `left`). Returns the packs written:
    id → size."""
    gathered = Gathered()
    written: dict[str, int] = {}

    def sent(items: list[Sent]) -> None:
        for item in items:
            assert item.pack is not None
            written[item.pack[0]] = item.pack[1]
        report.packs_written += len(items)

    with core.reporter.task("rewriting partly-live packs", len(partial)) as advance:
        for pack_id in partial:
            skipped: list[str] = []
            objects = read_pack(remote, pack_id, skipped, max_size=MAX_GET_BYTES)
            if objects is None:
                report.skipped.extend(skipped or [f"pack {pack_id[:12]} left alone: gone "
                                                  f"while gc ran"])
                left.add(pack_id)
                advance(1, 0)
                continue
            for oid, kind, data in objects:
                if oid in keep and oid not in elsewhere:
                    gathered.add(oid, kind, data, pack_id)
            if gathered.nbytes >= 2 * UPLOAD_PACK_SIZE:
                sent(gathered.flush(core, remote, final=False))
            advance(1, 0)
    sent(gathered.flush(core, remote, final=True))
    gathered.name_in_catalogs(remote, owners)
    return written


def _new_generation(remote: Remote) -> None:
    """Change the remote's gc generation (compare-and-swap; only a lease holder writes it)."""
    body = json.dumps({"generation": os.urandom(8).hex(), "at": time.time()},
                      sort_keys=True).encode()
    for _attempt in range(5):
        current = remote.backend.read_ref(GC_STATE)
        if remote.backend.write_ref(GC_STATE, body, current[1] if current else None):
            return
    raise RemoteError(f"could not change {GC_STATE} on {remote.name}; nothing was deleted",
                      hint="run gc again")
