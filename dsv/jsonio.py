"""JSON read from outside: the one parser for refs, records, trees and markers.

Owns the bounds every JSON document from a remote, an import or a `.dsv/` file another
process may have touched must pass before use: a byte size and a nesting depth. Must
never import anything else from dsv.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MAX_DEPTH = 64   # dsv's own documents nest at most 6 deep (lineage inside a record)


def load_bounded(data: bytes | str, max_bytes: int,
                 max_depth: int | None = MAX_DEPTH) -> Any:  # noqa: ANN401 - JSON of any shape
    """Parse `data`, refusing (ValueError) more than `max_bytes` or `max_depth` levels.

    The depth is measured on the parsed value without recursion; a document nested
    deeper than the parser itself can go is refused the same way. A caller that checks
    the exact shape of every value it reads (trees) may skip the depth walk with
    `max_depth=None`.
    """
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if max_depth is None:
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise ValueError("nested too deeply")
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return value
