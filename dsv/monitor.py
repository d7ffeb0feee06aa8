"""The file-change monitor of a dataset's directory (`dsv monitor`), as git's fsmonitor:
a background process that watches every directory under the dataset's root with Linux
inotify and tells a commit which paths changed since a token, so that a commit of a
directory of 200,000 files looks at the few that changed instead of lstat'ing them all.

The process (`python -m dsv.monitor`, started by `start`) and its client (`changes`)
meet on an abstract unix socket whose random name, with the process's pid, is in
`.dsv/monitor/<dataset id>/address`; the client speaks only to a peer of its own uid
and that pid. A token is `<epoch>.<sequence>`: the epoch is random for each process,
the sequence counts the events it has taken in. An answer is exact only when the
process has taken in every event that happened before the question: it creates a
cookie file in a directory it watches and answers once the cookie's own event comes
out of the same inotify queue (FIFO), behind every change made before it.

An answer is "everything may have changed" (None from `changes`) whenever the monitor
cannot vouch: another epoch, an inotify queue overflow, a directory moved (its watches'
paths go stale), a `.dsvignore` changed, more than MAX_CHANGED paths, the root itself
touched, or any doubt about the process or its answer. The caller then walks.

What inotify does not see, the monitor cannot report: writes through a shared mmap,
changes made through a hard link that lives outside the dataset's directory, and
changes on a network file system made by another machine. Knows nothing of the index.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import fileio, ignore
from .errors import DsvError
from .hashing import hash_bytes
from .jsonio import load_bounded
from .paths import check_relpath, is_reserved, module_argv
from .errors import UnsafePath

if TYPE_CHECKING:
    import subprocess

MONITOR_DIR = "monitor"
"""Under `.dsv/`: one directory per monitored dataset (its id)."""

MAX_CHANGED = 100_000
"""Paths a monitor remembers, and hands over in one answer; beyond them it vouches for
nothing older (the caller walks, as without a monitor)."""

MOST_LOOKED_AT = 20_000
"""Changed paths a monitor may report for a command to look at them alone; past them it
walks the whole directory (as fast, and a commit's walk lets the stat cache vouch for
whole runs again)."""

MAX_ANSWER = 64 << 20
"""Bytes of an answer a client reads."""

ASK_TIMEOUT = 10.0
"""Seconds a client waits for an answer before it walks instead."""

READY_TIMEOUT = 120.0
"""Seconds `start` waits for the process to watch every directory."""

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT = 0x400, 0x800, 0x2000
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ISDIR = \
    0x01000000, 0x02000000, 0x04000000, 0x40000000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
           | IN_EXCL_UNLINK)
_EVENT = struct.Struct("iIII")


class MonitorError(DsvError):
    """The monitor cannot be started, stopped or used as asked."""


@dataclass
class Answer:
    """What changed since a token: the new token, and the root-relative paths that may
    have changed since the old one (None: anything may have)."""

    token: str
    changed: list[str] | None


def monitor_dir(dsv_dir: Path, ds_id: str) -> Path:
    """Where the monitor of dataset `ds_id` keeps its address, token and cookies."""
    return dsv_dir / MONITOR_DIR / ds_id


def context(root: Path, excluded: list[str]) -> str:
    """What a token is good for besides the files: the directory (its path and its inode:
    a directory put in its place is another one) and the nested datasets' directories a
    walk leaves out (made or removed with no event in the directory). "" when the
    directory is gone: no token is saved for it, nor read."""
    try:
        st = os.stat(root)
    except OSError:
        return ""
    return hash_bytes(json.dumps([str(root), st.st_dev, st.st_ino, sorted(excluded)],
                                 ensure_ascii=True).encode())


def saved_token(dsv_dir: Path, ds_id: str, now: str) -> str | None:
    """The token the dataset's directory is vouched for as of (see `save_token`), if it
    was saved for the same `context` as `now`."""
    try:
        raw = fileio.read_regular(monitor_dir(dsv_dir, ds_id) / "token", 512)
    except (OSError, DsvError):
        return None
    token, _, rest = raw.decode("ascii", "replace").partition("\n")
    return token if now and _parse_token(token) is not None and rest.strip() == now else None


def save_token(dsv_dir: Path, ds_id: str, token: str | None, now: str = "") -> None:
    """Record that every file of the dataset's directory the monitor has not reported
    since `token` holds what the head names, for the `context` `now` (None: forget any
    token). A caller saves only a token it asked for before it looked at any file, once
    what vouches for it (the commit, a clean status) is done."""
    path = monitor_dir(dsv_dir, ds_id) / "token"
    if token is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    if path.parent.is_dir():
        fileio.atomic_write_bytes(path, f"{token}\n{now}\n".encode("ascii"))


def _parse_token(token: str) -> tuple[str, int] | None:
    epoch, _, seq = token.partition(".")
    if len(epoch) != 32 or not all(c in "0123456789abcdef" for c in epoch) or \
            not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        return None
    return epoch, int(seq)


# ---- the client ------------------------------------------------------------------------

def _address(dsv_dir: Path, ds_id: str) -> tuple[bytes, int] | None:
    try:
        raw = fileio.read_regular(monitor_dir(dsv_dir, ds_id) / "address", 4096)
        info = load_bounded(raw, 4096)
        name, pid = info["socket"], info["pid"]
    except (OSError, DsvError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or not name.startswith("dsv-monitor-") or len(name) > 80 \
            or type(pid) is not int or pid <= 0:
        return None
    return b"\0" + name.encode("ascii", "replace"), pid


def _request(dsv_dir: Path, ds_id: str, line: str, timeout: float = ASK_TIMEOUT) -> bytes | None:
    """Send `line` to the dataset's monitor and return its answer (None: no monitor, or
    one that is not this user's process, or that did not answer in time)."""
    where = _address(dsv_dir, ds_id)
    if where is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    name, pid = where
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(name)
            peer_pid, peer_uid, _gid = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if peer_uid != os.getuid() or peer_pid != pid:
                return None
            sock.sendall(line.encode("ascii") + b"\n")
            got = bytearray()
            while len(got) <= MAX_ANSWER:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                piece = sock.recv(1 << 20)
                if not piece:
                    break
                got += piece
            if len(got) > MAX_ANSWER or not got.endswith(b"\n"):
                return None
            return bytes(got)
    except (OSError, ValueError):
        return None


