"""Unit tests of dsv/index.py: the Index class on a real SQLite file under tmp_path, one
group of queries at a time, and what SQLite's failures mean (`index_error`): a damaged
file, a busy one, one that cannot be opened or written (the read-only fallback)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from dsv import Dataset, Version
from dsv.errors import IndexBusy, IndexDamaged, IndexUnwritable, StoreLocked
from dsv.index import SCHEMA_VERSION, Index, index_error
from dsv.objects import KIND_BLOB, KIND_TREE, KIND_VERSION, Ingest, ObjectStore, PackEntry

REPO = Path(__file__).resolve().parents[1]


def h(data: bytes | str) -> str:
    return blake3.blake3(data.encode() if isinstance(data, str) else data).hexdigest()


TREE = h("tree")


def dataset(ds_id: str = "ds000001", name: str = "mnist", path: str | None = "data/mnist",
            **kw) -> Dataset:
    fields = dict(id=ds_id, name=name, path=path, description=None, created=1000.0,
                  latest=None, head=None, cache_tree=None)
    fields.update(kw)
    return Dataset(**fields)


def version(vid: str, ds: str = "ds000001", **kw) -> Version:
    fields = dict(id=vid, dataset=ds, state="draft", tree=TREE, parents=[], message=None,
                  author=None, created=2000.0, committed=None, record=None, lineage=None,
                  size=0, files=0)
    fields.update(kw)
    return Version(**fields)


def committed(vid: str, at: float, ds: str = "ds000001", parents: list[str] | None = None,
              **kw) -> Version:
    return version(vid, ds, state="committed", committed=at, created=at - 1,
                   record=h("record " + vid), parents=parents or [], **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


@pytest.fixture
def index(db: Path):
    idx = Index(db)
    idx.create_schema()
    yield idx
    idx.close()


@pytest.fixture
def two(index: Index) -> Index:
    """Two datasets: mnist (ds000001) and cifar (ds000002)."""
    index.insert_dataset(dataset())
    index.insert_dataset(dataset("ds000002", "cifar", "data/cifar"))
    return index


# ---- opening and the schema ----------------------------------------------------------------

def test_a_new_file_has_no_schema_until_it_is_created(db: Path) -> None:
    idx = Index(db)
    assert db.is_file() and idx.schema_version() is None and not idx.read_only
    idx.create_schema()
    assert idx.schema_version() == SCHEMA_VERSION == 11
    idx.insert_dataset(dataset())
    idx.create_schema()                       # idempotent: keeps what is there
    assert idx.schema_version() == 11 and [d.id for d in idx.datasets()] == ["ds000001"]
    idx.close()


def test_a_schema_6_index_gains_the_chunks_of_imports(db: Path) -> None:
    """Schema 7 adds `imported.chunks`; rows written before it read as stored whole."""
    idx = Index(db)
    idx.create_schema()
    idx.conn.execute("ALTER TABLE imported DROP COLUMN chunks")
    idx.conn.execute("INSERT INTO imported (source, oid, size) VALUES ('b/k@e', ?, 5)",
                     ("a" * 64,))
    idx.conn.execute("UPDATE meta SET value='6' WHERE key='schema'")
    idx.create_schema()
    assert idx.schema_version() == 11
    assert idx.imported(["b/k@e"]) == {"b/k@e": ("a" * 64, 5, "")}
    idx.add_imported([("b/big@e", "b" * 64, 9 << 20, "c" * 64)])
    assert idx.imported_oids() == {"a" * 64, "c" * 64}
    assert idx.imported_chunk_lists() == {"c" * 64}
    idx.close()


def old_remote_tables(idx: Index, count: bool) -> None:
    """Give `idx` the remote pack tables of schema 9 (`count`) or 7 (without it): rows
    naming their remote pack by id."""
    for sql in ("DROP VIEW remote_object_rows", "DROP TABLE remote_objects",
                "DROP TABLE remote_packs",
                "CREATE TABLE remote_objects (remote TEXT NOT NULL, oid TEXT NOT NULL, pack "
                "TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, kind INTEGER "
                "NOT NULL, PRIMARY KEY (remote, oid)) WITHOUT ROWID",
                "CREATE TABLE remote_packs (remote TEXT NOT NULL, pack TEXT NOT NULL, size "
                f"INTEGER NOT NULL, {'count INTEGER, ' if count else ''}"
                "PRIMARY KEY (remote, pack)) WITHOUT ROWID"):
        idx.conn.execute(sql)


def test_a_schema_7_index_keeps_its_remote_pack_counts_without_the_pack_index(db: Path
                                                                              ) -> None:
    """Schema 8 keeps each remote pack's entry count in `remote_packs` (filled from the
    rows when an older store is opened) and drops `remote_objects`' index by pack."""
    idx = Index(db)
    idx.create_schema()
    old_remote_tables(idx, count=False)
    idx.conn.execute("CREATE INDEX remote_objects_pack ON remote_objects(remote, pack)")
    for pack, n in ((h("p1"), 3), (h("p2"), 5)):
        idx.conn.execute("INSERT INTO remote_packs VALUES ('origin', ?, 100)", (pack,))
        for e in entries(pack, n):
            idx.conn.execute("INSERT INTO remote_objects VALUES ('origin', ?, ?, ?, ?, ?)",
                             (e.oid, pack, e.offset, e.length, e.kind))
    idx.conn.execute("UPDATE meta SET value='7' WHERE key='schema'")
    idx.create_schema()
    assert idx.schema_version() == 11
    assert idx.remote_pack_counts("origin") == {h("p1"): 3, h("p2"): 5}
    assert idx.conn.execute("SELECT name FROM sqlite_master WHERE name='remote_objects_pack'"
                            ).fetchone() is None
    with idx.transaction():
        idx.forget_remote_packs("origin", [h("p1")])
    assert idx.remote_packs("origin") == {h("p2"): 100}
    assert idx.conn.execute("SELECT count(*) FROM remote_objects").fetchone() == (5,)
    idx.close()


def test_a_migration_cut_short_fills_the_counts_when_run_again(db: Path) -> None:
    """Killed after it added the column (or raced by a second process): the next open
    still fills the counts from the rows, while the old index by pack stands."""
    idx = Index(db)
    idx.create_schema()
    old_remote_tables(idx, count=True)
    idx.conn.execute("INSERT INTO remote_packs VALUES ('origin', ?, 100, NULL)", (h("p1"),))
    idx.conn.executemany("INSERT INTO remote_objects VALUES ('origin', ?, ?, ?, ?, ?)",
                         [(e.oid, h("p1"), e.offset, e.length, e.kind)
                          for e in entries("p1", 4)])
    idx.conn.execute("CREATE INDEX remote_objects_pack ON remote_objects(remote, pack)")
    idx.conn.execute("UPDATE meta SET value='7' WHERE key='schema'")
    idx.create_schema()
    idx.create_schema()                                   # (again: nothing changes)
    assert idx.remote_pack_counts("origin") == {h("p1"): 4}
    assert idx.schema_version() == 11
    idx.close()


def test_packs_whose_recording_failed_leave_nothing_behind(index: Index) -> None:
    """A refresh that fails part way through its packs (its error caught by a caller
    inside a wider transaction) records none of them: never a pack without its rows,
    and nothing it staged joins the next call's packs."""
    def failing() -> Iterator[tuple[str, list[PackEntry], int]]:
        yield h("a"), entries("a", 3), 10
        raise OSError("the remote went away")
    with index.transaction():
        with pytest.raises(OSError):
            with index.transaction():
                index.add_remote_packs("origin", failing())
        index.add_remote_packs("backup", [(h("b"), entries("b", 2), 20)])
    assert index.remote_packs("origin") == {} and index.remote_pack_counts("origin") == {}
    assert index.remote_locate_many("origin", [e.oid for e in entries("a", 3)]) == {}
    assert index.remote_packs("backup") == {h("b"): 20}
    assert index.conn.execute("SELECT count(*) FROM remote_objects").fetchone() == (2,)

    def going() -> Iterator[str]:
        yield h("b")
        yield from (h(f"other {i}") for i in range(2000))      # (past one statement)
        raise OSError("interrupted")
    with index.transaction():
        with pytest.raises(OSError):
            index.forget_remote_packs("backup", going())
        index.forget_remote_packs("backup", [])                  # nothing left to forget
    assert index.remote_packs("backup") == {h("b"): 20}


