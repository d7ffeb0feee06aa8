"""Unit tests of dsv/objects.py: the pack format (docs/format.md, "Packs"), the object store
reading packs and loose objects, PackWriter and Ingest.

Packs are built two ways (in memory with `encode_pack`, on disk with `PackWriter`), read
back through the raw functions (`parse_pack_table`, `parse_pack_index`) and through
`ObjectStore`, and then damaged byte by byte. Where an object lives is answered by a
dict-backed locator, so these tests do not depend on the index."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv import objects
from dsv.errors import CorruptObject, DsvError, InvalidInput, MissingObject
from dsv.objects import (KIND_BLOB, KIND_TREE, KIND_VERSION, MAX_PACKED_OBJECT, PACK_END_MAGIC,
                         PACK_MAGIC, Ingest, ObjectStore, PackEntry, PackInfo, encode_pack,
                         pack_id_of, pack_tail_size, parse_pack_index, parse_pack_table)

ENTRY = struct.Struct(">32sQQB")
TRAILER = struct.Struct(">QQ8s")


def h(data: bytes) -> str:
    """blake3 hex, computed here independently of dsv.hashing."""
    return blake3.blake3(data).hexdigest()


class DictLocator:
    """An ObjectLocator backed by a dict; counts the batched queries it answers."""

    def __init__(self) -> None:
        self.where: dict[str, tuple[str, int, int]] = {}
        self.batches: list[int] = []

    def locate(self, oid: str) -> tuple[str, int, int] | None:
        return self.where.get(oid)

    def locate_many(self, oids):
        oids = list(oids)
        self.batches.append(len(oids))
        return {o: self.where[o] for o in oids if o in self.where}

    def packed_ids(self, oids):
        return set(self.locate_many(oids))

    def any_packed(self) -> bool:
        return bool(self.where)

    def record(self, pack_id: str, entries) -> None:
        for e in entries:
            self.where.setdefault(e.oid, (pack_id, e.offset, e.length))


@pytest.fixture
def locator() -> DictLocator:
    return DictLocator()


@pytest.fixture
def store(tmp_path: Path, locator: DictLocator):
    root = tmp_path / "objects"
    ObjectStore.create_layout(root)
    (tmp_path / "tmp").mkdir()
    s = ObjectStore(root, locator, tmp_path / "tmp")
    yield s
    s.close()


TREE = b'{"entries":[["a.txt","f",420,5,"' + b"0" * 64 + b'"]],"type":"tree","v":1}'
EMPTY_TREE = b'{"entries":[],"type":"tree","v":1}'
RECORD = b'{"committed":"2024-01-01T00:00:00Z","message":"first","tree":"' + b"1" * 64 + b'"}'

# One object of each kind, small and empty (an empty blob is a legal object: an empty file).
SAMPLE = [(KIND_BLOB, b"data\n"), (KIND_BLOB, b""), (KIND_BLOB, b"real.txt"),
          (KIND_TREE, TREE), (KIND_TREE, EMPTY_TREE), (KIND_VERSION, RECORD)]


def triples(items):
    return [(h(data), kind, data) for kind, data in items]


def install(store: ObjectStore, locator: DictLocator, items, *, name: str | None = None,
            data: bytes | None = None):
    """encode_pack(items), written read-only as packs/<id>.pack (or `name`), and located."""
    pack_id, pack, entries = encode_pack(triples(items))
    if data is not None:
        pack = data
    path = store.pack_path(name or pack_id)
    path.write_bytes(pack)
    os.chmod(path, 0o444)
    locator.record(name or pack_id, entries)
    return name or pack_id, pack, entries


def rewrite(path: Path, data: bytes) -> None:
    """Replace a (read-only) pack's bytes in place: same inode, so cached fds see it."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
    os.chmod(path, 0o444)


def craft(bodies: list[bytes], rows: list[tuple[bytes, int, int, int]],
          table_offset: int | None = None, count: int | None = None,
          end: bytes = PACK_END_MAGIC) -> tuple[str, bytes]:
    """A pack with arbitrary table rows (raw oid, offset, length, kind); its id is computed
    the way dsv does, so it is *named* consistently and only the table can be wrong."""
    head = PACK_MAGIC + b"".join(bodies)
    table = b"".join(ENTRY.pack(*r) for r in rows)
    trailer = TRAILER.pack(len(rows) if count is None else count,
                           len(head) if table_offset is None else table_offset, end)
    return h(table + trailer), head + table + trailer


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ---- the byte layout ------------------------------------------------------------------------

def test_layout_constants_match_the_format_document() -> None:
    assert objects._ENTRY.size == 49 and objects._ENTRY.format == ">32sQQB"
    assert objects._TRAILER.size == 24 and objects._TRAILER.format == ">QQ8s"
    assert (PACK_MAGIC, PACK_END_MAGIC) == (b"DSVPACK1", b"DSVPEND1")
    assert (KIND_BLOB, KIND_TREE, KIND_VERSION) == (0, 1, 2)
    assert objects.PACK_THRESHOLD == 1 << 20 and objects.PACK_TARGET_SIZE == 32 << 20
    assert pack_tail_size(0) == 24
    # docs/format.md's example: 4 objects, table at 565, 785 bytes in all.
    assert 565 + pack_tail_size(4) == 785


