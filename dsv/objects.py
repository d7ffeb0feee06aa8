"""The local object store: content-addressed bytes in packs and loose files.

Owns `.dsv/objects/`: small objects (file contents under PACK_THRESHOLD, trees, version
records) appended to pack files, large file contents as loose read-only files, every
one named by its blake3 hash and written atomically. Where a packed object lives is
asked of an `ObjectLocator` (the index); this module never imports the index.

New objects are written by an `Ingest` into this process's staging directory
(`.dsv/tmp/stage-<id>/`, flock'd while the process lives, so no other process removes
it) and become part of the store only when `Ingest.publish` renames them into
`objects/`, which core.Core.commit_objects does under the store lock, right before the
index records them. So `gc`, which runs under that lock, never sees a published object
the index has not learned of, except after a crash.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from . import fileio
from .errors import CorruptObject, InvalidInput, MissingObject
from .reporting import FileBytes, number
from .hashing import hash_bytes, hash_fd, hash_file, new_hasher
from .tree import is_chunk_list

# Files smaller than this go into packs; creating one file per small object costs more
# kernel time than hashing it (SPEC §5), so they are batched like git and restic do.
PACK_THRESHOLD = 1 << 20
PACK_TARGET_SIZE = 32 << 20

# The buffers of a chunked file written into a working directory as it downloads
# (worktree.Spool: two a file it writes) and of the reads that finish one.
WORKTREE_BUFFER = 4 << 20

# A file changed this recently may change again within one timestamp tick, unseen by stat.
RACY_NS = 50_000_000

# No object in a pack may claim more than this (trees of huge directories are the
# largest); a pack index from outside that claims more is refused before any read.
MAX_PACKED_OBJECT = 256 << 20

PACK_MAGIC = b"DSVPACK1"
PACK_END_MAGIC = b"DSVPEND1"
_ENTRY = struct.Struct(">32sQQB")      # raw hash, offset, length, kind
_TRAILER = struct.Struct(">QQ8s")       # entry count, table offset, end magic
_FIRST_BITS = struct.Struct(f">Q{_ENTRY.size - 8}x")   # (an entry's id's first 64 bits)

KIND_BLOB = 0
KIND_TREE = 1
KIND_VERSION = 2


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one object sits inside a pack."""

    oid: str
    offset: int
    length: int
    kind: int


@dataclass(frozen=True)
class PackInfo:
    """A finished pack: its id (blake3 of its table and trailer) and what it holds, as
    its table's bytes (49 bytes an object, where a list of entries would take some 300:
    an ingest of a million objects keeps every table until it publishes)."""

    id: str
    size: int
    table: bytes

    def rows(self) -> list[tuple[str, int, int, int]]:
        """(oid, offset, length, kind) of each object, in pack order: `entries` without an
        object per entry (what the index records)."""
        return [(raw.hex(), offset, length, kind)
                for raw, offset, length, kind in _ENTRY.iter_unpack(self.table)]

    @property
    def entries(self) -> list[PackEntry]:
        """The objects the pack holds, in pack order."""
        return [PackEntry(*row) for row in self.rows()]

    def raw(self) -> Iterator[tuple[bytes, int, int, int]]:
        """(raw 32-byte id, offset, length, kind) of each object, in pack order."""
        return _ENTRY.iter_unpack(self.table)

    def row_at(self, i: int) -> tuple[bytes, int, int, int]:
        """`raw`'s `i`th row."""
        return _ENTRY.unpack_from(self.table, i * _ENTRY.size)

    def first_bits(self) -> Iterator[int]:
        """The first 64 bits of each object's id, as a number, in pack order."""
        return (first for (first,) in _FIRST_BITS.iter_unpack(self.table))


class PackTables(Mapping[str, list[PackEntry]]):
    """Packs' entries by pack id, each pack kept as its table (`PackInfo`: 49 bytes an
    object, where a list of entries takes some 240; a check or gc of a million-file
    remote holds every pack's at once). A pack's list is made when asked for, and let go
    after."""

    def __init__(self) -> None:
        self.tables: dict[str, PackInfo] = {}

    def __getitem__(self, pack_id: str) -> list[PackEntry]:
        return self.tables[pack_id].entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


class ObjectLocator(Protocol):
    """Answers where a packed object lives (implemented by the index)."""

    def locate(self, oid: str) -> tuple[str, int, int] | None:
        """Where a packed object is: (pack id, offset, length), or None."""

    def locate_many(self, oids: Iterable[str]) -> dict[str, tuple[str, int, int]]:
        """Where those of `oids` that are packed are: oid → (pack, offset, length)."""

    def packed_ids(self, oids: Iterable[str]) -> set[str]:
        """Those of `oids` that are packed."""

    def any_packed(self) -> bool:
        """Whether any object is packed at all."""


def pack_id_of(table: bytes, trailer: bytes) -> str:
    """A pack's id: blake3 of its entry table and trailer. The table names every object
    by its own blake3, so the id covers every byte of the pack without hashing the data
    a second time (each object is checked against its own name when read)."""
    return hash_bytes(table + trailer)


