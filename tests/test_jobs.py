"""`dsv run`: read-only inputs, writable outputs, lineage, failures and interruption."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dsv
from conftest import read_tree, run_dsv, write_tree
from dsv import jobs
from dsv.errors import InvalidInput, JobFailed
from dsv.hashing import hash_bytes

TRAIN = """
import hashlib, os, pathlib, sys
src = pathlib.Path(os.environ["DSV_INPUT_TRAIN"])
out = pathlib.Path(os.environ["DSV_OUTPUT_MODEL"])
try:
    (src / "labels.csv").write_text("tampered")
    wrote = True
except OSError:
    wrote = False
digest = hashlib.sha256((src / "big.bin").read_bytes()).hexdigest()
(out / "weights.txt").write_text(digest + "\\n" + (src / "labels.csv").read_text())
(out / "cwd.txt").write_text(os.getcwd())
(out / "wrote-input.txt").write_text(str(wrote))
"""


@pytest.fixture
def project(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    store = dsv.init(ws, bind=False)
    store.create_dataset("mnist", path=ws / "data")
    store.create_dataset("model", path=ws / "models")
    big = os.urandom(3 << 20)
    write_tree(ws / "data", {"big.bin": big, "labels.csv": "1,2,3\n"})
    v = store.commit("raw", "mnist")
    (ws / "train.py").write_text(TRAIN)
    yield store, ws, v, big
    store.close()


@pytest.mark.parametrize("mount", [None, False])
def test_outputs_are_committed_with_lineage_and_inputs_stay_intact(project, mount) -> None:
    store, ws, v, big = project
    os.chdir(ws)
    result = store.run({"train": "mnist:latest"}, {"model": "model"},
                       [sys.executable, "train.py"], mount=mount)
    assert result.ok and result.mounted == (jobs.can_mount_read_only() if mount is None else False)
    out = result.outputs["model"]
    assert out.state == "committed" and out.dataset == store.dataset("model").id
    files = {r.path: r for r in store.files(f"model:{out.id}", recursive=True)}
    seen_labels = "1,2,3\n" if result.mounted else "tampered"  # its own private copy
    with store.open_file(f"model:{out.id}", "weights.txt") as f:
        assert f.read().decode() == hashlib.sha256(big).hexdigest() + "\n" + seen_labels
    with store.open_file(f"model:{out.id}", "cwd.txt") as f:
        assert f.read().decode() == str(ws)  # the job's working directory is unchanged
    with store.open_file(f"model:{out.id}", "wrote-input.txt") as f:
        # A read-only mount refuses even root; a private copy may be scribbled on.
        assert f.read().decode() == ("False" if result.mounted else "True")
    assert set(files) == {"weights.txt", "cwd.txt", "wrote-input.txt"}
    lineage = store.resolve("model:latest").lineage
    assert lineage["inputs"]["train"]["version"] == v.id
    assert lineage["inputs"]["train"]["record"] == v.record
    assert lineage["command"] == [sys.executable, "train.py"]
    assert lineage["exit_status"] == 0 and lineage["duration_s"] >= 0
    assert lineage["started"].endswith("Z")
    # The store never changed under the job.
    assert (ws / "data" / "labels.csv").read_text() == "1,2,3\n"
    assert store.verify().ok
    store.get_files("mnist:latest", ws / "copy")
    assert read_tree(ws / "copy") == {"big.bin": big, "labels.csv": b"1,2,3\n"}


LIST_INPUT = """
import os, pathlib
src = os.environ["DSV_INPUT_TRAIN"]
out = pathlib.Path(os.environ["DSV_OUTPUT_MODEL"])
seen = sorted(os.path.relpath(os.path.join(d, n), src)
              for d, dirs, names in os.walk(src) for n in names + dirs)
(out / "seen.txt").write_text("\\n".join(seen))
"""


@pytest.mark.parametrize("mount", [None, False])
def test_a_job_sees_exactly_the_files_of_its_input(project, mount) -> None:
    """Nothing of dsv's own (no stamp, no marker) shows in an input: a job that lists or
    hashes its inputs counts only the dataset's files, on a first run and on a reuse."""
    store, ws, v, _big = project
    os.chdir(ws)
    (ws / "list.py").write_text(LIST_INPUT)
    for _ in range(2):   # the second run reuses the tree the first one built
        result = store.run({"train": f"mnist:{v.id}"}, {"model": "model"},
                           [sys.executable, "list.py"], mount=mount)
        assert result.ok
        with store.open_file(f"model:{result.outputs['model'].id}", "seen.txt") as f:
            assert f.read().decode().split("\n") == ["big.bin", "labels.csv"]


