"""`dsv import` against a real S3 protocol server (moto's server mode) over HTTP."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3
import pytest

import dsv
from dsv import imports
from dsv.errors import DsvError, UnsafePath
from dsv.imports import ImportMismatch
from faultproxy import FaultProxy


@pytest.fixture
def s3(s3_endpoint: str, aws_env: None):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    return client


@pytest.fixture
def bucket(s3) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(tmp_path: Path):
    with dsv.init(tmp_path / "ws", bind=False) as s:
        yield s


def _files(store, ref: str) -> dict[str, bytes]:
    out = {}
    for row in store.files(ref, recursive=True):
        with store.open_file(ref, row.path) as f:
            out[row.path] = f.read()
    return out


def test_default_names() -> None:
    assert imports.default_name("s3://b/mnist.zip") == "mnist"
    assert imports.default_name("s3://b") == "b"
    assert imports.default_name("s3://b/data/train/") == "train"
    assert imports.default_name("s3://b/a/shard.tar.gz") == "shard"


def test_prefix_import_records_every_source(store, s3, bucket, s3_endpoint) -> None:
    big = os.urandom(3 << 20)
    content = {"data/train/a.csv": b"1,2\n", "data/train/sub/b.bin": big,
               "data/train/c.txt": b"x" * 100, "other/skip.txt": b"no"}
    for key, body in content.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    v = store.import_s3(f"s3://{bucket}/data/train", endpoint_url=s3_endpoint)
    assert store.index.dataset_by("id", v.dataset).name == "train"
    assert _files(store, f"train:{v.id}") == {"a.csv": b"1,2\n", "sub/b.bin": big,
                                             "c.txt": b"x" * 100}
    files = v.lineage["import"]["files"]
    head = s3.head_object(Bucket=bucket, Key="data/train/sub/b.bin")
    assert files["sub/b.bin"]["etag"] == head["ETag"].strip('"')
    assert files["sub/b.bin"]["key"] == "data/train/sub/b.bin"
    assert store.verify().ok
    assert store.check_import("train:latest").ok
    # The source changes: --check says so, and what.
    s3.put_object(Bucket=bucket, Key="data/train/a.csv", Body=b"changed")
    s3.put_object(Bucket=bucket, Key="data/train/new.txt", Body=b"new")
    s3.delete_object(Bucket=bucket, Key="data/train/c.txt")
    report = store.check_import("train:latest")
    assert (report.changed, report.missing, report.added) == \
        (["a.csv"], ["c.txt"], ["new.txt"])   # every path relative to the imported prefix


def test_a_large_object_is_imported_in_chunks(store, s3, bucket, s3_endpoint,
                                             monkeypatch) -> None:
    """An object of CHUNK_THRESHOLD bytes or more is stored as a commit stores a large
    file: in chunks and a chunk list, its hash the blake3 of all its bytes. A rerun
    downloads nothing; an object that differs by a little stores a little."""
    import blake3
    base = os.urandom(9 << 20)
    s3.put_object(Bucket=bucket, Key="ckpt/model.bin", Body=base)
    v = store.import_s3(f"s3://{bucket}/ckpt/", name="ckpt", endpoint_url=s3_endpoint)
    (row,) = store.files(f"ckpt:{v.id}", recursive=True)
    assert row.chunks and row.oid == blake3.blake3(base).hexdigest()
    assert list(store.objects.iter_loose()) == []
    assert _files(store, f"ckpt:{v.id}") == {"model.bin": base}
    with store.open_file(f"ckpt:{v.id}", "model.bin") as f:
        f.seek(5 << 20)
        assert f.read(1000) == base[5 << 20:(5 << 20) + 1000]
    assert store.verify().ok
    # the rerun of an unchanged source downloads nothing
    opened: list[str] = []
    real_open = imports.s3.open_object
    monkeypatch.setattr(imports.s3, "open_object",
                        lambda c, b, o: opened.append(o.key) or real_open(c, b, o))
    assert store.import_s3(f"s3://{bucket}/ckpt/", name="ckpt",
                           endpoint_url=s3_endpoint).tree == v.tree
    assert opened == []
    # 1 MiB appended: about 1 MiB more in the store, not 10
    packs = store.dsv_dir / "objects" / "packs"
    size = sum(p.stat().st_size for p in packs.rglob("*") if p.is_file())
    s3.put_object(Bucket=bucket, Key="ckpt/model.bin", Body=base + os.urandom(1 << 20))
    v2 = store.import_s3(f"s3://{bucket}/ckpt/", name="ckpt", endpoint_url=s3_endpoint)
    grown = sum(p.stat().st_size for p in packs.rglob("*") if p.is_file()) - size
    assert v2.id != v.id and (1 << 20) <= grown < 2 << 20, grown
    assert store.gc().removed_objects == 0 and store.verify().ok


def test_an_object_too_large_to_chunk_is_imported_whole(store, s3, bucket, s3_endpoint,
                                                       monkeypatch) -> None:
    """As a commit stores a file over chunking.MAX_CHUNKED_SIZE whole (its chunk list
    could outgrow a tree), an import does: an object that large is one loose object."""
    from dsv import chunking
    monkeypatch.setattr(chunking, "MAX_CHUNKED_SIZE", 6 << 20)
    body, chunked = os.urandom(7 << 20), os.urandom(5 << 20)
    s3.put_object(Bucket=bucket, Key="ckpt/huge.bin", Body=body)
    s3.put_object(Bucket=bucket, Key="ckpt/mid.bin", Body=chunked)
    v = store.import_s3(f"s3://{bucket}/ckpt/", name="ckpt", endpoint_url=s3_endpoint)
    rows = {row.path: row for row in store.files(f"ckpt:{v.id}", recursive=True)}
    assert not rows["huge.bin"].chunks and rows["mid.bin"].chunks
    assert list(store.objects.iter_loose()) == [rows["huge.bin"].oid]
    assert _files(store, f"ckpt:{v.id}") == {"huge.bin": body, "mid.bin": chunked}
    assert store.verify().ok


def test_single_object_pinned_by_etag(store, s3, bucket, s3_endpoint) -> None:
    s3.put_object(Bucket=bucket, Key="mnist.zip", Body=b"zipbytes")
    etag = s3.head_object(Bucket=bucket, Key="mnist.zip")["ETag"].strip('"')
    v = store.import_s3(f"s3://{bucket}/mnist.zip", etag=etag, endpoint_url=s3_endpoint)
    assert _files(store, f"mnist:{v.id}") == {"mnist.zip": b"zipbytes"}
    with pytest.raises(ImportMismatch) as info:
        store.import_s3(f"s3://{bucket}/mnist.zip", name="other", etag="0" * 32,
                        endpoint_url=s3_endpoint)
    assert "ETag" in info.value.message
    assert [d.name for d in store.datasets()] == ["mnist"]  # nothing created


def test_version_id_reads_that_exact_version(store, s3, bucket, s3_endpoint) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key="labels.csv", Body=b"v1")["VersionId"]
    s3.put_object(Bucket=bucket, Key="labels.csv", Body=b"v2")
    v = store.import_s3(f"s3://{bucket}/labels.csv", version_id=first, endpoint_url=s3_endpoint)
    assert _files(store, f"labels:{v.id}") == {"labels.csv": b"v1"}
    assert v.lineage["import"]["files"]["labels.csv"]["version_id"] == first
    # The pinned version never changes, so the check passes although the key moved on.
    assert store.check_import(f"labels:{v.id}").ok


def test_rerun_downloads_only_what_is_missing(store, s3, bucket, s3_endpoint,
                                              monkeypatch) -> None:
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"p/{i}.bin", Body=os.urandom(1000 + i))
    real_open = imports.s3.open_object
    fetched: list[str] = []

    def flaky(client, b, obj):
        fetched.append(obj.key)
        if obj.key == "p/4.bin" and fetched.count("p/4.bin") == 1:
            raise imports.s3.RemoteError("connection reset (injected)")
        return real_open(client, b, obj)

    monkeypatch.setattr(imports.s3, "open_object", flaky)
    monkeypatch.setattr(imports, "BATCH_FILES", 2)
    with pytest.raises(DsvError):
        store.import_s3(f"s3://{bucket}/p/", name="p", endpoint_url=s3_endpoint)
    assert store.index.dataset_by("name", "p") is None  # no half version
    before = len(fetched)
    v = store.import_s3(f"s3://{bucket}/p/", name="p", endpoint_url=s3_endpoint)
    again = fetched[before:]
    assert len(again) < 6 and "p/4.bin" in again
    assert sorted(_files(store, f"p:{v.id}")) == [f"{i}.bin" for i in range(6)]


def test_unsafe_keys_are_refused(store, s3, bucket, s3_endpoint) -> None:
    s3.put_object(Bucket=bucket, Key="x/ok.txt", Body=b"1")
    s3.put_object(Bucket=bucket, Key="x/../../etc/passwd", Body=b"evil")
    with pytest.raises(UnsafePath):
        store.import_s3(f"s3://{bucket}/x/", endpoint_url=s3_endpoint)
    assert store.datasets() == []


def test_cli_import_json_and_check(tmp_path: Path, s3, bucket, s3_endpoint, dsv) -> None:
    ws = tmp_path / "cli"
    ws.mkdir()
    assert dsv("init", "--bare", cwd=ws).code == 0
    s3.put_object(Bucket=bucket, Key="ds/a.txt", Body=b"hello")
    done = dsv("import", f"s3://{bucket}/ds", "--endpoint-url", s3_endpoint, "--json", cwd=ws)
    assert done.code == 0, done.err
    ref = json.loads(done.out)["ref"]
    assert ref.startswith("ds:")
    ok = dsv("import", "--check", ref, "--endpoint-url", s3_endpoint, cwd=ws)
    assert ok.code == 0 and "matches its source" in ok.out
    s3.put_object(Bucket=bucket, Key="ds/a.txt", Body=b"changed")
    bad = dsv("import", "--check", ref, "--json", cwd=ws)  # endpoint from the record
    assert bad.code == 1 and json.loads(bad.out)["changed"] == ["a.txt"]
    missing = dsv("import", f"s3://{bucket}/nope", "--endpoint-url", s3_endpoint, cwd=ws)
    assert missing.code == 1 and missing.err.startswith("error: nothing to import")
    assert "testing-secret" not in (done.out + done.err + ok.out + bad.out)
    assert b"testing-secret" not in b"".join(p.read_bytes() for p in (ws / ".dsv").rglob("*")
                                            if p.is_file())


def test_unreachable_endpoint_fails_fast_and_changes_nothing(store, aws_env) -> None:
    import time
    started = time.time()
    with pytest.raises(DsvError) as info:
        store.import_s3("s3://b/x", endpoint_url="http://127.0.0.1:9")
    assert time.time() - started < 30
    assert "cannot reach" in info.value.message
    assert store.datasets() == []


def test_public_bucket_without_credentials(store, s3, bucket, s3_endpoint, monkeypatch,
                                           tmp_path: Path) -> None:
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    s3.put_object(Bucket=bucket, Key="pub/readme.txt", Body=b"open data", ACL="public-read")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    client = imports.s3.make_client(s3_endpoint)
    assert client.meta.config.signature_version is not None  # UNSIGNED, chosen by itself
    v = store.import_s3(f"s3://{bucket}/pub", endpoint_url=s3_endpoint)
    w = store.import_s3(f"s3://{bucket}/pub", name="pub2", endpoint_url=s3_endpoint,
                        no_sign_request=True)
    assert _files(store, f"pub:{v.id}") == _files(store, f"pub2:{w.id}") == \
        {"readme.txt": b"open data"}


@pytest.mark.parametrize("listed", [100, (2 << 20) + 5])
def test_a_server_sending_more_than_it_listed_is_cut_off(store, s3, bucket, s3_endpoint,
                                                         monkeypatch, listed: int) -> None:
    """A hostile endpoint streams without end: dsv reads at most one byte past the listed
    size (small objects into memory, large ones to disk), refuses, and stores nothing."""
    s3.put_object(Bucket=bucket, Key="data/f.bin", Body=b"x" * listed)
    read: list[int] = []

    class Endless:
        def read(self, amt: int | None = None) -> bytes:
            assert amt is not None, "an unbounded read"
            read.append(amt)
            return b"x" * amt

        def close(self) -> None:
            pass

    monkeypatch.setattr(imports.s3, "open_object", lambda client, bucket, obj: Endless())
    with pytest.raises(ImportMismatch) as caught:
        store.import_s3(f"s3://{bucket}/data/", endpoint_url=s3_endpoint)
    assert caught.value.message == \
        f"s3://{bucket}/data/f.bin: received {listed + 1} bytes, expected {listed}"
    assert sum(read) == listed + 1
    assert store.datasets() == []
    assert list(store.objects.iter_loose()) == []


def test_log_and_show_of_an_import_summarize_its_source(store, s3, bucket, s3_endpoint,
                                                        tmp_path: Path, dsv) -> None:
    """One line names the source, the object count and the total size; no line per file
    (every field stays in --json)."""
    for i in range(30):
        s3.put_object(Bucket=bucket, Key=f"set/part-{i:02d}.csv", Body=b"x" * 100)
    store.import_s3(f"s3://{bucket}/set", endpoint_url=s3_endpoint)
    ws = tmp_path / "ws"
    line = f"imported from s3://{bucket}/set: 30 objects, 2.9 KiB (pinned by ETag)"
    log = dsv("log", "set", cwd=ws)
    assert log.code == 0 and f"  lineage: {line}\n" in log.out
    show = dsv("show", "set:latest", cwd=ws)
    assert show.code == 0 and line in " ".join(show.out.split())   # (a table may wrap it)
    assert "part-07.csv" not in log.out + show.out
    shown = json.loads(dsv("show", "set:latest", "--json", cwd=ws).out)
    assert len(shown["lineage"]["import"]["files"]) == 30


def test_run_with_an_s3_input_imports_it_once_and_names_it_in_lineage(
        tmp_path: Path, s3, bucket, s3_endpoint, dsv) -> None:
    """`dsv run --input NAME=s3://…` (the hosted platforms' experiment datasets): the
    prefix is imported as `dsv import` would (dataset named by the basename rule), bound
    read-only at MOUNT_ROOT/NAME, and a second run over the same objects reuses that
    version; the job's lineage names the imported version and its source."""
    ws = tmp_path / "jobs"
    ws.mkdir()
    assert dsv("init", "--bare", cwd=ws).code == 0
    assert dsv("datasets", "create", "out", cwd=ws).code == 0
    s3.put_object(Bucket=bucket, Key="exp/train/a.csv", Body=b"x,y\n1,2\n")
    s3.put_object(Bucket=bucket, Key="exp/train/b.csv", Body=b"x,y\n3,4\n")
    url = f"s3://{bucket}/exp/train"
    job = 'cat "$DSV_INPUT_DATA/a.csv" "$DSV_INPUT_DATA/b.csv" > "$DSV_OUTPUT_OUT/both.csv"'
    runs = []
    for binding in (["--input", f"data={url}"], ["--dataset", f"data@{url}"]):
        res = dsv("run", *binding, "--output", "out=out", "--endpoint-url",
                  s3_endpoint, "--json", "--", "sh", "-c", job, cwd=ws)
        assert res.code == 0, res.err
        runs.append(json.loads(res.out)["outputs"]["out"]["version"])
    details = [json.loads(dsv("versions", "details", f"out:{vid}", "--json", cwd=ws).out)
               for vid in runs]
    inputs = [d["lineage"]["inputs"]["data"] for d in details]
    assert inputs[0]["source"] == url and inputs[0]["ref"].startswith("train:")
    assert inputs[0]["version"] == inputs[1]["version"]  # the same import, reused
    imported = json.loads(dsv("versions", "details", inputs[0]["ref"], "--json", cwd=ws).out)
    assert imported["lineage"]["import"]["source"] == url
    assert len(json.loads(dsv("versions", "list", "train", "--json", cwd=ws).out)) == 1
    out = tmp_path / "o"
    assert dsv("checkout", f"out:{runs[1]}", "--to", out, cwd=ws).code == 0
    assert (out / "both.csv").read_bytes() == b"x,y\n1,2\nx,y\n3,4\n"

    # A changed object is a new import; a pin that does not match fails before the job.
    s3.put_object(Bucket=bucket, Key="exp/train/a.csv", Body=b"x,y\n5,6\n")
    res = dsv("run", "--input", f"data={url}", "--output", "out=out", "--endpoint-url",
              s3_endpoint, "--json", "--", "sh", "-c", job, cwd=ws)
    assert res.code == 0, res.err
    assert len(json.loads(dsv("versions", "list", "train", "--json", cwd=ws).out)) == 2
    res = dsv("run", "--input", f"one={url}/a.csv", "--etag", "0" * 32, "--endpoint-url",
              s3_endpoint, "--", "true", cwd=ws)
    assert res.code == 1 and "etag" in res.err.lower(), res.err


def test_an_import_larger_than_the_free_space_is_refused_before_any_download(
        store, s3, bucket, s3_endpoint, monkeypatch) -> None:
    """The listing's sizes say what the import needs: more than the disk has free (here
    an object listed with 2^60 bytes) is refused before any byte is downloaded, naming
    both numbers."""
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"big/{i}.bin", Body=b"z" * 5000)
    real_list = imports.s3.list_prefix
    huge = imports.s3.S3Object("big/huge.bin", 1 << 60, "0" * 32, None)
    monkeypatch.setattr(imports.s3, "list_prefix", lambda *a: [*real_list(*a), huge])
    opened: list[str] = []
    monkeypatch.setattr(imports.s3, "open_object",
                        lambda c, b, o: opened.append(o.key) or pytest.fail("downloaded"))
    with pytest.raises(DsvError) as info:
        store.import_s3(f"s3://{bucket}/big/", endpoint_url=s3_endpoint)
    assert f"needs {(1 << 60) + 15_000:,} bytes" in info.value.message
    assert " free" in info.value.message
    assert "nothing was imported" in (info.value.hint or "")
    assert opened == [] and store.datasets() == []
    # A size below zero in a hostile listing cannot hide the others from the check.
    neg = imports.s3.S3Object("big/neg.bin", -(1 << 60), "0" * 32, None)
    monkeypatch.setattr(imports.s3, "list_prefix", lambda *a: [*real_list(*a), huge, neg])
    with pytest.raises(DsvError, match=f"big/neg.bin is listed with {-(1 << 60)} bytes"):
        store.import_s3(f"s3://{bucket}/big/", endpoint_url=s3_endpoint)
    assert opened == [] and store.datasets() == []


