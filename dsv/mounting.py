"""Starting and ending the process that serves a `dsv mount` (the FUSE side is
dsv/mount.py): checking FUSE is usable, spawning `dsv mount --foreground` in its own
session and waiting for it to answer (its failure comes back as one line), and
unmounting. Used by `dsv mount` and by `dsv run --lazy`; knows nothing of versions.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import fileio
from .errors import DsvError, InvalidInput
from .paths import module_argv

READY_TIMEOUT = 60.0
"""Seconds `spawn` waits for the child's file system to answer."""


class FuseUnavailable(DsvError):
    """FUSE cannot be used on this machine (no libfuse, no /dev/fuse, no permission)."""


def fuse_module() -> Any:  # noqa: ANN401 - mfusepy is untyped
    """The FUSE binding (mfusepy, which loads libfuse); FuseUnavailable without it."""
    try:
        import mfusepy  # type: ignore[import-untyped]
    except (ImportError, OSError, EnvironmentError) as exc:
        raise FuseUnavailable(f"FUSE is not available here ({exc})",
                              hint="install libfuse 3 (Debian/Ubuntu: apt-get install fuse3) "
                                   "and make sure /dev/fuse exists") from None
    return mfusepy


def spawn(pinned: str, directory: str | os.PathLike[str], store: str | None = None,
          remote: str | None = None, endpoint_url: str | None = None,
          profile: str | None = None, cache: str | None = None,
          lifeline: int | None = None) -> None:
    """Serve version `pinned` (`DATASET_ID:VERSION_ID`) read-only at `directory` from a
    background `dsv mount --foreground` (of the store at `store`, or of `remote`), and
    return once it answers; DsvError with its reason when it does not. With `lifeline`
    (the read end of a pipe) the mount ends by itself once every holder of the pipe's
    write end has closed it or died (see `end_with`)."""
    fuse_module()
    # (the directory a link names: where the kernel mounts, and what ismount checks)
    target = _resolved(directory)
    if not target.is_dir():
        raise InvalidInput(f"{directory} is not a directory", hint="make it first")
    if os.path.ismount(target):
        raise InvalidInput(f"{directory} is a mount point already",
                           hint=f"`dsv umount {directory}` first")
    read_fd, write_fd = os.pipe()
    args = module_argv("dsv") + (["--store", store] if store else [])
    args += ["mount", pinned, str(target), "--foreground", "--ready-fd", str(write_fd)]
    if lifeline is not None:
        args += ["--lifeline-fd", str(lifeline)]
    for flag, value in (("--remote", remote), ("--endpoint-url", endpoint_url),
                        ("--profile", profile), ("--cache", cache)):
        if value:
            args += [flag, str(value)]
    # (what the child says on stderr before it is ready explains a failure; it is read
    # back from an unnamed temp file)
    with tempfile.TemporaryFile() as log:
        try:
            passed = (write_fd,) if lifeline is None else (write_fd, lifeline)
            child = subprocess.Popen(args, pass_fds=passed, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=log, close_fds=True)
        finally:
            os.close(write_fd)
        try:
            message = fileio.read_line(read_fd, READY_TIMEOUT)
        except BaseException:
            message = ""
            raise
        finally:
            if message != "ready":  # (a child that mounted late, or hangs, goes too)
                if os.path.ismount(target):
                    unmount(target)
                child.kill()
        if message != "ready":
            log.seek(0)
            said = [line for line in log.read(64 << 10).decode("utf-8", "replace")
                    .splitlines() if line.strip() and not line.startswith(" ")]
            raise DsvError(message or (said[-1] if said else
                                       f"the mount of {pinned} at {directory} did not start"))


def _resolved(directory: str | os.PathLike[str]) -> Path:
    try:
        return Path(directory).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise InvalidInput(f"{directory} cannot be resolved: {exc}") from None


def end_with(lifeline: int, directory: str | os.PathLike[str]) -> None:
    """Unmount `directory` (lazily: files still open there go on reading) once the pipe
    whose read end is `lifeline` has no writer left, from a daemon thread. `dsv run
    --lazy` holds the write end and hands it to its job, so its mounts outlive neither
    both: not even when dsv itself is killed with SIGKILL, and no cleanup code runs."""
    def watch() -> None:
        poller = select.poll()
        poller.register(lifeline, select.POLLIN | select.POLLHUP)
        while True:
            poller.poll()
            try:
                if not os.read(lifeline, 4096):
                    break
            except OSError:
                break
        target = str(Path(directory).absolute())
        tools = [tool for tool in (["fusermount3", "-u", "-z"], ["fusermount", "-u", "-z"],
                                   ["umount", "-l"]) if shutil.which(tool[0]) is not None]
        deadline = time.monotonic() + READY_TIMEOUT  # (the mount may not be made yet)
        while time.monotonic() < deadline:
            for tool in tools:
                if subprocess.run(tool + [target], capture_output=True).returncode == 0:
                    return
            time.sleep(0.2)

    threading.Thread(target=watch, name="dsv-mount-lifeline", daemon=True).start()


def unmount(directory: str | os.PathLike[str]) -> None:
    """Unmount a `dsv mount` (fusermount3, fusermount, or umount)."""
    target = str(_resolved(directory))
    if not os.path.ismount(target):
        raise InvalidInput(f"{directory} is not mounted")
    why = "no fusermount3, fusermount or umount here"
    for tool in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        if shutil.which(tool[0]) is not None:
            done = subprocess.run(tool + [target], capture_output=True, text=True)
            if done.returncode == 0:
                return
            why = done.stderr.strip() or f"{tool[0]} failed"
    raise DsvError(f"could not unmount {directory}: {why}",
                   hint="is a process still using it? (`fuser -m DIR` names it)")


