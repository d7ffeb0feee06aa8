"""Dataset catalogs (issue 11): a client that works with one dataset of a shared remote
reads metadata in proportion to that dataset. A push names every pack holding a
version's objects under `catalog/<dataset>/` before any ref names the version; a
`clone --dataset` (and every later fetch of that store) lists only that dataset's refs
and catalog and reads only the pack indexes it names. Repacking and remote gc keep the
catalogs whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import read_tree, write_tree
from dsv.remotes.layout import REMOTE_FORMAT
from dsv.objects import parse_pack_index
from dsv.remotes.fs import FsBackend


def _files(tag: str, n: int = 20) -> dict[str, bytes]:
    return {f"{tag}/f{i:02d}.bin": os.urandom(150 + i) + tag.encode() for i in range(n)}


@pytest.fixture
def shared(tmp_path: Path, dsv) -> tuple[Path, Path]:
    """A workspace with datasets `alpha` and `beta`, pushed one after the other (so their
    objects are in different packs) to one directory remote."""
    ws = tmp_path / "ws"
    write_tree(ws, {**_files("alpha"), **_files("beta")})
    assert dsv("init", "--bare", ws, cwd=tmp_path).code == 0
    for name in ("alpha", "beta"):
        assert dsv("datasets", "create", name, "--path", name, cwd=ws).code == 0
        assert dsv("commit", "-m", name, cwd=ws / name).code == 0
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=ws).code == 0
    assert dsv("push", "origin", "alpha", cwd=ws).code == 0
    assert dsv("push", "origin", "beta", cwd=ws).code == 0
    return ws, remote


def _ids(ws: Path) -> dict[str, str]:
    rows = json.loads((ws / ".dsv" / "state.json").read_text())["datasets"]
    return {row["name"]: row["id"] for row in rows}


def _catalog(remote: Path, ds_id: str) -> set[str]:
    folder = remote / "catalog" / ds_id
    return set(os.listdir(folder)) if folder.is_dir() else set()


def _objects_of(remote: Path, pack_id: str) -> set[str]:
    entries, _size = parse_pack_index((remote / "index" / pack_id).read_bytes(), pack_id)
    return {e.oid for e in entries}


def _assert_catalog_whole(remote: Path, ws: Path, ds_id: str, name: str) -> None:
    """Every object of the dataset's pushed version (records, trees, blobs; all small
    here) is in a pack its catalog names, and every pack it names is there."""
    named = _catalog(remote, ds_id)
    assert named and all((remote / "index" / p).is_file() for p in named)
    held = set().union(*(_objects_of(remote, p) for p in named))
    from dsv import tree
    from dsv.store import Store
    store = Store.open(ws)
    v = store.core.version(store.core.index.dataset_by("name", name).latest)
    wanted = {v.record} | {oid for _kind, oid in tree.subtree_ids(v.tree, store.core.read_tree)}
    store.close()
    assert wanted <= held, f"{len(wanted - held)} objects of {name} in no pack its catalog names"


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key a directory remote is asked for (GET, ref read, or LIST prefix)."""
    seen: list[str] = []
    get, read_ref, listing = FsBackend.get, FsBackend.read_ref, FsBackend.list

    def spy_get(self: FsBackend, key: str, max_size: int | None = None) -> bytes:
        seen.append(key)
        return get(self, key, max_size)

    def spy_read_ref(self: FsBackend, key: str) -> tuple[bytes, str] | None:
        seen.append(key)
        return read_ref(self, key)

    def spy_list(self: FsBackend, prefix: str):  # type: ignore[no-untyped-def]
        seen.append(f"LIST {prefix}")
        return listing(self, prefix)
    monkeypatch.setattr(FsBackend, "get", spy_get)
    monkeypatch.setattr(FsBackend, "read_ref", spy_read_ref)
    monkeypatch.setattr(FsBackend, "list", spy_list)
    return seen


