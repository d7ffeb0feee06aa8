"""Versions: commit a working directory, drafts and their files, tags, history.

Owns making versions: snapshotting a dataset's directory into a committed version,
drafts (create, add and remove files, commit), versions made from a directory or from
stored objects (imports, jobs), messages, deletion, tags and the log. Every version is
sealed through `records.encode_record` and made visible by `Core.commit_objects`. Must
never place files in a working directory (that is checkout's job).
"""

from __future__ import annotations

import functools
import heapq
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import datasets, monitor, refs, tree, worktree
from .core import Core
from .errors import (
    HistoryConflict,
    DatasetNotFound,
    InvalidInput,
    NothingToCommit,
    RefError,
    TagExists,
    VersionImmutable,
    VersionInUse,
)
from .hashing import hash_bytes
from .model import COMMITTED, DRAFT, Dataset, Entry, Manifest, StatRow, TagRow, Version
from .objects import KIND_VERSION, RACY_NS, Ingest
from .paths import STORE_DIR as DSV_DIR
from .paths import ancestors, check_links, check_relpath, normalize_user_path
from .records import encode_record
from .reporting import plural


def default_author() -> str:
    """`DSV_AUTHOR`, else `user@host`."""
    env = os.environ.get("DSV_AUTHOR")
    if env:
        return env
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def log(core: Core, key: str | None = None, cwd: str | os.PathLike[str] = ".",
        include_drafts: bool = False) -> list[Version]:
    """A dataset's committed versions (and drafts, with `include_drafts`), newest first,
    each with its tags."""
    ds = core.pick_dataset(key, cwd)
    versions = core.index.versions(ds.id, None if include_drafts else "committed")
    tags: dict[str, list[str]] = {}
    for _ds, name, vid, _created in core.index.tags(ds.id):
        tags.setdefault(vid, []).append(name)
    for v in versions:
        v.tags = tags.get(v.id, [])
    return versions


def graph(versions: list[Version]) -> list[tuple[str, Version | None]]:
    r"""`versions` drawn as `git log --graph` draws commits: (prefix, version) rows, each
    child before its parents (newest first among those ready), with connecting rows
    (version None) where a line splits off at a merge or joins again where it began.

    A lane per line of history: `*` is the version of the row, `|` a line passing by,
    `\` a merge's other parent starting its lane, `/` a lane ending in the one it
    branched from.
    """
    by_id = {v.id: v for v in versions}
    waiting = dict.fromkeys(by_id, 0)   # children not yet drawn, per version
    for v in versions:
        for p in v.parents:
            if p in waiting:
                waiting[p] += 1
    ready = [(-(v.committed or v.created), v.id) for v in versions if waiting[v.id] == 0]
    heapq.heapify(ready)
    rows: list[tuple[str, Version | None]] = []
    lanes: list[str] = []               # the version each lane leads to next
    while ready:
        v = by_id[heapq.heappop(ready)[1]]
        for p in v.parents:
            if p in waiting:
                waiting[p] -= 1
                if waiting[p] == 0:
                    heapq.heappush(ready, (-(by_id[p].committed or by_id[p].created), p))
        if v.id not in lanes:
            lanes.append(v.id)
        col = lanes.index(v.id)
        joining = [i for i, x in enumerate(lanes) if x == v.id and i != col]
        if joining:  # lines that branched off here end: they join before its row
            cells = [" "] * (2 * len(lanes))
            for i in range(len(lanes)):
                if i in joining or any(j < i for j in joining):
                    cells[2 * i - 1] = "/"
                else:
                    cells[2 * i] = "|"
            rows.append(("".join(cells).rstrip(), None))
            lanes = [x for i, x in enumerate(lanes) if i not in joining]
        rows.append((" ".join("*" if i == col else "|" for i in range(len(lanes))), v))
        parents = [p for p in v.parents if p in by_id]
        if not parents:
            lanes.pop(col)
            continue
        lanes[col] = parents[0]
        for p in parents[1:]:
            if p in lanes:  # the other parent's lane is already drawn: link to it
                k = lanes.index(p)
                cells = [" "] * (2 * len(lanes))
                for i in range(len(lanes)):
                    cells[2 * i] = "|"
                lo, hi = sorted((k, col))
                for pos in range(2 * lo + 1, 2 * hi, 2):
                    cells[pos] = "_"
                cells[2 * col - 1 if k < col else 2 * col + 1] = "/" if k < col else "\\"
                rows.append(("".join(cells).rstrip(), None))
                continue
            cells = [" "] * (2 * len(lanes))
            for i in range(len(lanes)):
                if i <= col:
                    cells[2 * i] = "|"
                if i >= col:
                    cells[2 * i + 1] = "\\"
            rows.append(("".join(cells).rstrip(), None))
            lanes.insert(col + 1, p)
    return rows


