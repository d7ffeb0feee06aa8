"""`dsv mount` (issue 13): one version as a read-only FUSE file system, from a store or
straight from a remote; listing reads trees only, bytes are read on first use and
checked; damage reads as EIO, never as other bytes; writes are refused."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Result, deep_chain, read_tree, run_dsv, write_tree
from servers import b3, create_bucket


def _ok(res: Result) -> Result:
    assert res.code == 0, res.err
    return res


@pytest.fixture
def mounts():
    """Directories mounted by a test, unmounted at its end whatever happened."""
    made: list[Path] = []
    yield made
    for where in made:
        if os.path.ismount(where):
            subprocess.run(["fusermount3", "-u", "-z", str(where)], capture_output=True)


def _mount(mounts: list[Path], *args: str | os.PathLike[str], cwd: Path,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    where = Path(args[1])
    where.mkdir(exist_ok=True)
    mounts.append(where)
    done = run_dsv("mount", *args, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    assert os.path.ismount(where)
    return done


def _dataset(tmp_path: Path, dsv) -> Path:
    ws = tmp_path / "ws"
    write_tree(ws, {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(3000),
                    "sub/deep/c.txt": b"c\n", "run.sh": b"#!/bin/sh\n",
                    "big.bin": os.urandom((9 << 20) + 123)})
    os.chmod(ws / "run.sh", 0o755)
    os.symlink("sub/b.bin", ws / "link")
    _ok(dsv("init", ws, "--name", "raw", cwd=tmp_path))
    _ok(dsv("commit", "-m", "one", cwd=ws))
    _ok(dsv("tag", "raw:latest", "v1", cwd=ws))
    write_tree(ws, {"a.txt": b"alpha two\n"})
    _ok(dsv("commit", "-m", "two", cwd=ws))
    return ws


def test_mount_of_a_stores_version(tmp_path, dsv, mounts):
    ws = _dataset(tmp_path, dsv)
    expected = read_tree(ws)
    expected["a.txt"] = b"alpha\n"
    where = tmp_path / "mnt"
    done = _mount(mounts, "raw:v1", where, cwd=ws)
    assert "mounted" in done.stdout
    assert read_tree(where) == expected
    assert os.readlink(where / "link") == "sub/b.bin"
    assert os.stat(where / "run.sh").st_mode & 0o111 and \
        not os.stat(where / "a.txt").st_mode & 0o222
    with open(where / "big.bin", "rb") as f:  # ranged reads of a chunked file
        f.seek(4 << 20)
        assert f.read(1000) == expected["big.bin"][4 << 20:(4 << 20) + 1000]
    with open(where / "a.txt", "rb") as f:  # POSIX locks (SQLite takes them) are granted
        fcntl.lockf(f, fcntl.LOCK_SH)
        assert f.read() == b"alpha\n"
    for attempt in (lambda: open(where / "a.txt", "wb"),
                    lambda: open(where / "new.txt", "wb"),
                    lambda: os.mkdir(where / "d"), lambda: os.unlink(where / "a.txt")):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    # while latest moves on, the mount keeps showing v1
    write_tree(ws, {"a.txt": b"three\n"})
    _ok(dsv("commit", "-m", "three", cwd=ws))
    assert (where / "a.txt").read_bytes() == b"alpha\n"
    res = run_dsv("mount", "raw:latest", where, cwd=ws)
    assert res.returncode == 1 and "mount point already" in res.stderr
    _ok(dsv("umount", where, cwd=tmp_path))
    assert not os.path.ismount(where) and os.listdir(where) == []
    res = dsv("umount", where, cwd=tmp_path)
    assert res.code == 1 and "is not mounted" in res.err


def test_a_mount_point_given_as_a_link_is_the_directory_it_names(tmp_path, dsv, mounts):
    """`dsv mount REF LINK` mounts at the directory LINK names: a second mount there is
    refused as over any mount point, and `dsv umount LINK` (what mount says) ends it."""
    ws = _dataset(tmp_path, dsv)
    real = tmp_path / "real"
    real.mkdir()
    mounts.append(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    _ok(dsv("mount", "raw:v1", link, cwd=ws))
    assert os.path.ismount(real) and (link / "a.txt").read_bytes() == b"alpha\n"
    res = dsv("mount", "raw:v1", link, cwd=ws)
    assert res.code == 1 and res.err.splitlines()[0] == \
        f"error: {link} is a mount point already", res.err
    assert len([m for m in Path("/proc/mounts").read_text().splitlines()
            if f" {real} " in m]) == 1
    _ok(dsv("umount", link, cwd=tmp_path))
    assert not os.path.ismount(real) and os.listdir(real) == []
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for args in (("mount", "raw:v1", tmp_path / "loop1"), ("umount", tmp_path / "loop1")):
        res = dsv(*args, cwd=ws)
        assert res.code == 1 and res.err.startswith(
            f"error: {tmp_path / 'loop1'} cannot be resolved: Symlink loop"), res.err
        assert "bug in dsv" not in res.err


def test_a_file_1200_directories_deep_reads_through_the_mount(tmp_path, dsv, mounts):
    """Looking a path up went through each parent by recursion, a frame a level: past
    Python's 1,000 frames the lookup failed, and the reader got EIO."""
    ws = tmp_path / "ws"
    write_tree(ws, {"top.txt": b"top\n"})
    deep = deep_chain(ws, 1200, leaf=("f.txt", b"at the bottom\n"))
    try:
        _ok(dsv("init", ws, "--name", "deep", cwd=tmp_path))
        _ok(dsv("commit", "-m", "deep", cwd=ws))
        where = tmp_path / "mnt"
        _mount(mounts, "deep:latest", where, cwd=ws)
        assert (where / deep).read_bytes() == b"at the bottom\n"
        assert not (where / deep).with_name("nothing").exists()
        assert (where / "top.txt").read_bytes() == b"top\n"
        _ok(dsv("umount", where, cwd=tmp_path))
    finally:   # (pytest's own clean-up recurses a level a frame too)
        subprocess.run(["rm", "-rf", ws], check=True)


