"""Pull and clone: fetch, move local refs forward, download, check out.

Owns the order that makes a pull safe to kill (local refs move only once the objects
are here), bringing working directories that follow `latest` forward, and clone (a new
workspace from a remote, resumable through `.dsv/clone.json`). Must never write to a
remote.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path


from .. import checkout as checkouts
from .. import fileio, refs, tree
from ..core import Core, create_layout
from ..settings import add_remote
from ..errors import DirtyWorktree, DsvError, InvalidInput, StoreExists
from ..jsonio import load_bounded
from ..paths import STORE_DIR
from ..reporting import Reporter
from ..reports import FetchReport, PullReport
from ..model import Version
from ..objects import Ingest
from ..paths import normalize_user_path
from ..refs import LATEST, RefChange
from ..remotes.connect import normalize_url, open_backend
from ..remotes.base import Backend, RemoteError, RemoteRefused, RemoteSpec
from ..remotes.layout import (RemoteRef)
from .remote import Remote, one_opening, open_remote, resolve_target
from .download import origin_down, download_blobs
from .fetch import fetch
from .policy import plan_pull


def _pull_objects(core: Core, remote: Remote, targets: list[str], paths: list[str] | None,
         force: bool = False,
         prefetched: tuple[FetchReport, dict[tuple[str, str], RemoteRef]] | None = None,
         any_paths: bool = False, defer: set[str] | None = None) -> PullReport:
    """Fetch, move local refs, download what the versions pulled lack. With `defer`,
    the versions a checkout will place into a working directory that never held one
    are left out of the download and added to `defer`: refs move, they stay promised,
    and their checkout downloads their blobs a chunk at a time as it places them (see
    `_make_whole`)."""
    fetch_report = FetchReport(remote.name)
    remote_refs: dict[tuple[str, str], RemoteRef] | None = None
    try:
        fetch_report, remote_refs = prefetched or fetch(core, remote)
    except RemoteError as exc:
        # The origin is down: what the cluster cache holds can still be pulled, for the
        # versions this store already knows.
        origin_down(core, exc)
    report = PullReport(remote.name, fetch_report)
    named = [resolve_target(core, t) for t in targets]
    changes: list[RefChange] = []
    if remote_refs is not None:
        if named:  # only the datasets asked for move
            scope = {v.dataset for v in named}
            remote_refs = {k: r for k, r in remote_refs.items() if k[0] in scope}
        changes, updated, report.diverged = plan_pull(refs.History(core.index), remote.name,
                                                      remote_refs, force)
        report.updated = fetch_report.updated + updated
        on_remote = {ds_id for ds_id, _ref in remote_refs}
    else:
        on_remote = {row[0] for row in core.index.remote_refs(remote.name)}
    # Local refs move only once the objects are here (a failed pull moves nothing), so the
    # targets are resolved against the planned refs inside a savepoint that is rolled back.
    with core.index.rolled_back():
        core.refs.apply(changes)
        if targets:
            chosen = [core.resolve(t) for t in targets]
        else:
            chosen = [core.version(ds.latest) for ds in core.index.datasets()
                      if ds.latest and ds.id in on_remote]
        # A dataset whose latest moves gets that version too, so that a working
        # directory following latest can follow it.
        if not paths:
            chosen += [core.version(vid) for _ds, name, vid in changes if name == LATEST]
        chosen = list({v.id: v for v in chosen}.values())
        if defer is not None and not paths:
            defer.update(v.id for v in chosen if _first_checkout(core, v))
    wanted: dict[str, int] = {}
    if paths:
        selected = {normalize_user_path(p) for p in paths}
        holding = []
        for v in chosen:
            # Each path's subtree only: what is held grows with what is pulled, not
            # with the version (a path in a sharded directory reads its shard).
            manifest = {p: e for path in sorted(selected) for p, e in
                        core.manifest(v, path).items()}
            if not manifest and any_paths:
                continue  # (a clone's --path: the datasets that hold none are skipped)
            if not manifest:
                ds = core.index.dataset_by("id", v.dataset)
                ref = f"{ds.name if ds else v.dataset}:{v.id}"
                raise InvalidInput(f"none of {', '.join(paths)} is in {ref}",
                                   hint=f"`dsv files list {ref} --recursive` shows its paths")
            holding.append(v)
            wanted.update(core.blobs(manifest.values()))
        if not holding:
            raise InvalidInput(f"none of {', '.join(paths)} is in any dataset of "
                               f"{remote.name}")
        chosen = holding
    report.versions = [v.id for v in chosen]

    def record() -> None:
        core.refs.apply(changes)
        if not paths:
            core.index.drop_promised(v.id for v in chosen if v.id not in later)

    later = defer or set()
    bases = {} if paths else _local_bases(core, chosen)
    report.based_on = sorted({base.id for base in bases.values()})
    with Ingest(core.objects) as ingest:
        # Whole versions: each distinct tree once, as the walk goes (no flat manifest, no
        # list of every blob is built), and only where it differs from a version this
        # store holds whole.
        download_blobs(core, remote, wanted if paths else (
            pair for v in chosen if v.id not in later for pair in tree.blob_sizes(
                v.tree, core.read_tree, bases[v.id].tree if v.id in bases else None)),
            report, ingest)
        core.commit_objects(ingest, record, crash="pull:objects-written")
    core.index.checkpoint()
    return report


def _first_checkout(core: Core, v: Version) -> bool:
    """Whether a pull will check `v` out into a working directory that has never held a
    version (with refs as the pull moves them)."""
    ds = core.index.dataset_by("id", v.dataset)
    return ds is not None and ds.path is not None and ds.head is None and ds.latest == v.id


def _make_whole(core: Core, remote: Remote, versions: list[Version], placed: set[str],
                report: PullReport) -> None:
    """Deferred versions (see `_pull_objects`) are no longer promised once every blob is
    here: those whose checkout placed every file have them all; the rest (a checkout
    that did not happen, or left files out) are downloaded now."""
    rest = [v for v in versions if v.id not in placed]
    # (What the checkouts downloaded is here now: counted once, as received, not again
    # as found here.)
    got = PullReport(report.remote, report.fetch)
    with Ingest(core.objects) as ingest:
        download_blobs(core, remote, (pair for v in rest for pair in tree.blob_sizes(
            v.tree, core.read_tree)), got, ingest)
        core.commit_objects(ingest, lambda: core.index.drop_promised(v.id for v in versions),
                            crash="pull:objects-written")
    report.objects_received += got.objects_received
    report.bytes_received += got.bytes_received
    report.from_cache += got.from_cache


def _local_bases(core: Core, versions: list[Version]) -> dict[str, Version]:
    """For each of `versions` that has one, its nearest ancestor whose every blob this
    store holds (committed, neither promised nor only listed): what the two share is
    here, so a pull after a few files changed looks at those files only. Version id →
    that ancestor."""
    promised = core.index.promised()
    unfetched = core.index.unfetched()

    def whole(parent: Version) -> bool:
        return not parent.is_draft and parent.id not in promised and \
            parent.id not in unfetched

    out: dict[str, Version] = {}
    for v in versions:
        if v.files < refs.COMPARE_MIN_FILES:
            continue
        base = refs.nearest_ancestor(core.index, v, whole)
        if base is not None:
            out[v.id] = base
    return out


# ---- pull and clone as commands ---------------------------------------------------------


def pull(core: Core, remote: str | None = None, targets: list[str] | None = None,
         paths: list[str] | None = None, force: bool = False,
         checkout: bool = True, merge: bool = False) -> PullReport:
    """Fetch, move local refs forward, download the objects the versions (or only
    `paths`) need, and bring working directories forward to them; with `merge`, merge the
    remote's latest into datasets whose latest is on another line."""
    marker = core.dsv_dir / CLONE_MARKER
    if os.path.lexists(marker) and remote in (None, "origin") and not targets and not paths:
        claim = _ClonePlan.take(marker)
        try:
            report = _finish_clone(core)
        except BaseException:
            claim.release()
            raise
        claim.finish()
        return report
    with core.locked("pull"), one_opening(core):
        report = _pull(core, remote, list(targets or []), paths, force, checkout)
        if merge:
            _merge_diverged(core, report, list(targets or []))
        return report