def test_a_failed_command_commits_nothing_and_keeps_outputs_as_drafts(project) -> None:
    store, ws, v, _big = project
    os.chdir(ws)
    with pytest.raises(JobFailed) as info:
        store.run({"train": f"mnist:{v.id}"}, {"model": "model"},
                  ["sh", "-c", 'echo partial > "$DSV_OUTPUT_MODEL/p.txt"; exit 3'])
    assert info.value.exit_code == 3
    assert "nothing was committed" in info.value.message
    assert store.versions("model", "committed") == []
    drafts = store.versions("model", "draft")
    assert len(drafts) == 1 and drafts[0].lineage["exit_status"] == 3
    assert [r.path for r in store.files(f"model:{drafts[0].id}", recursive=True)] == ["p.txt"]


def test_cli_run_with_hosted_syntax_and_json(project) -> None:
    store, ws, v, _big = project
    done = run_dsv("run", "--dataset", f"train@mnist:{v.id}", "--dataset", "model@model",
                   "--json", "--", "sh", "-c",
                   'cp "$DSV_INPUT_TRAIN/labels.csv" "$DSV_OUTPUT_MODEL/"', cwd=ws)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["exit_status"] == 0 and report["outputs"]["model"]["state"] == "committed"
    shown = json.loads(run_dsv("show", "model:latest", "--json", cwd=ws).stdout)
    assert shown["lineage"]["inputs"]["train"]["ref"] == f"mnist:{v.id}"
    log = run_dsv("log", "model", cwd=ws).stdout
    assert f"inputs train=mnist:{v.id}" in log
    failed = run_dsv("run", "-i", "train=mnist:latest", "-o", "model=model", "--",
                     "sh", "-c", "exit 7", cwd=ws)
    assert failed.returncode == 7
    assert failed.stderr.startswith("error: the command exited with status 7")


def test_bindings_are_validated_before_anything_runs(project, tmp_path: Path) -> None:
    store, ws, _v, _big = project
    assert jobs.parse_bindings(["a=mnist:latest"], ["b=model"], ["c@mnist:v1", "d@model"]) == \
        ({"a": "mnist:latest", "c": "mnist:v1"}, {"b": "model", "d": "model"})
    for bad in (["noequals"], ["=mnist"], ["a/b=mnist"]):
        with pytest.raises(InvalidInput):
            jobs.parse_bindings(bad, [], [])
    with pytest.raises(InvalidInput):
        jobs.parse_bindings(["x=mnist"], ["x=model"], [])
    marker = tmp_path / "ran"
    with pytest.raises(Exception):
        store.run({"train": "nope:latest"}, {}, ["touch", str(marker)])
    assert not marker.exists()
    assert jobs.env_name("INPUT", "train-set.v2") == "DSV_INPUT_TRAIN_SET_V2"


def test_two_bindings_that_would_share_one_variable_are_refused(project, tmp_path: Path) -> None:
    """`train-set` and `train_set` (or `Train` and `train`) both name DSV_INPUT_TRAIN_SET:
    the job could read only one of them while the lineage names both."""
    store, ws, v, _big = project
    marker = tmp_path / "ran"
    for ins, outs in (({"train-set": "mnist:latest", "train_set": "mnist:latest"}, {}),
                      ({"Train": "mnist:latest", "train": "mnist:latest"}, {}),
                      ({}, {"m.1": "model", "m-1": "model"})):
        with pytest.raises(InvalidInput) as caught:
            store.run(ins, outs, ["touch", str(marker)])
        a, b = (*ins, *outs)
        kind = "INPUT" if ins else "OUTPUT"
        assert caught.value.message == (
            f"bindings {a} and {b} would both be ${jobs.env_name(kind, a)}; "
            "nothing was run")
    assert not marker.exists()
    done = run_dsv("run", "-i", "train-set=mnist:latest", "-i", "train_set=mnist:latest",
                   "--", "touch", str(marker), cwd=ws)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == ("error: bindings train-set and train_set would "
                                           "both be $DSV_INPUT_TRAIN_SET; nothing was run")
    assert not marker.exists()
    assert [x.id for x in store.versions("model")] == []


@pytest.mark.parametrize("bad", ["absolute-link", "name-not-utf8", "directory-gone",
                                 "directory-a-link-to-the-store"])
