"""Ref decisions of push, fetch and pull, as pure functions of what is known.

Owns the fast-forward rule: a remote `latest` moves only forward along history (or with
--force), tags move only with --force, a store that is merely behind is told so, and a
pull takes what loses nothing (tags it lacks, `latest` of datasets that have none, and
`latest` moved forward). Sees local history only through `LocalHistory` (the index in
practice, a dict in the tests). Must never do I/O.
"""

from __future__ import annotations

from typing import Literal, Protocol

from ..model import LATEST, Dataset, Version
from ..refs import RefChange
from ..remotes.layout import RemoteRef, parse_ref

Verdict = Literal["write", "same", "behind", "skip", "reject"]


class LocalHistory(Protocol):
    """What the decisions need to know of this store."""

    def version(self, vid: str) -> Version | None:
        """A version by full id, if this store has it."""

    def dataset(self, ds_id: str) -> Dataset | None:
        """A dataset by id, if this store has it."""

    def tag(self, ds_id: str, name: str) -> str | None:
        """The version id a dataset's tag points at here, if any."""

    def descends(self, v: Version, record: str) -> bool:
        """Whether the version whose record is `record` is `v` or one of its ancestors."""
        ...


def decide_push(local: LocalHistory, ref: str, v: Version, required: bool, force: bool,
                body: bytes, current: tuple[bytes, str] | None, key: str
                ) -> tuple[Verdict, str]:
    """What to do with remote ref `key` (holding `current`) when pushing `v` as `ref`
    (`latest` or `tags/NAME`), whose new bytes are `body`: write it, leave it (same),
    report the remote ahead (behind), skip it (a `latest` not required), or refuse it."""
    if current is None:
        return "write", ""
    data, etag = current
    if data == body:
        return "same", ""
    seen = parse_ref(key, data, etag)
    if seen is None or seen.record == v.record or force:
        return "write", ""
    if ref == LATEST and local.descends(v, seen.record):
        return "write", ""
    if not required:
        return "skip", ""  # pushing one version does not have to move `latest`
    if ref == LATEST:
        theirs = local.version(seen.version)
        if theirs is not None and theirs.record == seen.record and v.record and \
                local.descends(theirs, v.record):
            return "behind", f"the remote is ahead ({seen.version})"
        return "reject", f"is {seen.version} on the remote; {v.id} does not descend from it"
    return "reject", f"is {seen.version} on the remote, not {v.id} (tags move only with --force)"


def plan_pull(local: LocalHistory, remote: str, remote_refs: dict[tuple[str, str], RemoteRef],
              force: bool = False, fast_forward: bool = True
              ) -> tuple[list[RefChange], list[str], list[str]]:
    """Which of the remote's refs to take where that loses nothing: tags this store lacks,
    `latest` of datasets that have none, and (with `fast_forward`, as pull does) `latest`
    moved forward along history. Returns (changes, their descriptions, refs kept because
    they differ)."""
    changes: list[RefChange] = []
    updated: list[str] = []
    diverged: list[str] = []
    for (ds_id, ref), rr in sorted(remote_refs.items()):
        ds = local.dataset(ds_id)
        v = local.version(rr.version)
        if ds is None or v is None or v.record != rr.record or v.dataset != ds_id:
            continue
        if ref == LATEST:
            current = local.version(ds.latest) if ds.latest else None
            if current is None or (fast_forward and current.id != v.id and
                                   local.descends(v, current.record or "")):
                changes.append((ds_id, LATEST, v.id))
                updated.append(f"{ds.name}:latest -> {v.id}")
            elif fast_forward and current.id != v.id and \
                    not local.descends(current, v.record or ""):
                diverged.append(f"{ds.name}:latest is {current.id} here and {v.id} on {remote}, "
                                f"on another line (kept; `dsv pull --merge` merges them)")
        else:
            name = ref.rpartition("/")[2]
            mine = local.tag(ds_id, name)
            if mine is None or (mine != v.id and force):
                changes.append((ds_id, name, v.id))
                updated.append(f"{ds.name}:{name} -> {v.id}")
            elif mine != v.id:
                diverged.append(f"tag {ds.name}:{name} is {mine} here and {v.id} on {remote} "
                                f"(kept; --force takes theirs)")
    return changes, updated, diverged
