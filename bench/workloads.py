"""Deterministic benchmark workloads for dsv (SPEC §5, the scale issue and issue 12).

Generators, all driven by a fixed seed so that every run, every tool and every machine
sees byte-identical inputs:

* ``small``    -- 20,000 files of 1-16 KiB in 100 directories ``d000`` .. ``d099``
  (200 files each, ``f000.bin`` .. ``f199.bin``).
* ``large``    -- 8 files of 128 MiB at the top level (``f0.bin`` .. ``f7.bin``).
* ``mutation`` -- applied in place to a generated tree: 200 existing small files
  rewritten with new content (same size, so only mtime/content reveal the change),
  100 new small files added, and 1 MiB appended to one large file. Each part applies
  only when the tree has files of that kind.
* ``scale``    -- 1,000,000 files (``files``, scalable) of 256 B-4 KiB in directories of
  1,000 (``d0000/f000.bin`` ..); its mutation rewrites 2,000 of them (same size).
* ``flat``     -- 200,000 files (``files``) of 256 B-4 KiB in one directory
  (``f000000.bin`` ..); its mutation rewrites one file (same size).
* ``remote-age`` -- 2,000 files of 1-16 KiB in 20 directories of 100
  (``d00/f000.bin`` ..), and ``rounds`` rounds of ``changes`` files rewritten each
  (``age_round``); its "mutated" tree is the content after the last round.

Content-defined chunking of large files (issue 12), one file each:

* ``append``     -- ``big.bin``, 1 GiB; its mutation appends 1 MiB of new bytes.
* ``insert``     -- ``big.bin``, 1 GiB; its mutation inserts 1 MiB of new bytes at
  offset 512 MiB (everything after it moves 1 MiB further).
* ``checkpoint`` -- ``model.ckpt``, 512 MiB made of 64 "tensors" of 8 MiB; a round
  (``checkpoint_round``) rewrites 4 tensors chosen by the seed and the round number with
  new bytes, in place; its "mutated" tree is the content after the 10th round.

Reading where the data is used (issue 13), one tree, read only (no mutation):

* ``read``       -- ``big.bin`` (1 GiB, the bytes of append's), ``parts/part-00.parquet``
  .. ``part-15.parquet`` (16 x 1,000,000 rows of ``key`` int64 in [0, 1000) and ``value``
  int64 in [0, 2^40), from numpy's generator seeded by the seed and the part number,
  snappy, ~144 MB) and ``small/`` (the small workload's 20,000 files, same bytes).
  ``generate_read`` needs numpy and pyarrow (``bench/run.py`` runs it with the dsv
  venv's Python); it also writes the expected ``groupby(key).value.sum()`` beside the
  tree (``read_aggregate_path``).

File contents are the BLAKE3 extendable output of a key made of the seed, the file's
relative path and a generation number. That is pseudo-random (incompressible, no two
1 MiB blocks alike, nothing for content-defined chunking to deduplicate), independent
of generation order, and fast (~1.5 GB/s on one core). The structural choices (sizes,
which files are mutated) come from ``random.Random(seed)``.

Command line (for inspection; ``bench/run.py`` imports this module)::

    python bench/workloads.py small DIR [--seed N]
    python bench/workloads.py large DIR
    python bench/workloads.py scale DIR [--files 100000]
    python bench/workloads.py mutate DIR                      # small / large mutation
    python bench/workloads.py mutate DIR --workload scale [--files 100000]
    python bench/workloads.py insert DIR && python bench/workloads.py mutate DIR --workload insert
    bench/.venv-dsv/bin/python bench/workloads.py read DIR    # needs numpy and pyarrow
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import blake3

DEFAULT_SEED = 20240521
KIB = 1024
MIB = 1024 * KIB

SMALL_DIRS = 100
SMALL_FILES_PER_DIR = 200
SMALL_MIN = 1 * KIB
SMALL_MAX = 16 * KIB

LARGE_FILES = 8
LARGE_SIZE = 128 * MIB
LARGE_PIECE = 8 * MIB  # bytes produced and written per call

MUT_REWRITE = 200
MUT_ADD = 100
MUT_APPEND = 1 * MIB

WORKLOADS = ("small", "large", "scale", "flat", "remote-age", "append", "insert", "checkpoint",
             "read")
# One large file each, edited in place: the workloads of content-defined chunking (issue 12)
CHUNK_WORKLOADS = ("append", "insert", "checkpoint")

SCALE_FILES = 1_000_000
SCALE_PER_DIR = 1000
TINY_MIN = 256  # file sizes of the scale and flat workloads
TINY_MAX = 4 * KIB
SCALE_MUTATE = 2000
FLAT_FILES = 200_000
FLAT_MUTATE = 1

AGE_FILES = 2000
AGE_PER_DIR = 100
AGE_ROUNDS = 200
AGE_CHANGES = 5

BIG_FILE = "big.bin"  # append / insert
BIG_SIZE = 1024 * MIB
EDIT_SIZE = 1 * MIB  # bytes appended / inserted
INSERT_AT = 512 * MIB
CKPT_FILE = "model.ckpt"  # checkpoint
CKPT_TENSORS = 64
CKPT_TENSOR = 8 * MIB
CKPT_ROUNDS = 10
CKPT_CHANGES = 4  # tensors rewritten per round

READ_SMALL = "small"  # read (issue 13): the small workload's tree, under this directory
READ_PARTS = "parts"  # the Parquet files, under this directory
READ_PART_COUNT = 16
READ_PART_ROWS = 1_000_000
READ_KEYS = 1000
READ_VALUE_MAX = 1 << 40  # sums of ~16,000 values per key stay far below 2^63


@dataclass(frozen=True)
class Params:
    """The size knobs of the scalable workloads (``files`` of scale / flat; the rounds of
    remote-age). ``files=0`` means the workload's default."""

    files: int = 0
    rounds: int = AGE_ROUNDS
    changes: int = AGE_CHANGES

    def count(self, workload: str) -> int:
        """Number of files the workload generates."""
        default = {"scale": SCALE_FILES, "flat": FLAT_FILES, "remote-age": AGE_FILES}
        if workload in ("small", "large"):
            return len(small_paths() if workload == "small" else large_paths())
        if workload in CHUNK_WORKLOADS:
            return 1
        if workload == "read":
            return 1 + READ_PART_COUNT + len(small_paths())
        return self.files or default[workload]


