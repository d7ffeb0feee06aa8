"""remotes/layout: every remote key, and the ref file format read from untrusted remotes."""

from __future__ import annotations

import json

import pytest

from dsv.remotes import layout

OID = "ab" + "0" * 62
PACK = "cd" + "1" * 62


def test_keys_follow_the_documented_layout() -> None:
    assert layout.pack_key(PACK) == f"packs/{PACK}.pack"
    assert layout.index_key(PACK) == f"index/{PACK}"
    assert layout.loose_key(OID) == f"loose/ab/{OID}"
    assert layout.ref_key("ds1", "latest") == "refs/ds1/latest"
    assert layout.ref_key("ds1", "tags/v1") == "refs/ds1/tags/v1"
    assert layout.REMOTE_MARKER == "dsv-remote.json"


def test_keys_parse_back() -> None:
    assert layout.pack_id_of_key(layout.pack_key(PACK)) == PACK
    assert layout.index_id_of_key(layout.index_key(PACK)) == PACK
    assert layout.loose_oid_of_key(layout.loose_key(OID)) == OID


@pytest.mark.parametrize("key", ["loose/ab/zz", f"loose/cd/{OID}", f"loose/{OID}",
                                 f"loose/ab/{OID}/x", f"packs/{OID}.pack", "refs/x/latest"])
def test_only_well_formed_loose_keys_name_an_object(key: str) -> None:
    assert layout.loose_oid_of_key(key) is None


def test_malformed_pack_and_index_keys() -> None:
    assert layout.pack_id_of_key("packs/x/y.pack") is None
    assert layout.pack_id_of_key("packs/abc") is None
    assert layout.index_id_of_key("index/a/b") is None


RECORD = "e" * 64


def test_ref_body_round_trips() -> None:
    body = layout.ref_body("ds1", "v123", RECORD, "data", "sub/dir", latest=True)
    assert json.loads(body) == {"dataset": "ds1", "version": "v123", "record": RECORD,
                                "name": "data", "path": "sub/dir"}
    ref = layout.parse_ref("refs/ds1/latest", body, "etag")
    assert ref == layout.RemoteRef("ds1", "latest", "v123", RECORD, "etag", "data", "sub/dir")
    tag = layout.ref_body("ds1", "v123", RECORD, latest=False)
    assert json.loads(tag) == {"dataset": "ds1", "version": "v123", "record": RECORD}
    assert layout.parse_ref("refs/ds1/tags/v1", tag, "t") == \
        layout.RemoteRef("ds1", "tags/v1", "v123", RECORD, "t")


def _body(**fields: object) -> bytes:
    base: dict[str, object] = {"dataset": "ds1", "version": "v1", "record": RECORD}
    base.update(fields)
    return json.dumps(base).encode()


@pytest.mark.parametrize("key, data", [
    ("refs/ds1/other", _body()),                           # not latest or tags/
    ("refs/ds1/tags/../x", _body()),                       # bad tag name
    ("refs/ds1/tags/a/b", _body()),                        # too deep
    ("refs/ds2/latest", _body()),                          # names another dataset
    ("refs/ds1/latest", _body(record="short")),            # not a hash
    ("refs/ds1/latest", _body(version=7)),                 # not a string
    ("refs/ds1/latest", _body(version="../x")),            # not a name
    ("refs/ds1/latest", b"[1, 2]"),                        # not an object
    ("refs/ds1/latest", b"{"),                             # not JSON
    ("refs/ds1/latest", b'{"a":' * 100 + b"1" + b"}" * 100),   # nested too deep
])
def test_hostile_refs_are_refused(key: str, data: bytes) -> None:
    assert layout.parse_ref(key, data, "e") is None


@pytest.mark.parametrize("path", ["../up", "/abs", ".dsv/objects", "a/../../b", "a\0b"])
def test_a_refs_unsafe_path_is_dropped_not_trusted(path: str) -> None:
    ref = layout.parse_ref("refs/ds1/latest", _body(name="data", path=path), "e")
    assert ref is not None and ref.path is None and ref.name == "data"


def test_a_refs_bad_name_is_dropped() -> None:
    ref = layout.parse_ref("refs/ds1/latest", _body(name="no/slash", path="."), "e")
    assert ref is not None and ref.name is None and ref.path == "."
