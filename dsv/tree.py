"""Manifests as Merkle trees: one tree object per directory, shared between versions.

Owns the tree object format (canonical JSON, see docs/format.md), building trees from a
flat manifest (or updating a stored tree path by path: `update_tree`), and flattening
them back. A version that changes k files writes only the
k · depth trees on their paths; every other directory keeps its old id. Must never touch
the working directory or the index.
"""

from __future__ import annotations

import functools
import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from blake3 import blake3

from .errors import CorruptObject, InvalidInput, UnsafePath
from .hashing import hash_bytes, is_hash
from .jsonio import load_bounded
# Re-exported: a tree is made of these kinds and entries.
from .model import DIR as DIR
from .model import FILE as FILE
from .model import LINK as LINK
from .model import Entry as Entry
from .model import Manifest as Manifest
from .paths import MAX_PATH_BYTES, check_links, check_name, check_symlink_target, mode_class

TREE_FORMAT = 1
MAX_TREE_ENTRIES = 10_000_000
MAX_TREE_BYTES = 256 << 20    # = objects.MAX_PACKED_OBJECT: every tree fits in a pack
MAX_SIZE = 1 << 62            # bytes a file or a directory may claim
# Bounds on what one version may expand to, checked over the DAG of its trees before
# anything is flattened (a tree may name one child many times: 60 KB of hostile trees
# can describe 2^40 paths).
MAX_VERSION_PATHS = 16_000_000
MAX_TREE_DEPTH = MAX_PATH_BYTES // 2   # a path of 4096 bytes has at most 2048 parts
SHARD_ENTRIES = 512
"""A directory (or a shard of one) with more entries than this is split in 16 shards by
the next hex digit of blake3(name): a one-file change in a directory of any size then
rewrites one small leaf and the shard nodes above it (format.md, "Sharded directories")."""
MAX_SHARD_DEPTH = 64                  # hex digits in a blake3 hash
MAX_CHUNK_BYTES = (1 << 20) - 1
"""The longest chunk a chunk list may name (dsv cuts at most chunking.MAX_CHUNK): below
objects.PACK_THRESHOLD, so a chunk is always a packed object, never a loose one."""
MAX_LIST_CHUNKS = MAX_TREE_BYTES // 76
"""Chunks one list may name: each takes 76 bytes or more of its JSON."""

Row = tuple[str, str, int, int, str, str]
"""One directory entry: (name, kind, mode, size, oid, chunks). `oid` is the blake3 of a
file's whole bytes (or a symlink's target, or a directory's tree); `chunks` names the
chunk list of a file stored in content-defined chunks, and is "" for everything else."""


class ChunkList(NamedTuple):
    """How a file stored in content-defined chunks is put together: the blake3 of its
    whole bytes (what its tree row names it by, and what `b3sum` prints), its size, and
    its chunks in order, each (object id, length)."""

    oid: str
    size: int
    chunks: list[tuple[str, int]]


class Node(NamedTuple):
    """One tree object, decoded: a directory's whole tree (`prefix` None), a shard node
    (`shards`: the (hex digit, child) of each non-empty shard), a leaf of a sharded
    directory (`rows` whose names' hashes start with `prefix`), or a chunked file's chunk
    list (`chunks`; no rows, no shards)."""

    rows: list[Row]
    shards: list[tuple[str, str]]
    prefix: str | None
    chunks: ChunkList | None = None

    @property
    def links(self) -> list[str]:
        """The tree objects this one names: subdirectories' trees, chunked files' chunk
        lists and shards."""
        return [r[5] or r[4] for r in self.rows if r[1] == DIR or r[5]] + \
            [c for _d, c in self.shards]


def name_hash(name: str) -> str:
    """The hex blake3 of a name: which shard it lives in, at every level."""
    return blake3(name.encode("utf-8", "surrogateescape")).hexdigest()


