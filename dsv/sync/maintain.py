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
import math
import os
import threading
import time

from ..core import Core
from ..errors import CorruptObject, DsvError
from ..hashing import hash_bytes
from ..objects import KIND_BLOB, KIND_TREE, KIND_VERSION, encode_pack, pack_tail_size, \
    parse_whole_pack
from ..jsonio import load_bounded
from ..remotes.base import MAX_GET_BYTES, STALE_UPLOAD_AGE, NotFound, RemoteError, \
    RemoteRefused
from ..remotes import layout
from ..remotes.layout import LOCKS, MAINTAIN_LOCK, catalog_key, index_key, pack_key, \
    push_lock_key
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


LEASE_SECONDS = 600.0
"""How long a maintainer's lease lasts unless renewed: a thread renews it every minute
while the run lasts, and the run renews it again before each batch of deletes, so a
killed maintainer blocks others (and a killed gc, pushes) for ten minutes at most."""
DELETE_BATCH = 256
"""Deletes between two renewals of the maintenance lease."""


def maintain(core: Core, remote: Remote, refresh: bool = True,
             wait: bool = True) -> MaintainReport:
    """Repack the remote's small packs into few large ones, holding the remote's
    maintenance lease (RemoteError if another maintainer holds it; with `wait` False, an
    empty report instead)."""
    report = MaintainReport(remote.name)
    remote.scope = None  # a maintainer looks at every pack
    if refresh:
        remote.connect()
        remote.refresh()
    if wait:  # (`dsv remote maintain`, not a push's repack: that one is the push's own)
        report.stale_uploads_removed, report.stale_upload_bytes = \
            remote.backend.remove_stale_uploads(STALE_UPLOAD_AGE)
    report.packs_before = report.packs_after = len(core.index.remote_packs(remote.name))
    if len(small_packs(core, remote)) < 2:
        return report
    lease = Lease(remote)
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


