"""The `Store`: dsv's Python API, tying the index, objects, trees and working trees together.

Owns every user-level operation (one method per command), the `.dsv/` layout, the
version record format and the order of writes that keeps a store consistent when a
process dies at any point: objects first (fsynced), then one index transaction. Must
never print or parse command lines: that is cli.py's job.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO

from . import fileio, refs, tree, worktree
from .errors import (CorruptObject, DatasetExists, DatasetNotFound, DirtyWorktree, DsvError,
                     InvalidInput, NothingToCommit, RefError, StoreExists,
                     TagExists, UnsafePath, VersionImmutable, VersionInUse)
from .faults import crashpoint
from .hashing import hash_bytes
from .index import Index
from .model import (COMMITTED, DRAFT, Changes, CheckoutReport, Dataset, FileRow, GcReport,
                    RebuildReport, StatRow, StatusReport, Version, VerifyReport)
from .core import Core, create_layout, find_store
from .lock import StoreLock
from .objects import KIND_VERSION, PACK_THRESHOLD, Ingest, ObjectStore
from .paths import STORE_DIR as DSV_DIR
from .paths import (ancestors, check_relpath, is_reserved, is_under, mode_class,
                    normalize_user_path)
from .jsonio import load_bounded
from .records import Record, encode_record, parse_record
from .remotes.base import (RemoteSpec, check_outside_stores, normalize_url, open_backend,
                           parse_duration, parse_size)
from .reporting import Reporter
from .tree import Entry, Manifest

STORE_FORMAT = 1
DATASET_ID_LEN = 8
VERSION_ID_LEN = 10


def default_author() -> str:
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


def dataset_name_for(directory: Path) -> str:
    """A valid dataset name from a directory's basename (`My Data!` → `My-Data`)."""
    raw = directory.resolve().name
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in raw)
    cleaned = cleaned.strip("-._")[:128]
    return cleaned if cleaned and refs.is_valid_name(cleaned) else "data"


_KIND_NAMES = {tree.FILE: "file", tree.LINK: "link", tree.DIR: "dir"}
_KIND_WORDS = {"origin": "an origin", "cache": "a cluster cache"}


