"""`dsv gc --remote` (issue 11): what no ref of a remote reaches is deleted, with no
server, and never what a push relies on.

A push holds a lease on the remote (`locks/<owner>`) from before it looks at what the
remote holds until its refs are written; gc holds the remote's maintenance lease and
deletes nothing while a push's lease is live. The race tests stop a push between planning
and its ref write (`DSV_PAUSE_AT`), run gc, let the push go on, and check the remote with
the independent checker (tests/servers.py `check_remote`), then clone it and compare
bytes. The last test runs pushers, gc and cloners at once against SeaweedFS.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dsv.remotes.layout import MAINTAIN_LOCK, REMOTE_FORMAT
from conftest import read_tree, run_dsv, write_tree
from servers import DirView, S3View, check_remote, read_remote, seaweedfs_endpoint  # noqa: F401
from test_gc_race import finish, ok, paused, spawn, wait_for
from test_sync_faults import new_bucket, query_json, setup_ok


def _ws(root: Path, files: dict[str, bytes], remote: str, *extra: str) -> Path:
    """A store `raw` at `root` holding `files` as its first version, with remote origin;
    set up in this process (test_sync_faults `setup_ok`)."""
    root.mkdir(parents=True)
    write_tree(root, files)
    setup_ok("init", "--name", "raw", root, cwd=root.parent)
    setup_ok("commit", "-m", "one", cwd=root)
    setup_ok("remote", "add", "origin", remote, *extra, cwd=root)
    return root


def _remote_at(tmp_path: Path, request: pytest.FixtureRequest, s3: bool
               ) -> tuple[str, list[str], DirView | S3View]:
    """A remote for one test: a bucket of the moto server, else tmp_path/remote: (its
    url, the options that reach it, a view of its keys)."""
    if s3:
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = new_bucket(endpoint)
        return f"s3://{bucket}/r", ["--endpoint-url", endpoint], S3View(endpoint, bucket, "r")
    return str(tmp_path / "remote"), [], DirView(tmp_path / "remote")


def _push_two_then_back_to_one(ws: Path, more: dict[str, bytes]) -> None:
    """Tag the first version v1, commit `more` as a second, push both, then force latest
    back to v1: the second version is left unreachable on the remote."""
    ok("tag", "raw:latest", "v1", cwd=ws)
    write_tree(ws, more)
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    ok("push", "--force", "raw:v1", cwd=ws)


def _gc(ws: Path, *args: str) -> dict:
    return json.loads(ok("gc", "--remote", "origin", "--json", *args, cwd=ws).stdout)


def _clone_matches(url: str, dest: Path, files: dict[str, bytes], *extra: str) -> None:
    ok("clone", url, dest, *extra, cwd=dest.parent)
    assert read_tree(dest) == files
    ok("verify", cwd=dest)


def _version_objects(ws: Path, ref: str) -> set[str]:
    """Every object (blobs, trees, the record) version `ref` needs, read through dsv."""
    import dsv as api
    from dsv import tree
    store = api.Store.open(ws)
    try:
        v = store.core.resolve(ref)
        return {oid for _k, oid in tree.subtree_ids(v.tree, store.core.read_tree)} | \
            {v.record or ""}
    finally:
        store.close()


def test_gc_deletes_only_what_no_ref_reaches(tmp_path: Path) -> None:
    """A version forced over, a deleted tag's version, a partly-live pack (objects of a
    live and a dead version pushed together) and a large file only the dead version had:
    gone; every live object stays, and a clone is byte-identical."""
    remote = tmp_path / "remote"
    one = {"keep.bin": os.urandom(5000), "a/small.txt": b"alpha\n"}
    ws = _ws(tmp_path / "ws", one, str(remote))
    ok("tag", "raw:latest", "v1", cwd=ws)
    write_tree(ws, {"dead.bin": os.urandom(7000), "big-dead.bin": os.urandom(1_300_000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)  # one and two in the same packs
    dead = _version_objects(ws, "raw:latest") - _version_objects(ws, "raw:v1")
    live = _version_objects(ws, "raw:v1")
    ok("push", "--force", "raw:v1", cwd=ws)  # latest back to one: two is unreachable
    before = read_remote(DirView(remote))
    assert dead <= before.objects and live <= before.objects

    dry = _gc(ws, "--dry-run")
    assert dry["dry_run"] is True and dry["objects_deleted"] == len(dead)
    assert read_remote(DirView(remote)).objects == before.objects  # nothing deleted

    located = set(os.listdir(remote / "loc"))
    report = _gc(ws)
    assert report["versions"] == 1 and report["objects_deleted"] == len(dead)
    assert report["loose_deleted"] == 1 and report["packs_rewritten"] >= 1
    after = check_remote(DirView(remote))
    assert after.objects == live == after.reachable
    assert not dead & after.objects
    assert json.loads((remote / "gc.json").read_bytes())["generation"]
    _clone_matches(str(remote), tmp_path / "clone", one)
    # The locators of the dead version's trees and record went with them; the live ones
    # stay, and a reader without a store still reads v1 (places that moved are found
    # again in the pack indexes).
    assert report["locators_deleted"] == len(dead & located) > 0
    assert set(os.listdir(remote / "loc")) == located - dead and live & located
    ok("get", str(remote), "raw:v1", "--to", tmp_path / "got", cwd=tmp_path)
    assert read_tree(tmp_path / "got") == one

    again = _gc(ws)  # nothing left to delete; the remote is not touched
    assert again["objects_deleted"] == 0 and again["packs_written"] == 0


def test_a_version_only_a_deleted_tag_reached_is_reclaimed(tmp_path: Path) -> None:
    """Tag `exp` is the only ref reaching version two (latest was forced back to one, then
    moved on to three by another client, which shares a file with two): while the tag
    stands gc keeps two; once `push --delete raw:exp` replaced it by a tombstone, gc
    deletes what only two held, keeps the shared file, and versions one and three still
    clone byte-identical."""
    remote = tmp_path / "remote"
    shared = os.urandom(6000)
    one = {"keep.bin": os.urandom(5000), "a/small.txt": b"alpha\n"}
    ws = _ws(tmp_path / "ws", one, str(remote))
    ok("tag", "raw:latest", "keep", cwd=ws)
    write_tree(ws, {"exp.bin": os.urandom(7000), "big-exp.bin": os.urandom(1_300_000),
                    "shared.bin": shared})
    ok("commit", "-m", "two", cwd=ws)
    ok("tag", "raw:latest", "exp", cwd=ws)
    ok("push", cwd=ws)   # latest and exp at two, keep at one
    ok("push", "--force", "raw:keep", cwd=ws)   # latest back to one: only exp reaches two
    other = tmp_path / "other"
    ok("clone", remote, other, cwd=tmp_path)
    three = {**one, "shared.bin": shared, "three.bin": os.urandom(4000)}
    write_tree(other, three)
    ok("commit", "-m", "three", cwd=other)
    ok("push", "raw:latest", cwd=other)   # latest: one -> three
    v1 = _version_objects(ws, "raw:keep")
    v3 = _version_objects(other, "raw:latest")
    dead = _version_objects(ws, "raw:exp") - v1 - v3
    assert len(dead) >= 4   # two's record and tree, exp.bin, big-exp.bin (loose)
    state = check_remote(DirView(remote))
    assert dead | v1 | v3 <= state.reachable   # the tag still reaches two
    assert _gc(ws)["objects_deleted"] == 0

    ok("push", "--delete", "raw:exp", cwd=ws)
    report = _gc(ws)
    after = check_remote(DirView(remote))
    kept = dead & after.objects
    assert not kept, f"gc kept {len(kept)} of the {len(dead)} objects only exp reached"
    assert after.objects == after.reachable == v1 | v3
    assert report["objects_deleted"] == len(dead) and report["loose_deleted"] == 1
    _clone_matches(str(remote), tmp_path / "clone", three)
    ok("get", str(remote), "raw:keep", "--to", tmp_path / "got", cwd=tmp_path)
    assert read_tree(tmp_path / "got") == one
    r = run_dsv("get", str(remote), "raw:exp", "--to", tmp_path / "gone", cwd=tmp_path)
    assert r.returncode == 1 and "raw:exp matches no tag or version" in r.stderr
    assert not (tmp_path / "gone").exists()


def test_deleting_a_dataset_on_the_remote_then_gc_frees_its_space(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    files = {"f.bin": os.urandom(4000), "big.bin": os.urandom(1_200_000)}
    ws = _ws(tmp_path / "ws", files, str(remote))
    ok("push", cwd=ws)
    ok("push", "--delete", "raw", cwd=ws)
    report = _gc(ws)
    assert report["refs"] == 0 and report["loose_deleted"] == 1
    assert sorted(os.listdir(remote / "packs")) == [] == sorted(os.listdir(remote / "index"))
    assert not list((remote / "loose").rglob("*.*")) and not [
        p for p in (remote / "loose").rglob("*") if p.is_file()]
    check_remote(DirView(remote))
    # The store that still has the version pushes it again whole (its picture of the
    # remote is read afresh after the gc).
    ok("push", cwd=ws)
    assert check_remote(DirView(remote)).reachable >= _version_objects(ws, "raw:latest")
    _clone_matches(str(remote), tmp_path / "clone", files)


def test_another_clients_stale_picture_is_read_afresh_after_a_gc(tmp_path: Path) -> None:
    """Client B learned the remote held a version's objects; A deletes the dataset there
    and gc deletes them; B's next push of that version must upload them again."""
    remote = tmp_path / "remote"
    files = {"f.bin": os.urandom(4000), "big.bin": os.urandom(1_200_000)}
    a = _ws(tmp_path / "a", files, str(remote))
    ok("push", cwd=a)
    b = tmp_path / "b"
    ok("clone", remote, b, cwd=tmp_path)
    ok("push", "--delete", "raw", cwd=a)
    assert _gc(a)["objects_deleted"] >= 3
    r = ok("push", "--json", cwd=b)
    assert json.loads(r.stdout)["objects_sent"] >= 3
    check_remote(DirView(remote))
    _clone_matches(str(remote), tmp_path / "clone", files)


