"""Version records: the only writer and the only reader of kind-2 objects.

Owns the record format (docs/format.md "Version records"): `encode_record` writes the
canonical JSON a committed version is sealed with, and `parse_record` turns a record's
bytes (from a remote, from packs during `index rebuild`, from `verify`) into a `Record`,
refusing anything malformed: records are untrusted input. Must never touch the index or
the object store; callers pass bytes in and take bytes out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import CorruptObject
from .hashing import is_hash
from .model import COMMITTED, Version
from .jsonio import load_bounded

RECORD_FORMAT = 1
MAX_RECORD_BYTES = 16 << 20
MAX_PARENTS = 16
_ID = re.compile(r"[0-9a-z]{1,64}")


def is_id(text: str) -> bool:
    """Whether `text` can be a version or dataset id (what a record may name)."""
    return bool(_ID.fullmatch(text))


@dataclass(frozen=True)
class ParentLink:
    """A parent as a record names it: by version id and by the hash of its record."""

    id: str
    record: str


@dataclass
class Record:
    """A parsed version record: the committed version, its parents' record hashes, and
    the dataset name the writer used (a hint for naming a dataset first seen)."""

    version: Version
    parents: list[ParentLink]
    dataset_name: str | None


def format_time(ts: float) -> str:
    """A record timestamp: UTC, microseconds, `Z` (what `parse_time` reads back)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_record(v: Version, parents: list[tuple[str, str | None]],
                  dataset_name: str | None) -> bytes:
    """The canonical bytes of committed version `v`'s record; `parents` are (id, record
    hash) pairs in `v.parents` order."""
    body = {"type": "version", "v": RECORD_FORMAT, "id": v.id, "dataset": v.dataset,
            "dataset_name": dataset_name, "tree": v.tree,
            "parents": [{"id": pid, "record": rec} for pid, rec in parents],
            "message": v.message, "author": v.author, "created": format_time(v.created),
            "committed": format_time(v.committed or v.created), "lineage": v.lineage,
            "size": v.size, "files": v.files}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def parse_time(text: Any) -> float:  # noqa: ANN401 - any JSON value, from outside
    """A record timestamp as seconds since the epoch (0.0 when unreadable)."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return 0.0


def parse_record(data: bytes, oid: str) -> Record:
    """The committed version record `oid` describes; CorruptObject if the record is not
    one dsv could have written."""
    def bad(why: str) -> CorruptObject:
        return CorruptObject(f"version record {oid[:12]} is invalid: {why}")

    try:
        record = load_bounded(data, MAX_RECORD_BYTES)
    except ValueError as exc:
        raise bad(f"not a JSON document dsv accepts ({exc})") from None
    if not isinstance(record, dict) or record.get("type") != "version" or \
            record.get("v") != RECORD_FORMAT:
        raise bad("not a version record")
    vid, ds_id, tree_oid = record.get("id"), record.get("dataset"), record.get("tree")
    if not (isinstance(vid, str) and _ID.fullmatch(vid)):
        raise bad("bad version id")
    if not (isinstance(ds_id, str) and _ID.fullmatch(ds_id)):
        raise bad("bad dataset id")
    if not (isinstance(tree_oid, str) and is_hash(tree_oid)):
        raise bad("bad tree id")
    parents = record.get("parents")
    # Parents are named by id AND record hash: a record cannot name its own hash, so the
    # history behind a record is acyclic by construction.
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS or not all(
            isinstance(p, dict) and isinstance(p.get("id"), str) and _ID.fullmatch(p["id"])
            and isinstance(p.get("record"), str) and is_hash(p["record"])
            for p in parents):
        raise bad("bad parents")
    parent_ids = [p["id"] for p in parents]
    if vid in parent_ids:
        raise bad("it names itself as its parent")
    if len(set(parent_ids)) != len(parent_ids):
        raise bad("it names one parent twice")
    for key in ("message", "author", "dataset_name"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise bad(f"bad {key}")
    for key in ("size", "files"):
        if not isinstance(record.get(key), int) or not 0 <= record[key] <= 1 << 62:
            raise bad(f"bad {key}")
    if record.get("lineage") is not None and not isinstance(record["lineage"], dict):
        raise bad("bad lineage")
    version = Version(id=vid, dataset=ds_id, state=COMMITTED, tree=tree_oid,
                      parents=[p["id"] for p in parents], message=record.get("message"),
                      author=record.get("author"), created=parse_time(record.get("created")),
                      committed=parse_time(record.get("committed")), record=oid,
                      lineage=record.get("lineage"), size=record["size"], files=record["files"])
    return Record(version, [ParentLink(p["id"], p["record"]) for p in parents],
                  record.get("dataset_name"))
