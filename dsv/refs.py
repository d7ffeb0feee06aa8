"""The ref grammar `DATASET[:SELECTOR][~N]` and its resolution against the index.

Owns parsing (pure, property-tested) and resolution: `latest`, a tag, a version id or a
unique prefix of one (≥ 4 chars), then `~N` ancestry along first parents. Ambiguity is
an error listing the candidates. Must never write to the index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import AmbiguousRef, DatasetNotFound, RefError
from .index import Index
from .model import Dataset, Version

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ANCESTRY_RE = re.compile(r"((?:~\d*)+)$")
LATEST = "latest"
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


def is_valid_name(name: str) -> bool:
    """Whether `name` may name a dataset or a tag."""
    return NAME_RE.fullmatch(name) is not None and ".." not in name


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
    if (dataset and not is_valid_name(dataset)) or not is_valid_name(selector) \
            or (not dataset and not sep):
        raise RefError(f"invalid ref {text!r}", hint="refs look like DATASET:latest, "
                       "DATASET:TAG, DATASET:VERSION or DATASET:VERSION~1")
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
    if selector == LATEST:
        if ds.latest is None:
            raise RefError(f"dataset {ds.name!r} has no committed version yet",
                           hint="commit one with `dsv commit -m MSG`")
        found = index.version(ds.latest)
        assert found is not None
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
    version = index.version(distinct.pop())
    assert version is not None
    return version
