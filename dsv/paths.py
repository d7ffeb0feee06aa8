"""Path safety: the rules every path from a manifest, a remote or the user must pass.

Owns validation of dataset-relative paths and symlink targets, the reserved store name
(`.dsv`: nothing from outside may name it or point into it), resolving a version's
symlinks through each other, and the permission bits dsv will place. Pure functions;
must never touch the filesystem.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Callable, Collection, Iterable

from .errors import UnsafePath

STORE_DIR = ".dsv"  # the store's directory name, at a workspace root
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_LINK_HOPS = 40   # as Linux's own limit on symlinks followed in one lookup


# dsv's own temp files (fileio.tmp_name): `.dsv-tmp-` and 16 hex digits, exactly.
_TEMP_NAME = re.compile(r"\.dsv-tmp-[0-9a-f]{16}")


def module_argv(module: str) -> list[str]:
    """The command that runs `python -m module` in a child process with the current
    directory left off `sys.path`: a child started in a dataset's directory (a pulled one
    may hold a `dsv/` package) must import dsv's own modules, never the dataset's."""
    return [sys.executable, "-c", "import runpy, sys; del sys.path[0]; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"]


def is_reserved(name: str) -> bool:
    """Whether a path component names a store (case-folded: some filesystems fold case)."""
    return name.casefold() == STORE_DIR


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of dsv's temp files (a crash leftover when found)."""
    return _TEMP_NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    """One path component: non-empty, not `.`/`..`, no `/` or NUL, valid UTF-8, not too long."""
    if not name or name in (".", ".."):
        raise UnsafePath(f"invalid file name {name!r}")
    if "/" in name or "\0" in name:
        raise UnsafePath(f"file name {name!r} contains '/' or NUL")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        try:  # (the bytes of a name read from disk; JSON may spell a surrogate no byte makes)
            shown = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "backslashreplace")
        raise UnsafePath(f"file name {shown!r} is not valid UTF-8",
                         hint="rename the file; dsv stores names as UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise UnsafePath(f"file name {name[:40]}… is longer than {MAX_NAME_BYTES} bytes")
    if is_reserved(name):
        raise UnsafePath(f"{name!r} is reserved for dsv's store and cannot be part of a dataset",
                         hint="rename it; nothing from a version, remote or import may "
                              "create a store")
    if is_temp_name(name):
        raise UnsafePath(f"{name!r} is reserved for dsv's temp files",
                         hint="rename it")
    return name


# A component of plain ASCII (letters, digits, `_+,=@~-`, and dots after the first
# character) that no rule of `check_name` can refuse: not empty, `.`, `..`, a store or a
# temp name (each starts with a dot), no `/` or NUL, and 255 bytes at most. Most paths
# are made of such components only, and are checked by one match.
_PLAIN_NAME = r"[A-Za-z0-9_+,=@~-][A-Za-z0-9_.+,=@~-]{0,%d}" % (MAX_NAME_BYTES - 1)
_PLAIN_PATH = re.compile(f"{_PLAIN_NAME}(?:/{_PLAIN_NAME})*")


def check_relpath(path: str) -> str:
    """A dataset-relative POSIX path that cannot leave the dataset; returns it unchanged."""
    if len(path) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(path):  # (ASCII: a byte a char)
        return path
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


def is_dataset_dir(path: str) -> bool:
    """Whether `path` may be a dataset's directory as stored (index, state file, a remote
    ref): `.` or a relative path that cannot leave the workspace nor name a store."""
    if path == ".":
        return True
    try:
        check_relpath(path)
    except UnsafePath:
        return False
    return True


def normalize_user_path(path: str) -> str:
    """A path typed by a user (`./a//b/`) as a clean relative path (`a/b`); '' for the root."""
    cleaned = posixpath.normpath(path.replace("\\", "/")) if path else "."
    if cleaned == ".":
        return ""
    return check_relpath(cleaned)


def check_symlink_target(link_path: str, target: str) -> str:
    """A symlink stored at `link_path` may only point inside the dataset, by a relative
    path, and never into a store. (Lexical: `check_links` also resolves a version's links
    through each other.)"""
    if not target or "\0" in target:
        raise UnsafePath(f"symlink {link_path!r} has an empty or NUL-bearing target")
    if target.startswith("/"):
        raise UnsafePath(f"symlink {link_path!r} points to an absolute path ({target})")
    if len(target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafePath(f"symlink {link_path!r} has a target longer than {MAX_PATH_BYTES} bytes")
    if any(is_reserved(part) for part in target.split("/")):
        raise UnsafePath(f"symlink {link_path!r} points into a store ({target})")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafePath(f"symlink {link_path!r} points outside the dataset ({target})")
    return target


def check_links(links: dict[str, str], fences: Iterable[str] = ()) -> None:
    """Refuse a version whose symlinks (path → target) escape when resolved through each
    other, as the kernel would resolve them once they are all placed: `d/l -> .` and
    `s -> d/l/../..` each pass the lexical check, yet `s` resolves above the dataset.
    A link whose resolution passes through a store, or loops, is refused too, and so is
    one that enters a `fences` directory (a nested dataset: its links are not this
    version's, and change with it)."""
    fenced = {f for f in fences if f}
    for path, target in links.items():
        check_symlink_target(path, target)
        resolve_link(path, links.get, fenced)


def resolve_link(path: str, link_of: Callable[[str], str | None],
                 fences: Collection[str] = ()) -> str:
    """Where the symlink at `path` leads (a path from the dataset root): its target walked
    component by component, each link met on the way (`link_of(path)`: its target, None
    for anything else) substituted as the kernel would; the position may never climb
    above the dataset root. UnsafePath if it escapes, enters a store, or loops."""
    hops = 0
    base: list[str] = path.split("/")[:-1]       # the directory holding the link
    first = link_of(path)
    if first is None:
        raise UnsafePath(f"{path!r} is not a symlink")
    pending = first.split("/")
    fenced_at = None    # the nested dataset the walk entered: its links are not ours
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if fenced_at is not None:
                raise UnsafePath(f"symlink {path!r} climbs back out of a nested dataset or "
                                 f"store ({fenced_at}), where its links are unknown")
            if not base:
                raise UnsafePath(f"symlink {path!r} resolves outside the dataset "
                                 f"(through the version's other links)")
            base.pop()
            continue
        if is_reserved(part):
            raise UnsafePath(f"symlink {path!r} resolves into a store")
        here = "/".join(base + [part])
        if fenced_at is not None or (fences and is_under(here, fences)):
            # Pointing into a nested dataset is fine; past its door, only plain names.
            fenced_at = fenced_at or here
            base.append(part)
            continue
        inner = link_of(here)
        if inner is None:
            base.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            raise UnsafePath(f"symlink {path!r} loops or is nested too deeply")
        # Like the kernel: the link's target replaces it, relative to its directory.
        pending = inner.split("/") + pending
        if inner.startswith("/"):
            raise UnsafePath(f"symlink {here!r} points to an absolute path")
    return "/".join(base)


def mode_class(mode: int) -> int:
    """The only permission distinction a version keeps, as git does: executable by its
    owner (0o755) or not (0o644). Never setuid, setgid or sticky; no private or
    group-writable bits (those belong to the machine: its umask decides them)."""
    return 0o755 if mode & 0o100 else 0o644


def placed_mode(mode: int, umask: int) -> int:
    """The permission bits dsv gives a placed file: 0o777 or 0o666 by `mode_class`,
    less the umask (modes from outside never set anything else)."""
    return (0o777 if mode & 0o100 else 0o666) & ~umask


def is_under(path: str, prefixes: Iterable[str]) -> bool:
    """Whether `path` is one of `prefixes` or lies beneath one (`""` is not a prefix).
    Pass a set when testing many paths: each test then costs O(depth), not O(prefixes)."""
    wanted = prefixes if isinstance(prefixes, (set, frozenset)) else set(prefixes)
    if not wanted:
        return False
    if path in wanted:
        return True
    cut = path.find("/")
    while cut != -1:
        if path[:cut] in wanted:
            return True
        cut = path.find("/", cut + 1)
    return False


def ancestors(paths: Iterable[str]) -> set[str]:
    """Every proper ancestor directory of `paths` (`a/b/c` gives `a` and `a/b`)."""
    out: set[str] = set()
    for path in paths:
        cut = path.rfind("/")
        while cut != -1:
            parent = path[:cut]
            if parent in out:
                break
            out.add(parent)
            cut = path.rfind("/", 0, cut)
    return out


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_valid_name(name: str) -> bool:
    """Whether `name` may name a dataset, a tag or a remote (also ids: the same grammar)."""
    return NAME_RE.fullmatch(name) is not None and ".." not in name
