"""`dsv verify --repair`: good copies of damaged or missing objects, from the remotes.

Owns looking for a good copy of each object a check found damaged or missing and some
version needs (every origin in turn, the default first, each read through the cluster
cache as pulls are), every copy checked against its id before it is kept; rewriting a
damaged pack (its intact objects plus the good copies; an object no source has keeps
its damaged bytes, never silently dropped, so the next check names it again); replacing
a damaged loose file; indexing intact packs the index lost; forgetting packs gone from
disk. What it could not repair is left for the check that follows to report, with the
versions and paths it reaches (maintenance.affected_paths). Must never change a version,
a ref or a working directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from . import tree
from .core import Core
from .errors import DsvError, MissingObject
from .hashing import hash_bytes
from .objects import KIND_BLOB, KIND_TREE, PACK_THRESHOLD, Ingest
from .remotes.base import RemoteError
from .reporting import plural
from .reports import LOOSE, Damage, FetchReport, PullReport
from .sync.download import download_loose, download_packed
from .sync.remote import Remote

Wanted = dict[str, tuple[int, "int | None"]]
"""Objects to look for: oid → (kind, size when known)."""


def repair(core: Core, damage: Damage, affected: list[dict[str, str]]) -> list[str]:
    """Repair what `damage` names, under the store lock; returns what was repaired.
    `affected` (maintenance.affected_paths) says where working directories may hold
    intact copies: they are tried first, then the remotes."""
    objects = core.objects
    repaired: list[str] = []
    for pack_id in sorted(damage.stray_packs):
        entries = objects.read_pack_entries(pack_id)
        with core.index.transaction():
            core.index.add_pack(pack_id, objects.pack_path(pack_id).stat().st_size, entries)
        repaired.append(f"indexed pack {pack_id[:12]} (it was on disk, not in the index)")
        for e in entries:
            damage.missing.pop(e.oid, None)
    rows_of = {p: core.index.pack_objects(p) for p in damage.bad_packs | damage.lost_packs}
    with core.index.transaction():
        for pack_id in damage.lost_packs:  # first: what was in them is not here any more
            core.index.delete_pack(pack_id)
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
    wanted = {oid: w for oid, w in wanted.items() if oid in damage.reached}
    # A damaged loose file steps aside (into this process's staging directory) so that
    # a good copy can be staged in its place; it comes back if none is found.
    aside = {}
    for oid, where in damage.corrupt.items():
        if where == LOOSE and oid in wanted:
            aside[oid] = str(objects.tmp_dir / f"damaged-{oid}")
            os.rename(objects.loose_path(oid), aside[oid])
    rewritten: list[str] = []
    got: dict[str, str] = {}
    try:
        with Ingest(objects) as ingest:
            got.update(_from_worktrees(core, wanted, affected, ingest))
            got.update(_obtain(core, {o: w for o, w in wanted.items() if o not in got},
                               ingest))
            for pack_id in sorted(damage.bad_packs):
                line = _rewrite(core, pack_id, rows_of[pack_id], damage, got, ingest)
                if line:
                    rewritten.append(pack_id)
                    repaired.append(line)
            core.commit_objects(ingest, crash="verify:repaired", retire=rewritten)
    finally:
        for oid, path in aside.items():
            if oid in got:
                os.unlink(path)
            else:
                os.rename(path, objects.loose_path(oid))
    indexed = core.index.packs()
    for pack_id in rewritten:
        if pack_id in indexed:
            objects.reopen_pack(pack_id)  # the same objects in the same order: same name
        else:
            objects.delete_pack(pack_id)
    for oid in aside:
        if oid in got:
            repaired.append(f"object {oid[:12]}: damaged loose file replaced by a good copy "
                            f"from {got[oid]}")
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
    dropped = [oid for oid in bad if oid not in damage.reached]
    if bad and not fixed and not dropped:
        return None  # nothing better to write: the damage stays, and is reported
    kept = 0
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


def _from_worktrees(core: Core, wanted: Wanted, affected: list[dict[str, str]],
                    ingest: Ingest) -> dict[str, str]:
    """Intact copies of damaged or missing files that a dataset's working directory
    still holds at the path a version gives them (each hashed as it is copied: a file
    that differs is simply not used): oid → "the working directory"."""
    got: dict[str, str] = {}
    for row in affected:
        oid = row["object"]
        if oid in got or wanted.get(oid, (None,))[0] != KIND_BLOB or row["path"].endswith("/"):
            continue
        version = core.index.version(row["version"].rpartition(":")[2])
        ds = core.index.dataset_by("id", version.dataset) if version else None
        if ds is None or ds.path is None:
            continue
        src = core.dataset_root(ds) / row["path"]
        size = wanted[oid][1]
        try:
            if size is not None and size < PACK_THRESHOLD:
                data = _read_regular(src, PACK_THRESHOLD)
                if data is None or hash_bytes(data) != oid:
                    continue
                ingest.add_new(oid, KIND_BLOB, data)
            else:
                ingest.add_large_file(src, expect=oid)
        except (OSError, DsvError):
            continue  # not there, not a regular file, or not the same bytes
        got[oid] = "the working directory"
    return got


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes (never a link's target, never
    blocking on a FIFO), else None."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return os.pread(fd, limit + 1, 0)
    finally:
        os.close(fd)


def _obtain(core: Core, wanted: Wanted, ingest: Ingest) -> dict[str, str]:
    """Good copies of `wanted` into `ingest`, from each origin in turn: oid → the origin
    that had it. The children of a tree brought back that are not here are looked for
    too (the check could not see below a damaged tree)."""
    origins = sorted((s for s in core.remote_specs() if s.kind == "origin"),
                     key=lambda s: not s.is_default)
    got: dict[str, str] = {}
    if not wanted:
        return got
    if not origins:
        core.reporter.notice("warning: no remote is configured: nothing can be repaired "
                             "(`dsv remote add` one that holds these versions)")
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
                    below.update(_absent_children(core, oid, data, got))
            todo.update((oid, w) for oid, w in below.items() if oid not in got)
            if not below:
                break
        if not todo:
            break
    return got


def _absent_children(core: Core, oid: str, data: bytes, got: dict[str, str]) -> Wanted:
    """What a tree brought back names that this store lacks."""
    try:
        rows = tree.decode_tree(data, oid)
    except DsvError:
        return {}
    out: Wanted = {}
    for _name, kind, _mode, size, child in rows:
        if child not in got and not core.objects.has(child):
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