def _merge_diverged(core: Core, report: PullReport, targets: list[str]) -> None:
    """`pull --merge`: each dataset (of those asked for) with a working directory whose
    latest is on another line than the remote's gets the remote's merged in."""
    from .. import merge
    scope = {resolve_target(core, t).dataset for t in targets} if targets else None
    for ds in core.index.datasets():
        if ds.path is None or ds.latest is None or (scope is not None and ds.id not in scope):
            continue
        theirs_id = core.index.remote_ref(report.remote, ds.id, LATEST)
        theirs = core.index.version(theirs_id) if theirs_id else None
        if theirs is None or theirs.id == ds.latest:
            continue
        mine = core.version(ds.latest)
        if refs.is_ancestor(core.index, theirs.id, mine) or \
                refs.is_ancestor(core.index, mine.id, theirs):
            continue  # not diverged (a fast-forward the pull already made, or kept behind)
        done = merge.merge(core, f"{ds.id}:{report.remote}/latest", key=ds.id,
                           message=f"merge {ds.name}:{report.remote}/latest into {ds.name}")
        report.merged.append(f"{ds.name}:{done.version} merges {theirs.id} into {mine.id}")
        report.diverged = [d for d in report.diverged if not d.startswith(f"{ds.name}:latest ")]


def _pull(core: Core, remote: str | None, targets: list[str], paths: list[str] | None,
          force: bool, checkout: bool,
          prefetched: tuple[FetchReport, dict[tuple[str, str], RemoteRef]] | None = None,
          defer: bool = False) -> PullReport:
    before = {ds.id: ds.latest for ds in core.index.datasets()}
    opened = open_remote(core, remote)
    deferred: set[str] = set()
    report = _pull_objects(core, opened, targets, paths, force, prefetched=prefetched,
                           defer=deferred if defer and checkout and not paths else None)
    if not checkout or paths:
        return report
    placed: set[str] = set()
    for vid in report.versions:
        v = core.version(vid)
        ds = core.index.dataset_by("id", v.dataset)
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
            done = checkouts.checkout(core, f"{ds.id}:{v.id}")
            report.checked_out.append(f"{ds.name}:{v.id}")
        except DirtyWorktree as exc:
            report.notices.append(f"{ds.name}: not checked out: {exc.message}")
            continue
        report.objects_received += done.downloaded
        report.bytes_received += done.bytes_downloaded
        report.from_cache += done.from_cache
        if done.unchanged == 0 and done.left_out == 0:  # it placed every file its trees hold
            placed.add(v.id)
    if deferred:
        _make_whole(core, opened, [core.version(vid) for vid in sorted(deferred)], placed,
                    report)
    return report