def versions(core: Core, key: str, state: str | None = None) -> list[Version]:
    """A dataset's versions, newest first; only drafts or committed ones with `state`."""
    ds = core.dataset(key)
    return core.index.versions(ds.id, state)


def _record(core: Core, v: Version) -> bytes:
    parents = []
    for pid in v.parents:
        parent = core.index.version(pid)
        parents.append((pid, parent.record if parent else None))
    ds = core.index.dataset_by("id", v.dataset)
    return encode_record(v, parents, ds.name if ds else None)


def _write_committed(core: Core, ingest: Ingest, v: Version, new: bool,
                     stat_rows: tuple[str, list[tuple[str, StatRow]] | None, set[str]]
                     | None = None,
                     head: bool = False, cache_tree: str | None = None,
                     runs: list[str] | None = None, force: bool = False,
                     promised_by: str | None = None) -> Version:
    """Seal `v` (state committed): write its record, then make it visible in one transaction
    (with the stat-cache rows, and the digests of the runs of the walk they vouch for). A
    new version that names blobs of a promised one is promised by the same remote
    (`promised_by`; see _insert)."""
    v.state = COMMITTED
    v.committed = time.time()
    record = _record(core, v)
    v.record = hash_bytes(record)
    ingest.add(v.record, KIND_VERSION, record)

    def make_visible() -> None:
        if new:
            _insert(core, v, promised_by)
        else:
            current = core.index.version(v.id)
            if current is None or current.state != DRAFT:
                raise VersionImmutable(f"version {v.id} was committed meanwhile")
            core.index.update_version(v.id, state=v.state, tree=v.tree, message=v.message,
                                      committed=v.committed, record=v.record, size=v.size,
                                      files=v.files, lineage=v.lineage, parents=v.parents)
        core.refs.set_latest(v.dataset, v.id, force=force)
        if head:
            core.index.update_dataset(v.dataset, head=v.id, cache_tree=cache_tree)
        if stat_rows is not None:
            ds_id, rows, gone = stat_rows
            core.index.drop_stat_rows(ds_id, gone)
            if rows is None:   # staged in the index as the commit went
                core.index.put_staged_stat_rows(ds_id)
            else:
                core.index.put_stat_rows(ds_id, rows)
            if runs:
                core.index.put_clean_scan(ds_id, v.tree, runs, v.files)

    core.commit_objects(ingest, make_visible, crash="commit:objects-written")
    core.index.checkpoint()
    return v


def write_committed(core: Core, ingest: Ingest, v: Version) -> Version:
    """Record a new committed version whose objects `ingest` holds (a merge's, for one):
    its record, then the version and `latest` in one transaction."""
    return _write_committed(core, ingest, v, new=True)


def commit(core: Core, message: str, key: str | None = None, cwd: str | os.PathLike[str] = ".",
           author: str | None = None, allow_empty: bool = False,
           lineage: dict[str, Any] | None = None, force: bool = False,
           paths: list[str] | None = None) -> Version:
    """Snapshot a dataset's working directory as a new committed version (HistoryConflict
    when the directory is behind `latest`, unless `force`). With `paths` (relative to
    `cwd` inside the directory, else to its root; as `git commit PATH…`), only what lies
    at or under them is looked at: the new version is the head with those paths as the
    directory holds them now, and the rest of the directory is not even listed."""
    if not message or not message.strip():
        raise InvalidInput("a commit needs a message", hint="pass -m MESSAGE")
    with core.locked("commit"):
        ds = core.pick_dataset(key, cwd)
        root = core.dataset_root(ds)
        if not root.is_dir():
            raise InvalidInput(f"the directory of dataset {ds.name!r} does not exist: {root}",
                               hint=f"fill it with `dsv checkout {ds.name}:latest`, or bind "
                                    f"another with `dsv datasets update {ds.name} --path DIR`")
        if not force:
            _check_not_behind(core, ds)
        excluded = core.excluded(ds)
        head = core.head(ds)
        chosen = _chosen_paths(ds, head, root, paths, cwd) if paths else None
        # (asked before any file is looked at: a change made meanwhile comes after it)
        watching = monitor.context(root.resolve(), excluded) if chosen is None and \
            monitor.is_running(core.dsv_dir, ds.id) else None
        asked = monitor.changes(core.dsv_dir, ds.id, monitor.saved_token(
            core.dsv_dir, ds.id, watching), root.resolve()) if watching else None
        watched = monitor.to_look_at(asked) \
            if head is not None and ds.cache_tree == head.tree else None
        with Ingest(core.objects) as ingest:
            if chosen and head is not None:
                made = _snapshot_paths(core, ds, head, root, excluded, ingest, chosen)
            elif watched is not None and head is not None:
                made = _snapshot_paths(core, ds, head, root, excluded, ingest, watched,
                                       named=False)
            else:
                made = _snapshot_changes(core, ds, head, root, excluded, ingest)
            if head is not None and not allow_empty and (
                    head.tree == made.tree or
                    tree.same_content(head.tree, made.tree, core.read_tree)):
                if asked is not None and watching and ds.cache_tree == head.tree:
                    # (every file holds what the head names, as of the token)
                    monitor.save_token(core.dsv_dir, ds.id, asked.token, watching)
                raise NothingToCommit(f"nothing to commit: {ds.name} matches {head.id}",
                                      hint="use --allow-empty to record it anyway")
            now = time.time()
            v = Version(id=core.new_version_id(), dataset=ds.id, state=COMMITTED,
                        tree=made.tree, parents=[head.id] if head else [], message=message,
                        author=author or default_author(), created=now, committed=now,
                        lineage=lineage, size=made.size, files=made.files)
            # The next status reads no stat-cache row of a run the cache vouches for
            # now (see worktree.ScanDigest).
            v = _write_committed(core, ingest, v, new=True, head=True,
                                 stat_rows=(ds.id, None if made.staged else
                                            made.snap.stat_rows, made.gone),
                                 cache_tree=made.tree if made.complete else None,
                                 runs=made.runs,
                                 force=force,
                                 # (the head's other files may be only on a remote)
                                 promised_by=core.index.promised_by(head.id)
                                 if chosen and head is not None else None)
        if asked is not None and watching:  # (the directory holds the new head as of it)
            monitor.save_token(core.dsv_dir, ds.id, asked.token if made.complete else None,
                               watching)
        return v