def test_gc_removes_the_leftovers_of_killed_pushes(tmp_path: Path) -> None:
    """A push killed after its first upload leaves packs no ref reaches; a pack without
    its index, an index without its pack, and an expired push lease are removed too."""
    remote = tmp_path / "remote"
    files = {"f.bin": os.urandom(4000)}
    ws = _ws(tmp_path / "ws", files, str(remote))
    ok("push", cwd=ws)
    write_tree(ws, {f"d/{i}.bin": os.urandom(3000) for i in range(5)})
    ok("commit", "-m", "two", cwd=ws)
    killed = run_dsv("push", cwd=ws, env={"DSV_CRASH_AT": "push:uploaded"})
    assert killed.returncode != 0
    (remote / "packs" / ("ab" * 32 + ".pack")).write_bytes(b"DSVPACK1 half a pack")
    (remote / "index" / ("cd" * 32)).write_bytes(b"an index with no pack")
    [lease] = os.listdir(remote / "locks")  # the killed push's, live for 15 minutes
    other = tmp_path / "other"  # another client: this store's version two is not pushed
    ok("clone", remote, other, cwd=tmp_path)
    r = run_dsv("gc", "--remote", "origin", cwd=other)
    assert r.returncode == 1 and "1 push to origin is in progress" in r.stderr
    for name in (lease, "0123456789abcdef"):  # as if 15 minutes had passed
        (remote / "locks" / name).write_text(json.dumps({"owner": name,
                                                         "until": time.time() - 5}))
    report = _gc(other)
    assert report["strays_deleted"] == 2 and report["leases_removed"] == 2
    assert report["packs_deleted"] >= 1
    state = check_remote(DirView(remote))
    assert state.objects == state.reachable
    assert not (remote / "packs" / ("ab" * 32 + ".pack")).exists()
    assert not (remote / "index" / ("cd" * 32)).exists()
    assert os.listdir(remote / "locks") == []
    ok("push", cwd=ws)  # the killed push, again
    check_remote(DirView(remote))


def test_gc_deletes_nothing_while_a_push_is_between_planning_and_its_ref_write(
        tmp_path: Path) -> None:
    """The push found the version's objects already on the remote (another client's,
    unreachable since its dataset was deleted there) and is stopped before its ref write:
    gc must refuse, and the push lands a complete version."""
    remote = tmp_path / "remote"
    files = {"f.bin": os.urandom(4000), "big.bin": os.urandom(1_200_000)}
    a = _ws(tmp_path / "a", files, str(remote))
    ok("push", cwd=a)
    b = tmp_path / "b"
    shutil.copytree(a, b, symlinks=True)  # the same version, and the same picture
    ok("push", "--delete", "raw", cwd=a)  # every object now unreachable
    pause = tmp_path / "pause"
    pause.mkdir()
    pusher = spawn("push", "--json", cwd=b, env=paused("push:objects-sent", pause))
    wait_for(pause / "push:objects-sent.reached", pusher)
    listing = DirView(remote).listing()
    r = run_dsv("gc", "--remote", "origin", cwd=a)
    assert r.returncode == 1
    assert "1 push to origin is in progress" in r.stderr and "nothing was deleted" in r.stderr
    assert DirView(remote).listing() == listing
    (pause / "push:objects-sent.go").touch()
    sent = json.loads(finish(pusher))
    assert sent["objects_sent"] == 0  # it relied on what was there
    state = check_remote(DirView(remote))
    assert state.reachable >= _version_objects(b, "raw:latest")
    _clone_matches(str(remote), tmp_path / "clone", files)
    assert _gc(a)["objects_deleted"] == 0  # now reachable again