def test_encode_pack_writes_exactly_the_documented_bytes() -> None:
    items = [(KIND_BLOB, b"data\n"), (KIND_BLOB, b"real.txt"), (KIND_TREE, TREE)]
    pack_id, data, entries = encode_pack(triples(items))
    t = 8 + 5 + 8 + len(TREE)
    table = (ENTRY.pack(bytes.fromhex(h(b"data\n")), 8, 5, 0)
             + ENTRY.pack(bytes.fromhex(h(b"real.txt")), 13, 8, 0)
             + ENTRY.pack(bytes.fromhex(h(TREE)), 21, len(TREE), 1))
    trailer = struct.pack(">QQ", 3, t) + b"DSVPEND1"
    assert data == b"DSVPACK1" + b"data\n" + b"real.txt" + TREE + table + trailer
    assert len(data) == t + 3 * 49 + 24
    # The id covers the table and trailer, not the whole file.
    assert pack_id == h(table + trailer) == h(data[t:]) == pack_id_of(table, trailer)
    assert pack_id != h(data)
    assert entries == [PackEntry(h(b"data\n"), 8, 5, KIND_BLOB),
                       PackEntry(h(b"real.txt"), 13, 8, KIND_BLOB),
                       PackEntry(h(TREE), 21, len(TREE), KIND_TREE)]


@pytest.mark.parametrize("before", [b"", b"x" * 7, b"y" * 5000])
def test_encode_pack_into_a_used_buffer_writes_the_same_bytes(before: bytes) -> None:
    items = triples([(KIND_BLOB, b"data\n"), (KIND_BLOB, b"real.txt"), (KIND_TREE, TREE)])
    buf = bytearray(before)               # empty, smaller and larger than the pack
    pack_id, data, entries = encode_pack(items, into=buf)
    fresh_id, fresh, fresh_entries = encode_pack(items)
    assert data is buf
    assert (pack_id, bytes(data), entries) == (fresh_id, bytes(fresh), fresh_entries)


def test_encode_pack_into_a_buffer_still_viewed_elsewhere_uses_a_new_one() -> None:
    items = triples([(KIND_BLOB, b"data\n")])
    buf = bytearray(b"z" * 3)
    held = memoryview(buf)                # (cannot be resized while this lives)
    _pack_id, data, _entries = encode_pack(items, into=buf)
    assert data is not buf and bytes(held) == b"zzz"
    assert bytes(data) == bytes(encode_pack(items)[1])


def test_encode_pack_of_nothing_is_a_valid_empty_pack(tmp_path: Path) -> None:
    pack_id, data, entries = encode_pack([])
    assert data == b"DSVPACK1" + struct.pack(">QQ", 0, 8) + b"DSVPEND1"
    assert entries == [] and pack_id == h(data[8:])
    (tmp_path / "p").write_bytes(data)
    assert parse_pack_table(tmp_path / "p") == []
    assert parse_pack_index(data[8:], pack_id) == ([], 32)


# ---- round trips ----------------------------------------------------------------------------

def test_each_kind_small_and_empty_round_trips_through_store_and_raw_functions(
        store: ObjectStore, locator: DictLocator) -> None:
    pack_id, data, entries = install(store, locator, SAMPLE)
    path = store.pack_path(pack_id)
    assert path.read_bytes() == data
    assert parse_pack_table(path) == entries == store.read_pack_entries(pack_id)
    assert [(e.kind, e.length) for e in entries] == [(k, len(d)) for k, d in SAMPLE]
    assert parse_pack_index(data[-pack_tail_size(len(SAMPLE)):], pack_id) == (entries, len(data))
    for kind, body in SAMPLE:
        oid = h(body)
        assert store.read(oid) == body
        assert store.read_packed(locator.where[oid]) == body
        assert store.has(oid) and not store.has_loose(oid)
    assert store.verify_pack(pack_id) == (True, [], len(SAMPLE))
    assert list(store.iter_pack_ids()) == [pack_id]
    # Raw slices agree with the entries.
    for e, (_, body) in zip(entries, SAMPLE):
        assert data[e.offset:e.offset + e.length] == body


def test_many_objects_through_ingest_match_encode_pack_byte_for_byte(
        store: ObjectStore, locator: DictLocator) -> None:
    items = [(i % 3, f"object {i}\n".encode() * (i % 7)) for i in range(1500)]
    items = list({h(d): (k, d) for k, d in items}.values())  # distinct contents only
    ingest = Ingest(store)
    for oid, kind, body in triples(items):
        ingest.add(oid, kind, body)
    packs = ingest.publish()
    assert len(packs) == 1
    info = packs[0]
    path = store.pack_path(info.id)
    expected_id, expected, expected_entries = encode_pack(triples(items))
    assert path.read_bytes() == expected
    assert (info.id, info.size, info.entries) == (expected_id, len(expected), expected_entries)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert listing(store.tmp_dir) == []
    locator.record(info.id, info.entries)
    assert parse_pack_table(path) == info.entries
    for oid, _, body in triples(items):
        assert store.read(oid) == body
    assert store.verify_pack(info.id) == (True, [], len(items))


blobs = st.tuples(st.integers(KIND_BLOB, KIND_VERSION), st.binary(max_size=300))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(blobs, max_size=25, unique_by=lambda kd: kd[1]))
def test_property_pack_writer_and_encode_pack_agree_and_read_back(items) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "objects"
        ObjectStore.create_layout(root)
        (Path(tmp) / "tmp").mkdir()
        locator = DictLocator()
        store = ObjectStore(root, locator, Path(tmp) / "tmp")
        try:
            pack_id, data, entries = encode_pack(triples(items))
            writer = store.new_pack()
            for oid, kind, body in triples(items):
                writer.add(oid, kind, memoryview(body))
            info = writer.finish()
            if info is not None:
                store.publish_pack(info, writer.tmp)
            if not items:
                assert info is None and listing(root / "packs") == []
                assert listing(store.tmp_dir) == []
                return
            assert isinstance(info, PackInfo)
            assert (info.id, info.size, info.entries) == (pack_id, len(data), entries)
            path = store.pack_path(pack_id)
            assert path.read_bytes() == data
            assert parse_pack_table(path) == entries
            tail = data[-pack_tail_size(len(items)):]
            assert parse_pack_index(tail, pack_id) == (entries, len(data))
            locator.record(pack_id, entries)
            for oid, kind, body in triples(items):
                assert store.read(oid) == body
            assert store.verify_pack(pack_id) == (True, [], len(items))
        finally:
            store.close()


