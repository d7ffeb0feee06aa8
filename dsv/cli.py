"""The `dsv` command line: typer for arguments, rich for tables and progress bars.

Owns parsing, output (human tables on stdout, `--json`, progress on stderr only when it
is a terminal) and turning errors into one `error:` line with exit status 1 (2 for
usage). Holds no logic the Python API (store.py) lacks: every command is one call.

Text that dsv did not write itself (messages, names, paths, text from remotes, error
messages quoting any of these) reaches the terminal only through `_safe`, which shows
control characters as escapes; rich gets it as `Text`, never as markup.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import DsvError, InvalidInput, UsageError
from .reporting import Advance, Reporter

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="dsv: a git-like, local-first version store for datasets.",
                  context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False)
datasets_app = typer.Typer(no_args_is_help=True, help="Create, list, change and delete datasets.")
versions_app = typer.Typer(no_args_is_help=True, help="Drafts and committed versions.")
files_app = typer.Typer(no_args_is_help=True, help="Files of a version: list, get, put, delete.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(versions_app, name="versions")
app.add_typer(files_app, name="files")

_state: dict[str, Any] = {"store": None, "debug": False, "index_path": None}


class LinkMode(str, Enum):
    auto = "auto"
    copy = "copy"
    reflink = "reflink"
    hardlink = "hardlink"
    symlink = "symlink"

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
DatasetOpt = typer.Option(None, "-d", "--dataset", help="Dataset id or name "
                          "(default: the dataset of the current directory).")


# ---- output helpers ---------------------------------------------------------------------

def _console(stderr: bool = False) -> Any:
    from rich.console import Console
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


# Control characters (C0 but newline and tab in multi-line fields, DEL, C1: so every escape
# sequence loses its ESC), bidi overrides, and surrogates (bytes that were not UTF-8).
_UNSAFE_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
                               "\ud800-\udfff]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _safe(value: object, multiline: bool = False) -> str:
    """`value` as text a terminal shows as it is: control characters, bidi overrides and
    bytes that were not UTF-8 become Python-style escapes (`\\x1b`). The one way human
    output shows text dsv did not write itself; newlines and tabs survive only in fields
    that are multi-line."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE_LINE).sub(_escape_char, text)


def _echo(line: str = "", err: bool = False) -> None:
    """One line of human output (stdout, or stderr for warnings), made safe."""
    stream = sys.stderr if err else sys.stdout
    stream.write(_safe(line) + "\n")
    if err:
        stream.flush()


def _cell(value: object, multiline: bool = False, style: str = "") -> Any:
    """Text for rich, made safe and never read as markup (`[bold]` in a name stays)."""
    from rich.text import Text
    return Text(_safe(value, multiline), style=style)


def _row(table: Any, *cells: object) -> None:
    from rich.text import Text
    table.add_row(*(c if isinstance(c, Text) else _cell(c) for c in cells))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _table(*columns: str) -> Any:
    from rich.table import Table
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col)
    return table


class RichReporter(Reporter):
    """Progress bars on stderr, only when it is a terminal."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()

    def notice(self, message: str) -> None:
        _echo(message, err=True)

    @contextmanager
    def task(self, label: str, total_items: int | None = None,
             total_bytes: int | None = None) -> Iterator[Advance]:
        if not self.interactive or not total_items:
            yield lambda items, nbytes: None
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if total_bytes:
            columns.append(TextColumn("{task.fields[done]}/" + _size(total_bytes)))
        progress = Progress(*columns, TimeRemainingColumn(), console=_console(stderr=True),
                            transient=True)
        lock = threading.Lock()
        pending = [0, 0]
        done = [0]
        step = max(1, total_items // 200)  # ~200 redraws at most: the bar must not cost time

        with progress:
            task_id = progress.add_task(label, total=total_items, done=_size(0))

            def advance(items: int, nbytes: int) -> None:
                with lock:
                    pending[0] += items
                    pending[1] += nbytes
                    if pending[0] >= step:
                        done[0] += pending[1]
                        progress.update(task_id, advance=pending[0], done=_size(done[0]))
                        pending[0] = pending[1] = 0

            yield advance


def _open_store() -> Any:
    from .paths import STORE_DIR
    from .store import Store, find_store
    where, exact = (_state["store"], True) if _state["store"] else (".", False)
    # Known before opening: errors of SQLite name the index, even one too damaged to open.
    _state["index_path"] = find_store(Path(where), exact) / STORE_DIR / "index.db"
    return Store.open(where, reporter=RichReporter(), exact=exact)


def _ref(store: Any, version: Any) -> str:
    ds = store.index.dataset_by("id", version.dataset)
    return f"{ds.name if ds else version.dataset}:{version.id}"


def _version_json(store: Any, v: Any) -> dict[str, Any]:
    data = v.to_json()
    data["ref"] = _ref(store, v)
    return data


@app.callback()
def _main(store: Optional[Path] = typer.Option(None, "--store", envvar="DSV_DIR",
                                               help="The store (its .dsv/ or the directory "
                                                    "holding it); default: found from here up."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["store"] = store
    _state["debug"] = debug


# ---- local workflow ----------------------------------------------------------------------

@app.command()
def init(path: Path = typer.Argument(Path("."), help="Directory to create the store in."),
         name: Optional[str] = typer.Option(None, "--name", help="Name of the dataset bound to "
                                            "PATH (default: the directory's name)."),
         bare: bool = typer.Option(False, "--bare", help="Bind no dataset; add them with "
                                   "`dsv datasets create NAME --path DIR`."),
         as_json: bool = JsonOpt) -> None:
    """Create a store; bind the directory itself as a dataset."""
    from .store import Store
    store = Store.init(path, name=name, bind=not bare)
    datasets = store.datasets()
    if as_json:
        _print_json({"store": str(store.dsv_dir), "datasets": [d.to_json() for d in datasets]})
        return
    _echo(f"Initialized empty dsv store in {store.dsv_dir}")
    for ds in datasets:
        _echo(f"dataset {ds.name} ({ds.id}) is bound to {store.dataset_root(ds)}")


@app.command()
def status(dataset: Optional[str] = DatasetOpt, as_json: bool = JsonOpt,
           short: bool = typer.Option(False, "--short", "-s", help="Counts only.")) -> None:
    """What changed in each dataset's working directory since its current version."""
    reports = _open_store().statuses(dataset)
    if as_json:
        _print_json([r.to_json() for r in reports])
        return
    out = []
    for r in reports:
        c = r.changes
        head = r.head.id if r.head else (f"not checked out; latest {r.dataset.latest}"
                                         if r.dataset.latest else "no version yet")
        if c.clean:
            out.append(f"{r.dataset.name} ({head}): clean")
            continue
        out.append(f"{r.dataset.name} ({head}): {len(c.added)} added ({_size(c.added_bytes)}), "
                   f"{len(c.modified)} modified ({_size(c.modified_bytes)}), "
                   f"{len(c.deleted)} deleted ({_size(c.deleted_bytes)})")
        if not short:
            for label, paths in (("added", c.added), ("modified", c.modified),
                                 ("deleted", c.deleted)):
                out.extend(f"  {label:<9} {p}" for p in paths)
        for p in r.skipped:
            out.append(f"  skipped   {p} (not a regular file or symlink)")
    for line in out:
        _echo(line)


