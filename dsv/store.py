"""The `Store`: dsv's Python API, a typed facade over the operation modules.

Owns the public surface only: one documented method per user-level operation, each
delegating to the module that owns it (datasets, versions, checkout, maintenance,
settings, sync, imports, jobs, remotecheck) with the open `core.Core`. Must never hold
logic of its own, print, or parse command lines (that is the CLI's job).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

# Modules the everyday local commands (status, commit, log, checkout) need are imported
# here; the others (sync, jobs, imports, maintenance, ...) by the methods that use them,
# because every command pays at start-up for every module it imports.
from . import checkout, datasets, versions
from .core import Core, create_layout, find_store
from .model import (Changes, CheckoutReport, Dataset, Entry, FileRow, Manifest, MonitorReport,
                    StatusReport, TagRow, Version)
from .reporting import Reporter

if TYPE_CHECKING:  # what only the commands that import their modules when they run return
    from .remotes.base import RemoteSpec
    from .reports import (FetchReport, GcReport, ImportCheckReport, JobResult, MaintainReport,
                          MergeReport,
                          PruneReport, PullReport, PushReport, RebuildReport,
                          RemoteCheckReport, RemoteGcReport, VerifyReport)

__all__ = ["Store", "find_store"]


class Store:
    """A dsv store: open one with `dsv.open(path)`, create one with `dsv.init(path)`.

    `core` (and its `index` and `objects`, also reachable here) is the open store the
    operations work on: there for tools and tests, not a stable API.
    """

    def __init__(self, root: Path, reporter: Reporter | None = None) -> None:
        """Open the store whose workspace root is `root` (use `open` to search upwards)."""
        self._adopt(Core(root, reporter))

    @classmethod
    def _around(cls, core: Core) -> "Store":
        """A Store facade for an already open core."""
        store = cls.__new__(cls)
        store._adopt(core)
        return store

    def _adopt(self, core: Core) -> None:
        self.core = core
        self.root, self.dsv_dir = self.core.root, self.core.dsv_dir
        self.tmp_dir = self.core.tmp_root
        self.reporter = self.core.reporter
        self.index, self.objects = self.core.index, self.core.objects
        self.core.fault_trees = self._fault_trees

    def _fault_trees(self, root: str) -> None:
        """Core's hook for a version fetched without its trees (see sync.fetch.fault_in)."""
        from .sync import fetch as sync_fetch
        sync_fetch.fault_in(self.core, root)

    # ---- opening, creating, closing -------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", reporter: Reporter | None = None,
             exact: bool = False) -> "Store":
        """The store holding `path`: the nearest `.dsv/` at or above it (with `exact`,
        `path` itself must be the workspace or its `.dsv/`)."""
        return cls(find_store(Path(path), exact), reporter)

    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".", name: str | None = None,
             bind: bool = True, reporter: Reporter | None = None) -> "Store":
        """Create a store at `path`; with `bind`, `path` itself becomes a dataset's working
        directory (named `name`, else after the directory)."""
        root = Path(path).resolve()
        create_layout(root)
        store = cls(root, reporter)
        if bind:
            store.create_dataset(name or datasets.dataset_name_for(root), path=root)
        return store

    def close(self) -> None:
        """Release the lock and close the index and objects (also done by `with`)."""
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
        """Every dataset of the store."""
        return self.index.datasets()

    def dataset_by_id(self, ds_id: str) -> Dataset | None:
        """The dataset with id `ds_id`, or None if there is none (it may have been
        deleted since a version naming it was read)."""
        return self.core.dataset_by_id(ds_id)

    def dataset(self, key: str) -> Dataset:
        """A dataset by id or name (DatasetNotFound if there is none)."""
        return self.core.dataset(key)

    def dataset_root(self, ds: Dataset) -> Path:
        """The absolute working directory of `ds` (InvalidInput if it is not bound to one)."""
        return self.core.dataset_root(ds)

    def dataset_at(self, cwd: str | os.PathLike[str] = ".") -> Dataset | None:
        """The dataset whose working directory holds `cwd` (the deepest one)."""
        return self.core.dataset_at(cwd)

    def pick_dataset(self, key: str | None, cwd: str | os.PathLike[str] = ".") -> Dataset:
        """The dataset named by `key`, else the one of `cwd`, else the only one."""
        return self.core.pick_dataset(key, cwd)

    def create_dataset(self, name: str, path: str | os.PathLike[str] | None = None,
                       description: str | None = None) -> Dataset:
        """A new dataset, bound to `path` (created if missing) when one is given."""
        return datasets.create_dataset(self.core, name=name, path=path, description=description)

    def update_dataset(self, key: str, name: str | None = None, description: str | None = None,
                       path: str | os.PathLike[str] | None = None) -> Dataset:
        """Rename a dataset, change its description, or bind it to a working directory;
        returns it as it is now."""
        return datasets.update_dataset(self.core, key=key, name=name, description=description,
                                       path=path)

    def delete_dataset(self, key: str) -> Dataset:
        """Forget a dataset and its versions (its files on disk are left alone)."""
        return datasets.delete_dataset(self.core, key=key)

    def start_monitor(self, key: str | None = None, cwd: str | os.PathLike[str] = "."
                      ) -> MonitorReport:
        """Start the file-change monitor of a dataset's directory (Linux: inotify), so that
        a commit looks only at what changed instead of walking every file."""
        return checkout.start_monitor(self.core, key=key, cwd=cwd)

    def stop_monitor(self, key: str | None = None, cwd: str | os.PathLike[str] = "."
                     ) -> MonitorReport:
        """Stop the file-change monitor of a dataset's directory."""
        return checkout.stop_monitor(self.core, key=key, cwd=cwd)

    def monitor(self, key: str | None = None, cwd: str | os.PathLike[str] = ".") -> MonitorReport:
        """Whether a file-change monitor watches a dataset's directory."""
        return checkout.monitor_report(self.core, key=key, cwd=cwd)

    # ---- refs and versions --------------------------------------------------------------
    def resolve(self, ref: str, cwd: str | os.PathLike[str] = ".") -> Version:
        """The version a ref names; a bare selector (`:v1`, `v1`) uses the cwd's dataset."""
        return self.core.resolve(ref, cwd)

    def version(self, vid: str) -> Version:
        """A version by its full id, with its tags (RefError if there is none)."""
        return self.core.version(vid)

    def log(self, key: str | None = None, cwd: str | os.PathLike[str] = ".",
            include_drafts: bool = False) -> list[Version]:
        """A dataset's committed versions (and drafts, with `include_drafts`), newest first,
        each with its tags."""
        return versions.log(self.core, key=key, cwd=cwd, include_drafts=include_drafts)

    def log_graph(self, history: list[Version]) -> list[tuple[str, Version | None]]:
        """`history` (as `log` returns it) drawn as `git log --graph` does: (prefix,
        version) rows, children before parents, with connecting rows (version None)."""
        return versions.graph(history)

    def versions(self, key: str, state: str | None = None) -> list[Version]:
        """A dataset's versions, newest first; only drafts or committed ones with `state`."""
        return versions.versions(self.core, key=key, state=state)

    def manifest(self, version: Version, prefix: str = "") -> Manifest:
        """Every file of `version` (only those under `prefix`, if given): path → Entry."""
        return self.core.manifest(version, prefix)

    def read_tree(self, oid: str) -> bytes:
        """The bytes of tree object `oid` (see docs/format.md, "Trees")."""
        return self.core.read_tree(oid)

    # ---- commit, status, checkout -----------------------------------------------------
    def status(self, key: str | None = None, cwd: str | os.PathLike[str] = ".") -> StatusReport:
        """What changed in a dataset's working directory since the version it was last made."""
        return checkout.status(self.core, key=key, cwd=cwd)

    def statuses(self, key: str | None = None, cwd: str | os.PathLike[str] = ".",
                 list_ignored: bool = False) -> list[StatusReport]:
        """Status of the dataset named, else of the one `cwd` is in, else of every dataset
        bound to a directory (as `git status` covers the whole repository); with
        `list_ignored`, each lists what its `.dsvignore` files leave out."""
        return checkout.statuses(self.core, key=key, cwd=cwd, list_ignored=list_ignored)

    def commit(self, message: str, key: str | None = None, cwd: str | os.PathLike[str] = ".",
               author: str | None = None, allow_empty: bool = False,
               lineage: dict[str, Any] | None = None, force: bool = False,
               paths: list[str] | None = None) -> Version:
        """Snapshot a dataset's working directory as a new committed version (refused when
        the directory is behind `latest`, unless `force`); with `paths`, only what lies at
        or under them (the rest of the directory is not looked at)."""
        return versions.commit(self.core, message=message, key=key, cwd=cwd, author=author,
                               allow_empty=allow_empty, lineage=lineage, force=force,
                               paths=paths)

    def checkout(self, ref: str, to: str | os.PathLike[str] | None = None,
                 paths: list[str] | None = None, force: bool = False, link: str = "auto",
                 cwd: str | os.PathLike[str] = ".") -> CheckoutReport:
        """Make a directory (the dataset's own, or `to`) hold exactly one version's files."""
        return checkout.checkout(self.core, ref=ref, to=to, paths=paths, force=force, link=link,
                                 cwd=cwd)

    def diff(self, ref_a: str | None = None, ref_b: str | None = None,
             paths: list[str] | None = None, cwd: str | os.PathLike[str] = ".") -> Changes:
        """Changes from version A to version B, or to A's dataset's working directory (no
        A: from the head of the dataset of `cwd`), limited to `paths` if given."""
        return checkout.diff(self.core, ref_a=ref_a, ref_b=ref_b, paths=paths, cwd=cwd)

    def split_diff_words(self, words: list[str], cwd: str | os.PathLike[str] = "."
                         ) -> tuple[str | None, str | None, list[str]]:
        """`[REF [REF]] [PATH…]` as `dsv diff` takes them: (ref A, ref B, paths)."""
        return checkout.split_diff_words(self.core, words, cwd)

    # ---- tags -------------------------------------------------------------------------
    def tag(self, ref: str, name: str, force: bool = False,
            cwd: str | os.PathLike[str] = ".") -> Version:
        """Point tag `name` of the version's dataset at the committed version `ref` names
        (TagExists if it names another, unless `force`); returns that version."""
        return versions.tag(self.core, ref=ref, name=name, force=force, cwd=cwd)

    def delete_tag(self, spec: str, cwd: str | os.PathLike[str] = ".") -> str:
        """Remove `DATASET:NAME`; returns the version it pointed at."""
        return versions.delete_tag(self.core, spec=spec, cwd=cwd)

    def tags(self, key: str | None = None) -> list[TagRow]:
        """The tags of one dataset, or of every dataset."""
        return versions.tags(self.core, key=key)

    # ---- drafts -----------------------------------------------------------------------
    def create_version(self, key: str, message: str | None = None,
                       from_ref: str | None = None) -> Version:
        """A new draft of a dataset, starting from `from_ref` (default: its latest version)."""
        return versions.create_version(self.core, key=key, message=message,
                                       from_ref=from_ref)

    def put_files(self, ref: str, sources: list[str | os.PathLike[str]],
                  target_path: str | None = None, cwd: str | os.PathLike[str] = ".") -> Version:
        """Add files to a draft: a file lands at TARGET/name, a directory's contents under
        TARGET."""
        return versions.put_files(self.core, ref=ref, sources=sources, target_path=target_path,
                                  cwd=cwd)

    def delete_files(self, ref: str, paths: list[str],
                     cwd: str | os.PathLike[str] = ".") -> Version:
        """Remove files or whole directories from a draft."""
        return versions.delete_files(self.core, ref=ref, paths=paths, cwd=cwd)

    def commit_version(self, ref: str, message: str | None = None,
                       cwd: str | os.PathLike[str] = ".", force: bool = False) -> Version:
        """Freeze a draft: from now on it can never change (refused when `latest` moved on
        since the draft was started, unless `force`)."""
        return versions.commit_version(self.core, ref=ref, message=message, cwd=cwd,
                                       force=force)

    def create_version_from_path(self, key: str, source: str | os.PathLike[str],
                                 message: str | None = None,
                                 lineage: dict[str, Any] | None = None,
                                 commit: bool = True) -> Version:
        """A version holding exactly the files of `source`: committed, or a draft."""
        return versions.create_version_from_path(self.core, key=key, source=source,
                                                 message=message, lineage=lineage, commit=commit)

    def commit_manifest(self, key: str, manifest: Manifest, message: str,
                        lineage: dict[str, Any] | None = None,
                        create_dataset: bool = False) -> Version:
        """Commit a version made of objects already in the store (imports, for one)."""
        return versions.commit_manifest(self.core, key=key, manifest=manifest, message=message,
                                        lineage=lineage, create_dataset=create_dataset)

    def import_s3(self, url: str, name: str | None = None, etag: str | None = None,
                  version_id: str | None = None, endpoint_url: str | None = None,
                  profile: str | None = None, no_sign_request: bool = False,
                  message: str | None = None) -> Version:
        """`dsv import`: a committed version of dataset `name` (default: from the URL) made
        from an S3 object or prefix, pinned by ETag or VersionId, every byte verified."""
        from . import imports
        return imports.import_s3(self.core, url, name=name, etag=etag, version_id=version_id,
                                 endpoint_url=endpoint_url, profile=profile,
                                 no_sign_request=no_sign_request, message=message)

    def check_import(self, ref: str, endpoint_url: str | None = None,
                     profile: str | None = None,
                     no_sign_request: bool = False) -> ImportCheckReport:
        """`dsv import --check`: is the source still exactly what `ref` imported?"""
        from . import imports
        return imports.check_import(self.core, ref, endpoint_url=endpoint_url, profile=profile,
                                    no_sign_request=no_sign_request)

    def run(self, inputs: dict[str, str], outputs: dict[str, str], command: list[str],
            mount_root: str | os.PathLike[str] | None = None, message: str | None = None,
            mount: bool | None = None, lazy: bool = False,
            source: dict[str, Any] | None = None) -> JobResult:
        """`dsv run`: mount the inputs read-only, run `command`, and make each output
        directory a new version with lineage (see jobs.run). With `lazy`, each input is a
        `dsv mount` (FUSE): its files are read on first use, so a job may read a dataset
        larger than the local disk. An input `s3://…` is imported first (pinned by
        `source`: etag, version_id, endpoint_url, profile, no_sign_request)."""
        from . import jobs
        mounter = None
        if lazy:
            from . import mounting
            root = str(self.root)

            def mounter(v: Version, target: Path, lifeline: int) -> Callable[[], None]:
                mounting.spawn(f"{v.dataset}:{v.id}", target, store=root, lifeline=lifeline)
                return lambda: mounting.unmount(target)
        return jobs.run(self.core, inputs, outputs, command, mount_root, message, mount,
                        mounter, source)

    def update_version(self, ref: str, message: str,
                       cwd: str | os.PathLike[str] = ".") -> Version:
        """Change a draft's message (a committed version's message is part of it: immutable)."""
        return versions.update_version(self.core, ref=ref, message=message, cwd=cwd)

    def delete_version(self, ref: str, force: bool = False,
                       cwd: str | os.PathLike[str] = ".") -> Version:
        """Delete a draft, or with `force` a committed version nothing depends on."""
        return versions.delete_version(self.core, ref=ref, force=force, cwd=cwd)

    # ---- reading files of versions ---------------------------------------------------
    def files(self, ref: str, path: str = "", recursive: bool = False,
              cwd: str | os.PathLike[str] = ".") -> Iterator[FileRow]:
        """The entries of a version's directory `path` (the root by default); with
        `recursive`, every file and link below it, in path order. The rows stream (a
        million-file version is never held); a path the version lacks is refused at the
        call."""
        return checkout.files(self.core, ref=ref, path=path, recursive=recursive, cwd=cwd)

    def get_files(self, ref: str, target: str | os.PathLike[str],
                  paths: list[str] | None = None, cwd: str | os.PathLike[str] = ".") -> int:
        """Copy files of a version into `target` (overwriting same-named files only);
        returns how many were written."""
        return checkout.get_files(self.core, ref=ref, target=target, paths=paths, cwd=cwd)

    def open_file(self, ref: str, path: str, cwd: str | os.PathLike[str] = ".") -> BinaryIO:
        """A file of a version, opened for reading; its bytes are verified before it is
        returned."""
        return checkout.open_file(self.core, ref=ref, path=path, cwd=cwd)

    def open_entry(self, version: Version, path: str, entry: Entry) -> BinaryIO:
        """The file `path` of `version` whose entry the caller has listed (what `open_file`
        does without resolving the ref and walking the trees again); verified."""
        return checkout.open_entry(self.core, version, path, entry)

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
        from . import settings
        return settings.add_remote(self.core, name, url, endpoint_url=endpoint_url,
                                   profile=profile, cache=cache, ttl=ttl, max_size=max_size,
                                   write_through=write_through, default=default, cwd=cwd)

    def remove_remote(self, name: str) -> RemoteSpec:
        """Forget a remote and what this store knew it holds."""
        from . import settings
        return settings.remove_remote(self.core, name)

    def merge(self, ref: str, message: str | None = None, resolve: str | None = None,
              key: str | None = None, cwd: str | os.PathLike[str] = ".") -> MergeReport:
        """Merge the version `ref` names into its dataset's working directory: nothing to
        do, a fast-forward, or a version with two parents (MergeConflict lists conflicting
        paths unless `resolve` is "ours" or "theirs")."""
        from . import merge
        return merge.merge(self.core, ref=ref, message=message, resolve=resolve, key=key,
                           cwd=cwd)

    def split_remote(self, words: list[str]) -> tuple[str | None, list[str]]:
        """`[REMOTE] [ITEM…]` as `dsv push` and `dsv pull` take them: the remote named
        first (None: the default one) and the datasets or refs after it."""
        from .sync.remote import split_remote
        return split_remote(self.core, words)

    def push(self, remote: str | None = None, targets: list[str] | None = None,
             force: bool = False, delete: bool = False) -> PushReport:
        """Upload what the remote lacks, then move its refs (compare-and-swap). With
        `delete`, delete the named refs on the remote instead (`DATASET:TAG`, or `DATASET`
        for all of its refs)."""
        from .sync import push as sync_push
        from .sync.remote import open_remote
        with self.locked("push"):
            if delete:
                return sync_push.delete_refs(self.core, open_remote(self.core, remote),
                                             list(targets or []))
            return sync_push.push(self.core, open_remote(self.core, remote),
                                  list(targets or []), force)

    def fetch(self, remote: str | None = None,
              datasets: list[str] | None = None, history: bool = False) -> FetchReport:
        """Bring the remote's versions and refs, and the trees of the versions its refs
        name (no file contents; with `history`, the trees of every version, for work
        offline: otherwise an older version's trees come when first read); with
        `datasets` (names or ids on the remote), only theirs (a store that reads only
        some datasets, after `clone --dataset`, reads these too from now on)."""
        from .sync import fetch as sync_fetch
        from .sync.remote import open_remote
        with self.locked("fetch"):
            opened = open_remote(self.core, remote)
            ids = None
            if datasets:
                opened.connect()
                ids = opened.dataset_ids(datasets)
            return sync_fetch.fetch(self.core, opened, datasets=ids, history=history)[0]

    def pull(self, remote: str | None = None, targets: list[str] | None = None,
             paths: list[str] | None = None, force: bool = False,
             checkout: bool = True, merge: bool = False) -> PullReport:
        """Fetch, move local refs forward, download the objects the versions (or only
        `paths`) need, and bring working directories forward to them; with `merge`, merge
        the remote's latest into datasets whose latest is on another line."""
        from .sync import pull as sync_pull
        return sync_pull.pull(self.core, remote, targets, paths, force, checkout, merge)

    @classmethod
    def clone(cls, url: str, path: str | os.PathLike[str] | None = None,
              endpoint_url: str | None = None, profile: str | None = None,
              reporter: Reporter | None = None,
              datasets: list[str] | None = None, paths: list[str] | None = None,
              checkout: bool = True, cache: str | os.PathLike[str] | None = None
              ) -> tuple["Store", PullReport]:
        """A new workspace from a remote: datasets bound where the pusher had them, each
        checked out at its latest version (with `datasets`, names or ids, only those, and
        later fetches read only them; with `paths`, only the files at or below them;
        without `checkout`, nothing placed; with `cache`, a cluster cache directory read
        through from the first download on). Safe to kill and to race: running the same
        clone again (or `dsv pull` inside it) completes it (see sync.pull.clone)."""
        from .sync import pull as sync_pull
        core, report = sync_pull.clone(url, path, endpoint_url, profile, reporter,
                                       datasets, paths, checkout,
                                       os.fspath(cache) if cache is not None else None)
        return cls._around(core), report

    def verify_remote(self, remote: str | None = None, read_data: bool = False,
                      subset: str | None = None, repair: bool = False) -> RemoteCheckReport:
        """Check a remote (structure; with `read_data` or a `subset` such as "10%", the
        bytes too); with `repair`, upload good local copies of what it lacks or holds
        damaged. Returns a remotecheck.RemoteCheckReport."""
        from . import remotecheck
        from .sync.remote import open_remote
        fraction = remotecheck.parse_subset(subset)
        with self.locked("verify --remote"):
            return remotecheck.check_remote(self.core, open_remote(self.core, remote),
                                            read_data, fraction, repair)

    def maintain_remote(self, remote: str | None = None) -> MaintainReport:
        """Repack the remote's small packs into few large ones (safe with other clients
        at work; see sync.maintain)."""
        from .sync import maintain
        from .sync.remote import open_remote
        with self.locked("remote maintain"):
            return maintain.maintain(self.core, open_remote(self.core, remote))

    def gc_remote(self, remote: str | None = None, dry_run: bool = False) -> RemoteGcReport:
        """Delete from a remote what none of its refs reaches (packs, loose objects, the
        leftovers of killed pushes), rewriting partly-live packs; nothing while a push
        is at work on it (see sync.gc). Fetches the remote's records and trees first."""
        from .sync import gc
        from .sync.remote import open_remote
        with self.locked("gc --remote"):
            return gc.collect(self.core, open_remote(self.core, remote), dry_run=dry_run)

    def prune_cache(self, name: str | None = None, older_than: str | None = None,
                    max_size: str | None = None) -> PruneReport:
        """Evict cluster-cache entries unused for longer than the TTL, then the least
        recently used beyond the size budget (flags override the remote's settings)."""
        from . import maintenance
        return maintenance.prune_cache(self.core, name, older_than, max_size)

    # ---- maintenance ----------------------------------------------------------------
    def gc(self, dry_run: bool = False, inputs_older_than: str | float | None = None
           ) -> GcReport:
        """Delete objects no version needs; rewrite packs that hold any such object; remove
        `dsv run` input trees unused for `inputs_older_than` (a duration like "7d", or
        seconds; default 7 days)."""
        from . import maintenance
        return maintenance.gc(self.core, dry_run=dry_run, inputs_older_than=inputs_older_than)

    def verify(self, repair: bool = False) -> VerifyReport:
        """Re-hash every object and check that every version is complete; with `repair`,
        bring good copies of what is damaged or missing (see dsv.verify)."""
        from . import verify
        return verify.verify(self.core, repair=repair)

    @classmethod
    def rebuild_index(cls, path: str | os.PathLike[str] = ".", reporter: Reporter | None = None,
                      exact: bool = False) -> RebuildReport:
        """Recreate `index.db` from the packs and version records (objects are the truth).

        The old database is kept beside it as `index.db.broken-<time>`; dataset names,
        directories and tags are copied from it when it can still be read, otherwise
        datasets are named from their newest version record. Drafts live only in the
        index and are lost with it.
        """
        from . import maintenance
        return maintenance.rebuild_index(path=path, reporter=reporter, exact=exact)
