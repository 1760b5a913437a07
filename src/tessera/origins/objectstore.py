"""Every origin kind (S3 and S3-compatible, local/NFS folder, HTTP) through obstore.

obstore wraps the Rust ``object_store`` crate: one API, one connection pool per store, and the
standard AWS credential chain (environment, web identity, ECS and instance metadata). Retries are
left to the cache's fill loop, which knows which blocks already landed and resumes after them, so
obstore's own retries are off.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, NotFoundError, PreconditionError
from obstore.store import S3Store

from tessera.config import MountSettings, OriginSettings
from tessera.errors import InvalidPath, ObjectNotFound, OriginUnavailable, VersionChanged
from tessera.origins.base import ObjectInfo, Origin, RangeBody
from tessera.origins.http import HttpOrigin
from tessera.origins.local import LocalOrigin

#: Default chunk size asked of obstore's body stream; the engine asks for whole blocks.
STREAM_CHUNK = 64 * 1024


def _info(meta: dict[str, Any], key: str) -> ObjectInfo:
    etag = meta.get("e_tag") or ""
    if not etag:
        # Without an ETag a version cannot be told apart; size and mtime are the next best thing.
        etag = f'W/"{meta["size"]}-{meta["last_modified"].timestamp():.6f}"'
    return ObjectInfo(key=key, size=int(meta["size"]), etag=etag, mtime=meta["last_modified"].timestamp())


class ObjectStoreOrigin:
    """An origin backed by one obstore store; keys are relative to the store's prefix.

    ``name`` labels metrics and messages; ``identity`` (the origin URL and endpoint) keys the cache, so
    two mounts of the same bucket share cached objects.
    """

    def __init__(self, name: str, identity: str, store: Any) -> None:
        self.name = name
        self.identity = identity
        self._store = store

    async def stat(self, key: str) -> ObjectInfo:
        try:
            meta = await obstore.head_async(self._store, key)
        except (FileNotFoundError, NotFoundError) as exc:
            raise ObjectNotFound(f"no object {key!r} in origin {self.name}") from exc
        return _info(meta, key)

    async def read_range(
        self, key: str, start: int, end: int, if_match: str | None, chunk_size: int = STREAM_CHUNK
    ) -> RangeBody:
        options: dict[str, Any] = {"range": (start, end)}
        if if_match and not if_match.startswith("W/"):
            options["if_match"] = if_match
        try:
            result = await obstore.get_async(self._store, key, options=options)
        except (FileNotFoundError, NotFoundError) as exc:
            raise ObjectNotFound(f"no object {key!r} in origin {self.name}") from exc
        except PreconditionError as exc:
            raise VersionChanged(f"{key!r} changed at origin {self.name} while being read") from exc
        info = _info(result.meta, key)
        if if_match and info.etag != if_match:
            # Servers that ignore If-Match (some HTTP origins) are caught here instead.
            raise VersionChanged(f"{key!r} changed at origin {self.name} while being read")
        got_start, got_end = result.range
        return RangeBody(info=info, start=got_start, end=got_end, chunks=_chunks(result, chunk_size))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        stream = obstore.list(self._store, prefix=prefix or None, chunk_size=1000)
        try:
            async for batch in stream:
                for meta in batch:
                    yield _info(meta, meta["path"])
        except (FileNotFoundError, NotFoundError):
            return
        except BaseError as exc:
            # Plain HTTP origins cannot list (there is no standard listing); say so instead of a 500.
            raise OriginUnavailable(f"origin {self.name} cannot list {prefix or '/'!r}: {exc}") from exc

    async def list_dir(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """One level under ``prefix`` (empty or ending in ``/``): sub-prefixes and objects.

        obstore follows the store's pagination (1,000 keys a page on S3) and returns the whole level.
        """
        try:
            result = await obstore.list_with_delimiter_async(self._store, prefix=prefix.rstrip("/") or None)
        except (FileNotFoundError, NotFoundError):
            return [], []
        except BaseError as exc:
            raise OriginUnavailable(f"origin {self.name} cannot list {prefix or '/'!r}: {exc}") from exc
        dirs = [p.rstrip("/").rsplit("/", 1)[-1] for p in result["common_prefixes"]]
        return dirs, [_info(meta, meta["path"]) for meta in result["objects"]]

    async def put(self, key: str, data: bytes) -> ObjectInfo:
        await obstore.put_async(self._store, key, data)
        return await self.stat(key)

    async def delete(self, key: str) -> None:
        await obstore.delete_async(self._store, key)


async def _chunks(result: Any, chunk_size: int) -> AsyncIterator[bytes]:
    async for chunk in result.stream(min_chunk_size=chunk_size):
        yield bytes(chunk) if not isinstance(chunk, bytes) else chunk


def _client_options(settings: OriginSettings, allow_http: bool) -> dict[str, Any]:
    return {
        "allow_http": allow_http,
        "connect_timeout": timedelta(seconds=settings.connect_timeout),
        # Bounds the wait for headers and for each body read; the fill loop also applies it per chunk.
        "read_timeout": timedelta(seconds=settings.read_timeout),
        "pool_idle_timeout": timedelta(seconds=60),
    }


_NO_RETRIES = {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}


def open_origin(name: str, mount: MountSettings, settings: OriginSettings, small_object_size: int) -> Origin:
    """Build the origin for ``mount.origin``: ``s3://bucket/prefix``, ``file:///path`` or ``http(s)://…``.

    ``small_object_size`` is the largest object an HTTP origin that ignores ``Range`` is read from.
    """
    url = mount.origin
    identity = f"{url}@{mount.endpoint_url or os.environ.get('AWS_ENDPOINT_URL', '')}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        return ObjectStoreOrigin(
            name, identity, _s3_store(parts.netloc, parts.path.strip("/"), mount, settings)
        )
    if scheme == "file" or scheme == "":
        raw = url[len("file://") :] if scheme == "file" else url
        folder = Path(raw).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return LocalOrigin(name, str(folder))
    if scheme in ("http", "https"):
        return HttpOrigin(name, url, settings, whole_limit=small_object_size)
    raise InvalidPath(f"mount {name!r}: unsupported origin {url!r} (use s3://, file:// or https://)")


def _s3_store(bucket: str, prefix: str, mount: MountSettings, settings: OriginSettings) -> S3Store:
    if not bucket:
        raise InvalidPath(f"origin {mount.origin!r} names no bucket")
    endpoint = mount.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    config: dict[str, Any] = {"virtual_hosted_style_request": not mount.path_style}
    if endpoint:
        config["endpoint"] = endpoint
    region = mount.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        config["region"] = region
    if mount.access_key_id and mount.secret_access_key:
        config["access_key_id"] = mount.access_key_id
        config["secret_access_key"] = mount.secret_access_key
        if mount.session_token:
            config["session_token"] = mount.session_token
    return S3Store(
        bucket,
        prefix=prefix or None,
        config=config,
        client_options=_client_options(
            settings, allow_http=bool(endpoint and endpoint.startswith("http://"))
        ),
        retry_config=_NO_RETRIES,
    )
