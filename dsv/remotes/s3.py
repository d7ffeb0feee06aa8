"""S3 access for dsv: one way to make a client, one retry policy, and the few calls
dsv makes (list, head, get), against AWS or any S3-compatible endpoint.

Owns credentials handling (the standard AWS chain or `--profile`; never stored or
printed; unsigned requests for public buckets), timeouts and retries (botocore's
standard mode: throttling, 5xx, resets and timeouts are retried with backoff), and
turning botocore errors into one clear DsvError. The endpoint is not trusted: a
body is read only after its Content-Length passed the cap for what it is, and then read
bounded (never `.read()` to the end of an unbounded stream); bytes that fail S3's own
checksum are a CorruptDownload; listed keys outside the prefix, or not plain relative
paths, are left out. Must never touch the store.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..errors import InvalidInput
from .layout import LOOSE, loose_oid_of_key
from .base import (MAX_GET_BYTES, MAX_REF_BYTES, BadKey, CorruptDownload, NotFound, Progress,
                   RemoteError, TooLarge, check_key, check_range)

CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30
# Standard mode backs off min(20, rand·2^n) s between attempts: five attempts give up
# within ~30 s on an endpoint that fails every request, and ride out 10% failures.
MAX_ATTEMPTS = 5
# A body that breaks off after its headers arrived is not retried by botocore.
BODY_ATTEMPTS = 3
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 16 << 20
MAX_STALE_UPLOADS = 100_000
"""Unfinished uploads `remove_stale_uploads` aborts at most in one call (two requests
each; a listing that never ends must not hold a gc for good)."""
MAX_PARTS = 10_000
"""S3's most parts in one upload: the most a listing of one upload's parts is read."""
_PIECE = 8 << 20


S3Client = Any
"""A boto3 S3 client (boto3 ships no type information)."""

BotoSession = Any
"""A boto3 session."""


class Body(Protocol):
    """A response body being read (botocore's StreamingBody)."""

    def read(self, amt: int | None = None) -> bytes:
        """Up to `amt` bytes (all that is left without it); b"" at the end."""

    def close(self) -> None:
        """Stop reading and release the connection."""


@dataclass(frozen=True)
class S3Object:
    """One object of a bucket as a HEAD or a listing describes it (what `dsv import` pins)."""

    key: str
    size: int
    etag: str                 # without quotes
    version_id: str | None


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` → ("bucket", "some/key")."""
    if not url.startswith("s3://") or len(url) <= 5:
        raise InvalidInput(f"not an S3 URL: {url}", hint="write s3://BUCKET[/KEY-OR-PREFIX]")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise InvalidInput(f"no bucket in {url}")
    return bucket, key


def make_client(endpoint_url: str | None = None, profile: str | None = None,
                unsigned: bool | None = None) -> S3Client:
    """A boto3 S3 client. `unsigned=None` signs when credentials exist, else not (so
    public buckets work with no configuration)."""
    import botocore.config
    from botocore import UNSIGNED

    try:
        session = _session(profile)
        if profile is not None and profile not in session.available_profiles:
            # (boto3 checks this itself only for a session it makes)
            raise RemoteError(f"AWS profile problem: The config profile ({profile}) could "
                              "not be found")
        if unsigned is None:
            unsigned = session.get_credentials() is None
    except RemoteError:
        raise
    except Exception as exc:  # botocore.exceptions.ProfileNotFound and kin
        raise RemoteError(f"AWS profile problem: {exc}") from None
    config = botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        signature_version=UNSIGNED if unsigned else None,
        max_pool_connections=32)
    return session.client("s3", endpoint_url=endpoint_url, config=config)


_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


def _new_loader_lock() -> None:
    """In a forked child: another thread of the parent may have held the lock at the
    fork, and would never give it back here."""
    global _LOADER_LOCK
    _LOADER_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_loader_lock)


def _session(profile: str | None) -> BotoSession:
    """A new boto3 session (credentials and profile its own: they are looked up again for
    every client) whose botocore session shares the process's one loader of botocore's
    service models: reading those JSON files took 0.15 s a client, and a clone makes four."""
    import boto3
    import botocore.session

    global _LOADER
    with _LOADER_LOCK:
        inner = botocore.session.Session()
        if _LOADER is None:
            _LOADER = inner.get_component("data_loader")
        else:
            inner.register_component("data_loader", _LOADER)
        session = boto3.Session(botocore_session=inner, profile_name=profile)
        # (boto3 adds its data directory to the loader of every session it is given)
        paths = _LOADER.search_paths
        paths[:] = list(dict.fromkeys(paths))
        return session


def describe(exc: BaseException, what: str) -> RemoteError:
    """One line for a botocore failure, with a hint where one helps."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, FlexibleChecksumError,
                                     NoCredentialsError, ReadTimeoutError, ConnectTimeoutError)

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        hints = {"NoSuchBucket": "check the bucket name and --endpoint-url",
                 "NoSuchKey": "check the key; a prefix must hold at least one object",
                 "404": "check the key (and --version-id)",
                 "AccessDenied": "check your AWS credentials or --profile; for a public "
                                 "bucket try --no-sign-request",
                 "403": "check your AWS credentials or --profile; for a public bucket try "
                        "--no-sign-request",
                 "PreconditionFailed": "the object changed: its ETag is not the one pinned",
                 "412": "the object changed: its ETag is not the one pinned"}
        return RemoteError(f"{what}: {code} ({status}) {err.get('Message', '')}".rstrip(),
                           hint=hints.get(code))
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return RemoteError(f"{what}: cannot reach the S3 endpoint ({exc})",
                           hint="check the network and --endpoint-url")
    if isinstance(exc, ReadTimeoutError):
        return RemoteError(f"{what}: the S3 endpoint stopped answering ({exc})")
    if isinstance(exc, NoCredentialsError):
        return RemoteError(f"{what}: no AWS credentials found",
                           hint="configure the AWS credential chain, or --no-sign-request")
    if isinstance(exc, FlexibleChecksumError):
        return corrupt_download(what)
    return RemoteError(f"{what}: {type(exc).__name__}: {exc}")


def check_reachable(client: S3Client, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast, with one clear line, when the endpoint cannot be reached at all
    (botocore would spend a minute retrying a refused connection)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(client.meta.endpoint_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RemoteError(f"cannot reach the S3 endpoint {url.scheme}://{url.netloc} "
                          f"({exc.strerror or exc})",
                          hint="check the network and --endpoint-url; nothing was changed") \
            from None


def _etag(raw: object) -> str:
    return raw.strip('"') if isinstance(raw, str) else ""


_ANSWER_HINT = ("the endpoint is not S3-compatible enough for dsv, or something between "
                "dsv and it changed its answers")


def bad_answer(where: str, what: str) -> RemoteError:
    """The error for an S3 answer that lacks a field dsv reads from it (or holds one that
    is not what S3 sends): a hostile or broken endpoint, never a bug in dsv."""
    return RemoteError(f"{where}: the S3 endpoint's answer has no valid {what}",
                       hint=_ANSWER_HINT)


def _size(value: object, where: str, what: str = "Content-Length") -> int:
    """A size from an S3 answer: a whole number ≥ 0 (botocore gives an int; a listing's
    `Size` is parsed from XML), else `bad_answer`."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_answer(where, what)
    return value


def _body(response: object, where: str) -> Body:
    body = response.get("Body") if isinstance(response, dict) else None
    if body is None or not hasattr(body, "read"):
        raise bad_answer(where, "body")
    got: Body = body
    return got


def head(client: S3Client, bucket: str, key: str, version_id: str | None = None) -> S3Object:
    """The object at `key` (at `version_id`, if given), as a HEAD request describes it;
    NotFound when there is no such object (404, NoSuchKey), any other failure as itself."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        args["VersionId"] = version_id
    where = f"s3://{bucket}/{key}"
    try:
        meta = client.head_object(**args)
    except Exception as exc:
        error = describe(exc, where)
        if _is_missing(exc):
            raise NotFound(error.message, hint=error.hint) from None
        raise error from None
    got_version = meta.get("VersionId")
    return S3Object(key, _size(meta.get("ContentLength"), where), _etag(meta.get("ETag")),
                    got_version if isinstance(got_version, str) and got_version
                    else version_id)


def list_prefix(client: S3Client, bucket: str, prefix: str) -> Iterator[S3Object]:
    """Every object under `prefix` (folder markers, keys ending in '/', left out). An
    entry without a key or a size is an error (leaving it out would import less than
    the prefix holds)."""
    where = f"listing s3://{bucket}/{prefix}"
    try:
        pages = iter(client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix))
    except Exception as exc:
        raise describe(exc, where) from None
    while True:
        try:
            page = next(pages, None)
        except Exception as exc:
            raise describe(exc, where) from None
        if page is None:
            return
        for item in page.get("Contents", []) if isinstance(page, dict) else ():
            key = item.get("Key") if isinstance(item, dict) else None
            if not isinstance(key, str) or not key:
                raise bad_answer(where, "Key for one of its objects")
            if key.endswith("/"):
                continue
            size = _size(item.get("Size"), where, f"Size for {key[:200]!r}")
            yield S3Object(key, size, _etag(item.get("ETag")), None)


def open_object(client: S3Client, bucket: str, obj: S3Object) -> Body:
    """The body stream of `obj`, pinned to the exact version (or ETag) listed."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": obj.key}
    if obj.version_id:
        args["VersionId"] = obj.version_id
    elif obj.etag:
        args["IfMatch"] = f'"{obj.etag}"'
    where = f"s3://{bucket}/{obj.key}"
    try:
        response = client.get_object(**args)
    except Exception as exc:
        raise describe(exc, where) from None
    return _body(response, where)


def corrupt_download(what: str) -> CorruptDownload:
    """The error for a body that arrived whole but fails S3's checksum."""
    return CorruptDownload(f"{what}: the download arrived damaged (it fails S3's own "
                           f"checksum)", hint="nothing damaged was stored; try again, and if "
                                              "it persists the remote holds damaged data")


def _body_errors() -> tuple[type[BaseException], ...]:
    """A body that broke off: worth asking again. (A body that arrived whole but fails
    S3's checksum, FlexibleChecksumError, is `_checksum_error`: also asked again, then
    reported as a corrupt download, never as a connection problem.)"""
    from botocore.exceptions import (ConnectionClosedError, IncompleteReadError,
                                     ReadTimeoutError, ResponseStreamingError)
    from urllib3.exceptions import ProtocolError
    return (ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
            ResponseStreamingError, ProtocolError, ConnectionError)


def _checksum_error() -> type[BaseException]:
    from botocore.exceptions import FlexibleChecksumError
    error: type[BaseException] = FlexibleChecksumError
    return error


def read_into(body: Body, into: memoryview, what: str) -> None:
    """Fill `into` with a whole response body, which must be exactly `len(into)` bytes
    (its Content-Length was checked against that already).

    Where botocore hands over its plain body, the bytes go from the connection straight
    into `into` (http.client's `readinto`, under botocore's and urllib3's wrappers; the
    connection then goes back to their pool), with no buffer made for them. Any other
    body (a checksum-checking one, say) is read through `read_bounded` and copied. A
    body that ends early, or says more, is an error the caller may ask again after (a
    ConnectionError), never bytes taken for good."""
    from botocore.response import StreamingBody
    raw: Any = getattr(body, "_raw_stream", None)
    conn: Any = getattr(raw, "_fp", None)
    if type(body) is not StreamingBody or not hasattr(conn, "readinto") or \
            not hasattr(conn, "isclosed") or not hasattr(raw, "release_conn"):
        data = read_bounded(body, len(into), what)
        if len(data) != len(into):
            raise ConnectionError(f"{what}: the answer held {len(data)} of {len(into)} bytes")
        into[:] = data
        return
    import http.client
    got = 0
    try:
        while got < len(into):
            n = conn.readinto(into[got:])
            if not n:
                break
            got += n
        more = got == len(into) and not conn.isclosed() and conn.readinto(bytearray(1))
    except (http.client.HTTPException, OSError) as exc:
        body.close()
        raise ConnectionError(f"{what}: the answer broke off ({exc})") from None
    if got != len(into) or more:
        body.close()
        raise ConnectionError(f"{what}: the answer held {'more than ' if more else ''}"
                              f"{got} of {len(into)} bytes")
    raw.release_conn()


def read_bounded(body: Body, cap: int, what: str) -> bytes:
    """All of a response body, refusing more than `cap` bytes (reads at most cap + 1: a
    body longer than its Content-Length claimed is never read to its end). Reading until
    the body says it is done is what makes botocore check its length and checksum."""
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = body.read(min(_PIECE, cap + 1 - total))
            if not chunk:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            parts.append(chunk)
            total += len(chunk)
            if total > cap:
                raise TooLarge(f"{what}: more than {cap} bytes",
                               hint="the remote holds a damaged or hostile object")
    except TooLarge:
        body.close()
        raise


class S3Backend:
    """A remote at `s3://bucket/prefix` on AWS or any S3-compatible endpoint."""

    def __init__(self, url: str, endpoint_url: str | None = None,
                 profile: str | None = None) -> None:
        self.url = url
        self.bucket, prefix = parse_s3_url(url)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = make_client(endpoint_url, profile)
        from boto3.s3.transfer import TransferConfig
        self._transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=5)

    def _key(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def check_reachable(self) -> None:
        """Backend.check_reachable: a TCP connection to the endpoint."""
        check_reachable(self.client)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Keys under `prefix`; a listed key outside it (a hostile or broken endpoint) or
        one that is not a plain relative path is left out."""
        if prefix.rstrip("/"):
            check_key(prefix.rstrip("/"))
        full = self.prefix + prefix
        cut = len(self.prefix)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item.get("Key")
                    if not isinstance(key, str) or not key.startswith(full):
                        continue
                    try:
                        check_key(key[cut:])
                        size = int(item["Size"])
                    except (BadKey, KeyError, TypeError, ValueError):
                        continue
                    if size >= 0:
                        yield key[cut:], size
        except Exception as exc:
            raise describe(exc, f"listing {self._where(prefix)}") from None

    def _get(self, key: str, cap: int, expect: int | None = None,
             into: memoryview | None = None, **args: str) -> tuple[bytes, dict[str, Any]]:
        """(body, response) of a GET, its Content-Length checked against `cap` (and equal
        to `expect` if given) before the body is read, then read bounded. With `into`
        (`expect` bytes long), the body is read into it, and the body returned is
        empty."""
        where, full = self._where(key), self._key(key)
        for attempt in range(BODY_ATTEMPTS):
            try:  # botocore retries the request itself; its failure is final
                response: dict[str, Any] = self.client.get_object(Bucket=self.bucket, Key=full,
                                                                  **args)
            except Exception as exc:
                if _is_missing(exc):
                    raise NotFound(f"{where} does not exist") from None
                raise describe(exc, where) from None
            body = _body(response, where)
            claimed = response.get("ContentLength")
            if claimed is not None:
                try:
                    claimed = _size(claimed, where)
                except RemoteError:
                    body.close()
                    raise
            if expect is not None and claimed is not None and claimed != expect:
                body.close()
                raise RemoteError(f"{where}: asked for {expect} bytes, the answer has "
                                  f"{claimed}")
            if claimed is not None and claimed > cap:
                body.close()
                raise TooLarge(f"{where} is {claimed} bytes, more than the {cap} dsv reads "
                               f"for it", hint="the remote holds a damaged or hostile object")
            try:  # …but not a body that breaks off after the headers: ask again
                if into is not None:
                    read_into(body, into, where)
                    return b"", response
                return read_bounded(body, cap, where), response
            except _body_errors():
                if attempt == BODY_ATTEMPTS - 1:
                    raise RemoteError(f"{where}: the download broke off "
                                      f"{BODY_ATTEMPTS} times") from None
            except _checksum_error():
                if attempt == BODY_ATTEMPTS - 1:
                    raise corrupt_download(where) from None
        raise AssertionError("unreachable")

    def get(self, key: str, max_size: int | None = None) -> bytes:
        """Backend.get: one GET, its size checked before the body is read."""
        return self._get(key, MAX_GET_BYTES if max_size is None else max_size)[0]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Backend.get_range: one ranged GET."""
        check_range(self._where(key), start, length, MAX_GET_BYTES)
        if length == 0:
            # No byte to ask for (`bytes=N-(N-1)` is no valid range), but the key must
            # exist and `start` lie within it, as for any other range.
            size = self.head(key)
            if size is None:
                raise NotFound(f"{self._where(key)} does not exist")
            if start > size:
                raise RemoteError(f"{self._where(key)}: asked for 0 bytes at {start}, past "
                                  f"its end ({size} bytes)")
            return b""
        data = self._get(key, length, expect=length,
                         Range=f"bytes={start}-{start + length - 1}")[0]
        if len(data) != length:
            raise RemoteError(f"{self._where(key)}: asked for {length} bytes at {start}, "
                              f"got {len(data)}")
        return data

    def get_range_into(self, key: str, start: int, into: memoryview) -> None:
        """Backend.get_range_into: one ranged GET, read straight into `into`."""
        length = len(into)
        check_range(self._where(key), start, length, MAX_GET_BYTES)
        if length == 0:
            self.get_range(key, start, 0)   # (the same checks, no bytes)
            return
        self._get(key, length, expect=length, into=into,
                  Range=f"bytes={start}-{start + length - 1}")

    def download(self, key: str) -> Iterator[bytes]:
        """Backend.download: one GET, streamed in pieces of 8 MiB."""
        full = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            if _is_missing(exc):
                raise NotFound(f"{self._where(key)} does not exist") from None
            raise describe(exc, self._where(key)) from None
        body = _body(response, self._where(key))
        if not hasattr(body, "iter_chunks"):
            body.close()
            raise bad_answer(self._where(key), "body")
        try:
            yield from body.iter_chunks(_PIECE)
        except _body_errors() as exc:
            raise RemoteError(f"{self._where(key)}: the download broke off ({exc})") from None
        except _checksum_error():
            raise corrupt_download(self._where(key)) from None

    def head(self, key: str) -> int | None:
        """Backend.head: a HEAD request."""
        full = self._key(key)
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise describe(exc, self._where(key)) from None
        return _size(meta.get("ContentLength"), self._where(key))

    def put_bytes(self, key: str, data: bytes | bytearray) -> None:
        """Backend.put_bytes: one PUT."""
        full = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as exc:
            raise describe(exc, f"uploading {self._where(key)}") from None

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        """Backend.put_file: a managed upload (multipart above 64 MiB); `progress` is
        boto3's Callback (pieces as they are sent, from its threads; negative on a retry)."""
        full = self._key(key)
        try:
            self.client.upload_file(path, self.bucket, full,
                                    Config=self._transfer_config, Callback=progress)
        except Exception as exc:
            cause = getattr(exc, "last_exception", None) or exc.__cause__ or exc
            raise describe(cause, f"uploading {self._where(key)}") from None

    def delete(self, key: str) -> None:
        """Backend.delete: a DELETE (a missing key is fine)."""
        full = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            if _is_missing(exc):
                return
            raise describe(exc, f"deleting {self._where(key)}") from None

    def remove_stale_uploads(self, older_than: float) -> tuple[int, int]:
        """Backend.remove_stale_uploads: the multipart uploads of loose objects (the only
        files dsv uploads in parts) that were begun more than `older_than` seconds ago
        and never completed: a push killed during a large file's upload leaves its parts,
        which no listing of keys shows and the bucket bills for good. Each is aborted,
        its parts' bytes counted first.

        Only uploads of well-formed `loose/` keys below this remote's prefix: a bucket
        shared with other tools keeps theirs. An upload without a usable start time is
        never aborted (its age is unknown). At most MAX_STALE_UPLOADS per call, from a
        listing of at most ten times as many (the next call goes on). An endpoint
        without the listing, or credentials that may not use it, have nothing removed
        (a lifecycle rule's job there)."""
        cutoff = time.time() - older_than
        stale: list[tuple[str, str]] = []
        seen = 0
        full = self.prefix + LOOSE
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=full):
                for upload in page.get("Uploads", []):
                    seen += 1
                    key, upload_id = upload.get("Key"), upload.get("UploadId")
                    began = upload.get("Initiated")
                    if not isinstance(key, str) or not key.startswith(full) or \
                            loose_oid_of_key(key[len(self.prefix):]) is None or \
                            not isinstance(upload_id, str) or not upload_id or \
                            not isinstance(began, datetime) or began.tzinfo is None or \
                            began.timestamp() > cutoff:
                        continue
                    stale.append((key, upload_id))
                if len(stale) >= MAX_STALE_UPLOADS or seen >= 10 * MAX_STALE_UPLOADS:
                    break
        except Exception as exc:
            if _unsupported(exc):
                return 0, 0
            raise describe(exc, f"listing the unfinished uploads of "
                                f"{self._where(LOOSE)}") from None
        count = nbytes = 0
        for key, upload_id in stale[:MAX_STALE_UPLOADS]:
            size = self._parts_bytes(key, upload_id)
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            except Exception as exc:
                if _error_code(exc) == "NoSuchUpload":
                    continue   # completed or aborted by another client meanwhile
                raise describe(exc, f"aborting an unfinished upload of "
                                    f"s3://{self.bucket}/{key}") from None
            count += 1
            nbytes += size
        return count, nbytes

    def _parts_bytes(self, key: str, upload_id: str) -> int:
        """The bytes of the parts an unfinished upload holds, as listed (0 where the
        listing fails or says nothing usable: only a figure for the report)."""
        total = 0
        try:
            for page in self.client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    PaginationConfig={"MaxItems": MAX_PARTS}):
                for part in page.get("Parts", []):
                    size = part.get("Size")
                    if isinstance(size, int) and 0 <= size <= MAX_GET_BYTES:
                        total += size
        except Exception:   # (the abort that follows says what is wrong, if anything)
            return total
        return total

    def read_ref(self, key: str) -> tuple[bytes, str] | None:
        """Backend.read_ref; the version tag is the object's ETag (an answer without one
        is an error: refs change only by compare-and-swap on it)."""
        try:
            data, response = self._get(key, MAX_REF_BYTES)
        except NotFound:
            return None
        etag = response.get("ETag")
        if not isinstance(etag, str) or not etag:
            raise bad_answer(self._where(key), "ETag (dsv changes refs only by "
                             "compare-and-swap on it)")
        return data, etag

    def write_ref(self, key: str, data: bytes, expect: str | None) -> str | None:
        """Backend.write_ref: a conditional PUT (If-None-Match or If-Match)."""
        if expect == "":
            return None  # no ref has an empty tag; an empty If-Match would be no condition
        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        full = self._key(key)
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                              **condition)
        except Exception as exc:
            # Lost the race: 412, or 409 for a concurrent conditional write; and for a
            # replace, a 404 (the ref was deleted since it was read; some servers say 412).
            if _status(exc) in (409, 412) or (expect is not None and _is_missing(exc)):
                return None
            raise describe(exc, f"updating {self._where(key)}") from None
        etag = response.get("ETag") if isinstance(response, dict) else None
        if not isinstance(etag, str) or not etag:
            raise bad_answer(f"updating {self._where(key)}", "ETag (the write may have "
                             "landed; dsv changes refs only by compare-and-swap on it)")
        return etag


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code: int | None = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code if isinstance(code, str) else None


def _is_missing(exc: BaseException) -> bool:
    code = _error_code(exc)
    return code in ("NoSuchKey", "404", "NotFound") or _status(exc) == 404 and \
        code != "NoSuchBucket"


def _unsupported(exc: BaseException) -> bool:
    """An answer that the endpoint lacks a request, or these credentials may not make it
    (not a failure of the request itself)."""
    return _error_code(exc) in ("NotImplemented", "AccessDenied", "MethodNotAllowed") or \
        _status(exc) in (403, 405, 501)