@app.command()
def commit(message: str = typer.Option(..., "-m", "--message", help="What this version is."),
           dataset: Optional[str] = DatasetOpt,
           allow_empty: bool = typer.Option(False, "--allow-empty",
                                            help="Commit even if nothing changed."),
           as_json: bool = JsonOpt) -> None:
    """Snapshot a dataset's working directory as a new version (only changed files are hashed)."""
    store = _open_store()
    v = store.commit(message, dataset, allow_empty=allow_empty)
    if as_json:
        _print_json(_version_json(store, v))
    else:
        _echo(_ref(store, v))


@app.command()
def log(dataset: Optional[str] = typer.Argument(None, help="Dataset id or name."),
        drafts: bool = typer.Option(False, "--drafts", help="Include drafts."),
        limit: Optional[int] = typer.Option(None, "-n", help="Show at most N versions."),
        as_json: bool = JsonOpt) -> None:
    """History: versions with messages, authors, times, tags and lineage."""
    store = _open_store()
    versions = store.log(dataset, include_drafts=drafts)[:limit]
    if as_json:
        _print_json([_version_json(store, v) for v in versions])
        return
    from rich.text import Text
    console = _console()
    for v in versions:
        head = [_cell(_ref(store, v), style="bold")]
        if v.tags:
            head.append(_cell(f" ({', '.join(v.tags)})", style="yellow"))
        if v.is_draft:
            head.append(_cell(" draft", style="red"))
        console.print(Text.assemble(*head))
        console.print(_cell(f"  {_when(v.committed or v.created)}  {v.author or ''}  "
                            f"{v.files} files, {_size(v.size)}"))
        if v.lineage:
            console.print(_cell(f"  lineage: {_lineage_line(v.lineage)}"))
        # Each line of a multi-line message indented, so none can pass for a new entry.
        for line in (v.message or "").split("\n"):
            console.print(_cell(f"  {line}", multiline=True))
        console.print()


def _lineage_line(lineage: dict[str, Any]) -> str:
    inputs = ", ".join(f"{k}={i.get('ref', i)}" for k, i in lineage.get("inputs", {}).items())
    cmd = " ".join(lineage.get("command", [])) if isinstance(lineage.get("command"), list) \
        else lineage.get("command", "")
    return f"inputs {inputs or '-'}; command {cmd or '-'}"


@app.command()
def show(ref: str = typer.Argument(..., help="DATASET[:latest|VERSION|TAG][~N]"),
         as_json: bool = JsonOpt) -> None:
    """One version's details."""
    store = _open_store()
    v = store.resolve(ref)
    _print_version(store, v, as_json)


def _print_version(store: Any, v: Any, as_json: bool) -> None:
    if as_json:
        _print_json(_version_json(store, v))
        return
    table = _table("field", "value")
    table.show_header = False
    for key, value in (("ref", _ref(store, v)), ("state", v.state), ("message", v.message),
                       ("author", v.author), ("created", _when(v.created)),
                       ("committed", _when(v.committed)), ("parents", ", ".join(v.parents) or "-"),
                       ("tags", ", ".join(v.tags) or "-"), ("files", str(v.files)),
                       ("size", _size(v.size)), ("tree", v.tree), ("record", v.record or "-")):
        _row(table, key, _cell(value if value is not None else "-", multiline=key == "message"))
    if v.lineage:
        _row(table, "lineage", _cell(json.dumps(v.lineage, indent=2), multiline=True))
    _console().print(table)


@app.command()
def diff(ref_a: str = typer.Argument(..., metavar="REF",
                                     help="The version to compare from: "
                                          "DATASET[:latest|VERSION|TAG][~N]."),
         ref_b: Optional[str] = typer.Argument(None, metavar="[REF]",
                                               help="Default: the working directory."),
         as_json: bool = JsonOpt) -> None:
    """What changed between two versions, or a version and the working directory."""
    store = _open_store()
    changes = store.diff(ref_a, ref_b)
    if as_json:
        _print_json(changes.to_json())
        return
    lines = [f"A {p}" for p in changes.added] + [f"M {p}" for p in changes.modified] + \
            [f"D {p}" for p in changes.deleted]
    lines.sort(key=lambda line: line[2:])
    lines.append(f"{len(changes.added)} added, {len(changes.modified)} modified, "
                 f"{len(changes.deleted)} deleted")
    for line in lines:
        _echo(line)


