"""The ref grammar `DATASET[:SELECTOR][~N]`: property tests of parsing, then resolution
against a real store through the Python API (latest, tags, ids, prefixes, ancestry)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import dsv
from conftest import write_tree
from dsv.errors import AmbiguousRef, DatasetNotFound, RefError
from dsv.refs import MIN_PREFIX, RefSpec, is_valid_name, parse_ref

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
FIRST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

names = st.builds(lambda first, rest: first + rest,
                  st.sampled_from(FIRST_CHARS),
                  st.text(alphabet=NAME_CHARS, max_size=30)).filter(lambda n: ".." not in n)
ancestry = st.integers(min_value=0, max_value=10_000)
BAD_CHARS = [" ", "/", "\0", "\t", "\n", "\\", "*", "?", "@", "#", "é", ":"]


# ---- names --------------------------------------------------------------------------------

@given(names)
def test_generated_names_are_valid(name: str) -> None:
    assert is_valid_name(name)


@given(names, st.sampled_from([" ", "/", "\0", "\t", "\n", ":", "~", "*", "é"]),
       st.integers(min_value=0, max_value=40))
def test_names_with_a_bad_character_are_invalid(name: str, bad: str, where: int) -> None:
    where = min(where, len(name))
    assert not is_valid_name(name[:where] + bad + name[where:])


@given(names)
def test_names_with_dotdot_or_bad_start_are_invalid(name: str) -> None:
    assert not is_valid_name(name + ".." + name)
    for start in ".-_":
        assert not is_valid_name(start + name)


@pytest.mark.parametrize("name,valid", [
    ("", False), ("a", True), ("a" * 128, True), ("a" * 129, False), ("v1.0", True),
    ("v1..0", False), ("..", False), (".", False), ("-x", False), ("x-", True),
    ("my data", False), ("a/b", False), ("latest", True),
])
def test_name_examples(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid


# ---- parsing: round trips -------------------------------------------------------------------

@given(names, names, ancestry)
def test_full_ref_round_trip(ds: str, selector: str, n: int) -> None:
    text = f"{ds}:{selector}" + (f"~{n}" if n else "")
    spec = parse_ref(text)
    assert spec == RefSpec(ds, selector, n)
    assert parse_ref(str(spec)) == spec
    if n:
        assert str(spec) == text


@given(names)
def test_bare_dataset_means_latest(ds: str) -> None:
    assert parse_ref(ds) == RefSpec(ds, "latest", 0)


@given(names, ancestry)
def test_selector_only_ref(selector: str, n: int) -> None:
    spec = parse_ref(f":{selector}" + (f"~{n}" if n else ""))
    assert spec == RefSpec(None, selector, n)
    assert parse_ref(str(spec)) == spec


@given(names, names, st.lists(st.one_of(st.none(), st.integers(0, 50)), min_size=1, max_size=6))
def test_repeated_tildes_add_up(ds: str, selector: str, steps: list[int | None]) -> None:
    """git's `~` (= `~1`) and `~2~3` (= `~5`)."""
    suffix = "".join("~" if s is None else f"~{s}" for s in steps)
    spec = parse_ref(f"{ds}:{selector}{suffix}")
    assert spec.ancestor == sum(1 if s is None else s for s in steps)
    assert (spec.dataset, spec.selector) == (ds, selector)


@given(names, ancestry)
def test_ancestry_on_bare_dataset(ds: str, n: int) -> None:
    assert parse_ref(f"{ds}~{n}") == RefSpec(ds, "latest", n)


# ---- parsing: rejections --------------------------------------------------------------------

def _assert_rejected(text: str) -> None:
    with pytest.raises(RefError) as info:
        parse_ref(text)
    assert info.value.message and "\n" not in info.value.message.strip("\n")


