"""A builder of hostile directory remotes, written without dsv's writing code.

Every object gets its true blake3 id and every pack index hashes to its pack's name, so
only dsv's semantic checks (paths, links, modes, history, sizes) stand between such a
remote and the victim's disk. The layout is docs/format.md's "Remotes": `dsv-remote.json`,
`packs/<id>.pack`, `index/<id>`, `loose/<xx>/<oid>`, `refs/<dataset>/latest`,
`refs/<dataset>/tags/<name>`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from dsv.hashing import hash_bytes

KIND_BLOB, KIND_TREE, KIND_VERSION = 0, 1, 2
_ENTRY = struct.Struct(">32sQQB")
_TRAILER = struct.Struct(">QQ8s")
MAGIC, END = b"DSVPACK1", b"DSVPEND1"


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      sort_keys=True).encode()


def tree_bytes(rows: list[list[Any]]) -> bytes:
    """A tree object exactly as dsv serialises one (rows sorted by the caller)."""
    return json.dumps({"entries": rows, "type": "tree", "v": 1},
                      separators=(",", ":"), ensure_ascii=False).encode()


class HostileRemote:
    """Objects staged with `blob`/`tree`/`record`, written by `publish` as one pack."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staged: list[tuple[str, int, bytes]] = []
        self.sizes: dict[str, int] = {}   # tree → the sum of its rows' sizes
        root.mkdir(parents=True, exist_ok=True)
        (root / "dsv-remote.json").write_bytes(b'{"format":1,"hash":"blake3"}\n')

    # ---- objects -------------------------------------------------------------------
    def add(self, data: bytes, kind: int) -> str:
        oid = hash_bytes(data)
        if all(o != oid for o, _k, _d in self.staged):
            self.staged.append((oid, kind, data))
        return oid

    def blob(self, data: bytes) -> str:
        return self.add(data, KIND_BLOB)

    def tree(self, rows: list[list[Any]]) -> str:
        oid = self.add(tree_bytes(rows), KIND_TREE)
        self.sizes[oid] = sum(row[3] for row in rows if isinstance(row[3], int))
        return oid

    def files(self, files: dict[str, bytes | tuple[str, bytes]], mode: int = 0o644) -> str:
        """A tree of `files` (path → bytes, or → ("l", target) for a symlink)."""
        children: dict[str, Any] = {}
        for path, content in files.items():
            node = children
            parts = path.split("/")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = content
        return self._build(children, mode)[0]

    def _build(self, node: dict[str, Any], mode: int) -> tuple[str, int]:
        rows = []
        total = 0
        for name in sorted(node, key=lambda n: n.encode()):
            value = node[name]
            if isinstance(value, dict):
                oid, size = self._build(value, mode)
                rows.append([name, "d", 0, size, oid])
            elif isinstance(value, tuple):
                data = value[1].encode()
                rows.append([name, "l", 0o777, len(data), self.blob(data)])
                size = len(data)
            else:
                rows.append([name, "f", mode, len(value), self.blob(value)])
                size = len(value)
            total += size
        return self.tree(rows), total

    def record(self, vid: str, dataset: str, tree: str,
               parents: list[dict[str, Any]] | None = None, **extra: Any) -> str:
        body = {"type": "version", "v": 1, "id": vid, "dataset": dataset,
                "dataset_name": extra.pop("dataset_name", "victim"), "tree": tree,
                "parents": parents or [], "message": extra.pop("message", "hostile"),
                "author": "mallory", "created": "2026-11-30T10:00:00.000000Z",
                "committed": "2026-11-30T10:00:00.000000Z", "lineage": None,
                "size": extra.pop("size", self.sizes.get(tree, 1)),
                "files": extra.pop("files", 1), **extra}
        return self.add(encode(body), KIND_VERSION)

    # ---- files on the remote -------------------------------------------------------
    def publish(self, entries_override: dict[str, int] | None = None) -> str:
        """Write the staged objects as one pack plus its index; returns the pack id.
        `entries_override` (oid → length) lies about lengths in the table."""
        body = bytearray(MAGIC)
        table = b""
        for oid, kind, data in self.staged:
            length = (entries_override or {}).get(oid, len(data))
            table += _ENTRY.pack(bytes.fromhex(oid), len(body), length, kind)
            body += data
        trailer = _TRAILER.pack(len(self.staged), len(body), END)
        pack_id = hash_bytes(table + trailer)
        (self.root / "packs").mkdir(exist_ok=True)
        (self.root / "index").mkdir(exist_ok=True)
        (self.root / "packs" / f"{pack_id}.pack").write_bytes(bytes(body) + table + trailer)
        (self.root / "index" / pack_id).write_bytes(table + trailer)
        self.staged = []
        return pack_id

    def loose(self, data: bytes) -> str:
        oid = hash_bytes(data)
        path = self.root / "loose" / oid[:2] / oid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return oid

    def ref(self, dataset: str, ref: str, version: str, record: str,
            name: str | None = "victim", path: str | None = ".", raw: bytes | None = None) -> Path:
        """`ref` is "latest" or "tags/NAME"."""
        body: dict[str, Any] = {"dataset": dataset, "version": version, "record": record}
        if ref == "latest":
            body.update(name=name, path=path)
        target = self.root / "refs" / dataset / ref
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw if raw is not None else encode(body))
        return target

    def version(self, vid: str, dataset: str, files: dict[str, Any], tags: tuple[str, ...] = (),
                path: str | None = ".", parents: list[dict[str, Any]] | None = None,
                mode: int = 0o644, **extra: Any) -> str:
        """A whole version (tree, record, refs) published at once; returns its record id."""
        root = self.files(files, mode)
        record = self.record(vid, dataset, root, parents, files=len(files), **extra)
        self.publish()
        self.ref(dataset, "latest", vid, record, path=path)
        for tag in tags:
            self.ref(dataset, f"tags/{tag}", vid, record)
        return record
