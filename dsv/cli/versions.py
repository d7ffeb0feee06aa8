"""Commands on the parts of a store one at a time: datasets, versions (drafts and committed)
and the files of a version (list, get, put, delete)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from . import complete
from .options import JsonOpt
from .output import (add_row, console, echo, new_table, plural, print_file_rows, print_json,
                     print_version, print_version_ref, safe, size, version_json, version_ref,
                     when)
from .session import open_store

if TYPE_CHECKING:
    from ..model import Dataset

commands = typer.Typer(add_completion=False)
datasets_app = typer.Typer(no_args_is_help=True, help="Create, list, change and delete datasets.")
versions_app = typer.Typer(no_args_is_help=True, help="Drafts and committed versions.")
files_app = typer.Typer(no_args_is_help=True, help="Files of a version: list, get, put, delete.")
commands.add_typer(datasets_app, name="datasets")
commands.add_typer(versions_app, name="versions")
commands.add_typer(files_app, name="files")


def _print_dataset(ds: Dataset, as_json: bool) -> None:
    if as_json:
        print_json(ds.to_json())
        return
    table = new_table("field", "value")
    table.show_header = False
    for key in ("id", "name", "path", "description", "latest", "head"):
        add_row(table, key, str(getattr(ds, key) or "-"))
    add_row(table, "created", when(ds.created))
    console().print(table)


@datasets_app.command("list")
def datasets_list(as_json: bool = JsonOpt) -> None:
    """All datasets of the store."""
    store = open_store()
    datasets = store.datasets()
    if as_json:
        print_json([d.to_json() for d in datasets])
        return
    table = new_table("id", "name", "path", "latest", "created")
    for d in datasets:
        add_row(table, d.id, d.name, d.path or "-", d.latest or "-", when(d.created))
    console().print(table)


@datasets_app.command("details")
def datasets_details(dataset: str = typer.Argument(..., metavar="ID",
                                                   autocompletion=complete.datasets,
                                                   help="Dataset id or name."),
                     as_json: bool = JsonOpt) -> None:
    """One dataset."""
    _print_dataset(open_store().dataset(dataset), as_json)


@datasets_app.command("create")
def datasets_create(name: str = typer.Argument(..., metavar="NAME",
                                               help="The new dataset's name."),
                    path: Optional[Path] = typer.Option(None, "--path", help="Working directory "
                                                        "to bind (inside the workspace)."),
                    description: Optional[str] = typer.Option(None, "--description",
                                                              help="Free text about the "
                                                                   "dataset."),
                    as_json: bool = JsonOpt) -> None:
    """Create a dataset, optionally bound to a working directory."""
    ds = open_store().create_dataset(name, path=path, description=description)
    if as_json:
        print_json(ds.to_json())
    else:
        echo(f"created dataset {ds.name} ({ds.id})" + (f" at {ds.path}" if ds.path else ""))


@datasets_app.command("update")
def datasets_update(dataset: str = typer.Argument(..., metavar="ID",
                                                  autocompletion=complete.datasets,
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
    ds = open_store().update_dataset(dataset, name=name, description=description, path=path)
    _print_dataset(ds, as_json)


@datasets_app.command("delete")
def datasets_delete(dataset: str = typer.Argument(..., metavar="ID",
                                                  autocompletion=complete.datasets,
                                                  help="Dataset id or name."),
                    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
                    as_json: bool = JsonOpt) -> None:
    """Forget a dataset and its versions (files in its directory stay; `dsv gc` frees space)."""
    store = open_store()
    ds = store.dataset(dataset)
    if not yes and not typer.confirm(f"delete dataset {safe(ds.name)} and all its versions?"):
        raise typer.Exit(1)
    store.delete_dataset(ds.id)
    if as_json:
        print_json({"deleted": ds.to_json()})
    else:
        echo(f"deleted dataset {ds.name} ({ds.id})")


# ---- versions ----------------------------------------------------------------------------

@versions_app.command("create")
def versions_create(dataset: str = typer.Argument(..., metavar="DATASET",
                                                  autocompletion=complete.datasets,
                                                  help="Dataset id or name."),
                    message: Optional[str] = typer.Option(None, "-m", "--message",
                                                          help="The version's message."),
                    from_ref: Optional[str] = typer.Option(None, "--from", metavar="REF",
                                                           help="Start from this version."),
                    source_path: Optional[Path] = typer.Option(
                        None, "--source-path", help="Create and commit from this directory."),
                    as_json: bool = JsonOpt) -> None:
    """Create a draft version (or, with --source-path, a committed one)."""
    store = open_store()
    if source_path is not None:
        v = store.create_version_from_path(dataset, source_path, message)
    else:
        v = store.create_version(dataset, message, from_ref)
    print_version_ref(store, v, as_json)


@versions_app.command("commit")
def versions_commit(ref: str = typer.Argument(..., metavar="DRAFT", autocompletion=complete.refs,
                                              help="The draft to commit."),
                    message: Optional[str] = typer.Option(None, "-m", "--message",
                                                          help="Replace the draft's message "
                                                               "(default: keep it)."),
                    force: bool = typer.Option(False, "--force", "-f",
                                               help="Commit even when latest moved on since "
                                                    "the draft was started: the draft becomes "
                                                    "latest, and the versions in between leave "
                                                    "its history."),
                    as_json: bool = JsonOpt) -> None:
    """Freeze a draft; it can never change again."""
    store = open_store()
    v = store.commit_version(ref, message, force=force)
    print_version_ref(store, v, as_json)


@versions_app.command("list")
def versions_list(dataset: str = typer.Argument(..., metavar="DATASET",
                                                autocompletion=complete.datasets,
                                                help="Dataset id or name."),
                  committed: bool = typer.Option(False, "--committed",
                                                 help="Only committed versions."),
                  drafts: bool = typer.Option(False, "--drafts", help="Only drafts (with "
                                              "--committed too: all versions)."),
                  as_json: bool = JsonOpt) -> None:
    """Versions of a dataset, newest first."""
    store = open_store()
    state = "committed" if committed and not drafts else "draft" if drafts and not committed \
        else None
    versions = store.versions(dataset, state)
    if as_json:
        print_json([version_json(store, v) for v in versions])
        return
    table = new_table("version", "state", "message", "files", "size", "time")
    for v in versions:
        add_row(table, v.id, v.state, v.message or "", str(v.files), size(v.size),
                when(v.committed or v.created))
    console().print(table)


@versions_app.command("details")
def versions_details(ref: str = typer.Argument(..., metavar="REF", autocompletion=complete.refs,
                                               help="DATASET[:latest|VERSION|TAG][~N]"),
                     as_json: bool = JsonOpt) -> None:
    """One version's details."""
    store = open_store()
    print_version(store, store.resolve(ref), as_json)


