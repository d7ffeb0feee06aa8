"""A reader whose picture of a remote is stale (another client repacked it, or `verify
--remote --repair` replaced a pack) refreshes it once and reads the objects where they
are now, instead of failing (issue 11: remotes shared by many clients for years)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import read_tree, write_tree
from dsv.objects import encode_pack, pack_tail_size, parse_pack_index


def _repack(remote: Path, pack_id: str) -> bool:
    """Move every object of `pack_id` into a new pack (other order: another id), as a
    maintenance run of another client would, and delete the old pack and its index;
    False for a pack of one object (its new id would be the same)."""
    tail = (remote / "index" / pack_id).read_bytes()
    entries, _total = parse_pack_index(tail, pack_id)
    if len(entries) < 2:
        return False
    data = (remote / "packs" / f"{pack_id}.pack").read_bytes()
    objects = [(e.oid, e.kind, data[e.offset:e.offset + e.length]) for e in reversed(entries)]
    new_id, new_data, new_entries = encode_pack(objects)
    assert new_id != pack_id
    (remote / "packs" / f"{new_id}.pack").write_bytes(new_data)
    (remote / "index" / new_id).write_bytes(new_data[len(new_data)
                                                     - pack_tail_size(len(new_entries)):])
    (remote / "index" / pack_id).unlink()
    (remote / "packs" / f"{pack_id}.pack").unlink()
    return True


def _pushed(tmp_path: Path, dsv, files: dict[str, bytes | str]) -> tuple[Path, Path]:
    """A workspace `ws` with one committed version of `files`, pushed to `remote`."""
    ws = tmp_path / "ws"
    write_tree(ws, files)
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    return ws, remote


def test_a_pull_after_another_client_repacked_the_remote_reads_the_new_pack(
        tmp_path: Path, dsv) -> None:
    ws, remote = _pushed(tmp_path, dsv, {"a.txt": "alpha\n"})
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0
    before = set(os.listdir(remote / "packs"))
    files = {f"d/f{i}.bin": os.urandom(200 + i) for i in range(30)}
    write_tree(ws, files)
    assert dsv("commit", "-m", "two", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    new_packs = [p.removesuffix(".pack") for p in set(os.listdir(remote / "packs")) - before]
    assert dsv("fetch", cwd=other).code == 0  # learns where v2's objects are
    assert sum(_repack(remote, pack_id) for pack_id in new_packs) >= 1
    r = dsv("pull", cwd=other)
    assert r.code == 0, r.err
    assert read_tree(other) == {"a.txt": b"alpha\n", **files}
    assert dsv("verify", cwd=other).code == 0


def _fetched_then_repacked(tmp_path: Path, dsv) -> tuple[dict[str, bytes], Path, Path]:
    """Twenty files pushed to `remote`, and `other`, a bare store that fetched their
    version (its trees, no file contents); then the remote's packs are repacked, so that
    `other`'s picture names packs that are gone. Returns (files, remote, other)."""
    files = {f"f{i}.bin": os.urandom(300 + i) for i in range(20)}
    _ws, remote = _pushed(tmp_path, dsv, files)
    other = tmp_path / "other"
    other.mkdir()
    assert dsv("init", "--bare", other, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=other).code == 0
    assert dsv("fetch", cwd=other).code == 0     # versions and trees; no file contents
    packs = [p.removesuffix(".pack") for p in os.listdir(remote / "packs")]
    assert sum(_repack(remote, p) for p in packs) >= 1
    return files, remote, other


def _download_every_blob(other: Path, meddle: Callable[[Any], None] | None = None) -> int:
    """Download the blobs of `raw:latest` into the store `other` through a remote
    opened with its picture as it stands (`meddle`, given that remote, may wrap its
    backend); each is then read back, checked against its id. Returns how many objects
    the download received."""
    import dsv as dsv_api
    from dsv import tree
    from dsv.objects import Ingest
    from dsv.reports import FetchReport, PullReport
    from dsv.sync.download import download_blobs
    from dsv.sync.remote import open_remote

    with dsv_api.open(other) as store:
        core = store.core
        v = core.resolve("raw:latest")
        entries = dict(tree.blob_sizes(v.tree, core.read_tree))
        origin = open_remote(core, "origin")   # its picture: the packs before the repack
        if meddle is not None:
            meddle(origin)
        report = PullReport("-", FetchReport("-"))
        with core.locked("test"), Ingest(core.objects) as ingest:
            download_blobs(core, origin, entries, report, ingest)
            core.commit_objects(ingest)
        for oid in entries:
            assert core.objects.read(oid)  # verified on read
    return report.objects_received


def test_a_download_that_finds_its_pack_gone_refreshes_and_reads_it_from_the_new_one(
        tmp_path: Path, dsv) -> None:
    """The race itself: the picture was fresh when the download was planned, and the
    pack went before its bytes were read."""
    files, _remote, other = _fetched_then_repacked(tmp_path, dsv)
    assert _download_every_blob(other) == len(files)


