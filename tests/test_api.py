"""The Python API (SPEC §2.18): `import dsv; store = dsv.init(path)` / `dsv.open(path)`, then
commit, checkout, files, get_files and open_file, checked byte for byte."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from pathlib import Path

import blake3
import pytest

import dsv
from conftest import read_tree, write_tree
from dsv.errors import (DsvError, InvalidInput, NothingToCommit, StoreExists, StoreNotFound,
                        VersionImmutable)

FILES = {"a.txt": b"alpha\n", "dir/b.bin": bytes(range(256)) * 8, "dir/sub/c.csv": b"x,y\n"}


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def dsv_size(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / ".dsv").rglob("*") if p.is_file())


@pytest.fixture
def store_dir(tmp_path: Path):
    root = tmp_path / "ds"
    write_tree(root, FILES)
    store = dsv.init(root)
    yield store, root
    store.close()


def test_init_binds_directory_and_open_finds_it_from_a_subdirectory(store_dir) -> None:
    store, root = store_dir
    assert isinstance(store, dsv.Store)
    (ds,) = store.datasets()
    assert ds.name == "ds" and ds.path == "."
    with dsv.open(root / "dir" / "sub") as again:
        assert again.root == root.resolve()
        assert [d.id for d in again.datasets()] == [ds.id]
        assert again.dataset_at(root / "dir").id == ds.id


def test_open_default_is_the_current_directory(store_dir, monkeypatch) -> None:
    _store, root = store_dir
    monkeypatch.chdir(root / "dir")
    with dsv.open() as s:
        assert s.root == root.resolve()


def test_init_twice_and_open_nowhere(store_dir, tmp_path: Path) -> None:
    _store, root = store_dir
    with pytest.raises(StoreExists):
        dsv.init(root)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreNotFound) as info:
        dsv.open(tmp_path / "plain")
    assert info.value.hint and "dsv init" in info.value.hint


def test_init_with_name_and_unbound(tmp_path: Path) -> None:
    with dsv.init(tmp_path / "x", name="custom") as s:
        assert [d.name for d in s.datasets()] == ["custom"]
    with dsv.init(tmp_path / "y", bind=False) as s:
        assert s.datasets() == []
        ds = s.create_dataset("raw", path=tmp_path / "y" / "data" / "raw")
        assert ds.path == "data/raw" and (tmp_path / "y" / "data" / "raw").is_dir()


def test_commit_returns_the_version(store_dir) -> None:
    store, root = store_dir
    v = store.commit("first")
    assert isinstance(v, dsv.Version)
    assert v.state == "committed" and not v.is_draft and v.message == "first"
    assert v.files == 3 and v.size == sum(len(b) for b in FILES.values())
    assert len(v.id) == 10 and v.parents == [] and v.record
    assert v.author == "tester <t@example.com>"
    assert store.resolve("ds:latest").id == v.id
    with pytest.raises(NothingToCommit):
        store.commit("again")
    with pytest.raises(InvalidInput):
        store.commit("")
    (root / "a.txt").write_bytes(b"changed")
    v2 = store.commit("second")
    assert v2.parents == [v.id]
    assert [x.id for x in store.log()] == [v2.id, v.id]


def test_status_through_the_api(store_dir) -> None:
    store, root = store_dir
    store.commit("first")
    assert store.status().changes.clean
    (root / "new.bin").write_bytes(b"12345")
    (root / "dir" / "b.bin").unlink()
    report = store.status()
    assert report.changes.added == ["new.bin"] and report.changes.added_bytes == 5
    assert report.changes.deleted == ["dir/b.bin"] and report.changes.deleted_bytes == 2048
    assert report.changes.modified == []


def test_checkout_restores_bytes_and_modes(store_dir, tmp_path: Path) -> None:
    store, root = store_dir
    os.chmod(root / "a.txt", 0o755)
    v1 = store.commit("first")
    before = read_tree(root)
    (root / "a.txt").write_bytes(b"second")
    os.chmod(root / "a.txt", 0o644)
    (root / "extra.txt").write_bytes(b"extra")
    v2 = store.commit("second")

    out = tmp_path / "out"
    rep = store.checkout(f"ds:{v1.id}", to=out)
    assert rep.version.id == v1.id and rep.written == 3 and rep.removed == 0
    assert read_tree(out) == before
    assert stat.S_IMODE(os.stat(out / "a.txt").st_mode) == 0o755

    rep = store.checkout(f"ds:{v1.id}")  # the working directory itself
    assert read_tree(root) == before and rep.removed == 1
    assert store.status().head.id == v1.id and store.status().changes.clean
    store.checkout("ds:latest")
    assert (root / "extra.txt").read_bytes() == b"extra"
    assert store.status().head.id == v2.id


def test_open_file_reads_verified_bytes(store_dir) -> None:
    store, root = store_dir
    big = random.Random(1).randbytes((1 << 20) + 333)  # large: stored loose
    (root / "big.bin").write_bytes(big)
    v = store.commit("first")
    for path, data in {**FILES, "big.bin": big}.items():
        with store.open_file(f"ds:{v.id}", path) as f:
            assert f.read() == data
    with pytest.raises(DsvError):
        store.open_file("ds:latest", "nope.txt")
    with pytest.raises(DsvError):
        store.open_file("ds:latest", "dir")  # a directory is not a file


def test_open_file_refuses_corrupt_objects(store_dir) -> None:
    store, root = store_dir
    big = random.Random(2).randbytes((1 << 20) + 77)
    (root / "big.bin").write_bytes(big)
    store.commit("first")
    loose = store.objects.loose_path(b3(big))
    os.chmod(loose, 0o644)
    with open(loose, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\x00\xff")
    with pytest.raises(DsvError) as info:
        store.open_file("ds:latest", "big.bin").read()
    assert "corrupt" in info.value.message
    # a packed (small) object
    oid = b3(FILES["dir/b.bin"])
    pack_id, offset, length = store.index.locate(oid)
    pack = store.objects.pack_path(pack_id)
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as f:
        f.seek(offset + 10)
        byte = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([byte[0] ^ 0x55]))
    with dsv.open(root) as fresh:
        with pytest.raises(DsvError) as info:
            fresh.open_file("ds:latest", "dir/b.bin").read()
        assert "corrupt" in info.value.message
        report = fresh.verify()
        assert not report.ok
        assert any(b3(big)[:12] in p for p in report.problems)
        assert any(oid[:12] in p for p in report.problems)


def test_files_and_get_files(store_dir, tmp_path: Path) -> None:
    store, _root = store_dir
    v = store.commit("first")
    rows = store.files(f"ds:{v.id}", recursive=True)
    assert {(r.path, r.kind, r.size, r.oid) for r in rows} == \
        {(p, "file", len(b), b3(b)) for p, b in FILES.items()}
    top = store.files("ds:latest")
    assert {(r.path, r.kind) for r in top} == {("a.txt", "file"), ("dir", "dir")}
    assert {r.path for r in store.files("ds:latest", "dir")} == {"dir/b.bin", "dir/sub"}
    with pytest.raises(DsvError):
        store.files("ds:latest", "missing")
    n = store.get_files("ds:latest", tmp_path / "all")
    assert n == 3 and read_tree(tmp_path / "all") == FILES
    n = store.get_files("ds:latest", tmp_path / "some", ["dir/sub"])
    assert n == 1 and read_tree(tmp_path / "some") == {"dir/sub/c.csv": b"x,y\n"}


def test_drafts_through_the_api(store_dir, tmp_path: Path) -> None:
    store, _root = store_dir
    v1 = store.commit("first")
    draft = store.create_version("ds", "draft")
    assert draft.is_draft and draft.parents == [v1.id] and draft.tree == v1.tree
    src = tmp_path / "new.txt"
    src.write_bytes(b"new!")
    d = store.put_files(f"ds:{draft.id}", [src], target_path="added")
    assert d.files == 4
    d = store.delete_files(f"ds:{draft.id}", ["dir/sub"])
    assert d.files == 3
    d = store.update_version(f"ds:{draft.id}", "better")
    assert d.message == "better" and d.is_draft
    c = store.commit_version(f"ds:{draft.id}")
    assert c.id == draft.id and c.state == "committed" and c.message == "better"
    assert {r.path: r.oid for r in store.files(f"ds:{c.id}", recursive=True)} == {
        "a.txt": b3(FILES["a.txt"]), "dir/b.bin": b3(FILES["dir/b.bin"]),
        "added/new.txt": b3(b"new!")}
    for change in (lambda: store.put_files(f"ds:{c.id}", [src]),
                   lambda: store.delete_files(f"ds:{c.id}", ["a.txt"]),
                   lambda: store.update_version(f"ds:{c.id}", "x"),
                   lambda: store.commit_version(f"ds:{c.id}")):
        with pytest.raises(VersionImmutable):
            change()
    assert store.resolve(f"ds:{c.id}").tree == c.tree
    assert store.verify().ok


def test_a_version_cannot_start_from_a_draft(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_tree(root, {"a.txt": "1"})
    store = dsv.init(root)
    store.commit("one", cwd=root)
    draft = store.create_version("data", "wip")
    with pytest.raises(InvalidInput) as info:
        store.create_version("data", "child", from_ref=draft.id)
    assert "draft" in info.value.message
    assert [v.id for v in store.versions("data", "draft")] == [draft.id]


def _junk_left_by_a_deleted_draft(store: dsv.Store, tmp_path: Path, seed: int) -> bytes:
    """Commit the store's files, then put 5,000 random bytes into a draft of dataset ds
    and delete it: those bytes, stored and reached by no version."""
    store.commit("first")
    src = tmp_path / "junk.bin"
    junk = random.Random(seed).randbytes(5000)
    src.write_bytes(junk)
    draft = store.create_version("ds")
    store.put_files(f"ds:{draft.id}", [src])
    assert store.objects.has(b3(junk))
    store.delete_version(f"ds:{draft.id}")
    return junk


def test_gc_and_verify_reports(store_dir, tmp_path: Path) -> None:
    store, _root = store_dir
    junk = _junk_left_by_a_deleted_draft(store, tmp_path, 9)
    report = store.gc()
    assert report.removed_objects >= 1 and report.freed_bytes >= len(junk)
    assert not store.objects.has(b3(junk))
    v = store.verify()
    assert v.ok and v.versions_checked == 1 and v.problems == []
    store.get_files("ds:latest", tmp_path / "x")
    assert read_tree(tmp_path / "x") == FILES


def test_gc_repacks_by_the_packs_own_tables_and_forgets_only_their_rows(store_dir,
                                                                           tmp_path: Path
                                                                           ) -> None:
    """gc finds a pack's rows by the oids of the pack's own table (the index has no index
    by pack), rewrites a pack holding live and dead objects, and forgets exactly the
    retired pack's rows; where that table is unreadable, a pass over the rows finds the
    same rows."""
    from dsv import maintenance
    store, _root = store_dir
    store.commit("first")
    draft = store.create_version("ds")
    srcs = []
    for i in range(3):
        srcs.append(tmp_path / f"n{i}.bin")
        srcs[-1].write_bytes(random.Random(i).randbytes(3000))
    store.put_files(f"ds:{draft.id}", srcs)
    keep = b3(srcs[0].read_bytes())
    mixed = store.index.locate(keep)[0]
    assert store.index.locate(b3(srcs[1].read_bytes()))[0] == mixed
    rows = store.index.pack_objects(mixed)
    assert maintenance._pack_rows(store.core, mixed) == rows and len(rows) >= 3
    others = {oid for oid, pack, _k in store.index.packed_oids() if pack != mixed}
    kept = store.create_version("ds")                 # n0 stays live, n1 and n2 die
    store.put_files(f"ds:{kept.id}", [srcs[0]])
    store.delete_version(f"ds:{draft.id}")
    report = store.gc()
    assert report.repacked_packs >= 1 and mixed not in store.index.packs()
    assert not store.index.pack_objects(mixed)        # no row names the retired pack
    assert store.index.locate(keep)[0] != mixed and store.objects.read(keep) == \
        srcs[0].read_bytes()
    assert not store.objects.has(b3(srcs[1].read_bytes()))
    assert others <= {oid for oid, _p, _k in store.index.packed_oids()}
    assert store.verify().ok
    pack = store.index.locate(keep)[0]
    path = store.objects.pack_path(pack)
    good = store.index.pack_objects(pack)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF                                  # the table's trailer: unreadable
    store.objects.delete_pack(pack)
    path.write_bytes(bytes(data))
    assert maintenance._pack_rows(store.core, pack) == good



def test_gc_forgets_a_row_naming_a_retired_pack_that_its_table_does_not_list(
        store_dir, tmp_path: Path) -> None:
    """A damaged index names a pack for an object the pack's own table does not list:
    gc counts the rows naming each pack in its pass, reads that pack's rows by a scan,
    and leaves no row naming the pack it retires (looked up by the table alone, the row
    outlived it)."""
    store, _root = store_dir
    store.commit("first")
    draft = store.create_version("ds")
    src = tmp_path / "n.bin"
    src.write_bytes(random.Random(5).randbytes(3000))
    store.put_files(f"ds:{draft.id}", [src])
    pack = store.index.locate(b3(src.read_bytes()))[0]
    stray = b3(b"in no pack's table")
    with store.index.transaction():
        store.index.conn.execute("INSERT INTO objects SELECT ?, num, 8, 10, 1 FROM packs "
                                 "WHERE id=?", (stray, pack))
    store.delete_version(f"ds:{draft.id}")
    report = store.gc()
    assert pack not in store.index.packs()
    assert store.index.pack_objects(pack) == []
    assert store.index.locate(stray) is None
    assert report.removed_objects >= 2
    assert store.verify().ok


def _new_trees(store: dsv.Store, before: set[str]) -> set[str]:
    from dsv import tree
    v = store.resolve("ds:latest")
    return {oid for kind, oid in tree.subtree_ids(v.tree, store.read_tree)
            if kind == tree.DIR and oid not in before}


def test_one_changed_file_adds_little_metadata(tmp_path: Path) -> None:
    """SPEC §3: changing k files of an N-file dataset stores O(k·depth) metadata, not O(N)."""
    from dsv import tree
    root = tmp_path / "ds"
    n_dirs, per_dir = 20, 100
    rnd = random.Random(4)
    for d in range(n_dirs):
        sub = root / f"dir{d:02d}"
        sub.mkdir(parents=True)
        for i in range(per_dir):
            (sub / f"file{i:04d}.bin").write_bytes(rnd.randbytes(64))
    with dsv.init(root) as store:
        v1 = store.commit("2,000 files")
        assert v1.files == n_dirs * per_dir
        trees_v1 = {oid for kind, oid in tree.subtree_ids(v1.tree, store.read_tree)
                    if kind == tree.DIR}
        assert len(trees_v1) == n_dirs + 1
        size_before = dsv_size(root)
        (root / "dir07" / "file0042.bin").write_bytes(b"changed content")
        v2 = store.commit("one file changed")
        grown = dsv_size(root) - size_before
        assert grown < 64 * 1024, f".dsv grew by {grown} bytes for a one-file change"
        assert len(_new_trees(store, trees_v1)) == 2  # the root and dir07, nothing else
        diff = store.diff(f"ds:{v1.id}", f"ds:{v2.id}")
        assert diff.modified == ["dir07/file0042.bin"] and not diff.added and not diff.deleted
        with store.open_file("ds:latest", "dir07/file0042.bin") as f:
            assert f.read() == b"changed content"
        assert store.verify().ok


def test_gc_never_reports_more_freed_than_a_pack_holds(store_dir, tmp_path: Path) -> None:
    """A damaged index row's length (another hand wrote 10**12) must not reach the report:
    a pack frees at most its file's size."""
    store, root = store_dir
    junk = _junk_left_by_a_deleted_draft(store, tmp_path, 10)
    pack = store.objects.locate_many([b3(junk)])[b3(junk)][0]
    pack_size = store.objects.pack_path(pack).stat().st_size
    with sqlite3.connect(root / ".dsv" / "index.db") as other:
        other.execute("UPDATE objects SET length=? WHERE oid=?", (10**12, b3(junk)))
    report = store.gc()
    assert report.removed_objects >= 1
    assert len(junk) <= report.freed_bytes <= pack_size
    assert not store.objects.has(b3(junk))
    assert store.verify().ok