def test_connection_settings_and_tables(index: Index) -> None:
    assert index.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert index.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {r[0] for r in index.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "datasets", "versions", "tags", "packs", "objects", "statcache", "checkouts",
            "imported", "remotes", "remote_objects", "remote_packs", "remote_loose",
            "remote_refs", "promised"} <= tables


def test_data_survives_close_and_reopen(db: Path, index: Index) -> None:
    index.insert_dataset(dataset())
    index.insert_version(version("v000000001"))
    index.checkpoint()
    index.close()
    again = Index(db)
    assert again.dataset_by("id", "ds000001") == dataset()
    assert again.version("v000000001") == version("v000000001")
    again.close()
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


# ---- datasets ------------------------------------------------------------------------------

def test_insert_and_get_a_dataset_by_id_name_and_path(index: Index) -> None:
    ds = dataset(description="handwritten digits", latest=None, head=None)
    index.insert_dataset(ds)
    for column, value in (("id", "ds000001"), ("name", "mnist"), ("path", "data/mnist")):
        got = index.dataset_by(column, value)
        assert got == ds and isinstance(got, Dataset)
    assert index.dataset_by("name", "MNIST") is None
    assert index.dataset_by("id", "nope") is None
    with pytest.raises(AssertionError):
        index.dataset_by("description", "handwritten digits")


def test_datasets_are_listed_by_name(two: Index) -> None:
    two.insert_dataset(dataset("ds000003", "b-set", None))
    assert [d.name for d in two.datasets()] == ["b-set", "cifar", "mnist"]


def test_names_and_paths_are_unique_but_many_datasets_may_be_unbound(two: Index) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        two.insert_dataset(dataset("ds000009", "mnist", "elsewhere"))
    with pytest.raises(sqlite3.IntegrityError):
        two.insert_dataset(dataset("ds000009", "other", "data/mnist"))
    with pytest.raises(sqlite3.IntegrityError):
        two.insert_dataset(dataset("ds000001", "other", "elsewhere"))
    two.insert_dataset(dataset("ds000003", "u1", None))
    two.insert_dataset(dataset("ds000004", "u2", None))
    assert len(two.datasets()) == 4


def test_rename_a_dataset(two: Index) -> None:
    two.update_dataset("ds000001", name="digits")
    assert two.dataset_by("name", "mnist") is None
    assert two.dataset_by("name", "digits").id == "ds000001"
    with pytest.raises(sqlite3.IntegrityError):
        two.update_dataset("ds000001", name="cifar")
    assert two.dataset_by("id", "ds000001").name == "digits"


def test_update_dataset_fields_and_refuse_unknown_ones(two: Index) -> None:
    two.update_dataset("ds000002", description="tiny images", path=None, head="v1",
                       latest="v1", cache_tree=TREE)
    assert two.dataset_by("id", "ds000002") == dataset(
        "ds000002", "cifar", None, description="tiny images", head="v1", latest="v1",
        cache_tree=TREE)
    assert two.dataset_by("id", "ds000001") == dataset()     # the other one is untouched
    with pytest.raises(AssertionError):
        two.update_dataset("ds000002", created=5.0)


def test_delete_a_dataset_takes_its_versions_tags_stat_rows_and_promises(two: Index) -> None:
    for ds in ("ds000001", "ds000002"):
        vid = f"v{ds[-1]}00000000"
        two.insert_version(committed(vid, 3000.0, ds))
        two.update_dataset(ds, latest=vid, head=vid)
        two.set_tag(ds, "v1", vid)
        two.put_stat_rows(ds, [("a.txt", (1, 2, 3, 0o644, h("a"), 4))])
        two.add_promised(vid, "origin")
    two.delete_dataset("ds000001")
    assert two.dataset_by("id", "ds000001") is None
    assert two.version("v100000000") is None and two.versions("ds000001") == []
    assert [t[:3] for t in two.tags()] == [("ds000002", "v1", "v200000000")]
    assert two.stat_cache("ds000001") == {}
    assert two.promised() == {"v200000000": "origin"}
    # The other dataset keeps everything.
    assert two.dataset_by("id", "ds000002").latest == "v200000000"
    assert two.stat_cache("ds000002") == {"a.txt": (1, 2, 3, 0o644, h("a"), 4)}


# ---- versions ------------------------------------------------------------------------------

def test_insert_and_get_a_version_with_every_field(two: Index) -> None:
    v = version("abcdef0123", state="committed", parents=["p000000001", "p000000002"],
                message="first — ünïcode", author="tester <t@example.com>", created=10.5,
                committed=11.25, record=h("rec"), lineage={"command": ["make"], "inputs": {}},
                size=12345, files=7)
    two.insert_version(v)
    got = two.version("abcdef0123")
    assert got == v and isinstance(got, Version)
    assert got.tags == [] and not got.is_draft
    assert two.version("abcdef012") is None and two.version("nope") is None
    assert two.all_versions() == [v]


def test_a_version_needs_an_existing_dataset(two: Index) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        two.insert_version(version("v000000001", ds="ds999999"))
    two.insert_version(version("v000000001"))
    with pytest.raises(sqlite3.IntegrityError):
        two.insert_version(version("v000000001"))            # ids are unique


def test_versions_by_id_prefix(two: Index) -> None:
    for vid in ("abc1234567", "abc9999999", "abczzzzzzz", "abd0000000", "ab00000000"):
        two.insert_version(version(vid))
    two.insert_version(version("abc0000000", ds="ds000002"))
    assert sorted(two.versions_with_prefix("ds000001", "abc")) == [
        "abc1234567", "abc9999999", "abczzzzzzz"]
    assert two.versions_with_prefix("ds000001", "abc1234567") == ["abc1234567"]
    assert two.versions_with_prefix("ds000001", "abc12345678") == []
    assert two.versions_with_prefix("ds000001", "abe") == []
    assert sorted(two.versions_with_prefix("ds000001", "ab")) == [
        "ab00000000", "abc1234567", "abc9999999", "abczzzzzzz", "abd0000000"]
    assert len(two.versions_with_prefix("ds000001", "")) == 5
    assert two.versions_with_prefix("ds000002", "abc") == ["abc0000000"]


def test_versions_listed_newest_first_and_by_state(two: Index) -> None:
    two.insert_version(committed("c000000001", 100.0))
    two.insert_version(committed("c000000003", 300.0, parents=["c000000001"]))
    two.insert_version(committed("c000000002", 200.0))
    two.insert_version(version("d000000001", created=250.0))
    two.insert_version(version("d000000000", created=250.0))     # a tie: by id
    two.insert_version(committed("x000000001", 999.0, ds="ds000002"))
    assert [v.id for v in two.versions("ds000001")] == [
        "c000000003", "d000000000", "d000000001", "c000000002", "c000000001"]
    assert [v.id for v in two.versions("ds000001", "committed")] == [
        "c000000003", "c000000002", "c000000001"]
    assert [v.id for v in two.versions("ds000001", "draft")] == ["d000000000", "d000000001"]
    assert [v.id for v in two.versions("ds000002")] == ["x000000001"]
    assert two.versions("ds000001", "nonsense") == []


def test_latest_is_recorded_on_the_dataset_and_is_the_newest_committed(two: Index) -> None:
    assert two.dataset_by("id", "ds000001").latest is None
    two.insert_version(committed("c000000001", 100.0))
    two.insert_version(committed("c000000002", 200.0, parents=["c000000001"]))
    two.update_dataset("ds000001", latest="c000000002", head="c000000001")
    ds = two.dataset_by("name", "mnist")
    assert (ds.latest, ds.head) == ("c000000002", "c000000001")
    assert two.versions("ds000001", "committed")[0].id == ds.latest


