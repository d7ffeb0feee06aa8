"""Many pushers at once (SPEC §2 item 12, §4): refs change by compare-and-swap, so of
eight clients racing to move one ref exactly one wins, the others get a clear conflict,
and no winner's version is ever lost; pushers of different datasets never disturb each
other.

The pushes are eight real processes started together; set-up and checks run the CLI
in-process (the `dsv` fixture) to keep the tests quick. Every scenario runs against a
directory remote (lock + atomic rename) and SeaweedFS (a real S3 server that stores on
disk: If-None-Match / If-Match on PutObject). moto serves only the different-datasets
scenario: it checks a write's condition and then stores the object without a lock
(moto/s3/responses.py `put_object`), so it cannot referee a race on one ref.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import write_tree
from servers import (DirView, S3View, check_remote, s3_client,  # noqa: F401 (fixture)
                     seaweedfs_endpoint)
from test_sync_faults import clean_failure, dataset_files, new_bucket, snapshot

PUSHERS = 8
REFUSED = ("rejected", "refused", "conflict", "does not descend", "differs")


@dataclass
class Remote:
    kind: str
    url: str
    extra: list[str]          # `--endpoint-url E` for S3 remotes
    view: DirView | S3View


def make_remote(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Remote:
    if kind == "dir":
        return Remote(kind, str(tmp_path / "remote"), [], DirView(tmp_path / "remote"))
    endpoint = request.getfixturevalue("s3_endpoint" if kind == "moto"
                                       else "seaweedfs_endpoint")
    bucket = new_bucket(endpoint)
    return Remote(kind, f"s3://{bucket}/shared", ["--endpoint-url", endpoint],
                  S3View(endpoint, bucket, "shared"))


@pytest.fixture(params=["dir", "seaweedfs"])
def cas_remote(request, tmp_path, aws_env) -> Remote:
    """A remote whose conditional writes are atomic."""
    return make_remote(request.param, tmp_path, request)


@pytest.fixture(params=["dir", "moto", "seaweedfs"])
def any_remote(request, tmp_path, aws_env) -> Remote:
    return make_remote(request.param, tmp_path, request)


class Cli:
    """The CLI in-process: `cli(*args, cwd=D)` must exit 0; `cli.json(...)` parses."""

    def __init__(self, dsv) -> None:
        self.dsv = dsv

    def __call__(self, *args, cwd: Path):
        r = self.dsv(*args, cwd=cwd)
        assert r.code == 0, f"dsv {' '.join(map(str, args))} exited {r.code}:\n{r.out}{r.err}"
        return r

    def json(self, *args, cwd: Path):
        return json.loads(self(*args, "--json", cwd=cwd).out)

    def workspace(self, root: Path, files: dict[str, bytes], name: str = "data") -> Path:
        root.mkdir(parents=True)
        write_tree(root, files)
        self("init", "--name", name, cwd=root)
        self("commit", "-m", "v1", cwd=root)
        return root

    def log_ids(self, ws: Path, dataset: str | None = None) -> list[str]:
        return [v["id"] for v in self.json("log", *([dataset] if dataset else []), cwd=ws)]

    def latest(self, ws: Path, dataset: str = "data") -> str:
        return self.json("show", f"{dataset}:latest", cwd=ws)["id"]

    def clone(self, remote: Remote, dest: Path) -> Path:
        self("clone", remote.url, dest, *remote.extra, cwd=dest.parent)
        report = self.json("verify", cwd=dest)
        assert report["ok"] is True and report["problems"] == [], report
        return dest

    def clients(self, remote: Remote, root: Path, n: int) -> list[Path]:
        """`n` clients: one `dsv clone`, then copies of that workspace (a copied store is
        an identical clone, and far cheaper than n more clones)."""
        dirs = [root / f"client{i}" for i in range(n)]
        self.clone(remote, dirs[0])
        for d in dirs[1:]:
            shutil.copytree(dirs[0], d, symlinks=True)
        return dirs


@pytest.fixture
def cli(dsv) -> Cli:
    return Cli(dsv)


def push_together(dirs: list[Path], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start `dsv push` in every directory at once (real processes); wait for all."""
    procs = [subprocess.Popen([sys.executable, "-m", "dsv", "push"], cwd=d,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in dirs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def describe(results: list[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"pusher {i}: exit {r.returncode}\n{r.stdout}{r.stderr}"
                     for i, r in enumerate(results))


# ---- one dataset, eight pushers ---------------------------------------------------------

def test_eight_pushers_one_dataset(cas_remote: Remote, tmp_path, cli: Cli):
    """Eight clones of v1 each commit a different child and push at the same moment:
    exactly one wins; the others exit 1 with a clear conflict about `latest`; the
    winner's version is the remote's latest and a fresh clone reproduces its bytes."""
    remote = cas_remote
    src = cli.workspace(tmp_path / "src", dataset_files(n_small=30, big=(), seed=21))
    cli("remote", "add", "origin", remote.url, *remote.extra, cwd=src)
    cli("push", cwd=src)
    clients = cli.clients(remote, tmp_path, PUSHERS)
    for i, ws in enumerate(clients):
        write_tree(ws, {f"pusher{i}.txt": f"pushed by client {i}\n",
                        "d00/s0000.bin": f"shared file as client {i} wrote it\n"})
        cli("commit", "-m", f"client {i}", cwd=ws)
    results = push_together(clients)

    winners = [i for i, r in enumerate(results) if r.returncode == 0]
    assert len(winners) == 1, describe(results)
    for i, r in enumerate(results):
        if i not in winners:
            line = clean_failure(r, *REFUSED)
            assert "latest" in line, line
    check_remote(remote.view)

    winner = clients[winners[0]]
    winner_version = cli.latest(winner)
    fresh = cli.clone(remote, tmp_path / "fresh")
    assert cli.latest(fresh) == winner_version
    assert set(cli.log_ids(winner)) <= set(cli.log_ids(fresh))
    assert snapshot(fresh) == snapshot(winner)

    # A loser pulls: it gets the winner's version and keeps its own `latest` (the two
    # diverged), saying so.
    loser = clients[(winners[0] + 1) % PUSHERS]
    mine = cli.latest(loser)
    r = cli("pull", cwd=loser)
    assert winner_version in cli.log_ids(loser), r.out + r.err
    assert cli.latest(loser) == mine
    assert "warning:" in r.err and winner_version in r.err, r.err


def test_eight_pushers_same_tag_on_different_versions(cas_remote: Remote, tmp_path,
                                                      cli: Cli):
    """Eight versions are on the remote; each of eight clones tags a different one
    `release` and pushes at once: exactly one tag lands, the other pushers exit 1 with a
    clear message about the tag, and the remote's `latest` is untouched."""
    remote = cas_remote
    src = cli.workspace(tmp_path / "src", dataset_files(n_small=10, big=(), seed=22))
    for i in range(2, PUSHERS + 1):
        write_tree(src, {f"step{i}.txt": f"step {i}\n"})
        cli("commit", "-m", f"v{i}", cwd=src)
    cli("remote", "add", "origin", remote.url, *remote.extra, cwd=src)
    cli("push", cwd=src)
    versions = cli.log_ids(src)
    assert len(versions) == PUSHERS
    latest_ref = {k: v for k, v in check_remote(remote.view).refs.items()
                  if k.endswith("/latest")}
    clients = cli.clients(remote, tmp_path, PUSHERS)
    for i, ws in enumerate(clients):
        cli("tag", f"data:{versions[i]}", "release", cwd=ws)
    results = push_together(clients)

    winners = [i for i, r in enumerate(results) if r.returncode == 0]
    assert len(winners) == 1, describe(results)
    for i, r in enumerate(results):
        if i not in winners:
            line = clean_failure(r, *REFUSED, "--force")
            assert "release" in line, line
    state = check_remote(remote.view)
    tags = [ref for key, ref in state.refs.items() if key.endswith("/tags/release")]
    assert [t["version"] for t in tags] == [versions[winners[0]]]
    assert {k: v for k, v in state.refs.items() if k.endswith("/latest")} == latest_ref

    fresh = cli.clone(remote, tmp_path / "fresh")
    release = [t for t in cli.json("tags", cwd=fresh) if t["tag"] == "release"]
    assert [t["version"] for t in release] == [versions[winners[0]]]


# ---- eight datasets, eight pushers ------------------------------------------------------

def test_eight_pushers_different_datasets(any_remote: Remote, tmp_path, cli: Cli):
    """Eight separately initialised stores, each with its own dataset, push to one
    remote at once: all succeed, and a fresh clone holds all eight with their bytes."""
    remote = any_remote
    stores = []
    for i in range(PUSHERS):
        ws = cli.workspace(tmp_path / f"store{i}",
                           dataset_files(n_small=12, big=(), seed=100 + i), name=f"ds{i}")
        cli("remote", "add", "origin", remote.url, *remote.extra, cwd=ws)
        stores.append(ws)
    results = push_together(stores)
    assert all(r.returncode == 0 for r in results), describe(results)

    state = check_remote(remote.view)
    assert len([k for k in state.refs if k.endswith("/latest")]) == PUSHERS
    fresh = cli.clone(remote, tmp_path / "fresh")
    names = sorted(d["name"] for d in cli.json("datasets", "list", cwd=fresh))
    assert names == sorted(f"ds{i}" for i in range(PUSHERS))
    for i, ws in enumerate(stores):
        out = tmp_path / f"check{i}"
        cli("checkout", f"ds{i}", "--to", out, cwd=fresh)
        assert snapshot(out) == snapshot(ws), f"ds{i}"
        assert cli.latest(fresh, f"ds{i}") == cli.latest(ws, f"ds{i}")


# ---- what the S3 servers themselves guarantee -------------------------------------------

def _race(endpoint: str, bucket: str, rounds: int, writers: int) -> list[int]:
    """Winners per round of `writers` threads doing PutObject If-None-Match:* on one
    fresh key each round."""
    clients = [s3_client(endpoint, attempts=1) for _ in range(writers)]
    for c in clients:
        c.head_bucket(Bucket=bucket)
    counts = []
    for rnd in range(rounds):
        key = f"race/{rnd}"
        wins: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(writers)

        def put(i: int) -> None:
            barrier.wait()
            try:
                clients[i].put_object(Bucket=bucket, Key=key, Body=b"%d" % i, IfNoneMatch="*")
                wins.append(i)
            except Exception as exc:  # losing the race is a 412 (or 409)
                response = getattr(exc, "response", {})
                if response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in (409, 412):
                    errors.append(exc)
        threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        counts.append(len(wins))
    return counts


def _status(call) -> int:
    try:
        call()
        return 200
    except Exception as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_seaweedfs_conditional_writes(seaweedfs_endpoint, aws_env):
    """The compare-and-swap dsv relies on: If-None-Match:* refuses an existing key,
    If-Match refuses a stale ETag and a missing key, each with 412; of eight writers
    racing to create one key exactly one wins."""
    bucket = new_bucket(seaweedfs_endpoint)
    c = s3_client(seaweedfs_endpoint, attempts=1)
    first = c.put_object(Bucket=bucket, Key="ref", Body=b"one", IfNoneMatch="*")["ETag"]
    put = lambda **kw: lambda: c.put_object(Bucket=bucket, Body=b"x", **kw)  # noqa: E731
    assert _status(put(Key="ref", IfNoneMatch="*")) == 412
    second = c.put_object(Bucket=bucket, Key="ref", Body=b"two", IfMatch=first)["ETag"]
    assert second != first
    assert _status(put(Key="ref", IfMatch=first)) == 412
    assert _status(put(Key="missing", IfMatch=first)) == 412
    assert c.get_object(Bucket=bucket, Key="ref")["Body"].read() == b"two"
    assert _race(seaweedfs_endpoint, bucket, rounds=3, writers=PUSHERS) == [1] * 3


def test_moto_honours_conditional_writes_one_at_a_time(s3_endpoint, aws_env):
    """moto answers If-None-Match:* on an existing key and a stale If-Match with 412 (the
    fault tests rely on that), though it is no referee for races (see the docstring)."""
    bucket = new_bucket(s3_endpoint)
    c = s3_client(s3_endpoint, attempts=1)
    first = c.put_object(Bucket=bucket, Key="ref", Body=b"one", IfNoneMatch="*")["ETag"]
    put = lambda **kw: lambda: c.put_object(Bucket=bucket, Key="ref", Body=b"x", **kw)  # noqa: E731
    assert _status(put(IfNoneMatch="*")) == 412
    assert _status(put(IfMatch='"0123456789abcdef0123456789abcdef"')) == 412
    assert c.put_object(Bucket=bucket, Key="ref", Body=b"two", IfMatch=first)["ETag"]


def test_seaweedfs_leaves_nothing_in_tmpdir(tmp_path: Path, monkeypatch) -> None:
    """The suite leaves nothing in $TMPDIR: SeaweedFS would write its glog files and unix
    sockets there; the harness points both into the server's own directory."""
    from servers import start_seaweed, stop_seaweed
    outer = tmp_path / "outer-tmp"
    outer.mkdir()
    monkeypatch.setenv("TMPDIR", str(outer))
    server = start_seaweed(tmp_path / "weed")
    try:
        import urllib.error
        import urllib.request
        try:
            urllib.request.urlopen(server.url + "/", timeout=5)
        except urllib.error.HTTPError:
            pass  # an anonymous request is refused: the server answered
    finally:
        seen = [p for p in server.sockets if p.is_socket()]
        stop_seaweed(server)
    assert sorted(p.name for p in outer.iterdir()) == []
    assert len(seen) >= 4 and not any(p.exists() for p in server.sockets)
    assert sorted(p.name for p in (tmp_path / "weed" / "tmp").iterdir()) == ["filer.sock",
                                                                             "s3.sock"]
    assert any(p.name.startswith("weed") for p in (tmp_path / "weed" / "logs").iterdir())
