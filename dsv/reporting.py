"""How lower layers report progress and notices without knowing who is watching.

Owns the `Reporter` interface: the Store API calls it; the CLI implements it with rich
progress bars on stderr; library users get silence by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int, int], None]
"""Advance a task by (items, bytes)."""


class Reporter:
    """Silent by default; subclass to show progress."""

    def notice(self, message: str) -> None:
        """A line for the user that is not an error (e.g. waiting for a lock)."""

    @contextmanager
    def task(self, label: str, total_items: int | None = None,
             total_bytes: int | None = None) -> Iterator[Advance]:
        """A unit of long work; yields a function to call as it advances."""
        yield _ignore


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 object`, `2 objects` (`words` where adding an s is wrong): every count in a
    message to a user goes through here."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def _ignore(items: int, nbytes: int) -> None:
    return None
