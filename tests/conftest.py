"""Shared fixtures: run the real CLI in-process (through `dsv.cli.main`, so error handling
and exit codes are the user's) or as a subprocess (for kill -9 and concurrency tests)."""

from __future__ import annotations

import compileall
import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dsv.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def pytest_configure(config: pytest.Config) -> None:
    """Compile dsv to bytecode once, before any worker starts: a `python -m dsv` the tests
    spawn (hundreds of them) reads it instead of compiling every module again, which it
    does on each start where PYTHONDONTWRITEBYTECODE is set and an editable install left
    no bytecode (a third of the suite's time, measured)."""
    if not hasattr(config, "workerinput"):   # (the controller, or a run without xdist)
        import dsv
        compileall.compile_dir(Path(dsv.__file__).parent, quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` (bounded randomized runs, retry budgets: tens of seconds each)
    go first, so that `-n 2` does not end with one worker running one of them alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSV_DIR", raising=False)
    monkeypatch.delenv("DSV_CRASH_AT", raising=False)
    monkeypatch.setenv("DSV_AUTHOR", "tester <t@example.com>")


@pytest.fixture
def dsv(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """`dsv(*args, cwd=DIR)` runs the CLI in-process and returns Result(code, out, err)."""

    def run(*args: str | os.PathLike[str], cwd: str | os.PathLike[str]) -> Result:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            main([os.fspath(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_in_process(*args: str | os.PathLike[str], cwd: str | os.PathLike[str]) -> Result:
    """`dsv ARGS` through `dsv.cli.main` in this process, as the `dsv` fixture runs it but
    callable from plain helpers: for the read-only queries and final checks that tests
    repeat many times (the same code and output as `python -m dsv`, without ~0.4 s of
    interpreter start a call). The working directory is `cwd` for the call's duration."""
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    code = 0
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([os.fspath(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(before)
    return Result(code, out.getvalue(), err.getvalue())


def run_dsv(*args: str | os.PathLike[str], cwd: str | os.PathLike[str],
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m dsv ARGS` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dsv", *map(os.fspath, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def write_tree(root: Path, files: dict[str, bytes | str]) -> None:
    """Create `files` (relative path → content) under `root`."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)


def unnumber_index(dsv_dir: Path, fmt: int) -> None:
    """Turn a store's index back into schema 9's (object rows, local and remote, naming
    their pack by id) and its config into format `fmt`: what an older dsv left."""
    import json
    import sqlite3
    # (table, its schema-9 columns, what fills them from the schema-10 tables)
    old = [("packs", "[id] TEXT PRIMARY KEY, [size] INTEGER, [count] INTEGER, [created] "
            "FLOAT", "id, size, count, created FROM packs"),
           ("objects", "oid TEXT PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL, "
            "length INTEGER NOT NULL, kind INTEGER NOT NULL",
            "o.oid, p.id, o.offset, o.length, o.kind FROM objects o JOIN packs p ON "
            "p.num = o.pack_num"),
           ("remote_packs", "remote TEXT NOT NULL, pack TEXT NOT NULL, size INTEGER NOT "
            "NULL, count INTEGER, PRIMARY KEY (remote, pack)",
            "remote, pack, size, count FROM remote_packs"),
           ("remote_objects", "remote TEXT NOT NULL, oid TEXT NOT NULL, pack TEXT NOT NULL, "
            "offset INTEGER NOT NULL, length INTEGER NOT NULL, kind INTEGER NOT NULL, "
            "PRIMARY KEY (remote, oid)",
            "o.remote, o.oid, p.pack, o.offset, o.length, o.kind FROM remote_objects o "
            "JOIN remote_packs p ON p.num = o.pack_num")]
    with sqlite3.connect(dsv_dir / "index.db") as conn:
        conn.execute("DROP VIEW object_rows")
        conn.execute("DROP VIEW remote_object_rows")
        for table, columns, select in old:
            rowid = "" if table == "packs" else " WITHOUT ROWID"
            conn.execute(f"CREATE TABLE old_{table} ({columns}){rowid}")
            conn.execute(f"INSERT INTO old_{table} SELECT {select}")
        for table, _c, _s in reversed(old):
            conn.execute(f"DROP TABLE {table}")
        for table, _c, _s in old:
            conn.execute(f"ALTER TABLE old_{table} RENAME TO {table}")
        conn.execute("UPDATE meta SET value='9' WHERE key='schema'")
    conn.close()   # (`with` only commits; the WAL is folded in once no connection is left)
    (dsv_dir / "config.json").write_text(json.dumps({"format": fmt, "hash": "blake3"}))


def flip_byte(path: Path, offset: int) -> None:
    """Damage one byte of a (read-only) store or remote file in place, keeping its mode."""
    mode = path.stat().st_mode & 0o777
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.chmod(path, mode)


def deep_chain(root: Path, depth: int, name: str = "d", every: int = 0,
               leaf: tuple[str, bytes] | None = None) -> str:
    """`depth` directories `name`, one in the other, below `root`; an empty file
    `f<level>` at every `every`-th level, and the file `leaf` (name, bytes) at the
    bottom. Made through descriptors: no path longer than the kernel takes is handed to
    it (and pathlib's mkdir recurses a frame a level). Returns the bottom's relative
    path (the leaf's, when given)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            if every and level % every == 0:
                os.close(os.open(f"f{level}", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        if leaf is not None:
            out = os.open(leaf[0], os.O_WRONLY | os.O_CREAT, dir_fd=fd)
            os.write(out, leaf[1])
            os.close(out)
    finally:
        os.close(fd)
    return "/".join([name] * depth + ([leaf[0]] if leaf else []))


def read_tree(root: Path, skip: tuple[str, ...] = (".dsv",)) -> dict[str, bytes]:
    """Every regular file under `root` (relative path → bytes), leaving out `skip` dirs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if (rel_dir / d).as_posix() not in skip]
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out[(rel_dir / name).as_posix()] = p.read_bytes()
    return out


def _moto_as_atomic_as_s3() -> None:
    """Two races of moto's threaded server that S3 does not have, closed here rather
    than tolerated by dsv (which is right to fail on them):

    * a key's ETag is computed lazily from its buffer without the key's lock, so two
      first reads of one key at once can hash wrong bytes (dsv then reports the object
      corrupt): computed under the key's lock;
    * a conditional PUT (If-Match, If-None-Match) checks the condition and then writes,
      with nothing between: two writers expecting the same ETag can both win (a lost
      update of a ref, seen as `test_cas_concurrent_read_modify_write_loses_no_update[s3]`
      counting 19 of 20). Conditional PUTs are made one at a time, as S3's are atomic.
    Idempotent (the session fixture may be set up again)."""
    import threading

    from moto.s3 import models, responses

    if getattr(models.FakeKey, "_dsv_atomic", False):
        return
    lazy_etag = models.FakeKey.etag

    def etag(self: models.FakeKey) -> str:
        with self.lock:
            return lazy_etag.fget(self)

    models.FakeKey.etag = property(etag)  # type: ignore[method-assign,assignment]
    conditional = threading.Lock()
    put_object = responses.S3Response.put_object

    def atomic_put_object(self: responses.S3Response):  # noqa: ANN202 - moto's type
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with conditional:
                return put_object(self)
        return put_object(self)

    responses.S3Response.put_object = atomic_put_object  # type: ignore[method-assign]
    models.FakeKey._dsv_atomic = True  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol server (moto's server mode) on a free loopback port."""
    import socket

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    _moto_as_atomic_as_s3()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials from the standard chain (the environment), never from .dsv/."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def in_a_forked_child(work) -> None:  # noqa: ANN001 - a callable returning bool
    """Run `work()` in a child forked from this process (as a DataLoader forks its
    workers) and assert it returned True within 30 s (a hang is killed by SIGALRM)."""
    import signal
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(read)
            signal.alarm(30)
            code = 0 if work() else 1
            os.write(write, b"done")
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and said == b"done", status
