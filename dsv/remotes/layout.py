"""Where things live on a remote and in a cluster cache: every key, and the ref file format.

Owns the remote layout of docs/format.md ("Remotes"): `dsv-remote.json`,
`packs/<id>.pack`, `index/<id>`, `loose/<xx>/<oid>`, `refs/<dataset>/latest`,
`refs/<dataset>/tags/<name>`, `catalog/<dataset>/<pack>`, the leases (`maintain.lock`,
`locks/<owner>`), the gc generation (`gc.json`), and the small JSON body of a ref.
Sync, `verify --remote` and the cluster cache build and parse keys only through this
module. Pure functions:
must never do I/O, and never trust what it parses (a remote is written by others).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..hashing import is_hash
from ..jsonio import load_bounded
from ..model import LATEST
from ..paths import is_dataset_dir, is_valid_name
from .base import MAX_REF_BYTES

REMOTE_MARKER = "dsv-remote.json"
REMOTE_FORMAT = 4
"""The remote format this dsv writes: 2 = 1 plus leases and `gc --remote` (a dsv that
knows only format 1 takes no push lease, so it must not push where a gc may run); 3 = 2
plus complete dataset catalogs (`catalog/`: a dsv that knows only format 2 writes none,
so it must not push where readers rely on them); 4 = 3 plus chunked files (a push raises
an older remote to 4 before it sends a chunk list)."""
LEASE_FORMAT = 2
"""The first format with leases: `gc --remote` raises an older remote to it (at least)
before it deletes anything."""
CATALOG_FORMAT = 3
"""The first format whose every dataset has a complete catalog: before it, a client that
wants one dataset reads every pack index."""
CHUNK_FORMAT = 4
"""The first format whose trees may name chunk lists."""
READ_FORMATS = (1, 2, 3, 4)
"""The remote formats this dsv reads and pushes to (`gc --remote` raises an older remote
to 3, writing every dataset's catalog, before it deletes anything)."""


def marker_body(fmt: int = REMOTE_FORMAT) -> bytes:
    """The bytes of `dsv-remote.json`."""
    return json.dumps({"format": fmt, "hash": "blake3"}).encode() + b"\n"

PACKS = "packs/"
INDEX = "index/"
LOOSE = "loose/"
REFS = "refs/"
LOCKS = "locks/"
MAINTAIN_LOCK = "maintain.lock"
"""The lease a maintainer holds while it repacks or collects garbage (created if absent,
by compare-and-swap)."""
GC_STATE = "gc.json"
"""The remote's gc generation: changed by every `gc --remote` that deleted something, so
a client knows its picture of the remote may name what is gone."""
CATALOG = "catalog/"
TOP_LEVEL = ("index", "packs", "loose", "refs", "locks", "catalog", "tmp", REMOTE_MARKER,
             MAINTAIN_LOCK, GC_STATE)
"""What may stand at a remote's top level (`tmp` and `refs.lock` are a directory
remote's own)."""


def pack_key(pack_id: str) -> str:
    """The key of a pack."""
    return f"{PACKS}{pack_id}.pack"


def index_key(pack_id: str) -> str:
    """The key of a pack's index (its table and trailer)."""
    return f"{INDEX}{pack_id}"


def loose_key(oid: str) -> str:
    """The key of a loose object (large file contents)."""
    return f"{LOOSE}{oid[:2]}/{oid}"


def ref_key(ds_id: str, ref: str) -> str:
    """The key of ref `ref` (`latest` or `tags/NAME`) of dataset `ds_id`."""
    return f"{REFS}{ds_id}/{ref}"


def catalog_prefix(ds_id: str) -> str:
    """The prefix under which dataset `ds_id`'s catalog lists its packs."""
    return f"{CATALOG}{ds_id}/"


def catalog_key(ds_id: str, pack_id: str) -> str:
    """The key of a catalog entry: pack `pack_id` holds objects of `ds_id`."""
    return f"{CATALOG}{ds_id}/{pack_id}"


CATALOG_ENTRY = b"1\n"
"""The body of a catalog entry: its key says everything (a body, since some S3 servers
mishandle empty ones)."""


def catalog_entry_of_key(key: str) -> tuple[str, str] | None:
    """(dataset id, pack id) a well-formed `catalog/<dataset>/<pack>` key names, or None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == CATALOG and is_valid_name(parts[1]) and \
            is_hash(parts[2]):
        return parts[1], parts[2]
    return None


def push_lock_key(owner: str) -> str:
    """The key of one push's lease (`locks/<owner>`), held while it relies on objects
    already on the remote: a remote gc deletes nothing while one is live."""
    return f"{LOCKS}{owner}"


def pack_id_of_key(key: str) -> str | None:
    """The pack id a `packs/` key names, or None."""
    if key.startswith(PACKS) and key.endswith(".pack"):
        name = key[len(PACKS):-len(".pack")]
        return name if "/" not in name else None
    return None


def index_id_of_key(key: str) -> str | None:
    """The pack id an `index/` key names, or None."""
    if key.startswith(INDEX):
        name = key[len(INDEX):]
        return name if "/" not in name else None
    return None


def loose_oid_of_key(key: str) -> str | None:
    """The object id a well-formed `loose/xx/<oid>` key names, or None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == LOOSE and is_hash(parts[2]) and \
            parts[1] == parts[2][:2]:
        return parts[2]
    return None


# ---- refs -------------------------------------------------------------------------------

@dataclass
class RemoteRef:
    """A ref as a remote holds it (parsed and checked, never trusted further)."""

    dataset: str
    ref: str              # "latest" or "tags/NAME"
    version: str
    record: str
    etag: str
    name: str | None = None
    path: str | None = None


def ref_body(ds_id: str, version: str, record: str | None, name: str | None = None,
             path: str | None = None, latest: bool = False) -> bytes:
    """The bytes of a ref file (a `latest` ref also carries the dataset's name and path)."""
    body: dict[str, Any] = {"dataset": ds_id, "version": version, "record": record}
    if latest:
        body.update(name=name, path=path)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def tombstone(ds_id: str) -> bytes:
    """The bytes that mark a deleted ref (`dsv push --delete`): written by compare-and-swap
    like any ref change, read as no ref at all, replaced by the next push of that ref."""
    return json.dumps({"dataset": ds_id, "deleted": True}, sort_keys=True,
                      separators=(",", ":")).encode()


def is_tombstone(key: str, data: bytes) -> bool:
    """Whether the ref file at `key` holds a deletion marker for its dataset."""
    parts = key.split("/")
    return len(parts) >= 3 and data == tombstone(parts[1])


def parse_ref(key: str, data: bytes, etag: str) -> RemoteRef | None:
    """A ref read from a remote (untrusted): None if it is not one dsv writes."""
    parts = key.split("/")
    if len(parts) == 3 and parts[2] == LATEST:
        ref = LATEST
    elif len(parts) == 4 and parts[2] == "tags" and is_valid_name(parts[3]):
        ref = f"tags/{parts[3]}"
    else:
        return None
    try:
        body = load_bounded(data, MAX_REF_BYTES)
        ds_id, vid, record = body["dataset"], body["version"], body["record"]
    except (ValueError, KeyError, TypeError):
        return None
    if ds_id != parts[1] or not is_valid_name(ds_id) or not isinstance(vid, str) \
            or not is_valid_name(vid) or not isinstance(record, str) or not is_hash(record):
        return None
    name, path = body.get("name"), body.get("path")
    return RemoteRef(ds_id, ref, vid, record, etag,
                     name if isinstance(name, str) and is_valid_name(name) else None,
                     path if isinstance(path, str) and is_dataset_dir(path) else None)