@app.command()
def tag(ref: Optional[str] = typer.Argument(None, metavar="REF"),
        name: Optional[str] = typer.Argument(None, metavar="NAME"),
        delete: Optional[str] = typer.Option(None, "-d", "--delete", metavar="DATASET:NAME",
                                             help="Delete a tag."),
        force: bool = typer.Option(False, "--force", "-f", help="Move an existing tag."),
        as_json: bool = JsonOpt) -> None:
    """Name a committed version: `dsv tag REF NAME`; delete with `dsv tag -d DATASET:NAME`."""
    store = _open_store()
    if delete:
        vid = store.delete_tag(delete)
        if as_json:
            _print_json({"deleted": delete, "version": vid})
        else:
            _echo(f"deleted tag {delete} (was {vid})")
        return
    if not ref or not name:
        raise typer.BadParameter("give REF and NAME, or -d DATASET:NAME")
    v = store.tag(ref, name, force=force)
    if as_json:
        _print_json({"tag": name, **_version_json(store, v)})
    else:
        _echo(f"{_ref(store, v).split(':')[0]}:{name} -> {v.id}")


@app.command()
def tags(dataset: Optional[str] = typer.Argument(None, help="Dataset id or name "
                                              "(default: every dataset)."),
         as_json: bool = JsonOpt) -> None:
    """List tags (of one dataset, or all)."""
    store = _open_store()
    rows = store.tags(dataset)
    if as_json:
        _print_json(rows)
        return
    table = _table("dataset", "tag", "version", "created")
    for row in rows:
        _row(table, row["dataset"], row["tag"], row["version"], _when(row["created"]))
    _console().print(table)


@app.command()
def checkout(ref: str = typer.Argument(..., help="DATASET[:latest|VERSION|TAG][~N]"),
             paths: Optional[list[str]] = typer.Argument(None, help="Only these paths."),
             to: Optional[Path] = typer.Option(None, "--to", help="Directory to fill "
                                               "(default: the dataset's working directory)."),
             force: bool = typer.Option(False, "--force", "-f",
                                        help="Discard uncommitted changes."),
             link: LinkMode = typer.Option(LinkMode.auto, "--link", help="auto (reflink, else "
                                           "copy), copy, reflink, hardlink or symlink (the last "
                                           "two read-only)."),
             as_json: bool = JsonOpt) -> None:
    """Make a directory hold exactly one version: right bytes and modes, nothing extra."""
    store = _open_store()
    report = store.checkout(ref, to=to, paths=paths or None, force=force, link=link.value)
    if as_json:
        _print_json(report.to_json())
    else:
        _echo(f"{_ref(store, report.version)} -> {report.target}: {report.written} written "
              f"({_size(report.bytes_written)}), {report.removed} removed, "
              f"{report.unchanged} unchanged")


@app.command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only report."),
       as_json: bool = JsonOpt) -> None:
    """Remove objects that no version needs."""
    store = _open_store()
    report = store.gc(dry_run=dry_run)
    if as_json:
        _print_json(report.to_json())
    else:
        verb = "would free" if dry_run else "freed"
        _echo(f"{_n(report.removed_objects, 'object')}, {_n(report.removed_packs, 'pack')} removed "
              f"({report.repacked_packs} repacked); {verb} {_size(report.freed_bytes)}")


@app.command()
def verify(repair: bool = typer.Option(False, "--repair",
                                       help="Re-index packs the index lost; with --remote, "
                                            "upload good local copies of what the remote "
                                            "lacks or holds damaged."),
           remote: Optional[str] = typer.Option(None, "--remote", metavar="REMOTE",
                                                help="Check this remote instead of the "
                                                     "local store."),
           read_data: bool = typer.Option(False, "--read-data",
                                          help="With --remote: read back and re-hash every "
                                               "object."),
           subset: Optional[str] = typer.Option(None, "--read-data-subset", metavar="N%",
                                                help="With --remote: re-hash a random N% "
                                                     "of packs and loose objects."),
           as_json: bool = JsonOpt) -> None:
    """Re-hash every object and check every version is complete (exit 1 on any problem)."""
    store = _open_store()
    if remote is None:
        if read_data or subset is not None:
            raise UsageError("--read-data and --read-data-subset need --remote",
                             hint="the local check always reads every object")
        report = store.verify(repair=repair)
    else:
        report = store.verify_remote(remote, read_data, subset, repair)
    if as_json:
        _print_json(report.to_json())
    elif remote is None:
        for line in report.repaired:
            _echo(f"repaired: {line}")
        for line in report.problems:
            _echo(f"problem: {line}")
        _echo(f"checked {report.objects_checked} objects ({_size(report.bytes_checked)}) and "
              f"{report.versions_checked} versions: "
              f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}")
    else:
        for line in report.found:
            _echo(f"found: {line}")
        for line in report.repaired:
            _echo(f"repaired: {line}")
        for line in report.warnings:
            _echo(f"warning: {line}")
        for line in report.problems:
            _echo(f"problem: {line}")
        read = (f", read {report.objects_read} objects ({_size(report.bytes_read)})"
                if report.objects_read else "")
        _echo(f"checked {report.remote}: {report.packs} packs, {report.loose} loose objects, "
              f"{report.refs} refs, {report.versions_checked} versions{read}: "
              f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}")
    if not report.ok:
        raise typer.Exit(1)


