"""The `dsv` command line: typer for arguments, rich for tables and progress bars.

Owns parsing, output (human tables on stdout, `--json`, progress on stderr only when it
is a terminal) and turning errors into one `error:` line with exit status 1 (2 for
usage). Holds no logic the Python API (dsv.store) lacks: every command is one call.

- `root`: `dsv` itself, its global options, and which module defines each command;
- `local`, `versions`, `remote`, `jobs`, `maintenance`: the commands, by subject;
- `output`: `safe` (the one way text dsv did not write reaches a terminal), tables, JSON,
  progress; `options`: options commands share; `session`: the store this run works on.

Every command pays for start-up, so importing this package costs almost nothing: `dsv
--version` is answered before typer is imported, and a command imports only its own module
(and rich only when it draws a table).
"""

from __future__ import annotations

import os
import sys

from ..errors import DsvError, InvalidInput, UsageError

TYPE_CHECKING = False  # not typing's: importing typing alone costs `dsv --version` 5 ms
if TYPE_CHECKING:
    from typing import Any

    import typer

__all__ = ["app", "main"]


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the typer app, built on first use: `typer` is not imported before
        from .root import app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _return_freed_buffers() -> None:
    """Make glibc give large freed buffers back to the system (the CLI owns its process;
    the library leaves malloc alone).

    glibc raises its mmap threshold each time a large mapped buffer is freed; after that,
    the 8 MiB download ranges and pack buffers that worker threads allocate come from
    per-thread arenas, which do not shrink. A fixed threshold keeps every buffer of 1 MiB
    or more in a mapping of its own, unmapped when freed: a 100,000-file clone peaked at
    166 MB instead of 231 MB, in the same time."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # no C library to ask, or not glibc-like
        pass


def _collect_less() -> None:
    """Run Python's cycle collector rarely (the CLI owns its process; the library leaves
    the collector alone).

    A clone or commit of many files keeps millions of small tuples and strings alive for
    a while; at the default thresholds (700, 10, 10) the collector walks them again and
    again, and nothing dsv makes in bulk is a cycle. What the interpreter made before the
    command is frozen out of every collection, and a young collection waits for 100,000
    new objects instead of 700: a 100,000-file clone took 7.08-7.54 s instead of
    7.89-8.74 s (user CPU 4.50-5.03 s instead of 5.38-5.95 s), at the same peak RSS.
    Cycles are still collected, so a long-running command (a mount) does not grow. Frozen
    once per process (a process that calls `main` many times, like the tests, would
    otherwise keep every earlier call's garbage).

    At exit everything is frozen again, so that the interpreter's last collections skip
    what the command made: they walked the ~85,000 objects of botocore's models and the
    like for 0.1-0.15 s after a clone had finished. Nothing dsv makes needs collecting
    once the process ends (what it writes is closed and made durable before it returns;
    `atexit` and `weakref.finalize` callbacks still run): `dsv log` took 0.10 s instead
    of 0.12-0.14 s, `dsv status` 0.07 s instead of 0.08-0.09 s."""
    import atexit
    import gc
    if gc.get_threshold()[0] != _YOUNG:
        gc.freeze()
        gc.set_threshold(_YOUNG, 20, 100)
        atexit.register(gc.freeze)


_YOUNG = 100_000


def _switch_often() -> None:
    """Let a thread that waits for the GIL have it after 0.5 ms instead of 5 (the CLI
    owns its process; the library leaves the interpreter alone).

    A clone's downloading thread makes thousands of calls that let go of the GIL (SQLite
    queries, directories made, waits for the writing threads) while the threads that
    check downloads and record placed files run Python; each such call then waited up
    to the whole interval to go on. Clones of 200,000 files took 9.5-10.6 s (median
    10.3) so, 10.3-11.4 s (median 10.7) at the default, alternating in one run; a
    200,000-file commit, status and push took the same time either way."""
    sys.setswitchinterval(_SWITCH_S)


_SWITCH_S = 0.0005


_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc, musl ignores it)."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected failures become one `error:` line and exit status 1 (2 for a
    usage error); anything else is a bug in dsv and says so."""
    _return_freed_buffers()
    _collect_less()
    _switch_often()
    args = list(argv if argv is not None else sys.argv[1:])
    own = args[:args.index("--")] if "--" in args else args
    debug = "--debug" in own or os.environ.get("DSV_DEBUG") == "1"
    if "--debug" in own and own.index("--debug") > 0:
        # Accept --debug anywhere on the line, as users type it after the command.
        args.remove("--debug")
        args.insert(0, "--debug")
    if [a for a in args if a != "--debug"][:1] == ["--version"]:
        from .. import __version__
        sys.stdout.write(f"dsv {__version__}\n")
        return

    from .output import safe
    from .quick import command as quick_command
    from .session import session

    session.reset()
    try:
        quick = quick_command(args)  # a plain `dsv status` does not pay for typer
        if quick is not None:
            quick()
        else:
            _run_typer(args)
    except DsvError as exc:
        if debug:
            raise
        _fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        error = _input_error(exc)
        if error is not None:
            _fail(error)
        sys.stderr.write(f"error: {type(exc).__name__}: {safe(exc)}\n"
                         "hint: this is a bug in dsv; rerun with --debug for the traceback\n")
        sys.exit(1)