@pytest.mark.parametrize("keys", [("d/a", "d/a/b"), ("d/x/y", "d/x/y/z/w")])
def test_a_key_that_is_also_a_directory_is_refused_before_any_download(
        store, s3, bucket, s3_endpoint, monkeypatch, keys: tuple[str, str]) -> None:
    """Keys `a` and `a/b` cannot both be paths of a dataset: the listing says so, before
    any byte is downloaded, and the message names both keys."""
    for key in (*keys, "d/ok.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    opened: list[str] = []
    real_open = imports.s3.open_object
    monkeypatch.setattr(imports.s3, "open_object",
                        lambda c, b, o: opened.append(o.key) or real_open(c, b, o))
    with pytest.raises(DsvError) as info:
        store.import_s3(f"s3://{bucket}/d/", endpoint_url=s3_endpoint)
    assert f"s3://{bucket}/{keys[0]}" in info.value.message
    assert f"s3://{bucket}/{keys[1]}" in info.value.message
    assert opened == [] and store.datasets() == []


@pytest.mark.parametrize("etag", ["", 'a", *', "W/\"weak"])
def test_a_listed_etag_that_cannot_pin_is_read_again_by_head(
        store, s3, bucket, s3_endpoint, monkeypatch, etag: str) -> None:
    """A listing whose ETag is empty or no valid entity-tag cannot make the GET
    conditional: the object is described again by a HEAD, and pinned by what that gives
    (its ETag, or its VersionId), never downloaded unpinned."""
    s3.put_object(Bucket=bucket, Key="e/a.txt", Body=b"alpha")
    real_etag = s3.head_object(Bucket=bucket, Key="e/a.txt")["ETag"].strip('"')
    real_list = imports.s3.list_prefix
    monkeypatch.setattr(imports.s3, "list_prefix", lambda *a: [
        imports.s3.S3Object(o.key, o.size, etag, o.version_id) for o in real_list(*a)])
    v = store.import_s3(f"s3://{bucket}/e/", endpoint_url=s3_endpoint)
    assert _files(store, f"e:{v.id}") == {"a.txt": b"alpha"}
    assert v.lineage["import"]["files"]["a.txt"]["etag"] == real_etag


@pytest.mark.parametrize("versioned", [False, True])
def test_an_object_with_no_etag_is_pinned_by_version_id_or_refused(
        store, s3, bucket, s3_endpoint, monkeypatch, versioned: bool) -> None:
    """With no ETag from the listing nor from a HEAD, only a VersionId can pin the GET:
    a versioned bucket's object is read at its version, any other is refused, naming
    the key, before any byte is downloaded."""
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket,
                                 VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key="n/a.txt", Body=b"alpha").get("VersionId")
    s3.put_object(Bucket=bucket, Key="n/b.txt", Body=b"beta")
    monkeypatch.setattr(imports.s3, "_etag", lambda raw: "")
    opened: list[str] = []
    real_open = imports.s3.open_object
    monkeypatch.setattr(imports.s3, "open_object",
                        lambda c, b, o: opened.append(o.key) or real_open(c, b, o))
    if versioned:
        v = store.import_s3(f"s3://{bucket}/n/", endpoint_url=s3_endpoint)
        assert _files(store, f"n:{v.id}") == {"a.txt": b"alpha", "b.txt": b"beta"}
        assert v.lineage["import"]["files"]["a.txt"]["version_id"] == first
        return
    with pytest.raises(DsvError) as info:
        store.import_s3(f"s3://{bucket}/n/", endpoint_url=s3_endpoint)
    assert f"s3://{bucket}/n/a.txt has no ETag" in info.value.message
    assert "nothing was imported" in (info.value.hint or "")
    assert opened == [] and store.datasets() == []
    with pytest.raises(DsvError, match="has no ETag"):   # one object, as one
        store.import_s3(f"s3://{bucket}/n/a.txt", endpoint_url=s3_endpoint)
    assert opened == [] and store.datasets() == []


