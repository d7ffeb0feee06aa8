"""dsv's domain types: datasets, versions, manifest entries, and the reports commands return.

Owns plain dataclasses and nothing else: every layer may import this module, and it
imports no other part of dsv. Versions and datasets are built by keyword. Must never do
I/O, and never hold logic beyond small derived properties and `to_json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

# ---- datasets and versions --------------------------------------------------------------


@dataclass(kw_only=True)
class Dataset:
    """A named line of versions, optionally bound to a working directory."""

    id: str
    name: str
    path: str | None = None          # working directory, relative to the workspace root
    description: str | None = None
    created: float
    latest: str | None = None        # newest committed version id
    head: str | None = None          # version the working directory was last made to match
    cache_tree: str | None = None    # tree the stat cache describes exactly (status fast path)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"id": self.id, "name": self.name, "path": self.path,
                "description": self.description, "created": self.created,
                "latest": self.latest, "head": self.head}


DRAFT = "draft"
COMMITTED = "committed"
LATEST = "latest"   # the ref naming a dataset's newest committed version


@dataclass(kw_only=True)
class Version:
    """One version of a dataset: a draft (mutable) or committed (immutable, with a record)."""

    id: str
    dataset: str
    state: str                       # DRAFT | COMMITTED
    tree: str
    parents: list[str] = field(default_factory=list)
    message: str | None = None
    author: str | None = None
    created: float
    committed: float | None = None
    record: str | None = None        # object id of the version record, once committed
    lineage: dict[str, Any] | None = None
    size: int = 0
    files: int = 0
    tags: list[str] = field(default_factory=list)

    @property
    def is_draft(self) -> bool:
        """Whether the version may still change."""
        return self.state == DRAFT

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"id": self.id, "dataset": self.dataset, "state": self.state, "tree": self.tree,
                "parents": self.parents, "message": self.message, "author": self.author,
                "created": self.created, "committed": self.committed, "record": self.record,
                "lineage": self.lineage, "size": self.size, "files": self.files,
                "tags": self.tags}


class TagRow(TypedDict):
    """One tag as `Store.tags` lists it (and `dsv tags --json` prints it)."""

    dataset: str        # the dataset's name (its id if it has none in this store)
    tag: str
    version: str        # version id
    created: float


StatRow = tuple[int, int, int, int, str, int]
"""A stat-cache row: (size, mtime_ns, inode, permission bits, object id, cached at ns)."""


# ---- manifests --------------------------------------------------------------------------

FILE = "f"
LINK = "l"
DIR = "d"


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or symlink of a manifest: kind, permission bits, size and content hash."""

    kind: str
    mode: int
    size: int
    oid: str


Manifest = dict[str, Entry]
"""A flat manifest: dataset-relative POSIX path → Entry (files and symlinks only)."""


