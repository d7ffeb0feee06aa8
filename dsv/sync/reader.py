"""Reading a remote without a store: `dsv ls`, `dsv get`, `dsv cat` and `dsv://` files.

Owns resolving a ref against a remote's own refs (no index), reading version records and
tree objects through their locators (`loc/<oid>`: one request each, the cluster cache
first), reading file contents where the locators place them (ranged GETs, neighbours
coalesced, the cache first and filled with what was read), and the fallback when a
locator is missing (an older dsv pushed) or a place is stale (a maintainer repacked): the
dataset's catalog and pack indexes, read once. Every byte is checked against its id
before it is returned. Must never write to a remote or to a store.
"""

from __future__ import annotations

import io
import base64
import binascii
import itertools
import json
import os
import tempfile
import threading
import time
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO, NamedTuple

from .. import fileio, tree, worktree
from ..errors import (CannotWrite, CorruptObject, DsvError, InvalidInput, MissingObject,
                      RefError)
from ..fileio import pieces_at_most
from ..hashing import hash_bytes, is_hash, new_hasher
from ..jsonio import load_bounded
from ..model import COMMITTED, FileRow, Version
from ..objects import PACK_THRESHOLD
from ..paths import is_under, normalize_user_path
from ..records import Record, parse_record
from ..refs import LATEST, MIN_PREFIX, parse_ref
from ..remotes import layout
from ..remotes.base import (MAX_GET_BYTES, MAX_REF_BYTES, Backend, NotFound, RemoteError,
                            RemoteRefused, RemoteSpec, check_outside_stores)
from ..remotes.cache import ClusterCache
from ..remotes.connect import normalize_url, open_backend
from ..reporting import Reporter
from .download import coalesce

WORKERS = 8
GET_BATCH_FILES = 2000
GET_BATCH_BYTES = 64 << 20
"""Files (and bytes) of small files `get` reads at once."""
NODES_KEPT = 64 << 20
"""Bytes of tree objects and records a reader keeps in memory (least recently used go)."""
MAX_CARRIERS = 1 << 20
"""Leaf shards a reader remembers the carrier of (the oldest are forgotten)."""
BLOBS_KEPT = 64 << 20
"""Bytes of small files a reader keeps in memory once read (those an open read ahead)."""
MAX_SAVED_REFS = 64 << 20
"""The refs a cache keeps of one origin, at most (bytes of JSON)."""
LOOSE_CACHE_MEMORY = 64 << 20
"""A loose object streamed from the origin up to this size is also kept in the cache."""
MAX_HISTORY = 100_000
"""Version records a walk of one dataset's history reads at most."""
SPAN = 2 << 20
"""Bytes of a chunked file one prefetch job reads (ranged GETs of neighbouring chunks)."""
AHEAD = 8
"""Prefetch jobs a sequential read of a chunked file keeps in flight."""
SEQUENTIAL_SPANS = 4
"""Spans one prefetch job of a sequential read reads (one ranged GET where they lie
together in a pack)."""

NEAR = 4
"""Spans behind (or ahead of) the furthest a sequential read has reached that it may ask
for next (reads in flight arrive out of order; the kernel reads ahead of a mount's
reader) without being taken for a random reader."""

Blob = bytes | memoryview
"""An object's bytes as read (a slice of a ranged GET's answer is not copied)."""