def _listing_plus(monkeypatch, *extra: "imports.s3.S3Object") -> None:
    """The server's listing, with `extra` objects a hostile endpoint adds to it."""
    real_list = imports.s3.list_prefix
    monkeypatch.setattr(imports.s3, "list_prefix", lambda *a: [*real_list(*a), *extra])


def test_a_listed_key_outside_the_prefix_is_refused(store, s3, bucket, s3_endpoint,
                                                   monkeypatch) -> None:
    """A hostile listing of prefix d/ naming other/evil.txt (or dx/evil.txt) must not
    become a file of the import under a name cut from it ("her/evil.txt")."""
    s3.put_object(Bucket=bucket, Key="d/ok.txt", Body=b"1")
    honest = imports.s3.list_prefix
    for key in ("other/evil.txt", "dx/evil.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"evil")
    _listing_plus(monkeypatch, *(imports.s3.head(s3, bucket, k)
                                 for k in ("other/evil.txt", "dx/evil.txt")))
    with pytest.raises(DsvError) as info:
        store.import_s3(f"s3://{bucket}/d/", endpoint_url=s3_endpoint)
    assert info.value.message == (f"the listing of s3://{bucket}/d/ names "
                                  f"s3://{bucket}/other/evil.txt, which is not under it")
    assert store.datasets() == []
    # --check names no key from outside the prefix as new
    monkeypatch.setattr(imports.s3, "list_prefix", honest)
    v = store.import_s3(f"s3://{bucket}/d/", endpoint_url=s3_endpoint)
    _listing_plus(monkeypatch, imports.s3.head(s3, bucket, "other/evil.txt"))
    report = store.check_import(f"d:{v.id}")
    assert report.ok and report.added == []


def test_a_listing_naming_one_key_twice_is_refused(store, s3, bucket, s3_endpoint,
                                                   monkeypatch) -> None:
    s3.put_object(Bucket=bucket, Key="d/a.txt", Body=b"1")
    opened: list[str] = []
    real_open = imports.s3.open_object
    monkeypatch.setattr(imports.s3, "open_object",
                        lambda c, b, o: opened.append(o.key) or real_open(c, b, o))
    _listing_plus(monkeypatch, imports.s3.head(s3, bucket, "d/a.txt"))
    with pytest.raises(DsvError) as info:
        store.import_s3(f"s3://{bucket}/d/", endpoint_url=s3_endpoint)
    assert info.value.message == f"the listing names s3://{bucket}/d/a.txt twice"
    assert opened == [] and store.datasets() == []



def test_a_listing_of_more_objects_than_a_version_holds_is_refused_as_it_comes(
        store, s3, bucket, s3_endpoint, monkeypatch) -> None:
    """The count is bounded while listing: an endpoint listing without end is not read
    to its end (nor kept in memory)."""
    s3.put_object(Bucket=bucket, Key="p/0", Body=b"0")
    listed: list[int] = []

    def endless(*args):
        for i in range(1000):
            listed.append(i)
            yield imports.s3.S3Object(f"p/{i}", 1, "0" * 32, None)

    monkeypatch.setattr(imports.s3, "list_prefix", endless)
    monkeypatch.setattr(imports, "MAX_OBJECTS", 10, raising=False)
    with pytest.raises(DsvError) as info:
        store.import_s3(f"s3://{bucket}/p/", endpoint_url=s3_endpoint)
    assert info.value.message == f"s3://{bucket}/p/ holds more than 10 objects"
    assert len(listed) == 11 and store.datasets() == []


@pytest.mark.parametrize("record", [
    "yes", {"source": "s3://b/x", "files": {}}, {"source": 5, "bucket": "b", "files": {}},
    {"source": "s3://b/x", "bucket": "b", "files": ["x"]},
    {"source": "s3://b/x", "bucket": "b", "files": {"a": {"key": 3, "etag": "e",
                                                          "size": 1}}},
    {"source": "s3://b/x", "bucket": "b", "files": {"a": {"key": "x/a", "etag": "e",
                                                          "size": "1"}}},
    {"source": "s3://b/x", "bucket": "b", "prefix": ["x"], "files": {}},
    {"source": "s3://b/x", "bucket": "b", "endpoint_url": 7, "files": {}},
])
def test_a_malformed_import_record_is_refused_by_check(store, tmp_path: Path, s3_endpoint,
                                                      aws_env, dsv, record) -> None:
    """A version's import record may come from a remote (a damaged or hostile one):
    --check refuses a malformed one in one line, never with a bug's traceback."""
    from dsv import versions
    versions.commit_manifest(store.core, "d", {}, "m", {"import": record},
                             create_dataset=True)
    res = dsv("import", "--check", "d:latest", "--endpoint-url", s3_endpoint,
              cwd=tmp_path / "ws")
    assert res.code == 1 and res.err.startswith(
        "error: d:latest has a malformed import record"), res.err
    assert "bug in dsv" not in res.err


def test_what_one_endpoint_served_is_not_taken_for_another_endpoints_object(
        store, s3, bucket, s3_endpoint, monkeypatch) -> None:
    """The record of what an import downloaded (for resuming) names the endpoint: bytes
    one server gave for bucket/key@pin (a VersionId or multipart ETag is only a name the
    server chose) are not reused when another endpoint names the same bucket, key and
    pin; the same endpoint's are."""
    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=b"payload")
    opened: list[str] = []
    real_open = imports.s3.open_object
    monkeypatch.setattr(imports.s3, "open_object",
                        lambda c, b, o: opened.append(o.key) or real_open(c, b, o))
    store.import_s3(f"s3://{bucket}/r/", endpoint_url=s3_endpoint)
    store.import_s3(f"s3://{bucket}/r/", name="again", endpoint_url=s3_endpoint)
    assert opened == ["r/a.bin"]
    other = s3_endpoint.replace("127.0.0.1", "localhost")
    assert other != s3_endpoint
    v = store.import_s3(f"s3://{bucket}/r/", name="other", endpoint_url=other)
    assert opened == ["r/a.bin", "r/a.bin"]
    assert _files(store, f"other:{v.id}") == {"a.bin": b"payload"}


