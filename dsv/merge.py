"""Merging two lines of a dataset's history: `dsv merge REF`.

Owns the merge base (the nearest common ancestor of the working directory's head and REF),
the three-way merge by path (pure: `three_way`), and running a merge: nothing to do, a
fast-forward (a checkout), or a version with two parents (head first), committed and then
checked out into the working directory. A conflict commits nothing and lists every path;
`ours`/`theirs` settle all of them one way. Must never touch a working directory that has
uncommitted changes.
"""

from __future__ import annotations

import os
import time

from . import checkout, refs, tree, versions
from .core import Core
from .errors import DirtyWorktree, HistoryConflict, InvalidInput, MergeConflict
from .model import COMMITTED, Entry, Manifest, Version
from .reports import MergeReport
from .objects import Ingest
from .paths import ancestors
from .reporting import plural

OURS = "ours"
THEIRS = "theirs"


def three_way(base: Manifest, ours: Manifest, theirs: Manifest
              ) -> tuple[Manifest, dict[str, tuple[Entry | None, Entry | None]]]:
    """The merged manifest and the conflicts (path → (ours, theirs); None: deleted).

    A path changed on one side only takes that side (a deletion included); changed the
    same way on both sides, that change; changed differently on the two sides, or changed
    on one and deleted on the other, is a conflict and is left out of the merged manifest.
    A file on one side where the other has a directory (a file under that path) is a
    conflict of both paths.
    """
    merged: Manifest = {}
    conflicts: dict[str, tuple[Entry | None, Entry | None]] = {}
    for path in base.keys() | ours.keys() | theirs.keys():
        b, o, t = base.get(path), ours.get(path), theirs.get(path)
        if o == t or t == b:
            take = o
        elif o == b:
            take = t
        else:
            conflicts[path] = (o, t)
            continue
        if take is not None:
            merged[path] = take
    # A path that is a file in the result and also a directory above another file: it and
    # everything under it (a file may be under several such paths: each is taken once).
    clashing = ancestors(merged.keys()) & merged.keys()
    if clashing:
        for path in [p for p in merged if p in clashing or ancestors([p]) & clashing]:
            conflicts[path] = (ours.get(path), theirs.get(path))
            del merged[path]
    return merged, conflicts


def merge_base(core: Core, ours: Version, theirs: Version) -> Version | None:
    """The nearest common ancestor of two versions (of the several that are equally near,
    the newest), or None when their histories never meet."""
    theirs_line = {v.id for v in refs.ancestry(core.index, [theirs])}
    common = [v for v in refs.ancestry(core.index, [ours]) if v.id in theirs_line]
    if not common:
        return None
    below = {a.id for v in common for a in refs.ancestry(core.index, [v]) if a.id != v.id}
    nearest = [v for v in common if v.id not in below]
    return max(nearest, key=lambda v: (v.committed or v.created, v.id))


def merge(core: Core, ref: str, message: str | None = None, resolve: str | None = None,
          key: str | None = None, cwd: str | os.PathLike[str] = ".") -> MergeReport:
    """Merge the version `ref` names into the working directory of its dataset.

    The directory must be clean. If `ref` is already in the head's history there is
    nothing to do; if the head is in `ref`'s history the directory moves forward to it
    (a fast-forward, no new version); otherwise the three-way merge of the two over
    their merge base is committed as a version with parents (head, ref) and checked out.
    MergeConflict (nothing committed) lists the conflicts, unless `resolve` (`ours` or
    `theirs`) settles them.
    """
    if resolve not in (None, OURS, THEIRS):
        raise InvalidInput(f"a merge resolves conflicts as ours or theirs, not {resolve!r}")
    with core.locked("merge"):
        theirs = core.resolve(ref, cwd)
        ds = core.dataset(key) if key else core.index.dataset_by("id", theirs.dataset)
        assert ds is not None
        if theirs.dataset != ds.id:
            raise InvalidInput(f"{ref} is a version of another dataset than {ds.name}",
                               hint="a merge joins two lines of one dataset's history")
        if theirs.state != COMMITTED:
            raise InvalidInput(f"{theirs.id} is a draft; only committed versions are merged",
                               hint=f"commit it first: `dsv versions commit {theirs.id}`")
        ours = core.head(ds)
        if ours is None:
            raise InvalidInput(f"{ds.name}'s working directory is not checked out",
                               hint=f"check out a version first: `dsv checkout {ds.name}:latest`")
        status = checkout.status(core, ds.id)
        if status.missing or not status.changes.clean:
            raise DirtyWorktree(f"{ds.name}'s working directory has uncommitted changes",
                                hint="commit them first (a merge never touches them)")
        report = MergeReport(dataset=ds.name, ours=ours.id, theirs=theirs.id)
        if refs.is_ancestor(core.index, theirs.id, ours):
            report.outcome = "up to date"
            return report
        if refs.is_ancestor(core.index, ours.id, theirs):
            report.outcome = "fast-forward"
            _move_to(core, ds.id, theirs)
            report.version = theirs.id
            return report
        base = merge_base(core, ours, theirs)
        report.base = base.id if base else None
        sides = _changed_part(core, base.tree if base else tree.empty_tree()[0], ours, theirs)
        merged, conflicts = three_way(*sides)
        report.conflicts = sorted(conflicts)
        if conflicts and resolve is None:
            raise MergeConflict(
                f"merging {theirs.id} into {ds.name} ({ours.id}): "
                f"{plural(len(conflicts), 'conflicting path')}: "
                + ", ".join(report.conflicts[:5])
                + (" …" if len(conflicts) > 5 else ""),
                hint="nothing was committed; merge again with --ours or --theirs to keep "
                     "one side of every conflict", report=report)
        side = 0 if resolve == OURS else 1
        for path, pair in conflicts.items():
            chosen = pair[side]
            if chosen is not None:
                merged[path] = chosen
        merged = _without_file_dir_clashes(merged)
        latest = ds.latest
        if latest is not None and not (refs.is_ancestor(core.index, latest, ours) or
                                       refs.is_ancestor(core.index, latest, theirs)):
            raise HistoryConflict(
                f"neither {ds.name}'s head {ours.id} nor {theirs.id} holds latest {latest} in "
                f"its history: the merge would leave it out",
                hint=f"merge {ds.name}:latest first (`dsv merge {ds.name}:latest`), then {ref}")
        changes = {p: merged.get(p) for p in merged.keys() | sides[1].keys()
                   if merged.get(p) != sides[1].get(p)}
        checkout.ensure_blobs(core, theirs, [e for e in changes.values() if e is not None])
        v = _commit_merge(core, ds.id, ours, sides[1], changes, [ours.id, theirs.id],
                          message or f"merge {ref} into {ds.name}")
        _move_to(core, ds.id, v)
        report.outcome = "merged"
        report.version = v.id
        report.resolved = resolve
        return report


