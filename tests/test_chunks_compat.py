"""A store written before chunking (issue 12): its large files are ONE loose object each.

Simulated as the older tests do: committed with `chunking.CHUNK_THRESHOLD` patched out of
reach (tests/test_progress_bytes.py, tests/test_sync.py), then given the format an older
dsv left (store format 1 with a schema-9 index, `conftest.unnumber_index`; a remote
marker of format 3). With normal settings, one of those files is edited and committed
again (now in chunks) while another stays as it was: both versions must check out
byte-identical, `dsv verify` pass, and so through a push to a directory remote and a
clone.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import blake3
import pytest

from conftest import Result, read_tree, unnumber_index, write_tree
from dsv import chunking
from storecheck import dir_content, inspect_store

MiB = 1 << 20
OLD_TIME = 1_600_000_000_000_000_000   # (ns: no file is racily clean, the cache vouches)


def ok(r: Result) -> Result:
    assert r.code == 0, f"exit {r.code}\nout: {r.out}\nerr: {r.err}"
    return r


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {p: b3(d) for p, d in files.items()}


def chunk_ids(data: bytes) -> set[str]:
    return {b3(bytes(c.data)) for c in chunking.chunker().cut_buf(data)}


def listing(dsv, ws: Path, ref: str) -> dict[str, dict]:
    return {r["path"]: r for r in json.loads(ok(dsv("files", "list", ref, "--json", cwd=ws)).out)}


def checked_out(dsv, ws: Path, ref: str, out: Path) -> dict[str, bytes]:
    ok(dsv("checkout", ref, "--to", out, cwd=ws))
    return read_tree(out)


def test_a_large_file_stored_whole_before_chunking_then_edited_and_chunked(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(31)
    old = {"model.bin": rng.randbytes(6 * MiB), "frozen.bin": rng.randbytes(5 * MiB),
           "a.txt": b"first\n"}
    ws = tmp_path / "data"
    write_tree(ws, old)
    for rel in old:
        os.utime(ws / rel, ns=(OLD_TIME, OLD_TIME))
    remote = tmp_path / "remote"

    # ---- what a dsv before chunking wrote: each large file one loose object ----
    ok(dsv("init", cwd=ws))
    monkeypatch.setattr(chunking, "CHUNK_THRESHOLD", 1 << 40)
    v1 = ok(dsv("commit", "-m", "whole", cwd=ws)).out.strip().split(":")[1]
    ok(dsv("remote", "add", "origin", remote, cwd=ws))
    ok(dsv("push", cwd=ws))
    monkeypatch.undo()
    assert chunking.CHUNK_THRESHOLD == 4 * MiB
    rows = listing(dsv, ws, f"data:{v1}")
    assert not any("chunks" in r for r in rows.values()), rows
    for rel in ("model.bin", "frozen.bin"):
        oid = b3(old[rel])
        assert (ws / ".dsv" / "objects" / "loose" / oid[:2] / oid).is_file()
        assert (remote / "loose").is_dir() and any((remote / "loose").rglob(oid))
    unnumber_index(ws / ".dsv", 1)
    (remote / "dsv-remote.json").write_text(json.dumps({"format": 3, "hash": "blake3"}) + "\n")

    # ---- this dsv, normal settings: nothing changed, then one large file edited ----
    assert ok(dsv("status", cwd=ws)).out.strip().endswith("clean")
    assert json.loads((ws / ".dsv" / "config.json").read_text())["format"] == 3
    model = old["model.bin"]
    new = {**old, "model.bin": model[:3 * MiB] + rng.randbytes(64 << 10) + model[3 * MiB:]
           + rng.randbytes(MiB)}
    (ws / "model.bin").write_bytes(new["model.bin"])
    v2 = ok(dsv("commit", "-m", "chunked", cwd=ws)).out.strip().split(":")[1]

    rows = listing(dsv, ws, f"data:{v2}")
    assert {p: r["hash"] for p, r in rows.items()} == hashes(new)
    assert "chunks" in rows["model.bin"]          # the edited file: in chunks now
    assert "chunks" not in rows["frozen.bin"]     # the one left alone: still whole
    state = inspect_store(ws)
    assert state.content(v1) == hashes(old) and state.content(v2) == hashes(new)
    assert chunk_ids(new["model.bin"]) <= state.indexed
    assert b3(new["model.bin"]) not in state.loose | state.indexed
    assert {b3(old["model.bin"]), b3(old["frozen.bin"])} <= state.loose
    ok(dsv("verify", cwd=ws))

    assert checked_out(dsv, ws, f"data:{v1}", tmp_path / "v1") == old
    assert checked_out(dsv, ws, f"data:{v2}", tmp_path / "v2") == new
    assert dir_content(tmp_path / "v1") == hashes(old)
    assert dir_content(tmp_path / "v2") == hashes(new)
    ok(dsv("checkout", f"data:{v1}", cwd=ws))     # in place: the working directory
    assert read_tree(ws) == old
    ok(dsv("checkout", "data:latest", cwd=ws))
    assert read_tree(ws) == new

    # ---- a push to the remote the old dsv pushed to, and a clone of it ----
    ok(dsv("push", cwd=ws))
    assert json.loads((remote / "dsv-remote.json").read_text())["format"] == 4
    ok(dsv("verify", "--remote", "origin", "--read-data", cwd=ws))
    clone = tmp_path / "clone"
    ok(dsv("clone", remote, clone, cwd=tmp_path))
    assert read_tree(clone) == new
    ok(dsv("verify", cwd=clone))
    assert checked_out(dsv, clone, f"data:{v1}", tmp_path / "clone-v1") == old
    assert checked_out(dsv, clone, f"data:{v2}", tmp_path / "clone-v2") == new
    ok(dsv("checkout", f"data:{v1}", cwd=clone))
    assert read_tree(clone) == old
    assert dir_content(clone) == hashes(old)
    state = inspect_store(clone)
    assert state.content(v1) == hashes(old) and state.content(v2) == hashes(new)
    ok(dsv("verify", cwd=clone))
