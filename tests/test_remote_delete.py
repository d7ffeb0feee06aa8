"""`dsv push --delete` (issue 11): deleting tags and datasets on a remote, by
compare-and-swap like every ref change. A deleted ref is a tombstone: clones and fetches
see no ref, `verify --remote` accepts it, and the next push of that ref replaces it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from conftest import write_tree
from dsv.remotes.fs import FsBackend
from servers import DirView, check_remote
from test_gc_race import ok
from test_remote_gc import _clone_matches, _gc, _version_objects, _ws


def _setup(tmp_path: Path, dsv, url: str | None = None, *extra: str) -> Path:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": "alpha\n", "b.txt": "beta\n"})
    assert dsv("init", "--name", "raw", ws, cwd=tmp_path).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    assert dsv("tag", "raw:latest", "v1", cwd=ws).code == 0
    assert dsv("tag", "raw:latest", "keep", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", url or str(tmp_path / "remote"), *extra,
               cwd=ws).code == 0
    assert dsv("push", cwd=ws).code == 0
    return ws


def _tags(dsv, ws: Path) -> dict[str, str]:
    r = dsv("tags", "raw", "--json", cwd=ws)
    assert r.code == 0, r.err
    return {t["tag"]: t["version"] for t in json.loads(r.out)}


def test_a_deleted_tag_is_gone_for_clones_and_fetches_and_can_be_pushed_again(
        tmp_path: Path, dsv) -> None:
    ws = _setup(tmp_path, dsv)
    other = tmp_path / "other"
    assert dsv("clone", tmp_path / "remote", other, cwd=tmp_path).code == 0
    assert set(_tags(dsv, other)) >= {"v1", "keep"}

    r = dsv("push", "--delete", "raw:v1", cwd=ws)
    assert r.code == 0, r.err
    assert r.out.strip() == "deleted on origin: raw:v1"
    ref = tmp_path / "remote" / "refs"
    (ds_dir,) = [p for p in ref.iterdir()]
    assert json.loads((ds_dir / "tags" / "v1").read_bytes()) == {"dataset": ds_dir.name,
                                                                  "deleted": True}
    fresh = tmp_path / "fresh"
    assert dsv("clone", tmp_path / "remote", fresh, cwd=tmp_path).code == 0
    assert "v1" not in _tags(dsv, fresh) and "keep" in _tags(dsv, fresh)
    # Another clone learns of it at its next fetch: its remote-tracking ref goes.
    assert dsv("show", "raw:origin/v1", cwd=other).code == 0
    assert dsv("fetch", cwd=other).code == 0
    assert dsv("show", "raw:origin/v1", cwd=other).code == 1
    assert dsv("show", "raw:origin/v1", cwd=ws).code == 1  # the deleter forgot it at once
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0
    # The local tag is still there; pushing it again replaces the tombstone.
    assert dsv("push", cwd=ws).code == 0
    assert json.loads((ds_dir / "tags" / "v1").read_bytes())["version"] == _tags(dsv, ws)["v1"]


def test_deleting_a_dataset_deletes_all_its_refs_even_once_it_is_gone_here(
        tmp_path: Path, dsv) -> None:
    ws = _setup(tmp_path, dsv)
    assert dsv("datasets", "delete", "raw", "--yes", cwd=ws).code == 0
    r = dsv("push", "--delete", "raw", "--json", cwd=ws)
    assert r.code == 0, r.err
    assert sorted(json.loads(r.out)["refs_deleted"]) == ["raw:keep", "raw:latest", "raw:v1"]
    fresh = tmp_path / "fresh"
    done = dsv("clone", tmp_path / "remote", fresh, cwd=tmp_path)
    assert done.code == 0, done.err
    listed = dsv("datasets", "list", "--json", cwd=fresh)
    assert listed.code == 0 and json.loads(listed.out) == []
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0


def test_nothing_is_deleted_when_one_named_ref_does_not_exist(tmp_path: Path, dsv) -> None:
    ws = _setup(tmp_path, dsv)
    before = sorted((p.relative_to(tmp_path), p.read_bytes())
                    for p in (tmp_path / "remote" / "refs").rglob("*") if p.is_file())
    r = dsv("push", "--delete", "raw:keep", "raw:nosuch", cwd=ws)
    assert r.code == 1 and "origin has no ref raw:nosuch; nothing was deleted" in r.err
    after = sorted((p.relative_to(tmp_path), p.read_bytes())
                   for p in (tmp_path / "remote" / "refs").rglob("*") if p.is_file())
    assert after == before
    assert dsv("push", "--delete", "nosuch", cwd=ws).code == 1
    r = dsv("push", "--delete", "raw:", cwd=ws)   # a tag forgotten: not every ref
    assert r.code == 1 and "raw: names no tag; nothing was deleted" in r.err, r
    assert sorted((p.relative_to(tmp_path), p.read_bytes()) for p in
                  (tmp_path / "remote" / "refs").rglob("*") if p.is_file()) == before
    assert dsv("push", "--delete", cwd=ws).code == 1
    assert dsv("push", "--delete", "--force", "raw:keep", cwd=ws).code == 2


def test_a_tag_moved_by_another_pusher_after_it_was_read_is_not_deleted_unseen(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another pusher writes the ref between the delete's read and its compare-and-swap:
    what the user never saw is not deleted, and the delete says so."""
    ws = _setup(tmp_path, dsv)
    real = FsBackend.write_ref
    raced: list[str] = []

    def racing(self: FsBackend, key: str, data: bytes, expect: str | None) -> str | None:
        if key.endswith("/tags/v1") and not raced:
            raced.append(key)
            path = Path(self.root) / key
            path.write_bytes(path.read_bytes().replace(b'"record"', b'"record"  '))
        return real(self, key, data, expect)

    monkeypatch.setattr(FsBackend, "write_ref", racing)
    r = dsv("push", "--delete", "raw:v1", "raw:keep", cwd=ws)
    assert raced and r.code == 1
    assert "1 ref not deleted on origin: raw:v1 changed on the remote since it was read" \
        in r.err
    tags = tmp_path / "remote" / "refs"
    (ds_dir,) = list(tags.iterdir())
    assert b'"record"  ' in (ds_dir / "tags" / "v1").read_bytes()  # the racer's, intact
    assert json.loads((ds_dir / "tags" / "keep").read_bytes())["deleted"] is True


