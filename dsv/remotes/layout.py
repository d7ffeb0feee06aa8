"""Where things live on a remote and in a cluster cache: every key, and the ref file format.

Owns the remote layout of docs/format.md ("Remotes"): `dsv-remote.json`,
`packs/<id>.pack`, `index/<id>`, `loose/<xx>/<oid>`, `refs/<dataset>/latest`,
`refs/<dataset>/tags/<name>`, `catalog/<dataset>/<pack>`, `midx/<pack>.<id>`, the leases
(`maintain.lock`, `locks/<owner>`), the gc generation (`gc.json`), and the small JSON body of a ref.
Sync, `verify --remote` and the cluster cache build and parse keys only through this
module. Pure functions:
must never do I/O, and never trust what it parses (a remote is written by others).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObject
from ..hashing import hash_bytes, is_hash
from ..jsonio import load_bounded
from ..model import LATEST
from ..objects import PackEntry, pack_table_at, parse_pack_index
from ..paths import is_dataset_dir, is_valid_name
from .base import (MAX_GET_BYTES, MAX_REF_BYTES, Backend, NotFound, RemoteError,
                   RemoteRefused)

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


def marker_format(url: str, marker: object) -> int:
    """The format `marker` (the parsed `dsv-remote.json` of the remote at `url`) gives,
    or RemoteError naming what it says: its `format` must be an integer this dsv reads
    and its `hash` exactly "blake3". Every client checks a remote with this, before it
    reads or writes anything else there."""
    fmt = marker.get("format") if isinstance(marker, dict) else None
    # (JSON's true and 4.0 compare equal to 1 and 4: a format is an integer, exactly)
    if type(fmt) is not int or fmt not in READ_FORMATS:
        raise RemoteError(f"{url} has remote format "
                          f"{'?' if fmt is None else json.dumps(fmt)[:32]}; this dsv "
                          f"reads formats {', '.join(map(str, READ_FORMATS))}",
                          hint="a newer dsv may read it")
    digest = marker.get("hash") if isinstance(marker, dict) else None
    if digest != "blake3":
        # Every id on it would be another hash's: each object would look corrupt.
        shown = digest if isinstance(digest, str) and is_valid_name(digest[:32]) and \
            len(digest) <= 32 else "?"
        raise RemoteError(f"{url} names its objects by hash {shown}; this dsv reads only "
                          f"blake3 remotes", hint=f"check {REMOTE_MARKER}; nothing was changed")
    return fmt

PACKS = "packs/"
INDEX = "index/"
LOOSE = "loose/"
REFS = "refs/"
MAX_REFS = 1_000_000
"""Refs (latest and tags of every dataset) dsv lists of a remote at most: every one is
read, and a gc must see them all (a remote with more is refused, never half read)."""
LOCKS = "locks/"
MAINTAIN_LOCK = "maintain.lock"
"""The lease a maintainer holds while it repacks or collects garbage (created if absent,
by compare-and-swap)."""
GC_STATE = "gc.json"
"""The remote's gc generation: changed by every `gc --remote` that deleted something, so
a client knows its picture of the remote may name what is gone."""
CATALOG = "catalog/"
LOCATORS = "loc/"
MULTI_INDEX = "midx/"
TOP_LEVEL = ("index", "packs", "loose", "refs", "locks", "catalog", "loc", "midx", "tmp",
             REMOTE_MARKER, MAINTAIN_LOCK, GC_STATE)
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


def locator_key(oid: str) -> str:
    """The key of the locator of tree object or version record `oid` (see `Locator`)."""
    return f"{LOCATORS}{oid}"


def locator_oid_of_key(key: str) -> str | None:
    """The object id a well-formed `loc/<oid>` key names, or None."""
    if key.startswith(LOCATORS) and is_hash(oid := key[len(LOCATORS):]):
        return oid
    return None


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


def parse_listed_ref(key: str, data: bytes, etag: str,
                     warn: Callable[[str], None]) -> RemoteRef | None:
    """`parse_ref` of a ref a remote listed, telling `warn` of one that is not a ref dsv
    writes (damaged, or hand-made): ignored, as a fetch ignores every other bad ref,
    never silently. A deletion marker (`push --delete`) is no ref, and no warning."""
    ref = parse_ref(key, data, etag)
    if ref is None and not is_tombstone(key, data):
        warn(f"warning: ignored remote ref {key}: it is not a ref dsv writes (damaged); "
             f"`dsv verify --remote` checks the remote")
    return ref


def parse_ref(key: str, data: bytes, etag: str) -> RemoteRef | None:
    """A ref read from a remote (untrusted): None if it is not one dsv writes."""
    parts = key.split("/")
    if len(parts) == 3 and parts[2] == LATEST:
        ref = LATEST
    elif len(parts) == 4 and parts[2] == "tags" and is_valid_name(parts[3]) and \
            parts[3] != LATEST:  # (no tag is named `latest`: it would be taken for latest)
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


# ---- locators ---------------------------------------------------------------------------

LOCATOR_MAGIC = b"DSVLOC1\n"
BUNDLE_MAGIC = b"DSVLOC2\n"
"""A locator that also carries the leaf shards of a shard node (see `Locator.nodes`)."""
_LOC_COUNT = struct.Struct(">I")
_LOC_ENTRY = struct.Struct(">32sIQQ")     # raw object id, pack number, offset, length
LOOSE_PACK = 0xFFFFFFFF
"""The pack number of an object the remote keeps loose (`loose/<xx>/<oid>`)."""
MAX_LOCATOR_ENTRIES = 1 << 20
"""More leaves than any tree object or chunk list dsv writes names."""
MAX_CARRIED = 16
"""Tree objects a locator carries besides its own, at most: a shard node's children."""