def clone(url: str, path: str | os.PathLike[str] | None = None,
          endpoint_url: str | None = None, profile: str | None = None,
          reporter: Reporter | None = None,
          datasets: list[str] | None = None, paths: list[str] | None = None,
          checkout: bool = True, cache: str | None = None) -> tuple[Core, PullReport]:
    """A new workspace from a remote: datasets bound where the pusher had them, each
    checked out at its latest version. With `datasets` (names or ids), only those: the
    store then reads only their refs, catalogs and packs, now and in later fetches. With
    `paths`, only the files at or below them are downloaded (and checked out) in the
    datasets that hold any; without `checkout`, nothing is placed. With `cache` (a
    cluster cache directory), the store reads through it, this first download too.

    Safe to kill and to race: `.dsv/` is created exclusively and a clone marker
    (`.dsv/clone.json`, flock'd while the clone runs) says the clone is unfinished,
    so running the same clone again (or `dsv pull` inside it) completes it, and of
    two clones into one directory the loser stops before touching anything.
    """
    url = normalize_url(url)
    if path is None:
        path = url.rstrip("/").rpartition("/")[2] or "dsv-clone"
    root = Path(path).resolve()
    marker = root / STORE_DIR / CLONE_MARKER
    if os.path.lexists(marker):
        return _resume_clone(root, url, reporter)
    if root.exists() and any(root.iterdir()):
        raise StoreExists(f"{root} exists and is not empty")
    # The remote is checked before anything is created; a failed clone leaves nothing.
    spec = RemoteSpec("origin", url, endpoint_url=endpoint_url, profile=profile)
    backend = open_backend(spec)
    backend.check_reachable()
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        (root / STORE_DIR).mkdir()
    except FileExistsError:
        raise StoreExists(f"{root} is being cloned into by another process",
                          hint="wait for it; if it was killed, run the same clone "
                               "again to complete it") from None
    claim = _ClonePlan(marker, url, endpoint_url, profile, paths, checkout)
    core: Core | None = None
    try:
        claim.create()
        create_layout(root)
        core = Core(root, reporter)
        add_remote(core, "origin", url, endpoint_url=endpoint_url, profile=profile,
                   default=True)
        if cache:
            add_remote(core, "cache", os.path.abspath(cache), cache=True)
        if datasets:
            origin = open_remote(core, "origin", backend=backend)
            with core.index.transaction():
                core.index.set_remote_scope("origin", origin.dataset_ids(datasets))
        report = _finish_clone(core, claim.paths, claim.checkout, backend)
    except BaseException:
        # Only what this clone made goes: the files its checkout placed (the directory
        # was empty, and no other clone can be in it while the marker is locked), then
        # its store, marker included; the lock is released last, so nobody can start
        # completing this clone while it is being removed.
        if core is not None:
            core.close()
        try:
            for child in root.iterdir():
                if child.name == STORE_DIR:
                    continue
                fileio.remove_tree(child) if child.is_dir() and not child.is_symlink() \
                    else child.unlink()
            with contextlib.suppress(OSError):
                fileio.remove_tree(root / STORE_DIR)
            if made_root:
                root.rmdir()
        except OSError:
            pass  # best effort: the original error is what the user needs to see
        finally:
            claim.release()
        raise
    claim.finish()
    return core, report