def test_dataset_latest_deletes_only_latest_and_names_are_deleted_once(tmp_path: Path,
                                                                       dsv) -> None:
    ws = _setup(tmp_path, dsv)
    r = dsv("push", "--delete", "raw:latest", "--json", cwd=ws)
    assert r.code == 0 and json.loads(r.out)["refs_deleted"] == ["raw:latest"]
    r = dsv("push", "--delete", "raw:v1", "raw", "--json", cwd=ws)
    assert r.code == 0, r.err
    deleted = json.loads(r.out)["refs_deleted"]
    assert sorted(deleted) == ["raw:keep", "raw:v1"]


def test_delete_on_s3_over_http(tmp_path: Path, dsv, s3_endpoint: str, aws_env: None) -> None:
    bucket = f"b{os.urandom(4).hex()}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    ws = _setup(tmp_path, dsv, f"s3://{bucket}/p", "--endpoint-url", s3_endpoint)
    r = dsv("push", "--delete", "raw:v1", cwd=ws)
    assert r.code == 0, r.err
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="p/refs/")["Contents"]]
    (key,) = [k for k in keys if k.endswith("/tags/v1")]
    body = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert body["deleted"] is True
    fresh = tmp_path / "fresh"
    assert dsv("clone", f"s3://{bucket}/p", fresh, "--endpoint-url", s3_endpoint,
               cwd=tmp_path).code == 0
    assert "v1" not in _tags(dsv, fresh)
    assert dsv("verify", "--remote", "origin", cwd=ws).code == 0