@app.command(context_settings={"allow_interspersed_args": False})
def run(command: list[str] = typer.Argument(..., metavar="-- CMD [ARGS]...",
                                            help="The command to run."),
        inputs: list[str] = typer.Option([], "--input", "-i", metavar="NAME=REF",
                                         help="Mount a version read-only at MOUNT_ROOT/NAME."),
        outputs: list[str] = typer.Option([], "--output", "-o", metavar="NAME=DATASET",
                                          help="An empty directory at MOUNT_ROOT/NAME, "
                                               "committed as a new version of DATASET."),
        hosted: list[str] = typer.Option([], "--dataset", metavar="NAME@ID[:VERSION]",
                                         help="Hosted-platform syntax: with :VERSION an "
                                              "input, without an output."),
        mount_root: Optional[Path] = typer.Option(None, "--mount-root",
                                                  help="Where inputs and outputs appear "
                                                       "(default: a new temporary directory)."),
        message: Optional[str] = typer.Option(None, "-m", "--message",
                                              help="Message of the output versions."),
        no_mount: bool = typer.Option(False, "--no-mount",
                                      help="Give inputs as private copies, even where "
                                           "read-only mounts are possible."),
        as_json: bool = JsonOpt) -> None:
    """Run CMD with datasets as read-only inputs; commit its outputs with lineage.

    The job's paths are in environment variables: DSV_INPUT_<NAME>, DSV_OUTPUT_<NAME>
    (NAME upper-cased, other characters as _) and DSV_MOUNT_ROOT.
    """
    from .jobs import parse_bindings
    store = _open_store()
    ins, outs = parse_bindings(inputs, outputs, hosted)
    result = store.run(ins, outs, command, mount_root=mount_root, message=message,
                       mount=False if no_mount else None)
    if as_json:
        _print_json(result.to_json())
        return
    for name, v in result.outputs.items():
        _echo(f"{name}: {_ref(store, v)}")
    _echo(f"command exited 0 after {result.duration:.1f}s; inputs were "
          f"{'mounted read-only' if result.mounted else 'private copies'}", err=True)


@app.command("import")
def import_(source: str = typer.Argument(..., metavar="s3://BUCKET[/KEY-OR-PREFIX] | REF",
                                         help="What to import (with --check: the version "
                                              "to re-check)."),
            name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: "
                                               "the last path item without extension)."),
            etag: Optional[str] = typer.Option(None, "--etag", help="Fail unless the object "
                                               "has this ETag."),
            version_id: Optional[str] = typer.Option(None, "--version-id",
                                                     help="Read this S3 object version."),
            endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url",
                                                       envvar="AWS_ENDPOINT_URL",
                                                       help="Any S3-compatible endpoint."),
            profile: Optional[str] = typer.Option(None, "--profile", help="AWS profile."),
            no_sign_request: bool = typer.Option(False, "--no-sign-request",
                                                 help="Anonymous requests (public buckets)."),
            check: bool = typer.Option(False, "--check", help="Re-read the source of an "
                                       "imported version: does it still match?"),
            message: Optional[str] = typer.Option(None, "-m", "--message",
                                                  help="The version's message (default: "
                                                       "`import URL`)."),
            as_json: bool = JsonOpt) -> None:
    """Create a version from an S3 object or prefix, pinned by ETag or VersionId."""
    store = _open_store()
    if check:
        report = store.check_import(source, endpoint_url=endpoint_url, profile=profile,
                                    no_sign_request=no_sign_request)
        if as_json:
            _print_json(report.to_json())
        else:
            for label, paths in (("changed", report.changed), ("missing", report.missing),
                                 ("new", report.added)):
                for p in paths:
                    _echo(f"  {label:<8} {p}")
            verdict = "matches its source" if report.ok else "no longer matches its source"
            _echo(f"{report.ref} {verdict} ({len(report.unchanged)} unchanged, "
                  f"{len(report.changed)} changed, {len(report.missing)} missing, "
                  f"{len(report.added)} new)")
        if not report.ok:
            raise typer.Exit(1)
        return
    v = store.import_s3(source, name=name, etag=etag, version_id=version_id,
                        endpoint_url=endpoint_url, profile=profile,
                        no_sign_request=no_sign_request, message=message)
    if as_json:
        _print_json(_version_json(store, v))
    else:
        _echo(_ref(store, v))


# ---- remotes and sync --------------------------------------------------------------------

remote_app = typer.Typer(no_args_is_help=True, help="Configure remotes and cluster caches.")
cache_app = typer.Typer(no_args_is_help=True, help="The cluster cache.")
app.add_typer(remote_app, name="remote")
app.add_typer(cache_app, name="cache")
# Not read from AWS_ENDPOINT_URL here: boto3 itself honours that variable at run time, so
# only an explicit flag is stored with a remote.
EndpointOpt = typer.Option(None, "--endpoint-url", help="Any S3-compatible endpoint "
                           "(default: AWS_ENDPOINT_URL, else AWS).")
ProfileOpt = typer.Option(None, "--profile", help="AWS profile (credentials are never stored).")


@remote_app.command("add")
def remote_add(name: str = typer.Argument(..., help="Name for the remote (e.g. origin)."),
               url: str = typer.Argument(..., help="s3://BUCKET/PREFIX or a directory."),
               endpoint_url: Optional[str] = EndpointOpt,
               profile: Optional[str] = ProfileOpt,
               cache: bool = typer.Option(False, "--cache", help="A cluster cache (a shared "
                                          "directory) rather than an origin."),
               ttl: Optional[str] = typer.Option(None, "--ttl", help="Cache: evict entries "
                                                 "unused this long (e.g. 7d)."),
               max_size: Optional[str] = typer.Option(None, "--max-size", help="Cache: size "
                                                      "budget (e.g. 500G)."),
               write_through: bool = typer.Option(False, "--write-through", help="Cache: push "
                                                  "copies what it uploads here too."),
               default: bool = typer.Option(False, "--default", help="Make it the default "
                                            "remote (the first origin is)."),
               as_json: bool = JsonOpt) -> None:
    """Add a remote: an S3 bucket/prefix or a directory (origin), or a cluster cache."""
    spec = _open_store().add_remote(name, url, endpoint_url=endpoint_url, profile=profile,
                                    cache=cache, ttl=ttl, max_size=max_size,
                                    write_through=write_through, default=default)
    if as_json:
        _print_json(spec.to_json())
    else:
        kind = "cluster cache" if spec.kind == "cache" else "remote"
        _echo(f"added {kind} {spec.name}: {spec.url}" + (" (default)" if spec.is_default else ""))


