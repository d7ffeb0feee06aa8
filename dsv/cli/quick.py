"""Command lines read without typer: the few that scripts and prompts run most, in their
plain forms, so they do not pay for importing typer (about half of `dsv status`'s time on
a clean 20,000-file dataset).

`command` reads a line only when every word is one it knows (the global `--store` and
`--debug`, then `status` with `-d/--dataset`, `--json`, `-s/--short`, `--ignored`, each at
most once) and
returns None for anything else, which typer then reads: help, abbreviations, bundled short
flags, a repeated option, `--`, text that is not UTF-8, mistakes. What a command prints is
one function that both ways call, and a test runs lines both ways and compares the output.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .output import echo, is_utf8, plural, print_json, size
from .session import open_store, session

_GLOBAL_VALUES = {"--store": "store"}
_GLOBAL_FLAGS = {"--debug": "debug"}
_COMMANDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    # command: (options taking a value, flags), each spelling → parameter name
    "status": ({"-d": "dataset", "--dataset": "dataset"},
               {"--json": "as_json", "-s": "short", "--short": "short",
                "--ignored": "ignored"}),
}


def command(args: list[str]) -> Callable[[], None] | None:
    """The run of `args` when typer is not needed to read them, else None."""
    given: dict[str, object] = {}
    rest = _read_options(args, _GLOBAL_VALUES, _GLOBAL_FLAGS, given, stop_at_word=True)
    if rest is None or not rest or rest[0] not in _COMMANDS:
        return None
    name = rest[0]
    values, flags = _COMMANDS[name]
    params: dict[str, object] = {}
    if _read_options(rest[1:], values, flags, params, stop_at_word=False) != []:
        return None
    env_store = os.environ.get("DSV_DIR")
    if env_store == "" or not all(is_utf8(a) for a in args):
        return None
    store = given.get("store", env_store)
    session.store = Path(str(store)) if store is not None else None
    session.debug = bool(given.get("debug", False))
    if name == "status":
        dataset = params.get("dataset")
        return lambda: show_status(str(dataset) if dataset is not None else None,
                                   bool(params.get("as_json")), bool(params.get("short")),
                                   bool(params.get("ignored")))
    return None  # pragma: no cover - every name in _COMMANDS is answered above


def _read_options(args: list[str], values: dict[str, str], flags: dict[str, str],
                  into: dict[str, object], stop_at_word: bool) -> list[str] | None:
    """Read options from the front of `args` into `into`; the words left (at the first
    word that is not an option when `stop_at_word`), or None for anything unusual."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            if stop_at_word:
                return args[i:]
            return None
        spelling, eq, inline = arg.partition("=")
        value: object
        if spelling in flags and not eq:
            name, value = flags[spelling], True
        elif spelling in values and (eq or i + 1 < len(args)):
            if eq and not spelling.startswith("--"):
                return None  # `-d=x` means the value "=x" to click: leave it to typer
            text = inline if eq else args[i + 1]
            i += 0 if eq else 1
            if not text or text.startswith("-"):
                return None
            name, value = values[spelling], text
        else:
            return None
        if name in into:
            return None
        into[name] = value
        i += 1
    return []


def show_status(dataset: str | None, as_json: bool, short: bool,
                ignored: bool = False) -> None:
    """`dsv status`: each dataset's changes since its current version."""
    reports = open_store().statuses(dataset, list_ignored=ignored)
    if as_json:
        print_json([r.to_json() for r in reports])
        return
    out = []
    for r in reports:
        c = r.changes
        head = r.head.id if r.head else (f"not checked out; latest {r.dataset.latest}"
                                         if r.dataset.latest else "no version yet")
        if r.behind or r.diverged:
            head += (f"; latest {r.dataset.latest} has {plural(r.behind, 'version')} this "
                     f"directory lacks" + (", on another line" if r.diverged else ""))
        if r.missing:
            out.append(f"{r.dataset.name} ({head}): its directory {r.dataset.path} does not "
                       f"exist" + (f" (`dsv checkout {r.dataset.name}:latest` fills it)"
                                   if r.dataset.latest else ""))
            continue
        if c.clean:
            out.append(f"{r.dataset.name} ({head}): clean")
        else:
            out.append(f"{r.dataset.name} ({head}): {len(c.added)} added "
                       f"({size(c.added_bytes)}), {len(c.modified)} modified "
                       f"({size(c.modified_bytes)}), {len(c.deleted)} deleted "
                       f"({size(c.deleted_bytes)})")
        if r.behind or r.diverged:
            out.append(f"  (`dsv checkout {r.dataset.name}:latest` brings it up to date; a "
                       f"commit here is refused without --force)")
        if not c.clean:
            if not short:
                for label, paths in (("added", c.added), ("modified", c.modified),
                                     ("deleted", c.deleted)):
                    out.extend(f"  {label:<9} {p}" for p in paths)
        out.extend(f"  skipped   {p} (not a regular file or symlink)" for p in r.skipped)
        out.extend(f"  ignored   {p}" for p in r.ignored or [])
    for line in out:
        echo(line)
