"""How the CLI shows things: human lines and tables on stdout, `--json`, progress on stderr.

Owns `safe`, the one way text that dsv did not write itself (messages, names, paths, text
from remotes, error messages quoting any of these) reaches a terminal: control characters
become escapes, and rich gets such text as `Text`, never as markup. Imports rich only when
something is drawn with it, so commands that print plain lines never load it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..reporting import lineage_summary
from ..errors import DsvError
from ..reporting import Advance, Reporter
from ..reporting import plural as plural  # re-exported for the commands
from ..reporting import size as size

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ..model import FileRow, Version
    from ..store import Store

# Control characters (C0 but newline and tab in multi-line fields, DEL, C1: so every escape
# sequence loses its ESC), bidi overrides, and surrogates (bytes that were not UTF-8).
# Patterns, not compiled ones: most runs print only printable text and never need them.
_UNSAFE_MULTILINE = ("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_UNSAFE_LINE = "[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe(value: object, multiline: bool = False) -> str:
    r"""`value` as text a terminal shows as it is: control characters, bidi overrides and
    bytes that were not UTF-8 become Python-style escapes (`\x1b`). The one way human
    output shows text dsv did not write itself; newlines and tabs survive only in fields
    that are multi-line."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return re.sub(_UNSAFE_MULTILINE if multiline else _UNSAFE_LINE, _escape_char, text)


def is_utf8(text: str) -> bool:
    """Whether `text` (an argument, which Python reads with surrogateescape) is UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def echo(line: str = "", err: bool = False) -> None:
    """One line of human output (stdout, or stderr for warnings), made safe."""
    stream = sys.stderr if err else sys.stdout
    stream.write(safe(line) + "\n")
    if err:
        stream.flush()


def print_json(data: object) -> None:
    """`data` as indented JSON on stdout (what `--json` prints)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_json_items(items: Iterable[object]) -> None:
    """`print_json(list(items))`, the same text, written as the items come: a listing of
    a million files is never held whole, as a list or as its JSON."""
    out, batch, first = sys.stdout, [], True
    for item in itertools.chain(items, [_END]):
        if item is not _END:
            batch.append(item)
            if len(batch) < _ITEMS_WRITTEN:
                continue
        if batch:   # (a list's JSON without its brackets: the items, indented as in it)
            text = json.dumps(batch, indent=2, default=str)[2:-2]
            out.write(("[\n" if first else ",\n") + text)
            first = False
            batch.clear()
    out.write("[]\n" if first else "\n]\n")


_END = object()
_ITEMS_WRITTEN = 1000   # (items a write, and a json.dumps)


@contextmanager
def failure_report(as_json: bool) -> Iterator[None]:
    """With `--json`, a failure that carries a report (a refused push, a merge conflict)
    prints it on stdout; its `error:` line follows on stderr as for any failure."""
    try:
        yield
    except DsvError as exc:
        if as_json and exc.report is not None:
            print_json(exc.report.to_json())
        raise


def when(ts: float | None) -> str:
    """A time as `YYYY-MM-DD HH:MM` (local time), or `-` for none."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


# ---- rich: tables and styled lines ---------------------------------------------------------

def console(stderr: bool = False) -> Console:
    """A rich console that highlights nothing of its own and never cuts lines."""
    from rich.console import Console
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def cell(value: object, multiline: bool = False, style: str = "") -> Text:
    """Text for rich, made safe and never read as markup (`[bold]` in a name stays)."""
    from rich.text import Text
    return Text(safe(value, multiline), style=style)


def new_table(*columns: str) -> Table:
    """A borderless table with these column headings."""
    from rich.table import Table
    out = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        out.add_column(col)
    return out


def print_rows(columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    """`rows` under the headings `columns`, as `new_table` lays them out (cells left-aligned,
    two spaces apart, each made safe), written as they come: a million-file listing is
    never held, and costs microseconds a row where a rich table took 280. The columns are
    as wide as the widest cell of the first TABLE_SIZED rows; a later, wider cell widens
    its column from there on."""
    from rich.cells import cell_len
    out = sys.stdout
    widths = [cell_len(c) for c in columns]
    batch: list[list[str]] = []
    started = False

    def flush() -> None:
        nonlocal started
        for row in batch:
            for i, text in enumerate(row[:-1]):
                widths[i] = max(widths[i], len(text) if text.isascii() else cell_len(text))
        if not started:
            console().print(cell(_laid_out(list(columns), widths), style="bold"))
            started = True
        out.write("".join(_laid_out(row, widths) + "\n" for row in batch))
        batch.clear()

    for row in rows:
        batch.append([safe(c) for c in row])
        if len(batch) >= TABLE_SIZED:
            flush()
    flush()


TABLE_SIZED = 10_000


def _laid_out(cells: list[str], widths: list[int]) -> str:
    """One line of `print_rows`: each cell but the last padded to its column's width, and
    no spaces at its end."""
    from rich.cells import cell_len
    parts = [text + " " * (widths[i] - (len(text) if text.isascii() else cell_len(text)))
             for i, text in enumerate(cells[:-1])]
    return "  ".join([*parts, cells[-1]]).rstrip(" ")


def print_file_rows(rows: Iterable[FileRow], as_json: bool) -> None:
    """A listing of a version's files (`files list`, `ls`), streamed. A reader that stops
    early (`| head`) ends it quietly, with success."""
    try:
        if as_json:
            print_json_items(r.to_json() for r in rows)
        else:
            print_rows(("path", "size", "hash"),
                       ((r.path + ("/" if r.kind == "dir" else ""), size(r.size), r.oid[:16])
                        for r in rows))
        sys.stdout.flush()
    except BrokenPipeError:   # (what is still buffered goes nowhere, not to a traceback)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def add_row(into: Table, *cells: object) -> None:
    """A row of `cells`, each made safe unless it is already `Text` (from `cell`)."""
    from rich.text import Text
    into.add_row(*(c if isinstance(c, Text) else cell(c) for c in cells))


# ---- versions ------------------------------------------------------------------------------

def version_ref(store: Store, version: Version) -> str:
    """`NAME:VERSION`, the way users type a version."""
    ds = store.dataset_by_id(version.dataset)
    return f"{ds.name if ds else version.dataset}:{version.id}"


def print_version_ref(store: Store, v: Version, as_json: bool) -> None:
    """What a command that made or changed a version prints: `NAME:VERSION`, or with
    `--json` the version's fields."""
    if as_json:
        print_json(version_json(store, v))
    else:
        echo(version_ref(store, v))