def _chosen_paths(ds: Dataset, head: Version | None, root: Path, paths: list[str],
                  cwd: str | os.PathLike[str]) -> list[str] | None:
    """The root-relative paths a `commit PATH…` names (None: the whole directory)."""
    if "" in paths:
        # (an unset shell variable, most likely: committing everything would surprise)
        raise InvalidInput("an empty path names nothing to commit",
                           hint="name `.` to commit the whole directory")
    here = Path(cwd).resolve()
    inside = here == root.resolve() or root.resolve() in here.parents
    chosen = sorted({worktree.resolve_user_path(root, here, p) if inside
                     else normalize_user_path(p) for p in paths})
    if "" in chosen:
        return None
    if head is None:
        raise InvalidInput(f"the first commit of {ds.name} takes its whole directory",
                           hint="commit without paths")
    for rel in chosen:
        check_relpath(rel)
    # (a path under another chosen one adds nothing)
    return [p for i, p in enumerate(chosen)
            if not any(p.startswith(q + "/") for q in chosen[:i])]


def _snapshot_paths(core: Core, ds: Dataset, head: Version, root: Path, excluded: list[str],
                    ingest: Ingest, chosen: list[str], named: bool = True) -> _Made:
    """The head with what lies at or under each of `chosen` replaced by what the directory
    holds there now (worktree.scan_paths: nothing else is listed), hashing only what the
    stat cache cannot vouch for. Memory and time grow with the chosen paths, not with the
    dataset: one lstat per directory above each path, then the files under it. With
    `named` (the user named them), a path that matches nothing is an error; the paths a
    monitor reports changed may have come and gone since."""
    stores: list[str] = []
    links: list[str] = []
    skipped: list[str] = []
    files = worktree.scan_paths(root, chosen, excluded, skipped, stores, links)
    _tell_skipped(core, skipped)
    before = tree.files_under(head.tree, core.read_tree, chosen)
    for rel in chosen if named else ():
        if rel not in before and not any(p.startswith(rel + "/") for p in before) and \
                not any(p == rel or p.startswith(rel + "/") for p in files):
            raise InvalidInput(f"{rel} matches no file in {ds.name}'s directory or in its "
                               f"version {head.id}",
                               hint="`dsv status` shows what changed")
    other_links: dict[str, str] = {}
    if links:  # (new links are checked through every link of the version they join,
        # the ones kept as the head holds them: the directory may hold others there now)
        other_links = tree.validate_links(
            {p: e for p, e in tree.iter_files(head.tree, core.read_tree)
             if e.kind == tree.LINK and p not in before}, core.objects.read)

    def stored_as(path: str, oid: str) -> str | None:
        entry = before.get(path)
        return entry.chunks if entry is not None and entry.kind == tree.FILE and \
            entry.oid == oid else None

    total = sum(f[0] for f in files.values())
    with core.reporter.task("committing", len(files), total) as advance:
        snap = worktree.snapshot(root, files, core.index.stat_rows_at(ds.id, files), ingest,
                                 advance, check=False, chunks_of=stored_as)
    if snap.links:
        check_links(other_links | snap.links, excluded + stores)
    gone = {p for p in before if p not in files}
    delta: dict[str, Entry | None] = dict.fromkeys(gone)
    delta.update(snap.manifest)
    root_tree, size = tree.update_tree(head.tree, head.size, delta, core.read_tree,
                                       core.tree_writer(ingest))
    # The stat cache still names the new tree exactly if it named the head's and every
    # file hashed now has its row.
    complete = ds.cache_tree == head.tree and len(snap.stat_rows) == snap.hashed_files
    return _Made(snap, root_tree, size, head.files + len(files) - len(before), gone, [],
                 staged=False, complete=complete)