def test_deleting_a_pushed_tag_here_says_how_to_delete_it_on_the_remote(tmp_path: Path,
                                                                       dsv) -> None:
    ws = _setup(tmp_path, dsv)
    r = dsv("tag", "-d", "raw:v1", cwd=ws)
    assert r.code == 0 and r.out.startswith("deleted tag raw:v1")
    assert "note: raw:v1 is still on origin: `dsv push origin --delete raw:v1` deletes it " \
           "there" in r.err
    assert dsv("push", "origin", "--delete", "raw:v1", cwd=ws).code == 0
    assert dsv("tag", "-d", "raw:keep", cwd=ws).code == 0
    assert dsv("tag", "raw:latest", "fresh", cwd=ws).code == 0
    quiet = dsv("tag", "-d", "raw:fresh", cwd=ws)  # never pushed: nothing to say
    assert quiet.code == 0 and quiet.err == ""


def test_a_version_no_ref_reaches_is_not_pushed_again_after_gc(tmp_path: Path) -> None:
    """A version that `commit --force` on an older one left behind, forced over on the
    remote and deleted there by gc, is not sent again by the next push: a push sends
    what the refs it sets reach (as a fetch brings), so the space stays reclaimed. A tag
    on it makes it reachable again: then it is pushed, and gc keeps it."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.txt": b"one\n"}, str(remote))
    write_tree(ws, {"a.txt": b"two\n", "dead.bin": os.urandom(7000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    two = _version_objects(ws, "raw:latest")
    dead = two - _version_objects(ws, "raw:latest~1")
    ok("checkout", "raw:latest~1", cwd=ws)
    write_tree(ws, {"a.txt": b"three\n"})
    ok("commit", "--force", "-m", "three", cwd=ws)   # latest: three, on one
    ok("push", "--force", cwd=ws)
    assert _gc(ws)["objects_deleted"] == len(dead) > 0
    assert not dead & check_remote(DirView(remote)).objects

    again = json.loads(ok("push", "--json", cwd=ws).stdout)
    assert again["versions_sent"] == 0 and again["objects_sent"] == 0, again
    assert _gc(ws, "--dry-run")["objects_deleted"] == 0
    assert not dead & check_remote(DirView(remote)).objects

    listed = json.loads(ok("versions", "list", "raw", "--json", cwd=ws).stdout)
    left = [v["id"] for v in listed if v["message"] == "two"]
    ok("tag", f"raw:{left[0]}", "kept", cwd=ws)
    tagged = json.loads(ok("push", "--json", cwd=ws).stdout)
    assert tagged["versions_sent"] == 1 and tagged["refs_updated"] == [
        f"raw:kept -> {left[0]}"], tagged
    assert _gc(ws)["objects_deleted"] == 0
    assert two <= check_remote(DirView(remote)).reachable


def test_a_version_deleted_here_is_deleted_on_the_remote_by_a_forced_push_and_gc(
        tmp_path: Path) -> None:
    """`versions delete` here, `push --force` (the remote's latest goes back), then
    `gc --remote`: the version's objects leave the remote, and stay gone although the
    push's fetch brought the version back here (no ref reaches it)."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.txt": b"one\n"}, str(remote))
    write_tree(ws, {"a.txt": b"two\n", "gone.bin": os.urandom(6000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    dead = _version_objects(ws, "raw:latest") - _version_objects(ws, "raw:latest~1")
    gone = json.loads(ok("show", "raw:latest", "--json", cwd=ws).stdout)["id"]
    ok("checkout", "raw:latest~1", cwd=ws)
    ok("versions", "delete", f"raw:{gone}", "--force", cwd=ws)
    # A plain push finds the remote ahead, sends nothing, and its fetch brings the
    # version back here (named by no ref of this store); the forced push moves the
    # remote's latest back.
    assert "origin is ahead" in ok("push", cwd=ws).stdout
    listed = json.loads(ok("versions", "list", "raw", "--json", cwd=ws).stdout)
    assert gone in [v["id"] for v in listed]
    ok("push", "--force", cwd=ws)
    assert _gc(ws)["objects_deleted"] == len(dead) > 0
    again = json.loads(ok("push", "--json", cwd=ws).stdout)
    assert again["objects_sent"] == 0, again
    after = check_remote(DirView(remote))
    assert not dead & after.objects
    _clone_matches(str(remote), tmp_path / "clone", {"a.txt": b"one\n"})
