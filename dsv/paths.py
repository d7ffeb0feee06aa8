"""Path safety: the rules every path from a manifest, a remote or the user must pass.

Owns validation of dataset-relative paths and symlink targets. Pure functions; must
never touch the filesystem.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from .errors import UnsafePath

STORE_DIR = ".dsv"  # the store's directory name, at a workspace root
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def check_name(name: str) -> str:
    """One path component: non-empty, not `.`/`..`, no `/` or NUL, valid UTF-8, not too long."""
    if not name or name in (".", ".."):
        raise UnsafePath(f"invalid file name {name!r}")
    if "/" in name or "\0" in name:
        raise UnsafePath(f"file name {name!r} contains '/' or NUL")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePath(f"file name {name.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8",
                         hint="rename the file; dsv stores names as UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise UnsafePath(f"file name {name[:40]}… is longer than {MAX_NAME_BYTES} bytes")
    return name


def check_relpath(path: str) -> str:
    """A dataset-relative POSIX path that cannot leave the dataset; returns it unchanged."""
    if not path:
        raise UnsafePath("empty path")
    if "\0" in path:
        raise UnsafePath(f"path {path!r} contains NUL")
    if path.startswith("/"):
        raise UnsafePath(f"path {path!r} is absolute")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePath(f"path {path[:40]}… is longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part == "..":
            raise UnsafePath(f"path {path!r} climbs out with '..'")
        check_name(part)
    return path


def normalize_user_path(path: str) -> str:
    """A path typed by a user (`./a//b/`) as a clean relative path (`a/b`); '' for the root."""
    cleaned = posixpath.normpath(path.replace("\\", "/")) if path else "."
    if cleaned == ".":
        return ""
    return check_relpath(cleaned)


def check_symlink_target(link_path: str, target: str) -> str:
    """A symlink stored at `link_path` may only point inside the dataset, by a relative path."""
    if not target or "\0" in target:
        raise UnsafePath(f"symlink {link_path!r} has an empty or NUL-bearing target")
    if target.startswith("/"):
        raise UnsafePath(f"symlink {link_path!r} points to an absolute path ({target})")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafePath(f"symlink {link_path!r} points outside the dataset ({target})")
    return target


def is_under(path: str, prefixes: Iterable[str]) -> bool:
    """Whether `path` is one of `prefixes` or lies beneath one (`""` is not a prefix)."""
    return any(path == p or path.startswith(p + "/") for p in prefixes if p)
