"""Commands that move versions between stores: remote (add, list, remove), push, fetch,
pull, clone, and cache prune for the cluster cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from . import complete
from ..errors import UsageError
from .options import JsonOpt
from .output import (RichReporter, add_row, console, echo, failure_report, new_table, plural,
                     print_json, size)
from .session import open_store

if TYPE_CHECKING:
    from ..reports import PullReport, PushReport

commands = typer.Typer(add_completion=False)
remote_app = typer.Typer(no_args_is_help=True, help="Configure remotes and cluster caches.")
cache_app = typer.Typer(no_args_is_help=True, help="The cluster cache.")
commands.add_typer(remote_app, name="remote")
commands.add_typer(cache_app, name="cache")

# Not read from AWS_ENDPOINT_URL here: boto3 itself honours that variable at run time, so
# only an explicit flag is stored with a remote.
EndpointOpt = typer.Option(None, "--endpoint-url", help="Any S3-compatible endpoint "
                           "(default: AWS_ENDPOINT_URL, else AWS).")
ProfileOpt = typer.Option(None, "--profile", help="AWS profile (credentials are never stored).")


@remote_app.command("add")
def remote_add(name: str = typer.Argument(..., metavar="NAME",
                                          help="Name for the remote (e.g. origin)."),
               url: str = typer.Argument(..., metavar="URL",
                                         help="s3://BUCKET/PREFIX or a directory."),
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
    spec = open_store().add_remote(name, url, endpoint_url=endpoint_url, profile=profile,
                                   cache=cache, ttl=ttl, max_size=max_size,
                                   write_through=write_through, default=default)
    if as_json:
        print_json(spec.to_json())
    else:
        kind = "cluster cache" if spec.kind == "cache" else "remote"
        echo(f"added {kind} {spec.name}: {spec.url}" + (" (default)" if spec.is_default else ""))


@remote_app.command("list")
def remote_list(as_json: bool = JsonOpt) -> None:
    """List remotes."""
    specs = open_store().remote_specs()
    if as_json:
        print_json([s.to_json() for s in specs])
        return
    table = new_table("name", "kind", "url", "endpoint", "settings")
    for s in specs:
        settings = []
        if s.is_default:
            settings.append("default")
        if s.profile:
            settings.append(f"profile {s.profile}")
        if s.ttl:
            settings.append(f"ttl {s.ttl / 86400:g}d")
        if s.max_size:
            settings.append(f"max {size(s.max_size)}")
        if s.write_through:
            settings.append("write-through")
        add_row(table, s.name, s.kind, s.url, s.endpoint_url or "-", ", ".join(settings) or "-")
    console().print(table)


@remote_app.command("remove")
def remote_remove(name: str = typer.Argument(..., metavar="NAME", help="The remote's name.",
                                             autocompletion=complete.remotes),
                  as_json: bool = JsonOpt) -> None:
    """Forget a remote (nothing on the remote is deleted)."""
    spec = open_store().remove_remote(name)
    if as_json:
        print_json({"removed": spec.name})
    else:
        echo(f"removed remote {spec.name} ({spec.url})")


@remote_app.command("maintain")
def remote_maintain(name: Optional[str] = typer.Argument(None, metavar="[REMOTE]",
                                                        autocompletion=complete.remotes,
                                                        help="Default: the default remote."),
                    as_json: bool = JsonOpt) -> None:
    """Repack a remote's small packs into few large ones (push does it past 24)."""
    report = open_store().maintain_remote(name)
    if as_json:
        print_json(report.to_json())
        return
    for line in report.skipped:
        echo(f"skipped: {line}")
    if report.stale_uploads_removed:
        echo(f"{report.remote}: removed {plural(report.stale_uploads_removed, 'temp file')} "
             f"of killed uploads ({size(report.stale_upload_bytes)})")
    if not report.packs_repacked:
        echo(f"{report.remote}: nothing to repack ({plural(report.packs_before, 'pack')})")
        return
    echo(f"{report.remote}: {plural(report.packs_repacked, 'small pack')} repacked into "
         f"{report.packs_written} ({plural(report.objects_moved, 'object')}, "
         f"{size(report.bytes_moved)}); {plural(report.packs_after, 'pack')} now")