@dataclass
class _Made:
    """What a commit's snapshot made: the tree of the directory and what it took."""

    snap: worktree.Snapshot     # what was hashed (its stat-cache rows, unless staged)
    tree: str
    size: int
    files: int
    gone: set[str]              # cached paths no longer there
    runs: list[str]             # digests of the walk's runs the cache vouches for
    staged: bool = True         # the new stat-cache rows are in the index's stage
    complete: bool = False      # every hashed file has its row


def _snapshot_changes(core: Core, ds: Dataset, head: Version | None, root: Path,
                      excluded: list[str], ingest: Ingest) -> _Made:
    """Walk the dataset's directory, hash and store what the stat cache cannot vouch
    for, and make the tree of what is there.

    When the cache describes the head's tree exactly (`cache_tree`: every path of the
    head has a row naming its content, and no other path has one) and holds as many rows
    as the head has files, a file it vouches for is the head's entry unchanged, so the
    new tree is the head's with only the other files applied (tree.update_tree): the walk
    is merged with the cache as both stream, and what a commit costs beyond one lstat
    and one cache row per file grows with what changed, not with the dataset. Otherwise
    every file goes into a manifest and the tree is built whole; both give the same tree
    for the same files (for a head tree that build_tree wrote:
    tests/test_incremental_tree.py).
    """
    stores: list[str] = []
    links: list[str] = []
    skipped: list[str] = []

    def walk() -> Iterator[worktree.Run]:
        del stores[:], links[:], skipped[:]
        return worktree.walk(root, skipped, excluded, stores=stores, ignore_files=True,
                             links=links)

    if head is not None and ds.cache_tree == head.tree:
        with core.reporter.task("scanning") as advance:
            seen = worktree.stat_changes(_counted(walk(), advance),
                                         functools.partial(core.index.stat_keys_between,
                                                           ds.id),
                                         *core.index.clean_scan(ds.id, head.tree))
        if seen.rows == head.files:
            changed = seen.unvouched
            total = sum(f[0] for f in changed.values())
            with core.reporter.task("committing", len(changed), total) as advance:
                snap = worktree.snapshot(root, changed, {}, ingest, advance,
                                         fences=excluded + stores,
                                         other_links=[p for p in links if p not in changed])
            delta: dict[str, Entry | None] = dict.fromkeys(seen.gone)
            delta.update(snap.manifest)
            root_tree, size = tree.update_tree(head.tree, head.size, delta, core.read_tree,
                                               core.tree_writer(ingest))
            complete = len(snap.stat_rows) == snap.hashed_files
            # The runs the cache vouched for stand in the new tree as they were; the
            # others too when every file hashed now has a row that is not racily clean.
            every = [r for r in seen.runs if r]
            vouched = complete and len(every) == len(seen.runs) and \
                all(row[1] < row[5] - RACY_NS for _p, row in snap.stat_rows)
            _tell_skipped(core, skipped)
            return _Made(snap, root_tree, size, seen.files, set(seen.gone),
                         every if vouched else seen.kept, staged=False, complete=complete)
    made = _snapshot_whole(core, ds, head, root, walk(), excluded, stores, ingest)
    _tell_skipped(core, skipped)
    return made


def _tell_skipped(core: Core, skipped: list[str]) -> None:
    """Say what a commit left out for not being a regular file or a symlink (FIFOs,
    sockets, devices), as `status` lists them: never silently."""
    if skipped:
        shown = ", ".join(sorted(skipped)[:5]) + (" …" if len(skipped) > 5 else "")
        core.reporter.notice(f"left out {plural(len(skipped), 'entry', 'entries')}, each "
                             f"neither a regular file nor a symlink: {shown}")


COMMIT_CHUNK = 20_000
"""Files a commit without a usable stat cache hashes, and gives to its trees, at once."""


