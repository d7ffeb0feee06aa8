"""`.dsv/state.json`: nothing important lives only in `index.db`. After the index is
deleted, `dsv index rebuild` brings back datasets and their directories, `latest`, heads,
tags, remotes and drafts (all but the stat cache); a tampered state file is read with the
same suspicion as the index."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import read_tree, write_tree


def ok(r):
    assert r.code == 0, f"exit {r.code}\nout: {r.out}\nerr: {r.err}"
    return r


def js(r):
    return json.loads(ok(r).out)


def vid(r) -> str:
    return ok(r).out.strip().rsplit(":", 1)[1]


def _everything(dsv, proj: Path) -> dict:
    """What a user can see of the store that no object records."""
    datasets = js(dsv("datasets", "list", "--json", cwd=proj))
    return {
        "datasets": sorted((d["id"], d["name"], d["path"], d["description"], d["latest"],
                            d["head"]) for d in datasets),
        "tags": sorted((t["dataset"], t["tag"], t["version"])
                       for t in js(dsv("tags", "--json", cwd=proj))),
        "remotes": sorted((r["name"], r["url"], r["kind"], r.get("default"))
                          for r in js(dsv("remote", "list", "--json", cwd=proj))),
        "drafts": sorted((v["id"], v["message"], v["tree"], tuple(v["parents"]))
                         for d in datasets
                         for v in js(dsv("versions", "list", d["name"], "--drafts",
                                         "--json", cwd=proj))),
        "status": [(s["dataset"], s["head"], s["clean"])
                   for s in js(dsv("status", "--json", cwd=proj))],
    }


def test_index_rebuild_after_the_index_is_deleted_loses_nothing(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    write_tree(proj, {"raw/a.txt": "a", "raw/sub/b.txt": "b", "clean/c.csv": "1,2\n"})
    ok(dsv("init", "--bare", cwd=proj))
    ok(dsv("datasets", "create", "raw", "--path", "raw", "--description", "camera dumps",
           cwd=proj))
    ok(dsv("datasets", "create", "clean", "--path", "clean", cwd=proj))
    ok(dsv("datasets", "create", "empty", "--path", "empty-dir", cwd=proj))
    r1 = vid(dsv("commit", "-m", "raw one", "-d", "raw", cwd=proj))
    (proj / "raw" / "a.txt").write_text("a2")
    r2 = vid(dsv("commit", "-m", "raw two", "-d", "raw", cwd=proj))
    ok(dsv("commit", "-m", "clean one", "-d", "clean", cwd=proj))
    ok(dsv("tag", f"raw:{r1}", "v1", cwd=proj))
    ok(dsv("tag", "clean:latest", "gold", cwd=proj))
    ok(dsv("checkout", f"raw:{r1}", cwd=proj))          # a head that is not latest
    ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=proj))
    ok(dsv("remote", "add", "backup", tmp_path / "backup", cwd=proj))
    ok(dsv("remote", "add", "shared", tmp_path / "cache", "--cache", "--ttl", "7d", cwd=proj))
    draft = vid(dsv("versions", "create", "clean", "-m", "work in progress", cwd=proj))
    write_tree(tmp_path / "add", {"d.csv": "3,4\n"})
    ok(dsv("files", "put", f"clean:{draft}", tmp_path / "add" / "d.csv", cwd=proj))
    before = _everything(dsv, proj)
    assert ("raw", r1) in {(s[0], s[1]) for s in before["status"]}
    assert len(before["drafts"]) == 1 and len(before["remotes"]) == 3
    assert (proj / ".dsv" / "state.json").is_file()

    config = proj / ".dsv" / "config.json"
    config.write_text('{"format": 2, "hash": "blake3"}')   # as an older dsv left it
    for suffix in ("", "-wal", "-shm"):
        (proj / ".dsv" / f"index.db{suffix}").unlink(missing_ok=True)
    r = dsv("status", cwd=proj)
    assert r.code == 1 and "dsv index rebuild" in r.err
    ok(dsv("index", "rebuild", cwd=proj))
    assert json.loads(config.read_text())["format"] == 3   # its index is schema 10's
    assert _everything(dsv, proj) == before
    # and it all works: the draft commits, latest is where it was, files read back
    assert js(dsv("show", "raw:latest", "--json", cwd=proj))["id"] == r2
    ok(dsv("versions", "commit", f"clean:{draft}", cwd=proj))
    ok(dsv("files", "get", f"clean:{draft}", "--target-path", tmp_path / "out", cwd=proj))
    assert read_tree(tmp_path / "out") == {"c.csv": b"1,2\n", "d.csv": b"3,4\n"}


def test_a_tampered_state_file_is_checked_not_trusted(tmp_path: Path, dsv) -> None:
    proj = tmp_path / "proj"
    write_tree(proj, {"a.txt": "a"})
    ok(dsv("init", "--name", "data", cwd=proj))
    v1 = vid(dsv("commit", "-m", "one", cwd=proj))
    ok(dsv("remote", "add", "origin", tmp_path / "remote", cwd=proj))
    state_path = proj / ".dsv" / "state.json"
    state = json.loads(state_path.read_text())
    state["datasets"].append({"id": "evil0001", "name": "evil", "path": "../../outside",
                              "description": None, "created": 1.0, "latest": None,
                              "head": None})
    state["remotes"][0]["url) VALUES ('x','y','origin'); --"] = "boom"
    state["tags"].append(["evil0001", "t", v1, 1.0])      # a tag on another dataset's version
    state["drafts"].append({"id": "d000000001", "dataset": "evil0001", "tree": "0" * 64,
                            "parents": [], "message": "no tree", "author": None,
                            "created": 1.0, "lineage": None, "size": 0, "files": 0})
    data_id = state["datasets"][0]["id"]
    tree = json.loads(ok(dsv("show", v1, "--json", cwd=proj)).out)["tree"]
    for bad_id, bad_tree in (("../../inputs/x", tree), ("d000000002", "../../../etc/passwd")):
        state["drafts"].append({"id": bad_id, "dataset": data_id, "tree": bad_tree,
                                "parents": "not a list", "message": "bad", "author": None,
                                "created": 1.0, "lineage": None, "size": 0, "files": 0})
    state_path.write_text(json.dumps(state))
    (proj / ".dsv" / "index.db").unlink()
    ok(dsv("index", "rebuild", cwd=proj))
    datasets = {d["name"]: d for d in js(dsv("datasets", "list", "--json", cwd=proj))}
    assert datasets["evil"]["path"] is None                  # the escaping path was dropped
    assert datasets["data"]["latest"] == v1 and datasets["data"]["path"] == "."
    assert [r["name"] for r in js(dsv("remote", "list", "--json", cwd=proj))] == ["origin"]
    assert js(dsv("tags", "--json", cwd=proj)) == []
    assert js(dsv("versions", "list", "evil", "--drafts", "--json", cwd=proj)) == []
    assert js(dsv("versions", "list", "data", "--drafts", "--json",
                  cwd=proj)) == []                           # neither bad draft came back
    # a state file that is not JSON: the rebuild falls back to what the records say
    state_path.write_text("{not json")
    (proj / ".dsv" / "index.db").unlink()
    ok(dsv("index", "rebuild", cwd=proj))
    assert js(dsv("show", "data:latest", "--json", cwd=proj))["id"] == v1


def test_tentative_rows_never_reach_the_state_file(tmp_path: Path) -> None:
    """Pull plans with rows it rolls back (Index.rolled_back): the state file must not
    mirror them, even when the plan runs outside a transaction."""
    from dsv.index import Index
    from dsv.model import Dataset
    idx = Index(tmp_path / "index.db")
    idx.create_schema()
    saves: list[str] = []
    idx.on_change = lambda: saves.append(str(idx.tags()))
    idx.insert_dataset(Dataset(id="ds000001", name="raw", created=1.0))
    assert len(saves) == 1                       # a change outside a transaction: at once
    with idx.rolled_back():
        idx.update_dataset("ds000001", description="tentative")
    assert len(saves) == 1
    with idx.transaction():
        with idx.rolled_back():
            idx.update_dataset("ds000001", description="tentative")
    assert len(saves) == 1                       # the only change was undone
    with idx.transaction():
        idx.update_dataset("ds000001", description="kept")
        with idx.rolled_back():
            pass
    assert len(saves) == 2                       # a real change before the savepoint stays
    idx.close()
