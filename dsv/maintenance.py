"""Store maintenance: gc, verify, and rebuilding the index from the objects.

Owns deciding what is garbage (no version reaches it; kept while another writer runs
when an import may still need it), repacking, checking every object and version, and
recreating `index.db` from packs and version records. Must never change what any
version holds.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import inputs, refs, state, tree
from .core import STORE_FORMAT, Core, check_format, find_store, write_config
from .errors import DsvError, InvalidInput
from .faults import crashpoint
from .hashing import is_hash
from .index import Index, Row, salvage
from .lock import StoreLock
from .model import COMMITTED, DRAFT, Dataset, Version
from .reports import GcReport, PruneReport, RebuildReport
from .objects import KIND_TREE, KIND_VERSION, Ingest, ObjectStore
from .paths import STORE_DIR as DSV_DIR
from .paths import is_dataset_dir
from .records import Record, is_id, parse_record
from .remotes.base import check_outside_stores, parse_duration, parse_size
from .remotes.cache import ClusterCache
from .reporting import Reporter


def _reachable(core: Core) -> tuple[set[str], set[str]]:
    """Every object some version (draft or committed) needs, records included (of a
    version fetched without its trees, only its record: its trees are on the remote);
    and the ids of the chunked files among their files (no objects: names of contents,
    which stat-cache rows and link-checkout copies go by)."""
    live: set[str] = set()
    chunked: set[str] = set()
    lazy = core.index.unfetched_roots()
    for v in core.index.all_versions():
        if v.record:
            live.add(v.record)
        if v.tree in live or v.tree in lazy:
            continue
        for oid, node in tree.distinct_trees(v.tree, core.read_tree, trusted=True):
            if oid in live:
                continue
            live.add(oid)
            live.update(r[4] for r in node.rows if r[1] != tree.DIR and not r[5])
            chunked.update(r[4] for r in node.rows if r[5])
            if node.chunks is not None:
                live.update(c for c, _n in node.chunks.chunks)
    return live, chunked


def gc(core: Core, dry_run: bool = False,
       inputs_older_than: str | float | None = None) -> GcReport:
    """Delete objects no version needs; rewrite packs that hold any such object; remove
    `dsv run` input trees no job has used for `inputs_older_than` (a duration such as
    "7d", or seconds; default inputs.INPUTS_KEEP). Trees go first: a tree holds links to
    objects, which free their space only once the tree is gone."""
    unused_for = inputs.INPUTS_KEEP if inputs_older_than is None else (
        parse_duration(inputs_older_than) if isinstance(inputs_older_than, str)
        else float(inputs_older_than))
    report = GcReport(dry_run=dry_run)
    with core.locked("gc"):
        report.removed_inputs, report.freed_bytes = inputs.remove_unused_inputs(
            core, unused_for, dry_run)
        live, chunked = _reachable(core)
        if core.writers_alive():
            # An import between its batches holds objects the index names (`imported`)
            # that no version reaches yet: they stay while any other writer runs.
            pending = core.index.imported_oids() - live
            for listed in core.index.imported_chunk_lists() & pending:
                try:
                    node = tree.decode_node(core.read_tree(listed), listed, trusted=True)
                except DsvError:
                    continue  # (a killed import's: its chunks are unreferenced)
                if node.chunks is not None:
                    pending.update(c for c, _n in node.chunks.chunks)
            report.kept_for_writers = len(pending)
            live |= pending
        if not dry_run:
            # First forget cache rows naming doomed objects: a commit after a gc killed
            # half-way must re-hash those files, never trust a row whose object is gone.
            with core.index.transaction():
                core.index.forget_unstored(live, chunked)
        packs = core.index.packs()
        # Packs on disk the index never learned of are leftovers of killed writers.
        for pack_id in list(core.objects.iter_pack_ids()):
            if pack_id not in packs:
                report.removed_packs += 1
                report.freed_bytes += core.objects.pack_path(pack_id).stat().st_size
                if not dry_run:
                    core.objects.delete_pack(pack_id)
        # One pass over the object rows finds the packs holding anything dead, and how
        # many rows name each; only those packs are read (by their own tables: the
        # index has no index by pack).
        dying: set[str] = set()
        named: Counter[str] = Counter()
        for oid, pack_id, _kind in core.index.packed_oids():
            named[pack_id] += 1
            if oid not in live:
                dying.add(pack_id)
        for pack_id in packs:
            if pack_id not in dying:
                continue
            entries = _pack_rows(core, pack_id, named[pack_id])
            keep = [e for e in entries if e[0] in live]
            if len(keep) == len(entries):
                continue
            # (lengths come from index rows: a damaged one may claim more than the pack
            # holds, and no pack frees more than its file's size)
            dead_bytes = sum(e[2] for e in entries if e[0] not in live)
            report.removed_objects += len(entries) - len(keep)
            report.freed_bytes += min(dead_bytes, _file_size(core.objects.pack_path(pack_id)))
            if dry_run:
                report.removed_packs += 1
                continue
            with Ingest(core.objects) as ingest:
                for oid, _off, _len, kind in keep:
                    ingest.add_new(oid, kind, core.objects.read(oid))
                report.repacked_packs += bool(keep)
                core.commit_objects(ingest, crash="gc:repacked",
                                    retire={pack_id: [e[0] for e in entries]})
            crashpoint("gc:index-updated")
            core.objects.delete_pack(pack_id)
            report.removed_packs += 1
        for oid in list(core.objects.iter_link_sources()):
            if oid not in live and oid not in chunked and not dry_run:
                core.objects.delete_link_source(oid)
        for oid in list(core.objects.iter_loose()):
            if oid not in live:
                path = core.objects.loose_path(oid)
                report.removed_objects += 1
                report.freed_bytes += path.stat().st_size
                if not dry_run:
                    core.objects.delete_loose(oid)
        if not dry_run:
            core.index.checkpoint()
    return report


def _file_size(path: Path) -> int:
    """The size of the file at `path`; 0 when there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _pack_rows(core: Core, pack_id: str, named: int | None = None
               ) -> list[tuple[str, int, int, int]]:
    """The index's rows placing objects in a pack, (oid, offset, length, kind) in pack
    order: looked up by the oids the pack's own table lists, or by a pass over every row
    where that table cannot be read (the pack damaged or gone) or does not list every
    row naming the pack (`named` of them: a damaged index, whose rows would otherwise
    outlive the pack gc retires)."""
    try:
        listed = [e.oid for e in core.objects.read_pack_entries(pack_id)]
    except (DsvError, OSError):
        return core.index.pack_objects(pack_id)
    rows = core.index.pack_rows_among(pack_id, listed)
    if named is not None and len(rows) != named:
        return core.index.pack_objects(pack_id)
    return rows