@given(names, names, st.sampled_from(BAD_CHARS[:-1]), st.integers(0, 60), st.booleans())
def test_bad_characters_anywhere_are_rejected(ds: str, sel: str, bad: str, where: int,
                                              in_dataset: bool) -> None:
    if in_dataset:
        where = min(where, len(ds))
        text = f"{ds[:where]}{bad}{ds[where:]}:{sel}"
    else:
        where = min(where, len(sel))
        # a slash between two names is a remote-tracking ref (REMOTE/TAG), not a bad char
        assume(not (bad == "/" and is_valid_name(sel[:where]) and is_valid_name(sel[where:])))
        text = f"{ds}:{sel[:where]}{bad}{sel[where:]}"
    _assert_rejected(text)


@given(names, names, names, st.integers(0, 3))
def test_remote_tracking_refs_parse_and_round_trip(ds: str, remote: str, name: str,
                                                   n: int) -> None:
    text = f"{ds}:{remote}/{name}" + (f"~{n}" if n else "")
    spec = parse_ref(text)
    assert spec == RefSpec(ds, f"{remote}/{name}", n) and parse_ref(str(spec)) == spec


@given(names, names)
def test_extra_colon_is_rejected(ds: str, sel: str) -> None:
    _assert_rejected(f"{ds}:{sel}:{sel}")
    _assert_rejected(f"{ds}::{sel}")


@given(names, names, st.sampled_from(["~x", "~-1", "~1a", "~1.5", "~ 1", "~1~b", "^1", "~+1",
                                      "~1 ", "~\0"]))
def test_bad_ancestry_is_rejected(ds: str, sel: str, suffix: str) -> None:
    _assert_rejected(f"{ds}:{sel}{suffix}")


@given(names, names, st.sampled_from([" ", "\t", "\n"]), st.booleans())
def test_surrounding_whitespace_is_rejected(ds: str, sel: str, space: str, before: bool) -> None:
    _assert_rejected(f"{space}{ds}:{sel}" if before else f"{ds}:{sel}{space}")


@pytest.mark.parametrize("text", ["", " ", ":", "ds:", ":~1", "~1", "~", "/", "a/b:c",
                                  "ds:a/", "ds:/b", "ds:a/b/c", "ds:a//b", "ds:-a/b",
                                  "ds:a/.b", "ds:..", "ds:a..b", "..:x", "\0", "ds\0:x",
                                  "ds:x\0", "-ds:x", "ds:-x", "ds:.x", "ds:x y"])
def test_malformed_examples_are_rejected(text: str) -> None:
    _assert_rejected(text)


@given(st.text(max_size=40))
@example("ds:v1~~")
@example("a:b:c~1")
@example("~~~")
@settings(max_examples=300)
def test_parse_never_fails_any_other_way(text: str) -> None:
    """Arbitrary text either parses to valid names or raises RefError, nothing else."""
    try:
        spec = parse_ref(text)
    except RefError:
        return
    assert spec.dataset is None or is_valid_name(spec.dataset)
    assert is_valid_name(spec.selector) and spec.ancestor >= 0
    assert parse_ref(str(spec)) == spec


# ---- resolution through the Store API ---------------------------------------------------------

@pytest.fixture
def history(tmp_path: Path):
    """A dataset `data` with three committed versions v1 → v2 → v3, v1 tagged `first`."""
    root = tmp_path / "data"
    write_tree(root, {"f.txt": "1"})
    store = dsv.init(root)
    ids = [store.commit("one").id]
    for n in (2, 3):
        (root / "f.txt").write_text(str(n))
        ids.append(store.commit(f"v{n}").id)
    store.tag(f"data:{ids[0]}", "first")
    yield store, root, ids
    store.close()


def _unique_prefix(vid: str, others: list[str]) -> str:
    for n in range(MIN_PREFIX, len(vid) + 1):
        if not any(o.startswith(vid[:n]) for o in others if o != vid):
            return vid[:n]
    raise AssertionError("unreachable")


