"""`dsv remote maintain`: repacking a remote's small packs, so that what a first fetch
reads grows with the content, not with the number of pushes.

Owns choosing the small packs (every push adds up to three, one per object kind), reading
each whole and checking every object against its id, writing their objects into packs of
about UPLOAD_PACK_SIZE (one kind per pack, as a push does), and only then deleting the
old ones (each index before its pack), all under the remote's maintenance lease (one
maintainer at a time). Readers and pushers take no lock: every object a maintainer
deletes it has first uploaded again itself, so an object on the remote stays on the
remote; a reader that finds a pack gone refreshes its picture and reads the object from
its new pack (download.download_packed).
Must never move a ref, and never upload an object that does not hash to its id.
"""

from __future__ import annotations

import json
import os
import time

from ..core import Core
from ..errors import CorruptObject
from ..hashing import hash_bytes
from ..objects import KIND_BLOB, KIND_TREE, KIND_VERSION, encode_pack, pack_tail_size, \
    parse_pack_index
from ..jsonio import load_bounded
from ..remotes.base import MAX_GET_BYTES, NotFound, RemoteError, RemoteRefused
from ..remotes.layout import MAINTAIN_LOCK, index_key, pack_key
from ..reports import MaintainReport
from .remote import UPLOAD_PACK_SIZE, Remote, Sent, record_sent

SMALL_PACK = UPLOAD_PACK_SIZE // 2
"""A remote pack smaller than this is repacked with the others."""

AUTO_MAINTAIN_PACKS = 24
"""A push that finds at least this many small packs on the remote repacks them."""


def small_packs(core: Core, remote: Remote) -> list[str]:
    """The remote's small packs worth repacking, as the store last saw them: those of
    each object kind that has more than one (one small pack of a kind would only be
    written again as itself)."""
    kinds = core.index.remote_pack_kinds(remote.name)
    small = [p for p, size in core.index.remote_packs(remote.name).items() if size < SMALL_PACK]
    count: dict[int, int] = {}
    for pack in small:
        for kind in kinds.get(pack, ()):
            count[kind] = count.get(kind, 0) + 1
    return sorted(p for p in small if any(count[k] > 1 for k in kinds.get(p, ())))


LEASE_SECONDS = 3600.0
"""How long a maintainer's lease lasts; a run checks it still holds it before deleting."""


def maintain(core: Core, remote: Remote, refresh: bool = True,
             wait: bool = True) -> MaintainReport:
    """Repack the remote's small packs into few large ones, holding the remote's
    maintenance lease (RemoteError if another maintainer holds it; with `wait` False, an
    empty report instead)."""
    report = MaintainReport(remote.name)
    if refresh:
        remote.connect()
        remote.refresh()
    report.packs_before = report.packs_after = len(core.index.remote_packs(remote.name))
    if len(small_packs(core, remote)) < 2:
        return report
    lease = _Lease(remote)
    if not lease.take():
        if wait:
            raise RemoteError(f"another client is maintaining {remote.name} (its lease "
                              f"{MAINTAIN_LOCK} holds until {lease.holder_until})",
                              hint="run it again later")
        report.skipped.append(f"another client is maintaining {remote.name}")
        return report
    try:
        remote.refresh()  # what the remote holds now that no other maintainer changes it
        _repack(core, remote, report, lease)
    finally:
        lease.give_back()
    return report


