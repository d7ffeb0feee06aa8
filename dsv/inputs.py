"""Input trees of `dsv run`: a version's files made once under `.dsv/inputs/<version>/`,
bound read-only into jobs, and the stamps that decide whether a tree may be reused.

Owns building a tree (placed and verified), sealing it read-only, stamping what was
placed (inode, size, ctime, mode per file: ctime moves on every change and no user
process can set it), checking a stamp before reuse (re-hashing only what changed, and
rebuilding what it cannot vouch for), and removing trees of versions that are gone.
Must never follow a link inside `.dsv/inputs/` that it did not make.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fileio, worktree
from .checkout import check_room, entries_at
from .core import Core
from .errors import InvalidInput
from .hashing import LARGE_READ, new_hasher
from .jsonio import load_bounded
from .model import Version
from .objects import RACY_NS
from .paths import STORE_DIR, ancestors
from .tree import FILE, LINK

INPUTS_DIR = "inputs"
STAMP_SUFFIX = ".stamp"       # `.dsv/inputs/<version>.stamp`, beside (not in) the tree
STAMP_FORMAT = 1
_BUILDING = ".building-"      # `<version>.building-…`: half-built or discarded trees
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_BUILD_ATTEMPTS = 3
_MAX_STAMP_BYTES = 1 << 30
_READ_CHUNK = 8 << 20
_PROC_FD = os.path.isdir("/proc/self/fd")
_NUMBER_COLUMNS = ("inodes", "sizes", "ctimes_ns", "modes")  # of a stamp, after "kinds"

Record = tuple[str, int, int, int, int]
"""What a stamp holds of one file or link: (kind, inode, size, ctime_ns, permission bits).

