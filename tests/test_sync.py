"""Sync as a user sees it: remotes, push, fetch, pull, clone and the cluster cache, against
a directory remote and a real S3 protocol server (moto's server mode) over HTTP."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import boto3
import pytest

from conftest import read_tree, unnumber_index, write_tree
from dsv.hashing import hash_bytes

SECRET = "testing-secret"


def _files(n: int = 40, big: int = 2) -> dict[str, bytes]:
    files = {f"d{i % 4}/f{i:03d}.bin": os.urandom(100 + 37 * i) for i in range(n)}
    for i in range(big):
        files[f"big/shard{i}.bin"] = os.urandom((1 << 20) + 4096 * (i + 1))
    files["labels.csv"] = b"id,label\n" + b"".join(b"%d,%d\n" % (i, i % 3) for i in range(50))
    return files


def _cache_files(cache: Path) -> list[Path]:
    """Cached packs and loose objects (not pending markers or temp files)."""
    return sorted(p for p in cache.rglob("*") if p.is_file()
                  and p.relative_to(cache).parts[0] in ("packs", "loose"))


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".dsv"]
        for name in filenames:
            p = Path(dirpath, name)
            out[p.relative_to(root).as_posix()] = stat.S_IMODE(p.lstat().st_mode)
    return out


@pytest.fixture
def source(tmp_path: Path, dsv):
    """A workspace `src` (dataset `data`) with one committed, tagged version."""
    src = tmp_path / "src"
    write_tree(src, _files())
    os.chmod(src / "d0/f000.bin", 0o755)
    os.symlink("labels.csv", src / "alias.csv")
    assert dsv("init", "--name", "data", src, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "first", cwd=src).code == 0
    assert dsv("tag", "data:latest", "v1", cwd=src).code == 0
    return src


@pytest.fixture
def bucket(s3_endpoint: str, aws_env: None) -> str:
    name = f"b{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _json(result) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


# ---- remotes -------------------------------------------------------------------------

def test_remote_add_list_remove_and_no_secret_in_store(source: Path, dsv, s3_endpoint, aws_env,
                                                       tmp_path: Path) -> None:
    r = dsv("remote", "add", "origin", "s3://bkt/some/prefix/", "--endpoint-url", s3_endpoint,
            "--profile", "default", cwd=source)
    assert r.code == 0 and "(default)" in r.out
    r = dsv("remote", "add", "shared", tmp_path / "cache", "--cache", "--ttl", "7d",
            "--max-size", "500G", cwd=source)
    assert r.code == 0
    listed = _json(dsv("remote", "list", "--json", cwd=source))
    assert [(x["name"], x["kind"], x["url"]) for x in listed] == [
        ("origin", "origin", "s3://bkt/some/prefix"),
        ("shared", "cache", str(tmp_path / "cache"))]
    assert listed[1]["ttl"] == 7 * 86400 and listed[1]["max_size"] == 500 << 30
    assert listed[0]["default"] is True
    r = dsv("remote", "add", "origin", "/elsewhere", cwd=source)
    assert r.code == 1 and "already exists" in r.err
    r = dsv("remote", "add", "x", "/elsewhere", "--ttl", "1d", cwd=source)
    assert r.code == 1 and "--cache" in r.err
    for dirpath, _dirs, files in os.walk(source / ".dsv"):
        for name in files:
            assert SECRET.encode() not in Path(dirpath, name).read_bytes()
    assert dsv("remote", "remove", "shared", cwd=source).code == 0
    assert [x["name"] for x in _json(dsv("remote", "list", "--json", cwd=source))] == ["origin"]


# ---- round trips -----------------------------------------------------------------------

def _roundtrip(source: Path, dsv, tmp_path: Path, url: str, *extra: str) -> Path:
    assert dsv("remote", "add", "origin", url, *extra, cwd=source).code == 0
    first = _json(dsv("push", "--json", cwd=source))
    assert first["objects_sent"] > 0 and first["rejected"] == []
    assert sorted(first["refs_updated"])[0].startswith("data:latest -> ")
    clone = tmp_path / "clone"
    r = dsv("clone", url, clone, *extra, cwd=tmp_path)
    assert r.code == 0, r.err
    assert read_tree(clone) == read_tree(source)
    assert _modes(clone) == _modes(source)
    assert os.readlink(clone / "alias.csv") == "labels.csv"
    # checkout by tag elsewhere, in the clone
    r = dsv("checkout", "data:v1", "--to", tmp_path / "v1", cwd=clone)
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "v1") == read_tree(source)
    assert dsv("verify", cwd=clone).code == 0
    # a second push with nothing new sends nothing
    again = _json(dsv("push", "--json", cwd=source))
    assert again["objects_sent"] == 0 and again["bytes_sent"] == 0
    assert again["refs_updated"] == [] and sorted(again["refs_unchanged"]) == ["data:latest",
                                                                               "data:v1"]
    return clone


def test_push_clone_checkout_directory_remote(source: Path, dsv, tmp_path: Path) -> None:
    _roundtrip(source, dsv, tmp_path, str(tmp_path / "remote"))
    layout = {p.relative_to(tmp_path / "remote").parts[0]
              for p in (tmp_path / "remote").rglob("*") if p.is_file()}
    assert {"dsv-remote.json", "packs", "index", "loose", "refs"} <= layout


def test_a_clone_an_older_dsv_made_is_migrated_and_syncs_as_before(source: Path, dsv,
                                                                  tmp_path: Path) -> None:
    """A clone whose index is schema 9's (local and remote pack rows naming packs by id):
    its first command migrates it, what it knew of the remote is kept (a pull downloads
    only the new version's objects), and it pushes and pulls as before."""
    remote = str(tmp_path / "remote")
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    unnumber_index(clone / ".dsv", 2)
    write_tree(source, {"new.txt": b"pushed after the clone"})
    assert dsv("commit", "-m", "second", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    pulled = _json(dsv("pull", "--json", cwd=clone))
    assert pulled["objects_received"] == 1   # the new file: nothing it had again
    assert json.loads((clone / ".dsv" / "config.json").read_text())["format"] == 3
    assert read_tree(clone) == read_tree(source)
    write_tree(clone, {"from-clone.txt": b"back"})
    assert dsv("commit", "-m", "third", cwd=clone).code == 0
    pushed = _json(dsv("push", "--json", cwd=clone))
    assert pushed["objects_sent"] == 3, pushed   # the new file, its tree and record
    assert dsv("pull", cwd=source).code == 0
    assert read_tree(source)["from-clone.txt"] == b"back"
    assert dsv("verify", cwd=clone).code == 0


def test_push_clone_checkout_s3(source: Path, dsv, tmp_path: Path, s3_endpoint: str,
                                bucket: str) -> None:
    _roundtrip(source, dsv, tmp_path, f"s3://{bucket}/team/ds", "--endpoint-url", s3_endpoint)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
        Bucket=bucket)["Contents"]]
    assert all(k.startswith("team/ds/") for k in keys)
    assert any(k.startswith("team/ds/refs/") and k.endswith("/latest") for k in keys)
    # loose blobs keep their names: the key is the blake3 of the bytes
    big = (source / "big/shard0.bin").read_bytes()
    oid = hash_bytes(big)
    assert f"team/ds/loose/{oid[:2]}/{oid}" in keys