@dataclass(frozen=True)
class TreeInfo:
    """Summary of a generated (or mutated) tree."""

    files: int
    bytes: int


def _content(seed: int, rel: str, generation: int, length: int, offset: int = 0) -> bytes:
    """Return ``length`` pseudo-random bytes of file ``rel`` starting at ``offset``."""
    key = f"dsv-bench:{seed}:{rel}:{generation}".encode()
    data: bytes = blake3.blake3(key).digest(length=length, seek=offset)
    return data


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        f.write(data)


def small_paths() -> list[str]:
    """Relative paths of the small workload, in generation order."""
    return [f"d{d:03d}/f{i:03d}.bin" for d in range(SMALL_DIRS) for i in range(SMALL_FILES_PER_DIR)]


def large_paths() -> list[str]:
    """Relative paths of the large workload."""
    return [f"f{i}.bin" for i in range(LARGE_FILES)]


def generate_small(root: Path, seed: int = DEFAULT_SEED) -> TreeInfo:
    """Write the small workload into ``root`` (created if missing)."""
    rng = random.Random(seed)
    total = 0
    paths = small_paths()
    for d in range(SMALL_DIRS):
        (root / f"d{d:03d}").mkdir(parents=True, exist_ok=True)
    for rel in paths:
        size = rng.randint(SMALL_MIN, SMALL_MAX)
        _write(root / rel, _content(seed, rel, 0, size))
        total += size
    return TreeInfo(files=len(paths), bytes=total)


def _write_large(
    path: Path, seed: int, rel: str, generation: int, size: int, start: int = 0
) -> None:
    mode = "ab" if start else "wb"
    with open(path, mode, buffering=0) as f:
        offset = start
        end = start + size
        while offset < end:
            n = min(LARGE_PIECE, end - offset)
            f.write(_content(seed, rel, generation, n, offset))
            offset += n


