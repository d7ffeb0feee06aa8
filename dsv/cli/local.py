"""Commands of the local workflow: a store, its datasets' working directories, versions
committed from them and checked out into them (init, status, commit, log, show, diff,
merge, tag, tags, checkout, monitor). Each is one call of the Store API and the printing
of its answer."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import complete
from .options import DatasetOpt, JsonOpt
from .output import (add_row, cell, console, echo, failure_report, new_table, plural,
                     print_json,
                     print_version, print_version_ref, size, version_json, version_ref, when)
from ..model import MonitorReport
from ..reporting import lineage_summary
from .quick import show_status
from .session import open_store

commands = typer.Typer(add_completion=False)
monitor_app = typer.Typer(no_args_is_help=True, help="A file-change monitor of a dataset's "
                          "directory, so that commits look only at what changed.")
commands.add_typer(monitor_app, name="monitor")


class LinkMode(str, Enum):
    """How `dsv checkout --link` places files (docs/commands.md, Link modes)."""

    auto = "auto"
    copy = "copy"
    reflink = "reflink"
    hardlink = "hardlink"
    symlink = "symlink"


@commands.command()
def init(path: Path = typer.Argument(Path("."), metavar="[PATH]",
                                     help="Directory to create the store in."),
         name: Optional[str] = typer.Option(None, "--name", help="Name of the dataset bound to "
                                            "PATH (default: the directory's name)."),
         bare: bool = typer.Option(False, "--bare", help="Bind no dataset; add them with "
                                   "`dsv datasets create NAME --path DIR`."),
         as_json: bool = JsonOpt) -> None:
    """Create a store; bind the directory itself as a dataset."""
    from ..store import Store
    store = Store.init(path, name=name, bind=not bare)
    datasets = store.datasets()
    if as_json:
        print_json({"store": str(store.dsv_dir), "datasets": [d.to_json() for d in datasets]})
        return
    echo(f"Initialized empty dsv store in {store.dsv_dir}")
    for ds in datasets:
        echo(f"dataset {ds.name} ({ds.id}) is bound to {store.dataset_root(ds)}")


@commands.command()
def status(dataset: Optional[str] = DatasetOpt, as_json: bool = JsonOpt,
           short: bool = typer.Option(False, "--short", "-s", help="Counts only."),
           ignored: bool = typer.Option(False, "--ignored", help="Also list what "
                                        ".dsvignore files leave out.")) -> None:
    """What changed in each dataset's working directory since its current version."""
    show_status(dataset, as_json, short, ignored)


@commands.command()
def commit(paths: Optional[list[str]] = typer.Argument(
               None, metavar="[PATH]...",
               help="Commit only what lies at or under these paths (the rest of the "
                    "directory is not looked at); default: the whole directory."),
           message: str = typer.Option(..., "-m", "--message", help="What this version is."),
           dataset: Optional[str] = DatasetOpt,
           allow_empty: bool = typer.Option(False, "--allow-empty",
                                            help="Commit even if nothing changed."),
           force: bool = typer.Option(False, "--force", "-f",
                                      help="Commit even when the directory is behind latest: "
                                           "the new version becomes latest, and the versions "
                                           "in between leave its history."),
           as_json: bool = JsonOpt) -> None:
    """Snapshot a dataset's working directory as a new version (only changed files are hashed)."""
    store = open_store()
    v = store.commit(message, dataset, allow_empty=allow_empty, force=force,
                     paths=paths or None)
    print_version_ref(store, v, as_json)


@commands.command()
def log(dataset: Optional[str] = typer.Argument(None, metavar="[DATASET]",
                                                help="Dataset id or name.",
                                                autocompletion=complete.datasets),
        drafts: bool = typer.Option(False, "--drafts", help="Include drafts."),
        limit: Optional[int] = typer.Option(None, "-n", help="Show at most N versions."),
        graph: bool = typer.Option(False, "--graph", help="One line per version, with the "
                                   "lines of history drawn beside them (merges, side "
                                   "lines), as `git log --graph --oneline`."),
        as_json: bool = JsonOpt) -> None:
    """History: versions with messages, authors, times, tags and lineage."""
    store = open_store()
    versions = store.log(dataset, include_drafts=drafts)[:limit]
    if as_json:
        print_json([version_json(store, v) for v in versions])
        return
    from rich.text import Text
    terminal = console()
    if graph:
        for prefix, v in store.log_graph(versions):
            if v is None:
                terminal.print(cell(prefix))
                continue
            row = [cell(f"{prefix} "), cell(v.id, style="bold")]
            if v.tags:
                row.append(cell(f" ({', '.join(v.tags)})", style="yellow"))
            if v.is_draft:
                row.append(cell(" draft", style="red"))
            row.append(cell(" " + (v.message or "").split("\n")[0]))
            terminal.print(Text.assemble(*row))
        return
    for v in versions:
        head = [cell(version_ref(store, v), style="bold")]
        if v.tags:
            head.append(cell(f" ({', '.join(v.tags)})", style="yellow"))
        if v.is_draft:
            head.append(cell(" draft", style="red"))
        terminal.print(Text.assemble(*head))
        terminal.print(cell(f"  {when(v.committed or v.created)}  {v.author or ''}  "
                            f"{v.files} files, {size(v.size)}"))
        if v.lineage:
            terminal.print(cell(f"  lineage: {lineage_summary(v.lineage)}"))
        # Each line of a multi-line message indented, so none can pass for a new entry.
        for line in (v.message or "").split("\n"):
            terminal.print(cell(f"  {line}", multiline=True))
        terminal.print()