def add_large_file(store: ObjectStore, src: Path, expect: str | None = None) -> tuple[str, int]:
    """Stage a large file through an Ingest and publish it."""
    with Ingest(store) as ingest:
        got = ingest.add_large_file(src, expect)
        ingest.publish()
    return got


def add_large_stream(store: ObjectStore, chunks, observe=None,
                     expect: str | None = None) -> tuple[str, int]:
    """Stage a stream through an Ingest and publish it."""
    with Ingest(store) as ingest:
        got = ingest.add_large_stream(chunks, observe=observe, expect=expect)
        ingest.publish()
    return got


# ---- PackWriter ----------------------------------------------------------------------------

def test_pack_writer_stores_a_repeated_oid_once(store: ObjectStore) -> None:
    writer = store.new_pack()
    writer.add(h(b"x"), KIND_BLOB, b"x")
    writer.add(h(b"x"), KIND_BLOB, b"x")
    writer.add(h(b"y"), KIND_TREE, b"y")
    info = writer.finish()
    store.publish_pack(info, writer.tmp)
    assert [(e.oid, e.offset, e.length) for e in info.entries] == \
        [(h(b"x"), 8, 1), (h(b"y"), 9, 1)]
    assert info.size == 8 + 2 + 2 * 49 + 24 == store.pack_path(info.id).stat().st_size


def test_empty_or_aborted_pack_writer_leaves_no_file(store: ObjectStore) -> None:
    assert store.new_pack().finish() is None
    writer = store.new_pack()
    writer.add(h(b"abc"), KIND_BLOB, b"abc")
    writer.abort()
    assert listing(store.pack_dir) == [] and listing(store.tmp_dir) == []


# ---- Ingest --------------------------------------------------------------------------------

def test_ingest_skips_objects_the_locator_already_has(store, locator) -> None:
    old_id, _, _ = install(store, locator, [(KIND_BLOB, b"old")])
    ingest = Ingest(store)
    ingest.add(h(b"old"), KIND_BLOB, b"old")
    ingest.add(h(b"new"), KIND_BLOB, b"new")
    (info,) = ingest.publish()
    assert [e.oid for e in info.entries] == [h(b"new")]
    assert listing(store.pack_dir) == sorted([f"{old_id}.pack", f"{info.id}.pack"])


def test_ingest_with_nothing_new_writes_no_pack(store, locator) -> None:
    pack_id, _, _ = install(store, locator, SAMPLE)
    ingest = Ingest(store)
    for oid, kind, body in triples(SAMPLE):
        ingest.add(oid, kind, body)
    assert ingest.publish() == []
    assert listing(store.pack_dir) == [f"{pack_id}.pack"] and listing(store.tmp_dir) == []


def test_ingest_queries_in_batches_and_dedups_across_them(store, locator, monkeypatch) -> None:
    monkeypatch.setattr(Ingest, "_BATCH_OBJECTS", 4)
    install(store, locator, [(KIND_BLOB, b"held")])   # (a store holding nothing is not asked)
    ingest = Ingest(store)
    bodies = [f"b{i}".encode() for i in range(10)]
    for body in bodies + bodies[:3] + bodies:          # repeats, some in later batches
        ingest.add(h(body), KIND_BLOB, body)
    (info,) = ingest.publish()
    assert locator.batches == [4, 4, 2]                # every later add was already pending
    assert [e.oid for e in info.entries] == [h(b) for b in bodies]


def test_an_ingest_into_a_store_holding_nothing_asks_the_index_nothing(
        store, locator, monkeypatch) -> None:
    """A new store's first commit: nothing added can be stored already but what this
    ingest packed itself, which it still writes once. An ingest begun once something is
    packed asks again."""
    monkeypatch.setattr(Ingest, "_BATCH_OBJECTS", 4)
    bodies = [f"b{i}".encode() for i in range(10)]
    ingest = Ingest(store)
    for body in bodies + bodies[:3] + bodies:
        ingest.add(h(body), KIND_BLOB, body)
    ingest.add_borrowed(KIND_BLOB, [(h(b"b1"), memoryview(b"b1")),
                                    (h(b"c"), memoryview(b"c"))])
    (info,) = ingest.publish()
    assert locator.batches == []
    assert sorted(e.oid for e in info.entries) == sorted(h(b) for b in bodies + [b"c"])
    locator.record(info.id, info.entries)
    later = Ingest(store)
    later.add(h(b"b2"), KIND_BLOB, b"b2")
    later.add(h(b"d"), KIND_BLOB, b"d")
    (more,) = later.publish()
    assert locator.batches == [2]
    assert [e.oid for e in more.entries] == [h(b"d")]


def test_ingest_flushes_a_batch_by_bytes(store, locator, monkeypatch) -> None:
    monkeypatch.setattr(Ingest, "_BATCH_BYTES", 100)
    install(store, locator, [(KIND_BLOB, b"held")])
    ingest = Ingest(store)
    for i in range(5):
        ingest.add(h(bytes([i]) * 60), KIND_BLOB, bytes([i]) * 60)
    ingest.publish()
    assert locator.batches == [2, 2, 1]


def test_ingest_rolls_over_to_a_new_pack_at_the_target_size(store, locator, monkeypatch) -> None:
    monkeypatch.setattr(objects, "PACK_TARGET_SIZE", 100)
    items = [(KIND_BLOB, bytes([i]) * 40) for i in range(7)]
    ingest = Ingest(store)
    for oid, kind, body in triples(items):
        ingest.add(oid, kind, body)
    packs = ingest.publish()
    # 8 + 40·n ≥ 100 after the 3rd object: packs of 3, 3 and 1 objects.
    assert [len(p.entries) for p in packs] == [3, 3, 1]
    assert [e.oid for p in packs for e in p.entries] == [h(b) for _, b in items]
    assert listing(store.pack_dir) == sorted(f"{p.id}.pack" for p in packs)
    for p in packs:
        assert parse_pack_table(store.pack_path(p.id)) == p.entries
        locator.record(p.id, p.entries)
    for _, body in items:
        assert store.read(h(body)) == body