def test_mount_straight_from_s3_reads_lazily_and_never_returns_damage(
        tmp_path, dsv, mounts, s3_endpoint, aws_env):
    ws = _dataset(tmp_path, dsv)
    bucket = f"dsv-mount-{os.urandom(6).hex()}"
    create_bucket(s3_endpoint, bucket)
    url = f"s3://{bucket}/data"
    _ok(dsv("remote", "add", "origin", url, "--endpoint-url", s3_endpoint, cwd=ws))
    _ok(dsv("push", cwd=ws))
    cache = tmp_path / "cache"
    where = tmp_path / "mnt"
    elsewhere = tmp_path / "node"
    elsewhere.mkdir()
    _mount(mounts, "raw:latest", where, "--remote", url, "--endpoint-url", s3_endpoint,
           "--cache", cache, cwd=elsewhere)
    assert sorted(os.listdir(where)) == ["a.txt", "big.bin", "link", "run.sh", "sub"]
    assert not (cache / "loose").exists()  # listing read trees (locators) only
    big = (ws / "big.bin").read_bytes()
    with open(where / "big.bin", "rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == big[1 << 20:(1 << 20) + 4096]
    held = sum(p.stat().st_size for p in (cache / "loose").rglob("*") if p.is_file())
    assert 0 < held < len(big) // 2  # only the chunks around the read (and read-ahead)
    assert b3((where / "big.bin").read_bytes()) == b3(big)
    assert (where / "a.txt").read_bytes() == b"alpha two\n"

    # A damaged object on the origin (and none in the cache) reads as EIO.
    # (Where the push put it, as the pushing store recorded: "c\n" also occurs by
    # chance in the random bytes of other files.)
    blob = b3((ws / "sub" / "deep" / "c.txt").read_bytes())
    with sqlite3.connect(ws / ".dsv" / "index.db") as db:
        pack, offset, length = db.execute("SELECT pack, offset, length FROM remote_object_rows "
                                          "WHERE oid=?", (blob,)).fetchone()
    import boto3
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    listing = client.list_objects_v2(Bucket=bucket, Prefix="data/packs/")["Contents"]
    key, = [item["Key"] for item in listing if pack in item["Key"]]
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert (length, bytes(data[offset:offset + length])) == (2, b"c\n")
    data[offset] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(OSError) as caught:
        (where / "sub" / "deep" / "c.txt").read_bytes()
    assert caught.value.errno == errno.EIO
    _ok(dsv("umount", where, cwd=tmp_path))


def test_without_fuse_mount_fails_with_one_line(tmp_path, dsv):
    ws = _dataset(tmp_path, dsv)
    (tmp_path / "mnt").mkdir()
    res = run_dsv("mount", "raw:v1", tmp_path / "mnt", cwd=ws,
                  env={"FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse.so")})
    assert res.returncode == 1
    assert res.stderr.splitlines()[0].startswith("error: FUSE is not available here"), \
        res.stderr
    assert "Traceback" not in res.stderr and not os.path.ismount(tmp_path / "mnt")


