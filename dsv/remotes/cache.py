"""The cluster cache: a shared directory of remote packs and loose objects.

Owns the cache's layout (`packs/<pack id>.pack`, `loose/<xx>/<oid>`, `loc/<xx>/<oid>`,
`pending/`, `tmp/`), filling it so that no reader ever sees part of a file (temp file + fsync +
rename; many machines may fill one entry at once and the last rename wins with the same
bytes), recency (a read bumps the file's mtime: that is the LRU clock) and pruning by
age and size. An entry written through by a push is marked pending until the origin
holds it, and prune keeps pending entries; as anyone may plant a marker, only a fresh one
naming an entry a push uploads counts, and pending entries take at most half of a size
budget from the rest (`_honoured_pending`, `prune`). Everything read from a cache is
verified by the caller, so a damaged entry costs a download, never data.

Anyone who can write the cache may plant anything in it, so: every step below the root
is opened without following links (`open_dirs`), every entry is opened as a regular file
only (`fileio.open_regular`: no-follow, non-blocking), and an entry that is anything else
(a FIFO, symlink, socket, directory) is dropped and reported absent, so the caller reads
the origin. Fills create temp files with O_EXCL under random names and rename them into
place (a rename replaces a planted link, it never writes through one); prune and drop
never follow a link and never delete outside the root. Must never touch the store.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from .. import fileio
from ..errors import CorruptObject
from ..hashing import is_hash, new_hasher
from ..objects import PACK_THRESHOLD, pack_table_at
from ..reports import PruneReport
from . import layout
from .base import MAX_GET_BYTES, open_dirs

# A temp file this old belongs to a filler that died; prune removes it.
STALE_TMP_S = 3600.0
PENDING_MAX_AGE_S = 86400.0
"""A pending marker keeps its entry this long after it was made (or last renewed by a
push writing that entry again): a push holds one for the upload of one pack or loose
object, and a marker a killed push left is cleared by the next push to that origin."""
PENDING_SHARE = 0.5
"""With a size budget, pending entries take at most this share of it from the others."""

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PENDING_PACK = re.compile(r"packs-([0-9a-f]{64})\.pack")
_PENDING_LOOSE = re.compile(r"loose-([0-9a-f]{2})-([0-9a-f]{64})")


def _whole_pack(fd: int, size: int, pack_id: str) -> bool:
    """Whether the open file `fd` of `size` bytes is the whole pack `pack_id`: its table
    and trailer (read alone, at most MAX_GET_BYTES) hash to its id and say its length."""
    return pack_table_at(lambda at, n: os.pread(fd, n, at), size, pack_id,
                         MAX_GET_BYTES) is not None


def _not_a_directory(exc: OSError) -> bool:
    """Whether a step failed to open as a directory because it is none (a link, a file, a
    FIFO: something to drop), not because it cannot be opened just now (EACCES, EIO, an
    NFS handle gone stale, out of descriptors): a real directory is never dropped."""
    return isinstance(exc, (NotADirectoryError, fileio.NotRegularFile)) or \
        exc.errno in (errno.ENOTDIR, errno.ELOOP)


# Caches this process could not fill, and so warned of once (by root).
_UNFILLABLE: set[str] = set()
_UNFILLABLE_LOCK = threading.Lock()


class ClusterCache:
    """A cache directory shared by many machines (NFS, Lustre, a PVC)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.tmp = os.path.join(root, "tmp")

    # ---- names -------------------------------------------------------------------
    def pack_path(self, pack_id: str) -> str:
        """Where pack `pack_id` lives in the cache."""
        return os.path.join(self.root, *layout.pack_key(pack_id).split("/"))

    def loose_path(self, oid: str) -> str:
        """Where loose object `oid` lives in the cache."""
        return os.path.join(self.root, *layout.loose_key(oid).split("/"))

    def locator_path(self, oid: str) -> str:
        """Where the locator of tree object or record `oid` lives in the cache (a reader
        with no store keeps there what it read of the origin's `loc/<oid>`)."""
        return os.path.join(self.root, "loc", oid[:2], oid)

    def _parts(self, path: str) -> list[str]:
        """`path`'s components below the root; ValueError for anything not strictly inside
        it (the backstop: no read, fill or delete ever leaves the cache)."""
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        parts = rel.split(os.sep)
        if "\0" in rel or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{path} is not inside the cluster cache {self.root}")
        return parts

    def _pending_name(self, path: str) -> str:
        return "-".join(self._parts(path))

    # ---- reading -----------------------------------------------------------------
    def has(self, path: str) -> bool:
        """Whether the cache holds `path` as a regular file (a FIFO, link or directory
        there does not count: a fill replaces it)."""
        try:
            parts = self._parts(path)
            parent = open_dirs(self.root, parts[:-1])
        except (OSError, ValueError):
            return False
        try:
            return stat.S_ISREG(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            return False
        finally:
            os.close(parent)

    def open_entry(self, path: str) -> int | None:
        """An fd (read-only; the caller closes it) of the cached regular file `path`, its
        use recorded (mtime); None when absent, or when it was not a regular file (then it
        is dropped, so that the next fill replaces it)."""
        try:
            parts = self._parts(path)
        except ValueError:
            return None
        try:
            parent = open_dirs(self.root, parts[:-1])
        except OSError as exc:
            if _not_a_directory(exc):
                self._drop(parts)  # a link or file where a directory belongs: drop it
            return None  # (else absent, or not to be opened just now: read the origin)
        try:
            fd = fileio.open_regular(parts[-1], dir_fd=parent)
        except fileio.NotRegularFile:
            self._drop_at(parent, parts[-1])
            return None
        except OSError:
            return None
        finally:
            os.close(parent)
        try:
            os.utime(fd)  # the LRU clock (best effort: another user's file may refuse)
        except OSError:
            pass
        return fd

    def read_range(self, path: str, offset: int, length: int) -> bytes | None:
        """Bytes of a cached pack, or None when the entry is absent (or was just evicted,
        is shorter than the range, or was not a regular file: then it is dropped)."""
        fd = self.open_entry(path)
        if fd is None:
            return None
        try:
            if offset < 0 or length < 0 or offset + length > os.fstat(fd).st_size:
                return None
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return data if len(data) == length else None

    def touch(self, path: str) -> None:
        """Mark an entry as just used (best effort: another user's file may refuse; a link
        is never followed)."""
        try:
            parts = self._parts(path)
            parent = open_dirs(self.root, parts[:-1])
        except (OSError, ValueError):
            return
        try:
            os.utime(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError:
            pass
        finally:
            os.close(parent)

    # ---- dropping what is not a regular file ----------------------------------------
    def drop(self, path: str) -> None:
        """Remove a damaged or bad entry (one that failed its hash, or is no regular file)
        so that the next fill replaces it: never follows a link, never leaves the root,
        never fails."""
        try:
            self._drop(self._parts(path))
        except ValueError:
            pass

    def _drop(self, parts: list[str]) -> None:
        """Remove the entry at PARTS…, or the first step on the way that is not a real
        directory; never follows a link, never fails."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            for i, part in enumerate(parts):
                if i == len(parts) - 1:
                    self._drop_at(fd, part)
                    return
                try:
                    step = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    if _not_a_directory(exc):
                        self._drop_at(fd, part)
                    return
                os.close(fd)
                fd = step
        finally:
            os.close(fd)

    @staticmethod
    def _drop_at(dir_fd: int, name: str) -> bool:
        """Remove `name` in `dir_fd`: unlink it (a link, FIFO, socket or file: unlink never
        follows), or remove it and all in it if it really is a directory (never through
        a link, however deep: fileio.remove_tree). Errors are ignored; True if something
        went."""
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            return False
        try:
            if stat.S_ISDIR(mode):
                fileio.remove_tree(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
            return True
        except OSError:
            return False

    # ---- filling -----------------------------------------------------------------
    def _fill(self, path: str, write: Callable[[int], None]) -> None:
        """Make `path` appear whole: `write(fd)` into a fresh temp file in tmp/ (random
        name, O_EXCL, no-follow), fsync, rename into place. Every directory on the way is
        a real one (a planted link or file there is replaced); the rename replaces a link
        or FIFO at `path` and never writes through it; a directory there is dropped."""
        parts = self._parts(path)
        tmp_dir = open_dirs(self.root, ["tmp"], create=True, replace_bad=True)
        try:
            name = fileio.tmp_name("")
            fd = os.open(name, _NEW_FILE, 0o644, dir_fd=tmp_dir)
            try:
                try:
                    write(fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dest = open_dirs(self.root, parts[:-1], create=True, replace_bad=True)
                try:
                    try:
                        os.replace(name, parts[-1], src_dir_fd=tmp_dir, dst_dir_fd=dest)
                    except OSError as exc:
                        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        self._drop_at(dest, parts[-1])  # a directory where the entry goes
                        os.replace(name, parts[-1], src_dir_fd=tmp_dir, dst_dir_fd=dest)
                    os.fsync(dest)
                finally:
                    os.close(dest)
            except BaseException:
                try:
                    os.unlink(name, dir_fd=tmp_dir)
                except OSError:
                    pass
                raise
        finally:
            os.close(tmp_dir)

    def try_fill(self, fill: Callable[[], None], notice: Callable[[str], None]) -> bool:
        """Run `fill`, a write into this cache; whether it succeeded. A cache that cannot
        be written (full, read-only, a directory another user made) costs speed, never the
        read or the push: `notice` is told once a process per cache, then it is read
        around."""
        try:
            fill()
            return True
        except OSError as exc:
            with _UNFILLABLE_LOCK:
                first = self.root not in _UNFILLABLE
                _UNFILLABLE.add(self.root)
            if first:
                notice(f"warning: could not fill the cluster cache {self.root}: "
                       f"{exc.strerror or exc}")
            return False

    def fill_bytes(self, path: str, data: bytes | bytearray | memoryview) -> None:
        """Write `data` as the cache entry `path` (whole, or not at all)."""
        self._fill(path, lambda fd: fileio.write_all(fd, data))

    def fill_stream(self, path: str, chunks: Iterable[bytes], expect: str) -> None:
        """Write a downloaded loose object; it is published only if it hashes to `expect`."""
        def write(fd: int) -> None:
            hasher = new_hasher(threads=True)
            for chunk in chunks:
                hasher.update(chunk)
                fileio.write_all(fd, chunk)
            if hasher.hexdigest() != expect:
                raise CorruptObject(f"object {expect[:12]} arrived corrupt from the origin",
                                    hint="nothing corrupt was cached or stored")
        self._fill(path, write)

    def fill_file(self, path: str, src: str) -> None:
        """Copy a local file in (push write-through)."""
        src_fd = fileio.open_regular(src)
        try:
            self._fill(path, lambda fd: fileio.copy_into(src_fd, fd, os.fstat(src_fd).st_size))
        finally:
            os.close(src_fd)

    # ---- pending: written through, not yet on the origin ----------------------------
    def mark_pending(self, path: str) -> None:
        """Mark entry `path` as written through but not yet on the origin:
        it is never evicted until `clear_pending`."""
        name = self._pending_name(path)
        directory = open_dirs(self.root, ["pending"], create=True, replace_bad=True)
        try:
            for _attempt in range(3):
                try:  # created, never opened through a planted link or FIFO
                    os.close(os.open(name, _NEW_FILE, 0o644, dir_fd=directory))
                    return
                except FileExistsError:
                    try:
                        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(mode):  # already marked: renewed (best effort)
                        try:
                            os.utime(name, dir_fd=directory, follow_symlinks=False)
                        except OSError:
                            pass
                        return
                    self._drop_at(directory, name)
            raise OSError(errno.EAGAIN, "the pending marker kept changing", name)
        finally:
            os.close(directory)

    def clear_pending(self, path: str) -> None:
        """The origin holds entry `path` now: it may be evicted again (best effort, never
        fails: a marker that cannot be removed only keeps the entry from eviction)."""
        name = self._pending_name(path)
        try:
            directory = open_dirs(self.root, ["pending"])
        except OSError:
            return
        try:
            self._drop_at(directory, name)
        finally:
            os.close(directory)

    def _pending_markers(self, drop_bad: bool = False) -> dict[str, os.stat_result]:
        """Each name in pending/ with its lstat. Only a real directory holds markers: a
        link or file where pending/ belongs holds none (with `drop_bad`, it is dropped,
        as prune drops one where packs/ belongs). A real pending/ that cannot be opened,
        listed or looked into just now (no permission, an I/O error, an NFS handle gone
        stale) raises OSError naming it: its markers are never taken for absent."""
        try:
            directory = open_dirs(self.root, ["pending"])
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if not _not_a_directory(exc):
                raise
            if drop_bad:
                self._drop(["pending"])
            return {}
        try:
            try:
                names = os.listdir(directory)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, "pending") from None
            found = {}
            for name in names:
                try:
                    found[name] = os.stat(name, dir_fd=directory, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # (cleared meanwhile: the origin has its entry)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, f"pending/{name}") from None
            return found
        finally:
            os.close(directory)

    def pending(self) -> list[str]:
        """Paths of the entries marked pending. The names come from a shared directory:
        only `packs-<pack id>.pack` and `loose-<xx>-<oid>` (64 hex digits, xx its first
        two) count; anything else is ignored. A pending/ that cannot be read just now
        gives none (a push only clears the markers it finds: best effort)."""
        try:
            names = self._pending_markers()
        except OSError:
            return []
        return sorted(path for name in names
                      if (path := self._pending_entry(name)) is not None)

    def _pending_entry(self, name: str) -> str | None:
        """The entry a marker's name stands for, None if it is no marker's name."""
        pack = _PENDING_PACK.fullmatch(name)
        loose = _PENDING_LOOSE.fullmatch(name)
        if pack and is_hash(pack.group(1)):
            return self.pack_path(pack.group(1))
        if loose and is_hash(loose.group(2)) and loose.group(2)[:2] == loose.group(1):
            return self.loose_path(loose.group(2))
        return None

    def _honoured_pending(self, entries: list[tuple[str, int, float]],
                          markers: dict[str, os.stat_result], now: float) -> set[str]:
        """The entries among `entries` that prune keeps as pending, by `markers` (as
        `_pending_markers` read them). Anyone may write pending/, so a marker counts only
        if it is a regular file made (or renewed) within PENDING_MAX_AGE_S, and the entry
        it names is one a push uploads: a whole pack (its table and trailer hash to its
        id, and it is as long as they say) or a loose object of at least PACK_THRESHOLD
        bytes that hashes to its id."""
        fresh = {path for name, st in markers.items()
                 if (path := self._pending_entry(name)) is not None
                 and stat.S_ISREG(st.st_mode) and abs(now - st.st_mtime) <= PENDING_MAX_AGE_S}
        return {path for path, _size, _used in entries
                if path in fresh and self._uploadable(path)}

    def _uploadable(self, path: str) -> bool:
        """Whether the entry at `path` is what a push writes there (see `_honoured_pending`);
        read without following links, and without touching its time of last use."""
        parts = self._parts(path)
        try:
            parent = open_dirs(self.root, parts[:-1])
        except OSError:
            return False
        try:
            fd = fileio.open_regular(parts[-1], dir_fd=parent)
        except OSError:
            return False
        finally:
            os.close(parent)
        try:
            size = os.fstat(fd).st_size
            if parts[0] == "packs":
                return _whole_pack(fd, size, parts[-1].removesuffix(".pack"))
            hasher = new_hasher(threads=True)
            got = 0
            for piece in fileio.pieces_at_most(fd, size):
                hasher.update(piece)
                got += len(piece)
            return size >= PACK_THRESHOLD and got == size and hasher.hexdigest() == parts[-1]
        except OSError:
            return False
        finally:
            os.close(fd)

    # ---- eviction ----------------------------------------------------------------
    def _scan(self, bad: Callable[[int, str], None] | None = None
              ) -> Iterator[tuple[str, int, float]]:
        """(path, size, mtime) of every regular file in packs/, loose/xx/ and loc/xx/, read with
        lstat, without following any link; each thing that is not a regular file where an
        entry belongs (or not a real directory where a directory belongs) goes to
        `bad(dir_fd, name)`."""
        def walk(dir_fd: int, rel: list[str], depth: int) -> Iterator[tuple[str, int, float]]:
            with os.scandir(dir_fd) as it:
                names = [e.name for e in it]
            for name in names:
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if depth and stat.S_ISDIR(st.st_mode):
                    try:
                        sub = os.open(name, _DIR, dir_fd=dir_fd)
                    except OSError:
                        continue
                    try:
                        yield from walk(sub, rel + [name], depth - 1)
                    finally:
                        os.close(sub)
                elif not depth and stat.S_ISREG(st.st_mode):
                    yield os.path.join(self.root, *rel, name), st.st_size, st.st_mtime
                elif bad is not None:
                    bad(dir_fd, name)

        for sub, depth in (("packs", 0), ("loose", 1), ("loc", 1)):
            try:
                top = open_dirs(self.root, [sub])
            except FileNotFoundError:
                continue
            except OSError as exc:
                if not _not_a_directory(exc):
                    raise  # (a real directory that cannot be opened now is never dropped)
                if bad is not None:
                    self._drop([sub])  # packs/ or loose/ is a link or a file
                continue
            try:
                yield from walk(top, [sub], depth)
            finally:
                os.close(top)

    def entries(self) -> list[tuple[str, int, float]]:
        """(path, size, last used) of every cached pack and loose object."""
        return list(self._scan())

    def prune(self, older_than: float | None, max_size: int | None,
              now: float | None = None,
              notice: Callable[[str], None] = lambda _line: None) -> PruneReport:
        """Evict entries unused for `older_than` seconds, then the least recently used
        until the cache holds at most `max_size` bytes. Pending entries (those
        `_honoured_pending` keeps) stay, but take at most PENDING_SHARE of `max_size`
        from the others. Things that are not regular files where entries belong are
        removed too; a tmp/ that cannot be read is skipped (`notice` is told)."""
        now = time.time() if now is None else now
        report = PruneReport()
        # (read before anything is removed: a pending/ that cannot be read stops prune)
        markers = self._pending_markers(drop_bad=True)
        self._prune_tmp(now, report, notice)

        def bad(dir_fd: int, name: str) -> None:
            if self._drop_at(dir_fd, name):
                report.bad_removed += 1

        entries = sorted(self._scan(bad), key=lambda e: e[2])
        marked = self._honoured_pending(entries, markers, now)
        live = []
        for path, size, used in entries:
            if path in marked:
                report.pending_kept += 1
                report.kept += 1
                report.kept_bytes += size
                continue
            if older_than is not None and now - used > older_than:
                self._evict(path, size, report)
            else:
                live.append((path, size))
        total = sum(size for _p, size in live)
        budget = None if max_size is None else \
            max(max_size - report.kept_bytes, int(max_size * (1 - PENDING_SHARE)))
        for path, size in live:  # oldest first
            if budget is not None and total > budget:
                self._evict(path, size, report)
                total -= size
            else:
                report.kept += 1
                report.kept_bytes += size
        return report

    def _prune_tmp(self, now: float, report: PruneReport,
                   notice: Callable[[str], None]) -> None:
        """Remove temp files (or anything else) in tmp/ older than STALE_TMP_S. tmp/ holds
        nothing but fills' temp files, so one that cannot be read (another user made it
        under umask 077; an NFS handle gone stale) is skipped, with a `notice`, and prune
        goes on with the entries."""
        def skip(exc: OSError, name: str) -> None:
            notice(f"warning: cannot clean the temp files of the cluster cache {self.root}: "
                   f"{exc.strerror or exc}: {name} (skipped)")

        try:
            directory = open_dirs(self.root, ["tmp"])
        except FileNotFoundError:
            return
        except OSError as exc:
            if _not_a_directory(exc):
                self._drop(["tmp"])  # a link or a file where tmp/ belongs
            else:
                skip(exc, "tmp")
            return
        try:
            try:
                names = os.listdir(directory)
            except OSError as exc:
                skip(exc, "tmp")
                return
            for name in names:
                try:
                    st = os.stat(name, dir_fd=directory, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    skip(exc, "tmp")
                    return
                if now - st.st_mtime > STALE_TMP_S and self._drop_at(directory, name):
                    report.stale_tmp_removed += 1
        finally:
            os.close(directory)

    def _evict(self, path: str, size: int, report: PruneReport) -> None:
        """Unlink one entry found by `_scan` (only if it is still a regular file there)."""
        parts = self._parts(path)
        try:
            parent = open_dirs(self.root, parts[:-1])
        except (FileNotFoundError, NotADirectoryError, fileio.NotRegularFile):
            return  # gone, or swapped for a link meanwhile: nothing of ours to evict
        try:
            if not stat.S_ISREG(os.stat(parts[-1], dir_fd=parent,
                                        follow_symlinks=False).st_mode):
                return
            os.unlink(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            return
        finally:
            os.close(parent)
        report.removed += 1
        report.freed_bytes += size
