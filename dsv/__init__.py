"""dsv: a git-like, local-first version store for datasets.

    import dsv
    store = dsv.open(".")
    version = store.commit("first snapshot")
    store.checkout(f"{version.dataset}:latest", to="/tmp/copy")

`import dsv` loads nothing else: `Store`, `Dataset` and `Version` are imported on first use,
so that `dsv --version` and every other command start fast.
"""

from __future__ import annotations

import os

from .errors import DsvError

TYPE_CHECKING = False  # not typing's: importing typing alone costs `dsv --version` 5 ms
if TYPE_CHECKING:
    from typing import Any

    from .model import Dataset, Version
    from .store import Store

__version__ = "0.1.0"
__all__ = ["Dataset", "DsvError", "Store", "Version", "init", "open"]

_LAZY = {"Store": "store", "Dataset": "model", "Version": "model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def open(path: str | os.PathLike[str] = ".") -> Store:  # noqa: A001 - mirrors dsv.open in the spec
    """Open the store that holds `path` (walking up to the nearest `.dsv/`)."""
    from .store import Store
    return Store.open(path)


def init(path: str | os.PathLike[str] = ".", name: str | None = None, bind: bool = True) -> Store:
    """Create a store at `path`; by default bind `path` itself as a dataset."""
    from .store import Store
    return Store.init(path, name=name, bind=bind)
