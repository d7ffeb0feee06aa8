"""The `Store`: dsv's Python API, tying the index, objects, trees and working trees together.

Owns every user-level operation (one method per command), the `.dsv/` layout, the
version record format and the order of writes that keeps a store consistent when a
process dies at any point: objects first (fsynced), then one index transaction. Must
never print or parse command lines: that is cli.py's job.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

from . import (
    checkout,
    datasets,
    fileio,
    imports,
    jobs,
    maintenance,
    refs,
    remotecheck,
    sync,
    versions,
)
from .core import Core, create_layout, find_store
from .errors import DirtyWorktree, DsvError, InvalidInput, StoreExists
from .jsonio import load_bounded
from .model import (
    Changes,
    CheckoutReport,
    Dataset,
    FileRow,
    GcReport,
    RebuildReport,
    StatusReport,
    VerifyReport,
    Version,
)
from .paths import STORE_DIR as DSV_DIR
from .remotes.base import (
    RemoteSpec,
    check_outside_stores,
    normalize_url,
    open_backend,
    parse_duration,
    parse_size,
)
from .reporting import Reporter
from .tree import Manifest

STORE_FORMAT = 1
DATASET_ID_LEN = 8
VERSION_ID_LEN = 10






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
            store.create_dataset(name or datasets.dataset_name_for(root), path=root)
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

    def create_dataset(self, name: str, path: str | os.PathLike[str] | None = None,
                       description: str | None = None) -> Dataset:
        return datasets.create_dataset(self.core, name=name, path=path, description=description)


    def update_dataset(self, key: str, name: str | None = None, description: str | None = None,
                       path: str | os.PathLike[str] | None = None) -> Dataset:
        return datasets.update_dataset(self.core, key=key, name=name, description=description, path=path)


    def delete_dataset(self, key: str) -> Dataset:
        """Forget a dataset and its versions (its files on disk are left alone)."""
        return datasets.delete_dataset(self.core, key=key)


    # ---- refs and versions --------------------------------------------------------------
    def resolve(self, ref: str, cwd: str | os.PathLike[str] = ".") -> Version:
        """The version a ref names; a bare selector (`:v1`, `v1`) uses the cwd's dataset."""
        return self.core.resolve(ref, cwd)

    def version(self, vid: str) -> Version:
        return self.core.version(vid)

    def log(self, key: str | None = None, cwd: str | os.PathLike[str] = ".",
            include_drafts: bool = False) -> list[Version]:
        return versions.log(self.core, key=key, cwd=cwd, include_drafts=include_drafts)


    def versions(self, key: str, state: str | None = None) -> list[Version]:
        return versions.versions(self.core, key=key, state=state)


    def manifest(self, version: Version, prefix: str = "") -> Manifest:
        return self.core.manifest(version, prefix)

    def read_tree(self, oid: str) -> bytes:
        return self.core.read_tree(oid)

    # ---- commit, status, checkout -----------------------------------------------------
    def _head(self, ds: Dataset) -> Version | None:
        return self.index.version(ds.head) if ds.head else None

    def status(self, key: str | None = None, cwd: str | os.PathLike[str] = ".") -> StatusReport:
        """What changed in a dataset's working directory since the version it was last made."""
        return checkout.status(self.core, key=key, cwd=cwd)


    def statuses(self, key: str | None = None,
                 cwd: str | os.PathLike[str] = ".") -> list[StatusReport]:
        """Status of the dataset named, else of the one `cwd` is in, else of every dataset
        bound to a directory (as `git status` covers the whole repository)."""
        return checkout.statuses(self.core, key=key, cwd=cwd)


    def commit(self, message: str, key: str | None = None, cwd: str | os.PathLike[str] = ".",
               author: str | None = None, allow_empty: bool = False,
               lineage: dict[str, Any] | None = None) -> Version:
        """Snapshot a dataset's working directory as a new committed version."""
        return versions.commit(self.core, message=message, key=key, cwd=cwd, author=author, allow_empty=allow_empty, lineage=lineage)


    def checkout(self, ref: str, to: str | os.PathLike[str] | None = None,
                 paths: list[str] | None = None, force: bool = False, link: str = "auto",
                 cwd: str | os.PathLike[str] = ".") -> CheckoutReport:
        """Make a directory (the dataset's own, or `to`) hold exactly one version's files."""
        return checkout.checkout(self.core, ref=ref, to=to, paths=paths, force=force, link=link, cwd=cwd)


    def diff(self, ref_a: str, ref_b: str | None = None,
             cwd: str | os.PathLike[str] = ".") -> Changes:
        """Changes from version A to version B, or to A's dataset's working directory."""
        return checkout.diff(self.core, ref_a=ref_a, ref_b=ref_b, cwd=cwd)


    # ---- tags -------------------------------------------------------------------------
    def tag(self, ref: str, name: str, force: bool = False,
            cwd: str | os.PathLike[str] = ".") -> Version:
        return versions.tag(self.core, ref=ref, name=name, force=force, cwd=cwd)


    def delete_tag(self, spec: str, cwd: str | os.PathLike[str] = ".") -> str:
        """Remove `DATASET:NAME`; returns the version it pointed at."""
        return versions.delete_tag(self.core, spec=spec, cwd=cwd)


    def tags(self, key: str | None = None) -> list[dict[str, Any]]:
        return versions.tags(self.core, key=key)


    # ---- drafts -----------------------------------------------------------------------
    def create_version(self, key: str, message: str | None = None,
                       from_ref: str | None = None) -> Version:
        """A new draft of a dataset, starting from `from_ref` (default: its latest version)."""
        return versions.create_version(self.core, key=key, message=message, from_ref=from_ref)


    def put_files(self, ref: str, sources: list[str | os.PathLike[str]],
                  target_path: str | None = None, cwd: str | os.PathLike[str] = ".") -> Version:
        """Add files to a draft: a file lands at TARGET/name, a directory's contents under TARGET."""
        return versions.put_files(self.core, ref=ref, sources=sources, target_path=target_path, cwd=cwd)


    def delete_files(self, ref: str, paths: list[str], cwd: str | os.PathLike[str] = ".") -> Version:
        """Remove files or whole directories from a draft."""
        return versions.delete_files(self.core, ref=ref, paths=paths, cwd=cwd)


    def commit_version(self, ref: str, message: str | None = None,
                       cwd: str | os.PathLike[str] = ".") -> Version:
        """Freeze a draft: from now on it can never change."""
        return versions.commit_version(self.core, ref=ref, message=message, cwd=cwd)


    def create_version_from_path(self, key: str, source: str | os.PathLike[str],
                                 message: str | None = None,
                                 lineage: dict[str, Any] | None = None,
                                 commit: bool = True) -> Version:
        """A version holding exactly the files of `source`: committed, or a draft."""
        return versions.create_version_from_path(self.core, key=key, source=source, message=message, lineage=lineage, commit=commit)


    def commit_manifest(self, key: str, manifest: Manifest, message: str,
                        lineage: dict[str, Any] | None = None,
                        create_dataset: bool = False) -> Version:
        """Commit a version made of objects already in the store (imports, for one)."""
        return versions.commit_manifest(self.core, key=key, manifest=manifest, message=message, lineage=lineage, create_dataset=create_dataset)


    def import_s3(self, url: str, **options: Any) -> Version:
        """`dsv import`: see imports.import_s3."""
        return imports.import_s3(self.core, url, **options)

    def check_import(self, ref: str, **options: Any) -> Any:
        """`dsv import --check`: see imports.check_import. Returns an imports.CheckReport."""
        return imports.check_import(self.core, ref, **options)

    def run(self, inputs: dict[str, str], outputs: dict[str, str], command: list[str],
            mount_root: str | os.PathLike[str] | None = None, message: str | None = None,
            mount: bool | None = None) -> Any:
        """`dsv run`: see jobs.run. Returns a jobs.JobResult."""
        return jobs.run(self.core, inputs, outputs, command, mount_root, message, mount)

    def update_version(self, ref: str, message: str, cwd: str | os.PathLike[str] = ".") -> Version:
        """Change a draft's message (a committed version's message is part of it: immutable)."""
        return versions.update_version(self.core, ref=ref, message=message, cwd=cwd)


    def delete_version(self, ref: str, force: bool = False,
                       cwd: str | os.PathLike[str] = ".") -> Version:
        """Delete a draft, or with `force` a committed version nothing depends on."""
        return versions.delete_version(self.core, ref=ref, force=force, cwd=cwd)


    # ---- reading files of versions ---------------------------------------------------
    def files(self, ref: str, path: str = "", recursive: bool = False,
              cwd: str | os.PathLike[str] = ".") -> list[FileRow]:
        return checkout.files(self.core, ref=ref, path=path, recursive=recursive, cwd=cwd)


    def get_files(self, ref: str, target: str | os.PathLike[str], paths: list[str] | None = None,
                  cwd: str | os.PathLike[str] = ".") -> int:
        """Copy files of a version into `target` (overwriting same-named files only)."""
        return checkout.get_files(self.core, ref=ref, target=target, paths=paths, cwd=cwd)


    def open_file(self, ref: str, path: str, cwd: str | os.PathLike[str] = ".") -> BinaryIO:
        """A file of a version, opened for reading; its bytes are verified before it is returned."""
        return checkout.open_file(self.core, ref=ref, path=path, cwd=cwd)


    # ---- remotes and sync -------------------------------------------------------------
    def remote_specs(self) -> list[RemoteSpec]:
        """Every configured remote (origins and cluster caches)."""
        return self.core.remote_specs()

    def remote_spec(self, name: str | None = None, kind: str | None = "origin") -> RemoteSpec:
        """A configured remote by name (of `kind`, unless None); without a name, the
        default remote of `kind`."""
        return self.core.remote_spec(name, kind)

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
        with self.locked("push"):
            return sync.push(self.core, sync.open_remote(self.core, remote), list(targets or []), force)

    def fetch(self, remote: str | None = None) -> Any:
        """Bring the remote's versions, trees and refs (no file contents)."""
        with self.locked("fetch"):
            return sync.fetch(self.core, sync.open_remote(self.core, remote))[0]

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
        before = {ds.id: ds.latest for ds in self.index.datasets()}
        report = sync.pull(self.core, sync.open_remote(self.core, remote), targets, paths, force,
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
        with self.locked("clone"):
            fetched = sync.fetch(self.core, sync.open_remote(self.core, "origin"))
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
        fraction = remotecheck.parse_subset(subset)
        with self.locked("verify --remote"):
            return remotecheck.check_remote(self.core, sync.open_remote(self.core, remote), read_data,
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

    # ---- maintenance ----------------------------------------------------------------
    def gc(self, dry_run: bool = False) -> GcReport:
        """Delete objects no version needs; rewrite packs that hold any such object."""
        return maintenance.gc(self.core, dry_run=dry_run)


    def verify(self, repair: bool = False) -> VerifyReport:
        """Re-hash every object and check that every version is complete."""
        return maintenance.verify(self.core, repair=repair)


    @classmethod
    def rebuild_index(cls, path: str | os.PathLike[str] = ".", reporter: Reporter | None = None,
                      exact: bool = False) -> RebuildReport:
        """Recreate `index.db` from the packs and version records (objects are the truth).

        The old database is kept beside it as `index.db.broken-<time>`; dataset names,
        directories and tags are copied from it when it can still be read, otherwise
        datasets are named from their newest version record. Drafts live only in the
        index and are lost with it.
        """
        return maintenance.rebuild_index(path=path, reporter=reporter, exact=exact)



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








