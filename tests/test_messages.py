"""Messages: every failure a user can cause or meet is one `error:` line with a hint (exit
status 1, 2 for usage), never a traceback-class "bug in dsv"; text dsv did not write
itself (messages, authors, descriptions, paths, error messages quoting them) never reaches
the terminal as control characters, escape sequences or rich markup.

The index cases run dsv as a real process under a file-size limit (RLIMIT_FSIZE), which
makes every write of the index fail the way a full disk does, without filling one."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from conftest import Result, deep_chain, run_dsv, write_tree
from dsv.errors import DsvError

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def error_lines(r: Result | subprocess.CompletedProcess, code: int = 1) -> list[str]:
    """stderr's lines, once it is checked to be an error report and not a bug report."""
    status = r.code if isinstance(r, Result) else r.returncode
    err = r.err if isinstance(r, Result) else r.stderr
    assert status == code, (status, err)
    lines = err.splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert "bug in dsv" not in err and "Traceback" not in err, err
    assert "╭" not in err and "│" not in err, err  # no rich panel
    return lines


def hint(lines: list[str]) -> str:
    found = [line for line in lines if line.startswith("hint: ")]
    assert found, lines
    return found[0]


def assert_terminal_safe(text: str) -> None:
    assert "\x1b" not in text
    bad = [c for c in text if (unicodedata.category(c) == "Cc" and c not in "\n\t")
           or c in BIDI or "\ud800" <= c <= "\udfff"]
    assert not bad, (bad, text)


def age(root: Path) -> None:
    """Files written an hour ago: the stat cache trusts them at once (none is racy)."""
    past = time.time() - 3600
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".dsv"]
        for name in filenames:
            os.utime(Path(dirpath, name), (past, past))


@pytest.fixture
def ws(tmp_path: Path, dsv) -> Path:
    """A workspace with two versions of dataset `data`, the first tagged v1."""
    data = tmp_path / "data"
    write_tree(data, {"a.txt": "one", "sub/b.txt": "two"})
    age(data)
    assert dsv("init", cwd=data).code == 0
    assert dsv("commit", "-m", "first", cwd=data).code == 0
    (data / "a.txt").write_text("one, changed")
    age(data)
    assert dsv("commit", "-m", "second", cwd=data).code == 0
    assert dsv("tag", "data:latest~1", "v1", cwd=data).code == 0
    return data


# ---- a damaged index ---------------------------------------------------------------------