def test_a_push_names_every_pack_of_the_dataset_in_its_catalog(shared, dsv) -> None:
    ws, remote = shared
    ids = _ids(ws)
    assert json.loads((remote / "dsv-remote.json").read_text())["format"] == REMOTE_FORMAT
    alpha, beta = _catalog(remote, ids["alpha"]), _catalog(remote, ids["beta"])
    assert alpha and beta and not alpha & beta  # pushed apart: packs apart
    _assert_catalog_whole(remote, ws, ids["alpha"], "alpha")
    _assert_catalog_whole(remote, ws, ids["beta"], "beta")
    # A new version of beta that shares files with alpha's: the catalog names alpha's
    # pack too, since the push found those objects there.
    write_tree(ws / "beta", {k.replace("alpha/", ""): v for k, v in _files("alpha").items()
                             if k.startswith("alpha/")} | {"x.bin": b"x"})
    (ws / "beta" / "alpha").mkdir(exist_ok=True)
    assert dsv("commit", "-m", "more", cwd=ws / "beta").code == 0
    assert dsv("push", "origin", "beta", cwd=ws).code == 0
    _assert_catalog_whole(remote, ws, ids["beta"], "beta")


def test_a_clone_of_one_dataset_reads_only_its_metadata(
        shared, dsv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, remote = shared
    ids = _ids(ws)
    alpha_packs = _catalog(remote, ids["alpha"])
    seen = _reads(monkeypatch)
    clone = tmp_path / "clone"
    result = dsv("clone", remote, clone, "--dataset", "beta", cwd=tmp_path)
    assert result.code == 0, result.err
    assert read_tree(clone) == {k: v for k, v in read_tree(ws).items() if k.startswith("beta/")}
    read_indexes = {k.removeprefix("index/") for k in seen if k.startswith("index/")}
    assert read_indexes == _catalog(remote, ids["beta"])
    assert not read_indexes & alpha_packs
    # (finding the dataset by name reads each dataset's `latest` ref, and nothing else)
    assert {k for k in seen if ids["alpha"] in k} == {f"refs/{ids['alpha']}/latest"}
    assert "LIST index/" not in seen and "LIST packs/" not in seen
    # Later fetches of that store stay within its dataset; a new version of it arrives.
    write_tree(ws / "beta", {"new.bin": b"new"})
    assert dsv("commit", "-m", "new", cwd=ws / "beta").code == 0
    write_tree(ws / "alpha", {"other.bin": b"other"})
    assert dsv("commit", "-m", "other", cwd=ws / "alpha").code == 0
    assert dsv("push", cwd=ws).code == 0
    seen.clear()
    assert dsv("pull", cwd=clone).code == 0
    assert (clone / "beta" / "new.bin").read_bytes() == b"new"
    assert not (clone / "alpha").exists()
    assert not any(ids["alpha"] in k for k in seen)
    assert "LIST index/" not in seen and "LIST refs/" not in seen
    listed = dsv("datasets", "list", "--json", cwd=clone)
    assert [d["name"] for d in json.loads(listed.out)] == ["beta"]


def test_a_store_that_reads_every_dataset_pushes_reading_only_its_own(
        shared, dsv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store with its own dataset, added the shared remote and pushes to it: the push
    reads the catalogs and pack indexes of the datasets this store holds, none of the
    others' refs, catalogs or pack indexes (it lists `index/` and `packs/`, a request per
    1,000 packs, to see packs that went)."""
    ws, remote = shared
    ids = _ids(ws)
    others = _catalog(remote, ids["alpha"]) | _catalog(remote, ids["beta"])
    solo = tmp_path / "solo"
    write_tree(solo, _files("gamma"))
    assert dsv("init", "--name", "gamma", solo, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "gamma", cwd=solo).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=solo).code == 0
    seen = _reads(monkeypatch)
    for round_no in range(2):   # a first push, and one more on top of it
        if round_no:
            write_tree(solo, {f"more{round_no}.bin": os.urandom(500)})
            assert dsv("commit", "-m", "more", cwd=solo).code == 0
        result = dsv("push", cwd=solo)
        assert result.code == 0, result.err
        read_indexes = {k.removeprefix("index/") for k in seen if k.startswith("index/")}
        assert not read_indexes & others, round_no
        assert not any(ids["alpha"] in k or ids["beta"] in k for k in seen)
    gamma = _ids(solo)["gamma"]
    assert read_indexes <= _catalog(remote, gamma)
    _assert_catalog_whole(remote, solo, gamma, "gamma")
    # Everyone still clones everything.
    clone = tmp_path / "everything"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    assert read_tree(clone) == {**read_tree(ws), **read_tree(solo)}   # (gamma at the top)


def test_a_clone_by_dataset_id_and_an_unknown_name(shared, dsv, tmp_path: Path) -> None:
    ws, remote = shared
    ids = _ids(ws)
    assert dsv("clone", remote, tmp_path / "c1", "--dataset", ids["alpha"],
               cwd=tmp_path).code == 0
    assert sorted(os.listdir(tmp_path / "c1")) == [".dsv", "alpha"]
    bad = dsv("clone", remote, tmp_path / "c2", "--dataset", "gamma", cwd=tmp_path)
    assert bad.code != 0 and "has no dataset 'gamma'" in bad.err and "alpha" in bad.err
    assert not (tmp_path / "c2").exists()


def test_catalogs_stay_whole_through_maintain_and_gc(shared, dsv, tmp_path: Path) -> None:
    ws, remote = shared
    ids = _ids(ws)
    for round_no in range(2):  # small packs of both datasets, to be merged
        for name in ("alpha", "beta"):
            write_tree(ws / name, {f"r{round_no}.bin": os.urandom(300)})
            assert dsv("commit", "-m", f"{name} {round_no}", cwd=ws / name).code == 0
            assert dsv("push", "origin", name, cwd=ws).code == 0
    packs_before = set(os.listdir(remote / "packs"))
    result = dsv("remote", "maintain", "origin", cwd=ws)
    assert result.code == 0, result.err
    assert set(os.listdir(remote / "packs")) != packs_before
    for name in ("alpha", "beta"):
        _assert_catalog_whole(remote, ws, ids[name], name)
    every_pack = {p.removesuffix(".pack") for p in os.listdir(remote / "packs")}
    assert _catalog(remote, ids["alpha"]) | _catalog(remote, ids["beta"]) <= every_pack
    # alpha goes from the remote; gc takes its packs and its catalog.
    assert dsv("push", "origin", "--delete", "alpha:latest", cwd=ws).code == 0
    result = dsv("gc", "--remote", "origin", cwd=ws)
    assert result.code == 0, result.err
    assert not _catalog(remote, ids["alpha"]), result.out + result.err
    assert not _catalog(remote, ids["alpha"])
    _assert_catalog_whole(remote, ws, ids["beta"], "beta")
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, "--dataset", "beta", cwd=tmp_path).code == 0
    assert read_tree(clone / "beta") == read_tree(ws / "beta")


def test_a_remote_without_catalogs_is_read_whole_until_gc_writes_them(
        shared, dsv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Format 2 (written before catalogs): a catalog there may be partial, so a clone of
    one dataset reads every index rather than trust it, and still gets everything. A
    remote gc writes every dataset's catalog and raises the remote to format 3."""
    ws, remote = shared
    ids = _ids(ws)
    import shutil
    shutil.rmtree(remote / "catalog")
    (remote / "dsv-remote.json").write_text('{"format": 2, "hash": "blake3"}\n')
    seen = _reads(monkeypatch)
    clone = tmp_path / "clone"
    result = dsv("clone", remote, clone, "--dataset", "beta", cwd=tmp_path)
    assert result.code == 0, result.err
    assert read_tree(clone / "beta") == read_tree(ws / "beta")
    assert "LIST index/" in seen and not (clone / "alpha").exists()
    result = dsv("gc", "--remote", "origin", cwd=ws)
    assert result.code == 0, result.err
    assert "raised to remote format 3" in result.out
    assert json.loads((remote / "dsv-remote.json").read_text())["format"] == 3
    for name in ("alpha", "beta"):
        _assert_catalog_whole(remote, ws, ids[name], name)
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0
    seen.clear()
    other = tmp_path / "other"
    assert dsv("clone", remote, other, "--dataset", "alpha", cwd=tmp_path).code == 0
    assert read_tree(other / "alpha") == read_tree(ws / "alpha")
    assert "LIST index/" not in seen


def test_verify_remote_finds_and_mends_a_partial_catalog(shared, dsv) -> None:
    ws, remote = shared
    ids = _ids(ws)
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0
    lost = sorted(_catalog(remote, ids["beta"]))[0]
    (remote / "catalog" / ids["beta"] / lost).unlink()
    result = dsv("verify", "--remote", "origin", cwd=ws)
    assert result.code != 0
    assert f"catalog of dataset {ids['beta']} names no pack holding" in result.out + result.err
    result = dsv("verify", "--remote", "origin", "--repair", cwd=ws)
    assert result.code == 0, result.out + result.err
    assert lost in _catalog(remote, ids["beta"])
    _assert_catalog_whole(remote, ws, ids["beta"], "beta")


def test_a_clone_of_one_dataset_over_s3(tmp_path: Path, dsv, s3_endpoint: str,
                                        aws_env: None) -> None:
    import boto3
    bucket = f"b{os.urandom(4).hex()}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    ws = tmp_path / "ws"
    write_tree(ws, {**_files("alpha"), **_files("beta")})
    assert dsv("init", "--bare", ws, cwd=tmp_path).code == 0
    url = f"s3://{bucket}/shared"
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=ws).code == 0
    for name in ("alpha", "beta"):
        assert dsv("datasets", "create", name, "--path", name, cwd=ws).code == 0
        assert dsv("commit", "-m", name, cwd=ws / name).code == 0
        assert dsv("push", "origin", name, cwd=ws).code == 0
    ids = _ids(ws)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    named = {k.rpartition("/")[2] for k in keys
             if k.startswith(f"shared/catalog/{ids['beta']}/")}
    assert len(named) == 3 and s3.get_object(
        Bucket=bucket, Key=f"shared/catalog/{ids['beta']}/{min(named)}")["Body"].read() == b"1\n"
    clone = tmp_path / "clone"
    result = dsv("clone", url, clone, "--endpoint-url", s3_endpoint, "--dataset", "beta",
                 cwd=tmp_path)
    assert result.code == 0, result.err
    assert read_tree(clone) == {k: v for k, v in read_tree(ws).items() if k.startswith("beta/")}


