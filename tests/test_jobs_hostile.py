"""`dsv run` against a hostile `.dsv/inputs/` and hostile mount roots (issue 8, items 5, 10).

A cached input tree is checked with what a writer cannot forge (ctime), so a byte changed
with size, mtime, inode and mode restored is never read; links planted in or over the
cache are never followed; a garbage stamp only costs a rebuild; a mount root inside a
store, or holding the workspace's store, is refused before anything is created.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import dsv as dsv_api
from conftest import read_tree, write_tree
from dsv import fileio, inputs, jobs
from dsv.errors import UnsafePath
from dsv.hashing import hash_bytes

FILES = {"big.bin": os.urandom(3 << 20),       # large: a hard link to its object
         "labels.csv": b"1,2,3\n",              # small: written from its pack
         "sub/deep.txt": b"deep\n",
         "tool.sh": b"#!/bin/sh\necho hi\n"}
COPY_INPUT = ["sh", "-c", 'cp -R "$DSV_INPUT_TRAIN/." "$DSV_OUTPUT_MODEL/"']
FLIP = """
import os, stat
path = {path!r}
before = os.lstat(path)
os.chmod(path, 0o644)
with open(path, "r+b") as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 1]))
os.chmod(path, stat.S_IMODE(before.st_mode))
os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
"""
mounts = pytest.mark.skipif(not jobs.can_mount_read_only(),
                            reason="inputs are private copies here: no cached tree is bound")


@dataclass
class Project:
    ws: Path
    version: str

    @property
    def inputs(self) -> Path:
        return self.ws / ".dsv" / "inputs"

    @property
    def tree(self) -> Path:
        return self.inputs / self.version

    @property
    def stamp(self) -> Path:
        return self.inputs / f"{self.version}.stamp"


@pytest.fixture
def project(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    with dsv_api.init(ws, bind=False) as store:
        store.create_dataset("mnist", path=ws / "data")
        store.create_dataset("model", path=ws / "models")
        write_tree(ws / "data", FILES)
        os.chmod(ws / "data" / "tool.sh", 0o755)
        v = store.commit("raw", "mnist")
    return Project(ws, v.id)


def build_tree(p: Project) -> None:
    with dsv_api.open(p.ws) as store, inputs.input_tree(store.core, store.resolve(f"mnist:{p.version}")):
        pass


def flip_byte_keeping_stat(path: Path, offset: int = 0) -> None:
    """The attack: one byte changed; size, mtime, inode and mode as they were."""
    before = os.lstat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.chmod(path, stat.S_IMODE(before.st_mode))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.lstat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino, after.st_mode) == \
        (before.st_size, before.st_mtime_ns, before.st_ino, before.st_mode)


def job_sees(p: Project, dsv, tag: str) -> dict[str, bytes]:
    """Run a job that copies its whole input into its output; what it copied."""
    done = dsv("run", "-i", "train=mnist:latest", "-o", "model=model", "--", *COPY_INPUT,
               cwd=p.ws)
    assert done.code == 0, done.err
    assert "error" not in done.err
    with dsv_api.open(p.ws) as store:
        out = store.resolve("model:latest")
        assert out.state == "committed"
        assert out.lineage["inputs"]["train"]["version"] == p.version
        store.get_files("model:latest", p.ws / f"seen-{tag}")
    return read_tree(p.ws / f"seen-{tag}")


def committed_models(p: Project) -> list[str]:
    with dsv_api.open(p.ws) as store:
        return [v.id for v in store.versions("model", "committed")]


# ---- item 10: the cached input tree ---------------------------------------------------

@mounts
@pytest.mark.parametrize("victim", ["labels.csv", "sub/deep.txt"])
def test_a_byte_changed_in_a_cached_input_with_its_stat_restored_is_never_read(
        project: Project, dsv, victim: str) -> None:
    assert job_sees(project, dsv, "first") == FILES   # the tree is made and cached
    cached = project.tree / victim
    flip_byte_keeping_stat(cached, offset=len(FILES[victim]) // 2)
    assert cached.read_bytes() != FILES[victim]
    assert job_sees(project, dsv, "second") == FILES  # the job read the true bytes
    assert cached.read_bytes() == FILES[victim]       # and the cache holds them again
    assert dsv("verify", cwd=project.ws).code == 0


@mounts
def test_a_byte_changed_in_a_large_input_is_damage_to_its_object_and_is_never_read(
        project: Project, dsv) -> None:
    # A large input is a link to the stored object itself (no copy), so a process that
    # writes into `.dsv/inputs/` from outside any job damages the object: dsv refuses to
    # use it, verify names it, and --repair brings it back.
    assert job_sees(project, dsv, "first") == FILES
    oid = hash_bytes(FILES["big.bin"])
    obj = project.ws / ".dsv" / "objects" / "loose" / oid[:2] / oid
    assert os.lstat(project.tree / "big.bin").st_ino == os.lstat(obj).st_ino
    flip_byte_keeping_stat(project.tree / "big.bin", offset=12345)
    done = dsv("run", "-i", "train=mnist:latest", "-o", "model=model", "--", *COPY_INPUT,
               cwd=project.ws)
    assert done.code == 1
    assert f"object {oid[:12]} is corrupt" in done.err and "dsv verify --repair" in done.err
    assert len(committed_models(project)) == 1  # only the first job's output
    assert oid[:12] in dsv("verify", cwd=project.ws).out
    repaired = dsv("verify", "--repair", cwd=project.ws)
    assert repaired.code == 0, repaired.out
    assert "good copy from the working directory" in repaired.out
    assert job_sees(project, dsv, "after") == FILES


def test_a_tampered_tree_is_rebuilt_before_use_and_an_intact_one_is_reused_unhashed(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with dsv_api.open(project.ws) as store:
        v = store.resolve(f"mnist:{project.version}")
        with inputs.input_tree(store.core, v) as first:
            inodes = {rel: os.lstat(first.path / rel).st_ino for rel in FILES}
        # An intact tree costs a stat per file: no hash, no rebuild.
        monkeypatch.setattr(inputs, "_hash_at", _forbidden)
        monkeypatch.setattr(inputs, "_build", _forbidden)
        with inputs.input_tree(store.core, v) as again:
            assert {rel: os.lstat(again.path / rel).st_ino for rel in FILES} == inodes
        monkeypatch.undo()
        flip_byte_keeping_stat(project.tree / "labels.csv")
        with inputs.input_tree(store.core, v) as rebuilt:
            assert read_tree(rebuilt.path) == FILES


def test_the_cached_tree_is_read_only_and_holds_exactly_the_versions_files(
        project: Project) -> None:
    build_tree(project)
    assert read_tree(project.tree) == FILES  # the stamp lives beside the tree, not in it
    assert project.stamp.is_file()
    modes = {rel: stat.S_IMODE(os.lstat(project.tree / rel).st_mode)
             for rel in (*FILES, "sub", ".")}
    assert modes == {"big.bin": 0o444, "labels.csv": 0o444, "sub/deep.txt": 0o444,
                     "tool.sh": 0o555, "sub": 0o555, ".": 0o555}
    stamp = json.loads(project.stamp.read_bytes())
    assert stamp["format"] == 1 and stamp["version"] == project.version
    assert sorted(stamp["paths"]) == sorted(FILES)
    # Per file: kind, inode, size, ctime and mode; ctime, which no user process can set.
    i = stamp["paths"].index("labels.csv")
    st = os.lstat(project.tree / "labels.csv")
    assert [stamp[c][i] for c in ("kinds", "inodes", "sizes", "ctimes_ns", "modes")] == \
        ["f", st.st_ino, st.st_size, st.st_ctime_ns, 0o444]
    assert stamp["ctimes_ns"][i] < stamp["stamped_ns"]


def test_a_shared_copy_that_only_gained_a_link_is_rehashed_not_rebuilt(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with dsv_api.open(project.ws) as store:
        v = store.resolve(f"mnist:{project.version}")
        build_tree(project)
        big_ino = os.lstat(project.tree / "big.bin").st_ino
        ctime = os.lstat(project.tree / "big.bin").st_ctime_ns
        # Another version sharing big.bin: its tree links the same verified copy, which
        # moves that inode's ctime, though nothing was written.
        (project.ws / "data" / "labels.csv").write_text("4,5,6\n")
        other = store.commit("relabelled", "mnist")
        with inputs.input_tree(store.core, other):
            pass
        assert os.lstat(project.tree / "big.bin").st_ctime_ns != ctime
        hashed: list[str] = []
        real_hash_at = inputs._hash_at
        monkeypatch.setattr(inputs, "_hash_at",
                            lambda fd, rel: hashed.append(rel) or real_hash_at(fd, rel))
        monkeypatch.setattr(inputs, "_build", _forbidden)  # no rebuild
        with inputs.input_tree(store.core, v) as again:
            assert read_tree(again.path) == FILES
        assert hashed == ["big.bin"] and os.lstat(project.tree / "big.bin").st_ino == big_ino
        hashed.clear()
        with inputs.input_tree(store.core, v):  # re-stamped: the next reuse hashes nothing
            pass
        assert hashed == []


@mounts
def test_a_job_cannot_write_into_its_input_tree_by_its_path(project: Project, dsv) -> None:
    build_tree(project)
    oid = hash_bytes(FILES["big.bin"])
    obj = project.ws / ".dsv" / "objects" / "loose" / oid[:2] / oid
    # In the job's namespace the input trees are read-only under their own paths too (a
    # large input is a link to its object, so that path leads to the object itself).
    for victim in ("labels.csv", "big.bin"):
        (project.ws / "flip.py").write_text(FLIP.format(path=str(project.tree / victim)))
        done = dsv("run", "-i", "train=mnist:latest", "-o", "model=model", "--", "sh", "-c",
                   "python3 flip.py 2>err.txt; echo $? > status.txt", cwd=project.ws)
        assert done.code == 0, done.err
        assert (project.ws / "status.txt").read_text().strip() != "0"
        assert "Read-only file system" in (project.ws / "err.txt").read_text()
    assert (project.tree / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert hash_bytes(obj.read_bytes()) == oid
    assert dsv("verify", cwd=project.ws).code == 0


def test_a_tree_rebuilt_while_a_job_holds_it_is_moved_aside_not_emptied(
        project: Project) -> None:
    with dsv_api.open(project.ws) as store:
        v = store.resolve(f"mnist:{project.version}")
        with inputs.input_tree(store.core, v) as held:
            fd = os.open(held.path, os.O_RDONLY | os.O_DIRECTORY)  # the job's view of it
            try:
                flip_byte_keeping_stat(project.tree / "labels.csv")
                with inputs.input_tree(store.core, v) as rebuilt:
                    assert read_tree(rebuilt.path) == FILES
                # The old tree is out of the way but whole, for the job that has it.
                names = sorted(os.listdir(fd))
                assert names == sorted({rel.split("/")[0] for rel in FILES})
                assert store.gc(inputs_older_than="0").removed_inputs == 1  # only the new
            finally:
                os.close(fd)
        # Once the job has ended, gc removes the tree that was moved aside.
        leftovers = [n for n in os.listdir(project.inputs) if ".building-" in n]
        assert len(leftovers) == 1
        assert store.gc().removed_inputs == 1
        assert not [n for n in os.listdir(project.inputs) if ".building-" in n]


@mounts
def test_an_input_changed_while_the_job_runs_commits_nothing(project: Project, dsv) -> None:
    build_tree(project)
    # A process outside the job (in no namespace of dsv's) writes into the cache while
    # the job runs: dsv notices afterwards, since the job may have read those bytes.
    job = ("touch started; while [ ! -e go ]; do sleep 0.05; done; "
           'cp -R "$DSV_INPUT_TRAIN/." "$DSV_OUTPUT_MODEL/"')
    proc = subprocess.Popen(["python3", "-m", "dsv", "run", "-i", "train=mnist:latest", "-o",
                             "model=model", "--", "sh", "-c", job], cwd=project.ws,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not (project.ws / "started").exists() and time.time() < deadline:
            time.sleep(0.05)
        flip_byte_keeping_stat(project.tree / "labels.csv")
    finally:
        (project.ws / "go").touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert _one_error(err).startswith(
        f"error: input train (mnist:{project.version}) was changed in .dsv/inputs/ while "
        "the command ran (labels.csv); nothing was committed; outputs kept as drafts: model:")
    assert committed_models(project) == []
    # The next run rebuilds the tree and reads the true bytes.
    assert job_sees(project, dsv, "after") == FILES


@mounts
def test_a_symlink_planted_in_the_cache_is_never_followed(project: Project, dsv,
                                                         tmp_path: Path) -> None:
    build_tree(project)
    outside = tmp_path / "outside"
    write_tree(outside, {"labels.csv": b"9,9,9\n", "deep.txt": b"evil\n"})
    before = read_tree(outside)
    for rel in ("labels.csv", "sub"):  # a file, and a whole directory, become links
        os.chmod(project.tree / Path(rel).parent, 0o755)
        target = project.tree / rel
        if target.is_dir():
            os.chmod(target, 0o755)
            for child in target.iterdir():
                child.unlink()
            target.rmdir()
            os.symlink(outside, target)
        else:
            target.unlink()
            os.symlink(outside / "labels.csv", target)
    os.symlink("/etc", project.tree / "extra")  # and an extra one
    assert job_sees(project, dsv, "links") == FILES
    assert read_tree(outside) == before and not (outside / "labels.csv").is_symlink()
    assert not any(p.is_symlink() for p in project.tree.rglob("*"))


@mounts
@pytest.mark.parametrize("what", ["tree", "inputs"])
def test_a_link_over_the_tree_or_the_inputs_directory_is_never_followed(
        project: Project, dsv, tmp_path: Path, what: str) -> None:
    build_tree(project)
    planted = tmp_path / "planted"
    victim = project.tree if what == "tree" else project.inputs
    os.chmod(victim, 0o755)
    os.rename(victim, planted)  # the real cache, moved out (stamp and all, for "inputs")
    forged = planted if what == "tree" else planted / project.version
    os.chmod(forged, 0o755)
    os.chmod(forged / "labels.csv", 0o644)
    (forged / "labels.csv").write_bytes(b"7,7,7\n")
    os.symlink(planted, victim)
    before = read_tree(planted)
    assert job_sees(project, dsv, what) == FILES
    assert not victim.is_symlink() and victim.is_dir()
    assert read_tree(planted) == before  # never written through, never removed


@pytest.mark.parametrize("garbage", ["empty", "binary", "deep", "wrong-types", "bools",
                                     "short", "twice", "negative", "other-version", "huge",
                                     "fifo", "dir", "symlink"])
def test_a_garbage_stamp_costs_a_rebuild_never_a_crash_or_a_hang(project: Project,
                                                                 garbage: str) -> None:
    build_tree(project)
    stamp = project.stamp
    good = json.loads(stamp.read_bytes())
    stamp.unlink()
    if garbage == "fifo":
        os.mkfifo(stamp)  # reading it would block forever
    elif garbage == "dir":
        stamp.mkdir()
        (stamp / "x").write_text("x")
    elif garbage == "symlink":
        os.symlink("/dev/zero", stamp)  # endless bytes if followed
    elif garbage == "huge":
        with open(stamp, "wb") as f:
            f.truncate(4 << 30)  # sparse: 4 GiB claimed
    else:
        bad = dict(good)
        if garbage == "wrong-types":
            bad["inodes"] = [str(n) for n in good["inodes"]]
            bad["kinds"] = list(good["kinds"])
        elif garbage == "bools":
            bad["modes"] = [True for _ in good["modes"]]
            bad["format"] = True
        elif garbage == "short":
            bad["ctimes_ns"] = good["ctimes_ns"][1:]
        elif garbage == "twice":
            bad["paths"] = [good["paths"][0]] * len(good["paths"])
        elif garbage == "negative":
            bad["sizes"] = [-1 for _ in good["sizes"]]
        elif garbage == "other-version":
            bad["version"] = "0000000000"
        stamp.write_bytes({"empty": b"", "binary": b"\x00\xff{garbage",
                           "deep": b"[" * 200_000 + b"]" * 200_000}.get(
                               garbage, json.dumps(bad).encode()))
    ctime = os.lstat(project.tree / "labels.csv").st_ctime_ns
    build_tree(project)
    assert read_tree(project.tree) == FILES
    assert os.lstat(project.tree / "labels.csv").st_ctime_ns != ctime  # rebuilt
    assert stat.S_ISREG(os.lstat(stamp).st_mode)
    fresh = json.loads(stamp.read_bytes())
    assert fresh["version"] == project.version and fresh["stamped_ns"] > good["stamped_ns"]


@mounts
def test_a_garbage_stamp_through_the_cli_is_one_rebuild(project: Project, dsv) -> None:
    build_tree(project)
    project.stamp.write_bytes(b"[" * 100_000)
    assert job_sees(project, dsv, "garbage") == FILES


def test_a_fifo_planted_in_the_tree_is_removed_not_opened(project: Project) -> None:
    build_tree(project)
    os.chmod(project.tree / "sub", 0o755)
    os.mkfifo(project.tree / "sub" / "pipe")
    build_tree(project)
    assert read_tree(project.tree) == FILES and not (project.tree / "sub" / "pipe").exists()


def test_trees_deeper_than_the_open_descriptor_budget_are_checked_and_removed(
        project: Project) -> None:
    deep = "/".join(["d"] * (fileio._OPEN_DIRS + 20)) + "/leaf.txt"
    data = project.ws / "deepdata"
    write_tree(data, {deep: b"leaf\n", "top.txt": b"top\n"})
    with dsv_api.open(project.ws) as store:
        v = store.create_version_from_path("model", data, "deep")
        with inputs.input_tree(store.core, v) as tree:
            leaf = tree.path / deep
        flip_byte_keeping_stat(leaf)
        with inputs.input_tree(store.core, v) as tree:
            assert read_tree(tree.path) == {deep: b"leaf\n", "top.txt": b"top\n"}
    with dsv_api.open(project.ws) as store:
        store.delete_version(f"model:{v.id}", force=True)
        store.gc()
    assert not (project.inputs / v.id).exists()
    assert not (project.inputs / f"{v.id}.stamp").exists()


def test_a_versions_own_links_are_kept_and_a_replaced_link_is_caught(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    data = project.ws / "linked"
    write_tree(data, {"a.txt": b"a\n", "b.txt": b"b\n"})
    os.symlink("a.txt", data / "current")
    with dsv_api.open(project.ws) as store:
        v = store.create_version_from_path("model", data, "with a link")
        with inputs.input_tree(store.core, v) as tree:
            link = tree.path / "current"
            assert os.readlink(link) == "a.txt"
        monkeypatch.setattr(inputs, "_build", _forbidden)
        monkeypatch.setattr(inputs, "_hash_at", _forbidden)
        with inputs.input_tree(store.core, v):  # reused as it is
            pass
        monkeypatch.undo()
        os.chmod(link.parent, 0o755)
        link.unlink()
        os.symlink("b.txt", link)  # same length, same name: a new link
        with inputs.input_tree(store.core, v):
            assert os.readlink(link) == "a.txt"


@mounts
def test_the_mount_refuses_a_source_that_is_not_the_checked_directory(tmp_path: Path) -> None:
    src, dst, other = tmp_path / "src", tmp_path / "dst", tmp_path / "other"
    for d in (src, dst, other):
        d.mkdir()
    marker = tmp_path / "ran"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           jobs._MOUNT_SCRIPT, "sh", str(src), str(dst),
                           inputs.identity(os.stat(other)), "--", "touch", str(marker)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 125 and not marker.exists()
    assert done.stderr == (f"error: {src} was replaced while it was being mounted; "
                           "the command did not run\n")


# ---- item 5: mount roots ------------------------------------------------------------

def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "bug in dsv" not in err
    return lines[0]


@pytest.mark.parametrize("given, why", [
    (".dsv/objects", "inside a store"),
    ("data/../.dsv/objects/loose", "inside a store"),
    ("via-link/run", "inside a store"),        # a symlink into .dsv, resolved
    (".", "contains this workspace's store"),  # the workspace root
    ("/", "contains this workspace's store"),
])
def test_a_mount_root_in_or_over_a_store_is_refused_before_anything_is_made(
        project: Project, dsv, given: str, why: str) -> None:
    os.symlink(project.ws / ".dsv" / "tmp", project.ws / "via-link")
    store_before = _listing(project.ws / ".dsv" / "objects") + \
        _listing(project.ws / ".dsv" / "tmp")
    ws_before = sorted(os.listdir(project.ws))
    marker = project.ws.parent / "ran"
    done = dsv("run", "--mount-root", given, "-i", "train=mnist:latest", "-o", "loose=model",
               "--", "sh", "-c", f'echo x > "$DSV_OUTPUT_LOOSE/f"; touch {marker}',
               cwd=project.ws)
    assert done.code == 1
    line = _one_error(done.err)
    assert f"--mount-root {given} " in line and why in line
    assert not marker.exists()
    assert _listing(project.ws / ".dsv" / "objects") + _listing(project.ws / ".dsv" / "tmp") \
        == store_before
    assert sorted(os.listdir(project.ws)) == ws_before  # no train/, no loose/
    assert committed_models(project) == []


def test_an_output_directory_that_is_a_link_into_the_store_is_refused(project: Project,
                                                                      dsv) -> None:
    root = project.ws / "mnt"
    root.mkdir()
    os.symlink(project.ws / ".dsv" / "tmp", root / "model")
    done = dsv("run", "--mount-root", root, "-o", "model=model", "--", "sh", "-c",
               'echo x > "$DSV_OUTPUT_MODEL/f"', cwd=project.ws)
    assert done.code == 1
    assert "is not a directory (a link or a file)" in _one_error(done.err)
    assert os.listdir(project.ws / ".dsv" / "tmp") == []
    assert committed_models(project) == []


def test_the_python_api_refuses_the_same_mount_roots(project: Project) -> None:
    with dsv_api.open(project.ws) as store:
        for root in (project.ws / ".dsv" / "objects", project.ws, project.ws / ".DSV" / "x"):
            with pytest.raises(UnsafePath):
                store.run({}, {"out": "model"}, ["true"], mount_root=root)
        assert not (project.ws / "out").exists() and not (project.ws / ".DSV").exists()
        # A subdirectory of the workspace is fine.
        result = store.run({}, {"out": "model"}, ["sh", "-c", 'echo ok > "$DSV_OUTPUT_OUT/f"'],
                           mount_root=project.ws / "mnt")
        assert result.ok and result.outputs["out"].state == "committed"


def _forbidden(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("an intact input tree must be reused without hashing or rebuilding")


def test_the_links_of_a_copied_input_are_checked_through_each_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pulled version whose two links escape only together (`d/l -> .`, then
    `s -> d/l/../..`, which climbs out through it) is refused before a job that copies
    its inputs runs, however its files fall into the chunks the copy places (one file
    each here: each chunk alone would pass)."""
    from hostile import HostileRemote
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", "vict1m", {"d/l": ("l", "."), "s": ("l", "d/l/../.."),
                                            **{f"f{i}.txt": b"x%d" % i for i in range(4)}})
    store = dsv_api.init(tmp_path / "ws", bind=False)
    store.add_remote("origin", str(remote.root))
    store.pull("origin", checkout=False)
    monkeypatch.setattr(jobs, "FRESH_CHUNK", 1)
    ran = tmp_path / "ran"
    with pytest.raises(UnsafePath, match="outside the dataset"):
        store.run({"data": "vict1m:latest"}, {}, ["touch", str(ran)], mount=False)
    assert not ran.exists()
    store.close()