class Lease:
    """The remote's maintenance lease: `maintain.lock`, created only if absent (S3
    If-None-Match; a directory remote's ref lock), or taken over by compare-and-swap
    once expired. Two maintainers at once could otherwise each delete the pack the other
    just wrote (pack ids depend on content only). A remote gc's lease says so (`"gc":
    true`): pushes wait for it to end."""

    def __init__(self, remote: Remote, gc: bool = False) -> None:
        self.remote = remote
        self.gc = gc
        self.owner = os.urandom(8).hex()
        self.holder_until = ""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        body: dict[str, object] = {"owner": self.owner, "until": time.time() + LEASE_SECONDS}
        if self.gc:
            body["gc"] = True
        return json.dumps(body, sort_keys=True).encode()

    def take(self) -> bool:
        """Take the lease if nobody holds it (or the holder's ran out); False if held."""
        backend = self.remote.backend
        current = _read_lease(self.remote)
        if current is not None:
            until = _until(current[0], LEASE_SECONDS)
            if until > time.time():
                self.holder_until = when(until)
                return False
        if backend.write_ref(MAINTAIN_LOCK, self._body(),
                             current[1] if current else None) is None:
            return False
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name="dsv-maintain-lease")
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(60):
            try:
                if not self.renew():
                    return  # lost: `held` and `renew` say so where it matters
            except Exception:  # noqa: BLE001 - a failed renewal is a lease that may lapse
                pass

    def held(self) -> bool:
        """Whether this holder still holds the lease, for at least another minute."""
        current = _read_lease(self.remote)
        return current is not None and _owner(current[0]) == self.owner and \
            _until(current[0], LEASE_SECONDS) > time.time() + 60

    def renew(self) -> bool:
        """Extend the lease to a full LEASE_SECONDS from now, if this holder still holds
        it (compare-and-swap); False if it was lost. A holder renews before each batch of
        deletes, so a batch never runs past the lease."""
        current = _read_lease(self.remote)
        if current is None or _owner(current[0]) != self.owner or \
                _until(current[0], LEASE_SECONDS) <= time.time() + 60:
            return False
        return self.remote.backend.write_ref(MAINTAIN_LOCK, self._body(), current[1]) \
            is not None

    def give_back(self) -> None:
        """Stop renewing, and remove the lease if this holder still holds it."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            current = _read_lease(self.remote)
        except RemoteError:
            return
        if current is not None and _owner(current[0]) == self.owner:
            self.remote.backend.delete(MAINTAIN_LOCK)


def _read_lease(remote: Remote) -> tuple[bytes, str] | None:
    """`maintain.lock` as it is, or None; one that cannot be read (a FIFO, a huge file)
    is an error that names it."""
    try:
        return remote.backend.read_ref(MAINTAIN_LOCK)
    except RemoteRefused as exc:
        raise RemoteError(f"{MAINTAIN_LOCK} on {remote.name} cannot be read: {exc.message}",
                          hint=f"remove {MAINTAIN_LOCK} from the remote by hand") from None


def gc_lease_until(remote: Remote) -> float | None:
    """Until when a remote gc holds the remote's maintenance lease, or None (also when
    the lease cannot be read: no gc can take it then either)."""
    return maintenance_until(remote, gc_only=True)


def maintenance_until(remote: Remote, gc_only: bool = False) -> float | None:
    """Until when another client (a gc, with `gc_only`) holds the remote's maintenance
    lease, or None (also when the lease cannot be read: nobody can take it then)."""
    try:
        current = remote.backend.read_ref(MAINTAIN_LOCK)
    except RemoteRefused:
        return None
    if current is None or (gc_only and _lease_field(current[0], "gc") is not True):
        return None
    until = _until(current[0], LEASE_SECONDS)
    return until if until > time.time() else None


def when(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A lease's expiry as local time ('?' for one no clock can show)."""
    try:
        return time.strftime(fmt, time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "?"


def _lease_field(data: bytes, name: str) -> object:
    try:
        body = load_bounded(data, 4096)
        return body.get(name) if isinstance(body, dict) else None
    except ValueError:
        return None


def _until(data: bytes, longest: float) -> float:
    """A lease's expiry; 0 (expired) when unreadable, not a finite number, or further
    off than twice the longest lease (no dsv writes one: it would block others for ever)."""
    value = _lease_field(data, "until")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or \
            not math.isfinite(value) or value > time.time() + 2 * longest:
        return 0.0
    return float(value)


def _owner(data: bytes) -> str | None:
    value = _lease_field(data, "owner")
    return value if isinstance(value, str) else None


# ---- a push's lease ---------------------------------------------------------------------

PUSH_LEASE = 900.0
"""How long a push's lease (`locks/<owner>`) lasts unless renewed; a running push renews
it every PUSH_LEASE / 6 seconds."""
PUSH_MARGIN = 120.0
"""A push moves refs only while its lease holds at least this much longer."""
GC_WAIT = 900.0
"""How long a push waits for a remote gc to end before giving up."""
_POLL = 1.0


class PushLock:
    """A push's lease on the remote: written before the push looks at what the remote
    holds, renewed while it runs, removed when it ends. A remote gc deletes nothing while
    a live one exists, and a push waits while a gc holds the maintenance lease: each
    writes its own lease first and looks for the other's second, so of a push and a gc
    that start together at least one sees the other. A push whose lease lapsed (the
    process was stopped, the network went) may have been overtaken by a gc: `unbroken`
    says so, and the push looks at the remote afresh before it moves a ref."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.owner = os.urandom(8).hex()
        self.key = push_lock_key(self.owner)
        self.until = 0.0
        self.lapsed = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def take(self) -> None:
        """Write the lease, waiting (at most GC_WAIT) while a remote gc runs."""
        deadline = time.monotonic() + GC_WAIT
        told = False
        while True:
            self._write()
            until = gc_lease_until(self.remote)
            if until is None:
                break
            self.remote.backend.delete(self.key)
            if time.monotonic() > deadline:
                raise RemoteError(f"a remote gc of {self.remote.name} is still running "
                                  f"(its lease holds until {when(until)}); nothing was "
                                  f"pushed", hint="push again when it is done")
            if not told:
                self.remote.core.reporter.notice(
                    f"waiting for the remote gc of {self.remote.name} to end (its lease "
                    f"holds until {when(until)})")
                told = True
            time.sleep(_POLL)
        self.lapsed = False
        if self._renewer is None:
            self._renewer = threading.Thread(target=self._renew, daemon=True,
                                             name="dsv-push-lease")
            self._renewer.start()

    def _write(self) -> None:
        before = time.time()
        until = before + PUSH_LEASE
        body = json.dumps({"owner": self.owner, "until": until}, sort_keys=True).encode()
        self.remote.backend.put_bytes(self.key, body)
        # Judged when the write is done: a write that hung past the old expiry leaves a gap
        # in which a gc may have run.
        if self.until and time.time() > self.until:
            self.lapsed = True
        self.until = until

    def _renew(self) -> None:
        while not self._stop.wait(PUSH_LEASE / 6):
            try:
                if not self._intact():
                    self.lapsed = True
                self._write()
            except Exception:  # noqa: BLE001 - any failure: the lease may have lapsed
                self.lapsed = True  # (`unbroken` then says so before any ref moves)

    def _intact(self) -> bool:
        """Whether the remote still holds this lease, unexpired (a gc removes only an
        expired one: one whose holder was stopped, or whose clock disagrees)."""
        try:
            current = self.remote.backend.get(self.key, max_size=4096)
        except NotFound:
            return False
        return _owner(current) == self.owner and _until(current, PUSH_LEASE) > time.time()

    def unbroken(self, look: bool = False) -> bool:
        """Whether the lease has held without a gap since `take`, and holds for at least
        PUSH_MARGIN more seconds: then no remote gc can have run meanwhile, nor can one
        start before the next ref is written. With `look`, the remote's copy is read
        too."""
        if self.lapsed or time.time() > self.until - PUSH_MARGIN:
            return False
        return not look or self._intact()

    def release(self) -> None:
        """Stop renewing and remove the lease (best effort: an expired lease is harmless)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.remote.backend.delete(self.key)
        except DsvError:
            pass


def live_push_locks(remote: Remote, remove_expired: bool) -> tuple[list[float], int]:
    """Until when each live push lease on the remote holds, and how many expired ones
    (pushes that were killed) there are; those are removed if asked, and so are unreadable
    ones (dsv writes none)."""
    live, expired = [], 0
    for key, _size in remote.backend.list(LOCKS):
        try:
            data = remote.backend.get(key, max_size=4096)
        except NotFound:
            continue
        except RemoteRefused:
            data = b""
        until = _until(data, PUSH_LEASE)
        if until > time.time():
            live.append(until)
            continue
        expired += 1
        if remove_expired:
            remote.backend.delete(key)
    return live, expired


def _repack(core: Core, remote: Remote, report: MaintainReport, lease: Lease) -> None:
    small = small_packs(core, remote)
    if len(small) < 2:
        return
    owners = catalog_owners(remote)
    if remote.format >= layout.CATALOG_FORMAT:
        # A pack no catalog names (a push's, before it names them; or a killed push's)
        # stays as it is: merged into a named pack, it would seem named.
        small = [p for p in small if p in owners]
        if len(small) < 2:
            return
    gathered = Gathered()
    done: list[str] = []
    with core.reporter.task("reading small packs", len(small),
                            sum(core.index.remote_packs(remote.name)[p] for p in small)
                            ) as advance:
        for pack_id in small:
            objects = read_pack(remote, pack_id, report.skipped)
            if objects is None:
                continue
            for oid, kind, data in objects:
                gathered.add(oid, kind, data, pack_id)
            done.append(pack_id)
            advance(1, sum(len(d) for _o, _k, d in objects))
            if gathered.nbytes >= 4 * UPLOAD_PACK_SIZE:
                _flush(core, remote, gathered, report, final=False)
    # Blobs, then trees, then version records: the publish order of a push.
    _flush(core, remote, gathered, report, final=True)
    # Listed again: a push may have named an old pack meanwhile.
    owners = catalog_owners(remote)
    gathered.name_in_catalogs(remote, owners)
    deleted: set[str] = set()
    for number, pack_id in enumerate(done):
        # Every object of these is in a pack uploaded above. The index first: an index on
        # the remote always names a whole pack. (A pack written again as itself, the same
        # objects in the same order, has the same name: it stays.)
        if pack_id in report.written:
            continue
        if number % DELETE_BATCH == 0 and not lease.renew():
            report.skipped.append(f"the lease on {remote.name} was lost before every old "
                                  f"pack was deleted: the rest stay (the next run merges "
                                  f"them)")
            break
        for ds_id in sorted(owners.get(pack_id, ())):
            remote.backend.delete(catalog_key(ds_id, pack_id))
        remote.backend.delete(index_key(pack_id))
        remote.backend.delete(pack_key(pack_id))
        report.packs_repacked += 1
        deleted.add(pack_id)
    _drop_multi_indexes(remote, deleted)
    remote.refresh()
    report.packs_after = len(core.index.remote_packs(remote.name))


def _drop_multi_indexes(remote: Remote, packs: set[str]) -> None:
    """Delete the multi-pack indexes named by `packs` (deleted just now): only a client
    lacking a pack's index reads the one named by it."""
    if not packs:
        return
    for key, _size in list(remote.backend.list(layout.MULTI_INDEX)):
        named = layout.multi_index_of_key(key)
        if named is not None and named[0] in packs:
            remote.backend.delete(key)


def read_pack(remote: Remote, pack_id: str, skipped: list[str], max_size: int = SMALL_PACK
              ) -> list[tuple[str, int, bytes]] | None:
    """A small pack's objects, each checked; None (the pack is left alone, and said so)
    when it is gone, unreadable or damaged: `dsv verify --remote --repair` is for that."""
    try:
        data = remote.backend.get(pack_key(pack_id), max_size=min(max_size, MAX_GET_BYTES))
        entries = parse_whole_pack(data, pack_id)
    except NotFound:
        return None  # repacked by another client meanwhile
    except (CorruptObject, RemoteRefused) as exc:
        skipped.append(f"pack {pack_id[:12]}: {exc.message}")
        return None
    out = []
    for e in entries:
        piece = data[e.offset:e.offset + e.length]
        if hash_bytes(piece) != e.oid:
            skipped.append(f"pack {pack_id[:12]}: object {e.oid[:12]} is corrupt "
                                  f"(run `dsv verify --remote {remote.name} --repair`)")
            return None
        out.append((e.oid, e.kind, piece))
    return out


def catalog_owners(remote: Remote) -> dict[str, set[str]]:
    """Which datasets' catalogs name each pack: pack id → dataset ids (one listing)."""
    owners: dict[str, set[str]] = {}
    for key, _size in remote.backend.list(layout.CATALOG):
        entry = layout.catalog_entry_of_key(key)
        if entry is not None:
            owners.setdefault(entry[1], set()).add(entry[0])
    return owners


class Gathered:
    """Checked objects bound for new remote packs, by kind (each id once), with a running
    count of their bytes, and where each came from: once uploaded, a new pack is named
    (`name_in_catalogs`) in the catalog of every dataset whose catalog names a pack any
    copy of one of its objects came from."""

    def __init__(self) -> None:
        self.by_kind: dict[int, list[tuple[str, int, bytes]]] = {
            KIND_BLOB: [], KIND_TREE: [], KIND_VERSION: []}
        self.ids: set[str] = set()
        self.sources: dict[str, list[str]] = {}   # oid → the packs its copies came from
        self.placed: dict[str, str] = {}          # oid → the new pack it went to
        self.nbytes = 0

    def add(self, oid: str, kind: int, data: bytes, pack_id: str) -> None:
        """Gather one object read from `pack_id` (a second copy of an id is only noted
        as such; an unknown kind is skipped)."""
        if kind not in self.by_kind:
            return
        self.sources.setdefault(oid, []).append(pack_id)
        if oid not in self.ids:
            self.ids.add(oid)
            self.by_kind[kind].append((oid, kind, data))
            self.nbytes += len(data)

    def name_in_catalogs(self, remote: Remote, owners: dict[str, set[str]]) -> None:
        """Name each new pack in the catalogs (`owners`: pack → datasets, listed after the
        uploads) that name a pack one of its objects came from: before those can go."""
        wanted: dict[str, set[str]] = {}
        for oid, new in self.placed.items():
            for source in self.sources.get(oid, ()):
                wanted.setdefault(new, set()).update(owners.get(source, ()))
        by_dataset: dict[str, list[str]] = {}
        for new, datasets in wanted.items():
            for ds_id in datasets - owners.get(new, set()):
                by_dataset.setdefault(ds_id, []).append(new)
        for ds_id, packs in sorted(by_dataset.items()):
            remote.add_to_catalog(ds_id, sorted(packs))

    def flush(self, core: Core, remote: Remote, final: bool) -> list[Sent]:
        """Upload what was gathered, in packs of about UPLOAD_PACK_SIZE (all of it when
        `final`, else only full packs), one kind at a time, blobs first; remember them as
        the remote's; what was uploaded is let go."""
        sent: list[Sent] = []
        for kind in (KIND_BLOB, KIND_TREE, KIND_VERSION):
            items, start = self.by_kind[kind], 0
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
                self.placed.update((e.oid, pack_id) for e in entries)
                sent.append(Sent(len(entries), len(data), (pack_id, len(data), entries)))
                self.nbytes -= size
                start = end
            del items[:start]
        record_sent(core, remote, sent)
        return sent


def _flush(core: Core, remote: Remote, gathered: Gathered, report: MaintainReport,
           final: bool) -> None:
    for item in gathered.flush(core, remote, final):
        assert item.pack is not None
        report.written.append(item.pack[0])
        report.packs_written += 1
        report.objects_moved += item.count
        report.bytes_moved += item.nbytes
