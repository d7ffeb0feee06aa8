"""`.dsvignore` files: which paths of a dataset's directory are not part of it.

Owns reading them (gitignore syntax, through pathspec's GitIgnoreSpec; one file per
directory at most, its patterns relative to that directory) and deciding, for a path,
whether the rules of the directories above it leave it out: the deepest file that has a
matching pattern decides, and within one file the last matching pattern (so `!keep.tmp`
re-includes). A directory left out is not entered, so nothing under it can be included
again (as git). Must never follow a link: a `.dsvignore` that is not a regular file is an
error, as is one larger than MAX_IGNORE_BYTES or not UTF-8.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import fileio
from .errors import InvalidInput

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

IGNORE_FILE = ".dsvignore"
MAX_IGNORE_BYTES = 1 << 20

Rules = tuple[tuple[str, "GitIgnoreSpec"], ...]
"""The `.dsvignore` files that apply in a directory: (their directory's prefix, e.g.
`sub/`, and their patterns), shallowest first."""


def load(rules: Rules, rel_dir: str, abs_dir: str) -> Rules:
    """`rules` with the `.dsvignore` of the directory `abs_dir` (dataset-relative
    `rel_dir`) added after them (call only when the directory has one)."""
    from pathspec import GitIgnoreSpec  # imported only where a .dsvignore exists

    path = os.path.join(abs_dir, IGNORE_FILE)
    shown = f"{rel_dir}/{IGNORE_FILE}" if rel_dir else IGNORE_FILE
    try:
        data = fileio.read_regular(path, MAX_IGNORE_BYTES)
    except fileio.NotRegularFile as exc:
        raise InvalidInput(f"{shown}: {exc.strerror}",
                           hint="a .dsvignore must be a regular file, never a link") from None
    except fileio.FileTooLarge:
        raise InvalidInput(f"{shown} is larger than {MAX_IGNORE_BYTES} bytes",
                           hint="a .dsvignore holds patterns, not data") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{shown} is not valid UTF-8 (at byte {exc.start})") from None
    spec = GitIgnoreSpec.from_lines(text.splitlines())
    return (*rules, (rel_dir + "/" if rel_dir else "", spec))


def ignored(rules: Rules, rel: str, is_dir: bool) -> bool:
    """Whether the dataset-relative path `rel` is left out by `rules`."""
    for prefix, spec in reversed(rules):
        if not rel.startswith(prefix):
            continue
        result = spec.check_file(rel[len(prefix):] + ("/" if is_dir else ""))
        if result.include is not None:
            return bool(result.include)
    return False
