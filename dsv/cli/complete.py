"""Shell completion of what a store holds: dataset names, refs (tags, `latest`, versions of
the current directory's dataset, remote-tracking refs) and remote names.

typer completes commands and options itself (`dsv --install-completion` sets it up for
bash, zsh or fish); these functions are the `autocompletion` of the arguments that name
things in the store. They run in the shell's current directory and must never fail or
print: no store, or a store that cannot be read, completes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store import Store


def _with_store(fill: Callable[[Store, str], list[str]]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        from ..errors import DsvError
        from ..store import Store, find_store
        try:
            with Store(find_store(Path("."))) as store:
                return sorted(c for c in set(fill(store, incomplete))
                              if c.startswith(incomplete))
        except (DsvError, OSError, ValueError, LookupError):
            return []
    complete.__name__ = fill.__name__
    return complete


def _datasets(store: Store, incomplete: str) -> list[str]:
    return [ds.name for ds in store.datasets()]


def _remotes(store: Store, incomplete: str) -> list[str]:
    return [spec.name for spec in store.remote_specs()]


def _refs(store: Store, incomplete: str) -> list[str]:
    name, colon, _ = incomplete.partition(":")
    if not colon:  # a dataset, to go on with `:`; inside a dataset's directory, its tags too
        here = store.dataset_at(".")
        return [f"{ds.name}:" for ds in store.datasets()] + \
            ([row["tag"] for row in store.tags(here.id)] + ["latest"] if here else [])
    from ..errors import DsvError
    try:
        ds = store.dataset(name)
    except DsvError:
        return []
    selectors = ["latest"] + [row["tag"] for row in store.tags(ds.id)] + \
        [v.id for v in store.log(ds.id, include_drafts=True)] + \
        [f"{spec.name}/latest" for spec in store.remote_specs() if spec.kind == "origin"]
    return [f"{name}:{s}" for s in selectors]


def _remote_or_ref(store: Store, incomplete: str) -> list[str]:
    return _remotes(store, incomplete) + _refs(store, incomplete)


datasets = _with_store(_datasets)
remotes = _with_store(_remotes)
refs = _with_store(_refs)
remote_or_ref = _with_store(_remote_or_ref)