def is_running(dsv_dir: Path, ds_id: str) -> bool:
    """Whether a monitor of the dataset may run (its address is there): one `stat`, what
    a command without a monitor pays."""
    return (monitor_dir(dsv_dir, ds_id) / "address").exists()


def changes(dsv_dir: Path, ds_id: str, since: str | None, root: Path) -> Answer | None:
    """Ask the dataset's monitor what changed under `root` since `since`: None when no
    monitor of this user watching `root` answers (the caller walks, and saves no token);
    else the new token, with the changed paths when the monitor vouches for the rest."""
    raw = _request(dsv_dir, ds_id, f"since {since or '-'}")
    if raw is None:
        return None
    try:
        got = load_bounded(raw, MAX_ANSWER, max_depth=3)
        token, changed, watched, inode = got["token"], got.get("changed"), got["root"], \
            got["inode"]
        st = os.stat(root)
    except (ValueError, KeyError, TypeError, OSError):
        return None
    # (the directory it watches, by path and by inode: one moved away and another put in
    # its place gives the watched one no event)
    if not isinstance(token, str) or _parse_token(token) is None or watched != str(root) or \
            inode != [st.st_dev, st.st_ino]:
        return None
    if since is None or changed is None:
        return Answer(token, None)
    if not isinstance(changed, list) or len(changed) > MAX_CHANGED or \
            not all(isinstance(p, str) and _plausible(p) for p in changed):
        return Answer(token, None)
    return Answer(token, changed)


def to_look_at(answer: Answer | None) -> list[str] | None:
    """The paths an answer reports changed, as a command looks at them (sorted, none under
    another), or None when it should walk instead: no answer or one that vouches for
    nothing, too many paths, or one that no walk would give (checked like any input)."""
    if answer is None or answer.changed is None or len(answer.changed) > MOST_LOOKED_AT:
        return None
    try:
        chosen = sorted({check_relpath(p) for p in answer.changed})
    except UnsafePath:
        return None
    kept: list[str] = []
    for p in chosen:
        if not (kept and p.startswith(kept[-1] + "/")):
            kept.append(p)
    return kept