@dataclass
class RemoteDataset:
    """A dataset as a remote's refs show it."""

    id: str
    name: str | None
    latest: layout.RemoteRef | None
    tags: dict[str, layout.RemoteRef] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The fields a script sees (`dsv ls URL --json`)."""
        return {"id": self.id, "name": self.name,
                "latest": self.latest.version if self.latest else None,
                "path": self.latest.path if self.latest else None,
                "tags": {t: r.version for t, r in sorted(self.tags.items())}}


class _Places:
    """Where the locators read so far place objects: an open-addressing table of three
    arrays (an id's first 64 bits; its pack's number and its length; its offset), 24
    bytes a slot, at most 70% full (a dict of those numbers took some 120 bytes a place,
    of hex ids to tuples some 230: a million-file version's places, 142 and 230 MB).
    A place is only a hint: what is read there is checked against its id and a mismatch
    sends the read to the pack indexes, so two ids that share their first 64 bits cost a
    read, nothing else. A slot comes from Python's keyed hash of the id's first 16 hex
    digits, so ids picked to collide (a hostile locator names any ids it likes) cannot
    pile up on one slot. A place too far out to encode is left out (read by the pack
    indexes too)."""

    def __init__(self) -> None:
        self._packs: list[str | None] = []
        self._numbers: dict[str | None, int] = {}
        self._used = 0
        self._table = self._new(1 << 12)

    @staticmethod
    def _new(slots: int) -> _Table:
        return _Table(array("Q", bytes(8 * slots)), array("Q", bytes(8 * slots)),
                      array("Q", bytes(8 * slots)))

    @staticmethod
    def _slot(table: _Table, key: int) -> int:
        """The slot of `table` holding `key`, else the empty one where it would go."""
        keys, last = table.keys, len(table.keys) - 1
        slot = hash(f"{key:016x}") & last
        while keys[slot] not in (key, 0):
            slot = slot + 1 if slot < last else 0
        return slot

    def update(self, places: dict[str, layout.Location]) -> None:
        """Learn `places` (one writer at a time: the reader's lock; `get` needs none)."""
        while (self._used + len(places)) * 10 > len(self._table.keys) * 7:
            self._grow()
        keys, sized, offsets = self._table
        numbers, last = self._numbers, len(keys) - 1
        for oid, (pack, offset, length) in places.items():
            key = int(oid[:16], 16)
            if not (0 <= offset < 1 << 56 and 0 <= length < 1 << 40) or key == 0:
                continue
            number = numbers.get(pack)
            if number is None:
                if len(self._packs) >= 1 << 24:
                    continue
                number = numbers[pack] = len(self._packs)
                self._packs.append(pack)
            slot = hash(f"{key:016x}") & last   # (as `_slot`, inline: the hot loop)
            while keys[slot] not in (key, 0):
                slot = slot + 1 if slot < last else 0
            sized[slot] = number << 40 | length
            offsets[slot] = offset
            if keys[slot] == 0:   # (the key last: a `get` meanwhile finds it whole or not)
                keys[slot] = key
                self._used += 1

    def _grow(self) -> None:
        """A table twice as large, filled, then put in place in one step."""
        old = self._table
        table = self._new(2 * len(old.keys))
        for i in itertools.compress(range(len(old.keys)), old.keys):
            slot = self._slot(table, old.keys[i])
            table.sized[slot], table.offsets[slot], table.keys[slot] = \
                old.sized[i], old.offsets[i], old.keys[i]
        self._table = table

    def get(self, oid: str) -> layout.Location | None:
        if not is_hash(oid):
            return None
        key, table = int(oid[:16], 16), self._table
        slot = self._slot(table, key)
        if key == 0 or table.keys[slot] == 0:
            return None
        sized = table.sized[slot]
        return self._packs[sized >> 40], table.offsets[slot], sized & (1 << 40) - 1


class _Table(NamedTuple):
    """`_Places`' arrays, a power of two slots each."""

    keys: array[int]       # an id's first 64 bits (0: an empty slot)
    sized: array[int]      # pack number << 40 | length
    offsets: array[int]


class RemoteReader:
    """One remote, read without a store (see the module's docstring)."""

    def __init__(self, url: str, endpoint_url: str | None = None, profile: str | None = None,
                 cache: str | None = None, reporter: Reporter | None = None) -> None:
        self.spec = RemoteSpec("origin", normalize_url(url), endpoint_url=endpoint_url,
                               profile=profile)
        self.url = self.spec.url
        self._backend: Backend | None = open_backend(self.spec)
        if cache:
            check_outside_stores(os.path.abspath(cache))
        self.cache = ClusterCache(os.path.abspath(cache)) if cache else None
        self.reporter = reporter or Reporter()
        self.format = 0
        self._lock = threading.Lock()
        self._keys: list[str] | None = None           # the remote's refs/ keys, listed once
        self._refs: dict[str, layout.RemoteRef | None] = {}
        self._raw_refs: dict[str, tuple[bytes, str]] = {}
        self._saved: dict[str, tuple[bytes, str]] | None = None
        """The refs as the cache last saw them, when the origin cannot be reached."""
        self._places = _Places()
        self._picture: dict[str, layout.Location] | None = None
        self._whole = False   # (the picture from every pack index, catalogs or not)
        self._scope: set[str] = set()                  # datasets whose objects are read
        self._records: dict[str, Record] = {}
        self._nodes: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._carriers: dict[str, str] = {}  # leaf shard → the node whose locator carries it
        self._blobs: OrderedDict[str, bytes] = OrderedDict()  # small files read (ahead)
        self._blobs_held = 0
        self._pool: ThreadPoolExecutor | None = None
        _LIVE_READERS.add(self)

    @property
    def backend(self) -> Backend:
        """The remote's files (opened again on first use in a forked child)."""
        backend = self._backend
        if backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(self.spec)
                backend = self._backend
        return backend

    def _after_fork(self) -> None:
        """In a forked child (a DataLoader worker): the parent's GET threads do not exist
        here, and its remote connections (and its lock, which a thread may have held at
        the fork) are the parent's. They are left to it untouched, and fresh ones are
        opened on first use. What was read stays: refs as seen, records, trees and small
        files read ahead are the same bytes here."""
        self._lock = threading.Lock()
        self._pool = None
        self._backend = None

    # ---- the remote and its refs ------------------------------------------------------
    def connect(self) -> None:
        """Check once that the URL is a dsv remote whose format this dsv reads. When it
        cannot be reached and a cache is given, the reader goes on with the refs it (or
        another reader sharing the cache) last saw there, and what the cache holds."""
        if self.format or self._saved is not None:
            return
        try:
            self.backend.check_reachable()
        except RemoteError as exc:
            if self.cache is None or not self._load_saved_refs(exc):
                raise
            return
        try:
            marker = load_bounded(self.backend.get(layout.REMOTE_MARKER,
                                                   max_size=MAX_REF_BYTES), MAX_REF_BYTES)
        except NotFound:
            raise RemoteError(f"{self.url} is not a dsv remote (nothing was pushed to it)",
                              hint="check the URL (and --endpoint-url)") from None
        except ValueError:
            raise RemoteError(f"{self.url}/{layout.REMOTE_MARKER} is unreadable") from None
        self.format = layout.marker_format(self.url, marker)

    def _origin(self, oid: str) -> None:
        """Connect, to read object `oid` the cache lacks (offline: say so)."""
        self.connect()
        if self._saved is not None:
            raise MissingObject(f"object {oid[:12]} is not in the cluster cache, and "
                                f"{self.url} cannot be reached",
                                hint="what the cache holds can be read meanwhile; try again "
                                     "when the remote is back")

    def _ref_keys(self) -> list[str]:
        if self._keys is None:
            self.connect()
            if self._saved is not None:
                self._keys = sorted(self._saved)
            else:
                keys = []
                for key, _size in self.backend.list(layout.REFS):
                    keys.append(key)
                    if len(keys) > layout.MAX_REFS:
                        raise RemoteRefused(f"{self.url} lists more than "
                                            f"{layout.MAX_REFS:,} refs; dsv reads no more "
                                            f"than that")
                self._keys = sorted(keys)
        return self._keys

    # (refs as last seen, kept in the cache for readers while the origin is down)
    def _saved_refs_path(self) -> str:
        assert self.cache is not None
        return os.path.join(self.cache.root, "refs", hash_bytes(self.url.encode())[:32] +
                            ".json")

    def _load_saved_refs(self, exc: RemoteError) -> bool:
        raw = self._cached(self._saved_refs_path(), MAX_SAVED_REFS)
        try:
            body = load_bounded(raw or b"", MAX_SAVED_REFS)
            saved = {str(k): (base64.b64decode(v[0], validate=True), str(v[1]))
                     for k, v in body["refs"].items()
                     if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)}
            when = _when(float(body["saved"]))  # (a time no clock can show: no refs)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error,
                OverflowError, OSError):
            return False
        self._saved = saved
        self.reporter.notice(f"warning: {exc.message}; reading {self.url}'s refs as the "
                             f"cluster cache saw them at {when}, and what the cache holds")
        return True

    def _save_refs(self) -> None:
        """Keep the refs read from the origin in the cache (merged with those saved before
        that the origin still lists), for readers while it is down."""
        if self.cache is None or self._saved is not None or self._keys is None:
            return
        listed = set(self._keys)
        old: dict[str, list[str]] = {}
        raw = self._cached(self._saved_refs_path(), MAX_SAVED_REFS)
        if raw:
            try:
                found = load_bounded(raw, MAX_SAVED_REFS).get("refs", {})
                old = {k: v for k, v in found.items() if k in listed}
            except (ValueError, AttributeError):
                old = {}
        with self._lock:
            new = {k: [base64.b64encode(data).decode(), etag]
                   for k, (data, etag) in self._raw_refs.items() if k in listed}
        if all(old.get(k) == v for k, v in new.items()) and len(old) == len(listed):
            return  # (as the cache saw them already: no write on every read)
        body = {"refs": {**old, **new}, "saved": time.time(), "url": self.url}
        self._fill(self._saved_refs_path(), json.dumps(body, sort_keys=True).encode())

    def _read_ref(self, key: str) -> layout.RemoteRef | None:
        """A ref of the remote (each read once by this reader), None if absent or bad."""
        if key in self._refs:
            return self._refs[key]
        try:
            got = self._saved.get(key) if self._saved is not None else \
                self.backend.read_ref(key)
        except RemoteRefused as exc:
            self.reporter.notice(f"warning: ignored remote ref {key}: {exc.message}")
            got = None
        if got is not None and self._saved is None:
            with self._lock:
                self._raw_refs[key] = got
        ref = layout.parse_listed_ref(key, *got, self.reporter.notice) if got else None
        with self._lock:
            self._refs[key] = ref
        return ref

    def _read_refs(self, keys: list[str]) -> list[layout.RemoteRef]:
        with ThreadPoolExecutor(WORKERS) as pool:
            return [r for r in pool.map(self._read_ref, keys) if r is not None]

    def datasets(self) -> list[RemoteDataset]:
        """Every dataset with a `latest` ref on the remote, with its tags. Each `latest`
        is checked against its record (one read each, side by side): one naming another
        version is shown as no latest, with a warning, as naming it would fail."""
        ids = sorted({parts[1] for key in self._ref_keys()
                      if len(parts := key.split("/")) == 3 and parts[2] == LATEST})
        found = [self._dataset(ds_id, tags=True) for ds_id in ids]

        def check(ds: RemoteDataset) -> None:
            if ds.latest is None:
                return
            try:
                self._named(ds, ds.latest)
            except (CorruptObject, MissingObject) as exc:   # (damaged, or not there)
                self.reporter.notice(f"warning: {exc.message}")
                ds.latest = None

        list(self._workers().map(check, found))
        self._save_refs()
        return found

    def _dataset(self, ds_id: str, tags: bool = False) -> RemoteDataset:
        """Dataset `ds_id` as its `latest` ref (and with `tags`, every tag) shows it."""
        keys = [layout.ref_key(ds_id, LATEST)]
        if tags:
            keys += [k for k in self._ref_keys() if k.startswith(f"{layout.REFS}{ds_id}/tags/")]
        ds = RemoteDataset(ds_id, None, None)
        for ref in self._read_refs(keys):
            if ref.ref == LATEST:
                ds.latest, ds.name = ref, ref.name
            else:
                ds.tags[ref.ref.removeprefix("tags/")] = ref
        return ds

    def _tag(self, ds: RemoteDataset, name: str) -> layout.RemoteRef | None:
        key = layout.ref_key(ds.id, f"tags/{name}")
        return self._read_ref(key) if key in self._ref_keys() else None

    def dataset(self, word: str) -> RemoteDataset:
        """The dataset `word` names on the remote, by id or by the name its `latest` ref
        carries (ids win); InvalidInput when none or several do."""
        ids = sorted({parts[1] for key in self._ref_keys()
                      if len(parts := key.split("/")) >= 3})
        if word in ids:
            return self._dataset(word)
        if not ids:
            raise InvalidInput(f"{self.url} holds no dataset yet")
        latest = self._read_refs([layout.ref_key(i, LATEST) for i in ids])
        named = [r.dataset for r in latest if r.name == word]
        if len(named) != 1:
            shown = {r.dataset: r.name or r.dataset for r in latest}
            names = sorted(shown.get(i, f"{i} (no readable latest ref)") for i in ids)
            raise InvalidInput(f"{self.url} has {'several datasets' if named else 'no dataset'}"
                               f" named {word!r}",
                               hint=(f"name it by id: {', '.join(named)}" if named else
                                     f"its datasets: {', '.join(names)}"))
        return self._dataset(named[0])

    def resolve(self, ref: str) -> Version:
        """The committed version `ref` (`DATASET[:latest|TAG|VERSION][~N]`) names on the
        remote."""
        spec = parse_ref(ref)
        if spec.dataset is None:
            raise RefError(f"ref {ref!r} names no dataset",
                           hint="write DATASET:SELECTOR, e.g. mldata:latest or mldata:v1.0")
        if "/" in spec.selector:
            raise RefError(f"{ref}: remote-tracking refs name what a store saw of a remote; "
                           f"name the ref itself")
        ds = self.dataset(spec.dataset)
        self._scope.add(ds.id)
        label = ds.name or ds.id
        if spec.selector == LATEST:
            if ds.latest is None:
                raise RefError(f"{label} has no latest version on {self.url}")
            version = self._named(ds, ds.latest)
        else:
            version = self._select(ds, spec.selector)
        for _ in range(spec.ancestor):
            record = self.record(version.record or "", ds.id)
            if not record.parents:
                raise RefError(f"{ref} goes past the first version")
            version = self.record(record.parents[0].record, ds.id).version
        self._save_refs()
        return version

    def _select(self, ds: RemoteDataset, selector: str) -> Version:
        label = ds.name or ds.id
        found: dict[str, Version] = {}
        tagged = self._tag(ds, selector)
        if tagged is not None:
            found[f"tag {selector}"] = self._named(ds, tagged)
        if tagged is None or tagged.version != selector:
            for v in self.history(ds):
                if v.id == selector or (len(selector) >= MIN_PREFIX and
                                        v.id.startswith(selector)):
                    found[f"version {v.id}"] = v
        distinct = {v.id: v for v in found.values()}
        if not distinct:
            raise RefError(f"{label}:{selector} matches no tag or version on {self.url}",
                           hint=f"`dsv ls {self.url} {label}` lists them")
        if len(distinct) > 1:
            raise RefError(f"{label}:{selector} is ambiguous: it matches "
                           f"{', '.join(sorted(found))}", hint="name a version by more of its id")
        return next(iter(distinct.values()))

    def _named(self, ds: RemoteDataset, ref: layout.RemoteRef) -> Version:
        """The version `ref` names, from its record, which must hold that very version: a
        ref whose record is another version's (damaged, or forged to make `latest` give
        other files than it shows) is refused, as a fetch ignores it."""
        version = self.record(ref.record, ds.id).version
        if version.id != ref.version:
            raise CorruptObject(f"remote ref {ds.name or ds.id}:{ref.ref.removeprefix('tags/')} "
                                f"on {self.url} names version {ref.version}, but its record "
                                f"is version {version.id}",
                                hint="the remote is damaged or hostile; `dsv verify --remote` "
                                     "checks it")
        return version

    def history(self, ds: RemoteDataset) -> list[Version]:
        """Every version the dataset's refs reach on the remote, newest first (a ref whose
        record is not the version it names is left out, with a warning)."""
        self._scope.add(ds.id)
        ds = self._dataset(ds.id, tags=True)
        heads, kept = [], set()
        for ref in ([ds.latest] if ds.latest else []) + list(ds.tags.values()):
            try:
                self._named(ds, ref)
            except (CorruptObject, MissingObject) as exc:  # (another's record, or none)
                self.reporter.notice(f"warning: ignored remote ref {ds.id}/{ref.ref}: "
                                     f"{exc.message}")
                continue
            heads.append(ref.record)
            kept.add(ref.ref)
        seen: dict[str, Version] = {}
        stack = list(heads)
        while stack:
            rec = stack.pop()
            if rec in seen:
                continue
            if len(seen) >= MAX_HISTORY:
                raise CorruptObject(f"{ds.name or ds.id} has more than {MAX_HISTORY:,} "
                                    f"versions on {self.url}")
            record = self.record(rec, ds.id)
            seen[rec] = record.version
            stack.extend(p.record for p in record.parents)
        tags: dict[str, list[str]] = {}
        for name, ref in ds.tags.items():
            if ref.ref in kept:
                tags.setdefault(ref.version, []).append(name)
        out = sorted(seen.values(), key=lambda v: v.committed or 0.0, reverse=True)
        for v in out:
            v.tags = sorted(tags.get(v.id, []))
        return out

    def record(self, oid: str, ds_id: str | None = None) -> Record:
        """Version record `oid` (of dataset `ds_id`), read and checked."""
        found = self._records.get(oid)
        if found is not None:
            return found
        if not is_hash(oid):
            raise CorruptObject(f"{oid[:40]!r} is not a version record id")
        if ds_id:
            self._scope.add(ds_id)
        record = parse_record(self._node(oid), oid)
        if ds_id is not None and record.version.dataset != ds_id:
            raise CorruptObject(f"version record {oid[:12]} on {self.url} belongs to "
                                f"another dataset")
        record.version.record = oid
        record.version.state = COMMITTED
        self._records[oid] = record
        return record

    # ---- tree objects -----------------------------------------------------------------
    def read_tree(self, oid: str) -> bytes:
        """Tree object `oid`'s bytes (checked against its id): what `tree`'s walks read."""
        return self._node(oid)

    def _node(self, oid: str) -> bytes:
        """A tree object or record, through its locator (a leaf shard: through its
        parent's, which carries it): from the cache, else from the origin (then cached);
        by the pack indexes when the origin has no locator."""
        with self._lock:
            held = self._nodes.get(oid)
            if held is not None:
                self._nodes.move_to_end(oid)
                return held
            carrier = self._carriers.get(oid)
        if carrier is not None:  # (read before, and let go since: read its carrier again)
            data = self._learn(carrier, self._locator(carrier)).get(oid)
            if data is not None:
                return data
        return self._learn(oid, self._locator(oid))[oid]

    def _locator(self, oid: str) -> layout.Locator:
        """The locator of `oid`, from the cache, else from the origin (then cached); one
        made of the object alone (read by the pack indexes) when the origin has none."""
        key = layout.locator_key(oid)
        path = self.cache.locator_path(oid) if self.cache else None
        raw = self._cached(path, MAX_GET_BYTES) if path else None
        if raw is not None:
            try:
                return layout.parse_locator(raw, oid)
            except CorruptObject:
                assert self.cache is not None and path is not None
                self.cache.drop(path)
        self._origin(oid)
        try:
            raw = self.backend.get(key, max_size=MAX_GET_BYTES)
            locator = layout.parse_locator(raw, oid)
        except NotFound:
            data = self._fetch_packed(oid)
            raw, locator = layout.encode_locator(data, {}), layout.Locator(data, {})
        except (CorruptObject, RemoteRefused) as exc:   # (a locator is a hint: a FIFO or
            # link in its place, or one too large, is damage the pack indexes route around)
            self.reporter.notice(f"warning: {exc.message}; reading the object itself")
            data = self._fetch_packed(oid)
            raw, locator = layout.encode_locator(data, {}), layout.Locator(data, {})
        if self.cache is not None and path is not None:
            self._fill(path, raw)
        return locator

    def _learn(self, oid: str, locator: layout.Locator) -> dict[str, bytes]:
        """Remember a locator's places, and its object (and those it carries) among the
        last NODES_KEPT bytes of objects read (a version never changes: a walk that comes
        back reads nothing); returns those objects, by id."""
        nodes = {**locator.nodes, oid: locator.data}
        with self._lock:
            self._places.update(locator.places)
            for child in locator.nodes:
                if len(self._carriers) >= MAX_CARRIERS:
                    del self._carriers[next(iter(self._carriers))]
                self._carriers[child] = oid
            for node, data in nodes.items():
                if node not in self._nodes:
                    self._nodes[node] = data
                    self._held += len(data)
            while self._held > NODES_KEPT and len(self._nodes) > 1:
                _oid, data = self._nodes.popitem(last=False)
                self._held -= len(data)
        return nodes

    # ---- file contents ----------------------------------------------------------------
    def read_blob(self, oid: str, size: int) -> bytes:
        """The contents `oid` (of `size` bytes) of an unchunked file or a chunk, checked."""
        return bytes(next(iter(self.read_blobs({oid: size}).values())))

    def read_blobs(self, wanted: dict[str, int]) -> dict[str, Blob]:
        """The contents of several blobs (oid → size), each checked: from the cache, else
        by ranged GETs of the origin's packs (neighbours in one GET), in parallel."""
        out: dict[str, Blob] = {}
        for oid, size in wanted.items():
            data = self._cached_object(oid, size)
            if data is not None:
                out[oid] = data
        rest = {oid: size for oid, size in wanted.items() if oid not in out}
        if not rest:
            return out
        self._origin(next(iter(rest)))
        for round_ in range(3):
            stale = round_ > 0
            if round_ == 2:
                # A picture read before a maintainer repacked the remote names packs that
                # are gone, or a catalog lacks a pack: read it again, once, from every
                # pack index (a mount lives for hours; a catalog is an economy only).
                self._forget_picture(whole=True)
            places = self._locate(rest, stale)
            loose = {oid: n for oid, (pack, _o, n) in places.items() if pack is None}
            packed = {oid: (p, o, n) for oid, (p, o, n) in places.items() if p is not None}
            ranges = coalesce(packed)
            found: dict[str, Blob | None] = {}
            get_range = partial(self._get_range, hint=not stale)
            if len(ranges) + len(loose) == 1:  # (one GET: a chunk run, one file) here
                found = get_range(ranges[0]) if ranges else \
                    {o: self._get_loose((o, n)) for o, n in loose.items()}
            else:
                pool = self._workers()
                for got in pool.map(get_range, ranges):
                    found.update(got)
                found.update(zip(loose, pool.map(self._get_loose, loose.items()),
                                 strict=True))
            out.update({oid: data for oid, data in found.items() if data is not None})
            rest = {oid: rest[oid] for oid, data in found.items() if data is None}
            if not rest:
                return out
        oid = next(iter(rest))
        raise CorruptObject(f"object {oid[:12]} is damaged or missing on {self.url}; "
                            f"nothing of it was returned",
                            hint="`dsv verify --remote` on a store with this remote "
                                 "reports what is damaged")

    def _workers(self) -> ThreadPoolExecutor:
        """The reader's GET threads (its tasks submit none: callers may share them)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="dsv-read")
            return self._pool

    def _locate(self, wanted: dict[str, int], stale: bool) -> dict[str, layout.Location]:
        """Where each wanted object is: as the locators place it, unless `stale` (those
        places held other bytes): then by the pack indexes, or loose. A place whose length
        is not the object's size (a locator anyone who can write the cache may have
        rewritten) is not one: no read is longer than the object it is for."""
        out: dict[str, layout.Location] = {}
        picture = self._read_picture() if stale else None
        for oid, size in wanted.items():
            place = picture.get(oid) if picture is not None else self._places.get(oid)
            if place is not None and place[2] != size:
                place = None
            if place is None and not stale:
                picture = self._read_picture()
                place = picture.get(oid)
            out[oid] = place if place is not None and place[2] == size else (None, 0, size)
        return out

    def _get_range(self, job: tuple[str, int, int, list[tuple[str, int, int]]],
                   hint: bool = False) -> dict[str, Blob | None]:
        """The objects of one ranged read of a pack (None for each that is not there).
        When the places were a locator's `hint`, any failure to read them (a range past
        the pack's end, a pack gone since) only sends them to the pack indexes."""
        pack, start, length, group = job
        try:
            data = self.backend.get_range(layout.pack_key(pack), start, length)
        except (NotFound, RemoteRefused):  # (a pack gone since it was placed: looked up)
            return {oid: None for oid, _o, _n in group}
        except RemoteError:
            if not hint:
                raise
            return {oid: None for oid, _o, _n in group}
        out: dict[str, Blob | None] = {}
        view = memoryview(data)
        for oid, offset, n in group:
            piece = view[offset - start:offset - start + n]  # (no copy)
            if hash_bytes(piece) == oid:
                out[oid] = piece
                self._cache_object(oid, piece)
            else:
                out[oid] = None
        return out

    def _get_loose(self, item: tuple[str, int]) -> bytes | None:
        oid, size = item
        if size > MAX_GET_BYTES:
            raise InvalidInput(f"object {oid[:12]} is {size:,} bytes: too large to read "
                               f"into memory", hint="use `dsv get` to write it to a file")
        try:
            data = self.backend.get(layout.loose_key(oid), max_size=size)
        except (NotFound, RemoteRefused):
            return None
        if hash_bytes(data) != oid:
            return None
        self._cache_object(oid, data)
        return data

    def _fetch_packed(self, oid: str) -> bytes:
        """A tree object or record that has no locator on the origin, by the pack indexes
        (read again, once, when the pack they named is gone: see `read_blobs`)."""
        for again in (False, True):
            if again:
                self._forget_picture(whole=True)
            pack, offset, length = self._read_picture().get(oid) or (None, 0, 0)
            if pack is not None:
                try:
                    data = self.backend.get_range(layout.pack_key(pack), offset, length)
                    break
                except NotFound:
                    pass
        else:
            raise MissingObject(f"object {oid[:12]} is not on {self.url}",
                                hint="was the version deleted, or the remote collected?")
        if hash_bytes(data) != oid:
            raise CorruptObject(f"object {oid[:12]} is damaged on {self.url}")
        return data

    def _forget_picture(self, whole: bool = False) -> None:
        """Read the picture again at its next use (`whole`: from every pack index, even
        where catalogs say which the datasets read so far need)."""
        with self._lock:
            self._picture = None
            self._whole = self._whole or whole

    def _read_picture(self) -> dict[str, layout.Location]:
        """Where every object of the datasets read so far is, from their catalogs (every
        pack index, where the remote keeps none): read when a locator is lacking, and
        again when it names a pack gone since or lacks an object (`_forget_picture`):
        then from every pack index, as a catalog cut short must not fail a read."""
        with self._lock:
            if self._picture is not None:
                return self._picture
            whole = self._whole
        if self.format >= layout.CATALOG_FORMAT and self._scope and not whole:
            packs = {entry[1] for ds in sorted(self._scope)
                     for key, _size in self.backend.list(layout.catalog_prefix(ds))
                     if (entry := layout.catalog_entry_of_key(key)) is not None}
        else:
            packs = {pid for key, _size in self.backend.list(layout.INDEX)
                     if (pid := layout.index_id_of_key(key)) is not None and is_hash(pid)}

        def read(pack: str) -> list[tuple[str, layout.Location]]:
            got = layout.read_pack_index(self.backend, pack, self.url, self.reporter.notice)
            return [] if got is None else [(e.oid, (pack, e.offset, e.length)) for e in got[0]]

        picture: dict[str, layout.Location] = {}
        with ThreadPoolExecutor(WORKERS) as pool:
            for found in pool.map(read, sorted(packs)):
                picture.update(found)
        with self._lock:
            self._picture = picture
        return picture

    # ---- the cluster cache --------------------------------------------------------------
    def _cached(self, path: str, cap: int) -> bytes | None:
        assert self.cache is not None
        fd = self.cache.open_entry(path)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > cap:
                return None
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(size)
        finally:
            os.close(fd)

    def _cached_object(self, oid: str, size: int) -> bytes | None:
        if self.cache is None:
            return None
        path = self.cache.loose_path(oid)
        data = self._cached(path, size)
        if data is None:
            return None
        if len(data) != size or hash_bytes(data) != oid:
            self.cache.drop(path)  # damaged: read the origin instead
            return None
        return data

    def _cache_object(self, oid: str, data: Blob) -> None:
        if self.cache is not None:
            self._fill(self.cache.loose_path(oid), data)

    def _fill(self, path: str, data: Blob) -> None:
        cache = self.cache
        assert cache is not None  # (a full or read-only cache: one warning, then read on)
        cache.try_fill(lambda: cache.fill_bytes(path, data), self.reporter.notice)

    # ---- versions' files ----------------------------------------------------------------
    def files(self, version: Version, path: str = "", recursive: bool = False
              ) -> Iterator[FileRow]:
        """The entries of the version's directory `path` (the root by default); with
        `recursive`, every file and link below it, in path order, streamed as `entries`
        gives them. A file's path lists that file; a path the version lacks is refused
        before the first row."""
        rel = normalize_user_path(path) if path else ""
        if recursive:
            return (FileRow.of(p, e.kind, e.mode, e.size, e.oid, e.chunks)
                    for p, e in self.entries(version, rel))
        root = version.tree
        if rel:
            row = tree.find(version.tree, self.read_tree, rel, trusted=False)
            if row is None:
                raise InvalidInput(f"{path} is not in version {version.id}")
            if row[1] != tree.DIR:
                return iter([FileRow.of(rel, *row[1:])])
            root = row[4]
        return (FileRow.of(f"{rel}/{row[0]}" if rel else row[0], *row[1:])
                for row in tree.entries(root, self.read_tree, trusted=False))

    def entries(self, version: Version, rel: str = "") -> Iterator[tuple[str, tree.Entry]]:
        """(path, entry) of every file and link at or below `rel`, in path order. The
        directory is bounded by its distinct trees before the first path (a few hostile
        trees naming one directory many times describe more paths than memory holds, as
        a fetch bounds a version); then the paths stream, a directory's entries at a time."""
        return self._entries(version, rel, checked=False)

    def _entries(self, version: Version, rel: str, checked: bool
                 ) -> Iterator[tuple[str, tree.Entry]]:
        """`entries`; `checked`: the directory was bounded already (a second walk)."""
        root = version.tree
        if rel:
            row = tree.find(version.tree, self.read_tree, rel, trusted=False)
            if row is None:
                raise InvalidInput(f"{rel} is not in version {version.id}")
            if row[1] != tree.DIR:
                return iter([(rel, tree.Entry(row[1], row[2], row[3], row[4], row[5]))])
            root = row[4]
        if not checked:
            tree.check_expansion(root, self.read_tree, trusted=False)
        return tree.iter_sorted(root, self.read_tree, trusted=False,
                                prefix=f"{rel}/" if rel else "")

    def chunk_list(self, entry: tree.Entry) -> tree.ChunkList:
        """The chunk list of a chunked file."""
        return tree.read_chunks(self.read_tree, entry.chunks, entry.oid, entry.size,
                                trusted=False)

    def open(self, entry: tree.Entry, ahead: Iterable[tree.Entry] = ()) -> BinaryIO:
        """A file's contents, seekable: a chunked file reads only the chunks a read
        covers (and prefetches ahead of a sequential read); every piece is checked. A
        small file is read with the small files of `ahead` (the caller's guess at what
        is opened next: the files after it in its directory), which the reader then
        holds in memory (BLOBS_KEPT): a directory read file by file costs a few GETs."""
        if entry.kind == tree.DIR:
            raise InvalidInput("a directory cannot be opened as a file")
        if entry.chunks:
            from ..checkout import ChunkedReader
            chunks = self.chunk_list(entry)
            return io.BufferedReader(ChunkedReader(chunks, _Prefetch(self, chunks),
                                                   entry.chunks), 1 << 20)
        if entry.size > PACK_THRESHOLD:
            return self._spooled(entry, entry.oid[:12])
        return io.BytesIO(self._small(entry, ahead))

    def _small(self, entry: tree.Entry, ahead: Iterable[tree.Entry]) -> bytes:
        with self._lock:
            held = self._blobs.get(entry.oid)
            if held is not None:
                self._blobs.move_to_end(entry.oid)
                return held
            wanted = {entry.oid: entry.size} | {
                e.oid: e.size for e in ahead
                if e.kind == tree.FILE and not e.chunks and e.size <= PACK_THRESHOLD
                and e.oid not in self._blobs}
        try:
            got = self.read_blobs(wanted)
        except DsvError:
            if len(wanted) == 1:
                raise
            # (a neighbour damaged, or one the cluster cache lacks while the origin is
            # down, or a failed GET: only the file asked for must be read)
            got = self.read_blobs({entry.oid: entry.size})
        data = {oid: bytes(blob) for oid, blob in got.items()}
        with self._lock:
            for oid, blob in data.items():
                if oid not in self._blobs:
                    self._blobs[oid] = blob
                    self._blobs_held += len(blob)
            while self._blobs_held > BLOBS_KEPT and self._blobs:
                _oid, old = self._blobs.popitem(last=False)
                self._blobs_held -= len(old)
        return data[entry.oid]

    def _stream_loose(self, entry: tree.Entry, label: str | None = None) -> Iterator[Blob]:
        """A large unchunked file (a loose object): from the cache, else streamed from the
        origin and, when it checks out, kept in the cache."""
        held = self._cached_loose(entry, label)
        if held is not None:
            with held:
                yield from iter(lambda: held.read(1 << 20), b"")
            return
        yield from self._stream_origin(entry, label)

    def _cached_loose(self, entry: tree.Entry, label: str | None = None) -> BinaryIO | None:
        """A private, checked copy of the cache's entry of loose object `entry` (at its
        start: in memory up to LOOSE_CACHE_MEMORY, else in an unnamed temp file), or None
        when the cache lacks it or holds other bytes (then it is dropped: a damaged entry
        costs a download, not the read). The entry is read once: its owner may rewrite
        it in place at any moment, so a second read could differ from what was checked.
        Only a failure to read or hash the entry itself drops it: a temp directory with
        no room for the copy is this machine's, and fails the read (CannotWrite)."""
        if self.cache is None:
            return None
        label = label or f"file {entry.oid[:12]}"
        path = self.cache.loose_path(entry.oid)
        fd = self.cache.open_entry(path)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            # (its size first: a truncated or huge sparse file is not read; then no
            # further than that size: another user may append to it)
            try:
                whole = os.fstat(f.fileno()).st_size == entry.size
            except OSError:
                whole = False
            if whole:
                held = self._aside(entry.size, label)
                try:
                    if self._copy_checked(f.fileno(), entry, held, label):
                        held.seek(0)
                        return held
                except BaseException:
                    held.close()
                    raise
                held.close()
        self.cache.drop(path)
        return None

    def _aside(self, size: int, label: str) -> BinaryIO:
        """A private place for `size` bytes of `label`: memory up to LOOSE_CACHE_MEMORY,
        else an unnamed temp file, once the temp directory's disk has room for it."""
        if size <= LOOSE_CACHE_MEMORY:
            return io.BytesIO()
        where = tempfile.gettempdir()
        try:
            fileio.check_room(where, size, f"putting {label} aside", hint=_TMP_HINT)
            return tempfile.TemporaryFile()
        except InvalidInput as exc:
            raise CannotWrite(exc.message, hint=exc.hint) from None
        except OSError as exc:
            raise _cannot_aside(label, exc) from None

    @staticmethod
    def _copy_checked(fd: int, entry: tree.Entry, held: BinaryIO, label: str) -> bool:
        """Copy `entry.size` bytes of the cache entry `fd` into `held`; whether they are
        the object's. False when the entry cannot be read just now or grows while read
        (the origin has it); a write to `held` that fails raises CannotWrite."""
        stream = _Hashed(pieces_at_most(fd, entry.size), entry.size, label)
        pieces = iter(stream)
        while True:
            try:
                piece = next(pieces)
            except StopIteration:
                break
            except (OSError, CorruptObject):
                return False
            try:
                held.write(piece)
            except OSError as exc:
                raise _cannot_aside(label, exc) from None
        return stream.count == entry.size and stream.hasher.hexdigest() == entry.oid

    def _stream_origin(self, entry: tree.Entry, label: str | None = None) -> Iterator[Blob]:
        """A loose object streamed from the origin (the caller checks the whole) and, when
        it checks out, kept in the cache."""
        self._origin(entry.oid)
        stream = _Hashed(self.backend.download(layout.loose_key(entry.oid)), entry.size,
                         label or f"file {entry.oid[:12]}")
        if self.cache is None:
            yield from stream
            return
        # (the cache gets the object only if the whole of it hashes to its id)
        held: list[Blob] | None = []
        for piece in stream:
            yield piece
            if held is not None:
                held.append(piece)
                if stream.count > LOOSE_CACHE_MEMORY:
                    held = None
        if held is not None and stream.count == entry.size and \
                stream.hasher.hexdigest() == entry.oid:
            self._fill(self.cache.loose_path(entry.oid), b"".join(held))

    def get(self, version: Version, paths: list[str], to: str | os.PathLike[str]) -> int:
        """Write the files at or below `paths` of `version` (every file when none) into
        directory `to`; returns how many. Small files are read in batches (neighbours in
        one GET), chunked files chunk run by chunk run; nothing unchecked is written.
        Two walks of the trees: the first counts the files and their bytes and checks the
        links, the second writes, a batch at a time; the version is never held whole (a
        million files took 850 MB as one sorted list)."""
        dest = Path(to).absolute()
        check_outside_stores(str(dest))
        named = {normalize_user_path(p) for p in paths}
        # (each path once: one under another named too is written with it)
        roots = [""] if not named or "" in named else sorted(
            r for r in named if not is_under(r.rpartition("/")[0], named))
        for rel in named.difference(roots, [""]):   # (still, each must be in the version)
            if tree.find(version.tree, self.read_tree, rel, trusted=False) is None:
                raise InvalidInput(f"{rel} is not in version {version.id}")
        count = nbytes = file_bytes = 0
        links: dict[str, tree.Entry] = {}
        for rel in roots:
            for path, entry in self._entries(version, rel, checked=False):
                count += 1
                nbytes += entry.size
                if entry.kind == tree.LINK:
                    links[path] = entry
                elif entry.kind == tree.FILE:
                    file_bytes += entry.size
        # Links are checked as a checkout checks them: each target bounded and inside
        # the version, also when resolved through the other links placed with it.
        tree.validate_links(links, self._link_blob(links.items()))
        fileio.check_room(dest, file_bytes, "the download",
                          hint="free some space, or get only some paths")
        dest.mkdir(parents=True, exist_ok=True)
        batch: list[tuple[str, tree.Entry]] = []
        held = 0

        def write() -> None:
            small = {e.oid: e.size for _r, e in batch
                     if not e.chunks and e.size <= PACK_THRESHOLD}
            worktree.write_files(dest, batch, self._content(small, batch), advance)

        with self.reporter.task("downloading", count, nbytes) as advance:
            for rel in roots:
                for item in self._entries(version, rel, checked=True):
                    batch.append(item)
                    held += 0 if item[1].chunks else item[1].size
                    if held >= GET_BATCH_BYTES or len(batch) >= GET_BATCH_FILES:
                        write()
                        batch, held = [], 0
            if batch:
                write()
        return count

    def cat(self, version: Version, path: str) -> Iterator[Blob]:
        """The bytes of one file of `version`, in pieces, every piece checked before it
        is given out, and a chunked file's whole before its last piece (a large
        unchunked file is put aside and checked whole first)."""
        rel = normalize_user_path(path)
        found = dict(self.entries(version, rel)) if rel else {}
        entry = found.get(rel)
        if entry is None or entry.kind != tree.FILE:
            raise InvalidInput(f"{path} is not a file of version {version.id}")
        if entry.chunks:
            # Each chunk is checked as it comes; the file as a whole only at its end
            # (intact chunks in another order make another file): its last piece is
            # given out only once the whole is the file's id.
            stream = _Hashed(self.pieces(entry, rel), entry.size, rel)
            last: Blob | None = None
            for piece in stream:
                if last is not None:
                    yield last
                last = piece
            if stream.count != entry.size or stream.hasher.hexdigest() != entry.oid:
                raise CorruptObject(f"{rel}: its chunks, each intact, do not make the file "
                                    f"{entry.oid[:12]} its version names (a damaged or "
                                    f"hostile chunk list on {self.url}); its last piece "
                                    f"was not written")
            if last is not None:
                yield last
            return
        if entry.size <= PACK_THRESHOLD:
            yield from self.pieces(entry)
            return
        with self._spooled(entry, rel) as held:
            yield from iter(lambda: held.read(1 << 20), b"")

    def _spooled(self, entry: tree.Entry, label: str) -> BinaryIO:
        """A large unchunked file (a loose object), put aside (the cache's entry: see
        `_cached_loose`; from the origin: `_aside`, in memory or an unnamed temp file
        once the temp directory's disk has room) and checked whole before anything
        reads it; at its start."""
        cached = self._cached_loose(entry, label)  # (checked already: no second copy)
        if cached is not None:
            return cached
        held = self._aside(entry.size, label)   # (the disk's room checked first)
        try:
            stream = _Hashed(self._stream_origin(entry, label), entry.size, label)
            for piece in stream:
                try:
                    held.write(piece)
                except OSError as exc:
                    raise _cannot_aside(label, exc) from None
            if stream.count != entry.size or stream.hasher.hexdigest() != entry.oid:
                raise CorruptObject(f"{label} arrived damaged from {self.url}; nothing of it "
                                    f"was returned")
            held.seek(0)
        except BaseException:
            held.close()
            raise
        return held  # (readable, seekable)

    def _link_blob(self, items: Iterable[tuple[str, tree.Entry]]) -> Callable[[str], bytes]:
        """Reads a link's target by its id (what tree.validate_links asks for)."""
        sizes = {e.oid: e.size for _p, e in items if e.kind == tree.LINK}
        return lambda oid: self.read_blob(oid, sizes[oid])

    def _content(self, small: dict[str, int], batch: list[tuple[str, tree.Entry]]
                 ) -> Callable[[tree.Entry], Iterable[Blob]]:
        """What `write_files` reads each file from: the small ones read at once (neighbours
        in one GET), the others piece by piece."""
        got = self.read_blobs(small) if small else {}
        names = {e.oid: rel for rel, e in batch}  # (what an error names a file by)
        return lambda e: [got[e.oid]] if e.oid in got else self.pieces(e, names.get(e.oid))

    def pieces(self, entry: tree.Entry, label: str | None = None) -> Iterator[Blob]:
        """A file's contents in pieces, in order (each chunk, or the whole blob), each
        checked, a loose one as it streams (the caller checks the whole): what `get` and
        `cat` write out. `label` names the file in errors (default: its id)."""
        if not entry.chunks and entry.size > PACK_THRESHOLD:
            yield from self._stream_loose(entry, label)
            return
        if not entry.chunks:
            yield self.read_blob(entry.oid, entry.size)
            return
        chunks = self.chunk_list(entry)
        fetch = _Prefetch(self, chunks)
        for i in range(len(chunks.chunks)):
            yield fetch(i)


