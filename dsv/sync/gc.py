"""`dsv gc --remote`: deleting what no ref of a remote reaches, with no server.

Owns deciding what is live on a remote (every version its refs reach through their
parents, with every tree and blob under them), rewriting the live objects of partly-live
packs into new packs, and deleting the rest: dead packs (index first), loose objects no
version needs, a pack without its index and an index without its pack (leftovers of
killed pushes), and the leases of killed pushes.

Safety with concurrent clients rests on two leases (sync.maintain): the gc holds the
remote's maintenance lease marked `gc`, and deletes nothing while any push holds a live
lease in `locks/`; a push waits while a gc's lease holds, and moves no ref unless its own
lease held throughout (else it looks at the remote afresh and uploads what is gone). Every
ref must be readable, or nothing is deleted. Before its first delete the gc changes the
remote's gc generation (`gc.json`), so every client reads its picture of the remote afresh
before it relies on it again. Readers take no lock: only what no ref reaches is deleted,
and a live object moves to its new pack before the old one goes.
Must never move a ref, delete an object a ref reaches, or upload an unchecked byte.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from .. import tree
from ..core import Core
from ..errors import CorruptObject
from ..faults import crashpoint
from ..objects import KIND_BLOB, KIND_TREE, KIND_VERSION, PackEntry, parse_pack_index
from ..remotes import layout
from ..remotes.base import MAX_GET_BYTES, NotFound, RemoteError, RemoteRefused
from ..remotes.layout import GC_STATE, MAINTAIN_LOCK, RemoteRef, index_key, pack_key
from ..reporting import plural
from ..reports import RemoteGcReport
from .fetch import fetch
from .maintain import Lease, flush, live_push_locks, read_pack
from .remote import UPLOAD_PACK_SIZE, WORKERS, Remote, Sent


def collect(core: Core, remote: Remote, dry_run: bool = False) -> RemoteGcReport:
    """Delete from the remote every object no ref of it reaches (with `dry_run`, only
    count them). RemoteError, with nothing deleted, while a push or another maintainer
    is at work on it, or when a ref cannot be read."""
    report = RemoteGcReport(remote.name, dry_run=dry_run)
    remote.connect()
    lease = Lease(remote, gc=True)
    if not lease.take():
        raise RemoteError(f"another client is maintaining {remote.name} (its lease "
                          f"{MAINTAIN_LOCK} holds until {lease.holder_until}); nothing was "
                          f"deleted", hint="run it again later")
    try:
        # The lease first, the pushes' leases second (a push does the reverse).
        before = len(list(remote.backend.list(layout.LOCKS)))
        live = live_push_locks(remote, remove_expired=not dry_run)
        if live:
            until = time.strftime("%H:%M:%S", time.localtime(max(live)))
            raise RemoteError(f"{plural(len(live), 'push')} to {remote.name} "
                              f"{'is' if len(live) == 1 else 'are'} in progress (lease until "
                              f"{until}); nothing was deleted",
                              hint="run gc again once it is done (the lease of a push that "
                                   "was killed expires within 15 minutes)")
        if not dry_run:
            report.leases_removed = before
        _fetch_report, remote_refs = fetch(core, remote)
        _check_every_ref(remote, remote_refs)
        keep = _reachable(core, remote, remote_refs, report)
        crashpoint("gc:planned")
        _sweep(core, remote, keep, report, lease)
    finally:
        lease.give_back()
    return report


def _check_every_ref(remote: Remote, accepted: dict[tuple[str, str], RemoteRef]) -> None:
    """Every ref file on the remote is a tombstone or a ref the fetch accepted, naming
    the same record: a ref gc cannot read could reach anything, so nothing is deleted."""
    for key, _size in remote.backend.list(layout.REFS):
        try:
            got = remote.backend.read_ref(key)
        except RemoteRefused as exc:
            raise _unreadable(remote, key, exc.message) from None
        if got is None or layout.is_tombstone(key, got[0]):
            continue
        ref = layout.parse_ref(key, *got)
        if ref is None:
            raise _unreadable(remote, key, "not a ref dsv writes")
        seen = accepted.get((ref.dataset, ref.ref))
        if seen is None:
            raise _unreadable(remote, key, "its version is not one the fetch could accept")
        if seen.record != ref.record:
            raise RemoteError(f"ref {key} on {remote.name} changed while gc ran (a push "
                              f"that takes no lease?); nothing was deleted",
                              hint="run gc again")


def _unreadable(remote: Remote, key: str, why: str) -> RemoteError:
    return RemoteError(f"ref {key} on {remote.name} cannot be read ({why}); gc deletes "
                       f"nothing while a ref could reach anything",
                       hint=f"`dsv verify --remote {remote.name}` checks the remote")


def _reachable(core: Core, remote: Remote, remote_refs: dict[tuple[str, str], RemoteRef],
               report: RemoteGcReport) -> set[str]:
    """Every object a ref reaches: the records of its version and of their ancestors on
    the remote, and every tree and blob under them (the fetch brought every record and
    tree the refs reach into this store)."""
    on_remote = {oid for oid, *_ in core.index.remote_objects_of_kind(remote.name,
                                                                      KIND_VERSION)}
    keep: set[str] = set()
    roots: set[str] = set()
    seen: set[str] = set()
    stack = [(r.version, r.record) for r in remote_refs.values()]
    while stack:
        vid, record = stack.pop()
        if vid in seen or record not in on_remote:
            continue  # history the remote does not hold ends the walk, as in a fetch
        seen.add(vid)
        v = core.index.version(vid)
        if v is None or v.record != record:
            raise CorruptObject(f"version {vid} of {remote.name} is not in this store as "
                                f"fetched; nothing was deleted", hint="run gc again")
        keep.add(record)
        roots.add(v.tree)
        for pid in v.parents:
            parent = core.index.version(pid)
            if parent is not None and parent.record is not None:
                stack.append((pid, parent.record))
    with core.reporter.task("finding what the refs reach", len(roots)) as advance:
        for root in roots:
            if root not in keep:
                keep.update(oid for _kind, oid in tree.subtree_ids(root, core.read_tree))
            advance(1, 0)
    report.refs = len(remote_refs)
    report.versions = len(seen)
    report.objects_kept = len(keep)
    return keep


def _sweep(core: Core, remote: Remote, keep: set[str], report: RemoteGcReport,
           lease: Lease) -> None:
    listing = {key: size for prefix in (layout.INDEX, layout.PACKS, layout.LOOSE)
               for key, size in remote.backend.list(prefix)}
    indexes = {pid: size for key, size in listing.items()
               if (pid := layout.index_id_of_key(key)) is not None}
    packs = {pid: size for key, size in listing.items()
             if (pid := layout.pack_id_of_key(key)) is not None}
    loose = {oid: size for key, size in listing.items()
             if (oid := layout.loose_oid_of_key(key)) is not None}
    entries = _read_indexes(core, remote, [p for p in indexes if p in packs], report)
    dead, partial = [], []
    in_live_pack: set[str] = set()
    for pack_id, rows in entries.items():
        live = sum(e.oid in keep for e in rows)
        if live == len(rows):
            in_live_pack.update(e.oid for e in rows)
        elif live:
            partial.append(pack_id)
        else:
            dead.append(pack_id)
    strays = [index_key(p) for p in indexes if p not in packs] + \
        [pack_key(p) for p in packs if p not in indexes]
    gone_loose = [oid for oid in loose if oid not in keep]
    left: set[str] = set()    # partly-live packs that could not be read whole
    if report.dry_run:  # what the rewrite would upload: the live objects, once each
        moved = {e.oid: e.length for p in partial for e in entries[p]
                 if e.oid in keep and e.oid not in in_live_pack}
        written = sum(moved.values())
    else:
        written = _rewrite(core, remote, partial, keep, in_live_pack, report, left)
    partial = [p for p in partial if p not in left]
    report.packs_deleted = len(dead)
    report.packs_rewritten = len(partial)
    report.objects_deleted = sum(sum(e.oid not in keep for e in entries[p])
                                 for p in dead + partial) + len(gone_loose)
    report.loose_deleted = len(gone_loose)
    report.strays_deleted = len(strays)
    report.bytes_freed = max(sum(packs[p] + indexes[p] for p in dead + partial) +
                             sum(loose[o] for o in gone_loose) +
                             sum(listing[k] for k in strays) - written, 0)
    if report.dry_run:
        return
    if not lease.held():
        report.skipped.append(f"the lease on {remote.name} ran out before anything was "
                              f"deleted: nothing was (run gc again)")
        report.packs_deleted = report.packs_rewritten = report.objects_deleted = 0
        report.loose_deleted = report.strays_deleted = report.bytes_freed = 0
        return
    doomed = [k for p in dead + partial for k in (index_key(p), pack_key(p))]  # index first
    doomed += [layout.loose_key(o) for o in gone_loose] + strays
    if not doomed:
        return
    # Every client's picture may name what goes now: it reads the remote afresh next time.
    _new_generation(remote)
    crashpoint("gc:deleting")
    with core.reporter.task("deleting", len(doomed)) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(remote.backend.delete, doomed):
            advance(1, 0)
    remote.refresh()


def _read_indexes(core: Core, remote: Remote, pack_ids: list[str],
                  report: RemoteGcReport) -> dict[str, list[PackEntry]]:
    """Each pack's entries from its index (which must hash to the pack's name). A pack
    whose index cannot be read is left alone, and said so."""
    def read(pack_id: str) -> tuple[str, list[PackEntry] | None]:
        try:
            data = remote.backend.get(index_key(pack_id), max_size=MAX_GET_BYTES)
            return pack_id, parse_pack_index(data, pack_id)[0]
        except NotFound:
            return pack_id, None
        except (CorruptObject, RemoteRefused) as exc:
            report.skipped.append(f"pack {pack_id[:12]} left alone: {exc.message}")
            return pack_id, None

    out: dict[str, list[PackEntry]] = {}
    with core.reporter.task("reading pack indexes", len(pack_ids)) as advance, \
            ThreadPoolExecutor(WORKERS) as pool:
        for pack_id, rows in pool.map(read, pack_ids):
            if rows is not None:
                out[pack_id] = rows
            advance(1, 0)
    return out


def _rewrite(core: Core, remote: Remote, partial: list[str], keep: set[str],
             elsewhere: set[str], report: RemoteGcReport, left: set[str]) -> int:
    """Upload the live objects of partly-live packs that no wholly-live pack holds, into
    new packs; a pack that cannot be read whole is left alone (added to `left`).
    Returns the bytes written."""
    by_kind: dict[int, list[tuple[str, int, bytes]]] = {KIND_BLOB: [], KIND_TREE: [],
                                                        KIND_VERSION: []}
    moved: set[str] = set(elsewhere)
    written = 0
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
                if oid in keep and oid not in moved and kind in by_kind:
                    moved.add(oid)
                    by_kind[kind].append((oid, kind, data))
            if sum(len(d) for items in by_kind.values() for _o, _k, d in items) \
                    >= 2 * UPLOAD_PACK_SIZE:
                written += _sent_bytes(flush(core, remote, by_kind, final=False), report)
            advance(1, 0)
    return written + _sent_bytes(flush(core, remote, by_kind, final=True), report)


def _sent_bytes(sent: list[Sent], report: RemoteGcReport) -> int:
    report.packs_written += len(sent)
    return sum(s.nbytes for s in sent)


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