def test_an_output_that_cannot_be_saved_loses_nothing_and_commits_nothing(
        project, bad: str, request: pytest.FixtureRequest) -> None:
    """A job that exits 0 leaving one output dsv cannot store (a link out of it, a name
    that is not UTF-8, its directory removed): no output is committed (never some of
    them), the others are kept as drafts, and what the job wrote stays where it was."""
    store, ws, _v, _big = project
    store.create_dataset("other", path=ws / "other")
    spoil = {"absolute-link": 'ln -s /etc/passwd "$DSV_OUTPUT_BAD/p"',
             "name-not-utf8": 'printf x > "$DSV_OUTPUT_BAD/$(printf \'\\377\')"',
             "directory-gone": 'rmdir "$DSV_OUTPUT_BAD"',
             "directory-a-link-to-the-store": f'rmdir "$DSV_OUTPUT_BAD"; '
                                              f'ln -s {ws / ".dsv"} "$DSV_OUTPUT_BAD"'}[bad]
    job = f'echo good > "$DSV_OUTPUT_GOOD/ok"; echo "$DSV_MOUNT_ROOT" > root.txt; {spoil}'
    done = run_dsv("run", "-o", "good=model", "-o", "bad=other", "--", "sh", "-c", job, cwd=ws)
    assert done.returncode == 1, done.stderr
    root = Path((ws / "root.txt").read_text().strip())
    # (dsv keeps the job's temporary root for the user; the test removes it)
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    reason = {"absolute-link": "symlink 'p' points to an absolute path (/etc/passwd)",
              "name-not-utf8": "file name b'\\xff' is not valid UTF-8",
              "directory-gone": f"{root / 'bad'} is not a directory",
              "directory-a-link-to-the-store": f"{root / 'bad'} was replaced by a link; "
                                               "dsv never follows a link it did not make"}[bad]
    drafts = store.versions("model")
    assert [x.state for x in drafts] == ["draft"]
    assert done.stderr.splitlines()[0] == (
        f"error: output bad (other) could not be saved: {reason}; nothing was committed; "
        f"outputs kept as drafts: model:{drafts[0].id}; what the job wrote stays in {root}")
    assert store.versions("other") == []
    assert (root / "good" / "ok").read_bytes() == b"good\n"
    if bad == "absolute-link":
        assert os.readlink(root / "bad" / "p") == "/etc/passwd"
    elif bad == "name-not-utf8":
        assert (root / "bad" / os.fsdecode(b"\xff")).read_bytes() == b"x"
    store.get_files(f"model:{drafts[0].id}", ws / "seen")
    assert read_tree(ws / "seen") == {"ok": b"good\n"}


def test_a_mount_root_the_job_replaced_by_a_link_is_not_followed(project) -> None:
    store, ws, _v, _big = project
    (ws / "elsewhere" / "model").mkdir(parents=True)
    (ws / "elsewhere" / "model" / "x").write_bytes(b"not the job's\n")
    job = (f'echo "$DSV_MOUNT_ROOT" > root.txt; mv "$DSV_MOUNT_ROOT" "$DSV_MOUNT_ROOT.gone"; '
           f'ln -s {ws / "elsewhere"} "$DSV_MOUNT_ROOT"')
    done = run_dsv("run", "-o", "model=model", "--", "sh", "-c", job, cwd=ws)
    root = Path((ws / "root.txt").read_text().strip())
    try:
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines()[0] == (
            f"error: output model (model) could not be saved: {root} was replaced by a link; "
            f"dsv never follows a link it did not make; nothing was committed; what the job "
            f"wrote stays in {root}")
        assert store.versions("model") == []
        assert (ws / "elsewhere" / "model" / "x").read_bytes() == b"not the job's\n"
    finally:
        os.unlink(root)
        shutil.rmtree(f"{root}.gone")


def test_two_outputs_into_one_dataset_are_two_consecutive_versions(project) -> None:
    store, ws, _v, _big = project
    result = store.run({}, {"a": "model", "b": "model"},
                       ["sh", "-c", 'echo a > "$DSV_OUTPUT_A/f"; echo b > "$DSV_OUTPUT_B/f"'])
    a, b = result.outputs["a"], result.outputs["b"]
    assert (a.state, b.state) == ("committed", "committed")
    assert b.parents == [a.id]
    assert store.resolve("model:latest").id == b.id
    with store.open_file(f"model:{b.id}", "f") as f:
        assert f.read() == b"b\n"


