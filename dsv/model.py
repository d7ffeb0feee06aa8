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

_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63


def storable(row: tuple[Any, ...]) -> bool:
    """Whether a stat row's numbers fit the index's 64-bit integers. One that does not
    (a file dated past 2262, an inode number past 2**63) is never made: its file is
    hashed again each time, and no count of rows takes it for cached. (Sizes, modes
    and the time a row was made always fit.)"""
    return bool(_INT64_MIN <= row[1] < _INT64_END and row[2] < _INT64_END)


RUN_DIGEST_BYTES = 16
"""Bytes of the digest of one run of a walk (worktree.ScanDigest; stored as hex)."""


# ---- manifests --------------------------------------------------------------------------

FILE = "f"
LINK = "l"
DIR = "d"
_KIND_NAMES = {FILE: "file", LINK: "link", DIR: "dir"}


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or symlink of a manifest: kind, permission bits, size and content hash
    (blake3 of the whole bytes), and for a file stored in content-defined chunks the id
    of its chunk list ("" otherwise)."""

    kind: str
    mode: int
    size: int
    oid: str
    chunks: str = ""


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
    # every changed path → (size before or None, size after or None): `dsv diff --stat`
    sizes: dict[str, tuple[int | None, int | None]] = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        """Whether nothing differs."""
        return not (self.added or self.modified or self.deleted)

    def extend(self, later: "Changes") -> None:
        """Add `later`, the changes of paths that all sort after these (a comparison made
        a chunk at a time): the lists stay sorted."""
        self.added += later.added
        self.modified += later.modified
        self.deleted += later.deleted
        self.added_bytes += later.added_bytes
        self.modified_bytes += later.modified_bytes
        self.deleted_bytes += later.deleted_bytes
        self.sizes.update(later.sizes)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"added": self.added, "modified": self.modified, "deleted": self.deleted,
                "added_bytes": self.added_bytes, "modified_bytes": self.modified_bytes,
                "deleted_bytes": self.deleted_bytes}


# ---- reports of local commands ----------------------------------------------------------


@dataclass
class StatusReport:
    """`dsv status` of one dataset."""

    dataset: Dataset
    head: Version | None
    changes: Changes
    skipped: list[str] = field(default_factory=list)
    behind: int = 0          # versions in latest's history that are not in the head's
    diverged: bool = False   # latest does not descend from the head
    missing: bool = False    # the working directory does not exist
    ignored: list[str] | None = None   # what .dsvignore leaves out, when asked for

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"dataset": self.dataset.name, "id": self.dataset.id, "path": self.dataset.path,
                "head": self.head.id if self.head else None, "latest": self.dataset.latest,
                "behind": self.behind, "diverged": self.diverged, "missing": self.missing,
                "clean": self.changes.clean and not self.missing,
                **self.changes.to_json(), "skipped": self.skipped,
                **({"ignored": self.ignored} if self.ignored is not None else {})}


@dataclass
class CheckoutReport:
    """What a checkout wrote, removed and left alone."""

    version: Version
    target: Path
    written: int
    removed: int
    unchanged: int
    bytes_written: int
    # Blobs the store lacked (a version only fetched), downloaded for the checkout:
    downloaded: int = 0
    bytes_downloaded: int = 0
    from_cache: int = 0     # of those, read from a cluster cache
    # Files of the version's trees not placed: they lie in a nested dataset or store
    # (counted in the trees, never taken from the version record's file count).
    left_out: int = 0

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"version": self.version.id, "dataset": self.version.dataset,
                "target": str(self.target), "written": self.written, "removed": self.removed,
                "unchanged": self.unchanged, "bytes_written": self.bytes_written,
                "downloaded": self.downloaded, "bytes_downloaded": self.bytes_downloaded}


@dataclass(slots=True)
class FileRow:
    """One row of `dsv files list`."""

    path: str
    kind: str          # "file", "link" or "dir"
    size: int
    oid: str
    mode: int
    chunks: str = ""   # a chunked file's chunk list

    @classmethod
    def of(cls, path: str, kind: str, mode: int, size: int, oid: str, chunks: str = ""
           ) -> FileRow:
        """The row of a tree entry at `path` (`kind` as trees spell it: FILE, LINK, DIR)."""
        return cls(path, _KIND_NAMES[kind], size, oid, mode, chunks)

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`): `hash` is always the blake3 of the whole
        file (what `b3sum` prints); `chunks` appears for a file stored in chunks."""
        out = {"path": self.path, "type": self.kind, "size": self.size, "hash": self.oid,
               "mode": oct(self.mode)}
        if self.chunks:
            out["chunks"] = self.chunks
        return out


@dataclass
class MonitorReport:
    """`dsv monitor start` / `status` of one dataset: the file-change monitor watching its
    directory, if one runs."""

    dataset: Dataset
    root: Path
    running: bool
    pid: int | None = None
    watches: int = 0          # directories watched
    started: float | None = None
    vouched: bool = False     # the stat cache is good as of one of its tokens: the next
    #                           commit looks only at what it reports changed

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"dataset": self.dataset.name, "id": self.dataset.id, "root": str(self.root),
                "running": self.running, "pid": self.pid, "watches": self.watches,
                "started": self.started, "vouched": self.vouched}