def test_gc_names_the_surviving_copy_of_an_object_in_the_catalog(shared, dsv,
                                                                 tmp_path: Path) -> None:
    """beta's new line holds a file that alpha's pack also holds; beta's catalog named
    only its own copy's pack. A gc that deletes that (partly-live) pack must leave beta's
    catalog naming alpha's copy."""
    ws, remote = shared
    ids = _ids(ws)
    scoped = tmp_path / "scoped"
    assert dsv("clone", remote, scoped, "--dataset", "beta", cwd=tmp_path).code == 0
    first = json.loads(dsv("show", "beta:latest", "--json", cwd=scoped).out)["id"]
    shared_file = (ws / "alpha" / "f00.bin").read_bytes()
    write_tree(scoped / "beta", {"shared.bin": shared_file, "gone.bin": os.urandom(500)})
    assert dsv("commit", "-m", "two", cwd=scoped / "beta").code == 0
    assert dsv("push", cwd=scoped).code == 0
    assert dsv("checkout", f"beta:{first}", cwd=scoped / "beta").code == 0
    write_tree(scoped / "beta", {"shared.bin": shared_file})
    assert dsv("commit", "--force", "-m", "other line", cwd=scoped / "beta").code == 0
    assert dsv("push", "--force", cwd=scoped).code == 0
    result = dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert result.code == 0 and json.loads(result.out)["packs_rewritten"] >= 1, result.out
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0
    clone = tmp_path / "clone"
    result = dsv("clone", remote, clone, "--dataset", "beta", cwd=tmp_path)
    assert result.code == 0 and "do not name everything" not in result.err, result.err
    assert (clone / "beta" / "shared.bin").read_bytes() == shared_file
    assert ids["beta"] in {ds for ds in os.listdir(remote / "catalog")}