@remote_app.command("list")
def remote_list(as_json: bool = JsonOpt) -> None:
    """List remotes."""
    specs = _open_store().remote_specs()
    if as_json:
        _print_json([s.to_json() for s in specs])
        return
    table = _table("name", "kind", "url", "endpoint", "settings")
    for s in specs:
        settings = []
        if s.is_default:
            settings.append("default")
        if s.profile:
            settings.append(f"profile {s.profile}")
        if s.ttl:
            settings.append(f"ttl {s.ttl / 86400:g}d")
        if s.max_size:
            settings.append(f"max {_size(s.max_size)}")
        if s.write_through:
            settings.append("write-through")
        _row(table, s.name, s.kind, s.url, s.endpoint_url or "-", ", ".join(settings) or "-")
    _console().print(table)


@remote_app.command("remove")
def remote_remove(name: str = typer.Argument(..., help="The remote's name."),
                  as_json: bool = JsonOpt) -> None:
    """Forget a remote (nothing on the remote is deleted)."""
    spec = _open_store().remove_remote(name)
    if as_json:
        _print_json({"removed": spec.name})
    else:
        _echo(f"removed remote {spec.name} ({spec.url})")


def _split_remote(store: Any, args: list[str]) -> tuple[Optional[str], list[str]]:
    """`[REMOTE] [ITEM…]`: the first word is a remote if one has that name."""
    if args and args[0] in {s.name for s in store.remote_specs()}:
        return args[0], args[1:]
    return None, args


def _transfer_line(verb: str, report: Any, sent: str) -> str:
    objects, nbytes = getattr(report, f"objects_{sent}"), getattr(report, f"bytes_{sent}")
    return (f"{verb} {_n(objects, 'object')} ({_size(nbytes)}) "
            f"{'to' if sent == 'sent' else 'from'} {report.remote}; "
            f"{report.objects_skipped} already there ({_size(report.bytes_skipped)})")


@app.command()
def push(args: Optional[list[str]] = typer.Argument(None, metavar="[REMOTE] [DATASET|REF]...",
                                                   help="Default: every dataset, to the "
                                                        "default remote."),
         force: bool = typer.Option(False, "--force", "-f", help="Move remote refs even when "
                                    "that is not a fast-forward."),
         as_json: bool = JsonOpt) -> None:
    """Upload the versions a remote lacks, then update its refs (compare-and-swap)."""
    from .errors import RefConflict
    store = _open_store()
    remote, targets = _split_remote(store, list(args or []))
    try:
        report = store.push(remote, targets, force=force)
    except RefConflict as exc:
        if as_json and exc.report is not None:
            _print_json(exc.report.to_json())
        raise
    if as_json:
        _print_json(report.to_json())
        return
    if not report.versions_sent and not report.refs_updated and report.behind:
        _echo(f"nothing to push: {report.remote} is ahead")
    elif not report.versions_sent and not report.refs_updated:
        _echo(f"{report.remote} is up to date ({_n(report.versions, 'version')})")
    elif not report.versions_sent:
        _echo(f"{report.remote} has every version; refs updated:")
    else:
        _echo(f"{_n(report.versions_sent, 'new version')}: "
              + _transfer_line("pushed", report, "sent"))
    for line in report.refs_updated:
        _echo(f"  {line}")
    for line in report.behind:
        _echo(f"note: {line}; pull to catch up", err=True)


@app.command()
def fetch(remote: Optional[str] = typer.Argument(None, metavar="[REMOTE]",
                                                 help="Remote name (default: the default "
                                                      "remote)."),
          as_json: bool = JsonOpt) -> None:
    """Bring a remote's versions and refs (not file contents)."""
    report = _open_store().fetch(remote)
    if as_json:
        _print_json(report.to_json())
        return
    _echo(f"fetched {_n(len(report.new_versions), 'new version')} from {report.remote} "
          f"({_n(report.objects_received, 'object')}, {_size(report.bytes_received)})")
    for ref, vid in sorted(report.refs.items()):
        _echo(f"  {report.remote}/{ref} -> {vid}")


@app.command()
def pull(args: Optional[list[str]] = typer.Argument(None, metavar="[REMOTE] [REF]...",
                                                   help="Default: every dataset's latest."),
         path: Optional[list[str]] = typer.Option(None, "--path", "-p", help="Only these "
                                                  "paths of each version (repeatable)."),
         force: bool = typer.Option(False, "--force", "-f", help="Take the remote's tags "
                                    "where they differ from local ones."),
         no_checkout: bool = typer.Option(False, "--no-checkout", help="Leave working "
                                          "directories as they are."),
         as_json: bool = JsonOpt) -> None:
    """Fetch, download what the versions need, move local refs forward; working
    directories that followed latest move with it."""
    store = _open_store()
    remote, targets = _split_remote(store, list(args or []))
    report = store.pull(remote, targets, paths=path, force=force, checkout=not no_checkout)
    if as_json:
        _print_json(report.to_json())
        return
    _print_pull(report)


def _print_pull(report: Any) -> None:
    cached = report.from_cache
    _echo(f"{_n(len(report.fetch.new_versions), 'new version')}; "
          f"downloaded {_n(report.objects_received, 'object')} ({_size(report.bytes_received)})"
          + (f", {cached} of them from the cluster cache" if cached else "")
          + f"; {report.objects_skipped} already here ({_size(report.bytes_skipped)})")
    for line in report.updated:
        _echo(f"  {line}")
    for line in report.checked_out:
        _echo(f"  checked out {line}")
    for line in report.diverged + report.notices:
        _echo(f"warning: {line}", err=True)


@app.command()
def clone(url: str = typer.Argument(..., help="s3://BUCKET/PREFIX or a directory."),
          directory: Optional[Path] = typer.Argument(None, metavar="[DIR]",
                                                     help="The new workspace, missing or "
                                                          "empty (default: the last "
                                                          "component of URL)."),
          endpoint_url: Optional[str] = EndpointOpt, profile: Optional[str] = ProfileOpt,
          as_json: bool = JsonOpt) -> None:
    """A new workspace from a remote, every dataset checked out at its latest version."""
    from .store import Store
    store, report = Store.clone(url, directory, endpoint_url=endpoint_url, profile=profile,
                                reporter=RichReporter())
    if as_json:
        _print_json({"store": str(store.dsv_dir), **report.to_json()})
        return
    _echo(f"cloned {url} into {store.root}")
    _print_pull(report)