def test_commit_a_draft_by_updating_it(two: Index) -> None:
    two.insert_version(committed("c000000001", 100.0))
    two.insert_version(version("d000000001", parents=["c000000001"], message="wip"))
    two.update_version("d000000001", state="committed", committed=500.0, record=h("r"),
                       tree=h("t2"), message="done", size=9, files=2,
                       parents=["c000000001"], lineage={"import": {"source": "s3://b/p"}})
    v = two.version("d000000001")
    assert (v.state, v.committed, v.record, v.tree, v.message, v.size, v.files) == \
        ("committed", 500.0, h("r"), h("t2"), "done", 9, 2)
    assert v.parents == ["c000000001"] and v.lineage == {"import": {"source": "s3://b/p"}}
    two.update_version("d000000001", lineage=None)
    assert two.version("d000000001").lineage is None
    with pytest.raises(AssertionError):
        two.update_version("d000000001", dataset="ds000002")
    with pytest.raises(sqlite3.IntegrityError):
        two.update_version("d000000001", parents=None)          # NOT NULL


def test_an_empty_lineage_survives_insert_like_it_survives_update(two: Index) -> None:
    two.insert_version(version("v000000001", lineage={}))
    two.insert_version(version("v000000002"))
    two.update_version("v000000002", lineage={})
    assert two.version("v000000002").lineage == {}
    assert two.version("v000000001").lineage == {}


def test_children_and_delete_version(two: Index) -> None:
    two.insert_version(committed("c000000001", 100.0))
    two.insert_version(committed("c000000002", 200.0, parents=["c000000001"]))
    two.insert_version(version("d000000001", parents=["c000000001", "c000000002"]))
    assert sorted(two.children("c000000001")) == ["c000000002", "d000000001"]
    assert two.children("c000000002") == ["d000000001"]
    assert two.children("d000000001") == []
    two.set_tag("ds000001", "v2", "c000000002")
    two.add_promised("c000000002", "origin")
    two.delete_version("c000000002")
    assert two.version("c000000002") is None
    assert two.tag("ds000001", "v2") is None and two.promised() == {}
    assert two.children("c000000001") == ["d000000001"]


def test_a_malformed_json_cell_is_damage(two: Index, db: Path) -> None:
    two.insert_version(version("v000000001"))
    two.conn.execute("UPDATE versions SET parents='[not json' WHERE id='v000000001'")
    with pytest.raises(sqlite3.DatabaseError, match="malformed JSON in the row of version "
                                                    "'v000000001'") as info:
        two.version("v000000001")
    err = index_error(info.value, db)
    assert isinstance(err, IndexDamaged)
    assert err.message.startswith(f"the index {db} is damaged (malformed JSON")
    assert "dsv index rebuild" in err.hint


# ---- tags ----------------------------------------------------------------------------------

def test_tags_set_get_list_move_and_delete(two: Index) -> None:
    for vid, at in (("c000000001", 100.0), ("c000000002", 200.0)):
        two.insert_version(committed(vid, at))
    two.insert_version(committed("x000000001", 100.0, ds="ds000002"))
    two.set_tag("ds000001", "v1", "c000000001")
    two.set_tag("ds000001", "best", "c000000001")
    two.set_tag("ds000002", "v1", "x000000001")           # same name, other dataset
    assert two.tag("ds000001", "v1") == "c000000001"
    assert two.tag("ds000002", "v1") == "x000000001"
    assert two.tag("ds000001", "nope") is None
    assert [(d, n, v) for d, n, v, _ in two.tags("ds000001")] == [
        ("ds000001", "best", "c000000001"), ("ds000001", "v1", "c000000001")]
    assert [(d, n) for d, n, _, _ in two.tags()] == [
        ("ds000001", "best"), ("ds000001", "v1"), ("ds000002", "v1")]
    assert two.tags_of("c000000001") == ["best", "v1"]
    # Setting an existing tag moves it (the caller decides whether that is allowed).
    two.set_tag("ds000001", "v1", "c000000002")
    assert two.tag("ds000001", "v1") == "c000000002"
    assert two.tags_of("c000000001") == ["best"] and two.tags_of("c000000002") == ["v1"]
    assert two.delete_tag("ds000001", "v1") is True
    assert two.delete_tag("ds000001", "v1") is False
    assert two.tag("ds000001", "v1") is None and two.tag("ds000002", "v1") == "x000000001"


def test_a_tag_must_name_an_existing_version_and_dataset(two: Index) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        two.set_tag("ds000001", "v1", "nosuchvers")
    two.insert_version(committed("c000000001", 100.0))
    with pytest.raises(sqlite3.IntegrityError):
        two.set_tag("ds999999", "v1", "c000000001")
    assert two.tags() == []


# ---- stat cache ----------------------------------------------------------------------------

ROW_A = (5, 1_700_000_000_000_000_000, 42, 0o644, h("a"), 1_700_000_001_000_000_000)
ROW_B = (0, 1_600_000_000_000_000_000, 43, 0o755, h(""), 1_600_000_001_000_000_000)


def test_stat_rows_put_read_replace_and_drop(two: Index) -> None:
    two.put_stat_rows("ds000001", [("a.txt", ROW_A), ("sub/b", ROW_B)])
    two.put_stat_rows("ds000002", [("a.txt", ROW_B)])
    assert two.stat_cache("ds000001") == {"a.txt": ROW_A, "sub/b": ROW_B}
    assert two.stat_keys("ds000001") == {"a.txt": ROW_A[:4] + ROW_A[5:],
                                         "sub/b": ROW_B[:4] + ROW_B[5:]}
    two.put_stat_rows("ds000001", [("a.txt", ROW_B)])         # replaced, not duplicated
    assert two.stat_cache("ds000001")["a.txt"] == ROW_B
    two.drop_stat_rows("ds000001", ["a.txt", "not/there"])
    assert two.stat_cache("ds000001") == {"sub/b": ROW_B}
    assert two.stat_cache("ds000002") == {"a.txt": ROW_B}


def test_clear_stat_cache_also_withdraws_the_vouched_tree(two: Index) -> None:
    for ds in ("ds000001", "ds000002"):
        two.put_stat_rows(ds, [("a.txt", ROW_A)])
        two.update_dataset(ds, cache_tree=TREE)
    two.clear_stat_cache("ds000001")
    assert two.stat_cache("ds000001") == {} and two.dataset_by("id", "ds000001").cache_tree is None
    assert two.stat_cache("ds000002") == {"a.txt": ROW_A}
    assert two.dataset_by("id", "ds000002").cache_tree == TREE


def test_forget_unstored_drops_rows_naming_dead_objects(two: Index) -> None:
    two.put_stat_rows("ds000001", [("a.txt", ROW_A), ("b", ROW_B)])
    two.put_stat_rows("ds000002", [("c", ROW_A)])
    for ds in ("ds000001", "ds000002"):
        two.update_dataset(ds, cache_tree=TREE)
    two.forget_unstored({h("other")}, {h("a")})   # (in any of the sets: kept)
    assert two.stat_cache("ds000001") == {"a.txt": ROW_A}
    assert two.stat_cache("ds000002") == {"c": ROW_A}
    assert [d.cache_tree for d in two.datasets()] == [None, None]
    two.update_dataset("ds000001", cache_tree=TREE)
    two.forget_unstored({h("a")})                    # nothing to drop: nothing withdrawn
    assert two.dataset_by("id", "ds000001").cache_tree == TREE


# ---- packs: where an object lives --------------------------------------------------------------

def entries(tag: str, n: int, start: int = 8) -> list[PackEntry]:
    out, offset = [], start
    for i in range(n):
        out.append(PackEntry(h(f"{tag}{i}"), offset, 10 + i % 5, i % 3))
        offset += 10 + i % 5
    return out


def test_add_pack_then_locate_its_objects(index: Index) -> None:
    p1, p2 = h("pack1"), h("pack2")
    e1, e2 = entries("a", 3), entries("b", 2)
    index.add_pack(p1, 1000, e1)
    index.add_pack(p2, 500, e2)
    assert index.packs() == {p1: (1000, 3), p2: (500, 2)}
    for pack, es in ((p1, e1), (p2, e2)):
        for e in es:
            assert index.locate(e.oid) == (pack, e.offset, e.length)
        assert index.pack_objects(pack) == [(e.oid, e.offset, e.length, e.kind) for e in es]
    assert index.locate(h("nothing")) is None
    assert index.locate_many([e1[0].oid, h("nothing"), e2[1].oid]) == {
        e1[0].oid: (p1, e1[0].offset, e1[0].length), e2[1].oid: (p2, e2[1].offset, e2[1].length)}
    assert sorted(index.packed_oids()) == sorted(
        [(e.oid, p1, e.kind) for e in e1] + [(e.oid, p2, e.kind) for e in e2])


