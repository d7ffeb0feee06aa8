"""An independent look inside a dsv store, for the kill -9 and concurrency tests.

It reads `.dsv/index.db` with plain sqlite3 and the object files directly, re-hashes
every byte with blake3 and walks the tree objects itself, so a bug in dsv's own readers
or in `dsv verify` cannot hide a broken store from these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

import blake3

LOOSE_THRESHOLD = 1 << 20  # files this big or bigger are stored as loose objects


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@dataclass
class StoreState:
    """What a store holds, checked object by object."""

    versions: dict[str, dict]                      # id -> row (committed and drafts)
    manifests: dict[str, dict[str, tuple[str, int, int, str]]]  # id -> path -> (kind, mode, size, oid)
    reachable: set[str]                            # every object some version needs
    indexed: set[str]                              # oids in the objects table
    loose: set[str]                                # loose object files on disk
    pack_files: set[str]                           # pack ids on disk
    indexed_packs: set[str]                        # pack ids in the index
    datasets: dict[str, dict] = field(default_factory=dict)  # name -> row

    def committed(self, dataset: str | None = None) -> dict[str, dict]:
        ds_id = self.datasets[dataset]["id"] if dataset else None
        return {vid: row for vid, row in self.versions.items() if row["state"] == "committed"
                and (ds_id is None or row["dataset"] == ds_id)}

    def content(self, vid: str) -> dict[str, str]:
        """path -> blake3 of the bytes, for one version."""
        return {p: e[3] for p, e in self.manifests[vid].items()}


def dir_content(root: Path, skip: tuple[str, ...] = (".dsv",)) -> dict[str, str]:
    """path -> blake3 of every regular file under `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if (rel_dir / d).as_posix() not in skip]
        for name in filenames:
            out[(rel_dir / name).as_posix()] = b3(Path(dirpath, name).read_bytes())
    return out


def inspect_store(ws: Path) -> StoreState:
    """Check the index and every object any version (draft or committed) needs.

    Fails (AssertionError) when the index is damaged, when an indexed pack is missing,
    or when any version references an object that is missing or whose bytes do not hash
    to its name; also when a committed version's record is missing or disagrees.
    """
    dsv_dir = ws / ".dsv"
    conn = sqlite3.connect(str(dsv_dir / "index.db"), timeout=30)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # (schema 10: a row names its pack by number; one naming no pack is dangling)
        objects = {oid: (pack, off, ln) for oid, pack, off, ln in conn.execute(
            "SELECT o.oid, p.id, o.offset, o.length FROM objects o "
            "LEFT JOIN packs p ON p.num = o.pack_num")}
        indexed_packs = {r[0] for r in conn.execute("SELECT id FROM packs")}
        version_rows = {}
        for row in conn.execute("SELECT id, dataset, state, tree, parents, message, record, "
                                "files, size FROM versions"):
            vid, ds, state, tree, parents, message, record, files, size = row
            version_rows[vid] = {"id": vid, "dataset": ds, "state": state, "tree": tree,
                                 "parents": json.loads(parents), "message": message,
                                 "record": record, "files": files, "size": size}
        datasets = {r[1]: {"id": r[0], "name": r[1], "latest": r[2], "head": r[3]}
                    for r in conn.execute("SELECT id, name, latest, head FROM datasets")}
    finally:
        conn.close()

    pack_dir = dsv_dir / "objects" / "packs"
    pack_files = {n[:-5] for n in os.listdir(pack_dir) if n.endswith(".pack")}
    loose_dir = dsv_dir / "objects" / "loose"
    loose = {n for sub in os.listdir(loose_dir) for n in os.listdir(loose_dir / sub)
             if not n.startswith(".dsv-tmp-")}

    missing_packs = indexed_packs - pack_files
    assert not missing_packs, f"packs in the index but not on disk: {sorted(missing_packs)}"
    dangling = {oid for oid, (pack, _o, _l) in objects.items() if pack not in indexed_packs}
    assert not dangling, f"object rows pointing at unknown packs: {sorted(dangling)[:5]}"

    cache: dict[str, bytes] = {}

    def read(oid: str, who: str) -> bytes:
        if oid in cache:
            return cache[oid]
        if oid in objects:
            pack, off, ln = objects[oid]
            with open(pack_dir / f"{pack}.pack", "rb") as f:
                f.seek(off)
                data = f.read(ln)
        else:
            path = loose_dir / oid[:2] / oid
            assert path.is_file(), f"{who} references missing object {oid}"
            mode = stat.S_IMODE(path.stat().st_mode)
            assert not mode & 0o222, f"loose object {oid} is writable ({oct(mode)})"
            data = path.read_bytes()
        assert b3(data) == oid, f"{who}: object {oid} does not hash to its name"
        if len(data) < 1 << 16:
            cache[oid] = data
        return data

    manifests: dict[str, dict] = {}
    reachable: set[str] = set()
    for vid, row in version_rows.items():
        who = f"version {vid} ({row['state']})"
        if row["state"] == "committed":
            assert row["record"], f"{who} has no record"
            record = json.loads(read(row["record"], who))
            assert record["id"] == vid and record["tree"] == row["tree"], \
                f"{who}: record disagrees with the index"
            reachable.add(row["record"])
        manifest: dict[str, tuple[str, int, int, str]] = {}
        stack = [("", row["tree"])]
        while stack:
            base, tree_oid = stack.pop()
            reachable.add(tree_oid)
            body = json.loads(read(tree_oid, who))
            assert body.get("type") == "tree", f"{who}: {tree_oid} is not a tree"
            for name, kind, mode, size, child, *chunked in body["entries"]:
                path = f"{base}/{name}" if base else name
                if kind == "d":
                    stack.append((path, child))
                    continue
                if chunked:   # a chunked file: its chunk list, then its chunks, in order
                    assert kind == "f" and len(chunked) == 1, f"{who} {path}: bad row"
                    listing = json.loads(read(chunked[0], f"{who} {path}"))
                    assert listing["type"] == "chunks" and listing["oid"] == child and \
                        listing["size"] == size, f"{who} {path}: chunk list disagrees"
                    reachable.add(chunked[0])
                    whole = blake3.blake3()
                    for piece, length in listing["chunks"]:
                        data = read(piece, f"{who} {path}")
                        assert len(data) == length, f"{who} {path}: chunk {piece} cut short"
                        whole.update(data)
                        reachable.add(piece)
                    assert whole.hexdigest() == child, f"{who} {path}: chunks != whole hash"
                else:
                    data = read(child, f"{who} {path}")
                    assert len(data) == size, f"{who} {path}: size {len(data)} != {size}"
                    reachable.add(child)
                manifest[path] = (kind, mode, size, child)
        assert len(manifest) == row["files"], f"{who}: {len(manifest)} files, index says {row['files']}"
        manifests[vid] = manifest
    for name, ds in datasets.items():
        for col in ("latest", "head"):
            if ds[col]:
                assert ds[col] in version_rows, f"dataset {name}: {col} {ds[col]} is missing"
                assert version_rows[ds[col]]["state"] == "committed", f"dataset {name}: {col} is a draft"
    return StoreState(version_rows, manifests, reachable, set(objects), loose, pack_files,
                      indexed_packs, datasets)


def copy_workspace(src: Path, dst: Path) -> Path:
    """A copy of a whole workspace (store included) for one test case to break."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
