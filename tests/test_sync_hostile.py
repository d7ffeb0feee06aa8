"""Fetch, pull and push against a hostile remote and against concurrent clients.

Remotes are built by hand (tests/hostile.py) with true blake3 ids, so that only dsv's
semantic checks (formats, refs against records, history, races) stand in the way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostile import HostileRemote

DS = "vict1m"


def _clone(dsv, remote: Path, dest: Path):
    return dsv("clone", remote, dest, cwd=dest.parent)


@pytest.mark.parametrize("marker, said", [
    (b'{"format":4,"hash":"sha256"}\n', "hash sha256"),
    (b'{"format":4}\n', "hash ?"),
    (b'{"format":true,"hash":"blake3"}\n', "remote format true"),
    (b'{"format":4.0,"hash":"blake3"}\n', "remote format 4.0"),
])
def test_marker_claiming_another_hash_or_a_format_that_is_no_number_is_refused(
        tmp_path: Path, dsv, marker: bytes, said: str) -> None:
    remote = HostileRemote(tmp_path / "remote")
    remote.version("v1aaaaaaaa", DS, {"f.txt": b"good"})
    (remote.root / "dsv-remote.json").write_bytes(marker)
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 1, r.out + r.err
    assert r.err.startswith("error: ") and said in r.err, r.err
    assert "bug in dsv" not in r.err and "Traceback" not in r.err
    assert not (tmp_path / "victim").exists()
    # A push to it refuses too, and leaves its marker as it was.
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_bytes(b"mine")
    assert dsv("init", "--name", "mine", cwd=ws).code == 0
    assert dsv("commit", "-m", "one", cwd=ws).code == 0
    assert dsv("remote", "add", "origin", remote.root, cwd=ws).code == 0
    r = dsv("push", cwd=ws)
    assert r.code == 1 and said in r.err, r.err
    assert (remote.root / "dsv-remote.json").read_bytes() == marker
    assert not (remote.root / "refs" / "mine").exists()


@pytest.mark.parametrize("their_time", ["2027-01-01T00:00:00.000000Z",
                                        "2025-01-01T00:00:00.000000Z"])
def test_no_dataset_is_named_as_another_arriving_dataset_is_identified(
        tmp_path: Path, dsv, their_time: str) -> None:
    """Ids win over names: a dataset named `data` next to one whose id is `data` would
    be listed as `data` while `data` leads to the other one."""
    remote = HostileRemote(tmp_path / "remote")
    mine = remote.record("x1aaaaaaaa", "x1aaaaaa", remote.files({"real.txt": b"real"}),
                         dataset_name="data")
    theirs = remote.record("y1aaaaaaaa", "data", remote.files({"evil.txt": b"evil"}),
                           dataset_name="evil", committed=their_time)
    remote.publish()
    remote.ref("x1aaaaaa", "latest", "x1aaaaaaaa", mine, name="data", path="data")
    remote.ref("data", "latest", "y1aaaaaaaa", theirs, name="evil", path="evil")
    r = _clone(dsv, remote.root, tmp_path / "victim")
    assert r.code == 0, r.err
    assert "warning: dataset x1aaaaaa of the remote, data there, is named data-x1aaaaaa " \
           "here: data is the id of another of its datasets" in r.err, r.err
    victim = tmp_path / "victim"
    listed = {d["id"]: d["name"] for d in
              json.loads(dsv("datasets", "list", "--json", cwd=victim).out)}
    assert listed == {"x1aaaaaa": "data-x1aaaaaa", "data": "evil"}
    # Every name listed leads to its own dataset.
    for ds_id, name in listed.items():
        shown = json.loads(dsv("show", f"{name}:latest", "--json", cwd=victim).out)
        assert shown["dataset"] == ds_id
    assert (victim / "data" / "real.txt").read_bytes() == b"real"


def test_a_remote_tag_named_latest_never_moves_latest_here(tmp_path: Path, dsv) -> None:
    """No tag may be named `latest`; one on a remote was taken for the dataset's latest
    and moved it back, past the commit made here, by a mere fetch."""
    remote = HostileRemote(tmp_path / "remote")
    first = remote.version("v1aaaaaaaa", DS, {"a.txt": b"one"})
    victim = tmp_path / "victim"
    assert _clone(dsv, remote.root, victim).code == 0
    (victim / "a.txt").write_bytes(b"two")
    mine = dsv("commit", "-m", "two", cwd=victim).out.strip().rpartition(":")[2]
    remote.ref(DS, "tags/latest", "v1aaaaaaaa", first)
    for command in ("fetch", "pull"):
        r = dsv(command, cwd=victim)
        assert r.code == 0, r.err
        shown = json.loads(dsv("show", "victim:latest", "--json", cwd=victim).out)
        assert shown["id"] == mine, command
    assert json.loads(dsv("tags", "--json", cwd=victim).out) == []
    assert (victim / "a.txt").read_bytes() == b"two"