@dataclass
class Changes:
    """What differs between a base manifest and a newer one."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    added_bytes: int = 0
    modified_bytes: int = 0
    deleted_bytes: int = 0

    @property
    def clean(self) -> bool:
        """Whether nothing differs."""
        return not (self.added or self.modified or self.deleted)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"added": self.added, "modified": self.modified, "deleted": self.deleted,
                "added_bytes": self.added_bytes, "modified_bytes": self.modified_bytes,
                "deleted_bytes": self.deleted_bytes}


# ---- reports of local commands ----------------------------------------------------------


class _FlatReport:
    """A report whose `--json` form is its fields as they are."""

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return dict(self.__dict__)


@dataclass
class StatusReport:
    """`dsv status` of one dataset."""

    dataset: Dataset
    head: Version | None
    changes: Changes
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"dataset": self.dataset.name, "id": self.dataset.id, "path": self.dataset.path,
                "head": self.head.id if self.head else None, "clean": self.changes.clean,
                **self.changes.to_json(), "skipped": self.skipped}


@dataclass
class CheckoutReport:
    """What a checkout wrote, removed and left alone."""

    version: Version
    target: Path
    written: int
    removed: int
    unchanged: int
    bytes_written: int

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"version": self.version.id, "dataset": self.version.dataset,
                "target": str(self.target), "written": self.written, "removed": self.removed,
                "unchanged": self.unchanged, "bytes_written": self.bytes_written}


@dataclass
class FileRow:
    """One row of `dsv files list`."""

    path: str
    kind: str          # "file", "link" or "dir"
    size: int
    oid: str
    mode: int

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"path": self.path, "type": self.kind, "size": self.size, "hash": self.oid,
                "mode": oct(self.mode)}


@dataclass
class GcReport(_FlatReport):
    """What `dsv gc` removed (or with `dry_run`, would remove)."""

    removed_objects: int = 0
    removed_packs: int = 0
    repacked_packs: int = 0
    freed_bytes: int = 0
    dry_run: bool = False
    kept_for_writers: int = 0   # unreachable objects kept because a writer was running


@dataclass
class VerifyReport:
    """What `dsv verify` checked and found."""

    objects_checked: int = 0
    bytes_checked: int = 0
    versions_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"ok": self.ok, "objects_checked": self.objects_checked,
                "bytes_checked": self.bytes_checked, "versions_checked": self.versions_checked,
                "problems": self.problems, "repaired": self.repaired}


@dataclass
class RebuildReport(_FlatReport):
    """What `dsv index rebuild` recovered from the objects."""

    packs: int = 0
    versions: int = 0
    datasets: int = 0
    skipped: list[str] = field(default_factory=list)


# ---- reports of sync, jobs and imports --------------------------------------------------


@dataclass
class PushReport(_FlatReport):
    """What a push sent and which remote refs it moved."""

    remote: str
    versions: int = 0           # versions considered
    versions_sent: int = 0      # of which the remote lacked
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0
    bytes_skipped: int = 0
    refs_updated: list[str] = field(default_factory=list)
    refs_unchanged: list[str] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)      # remote is ahead: nothing to do
    rejected: list[str] = field(default_factory=list)


@dataclass
class FetchReport(_FlatReport):
    """What a fetch brought (versions, trees, refs; no file contents)."""

    remote: str
    new_versions: list[str] = field(default_factory=list)
    new_datasets: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)    # the remote's refs
    updated: list[str] = field(default_factory=list)      # local refs it created
    objects_received: int = 0
    bytes_received: int = 0
    from_cache: int = 0


@dataclass
class PullReport:
    """What a pull fetched, downloaded, moved and checked out."""

    remote: str
    fetch: FetchReport
    versions: list[str] = field(default_factory=list)
    objects_received: int = 0
    bytes_received: int = 0
    objects_skipped: int = 0
    bytes_skipped: int = 0
    from_cache: int = 0
    updated: list[str] = field(default_factory=list)     # local refs moved
    diverged: list[str] = field(default_factory=list)    # local refs kept, remote differs
    checked_out: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        data = dict(self.__dict__)
        data["fetch"] = self.fetch.to_json()
        return data


@dataclass
class RemoteCheckReport:
    """What `dsv verify --remote` checked, found and repaired."""

    remote: str
    packs: int = 0
    loose: int = 0
    refs: int = 0
    versions_checked: int = 0
    objects_read: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)     # what is wrong now
    warnings: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)        # with --repair: before repairing

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"ok": self.ok, **{k: v for k, v in self.__dict__.items()}}


@dataclass
class PruneReport(_FlatReport):
    """What `dsv cache prune` evicted and kept."""

    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    pending_kept: int = 0
    stale_tmp_removed: int = 0
    bad_removed: int = 0      # entries that were not regular files (FIFOs, links, …)


@dataclass
class JobResult:
    """A `dsv run`: the command, how it ended, and the versions its outputs became."""

    command: list[str]
    exit_status: int
    started: float
    duration: float
    mounted: bool
    mount_root: Path
    outputs: dict[str, Version] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exit_status == 0

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"command": self.command, "exit_status": self.exit_status,
                "started": self.started, "duration_s": round(self.duration, 3),
                "mounted_read_only": self.mounted, "mount_root": str(self.mount_root),
                "outputs": {name: {"dataset": v.dataset, "version": v.id, "state": v.state}
                            for name, v in self.outputs.items()}}


@dataclass
class ImportCheckReport:
    """`dsv import --check`: is the source still exactly what a version imported?"""

    ref: str
    source: str
    unchanged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing changed, went missing or was added."""
        return not (self.changed or self.missing or self.added)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"ref": self.ref, "source": self.source, "ok": self.ok,
                "unchanged": len(self.unchanged), "changed": self.changed,
                "missing": self.missing, "added": self.added}