def _snapshot_whole(core: Core, ds: Dataset, head: Version | None, root: Path,
                    runs: Iterator[worktree.Run], excluded: list[str], stores: list[str],
                    ingest: Ingest) -> _Made:
    """Snapshot every file of a walk (the cache may still vouch for some), a chunk at a
    time: hash what the chunk's stat-cache rows do not vouch for, give its entries to a
    TreeBuilder in path order, stage its new rows in the index. Memory holds one chunk
    and the directories on the current path, never the dataset's manifest. The links
    are checked together at the end, fenced by `excluded` and the nested `stores` the
    walk met."""
    builder = tree.TreeBuilder(core.tree_writer(ingest))
    digest = worktree.ScanDigest()
    links: dict[str, str] = {}
    gone: set[str] = set()
    made = _Made(worktree.Snapshot({}, []), "", 0, 0, gone, [])
    staged = hashed = 0
    vouched = True
    core.index.stage_stat_rows((), first=True)
    after = ""

    def stored_as(path: str, oid: str) -> str | None:
        """How the head stores content `oid` at `path` (see worktree.snapshot)."""
        row = tree.find(head.tree, core.read_tree, path) if head is not None else None
        return row[5] if row is not None and row[1] == tree.FILE and row[4] == oid else None

    def take(chunk: dict[str, worktree.FileStat], upto: str | None) -> None:
        nonlocal after, staged, hashed, vouched
        cache = dict(core.index.stat_rows_between(ds.id, after, upto))
        gone.update(p for p in cache if p not in chunk)
        snap = worktree.snapshot(root, chunk, cache, ingest, advance, check=False,
                                 chunks_of=stored_as)
        for path in sorted(snap.manifest):
            builder.add(path, snap.manifest[path])
        links.update(snap.links)
        core.index.stage_stat_rows(snap.stat_rows)
        # The packs sealed so far join the store now (under the commit's lock, so no gc
        # sees them unrecorded): the ingest then forgets their ids, and memory does not
        # grow with the dataset. A killed commit leaves them unreferenced, for `gc`.
        core.commit_sealed(ingest)
        staged += len(snap.stat_rows)
        hashed += snap.hashed_files
        vouched = vouched and all(row[1] < row[5] - RACY_NS for _p, row in snap.stat_rows)
        made.files += len(chunk)
        if upto is not None:
            after = upto

    with core.reporter.task("committing") as advance:
        chunk: dict[str, worktree.FileStat] = {}
        for run in runs:
            made.runs.append(digest.add(run) or "")
            chunk.update(run)
            if len(chunk) >= COMMIT_CHUNK:
                take(chunk, run[-1][0])
                chunk = {}
        take(chunk, None)
    check_links(links, excluded + stores)
    made.tree, made.size = builder.finish()
    made.complete = staged == hashed
    if not (made.complete and vouched and all(made.runs)):
        made.runs = []   # (a racily clean row vouches for no run)
    return made


def _counted(runs: Iterator[worktree.Run], advance: worktree.Progress
             ) -> Iterator[worktree.Run]:
    for run in runs:
        advance(len(run), 0)
        yield run


def _check_not_behind(core: Core, ds: Dataset) -> None:
    """Refuse a commit whose new version would leave `latest` out of its history."""
    if ds.latest is None or ds.latest == ds.head:
        return
    latest = core.version(ds.latest)
    head = core.head(ds)
    if head is None:
        where, ways = ("is not checked out", f"check out latest first (`dsv checkout "
                       f"{ds.name}:latest`)")
    elif refs.is_ancestor(core.index, ds.latest, head):
        return  # the head descends from latest: committing moves latest forward
    else:
        ahead = refs.ahead_of(core.index, latest, head)
        where = (f"is at {head.id}, {plural(ahead, 'version')} behind latest {latest.id}"
                 if refs.is_ancestor(core.index, head.id, latest) else
                 f"is at {head.id}, which latest {latest.id} does not descend from")
        ways = (f"bring it to latest first (`dsv checkout {ds.name}:latest`, which refuses to "
                f"discard your changes: copy them aside, or check out with --force)")
    raise HistoryConflict(
        f"{ds.name}'s working directory {where}: a commit here would leave {latest.id} out "
        f"of latest's history",
        hint=f"{ways}; or commit with --force to make the new version latest anyway "
             f"({latest.id} stays in the store)")


def tag(core: Core, ref: str, name: str, force: bool = False,
        cwd: str | os.PathLike[str] = ".") -> Version:
    """Point tag `name` of the version's dataset at the committed version `ref` names
    (TagExists if it names another, unless `force`); returns that version."""
    refs.check_tag_name(name)
    with core.locked("tag"):
        version = core.resolve(ref, cwd)
        if version.is_draft:
            raise InvalidInput(f"{version.id} is a draft; only committed versions can be tagged",
                               hint=f"commit it first: `dsv versions commit {version.id}`")
        current = core.index.tag(version.dataset, name)
        if current is not None and current != version.id and not force:
            raise TagExists(f"tag {name!r} already points at {current}",
                            hint="pass --force to move it")
        with core.index.transaction():
            core.refs.set_tag(version.dataset, name, version.id)
        version.tags = core.index.tags_of(version.id)
        return version


def delete_tag(core: Core, spec: str, cwd: str | os.PathLike[str] = ".") -> str:
    """Remove `DATASET:NAME`; returns the version it pointed at."""
    ds_key, sep, name = spec.rpartition(":")
    with core.locked("tag -d"):
        ds = core.dataset(ds_key) if sep and ds_key else core.pick_dataset(None, cwd)
        if not sep:
            name = spec
        vid = core.index.tag(ds.id, name)
        if vid is None:
            raise RefError(f"dataset {ds.name!r} has no tag {name!r}")
        with core.index.transaction():
            core.refs.delete_tag(ds.id, name)
    for spec_ in core.remote_specs():
        if spec_.kind == "origin" and core.index.remote_ref(spec_.name, ds.id, f"tags/{name}"):
            core.reporter.notice(f"note: {ds.name}:{name} is still on {spec_.name}: "
                                 f"`dsv push {spec_.name} --delete {ds.name}:{name}` deletes "
                                 f"it there")
    return vid


