"""What every remote can do, and the settings that name one.

Owns the `Backend` protocol (a flat key space of immutable files plus a few small
mutable refs changed only by compare-and-swap), `RemoteSpec` (a remote's settings as
stored in the index: never a secret) and the parsers for `--ttl` / `--max-size`; and what
every backend refuses to read (the caps, `check_key`, `open_dirs`), since a remote is
written by others and is never trusted. Must never touch the store: remotes know nothing
of the index or of versions.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import fileio
from ..errors import InvalidInput
from ..errors import RemoteError as RemoteError  # re-exported: backends raise it

# What a backend reads into memory at most (docs/format.md, "What a reader refuses"): a
# remote's sizes are claims, checked before a byte is read and again while reading.
MAX_REF_BYTES = 64 << 10        # a ref (`read_ref`); refs are ~200-byte JSON
MAX_GET_BYTES = 256 << 20       # a whole small file (`get`: pack index, a whole pack for
                                # the cache, dsv-remote.json) or one `get_range`


class NotFound(RemoteError):
    """A key the remote does not hold."""


class RemoteRefused(RemoteError):
    """Something on a remote that dsv will not read or write (see the subclasses)."""


class TooLarge(RemoteRefused):
    """A remote file (or range) larger than the cap for what it is."""


class NotRegular(RemoteRefused):
    """A remote key that is a FIFO, device, socket, directory or symlink, or that is
    reached through a symlinked directory."""


class BadKey(RemoteRefused):
    """A key that is not a plain relative path (empty component, `.`, `..`, NUL, leading
    `/`): keys come from listings, and a listing may be hostile."""


class CorruptDownload(RemoteError):
    """Bytes that failed the transport's own checksum (S3 `x-amz-checksum-*`)."""


@dataclass
class RemoteSpec:
    """A remote as configured with `dsv remote add` (the `remotes` table)."""

    name: str
    url: str
    kind: str = "origin"             # "origin" | "cache"
    endpoint_url: str | None = None
    profile: str | None = None
    ttl: float | None = None         # cache: seconds an unused entry is kept
    max_size: int | None = None      # cache: byte budget (least recently used go first)
    write_through: bool = False      # cache: push copies what it uploads here too
    is_default: bool = False

    @property
    def is_s3(self) -> bool:
        """Whether the remote is an S3 bucket (else a directory)."""
        return self.url.startswith("s3://")

    def to_json(self) -> dict[str, Any]:
        """The fields a script sees (`--json`)."""
        return {"name": self.name, "url": self.url, "kind": self.kind,
                "endpoint_url": self.endpoint_url, "profile": self.profile, "ttl": self.ttl,
                "max_size": self.max_size, "write_through": self.write_through,
                "default": self.is_default}


Progress = Callable[[int], None]
"""Called with the bytes of each piece of one transfer as it is sent (not a running
total). S3 calls it from its worker threads, and with a negative count when a part is
rewound to be sent again; the pieces of a transfer that succeeds add up to its size."""


class Backend(Protocol):
    """A remote's storage: keys are `/`-separated paths under the remote's root."""

    url: str

    def check_reachable(self) -> None:
        """Fail fast, with one clear line, when the remote cannot be reached at all."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every file under `prefix`."""

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """A whole (small) file; NotFound if absent, TooLarge above `max_size` (default
        MAX_GET_BYTES), checked before the body is read."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes at `start` (exactly; a short read, or a range past the end, is an
        error; so is `length` above MAX_GET_BYTES)."""

    def get_range_into(self, key: str, start: int, into: memoryview) -> None:
        """`get_range` of `len(into)` bytes, written into `into` (a buffer the caller
        reuses: S3 reads the answer straight into it, where a new 8 MiB buffer for every
        range cost a page fault per 4 KiB received)."""

    def download(self, key: str) -> Iterator[bytes]:
        """A large file's bytes, in pieces."""

    def head(self, key: str) -> int | None:
        """The size of `key`, or None if the remote lacks it (or holds something that is
        not a regular file there, which an upload then replaces)."""

    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        """Store an immutable file (visible only once whole; rewriting it is harmless)."""

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        """Store an immutable file from disk (multipart where that helps); `progress`
        hears its bytes piece by piece as they are sent (never per byte)."""

    def read_ref(self, key: str) -> tuple[bytes, str] | None:
        """A ref's bytes and its version tag (for compare-and-swap), or None. TooLarge
        above MAX_REF_BYTES; NotRegular for a FIFO, symlink, … (never a hang)."""

    def write_ref(self, key: str, data: bytes, expect: str | None) -> str | None:
        """Compare-and-swap: write `data` only if the ref's tag is still `expect` (None:
        only if it does not exist). Returns the new tag, or None when the ref changed."""

    def delete(self, key: str) -> None:
        """Remove a file (`verify --remote --repair`, `gc --remote`); a missing key is fine."""

    def remove_stale_uploads(self, older_than: float) -> tuple[int, int]:
        """Remove what interrupted uploads left that nothing has written to for
        `older_than` seconds (a directory remote's temp files in `tmp/`); returns how
        many, and their bytes. An upload still being written is never that old."""


