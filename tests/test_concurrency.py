"""Several dsv processes on one store at once (SPEC §4): no lost update, no corrupted
index, a clear error for whoever loses a race or cannot get the store lock in time, and
readers (`status`, `log`) that never wait for a writer.

Every process here is a real `python -m dsv` subprocess; the store lock is also taken
from the test itself (`fcntl.flock` on `.dsv/lock`) and from a separate process that
holds it through the Python API.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import read_tree, run_dsv, write_tree
from storecheck import b3, inspect_store

MiB = 1 << 20


# ---- helpers ---------------------------------------------------------------------------

def ok(*args, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = run_dsv(*args, cwd=cwd, env=env)
    assert r.returncode == 0, f"dsv {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}{r.stderr}"
    return r


def start(*args, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsv", *map(os.fspath, args)], cwd=cwd,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def error_line(stderr: str) -> str:
    """The one `error:` line of a failed command (a lock-wait notice may come before it)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def verify_ok(ws: Path) -> None:
    r = run_dsv("verify", "--json", cwd=ws)
    assert r.returncode == 0, f"dsv verify failed:\n{r.stdout}{r.stderr}"
    assert json.loads(r.stdout)["problems"] == []


def log(ws: Path, dataset: str) -> list[dict]:
    return json.loads(ok("log", dataset, "--json", cwd=ws).stdout)


def small_files(seed: int, n: int, prefix: str = "") -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"{prefix}d{i % 8}/f{i:04d}.dat": rng.randbytes(rng.randint(64, 4000))
            for i in range(n)}


def hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {p: b3(c) for p, c in files.items()}


def assert_linear(entries: list[dict]) -> list[dict]:
    """The versions form one chain (no two share a parent: nobody's update was lost)."""
    by_parent: dict[str, list[str]] = {}
    roots = []
    for v in entries:
        if v["parents"]:
            by_parent.setdefault(v["parents"][0], []).append(v["id"])
        else:
            roots.append(v["id"])
    assert len(roots) == 1, f"several root versions: {roots}"
    forks = {p: c for p, c in by_parent.items() if len(c) > 1}
    assert not forks, f"history forked (an update was lost): {forks}"
    chain = [roots[0]]
    while chain[-1] in by_parent:
        chain.append(by_parent[chain[-1]][0])
    assert len(chain) == len(entries), f"versions off the chain: {chain} vs {entries}"
    ids = {v["id"]: v for v in entries}
    return [ids[c] for c in chain]