@commands.command()
def show(ref: str = typer.Argument(..., metavar="REF", help="DATASET[:latest|VERSION|TAG][~N]",
                                   autocompletion=complete.refs),
         as_json: bool = JsonOpt) -> None:
    """One version's details."""
    store = open_store()
    v = store.resolve(ref)
    print_version(store, v, as_json)


@commands.command()
def diff(words: Optional[list[str]] = typer.Argument(
            None, metavar="[REF [REF]] [PATH]...",
            help="From REF (default: the working directory's head) to the second REF "
                 "(default: the working directory); PATHs limit it (write ./PATH for a "
                 "path that could be read as a ref)."),
         stat: bool = typer.Option(False, "--stat", help="Per path, its size before and "
                                   "after, and the totals."),
         as_json: bool = JsonOpt) -> None:
    """What changed between two versions, or a version and the working directory."""
    store = open_store()
    ref_a, ref_b, paths = store.split_diff_words(list(words or []))
    changes = store.diff(ref_a, ref_b, paths or None)
    if as_json:
        data = changes.to_json()
        if stat:
            data["files"] = [{"path": p, "before": b, "after": a}
                             for p, (b, a) in sorted(changes.sizes.items())]
        print_json(data)
        return
    letter = {**dict.fromkeys(changes.added, "A"), **dict.fromkeys(changes.modified, "M"),
              **dict.fromkeys(changes.deleted, "D")}
    for path in sorted(letter):
        if stat:
            before, after = changes.sizes[path]
            delta = (after or 0) - (before or 0)
            sign = "+" if delta >= 0 else "-"
            echo(f"{letter[path]} {path}  {size(before) if before is not None else '-'} -> "
                 f"{size(after) if after is not None else '-'} ({sign}{size(abs(delta))})")
        else:
            echo(f"{letter[path]} {path}")
    summary = (f"{len(changes.added)} added, {len(changes.modified)} modified, "
               f"{len(changes.deleted)} deleted")
    if stat:
        grown = sum((a or 0) - (b or 0) for b, a in changes.sizes.values())
        summary += f"; {'+' if grown >= 0 else '-'}{size(abs(grown))} in all"
    echo(summary)


@commands.command()
def merge(ref: str = typer.Argument(..., metavar="REF", autocompletion=complete.refs,
                                    help="The version to merge into the working directory, "
                                         "e.g. DATASET:origin/latest."),
          message: Optional[str] = typer.Option(None, "-m", "--message",
                                                help="Message of the merge version "
                                                     "(default: `merge REF into DATASET`)."),
          ours: bool = typer.Option(False, "--ours", help="Settle every conflict with the "
                                    "working directory's side."),
          theirs: bool = typer.Option(False, "--theirs", help="Settle every conflict with "
                                      "REF's side."),
          dataset: Optional[str] = DatasetOpt,
          as_json: bool = JsonOpt) -> None:
    """Join REF's line of history with the working directory's: three-way by path."""
    from ..errors import UsageError
    if ours and theirs:
        raise UsageError("--ours and --theirs exclude each other",
                         hint="see `dsv merge --help`")
    store = open_store()
    with failure_report(as_json):
        report = store.merge(ref, message, "ours" if ours else "theirs" if theirs else None,
                             key=dataset)
    if as_json:
        print_json(report.to_json())
        return
    if report.outcome == "up to date":
        echo(f"{report.dataset}: already up to date ({report.theirs} is in {report.ours}'s "
             f"history)")
    elif report.outcome == "fast-forward":
        echo(f"{report.dataset}: fast-forward {report.ours} -> {report.version}")
    else:
        settled = (f"; {plural(len(report.conflicts), 'conflict')} settled with "
                   f"{report.resolved}" if report.conflicts else "")
        echo(f"{report.dataset}:{report.version} merges {report.theirs} into {report.ours} "
             f"(base {report.base or 'none'}){settled}")