def test_run_with_lazy_inputs_reads_them_through_a_mount(tmp_path, dsv):
    ws = _dataset(tmp_path, dsv)
    _ok(dsv("datasets", "create", "out", cwd=ws))
    job = ('grep " $DSV_INPUT_RAW " /proc/self/mounts > "$DSV_OUTPUT_OUT/mounts.txt"; '
           'cat "$DSV_INPUT_RAW/a.txt" > "$DSV_OUTPUT_OUT/a.txt"; '
           'tail -c 100 "$DSV_INPUT_RAW/big.bin" > "$DSV_OUTPUT_OUT/tail.bin"')
    root = tmp_path / "jobroot"
    res = _ok(dsv("run", "--input", "raw=raw:v1", "--output", "out=out", "--lazy",
                  "--mount-root", root, "--json", "--", "sh", "-c", job, cwd=ws))
    vid = json.loads(res.out)["outputs"]["out"]["version"]
    out = tmp_path / "outcopy"
    _ok(dsv("checkout", f"out:{vid}", "--to", out, cwd=ws))
    assert (out / "a.txt").read_bytes() == b"alpha\n"
    assert (out / "tail.bin").read_bytes() == (ws / "big.bin").read_bytes()[-100:]
    assert "fuse" in (out / "mounts.txt").read_text()
    lineage = json.loads(_ok(dsv("versions", "details", f"out:{vid}", "--json",
                                 cwd=ws)).out)["lineage"]
    assert lineage["inputs_lazy"] is True and lineage["inputs"]["raw"]["ref"].startswith("raw:")
    assert not os.path.ismount(root / "raw")  # unmounted when the job ended


def _store_bytes(ws: Path) -> int:
    return sum(f.stat().st_size for f in (ws / ".dsv" / "objects").rglob("*") if f.is_file())


def test_run_lazy_reads_from_the_remote_only_what_the_job_reads(tmp_path, dsv):
    """A store that holds a version's trees but not its files (a clone of one path) runs
    a lazy job over the whole version: the bytes the job reads come from the remote on
    first read, checked, and nothing else is downloaded (a dataset larger than the disk)."""
    ws = _dataset(tmp_path, dsv)
    remote = tmp_path / "remote"
    remote.mkdir()
    _ok(dsv("remote", "add", "origin", remote, cwd=ws))
    _ok(dsv("push", cwd=ws))
    _ok(dsv("clone", remote, tmp_path / "node", "--path", "a.txt", cwd=tmp_path))
    node = tmp_path / "node"
    assert sorted(p.name for p in node.iterdir()) == [".dsv", "a.txt"]
    before = _store_bytes(node)
    assert before < 1 << 20, before  # big.bin (9 MiB) was not downloaded
    _ok(dsv("datasets", "create", "out", cwd=node))
    job = ('cat "$DSV_INPUT_RAW/sub/b.bin" > "$DSV_OUTPUT_OUT/b.bin"; '
           'tail -c 100 "$DSV_INPUT_RAW/big.bin" > "$DSV_OUTPUT_OUT/tail.bin"; '
           'ls "$DSV_INPUT_RAW/sub/deep" > "$DSV_OUTPUT_OUT/ls.txt"')
    res = _ok(dsv("run", "--input", "raw=raw:v1", "--output", "out=out", "--lazy",
                  "--json", "--", "sh", "-c", job, cwd=node))
    vid = json.loads(res.out)["outputs"]["out"]["version"]
    out = tmp_path / "outcopy"
    _ok(dsv("checkout", f"out:{vid}", "--to", out, cwd=node))
    assert (out / "b.bin").read_bytes() == (ws / "sub" / "b.bin").read_bytes()
    assert (out / "tail.bin").read_bytes() == (ws / "big.bin").read_bytes()[-100:]
    assert (out / "ls.txt").read_text() == "c.txt\n"
    # The chunks of big.bin's tail came, not the file (chunks are at most 1 MiB).
    grown = _store_bytes(node) - before
    assert 100 < grown < 3 << 20, grown