def test_locate_many_beyond_one_sql_batch(index: Index) -> None:
    es = entries("x", 1234)
    index.add_pack(h("big"), 99, es)
    found = index.locate_many([e.oid for e in es] + [h("absent")])
    assert len(found) == 1234
    assert all(found[e.oid] == (h("big"), e.offset, e.length) for e in es)
    assert index.locate_many([]) == {}


@pytest.mark.parametrize("packed", [True, False], ids=["one-step", "row-by-row"])
def test_bulk_rows_go_in_and_come_out_whole_either_way(two: Index, packed: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written by many-row statements and read back by one JSON step each (or row by
    row, on an SQLite without JSON functions) are the same rows: over several statements,
    with text that JSON must escape, negative and 64-bit numbers."""
    from dsv.index import _has_json
    assert _has_json()   # (so that "one-step" runs the JSON path here)
    monkeypatch.setattr("dsv.index._JSON", packed)
    index = two
    odd = ['quote"back\\slash', "tab\tnew\nline", "ünï 漢字 \u2028", "ctl\x01"]
    paths = [f"d/{i:05d}" for i in range(2345)] + odd
    rows = {p: (i, -(1 << 62) + i, (1 << 63) - 1 - i, 0o100644, h(p), i)
            for i, p in enumerate(paths)}
    index.put_stat_rows("ds000001", rows.items())   # more rows than one statement binds
    assert index.stat_cache("ds000001") == rows
    some = paths[::7] + odd + ["d/absent"]
    assert index.stat_rows_at("ds000001", some) == {p: rows[p] for p in some if p in rows}
    es = entries("bulk", 2100)
    index.add_pack(h("bulk"), 5, es)
    assert index.locate_many(e.oid for e in es) == {e.oid: (h("bulk"), e.offset, e.length)
                                                     for e in es}
    assert index.pack_objects(h("bulk")) == [(e.oid, e.offset, e.length, e.kind) for e in es]


def test_values_json_cannot_carry_are_read_row_by_row(index: Index, db: Path) -> None:
    """A BLOB or a REAL where the index keeps text or integers (another hand damaged
    it) comes back as SQLite holds it, as row by row, for the callers' checks to report
    as damage: not a JSON error, and not a value JSON reshaped."""
    es = entries("odd", 3)
    index.add_pack(h("p"), 100, es)
    other = sqlite3.connect(db)
    with other:
        other.execute("UPDATE objects SET length=? WHERE oid=?", (b"\x00\x06", es[0].oid))
        other.execute("UPDATE objects SET length=9e999 WHERE oid=?", (es[1].oid,))
    other.close()
    found = index.locate_many(e.oid for e in es)
    assert found == {es[0].oid: (h("p"), es[0].offset, b"\x00\x06"),
                     es[1].oid: (h("p"), es[1].offset, float("inf")),
                     es[2].oid: (h("p"), es[2].offset, es[2].length)}


def test_stat_rows_past_64_bits_are_not_cached(two: Index) -> None:
    """A file dated past 2262 or an inode number past 2**63 does not fit SQLite's
    integers: its row is left out of the cache (hashed again next time), the rest kept."""
    late = (3, 10_500_000_000_000_000_000, 7, 0o100644, h("late"), 1)
    big_ino = (3, 5, 1 << 63, 0o100644, h("ino"), 1)
    two.put_stat_rows("ds000001", [("late", late), ("ino", big_ino), ("a.txt", ROW_A)])
    two.stage_stat_rows([("late", late), ("b", ROW_B)], first=True)
    two.put_staged_stat_rows("ds000001")
    assert two.stat_cache("ds000001") == {"a.txt": ROW_A, "b": ROW_B}


def test_an_object_in_two_packs_keeps_its_first_location(index: Index) -> None:
    shared = PackEntry(h("shared"), 8, 6, KIND_BLOB)
    index.add_pack(h("p1"), 100, [shared])
    index.add_pack(h("p2"), 200, [PackEntry(h("shared"), 20, 6, KIND_BLOB),
                                  PackEntry(h("own"), 26, 3, KIND_TREE)])
    assert index.locate(h("shared")) == (h("p1"), 8, 6)
    assert index.packs()[h("p2")] == (200, 2)
    assert index.pack_objects(h("p2")) == [(h("own"), 26, 3, KIND_TREE)]
    index.add_pack(h("p1"), 999, [])                 # recording a pack again changes nothing
    assert index.packs()[h("p1")] == (100, 1)
    index.delete_pack(h("p1"))
    assert index.locate(h("shared")) is None and h("p1") not in index.packs()
    assert index.locate(h("own")) == (h("p2"), 26, 3)


def test_a_packs_rows_are_found_by_its_own_table_and_forgotten_by_oid(index: Index) -> None:
    """Without an index by pack: the rows placing objects in a pack are looked up by the
    oids its own table lists (those placed elsewhere are not its rows), several packs
    come from one pass, and forgetting a pack by its oids leaves other packs' rows."""
    shared = PackEntry(h("shared"), 8, 6, KIND_BLOB)
    index.add_pack(h("p1"), 100, [shared])
    own = entries("own", 700)                      # (more than one IN batch)
    index.add_pack(h("p2"), 200, [PackEntry(h("shared"), 0, 6, KIND_BLOB), *own])
    listed = [h("shared")] + [e.oid for e in own] + [h("never")]
    want = [(e.oid, e.offset, e.length, e.kind) for e in own]
    assert index.pack_rows_among(h("p2"), reversed(listed)) == want
    assert index.packs_objects([h("p1"), h("p2"), h("none")]) == {
        h("p1"): [(h("shared"), 8, 6, KIND_BLOB)], h("p2"): want, h("none"): []}
    with index.transaction():
        index.delete_pack(h("p2"), listed)
    assert h("p2") not in index.packs() and index.locate(own[0].oid) is None
    assert index.locate(h("shared")) == (h("p1"), 8, 6)
    assert index.conn.execute("SELECT count(*) FROM objects").fetchone() == (1,)


def unnumbered(idx: Index, schema: int,
               packs: dict[str, list[PackEntry]]) -> None:
    """Give `idx` the `packs` and `objects` tables of schemas 9 and older (object rows
    naming their pack by id) holding `packs`, stamped `schema`."""
    for sql in ("DROP VIEW object_rows", "DROP TABLE objects", "DROP TABLE packs",
                "CREATE TABLE [packs] ([id] TEXT PRIMARY KEY, [size] INTEGER, "
                "[count] INTEGER, [created] FLOAT)",
                "CREATE TABLE objects (oid TEXT PRIMARY KEY, pack TEXT NOT NULL, offset "
                "INTEGER NOT NULL, length INTEGER NOT NULL, kind INTEGER NOT NULL) "
                "WITHOUT ROWID"):
        idx.conn.execute(sql)
    for pack, found in packs.items():
        idx.conn.execute("INSERT INTO packs VALUES (?, 100, ?, 1.0)", (pack, len(found)))
        idx.conn.executemany("INSERT OR IGNORE INTO objects VALUES (?,?,?,?,?)",
                             [(e.oid, pack, e.offset, e.length, e.kind) for e in found])
    idx.conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(schema),))


def test_a_schema_8_index_loses_its_index_of_objects_by_pack(db: Path) -> None:
    """Schema 9 drops `objects_pack`; the rows stay and are found as before."""
    idx = Index(db)
    idx.create_schema()
    unnumbered(idx, 8, {h("p"): entries("p", 3)})
    idx.conn.execute("CREATE INDEX objects_pack ON objects(pack)")
    idx.create_schema()
    assert idx.schema_version() == 11
    assert idx.conn.execute("SELECT name FROM sqlite_master WHERE name='objects_pack'"
                            ).fetchone() is None
    assert idx.pack_objects(h("p")) == [(e.oid, e.offset, e.length, e.kind)
                                        for e in entries("p", 3)]
    idx.close()


