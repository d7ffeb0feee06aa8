"""Working directories and reading versions: status, diff, checkout, file reads.

Owns comparing a directory with a version (status, diff) and making a directory hold
exactly one version (checkout: plan what to write and remove, refuse to discard
uncommitted changes, place, record), plus reading a version's files (list, get, open).
Blobs a version lacks locally are downloaded first (sync.download.BlobSource). Must never
create versions.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import itertools
import os
import pickle
import stat
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from . import fileio, monitor, refs, tree, worktree
from .core import Core
from .errors import (CorruptObject, DatasetNotFound, DirtyWorktree, DsvError, InvalidInput,
                     RefError, UnsafePath)
from .faults import crashpoint
from .hashing import hash_bytes, is_hash, new_hasher
from .model import (
    Changes,
    CheckoutReport,
    Dataset,
    Entry,
    FileRow,
    Manifest,
    MonitorReport,
    StatRow,
    StatusReport,
    Version,
)
from .objects import PACK_THRESHOLD, Ingest, PackInfo
from .paths import STORE_DIR as DSV_DIR
from .paths import ancestors, is_reserved, is_under, mode_class, normalize_user_path
from .reporting import plural

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from .index import Index
    from .sync.download import BlobSource, Tap


def _all_known(runs: Iterable[worktree.Run], known: set[str], files: int) -> bool:
    """Whether a walk is made wholly of runs seen before (`known` digests, see
    worktree.ScanDigest) holding `files` files in all; stops at the first run that is
    not, holding nothing."""
    digest = worktree.ScanDigest()
    count = 0
    for run in runs:
        name = digest.add(run)
        if name is None or name not in known:
            return False
        count += len(run)
    return count == files


def status(core: Core, key: str | None = None, cwd: str | os.PathLike[str] = ".",
           list_ignored: bool = False) -> StatusReport:
    """What changed in a dataset's working directory since the version it was last made
    (with `list_ignored`, also what its `.dsvignore` files leave out)."""
    ds = core.pick_dataset(key, cwd)
    ignored: list[str] | None = [] if list_ignored else None
    root = core.dataset_root(ds)
    head = core.head(ds)
    behind, diverged = _behind_latest(core, ds, head)
    if not root.is_dir():
        return StatusReport(ds, head, Changes(), [], behind, diverged, missing=True)
    skipped: list[str] = []

    # (asked before any file is looked at: a change made meanwhile comes after it)
    excluded = core.excluded(ds)
    watching = monitor.context(root.resolve(), excluded) \
        if head is not None and ignored is None and \
        monitor.is_running(core.dsv_dir, ds.id) else None
    asked = monitor.changes(core.dsv_dir, ds.id, monitor.saved_token(
        core.dsv_dir, ds.id, watching), root.resolve()) if watching else None
    if head is not None and ds.cache_tree == head.tree:
        changed = monitor.to_look_at(asked)
        if changed is not None:
            # A monitor vouches for every other file: it holds the head's entry (see
            # versions.commit).
            found = worktree.scan_paths(root, changed, excluded, skipped, [], [])
            with core.reporter.task("hashing", len(found)) as advance:
                snap = worktree.snapshot(root, found, core.index.stat_rows_at(ds.id, found),
                                         None, advance)
            return _status_report(core, ds, head,
                                  tree.files_under(head.tree, core.read_tree, changed), snap,
                                  skipped, behind, diverged, None)
    report = _walked_status(core, ds, head, root, skipped, ignored, behind, diverged)
    if asked is not None and head is not None and report.changes.clean:
        # Every file holds the head's entry, as of a token asked before the walk: from
        # now on a commit or status can look only at what the monitor reports.
        with core.locked_if_free("status") as got:
            now = core.index.dataset_by("id", ds.id) if got else None
            if now is not None and (now.head, now.cache_tree) == (head.id, head.tree) and \
                    watching:
                monitor.save_token(core.dsv_dir, ds.id, asked.token, watching)
    return report


def _walked_status(core: Core, ds: Dataset, head: Version | None, root: Path,
                   skipped: list[str], ignored: list[str] | None, behind: int,
                   diverged: bool) -> StatusReport:
    """`status` by a walk of the whole directory, merged with the stat cache."""
    def walk() -> Iterator[worktree.Run]:
        # Each pass over the directory starts from nothing (a second pass runs only when
        # the stat cache cannot say).
        skipped.clear()
        if ignored is not None:
            ignored.clear()
        return worktree.walk(root, skipped, core.excluded(ds), ignore_files=True,
                             ignored=ignored)

    if head is not None:
        known, known_files = core.index.clean_scan(ds.id, head.tree)
        cached = ds.cache_tree == head.tree
        if not cached and known and known_files == head.files and \
                _all_known(walk(), known, known_files):
            # Without a cache that describes the head, only a walk made wholly of runs
            # seen before (each the same stretch of the same files, unchanged) says
            # anything: then the directory holds the head.
            return StatusReport(ds, head, Changes(), skipped, behind, diverged,
                                ignored=_sorted(ignored))
        # Runs of the walk seen before need no row.
        began = time.time_ns()
        seen = worktree.stat_changes(
            walk(), functools.partial(core.index.stat_keys_between, ds.id), known,
            known_files) if cached else None
        if seen is not None and seen.rows == head.files and not seen.unvouched and \
                not seen.gone:
            # The cache vouches for every file and describes the head tree exactly: no
            # tree to read, nothing to hash; and the next status reads no row of a run
            # that is the same then. (Only while the cache is still the one compared
            # with: a `checkout REF PATH` meanwhile writes rows of another version.)
            if set(seen.clean) != known:
                # (and only if no cache row was made since the walk began: a checkout of
                # some paths meanwhile leaves the head and cache_tree as they were)
                with core.locked_if_free("status") as got:
                    now = core.index.dataset_by("id", ds.id) if got else None
                    if now is not None and (now.head, now.cache_tree) == (ds.head, head.tree) \
                            and core.index.stat_rows_since(ds.id, began) == (0, 0):
                        core.index.put_clean_scan(ds.id, head.tree, seen.clean, seen.files)
            return StatusReport(ds, head, Changes(), skipped, behind, diverged,
                                ignored=_sorted(ignored))
        if seen is not None and seen.rows == head.files:
            # Every other file is the head's entry (see versions._snapshot_changes): hash
            # only these, and read only the parts of the head's tree that hold them.
            with core.reporter.task("hashing", len(seen.unvouched)) as advance:
                snap = worktree.snapshot(root, seen.unvouched, {}, None, advance)
            base = entries_at(core, head, [*seen.unvouched, *seen.gone])
            return _status_report(core, ds, head, base, snap, skipped, behind, diverged,
                                  _sorted(ignored))
    changes = _compare_directory(core, ds, head, walk(), remember=True)
    return StatusReport(ds, head, changes, skipped, behind, diverged,
                        ignored=_sorted(ignored))


def start_monitor(core: Core, key: str | None = None, cwd: str | os.PathLike[str] = "."
                  ) -> MonitorReport:
    """Start the file-change monitor of a dataset's directory (`dsv monitor start`; one
    already watching it is kept), then check the directory once, as `status` does: when
    it matches the head, commits and status look only at what the monitor reports from
    now on (else the next commit walks once more)."""
    ds = core.pick_dataset(key, cwd)
    root = core.dataset_root(ds)
    if not root.is_dir():
        raise InvalidInput(f"the directory of dataset {ds.name!r} does not exist: {root}",
                           hint=f"fill it with `dsv checkout {ds.name}:latest` first")
    try:
        monitor.start(core.dsv_dir, ds.id, root.resolve())
    except monitor.MonitorError as exc:
        raise InvalidInput(f"cannot monitor {root}: {exc}") from None
    status(core, ds.id)
    return monitor_report(core, ds.id)


def stop_monitor(core: Core, key: str | None = None, cwd: str | os.PathLike[str] = "."
                 ) -> MonitorReport:
    """Stop the file-change monitor of a dataset's directory (commits walk it again)."""
    ds = core.pick_dataset(key, cwd)
    monitor.stop(core.dsv_dir, ds.id)
    return monitor_report(core, ds.id)


def monitor_report(core: Core, key: str | None = None, cwd: str | os.PathLike[str] = "."
                   ) -> MonitorReport:
    """Whether a file-change monitor watches a dataset's directory, and what it says."""
    ds = core.pick_dataset(key, cwd)
    root = core.dataset_root(ds)
    info = monitor.running(core.dsv_dir, ds.id)
    if info is None:
        return MonitorReport(ds, root, running=False)
    pid, watches, started = info.get("pid"), info.get("watches"), info.get("started")
    vouched = monitor.saved_token(core.dsv_dir, ds.id, monitor.context(
        root.resolve(), core.excluded(ds))) is not None
    return MonitorReport(ds, root, running=True, pid=pid if type(pid) is int else None,
                         watches=watches if type(watches) is int else 0,
                         started=started if isinstance(started, float) else None,
                         vouched=vouched)


def _sorted(paths: list[str] | None) -> list[str] | None:
    if paths is not None:
        paths.sort()
    return paths


def entries_at(core: Core, version: Version, paths: list[str]) -> Manifest:
    """The entries `version` holds at `paths` (files and links; a path it lacks, or where
    it has a directory, is left out), reading only the trees and shards on their way."""
    return {path: Entry(*row[1:])
            for path, row in tree.find_many(version.tree, core.read_tree, paths).items()
            if row[1] != tree.DIR}


def _status_report(core: Core, ds: Dataset, head: Version | None, base: Manifest,
                   snap: worktree.Snapshot, skipped: list[str], behind: int, diverged: bool,
                   ignored: list[str] | None) -> StatusReport:
    """The report of `snap` against `base` (the head's entries, or those of them at the
    paths `snap` may have changed), remembering in the stat cache what was hashed."""
    report = StatusReport(ds, head, worktree.compare(base, snap.manifest), skipped, behind,
                          diverged, ignored=ignored)
    # Remember what was hashed, so the next status reads nothing, but only rows of files
    # that are the head's entry unchanged: the cache never names an object the store
    # lacks, and while it describes the head's tree (cache_tree) a row it vouches for
    # stands for that entry, mode included (a commit keeps the head's entry for it).
    manifest = snap.manifest
    known = [(p, row) for p, row in snap.stat_rows if _same_entry(base.get(p), manifest[p])]
    complete = report.changes.clean and len(known) == snap.hashed_files and head is not None
    if known or complete:
        with core.locked_if_free("status") as got:
            if got:
                with core.index.transaction():
                    core.index.put_stat_rows(ds.id, known)
                    if complete:
                        assert head is not None  # `complete` requires a head
                        core.index.update_dataset(ds.id, cache_tree=head.tree)
    return report