Location = tuple[str | None, int, int]
"""Where an object is on a remote: (pack id, offset, length), or (None, 0, size) when it
is a loose object."""


@dataclass
class Locator:
    """What a reader that has no store needs to read one tree object (or version record)
    and the file contents it names, each in one request (`loc/<oid>`, written by the push
    that uploads the object): the object's own bytes, and where each blob or chunk it
    names lies on the remote. The bytes are checked against the id like any object; the
    places are hints (a maintainer may since have moved an object: a reader that finds
    other bytes there looks the object up in the pack indexes).

    The locator of a shard node also carries its children that are leaves (`nodes`: id →
    bytes, each checked against its id), and the places of their files: a leaf shard has
    no locator of its own, so a directory of 1,000 files costs one locator, not 17."""

    data: bytes
    places: dict[str, Location]
    nodes: dict[str, bytes] = field(default_factory=dict)


def encode_locator(data: bytes, places: dict[str, Location],
                   nodes: dict[str, bytes] | None = None) -> bytes:
    """A locator's bytes: magic, the object, (the objects it carries,) the packs named,
    then one entry per leaf."""
    packs = sorted({p for p, _o, _n in places.values() if p is not None})
    number = {p: i for i, p in enumerate(packs)}
    out = [BUNDLE_MAGIC if nodes else LOCATOR_MAGIC, _LOC_COUNT.pack(len(data)), data]
    if nodes:
        out.append(_LOC_COUNT.pack(len(nodes)))
        for oid, carried in sorted(nodes.items()):
            out += [bytes.fromhex(oid), _LOC_COUNT.pack(len(carried)), carried]
    out.append(_LOC_COUNT.pack(len(packs)))
    out += [bytes.fromhex(p) for p in packs]
    out.append(_LOC_COUNT.pack(len(places)))
    out += [_LOC_ENTRY.pack(bytes.fromhex(oid), LOOSE_PACK if pack is None else number[pack],
                            offset, length)
            for oid, (pack, offset, length) in sorted(places.items())]
    return b"".join(out)


