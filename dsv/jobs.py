"""`dsv run`: a command with datasets mounted read-only as inputs and empty outputs.

Owns placing inputs (a read-only bind mount of an input tree (inputs.py) in a private
mount namespace where Linux allows it, else a private copy), running the command
with their paths in environment variables, and committing each output with lineage
(exact input versions, command, exit status, start time, duration) or, when the command
fails, keeping it as a draft.

Must never hold the store lock while the command runs (jobs may take hours), never let a
job's outputs be committed when it may have read bytes other than those of the versions
its lineage names, and never put a mount root inside a store.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkout import FRESH_CHUNK, FRESH_CHUNK_BYTES, check_room
from .core import Core
from .inputs import INPUTS_DIR, InputTree, identity, input_tree
from . import fileio, imports, refs, versions, worktree
from .errors import CorruptObject, DsvError, InvalidInput, JobFailed, UnsafePath
from .model import Version
from .reports import JobResult
from .tree import LINK, iter_files, validate_links
from .paths import STORE_DIR, is_reserved


_ENV_NAME = re.compile(r"[^A-Za-z0-9]")

# Binds each SRC onto DST read-only inside the new namespace, checks that what got bound
# is the directory dsv checked (device:inode; SRC is a path, and a path can be swapped for
# a link between the check and the mount), then becomes the command.
_MOUNT_SCRIPT = """set -e
while [ "$1" != "--" ]; do
  mount --bind "$1" "$2"
  mount -o remount,bind,ro "$2"
  if [ "$(stat -c %d:%i "$2")" != "$3" ]; then
    echo "error: $1 was replaced while it was being mounted; the command did not run" >&2
    exit 125
  fi
  shift 3
done
shift
exec "$@"
"""


def parse_bindings(inputs: list[str], outputs: list[str],
                   hosted: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """`NAME=REF` inputs, `NAME=DATASET` outputs, and the hosted platforms' `--dataset`
    syntax (`NAME@ID:VERSION` is an input, `NAME@ID` an output)."""
    ins: dict[str, str] = {}
    outs: dict[str, str] = {}

    def add(table: dict[str, str], name: str, value: str, text: str) -> None:
        if not refs.is_valid_name(name) or not value:
            raise InvalidInput(f"invalid binding {text!r}",
                               hint="write NAME=REF for inputs and NAME=DATASET for outputs")
        if name in ins or name in outs:
            raise InvalidInput(f"{name!r} is bound twice")
        table[name] = value

    for text in inputs:
        name, _, value = text.partition("=")
        add(ins, name, value, text)
    for text in outputs:
        name, _, value = text.partition("=")
        add(outs, name, value, text)
    for text in hosted:
        name, sep, value = text.partition("@")
        if not sep:
            raise InvalidInput(f"invalid --dataset {text!r}",
                               hint="write NAME@ID:VERSION for an input, NAME@ID for an output")
        add(ins if ":" in value else outs, name, value, text)
    return ins, outs


def env_name(kind: str, name: str) -> str:
    """`DSV_INPUT_TRAIN_SET` for input `train-set`."""
    return f"DSV_{kind}_{_ENV_NAME.sub('_', name).upper()}"


def can_mount_read_only() -> bool:
    """Whether this process may bind-mount read-only in a private mount namespace."""
    if not all(shutil.which(tool) for tool in ("unshare", "mount", "stat")):
        return False
    with tempfile.TemporaryDirectory(prefix="dsv-probe-") as probe:
        src, dst = Path(probe, "src"), Path(probe, "dst")
        src.mkdir()
        dst.mkdir()
        script = _MOUNT_SCRIPT.replace('exec "$@"', 'touch "$1/x" 2>/dev/null && exit 3; exit 0')
        try:
            done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   script, "sh", str(src), str(dst), identity(os.stat(src)),
                                   "--", str(dst)], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0 and not (src / "x").exists()


def check_mount_root(core: Core, mount_root: str | os.PathLike[str],
                     fresh: bool = False) -> Path:
    """`mount_root` with symlinks resolved, refused (before anything is created) when it
    lies inside a store or holds this workspace's store: outputs must never land among
    objects, and inputs bound over the store would hide it from the job's own dsv.
    With `fresh` a new directory will be made inside it, so only the first applies."""
    given = os.fspath(mount_root)
    try:
        resolved = Path(given).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop on the way
        raise InvalidInput(f"--mount-root {given} cannot be resolved: {exc}") from None
    stores = {core.dsv_dir, core.dsv_dir.resolve()}
    lexical = Path(os.path.abspath(given)).parts
    if any(is_reserved(part) for part in (*lexical, *resolved.parts)) or \
            any(resolved.is_relative_to(s) for s in stores):
        raise UnsafePath(f"--mount-root {given} is inside a store ({STORE_DIR} is reserved "
                         "for dsv)", hint="choose a directory outside every .dsv/, or leave "
                                          "--mount-root out for a new temporary one")
    if not fresh and any(s.is_relative_to(resolved) for s in stores):
        raise UnsafePath(f"--mount-root {given} contains this workspace's store "
                         f"{core.dsv_dir}", hint="choose a directory that is not an ancestor "
                                                  "of the workspace, e.g. an empty "
                                                  "subdirectory of it")
    return resolved


def _binding_dir(root: Path, name: str) -> Path:
    """`root/name`, which must be absent or an empty real directory: a link there could
    send a job's outputs (or a bind mount) anywhere."""
    path = root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory (a link or a file)",
                         hint="dsv never writes through a link it did not make; remove it "
                              "or choose another --mount-root")
    if any(os.scandir(path)):
        raise InvalidInput(f"{path} is not empty", hint="choose another --mount-root")
    return path


