"""dsv/_native.c against its Python twins in dsv/native.py: the same results on the same
trees (odd names, links, FIFOs, files that vanish or grow), the same refusals, and a
walk that finds the same thing through either."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from dsv import native, worktree
from dsv.model import FILE, LINK


ODD = os.fsdecode(b"caf\xc3\xa9-\xff\xfe.bin")  # valid UTF-8, then bytes that are not


def _c() -> object:
    """The C module: CI builds it (`pip install -e .` with gcc), so its absence fails."""
    assert native.BUILT, "dsv/_native.c was not built: is a C compiler installed?"
    return native._native


def _tree(root: Path) -> list[str]:
    (root / "sub" / "deep").mkdir(parents=True)
    names = ["a.txt", "b.bin", ODD, "sub/x", "sub/deep/y", "sub/deep/z"]
    for i, rel in enumerate(names):
        (root / rel).write_bytes(b"%d" % i * (i + 1))
    (root / "link").symlink_to("a.txt")
    (root / "dangling").symlink_to("nowhere/at/all")
    os.mkfifo(root / "fifo")
    os.chmod(root / "b.bin", 0o751)
    return names


def _dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_the_c_loops_are_built_and_used() -> None:
    c = _c()
    assert native.stat_names is c.stat_names  # type: ignore[attr-defined]
    assert native.read_files is c.read_files  # type: ignore[attr-defined]
    assert native.cut_marks is c.cut_marks  # type: ignore[attr-defined]
    assert native.run_payload is c.run_payload  # type: ignore[attr-defined]
    assert native.write_new_files is c.write_new_files  # type: ignore[attr-defined]
    assert native.pread_many is c.pread_many  # type: ignore[attr-defined]
    assert native.copy_into is c.copy_into  # type: ignore[attr-defined]


def test_scan_digests_are_what_they_were_before_the_c_module() -> None:
    """A store remembers scan digests (index statdigest): the bytes they hash must not
    change. Pinned to what the Python code before dsv/_native.c gave for these runs."""
    run = [("a/b.txt", (12, 1_700_000_000_123_456_789, 42, 0o644, FILE)),
           ("a/caf\u00e9", (0, 5, 2**64 - 1, 0o755, FILE)),
           ("a/l\udcff", (3, -7, 1, 0o777, LINK))]
    for twin in (_c().run_payload, native.run_payload_py):  # type: ignore[attr-defined]
        for cuts in (_c().cut_marks, native.cut_marks_py):  # type: ignore[attr-defined]
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(native, "run_payload", twin)
                patch.setattr(native, "cut_marks", cuts)
                digest = worktree.ScanDigest()
                assert digest.add(run) == "da077049f4530f5cdc8acb5ab7d057a8"
                assert digest.add([("z", (1, 2, 3, 4, FILE))]) == \
                    "6195a506a2dbc5089fa636aa6f6dbc09"


@pytest.mark.parametrize("many", [False, True])
def test_stat_names_twins_agree(tmp_path: Path, many: bool) -> None:
    c = _c()
    _tree(tmp_path)
    if many:  # past the size where C splits the lstats between two threads
        for i in range(5000):
            (tmp_path / f"n{i:05d}").write_bytes(b"x" * (i % 7))
    names = sorted(os.listdir(tmp_path)) + ["gone-since-listed"]
    fd = _dir_fd(tmp_path)
    try:
        got = c.stat_names(fd, names, "p/q/", FILE, LINK)  # type: ignore[attr-defined]
        want = native.stat_names_py(fd, names, "p/q/", FILE, LINK)
    finally:
        os.close(fd)
    assert got == want
    files, links, dirs, others = got
    rows = dict(files)
    st = os.lstat(tmp_path / "b.bin")
    assert rows["p/q/b.bin"] == (st.st_size, st.st_mtime_ns, st.st_ino, 0o751, FILE)
    assert rows[f"p/q/{ODD}"][4] == FILE
    assert rows["p/q/link"] == (5, os.lstat(tmp_path / "link").st_mtime_ns,
                                os.lstat(tmp_path / "link").st_ino, 0o777, LINK)
    assert links == ["p/q/dangling", "p/q/link"]
    assert dirs == ["sub"] and others == ["fifo"]
    assert "p/q/gone-since-listed" not in rows
    assert [rel for rel, _fs in files] == sorted(rel for rel, _fs in files)
    assert len(files) == 3 + 2 + (5000 if many else 0)


def test_mtimes_past_2262_are_exact_both_ways(tmp_path: Path) -> None:
    """An mtime in ns that does not fit 64 bits (a file dated 2300) is the same big int
    from both twins, as os.lstat gives it (the walk then treats it as the old code did)."""
    c = _c()
    (tmp_path / "future").write_bytes(b"f")
    when = 10_500_000_000 * 10**9 + 123  # 2302
    try:
        os.utime(tmp_path / "future", ns=(when, when))
    except (OverflowError, OSError):
        pytest.skip("this file system cannot store a date past 2262")
    want = os.lstat(tmp_path / "future").st_mtime_ns
    assert want > 2**63
    fd = _dir_fd(tmp_path)
    try:
        got = c.stat_names(fd, ["future"], "", FILE, LINK)  # type: ignore[attr-defined]
        assert got == native.stat_names_py(fd, ["future"], "", FILE, LINK)
        assert got[0][0][1][1] == want
        assert c.run_payload(got[0], "") is None  # type: ignore[attr-defined]
    finally:
        os.close(fd)


def test_stat_names_refuse_what_lstat_refuses(tmp_path: Path) -> None:
    c = _c()
    fd = _dir_fd(tmp_path)
    try:
        for twin in (c.stat_names, native.stat_names_py):  # type: ignore[attr-defined]
            with pytest.raises(ValueError):
                twin(fd, ["a\0b"], "", FILE, LINK)
        os.close(fd)
        for twin in (c.stat_names, native.stat_names_py):  # type: ignore[attr-defined]
            with pytest.raises(OSError) as err:
                twin(fd, ["a"], "", FILE, LINK)
            assert err.value.errno == errno.EBADF
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_read_files_twins_agree(tmp_path: Path) -> None:
    c = _c()
    names = _tree(tmp_path)
    (tmp_path / "big").write_bytes(os.urandom(3 << 20))
    rels = [*names, "big", "a.txt"]
    sizes = [(tmp_path / r).stat().st_size for r in rels]
    sizes[rels.index("big")] = 10  # it grew since its size was taken: read to its end
    fd = _dir_fd(tmp_path)
    try:
        got = c.read_files(fd, rels, sizes)  # type: ignore[attr-defined]
        want = native.read_files_py(fd, rels, sizes)
        assert got == want == [(tmp_path / r).read_bytes() for r in rels]
        assert c.read_files(fd, [], []) == native.read_files_py(fd, [], []) == []  # type: ignore[attr-defined]
    finally:
        os.close(fd)


@pytest.mark.parametrize(("rel", "code"), [
    ("link", errno.ELOOP),                 # a link in a file's place: never followed
    ("through/a.txt", errno.ENOTDIR),     # a link in a directory's place (O_DIRECTORY)
    ("sub/../a.txt", errno.EINVAL),
    ("./a.txt", errno.EINVAL),
    ("sub//x", errno.EINVAL),
    ("/etc/passwd", errno.EINVAL),
    ("fifo", errno.EINVAL),               # never read (nor waited on)
    ("sub", errno.EINVAL),                # a directory is no file either
    ("missing", errno.ENOENT),
    ("a.txt/x", errno.ENOTDIR),
])
def test_read_files_refuse_links_and_odd_paths(tmp_path: Path, rel: str, code: int) -> None:
    c = _c()
    _tree(tmp_path)
    (tmp_path / "through").symlink_to(tmp_path)
    fd = _dir_fd(tmp_path)
    try:
        for twin in (c.read_files, native.read_files_py):  # type: ignore[attr-defined]
            with pytest.raises(OSError) as err:
                twin(fd, ["a.txt", rel, "b.bin"], [1, 1, 1])
            assert err.value.errno == code, twin
            assert err.value.filename == rel
    finally:
        os.close(fd)


def test_read_files_refuse_sizes_out_of_range(tmp_path: Path) -> None:
    c = _c()
    (tmp_path / "a").write_bytes(b"a")
    fd = _dir_fd(tmp_path)
    try:
        for twin in (c.read_files, native.read_files_py):  # type: ignore[attr-defined]
            for sizes in ([-1], [native.MAX_READ + 1], [1, 2]):
                with pytest.raises(ValueError):
                    twin(fd, ["a"], sizes)
    finally:
        os.close(fd)


def _run(n: int) -> list[tuple[str, tuple[int, int, int, int, str]]]:
    return [(f"d{i % 13}/{ODD if i % 5 == 0 else ''}f{i:06d}",
             (i * 37, 1_700_000_000_000_000_000 + i, 2**64 - 1 - i, 0o644, LINK if i % 9 else FILE))
            for i in range(n)]


def test_cut_marks_and_run_payload_refuse_alike() -> None:
    c = _c()
    for twin in (c.cut_marks, native.cut_marks_py):  # type: ignore[attr-defined]
        for modulus in (0, -4096):
            with pytest.raises(ValueError):
                twin(_run(3), modulus)
    for twin in (c.run_payload, native.run_payload_py):  # type: ignore[attr-defined]
        assert twin([("a", (1.5, 2, 3, 4, FILE))], "") is None  # no int: as struct.pack
        with pytest.raises(ValueError):
            twin([("a", (1, 2, 3, 4, "\u00e9"))], "")  # a kind that is not ASCII


def test_cut_marks_and_run_payload_twins_agree() -> None:
    c = _c()
    for n in (0, 1, 7, 20_000):
        run = _run(n)
        for modulus in (1, 2, 4096):
            assert c.cut_marks(run, modulus) == native.cut_marks_py(run, modulus)  # type: ignore[attr-defined]
        assert c.run_payload(run, "after\udcff") == native.run_payload_py(run, "after\udcff")  # type: ignore[attr-defined]
    assert c.cut_marks(_run(20_000), 4096) != []  # type: ignore[attr-defined]
    assert native.run_payload_py([("a", (1, 2, 3, 4, "f"))], "") == \
        b"\0a\0f" + (1).to_bytes(8, "little") + (2).to_bytes(8, "little") + \
        (3).to_bytes(8, "little") + (4).to_bytes(8, "little")


@pytest.mark.parametrize("stat", [(2**63, 0, 0, 0, "f"), (0, -2**63 - 1, 0, 0, "f"),
                                  (0, 0, -1, 0, "f"), (0, 0, 2**64, 0, "f")])
def test_run_payload_is_none_where_a_value_does_not_fit(stat: tuple) -> None:
    c = _c()
    run = [("a", (1, 2, 3, 4, "f")), ("b", stat)]
    assert c.run_payload(run, "") is None  # type: ignore[attr-defined]
    assert native.run_payload_py(run, "") is None


def test_a_walk_finds_the_same_through_either_twin(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _c()
    _tree(tmp_path)
    (tmp_path / ".dsvignore").write_text("*.txt\nsub/deep/\n")
    for i in range(300):
        (tmp_path / "sub" / f"m{i:03d}").write_bytes(b"m")

    def walked() -> tuple[list, list, list, list]:
        skipped: list[str] = []
        ignored: list[str] = []
        links: list[str] = []
        runs = list(worktree.walk(tmp_path, skipped, [".dsv"], stores=[], ignore_files=True,
                                  links=links, ignored=ignored))
        return runs, sorted(skipped), sorted(ignored), links

    with_c = walked()
    monkeypatch.setattr(native, "stat_names", native.stat_names_py)
    monkeypatch.setattr(native, "cut_marks", native.cut_marks_py)
    with_py = walked()
    assert with_c == with_py
    runs, skipped, ignored, links = with_c
    found = [rel for run in runs for rel, _fs in run]
    assert "a.txt" not in found and "sub/deep/y" not in found and f"{ODD}" in found
    assert ignored == ["a.txt", "sub/deep/"]
    assert skipped == ["fifo"] and links == ["dangling", "link"]
    assert len(found) == 1 + 1 + 1 + 2 + 300 + 1  # b.bin, ODD, sub/x, links, m*, .dsvignore


@pytest.mark.parametrize("swap", ["link", "dir-link", "fifo", "removed"])
def test_a_file_swapped_between_walk_and_read_is_refused(tmp_path: Path, dsv,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         swap: str) -> None:
    """A commit reads what its walk found: a file that a link, a FIFO or nothing replaces
    in between (or whose directory a link replaces) fails the commit with a clear message;
    nothing outside the dataset is read, and no version is made. The file lies in a later
    group than the first, so the thread that reads ahead is the one that meets it."""
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    for i in range(3 * worktree._READ_GROUP):
        (ws / f"a{i:04d}.txt").write_bytes(b"a%d" % i)
    (ws / "sub" / "z.txt").write_bytes(b"z")
    secret = tmp_path / "secret"
    (secret / "sub").mkdir(parents=True)
    (secret / "sub" / "z.txt").write_bytes(b"SECRET")
    assert dsv("init", "--name", "data", cwd=ws).code == 0
    real = native.read_files
    calls = []

    def swapping(root_fd: int, rels: list[str], sizes: list[int]) -> list[bytes]:
        calls.append(len(rels))
        if "sub/z.txt" in rels:
            (ws / "sub" / "z.txt").unlink()
            if swap == "link":
                (ws / "sub" / "z.txt").symlink_to(secret / "sub" / "z.txt")
            elif swap == "dir-link":
                (ws / "sub").rmdir()
                (ws / "sub").symlink_to(secret / "sub")
            elif swap == "fifo":
                os.mkfifo(ws / "sub" / "z.txt")
        return real(root_fd, rels, sizes)

    monkeypatch.setattr(native, "read_files", swapping)
    res = dsv("commit", "-m", "one", cwd=ws)
    assert res.code != 0
    assert len(calls) >= 3  # (the file was in a group read ahead)
    assert "bug in dsv" not in res.err and "Traceback" not in res.err
    where = os.path.join(ws, "sub/z.txt")
    if swap == "removed":
        assert f"{where} was removed while dsv read it" in " ".join(res.err.split())
    else:
        assert f"{where} is no longer a regular file under {ws}" in " ".join(res.err.split())
    monkeypatch.setattr(native, "read_files", real)
    log = dsv("log", "data", "--json", cwd=ws)
    assert log.code == 0
    assert "one" not in [v.get("message") for v in json.loads(log.out)]
    for path in (ws / ".dsv").rglob("*"):  # the outside file's bytes went nowhere
        if path.is_file():
            assert b"SECRET" not in path.read_bytes(), path


def test_a_root_reached_through_a_link_is_read(tmp_path: Path) -> None:
    """The root itself may be a link (a home directory on another disk): only what lies
    below it is never followed."""
    real = tmp_path / "real"
    (real / "d").mkdir(parents=True)
    (real / "d" / "x").write_bytes(b"x" * 10)
    (tmp_path / "alias").symlink_to(real)
    stat_of = os.lstat(real / "d" / "x")
    fs = (10, stat_of.st_mtime_ns, stat_of.st_ino, 0o644, FILE)
    for twin in (native.read_files_py, _c().read_files):  # type: ignore[attr-defined]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(native, "read_files", twin)
            groups = list(worktree._read_small_files(tmp_path / "alias", [("d/x", fs)]))
        assert [(rel, data) for group in groups for rel, _fs, data, _oid, _at in group] == \
            [("d/x", b"x" * 10)]


def test_a_build_from_older_sources_is_left_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _c()
    assert native._load() is c
    monkeypatch.setattr(c, "ABI", native.ABI - 1)
    assert native._load() is None
    monkeypatch.delattr(c, "ABI")
    assert native._load() is None


def test_write_new_files_twins_agree(tmp_path: Path) -> None:
    c = _c()
    results = {}
    for label, twin in (("c", c.write_new_files), ("py", native.write_new_files_py)):  # type: ignore[attr-defined]
        where = tmp_path / label
        where.mkdir()
        (where / "taken").write_bytes(b"keep me")
        (where / "link").symlink_to(tmp_path / "outside")
        names = ["a", "empty", "taken", "link", ODD, "big", "exec"]
        datas = [b"alpha", b"", b"new", b"through", b"odd", os.urandom(5 << 20),
                 bytearray(b"#!/bin/sh\n")]
        modes = [0o644, 0o600, 0o644, 0o644, 0o640, 0o644, 0o755]
        fd = _dir_fd(where)
        try:
            got = twin(fd, names, datas, modes)
            for bad in ("x/y", "..", "", "."):
                assert twin(fd, [bad], [b"no"], [0o644]) == [errno.EINVAL]
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        errors = {name: r for name, r in zip(names, got) if isinstance(r, int)}
        assert errors == {"taken": errno.EEXIST, "link": errno.EEXIST}
        for name, data, mode, r in zip(names, datas, modes, got):
            if isinstance(r, int):
                continue
            st = os.lstat(where / name)
            assert r == (st.st_size, st.st_mtime_ns, st.st_ino, mode & ~umask & 0o7777)
            assert (where / name).read_bytes() == bytes(data)
        assert (where / "taken").read_bytes() == b"keep me"
        assert not (tmp_path / "outside").exists()  # never written through the link
        results[label] = sorted(os.listdir(where))
    assert results["c"] == results["py"]


def test_write_new_files_stop_at_the_first_failure(tmp_path: Path) -> None:
    """A failure other than EEXIST (a name too long) ends the batch: nothing after it is
    made, and both twins say ECANCELED for those."""
    c = _c()
    for label, twin in (("c", c.write_new_files), ("py", native.write_new_files_py)):  # type: ignore[attr-defined]
        where = tmp_path / label
        where.mkdir()
        (where / "there").write_bytes(b"x")
        fd = _dir_fd(where)
        try:
            got = twin(fd, ["a", "there", "n" * 300, "b"], [b"1", b"2", b"3", b"4"],
                       [0o644] * 4)
        finally:
            os.close(fd)
        assert got[1:] == [errno.EEXIST, errno.ENAMETOOLONG, errno.ECANCELED], label
        assert sorted(os.listdir(where)) == ["a", "there"], label


def test_write_new_files_refuse_bad_arguments(tmp_path: Path) -> None:
    c = _c()
    fd = _dir_fd(tmp_path)
    try:
        for twin in (c.write_new_files, native.write_new_files_py):  # type: ignore[attr-defined]
            with pytest.raises(ValueError):
                twin(fd, ["a"], [b"a", b"b"], [0o644])
            with pytest.raises(ValueError):
                twin(fd, ["a"], [b"a"], [0o10000])
        assert os.listdir(tmp_path) == []
    finally:
        os.close(fd)


def test_the_python_twins_make_the_same_versions_end_to_end(tmp_path: Path) -> None:
    """The same commit, status and fresh checkout through the CLI with the C module and
    with DSV_NO_NATIVE=1: the same tree id, the same bytes and modes checked out."""
    import subprocess
    import sys

    _c()
    trees = {}
    for label, env_extra in (("c", {}), ("py", {"DSV_NO_NATIVE": "1"})):
        ws = tmp_path / label / "ws"
        for i in range(700):  # past one read group, and one write batch in a directory
            path = ws / f"d{i % 2}" / f"f{i:04d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"%d" % i * (i % 50 + 1))
        (ws / "café ü.bin").write_bytes(b"odd")  # (names not in UTF-8 are refused)
        os.chmod(ws / "d1" / "f0001.bin", 0o755)
        (ws / "link").symlink_to("d0/f0000.bin")
        env = {**os.environ, "DSV_AUTHOR": "t@t", **env_extra}

        def run(*args: str, cwd: Path = ws) -> str:
            res = subprocess.run([sys.executable, "-m", "dsv", *args], cwd=cwd, env=env,
                                 capture_output=True, text=True, check=False)
            assert res.returncode == 0, res.stderr
            return res.stdout

        built = subprocess.run([sys.executable, "-c", "from dsv import native; "
                                "print(native.BUILT)"], env=env, capture_output=True,
                               text=True, check=True).stdout.strip()
        assert built == str(label == "c")
        run("init", "--name", "data")
        run("commit", "-m", "one")
        assert json.loads(run("status", "--json"))[0]["clean"] is True
        out = tmp_path / label / "out"
        run("checkout", "data:latest", "--to", str(out))
        trees[label] = json.loads(run("versions", "details", "data:latest", "--json"))["tree"]
        # A clone places into its working directory: stat rows from the batch writes.
        run("remote", "add", "origin", str(tmp_path / label / "remote"))
        run("push")
        run("clone", str(tmp_path / label / "remote"), str(tmp_path / label / "clone"),
            cwd=tmp_path / label)
        (status,) = json.loads(run("status", "--json", cwd=tmp_path / label / "clone"))
        assert status["clean"] is True
        files = json.loads(run("files", "list", "data:latest", "--recursive", "--json",
                               cwd=tmp_path / label / "clone"))
        assert len(files) == 700 + 2
        for path in ws.rglob("*"):
            rel = path.relative_to(ws)
            if ".dsv" in rel.parts or path.is_dir():
                continue
            placed = out / rel
            assert os.readlink(placed) == os.readlink(path) if path.is_symlink() else \
                placed.read_bytes() == path.read_bytes(), rel
            assert (placed.lstat().st_mode & 0o100) == (path.lstat().st_mode & 0o100), rel
    assert trees["c"] == trees["py"]


def test_pread_many_twins_agree(tmp_path: Path) -> None:
    c = _c()
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(os.urandom(100_000))
    two.write_bytes(b"0123456789")
    fd1, fd2 = os.open(one, os.O_RDONLY), os.open(two, os.O_RDONLY)
    try:
        fds = [fd1, fd2, fd1, fd2, fd2]
        offsets = [5, 0, 99_990, 8, 50]
        lengths = [70_000, 10, 10, 5, 3]   # the last two run past the end: fewer bytes
        got = c.pread_many(fds, offsets, lengths)  # type: ignore[attr-defined]
        assert got == native.pread_many_py(fds, offsets, lengths)
        data = one.read_bytes()
        assert got == [data[5:70_005], b"0123456789", data[99_990:], b"89", b""]
        for twin in (c.pread_many, native.pread_many_py):  # type: ignore[attr-defined]
            assert twin([], [], []) == []
            with pytest.raises(ValueError):
                twin([fd1], [0, 1], [1])
            with pytest.raises(ValueError):
                twin([fd1], [-1], [1])
            with pytest.raises(TypeError):
                twin([fd1], [0], [1.0])
    finally:
        os.close(fd1)
        os.close(fd2)
    for twin in (c.pread_many, native.pread_many_py):  # type: ignore[attr-defined]
        with pytest.raises(OSError) as err:
            twin([fd1], [0], [4])  # closed
        assert err.value.errno == errno.EBADF


def test_copy_into_twins_agree(tmp_path: Path) -> None:
    """Small copies and large ones (made without the GIL), at the start, the middle and
    the very end of a buffer, from bytes and from views; what does not fit is refused
    with nothing written, and a read-only buffer is no destination."""
    import mmap
    data = os.urandom(300_000)
    for twin in (_c().copy_into, native.copy_into_py):  # type: ignore[attr-defined]
        buf = mmap.mmap(-1, 1 << 20)
        view = memoryview(buf)
        assert twin(view, 0, data[:10]) == 10
        assert twin(view, 4096, memoryview(data)[7:200_007]) == 200_000
        assert twin(view, len(view) - 5, b"tail!") == 5
        assert twin(view, len(view), b"") == 0
        assert bytes(view[:10]) == data[:10]
        assert bytes(view[4096:204_096]) == data[7:200_007]
        assert bytes(view[-5:]) == b"tail!"
        assert bytes(view[10:4096]) == bytes(4086)
        before = bytes(view)
        for offset, piece in ((len(view) - 4, b"fives"), (-1, b"x"), (len(view) + 1, b""),
                              (len(view) - 299_999, data)):
            with pytest.raises(ValueError):
                twin(view, offset, piece)
        assert bytes(view) == before
        with pytest.raises(TypeError):
            twin(memoryview(data), 0, b"x")   # bytes cannot be written to
        view.release()
        buf.close()


def test_a_placement_reads_no_length_the_index_made_up(tmp_path: Path) -> None:
    """A location whose length is not the size the tree gives (an index another hand
    touched) stops the batch with CorruptObject before any read or write."""
    from dsv.errors import CorruptObject
    from dsv.tree import Entry

    class Objects:
        def pack_fd(self, pack: str) -> int:  # pragma: no cover - must not be reached
            raise AssertionError("read a length the index made up")

    placer = worktree.Materializer(Objects(), tmp_path, fresh=True)  # type: ignore[arg-type]
    entry = Entry(FILE, 0o644, 10, "ab" * 32, "")
    for length in (9, 11, 2**40):
        where = ("p" * 64, 0, length)
        with pytest.raises(CorruptObject, match="bytes in the index but 10 in its tree"):
            placer._small_batch([entry], {entry.oid: where})
        with pytest.raises(CorruptObject, match="bytes in the index but 10 in its tree"):
            placer._small_bytes(entry, where)
    assert os.listdir(tmp_path) == []


def test_settle_keeps_the_rows_of_files_unchanged_since_they_were_written(
        tmp_path: Path) -> None:
    """worktree.settle stats the files a checkout wrote again (one C call a folder): the
    rows of those unchanged come back stamped later than the tick they were written in;
    a file rewritten meanwhile, a removed one, one in a folder gone and a folder
    replaced by a file lose theirs."""
    def row(rel: str) -> tuple:
        st = os.lstat(tmp_path / rel)
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode & 0o7777, "0" * 64, 1)

    for rel in ("a", "sub/b", "sub/c", "sub/deep/d", "gone/e", "lost"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    os.symlink("a", tmp_path / "sub" / "link")
    rels = ["a", "sub/b", "sub/c", "sub/deep/d", "sub/link", "gone/e", "lost"]
    rows = [(rel, row(rel)) for rel in rels]
    (tmp_path / "sub" / "c").write_bytes(b"other bytes")   # rewritten after its row
    (tmp_path / "lost").unlink()
    (tmp_path / "gone" / "e").unlink()
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_bytes(b"now a file")
    kept = dict(worktree.settle(tmp_path, rows))
    assert sorted(kept) == ["a", "sub/b", "sub/deep/d", "sub/link"]
    before = dict(rows)
    for rel, settled in kept.items():
        assert settled[:5] == before[rel][:5]
        assert settled[5] > before[rel][1] + worktree.RACY_NS