def damage_pages(db: Path) -> None:
    """Overwrite every page but the first (the header and the schema stay readable)."""
    size = db.stat().st_size
    assert size > 8192
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(bytes(range(256)) * ((size - 4096) // 256))


@pytest.mark.parametrize("args", [
    ["log"], ["status"], ["show", "data:latest"], ["verify"], ["tags"], ["datasets", "list"],
    ["files", "list", "data:latest"], ["commit", "-m", "x", "--allow-empty"],
    ["tag", "data:latest", "v2"], ["datasets", "create", "other"],
])
def test_damaged_index_page_is_one_error_with_the_rebuild_hint(ws: Path, dsv, args) -> None:
    damage_pages(ws / ".dsv" / "index.db")
    lines = error_lines(dsv(*args, cwd=ws))
    index = (ws / ".dsv" / "index.db").resolve()
    assert lines[0].startswith(f"error: the index {index} is damaged ("), lines
    assert "dsv index rebuild" in hint(lines)


def test_index_that_is_not_a_database_and_the_rebuild_that_follows(ws: Path, dsv) -> None:
    db = ws / ".dsv" / "index.db"
    with open(db, "r+b") as f:
        f.write(b"this is no SQLite file" * 5)
    lines = error_lines(dsv("log", cwd=ws))
    assert "damaged" in lines[0] and "not a database" in lines[0]
    assert "dsv index rebuild" in hint(lines)
    # The hint works: the index comes back from the objects, history and all.
    assert dsv("index", "rebuild", cwd=ws).code == 0
    r = dsv("log", "--json", cwd=ws)
    assert r.code == 0
    assert [v["message"] for v in json.loads(r.out)] == ["second", "first"]


@pytest.mark.parametrize("sql", [
    "UPDATE versions SET parents = '[not json'",
    "UPDATE versions SET message = CAST(x'ff41' AS TEXT)",
])
def test_damaged_rows_of_the_index(ws: Path, dsv, sql: str) -> None:
    conn = sqlite3.connect(ws / ".dsv" / "index.db", isolation_level=None)
    conn.execute(sql)
    conn.close()
    lines = error_lines(dsv("log", cwd=ws))
    assert "is damaged" in lines[0], lines
    assert "dsv index rebuild" in hint(lines)


# ---- an index that cannot be written -----------------------------------------------------

def run_limited(*args: str, cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """`dsv ARGS` as a process that may write no file beyond `limit` bytes (like a full
    disk: every write past it fails with EFBIG; Python ignores SIGXFSZ)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "dsv", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, preexec_fn=cap)


@pytest.fixture
def proc_ws(tmp_path: Path) -> Path:
    """Like `ws`, made by separate processes: no connection to the index stays open here
    (an open one would keep SQLite's -shm file in place for the limited process)."""
    data = tmp_path / "data"
    write_tree(data, {"a.txt": "one", "sub/b.txt": "two"})
    age(data)
    for args in (["init"], ["commit", "-m", "first"]):
        assert run_dsv(*args, cwd=data).returncode == 0
    (data / "a.txt").write_text("one, changed")
    age(data)
    for args in (["commit", "-m", "second"], ["tag", "data:latest~1", "v1"],
                 ["status"]):
        r = run_dsv(*args, cwd=data)
        assert r.returncode == 0, r.stderr
    return data


READS = [["log"], ["show", "data:v1"], ["status"], ["verify"], ["tags"], ["datasets", "list"],
         ["files", "list", "data:latest", "-r"], ["versions", "list", "data"],
         ["diff", "data:v1", "data:latest"]]


def test_reading_commands_work_when_the_index_cannot_be_written(proc_ws: Path) -> None:
    for args in READS:
        normal = run_dsv(*args, cwd=proc_ws)
        assert normal.returncode == 0, (args, normal.stderr)
        limited = run_limited(*args, cwd=proc_ws, limit=0)
        assert (limited.returncode, limited.stdout, limited.stderr) == \
            (0, normal.stdout, normal.stderr), args


def test_status_that_would_fill_the_stat_cache_still_reports(proc_ws: Path) -> None:
    # A file whose mtime changed but not its bytes is hashed again; remembering the result
    # is a write, skipped when the index cannot be written.
    os.utime(proc_ws / "a.txt", None)
    (proc_ws / "new.txt").write_text("new")
    limited = run_limited("status", cwd=proc_ws, limit=4096)
    assert limited.returncode == 0, limited.stderr
    assert "1 added" in limited.stdout and "0 modified" in limited.stdout
    assert run_dsv("status", cwd=proc_ws).stdout == limited.stdout


WRITES = [(0, ["commit", "-m", "third"]), (4096, ["commit", "-m", "third"]),
          (0, ["tag", "data:latest", "v2"]), (4096, ["tag", "data:latest", "v2"]),
          (4096, ["datasets", "create", "other"]),
          (4096, ["versions", "create", "data", "-m", "draft"])]


def test_a_write_that_fails_says_why_and_loses_nothing(proc_ws: Path) -> None:
    (proc_ws / "c.txt").write_text("three")
    before = [run_dsv(*args, cwd=proc_ws).stdout for args in
              (["log", "--drafts", "--json"], ["tags", "--json"], ["datasets", "list", "--json"])]
    index = proc_ws / ".dsv" / "index.db"
    for limit, args in WRITES:
        lines = error_lines(run_limited(*args, cwd=proc_ws, limit=limit))
        assert lines[0].startswith("error: cannot write"), (args, lines)
        assert "file-size limit" in lines[0], (args, lines)
        assert "ulimit -f" in hint(lines)
        if args[0] == "tag" and limit:  # the lock file could be written, the index not
            assert lines[0].startswith(f"error: cannot write the index {index}: "), lines
    # Nothing half-done: the store verifies, nothing changed, and each command succeeds
    # once writes do.
    assert run_dsv("verify", cwd=proc_ws).returncode == 0
    assert [run_dsv(*args, cwd=proc_ws).stdout for args in
            (["log", "--drafts", "--json"], ["tags", "--json"], ["datasets", "list", "--json"])
            ] == before
    for args in (["commit", "-m", "third"], ["tag", "data:latest", "v2"],
                 ["datasets", "create", "other"]):
        r = run_dsv(*args, cwd=proc_ws)
        assert r.returncode == 0, (args, r.stderr)


def test_index_on_media_without_write_locks_is_read_as_immutable(ws: Path, dsv,
                                                                 monkeypatch) -> None:
    """A store on read-only media: SQLite can neither create the -shm file nor take a write
    lock. Simulated by a connection that refuses both (root ignores permission bits)."""
    db = ws / ".dsv" / "index.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # nothing left in the WAL to miss
    conn.close()
    expected = dsv("log", cwd=ws).out
    real_connect = sqlite3.connect

    class NoWriteLocks:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str, *args):
            if sql.startswith(("PRAGMA journal_mode", "PRAGMA locking_mode")):
                raise sqlite3.OperationalError("disk I/O error")
            return self._conn.execute(sql, *args)

        def close(self) -> None:
            self._conn.close()

    def connect(database, *args, **kwargs):
        conn = real_connect(database, *args, **kwargs)
        return conn if "immutable=1" in str(database) else NoWriteLocks(conn)

    monkeypatch.setattr(sqlite3, "connect", connect)
    r = dsv("log", cwd=ws)
    assert (r.code, r.out) == (0, expected), r.err
    lines = error_lines(dsv("tag", "data:latest", "v2", cwd=ws))
    assert lines[0] == f"error: cannot write the index {db.resolve()}: the file or its " \
        "directory is read-only", lines
    hint(lines)


# ---- text arguments that are not UTF-8 ---------------------------------------------------

def test_commit_message_bytes_that_are_not_utf8_are_refused(ws: Path, dsv) -> None:
    (ws / "c.txt").write_text("three")
    r = subprocess.run([sys.executable, "-m", "dsv", "commit", "-m", b"caf\xe9"], cwd=ws,
                       capture_output=True, text=True, timeout=120)
    lines = error_lines(r)
    assert lines[0] == "error: --message is not valid UTF-8: caf\\xe9"
    assert "UTF-8" in hint(lines)
    assert [v["message"] for v in json.loads(dsv("log", "--json", cwd=ws).out)] \
        == ["second", "first"]


@pytest.mark.parametrize("args,label", [
    (["commit", "-m", "caf\udce9", "--allow-empty"], "--message"),
    (["datasets", "create", "n\udcff"], "NAME"),
    (["datasets", "update", "data", "--description", "\udcff"], "--description"),
    (["tag", "data:latest", "v\udcff"], "NAME"),
    (["versions", "create", "data", "-m", "\udcff"], "--message"),
    (["show", "data:\udcff"], "REF"),
])
def test_text_arguments_that_are_not_utf8_are_refused(ws: Path, dsv, args, label) -> None:
    before = dsv("log", "--drafts", "--json", cwd=ws).out
    lines = error_lines(dsv(*args, cwd=ws))
    assert lines[0].startswith(f"error: {label} is not valid UTF-8: "), lines
    assert "\\x" in lines[0]
    hint(lines)
    assert dsv("log", "--drafts", "--json", cwd=ws).out == before
    assert [d["name"] for d in json.loads(dsv("datasets", "list", "--json", cwd=ws).out)] \
        == ["data"]


def test_author_from_the_environment_that_is_not_utf8(ws: Path, dsv, monkeypatch) -> None:
    monkeypatch.setenv("DSV_AUTHOR", "ad\udce9 <a@lab>")
    lines = error_lines(dsv("commit", "-m", "x", "--allow-empty", cwd=ws))
    assert "not valid UTF-8" in lines[0]
    assert "DSV_AUTHOR" in hint(lines)


# ---- usage errors ------------------------------------------------------------------------

@pytest.mark.parametrize("args,message,command", [
    (["bogus"], "error: no such command 'bogus'", "dsv"),
    (["log", "--nope"], "error: no such option: --nope", "dsv log"),
    (["commit"], "error: missing option '-m' / '--message'", "dsv commit"),
    (["show"], "error: missing argument", "dsv show"),
    (["datasets", "create"], "error: missing argument", "dsv datasets create"),
    (["log", "-n", "many"], "error: invalid value for '-n'", "dsv log"),
    (["tag", "data:latest"], "error: invalid value: give REF and NAME", "dsv tag"),
    (["--store"], "error: option '--store' requires an argument", "dsv"),
])
def test_usage_errors_are_one_error_line_and_exit_2(ws: Path, dsv, args, message,
                                                    command) -> None:
    r = dsv(*args, cwd=ws)
    lines = error_lines(r, code=2)
    assert lines[0].startswith(message), lines
    assert hint(lines) == f"hint: see `{command} --help`"
    assert len(lines) == 2 and r.out == ""


def test_help_still_works(ws: Path, dsv) -> None:
    for args in (["--help"], ["-h"], ["commit", "--help"], ["datasets", "create", "-h"]):
        r = dsv(*args, cwd=ws)
        assert r.code == 0 and "Usage" in r.out and r.err == "", args
    # A group alone prints its help, as before (exit 2: no command was given).
    r = dsv("datasets", cwd=ws)
    assert r.code == 2 and "create" in r.out and "error" not in r.err


def test_debug_flag_is_accepted_after_the_command(tmp_path: Path, dsv) -> None:
    root = tmp_path / "data"
    write_tree(root, {"a.txt": "1"})
    assert dsv("init", cwd=root).code == 0
    with pytest.raises(DsvError):
        dsv("show", "nope:latest", "--debug", cwd=root)
    result = dsv("show", "nope:latest", cwd=root)
    assert result.code == 1 and result.err.startswith("error: no dataset named 'nope'")


def test_usage_error_quoting_user_text_is_made_safe(ws: Path, dsv) -> None:
    lines = error_lines(dsv("log", "--x\x1b[2J", cwd=ws), code=2)
    assert_terminal_safe("\n".join(lines))
    assert "--x\\x1b[2J" in lines[0]


# ---- control characters and markup in stored text ----------------------------------------

EVIL_MESSAGE = ("title \x1b[31mred\x1b[0m [bold]loud[/bold] bell\x07 cr\r csi\x9b2J del\x7f "
                "rtl\u202eevil\nsecond line\x1b]0;pwned\x07")
EVIL_FILE = "f\x1b[2Jx.txt"


@pytest.fixture
def evil_ws(ws: Path, dsv, monkeypatch) -> Path:
    monkeypatch.setenv("DSV_AUTHOR", "ada \x1b[5m<a@lab>")
    (ws / EVIL_FILE).write_text("evil")
    assert dsv("commit", "-m", EVIL_MESSAGE, cwd=ws).code == 0
    assert dsv("datasets", "update", "data", "--description", "d \x1b[1m[red]x[/red]",
               cwd=ws).code == 0
    (ws / "g\x1b[1m.txt").write_text("untracked")
    return ws


@pytest.mark.parametrize("args,shown", [
    (["log"], ["title \\x1b[31mred\\x1b[0m [bold]loud[/bold] bell\\x07 cr\\r",
               "csi\\x9b2J del\\x7f rtl\\u202eevil", "ada \\x1b[5m<a@lab>"]),
    (["show", "data:latest"], ["\\x1b[31mred", "[bold]loud[/bold]", "\\u202eevil",
                               "ada \\x1b[5m<a@lab>"]),
    (["versions", "details", "data:latest"], ["\\x1b[31mred", "[bold]loud[/bold]"]),
    (["versions", "list", "data"], ["\\x1b[31mred", "[bold]loud[/bold]"]),
    (["datasets", "details", "data"], ["d \\x1b[1m[red]x[/red]"]),
    (["datasets", "list"], ["data"]),
    (["files", "list", "data:latest"], ["f\\x1b[2Jx.txt"]),
    (["diff", "data:v1", "data:latest"], ["A f\\x1b[2Jx.txt"]),
    (["diff", "data:latest"], ["A g\\x1b[1m.txt"]),
    (["status"], ["added     g\\x1b[1m.txt"]),
])
def test_human_output_neutralises_control_characters(evil_ws: Path, dsv, args,
                                                     shown) -> None:
    r = dsv(*args, cwd=evil_ws)
    assert r.code == 0, r.err
    assert_terminal_safe(r.out + r.err)
    for text in shown:  # still recognisable, markup shown as typed
        assert text in r.out, (text, r.out)


def test_multi_line_message_keeps_its_lines_in_log(evil_ws: Path, dsv) -> None:
    out = dsv("log", "-n", "1", cwd=evil_ws).out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  title"))
    # The second line of the message is indented like the first: it cannot pass for an
    # entry of its own.
    assert lines[first + 1] == "  second line\\x1b]0;pwned\\x07"


def test_json_output_keeps_stored_text_exact(evil_ws: Path, dsv) -> None:
    latest = json.loads(dsv("log", "--json", cwd=evil_ws).out)[0]
    assert latest["message"] == EVIL_MESSAGE
    assert latest["author"] == "ada \x1b[5m<a@lab>"
    files = json.loads(dsv("files", "list", "data:latest", "--json", cwd=evil_ws).out)
    assert EVIL_FILE in [f["path"] for f in files]
    assert "\x1b" not in dsv("log", "--json", cwd=evil_ws).out  # JSON escapes it


def test_error_messages_quoting_user_text_are_made_safe(evil_ws: Path, dsv) -> None:
    lines = error_lines(dsv("files", "list", "data:latest", "--path", "no\x1b[2Jpe",
                            cwd=evil_ws))
    assert_terminal_safe("\n".join(lines))
    assert "no\\x1b[2Jpe" in lines[0]


def test_the_one_helper() -> None:
    from dsv.cli.output import safe
    assert safe("plain [bold]text[/bold] ünïcödé") == "plain [bold]text[/bold] ünïcödé"
    assert safe("a\x1b[0mb\x00c\x7fd\x9be\u202ef") == "a\\x1b[0mb\\x00c\\x7fd\\x9be\\u202ef"
    assert safe("line\nnext\tcol\r") == "line\\nnext\\tcol\\r"
    assert safe("line\nnext\tcol\r", multiline=True) == "line\nnext\tcol\\r"
    assert safe("byte \udcff") == "byte \\xff"


@pytest.mark.parametrize("count", [0, 1, 3, 2_501])
def test_a_listing_streams_the_text_the_whole_list_prints(count: int, capsys,
                                                          monkeypatch) -> None:
    """`files list` and `ls` write a listing as it comes (`print_json_items`,
    `print_rows`), never holding it, and print what printing the whole list printed: the
    same JSON, and a table laid out as rich lays out `new_table` (cells made safe, wide
    characters counted as two columns)."""
    from dsv.cli import output
    items = [{"path": f"d/{'é' * (i % 3)}f{i}\x1b[2J", "size": i, "n": {"x": [i, None]}}
             for i in range(count)]
    output.print_json_items(iter(items))
    assert capsys.readouterr().out == json.dumps(items, indent=2) + "\n"

    rows = [(f"{'界' * (i % 4)}p{i}\x1b[1m", f"{i} B", "ab" * (i % 5)) for i in range(count)]
    table = output.new_table("path", "size", "hash")
    for row in rows:
        output.add_row(table, *row)
    output.console().print(table)
    by_rich = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    output.print_rows(("path", "size", "hash"), iter(rows))
    streamed = capsys.readouterr().out.splitlines()
    assert streamed == by_rich
    assert "\x1b" not in "".join(streamed) and all(line == line.rstrip() for line in streamed)

    # past the first TABLE_SIZED rows, a wider cell widens its column from there on
    monkeypatch.setattr(output, "TABLE_SIZED", 2)
    output.print_rows(("name", "n"), iter([("a", "1"), ("bb", "2"), ("wider", "3"), ("c", "4")]))
    assert capsys.readouterr().out.splitlines() == [
        "name  n", "a     1", "bb    2", "wider  3", "c      4"]


@pytest.mark.parametrize("args", [(), ("--json",)])
def test_a_listing_read_only_in_part_ends_with_success(tmp_path: Path, args) -> None:
    """A listing written as it comes meets a reader that stops early (`| head -1`)
    mid-way: that ends it quietly, exit 0, no traceback, as when it was printed whole."""
    ws = tmp_path / "ws"
    write_tree(ws, {f"d{i // 100:02d}/file-with-a-longish-name-{i:05d}.txt": "x"
                    for i in range(3000)})
    assert run_dsv("init", "--name", "data", cwd=ws).returncode == 0
    assert run_dsv("commit", "-m", "v", cwd=ws).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "dsv", "files", "list", "data:latest",
                             "-r", *args], cwd=ws, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert first.startswith(b"[" if args else b"path") and err == b""


# ---- failures of hostile input, not bugs -------------------------------------------------

@pytest.mark.parametrize("exc,words", [
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (MemoryError(), "out of memory"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not valid UTF-8"),
    (sqlite3.OperationalError("database is locked"), "held by another process"),
    ("checksum", "the S3 remote sent damaged data"),
])
def test_input_failures_are_error_lines(ws: Path, dsv, monkeypatch, exc, words) -> None:
    from dsv.store import Store
    if exc == "checksum":
        from botocore.exceptions import FlexibleChecksumError
        exc = FlexibleChecksumError(error_msg="Expected checksum x did not match calculated "
                                              "checksum: y")

    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(Store, "log", fail)
    lines = error_lines(dsv("log", cwd=ws))
    assert words in lines[0], lines
    hint(lines)


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"),
                                 sqlite3.IntegrityError("UNIQUE constraint failed: x.y"),
                                 KeyError("k")])
def test_real_bugs_still_say_so(ws: Path, dsv, monkeypatch, exc) -> None:
    from dsv.store import Store

    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(Store, "log", fail)
    r = dsv("log", cwd=ws)
    assert r.code == 1
    assert r.err.startswith(f"error: {type(exc).__name__}: ")
    assert "hint: this is a bug in dsv" in r.err


def test_a_working_directory_deeper_than_the_system_reaches_is_one_short_error(
        ws: Path, dsv) -> None:
    """Directories nested past the 4,096 bytes a path may have (made through descriptors,
    as any program may): commit and status end with one line naming the path by its
    ends and its length, where they printed the whole path (thousands of characters)."""
    deep_chain(ws, 1400, name="dd")
    try:
        for args in (("commit", "-m", "deep"), ("status",)):
            lines = error_lines(dsv(*args, cwd=ws))
            assert lines[0].startswith(f"error: path too long to reach: {str(ws)[:60]}"), \
                lines
            assert lines[0].split("…")[1].startswith("dd/dd/"), lines   # (its two ends)
            assert lines[0].endswith(" characters)") and len(lines[0]) < 300, lines[0]
            assert "at most 4,096 bytes" in hint(lines)
        assert [v["message"] for v in json.loads(dsv("log", "--json", cwd=ws).out)] == \
            ["second", "first"]
    finally:
        subprocess.run(["rm", "-rf", ws / "dd"], check=True)
