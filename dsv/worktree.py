"""Working directories: scanning, the stat cache, snapshots, status and placing files.

Owns everything that reads or writes a dataset's files on disk: the scan (one lstat per
file, no reads), deciding from the stat cache which files must be hashed, hashing them
into the object store, comparing manifests, and materialising a manifest into a
directory (reflink/copy by default, hardlink/symlink read-only when asked). Must never
touch the index: callers pass the stat cache in and write the rows it returns.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from pathlib import Path

from . import chunking, fileio, ignore, native
from .faults import crashpoint
from .errors import CorruptObject, InvalidInput, MissingObject, UnsafePath
from .hashing import hash_bytes, hash_fd, hash_file, new_hasher
from .model import RUN_DIGEST_BYTES, Changes, StatRow, storable
from .objects import (KIND_BLOB, KIND_TREE, PACK_THRESHOLD, RACY_NS, WORKTREE_BUFFER, Ingest,
                      ObjectStore, bounded_where)
from .reporting import FileBytes, number
from .paths import (check_links, check_relpath, check_symlink_target, is_reserved,
                    is_temp_name, mode_class, placed_mode)
from .tree import FILE, LINK, ChunkList, Entry, Manifest, encode_chunks, read_chunks

if TYPE_CHECKING:  # imported lazily at run time: read-only commands never start threads
    from concurrent.futures import Future, ThreadPoolExecutor

LINK_MODES = ("copy", "reflink", "hardlink", "symlink")
_WORKERS = 4
_LARGE_WORKERS = 2
_READ_GROUP = 128
_WRITE_BATCH = 256
_WRITE_BATCH_BYTES = 8 << 20
_READ_GROUP_BYTES = 8 << 20  # (two groups are in memory at once: the one read ahead)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Progress = Callable[[int, int], None]
"""Called with (files done, bytes done) increments."""


FileStat = tuple[int, int, int, int, str]
"""What a scan sees of one file: (size, mtime_ns, inode, permission bits, kind).

