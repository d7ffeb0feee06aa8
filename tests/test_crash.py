"""Kill -9 at any point of commit, checkout and gc (SPEC §4).

Every case runs the real CLI as a subprocess and SIGKILLs it — at a named crash point
(`DSV_CRASH_AT`, `DSV_CRASH_AFTER`) or from a timer in the test — then demands:
`dsv verify` exits 0, no version references a missing or damaged object (checked
independently by `storecheck`), and running the same command again completes and
gives exactly the result an uninterrupted run gives.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_tree, run_dsv, run_in_process, write_tree
from dsv import chunking
from storecheck import b3, copy_workspace, dir_content, inspect_store

KILLED = -signal.SIGKILL
MiB = 1 << 20


# ---- helpers ---------------------------------------------------------------------------

def ok(*args, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = run_dsv(*args, cwd=cwd, env=env)
    assert r.returncode == 0, f"dsv {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}{r.stderr}"
    return r


def crash(*args, cwd: Path, at: str, after: int = 1) -> subprocess.CompletedProcess:
    """Run `dsv ARGS` with a crash point armed; it must die by SIGKILL there."""
    r = run_dsv(*args, cwd=cwd, env={"DSV_CRASH_AT": at, "DSV_CRASH_AFTER": str(after)})
    assert r.returncode == KILLED, (
        f"dsv {' '.join(map(str, args))} with DSV_CRASH_AT={at} DSV_CRASH_AFTER={after} "
        f"was not killed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def verify_ok(ws: Path) -> None:
    # `verify` and `log` are asked after every kill: run in this process (conftest
    # `run_in_process`, the CLI's own main), sparing an interpreter start each time.
    r = run_in_process("verify", "--json", cwd=ws)
    assert r.code == 0, f"dsv verify failed after the crash:\n{r.out}{r.err}"
    report = json.loads(r.out)
    assert report["ok"] is True and report["problems"] == [], report


def log(ws: Path, dataset: str | None = None) -> list[dict]:
    r = run_in_process("log", *([dataset] if dataset else []), "--json", cwd=ws)
    assert r.code == 0, f"dsv log exited {r.code}:\n{r.out}{r.err}"
    return json.loads(r.out)


def messages(entries: list[dict]) -> list[str]:
    return sorted(v["message"] for v in entries)


def make_files(seed: int, n_small: int = 300, big: tuple[int, ...] = (3 * MiB // 2, 5 * MiB // 4),
               dirs: int = 10) -> dict[str, bytes]:
    """A dataset: `big` files (stored as loose objects) at the top, `n_small` small ones
    (stored in packs) spread over `dirs` subdirectories."""
    rng = random.Random(seed)
    files = {f"big{i}.bin": rng.randbytes(size) for i, size in enumerate(big)}
    files["README.txt"] = f"dataset {seed}\n".encode()
    for i in range(n_small):
        files[f"d{i % dirs:02d}/f{i:04d}.dat"] = rng.randbytes(rng.randint(64, 3000))
    return files


def mutate(files: dict[str, bytes], seed: int) -> dict[str, bytes]:
    """A second version: 40 files rewritten, 20 deleted, 30 added, one big file replaced."""
    rng = random.Random(seed)
    out = dict(files)
    small = sorted(p for p in files if p.endswith(".dat"))
    for p in small[:40]:
        out[p] = rng.randbytes(rng.randint(64, 3000))
    for p in small[40:60]:
        del out[p]
    for i in range(30):
        out[f"new/n{i:03d}.dat"] = rng.randbytes(rng.randint(64, 3000))
    out["big1.bin"] = rng.randbytes(5 * MiB // 4)
    return out


def set_tree(root: Path, old: dict[str, bytes], new: dict[str, bytes]) -> None:
    for p in set(old) - set(new):
        (root / p).unlink()
    write_tree(root, {p: c for p, c in new.items() if old.get(p) != c})


def hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {p: b3(c) for p, c in files.items()}


def loose_on_disk(ws: Path) -> set[str]:
    loose = ws / ".dsv" / "objects" / "loose"
    return {n for sub in loose.iterdir() for n in os.listdir(sub)}


def _wait_for_lock(ws: Path, proc: subprocess.Popen) -> float:
    """Block until `proc` holds the store lock (its pid is in the lock file); returns when."""
    lock = ws / ".dsv" / "lock"
    deadline = time.monotonic() + 60
    while f"pid {proc.pid} " not in (lock.read_text() if lock.exists() else ""):
        assert proc.poll() is None, f"dsv exited {proc.returncode} before taking the lock"
        assert time.monotonic() < deadline, "dsv never took the store lock"
        time.sleep(0.002)
    return time.monotonic()


def _link_workspace(src: Path, dst: Path) -> Path:
    """A copy of workspace `src` for one timed kill: its store (.dsv) copied, its working
    files hard links to the template's. Copying the 3,000 files of `big_ws` took 1.5-2 s
    a copy here (six or more copies a test); linking them, 0.1 s. Commit only reads the
    working files, and checkout writes every file through O_EXCL under a new name (a temp
    name renamed over the old one: worktree.Materializer, fileio), never through an
    existing one, so no template inode is ever written. A dsv that did write through one
    would change the template's bytes, and `expected` (hashed from the bytes the fixture
    wrote) would fail on them."""
    shutil.copytree(src, dst, symlinks=True, copy_function=os.link,
                    ignore=lambda d, _names: [".dsv"] if Path(d) == src else [])
    shutil.copytree(src / ".dsv", dst / ".dsv", symlinks=True)
    return dst


def _kill_in_flight(args: list[str], ws: Path, delay: float, attempts: int = 6
                    ) -> tuple[subprocess.Popen, Path]:
    """Start `dsv ARGS` on a fresh copy of `ws` (`_link_workspace`); SIGKILL it `delay` s
    after it takes the store lock. If it finishes first, retry earlier. Returns the
    killed process and its copy."""
    for attempt in range(attempts):
        copy_dir = ws.parent.parent / f"{ws.parent.name}-{attempt}-{time.monotonic_ns()}"
        work = _link_workspace(ws, copy_dir / ws.name)
        proc = subprocess.Popen([sys.executable, "-m", "dsv", *map(str, args)], cwd=work,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_lock(work, proc)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == KILLED:
            return proc, work
        # It finished before the timer (the machine is faster now than when the window
        # was measured): not this case's point, so try a little earlier.
        assert proc.returncode == 0, f"dsv {args} failed on its own: {out}{err}"
        delay *= 0.5
    raise AssertionError(f"could not kill `dsv {' '.join(map(str, args))}` in flight")


def _window(args: list[str], ws: Path) -> float:
    """How long `dsv ARGS` works once it holds the store lock (before that it only starts
    Python): the timed kills land inside that window."""
    proc = subprocess.Popen([sys.executable, "-m", "dsv", *map(str, args)], cwd=ws,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    locked_at = _wait_for_lock(ws, proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return max(time.monotonic() - locked_at, 0.05)


# ---- shared starting points (built once, copied per case) ---------------------------

FILES1 = make_files(1)
FILES2 = mutate(FILES1, 2)


@pytest.fixture(scope="module")
def fresh_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace `data` holding FILES1, `dsv init` done, nothing committed."""
    ws = tmp_path_factory.mktemp("fresh") / "data"
    write_tree(ws, FILES1)
    ok("init", cwd=ws)
    return ws


