"""What the commands that are not part of the everyday local workflow return: gc, verify,
index rebuild, push, fetch, pull, verify --remote, cache prune, run, import --check and
merge.

Plain dataclasses, apart from dsv.model so that the everyday commands (status above all) do
not pay at start-up for building classes they never use. Imports only dsv.model; must never
do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import Version


class _FlatReport:
    """A report whose `--json` form is its fields as they are."""

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return dict(self.__dict__)



@dataclass
class GcReport(_FlatReport):
    """What `dsv gc` removed (or with `dry_run`, would remove)."""

    removed_objects: int = 0
    removed_packs: int = 0
    repacked_packs: int = 0
    freed_bytes: int = 0
    dry_run: bool = False
    kept_for_writers: int = 0   # unreachable objects kept because a writer was running
    removed_inputs: int = 0     # `dsv run` input trees removed (unused, or of gone versions)


MAX_AFFECTED = 1000
"""Rows `VerifyReport.affected` holds at most."""


@dataclass
class VerifyReport:
    """What `dsv verify` checked and found."""

    objects_checked: int = 0
    bytes_checked: int = 0
    versions_checked: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)     # with --repair: before repairing
    affected: list[dict[str, str]] = field(default_factory=list)
    """What remaining damage reaches: {version, path, object, problem} (path "" is the
    version record, "/" the root tree; a path ending in / is a directory's tree)."""

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"ok": self.ok, "objects_checked": self.objects_checked,
                "bytes_checked": self.bytes_checked, "versions_checked": self.versions_checked,
                "problems": self.problems, "repaired": self.repaired, "found": self.found,
                "affected": self.affected}


@dataclass
class RebuildReport(_FlatReport):
    """What `dsv index rebuild` recovered from the objects."""

    packs: int = 0
    versions: int = 0
    datasets: int = 0
    skipped: list[str] = field(default_factory=list)
    from_state: bool = False    # names, refs, remotes and drafts came from state.json


@dataclass
class PushReport(_FlatReport):
    """What a push sent and which remote refs it moved."""

    remote: str
    versions: int = 0           # versions considered
    versions_sent: int = 0      # of which the remote lacked
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0    # looked at, and found on the remote
    bytes_skipped: int = 0
    # Versions the remote holds whole that versions sent were compared with: what they
    # share was neither looked at nor counted as skipped.
    based_on: list[str] = field(default_factory=list)
    refs_updated: list[str] = field(default_factory=list)
    refs_unchanged: list[str] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)      # remote is ahead: nothing to do
    rejected: list[str] = field(default_factory=list)
    refs_deleted: list[str] = field(default_factory=list)  # `push --delete`
    maintained: dict[str, Any] | None = None   # MaintainReport of the repack it ran after


@dataclass
class MaintainReport(_FlatReport):
    """What `dsv remote maintain` (or a push that ran it) did to a remote's packs."""

    remote: str
    packs_before: int = 0
    packs_after: int = 0
    packs_repacked: int = 0     # small packs deleted once their objects were uploaded again
    packs_written: int = 0
    objects_moved: int = 0
    bytes_moved: int = 0
    skipped: list[str] = field(default_factory=list)   # small packs left alone, and why
    written: list[str] = field(default_factory=list)   # ids of the packs written
    stale_uploads_removed: int = 0   # temp files of killed uploads (directory remotes)
    stale_upload_bytes: int = 0


@dataclass
class RemoteGcReport(_FlatReport):
    """What `dsv gc --remote` found unreachable on a remote, and deleted (or would)."""

    remote: str
    dry_run: bool = False
    refs: int = 0                    # live refs it kept everything for
    versions: int = 0                # versions those refs reach
    objects_kept: int = 0
    packs_deleted: int = 0           # packs with nothing live in them
    packs_rewritten: int = 0         # partly-live packs whose live objects moved first
    packs_written: int = 0
    objects_deleted: int = 0
    loose_deleted: int = 0
    locators_deleted: int = 0        # `loc/<oid>` of tree objects and records deleted
    strays_deleted: int = 0          # a pack without its index, an index without its pack,
                                     # a catalog entry or multi-pack index naming a gone pack
    bytes_freed: int = 0
    leases_removed: int = 0          # expired push leases of killed pushes
    stale_uploads_removed: int = 0   # temp files of killed uploads (directory remotes)
    upgraded: bool = False           # raised to format 3 (every dataset's catalog written)
    skipped: list[str] = field(default_factory=list)


@dataclass
class FetchReport(_FlatReport):
    """What a fetch brought (versions, trees, refs; no file contents)."""

    remote: str
    new_versions: list[str] = field(default_factory=list)
    new_datasets: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)    # the remote's refs
    updated: list[str] = field(default_factory=list)      # local refs it created
    unfetched: int = 0   # versions whose trees are still only on a remote, after it
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
    objects_skipped: int = 0    # looked at, and found here
    bytes_skipped: int = 0
    # Versions this store holds whole that the versions pulled were compared with: what
    # they share was neither looked at nor counted as skipped.
    based_on: list[str] = field(default_factory=list)
    from_cache: int = 0
    updated: list[str] = field(default_factory=list)     # local refs moved
    diverged: list[str] = field(default_factory=list)    # local refs kept, remote differs
    checked_out: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)      # with --merge: merges made

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


@dataclass
class MergeReport:
    """What `dsv merge` did: nothing (up to date), a fast-forward, or a merge version."""

    dataset: str
    ours: str                      # the working directory's head
    theirs: str                    # the version merged in
    outcome: str = ""              # "up to date", "fast-forward", "merged"
    base: str | None = None        # the merge base (None: histories never meet)
    version: str | None = None     # the version the directory now holds, if it moved
    conflicts: list[str] = field(default_factory=list)
    resolved: str | None = None    # "ours" or "theirs" when conflicts were settled

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return dict(self.__dict__)

