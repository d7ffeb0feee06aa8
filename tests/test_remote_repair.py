"""`dsv verify --remote --repair` beside other clients, temp files left on directory
remotes, and S3 answers that lack what dsv reads from them.

A repair uploads packs and deletes damaged ones, so it holds the remote's maintenance
lease as `remote maintain` and `gc --remote` do. The race tests stop one of them at a
pause point (`DSV_PAUSE_AT`, dsv/faults.py), run the other, let the first go on, and check
the remote with the independent checker (tests/servers.py `check_remote`) and by a clone.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import flip_byte, read_tree, write_tree
from servers import DirView, check_remote
from test_gc_race import finish, ok, paused, spawn, wait_for
from test_sync_faults import setup_ok

from dsv.remotes.layout import MAINTAIN_LOCK

# Two versions, each pushed on its own: two blob packs. One byte flipped in each, and a
# repair writes the objects of both into one new pack (a new pack id).
ONE = {"a.txt": b"alpha " * 40, "b.txt": b"bravo " * 40, "c.txt": b"charlie " * 40}
SMALL = {**ONE, "d.txt": b"delta " * 40, "e.txt": b"echo " * 40}


def _damaged_remote(tmp_path: Path) -> tuple[Path, Path, Path, list[Path]]:
    """A store `src` that pushed ONE, then SMALL, to a directory remote, a clone `other`
    of it (a second client), and the remote's two blob packs, each with one byte of a
    file flipped. Returns (src, other, remote, damaged packs)."""
    src, remote, other = tmp_path / "src", tmp_path / "remote", tmp_path / "other"
    src.mkdir()
    write_tree(src, ONE)
    setup_ok("init", "--name", "data", cwd=src)
    setup_ok("commit", "-m", "one", cwd=src)
    setup_ok("remote", "add", "origin", remote, cwd=src)
    ok("push", cwd=src)
    write_tree(src, SMALL)
    setup_ok("commit", "-m", "two", cwd=src)
    ok("push", cwd=src)
    ok("clone", remote, other, cwd=tmp_path)
    damaged = []
    for blob in (SMALL["a.txt"], SMALL["d.txt"]):
        pack = next(p for p in (remote / "packs").iterdir() if blob in p.read_bytes())
        flip_byte(pack, pack.read_bytes().index(blob) + 5)
        damaged.append(pack)
    assert damaged[0] != damaged[1]
    return src, other, remote, damaged


def _remote_is_whole(src: Path, remote: Path, tmp_path: Path) -> None:
    """The independent checker, dsv's own data check, and a clone byte for byte."""
    check_remote(DirView(remote))
    r = ok("verify", "--remote", "origin", "--read-data", "--json", cwd=src)
    assert json.loads(r.stdout)["ok"], r.stdout
    clone = tmp_path / "check"
    ok("clone", remote, clone, cwd=tmp_path)
    assert read_tree(clone) == SMALL


def test_gc_while_a_repair_is_between_its_pack_and_its_index(tmp_path: Path) -> None:
    """A gc that ran while a repair had uploaded its new pack but not yet the pack's index
    deleted that pack as a leftover, and the repair then deleted the damaged pack: the two
    good files in it were gone. The repair holds the maintenance lease: the gc refuses."""
    src, other, remote, damaged = _damaged_remote(tmp_path)
    packs = {p.name for p in (remote / "packs").iterdir()}
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "repair:pack-uploaded"
    repair = spawn("verify", "--remote", "origin", "--read-data", "--repair", "--json",
                   cwd=src, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", repair)
    new_packs = {p.name for p in (remote / "packs").iterdir()} - packs
    assert len(new_packs) == 1, new_packs   # the repair's pack, not yet indexed
    gc = spawn("gc", "--remote", "origin", cwd=other)
    gc_out, gc_err = gc.communicate(timeout=120)
    (pause / f"{point}.go").touch()
    report = json.loads(finish(repair))
    assert report["ok"], report
    assert not any(p.exists() for p in damaged)
    _remote_is_whole(src, remote, tmp_path)
    assert gc.returncode == 1, gc_out + gc_err
    assert "error: another client is maintaining origin" in gc_err, gc_err
    assert "nothing was deleted" in gc_err and "Traceback" not in gc_err, gc_err


def test_repair_refuses_while_a_gc_holds_the_lease(tmp_path: Path) -> None:
    """A repair that starts while a gc runs changes nothing and says why (exit 1); run
    again after the gc, it repairs."""
    src, other, remote, damaged = _damaged_remote(tmp_path)
    before = {p: p.read_bytes() for p in remote.rglob("*") if p.is_file()
              and p.name != MAINTAIN_LOCK}
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "gc:planned"
    gc = spawn("gc", "--remote", "origin", cwd=other, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", gc)
    r = spawn("verify", "--remote", "origin", "--read-data", "--repair", cwd=src)
    out, err = r.communicate(timeout=120)
    assert r.returncode == 1, out + err
    assert "error: another client is maintaining origin" in err, err
    assert "nothing was repaired" in err and "Traceback" not in err, err
    after = {p: p.read_bytes() for p in remote.rglob("*") if p.is_file()
             and p.name != MAINTAIN_LOCK}
    assert after == before
    (pause / f"{point}.go").touch()
    finish(gc)
    r2 = ok("verify", "--remote", "origin", "--read-data", "--repair", "--json", cwd=src)
    assert json.loads(r2.stdout)["ok"]
    assert not any(p.exists() for p in damaged)
    _remote_is_whole(src, remote, tmp_path)


def test_verify_without_repair_takes_no_lease(tmp_path: Path) -> None:
    """A check alone writes nothing, so it runs beside a gc, and warns that one is
    running (what a gc or a repack changes meanwhile can look like damage)."""
    src, other, _remote, _damaged = _damaged_remote(tmp_path)
    pause = tmp_path / "pause"
    pause.mkdir()
    point = "gc:planned"
    gc = spawn("gc", "--remote", "origin", cwd=other, env=paused(point, pause))
    wait_for(pause / f"{point}.reached", gc)
    r = spawn("verify", "--remote", "origin", "--read-data", cwd=src)
    out, err = r.communicate(timeout=120)
    (pause / f"{point}.go").touch()
    finish(gc)
    assert r.returncode == 1, out + err   # the flipped byte
    assert "is corrupt" in out and "Traceback" not in err, out + err
    assert "warning: another client is maintaining origin" in out, out
