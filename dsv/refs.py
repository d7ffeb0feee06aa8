"""Refs: the grammar `DATASET[:SELECTOR][~N]`, resolution, the local ref store, ancestry.

Owns parsing (pure, property-tested) and resolution: `latest`, a tag, a version id or a
unique prefix of one (≥ 4 chars), a remote-tracking ref `REMOTE/latest` or `REMOTE/TAG`
(what the remote held when last seen), then `~N` ancestry along first parents (ambiguity is
an error listing the candidates); `RefStore`, through which every write of a local ref
(a dataset's `latest`, its tags) goes, so their rules live in one place; and walks of
history (`ancestry`, `is_ancestor`, `ahead_of`, `descends_from`). No committed version
leaves `latest`'s history unless the caller forces it. Must never write anything but refs, and only
inside the caller's index transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import AmbiguousRef, DatasetNotFound, HistoryConflict, InvalidInput, RefError
from .index import Index
from .model import COMMITTED, Dataset, Version
from .model import LATEST as LATEST  # re-exported with the grammar
from .paths import NAME_RE as NAME_RE  # the grammar, re-exported
from .paths import is_valid_name as is_valid_name

_ANCESTRY_RE = re.compile(r"((?:~\d*)+)$")
MIN_PREFIX = 4


@dataclass(frozen=True)
class RefSpec:
    """A parsed ref. `dataset` None means "the dataset of the current directory"."""

    dataset: str | None
    selector: str
    ancestor: int = 0

    def __str__(self) -> str:
        text = f"{self.dataset or ''}:{self.selector}"
        return text + (f"~{self.ancestor}" if self.ancestor else "")


def check_tag_name(name: str) -> None:
    """InvalidInput unless `name` may name a tag."""
    if not is_valid_name(name) or name == LATEST:
        raise InvalidInput(f"invalid tag name {name!r}",
                           hint="use letters, digits, '.', '_' and '-'; not 'latest'")


def parse_ref(text: str) -> RefSpec:
    """Parse `DATASET[:SELECTOR][~N…]` or `:SELECTOR[~N…]`; raises RefError when malformed."""
    if not isinstance(text, str) or not text or text.strip() != text:
        raise RefError(f"invalid ref {text!r}", hint="refs look like DATASET:latest, "
                       "DATASET:TAG, DATASET:VERSION or DATASET:VERSION~1")
    body, ancestor = text, 0
    match = _ANCESTRY_RE.search(text)
    if match:
        body = text[: match.start()]
        for step in match.group(1).split("~")[1:]:
            ancestor += int(step) if step else 1
    dataset, sep, selector = body.partition(":")
    if not sep:
        selector = LATEST
    remote, slash, name = selector.partition("/")
    valid_selector = is_valid_name(selector) or (
        bool(slash) and is_valid_name(remote) and is_valid_name(name))
    if (dataset and not is_valid_name(dataset)) or not valid_selector \
            or (not dataset and not sep):
        raise RefError(f"invalid ref {text!r}", hint="refs look like DATASET:latest, "
                       "DATASET:TAG, DATASET:VERSION, DATASET:VERSION~1 or "
                       "DATASET:REMOTE/latest")
    return RefSpec(dataset or None, selector, ancestor)


def find_dataset(index: Index, key: str) -> Dataset:
    """A dataset by id or name (ids win when one string is both)."""
    ds = index.dataset_by("id", key) or index.dataset_by("name", key)
    if ds is None:
        raise DatasetNotFound(f"no dataset named {key!r}",
                              hint="`dsv datasets list` shows the datasets of this store")
    return ds


def resolve(index: Index, spec: RefSpec, default: Dataset | None = None) -> Version:
    """The version `spec` names."""
    if spec.dataset is None:
        if default is None:
            raise RefError(f"ref {str(spec)!r} names no dataset and none is implied here",
                           hint="write DATASET:SELECTOR, or run inside a dataset's directory")
        ds = default
    else:
        ds = find_dataset(index, spec.dataset)
    version = _select(index, ds, spec.selector)
    for _ in range(spec.ancestor):
        if not version.parents:
            raise RefError(f"{ds.name}:{spec.selector}~{spec.ancestor} goes past the first version")
        parent = index.version(version.parents[0])
        if parent is None:
            raise RefError(f"parent {version.parents[0]} of {version.id} is not in this store")
        version = parent
    return version


def _select(index: Index, ds: Dataset, selector: str) -> Version:
    if "/" in selector:
        return _remote_tracking(index, ds, *selector.split("/", 1))
    if selector == LATEST:
        if ds.latest is None:
            raise RefError(f"dataset {ds.name!r} has no committed version yet",
                           hint="commit one with `dsv commit -m MSG`")
        found = index.version(ds.latest)
        if found is None:   # (an index another hand touched)
            raise RefError(f"{ds.name}:latest names version {ds.latest}, which is not in "
                           f"this store", hint="run `dsv verify` to see what else is amiss")
        return found
    candidates: dict[str, str] = {}
    tagged = index.tag(ds.id, selector)
    if tagged:
        candidates[f"tag {selector}"] = tagged
    exact = index.version(selector)
    if exact is not None and exact.dataset == ds.id:
        candidates = {f"version {selector}": selector} if not tagged or tagged == selector \
            else {**candidates, f"version {selector}": selector}
    elif len(selector) >= MIN_PREFIX:
        for vid in index.versions_with_prefix(ds.id, selector):
            candidates[f"version {vid}"] = vid
    distinct = set(candidates.values())
    if not distinct:
        hint = (f"version prefixes need at least {MIN_PREFIX} characters"
                if len(selector) < MIN_PREFIX else f"`dsv log {ds.name}` lists its versions")
        raise RefError(f"{ds.name}:{selector} matches no tag or version", hint=hint)
    if len(distinct) > 1:
        listing = ", ".join(sorted(candidates))
        raise AmbiguousRef(f"{ds.name}:{selector} is ambiguous: it matches {listing}",
                           hint="name a version by more of its id; a tag that shares its "
                                "name with a version prefix can be renamed with `dsv tag -d`")
    vid = distinct.pop()
    version = index.version(vid)
    if version is None:   # (a tag naming a version the index lacks: another hand's)
        raise RefError(f"{ds.name}:{selector} names version {vid}, which is not in this "
                       f"store", hint="run `dsv verify` to see what else is amiss")
    return version


def _remote_tracking(index: Index, ds: Dataset, remote: str, name: str) -> Version:
    """`DATASET:REMOTE/latest` or `DATASET:REMOTE/TAG`: the version that ref had on the
    remote when this store last fetched from or pushed to it (as git's `origin/main`)."""
    if remote not in {r["name"] for r in index.remotes()}:
        raise RefError(f"{ds.name}:{remote}/{name}: no remote named {remote!r}",
                       hint="`dsv remote list` shows the remotes")
    vid = index.remote_ref(remote, ds.id, name if name == LATEST else f"tags/{name}")
    if vid is None:
        raise RefError(f"{ds.name}:{remote}/{name}: {remote} had no {name!r} for {ds.name} "
                       f"when last seen", hint=f"`dsv fetch {remote}` brings what it has now")
    version = index.version(vid)
    if version is None or version.dataset != ds.id or version.state != COMMITTED:
        raise RefError(f"{ds.name}:{remote}/{name} names {vid}, which this store does not "
                       f"hold", hint=f"`dsv fetch {remote}` brings it")
    return version


# ---- the local ref store ----------------------------------------------------------------

RefChange = tuple[str, str, str]
"""A planned local ref move: (dataset id, `latest` or a tag name, version id)."""


class RefStore:
    """The local refs: each dataset's `latest` and its tags. Every write goes through
    here, inside the caller's index transaction; a ref always names a committed version
    of its own dataset."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def _target(self, ds_id: str, vid: str) -> Version:
        version = self.index.version(vid)
        if version is None or version.state != COMMITTED or version.dataset != ds_id:
            raise RefError(f"{vid} is not a committed version of dataset {ds_id}")
        return version

    def set_latest(self, ds_id: str, vid: str | None, force: bool = False) -> None:
        """Point `latest` at `vid` (None: the dataset has no committed version left).

        HistoryConflict unless the current `latest` is `vid` or one of its ancestors (no
        committed version may drop out of `latest`'s history) or `force`.
        """
        ds = self.index.dataset_by("id", ds_id)
        current = ds.latest if ds is not None else None
        if vid is not None:
            new = self._target(ds_id, vid)
            if current is not None and not force and not is_ancestor(self.index, current, new):
                assert ds is not None
                raise HistoryConflict(
                    f"moving {ds.name}:latest from {current} to {vid} would leave {current} "
                    f"out of latest's history",
                    hint="pass --force to move it anyway (the versions stay in the store)")
        self.index.update_dataset(ds_id, latest=vid)

    def set_tag(self, ds_id: str, name: str, vid: str) -> None:
        """Create or move tag `name`."""
        check_tag_name(name)
        self._target(ds_id, vid)
        self.index.set_tag(ds_id, name, vid)

    def delete_tag(self, ds_id: str, name: str) -> None:
        """Remove tag `name`, if it exists."""
        self.index.delete_tag(ds_id, name)

    def apply(self, changes: Iterable[RefChange]) -> None:
        """Move refs as planned (a pull's or fetch's decisions: sync.policy moves `latest`
        only forward, unless the user forced it)."""
        for ds_id, name, vid in changes:
            if name == LATEST:
                self.set_latest(ds_id, vid, force=True)
            else:
                self.set_tag(ds_id, name, vid)


# ---- history ----------------------------------------------------------------------------

def ancestry(index: Index, versions: Iterable[Version]) -> list[Version]:
    """`versions` and every committed ancestor the index knows, each once."""
    out: dict[str, Version] = {}
    stack = list(versions)
    while stack:
        v = stack.pop()
        if v.id in out:
            continue
        out[v.id] = v
        for pid in v.parents:
            parent = index.version(pid)
            if parent is not None and parent.state == COMMITTED:
                stack.append(parent)
    return list(out.values())


def is_ancestor(index: Index, ancestor: str, v: Version) -> bool:
    """Whether the version with id `ancestor` is `v` or one of its ancestors (stops as soon
    as it is found)."""
    seen: set[str] = set()
    stack = [v]
    while stack:
        cur = stack.pop()
        if cur.id == ancestor:
            return True
        if cur.id in seen:
            continue
        seen.add(cur.id)
        for pid in cur.parents:
            parent = index.version(pid)
            if parent is not None:
                stack.append(parent)
    return False


NEAREST_DEPTH = 64
"""How many ancestors `nearest_ancestor` looks through."""

COMPARE_MIN_FILES = 1024
"""A push or a pull compares a version of at least this many files with an ancestor
(`nearest_ancestor`); a smaller one is looked at whole, which costs milliseconds and
keeps its "already there" counts whole."""


def nearest_ancestor(index: Index, v: Version, accept: Callable[[Version], bool]
                     ) -> Version | None:
    """The nearest ancestor of `v` in its own dataset (breadth first, at most
    NEAREST_DEPTH looked at) that `accept`s, or None: what a push or a pull compares a
    version with, so that it looks only at what differs."""
    queue, seen = list(v.parents), set[str]()
    while queue and len(seen) < NEAREST_DEPTH:
        pid = queue.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        parent = index.version(pid)
        if parent is None or parent.dataset != v.dataset:
            continue
        if accept(parent):
            return parent
        queue.extend(parent.parents)
    return None


def ahead_of(index: Index, v: Version, base: Version) -> int:
    """How many committed versions `v`'s history holds that `base`'s does not."""
    behind = {a.id for a in ancestry(index, [base])}
    return sum(1 for a in ancestry(index, [v]) if a.id not in behind)


def descends_from(index: Index, v: Version, record: str) -> bool:
    """Whether the version whose record is `record` is `v` or one of its ancestors."""
    return any(a.record == record for a in ancestry(index, [v]))


class History:
    """Local history as sync.policy sees it (sync.policy.LocalHistory, over the index)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def version(self, vid: str) -> Version | None:
        """A version by full id, if the index has it."""
        return self.index.version(vid)

    def dataset(self, ds_id: str) -> Dataset | None:
        """A dataset by id, if the index has it."""
        return self.index.dataset_by("id", ds_id)

    def tag(self, ds_id: str, name: str) -> str | None:
        """The version id a dataset's tag points at, if any."""
        return self.index.tag(ds_id, name)

    def descends(self, v: Version, record: str) -> bool:
        """Whether the version whose record is `record` is `v` or one of its ancestors."""
        return descends_from(self.index, v, record)
