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
    from .reporting import Reporter
    from .store import Store
    from .sync.reader import RemoteReader

__version__ = "0.1.0"
__all__ = ["Dataset", "DsvError", "RemoteReader", "Store", "Version", "init", "open",
           "open_remote"]

_LAZY = {"Store": "store", "Dataset": "model", "Version": "model",
         "RemoteReader": "sync.reader"}


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


def open_remote(url: str, *, endpoint_url: str | None = None, profile: str | None = None,
                cache: str | os.PathLike[str] | None = None,
                reporter: Reporter | None = None) -> RemoteReader:
    """A remote opened for reading without a store (`dsv ls`, `dsv get`, `dsv cat`):
    `resolve` a ref, then list, `get`, `cat` or `open` its files, every byte verified,
    through the cluster cache `cache` when given (default: `DSV_CACHE`)."""
    from .sync.reader import RemoteReader
    chosen = cache if cache is not None else os.environ.get("DSV_CACHE") or None
    return RemoteReader(url, endpoint_url=endpoint_url, profile=profile,
                        cache=os.fspath(chosen) if chosen else None, reporter=reporter)