def parse_locator(raw: bytes, oid: str) -> Locator:
    """A locator read from a remote (untrusted): CorruptObject unless its object (and
    each object it carries) hashes to its id and every count and entry is in bounds."""
    view = memoryview(raw)
    try:
        magic = bytes(view[:len(LOCATOR_MAGIC)])
        if magic not in (LOCATOR_MAGIC, BUNDLE_MAGIC):
            raise ValueError("magic")
        data, at = _carried(view, len(LOCATOR_MAGIC), oid)
        nodes: dict[str, bytes] = {}
        if magic == BUNDLE_MAGIC:
            (ncarried,) = _LOC_COUNT.unpack_from(view, at)
            at += 4
            if not 0 < ncarried <= MAX_CARRIED:
                raise ValueError("carried")
            for _ in range(ncarried):
                child = bytes(view[at:at + 32]).hex()
                nodes[child], at = _carried(view, at + 32, child)
        (npacks,) = _LOC_COUNT.unpack_from(view, at)
        at += 4
        if npacks * 32 > len(view) - at:
            raise ValueError("packs")
        packs = [bytes(view[at + 32 * i:at + 32 * i + 32]).hex() for i in range(npacks)]
        at += 32 * npacks
        (count,) = _LOC_COUNT.unpack_from(view, at)
        at += 4
        if count > MAX_LOCATOR_ENTRIES or at + count * _LOC_ENTRY.size != len(view):
            raise ValueError("entries")
        # Each place is of an object the locator's objects name, each name 64 hex digits
        # of their bytes: more places than that is padding (a reader keeps every place
        # it learns, so a few such locators would hold gigabytes).
        if count > (len(data) + sum(len(n) for n in nodes.values())) // 64:
            raise ValueError("entries")
        places: dict[str, Location] = {}
        for raw_oid, pack, offset, length in _LOC_ENTRY.iter_unpack(view[at:]):
            if pack == LOOSE_PACK:
                places[raw_oid.hex()] = (None, 0, length)
            elif pack < npacks:
                places[raw_oid.hex()] = (packs[pack], offset, length)
            else:
                raise ValueError("pack number")
    except (ValueError, struct.error):
        raise CorruptObject(f"locator of {oid[:12]} on the remote is damaged") from None
    return Locator(data, places, nodes)


def _carried(view: memoryview, at: int, oid: str) -> tuple[bytes, int]:
    """The object of id `oid` at `at` of a locator (its size, then its bytes, which must
    hash to `oid`), and where what follows it starts; ValueError if not."""
    (size,) = _LOC_COUNT.unpack_from(view, at)
    at += 4
    data = bytes(view[at:at + size])
    if len(data) != size or hash_bytes(data) != oid:
        raise ValueError("object")
    return data, at + size


# ---- multi-pack indexes -----------------------------------------------------------------

MULTI_MAGIC = b"DSVMIDX1"
_MULTI_ENTRY = struct.Struct(">32sI")     # raw pack id, length of that pack's index
MULTI_HEAD_BYTES = len(MULTI_MAGIC) + _LOC_COUNT.size
MULTI_ENTRY_BYTES = _MULTI_ENTRY.size
"""Bytes a multi-pack index takes before its entries, and per pack besides its index."""
MULTI_MIN_PACKS = 4
"""A push writes a multi-pack index once it uploads this many packs, and a reader looks
for them once it lacks the indexes of this many: below that, the index files themselves
cost about as many requests."""
MAX_MULTI_BYTES = 1 << 20
"""Bytes of one multi-pack index, at most (about 21,000 objects: 4 MB once parsed): a push
starts another past it, and a reader holds a few at once (a million-file clone's peak
memory is bounded at 300 MB)."""
MAX_MULTI_PACKS = 4096


def multi_index_key(named: str, body_id: str) -> str:
    """The key of a multi-pack index: named by the first pack it covers (a reader reads
    it when it lacks that pack's index) and by the blake3 of its bytes."""
    return f"{MULTI_INDEX}{named}.{body_id}"


def multi_index_of_key(key: str) -> tuple[str, str] | None:
    """(first pack id, id of the bytes) a well-formed `midx/<pack>.<id>` key names, or
    None."""
    if not key.startswith(MULTI_INDEX):
        return None
    named, dot, body_id = key[len(MULTI_INDEX):].partition(".")
    return (named, body_id) if dot and is_hash(named) and is_hash(body_id) else None