def test_a_schema_9_index_numbers_its_packs(db: Path) -> None:
    """Schema 10: object rows name their pack by number. Migrating keeps every row that
    names a known pack (where it was), drops one naming none, and is done once; numbers
    are never reused, so no stray row can come to name a later pack."""
    idx = Index(db)
    idx.create_schema()
    one, two = entries("p1", 3), entries("p2", 4, start=100)
    unnumbered(idx, 9, {h("p1"): one, h("p2"): two})
    idx.conn.execute("INSERT INTO objects VALUES (?, ?, 8, 10, 1)", (h("stray"), h("gone")))
    # (damage an old table took: a pack row without an id; it aborted the migration)
    idx.conn.execute("INSERT INTO packs VALUES (NULL, 100, 1, 1.0)")
    idx.create_schema()
    assert idx.schema_version() == 11
    assert idx.packs() == {h("p1"): (100, 3), h("p2"): (100, 4)}
    assert idx.locate_many(e.oid for e in one + two) == {
        e.oid: (p, e.offset, e.length) for p, es in ((h("p1"), one), (h("p2"), two))
        for e in es}
    assert idx.locate(h("stray")) is None
    assert idx.conn.execute("SELECT count(*) FROM objects").fetchone() == (7,)
    assert dict(idx.conn.execute("SELECT id, num FROM packs")) == {h("p1"): 1, h("p2"): 2}
    assert idx.conn.execute("PRAGMA freelist_count").fetchone() == (0,)   # vacuumed
    assert Path(f"{db}-wal").stat().st_size == 0          # and the WAL truncated after
    idx.create_schema()                                   # (again: nothing changes)
    assert idx.locate(one[0].oid) == (h("p1"), one[0].offset, one[0].length)
    idx.add_pack(h("p3"), 50, entries("p3", 2))
    with idx.transaction():
        idx.delete_pack(h("p3"))
    idx.add_pack(h("p4"), 50, entries("p4", 2))
    assert dict(idx.conn.execute("SELECT id, num FROM packs WHERE id=?", (h("p4"),))) == {
        h("p4"): 4}
    idx.close()


def test_a_row_naming_no_pack_number_is_packed_for_no_query(index: Index) -> None:
    """A damaged index's object row whose pack number names no pack is seen by no query
    (all read through `object_rows`): not located, not packed of its kind, not counted
    as packed for a push (which then looks for it elsewhere)."""
    index.add_pack(h("p"), 100, entries("p", 2))
    stray = h("stray")
    index.conn.execute("INSERT INTO objects VALUES (?, 999, 8, 10, 1)", (stray,))
    assert index.locate(stray) is None and index.packed_among([stray]) == {}
    assert index.packed_of_kind([stray], 1) == set()
    with index.transaction():
        index.conn.execute("DELETE FROM objects WHERE oid != ?", (stray,))
    assert index.any_packed() is False


def _written() -> int:
    """Bytes this process has written through system calls so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_recording_objects_writes_no_statement_journal(index: Index) -> None:
    """Object rows go in as INSERT OR IGNORE, which SQLite knows cannot fail half-way:
    it then saves no copy of the pages a statement changes. As an upsert, each
    statement of 200 random ids saved about 200 pages to a temp file first (a
    million-file clone wrote 5.8 GB so). Within a transaction whose pages all fit in
    SQLite's cache, nothing is written until the commit; before, the journal was."""
    index.add_pack(h("old"), 1 << 20, entries("old", 50_000))
    index.conn.execute("PRAGMA cache_size=-262144")   # (no dirty page spills to the WAL)
    with index.transaction():
        before = _written()
        index.add_pack(h("new"), 1 << 20, entries("new", 20_000))
        during = _written() - before
    assert during < 64 << 10, f"{during:,} bytes written before the commit"
    got = index.locate_many([e.oid for e in entries("new", 20_000)])
    assert len(got) == 20_000 and {pack for pack, _o, _l in got.values()} == {h("new")}


def test_a_row_naming_no_pack_gives_way_to_a_pack_that_holds_the_object(index: Index) -> None:
    """Such a row must not stop the object being recorded where it really is (verify's
    repair, a fetch): the new row replaces it. A row naming a pack that exists is kept
    (an object in two packs is read from the first)."""
    index.add_pack(h("p"), 100, entries("p", 2))
    stray, kept = entries("q", 2)
    index.conn.execute("INSERT INTO objects VALUES (?, 999, 8, 10, 1)", (stray.oid,))
    index.add_pack(h("q"), 100, [stray, PackEntry(entries("p", 1)[0].oid, 50, 7, 0), kept])
    assert index.locate(stray.oid) == (h("q"), stray.offset, stray.length)
    assert index.locate(kept.oid) == (h("q"), kept.offset, kept.length)
    first = entries("p", 1)[0]
    assert index.locate(first.oid) == (h("p"), first.offset, first.length)
    # The same for a remote's rows.
    index.add_remote_packs("origin", [(h("r"), entries("r", 1), 20)])
    index.conn.execute("INSERT INTO remote_objects VALUES ('origin', ?, 999, 8, 10, 1)",
                       (stray.oid,))
    assert index.remote_locate_many("origin", [stray.oid]) == {}
    index.add_remote_packs("origin", [(h("s"), [stray], 40)])
    assert index.remote_locate_many("origin", [stray.oid]) == {
        stray.oid: (h("s"), stray.offset, stray.length)}
    index.add_remote_packs("origin", [(h("t"), [stray], 40)])   # kept: its pack exists
    assert index.remote_locate_many("origin", [stray.oid]) == {
        stray.oid: (h("s"), stray.offset, stray.length)}
    # A row naming a pack of another remote (by its number) names none of its own.
    index.add_remote_packs("backup", [(h("u"), entries("u", 1), 20)])
    (num,), = index.conn.execute("SELECT num FROM remote_packs WHERE remote='backup'")
    other = entries("v", 1)[0]
    index.conn.execute("INSERT INTO remote_objects VALUES ('origin', ?, ?, 8, 10, 1)",
                       (other.oid, num))
    assert index.remote_locate_many("origin", [other.oid, stray.oid]) == {
        stray.oid: (h("s"), stray.offset, stray.length)}


def test_a_schema_9_index_numbers_its_remote_packs(db: Path) -> None:
    """The same for what the store knows of its remotes: each remote pack numbered, each
    row kept where it was (the same pack id on two remotes is two packs), a row naming no
    pack of its remote dropped."""
    idx = Index(db)
    idx.create_schema()
    old_remote_tables(idx, count=True)
    one, two = entries("p1", 3), entries("p2", 4, start=100)
    for remote, pack, found in (("origin", h("p1"), one), ("origin", h("p2"), two),
                                ("backup", h("p1"), one)):
        idx.conn.execute("INSERT INTO remote_packs VALUES (?, ?, 100, ?)",
                         (remote, pack, len(found)))
        idx.conn.executemany("INSERT INTO remote_objects VALUES (?,?,?,?,?,?)",
                             [(remote, e.oid, pack, e.offset, e.length, e.kind) for e in found])
    idx.conn.execute("INSERT INTO remote_objects VALUES ('backup', ?, ?, 8, 10, 1)",
                     (h("stray"), h("p2")))            # backup has no pack p2
    idx.conn.execute("UPDATE meta SET value='9' WHERE key='schema'")
    idx.create_schema()
    assert idx.remote_locate_many("origin", [e.oid for e in one + two]) == {
        e.oid: (p, e.offset, e.length) for p, es in ((h("p1"), one), (h("p2"), two))
        for e in es}
    assert idx.remote_locate_many("backup", [e.oid for e in one] + [h("stray")]) == {
        e.oid: (h("p1"), e.offset, e.length) for e in one}
    assert idx.remote_pack_counts("origin") == {h("p1"): 3, h("p2"): 4}
    assert idx.remote_pack_kinds("backup") == {h("p1"): {e.kind for e in one}}
    assert idx.conn.execute("SELECT count(*) FROM remote_objects").fetchone() == (10,)
    idx.create_schema()                                   # (again: nothing changes)
    with idx.transaction():
        idx.forget_remote_packs("origin", [h("p1")])
    assert idx.remote_packs("origin") == {h("p2"): 100}
    assert idx.remote_locate_many("backup", [one[0].oid]) == {
        one[0].oid: (h("p1"), one[0].offset, one[0].length)}
    assert idx.conn.execute("SELECT count(*) FROM remote_objects").fetchone() == (7,)
    idx.close()


