"""Opening a remote by URL: which backend serves it.

Owns turning a remote's URL into its canonical form (`normalize_url`) and into an open
backend (`open_backend`: S3 or a directory). The backends are imported only when one is
opened (boto3 costs start-up time every command would pay). Must never touch the store.
"""

from __future__ import annotations

import os

from ..errors import InvalidInput
from .base import Backend, RemoteSpec, check_outside_stores


def normalize_url(url: str, cwd: str | os.PathLike[str] = ".") -> str:
    """`s3://bucket/prefix` unchanged (no trailing slash); a path or file:// URL made absolute."""
    if url.startswith("s3://"):
        from .s3 import parse_s3_url
        bucket, prefix = parse_s3_url(url)
        return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    if "://" in url and not url.startswith("file://"):
        raise InvalidInput(f"unsupported remote URL: {url}",
                           hint="use s3://BUCKET[/PREFIX] or a directory path")
    path = url[len("file://"):] if url.startswith("file://") else url
    return os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))


def open_backend(spec: RemoteSpec) -> Backend:
    """The backend serving `spec`'s URL (a directory is checked to lie outside every store)."""
    if spec.is_s3:
        from .s3 import S3Backend
        return S3Backend(spec.url, spec.endpoint_url, spec.profile)
    check_outside_stores(spec.url)
    from .fs import FsBackend
    return FsBackend(spec.url)
