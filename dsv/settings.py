"""Remote settings: configuring and forgetting remotes (origins and cluster caches).

Owns the rules for a remote's settings (a valid name, a URL outside every store, cache
options only for caches, one default origin). Only names and URLs are stored: credentials
come from the AWS chain at run time. Must never contact a remote.
"""

from __future__ import annotations

import os
import time

from .core import Core
from .errors import InvalidInput
from .paths import is_valid_name
from .remotes.connect import normalize_url
from .remotes.base import (RemoteSpec, check_outside_stores, parse_duration,
                           parse_size)


def add_remote(core: Core, name: str, url: str, endpoint_url: str | None = None,
               profile: str | None = None, cache: bool = False, ttl: str | None = None,
               max_size: str | None = None, write_through: bool = False,
               default: bool = False, cwd: str | os.PathLike[str] = ".") -> RemoteSpec:
    """Configure a remote (an origin, or with `cache` a cluster cache directory)."""
    if not is_valid_name(name):
        raise InvalidInput(f"invalid remote name {name!r}")
    url = normalize_url(url, cwd)
    check_outside_stores(url)
    if cache and url.startswith("s3://"):
        raise InvalidInput("a cluster cache is a shared directory, not an S3 URL")
    if not cache and (ttl or max_size or write_through):
        raise InvalidInput("--ttl, --max-size and --write-through are for --cache remotes")
    spec = RemoteSpec(name, url, "cache" if cache else "origin", endpoint_url, profile,
                      parse_duration(ttl) if ttl else None,
                      parse_size(max_size) if max_size else None, write_through)
    with core.locked("remote add"), core.index.transaction():
        if any(s.name == name for s in core.remote_specs()):
            raise InvalidInput(f"remote {name} already exists",
                               hint=f"remove it first: dsv remote remove {name}")
        first = not any(s.kind == "origin" for s in core.remote_specs())
        spec.is_default = spec.kind == "origin" and (default or first)
        core.index.add_remote({"name": name, "url": url, "kind": spec.kind,
                               "endpoint_url": endpoint_url, "profile": profile,
                               "ttl": spec.ttl, "max_size": spec.max_size,
                               "write_through": int(write_through),
                               "is_default": int(spec.is_default), "created": time.time()})
        if spec.is_default:
            core.index.set_default_remote(name)
    if not spec.is_s3 and not os.path.isdir(url) and not os.path.isdir(os.path.dirname(url)):
        core.reporter.notice(f"warning: neither {url} nor its parent exists yet (a typo, or a "
                             f"volume not mounted?): `dsv push` refuses until the parent does")
    return spec


def remove_remote(core: Core, name: str) -> RemoteSpec:
    """Forget a remote and what this store knew it holds."""
    spec = core.remote_spec(name, kind=None)
    with core.locked("remote remove"), core.index.transaction():
        core.index.delete_remote(name)
    return spec