class _Lease:
    """The remote's maintenance lease: `maintain.lock`, created only if absent (S3
    If-None-Match; a directory remote's ref lock), or taken over by compare-and-swap
    once expired. Two maintainers at once could otherwise each delete the pack the other
    just wrote (pack ids depend on content only)."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.owner = os.urandom(8).hex()
        self.holder_until = ""

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "until": time.time() + LEASE_SECONDS},
                          sort_keys=True).encode()

    def take(self) -> bool:
        backend = self.remote.backend
        current = backend.read_ref(MAINTAIN_LOCK)
        if current is not None:
            until = _until(current[0])
            if until > time.time():
                self.holder_until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
                return False
        return backend.write_ref(MAINTAIN_LOCK, self._body(),
                                 current[1] if current else None) is not None

    def held(self) -> bool:
        current = self.remote.backend.read_ref(MAINTAIN_LOCK)
        return current is not None and _owner(current[0]) == self.owner and \
            _until(current[0]) > time.time() + 60

    def give_back(self) -> None:
        current = self.remote.backend.read_ref(MAINTAIN_LOCK)
        if current is not None and _owner(current[0]) == self.owner:
            self.remote.backend.delete(MAINTAIN_LOCK)


def _lease_field(data: bytes, name: str) -> object:
    try:
        body = load_bounded(data, 4096)
        return body.get(name) if isinstance(body, dict) else None
    except ValueError:
        return None


def _until(data: bytes) -> float:
    value = _lease_field(data, "until")
    return float(value) if isinstance(value, (int, float)) else 0.0  # unreadable: expired


def _owner(data: bytes) -> str | None:
    value = _lease_field(data, "owner")
    return value if isinstance(value, str) else None


def _repack(core: Core, remote: Remote, report: MaintainReport, lease: _Lease) -> None:
    small = small_packs(core, remote)
    if len(small) < 2:
        return
    by_kind: dict[int, list[tuple[str, int, bytes]]] = {KIND_BLOB: [], KIND_TREE: [],
                                                        KIND_VERSION: []}
    done: list[str] = []
    seen: set[str] = set()
    with core.reporter.task("reading small packs", len(small),
                            sum(core.index.remote_packs(remote.name)[p] for p in small)
                            ) as advance:
        for pack_id in small:
            objects = _read_pack(remote, pack_id, report)
            if objects is None:
                continue
            for oid, kind, data in objects:
                if oid not in seen and kind in by_kind:
                    seen.add(oid)
                    by_kind[kind].append((oid, kind, data))
            done.append(pack_id)
            advance(1, sum(len(d) for _o, _k, d in objects))
            if sum(len(d) for items in by_kind.values() for _o, _k, d in items) \
                    >= 4 * UPLOAD_PACK_SIZE:
                _flush(core, remote, by_kind, report, final=False)
    # Blobs, then trees, then version records: the publish order of a push.
    _flush(core, remote, by_kind, report, final=True)
    if not lease.held():
        report.skipped.append(f"the lease on {remote.name} ran out before the old packs "
                              f"were deleted: they stay (the next run merges them)")
        done = []
    for pack_id in done:
        # Every object of these is in a pack uploaded above. The index first: an index on
        # the remote always names a whole pack. (A pack written again as itself, the same
        # objects in the same order, has the same name: it stays.)
        if pack_id in report.written:
            continue
        remote.backend.delete(index_key(pack_id))
        remote.backend.delete(pack_key(pack_id))
        report.packs_repacked += 1
    remote.refresh()
    report.packs_after = len(core.index.remote_packs(remote.name))


def _read_pack(remote: Remote, pack_id: str, report: MaintainReport
               ) -> list[tuple[str, int, bytes]] | None:
    """A small pack's objects, each checked; None (the pack is left alone, and said so)
    when it is gone, unreadable or damaged: `dsv verify --remote --repair` is for that."""
    try:
        data = remote.backend.get(pack_key(pack_id), max_size=min(SMALL_PACK, MAX_GET_BYTES))
        count = int.from_bytes(data[-24:-16], "big") if len(data) >= 24 else -1
        if count < 0 or pack_tail_size(count) > len(data):
            raise CorruptObject(f"pack {pack_id[:12]} is cut short")
        entries, total = parse_pack_index(data[len(data) - pack_tail_size(count):], pack_id)
        if total != len(data):
            raise CorruptObject(f"pack {pack_id[:12]} is {len(data)} bytes; its table "
                                f"says {total}")
    except NotFound:
        return None  # repacked by another client meanwhile
    except (CorruptObject, RemoteRefused) as exc:
        report.skipped.append(f"pack {pack_id[:12]}: {exc.message}")
        return None
    out = []
    for e in entries:
        piece = data[e.offset:e.offset + e.length]
        if hash_bytes(piece) != e.oid:
            report.skipped.append(f"pack {pack_id[:12]}: object {e.oid[:12]} is corrupt "
                                  f"(run `dsv verify --remote {remote.name} --repair`)")
            return None
        out.append((e.oid, e.kind, piece))
    return out


def _flush(core: Core, remote: Remote, by_kind: dict[int, list[tuple[str, int, bytes]]],
           report: MaintainReport, final: bool) -> None:
    """Upload what was gathered, in packs of about UPLOAD_PACK_SIZE (all of it when
    `final`, else only full packs), one kind at a time."""
    sent: list[Sent] = []
    for kind in (KIND_BLOB, KIND_TREE, KIND_VERSION):
        items, start = by_kind[kind], 0
        while start < len(items):
            end, size = start, 0
            while end < len(items) and (end == start or
                                        size + len(items[end][2]) <= UPLOAD_PACK_SIZE):
                size += len(items[end][2])
                end += 1
            if not final and end == len(items) and size < UPLOAD_PACK_SIZE:
                break  # not a full pack yet: wait for more
            pack_id, data, entries = encode_pack(items[start:end])
            remote.backend.put_bytes(pack_key(pack_id), data)
            remote.backend.put_bytes(index_key(pack_id),
                                     data[len(data) - pack_tail_size(len(entries)):])
            sent.append(Sent(len(entries), len(data), (pack_id, len(data), entries)))
            report.written.append(pack_id)
            report.packs_written += 1
            report.objects_moved += len(entries)
            report.bytes_moved += len(data)
            start = end
        del items[:start]
    record_sent(core, remote, sent)
