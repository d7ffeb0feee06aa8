"""The cluster cache: a shared directory of remote packs and loose objects.

Owns the cache's layout (`packs/<pack id>.pack`, `loose/<xx>/<oid>`, `pending/`,
`tmp/`), filling it so that no reader ever sees part of a file (temp file + fsync +
rename; many machines may fill one entry at once and the last rename wins with the same
bytes), recency (a read bumps the file's mtime: that is the LRU clock) and pruning by
age and size. An entry written through by a push is marked pending until the origin
holds it, and pending entries are never evicted. Everything read from a cache is
verified by the caller, so a damaged entry costs a download, never data.
Must never touch the store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import fileio
from ..errors import CorruptObject
from ..hashing import new_hasher

# A temp file this old belongs to a filler that died; prune removes it.
STALE_TMP_S = 3600.0


@dataclass
class PruneReport:
    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    pending_kept: int = 0
    stale_tmp_removed: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ClusterCache:
    """A cache directory shared by many machines (NFS, Lustre, a PVC)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.tmp = os.path.join(root, "tmp")

    # ---- names -------------------------------------------------------------------
    def pack_path(self, pack_id: str) -> str:
        return os.path.join(self.root, "packs", f"{pack_id}.pack")

    def loose_path(self, oid: str) -> str:
        return os.path.join(self.root, "loose", oid[:2], oid)

    def _pending_path(self, path: str) -> str:
        rel = os.path.relpath(path, self.root).replace(os.sep, "-")
        return os.path.join(self.root, "pending", rel)

    # ---- reading -----------------------------------------------------------------
    def has(self, path: str) -> bool:
        return os.path.exists(path)

    def read_range(self, path: str, offset: int, length: int) -> bytes | None:
        """Bytes of a cached pack, or None when the entry is absent (or was just evicted)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        self.touch(path)
        return data if len(data) == length else None

    @staticmethod
    def touch(path: str) -> None:
        """Mark an entry as just used (best effort: another user's file may refuse)."""
        try:
            os.utime(path)
        except OSError:
            pass

    # ---- filling -----------------------------------------------------------------
    def _tmp_name(self) -> str:
        return fileio.tmp_name(self._tmp_dir())

    def fill_bytes(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fileio.atomic_write_bytes(path, data, 0o644, tmp_dir=self._tmp_dir())

    def _tmp_dir(self) -> str:
        os.makedirs(self.tmp, exist_ok=True)
        return self.tmp

    def fill_stream(self, path: str, chunks: Iterable[bytes], expect: str) -> None:
        """Write a downloaded loose object; it is published only if it hashes to `expect`."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = self._tmp_name()
        hasher = new_hasher(threads=True)
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if hasher.hexdigest() != expect:
                raise CorruptObject(f"object {expect[:12]} arrived corrupt from the origin",
                                    hint="nothing corrupt was cached or stored")
        except BaseException:
            fileio.unlink_quietly(tmp)
            raise
        fileio.publish(tmp, path)

    def fill_file(self, path: str, src: str) -> None:
        """Copy a local file in (push write-through)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = self._tmp_name()
        try:
            src_fd = os.open(src, os.O_RDONLY)
            try:
                dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    fileio.copy_into(src_fd, dst_fd, os.fstat(src_fd).st_size)
                    os.fsync(dst_fd)
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
        except BaseException:
            fileio.unlink_quietly(tmp)
            raise
        fileio.publish(tmp, path)

    # ---- pending: written through, not yet on the origin ----------------------------
    def mark_pending(self, path: str) -> None:
        marker = self._pending_path(path)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "ab"):
            pass

    def clear_pending(self, path: str) -> None:
        fileio.unlink_quietly(self._pending_path(path))

    def pending(self) -> list[str]:
        """Paths of the entries marked pending."""
        directory = os.path.join(self.root, "pending")
        if not os.path.isdir(directory):
            return []
        out = []
        for name in os.listdir(directory):
            sub, _, rest = name.partition("-")
            if sub == "packs":
                out.append(os.path.join(self.root, "packs", rest))
            elif sub == "loose":
                xx, _, oid = rest.partition("-")
                out.append(os.path.join(self.root, "loose", xx, oid))
        return out

    # ---- eviction ----------------------------------------------------------------
    def entries(self) -> list[tuple[str, int, float]]:
        """(path, size, last used) of every cached pack and loose object."""
        out = []
        for sub in ("packs", "loose"):
            for dirpath, _dirs, files in os.walk(os.path.join(self.root, sub)):
                for name in files:
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    out.append((path, st.st_size, st.st_mtime))
        return out

    def prune(self, older_than: float | None, max_size: int | None,
              now: float | None = None) -> PruneReport:
        """Evict entries unused for `older_than` seconds, then the least recently used
        until the cache holds at most `max_size` bytes. Pending entries always stay."""
        now = time.time() if now is None else now
        report = PruneReport()
        if os.path.isdir(self.tmp):
            for name in os.listdir(self.tmp):
                path = os.path.join(self.tmp, name)
                try:
                    if now - os.stat(path).st_mtime > STALE_TMP_S:
                        os.unlink(path)
                        report.stale_tmp_removed += 1
                except FileNotFoundError:
                    pass
        pending = os.path.join(self.root, "pending")
        marked = set(os.listdir(pending)) if os.path.isdir(pending) else set()
        live = []
        for path, size, used in sorted(self.entries(), key=lambda e: e[2]):
            if os.path.basename(self._pending_path(path)) in marked:
                report.pending_kept += 1
                report.kept += 1
                report.kept_bytes += size
                continue
            if older_than is not None and now - used > older_than:
                self._evict(path, size, report)
            else:
                live.append((path, size))
        total = sum(size for _p, size in live) + report.kept_bytes
        for path, size in live:  # oldest first
            if max_size is not None and total > max_size:
                self._evict(path, size, report)
                total -= size
            else:
                report.kept += 1
                report.kept_bytes += size
        return report

    @staticmethod
    def _evict(path: str, size: int, report: PruneReport) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        report.removed += 1
        report.freed_bytes += size