def test_a_schema_9_index_that_cannot_be_written_is_read_as_it_is(db: Path) -> None:
    """No migration where the index cannot be written: its object rows, which name packs
    by id, are read through a view of the connection's own with schema 10's columns."""
    idx = Index(db)
    idx.create_schema()
    found = entries("p", 3)
    unnumbered(idx, 9, {h("p"): found})
    old_remote_tables(idx, count=True)
    idx.conn.execute("INSERT INTO remote_packs VALUES ('origin', ?, 100, 3)", (h("r"),))
    idx.conn.executemany("INSERT INTO remote_objects VALUES ('origin', ?, ?, ?, ?, ?)",
                         [(e.oid, h("r"), e.offset, e.length, e.kind) for e in found])
    idx.close()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = textwrap.dedent("""
        import json, resource, sys
        from dsv.index import Index
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))
        idx = Index(sys.argv[1])
        print(json.dumps({"read_only": idx.read_only, "schema": idx.schema_version(),
                          "where": idx.locate_many(sys.argv[2:]),
                          "there": idx.remote_locate_many("origin", sys.argv[2:]),
                          "rows": sorted(idx.packed_oids())}))
    """)
    r = subprocess.run([sys.executable, "-c", probe, str(db), *(e.oid for e in found)],
                       capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["read_only"], out["schema"]) == (True, 9)
    assert out["where"] == {e.oid: [h("p"), e.offset, e.length] for e in found}
    assert out["rows"] == sorted([e.oid, h("p"), e.kind] for e in found)
    assert out["there"] == {e.oid: [h("r"), e.offset, e.length] for e in found}
    with sqlite3.connect(db) as conn:   # untouched
        assert "pack" in {row[1] for row in conn.execute("PRAGMA table_info(objects)")}


def test_the_index_locates_what_an_ingest_wrote(index: Index, tmp_path: Path) -> None:
    root = tmp_path / "objects"
    ObjectStore.create_layout(root)
    (tmp_path / "tmp").mkdir()
    store = ObjectStore(root, index, tmp_path / "tmp")
    items = [(KIND_BLOB, b"one"), (KIND_BLOB, b""), (KIND_TREE, b'{"entries":[]}'),
             (KIND_VERSION, b'{"v":1}')]
    ingest = Ingest(store)
    for kind, data in items:
        ingest.add(h(data), kind, data)
    packs = ingest.publish()
    with index.transaction():
        index.add_packs(packs)
    (info,) = packs
    assert index.packs() == {info.id: (store.pack_path(info.id).stat().st_size, 4)}
    assert {oid: kind for oid, _, kind in index.packed_oids()} == {h(d): k for k, d in items}
    for kind, data in items:
        assert store.read(h(data)) == data
    # A second write of the same objects finds them through the index: no new pack.
    again = Ingest(store)
    for kind, data in items:
        again.add(h(data), kind, data)
    assert again.publish() == []
    store.close()


def test_add_packs_records_runs_in_key_order_and_keeps_the_first_pack_of_an_object(
        index: Index, monkeypatch) -> None:
    """Object rows go in sorted runs across packs (at most _MERGED_ROWS each), not one
    run a pack; an object in two packs keeps the first pack's row, as pack by pack."""
    from dsv import index as index_module
    from dsv.objects import _ENTRY, PackInfo

    def pack(name: str, objects: list[str]) -> PackInfo:
        table = b"".join(_ENTRY.pack(bytes.fromhex(h(o)), 8 + 10 * i, 10, KIND_BLOB)
                         for i, o in enumerate(objects))
        return PackInfo(h(name), 1000, table)

    runs: list[list[str]] = []
    upserts: list[list[str]] = []   # (runs taken again: some of their rows were there)
    real = Index._put_rows

    def put_rows(self, head, rows, width, on_conflict=""):
        rows = list(rows)
        if "INTO objects" in head:
            (upserts if on_conflict else runs).append([row[0] for row in rows])
        return real(self, head, rows, width, on_conflict)

    monkeypatch.setattr(Index, "_put_rows", put_rows)
    monkeypatch.setattr(index_module, "_MERGED_ROWS", 5)
    packs = [pack("p1", ["a", "b", "shared"]), pack("p2", ["c", "shared"]),
             pack("p3", ["d", "e", "f"])]
    with index.transaction():
        index.add_packs(packs)
    assert [sorted(run) == run for run in runs] == [True, True]
    assert sorted(runs[0]) == sorted(h(o) for o in ["a", "b", "shared", "c", "shared"])
    assert sorted(runs[1]) == sorted(h(o) for o in ["d", "e", "f"])
    assert upserts == [runs[0]]   # ("shared" twice: its second row was ignored)
    assert index.locate(h("shared")) == (h("p1"), 28, 10)
    assert index.locate(h("c")) == (h("p2"), 8, 10)
    assert index.locate(h("f")) == (h("p3"), 28, 10)
    assert {p: n for p, (_size, n) in index.packs().items()} == \
        {h("p1"): 3, h("p2"): 2, h("p3"): 3}


# ---- imports ------------------------------------------------------------------------------------

def test_imported_sources(index: Index) -> None:
    index.add_imported([("s3://b/a", h("a"), 1, ""), ("s3://b/b", h("b"), 2, "")])
    index.add_imported([("s3://b/a", h("a2"), 3, h("list"))])
    assert index.imported(["s3://b/a", "s3://b/b", "s3://b/c"]) == {
        "s3://b/a": (h("a2"), 3, h("list")), "s3://b/b": (h("b"), 2, "")}
    assert index.imported([]) == {}


# ---- remotes ------------------------------------------------------------------------------------

def remote_row(name: str, kind: str = "origin", **kw) -> dict:
    row = {"name": name, "url": f"s3://bucket/{name}", "kind": kind, "endpoint_url": None,
           "profile": None, "ttl": None, "max_size": None, "write_through": 0,
           "is_default": 0, "created": 1.0}
    row.update(kw)
    return row


def test_remotes_add_list_default_and_delete(index: Index) -> None:
    index.add_remote(remote_row("origin"))
    index.add_remote(remote_row("backup"))
    index.add_remote(remote_row("cache", "cache", url="/mnt/cache", ttl=604800.0,
                                max_size=10 ** 12, write_through=1))
    assert [r["name"] for r in index.remotes()] == ["backup", "cache", "origin"]
    assert index.remotes()[1] == remote_row("cache", "cache", url="/mnt/cache", ttl=604800.0,
                                            max_size=10 ** 12, write_through=1)
    index.set_default_remote("origin")
    assert {r["name"]: r["is_default"] for r in index.remotes()} == \
        {"backup": 0, "cache": 0, "origin": 1}
    index.set_default_remote("backup")               # one default at a time
    assert {r["name"]: r["is_default"] for r in index.remotes()} == \
        {"backup": 1, "cache": 0, "origin": 0}
    index.set_default_remote("cache")                # a cache is never the default
    assert [r["is_default"] for r in index.remotes()] == [0, 0, 0]
    with pytest.raises(sqlite3.IntegrityError):
        index.add_remote(remote_row("origin"))
    with pytest.raises(sqlite3.IntegrityError):
        index.add_remote(remote_row("nourl", url=None))


def test_remote_packs_objects_and_loose(index: Index) -> None:
    a, b = h("remote pack a"), h("remote pack b")
    ea, eb = entries("ra", 4), entries("rb", 2)
    index.add_remote_pack("origin", a, 4000, ea)
    index.add_remote_pack("origin", b, 2000, eb)
    index.add_remote_pack("backup", a, 4000, ea[:1])
    assert index.remote_packs("origin") == {a: 4000, b: 2000}
    assert index.remote_packs("backup") == {a: 4000}
    assert index.remote_pack_counts("origin") == {a: 4, b: 2}
    assert index.remote_locate_many("origin", [ea[2].oid, eb[0].oid, h("x")]) == {
        ea[2].oid: (a, ea[2].offset, ea[2].length), eb[0].oid: (b, eb[0].offset, eb[0].length)}
    assert index.remote_locate_many("backup", [ea[2].oid]) == {}
    assert sorted(index.remote_objects_of_kind("origin", KIND_TREE)) == sorted(
        (e.oid, p, e.offset, e.length) for p, es in ((a, ea), (b, eb)) for e in es
        if e.kind == KIND_TREE)
    # Local packs are a different table.
    assert index.locate(ea[0].oid) is None
    with index.transaction():
        index.forget_remote_packs("origin", [a, h("never known")])
    assert index.remote_packs("origin") == {b: 2000}
    assert index.remote_pack_counts("origin") == {b: 2}
    assert index.remote_locate_many("backup", [ea[0].oid]) == {ea[0].oid: (a, 8, 10)}

    index.add_remote_loose("origin", [h("big1"), h("big2"), h("big1")])
    assert index.remote_loose("origin", [h("big1"), h("big3")]) == {h("big1")}
    assert index.remote_loose("backup", [h("big1")]) == set()
    index.forget_remote_loose("origin")
    assert index.remote_loose("origin", [h("big1"), h("big2")]) == set()


