"""The root of the command tree: `dsv` itself, its global options, and which module of
dsv.cli defines each command.

A command's module is imported, and its functions turned into click commands, only when
that command runs (or when `--help` lists every command): each run pays for the command it
runs, not for all of them. Also makes every command refuse arguments that are not UTF-8.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, MutableMapping
from importlib import import_module
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from ..errors import InvalidInput
from .output import is_utf8, safe
from .session import session

# Every command and group of `dsv`, in the order `dsv --help` lists them, and the module
# (of this package) that defines it in its `commands` app.
COMMANDS: dict[str, str] = {
    "init": "local", "status": "local", "commit": "local", "log": "local", "show": "local",
    "diff": "local", "merge": "local", "tag": "local", "tags": "local", "checkout": "local",
    "monitor": "local",
    "gc": "maintenance", "verify": "maintenance",
    "run": "jobs", "import": "jobs",
    "push": "remote", "fetch": "remote", "pull": "remote", "clone": "remote",
    "ls": "browse", "get": "browse", "cat": "browse", "mount": "browse", "umount": "browse",
    "datasets": "versions", "versions": "versions", "files": "versions",
    "remote": "remote", "cache": "remote",
    "index": "maintenance",
}

# typer bundles its own copy of click (`typer._click`), whose classes are not click's: the
# commands and contexts below are typed loosely rather than through a private module.
ClickCommand = Any
ClickContext = Any


class _LazyCommands(MutableMapping[str, ClickCommand]):
    """The root's commands by name, each built on first lookup; listing the names builds
    nothing."""

    def __init__(self, extra: MutableMapping[str, ClickCommand]) -> None:
        self._built: dict[str, ClickCommand] = dict(extra)

    def __getitem__(self, name: str) -> ClickCommand:
        if name not in self._built and name in COMMANDS:
            self._built[name] = _build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: ClickCommand) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._built if name not in COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS) + sum(1 for name in self._built if name not in COMMANDS)

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._built


def _build(name: str) -> ClickCommand:
    """The click command (or group) `name` of its module's `commands` app, built alone:
    building all of a module's costs a command ten times as much."""
    source = import_module(f"{__package__}.{COMMANDS[name]}").commands
    alone = typer.Typer(add_completion=False)
    alone.registered_commands = [
        info for info in source.registered_commands
        if (info.name or typer.main.get_command_name(info.callback.__name__)) == name]
    alone.registered_groups = [info for info in source.registered_groups if info.name == name]
    command = typer.main.get_group(alone).commands[name]
    refuse_non_utf8(command)
    return command


class _LazyGroup(TyperGroup):
    def __init__(self, **attrs: Any) -> None:  # noqa: ANN401 - click's own signature
        super().__init__(**attrs)
        self.commands = _LazyCommands(self.commands)
        refuse_non_utf8(self)

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return list(self.commands)


app = typer.Typer(cls=_LazyGroup, add_completion=True, no_args_is_help=True,
                  help="dsv: a git-like, local-first version store for datasets.",
                  context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False)


@app.callback()
def global_options(store: Optional[Path] = typer.Option(None, "--store", envvar="DSV_DIR",
                                                        help="The store (its .dsv/ or the "
                                                             "directory holding it); default: "
                                                             "found from here up."),
                   debug: bool = typer.Option(False, "--debug",
                                              help="Show tracebacks on errors.")) -> None:
    """Options of `dsv` itself, before the command: remembered for the command to use."""
    session.store = store
    session.debug = debug


def refuse_non_utf8(command: ClickCommand) -> None:
    """Make `command` and the commands of a group below it refuse arguments that are not
    UTF-8 before they run: dsv stores and compares text (messages, names, refs, the paths it
    records) as UTF-8, and an argument holding other bytes (which Python sees as surrogates)
    would fail half-way through the command."""
    callback = command.callback
    if callback is not None:
        params = {p.name: p for p in command.params}

        @functools.wraps(callback)
        def checked(*args: object, **kwargs: object) -> object:
            for name, value in kwargs.items():
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(item, str) and not is_utf8(item):
                        param = params.get(name)
                        if param is None:
                            label = name
                        elif param.param_type_name == "option":
                            label = max(param.opts, key=len)
                        else:
                            label = param.metavar or (param.name or name).upper()
                        raise InvalidInput(f"{label} is not valid UTF-8: {safe(item)}",
                                           hint="dsv keeps text as UTF-8; check the encoding "
                                                "of your terminal and shell (locale)")
            return callback(*args, **kwargs)

        command.callback = checked
    commands = getattr(command, "commands", None)
    if isinstance(commands, dict):  # the root's are checked as each is built
        for sub in commands.values():
            refuse_non_utf8(sub)