def test_a_reused_import_is_one_the_same_endpoint_served(store, s3, bucket,
                                                        s3_endpoint) -> None:
    """`dsv run --input s3://…` reuses an earlier import of the very same objects only
    when the same endpoint served them: another endpoint naming the same bucket, keys and
    ETags is imported anew, and its lineage names that endpoint."""
    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=b"payload")
    url = f"s3://{bucket}/r/"
    first = imports.import_s3(store.core, url, endpoint_url=s3_endpoint, reuse=True)
    again = imports.import_s3(store.core, url, endpoint_url=s3_endpoint, reuse=True)
    assert again.id == first.id
    other = s3_endpoint.replace("127.0.0.1", "localhost")
    assert other != s3_endpoint
    v = imports.import_s3(store.core, url, endpoint_url=other, reuse=True)
    assert v.id != first.id, f"reused {first.id}, imported from {s3_endpoint}"
    assert v.lineage["import"]["endpoint_url"] == other
    assert v.lineage["import"]["served_by"] == other
    assert _files(store, f"r:{v.id}") == {"a.bin": b"payload"}



@pytest.mark.parametrize("whole", [False, True])
def test_a_failed_download_stops_the_others_of_its_batch(store, s3, bucket, s3_endpoint,
                                                        monkeypatch, whole: bool) -> None:
    """One object failing ends the import at once: downloads running beside it stop at
    their next read (not read to their end, written into a batch already dropped), and
    nothing they read is left behind in the store's temp directory."""
    import threading
    import time
    from dsv import chunking
    if whole:
        monkeypatch.setattr(chunking, "MAX_CHUNKED_SIZE", 1 << 20)
    size = 5 << 20
    for i in range(imports.WORKERS - 1):
        s3.put_object(Bucket=bucket, Key=f"f/{i}.bin", Body=os.urandom(size))
    s3.put_object(Bucket=bucket, Key="f/bad.bin", Body=b"x" * size)
    ended: list[str] = []
    read: dict[str, int] = {}
    real_open = imports.s3.open_object

    class Slow:
        def __init__(self, key: str, body) -> None:
            self.key, self.body = key, body

        def read(self, amt: int | None = None) -> bytes:
            time.sleep(0.02)
            data = self.body.read(min(amt or size, 128 << 10))
            read[self.key] = read.get(self.key, 0) + len(data)
            if not data:
                ended.append(self.key)
            return data

        def close(self) -> None:
            self.body.close()

    def failing(c, b, o):
        if o.key == "f/bad.bin":
            time.sleep(0.2)   # (the others are under way)
            raise imports.s3.RemoteError("f/bad.bin: connection reset (injected)")
        return Slow(o.key, real_open(c, b, o))

    monkeypatch.setattr(imports.s3, "open_object", failing)
    with pytest.raises(DsvError, match="injected"):
        store.import_s3(f"s3://{bucket}/f/", endpoint_url=s3_endpoint)
    # (no clock: on a loaded machine every read is slower) None read to its end, and
    # none reads on afterwards.
    when_failed = dict(read)
    time.sleep(0.5)
    assert ended == [] and read == when_failed and all(n < size for n in read.values()), read
    assert [p for p in store.tmp_dir.rglob("*") if p.is_file()] == []
    assert store.datasets() == [] and threading.active_count() < 20