def test_ingest_add_new_does_not_ask_the_locator(store, locator) -> None:
    install(store, locator, [(KIND_TREE, EMPTY_TREE)])
    ingest = Ingest(store)
    ingest.add_new(h(EMPTY_TREE), KIND_TREE, EMPTY_TREE)
    (info,) = ingest.publish()
    assert locator.batches == [0]
    assert info.entries == [PackEntry(h(EMPTY_TREE), 8, len(EMPTY_TREE), KIND_TREE)]


def test_ingest_abort_leaves_no_temp_file(store, locator) -> None:
    ingest = Ingest(store)
    ingest.add_new(h(b"q"), KIND_BLOB, b"q")
    ingest.add(h(b"r"), KIND_BLOB, b"r")
    ingest.abort()
    assert listing(store.tmp_dir) == [] and listing(store.pack_dir) == []
    assert ingest.publish() == []


def test_ingest_add_borrowed_copies_before_returning_and_skips_what_is_stored(
        store, locator) -> None:
    install(store, locator, [(KIND_BLOB, b"old")])
    ring = bytearray(b"oldnewnewxyz")
    view = memoryview(ring)
    pieces = [(h(b"old"), view[0:3]), (h(b"new"), view[3:6]), (h(b"new"), view[6:9]),
              (h(b"xyz"), view[9:12])]
    ingest = Ingest(store)
    ingest.add_borrowed(KIND_BLOB, pieces)
    ring[:] = b"\0" * len(ring)          # the caller reuses its buffer right away
    ingest.add_borrowed(KIND_BLOB, [(h(b"xyz"), memoryview(b"xyz"))])  # pending already
    (info,) = ingest.publish()
    # One query for the block; none for the second call; publish's flush has nothing.
    assert locator.batches == [4, 0]
    assert [(e.oid, e.length) for e in info.entries] == [(h(b"new"), 3), (h(b"xyz"), 3)]
    locator.record(info.id, info.entries)
    assert store.read(h(b"new")) == b"new" and store.read(h(b"xyz")) == b"xyz"


def test_ingest_add_new_run_writes_adjacent_objects_at_once_and_packs_them_right(
        store, locator, monkeypatch) -> None:
    # A range as a download reads it: "aaa" "bb" then a gap, "cccc", an overlapping
    # "cc" (its own object over bytes of the one before), "aaa" again (skipped: added).
    data = b"aaabbXXcccc"
    run = [(h(b"aaa"), 0, 3), (h(b"bb"), 3, 2), (h(b"cccc"), 7, 4), (h(b"cc"), 9, 2),
           (h(b"aaa"), 0, 3)]
    writes: list[bytes] = []
    original = objects.fileio.DirectWriter.write
    monkeypatch.setattr(objects.fileio.DirectWriter, "write",
                        lambda self, d: (writes.append(bytes(d)), original(self, d))[1])
    ingest = Ingest(store)
    ingest.add_new_run(KIND_BLOB, memoryview(data), run)
    ingest.add_new_run(KIND_BLOB, memoryview(b"bbdd"), [(h(b"bb"), 0, 2), (h(b"dd"), 2, 2)])
    assert ingest.holds(h(b"cc")) and ingest.holds(h(b"dd"))
    (info,) = ingest.publish()
    # One write per stretch of adjacent objects (not one per object), gaps left out.
    assert writes[1:4] == [b"aaabb", b"cccc", b"cc"] and writes[4] == b"dd"
    assert [(e.oid, e.offset, e.length) for e in info.entries] == [
        (h(b"aaa"), 8, 3), (h(b"bb"), 11, 2), (h(b"cccc"), 13, 4), (h(b"cc"), 17, 2),
        (h(b"dd"), 19, 2)]
    expected_id, expected, _entries = encode_pack(
        [(h(d), KIND_BLOB, d) for d in (b"aaa", b"bb", b"cccc", b"cc", b"dd")])
    assert (info.id, store.pack_path(info.id).read_bytes()) == (expected_id, expected)
    locator.record(info.id, info.entries)
    assert store.verify_pack(info.id) == (True, [], 5)


def test_ingest_seals_packs_in_the_background_and_raises_a_failed_seal(
        store, locator, monkeypatch) -> None:
    monkeypatch.setattr(objects, "PACK_TARGET_SIZE", 100)
    real_finish = objects.PackWriter.finish
    calls = []

    def finish(self):
        calls.append(self.tmp)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_finish(self)

    monkeypatch.setattr(objects.PackWriter, "finish", finish)
    ingest = Ingest(store)
    with pytest.raises(OSError, match="No space left"):
        with ingest:
            for i in range(7):
                ingest.add_new(h(bytes([i]) * 40), KIND_BLOB, bytes([i]) * 40)
            ingest.publish()
    assert len(calls) == 3                       # every pack was handed to a sealer
    assert listing(store.tmp_dir) == [] and listing(store.pack_dir) == []


def test_ingest_abort_waits_for_packs_being_sealed(store, locator, monkeypatch) -> None:
    import threading
    monkeypatch.setattr(objects, "PACK_TARGET_SIZE", 100)
    release = threading.Event()
    real_finish = objects.PackWriter.finish

    finished = []

    def slow_finish(self):
        release.wait(10)
        try:
            return real_finish(self)
        finally:
            finished.append(self.tmp)

    monkeypatch.setattr(objects.PackWriter, "finish", slow_finish)
    ingest = Ingest(store)
    for i in range(3):
        ingest.add_new(h(bytes([i]) * 40), KIND_BLOB, bytes([i]) * 40)
    assert len(listing(store.tmp_dir)) == 1      # sealing, not sealed
    threading.Timer(0.2, release.set).start()
    ingest.abort()
    assert len(finished) == 1                    # abort returned after the seal ended
    assert listing(store.tmp_dir) == [] and listing(store.pack_dir) == []