def _behind_latest(core: Core, ds: Dataset, head: Version | None) -> tuple[int, bool]:
    """How many versions `latest` holds that the head does not, and whether latest has
    left the head's line (a commit there would need --force)."""
    if head is None or ds.latest is None or ds.latest == head.id:
        return 0, False
    latest = core.version(ds.latest)
    if refs.is_ancestor(core.index, latest.id, head):
        return 0, False  # the head is ahead of latest (a commit moves latest forward)
    return refs.ahead_of(core.index, latest, head), \
        not refs.is_ancestor(core.index, head.id, latest)


def statuses(core: Core, key: str | None = None, cwd: str | os.PathLike[str] = ".",
             list_ignored: bool = False) -> list[StatusReport]:
    """Status of the dataset named, else of the one `cwd` is in, else of every dataset
    bound to a directory (as `git status` covers the whole repository)."""
    here = core.dataset(key) if key else core.dataset_at(cwd)
    if here is not None:
        return [status(core, here.id, list_ignored=list_ignored)]
    return [status(core, ds.id, list_ignored=list_ignored) for ds in core.index.datasets()
            if ds.path is not None]


def checkout(core: Core, ref: str, to: str | os.PathLike[str] | None = None,
             paths: list[str] | None = None, force: bool = False, link: str = "auto",
             cwd: str | os.PathLike[str] = ".") -> CheckoutReport:
    """Make a directory (the dataset's own, or `to`) hold exactly one version's files."""
    worktree.check_link_mode(link)
    with core.locked("checkout"):
        version = core.resolve(ref, cwd)
        ds = core.index.dataset_by("id", version.dataset)
        assert ds is not None
        in_worktree = to is None or (ds.path is not None and
                                     Path(to).resolve() == core.dataset_root(ds).resolve())
        if in_worktree and link in ("hardlink", "symlink"):
            raise InvalidInput(f"--link {link} is only for --to directories",
                               hint="a dataset's working directory holds real files, so "
                                    "they can be edited and committed")
        target = core.dataset_root(ds) if in_worktree or to is None else Path(to).resolve()
        if in_worktree:
            _check_no_links_to(core, ds)
        else:
            _check_target_outside_store(core, target)
        if in_worktree:
            excluded = core.excluded(ds)
        elif target == core.root:  # every dataset's directory stays theirs
            excluded = [DSV_DIR] + [d.path for d in core.index.datasets()
                                    if d.path and d.path != "."]
        else:
            excluded = []
        key = str(target)
        interrupted = core.index.checkout_journal(key)
        if in_worktree and not paths and set(excluded) <= {DSV_DIR} and \
                interrupted is None:
            changed = _place_changes(core, version, ds, target, key, force)
            if changed is not None:
                return changed
        if paths and in_worktree and interrupted is None:
            # Some paths of the dataset's directory: only they (and what stands where
            # they need a directory) are walked.
            return _Placement(core, version, ds, target, key, set(excluded), in_worktree,
                              link, force, interrupted).run(paths, Path(cwd).resolve(),
                                                            excluded)
        found, leftovers, stores = _survey(target, excluded, in_worktree)
        if interrupted is None:
            leftovers = []  # no checkout was interrupted here: those are not ours
        # Nested datasets and stores are left alone: their directories belong to them
        # now, even where an older version of this dataset holds files there (or a
        # file where one of them has its directory).
        fenced = set(excluded + stores)
        if not found and not leftovers and not paths and interrupted is None:
            # Nothing there to compare with, keep or remove (a clone, a new --to
            # directory): the version is placed as its trees are walked, a chunk at a
            # time, without a flat manifest of it.
            return _place_fresh(core, version, ds, target, key, fenced, in_worktree, link)
        return _Placement(core, version, ds, target, key, fenced, in_worktree, link,
                          force, interrupted).run(paths, Path(cwd).resolve(), excluded,
                                                  (found, leftovers))


def _survey(target: Path, excluded: list[str], in_worktree: bool
            ) -> tuple[int, list[str], list[str]]:
    """A first walk of a checkout's directory: how many files it holds, the temp files an
    interrupted checkout may have left, and the nested stores to fence off."""
    leftovers: list[str] = []
    stores: list[str] = []
    found = 0
    for run in worktree.walk(target, [], excluded, leftovers, stores,
                             ignore_files=in_worktree):
        found += len(run)
    return found, leftovers, stores


@dataclass
class _Judged:
    """What the first pass of a `_Placement` found, in totals."""

    wanted: int = 0       # version paths to be there (placeable and selected)
    left_out: int = 0     # version paths in a nested dataset or store
    writes: int = 0
    removals: int = 0
    nbytes: int = 0       # of the writes
    less: int = 0         # bytes of the files removed or replaced
    has_link: bool = False
    hashed: int = 0       # files the snapshot hashed, and the stat rows it made of them
    rows: int = 0
    at_risk: int = 0
    shown: list[str] = field(default_factory=list)   # the first few at risk


