"""The tree a bulk import copies from, read through Tessera's own origins.

``file:///dir`` is a ``LocalOrigin`` rooted at that directory's real path (so it confines like a
mount: links leaving the directory are missing files and are not listed); ``s3://bucket/prefix`` an S3
origin with the endpoint and credentials of a mount of the same bucket, or else the standard AWS chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from tessera.config import MountSettings, Settings
from tessera.ingest.allow import AllowList, InvalidSource
from tessera.origins import Origin, open_origin
from tessera.origins.local import LocalOrigin


@dataclass(slots=True)
class Source:
    """An origin and the key prefix of the tree in it (``""`` or ending in ``/``)."""

    origin: Origin
    prefix: str


def open_source(url: str, settings: Settings) -> Source:
    """Check ``url`` against ``storage.ingest_allow`` and open it (raises ``SourceRefused``)."""
    allow = AllowList(settings.storage.ingest_allow)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        _root, real = allow.local_root(url)
        if not os.path.isdir(real):
            raise InvalidSource("a file:// import source must be a directory")
        return Source(LocalOrigin("import", real), "")
    if scheme == "s3":
        bucket, prefix = allow.s3_source(url)
        mount = _mount_of_bucket(bucket, settings)
        origin = open_origin("import", mount, settings.origin, settings.cache.small_object_size)
        return Source(origin, prefix.rstrip("/") + "/" if prefix else "")
    raise InvalidSource("an import source is a file:///dir or an s3://bucket/prefix URL")


def _mount_of_bucket(bucket: str, settings: Settings) -> MountSettings:
    """Settings to reach ``bucket``: those of a mount of it (endpoint, region, keys), else the defaults."""
    origin = f"s3://{bucket}"
    for mount in settings.mounts.values():
        parts = urlsplit(mount.origin)
        if parts.scheme.lower() == "s3" and parts.netloc == bucket:
            return mount.model_copy(update={"origin": origin})
    return MountSettings(origin=origin)