def _heads_fail(key: str):
    """A FaultProxy rule: every HEAD of `key` is answered 500."""
    def rule(method: str, target: str) -> str | None:
        return "500" if method == "HEAD" and key in target else None
    return rule


def test_a_failing_head_of_an_object_is_reported_as_itself(tmp_path: Path, s3, bucket,
                                                          s3_endpoint, dsv,
                                                          monkeypatch) -> None:
    """`dsv import s3://b/KEY` takes KEY as a prefix only when there is no such object
    (HEAD: 404): a HEAD that fails otherwise is reported as that failure, not as
    "nothing to import at s3://b/KEY/"."""
    monkeypatch.setattr(imports.s3, "MAX_ATTEMPTS", 1)   # (no retry budget to sit out)
    ws = tmp_path / "ws"
    ws.mkdir()
    assert dsv("init", "--bare", cwd=ws).code == 0
    s3.put_object(Bucket=bucket, Key="m/data.csv", Body=b"1,2\n")
    with FaultProxy(s3_endpoint, rule=_heads_fail("/m/data.csv")) as proxy:
        res = dsv("import", f"s3://{bucket}/m/data.csv", "--endpoint-url", proxy.url, cwd=ws)
    assert res.code == 1 and res.err.startswith(f"error: s3://{bucket}/m/data.csv: "), res.err
    assert "(500)" in res.err and "nothing to import" not in res.err, res.err
    assert "Traceback" not in res.err and "bug in dsv" not in res.err
    assert json.loads(dsv("datasets", "list", "--json", cwd=ws).out) == []
    # A HEAD answer without its Content-Length is refused as such, too.
    real_client = imports.s3.make_client

    def lengthless(*args, **kw):
        client = real_client(*args, **kw)
        head = client.head_object
        client.head_object = lambda **a: {k: v for k, v in head(**a).items()
                                         if k != "ContentLength"}
        return client

    with monkeypatch.context() as m:
        m.setattr(imports.s3, "make_client", lengthless)
        res = dsv("import", f"s3://{bucket}/m/data.csv", "--endpoint-url", s3_endpoint,
                  cwd=ws)
    assert res.code == 1 and res.err.startswith(
        f"error: s3://{bucket}/m/data.csv: the S3 endpoint's answer has no valid "
        "Content-Length"), res.err
    # With no such object the key is a prefix, as before.
    res = dsv("import", f"s3://{bucket}/m/nope", "--endpoint-url", s3_endpoint, cwd=ws)
    assert res.code == 1 and res.err.startswith(
        f"error: nothing to import at s3://{bucket}/m/nope/"), res.err