class _Placement:
    """A checkout into a directory that holds files already and that `_place_changes`
    cannot take: a `--to` directory, a working directory the stat cache does not
    describe, a checkout of some paths, or the rest of an interrupted one.

    The directory's walk, the version's files and those of the version the directory
    last held (its base: the head, or the version a finished checkout placed in a `--to`
    directory) are merged in path order (`_aligned`) and compared a chunk at a time. A
    first pass judges the whole change (hashing what the stat cache cannot vouch for)
    before anything is touched, and writes what to remove, write and keep into a spill
    file with no name (only this process holds it, so nobody else can change it). Later
    passes read the spill back to download, remove and write. Memory grows with the
    largest directory and one chunk, not with the version or the directory."""

    def __init__(self, core: Core, version: Version, ds: Dataset, target: Path, key: str,
                 fenced: set[str], in_worktree: bool, link: str, force: bool,
                 interrupted: str | None) -> None:
        self.core, self.version, self.ds, self.target, self.key = \
            core, version, ds, target, key
        self.fenced, self.above_fenced = fenced, ancestors(fenced)
        self.in_worktree, self.link, self.force = in_worktree, link, force
        self.interrupted = interrupted
        self.keep_cache = False

    def run(self, paths: list[str] | None, cwd: Path, excluded: list[str],
            surveyed: tuple[int, list[str]] | None = None) -> CheckoutReport:
        """The checkout; `surveyed`: (files found, leftovers to remove) of a first walk
        of the whole directory (`_survey`, which fenced its stores off), or None for
        `paths` in the dataset's directory: then only the selected paths are walked,
        each a subtree of the version merged with a walk under it (`walk_paths`)."""
        core, version, target = self.core, self.version, self.target
        selected = _select_paths(self._holds, paths, cwd, target)
        tops: list[str] | None = None
        if surveyed is None and selected is None:   # (a path named the whole directory)
            found, _leftovers, stores = _survey(target, excluded, self.in_worktree)
            self._fence(stores)
            surveyed = (found, [])
        elif surveyed is None:
            assert selected is not None
            tops = sorted(p for p in selected if not ancestors([p]) & selected)
            stores = []
            found = sum(len(run) for run in worktree.walk_paths(
                target, tops, excluded, [], stores, [], blockers=True))
            if stores:
                self._fence(stores)
                selected = _select_paths(self._holds, paths, cwd, target)  # (again)
            surveyed = (found, [])
        found, leftovers = surveyed
        previous = self.ds.head if self.in_worktree else core.index.placed_version(self.key)
        base = core.index.version(previous) if previous else None
        # Some paths checked out where the cache describes the head: it is made to
        # describe it again at the end (`_describe_head`), so that status and commit go
        # on reading only what changed.
        self.keep_cache = self.in_worktree and selected is not None and base is not None \
            and self.ds.cache_tree == base.tree
        target.mkdir(parents=True, exist_ok=True)
        downloads = _Downloads(core, version)
        with tempfile.TemporaryFile(dir=core.objects.tmp_dir) as spill:
            judged = self._judge(spill, selected, tops, base, excluded,
                                 found if selected is None or tops else None, downloads)
            if judged.left_out:
                core.reporter.notice(f"left out {plural(judged.left_out, 'path')} of "
                                     f"{version.id} that lie in a nested dataset or store")
            if judged.at_risk:
                shown = ", ".join(judged.shown) + (" …" if judged.at_risk > 5 else "")
                raise DirtyWorktree(
                    f"checkout would discard "
                    f"{plural(judged.at_risk, 'uncommitted change')} in {target}: {shown}",
                    hint="commit them first, or pass --force")
            written = self._place(spill, judged, downloads, leftovers)
            with core.index.transaction():
                if self.in_worktree:
                    for rows in _spilled(spill, "k"):
                        core.index.put_stat_rows(self.ds.id, rows)
                if self.keep_cache:
                    assert base is not None
                    for marks in _spilled(spill, "h"):
                        self._describe_head(marks)
                    core.index.update_dataset(self.ds.id, cache_tree=base.tree)
                if self.in_worktree and selected is None:
                    complete = judged.rows == judged.hashed and not judged.left_out \
                        and written == judged.writes
                    core.index.update_dataset(self.ds.id, head=version.id,
                                              cache_tree=version.tree if complete else None)
                core.index.end_checkout(self.key, None if self.in_worktree or
                                        selected is not None else version.id)
        core.index.checkpoint()
        return downloads.tally(CheckoutReport(
            version, target, judged.writes, judged.removals, judged.wanted - judged.writes,
            judged.nbytes, left_out=judged.left_out))

    def _describe_head(self, marks: list[tuple[str, tuple[Entry | None, Entry | None]]]
                       ) -> None:
        """Make the cache rows of the paths a checkout of some paths wrote, removed or
        kept (each with the head's entry there and what the checkout left there) describe
        the head again: a row of what is the head's entry (kind, content, mode class)
        stays, one of a path the head lacks goes, and any other becomes a row that
        vouches for nothing (size -1) but still names the head's entry, so that status
        sees the path (changed, or gone) and hashes it. Those rows are stamped now: a
        status that began before them does not take its walk for one of the head."""
        core = self.core
        rows = core.index.stat_rows_at(self.ds.id, [p for p, _h in marks])
        drop, put = [], []
        now = time.time_ns()
        for path, (head, there) in marks:
            row = rows.get(path)
            if head is None:
                if row is not None:
                    drop.append(path)
            elif row is None or there is None or not _same_entry(there, head) or \
                    row[4] != head.oid or mode_class(row[3]) != mode_class(head.mode):
                put.append((path, (-1, 0, 0, 0, head.oid, now)))
        core.index.drop_stat_rows(self.ds.id, drop)
        core.index.put_stat_rows(self.ds.id, put)

    def _fence(self, stores: list[str]) -> None:
        self.fenced |= set(stores)
        self.above_fenced = ancestors(self.fenced)

    def _holds(self, rel: str) -> bool:
        """Whether a path the user named is a file of the version, or a directory holding
        one, that is not fenced off (in or above a nested dataset or store)."""
        if is_under(rel, self.fenced):
            return False
        row = tree.find(self.version.tree, self.core.read_tree, rel)
        if row is None or row[1] != tree.DIR:
            return row is not None and rel not in self.above_fenced
        if rel not in self.above_fenced:
            return True
        return any(p not in self.above_fenced and not is_under(p, self.fenced)
                   for p, _e in tree.iter_files(row[4], self.core.read_tree, rel))

    def _judge(self, spill: BinaryIO, selected: set[str] | None, tops: list[str] | None,
               base: Version | None, excluded: list[str], found: int | None,
               downloads: _Downloads) -> _Judged:
        """The first pass: every path compared, the records of what to do spilled a chunk
        at a time ("w": write the version's entry, "r": remove, "k": a stat row of a file
        that already matches), what it amounts to returned. (`tops`: walk only these
        selected paths.)"""
        core = self.core
        judged = _Judged()
        # What is selected, and what stands where a selected path needs a directory
        # (an edited link there is a change like any other).
        above = ancestors(selected) if selected is not None else set()

        def merged() -> Iterator[tuple[str, worktree.FileStat | None, Entry | None]]:
            if tops is None:
                yield from _aligned(worktree.walk(self.target, [], excluded, stores=[],
                                                  ignore_files=self.in_worktree),
                                    tree.iter_sorted(self.version.tree, core.read_tree))
                return
            blocking: set[str] = set()   # (met under an earlier top already)
            for top in tops:
                row = tree.find(self.version.tree, core.read_tree, top)
                assert row is not None   # (`_holds`)
                ours = tree.iter_sorted(row[4], core.read_tree, prefix=top + "/") \
                    if row[1] == tree.DIR else iter([(top, Entry(*row[1:]))])
                runs = worktree.walk_paths(self.target, [top], excluded, [], [], [],
                                           blockers=True)
                for path, fs, entry in _aligned(runs, ours):
                    if entry is None and path in above:
                        if path in blocking:
                            continue
                        blocking.add(path)
                    yield path, fs, entry

        def scoped() -> Iterator[tuple[str, worktree.FileStat | None, Entry | None]]:
            for path, fs, entry in merged():
                if entry is not None:
                    if path in self.above_fenced or is_under(path, self.fenced):
                        judged.left_out += 1
                        entry = None
                    elif selected is not None and not is_under(path, selected):
                        entry = None
                    else:
                        judged.wanted += 1
                if fs is not None and selected is not None and \
                        not is_under(path, selected) and path not in above:
                    fs = None
                if fs is not None or entry is not None:
                    yield path, fs, entry

        with core.reporter.task("comparing", found) as advance:
            for chunk in worktree.batches(scoped(), lambda _item: 0, FRESH_CHUNK, 1 << 62):
                self._judge_chunk(chunk, base, spill, judged, advance, downloads)
        return judged

    def _judge_chunk(self, chunk: list[tuple[str, worktree.FileStat | None, Entry | None]],
                     base: Version | None, spill: BinaryIO, judged: _Judged,
                     advance: worktree.Progress, downloads: _Downloads) -> None:
        core, target = self.core, self.target
        files = {path: fs for path, fs, _e in chunk if fs is not None}
        cache = core.index.stat_rows_at(self.ds.id, files) if self.in_worktree else {}
        snap = worktree.snapshot(target, files, cache, None, advance,
                                 strict_links=self.in_worktree)
        judged.hashed += snap.hashed_files
        judged.rows += len(snap.stat_rows)
        current = snap.manifest
        hashed = dict(snap.stat_rows)
        records: list[tuple[str, str, object]] = []
        touched: list[tuple[str, Entry, Entry | None]] = []   # (path, there, its entry)
        placed: dict[str, Entry] = {}   # (what the "w" and "k" records leave there)
        for path, _fs, entry in chunk:
            there = current.get(path)
            if entry is not None:
                if _same_entry(there, entry):
                    row = hashed.get(path)
                    if row is not None and row[4] == entry.oid and self.in_worktree:
                        records.append(("k", path, row))
                        placed[path] = entry
                    continue
                records.append(("w", path, entry))
                placed[path] = entry
                judged.writes += 1
                judged.nbytes += entry.size
                judged.has_link = judged.has_link or entry.kind == tree.LINK
            elif there is not None:
                records.append(("r", path, None))
                judged.removals += 1
            if there is not None:
                touched.append((path, there, entry))
                if there.kind == tree.FILE:
                    judged.less += there.size
        # A file may be replaced or removed only if it is as that version left it, also
        # when an interrupted checkout is resumed: what it already placed matches the
        # target and is not touched again; anything else the user made or edited
        # meanwhile is theirs. (Files are placed by rename, but for the small files of
        # a fresh checkout: those it was writing when it was killed hold the first bytes
        # of their content, and are replaced.) (--to directories placed with links hold
        # 0444 files: compare contents.) Only those paths of the base are read.
        at_risk: list[str] = []
        if touched and not self.force:
            was = entries_at(core, base, [p for p, _t, _e in touched]) if base else {}
            at_risk = [p for p, there, _e in touched
                       if _edited(there, was.get(p), self.in_worktree) and
                       not _placed_link(core, target / p, was.get(p))]
        if at_risk and self.interrupted is not None:
            at_risk = _not_cut_short(core, self.interrupted, at_risk, current,
                                     downloads if self.interrupted == self.version.id
                                     else None)
        judged.at_risk += len(at_risk)
        judged.shown.extend(at_risk[:5 - len(judged.shown)])
        if self.keep_cache:   # (the head's entries of every path written, removed, kept)
            marked = [path for _kind, path, _what in records]
            head_at = entries_at(core, base, marked) if base is not None else {}
            records.extend(("h", path, (head_at.get(path), placed.get(path)))
                           for path in marked)
        if records:
            pickle.dump(records, spill, protocol=pickle.HIGHEST_PROTOCOL)

    def _place(self, spill: BinaryIO, judged: _Judged, downloads: _Downloads,
               leftovers: list[str]) -> int:
        """The later passes: download what the store lacks, remove, write (each a chunk at
        a time, recording stat rows as files land); how many stat rows were recorded."""
        core, version, target, ds = self.core, self.version, self.target, self.ds
        links: Manifest = {}
        if judged.has_link:
            # A new link is checked through every link the version places.
            links = {p: e for p, e in tree.iter_files(version.tree, core.read_tree,
                                                      only=tree.LINK)
                     if p not in self.above_fenced and not is_under(p, self.fenced)}
        fetched = core.index.promised_by(version.id) is not None
        check_room(core, target, self.link,
                   lambda: (pair for rows in _spilled(spill, "w") for pair in rows),
                   less=judged.less, claimed=judged.nbytes, fetched=fetched)
        downloads(list(links.values()))
        for rows in _spilled(spill, "w"):
            downloads([e for _p, e in rows])   # (every blob here before anything is touched)
        tree.validate_links(links, core.objects.read, self.fenced)
        with core.index.transaction():
            core.index.begin_checkout(self.key, version.id)
            if self.in_worktree:   # (until the end it describes neither version)
                core.index.update_dataset(ds.id, cache_tree=None)
        crashpoint("checkout:journal-written")
        for paths in itertools.chain(([p for p, _n in rows] for rows in _spilled(spill, "r")),
                                     [leftovers]):
            worktree.remove_paths(target, paths)
            if self.in_worktree:
                with core.index.transaction():
                    core.index.drop_stat_rows(ds.id, paths)
        settled = _SettledLate(core, ds, target)
        with core.reporter.task("checkout", judged.writes, judged.nbytes) as advance:
            for rows in _spilled(spill, "w"):
                for chunk in worktree.batches(rows, lambda it: it[1].size, FRESH_CHUNK,
                                              FRESH_CHUNK_BYTES):
                    twins = {} if self.in_worktree or self.link != "auto" else \
                        _twins(core, ds, chunk)
                    placer = worktree.Materializer(core.objects, target, self.link,
                                                   stat_rows=self.in_worktree, twins=twins)
                    settled.add(placer.place(chunk, advance))
        settled.flush()
        return settled.count


