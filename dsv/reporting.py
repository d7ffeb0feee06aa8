"""How lower layers report progress and notices without knowing who is watching.

Owns the `Reporter` interface: the Store API calls it; the CLI implements it with rich
progress bars on stderr; library users get silence by default. Also the words every layer
shows people: `plural`, `size`, `lineage_summary`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Advance = Callable[[int, int], None]
"""Advance a task by (items, bytes)."""


class FileBytes:
    """One large file's bytes on a progress bar while they move (a copy, a download, an
    upload), reported piece by piece from any thread. The bar moves only past the
    furthest point reached (a transfer that rewinds a part, or is `restart`ed after a
    bad read, shows nothing until it passes that point) and never beyond the file's
    size, so `shown` plus what the file's completion counts (`size - shown`) is the size
    exactly."""

    def __init__(self, advance: Advance, size: int) -> None:
        self._advance = advance
        self.size = size
        self._at = 0
        self._lock = threading.Lock()
        self.shown = 0

    def __call__(self, nbytes: int) -> None:
        """`nbytes` more moved (negative: the transfer rewound)."""
        with self._lock:
            self._at += nbytes
            step = min(self._at, self.size) - self.shown
            if step <= 0:
                return
            self.shown += step
        self._advance(0, step)

    def restart(self) -> None:
        """The transfer starts again from its first byte."""
        with self._lock:
            self._at = 0


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


def number(value: object) -> str:
    """`value` as a message shows a count: with separators if it is a whole number (a
    value read from a damaged index may be anything)."""
    return f"{value:,}" if type(value) is int else repr(value)


def size(n: int) -> str:
    """A size in bytes for people: `512 B`, `1.5 MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def lineage_summary(lineage: dict[str, Any]) -> str:
    """A version's lineage as a person reads it, in a line or two: a job's inputs and
    command; an import's source, object count and total size (never one line per file:
    every field stays in `--json`)."""
    imported = lineage.get("import")
    if isinstance(imported, dict):
        files = imported.get("files")
        rows = [f for f in files.values() if isinstance(f, dict)] \
            if isinstance(files, dict) else []
        total = sum(f["size"] for f in rows if isinstance(f.get("size"), int))
        pinned = "pinned by VersionId" if rows and all(f.get("version_id") for f in rows) \
            else "pinned by ETag"
        return (f"imported from {imported.get('source', '?')}: "
                f"{plural(len(rows), 'object')}, {size(total)} ({pinned})")
    inputs = lineage.get("inputs")
    shown = ", ".join(f"{k}={i.get('ref', i) if isinstance(i, dict) else i}"
                      for k, i in inputs.items()) if isinstance(inputs, dict) else ""
    command = lineage.get("command")
    cmd = " ".join(map(str, command)) if isinstance(command, list) else str(command or "")
    return f"inputs {shown or '-'}; command {cmd or '-'}"


def _ignore(items: int, nbytes: int) -> None:
    return None