def check_index(ws: Path) -> None:
    conn = sqlite3.connect(str(ws / ".dsv" / "index.db"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@contextmanager
def hold_lock(ws: Path, label: str) -> Iterator[None]:
    """Hold the store lock from the test, recorded in the lock file like dsv records it."""
    fd = os.open(ws / ".dsv" / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({label})\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


_HOLDER = """
import sys, dsv
store = dsv.open(sys.argv[1])
with store.locked(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""


def start_holder(ws: Path, what: str) -> subprocess.Popen:
    """Another process holding the store lock through dsv's own Python API until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ws), what], cwd=ws,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def lock_file_says(ws: Path, text: str, timeout: float = 30) -> None:
    """Wait (without touching the lock) until the lock file names its holder as `text`."""
    deadline = time.monotonic() + timeout
    while text not in (ws / ".dsv" / "lock").read_text():
        assert time.monotonic() < deadline, f"nobody took the lock as {text!r}"
        time.sleep(0.01)


def new_store(ws: Path, *datasets: str) -> None:
    ws.mkdir(parents=True)
    ok("init", "--bare", cwd=ws)
    for name in datasets:
        ok("datasets", "create", name, "--path", name, cwd=ws)


# ---- committing at the same time ----------------------------------------------------

def test_commits_to_three_datasets_at_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    names = ("a", "b", "c")
    new_store(ws, *names)
    expected: dict[str, dict[str, dict[str, str]]] = {n: {} for n in names}
    current = {n: {} for n in names}
    for rnd in range(3):
        for k, name in enumerate(names):
            files = small_files(100 * rnd + k, 250 if rnd == 0 else 20, prefix=f"r{rnd}/")
            write_tree(ws / name, files)
            current[name] = {**current[name], **files}
            expected[name][f"{name}-{rnd}"] = hashes(current[name])
        procs = [start("commit", "-d", n, "-m", f"{n}-{rnd}", cwd=ws) for n in names]
        procs.append(start("status", "--json", cwd=ws))
        results = finish(procs)
        for (code, out, err), name in zip(results, (*names, "status")):
            assert code == 0, f"{name} round {rnd}: exit {code}: {err}"
        committed = {n: r[1].strip().split(":")[1] for n, r in zip(names, results)}
        for name, vid in committed.items():
            assert [v["id"] for v in log(ws, name)].count(vid) == 1

    verify_ok(ws)
    check_index(ws)
    state = inspect_store(ws)
    for name in names:
        chain = assert_linear(log(ws, name))
        assert [v["message"] for v in chain] == [f"{name}-{r}" for r in range(3)]
        for v in chain:
            assert state.content(v["id"]) == expected[name][v["message"]]
        assert state.datasets[name]["latest"] == chain[-1]["id"]


def test_versions_from_paths_into_one_dataset_at_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    new_store(ws, "ds")
    sources = {}
    for k in range(5):
        sources[f"m{k}"] = small_files(k, 150)
        write_tree(tmp_path / f"src{k}", sources[f"m{k}"])
    procs = [start("versions", "create", "ds", "--source-path", tmp_path / f"src{k}",
                   "-m", f"m{k}", "--json", cwd=ws) for k in range(5)]
    results = finish(procs)
    made = {}
    for k, (code, out, err) in enumerate(results):
        assert code == 0, f"process {k}: exit {code}: {err}"
        made[json.loads(out)["id"]] = f"m{k}"

    entries = log(ws, "ds")
    assert sorted(v["id"] for v in entries) == sorted(made), "a committed version is missing"
    chain = assert_linear(entries)
    verify_ok(ws)
    check_index(ws)
    state = inspect_store(ws)
    assert state.datasets["ds"]["latest"] == chain[-1]["id"]
    for vid, msg in made.items():
        assert state.content(vid) == hashes(sources[msg])
    ok("checkout", f"ds:{chain[0]['id']}", "--to", tmp_path / "out", cwd=ws)
    assert read_tree(tmp_path / "out") == sources[made[chain[0]["id"]]]


def test_two_commits_of_one_working_directory_at_once(tmp_path: Path) -> None:
    """Same dataset, same files: one commit wins, the other is told there is nothing left."""
    ws = tmp_path / "data"
    write_tree(ws, small_files(1, 300))
    ok("init", cwd=ws)
    results = finish([start("commit", "-m", "x", cwd=ws), start("commit", "-m", "y", cwd=ws)])
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    winner = next(r for r in results if r[0] == 0)
    loser = next(r for r in results if r[0] == 1)
    assert error_line(loser[2]).startswith("error: nothing to commit: data matches"), loser[2]
    entries = log(ws, "data")
    assert [f"data:{v['id']}" for v in entries] == [winner[1].strip()]
    verify_ok(ws)
    check_index(ws)


def test_many_commits_of_one_dataset_at_once_form_one_history(tmp_path: Path) -> None:
    """Five `dsv commit --allow-empty` of one dataset at once: all five land, in one chain."""
    ws = tmp_path / "data"
    files = small_files(2, 200)
    write_tree(ws, files)
    ok("init", cwd=ws)
    first = ok("commit", "-m", "base", cwd=ws).stdout.strip()
    results = finish([start("commit", "--allow-empty", "-m", f"c{k}", cwd=ws) for k in range(5)])
    refs = []
    for k, (code, out, err) in enumerate(results):
        assert code == 0, f"commit c{k}: {err}"
        refs.append(out.strip())
    entries = log(ws, "data")
    logged = [f"data:{v['id']}" for v in entries]
    for ref in [first, *refs]:
        assert logged.count(ref) == 1, f"{ref} (exit 0) is not in the log exactly once"
    chain = assert_linear(entries)
    assert chain[0]["message"] == "base" and len(chain) == 6
    state = inspect_store(ws)
    assert state.datasets["data"]["latest"] == chain[-1]["id"] == state.datasets["data"]["head"]
    for v in chain:
        assert state.content(v["id"]) == hashes(files)
    verify_ok(ws)
    check_index(ws)


def test_puts_into_one_draft_racing_its_commit_lose_nothing(tmp_path: Path) -> None:
    """Four `files put` into one draft while a fifth process commits it: every put that
    reported success is in the committed version, every other put was told why."""
    ws = tmp_path / "ws"
    new_store(ws, "ds")
    draft = json.loads(ok("versions", "create", "ds", "-m", "draft", "--json", cwd=ws).stdout)["id"]
    puts = {}
    for k in range(4):
        files = small_files(50 + k, 80)
        write_tree(tmp_path / f"src{k}", files)
        puts[k] = {f"p{k}/{p}": c for p, c in files.items()}
    procs = [start("files", "put", f"ds:{draft}", tmp_path / f"src{k}", "--target-path", f"p{k}",
                   cwd=ws) for k in range(2)]
    procs.append(start("versions", "commit", f"ds:{draft}", cwd=ws))
    procs += [start("files", "put", f"ds:{draft}", tmp_path / f"src{k}", "--target-path", f"p{k}",
                    cwd=ws) for k in range(2, 4)]
    results = finish(procs)
    commit = results.pop(2)
    assert commit[0] == 0, commit
    expected = {}
    for k, (code, _out, err) in enumerate(results):
        if code == 0:
            expected.update(puts[k])
        else:
            assert code == 1, err
            line = error_line(err)
            assert line.startswith(f"error: version {draft} ") and "committed" in line, err
    verify_ok(ws)
    state = inspect_store(ws)
    assert state.versions[draft]["state"] == "committed"
    assert state.content(draft) == hashes(expected), "a put that succeeded is not in the version"
    assert [v["id"] for v in log(ws, "ds")] == [draft]


def test_racing_tags_and_dataset_names_have_one_winner(tmp_path: Path) -> None:
    ws = tmp_path / "data"
    write_tree(ws, {"a.txt": "1"})
    ok("init", cwd=ws)
    v1 = ok("commit", "-m", "one", cwd=ws).stdout.strip()
    (ws / "a.txt").write_text("2")
    v2 = ok("commit", "-m", "two", cwd=ws).stdout.strip()
    results = finish([start("tag", v1, "release", cwd=ws), start("tag", v2, "release", cwd=ws),
                      start("datasets", "create", "other", "--path", "o1", cwd=ws),
                      start("datasets", "create", "other", "--path", "o2", cwd=ws)])
    tags, names = results[:2], results[2:]
    assert sorted(r[0] for r in tags) == [0, 1], tags
    loser = next(r for r in tags if r[0] == 1)
    assert error_line(loser[2]).startswith("error: tag 'release' already points at"), loser[2]
    winner_ref = (v1, v2)[[r[0] for r in tags].index(0)]
    tag_rows = json.loads(ok("tags", "--json", cwd=ws).stdout)
    assert [(t["tag"], t["version"]) for t in tag_rows] == [("release", winner_ref.split(":")[1])]
    assert sorted(r[0] for r in names) == [0, 1], names
    assert error_line(next(r for r in names if r[0] == 1)[2]).startswith(
        "error: a dataset named 'other' already exists")
    listed = json.loads(ok("datasets", "list", "--json", cwd=ws).stdout)
    assert sorted(d["name"] for d in listed) == ["data", "other"]
    check_index(ws)


# ---- the store lock -------------------------------------------------------------------

def test_lock_timeout_names_the_holder(tmp_path: Path) -> None:
    ws = tmp_path / "data"
    write_tree(ws, {"a.txt": "alpha"})
    ok("init", cwd=ws)
    with hold_lock(ws, "pytest holder"):
        started = time.monotonic()
        r = run_dsv("commit", "-m", "blocked", cwd=ws, env={"DSV_LOCK_TIMEOUT": "1"})
        waited = time.monotonic() - started
    assert r.returncode == 1, r
    assert error_line(r.stderr).startswith(
        f"error: the store is locked by pid {os.getpid()} (pytest holder)"), r.stderr
    assert 1.0 <= waited < 10, waited
    assert log(ws, "data") == []

    # Held by a real dsv process this time: the message names that process.
    holder = start_holder(ws, "bulk import")
    try:
        r = run_dsv("tag", "data:latest", "x", cwd=ws, env={"DSV_LOCK_TIMEOUT": "0.5"})
        assert r.returncode == 1
        assert error_line(r.stderr).startswith(
            f"error: the store is locked by pid {holder.pid} (bulk import)"), r.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    # Free again: the same commit now goes through.
    ok("commit", "-m", "after", cwd=ws, env={"DSV_LOCK_TIMEOUT": "1"})
    assert [v["message"] for v in log(ws, "data")] == ["after"]
    verify_ok(ws)


def test_longer_timeout_waits_for_the_lock_then_succeeds(tmp_path: Path) -> None:
    ws = tmp_path / "data"
    write_tree(ws, small_files(3, 50))
    ok("init", cwd=ws)
    with hold_lock(ws, "pytest holder"):
        started = time.monotonic()
        proc = start("commit", "-m", "patient", cwd=ws, env={"DSV_LOCK_TIMEOUT": "60"})
        time.sleep(1.5)
        assert proc.poll() is None, "commit did not wait for the lock"
    out, err = proc.communicate(timeout=60)
    waited = time.monotonic() - started
    assert proc.returncode == 0, err
    assert waited >= 1.5
    assert "waiting for the store lock held by pid" in err
    assert [f"data:{v['id']}" for v in log(ws, "data")] == [out.strip()]
    verify_ok(ws)


def test_waiter_gets_the_lock_when_the_holder_is_killed(tmp_path: Path) -> None:
    ws = tmp_path / "data"
    write_tree(ws, small_files(4, 50))
    ok("init", cwd=ws)
    holder = start_holder(ws, "doomed")
    waiter = start("commit", "-m", "survivor", cwd=ws, env={"DSV_LOCK_TIMEOUT": "60"})
    time.sleep(0.8)
    assert waiter.poll() is None
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert [f"data:{v['id']}" for v in log(ws, "data")] == [out.strip()]
    verify_ok(ws)


def test_status_and_log_work_while_the_lock_is_held(tmp_path: Path) -> None:
    ws = tmp_path / "data"
    files = small_files(5, 100)
    write_tree(ws, files)
    ok("init", cwd=ws)
    vid = ok("commit", "-m", "one", cwd=ws).stdout.strip().split(":")[1]
    write_tree(ws, {"d0/new.dat": b"new", "d1/f0001.dat": b"changed"})
    (ws / "d2" / "f0002.dat").unlink()

    db = sqlite3.connect(str(ws / ".dsv" / "index.db"), isolation_level=None)
    try:
        with hold_lock(ws, "pytest holder"):
            db.execute("BEGIN IMMEDIATE")   # …and a write transaction, as a committing writer has
            started = time.monotonic()
            r = run_dsv("status", "--json", cwd=ws, env={"DSV_LOCK_TIMEOUT": "30"})
            assert r.returncode == 0, r.stderr
            assert time.monotonic() - started < 10, "status waited for the writer"
            report = json.loads(r.stdout)[0]
            assert (report["head"], report["added"], report["modified"], report["deleted"]) == \
                (vid, ["d0/new.dat"], ["d1/f0001.dat"], ["d2/f0002.dat"])
            r = run_dsv("log", "--json", cwd=ws, env={"DSV_LOCK_TIMEOUT": "30"})
            assert r.returncode == 0 and [v["id"] for v in json.loads(r.stdout)] == [vid]
            db.execute("ROLLBACK")
    finally:
        db.close()
    # status left the store as it was: nothing committed, nothing lost.
    assert [v["id"] for v in log(ws, "data")] == [vid]
    verify_ok(ws)


def test_status_works_during_a_real_commit(tmp_path: Path) -> None:
    """`dsv status` and `dsv log` answer while another dsv process is in the middle of a
    commit and holds the lock (frozen there with SIGSTOP); the commit then completes."""
    ws = tmp_path / "ws"
    new_store(ws, "big", "small")
    big = small_files(6, 600)
    big["large.bin"] = random.Random(8).randbytes(3 * MiB)
    write_tree(ws / "big", big)
    small = small_files(7, 50)
    write_tree(ws / "small", small)
    committer = start("commit", "-d", "big", "-m", "big", cwd=ws)
    try:
        lock_file_says(ws, "(commit)")
        os.kill(committer.pid, signal.SIGSTOP)
        started = time.monotonic()
        r = run_dsv("status", "--json", cwd=ws)
        logged = run_dsv("log", "big", "--json", cwd=ws)
        elapsed = time.monotonic() - started
        assert committer.poll() is None
        assert f"pid {committer.pid} (commit)" in (ws / ".dsv" / "lock").read_text()
    finally:
        os.kill(committer.pid, signal.SIGCONT)
        out, err = committer.communicate(timeout=120)
    assert r.returncode == 0, r.stderr
    assert elapsed < 20, "status or log waited for the writer"
    reports = {rep["dataset"]: rep for rep in json.loads(r.stdout)}
    assert reports["big"]["head"] is None and sorted(reports["big"]["added"]) == sorted(big)
    assert reports["small"]["head"] is None and sorted(reports["small"]["added"]) == sorted(small)
    assert logged.returncode == 0 and json.loads(logged.stdout) == [], logged
    assert committer.returncode == 0, err
    assert [f"big:{v['id']}" for v in log(ws, "big")] == [out.strip()]
    assert json.loads(ok("status", "-d", "big", "--json", cwd=ws).stdout)[0]["clean"] is True
    verify_ok(ws)
    check_index(ws)