class _Unrecorded:
    """What the placing thread of a fresh checkout has published and placed but not yet
    recorded in the index: the packs downloaded for its last chunks, and those chunks'
    stat rows, staged in its connection's temp table (`Index.stage_stat_rows`: memory
    does not hold them). Both are recorded in one transaction, the packs first: a stat
    row vouches that the store holds its object. Recorded every RECORD_EVERY chunks, at
    the end, and before the placement reads any object from the store; a crash before
    that leaves published packs no row names, which `gc` removes (the version stays
    promised, so a resumed clone downloads them again)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.packs: list[PackInfo] = []
        self.staged = 0   # (stat rows in the temp table)

    def add_rows(self, index: Index, rows: list[tuple[str, StatRow]]) -> None:
        """Stage a chunk's stat rows (settled) until the next `record` (the first after
        one drops whatever the temp table held)."""
        if rows:
            index.stage_stat_rows(rows, first=self.staged == 0)
            self.staged += len(rows)

    @contextlib.contextmanager
    def recorded_at_end(self, stage: Executor, index: Index) -> Iterator[None]:
        """Record what is left through `stage` (the placing thread, once it is done
        with the chunk it may be placing) when the block ends, also when it fails: what
        was placed stays recorded, so a resumed clone does not download it again."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                stage.submit(self.record, index).result()
            raise
        stage.submit(self.record, index).result()

    def record(self, index: Index) -> None:
        """Record the packs, then the staged stat rows, in one transaction of `index`."""
        if not self.packs and not self.staged:
            return
        with index.transaction():
            index.add_packs(self.packs)
            if self.staged:
                index.put_staged_stat_rows(self.ds.id)
        self.packs, self.staged = [], 0


class _SettledLate:
    """The stat rows of the chunks a checkout places in a dataset's directory, settled
    (worktree.settle) and recorded one chunk late: placing the next chunk outlasts the
    racy tick that the last chunk's rows must wait out, so only the final chunk waits
    for it. `count`: the rows recorded."""

    def __init__(self, core: Core, ds: Dataset, target: Path) -> None:
        self.core, self.ds, self.target = core, ds, target
        self.count = 0
        self._pending: list[tuple[str, StatRow]] = []

    def add(self, rows: list[tuple[str, StatRow]]) -> None:
        """The rows of a chunk just placed (those of the one before it are recorded)."""
        self.flush()
        self._pending = rows

    def flush(self) -> None:
        rows, self._pending = worktree.settle(self.target, self._pending), []
        if rows:
            with self.core.index.transaction():
                self.core.index.put_stat_rows(self.ds.id, rows)
            self.count += len(rows)


def _spilled(spill: BinaryIO, tag: str) -> Iterator[list[tuple[str, Any]]]:
    """The records tagged `tag` of a `_Placement`'s spill, (path, what) a chunk at a
    time, in path order. (One reader at a time: each starts from the top.)"""
    spill.seek(0)
    while True:
        try:
            records = pickle.load(spill)
        except EOFError:
            return
        chosen = [(path, what) for kind, path, what in records if kind == tag]
        if chosen:
            yield chosen


def _aligned(runs: Iterable[worktree.Run], ours: Iterator[tuple[str, Entry]]
             ) -> Iterator[tuple[str, worktree.FileStat | None, Entry | None]]:
    """(path, what the directory holds there, the version's entry) of every path either
    has, in path order, from a walk (`runs`) and a tree walk in path order
    (tree.iter_sorted)."""
    here = itertools.chain.from_iterable(runs)
    h, o = next(here, None), next(ours, None)
    while h is not None and o is not None:
        if h[0] == o[0]:
            yield h[0], h[1], o[1]
            h, o = next(here, None), next(ours, None)
        elif h[0] < o[0]:
            yield h[0], h[1], None
            h = next(here, None)
        else:
            yield o[0], None, o[1]
            o = next(ours, None)
    for path, fs in itertools.chain([h] if h is not None else [], here):
        yield path, fs, None
    for path, entry in itertools.chain([o] if o is not None else [], ours):
        yield path, None, entry


def _place_changes(core: Core, version: Version, ds: Dataset, target: Path, key: str,
                   force: bool = False) -> CheckoutReport | None:
    """Check `version` out into the dataset's directory from the head, when the stat
    cache describes the head (`cache_tree`) and no nested dataset or store lies inside:
    the walk is merged with the cache (status's way), the head and the version are
    compared tree by tree (only directories whose ids differ are read), and only the
    paths either changed are looked at, hashed, written or removed. Time grows with what
    changed, not with the version; memory with what the directory changed (the user's
    edits), never with the paths the versions differ by: those are walked again for
    each step (check, download, remove, write), a chunk at a time. None when the cache
    cannot say (the caller then compares whole manifests). With `force`, what the
    directory changed is discarded (edits replaced, files the head lacks removed), as
    the comparison of whole manifests does."""
    head = core.head(ds)
    if head is None or ds.cache_tree != head.tree:
        return None
    skipped: list[str] = []
    stores: list[str] = []
    seen = worktree.stat_changes(
        worktree.walk(target, skipped, core.excluded(ds), stores=stores, ignore_files=True),
        functools.partial(core.index.stat_keys_between, ds.id),
        *core.index.clean_scan(ds.id, head.tree))
    if seen.rows != head.files or stores:
        return None
    # What the directory holds where the cache cannot vouch for it, and the head there.
    snap = worktree.snapshot(target, seen.unvouched, {}, None)
    current: dict[str, Entry | None] = dict.fromkeys(seen.gone)
    current.update(snap.manifest)
    head_at = entries_at(core, head, list(current))
    local = {p for p, e in current.items()
             if e is None or p not in head_at or not _same_entry(e, head_at[p])}

    def decided() -> Iterator[tuple[str, Entry | None, Entry | None]]:
        """(path, the version's entry, what stands there now) of every path either side
        changed (a path only the directory changed keeps the head's entry)."""
        covered: set[str] = set()
        for p, old, new in tree.diff_trees(head.tree, version.tree, core.read_tree):
            if p in local:
                covered.add(p)
                old = current[p]
            yield p, new, old
        for p in sorted(local - covered):
            yield p, head_at.get(p), current[p]

    def writes() -> Iterator[tuple[str, Entry]]:
        return ((p, entry) for p, entry, there in decided()
                if entry is not None and not _same_entry(there, entry))

    def removals() -> Iterator[str]:
        return (p for p, entry, there in decided() if entry is None and there is not None)

    # First the whole change is judged, holding only totals (and what the directory
    # changed): nothing is written if any of it is refused.
    at_risk: list[str] = []
    final: dict[str, Entry | None] = {}   # (the version's entry where the snapshot hashed)
    write_count = remove_count = nbytes = less = 0
    has_link = False
    for p, entry, there in decided():
        if p in snap.manifest:
            final[p] = entry
        if entry is not None and not _same_entry(there, entry):
            write_count += 1
            nbytes += entry.size
            has_link = has_link or entry.kind == tree.LINK
        elif entry is None and there is not None:
            remove_count += 1
        else:
            continue
        # A file may be replaced or removed only if it is as the head left it.
        if p in local and there is not None:
            at_risk.append(p)
        if there is not None and there.kind == tree.FILE:
            less += there.size
    if at_risk and not force:
        shown = ", ".join(sorted(at_risk)[:5]) + (" …" if len(at_risk) > 5 else "")
        raise DirtyWorktree(f"checkout would discard "
                            f"{plural(len(at_risk), 'uncommitted change')} in {target}: "
                            f"{shown}", hint="commit them first, or pass --force")
    links: Manifest = {}
    if has_link:
        # A new link is checked through every link of the version (the head's were
        # checked when they were placed or committed).
        links = {p: e for p, e in tree.iter_files(version.tree, core.read_tree)
                 if e.kind == tree.LINK}
    fetched = core.index.promised_by(version.id) is not None
    check_room(core, target, "auto", writes, less=less,
               claimed=nbytes, fetched=fetched)
    downloads = _Downloads(core, version)
    downloads(list(links.values()))
    if fetched:   # (every blob here before the directory is touched)
        for chunk in worktree.batches(writes(), lambda it: it[1].size, FRESH_CHUNK,
                                      FRESH_CHUNK_BYTES):
            downloads([e for _p, e in chunk])
    tree.validate_links(links, core.objects.read, {DSV_DIR})
    with core.index.transaction():
        core.index.begin_checkout(key, version.id)
        # Until the end the cache describes neither version (it gains rows as files
        # land); rows of files gone from the directory go now (written back, they get
        # new ones).
        core.index.update_dataset(ds.id, cache_tree=None)
        core.index.drop_stat_rows(ds.id, seen.gone)
    crashpoint("checkout:journal-written")
    for paths in worktree.batches(removals(), lambda _p: 0, FRESH_CHUNK, 1 << 62):
        worktree.remove_paths(target, paths)
        with core.index.transaction():
            core.index.drop_stat_rows(ds.id, paths)
    placer = worktree.Materializer(core.objects, target, "auto", stat_rows=True)
    settled = _SettledLate(core, ds, target)
    written: set[str] = set()   # (of the paths the snapshot hashed)
    with core.reporter.task("checkout", write_count, nbytes) as advance:
        for chunk in worktree.batches(writes(), lambda it: it[1].size, FRESH_CHUNK,
                                      FRESH_CHUNK_BYTES):
            settled.add(placer.place(chunk, advance))
            written.update(p for p, _e in chunk if p in snap.manifest)
    settled.flush()
    rows_count = settled.count
    # Rows of hashed files left in place that already matched: their content is stored.
    final = {p: final[p] if p in final else head_at.get(p) for p in snap.manifest}
    kept = [(p, r) for p, r in snap.stat_rows if p not in written and
            (entry := final[p]) is not None and _same_entry(snap.manifest[p], entry)]
    untouched = [p for p in snap.manifest if p not in written and final[p] is not None]
    complete = rows_count == write_count and len(kept) == len(untouched)
    with core.index.transaction():
        core.index.put_stat_rows(ds.id, kept)
        core.index.update_dataset(ds.id, head=version.id,
                                  cache_tree=version.tree if complete else None)
        core.index.end_checkout(key, None)
    core.index.checkpoint()
    return downloads.tally(CheckoutReport(version, target, write_count, remove_count,
                                          version.files - write_count, nbytes))


FRESH_CHUNK = 10_000
FRESH_CHUNK_BYTES = 128 << 20
"""Files, and bytes of them (where they are downloaded), a checkout into an empty
directory places at once: the next chunk downloads while one is placed, so a clone of a
few large files places the first ones while the last ones download. (A clone of
1,000,000 files, each on a new ext4: 63.4 / 52.7 s and 250 / 248 MB peak at 10,000;
60.7 / 57.8 s and 293 / 282 MB at 20,000, the issue's bound being 300 MB. A checkout of
them from the store: 35.4 s and 69 MB against 34.8 s and 87 MB.)"""