@cache_app.command("prune")
def cache_prune(name: Optional[str] = typer.Argument(None, metavar="[CACHE]",
                                                     help="The cache remote's name "
                                                          "(default: the only one)."),
                older_than: Optional[str] = typer.Option(None, "--older-than", help="Evict "
                                                         "entries unused this long (e.g. 7d)."),
                max_size: Optional[str] = typer.Option(None, "--max-size", help="Then evict "
                                                       "the least recently used beyond this."),
                as_json: bool = JsonOpt) -> None:
    """Evict expired or least-recently-used cluster-cache entries (never pending ones)."""
    report = _open_store().prune_cache(name, older_than, max_size)
    if as_json:
        _print_json(report.to_json())
        return
    _echo(f"removed {_n(report.removed, 'entry', 'entries')} "
          f"({_size(report.freed_bytes)}); kept {report.kept} ({_size(report.kept_bytes)}), "
          f"{report.pending_kept} of them pending upload")


index_app = typer.Typer(no_args_is_help=True, help="Maintain the SQLite index.")
app.add_typer(index_app, name="index")


@index_app.command("rebuild")
def index_rebuild(as_json: bool = JsonOpt) -> None:
    """Recreate .dsv/index.db from the packs and version records (the old one is kept)."""
    from .store import Store
    report = Store.rebuild_index(_state["store"] or ".", reporter=RichReporter(),
                                 exact=bool(_state["store"]))
    if as_json:
        _print_json(report.to_json())
        return
    for line in report.skipped:
        _echo(f"skipped: {line}")
    _echo(f"rebuilt the index from {report.packs} packs: {report.versions} versions "
          f"of {report.datasets} datasets (drafts are not recoverable)")


# ---- datasets ----------------------------------------------------------------------------

def _print_dataset(ds: Any, as_json: bool) -> None:
    if as_json:
        _print_json(ds.to_json())
        return
    table = _table("field", "value")
    table.show_header = False
    for key in ("id", "name", "path", "description", "latest", "head"):
        _row(table, key, str(getattr(ds, key) or "-"))
    _row(table, "created", _when(ds.created))
    _console().print(table)


@datasets_app.command("list")
def datasets_list(as_json: bool = JsonOpt) -> None:
    """All datasets of the store."""
    store = _open_store()
    datasets = store.datasets()
    if as_json:
        _print_json([d.to_json() for d in datasets])
        return
    table = _table("id", "name", "path", "latest", "created")
    for d in datasets:
        _row(table, d.id, d.name, d.path or "-", d.latest or "-", _when(d.created))
    _console().print(table)


@datasets_app.command("details")
def datasets_details(dataset: str = typer.Argument(..., metavar="ID",
                                                   help="Dataset id or name."),
                     as_json: bool = JsonOpt) -> None:
    """One dataset."""
    _print_dataset(_open_store().dataset(dataset), as_json)


@datasets_app.command("create")
def datasets_create(name: str = typer.Argument(..., help="The new dataset's name."),
                    path: Optional[Path] = typer.Option(None, "--path", help="Working directory "
                                                        "to bind (inside the workspace)."),
                    description: Optional[str] = typer.Option(None, "--description",
                                                              help="Free text about the "
                                                                   "dataset."),
                    as_json: bool = JsonOpt) -> None:
    """Create a dataset, optionally bound to a working directory."""
    ds = _open_store().create_dataset(name, path=path, description=description)
    if as_json:
        _print_json(ds.to_json())
    else:
        _echo(f"created dataset {ds.name} ({ds.id})" + (f" at {ds.path}" if ds.path else ""))


@datasets_app.command("update")
def datasets_update(dataset: str = typer.Argument(..., metavar="ID",
                                                  help="Dataset id or name."),
                    name: Optional[str] = typer.Option(None, "--name", help="New name (the "
                                                       "id never changes)."),
                    description: Optional[str] = typer.Option(None, "--description",
                                                              help="New description."),
                    path: Optional[Path] = typer.Option(None, "--path", help="Bind to this "
                                                        "working directory (inside the "
                                                        "workspace); no file is moved."),
                    as_json: bool = JsonOpt) -> None:
    """Rename a dataset, change its description or its working directory."""
    ds = _open_store().update_dataset(dataset, name=name, description=description, path=path)
    _print_dataset(ds, as_json)


@datasets_app.command("delete")
def datasets_delete(dataset: str = typer.Argument(..., metavar="ID",
                                                  help="Dataset id or name."),
                    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
                    as_json: bool = JsonOpt) -> None:
    """Forget a dataset and its versions (files in its directory stay; `dsv gc` frees space)."""
    store = _open_store()
    ds = store.dataset(dataset)
    if not yes and not typer.confirm(f"delete dataset {_safe(ds.name)} and all its versions?"):
        raise typer.Exit(1)
    store.delete_dataset(ds.id)
    if as_json:
        _print_json({"deleted": ds.to_json()})
    else:
        _echo(f"deleted dataset {ds.name} ({ds.id})")


# ---- versions ----------------------------------------------------------------------------

@versions_app.command("create")
def versions_create(dataset: str = typer.Argument(..., metavar="DATASET",
                                                  help="Dataset id or name."),
                    message: Optional[str] = typer.Option(None, "-m", "--message",
                                                          help="The version's message."),
                    from_ref: Optional[str] = typer.Option(None, "--from", metavar="REF",
                                                           help="Start from this version."),
                    source_path: Optional[Path] = typer.Option(
                        None, "--source-path", help="Create and commit from this directory."),
                    as_json: bool = JsonOpt) -> None:
    """Create a draft version (or, with --source-path, a committed one)."""
    store = _open_store()
    if source_path is not None:
        v = store.create_version_from_path(dataset, source_path, message)
    else:
        v = store.create_version(dataset, message, from_ref)
    if as_json:
        _print_json(_version_json(store, v))
    else:
        _echo(_ref(store, v))


