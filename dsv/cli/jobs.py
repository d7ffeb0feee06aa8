"""Commands that make versions from elsewhere: run (a command with datasets as inputs and
outputs, recording lineage) and import (from S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import JsonOpt
from .output import echo, print_json, print_version_ref, version_ref
from .session import open_store

commands = typer.Typer(add_completion=False)

# What pins and reaches an S3 source: `dsv import`'s, and `dsv run`'s s3:// inputs'.
EtagOpt = typer.Option(None, "--etag", help="Fail unless the S3 object has this ETag.")
VersionIdOpt = typer.Option(None, "--version-id", help="Read this S3 object version.")
S3EndpointOpt = typer.Option(None, "--endpoint-url", envvar="AWS_ENDPOINT_URL",
                             help="Any S3-compatible endpoint.")
S3ProfileOpt = typer.Option(None, "--profile", help="AWS profile.")
NoSignOpt = typer.Option(False, "--no-sign-request", help="Anonymous requests (public "
                         "buckets).")


@commands.command(context_settings={"allow_interspersed_args": False})
def run(command: list[str] = typer.Argument(..., metavar="-- CMD [ARGS]...",
                                            help="The command to run."),
        inputs: list[str] = typer.Option([], "--input", "-i", metavar="NAME=REF",
                                         help="Mount a version read-only at MOUNT_ROOT/NAME "
                                              "(REF may be s3://BUCKET/KEY-OR-PREFIX: "
                                              "imported first)."),
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
        lazy: bool = typer.Option(False, "--lazy",
                                  help="Mount inputs with FUSE (`dsv mount`): files are "
                                       "read on first use, for inputs larger than the "
                                       "local disk."),
        etag: Optional[str] = EtagOpt, version_id: Optional[str] = VersionIdOpt,
        endpoint_url: Optional[str] = S3EndpointOpt, profile: Optional[str] = S3ProfileOpt,
        no_sign_request: bool = NoSignOpt,
        as_json: bool = JsonOpt) -> None:
    """Run CMD with datasets as read-only inputs; commit its outputs with lineage.

    The job's paths are in environment variables: DSV_INPUT_<NAME>, DSV_OUTPUT_<NAME>
    (NAME upper-cased, other characters as _) and DSV_MOUNT_ROOT.
    """
    from ..jobs import parse_bindings
    store = open_store()
    ins, outs = parse_bindings(inputs, outputs, hosted)
    result = store.run(ins, outs, command, mount_root=mount_root, message=message,
                       mount=False if no_mount else None, lazy=lazy,
                       source={"etag": etag, "version_id": version_id,
                               "endpoint_url": endpoint_url, "profile": profile,
                               "no_sign_request": no_sign_request})
    if as_json:
        print_json(result.to_json())
        return
    for name, v in result.outputs.items():
        echo(f"{name}: {version_ref(store, v)}")
    echo(f"command exited 0 after {result.duration:.1f}s; inputs were "
         f"{'mounted read-only' if result.mounted else 'private copies'}", err=True)


@commands.command("import")
def import_(source: str = typer.Argument(..., metavar="s3://BUCKET[/KEY-OR-PREFIX] | REF",
                                         help="What to import (with --check: the version "
                                              "to re-check)."),
            name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: "
                                               "the last path item without extension)."),
            etag: Optional[str] = EtagOpt, version_id: Optional[str] = VersionIdOpt,
            endpoint_url: Optional[str] = S3EndpointOpt,
            profile: Optional[str] = S3ProfileOpt, no_sign_request: bool = NoSignOpt,
            check: bool = typer.Option(False, "--check", help="Re-read the source of an "
                                       "imported version: does it still match?"),
            message: Optional[str] = typer.Option(None, "-m", "--message",
                                                  help="The version's message (default: "
                                                       "`import URL`)."),
            as_json: bool = JsonOpt) -> None:
    """Create a version from an S3 object or prefix, pinned by ETag or VersionId."""
    store = open_store()
    if check:
        report = store.check_import(source, endpoint_url=endpoint_url, profile=profile,
                                    no_sign_request=no_sign_request)
        if as_json:
            print_json(report.to_json())
        else:
            for label, paths in (("changed", report.changed), ("missing", report.missing),
                                 ("new", report.added)):
                for p in paths:
                    echo(f"  {label:<8} {p}")
            verdict = "matches its source" if report.ok else "no longer matches its source"
            echo(f"{report.ref} {verdict} ({len(report.unchanged)} unchanged, "
                 f"{len(report.changed)} changed, {len(report.missing)} missing, "
                 f"{len(report.added)} new)")
        if not report.ok:
            raise typer.Exit(1)
        return
    v = store.import_s3(source, name=name, etag=etag, version_id=version_id,
                        endpoint_url=endpoint_url, profile=profile,
                        no_sign_request=no_sign_request, message=message)
    print_version_ref(store, v, as_json)