def _transfer_line(verb: str, report: PushReport | PullReport, sent: str) -> str:
    objects, nbytes = getattr(report, f"objects_{sent}"), getattr(report, f"bytes_{sent}")
    return (f"{verb} {plural(objects, 'object')} ({size(nbytes)}) "
            f"{'to' if sent == 'sent' else 'from'} {report.remote}; "
            f"{report.objects_skipped} already there ({size(report.bytes_skipped)})"
            + _besides(report.based_on, report.remote))


def _besides(based_on: list[str], holder: str) -> str:
    """The end of a transfer line when versions were compared with ones `holder` holds
    whole (what they share was not looked at, so not counted)."""
    if not based_on:
        return ""
    return f", besides what they share with {plural(len(based_on), 'version')} {holder} holds"


@commands.command()
def push(args: Optional[list[str]] = typer.Argument(None, metavar="[REMOTE] [DATASET|REF]...",
                                                   autocompletion=complete.remote_or_ref,
                                                   help="Default: every dataset, to the "
                                                        "default remote."),
         force: bool = typer.Option(False, "--force", "-f", help="Move remote refs even when "
                                    "that is not a fast-forward."),
         delete: bool = typer.Option(False, "--delete", "-d",
                                     help="Delete these refs on the remote instead: "
                                          "DATASET:TAG, or DATASET for all of its refs."),
         as_json: bool = JsonOpt) -> None:
    """Upload the versions a remote lacks, then update its refs (compare-and-swap)."""
    store = open_store()
    remote, targets = store.split_remote(list(args or []))
    if delete and force:
        raise UsageError("--delete and --force do not go together",
                         hint="a delete needs no force")
    with failure_report(as_json):
        report = store.push(remote, targets, force=force, delete=delete)
    if as_json:
        print_json(report.to_json())
        return
    if delete:
        echo(f"deleted on {report.remote}: " + (", ".join(report.refs_deleted) or
                                                  "nothing (already gone)"))
        return
    if not report.versions_sent and not report.refs_updated and report.behind:
        echo(f"nothing to push: {report.remote} is ahead")
    elif not report.versions_sent and not report.refs_updated:
        echo(f"{report.remote} is up to date ({plural(report.versions, 'version')})")
    elif not report.versions_sent:
        echo(f"{report.remote} has every version; refs updated:")
    else:
        echo(f"{plural(report.versions_sent, 'new version')}: "
             + _transfer_line("pushed", report, "sent"))
    for line in report.refs_updated:
        echo(f"  {line}")
    if report.maintained and report.maintained["packs_repacked"]:
        done = report.maintained
        echo(f"repacked {plural(done['packs_repacked'], 'small pack')} on {report.remote} "
             f"into {done['packs_written']}")
    for line in report.behind:
        echo(f"note: {line}; pull to catch up", err=True)


@commands.command()
def fetch(args: Optional[list[str]] = typer.Argument(None, metavar="[REMOTE] [DATASET]...",
                                                    autocompletion=complete.remotes,
                                                    help="Remote name (default: the default "
                                                         "remote), then the datasets to "
                                                         "fetch, by name or id (default: "
                                                         "all, or those the store reads)."),
          history: bool = typer.Option(False, "--history", help="Also the trees of every "
                                       "older version (for work offline; otherwise they "
                                       "come when first read)."),
          as_json: bool = JsonOpt) -> None:
    """Bring a remote's versions and refs (not file contents)."""
    store = open_store()
    remote, datasets = store.split_remote(list(args or []))
    report = store.fetch(remote, datasets or None, history=history)
    if as_json:
        print_json(report.to_json())
        return
    echo(f"fetched {plural(len(report.new_versions), 'new version')} from {report.remote} "
         f"({plural(report.objects_received, 'object')}, {size(report.bytes_received)})")
    for ref, vid in sorted(report.refs.items()):
        echo(f"  {report.remote}/{ref} -> {vid}")
    if report.unfetched:
        echo(f"  {plural(report.unfetched, 'older version')}: trees left on the remote until "
             f"read (`dsv fetch --history` brings them now)")


