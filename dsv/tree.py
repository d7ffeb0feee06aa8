"""Manifests as Merkle trees: one tree object per directory, shared between versions.

Owns the tree object format (canonical JSON, see docs/format.md), building trees from a
flat manifest, and flattening them back. A version that changes k files writes only the
k · depth trees on their paths; every other directory keeps its old id. Must never touch
the working directory or the index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

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
        # Trees in the store were validated on the way in; trees from outside are bounded.
        obj = json.loads(data) if trusted else load_bounded(data, MAX_TREE_BYTES)
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
        if size > MAX_SIZE:
            raise CorruptObject(f"tree {oid[:12]} claims an impossible size for {name!r}")
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
        if len(data) > MAX_TREE_BYTES:
            raise InvalidInput(f"directory {directory or '.'} has {len(rows):,} entries, more "
                               f"than one tree object may describe ({MAX_TREE_BYTES >> 20} MiB)",
                               hint="split it into subdirectories")
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


def _add_dirs(children: dict[str, dict[str, tuple[str, int, int, str]]],
              directory: str) -> None:
    """Register `directory` and its missing ancestors; each parent's row for a child
    directory is filled in when that child is built (deepest first)."""
    while directory not in children:
        children[directory] = {}
        directory = directory.rpartition("/")[0]


def check_expansion(root: str, read_tree: Callable[[str], bytes],
                    limit: int = MAX_VERSION_PATHS) -> int:
    """How many paths tree `root` expands to, computed with each distinct tree visited
    once; CorruptObject beyond `limit` paths or MAX_TREE_DEPTH levels."""
    counts: dict[str, tuple[int, int]] = {}     # tree → (paths, height)
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:
        oid, children_done = stack.pop()
        if oid in counts:
            continue
        rows = decode_tree(read_tree(oid), oid, trusted=True)
        if not children_done:
            stack.append((oid, True))
            stack.extend((r[4], False) for r in rows if r[1] == DIR and r[4] not in counts)
            continue
        paths, height = 0, 1
        for row in rows:
            if row[1] == DIR:
                sub_paths, sub_height = counts[row[4]]
                paths += sub_paths
                height = max(height, sub_height + 1)
            else:
                paths += 1
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
    (trees written before modes were classes may differ only in finer bits). Walks only
    where the ids differ, and stops at the first real difference."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x == y:
            continue
        rows_x = decode_tree(read_tree(x), x, trusted=True)
        rows_y = decode_tree(read_tree(y), y, trusted=True)
        if [r[0] for r in rows_x] != [r[0] for r in rows_y]:
            return False
        for (_n, kx, mx, _sx, ox), (_m, ky, my, _sy, oy) in zip(rows_x, rows_y, strict=True):
            if kx != ky:
                return False
            if kx == DIR:
                stack.append((ox, oy))
            elif ox != oy or (kx == FILE and mode_class(mx) != mode_class(my)):
                return False
    return True


def empty_tree() -> tuple[str, bytes]:
    """The id and bytes of the tree with no entries."""
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
        if len(manifest) > MAX_VERSION_PATHS:
            raise CorruptObject(f"tree {root[:12]} expands to more than "
                                f"{MAX_VERSION_PATHS:,} paths")
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


def distinct_trees(root: str, read_tree: Callable[[str], bytes], trusted: bool = False
                   ) -> Iterable[tuple[str, list[tuple[str, str, int, int, str]]]]:
    """(tree id, rows) of every tree under `root`, each distinct tree once (a version
    that names one directory many times costs that directory once)."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        rows = decode_tree(read_tree(oid), oid, trusted)
        yield oid, rows
        stack.extend(row[4] for row in rows if row[1] == DIR)


def subtree_ids(root: str, read_tree: Callable[[str], bytes]) -> Iterable[tuple[str, str]]:
    """Every (kind, oid) reachable from `root`, trees included, each tree once."""
    for oid, rows in distinct_trees(root, read_tree):
        yield DIR, oid
        for _name, kind, _mode, _size, child in rows:
            if kind != DIR:
                yield kind, child


def blob_sizes(root: str, read_tree: Callable[[str], bytes]) -> Iterable[tuple[str, int]]:
    """(oid, size) of every file and symlink blob under `root`, each tree read once."""
    for _oid, rows in distinct_trees(root, read_tree, trusted=True):
        for _name, kind, _mode, size, child in rows:
            if kind != DIR:
                yield child, size


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