RECORD_EVERY = 8
"""Chunks whose downloaded objects and stat rows a fresh checkout records in one
transaction (see `_Unrecorded`). The object rows land at random ids all over the
table's B-tree, and each transaction writes every page it touched (to the WAL, then
again to the database): 10,000 random rows touch a third of a million-file clone's
pages, 40,000 most of them. A clone of 1,000,000 files, each on a new ext4, through
syscalls: 12.58 GB written and 14.67 GB read recording every chunk, 9.12 / 10.82 GB
every 4 (the stat rows held in memory: peak RSS 221 -> 250 MB), 8.30 / 9.79 GB every 8
with the stat rows staged in SQLite (258 MB; 67.8 s against 69.5-69.9 s every 4, and
71.5 s every chunk), 8.02 / 9.14 GB every 16 (287 MB: the packs' tables and the ids
counted as here grow with it)."""


ROOM_BATCH = 10_000
"""Files whose objects `check_room` looks up in the store at once (a walk's worth is
never held)."""


def _taken(e: Entry, mode: str) -> int:
    """The bytes placing file `e` puts on the target's disk. Small files are always
    written. Large ones by `mode`: "copy" writes each; "reflink" shares a whole (loose)
    object's blocks, but writes a chunked file; "link" (hard links, symlinks) takes no
    room there (see `_Room.sources`); "share" (a job's input tree) hard-links whole
    objects themselves and writes chunked files."""
    if e.size >= PACK_THRESHOLD and (mode == "link" or mode in ("reflink", "share")
                                     and not e.chunks):
        return 0
    return e.size


def _key(oid: str) -> bytes:
    """An object id as a set holds it (half of it, as bytes: a million take 83 MB, not
    147; two ids alike in 128 bits only make a room check count one object once)."""
    return bytes.fromhex(oid[:32]) if is_hash(oid) else oid.encode()


class _Room:
    """What placing files takes, tallied in one pass over a lazy walk of them: their
    bytes, and per link mode the bytes they put on the target's disk and the largest
    file; in "link" mode the read-only copies made in the store (ObjectStore.link_source:
    one per distinct large file, where none is yet)."""

    def __init__(self, core: Core, modes: tuple[str, ...], files: Iterable[Entry]) -> None:
        self.sizes = self.sources = 0
        self.total = dict.fromkeys(modes, 0)
        self.largest = dict.fromkeys(modes, 0)
        made: set[bytes] = set()
        for e in files:
            self.sizes += e.size
            for mode in modes:
                taken = _taken(e, mode)
                self.total[mode] += taken
                self.largest[mode] = max(self.largest[mode], taken)
            if "link" in modes and e.size >= PACK_THRESHOLD and \
                    (key := _key(e.oid)) not in made:
                made.add(key)
                if not (core.objects.links_dir / e.oid).exists():
                    self.sources += e.size

    def place(self, mode: str, less: int) -> int:
        """The bytes placing the files puts on the target's disk in `mode`, less `less`
        (bytes of files it removes or replaces, or has written already), and at least
        its largest file."""
        return max(self.total[mode] - less, self.largest[mode])


def _lacking_bytes(core: Core, files: Iterable[Entry]) -> int:
    """The bytes of the objects holding `files` that the store lacks (each counted once),
    looked up ROOM_BATCH files at a time."""
    counted: set[bytes] = set()
    total = 0
    it = iter(files)
    while batch := list(itertools.islice(it, ROOM_BATCH)):
        blobs = {oid: size for oid, size in core.blobs(batch).items()
                 if _key(oid) not in counted}
        small, large = core.objects.lacking(blobs)
        for oid in (*small, *large):
            counted.add(_key(oid))
            total += blobs[oid]
    return total


def check_room(core: Core, target: Path, link: str,
               walk: Callable[[], Iterable[tuple[str, Entry]]], *, less: int = 0,
               claimed: int | None = None, fetched: bool = False,
               share_objects: bool = False, what: str = "the checkout",
               hint: str = "free some space, or check out only some paths") -> None:
    """Refuse, before any file is written, a placement of the files `walk` gives (as
    path, entry) into `target` that the disks cannot hold (sizes come from trees, which
    may be hostile: a small tree can name one large blob many times): the target's disk
    for the files, the store's for the objects it must download first (`fetched`) and the
    copies links point to; both together where they are one disk. `less`: see
    `_Room.place`. `claimed`: the bytes as a version's size gives them, checked first, so
    that the files are walked only when that does not fit (once; twice when objects must
    be looked up too, a batch at a time: memory does not grow with the files). Where the
    link mode may share a large file's blocks with the store (a reflink that a probe file
    shows works), it counts only if it cannot."""
    mode = "share" if share_objects else "link" if link in ("hardlink", "symlink") else "copy"
    free = fileio.free_bytes(target)
    same_disk = _same_disk(core.objects.tmp_root, target)
    in_store = fetched or mode == "link"    # (may the store grow too?)
    if claimed is not None:
        if claimed * (2 if in_store and same_disk else 1) <= free and \
                (same_disk or not in_store or claimed <= fileio.free_bytes(core.objects.tmp_root)):
            return

    def files() -> Iterator[Entry]:
        return (e for _p, e in walk() if e.kind == tree.FILE)

    may_share = mode == "copy" and link in ("auto", "reflink")
    room = _Room(core, (mode, "reflink") if may_share else (mode,), files())
    place = room.place(mode, less)
    if place > free and may_share and \
            fileio.reflinks_between(core.objects.tmp_root, fileio.nearest_existing(target)):
        place = room.place("reflink", less)
    store = room.sources
    store_free = free if same_disk else fileio.free_bytes(core.objects.tmp_root)
    if fetched and store + room.sizes + (place if same_disk else 0) > store_free:
        # (only then are the objects looked up: what the store lacks is downloaded)
        store += _lacking_bytes(core, files())
    if same_disk:
        fileio.check_room(target, place + store, what, hint=hint)
    else:
        fileio.check_room(target, place, what, hint=hint)
        fileio.check_room(core.objects.tmp_root, store, what, hint=hint)