def encode_tree(entries: list[Row]) -> bytes:
    """Serialise sorted rows canonically."""
    return json.dumps({"entries": _wire(entries), "type": "tree", "v": TREE_FORMAT},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _wire(rows: list[Row]) -> list[Any]:
    """Rows as a tree object holds them: five fields, a sixth (the chunk list) only for a
    chunked file, so trees without one keep the ids they had before chunks existed."""
    return [r if r[5] else r[:5] for r in rows]


def decode_tree(data: bytes, oid: str = "?", trusted: bool = False) -> list[Row]:
    """The rows of one tree object that holds entries (a directory's tree, or a leaf of a
    sharded one), validating every entry unless it is `trusted`; CorruptObject for
    anything else."""
    node = decode_node(data, oid, trusted)
    if node.shards:
        raise CorruptObject(f"object {oid[:12]} is a shard node, not a tree of entries")
    return node.rows


def decode_node(data: bytes, oid: str = "?", trusted: bool = False) -> Node:
    """Parse one tree object of any kind, validating it unless it is `trusted`.

    Trees enter the local store only after validation (dsv wrote them, or they were
    checked when fetched), so reads from the store skip the per-entry checks; every path
    is still checked again where it touches the filesystem. How objects fit together (a
    shard's prefix extends its parent's by its digit) is checked where they are walked
    as a directory (`entries`, `flatten`).
    """
    try:
        # Trees in the store were validated on the way in; trees from outside are bounded.
        # (no depth walk: every value a tree may hold is checked for its exact shape below)
        obj = json.loads(data) if trusted else load_bounded(data, MAX_TREE_BYTES,
                                                           max_depth=None)
        kind = obj.get("type")
        if obj.get("v") != TREE_FORMAT or kind not in ("tree", "leaf", "shards", "chunks"):
            raise ValueError("not a tree")
        if kind == "chunks":
            return Node([], [], None, _chunk_list(obj, oid, trusted))
        prefix = obj["prefix"] if kind != "tree" else None
        if prefix is not None and (not isinstance(prefix, str) or prefix.strip("0123456789abcdef")
                                   or (kind == "leaf" and not 0 < len(prefix) <= MAX_SHARD_DEPTH)
                                   or (kind == "shards" and len(prefix) >= MAX_SHARD_DEPTH)):
            raise ValueError("bad prefix")
        if kind == "shards":
            return Node([], _shards(obj["shards"], oid, trusted), prefix)
        rows = obj["entries"]
        if not isinstance(rows, list):
            raise ValueError("not a tree")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptObject(f"object {oid[:12]} is not a valid tree") from None
    if trusted:
        for row in rows:
            if len(row) == 5:
                row.append("")
        return Node(rows, [], prefix)
    out = _rows(rows, oid)
    if prefix and any(not name_hash(r[0]).startswith(prefix) for r in out):
        raise CorruptObject(f"tree {oid[:12]} holds a name that is not in its shard")
    return Node(out, [], prefix)


def _shards(shards: object, oid: str, trusted: bool) -> list[tuple[str, str]]:
    if trusted:
        return [(d, c) for d, c in shards]  # type: ignore[attr-defined]
    if not isinstance(shards, list) or not shards or len(shards) > 16:
        raise ValueError("bad shards")
    out: list[tuple[str, str]] = []
    for row in shards:
        if not isinstance(row, list) or len(row) != 2:
            raise ValueError("bad shards")
        digit, child = row
        if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789abcdef" \
                or not isinstance(child, str) or not is_hash(child) or \
                (out and digit <= out[-1][0]):
            raise ValueError("bad shards")
        out.append((digit, child))
    return out


def _rows(rows: list[Any], oid: str) -> list[Row]:
    """Validated entries of a tree object (checked row by row with the cheapest tests
    first; the children's ids all at once)."""
    if len(rows) > MAX_TREE_ENTRIES:
        raise CorruptObject(f"tree {oid[:12]} has too many entries")
    previous = b""
    out: list[Row] = []
    for row in rows:
        # (`type(...) is` rather than isinstance: a JSON true is no mode or size)
        if type(row) is not list or len(row) != 5 and (len(row) != 6 or row[1] != FILE or
                                                        not is_hash(row[5])):
            raise CorruptObject(f"tree {oid[:12]} has a malformed entry")
        name, kind, mode, size, child = row[:5]
        if (type(name) is not str or type(kind) is not str or kind not in _KINDS
                or type(mode) is not int
                or type(size) is not int or size < 0 or not 0 <= mode <= 0o7777
                or type(child) is not str or len(child) != 64):
            raise CorruptObject(f"tree {oid[:12]} has a malformed entry")
        if size > MAX_SIZE:
            raise CorruptObject(f"tree {oid[:12]} claims an impossible size for {name!r}")
        _check_name(name)
        encoded = name.encode()
        if encoded <= previous and out:
            raise CorruptObject(f"tree {oid[:12]} is not sorted or repeats a name")
        previous = encoded
        out.append((name, kind, mode, size, child, row[5] if len(row) == 6 else ""))
    if out and not _all_hex("".join(r[4] for r in out)):
        raise CorruptObject(f"tree {oid[:12]} has a malformed entry")
    return out


_KINDS = frozenset((FILE, LINK, DIR))
_check_name = functools.lru_cache(maxsize=1 << 16)(check_name)
"""`paths.check_name`, remembering the names that passed (the trees of a history repeat
most names: a clone validates each once)."""


def _all_hex(text: str) -> bool:
    """Whether `text` is lowercase hex digits only (many ids joined: one pass in C; a
    character that is not ASCII becomes "?", which is no digit)."""
    return not text.encode("ascii", "replace").translate(None, b"0123456789abcdef")


def node_at(read_tree: Callable[[str], bytes], oid: str, prefix: str,
            trusted: bool = True) -> Node:
    """The object `oid` where a walk expects it (see `check_place`)."""
    return check_place(decode_node(read_tree(oid), oid, trusted), oid, prefix)


def check_place(node: Node, oid: str, prefix: str) -> Node:
    """`node` if it may stand where a walk met it: a directory's own tree or top shard
    node (`prefix` ""), or a shard of prefix `prefix` (the child of digit d under a node
    of prefix p has prefix p + d); CorruptObject for an object out of place. Since a
    shard's prefix is part of its bytes, each object has one place only."""
    if (node.prefix or "") != prefix or node.chunks is not None:
        raise CorruptObject(f"tree {oid[:12]} is not where it is named (a shard out of place)")
    return node


def _chunk_list(obj: dict[str, Any], oid: str, trusted: bool) -> ChunkList:
    """A chunk list's fields (raising ValueError, KeyError or TypeError when they are
    not what dsv writes, unless `trusted`)."""
    chunks = obj["chunks"]
    if trusted:
        return ChunkList(obj["oid"], obj["size"], [(c, n) for c, n in chunks])
    whole, size = obj["oid"], obj["size"]
    if not isinstance(whole, str) or not is_hash(whole) or type(size) is not int or \
            not isinstance(chunks, list) or len(chunks) > MAX_LIST_CHUNKS:
        raise ValueError("bad chunk list")
    out: list[tuple[str, int]] = []
    total = 0
    for row in chunks:
        if type(row) is not list or len(row) != 2:
            raise ValueError("bad chunk list")
        child, length = row
        if type(child) is not str or len(child) != 64 or type(length) is not int or \
                not 0 < length <= MAX_CHUNK_BYTES:
            raise ValueError("bad chunk list")
        total += length
        out.append((child, length))
    if total != size or (out and not _all_hex("".join(c for c, _n in out))):
        raise ValueError("bad chunk list")
    return ChunkList(whole, size, out)


def is_chunk_list(data: bytes | memoryview) -> bool:
    """Whether a tree object's bytes are a chunk list (its first key, sorted, is
    "chunks"; every other kind of tree object begins with another)."""
    return bytes(data[:10]) == b'{"chunks":'


def encode_chunks(chunks: ChunkList) -> bytes:
    """A chunk list's canonical bytes (sorted keys, no whitespace, like a shard's)."""
    return _encode({"chunks": [[c, n] for c, n in chunks.chunks], "oid": chunks.oid,
                    "size": chunks.size, "type": "chunks"})


def read_chunks(read_tree: Callable[[str], bytes], oid: str, entry_oid: str, size: int,
                trusted: bool = True) -> ChunkList:
    """The chunk list `oid` of a file whose row names its whole bytes `entry_oid` and
    `size`; CorruptObject when the object is no chunk list or describes another file."""
    chunks = decode_node(read_tree(oid), oid, trusted).chunks
    if chunks is None or chunks.oid != entry_oid or chunks.size != size:
        raise CorruptObject(f"object {oid[:12]} is not the chunk list of file "
                            f"{entry_oid[:12]}")
    return chunks


def entries(oid: str, read_tree: Callable[[str], bytes], trusted: bool = True) -> list[Row]:
    """Every entry of the directory whose tree is `oid` (its shards gathered), by name."""
    return _gather(node_at(read_tree, oid, "", trusted), "", read_tree, trusted, oid)


def _gather(node: Node, prefix: str, read_tree: Callable[[str], bytes],
            trusted: bool = True, oid: str = "?") -> list[Row]:
    """The entries `node` (standing at `prefix`) and the shards below it hold, by name."""
    if not node.shards:
        return node.rows
    out: list[Row] = list(node.rows)
    stack = [(child, prefix + digit) for digit, child in node.shards]
    while stack:
        child, at = stack.pop()
        sub = node_at(read_tree, child, at, trusted)
        out.extend(sub.rows)
        stack.extend((c, at + d) for d, c in sub.shards)
        if len(out) > MAX_TREE_ENTRIES:
            raise CorruptObject(f"tree {oid[:12]} has too many entries")
    out.sort(key=lambda r: r[0].encode("utf-8", "surrogateescape"))
    return out


NodeLoader = Callable[[str, str], Node]
"""(oid, prefix) → the node there (`node_at` over some `read_tree`)."""


def lookup(oid: str, read_tree: Callable[[str], bytes], name: str,
           load: NodeLoader | None = None) -> Row | None:
    """The entry `name` of the directory whose tree is `oid`, reading only the shards on
    the way to it (through `load`, if given)."""
    if load is None:
        load = functools.partial(node_at, read_tree)
    node = load(oid, "")
    digits = name_hash(name) if node.shards else ""
    prefix = ""
    while node.shards:
        if len(prefix) >= len(digits):
            raise CorruptObject(f"tree {oid[:12]} has shards deeper than a hash")
        digit = digits[len(prefix)]
        child = dict(node.shards).get(digit)
        if child is None:
            return None
        prefix += digit
        node = load(child, prefix)
    for row in node.rows:
        if row[0] == name:
            return row
    return None


def build_tree(manifest: Manifest, store_tree: Callable[[str, bytes], None]) -> tuple[str, int]:
    """Write the trees of `manifest` bottom-up through `store_tree(oid, bytes)`.

    Returns the root tree id and the total size. `store_tree` is called for every
    directory; it skips ids already stored, which is what makes unchanged directories free.
    """
    children: dict[str, dict[str, tuple[str, int, int, str, str]]] = {"": {}}
    for path, entry in manifest.items():
        parent, _, name = path.rpartition("/")
        node = children.get(parent)
        if node is None:
            _add_dirs(children, parent)
            node = children[parent]
        node[name] = (entry.kind, entry.mode, entry.size, entry.oid, entry.chunks)
    # Deepest directories first, so each parent sees its children's ids.
    for directory in sorted(children, key=lambda d: d.count("/") + (d != ""), reverse=True):
        node = children[directory]
        # Code-point order is UTF-8 byte order (names never hold surrogates).
        rows = [(name, *node[name]) for name in sorted(node)]
        oid = _store_dir(rows, store_tree) if len(rows) > SHARD_ENTRIES else \
            _store(encode_tree(rows), store_tree, directory)
        if directory:
            parent, _, name = directory.rpartition("/")
            if isinstance(children[parent].get(name), tuple) and children[parent][name][0] != DIR:
                raise InvalidInput(f"{directory} is both a file and a directory")
            children[parent][name] = (DIR, 0, sum(r[3] for r in rows), oid, "")
        else:
            return oid, sum(r[3] for r in rows)
    raise AssertionError("unreachable: the root is always built last")


class TreeBuilder:
    """`build_tree` for entries that arrive in path order (a walk's): each directory's
    tree is written as soon as the paths leave it, so memory holds only the directories
    on the current path, not the manifest. Gives the ids `build_tree` gives."""

    def __init__(self, store_tree: Callable[[str, bytes], None]) -> None:
        self._store_tree = store_tree
        self._open: list[tuple[str, list[Row]]] = [("", [])]  # the current path's dirs
        self._last = ""

    def add(self, path: str, entry: Entry) -> None:
        """The next file or link, its path after every path added before."""
        if path <= self._last:
            raise AssertionError(f"bug in dsv: {path} added to a tree after {self._last}")
        self._last = path
        parent, _, name = path.rpartition("/")
        top = self._open[-1][0]
        while top and parent != top and not parent.startswith(top + "/"):
            self._close()
            top = self._open[-1][0]
        if parent != top:
            rest = parent[len(top) + 1:] if top else parent
            for part in rest.split("/"):
                top = f"{top}/{part}" if top else part
                self._open.append((top, []))
        self._open[-1][1].append((name, entry.kind, entry.mode, entry.size, entry.oid,
                                  entry.chunks))

    def finish(self) -> tuple[str, int]:
        """Write what is still open; the root tree's id and the total size."""
        while len(self._open) > 1:
            self._close()
        return self._write(*self._open.pop())

    def _close(self) -> None:
        directory, rows = self._open.pop()
        oid, size = self._write(directory, rows)
        self._open[-1][1].append((directory.rpartition("/")[2], DIR, 0, size, oid, ""))

    def _write(self, directory: str, rows: list[Row]) -> tuple[str, int]:
        rows.sort()   # names are unique: by name (code-point order is UTF-8 byte order)
        oid = _store_dir(rows, self._store_tree) if len(rows) > SHARD_ENTRIES else \
            _store(encode_tree(rows), self._store_tree, directory)
        return oid, sum(r[3] for r in rows)


_KEEP: Any = object()
"""In `update_tree`, a name whose file (or directory) the changes leave as it was."""


def update_tree(root: str, root_size: int, changes: Mapping[str, Entry | None],
                read_tree: Callable[[str], bytes],
                store_tree: Callable[[str, bytes], None]) -> tuple[str, int]:
    """The tree of `flatten(root)` with `changes` applied (path → its new entry, or None to
    remove the path; removing a path that is not there changes nothing), written through
    `store_tree`; returns the new root id and total size (`root_size` is the old one).

    Only the trees and shards on the changed paths are read and written: the rest keeps
    its ids, so a one-file change in a directory of 200,000 entries costs a few objects,
    not a re-encoding of every leaf. For a `root` that `build_tree` wrote, the result is
    exactly what `build_tree` writes for the changed manifest: every rewritten object is
    encoded by the same code, and each directory or shard whose size crosses
    SHARD_ENTRIES is re-split or gathered back into one leaf (or tree) as `build_tree`
    would split it. Like `build_tree`, a path that is both a file and a directory is
    InvalidInput, and a directory left with no entries disappears.
    """
    if not changes:
        return root, root_size
    files: dict[str, dict[str, Row | None]] = {}    # directory → name → new row / None
    dirs = {""}
    for path, entry in changes.items():
        parent, _, name = path.rpartition("/")
        files.setdefault(parent, {})[name] = None if entry is None else \
            (name, entry.kind, entry.mode, entry.size, entry.oid, entry.chunks)
        while parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    by_depth = sorted(dirs, key=lambda d: d.count("/") + (d != ""))
    # Where each directory on a changed path stood: its row in the old tree (None if the
    # old tree had no directory there), parents first.
    old: dict[str, Row | None] = {"": ("", DIR, 0, root_size, root, "")}
    for directory in by_depth[1:]:
        parent, _, name = directory.rpartition("/")
        above = old[parent]
        old[directory] = lookup(above[4], read_tree, name) \
            if above is not None and above[1] == DIR else None
    # Deepest first, so each parent sees its changed subdirectories' new rows.
    subdirs: dict[str, dict[str, Row | None]] = {}
    updater = _Updater(read_tree, store_tree)
    for directory in reversed(by_depth):
        here: dict[str, tuple[Any, Any]] = {
            name: (row, _KEEP) for name, row in files.get(directory, {}).items()}
        for name, row in subdirs.get(directory, {}).items():
            here[name] = (here[name][0] if name in here else _KEEP, row)
        new = updater.directory(directory, old[directory], here)
        if not directory:
            if new is None:
                return _store(encode_tree([]), store_tree, ""), 0
            return new[4], new[3]
        parent, _, name = directory.rpartition("/")
        subdirs.setdefault(parent, {})[name] = None if new is None else \
            (name, DIR, 0, new[3], new[4], "")
    raise AssertionError("unreachable: the root is always updated last")


class _Updater:
    """The directory and shard updates of one `update_tree` call.

    A change is (file, directory) for one name: the name's new file row, None (the file
    goes) or _KEEP, and the same for a subdirectory of that name (its new row, None when
    it was left empty, or _KEEP when nothing under it changed)."""

    def __init__(self, read_tree: Callable[[str], bytes],
                 store_tree: Callable[[str, bytes], None]) -> None:
        self.read_tree = read_tree
        self.store_tree = store_tree
        self.hashes: dict[str, str] = {}

    def directory(self, path: str, old: Row | None, changes: dict[str, tuple[Any, Any]]
                  ) -> Row | None:
        """The new row of directory `path` (None: it holds nothing now)."""
        old_rows: list[Row] = []
        if old is not None and old[1] == DIR:
            node = node_at(self.read_tree, old[4], "")
            if node.shards:
                small = self._rows_if_small(node, "", changes)
                if small is None:
                    oid, delta = self._update_node(node, "", changes, path)
                    assert oid is not None  # it keeps more than SHARD_ENTRIES entries
                    return (path, DIR, 0, old[3] + delta, oid, "")
                old_rows = small
            else:
                old_rows = node.rows
        rows = _merged(old_rows, changes, path)
        if not rows:
            return None
        oid = _store_dir(rows, self.store_tree) if len(rows) > SHARD_ENTRIES else \
            _store(encode_tree(rows), self.store_tree, path)
        return (path, DIR, 0, sum(r[3] for r in rows), oid, "")

    def _shard(self, oid: str | None, prefix: str, changes: dict[str, tuple[Any, Any]],
               path: str) -> tuple[str | None, int]:
        """The new id of the shard at `prefix` (None: it is empty now) and how much its
        size changed."""
        old_rows: list[Row] = []
        if oid is not None:
            node = node_at(self.read_tree, oid, prefix)
            if node.shards:
                small = self._rows_if_small(node, prefix, changes)
                if small is None:
                    return self._update_node(node, prefix, changes, path)
                old_rows = small
            else:
                old_rows = node.rows
        rows = _merged(old_rows, changes, path)
        delta = sum(r[3] for r in rows) - sum(r[3] for r in old_rows)
        if not rows:
            return None, delta
        if len(rows) > SHARD_ENTRIES and len(prefix) < MAX_SHARD_DEPTH:
            hashes = [self._hash(r[0]) for r in rows]
            order = sorted(range(len(rows)), key=hashes.__getitem__)
            return _store_shard([hashes[i] for i in order], order, rows, 0, len(rows), prefix,
                                self.store_tree), delta
        return _store(_encode({"entries": _wire(rows), "prefix": prefix, "type": "leaf"}),
                      self.store_tree, prefix), delta

    def _update_node(self, node: Node, prefix: str, changes: dict[str, tuple[Any, Any]],
                     path: str) -> tuple[str | None, int]:
        """A shard node that stays one: only the shards the changes fall in are redone."""
        depth = len(prefix)
        by_digit: dict[str, dict[str, tuple[Any, Any]]] = {}
        for name, change in changes.items():
            by_digit.setdefault(self._hash(name)[depth], {})[name] = change
        shards = dict(node.shards)
        delta = 0
        for digit, sub in by_digit.items():
            child, moved = self._shard(shards.get(digit), prefix + digit, sub, path)
            delta += moved
            if child is None:
                shards.pop(digit, None)
            else:
                shards[digit] = child
        if not shards:
            return None, delta
        data = _encode({"prefix": prefix, "shards": [[d, shards[d]] for d in sorted(shards)],
                        "type": "shards"})
        return _store(data, self.store_tree, prefix), delta

    def _rows_if_small(self, node: Node, prefix: str, changes: dict[str, tuple[Any, Any]]
                       ) -> list[Row] | None:
        """Every entry under shard node `node`, by name, when the changes could leave it
        with SHARD_ENTRIES or fewer (it is then one leaf again); None when they cannot.
        A node holds more than SHARD_ENTRIES entries, so only removals can shrink it that
        far, and only entries up to that many plus the removals are ever read."""
        removals = sum(1 for f, d in changes.values()
                       if not isinstance(f, (tuple, list)) and not isinstance(d, (tuple, list)))
        if not removals:
            return None
        limit = SHARD_ENTRIES + removals
        out: list[Row] = list(node.rows)
        stack = [(child, prefix + digit) for digit, child in node.shards]
        while stack:
            child, at = stack.pop()
            sub = node_at(self.read_tree, child, at)
            out.extend(sub.rows)
            if len(out) > limit:
                return None
            stack.extend((c, at + d) for d, c in sub.shards)
        out.sort(key=lambda r: r[0])
        return out

    def _hash(self, name: str) -> str:
        digits = self.hashes.get(name)
        if digits is None:
            digits = self.hashes[name] = name_hash(name)
        return digits


def _merged(rows: list[Row], changes: dict[str, tuple[Any, Any]], directory: str
            ) -> list[Row]:
    """`rows` (sorted by name) with `changes` applied, sorted by name."""
    by_name = {r[0]: r for r in rows}
    for name, (file, sub) in changes.items():
        old = by_name.get(name)
        if file is _KEEP:
            file = old if old is not None and old[1] != DIR else None
        if sub is _KEEP:
            sub = old if old is not None and old[1] == DIR else None
        if file is not None and sub is not None:
            path = f"{directory}/{name}" if directory else name
            raise InvalidInput(f"{path} is both a file and a directory")
        new = file if file is not None else sub
        if new is None:
            by_name.pop(name, None)
        else:
            by_name[name] = new
    # Code-point order is UTF-8 byte order (names never hold surrogates), as in build_tree.
    return [by_name[name] for name in sorted(by_name)]


def _store(data: bytes, store_tree: Callable[[str, bytes], None], directory: str) -> str:
    if len(data) > MAX_TREE_BYTES:
        raise InvalidInput(f"directory {directory or '.'} needs a tree object larger than "
                           f"{MAX_TREE_BYTES >> 20} MiB", hint="split it into subdirectories")
    oid = hash_bytes(data)
    store_tree(oid, data)
    return oid


def _store_dir(rows: list[Row], store_tree: Callable[[str, bytes], None]) -> str:
    """Store a directory's sorted `rows` (more than SHARD_ENTRIES of them) as a shard node
    over 16 shards by the first digit of each name's hash, and so on down; returns its
    id. A shard with at most SHARD_ENTRIES entries is a leaf, a larger one a shard node
    again. Which shard a name is in depends on the name alone, so inserts never move
    other names. (Rows are ordered by hash once; every shard is then a contiguous run.)"""
    by_name = [name_hash(row[0]) for row in rows]
    order = sorted(range(len(rows)), key=by_name.__getitem__)
    return _store_shard([by_name[i] for i in order], order, rows, 0, len(rows), "",
                        store_tree)


def _store_shard(hashes: list[str], order: list[int], rows: list[Row], lo: int, hi: int,
                 prefix: str, store_tree: Callable[[str, bytes], None]) -> str:
    """The shard node of prefix `prefix` over `rows[order[lo:hi]]` (`hashes` in the same
    order, ascending)."""
    shards = []
    start = lo
    for digit in "0123456789abcdef":
        end = bisect_right(hashes, prefix + digit + "g", start, hi)  # ("g" follows any hex)
        if end > start:
            sub_prefix = prefix + digit
            if end - start > SHARD_ENTRIES and len(sub_prefix) < MAX_SHARD_DEPTH:
                child = _store_shard(hashes, order, rows, start, end, sub_prefix,
                                     store_tree)
            else:
                leaf = [rows[i] for i in sorted(order[start:end])]  # back in name order
                child = _store(_encode({"entries": _wire(leaf), "prefix": sub_prefix,
                                        "type": "leaf"}), store_tree, sub_prefix)
            shards.append([digit, child])
        start = end
    return _store(_encode({"prefix": prefix, "shards": shards, "type": "shards"}), store_tree,
                  prefix)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps({**obj, "v": TREE_FORMAT}, separators=(",", ":"),
                      ensure_ascii=False, sort_keys=True).encode("utf-8")


def _add_dirs(children: dict[str, dict[str, tuple[str, int, int, str, str]]],
              directory: str) -> None:
    """Register `directory` and its missing ancestors; each parent's row for a child
    directory is filled in when that child is built (deepest first)."""
    while directory not in children:
        children[directory] = {}
        directory = directory.rpartition("/")[0]


def check_expansion(root: str, read_tree: Callable[[str], bytes],
                    limit: int = MAX_VERSION_PATHS,
                    seen: tuple[dict[str, tuple[int, int]], dict[str, str]] | None = None,
                    trusted: bool = True) -> int:
    """How many paths tree `root` expands to, computed with each distinct tree object
    visited once (and validated, unless `trusted`), every object checked to stand where
    it is named (`node_at`: so shard chains end within MAX_SHARD_DEPTH); CorruptObject
    beyond `limit` paths or MAX_TREE_DEPTH directory levels (a shard adds objects, not
    levels). Checking many
    versions' trees, pass the same `seen` (empty dicts at first) to every call: a tree
    they share is then walked once."""
    counts: dict[str, tuple[int, int]]          # tree object → (paths, height)
    placed: dict[str, str]                      # tree object → the prefix it stands at
    counts, placed = seen if seen is not None else ({}, {})
    stack: list[tuple[str, str, bool]] = [(root, "", False)]
    nodes: dict[str, Node] = {}

    def place(oid: str, prefix: str) -> bool:
        """Whether `oid` is new; CorruptObject if it was met at another place before."""
        if placed.setdefault(oid, prefix) != prefix:
            raise CorruptObject(f"tree {oid[:12]} is named in two different places")
        return oid not in counts

    place(root, "")
    while stack:
        oid, prefix, children_done = stack.pop()
        if oid in counts:
            continue
        node = nodes.get(oid)
        if node is None:
            node = nodes[oid] = node_at(read_tree, oid, prefix, trusted)
        if not children_done:
            stack.append((oid, prefix, True))
            stack.extend((r[4], "", False) for r in node.rows
                         if r[1] == DIR and place(r[4], ""))
            stack.extend((c, prefix + d, False) for d, c in node.shards
                         if place(c, prefix + d))
            continue
        del nodes[oid]
        paths, height = 0, 1
        for row in node.rows:
            if row[1] == DIR:
                sub_paths, sub_height = counts[row[4]]
                paths += sub_paths
                height = max(height, sub_height + 1)
            else:
                paths += 1
        for _digit, child in node.shards:
            sub_paths, sub_height = counts[child]
            paths += sub_paths
            height = max(height, sub_height)
        if paths > limit:
            raise CorruptObject(f"tree {root[:12]} expands to more than {limit:,} paths",
                                hint="a version that large is refused (a hostile tree can "
                                     "name one directory many times)")
        if height > MAX_TREE_DEPTH:
            raise CorruptObject(f"tree {root[:12]} nests directories more than "
                                f"{MAX_TREE_DEPTH} deep")
        counts[oid] = (paths, height)
    return counts[root][0]


def same_content(a: str, b: str, read_tree: Callable[[str], bytes]) -> bool:
    """Whether trees `a` and `b` hold the same paths, kinds, contents and mode classes
    (trees written before modes were classes may differ only in finer bits, and before
    directories were sharded, in their sharding). Walks only where the ids differ (two
    sharded directories shard by shard), and stops at the first real difference."""
    stack = [(a, b, "")]   # two objects standing at the same place
    while stack:
        x, y, prefix = stack.pop()
        if x == y:
            continue
        nx, ny = node_at(read_tree, x, prefix), node_at(read_tree, y, prefix)
        if nx.shards and ny.shards:
            if [d for d, _c in nx.shards] != [d for d, _c in ny.shards]:
                return False
            stack.extend((cx, cy, prefix + d)
                         for (d, cx), (_d, cy) in zip(nx.shards, ny.shards, strict=True))
            continue
        rows_x, rows_y = _gather(nx, prefix, read_tree), _gather(ny, prefix, read_tree)
        if [r[0] for r in rows_x] != [r[0] for r in rows_y]:
            return False
        for (_n, kx, mx, _sx, ox, _cx), (_m, ky, my, _sy, oy, _cy) in zip(rows_x, rows_y,
                                                                         strict=True):
            if kx != ky:
                return False
            if kx == DIR:
                stack.append((ox, oy, ""))
            elif ox != oy or (kx == FILE and mode_class(mx) != mode_class(my)):
                return False
    return True


def is_empty(root: str, read_tree: Callable[[str], bytes]) -> bool:
    """Whether tree `root` has no entries (reading that one object)."""
    node = node_at(read_tree, root, "")
    return not node.rows and not node.shards


def empty_tree() -> tuple[str, bytes]:
    """The id and bytes of the tree with no entries."""
    data = encode_tree([])
    return hash_bytes(data), data


def flatten(root: str, read_tree: Callable[[str], bytes], prefix: str = "",
            trusted: bool = True) -> Manifest:
    """The flat manifest of tree `root` (optionally only the subtree at `prefix`)."""
    return dict(iter_files(root, read_tree, prefix, trusted))


def iter_files(root: str, read_tree: Callable[[str], bytes], prefix: str = "",
               trusted: bool = True, only: str | None = None,
               tally: list[int] | None = None,
               read_ahead: Callable[[str, Callable[[], list[str]]], None] | None = None
               ) -> Iterator[tuple[str, Entry]]:
    """(path, entry) of every file and link under tree `root` (only those of kind `only`,
    when given), as the walk meets them (nothing of the version is held but the
    directories still to visit). `tally`, when given, holds as its one item the number
    of files and links the walk met, once it is done (the count of the tree itself, not
    what a record says). `read_ahead`, when given, is told each tree before it is read,
    with what gives the next READ_AHEAD - 1 trees the walk will read (see
    `Core.read_trees_ahead`)."""
    count = 0
    stack = [(prefix, root, "")]   # (path, object, the shard prefix it must have)
    while stack:
        base, oid, shard = stack.pop()
        if read_ahead is not None:
            read_ahead(oid, lambda: [o for _b, o, _s in stack[:-READ_AHEAD:-1]])
        node = node_at(read_tree, oid, shard, trusted)
        for name, kind, mode, size, child, chunks in node.rows:
            if kind == DIR:
                stack.append((f"{base}/{name}" if base else name, child, ""))
                continue
            count += 1
            if count > MAX_VERSION_PATHS:
                raise CorruptObject(f"tree {root[:12]} expands to more than "
                                    f"{MAX_VERSION_PATHS:,} paths")
            if only is None or kind == only:
                yield f"{base}/{name}" if base else name, Entry(kind, mode, size, child, chunks)
        stack.extend((base, child, shard + digit) for digit, child in node.shards)
    if tally is not None:
        tally[:] = [count]


READ_AHEAD = 64
"""Trees a walk with `read_ahead` reads at once (a million-file version: 17,017 trees)."""


def iter_sorted(root: str, read_tree: Callable[[str], bytes], trusted: bool = True,
                prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """`iter_files` in the order of the path strings (worktree.walk's order, so the two
    can be merged): each directory's entries, its shards gathered, are sorted with a
    subdirectory keyed `name/`. Memory grows with the largest directory times the depth,
    never with the tree. (`prefix`: what each path starts with, as `dir/`.)"""
    count = 0
    stack = [iter(_sorted_dir(root, prefix, read_tree, trusted))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, (_name, kind, mode, size, child, chunks) = item
        if kind == DIR:
            stack.append(iter(_sorted_dir(child, path + "/", read_tree, trusted)))
            continue
        count += 1
        if count > MAX_VERSION_PATHS:
            raise CorruptObject(f"tree {root[:12]} expands to more than "
                                f"{MAX_VERSION_PATHS:,} paths")
        yield path, Entry(kind, mode, size, child, chunks)


def _sorted_dir(oid: str, prefix: str, read_tree: Callable[[str], bytes], trusted: bool
                ) -> list[tuple[str, Row]]:
    """(path, row) of the entries of the directory tree `oid` standing at `prefix`, in
    path order."""
    rows = _gather(node_at(read_tree, oid, "", trusted), "", read_tree, trusted, oid)
    items = [(prefix + row[0], row) for row in rows]
    items.sort(key=lambda item: item[0] + "/" if item[1][1] == DIR else item[0])
    return items


def diff_trees(a: str, b: str, read_tree: Callable[[str], bytes]
               ) -> Iterator[tuple[str, Entry | None, Entry | None]]:
    """(path, entry under `a`, entry under `b`) of every file or link that differs between
    trees `a` and `b` (None where one has none), reading only the directories whose ids
    differ: what changed between two versions costs what changed, not what they hold.
    A path that is a file on one side and a directory on the other yields the file, and
    the directory's files with None on the file's side."""
    stack: list[tuple[str, str | None, str | None]] = [("", a, b)]
    while stack:
        base, x, y = stack.pop()
        if x == y:
            continue
        for xs, ys in _differing_rows(x, y, read_tree):
            yield from _diff_rows(base, xs, ys, stack)


def _diff_rows(base: str, xs: dict[str, Row], ys: dict[str, Row],
               stack: list[tuple[str, str | None, str | None]]
               ) -> Iterator[tuple[str, Entry | None, Entry | None]]:
    """The files that differ between the rows `xs` and `ys` of one directory at `base`;
    the subdirectories that differ go on `stack` (for `diff_trees`)."""
    for name in xs.keys() | ys.keys():
        path = f"{base}/{name}" if base else name
        rx, ry = xs.get(name), ys.get(name)
        dx = rx[4] if rx is not None and rx[1] == DIR else None
        dy = ry[4] if ry is not None and ry[1] == DIR else None
        if dx != dy:
            stack.append((path, dx, dy))
        fx = Entry(*rx[1:]) if rx is not None and dx is None else None
        fy = Entry(*ry[1:]) if ry is not None and dy is None else None
        if fx != fy:
            yield path, fx, fy


def _differing_rows(x: str | None, y: str | None, read_tree: Callable[[str], bytes]
                    ) -> Iterator[tuple[dict[str, Row], dict[str, Row]]]:
    """The entries of directories `x` and `y` (by name) wherever they may differ: shards
    of the same digit are compared by id and read only when they differ, so a one-file
    change in a sharded directory costs its leaf, not the directory. Where the two are
    not sharded alike, the whole of each below that place (every name there has the
    same shard prefix on both sides)."""
    stack: list[tuple[str | None, str | None, str]] = [(x, y, "")]
    while stack:
        x, y, prefix = stack.pop()
        if x == y:
            continue
        nx = node_at(read_tree, x, prefix) if x is not None else None
        ny = node_at(read_tree, y, prefix) if y is not None else None
        if nx is not None and ny is not None and nx.shards and ny.shards:
            cx, cy = dict(nx.shards), dict(ny.shards)
            stack.extend((cx.get(d), cy.get(d), prefix + d) for d in cx.keys() | cy.keys())
            continue
        yield ({r[0]: r for r in _gather(nx, prefix, read_tree)} if nx is not None else {},
               {r[0]: r for r in _gather(ny, prefix, read_tree)} if ny is not None else {})


def find(root: str, read_tree: Callable[[str], bytes], path: str,
         load: NodeLoader | None = None, trusted: bool = True) -> Row | None:
    """The entry at `path` (not "") under tree `root`, reading only the trees and shards
    on the way to it (each validated unless `trusted`); None if there is none."""
    if load is None:
        load = functools.partial(node_at, read_tree, trusted=trusted)
    row: Row | None = None
    oid = root
    for part in path.split("/"):
        if row is not None and row[1] != DIR:
            return None
        row = lookup(oid, read_tree, part, load)
        if row is None:
            return None
        oid = row[4]
    return row


FIND_NODES_KEPT = 256
"""Decoded trees and shards `find_many` keeps while it looks paths up."""


def find_many(root: str, read_tree: Callable[[str], bytes],
              paths: Iterable[str]) -> dict[str, Row]:
    """`find` of many paths: the entries found, by path. Paths are looked up in order,
    so the paths of one directory decode its tree (and shards) once, whatever their
    number; at most FIND_NODES_KEPT decoded nodes are held."""
    kept: dict[tuple[str, str], Node] = {}

    def load(oid: str, prefix: str) -> Node:
        key = (oid, prefix)
        node = kept.pop(key, None)
        if node is None:
            node = node_at(read_tree, oid, prefix)
            if len(kept) >= FIND_NODES_KEPT:
                del kept[next(iter(kept))]  # (dicts keep order: the least recent)
        kept[key] = node
        return node

    out: dict[str, Row] = {}
    for path in sorted(paths):
        row = find(root, read_tree, path, load)
        if row is not None:
            out[path] = row
    return out


def files_under(root: str, read_tree: Callable[[str], bytes], paths: Iterable[str]
                ) -> dict[str, Entry]:
    """The files and links under tree `root` at or under each of `paths` (a path naming a
    directory stands for everything in it), reading only the trees on their way."""
    out: dict[str, Entry] = {}
    for path, row in find_many(root, read_tree, paths).items():
        if row[1] == DIR:
            out.update(iter_files(row[4], read_tree, path))
        else:
            out[path] = Entry(*row[1:])
    return out


def list_dir(root: str, read_tree: Callable[[str], bytes], path: str) -> list[Row]:
    """The rows of the directory at `path` (`""` is the root); raises KeyError if absent."""
    if not path:
        return entries(root, read_tree)
    row = find(root, read_tree, path)
    if row is None or row[1] != DIR:
        raise KeyError(path)
    return entries(row[4], read_tree)


def distinct_trees(root: str, read_tree: Callable[[str], bytes], trusted: bool = False
                   ) -> Iterable[tuple[str, Node]]:
    """(object id, node) of every tree object under `root` (chunk lists included), each
    distinct object once (a version that names one directory many times costs that
    directory once)."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        node = decode_node(read_tree(oid), oid, trusted)
        yield oid, node
        stack.extend(node.links)


def leaves(node: Node) -> dict[str, int]:
    """The blobs one tree object names directly, each with its size: unchunked files'
    and symlinks' contents, or a chunk list's chunks (what a remote locator places)."""
    found = {r[4]: r[3] for r in node.rows if r[1] != DIR and not r[5]}
    if node.chunks is not None:
        found.update(node.chunks.chunks)
    return found


def subtree_ids(root: str, read_tree: Callable[[str], bytes], base: str | None = None
                ) -> Iterable[tuple[str, str]]:
    """Every (kind, oid) reachable from `root`, each tree once: tree objects (chunk lists
    too) as DIR, blobs (chunks too) as their file's kind. A chunked file's whole-file id
    names no object and is not among them.

    With `base` (another tree, in the store), what `base` holds at the same place is left
    out: a subtree whose id is the same there (unread), a blob the same entry names there,
    a chunk its chunk list names there. Only the tree objects that differ are read, so
    what is beyond `base` costs what changed (a push after a commit of a few files, whose
    parent the remote holds whole). Everything left out is reachable from `base`."""
    if base is not None:
        for kind, oid, _size in _ids_beyond(root, base, read_tree):
            yield kind, oid
        return
    for oid, node in distinct_trees(root, read_tree):
        yield DIR, oid
        for _name, kind, _mode, _size, child, chunks in node.rows:
            if kind != DIR and not chunks:
                yield kind, child
        if node.chunks is not None:
            for child, _length in node.chunks.chunks:
                yield FILE, child


def _ids_beyond(root: str, base: str, read_tree: Callable[[str], bytes]
                ) -> Iterator[tuple[str, str, int]]:
    """(kind, oid, size) of `subtree_ids(root)` less what `base` holds at the same places
    (a tree object's size is -1): the two trees are walked side by side, node by node
    (shards paired by digit while both are sharded alike; otherwise a node is compared
    with the entries of the base's whole directory or shard there)."""
    seen: set[str] = set()
    stack: list[tuple[str, str | None]] = [(root, base)]
    while stack:
        oid, old = stack.pop()
        if oid == old or oid in seen:
            continue
        seen.add(oid)
        node = decode_node(read_tree(oid), oid)
        yield DIR, oid, -1
        was = decode_node(read_tree(old), old, trusted=True) if old is not None else None
        if node.chunks is not None:
            had = {c for c, _n in was.chunks.chunks} if was and was.chunks else set()
            for child, length in node.chunks.chunks:
                if child not in had:
                    yield FILE, child, length
            continue
        if node.shards:
            if was is not None and was.shards and was.prefix == node.prefix:
                by_digit = dict(was.shards)
                stack.extend((child, by_digit.get(digit)) for digit, child in node.shards)
            else:  # (the base's directory is not sharded like this one here)
                stack.extend((child, old) for _digit, child in node.shards)
            continue
        if was is None or was.chunks is not None:
            old_rows: dict[str, Row] = {}
        elif was.shards or was.prefix != node.prefix:
            old_rows = {r[0]: r for r in _gather(was, was.prefix or "", read_tree)}
        else:
            old_rows = {r[0]: r for r in was.rows}
        for name, kind, _mode, size, child, chunks in node.rows:
            there = old_rows.get(name)
            if kind == DIR:
                stack.append((child, there[4] if there and there[1] == DIR else None))
            elif chunks:
                stack.append((chunks, there[5] if there and there[5] else None))
            elif there is None or there[4] != child or there[5] or there[1] == DIR:
                yield kind, child, size


def blob_sizes(root: str, read_tree: Callable[[str], bytes], base: str | None = None
               ) -> Iterable[tuple[str, int]]:
    """(oid, size) of every blob under `root` (files, symlinks, the chunks of chunked
    files), each tree object read once; with `base`, less what it holds at the same
    places (as `subtree_ids`)."""
    if base is not None:
        for kind, oid, size in _ids_beyond(root, base, read_tree):
            if kind != DIR:
                yield oid, size
        return
    for _oid, node in distinct_trees(root, read_tree, trusted=True):
        for _name, kind, _mode, size, child, chunks in node.rows:
            if kind != DIR and not chunks:
                yield child, size
        if node.chunks is not None:
            yield from node.chunks.chunks


def validate_links(manifest: Manifest, read_blob: Callable[[str], bytes],
                   fences: Iterable[str] = ()) -> dict[str, str]:
    """Read and check every symlink target of `manifest`, each resolved through the
    others (a version is placed whole, so its links combine); returns path → target."""
    targets = {}
    for path, entry in manifest.items():
        if entry.kind == LINK:
            if entry.size > MAX_PATH_BYTES:
                raise UnsafePath(f"symlink {path!r} has a target longer than "
                                 f"{MAX_PATH_BYTES} bytes")
            target = read_blob(entry.oid).decode("utf-8", "surrogateescape")
            targets[path] = check_symlink_target(path, target)
    check_links(targets, fences)
    return targets