def tags(core: Core, key: str | None = None) -> list[TagRow]:
    """The tags of one dataset, or of every dataset."""
    ds_id = core.dataset(key).id if key else None
    names = {d.id: d.name for d in core.index.datasets()}
    return [{"dataset": names.get(d, d), "tag": n, "version": v, "created": c}
            for d, n, v, c in core.index.tags(ds_id)]


def create_version(core: Core, key: str, message: str | None = None,
                   from_ref: str | None = None) -> Version:
    """A new draft of a dataset, starting from `from_ref` (default: its latest version)."""
    with core.locked("versions create"):
        ds = core.dataset(key)
        base: Version | None = None
        if from_ref:
            base = core.resolve(from_ref if ":" in from_ref else f"{ds.id}:{from_ref}")
            if base.dataset != ds.id:
                raise InvalidInput(f"{from_ref} is a version of another dataset")
            if base.is_draft:
                raise InvalidInput(f"{base.id} is a draft; a version can only start from a "
                                   "committed one", hint=f"commit it first: "
                                   f"`dsv versions commit {base.id}`")
        elif ds.latest:
            base = core.index.version(ds.latest)
        with Ingest(core.objects) as ingest:
            if base is not None:
                root_tree, size, files = base.tree, base.size, base.files
            else:
                root_tree, size = tree.build_tree({}, core.tree_writer(ingest))
                files = 0
            v = Version(id=core.new_version_id(), dataset=ds.id, state=DRAFT,
                        tree=root_tree, parents=[base.id] if base else [], message=message,
                        author=default_author(), created=time.time(), size=size,
                        files=files)
            promised_by = core.index.promised_by(base.id) if base is not None else None
            core.commit_objects(ingest, lambda: _insert(core, v, promised_by))
        return v


def _insert(core: Core, v: Version, promised_by: str | None) -> None:
    """Record new version `v`. One made from a version whose blobs are still only on a
    remote (a fetched version, or one pulled for some paths: promised) that keeps what
    that version holds (a draft of it, a `commit PATH` on it) is promised by the same
    remote too (`promised_by`), and stays so once committed: this store must never take
    it for a version it holds whole (a pull compares with such versions and skips what
    they share). Trees are found by their root, as for any version fetched without them
    (`Index.unfetched_roots`)."""
    core.index.insert_version(v)
    if promised_by is not None:
        core.index.add_promised(v.id, promised_by)


def _draft(core: Core, ref: str, cwd: str | os.PathLike[str] = ".") -> Version:
    v = core.resolve(ref, cwd)
    if not v.is_draft:
        ds = core.index.dataset_by("id", v.dataset)
        raise VersionImmutable(f"version {v.id} is committed and cannot change",
                               hint=f"create a draft from it: `dsv versions create "
                                    f"{ds.name if ds else v.dataset} --from {v.id}`")
    return v