STALE_UPLOAD_AGE = 24 * 3600.0
"""A directory remote's temp file nothing has written to for this long is the leftover of
a killed upload (a live one is written to every few seconds, and renamed once whole):
`remote maintain` and `gc --remote` remove it. A day: clocks of the file server and the
clients may disagree by minutes, and a pusher stopped for a day fails with a clear error
rather than publish anything."""


def check_range(where: str, start: int, length: int, cap: int) -> None:
    """Refuse a ranged read no backend may serve: a negative start or length (RemoteError)
    or more than `cap` bytes at once (TooLarge: a pack index claiming a huge object)."""
    if start < 0 or length < 0:
        raise RemoteError(f"{where}: asked for {length} bytes at {start}")
    if length > cap:
        raise TooLarge(f"{where}: refusing to read {length} bytes at once (at most {cap})",
                       hint="the remote's pack index claims an object larger than any "
                            "dsv packs")


def check_key(key: str) -> list[str]:
    """The `/`-separated components of a remote key; BadKey unless it is a plain relative
    path (every key dsv writes is one; anything else came from a hostile listing)."""
    parts = key.split("/")
    if "\0" in key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BadKey(f"refusing remote key {key!r}: not a plain relative path")
    return parts


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dirs(root: str, parts: Sequence[str], create: bool = False,
              replace_bad: bool = False) -> int:
    """An fd of the directory ROOT/PARTS…, every step below ROOT opened without following
    a link (ROOT itself is the configured location and may be one), so no read or write
    through it can leave ROOT. The caller closes it.

    A missing step: FileNotFoundError, or made with `create`. A step that is a symlink:
    fileio.NotRegularFile (ELOOP); a file or FIFO: NotADirectoryError; with `replace_bad`
    (a cache, where everything may be dropped) such a step is removed and made afresh."""
    if create:
        os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            for _attempt in range(4):  # bounded: a racing filler or prune may change a step
                try:
                    step = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    break
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                except NotADirectoryError:
                    try:
                        mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(mode):
                        continue  # became a directory meanwhile
                    if not (create and replace_bad):
                        if stat.S_ISLNK(mode):
                            raise fileio.NotRegularFile(errno.ELOOP, "a symlink where a "
                                                        "directory belongs", part) from None
                        raise
                    try:
                        os.unlink(part, dir_fd=fd)
                    except FileNotFoundError:
                        pass
            else:
                raise OSError(errno.EAGAIN, "the directory kept changing", part)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)?", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, `2w` (a bare number is seconds) → seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise InvalidInput(f"not a duration: {text!r}", hint="write e.g. 30m, 12h or 7d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    return float(m.group(1)) * unit


def parse_size(text: str) -> int:
    """`500G`, `20GiB`, `1.5T`, `4096` (bytes) → bytes (powers of 1024)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise InvalidInput(f"not a size: {text!r}", hint="write e.g. 500M, 20G or 1T")
    power = " KMGTP".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1024 ** power))


def check_outside_stores(url: str) -> None:
    """A directory remote or cache may never lie in a store (gc would delete its packs,
    a push would write into objects/): checked when it is added and whenever it is
    opened, with links resolved (the path may have been swapped for one since)."""
    if url.startswith("s3://"):
        return
    for path in (url, os.path.realpath(url)):
        if any(part.casefold() == ".dsv" for part in path.split("/")):
            raise InvalidInput(f"{url} is inside a store ('.dsv' is reserved for dsv)",
                               hint="put the remote in a directory of its own")