def test_interrupting_dsv_run_stops_the_job_and_cleans_up(project) -> None:
    store, ws, _v, _big = project
    root = ws / "mnt"
    proc = subprocess.Popen([sys.executable, "-m", "dsv", "run", "-i", "train=mnist:latest",
                             "-o", "model=model", "--mount-root", str(root), "--",
                             "sleep", "30"], cwd=ws, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while time.time() < deadline and not (root / "model").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "nothing was committed" in err
    with open("/proc/mounts") as mounts:
        assert str(root) not in mounts.read()
    assert list((ws / ".dsv").glob("inputs/*.building-*")) == []
    assert run_dsv("verify", cwd=ws).returncode == 0


def test_a_killed_dsv_run_leaves_nothing_mounted_and_its_leftovers_are_removed(project) -> None:
    store, ws, _v, _big = project
    root = ws / "mnt2"
    proc = subprocess.Popen([sys.executable, "-m", "dsv", "run", "-i", "train=mnist:latest",
                             "-o", "model=model", "--mount-root", str(root), "--",
                             "sleep", "2"], cwd=ws, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline and not (root / "model").exists():
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup code runs in dsv
    proc.wait(timeout=20)
    time.sleep(2.5)  # the orphaned job finishes; its namespace and mounts go with it
    with open("/proc/mounts") as mounts:
        assert str(root) not in mounts.read()
    assert run_dsv("gc", cwd=ws).returncode == 0
    assert list((ws / ".dsv").glob("inputs/*.building-*")) == []
    assert run_dsv("verify", cwd=ws).returncode == 0


def test_an_input_tree_is_made_once_and_rebuilt_if_tampered_with(project) -> None:
    store, ws, v, big = project
    # Input trees are made whether or not this machine can mount: test them directly.
    with jobs.input_tree(store, v) as first:
        labels = first.path / "labels.csv"
        ino = labels.stat().st_ino
        assert sorted(os.listdir(first.path)) == ["big.bin", "labels.csv"]  # no stamp inside
        assert labels.stat().st_mode & 0o777 == 0o444
        assert (first.path.parent / f"{v.id}.stamp").is_file()
    with jobs.input_tree(store, v) as again:
        assert again.path == first.path and labels.stat().st_ino == ino  # reused
    os.chmod(labels, 0o644)       # read-only, but its owner (or root) can still write
    labels.write_text("tampered")
    with jobs.input_tree(store, v) as again:
        assert (again.path / "labels.csv").read_text() == "1,2,3\n"  # caught, rebuilt
        assert (again.path / "big.bin").read_bytes() == big
    extra = store.create_version_from_path("model", ws / "data", "a deletable version")
    with jobs.input_tree(store, extra) as doomed:
        pass
    store.delete_version(f"model:{extra.id}", force=True)
    store.gc()
    # Trees (read-only as they are) and stamps of live versions only.
    assert again.path.exists() and not doomed.path.exists()
    assert sorted(os.listdir(again.path.parent)) == [v.id, f"{v.id}.stamp"]


def test_input_trees_link_the_objects_and_gc_removes_trees_unused_for_a_while(project) -> None:
    store, ws, v, big = project
    oid = hash_bytes(big)
    with jobs.input_tree(store, v) as tree:
        # The large file is the stored object itself: placing the input copied nothing.
        assert (tree.path / "big.bin").stat().st_ino == store.objects.loose_path(oid).stat().st_ino
        assert not store.objects.links_dir.exists()
        held = store.gc(inputs_older_than="0")  # a tree a job holds is never removed
        assert held.removed_inputs == 0 and (tree.path / "big.bin").exists()
    stamp = tree.path.parent / f"{v.id}.stamp"
    assert store.gc().removed_inputs == 0 and tree.path.exists()  # used just now
    three_days_ago = time.time() - 3 * 86400
    os.utime(stamp, (three_days_ago, three_days_ago))
    assert store.gc(inputs_older_than="4d").removed_inputs == 0
    dry = store.gc(dry_run=True, inputs_older_than="2d")
    assert dry.removed_inputs == 1 and tree.path.exists()
    report = store.gc(inputs_older_than="2d")
    assert report.removed_inputs == 1 and not tree.path.exists() and not stamp.exists()
    assert report.freed_bytes >= len("1,2,3\n")  # the small file was a copy; big.bin a link
    assert store.verify().ok and store.objects.loose_path(oid).is_file()
    # Through the CLI: the default keeps a week; the option is a duration.
    with jobs.input_tree(store, v):
        pass
    assert run_dsv("gc", cwd=ws).returncode == 0 and tree.path.exists()
    os.utime(stamp, (three_days_ago, three_days_ago))
    done = run_dsv("gc", "--inputs-older-than", "1d", cwd=ws)
    assert done.returncode == 0 and "1 input tree removed" in done.stdout, done.stdout
    assert not tree.path.exists()
    bad = run_dsv("gc", "--inputs-older-than", "soon", cwd=ws)
    assert bad.returncode == 1
    assert "not a duration: 'soon'" in bad.stderr