def _check_env_names(inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Refuse two bindings of one kind whose variables are the same (`train-set` and
    `train_set`, `Train` and `train`): the job would see one of them only, while the
    lineage names both."""
    for kind, names in (("INPUT", inputs), ("OUTPUT", outputs)):
        seen: dict[str, str] = {}
        for name in names:
            var = env_name(kind, name)
            if var in seen:
                raise InvalidInput(f"bindings {seen[var]} and {name} would both be ${var}; "
                                   "nothing was run",
                                   hint="give them names that differ in more than case and "
                                        "punctuation")
            seen[var] = name


def _check_not_a_link(*paths: Path) -> None:
    """Refuse an output whose directory (or the mount root) the job replaced by a link:
    following it would store whatever it points at, `.dsv/` itself included."""
    for path in paths:
        if os.path.islink(path):
            raise UnsafePath(f"{path} was replaced by a link; dsv never follows a link it "
                             "did not make")


Mounter = Callable[[Version, Path, int], Callable[[], None]]
"""Mounts a version read-only at a directory (lazily, `dsv mount`) until it is unmounted
(the returned call) or the pipe whose read end is the third argument has no writer left;
returns the unmount."""


def run(core: Core, inputs: dict[str, str], outputs: dict[str, str], command: list[str],
        mount_root: str | os.PathLike[str] | None = None, message: str | None = None,
        mount: bool | None = None, lazy: Mounter | None = None,
        source: dict[str, Any] | None = None) -> JobResult:
    """Run `command` with `inputs` (NAME → REF) read-only and `outputs` (NAME → DATASET)
    empty and writable under `mount_root`; commit the outputs when it succeeds. With
    `lazy`, each input is mounted by it (files read on first use) instead of placed. An
    input `s3://BUCKET/KEY-OR-PREFIX` is imported first as `dsv import` does (pinned by
    `source`'s etag or version_id, with its endpoint_url, profile, no_sign_request), an
    earlier import of the very same objects reused."""
    if not command:
        raise InvalidInput("no command to run", hint="put it after `--`: dsv run … -- CMD ARGS")
    _check_env_names(inputs, outputs)
    if mount_root is not None:
        chosen: Path | None = check_mount_root(core, mount_root)
    else:
        chosen = None
        check_mount_root(core, tempfile.gettempdir(), fresh=True)  # TMPDIR in a store?
    imported = {name: ref for name, ref in inputs.items() if ref.startswith("s3://")}
    pins = {k: v for k, v in (source or {}).items() if k in ("etag", "version_id") and v}
    if pins and len(imported) != 1:
        raise InvalidInput("--etag and --version-id pin one s3:// input; "
                           f"{'none is' if not imported else 'several are'} given",
                           hint="import the others with `dsv import` and bind them by ref")
    in_versions = {name: imports.import_s3(core, ref, reuse=True, **(source or {}))
                   if name in imported else core.resolve(ref) for name, ref in inputs.items()}
    for name, v in in_versions.items():
        if v.is_draft:
            raise InvalidInput(f"input {name} is draft {v.id}; inputs must be committed "
                               "versions, so lineage names something that cannot change")
    out_datasets = {name: core.dataset(key) for name, key in outputs.items()}
    if chosen is not None:
        for name in (*in_versions, *out_datasets):
            _binding_dir(chosen, name)
    root = chosen or Path(tempfile.mkdtemp(prefix="dsv-run-"))
    root.mkdir(parents=True, exist_ok=True)
    mounted = can_mount_read_only() if mount is None else mount
    env = dict(os.environ, DSV_MOUNT_ROOT=str(root))
    binds: list[str] = []
    trees: dict[str, InputTree] = {}
    unmounts: list[Callable[[], None]] = []
    keep_root = False  # (a temporary root holding outputs that could not be saved)
    lifeline = keepalive = -1  # (the pipe of lazy mounts, see below)
    try:
        with core.locked("run: placing inputs"):
            for name, v in in_versions.items():
                target = _binding_dir(root, name)
                target.mkdir(parents=True, exist_ok=True)
                if lazy is not None:
                    # (served by another process, which reads the store: not under our lock)
                    env[env_name("INPUT", name)] = str(target)
                    continue
                if mounted:
                    # The read-only bind is what keeps the job out; what is bound is the
                    # version's input tree, made once and reused by every later run.
                    tree = trees[name] = input_tree(core, v)
                    binds += [str(tree.path), str(target), tree.identity]
                else:
                    # The version's trees walked, its files copied a chunk at a time;
                    # its links checked through each other first (a chunk's placement
                    # sees only the links of that chunk).
                    files = functools.partial(iter_files, v.tree, core.read_tree)
                    check_room(core, target, "auto", files,
                               claimed=v.size, what=f"input {name}",
                               hint="free some space; nothing was run")
                    validate_links(dict(iter_files(v.tree, core.read_tree, only=LINK)),
                                   core.objects.read)
                    placer = worktree.Materializer(core.objects, target, "auto",
                                                   stat_rows=False)
                    for chunk in worktree.batches(files(), lambda it: it[1].size, FRESH_CHUNK,
                                                  FRESH_CHUNK_BYTES):
                        placer.place(chunk)
                env[env_name("INPUT", name)] = str(target)
        if lazy is not None:
            # The mounts are served by processes of their own: they end when dsv unmounts
            # them, or else (dsv killed) when neither dsv nor the job holds this pipe.
            lifeline, keepalive = os.pipe()
            for name, v in in_versions.items():
                unmounts.append(lazy(v, _binding_dir(root, name), lifeline))
            os.close(lifeline)
            lifeline = -1
        for name in out_datasets:
            _binding_dir(root, name).mkdir(parents=True, exist_ok=True)
            env[env_name("OUTPUT", name)] = str(root / name)
        if binds:
            # Input trees link the store's objects themselves: in the job's namespace the
            # trees are read-only under their own paths too (`.dsv/inputs/`).
            guarded = core.dsv_dir / INPUTS_DIR
            binds += [str(guarded), str(guarded), identity(os.stat(guarded))]
        argv = (["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_SCRIPT, "sh",
                 *binds, "--", *command] if mounted and binds else list(command))
        started = time.time()
        status = _run_forwarding_signals(argv, env, keepalive)
        duration = time.time() - started
        # The trees were checked before the job; anything done to them since (by anyone:
        # the job itself can reach `.dsv/inputs/` by its path) may have been read.
        changed = {name: paths for name, tree in trees.items()
                   if (paths := tree.changed_paths(core))}
        result = JobResult(command=list(command), exit_status=status, started=started,
                           duration=duration, mounted=mounted or lazy is not None,
                           mount_root=root)
        lineage: dict[str, Any] = {
            "inputs": {name: {"dataset": v.dataset, "version": v.id, "record": v.record,
                              "ref": f"{_name(core, v.dataset)}:{v.id}",
                              **({"source": imported[name]} if name in imported else {})}
                       for name, v in in_versions.items()},
            "outputs": {name: ds.id for name, ds in out_datasets.items()},
            "command": list(command), "exit_status": status,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(duration, 3), "inputs_read_only": mounted or bool(lazy),
        }
        if lazy is not None:
            lineage["inputs_lazy"] = True
        text = message or f"dsv run: {' '.join(command)}"[:200]
        # Every output is saved as a draft first, and committed only when all of them
        # could be: a job's outputs are committed together or not at all.
        unsaved: list[tuple[str, str]] = []
        with core.locked("run: saving outputs"):
            for name, ds in out_datasets.items():
                try:
                    _check_not_a_link(root, root / name)
                    result.outputs[name] = versions.create_version_from_path(
                        core, ds.id, root / name, text, lineage=lineage, commit=False)
                except (DsvError, OSError) as exc:  # what the job left cannot be stored
                    unsaved.append((name, exc.message if isinstance(exc, DsvError)
                                    else f"{exc.strerror or exc}"))
            if status == 0 and not changed and not unsaved:
                result.outputs = dict(zip(result.outputs, versions.commit_drafts(
                    core, [v.id for v in result.outputs.values()]), strict=True))
        kept = ", ".join(f"{_name(core, v.dataset)}:{v.id}" for v in result.outputs.values())
        if unsaved:
            keep_root = mount_root is None
            name, why = unsaved[0]
            more = f" (and {len(unsaved) - 1} more outputs)" if len(unsaved) > 1 else ""
            raise JobFailed(
                (f"the command exited with status {status}; " if status else "")
                + f"output {name} ({_name(core, out_datasets[name].id)}) could not be saved"
                f"{more}: {why}; nothing was committed"
                + (f"; outputs kept as drafts: {kept}" if kept else "")
                + f"; what the job wrote stays in {root}",
                hint=f"fix it there, then keep it with `dsv versions create "
                     f"{_name(core, out_datasets[name].id)} --source-path {root / name}`",
                result=result)
        if changed:
            name, paths = next(iter(changed.items()))
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3
                                            else "")
            raise CorruptObject(
                f"input {name} ({lineage['inputs'][name]['ref']}) was changed in "
                f"{STORE_DIR}/{INPUTS_DIR}/ while the command ran ({shown}); nothing was "
                "committed" + (f"; outputs kept as drafts: {kept}" if kept else ""),
                hint="something outside the job wrote into the cached input tree; run the "
                     "job again (dsv rebuilds a changed input tree before binding it). A "
                     "large file there is the stored object itself: if one was changed, "
                     "`dsv verify --repair` brings a good copy back")
        if status != 0:
            raise JobFailed(f"the command exited with status {status}; nothing was committed"
                            + (f"; outputs kept as drafts: {kept}" if kept else ""),
                            hint="inspect a draft with `dsv files list DRAFT`, commit it with "
                                 "`dsv versions commit DRAFT`", result=result)
        return result
    finally:
        try:
            for unmount in unmounts:
                unmount()
        finally:
            for fd in (lifeline, keepalive):  # (after: the mounts would end themselves)
                if fd >= 0:
                    os.close(fd)
        for tree in trees.values():
            tree.close()
        if keep_root and not os.path.islink(root):
            for name in in_versions:  # (private copies, or empty mount points)
                with contextlib.suppress(OSError):
                    fileio.remove_tree(root / name)
        elif mount_root is None:
            # Inputs are gone with the namespace; outputs are in the store now.
            with contextlib.suppress(OSError):
                fileio.remove_tree(root)


# ---- running -------------------------------------------------------------------------

def _name(core: Core, ds_id: str) -> str:
    ds = core.index.dataset_by("id", ds_id)
    return ds.name if ds else ds_id


def _run_forwarding_signals(argv: list[str], env: dict[str, str], keep: int = -1) -> int:
    """Run `argv`; Ctrl-C or SIGTERM to dsv reaches the job, and dsv waits for it to end
    (so the namespace, and with it every mount, is gone before dsv cleans up). The job
    inherits descriptor `keep` (when not -1)."""
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []  # signals that came while the job was being started

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            early.append(signum)
        else:
            child.send_signal(signum)

    # Installed before the job starts: a Ctrl-C during the start must reach it too.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            child = subprocess.Popen(argv, env=env, pass_fds=(keep,) if keep >= 0 else ())
        except FileNotFoundError:
            raise InvalidInput(f"command not found: {argv[0]}") from None
        for signum in early:
            child.send_signal(signum)
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