def test_a_clone_makes_one_s3_client(source: Path, dsv, tmp_path: Path, s3_endpoint: str,
                                     bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client a clone checks its remote with is the one it fetches and downloads
    through (each S3 client costs tens of ms of CPU: botocore's models)."""
    from dsv.remotes import s3
    url = f"s3://{bucket}/ds"
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint,
               cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    made = []
    make = s3.make_client

    def counted(*args: object, **kwargs: object) -> object:
        made.append(args)
        return make(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(s3, "make_client", counted)
    for name, extra in (("all", ()), ("one", ("--dataset", "data"))):
        r = dsv("clone", url, tmp_path / name, "--endpoint-url", s3_endpoint, *extra,
                cwd=tmp_path)
        assert r.code == 0, r.err
        assert read_tree(tmp_path / name) == read_tree(source)
        assert len(made) == 1, (name, made)
        made.clear()


def test_incremental_push_sends_only_new_objects(source: Path, dsv, tmp_path: Path) -> None:
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=source).code == 0
    first = _json(dsv("push", "--json", cwd=source))
    (source / "d1/f001.bin").write_bytes(b"changed")
    assert dsv("commit", "-m", "one file", cwd=source).code == 0
    second = _json(dsv("push", "--json", cwd=source))
    # the changed blob, the trees on its path (root + d1) and the record
    assert second["objects_sent"] == 4, second
    assert second["bytes_sent"] < 5000 < first["bytes_sent"]
    assert any(r.startswith("data:latest -> ") for r in second["refs_updated"])


def test_pull_fast_forwards_and_updates_worktree(source: Path, dsv, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    (source / "new.txt").write_bytes(b"hello")
    (source / "d2/f002.bin").unlink()
    assert dsv("commit", "-m", "second", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    r = _json(dsv("pull", "--json", cwd=clone))
    assert any(u.startswith("data:latest -> ") for u in r["updated"])
    assert len(r["checked_out"]) == 1
    assert read_tree(clone) == read_tree(source)
    st = _json(dsv("status", "--json", cwd=clone))
    assert st[0]["clean"] is True


def test_non_fast_forward_refused_then_forced(source: Path, dsv, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0
    (other / "theirs.txt").write_bytes(b"theirs")
    assert dsv("commit", "-m", "theirs", cwd=other).code == 0
    assert dsv("push", cwd=other).code == 0
    (source / "mine.txt").write_bytes(b"mine")
    mine = dsv("commit", "-m", "mine", cwd=source).out.strip().split(":")[1]
    r = dsv("push", cwd=source)
    assert r.code == 1
    assert "refused, nothing was sent" in r.err and "data:latest" in r.err
    assert "does not descend" in r.err
    assert "dsv pull" in r.err
    # nothing local is lost
    assert _json(dsv("show", "data:latest", "--json", cwd=source))["id"] == mine
    assert (source / "mine.txt").read_bytes() == b"mine"
    # a pull reports the divergence and keeps local latest
    r = _json(dsv("pull", "--json", cwd=source))
    assert r["diverged"] and _json(dsv("show", "data:latest", "--json", cwd=source))["id"] == mine
    r = dsv("push", "--force", cwd=source)
    assert r.code == 0, r.err
    fresh = tmp_path / "fresh"
    assert dsv("clone", remote, fresh, cwd=tmp_path).code == 0
    assert (fresh / "mine.txt").read_bytes() == b"mine" and not (fresh / "theirs.txt").exists()
    # the forced-over version stays stored on the remote, but no ref reaches it, so a
    # clone does not fetch it (as git does not fetch unreachable commits)
    log = _json(dsv("log", "--json", cwd=fresh))
    assert [v["message"] for v in log] == ["mine", "first"] and log[0]["id"] == mine


def test_moving_a_remote_tag_needs_force(source: Path, dsv, tmp_path: Path) -> None:
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    (source / "x.txt").write_bytes(b"x")
    assert dsv("commit", "-m", "x", cwd=source).code == 0
    assert dsv("tag", "--force", "data:latest", "v1", cwd=source).code == 0
    r = dsv("push", cwd=source)
    assert r.code == 1 and "data:v1" in r.err and "--force" in r.err
    refs_dir = next((tmp_path / "remote/refs").iterdir())
    latest = json.loads((refs_dir / "latest").read_bytes())
    head = _json(dsv("show", "data:latest", "--json", cwd=source))
    # refused before anything was sent: not even the fast-forward of latest
    assert latest["version"] != head["id"]
    assert json.loads((refs_dir / "tags/v1").read_bytes())["version"] != head["id"]
    assert dsv("push", "--force", cwd=source).code == 0
    assert json.loads((refs_dir / "tags/v1").read_bytes())["version"] == head["id"]
    assert json.loads((refs_dir / "latest").read_bytes())["version"] == head["id"]


# ---- fetch, partial pull, lazy checkout ------------------------------------------------

def test_fetch_brings_versions_not_contents_and_checkout_downloads(
        source: Path, dsv, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    local = tmp_path / "local"
    assert dsv("init", "--bare", local, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=local).code == 0
    f = _json(dsv("fetch", "--json", cwd=local))
    assert len(f["new_versions"]) == 1 and f["new_datasets"] == ["data"]
    assert f["refs"] == {"data:latest": f["new_versions"][0], "data:v1": f["new_versions"][0]}
    assert not list((local / ".dsv/objects/loose").rglob("*")) or \
        all(p.is_dir() for p in (local / ".dsv/objects/loose").rglob("*"))
    assert dsv("verify", cwd=local).code == 0   # fetched versions may lack their blobs
    log = _json(dsv("log", "data", "--json", cwd=local))
    assert log[0]["message"] == "first"
    listing = _json(dsv("files", "list", f"data:{f['new_versions'][0]}", "--recursive",
                        "--json", cwd=local))
    assert len(listing) == len(read_tree(source)) + 1  # + the symlink
    r = dsv("checkout", f"data:{f['new_versions'][0]}", "--to", tmp_path / "out", cwd=local)
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "out") == read_tree(source)


def test_partial_pull_downloads_only_the_paths(source: Path, dsv, tmp_path: Path,
                                               s3_endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/p"
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    local = tmp_path / "local"
    assert dsv("init", "--bare", local, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=local).code == 0
    r = _json(dsv("pull", "data:v1", "--path", "d1", "--json", cwd=local))
    wanted = {p: b for p, b in read_tree(source).items() if p.startswith("d1/")}
    assert r["objects_received"] == len(wanted)
    assert r["bytes_received"] == sum(len(b) for b in wanted.values())
    assert dsv("files", "get", "data:v1", "d1", "--target-path", tmp_path / "got",
               cwd=local).code == 0
    assert read_tree(tmp_path / "got") == wanted
    # the other files were not downloaded
    assert r["bytes_received"] < sum(len(b) for b in read_tree(source).values()) // 10


# ---- cluster cache ------------------------------------------------------------------------

def test_cluster_cache_fills_serves_and_survives_origin_outage(
        source: Path, dsv, tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/c"
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    a = tmp_path / "a"
    assert dsv("init", "--bare", a, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=a).code == 0
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=a).code == 0
    first = _json(dsv("pull", "--json", cwd=a))
    assert first["from_cache"] == 0 and first["objects_received"] > 0
    cached = _cache_files(cache)
    assert any(p.parent.name == "packs" for p in cached)
    assert any("loose" in p.parts for p in cached)
    # a second machine reads from the cache
    b = tmp_path / "b"
    assert dsv("init", "--bare", b, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=b).code == 0
    assert dsv("remote", "add", "shared", cache, "--cache", cwd=b).code == 0
    assert dsv("fetch", cwd=b).code == 0
    # the origin goes away: objects in the cache can still be pulled
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    conn = __import__("sqlite3").connect(b / ".dsv/index.db")
    conn.execute("UPDATE remotes SET endpoint_url=? WHERE name='origin'", (dead,))
    conn.commit()
    conn.close()
    r = dsv("pull", "--json", "data:v1", cwd=b)
    assert r.code == 0, r.err
    second = json.loads(r.out)
    assert second["from_cache"] == second["objects_received"] > 0
    assert "cluster cache only" in r.err
    assert dsv("checkout", "data:v1", "--to", tmp_path / "out", cwd=b).code == 0
    assert read_tree(tmp_path / "out") == read_tree(source)


def test_a_cache_that_cannot_be_filled_costs_speed_never_the_pull(
        tmp_path: Path, source: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared cache whose directories another user made (mode 755), or that is full:
    every fill fails, and the pull reads the origin as if there were no cache."""
    import errno

    from dsv.remotes.cache import ClusterCache
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    dest = tmp_path / "dest"
    assert dsv("init", "--bare", dest, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=dest).code == 0
    assert dsv("remote", "add", "shared", tmp_path / "cache", "--cache", cwd=dest).code == 0

    def refused(self: ClusterCache, path: str, write) -> None:  # noqa: ANN001
        raise PermissionError(errno.EACCES, "Permission denied", "tmp")

    with monkeypatch.context() as patched:
        patched.setattr(ClusterCache, "_fill", refused)
        r = dsv("pull", "--json", cwd=dest)
    assert r.code == 0, r.err
    assert json.loads(r.out)["from_cache"] == 0
    assert r.err.count("could not fill the cluster cache") == 1, r.err
    assert dsv("checkout", "data:v1", "--to", tmp_path / "out", cwd=dest).code == 0
    assert read_tree(tmp_path / "out") == read_tree(source)
    assert dsv("verify", cwd=dest).code == 0


def test_cache_prune_by_age_and_size_keeps_pending(tmp_path: Path, source: Path, dsv) -> None:
    cache = tmp_path / "cache"
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("remote", "add", "shared", cache, "--cache", "--write-through", "--ttl", "1h",
               cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    entries = _cache_files(cache)
    assert entries and not list((cache / "pending").iterdir())  # origin has them all
    old = time.time() - 7200
    os.utime(entries[0], (old, old))
    # an entry only in the cache (its upload to the origin not finished) stays
    (cache / "pending").mkdir(exist_ok=True)
    (cache / "pending" / f"packs-{entries[1].name}").touch() if entries[1].parent.name == "packs" \
        else (cache / "pending" / f"loose-{entries[1].parent.name}-{entries[1].name}").touch()
    os.utime(entries[1], (old, old))
    r = _json(dsv("cache", "prune", "--json", cwd=source))
    assert r["removed"] == 1 and r["pending_kept"] == 1
    assert not entries[0].exists() and entries[1].exists()
    r = _json(dsv("cache", "prune", "--max-size", "0", "--json", cwd=source))
    assert r["pending_kept"] == 1 and entries[1].exists()
    assert _cache_files(cache) == [entries[1]]


def test_concurrent_cache_fillers_never_expose_partial_files(tmp_path: Path, source: Path,
                                                             dsv) -> None:
    import subprocess
    import sys
    remote = tmp_path / "remote"
    cache = tmp_path / "cache"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    stores = []
    for i in range(4):
        s = tmp_path / f"m{i}"
        assert dsv("init", "--bare", s, cwd=tmp_path).code == 0
        assert dsv("remote", "add", "origin", remote, cwd=s).code == 0
        assert dsv("remote", "add", "shared", cache, "--cache", cwd=s).code == 0
        stores.append(s)
    procs = [subprocess.Popen([sys.executable, "-m", "dsv", "pull"], cwd=s,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in stores]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for p in cache.rglob("*"):
        if p.is_file() and p.parent.name == "packs":
            data = p.read_bytes()
            assert data.startswith(b"DSVPACK1") and data.endswith(b"DSVPEND1")
        elif p.is_file() and "loose" in p.parts:
            assert hash_bytes(p.read_bytes()) == p.name
    assert not (cache / "tmp").exists() or not list((cache / "tmp").iterdir())
    for s in stores:
        assert dsv("verify", cwd=s).code == 0


# ---- offline ------------------------------------------------------------------------------

def test_unreachable_remote_fails_fast_and_local_commands_work(source: Path, dsv,
                                                              tmp_path: Path, aws_env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert dsv("remote", "add", "origin", "s3://nowhere/x", "--endpoint-url", dead,
               cwd=source).code == 0
    before = dsv("log", "--json", cwd=source).out
    for args in (["push"], ["fetch"], ["pull"]):
        t0 = time.monotonic()
        r = dsv(*args, cwd=source)
        assert r.code == 1 and r.err.startswith("error: cannot reach") and "Traceback" not in r.err
        assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    r = dsv("clone", "s3://nowhere/x", tmp_path / "c", "--endpoint-url", dead, cwd=tmp_path)
    assert r.code == 1 and not (tmp_path / "c").exists()
    assert dsv("log", "--json", cwd=source).out == before
    (source / "offline.txt").write_bytes(b"still works")
    assert dsv("commit", "-m", "offline", cwd=source).code == 0
    assert dsv("checkout", "data:v1", "--to", tmp_path / "o", cwd=source).code == 0
    assert dsv("status", cwd=source).code == 0


def test_fetch_from_an_empty_location_says_so(tmp_path: Path, dsv, source: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert dsv("remote", "add", "origin", tmp_path / "empty", cwd=source).code == 0
    r = dsv("fetch", cwd=source)
    assert r.code == 1 and "not a dsv remote" in r.err


def test_behind_is_not_an_error_and_pull_checks_out_later(source: Path, dsv,
                                                           tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0
    (source / "n.txt").write_bytes(b"n")
    newer = dsv("commit", "-m", "newer", cwd=source).out.strip().split(":")[1]
    assert dsv("push", cwd=source).code == 0
    r = dsv("push", "--json", cwd=other)       # other is merely behind: nothing to do
    assert r.code == 0, r.err
    assert json.loads(r.out)["behind"] and json.loads(r.out)["objects_sent"] == 0
    assert "pull to catch up" in dsv("push", cwd=other).err
    # --no-checkout moves latest and leaves the directory; checkout brings it forward
    assert dsv("pull", "--no-checkout", cwd=other).code == 0
    assert not (other / "n.txt").exists()
    assert _json(dsv("show", "data:latest", "--json", cwd=other))["id"] == newer
    assert dsv("checkout", "data", cwd=other).code == 0
    assert (other / "n.txt").read_bytes() == b"n"
    # a directory that follows latest moves with it on the next pull
    (source / "m.txt").write_bytes(b"m")
    newest = dsv("commit", "-m", "newest", cwd=source).out.strip().split(":")[1]
    assert dsv("push", cwd=source).code == 0
    r = _json(dsv("pull", "--json", cwd=other))
    assert r["checked_out"] == [f"data:{newest}"]
    assert read_tree(other) == read_tree(source)
    # one checked out elsewhere on purpose stays where it is
    assert dsv("checkout", "data:v1", cwd=other).code == 0
    (source / "o.txt").write_bytes(b"o")
    assert dsv("commit", "-m", "later", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    r = _json(dsv("pull", "--json", cwd=other))
    assert r["checked_out"] == [] and "left at" in r["notices"][0]
    assert not (other / "o.txt").exists()


def test_failed_pull_moves_no_ref(source: Path, dsv, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0
    before = _json(dsv("show", "data:latest", "--json", cwd=other))["id"]
    (source / "d3").mkdir(exist_ok=True)
    (source / "d3/z.bin").write_bytes(b"z" * 5000)
    assert dsv("commit", "-m", "z", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    r = dsv("pull", "data", "--path", "nosuch", cwd=other)
    assert r.code == 1 and "nosuch" in r.err and "data:" in r.err
    assert _json(dsv("show", "data:latest", "--json", cwd=other))["id"] == before
    for pack in (remote / "packs").iterdir():       # damage every blob pack on the remote
        data = bytearray(pack.read_bytes())
        if b"z" * 5000 in data:
            i = bytes(data).index(b"z" * 5000)
            data[i] ^= 1
            os.chmod(pack, 0o644)
            pack.write_bytes(bytes(data))
    r = dsv("pull", cwd=other)
    assert r.code == 1 and "corrupt" in r.err
    assert _json(dsv("show", "data:latest", "--json", cwd=other))["id"] == before
    assert not (other / "d3/z.bin").exists()


def test_cache_prune_refuses_an_origin_and_pull_path_must_exist(source: Path, dsv,
                                                               tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    before = sorted(p.name for p in remote.rglob("*"))
    r = dsv("cache", "prune", "origin", "--older-than", "0s", cwd=source)
    assert r.code == 1 and "not a cluster cache" in r.err
    assert sorted(p.name for p in remote.rglob("*")) == before
    r = dsv("pull", "data:v1", "--path", "no/such", cwd=source)
    assert r.code == 1 and "no/such" in r.err


def test_lazy_checkout_after_remote_is_removed_and_added_again(source: Path, dsv,
                                                               tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    local = tmp_path / "local"
    assert dsv("init", "--bare", local, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=local).code == 0
    assert dsv("fetch", cwd=local).code == 0
    assert dsv("remote", "remove", "origin", cwd=local).code == 0
    assert dsv("verify", cwd=local).code == 0
    assert dsv("remote", "add", "again", remote, cwd=local).code == 0
    r = dsv("checkout", "data:v1", "--to", tmp_path / "out", cwd=local)
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "out") == read_tree(source)


def test_pull_resolves_refs_as_they_will_be(source: Path, dsv, tmp_path: Path) -> None:
    """A moved tag taken with --force, and a bare tag inside the dataset's directory,
    name the versions the pull makes them name."""
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0
    (source / "t.txt").write_bytes(b"tagged later")
    newer = dsv("commit", "-m", "newer", cwd=source).out.strip().split(":")[1]
    assert dsv("tag", "--force", "data:latest", "v1", cwd=source).code == 0
    assert dsv("push", "--force", cwd=source).code == 0
    r = _json(dsv("pull", "--force", "data:v1", "--no-checkout", "--json", cwd=other))
    assert newer in r["versions"] and f"data:v1 -> {newer}" in r["updated"]
    assert r["bytes_received"] == len(b"tagged later")
    r = _json(dsv("pull", "v1", "--json", cwd=other))  # inside the dataset: a selector
    assert r["versions"] == [newer]


def test_index_rebuild_keeps_remotes_and_fetched_versions(source: Path, dsv,
                                                          tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    local = tmp_path / "local"
    assert dsv("init", "--bare", local, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", remote, cwd=local).code == 0
    assert dsv("fetch", cwd=local).code == 0          # versions here, their files not
    assert dsv("index", "rebuild", cwd=local).code == 0
    assert [r["name"] for r in _json(dsv("remote", "list", "--json", cwd=local))] == ["origin"]
    assert dsv("verify", cwd=local).code == 0
    vid = _json(dsv("log", "data", "--json", cwd=local))[0]["id"]
    r = dsv("checkout", f"data:{vid}", "--to", tmp_path / "out", cwd=local)
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "out") == read_tree(source)


def test_remote_tracking_refs_name_what_the_remote_held(source: Path, dsv,
                                                       tmp_path: Path) -> None:
    """`DATASET:REMOTE/latest` and `DATASET:REMOTE/TAG` name the versions a remote's refs
    held when last seen, as git's `origin/main`, so a diverged dataset can be compared."""
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    first = _json(dsv("show", "data:latest", "--json", cwd=source))["id"]
    assert _json(dsv("show", "data:origin/latest", "--json", cwd=source))["id"] == first
    assert _json(dsv("show", "data:origin/v1", "--json", cwd=source))["id"] == first
    other = tmp_path / "other"
    assert dsv("clone", remote, other, cwd=tmp_path).code == 0
    (other / "theirs.txt").write_bytes(b"theirs")
    theirs = dsv("commit", "-m", "theirs", cwd=other).out.strip().split(":")[1]
    assert dsv("push", cwd=other).code == 0
    (source / "mine.txt").write_bytes(b"mine")
    mine = dsv("commit", "-m", "mine", cwd=source).out.strip().split(":")[1]
    # before a fetch, origin/latest is what the source last saw there
    assert _json(dsv("show", "data:origin/latest", "--json", cwd=source))["id"] == first
    assert dsv("fetch", cwd=source).code == 0
    assert _json(dsv("show", "data:origin/latest", "--json", cwd=source))["id"] == theirs
    assert _json(dsv("show", "data:latest", "--json", cwd=source))["id"] == mine
    assert _json(dsv("show", "data:origin/latest~1", "--json", cwd=source))["id"] == first
    diff = _json(dsv("diff", "data:latest", "data:origin/latest", "--json", cwd=source))
    assert (diff["added"], diff["deleted"]) == (["theirs.txt"], ["mine.txt"])
    r = dsv("show", "data:nowhere/latest", cwd=source)
    assert r.code == 1 and "no remote named 'nowhere'" in r.err
    r = dsv("show", "data:origin/v9", cwd=source)
    assert r.code == 1 and "origin had no 'v9' for data when last seen" in r.err
    assert "dsv fetch origin" in r.err


def test_push_or_pull_of_a_word_that_is_no_remote_nor_dataset(source: Path, dsv,
                                                             tmp_path: Path) -> None:
    r = dsv("push", "nosuch", cwd=source)
    assert r.code == 1 and "no remote or dataset named 'nosuch'" in r.err
    assert "no remote is configured" in r.err
    for name in ("origin", "backup"):
        assert dsv("remote", "add", name, tmp_path / name, cwd=source).code == 0
    assert dsv("push", "origin", cwd=source).code == 0
    for command in ("push", "pull"):
        r = dsv(command, "nosuch", cwd=source)
        assert r.code == 1, r.err
        assert r.err.splitlines()[0] == "error: no remote or dataset named 'nosuch'"
        assert "remotes: backup, origin" in r.err
    # a remote named first, then an unknown dataset: the same clear line
    r = dsv("push", "origin", "nosuch", cwd=source)
    assert r.code == 1 and "no remote or dataset named 'nosuch'" in r.err
    # a ref of an unknown dataset stays a ref error
    r = dsv("pull", "nosuch:latest", cwd=source)
    assert r.code == 1 and "no dataset named 'nosuch'" in r.err


def test_remote_add_of_a_directory_whose_parent_is_missing_warns_at_once(
        source: Path, dsv, tmp_path: Path) -> None:
    r = dsv("remote", "add", "typo", tmp_path / "no-such-volume" / "remote", cwd=source)
    assert r.code == 0
    assert r.err.startswith("warning: neither ") and "nor its parent exists yet" in r.err
    r = dsv("remote", "add", "fine", tmp_path / "new-remote", cwd=source)   # parent exists
    assert r.code == 0 and r.err == ""
    assert dsv("push", "fine", cwd=source).code == 0


def test_an_offline_files_get_names_the_file_it_could_not_get(source: Path, dsv,
                                                              tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    write_tree(source, {"fresh/new.txt": "only on the remote\n"})
    assert dsv("commit", "-m", "second", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    assert dsv("fetch", cwd=clone).code == 0          # versions and trees, no contents
    remote.rename(tmp_path / "remote-away")           # offline now
    r = dsv("files", "get", "data:origin/latest", "fresh/new.txt", "--target-path",
            tmp_path / "out", cwd=clone)
    assert r.code == 1
    first = r.err.splitlines()[0]
    assert first.startswith("error: cannot get fresh/new.txt of ") and "pack" not in first, r.err
    r = dsv("files", "get", "data:origin/latest", "--target-path", tmp_path / "out", cwd=clone)
    assert r.code == 1 and "cannot get fresh/new.txt of " in r.err


def test_a_large_file_moves_the_progress_bar_while_it_downloads(source: Path, dsv,
                                                              tmp_path: Path,
                                                              monkeypatch) -> None:
    """Progress advances by bytes inside a large file (the directory backend reads 8 MiB
    pieces): a 20 MiB loose object reports three pieces before it counts as one file
    done. (A file stored whole: one written before chunking, or imported.)"""
    from contextlib import contextmanager

    from dsv import chunking
    monkeypatch.setattr(chunking, "CHUNK_THRESHOLD", 1 << 40)

    from dsv.reporting import Reporter
    from dsv.store import Store

    remote = tmp_path / "remote"
    assert dsv("remote", "add", "origin", remote, cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0
    clone = tmp_path / "clone"
    assert dsv("clone", remote, clone, cwd=tmp_path).code == 0
    big = os.urandom(20 << 20)
    (source / "big" / "huge.bin").parent.mkdir(exist_ok=True)
    (source / "big" / "huge.bin").write_bytes(big)
    assert dsv("commit", "-m", "huge", cwd=source).code == 0
    assert dsv("push", cwd=source).code == 0

    calls: dict[str, list[tuple[int, int]]] = {}

    class Recorder(Reporter):
        @contextmanager
        def task(self, label, total_items=None, total_bytes=None):
            seen = calls.setdefault(label, [])
            yield lambda items, nbytes: seen.append((items, nbytes))

    with Store.open(clone, reporter=Recorder()) as store:
        store.pull()
    large = calls["pulling large files"]
    assert large[:3] == [(0, 8 << 20), (0, 8 << 20), (0, 4 << 20)], large
    assert large[3:] == [(1, 0)]
    assert (clone / "big" / "huge.bin").read_bytes() == big


def _pushed_files(tmp_path: Path, dsv, files: dict[str, bytes]) -> Path:
    """A workspace holding `files`, committed and pushed to a directory remote."""
    ws = tmp_path / "ws"
    write_tree(ws, files)
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    return ws


def test_a_clone_downloads_in_chunks_each_object_once(tmp_path: Path, dsv,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads are planned a chunk at a time (memory does not grow with the version):
    with chunks of 1, a clone of 11 files (three of them the same bytes, one large)
    still receives each distinct object once and every byte right."""
    from dsv.sync import download
    monkeypatch.setattr(download, "DOWNLOAD_CHUNK", 1)
    same = os.urandom(300)
    files = {f"d{i % 2}/f{i}.bin": os.urandom(100 + i) for i in range(7)}
    files.update({"x/same1.bin": same, "y/same2.bin": same, "z/same3.bin": same,
                  "big.bin": os.urandom((1 << 20) + 5)})
    _pushed_files(tmp_path, dsv, files)
    r = dsv("clone", tmp_path / "remote", tmp_path / "clone", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    pulled = json.loads(r.out)
    assert pulled["objects_received"] == 9  # 7 + the shared one + the large one
    assert read_tree(tmp_path / "clone") == files
    assert dsv("verify", cwd=tmp_path / "clone").code == 0


def test_chunks_of_a_fresh_checkout_end_before_the_file_that_would_overflow() -> None:
    """A file past the byte limit has a chunk of its own: the files before it do not
    wait for its download; a chunk also ends at its count of files (empty files too)."""
    from dsv.worktree import batches
    from dsv.tree import FILE, Entry

    def items(*sizes: int) -> list[tuple[str, Entry]]:
        return [(f"f{i}", Entry(FILE, 0o644, n, hash_bytes(b"%d" % i))) for i, n in enumerate(sizes)]

    def _batched(it: object, n: int, nbytes: int) -> object:
        return batches(it, lambda item: item[1].size, n, nbytes)  # type: ignore[arg-type]

    def names(chunks: object) -> list[list[str]]:
        return [[p for p, _e in chunk] for chunk in chunks]  # type: ignore[attr-defined]

    mib = 1 << 20
    assert names(_batched(iter(items(100 * mib, 10_000 * mib, mib)), 5, 128 * mib)) == \
        [["f0"], ["f1"], ["f2"]]
    assert names(_batched(iter(items(60 * mib, 60 * mib, 60 * mib)), 5, 128 * mib)) == \
        [["f0", "f1"], ["f2"]]
    assert names(_batched(iter(items(0, 0, 0, 0, 0)), 2, 128 * mib)) == \
        [["f0", "f1"], ["f2", "f3"], ["f4"]]
    assert names(_batched(iter([]), 2, 10)) == []


def test_a_checkout_from_the_store_is_not_cut_by_bytes(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a version whose blobs may have to be downloaded is placed in chunks of
    bytes; one whose blobs are here keeps its files in one chunk (its large files are
    copied side by side)."""
    from dsv import checkout, worktree
    monkeypatch.setattr(checkout, "FRESH_CHUNK_BYTES", 300)
    calls: list[int] = []
    place = worktree.Materializer.place

    def placing(self, items, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return place(self, items, *args, **kwargs)
    monkeypatch.setattr(worktree.Materializer, "place", placing)
    files = {f"d{i % 3}/f{i:02d}.bin": os.urandom(100 + i) for i in range(12)}
    src = tmp_path / "src"
    write_tree(src, files)
    assert dsv("init", cwd=src).code == 0
    assert dsv("commit", "-m", "v1", cwd=src).code == 0
    calls.clear()
    r = dsv("checkout", "src:latest", "--to", tmp_path / "out", cwd=src)
    assert r.code == 0, r.err
    assert calls == [12] and read_tree(tmp_path / "out") == files


@pytest.mark.parametrize("cut", ["files", "bytes"])
def test_a_clone_places_each_chunk_while_it_downloads_the_next(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch, cut: str) -> None:
    """A clone leaves a dataset's blobs to its checkout, which downloads one chunk of
    files while a thread of its own places the one before; afterwards the version is
    whole (not promised): it checks out with the remote gone. A chunk ends at a number
    of files, or before the file that would take it past a number of bytes (three files
    of 100-111 bytes fit in 340, four never do)."""
    import shutil
    import threading

    from dsv import checkout, worktree
    from dsv.core import Core
    from dsv.sync import download
    if cut == "files":
        monkeypatch.setattr(checkout, "FRESH_CHUNK", 3)
    else:
        monkeypatch.setattr(checkout, "FRESH_CHUNK_BYTES", 340)
    events: list[tuple[str, str]] = []
    fetch_blobs, place = download.BlobSource.fetch_into, worktree.Materializer.place
    second_download = threading.Event()
    overlapped: list[bool] = []

    def fetching(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append(("download", threading.current_thread().name))
        if len([e for e in events if e[0] == "download"]) == 2:
            second_download.set()
        return fetch_blobs(self, *args, **kwargs)

    def placing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append(("place", threading.current_thread().name))
        if not overlapped:  # the first chunk is still being placed when the second
            overlapped.append(second_download.wait(timeout=10))  # one's download starts
        return place(self, *args, **kwargs)
    monkeypatch.setattr(download.BlobSource, "fetch_into", fetching)
    monkeypatch.setattr(worktree.Materializer, "place", placing)
    files = {f"d{i % 3}/f{i:02d}.bin": os.urandom(100 + i) for i in range(12)}
    _pushed_files(tmp_path, dsv, files)
    events.clear()
    clone = tmp_path / "clone"
    r = dsv("clone", tmp_path / "remote", clone, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert json.loads(r.out)["objects_received"] == 12
    assert read_tree(clone) == files
    downloads = [e for e in events if e[0] == "download"]
    places = [e for e in events if e[0] == "place"]
    assert len(downloads) == 4 and len(places) == 4, events
    assert all(t == "MainThread" for _e, t in downloads), events
    assert all(t.startswith("dsv-place") for _e, t in places), events
    assert events[0][0] == "download" and overlapped == [True], events
    core = Core(clone)
    try:
        assert core.index.promised() == {}
    finally:
        core.close()
    shutil.rmtree(tmp_path / "remote")
    assert dsv("verify", cwd=clone).code == 0
    out = dsv("checkout", "raw:latest", "--to", tmp_path / "copy", cwd=clone)
    assert out.code == 0, out.err
    assert read_tree(tmp_path / "copy") == files


def test_a_clone_records_chunks_on_the_placing_thread_and_downloads_a_blob_once(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """What chunks downloaded is recorded in the index by the thread that places them,
    through its own connection, every RECORD_EVERY chunks, while this one downloads the
    next; a blob a later chunk needs again is not downloaded twice meanwhile (it counts
    as here), and is recorded before that chunk reads it from the store; every file of
    the clone holds its bytes, and has its stat row."""
    import threading

    from dsv import checkout
    from dsv.core import Core
    monkeypatch.setattr(checkout, "FRESH_CHUNK", 3)
    monkeypatch.setattr(checkout, "RECORD_EVERY", 3)
    recorded: list[tuple[str, int, int]] = []
    record = checkout._Unrecorded.record

    def recording(self, index):  # type: ignore[no-untyped-def]
        if self.packs or self.staged:
            recorded.append((threading.current_thread().name,
                             sum(len(p.rows()) for p in self.packs), self.staged))
        return record(self, index)
    monkeypatch.setattr(checkout._Unrecorded, "record", recording)
    same = os.urandom(150)
    files = {f"d{i % 3}/f{i:02d}.bin": os.urandom(100 + i) for i in range(12)}
    # chunks, in the trees' order: d2/f02 f05 f08 | d2/f11 d1/f01 f04 | d1/f07 f10 d0/f00 |
    # d0/f03 f06 f09
    files["d2/f05.bin"] = files["d0/f00.bin"] = files["d0/f09.bin"] = same
    _pushed_files(tmp_path, dsv, files)
    clone = tmp_path / "clone"
    r = dsv("clone", tmp_path / "remote", clone, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert json.loads(r.out)["objects_received"] == 10
    assert read_tree(clone) == files
    # The third chunk reads `same` (the first brought it, not recorded yet: not
    # downloaded again) from the store, so what the three brought is recorded first, with
    # the stat rows of the two placed; then its own rows (every third chunk); the end
    # records the rest (the fourth chunk reads `same` too: its objects go first).
    assert recorded == [("dsv-place_0", 8, 6), ("dsv-place_0", 0, 3),
                        ("dsv-place_0", 2, 0), ("dsv-place_0", 0, 3)], recorded
    core = Core(clone)
    try:
        assert core.index.promised() == {}
        assert len(core.index.stat_rows_at(core.index.datasets()[0].id, files)) == 12
    finally:
        core.close()
    assert dsv("verify", cwd=clone).code == 0


def test_a_checkout_that_fails_part_way_keeps_what_it_downloaded_recorded(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout of a fetched version whose placement fails after some chunks still
    records what it downloaded, though it waited to be recorded with later chunks: run
    again, it downloads only the rest."""
    from dsv import checkout, worktree
    from dsv.core import Core
    monkeypatch.setattr(checkout, "FRESH_CHUNK", 3)
    monkeypatch.setattr(checkout, "RECORD_EVERY", 4)
    place = worktree.Materializer.place
    calls: list[list[str]] = []

    def failing(self, items, progress=None):  # type: ignore[no-untyped-def]
        calls.append([rel for rel, _e in items])
        if len(calls) == 3:
            raise OSError(28, "No space left on device (for the test)")
        return place(self, items, progress)
    monkeypatch.setattr(worktree.Materializer, "place", failing)
    files = {f"d{i % 3}/f{i:02d}.bin": os.urandom(100 + i) for i in range(12)}
    _pushed_files(tmp_path, dsv, files)
    store = tmp_path / "store"
    assert dsv("init", store, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=store).code == 0
    assert dsv("fetch", cwd=store).code == 0
    r = dsv("checkout", "raw:latest", "--to", tmp_path / "out", cwd=store)
    assert r.code == 1 and "no space left on the device" in r.err, r.err
    assert len(calls) == 3
    downloaded = {hash_bytes(files[rel]) for chunk in calls for rel in chunk}
    core = Core(store)
    try:   # (the three chunks' objects, no more: the fourth was not downloaded)
        assert {oid for oid in map(hash_bytes, files.values())
                if core.objects.has(oid)} == downloaded
    finally:
        core.close()
    monkeypatch.setattr(worktree.Materializer, "place", place)
    r = dsv("checkout", "raw:latest", "--to", tmp_path / "out", "--json", cwd=store)
    assert r.code == 0, r.err
    assert json.loads(r.out)["downloaded"] == 3, r.out
    assert read_tree(tmp_path / "out") == files


def test_a_clone_killed_with_chunks_placed_but_not_recorded_completes_when_run_again(
        tmp_path: Path, dsv) -> None:
    """Killed while chunks it placed wait to be recorded (their packs published, no row
    naming them), a clone run again downloads their objects again: the store ends whole
    and verified, not holding files whose objects it lost."""
    import subprocess
    import sys
    files = {f"d{i % 3}/f{i:02d}.bin": os.urandom(100 + i) for i in range(12)}
    _pushed_files(tmp_path, dsv, files)
    clone = tmp_path / "clone"
    small_chunks = ("import sys; from dsv import checkout; checkout.FRESH_CHUNK = 3; "
                    "checkout.RECORD_EVERY = 4; from dsv.cli import main; sys.exit(main())")
    killed = subprocess.run(
        [sys.executable, "-c", small_chunks, "clone", str(tmp_path / "remote"), str(clone)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DSV_CRASH_AT": "checkout:file-written", "DSV_CRASH_AFTER": "10"})
    assert killed.returncode == -9, killed.stderr
    present = {p for p in files if (clone / p).exists()}
    assert len(present) >= 9, present   # three chunks placed, none recorded
    r = dsv("clone", tmp_path / "remote", clone, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert json.loads(r.out)["objects_received"] == 12, r.out
    assert read_tree(clone) == files
    assert dsv("verify", cwd=clone).code == 0


def test_a_clone_whose_checkout_did_not_happen_still_downloads_everything(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset whose blobs were left to a checkout that then did not place it (here:
    refused) is downloaded whole before the clone ends: no version stays promised."""
    import shutil

    from dsv.errors import DirtyWorktree
    from dsv.sync import pull

    def refused(*_args: object, **_kwargs: object) -> None:
        raise DirtyWorktree("refused for the test")
    monkeypatch.setattr(pull.checkouts, "checkout", refused)
    files = {f"d{i % 2}/f{i:02d}.bin": os.urandom(200 + i) for i in range(9)}
    _pushed_files(tmp_path, dsv, files)
    clone = tmp_path / "clone"
    r = dsv("clone", tmp_path / "remote", clone, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["objects_received"] == 9
    assert any("refused for the test" in n for n in report["notices"]), report
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "remote")
    assert dsv("verify", cwd=clone).code == 0
    out = dsv("checkout", "raw:latest", cwd=clone)
    assert out.code == 0, out.err
    assert read_tree(clone) == files


@pytest.mark.parametrize("lying", [False, True])
def test_a_clone_that_leaves_out_a_nested_dataset_still_holds_the_whole_version(
        tmp_path: Path, dsv, lying: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer dataset's version holds files under a directory that is now a nested
    dataset: its checkout leaves them out, so the clone downloads them before it ends
    (counted once, as received). With a record that claims fewer files than its tree
    holds (as many as the checkout placed), the same: what the checkout placed is counted
    in the trees, never taken from the record (found by review)."""
    import dataclasses
    import shutil

    from dsv import versions
    ws = tmp_path / "ws"
    files = {f"d/f{i}.bin": os.urandom(100 + i) for i in range(6)}
    files.update({f"sub/s{i}.bin": os.urandom(200 + i) for i in range(6)})
    write_tree(ws, files)
    assert dsv("init", "--name", "top", ws, cwd=tmp_path).code == 0
    if lying:
        encode = versions.encode_record
        monkeypatch.setattr(versions, "encode_record", lambda v, *a: encode(
            dataclasses.replace(v, files=v.files - 6), *a))
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    monkeypatch.undo()
    assert dsv("datasets", "create", "nested", "--path", "sub", cwd=ws).code == 0
    write_tree(ws, {f"sub/s{i}.bin": os.urandom(300 + i) for i in range(6)})
    assert dsv("commit", "-m", "n1", cwd=ws / "sub").code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    clone = tmp_path / "clone"
    r = dsv("clone", tmp_path / "remote", clone, "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert (report["objects_received"], report["objects_skipped"]) == (18, 0), report
    shutil.rmtree(tmp_path / "remote")
    checked = dsv("verify", cwd=clone)
    assert checked.code == 0, checked.out + checked.err
    out = dsv("checkout", "top:latest", "--to", tmp_path / "copy", cwd=clone)
    assert out.code == 0, out.err
    assert read_tree(tmp_path / "copy") == files


@pytest.mark.parametrize("killed", [False, True])
def test_a_long_pull_publishes_sealed_packs_as_it_goes(tmp_path: Path, dsv, killed: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull seals packs as they fill and puts them in the store after each chunk (its
    memory does not grow with the version); refs move only at the end, so a pull killed
    after some packs went in moves none, and the next pull does not download those."""
    from dsv import core, objects
    from dsv.sync import download
    monkeypatch.setattr(download, "DOWNLOAD_CHUNK", 4)
    monkeypatch.setattr(core, "SEALED_BATCH", 2)
    monkeypatch.setattr(objects, "PACK_TARGET_SIZE", 600)
    monkeypatch.setattr(objects.Ingest, "_BATCH_OBJECTS", 2)
    ws = _pushed_files(tmp_path, dsv,
                       {f"d{i % 3}/f{i:02d}.bin": os.urandom(200 + i) for i in range(24)})
    clone = tmp_path / "clone"
    assert dsv("clone", tmp_path / "remote", clone, cwd=tmp_path).code == 0
    write_tree(ws, {f"new/g{i:02d}.bin": os.urandom(300 + i) for i in range(20)})
    assert dsv("commit", "-m", "two", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    packs_before = len(list((clone / ".dsv" / "objects").rglob("*.pack")))
    if killed:
        chunk, calls = download._download_chunk, []

        def dies_at_the_tenth(*args: object) -> None:
            calls.append(1)
            if len(calls) == 10:
                raise KeyboardInterrupt  # as if killed in the middle of the download
            chunk(*args)  # type: ignore[arg-type]
        monkeypatch.setattr(download, "_download_chunk", dies_at_the_tenth)
        died = dsv("pull", cwd=clone)
        assert died.code != 0 and calls, died.out + died.err
        assert read_tree(clone) == {k: v for k, v in read_tree(ws).items()
                                    if not k.startswith("new/")}
        status = dsv("status", cwd=clone)
        assert status.code == 0 and "clean" in status.out
        assert len(list((clone / ".dsv" / "objects").rglob("*.pack"))) > packs_before + 2
        assert dsv("verify", cwd=clone).code == 0
        monkeypatch.undo()
        again = dsv("pull", "--json", cwd=clone)  # what went in is not downloaded again
        assert again.code == 0, again.err
        assert json.loads(again.out)["objects_received"] < 20
        assert read_tree(clone) == read_tree(ws)
    else:
        result = dsv("pull", "--json", cwd=clone)
        assert result.code == 0, result.err
        assert json.loads(result.out)["objects_received"] == 20
        assert len(list((clone / ".dsv" / "objects").rglob("*.pack"))) > packs_before + 2
        assert read_tree(clone) == read_tree(ws)
        assert dsv("verify", cwd=clone).code == 0


def test_a_refresh_reads_pack_indexes_without_the_index_write_lock(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh reads the remote's pack indexes over the network before it takes the
    index's write lock: meanwhile another writer (another process, or a checkout's
    placing thread) is not kept waiting. Checked by a write through a second connection,
    with no busy timeout, while the indexes are being read."""
    import sqlite3

    from dsv.sync.remote import Remote
    files = {f"f{i}.bin": os.urandom(200 + i) for i in range(4)}
    ws = _pushed_files(tmp_path, dsv, files)
    clone = tmp_path / "clone"
    assert dsv("clone", tmp_path / "remote", clone, cwd=tmp_path).code == 0
    (ws / "new.bin").write_bytes(b"new bytes")
    assert dsv("commit", "-m", "two", cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    read = Remote._read_indexes
    wrote: list[str] = []

    def reading(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for item in read(self, *args, **kwargs):
            conn = sqlite3.connect(clone / ".dsv" / "index.db", timeout=0,
                                   isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                wrote.append(item[0])
            except sqlite3.OperationalError as exc:
                wrote.append(str(exc))
            finally:
                conn.close()
            yield item
    monkeypatch.setattr(Remote, "_read_indexes", reading)
    r = dsv("pull", cwd=clone)
    assert r.code == 0, r.err
    assert wrote and all(len(w) == 64 for w in wrote), wrote
    assert read_tree(clone) == {**files, "new.bin": b"new bytes"}


def test_a_clone_over_s3_reads_its_ranges_into_a_few_reused_buffers(
        tmp_path: Path, dsv, s3_endpoint: str, bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ranged GET of a download is read into a buffer that an earlier one gave back
    (download._range_buffer): with ranges of at most 8 KiB, a clone of 300 files makes
    dozens of reads through no more buffers than the download window holds, and every
    byte arrives right (a buffer filled again while its bytes were still needed would
    show as wrong files or a corrupt object)."""
    from dsv import fileio
    from dsv.sync import download
    monkeypatch.setattr(download, "RANGE_MAX", 8 << 10)
    monkeypatch.setattr(fileio, "_BUFFERS", [])
    handed: list[int] = []
    take = download._range_buffer

    def counted(length: int) -> object:
        buf = take(length)
        handed.append(id(buf))
        return buf
    monkeypatch.setattr(download, "_range_buffer", counted)
    files = {f"d{i % 4}/f{i:03d}.bin": os.urandom(500 + 13 * i) for i in range(300)}
    files["big/chunked.bin"] = os.urandom(3 << 20)
    ws = tmp_path / "ws"
    write_tree(ws, files)
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    url = f"s3://{bucket}/ds"
    assert dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    handed.clear()
    r = dsv("clone", url, tmp_path / "clone", "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "clone") == files
    assert dsv("verify", cwd=tmp_path / "clone").code == 0
    assert len(handed) >= 40, len(handed)
    assert len(set(handed)) <= download.WORKERS + 1, (len(set(handed)), len(handed))