def test_maintain_leaves_a_killed_pushs_unnamed_packs_alone(shared, dsv,
                                                            tmp_path: Path) -> None:
    """A push killed after its uploads, before it named them: merged into a named pack,
    its record would seem named, and the push run again would skip naming the rest."""
    from conftest import run_dsv
    ws, remote = shared
    ids = _ids(ws)
    write_tree(ws / "alpha", {f"big{i}.bin": os.urandom(900_000) for i in range(10)})
    assert dsv("commit", "-m", "big", cwd=ws / "alpha").code == 0
    killed = run_dsv("push", "origin", "alpha", cwd=ws,
                     env={"DSV_CRASH_AT": "push:phase-sent", "DSV_CRASH_AFTER": "3"})
    assert killed.returncode != 0
    for _ in range(2):  # more small named packs, so maintain has work
        write_tree(ws / "beta", {f"n{_}.bin": os.urandom(300)})
        assert dsv("commit", "-m", "n", cwd=ws / "beta").code == 0
        assert dsv("push", "origin", "beta", cwd=ws).code == 0
    assert dsv("remote", "maintain", "origin", cwd=ws).code == 0
    assert dsv("push", "origin", "alpha", cwd=ws).code == 0
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0
    _assert_catalog_whole(remote, ws, ids["alpha"], "alpha")
    clone = tmp_path / "clone"
    result = dsv("clone", remote, clone, "--dataset", "alpha", cwd=tmp_path)
    assert result.code == 0 and "do not name everything" not in result.err, result.err
    assert read_tree(clone / "alpha") == read_tree(ws / "alpha")