def _run_typer(args: list[str]) -> None:
    """Read `args` with typer and run the command; a line click refuses is one `error:`."""
    import typer

    from .root import app

    # click's exceptions, whether typer uses click itself or its own copy of it
    click_errors: dict[str, Any] = {c.__name__: c for c in typer.BadParameter.__mro__}
    try:
        command = typer.main.get_command(app)
        # Not standalone: usage errors come here, to be printed like every other error.
        status = command.main(args=args, prog_name="dsv", standalone_mode=False)
        if isinstance(status, int) and status:  # typer.Exit(status) inside a command
            if status == 130:  # typer's answer to Ctrl-C
                sys.stderr.write("interrupted\n")
            sys.exit(status)
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


def _fail(error: DsvError) -> None:
    from .output import safe
    sys.stderr.write(f"error: {safe(error.message)}\n")
    if error.hint:
        sys.stderr.write(f"hint: {safe(error.hint)}\n")
    sys.exit(error.exit_code)


def _usage_error(exc: Any) -> UsageError:  # noqa: ANN401 - click's or typer's own copy
    """A command line click refused, as one `error:` line and a hint."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else "dsv"
    return UsageError(message, hint=f"see `{command} --help`")


def _input_error(exc: BaseException) -> DsvError | None:
    """Failures that hostile or damaged input causes, not dsv itself, as an error line;
    None for anything else (a bug)."""
    import sqlite3

    from .session import session
    debug = "rerun with --debug to see where; report it if the input looks sound"
    if isinstance(exc, sqlite3.Error):
        from ..index import index_error
        return index_error(exc, session.index_path or ".dsv/index.db")
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
            from ..errors import RemoteError
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
        from ..errors import CannotWrite
        cause, hint = refused[exc.errno]
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if exc.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
            cause = f"the file-size limit of this process is reached (ulimit -f: {limit} bytes)"
        return CannotWrite(f"cannot write {exc.filename or 'a file'}: {cause}", hint=hint)
    name = os.fsdecode(exc.filename) if exc.filename else ""
    if len(name) > 200:   # (a path thousands of bytes long: its ends say where)
        name = f"{name[:80]}…{name[-80:]} ({len(name):,} characters)"
    if exc.errno == errno.ENAMETOOLONG:
        return DsvError(f"path too long to reach: {name}" if name else "path too long",
                        hint="the system reaches a file by a path of at most 4,096 bytes; "
                             "move the data nearer to / or make its directories shallower")
    return DsvError(f"{exc.strerror or exc}{': ' + name if name else ''}")