# ---- corruption of a pack: every byte -------------------------------------------------------

CORRUPTIBLE = [(KIND_BLOB, b"data\n"), (KIND_BLOB, b""), (KIND_TREE, EMPTY_TREE),
               (KIND_VERSION, RECORD)]


def regions(entries, size: int) -> list[tuple[str, int, int]]:
    t = size - pack_tail_size(len(entries))
    out = [("header", 0, 8)]
    out += [(f"object {e.oid}", e.offset, e.offset + e.length) for e in entries if e.length]
    out += [(f"entry {i}", t + 49 * i, t + 49 * (i + 1)) for i in range(len(entries))]
    out += [("trailer", size - 24, size)]
    return out


def test_regions_cover_every_byte_of_the_pack(store, locator) -> None:
    _, data, entries = install(store, locator, CORRUPTIBLE)
    covered = sorted(b for _, lo, hi in regions(entries, len(data)) for b in range(lo, hi))
    assert covered == list(range(len(data)))


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_change_is_detected(store, locator, mask: int) -> None:
    pack_id, data, _ = install(store, locator, CORRUPTIBLE)
    path = store.pack_path(pack_id)
    missed = []
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= mask
        rewrite(path, bytes(bad))
        try:
            parse_pack_table(path)
        except CorruptObject:
            assert store.verify_pack(pack_id) == (False, [], 0)
            continue
        ok, damaged, _ = store.verify_pack(pack_id)
        if ok and not damaged:
            missed.append(i)
    rewrite(path, data)
    assert missed == []
    assert store.verify_pack(pack_id) == (True, [], len(CORRUPTIBLE))


def test_flipped_header_byte(store, locator) -> None:
    pack_id, data, _ = install(store, locator, CORRUPTIBLE)
    for i in range(8):
        rewrite(store.pack_path(pack_id), data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:])
        with pytest.raises(CorruptObject, match=rf"^pack {pack_id}\.pack has a bad header$"):
            parse_pack_table(store.pack_path(pack_id))
        assert store.verify_pack(pack_id) == (False, [], 0)


@pytest.mark.parametrize("which", range(4))
def test_flipped_byte_in_each_object_body(store, locator, which: int) -> None:
    pack_id, data, entries = install(store, locator, CORRUPTIBLE)
    target = entries[which]
    if target.length == 0:
        # An empty object has no byte to flip; its neighbours' damage must not touch it.
        target = entries[which + 1]
        assert store.read(entries[which].oid) == b""
    for pos in (target.offset, target.offset + target.length - 1):
        rewrite(store.pack_path(pack_id), data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1:])
        # The table is intact, so the pack still parses and matches its id ...
        assert parse_pack_table(store.pack_path(pack_id)) == entries
        # ... but exactly the damaged object is reported, and reading it fails.
        assert store.verify_pack(pack_id) == (True, [target.oid], len(entries))
        with pytest.raises(CorruptObject, match=r"is corrupt: its bytes do not match its hash"):
            store.read(target.oid)
        assert store.read(target.oid, verify=False) != data[target.offset:target.offset
                                                             + target.length]
        for e in entries:
            if e is not target:
                assert store.read(e.oid) == data[e.offset:e.offset + e.length]


@pytest.mark.parametrize("field,at", [("oid", 0), ("oid", 31), ("offset", 7), ("length", 15),
                                      ("kind", 48)])
@pytest.mark.parametrize("row", [0, 3])
def test_flipped_byte_in_each_table_field(store, locator, field: str, at: int, row: int) -> None:
    pack_id, data, entries = install(store, locator, CORRUPTIBLE)
    t = len(data) - pack_tail_size(len(entries))
    pos = t + 49 * row + at
    bad = data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1:]
    rewrite(store.pack_path(pack_id), bad)
    try:
        parsed = parse_pack_table(store.pack_path(pack_id))
    except CorruptObject as exc:
        # Off by one past the table, or a kind that does not exist.
        assert str(exc) == f"pack {pack_id}.pack has an entry out of bounds"
        assert store.verify_pack(pack_id) == (False, [], 0)
        return
    ok, damaged, count = store.verify_pack(pack_id)
    assert not ok and count == len(entries)          # the table no longer matches the id
    changed = parsed[row]
    if field == "kind":
        assert changed.kind == entries[row].kind ^ 1 and damaged == []
    else:
        # A wrong oid, offset or length names bytes that do not hash to the oid.
        assert damaged == [changed.oid]


@pytest.mark.parametrize("at", list(range(24)))
def test_flipped_byte_in_the_trailer(store, locator, at: int) -> None:
    pack_id, data, _ = install(store, locator, CORRUPTIBLE)
    pos = len(data) - 24 + at
    rewrite(store.pack_path(pack_id), data[:pos] + bytes([data[pos] ^ 0x04]) + data[pos + 1:])
    with pytest.raises(CorruptObject, match=r"has a bad trailer$"):
        parse_pack_table(store.pack_path(pack_id))
    assert store.verify_pack(pack_id) == (False, [], 0)
    with pytest.raises(CorruptObject):
        parse_pack_index((data[:pos] + bytes([data[pos] ^ 0x04]) + data[pos + 1:])
                         [-pack_tail_size(4):], pack_id)


# ---- truncated and extended packs -------------------------------------------------------------

def test_truncated_pack_at_several_offsets(store, locator) -> None:
    pack_id, data, entries = install(store, locator, CORRUPTIBLE)
    path = store.pack_path(pack_id)
    t = len(data) - pack_tail_size(len(entries))
    for cut in (0, 1, 7, 8, 12, 31, 32, t - 1, t, t + 48, len(data) - 24, len(data) - 1):
        rewrite(path, data[:cut])
        expected = "is too short" if cut < 32 else "has a bad trailer"
        with pytest.raises(CorruptObject, match=rf"^pack {pack_id}\.pack {expected}$"):
            parse_pack_table(path)
        assert store.verify_pack(pack_id) == (False, [], 0), cut
    # Reading through the index's location of an object cut off: "cut short", not wrong bytes.
    rewrite(path, data[:10])
    with pytest.raises(CorruptObject, match=r"is cut short in pack"):
        store.read(h(b"data\n"))
    rewrite(path, data[:8])
    with pytest.raises(CorruptObject, match=r"is cut short in pack"):
        store.read(h(RECORD), verify=False)