def test_a_download_whose_pack_moves_again_as_it_retries_follows_it(
        tmp_path: Path, dsv) -> None:
    """A refresh may list a pack that a maintainer deletes the moment after (it uploads
    the merged pack first, then deletes the old ones): the retry finds that one gone
    too, and looks again rather than fail the clone (a CI run of the gc stress test
    failed so: `origin has no pack ...`)."""
    from dsv.remotes.layout import pack_id_of_key

    files, remote, other = _fetched_then_repacked(tmp_path, dsv)
    moved_again: list[str] = []

    def meddle(origin: Any) -> None:
        get_range = origin.backend.get_range

        def racing(key: str, start: int, length: int) -> bytes:
            pack_id = pack_id_of_key(key)
            if pack_id is not None and not moved_again and \
                    (remote / "packs" / f"{pack_id}.pack").exists():
                # the first read of a pack that is there: it moves as the read begins
                moved_again.append(pack_id)
                assert _repack(remote, pack_id)
            return get_range(key, start, length)

        origin.backend.get_range = racing

    assert _download_every_blob(other, meddle) == len(files)
    assert moved_again


def _small_pushes(tmp_path: Path, dsv, rounds: int) -> tuple[Path, Path]:
    ws = tmp_path / "ws"
    write_tree(ws, {"base.txt": "base\n"})
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    for i in range(rounds):
        write_tree(ws, {f"d/f{i}.txt": f"round {i}\n" * (i + 1)})
        assert dsv("commit", "-m", f"round {i}", cwd=ws).code == 0
        assert dsv("push", cwd=ws).code == 0
    return ws, remote