class Store:
    """A dsv store: open one with `dsv.open(path)`, create one with `dsv.init(path)`."""

    def __init__(self, root: Path, reporter: Reporter | None = None) -> None:
        self.core = Core(root, reporter)
        self.root, self.dsv_dir = self.core.root, self.core.dsv_dir
        self.tmp_dir = self.core.tmp_root
        self.reporter = self.core.reporter
        self.index, self.objects = self.core.index, self.core.objects

    # ---- opening, creating, closing -------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", reporter: Reporter | None = None,
             exact: bool = False) -> "Store":
        return cls(find_store(Path(path), exact), reporter)

    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".", name: str | None = None,
             bind: bool = True, reporter: Reporter | None = None) -> "Store":
        root = Path(path).resolve()
        create_layout(root)
        store = cls(root, reporter)
        if bind:
            store.create_dataset(name or dataset_name_for(root), path=root)
        return store

    def close(self) -> None:
        self.core.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def locked(self, what: str) -> AbstractContextManager[None]:
        """Hold the store lock (see core.Core.locked)."""
        return self.core.locked(what)

    # ---- datasets ---------------------------------------------------------------------
    def datasets(self) -> list[Dataset]:
        return self.index.datasets()

    def dataset(self, key: str) -> Dataset:
        return self.core.dataset(key)

    def dataset_root(self, ds: Dataset) -> Path:
        return self.core.dataset_root(ds)

    def dataset_at(self, cwd: str | os.PathLike[str] = ".") -> Dataset | None:
        """The dataset whose working directory holds `cwd` (the deepest one)."""
        return self.core.dataset_at(cwd)

    def pick_dataset(self, key: str | None, cwd: str | os.PathLike[str] = ".") -> Dataset:
        """The dataset named by `key`, else the one of `cwd`, else the only one."""
        return self.core.pick_dataset(key, cwd)

    def _workspace_path(self, path: str | os.PathLike[str]) -> str:
        return self.core.workspace_path(path)

    def _check_new_name(self, name: str) -> None:
        """A dataset name must be valid, and must not be taken as a name or an id (an
        id is accepted wherever a name is, so the other dataset would become unreachable)."""
        if not refs.is_valid_name(name) or name == refs.LATEST:
            raise InvalidInput(f"invalid dataset name {name!r}",
                               hint="use letters, digits, '.', '_' and '-' (max 128)")
        if self.index.dataset_by("name", name) is not None:
            raise DatasetExists(f"a dataset named {name!r} already exists")
        if self.index.dataset_by("id", name) is not None:
            raise DatasetExists(f"{name!r} is the id of another dataset",
                                hint="choose another name")

    def create_dataset(self, name: str, path: str | os.PathLike[str] | None = None,
                       description: str | None = None) -> Dataset:
        if not refs.is_valid_name(name) or name == refs.LATEST:
            raise InvalidInput(f"invalid dataset name {name!r}",
                               hint="use letters, digits, '.', '_' and '-' (max 128)")
        with self.locked("datasets create"):
            self._check_new_name(name)
            rel = self._workspace_path(path) if path is not None else None
            if rel is not None:
                other = self.index.dataset_by("path", rel)
                if other is not None:
                    raise DatasetExists(f"{rel} is already the directory of dataset {other.name!r}")
                (self.root / rel).mkdir(parents=True, exist_ok=True)
            ds = Dataset(id=self.core.new_dataset_id(), name=name, path=rel, description=description, created=time.time())
            with self.index.transaction():
                self.index.insert_dataset(ds)
            return ds

    def update_dataset(self, key: str, name: str | None = None, description: str | None = None,
                       path: str | os.PathLike[str] | None = None) -> Dataset:
        with self.locked("datasets update"):
            ds = self.dataset(key)
            fields: dict[str, Any] = {}
            if name is not None and name != ds.name:
                if name != ds.id:
                    self._check_new_name(name)
                fields["name"] = name
            if description is not None:
                fields["description"] = description
            if path is not None:
                rel = self._workspace_path(path)
                other = self.index.dataset_by("path", rel)
                if other is not None and other.id != ds.id:
                    raise DatasetExists(f"{rel} is already the directory of dataset {other.name!r}")
                (self.root / rel).mkdir(parents=True, exist_ok=True)
                fields["path"] = rel
                if ds.head is None and ds.latest:
                    # A newly bound directory is compared with the newest version.
                    fields["head"] = ds.latest
            if fields:
                with self.index.transaction():
                    self.index.update_dataset(ds.id, **fields)
                    if "path" in fields:
                        self.index.clear_stat_cache(ds.id)
            updated = self.index.dataset_by("id", ds.id)
            assert updated is not None
            return updated

    def delete_dataset(self, key: str) -> Dataset:
        """Forget a dataset and its versions (its files on disk are left alone)."""
        with self.locked("datasets delete"):
            ds = self.dataset(key)
            self.index.delete_dataset(ds.id)
            return ds

    # ---- refs and versions --------------------------------------------------------------
    def resolve(self, ref: str, cwd: str | os.PathLike[str] = ".") -> Version:
        """The version a ref names; a bare selector (`:v1`, `v1`) uses the cwd's dataset."""
        return self.core.resolve(ref, cwd)

    def version(self, vid: str) -> Version:
        return self.core.version(vid)

    def log(self, key: str | None = None, cwd: str | os.PathLike[str] = ".",
            include_drafts: bool = False) -> list[Version]:
        ds = self.pick_dataset(key, cwd)
        versions = self.index.versions(ds.id, None if include_drafts else "committed")
        tags: dict[str, list[str]] = {}
        for _ds, name, vid, _created in self.index.tags(ds.id):
            tags.setdefault(vid, []).append(name)
        for v in versions:
            v.tags = tags.get(v.id, [])
        return versions

    def versions(self, key: str, state: str | None = None) -> list[Version]:
        ds = self.dataset(key)
        return self.index.versions(ds.id, state)

    def manifest(self, version: Version, prefix: str = "") -> Manifest:
        return self.core.manifest(version, prefix)

    def read_tree(self, oid: str) -> bytes:
        return self.core.read_tree(oid)

    def _record(self, v: Version) -> bytes:
        parents = []
        for pid in v.parents:
            parent = self.index.version(pid)
            parents.append((pid, parent.record if parent else None))
        ds = self.index.dataset_by("id", v.dataset)
        return encode_record(v, parents, ds.name if ds else None)

    def _write_committed(self, ingest: Ingest, v: Version, new: bool,
                         stat_rows: tuple[str, list[tuple[str, StatRow]], set[str]] | None = None,
                         head: bool = False, cache_tree: str | None = None) -> Version:
        """Seal `v` (state committed): write its record, then make it visible in one transaction."""
        v.state = COMMITTED
        v.committed = time.time()
        record = self._record(v)
        v.record = hash_bytes(record)
        ingest.add(v.record, KIND_VERSION, record)

        def make_visible() -> None:
            if new:
                self.index.insert_version(v)
            else:
                current = self.index.version(v.id)
                if current is None or current.state != DRAFT:
                    raise VersionImmutable(f"version {v.id} was committed meanwhile")
                self.index.update_version(v.id, state=v.state, tree=v.tree, message=v.message,
                                          committed=v.committed, record=v.record, size=v.size,
                                          files=v.files, lineage=v.lineage)
            self.core.refs.set_latest(v.dataset, v.id)
            if head:
                self.index.update_dataset(v.dataset, head=v.id, cache_tree=cache_tree)
            if stat_rows is not None:
                ds_id, rows, gone = stat_rows
                self.index.drop_stat_rows(ds_id, gone)
                self.index.put_stat_rows(ds_id, rows)

        self.core.commit_objects(ingest, make_visible, crash="commit:objects-written")
        self.index.checkpoint()
        return v

    # ---- commit, status, checkout -----------------------------------------------------
    def _head(self, ds: Dataset) -> Version | None:
        return self.index.version(ds.head) if ds.head else None

    def status(self, key: str | None = None, cwd: str | os.PathLike[str] = ".") -> StatusReport:
        """What changed in a dataset's working directory since the version it was last made."""
        ds = self.pick_dataset(key, cwd)
        root = self.dataset_root(ds)
        files, skipped = worktree.scan(root, self.core.excluded(ds))
        head = self._head(ds)
        if head is not None and ds.cache_tree == head.tree and \
                worktree.all_trusted(files, self.index.stat_keys(ds.id)):
            # The cache vouches for every file and describes the head tree exactly:
            # no tree to read, nothing to hash.
            return StatusReport(ds, head, Changes(), skipped)
        cache = self.index.stat_cache(ds.id)
        with self.reporter.task("hashing", len(files)) as advance:
            snap = worktree.snapshot(root, files, cache, None, advance)
        base = self.manifest(head) if head else {}
        report = StatusReport(ds, head, worktree.compare(base, snap.manifest), skipped)
        # Remember what was hashed, so the next status reads nothing, but only rows whose
        # content is already stored: the cache never names an object the store lacks.
        known = [(p, row) for p, row in snap.stat_rows if p in base and base[p].oid == row[4]]
        complete = report.changes.clean and len(known) == snap.hashed_files and head is not None
        if known or complete:
            with self.core.locked_if_free("status") as got:
                if got:
                    with self.index.transaction():
                        self.index.put_stat_rows(ds.id, known)
                        if complete:
                            self.index.update_dataset(ds.id, cache_tree=head.tree)
        return report

    def statuses(self, key: str | None = None,
                 cwd: str | os.PathLike[str] = ".") -> list[StatusReport]:
        """Status of the dataset named, else of the one `cwd` is in, else of every dataset
        bound to a directory (as `git status` covers the whole repository)."""
        here = self.dataset(key) if key else self.dataset_at(cwd)
        if here is not None:
            return [self.status(here.id)]
        return [self.status(ds.id) for ds in self.index.datasets() if ds.path is not None]

    def commit(self, message: str, key: str | None = None, cwd: str | os.PathLike[str] = ".",
               author: str | None = None, allow_empty: bool = False,
               lineage: dict[str, Any] | None = None) -> Version:
        """Snapshot a dataset's working directory as a new committed version."""
        if not message or not message.strip():
            raise InvalidInput("a commit needs a message", hint="pass -m MESSAGE")
        with self.locked("commit"):
            ds = self.pick_dataset(key, cwd)
            root = self.dataset_root(ds)
            stores: list[str] = []
            files, _skipped = worktree.scan(root, self.core.excluded(ds), stores=stores)
            cache = self.index.stat_cache(ds.id)
            with Ingest(self.objects) as ingest:
                total = sum(f[0] for f in files.values())
                with self.reporter.task("committing", len(files), total) as advance:
                    snap = worktree.snapshot(root, files, cache, ingest, advance,
                                             fences=self.core.excluded(ds) + stores)
                root_tree, size = tree.build_tree(snap.manifest, self.core.tree_writer(ingest))
                head = self._head(ds)
                if head is not None and not allow_empty and (
                        head.tree == root_tree or
                        tree.same_content(head.tree, root_tree, self.read_tree)):
                    raise NothingToCommit(f"nothing to commit: {ds.name} matches {head.id}",
                                          hint="use --allow-empty to record it anyway")
                now = time.time()
                v = Version(id=self.core.new_version_id(), dataset=ds.id, state=COMMITTED,
                            tree=root_tree, parents=[head.id] if head else [], message=message,
                            author=author or default_author(), created=now, committed=now,
                            lineage=lineage, size=size, files=len(snap.manifest))
                gone = set(cache) - set(files)
                complete = len(snap.stat_rows) == snap.hashed_files
                return self._write_committed(ingest, v, new=True, head=True,
                                             stat_rows=(ds.id, snap.stat_rows, gone),
                                             cache_tree=root_tree if complete else None)

    def checkout(self, ref: str, to: str | os.PathLike[str] | None = None,
                 paths: list[str] | None = None, force: bool = False, link: str = "auto",
                 cwd: str | os.PathLike[str] = ".") -> CheckoutReport:
        """Make a directory (the dataset's own, or `to`) hold exactly one version's files."""
        worktree.check_link_mode(link)
        with self.locked("checkout"):
            version = self.resolve(ref, cwd)
            ds = self.index.dataset_by("id", version.dataset)
            assert ds is not None
            in_worktree = to is None or (ds.path is not None and
                                         Path(to).resolve() == self.dataset_root(ds).resolve())
            if in_worktree and link in ("hardlink", "symlink"):
                raise InvalidInput(f"--link {link} is only for --to directories",
                                   hint="a dataset's working directory holds real files, so "
                                        "they can be edited and committed")
            target = self.dataset_root(ds) if in_worktree else Path(to).resolve()
            if in_worktree:
                self._check_no_links_to(ds)
            else:
                self._check_target_outside_store(target)
            version_files = self.manifest(version)
            if in_worktree:
                excluded = self.core.excluded(ds)
            elif target == self.root:  # every dataset's directory stays theirs
                excluded = [DSV_DIR] + [d.path for d in self.index.datasets()
                                        if d.path and d.path != "."]
            else:
                excluded = []
            key = str(target)
            leftovers: list[str] = []
            stores: list[str] = []
            files, _ = worktree.scan(target, excluded, leftovers, stores)
            if self.index.checkout_journal(key) is None:
                leftovers = []  # no checkout was interrupted here: those are not ours
            # Nested datasets and stores are left alone: their directories belong to them
            # now, even where an older version of this dataset holds files there (or a
            # file where one of them has its directory).
            fenced = set(excluded + stores)
            above_fenced = ancestors(fenced)
            placeable = {p: e for p, e in version_files.items()
                         if p not in above_fenced and not is_under(p, fenced)}
            left_out = len(version_files) - len(placeable)
            if left_out:
                self.reporter.notice(f"left out {left_out} path(s) of {version.id} that lie in "
                                     f"a nested dataset or store")
            wanted = placeable
            selected = self._select_paths(wanted, paths, Path(cwd).resolve(), target)
            if selected is not None:
                wanted = {p: e for p, e in wanted.items() if is_under(p, selected)}
            target.mkdir(parents=True, exist_ok=True)
            if selected is not None:
                # What is selected, and what stands where a selected path needs a
                # directory (an edited link there is a change like any other).
                above = ancestors(selected) | ancestors(wanted)
                files = {p: f for p, f in files.items()
                         if p in wanted or is_under(p, selected) or p in above}
            cache = self.index.stat_cache(ds.id) if in_worktree else {}
            before = worktree.snapshot(target, files, cache, None, strict_links=in_worktree)
            current = before.manifest
            # What the directory should hold if nobody touched it: the working directory's
            # head, or the version a finished checkout last placed in a --to directory.
            previous = ds.head if in_worktree else self.index.placed_version(key)
            base_version = self.index.version(previous) if previous else None
            base = self.manifest(base_version) if base_version else {}
            to_write = [(p, e) for p, e in wanted.items() if not _same_entry(current.get(p), e)]
            to_remove = [p for p in current if p not in wanted]
            if not force:
                # A file may be replaced or removed only if it is as that version left it,
                # also when an interrupted checkout is resumed: what it already placed
                # matches the target and is not touched again; anything else the user
                # made or edited meanwhile is theirs. (Files are placed by rename, so a
                # killed checkout leaves no half-written file under a real name.)
                # (--to directories placed with links hold 0444 files: compare contents.)
                touched = to_remove + [p for p, _e in to_write if p in current]
                at_risk = [p for p in touched if _edited(current[p], base.get(p), in_worktree)
                           and not self._placed_link(target / p, base.get(p))]
                if at_risk:
                    shown = ", ".join(sorted(at_risk)[:5]) + (" …" if len(at_risk) > 5 else "")
                    raise DirtyWorktree(
                        f"checkout would discard {len(at_risk)} uncommitted change(s) in "
                        f"{target}: {shown}", hint="commit them first, or pass --force")
            self._ensure_blobs(version, [e for _p, e in to_write] + _links(version_files))
            tree.validate_links(placeable, self.objects.read, fenced)
            with self.index.transaction():
                self.index.begin_checkout(key, version.id)
            crashpoint("checkout:journal-written")
            worktree.remove_paths(target, to_remove + leftovers)
            twins = {} if in_worktree or link != "auto" else self._twins(ds, to_write)
            placer = worktree.Materializer(self.objects, target, link, stat_rows=in_worktree,
                                           twins=twins)
            nbytes = sum(e.size for _p, e in to_write)
            with self.reporter.task("checkout", len(to_write), nbytes) as advance:
                rows = placer.place(to_write, advance)
            with self.index.transaction():
                if in_worktree:
                    # Rows of files left in place that already matched: their content is stored.
                    kept = [(p, r) for p, r in before.stat_rows
                            if p in wanted and wanted[p].oid == r[4]]
                    self.index.put_stat_rows(ds.id, kept)
                    if link in ("hardlink", "symlink"):
                        self.index.drop_stat_rows(ds.id, (p for p, _r in rows))
                    else:
                        self.index.put_stat_rows(ds.id, rows)
                    self.index.drop_stat_rows(ds.id, to_remove)
                    if selected is None:
                        complete = link not in ("hardlink", "symlink") and \
                            len(before.stat_rows) == before.hashed_files and \
                            len(wanted) == len(version_files)
                        self.index.update_dataset(ds.id, head=version.id,
                                                  cache_tree=version.tree if complete else None)
                    else:
                        self.index.update_dataset(ds.id, cache_tree=None)
                self.index.end_checkout(key, None if in_worktree or selected is not None
                                        else version.id)
            self.index.checkpoint()
            return CheckoutReport(version, target, len(to_write), len(to_remove),
                                  len(wanted) - len(to_write), nbytes)

    def _twins(self, ds: Dataset, items: list[tuple[str, Entry]]) -> dict[str, str]:
        """Large files of `items` that the dataset's working directory holds unchanged
        (the stat cache vouches for them): oid → path, cheaper sources for a copy."""
        if ds.path is None:
            return {}
        root = self.dataset_root(ds)
        cache = self.index.stat_cache(ds.id)
        twins: dict[str, str] = {}
        for rel, entry in items:
            row = cache.get(rel)
            if entry.size < PACK_THRESHOLD or row is None or row[4] != entry.oid:
                continue
            try:
                st = os.lstat(root / rel)
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns, st.st_ino) == row[:3]:
                twins[entry.oid] = str(root / rel)
        return twins

    def _placed_link(self, path: Path, base: Entry | None) -> bool:
        """Whether `path` is a symlink that `--link symlink` made for `base`'s content."""
        if base is None or not path.is_symlink():
            return False
        target = Path(os.readlink(path))
        return target.parent == self.objects.links_dir.resolve() and target.name == base.oid

    def _check_target_outside_store(self, target: Path) -> None:
        """A `--to` directory may not be a store, lie in one, or hold this store (`/`,
        a parent of the workspace): refused before anything is read or written."""
        if target == self.dsv_dir or self.dsv_dir in target.parents or \
                any(is_reserved(part) for part in target.parts):
            raise UnsafePath(f"{target} is inside a store", hint="choose a directory "
                             "outside .dsv/")
        if target in self.root.parents:
            raise UnsafePath(f"{target} holds this workspace and its store",
                             hint="check out into an empty or dedicated directory")

    def _check_no_links_to(self, ds: Dataset) -> None:
        """A dataset's directory is reached from the workspace root through real
        directories only: a link planted there could send a checkout anywhere."""
        if ds.path in (None, "."):
            return
        here = self.root
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

    def _select_paths(self, manifest: Manifest, paths: list[str] | None, cwd: Path,
                      target: Path) -> set[str] | None:
        """Version paths named by the user: relative to the current directory when it is
        inside `target` (as with git), else relative to the version's root."""
        if not paths:
            return None
        selected = set()
        inside = cwd == target or target in cwd.parents
        for p in paths:
            rel = (worktree.resolve_user_path(target, cwd, p) if inside
                   else normalize_user_path(p))
            if rel == "":
                return None
            if rel not in manifest and not any(q.startswith(rel + "/") for q in manifest):
                raise InvalidInput(f"{p} is not in this version",
                                   hint="`dsv files list REF --recursive` shows its paths")
            selected.add(rel)
        return selected

    def diff(self, ref_a: str, ref_b: str | None = None,
             cwd: str | os.PathLike[str] = ".") -> Changes:
        """Changes from version A to version B, or to A's dataset's working directory."""
        a = self.resolve(ref_a, cwd)
        base = self.manifest(a)
        if ref_b is not None:
            return worktree.compare(base, self.manifest(self.resolve(ref_b, cwd)))
        ds = self.index.dataset_by("id", a.dataset)
        assert ds is not None
        root = self.dataset_root(ds)
        files, _ = worktree.scan(root, self.core.excluded(ds))
        snap = worktree.snapshot(root, files, self.index.stat_cache(ds.id), None)
        return worktree.compare(base, snap.manifest)

    # ---- tags -------------------------------------------------------------------------
    def tag(self, ref: str, name: str, force: bool = False,
            cwd: str | os.PathLike[str] = ".") -> Version:
        refs.check_tag_name(name)
        with self.locked("tag"):
            version = self.resolve(ref, cwd)
            if version.is_draft:
                raise InvalidInput(f"{version.id} is a draft; only committed versions can be tagged",
                                   hint=f"commit it first: `dsv versions commit {version.id}`")
            current = self.index.tag(version.dataset, name)
            if current is not None and current != version.id and not force:
                raise TagExists(f"tag {name!r} already points at {current}",
                                hint="pass --force to move it")
            with self.index.transaction():
                self.core.refs.set_tag(version.dataset, name, version.id)
            version.tags = self.index.tags_of(version.id)
            return version

    def delete_tag(self, spec: str, cwd: str | os.PathLike[str] = ".") -> str:
        """Remove `DATASET:NAME`; returns the version it pointed at."""
        ds_key, sep, name = spec.rpartition(":")
        with self.locked("tag -d"):
            ds = self.dataset(ds_key) if sep and ds_key else self.pick_dataset(None, cwd)
            if not sep:
                name = spec
            vid = self.index.tag(ds.id, name)
            if vid is None:
                raise RefError(f"dataset {ds.name!r} has no tag {name!r}")
            with self.index.transaction():
                self.core.refs.delete_tag(ds.id, name)
            return vid

    def tags(self, key: str | None = None) -> list[dict[str, Any]]:
        ds_id = self.dataset(key).id if key else None
        names = {d.id: d.name for d in self.index.datasets()}
        return [{"dataset": names.get(d, d), "tag": n, "version": v, "created": c}
                for d, n, v, c in self.index.tags(ds_id)]

    # ---- drafts -----------------------------------------------------------------------
    def create_version(self, key: str, message: str | None = None,
                       from_ref: str | None = None) -> Version:
        """A new draft of a dataset, starting from `from_ref` (default: its latest version)."""
        with self.locked("versions create"):
            ds = self.dataset(key)
            base: Version | None = None
            if from_ref:
                base = self.resolve(from_ref if ":" in from_ref else f"{ds.id}:{from_ref}")
                if base.dataset != ds.id:
                    raise InvalidInput(f"{from_ref} is a version of another dataset")
                if base.is_draft:
                    raise InvalidInput(f"{base.id} is a draft; a version can only start from a "
                                       "committed one", hint=f"commit it first: "
                                       f"`dsv versions commit {base.id}`")
            elif ds.latest:
                base = self.index.version(ds.latest)
            with Ingest(self.objects) as ingest:
                if base is not None:
                    root_tree, size, files = base.tree, base.size, base.files
                else:
                    root_tree, size = tree.build_tree({}, self.core.tree_writer(ingest))
                    files = 0
                v = Version(id=self.core.new_version_id(), dataset=ds.id, state=DRAFT,
                            tree=root_tree, parents=[base.id] if base else [], message=message,
                            author=default_author(), created=time.time(), size=size,
                            files=files)
                self.core.commit_objects(ingest, lambda: self.index.insert_version(v))
            return v

    def _draft(self, ref: str, cwd: str | os.PathLike[str] = ".") -> Version:
        v = self.resolve(ref, cwd)
        if not v.is_draft:
            raise VersionImmutable(f"version {v.id} is committed and cannot change",
                                   hint=f"create a draft from it: `dsv versions create "
                                        f"DATASET --from {v.id}`")
        return v

    def _set_draft_manifest(self, v: Version, manifest: Manifest, ingest: Ingest) -> Version:
        root_tree, size = tree.build_tree(manifest, self.core.tree_writer(ingest))

        def update() -> None:
            # Each `files put` checked its own links; the draft's links together must hold
            # too (read inside the transaction that records the new objects).
            tree.validate_links(manifest, self.objects.read)
            current = self.index.version(v.id)
            if current is None or not current.is_draft:
                raise VersionImmutable(f"version {v.id} was committed meanwhile")
            self.index.update_version(v.id, tree=root_tree, size=size, files=len(manifest))

        self.core.commit_objects(ingest, update)
        self.index.checkpoint()
        return self.version(v.id)

    def put_files(self, ref: str, sources: list[str | os.PathLike[str]],
                  target_path: str | None = None, cwd: str | os.PathLike[str] = ".") -> Version:
        """Add files to a draft: a file lands at TARGET/name, a directory's contents under TARGET."""
        target = normalize_user_path(target_path or "")
        with self.locked("files put"):
            v = self._draft(ref, cwd)
            manifest = self.manifest(v)
            with Ingest(self.objects) as ingest:
                for src in sources:
                    src_path = Path(cwd, src).resolve() if not os.path.isabs(src) else Path(src)
                    if src_path.is_dir():
                        files, _ = worktree.scan(src_path, [DSV_DIR])
                        prefix = target
                        base_dir = src_path
                    elif src_path.exists() or src_path.is_symlink():
                        files = {src_path.name: worktree.scan_one(src_path)}
                        prefix = target
                        base_dir = src_path.parent
                    else:
                        raise InvalidInput(f"{src} does not exist")
                    snap = worktree.snapshot(base_dir, files, {}, ingest)
                    for rel, entry in snap.manifest.items():
                        path = f"{prefix}/{rel}" if prefix else rel
                        _put_entry(manifest, check_relpath(path), entry)
                return self._set_draft_manifest(v, manifest, ingest)

    def delete_files(self, ref: str, paths: list[str], cwd: str | os.PathLike[str] = ".") -> Version:
        """Remove files or whole directories from a draft."""
        with self.locked("files delete"):
            v = self._draft(ref, cwd)
            manifest = self.manifest(v)
            for p in paths:
                rel = normalize_user_path(p)
                doomed = [q for q in manifest if rel == "" or q == rel or q.startswith(rel + "/")]
                if not doomed:
                    raise InvalidInput(f"{p} is not in draft {v.id}")
                for q in doomed:
                    del manifest[q]
            with Ingest(self.objects) as ingest:
                return self._set_draft_manifest(v, manifest, ingest)

    def commit_version(self, ref: str, message: str | None = None,
                       cwd: str | os.PathLike[str] = ".") -> Version:
        """Freeze a draft: from now on it can never change."""
        with self.locked("versions commit"):
            v = self._draft(ref, cwd)
            if message:
                v.message = message
            with Ingest(self.objects) as ingest:
                return self._write_committed(ingest, v, new=False)

    def create_version_from_path(self, key: str, source: str | os.PathLike[str],
                                 message: str | None = None,
                                 lineage: dict[str, Any] | None = None,
                                 commit: bool = True) -> Version:
        """A version holding exactly the files of `source`: committed, or a draft."""
        with self.locked("versions create"):
            ds = self.dataset(key)
            src = Path(source).resolve()
            if not src.is_dir():
                raise InvalidInput(f"{source} is not a directory")
            files, _ = worktree.scan(src, [DSV_DIR])
            with Ingest(self.objects) as ingest:
                with self.reporter.task("hashing", len(files)) as advance:
                    snap = worktree.snapshot(src, files, {}, ingest, advance)
                root_tree, size = tree.build_tree(snap.manifest, self.core.tree_writer(ingest))
                now = time.time()
                v = Version(id=self.core.new_version_id(), dataset=ds.id, state=DRAFT,
                            tree=root_tree, parents=[ds.latest] if ds.latest else [],
                            message=message, author=default_author(), created=now,
                            lineage=lineage, size=size, files=len(snap.manifest))
                if commit:
                    return self._write_committed(ingest, v, new=True)
                self.core.commit_objects(ingest, lambda: self.index.insert_version(v))
            return self.version(v.id)

    def commit_manifest(self, key: str, manifest: Manifest, message: str,
                        lineage: dict[str, Any] | None = None,
                        create_dataset: bool = False) -> Version:
        """Commit a version made of objects already in the store (imports, for one)."""
        with self.locked("commit"):
            try:
                ds = self.dataset(key)
            except DatasetNotFound:
                if not create_dataset:
                    raise
                ds = self.create_dataset(key)
            missing = [p for p, e in manifest.items() if not self.objects.has(e.oid)]
            if missing:
                raise InvalidInput(f"{len(missing)} file(s) have no stored content, e.g. "
                                   f"{missing[0]}")
            with Ingest(self.objects) as ingest:
                root_tree, size = tree.build_tree(manifest, self.core.tree_writer(ingest))
                now = time.time()
                v = Version(id=self.core.new_version_id(), dataset=ds.id, state=COMMITTED,
                            tree=root_tree, parents=[ds.latest] if ds.latest else [],
                            message=message, author=default_author(), created=now,
                            committed=now, lineage=lineage, size=size, files=len(manifest))
                return self._write_committed(ingest, v, new=True)

    def import_s3(self, url: str, **options: Any) -> Version:
        """`dsv import`: see imports.import_s3."""
        from . import imports
        return imports.import_s3(self, url, **options)

    def check_import(self, ref: str, **options: Any) -> Any:
        """`dsv import --check`: see imports.check_import. Returns an imports.CheckReport."""
        from . import imports
        return imports.check_import(self, ref, **options)

    def run(self, inputs: dict[str, str], outputs: dict[str, str], command: list[str],
            mount_root: str | os.PathLike[str] | None = None, message: str | None = None,
            mount: bool | None = None) -> Any:
        """`dsv run`: see jobs.run. Returns a jobs.JobResult."""
        from . import jobs
        return jobs.run(self, inputs, outputs, command, mount_root, message, mount)

    def update_version(self, ref: str, message: str, cwd: str | os.PathLike[str] = ".") -> Version:
        """Change a draft's message (a committed version's message is part of it: immutable)."""
        with self.locked("versions update"):
            v = self._draft(ref, cwd)
            with self.index.transaction():
                self.index.update_version(v.id, message=message)
            return self.version(v.id)

    def delete_version(self, ref: str, force: bool = False,
                       cwd: str | os.PathLike[str] = ".") -> Version:
        """Delete a draft, or with `force` a committed version nothing depends on."""
        with self.locked("versions delete"):
            v = self.resolve(ref, cwd)
            ds = self.index.dataset_by("id", v.dataset)
            assert ds is not None
            if not v.is_draft:
                if not force:
                    raise VersionImmutable(f"version {v.id} is committed",
                                           hint="pass --force to delete a committed version "
                                                "that nothing depends on")
                users = []
                if self.index.children(v.id):
                    users.append("later versions")
                if v.tags:
                    users.append("tags " + ", ".join(v.tags))
                if ds.head == v.id:
                    users.append("the working directory")
                if users:
                    raise VersionInUse(f"version {v.id} is used by {' and '.join(users)}")
            with self.index.transaction():
                self.index.delete_version(v.id)
                if ds.latest == v.id:
                    remaining = self.index.versions(ds.id, "committed")
                    self.core.refs.set_latest(ds.id, remaining[0].id if remaining else None)
            return v

    # ---- reading files of versions ---------------------------------------------------
    def files(self, ref: str, path: str = "", recursive: bool = False,
              cwd: str | os.PathLike[str] = ".") -> list[FileRow]:
        v = self.resolve(ref, cwd)
        rel = normalize_user_path(path)
        if recursive:
            manifest = self.manifest(v, rel)
            if not manifest:
                raise InvalidInput(f"{path} is not in version {v.id}")
            return [FileRow(p, _KIND_NAMES[e.kind], e.size, e.oid, e.mode)
                    for p, e in sorted(manifest.items())]
        try:
            rows = tree.list_dir(v.tree, self.read_tree, rel)
        except KeyError:
            manifest = self.manifest(v, rel)
            if not manifest:
                raise InvalidInput(f"{path} is not in version {v.id}") from None
            return [FileRow(p, _KIND_NAMES[e.kind], e.size, e.oid, e.mode)
                    for p, e in manifest.items()]
        return [FileRow(f"{rel}/{name}" if rel else name, _KIND_NAMES[kind], size, oid, mode)
                for name, kind, mode, size, oid in rows]

    def get_files(self, ref: str, target: str | os.PathLike[str], paths: list[str] | None = None,
                  cwd: str | os.PathLike[str] = ".") -> int:
        """Copy files of a version into `target` (overwriting same-named files only)."""
        v = self.resolve(ref, cwd)
        manifest = self.manifest(v)
        selected = self._select_paths(manifest, paths, Path(cwd).resolve(), Path(target))
        items = [(p, e) for p, e in manifest.items() if selected is None or is_under(p, selected)]

        dest = Path(target).resolve()
        self._check_target_outside_store(dest)
        self._ensure_blobs(v, [e for _p, e in items] + _links(manifest))
        tree.validate_links(manifest, self.objects.read)
        dest.mkdir(parents=True, exist_ok=True)
        with self.reporter.task("copying", len(items), sum(e.size for _, e in items)) as advance:
            worktree.Materializer(self.objects, dest, stat_rows=False).place(items, advance)
        return len(items)

    def open_file(self, ref: str, path: str, cwd: str | os.PathLike[str] = ".") -> BinaryIO:
        """A file of a version, opened for reading; its bytes are verified before it is returned."""
        v = self.resolve(ref, cwd)
        rel = normalize_user_path(path)
        entry = self.manifest(v, rel).get(rel)
        if entry is None or entry.kind != tree.FILE:
            raise InvalidInput(f"{path} is not a file of version {v.id}")
        if not self.objects.has(entry.oid):
            self._ensure_blobs(v, [entry])
        if self.index.locate(entry.oid) is None and self.objects.has_loose(entry.oid):
            if not self.objects.verify_loose(entry.oid):
                raise CorruptObject(f"object {entry.oid[:12]} ({rel}) is corrupt",
                                    hint="run `dsv verify` to list every damaged object")
            return open(self.objects.loose_path(entry.oid), "rb")
        return io.BytesIO(self.objects.read(entry.oid))

    # ---- remotes and sync -------------------------------------------------------------
    def remote_specs(self) -> list[RemoteSpec]:
        return [RemoteSpec(r["name"], r["url"], r["kind"], r["endpoint_url"], r["profile"],
                           r["ttl"], r["max_size"], bool(r["write_through"]),
                           bool(r["is_default"])) for r in self.index.remotes()]

    def remote_spec(self, name: str | None = None, kind: str | None = "origin") -> RemoteSpec:
        """A configured remote by name (of `kind`, unless None); without a name, the
        default remote of `kind`."""
        specs = self.remote_specs()
        if name is not None:
            for spec in specs:
                if spec.name == name and kind not in (None, spec.kind):
                    raise InvalidInput(f"{name} is {_KIND_WORDS[spec.kind]}, "
                                       f"not {_KIND_WORDS[kind]}")
                if spec.name == name:
                    return spec
            raise InvalidInput(f"no remote named {name!r}",
                               hint="`dsv remote list` shows the remotes")
        origins = [s for s in specs if s.kind == kind]
        chosen = [s for s in origins if s.is_default] or (origins if len(origins) == 1 else [])
        if not chosen:
            raise InvalidInput("no remote configured" if not origins else
                               "several remotes and none is the default",
                               hint="add one with `dsv remote add NAME URL`" if not origins else
                               "name the remote on the command line")
        return chosen[0]

    def add_remote(self, name: str, url: str, endpoint_url: str | None = None,
                   profile: str | None = None, cache: bool = False, ttl: str | None = None,
                   max_size: str | None = None, write_through: bool = False,
                   default: bool = False, cwd: str | os.PathLike[str] = ".") -> RemoteSpec:
        """Configure a remote (an origin, or with `cache` a cluster cache directory).
        Only names and URLs are stored: credentials come from the AWS chain at run time."""
        if not refs.is_valid_name(name):
            raise InvalidInput(f"invalid remote name {name!r}")
        url = normalize_url(url, cwd)
        check_outside_stores(url)
        if cache and url.startswith("s3://"):
            raise InvalidInput("a cluster cache is a shared directory, not an S3 URL")
        if not cache and (ttl or max_size or write_through):
            raise InvalidInput("--ttl, --max-size and --write-through are for --cache remotes")
        spec = RemoteSpec(name, url, "cache" if cache else "origin", endpoint_url, profile,
                          parse_duration(ttl) if ttl else None,
                          parse_size(max_size) if max_size else None, write_through)
        with self.locked("remote add"), self.index.transaction():
            if any(s.name == name for s in self.remote_specs()):
                raise InvalidInput(f"remote {name} already exists",
                                   hint=f"remove it first: dsv remote remove {name}")
            first = not any(s.kind == "origin" for s in self.remote_specs())
            spec.is_default = spec.kind == "origin" and (default or first)
            self.index.add_remote({"name": name, "url": url, "kind": spec.kind,
                                   "endpoint_url": endpoint_url, "profile": profile,
                                   "ttl": spec.ttl, "max_size": spec.max_size,
                                   "write_through": int(write_through),
                                   "is_default": int(spec.is_default), "created": time.time()})
            if spec.is_default:
                self.index.set_default_remote(name)
        return spec

    def remove_remote(self, name: str) -> RemoteSpec:
        spec = self.remote_spec(name, kind=None)
        with self.locked("remote remove"), self.index.transaction():
            self.index.delete_remote(name)
        return spec

    def push(self, remote: str | None = None, targets: list[str] | None = None,
             force: bool = False) -> Any:
        """Upload what the remote lacks, then move its refs (compare-and-swap)."""
        from . import sync
        with self.locked("push"):
            return sync.push(self, sync.open_remote(self, remote), list(targets or []), force)

    def fetch(self, remote: str | None = None) -> Any:
        """Bring the remote's versions, trees and refs (no file contents)."""
        from . import sync
        with self.locked("fetch"):
            return sync.fetch(self, sync.open_remote(self, remote))[0]

    def pull(self, remote: str | None = None, targets: list[str] | None = None,
             paths: list[str] | None = None, force: bool = False,
             checkout: bool = True) -> Any:
        """Fetch, move local refs forward, download the objects the versions (or only
        `paths`) need, and bring working directories forward to them."""
        marker = self.dsv_dir / CLONE_MARKER
        if os.path.lexists(marker) and remote in (None, "origin") and not targets and not paths:
            claim = _ClonePlan.take(marker)
            try:
                report = self._finish_clone()
            except BaseException:
                claim.release()
                raise
            claim.finish()
            return report
        with self.locked("pull"):
            return self._pull(remote, list(targets or []), paths, force, checkout)

    def _pull(self, remote: str | None, targets: list[str], paths: list[str] | None,
              force: bool, checkout: bool, prefetched: Any = None) -> Any:
        from . import sync
        before = {ds.id: ds.latest for ds in self.index.datasets()}
        report = sync.pull(self, sync.open_remote(self, remote), targets, paths, force,
                           prefetched=prefetched)
        if not checkout or paths:
            return report
        for vid in report.versions:
            v = self.version(vid)
            ds = self.index.dataset_by("id", v.dataset)
            if ds is None or ds.path is None or ds.latest != v.id or ds.head == v.id:
                continue
            # Like git: a working directory that follows latest moves with it; one checked
            # out elsewhere on purpose stays.
            if ds.head not in (None, before.get(ds.id)):
                report.notices.append(f"{ds.name}: working directory left at {ds.head} (not "
                                      f"the previous latest); `dsv checkout {ds.name}` "
                                      f"brings it to {v.id}")
                continue
            try:
                self.checkout(f"{ds.id}:{v.id}")
                report.checked_out.append(f"{ds.name}:{v.id}")
            except DirtyWorktree as exc:
                report.notices.append(f"{ds.name}: not checked out: {exc.message}")
        return report

    @classmethod
    def clone(cls, url: str, path: str | os.PathLike[str] | None = None,
              endpoint_url: str | None = None, profile: str | None = None,
              reporter: Reporter | None = None) -> tuple["Store", Any]:
        """A new workspace from a remote: datasets bound where the pusher had them, each
        checked out at its latest version.

        Safe to kill and to race: `.dsv/` is created exclusively and a clone marker
        (`.dsv/clone.json`, flock'd while the clone runs) says the clone is unfinished,
        so running the same clone again (or `dsv pull` inside it) completes it, and of
        two clones into one directory the loser stops before touching anything.
        """
        url = normalize_url(url)
        if path is None:
            path = url.rstrip("/").rpartition("/")[2] or "dsv-clone"
        root = Path(path).resolve()
        marker = root / DSV_DIR / CLONE_MARKER
        if os.path.lexists(marker):
            return cls._resume_clone(root, url, reporter)
        if root.exists() and any(root.iterdir()):
            raise StoreExists(f"{root} exists and is not empty")
        # The remote is checked before anything is created; a failed clone leaves nothing.
        open_backend(RemoteSpec("origin", url, endpoint_url=endpoint_url,
                                profile=profile)).check_reachable()
        made_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            (root / DSV_DIR).mkdir()
        except FileExistsError:
            raise StoreExists(f"{root} is being cloned into by another process",
                              hint="wait for it; if it was killed, run the same clone "
                                   "again to complete it") from None
        claim = _ClonePlan(marker, url, endpoint_url, profile)
        store: Store | None = None
        try:
            claim.create()
            store = cls.init(root, bind=False, reporter=reporter)
            store.add_remote("origin", url, endpoint_url=endpoint_url, profile=profile,
                             default=True)
            report = store._finish_clone()
        except BaseException:
            # Only what this clone made goes: the files its checkout placed (the directory
            # was empty, and no other clone can be in it while the marker is locked), then
            # its store, marker included; the lock is released last, so nobody can start
            # completing this clone while it is being removed.
            if store is not None:
                store.close()
            try:
                for child in root.iterdir():
                    if child.name == DSV_DIR:
                        continue
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() \
                        else child.unlink()
                shutil.rmtree(root / DSV_DIR, ignore_errors=True)
                if made_root:
                    root.rmdir()
            except OSError:
                pass  # best effort: the original error is what the user needs to see
            finally:
                claim.release()
            raise
        claim.finish()
        return store, report

    @classmethod
    def _resume_clone(cls, root: Path, url: str,
                      reporter: Reporter | None) -> tuple["Store", Any]:
        """Complete a clone that was killed: same remote, nothing deleted on failure."""
        claim = _ClonePlan.take(root / DSV_DIR / CLONE_MARKER)
        try:
            if claim.url != url:
                raise StoreExists(f"{root} holds an unfinished clone of {claim.url}",
                                  hint="run that clone again, or choose another directory")
            if (root / DSV_DIR / "config.json").exists():
                store = cls(root, reporter)
            else:
                store = cls.init(root, bind=False, reporter=reporter)
            if not any(s.name == "origin" for s in store.remote_specs()):
                store.add_remote("origin", claim.url, endpoint_url=claim.endpoint_url,
                                 profile=claim.profile, default=True)
            store.reporter.notice(f"completing the interrupted clone of {claim.url}")
            report = store._finish_clone()
        except BaseException:
            claim.release()
            raise
        claim.finish()
        return store, report

    def _finish_clone(self) -> Any:
        """Fetch from origin, bind datasets where the pusher had them, pull and check out."""
        from . import sync
        with self.locked("clone"):
            fetched = sync.fetch(self, sync.open_remote(self, "origin"))
            with self.index.transaction():
                for ref in fetched[1].values():
                    if ref.ref != refs.LATEST or ref.path is None:
                        continue
                    try:
                        rel = "." if ref.path == "." else self._workspace_path(self.root / ref.path)
                    except DsvError:
                        continue
                    if self.index.dataset_by("path", rel):
                        continue
                    ds = self.index.dataset_by("id", ref.dataset)
                    if ds is not None and ds.path is None:
                        self.index.update_dataset(ref.dataset, path=rel)
            return self._pull("origin", [], None, False, True, prefetched=fetched)

    def verify_remote(self, remote: str | None = None, read_data: bool = False,
                      subset: str | None = None, repair: bool = False) -> Any:
        """Check a remote (structure; with `read_data` or a `subset` such as "10%", the
        bytes too); with `repair`, upload good local copies of what it lacks or holds
        damaged. Returns a remotecheck.RemoteCheckReport."""
        from . import remotecheck, sync
        fraction = remotecheck.parse_subset(subset)
        with self.locked("verify --remote"):
            return remotecheck.check_remote(self, sync.open_remote(self, remote), read_data,
                                            fraction, repair)

    def prune_cache(self, name: str | None = None, older_than: str | None = None,
                    max_size: str | None = None) -> Any:
        """Evict cluster-cache entries unused for longer than the TTL, then the least
        recently used beyond the size budget (flags override the remote's settings)."""
        from .remotes.cache import ClusterCache
        spec = self.remote_spec(name, kind="cache")
        ttl = parse_duration(older_than) if older_than else spec.ttl
        budget = parse_size(max_size) if max_size else spec.max_size
        if ttl is None and budget is None:
            raise InvalidInput(f"cache {spec.name} has no --ttl or --max-size",
                               hint="pass --older-than and/or --max-size")
        check_outside_stores(spec.url)
        return ClusterCache(spec.url).prune(ttl, budget)

    def _ensure_blobs(self, version: Version, entries: list[Entry]) -> None:
        """Download the blobs of `entries` this store lacks (see sync.ensure_blobs)."""
        from . import sync
        with self.locked("download"):
            sync.ensure_blobs(self, version, {e.oid: e.size for e in entries})

    # ---- maintenance ----------------------------------------------------------------
    def _reachable(self) -> set[str]:
        """Every object some version (draft or committed) needs, records included."""
        live: set[str] = set()
        for v in self.index.all_versions():
            if v.record:
                live.add(v.record)
            if v.tree in live:
                continue
            for _kind, oid in tree.subtree_ids(v.tree, self.read_tree):
                live.add(oid)
        return live

    def gc(self, dry_run: bool = False) -> GcReport:
        """Delete objects no version needs; rewrite packs that hold any such object."""
        report = GcReport(dry_run=dry_run)
        with self.locked("gc"):
            live = self._reachable()
            if self.core.writers_alive():
                # An import between its batches holds objects the index names (`imported`)
                # that no version reaches yet: they stay while any other writer runs.
                pending = self.index.imported_oids() - live
                report.kept_for_writers = len(pending)
                live |= pending
            if not dry_run:
                # First forget cache rows naming doomed objects: a commit after a gc killed
                # half-way must re-hash those files, never trust a row whose object is gone.
                with self.index.transaction():
                    self.index.forget_unstored(live)
            packs = self.index.packs()
            # Packs on disk the index never learned of are leftovers of killed writers.
            for pack_id in list(self.objects.iter_pack_ids()):
                if pack_id not in packs:
                    report.removed_packs += 1
                    report.freed_bytes += self.objects.pack_path(pack_id).stat().st_size
                    if not dry_run:
                        self.objects.delete_pack(pack_id)
            for pack_id, (size, _count) in packs.items():
                entries = self.index.pack_objects(pack_id)
                keep = [e for e in entries if e[0] in live]
                if len(keep) == len(entries):
                    continue
                dead_bytes = sum(e[2] for e in entries if e[0] not in live)
                report.removed_objects += len(entries) - len(keep)
                report.freed_bytes += dead_bytes
                if dry_run:
                    report.removed_packs += 1
                    continue
                with Ingest(self.objects) as ingest:
                    for oid, _off, _len, kind in keep:
                        ingest.add_new(oid, kind, self.objects.read(oid))
                    report.repacked_packs += bool(keep)
                    self.core.commit_objects(ingest, crash="gc:repacked", retire=[pack_id])
                crashpoint("gc:index-updated")
                self.objects.delete_pack(pack_id)
                report.removed_packs += 1
            for oid in list(self.objects.iter_link_sources()):
                if oid not in live and not dry_run:
                    self.objects.delete_link_source(oid)
            for oid in list(self.objects.iter_loose()):
                if oid not in live:
                    path = self.objects.loose_path(oid)
                    report.removed_objects += 1
                    report.freed_bytes += path.stat().st_size
                    if not dry_run:
                        self.objects.delete_loose(oid)
            if not dry_run:
                from .jobs import remove_unused_inputs
                remove_unused_inputs(self)
                self.index.checkpoint()
        return report

    def verify(self, repair: bool = False) -> VerifyReport:
        """Re-hash every object and check that every version is complete."""
        report = VerifyReport()
        with self.locked("verify") if repair else nullcontext():
            packs = self.index.packs()
            on_disk = set(self.objects.iter_pack_ids())
            with self.reporter.task("verifying packs", len(on_disk)) as advance:
                for pack_id in sorted(on_disk):
                    ok, bad, count = self.objects.verify_pack(pack_id)
                    size = self.objects.pack_path(pack_id).stat().st_size
                    report.objects_checked += count
                    report.bytes_checked += size
                    if not ok:
                        report.problems.append(f"pack {pack_id[:12]}: contents do not match its name")
                    for oid in bad:
                        report.problems.append(f"object {oid[:12]} in pack {pack_id[:12]} is corrupt")
                    if pack_id not in packs:
                        if repair and ok:
                            entries = self.objects.read_pack_entries(pack_id)
                            with self.index.transaction():
                                self.index.add_pack(pack_id, size, entries)
                            report.repaired.append(f"indexed pack {pack_id[:12]}")
                    advance(1, size)
            for pack_id in packs:
                if pack_id not in on_disk:
                    report.problems.append(f"pack {pack_id[:12]} is in the index but missing")
                    if repair:
                        with self.index.transaction():
                            self.index.delete_pack(pack_id)
                        report.repaired.append(f"forgot missing pack {pack_id[:12]}")
            loose = list(self.objects.iter_loose())
            with self.reporter.task("verifying objects", len(loose)) as advance:
                for oid in loose:
                    size = self.objects.loose_path(oid).stat().st_size
                    report.objects_checked += 1
                    report.bytes_checked += size
                    if not self.objects.verify_loose(oid):
                        report.problems.append(f"object {oid[:12]} is corrupt")
                    advance(1, size)
            self._verify_versions(report)
        return report

    @classmethod
    def rebuild_index(cls, path: str | os.PathLike[str] = ".", reporter: Reporter | None = None,
                      exact: bool = False) -> RebuildReport:
        """Recreate `index.db` from the packs and version records (objects are the truth).

        The old database is kept beside it as `index.db.broken-<time>`; dataset names,
        directories and tags are copied from it when it can still be read, otherwise
        datasets are named from their newest version record. Drafts live only in the
        index and are lost with it.
        """
        root = find_store(Path(path), exact)
        dsv_dir = root / DSV_DIR
        lock = StoreLock(dsv_dir / "lock")
        lock.acquire("index rebuild", on_wait=(reporter or Reporter()).notice)
        try:
            old_datasets, old_tags, old_remotes = _salvage(dsv_dir / "index.db")
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
                for row in old_remotes:  # remote settings (never secrets) are index-only
                    index.add_remote(row)
                _mark_incomplete(index, objects, old_remotes)
            objects.close()
            index.checkpoint()
            index.close()
            return RebuildReport(packs=len(list(objects.iter_pack_ids())),
                                 versions=len(records),
                                 datasets=len({r.version.dataset for r in records}),
                                 skipped=skipped)
        finally:
            lock.release()

    def _verify_versions(self, report: VerifyReport) -> None:
        loose = set(self.objects.iter_loose())
        packed = {oid for oid, _pack, _kind in self.index.packed_oids()}
        checked_trees: set[str] = set()
        promised = self.index.promised()
        for v in self.index.all_versions():
            report.versions_checked += 1
            label = f"version {v.id}"
            try:
                for kind, oid in tree.subtree_ids(v.tree, self.read_tree):
                    if oid in checked_trees:
                        continue
                    if oid not in packed and oid not in loose and \
                            not (kind != tree.DIR and v.id in promised):
                        # (a fetched version's blobs may stay on its remote until pulled)
                        report.problems.append(f"{label}: object {oid[:12]} is missing")
                checked_trees.add(v.tree)
            except DsvError as exc:
                report.problems.append(f"{label}: {exc.message}")
            if v.state == "committed":
                if not v.record or (v.record not in packed and v.record not in loose):
                    report.problems.append(f"{label}: its version record is missing")
                else:
                    try:
                        sealed = parse_record(self.objects.read(v.record), v.record).version
                        if sealed.id != v.id or sealed.tree != v.tree:
                            report.problems.append(f"{label}: record disagrees with the index")
                    except DsvError as exc:
                        report.problems.append(f"{label}: bad record ({exc.message})")
        for ds in self.index.datasets():
            for field_name in ("latest", "head"):
                vid = getattr(ds, field_name)
                if vid and self.index.version(vid) is None:
                    report.problems.append(f"dataset {ds.name}: {field_name} {vid} is missing")