def test_many_remote_packs_at_once_keep_the_first_location_of_an_object(index: Index) -> None:
    """add_remote_packs records rows in key order at the end, yet the pack recorded
    first names an object two packs hold, as pack by pack did; nothing is left waiting."""
    shared = [e for e in entries("shared", 300)]
    first = [(h(f"pack {i}"), shared[i * 50:(i + 1) * 50] + entries(f"own{i}", 40), 1000 + i)
             for i in range(3)]
    later = (h("pack later"), list(reversed(shared)), 5000)   # all of them again, at the end
    with index.transaction():
        index.add_remote_packs("origin", iter([*first, later]))
    counts = index.remote_pack_counts("origin")
    assert index.remote_packs("origin") == {**{p: n for p, _e, n in first}, later[0]: 5000}
    assert counts == {**{p: 90 for p, _e, _n in first}, later[0]: 300}   # (its whole index)
    assert index.conn.execute("SELECT pack, count(*) FROM remote_object_rows GROUP BY pack"
                              ).fetchall() == sorted([*((p, 90) for p, _e, _n in first),
                                                      (later[0], 150)])
    located = index.remote_locate_many("origin", [e.oid for e in shared])
    for i, e in enumerate(shared):
        pack = first[i // 50][0] if i < 150 else later[0]
        assert located[e.oid] == (pack, e.offset, e.length), i
    assert index.conn.execute("SELECT count(*) FROM arriving_remote_objects").fetchone() == (0,)
    with index.transaction():
        index.add_remote_packs("origin", [])                 # nothing to record: no change
        index.add_remote_packs("origin", [first[0]])          # recorded again: no change
    assert index.remote_pack_counts("origin") == counts


def test_remote_refs_set_replace_and_drop(index: Index) -> None:
    index.set_remote_ref("origin", "ds000001", "latest", "c000000001", h("r1"), '"etag1"')
    index.set_remote_ref("origin", "ds000001", "tags/v1", "c000000001", h("r1"), None)
    index.set_remote_ref("origin", "ds000000", "latest", "c000000009", h("r9"), "e9")
    index.set_remote_ref("backup", "ds000001", "latest", "c000000000", h("r0"), None)
    index.set_remote_ref("origin", "ds000001", "latest", "c000000002", h("r2"), '"etag2"')
    assert index.remote_refs("origin") == [
        ("ds000000", "latest", "c000000009", h("r9"), "e9"),
        ("ds000001", "latest", "c000000002", h("r2"), '"etag2"'),
        ("ds000001", "tags/v1", "c000000001", h("r1"), None)]
    index.drop_remote_ref("origin", "ds000001", "tags/v1")
    assert [r[:2] for r in index.remote_refs("origin")] == [("ds000000", "latest"),
                                                           ("ds000001", "latest")]
    assert index.remote_refs("backup") == [("ds000001", "latest", "c000000000", h("r0"), None)]


def test_delete_remote_forgets_what_it_held_but_keeps_promises(index: Index) -> None:
    index.add_remote(remote_row("origin"))
    index.add_remote(remote_row("backup"))
    for name in ("origin", "backup"):
        index.add_remote_pack(name, h("p"), 10, entries("o", 1))
        index.add_remote_loose(name, [h("l")])
        index.set_remote_ref(name, "ds000001", "latest", "c000000001", h("r"), None)
        index.note_sending(name, [h("s")])
    index.add_promised("c000000001", "origin")
    index.delete_remote("origin")
    assert index.sending("origin") == set() and index.sending("backup") == {h("s")}
    assert [r["name"] for r in index.remotes()] == ["backup"]
    assert index.remote_packs("origin") == {} and index.remote_refs("origin") == []
    assert index.remote_loose("origin", [h("l")]) == set()
    assert index.remote_locate_many("origin", [h("o0")]) == {}
    assert index.promised() == {"c000000001": "origin"}
    assert index.remote_packs("backup") == {h("p"): 10}
    assert index.remote_loose("backup", [h("l")]) == {h("l")}


def test_packs_a_push_began_are_remembered_per_remote_until_forgotten(index: Index) -> None:
    index.note_sending("origin", [h("a"), h("b")])
    index.note_sending("origin", [h("a")])              # (twice is once)
    index.note_sending("backup", [h("c")])
    assert index.sending("origin") == {h("a"), h("b")} and index.sending("backup") == {h("c")}
    index.forget_sending("origin", [h("a"), h("z")])
    assert index.sending("origin") == {h("b")} and index.sending("backup") == {h("c")}


def test_promised_versions(index: Index) -> None:
    index.add_promised("c000000001", "origin")
    index.add_promised("c000000001", "backup")        # the first remote stays
    index.add_promised("c000000002", "backup")
    assert index.promised() == {"c000000001": "origin", "c000000002": "backup"}
    index.drop_promised(["c000000001", "c000000009"])
    assert index.promised() == {"c000000002": "backup"}


# ---- checkout journal ---------------------------------------------------------------------------

def test_checkout_journal(index: Index) -> None:
    index.begin_checkout("/tmp/a", "c000000001")
    assert index.checkout_journal("/tmp/a") == "c000000001"
    assert index.placed_version("/tmp/a") is None
    index.end_checkout("/tmp/a", "c000000001")
    assert index.checkout_journal("/tmp/a") is None
    assert index.placed_version("/tmp/a") == "c000000001"
    index.begin_checkout("/tmp/a", "c000000002")      # a new checkout reopens the journal
    assert index.checkout_journal("/tmp/a") == "c000000002"
    assert index.placed_version("/tmp/a") is None
    index.end_checkout("/tmp/a", None)                 # not whole: nothing remembered
    assert index.checkout_journal("/tmp/a") is None and index.placed_version("/tmp/a") is None


# ---- transactions -------------------------------------------------------------------------------

def test_transaction_commits_and_rolls_back(index: Index, db: Path) -> None:
    with index.transaction():
        index.insert_dataset(dataset())
    with pytest.raises(RuntimeError):
        with index.transaction():
            index.insert_dataset(dataset("ds000002", "cifar", None))
            with index.transaction():                      # nested: joins the outer one
                index.insert_dataset(dataset("ds000003", "svhn", None))
            raise RuntimeError("boom")
    assert [d.id for d in index.datasets()] == ["ds000001"]
    assert not index.conn.in_transaction
    # Nested inner failure also undoes the outer work.
    with pytest.raises(sqlite3.IntegrityError):
        with index.transaction():
            index.insert_dataset(dataset("ds000004", "x", None))
            with index.transaction():
                index.insert_dataset(dataset("ds000005", "x", None))
    assert [d.id for d in index.datasets()] == ["ds000001"]
    # Index usable afterwards.
    with index.transaction():
        index.insert_dataset(dataset("ds000006", "y", None))
    assert len(index.datasets()) == 2


def test_another_connection_sees_only_committed_transactions(index: Index, db: Path) -> None:
    other = Index(db)
    try:
        with index.transaction():
            index.insert_dataset(dataset())
            assert index.dataset_by("id", "ds000001") is not None
            assert other.dataset_by("id", "ds000001") is None      # WAL: readers see before
        assert other.dataset_by("id", "ds000001") == dataset()
    finally:
        other.close()


def test_rolled_back_shows_tentative_rows_then_undoes_them(two: Index) -> None:
    with two.rolled_back():
        two.insert_version(version("v000000001"))
        two.update_dataset("ds000001", name="renamed")
        assert two.version("v000000001") is not None
        assert two.dataset_by("name", "renamed") is not None
    assert two.version("v000000001") is None and two.dataset_by("name", "mnist") is not None
    with two.transaction():                                         # inside a transaction too
        two.insert_version(version("v000000002"))
        with two.rolled_back():
            two.delete_version("v000000002")
            assert two.version("v000000002") is None
    assert two.version("v000000002") is not None


# ---- what SQLite's failures mean ---------------------------------------------------------------

def test_a_file_that_is_not_a_database(db: Path) -> None:
    db.write_bytes(b"this is no SQLite file" * 200)
    with pytest.raises(sqlite3.DatabaseError) as info:
        idx = Index(db)
        idx.datasets()
    err = index_error(info.value, db)
    assert type(err) is IndexDamaged
    assert err.message.startswith(f"the index {db} is damaged (")
    assert "not a database" in err.message
    assert "dsv index rebuild" in err.hint


def test_damaged_pages_of_an_index(db: Path, index: Index) -> None:
    with index.transaction():
        for i in range(400):
            index.insert_dataset(dataset(f"d{i:07d}", f"name-{i}", f"dir/{i}",
                                         description="x" * 100))
    index.close()
    size = db.stat().st_size
    assert size > 4 * 4096
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(bytes(range(256)) * ((size - 4096) // 256))
    with pytest.raises(sqlite3.DatabaseError) as info:
        idx = Index(db)
        try:
            idx.datasets()
        finally:
            idx.close()
    err = index_error(info.value, db)
    assert type(err) is IndexDamaged and "is damaged" in err.message
    assert "dsv index rebuild" in err.hint


def test_an_index_held_by_another_writer_is_busy(index: Index, db: Path) -> None:
    index.conn.execute("BEGIN IMMEDIATE")
    other = Index(db)
    other.conn.execute("PRAGMA busy_timeout=0")
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            with other.transaction():
                other.insert_dataset(dataset())
        err = index_error(info.value, db)
        assert type(err) is IndexBusy and isinstance(err, StoreLocked)
        assert err.message.startswith(f"the index {db} is held by another process (")
        assert "wait for it" in err.hint
        assert not other.conn.in_transaction
    finally:
        other.close()
        index.conn.execute("ROLLBACK")


def test_an_index_that_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "no such directory" / "index.db"
    with pytest.raises(sqlite3.OperationalError) as info:
        Index(path)
    err = index_error(info.value, path)
    assert type(err) is IndexUnwritable
    assert err.message.startswith(f"cannot open the index {path} (")
    assert str(path.parent) in err.hint


def test_a_constraint_failure_is_not_the_users_doing(two: Index, db: Path) -> None:
    with pytest.raises(sqlite3.IntegrityError) as info:
        two.insert_dataset(dataset())
    assert index_error(info.value, db) is None


READ_ONLY_PROBE = textwrap.dedent("""
    import json, resource, sqlite3, sys
    from dsv import Dataset
    from dsv.index import Index, index_error
    path = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))   # every write fails: EFBIG
    idx = Index(path)
    out = {"read_only": idx.read_only, "schema": idx.schema_version(),
           "names": [d.name for d in idx.datasets()],
           "version": idx.version("c000000001").message, "tag": idx.tag("ds000001", "v1")}
    # Caches are skipped, not failed, on an index that cannot be written.
    idx.put_stat_rows("ds000001", [("new.txt", (1, 2, 3, 420, "0" * 64, 4))])
    idx.update_dataset("ds000001", cache_tree="1" * 64)
    idx.checkpoint()
    try:
        with idx.transaction():
            idx.insert_dataset(Dataset(id="ds000009", name="new", path=None, description=None,
                                       created=1.0, latest=None, head=None, cache_tree=None))
        out["write"] = "succeeded"
    except sqlite3.Error as exc:
        err = index_error(exc, path)
        out["write"] = [type(err).__name__, err.message, err.hint]
    print(json.dumps(out))
""")


def test_read_only_fallback_when_the_index_cannot_be_written(db: Path, index: Index) -> None:
    index.insert_dataset(dataset())
    index.insert_version(committed("c000000001", 100.0, message="first"))
    index.set_tag("ds000001", "v1", "c000000001")
    index.put_stat_rows("ds000001", [("a.txt", ROW_A)])
    index.close()                      # no connection here keeps -shm in place
    assert not Path(f"{db}-shm").exists()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-c", READ_ONLY_PROBE, str(db)], capture_output=True,
                       text=True, timeout=60, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["read_only"] is True
    assert (out["schema"], out["names"], out["version"], out["tag"]) == \
        (SCHEMA_VERSION, ["mnist"], "first", "c000000001")
    kind, message, hint = out["write"]
    assert kind == "IndexUnwritable"
    assert message.startswith(f"cannot write the index {db}: the file-size limit")
    assert "ulimit -f" in hint
    # Nothing changed.
    again = Index(db)
    try:
        assert [d.id for d in again.datasets()] == ["ds000001"]
        assert again.stat_cache("ds000001") == {"a.txt": ROW_A}
        assert again.dataset_by("id", "ds000001").cache_tree is None
    finally:
        again.close()


def test_a_schema_7_store_that_can_only_be_read_is_read_as_it_is(tmp_path: Path) -> None:
    """Schema 8 changed nothing reads use: a schema 7 store on a full disk (here: a
    file-size limit of 0) still answers `status`, unmigrated and unchanged."""
    import resource
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_bytes(b"hello")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}

    def dsv(*args: str, limit: bool = False) -> subprocess.CompletedProcess[str]:
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        return subprocess.run([sys.executable, "-m", "dsv", *args], cwd=ws, env=env,
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                     (0, hard))) if limit
                              else None)
    assert dsv("init").returncode == 0 and dsv("commit", "-m", "first").returncode == 0
    with sqlite3.connect(ws / ".dsv" / "index.db") as conn:
        conn.execute("UPDATE meta SET value='7' WHERE key='schema'")
    conn.close()
    before = (ws / ".dsv" / "index.db").read_bytes()
    got = dsv("status", "--json", limit=True)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["clean"] is True
    assert (ws / ".dsv" / "index.db").read_bytes() == before


