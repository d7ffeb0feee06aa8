"""Every user-facing failure of dsv, as one exception type each.

This module owns the error vocabulary: each class carries a one-line message and an
optional hint, and the CLI prints them as ``error: ...`` / ``hint: ...``. It must never
import anything else from dsv.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: `dsv --version` imports this module and no more
if TYPE_CHECKING:
    from typing import Any, Protocol

    class ReportLike(Protocol):
        """A report that can go out as `--json`."""

        def to_json(self) -> dict[str, Any]:
            """The fields a script sees."""


class DsvError(Exception):
    """Base of all expected failures; the CLI turns these into exit status 1. `report` is
    what was found before failing (a refused push's refs, a merge's conflicts): with
    `--json` the CLI prints its `to_json()` before the error line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None,
                 report: ReportLike | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.report = report

    def __str__(self) -> str:
        return self.message


class StoreNotFound(DsvError):
    """No `.dsv/` directory above the current directory."""


class StoreExists(DsvError):
    """`dsv init` where a store already is."""


class StoreLocked(DsvError):
    """Another dsv process held the store lock for longer than we were willing to wait."""


class DatasetNotFound(DsvError):
    """A dataset id or name that matches nothing."""


class DatasetExists(DsvError):
    """A dataset name or working directory that is already taken."""


class RefError(DsvError):
    """A reference that is malformed, matches nothing, or matches more than one thing."""


class AmbiguousRef(RefError):
    """A reference that matches more than one version or tag."""


class VersionImmutable(DsvError):
    """An attempt to change a committed version."""


class VersionInUse(DsvError):
    """An attempt to delete a version that tags, children or a working directory use."""


class TagExists(DsvError):
    """A tag that already points elsewhere, moved without --force."""


class DirtyWorktree(DsvError):
    """A checkout that would discard uncommitted changes."""


class NothingToCommit(DsvError):
    """A commit whose tree equals its parent's."""


class UnsafePath(DsvError):
    """A path that is absolute, climbs out with `..`, holds NUL, or escapes through a symlink."""


class CorruptObject(DsvError):
    """An object whose bytes do not hash to its name."""


class MissingObject(DsvError):
    """An object a version needs that the store does not hold."""


class InvalidInput(DsvError):
    """Input that is well-formed for the shell but meaningless for dsv."""


class JobFailed(DsvError):
    """`dsv run`'s command exited non-zero (or was killed); dsv exits with its status."""

    def __init__(self, message: str, hint: str | None = None, result: object = None) -> None:
        super().__init__(message, hint)
        self.result = result
        status = getattr(result, "exit_status", 1)
        # (status 0: the command succeeded but its outputs could not be saved)
        self.exit_code = status if 0 < status < 256 else 128 - status if status < 0 else 1


class RemoteError(DsvError):
    """A remote said no, or could not be reached; the message says which and why."""


class RefConflict(DsvError):
    """A push that would move a remote ref off a version it does not descend from (or move
    a tag), or that lost a race with another pusher (`report`: the PushReport)."""


class HistoryConflict(DsvError):
    """Moving `latest` would leave committed versions out of its history (only with
    --force)."""


class MergeConflict(DsvError):
    """A merge found paths changed differently on the two sides; nothing was committed.
    `report` (a MergeReport) lists them."""


class UsageError(DsvError):
    """A command line the argument parser rejects (unknown option, missing argument)."""

    exit_code = 2


class CannotWrite(DsvError):
    """A write refused by the system: no space left, a file-size or quota limit, a read-only
    file system. Nothing dsv had published is lost; the command can be run again."""


class IndexUnwritable(CannotWrite):
    """`.dsv/index.db` cannot be written (reads still work where possible)."""


class IndexDamaged(DsvError):
    """`.dsv/index.db` is not a readable SQLite database any more; `dsv index rebuild`
    recreates it from the objects."""


class IndexBusy(StoreLocked):
    """Another process held `.dsv/index.db` for longer than SQLite waits."""