class _DraftEdit:
    """Changes to a draft's files (`files put`, `files delete`), read against its tree:
    only the paths edited, the directories above them and what they displace are looked
    up, never the whole manifest, and the new tree is the old one with the changes
    applied (tree.update_tree: the ids `build_tree` would give the edited manifest)."""

    def __init__(self, core: Core, v: Version) -> None:
        self.core, self.v = core, v
        self.changes: dict[str, Entry | None] = {}   # path → new entry, None: removed
        self.cleared = False                          # every file removed
        self._kinds: dict[str, str | None] = {}      # path → its kind in the draft's tree
        self._pending_dirs: set[str] = set()          # directories above new entries

    def look_up(self, paths: Iterable[str]) -> None:
        """Find what the draft's tree holds at `paths` and the directories above them
        (one read of each tree on their way, whatever their number)."""
        wanted = {a for p in paths for a in (p, *ancestors([p])) if a not in self._kinds}
        rows = tree.find_many(self.v.tree, self.core.read_tree, wanted)
        for p in wanted:
            self._kinds[p] = rows[p][1] if p in rows else None

    def _is_file(self, path: str) -> bool:
        return self._kinds.get(path) in (tree.FILE, tree.LINK)

    def _drop(self, path: str) -> None:
        if self._is_file(path):
            self.changes[path] = None
        else:
            self.changes.pop(path, None)

    def put(self, path: str, entry: Entry) -> None:
        """Add `path` (looked up first), replacing a file in the way of a directory and a
        directory in the way of a file."""
        for above in ancestors([path]):
            if self._is_file(above) or self.changes.get(above) is not None:
                self._drop(above)
        if self._kinds.get(path) == tree.DIR:
            for below in tree.files_under(self.v.tree, self.core.read_tree, [path]):
                self._kinds[below] = tree.FILE
                self.changes[below] = None
        if path in self._pending_dirs:
            for below in [q for q in self.changes if q.startswith(path + "/")]:
                self._drop(below)
        self.changes[path] = entry
        self._pending_dirs.update(ancestors([path]))

    def delete(self, path: str) -> bool:
        """Remove the file or directory `path` ("" for everything); whether the draft held
        anything there."""
        if self.cleared:
            return False
        if path == "":   # (something must be left to delete)
            self.cleared = any(self.changes.get(p, "") is not None for p, _e in
                               tree.iter_files(self.v.tree, self.core.read_tree))
            return self.cleared
        self.look_up([path])
        kind = self._kinds[path]
        if kind == tree.DIR:
            gone = [q for q in tree.files_under(self.v.tree, self.core.read_tree, [path])
                    if self.changes.get(q, "") is not None]
        else:
            gone = [path] if kind is not None and self.changes.get(path, "") is not None \
                else []
        for q in gone:
            self._kinds.setdefault(q, tree.FILE)
            self.changes[q] = None
        return bool(gone)

    def finish(self, ingest: Ingest) -> Version:
        """Write the new tree and record it as the draft's."""
        core, v = self.core, self.v
        store_tree = core.tree_writer(ingest)
        links: Manifest = {}
        if self.cleared:
            root_tree, data = tree.empty_tree()
            store_tree(root_tree, data)
            size = files = 0
        else:
            root_tree, size = tree.update_tree(v.tree, v.size, self.changes, core.read_tree,
                                               store_tree)
            held = [0]   # (the files the draft's tree holds: counted, not taken on trust)
            links = {p: e for p, e in tree.iter_files(v.tree, core.read_tree, only=tree.LINK,
                                                      tally=held)
                     if p not in self.changes}
            # (a path removed was a file of the tree; one added replaces one, or is new)
            files = held[0] + sum(-1 if e is None else 0 if self._is_file(p) else 1
                                  for p, e in self.changes.items())
            links.update((p, e) for p, e in self.changes.items()
                         if e is not None and e.kind == tree.LINK)

        def update() -> None:
            # Each `files put` checked its own links; the draft's links together must
            # hold too (read inside the transaction that records the new objects).
            tree.validate_links(links, core.objects.read)
            current = core.index.version(v.id)
            if current is None or not current.is_draft:
                raise VersionImmutable(f"version {v.id} was committed meanwhile")
            core.index.update_version(v.id, tree=root_tree, size=size, files=files)

        core.commit_objects(ingest, update)
        core.index.checkpoint()
        return core.version(v.id)


def put_files(core: Core, ref: str, sources: list[str | os.PathLike[str]],
              target_path: str | None = None, cwd: str | os.PathLike[str] = ".") -> Version:
    """Add files to a draft: a file lands at TARGET/name, a directory's contents under TARGET."""
    target = normalize_user_path(target_path or "")
    with core.locked("files put"):
        edit = _DraftEdit(core, _draft(core, ref, cwd))
        with Ingest(core.objects) as ingest:
            for src in sources:
                src_path = Path(cwd, src).resolve() if not os.path.isabs(src) else Path(src)
                if src_path.is_dir():
                    files, _ = worktree.scan(src_path, [DSV_DIR], ignore_files=True)
                    prefix = target
                    base_dir = src_path
                elif src_path.exists() or src_path.is_symlink():
                    files = {src_path.name: worktree.scan_one(src_path)}
                    prefix = target
                    base_dir = src_path.parent
                else:
                    raise InvalidInput(f"{src} does not exist")
                snap = worktree.snapshot(base_dir, files, {}, ingest)
                placed = [(check_relpath(f"{prefix}/{rel}" if prefix else rel), entry)
                          for rel, entry in snap.manifest.items()]
                edit.look_up(path for path, _e in placed)
                for path, entry in placed:
                    edit.put(path, entry)
            return edit.finish(ingest)


def delete_files(core: Core, ref: str, paths: list[str],
                 cwd: str | os.PathLike[str] = ".") -> Version:
    """Remove files or whole directories from a draft."""
    with core.locked("files delete"):
        v = _draft(core, ref, cwd)
        edit = _DraftEdit(core, v)
        for p in paths:
            if not edit.delete(normalize_user_path(p)):
                raise InvalidInput(f"{p} is not in draft {v.id}")
        with Ingest(core.objects) as ingest:
            return edit.finish(ingest)


def commit_version(core: Core, ref: str, message: str | None = None,
                   cwd: str | os.PathLike[str] = ".", force: bool = False) -> Version:
    """Freeze a draft: from now on it can never change. It becomes `latest` (HistoryConflict
    if `latest` moved on since the draft was started and is not among its parents, unless
    `force`)."""
    with core.locked("versions commit"):
        v = _draft(core, ref, cwd)
        if message:
            v.message = message
        with Ingest(core.objects) as ingest:
            return _write_committed(core, ingest, v, new=False, force=force)