CLONE_MARKER = "clone.json"


class _ClonePlan:
    """`.dsv/clone.json`: an unfinished clone's remote, flock'd by the process cloning.

    Created exclusively right after `.dsv/`, removed when the clone is complete. Another
    process finding it locked knows a clone is running; finding it unlocked, that one
    was killed and can be completed.
    """

    def __init__(self, path: Path, url: str, endpoint_url: str | None,
                 profile: str | None) -> None:
        self.path, self.url, self.endpoint_url, self.profile = path, url, endpoint_url, profile
        self._fd: int | None = None

    def create(self) -> None:
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        fileio.write_all(fd, json.dumps({"url": self.url, "endpoint_url": self.endpoint_url,
                                         "profile": self.profile}).encode() + b"\n")
        os.fsync(fd)

    @classmethod
    def take(cls, path: Path) -> "_ClonePlan":
        import fcntl
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            raise StoreExists(f"{path} is not a clone marker dsv wrote",
                              hint="remove the directory and clone again") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreExists(f"{path.parent.parent} is being cloned into by another process",
                              hint="wait for it to finish") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 10:
                raise ValueError("not a clone marker")
            info = load_bounded(os.read(fd, 64 << 10), 64 << 10)
            url = info["url"]
            if not isinstance(url, str):
                raise ValueError("no url")
            endpoint, profile = info.get("endpoint_url"), info.get("profile")
        except (ValueError, KeyError, TypeError, OSError):
            os.close(fd)
            raise StoreExists(f"{path} is damaged", hint="remove the directory and clone "
                              "again") from None
        plan = cls(path, url, endpoint if isinstance(endpoint, str) else None,
                   profile if isinstance(profile, str) else None)
        plan._fd = fd
        return plan

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def finish(self) -> None:
        """The clone is complete: the marker goes, then the lock."""
        fileio.unlink_quietly(str(self.path))
        self.release()