def _plausible(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and "\0" not in rel and all(p not in ("", ".", "..") for p in parts)


# ---- starting and stopping ---------------------------------------------------------------

def running(dsv_dir: Path, ds_id: str) -> dict[str, object] | None:
    """What the dataset's monitor says of itself (pid, root, watches, since), or None when
    none of this user answers."""
    raw = _request(dsv_dir, ds_id, "info", timeout=5.0)
    if raw is None:
        return None
    try:
        info = load_bounded(raw, 1 << 16)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def start(dsv_dir: Path, ds_id: str, root: Path) -> dict[str, object]:
    """Start the monitor of the dataset whose directory is `root`, and return its `info`
    once it watches every directory there (MonitorError when it cannot)."""
    if not sys.platform.startswith("linux"):
        raise MonitorError("the file-change monitor needs Linux (inotify)")
    now = running(dsv_dir, ds_id)
    if now is not None:
        if now.get("root") == str(root):
            return now
        stop(dsv_dir, ds_id)
    _refuse_unwatchable(root)
    here = monitor_dir(dsv_dir, ds_id)
    (here / "cookies").mkdir(parents=True, exist_ok=True)
    save_token(dsv_dir, ds_id, None)
    read_fd, write_fd = os.pipe()
    try:
        # (through a process that starts it and ends at once: the monitor is nobody's
        # child, and no zombie of it stays in a long-lived caller when it ends)
        _spawn(["--spawn", str(dsv_dir), ds_id, str(root), str(write_fd)], write_fd).wait()
    finally:
        os.close(write_fd)
    said = fileio.read_line(read_fd, READY_TIMEOUT)
    if said != "ready":
        raise MonitorError(said or f"the monitor of {root} did not start")
    info = running(dsv_dir, ds_id)
    if info is None:
        raise MonitorError(f"the monitor of {root} started but does not answer")
    return info


WATCHABLE = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs",
             "jfs", "reiserfs", "overlay", "ramfs"}
"""File systems whose every change on this machine inotify reports, with names compared
exactly. Not network file systems (another machine's changes make no event here), FUSE
(its daemon's), nor those that fold case (an event's name can differ from the one a walk
gives)."""

_FS_IOC_GETFLAGS, _FS_CASEFOLD_FL = 0x80086601, 0x40000000


def _refuse_unwatchable(root: Path) -> None:
    """MonitorError unless `root` lies on a file system in WATCHABLE and does not fold
    case (ext4 and f2fs may, per directory: `chattr +F`)."""
    kind = _fs_type(root)
    if kind not in WATCHABLE:
        raise MonitorError(f"{root} is on a {kind or 'unknown'} file system, whose changes "
                           f"inotify cannot be trusted to report")
    for point, fs in sorted(_mount_points_under(str(root))):
        if fs not in WATCHABLE:
            raise MonitorError(f"{point} inside it is a {fs} file system, whose changes "
                               f"inotify cannot be trusted to report")
    import fcntl
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise MonitorError(f"{root} cannot be opened: {exc.strerror}") from None
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 8))[0]
    except OSError:
        flags = 0  # (a file system without these flags folds no case)
    finally:
        os.close(fd)
    if flags & _FS_CASEFOLD_FL:
        raise MonitorError(f"{root} folds the case of names (chattr +F)")


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount this process sees."""
    try:
        lines = fileio.read_regular("/proc/self/mountinfo", 16 << 20).decode(
            "utf-8", "replace").splitlines()
    except (OSError, DsvError):
        return []
    out = []
    for line in lines:
        fields = line.split(" ")
        if "-" in fields and len(fields) >= 5 and fields.index("-") + 1 < len(fields):
            out.append((fields[4].replace("\\040", " "), fields[fields.index("-") + 1]))
    return out


def _fs_type(path: Path) -> str:
    """The type of the file system `path` lies on ("" if unknown): that of the longest
    mount point that holds it."""
    best, kind = -1, ""
    target = str(path)
    for point, fs in _mounts():
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fs
    return kind


def _mount_points_under(root: str) -> set[tuple[str, str]]:
    """The mounts at or under `root` (a walk crosses into them; inotify does not)."""
    return {(point, fs) for point, fs in _mounts()
            if point == root or point.startswith(root.rstrip("/") + "/")}


def stop(dsv_dir: Path, ds_id: str) -> bool:
    """Stop the dataset's monitor; False when none was running. Its token goes too, and
    so does its address: a process that did not answer ends by itself once it sees that
    its address is gone."""
    save_token(dsv_dir, ds_id, None)
    answered = _request(dsv_dir, ds_id, "stop", timeout=5.0) is not None
    try:
        os.unlink(monitor_dir(dsv_dir, ds_id) / "address")
    except FileNotFoundError:
        pass
    return answered


def _spawn(args: list[str], ready_fd: int) -> subprocess.Popen[bytes]:
    import subprocess
    return subprocess.Popen([*module_argv("dsv.monitor"), *args], pass_fds=(ready_fd,),
                            start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True, cwd="/")


# ---- the process -----------------------------------------------------------------------

class _Inotify:
    """An inotify instance, through libc."""

    def __init__(self) -> None:
        import ctypes  # (only the monitor process pays for it)
        self.get_errno = ctypes.get_errno
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.inotify_init1.argtypes = [ctypes.c_int]
        self.libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                                ctypes.c_uint32]
        self.libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(self.get_errno(), "inotify_init1")
        self.fd = fd

    def add(self, path: str, mask: int = WATCHED) -> int:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = self.get_errno()
            raise OSError(code, os.strerror(code), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        self.libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        """The events waiting: (wd, mask, name)."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return events
            at = 0
            while at + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, at)
                at += _EVENT.size
                name = os.fsdecode(buf[at:at + length].rstrip(b"\0"))
                at += length
                events.append((wd, mask, name))


