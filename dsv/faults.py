"""Crash and pause points for the fault tests: a process dies, or waits, exactly where a
test asks it to.

`DSV_CRASH_AT=NAME` makes `crashpoint(NAME)` SIGKILL the process (no cleanup, no
atexit, like a power cut for everything above the kernel). `DSV_CRASH_AFTER=N` delays
that to the N-th time the point is reached. `DSV_PAUSE_AT=NAME` with `DSV_PAUSE_DIR=D`
makes the first arrival at NAME create `D/NAME.reached` and wait until a test creates
`D/NAME.go` (at most 120 s), so another process can run in between. Costs one dict
lookup when unset.
"""

from __future__ import annotations

import os
import signal
import time

_TARGET = os.environ.get("DSV_CRASH_AT")
_AFTER = int(os.environ.get("DSV_CRASH_AFTER", "1") or 1)
_PAUSE = os.environ.get("DSV_PAUSE_AT")
_PAUSE_DIR = os.environ.get("DSV_PAUSE_DIR", "")
_hits = 0
_paused = False


def crashpoint(name: str) -> None:
    """Die here (or wait here) if a test asked for `name`."""
    global _hits, _paused
    if _PAUSE is not None and _PAUSE == name and not _paused:
        _paused = True
        _wait(name)
    if _TARGET is None or _TARGET != name:
        return
    _hits += 1
    if _hits >= _AFTER:
        os.kill(os.getpid(), signal.SIGKILL)


def _wait(name: str) -> None:
    with open(os.path.join(_PAUSE_DIR, f"{name}.reached"), "w"):
        pass
    go = os.path.join(_PAUSE_DIR, f"{name}.go")
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