@pytest.fixture(scope="module")
def two_versions_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Workspace `data`: v1 = FILES1 (tag v1), v2 = FILES2; the working dir holds FILES2."""
    ws = tmp_path_factory.mktemp("two") / "data"
    v1 = _one_tagged_then(ws, FILES1, FILES2)
    v2 = ok("commit", "-m", "two", cwd=ws).stdout.strip().split(":")[1]
    return ws, v1, v2


def _one_tagged_then(ws: Path, one: dict[str, bytes], two: dict[str, bytes]) -> str:
    """A workspace `data` at `ws` with `one` committed as its first version (tag v1), and
    `two` in place of it in the working directory; v1's id."""
    write_tree(ws, one)
    ok("init", cwd=ws)
    v1 = ok("commit", "-m", "one", cwd=ws).stdout.strip().split(":")[1]
    ok("tag", f"data:{v1}", "v1", cwd=ws)
    set_tree(ws, one, two)
    return v1


def _big_files() -> dict[str, bytes]:
    rng = random.Random(7)
    files = {f"big{i}.bin": rng.randbytes(8 * MiB) for i in range(3)}
    for i in range(3000):
        files[f"s{i % 30:02d}/f{i:05d}.dat"] = rng.randbytes(rng.randint(100, 2000))
    return files


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Workspace `big`: 3,000 small files and 3 × 8 MiB, `dsv init` done, nothing committed."""
    files = _big_files()
    ws = tmp_path_factory.mktemp("big") / "big"
    write_tree(ws, files)
    ok("init", cwd=ws)
    return ws, hashes(files)


# ---- commit ---------------------------------------------------------------------------

@pytest.mark.parametrize("point,after", [
    ("snapshot:file-hashed", 1),
    ("snapshot:file-hashed", 50),
    ("snapshot:file-hashed", 300),
    ("commit:objects-written", 1),
])
def test_first_commit_killed_then_rerun(tmp_path: Path, fresh_ws: Path, point: str,
                                        after: int) -> None:
    ws = copy_workspace(fresh_ws, tmp_path / "data")
    crash("commit", "-m", "first", cwd=ws, at=point, after=after)

    if point == "commit:objects-written":
        # Objects first: both big files are stored (loose) and the small ones sit in a
        # pack on disk before the index learns of either.
        assert len(loose_on_disk(ws)) == 2
        assert list((ws / ".dsv" / "objects" / "packs").glob("*.pack"))
    verify_ok(ws)
    state = inspect_store(ws)
    assert state.committed() == {}
    assert log(ws) == []

    out = ok("commit", "-m", "first", cwd=ws).stdout.strip()
    assert out.startswith("data:")
    vid = out.split(":", 1)[1]
    verify_ok(ws)
    entries = log(ws)
    assert [(v["id"], v["message"], v["files"]) for v in entries] == [(vid, "first", len(FILES1))]
    state = inspect_store(ws)
    assert state.content(vid) == hashes(FILES1)
    assert state.datasets["data"]["latest"] == vid == state.datasets["data"]["head"]

    ok("checkout", "data:latest", "--to", tmp_path / "out", cwd=ws)
    assert read_tree(tmp_path / "out") == FILES1
    assert read_tree(ws) == FILES1


@pytest.mark.parametrize("point,after", [
    ("snapshot:file-hashed", 50),
    ("commit:objects-written", 1),
])
def test_second_commit_killed_then_rerun(tmp_path: Path, two_versions_ws, point: str,
                                         after: int) -> None:
    """Killed while committing on top of history: the old version stays whole."""
    src, v1, v2 = two_versions_ws
    ws = copy_workspace(src, tmp_path / "data")
    files3 = mutate(FILES2, 3)
    set_tree(ws, FILES2, files3)
    crash("commit", "-m", "three", cwd=ws, at=point, after=after)

    verify_ok(ws)
    state = inspect_store(ws)
    assert set(state.committed()) == {v1, v2}
    assert state.content(v1) == hashes(FILES1)
    assert state.content(v2) == hashes(FILES2)
    assert state.datasets["data"]["latest"] == v2
    assert messages(log(ws)) == ["one", "two"]

    vid = ok("commit", "-m", "three", cwd=ws).stdout.strip().split(":", 1)[1]
    verify_ok(ws)
    entries = log(ws)
    assert messages(entries) == ["one", "three", "two"]
    assert [v["parents"] for v in entries if v["id"] == vid] == [[v2]]
    state = inspect_store(ws)
    assert state.content(vid) == hashes(files3)
    assert state.content(v1) == hashes(FILES1)
    status = json.loads(ok("status", "--json", cwd=ws).stdout)
    assert status[0]["clean"] is True and status[0]["head"] == vid
    ok("checkout", "data:v1", "--to", tmp_path / "old", cwd=ws)
    assert read_tree(tmp_path / "old") == FILES1


@pytest.mark.slow
def test_commit_killed_at_random_moments(tmp_path: Path, big_ws) -> None:
    """SIGKILL from a timer, at several moments of a real commit of a larger dataset."""
    template, expected = big_ws

    window = _window(["commit", "-m", "snapshot"], _link_workspace(template, tmp_path / "c" / "big"))
    for n, fraction in enumerate((0.1, 0.35, 0.6, 0.85)):
        _proc, ws = _kill_in_flight(["commit", "-m", "snapshot"], template, window * fraction)
        verify_ok(ws)
        state = inspect_store(ws)
        landed = state.committed()
        # A kill can only land before the index transaction (nothing committed) or after
        # it (the whole version committed): never anything in between.
        for vid in landed:
            assert state.content(vid) == expected
        assert len(landed) <= 1

        rerun = run_dsv("commit", "-m", "snapshot", cwd=ws)
        if landed:
            assert rerun.returncode == 1 and "nothing to commit" in rerun.stderr, rerun
        else:
            assert rerun.returncode == 0, f"re-run after kill at {fraction}: {rerun.stderr}"
        entries = log(ws)
        assert len(entries) == 1 and entries[0]["message"] == "snapshot", entries
        state = inspect_store(ws)
        assert state.content(entries[0]["id"]) == expected
        if n == 0:
            verify_ok(ws)
            ok("checkout", "big:latest", "--to", tmp_path / f"out{n}", cwd=ws)
            assert dir_content(tmp_path / f"out{n}") == expected


def test_killed_commit_does_not_make_an_edit_discardable(tmp_path: Path, two_versions_ws) -> None:
    """An edit whose commit was killed is still uncommitted: checkout must refuse to
    overwrite it (as it does when no commit was attempted), or `gc` loses it for good."""
    src, v1, v2 = two_versions_ws
    ws = copy_workspace(src, tmp_path / "data")
    edited = b"precious edit " + FILES2["big0.bin"][14:]
    (ws / "big0.bin").write_bytes(edited)
    crash("commit", "-m", "edit", cwd=ws, at="commit:objects-written")
    verify_ok(ws)
    assert messages(log(ws)) == ["one", "two"]

    r = run_dsv("checkout", "data:v1", cwd=ws)
    assert (ws / "big0.bin").read_bytes() == edited, \
        f"checkout (exit {r.returncode}) overwrote an uncommitted edit without --force"
    assert r.returncode == 1 and "error: checkout would discard" in r.stderr, r
    assert "big0.bin" in r.stderr

    # Re-running the commit keeps the edit for good, even across gc.
    vid = ok("commit", "-m", "edit", cwd=ws).stdout.strip().split(":", 1)[1]
    ok("gc", cwd=ws)
    ok("checkout", f"data:{vid}", "--to", tmp_path / "out", cwd=ws)
    assert (tmp_path / "out" / "big0.bin").read_bytes() == edited
    verify_ok(ws)


# ---- commit of chunked files -------------------------------------------------------------
# Files of chunking.CHUNK_THRESHOLD (4 MiB) or more are stored as content-defined chunks
# in packs, with a chunk list (docs/format.md "Chunked files"); the cases above hold only
# packed small files and loose ones. Separate workspaces: the counts asserted above stay
# what they are.

@functools.cache
def _chunked_versions() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Two versions of a dataset with chunked files. One: 40 small files (packed), a
    1.5 MiB file (loose) and two chunked ones, `model.bin` 34 MiB (its chunks fill more
    than one 32 MiB pack: a pack is sealed while the file is being stored) and
    `table.bin` 6 MiB. Two: 4 KiB inserted in the middle of `model.bin`, a new chunked
    `extra.bin` (10 MiB: more than the 8 MiB a pack writer buffers), three small files
    rewritten."""
    rng = random.Random(21)
    one = {f"d/f{i:02d}.dat": rng.randbytes(rng.randint(64, 3000)) for i in range(40)}
    one["loose.bin"] = rng.randbytes(3 * MiB // 2)
    one["model.bin"] = rng.randbytes(34 * MiB)
    one["table.bin"] = rng.randbytes(6 * MiB)
    two = dict(one)
    model = one["model.bin"]
    two["model.bin"] = model[:17 * MiB] + rng.randbytes(4096) + model[17 * MiB:]
    two["extra.bin"] = rng.randbytes(10 * MiB)
    for rel in sorted(p for p in one if p.endswith(".dat"))[:3]:
        two[rel] = rng.randbytes(rng.randint(64, 3000))
    return one, two


def _chunks(data: bytes) -> dict[str, int]:
    """The chunks (id → length) dsv's chunker cuts `data` into."""
    return {b3(bytes(c.data)): c.length for c in chunking.chunker().cut_buf(data)}


def _chunked_chunks(files: dict[str, bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for data in files.values():
        if chunking.CHUNK_THRESHOLD <= len(data):
            out.update(_chunks(data))
    return out


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


@pytest.fixture(scope="module")
def chunked_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Two workspaces `data`: "first" holds version one's files, `dsv init` done, nothing
    committed; "second" has version one committed (tag v1) and two's files in place."""
    one, two = _chunked_versions()
    first = tmp_path_factory.mktemp("chunked-first") / "data"
    write_tree(first, one)
    ok("init", cwd=first)
    second = tmp_path_factory.mktemp("chunked-second") / "data"
    v1 = _one_tagged_then(second, one, two)
    return {"first": (first, {}), "second": (second, {v1: one})}


@pytest.mark.parametrize("history", ["first", "second"])
@pytest.mark.parametrize("point", ["snapshot:file-hashed", "commit:objects-written"])
def test_commit_of_chunked_files_killed_then_rerun(tmp_path: Path, chunked_ws, history: str,
                                                   point: str) -> None:
    """Killed while chunked files are stored: after the first chunked file's chunks went
    into staged packs (`snapshot:file-hashed` of that file: the other chunked file and
    the version record not yet written), or with every pack published, the version record
    among them, before the index transaction (`commit:objects-written`). The store
    verifies, no version references a missing object, the re-run commits, and a
    checkout gives back every byte."""
    src, before = chunked_ws[history]
    one, two = _chunked_versions()
    files = two if before else one
    ws = copy_workspace(src, tmp_path / "data")
    held = inspect_store(ws).indexed
    chunks = _chunked_chunks(files)
    new_chunks = {oid: n for oid, n in chunks.items() if oid not in held}
    assert sum(new_chunks.values()) >= 5 * MiB     # (the kill has chunks to cut short)
    # The commit records small files first, then chunked ones, then loose ones (every
    # file is hashed again here: the copy has new inodes).
    small = sum(1 for data in files.values() if len(data) < 1 * MiB)
    crash("commit", "-m", "killed", cwd=ws, at=point,
          after=small + 1 if point == "snapshot:file-hashed" else 1)

    # Where the kill landed, seen before anything cleans up after it.
    state = inspect_store(ws)
    assert new_chunks.keys().isdisjoint(state.indexed)
    if point == "snapshot:file-hashed":
        # The first chunked file's chunks are in staged packs (the 34 MiB `model.bin`'s
        # fill a sealed pack and part of the next; the 10 MiB `extra.bin`'s more than a
        # pack writer's buffer): nothing of them is in `objects/`.
        assert _tree_bytes(ws / ".dsv" / "tmp") >= 4 * MiB
        assert state.pack_files == state.indexed_packs
    else:
        # Every pack is published, chunks and version record included; the index knows
        # none of them.
        unknown = state.pack_files - state.indexed_packs
        assert sum((ws / ".dsv" / "objects" / "packs" / f"{p}.pack").stat().st_size
                   for p in unknown) >= sum(new_chunks.values())

    verify_ok(ws)
    state = inspect_store(ws)       # every version whole, every object it names present
    assert set(state.committed()) == set(before)
    for vid, content in before.items():
        assert state.content(vid) == hashes(content)
    assert messages(log(ws)) == (["one"] if before else [])

    vid = ok("commit", "-m", "again", cwd=ws).stdout.strip().split(":", 1)[1]
    # The staged packs of the killed commit went with its staging directory (the re-run,
    # first to take the lock, cleared it).
    assert _tree_bytes(ws / ".dsv" / "tmp") == 0
    verify_ok(ws)
    state = inspect_store(ws)
    assert state.content(vid) == hashes(files)
    assert set(chunks) <= state.indexed                          # stored in chunks ...
    assert b3(files["model.bin"]) not in state.loose | state.indexed   # ... never whole
    assert b3(files["loose.bin"]) in state.loose
    assert messages(log(ws)) == sorted(["again", *(["one"] if before else [])])

    # gc takes what the killed commit left (published packs nothing names).
    r = run_in_process("gc", cwd=ws)
    assert r.code == 0, r.err
    state = inspect_store(ws)
    assert state.pack_files == state.indexed_packs
    assert state.indexed | state.loose == state.reachable
    verify_ok(ws)

    r = run_in_process("checkout", "data:latest", "--to", tmp_path / "out", cwd=ws)
    assert r.code == 0, r.err
    assert read_tree(tmp_path / "out") == files
    assert dir_content(tmp_path / "out") == hashes(files)
    if before:
        r = run_in_process("checkout", "data:v1", "--to", tmp_path / "old", cwd=ws)
        assert r.code == 0, r.err
        assert read_tree(tmp_path / "old") == one


# ---- checkout ---------------------------------------------------------------------------

@pytest.mark.parametrize("point,after", [
    ("checkout:journal-written", 1),
    ("checkout:file-written", 1),
    ("checkout:file-written", 30),
    ("checkout:file-written", 60),   # 60 of 61 files placed (the last one written by another thread)
])
def test_checkout_in_workdir_killed_then_rerun(tmp_path: Path, two_versions_ws, point: str,
                                               after: int) -> None:
    src, v1, v2 = two_versions_ws
    ws = copy_workspace(src, tmp_path / "data")
    crash("checkout", "data:v1", cwd=ws, at=point, after=after)

    verify_ok(ws)
    state = inspect_store(ws)
    assert state.content(v1) == hashes(FILES1)
    assert state.content(v2) == hashes(FILES2)
    assert messages(log(ws)) == ["one", "two"]
    # The status of a half-done checkout must still work.
    assert run_dsv("status", "--json", cwd=ws).returncode == 0

    # Same command again, no --force: it resumes the interrupted checkout.
    ok("checkout", "data:v1", cwd=ws)
    assert read_tree(ws) == FILES1
    verify_ok(ws)
    status = json.loads(ok("status", "--json", cwd=ws).stdout)
    assert status[0]["clean"] is True and status[0]["head"] == v1, status
    assert messages(log(ws)) == ["one", "two"]
    # And back to v2 works as on any clean working directory.
    ok("checkout", "data:latest", cwd=ws)
    assert read_tree(ws) == FILES2


@pytest.mark.parametrize("point,after", [
    ("checkout:journal-written", 1),
    ("checkout:file-written", 1),
    ("checkout:file-written", 50),
    ("checkout:file-written", 300),
])
def test_checkout_to_dir_killed_then_rerun(tmp_path: Path, two_versions_ws, point: str,
                                           after: int) -> None:
    src, v1, v2 = two_versions_ws
    ws = copy_workspace(src, tmp_path / "data")
    out = tmp_path / "out"
    crash("checkout", "data:v1", "--to", out, cwd=ws, at=point, after=after)
    if point == "checkout:file-written":
        assert len(read_tree(out)) >= after

    verify_ok(ws)
    state = inspect_store(ws)
    assert state.content(v1) == hashes(FILES1)
    assert state.content(v2) == hashes(FILES2)

    ok("checkout", "data:v1", "--to", out, cwd=ws)
    assert read_tree(out) == FILES1
    verify_ok(ws)
    # The dataset's own working directory was never touched.
    assert read_tree(ws) == FILES2
    status = json.loads(ok("status", "--json", cwd=ws).stdout)
    assert status[0]["clean"] is True and status[0]["head"] == v2


def test_fresh_checkout_killed_mid_write_replaces_only_what_it_cut_short(
        tmp_path: Path, two_versions_ws) -> None:
    """A checkout into an empty directory writes small files under their own names: a
    kill leaves the ones in flight holding the first bytes of their content. The rerun
    replaces those without --force, but refuses to discard a file that holds anything
    else (someone's edit since), exactly as after any checkout."""
    src, v1, _v2 = two_versions_ws
    ws = copy_workspace(src, tmp_path / "data")
    out = tmp_path / "out"
    crash("checkout", "data:v1", "--to", out, cwd=ws, at="checkout:file-written", after=30)
    placed = sorted(p for p in read_tree(out) if p.endswith(".dat"))
    assert len(placed) >= 20
    half, empty, edited = placed[:3]
    (out / half).write_bytes(FILES1[half][:len(FILES1[half]) // 2])   # cut short
    (out / empty).write_bytes(b"")                                     # made, nothing written
    (out / edited).write_bytes(FILES1[edited][:10] + b"an edit")        # not a prefix

    r = run_dsv("checkout", "data:v1", "--to", out, cwd=ws)
    assert r.returncode == 1 and "would discard 1 uncommitted change" in r.stderr, r
    assert edited in r.stderr and half not in r.stderr and empty not in r.stderr, r.stderr
    assert (out / edited).read_bytes() == FILES1[edited][:10] + b"an edit"

    (out / edited).write_bytes(FILES1[edited][:1])                     # now a prefix too
    ok("checkout", "data:v1", "--to", out, cwd=ws)
    assert read_tree(out) == FILES1
    verify_ok(ws)


@pytest.mark.slow
def test_checkout_killed_at_random_moments(tmp_path: Path, big_ws) -> None:
    """SIGKILL from a timer while a checkout writes 3,000 small and 3 big files, into an
    empty directory and over the dataset's own working directory."""
    src, expected = big_ws
    template = _link_workspace(src, tmp_path / "committed" / "big")
    ok("commit", "-m", "snapshot", cwd=template)
    for rel in list(expected)[::3]:           # the working directory drifts from the version
        (template / rel).unlink()
    ok("commit", "-m", "thinned", cwd=template)
    args_to = ["checkout", "big:latest~1", "--to", "../out"]
    args_wd = ["checkout", "big:latest~1"]
    window = _window(args_to, _link_workspace(template, tmp_path / "w" / "big"))
    for args, delay in ((args_to, 0.6 * window), (args_wd, 0.25 * window)):
        _proc, ws = _kill_in_flight(args, template, delay)
        verify_ok(ws)
        state = inspect_store(ws)
        assert sorted(v["message"] for v in state.committed().values()) == ["snapshot", "thinned"]
        ok(*args, cwd=ws)
        target = ws.parent / "out" if "--to" in args else ws
        assert dir_content(target) == expected
        verify_ok(ws)


# ---- gc ---------------------------------------------------------------------------------

MAIN1 = make_files(11, n_small=150, big=(3 * MiB // 2, 9 * MiB // 8))
MAIN2 = mutate(MAIN1, 12)
_rng = random.Random(13)
# junk shares 30 small files and one big file with main, and has 30 + 1 of its own.
JUNK = {f"shared/{i:03d}.dat": MAIN1[p] for i, p in
        enumerate(sorted(p for p in MAIN1 if p.endswith(".dat"))[:30])}
JUNK["shared_big.bin"] = MAIN1["big0.bin"]
JUNK.update({f"own/{i:03d}.dat": _rng.randbytes(_rng.randint(64, 3000)) for i in range(30)})
JUNK["own_big.bin"] = _rng.randbytes(5 * MiB // 4)
# a draft of main gets 40 small files and one big file nothing else has.
DRAFT_EXTRA = {f"{i:03d}.dat": _rng.randbytes(_rng.randint(64, 3000)) for i in range(40)}
DRAFT_EXTRA["draft_big.bin"] = _rng.randbytes(9 * MiB // 8)
GARBAGE = ({b3(c) for p, c in JUNK.items() if p.startswith("own")}
           | {b3(c) for c in DRAFT_EXTRA.values()})


@pytest.fixture(scope="module")
def garbage_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Workspace with dataset main (v1 tagged, v2) and garbage: a deleted draft of main
    with unique files, and a deleted dataset `junk` whose pack also holds live objects."""
    base = tmp_path_factory.mktemp("gc")
    ws = base / "ws"
    ws.mkdir()
    ok("init", "--bare", cwd=ws)
    ok("datasets", "create", "main", "--path", "main", cwd=ws)
    ok("datasets", "create", "junk", "--path", "junk", cwd=ws)
    write_tree(ws / "junk", JUNK)
    write_tree(ws / "main", MAIN1)
    ok("commit", "-d", "junk", "-m", "junk", cwd=ws)      # first: it owns the shared objects
    v1 = ok("commit", "-d", "main", "-m", "one", cwd=ws).stdout.strip().split(":")[1]
    ok("tag", f"main:{v1}", "v1", cwd=ws)
    set_tree(ws / "main", MAIN1, MAIN2)
    v2 = ok("commit", "-d", "main", "-m", "two", cwd=ws).stdout.strip().split(":")[1]
    draft = json.loads(ok("versions", "create", "main", "-m", "scratch", "--json",
                          cwd=ws).stdout)["id"]
    write_tree(base / "extra", DRAFT_EXTRA)
    ok("files", "put", f"main:{draft}", base / "extra", "--target-path", "extra", cwd=ws)
    ok("versions", "delete", f"main:{draft}", cwd=ws)
    ok("datasets", "delete", "junk", "-y", cwd=ws)
    state = inspect_store(ws)
    # The garbage really is in the store before gc.
    assert GARBAGE <= state.indexed | state.loose
    assert GARBAGE.isdisjoint(state.reachable)
    return ws, v1, v2


def _check_main_versions(ws: Path, v1: str, v2: str, out: Path) -> None:
    state = inspect_store(ws)
    assert set(state.committed()) == {v1, v2}
    assert state.content(v1) == hashes(MAIN1)
    assert state.content(v2) == hashes(MAIN2)
    ok("checkout", "main:v1", "--to", out / "v1", cwd=ws)
    ok("checkout", f"main:{v2}", "--to", out / "v2", cwd=ws)
    assert read_tree(out / "v1") == MAIN1
    assert read_tree(out / "v2") == MAIN2


@pytest.mark.parametrize("point,after", [
    ("gc:repacked", 1),
    ("gc:repacked", 2),
    ("gc:index-updated", 1),
    ("gc:index-updated", 2),
])
def test_gc_killed_then_rerun(tmp_path: Path, garbage_ws, point: str, after: int) -> None:
    src, v1, v2 = garbage_ws
    ws = copy_workspace(src, tmp_path / "ws")
    crash("gc", cwd=ws, at=point, after=after)

    verify_ok(ws)
    _check_main_versions(ws, v1, v2, tmp_path / "after-crash")

    report = json.loads(ok("gc", "--json", cwd=ws).stdout)
    assert report["removed_objects"] > 0 or report["removed_packs"] > 0, report
    verify_ok(ws)
    state = inspect_store(ws)
    # Everything that is left is needed, everything needed is left, no stray packs.
    held = state.indexed | state.loose
    assert held == state.reachable, (sorted(held - state.reachable)[:5],
                                     sorted(state.reachable - held)[:5])
    assert GARBAGE.isdisjoint(held)
    assert state.pack_files == state.indexed_packs
    _check_main_versions(ws, v1, v2, tmp_path / "after-gc")
    again = json.loads(ok("gc", "--json", cwd=ws).stdout)
    assert again["removed_objects"] == 0 and again["removed_packs"] == 0, again
    # The working directory still commits against what gc left.
    (ws / "main" / "after-gc.txt").write_text("still works")
    ok("commit", "-d", "main", "-m", "three", cwd=ws)
    verify_ok(ws)


# ---- Ctrl-C ------------------------------------------------------------------------------

@pytest.mark.parametrize("command,point", [
    (["commit", "-m", "second"], "snapshot:file-hashed"),
    (["checkout", "data:first", "--force"], "checkout:file-written"),
    (["push"], "push:objects-sent"),
])
def test_ctrl_c_says_interrupted_exits_130_and_leaves_nothing_half_written(
        tmp_path: Path, command: list[str], point: str) -> None:
    ws = tmp_path / "ws"
    write_tree(ws, {f"d/f{i:03d}.txt": f"first {i}\n" for i in range(50)})
    ok("init", "--name", "data", cwd=ws)
    ok("commit", "-m", "first", cwd=ws)
    ok("tag", "data:latest", "first", cwd=ws)
    remote = tmp_path / "remote"
    ok("remote", "add", "origin", remote, cwd=ws)
    write_tree(ws, {f"d/f{i:03d}.txt": f"second {i}\n" for i in range(50)})
    if command[0] != "commit":
        ok("commit", "-m", "second", cwd=ws)
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, "DSV_PAUSE_AT": point, "DSV_PAUSE_DIR": str(pause)}
    # Ctrl-C reaches a command run in the foreground, whose SIGINT is not ignored: a suite
    # started as a background job hands its children SIGINT ignored, and a process that
    # starts so rightly keeps ignoring it.
    proc = subprocess.Popen([sys.executable, "-m", "dsv", *command], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (pause / f"{point}.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    verify_ok(ws)
    leftovers = [p for root in (ws, remote) if root.exists()
                 for p in root.rglob("*") if ".dsv-tmp-" in p.name or "tmp-" in p.name
                 and ".dsv" not in p.parts]
    assert leftovers == [], leftovers
    ok(*command, cwd=ws)                         # run again, it completes
    verify_ok(ws)
