"""The store lock: one writer at a time, waiting a bounded time instead of failing at once.

Owns `.dsv/lock` (an flock'd file holding the holder's pid and command). Readers never
take it: SQLite's WAL gives them a consistent snapshot while a writer works.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from .errors import StoreLocked, UnsafePath

DEFAULT_TIMEOUT = 120.0
_POLL = 0.05


def lock_timeout() -> float:
    """Seconds to wait for the store lock: `DSV_LOCK_TIMEOUT`, else the default."""
    try:
        return float(os.environ.get("DSV_LOCK_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


class StoreLock:
    """An exclusive lock on a store, re-entrant within one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._depth > 0

    def holder(self) -> str:
        """Who holds the lock, as the holder wrote it into the lock file (made printable)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return "another dsv process"
        try:
            text = os.read(fd, 256).decode("utf-8", "replace")
        except OSError:
            text = ""
        finally:
            os.close(fd)
        text = "".join(c if c.isprintable() else "?" for c in text.strip())
        return text or "another dsv process"

    def acquire(self, what: str, timeout: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock for operation `what`, waiting up to `timeout` seconds
        (StoreLocked after that); `on_wait` is told once who holds it. Re-entrant."""
        if self._depth:
            self._depth += 1
            return
        timeout = lock_timeout() if timeout is None else timeout
        # Never through a link (one planted at .dsv/lock would truncate its target).
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"{self.path} is not a regular file",
                             hint="remove it; dsv recreates its lock file")
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreLocked(
                        f"the store is locked by {self.holder()}; gave up after {timeout:g}s",
                        hint="wait for it to finish, or raise DSV_LOCK_TIMEOUT") from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for the store lock held by {self.holder()} …")
                    told = True
                time.sleep(_POLL)
        try:  # who holds it, for messages only: a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({what})\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        self._depth = 1

    def try_acquire(self, what: str) -> bool:
        """Take the lock only if it is free right now."""
        if self._depth:
            self._depth += 1
            return True
        try:
            self.acquire(what, timeout=0)
        except StoreLocked:
            return False
        return True

    def release(self) -> None:
        """Undo one `acquire`; the last one lets the lock go."""
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