def test_a_killed_lazy_run_leaves_its_mounts_only_while_its_job_runs(tmp_path, dsv):
    """dsv run --lazy killed with SIGKILL (no cleanup code runs): the job, which goes on,
    still reads its input; once it ends, the mount and the process serving it go too."""
    ws = _dataset(tmp_path, dsv)
    root = tmp_path / "jobroot"
    seen = tmp_path / "seen.txt"
    job = f'sleep 3; cat "$DSV_INPUT_RAW/a.txt" > {seen}'
    proc = subprocess.Popen([sys.executable, "-m", "dsv", "run", "--input", "raw=raw:v1",
                             "--lazy", "--mount-root", str(root), "--", "sh", "-c", job],
                            cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline and not os.path.ismount(root / "raw"):
        time.sleep(0.05)
    assert os.path.ismount(root / "raw")
    servers = _serving(root / "raw")
    assert len(servers) == 1
    proc.kill()
    proc.wait(timeout=20)
    deadline = time.time() + 30
    while time.time() < deadline and (os.path.ismount(root / "raw") or _serving(root / "raw")):
        time.sleep(0.1)
    assert seen.read_bytes() == b"alpha\n"  # read through the mount after dsv was killed
    assert not os.path.ismount(root / "raw")
    assert _serving(root / "raw") == []


def _serving(where: Path) -> list[int]:
    """The processes serving a `dsv mount` at `where` (by their command lines)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and os.fsencode(where) in argv and b"--foreground" in argv:
            found.append(int(pid))
    return found


def test_mount_never_runs_code_from_the_directory_it_is_started_in(tmp_path, dsv, mounts):
    """`dsv mount` serves from a child `python … dsv`; started in a dataset's directory
    that holds a `dsv/` package (a pulled dataset may), the child must import dsv's own
    modules, not that package (Python puts the current directory first for `-m`)."""
    ws = _dataset(tmp_path, dsv)
    marker = tmp_path / "ran"
    hostile = f"open({str(marker)!r}, 'w').write('dataset code ran')\n"
    write_tree(ws, {"dsv/__init__.py": hostile, "dsv/__main__.py": hostile})
    where = tmp_path / "mnt"
    where.mkdir()
    mounts.append(where)
    _ok(dsv("mount", "raw:v1", where, cwd=ws))
    assert os.path.ismount(where) and (where / "a.txt").read_bytes() == b"alpha\n"
    assert not marker.exists()


def test_a_mount_run_by_hand_says_why_a_read_got_eio(capsys):
    """`dsv mount … --foreground` run by hand: each read that fails says why on its
    stderr (the reader only sees EIO). A mount `dsv mount` started (a ready fd) keeps
    quiet: its stderr is nobody's once it is ready."""
    import mfusepy

    from dsv.errors import CorruptObject
    from dsv.mount import _operations

    class Damaged:
        def ls(self, path, detail=True):
            raise CorruptObject("object 0123456789ab is damaged on the remote")

    class Version:
        committed = created = 1.0

    ops = _operations(mfusepy)
    for ready_fd, told in ((None, True), (99, False)):
        with pytest.raises(mfusepy.FuseOSError) as caught:
            ops(Damaged(), "ds:v1", Version(), ready_fd).getattr("/a.txt")
        assert caught.value.errno == errno.EIO
        err = capsys.readouterr().err
        assert ("dsv mount: a read failed with EIO: object 0123456789ab is damaged on the "
                "remote" in err) == told, err


def test_a_mount_keeps_a_bounded_number_of_listed_entries(monkeypatch):
    """A mount keeps directory listings up to ENTRIES_KEPT entries over all directories
    (a bound by directories let a walk of a million files hold every listing), the one in
    use whatever its size; an entry evicted is listed again, right."""
    import mfusepy

    from dsv import mount as mount_module

    listed: list[str] = []

    class Listing:   # directories d0..d9 of 30 files each, and one of 100
        def ls(self, path, detail=True):
            listed.append(path)
            rel = path.partition("/")[2]
            if not rel:
                return [{"name": f"ds:v1/d{i}", "type": "directory", "size": 0}
                        for i in range(11)]
            n = 100 if rel == "d10" else 30
            return [{"name": f"ds:v1/{rel}/f{j}", "type": "file", "size": j, "mode": 0o755}
                    for j in range(n)]

    class Version:
        committed = created = 1.0

    monkeypatch.setattr(mount_module, "ENTRIES_KEPT", 70)
    ops = mount_module._operations(mfusepy)(Listing(), "ds:v1", Version(), None)
    for i in range(10):
        for j in (0, 29):
            attrs = ops.getattr(f"/d{i}/f{j}")
            assert attrs["st_size"] == j and attrs["st_mode"] & 0o777 == 0o555
            assert ops.kept == sum(len(d) for d in ops.dirs.values()) <= 70
    assert ops.getattr("/d10/f99")["st_size"] == 99   # (kept alone: 100 > 70)
    assert list(ops.dirs) == ["d10"] and ops.kept == 100
    listed.clear()
    assert ops.getattr("/d3/f7")["st_size"] == 7 and listed == ["ds:v1", "ds:v1/d3"]
    with pytest.raises(mfusepy.FuseOSError) as caught:
        ops.getattr("/d3/nope")
    assert caught.value.errno == errno.ENOENT


def test_a_reordered_chunk_list_reads_as_eio_through_a_mount_never_as_the_file(tmp_path,
                                                                              mounts):
    """A hostile remote's chunk list names a file's own chunks, intact, in another order,
    under the file's id. Through a mount (the kernel's read-ahead, a re-read of the page
    after an error) no read of the file comes out whole: `cat` of it fails with EIO, a
    read of one chunk's worth still works (checked chunk by chunk), and a second read of
    the whole fails again."""
    from dsv import chunking, tree
    from hostile import HostileRemote

    data = os.urandom(6 << 20)
    listed = [(b3(bytes(c.data)), c.length) for c in chunking.chunker().cut_buf(data)]
    assert len(listed) >= 3, listed
    remote = HostileRemote(tmp_path / "remote")
    at, pieces = 0, []
    for _oid, n in listed:
        pieces.append(data[at:at + n])
        at += n
    for piece in pieces:
        remote.blob(piece)
    order = [listed[1], listed[0], *listed[2:]]
    swapped = pieces[1] + pieces[0] + b"".join(pieces[2:])
    chunk_list = remote.add(tree.encode_chunks(tree.ChunkList(b3(data), len(data), order)), 1)
    root = remote.tree([["f.bin", "f", 0o644, len(data), b3(data), chunk_list]])
    record = remote.record("v1abcdefgh", "ds000001", root, files=1, size=len(data))
    remote.publish()
    remote.ref("ds000001", "latest", "v1abcdefgh", record)
    where = tmp_path / "mnt"
    elsewhere = tmp_path / "node"
    elsewhere.mkdir()
    _mount(mounts, "victim:latest", where, "--remote", remote.root, cwd=elsewhere)
    for _attempt in range(2):
        with pytest.raises(OSError) as caught:
            (where / "f.bin").read_bytes()
        assert caught.value.errno == errno.EIO
    done = subprocess.run(["cat", where / "f.bin"], capture_output=True, timeout=60)
    assert done.returncode != 0 and done.stdout != data and done.stdout != swapped
    with open(where / "f.bin", "rb") as f:
        f.seek(len(pieces[1]) + 10)
        assert f.read(1000) == swapped[len(pieces[1]) + 10:len(pieces[1]) + 1010]
    assert run_dsv("umount", where, cwd=tmp_path).returncode == 0
