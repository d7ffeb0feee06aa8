"""Multi-pack indexes (`midx/<pack>.<id>`): a push of many packs writes one file holding
all their indexes, and a first fetch reads it instead of one index file per pack.

Only a saving, never a source of truth: each index in it must hash to its pack's id, as
an index file must; a damaged or forged one is ignored with a warning (the packs are
read one index at a time), gc and maintain delete the one a deleted pack names, and
`verify --remote` reports (and `--repair` deletes) damaged and stale ones.

Also what a first fetch reads besides: a clone or a pull opens its origin once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Result, flip_byte, read_tree, write_tree
from dsv.errors import CorruptObject
from dsv.hashing import hash_bytes
from dsv.remotes import layout
from dsv.remotes.fs import FsBackend
from dsv.sync import maintain, push


def _ok(res: Result) -> Result:
    assert res.code == 0, res.err
    return res


def _index_ids(remote: Path) -> set[str]:
    return set(os.listdir(remote / "index"))


def _multi_keys(remote: Path) -> list[str]:
    where = remote / "midx"
    return sorted(f"midx/{n}" for n in os.listdir(where)) if where.is_dir() else []


def _pushed(tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch,
            files: int = 60) -> tuple[Path, Path, dict[str, bytes]]:
    """A dataset of `files` small files pushed to a directory remote in packs of 4 KiB
    (a pack every two files or so), none of which counts as small (a push would
    otherwise merge them at once: see `maintain.small_packs`)."""
    monkeypatch.setattr(push, "UPLOAD_PACK_SIZE", 4096)
    monkeypatch.setattr(maintain, "SMALL_PACK", 1024)
    ws = tmp_path / "ws"
    made = {f"d{i % 4}/f{i:03d}.bin": os.urandom(1500 + 37 * i) for i in range(files)}
    write_tree(ws, made)
    _ok(dsv("init", ws, "--name", "raw", cwd=tmp_path))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    remote = tmp_path / "remote"
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    return ws, remote, made


class _Gets:
    """Counts the directory backend's whole-file reads by top-level prefix."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        real = FsBackend.get

        def get(backend: FsBackend, key: str, max_size: int | None = None) -> bytes:
            self.keys.append(key)
            return real(backend, key, max_size)
        monkeypatch.setattr(FsBackend, "get", get)

    def under(self, prefix: str) -> list[str]:
        return [k for k in self.keys if k.startswith(prefix)]


def test_encoding_round_trips_and_damage_is_refused() -> None:
    a, b, c = (hash_bytes(n) for n in (b"a", b"b", b"c"))
    held = [(a, b"first index"), (b, b""), (c, b"x" * 300)]
    body = layout.encode_multi_index(held)
    body_id = hash_bytes(body)
    assert [(p, bytes(d)) for p, d in layout.parse_multi_index(body, a, body_id)] == held
    key = layout.multi_index_key(a, body_id)
    assert key == f"midx/{a}.{body_id}" and layout.multi_index_of_key(key) == (a, body_id)
    for bad in ("midx/x.y", f"midx/{a}", f"midx/{a}.{body_id}.z", f"index/{a}.{body_id}"):
        assert layout.multi_index_of_key(bad) is None, bad

    def refused(raw: bytes, named: str = a, whose: str | None = None) -> None:
        with pytest.raises(CorruptObject, match="multi-pack index"):
            layout.parse_multi_index(raw, named, whose or hash_bytes(raw))

    refused(body, whose=hash_bytes(b"other"))            # not the bytes its name says
    refused(body, named=b)                               # another first pack than its key
    refused(body[:-1])                                   # an index cut short
    refused(body + b"!")                                 # bytes past the last index
    refused(layout.encode_multi_index([(a, b"1"), (a, b"2")]))   # a pack twice
    refused(layout.encode_multi_index([]))                       # none at all
    refused(b"DSVMIDX0" + body[8:])                      # another magic
    huge = bytearray(body)
    huge[8:12] = (layout.MAX_MULTI_PACKS + 1).to_bytes(4, "big")
    refused(bytes(huge))


