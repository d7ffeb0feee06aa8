"""Crash points for the kill -9 tests: a process dies exactly where a test asks it to.

`DSV_CRASH_AT=NAME` makes `crashpoint(NAME)` SIGKILL the process (no cleanup, no
atexit, like a power cut for everything above the kernel). `DSV_CRASH_AFTER=N` delays
that to the N-th time the point is reached. Costs one dict lookup when unset.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("DSV_CRASH_AT")
_AFTER = int(os.environ.get("DSV_CRASH_AFTER", "1") or 1)
_hits = 0


def crashpoint(name: str) -> None:
    global _hits
    if _TARGET is None or _TARGET != name:
        return
    _hits += 1
    if _hits >= _AFTER:
        os.kill(os.getpid(), signal.SIGKILL)