Plain tuples, not objects: status builds one per file, and its first four fields compare
in one step with the first four of a stat-cache row (index.StatRow).
"""


Run = list[tuple[str, FileStat]]
"""Files a walk yields at once: consecutive in path order."""

RUN_FILES = 4096
"""A walk's run ends once it holds this many files, where a directory (or the files of one
between two of its subdirectories) ends; a run that would hold twice as many is cut into
pieces of about this many (`_cuts`)."""


def scan(root: Path, excluded: Iterable[str] = (), leftovers: list[str] | None = None,
         stores: list[str] | None = None, ignore_files: bool = False,
         ignored: list[str] | None = None, links: list[str] | None = None
         ) -> tuple[dict[str, FileStat], list[str]]:
    """Every file and symlink under `root` (relative POSIX paths, in path order) and what
    was skipped: `walk` gathered into one dictionary, for callers that need it whole."""
    skipped: list[str] = []
    found: dict[str, FileStat] = {}
    for run in walk(root, skipped, excluded, leftovers, stores, ignore_files, ignored, links):
        found.update(run)
    return found, skipped


def walk(root: Path, skipped: list[str], excluded: Iterable[str] = (),
         leftovers: list[str] | None = None, stores: list[str] | None = None,
         ignore_files: bool = False, ignored: list[str] | None = None,
         links: list[str] | None = None, start: str = "",
         rules: ignore.Rules = ()) -> Iterator[Run]:
    """Every file and symlink under `root` (relative POSIX paths), in runs, in path order
    (the order of the strings, so the order SQLite keeps the stat cache in): memory grows
    with the largest directory, not with the tree. What is skipped is added to `skipped`.

    `excluded` are root-relative directories left out (the store itself, nested datasets).
    Temp files of an interrupted checkout are never content; their paths are added to
    `leftovers` when given, and directories left out because they hold another store to
    `stores`. With `ignore_files`, what `.dsvignore` files leave out (dsv.ignore) is not
    scanned; it is listed in `ignored` when given (directories with a trailing `/`).
    Symlinks found are also listed in `links` when given. One lstat per entry, no reads;
    a symlink is recorded as one, never descended into. With `start` (a root-relative
    directory the caller has checked, see `scan_paths`, and the `.dsvignore` `rules` of
    the directories above it), only what lies under it is walked.

    This loop is most of what a status or commit of a large directory costs: names come
    from `os.listdir` (no DirEntry objects) and each lstat's mode says what the entry is,
    so every entry costs one syscall and one tuple. A directory's entries are sorted with
    a subdirectory keyed `name/`: its files then come exactly where their paths sort.
    """
    skip = set(excluded)
    no_rules: ignore.Rules = ()
    # Open directories: [files sorted, subdirectories sorted with the position among the
    # files where each sorts, next subdirectory]; a subdirectory is (rel, abs, rules).
    frames: list[list[Any]] = []
    listing = functools.partial(_listing, skip=skip, skipped=skipped, leftovers=leftovers,
                                stores=stores, ignore_files=ignore_files, ignored=ignored,
                                links=links)
    top = listing(start, os.path.join(os.fspath(root), start) if start else os.fspath(root),
                  rules or no_rules)
    if top is not None:
        frames.append([*top, 0, 0])
    run: Run = []
    while frames:
        frame = frames[-1]
        files, subdirs, sub_i, file_i = frame
        if sub_i < len(subdirs):
            at, rel, abs_dir, rules = subdirs[sub_i]
            run.extend(files[file_i:at])
            frame[2], frame[3] = sub_i + 1, at
            sub = listing(rel, abs_dir, rules)
            if sub is not None:
                frames.append([*sub, 0, 0])
        else:
            run.extend(files[file_i:])
            frames.pop()
        if len(run) >= 2 * RUN_FILES:   # a large directory: in pieces
            at = 0  # (each piece sliced once: no copy of the rest at every cut)
            for length in _cuts(run):
                yield run[at:at + length]
                at += length
            del run[:at]
        if len(run) >= RUN_FILES:
            yield run
            run = []
    if run:
        yield run


def scan_paths(root: Path, paths: Iterable[str], excluded: Iterable[str], skipped: list[str],
               stores: list[str], links: list[str]) -> dict[str, FileStat]:
    """The files and symlinks at or under each of `paths` (root-relative), exactly as a
    whole walk with `.dsvignore` files would find them there (what a commit of some
    paths looks at), without looking anywhere else: `walk_paths` gathered into one
    dictionary."""
    found: dict[str, FileStat] = {}
    for run in walk_paths(root, paths, excluded, skipped, stores, links):
        found.update(run)
    return found


def walk_paths(root: Path, paths: Iterable[str], excluded: Iterable[str], skipped: list[str],
               stores: list[str], links: list[str], blockers: bool = False
               ) -> Iterator[Run]:
    """The files and symlinks at or under each of `paths` (root-relative), in runs, path
    by path (each path's in path order), exactly as a whole walk with `.dsvignore` files
    would find them there, without looking anywhere else: each directory above a path is
    lstat'ed (it must be one, never a link), its dotted names listed (a nested store
    leaves it out) and its `.dsvignore` read. A path that is gone, left out or ignored
    adds nothing; the lists are filled as `walk` fills them. With `blockers`, a file or
    link that stands where a path needs a directory is yielded too (a checkout of the
    path replaces it)."""
    skip = set(excluded)
    base = os.fspath(root)
    top_rules: ignore.Rules = ()
    if os.path.lexists(os.path.join(base, ignore.IGNORE_FILE)):
        top_rules = ignore.load(top_rules, "", base)
    for rel in paths:
        parts = rel.split("/")
        rules, here = top_rules, base
        for i, name in enumerate(parts):
            sub = "/".join(parts[:i + 1])
            if sub in skip or (name[0] == "." and (is_reserved(name) or is_temp_name(name))):
                break
            try:
                st = os.lstat(os.path.join(here, name))
            except (FileNotFoundError, NotADirectoryError):
                break
            kind = st.st_mode & 0o170000
            last = i == len(parts) - 1
            if rules and ignore.ignored(rules, sub, kind == 0o040000):
                break
            if kind != 0o040000:
                if kind in (0o100000, 0o120000) and (last or blockers):
                    yield [(sub, (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode & 0o7777,
                                  FILE if kind == 0o100000 else LINK))]
                    if kind == 0o120000:
                        links.append(sub)
                elif last:
                    skipped.append(sub)
                break  # (a file, or a link never followed, where a directory was)
            if last:
                yield from walk(root, skipped, skip, stores=stores, ignore_files=True,
                                links=links, start=sub, rules=rules)
                break
            here = os.path.join(here, name)
            dotted = [n for n in os.listdir(here) if n[0] == "."]
            if any(is_reserved(n) and _is_dir(os.path.join(here, n)) for n in dotted):
                stores.append(sub)
                break
            if ignore.IGNORE_FILE in dotted:
                rules = ignore.load(rules, sub, here)


def _cuts(run: Run) -> Iterator[int]:
    """Where to cut a long run (a large directory), each cut counted from the one before:
    after each path whose CRC-32 is a multiple of RUN_FILES (a power of two: pieces of
    RUN_FILES on average), and every 4 RUN_FILES without one. A file added or removed
    then moves the cuts of its own piece only, so the other pieces keep their digests
    (ScanDigest). The stretch after the last cut stays with the run."""
    start = 0
    marks = native.cut_marks(run, RUN_FILES)
    for mark in [*marks, len(run)]:
        while mark - start > 4 * RUN_FILES:
            start += 4 * RUN_FILES
            yield 4 * RUN_FILES
        if mark < len(run):
            yield mark - start
            start = mark


def _listing(rel_dir: str, abs_dir: str, rules: ignore.Rules, skip: set[str],
             skipped: list[str], leftovers: list[str] | None, stores: list[str] | None,
             ignore_files: bool, ignored: list[str] | None, links: list[str] | None
             ) -> tuple[Run, list[tuple[int, str, str, ignore.Rules]]] | None:
    """One directory for `walk`: its files sorted, and its subdirectories, each with the
    position among those files where its paths sort (keyed `name/`); None when it is
    gone or left out."""
    prefix = rel_dir + "/" if rel_dir else ""
    try:
        names = os.listdir(abs_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    base = abs_dir + "/"
    dotted = [name for name in names if name[0] == "."]
    if rel_dir and any(is_reserved(name) and _is_dir(base + name) for name in dotted):
        if stores is not None:
            stores.append(rel_dir)
        return None  # another store's workspace, as git leaves out a nested repository
    if ignore_files and ignore.IGNORE_FILE in dotted:
        rules = ignore.load(rules, rel_dir, abs_dir)
    if dotted:
        _leave_out_dotted(names, dotted, base, prefix, skipped, leftovers)
    names.sort()   # (the files are then in path order as they are made)
    try:  # (each lstat relative to the directory: no walk of the path from / each time)
        fd = os.open(abs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return None  # (replaced by a link since it was listed: never followed)
    try:
        return _stat_names(names, fd, prefix, base, rules, skip, skipped, ignored, links)
    finally:
        os.close(fd)


def _stat_names(names: list[str], dir_fd: int, prefix: str, base: str,
                rules: ignore.Rules, skip: set[str], skipped: list[str],
                ignored: list[str] | None, links: list[str] | None
                ) -> tuple[Run, list[tuple[int, str, str, ignore.Rules]]]:
    """The lstat half of `_listing`: `names` (sorted) as files and subdirectories."""
    files, found_links, names_of_dirs, others = native.stat_names(dir_fd, names, prefix,
                                                                 FILE, LINK)
    if rules:
        is_ignored = ignore.ignored
        kept: Run = []
        for row in files:
            if not is_ignored(rules, row[0], False):
                kept.append(row)
            elif ignored is not None:
                ignored.append(row[0])
        if len(kept) < len(files) and found_links:
            found_links = [rel for rel, fs in kept if fs[4] == LINK]
        files = kept
    if links is not None:
        links.extend(found_links)
    for name in others:
        if rules and ignore.ignored(rules, prefix + name, False):
            if ignored is not None:
                ignored.append(prefix + name)
        else:
            skipped.append(prefix + name)
    dirs: list[str] = []
    for name in names_of_dirs:
        rel = prefix + name
        if rules and ignore.ignored(rules, rel, True):
            if ignored is not None:
                ignored.append(rel + "/")
        elif rel not in skip:
            dirs.append(rel)
    dirs.sort(key=_dir_key)
    return files, [(bisect_left(files, (rel + "/",)), rel, base + rel[len(prefix):], rules)
                   for rel in dirs]


def _dir_key(rel: str) -> str:
    return rel + "/"


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _leave_out_dotted(names: list[str], dotted: list[str], base: str, prefix: str,
                      skipped: list[str], leftovers: list[str] | None) -> None:
    """Take out of `names` the `dotted` ones that are never content. Any `.dsv` is a store
    (this one or a nested one) or an attempt to look like one; a temp file is a leftover
    of an interrupted checkout (or a name that only looks like one: status reports it)."""
    for name in dotted:
        if is_reserved(name):
            if not _is_dir(base + name):
                skipped.append(prefix + name)
        elif not is_temp_name(name):
            continue
        elif leftovers is not None and not _is_dir(base + name):
            leftovers.append(prefix + name)
        else:
            skipped.append(prefix + name)
        names.remove(name)


@dataclass
class StatChanges:
    """What a walk shows beside the stat cache (see `stat_changes`)."""

    unvouched: dict[str, FileStat]   # walked files the cache does not vouch for
    gone: list[str]                  # cached paths the walk did not find
    rows: int                        # rows the cache holds (a known run counts its files)
    files: int = 0                   # files walked
    runs: list[str | None] = field(default_factory=list)  # each run's digest (ScanDigest)
    kept: list[str] = field(default_factory=list)    # ... of the runs whose every file
    #                                  the cache vouches for
    clean: list[str] = field(default_factory=list)   # ... of those with no gone path
    #                                  in their stretch either


def settle(root: str | os.PathLike[str], rows: list[tuple[str, StatRow]]
           ) -> list[tuple[str, StatRow]]:
    """Stat-cache rows of files just written, made trustworthy. A file written within
    one timestamp tick (RACY_NS) of its row's time is racily clean: the next status
    would hash it again (all 200,000 files of a fresh clone). So the tick is waited out
    once, every file is stat'ed again, and the rows of those unchanged since they were
    written are kept with the new time; a file that changed meanwhile loses its row (and
    is hashed by the next status)."""
    if not rows:
        return rows
    newest = max(row[1] for _rel, row in rows)
    wait = newest + RACY_NS + 1_000_000 - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    stamped = time.time_ns()
    by_dir: dict[str, list[tuple[str, str, StatRow]]] = {}
    for rel, row in rows:
        parent, _, name = rel.rpartition("/")
        by_dir.setdefault(parent, []).append((name, rel, row))
    kept = []
    for parent, group in by_dir.items():
        now = _restat(os.path.join(root, parent), [name for name, _rel, _row in group])
        for name, rel, row in group:
            if now.get(name) == row[:4] and row[1] < stamped - RACY_NS:
                kept.append((rel, (*row[:5], stamped)))
    return kept


def _restat(folder: str, names: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """(size, mtime_ns, inode, permission bits) of those of `names` in `folder` that are
    files or links, lstat'ed by the C loop without the GIL (a fresh clone's 100,000 files
    each waited for the GIL after its os.lstat while the next chunk downloaded); nothing
    for a folder that cannot be opened. (O_PATH: search permission is enough, as for
    lstat. A failure other than a vanished name falls back to one lstat a name, so it
    costs that name its row, not the folder's.)"""
    try:
        fd = os.open(folder, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY
                     | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        files = native.stat_names(fd, names, "", FILE, LINK)[0]
    except OSError:
        files = []
        for name in names:
            try:
                files += native.stat_names(fd, [name], "", FILE, LINK)[0]
            except OSError:
                continue
    finally:
        os.close(fd)
    return {name: st[:4] for name, st in files}


RowsBetween = Callable[[str, "str | None"], list[tuple[str, int, int, int, int, int]]]
"""The stat cache's rows (path, size, mtime_ns, inode, mode, cached_ns) of the paths after
the first argument up to the second (to the end when None), in path order."""


def stat_changes(runs: Iterable[Run], rows_between: RowsBetween,
                 known: Collection[str] = (), tree_files: int = -1) -> StatChanges:
    """The walked files whose content the stat cache cannot vouch for, and the cached
    paths that are gone, from runs in path order (`walk`), each merged with the cache's
    rows of its own stretch of paths: memory grows with what changed, not with the tree.

    A run whose digest is `known` (one that a walk the cache vouched for saw, with the
    same tree: see ScanDigest) is vouched for as it is, reading no row; so a directory of
    200,000 files with one change reads the rows of one run, and a walk of known runs
    holding `tree_files` files (as many as a walk counted in that tree when it stored
    them: not a count a version record claims) reads none at all. Otherwise a row vouches for
    a file when size, mtime, inode and mode match and the file was not modified so close
    to the moment it was cached that a later write could share its mtime (git's "racily
    clean" entries: those are hashed again). Commit and status then hash, and look up in
    the head's tree, only what this returns."""
    unvouched: dict[str, FileStat] = {}
    gone: list[str] = []
    count = 0
    racy = RACY_NS
    digest = ScanDigest()
    names: list[str | None] = []
    kept: list[str] = []
    clean: list[str] = []
    last = ""
    for run in runs:
        if run[0][0] <= last:
            raise AssertionError("bug in dsv: a walk left path order")
        name = digest.add(run)
        names.append(name)
        after, last = last, run[-1][0]
        if name is not None and name in known:
            count += len(run)
            kept.append(name)
            clean.append(name)
            continue
        rows = rows_between(after, last)
        count += len(rows)
        was_unvouched, was_gone = len(unvouched), len(gone)
        pending = iter(rows)
        row = next(pending, None)
        for rel, fs in run:
            while row is not None and row[0] < rel:
                gone.append(row[0])
                row = next(pending, None)
            if row is None or row[0] != rel:
                unvouched[rel] = fs    # a new file: no row at all
                continue
            if fs[0] != row[1] or fs[1] != row[2] or fs[2] != row[3] or fs[3] != row[4] or \
                    row[2] >= row[5] - racy:
                unvouched[rel] = fs
            row = next(pending, None)
        if name is not None and len(unvouched) == was_unvouched:
            kept.append(name)
            if len(gone) == was_gone:
                clean.append(name)
    if len(clean) == len(names) and count == tree_files:
        return StatChanges(unvouched, gone, count, digest.files, names, kept, clean)
    tail = rows_between(last, None)
    count += len(tail)
    gone.extend(row[0] for row in tail)
    return StatChanges(unvouched, gone, count, digest.files, names, kept, clean)


class ScanDigest:
    """Digests of what a walk saw, run by run: each covers the last path of the run
    before it, then the run's paths, kinds and stats (None when a value does not fit the
    64-bit fields).

    Once the stat cache vouches for a run's every file, and no cached path between the
    run before it and the run's last path is gone, the run's digest is stored beside the
    tree (index.put_clean_scan). A later walk with a run of the same digest saw, in that
    stretch of paths, the same files with the same stats as then, so the same contents
    (the stat cache's own rule) and no path gone from the tree: no row of it need be
    read. A change or a new file makes its own run's digest new; one that moves where
    runs end makes the runs after it new up to where their ends meet again (in a large
    directory, the next cut `_cuts` makes), which costs reading their rows.
    """

    def __init__(self) -> None:
        self.files = 0
        self._last = ""

    def add(self, run: Run) -> str | None:
        """The digest of the walk's next run."""
        after, self._last = self._last, run[-1][0]
        self.files += len(run)
        payload = native.run_payload(run, after)
        if payload is None:
            return None
        hasher = new_hasher()
        hasher.update(b"dsv stat run 3\n%d\n" % len(run))
        hasher.update(payload)
        return hasher.hexdigest(RUN_DIGEST_BYTES)


def _stored_mode(fs: FileStat) -> int:
    # Only the owner-exec distinction is recorded (see paths.mode_class).
    return 0o777 if fs[4] == LINK else mode_class(fs[3])


@dataclass
class Snapshot:
    """The manifest of a directory as it is now, plus the cache rows worth saving."""

    manifest: Manifest
    stat_rows: list[tuple[str, StatRow]]
    hashed_files: int = 0
    links: dict[str, str] = field(default_factory=dict)   # symlink path → target


def snapshot(root: Path, files: dict[str, FileStat], cache: dict[str, StatRow],
             ingest: Ingest | None, progress: Progress | None = None,
             strict_links: bool = True, fences: Iterable[str] = (),
             other_links: Iterable[str] = (), check: bool = True,
             chunks_of: Callable[[str, str], str | None] | None = None) -> Snapshot:
    """Manifest of `files`, hashing only those the stat cache cannot vouch for.

    With an `ingest`, new contents are stored (commit); without one they are only hashed
    (status). Cache rows always name stored objects (gc drops rows of objects it removes),
    so a vouched-for file needs no store lookup. Symlinks are stored as blobs holding
    their target; one pointing out of the dataset is an error unless `strict_links` is
    False (a --to directory filled with `--link symlink`, only being compared). With an
    `ingest`, the links are checked through each other and through `other_links`, the
    dataset's symlinks that are not in `files` (a commit that snapshots only what changed
    still checks every link of the version it makes). A caller that snapshots a walk in
    parts passes `check=False` and checks the links of all parts itself.

    A commit stores files of chunking.CHUNK_THRESHOLD bytes or more in chunks (their
    entries name a chunk list too). A cache row vouches only for a file's content, so a
    commit given a `cache` passes `chunks_of(path, oid)`: how the version it builds on
    stores that content at that path (its chunk list, "" when whole, None when it has
    no such file: then the file is read again).
    """
    manifest: Manifest = {}
    rows: list[tuple[str, StatRow]] = []
    result = Snapshot(manifest, rows)
    large: list[tuple[str, FileStat, int, Future[tuple[str, int]]]] = []
    vouched = 0
    pool = None  # a ThreadPoolExecutor, started at the first large file

    def record(rel: str, fs: FileStat, oid: str, size: int, hashed_at: int,
               listed: str = "") -> None:
        result.hashed_files += 1
        crashpoint("snapshot:file-hashed")
        manifest[rel] = Entry(fs[4], _stored_mode(fs), size, oid, listed)
        if progress:
            progress(1, size)
        if size == fs[0] and storable(fs):
            rows.append((rel, (fs[0], fs[1], fs[2], fs[3], oid, hashed_at)))

    small: list[tuple[str, FileStat]] = []
    chunked: list[tuple[str, FileStat, int]] = []
    try:
        for rel, fs in files.items():
            row = cache.get(rel)
            listed: str | None = ""
            if row is not None and fs[:4] == row[:4] and fs[1] < row[5] - RACY_NS and \
                    (chunks_of is None or fs[0] < chunking.CHUNK_THRESHOLD or
                     (listed := chunks_of(rel, row[4])) is not None):
                # (_stored_mode inlined: this line runs once per file of the dataset)
                manifest[rel] = Entry(fs[4], 0o777 if fs[4] == LINK else
                                      0o755 if fs[3] & 0o100 else 0o644, fs[0], row[4],
                                      listed or "")
                vouched += 1
                if fs[4] == LINK and ingest is not None:  # (status reads nothing vouched for)
                    result.links[rel] = os.readlink(os.path.join(root, rel))
                continue
            check_relpath(rel)
            if fs[4] != LINK and fs[0] < PACK_THRESHOLD:
                small.append((rel, fs))
                continue
            path = os.path.join(root, rel)
            hashed_at = time.time_ns()
            if fs[4] == LINK:
                target = os.readlink(path)
                if strict_links or ingest is not None:
                    result.links[rel] = check_symlink_target(rel, target)
                data = target.encode("utf-8", "surrogateescape")
                oid = hash_bytes(data)
                if ingest is not None:
                    ingest.add(oid, KIND_BLOB, data)
                record(rel, fs, oid, len(data), hashed_at)
                continue
            if ingest is not None and \
                    chunking.CHUNK_THRESHOLD <= fs[0] <= chunking.MAX_CHUNKED_SIZE:
                chunked.append((rel, fs, hashed_at))  # (in this thread: it feeds `ingest`)
                continue
            # Large files go to worker threads: copying and fsyncing one overlaps
            # hashing the next (blake3 and the kernel both run without the GIL).
            if pool is None:
                from concurrent.futures import ThreadPoolExecutor
                pool = ThreadPoolExecutor(max_workers=_LARGE_WORKERS)
            job = (ingest.add_large_file if ingest is not None else _hash_large)
            large.append((rel, fs, hashed_at, pool.submit(job, path)))
        if progress and vouched:
            progress(vouched, 0)
        for group in _read_small_files(root, small):
            for rel, fs, data, oid, hashed_at in group:
                if ingest is not None:
                    ingest.add(oid, KIND_BLOB, data)
                record(rel, fs, oid, len(data), hashed_at)
        for rel, fs, hashed_at in chunked:
            assert ingest is not None
            oid, size, listed = store_chunked(ingest, os.path.join(root, rel))
            record(rel, fs, oid, size, hashed_at, listed)
        for rel, fs, hashed_at, future in large:
            oid, size = future.result()
            record(rel, fs, oid, size, hashed_at)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if ingest is not None:
        for rel in other_links:
            result.links[rel] = os.readlink(os.path.join(root, rel))
        if check:  # what is stored: links through each other stay inside
            check_links(result.links, fences)
    return result


def _read_small_files(root: Path, small: list[tuple[str, FileStat]]
                      ) -> Iterator[list[tuple[str, FileStat, bytes, str, int]]]:
    """Read and hash small files, a group at a time (at most _READ_GROUP files and
    _READ_GROUP_BYTES). `native.read_files` reads each group without following a link
    anywhere below `root`; with its C version (no GIL held) a thread reads the next
    group while this one hashes the last and the caller stores it. (Python reads in
    threads were measured here and lost: the GIL serialises them.)"""
    groups = list(batches(small, lambda it: it[1][0], _READ_GROUP, _READ_GROUP_BYTES))
    if not groups:
        return
    # (the root as given, a link to it included, as a path walk takes it; nothing below
    # it is followed)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def read(group: list[tuple[str, FileStat]]) -> tuple[int, list[bytes]]:
        hashed_at = time.time_ns()  # (before any of the group is read: the racy rule)
        try:
            return hashed_at, native.read_files(root_fd, [rel for rel, _fs in group],
                                                [fs[0] for _rel, fs in group])
        except OSError as exc:
            raise _unreadable(root, exc) from exc

    reader = None
    try:
        if native.BUILT and len(groups) > 1:
            from concurrent.futures import ThreadPoolExecutor
            reader = ThreadPoolExecutor(1, "dsv-read")
        ahead: Future[tuple[int, list[bytes]]] | None = None
        for group, after in zip(groups, [*groups[1:], None], strict=True):
            if reader is None:
                hashed_at, datas = read(group)
            else:
                if ahead is None:
                    ahead = reader.submit(read, group)
                hashed_at, datas = ahead.result()
                ahead = reader.submit(read, after) if after else None
            yield [(rel, fs, data, hash_bytes(data), hashed_at)
                   for (rel, fs), data in zip(group, datas, strict=True)]
    finally:
        if reader is not None:
            reader.shutdown(wait=True, cancel_futures=True)
        os.close(root_fd)


def _unreadable(root: Path, exc: OSError) -> Exception:
    """What to raise for a file of a walk that `native.read_files` could not read."""
    path = os.path.join(root, exc.filename)
    if exc.errno == errno.ENOENT:
        return InvalidInput(f"{path} was removed while dsv read it",
                            hint="run the command again")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EINVAL):
        return UnsafePath(f"{path} is no longer a regular file under {root} (a link or a "
                          "special file took its place, or its directory's, while dsv read "
                          "it): not followed", hint="run the command again")
    return OSError(exc.errno, exc.strerror, path)


Item = TypeVar("Item")


def batches(items: Iterable[Item], size: Callable[[Item], int], most: int, most_bytes: int,
            key: Callable[[Item], str] | None = None) -> Iterator[list[Item]]:
    """`items` in runs of at most `most` items and `most_bytes` bytes (an item larger
    than that on its own), a run never holding two different `key`s."""
    batch: list[Item] = []
    total = 0
    last = None
    for item in items:
        n, k = size(item), key(item) if key else None
        if batch and (len(batch) == most or total + n > most_bytes or k != last):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
        last = k
    if batch:
        yield batch


def store_chunked(ingest: Ingest, path: str) -> tuple[str, int, str]:
    """Store the file at `path` in content-defined chunks (each a packed object, those
    the store holds already skipped) and its chunk list: (blake3 of the whole file, its
    size, the chunk list's id). Read once, without following a link."""
    # Non-blocking and regular files only: never hang on a FIFO put in a file's place.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{path} is not a regular file")
        oid, size, chunks = chunking.chunk_fd(
            fd, lambda pieces: ingest.add_borrowed(KIND_BLOB, pieces))
    finally:
        os.close(fd)
    data = encode_chunks(ChunkList(oid, size, chunks))
    listed = hash_bytes(data)
    ingest.add(listed, KIND_TREE, data)
    return oid, size, listed


def _hash_large(path: str) -> tuple[str, int]:
    size = os.stat(path).st_size
    return hash_file(path, size), size


def compare(base: Manifest, current: Manifest) -> Changes:
    """Added, modified and deleted paths going from `base` to `current`, sorted."""
    changes = Changes()
    sizes = changes.sizes
    for path, entry in current.items():
        old = base.get(path)
        if old is None:
            changes.added.append(path)
            changes.added_bytes += entry.size
            sizes[path] = (None, entry.size)
        elif old.oid != entry.oid or old.kind != entry.kind or \
                mode_class(old.mode) != mode_class(entry.mode):
            changes.modified.append(path)
            changes.modified_bytes += entry.size
            sizes[path] = (old.size, entry.size)
    for path, entry in base.items():
        if path not in current:
            changes.deleted.append(path)
            changes.deleted_bytes += entry.size
            sizes[path] = (entry.size, None)
    changes.added.sort()
    changes.modified.sort()
    changes.deleted.sort()
    return changes


# ---- placing files ----------------------------------------------------------------

def check_link_mode(link: str) -> None:
    """InvalidInput unless `link` is `auto` or one of LINK_MODES."""
    if link not in ("auto", *LINK_MODES):
        raise InvalidInput(f"unknown link mode {link!r}",
                           hint=f"choose one of: auto, {', '.join(LINK_MODES)}")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DIR_FDS = 2048       # directories kept open during one placement; more are reopened
_PROC_FD = os.path.isdir("/proc/self/fd")


class _Dirs:
    """Directories under a placement root, opened without following links.

    Every component below the root is opened with O_NOFOLLOW relative to its parent's
    descriptor, so no write dsv makes can follow a symlink that a version (or anyone
    else) planted on the way. Files are then created relative to these descriptors.
    """

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds: dict[str, int] = {"": self.root_fd}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def open(self, rel_dir: str, create: bool = False) -> tuple[int, bool]:
        """(fd, owned) of directory `rel_dir`; close the fd only if `owned`. With
        `create`, missing directories are made, and anything that is not a directory in
        the way (a file, a link) is removed first: it is not part of the target."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd, False
        # Down from the nearest directory already open, a component at a time (a loop,
        # not a recursion: a path of 4,096 bytes may be 2,048 directories deep).
        names: list[str] = []
        parent = rel_dir
        while fd is None:
            if not parent:
                raise RuntimeError("a directory opened after its tree was closed")
            parent, _, name = parent.rpartition("/")
            names.append(name)
            fd = self._fds.get(parent)
        owned = False
        for name in reversed(names):
            parent = f"{parent}/{name}" if parent else name
            try:
                child = _open_subdir(fd, name, create)
            finally:
                if owned:
                    os.close(fd)
            owned = len(self._fds) >= _MAX_DIR_FDS
            if not owned:
                self._fds[parent] = child
            fd = child
        return fd, owned


def open_in_tree(root: Path, rel: str, max_size: int | None = None) -> int:
    """A read-only descriptor of the regular file `rel` under `root`, every directory on
    the way opened without following a link (see fileio.open_regular for the file)."""
    dirs = _Dirs(root)
    try:
        parent, _, name = rel.rpartition("/")
        dir_fd, owned = dirs.open(parent)
        try:
            return fileio.open_regular(name, max_size, dir_fd=dir_fd)
        finally:
            if owned:
                os.close(dir_fd)
    finally:
        dirs.close()


def _open_subdir(parent_fd: int, name: str, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except (FileNotFoundError, NotADirectoryError, OSError) as exc:
        if not create or isinstance(exc, PermissionError):
            raise
    try:
        st = os.lstat(name, dir_fd=parent_fd)
        if stat.S_ISLNK(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)  # a link is replaced, never followed
        elif not stat.S_ISDIR(st.st_mode):
            # A checkout has removed what it may remove before it places anything; what
            # is still here is not dsv's to delete.
            raise InvalidInput(f"{name!r} is in the way of a directory of the version and "
                               f"was left alone", hint="move it away and run again")
    except FileNotFoundError:
        pass
    try:
        os.mkdir(name, 0o777, dir_fd=parent_fd)
    except FileExistsError:
        pass  # another worker made it meanwhile
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


class Materializer:
    """Writes manifest entries into a directory, verifying every object as it goes.

    Each file is written under a temp name in its directory and renamed over the
    destination, so a checkout killed half-way never leaves a half-written file under a
    real name, and an existing file (or a hardlink into the store) is replaced, never
    written through. Directories are walked by descriptor without following links.

    A `fresh` placement (into a directory that held none of these paths when the
    checkout's journal was written) writes small files under their own names at once
    (O_EXCL: anything found there meanwhile goes the temp-name way): the rename cost
    as much kernel time as the rest of the file. A killed one can leave the few files it
    was writing cut short under their names: each holds the first bytes of its content,
    which the resumed checkout recognizes (checkout.py `_cut_short`) and replaces.
    """

    def __init__(self, objects: ObjectStore, root: Path, link: str = "auto",
                 stat_rows: bool = True, twins: dict[str, str] | None = None,
                 share_objects: bool = False, fresh: bool = False,
                 spool: Spool | None = None,
                 before_reading: Callable[[], None] | None = None) -> None:
        check_link_mode(link)
        self.fresh = fresh
        self.spool = spool  # chunked files written while they downloaded (see Spool)
        # run once, before the first object is read from the store (a fresh checkout
        # records there what it downloaded for earlier chunks: see checkout._Unrecorded)
        self.before_reading = before_reading
        self.stat_rows = stat_rows  # only a working directory's checkout needs them
        self.twins = twins or {}    # oid → a file believed to hold it (see copy_out)
        self.objects = objects
        self.root = root
        self.link = link
        # Large files as hard links to the loose objects themselves: only for trees that
        # nothing but read-only mounts ever expose (inputs.input_tree).
        self.share_objects = share_objects

    def place(self, items: list[tuple[str, Entry]], progress: Progress | None = None
              ) -> list[tuple[str, StatRow]]:
        """Write every (path, entry); returns stat-cache rows for what was written.

        Files are written by a few threads: creating files is kernel work, and the
        kernel can do it on every core while Python waits in the syscalls.
        """
        rows: list[tuple[str, StatRow]] = []
        if self.spool is not None:
            items = self._spooled(items, progress, rows)
        if items and self.before_reading is not None:
            self.before_reading()
        locations = self.objects.locate_many(e.oid for _, e in items)
        # Read packs in order: sequential I/O, and each pack opened once.
        items = sorted(items, key=lambda it: _pack_order(locations.get(it[1].oid)))
        for rel, _entry in items:
            check_relpath(rel)
        # The links placed here are checked through each other wherever this is called
        # from (callers placing part of a version check the whole version first).
        check_links({rel: self.objects.read(e.oid).decode("utf-8", "surrogateescape")
                     for rel, e in items if e.kind == LINK})
        large = [it for it in items if it[1].oid not in locations and it[1].kind != LINK]
        whole = [e for _rel, e in large if not e.chunks]
        if self.link == "reflink" and whole:
            self._probe_reflink(whole[0])
        dirs = _Dirs(self.root)
        try:
            # Directories first, in one thread: workers then never race to create them.
            for parent in sorted({rel.rpartition("/")[0] for rel, _e in items}):
                fd, owned = dirs.open(parent, create=True)
                if owned:
                    os.close(fd)
            # Tasks: the small files of one directory (threads that create files in the
            # same directory wait for each other in the kernel: measured, two threads
            # there took longer than one), and every large file on its own, so big
            # copies proceed side by side.
            by_dir: dict[str, list[tuple[str, Entry]]] = {}
            for it in items:
                if it[1].oid in locations or it[1].kind == LINK:
                    by_dir.setdefault(it[0].rpartition("/")[0], []).append(it)
            tasks = list(by_dir.values()) + [[it] for it in large]
            if len(tasks) <= 1:
                return rows + [row for task in tasks
                               for row in self._place_chunk(task, locations, dirs, progress)]
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
                results = list(pool.map(
                    lambda t: self._place_chunk(t, locations, dirs, progress), tasks))
            return rows + [row for placed in results for row in placed]
        finally:
            dirs.close()

    def _spooled(self, items: list[tuple[str, Entry]], progress: Progress | None,
                 rows: list[tuple[str, StatRow]]) -> list[tuple[str, Entry]]:
        """`items` less the small files the spool made while they downloaded (their
        stat-cache rows added to `rows`)."""
        assert self.spool is not None
        made = self.spool.drain()
        if not made:
            return items
        rest: list[tuple[str, Entry]] = []
        for rel, entry in items:
            got = made.get(rel)
            if got is None or got[0] != entry:
                rest.append((rel, entry))
                continue
            if self.stat_rows and storable(got[1]):
                rows.append((rel, (*got[1], entry.oid, time.time_ns())))
            if progress:
                progress(1, entry.size)
        return rest

    def _probe_reflink(self, entry: Entry) -> None:
        """Fail before writing anything when reflinks were demanded and cannot be made."""
        probe = fileio.tmp_name(self.root)
        try:
            self.objects.copy_out(entry.oid, probe, 0o600, reflink="always")
        finally:
            fileio.unlink_quietly(probe)

    def _place_chunk(self, items: list[tuple[str, Entry]],
                     locations: dict[str, tuple[str, int, int]], dirs: _Dirs,
                     progress: Progress | None) -> list[tuple[str, StatRow]]:
        rows: list[tuple[str, StatRow]] = []
        if self.fresh:
            items = self._place_new_small(items, locations, dirs, progress, rows)
        for rel, entry in items:
            parent, _, name = rel.rpartition("/")
            # A large file's copy moves the bar as it lands; its completion counts the rest.
            pieces = FileBytes(progress, entry.size) \
                if progress and entry.oid not in locations and entry.kind != LINK else None
            dir_fd, owned = dirs.open(parent)
            try:
                self._place_one(dir_fd, name, rel, entry, locations, pieces)
                crashpoint("checkout:file-written")
                if self.stat_rows:
                    st = os.lstat(name, dir_fd=dir_fd)
                    row = (st.st_size, st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode),
                           entry.oid, time.time_ns())
                    if storable(row):
                        rows.append((rel, row))
            finally:
                if owned:
                    os.close(dir_fd)
            if progress:
                progress(1, entry.size - (pieces.shown if pieces else 0))
        return rows

    def _place_new_small(self, items: list[tuple[str, Entry]],
                         locations: dict[str, tuple[str, int, int]], dirs: _Dirs,
                         progress: Progress | None, rows: list[tuple[str, StatRow]]
                         ) -> list[tuple[str, Entry]]:
        """A fresh placement's small files, a batch at a time (one directory, at most
        _WRITE_BATCH files and _WRITE_BATCH_BYTES): each checked against its id, then
        all made by `native.write_new_files` (C: one wait for the GIL a batch instead of
        four a file, while the thread that downloads the next chunk runs). Returns the
        items left for `_place_one`: links, large files, and names something took."""
        rest = [it for it in items if it[1].kind == LINK or it[1].oid not in locations]
        small = [it for it in items if it[1].kind != LINK and it[1].oid in locations]
        def folder(item: tuple[str, Entry]) -> str:
            return item[0].rpartition("/")[0]

        small.sort(key=folder)  # (stable: pack order kept)
        for batch in batches(small, lambda it: it[1].size, _WRITE_BATCH, _WRITE_BATCH_BYTES,
                             key=folder):
            rest += self._write_batch(batch, locations, dirs, progress, rows)
        return rest

    def _write_batch(self, batch: list[tuple[str, Entry]],
                     locations: dict[str, tuple[str, int, int]], dirs: _Dirs,
                     progress: Progress | None, rows: list[tuple[str, StatRow]]
                     ) -> list[tuple[str, Entry]]:
        datas = self._small_batch([entry for _rel, entry in batch], locations)
        dir_fd, owned = dirs.open(batch[0][0].rpartition("/")[0])
        try:
            written = native.write_new_files(
                dir_fd, [rel.rpartition("/")[2] for rel, _e in batch], datas,
                [placed_mode(entry.mode, _UMASK) for _rel, entry in batch])
        finally:
            if owned:
                os.close(dir_fd)
        taken: list[tuple[str, Entry]] = []
        for (rel, entry), result in zip(batch, written, strict=True):
            if isinstance(result, int):
                if result == errno.EEXIST:
                    taken.append((rel, entry))  # (not placed here first: the usual way)
                    continue
                raise OSError(result, os.strerror(result), os.path.join(self.root, rel))
            crashpoint("checkout:file-written")
            if self.stat_rows and storable(result):
                rows.append((rel, (*result, entry.oid, time.time_ns())))
            if progress:
                progress(1, entry.size)
        return taken

    def _place_one(self, dir_fd: int, name: str, rel: str, entry: Entry,
                   locations: dict[str, tuple[str, int, int]],
                   pieces: FileBytes | None = None) -> None:
        """Write `entry` under a temp name in `dir_fd`, then rename it over `name` (a
        fresh placement's small file: under `name` itself, if nothing is there)."""
        small = entry.kind != LINK and entry.oid in locations
        data = self._small_bytes(entry, locations[entry.oid]) if small else b""
        if small and self.fresh:
            try:
                self._write_new(dir_fd, name, entry, data)
                return
            except FileExistsError:
                pass  # (not placed here first: replaced the usual way)
        def write(tmp: str) -> None:
            if entry.kind == LINK:
                target = self.objects.read(entry.oid).decode("utf-8", "surrogateescape")
                os.symlink(check_symlink_target(rel, target), tmp, dir_fd=dir_fd)
            elif small:
                self._write_new(dir_fd, tmp, entry, data)
            else:
                self._write_large(dir_fd, tmp, entry, pieces, rel)
        _place_via_tmp(dir_fd, name, write)

    def _small_batch(self, entries: list[Entry],
                     locations: dict[str, tuple[str, int, int]]) -> list[bytes]:
        """Packed objects' bytes, read in one go (`native.pread_many`) and each checked
        against its id before anything is written. A location is believed only for the
        size the tree gives (the index may have been touched by another hand: no read of
        a length it made up)."""
        wheres = [_sized(entry, locations[entry.oid]) for entry in entries]
        datas = native.pread_many([self.objects.pack_fd(pack) for pack, _o, _n in wheres],
                                  [offset for _p, offset, _n in wheres],
                                  [length for _p, _o, length in wheres])
        for entry, data in zip(entries, datas, strict=True):
            if hash_bytes(data) != entry.oid:
                raise CorruptObject(f"object {entry.oid[:12]} is corrupt; it was not written",
                                    hint="run `dsv verify` to list every damaged object")
        return datas

    def _small_bytes(self, entry: Entry, where: tuple[str, int, int]) -> bytes:
        """A packed object's bytes, checked against its id before anything is written."""
        return self._small_batch([entry], {entry.oid: where})[0]

    @staticmethod
    def _write_new(dir_fd: int, name: str, entry: Entry, data: bytes) -> None:
        """Create `name` in `dir_fd` (O_EXCL, never through a link) holding `data`; a
        failed write leaves nothing under it."""
        fd = os.open(name, _NEW_FILE, placed_mode(entry.mode, _UMASK), dir_fd=dir_fd)
        try:
            fileio.write_all(fd, data)
        except BaseException:
            os.unlink(name, dir_fd=dir_fd)  # (made just now by O_EXCL: ours)
            raise
        finally:
            os.close(fd)

    def _write_large(self, dir_fd: int, tmp: str, entry: Entry,
                     pieces: FileBytes | None = None, rel: str = "") -> None:
        spooled = self.spool.take(rel) if self.spool is not None else None
        if spooled is not None and spooled.entry == entry and \
                self._place_spooled(dir_fd, tmp, spooled, pieces):
            return
        mode = placed_mode(entry.mode, _UMASK)
        chunks = self._chunks(entry)
        if self.share_objects and chunks is None:
            self._link_object(dir_fd, tmp, entry.oid)
            if pieces is not None:
                pieces(entry.size)
            return
        if self.link in ("hardlink", "symlink"):
            # Links share a verified copy, never the object itself: root ignores the
            # read-only mode, and an edit through a link must not reach the store.
            shared = self.objects.link_source(entry.oid, chunks)
            if self.link == "hardlink":
                os.link(shared, tmp, dst_dir_fd=dir_fd)
            else:
                os.symlink(os.path.abspath(shared), tmp, dir_fd=dir_fd)
            return
        # Not in a pack, so loose (copy_out says clearly if it is missing altogether).
        # /proc/self/fd/N names the directory we hold open, so no link on the way is
        # followed; the temp name itself is new (O_EXCL | O_NOFOLLOW in copy_out).
        dest = (f"/proc/self/fd/{dir_fd}/{tmp}" if _PROC_FD
                else os.path.join(self.root, tmp))  # pragma: no cover - Linux has /proc
        reflink = {"copy": "never", "reflink": "always"}.get(self.link, "auto")
        self.objects.copy_out(entry.oid, dest, mode, reflink, self.twins.get(entry.oid),
                              pieces, chunks)

    def _place_spooled(self, dir_fd: int, tmp: str, spooled: _Spooled,
                       pieces: FileBytes | None) -> bool:
        """Finish a file the spool began (the chunks it did not write, from the store),
        and rename it to `tmp` if its bytes are its id's; False where it cannot be used
        (the caller writes the file the usual way; the spool removes what is left)."""
        assert self.spool is not None
        try:
            if spooled.writer is not None:
                if pieces is not None:
                    pieces(sum(n for _c, n in spooled.chunks[:spooled.written]))
                self.objects.write_chunks(spooled.chunks[spooled.written:], spooled.writer,
                                          pieces)
                spooled.finish()
            if not spooled.ready:
                return False
            # The file hashed, not another put under its name meanwhile by someone who
            # may write to this directory: else the usual way (the spool removes it).
            st = os.stat(spooled.tmp, dir_fd=dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != spooled.made or not stat.S_ISREG(st.st_mode) or \
                    st.st_size != spooled.entry.size:
                return False
            os.rename(spooled.tmp, tmp, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except (OSError, MissingObject, CorruptObject):
            return False   # (the usual way restarts `pieces`)
        self.spool.placed(spooled)
        return True

    def _chunks(self, entry: Entry) -> list[tuple[str, int]] | None:
        """The chunks of a chunked file (None for one stored whole). Its bytes are put
        together from them: never a link to a shared object, even in a job's input tree."""
        if not entry.chunks:
            return None
        listed = self.objects.read(entry.chunks)
        return read_chunks(lambda _oid: listed, entry.chunks, entry.oid, entry.size).chunks

    def _link_object(self, dir_fd: int, tmp: str, oid: str) -> None:
        """Hard-link loose object `oid` as `tmp`: the very inode that was just hashed
        (opened without following a link, linked through its descriptor)."""
        try:
            fd = self.objects.open_loose_fd(oid)
        except FileNotFoundError:
            raise MissingObject(f"object {oid[:12]} is missing from the store",
                                hint="run `dsv verify --repair` to bring it back") from None
        try:
            if hash_fd(fd) != oid:
                raise CorruptObject(f"object {oid[:12]} is corrupt; it was not placed",
                                    hint="run `dsv verify --repair` to replace it with a "
                                         "good copy")
            os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(fd)


SPOOL_OPEN = 4
"""Files a spool writes at once (each holds its writer's buffers until its last chunk)."""
SPOOL_BYTES = _WRITE_BATCH_BYTES
SPOOL_BATCHES = 64
"""What a spool's writing threads may hold at once: batches of small files of SPOOL_BYTES
in all (memory bound; a full batch is always let in), and SPOOL_BATCHES of them (each
holds its directory open). Batches of a few hundred small files are far below the
bytes, so the thread has thousands of files in hand when the download stalls (between
chunks, on a slow response) and writes on; two such batches, the bound before, were
written in a few ms. Clones of 200,000 files took 9.4-10.5 s so, 10.4-10.8 s before
(the same run; peak RSS +15 MB with SPOOL_BYTES twice this)."""
SPOOL_WRITERS = 2
"""Writing threads a spool hands its batches to, each directory's to one of them (the
first directory seen to the first thread, the next to the next, and so on): two threads
creating files in one directory wait for each other in the kernel, in two directories
they do not. A clone of 200,000 files in 200 directories took 10.3-11.4 s (median 10.7)
with two, 11.1-12.5 s (median 11.7) with one, alternating in one run on a new file
system each time; three were no faster than two."""


class _Spooled:
    """One file a spool writes: its chunks, how many are written, its writer."""

    def __init__(self, rel: str, entry: Entry, chunks: list[tuple[str, int]]) -> None:
        self.rel = rel
        self.entry = entry
        self.chunks = chunks
        self.written = 0                        # chunks written, in order
        self.writer: fileio.DirectWriter | None = None
        self.hasher = new_hasher()
        self.tmp = ""                            # its temp name in its directory
        self.made: tuple[int, int] = (-1, -1)    # (device, inode) of the file made there
        self.ready = False                       # complete, and its bytes are its id's

    def finish(self) -> None:
        """Close the complete file and check it against its id (a mismatch: not ready,
        so its placement goes the usual way and reports the damage)."""
        assert self.writer is not None
        writer, self.writer = self.writer, None
        size = writer.finish(durable=False)
        self.ready = size == self.entry.size and self.hasher.hexdigest() == self.entry.oid


class Spool:
    """The files of a fresh placement, written while their objects download.

    A small file whose object arrives (checked against its id) is written under its own
    name at once, as the fresh placement would write it (O_EXCL, never through a
    link: something found there is left for the placement, which takes the temp-name
    way): batched by directory and made by `native.write_new_files` in threads of the
    spool's own (SPOOL_WRITERS, a directory's batches always in the same one), while
    the download goes on. The placement then has nothing to read
    back from the packs, check again or write for it (`drain`); a file whose object the
    store held already is placed the usual way. At most SPOOL_BYTES, in at most
    SPOOL_BATCHES batches (each of at most _WRITE_BATCH files and _WRITE_BATCH_BYTES),
    wait for those threads at once.

    The chunked files of a fresh placement are written while their chunks download.

    A download holds each chunk's bytes, checked against the chunk's id, on their way
    into a pack: the spool (the download's `tap`) appends them to the files that need
    them next, in file order, so placing such a file afterwards is a rename where it
    would read the packs back from disk. Each file is hashed as it is written and is
    used only if its bytes are its id's. A file whose chunks do not arrive in order (a
    chunk the store held already, a chunk seen earlier) stops there and is finished
    from the store when placed (`Materializer`); a file whose first chunk is not
    downloaded is not spooled at all. Files wait under temp names in their directories
    (made here, never through a link); `close` removes every one not placed.
    """

    def __init__(self, root: Path, files: list[tuple[str, Entry, list[tuple[str, int]]]]
                 ) -> None:
        self.root = root
        self._dirs: _Dirs | None = None
        self._files: dict[str, _Spooled] = {}
        self._waiting: dict[str, list[_Spooled]] = {}   # chunk id → files it comes next in
        self._open = 0
        self._small: dict[str, list[tuple[str, Entry]]] = {}   # oid → whole files of it
        self._batch: list[tuple[str, Entry, memoryview]] = []  # (rel, entry, bytes): one dir
        self._batch_dir = ""
        self._batch_bytes = 0
        self._writing: deque[tuple[Future[list[native.Written]], int, bool,
                                   list[tuple[str, Entry, memoryview]], int]] = deque()
        self._writing_bytes = 0   # (of the batches in `_writing`)
        self._writers: list[ThreadPoolExecutor] = []
        self._writer_of: dict[str, int] = {}   # directory → its writing thread
        self._made: dict[str, tuple[Entry, tuple[int, int, int, int]]] = {}
        for rel, entry, chunks in files:
            if chunks and _PROC_FD:
                check_relpath(rel)
                spooled = _Spooled(rel, entry, chunks)
                self._files[rel] = spooled
                self._waiting.setdefault(chunks[0][0], []).append(spooled)
            elif not chunks and not entry.chunks:
                check_relpath(rel)
                self._small.setdefault(entry.oid, []).append((rel, entry))

    def __call__(self, oid: str, data: bytes | memoryview,
                 kept: memoryview | None = None) -> None:
        """A downloaded object or chunk (checked against `oid`): written wherever it
        comes next. (`kept`: the same bytes where they outlive the call, else a small
        file's are copied.)"""
        waiting = self._waiting.pop(oid, None)
        for spooled in waiting or ():
            try:
                self._feed(spooled, oid, data)
            except OSError:
                self._drop(spooled)  # (placed the usual way, which reports a lasting error)
        for rel, entry in self._small.pop(oid, ()):
            if len(data) == entry.size:   # (else: the usual way, which reports it)
                kept = memoryview(bytes(data)) if kept is None else kept
                self._queue(rel, entry, kept)

    def feed(self, view: memoryview, run: list[tuple[str, int, int]]) -> None:
        """`__call__` for each object of a downloaded run, in order ((oid, start, length)
        in `view`, each checked against its oid). A stretch of chunks lying back to back
        in `view` that one chunked file needs next, and nothing else waits for, is
        written to it at once: a GiB clone fed ~6,000 chunks to its files one call and
        one copy each, on the thread that every download waits for.

        A run whose bytes go mostly to small files is copied once, whole, and each file
        handed a view into that copy (one copy a run where a clone of a million small
        files made one `bytes` a file); such a copy is let go once its last file is
        written. Batches are written in the order their files came, so the files
        waiting hold at most twice their bytes, plus the two runs at their ends."""
        small = self._small
        kept = None
        if small and 2 * sum(length for oid, _start, length in run if oid in small) \
                >= len(view):
            kept = memoryview(view.tobytes())
        i = 0
        while i < len(run):
            oid, start, length = run[i]
            waiting = self._waiting.get(oid)
            if waiting is not None and len(waiting) == 1 and oid not in self._small:
                end = self._stretch(waiting[0], run, i)
                if end > i + 1:
                    del self._waiting[oid]
                    last, at, n = run[end - 1]
                    try:
                        self._feed(waiting[0], last, view[start:at + n], end - i)
                    except OSError:
                        self._drop(waiting[0])
                    i = end
                    continue
            self(oid, view[start:start + length],
                 None if kept is None else kept[start:start + length])
            i += 1

    def _stretch(self, spooled: _Spooled, run: list[tuple[str, int, int]], i: int) -> int:
        """Where the stretch of `run` from `i` ends that `spooled` takes at once: its
        next chunks, each of the length its list gives, back to back, none of them (past
        the first) waited for by another file or wanted whole."""
        chunks, k, end, j = spooled.chunks, spooled.written - i, run[i][1], i
        while j < len(run) and k + j < len(chunks):
            oid, start, length = run[j]
            if (oid, length) != chunks[k + j] or start != end or j > i and (
                    oid in self._waiting or oid in self._small):
                break
            end += length
            j += 1
        return j

    def _queue(self, rel: str, entry: Entry, data: memoryview) -> None:
        parent = rel.rpartition("/")[0]
        if self._batch and (parent != self._batch_dir or len(self._batch) >= _WRITE_BATCH
                            or self._batch_bytes + len(data) > _WRITE_BATCH_BYTES):
            self._flush()
        self._batch_dir = parent
        self._batch.append((rel, entry, data))
        self._batch_bytes += len(data)

    def _flush(self) -> None:
        """Hand the batch to its directory's writing thread (waiting for the oldest ones
        while more than SPOOL_BYTES, or SPOOL_BATCHES, are in their hands), and let go of
        those written."""
        batch, nbytes = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        if not batch:
            return
        if self._dirs is None:
            self._dirs = _Dirs(self.root)
        try:
            dir_fd, owned = self._dirs.open(self._batch_dir, create=True)
        except OSError:
            return  # (placed the usual way, which reports a lasting error)
        if not self._writers:
            from concurrent.futures import ThreadPoolExecutor
            self._writers = [ThreadPoolExecutor(1, thread_name_prefix="dsv-spool")
                             for _ in range(SPOOL_WRITERS)]
        which = self._writer_of.setdefault(self._batch_dir,
                                           len(self._writer_of) % len(self._writers))
        future = self._writers[which].submit(
            native.write_new_files, dir_fd, [rel.rpartition("/")[2] for rel, _e, _d in batch],
            [data for _r, _e, data in batch],
            [placed_mode(entry.mode, _UMASK) for _r, entry, _d in batch])
        self._writing.append((future, dir_fd, owned, batch, nbytes))
        self._writing_bytes += nbytes
        # (the batches written already are let go at once: their bytes, and what they
        # made noted as early as the thread made it)
        while self._writing and (self._writing[0][0].done() or
                                 len(self._writing) > SPOOL_BATCHES or
                                 len(self._writing) > 1 and self._writing_bytes > SPOOL_BYTES):
            self._collect()

    def _collect(self) -> None:
        """Wait for the oldest batch in the writing threads' hands; note what it made."""
        future, dir_fd, owned, batch, nbytes = self._writing.popleft()
        self._writing_bytes -= nbytes
        try:
            results = future.result()
        except OSError:
            results = [errno.EIO] * len(batch)   # (none made: placed the usual way)
        finally:
            if owned:   # (not while the writing thread may still use it: an interrupt)
                from concurrent.futures import wait
                wait([future])
                os.close(dir_fd)
        for (rel, entry, _data), result in zip(batch, results, strict=True):
            if not isinstance(result, int):
                self._made[rel] = (entry, result)
                crashpoint("checkout:file-written")

    def drain(self) -> dict[str, tuple[Entry, tuple[int, int, int, int]]]:
        """The small files made, each (its entry, (size, mtime_ns, ino, mode)), once
        every one handed over is written (after the download: the placement skips
        them)."""
        self._flush()
        while self._writing:
            self._collect()
        if self._dirs is not None:   # (the placement keeps directories of its own open)
            self._dirs.close()
            self._dirs = None
        return self._made

    def _feed(self, spooled: _Spooled, oid: str, data: bytes | memoryview,
              taken: int = 1) -> None:
        """Write `data` to `spooled`: `oid`'s bytes, or (`taken` > 1) those of the next
        `taken` chunks it takes, back to back, ending with `oid`'s (a stretch `_stretch`
        found); then `oid`'s again while it comes again next."""
        if spooled.written == 0:
            if self._open >= SPOOL_OPEN:
                del self._files[spooled.rel]
                return
            self._start(spooled)
        assert spooled.writer is not None
        chunks = spooled.chunks
        if taken > 1:
            spooled.writer.write(data)
            for _ in range(taken):
                spooled.written += 1
                crashpoint("checkout:chunk-spooled")
            data = data[len(data) - chunks[spooled.written - 1][1]:]
        while spooled.written < len(chunks) and chunks[spooled.written][0] == oid:
            if len(data) != chunks[spooled.written][1]:
                raise OSError(errno.EIO, "chunk of another length")  # (a lying chunk list)
            spooled.writer.write(data)
            spooled.written += 1
            crashpoint("checkout:chunk-spooled")
        if spooled.written == len(chunks):
            self._open -= 1
            spooled.finish()
            if not spooled.ready:
                self._drop(spooled)
        else:
            self._waiting.setdefault(chunks[spooled.written][0], []).append(spooled)

    def _start(self, spooled: _Spooled) -> None:
        """Create the file under a temp name in its directory."""
        if self._dirs is None:
            self._dirs = _Dirs(self.root)
        dir_fd, owned = self._dirs.open(spooled.rel.rpartition("/")[0], create=True)
        try:
            tmp = fileio.tmp_name("")
            spooled.writer = fileio.DirectWriter(
                f"/proc/self/fd/{dir_fd}/{tmp}", placed_mode(spooled.entry.mode, _UMASK),
                WORKTREE_BUFFER, spooled.hasher.update)
            spooled.tmp = tmp
            self._open += 1
            st = os.fstat(spooled.writer.fd)
            spooled.made = (st.st_dev, st.st_ino)
        finally:
            if owned:
                os.close(dir_fd)

    def take(self, rel: str) -> _Spooled | None:
        """The spooled file at `rel`, if it was begun (after the download: the placing
        thread finishes it, see Materializer)."""
        spooled = self._files.get(rel)
        return spooled if spooled is not None and spooled.tmp else None

    def placed(self, spooled: _Spooled) -> None:
        """`spooled` was renamed into place: nothing of it is left to remove."""
        self._files.pop(spooled.rel, None)

    def _drop(self, spooled: _Spooled) -> None:
        self._files.pop(spooled.rel, None)
        self._discard(spooled)

    def _discard(self, spooled: _Spooled) -> None:
        """Close `spooled` and remove its temp file."""
        if spooled.writer is not None:
            spooled.writer.close()
            spooled.writer = None
            self._open -= 1
        if spooled.tmp:
            if self._dirs is None:
                self._dirs = _Dirs(self.root)
            try:
                dir_fd, owned = self._dirs.open(spooled.rel.rpartition("/")[0])
            except OSError:
                return  # (its directory went: so did the file)
            try:
                os.unlink(spooled.tmp, dir_fd=dir_fd)
            except OSError:
                pass
            finally:
                if owned:
                    os.close(dir_fd)
            spooled.tmp = ""

    def close(self) -> None:
        """Remove every chunked file not placed (after the placement, or a failed
        download); small files made stay under their names, as a placement's would."""
        try:
            self._batch = []
            while self._writing:
                try:
                    self._collect()
                except BaseException:  # (each batch's descriptor is closed all the same)
                    pass
            for writer in self._writers:
                writer.shutdown()
            self._writers = []
            for spooled in list(self._files.values()):
                self._discard(spooled)
            self._files.clear()
            self._waiting.clear()
        finally:
            if self._dirs is not None:
                self._dirs.close()
                self._dirs = None


def _pack_order(where: tuple[str, int, int] | None) -> tuple[str, int]:
    """Where a read of `where` (an index row, or None) falls in pack order (a damaged
    row's offset that is no whole number sorts first, and is refused when read)."""
    if where is None:
        return "", 0
    return where[0], where[1] if type(where[1]) is int else -1


def _sized(entry: Entry, where: tuple[str, int, int]) -> tuple[str, int, int]:
    """`where` (pack, offset, length), if its length is the size `entry`'s tree gives:
    an index another hand touched makes no read of a length it made up."""
    if where[2] != entry.size or where[2] > native.MAX_READ:
        raise CorruptObject(f"object {entry.oid[:12]} is {number(where[2])} bytes in the "
                            f"index but {entry.size} in its tree; it was not written",
                            hint="run `dsv verify` to list every damaged object")
    return bounded_where(where, entry.oid)


def write_files(root: Path, items: Iterable[tuple[str, Entry]],
                content: Callable[[Entry], Iterable[bytes | memoryview]],
                progress: Callable[[int, int], None] | None = None) -> None:
    """Write files of a version that come from outside any store (`dsv get`) into
    `root`: each under a temp name in its directory (every directory opened without
    following a link), hashed as its pieces arrive, and renamed over its name only when
    its bytes are the ones its entry names; a symlink only with a target that stays in
    the version. A file that fails its check leaves nothing under its name."""
    dirs = _Dirs(root)
    try:
        for rel, entry in items:
            check_relpath(rel)
            if is_reserved(rel):
                raise UnsafePath(f"refusing to write {rel!r}: '.dsv' is reserved")
            parent, _, name = rel.rpartition("/")
            dir_fd, owned = dirs.open(parent, create=True)

            def write(tmp: str, rel: str = rel, entry: Entry = entry, dir_fd: int = dir_fd
                      ) -> None:
                if entry.kind == LINK:
                    target = b"".join(content(entry)).decode("utf-8", "surrogateescape")
                    os.symlink(check_symlink_target(rel, target), tmp, dir_fd=dir_fd)
                else:
                    _write_checked(dir_fd, tmp, entry, content(entry))
            try:
                _place_via_tmp(dir_fd, name, write)
            finally:
                if owned:
                    os.close(dir_fd)
            if progress is not None:
                progress(1, entry.size)
    finally:
        dirs.close()


def _write_checked(dir_fd: int, tmp: str, entry: Entry,
                   pieces: Iterable[bytes | memoryview]) -> None:
    fd = os.open(tmp, _NEW_FILE, placed_mode(entry.mode, _UMASK), dir_fd=dir_fd)
    try:
        hasher = new_hasher(threads=entry.size >= 1 << 22)
        size = 0
        for piece in pieces:
            hasher.update(piece)
            fileio.write_all(fd, piece)
            size += len(piece)
        if size != entry.size or hasher.hexdigest() != entry.oid:
            raise CorruptObject(f"file {entry.oid[:12]} did not arrive whole; nothing was "
                                f"written under its name")
    finally:
        os.close(fd)


def _place_via_tmp(dir_fd: int, name: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` a new temp name in `dir_fd`, then rename it over `name`; whatever
    fails leaves no temp file behind."""
    tmp = fileio.tmp_name("")  # a bare name, relative to dir_fd
    try:
        write(tmp)
        _rename_over(dir_fd, tmp, name)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _rename_over(dir_fd: int, tmp: str, name: str) -> None:
    """Rename `tmp` over `name` in one directory. An empty directory in the way goes; a
    directory that still holds anything (a nested store, files dsv did not place) is
    never deleted: the file is not placed and the caller hears why."""
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    except (IsADirectoryError, NotADirectoryError, FileExistsError, OSError) as exc:
        if not isinstance(exc, (IsADirectoryError, NotADirectoryError, FileExistsError)) and \
                exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
            raise
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        raise InvalidInput(f"{name!r} is a directory that is not empty, where the version "
                           f"has a file; it was left alone",
                           hint="move it away and run again") from None
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def remove_paths(root: Path, paths: Iterable[str]) -> None:
    """Delete files (never following links, on the way or at the end) and then any
    directories left empty."""
    parents: set[str] = set()
    dirs = _Dirs(root)
    try:
        for rel in paths:
            parent, _, name = rel.rpartition("/")
            # dsv's own temp files are removed too, though their names are refused as content
            if not is_temp_name(name):
                check_relpath(rel)
            elif parent:
                check_relpath(parent)
            try:
                fd, owned = dirs.open(parent)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                continue  # a link where a directory was: nothing of ours beneath it
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            finally:
                if owned:
                    os.close(fd)
            while parent:
                parents.add(parent)
                parent = parent.rpartition("/")[0]
        for parent in sorted(parents, key=lambda p: p.count("/"), reverse=True):
            above, _, name = parent.rpartition("/")
            try:
                fd, owned = dirs.open(above)
            except OSError:
                continue
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                pass  # not empty (holds files of the target or excluded content)
            finally:
                if owned:
                    os.close(fd)
    finally:
        dirs.close()


def resolve_user_path(root: Path, cwd: Path, path: str) -> str:
    """A path typed by the user (relative to cwd) as a root-relative POSIX path. Its
    last component is not followed: it may name a symlink of the dataset itself (even
    one that loops, or points outside)."""
    joined = Path(path) if os.path.isabs(path) else cwd / path
    try:
        absolute = joined.resolve() if joined.name in ("", ".", "..") else \
            joined.parent.resolve() / joined.name
    except (RuntimeError, OSError) as exc:   # (3.11 says RuntimeError for a loop)
        raise InvalidInput(f"{path}: cannot follow the directories above it "
                           f"({exc.__class__.__name__}: {exc})") from None
    try:
        rel = absolute.relative_to(root.resolve())
    except ValueError:
        raise UnsafePath(f"{path} is outside the dataset directory {root}") from None
    text = rel.as_posix()
    return "" if text == "." else text


def scan_one(path: Path) -> FileStat:
    """The FileStat of a single file or symlink."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind = LINK
    elif stat.S_ISREG(st.st_mode):
        kind = FILE
    else:
        raise InvalidInput(f"{path} is not a regular file or symlink")
    return (st.st_size, st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode), kind)
