"""`dsv merge`: the three-way merge by path as a table of cases, then merges driven through
the CLI (clean, conflicting, settled one way, fast-forward, up to date, refused) and a push
of the merge as a fast-forward of the remote's line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_tree, write_tree
from dsv.merge import three_way
from dsv.model import Entry


def e(oid: str, mode: int = 0o644) -> Entry:
    return Entry("f", mode, len(oid), oid * 64 if len(oid) == 1 else oid)


A, B, C = e("a"), e("b"), e("c")

CASES = [
    # (base, ours, theirs) of one path → merged entry (None: absent) or "conflict"
    ("unchanged", A, A, A, A),
    ("changed on our side only", A, B, A, B),
    ("changed on their side only", A, A, B, B),
    ("changed the same way on both", A, B, B, B),
    ("changed differently", A, B, C, "conflict"),
    ("added on our side", None, A, None, A),
    ("added on their side", None, None, A, A),
    ("added the same on both", None, A, A, A),
    ("added differently on both", None, A, B, "conflict"),
    ("deleted on our side", A, None, A, None),
    ("deleted on their side", A, A, None, None),
    ("deleted on both", A, None, None, None),
    ("changed by us, deleted by them", A, B, None, "conflict"),
    ("deleted by us, changed by them", A, None, B, "conflict"),
    ("mode changed on their side", A, A, e("a", 0o755), e("a", 0o755)),
    ("mode on one side, content on the other", A, e("a", 0o755), B, "conflict"),
]


@pytest.mark.parametrize("name,base,ours,theirs,want", CASES, ids=[c[0] for c in CASES])
def test_three_way_by_path(name: str, base, ours, theirs, want) -> None:
    def side(entry):
        return {"x/p": entry} if entry is not None else {}
    merged, conflicts = three_way(side(base), side(ours), side(theirs))
    if want == "conflict":
        assert merged == {} and conflicts == {"x/p": (ours, theirs)}
    else:
        assert conflicts == {} and merged == side(want)


def test_a_file_on_one_side_where_the_other_made_a_directory_is_a_conflict() -> None:
    merged, conflicts = three_way({"k": A}, {"d": B, "k": A}, {"d/inner": C, "k": A})
    assert merged == {"k": A}
    assert conflicts == {"d": (B, None), "d/inner": (None, C)}


def test_file_and_directory_clashes_at_several_depths_are_each_one_conflict() -> None:
    merged, conflicts = three_way({}, {"a": A, "a/b/c": C, "k": A}, {"a/b": B, "k": A})
    assert merged == {"k": A}
    assert conflicts == {"a": (A, None), "a/b": (None, B), "a/b/c": (C, None)}


# ---- through the CLI ------------------------------------------------------------------------

def ok(r):
    assert r.code == 0, f"exit {r.code}\nout: {r.out}\nerr: {r.err}"
    return r


def vid(r) -> str:
    return ok(r).out.strip().rsplit(":", 1)[1]


def show(dsv, ws: Path, ref: str) -> dict:
    return json.loads(ok(dsv("show", ref, "--json", cwd=ws)).out)


@pytest.fixture
def split(tmp_path: Path, dsv):
    """A dataset whose history forked at `base`: `ours` in the working directory (latest),
    `theirs` committed with --force from `base` and then left (a side line)."""
    ws = tmp_path / "data"
    write_tree(ws, {"keep.txt": "keep\n", "both.txt": "0\n", "mine.txt": "m0\n",
                    "yours.txt": "y0\n", "gone.txt": "bye\n"})
    ok(dsv("init", "--name", "data", cwd=ws))
    base = vid(dsv("commit", "-m", "base", cwd=ws))
    write_tree(ws, {"yours.txt": "y1\n", "both.txt": "theirs\n", "new-theirs.txt": "t\n"})
    theirs = vid(dsv("commit", "-m", "theirs", cwd=ws))
    ok(dsv("checkout", f"data:{base}", cwd=ws))
    write_tree(ws, {"mine.txt": "m1\n", "both.txt": "ours\n"})
    (ws / "gone.txt").unlink()
    ours = vid(dsv("commit", "-m", "ours", "--force", cwd=ws))
    return ws, base, ours, theirs


def test_a_conflict_commits_nothing_and_lists_every_path(split, dsv) -> None:
    ws, base, ours, theirs = split
    before = read_tree(ws)
    r = dsv("merge", f"data:{theirs}", cwd=ws)
    assert r.code == 1 and "1 conflicting path: both.txt" in r.err and "--ours" in r.err
    report = json.loads(dsv("merge", f"data:{theirs}", "--json", cwd=ws).out)
    assert (report["conflicts"], report["base"], report["outcome"]) == (["both.txt"], base, "")
    assert read_tree(ws) == before
    assert show(dsv, ws, "data:latest")["id"] == ours
    assert [v["id"] for v in json.loads(ok(dsv("log", "--json", cwd=ws)).out)][0] == ours


@pytest.mark.parametrize("side", ["ours", "theirs"])
def test_conflicts_settled_one_way_make_a_version_with_two_parents(split, dsv,
                                                                    side: str) -> None:
    ws, base, ours, theirs = split
    r = ok(dsv("merge", f"data:{theirs}", f"--{side}", "-m", "join", cwd=ws))
    assert "1 conflict settled with " + side in r.out
    head = show(dsv, ws, "data:latest")
    assert head["parents"] == [ours, theirs] and head["message"] == "join"
    assert read_tree(ws) == {
        "keep.txt": b"keep\n", "mine.txt": b"m1\n", "yours.txt": b"y1\n",
        "new-theirs.txt": b"t\n", "both.txt": b"ours\n" if side == "ours" else b"theirs\n"}
    (st,) = json.loads(ok(dsv("status", "--json", cwd=ws)).out)
    assert (st["clean"], st["head"], st["behind"]) == (True, head["id"], 0)
    # merging again: theirs is in the history now
    assert "already up to date" in ok(dsv("merge", f"data:{theirs}", cwd=ws)).out


def test_a_clean_merge_fast_forward_and_refusals(tmp_path: Path, dsv) -> None:
    ws = tmp_path / "data"
    write_tree(ws, {"a.txt": "a\n", "b.txt": "b\n"})
    ok(dsv("init", "--name", "data", cwd=ws))
    v1 = vid(dsv("commit", "-m", "one", cwd=ws))
    (ws / "a.txt").write_text("a2\n")
    v2 = vid(dsv("commit", "-m", "two", cwd=ws))
    ok(dsv("checkout", f"data:{v1}", cwd=ws))
    # the directory is behind latest: merging latest is a fast-forward, no new version
    r = ok(dsv("merge", "data:latest", cwd=ws))
    assert f"fast-forward {v1} -> {v2}" in r.out
    assert read_tree(ws) == {"a.txt": b"a2\n", "b.txt": b"b\n"}
    assert len(json.loads(ok(dsv("log", "--json", cwd=ws)).out)) == 2
    # a side line that touched another file merges cleanly
    ok(dsv("checkout", f"data:{v1}", cwd=ws))
    (ws / "b.txt").write_text("b2\n")
    side = vid(dsv("commit", "-m", "side", "--force", cwd=ws))
    r = ok(dsv("merge", f"data:{v2}", cwd=ws))
    merged = show(dsv, ws, "data:latest")
    assert merged["parents"] == [side, v2] and merged["message"] == f"merge data:{v2} into data"
    assert read_tree(ws) == {"a.txt": b"a2\n", "b.txt": b"b2\n"}
    # refusals: uncommitted changes, a draft, both --ours and --theirs
    (ws / "a.txt").write_text("dirty\n")
    r = dsv("merge", f"data:{v1}", cwd=ws)
    assert r.code == 1 and "uncommitted changes" in r.err
    assert (ws / "a.txt").read_text() == "dirty\n"
    r = dsv("merge", f"data:{v1}", "--ours", "--theirs", cwd=ws)
    assert r.code == 2 and "exclude each other" in r.err


@pytest.fixture
def diverged(tmp_path: Path, dsv) -> tuple[Path, Path, str, str]:
    """`src` and its clone `other` each committed on top of the version both had; `other`
    pushed first. Returns (src, other, mine, theirs)."""
    src = tmp_path / "src"
    write_tree(src, {"a.txt": "a\n", "b.txt": "b\n"})
    ok(dsv("init", "--name", "data", cwd=src))
    ok(dsv("commit", "-m", "one", cwd=src))
    remote = tmp_path / "remote"
    ok(dsv("remote", "add", "origin", remote, cwd=src))
    ok(dsv("push", cwd=src))
    other = tmp_path / "other"
    ok(dsv("clone", remote, other, cwd=tmp_path))
    (other / "a.txt").write_text("theirs\n")
    theirs = vid(dsv("commit", "-m", "theirs", cwd=other))
    ok(dsv("push", cwd=other))
    (src / "b.txt").write_text("mine\n")
    mine = vid(dsv("commit", "-m", "mine", cwd=src))
    return src, other, mine, theirs


def test_a_merge_of_the_remote_line_pushes_as_a_fast_forward(diverged, dsv) -> None:
    src, other, mine, theirs = diverged
    assert dsv("push", cwd=src).code == 1          # not a fast-forward
    ok(dsv("fetch", cwd=src))
    ok(dsv("merge", "data:origin/latest", cwd=src))  # blobs of theirs are downloaded
    merged = show(dsv, src, "data:latest")
    assert merged["parents"] == [mine, theirs]
    assert read_tree(src) == {"a.txt": b"theirs\n", "b.txt": b"mine\n"}
    ok(dsv("push", cwd=src))                        # a fast-forward of the remote's line
    ok(dsv("pull", cwd=other))
    assert read_tree(other) == {"a.txt": b"theirs\n", "b.txt": b"mine\n"}
    assert show(dsv, other, "data:latest")["id"] == merged["id"]


def test_pull_on_a_diverged_dataset_says_so_and_pull_merge_merges(diverged, dsv) -> None:
    src, _other, mine, theirs = diverged
    r = ok(dsv("pull", cwd=src))
    assert f"data:latest is {mine} here and {theirs} on origin" in r.err
    assert "`dsv pull --merge` merges them" in r.err
    assert show(dsv, src, "data:latest")["id"] == mine and (src / "a.txt").read_text() == "a\n"
    r = ok(dsv("pull", "--merge", cwd=src))
    merged = show(dsv, src, "data:latest")
    assert merged["parents"] == [mine, theirs]
    assert merged["message"] == "merge data:origin/latest into data"   # (names, not ids)
    assert f"merged data:{merged['id']} merges {theirs} into {mine}" in r.out
    assert "warning" not in r.err
    assert read_tree(src) == {"a.txt": b"theirs\n", "b.txt": b"mine\n"}
    # nothing left to merge
    r = ok(dsv("pull", "--merge", cwd=src))
    assert "merged" not in r.out and show(dsv, src, "data:latest")["id"] == merged["id"]


def test_log_graph_draws_merges_and_side_lines(tmp_path: Path, dsv) -> None:
    import re
    ws = tmp_path / "g"
    write_tree(ws, {"a": "a"})
    ok(dsv("init", "--name", "g", cwd=ws))
    base = vid(dsv("commit", "-m", "base", cwd=ws))
    write_tree(ws, {"b": "b"})
    main1 = vid(dsv("commit", "-m", "main1", cwd=ws))
    ok(dsv("checkout", f"g:{base}", cwd=ws))
    write_tree(ws, {"c": "c"})
    vid(dsv("commit", "-m", "side", "--force", cwd=ws))
    ok(dsv("merge", f"g:{main1}", "-m", "join", cwd=ws))
    write_tree(ws, {"d": "d"})
    after = vid(dsv("commit", "-m", "after", cwd=ws))
    ok(dsv("tag", f"g:{after}", "v2", cwd=ws))
    ok(dsv("checkout", f"g:{main1}", cwd=ws))
    write_tree(ws, {"e": "e"})
    vid(dsv("commit", "-m", "off main1", "--force", cwd=ws))
    out = ok(dsv("log", "--graph", cwd=ws)).out
    shape = [re.sub(r"\b[0-9a-z]{10}\b", "ID", line) for line in out.splitlines()]
    assert shape == [
        "* ID off main1",
        "| * ID (v2) after",
        "| * ID join",
        "|/|",
        "| * ID side",
        "* | ID main1",
        "|/",
        "* ID base",
    ], "\n".join(shape)


def _history(spec: list[tuple[str, list[str]]]):
    from dsv.model import Version
    n = len(spec)
    return [Version(id=vid, dataset="d", state="committed", tree="t", parents=parents,
                    message=vid, created=float(n - i)) for i, (vid, parents) in enumerate(spec)]


@pytest.mark.parametrize("spec,want", [
    ([("c", ["b"]), ("b", ["a"]), ("a", [])], ["* c", "* b", "* a"]),
    # a merge whose second line is new: it starts a lane with "\"
    ([("m", ["x", "y"]), ("x", ["a"]), ("y", ["a"]), ("a", [])],
     ["* m", "|\\", "* | x", "| * y", "|/", "* a"]),
    # two lines that never join (a dataset's two roots)
    ([("p", ["q"]), ("r", []), ("q", [])], ["* p", "| * r", "* q"]),
])
def test_graph_shapes(spec, want) -> None:
    from dsv.versions import graph
    rows = [f"{prefix} {v.id}" if v else prefix for prefix, v in graph(_history(spec))]
    assert rows == want


def _whole_merge(store, base, ours, theirs, resolve: str | None):
    """What merging by whole manifests makes (the way dsv merged before it read only what
    the lines changed): (the merged tree's id, its files, the conflicts)."""
    from dsv import merge as merge_module, tree
    core = store.core
    merged, conflicts = three_way(core.manifest(base), core.manifest(ours),
                                  core.manifest(theirs))
    if resolve is not None:
        for path, pair in conflicts.items():
            chosen = pair[0 if resolve == "ours" else 1]
            if chosen is not None:
                merged[path] = chosen
        merged = merge_module._without_file_dir_clashes(merged)
    root, _size = tree.build_tree(merged, lambda _oid, _data: None)
    return root, len(merged), sorted(conflicts)


def _line_edit(ws: Path, rng, tag: bytes) -> None:
    """Random edits of a line: files changed, deleted, made directories, their modes
    changed; a directory made a file; files added under names both lines may pick."""
    import os
    import shutil
    for path in rng.sample(sorted(read_tree(ws)), rng.randrange(2, 8)):
        action = rng.random()
        if action < 0.35:
            (ws / path).write_bytes(tag + path.encode())
        elif action < 0.6:
            (ws / path).unlink()
        elif action < 0.8:
            (ws / path).unlink()
            (ws / path).mkdir()
            (ws / path / "inner").write_bytes(tag)
        else:
            os.chmod(ws / path, 0o755)
    folders = sorted({p.rpartition("/")[0] for p in read_tree(ws) if "/" in p})
    if folders and rng.random() < 0.5:
        folder = rng.choice(folders)
        shutil.rmtree(ws / folder)
        (ws / folder).write_bytes(tag)
    for i in range(rng.randrange(0, 3)):
        where = ws / rng.choice(["flat", "a", "d/e"])
        if not where.is_file():
            where.mkdir(parents=True, exist_ok=True)
            (where / f"n{i}").write_bytes(rng.choice([b"same", tag]))


@pytest.mark.parametrize("seed", range(12))
def test_a_merge_of_what_two_lines_changed_is_the_merge_of_whole_manifests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Two lines of random edits (files changed, added, deleted, files made directories
    and directories files, modes) over a base with sharded directories: the merge, which
    reads only what the lines changed (`merge._changed_part`) and updates our tree,
    makes the tree, the file count and the conflicts that the three-way merge of whole
    manifests makes, settled either way; and it never reads a whole manifest."""
    import random
    import shutil

    import dsv as dsv_api
    from dsv import tree
    from dsv.errors import MergeConflict
    from test_streaming import _age

    monkeypatch.setattr(tree, "SHARD_ENTRIES", 4)
    rng = random.Random(seed)
    ws = tmp_path / "ws"
    write_tree(ws, {**{f"flat/f{i:02d}": b"%d" % i for i in range(10)},
                    "a/b/c": b"c", "a/x": b"x", "top": b"t", "d/e/f": b"f"})
    _age(ws)
    store = dsv_api.init(ws, name="raw")
    base = store.commit("base")
    _line_edit(ws, rng, b"theirs")
    _age(ws)
    theirs = store.commit("theirs")
    store.checkout(f"raw:{base.id}")
    _line_edit(ws, rng, b"ours")
    _age(ws)
    ours = store.commit("ours", force=True)
    store.close()
    seen: list[list[str]] = []
    for resolve in (None, "ours", "theirs"):
        copy = tmp_path / f"copy-{resolve}"
        shutil.copytree(ws, copy, symlinks=True)
        with dsv_api.open(copy) as there:
            want_root, want_files, want_conflicts = _whole_merge(there, base, ours, theirs,
                                                                 resolve)

            def no_manifest(*_a: object, **_k: object) -> object:
                raise AssertionError("a whole manifest was read")
            with monkeypatch.context() as m:
                m.setattr(there.core, "manifest", no_manifest)
                try:
                    report = there.merge(f"raw:{theirs.id}", resolve=resolve)
                except MergeConflict as exc:
                    seen.append(want_conflicts)
                    assert resolve is None and want_conflicts, exc
                    assert exc.report.conflicts == want_conflicts
                    continue
            assert resolve is not None or not want_conflicts
            assert report.conflicts == want_conflicts and report.outcome == "merged"
            made = there.core.version(report.version)
            assert (made.tree, made.files) == (want_root, want_files)
            assert there.status().changes.clean