def _without_file_dir_clashes(manifest: Manifest) -> Manifest:
    """After conflicts were settled one way, a path may again be both a file and a
    directory: the file above wins (what the chosen side has)."""
    above = ancestors(manifest.keys()) & manifest.keys()
    return {p: e for p, e in manifest.items()
            if not any(p.startswith(a + "/") for a in above)}


def _changed_part(core: Core, base: str, ours: Version, theirs: Version
                  ) -> tuple[Manifest, Manifest, Manifest]:
    """The parts of the base's, our and their manifests at the paths either line changed
    (`tree.diff_trees`: only the directories whose ids differ are read): all `three_way`
    must see to merge the whole. Every other path is the same on the three sides and
    stays as our tree has it; and a file that is a directory above another file in the
    merge is at a changed path, as is that other file (were either the same on all three
    sides, one side would hold both). Memory grows with what the lines changed, not with
    the dataset."""
    changed = {p for p, _old, _new in tree.diff_trees(base, ours.tree, core.read_tree)}
    changed.update(p for p, _old, _new in tree.diff_trees(base, theirs.tree, core.read_tree))
    parts = [{path: Entry(*row[1:])
              for path, row in tree.find_many(root, core.read_tree, changed).items()
              if row[1] != tree.DIR}
             for root in (base, ours.tree, theirs.tree)]
    return parts[0], parts[1], parts[2]


def _commit_merge(core: Core, ds_id: str, ours: Version, ours_there: Manifest,
                  changes: dict[str, Entry | None], parents: list[str], message: str
                  ) -> Version:
    """Commit our tree with `changes` (path → the merged entry, None: removed; what
    our tree holds at each of those paths is in `ours_there`)."""
    with Ingest(core.objects) as ingest:
        root_tree, size = tree.update_tree(ours.tree, ours.size, changes, core.read_tree,
                                           core.tree_writer(ingest))
        added = sum(1 for p, e in changes.items() if e is not None and p not in ours_there)
        removed = sum(1 for e in changes.values() if e is None)
        now = time.time()
        v = Version(id=core.new_version_id(), dataset=ds_id, state=COMMITTED, tree=root_tree,
                    parents=parents, message=message, author=versions.default_author(),
                    created=now, committed=now, size=size, files=ours.files + added - removed)
        return versions.write_committed(core, ingest, v)


def _move_to(core: Core, ds_id: str, v: Version) -> None:
    """Check `v` out into the dataset's directory; it becomes latest when latest is in its
    history (a merge or fast-forward of latest itself)."""
    checkout.checkout(core, f"{ds_id}:{v.id}")
    ds = core.index.dataset_by("id", ds_id)
    assert ds is not None
    if ds.latest != v.id and (ds.latest is None or refs.is_ancestor(core.index, ds.latest, v)):
        with core.index.transaction():
            core.refs.set_latest(ds_id, v.id)