def test_check_reports_only_a_missing_key_as_missing(tmp_path: Path, s3, bucket,
                                                    s3_endpoint, dsv, monkeypatch) -> None:
    """`dsv import --check` reports a key whose HEAD answers 404 as missing, and any
    other failed HEAD as the failure it is (even for a key whose name holds "404")."""
    monkeypatch.setattr(imports.s3, "MAX_ATTEMPTS", 1)
    ws = tmp_path / "ws"
    ws.mkdir()
    assert dsv("init", "--bare", cwd=ws).code == 0
    s3.put_object(Bucket=bucket, Key="c/404.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="c/ok.txt", Body=b"b")
    done = dsv("import", f"s3://{bucket}/c", "--endpoint-url", s3_endpoint, "--json", cwd=ws)
    assert done.code == 0, done.err
    ref = json.loads(done.out)["ref"]
    with FaultProxy(s3_endpoint, rule=_heads_fail("/c/404.txt")) as proxy:
        res = dsv("import", "--check", ref, "--endpoint-url", proxy.url, cwd=ws)
    assert res.code == 1 and res.err.startswith(f"error: s3://{bucket}/c/404.txt: "), \
        (res.out, res.err)
    assert "(500)" in res.err and "missing" not in res.out, (res.out, res.err)
    s3.delete_object(Bucket=bucket, Key="c/ok.txt")
    res = dsv("import", "--check", ref, "--json", cwd=ws)
    assert res.code == 1, res.err
    report = json.loads(res.out)
    assert (report["missing"], report["changed"], report["added"]) == (["ok.txt"], [], [])


def test_check_sends_credentials_only_to_an_endpoint_this_store_uses(
        tmp_path: Path, s3, bucket, s3_endpoint, dsv) -> None:
    """A version pulled from a remote records whatever endpoint its maker (or a hostile
    remote) chose; `import --check` signs its requests with this user's credentials. It
    uses the recorded endpoint only where this store imported through it, or one of its
    remotes uses it; elsewhere it asks for --endpoint-url and sends nothing. (Before: a
    clone's --check sent its signed requests to the recorded endpoint.)"""
    s3.put_object(Bucket=bucket, Key="ds/a.txt", Body=b"hello")
    with FaultProxy(s3_endpoint) as proxy:   # (the endpoint the import names)
        maker, remote, user = tmp_path / "maker", tmp_path / "remote", tmp_path / "user"
        maker.mkdir()
        assert dsv("init", "--bare", cwd=maker).code == 0
        done = dsv("import", f"s3://{bucket}/ds", "--endpoint-url", proxy.url, "--json",
                   cwd=maker)
        assert done.code == 0, done.err
        ref = json.loads(done.out)["ref"]
        assert dsv("remote", "add", "origin", remote, cwd=maker).code == 0
        assert dsv("push", cwd=maker).code == 0
        assert dsv("clone", remote, user, cwd=tmp_path).code == 0

        mine = dsv("import", "--check", ref, cwd=maker)   # imported through it here
        assert mine.code == 0 and "matches its source" in mine.out, mine.err
        sent = proxy.requests
        theirs = dsv("import", "--check", ref, cwd=user)
        assert theirs.code == 1, theirs.out + theirs.err
        assert theirs.err.startswith(f"error: {ref} was imported through the endpoint "
                                     f"{proxy.url}, which no import or remote of this store "
                                     f"uses"), theirs.err
        assert f"--endpoint-url {proxy.url}" in theirs.err
        assert proxy.requests == sent   # not one request
        named = dsv("import", "--check", ref, "--endpoint-url", proxy.url, cwd=user)
        assert named.code == 0 and "matches its source" in named.out, named.err
        assert dsv("remote", "add", "minio", f"s3://{bucket}/dsv", "--endpoint-url",
                   proxy.url, cwd=user).code == 0
        by_remote = dsv("import", "--check", ref, cwd=user)   # a remote of it uses it
        assert by_remote.code == 0 and "matches its source" in by_remote.out, by_remote.err