@pytest.mark.parametrize("junk", [b"\0", b"\0" * 49, b"DSVPEND1", None])
def test_pack_extended_with_junk(store, locator, junk: bytes | None) -> None:
    pack_id, data, _ = install(store, locator, CORRUPTIBLE)
    if junk is None:
        junk = data[-24:]                 # a second copy of a valid trailer
    rewrite(store.pack_path(pack_id), data + junk)
    with pytest.raises(CorruptObject, match=r"has a bad trailer$"):
        parse_pack_table(store.pack_path(pack_id))
    assert store.verify_pack(pack_id) == (False, [], 0)


def test_junk_inserted_before_the_table(store, locator) -> None:
    pack_id, data, entries = install(store, locator, CORRUPTIBLE)
    t = len(data) - pack_tail_size(len(entries))
    rewrite(store.pack_path(pack_id), data[:t] + b"junk" + data[t:])
    with pytest.raises(CorruptObject, match=r"has a bad trailer$"):
        parse_pack_table(store.pack_path(pack_id))


# ---- crafted tables (consistently named: only the table is wrong) -----------------------------

A, B = b"alpha", b"bravo!"
RA, RB = bytes.fromhex(h(A)), bytes.fromhex(h(B))


def put(store: ObjectStore, pack_id: str, data: bytes) -> Path:
    path = store.pack_path(pack_id)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("rows", [
    [(RA, 8, 5, 0), (RB, 13, 7, 0)],            # B runs one byte into the table
    [(RA, 8, 5, 0), (RB, 10**6, 6, 0)],         # far past the end
    [(RA, 8, 5, 0), (RB, 2**64 - 1, 6, 0)],     # offset + length overflows 64 bits
    [(RA, 7, 5, 0), (RB, 13, 6, 0)],            # A starts inside the magic
    [(RA, 0, 5, 0), (RB, 13, 6, 0)],
    [(RA, 8, 5, 3), (RB, 13, 6, 0)],            # a kind that does not exist
    [(RA, 8, 5, 0), (RB, 13, 6, 255)],
], ids=["into-table", "past-end", "overflow", "into-magic", "at-zero", "kind-3", "kind-255"])
def test_entry_out_of_bounds_or_of_unknown_kind(store, rows) -> None:
    pack_id, data = craft([A, B], rows)
    path = put(store, pack_id, data)
    with pytest.raises(CorruptObject, match=rf"^pack {pack_id}\.pack has an entry out of bounds$"):
        parse_pack_table(path)
    with pytest.raises(CorruptObject, match=rf"^pack {pack_id[:12]} has an entry out of bounds$"):
        parse_pack_index(data[-pack_tail_size(2):], pack_id)
    assert store.verify_pack(pack_id) == (False, [], 0)


def test_pack_index_refuses_an_object_larger_than_any_pack_may_hold() -> None:
    # No file needed: a remote's index alone may claim a huge table offset.
    table = ENTRY.pack(RA, 8, MAX_PACKED_OBJECT + 1, 0)
    trailer = TRAILER.pack(1, 1 << 40, PACK_END_MAGIC)
    with pytest.raises(CorruptObject, match=r"entry out of bounds"):
        parse_pack_index(table + trailer, h(table + trailer))
    table = ENTRY.pack(RA, 8, MAX_PACKED_OBJECT, 0)
    entries, size = parse_pack_index(table + trailer, h(table + trailer))
    assert entries == [PackEntry(h(A), 8, MAX_PACKED_OBJECT, 0)] and size == (1 << 40) + 73


@pytest.mark.parametrize("rows,bad", [
    ([(RA, 8, 5, 0), (RB, 12, 6, 0)], [h(B)]),      # B overlaps A's last byte
    ([(RA, 8, 6, 0), (RB, 14, 5, 0)], [h(A), h(B)]),  # A too long, B too short
    ([(RA, 8, 4, 0), (RB, 13, 6, 0)], [h(A)]),      # A one byte short
    ([(RA, 13, 5, 0), (RB, 8, 6, 0)], [h(A), h(B)]),  # swapped places
], ids=["overlap", "long-and-short", "short", "swapped"])
def test_entry_in_bounds_but_naming_the_wrong_bytes(store, locator, rows, bad) -> None:
    pack_id, data = craft([A, B], rows)
    put(store, pack_id, data)
    entries = parse_pack_table(store.pack_path(pack_id))  # bounds are fine ...
    locator.record(pack_id, entries)
    assert store.verify_pack(pack_id) == (True, bad, 2)   # ... the hashes are not
    for oid in bad:
        with pytest.raises(CorruptObject, match=rf"object {oid[:12]} is corrupt"):
            store.read(oid)


def test_duplicate_oid_in_a_table_damaged_copy_is_reported(store, locator) -> None:
    # The format says an object appears at most once; whatever a reader makes of a table
    # that breaks that, a damaged copy must not pass verification.
    pack_id, data = craft([A, b"alphx"], [(RA, 8, 5, 0), (RA, 13, 5, 0)])
    put(store, pack_id, data)
    entries = parse_pack_table(store.pack_path(pack_id))
    locator.record(pack_id, entries)
    assert store.verify_pack(pack_id) == (True, [h(A)], 2)
    assert store.read(h(A)) == A                          # the first location is the good one