class _Monitor:
    """The state of the monitor process: its watches, and what changed when."""

    def __init__(self, dsv_dir: Path, ds_id: str, root: Path) -> None:
        self.root = str(root)
        st = os.stat(self.root)
        self.inode = [st.st_dev, st.st_ino]
        self.here = monitor_dir(dsv_dir, ds_id)
        self.cookies = str(self.here / "cookies")
        self.epoch = os.urandom(16).hex()
        self.seq = 0
        self.floor = 0          # tokens below this vouch for nothing (`vouch_from_now`)
        self.changed: dict[str, int] = {}
        self.paths: dict[int, str] = {}   # watch -> root-relative directory ("" = root)
        self.blind: set[str] = set()      # directories it could not watch (no permission)
        self.linked = False     # a regular file with other hard links was seen
        self.cookie_no = 0
        self.started = time.time()
        self.done = False
        self.was_reset = False  # (waiting clients are then answered at once)
        self.mounts = _mount_points_under(self.root)
        self.inotify = _Inotify()
        self.cookie_wd = self._watch_cookies()
        self.watch_tree()

    def _watch_cookies(self) -> int:
        return self.inotify.add(self.cookies, IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF |
                                IN_ONLYDIR | IN_DONT_FOLLOW)

    def watch_tree(self, rel: str = "") -> None:
        """Watch `rel` and every directory under it (never through a link; never a
        store's `.dsv`), and look at each file's link count."""
        todo = [rel]
        while todo:
            here = todo.pop()
            path = os.path.join(self.root, here) if here else self.root
            try:
                wd = self.inotify.add(path)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # (gone, or replaced by a file or a link: its event says so)
                if exc.errno == errno.EACCES:
                    self.blind.add(here)  # (vouches for nothing until it can watch it)
                    continue
                if exc.errno == errno.ENOSPC:
                    raise MonitorError(
                        "the system's limit of inotify watches is reached "
                        "(/proc/sys/fs/inotify/max_user_watches)") from None
                raise
            self.paths[wd] = here
            self.blind.discard(here)
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        if is_reserved(entry.name):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            todo.append(f"{here}/{entry.name}" if here else entry.name)
                        elif not self.linked and entry.is_file(follow_symlinks=False):
                            self.linked = entry.stat(follow_symlinks=False).st_nlink > 1
            except OSError as exc:
                if exc.errno == errno.EACCES:
                    self.blind.add(here)
                elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise

    def reset(self) -> None:
        """Watch the tree again from a new inotify instance (the old one's queue, and any
        cookie in it, is dropped): no token given before vouches."""
        os.close(self.inotify.fd)
        self.inotify = _Inotify()
        self.cookie_wd = self._watch_cookies()
        self.paths.clear()
        self.blind.clear()
        self.vouch_from_now()
        self.was_reset = True
        self.watch_tree()

    def vouch_from_now(self) -> None:
        """No token given out so far vouches for anything; the next one does (a walk
        that starts after it sees everything since)."""
        self.changed.clear()
        self.seq += 1
        self.floor = self.seq

    def note(self, rel: str) -> None:
        self.seq += 1
        self.changed[rel] = self.seq
        if len(self.changed) > MAX_CHANGED:
            self.vouch_from_now()

    def take(self, events: list[tuple[int, int, str]], waiting: set[str]) -> None:
        """Take in events; the names of cookies seen are removed from `waiting`."""
        for wd, mask, name in events:
            if self.done:
                return
            if mask & IN_Q_OVERFLOW:
                self.reset()
                return
            if wd == self.cookie_wd:
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    self.done = True  # (the store went)
                waiting.discard(name)
                continue
            if mask & IN_IGNORED:
                self.paths.pop(wd, None)
                continue
            where = self.paths.get(wd)
            if where is None:
                continue
            if mask & IN_UNMOUNT:
                self.reset()  # (a file system under the root went)
                return  # (the rest of the batch came from the old instance: covered)
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                if where == "":
                    self.done = True  # the root itself went
                continue  # (a subdirectory: its parent's event names it)
            if not name:
                continue  # (a directory's own attributes: no part of what a version holds)
            rel = f"{where}/{name}" if where else name
            if name == ignore.IGNORE_FILE or is_reserved(name):
                # (what a walk leaves out changed: a `.dsvignore`, or a `.dsv` that makes
                # its directory another store's)
                self.vouch_from_now()
                continue
            if not mask & IN_ISDIR and self._changes_other_names(rel, mask):
                self.vouch_from_now()
                continue
            if mask & IN_ISDIR:
                if mask & IN_MOVED_FROM:
                    self.reset()  # (the watches under it now have stale paths)
                    return
                if mask & (IN_CREATE | IN_MOVED_TO) or rel in self.blind:
                    self.watch_tree(rel)
            self.note(rel)

    def _changes_other_names(self, rel: str, mask: int) -> bool:
        """Whether a file event may have changed files no event names: the file has
        other hard links (inotify names only the link a change went through), or, once
        such a file was seen, the file is gone before its link count could be read."""
        if not mask & (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_CREATE | IN_MOVED_TO):
            return False
        try:
            st = os.lstat(os.path.join(self.root, rel))
        except OSError:
            return self.linked
        if (st.st_mode & 0o170000) == 0o100000 and st.st_nlink > 1:
            self.linked = True
            return True
        return False

    def answer(self, request: str) -> bytes:
        token = f"{self.epoch}.{self.seq}"
        if request == "info":
            return json.dumps({"pid": os.getpid(), "root": self.root,
                               "watches": len(self.paths), "started": self.started,
                               "token": token}).encode() + b"\n"
        since = _parse_token(request[len("since "):])
        foreign = any(fs not in WATCHABLE for _point, fs in self.mounts)
        if since is None or since[0] != self.epoch or since[1] < self.floor or self.blind or \
                foreign:
            return json.dumps({"token": token, "root": self.root,
                               "inode": self.inode}).encode() + b"\n"
        changed = sorted(rel for rel, seq in self.changed.items() if seq > since[1])
        return json.dumps({"token": token, "root": self.root, "inode": self.inode,
                           "changed": changed}).encode() + b"\n"

    def cookie(self) -> str:
        """Create and remove a cookie file; its event comes after every earlier change."""
        self.cookie_no += 1
        name = f"{self.epoch}-{self.cookie_no}"
        path = os.path.join(self.cookies, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.unlink(path)
        return name

    def still_mine(self) -> bool:
        """Whether `address` still names this process (`stop` removes it; a later
        `start` replaces it)."""
        try:
            address = json.loads(fileio.read_regular(self.here / "address", 4096))
            return bool(address.get("pid") == os.getpid())
        except (OSError, DsvError, ValueError, AttributeError):
            return False


MAX_WAITING = 64
"""Clients a monitor process keeps waiting for their cookies at once."""


def serve(dsv_dir: Path, ds_id: str, root: Path, ready_fd: int) -> None:
    """The monitor process: watch, answer, until told to stop, its address goes or the
    root goes. What ends it unexpectedly is written to `error` in its directory (clients
    walk meanwhile)."""
    os.chdir("/")  # (no directory of the caller stays busy)
    try:
        state = _Monitor(dsv_dir, ds_id, root)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        name = f"dsv-monitor-{os.urandom(16).hex()}"
        listener.bind(b"\0" + name.encode())
        listener.listen(16)
        listener.setblocking(False)
        fileio.atomic_write_bytes(state.here / "address", json.dumps(
            {"socket": name, "pid": os.getpid()}).encode() + b"\n", mode=0o600)
    except (OSError, DsvError) as exc:
        fileio.tell(ready_fd, f"cannot watch {root}: {exc}")
        return
    fileio.tell(ready_fd, "ready")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: setattr(state, "done", True))
    try:
        _loop(state, listener)
    except Exception:  # (a bug in dsv: say it where `monitor status` users can find it)
        import traceback
        fileio.atomic_write_bytes(state.here / "error", traceback.format_exc().encode())
        raise
    finally:
        listener.close()
        if state.still_mine():
            os.unlink(state.here / "address")