def test_resolve_latest_tag_id_and_prefix(history) -> None:
    store, _root, (v1, v2, v3) = history
    assert store.resolve("data:latest").id == v3
    assert store.resolve("data").id == v3
    assert store.resolve("data:first").id == v1
    for vid in (v1, v2, v3):
        assert store.resolve(f"data:{vid}").id == vid
        prefix = _unique_prefix(vid, [v1, v2, v3])
        assert store.resolve(f"data:{prefix}").id == vid
    assert store.resolve("data:first").tags == ["first"]


def test_too_short_prefix_is_an_error(history) -> None:
    store, _root, (v1, _v2, _v3) = history
    for n in range(1, MIN_PREFIX):
        with pytest.raises(RefError) as info:
            store.resolve(f"data:{v1[:n]}")
        assert str(MIN_PREFIX) in (info.value.hint or "") + info.value.message


def test_unknown_selector_and_dataset(history) -> None:
    store, _root, _ids = history
    with pytest.raises(RefError) as info:
        store.resolve("data:zzzzzzzzzz")
    assert "zzzzzzzzzz" in info.value.message
    with pytest.raises(DatasetNotFound) as info2:
        store.resolve("nodata:latest")
    assert "nodata" in info2.value.message
    with pytest.raises(RefError):
        store.resolve("data:bad name")


def test_ancestry(history) -> None:
    store, _root, (v1, v2, v3) = history
    assert store.resolve("data:latest~1").id == v2
    assert store.resolve("data:latest~2").id == v1
    assert store.resolve("data~1").id == v2
    assert store.resolve("data:latest~").id == v2
    assert store.resolve("data:latest~1~1").id == v1
    assert store.resolve(f"data:{v3}~2").id == v1
    assert store.resolve(f"data:{v2}~0").id == v2
    with pytest.raises(RefError) as info:
        store.resolve("data:latest~3")
    assert "past" in info.value.message or "first" in info.value.message
    with pytest.raises(RefError):
        store.resolve("data:first~1")


def test_dataset_name_and_id_both_work(history) -> None:
    store, _root, (v1, _v2, v3) = history
    (ds,) = store.datasets()
    assert ds.name == "data" and ds.id != ds.name
    assert store.resolve(f"{ds.id}:latest").id == v3
    assert store.resolve(f"{ds.id}:first").id == v1
    assert store.resolve(f"{ds.id}:latest~2").id == v1
    assert store.resolve(ds.id).id == v3


def test_bare_selector_uses_the_dataset_of_cwd(history) -> None:
    store, root, (v1, _v2, v3) = history
    assert store.resolve("first", cwd=root).id == v1
    assert store.resolve(":latest", cwd=root).id == v3
    assert store.resolve(":first~0", cwd=root).id == v1


def test_tags_are_scoped_to_their_dataset(history, tmp_path: Path) -> None:
    store, root, (v1, _v2, _v3) = history
    other = store.create_dataset("other", path=root / "other")
    # "other" lives inside data's directory: a nested dataset, left out of data
    (root / "other" / "o.txt").write_text("o")
    ov = store.commit("other one", key="other")
    assert ov.dataset == other.id
    with pytest.raises(RefError):
        store.resolve("other:first")
    store.tag("other:latest", "first")
    assert store.resolve("other:first").id == ov.id
    assert store.resolve("data:first").id == v1
    with pytest.raises(RefError):  # a version id of another dataset does not resolve here
        store.resolve(f"other:{v1}")


def _patched_ids(monkeypatch: pytest.MonkeyPatch, version_ids: list[str]) -> None:
    """Make the store hand out chosen version ids (dataset ids stay random)."""
    import dsv.core as store_mod

    real = store_mod.random_id
    queue = iter(version_ids)

    def fake(length: int) -> str:
        if length == store_mod.VERSION_ID_LEN:
            return next(queue)
        return real(length)

    monkeypatch.setattr(store_mod, "random_id", fake)


