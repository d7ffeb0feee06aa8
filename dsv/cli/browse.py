"""Commands that read a remote without a store: ls, get, cat (like `dvc get`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..errors import UsageError
from .options import JsonOpt
from .output import (RichReporter, add_row, console, echo, new_table, plural, print_file_rows,
                     print_json, when)
from .remote import EndpointOpt, ProfileOpt

if TYPE_CHECKING:
    from ..sync.reader import RemoteReader

commands = typer.Typer(add_completion=False)

UrlArg = typer.Argument(..., metavar="URL", help="s3://BUCKET/PREFIX or a directory.")
CacheOpt = typer.Option(None, "--cache", envvar="DSV_CACHE",
                        help="A cluster cache (shared directory) to read through and fill.")
RefArg = typer.Argument(..., metavar="REF", help="DATASET[:latest|VERSION|TAG][~N]")


def _reader(url: str, endpoint_url: str | None, profile: str | None,
            cache: str | None) -> RemoteReader:
    import dsv
    return dsv.open_remote(url, endpoint_url=endpoint_url, profile=profile, cache=cache,
                           reporter=RichReporter())


@commands.command("ls")
def ls(url: str = UrlArg,
       ref: Optional[str] = typer.Argument(None, metavar="[REF]",
                                           help="A dataset (its versions and tags) or "
                                                "DATASET:REF (that version's files)."),
       path: Optional[str] = typer.Argument(None, metavar="[PATH]",
                                            help="A directory or file of the version."),
       recursive: bool = typer.Option(False, "--recursive", "-r",
                                      help="Every file below, not one directory's entries."),
       endpoint_url: Optional[str] = EndpointOpt, profile: Optional[str] = ProfileOpt,
       cache: Optional[str] = CacheOpt, as_json: bool = JsonOpt) -> None:
    """The datasets of a remote, one dataset's versions and tags, or a version's files."""
    reader = _reader(url, endpoint_url, profile, cache)
    if ref is None:
        if path is not None:
            raise UsageError("give a REF before a PATH")
        found = reader.datasets()
        if as_json:
            print_json([d.to_json() for d in found])
            return
        table = new_table("dataset", "id", "latest", "tags")
        for d in found:
            add_row(table, d.name or "", d.id, d.latest.version if d.latest else "",
                    ", ".join(sorted(d.tags)))
        console().print(table)
        return
    if ":" not in ref and "~" not in ref:
        if path is not None:
            raise UsageError(f"{ref} names a dataset; name a version to list files",
                             hint=f"e.g. {ref}:latest")
        versions = reader.history(reader.dataset(ref))
        if as_json:
            print_json([v.to_json() for v in versions])
            return
        table = new_table("version", "tags", "message", "time")
        for v in versions:
            add_row(table, v.id, ", ".join(v.tags), v.message or "", when(v.committed))
        console().print(table)
        return
    print_file_rows(reader.files(reader.resolve(ref), path or "", recursive), as_json)


@commands.command("get")
def get(url: str = UrlArg, ref: str = RefArg,
        paths: Optional[list[str]] = typer.Argument(None, metavar="[PATH]...",
                                                    help="Only these files and directories "
                                                         "(default: all)."),
        to: Path = typer.Option(..., "--to", help="Directory to write to (made if missing; "
                                                   "same-named files are replaced)."),
        endpoint_url: Optional[str] = EndpointOpt, profile: Optional[str] = ProfileOpt,
        cache: Optional[str] = CacheOpt, as_json: bool = JsonOpt) -> None:
    """Download files of a version, verified, without a store."""
    reader = _reader(url, endpoint_url, profile, cache)
    version = reader.resolve(ref)
    count = reader.get(version, list(paths or []), to)
    if as_json:
        print_json({"version": version.id, "files": count, "to": str(to)})
    else:
        echo(f"{plural(count, 'file')} of {version.id} -> {to}")


@commands.command("cat")
def cat(url: str = UrlArg, ref: str = RefArg,
        path: str = typer.Argument(..., metavar="PATH", help="A file of the version."),
        endpoint_url: Optional[str] = EndpointOpt, profile: Optional[str] = ProfileOpt,
        cache: Optional[str] = CacheOpt) -> None:
    """Write one file of a version to stdout, verified, without a store."""
    reader = _reader(url, endpoint_url, profile, cache)
    out = sys.stdout.buffer
    for piece in reader.cat(reader.resolve(ref), path):
        out.write(piece)
    out.flush()


@commands.command("mount")
def mount(ref: str = RefArg,
          directory: Path = typer.Argument(..., metavar="DIR", help="An existing directory."),
          remote: Optional[str] = typer.Option(None, "--remote", metavar="URL",
                                               help="Read straight from this remote (no "
                                                    "store needed)."),
          endpoint_url: Optional[str] = EndpointOpt, profile: Optional[str] = ProfileOpt,
          cache: Optional[str] = CacheOpt,
          foreground: bool = typer.Option(False, "--foreground",
                                          help="Serve in this process until unmounted."),
          ready_fd: Optional[int] = typer.Option(None, "--ready-fd", hidden=True),
          lifeline_fd: Optional[int] = typer.Option(None, "--lifeline-fd", hidden=True),
          as_json: bool = JsonOpt) -> None:
    """Mount a version read-only (FUSE): files are read on first use, verified."""
    from .. import mount as mounting
    from .session import session
    store = str(session.store) if session.store else None
    if foreground:
        mounting.serve(ref, directory, store, remote, endpoint_url, profile, cache, ready_fd,
                       lifeline_fd)
        return
    vid = mounting.mount(ref, directory, store, remote, endpoint_url, profile, cache)
    if as_json:
        print_json({"version": vid, "mounted": str(directory)})
    else:
        echo(f"mounted {vid} at {directory} (read-only); `dsv umount {directory}` ends it")


@commands.command("umount")
def umount(directory: Path = typer.Argument(..., metavar="DIR", help="A `dsv mount`.")) -> None:
    """Unmount a `dsv mount`."""
    from .. import mount as mounting
    mounting.unmount(directory)
    echo(f"unmounted {directory}")