def _links(manifest: Manifest) -> list[Entry]:
    return [e for e in manifest.values() if e.kind == tree.LINK]


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


def _salvage(db_path: Path) -> tuple[dict[str, tuple], list[tuple], list[dict[str, Any]]]:
    """Dataset rows, tags and remotes from a damaged index, as far as they can be read."""
    if not db_path.exists():
        return {}, [], []
    import sqlite3
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        datasets = {r[0]: r for r in conn.execute(
            "SELECT id, name, path, description, created FROM datasets")}
        tags = list(conn.execute("SELECT dataset, name, version, created FROM tags"))
    except sqlite3.Error:
        return {}, [], []
    try:
        cursor = conn.execute("SELECT * FROM remotes")
        cols = [d[0] for d in cursor.description]
        remotes = [dict(zip(cols, r)) for r in cursor]
    except sqlite3.Error:
        remotes = []  # a store from before schema 3
    conn.close()
    return datasets, tags, remotes


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


def _restore_versions(index: Index, records: list[Record],
                      old_datasets: dict[str, tuple], old_tags: list[tuple]) -> None:
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
        ref_store.set_latest(v.dataset, v.id)
        index.update_dataset(v.dataset, head=v.id if datasets[v.dataset].path else None)
    for ds_id, name, vid, _created in old_tags:
        found = index.version(vid)
        if ds_id in datasets and found is not None and found.dataset == ds_id and \
                refs.is_valid_name(name) and name != refs.LATEST:
            ref_store.set_tag(ds_id, name, vid)


def _put_entry(manifest: Manifest, path: str, entry: Entry) -> None:
    """Add `path`, replacing a file in the way of a directory and vice versa."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        manifest.pop("/".join(parts[:i]), None)
    prefix = path + "/"
    for existing in [p for p in manifest if p.startswith(prefix)]:
        del manifest[existing]
    manifest[path] = entry