@versions_app.command("commit")
def versions_commit(ref: str = typer.Argument(..., metavar="DRAFT",
                                              help="The draft to commit."),
                    message: Optional[str] = typer.Option(None, "-m", "--message",
                                                          help="Replace the draft's message "
                                                               "(default: keep it)."),
                    as_json: bool = JsonOpt) -> None:
    """Freeze a draft; it can never change again."""
    store = _open_store()
    v = store.commit_version(ref, message)
    if as_json:
        _print_json(_version_json(store, v))
    else:
        _echo(_ref(store, v))


@versions_app.command("list")
def versions_list(dataset: str = typer.Argument(..., metavar="DATASET",
                                                help="Dataset id or name."),
                  committed: bool = typer.Option(False, "--committed",
                                                 help="Only committed versions."),
                  drafts: bool = typer.Option(False, "--drafts", help="Only drafts (with "
                                              "--committed too: all versions)."),
                  as_json: bool = JsonOpt) -> None:
    """Versions of a dataset, newest first."""
    store = _open_store()
    state = "committed" if committed and not drafts else "draft" if drafts and not committed \
        else None
    versions = store.versions(dataset, state)
    if as_json:
        _print_json([_version_json(store, v) for v in versions])
        return
    table = _table("version", "state", "message", "files", "size", "time")
    for v in versions:
        _row(table, v.id, v.state, v.message or "", str(v.files), _size(v.size),
                      _when(v.committed or v.created))
    _console().print(table)


@versions_app.command("details")
def versions_details(ref: str = typer.Argument(..., metavar="REF",
                                               help="DATASET[:latest|VERSION|TAG][~N]"),
                     as_json: bool = JsonOpt) -> None:
    """One version's details."""
    store = _open_store()
    _print_version(store, store.resolve(ref), as_json)


@versions_app.command("update")
def versions_update(ref: str = typer.Argument(..., metavar="DRAFT",
                                              help="The draft to change."),
                    message: str = typer.Option(..., "-m", "--message",
                                                help="The draft's new message."),
                    as_json: bool = JsonOpt) -> None:
    """Change a draft's message."""
    store = _open_store()
    _print_version(store, store.update_version(ref, message), as_json)


@versions_app.command("delete")
def versions_delete(ref: str = typer.Argument(..., metavar="REF",
                                              help="The version to delete."),
                    force: bool = typer.Option(False, "--force", help="Also a committed version "
                                               "that nothing depends on."),
                    as_json: bool = JsonOpt) -> None:
    """Delete a draft (or an unreferenced committed version with --force)."""
    store = _open_store()
    v = store.delete_version(ref, force=force)
    if as_json:
        _print_json({"deleted": v.id})
    else:
        _echo(f"deleted version {v.id}")


# ---- files -------------------------------------------------------------------------------

@files_app.command("list")
def files_list(ref: str = typer.Argument(..., metavar="REF",
                                         help="DATASET[:latest|VERSION|TAG][~N]"),
               path: str = typer.Option("", "--path", help="A directory or file in the version."),
               recursive: bool = typer.Option(False, "--recursive", "-r",
                                              help="Every file below, not one directory's "
                                                   "entries."),
               as_json: bool = JsonOpt) -> None:
    """Files of a version: name, size, hash."""
    rows = _open_store().files(ref, path, recursive)
    if as_json:
        _print_json([r.to_json() for r in rows])
        return
    table = _table("path", "size", "hash")
    for r in rows:
        name = r.path + ("/" if r.kind == "dir" else "")
        _row(table, name, _size(r.size), r.oid[:16])
    _console().print(table)


@files_app.command("get")
def files_get(ref: str = typer.Argument(..., metavar="REF",
                                        help="DATASET[:latest|VERSION|TAG][~N]"),
              paths: Optional[list[str]] = typer.Argument(None, help="Only these files and "
                                                          "directories of the version "
                                                          "(default: all)."),
              target_path: Path = typer.Option(..., "--target-path", help="Directory to write to."),
              as_json: bool = JsonOpt) -> None:
    """Copy files of a version into a directory."""
    count = _open_store().get_files(ref, target_path, paths or None)
    if as_json:
        _print_json({"files": count, "target": str(target_path)})
    else:
        _echo(f"{_n(count, 'file')} -> {target_path}")


@files_app.command("put")
def files_put(ref: str = typer.Argument(..., metavar="DRAFT", help="The draft to add to."),
              sources: list[Path] = typer.Argument(..., metavar="SRC...",
                                                   help="Files or directories to add."),
              target_path: Optional[str] = typer.Option(None, "--target-path",
                                                        help="Directory inside the version."),
              as_json: bool = JsonOpt) -> None:
    """Add files to a draft (a directory's contents go under --target-path)."""
    store = _open_store()
    v = store.put_files(ref, list(sources), target_path)
    if as_json:
        _print_json(_version_json(store, v))
    else:
        _echo(f"{_ref(store, v)}: {v.files} files, {_size(v.size)}")


@files_app.command("delete")
def files_delete(ref: str = typer.Argument(..., metavar="DRAFT",
                                           help="The draft to change."),
                 paths: list[str] = typer.Argument(..., metavar="PATH...",
                                                   help="Files or directories of the draft."),
                 as_json: bool = JsonOpt) -> None:
    """Remove files or directories from a draft."""
    store = _open_store()
    v = store.delete_files(ref, paths)
    if as_json:
        _print_json(_version_json(store, v))
    else:
        _echo(f"{_ref(store, v)}: {v.files} files, {_size(v.size)}")


# ---- entry point -------------------------------------------------------------------------