@versions_app.command("update")
def versions_update(ref: str = typer.Argument(..., metavar="DRAFT", autocompletion=complete.refs,
                                              help="The draft to change."),
                    message: str = typer.Option(..., "-m", "--message",
                                                help="The draft's new message."),
                    as_json: bool = JsonOpt) -> None:
    """Change a draft's message."""
    store = open_store()
    print_version(store, store.update_version(ref, message), as_json)


@versions_app.command("delete")
def versions_delete(ref: str = typer.Argument(..., metavar="REF", autocompletion=complete.refs,
                                              help="The version to delete."),
                    force: bool = typer.Option(False, "--force", help="Also a committed version "
                                               "that nothing depends on."),
                    as_json: bool = JsonOpt) -> None:
    """Delete a draft (or an unreferenced committed version with --force)."""
    store = open_store()
    v = store.delete_version(ref, force=force)
    if as_json:
        print_json({"deleted": v.id})
    else:
        echo(f"deleted version {v.id}")


# ---- files -------------------------------------------------------------------------------

@files_app.command("list")
def files_list(ref: str = typer.Argument(..., metavar="REF", autocompletion=complete.refs,
                                         help="DATASET[:latest|VERSION|TAG][~N]"),
               path: str = typer.Option("", "--path", help="A directory or file in the version."),
               recursive: bool = typer.Option(False, "--recursive", "-r",
                                              help="Every file below, not one directory's "
                                                   "entries."),
               as_json: bool = JsonOpt) -> None:
    """Files of a version: name, size, hash."""
    print_file_rows(open_store().files(ref, path, recursive), as_json)


@files_app.command("get")
def files_get(ref: str = typer.Argument(..., metavar="REF", autocompletion=complete.refs,
                                        help="DATASET[:latest|VERSION|TAG][~N]"),
              paths: Optional[list[str]] = typer.Argument(None, metavar="[PATH]...",
                                                          help="Only these files and "
                                                          "directories of the version "
                                                          "(default: all)."),
              target_path: Path = typer.Option(..., "--target-path", help="Directory to write to."),
              as_json: bool = JsonOpt) -> None:
    """Copy files of a version into a directory."""
    count = open_store().get_files(ref, target_path, paths or None)
    if as_json:
        print_json({"files": count, "target": str(target_path)})
    else:
        echo(f"{plural(count, 'file')} -> {target_path}")


@files_app.command("put")
def files_put(ref: str = typer.Argument(..., metavar="DRAFT",
                                        autocompletion=complete.refs,
                                        help="The draft to add to."),
              sources: list[Path] = typer.Argument(..., metavar="SRC...",
                                                   help="Files or directories to add."),
              target_path: Optional[str] = typer.Option(None, "--target-path",
                                                        help="Directory inside the version."),
              as_json: bool = JsonOpt) -> None:
    """Add files to a draft (a directory's contents go under --target-path)."""
    store = open_store()
    v = store.put_files(ref, list(sources), target_path)
    if as_json:
        print_json(version_json(store, v))
    else:
        echo(f"{version_ref(store, v)}: {v.files} files, {size(v.size)}")


@files_app.command("delete")
def files_delete(ref: str = typer.Argument(..., metavar="DRAFT", autocompletion=complete.refs,
                                           help="The draft to change."),
                 paths: list[str] = typer.Argument(..., metavar="PATH...",
                                                   help="Files or directories of the draft."),
                 as_json: bool = JsonOpt) -> None:
    """Remove files or directories from a draft."""
    store = open_store()
    v = store.delete_files(ref, paths)
    if as_json:
        print_json(version_json(store, v))
    else:
        echo(f"{version_ref(store, v)}: {v.files} files, {size(v.size)}")
