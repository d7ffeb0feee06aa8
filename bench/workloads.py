"""Deterministic benchmark workloads for dsv (SPEC §5).

Three generators, all driven by a fixed seed so that every run, every tool and every
machine sees byte-identical inputs:

* ``small``    -- 20,000 files of 1-16 KiB in 100 directories ``d000`` .. ``d099``
  (200 files each, ``f000.bin`` .. ``f199.bin``).
* ``large``    -- 8 files of 128 MiB at the top level (``f0.bin`` .. ``f7.bin``).
* ``mutation`` -- applied in place to a generated tree: 200 existing small files
  rewritten with new content (same size, so only mtime/content reveal the change),
  100 new small files added, and 1 MiB appended to one large file. Each part applies
  only when the tree has files of that kind.

File contents are the BLAKE3 extendable output of a key made of the seed, the file's
relative path and a generation number. That is pseudo-random (incompressible, no two
1 MiB blocks alike, nothing for content-defined chunking to deduplicate), independent
of generation order, and fast (~1.5 GB/s on one core). The structural choices (sizes,
which files are mutated) come from ``random.Random(seed)``.

Command line (for inspection; ``bench/run.py`` imports this module)::

    python bench/workloads.py small DIR [--seed N]
    python bench/workloads.py large DIR
    python bench/workloads.py mutate DIR
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

WORKLOADS = ("small", "large")


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


def generate(workload: str, root: Path, seed: int = DEFAULT_SEED) -> TreeInfo:
    """Generate the named workload (``small`` or ``large``) into ``root``."""
    if workload == "small":
        return generate_small(root, seed)
    if workload == "large":
        return generate_large(root, seed)
    raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")


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
    args = parser.parse_args(argv)
    if args.what == "mutate":
        print(apply_mutation(args.dir, args.seed))
    else:
        info = generate(args.what, args.dir, args.seed)
        print(f"{args.what}: {info.files} files, {info.bytes} bytes in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