def test_maintain_repacks_small_packs_and_clones_still_work(tmp_path: Path, dsv) -> None:
    import json
    ws, remote = _small_pushes(tmp_path, dsv, 7)  # (fewer small packs than a push repacks)
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0  # a reader with the old picture
    before = sorted(os.listdir(remote / "index"))
    assert len(before) == 7 * 3
    r = dsv("remote", "maintain", "--json", cwd=ws)
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["packs_repacked"] == 21 and rep["packs_written"] == 3  # one per object kind
    assert rep["packs_after"] == 3 and rep["skipped"] == []
    assert len(os.listdir(remote / "index")) == 3 == len(os.listdir(remote / "packs"))
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0
    # Once more: one small pack per kind is nothing to repack (it would be written again
    # as itself, under its own name, and must never be deleted as "repacked").
    again = dsv("remote", "maintain", cwd=ws)
    assert again.code == 0 and "nothing to repack (3 packs)" in again.out, again.out
    assert len(os.listdir(remote / "packs")) == 3
    fresh = tmp_path / "fresh"
    assert dsv("clone", remote, fresh, cwd=tmp_path).code == 0
    assert read_tree(fresh) == read_tree(ws)
    # The reader with the old picture pulls a new version through the repacked remote.
    write_tree(ws, {"late.txt": "late\n"})
    assert dsv("commit", "-m", "late", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    assert dsv("pull", cwd=other).code == 0
    assert read_tree(other) == read_tree(ws)
    last = dsv("remote", "maintain", cwd=ws)
    assert last.code == 0 and "6 small packs repacked into 3" in last.out, last.out
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0


def test_maintain_leaves_a_damaged_pack_alone_and_says_so(tmp_path: Path, dsv) -> None:
    import json
    ws, remote = _small_pushes(tmp_path, dsv, 3)
    victim = sorted((remote / "packs").iterdir(), key=lambda p: -p.stat().st_size)[0]
    data = bytearray(victim.read_bytes())
    data[10] ^= 1
    victim.write_bytes(bytes(data))
    rep = json.loads(dsv("remote", "maintain", "--json", cwd=ws).out)
    assert rep["packs_repacked"] == 8 and len(rep["skipped"]) == 1
    assert victim.stem[:12] in rep["skipped"][0] and "corrupt" in rep["skipped"][0]
    assert victim.exists()  # never deleted, never copied: verify --remote --repair is for it


def test_a_push_repacks_once_the_remote_has_many_small_packs(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsv.sync import maintain
    monkeypatch.setattr(maintain, "AUTO_MAINTAIN_PACKS", 9)
    ws, remote = _small_pushes(tmp_path, dsv, 2)
    assert len(os.listdir(remote / "index")) == 6
    write_tree(ws, {"x.txt": "x\n"})
    assert dsv("commit", "-m", "third", cwd=ws).code == 0
    r = dsv("push", cwd=ws)
    assert r.code == 0 and "repacked 9 small packs on origin into 3" in r.out, r.out
    assert len(os.listdir(remote / "index")) == 3
    fresh = tmp_path / "fresh"
    assert dsv("clone", remote, fresh, cwd=tmp_path).code == 0
    assert read_tree(fresh) == read_tree(ws)


def test_a_pack_written_again_as_itself_is_never_deleted(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when asked to repack packs that come out identical (same objects, same order,
    same name), the maintainer deletes only packs whose objects now live elsewhere."""
    from dsv.sync import maintain
    ws, remote = _small_pushes(tmp_path, dsv, 1)
    monkeypatch.setattr(maintain, "small_packs",
                        lambda core, remote: sorted(core.index.remote_packs(remote.name)))
    before = sorted(os.listdir(remote / "packs"))
    r = dsv("remote", "maintain", cwd=ws)
    assert r.code == 0, r.err
    assert sorted(os.listdir(remote / "packs")) == before
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0


def test_one_maintainer_at_a_time_and_an_expired_lease_is_taken_over(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import time
    from dsv.sync import maintain
    ws, remote = _small_pushes(tmp_path, dsv, 3)
    lock = remote / "maintain.lock"
    lock.write_bytes(json.dumps({"owner": "someone", "until": time.time() + 600}).encode())
    r = dsv("remote", "maintain", cwd=ws)
    assert r.code == 1 and "another client is maintaining origin" in r.err
    assert len(os.listdir(remote / "index")) == 9  # nothing touched
    # A push past the threshold does not repack while the lease is held, and succeeds.
    monkeypatch.setattr(maintain, "AUTO_MAINTAIN_PACKS", 2)
    write_tree(ws, {"y.txt": "y\n"})
    assert dsv("commit", "-m", "y", cwd=ws).code == 0
    pushed = dsv("push", cwd=ws)
    assert pushed.code == 0 and "repacked" not in pushed.out
    assert len(os.listdir(remote / "index")) == 12
    # An expired lease is taken over, and given back at the end.
    lock.write_bytes(json.dumps({"owner": "someone", "until": time.time() - 1}).encode())
    r = dsv("remote", "maintain", cwd=ws)
    assert r.code == 0 and "12 small packs repacked into 3" in r.out, r.out + r.err
    assert not lock.exists()
    assert dsv("verify", "--remote", "origin", "--read-data", cwd=ws).code == 0


def test_a_push_whose_repack_fails_still_succeeds(tmp_path: Path, dsv,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from dsv.remotes.base import RemoteError
    from dsv.remotes.fs import FsBackend
    from dsv.sync import maintain
    ws, remote = _small_pushes(tmp_path, dsv, 2)
    monkeypatch.setattr(maintain, "AUTO_MAINTAIN_PACKS", 2)

    def denied(self: FsBackend, key: str) -> None:
        raise RemoteError(f"AccessDenied deleting {key}")

    monkeypatch.setattr(FsBackend, "delete", denied)
    write_tree(ws, {"z.txt": "z\n"})
    assert dsv("commit", "-m", "z", cwd=ws).code == 0
    r = dsv("push", "--json", cwd=ws)
    assert r.code == 0, r.err
    assert "warning: could not repack origin's small packs: AccessDenied" in r.err
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    assert dsv("clone", remote, fresh, cwd=tmp_path).code == 0
    assert read_tree(fresh) == read_tree(ws)


def test_a_remote_reader_whose_picture_went_stale_reads_it_again(tmp_path: Path, dsv) -> None:
    """A reader without a store (a mount, `dsv get`, a DataLoader) keeps the picture of
    the remote's packs it read; a maintainer that repacks the remote later makes both
    the locators' places and that picture name a gone pack. The reader reads the picture
    again rather than call the object damaged or missing; likewise for a tree."""
    import json

    from dsv.sync.reader import RemoteReader

    files = {f"d{i % 2}/f{i}.bin": os.urandom(300 + i) for i in range(20)}
    ws, remote = _pushed(tmp_path, dsv, files)
    rows = json.loads(dsv("files", "list", "raw:latest", "--recursive", "--json",
                          cwd=ws).out)
    wanted = {r["hash"]: r["size"] for r in rows if r["path"] in ("d1/f3.bin", "d0/f10.bin")}
    assert len(wanted) == 2
    reader = RemoteReader(str(remote))
    reader._read_picture()   # read before the repack (as a long-lived reader's is)
    packs = [p.removesuffix(".pack") for p in os.listdir(remote / "packs")]
    assert sum(_repack(remote, p) for p in packs) >= 1
    got = reader.read_blobs(wanted)
    assert {oid: bytes(data) for oid, data in got.items()} == \
        {r["hash"]: files[r["path"]] for r in rows if r["hash"] in wanted}
    reader._forget_picture()
    reader._read_picture()
    assert sum(_repack(remote, p.removesuffix(".pack"))
               for p in os.listdir(remote / "packs")) >= 1
    root = json.loads(dsv("show", "raw:latest", "--json", cwd=ws).out)["tree"]
    assert reader._fetch_packed(root)   # (checked against its id inside)