def rebuild_index(path: str | os.PathLike[str] = ".", reporter: Reporter | None = None,
                  exact: bool = False) -> RebuildReport:
    """Recreate `index.db` from the packs and version records (objects are the truth).

    The old database is kept beside it as `index.db.broken-<time>`. What no object
    records (datasets and their directories, `latest`, heads, tags, remotes, drafts) comes
    from `.dsv/state.json` (dsv.state), else from the old database as far as it can still
    be read, else datasets are named from their newest version record. Only the stat
    cache is not recovered.
    """
    root = find_store(Path(path), exact)
    dsv_dir = root / DSV_DIR
    lock = StoreLock(dsv_dir / "lock")
    lock.acquire("index rebuild", on_wait=(reporter or Reporter()).notice)
    try:
        # (the index made below has this dsv's schema: an older dsv must refuse it)
        if check_format(dsv_dir) < STORE_FORMAT:
            write_config(dsv_dir, STORE_FORMAT)
        saved = state.load(dsv_dir)
        old_datasets, old_tags, old_remotes = salvage(dsv_dir / "index.db")
        if saved is not None:
            old_datasets, old_tags, old_remotes = _from_state(saved)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            old = dsv_dir / f"index.db{suffix}"
            if old.exists():
                old.rename(dsv_dir / f"index.db.broken-{stamp}{suffix}")
        index = Index(dsv_dir / "index.db")
        index.create_schema()
        objects = ObjectStore(dsv_dir / "objects", index, dsv_dir / "tmp")
        records: list[Record] = []
        skipped: list[str] = []
        with index.transaction():
            for pack_id in objects.iter_pack_ids():
                try:
                    entries = objects.read_pack_entries(pack_id)
                except DsvError as exc:
                    skipped.append(f"pack {pack_id[:12]}: {exc.message}")
                    continue
                size = objects.pack_path(pack_id).stat().st_size
                index.add_pack(pack_id, size, entries)
                for e in entries:
                    if e.kind == KIND_VERSION:
                        try:
                            records.append(parse_record(objects.read(e.oid), e.oid))
                        except DsvError:
                            skipped.append(f"version record {e.oid[:12]} is unreadable")
            _restore_versions(index, records, old_datasets, old_tags)
            if saved is not None:
                _restore_state(index, objects, saved, old_datasets)
                _restore_unfetched(index, saved)
            for row in old_remotes:  # remote settings (never secrets)
                index.add_remote(row)
            _mark_incomplete(index, objects, old_remotes)
            state.save(index, dsv_dir)
        objects.close()
        index.checkpoint()
        index.close()
        return RebuildReport(packs=len(list(objects.iter_pack_ids())),
                             versions=len(records),
                             datasets=len({r.version.dataset for r in records}),
                             skipped=skipped, from_state=saved is not None)
    finally:
        lock.release()