class PackWriter:
    """Appends objects to a temp pack; `finish` fsyncs it and renames it to its id."""

    def __init__(self, store: "ObjectStore") -> None:
        self._store = store
        self.tmp = fileio.tmp_name(store.tmp_dir)
        # O_DIRECT through an aligned buffer: a commit writes its packs at disk speed
        # without first filling the page cache (costly kernel time on the target VMs).
        self._file = fileio.DirectWriter(self.tmp, 0o644)
        self._file.write(PACK_MAGIC)
        self._offset = len(PACK_MAGIC)
        self._table = bytearray()
        self._seen: set[bytes] = set()   # raw ids

    @property
    def size(self) -> int:
        """Bytes written to the pack so far."""
        return self._offset

    def add(self, oid: str, kind: int, data: bytes | memoryview) -> None:
        """Append one object (a second copy of an id already added is skipped)."""
        raw = bytes.fromhex(oid)
        if raw in self._seen:
            return
        self._file.write(data)
        self._table += _ENTRY.pack(raw, self._offset, len(data), kind)
        self._seen.add(raw)
        self._offset += len(data)

    def add_run(self, kind: int, data: memoryview, entries: list[tuple[bytes, int, int]]
                ) -> None:
        """Append the objects that lie in `data` at (raw id, start, length), in this
        order (a download's checked range): each stretch of adjacent ones is copied in
        one write, where `add` takes a call per object. An id already added is skipped."""
        table, seen, offset = self._table, self._seen, self._offset
        begin = end = 0   # the stretch of `data` not yet written
        for raw, start, length in entries:
            if raw in seen:
                continue
            if start != end:
                if end > begin:
                    self._file.write(data[begin:end])
                begin = start
            end = start + length
            table += _ENTRY.pack(raw, offset, length, kind)
            seen.add(raw)
            offset += length
        if end > begin:
            self._file.write(data[begin:end])
        self._offset = offset

    def finish(self) -> PackInfo | None:
        """Seal the pack (fsynced, still under its temp name `tmp`); returns None (and
        leaves nothing behind) when it is empty."""
        if not self._seen:
            self.abort()
            return None
        table = bytes(self._table)
        trailer = _TRAILER.pack(len(self._seen), self._offset, PACK_END_MAGIC)
        for part in (table, trailer):
            self._file.write(part)
        size = self._file.finish()
        os.chmod(self.tmp, 0o444)
        return PackInfo(pack_id_of(table, trailer), size, table)

    def abort(self) -> None:
        """Drop the unfinished pack."""
        self._file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class ObjectStore:
    """Read and write objects under one `objects/` directory."""

    def __init__(self, root: str | os.PathLike[str], locator: ObjectLocator,
                 tmp_dir: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.loose_dir = self.root / "loose"
        self.pack_dir = self.root / "packs"
        self.links_dir = self.root / "links"
        self.tmp_root = Path(tmp_dir)
        self._locator = locator
        self._pack_fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()
        self._stage: Path | None = None
        self._stage_fd: int | None = None
        # The ingests under way, whose trees are readable before they are published.
        self._ingests: weakref.WeakSet[Ingest] = weakref.WeakSet()
        self._ingests_lock = threading.Lock()
        # Loose objects whose stored copy is damaged: a good copy staged for one of these
        # is renamed over it (`dsv verify --repair`, under the store lock), where normally
        # an existing copy wins.
        self.replacing: set[str] = set()

    @classmethod
    def create_layout(cls, root: Path) -> None:
        """Make the `loose/` and `packs/` directories of a new store."""
        (root / "loose").mkdir(parents=True, exist_ok=True)
        (root / "packs").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Close open packs and remove this process's staging directory with
        anything still staged in it."""
        for fd in self._pack_fds.values():
            os.close(fd)
        self._pack_fds.clear()
        if self._stage_fd is not None:
            # Anything still staged was never published: it goes with the directory.
            _remove_stage(self._stage_fd, str(self._stage))
            os.close(self._stage_fd)
            self._stage, self._stage_fd = None, None

    @property
    def staging_dir(self) -> Path | None:
        """The staging directory, if this process made one yet."""
        return self._stage

    @property
    def tmp_dir(self) -> Path:
        """The staging directory of this process, made on first use and flock'd until `close`:
        temp files and staged objects live here, out of reach of other processes'
        clean-up (`remove_dead_stages`)."""
        if self._stage is None:
            with self._fd_lock:
                if self._stage is None:
                    self._stage_fd, self._stage = _make_stage(self.tmp_root)
        return self._stage

    # ---- where things live -------------------------------------------------------
    def loose_path(self, oid: str) -> Path:
        """Where loose object `oid` lives (`loose/<xx>/<oid>`)."""
        return self.loose_dir / oid[:2] / oid

    def pack_path(self, pack_id: str) -> Path:
        """Where pack `pack_id` lives (`packs/<pack id>.pack`)."""
        return self.pack_dir / f"{pack_id}.pack"

    def has_loose(self, oid: str) -> bool:
        """Whether `oid` is stored as a loose object."""
        return os.path.exists(self.loose_path(oid))

    def has(self, oid: str) -> bool:
        """Whether `oid` is stored, packed or loose."""
        return self._locator.locate(oid) is not None or self.has_loose(oid)

    def lacking(self, entries: dict[str, int]) -> tuple[list[str], list[str]]:
        """Which blobs (oid → size) this store does not hold: (those bound for packs,
        those stored loose), by the size their trees give."""
        small = [oid for oid, size in entries.items() if size < PACK_THRESHOLD]
        present = self.packed_ids(small)
        return ([o for o in small if o not in present],
                [o for o, size in entries.items()
                 if size >= PACK_THRESHOLD and not self.has_loose(o)])

    def locate_many(self, oids: Iterable[str]) -> dict[str, tuple[str, int, int]]:
        """Pack locations of those of `oids` that are packed (small objects are never loose)."""
        return self._locator.locate_many(oids)

    def packed_ids(self, oids: Iterable[str]) -> set[str]:
        """Those of `oids` that are packed here (only whether: what `locate_many` finds
        without where, which a million ids read in about half the time)."""
        return self._locator.packed_ids(oids)

    def any_packed(self) -> bool:
        """Whether the store holds any packed object (a new store's first commit: no)."""
        return self._locator.any_packed()

    # ---- reading -----------------------------------------------------------------
    def read(self, oid: str, verify: bool = True) -> bytes:
        """The bytes of object `oid`, checked against its name unless `verify` is False."""
        where = self._locator.locate(oid)
        if where is not None:
            pack_id, offset, length = bounded_where(where, oid)
            data = os.pread(self.pack_fd(pack_id), length, offset)
            if len(data) != length:
                raise CorruptObject(f"object {oid[:12]} is cut short in pack {pack_id[:12]}")
        else:
            try:
                with os.fdopen(self.open_loose_fd(oid), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                staged = self._staged_tree(oid)
                if staged is None:
                    raise MissingObject(f"object {oid[:12]} is missing from the store",
                                        hint="run `dsv verify` to see what else is affected"
                                        ) from None
                data = staged
        if verify and hash_bytes(data) != oid:
            raise CorruptObject(f"object {oid[:12]} is corrupt: its bytes do not match its hash",
                                hint="run `dsv verify` to list every damaged object")
        return data

    def _staged_tree(self, oid: str) -> bytes | None:
        """Tree object `oid` if an ingest under way in this process took it (see
        `Ingest` and `_KeptTrees`)."""
        with self._ingests_lock:
            ingests = list(self._ingests)
        for ingest in ingests:
            data = ingest.kept.read(oid)
            if data is not None:
                return data
        return None

    def read_many_packed(self, oids: list[str], max_bytes: int) -> dict[str, bytes]:
        """The bytes of those of `oids` that are packed here and hash to their ids, read
        in one go (one lookup, and `native.pread_many`: one wait for the GIL however
        many there are), as many as the lengths the index gives allow within
        `max_bytes` (an index another hand touched may claim any length); the others
        are left out, for `read` to bring (or report)."""
        wheres = self.locate_many(oids)
        found: list[str] = []
        for oid in oids:
            where = wheres.get(oid)
            if where is not None and sound_where(where, max_bytes):
                found.append(oid)
                max_bytes -= where[2]
        if not found:
            return {}
        from . import native
        datas = native.pread_many([self.pack_fd(wheres[oid][0]) for oid in found],
                                  [wheres[oid][1] for oid in found],
                                  [wheres[oid][2] for oid in found])
        return {oid: data for oid, data in zip(found, datas, strict=True)
                if len(data) == wheres[oid][2] and hash_bytes(data) == oid}

    def read_packed(self, where: tuple[str, int, int]) -> bytes:
        """Raw bytes at a pack location (unverified: the caller hashes them)."""
        pack_id, offset, length = bounded_where(where)
        return os.pread(self.pack_fd(pack_id), length, offset)

    def pack_fd(self, pack_id: str) -> int:
        """A descriptor of a local pack, open for reading (kept: do not close it)."""
        fd = self._pack_fds.get(pack_id)
        if fd is not None:
            return fd
        with self._fd_lock:
            return self._open_pack(pack_id)

    def _open_pack(self, pack_id: str) -> int:
        fd = self._pack_fds.get(pack_id)
        if fd is None:
            try:
                fd = open_stored(self.pack_path(pack_id), f"pack {pack_id[:12]}")
            except FileNotFoundError:
                raise MissingObject(f"pack {pack_id[:12]} is missing from the store",
                                    hint="run `dsv verify` to see what is affected") from None
            self._pack_fds[pack_id] = fd
        return fd

    def open_loose_fd(self, oid: str) -> int:
        """A read-only fd of loose object `oid` (see `open_stored`)."""
        return open_stored(self.loose_path(oid), f"object {oid[:12]}")

    # ---- writing -----------------------------------------------------------------
    def new_pack(self) -> PackWriter:
        """A writer for a new pack in this store."""
        return PackWriter(self)

    def stage_large_file(self, src: str | os.PathLike[str],
                         expect: str | None = None) -> tuple[str, int, str | None]:
        """Stage a large file as a loose object: (id, size, staged path) of the bytes
        copied (the path is None when the store already holds that object).

        One pass: the bytes are hashed as they are copied, so the object's name is the
        hash of exactly what was written, even if the source changes meanwhile. With
        `expect` (a copy from a cluster cache), bytes that do not hash to it are refused.
        """
        # Non-blocking and regular files only: never hang on a FIFO put in a file's place.
        src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(src_fd).st_mode):
                raise InvalidInput(f"{src} is not a regular file")
            return self.stage_large_fd(src_fd, expect)
        finally:
            os.close(src_fd)

    def stage_large_fd(self, src_fd: int, expect: str | None = None,
                       limit: int | None = None) -> tuple[str, int, str | None]:
        """`stage_large_file` from a file the caller opened (and checked) itself, read no
        further than `limit` bytes (the size it checked)."""
        return self._stage_loose(
            lambda writer, observe: writer.copy_from(src_fd, observe, limit), expect)

    def stage_large_stream(self, chunks: Iterable[bytes],
                           observe: Callable[[bytes], None] | None = None,
                           expect: str | None = None) -> tuple[str, int, str | None]:
        """Stage bytes arriving in pieces (a download) as a loose object.
        `observe` sees every piece too (an MD5 to compare with an ETag). With `expect`,
        bytes that do not hash to it are dropped and CorruptObject raised."""
        def fill(writer: fileio.DirectWriter,
                 hash_update: Callable[[bytes | memoryview], object]) -> int:
            for chunk in chunks:
                hash_update(chunk)
                if observe is not None:
                    observe(chunk)
                writer.write(chunk)
            return 0
        return self._stage_loose(fill, expect)

    def _stage_loose(self, fill: Callable[[fileio.DirectWriter,
                                            Callable[[bytes | memoryview], object]], int],
                     expect: str | None = None) -> tuple[str, int, str | None]:
        """Write a loose object through `fill(writer, hasher.update)` and fsync it, named
        by the hash of what was written: (id, size, staged path, or None when the store
        holds that object already)."""
        tmp = fileio.tmp_name(self.tmp_dir)
        hasher = new_hasher(threads=True)
        writer = fileio.DirectWriter(tmp, 0o444)
        try:
            fill(writer, hasher.update)
            size = writer.finish()
        except BaseException:
            writer.close()
            fileio.unlink_quietly(tmp)
            raise
        oid = hasher.hexdigest()
        if expect is not None and oid != expect:
            fileio.unlink_quietly(tmp)
            raise CorruptObject(f"object {expect[:12]} arrived corrupt: its bytes hash to "
                                f"{oid[:12]}", hint="nothing corrupt was stored; the source "
                                                    "holds damaged data")
        if self.loose_path(oid).exists() and oid not in self.replacing:
            os.unlink(tmp)
            return oid, size, None
        return oid, size, tmp

    def publish_loose(self, oid: str, staged: str) -> None:
        """Move a staged loose object into place (an existing copy wins, unless it is
        being replaced: then the rename swaps the good copy in, atomically)."""
        dest = self.loose_path(oid)
        if dest.exists() and oid not in self.replacing:
            fileio.unlink_quietly(staged)
            return
        dest.parent.mkdir(exist_ok=True)
        _clear_directory(dest)
        fileio.publish(staged, str(dest))

    def publish_pack(self, pack: PackInfo, staged: str) -> None:
        """Move a sealed pack into place under its id."""
        dest = self.pack_path(pack.id)
        _clear_directory(dest)
        fileio.publish(staged, str(dest))

    def copy_out(self, oid: str, dest: str, mode: int, reflink: str = "auto",
                 twin: str | None = None, progress: FileBytes | None = None,
                 chunks: list[tuple[str, int]] | None = None) -> int:
        """Write loose object `oid` to a new file `dest`, then verify what landed.
        With `chunks` (a chunked file's chunk list), the file `oid` is put together
        from those packed chunks instead (see `_copy_chunks`), and verified the same way.

        The copy is done in the kernel (a reflink when `reflink` is "auto" or "always" and
        the filesystem can, else copy_file_range: the same work as `cp`), and the new file
        is hashed while its pages are still in memory. A damaged object is caught before
        the call returns: `dest` is removed and CorruptObject raised, so wrong bytes never
        stay in a working directory.

        `twin` is a file believed to hold the same bytes (a working-directory file the
        stat cache vouches for): copying it is often cheaper (it is in the page cache;
        objects are written around it). The same verification decides: if it does not
        hash to `oid`, the copy is redone from the object.

        `progress` hears the bytes copied, piece by piece (a reflink: none); a copy redone
        after a twin failed restarts it, so no byte is shown twice. (The caller knows the
        object's size and counts what is left.)
        """
        def attempt(src: str) -> int:
            if progress is not None:
                progress.restart()
            return self._copy_file(src, dest, mode, reflink, progress)

        if twin is not None:
            try:
                size = attempt(twin)
                if hash_file(dest, size) == oid:
                    return size
            except OSError:
                pass
            fileio.unlink_quietly(dest)
        if chunks is not None:
            if progress is not None:
                progress.restart()
            size = self._copy_chunks(chunks, dest, mode, progress)
        else:
            try:
                size = attempt(str(self.loose_path(oid)))
            except FileNotFoundError as exc:
                if exc.filename != str(self.loose_path(oid)):
                    raise
                raise MissingObject(f"object {oid[:12]} is missing from the store",
                                    hint="run `dsv verify` to see what else is affected"
                                    ) from None
            except fileio.NotRegularFile as exc:
                raise not_regular(f"object {oid[:12]}", exc) from None
        if hash_file(dest, size) != oid:
            fileio.unlink_quietly(dest)
            raise CorruptObject(f"{self._what_is_corrupt(oid, chunks)}; it was not written",
                                hint="run `dsv verify` to list every damaged object")
        return size

    def _what_is_corrupt(self, oid: str, chunks: list[tuple[str, int]] | None) -> str:
        """Why a copy of file `oid` did not hash to it: for a chunked file, the first of
        its chunks that is damaged (each read and checked again: a failure's cost only),
        or its chunk list when every chunk is intact."""
        if not chunks:
            return f"object {oid[:12]} is corrupt"
        for chunk, _length in chunks:
            try:
                self.read(chunk)
            except CorruptObject:
                return f"object {chunk[:12]} (a chunk of file {oid[:12]}) is corrupt"
        return f"file {oid[:12]} is corrupt: the chunks its chunk list names do not make it"

    def _copy_chunks(self, chunks: list[tuple[str, int]], dest: str, mode: int,
                     progress: Callable[[int], None] | None = None) -> int:
        """Write the packed `chunks`, in order, to a new file `dest`: each stretch of
        chunks that lie back to back in one pack (as a commit writes them) is one copy in
        the kernel, like `cp`, through the page cache (a pack read again is read from
        memory: copies that read packs past it took 1.9 s for 1 GiB where this takes 0.7
        s). The caller hashes what landed; a chunk that is missing, or whose pack entry
        has another length, leaves no file."""
        runs = self._chunk_runs(chunks)
        dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        size = 0
        try:
            for pack_id, offset, length in runs:
                fileio.copy_into(self.pack_fd(pack_id), dst_fd, length, progress,
                                 offset, size)
                size += length
        except BaseException:
            os.close(dst_fd)
            fileio.unlink_quietly(dest)
            raise
        os.close(dst_fd)
        return size

    def write_chunks(self, chunks: list[tuple[str, int]], writer: fileio.DirectWriter,
                     progress: Callable[[int], None] | None = None) -> None:
        """Append the packed `chunks`, in order, to `writer` (which hashes what it
        writes): the rest of a file a download began (worktree.Spool), from packs that
        download has just written past the page cache, so they are read past it too
        (fileio.read_ranges), a stretch of chunks lying back to back in one pack at a
        time. Chunks are not checked one by one here: the caller checks the blake3 of
        the whole. A chunk that is missing, or whose pack entry has another length,
        raises before any byte is written."""
        runs = self._chunk_runs(chunks)
        i = 0
        while i < len(runs):   # consecutive runs of one pack: one open of it
            j = i + 1
            while j < len(runs) and runs[j][0] == runs[i][0]:
                j += 1
            try:
                for piece in fileio.read_ranges(self.pack_path(runs[i][0]),
                                                [(off, n) for _p, off, n in runs[i:j]],
                                                WORKTREE_BUFFER):
                    writer.write(piece)
                    if progress is not None:
                        progress(len(piece))
            except FileNotFoundError:
                raise MissingObject(f"pack {runs[i][0][:12]} is missing from the store",
                                    hint="run `dsv verify` to see what is affected") from None
            except fileio.NotRegularFile as exc:
                raise not_regular(f"pack {runs[i][0][:12]}", exc) from None
            i = j

    def _chunk_runs(self, chunks: list[tuple[str, int]]) -> list[list[Any]]:
        """Where `chunks` lie, as [pack id, offset, length] stretches of chunks back to
        back in one pack; a chunk that is missing, or whose pack entry has another
        length than the chunk list says, raises."""
        where = self.locate_many(c for c, _n in chunks)
        runs: list[list[Any]] = []
        for chunk, length in chunks:
            at = where.get(chunk)
            if at is None:
                raise MissingObject(f"object {chunk[:12]} (a chunk) is missing from the "
                                    f"store", hint="run `dsv verify` to see what else is "
                                                   "affected")
            if at[2] != length:
                raise CorruptObject(f"object {chunk[:12]} (a chunk) has {at[2]} bytes where "
                                    f"its chunk list says {length}",
                                    hint="run `dsv verify` to list every damaged object")
            bounded_where(at, chunk)
            if runs and runs[-1][0] == at[0] and runs[-1][1] + runs[-1][2] == at[1]:
                runs[-1][2] += length
            else:
                runs.append([*at])
        return runs

    @staticmethod
    def _copy_file(src: str, dest: str, mode: int, reflink: str,
                   progress: Callable[[int], None] | None = None) -> int:
        src_fd = fileio.open_regular(src)
        try:
            size = os.fstat(src_fd).st_size
            dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                if reflink == "never" or not fileio.try_reflink(src_fd, dst_fd):
                    if reflink == "always":
                        raise InvalidInput("this filesystem cannot reflink",
                                           hint="use --link copy (or auto)")
                    fileio.copy_into(src_fd, dst_fd, size, progress)
            except BaseException:
                os.close(dst_fd)
                fileio.unlink_quietly(dest)
                raise
            os.close(dst_fd)
        finally:
            os.close(src_fd)
        return size

    def link_source(self, oid: str, chunks: list[tuple[str, int]] | None = None) -> Path:
        """A read-only copy of loose object `oid` (or of the chunked file `oid` put
        together from `chunks`) for hardlink/symlink checkouts.

        Checked-out links point here, not at the object, so writing through one can at
        worst damage this copy; it is re-hashed before every reuse and replaced if so.
        """
        path = self.links_dir / oid
        try:
            fd = fileio.open_regular(path)   # (a link or FIFO put there: never used)
        except FileNotFoundError:
            pass
        except fileio.NotRegularFile:
            fileio.unlink_quietly(str(path))
        else:
            try:
                intact = hash_fd(fd) == oid
            finally:
                os.close(fd)
            if intact:
                return path
            os.unlink(path)
        self.links_dir.mkdir(exist_ok=True)
        tmp = fileio.tmp_name(self.tmp_dir)
        self.copy_out(oid, tmp, 0o444, chunks=chunks)
        fileio.publish(tmp, str(path))
        return path

    def iter_link_sources(self) -> Iterator[str]:
        """Ids of the read-only copies kept for link checkouts."""
        if self.links_dir.exists():
            yield from (n for n in os.listdir(self.links_dir)
                        if not n.startswith(fileio.TMP_PREFIX))

    def delete_link_source(self, oid: str) -> None:
        """Remove the link-checkout copy of `oid`, if any."""
        fileio.unlink_quietly(str(self.links_dir / oid))

    # ---- enumeration, verification and removal -----------------------------------
    def iter_loose(self) -> Iterator[str]:
        """Ids of every loose object (staging temp files excluded)."""
        if not self.loose_dir.exists():
            return
        for sub in sorted(os.listdir(self.loose_dir)):
            subdir = self.loose_dir / sub
            for name in sorted(os.listdir(subdir)):
                if not name.startswith(fileio.TMP_PREFIX):
                    yield name

    def iter_pack_ids(self) -> Iterator[str]:
        """Ids of every pack file on disk."""
        if not self.pack_dir.exists():
            return
        for name in sorted(os.listdir(self.pack_dir)):
            if name.endswith(".pack"):
                yield name[: -len(".pack")]

    def read_pack_entries(self, pack_id: str) -> list[PackEntry]:
        """Parse a pack's own table of contents (so the index can be rebuilt from packs)."""
        return parse_pack_table(self.pack_path(pack_id))

    def verify_loose(self, oid: str) -> bool:
        """Whether loose object `oid` still hashes to its id (a file of another kind in
        its place, or a link, does not)."""
        try:
            self.open_loose(oid).close()
        except CorruptObject:
            return False
        return True

    def open_loose(self, oid: str) -> BinaryIO:
        """Loose object `oid`, opened for reading once it was checked against its id
        through the same descriptor (CorruptObject if it is not, or is no regular
        file)."""
        fd = self.open_loose_fd(oid)
        try:
            if hash_fd(fd) != oid:
                raise CorruptObject(f"object {oid[:12]} is corrupt",
                                    hint="run `dsv verify --repair` to replace it with a "
                                         "good copy")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def verify_pack(self, pack_id: str) -> tuple[bool, list[str], int]:
        """Re-hash a pack: whether its table matches its id, which entries are damaged,
        and how many entries it holds."""
        whole_ok, bad, entries = self.check_pack(pack_id)
        return whole_ok, bad, len(entries)

    def check_pack(self, pack_id: str) -> tuple[bool, list[str], list[PackEntry]]:
        """`verify_pack`, with the entries of the pack's table (none if it is damaged)."""
        path = self.pack_path(pack_id)
        bad: list[str] = []
        try:
            entries = parse_pack_table(path)
        except CorruptObject:
            return False, [], []
        with os.fdopen(open_stored(path, f"pack {pack_id[:12]}"), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            table_offset = size - _TRAILER.size - len(entries) * _ENTRY.size
            f.seek(table_offset)
            tail = f.read()
        whole_ok = pack_id_of(tail[:-_TRAILER.size], tail[-_TRAILER.size:]) == pack_id
        fd = self.pack_fd(pack_id)
        for e in entries:
            if hash_bytes(os.pread(fd, e.length, e.offset)) != e.oid:
                bad.append(e.oid)
        return whole_ok, bad, entries

    def delete_loose(self, oid: str) -> None:
        """Remove loose object `oid`, if present."""
        _clear_directory(self.loose_path(oid))
        fileio.unlink_quietly(str(self.loose_path(oid)))

    def delete_pack(self, pack_id: str) -> None:
        """Close and remove pack `pack_id` (the index is the caller's)."""
        self.reopen_pack(pack_id)
        _clear_directory(self.pack_path(pack_id))
        fileio.unlink_quietly(str(self.pack_path(pack_id)))

    def reopen_pack(self, pack_id: str) -> None:
        """Forget the open descriptor of `pack_id`: the next read opens the file now at
        its name (a damaged pack rewritten whole gets its own name back)."""
        with self._fd_lock:
            fd = self._pack_fds.pop(pack_id, None)
        if fd is not None:
            os.close(fd)


def _clear_directory(dest: Path) -> None:
    """Remove a directory someone put where a store file goes (neither a rename nor an
    unlink removes it; a link or FIFO there they do), never following a link inside
    it."""
    try:
        if stat.S_ISDIR(os.lstat(dest).st_mode):
            fileio.remove_tree(dest)
    except FileNotFoundError:
        pass


def open_stored(path: str | os.PathLike[str], what: str) -> int:
    """A read-only fd of a file of the store (a pack, a loose object): never through a
    link, never blocking. Something else in its place (a FIFO, whose open would hang
    every reader; a directory; a link to a file elsewhere) is reported as damage, so
    verify names it and `--repair` replaces it; FileNotFoundError is the caller's."""
    try:
        return fileio.open_regular(path)
    except fileio.NotRegularFile as exc:
        raise not_regular(what, exc) from None


def not_regular(what: str, exc: fileio.NotRegularFile) -> CorruptObject:
    """The damage a file of the store that is no regular file is reported as."""
    return CorruptObject(f"{what} in the store is {exc.strerror}",
                         hint="run `dsv verify --repair` to replace it with a good copy")


def parse_pack_table(path: str | os.PathLike[str]) -> list[PackEntry]:
    """Read the entry table at the end of a pack file, checking its bounds."""
    name = Path(path).name
    with os.fdopen(open_stored(path, f"pack {Path(path).stem[:12]}"), "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < len(PACK_MAGIC) + _TRAILER.size:
            raise CorruptObject(f"pack {name} is too short")
        f.seek(0)
        if f.read(len(PACK_MAGIC)) != PACK_MAGIC:
            raise CorruptObject(f"pack {name} has a bad header")
        f.seek(size - _TRAILER.size)
        count, table_offset, end = _TRAILER.unpack(f.read(_TRAILER.size))
        if end != PACK_END_MAGIC or table_offset + count * _ENTRY.size + _TRAILER.size != size:
            raise CorruptObject(f"pack {name} has a bad trailer")
        f.seek(table_offset)
        table = f.read(count * _ENTRY.size)
    return _entries(table, table_offset, name)


def parse_pack_index(tail: bytes, pack_id: str) -> tuple[list[PackEntry], int]:
    """Entries and total size of a pack, from its table and trailer alone (a remote's
    `index/<pack id>` file). Untrusted input: the bytes must hash to `pack_id`."""
    if len(tail) < _TRAILER.size or pack_id_of(tail[:-_TRAILER.size],
                                               tail[-_TRAILER.size:]) != pack_id:
        raise CorruptObject(f"pack index {pack_id[:12]} does not match its name")
    count, table_offset, end = _TRAILER.unpack(tail[-_TRAILER.size:])
    if end != PACK_END_MAGIC or count * _ENTRY.size + _TRAILER.size != len(tail) or \
            table_offset < len(PACK_MAGIC):
        raise CorruptObject(f"pack index {pack_id[:12]} has a bad trailer")
    return _entries(tail[:-_TRAILER.size], table_offset, pack_id[:12]), table_offset + len(tail)


def parse_pack_index_table(tail: bytes, pack_id: str) -> PackInfo:
    """`parse_pack_index` (the same checks), kept as the pack's table: 49 bytes an object
    where a `PackEntry` takes some 240 (what a check of a whole remote holds of every
    pack at once). Its `size` is the pack's."""
    _entries_checked, total = parse_pack_index(tail, pack_id)
    return PackInfo(pack_id, total, bytes(tail[:-_TRAILER.size]))


def parse_whole_pack(data: bytes, pack_id: str) -> list[PackEntry]:
    """The entries of a whole pack's bytes (a remote's `packs/<pack id>`), its table and
    trailer checked against `pack_id` and its length against what the trailer says.
    Untrusted input; the objects themselves are the caller's to check."""
    count = pack_count(data)
    if count < 0 or pack_tail_size(count) > len(data):
        raise CorruptObject(f"pack {pack_id[:12]} is cut short")
    entries, total = parse_pack_index(data[len(data) - pack_tail_size(count):], pack_id)
    if total != len(data):
        raise CorruptObject(f"pack {pack_id[:12]} is {len(data)} bytes; its table says {total}")
    return entries


def bounded_where(where: tuple[str, int, int], oid: str = "") -> tuple[str, int, int]:
    """`where` (pack, offset, length: an index row, which another process may have
    touched), if a pack could hold an object there: never a read of a negative or
    larger length than any packed object has (`MAX_PACKED_OBJECT`)."""
    pack_id, offset, length = where
    if not sound_where(where, MAX_PACKED_OBJECT):
        what = f"object {oid[:12]}" if oid else "an object"
        raise CorruptObject(f"the index places {what} at offset {number(offset)} of pack "
                            f"{pack_id[:12]} for {number(length)} bytes, which no packed "
                            f"object has", hint="run `dsv verify` to list every damaged object")
    return where


def sound_where(where: tuple[str, int, int], max_length: int) -> bool:
    """Whether `where` (pack, offset, length: an index row) could place an object of at
    most `max_length` bytes: whole numbers (a damaged row may hold text or a real), not
    negative."""
    _pack, offset, length = where
    return type(offset) is int and type(length) is int and offset >= 0 \
        and 0 <= length <= max_length


def pack_tail_size(count: int) -> int:
    """Bytes of a pack's table and trailer for `count` entries."""
    return count * _ENTRY.size + _TRAILER.size


def pack_count(trailer: bytes) -> int:
    """How many entries a pack's table holds, as its trailer (its last bytes; at least
    `pack_tail_size(0)` of them) says: -1 if too short to tell."""
    return int.from_bytes(trailer[-_TRAILER.size:-_TRAILER.size + 8], "big") \
        if len(trailer) >= _TRAILER.size else -1


def pack_table_at(read_at: Callable[[int, int], bytes], size: int, pack_id: str,
                  cap: int) -> tuple[list[PackEntry], bytes] | None:
    """A pack's own table and trailer (what a remote's `index/` file copies), read from
    the end of a pack of `size` bytes through `read_at(offset, length)`, in two reads:
    (its entries, those bytes) when they hash to `pack_id` and say `size`; None when
    they do not (cut short, damaged, another pack's) or the table is over `cap` bytes."""
    trailer = pack_tail_size(0)
    if size < trailer:
        return None
    count = pack_count(read_at(size - trailer, trailer))
    tail = pack_tail_size(count)
    if count < 0 or tail > min(size, cap):
        return None
    data = read_at(size - tail, tail)
    try:
        entries, total = parse_pack_index(data, pack_id)
    except CorruptObject:
        return None
    return (entries, data) if total == size else None


def _entries(table: bytes, table_offset: int, name: str) -> list[PackEntry]:
    entries = []
    for raw, offset, length, kind in _ENTRY.iter_unpack(table):
        if offset + length > table_offset or offset < len(PACK_MAGIC) or kind > KIND_VERSION \
                or length > MAX_PACKED_OBJECT:
            raise CorruptObject(f"pack {name} has an entry out of bounds")
        entries.append(PackEntry(raw.hex(), offset, length, kind))
    return entries


def encode_pack(objects: Iterable[tuple[str, int, bytes | memoryview]],
                into: bytearray | None = None) -> tuple[str, bytearray, list[PackEntry]]:
    """A whole pack in memory from (oid, kind, bytes): (pack id, pack bytes, entries).
    Used for uploads, where a pack goes straight to a remote without touching the disk.
    The pack is built in `into` when given (its bytes replaced), so that a buffer used
    again keeps its pages: filling a fresh 16 MiB buffer costs a page fault per 4 KiB,
    more than the copy. A bytearray is also what botocore sends without first copying
    it into a file-like object piece by piece."""
    items = list(objects)
    entries: list[PackEntry] = []
    offset = len(PACK_MAGIC)
    for oid, kind, data in items:
        entries.append(PackEntry(oid, offset, len(data), kind))
        offset += len(data)
    table = b"".join(_ENTRY.pack(bytes.fromhex(e.oid), e.offset, e.length, e.kind)
                     for e in entries)
    trailer = _TRAILER.pack(len(entries), offset, PACK_END_MAGIC)
    out = bytearray() if into is None else into
    total = offset + len(table) + len(trailer)
    try:
        if len(out) > total:
            del out[total:]   # (CPython keeps the memory unless it shrinks below half)
        elif len(out) < total:
            out.extend(bytes(total - len(out)))
    except BufferError:   # (a view of the buffer is still held somewhere: not this one)
        out = bytearray(total)
    with memoryview(out) as view:
        view[:len(PACK_MAGIC)] = PACK_MAGIC
        for (_oid, _kind, data), entry in zip(items, entries, strict=True):
            view[entry.offset:entry.offset + entry.length] = data
        view[offset:offset + len(table)] = table
        view[offset + len(table):] = trailer
    return pack_id_of(table, trailer), out, entries


class Ingest:
    """The new objects of one write: small ones into packs (rolling at PACK_TARGET_SIZE),
    large ones as loose files, all staged until `publish`.

    Use it as a context manager: leaving the block without publishing (an error, or
    nothing worth keeping) removes everything it staged. Small objects are checked
    against the index in batches (one query per few hundred objects, not one each).
    Staged objects are invisible to other processes and safe from their clean-up;
    `publish` (called by core.Core.commit_objects, under the store lock) renames them into
    `objects/`, after which the caller records the packs in the index at once. Until the
    block ends, the tree objects it took are readable in this process
    (`ObjectStore.read`): a commit reads back trees it made, which the tree cache may
    have let go, before they are published.
    """

    _BATCH_OBJECTS = 512
    _BATCH_BYTES = 8 << 20

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._writer: PackWriter | None = None
        self._packs: list[tuple[PackInfo, str]] = []
        # Packs being sealed by a background thread (its last write and its fsync), each
        # with its temp name: the next pack fills meanwhile.
        self._sealing: deque[tuple[Future[PackInfo | None], str]] = deque()
        self._loose: list[tuple[str, str]] = []
        self._loose_ids: set[str] = set()
        self._loose_lock = threading.Lock()
        # Raw digests of what went into packs (bytes: half the memory of hex strings).
        self._pending: set[bytes] = set()
        self._staged: dict[str, tuple[int, bytes | memoryview]] = {}
        self._staged_bytes = 0
        # A store that held no packed object when this began holds none of what is
        # added here but what this ingest wrote (`_pending`): no lookup per object. At a
        # million files, a first commit spent 3.7 s of 31 s finding none of them in the
        # index. (Another process packing one of them meanwhile costs a duplicate copy
        # in a pack, never a wrong row: the index keeps the first location.)
        self._none_stored = not store.any_packed()
        self._done = False
        self.chunk_lists = False
        """Whether a chunk list went into a pack (core raises the store's format)."""
        self.kept = _KeptTrees(store.tmp_root)
        with store._ingests_lock:
            store._ingests.add(self)

    def __enter__(self) -> "Ingest":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()
        self.kept.close()

    # ---- adding ---------------------------------------------------------------------
    def add(self, oid: str, kind: int, data: bytes | memoryview) -> None:
        """Store `data` as `oid` (a small object, bound for a pack) unless already stored."""
        if oid in self._staged or bytes.fromhex(oid) in self._pending:
            return
        if kind == KIND_TREE:
            self.chunk_lists = self.chunk_lists or is_chunk_list(data)
            self.kept.keep(oid, data)
        self._staged[oid] = (kind, data)
        self._staged_bytes += len(data)
        if len(self._staged) >= self._BATCH_OBJECTS or self._staged_bytes >= self._BATCH_BYTES:
            self._flush_staged()

    def holds(self, oid: str) -> bool:
        """Whether `oid` was added to this ingest already."""
        return oid in self._staged or oid in self._loose_ids or \
            bytes.fromhex(oid) in self._pending

    def add_borrowed(self, kind: int, items: list[tuple[str, memoryview]]) -> None:
        """Store each (oid, bytes) of `items` unless already stored, copying the bytes
        into the pack before returning: the caller may reuse its buffers right after (a
        chunker's ring), where `add` would keep a copy of each until its batch is
        checked. One index query for all of them."""
        fresh = [(oid, data) for oid, data in items if not self.holds(oid)]
        if not fresh:
            return
        present = set() if self._none_stored else \
            self.store.packed_ids(oid for oid, _data in fresh)
        for oid, data in fresh:
            if oid not in present and bytes.fromhex(oid) not in self._pending:
                self._write(oid, kind, data)   # (a chunk repeated within `items`: once)

    def add_new(self, oid: str, kind: int, data: bytes | memoryview) -> None:
        """Write an object the caller knows the store lacks (gc's repacking, a download
        of what the store was just found to lack)."""
        if kind == KIND_TREE and is_chunk_list(data):
            self.chunk_lists = True
        self._write(oid, kind, data)

    def add_large_file(self, src: str | os.PathLike[str],
                       expect: str | None = None) -> tuple[str, int]:
        """Stage a large file as a loose object; (id, size) of the bytes copied. One pass:
        the bytes are hashed as they are copied, so the name is the hash of exactly what
        was written, even if the source changes meanwhile."""
        return self._keep(*self.store.stage_large_file(src, expect))

    def add_large_fd(self, src_fd: int, expect: str | None = None,
                     limit: int | None = None) -> tuple[str, int]:
        """`add_large_file` from a file the caller opened (and checked) itself, read no
        further than `limit` bytes."""
        return self._keep(*self.store.stage_large_fd(src_fd, expect, limit))

    def add_large_stream(self, chunks: Iterable[bytes],
                         observe: Callable[[bytes], None] | None = None,
                         expect: str | None = None) -> tuple[str, int]:
        """Stage bytes arriving in pieces (a download) as a loose object: (id, size).
        `observe` sees every piece too (an MD5 to compare with an ETag). With `expect`,
        bytes that do not hash to it are dropped and CorruptObject raised."""
        return self._keep(*self.store.stage_large_stream(chunks, observe, expect))

    def _keep(self, oid: str, size: int, staged: str | None) -> tuple[str, int]:
        if staged is not None:
            with self._loose_lock:  # large files are staged from several threads
                self._loose.append((oid, staged))
                self._loose_ids.add(oid)
        return oid, size

    def _flush_staged(self) -> None:
        staged, self._staged, self._staged_bytes = self._staged, {}, 0
        present = set() if self._none_stored else self.store.packed_ids(staged)
        for oid, (kind, data) in staged.items():
            if oid not in present:
                self._write(oid, kind, data)

    def add_new_run(self, kind: int, data: memoryview, entries: list[tuple[str, int, int]]
                    ) -> None:
        """`add_new` of the objects that lie in `data` at (oid, start, length), in this
        order, each checked by the caller (a download's range of a remote pack): adjacent
        ones go into the pack in one write. One added to this ingest already is
        skipped."""
        pending, fresh = self._pending, []
        for oid, start, length in entries:
            raw = bytes.fromhex(oid)
            if raw not in pending:
                if kind == KIND_TREE and is_chunk_list(data[start:start + length]):
                    self.chunk_lists = True
                pending.add(raw)
                fresh.append((raw, start, length))
        if not fresh:
            return
        if self._writer is None:
            self._writer = self.store.new_pack()
        self._writer.add_run(kind, data, fresh)
        if self._writer.size >= PACK_TARGET_SIZE:
            self._seal()

    def _write(self, oid: str, kind: int, data: bytes | memoryview) -> None:
        if self._writer is None:
            self._writer = self.store.new_pack()
        self._writer.add(oid, kind, data)
        self._pending.add(bytes.fromhex(oid))
        if self._writer.size >= PACK_TARGET_SIZE:
            self._seal()

    _SEALING_MAX = 2
    """Packs sealed at once (each holds its writer's buffers until its fsync is done)."""

    def _seal(self) -> None:
        """Hand the pack being written to a sealer thread: its last write and its fsync
        overlap the filling of the next pack (32 fsyncs a GiB, each waiting for the disk,
        cost a commit or a pull of large files about a second a GiB when serial)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            while len(self._sealing) >= self._SEALING_MAX:
                self._collect_sealed()
            self._sealing.append((_sealer_pool().submit(writer.finish), writer.tmp))

    def _collect_sealed(self) -> None:
        """Wait for the oldest pack being sealed; a failed one is removed and raised."""
        future, tmp = self._sealing.popleft()
        try:
            info = future.result()
        except BaseException:
            fileio.unlink_quietly(tmp)
            raise
        if info is not None:
            self._packs.append((info, tmp))

    def _settle_sealing(self) -> None:
        """Wait for every pack being sealed; raise the first failure once all are done."""
        failure: BaseException | None = None
        while self._sealing:
            try:
                self._collect_sealed()
            except BaseException as exc:  # (the others still finish: their files are ours)
                failure = failure or exc
        if failure is not None:
            raise failure

    @property
    def sealed_objects(self) -> int:
        """Objects in the packs sealed so far and not yet published (packs still being
        sealed not counted)."""
        return sum(len(info.table) for info, _staged in self._packs) // _ENTRY.size

    # ---- ending -----------------------------------------------------------------------
    def publish_sealed(self) -> list[PackInfo]:
        """Move the packs sealed so far (and the large files staged) into `objects/`, and
        forget them: the caller records the packs in the index right away (under the
        store lock), so this ingest's memory stays bounded however much it takes in;
        what it is given again from then on the index already locates."""
        self._settle_sealing()
        for oid, staged in self._loose:
            self.store.publish_loose(oid, staged)
        for info, staged in self._packs:
            self.store.publish_pack(info, staged)
            for raw, *_rest in _ENTRY.iter_unpack(info.table):
                self._pending.discard(raw)
        packs = [info for info, _staged in self._packs]
        with self._loose_lock:
            self._loose, self._loose_ids = [], set()
        self._packs = []
        return packs

    def publish(self) -> list[PackInfo]:
        """Seal the last pack and move every staged object into `objects/`; returns the
        packs, which the caller must record in the index right away (under the store
        lock: see core.Core.commit_objects)."""
        self._flush_staged()
        self._seal()
        self._settle_sealing()
        for oid, staged in self._loose:
            self.store.publish_loose(oid, staged)
        for info, staged in self._packs:
            self.store.publish_pack(info, staged)
        self._done = True
        return [info for info, _staged in self._packs]

    def abort(self) -> None:
        """Drop everything staged (nothing of it was ever visible)."""
        self._staged.clear()
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        while self._sealing:   # (each ends within one write and an fsync)
            future, tmp = self._sealing.popleft()
            _settle(future)
            fileio.unlink_quietly(tmp)
        for _oid, staged in self._loose:
            fileio.unlink_quietly(staged)
        for _info, staged in self._packs:
            fileio.unlink_quietly(staged)
        self._loose.clear()
        self._packs.clear()
        self._done = True
        self.kept.close()


class _KeptTrees:
    """The tree objects an ingest took, readable by id until it ends: in an unnamed
    temp file (memory stays flat: the trees of a million-file commit are 95 MB), each
    read checked against its id by the caller (`ObjectStore.read`)."""

    def __init__(self, tmp_dir: Path) -> None:
        self._dir = tmp_dir
        self._file: Any = None
        self._at: dict[str, tuple[int, int]] = {}
        self._end = 0
        self._lock = threading.Lock()

    def keep(self, oid: str, data: bytes | memoryview) -> None:
        with self._lock:
            if oid in self._at:
                return
            if self._file is None:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._file = tempfile.TemporaryFile(dir=self._dir)
            fileio.write_all(self._file.fileno(), data)   # (appended: reads use pread)
            self._at[oid] = (self._end, len(data))
            self._end += len(data)

    def read(self, oid: str) -> bytes | None:
        with self._lock:
            where = self._at.get(oid)
            if where is None or self._file is None:
                return None
            data = os.pread(self._file.fileno(), where[1], where[0])
        return data if len(data) == where[1] else None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._at.clear()


_SEALERS: ThreadPoolExecutor | None = None
_SEALERS_LOCK = threading.Lock()


def _sealer_pool() -> ThreadPoolExecutor:
    """The threads that seal packs for every ingest of the process."""
    global _SEALERS
    with _SEALERS_LOCK:
        if _SEALERS is None:
            _SEALERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dsv-seal")
        return _SEALERS


def _settle(future: Future[Any]) -> None:
    """Wait until `future` is done, whatever it raised, Ctrl-C included: its file must not
    be removed while it is still written."""
    while True:
        try:
            future.exception()
            return
        except KeyboardInterrupt:
            continue


# ---- staging directories ----------------------------------------------------------------

STAGE_PREFIX = "stage-"


MAKING_PREFIX = "making-"
"""A staging directory being made: locked, then renamed to its `stage-` name, so that no
other process's clean-up ever sees it unlocked."""


def _make_stage(tmp_root: Path) -> tuple[int, Path]:
    """A new staging directory under `tmp_root`, flock'd: (its fd, its path)."""
    tmp_root.mkdir(exist_ok=True)
    while True:
        name = os.urandom(8).hex()
        making = tmp_root / f"{MAKING_PREFIX}{name}"
        try:
            os.mkdir(making, 0o755)
            break
        except FileExistsError:
            continue
    fd = os.open(making, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = tmp_root / f"{STAGE_PREFIX}{name}"
    os.rename(making, path)
    return fd, path


def _remove_stage(fd: int, path: str) -> None:
    """Empty and remove a staging directory whose flock `fd` holds."""
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass  # dsv puts only files here; anything else is left, and so is the directory
    try:
        os.rmdir(path)
    except OSError:
        pass


def remove_dead_stages(tmp_root: str | os.PathLike[str]) -> int:
    """Remove the staging directories of processes that are gone (their flock is free);
    returns how many. Live writers' directories are left alone."""
    removed = 0
    try:
        names = os.listdir(tmp_root)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(tmp_root, name)
        if name.startswith(MAKING_PREFIX):
            # Left by a process killed between making and naming it (an hour is far more
            # than that takes): empty, and never a live writer's.
            try:
                if os.lstat(path).st_mtime < time.time() - 3600:
                    os.rmdir(path)
            except OSError:
                pass
            continue
        if not name.startswith(STAGE_PREFIX):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not a directory dsv made
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live writer's
        try:
            _remove_stage(fd, path)
            removed += 1
        finally:
            os.close(fd)
    return removed


def live_stages(tmp_root: str | os.PathLike[str], own: Path | None) -> int:
    """How many staging directories other than `own` belong to live processes (writers
    that may hold objects the index names but no version reaches yet: an import between
    its batches)."""
    count = 0
    try:
        names = os.listdir(tmp_root)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(tmp_root, name)
        if not name.startswith(STAGE_PREFIX) or (own is not None and path == str(own)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            count += 1
        finally:
            os.close(fd)
    return count