_TMP_HINT = ("a large unchunked file read without a store is checked whole in the temp "
             "directory before it is used; free some space there, or set TMPDIR to a "
             "directory on a disk with room")


def _cannot_aside(label: str, exc: OSError) -> CannotWrite:
    """The temp directory refused the private copy of `label`: this machine's trouble,
    never the cache entry's."""
    return CannotWrite(f"cannot put {label} aside in {tempfile.gettempdir()}: "
                       f"{exc.strerror or exc}", hint=_TMP_HINT)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


_LIVE_READERS: weakref.WeakSet[RemoteReader] = weakref.WeakSet()
_LIVE_PREFETCHES: weakref.WeakSet[_Prefetch] = weakref.WeakSet()
"""The readers and open chunked files of this process, told when it forks."""


def _forked() -> None:
    for reader in list(_LIVE_READERS):
        reader._after_fork()
    for prefetch in list(_LIVE_PREFETCHES):
        prefetch._after_fork()


os.register_at_fork(after_in_child=_forked)


class _Hashed:
    """Pieces passed through while they are hashed and counted."""

    def __init__(self, pieces: Iterable[Blob], size: int, label: str = "") -> None:
        self._pieces = pieces
        self._size = size
        self._label = label   # (what an error names the file by)
        self.hasher = new_hasher()
        self.count = 0

    def __iter__(self) -> Iterator[Blob]:
        for piece in self._pieces:
            self.count += len(piece)
            if self.count > self._size:
                raise CorruptObject(f"{self._label or 'a file'} arrived longer than its "
                                    f"entry says ({self._size:,} bytes)")
            self.hasher.update(piece)
            yield piece