def _resume_clone(root: Path, url: str,
                  reporter: Reporter | None) -> tuple[Core, PullReport]:
    """Complete a clone that was killed: same remote, nothing deleted on failure."""
    claim = _ClonePlan.take(root / STORE_DIR / CLONE_MARKER)
    try:
        if claim.url != url:
            raise StoreExists(f"{root} holds an unfinished clone of {claim.url}",
                              hint="run that clone again, or choose another directory")
        if not (root / STORE_DIR / "config.json").exists():
            create_layout(root)
        core = Core(root, reporter)
    except BaseException:
        claim.release()
        raise
    try:
        if not any(s.name == "origin" for s in core.remote_specs()):
            add_remote(core, "origin", claim.url, endpoint_url=claim.endpoint_url,
                       profile=claim.profile, default=True)
        core.reporter.notice(f"completing the interrupted clone of {claim.url}")
        report = _finish_clone(core, claim.paths, claim.checkout)
    except BaseException:
        core.close()  # its staging directory and lock go now, not at exit
        claim.release()
        raise
    claim.finish()
    return core, report


def _finish_clone(core: Core, paths: list[str] | None = None,
                  checkout: bool = True, backend: Backend | None = None) -> PullReport:
    """Fetch from origin (through `backend`, if the clone opened one), bind datasets
    where the pusher had them, pull and check out (only `paths`, if given; nothing,
    without `checkout`)."""
    with core.locked("clone"), one_opening(core):
        origin = open_remote(core, "origin", backend=backend)
        fetched = fetch(core, origin)
        if not fetched[1] and origin.ignored_refs:
            raise RemoteRefused(f"nothing to clone: every ref read of {origin.spec.url} "
                                f"({len(origin.ignored_refs)}) was ignored as damaged (see the "
                                f"warnings above)", hint="the remote is damaged or hostile; "
                                "nothing was cloned")
        with core.index.transaction():
            for ref in fetched[1].values():
                if ref.ref != refs.LATEST or ref.path is None:
                    continue
                try:
                    rel = "." if ref.path == "." else core.workspace_path(core.root / ref.path)
                except DsvError:
                    continue
                if core.index.dataset_by("path", rel):
                    continue
                ds = core.index.dataset_by("id", ref.dataset)
                if ds is not None and ds.path is None:
                    core.index.update_dataset(ref.dataset, path=rel)
        if not paths:
            # A clone places each dataset as it downloads it (see `_pull_objects`).
            return _pull(core, "origin", [], None, False, checkout, prefetched=fetched,
                         defer=True)
        report = _pull_objects(core, open_remote(core, "origin"), [], paths,
                               prefetched=fetched, any_paths=True)
        if checkout:
            for vid in report.versions:
                v = core.version(vid)
                ds = core.index.dataset_by("id", v.dataset)
                if ds is None or ds.path is None:
                    continue
                held = [p for p in paths if _holds(core, v, normalize_user_path(p))]
                checkouts.checkout(core, f"{ds.id}:{v.id}", paths=held)
                report.checked_out.append(f"{ds.name}:{v.id}")
        return report


def _holds(core: Core, v: Version, path: str) -> bool:
    """Whether version `v` has a file or directory at `path` ("" is its root), reading only
    the trees on the way."""
    return not tree.is_empty(v.tree, core.read_tree) if path == "" else \
        tree.find(v.tree, core.read_tree, path) is not None


CLONE_MARKER = "clone.json"


class _ClonePlan:
    """`.dsv/clone.json`: an unfinished clone's remote, flock'd by the process cloning.

    Created exclusively right after `.dsv/`, removed when the clone is complete. Another
    process finding it locked knows a clone is running; finding it unlocked, that one
    was killed and can be completed.
    """

    def __init__(self, path: Path, url: str, endpoint_url: str | None,
                 profile: str | None, paths: list[str] | None = None,
                 checkout: bool = True) -> None:
        self.path, self.url, self.endpoint_url, self.profile = path, url, endpoint_url, profile
        self.paths, self.checkout = paths, checkout
        self._fd: int | None = None

    def create(self) -> None:
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        fileio.write_all(fd, json.dumps({"url": self.url, "endpoint_url": self.endpoint_url,
                                         "profile": self.profile, "paths": self.paths,
                                         "checkout": self.checkout}).encode() + b"\n")
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
            paths, checkout = info.get("paths"), info.get("checkout", True)
            if paths is not None and (not isinstance(paths, list) or
                                      not all(isinstance(p, str) for p in paths)):
                raise ValueError("bad paths")
        except (ValueError, KeyError, TypeError, OSError):
            os.close(fd)
            raise StoreExists(f"{path} is damaged", hint="remove the directory and clone "
                              "again") from None
        plan = cls(path, url, endpoint if isinstance(endpoint, str) else None,
                   profile if isinstance(profile, str) else None, paths, checkout is not False)
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