def generate_large(root: Path, seed: int = DEFAULT_SEED) -> TreeInfo:
    """Write the large workload into ``root`` (created if missing)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in large_paths():
        _write_large(root / rel, seed, rel, 0, LARGE_SIZE)
    return TreeInfo(files=LARGE_FILES, bytes=LARGE_FILES * LARGE_SIZE)


def many_paths(workload: str, files: int) -> list[str]:
    """Relative paths of the scale, flat or remote-age workload of ``files`` files."""
    if workload == "flat":
        return [f"f{i:06d}.bin" for i in range(files)]
    if workload == "scale":
        return [f"d{i // SCALE_PER_DIR:04d}/f{i % SCALE_PER_DIR:03d}.bin" for i in range(files)]
    if workload == "remote-age":
        return [f"d{i // AGE_PER_DIR:02d}/f{i % AGE_PER_DIR:03d}.bin" for i in range(files)]
    raise ValueError(f"{workload!r} is not a many-file workload")


def generate_many(workload: str, root: Path, files: int, seed: int = DEFAULT_SEED) -> TreeInfo:
    """Write ``files`` files of the scale, flat or remote-age workload into ``root``.

    Fast enough for a million files (about a minute here): one ``os.open``/``os.write``/
    ``os.close`` per file, relative to an open directory descriptor (no path lookups),
    contents from BLAKE3 like every other workload.
    """
    lo, hi = (SMALL_MIN, SMALL_MAX) if workload == "remote-age" else (TINY_MIN, TINY_MAX)
    rng = random.Random(f"{seed}:{workload}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    total = 0
    root.mkdir(parents=True, exist_ok=True)
    current, dir_fd = None, -1
    try:
        for rel in many_paths(workload, files):
            parent, _, name = rel.rpartition("/")
            if parent != current:
                if dir_fd >= 0:
                    os.close(dir_fd)
                (root / parent).mkdir(exist_ok=True)
                dir_fd = os.open(root / parent, os.O_RDONLY | os.O_DIRECTORY)
                current = parent
            size = rng.randint(lo, hi)
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, _content(seed, rel, 0, size))
            finally:
                os.close(fd)
            total += size
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    return TreeInfo(files=files, bytes=total)


def rewrite(root: Path, rels: list[str], seed: int, generation: int) -> int:
    """Give each of ``rels`` new bytes of the same size (generation ``generation``);
    return the number of bytes written."""
    written = 0
    for rel in rels:
        size = (root / rel).stat().st_size
        _write(root / rel, _content(seed, rel, generation, size))
        written += size
    return written


def mutated_paths(workload: str, files: int, seed: int) -> list[str]:
    """The files the scale or flat mutation rewrites (2,000, resp. 1), sorted."""
    count = SCALE_MUTATE if workload == "scale" else FLAT_MUTATE
    rng = random.Random(f"{seed}:{workload}:mutation")
    paths = many_paths(workload, files)
    return sorted(paths[i] for i in rng.sample(range(files), min(count, files)))


def age_round(root: Path, seed: int, files: int, round_no: int, changes: int) -> int:
    """Round ``round_no`` (0-based) of remote-age: rewrite ``changes`` files, each with
    generation ``round_no + 1``. Returns the bytes written."""
    rng = random.Random(f"{seed}:remote-age:{round_no}")
    paths = many_paths("remote-age", files)
    picked = sorted(paths[i] for i in rng.sample(range(files), min(changes, files)))
    return rewrite(root, picked, seed, round_no + 1)


def one_file(workload: str) -> tuple[str, int]:
    """The file of a chunking workload (append, insert, checkpoint) and its size."""
    if workload == "checkpoint":
        return CKPT_FILE, CKPT_TENSORS * CKPT_TENSOR
    if workload in ("append", "insert"):
        return BIG_FILE, BIG_SIZE
    raise ValueError(f"{workload!r} is not a chunking workload")


def generate_one(workload: str, root: Path, seed: int = DEFAULT_SEED) -> TreeInfo:
    """Write the one large file of the append, insert or checkpoint workload (BLAKE3
    output like every other file, written 8 MiB at a time: ~1 s per GiB here)."""
    rel, size = one_file(workload)
    root.mkdir(parents=True, exist_ok=True)
    _write_large(root / rel, seed, rel, 0, size)
    return TreeInfo(files=1, bytes=size)


def read_part_paths() -> list[str]:
    """Relative paths of the read workload's Parquet files."""
    return [f"{READ_PARTS}/part-{i:02d}.parquet" for i in range(READ_PART_COUNT)]