def _loop(state: _Monitor, listener: socket.socket) -> None:
    """Take in events and answer clients until told to stop, or the root goes."""
    try:
        mounts = open("/proc/self/mountinfo", "rb")  # (POLLPRI when the mounts change)
    except OSError:
        mounts = None
    pending: list[tuple[socket.socket, str, str]] = []   # (client, request, cookie)
    waiting: set[str] = set()
    checked = time.monotonic()
    while not state.done:
        poller = select.poll()
        poller.register(state.inotify.fd, select.POLLIN)
        poller.register(listener.fileno(), select.POLLIN)
        if mounts is not None:
            poller.register(mounts.fileno(), select.POLLPRI | select.POLLERR)
        ready = poller.poll(1000 if not pending else 50)
        if mounts is not None and any(fd == mounts.fileno() for fd, _ev in ready):
            now = _mount_points_under(state.root)
            if now != state.mounts:  # (a file system mounted or unmounted under the root)
                state.mounts = now
                state.reset()
        state.take(state.inotify.read(), waiting)
        if time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            state.done = state.done or not state.still_mine()
        if state.done:
            break
        if state.was_reset:  # (their cookies went with the old queue: vouch for nothing)
            state.was_reset = False
            waiting.clear()
            for waiter in pending:
                _reply(waiter[0], state.answer("since -"))
            pending.clear()
        for client, request, cookie in [p for p in pending if p[2] not in waiting]:
            pending.remove((client, request, cookie))
            _reply(client, state.answer(request))
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # (out of descriptors, for one: the next round tries again)
            asked = _read_request(client) if _same_user(client) else None
            if asked is None:
                client.close()
            elif asked == "stop":
                _reply(client, b"stopping\n")
                state.done = True
            elif asked == "info":
                _reply(client, state.answer(asked))
            elif len(pending) >= MAX_WAITING:
                _reply(client, state.answer("since -"))
            else:
                cookie = state.cookie()
                waiting.add(cookie)
                pending.append((client, asked, cookie))
    for waiter in pending:
        waiter[0].close()
    if mounts is not None:
        mounts.close()


def _same_user(client: socket.socket) -> bool:
    _pid, uid, _gid = struct.unpack(
        "3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return bool(uid == os.getuid())


def _read_request(client: socket.socket) -> str | None:
    """A client's one line (bounded, within a second), if it is one this process takes."""
    client.settimeout(1.0)
    got = b""
    try:
        while not got.endswith(b"\n") and len(got) < 256:
            piece = client.recv(256)
            if not piece:
                break
            got += piece
    except OSError:
        return None
    line = got.decode("ascii", "replace").strip()
    return line if line in ("info", "stop") or line.startswith("since ") else None


def _reply(client: socket.socket, data: bytes) -> None:
    try:
        client.settimeout(5.0)
        client.sendall(data)
    except OSError:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    _args = sys.argv[1:]
    if _args[:1] == ["--spawn"] and len(_args) == 5:
        _spawn(_args[1:], int(_args[4]))
    elif len(_args) == 4:
        serve(Path(_args[0]), _args[1], Path(_args[2]), int(_args[3]))
    else:
        raise SystemExit("usage: python -m dsv.monitor DSV_DIR DATASET_ID ROOT READY_FD")
