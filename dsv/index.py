"""The SQLite index (`.dsv/index.db`): datasets, versions, tags, pack locations, stat cache.

Owns the schema and every query. The schema is created and migrated with sqlite-utils;
hot paths (status, object lookups) use plain SQL on the same connection, because they
run on every command and sqlite-utils costs ~100 ms to import (without pandas: see
`_sqlite_utils`). WAL mode: readers never
block the single writer. Must never touch files outside `.dsv/index.db`.

Also owns what SQLite's failures mean for a user (`index_error`): a damaged file, an index
that cannot be written (disk full, file-size limit, read-only), one held by another
process. An index that cannot be written is still opened for reading (`read_only`), so
that commands which only read keep working on a full disk.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DsvError, IndexBusy, IndexDamaged, IndexUnwritable
from .model import RUN_DIGEST_BYTES, Dataset, StatRow, Version, storable
from .objects import MAX_PACKED_OBJECT, sound_where

if TYPE_CHECKING:
    from .objects import PackEntry, PackInfo

SCHEMA_VERSION = 11
_PACKS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    num INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, size INTEGER,
    count INTEGER, created FLOAT)"""
_OBJECTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    oid TEXT PRIMARY KEY, pack_num INTEGER NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, kind INTEGER NOT NULL) WITHOUT ROWID"""
_REMOTE_PACKS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    num INTEGER PRIMARY KEY AUTOINCREMENT, remote TEXT NOT NULL, pack TEXT NOT NULL,
    size INTEGER NOT NULL, count INTEGER, UNIQUE (remote, pack))"""
