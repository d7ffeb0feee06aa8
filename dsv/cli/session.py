"""What one run of `dsv` works on: the global options, and the one way a command opens the
store they name. Holds no state between runs; `main` resets it before each."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .output import RichReporter

if TYPE_CHECKING:
    from ..store import Store


class Session:
    """The global options of this run, and what is learnt while opening the store (a plain
    class: building a dataclass costs every command start-up time)."""

    def __init__(self) -> None:
        self.store: Path | None = None  # --store / DSV_DIR; None: found from here up
        self.debug = False  # --debug
        # Known before the store is opened, so that errors of SQLite name the index file
        # even when it is too damaged to open.
        self.index_path: Path | None = None

    def reset(self) -> None:
        """Forget an earlier run in this process (tests run many)."""
        self.store, self.debug, self.index_path = None, False, None


session = Session()


def open_store() -> Store:
    """The store of --store, else the one holding the current directory."""
    from ..paths import STORE_DIR
    from ..store import Store, find_store
    where, exact = (session.store, True) if session.store else (".", False)
    root = find_store(Path(where), exact)
    session.index_path = root / STORE_DIR / "index.db"
    return Store(root, reporter=RichReporter())