def version_json(store: Store, v: Version) -> dict[str, Any]:
    """A version as `--json` shows it: its record's fields and its `ref`."""
    data = v.to_json()
    data["ref"] = version_ref(store, v)
    return data


def print_version(store: Store, v: Version, as_json: bool) -> None:
    """One version's details: `dsv show`, `dsv versions details` and `update`."""
    if as_json:
        print_json(version_json(store, v))
        return
    fields = new_table("field", "value")
    fields.show_header = False
    for key, value in (("ref", version_ref(store, v)), ("state", v.state),
                       ("message", v.message), ("author", v.author), ("created", when(v.created)),
                       ("committed", when(v.committed)), ("parents", ", ".join(v.parents) or "-"),
                       ("tags", ", ".join(v.tags) or "-"), ("files", str(v.files)),
                       ("size", size(v.size)), ("tree", v.tree), ("record", v.record or "-")):
        add_row(fields, key, cell(value if value is not None else "-",
                                  multiline=key == "message"))
    if v.lineage:  # (every field of it is in --json)
        add_row(fields, "lineage", cell(lineage_summary(v.lineage), multiline=True))
    console().print(fields)


# ---- progress ------------------------------------------------------------------------------

class RichReporter(Reporter):
    """Progress bars on stderr, only when it is a terminal."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()

    def notice(self, message: str) -> None:
        """A line on stderr."""
        echo(message, err=True)

    @contextmanager
    def task(self, label: str, total_items: int | None = None,
             total_bytes: int | None = None) -> Iterator[Advance]:
        """A progress bar for the task, drawn only on a terminal and for a known total."""
        if not self.interactive or not total_items:
            yield lambda items, nbytes: None
            return
        import threading

        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)
        # With a byte total the bar moves by bytes (a large file moves it while it is
        # copied or downloaded), and the files done are counted beside it.
        by_bytes = bool(total_bytes)
        columns = [TextColumn("{task.description}"), BarColumn()]
        if by_bytes:
            columns += [TextColumn("{task.fields[items]}/" + str(total_items)),
                        TextColumn("{task.fields[done]}/" + size(total_bytes or 0))]
        else:
            columns.append(MofNCompleteColumn())
        progress = Progress(*columns, TimeRemainingColumn(), console=console(stderr=True),
                            transient=True)
        lock = threading.Lock()
        pending = [0, 0]
        done = [0, 0]   # items, bytes
        step = max(1, total_items // 200)  # ~200 redraws at most: the bar must not cost time
        byte_step = max(1, (total_bytes or 0) // 200)

        with progress:
            task_id = progress.add_task(label, total=total_bytes if by_bytes else total_items,
                                        done=size(0), items=0)

            def advance(items: int, nbytes: int) -> None:
                with lock:
                    pending[0] += items
                    pending[1] += nbytes
                    if pending[0] >= step or (by_bytes and pending[1] >= byte_step):
                        done[0] += pending[0]
                        done[1] += pending[1]
                        progress.update(task_id, advance=pending[1] if by_bytes else pending[0],
                                        done=size(done[1]), items=done[0])
                        pending[0] = pending[1] = 0

            yield advance