def test_duplicate_oid_both_intact_reads_the_object(store, locator) -> None:
    pack_id, data = craft([A, A], [(RA, 8, 5, 0), (RA, 13, 5, 0)])
    put(store, pack_id, data)
    locator.record(pack_id, parse_pack_table(store.pack_path(pack_id)))
    assert store.read(h(A)) == A
    assert store.verify_pack(pack_id)[:2] == (True, [])


def test_wrong_kind_in_place_is_caught_by_the_pack_id(store, locator) -> None:
    pack_id, data, entries = install(store, locator, CORRUPTIBLE)
    kind_at = len(data) - pack_tail_size(4) + 48     # entry 0's kind: blob → version
    bad = data[:kind_at] + b"\x02" + data[kind_at + 1:]
    rewrite(store.pack_path(pack_id), bad)
    parsed = parse_pack_table(store.pack_path(pack_id))
    assert parsed[0] == PackEntry(entries[0].oid, 8, 5, KIND_VERSION)
    assert store.verify_pack(pack_id) == (False, [], 4)
    with pytest.raises(CorruptObject, match="does not match its name"):
        parse_pack_index(bad[-pack_tail_size(4):], pack_id)


def test_bad_trailers_even_when_named_consistently(store) -> None:
    cases = {
        "end magic": craft([A], [(RA, 8, 5, 0)], end=b"DSVPEND2"),
        "count too high": craft([A], [(RA, 8, 5, 0)], count=2),
        "count too low": craft([A], [(RA, 8, 5, 0)], count=0),
        "table offset": craft([A], [(RA, 8, 5, 0)], table_offset=12),
    }
    for what, (pack_id, data) in cases.items():
        with pytest.raises(CorruptObject, match=r"has a bad trailer$"):
            parse_pack_table(put(store, pack_id, data))
        if what != "table offset":   # parse_pack_index cannot see where the table starts
            with pytest.raises(CorruptObject,
                               match=rf"^pack index {pack_id[:12]} has a bad trailer$"):
                parse_pack_index(data[-pack_tail_size(1):], pack_id)


# ---- a pack whose name does not match its contents ---------------------------------------------

def test_pack_renamed_to_another_id(store, locator) -> None:
    pack_id, data, entries = install(store, locator, CORRUPTIBLE)
    other_id, _, _ = encode_pack(triples([(KIND_BLOB, b"other")]))
    store.pack_path(other_id).write_bytes(data)
    # The table itself is fine, so it parses; verification sees the name is wrong.
    assert parse_pack_table(store.pack_path(other_id)) == entries
    assert store.verify_pack(other_id) == (False, [], len(entries))
    assert store.verify_pack(pack_id) == (True, [], len(entries))


def test_pack_index_must_hash_to_its_name() -> None:
    pack_id, data, entries = encode_pack(triples(CORRUPTIBLE))
    tail = data[-pack_tail_size(len(entries)):]
    assert parse_pack_index(tail, pack_id) == (entries, len(data))
    wrong = h(b"not this pack")
    with pytest.raises(CorruptObject, match=rf"^pack index {wrong[:12]} does not match its name$"):
        parse_pack_index(tail, wrong)
    for bad in (tail[1:], tail + b"\0", tail[:-1] + b"2", b"", b"x" * 23):
        with pytest.raises(CorruptObject, match=r"does not match its name"):
            parse_pack_index(bad, pack_id)


def test_pack_index_of_an_impossible_empty_pack_is_refused() -> None:
    tail = TRAILER.pack(0, 0, PACK_END_MAGIC)
    with pytest.raises(CorruptObject):
        parse_pack_index(tail, h(tail))


# ---- reading: missing things -------------------------------------------------------------------

def test_missing_object_and_missing_pack(store, locator) -> None:
    oid = h(b"nowhere")
    with pytest.raises(MissingObject) as info:
        store.read(oid)
    assert str(info.value) == f"object {oid[:12]} is missing from the store"
    assert "dsv verify" in info.value.hint
    assert not store.has(oid)
    gone = h(b"a pack that was deleted")
    locator.where[oid] = (gone, 8, 7)
    assert store.has(oid)
    with pytest.raises(MissingObject, match=rf"^pack {gone[:12]} is missing from the store$"):
        store.read(oid)


def test_delete_pack_closes_and_removes_it(store, locator) -> None:
    pack_id, _, _ = install(store, locator, CORRUPTIBLE)
    assert store.read(h(b"data\n")) == b"data\n"      # opens (and caches) the pack's fd
    store.delete_pack(pack_id)
    assert list(store.iter_pack_ids()) == []
    with pytest.raises(MissingObject, match="pack .* is missing"):
        store.read(h(b"data\n"))


# ---- loose objects -----------------------------------------------------------------------------

BIG = bytes(range(256)) * 1500 + b"tail"      # any size works; loose is the caller's choice


def test_add_large_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(BIG)
    oid, size = add_large_file(store, src)
    assert (oid, size) == (h(BIG), len(BIG))
    path = store.loose_path(oid)
    assert path == store.root / "loose" / oid[:2] / oid
    assert path.read_bytes() == BIG and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.read(oid) == BIG and store.has(oid) and store.has_loose(oid)
    assert list(store.iter_loose()) == [oid] and store.verify_loose(oid)
    # Again: the same object, one file, no temp file left behind.
    assert add_large_file(store, src) == (oid, len(BIG))
    assert os.listdir(path.parent) == [oid] and listing(store.tmp_dir) == []
    store.delete_loose(oid)
    assert not store.has(oid) and list(store.iter_loose()) == []


def test_add_large_stream_checks_the_expected_id(store: ObjectStore) -> None:
    seen: list[bytes] = []
    chunks = [BIG[:1000], BIG[1000:50000], BIG[50000:]]
    assert add_large_stream(store, iter(chunks), observe=lambda c: seen.append(bytes(c)),
                                  expect=h(BIG)) == (h(BIG), len(BIG))
    assert b"".join(seen) == BIG
    wrong = h(b"something else")
    with pytest.raises(CorruptObject, match=rf"^object {wrong[:12]} arrived corrupt: its bytes "
                                            rf"hash to {h(b'x' * 10)[:12]}$"):
        add_large_stream(store, [b"x" * 10], expect=wrong)
    assert list(store.iter_loose()) == [h(BIG)] and listing(store.tmp_dir) == []