_REMOTE_OBJECTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    remote TEXT NOT NULL, oid TEXT NOT NULL, pack_num INTEGER NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL, kind INTEGER NOT NULL,
    PRIMARY KEY (remote, oid)) WITHOUT ROWID"""
_IN_BATCH = 500
_IN_JSON_BATCH = 20_000
"""Keys `Index._rows_in` looks up in one statement, as a JSON array (a download's chunk)."""
_MAX_PARAMS = 999
"""Parameters a statement of `_put_rows` binds: what every SQLite allows (32,766 since
3.32 allow no faster insert: 4,000 measured the same, with more memory held by the
statement cache)."""


def _has_json() -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38, and in nearly
    every build before): `_packed_rows` uses them."""
    try:
        db = sqlite3.connect(":memory:")
        try:
            row = db.execute("SELECT json_group_array(json_array(json_extract(value, "
                             "'$[0]'))) FROM json_each('[[1]]')").fetchone()
            return bool(row == ("[[1]]",))
        finally:
            db.close()
    except sqlite3.Error:
        return False


_JSON = _has_json()
_PLAIN_COLUMNS = re.compile(r"[a-z_]+(, [a-z_]+)*")


_SQLITE_UTILS: list[Any] = []   # the module, once loaded
_SQLITE_UTILS_LOCK = threading.Lock()


def _sqlite_utils() -> Any:  # noqa: ANN401 - the module
    """sqlite_utils.db, imported on first use (only `init` and migrations pay for it) and
    without pandas and numpy: its `db` module imports both when they are installed, for
    DataFrame values dsv never inserts. Where they are (any ML environment), that import
    took 1.19 s and 109 MB of RSS instead of 0.43 s and 24 MB (a whole `python -c`
    here), on every `dsv init` and `dsv clone`.

    Both are refused only to the thread loading it (other threads import them as usual),
    and only if nothing imported them yet. That copy is dsv's own: it leaves
    `sys.modules`, so a program that imports sqlite_utils later gets it whole (numpy
    values and all). One already imported is used as it is."""
    import importlib
    import sys
    with _SQLITE_UTILS_LOCK:
        if _SQLITE_UTILS:
            return _SQLITE_UTILS[0]
        if "sqlite_utils" in sys.modules or \
                all(name in sys.modules for name in ("pandas", "numpy")):
            # (an import waits for another thread still importing it)
            _SQLITE_UTILS.append(importlib.import_module("sqlite_utils.db"))
            return _SQLITE_UTILS[0]
        refuse = _Refuse({"pandas", "numpy"} - sys.modules.keys())
        sys.meta_path.insert(0, refuse)
        try:
            module = importlib.import_module("sqlite_utils.db")
        finally:
            sys.meta_path.remove(refuse)
        if refuse.refused:
            for name in [n for n in sys.modules
                         if n == "sqlite_utils" or n.startswith("sqlite_utils.")]:
                del sys.modules[name]
        _SQLITE_UTILS.append(module)
        return module


class _Refuse:
    """A finder (first on `sys.meta_path`) that tells the thread that made it that
    `names` are not installed, and defers to the others for everything else."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.thread = threading.get_ident()
        self.refused: set[str] = set()

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> None:
        """Raise ModuleNotFoundError for `names` in the thread; else None (not mine)."""
        if fullname in self.names and threading.get_ident() == self.thread:
            self.refused.add(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


_VERSION_COLS = ("id, dataset, state, tree, parents, message, author, created, committed, "
                 "record, lineage, size, files")
_DATASET_COLS = "id, name, path, description, created, latest, head, cache_tree"

Row = tuple[Any, ...]
"""A row as sqlite3 returns it: cell types are whatever the file holds."""


def _version(row: Row) -> Version:
    (vid, ds, state, tree, parents, message, author, created, committed, record, lineage,
     size, files) = row
    if not (_is_time(created) and (committed is None or _is_time(committed))
            and all(n is None or type(n) is int for n in (size, files))):
        # (read as damage, as the JSON below is: see _MESSAGE_NAMES)
        raise sqlite3.DatabaseError(f"malformed time or count in the row of version {vid!r}")
    try:
        return Version(id=vid, dataset=ds, state=state, tree=tree, parents=json.loads(parents),
                       message=message, author=author, created=created, committed=committed,
                       record=record, lineage=json.loads(lineage) if lineage else None,
                       size=size, files=files)
    except (ValueError, TypeError, RecursionError):
        # dsv wrote these cells as JSON: anything else is damage (index_error says so)
        raise sqlite3.DatabaseError(f"malformed JSON in the row of version {vid!r}") from None


def _check_wheres(found: dict[str, tuple[str, int, int]], remote: str) -> None:
    """Remote object locations as a pack could hold them (`objects.sound_where`: whole
    numbers, not negative, no longer than a packed object is); else read as damage (see
    _MESSAGE_NAMES)."""
    for oid, where in found.items():
        if not sound_where(where, MAX_PACKED_OBJECT):
            raise sqlite3.DatabaseError(f"malformed location of object {oid[:12]} on remote "
                                        f"{remote!r}")


def _is_time(value: object) -> bool:
    """Whether `value` (a cell) is a time as dsv writes them: seconds, whole or not."""
    return type(value) in (int, float)


def _dataset(row: Row) -> Dataset:
    ds_id, name, path, description, created, latest, head, cache_tree = row
    return Dataset(id=ds_id, name=name, path=path, description=description, created=created,
                   latest=latest, head=head, cache_tree=cache_tree)


_MERGED_ROWS = 100_000
"""Object rows `add_packs` sorts and inserts at once (some 150 bytes each meanwhile)."""


_KEEP_UNLESS_DANGLING = (
    "ON CONFLICT ({key}) DO UPDATE SET pack_num = excluded.pack_num, offset = "
    "excluded.offset, length = excluded.length, kind = excluded.kind WHERE NOT EXISTS "
    "(SELECT 1 FROM {packs} WHERE num = {table}.pack_num)")
"""How a new row for an object that has one already is taken (the upsert clause of its
`table`, unique on `key`): the old row is kept (an object in two packs is read from the
first), unless its pack number names no pack of `packs`. Only a damaged index holds such
a row; no query sees it (they read through the views), so the object counts as absent,
and the row must not stop verify's repair or a fetch from recording where it is now."""



ROW_TIME_MODULUS = 2_147_483_647
"""`stat_rows_since` sums row times modulo this prime: a million rows' sum fits 64 bits."""


class Index:
    """One connection to `.dsv/index.db` with the queries dsv needs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.read_only = False
        # Called when rows that `.dsv/state.json` mirrors changed: before the COMMIT of the
        # transaction that changed them, or right after a change made outside one (set by
        # core.Core; the index itself never writes another file).
        self.on_change: Callable[[], None] | None = None
        self._changed = False
        # Why this index is read with an older schema's pack tables (see `keep_schema`):
        # raised by a write to them, which could not be done in that shape.
        self.unmigrated: Exception | None = None
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                               check_same_thread=False)
        exc: Exception | None = None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as failure:
            conn.close()
            if not _is_write_failure(failure):
                raise
            # Even reading a WAL database writes (its -shm index): on a full disk or under
            # a file-size limit that fails, so read without it; writes then fail clearly.
            conn = self._connect_read_only(failure)
            self.read_only, exc = True, failure
        self.conn = conn
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        if exc is not None:
            self._view_unnumbered(exc)

    def _numbered(self) -> None:
        """Before a write to the pack tables: they must have schema 10's shape."""
        if self.unmigrated is not None:
            raise self.unmigrated

    def keep_schema(self, failure: Exception) -> None:
        """Read this index in the schema it has from now on: a migration to schema 10
        (`create_schema`) failed for want of space or of the right to write (`failure`,
        which a write to the pack tables then raises). A full disk must not make the
        store unreadable: it is read as an index that cannot be written is, through this
        connection made read-only (`query_only`: any write fails, as on a read-only
        file), the migration left to the next open that can write."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.read_only = True
        self._view_unnumbered(failure)
        # (the connection as it is, WAL and all, shared with other processes as before;
        # only nothing may be written through it: a write would not reach state.json)
        self.conn.execute("PRAGMA query_only=ON")

    def _view_unnumbered(self, failure: Exception) -> None:
        """An index that cannot be written keeps the schema it has (core.Core reads
        schemas 7 to 9 as they are): where its object rows name packs by id, reads see
        them through views of this connection alone with the columns of schema 10's
        `object_rows` and `remote_object_rows`, and writes to those tables raise
        `failure`, why the index was not migrated. A file SQLite cannot read is left to
        the queries to report."""
        for view, table, columns in (
                ("object_rows", "objects", "oid, pack AS pack_id, offset, length, kind"),
                ("remote_object_rows", "remote_objects",
                 "remote, oid, pack, offset, length, kind")):
            try:
                if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name=?",
                                     (view,)).fetchone() is not None:
                    continue
                if "pack" in {row[1] for row in self.conn.execute(
                        f"PRAGMA main.table_info({table})")}:
                    self.conn.execute(f"CREATE TEMP VIEW IF NOT EXISTS {view} AS SELECT "
                                      f"{columns} FROM main.{table}")
                    self.unmigrated = failure
            except sqlite3.DatabaseError:
                return

    def _connect_read_only(self, failure: sqlite3.OperationalError) -> sqlite3.Connection:
        """A connection that reads the index without writing a byte, or `failure` raised.

        First exclusive locking mode, in which SQLite keeps the WAL index in memory instead
        of the -shm file (it sees the WAL's committed transactions); then, only when there
        is no WAL content to miss, the file as immutable (no locks at all, for read-only
        directories)."""
        import urllib.parse
        uri = "file:" + urllib.parse.quote(str(self.path.absolute()))
        conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise failure
        conn = sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            conn.close()
            raise failure from None
        return conn

    def close(self) -> None:
        """Close the connection (uncommitted changes are rolled back)."""
        self.conn.close()

    # ---- schema ------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create every table and index that does not exist yet, and stamp the
        schema version (a new store, or a migration)."""
        db = _sqlite_utils().Database(self.conn)
        db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
        db.table("datasets").create({"id": str, "name": str, "path": str, "description": str,
                                     "created": float, "latest": str, "head": str,
                                     "cache_tree": str},
                                    pk="id", not_null={"name", "created"}, if_not_exists=True)
        db.table("datasets").create_index(["name"], unique=True, if_not_exists=True)
        db.table("datasets").create_index(["path"], unique=True, if_not_exists=True)
        db.table("versions").create({"id": str, "dataset": str, "state": str, "tree": str,
                                     "parents": str, "message": str, "author": str,
                                     "created": float, "committed": float, "record": str,
                                     "lineage": str,
                                     "size": int, "files": int},
                                    pk="id", foreign_keys=[("dataset", "datasets", "id")],
                                    not_null={"dataset", "state", "tree", "parents", "created"},
                                    if_not_exists=True)
        db.table("versions").create_index(["dataset", "created"], if_not_exists=True)
        db.table("tags").create({"dataset": str, "name": str, "version": str, "created": float},
                                pk=("dataset", "name"),
                                foreign_keys=[("dataset", "datasets", "id"),
                                              ("version", "versions", "id")],
                                if_not_exists=True)
        db.table("tags").create_index(["version"], if_not_exists=True)
        # Schema 10: each pack has a number, and an object's row names its pack by that
        # number (`pack_num`), where it held the pack's 64-character id. A million rows
        # recorded 20,000 a transaction: 13.7 s and 164.7 MB of database with ids, 9.4-9.7 s
        # and 89.6 MB with numbers; lookups as fast (measured). Numbers are never
        # reused (AUTOINCREMENT): a stray row naming a pack gc retired can never name a
        # later one. Reads see (oid, pack_id, offset, length, kind) through the view
        # `object_rows`.
        db.execute(_PACKS_TABLE.format(name="packs"))
        db.execute(_OBJECTS_TABLE.format(name="objects"))
        # Schema 9: `objects` has no index by pack. It doubled the table's size (a pack
        # id and an oid an entry) and the pages every insert of random ids dirties: a
        # million object rows recorded 20,000 at a time took 20.2 s with it, 14.7 s
        # without (measured). Who asks for a pack's rows knows the pack's own table
        # (objects.read_pack_entries) and asks by oid; only damage repair scans.
        db.execute("DROP INDEX IF EXISTS objects_pack")
        db.execute("""CREATE TABLE IF NOT EXISTS statcache (
            dataset TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, mode INTEGER NOT NULL,
            oid TEXT NOT NULL, cached_ns INTEGER NOT NULL,
            PRIMARY KEY (dataset, path)) WITHOUT ROWID""")
        db.table("checkouts").create({"target": str, "version": str, "started": float, "done": int},
                                     pk="target", if_not_exists=True)
        if "done" not in db.table("checkouts").columns_dict:  # schema 1 stores
            db.table("checkouts").add_column("done", int)
        db.table("imported").create({"source": str, "oid": str, "size": int}, pk="source",
                                    if_not_exists=True)
        # Schema 7: an imported object of chunking.CHUNK_THRESHOLD bytes or more is stored
        # in chunks; its row names the chunk list (NULL or "" when stored whole).
        if "chunks" not in db.table("imported").columns_dict:
            db.table("imported").add_column("chunks", str)
        # Schema 3: remotes, and what each remote is known to hold (SPEC §3).
        db.table("remotes").create({"name": str, "url": str, "kind": str, "endpoint_url": str,
                                    "profile": str, "ttl": float, "max_size": int,
                                    "write_through": int, "is_default": int, "created": float},
                                   pk="name", not_null={"url", "kind"}, if_not_exists=True)
        # (schema 10, as `objects`: rows name their remote pack by number)
        db.execute(_REMOTE_OBJECTS_TABLE.format(name="remote_objects"))
        db.execute(_REMOTE_PACKS_TABLE.format(name="remote_packs"))
        # Schema 8: each remote pack's entry count is kept with it, and `remote_objects`
        # has no index by pack (at a million objects it cost 5.5 s of a clone's 9.4 s of
        # recording them, and half the table's size; a pack's rows are looked for only
        # when packs are forgotten, several in one pass).
        # Each step may be repeated after a crash (or by a second process opening the
        # store at once): the counts are filled while the old index still stands.
        if "count" not in db.table("remote_packs").columns_dict:
            try:
                db.execute("ALTER TABLE remote_packs ADD COLUMN count INTEGER")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        if db.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND "
                      "name='remote_objects_pack'").fetchone() is not None:
            db.execute("UPDATE remote_packs SET count = (SELECT count(*) FROM remote_objects r "
                       "WHERE r.remote = remote_packs.remote AND r.pack = remote_packs.pack) "
                       "WHERE count IS NULL")
            db.execute("DROP INDEX IF EXISTS remote_objects_pack")
        numbered = self._number_packs()
        db.execute("""CREATE TABLE IF NOT EXISTS remote_loose (
            remote TEXT NOT NULL, oid TEXT NOT NULL, PRIMARY KEY (remote, oid)) WITHOUT ROWID""")
        db.execute("""CREATE TABLE IF NOT EXISTS remote_refs (
            remote TEXT NOT NULL, dataset TEXT NOT NULL, ref TEXT NOT NULL,
            version TEXT NOT NULL, record TEXT NOT NULL, etag TEXT,
            PRIMARY KEY (remote, dataset, ref)) WITHOUT ROWID""")
        db.execute("""CREATE TABLE IF NOT EXISTS promised (
            version TEXT PRIMARY KEY, remote TEXT NOT NULL) WITHOUT ROWID""")
        # Schema 4: the scan each dataset's stat cache last vouched for (a cache).
        db.execute("""CREATE TABLE IF NOT EXISTS statdigest (
            dataset TEXT PRIMARY KEY, tree TEXT NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID""")
        # Schema 5: the dataset catalogs known to be on each remote (what a push wrote or
        # a scoped fetch listed: `catalog/<dataset>/<pack>`).
        db.execute("""CREATE TABLE IF NOT EXISTS remote_catalog (
            remote TEXT NOT NULL, dataset TEXT NOT NULL, pack TEXT NOT NULL,
            PRIMARY KEY (remote, dataset, pack)) WITHOUT ROWID""")
        # Schema 6: versions a fetch brought without their trees (history no ref names:
        # its trees stay on the remote until something reads them).
        db.execute("""CREATE TABLE IF NOT EXISTS unfetched (
            version TEXT PRIMARY KEY, remote TEXT NOT NULL) WITHOUT ROWID""")
        db.execute("CREATE INDEX IF NOT EXISTS versions_tree ON versions(tree)")
        # Schema 11: the packs a push began to upload to each remote and has not recorded
        # there yet (`remote_packs`), so that the next push finds them even where it
        # lists no `index/` (a store that reads only some datasets): a push killed after
        # its uploads then sends only what is still missing.
        db.execute("""CREATE TABLE IF NOT EXISTS remote_sending (
            remote TEXT NOT NULL, pack TEXT NOT NULL, PRIMARY KEY (remote, pack))
            WITHOUT ROWID""")
        db.table("meta").upsert({"key": "schema", "value": str(SCHEMA_VERSION)}, pk="key")
        if numbered:
            self._vacuum()

    def _vacuum(self) -> None:
        """Give back the pages a migration freed (the old tables): a million-file store's
        index.db was 307 MB at schema 9, 401 MB right after numbering its packs (2.2 s),
        208 MB after this (1.0 s more, measured). Skipped where it cannot be done now (a
        full disk: VACUUM copies the file; another process writing): SQLite reuses free
        pages anyway. VACUUM writes the whole database through the WAL: truncated after."""
        try:
            self.conn.execute("VACUUM")
        except sqlite3.OperationalError:
            return
        self.checkpoint()

    def _number_packs(self) -> bool:
        """Migrate the pack tables of schema 9 or older to schema 10 (see create_schema):
        `packs` and `objects`, then `remote_packs` and `remote_objects`, rewritten in one
        transaction, which a crash or a second process opening the store at once leaves
        done or not begun. An object row naming a pack its table does not know (only a
        damaged index holds one) is dropped with the old table: no number can name it,
        and nothing could be read through it that verify would not call lost."""
        with self.transaction():
            local = self._renumber(
                ("packs", _PACKS_TABLE, "id, size, count, created", "rowid", "id"),
                ("objects", _OBJECTS_TABLE, "o.oid"), "p.id = o.pack")
            remote = self._renumber(
                ("remote_packs", _REMOTE_PACKS_TABLE, "remote, pack, size, count",
                 "remote, pack", "remote, pack"),   # (WITHOUT ROWID before)
                ("remote_objects", _REMOTE_OBJECTS_TABLE, "o.remote, o.oid"),
                "p.remote = o.remote AND p.pack = o.pack")
            # (in the same transaction: never numbered tables without their views)
            self.conn.execute("""CREATE VIEW IF NOT EXISTS object_rows AS SELECT o.oid,
                p.id AS pack_id, o.offset, o.length, o.kind FROM objects o
                JOIN packs p ON p.num = o.pack_num""")
            self.conn.execute("""CREATE VIEW IF NOT EXISTS remote_object_rows AS SELECT
                o.remote, o.oid, p.pack, o.offset, o.length, o.kind FROM remote_objects o
                JOIN remote_packs p ON p.num = o.pack_num""")
        return local or remote

    def _renumber(self, packs: tuple[str, str, str, str, str], objects: tuple[str, str, str],
                  same_pack: str) -> bool:
        """`_number_packs` of one pair of tables: packs = (table, its schema-10 DDL, the
        columns kept, the order numbers are given in, its key), objects = (table, its DDL, its
        key columns); an old object row o finds its numbered pack p where `same_pack`.
        Whether there was anything to do."""
        pack_table, pack_ddl, pack_columns, order, key = packs
        object_table, object_ddl, keys = objects
        columns = {row[1] for row in self.conn.execute(f"PRAGMA main.table_info({pack_table})")}
        if "num" in columns:
            return False
        for table in ("numbering", "numbered"):
            self.conn.execute(f"DROP TABLE IF EXISTS {table}")
        self.conn.execute(pack_ddl.format(name="numbering"))
        # (a rowid table's TEXT PRIMARY KEY takes NULL: a damaged row of one is dropped,
        # with the object rows naming it, which no join finds)
        named = " AND ".join(f"{column} IS NOT NULL" for column in key.split(", "))
        self.conn.execute(f"INSERT INTO numbering ({pack_columns}) SELECT {pack_columns} "
                          f"FROM {pack_table} WHERE {named} ORDER BY {order}")
        self.conn.execute(object_ddl.format(name="numbered"))
        self.conn.execute(f"INSERT INTO numbered SELECT {keys}, p.num, o.offset, o.length, "
                          f"o.kind FROM {object_table} o JOIN numbering p ON {same_pack} "
                          f"ORDER BY {keys}")
        self.conn.execute(f"DROP TABLE {object_table}")
        self.conn.execute(f"DROP TABLE {pack_table}")
        self.conn.execute(f"ALTER TABLE numbering RENAME TO {pack_table}")
        self.conn.execute(f"ALTER TABLE numbered RENAME TO {object_table}")
        return True

    def schema_version(self) -> int | None:
        """The schema version stamped in `meta`, or None before there is one."""
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

    # ---- transactions ------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT (BEGIN … where the index can only be read); nested
        uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        # (an index that can only be read takes no write lock: its writes fail anyway,
        # and commands that only read still use transactions)
        self.conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
        self._depth = 1
        self._changed = False
        try:
            yield
            if self._changed and self.on_change is not None:
                self.on_change()  # inside the transaction: a failure rolls it back
        except BaseException:
            self._depth = 0
            self._changed = False
            if self.conn.in_transaction:   # (SQLite ends it itself on a full disk or I/O error)
                self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._changed = False
        self.conn.execute("COMMIT")

    def _mirror(self) -> None:
        """Note that a row `.dsv/state.json` mirrors changed (see `on_change`)."""
        if self._depth:
            self._changed = True
        elif self.on_change is not None:
            self.on_change()

    @contextmanager
    def rolled_back(self) -> Iterator[None]:
        """Changes made inside are seen by queries inside, then undone (a SAVEPOINT rolled
        back): for planning with tentative rows."""
        self.conn.execute("SAVEPOINT tentative")
        changed, self._changed = self._changed, False
        self._depth += 1  # tentative rows must never reach state.json (see `on_change`)
        try:
            yield
        finally:
            self._depth -= 1
            self._changed = changed
            self.conn.execute("ROLLBACK TO tentative")
            self.conn.execute("RELEASE tentative")

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it, so `.dsv/` holds no stale pages."""
        if self.read_only:
            return
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass  # a reader holds the WAL; the next writer will checkpoint

    # ---- datasets ----------------------------------------------------------------
    def datasets(self) -> list[Dataset]:
        """Every dataset, by name."""
        rows = self.conn.execute(f"SELECT {_DATASET_COLS} FROM datasets ORDER BY name")
        return [_dataset(r) for r in rows]

    def dataset_by(self, column: str, value: str) -> Dataset | None:
        """The dataset whose `column` (id, name or path) is `value`, if any."""
        assert column in ("id", "name", "path")
        row = self.conn.execute(f"SELECT {_DATASET_COLS} FROM datasets WHERE {column}=?",
                                (value,)).fetchone()
        return _dataset(row) if row else None

    def insert_dataset(self, ds: Dataset) -> None:
        """Add a new dataset row."""
        self.conn.execute(f"INSERT INTO datasets ({_DATASET_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                          (ds.id, ds.name, ds.path, ds.description, ds.created, ds.latest,
                           ds.head, ds.cache_tree))
        self._mirror()

    def update_dataset(self, ds_id: str, **fields: Any) -> None:  # noqa: ANN401 - cell values
        """Set some of a dataset's mutable columns (name, path, description,
        latest, head, cache_tree)."""
        allowed = {"name", "path", "description", "latest", "head", "cache_tree"}
        assert set(fields) <= allowed
        if self.read_only and set(fields) == {"cache_tree"} and fields["cache_tree"]:
            return  # vouching for the stat cache is an optimisation: skipped, not failed
        sets = ", ".join(f"{k}=?" for k in fields)
        self.conn.execute(f"UPDATE datasets SET {sets} WHERE id=?", (*fields.values(), ds_id))
        if set(fields) - {"cache_tree"}:
            self._mirror()

    def delete_dataset(self, ds_id: str) -> None:
        """Delete a dataset with its versions, tags and stat cache, in one
        transaction."""
        with self.transaction():
            self.conn.execute("DELETE FROM tags WHERE dataset=?", (ds_id,))
            self.conn.execute("DELETE FROM statcache WHERE dataset=?", (ds_id,))
            self.conn.execute("DELETE FROM statdigest WHERE dataset=?", (ds_id,))
            self.conn.execute("UPDATE datasets SET latest=NULL, head=NULL, cache_tree=NULL "
                              "WHERE id=?", (ds_id,))
            for table in ("promised", "unfetched"):
                self.conn.execute(f"DELETE FROM {table} WHERE version IN "
                                  f"(SELECT id FROM versions WHERE dataset=?)", (ds_id,))
            self.conn.execute("DELETE FROM versions WHERE dataset=?", (ds_id,))
            self.conn.execute("DELETE FROM datasets WHERE id=?", (ds_id,))
            self._mirror()

    # ---- versions ----------------------------------------------------------------
    def version(self, vid: str) -> Version | None:
        """A version by full id (its tags are not filled in), if any."""
        row = self.conn.execute(f"SELECT {_VERSION_COLS} FROM versions WHERE id=?",
                                (vid,)).fetchone()
        return _version(row) if row else None

    def versions(self, ds_id: str, state: str | None = None) -> list[Version]:
        """A dataset's versions (only those in `state`, if given), newest first."""
        sql = f"SELECT {_VERSION_COLS} FROM versions WHERE dataset=?"
        args: tuple[str, ...] = (ds_id,)
        if state:
            sql += " AND state=?"
            args += (state,)
        rows = self.conn.execute(sql + " ORDER BY coalesce(committed, created) DESC, id", args)
        return [_version(r) for r in rows]

    def versions_with_prefix(self, ds_id: str, prefix: str) -> list[str]:
        """Ids of a dataset's versions that start with `prefix`."""
        rows = self.conn.execute("SELECT id FROM versions WHERE dataset=? AND id >= ? AND id < ?",
                                 (ds_id, prefix, prefix + "\x7f"))
        return [r[0] for r in rows]

    def drafts(self) -> list[Version]:
        """Every draft of every dataset, by id."""
        return [_version(r) for r in self.conn.execute(
            f"SELECT {_VERSION_COLS} FROM versions WHERE state='draft' ORDER BY id")]

    def all_versions(self) -> list[Version]:
        """Every version of every dataset."""
        return [_version(r) for r in self.conn.execute(f"SELECT {_VERSION_COLS} FROM versions")]

    def insert_version(self, v: Version) -> None:
        """Add a new version row."""
        self.conn.execute(
            f"INSERT INTO versions ({_VERSION_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (v.id, v.dataset, v.state, v.tree, json.dumps(v.parents), v.message, v.author,
             v.created, v.committed, v.record,
             json.dumps(v.lineage) if v.lineage is not None else None,
             v.size, v.files))
        self._mirror()

    def update_version(self, vid: str, **fields: Any) -> None:  # noqa: ANN401 - cell values
        """Set some of a version's columns (a draft's edits, or its commit)."""
        allowed = {"state", "tree", "message", "committed", "record", "size", "files",
                   "parents", "lineage"}
        assert set(fields) <= allowed
        values = [json.dumps(v) if k in ("parents", "lineage") and v is not None else v
                  for k, v in fields.items()]
        sets = ", ".join(f"{k}=?" for k in fields)
        self.conn.execute(f"UPDATE versions SET {sets} WHERE id=?", (*values, vid))
        self._mirror()

    def delete_version(self, vid: str) -> None:
        """Delete a version with its tags and its promises."""
        self.conn.execute("DELETE FROM tags WHERE version=?", (vid,))
        self.conn.execute("DELETE FROM promised WHERE version=?", (vid,))
        self.conn.execute("DELETE FROM unfetched WHERE version=?", (vid,))
        self.conn.execute("DELETE FROM versions WHERE id=?", (vid,))
        self._mirror()

    def children(self, vid: str) -> list[str]:
        """Ids of the versions that name `vid` as a parent."""
        rows = self.conn.execute(
            "SELECT v.id FROM versions v, json_each(v.parents) p WHERE p.value=?", (vid,))
        return [r[0] for r in rows]

    # ---- tags --------------------------------------------------------------------
    def tags(self, ds_id: str | None = None) -> list[tuple[str, str, str, float]]:
        """(dataset id, tag, version id, created) rows."""
        if ds_id:
            rows = self.conn.execute("SELECT dataset, name, version, created FROM tags "
                                     "WHERE dataset=? ORDER BY name", (ds_id,))
        else:
            rows = self.conn.execute("SELECT dataset, name, version, created FROM tags "
                                     "ORDER BY dataset, name")
        return list(rows)

    def tag(self, ds_id: str, name: str) -> str | None:
        """The version id tag `name` of a dataset points at, if any."""
        row = self.conn.execute("SELECT version FROM tags WHERE dataset=? AND name=?",
                                (ds_id, name)).fetchone()
        return row[0] if row else None

    def tags_of(self, vid: str) -> list[str]:
        """Names of the tags that point at `vid`."""
        return [r[0] for r in self.conn.execute(
            "SELECT name FROM tags WHERE version=? ORDER BY name", (vid,))]

    def set_tag(self, ds_id: str, name: str, vid: str) -> None:
        """Create or move a tag (no checks: refs.RefStore applies the rules)."""
        self.conn.execute("INSERT INTO tags (dataset, name, version, created) VALUES (?,?,?,?) "
                          "ON CONFLICT(dataset, name) DO UPDATE SET version=excluded.version, "
                          "created=excluded.created", (ds_id, name, vid, time.time()))
        self._mirror()

    def delete_tag(self, ds_id: str, name: str) -> bool:
        """Remove a tag; whether there was one."""
        cur = self.conn.execute("DELETE FROM tags WHERE dataset=? AND name=?", (ds_id, name))
        self._mirror()
        return cur.rowcount > 0

    # ---- objects in packs (implements objects.ObjectLocator) ----------------------
    def locate(self, oid: str) -> tuple[str, int, int] | None:
        """Where a packed object is: (pack id, offset, length), or None."""
        row = self.conn.execute("SELECT pack_id, offset, length FROM object_rows WHERE oid=?",
                                (oid,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    @staticmethod
    def _batches(keys: list[str]) -> Iterator[list[str]]:
        """`keys` in parts small enough for one statement's parameters."""
        for i in range(0, len(keys), _IN_BATCH):
            yield keys[i:i + _IN_BATCH]

    def _rows_in(self, sql: str, keys: Iterable[str],
                 *args: Any) -> Iterator[Row]:  # noqa: ANN401 - SQL parameters
        """Rows of `sql` ("SELECT columns FROM …", whose `{marks}` is an IN list) for
        every key (batched: SQLite limits the number of parameters); `args` come before
        the keys, and the rows come in no particular order. The keys are sorted first:
        each batch then reads one stretch of the table's B-tree instead of pages all over
        it (87,000 random ids among 3 million rows: 0.85 s instead of 1.1-1.9 s,
        measured). Each batch's rows come back in one step (see `_packed_rows`).

        With SQLite's JSON functions the keys go in as one JSON array, _IN_JSON_BATCH
        at a time: a statement gives up the GIL, and must win it back, once however many
        keys it looks up. Beside threads that run Python, each win waits for one of them
        to yield it (up to the switch interval): 100,000 ids in batches of 500 took
        3.0-3.1 s beside two such threads at the CLI's 0.5 ms interval (6.0 s at the
        default 5 ms), against 2.0-2.2 s (1.15-1.35 s) in batches of 10,000; alone,
        0.82 s against 0.74 s."""
        ordered = sorted(keys)
        if not _JSON:
            for part in self._batches(ordered):
                yield from self._packed_rows(sql.format(marks=",".join("?" * len(part))),
                                             (*args, *part))
            return
        sql = sql.format(marks="SELECT value FROM json_each(?)")
        for i in range(0, len(ordered), _IN_JSON_BATCH):
            yield from self._packed_rows(sql, (*args, json.dumps(ordered[i:i + _IN_JSON_BATCH])))

    def _packed_rows(self, sql: str, params: tuple[Any, ...]) -> Iterator[Row]:
        """The rows of `sql` (a SELECT of plain columns holding text, integers or NULL),
        as tuples, fetched by one step of SQLite that returns them all as one JSON array.

        Why: Python's sqlite3 gives up the GIL for every row it steps to, and must win it
        back before the next one. While other threads run Python (a clone places files
        while it downloads), each row then waits its turn: 100,000 rows took 2.27 s that
        way against 0.31 s in one step, with two such threads running (0.26 s and 0.28 s
        with none). Without SQLite's JSON functions, row by row."""
        if not _JSON:
            yield from self.conn.execute(sql, params)
            return
        select, _, _rest = sql.partition(" FROM ")
        columns = select.removeprefix("SELECT ")
        if columns == select or not _PLAIN_COLUMNS.fullmatch(columns):
            raise DsvError(f"bug in dsv: {select!r} is not a SELECT of plain columns")
        # A value JSON cannot carry as it is (a BLOB or REAL in a column of text or
        # integers: an index another hand damaged) sends the batch down the row-by-row
        # path, whose values the callers' checks report as damage.
        names = columns.split(", ")
        odd = [f"typeof({c}) IN ('blob', 'real')" for c in names]
        values = ", ".join(f"CASE WHEN {o} THEN NULL ELSE {c} END"
                           for o, c in zip(odd, names, strict=True))
        (packed, damaged), = self.conn.execute(
            f"SELECT json_group_array(json_array({values})), max({' OR '.join(odd)}) "
            f"FROM ({sql})", params)
        if damaged:
            yield from self.conn.execute(sql, params)
            return
        yield from map(tuple, json.loads(packed))

    def _put_rows(self, head: str, rows: Iterable[tuple[Any, ...]], width: int,
                  on_conflict: str = "") -> int:
        """`executemany` of `head` ("INSERT … INTO table (columns)") over `rows` (each
        `width` values), in order, as few statements of many rows each: one step of
        SQLite, so one wait for the GIL, a statement instead of one a row (see
        `_packed_rows`). 100,000 stat rows: 0.15 s, where executemany took 0.21 s alone
        and 1.8-1.9 s beside two threads running Python. `on_conflict`: an upsert
        clause ending each statement. How many rows the statements changed."""
        per = max(1, _MAX_PARAMS // width)
        it = iter(rows)
        marks = f"({','.join('?' * width)})"
        changed = 0
        while batch := list(itertools.islice(it, per)):
            if any(len(row) != width for row in batch):
                raise DsvError(f"bug in dsv: a row for {head!r} has not {width} values")
            changed += self.conn.execute(
                f"{head} VALUES {','.join([marks] * len(batch))} {on_conflict}",
                [value for row in batch for value in row]).rowcount
        return changed

    def locate_many(self, oids: Iterable[str]) -> dict[str, tuple[str, int, int]]:
        """Where those of `oids` that are packed are: oid → (pack, offset, length)."""
        return {oid: (pack, offset, length) for oid, pack, offset, length in self._rows_in(
            "SELECT oid, pack_id, offset, length FROM object_rows WHERE oid IN ({marks})", oids)}

    def packed_ids(self, oids: Iterable[str]) -> set[str]:
        """Those of `oids` that are packed here."""
        return {oid for (oid,) in self._rows_in(
            "SELECT oid FROM object_rows WHERE oid IN ({marks})", oids)}

    def any_packed(self) -> bool:
        """Whether any object is packed at all."""
        (found,), = self.conn.execute("SELECT EXISTS (SELECT 1 FROM object_rows)")
        return bool(found)

    def packed_among(self, oids: Iterable[str]) -> dict[str, str]:
        """Those of `oids` that are packed here: oid → pack id."""
        return dict(self._rows_in("SELECT oid, pack_id FROM object_rows WHERE oid IN ({marks})",
                                  oids))

    def packed_of_kind(self, oids: Iterable[str], kind: int) -> set[str]:
        """Those of `oids` that are packed here as objects of `kind`."""
        return {oid for (oid,) in self._rows_in(
            "SELECT oid FROM object_rows WHERE kind=? AND oid IN ({marks})", oids, kind)}

    def add_pack(self, pack_id: str, size: int, entries: Iterable["PackEntry"]) -> None:
        """Record a pack and where each of its objects is."""
        self._add_packs([(pack_id, size, [(e.oid, e.offset, e.length, e.kind)
                                          for e in entries])])

    def add_packs(self, packs: Iterable["PackInfo"]) -> None:
        """Record packs just written (an Ingest's `finish()`)."""
        self._add_packs((pack.id, pack.size, pack.rows()) for pack in packs)

    def _add_packs(self, packs: Iterable[tuple[str, int, list[tuple[str, int, int, int]]]]
                   ) -> None:
        """Record (pack id, size, [(oid, offset, length, kind)]) packs: their objects' rows
        in runs of up to _MERGED_ROWS in key order (a B-tree takes sorted rows several
        times faster than random ones), not one run a pack. Each run of random ids
        touches most of the table's pages: a million-file commit recording 100,000
        objects at a time took 25.7-26.2 s so, 27.4-32.3 s a pack at a time."""
        self._numbered()
        rows: list[tuple[str, int, int, int, int]] = []
        now = time.time()
        for pack_id, size, found in packs:
            self.conn.execute("INSERT OR IGNORE INTO packs (id, size, count, created) "
                              "VALUES (?,?,?,?)", (pack_id, size, len(found), now))
            (num,), = self.conn.execute("SELECT num FROM packs WHERE id=?", (pack_id,))
            if len(rows) + len(found) > _MERGED_ROWS:
                self._put_object_rows(rows)
                rows = []
            rows += ((oid, num, offset, length, kind) for oid, offset, length, kind in found)
        self._put_object_rows(rows)

    def _put_object_rows(self, rows: list[tuple[str, int, int, int, int]]) -> None:
        """Object rows in, as `_KEEP_UNLESS_DANGLING` takes them. First as INSERT OR
        IGNORE, which cannot fail half-way, so SQLite keeps no statement journal: the
        upsert (or a plain INSERT: NOT NULL may abort it) saves every page each
        statement touches into a temp file first, and a statement of 200 random ids
        touches 200 pages. A million-file clone wrote 5.8 GB to such files. Only where
        some rows were there already (ignored) is the batch taken again as the upsert,
        which leaves what the upsert alone would have."""
        # (stable: an object in two of the packs keeps the first one's row, as it would
        # pack by pack)
        rows.sort(key=lambda row: row[0])
        columns = "objects (oid, pack_num, offset, length, kind)"
        if self._put_rows(f"INSERT OR IGNORE INTO {columns}", rows, 5) < len(rows):
            self._put_rows(f"INSERT INTO {columns}", rows, 5,
                           _KEEP_UNLESS_DANGLING.format(table="objects", key="oid",
                                                        packs="packs"))

    def packs(self) -> dict[str, tuple[int, int]]:
        """Every local pack: pack id → (size, object count)."""
        return {r[0]: (r[1], r[2]) for r in self.conn.execute("SELECT id, size, count FROM packs")}

    def pack_objects(self, pack_id: str) -> list[tuple[str, int, int, int]]:
        """(oid, offset, length, kind) of every object the index places in a pack, in pack
        order: one pass over every object row (there is no index by pack). Use
        `pack_rows_among` where the pack's own table names the candidates."""
        return self.packs_objects([pack_id])[pack_id]

    def packs_objects(self, pack_ids: Iterable[str]
                      ) -> dict[str, list[tuple[str, int, int, int]]]:
        """`pack_objects` of several packs in one pass over the object rows (damage
        repair: packs lost or unreadable)."""
        found: dict[str, list[tuple[str, int, int, int]]] = {p: [] for p in pack_ids}
        if found:
            for oid, pack, offset, length, kind in self.conn.execute(
                    "SELECT oid, pack_id, offset, length, kind FROM object_rows"):
                if pack in found:
                    found[pack].append((oid, offset, length, kind))
        for rows in found.values():
            rows.sort(key=lambda row: row[1])
        return found

    def pack_rows_among(self, pack_id: str, oids: Iterable[str]
                        ) -> list[tuple[str, int, int, int]]:
        """(oid, offset, length, kind) of those of `oids` whose row places them in
        `pack_id`, in pack order: `pack_objects` by the primary key, given the oids the
        pack's own table lists (an object in two packs has the first one's row)."""
        return sorted(((oid, offset, length, kind) for oid, offset, length, kind in
                       self._rows_in("SELECT oid, offset, length, kind FROM object_rows "
                                     "WHERE pack_id=? AND oid IN ({marks})", oids, pack_id)),
                      key=lambda row: row[1])

    def correct_rows(self, pack_id: str, rows: list[tuple[str, int, int, int]]) -> None:
        """Set where (oid, offset, length, kind) rows that place objects in `pack_id`
        say they are (verify's repair: from the pack's own table)."""
        self._numbered()
        self.conn.executemany(
            "UPDATE objects SET offset=?, length=?, kind=? WHERE oid=? AND "
            "pack_num=(SELECT num FROM packs WHERE id=?)",
            [(offset, length, kind, oid, pack_id) for oid, offset, length, kind in rows])

    def packed_oids(self) -> Iterator[tuple[str, str, int]]:
        """(oid, pack id, kind) of every packed object."""
        yield from self.conn.execute("SELECT oid, pack_id, kind FROM object_rows")

    def delete_pack(self, pack_id: str, oids: Iterable[str] | None = None) -> None:
        """Forget a pack and the objects located in it: those of `oids` (the pack's own
        table, looked up by the primary key), or, without them, whichever rows name it
        (one pass over every object row)."""
        self._numbered()
        row = self.conn.execute("SELECT num FROM packs WHERE id=?", (pack_id,)).fetchone()
        if row is None:
            return
        if oids is None:
            self.conn.execute("DELETE FROM objects WHERE pack_num=?", row)
        else:
            for part in self._batches(sorted(oids)):
                self.conn.execute(f"DELETE FROM objects WHERE pack_num=? AND oid IN "
                                  f"({','.join('?' * len(part))})", (*row, *part))
        self.conn.execute("DELETE FROM packs WHERE num=?", row)

    # ---- stat cache --------------------------------------------------------------
    def stat_cache(self, ds_id: str) -> dict[str, StatRow]:
        """A dataset's stat cache: path → StatRow."""
        rows = self.conn.execute("SELECT path, size, mtime_ns, ino, mode, oid, cached_ns "
                                 "FROM statcache WHERE dataset=?", (ds_id,))
        return {r[0]: r[1:] for r in rows}

    def stat_rows_at(self, ds_id: str, paths: Iterable[str]) -> dict[str, StatRow]:
        """The cache's rows of those of `paths` it has: path → StatRow."""
        return {r[0]: r[1:] for r in self._rows_in(
            "SELECT path, size, mtime_ns, ino, mode, oid, cached_ns FROM statcache "
            "WHERE dataset=? AND path IN ({marks})", paths, ds_id)}

    def stat_keys(self, ds_id: str) -> dict[str, tuple[int, int, int, int, int]]:
        """The cache without object ids: path → (size, mtime_ns, inode, mode, cached_ns)."""
        return {r[0]: r[1:] for r in self.iter_stat_keys(ds_id)}

    def iter_stat_keys(self, ds_id: str) -> Iterator[tuple[str, int, int, int, int, int]]:
        """The cache's rows without object ids, as they are read, in path order (the order
        of worktree.walk): (path, size, mtime_ns, inode, mode, cached_ns)."""
        return iter(self.conn.execute("SELECT path, size, mtime_ns, ino, mode, cached_ns "
                                      "FROM statcache WHERE dataset=? ORDER BY path",
                                      (ds_id,)))

    def stat_keys_between(self, ds_id: str, after: str, upto: str | None
                          ) -> list[tuple[str, int, int, int, int, int]]:
        """`iter_stat_keys` of the paths after `after` up to `upto` (to the end when None):
        the rows of one run of a walk (worktree.stat_changes)."""
        sql = ("SELECT path, size, mtime_ns, ino, mode, cached_ns FROM statcache "
               "WHERE dataset=? AND path>?")
        args: tuple[str, ...] = (ds_id, after)
        if upto is not None:
            sql, args = sql + " AND path<=?", args + (upto,)
        return self.conn.execute(sql + " ORDER BY path", args).fetchall()

    def stat_rows_between(self, ds_id: str, after: str, upto: str | None
                          ) -> list[tuple[str, StatRow]]:
        """The cache's rows of paths after `after` up to `upto` (to the end when None), in
        path order: the rows of one stretch of a walk."""
        sql = ("SELECT path, size, mtime_ns, ino, mode, oid, cached_ns FROM statcache "
               "WHERE dataset=? AND path>?")
        args: tuple[str, ...] = (ds_id, after)
        if upto is not None:
            sql, args = sql + " AND path<=?", args + (upto,)
        return [(r[0], r[1:]) for r in self.conn.execute(sql + " ORDER BY path", args)]

    def stage_stat_rows(self, rows: Iterable[tuple[str, StatRow]], first: bool = False
                        ) -> None:
        """Keep rows for `put_staged_stat_rows` in a temp table (this connection's own):
        a commit of a million files holds none of them in memory. `first` drops what an
        earlier use left."""
        if first:
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS statstaged (path TEXT PRIMARY "
                              "KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, mode INTEGER, "
                              "oid TEXT, cached_ns INTEGER) WITHOUT ROWID")
            self.conn.execute("DELETE FROM statstaged")
        self._put_rows("INSERT OR REPLACE INTO statstaged (path, size, mtime_ns, ino, mode, "
                       "oid, cached_ns)", ((p, *r) for p, r in rows if storable(r)), 7)

    def put_staged_stat_rows(self, ds_id: str) -> None:
        """Move the staged rows into the dataset's stat cache."""
        if not self.read_only:
            self.conn.execute("INSERT OR REPLACE INTO statcache (dataset, path, size, mtime_ns, "
                              "ino, mode, oid, cached_ns) SELECT ?, path, size, mtime_ns, ino, "
                              "mode, oid, cached_ns FROM statstaged", (ds_id,))
        self.conn.execute("DELETE FROM statstaged")

    def put_stat_rows(self, ds_id: str, rows: Iterable[tuple[str, StatRow]]) -> None:
        """Remember hashed files (a cache: on an index that cannot be written, skipped, so
        that commands which only read still work)."""
        if self.read_only:
            return
        self._put_rows("INSERT OR REPLACE INTO statcache (dataset, path, size, mtime_ns, ino, "
                       "mode, oid, cached_ns)", ((ds_id, p, *r) for p, r in rows if storable(r)),
                       8)

    @staticmethod
    def row_times(rows: Iterable[tuple[str, StatRow]]) -> int:
        """The sum `stat_rows_since` gives for `rows` once they are in the cache."""
        return sum(row[5] % ROW_TIME_MODULUS for _path, row in rows)

    def stat_rows_since(self, ds_id: str, since_ns: int) -> tuple[int, int]:
        """How many of the dataset's cache rows were made at `since_ns` or later, and the
        sum of their `cached_ns` modulo ROW_TIME_MODULUS (what a status compares with the
        rows it made itself, to learn that nobody else wrote any meanwhile)."""
        count, total = self.conn.execute(
            "SELECT count(*), coalesce(sum(cached_ns % ?), 0) FROM statcache WHERE "
            "dataset=? AND cached_ns >= ?", (ROW_TIME_MODULUS, ds_id, since_ns)).fetchone()
        return int(count), int(total)

    def drop_stat_rows(self, ds_id: str, paths: Iterable[str]) -> None:
        """Forget the stat-cache rows of `paths`."""
        self.conn.executemany("DELETE FROM statcache WHERE dataset=? AND path=?",
                              ((ds_id, p) for p in paths))

    def forget_unstored(self, *live: set[str]) -> None:
        """Drop cache rows naming objects in none of the `live` sets (gc is about to
        delete them). (Sets, not their union: gc's hold a million ids.)"""
        doomed = [(ds, path) for ds, path, oid in
                  self.conn.execute("SELECT dataset, path, oid FROM statcache")
                  if not any(oid in kept for kept in live)]
        if doomed:
            self.conn.executemany("DELETE FROM statcache WHERE dataset=? AND path=?", doomed)
            self.conn.execute("UPDATE datasets SET cache_tree=NULL")

    def clean_scan(self, ds_id: str, tree: str) -> tuple[set[str], int]:
        """The digests of the runs of earlier walks of the dataset's directory that the
        stat cache vouched for, when they showed `tree`, and how many files that tree
        holds as a walk counted them (see worktree.ScanDigest); (empty, -1) if none."""
        row = self.conn.execute("SELECT tree, digest FROM statdigest WHERE dataset=?",
                                (ds_id,)).fetchone()
        if row is None or row[0] != tree or not isinstance(row[1], str):
            return set(), -1
        files, sep, runs = row[1].partition(":")
        if not sep or not (files.isascii() and files.isdigit()) or len(files) > 12:
            # (an older format's digest, or damage: none of these)
            return set(), -1
        size = 2 * RUN_DIGEST_BYTES
        return {runs[i:i + size] for i in range(0, len(runs), size)}, int(files)

    def put_clean_scan(self, ds_id: str, tree: str, runs: Iterable[str], files: int) -> None:
        """Remember the runs of a walk the stat cache vouched for, the tree it showed and
        the files the walk counted in it, as `FILES:DIGESTS` (skipped on an index that
        cannot be written: it is a cache)."""
        if self.read_only:
            return
        self.conn.execute("INSERT OR REPLACE INTO statdigest (dataset, tree, digest) "
                          "VALUES (?,?,?)",
                          (ds_id, tree, f"{files}:" + "".join(sorted(set(runs)))))

    def clear_stat_cache(self, ds_id: str) -> None:
        """Forget a dataset's whole stat cache (and that it vouched for a tree)."""
        self.conn.execute("DELETE FROM statcache WHERE dataset=?", (ds_id,))
        self.conn.execute("DELETE FROM statdigest WHERE dataset=?", (ds_id,))
        self.conn.execute("UPDATE datasets SET cache_tree=NULL WHERE id=?", (ds_id,))

    # ---- imports: what was already downloaded, for resuming ----------------------
    def imported(self, sources: Iterable[str]) -> dict[str, tuple[str, int, str]]:
        """Objects already downloaded for import sources: source → (oid, size, chunk
        list id, "" when stored whole)."""
        return {source: (oid, size, chunks or "") for source, oid, size, chunks in
                self._rows_in("SELECT source, oid, size, chunks FROM imported "
                              "WHERE source IN ({marks})", sources)}

    def imported_through(self, endpoint: str) -> bool:
        """Whether an import of this store downloaded anything from `endpoint` (as its
        client named it: the start of a source key, see imports._source_key)."""
        start = endpoint + "/"
        return self.conn.execute("SELECT 1 FROM imported WHERE source >= ? AND source < ? "
                                 "LIMIT 1", (start, endpoint + "0")).fetchone() is not None

    def imported_oids(self) -> set[str]:
        """Every object an import stored (a version may not reach it yet): whole files,
        and the chunk lists of chunked ones (not their chunks)."""
        return {chunks or oid for oid, chunks in
                self.conn.execute("SELECT oid, chunks FROM imported")}

    def imported_chunk_lists(self) -> set[str]:
        """The chunk lists of the chunked objects imports stored."""
        return {chunks for (chunks,) in self.conn.execute(
            "SELECT chunks FROM imported WHERE chunks IS NOT NULL AND chunks != ''")}

    def add_imported(self, rows: Iterable[tuple[str, str, int, str]]) -> None:
        """Remember (source, oid, size, chunk list or "") of downloaded import sources."""
        self.conn.executemany("INSERT OR REPLACE INTO imported (source, oid, size, chunks) "
                              "VALUES (?,?,?,?)", rows)

    # ---- remotes -----------------------------------------------------------------
    def remotes(self) -> list[dict[str, Any]]:
        """Every configured remote as its row of column → value, by name."""
        cols = ("name", "url", "kind", "endpoint_url", "profile", "ttl", "max_size",
                "write_through", "is_default", "created")
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM remotes ORDER BY name")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def add_remote(self, row: dict[str, Any]) -> None:
        """Add a remote's row (column → value)."""
        cols = ", ".join(row)
        marks = ",".join("?" * len(row))
        self.conn.execute(f"INSERT INTO remotes ({cols}) VALUES ({marks})", tuple(row.values()))
        self._mirror()

    def set_default_remote(self, name: str) -> None:
        """Make `name` the one default origin."""
        self.conn.execute("UPDATE remotes SET is_default = (name = ?) WHERE kind = 'origin'",
                          (name,))
        self._mirror()

    def delete_remote(self, name: str) -> None:
        """Forget a remote and everything remembered about what it holds."""
        # `promised` rows stay: the versions' blobs are still elsewhere, whatever the name.
        for table in ("remote_objects", "remote_packs", "remote_loose", "remote_refs",
                      "remote_catalog", "remote_sending"):
            self.conn.execute(f"DELETE FROM {table} WHERE remote=?", (name,))
        self.conn.execute("DELETE FROM meta WHERE key IN (?, ?)",
                          (f"remote-gc:{name}", f"remote-scope:{name}"))
        self.conn.execute("DELETE FROM remotes WHERE name=?", (name,))
        self._mirror()

    # ---- what a push needs (a temp table: memory stays flat however many objects) ----
    def need_fill(self, rows: Iterable[tuple[str, int]]) -> None:
        """Make the `need` set (this connection's own; gone when it closes) the (oid,
        kind) `rows`, taken as they come; the first kind named for an oid stays. They are
        appended in arrival order and sorted once at the end: put one by one into the
        set's B-tree, a million random ids took 9.6 s (each lands on a page of its own,
        and the set outgrows SQLite's cache); appended and sorted, 0.8 s."""
        for table, columns in (("need_arriving", "oid TEXT NOT NULL, kind INTEGER NOT NULL"),
                               ("need", "oid TEXT PRIMARY KEY, kind INTEGER NOT NULL")):
            rowid = " WITHOUT ROWID" if table == "need" else ""
            self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}){rowid}")
            self.conn.execute(f"DELETE FROM {table}")  # (a call that failed left rows)
        self._put_rows("INSERT INTO need_arriving (oid, kind)", rows, 2)
        # (a bare column beside min() takes its value from the row with the least rowid)
        self.conn.execute("INSERT INTO need (oid, kind) SELECT oid, kind FROM (SELECT oid, "
                          "kind, min(rowid) FROM need_arriving GROUP BY oid) ORDER BY oid")
        self.conn.execute("DELETE FROM need_arriving")

    def need_count(self) -> int:
        """Objects in the `need` set."""
        return int(self.conn.execute("SELECT count(*) FROM need").fetchone()[0])

    def need_unsent(self, remote: str, kind: int) -> Iterator[tuple[str, tuple[str, int, int]]]:
        """(oid, (pack, offset, length)) of needed objects of `kind` packed here that
        `remote`'s packs lack, in local pack order, read as they are used (a first push
        of a million files holds none of them all at once). While it runs, `remote_objects`
        may gain only objects it has already yielded (what was just sent)."""
        cur = self.conn.execute(
            "SELECT n.oid, o.pack_id, o.offset, o.length FROM need n "
            "JOIN object_rows o ON o.oid = n.oid WHERE n.kind = ? AND NOT EXISTS (SELECT 1 FROM "
            "remote_objects r WHERE r.remote = ? AND r.oid = n.oid) ORDER BY o.pack_id, "
            "o.offset",
            (kind, remote))
        while batch := cur.fetchmany(_IN_BATCH * 8):
            for oid, pack, offset, length in batch:
                yield oid, (pack, offset, length)

    def need_unsent_size(self, remote: str) -> tuple[int, int]:
        """(count, bytes) of what `need_unsent` yields, all kinds."""
        count, total = self.conn.execute(
            "SELECT count(*), coalesce(sum(o.length), 0) FROM need n JOIN object_rows o ON "
            "o.oid = n.oid WHERE NOT EXISTS (SELECT 1 FROM remote_objects r WHERE "
            "r.remote = ? AND r.oid = n.oid)", (remote,)).fetchone()
        return int(count), int(total)

    def need_on_remote(self, remote: str) -> tuple[int, int]:
        """(count, bytes) of needed objects packed here that `remote`'s packs hold."""
        count, total = self.conn.execute(
            "SELECT count(*), coalesce(sum(r.length), 0) FROM need n JOIN object_rows o ON "
            "o.oid = n.oid JOIN remote_objects r ON r.remote = ? AND r.oid = n.oid",
            (remote,)).fetchone()
        return int(count), int(total)

    def need_unpacked(self, remote: str) -> Iterator[list[str]]:
        """Needed objects neither packed here nor in `remote`'s packs (large files: loose
        here, or not here at all; a promised version's small files are in the packs of
        the remote it came from), in batches (each its own query: the caller may write
        between batches)."""
        last = ""
        while True:
            batch = [row[0] for row in self.conn.execute(
                "SELECT n.oid FROM need n WHERE n.oid > ? AND NOT EXISTS (SELECT 1 FROM "
                "object_rows o WHERE o.oid = n.oid) AND NOT EXISTS (SELECT 1 FROM remote_objects "
                "r WHERE r.remote = ? AND r.oid = n.oid) ORDER BY n.oid LIMIT ?",
                (last, remote, _IN_BATCH * 8))]
            if not batch:
                return
            yield batch
            last = batch[-1]

    def remote_gc_generation(self, remote: str) -> str:
        """The gc generation of `remote` its picture here was read under ('' if none)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key=?",
                                (f"remote-gc:{remote}",)).fetchone()
        return str(row[0]) if row else ""

    def set_remote_gc_generation(self, remote: str, generation: str) -> None:
        """Remember the gc generation `remote`'s picture here was read under."""
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)",
                          (f"remote-gc:{remote}", generation))

    def remote_packs(self, remote: str) -> dict[str, int]:
        """Packs known to be on `remote`: pack id → size."""
        found = dict(self.conn.execute("SELECT pack, size FROM remote_packs WHERE remote=?",
                                       (remote,)))
        for pack, size in found.items():
            if type(size) is not int or size < 0:
                raise sqlite3.DatabaseError(f"malformed size of pack {pack!r} of remote "
                                            f"{remote!r}")   # (damage: see _MESSAGE_NAMES)
        return found

    def add_remote_pack(self, remote: str, pack: str, size: int,
                        entries: Collection["PackEntry"]) -> None:
        """Record that `remote` holds `pack` with these entries."""
        self.add_remote_packs(remote, [(pack, entries, size)])

    def add_remote_packs(self, remote: str,
                         packs: Iterable[tuple[str, Collection["PackEntry"], int]]) -> None:
        """Record that `remote` holds each (pack id, entries, size) of `packs`, taken as
        they come (a refresh reads them a few at a time). Their rows wait in a temporary
        table and join `remote_objects` at the end in key order, in one statement (SQLite
        sorts them, on disk if need be): the table's B-tree then takes them page after
        page. Pack by pack, each pack's rows landed on pages all over it: 500,000 rows
        took 5.9 s that way and 3.6 s this way. Where two packs hold an object, the first
        recorded names it, as before. Call within a transaction."""
        self.stage_remote_packs(remote, packs)
        self.add_staged_remote_packs()

    def stage_remote_packs(self, remote: str,
                           packs: Iterable[tuple[str, Collection["PackEntry"], int]],
                           more: bool = False) -> None:
        """The first half of `add_remote_packs`: the rows wait in temporary tables of this
        connection, which take no lock on the index. Outside a transaction, so that the
        write lock is not held while `packs` is read from a remote (other writers, the
        placing thread of a checkout among them, would wait for the network). With
        `more`, they join what is staged already: a push stages each pack as its upload
        ends and adds them all at once, so that a million rows land in key order (added
        a pack at a time, each pack's rows landed on pages all over the table, and each
        transaction wrote most of its pages again: 28 s of a 59 s push)."""
        for table, columns in (("arriving_remote_packs", "remote, pack, size, count"),
                               ("arriving_remote_objects",
                                "remote, oid, pack, offset, length, kind")):
            self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns})")
            if not more:  # (a call that failed half-way, its error caught, left rows there)
                self.conn.execute(f"DELETE FROM {table}")
        for pack, entries, size in packs:
            self.conn.execute("INSERT INTO arriving_remote_packs (remote, pack, size, count) "
                              "VALUES (?,?,?,?)", (remote, pack, size, len(entries)))
            self._put_rows(
                "INSERT INTO arriving_remote_objects (remote, oid, pack, offset, length, kind)",
                ((remote, e.oid, pack, e.offset, e.length, e.kind) for e in entries), 6)

    def add_staged_remote_packs(self) -> None:
        """The second half of `add_remote_packs`: what was staged joins the index. Call
        within a transaction."""
        self._numbered()
        # Nothing is recorded until every pack was taken: never a pack without its rows.
        self.conn.execute("INSERT OR IGNORE INTO remote_packs (remote, pack, size, count) "
                          "SELECT remote, pack, size, count FROM arriving_remote_packs "
                          "ORDER BY rowid")
        self.conn.execute("INSERT INTO remote_objects (remote, oid, pack_num, offset, "
                          "length, kind) SELECT a.remote, a.oid, p.num, a.offset, a.length, "
                          "a.kind FROM arriving_remote_objects a JOIN remote_packs p ON "
                          "p.remote = a.remote AND p.pack = a.pack WHERE true "
                          "ORDER BY a.remote, a.oid, a.rowid " + _KEEP_UNLESS_DANGLING.format(
                              table="remote_objects", key="remote, oid", packs="remote_packs"))
        for table in ("arriving_remote_packs", "arriving_remote_objects"):
            self.conn.execute(f"DELETE FROM {table}")

    def remote_pack_kinds(self, remote: str) -> dict[str, set[int]]:
        """The kinds of object each of `remote`'s packs holds (as its index rows say)."""
        out: dict[str, set[int]] = {}
        for pack, kind in self.conn.execute("SELECT DISTINCT pack, kind FROM "
                                            "remote_object_rows WHERE remote=?", (remote,)):
            out.setdefault(pack, set()).add(kind)
        return out

    def remote_pack_counts(self, remote: str) -> dict[str, int]:
        """Entries in each of `remote`'s packs, as its index said: pack id → count (0
        where a dsv of schema 7 recorded the pack)."""
        return dict(self.conn.execute("SELECT pack, coalesce(count, 0) FROM remote_packs "
                                      "WHERE remote=?", (remote,)))

    def forget_remote_packs(self, remote: str, packs: Iterable[str]) -> None:
        """Forget that `remote` holds these packs (and their objects): one pass over the
        remote's rows however many packs go. Call within a transaction."""
        self._numbered()
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS going_remote_packs ("
                          "pack TEXT PRIMARY KEY) WITHOUT ROWID")
        self.conn.execute("DELETE FROM going_remote_packs")  # (see add_remote_packs)
        self._put_rows("INSERT OR IGNORE INTO going_remote_packs (pack)",
                       ((pack,) for pack in packs), 1)
        if self.conn.execute("SELECT 1 FROM going_remote_packs").fetchone() is None:
            return
        self.conn.execute("DELETE FROM remote_objects WHERE remote=? AND pack_num IN (SELECT "
                          "num FROM remote_packs WHERE remote=? AND pack IN (SELECT pack FROM "
                          "going_remote_packs))", (remote, remote))
        self.conn.execute("DELETE FROM remote_packs WHERE remote=? AND pack IN "
                          "(SELECT pack FROM going_remote_packs)", (remote,))
        self.conn.execute("DELETE FROM going_remote_packs")

    def remote_locate_many(self, remote: str, oids: Iterable[str], kind: int | None = None
                           ) -> dict[str, tuple[str, int, int]]:
        """Where `remote` holds those of `oids` that are in its packs (as objects of
        `kind`, if given): oid → (pack, offset, length)."""
        of_kind = "" if kind is None else f"kind={int(kind)} AND "
        if self.unmigrated is not None:   # (packs named by id: see _view_unnumbered)
            found = {oid: (pack, offset, length) for oid, pack, offset, length in
                     self._rows_in("SELECT oid, pack, offset, length FROM remote_object_rows "
                                   f"WHERE remote=? AND {of_kind}oid IN ({{marks}})", oids,
                                   remote)}
            _check_wheres(found, remote)
            return found
        # (the pack's number, not its id: no join, and a fifth of the text to decode per
        # row; a number naming no pack of `remote` is skipped, as the view would)
        rows = list(self._rows_in(
            "SELECT oid, pack_num, offset, length FROM remote_objects WHERE remote=? AND "
            f"{of_kind}oid IN ({{marks}})", oids, remote))
        nums = sorted({row[1] for row in rows})
        packs: dict[int, str] = {}
        for i in range(0, len(nums), _IN_BATCH):
            part = nums[i:i + _IN_BATCH]
            packs.update(self.conn.execute(
                "SELECT num, pack FROM remote_packs WHERE remote=? AND num IN "
                f"({','.join('?' * len(part))})", (remote, *part)))
        found = {oid: (packs[num], offset, length) for oid, num, offset, length in rows
                 if num in packs}
        _check_wheres(found, remote)
        return found

    def remote_objects_of_kind(self, remote: str, kind: int) -> list[tuple[str, str, int, int]]:
        """(oid, pack, offset, length) of `remote`'s packed objects of
        one kind."""
        return list(self.conn.execute("SELECT oid, pack, offset, length FROM "
                                      "remote_object_rows WHERE remote=? AND kind=?",
                                      (remote, kind)))

    # ---- dataset catalogs on remotes (`catalog/<dataset>/<pack>`) -----------------------
    def catalog_packs(self, remote: str, dataset: str) -> set[str]:
        """The packs `dataset`'s catalog on `remote` is known to name."""
        return {r[0] for r in self.conn.execute(
            "SELECT pack FROM remote_catalog WHERE remote=? AND dataset=?", (remote, dataset))}

    def set_catalog(self, remote: str, dataset: str, packs: Iterable[str],
                    replace: bool = False) -> None:
        """Remember that `dataset`'s catalog on `remote` names `packs` (with `replace`,
        only them: what a listing of it just found)."""
        if replace:
            self.conn.execute("DELETE FROM remote_catalog WHERE remote=? AND dataset=?",
                              (remote, dataset))
        self.conn.executemany("INSERT OR IGNORE INTO remote_catalog (remote, dataset, pack) "
                              "VALUES (?,?,?)", ((remote, dataset, p) for p in packs))

    def catalog_datasets(self, remote: str) -> set[str]:
        """The datasets whose catalog on `remote` is known to name some pack."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT dataset FROM remote_catalog WHERE remote=?", (remote,))}

    def forget_catalogs(self, remote: str) -> None:
        """Forget every catalog entry remembered on `remote`."""
        self.conn.execute("DELETE FROM remote_catalog WHERE remote=?", (remote,))

    # ---- packs a push began to upload (`remote_sending`, schema 11) ---------------------
    def note_sending(self, remote: str, packs: Iterable[str]) -> None:
        """Remember that a push begins to upload `packs` to `remote` (before it does: a
        push killed meanwhile leaves them for the next one to look for)."""
        self.conn.executemany("INSERT OR IGNORE INTO remote_sending (remote, pack) "
                              "VALUES (?,?)", ((remote, p) for p in packs))

    def sending(self, remote: str) -> set[str]:
        """The packs a push began to upload to `remote` and did not record there (none in
        an index of an older schema that can only be read: such a store pushes nothing)."""
        try:
            return {r[0] for r in self.conn.execute(
                "SELECT pack FROM remote_sending WHERE remote=?", (remote,))}
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return set()
            raise

    def forget_sending(self, remote: str, packs: Iterable[str]) -> None:
        """Forget `packs` as begun: recorded on `remote` now, or looked for and not there."""
        self.conn.executemany("DELETE FROM remote_sending WHERE remote=? AND pack=?",
                              ((remote, p) for p in packs))

    def need_remote_packs(self, remote: str) -> set[str]:
        """The packs of `remote` that hold the objects in `need` it holds."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT r.pack FROM need n JOIN remote_object_rows r ON r.remote = ? AND "
            "r.oid = n.oid", (remote,))}

    def remote_scope(self, remote: str) -> list[str] | None:
        """The datasets a store that reads only some of `remote`'s datasets reads (a
        `clone --dataset`), or None: all of them."""
        row = self.conn.execute("SELECT value FROM meta WHERE key=?",
                                (f"remote-scope:{remote}",)).fetchone()
        return [str(d) for d in json.loads(row[0])] if row else None

    def set_remote_scope(self, remote: str, datasets: list[str] | None) -> None:
        """Remember which datasets of `remote` this store reads (None: all of them)."""
        if datasets is None:
            self.conn.execute("DELETE FROM meta WHERE key=?", (f"remote-scope:{remote}",))
        else:
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)",
                              (f"remote-scope:{remote}", json.dumps(sorted(set(datasets)))))

    def remote_loose(self, remote: str, oids: Iterable[str]) -> set[str]:
        """Those of `oids` known to be loose objects on `remote`."""
        return {r[0] for r in self._rows_in(
            "SELECT oid FROM remote_loose WHERE remote=? AND oid IN ({marks})", oids, remote)}

    def add_remote_loose(self, remote: str, oids: Iterable[str]) -> None:
        """Remember that `remote` holds these loose objects."""
        self.conn.executemany("INSERT OR IGNORE INTO remote_loose (remote, oid) VALUES (?,?)",
                              ((remote, oid) for oid in oids))

    def forget_remote_loose(self, remote: str) -> None:
        """Forget every loose object remembered on `remote`."""
        self.conn.execute("DELETE FROM remote_loose WHERE remote=?", (remote,))

    def remote_refs(self, remote: str) -> list[tuple[str, str, str, str, str | None]]:
        """(dataset, ref, version, record, etag) rows last seen on `remote`."""
        return list(self.conn.execute("SELECT dataset, ref, version, record, etag FROM "
                                      "remote_refs WHERE remote=? ORDER BY dataset, ref",
                                      (remote,)))

    def remote_ref(self, remote: str, dataset: str, ref: str) -> str | None:
        """The version id a dataset's ref (`latest` or `tags/NAME`) had on `remote` when
        last seen there, if any."""
        row = self.conn.execute("SELECT version FROM remote_refs WHERE remote=? AND dataset=? "
                                "AND ref=?", (remote, dataset, ref)).fetchone()
        return str(row[0]) if row else None

    def set_remote_ref(self, remote: str, dataset: str, ref: str, version: str, record: str,
                       etag: str | None) -> None:
        """Remember one ref as last seen on (or written to) `remote`."""
        self.conn.execute("INSERT OR REPLACE INTO remote_refs (remote, dataset, ref, version, "
                          "record, etag) VALUES (?,?,?,?,?,?)",
                          (remote, dataset, ref, version, record, etag))

    def replace_remote_refs(self, remote: str,
                            refs: Iterable[tuple[str, str, str, str, str | None]],
                            datasets: Iterable[str] | None = None) -> None:
        """Forget every ref remembered of `remote` (with `datasets`, of those datasets
        only), then remember `refs` (dataset, ref, version, record, etag): what a fetch
        just read."""
        if datasets is None:
            self.conn.execute("DELETE FROM remote_refs WHERE remote=?", (remote,))
        else:
            self.conn.executemany("DELETE FROM remote_refs WHERE remote=? AND dataset=?",
                                  ((remote, d) for d in datasets))
        self.conn.executemany("INSERT OR REPLACE INTO remote_refs (remote, dataset, ref, "
                              "version, record, etag) VALUES (?,?,?,?,?,?)",
                              [(remote, *row) for row in refs])

    def drop_remote_ref(self, remote: str, dataset: str, ref: str) -> None:
        """Forget one ref remembered of `remote`."""
        self.conn.execute("DELETE FROM remote_refs WHERE remote=? AND dataset=? AND ref=?",
                          (remote, dataset, ref))

    def promised(self) -> dict[str, str]:
        """Versions fetched from a remote whose blobs may not all be here: version → remote."""
        return dict(self.conn.execute("SELECT version, remote FROM promised"))

    def promised_by(self, vid: str) -> str | None:
        """The remote `vid`'s blobs may still be only on, if it is promised."""
        row = self.conn.execute("SELECT remote FROM promised WHERE version=?",
                                (vid,)).fetchone()
        return row[0] if row else None

    def add_promised(self, vid: str, remote: str) -> None:
        """Note that `vid`'s blobs may still be only on `remote`."""
        self.conn.execute("INSERT OR IGNORE INTO promised (version, remote) VALUES (?,?)",
                          (vid, remote))

    def drop_promised(self, vids: Iterable[str]) -> None:
        """Forget the promises of `vids` (their blobs are all here now)."""
        self.conn.executemany("DELETE FROM promised WHERE version=?", ((v,) for v in vids))

    def unfetched(self) -> dict[str, str]:
        """Versions whose trees are not here yet (history a fetch left on the remote):
        version → remote."""
        return dict(self.conn.execute("SELECT version, remote FROM unfetched"))

    def add_unfetched(self, vid: str, remote: str) -> None:
        """Note that `vid`'s trees are still only on `remote`."""
        self.conn.execute("INSERT OR IGNORE INTO unfetched (version, remote) VALUES (?,?)",
                          (vid, remote))
        self._mirror()

    def unfetched_with_tree(self, root: str) -> list[tuple[str, str]]:
        """The unfetched versions whose root tree is `root`: (version, remote)."""
        return list(self.conn.execute(
            "SELECT u.version, u.remote FROM versions v JOIN unfetched u ON u.version = v.id "
            "WHERE v.tree=? ORDER BY u.version", (root,)))

    def is_unfetched_root(self, root: str) -> bool:
        """Whether `root` is the root tree of a version fetched without its trees (one
        indexed lookup: asked of every tree read that misses the cache)."""
        return self.conn.execute(
            "SELECT 1 FROM versions v JOIN unfetched u ON u.version = v.id WHERE v.tree=? "
            "LIMIT 1", (root,)).fetchone() is not None

    def unfetched_roots(self) -> set[str]:
        """The root trees of the versions fetched without their trees (any version, a
        draft made from one too, with such a root has its trees on the remote)."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT v.tree FROM unfetched u JOIN versions v ON v.id = u.version")}

    def drop_unfetched_roots(self, roots: Iterable[str]) -> None:
        """Forget the unfetched mark of every version whose root tree is one of `roots`
        (its trees were fetched and validated)."""
        dropped = 0
        for part in self._batches(list(roots)):
            dropped += self.conn.execute(
                f"DELETE FROM unfetched WHERE version IN (SELECT id FROM versions WHERE tree "
                f"IN ({','.join('?' * len(part))}))", part).rowcount
        if dropped:
            self._mirror()

    def drop_unfetched_stored(self, tree_kind: int) -> None:
        """Forget the unfetched mark of every version whose root tree is stored here now
        as an object of `tree_kind` (validated as a tree, with everything beneath it)."""
        if self.conn.execute(
                "DELETE FROM unfetched WHERE version IN (SELECT v.id FROM versions v "
                "JOIN object_rows o ON o.oid = v.tree AND o.kind=? WHERE v.id IN "
                "(SELECT version FROM unfetched))", (tree_kind,)).rowcount:
            self._mirror()

    # ---- interrupted checkouts ---------------------------------------------------
    def checkout_journal(self, target: str) -> str | None:
        """The version a checkout into `target` was placing when it was interrupted."""
        row = self.conn.execute("SELECT version FROM checkouts WHERE target=? AND done=0",
                                (target,)).fetchone()
        return row[0] if row else None

    def placed_version(self, target: str) -> str | None:
        """The version a completed checkout last placed in `target` (a --to directory)."""
        row = self.conn.execute("SELECT version FROM checkouts WHERE target=? AND done=1",
                                (target,)).fetchone()
        return row[0] if row else None

    def begin_checkout(self, target: str, vid: str) -> None:
        """Journal a checkout of `vid` into `target` before it places a file."""
        self.conn.execute("INSERT OR REPLACE INTO checkouts (target, version, started, done) "
                          "VALUES (?,?,?,0)", (target, vid, time.time()))

    def end_checkout(self, target: str, placed: str | None) -> None:
        """Close the journal; remember `placed` as the directory's content, if whole."""
        if placed is None:
            self.conn.execute("DELETE FROM checkouts WHERE target=?", (target,))
        else:
            self.conn.execute("UPDATE checkouts SET done=1, version=? WHERE target=?",
                              (placed, target))