def test_ambiguous_prefix_lists_candidates(tmp_path: Path, monkeypatch) -> None:
    _patched_ids(monkeypatch, ["abcde00001", "abcde00002", "abcdf00003"])
    root = tmp_path / "data"
    write_tree(root, {"f.txt": "1"})
    with dsv.init(root) as store:
        for n in (1, 2, 3):
            (root / "f.txt").write_text(str(n) * 2)
            store.commit(f"v{n}")
        assert [v.id for v in store.log()] == ["abcdf00003", "abcde00002", "abcde00001"]
        for prefix in ("abcd", "abcde", "abcde0000"):
            with pytest.raises(AmbiguousRef) as info:
                store.resolve(f"data:{prefix}")
            text = info.value.message
            assert "abcde00001" in text and "abcde00002" in text
            assert ("abcdf00003" in text) == (prefix == "abcd")
        assert store.resolve("data:abcde00001").id == "abcde00001"
        assert store.resolve("data:abcde00002").id == "abcde00002"
        assert store.resolve("data:abcdf").id == "abcdf00003"
        with pytest.raises(RefError):
            store.resolve("data:abc")


def test_tag_that_looks_like_another_versions_prefix_is_ambiguous(tmp_path: Path,
                                                                  monkeypatch) -> None:
    _patched_ids(monkeypatch, ["aaaa000001", "bbbb000002"])
    root = tmp_path / "data"
    write_tree(root, {"f.txt": "1"})
    with dsv.init(root) as store:
        store.commit("one")
        (root / "f.txt").write_text("2")
        store.commit("two")
        store.tag("data:aaaa000001", "bbbb")
        with pytest.raises(AmbiguousRef) as info:
            store.resolve("data:bbbb")
        assert "tag bbbb" in info.value.message and "bbbb000002" in info.value.message
        # the full id is never ambiguous
        assert store.resolve("data:bbbb000002").id == "bbbb000002"


def test_latest_of_empty_dataset_is_an_error(tmp_path: Path) -> None:
    with dsv.init(tmp_path / "empty") as store:
        with pytest.raises(RefError) as info:
            store.resolve("empty:latest")
        assert "no committed version" in info.value.message


def test_drafts_resolve_by_id_but_never_as_latest(history) -> None:
    store, _root, (_v1, _v2, v3) = history
    draft = store.create_version("data", "draft")
    assert store.resolve(f"data:{draft.id}").is_draft
    assert store.resolve("data:latest").id == v3
    assert store.resolve(f"data:{draft.id}~1").id == v3


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_resolution_of_arbitrary_selectors_is_consistent(tmp_path_factory, data) -> None:
    """Any selector resolves to exactly the one version it names, or raises a RefError."""
    store, ids = _shared_store(tmp_path_factory)
    vid = data.draw(st.sampled_from(ids))
    selector = data.draw(st.one_of(
        st.integers(1, 10).map(lambda n: vid[:n]),
        st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)))
    matches = [v for v in ids if v == selector or (len(selector) >= MIN_PREFIX
                                                    and v.startswith(selector))]
    if selector == "latest":
        matches = [ids[-1]]
    try:
        got = store.resolve(f"data:{selector}").id
    except AmbiguousRef as exc:
        assert len(matches) > 1
        assert all(m in exc.message for m in matches)
        return
    except RefError:
        assert matches == []
        return
    assert [got] == matches


_SHARED: dict[str, object] = {}


def _shared_store(factory) -> tuple[object, list[str]]:
    if "store" not in _SHARED:
        root = factory.mktemp("refs") / "data"
        write_tree(root, {"f.txt": "0"})
        store = dsv.init(root)
        ids = []
        for n in range(12):
            (root / "f.txt").write_text(f"content {n}")
            ids.append(store.commit(f"v{n}").id)
        _SHARED.update(store=store, ids=ids)
    return _SHARED["store"], _SHARED["ids"]  # type: ignore[return-value]


def test_version_ids_are_distinct_and_well_formed(tmp_path_factory) -> None:
    _store, ids = _shared_store(tmp_path_factory)
    assert len(set(ids)) == 12
    assert all(len(v) == 10 and v.isalnum() and v.lower() == v for v in ids)