def test_a_reader_whose_catalog_falls_short_reads_every_index(shared, dsv,
                                                              tmp_path: Path) -> None:
    """A catalog is an economy, never a reason to fail: a store that reads one dataset
    and finds what it needs in no pack the catalog names reads every pack index, once,
    and says so."""
    ws, remote = shared
    ids = _ids(ws)
    import shutil
    shutil.rmtree(remote / "catalog" / ids["beta"])
    clone = tmp_path / "clone"
    result = dsv("clone", remote, clone, "--dataset", "beta", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "the catalogs of origin do not name everything" in result.err
    assert read_tree(clone) == {k: v for k, v in read_tree(ws).items() if k.startswith("beta/")}


def test_a_fetch_of_another_dataset_widens_a_scoped_store(shared, dsv, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    ws, remote = shared
    ids = _ids(ws)
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, "--dataset", "beta", cwd=tmp_path).code == 0
    result = dsv("fetch", "origin", "alpha", "--json", cwd=clone)
    assert result.code == 0, result.err
    assert {d["name"] for d in json.loads(dsv("datasets", "list", "--json", cwd=clone).out)} \
        == {"alpha", "beta"}
    write_tree(ws / "alpha", {"later.bin": b"later"})
    assert dsv("commit", "-m", "later", cwd=ws / "alpha").code == 0
    assert dsv("push", "origin", "alpha", cwd=ws).code == 0
    seen = _reads(monkeypatch)
    result = dsv("fetch", "--json", cwd=clone)  # the store reads alpha now too
    assert result.code == 0, result.err
    assert "alpha:latest" in json.loads(result.out)["refs"]
    assert f"LIST catalog/{ids['alpha']}/" in seen and "LIST index/" not in seen
    bad = dsv("fetch", "origin", "gamma", cwd=clone)
    assert bad.code != 0 and "has no dataset 'gamma'" in bad.err


@pytest.mark.parametrize("scoped", [True, False], ids=["clone-dataset", "remote-add"])
def test_a_noted_pack_that_is_no_pack_id_is_never_asked_for(
        shared, dsv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scoped: bool) -> None:
    """The packs a push noted before uploading them (`remote_sending`), and the datasets
    of a store's scope, are read from an index another hand may have touched: an id
    that is not a hash (or a dataset id) is never made a key."""
    import sqlite3
    ws, remote = shared
    store = tmp_path / "store"
    if scoped:
        assert dsv("clone", remote, store, "--dataset", "beta", cwd=tmp_path).code == 0
        work = store / "beta"
    else:
        work = store / "gamma"
        write_tree(work, _files("gamma"))
        assert dsv("init", "--name", "gamma", work, cwd=tmp_path).code == 0
        assert dsv("remote", "add", "origin", remote, cwd=work).code == 0
        store = work
    bad = ["../dsv-remote.json", "../../../etc/passwd", "A" * 64, "ab/" + "c" * 61]
    with sqlite3.connect(store / ".dsv" / "index.db") as conn:
        conn.executemany("INSERT INTO remote_sending (remote, pack) VALUES ('origin', ?)",
                         [(b,) for b in bad])
        if scoped:   # (and a dataset of the scope that is no dataset id)
            row = conn.execute("SELECT value FROM meta WHERE key='remote-scope:origin'")
            scope = json.loads(row.fetchone()[0]) + ["../refs"]
            conn.execute("UPDATE meta SET value=? WHERE key='remote-scope:origin'",
                         (json.dumps(scope),))
            bad += ["catalog/../refs", "refs/../refs"]
    write_tree(work, {"new.bin": os.urandom(300)})
    assert dsv("commit", "-m", "more", cwd=work).code == 0
    seen = _reads(monkeypatch)
    result = dsv("push", cwd=work)
    assert result.code == 0, result.err
    assert not [k for k in seen if any(b in k for b in bad)], seen
