"""dsv: a git-like, local-first version store for datasets.

    import dsv
    store = dsv.open(".")
    version = store.commit("first snapshot")
    store.checkout(f"{version.dataset}:latest", to="/tmp/copy")
"""

from __future__ import annotations

import os

from .errors import DsvError
from .model import Dataset, Version
from .store import Store

__version__ = "0.1.0"
__all__ = ["Dataset", "DsvError", "Store", "Version", "init", "open"]


def open(path: str | os.PathLike[str] = ".") -> Store:  # noqa: A001 - mirrors dsv.open in the spec
    """Open the store that holds `path` (walking up to the nearest `.dsv/`)."""
    return Store.open(path)


def init(path: str | os.PathLike[str] = ".", name: str | None = None, bind: bool = True) -> Store:
    """Create a store at `path`; by default bind `path` itself as a dataset."""
    return Store.init(path, name=name, bind=bind)
