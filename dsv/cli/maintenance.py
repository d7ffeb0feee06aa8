"""Commands that keep a store sound: gc, verify (of the store, or of a remote with
--remote) and index rebuild."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from ..errors import UsageError
from ..reports import MAX_AFFECTED
from .options import JsonOpt
from .output import RichReporter, echo, plural, print_json, size
from .session import open_store, session

if TYPE_CHECKING:
    from ..reports import RemoteCheckReport, VerifyReport

commands = typer.Typer(add_completion=False)
index_app = typer.Typer(no_args_is_help=True, help="Maintain the SQLite index.")
commands.add_typer(index_app, name="index")


@commands.command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only report."),
       inputs_older_than: Optional[str] = typer.Option(
           None, "--inputs-older-than", metavar="DURATION",
           help="Remove `dsv run` input trees no job has used for this long (e.g. 12h, 7d; "
                "0 removes every tree not in use; default 7d)."),
       remote: Optional[str] = typer.Option(None, "--remote", metavar="REMOTE",
                                            help="Collect a remote's garbage instead: what "
                                                 "none of its refs reaches."),
       as_json: bool = JsonOpt) -> None:
    """Remove objects no version needs (with --remote: what no ref of the remote reaches)."""
    store = open_store()
    verb = "would free" if dry_run else "freed"
    if remote is not None:
        if inputs_older_than is not None:
            raise UsageError("--inputs-older-than is for the local store",
                             hint="a remote has no `dsv run` input trees")
        found = store.gc_remote(remote, dry_run=dry_run)
        if as_json:
            print_json(found.to_json())
            return
        for line in found.skipped:
            echo(f"skipped: {line}")
        echo(f"{found.remote}: {plural(found.refs, 'ref')} reach "
             f"{plural(found.versions, 'version')} ({plural(found.objects_kept, 'object')}); "
             f"{plural(found.objects_deleted, 'object')} in "
             f"{plural(found.packs_deleted, 'dead pack')}, "
             f"{plural(found.packs_rewritten, 'partly-live pack')} and "
             f"{plural(found.loose_deleted, 'loose file')}"
             + (f", {plural(found.strays_deleted, 'leftover')}" if found.strays_deleted else "")
             + (f", {plural(found.stale_uploads_removed, 'temp file')} of killed uploads"
                if found.stale_uploads_removed else "")
             + f" {'would go' if dry_run else 'deleted'}; {verb} {size(found.bytes_freed)}")
        if found.upgraded:
            echo(f"{found.remote}: wrote every dataset's catalog; raised to remote format 3 "
                 f"(clients that read one dataset now read only its metadata)")
        return
    report = store.gc(dry_run=dry_run, inputs_older_than=inputs_older_than)
    if as_json:
        print_json(report.to_json())
    else:
        trees = (f", {plural(report.removed_inputs, 'input tree')}"
                 if report.removed_inputs else "")
        echo(f"{plural(report.removed_objects, 'object')}, "
             f"{plural(report.removed_packs, 'pack')}{trees} removed ({report.repacked_packs} "
             f"repacked); {verb} {size(report.freed_bytes)}")


@commands.command()
def verify(repair: bool = typer.Option(False, "--repair",
                                       help="Bring good copies of damaged or missing "
                                            "objects from the working directories, the "
                                            "remotes and cluster caches, and rewrite what "
                                            "held them; with --remote, "
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
    from ..reports import RemoteCheckReport
    store = open_store()
    report: VerifyReport | RemoteCheckReport
    if remote is None:
        if read_data or subset is not None:
            raise UsageError("--read-data and --read-data-subset need --remote",
                             hint="the local check always reads every object")
        report = store.verify(repair=repair)
    else:
        report = store.verify_remote(remote, read_data, subset, repair)
    if as_json:
        print_json(report.to_json())
    elif isinstance(report, RemoteCheckReport):
        _print_remote_check(report)
    else:
        _print_store_check(report)
    if not report.ok:
        raise typer.Exit(1)


AFFECTED_SHOWN = 20
"""Affected paths printed (all of them, up to the report's bound, with --json)."""


def _print_store_check(report: VerifyReport) -> None:
    for line in report.found:
        echo(f"found: {line}")
    for line in report.repaired:
        echo(f"repaired: {line}")
    for line in report.problems:
        echo(f"problem: {line}")
    for row in report.affected[:AFFECTED_SHOWN]:
        where = row["path"] or "(its version record)"
        echo(f"affected: {row['version']} {where} ({row['problem']} object "
             f"{row['object'][:12]})")
    if len(report.affected) > AFFECTED_SHOWN:
        echo(f"affected: … and {len(report.affected) - AFFECTED_SHOWN} more (--json lists "
             f"up to {MAX_AFFECTED})")
    echo(f"checked {report.objects_checked} objects ({size(report.bytes_checked)}) and "
         f"{report.versions_checked} versions: "
         f"{'ok' if report.ok else plural(len(report.problems), 'problem')}")


def _print_remote_check(report: RemoteCheckReport) -> None:
    for line in report.found:
        echo(f"found: {line}")
    for line in report.repaired:
        echo(f"repaired: {line}")
    for line in report.warnings:
        echo(f"warning: {line}")
    for line in report.problems:
        echo(f"problem: {line}")
    read = (f", read {report.objects_read} objects ({size(report.bytes_read)})"
            if report.objects_read else "")
    echo(f"checked {report.remote}: {report.packs} packs, {report.loose} loose objects, "
         f"{report.refs} refs, {report.versions_checked} versions{read}: "
         f"{'ok' if report.ok else plural(len(report.problems), 'problem')}")


@index_app.command("rebuild")
def index_rebuild(as_json: bool = JsonOpt) -> None:
    """Recreate .dsv/index.db from the packs and version records (the old one is kept)."""
    from ..store import Store
    report = Store.rebuild_index(session.store or ".", reporter=RichReporter(),
                                 exact=bool(session.store))
    if as_json:
        print_json(report.to_json())
        return
    for line in report.skipped:
        echo(f"skipped: {line}")
    echo(f"rebuilt the index from {plural(report.packs, 'pack')}: "
         f"{plural(report.versions, 'version')} "
         f"of {plural(report.datasets, 'dataset')}; "
         + ("datasets, refs, remotes and drafts from .dsv/state.json" if report.from_state
            else "no .dsv/state.json, so drafts are lost"))
