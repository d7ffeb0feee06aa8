"""An index another process touched: cells of another type than dsv writes (text where a
number belongs, a real where an offset belongs), and rows naming versions the index does
not hold. Every command that meets one says what is wrong and exits 1; none reaches a
"bug in dsv" (each case below did, before: a TypeError, a ValueError from a format, an
AssertionError)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import write_tree

COMMANDS = [["status"], ["log"], ["diff", "data:latest"], ["checkout", "data:t1", "--to", "OUT"],
            ["verify"], ["show", "data:latest"], ["files", "list", "data:latest"], ["gc"]]

CASES = {
    # (what is done to the index; each command that fails says one of these)
    "object length text": ("UPDATE objects SET length = 'abc'", ("'abc' bytes",)),
    "object offset real": ("UPDATE objects SET offset = 1.5", ("at offset 1.5 of pack",)),
    "version times text": ("UPDATE versions SET created = 'x', committed = 'y'",
                           ("malformed time or count in the row of version",)),
    "latest missing": ("UPDATE datasets SET head = 'nonexist00', latest = 'nonexist00'",
                       ("data:latest names version nonexist00, which is not in this store",
                        "problem: dataset data: latest nonexist00 is missing")),
    "tag names no version": ("UPDATE tags SET version = 'zzzzzzzzzz'",
                             ("data:t1 names version zzzzzzzzzz, which is not in this store",
                              "dataset data: tag t1 names version zzzzzzzzzz, which is "
                              "missing")),
}


@pytest.fixture
def store(tmp_path: Path, dsv) -> Path:
    """Dataset `data`: two versions (the second tagged t1), one file chunked."""
    ws = tmp_path / "ws"
    write_tree(ws, {f"d/f{i}.txt": f"file {i}\n" for i in range(3)})
    write_tree(ws, {"big.bin": bytes(range(256)) * 20_000})
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    write_tree(ws, {"d/f3.txt": "x\n"})
    assert dsv("commit", "-m", "two", cwd=ws).code == 0
    assert dsv("tag", "data:latest", "t1", cwd=ws).code == 0
    return ws


def _damage_then_run(store: Path, dsv, sql: str, said: tuple[str, ...],
                     commands: list[list[str]]) -> None:
    """Run `sql` on the store's index, then each of `commands`: none may be a bug in dsv,
    one at least must fail, and each that fails must say one of `said`."""
    db = sqlite3.connect(store / ".dsv" / "index.db")
    try:
        db.execute(sql)
        db.commit()
    finally:
        db.close()
    failed = 0
    for args in commands:
        args = [str(store.parent / "out") if a == "OUT" else a for a in args]
        r = dsv(*args, cwd=store)
        assert r.code in (0, 1) and "bug in dsv" not in r.err, (args, r.err)
        if r.code == 1:
            failed += 1
            assert any(s in r.err + r.out for s in said), (args, r.out, r.err)
    assert failed, "no command met the damage"


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_index_row_is_reported_never_a_bug(store: Path, dsv, case: str) -> None:
    _damage_then_run(store, dsv, *CASES[case], COMMANDS)
    assert not (store.parent / "out" / "d" / "f0.txt").exists() or case == "latest missing"


REMOTE_COMMANDS = [["push"], ["fetch"], ["pull"], ["remote", "list"],
                   ["verify", "--remote", "origin"], ["gc", "--remote", "origin", "--dry-run"]]

REMOTE_CASES = {
    "remote row": ("UPDATE remotes SET kind = 'weird', ttl = 'abc'",
                   ("the index's row for remote 'origin' is damaged (its kind, ttl)",)),
    "remote object location": ("UPDATE remote_objects SET length = 'abc', offset = 1.5",
                               ("malformed location of object",)),
    "remote object negative": ("UPDATE remote_objects SET length = -1",
                               ("malformed location of object",)),
    "remote pack size": ("UPDATE remote_packs SET size = 'x', count = 'y'",
                         ("malformed size of pack",)),
}


@pytest.mark.parametrize("case", sorted(REMOTE_CASES))
def test_a_damaged_remote_row_is_reported_never_a_bug(store: Path, dsv, case: str) -> None:
    """The same for the rows that describe a remote and what it holds: the commands that
    speak to it fail with the damage named (a KeyError, a TypeError before); `dsv index
    rebuild` then brings the store back to work with the remote."""
    assert dsv("remote", "add", "origin", store.parent / "remote", cwd=store).code == 0
    assert dsv("push", cwd=store).code == 0
    write_tree(store, {"new.txt": "new\n"})
    assert dsv("commit", "-m", "three", cwd=store).code == 0
    _damage_then_run(store, dsv, *REMOTE_CASES[case], REMOTE_COMMANDS)
    assert dsv("index", "rebuild", cwd=store).code == 0
    r = dsv("push", cwd=store)
    assert r.code == 0, r.err
