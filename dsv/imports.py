"""`dsv import`: a version made from an S3 object or prefix, pinned by ETag or VersionId.

Owns turning S3 listings into a manifest (keys relative to the prefix, each checked as
an untrusted path), downloading in parallel into the object store with every object
verified (blake3 computed as it is stored; MD5 against single-part ETags; sizes against
the listing), remembering what was downloaded so an interrupted import resumes without
fetching it again, recording the source of every file in the version, and re-checking
that source later (`dsv import --check`). Never creates half a version: the version
exists only once every object is stored.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from collections.abc import Callable, Iterator
from typing import Any

from .core import Core
from . import chunking, fileio, refs, tree, versions
from .errors import DsvError, InvalidInput, UnsafePath
from .faults import crashpoint
from .hashing import hash_bytes
from .model import COMMITTED, Version
from .reports import ImportCheckReport
from .objects import KIND_BLOB, KIND_TREE, PACK_THRESHOLD, Ingest
from .paths import check_relpath
from .reporting import Advance
from .remotes import s3
from .remotes.base import NotFound


WORKERS = 8
BATCH_FILES = 256
BATCH_BYTES = 64 << 20
_CHUNK = 8 << 20
MAX_OBJECTS = tree.MAX_VERSION_PATHS
"""The most objects one import takes: as many paths as a version may hold (counted as
the listing arrives, so an endless one is not kept in memory)."""
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
# An ETag that can go in an If-Match header as one strong entity-tag (RFC 9110's
# etagc, without obs-text): anything else (empty, weak, holding a quote) cannot pin.
_PINNING_ETAG = re.compile(r"[\x21\x23-\x7e]{1,1024}")


class ImportMismatch(DsvError):
    """The source is not what was pinned (ETag), or no longer what was imported."""


class _Stopped(DsvError):
    """A download given up because another of its batch failed (never shown)."""


def default_name(url: str) -> str:
    """`s3://b/mnist.zip` → `mnist`; `s3://b/data/train/` → `train`; `s3://b` → `b`."""
    bucket, key = s3.parse_s3_url(url)
    last = posixpath.basename(key.rstrip("/")) or bucket
    stem = last.split(".", 1)[0] if not last.startswith(".") else last.lstrip(".")
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in stem)
    cleaned = cleaned.strip("-._")
    return cleaned if cleaned and refs.is_valid_name(cleaned) else bucket


def _source_key(client: s3.S3Client, bucket: str, obj: s3.S3Object) -> str:
    """What table `imported` calls a downloaded object: the endpoint's URL, bucket, key
    and pin. (A VersionId, or a multipart ETag, is only a name the server chose: bytes
    one endpoint gave under it are not another endpoint's.)"""
    return f"{client.meta.endpoint_url}/{bucket}/{obj.key}@{obj.version_id or obj.etag}"


def _listing(client: s3.S3Client, bucket: str, key: str, etag: str | None,
             version_id: str | None) -> tuple[list[s3.S3Object], str]:
    """The objects to import and the prefix their paths are relative to."""
    if version_id or etag:
        if not key or key.endswith("/"):
            raise InvalidInput("--etag and --version-id pin one object; this URL is a prefix")
        obj = s3.head(client, bucket, key, version_id)
        if etag and obj.etag != etag.strip('"'):
            raise ImportMismatch(f"s3://{bucket}/{key} has ETag {obj.etag}, not {etag}",
                                 hint="the object changed since it was pinned; nothing was "
                                      "imported")
        return [obj], posixpath.dirname(key)
    if key and not key.endswith("/"):
        try:
            obj = s3.head(client, bucket, key)
            return [obj], posixpath.dirname(key)
        except NotFound:
            pass  # not an object: a prefix without its trailing slash
        key += "/"
    objects: list[s3.S3Object] = []
    for obj in s3.list_prefix(client, bucket, key):
        if len(objects) >= MAX_OBJECTS:
            raise InvalidInput(f"s3://{bucket}/{key} holds more than {MAX_OBJECTS:,} objects",
                               hint="import a smaller prefix; nothing was imported")
        objects.append(obj)
    if not objects:
        raise InvalidInput(f"nothing to import at s3://{bucket}/{key}")
    return objects, key.rstrip("/")


def _pinned(client: s3.S3Client, bucket: str,
            objects: list[s3.S3Object]) -> list[s3.S3Object]:
    """`objects`, each one a GET can be pinned to: by its VersionId, or else by an ETag
    that can go in If-Match. One the listing gives no such ETag for is described again
    by a HEAD (its VersionId, in a versioned bucket, or its ETag); one still unpinned is
    refused, before any download: its bytes could be other than those recorded."""
    def can_pin(obj: s3.S3Object) -> bool:
        return bool(obj.version_id) or _PINNING_ETAG.fullmatch(obj.etag) is not None

    loose = [i for i, obj in enumerate(objects) if not can_pin(obj)]
    if not loose:
        return objects
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        heads = list(pool.map(lambda i: s3.head(client, bucket, objects[i].key,
                                                objects[i].version_id), loose))
    pinned = list(objects)
    for i, obj in zip(loose, heads, strict=True):
        if not can_pin(obj):
            raise InvalidInput(f"s3://{bucket}/{obj.key} has no ETag (nor VersionId) to pin "
                               f"its download by", hint="dsv imports only bytes it can pin; "
                               "enable versioning on the bucket or use an endpoint that "
                               "gives ETags; nothing was imported")
        pinned[i] = obj
    return pinned


def _check_sizes(bucket: str, objects: list[s3.S3Object]) -> None:
    """Every size the listing gives is one a file can have: a negative one would hide
    the others from the free-space check."""
    for obj in objects:
        if not 0 <= obj.size <= tree.MAX_SIZE:
            raise InvalidInput(f"s3://{bucket}/{obj.key} is listed with {obj.size} bytes, "
                               f"which no object has",
                               hint="the endpoint is broken or hostile; nothing was imported")


def _space_needed(objects: list[s3.S3Object]) -> int:
    """Bytes the download of `objects` may take on the store's disk: every object, plus
    the spool of each large one being chunked (up to WORKERS at once) beside its chunks."""
    spooled = sorted((o.size for o in objects
                      if chunking.CHUNK_THRESHOLD <= o.size <= chunking.MAX_CHUNKED_SIZE),
                     reverse=True)
    return sum(o.size for o in objects) + sum(spooled[:WORKERS])


def _relative(bucket: str, obj: s3.S3Object, base: str) -> str:
    """The dataset path of `obj`, a key under `base`: refused when the listing (the
    endpoint's, untrusted) names a key outside it."""
    if base and not obj.key.startswith(base + "/"):
        raise InvalidInput(f"the listing of s3://{bucket}/{base}/ names s3://{bucket}/"
                           f"{obj.key}, which is not under it",
                           hint="the endpoint is broken or hostile; nothing was imported")
    rel = obj.key[len(base) + 1:] if base else obj.key
    try:
        return check_relpath(rel)
    except UnsafePath as exc:
        raise UnsafePath(f"S3 key {obj.key!r} cannot be a dataset path: {exc.message}",
                         hint="nothing was imported") from None


def _check_no_file_is_a_directory(bucket: str, paths: dict[str, str]) -> None:
    """Keys `a` and `a/b` cannot both be files of a dataset: refused from the listing,
    before any download, naming both keys."""
    key_of = {path: key for key, path in paths.items()}
    for key, path in paths.items():
        cut = path.find("/")
        while cut != -1:
            other = key_of.get(path[:cut])
            if other is not None:
                raise InvalidInput(f"S3 keys s3://{bucket}/{other} and s3://{bucket}/{key} "
                                   f"cannot both be imported: {path[:cut]} would be a file "
                                   f"and a directory",
                                   hint="import a prefix that holds only one of them; "
                                        "nothing was imported")
            cut = path.find("/", cut + 1)


def import_s3(core: Core, url: str, name: str | None = None, etag: str | None = None,
              version_id: str | None = None, endpoint_url: str | None = None,
              profile: str | None = None, no_sign_request: bool = False,
              message: str | None = None, reuse: bool = False) -> Version:
    """Create a committed version of dataset `name` from an S3 object or prefix. With
    `reuse`, a version of that dataset imported from the very same objects (keys, ETags,
    VersionIds, sizes) is returned instead, and nothing is downloaded."""
    bucket, key = s3.parse_s3_url(url)
    client = s3.make_client(endpoint_url, profile, True if no_sign_request else None)
    s3.check_reachable(client)
    objects, base = _listing(client, bucket, key, etag, version_id)
    objects = _pinned(client, bucket, objects)
    _check_sizes(bucket, objects)
    paths: dict[str, str] = {}
    for obj in objects:  # (distinct keys under one prefix are distinct paths)
        if obj.key in paths:
            raise InvalidInput(f"the listing names s3://{bucket}/{obj.key} twice",
                               hint="the endpoint is broken or hostile; nothing was imported")
        paths[obj.key] = _relative(bucket, obj, base)
    _check_no_file_is_a_directory(bucket, paths)
    name = name or default_name(url)
    if reuse:
        same = _same_import(core, name, url, client.meta.endpoint_url,
                            {paths[o.key]: _file_record(o) for o in objects})
        if same is not None:
            return same
    done = core.index.imported(_source_key(client, bucket, o) for o in objects)
    todo = [o for o in objects if _source_key(client, bucket, o) not in done
            or not _still_stored(core, *done[_source_key(client, bucket, o)])]
    fileio.check_room(core.tmp_root, _space_needed(todo), "the import",
                      hint="free some space, or import a smaller prefix; nothing was imported")
    total = sum(o.size for o in todo)
    with core.reporter.task("downloading", len(todo), total) as advance:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for batch in _batches(todo):
                _download_batch(core, client, bucket, batch, pool, advance)
    done = core.index.imported(_source_key(client, bucket, o) for o in objects)
    manifest = {}
    record_files = {}
    for obj in objects:
        oid, size, listed = done[_source_key(client, bucket, obj)]
        path = paths[obj.key]
        manifest[path] = tree.Entry(tree.FILE, 0o644, size, oid, listed)
        record_files[path] = _file_record(obj)
    lineage = {"import": {"source": url, "bucket": bucket, "prefix": base,
                          "single_object": len(objects) == 1 and (key == objects[0].key),
                          "endpoint_url": endpoint_url,
                          "served_by": client.meta.endpoint_url, "files": record_files}}
    return versions.commit_manifest(core, name, manifest, message or f"import {url}", lineage,
                                 create_dataset=True)


def _file_record(obj: s3.S3Object) -> dict[str, Any]:
    """What an imported version's lineage records of one source object."""
    return {"key": obj.key, "etag": obj.etag, "version_id": obj.version_id, "size": obj.size}


def _same_import(core: Core, name: str, url: str, served_by: str,
                 files: dict[str, dict[str, Any]]) -> Version | None:
    """The newest committed version of dataset `name` imported from `url` with exactly
    these source objects, served by the endpoint at `served_by`, if there is one. (As
    for `_source_key`: what one endpoint served under a key and ETag or VersionId is not
    another endpoint's object; an import recorded without `served_by` is never reused.)"""
    ds = core.index.dataset_by("name", name)
    if ds is None:
        return None
    for v in core.index.versions(ds.id, COMMITTED):
        source = (v.lineage or {}).get("import") or {}
        if source.get("source") == url and source.get("served_by") == served_by \
                and source.get("files") == files:
            return v
    return None


def _still_stored(core: Core, oid: str, size: int, listed: str) -> bool:
    if listed:
        if core.index.locate(listed) is None:
            return False
        try:
            chunks = tree.read_chunks(core.read_tree, listed, oid, size, trusted=True)
        except DsvError:
            return False
        return all(core.index.locate(c) is not None for c, _n in chunks.chunks)
    if size >= PACK_THRESHOLD:
        return core.objects.has_loose(oid)
    return core.index.locate(oid) is not None


def _batches(objects: list[s3.S3Object]) -> list[list[s3.S3Object]]:
    batches: list[list[s3.S3Object]] = [[]]
    nbytes = 0
    for obj in objects:
        if len(batches[-1]) >= BATCH_FILES or nbytes >= BATCH_BYTES:
            batches.append([])
            nbytes = 0
        batches[-1].append(obj)
        nbytes += obj.size
    return [b for b in batches if b]


def _download_batch(core: Core, client: s3.S3Client, bucket: str, batch: list[s3.S3Object],
                    pool: ThreadPoolExecutor, advance: Advance) -> None:
    """Download a batch in parallel, store it, and record it in one transaction, so an
    interrupted import keeps every finished batch."""
    adding = threading.Lock()  # (Ingest.add is for one thread at a time)

    def add(oid: str, kind: int, data: bytes | memoryview) -> None:
        with adding:
            ingest.add(oid, kind, data)

    def add_chunks(pieces: list[tuple[str, memoryview]]) -> None:
        with adding:
            ingest.add_borrowed(KIND_BLOB, pieces)

    stop = threading.Event()

    def fetch(obj: s3.S3Object) -> tuple[s3.S3Object, bytes | None, str | None, int, str]:
        if stop.is_set():
            raise _Stopped("stopped")
        body = s3.open_object(client, bucket, obj)
        md5 = hashlib.md5(usedforsecurity=False)
        listed = ""
        try:
            if obj.size < PACK_THRESHOLD:
                data = b"".join(_at_most(body, obj.size, stop))
                md5.update(data)
                _check(bucket, obj, len(data), md5)
                return obj, data, None, len(data), ""
            if chunking.CHUNK_THRESHOLD <= obj.size <= chunking.MAX_CHUNKED_SIZE:
                oid, size, listed = _store_chunked(core, bucket, obj, body, md5, add,
                                                   add_chunks, stop)
            else:
                oid, size = ingest.add_large_stream(_at_most(body, obj.size, stop),
                                                    md5.update)
        except DsvError:
            raise
        except Exception as exc:
            raise s3.describe(exc, f"downloading s3://{bucket}/{obj.key}") from None
        finally:
            body.close()
        _check(bucket, obj, size, md5)
        return obj, None, oid, size, listed

    rows: list[tuple[str, str, int, str]] = []
    with Ingest(core.objects) as ingest:
        futures = [pool.submit(fetch, obj) for obj in batch]
        try:
            for future in as_completed(futures):   # (a failure is seen at once)
                obj, data, oid, size, listed = future.result()
                if data is not None:
                    oid = hash_bytes(data)
                    add(oid, KIND_BLOB, data)
                assert oid is not None
                rows.append((_source_key(client, bucket, obj), oid, size, listed))
                advance(1, size)
        except BaseException:
            # The first failure ends the import: the batch's other downloads do not
            # start, running ones stop at their next read, and the Ingest is dropped
            # only once no thread writes into it.
            stop.set()
            for future in futures:
                future.cancel()
            wait(futures)
            raise
        # Staged objects are this process's until published: gc cannot take them.
        crashpoint("import:objects-staged")
        with core.locked("import"):
            core.commit_objects(ingest, lambda: core.index.add_imported(rows))
    crashpoint("import:batch-recorded")


_CHUNKING = threading.BoundedSemaphore(2)
"""Objects chunked at once (each holds ~50 MB of buffers; downloads go on meanwhile)."""


def _store_chunked(core: Core, bucket: str, obj: s3.S3Object, body: s3.Body,
                   md5: "hashlib._Hash",
                   add: Callable[[str, int, bytes | memoryview], None],
                   add_chunks: chunking.Take, stop: threading.Event) -> tuple[str, int, str]:
    """A large object stored as a commit stores a large file: in content-defined chunks
    (those the store holds already skipped) and a chunk list; (blake3 of the whole,
    size, chunk list id). The body is put aside first, in an unnamed file of the store's
    temp directory (its size and MD5 checked as it arrives, so nothing of a body longer
    than listed is kept), then read once by the chunker."""
    with tempfile.TemporaryFile(dir=core.objects.tmp_dir) as spool:
        size = 0
        for piece in _at_most(body, obj.size, stop):
            md5.update(piece)
            spool.write(piece)
            size += len(piece)
        _check(bucket, obj, size, md5)
        spool.flush()
        spool.seek(0)
        with _CHUNKING:
            oid, size, chunks = chunking.chunk_fd(spool.fileno(), add_chunks)
    data = tree.encode_chunks(tree.ChunkList(oid, size, chunks))
    listed = hash_bytes(data)
    add(listed, KIND_TREE, data)
    return oid, size, listed


def _at_most(body: s3.Body, size: int, stop: threading.Event) -> Iterator[bytes]:
    """The body's bytes, but never more than one past the `size` the listing gave: a
    server sending more is caught by `_check` without filling memory or the disk. Ends
    with _Stopped once `stop` is set."""
    left = size + 1
    while left > 0:
        if stop.is_set():
            raise _Stopped("stopped")
        chunk = body.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _check(bucket: str, obj: s3.S3Object, size: int, md5: "hashlib._Hash") -> None:
    """The bytes received are the bytes listed: size always, MD5 for single-part ETags."""
    if size != obj.size:
        raise ImportMismatch(f"s3://{bucket}/{obj.key}: received {size} bytes, expected {obj.size}")
    if _MD5_ETAG.fullmatch(obj.etag) and md5.hexdigest() != obj.etag:
        raise ImportMismatch(f"s3://{bucket}/{obj.key}: received bytes do not match its ETag",
                             hint="the server sent corrupted data; run the import again")


def check_import(core: Core, ref: str, endpoint_url: str | None = None,
                 profile: str | None = None, no_sign_request: bool = False) -> ImportCheckReport:
    """Re-read the source's metadata: is it still exactly what `ref` imported?"""
    version = core.resolve(ref)
    source = (version.lineage or {}).get("import")
    if not source:
        raise InvalidInput(f"{ref} was not made by `dsv import`")
    _check_record(ref, source)
    client = s3.make_client(endpoint_url or _trusted_endpoint(core, ref, source), profile,
                            True if no_sign_request else None)
    s3.check_reachable(client)
    bucket = source["bucket"]
    report = ImportCheckReport(ref, source["source"])
    files: dict[str, dict[str, Any]] = source["files"]
    for path, item in sorted(files.items()):
        try:
            now = s3.head(client, bucket, item["key"], item.get("version_id"))
        except NotFound:
            report.missing.append(path)
            continue
        (report.unchanged if now.etag == item["etag"] and now.size == item["size"]
         else report.changed).append(path)
    if not source.get("single_object"):
        prefix = source.get("prefix") or ""
        known = {item["key"] for item in files.values()}
        listed = s3.list_prefix(client, bucket, prefix + "/" if prefix else "")
        # Named as the dataset would name them (relative to the imported prefix), as the
        # changed and missing ones are.
        report.added = sorted(o.key[len(prefix) + 1:] if prefix else o.key
                              for o in listed if o.key not in known
                              and (not prefix or o.key.startswith(prefix + "/")))
    return report


def _trusted_endpoint(core: Core, ref: str, source: dict[str, Any]) -> str | None:
    """The endpoint an import record names, if this store has a reason to send requests
    there: an import of this store downloaded from it, or one of its remotes uses it.
    A version pulled from a remote records whatever endpoint its maker (or a hostile
    remote) chose: --check signs its requests with this user's credentials (the access
    key id and any session token travel with them), so an endpoint no one here named is
    refused; the user names it with --endpoint-url once they trust it."""
    recorded, served = source.get("endpoint_url"), source.get("served_by")
    if not recorded:
        return None   # (the default chain: AWS, or AWS_ENDPOINT_URL here)
    named = {spec.endpoint_url for spec in core.remote_specs() if spec.endpoint_url}
    if recorded in named:
        return str(recorded)
    if isinstance(served, str) and served and (served in named or
                                               core.index.imported_through(served)):
        return served   # (the one this store knows, whatever else the record says)
    raise InvalidInput(f"{ref} was imported through the endpoint {recorded}, which no "
                       f"import or remote of this store uses; dsv sends your credentials "
                       f"only to endpoints you name, so nothing was checked",
                       hint=f"if you trust it: dsv import --check {ref} --endpoint-url "
                            f"{recorded}")


def _check_record(ref: str, source: object) -> None:
    """An import record as `import_s3` writes it: a version's lineage may come from a
    remote (damaged or hostile), and --check reads every field."""
    def bad(what: str) -> InvalidInput:
        return InvalidInput(f"{ref} has a malformed import record ({what})",
                            hint="the version was damaged, or made by a hostile remote; "
                                 "nothing was checked")

    def text(value: object, optional: bool = False) -> bool:
        return isinstance(value, str) or (optional and value is None)

    if not isinstance(source, dict):
        raise bad("not a mapping")
    for field in ("source", "bucket"):
        if not text(source.get(field)) or not source[field]:
            raise bad(f"{field} is not a name")
    if not text(source.get("prefix"), optional=True) or \
            not text(source.get("endpoint_url"), optional=True):
        raise bad("prefix or endpoint_url is not a string")
    files = source.get("files")
    if not isinstance(files, dict):
        raise bad("files is not a mapping")
    for path, item in files.items():
        if not isinstance(item, dict) or not text(item.get("key")) or \
                not text(item.get("etag")) or not text(item.get("version_id"), optional=True) \
                or type(item.get("size")) is not int:
            raise bad(f"the source of {path!r} is not a key, ETag, VersionId and size")