def test_a_push_of_many_packs_writes_one_and_a_clone_reads_no_index_file(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, remote, made = _pushed(tmp_path, dsv, monkeypatch)
    packs = _index_ids(remote)
    keys = _multi_keys(remote)
    assert len(packs) >= 20 and len(keys) == 1, (len(packs), keys)
    named, body_id = layout.multi_index_of_key(keys[0]) or ("", "")
    raw = (remote / keys[0]).read_bytes()
    inside = layout.parse_multi_index(raw, named, body_id)
    # Every pack of the push (blobs, trees, the record), each index byte for byte.
    assert {p for p, _d in inside} == packs
    for pack_id, data in inside:
        assert bytes(data) == (remote / "index" / pack_id).read_bytes()

    gets = _Gets(monkeypatch)
    _ok(dsv("clone", remote, tmp_path / "clone", cwd=tmp_path))
    assert gets.under("index/") == [] and gets.under("midx/") == [keys[0]]
    assert read_tree(tmp_path / "clone") == made
    _ok(dsv("verify", cwd=tmp_path / "clone"))
    # A push that adds fewer packs than make one worth it writes none; a fetch then
    # reads their index files.
    write_tree(ws, {"d0/new.bin": os.urandom(900)})
    _ok(dsv("commit", "-m", "two", cwd=ws))
    _ok(dsv("push", cwd=ws))
    assert _multi_keys(remote) == keys
    gets.keys.clear()
    _ok(dsv("pull", cwd=tmp_path / "clone"))
    assert len(gets.under("index/")) == len(_index_ids(remote)) - len(packs) > 0
    assert gets.under("midx/") == []
    assert (tmp_path / "clone" / "d0" / "new.bin").read_bytes() == \
        (ws / "d0" / "new.bin").read_bytes()


@pytest.mark.parametrize("how", ["flipped", "forged"])
def test_a_damaged_or_forged_one_is_ignored_with_a_warning(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Flipped: its bytes no longer hash to its name. Forged: renamed after its new bytes,
    but one pack's index in it is not that pack's. Either way the clone reads every
    pack's index file instead, and gets every byte right."""
    _ws, remote, made = _pushed(tmp_path, dsv, monkeypatch)
    (key,) = _multi_keys(remote)
    path = remote / key
    if how == "flipped":
        flip_byte(path, os.path.getsize(path) - 5)
    else:
        named, body_id = layout.multi_index_of_key(key) or ("", "")
        held = [(p, bytes(d)) for p, d in
                layout.parse_multi_index(path.read_bytes(), named, body_id)]
        held[3] = (held[3][0], held[4][1])   # another pack's (genuine) index
        body = layout.encode_multi_index(held)
        os.chmod(path, 0o644)
        path.unlink()
        (remote / layout.multi_index_key(named, hash_bytes(body))).write_bytes(body)
    gets = _Gets(monkeypatch)
    res = _ok(dsv("clone", remote, tmp_path / "clone", cwd=tmp_path))
    assert "warning: ignored multi-pack index" in res.err, res.err
    assert len(set(gets.under("index/"))) == len(_index_ids(remote))
    assert read_tree(tmp_path / "clone") == made


def test_gc_and_maintain_delete_the_one_a_deleted_pack_names(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, remote, made = _pushed(tmp_path, dsv, monkeypatch)
    assert len(_multi_keys(remote)) == 1
    # maintain merges the small packs (all of them, the named one too) into new ones
    monkeypatch.setattr(maintain, "SMALL_PACK", 1 << 20)
    report = json.loads(_ok(dsv("remote", "maintain", "--json", cwd=ws)).out)
    assert report["packs_repacked"] >= 20, report
    assert _multi_keys(remote) == []
    _ok(dsv("clone", remote, tmp_path / "c1", cwd=tmp_path))
    assert read_tree(tmp_path / "c1") == made
    # a push of new files writes a new one; gc deletes every pack once the dataset is
    # deleted there, and it with them
    monkeypatch.setattr(maintain, "SMALL_PACK", 1024)
    write_tree(ws, {f"e/g{i:02d}.bin": os.urandom(3000) for i in range(20)})
    _ok(dsv("commit", "-m", "two", cwd=ws))
    _ok(dsv("push", cwd=ws))
    (key,) = _multi_keys(remote)
    _ok(dsv("push", "--delete", "raw", cwd=ws))
    report = json.loads(_ok(dsv("gc", "--remote", "origin", "--json", cwd=ws)).out)
    assert _multi_keys(remote) == [] and report["strays_deleted"] >= 1, report
    assert os.listdir(remote / "packs") == []


def test_verify_remote_reports_stale_and_damaged_ones_and_repair_deletes_them(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, remote, _made = _pushed(tmp_path, dsv, monkeypatch)
    (key,) = _multi_keys(remote)
    named, body_id = layout.multi_index_of_key(key) or ("", "")
    clean = json.loads(_ok(dsv("verify", "--remote", "origin", "--read-data", "--json",
                               cwd=ws)).out)
    assert clean["ok"] and not any("multi-pack" in w for w in clean["warnings"]), clean
    # a copy named by a pack that is not there: no reader reads it
    ghost = hash_bytes(b"no such pack")
    stale = remote / layout.multi_index_key(ghost, body_id)
    stale.write_bytes((remote / key).read_bytes())
    flip_byte(remote / key, 40)
    quick = json.loads(_ok(dsv("verify", "--remote", "origin", "--json", cwd=ws)).out)
    assert [w for w in quick["warnings"] if "multi-pack" in w] == [
        f"multi-pack index {body_id[:12]} is named by pack {ghost[:12]}, which is not on "
        f"the remote (no reader reads it)"], quick
    full = json.loads(_ok(dsv("verify", "--remote", "origin", "--read-data", "--json",
                              cwd=ws)).out)
    assert full["ok"] and len([w for w in full["warnings"] if "multi-pack" in w]) == 2, full
    assert any(f"multi-pack index {body_id[:12]} on the remote is damaged" in w
               for w in full["warnings"]), full
    mended = json.loads(_ok(dsv("verify", "--remote", "origin", "--read-data", "--repair",
                                "--json", cwd=ws)).out)
    assert len([r for r in mended["repaired"] if "multi-pack" in r]) == 2, mended
    assert _multi_keys(remote) == [] and named in _index_ids(remote)


def test_over_s3_a_clone_reads_one_multi_index_for_all_the_packs(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch, aws_env: None,
        s3_endpoint: str) -> None:
    from dsv.remotes.s3 import S3Backend
    from test_sync_faults import new_bucket
    monkeypatch.setattr(push, "UPLOAD_PACK_SIZE", 4096)
    monkeypatch.setattr(maintain, "SMALL_PACK", 1024)
    ws = tmp_path / "ws"
    made = {f"f{i:02d}.bin": os.urandom(2500 + i) for i in range(24)}
    write_tree(ws, made)
    _ok(dsv("init", ws, "--name", "raw", cwd=tmp_path))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    url = f"s3://{new_bucket(s3_endpoint)}/r"
    _ok(dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=ws))
    _ok(dsv("push", cwd=ws))
    asked: list[str] = []
    real = S3Backend.get

    def get(backend: S3Backend, key: str, max_size: int | None = None) -> bytes:
        asked.append(key)
        return real(backend, key, max_size)
    monkeypatch.setattr(S3Backend, "get", get)
    _ok(dsv("clone", url, tmp_path / "clone", "--endpoint-url", s3_endpoint, cwd=tmp_path))
    assert read_tree(tmp_path / "clone") == made
    assert [k for k in asked if k.startswith("index/")] == []
    assert len([k for k in asked if k.startswith("midx/")]) == 1, asked


def test_a_clone_and_a_pull_open_their_origin_once(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetch, pull and the checkout's download share one opened remote: its marker is
    read and its packs listed once per command, not once per step."""
    ws, remote, made = _pushed(tmp_path, dsv, monkeypatch, files=12)
    gets = _Gets(monkeypatch)
    listed: list[str] = []
    real_list = FsBackend.list

    def list_(backend: FsBackend, prefix: str):  # type: ignore[no-untyped-def]
        listed.append(prefix)
        return real_list(backend, prefix)
    monkeypatch.setattr(FsBackend, "list", list_)
    _ok(dsv("clone", remote, tmp_path / "clone", cwd=tmp_path))
    assert read_tree(tmp_path / "clone") == made
    assert gets.keys.count(layout.REMOTE_MARKER) == 1 and listed.count("index/") == 1, \
        (gets.keys, listed)
    write_tree(ws, {"d1/more.bin": os.urandom(5000)})
    _ok(dsv("commit", "-m", "two", cwd=ws))
    _ok(dsv("push", cwd=ws))
    gets.keys.clear()
    listed.clear()
    _ok(dsv("pull", cwd=tmp_path / "clone"))
    assert (tmp_path / "clone" / "d1" / "more.bin").read_bytes() == \
        (ws / "d1" / "more.bin").read_bytes()
    assert gets.keys.count(layout.REMOTE_MARKER) == 1 and listed.count("index/") == 1, \
        (gets.keys, listed)


def test_a_push_past_the_size_bound_writes_several_each_within_it(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "MAX_MULTI_BYTES", 1500)   # (about 6 packs' indexes here)
    _ws, remote, made = _pushed(tmp_path, dsv, monkeypatch)
    keys = _multi_keys(remote)
    assert len(keys) >= 3, keys
    covered: list[str] = []
    for key in keys:
        raw = (remote / key).read_bytes()
        assert len(raw) <= 1500
        named, body_id = layout.multi_index_of_key(key) or ("", "")
        held = [p for p, _d in layout.parse_multi_index(raw, named, body_id)]
        assert len(held) >= layout.MULTI_MIN_PACKS and held[0] == named
        covered += held
    packs = _index_ids(remote)
    assert len(covered) == len(set(covered)) and set(covered) <= packs
    gets = _Gets(monkeypatch)
    _ok(dsv("clone", remote, tmp_path / "clone", cwd=tmp_path))
    assert read_tree(tmp_path / "clone") == made
    assert sorted(gets.under("midx/")) == keys
    assert {k.split("/")[1] for k in gets.under("index/")} == packs - set(covered)