def encode_multi_index(indexes: list[tuple[str, bytes]]) -> bytes:
    """A multi-pack index's bytes: magic, the number of packs, (pack id, length) of each,
    then each pack's index (`index/<pack id>`, its table and trailer) in that order."""
    out: list[bytes] = [MULTI_MAGIC, _LOC_COUNT.pack(len(indexes))]
    out += [_MULTI_ENTRY.pack(bytes.fromhex(pack_id), len(data)) for pack_id, data in indexes]
    out += [data for _pack_id, data in indexes]
    return b"".join(out)


def parse_multi_index(raw: bytes, named: str, body_id: str) -> list[tuple[str, memoryview]]:
    """The (pack id, index bytes) a multi-pack index read from a remote holds (untrusted):
    CorruptObject unless it hashes to `body_id`, its first pack is `named` (as its key
    says) and its lengths fill it exactly, each pack named once. Each index's bytes
    are the caller's to check against their pack id (objects.parse_pack_index), as those
    of an `index/` file are."""
    view = memoryview(raw)
    try:
        if hash_bytes(view) != body_id or bytes(view[:len(MULTI_MAGIC)]) != MULTI_MAGIC:
            raise ValueError("magic")
        (count,) = _LOC_COUNT.unpack_from(view, len(MULTI_MAGIC))
        at = len(MULTI_MAGIC) + _LOC_COUNT.size
        if not 0 < count <= MAX_MULTI_PACKS or count * _MULTI_ENTRY.size > len(view) - at:
            raise ValueError("count")
        heads = list(_MULTI_ENTRY.iter_unpack(view[at:at + count * _MULTI_ENTRY.size]))
        at += count * _MULTI_ENTRY.size
        if sum(length for _raw, length in heads) != len(view) - at:
            raise ValueError("lengths")
        found: list[tuple[str, memoryview]] = []
        for raw_id, length in heads:
            found.append((raw_id.hex(), view[at:at + length]))
            at += length
        if found[0][0] != named or len({p for p, _data in found}) != count:
            raise ValueError("packs")
    except (ValueError, struct.error):
        raise CorruptObject(f"multi-pack index {body_id[:12]} on the remote is damaged") \
            from None
    return found


def read_pack_tail(backend: Backend, pack_id: str) -> tuple[list[PackEntry], int, bytes] | None:
    """A pack's own table and trailer (what its `index/` file copies), read from the
    pack's end (`objects.pack_table_at`: two ranged reads): (entries, pack size, those
    bytes); None when the pack cannot tell (gone, not a regular file, damaged, or a table
    larger than MAX_GET_BYTES). A failure of the remote itself (a timeout, a 5xx) is
    raised: it says nothing of the pack."""
    key = pack_key(pack_id)
    try:
        size = backend.head(key)
        got = None if size is None else pack_table_at(
            lambda at, n: backend.get_range(key, at, n), size, pack_id, MAX_GET_BYTES)
    except (RemoteRefused, NotFound):
        return None
    return None if got is None or size is None else (got[0], size, got[1])


def read_pack_index(backend: Backend, pack_id: str, where: str, warn: Callable[[str], None],
                    max_size: int = MAX_GET_BYTES) -> tuple[list[PackEntry], int] | None:
    """A pack's entries and size, from its `index/` file (at most `max_size` bytes). A
    damaged one (not matching its name, not a regular file, too large) is read from the
    pack's end instead (`read_pack_tail`), and `warn` is told; when the pack cannot tell
    either, `warn` is told the index is ignored. None for an index gone since it was
    listed (a maintainer repacked it), or ignored."""
    try:
        return parse_pack_index(backend.get(index_key(pack_id), max_size=max_size), pack_id)
    except NotFound:
        return None
    except (CorruptObject, RemoteRefused) as exc:
        why = exc.message
    try:
        got = read_pack_tail(backend, pack_id)
    except RemoteError:   # (the pack cannot be read just now: the index is ignored)
        got = None
    if got is None:
        warn(f"warning: ignored pack index {pack_id[:12]} on {where}: {why}")
        return None
    warn(f"warning: pack index {pack_id[:12]} on {where} is damaged ({why}); read from its "
         f"pack instead")
    return got[0], got[1]