SCHEMA_IMPORTS = textwrap.dedent("""
    import importlib.util, sys
    import dsv
    assert importlib.util.find_spec("pandas") and importlib.util.find_spec("numpy")
    if sys.argv[2] == "pandas-first":
        import pandas
    dsv.init(sys.argv[1])
    print(sorted(m for m in ("pandas", "numpy") if m in sys.modules))
    import pandas, numpy, sqlite_utils.db
    db = sqlite_utils.Database(memory=True)
    db["t"].insert({"a": numpy.int64(3)})
    print(sqlite_utils.db.pd is pandas, pandas.DataFrame({"a": [1, 2]}).shape,
          int(numpy.arange(3).sum()), db["t"].columns_dict["a"].__name__)
""")


@pytest.mark.parametrize("order, loaded, theirs", [
    ("dsv-first", "[]", "True (2, 1) 3 int"),
    ("pandas-first", "['numpy', 'pandas']", "True (2, 1) 3 int"),
])
def test_creating_an_index_loads_neither_pandas_nor_numpy(tmp_path: Path, order: str,
                                                          loaded: str, theirs: str) -> None:
    """sqlite_utils imports pandas and numpy when they are installed (as in the test
    environment): creating a store must not pay for them, and must leave both importable
    afterwards, and sqlite_utils as it would be, in a process that had imported pandas."""
    r = subprocess.run([sys.executable, "-c", SCHEMA_IMPORTS, str(tmp_path / "s"), order],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [loaded, theirs]
    assert (tmp_path / "s" / ".dsv" / "index.db").is_file()


SCHEMA_THREADS = textwrap.dedent("""
    import sys, threading
    import dsv
    errors = []
    def init(i):
        try:
            dsv.init(f"{sys.argv[1]}/s{i}")
        except BaseException as exc:
            errors.append(repr(exc))
    def user():
        try:
            import pandas
            pandas.DataFrame({"a": [1]})
        except BaseException as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=init, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=user))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(errors)
""")


def test_stores_created_by_threads_at_once_and_a_thread_importing_pandas_meanwhile(
        tmp_path: Path) -> None:
    """sqlite_utils is loaded once, by one thread, with pandas refused to that thread
    only: other threads creating stores wait for it, and one importing pandas gets it."""
    r = subprocess.run([sys.executable, "-c", SCHEMA_THREADS, str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]"]
    assert all((tmp_path / f"s{i}" / ".dsv" / "index.db").is_file() for i in range(4))