def _mark_incomplete(index: Index, objects: ObjectStore, remotes: list[dict[str, Any]]) -> None:
    """Versions whose blobs are not all here were fetched from a remote: say so again, so
    that verify accepts them and checkout downloads what they lack."""
    origins = [r["name"] for r in remotes if r.get("kind") == "origin"]
    if not origins:
        return
    default = next((r["name"] for r in remotes if r.get("is_default")), origins[0])
    packed = {oid for oid, _pack, _kind in index.packed_oids()}
    loose = set(objects.iter_loose())
    read = lambda oid: objects.read(oid)  # noqa: E731 - trees were just indexed
    for v in index.all_versions():
        try:
            complete = all(oid in packed or oid in loose
                           for kind, oid in tree.subtree_ids(v.tree, read) if kind != tree.DIR)
        except DsvError:
            complete = False
        if not complete:
            index.add_promised(v.id, default)


_REMOTE_COLUMNS: dict[str, type | tuple[type, ...]] = {
    "name": str, "url": str, "kind": str, "endpoint_url": str, "profile": str,
    "ttl": (int, float), "max_size": int, "write_through": int, "is_default": int,
    "created": (int, float)}


def _from_state(saved: dict[str, Any]) -> tuple[dict[str, Row], list[Row], list[dict[str, Any]]]:
    """The rows `salvage` would give, from `.dsv/state.json`: each value checked, since the
    file is as open to tampering as the index (a bad dataset path or remote column is
    dropped, never used)."""
    datasets: dict[str, Row] = {}
    for d in saved["datasets"]:
        ds_id, name, path = d.get("id"), d.get("name"), d.get("path")
        if not isinstance(ds_id, str) or not is_id(ds_id) or \
                not isinstance(name, str):
            continue
        if path is not None and (not isinstance(path, str) or not is_dataset_dir(path)):
            path = None
        description = d.get("description") if isinstance(d.get("description"), str) else None
        created = d.get("created") if isinstance(d.get("created"), (int, float)) else time.time()
        datasets[ds_id] = (ds_id, name, path, description, created)
    tags = [tuple(t) for t in saved["tags"]]
    remotes = []
    for row in saved["remotes"]:
        clean = {k: v for k, v in row.items() if k in _REMOTE_COLUMNS and
                 (v is None or isinstance(v, _REMOTE_COLUMNS[k]))}
        name = clean.get("name")
        if isinstance(name, str) and refs.is_valid_name(name) and \
                isinstance(clean.get("url"), str) and clean.get("kind") in ("origin", "cache"):
            remotes.append(clean)
    return datasets, tags, remotes