ctime, not mtime: no user process can set it. Every write, chmod, utime, rename or
link-count change moves it, so a record that still matches means nothing was done to the
file since it was placed and verified.
"""


# ---- input trees ---------------------------------------------------------------------

@dataclass
class InputTree:
    """A version's input tree, checked against its stamp and held open by a descriptor
    that followed no link, until the job that binds it has ended."""

    version: Version
    path: Path                      # `.dsv/inputs/<version>`
    fd: int                         # the tree's directory itself
    records: dict[str, Record]      # every file and link as checked

    @property
    def identity(self) -> str:
        """`device:inode` of the tree's directory, as `stat -c %d:%i` prints it."""
        return identity(os.fstat(self.fd))

    def changed_paths(self, core: Core) -> list[str]:
        """Paths done anything to since the check. A file whose only change is its ctime
        (a shared copy gained or lost a hard link) is re-hashed and passes if intact."""
        try:
            files, dirs, odd = _scan(self.fd)
        except (_Changed, OSError):
            return ["the tree itself"]
        changed = sorted((files.keys() ^ self.records.keys()) | set(odd)
                         | (dirs ^ ancestors(self.records)))
        suspects = [p for p in files.keys() & self.records.keys()
                    if files[p] != self.records[p]]
        alike = {rel for rel in suspects if _same_but_ctime(files[rel], self.records[rel])}
        entries = entries_at(core, self.version, sorted(alike))
        for rel in sorted(suspects):
            if rel in alike:
                entry = entries.get(rel)
                hashed = _hash_at(self.fd, rel)
                if entry is not None and hashed is not None and hashed[0] == entry.oid:
                    continue
            changed.append(rel)
        return changed

    def close(self) -> None:
        """Let go of the tree's directory descriptor (the job has ended)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "InputTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def input_tree(core: Core, version: Version) -> InputTree:
    """`.dsv/inputs/<version>/`: the files of a committed version, for binding read-only.

    Made once per version, then reused: later runs cost one lstat per file and one bind
    mount. Large files stored whole are hard links to the store's loose objects
    themselves, each verified before it is linked (no copy: a 150 MB file costs no
    space); small ones, and files stored in chunks (put together from them, and checked
    against their whole hash), are written from their packs (then 0444/0555),
    directories 0555. The job sees the tree
    only through a read-only bind mount, and `.dsv/objects/` and `.dsv/inputs/` are
    mounted read-only in its namespace too (jobs.run), so no write of the job's can reach
    an object. `<version>.stamp` beside the tree records every file's (kind, inode, size,
    ctime, mode). A tree whose files all still match is reused as it is; a file whose
    ctime alone moved is re-hashed; anything else (a changed byte, a planted link or
    file, a missing file, an unreadable stamp) makes the tree be rebuilt, never bound.

    The returned tree holds a shared lock on its directory until it is closed (the job
    has ended): `dsv gc` never removes a tree in use. The stamp's mtime is its last use.
    """
    with core.locked("run: placing inputs"):
        base, base_fd = _open_inputs_dir(core)
        try:
            found = _reuse(core, version, base_fd)
            if found is None:
                found = _build(core, version, base, base_fd)
            fcntl.flock(found[0], fcntl.LOCK_SH)  # before the store lock goes: gc waits
            os.utime(version.id + STAMP_SUFFIX, dir_fd=base_fd, follow_symlinks=False)
        finally:
            os.close(base_fd)
    fd, records = found
    return InputTree(version, base / version.id, fd, records)


INPUTS_KEEP = 7 * 86400.0
"""How long `dsv gc` keeps an input tree no job has used (`--inputs-older-than`)."""


def remove_unused_inputs(core: Core, older_than: float = INPUTS_KEEP,
                         dry_run: bool = False) -> tuple[int, int]:
    """Drop input trees (and stamps) of versions that no longer exist, trees no job has
    used for `older_than` seconds, and half-built or discarded trees; a tree a running
    job holds is kept. Returns (trees removed, bytes freed): a file that is a link to an
    object frees nothing while the object is stored. With `dry_run`, only counts."""
    base = core.dsv_dir / INPUTS_DIR
    try:
        base_fd = os.open(base, _DIR_FLAGS)
    except OSError:
        return 0, 0
    removed = freed = 0
    cutoff = time.time() - older_than
    try:
        names = os.listdir(base_fd)
        for name in names:
            if name.endswith(STAMP_SUFFIX):
                if name[: -len(STAMP_SUFFIX)] not in names and not dry_run:
                    _remove_quietly(base_fd, name)  # a stamp without its tree
                continue
            vid, _, building = name.partition(_BUILDING)
            if not building and core.index.version(vid) is not None and \
                    _last_used(base_fd, name) >= cutoff:
                continue
            try:
                held = os.open(name, _DIR_FLAGS, dir_fd=base_fd)
            except OSError:
                if not dry_run:
                    _remove_quietly(base_fd, name)  # a file or link in a tree's place
                continue
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(held)
                continue  # a running job holds it
            try:
                size = _tree_bytes(held)
                if not dry_run:
                    _remove_quietly(base_fd, name)
                    _remove_quietly(base_fd, name + STAMP_SUFFIX)
            finally:
                os.close(held)
            removed += 1
            freed += size
    finally:
        os.close(base_fd)
    return removed, freed


def _last_used(base_fd: int, name: str) -> float:
    """When a job last used tree `name`: its stamp's mtime (0 without a stamp)."""
    try:
        return os.stat(name + STAMP_SUFFIX, dir_fd=base_fd, follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _tree_bytes(fd: int) -> int:
    """Bytes removing the tree open as `fd` frees: files no other name links."""
    total = 0

    def visit(_rel: str, _fd: int, entries: fileio.DirEntries) -> None:
        nonlocal total
        total += sum(st.st_size for _name, st in entries
                     if stat.S_ISREG(st.st_mode) and st.st_nlink == 1)

    try:
        fileio.walk_dirs(fd, visit)
    except (OSError, _Changed):
        pass
    return total


def _open_inputs_dir(core: Core) -> tuple[Path, int]:
    """`.dsv/inputs/` and a descriptor of it; a link or file in its place is removed."""
    base = core.dsv_dir / INPUTS_DIR
    for _ in range(3):
        try:
            return base, os.open(base, _DIR_FLAGS)
        except FileNotFoundError:
            try:
                os.mkdir(base, 0o755)
            except FileExistsError:
                pass
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(base)  # a link (never followed) or a file where the directory belongs
    return base, os.open(base, _DIR_FLAGS)


def _reuse(core: Core, version: Version, base_fd: int) -> tuple[int, dict[str, Record]] | None:
    """The existing tree's descriptor and records, if its stamp vouches for all of it."""
    try:
        fd = os.open(version.id, _DIR_FLAGS, dir_fd=base_fd)
    except OSError:
        return None  # absent, or a link or file where the tree belongs: rebuilt
    try:
        files, dirs, odd = _scan(fd)
        # The stamp is untrusted input: bounded by what it could legitimately hold.
        stamp = _read_stamp(base_fd, version, _stamp_limit(files))
        if stamp is None or odd:
            raise _Changed
        stamped, expected = stamp
        if files.keys() != expected.keys() or dirs != ancestors(expected):
            raise _Changed
        trusted_before = stamped - RACY_NS
        suspects = [p for p, rec in files.items()
                    if rec != expected[p] or rec[3] >= trusted_before]
        if suspects:
            files = _rehash(core, version, base_fd, fd, files, expected, suspects)
        return fd, files
    except (_Changed, OSError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


def _rehash(core: Core, version: Version, base_fd: int, tree_fd: int,
            files: dict[str, Record], expected: dict[str, Record],
            suspects: list[str]) -> dict[str, Record]:
    """Re-verify files whose ctime alone moved (a shared copy's link count changes when
    any other tree or checkout links it); raises _Changed for anything else."""
    if not all(_same_but_ctime(files[p], expected[p]) for p in suspects):
        raise _Changed
    manifest = entries_at(core, version, suspects)
    if any(files[p][3] >= time.time_ns() - RACY_NS for p in suspects):
        time.sleep(RACY_NS / 1e9)  # changed within one timestamp tick: wait it out
    # A file whose ctime is older than this and unchanged across the hash held the hashed
    # bytes all along; any later write moves its ctime.
    stamped = time.time_ns()
    for rel in suspects:
        entry = manifest.get(rel)
        hashed = _hash_at(tree_fd, rel)
        if entry is None or entry.kind != FILE or hashed is None or hashed[0] != entry.oid \
                or hashed[1] != files[rel] or files[rel][3] >= stamped - RACY_NS:
            raise _Changed
    _write_stamp(base_fd, version, stamped, files)
    return files


def _build(core: Core, version: Version, base: Path,
           base_fd: int) -> tuple[int, dict[str, Record]]:
    """Make the tree afresh in `<version>.building-…`, seal it read-only, move it in
    place, and stamp it once every ctime it caused is at least one tick old."""
    manifest = core.manifest(version)
    items = list(manifest.items())
    check_room(core, base, "auto", manifest.items, share_objects=True,
               what=f"the input tree of {version.id}", hint="free some space; nothing was run")
    wanted_dirs = ancestors(manifest)
    stamp = version.id + STAMP_SUFFIX
    for _attempt in range(_BUILD_ATTEMPTS):
        _remove_quietly(base_fd, stamp)
        _discard(base_fd, version.id)
        building = f"{version.id}{_BUILDING}{os.getpid()}-{os.urandom(4).hex()}"
        os.mkdir(building, 0o700, dir_fd=base_fd)
        fd = os.open(building, _DIR_FLAGS, dir_fd=base_fd)
        try:
            # /proc/self/fd/N is the directory just made, whatever is renamed meanwhile.
            worktree.Materializer(core.objects, Path(_fd_path(fd, base / building)),
                                  stat_rows=False, share_objects=True).place(items)
            _seal(fd)
        except BaseException:
            os.close(fd)
            _remove_quietly(base_fd, building)
            raise
        try:
            os.rename(building, version.id, src_dir_fd=base_fd, dst_dir_fd=base_fd)
        except OSError:
            # Something appeared at the tree's name meanwhile: try again.
            os.close(fd)
            _remove_quietly(base_fd, building)
            continue
        os.fchmod(fd, 0o555)
        time.sleep(RACY_NS / 1e9)  # so that a write after the scan cannot share a ctime
        stamped = time.time_ns()
        try:
            files, dirs, odd = _scan(fd)
        except (_Changed, OSError):
            os.close(fd)
            continue
        if not odd and dirs == wanted_dirs and files.keys() == manifest.keys() and \
                all(rec[0] == manifest[p].kind and rec[3] < stamped - RACY_NS
                    for p, rec in files.items()):
            _write_stamp(base_fd, version, stamped, files)
            return fd, files
        os.close(fd)  # someone changed it while it was being made
    raise InvalidInput(f"the input tree of version {version.id} kept changing while it was "
                       f"being made ({_BUILD_ATTEMPTS} attempts)",
                       hint=f"another process is writing into {STORE_DIR}/{INPUTS_DIR}/; "
                            "stop it and run again")


def _discard(base_fd: int, name: str) -> None:
    """Move whatever is at `name` out of the way (a link or file is just unlinked) and
    remove it; what cannot be removed now is left for `dsv gc`."""
    try:
        st = os.lstat(name, dir_fd=base_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=base_fd)
        return
    # Moving a directory needs write permission on it (its `..` changes).
    fd = os.open(name, _DIR_FLAGS, dir_fd=base_fd)
    try:
        os.fchmod(fd, 0o700)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True  # a running job has it bound: out of the way, and gc removes it later
        garbage = f"{name}{_BUILDING}{os.getpid()}-{os.urandom(4).hex()}-old"
        os.rename(name, garbage, src_dir_fd=base_fd, dst_dir_fd=base_fd)
    finally:
        os.close(fd)
    if not held:
        _remove_quietly(base_fd, garbage)


# ---- stamps --------------------------------------------------------------------------

def _stamp_limit(files: dict[str, Record]) -> int:
    """The most bytes a stamp of these files can take (ASCII-escaped paths, five numbers)."""
    return min(_MAX_STAMP_BYTES, 4096 + sum(12 * len(p) + 128 for p in files))


def _read_stamp(base_fd: int, version: Version,
                limit: int) -> tuple[int, dict[str, Record]] | None:
    """(stamped_ns, records) of the version's stamp, or None if it is missing, not a
    regular file, larger than `limit`, or anything but what `_write_stamp` writes."""
    try:
        fd = os.open(version.id + STAMP_SUFFIX, _FILE_FLAGS, dir_fd=base_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        # Never more than `limit`, even if the file grows meanwhile.
        parts: list[bytes] = []
        got = 0
        while got <= limit and (chunk := os.read(fd, min(limit + 1 - got, _READ_CHUNK))):
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        doc = load_bounded(data, limit, max_depth=2)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not _is_int(doc.get("format")) or \
            doc["format"] != STAMP_FORMAT or doc.get("version") != version.id or \
            doc.get("tree") != version.tree or not _is_int(doc.get("stamped_ns")):
        return None
    paths, kinds = doc.get("paths"), doc.get("kinds")
    numbers = [doc.get(column) for column in _NUMBER_COLUMNS]
    if not isinstance(paths, list) or not isinstance(kinds, str) or \
            not set(map(type, paths)) <= {str} or not set(kinds) <= {FILE, LINK} or \
            any(not isinstance(col, list) or len(col) != len(paths) or
                not set(map(type, col)) <= {int} or (col and min(col) < 0) for col in numbers) \
            or len(kinds) != len(paths):
        return None
    records = dict(zip(paths, zip(kinds, *numbers, strict=True), strict=True))
    if len(records) != len(paths):
        return None  # a path named twice
    return doc["stamped_ns"], records


def _write_stamp(base_fd: int, version: Version, stamped: int,
                 records: dict[str, Record]) -> None:
    # Columns, not a list per file: a reuse parses and checks them at C speed.
    doc: dict[str, Any] = {"format": STAMP_FORMAT, "version": version.id,
                           "tree": version.tree, "stamped_ns": stamped,
                           "paths": list(records),
                           "kinds": "".join(r[0] for r in records.values())}
    for i, column in enumerate(_NUMBER_COLUMNS, start=1):
        doc[column] = [r[i] for r in records.values()]
    data = json.dumps(doc, separators=(",", ":")).encode()
    # Written as a new file renamed over the old name: a link there is replaced, never
    # followed.
    fileio.atomic_write_bytes(os.path.join(_fd_path(base_fd), version.id + STAMP_SUFFIX),
                              data)


def _fd_path(fd: int, fallback: str | os.PathLike[str] | None = None) -> str:
    """A path naming exactly the directory open as `fd`, whatever is renamed meanwhile."""
    if _PROC_FD or fallback is None:
        return f"/proc/self/fd/{fd}"
    return os.fspath(fallback)  # pragma: no cover - Linux has /proc


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, which is an int to isinstance


# ---- walking a tree by descriptor ------------------------------------------------------

class _Changed(Exception):
    """An input tree is not what its stamp (or the check before the job) says."""


def identity(st: os.stat_result) -> str:
    """`device:inode` of a directory, as `stat -c %d:%i` prints it (what a mount is checked by)."""
    return f"{st.st_dev}:{st.st_ino}"


def _record(st: os.stat_result, kind: str) -> Record:
    return (kind, st.st_ino, st.st_size, st.st_ctime_ns, stat.S_IMODE(st.st_mode))


def _same_but_ctime(now: Record, then: Record) -> bool:
    """A regular file with the same inode, size and mode (only its ctime may differ)."""
    return now[0] == then[0] == FILE and (now[1], now[2], now[4]) == (then[1], then[2], then[4])


def _scan(root_fd: int) -> tuple[dict[str, Record], set[str], list[str]]:
    """Files and links (path → Record), directories, and anything else (FIFOs, devices)."""
    files: dict[str, Record] = {}
    dirs: set[str] = set()
    odd: list[str] = []

    def visit(rel: str, _fd: int, entries: fileio.DirEntries) -> None:
        prefix = rel + "/" if rel else ""
        for name, st in entries:
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                dirs.add(prefix + name)
            elif stat.S_ISREG(mode):
                files[prefix + name] = _record(st, FILE)
            elif stat.S_ISLNK(mode):
                files[prefix + name] = _record(st, LINK)
            else:
                odd.append(prefix + name)

    fileio.walk_dirs(root_fd, visit)
    return files, dirs, odd


def _seal(root_fd: int) -> None:
    """Make a freshly built tree read-only: files dsv wrote 0444 (0555 if executable),
    directories 0555. Hard-linked shared copies are already 0444 and are left alone; the
    root is sealed by the caller once it has been moved into place."""

    def visit(rel: str, fd: int, entries: fileio.DirEntries) -> None:
        for name, st in entries:
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                file_fd = os.open(name, _FILE_FLAGS, dir_fd=fd)
                try:
                    os.fchmod(file_fd, 0o555 if st.st_mode & 0o100 else 0o444)
                finally:
                    os.close(file_fd)
        if rel:
            os.fchmod(fd, 0o555)

    fileio.walk_dirs(root_fd, visit)


def _remove_quietly(parent_fd: int, name: str) -> None:
    """Remove `name` and all beneath it, following no link; read-only directories are
    made writable first. Best effort: what stays is removed by a later `dsv gc`."""
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(name, dir_fd=parent_fd)  # a file or a link: never followed
            return
        try:
            def visit(_rel: str, dir_fd: int, entries: fileio.DirEntries) -> None:
                os.fchmod(dir_fd, 0o700)
                for child, st in entries:
                    if not stat.S_ISDIR(st.st_mode):
                        os.unlink(child, dir_fd=dir_fd)
                    elif st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
                        _chmod_dir_at(dir_fd, child, 0o700)  # else it cannot be opened

            fileio.walk_dirs(fd, visit, lambda above, child: os.rmdir(child, dir_fd=above))
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent_fd)
    except (OSError, _Changed):
        pass


def _chmod_dir_at(dir_fd: int, name: str, mode: int) -> None:
    """Chmod directory `name` without opening it for reading (its mode may forbid that)
    and without following a link: an O_PATH descriptor, changed through /proc."""
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        os.chmod(_fd_path(fd), mode)
    finally:
        os.close(fd)


def _hash_at(tree_fd: int, rel: str) -> tuple[str, Record] | None:
    """(blake3, Record) of regular file `rel`, opened following no link; None if it is
    not a regular file or changed while it was read."""
    parts = rel.split("/")
    fd = tree_fd
    opened: list[int] = []
    try:
        for part in parts[:-1]:
            fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            opened.append(fd)
        file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    except OSError:
        return None
    finally:
        for d in opened:
            os.close(d)
    try:
        before = os.fstat(file_fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        hasher = new_hasher(threads=before.st_size >= LARGE_READ)
        offset = 0
        while chunk := os.pread(file_fd, _READ_CHUNK, offset):
            hasher.update(chunk)
            offset += len(chunk)
        after = os.fstat(file_fd)
    except OSError:
        return None
    finally:
        os.close(file_fd)
    if after.st_ctime_ns != before.st_ctime_ns or offset != before.st_size:
        return None
    return hasher.hexdigest(), _record(before, FILE)