# ---- what SQLite's failures mean -------------------------------------------------------

_MESSAGE_NAMES = (("malformed", "SQLITE_CORRUPT"), ("not a database", "SQLITE_NOTADB"),
                  ("could not decode to utf-8", "SQLITE_CORRUPT"),  # Python's, for a text cell
                  ("disk i/o error", "SQLITE_IOERR"), ("disk is full", "SQLITE_FULL"),
                  ("readonly database", "SQLITE_READONLY"),
                  ("unable to open database", "SQLITE_CANTOPEN"),
                  ("database is locked", "SQLITE_BUSY"),
                  ("database table is locked", "SQLITE_LOCKED"))


def _error_name(exc: sqlite3.Error) -> str:
    """SQLite's name for `exc` (`SQLITE_IOERR_WRITE`, …); read from the message before
    Python 3.11, which gives only the primary code that way."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return str(name)
    text = str(exc).lower()
    return next((n for fragment, n in _MESSAGE_NAMES if fragment in text), "")


def _primary(name: str) -> str:
    return "_".join(name.split("_")[:2])


_READ_FAILURES = ("SQLITE_IOERR_READ", "SQLITE_IOERR_SHORT_READ")


def is_write_failure(exc: BaseException) -> bool:
    """Whether `exc` says a file could not be written for want of space or of the right
    to write (SQLite's failure, or the system's), not that anything is damaged."""
    if isinstance(exc, sqlite3.Error):
        return _is_write_failure(exc)
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def _is_write_failure(exc: sqlite3.Error) -> bool:
    name = _error_name(exc)
    return _primary(name) in ("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_READONLY",
                              "SQLITE_CANTOPEN") and name not in _READ_FAILURES


def _why_unwritable(path: Path, name: str, detail: str) -> tuple[str, str]:
    """(cause, hint) for a write to `path` that the system refused."""
    folder = path.parent
    try:
        fs = os.statvfs(folder)
    except OSError:
        fs = None
    if fs is not None and fs.f_flag & os.ST_RDONLY:
        return "the file system is read-only", "use only commands that read, or remount it"
    if _primary(name) == "SQLITE_FULL" or (fs is not None and fs.f_bavail == 0):
        return ("no space left on the device",
                f"free some space on the disk holding {folder} and run the command again")
    import resource
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return (f"the file-size limit of this process is reached (ulimit -f: {limit} bytes)",
                "raise the file-size limit (`ulimit -f unlimited`) and run the command again")
    if _primary(name) == "SQLITE_READONLY" or not os.access(folder, os.W_OK):
        return ("the file or its directory is read-only",
                f"make {folder} writable, or use only commands that read")
    return detail, "check the disk and the space left on it, then run the command again"


def index_error(exc: sqlite3.Error, path: str | os.PathLike[str]) -> DsvError | None:
    """What a failure of SQLite on the index at `path` means for the user, or None when it
    is not the file's or the system's doing (a bug in dsv)."""
    path = Path(path)
    name = _error_name(exc)
    primary = _primary(name)
    detail = str(exc)
    rebuild = ("recreate it from the objects with `dsv index rebuild` "
               "(the damaged file is kept beside it)")
    if primary in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or name == "SQLITE_IOERR_SHORT_READ":
        return IndexDamaged(f"the index {path} is damaged ({detail})", hint=rebuild)
    if name == "SQLITE_IOERR_READ":
        return IndexDamaged(f"cannot read the index {path} ({detail})",
                            hint="check the disk (`dmesg`); if the file is damaged, " + rebuild)
    if primary in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return IndexBusy(f"the index {path} is held by another process ({detail})",
                         hint="wait for it to finish and run the command again")
    if primary == "SQLITE_CANTOPEN":
        return IndexUnwritable(f"cannot open the index {path} ({detail})",
                               hint=f"check that {path.parent} and its index.db are readable "
                                    "and writable by you")
    if primary in ("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_READONLY"):
        cause, hint = _why_unwritable(path, name, detail)
        return IndexUnwritable(f"cannot write the index {path}: {cause}", hint=hint)
    return None


def salvage(db_path: Path) -> tuple[dict[str, Row], list[Row], list[dict[str, Any]]]:
    """Dataset rows, tags and remotes from a damaged index, as far as they can be read."""
    if not db_path.exists():
        return {}, [], []
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        datasets = {r[0]: r for r in conn.execute(
            "SELECT id, name, path, description, created FROM datasets")}
        tags = list(conn.execute("SELECT dataset, name, version, created FROM tags"))
    except sqlite3.Error:
        return {}, [], []
    try:
        cursor = conn.execute("SELECT * FROM remotes")
        cols = [d[0] for d in cursor.description]
        remotes = [dict(zip(cols, r, strict=True)) for r in cursor]
    except sqlite3.Error:
        remotes = []  # a store from before schema 3
    conn.close()
    return datasets, tags, remotes
