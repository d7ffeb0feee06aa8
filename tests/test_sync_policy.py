"""sync.policy: the ref decisions of push and pull as tables of cases (no I/O).

A small history stands in for the index: a line a1 <- a2 <- a3 of dataset `d`, and a
version b2 that also descends from a1 (a fork).
"""

from __future__ import annotations

import pytest

from dsv.model import Dataset, Version
from dsv.remotes.layout import RemoteRef, ref_body
from dsv.sync.policy import decide_push, plan_pull


def rec(vid: str) -> str:
    """A fake record hash for version `vid` (64 hex digits)."""
    return (vid.encode().hex() * 64)[:64]


def version(vid: str, parents: list[str]) -> Version:
    return Version(id=vid, dataset="d", state="committed", tree="0" * 64, parents=parents,
                   created=0.0, committed=0.0, record=rec(vid))


class History:
    """LocalHistory over dicts."""

    def __init__(self, latest: str | None, tags: dict[str, str] | None = None,
                 known: tuple[str, ...] = ("a1", "a2", "a3", "b2")) -> None:
        graph = {"a1": [], "a2": ["a1"], "a3": ["a2"], "b2": ["a1"]}
        self.versions = {v: version(v, graph[v]) for v in known}
        self.ds = Dataset(id="d", name="data", created=0.0, latest=latest)
        self.tags = tags or {}

    def version(self, vid: str) -> Version | None:
        return self.versions.get(vid)

    def dataset(self, ds_id: str) -> Dataset | None:
        return self.ds if ds_id == "d" else None

    def tag(self, ds_id: str, name: str) -> str | None:
        return self.tags.get(name) if ds_id == "d" else None

    def descends(self, v: Version, record: str) -> bool:
        stack, seen = [v.id], set()
        while stack:
            vid = stack.pop()
            if vid in seen or vid not in self.versions:
                continue
            seen.add(vid)
            if self.versions[vid].record == record:
                return True
            stack.extend(self.versions[vid].parents)
        return False


def on_remote(vid: str, ref: str = "latest") -> tuple[bytes, str]:
    """The ref file a remote holds when its `ref` names `vid`, and its tag."""
    return ref_body("d", vid, rec(vid), "data", ".", latest=ref == "latest"), "etag-1"


KEY_LATEST = "refs/d/latest"
KEY_TAG = "refs/d/tags/v1"

# (what is pushed, ref, required, force, what the remote holds) → verdict
PUSH_CASES = [
    ("a3", "latest", True, False, None, "write"),                      # new ref
    ("a3", "latest", True, False, "same", "same"),                     # identical bytes
    ("a3", "latest", True, False, "a2", "write"),                      # fast-forward
    ("a3", "latest", True, False, "a1", "write"),                      # fast-forward by two
    ("a2", "latest", True, False, "a3", "behind"),                     # remote ahead
    ("b2", "latest", True, False, "a3", "reject"),                     # diverged
    ("b2", "latest", True, True, "a3", "write"),                       # diverged, --force
    ("b2", "latest", False, False, "a3", "skip"),                      # one version: not required
    ("a3", "tags/v1", True, False, None, "write"),                     # new tag
    ("a3", "tags/v1", True, False, "a2", "reject"),                    # tags never move
    ("a3", "tags/v1", True, True, "a2", "write"),                      # ... except with --force
    ("a3", "latest", True, False, "garbage", "write"),                 # unreadable ref: replaced
]


@pytest.mark.parametrize("pushed, ref, required, force, remote, verdict", PUSH_CASES)
def test_push_decisions(pushed: str, ref: str, required: bool, force: bool,
                        remote: str | None, verdict: str) -> None:
    local = History(latest="a3")
    v = local.versions[pushed]
    key = KEY_LATEST if ref == "latest" else KEY_TAG
    body = ref_body("d", v.id, v.record, "data", ".", latest=ref == "latest")
    if remote is None:
        current = None
    elif remote == "same":
        current = (body, "etag-same")
    elif remote == "garbage":
        current = (b"not json", "etag-x")
    else:
        current = on_remote(remote, ref)
    got, why = decide_push(local, ref, v, required, force, body, current, key)
    assert got == verdict
    if verdict == "reject":
        assert why and remote in why
    if verdict == "behind":
        assert why == f"the remote is ahead ({remote})"


def test_behind_needs_the_remote_version_known_here() -> None:
    """A remote `latest` this store has never seen cannot be judged as ahead: refused."""
    local = History(latest="a2", known=("a1", "a2"))
    v = local.versions["a2"]
    body = ref_body("d", "a2", v.record, "data", ".", latest=True)
    verdict, why = decide_push(local, "latest", v, True, False, body, on_remote("a3"),
                               KEY_LATEST)
    assert verdict == "reject" and "does not descend" in why


def remote_ref(vid: str, ref: str = "latest") -> RemoteRef:
    return RemoteRef("d", ref, vid, rec(vid), "etag")


# (local latest, local tags, remote refs, force) → (changes, diverged count)
PULL_CASES = [
    (None, {}, {"latest": "a3"}, False, [("d", "latest", "a3")], 0),          # none here
    ("a1", {}, {"latest": "a3"}, False, [("d", "latest", "a3")], 0),          # fast-forward
    ("a3", {}, {"latest": "a3"}, False, [], 0),                              # up to date
    ("a3", {}, {"latest": "a2"}, False, [], 0),                              # local ahead
    ("a3", {}, {"latest": "b2"}, False, [], 1),                              # diverged: kept
    ("a3", {}, {"tags/v1": "a2"}, False, [("d", "v1", "a2")], 0),            # new tag
    ("a3", {"v1": "a1"}, {"tags/v1": "a2"}, False, [], 1),                   # tag differs: kept
    ("a3", {"v1": "a1"}, {"tags/v1": "a2"}, True, [("d", "v1", "a2")], 0),   # ... --force
    ("a3", {"v1": "a2"}, {"tags/v1": "a2"}, False, [], 0),                   # same tag
]


@pytest.mark.parametrize("latest, tags, remote, force, changes, diverged", PULL_CASES)
def test_pull_plans(latest: str | None, tags: dict[str, str], remote: dict[str, str],
                    force: bool, changes: list[tuple[str, str, str]], diverged: int) -> None:
    local = History(latest=latest, tags=tags)
    refs = {("d", ref): remote_ref(vid, ref) for ref, vid in remote.items()}
    got, updated, kept = plan_pull(local, "origin", refs, force)
    assert got == changes
    assert len(updated) == len(changes)
    assert len(kept) == diverged


def test_fetch_moves_latest_only_where_there_is_none() -> None:
    """Without fast-forward (a fetch), an existing `latest` stays even if behind."""
    local = History(latest="a1")
    refs = {("d", "latest"): remote_ref("a3")}
    assert plan_pull(local, "origin", refs, fast_forward=False) == ([], [], [])
    assert plan_pull(History(latest=None), "origin", refs, fast_forward=False)[0] == \
        [("d", "latest", "a3")]


def test_refs_naming_unknown_or_mismatched_versions_are_ignored() -> None:
    local = History(latest="a1")
    unknown = RemoteRef("d", "latest", "zz9", rec("zz9"), "e")
    wrong_record = RemoteRef("d", "latest", "a3", rec("a2"), "e")
    other_dataset = RemoteRef("x", "latest", "a3", rec("a3"), "e")
    for rr in (unknown, wrong_record, other_dataset):
        assert plan_pull(local, "origin", {(rr.dataset, "latest"): rr}) == ([], [], [])
