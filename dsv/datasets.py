"""Datasets: create, rename, bind to a directory, forget.

Owns the rules for dataset names (valid, not taken as a name or an id) and working
directories (inside the workspace, one dataset each). Must never touch versions or
objects beyond forgetting a dataset's rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import monitor, refs
from .core import Core
from .errors import DatasetExists, InvalidInput
from .model import Dataset


def dataset_name_for(directory: Path) -> str:
    """A valid dataset name from a directory's basename (`My Data!` → `My-Data`)."""
    raw = directory.resolve().name
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in raw)
    cleaned = cleaned.strip("-._")[:128]
    return cleaned if cleaned and refs.is_valid_name(cleaned) else "data"


def _check_new_name(core: Core, name: str) -> None:
    """A dataset name must be valid, and must not be taken as a name or an id (an
    id is accepted wherever a name is, so the other dataset would become unreachable)."""
    if not refs.is_valid_name(name) or name == refs.LATEST:
        raise InvalidInput(f"invalid dataset name {name!r}",
                           hint="use letters, digits, '.', '_' and '-' (max 128)")
    if core.index.dataset_by("name", name) is not None:
        raise DatasetExists(f"a dataset named {name!r} already exists")
    if core.index.dataset_by("id", name) is not None:
        raise DatasetExists(f"{name!r} is the id of another dataset",
                            hint="choose another name")


def create_dataset(core: Core, name: str, path: str | os.PathLike[str] | None = None,
                   description: str | None = None) -> Dataset:
    """A new dataset, bound to `path` (created if missing) when one is given."""
    with core.locked("datasets create"):
        _check_new_name(core, name)
        rel = core.workspace_path(path) if path is not None else None
        if rel is not None:
            other = core.index.dataset_by("path", rel)
            if other is not None:
                raise DatasetExists(f"{rel} is already the directory of dataset {other.name!r}")
            (core.root / rel).mkdir(parents=True, exist_ok=True)
        ds = Dataset(id=core.new_dataset_id(), name=name, path=rel, description=description,
                     created=time.time())
        with core.index.transaction():
            core.index.insert_dataset(ds)
        return ds


def update_dataset(core: Core, key: str, name: str | None = None, description: str | None = None,
                   path: str | os.PathLike[str] | None = None) -> Dataset:
    """Rename a dataset, change its description, or bind it to a working directory;
    returns it as it is now."""
    with core.locked("datasets update"):
        ds = core.dataset(key)
        fields: dict[str, Any] = {}
        if name is not None and name != ds.name:
            if name != ds.id:
                _check_new_name(core, name)
            fields["name"] = name
        if description is not None:
            fields["description"] = description
        if path is not None:
            rel = core.workspace_path(path)
            other = core.index.dataset_by("path", rel)
            if other is not None and other.id != ds.id:
                raise DatasetExists(f"{rel} is already the directory of dataset {other.name!r}")
            fields["path"] = rel
            if ds.head is None and ds.latest:
                # A newly bound directory is compared with the newest version.
                fields["head"] = ds.latest
            where = core.root / rel
            if ds.latest is None:
                where.mkdir(parents=True, exist_ok=True)  # ready for a first commit
            elif not where.is_dir():
                # Not created empty: a commit of an empty directory would delete every file.
                core.reporter.notice(f"{where} does not exist yet: `dsv checkout "
                                     f"{fields.get('name', ds.name)}:latest` fills it")
        if fields:
            if "path" in fields:  # (a monitor of the old directory tells nothing of it)
                monitor.stop(core.dsv_dir, ds.id)
            with core.index.transaction():
                core.index.update_dataset(ds.id, **fields)
                if "path" in fields:
                    core.index.clear_stat_cache(ds.id)
        updated = core.index.dataset_by("id", ds.id)
        assert updated is not None
        return updated


def delete_dataset(core: Core, key: str) -> Dataset:
    """Forget a dataset and its versions (its files on disk are left alone)."""
    with core.locked("datasets delete"):
        ds = core.dataset(key)
        monitor.stop(core.dsv_dir, ds.id)
        core.index.delete_dataset(ds.id)
        return ds
