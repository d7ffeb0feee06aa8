"""`.dsv/state.json`: what a store knows that no object records, kept outside `index.db`.

The index is a cache of the objects except for a few things only it held: datasets (names,
working directories, descriptions), where each dataset's `latest` and `head` are, tags,
remotes, drafts, and which versions were fetched without their trees. This file mirrors
exactly those (as git keeps refs and config as files), so that `dsv index rebuild` after
the index is lost restores everything but the stat cache.

Owns the file's format (`dump`) and reading it back, validated (`load`). It is rewritten
(atomically, fsynced) inside every index transaction that changed one of those rows, just
before COMMIT (Index.on_change): a crash after the write but before the commit leaves the
file one step ahead of the index, naming only objects already published. Must never be
read except by a rebuild: while the index is there, the index is the truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import fileio
from .index import Index
from .jsonio import load_bounded

STATE_FILE = "state.json"
STATE_FORMAT = 1
MAX_STATE_BYTES = 64 << 20

_DATASET_KEYS = ("id", "name", "path", "description", "created", "latest", "head")
_DRAFT_KEYS = ("id", "dataset", "tree", "parents", "message", "author", "created", "lineage",
               "size", "files")


def dump(index: Index) -> dict[str, Any]:
    """The mirrored rows of `index` as the file holds them."""
    datasets = [{k: getattr(ds, k) for k in _DATASET_KEYS} for ds in index.datasets()]
    drafts = [{k: getattr(v, k) for k in _DRAFT_KEYS} for v in index.drafts()]
    return {"format": STATE_FORMAT, "datasets": datasets,
            "tags": [list(row) for row in index.tags()],
            "remotes": index.remotes(), "drafts": drafts,
            "unfetched": sorted([vid, remote] for vid, remote in index.unfetched().items())}


def save(index: Index, dsv_dir: Path) -> None:
    """Rewrite the file from `index` (skipped on an index that cannot be written)."""
    if index.read_only:
        return
    data = json.dumps(dump(index), indent=1, sort_keys=True).encode() + b"\n"
    fileio.atomic_write_bytes(dsv_dir / STATE_FILE, data)


def load(dsv_dir: Path) -> dict[str, Any] | None:
    """The file's contents, shape-checked (values are checked again as they are used), or
    None when there is no file or it cannot be read as one (a rebuild then falls back to
    what the old index still holds)."""
    try:
        raw = fileio.read_regular(dsv_dir / STATE_FILE, MAX_STATE_BYTES)
        data = load_bounded(raw, MAX_STATE_BYTES)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        return None
    shapes = {"datasets": dict, "tags": list, "remotes": dict, "drafts": dict}
    for key, item_type in shapes.items():
        items = data.get(key)
        if not isinstance(items, list) or not all(isinstance(i, item_type) for i in items):
            return None
    if not all(len(t) == 4 and all(isinstance(x, str) for x in t[:3]) for t in data["tags"]):
        return None
    unfetched = data.setdefault("unfetched", [])   # (a file an older dsv wrote has none)
    if not isinstance(unfetched, list) or not all(
            isinstance(u, list) and len(u) == 2 and all(isinstance(x, str) for x in u)
            for u in unfetched):
        return None
    return data
