"""`dsv run`: a command with datasets mounted read-only as inputs and empty outputs.

Owns placing inputs (a read-only bind mount in a private mount namespace where Linux
allows it, else a private copy), running the command with their paths in environment
variables, and committing each output with lineage (exact input versions, command,
exit status, start time, duration) or, when the command fails, keeping it as a draft.
Must never hold the store lock while the command runs: jobs may take hours.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import refs, worktree
from .errors import InvalidInput, JobFailed
from .index import Version

if TYPE_CHECKING:
    from .store import Store

INPUTS_DIR = "inputs"
_STAMP = ".dsv-input-stamp"
_ENV_NAME = re.compile(r"[^A-Za-z0-9]")
# Binds each SRC onto DST read-only inside the new namespace, then becomes the command.
_MOUNT_SCRIPT = """set -e
while [ "$1" != "--" ]; do
  mount --bind "$1" "$2"
  mount -o remount,bind,ro "$2"
  shift 2
done
shift
exec "$@"
"""


@dataclass
class JobResult:
    command: list[str]
    exit_status: int
    started: float
    duration: float
    mounted: bool
    mount_root: Path
    outputs: dict[str, Version] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "exit_status": self.exit_status,
                "started": self.started, "duration_s": round(self.duration, 3),
                "mounted_read_only": self.mounted, "mount_root": str(self.mount_root),
                "outputs": {name: {"dataset": v.dataset, "version": v.id, "state": v.state}
                            for name, v in self.outputs.items()}}


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
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory(prefix="dsv-probe-") as probe:
        src, dst = Path(probe, "src"), Path(probe, "dst")
        src.mkdir()
        dst.mkdir()
        script = _MOUNT_SCRIPT.replace('exec "$@"', 'touch "$1/x" 2>/dev/null && exit 3; exit 0')
        try:
            done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   script, "sh", str(src), str(dst), "--", str(dst)],
                                  capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0 and not (src / "x").exists()


def run(store: "Store", inputs: dict[str, str], outputs: dict[str, str], command: list[str],
        mount_root: str | os.PathLike[str] | None = None, message: str | None = None,
        mount: bool | None = None) -> JobResult:
    """Run `command` with `inputs` (NAME → REF) read-only and `outputs` (NAME → DATASET)
    empty and writable under `mount_root`; commit the outputs when it succeeds."""
    if not command:
        raise InvalidInput("no command to run", hint="put it after `--`: dsv run … -- CMD ARGS")
    in_versions = {name: store.resolve(ref) for name, ref in inputs.items()}
    for name, v in in_versions.items():
        if v.is_draft:
            raise InvalidInput(f"input {name} is draft {v.id}; inputs must be committed "
                               "versions, so lineage names something that cannot change")
    out_datasets = {name: store.dataset(key) for name, key in outputs.items()}
    root = Path(mount_root).resolve() if mount_root else Path(tempfile.mkdtemp(prefix="dsv-run-"))
    root.mkdir(parents=True, exist_ok=True)
    for name in (*in_versions, *out_datasets):
        if (root / name).exists() and any((root / name).iterdir()):
            raise InvalidInput(f"{root / name} is not empty", hint="choose another --mount-root")
    mounted = can_mount_read_only() if mount is None else mount
    env = dict(os.environ, DSV_MOUNT_ROOT=str(root))
    binds: list[str] = []
    try:
        with store.locked("run: placing inputs"):
            for name, v in in_versions.items():
                target = root / name
                target.mkdir(parents=True, exist_ok=True)
                if mounted:
                    # The read-only bind is what keeps the job out; what is bound is the
                    # version's input tree, made once and reused by every later run.
                    binds += [str(input_tree(store, v)), str(target)]
                else:
                    worktree.Materializer(store.objects, target, "auto",
                                          stat_rows=False).place(list(store.manifest(v).items()))
                env[env_name("INPUT", name)] = str(target)
        for name in out_datasets:
            (root / name).mkdir(parents=True, exist_ok=True)
            env[env_name("OUTPUT", name)] = str(root / name)
        argv = (["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_SCRIPT, "sh",
                 *binds, "--", *command] if mounted and binds else list(command))
        started = time.time()
        status = _run_forwarding_signals(argv, env)
        duration = time.time() - started
        result = JobResult(list(command), status, started, duration, mounted, root)
        lineage = {
            "inputs": {name: {"dataset": v.dataset, "version": v.id, "record": v.record,
                              "ref": f"{_name(store, v.dataset)}:{v.id}"}
                       for name, v in in_versions.items()},
            "outputs": {name: ds.id for name, ds in out_datasets.items()},
            "command": list(command), "exit_status": status,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(duration, 3), "inputs_read_only": mounted,
        }
        text = message or f"dsv run: {' '.join(command)}"[:200]
        for name, ds in out_datasets.items():
            result.outputs[name] = store.create_version_from_path(
                ds.id, root / name, text, lineage=lineage, commit=status == 0)
        if status != 0:
            kept = ", ".join(f"{_name(store, v.dataset)}:{v.id}" for v in result.outputs.values())
            raise JobFailed(f"the command exited with status {status}; nothing was committed"
                            + (f"; outputs kept as drafts: {kept}" if kept else ""),
                            hint="inspect a draft with `dsv files list DRAFT`, commit it with "
                                 "`dsv versions commit DRAFT`", result=result)
        return result
    finally:
        if mount_root is None:
            # Inputs are gone with the namespace; outputs are in the store now.
            shutil.rmtree(root, ignore_errors=True)


def input_tree(store: "Store", version: Version) -> Path:
    """`.dsv/inputs/<version>/`: the files of a committed version, for binding read-only.

    Made once per version (large files hard links to verified shared copies, small ones
    written from their packs), then reused: later runs cost one bind mount. A stamp keeps
    every file's (size, mtime, inode, mode); a tree that no longer matches it (someone
    edited it outside a job, where it is writable) is rebuilt, never bound.
    """
    import json

    from .worktree import scan

    base = store.dsv_dir / INPUTS_DIR
    final = base / version.id
    stamp = final / _STAMP
    if stamp.is_file():
        try:
            expected = json.loads(stamp.read_text())
            files, _ = scan(final)
            files.pop(_STAMP, None)
            if {p: list(f[:4]) for p, f in files.items()} == expected:
                return final
        except (OSError, ValueError):
            pass
        shutil.rmtree(final, ignore_errors=True)
    building = base / f"{version.id}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    worktree.Materializer(store.objects, building, "hardlink",
                          stat_rows=False).place(list(store.manifest(version).items()))
    files, _ = scan(building)
    (building / _STAMP).write_text(json.dumps({p: list(f[:4]) for p, f in files.items()}))
    os.rename(building, final)
    return final


def remove_unused_inputs(store: "Store") -> int:
    """Drop input trees of versions that no longer exist, and half-built ones."""
    base = store.dsv_dir / INPUTS_DIR
    removed = 0
    if base.is_dir():
        for entry in base.iterdir():
            vid, _, building = entry.name.partition(".building-")
            if building or store.index.version(vid) is None:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed


def _name(store: "Store", ds_id: str) -> str:
    ds = store.index.dataset_by("id", ds_id)
    return ds.name if ds else ds_id


def _run_forwarding_signals(argv: list[str], env: dict[str, str]) -> int:
    """Run `argv`; Ctrl-C or SIGTERM to dsv reaches the job, and dsv waits for it to end
    (so the namespace, and with it every mount, is gone before dsv cleans up)."""
    child: subprocess.Popen | None = None
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
            child = subprocess.Popen(argv, env=env)
        except FileNotFoundError:
            raise InvalidInput(f"command not found: {argv[0]}") from None
        for signum in early:
            child.send_signal(signum)
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