def read_aggregate_path(root: Path) -> Path:
    """Where ``generate_read`` writes the expected aggregate of the tree at ``root``."""
    return root.with_name(root.name + "-aggregate.json")


def generate_parquet(root: Path, seed: int = DEFAULT_SEED) -> dict[int, int]:
    """Write the read workload's Parquet files under ``root`` and return the expected
    ``groupby(key).value.sum()`` (exact: int64 values, summed as int64)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sums = np.zeros(READ_KEYS, dtype=np.int64)
    for i, rel in enumerate(read_part_paths()):
        rng = np.random.default_rng([seed, i])
        keys = rng.integers(0, READ_KEYS, READ_PART_ROWS, dtype=np.int64)
        values = rng.integers(0, READ_VALUE_MAX, READ_PART_ROWS, dtype=np.int64)
        np.add.at(sums, keys, values)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"key": keys, "value": values}), root / rel,
                       compression="snappy")
    return {k: int(v) for k, v in enumerate(sums) if v}


def generate_read(root: Path, seed: int = DEFAULT_SEED) -> TreeInfo:
    """Write the read workload (see the module docstring) and its expected aggregate."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    _write_large(root / BIG_FILE, seed, BIG_FILE, 0, BIG_SIZE)  # append's big.bin
    generate_small(root / READ_SMALL, seed)
    aggregate = generate_parquet(root, seed)
    read_aggregate_path(root).write_text(json.dumps({str(k): v for k, v in aggregate.items()}))
    return tree_info(root)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            raise OSError(f"unexpected end of file at offset {offset}")
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def insert_bytes(path: Path, offset: int, data: bytes) -> None:
    """Insert ``data`` into the file at ``offset``: the bytes from ``offset`` on move
    ``len(data)`` further, shifted 8 MiB at a time from the end (bounded memory)."""
    fd = os.open(path, os.O_RDWR)
    try:
        end = os.fstat(fd).st_size
        if not 0 <= offset <= end:
            raise ValueError(f"offset {offset} outside {path} ({end} bytes)")
        while end > offset:
            start = max(offset, end - LARGE_PIECE)
            _pwrite_all(fd, _pread_all(fd, end - start, start), start + len(data))
            end = start
        _pwrite_all(fd, data, offset)
    finally:
        os.close(fd)


