"""Version records read from outside: parsing and validating kind-2 objects.

Owns turning a record's bytes (from a remote, or from packs during `index rebuild`)
into a committed `Version`, refusing anything malformed: records are untrusted input.
The writing side is `Store._record`; docs/format.md describes the fields.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from .errors import CorruptObject
from .hashing import is_hash
from .index import Version
from .jsonio import load_bounded

MAX_RECORD_BYTES = 16 << 20
MAX_PARENTS = 16
_ID = re.compile(r"[0-9a-z]{1,64}")


def parse_time(text: Any) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return 0.0


def parse_record(data: bytes, oid: str) -> tuple[Version, dict[str, Any]]:
    """The committed version a record describes, and the record itself; CorruptObject if
    the record is not one dsv could have written."""
    def bad(why: str) -> CorruptObject:
        return CorruptObject(f"version record {oid[:12]} is invalid: {why}")

    try:
        record = load_bounded(data, MAX_RECORD_BYTES)
    except ValueError as exc:
        raise bad(f"not a JSON document dsv accepts ({exc})") from None
    if not isinstance(record, dict) or record.get("type") != "version" or record.get("v") != 1:
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
    version = Version(vid, ds_id, "committed", tree_oid, [p["id"] for p in parents],
                      record.get("message"), record.get("author"),
                      parse_time(record.get("created")), parse_time(record.get("committed")),
                      oid, record.get("lineage"), record["size"], record["files"])
    return version, record