class _Prefetch:
    """Chunk i of a chunked file on demand. The file is cut into SPAN-sized runs of
    chunks; a read that lands where the last one ended (a sequential reader) keeps
    AHEAD jobs of SEQUENTIAL_SPANS runs each in flight ahead of it, any other read
    fetches the one run it needs (a random read of a byte costs about SPAN)."""

    def __init__(self, reader: RemoteReader, chunks: tree.ChunkList) -> None:
        self._reader = reader
        self._chunks = chunks.chunks
        self._span_of: list[int] = []
        self._spans: list[tuple[int, int]] = []   # [first chunk, end chunk)
        first, total = 0, 0
        for i, (_oid, n) in enumerate(self._chunks):
            if total and total + n > SPAN:
                self._spans.append((first, i))
                first, total = i, 0
            total += n
            self._span_of.append(len(self._spans))
        if self._chunks:
            self._spans.append((first, len(self._chunks)))
        self._jobs: dict[int, Future[dict[str, Blob]]] = {}   # span → the job reading it
        self._pool: ThreadPoolExecutor | None = None
        self._last = -2
        _LIVE_PREFETCHES.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the jobs in flight were the parent's threads', which do not
        exist here (a read waiting on one would wait for ever); they are read again."""
        self._jobs = {}
        self._pool = None

    def _submit(self, first: int, count: int) -> None:
        """One job reading spans [first, first + count) (those not being read already)."""
        spans = [s for s in range(first, min(first + count, len(self._spans)))
                 if s not in self._jobs]
        if not spans:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(AHEAD)
        lo, hi = self._spans[spans[0]][0], self._spans[spans[-1]][1]
        job = self._pool.submit(self._reader.read_blobs, dict(self._chunks[lo:hi]))
        for s in spans:
            self._jobs[s] = job

    def __call__(self, i: int) -> Blob:
        span = self._span_of[i]
        # (a reader with several reads in flight, as the kernel's read-ahead through a
        # mount is, asks a little out of order: spans up to NEAR from the furthest one
        # read still count as sequential, and the jobs of those behind it are kept)
        sequential = self._last >= 0 and abs(span - self._last) <= NEAR
        if sequential:
            self._last = max(self._last, span)
            base = self._last - self._last % SEQUENTIAL_SPANS  # (jobs start at multiples
            reach = base + AHEAD * SEQUENTIAL_SPANS              # of SEQUENTIAL_SPANS)
            for first in range(base, reach, SEQUENTIAL_SPANS):
                self._submit(first, SEQUENTIAL_SPANS)
            self._submit(span, 1)  # (one behind the jobs above, and not read yet)
            keep = self._last - NEAR
        else:
            self._last = keep = span
            self._submit(span, 1)
            reach = span + 1
        for old in [s for s in self._jobs if s < keep or s >= reach]:
            job = self._jobs.pop(old)
            if job not in self._jobs.values():  # (a job may read several spans)
                job.cancel()
        return self._jobs[span].result()[self._chunks[i][0]]

    def __del__(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
