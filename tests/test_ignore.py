""".dsvignore: gitignore syntax in a dataset's directory and its subdirectories, honoured by
status, commit, diff, checkout, `files put` of a directory, `versions create --source-path`
and `dsv run` outputs; `status --ignored` lists what it hides; hostile ignore files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import read_tree, run_dsv, write_tree
from dsv.ignore import MAX_IGNORE_BYTES

RULES = "*.tmp\n!keep.tmp\nbuild/\n/top-only.txt\n# a comment\n"
TREE = {
    ".dsvignore": RULES,
    "data.csv": "1,2\n",
    "scratch.tmp": "x",
    "keep.tmp": "kept\n",
    "top-only.txt": "t",
    "build/out.bin": "b",
    "sub/top-only.txt": "not at the top: kept",
    "sub/notes.tmp": "n",
    "sub/.dsvignore": "local.txt\n!notes.tmp\n",
    "sub/local.txt": "l",
    "sub/deeper/local.txt": "l2",
}
KEPT = [".dsvignore", "data.csv", "keep.tmp", "sub/.dsvignore", "sub/notes.tmp",
        "sub/top-only.txt"]
IGNORED = ["build/", "scratch.tmp", "sub/deeper/local.txt", "sub/local.txt", "top-only.txt"]


def ok(r):
    assert r.code == 0, f"exit {r.code}\nout: {r.out}\nerr: {r.err}"
    return r


def js(r):
    return json.loads(ok(r).out)


@pytest.fixture
def ws(tmp_path: Path, dsv) -> Path:
    root = tmp_path / "ds"
    write_tree(root, TREE)
    ok(dsv("init", "--name", "ds", cwd=root))
    return root


def test_status_and_commit_leave_out_what_dsvignore_names(ws: Path, dsv) -> None:
    (st,) = js(dsv("status", "--json", cwd=ws))
    assert st["added"] == KEPT and "ignored" not in st
    (st,) = js(dsv("status", "--ignored", "--json", cwd=ws))
    assert st["ignored"] == IGNORED
    human = ok(dsv("status", "--ignored", cwd=ws)).out
    assert "  ignored   build/\n" in human and "  ignored   sub/local.txt\n" in human
    vid = ok(dsv("commit", "-m", "one", cwd=ws)).out.strip().split(":")[1]
    listed = js(dsv("files", "list", f"ds:{vid}", "-r", "--json", cwd=ws))
    assert sorted(f["path"] for f in listed if f["type"] != "dir") == KEPT
    # changing ignored files changes nothing
    (ws / "scratch.tmp").write_text("changed")
    (ws / "build" / "more.bin").write_text("more")
    (ws / "sub" / "deeper" / "local.txt").unlink()
    (st,) = js(dsv("status", "--json", cwd=ws))
    assert st["clean"] is True
    assert ok(dsv("diff", f"ds:{vid}", "--json", cwd=ws)).out == \
        ok(dsv("diff", f"ds:{vid}", f"ds:{vid}", "--json", cwd=ws)).out
    # the .dsvignore is a file like any other: editing it changes what is content
    (ws / ".dsvignore").write_text(RULES.replace("*.tmp\n", ""))
    (st,) = js(dsv("status", "--json", cwd=ws))
    assert st["added"] == ["scratch.tmp"] and st["modified"] == [".dsvignore"]


def test_a_directory_left_out_is_not_entered_and_cannot_be_re_included(ws: Path,
                                                                      dsv) -> None:
    (ws / ".dsvignore").write_text(RULES + "!build/out.bin\n")
    (st,) = js(dsv("status", "--ignored", "--json", cwd=ws))
    assert "build/" in st["ignored"] and "build/out.bin" not in st["added"]


def test_checkout_leaves_ignored_files_alone(ws: Path, dsv) -> None:
    v1 = ok(dsv("commit", "-m", "one", cwd=ws)).out.strip().split(":")[1]
    (ws / "data.csv").write_text("2,3\n")
    ok(dsv("commit", "-m", "two", cwd=ws))
    ok(dsv("checkout", f"ds:{v1}", cwd=ws))
    assert (ws / "data.csv").read_text() == "1,2\n"
    # ignored files were neither removed as extra files nor counted as changes
    assert (ws / "scratch.tmp").read_text() == "x" and (ws / "build" / "out.bin").exists()
    assert (ws / "sub" / "local.txt").exists()


def test_files_put_and_source_path_honour_the_source_directorys_rules(tmp_path: Path,
                                                                       dsv) -> None:
    src = tmp_path / "src"
    write_tree(src, TREE)
    proj = tmp_path / "proj"
    proj.mkdir()
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "a", cwd=proj))
    ok(dsv("datasets", "create", "b", cwd=proj))
    made = js(dsv("versions", "create", "a", "--source-path", src, "-m", "one", "--json",
                  cwd=proj))
    listed = js(dsv("files", "list", f"a:{made['id']}", "-r", "--json", cwd=proj))
    assert sorted(f["path"] for f in listed if f["type"] != "dir") == KEPT
    draft = js(dsv("versions", "create", "b", "--json", cwd=proj))["id"]
    ok(dsv("files", "put", f"b:{draft}", src, "--target-path", "in", cwd=proj))
    listed = js(dsv("files", "list", f"b:{draft}", "-r", "--json", cwd=proj))
    assert sorted(f["path"] for f in listed if f["type"] != "dir") == \
        sorted(f"in/{p}" for p in KEPT)


def test_run_outputs_honour_dsvignore(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    assert run_dsv("init", "--bare", cwd=ws).returncode == 0
    assert run_dsv("datasets", "create", "model", "--path", "models", cwd=ws).returncode == 0
    done = run_dsv("run", "-o", "model=model", "--", "sh", "-c",
                   'cd "$DSV_OUTPUT_MODEL" && printf "*.ckpt\\n" > .dsvignore && '
                   'echo w > weights.bin && echo c > step1.ckpt', cwd=ws)
    assert done.returncode == 0, done.stderr
    listed = json.loads(run_dsv("files", "list", "model:latest", "-r", "--json",
                                cwd=ws).stdout)
    assert sorted(f["path"] for f in listed) == [".dsvignore", "weights.bin"]


@pytest.mark.parametrize("make,needle", [
    (lambda p: os.symlink("/etc/passwd", p), "(a symlink)"),
    (lambda p: p.write_bytes(b"x" * (MAX_IGNORE_BYTES + 1)), "larger than"),
    (lambda p: p.write_bytes(b"\xff\xfe*.tmp\n"), "not valid UTF-8"),
    (lambda p: p.mkdir(), "(a directory)"),
])
def test_a_hostile_dsvignore_is_refused_clearly(tmp_path: Path, dsv, make, needle) -> None:
    root = tmp_path / "ds"
    write_tree(root, {"a.txt": "a", "sub/b.txt": "b"})
    ok(dsv("init", "--name", "ds", cwd=root))
    make(root / "sub" / ".dsvignore")
    for command in (["status"], ["commit", "-m", "x"]):
        r = dsv(*command, cwd=root)
        assert r.code == 1 and "sub/.dsvignore" in r.err and needle in r.err, r.err
        assert "Traceback" not in r.err and "bug in dsv" not in r.err
    assert read_tree(root)["a.txt"] == b"a"