def _restore_state(index: Index, objects: ObjectStore, saved: dict[str, Any],
                   datasets: dict[str, Row]) -> None:
    """After the versions: datasets that have none yet, each dataset's `latest` and head
    as the state file has them, and drafts whose tree is still stored."""
    for ds_id, name, path, description, created in datasets.values():
        if index.dataset_by("id", ds_id) is None and refs.is_valid_name(str(name)) and \
                index.dataset_by("name", name) is None:
            index.insert_dataset(Dataset(id=ds_id, name=name, path=path,
                                         description=description, created=created))
    for d in saved["drafts"]:
        vid, ds_id, tree_id = d.get("id"), d.get("dataset"), d.get("tree")
        if not all(isinstance(x, str) for x in (vid, ds_id, tree_id)) or \
                not is_id(vid) or not is_hash(tree_id) or \
                index.version(vid) is not None or index.dataset_by("id", ds_id) is None or \
                not objects.has(tree_id):
            continue
        parents = [p for p in d.get("parents") or [] if isinstance(p, str) and
                   (parent := index.version(p)) is not None and parent.dataset == ds_id]
        index.insert_version(Version(
            id=vid, dataset=ds_id, state=DRAFT, tree=tree_id, parents=parents,
            message=d.get("message") if isinstance(d.get("message"), str) else None,
            author=d.get("author") if isinstance(d.get("author"), str) else None,
            created=d.get("created") if isinstance(d.get("created"), (int, float)) else 0.0,
            lineage=d.get("lineage") if isinstance(d.get("lineage"), dict) else None,
            size=d.get("size") if isinstance(d.get("size"), int) else 0,
            files=d.get("files") if isinstance(d.get("files"), int) else 0))
    ref_store = refs.RefStore(index)
    for d in saved["datasets"]:
        ds = index.dataset_by("id", d.get("id")) if isinstance(d.get("id"), str) else None
        if ds is None:
            continue
        latest = index.version(d["latest"]) if isinstance(d.get("latest"), str) else None
        if latest is not None and latest.dataset == ds.id and latest.state == COMMITTED:
            ref_store.set_latest(ds.id, latest.id, force=True)
        head = index.version(d["head"]) if isinstance(d.get("head"), str) else None
        if head is not None and head.dataset == ds.id and ds.path is not None:
            index.update_dataset(ds.id, head=head.id)


def _restore_unfetched(index: Index, saved: dict[str, Any]) -> None:
    """The versions the state file says were fetched without their trees, whose root
    tree is still not stored as a tree (a root lost otherwise is damage, for verify to
    report: it is never guessed to be on a remote)."""
    for vid, remote in saved.get("unfetched", []):
        v = index.version(vid) if is_id(vid) else None
        if v is not None and refs.is_valid_name(remote) and \
                not index.packed_of_kind([v.tree], KIND_TREE):
            index.add_unfetched(vid, remote)


def _restore_versions(index: Index, records: list[Record],
                      old_datasets: dict[str, Row], old_tags: list[Row]) -> None:
    """Insert datasets and committed versions described by version records."""
    records.sort(key=lambda r: r.version.committed or 0.0)
    ref_store = refs.RefStore(index)
    names: set[str] = set()
    datasets: dict[str, Dataset] = {}
    for record in records:
        ds_id = record.version.dataset
        if ds_id in datasets:
            continue
        old = old_datasets.get(ds_id)
        newest = [r.dataset_name for r in records if r.version.dataset == ds_id][-1]
        name = old[1] if old else (newest or record.dataset_name or ds_id)
        if name in names or not refs.is_valid_name(str(name)):
            name = f"{name}-{ds_id}" if refs.is_valid_name(f"{name}-{ds_id}") else ds_id
        names.add(name)
        datasets[ds_id] = Dataset(id=ds_id, name=name, path=old[2] if old else None,
                                  description=old[3] if old else None,
                                  created=old[4] if old else record.version.created)
        index.insert_dataset(datasets[ds_id])
    by_oid = {r.version.record: r.version for r in records}
    for record in records:
        v = record.version
        if index.version(v.id) is not None:
            continue
        # A parent counts only if its record is here, has that id and the same dataset:
        # the hash chain then rules out cycles, and no id can join another history.
        v.parents = [p.id for p in record.parents if p.record in by_oid
                     and by_oid[p.record].id == p.id and by_oid[p.record].dataset == v.dataset]
        index.insert_version(v)
        ref_store.set_latest(v.dataset, v.id, force=True)  # recreated in commit order
        index.update_dataset(v.dataset, head=v.id if datasets[v.dataset].path else None)
    for ds_id, name, vid, _created in old_tags:
        found = index.version(vid)
        if ds_id in datasets and found is not None and found.dataset == ds_id and \
                refs.is_valid_name(name) and name != refs.LATEST:
            ref_store.set_tag(ds_id, name, vid)


def prune_cache(core: Core, name: str | None = None, older_than: str | None = None,
                max_size: str | None = None) -> PruneReport:
    """Evict cluster-cache entries unused for longer than the TTL, then the least
    recently used beyond the size budget (flags override the remote's settings)."""
    spec = core.remote_spec(name, kind="cache")
    ttl = parse_duration(older_than) if older_than else spec.ttl
    budget = parse_size(max_size) if max_size else spec.max_size
    if ttl is None and budget is None:
        raise InvalidInput(f"cache {spec.name} has no --ttl or --max-size",
                           hint="pass --older-than and/or --max-size")
    check_outside_stores(spec.url)
    return ClusterCache(spec.url).prune(ttl, budget, notice=core.reporter.notice)