def append_mutation(root: Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """append: 1 MiB of new bytes (generation 1) at the end of ``big.bin``."""
    path = root / BIG_FILE
    with open(path, "ab", buffering=0) as f:
        f.write(_content(seed, BIG_FILE, 1, EDIT_SIZE))
    return {"appended_bytes": EDIT_SIZE, "size": path.stat().st_size}


def insert_mutation(root: Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """insert: 1 MiB of new bytes (generation 1) inserted at offset 512 MiB of
    ``big.bin``; the file grows by 1 MiB and its second half moves by 1 MiB."""
    path = root / BIG_FILE
    insert_bytes(path, INSERT_AT, _content(seed, BIG_FILE, 1, EDIT_SIZE))
    return {"inserted_bytes": EDIT_SIZE, "offset": INSERT_AT, "size": path.stat().st_size}


def checkpoint_tensors(seed: int, round_no: int) -> list[int]:
    """The tensors (0-based indices) round ``round_no`` (0-based) rewrites, sorted."""
    rng = random.Random(f"{seed}:checkpoint:{round_no}")
    return sorted(rng.sample(range(CKPT_TENSORS), CKPT_CHANGES))


def checkpoint_round(root: Path, seed: int, round_no: int) -> dict[str, int]:
    """Round ``round_no`` (0-based) of checkpoint: rewrite 4 of the 64 tensors of
    ``model.ckpt`` in place with new bytes (generation ``round_no + 1``); the file keeps
    its size. Returns the bytes written."""
    fd = os.open(root / CKPT_FILE, os.O_WRONLY)
    try:
        for t in checkpoint_tensors(seed, round_no):
            data = _content(seed, f"{CKPT_FILE}:tensor{t}", round_no + 1, CKPT_TENSOR)
            _pwrite_all(fd, data, t * CKPT_TENSOR)
    finally:
        os.close(fd)
    return {"rewritten": CKPT_CHANGES, "rewritten_bytes": CKPT_CHANGES * CKPT_TENSOR}


def generate(
    workload: str, root: Path, seed: int = DEFAULT_SEED, params: Params | None = None
) -> TreeInfo:
    """Generate the named workload into ``root``."""
    params = params or Params()
    if workload == "small":
        return generate_small(root, seed)
    if workload == "large":
        return generate_large(root, seed)
    if workload in CHUNK_WORKLOADS:
        return generate_one(workload, root, seed)
    if workload == "read":
        return generate_read(root, seed)
    if workload in WORKLOADS:
        return generate_many(workload, root, params.count(workload), seed)
    raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")


def mutate(
    workload: str, root: Path, seed: int = DEFAULT_SEED, params: Params | None = None
) -> dict[str, int]:
    """Apply the workload's mutation to a generated tree in place; return counts of what
    changed (``rewritten`` files and ``rewritten_bytes`` among them). For remote-age the
    mutation is every round, one after the other: the content after the last push; for
    checkpoint, its 10 rounds likewise."""
    params = params or Params()
    if workload == "read":
        return {}  # read only: nothing changes
    if workload in ("small", "large"):
        return apply_mutation(root, seed)
    if workload == "append":
        return append_mutation(root, seed)
    if workload == "insert":
        return insert_mutation(root, seed)
    if workload == "checkpoint":
        written = sum(checkpoint_round(root, seed, r)["rewritten_bytes"]
                      for r in range(CKPT_ROUNDS))
        return {"rounds": CKPT_ROUNDS, "rewritten_bytes": written}
    files = params.count(workload)
    if workload == "remote-age":
        written = sum(age_round(root, seed, files, r, params.changes) for r in range(params.rounds))
        return {"rounds": params.rounds, "rewritten_bytes": written}
    rels = mutated_paths(workload, files, seed)
    return {"rewritten": len(rels), "rewritten_bytes": rewrite(root, rels, seed, 1)}


def apply_mutation(root: Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Mutate a generated tree in place; return counts of what changed.

    Deterministic: the same tree and seed always yield the same bytes. Rewritten files
    keep their size (a status that trusted size alone would miss them).
    """
    rng = random.Random(seed ^ 0x5EED)
    counts = {"rewritten": 0, "added": 0, "appended_bytes": 0}

    present_small = [rel for rel in small_paths() if (root / rel).is_file()]
    if present_small:
        for rel in sorted(rng.sample(present_small, min(MUT_REWRITE, len(present_small)))):
            size = (root / rel).stat().st_size
            _write(root / rel, _content(seed, rel, 1, size))
            counts["rewritten"] += 1
        for i in range(MUT_ADD):
            rel = f"d{rng.randrange(SMALL_DIRS):03d}/new{i:03d}.bin"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _write(root / rel, _content(seed, rel, 1, rng.randint(SMALL_MIN, SMALL_MAX)))
            counts["added"] += 1

    present_large = [rel for rel in large_paths() if (root / rel).is_file()]
    if present_large:
        rel = present_large[rng.randrange(len(present_large))]
        start = (root / rel).stat().st_size
        _write_large(root / rel, seed, rel, 0, MUT_APPEND, start=start)
        counts["appended_bytes"] += MUT_APPEND
    return counts


def tree_info(root: Path) -> TreeInfo:
    """Count files and bytes under ``root`` (ignoring nothing)."""
    files = 0
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return TreeInfo(files=files, bytes=total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=[*WORKLOADS, "mutate"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--workload", default="small", help="whose mutation (with mutate)")
    parser.add_argument("--files", type=int, default=0, help="files of scale/flat/remote-age")
    parser.add_argument("--rounds", type=int, default=AGE_ROUNDS, help="remote-age rounds")
    parser.add_argument("--changes", type=int, default=AGE_CHANGES, help="files per round")
    args = parser.parse_args(argv)
    params = Params(args.files, args.rounds, args.changes)
    if args.what == "mutate":
        print(mutate(args.workload, args.dir, args.seed, params))
    else:
        info = generate(args.what, args.dir, args.seed, params)
        print(f"{args.what}: {info.files} files, {info.bytes} bytes in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