@commands.command()
def pull(args: Optional[list[str]] = typer.Argument(None, metavar="[REMOTE] [REF]...",
                                                   autocompletion=complete.remote_or_ref,
                                                   help="Default: every dataset's latest."),
         path: Optional[list[str]] = typer.Option(None, "--path", "-p", help="Only these "
                                                  "paths of each version (repeatable)."),
         force: bool = typer.Option(False, "--force", "-f", help="Take the remote's tags "
                                    "where they differ from local ones."),
         no_checkout: bool = typer.Option(False, "--no-checkout", help="Leave working "
                                          "directories as they are."),
         merge: bool = typer.Option(False, "--merge", help="Where latest here and on the "
                                    "remote are on different lines, merge the remote's into "
                                    "the working directory (as `dsv merge "
                                    "DATASET:REMOTE/latest`)."),
         as_json: bool = JsonOpt) -> None:
    """Fetch, download what the versions need, and move refs and working directories forward.

    A working directory that followed latest moves with it; --merge merges a remote line
    that diverged."""
    store = open_store()
    remote, targets = store.split_remote(list(args or []))
    report = store.pull(remote, targets, paths=path, force=force, checkout=not no_checkout,
                        merge=merge)
    if as_json:
        print_json(report.to_json())
        return
    _print_pull(report)


def _print_pull(report: PullReport) -> None:
    cached = report.from_cache
    echo(f"{plural(len(report.fetch.new_versions), 'new version')}; "
         f"downloaded {plural(report.objects_received, 'object')} ({size(report.bytes_received)})"
         + (f", {cached} of them from the cluster cache" if cached else "")
         + f"; {report.objects_skipped} already here ({size(report.bytes_skipped)})"
         + _besides(report.based_on, "this store"))
    for line in report.updated:
        echo(f"  {line}")
    for line in report.checked_out:
        echo(f"  checked out {line}")
    for line in report.merged:
        echo(f"  merged {line}")
    for line in report.diverged + report.notices:
        echo(f"warning: {line}", err=True)


@commands.command()
def clone(url: str = typer.Argument(..., metavar="URL",
                                    help="s3://BUCKET/PREFIX or a directory."),
          directory: Optional[Path] = typer.Argument(None, metavar="[DIR]",
                                                     help="The new workspace, missing or "
                                                          "empty (default: the last "
                                                          "component of URL)."),
          endpoint_url: Optional[str] = EndpointOpt, profile: Optional[str] = ProfileOpt,
          dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d",
                                                      help="Only this dataset (name or id; "
                                                           "repeatable): later fetches read "
                                                           "only its metadata too."),
          path: Optional[list[str]] = typer.Option(None, "--path", "-p",
                                                   help="Only the files at or below this "
                                                        "path of each dataset (repeatable)."),
          no_checkout: bool = typer.Option(False, "--no-checkout",
                                           help="Download, but place no file."),
          cache: Optional[str] = typer.Option(None, "--cache", envvar="DSV_CACHE",
                                              help="A cluster cache directory to read "
                                                   "through (added as the remote `cache`)."),
          as_json: bool = JsonOpt) -> None:
    """A new workspace from a remote, every dataset checked out at its latest version."""
    from ..store import Store
    store, report = Store.clone(url, directory, endpoint_url=endpoint_url, profile=profile,
                                reporter=RichReporter(), datasets=dataset or None,
                                paths=path or None, checkout=not no_checkout, cache=cache)
    if as_json:
        print_json({"store": str(store.dsv_dir), **report.to_json()})
        return
    echo(f"cloned {url} into {store.root}")
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
    report = open_store().prune_cache(name, older_than, max_size)
    if as_json:
        print_json(report.to_json())
        return
    echo(f"removed {plural(report.removed, 'entry', 'entries')} "
         f"({size(report.freed_bytes)}); kept {report.kept} ({size(report.kept_bytes)}), "
         f"{report.pending_kept} of them pending upload")