def _same_disk(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether `a` and `b` (or the nearest directories above them that exist) are on one
    filesystem."""
    return os.stat(fileio.nearest_existing(a)).st_dev == \
        os.stat(fileio.nearest_existing(b)).st_dev


def _place_fresh(core: Core, version: Version, ds: Dataset, target: Path, key: str,
                 fenced: set[str], in_worktree: bool, link: str) -> CheckoutReport:
    """Check out `version` into a directory that holds nothing of it (no files, no
    interrupted checkout): walk its trees and place the files a chunk at a time, each
    chunk's blobs downloaded first if the version was only fetched, its stat-cache rows
    recorded as it lands. Memory does not grow with the version.

    Placing a chunk (kernel work, in a thread of its own with its own index connection)
    overlaps downloading the next one (network and hashing, in this thread): a clone
    costs about the longer of the two instead of their sum. That thread also records in
    the index what was downloaded and the stat-cache rows, every RECORD_EVERY chunks
    (and before a chunk reads objects from the store: see `_Unrecorded`); SQLite does
    that work without the GIL, beside this thread's. Meanwhile objects downloaded for
    the chunks not recorded yet count as here (`pending`): a later chunk does not
    download them again. The store lock is held throughout when anything may be
    downloaded."""
    above_fenced = ancestors(fenced)
    left_out = 0

    def placeable_unseen() -> Iterator[tuple[str, Entry]]:
        return ((p, e) for p, e in tree.iter_files(version.tree, core.read_tree,
                                                   read_ahead=core.read_trees_ahead)
                if p not in above_fenced and not is_under(p, fenced))

    def placeable() -> Iterator[tuple[str, Entry]]:
        nonlocal left_out
        for path, entry in tree.iter_files(version.tree, core.read_tree,
                                           read_ahead=core.read_trees_ahead):
            if path not in above_fenced and not is_under(path, fenced):
                yield path, entry
            else:
                left_out += 1

    # The links of a version combine: every one is checked through the others first
    # (a walk that builds no path or entry for a file: 0.12 s instead of 0.40 s for
    # 100,000 files).
    links = {p: e for p, e in tree.iter_files(version.tree, core.read_tree, only=tree.LINK,
                                              read_ahead=core.read_trees_ahead)
             if p not in above_fenced and not is_under(p, fenced)}
    downloads = _Downloads(core, version)
    downloads(list(links.values()))
    tree.validate_links(links, core.objects.read, fenced)
    target.mkdir(parents=True, exist_ok=True)
    # The version's size is checked first; its trees are walked for the room the files
    # take only when that does not fit, or once they turn out to take more (below).
    fetched = core.index.promised_by(version.id) is not None
    check_room(core, target, link, placeable_unseen,
               claimed=version.size, fetched=fetched)
    with core.index.transaction():
        core.index.begin_checkout(key, version.id)
    crashpoint("checkout:journal-written")
    settle = in_worktree and link not in ("hardlink", "symlink")
    written = nbytes = rows_kept = file_bytes = 0
    bound = version.size

    unrecorded = _Unrecorded(ds)   # (the placing thread's)

    def place(placer: worktree.Materializer, chunk: list[tuple[str, Entry]],
              advance: worktree.Progress, ingest: Ingest | None, index: Index,
              record: bool) -> int:
        """Publish what was downloaded for `chunk`, place `chunk`, then (`record`) record
        in the index, through this thread's connection, what this chunk and those before
        it downloaded, and their stat rows; how many stat rows this chunk has. What the
        chunk reads from the store is recorded before it is read."""
        try:
            if ingest is not None:
                with ingest:
                    unrecorded.packs += core.publish_objects(ingest,
                                                             crash="pull:objects-written")
            rows = placer.place(chunk, advance)
        finally:
            if placer.spool is not None:
                placer.spool.close()
        kept = 0
        if settle:
            rows = worktree.settle(target, rows)
            kept = len(rows)
            if not index.read_only:   # (else shared with this thread: cache rows skipped)
                unrecorded.add_rows(index, rows)
        if record:
            unrecorded.record(index)
        return kept

    from concurrent.futures import ThreadPoolExecutor
    # Cut by bytes too only where the blobs may have to be downloaded (`fetched`): a
    # chunk's large files are placed side by side, which a checkout from the store keeps.
    with core.reporter.task("checkout", version.files, version.size) as advance, \
            core.side_objects() as (objects, side_index), \
            (core.locked("download") if fetched else contextlib.nullcontext()), \
            ThreadPoolExecutor(1, thread_name_prefix="dsv-place") as stage, \
            unrecorded.recorded_at_end(stage, side_index):
        # (the lock held throughout: the placing thread records what this one downloaded)
        placing: Future[int] | None = None
        recording = False   # (whether `placing` records what is pending)
        pending: set[str] = set()   # (downloaded for chunks not recorded yet)
        chunks = 0
        for chunk in worktree.batches(placeable(), lambda it: it[1].size, FRESH_CHUNK,
                                      FRESH_CHUNK_BYTES if fetched else 1 << 62):
            chunk_bytes = sum(e.size for _p, e in chunk if e.kind == tree.FILE)
            if file_bytes + chunk_bytes > bound:
                # The version said it held less (a damaged or hostile record): what its
                # files still take is counted from its trees before any more is written.
                check_room(core, target, link, placeable_unseen,
                           less=file_bytes, fetched=fetched)
                bound = 1 << 62
            file_bytes += chunk_bytes
            spool = _spool(core, target, chunk) if fetched and link not in (
                "hardlink", "symlink") else None
            ingest: Ingest | None = None
            got: set[str] = set()
            handed = False   # (spool and ingest are this loop's until `place` owns them)
            tap = spool.feed if spool is not None else None
            try:
                if side_index is core.index:   # (one connection: recorded here)
                    downloads([e for _p, e in chunk], tap)
                else:
                    ingest, got = downloads.stage([e for _p, e in chunk], tap, pending)
                twins = {} if in_worktree or link != "auto" else _twins(core, ds, chunk)
                placer = worktree.Materializer(
                    objects, target, link, stat_rows=in_worktree, twins=twins, fresh=True,
                    spool=spool, before_reading=lambda: unrecorded.record(side_index))
                if placing is not None:
                    rows_kept += placing.result()
                    if recording:
                        pending = set()
                handed = True
                chunks += 1
                recording = chunks % RECORD_EVERY == 0
                placing = stage.submit(place, placer, chunk, advance, ingest, side_index,
                                       recording)
                pending |= got
            except BaseException:
                if not handed:
                    if spool is not None:
                        spool.close()
                    if ingest is not None:
                        ingest.abort()
                raise
            written += len(chunk)
            nbytes += sum(e.size for _p, e in chunk)
        if placing is not None:
            rows_kept += placing.result()
    if left_out > 0:
        core.reporter.notice(f"left out {plural(left_out, 'path')} of {version.id} that lie "
                             f"in a nested dataset or store")
    with core.index.transaction():
        if in_worktree:
            complete = settle and left_out == 0 and rows_kept == written
            core.index.update_dataset(ds.id, head=version.id,
                                      cache_tree=version.tree if complete else None)
        core.index.end_checkout(key, None if in_worktree else version.id)
    core.index.checkpoint()
    return downloads.tally(CheckoutReport(version, target, written, 0, 0, nbytes,
                                          left_out=left_out))


def _spool(core: Core, target: Path, chunk: list[tuple[str, Entry]]) -> worktree.Spool | None:
    """A spool for the files of `chunk` (None when it has none): they are written as
    their objects download, not read back from the store afterwards."""
    files = [(rel, e, core.chunks(e).chunks if e.chunks else []) for rel, e in chunk
             if e.kind == tree.FILE]
    return worktree.Spool(target, files) if files else None


def _not_cut_short(core: Core, vid: str, paths: list[str], found: Manifest,
                   downloads: _Downloads | None = None) -> list[str]:
    """`paths` less the files an interrupted checkout of version `vid` was writing when
    it was killed: a fresh checkout writes small files under their own names (see
    worktree.Materializer), so each of those holds the first bytes of the file it was
    placing there. Replacing one loses nothing. (`downloads`: the checkout's own, where
    it places version `vid`, so that its report counts what this downloads.)"""
    version = core.index.version(vid)
    if version is None:
        return paths
    placing = entries_at(core, version, paths)
    # A clone writes small files as their objects arrive (worktree.Spool), before the
    # download that brings them is in the store: a kill can leave a file cut short
    # whose object is not. Those objects are downloaded first: a download that fails
    # stops the checkout with its own error, never calls such a file the user's change.
    wanted = [e for p, e in placing.items() if _may_be_cut_short(found[p], e)]
    if wanted:
        (downloads or _Downloads(core, version))(wanted)
    return [p for p in paths if not _cut_short(core, found[p], placing.get(p))]


def _may_be_cut_short(found: Entry, placing: Entry | None) -> bool:
    """Whether `found` could hold a proper prefix of the small file `placing`."""
    return placing is not None and found.kind == tree.FILE and \
        placing.kind == tree.FILE and found.size < placing.size < PACK_THRESHOLD


def _cut_short(core: Core, found: Entry, placing: Entry | None) -> bool:
    """Whether `found` holds a proper prefix of the small file `placing`."""
    if not _may_be_cut_short(found, placing):
        return False
    assert placing is not None
    try:
        data = core.objects.read(placing.oid)
    except DsvError:
        return False
    return hash_bytes(data[:found.size]) == found.oid


def _twins(core: Core, ds: Dataset, items: list[tuple[str, Entry]]) -> dict[str, str]:
    """Large files of `items` that the dataset's working directory holds unchanged
    (the stat cache vouches for them): oid → path, cheaper sources for a copy."""
    if ds.path is None:
        return {}
    root = core.dataset_root(ds)
    large = [(rel, entry) for rel, entry in items if entry.size >= PACK_THRESHOLD]
    cache = core.index.stat_rows_at(ds.id, [rel for rel, _e in large])
    twins: dict[str, str] = {}
    for rel, entry in large:
        row = cache.get(rel)
        if row is None or row[4] != entry.oid:
            continue
        try:
            st = os.lstat(root / rel)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ino) == row[:3]:
            twins[entry.oid] = str(root / rel)
    return twins


def _placed_link(core: Core, path: Path, base: Entry | None) -> bool:
    """Whether `path` is a symlink that `--link symlink` made for `base`'s content."""
    if base is None or not path.is_symlink():
        return False
    target = Path(os.readlink(path))
    return target.parent == core.objects.links_dir.resolve() and target.name == base.oid


def _check_target_outside_store(core: Core, target: Path) -> None:
    """A `--to` directory may not be a store, lie in one, or hold this store (`/`,
    a parent of the workspace): refused before anything is read or written."""
    if target == core.dsv_dir or core.dsv_dir in target.parents or \
            any(is_reserved(part) for part in target.parts):
        raise UnsafePath(f"{target} is inside a store", hint="choose a directory "
                         "outside .dsv/")
    if target in core.root.parents:
        raise UnsafePath(f"{target} holds this workspace and its store",
                         hint="check out into an empty or dedicated directory")


def _check_no_links_to(core: Core, ds: Dataset) -> None:
    """A dataset's directory is reached from the workspace root through real
    directories only: a link planted there could send a checkout anywhere."""
    if ds.path in (None, "."):
        return
    here = core.root
    for part in ds.path.split("/"):
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{here} is not a directory (a link or a file where "
                             f"dataset {ds.name!r} has its directory)",
                             hint="move it away; dsv never writes through links")


def _select_paths(holds: Callable[[str], bool], paths: list[str] | None, cwd: Path,
                  target: Path) -> set[str] | None:
    """Version paths named by the user: relative to the current directory when it is
    inside `target` (as with git), else relative to the version's root; each must be a
    file or directory of the version (`holds`)."""
    if not paths:
        return None
    selected = set()
    inside = cwd == target or target in cwd.parents
    for p in paths:
        rel = (worktree.resolve_user_path(target, cwd, p) if inside
               else normalize_user_path(p))
        if rel == "":
            return None
        if not holds(rel):
            raise InvalidInput(f"{p} is not in this version",
                               hint="`dsv files list REF --recursive` shows its paths")
        selected.add(rel)
    return selected


def diff(core: Core, ref_a: str | None = None, ref_b: str | None = None,
         paths: list[str] | None = None, cwd: str | os.PathLike[str] = ".") -> Changes:
    """Changes from version A to version B, or to A's dataset's working directory; with no
    A, from the head of the dataset of `cwd` to its working directory (as `git diff`).
    `paths` (relative to `cwd` inside the dataset's directory, else to its root) limit it
    to what lies at or under them."""
    if ref_a is None:
        ds = core.pick_dataset(None, cwd)
        if ref_b is None and ds.path is not None and core.dataset_root(ds).is_dir():
            # The head against its directory is what status reports: the stat cache (or
            # a monitor) vouches for the files that did not change, and only the rest
            # is read, and looked up in the head's tree.
            return _only_under(status(core, ds.id).changes,
                               _selected(core, ds, paths, cwd) if paths else None)
        a = core.head(ds)
    else:
        a = core.resolve(ref_a, cwd)
        found = core.index.dataset_by("id", a.dataset)
        assert found is not None
        ds = found
    selected = _selected(core, ds, paths, cwd) if paths else None
    if selected is not None and "" in selected:
        selected = None
    if ref_b is None and a is not None:
        return _diff_directory(core, ds, a, selected)
    base: Manifest = {}
    current: Manifest = {}
    if a is not None and ref_b is not None:
        # Two versions: only directories whose ids differ are read, and only the paths
        # that differ are compared.
        for p, old, new in tree.diff_trees(a.tree, core.resolve(ref_b, cwd).tree,
                                           core.read_tree):
            if old is not None:
                base[p] = old
            if new is not None:
                current[p] = new
    elif ref_b is not None:   # (no head yet: everything the version holds is added)
        current = dict(tree.iter_files(core.resolve(ref_b, cwd).tree, core.read_tree))
    return _only_under(worktree.compare(base, current), selected)


def _diff_directory(core: Core, ds: Dataset, version: Version, selected: set[str] | None
                    ) -> Changes:
    """`diff` of a version against the dataset's directory (see `_compare_directory`)."""
    walk = worktree.walk(core.dataset_root(ds), [], core.excluded(ds), ignore_files=True)
    return _compare_directory(core, ds, version, walk, selected)


def _compare_directory(core: Core, ds: Dataset, version: Version | None,
                       runs: Iterable[worktree.Run], selected: set[str] | None = None,
                       remember: bool = False) -> Changes:
    """What changed from `version` (None: an empty one) to the dataset's directory as
    walked (`runs`): the walk and the version's files merged in path order and compared
    `FRESH_CHUNK` paths at a time (the stat cache vouches for what it can, the rest is
    hashed), holding only what differs. With `remember` (status), the rows of hashed
    files that hold the version's entry are recorded chunk by chunk (when the store lock
    is free), and if the directory holds exactly the version and every file it hashed got
    a row, the cache is marked as describing it (`cache_tree`)."""
    root = core.dataset_root(ds)
    changes = Changes()
    ours = tree.iter_sorted(version.tree, core.read_tree) if version else iter(())
    paths = _aligned(runs, ours)
    if selected is not None:
        paths = (item for item in paths if is_under(item[0], selected))
    complete = remember and version is not None
    started = time.time_ns()
    made = [0, 0]   # (the rows this status recorded, and the sum of their times)
    last = ""   # (a whole walk's chunks follow each other: each reads its stretch of rows)
    with core.reporter.task("hashing") as advance:
        for chunk in worktree.batches(paths, lambda _item: 0, FRESH_CHUNK, 1 << 62):
            files = {path: fs for path, fs, _e in chunk if fs is not None}
            if selected is None:
                cache = dict(core.index.stat_rows_between(ds.id, last, chunk[-1][0]))
                last = chunk[-1][0]
            else:
                cache = core.index.stat_rows_at(ds.id, files)
            snap = worktree.snapshot(root, files, cache, None, advance)
            base = {path: e for path, _fs, e in chunk if e is not None}
            part = worktree.compare(base, snap.manifest)
            changes.extend(part)   # (chunks come in path order)
            if not remember:
                continue
            # Only rows of files that hold the version's entry: the cache never names an
            # object the store lacks.
            manifest = snap.manifest
            known = [(p, row) for p, row in snap.stat_rows
                     if _same_entry(base.get(p), manifest[p])]
            complete = complete and part.clean and len(known) == snap.hashed_files
            if known:
                with core.locked_if_free("status") as got:
                    if got:
                        with core.index.transaction():
                            core.index.put_stat_rows(ds.id, known)
                        made[0] += len(known)
                        made[1] += core.index.row_times(known)
                    complete = complete and got
    if complete:
        # Only if nobody else wrote cache rows meanwhile (a checkout of some paths, which
        # leaves the head as it is, writes rows of another version's files): each row
        # made since this status began must be one of its own.
        assert version is not None
        with core.locked_if_free("status") as got:
            now = core.index.dataset_by("id", ds.id) if got else None
            if now is not None and now.head == version.id and \
                    core.index.stat_rows_since(ds.id, started) == (made[0], made[1]):
                with core.index.transaction():
                    core.index.update_dataset(ds.id, cache_tree=version.tree)
    return changes


def _selected(core: Core, ds: Dataset, paths: list[str], cwd: str | os.PathLike[str]
              ) -> set[str]:
    """`diff`'s paths as paths of the dataset (relative to `cwd` inside its directory,
    else to its root)."""
    target = core.dataset_root(ds) if ds.path is not None else None
    here = Path(cwd).resolve()
    return {worktree.resolve_user_path(target, here, p)
            if target is not None and (here == target or target in here.parents)
            else normalize_user_path(p) for p in paths}


def _only_under(changes: Changes, selected: set[str] | None) -> Changes:
    """The part of `changes` at or under `selected` (all of it for None or the root)."""
    if selected is None or "" in selected:
        return changes
    out = Changes()
    for name in ("added", "modified", "deleted"):
        kept = [p for p in getattr(changes, name) if is_under(p, selected)]
        setattr(out, name, kept)
        side = 0 if name == "deleted" else 1
        setattr(out, f"{name}_bytes", sum(changes.sizes[p][side] or 0 for p in kept))
        out.sizes.update((p, changes.sizes[p]) for p in kept)
    return out


def split_diff_words(core: Core, words: list[str],
                     cwd: str | os.PathLike[str] = ".") -> tuple[str | None, str | None,
                                                                 list[str]]:
    """`dsv diff [REF [REF]] [PATH…]`: the leading words (two at most) that are refs, the
    rest paths. A word with a `:` is a ref (an error if it names nothing); a bare word is
    a ref only if it names a version (`./NAME` is always a path)."""
    refs_found: list[str | None] = []
    rest = list(words)
    while rest and len(refs_found) < 2:
        if ":" not in rest[0]:
            try:
                core.resolve(rest[0], cwd)
            except (RefError, DatasetNotFound, InvalidInput):
                break
        refs_found.append(rest.pop(0))
    refs_found += [None] * (2 - len(refs_found))
    return refs_found[0], refs_found[1], rest


def files(core: Core, ref: str, path: str = "", recursive: bool = False,
          cwd: str | os.PathLike[str] = ".") -> Iterator[FileRow]:
    """The entries of a version's directory `path` (the root by default); with
    `recursive`, every file and link below it, in path order. The rows stream: a listing
    of a million files holds one directory at a time, never the version. A path the
    version lacks is refused before the first row."""
    v = core.resolve(ref, cwd)
    rel = normalize_user_path(path)
    found = tree.find(v.tree, core.read_tree, rel) if rel else None
    if rel and found is None:
        raise InvalidInput(f"{path} is not in version {v.id}")
    if found is not None and found[1] != tree.DIR:
        return iter([FileRow.of(rel, *found[1:])])
    root = v.tree if found is None else found[4]
    if not recursive:
        return (FileRow.of(f"{rel}/{row[0]}" if rel else row[0], *row[1:])
                for row in tree.entries(root, core.read_tree))
    return (FileRow.of(p, e.kind, e.mode, e.size, e.oid, e.chunks) for p, e in
            tree.iter_sorted(root, core.read_tree, prefix=f"{rel}/" if rel else ""))


def get_files(core: Core, ref: str, target: str | os.PathLike[str], paths: list[str] | None = None,
              cwd: str | os.PathLike[str] = ".") -> int:
    """Copy files of a version into `target` (overwriting same-named files only). The
    version's trees are walked, not flattened: its files are placed (and, if it was
    only fetched, first downloaded) FRESH_CHUNK at a time."""
    v = core.resolve(ref, cwd)
    selected = _select_paths(lambda rel: tree.find(v.tree, core.read_tree, rel) is not None,
                             paths, Path(cwd).resolve(), Path(target))
    if selected is not None:   # (one named under another is placed with it)
        selected = {p for p in selected if not ancestors([p]) & selected}

    def items() -> Iterator[tuple[str, Entry]]:
        if selected is None:
            yield from tree.iter_files(v.tree, core.read_tree)
            return
        for path, row in tree.find_many(v.tree, core.read_tree, selected).items():
            if row[1] == tree.DIR:
                yield from tree.iter_files(row[4], core.read_tree, path)
            else:
                yield path, Entry(*row[1:])

    dest = Path(target).resolve()
    _check_target_outside_store(core, dest)
    count = nbytes = 0
    for _p, e in items():
        count += 1
        nbytes += e.size
    fetched = core.index.promised_by(v.id) is not None
    check_room(core, dest, "auto", items, claimed=nbytes, fetched=fetched)
    links = dict(tree.iter_files(v.tree, core.read_tree, only=tree.LINK))
    downloads = _Downloads(core, v)   # (one source, opened at the first blob missing)
    extra = list(links.values())
    for chunk in worktree.batches(items(), lambda it: it[1].size, FRESH_CHUNK,
                                  FRESH_CHUNK_BYTES):   # (all here before any write)
        _ensure_for_paths(core, v, chunk, extra, downloads)
        extra = []
    if extra:
        _ensure_for_paths(core, v, [], extra, downloads)
    tree.validate_links(links, core.objects.read)
    dest.mkdir(parents=True, exist_ok=True)
    placer = worktree.Materializer(core.objects, dest, stat_rows=False)
    with core.reporter.task("copying", count, nbytes) as advance:
        for chunk in worktree.batches(items(), lambda it: it[1].size, FRESH_CHUNK,
                                      FRESH_CHUNK_BYTES):
            placer.place(chunk, advance)
    return count


def open_file(core: Core, ref: str, path: str, cwd: str | os.PathLike[str] = ".") -> BinaryIO:
    """A file of a version, opened for reading; its bytes are verified before it is returned."""
    v = core.resolve(ref, cwd)
    rel = normalize_user_path(path)
    entry = entries_at(core, v, [rel]).get(rel) if rel else None
    if entry is None or entry.kind != tree.FILE:
        raise InvalidInput(f"{path} is not a file of version {v.id}")
    return open_entry(core, v, rel, entry)


def open_entry(core: Core, v: Version, rel: str, entry: tree.Entry) -> BinaryIO:
    """The file `rel` of version `v`, whose entry the caller has read from the version's
    trees (a listing it keeps): opened for reading, its bytes verified."""
    if entry.chunks:
        chunks = core.chunks(entry)
        return io.BufferedReader(ChunkedReader(chunks, _store_chunks(core, v, chunks),
                                               entry.chunks),
                                 _READ_AHEAD)
    if not core.objects.has(entry.oid):
        _ensure_for_paths(core, v, [(rel, entry)])
    if core.index.locate(entry.oid) is None and core.objects.has_loose(entry.oid):
        try:
            return core.objects.open_loose(entry.oid)
        except CorruptObject:
            raise CorruptObject(f"object {entry.oid[:12]} ({rel}) is corrupt",
                                hint="run `dsv verify` to list every damaged object") from None
    return io.BytesIO(core.objects.read(entry.oid))


_READ_AHEAD = 1 << 20
"""Bytes of a chunked file a read brings from the store at once (about 8 chunks)."""
_FETCH_AHEAD = 16 << 20
"""At most this many bytes of chunks after a missing one are downloaded with it, once
the reads are sequential (see `_store_chunks`)."""
_FIRST_AHEAD = 1 << 20
"""The window of the first sequential miss; each next one doubles it, to _FETCH_AHEAD."""


_WHOLE_CHECKED: set[str] = set()
"""Chunk lists (by their own object id, which their chunks, file id and size make) whose
chunks this process has read front to back and found to make the file."""
_WHOLE_CHECKED_MAX = 1 << 16
_HASH_GAP = 1 << 20
"""How far ahead of the hashed bytes a read may land and still be hashed up to first (a
mount's read-ahead arrives a few reads of 128 KiB out of order; a read further ahead is
a read of part of the file, which must fetch only the chunks it covers)."""


class ChunkedReader(io.RawIOBase):
    """A chunked file, read and seeked without putting it together: a read takes the
    chunks its range covers from `source(i)` (chunk i's bytes, checked against its id by
    the source), so reading part of a file reads only that part. A chunk of another
    length than the list says is refused.

    Intact chunks in another order (a hostile chunk list) make another file: what is read
    front to back, from offset 0 on, is also hashed, and the read that would complete
    the file raises CorruptObject instead if the whole is not the file's id. A read of
    part of the file is checked chunk by chunk only (nothing else can check it). A chunk
    list found whole once is not hashed again by this process (`_WHOLE_CHECKED`: a
    training loop reads the same files every epoch; the hash made a first 512 MiB read
    from the store take 0.39 s instead of 0.23 s, measured). A read up to _HASH_GAP
    ahead of the hashed bytes hashes the gap first (`_hash_to`)."""

    def __init__(self, chunks: tree.ChunkList,
                 source: Callable[[int], bytes | memoryview], list_id: str) -> None:
        """`list_id`: the chunk list's own object id (which its chunks, the file's id and
        size make)."""
        super().__init__()
        self._source = source
        self._chunks = chunks.chunks
        self._size = chunks.size
        self._whole = chunks.oid
        self._starts = list(itertools.accumulate((n for _c, n in self._chunks), initial=0))
        self._pos = 0
        self._held: tuple[int, bytes | memoryview] = (-1, b"")
        self._hasher = new_hasher()   # (its pieces are a chunk at most: no threads)
        self._list_id = list_id
        # (bytes from offset 0 on that went through `_hasher`; -1: checked before, or
        # given up after a read far ahead of them; see `_hash_to`)
        self._hashed = -1 if list_id in _WHOLE_CHECKED else 0
        self._bad = False   # (found not to make the file: every later read refuses)

    def readable(self) -> bool:
        """Always: a reader."""
        return True

    def seekable(self) -> bool:
        """Always: any offset is a chunk and an offset in it."""
        return True

    def tell(self) -> int:
        """The offset the next read starts at."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to `offset` (from the start, the current offset or the end)."""
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        base = bases[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the current offset, to the end of one chunk at most."""
        if self._bad:
            raise self._refusal()
        if self._pos >= self._size:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        n = min(len(memoryview(buffer)), self._starts[i + 1] - self._pos)
        if self._hashed == -1 and self._pos == 0 and self._list_id not in _WHOLE_CHECKED:
            self._hasher = new_hasher()   # (given up before: a read from the start
            self._hashed = 0              # begins again, from nothing)
        if 0 <= self._hashed < self._pos + n:
            self._hash_to(self._pos + n)
        data = self._chunk(i)
        at = self._pos - self._starts[i]
        view = memoryview(buffer).cast("B")
        view[:n] = memoryview(data)[at:at + n]
        self._pos += n
        return n

    def _hash_to(self, end: int) -> None:
        """Hash the file up to `end`, from where hashing stopped: a read a little ahead
        of it (a mount's read-ahead arrives out of order) first hashes the gap, from the
        chunks (the ones it reads next, mostly held or prefetched already); one more than
        _HASH_GAP ahead gives the whole-file check up until a read from the start. The
        read that completes the file raises instead if the whole is not the file's id,
        and so does every read after it."""
        if self._pos - self._hashed > _HASH_GAP:
            self._hashed = -1
            return
        while self._hashed < end:
            j = bisect.bisect_right(self._starts, self._hashed) - 1
            data = self._chunk(j)
            at = self._hashed - self._starts[j]
            m = min(len(data) - at, end - self._hashed)
            self._hasher.update(memoryview(data)[at:at + m])
            self._hashed += m
        if self._hashed == self._size:
            if self._hasher.hexdigest() != self._whole:
                self._bad = True
                raise self._refusal()
            if len(_WHOLE_CHECKED) >= _WHOLE_CHECKED_MAX:
                _WHOLE_CHECKED.clear()
            _WHOLE_CHECKED.add(self._list_id)

    def _refusal(self) -> CorruptObject:
        return CorruptObject(f"file {self._whole[:12]}: its chunks, each intact, do not "
                             f"make it (a damaged or hostile chunk list)")

    def _chunk(self, i: int) -> bytes | memoryview:
        if self._held[0] == i:
            return self._held[1]
        oid, length = self._chunks[i]
        data = self._source(i)
        if len(data) != length:
            raise CorruptObject(f"object {oid[:12]} (a chunk) has {len(data)} bytes where "
                                f"its chunk list says {length}")
        self._held = (i, data)
        return data


def _store_chunks(core: Core, version: Version, chunks: tree.ChunkList
                  ) -> Callable[[int], bytes]:
    """Chunk i of a file from the store; one it lacks is downloaded then (by ranged
    reads of the remote's packs, through the cluster cache when one is configured).
    A read of a range gets the chunks it covers and no more; reads that go on where the
    last download ended get the chunks after theirs too, a window that doubles with
    each such miss (from _FIRST_AHEAD to _FETCH_AHEAD bytes): a file read through
    costs a few large requests, a seek-and-read costs its chunk."""
    listed = chunks.chunks
    ahead, follows = 0, -1   # (the window's bytes after its first chunk; where it ended)

    def source(i: int) -> bytes:
        nonlocal ahead, follows
        oid = listed[i][0]
        if not core.objects.has(oid):
            ahead = min(max(2 * ahead, _FIRST_AHEAD), _FETCH_AHEAD) if i == follows else 0
            window = [Entry(tree.FILE, 0o644, listed[i][1], oid)]
            total = 0
            for chunk, n in listed[i + 1:]:
                if total + n > ahead:
                    break
                window.append(Entry(tree.FILE, 0o644, n, chunk))
                total += n
            follows = i + len(window)
            ensure_blobs(core, version, window)
        return core.objects.read(oid)
    return source


def ensure_blobs(core: Core, version: Version, entries: list[Entry]) -> None:
    """Download the blobs of `entries` this store lacks (see sync.download.BlobSource)."""
    _Downloads(core, version)(entries)


class _Downloads:
    """`ensure_blobs` for a checkout that asks many times (a chunk of files at a time):
    the remote is opened once, at the first blob that is missing."""

    def __init__(self, core: Core, version: Version) -> None:
        self.core = core
        self.version = version
        self.source: BlobSource | None = None

    def __call__(self, entries: list[Entry], tap: Tap | None = None) -> None:
        needed = self.core.blobs(entries)
        lacking = self.core.objects.lacking(needed)
        if not lacking[0] and not lacking[1]:
            return  # the usual case: no lock, and no sync module to import
        with self.core.locked("download"):
            self._source()(needed, lacking, tap)

    def stage(self, entries: list[Entry], tap: Tap | None,
              pending: set[str]) -> tuple[Ingest | None, set[str]]:
        """`__call__` that leaves the objects in an ingest for the caller to publish and
        record (under the store lock, which it holds): (that ingest, None if nothing was
        lacking, and the ids it holds). `pending`: objects an earlier call brought that
        are not recorded yet (they count as here)."""
        needed = {oid: size for oid, size in self.core.blobs(entries).items()
                  if oid not in pending}
        small, large = self.core.objects.lacking(needed)
        if not small and not large:
            return None, set()
        ingest = Ingest(self.core.objects)
        try:
            self._source().fetch_into(ingest, needed, (small, large), tap)
        except BaseException:
            ingest.abort()
            raise
        return ingest, {*small, *large}

    def _source(self) -> BlobSource:
        """The download source, made at the first blob that is missing."""
        if self.source is None:
            from .sync import download
            self.source = download.BlobSource(self.core, self.version)
        return self.source

    def tally(self, report: CheckoutReport) -> CheckoutReport:
        """`report` with what was downloaded for it."""
        if self.source is not None:
            got = self.source.report
            report.downloaded, report.bytes_downloaded = got.objects_received, got.bytes_received
            report.from_cache = got.from_cache
        return report


def _ensure_for_paths(core: Core, v: Version, items: list[tuple[str, Entry]],
                      extra: list[Entry] | None = None,
                      downloads: _Downloads | None = None) -> None:
    """`ensure_blobs` for files a user asked for by path (through `downloads`, when the
    caller asks a chunk at a time): a failure names those files (not a pack or an
    object id) before saying why."""
    try:
        entries = [e for _p, e in items] + (extra or [])
        if downloads is not None:
            downloads(entries)
        else:
            ensure_blobs(core, v, entries)
    except DsvError as exc:
        lacking = [p for p, e in items if not core.holds(e)]
        if lacking:
            shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more"
                                              if len(lacking) > 3 else "")
            exc.message = f"cannot get {shown} of {v.id}: {exc.message}"
            exc.args = (exc.message,)
        raise


def _edited(current: Entry, base: Entry | None, with_mode: bool) -> bool:
    """Whether a file differs from what the last checkout or commit left there."""
    if base is None:
        return True
    if with_mode:
        return not _same_entry(current, base)
    return (current.kind, current.oid) != (base.kind, base.oid)


def _same_entry(a: Entry | None, b: Entry) -> bool:
    """Same kind, content and mode class (older trees may hold finer modes)."""
    return a is not None and a.kind == b.kind and a.oid == b.oid and \
        mode_class(a.mode) == mode_class(b.mode)