def commit_drafts(core: Core, ids: list[str]) -> list[Version]:
    """Commit drafts made together (a job's outputs), in order, under one hold of the lock.
    A draft of a dataset that an earlier one of them was just committed to is parented to
    that one (both were made on the same `latest`): two outputs into one dataset become
    two consecutive versions."""
    with core.locked("versions commit"):
        done: dict[str, str] = {}
        out: list[Version] = []
        for vid in ids:
            v = core.version(vid)
            if not v.is_draft:
                raise VersionImmutable(f"version {v.id} was committed meanwhile")
            if v.dataset in done:
                v.parents = [done[v.dataset]]
            with Ingest(core.objects) as ingest:
                out.append(_write_committed(core, ingest, v, new=False))
            done[v.dataset] = v.id
        return out


def create_version_from_path(core: Core, key: str, source: str | os.PathLike[str],
                             message: str | None = None,
                             lineage: dict[str, Any] | None = None,
                             commit: bool = True) -> Version:
    """A version holding exactly the files of `source`: committed, or a draft."""
    with core.locked("versions create"):
        ds = core.dataset(key)
        src = Path(source).resolve()
        if not src.is_dir():
            raise InvalidInput(f"{source} is not a directory")
        files, _ = worktree.scan(src, [DSV_DIR], ignore_files=True)
        with Ingest(core.objects) as ingest:
            with core.reporter.task("hashing", len(files)) as advance:
                snap = worktree.snapshot(src, files, {}, ingest, advance)
            root_tree, size = tree.build_tree(snap.manifest, core.tree_writer(ingest))
            now = time.time()
            v = Version(id=core.new_version_id(), dataset=ds.id, state=DRAFT,
                        tree=root_tree, parents=[ds.latest] if ds.latest else [],
                        message=message, author=default_author(), created=now,
                        lineage=lineage, size=size, files=len(snap.manifest))
            if commit:
                return _write_committed(core, ingest, v, new=True)
            core.commit_objects(ingest, lambda: core.index.insert_version(v))
        return core.version(v.id)


def commit_manifest(core: Core, key: str, manifest: Manifest, message: str,
                    lineage: dict[str, Any] | None = None,
                    create_dataset: bool = False) -> Version:
    """Commit a version made of objects already in the store (imports, for one)."""
    with core.locked("commit"):
        try:
            ds = core.dataset(key)
        except DatasetNotFound:
            if not create_dataset:
                raise
            ds = datasets.create_dataset(core, key)
        missing = [p for p, e in manifest.items() if not core.holds(e)]
        if missing:
            raise InvalidInput(f"{plural(len(missing), 'file')} with no stored content, e.g. "
                               f"{missing[0]}")
        with Ingest(core.objects) as ingest:
            root_tree, size = tree.build_tree(manifest, core.tree_writer(ingest))
            now = time.time()
            v = Version(id=core.new_version_id(), dataset=ds.id, state=COMMITTED,
                        tree=root_tree, parents=[ds.latest] if ds.latest else [],
                        message=message, author=default_author(), created=now,
                        committed=now, lineage=lineage, size=size, files=len(manifest))
            return _write_committed(core, ingest, v, new=True)


def update_version(core: Core, ref: str, message: str,
                   cwd: str | os.PathLike[str] = ".") -> Version:
    """Change a draft's message (a committed version's message is part of it: immutable)."""
    with core.locked("versions update"):
        v = _draft(core, ref, cwd)
        with core.index.transaction():
            core.index.update_version(v.id, message=message)
        return core.version(v.id)


def delete_version(core: Core, ref: str, force: bool = False,
                   cwd: str | os.PathLike[str] = ".") -> Version:
    """Delete a draft, or with `force` a committed version nothing depends on."""
    with core.locked("versions delete"):
        v = core.resolve(ref, cwd)
        ds = core.index.dataset_by("id", v.dataset)
        assert ds is not None
        if not v.is_draft:
            if not force:
                raise VersionImmutable(f"version {v.id} is committed",
                                       hint="pass --force to delete a committed version "
                                            "that nothing depends on")
            users = []
            if core.index.children(v.id):
                users.append("later versions")
            if v.tags:
                users.append("tags " + ", ".join(v.tags))
            if ds.head == v.id:
                users.append("the working directory")
            if users:
                raise VersionInUse(f"version {v.id} is used by {' and '.join(users)}")
        with core.index.transaction():
            core.index.delete_version(v.id)
            if ds.latest == v.id:
                remaining = core.index.versions(ds.id, "committed")
                core.refs.set_latest(ds.id, remaining[0].id if remaining else None,
                                     force=True)  # deleting latest is itself forced
        return v