@pytest.mark.parametrize("kind", ["dir", "moto"])
def test_a_push_whose_lease_lapsed_uploads_again_what_gc_deleted(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """The push is stopped long enough for its lease to expire (the test ages it), gc
    deletes the objects the push found on the remote, and the push, on waking, sees its
    lease lapsed, reads the remote afresh and uploads them again before its ref write."""
    files = {"f.bin": os.urandom(4000), "big.bin": os.urandom(1_200_000)}
    if kind == "dir":
        url, extra = str(tmp_path / "remote"), []
        view: DirView | S3View = DirView(tmp_path / "remote")
    else:
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = new_bucket(endpoint)
        url, extra = f"s3://{bucket}/r", ["--endpoint-url", endpoint]
        view = S3View(endpoint, bucket, "r")
    a = _ws(tmp_path / "a", files, url, *extra)
    ok("push", cwd=a)
    b = tmp_path / "b"
    shutil.copytree(a, b, symlinks=True)
    ok("push", "--delete", "raw", cwd=a)
    pause = tmp_path / "pause"
    pause.mkdir()
    pusher = spawn("push", "--json", cwd=b, env=paused("push:objects-sent", pause))
    wait_for(pause / "push:objects-sent.reached", pusher)
    [lock] = view.keys("locks/")
    body = json.loads(view.get(lock))
    expired = json.dumps({**body, "until": time.time() - 1}).encode()
    if isinstance(view, DirView):
        (view.root / lock).write_bytes(expired)
    else:
        view.client.put_object(Bucket=view.bucket, Key=view.prefix + lock, Body=expired)
    report = _gc(a)
    assert report["leases_removed"] == 1 and report["objects_deleted"] >= 3
    assert not read_remote(view).objects  # what the push relied on is gone
    (pause / "push:objects-sent.go").touch()
    out = pusher.communicate(timeout=120)
    assert pusher.returncode == 0, out
    assert "lease on origin lapsed" in out[1]
    assert json.loads(out[0])["objects_sent"] >= 3
    state = check_remote(view)
    assert state.reachable >= _version_objects(b, "raw:latest")
    _clone_matches(url, tmp_path / "clone", files, *extra)


def test_a_push_waits_for_a_running_gc(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    files = {"f.bin": os.urandom(4000)}
    a = _ws(tmp_path / "a", files, str(remote))
    ok("push", cwd=a)
    b = tmp_path / "b"
    ok("clone", remote, b, cwd=tmp_path)
    write_tree(b, {"g.bin": os.urandom(5000)})
    ok("commit", "-m", "two", cwd=b)
    pause = tmp_path / "pause"
    pause.mkdir()
    collector = spawn("gc", "--remote", "origin", cwd=a, env=paused("gc:planned", pause))
    wait_for(pause / "gc:planned.reached", collector)
    pusher = spawn("push", cwd=b)
    time.sleep(3)
    assert pusher.poll() is None  # waiting
    (pause / "gc:planned.go").touch()
    finish(collector)
    out, err = pusher.communicate(timeout=120)
    assert pusher.returncode == 0, out + err
    assert "waiting for the remote gc of origin to end" in err
    check_remote(DirView(remote))
    _clone_matches(str(remote), tmp_path / "clone", read_tree(b))


def test_a_ref_that_changes_while_gc_runs_stops_it(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ref that names another record when gc reads every ref again than when the
    fetch read it (a push that takes no lease): nothing is deleted."""
    import dsv.sync.gc as gc_module
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"f.bin": os.urandom(4000)}, str(remote))
    _push_two_then_back_to_one(ws, {"g.bin": os.urandom(4000)})
    two = json.loads(ok("show", "raw:latest", "--json", cwd=ws).stdout)
    [latest] = list((remote / "refs").rglob("latest"))
    moved = json.dumps({**json.loads(latest.read_bytes()), "record": "ab" * 32})
    real = gc_module.fetch

    def fetch_then_move(*args, **kwargs):  # (a push between the fetch and the check)
        out = real(*args, **kwargs)
        latest.write_text(moved)
        return out

    monkeypatch.setattr(gc_module, "fetch", fetch_then_move)
    r = dsv("gc", "--remote", "origin", cwd=ws)
    assert r.code == 1 and "changed while gc ran" in r.err and "nothing was deleted" in r.err
    assert two["record"] in read_remote(DirView(remote)).objects


def _stranger(ds: str, record: str, version: str, kind: str) -> tuple[str, bytes]:
    """A file under refs/ that no reader takes for a ref, which names `record`."""
    body = json.dumps({"dataset": ds, "record": record, "version": version},
                      sort_keys=True, separators=(",", ":")).encode()
    if kind == "cut":   # a ref caught mid-write (a copy by another tool, say)
        return f"refs/{ds}/tags/old", body[:body.index(record.encode()) + 64 + 2]
    if kind == "newer":  # a ref of a kind a newer dsv might write
        return f"refs/{ds}/branches/exp", body
    if kind == "other-dataset":  # names a version that is not its dataset's
        return f"refs/{'z' * 8}/latest", body.replace(ds.encode(), b"z" * 8)
    return f"refs/{ds}/tags/big", body + b" " * (70 << 10)   # larger than any ref


@pytest.mark.parametrize("kind", ["nothing", "cut", "newer", "other-dataset", "s3-large"])
def test_files_under_refs_that_are_no_refs_neither_stop_gc_nor_lose_what_they_name(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """Readers ignore a file under refs/ that is no ref they can read; gc refused for
    ever on one. Now it goes on; but such a file may be a ref caught mid-write, damaged,
    or of a newer dsv, so the version records it names (that the remote holds) are kept
    with their history, as a ref's. One that names none is ignored, with a warning."""
    one = {"keep.bin": os.urandom(5000), "a/small.txt": b"alpha\n"}
    url, extra, view = _remote_at(tmp_path, request, s3=kind == "s3-large")

    def put(key: str, data: bytes) -> None:
        if isinstance(view, S3View):
            view.client.put_object(Bucket=view.bucket, Key=view.prefix + key, Body=data)
        else:
            (view.root / key).parent.mkdir(parents=True, exist_ok=True)
            (view.root / key).write_bytes(data)

    ws = _ws(tmp_path / "ws", one, url, *extra)
    _push_two_then_back_to_one(ws, {"dead.bin": os.urandom(7000),
                                    "big-dead.bin": os.urandom(1_200_000)})
    two = json.loads(ok("show", "raw:latest", "--json", cwd=ws).stdout)
    dead = _version_objects(ws, "raw:latest")
    # (version two is not the local latest: the local store had moved on, then forced
    # the remote back)
    planted = {"refs/junk": os.urandom(300),
               "refs/someone/tags/t": b'{"not": "a ref"}',
               f"refs/{two['dataset']}/tags/.v1.Xz09": view.get(
                   f"refs/{two['dataset']}/latest")}   # (names the live record)
    if kind != "nothing":
        key, data = _stranger(two["dataset"], two["record"], two["id"], kind)
        planted[key] = data
    for key, data in planted.items():
        put(key, data)
    r = run_dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "bug in dsv" not in r.stderr
    for key in ("refs/junk", "refs/someone/tags/t"):
        assert f"warning: ignored {key} on origin: not a ref dsv can read" in r.stderr
    for key, data in planted.items():  # gc never touches refs
        assert view.get(key) == data
        if isinstance(view, S3View):  # (tests/servers.py reads only refs)
            view.client.delete_object(Bucket=view.bucket, Key=view.prefix + key)
        else:
            (view.root / key).unlink()
    held = read_remote(view).objects
    if kind == "nothing":
        assert json.loads(r.stdout)["objects_deleted"] == len(dead - _version_objects(
            ws, "raw:latest~1"))
        assert not dead - _version_objects(ws, "raw:latest~1") & held
    else:
        assert json.loads(r.stdout)["objects_deleted"] == 0
        assert dead <= held, "gc deleted what a ref caught mid-write may name"
        assert f"{key} on origin is not a ref dsv can read, but names version record " \
            f"{two['record'][:12]}" in r.stderr
    _clone_matches(url, tmp_path / "clone", one, *extra)


# The randomized run below (issue 11). Where a push is stopped between planning and its
# ref write (dsv/sync/push.py): after its first upload, after its first phase (the
# blobs), after every object and catalog (a push that found everything on the remote
# reaches only that one).
PUSH_PAUSES = ("push:uploaded", "push:phase-sent", "push:objects-sent")
# The failures of the run that are no fault, by their error line; any other failure is.
GC_REFUSED_FOR_A_PUSH = re.compile(r"error: [0-9]+ push(es)? to origin (is|are) in "
                                   r"progress \(lease until [0-9:]+\); nothing was deleted")
GC_MAY_FAIL = (
    GC_REFUSED_FOR_A_PUSH,
    # a push repacking the remote's small packs holds the maintenance lease
    re.compile(r"error: another client is maintaining origin \(its lease maintain\.lock "
               r"holds until [^)]*\); nothing was deleted"),
    # a push uploaded a pack while the gc read the pack indexes
    re.compile(r"error: the packs of origin changed while gc read them; nothing was "
               r"deleted"),
)
# forced pushes that lost every compare-and-swap of `latest` to the others
PUSH_MAY_FAIL = (re.compile(r"error: 1 ref rejected by origin \(another push won the "
                            r"race\): raw:latest kept changing on the remote while pushing"),)
# a clone that read `latest` before a forced push moved it, and a gc then deleted that
# version (readers take no lock): allowed only in a round whose gc deleted something
CLONE_MAY_FAIL = (re.compile(r"error: object [0-9a-f]{12} is (no longer|not) on origin"),
                  re.compile(r"error: the trees of version \S+ are no longer on origin"),
                  re.compile(r"error: origin has no pack [0-9a-f]{12}"))
ROUNDS = 6


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err and "bug in dsv" not in err, err
    return " ".join(lines[0].split())


def _failed_as_expected(what: str, out: str, err: str, allowed: tuple[re.Pattern, ...]
                        ) -> re.Pattern:
    line = _error_line(err)
    for pattern in allowed:
        if pattern.match(line):
            return pattern
    pytest.fail(f"{what} failed unexpectedly: {out}{err}")


@pytest.mark.slow
def test_gc_beside_pushers_and_cloners_on_seaweedfs(tmp_path: Path, seaweedfs_endpoint,
                                                    aws_env) -> None:
    """A bounded randomized run against SeaweedFS: in each round three clients push (a new
    version, some tagged, or one of their older versions again: the remote may still hold
    all of it, unreachable, so the push sends nothing and relies on what is there), a
    fourth deletes a tag pushed in an earlier round, gc runs and a clone is made.
    "pause" rounds stop pushes between planning and their ref write (`DSV_PAUSE_AT`, a
    random point each), run gc while they wait, and let each go on a random short while
    after the gc started or once it ended; "gc-first" rounds start the pushes once the
    gc holds its lease. After every round the remote is checked by the independent
    checker, and the clone must be byte-identical to the version it names; a process
    may fail only with one of the expected messages above."""
    seed = int(os.environ.get("DSV_TEST_SEED") or random.randrange(1 << 32))
    print(f"seed {seed} (DSV_TEST_SEED={seed} runs the same choices again)")
    rng = random.Random(seed)
    bucket = new_bucket(seaweedfs_endpoint)
    url, extra = f"s3://{bucket}/r", ["--endpoint-url", seaweedfs_endpoint]
    view = S3View(seaweedfs_endpoint, bucket, "r")
    seed_ws = _ws(tmp_path / "seed", {"base.bin": rng.randbytes(3000)}, url, *extra)
    ok("push", cwd=seed_ws)
    clients = [tmp_path / f"c{i}" for i in range(3)]
    ok("clone", url, clients[0], *extra, cwd=tmp_path)
    for c in clients[1:] + [tmp_path / "deleter"]:   # a copied store is independent
        shutil.copytree(clients[0], c, symlinks=True)   # (its dataset is bound to ".")
    deleter = tmp_path / "deleter"
    pushed = {query_json("show", "raw:latest", cwd=seed_ws)["id"]: read_tree(seed_ws)}
    # A version no client descends from, latest until the first round's pushes move
    # `latest` off it: from then on unreachable, so the first gc that succeeds after the
    # first round has it to delete while the others push and clone.
    write_tree(seed_ws, {"gone.bin": random.Random(seed + 1).randbytes(200_000)})
    pushed[json.loads(setup_ok("commit", "-m", "gone", "--json", cwd=seed_ws))["id"]] = \
        read_tree(seed_ws)
    ok("push", cwd=seed_ws)
    older: list[list[str]] = [[] for _ in clients]   # each client's untagged versions
    tags: list[tuple[Path, str]] = []   # (client, tag) on the remote, to delete later
    kinds = ["pause", "gc-first"] * (ROUNDS // 2)
    rng.shuffle(kinds)
    deleted = refused_for_push = paused_through_gc = tags_deleted = 0
    for rounds, kind in enumerate(kinds):
        pushes: list[tuple[subprocess.Popen[str], Path, str | None]] = []  # (.., client, tag)
        plans = []   # (client, target, tag, pause point or None)
        for i, c in enumerate(clients):
            tag = None
            if older[i] and rng.random() < 0.25:
                target = rng.choice(older[i])   # again, maybe found whole on the remote
                point = "push:objects-sent"
            else:
                files = {f"c{i}/r{rounds}.bin": rng.randbytes(rng.randint(100, 6000))}
                if rng.random() < 0.3:
                    files[f"c{i}/big{rounds}.bin"] = rng.randbytes(1_100_000)
                write_tree(c, files)
                target = json.loads(setup_ok("commit", "-m", f"r{rounds}", "--json",
                                             cwd=c))["id"]
                pushed[target] = read_tree(c)
                if rng.random() < 0.35 or (rounds, i) == (0, 0):   # (one at least)
                    tag = f"t{rounds}c{i}"
                    setup_ok("tag", f"raw:{target}", tag, cwd=c)
                else:
                    older[i].append(target)
                point = rng.choice(PUSH_PAUSES)
            pause = point if kind == "pause" and rng.random() < 0.75 else None
            plans.append((c, target, tag, pause))
        if kind == "pause" and not any(p for *_x, p in plans):
            c, target, tag, _p = plans[0]
            plans[0] = (c, target, tag, "push:objects-sent")
        deleting = None
        # A tag pushed in an earlier round goes (one at least, in the last round).
        if tags and (rng.random() < 0.6 or (rounds == ROUNDS - 1 and not tags_deleted)):
            owner, deleting = tags.pop(rng.randrange(len(tags)))
            setup_ok("tag", "-d", f"raw:{deleting}", cwd=owner)   # (not pushed again)

        def start_pushes() -> dict[int, Path]:
            waiting = {}
            for i, (c, target, tag, pause) in enumerate(plans):
                env = None
                if pause is not None:
                    waiting[i] = tmp_path / f"pause-{rounds}-{i}"
                    waiting[i].mkdir()
                    env = paused(pause, waiting[i])
                pushes.append((spawn("push", "--force", f"raw:{target}", cwd=c, env=env),
                               c, tag))
            return waiting

        gc = None
        if kind == "gc-first":
            gc = spawn("gc", "--remote", "origin", "--json", cwd=seed_ws)
            deadline = time.monotonic() + 60
            while not view.keys(MAINTAIN_LOCK) and gc.poll() is None:
                assert time.monotonic() < deadline, "the gc never took its lease"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
        waiting = start_pushes()
        # The pushes to stop: each goes on `delay` seconds after the gc started, or that
        # long after the gc ended.
        release = {i: (rng.uniform(0, 1.5), rng.random() < 0.5) for i in waiting}
        if kind == "pause" and not any(after for _d, after in release.values()):
            i = rng.choice(sorted(release))   # one at least waits out the whole gc
            release[i] = (release[i][0], True)
        if kind == "pause":
            for i, pause_dir in waiting.items():
                wait_for(pause_dir / f"{plans[i][3]}.reached", pushes[i][0])
            gc = spawn("gc", "--remote", "origin", "--json", cwd=seed_ws)
        assert gc is not None
        gc_started = time.monotonic()
        others = [spawn("clone", url, tmp_path / f"clone{rounds}", *extra, cwd=tmp_path)]
        if deleting is not None:
            others.append(spawn("push", "--delete", f"raw:{deleting}", cwd=deleter))
        gc_ended = None
        deadline = time.monotonic() + 180
        while waiting:
            assert time.monotonic() < deadline, "a stopped push was never let go"
            if gc_ended is None and gc.poll() is not None:
                gc_ended = time.monotonic()
            for i, pause_dir in list(waiting.items()):
                delay, after_gc = release[i]
                since = gc_ended if after_gc else gc_started
                reached = (pause_dir / f"{plans[i][3]}.reached").exists()
                if pushes[i][0].poll() is not None or (
                        reached and since is not None and time.monotonic() >= since + delay):
                    if reached and after_gc and kind == "pause":
                        paused_through_gc += 1   # stopped from before the gc to its end
                    (pause_dir / f"{plans[i][3]}.go").touch()
                    del waiting[i]
            time.sleep(0.02)
        gc_out, gc_err = gc.communicate(timeout=180)
        if gc.returncode == 0:
            deleted_now = json.loads(gc_out)["objects_deleted"]
            deleted += deleted_now
        else:
            deleted_now = 0
            why = _failed_as_expected("gc", gc_out, gc_err, GC_MAY_FAIL)
            refused_for_push += why is GC_REFUSED_FOR_A_PUSH
        for proc, c, tag in pushes:
            out, err = proc.communicate(timeout=180)
            if proc.returncode != 0:
                _failed_as_expected("push", out, err, PUSH_MAY_FAIL)
            elif tag is not None:
                tags.append((c, tag))
        clone, *deleting_proc = others
        out, err = clone.communicate(timeout=180)
        if clone.returncode == 0:
            clone_dir = tmp_path / f"clone{rounds}"
            vid = query_json("show", "raw:latest", cwd=clone_dir)["id"]
            assert read_tree(clone_dir) == pushed[vid], f"clone of {vid} differs"
        else:
            assert deleted_now, f"a clone failed, and the gc of its round deleted nothing: " \
                f"{out}{err}"
            _failed_as_expected("clone", out, err, CLONE_MAY_FAIL)
        for proc in deleting_proc:   # a tag that only this client wrote: it goes
            finish(proc)
            tags_deleted += 1
        check_remote(view)   # every ref on the remote names a whole version
        print(f"round {rounds} ({kind}): gc exit {gc.returncode}, deleted {deleted_now}; "
              f"pushes exit {[p.returncode for p, *_x in pushes]}; clone exit "
              f"{clone.returncode}; tag deleted: {deleting}")
    winner = rng.choice(clients)
    ok("push", "--force", cwd=winner)
    ok("gc", "--remote", "origin", cwd=seed_ws)
    state = check_remote(view)
    assert state.objects == state.reachable  # nothing unreachable left, nothing missing
    _clone_matches(url, tmp_path / "final", read_tree(winner), *extra)
    # The run met both races, deleted something and deleted tags: else it proved little.
    assert deleted >= 1 and refused_for_push >= 1 and paused_through_gc >= 1 and \
        tags_deleted >= 1, (deleted, refused_for_push, paused_through_gc, tags_deleted)


def test_a_lease_that_lapsed_after_the_blobs_were_sent_makes_the_push_check_them_all(
        tmp_path: Path) -> None:
    """Stopped right after uploading its blobs, the push's lease runs out, and gc deletes
    those blobs (no ref reaches them yet). On waking the push sends its trees and record,
    finds its lease lapsed, and must check every object again, not trust the record it
    just uploaded."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("push", cwd=ws)
    files = {"n.bin": os.urandom(6000), "big.bin": os.urandom(1_100_000)}
    write_tree(ws, files)
    ok("commit", "-m", "two", cwd=ws)
    other = tmp_path / "other"
    ok("clone", remote, other, cwd=tmp_path)
    pause = tmp_path / "pause"
    pause.mkdir()
    pusher = spawn("push", cwd=ws, env=paused("push:phase-sent", pause))
    wait_for(pause / "push:phase-sent.reached", pusher)
    [lock] = os.listdir(remote / "locks")
    (remote / "locks" / lock).write_text(json.dumps({"owner": lock, "until": time.time() - 1}))
    assert _gc(other)["objects_deleted"] >= 2  # the new blob pack and the large file
    (pause / "push:phase-sent.go").touch()
    out, err = pusher.communicate(timeout=120)
    assert pusher.returncode == 0, out + err
    assert "lapsed" in err
    check_remote(DirView(remote))
    _clone_matches(str(remote), tmp_path / "clone", read_tree(ws))


def test_a_push_whose_lease_lapsed_before_its_records_sends_no_record(
        tmp_path: Path) -> None:
    """Stopped after its blobs, lease run out, gc deletes them; on waking the push must
    not upload its record (a record on the remote vouches for its version: a later push
    of it would send nothing and publish the ref). Killed right after its objects went
    up, it leaves a remote on which the next push completes the version."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("push", cwd=ws)
    write_tree(ws, {"n.bin": os.urandom(6000), "m.bin": os.urandom(7000)})
    ok("commit", "-m", "two", cwd=ws)
    other = tmp_path / "other"
    ok("clone", remote, other, cwd=tmp_path)
    pause = tmp_path / "pause"
    pause.mkdir()
    pusher = spawn("push", cwd=ws, env={**paused("push:phase-sent", pause),
                                        "DSV_CRASH_AT": "push:objects-sent"})
    wait_for(pause / "push:phase-sent.reached", pusher)
    [lock] = os.listdir(remote / "locks")
    (remote / "locks" / lock).write_text(json.dumps({"owner": lock, "until": time.time() - 1}))
    assert _gc(other)["objects_deleted"] >= 2  # the new blob pack's
    (pause / "push:phase-sent.go").touch()
    out, err = pusher.communicate(timeout=120)
    assert pusher.returncode == -signal.SIGKILL, out + err
    assert "lapsed" in err
    os.unlink(pause / "push:phase-sent.reached")
    ok("push", cwd=ws)
    check_remote(DirView(remote))
    _clone_matches(str(remote), tmp_path / "clone", read_tree(ws))


def test_a_pack_gc_writes_again_under_a_strays_name_is_not_deleted(
        tmp_path: Path, dsv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gc that failed between a rewritten pack and its index left `packs/X` with no
    index; the next gc rewrites the same objects into the same X (ids depend on content)
    and must not then delete X as a stray."""
    from dsv.remotes.base import RemoteError
    from dsv.remotes.fs import FsBackend
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"keep.bin": os.urandom(5000), "k2.bin": os.urandom(900)},
             str(remote))
    _push_two_then_back_to_one(ws, {"dead.bin": os.urandom(7000)})
    put = FsBackend.put_bytes

    def failing(self: FsBackend, key: str, data: bytes) -> None:
        if key.startswith("index/"):
            raise RemoteError("simulated network failure")
        put(self, key, data)

    monkeypatch.setattr(FsBackend, "put_bytes", failing)
    r = dsv("gc", "--remote", "origin", cwd=ws)
    assert r.code != 0 and "simulated network failure" in r.err
    monkeypatch.setattr(FsBackend, "put_bytes", put)
    r = dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert r.code == 0, r.err
    state = check_remote(DirView(remote))
    assert state.objects == state.reachable
    v1 = tmp_path / "v1"
    ok("checkout", "raw:v1", "--to", v1, cwd=ws)
    _clone_matches(str(remote), tmp_path / "clone", read_tree(v1))


def test_a_damaged_pack_index_is_written_again_from_its_whole_pack(tmp_path: Path) -> None:
    """An index file damaged while its pack is whole stopped every gc for good (its hint,
    `verify --remote --repair`, leaves the index as it is). The pack's own table is the
    index: gc writes it again, and goes on."""
    remote = tmp_path / "remote"
    one = {"a.bin": os.urandom(3000)}
    ws = _ws(tmp_path / "ws", one, str(remote))
    _push_two_then_back_to_one(ws, {"b.bin": os.urandom(3000)})
    victims = sorted(os.listdir(remote / "index"))
    good = {v: (remote / "index" / v).read_bytes() for v in victims}
    for v in victims:
        (remote / "index" / v).write_bytes(b"garbage")
    r = run_dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["objects_deleted"] == 3  # version two
    assert f"pack index {victims[0][:12]} on origin was damaged; written again from its " \
        f"pack" in r.stderr
    for v in victims:
        if (remote / "packs" / f"{v}.pack").exists():
            assert (remote / "index" / v).read_bytes() == good[v]
    state = check_remote(DirView(remote))
    assert state.objects == state.reachable
    _clone_matches(str(remote), tmp_path / "clone", one)


def test_gc_deletes_nothing_while_a_pack_index_cannot_be_read(tmp_path: Path) -> None:
    """A damaged index whose pack is damaged too could have named anything."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    _push_two_then_back_to_one(ws, {"b.bin": os.urandom(3000)})
    victim = sorted(os.listdir(remote / "index"))[0]
    (remote / "index" / victim).write_bytes(b"garbage")
    (remote / "packs" / f"{victim}.pack").write_bytes(b"DSVPACK1 more garbage")
    listing = DirView(remote).listing()
    r = run_dsv("gc", "--remote", "origin", cwd=ws)
    assert r.returncode == 1 and f"pack index {victim[:12]} on origin cannot be read" in \
        r.stderr and "nothing was deleted" in r.stderr
    assert DirView(remote).listing() == listing


@pytest.mark.parametrize("until", ["1e300", "Infinity", "\"soon\"", "true"])
def test_hostile_lease_expiries_count_as_expired(tmp_path: Path, until: str) -> None:
    """A lease that ends in 10^300 years (or never, or is not a number) is no lease: it
    must neither crash a push or a gc nor block them for ever."""
    remote = tmp_path / "remote"
    files = {"a.bin": os.urandom(3000)}
    ws = _ws(tmp_path / "ws", files, str(remote))
    ok("push", cwd=ws)
    (remote / "locks").mkdir(exist_ok=True)
    (remote / "locks" / "feedfacefeedface").write_text(
        '{"owner": "feedfacefeedface", "until": %s}' % until)
    (remote / "maintain.lock").write_text('{"owner": "x", "gc": true, "until": %s}' % until)
    write_tree(ws, {"b.bin": os.urandom(2000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    report = _gc(ws)
    assert report["leases_removed"] == 1
    assert not (remote / "maintain.lock").exists()
    check_remote(DirView(remote))


def test_a_maintain_lock_that_cannot_be_read_stops_gc_but_not_pushes(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("push", cwd=ws)
    (remote / "maintain.lock").mkdir()  # not a file
    write_tree(ws, {"b.bin": os.urandom(2000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    assert os.listdir(remote / "locks") == []  # the push's own lease is gone
    r = run_dsv("gc", "--remote", "origin", cwd=ws)
    assert r.returncode == 1 and "maintain.lock on origin cannot be read" in r.stderr
    assert "Traceback" not in r.stderr and "bug in dsv" not in r.stderr
    check_remote(DirView(remote))


def test_gc_raises_an_older_remote_to_format_3(tmp_path: Path) -> None:
    """Format 2 is format 1 plus leases: a dsv that knows only format 1 takes none, so
    once a gc deletes anything, such a dsv must refuse the remote (it is raised to 2
    before the first delete). Format 3 is 2 plus complete catalogs, which the gc writes,
    and only a gc that finished raises it to 3."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("push", cwd=ws)
    assert json.loads((remote / "dsv-remote.json").read_bytes())["format"] == REMOTE_FORMAT
    (remote / "dsv-remote.json").write_text('{"format": 1, "hash": "blake3"}\n')
    ok("push", "--delete", "raw", cwd=ws)
    killed = run_dsv("gc", "--remote", "origin", cwd=ws, env={"DSV_CRASH_AT": "gc:deleting"})
    assert killed.returncode != 0
    assert json.loads((remote / "dsv-remote.json").read_bytes())["format"] == 2
    lease = json.loads((remote / "maintain.lock").read_bytes())  # the killed gc's, expired
    (remote / "maintain.lock").write_text(json.dumps({**lease, "until": time.time() - 1}))
    assert _gc(ws)["objects_deleted"] >= 3
    assert json.loads((remote / "dsv-remote.json").read_bytes())["format"] == 3


def test_a_gc_killed_between_its_delete_waves_leaves_no_record_without_its_version(
        tmp_path: Path) -> None:
    """Version records go first: a gc killed once they are deleted leaves the dead
    versions' trees and blobs (garbage, for the next run) but no record whose version is
    incomplete, so a push of such a version later sends it whole."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("tag", "raw:latest", "v1", cwd=ws)
    write_tree(ws, {"dead.bin": os.urandom(7000), "big.bin": os.urandom(1_200_000)})
    ok("commit", "-m", "two", cwd=ws)
    two = json.loads(ok("show", "raw:latest", "--json", cwd=ws).stdout)["id"]
    ok("push", cwd=ws)
    ok("push", "--force", "raw:v1", cwd=ws)
    killed = run_dsv("gc", "--remote", "origin", cwd=ws, env={"DSV_CRASH_AT": "gc:wave-deleted"})
    assert killed.returncode != 0
    state = check_remote(DirView(remote))
    assert state.objects > state.reachable  # the dead version's tree and blobs are still there
    records = {o for o, (_p, _off, _ln, kind) in state.located.items() if kind == 2}
    assert records <= state.reachable  # no dead record is left
    lease = json.loads((remote / "maintain.lock").read_bytes())
    assert lease["gc"] is True and lease["until"] <= time.time() + 600
    (remote / "maintain.lock").write_text(json.dumps({**lease, "until": time.time() - 1}))
    r = ok("push", "--force", "--json", f"raw:{two}", cwd=ws)
    assert json.loads(r.stdout)["versions_sent"] == 1
    check_remote(DirView(remote))
    report = _gc(ws)
    assert report["versions"] == 2
    state = check_remote(DirView(remote))
    assert state.objects == state.reachable


def test_hostile_entries_under_locks_are_neither_followed_nor_fatal(tmp_path: Path) -> None:
    """A FIFO, a symlink out of the remote and a directory where push leases live: gc
    and push neither hang on, follow nor choke on them, and count none as a live push."""
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("push", cwd=ws)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"owner": "x", "until": time.time() + 600}))
    (remote / "locks" / "dir" / "deeper").mkdir(parents=True)
    os.mkfifo(remote / "locks" / "fifo")
    os.symlink(outside, remote / "locks" / "link")
    report = _gc(ws)  # not refused: nothing there is a push's live lease
    assert report["refs"] == 1
    assert json.loads(outside.read_text())["owner"] == "x"
    write_tree(ws, {"b.bin": os.urandom(2000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    check_remote(DirView(remote))


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_gc_keeps_the_good_copy_of_an_object_whose_other_copy_is_damaged(
        tmp_path: Path, damage: str) -> None:
    """A live object of a partly-live pack that a wholly live pack also holds is not
    rewritten; but when that other copy is damaged (a flipped byte, a pack cut short
    whose index still names the object), the only good copy must not go with its pack."""
    from dsv.hashing import hash_bytes
    from dsv.objects import encode_pack, pack_tail_size, parse_pack_index
    remote = tmp_path / "remote"
    one = {"keep.bin": os.urandom(5000), "small.txt": b"alpha\n"}
    ws = _ws(tmp_path / "ws", one, str(remote))
    # (the blob pack is left partly live)
    _push_two_then_back_to_one(ws, {"dead.bin": os.urandom(7000)})
    oid = hash_bytes(one["keep.bin"])
    for pack_id in os.listdir(remote / "index"):
        rows, _total = parse_pack_index((remote / "index" / pack_id).read_bytes(), pack_id)
        if any(e.oid == oid for e in rows):
            e = next(e for e in rows if e.oid == oid)
            data = (remote / "packs" / f"{pack_id}.pack").read_bytes()
            assert data[e.offset:e.offset + e.length] == one["keep.bin"]
    # Another copy, in a pack of its own (wholly live), then damaged.
    copy_id, copy, _rows = encode_pack([(oid, 0, one["keep.bin"])])
    tail = bytes(copy[len(copy) - pack_tail_size(1):])
    if damage == "flip":
        copy[100] ^= 1
    else:
        copy = copy[:50] + tail
    (remote / "packs" / f"{copy_id}.pack").write_bytes(copy)
    (remote / "index" / copy_id).write_bytes(tail)
    report = _gc(ws)
    assert report["packs_rewritten"] >= 1
    held = []
    for pack_id in os.listdir(remote / "index"):
        rows, _total = parse_pack_index((remote / "index" / pack_id).read_bytes(), pack_id)
        data = (remote / "packs" / f"{pack_id}.pack").read_bytes()
        held += [data[e.offset:e.offset + e.length] for e in rows if e.oid == oid]
    assert sum(h == one["keep.bin"] for h in held) >= 1, "the only good copy was deleted"
    (remote / "index" / copy_id).unlink()  # (the damaged copy, which verify reports)
    (remote / "packs" / f"{copy_id}.pack").unlink()
    check_remote(DirView(remote))
    _clone_matches(str(remote), tmp_path / "clone", one)


def test_planted_keys_not_named_by_a_pack_id_neither_stop_gc_nor_go(tmp_path: Path) -> None:
    """`index/foo` with `packs/foo.pack` (a copy of a real pair) are not dsv's packs (a
    reader ignores them): gc must not refuse for ever on them (its hint, `verify --remote
    --repair`, does not remove them), nor delete them."""
    remote = tmp_path / "remote"
    one = {"a.bin": os.urandom(3000)}
    ws = _ws(tmp_path / "ws", one, str(remote))
    _push_two_then_back_to_one(ws, {"b.bin": os.urandom(3000)})
    real = sorted(os.listdir(remote / "index"))[0]
    shutil.copy(remote / "index" / real, remote / "index" / "foo")
    shutil.copy(remote / "packs" / f"{real}.pack", remote / "packs" / "foo.pack")
    r = run_dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["objects_deleted"] == 3  # version two
    assert (remote / "index" / "foo").exists() and (remote / "packs" / "foo.pack").exists()
    _clone_matches(str(remote), tmp_path / "clone", one)


@pytest.mark.parametrize("damage", ["dir", "link", "large", "s3-large"])
def test_a_damaged_gc_json_is_replaced_or_refused_before_anything_is_uploaded(
        tmp_path: Path, damage: str, request: pytest.FixtureRequest) -> None:
    """`gc.json` (the gc generation) that is a directory, a symlink or larger than a ref
    may be: gc must not upload its rewritten packs and only then fail on it. One it can
    replace (a link, never followed; a file too large) it replaces with a new generation
    and goes on; a directory (dsv never removes one) stops it before any upload, with the
    way out."""
    one = {"keep.bin": os.urandom(5000), "small.txt": b"alpha\n"}
    url, extra, view = _remote_at(tmp_path, request, s3=damage == "s3-large")
    ws = _ws(tmp_path / "ws", one, url, *extra)
    _push_two_then_back_to_one(ws, {"dead.bin": os.urandom(7000)})  # (a partly-live pack)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"generation": "theirs"}')
    big = b'{"generation": "' + b"x" * (70 << 10) + b'"}'
    if damage == "dir":
        (tmp_path / "remote" / "gc.json" / "inside").mkdir(parents=True)
    elif damage == "link":
        os.symlink(outside, tmp_path / "remote" / "gc.json")
    elif damage == "large":
        (tmp_path / "remote" / "gc.json").write_bytes(big)
    else:
        assert isinstance(view, S3View)
        view.client.put_object(Bucket=view.bucket, Key=view.prefix + "gc.json", Body=big)
    before = {k for k in view.keys("") if not k.startswith(("gc.json", "maintain.lock"))}
    r = run_dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert "Traceback" not in r.stderr and "bug in dsv" not in r.stderr
    if damage == "dir":
        assert r.returncode == 1, r.stdout + r.stderr
        assert "gc.json on origin cannot be read" in r.stderr
        assert "nothing was deleted" in r.stderr and "remove gc.json" in r.stderr
        after = {k for k in view.keys("") if not k.startswith(("gc.json", "maintain.lock"))}
        assert after == before  # nothing uploaded, nothing deleted
        assert (tmp_path / "remote" / "gc.json" / "inside").is_dir()
        assert not (tmp_path / "remote" / "maintain.lock").exists()
        shutil.rmtree(tmp_path / "remote" / "gc.json")  # the way out
        r = run_dsv("gc", "--remote", "origin", "--json", cwd=ws)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["objects_deleted"] == 3  # version two
    if damage != "dir":
        assert "gc.json on origin could not be read" in r.stderr
    assert json.loads(view.get("gc.json"))["generation"]
    assert outside.read_bytes() == b'{"generation": "theirs"}'  # never written through
    state = check_remote(view)
    assert state.objects == state.reachable
    _clone_matches(url, tmp_path / "clone", one, *extra)


def test_history_behind_a_record_listed_under_another_kind_is_not_deleted(
        tmp_path: Path) -> None:
    """The parent of `latest`'s version is on the remote, but the pack that holds its
    record lists it as a blob (a damaged or hostile remote; a repack that kept the first
    kind it saw). The ref still reaches that version through the parent record its
    record names: gc must keep it, and what only it holds (a file deleted since)."""
    from dsv.hashing import hash_bytes
    from dsv.objects import KIND_BLOB, KIND_VERSION, encode_pack, pack_tail_size, \
        parse_pack_index
    remote = tmp_path / "remote"
    one = {"only-in-one.bin": os.urandom(5000), "both.txt": b"alpha\n"}
    ws = _ws(tmp_path / "ws", one, str(remote))
    v1 = _version_objects(ws, "raw:latest")
    (ws / "only-in-one.bin").unlink()
    write_tree(ws, {"new.bin": os.urandom(3000)})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)
    v1_record = json.loads(ok("show", "raw:latest~1", "--json", cwd=ws).stdout)["record"]
    # The records' pack, written again without v1's record, and a pack that lists that
    # record as a blob.
    [records] = [p for p in os.listdir(remote / "index")
                 if any(e.oid == v1_record for e in parse_pack_index(
                     (remote / "index" / p).read_bytes(), p)[0])]
    data = (remote / "packs" / f"{records}.pack").read_bytes()
    rows, _total = parse_pack_index((remote / "index" / records).read_bytes(), records)
    raw = {e.oid: data[e.offset:e.offset + e.length] for e in rows}
    assert hash_bytes(raw[v1_record]) == v1_record
    for objects in ([(o, KIND_VERSION, b) for o, b in raw.items() if o != v1_record],
                    [(v1_record, KIND_BLOB, raw[v1_record])]):
        pack_id, pack, entries = encode_pack(objects)
        (remote / "packs" / f"{pack_id}.pack").write_bytes(pack)
        (remote / "index" / pack_id).write_bytes(pack[len(pack) - pack_tail_size(len(entries)):])
    os.unlink(remote / "index" / records)
    os.unlink(remote / "packs" / f"{records}.pack")
    # gc run by a store that never saw the parent version (the fetch does not take the
    # record for one), then by the store that pushed it
    other = tmp_path / "other"
    ok("clone", remote, other, cwd=tmp_path)
    for where in (other, ws):
        r = run_dsv("gc", "--remote", "origin", "--json", cwd=where)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["versions"] == 2
    lost = v1 - read_remote(DirView(remote)).objects
    assert not lost, f"gc deleted {len(lost)} objects of the parent version"
    _clone_matches(str(remote), tmp_path / "clone", read_tree(ws))


def test_a_pack_that_cannot_be_read_just_now_is_never_called_damaged(tmp_path: Path,
                                                                    s3_endpoint, aws_env
                                                                    ) -> None:
    """A damaged index whose pack answers 500 (a flaky gateway): gc stops with nothing
    deleted and says why, and never tells the user to delete the pack, which is whole.
    (Before: any failure to read the pack counted as "the pack cannot tell", and the hint
    said to remove the index and the pack.)"""
    from faultproxy import FaultProxy
    bucket = new_bucket(s3_endpoint)
    url = f"s3://{bucket}/r"
    ws = tmp_path / "ws"
    write_tree(ws, {"a.bin": os.urandom(3000)})
    setup_ok("init", "--name", "data", cwd=ws)
    setup_ok("commit", "-m", "one", cwd=ws)
    view = S3View(s3_endpoint, bucket, "r")
    with FaultProxy(s3_endpoint, rule=lambda method, target:
                    "500" if method == "GET" and "/packs/" in target else None) as proxy:
        setup_ok("remote", "add", "origin", url, "--endpoint-url", proxy.url, cwd=ws)
        setup_ok("push", cwd=ws)
        keys = view.keys("index/")   # (one pack of each kind)
        view.client.put_object(Bucket=bucket, Key=view.prefix + keys[0], Body=b"garbage")
        before = sorted(view.keys(""))
        r = run_dsv("gc", "--remote", "origin", cwd=ws)
        assert proxy.faults["500"] >= 1, proxy.summary()
    assert r.returncode == 1 and "bug in dsv" not in r.stderr, r.stderr
    assert "remove index/" not in r.stderr and "packs/" in r.stderr, r.stderr
    assert "(read to write its damaged index again); nothing was deleted" in r.stderr
    assert sorted(view.keys("")) == before
    body = view.client.get_object(Bucket=bucket, Key=view.prefix + keys[0])["Body"].read()
    assert body == b"garbage"


def test_a_remote_listing_more_refs_than_dsv_reads_is_refused_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote that lists more refs than dsv reads (layout.MAX_REFS; here lowered to 2,
    with 3 on the remote) is refused with one clear error, by fetch and by gc: never read
    in part (a gc that saw some refs would delete what the others reach), and never read
    without end (a hostile endless listing held every key in memory before)."""
    import dsv as api
    from dsv.remotes import layout
    from dsv.remotes.base import RemoteRefused
    ws = _ws(tmp_path / "ws", {"a.txt": b"a" * 300}, str(tmp_path / "remote"))
    ok("tag", "raw:latest", "t1", cwd=ws)
    ok("tag", "raw:latest", "t2", cwd=ws)
    ok("push", cwd=ws)
    view = DirView(tmp_path / "remote")
    before = view.listing()
    monkeypatch.setattr(layout, "MAX_REFS", 2)
    store = api.Store.open(ws)
    try:
        for act in (lambda: store.gc_remote("origin"), lambda: store.fetch("origin")):
            with pytest.raises(RemoteRefused, match="origin lists more than 2 refs; dsv "
                                                    "reads no more than that"):
                act()
    finally:
        store.close()
    assert view.listing() == before
    assert _gc(ws)["packs_deleted"] == 0   # (in a process of its own: all 3 refs read)


def test_a_remote_with_more_version_records_than_a_fetch_holds_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every version record a fetch reads is held parsed until it is stored. A remote
    whose pack indexes give more bytes of records than a fetch holds (MAX_RECORDS_HELD,
    lowered here) is refused before any record is read, and the store is left as it was;
    at exactly the bytes of the remote's records, the fetch goes on. (Before: read
    whatever the remote listed, up to 16 MiB a record.)"""
    import dsv as api
    from dsv.objects import KIND_VERSION
    from dsv.remotes.base import RemoteRefused
    from dsv.sync import fetch as fetch_module
    ws = _ws(tmp_path / "ws", {"a.txt": b"a" * 300}, str(tmp_path / "remote"))
    ok("push", cwd=ws)
    other = tmp_path / "other"
    ok("clone", tmp_path / "remote", other, cwd=tmp_path)
    write_tree(ws, {"b.txt": b"b" * 300})
    ok("commit", "-m", "two", cwd=ws)
    ok("push", cwd=ws)

    def fetch_with(cap: int) -> None:
        monkeypatch.setattr(fetch_module, "MAX_RECORDS_HELD", cap)
        store = api.Store.open(other)
        try:
            store.fetch("origin")
        finally:
            store.close()

    refused = r"origin holds [0-9,]+ bytes of version records, more than the {} a fetch " \
              r"holds at once; nothing was fetched"
    with pytest.raises(RemoteRefused, match=refused.format(1)):
        fetch_with(1)
    ok("pull", cwd=other)   # (in a process of its own)
    assert len(query_json("log", "raw", cwd=other)) == 2
    store = api.Store.open(other)
    try:
        records = store.core.index.remote_objects_of_kind("origin", KIND_VERSION)
    finally:
        store.close()
    held = sum(length for _oid, _pack, _offset, length in records)
    assert len(records) == 2
    with pytest.raises(RemoteRefused, match=refused.format(f"{held - 1:,}")):
        fetch_with(held - 1)
    fetch_with(held)


def test_a_clone_reads_a_damaged_pack_index_from_its_pack(tmp_path: Path) -> None:
    """Every index file damaged, every pack whole: a fetch ignored each index, so every
    ref's record was "not in any pack the remote lists" and the clone had nothing (or,
    with one pack's index damaged, left out the versions it held, exit 0). An index is a
    copy of its pack's own table: the fetch reads that from the pack's end instead (two
    ranged reads), says so, and writes nothing to the remote."""
    remote = tmp_path / "remote"
    files = {"a.bin": os.urandom(3000), "big.bin": os.urandom(5 << 20)}
    ws = _ws(tmp_path / "ws", files, str(remote))
    ok("push", cwd=ws)
    victims = sorted(os.listdir(remote / "index"))
    for v in victims:
        (remote / "index" / v).chmod(0o644)
        (remote / "index" / v).write_bytes(b"garbage")
    listing = DirView(remote).listing()
    r = run_dsv("clone", remote, tmp_path / "clone", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for v in victims:
        assert f"warning: pack index {v[:12]} on origin is damaged (pack index {v[:12]} " \
               f"does not match its name); read from its pack instead" in r.stderr, r.stderr
    assert read_tree(tmp_path / "clone") == files
    assert run_dsv("verify", cwd=tmp_path / "clone").returncode == 0
    assert DirView(remote).listing() == listing


def test_a_blob_pack_replaced_by_a_link_is_named_as_damage_by_the_clone(tmp_path: Path) -> None:
    """A pack of blobs replaced by a symlink (a directory remote lists no link, so its
    objects are in no pack it lists): the clone said only `object … is not on origin`."""
    from dsv.hashing import hash_bytes
    from dsv.objects import parse_pack_index
    remote = tmp_path / "remote"
    ws = _ws(tmp_path / "ws", {"a.bin": os.urandom(3000)}, str(remote))
    ok("push", cwd=ws)
    blob = hash_bytes((ws / "a.bin").read_bytes())
    (pack,) = [p for p in os.listdir(remote / "packs")
               if blob in {e.oid for e in parse_pack_index(
                   (remote / "index" / p.removesuffix(".pack")).read_bytes(),
                   p.removesuffix(".pack"))[0]}]
    (remote / "packs" / pack).unlink()
    (remote / "packs" / pack).symlink_to("/etc/passwd")
    r = run_dsv("clone", remote, tmp_path / "clone", cwd=tmp_path)
    assert r.returncode == 1 and "bug in dsv" not in r.stderr, r.stderr
    assert f"error: object {blob[:12]} is not on origin: in no pack it lists, nor a loose " \
           f"file" in r.stderr, r.stderr
    assert "hint: a version needs it: the remote is damaged" in r.stderr, r.stderr
    assert not (tmp_path / "clone").exists()


def test_gc_keeps_live_ids_as_bytes_and_pack_tables_as_tables() -> None:
    """gc --remote of a million-file remote held 572 MB: every pack's entries as objects
    and every live id as hex text. Its set of live ids keeps 32 bytes an id and answers
    for hex ids exactly as a set of them would (text that is no id is never in it); each
    pack's entries come from its table when asked for, the same entries every time."""
    from dsv.objects import PackEntry, PackInfo, PackTables, _ENTRY
    from dsv.sync.gc import _Ids

    ids = _Ids()
    a, b = "ab" * 32, "0f" * 32
    ids.add(a)
    ids.update([b, a, "not an id", "AB" * 32])
    assert len(ids) == 2 and a in ids and b in ids
    for other in ("cd" * 32, "AB" * 32, a[:-1], a + "0", "zz" * 32, 5, None):
        assert other not in ids
    rows = [(bytes.fromhex(a), 8, 10, 1), (bytes.fromhex(b), 18, 4, 2)]
    entries = PackTables()
    entries.tables["p1"] = PackInfo("p1", 100, b"".join(_ENTRY.pack(*r) for r in rows))
    assert list(entries) == ["p1"] and len(entries) == 1
    assert entries["p1"] == [PackEntry(a, 8, 10, 1), PackEntry(b, 18, 4, 2)] == \
        dict(entries.items())["p1"]
