"""Manifests as Merkle trees: one tree object per directory, shared between versions.

Owns the tree object format (canonical JSON, see docs/format.md), building trees from a
flat manifest, and flattening them back. A version that changes k files writes only the
k · depth trees on their paths; every other directory keeps its old id. Must never touch
the working directory or the index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import CorruptObject, InvalidInput
from .hashing import hash_bytes, is_hash
from .paths import check_name, check_symlink_target

FILE = "f"
LINK = "l"
DIR = "d"
TREE_FORMAT = 1
MAX_TREE_ENTRIES = 10_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or symlink of a manifest: kind, permission bits, size and content hash."""

    kind: str
    mode: int
    size: int
    oid: str


Manifest = dict[str, Entry]
"""A flat manifest: dataset-relative POSIX path → Entry (files and symlinks only)."""


def encode_tree(entries: list[tuple[str, str, int, int, str]]) -> bytes:
    """Serialise sorted (name, kind, mode, size, oid) rows canonically."""
    return json.dumps({"entries": entries, "type": "tree", "v": TREE_FORMAT},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_tree(data: bytes, oid: str = "?", trusted: bool = False
                ) -> list[tuple[str, str, int, int, str]]:
    """Parse one tree object, validating every entry unless it is `trusted`.

    Trees enter the local store only after validation (dsv wrote them, or they were
    checked when fetched), so reads from the store skip the per-entry checks; every path
    is still checked again where it touches the filesystem.
    """
    try:
        obj = json.loads(data)
        rows = obj["entries"]
        if obj.get("type") != "tree" or obj.get("v") != TREE_FORMAT or not isinstance(rows, list):
            raise ValueError("not a tree")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptObject(f"object {oid[:12]} is not a valid tree") from None
    if trusted:
        return rows
    if len(rows) > MAX_TREE_ENTRIES:
        raise CorruptObject(f"tree {oid[:12]} has too many entries")
    previous = None
    out = []
    for row in rows:
        try:
            name, kind, mode, size, child = row
        except (ValueError, TypeError):
            raise CorruptObject(f"tree {oid[:12]} has a malformed entry") from None
        if (not isinstance(name, str) or kind not in (FILE, LINK, DIR)
                or not isinstance(mode, int) or not isinstance(size, int) or size < 0
                or not 0 <= mode <= 0o7777 or not isinstance(child, str) or not is_hash(child)):
            raise CorruptObject(f"tree {oid[:12]} has a malformed entry")
        check_name(name)
        if previous is not None and name.encode() <= previous.encode():
            raise CorruptObject(f"tree {oid[:12]} is not sorted or repeats a name")
        previous = name
        out.append((name, kind, mode, size, child))
    return out


def build_tree(manifest: Manifest, store_tree: Callable[[str, bytes], None]) -> tuple[str, int]:
    """Write the trees of `manifest` bottom-up through `store_tree(oid, bytes)`.

    Returns the root tree id and the total size. `store_tree` is called for every
    directory; it skips ids already stored, which is what makes unchanged directories free.
    """
    children: dict[str, dict[str, tuple[str, int, int, str]]] = {"": {}}
    for path, entry in manifest.items():
        parent, _, name = path.rpartition("/")
        node = children.get(parent)
        if node is None:
            _add_dirs(children, parent)
            node = children[parent]
        node[name] = (entry.kind, entry.mode, entry.size, entry.oid)
    # Deepest directories first, so each parent sees its children's ids.
    for directory in sorted(children, key=lambda d: d.count("/") + (d != ""), reverse=True):
        node = children[directory]
        # Code-point order is UTF-8 byte order (names never hold surrogates).
        rows = [(name, *node[name]) for name in sorted(node)]
        data = encode_tree(rows)
        oid = hash_bytes(data)
        store_tree(oid, data)
        if directory:
            parent, _, name = directory.rpartition("/")
            if isinstance(children[parent].get(name), tuple) and children[parent][name][0] != DIR:
                raise InvalidInput(f"{directory} is both a file and a directory")
            children[parent][name] = (DIR, 0, sum(r[3] for r in rows), oid)
        else:
            return oid, sum(r[3] for r in rows)
    raise AssertionError("unreachable: the root is always built last")


def _add_dirs(children: dict[str, dict], directory: str) -> None:
    """Register `directory` and its missing ancestors; each parent's row for a child
    directory is filled in when that child is built (deepest first)."""
    while directory not in children:
        children[directory] = {}
        directory = directory.rpartition("/")[0]


def empty_tree() -> tuple[str, bytes]:
    data = encode_tree([])
    return hash_bytes(data), data


def flatten(root: str, read_tree: Callable[[str], bytes], prefix: str = "",
            trusted: bool = True) -> Manifest:
    """The flat manifest of tree `root` (optionally only the subtree at `prefix`)."""
    manifest: Manifest = {}
    stack = [(prefix, root)]
    while stack:
        base, oid = stack.pop()
        for name, kind, mode, size, child in decode_tree(read_tree(oid), oid, trusted):
            path = f"{base}/{name}" if base else name
            if kind == DIR:
                stack.append((path, child))
            else:
                manifest[path] = Entry(kind, mode, size, child)
    return manifest


def list_dir(root: str, read_tree: Callable[[str], bytes],
             path: str) -> list[tuple[str, str, int, int, str]]:
    """The rows of the directory at `path` (`""` is the root); raises KeyError if absent."""
    oid = root
    if path:
        for part in path.split("/"):
            rows = {r[0]: r for r in decode_tree(read_tree(oid), oid)}
            row = rows.get(part)
            if row is None or row[1] != DIR:
                raise KeyError(path)
            oid = row[4]
    return decode_tree(read_tree(oid), oid)


def subtree_ids(root: str, read_tree: Callable[[str], bytes]) -> Iterable[tuple[str, str]]:
    """Every (kind, oid) reachable from `root`, trees included, each tree once."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        yield DIR, oid
        for _name, kind, _mode, _size, child in decode_tree(read_tree(oid), oid):
            if kind == DIR:
                stack.append(child)
            else:
                yield kind, child


def validate_links(manifest: Manifest, read_blob: Callable[[str], bytes]) -> dict[str, str]:
    """Read and check every symlink target of `manifest`; returns path → target."""
    targets = {}
    for path, entry in manifest.items():
        if entry.kind == LINK:
            target = read_blob(entry.oid).decode("utf-8", "surrogateescape")
            targets[path] = check_symlink_target(path, target)
    return targets
