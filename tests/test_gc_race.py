"""`dsv gc` beside writers: nothing a writer has stored, or is about to record, is lost.

Writers stage new objects in their own flock'd directory and publish them under the
store lock right before the index records them (core.Core.commit_objects). These tests
stop a writer exactly between its steps (`DSV_PAUSE_AT`, see dsv/faults.py), run gc
then, let the writer go on, and check the store byte for byte. The last test runs gc in
a loop beside commits, imports and pulls for a bounded time.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from conftest import read_tree, run_dsv, run_in_process, write_tree


def spawn(*args: str | os.PathLike[str], cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dsv", *map(os.fspath, args)], cwd=cwd,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def ok(*args: str | os.PathLike[str], cwd: Path, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    r = run_dsv(*args, cwd=cwd, env=env)
    assert r.returncode == 0, f"dsv {' '.join(map(str, args))}: {r.stdout}{r.stderr}"
    return r


def paused(point: str, pause_dir: Path) -> dict[str, str]:
    return {"DSV_PAUSE_AT": point, "DSV_PAUSE_DIR": str(pause_dir)}


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the writer ended before {path.name}: {out}{err}")
        assert time.monotonic() < deadline, f"never reached {path.name}"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    return out


def verify_ok(ws: Path) -> None:
    report = json.loads(ok("verify", "--json", cwd=ws).stdout)
    assert report["ok"] and report["problems"] == [], report


def in_process(*args: str | os.PathLike[str], cwd: Path) -> str:
    """`dsv ARGS` in this process (conftest `run_in_process`), for setup and final checks
    while no other dsv runs on the store: no interpreter start each time. Its stdout."""
    r = run_in_process(*args, cwd=cwd)
    assert r.code == 0, f"dsv {' '.join(map(str, args))}: {r.out}{r.err}"
    return r.out


def checked_out(ws: Path, ref: str, out: Path) -> dict[str, bytes]:
    """Version `ref` as `dsv checkout REF --to OUT` writes it, in this process: the final
    checks check out every version a loop made, and no writer or gc runs by then."""
    in_process("checkout", ref, "--to", out, cwd=ws)
    return read_tree(out)


def gc(ws: Path) -> dict:
    return json.loads(ok("gc", "--json", cwd=ws).stdout)


@pytest.fixture
def s3(s3_endpoint: str, aws_env: None):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3) -> str:
    name = f"gc-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


SOURCE = {"a.txt": b"small one\n", "sub/b.bin": os.urandom(3 << 20),   # a loose object
          "sub/c.csv": b"1,2,3\n" * 50, "sub/d.bin": os.urandom(5 << 20)}   # chunked


def _put(s3, bucket: str, files: dict[str, bytes], prefix: str = "data/") -> None:
    for rel, body in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + rel, Body=body)


@pytest.mark.parametrize("point", ["import:objects-staged", "import:batch-recorded"])
def test_gc_while_an_import_is_between_download_and_version(
        tmp_path: Path, s3, bucket: str, s3_endpoint: str, point: str) -> None:
    """Stopped after downloading (objects staged, nothing recorded) or after recording
    the batch (objects in the index, no version yet): gc runs, removes nothing the
    import needs, and the import's version is complete."""
    ws = tmp_path / "ws"
    ws.mkdir()
    ok("init", "--bare", cwd=ws)
    _put(s3, bucket, SOURCE)
    pause = tmp_path / "pause"
    pause.mkdir()
    proc = spawn("import", f"s3://{bucket}/data/", "--name", "imp", "--endpoint-url",
                 s3_endpoint, cwd=ws, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", proc)
    report = gc(ws)
    if point == "import:batch-recorded":
        # Recorded, reachable from no version yet, and the import is still running:
        # three whole objects, and the chunked one's list and every chunk of it.
        assert report["kept_for_writers"] > len(SOURCE) + 1, report
    (pause / f"{point}.go").touch()
    finish(proc)
    verify_ok(ws)
    assert checked_out(ws, "imp:latest", tmp_path / "out") == SOURCE
    # Once no writer runs, gc keeps nothing for one, and the version stays whole.
    assert gc(ws)["kept_for_writers"] == 0
    verify_ok(ws)
    assert checked_out(ws, "imp:latest", tmp_path / "out2") == SOURCE


def test_gc_after_an_import_died_keeps_nothing_of_it(tmp_path: Path, s3, bucket: str,
                                                    s3_endpoint: str) -> None:
    """A killed import's staged objects go with the next lock holder; its recorded
    objects are garbage once no writer runs (a re-run import downloads them again)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    ok("init", "--bare", cwd=ws)
    _put(s3, bucket, SOURCE)
    r = run_dsv("import", f"s3://{bucket}/data/", "--name", "imp", "--endpoint-url",
                s3_endpoint, cwd=ws, env={"DSV_CRASH_AT": "import:objects-staged"})
    assert r.returncode == -9, r.stderr
    stages = list((ws / ".dsv" / "tmp").iterdir())
    assert stages and any(any(s.iterdir()) for s in stages)   # the dead import's files
    report = gc(ws)
    assert report["kept_for_writers"] == 0
    assert list((ws / ".dsv" / "tmp").iterdir()) == []
    ok("import", f"s3://{bucket}/data/", "--name", "imp", "--endpoint-url", s3_endpoint,
       cwd=ws)
    verify_ok(ws)
    assert checked_out(ws, "imp:latest", tmp_path / "out") == SOURCE


def _workspace(tmp_path: Path, files: dict[str, bytes]) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    ok("init", "--name", "main", cwd=ws)
    write_tree(ws, files)
    return ws


def _gc_waits_for(writer: subprocess.Popen[str], point: str, pause: Path, ws: Path) -> None:
    """With `writer` stopped between publishing and recording (holding the store lock),
    gc must wait for it: it cannot finish until the writer goes on."""
    wait_for(pause / f"{point}.reached", writer)
    collector = spawn("gc", "--json", cwd=ws, env={"DSV_LOCK_TIMEOUT": "120"})
    time.sleep(1.5)
    assert collector.poll() is None, collector.communicate()   # still waiting for the lock
    (pause / f"{point}.go").touch()
    finish(writer)
    report = json.loads(finish(collector))
    assert report["kept_for_writers"] == 0


def test_gc_waits_for_a_commit_between_publish_and_record(tmp_path: Path) -> None:
    files = {"small.txt": b"hello\n", "big.bin": os.urandom(2 << 20), "d/e.txt": b"e" * 10}
    ws = _workspace(tmp_path, files)
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "commit:objects-written"
    writer = spawn("commit", "-m", "one", cwd=ws, env=paused(point, pause))
    _gc_waits_for(writer, point, pause, ws)
    verify_ok(ws)
    assert checked_out(ws, "main:latest", tmp_path / "out") == files


def test_gc_waits_for_a_pull_between_publish_and_record(tmp_path: Path) -> None:
    files = {"small.txt": b"pulled\n", "big.bin": os.urandom(2 << 20)}
    ws = _workspace(tmp_path, files)
    ok("commit", "-m", "one", cwd=ws)
    remote = tmp_path / "remote"
    ok("remote", "add", "origin", remote, cwd=ws)
    ok("push", cwd=ws)
    clone = tmp_path / "clone"
    clone.mkdir()
    ok("init", "--bare", cwd=clone)
    ok("remote", "add", "origin", remote, cwd=clone)
    ok("fetch", cwd=clone)
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "pull:objects-written"
    writer = spawn("pull", cwd=clone, env=paused(point, pause))
    _gc_waits_for(writer, point, pause, clone)
    verify_ok(clone)
    assert checked_out(clone, "main:latest", tmp_path / "out") == files


# ---- gc in a loop beside commits, imports and pulls ------------------------------------

LOOP_SECONDS = 12


@pytest.mark.slow
def test_gc_in_a_loop_beside_commit_import_and_pull(tmp_path: Path, s3, bucket: str,
                                                    s3_endpoint: str) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    env = {"DSV_LOCK_TIMEOUT": "120"}
    # ws: dataset "work" is committed to, "imp" imported, "up" pulled from a directory
    # remote that workspace `up` pushes to.
    # (set up in this process: nothing runs beside it yet)
    ws = tmp_path / "ws"
    (ws / "work").mkdir(parents=True)
    in_process("init", "--bare", cwd=ws)
    in_process("datasets", "create", "work", "--path", "work", cwd=ws)
    up = tmp_path / "up"
    up.mkdir()
    in_process("init", "--name", "up", cwd=up)
    remote = tmp_path / "remote"
    in_process("remote", "add", "origin", remote, cwd=up)
    write_tree(up, {"seed.txt": b"0"})
    in_process("commit", "-m", "seed", cwd=up)
    in_process("push", cwd=up)
    in_process("remote", "add", "origin", remote, cwd=ws)
    in_process("pull", cwd=ws)

    expected: dict[str, dict[str, bytes]] = {}   # "dataset:version" → files
    errors: list[str] = []
    stop = time.monotonic() + LOOP_SECONDS
    lock = threading.Lock()

    def content(r: random.Random, tag: str) -> dict[str, bytes]:
        files = {f"f{i}.txt": f"{tag} {i} {r.random()}\n".encode() for i in range(r.randint(1, 6))}
        if r.random() < 0.5:
            files["big.bin"] = r.randbytes(r.choice([1 << 20, (1 << 20) + 17]))
        return files

    def run(name: str, step) -> None:
        r = random.Random(f"{seed}-{name}")
        n = 0
        try:
            while time.monotonic() < stop:
                n += 1
                step(r, n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {exc}")

    def commit(r: random.Random, n: int) -> None:
        files = content(r, f"work{n}")
        for old in (ws / "work").iterdir():
            old.unlink()
        write_tree(ws / "work", files)
        out = ok("commit", "-d", "work", "-m", f"c{n}", cwd=ws, env=env).stdout.strip()
        with lock:
            expected[out] = files

    def import_(r: random.Random, n: int) -> None:
        prefix = f"imp{n}/"
        files = content(r, f"imp{n}")
        _put(s3, bucket, files, prefix)
        out = ok("import", f"s3://{bucket}/{prefix}", "--name", "imp", "--endpoint-url",
                 s3_endpoint, "--json", cwd=ws, env=env).stdout
        v = json.loads(out)
        with lock:
            expected[f"imp:{v['id']}"] = files

    def pull(r: random.Random, n: int) -> None:
        files = content(r, f"up{n}")
        for old in up.iterdir():
            if old.name != ".dsv":
                old.unlink()
        write_tree(up, files)
        out = ok("commit", "-m", f"u{n}", cwd=up).stdout.strip()
        ok("push", cwd=up)
        ok("pull", "--no-checkout", cwd=ws, env=env)
        with lock:
            expected[out] = files

    def collect(r: random.Random, n: int) -> None:
        ok("gc", "--json", cwd=ws, env=env)
        time.sleep(r.random() * 0.2)

    threads = [threading.Thread(target=run, args=(name, step)) for name, step in
               (("commit", commit), ("import", import_), ("pull", pull), ("gc", collect))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(expected) >= 6, expected.keys()
    gc(ws)
    verify_ok(ws)
    for i, (ref, files) in enumerate(sorted(expected.items())):
        assert checked_out(ws, ref, tmp_path / f"out{i}") == files, ref