@commands.command()
def tag(ref: Optional[str] = typer.Argument(None, metavar="REF", autocompletion=complete.refs),
        name: Optional[str] = typer.Argument(None, metavar="NAME"),
        delete: Optional[str] = typer.Option(None, "-d", "--delete", metavar="DATASET:NAME",
                                             help="Delete a tag."),
        force: bool = typer.Option(False, "--force", "-f", help="Move an existing tag."),
        as_json: bool = JsonOpt) -> None:
    """Name a committed version: `dsv tag REF NAME`; delete with `dsv tag -d DATASET:NAME`."""
    store = open_store()
    if delete:
        vid = store.delete_tag(delete)
        if as_json:
            print_json({"deleted": delete, "version": vid})
        else:
            echo(f"deleted tag {delete} (was {vid})")
        return
    if not ref or not name:
        raise typer.BadParameter("give REF and NAME, or -d DATASET:NAME")
    v = store.tag(ref, name, force=force)
    if as_json:
        print_json({"tag": name, **version_json(store, v)})
    else:
        echo(f"{version_ref(store, v).split(':')[0]}:{name} -> {v.id}")


@commands.command()
def tags(dataset: Optional[str] = typer.Argument(None, metavar="[DATASET]",
                                                 autocompletion=complete.datasets,
                                                 help="Dataset id or name "
                                                      "(default: every dataset)."),
         as_json: bool = JsonOpt) -> None:
    """List tags (of one dataset, or all)."""
    store = open_store()
    rows = store.tags(dataset)
    if as_json:
        print_json(rows)
        return
    table = new_table("dataset", "tag", "version", "created")
    for row in rows:
        add_row(table, row["dataset"], row["tag"], row["version"], when(row["created"]))
    console().print(table)


@commands.command()
def checkout(ref: str = typer.Argument(..., metavar="REF", help="DATASET[:latest|VERSION|TAG][~N]",
                                       autocompletion=complete.refs),
             paths: Optional[list[str]] = typer.Argument(None, metavar="[PATH]...",
                                                         help="Only these paths."),
             to: Optional[Path] = typer.Option(None, "--to", help="Directory to fill "
                                               "(default: the dataset's working directory)."),
             force: bool = typer.Option(False, "--force", "-f",
                                        help="Discard uncommitted changes."),
             link: LinkMode = typer.Option(LinkMode.auto, "--link", help="auto (reflink, else "
                                           "copy), copy, reflink, hardlink or symlink (the last "
                                           "two read-only)."),
             as_json: bool = JsonOpt) -> None:
    """Make a directory hold exactly one version: right bytes and modes, nothing extra."""
    store = open_store()
    report = store.checkout(ref, to=to, paths=paths or None, force=force, link=link.value)
    if as_json:
        print_json(report.to_json())
    else:
        echo(f"{version_ref(store, report.version)} -> {report.target}: {report.written} written "
             f"({size(report.bytes_written)}), {report.removed} removed, "
             f"{report.unchanged} unchanged" + (
                 f"; downloaded {plural(report.downloaded, 'object')} "
                 f"({size(report.bytes_downloaded)})" if report.downloaded else ""))


def _print_monitor(report: MonitorReport, as_json: bool) -> None:
    if as_json:
        print_json(report.to_json())
    elif not report.running:
        echo(f"{report.dataset.name}: no monitor watches {report.root}")
    else:
        echo(f"{report.dataset.name}: monitor {report.pid} watches {report.root} "
             f"({plural(report.watches, 'directory', 'directories')}); " +
             ("commits look only at what it reports changed" if report.vouched else
              "the directory differs from its version: the next commit walks it once, then "
              "commits look only at what the monitor reports changed"))


@monitor_app.command("start")
def monitor_start(dataset: Optional[str] = DatasetOpt, as_json: bool = JsonOpt) -> None:
    """Start watching a dataset's directory (Linux inotify; as git's fsmonitor)."""
    _print_monitor(open_store().start_monitor(dataset), as_json)


@monitor_app.command("stop")
def monitor_stop(dataset: Optional[str] = DatasetOpt, as_json: bool = JsonOpt) -> None:
    """Stop watching a dataset's directory: commits walk it again."""
    _print_monitor(open_store().stop_monitor(dataset), as_json)


@monitor_app.command("status")
def monitor_status(dataset: Optional[str] = DatasetOpt, as_json: bool = JsonOpt) -> None:
    """Whether a monitor watches a dataset's directory."""
    _print_monitor(open_store().monitor(dataset), as_json)
