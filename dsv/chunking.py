"""Content-defined chunking of large files: where a file's chunks begin and end.

Owns the chunker's parameters and the one pass that reads a file, cuts it into chunks
(FastCDC with normalized chunking, pyfastcdc's C implementation) and hashes both each
chunk and the whole file. A cut depends only on the bytes since the previous cut, so an
edit moves the cuts of the chunks it touches and the ones after it resynchronise within
a chunk or two: an append, an insert or a rewritten tensor costs the chunks it touched,
not the file. Must never decide where chunks are stored (objects.py) or how a chunk list
is written (tree.py).
"""

from __future__ import annotations

import array
import itertools
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from pyfastcdc.cy import FastCDC
from pyfastcdc.py.constants import GEAR, MASKS

from . import native
from .hashing import hash_bytes, new_hasher

CHUNK_THRESHOLD = 4 << 20
"""Files of this many bytes or more are stored in chunks (smaller ones whole: packed
below objects.PACK_THRESHOLD, loose above it). 4 MiB is 32 average chunks: an edit of
such a file already stores about a sixteenth of it, and the files people edit in place
(checkpoints, Parquet, databases) are far larger. See docs/format.md, "Chunked files"."""

AVG_CHUNK = 128 << 10
MIN_CHUNK = 64 << 10
MAX_CHUNK = 512 << 10
"""FastCDC's sizes. Chosen by measurement (docs/format.md): on ten checkpoints of 64
tensors of 8 MiB with 4 rewritten per step, 128 KiB average chunks store at most 35.0 MB
a step (1 MiB ones, restic's size: 45.5 MB), and a minimum of half the average cuts at
3.7 GB/s here (a quarter: 1.7 GB/s) for the same dedup."""

MAX_CHUNKED_SIZE = 128 << 30
"""Larger files are stored whole (loose): cut at MIN_CHUNK everywhere (content can force
that), a file of 215 GiB would need a chunk list over tree.MAX_TREE_BYTES."""

_BLOCK = 4 << 20
"""Bytes read at a time. Measured here on the large workload (8 files of 128 MiB, warm):
chunk_fd took 0.58-0.59 s with 16 MiB blocks, 0.48-0.54 s with 8 MiB and 0.49-0.52 s
with 4 MiB, and a cold commit 1.16-1.35 s / 1.09-1.17 s / 1.02-1.09 s with peak RSS
118 / 93 / 81 MB: a block that stays in the CPU's caches from its read to its cutting
and hashing is worth more than fewer calls."""


def chunker() -> FastCDC:
    """A FastCDC cutter with dsv's parameters."""
    return FastCDC(avg_size=AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK,
                   normalized_chunking=1)


_GEAR = array.array("Q", GEAR).tobytes()
_BITS = AVG_CHUNK.bit_length() - 1
_MASK_S, _MASK_L = MASKS[_BITS + 1], MASKS[_BITS - 1]
"""pyfastcdc's gear table and the masks of its normalized chunking (level 1) at
AVG_CHUNK, for the C cutter (native.cut_chunks), which cuts where pyfastcdc does."""


def cut_lengths(data: memoryview) -> list[int]:
    """The lengths of the chunks `data` is cut into, in order (the last one ends with
    `data`, whatever its content). In C where dsv was built with it: the same cuts as
    pyfastcdc's, made without the GIL (the hashing threads of `chunk_fd` run beside
    it); 4.4 GB/s here on 4 MiB blocks of random bytes, as fast as pyfastcdc's
    (docs/format.md)."""
    if native.cut_chunks is not None:
        lengths: list[int] = native.cut_chunks(data, _GEAR, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK,
                                               _MASK_S, _MASK_L)
        return lengths
    return [cut.length for cut in chunker().cut_buf(data)]


Take = Callable[[list[tuple[str, memoryview]]], None]
"""Given the chunks of a block, in order: [(chunk id, bytes)]."""


def chunk_fd(fd: int, take: Take) -> tuple[str, int, list[tuple[str, int]]]:
    """Read `fd` from where it stands to its end, cut what it holds into chunks and give
    them to `take`, a block's worth at a time, in order, in this thread: (blake3 of all
    the bytes read, their number, each chunk's (id, length)). The ids name exactly the
    bytes read, even if the file changes meanwhile. `take` must copy what it keeps
    before it returns: the buffers are reused (three, allocated once: a fresh buffer per
    block cost more in page faults than the hashing).

    Each block is cut from the start of the last chunk of the block before (that chunk
    ended only because the block did), so the cuts are those of one pass over the file.
    Three kinds of work overlap, each without the GIL for most of its time: this thread
    reads and cuts block k (FastCDC in C), a worker hashes block k into the whole-file
    hash, another hashes block k's chunks, while `take` stores block k-1's.
    """
    block = min(_BLOCK, max(os.fstat(fd).st_size, 1 << 20))
    ring = _take_ring(block + MAX_CHUNK)
    done = _chunk_into(fd, take, block, ring)
    if len(_RINGS) < 2:   # (not after a failure: a worker may still read the ring)
        _RINGS.append(ring)
    return done


def _chunk_into(fd: int, take: Take, block: int,
                ring: list[memoryview]) -> tuple[str, int, list[tuple[str, int]]]:
    """`chunk_fd` through a ring of three buffers: block k is read into ring[k % 3], after
    the chunk it carries over from block k-1. By then nothing refers to block k-3 any
    more (its hashing is done, and `take` copied what it kept)."""
    whole = new_hasher(threads=True)
    chunks: list[tuple[str, int]] = []
    carry = memoryview(b"")
    size = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        whole_job: Future[object] | None = None
        hashed: deque[Future[list[tuple[str, memoryview]]]] = deque()
        for k in itertools.count():
            view = ring[k % 3]
            view[:len(carry)] = carry
            got = os.readv(fd, [view[len(carry):len(carry) + block]])
            if got:
                if whole_job is not None:
                    whole_job.result()   # (one update at a time, in file order)
                whole_job = pool.submit(whole.update, view[len(carry):len(carry) + got])
                size += got
            end = len(carry) + got
            view = view[:end]
            pieces: list[memoryview] = []
            start = 0
            for length in cut_lengths(view) if end else ():
                if got and start + length == end:
                    break   # cut by the block's end, not by the content: cut again with more
                pieces.append(view[start:start + length])
                start += length
            hashed.append(pool.submit(_hash_all, pieces))
            while len(hashed) > (1 if got else 0):
                done = hashed.popleft().result()
                take(done)
                chunks.extend((oid, len(data)) for oid, data in done)
            carry = view[start:]
            if not got:
                break
        if whole_job is not None:
            whole_job.result()
    return whole.hexdigest(), size, chunks


_RINGS: list[list[memoryview]] = []
"""Rings of buffers of finished calls (a process chunking many files zeroes and faults
in its buffers once). list.pop and list.append are atomic: threads may share them."""


def _take_ring(size: int) -> list[memoryview]:
    while _RINGS:
        try:
            ring = _RINGS.pop()
        except IndexError:
            break
        if len(ring[0]) >= size:
            return ring
    return [memoryview(bytearray(size)) for _ in range(3)]


def _hash_all(pieces: list[memoryview]) -> list[tuple[str, memoryview]]:
    return [(hash_bytes(piece), piece) for piece in pieces]