def test_add_large_stream_that_fails_midway_leaves_nothing(store: ObjectStore) -> None:
    def chunks():
        yield b"first part"
        raise OSError("connection reset")
    with pytest.raises(OSError, match="connection reset"):
        add_large_stream(store, chunks())
    assert list(store.iter_loose()) == [] and listing(store.tmp_dir) == []


def test_add_large_file_refuses_what_is_not_a_regular_file(store, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match=r"is not a regular file$"):
        add_large_file(store, fifo)
    (tmp_path / "real").write_bytes(b"real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as info:
        add_large_file(store, tmp_path / "link")    # never follows a link
    assert not isinstance(info.value, DsvError)
    assert list(store.iter_loose()) == [] and listing(store.tmp_dir) == []


def corrupt_loose(store: ObjectStore, data: bytes) -> str:
    """A loose object whose bytes no longer hash to its name."""
    oid = h(data)
    path = store.loose_path(oid)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    os.chmod(path, 0o444)
    return oid


def test_loose_object_that_does_not_hash_to_its_name(store, tmp_path: Path) -> None:
    oid = corrupt_loose(store, BIG)
    with pytest.raises(CorruptObject) as info:
        store.read(oid)
    assert str(info.value) == f"object {oid[:12]} is corrupt: its bytes do not match its hash"
    assert "dsv verify" in info.value.hint
    assert store.read(oid, verify=False) == BIG[:-1] + bytes([BIG[-1] ^ 1])
    assert not store.verify_loose(oid)
    dest = tmp_path / "out.bin"
    with pytest.raises(CorruptObject,
                       match=rf"^object {oid[:12]} is corrupt; it was not written$"):
        store.copy_out(oid, str(dest), 0o644)
    assert not dest.exists()
    with pytest.raises(CorruptObject):
        store.link_source(oid)
    assert list(store.iter_link_sources()) == [] and listing(store.tmp_dir) == []


def test_loose_object_truncated_or_empty(store) -> None:
    oid = h(BIG)
    path = store.loose_path(oid)
    path.parent.mkdir()
    for damaged in (BIG[:-1], b""):
        path.write_bytes(damaged)
        with pytest.raises(CorruptObject):
            store.read(oid)
        assert not store.verify_loose(oid)


def test_copy_out_writes_verified_bytes_with_the_mode_asked(store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(BIG)
    oid, _ = add_large_file(store, src)
    for i, reflink in enumerate(("auto", "never")):
        dest = tmp_path / f"copy{i}"
        assert store.copy_out(oid, str(dest), 0o600, reflink=reflink) == len(BIG)
        assert dest.read_bytes() == BIG and stat.S_IMODE(dest.stat().st_mode) == 0o600
    # A twin whose bytes are wrong is not trusted: the object is copied instead.
    twin = tmp_path / "twin"
    twin.write_bytes(BIG[:-1] + b"X")
    dest = tmp_path / "from-twin"
    assert store.copy_out(oid, str(dest), 0o644, twin=str(twin)) == len(BIG)
    assert dest.read_bytes() == BIG
    with pytest.raises(MissingObject, match="is missing from the store"):
        store.copy_out(h(b"absent"), str(tmp_path / "never"), 0o644)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_link_or_fifo_planted_as_a_link_source_is_replaced_never_used(
        store, tmp_path: Path, planted: str) -> None:
    """A link checkout's copy is looked at without following a link or blocking: a
    symlink put in its place (to a file outside the store holding the very bytes, which
    its owner may change later) or a FIFO is replaced by a real copy, not handed out."""
    src = tmp_path / "src.bin"
    src.write_bytes(BIG)
    oid, _ = add_large_file(store, src)
    store.links_dir.mkdir(exist_ok=True)
    path = store.links_dir / oid
    if planted == "symlink":
        path.symlink_to(src)
    else:
        os.mkfifo(path)
    assert store.link_source(oid) == path
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_ino != src.stat().st_ino
    assert path.read_bytes() == BIG and stat.S_IMODE(st.st_mode) == 0o444


def test_link_source_is_reverified_and_replaced_when_damaged(store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(BIG)
    oid, _ = add_large_file(store, src)
    path = store.link_source(oid)
    assert path == store.links_dir / oid and path.read_bytes() == BIG
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    os.chmod(path, 0o644)
    path.write_bytes(b"edited through a hardlink")
    assert store.link_source(oid).read_bytes() == BIG
    assert list(store.iter_link_sources()) == [oid]
    store.delete_link_source(oid)
    assert list(store.iter_link_sources()) == []
    assert store.read(oid) == BIG            # the object itself was never touched


def test_a_staging_directory_being_made_is_never_removed_by_another_cleanup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's clean-up runs between the directory's creation and its lock:
    it must not take the new directory for a dead writer's (it did: a randomized gc race
    test saw an import fail with its staging directory gone)."""
    from dsv import objects as objects_module
    real = objects_module.fcntl.flock
    raced: list[bool] = []

    def racing(fd: int, op: int) -> None:
        if not raced:
            raced.append(True)
            objects_module.remove_dead_stages(tmp_path)  # (its own flock calls are real)
        real(fd, op)

    monkeypatch.setattr(objects_module.fcntl, "flock", racing)
    fd, path = objects_module._make_stage(tmp_path)
    try:
        assert raced and path.is_dir() and path.name.startswith("stage-")
        assert objects_module.remove_dead_stages(tmp_path) == 0  # locked: a live writer's
    finally:
        os.close(fd)
    assert objects_module.remove_dead_stages(tmp_path) == 1  # its writer is gone now
