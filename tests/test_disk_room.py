"""A placement the disk cannot hold is refused before it writes: checked on small real
disks (a tmpfs of a few MiB, mounted in a private mount namespace for one script)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tree

MiB = 1 << 20


def _on_small_disk(disk: Path, mib: int, script: str, cwd: Path) -> str:
    """Run the shell `script` with a tmpfs of `mib` MiB mounted at `disk` (in a private
    mount namespace: gone with the script); `$DSV` runs dsv. Returns what it printed."""
    disk.mkdir(parents=True, exist_ok=True)
    mount = f'mount -t tmpfs -o size={mib}m tmpfs "{disk}" || exit 99\n'
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           mount + script], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DSV": f"{sys.executable} -m dsv"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_clone_that_fits_once_but_not_with_its_store_is_refused_before_writing(
        tmp_path: Path, dsv) -> None:
    """The objects land in the clone's store and the files beside it, on one disk: each
    alone fits, both do not. (Before: each was checked alone, and the clone ran out of
    space: "cannot write a file: no space left on the device".)"""
    src = tmp_path / "src"
    write_tree(src, {f"f{i}.bin": os.urandom(4 * MiB) for i in range(10)})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "forty MiB", cwd=src).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    out = _on_small_disk(tmp_path / "small", 64, f"""
$DSV clone "{tmp_path / 'remote'}" small/victim; echo "rc=$?"
ls -A small; echo "used=$(du -sb small | cut -f1)"
""", tmp_path)
    assert "rc=1" in out and f"the checkout needs {80 * MiB:,} bytes in" in out, out
    assert re.search(r"and its disk has [\d,]+ free", out), out
    assert "no space left" not in out
    used = int(out.split("used=")[1].split()[0])
    assert used < MiB, out     # (the clone took nothing away: it cleaned up)


def test_a_link_checkout_counts_the_copies_its_links_point_to(tmp_path: Path) -> None:
    """`--link hardlink` writes no file of its own, but links each large file to a
    read-only copy the store makes: those copies must fit. (Before: counted as nothing,
    and the checkout filled the disk.)"""
    out = _on_small_disk(tmp_path / "small", 100, """
set -e
mkdir small/ws && cd small/ws
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do head -c 3145728 /dev/urandom > f$i.bin; done
$DSV init --name ws > /dev/null && $DSV commit -m twelve > /dev/null
set +e
$DSV checkout ws:latest --to ../out --link hardlink; echo "hardlink rc=$?"
$DSV checkout ws:latest --to ../out2 --link copy; echo "copy rc=$?"
ls ../out ../out2 2>/dev/null | grep -c bin; echo "links=$(ls .dsv/objects/links 2>/dev/null | wc -l)"
""", tmp_path)
    assert "hardlink rc=1" in out and "copy rc=1" in out, out
    assert out.count(f"the checkout needs {36 * MiB:,} bytes in") == 2, out
    assert "\n0\n" in out and "links=0" in out, out


def test_a_room_check_that_must_look_objects_up_does_so_a_batch_at_a_time(
        tmp_path: Path, dsv, monkeypatch) -> None:
    """When a version's size does not fit, its files are walked (never held: a million
    entries were 200 MB) and, for a version only fetched, what the store lacks is looked
    up `ROOM_BATCH` files at a time, each object counted once across batches."""
    import dsv as dsv_api
    from dsv import checkout, fileio, tree
    from dsv.errors import InvalidInput

    src = tmp_path / "src"
    # three distinct blobs, each named by three files that fall in different batches
    write_tree(src, {f"d/f{i}.bin": bytes([i % 3]) * 5000 for i in range(9)})
    assert dsv("init", "--name", "data", cwd=src).code == 0
    assert dsv("commit", "-m", "nine", cwd=src).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=src).code == 0
    assert dsv("push", cwd=src).code == 0
    other = tmp_path / "other"
    other.mkdir()
    assert dsv("init", "--bare", other, cwd=tmp_path).code == 0
    assert dsv("remote", "add", "origin", tmp_path / "remote", cwd=other).code == 0
    assert dsv("fetch", cwd=other).code == 0      # trees here, no file contents
    with dsv_api.open(other) as store:
        core = store.core
        v = core.resolve("data:latest")
        looked_up: list[int] = []
        blobs = core.blobs

        def counting(entries):  # type: ignore[no-untyped-def]
            entries = list(entries)
            looked_up.append(len(entries))
            return blobs(entries)

        monkeypatch.setattr(core, "blobs", counting)
        monkeypatch.setattr(checkout, "ROOM_BATCH", 2)
        monkeypatch.setattr(fileio, "free_bytes", lambda _path: 1000)
        with pytest.raises(InvalidInput) as exc:
            checkout.check_room(core, tmp_path / "out", "auto",
                                lambda: tree.iter_files(v.tree, core.read_tree),
                                claimed=v.size, fetched=True)
    # the files (9 × 5000) and the three objects the store lacks (3 × 5000)
    assert f"the checkout needs {60_000:,} bytes in" in exc.value.message
    assert looked_up and max(looked_up) <= 2 and sum(looked_up) == 9, looked_up
