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

import os
from collections.abc import Callable

from pyfastcdc.cy import FastCDC

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
a step (restic's 1 MiB chunks: up to 46.7 MB), and a minimum of half the average cuts at
3.7 GB/s here (a quarter: 1.7 GB/s) for the same dedup."""

MAX_CHUNKED_SIZE = 256 << 30
"""Larger files are stored whole: their chunk list would pass tree.MAX_LIST_CHUNKS."""

_BLOCK = 16 << 20   # bytes read at a time


def chunker() -> FastCDC:
    """A FastCDC cutter with dsv's parameters."""
    return FastCDC(avg_size=AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK,
                   normalized_chunking=1)


def chunk_fd(fd: int, take: Callable[[str, memoryview], None]
             ) -> tuple[str, int, list[tuple[str, int]]]:
    """Read `fd` from where it stands to its end, cut what it holds into chunks and give
    each to `take(chunk id, bytes)`, in order: (blake3 of all the bytes read, their
    number, each chunk's (id, length)). The ids name exactly the bytes read, even if the
    file changes meanwhile. `take` may keep the memoryview: each block is a new buffer.

    Each block is cut from the start of the last chunk of the block before (that chunk
    ended only because the block did), so the cuts are those of one pass over the file.
    """
    cdc = chunker()
    whole = new_hasher(threads=True)
    chunks: list[tuple[str, int]] = []
    carry = memoryview(b"")
    size = 0
    while True:
        buf = bytearray(len(carry) + _BLOCK)
        buf[:len(carry)] = carry
        view = memoryview(buf)
        got = os.readv(fd, [view[len(carry):]])
        if got:
            whole.update(view[len(carry):len(carry) + got])
            size += got
        end = len(carry) + got
        if not end:
            break
        view = view[:end]
        start = 0
        for cut in cdc.cut_buf(view):
            if got and cut.offset + cut.length == end:
                break   # cut by the block's end, not by the content: cut again with more
            data = view[cut.offset:cut.offset + cut.length]
            oid = hash_bytes(data)
            take(oid, data)
            chunks.append((oid, cut.length))
            start = cut.offset + cut.length
        carry = view[start:]
        if not got:
            break
    return whole.hexdigest(), size, chunks