def _refuse_non_utf8(command: Any) -> None:
    """Make every command of the tree refuse arguments that are not UTF-8 before it runs:
    dsv stores and compares text (messages, names, refs, the paths it records) as UTF-8,
    and an argument holding other bytes (which Python sees as surrogates) would fail
    half-way through the command."""
    callback = command.callback
    if callback is not None:
        params = {p.name: p for p in command.params}

        @functools.wraps(callback)
        def checked(*args: Any, **kwargs: Any) -> Any:
            for name, value in kwargs.items():
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(item, str) and not _is_utf8(item):
                        param = params.get(name)
                        if param is None:
                            label = name
                        elif param.param_type_name == "option":
                            label = max(param.opts, key=len)
                        else:
                            label = param.metavar or (param.name or name).upper()
                        raise InvalidInput(f"{label} is not valid UTF-8: {_safe(item)}",
                                           hint="dsv keeps text as UTF-8; check the encoding "
                                                "of your terminal and shell (locale)")
            return callback(*args, **kwargs)

        command.callback = checked
    for sub in getattr(command, "commands", {}).values():
        _refuse_non_utf8(sub)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _usage_error(exc: Any) -> UsageError:
    """click's complaint about a command line, as one `error:` line and a hint."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else "dsv"
    return UsageError(message, hint=f"see `{command} --help`")


def _input_error(exc: BaseException) -> DsvError | None:
    """Failures that hostile or damaged input causes, not dsv itself, as an error line;
    None for anything else (a bug)."""
    debug = "rerun with --debug to see where; report it if the input looks sound"
    if isinstance(exc, sqlite3.Error):
        from .index import index_error
        return index_error(exc, _state["index_path"] or ".dsv/index.db")
    if isinstance(exc, RecursionError):
        return InvalidInput("input nested too deeply to read",
                            hint="a tree, record or JSON document from a remote, an import or "
                                 f".dsv/ is damaged or hostile; {debug}")
    if isinstance(exc, MemoryError):
        return InvalidInput("out of memory",
                            hint="something claims to be larger than this machine can hold "
                                 f"(a hostile remote or import can), or memory is short; {debug}")
    if isinstance(exc, UnicodeDecodeError):
        return InvalidInput(f"text that is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                            hint="a file from a remote, an import or .dsv/ is damaged or "
                                 f"hostile; {debug}")
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in str(exc.reason):
        near = exc.object[max(0, exc.start - 20):exc.end + 20]
        return InvalidInput(f"text that is not valid UTF-8: {near}",
                            hint="arguments, environment variables (DSV_AUTHOR) and file names "
                                 "must be UTF-8")
    if type(exc).__module__.startswith("botocore."):
        from botocore.exceptions import FlexibleChecksumError
        if isinstance(exc, FlexibleChecksumError):  # S3 sent bytes its checksum header denies
            from .errors import RemoteError
            return RemoteError(f"the S3 remote sent damaged data ({exc})",
                               hint="nothing damaged was kept; run the command again, and if "
                                    "it fails the same way the object on the remote is damaged")
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None


def _os_error(exc: OSError) -> DsvError:
    """An error of the system as one line; a write it refused says why, with a hint."""
    import errno
    import resource
    refused = {
        errno.ENOSPC: ("no space left on the device",
                       "free some space on that disk and run the command again"),
        errno.EDQUOT: ("the disk quota is exhausted",
                       "free some space within your quota and run the command again"),
        errno.EROFS: ("the file system is read-only",
                      "use only commands that read, or remount it read-write"),
        errno.EFBIG: ("the file is too large",
                      "raise the file-size limit (`ulimit -f unlimited`) and run the command "
                      "again")}
    if exc.errno in refused:
        from .errors import CannotWrite
        cause, hint = refused[exc.errno]
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if exc.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
            cause = f"the file-size limit of this process is reached (ulimit -f: {limit} bytes)"
        return CannotWrite(f"cannot write {exc.filename or 'a file'}: {cause}", hint=hint)
    where = f": {exc.filename}" if exc.filename else ""
    return DsvError(f"{exc.strerror or exc}{where}")


def _fail(error: DsvError) -> None:
    sys.stderr.write(f"error: {_safe(error.message)}\n")
    if error.hint:
        sys.stderr.write(f"hint: {_safe(error.hint)}\n")
    sys.exit(error.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected failures become one `error:` line and exit status 1 (2 for a
    usage error); anything else is a bug in dsv and says so."""
    # click's exceptions, whether typer uses click itself or its own copy of it
    click_errors = {c.__name__: c for c in typer.BadParameter.__mro__}
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in (args[:args.index("--")] if "--" in args else args) or \
        os.environ.get("DSV_DEBUG") == "1"
    own = args[:args.index("--")] if "--" in args else args
    if "--debug" in own and own.index("--debug") > 0:
        # Accept --debug anywhere on the line, as users type it after the command.
        args.remove("--debug")
        args.insert(0, "--debug")
    argv = args
    if [a for a in args if a != "--debug"][:1] == ["--version"]:
        from . import __version__
        _echo(f"dsv {__version__}")
        return
    _state["index_path"] = None
    try:
        command = typer.main.get_command(app)
        _refuse_non_utf8(command)
        # Not standalone: usage errors come here, to be printed like every other error.
        status = command.main(args=argv, prog_name="dsv", standalone_mode=False)
        if isinstance(status, int) and status:  # typer.Exit(status) inside a command
            if status == 130:  # typer's answer to Ctrl-C
                sys.stderr.write("interrupted\n")
            sys.exit(status)
    except DsvError as exc:
        if debug:
            raise
        _fail(exc)
    except click_errors["UsageError"] as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # `dsv` or `dsv datasets` alone: the help was printed
        _fail(_usage_error(exc))
    except click_errors["ClickException"] as exc:
        _fail(DsvError(exc.format_message()))
    except typer.Abort as exc:  # no answer to a question (end of input), or Ctrl-C
        sys.stderr.write("\n")
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        _fail(DsvError("aborted"))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        error = _input_error(exc)
        if error is not None:
            _fail(error)
        sys.stderr.write(f"error: {type(exc).__name__}: {_safe(exc)}\n"
                         "hint: this is a bug in dsv; rerun with --debug for the traceback\n")
        sys.exit(1)
