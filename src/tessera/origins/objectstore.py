"""S3 and S3-compatible origins through obstore, and ``open_origin`` for every origin kind.

obstore wraps the Rust ``object_store`` crate: one API, one connection pool per store, and the
standard AWS credential chain (environment, web identity, ECS and instance metadata). Retries are
left to the cache's fill loop, which knows which blocks already landed and resumes after them, so
obstore's own retries are off. Local folders (``origins.local``) and plain HTTP (``origins.http``)
have origins of their own.
"""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError
from obstore.store import S3Store

from tessera.config import MountSettings, OriginSettings, StorageSettings, check_origin
from tessera.errors import (
    BucketNotFound,
    InvalidOrigin,
    ObjectExists,
    ObjectNotFound,
    OriginUnavailable,
    VersionChanged,
)
from tessera.origins.base import ObjectInfo, Origin, RangeBody
from tessera.origins.http import HttpOrigin
from tessera.origins.local import LocalOrigin
from tessera.pieces import gathered

if TYPE_CHECKING:  # obstore's TypedDicts and result class exist only in its stubs
    from obstore import GetOptions, GetResult, ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = logging.getLogger(__name__)

#: Default chunk size asked of obstore's body stream; the engine asks for whole blocks.
STREAM_CHUNK = 64 * 1024
#: After a listing proved the bucket exists, a missing key is taken for a missing key this long.
BUCKET_SEEN_TTL = 60.0


def _info(meta: ObjectMeta, key: str) -> ObjectInfo:
    etag = meta.get("e_tag") or ""
    if not etag:
        # Without an ETag a version cannot be told apart; size and mtime are the next best thing.
        etag = f'W/"{meta["size"]}-{meta["last_modified"].timestamp():.6f}"'
    return ObjectInfo(key=key, size=int(meta["size"]), etag=etag, mtime=meta["last_modified"].timestamp())


class ObjectStoreOrigin:
    """An origin backed by one obstore S3 store; keys are relative to the store's prefix.

    ``name`` labels metrics and messages; ``identity`` (the origin URL and endpoint) keys the cache, so
    two mounts of the same bucket share cached objects. A missing key is told apart from a missing
    bucket (``BucketNotFound``) by one listing, whose success is remembered for ``BUCKET_SEEN_TTL``.
    """

    def __init__(
        self,
        name: str,
        identity: str,
        store: S3Store,
        bucket: str,
        part_size: int = 8 * 1024 * 1024,
        upload_concurrency: int = 4,
        write_store: S3Store | None = None,
    ) -> None:
        self.name = name
        self.part_size = part_size
        self.upload_concurrency = upload_concurrency
        self.identity = identity
        self.bucket = bucket
        self._store = store
        #: Uploads and deletes go through a store that retries: nothing else retries a part or the
        #: abort of a failed upload (a lost abort leaves the parts behind, billed, until a lifecycle rule).
        self._write_store = write_store or store
        self._bucket_seen_at = -BUCKET_SEEN_TTL

    async def bucket_exists(self) -> bool:
        """One listing request: False if S3 answers that the bucket does not exist."""
        try:
            async for _batch in obstore.list(self._store, chunk_size=1):
                break
        except BaseError as exc:
            if "NoSuchBucket" in str(exc):
                return False
            raise
        self._bucket_seen_at = time.monotonic()
        return True

    async def _not_found(self, key: str) -> ObjectNotFound:
        """The error for a 404: the key is missing, or the whole bucket is."""
        if time.monotonic() - self._bucket_seen_at >= BUCKET_SEEN_TTL:
            try:
                if not await self.bucket_exists():
                    return self._no_bucket()
            except BaseError as exc:  # listing not allowed, for one: the key is what is missing
                log.debug("cannot check the bucket of origin %s: %s", self.name, exc)
        return ObjectNotFound(f"no object {key!r} in origin {self.name}")

    def _no_bucket(self) -> BucketNotFound:
        return BucketNotFound(f"bucket {self.bucket!r} of origin {self.name} does not exist")

    async def stat(self, key: str) -> ObjectInfo:
        try:
            meta = await obstore.head_async(self._store, key)
        except (FileNotFoundError, NotFoundError):
            raise await self._not_found(key) from None
        return _info(meta, key)

    async def read_range(
        self, key: str, start: int, end: int, if_match: str | None, chunk_size: int = STREAM_CHUNK
    ) -> RangeBody:
        options: GetOptions = {"range": (start, end)}
        if if_match and not if_match.startswith("W/"):
            options["if_match"] = if_match
        try:
            result = await obstore.get_async(self._store, key, options=options)
        except (FileNotFoundError, NotFoundError):
            raise await self._not_found(key) from None
        except PreconditionError as exc:
            raise VersionChanged(f"{key!r} changed at origin {self.name} while being read") from exc
        info = _info(result.meta, key)
        if if_match and info.etag != if_match:
            # Servers that ignore If-Match (some HTTP origins) are caught here instead.
            raise VersionChanged(f"{key!r} changed at origin {self.name} while being read")
        got_start, got_end = result.range
        return RangeBody(info=info, start=got_start, end=got_end, chunks=_chunks(result, chunk_size))

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        # obstore's prefix is whole path segments: a partial name (``maps/ch``) is listed from its
        # folder, starting just before the name, and the listing stops at the first key past it.
        folder = prefix[: prefix.rfind("/") + 1]
        offset = start_after
        if folder != prefix and (offset is None or offset < prefix[:-1]):
            offset = prefix[:-1]
        stream = obstore.list(self._store, prefix=folder or None, offset=offset or None, chunk_size=1000)
        try:
            async for batch in stream:
                for meta in batch:
                    key = meta["path"]
                    if key.startswith(prefix):
                        yield _info(meta, key)
                    elif key > prefix:
                        return
        except (FileNotFoundError, NotFoundError):
            return
        except BaseError as exc:
            raise self._listing_failed(prefix, exc) from exc

    async def list_dir(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        """One level under ``prefix`` (empty or ending in ``/``): sub-prefixes and objects.

        obstore follows the store's pagination (1,000 keys a page on S3) and returns the whole level.
        """
        try:
            result = await obstore.list_with_delimiter_async(self._store, prefix=prefix.rstrip("/") or None)
        except (FileNotFoundError, NotFoundError):
            return [], []
        except BaseError as exc:
            raise self._listing_failed(prefix, exc) from exc
        dirs = [p.rstrip("/").rsplit("/", 1)[-1] for p in result["common_prefixes"]]
        return dirs, [_info(meta, meta["path"]) for meta in result["objects"]]

    def _listing_failed(self, prefix: str, exc: BaseError) -> BucketNotFound | OriginUnavailable:
        if "NoSuchBucket" in str(exc):
            return self._no_bucket()
        return OriginUnavailable(f"origin {self.name} cannot list {prefix or '/'!r}: {exc}")

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, create_only: bool = False) -> ObjectInfo:
        """A body up to ``part_size`` goes in one PUT (create-only: S3's conditional ``If-None-Match``);
        a longer one as a multipart upload of ``part_size`` parts, ``upload_concurrency`` at once, so
        about ``part_size x (upload_concurrency + 1)`` bytes are held. obstore aborts the upload when
        ``chunks`` raises or S3 fails.

        Create-only multipart uploads check with a HEAD first: obstore's conditional put is single-part
        only (the whole body in memory), so a writer that creates the same key between that HEAD and
        the completion is overwritten (the race is only as wide as the upload is long).

        The new version is the upload's answer (its ETag): no HEAD after it unless the store sent none
        (the object's mtime is then this host's clock until the next revalidation).
        """
        feed = _Feed(chunks)
        try:
            if await feed.ends_within(self.part_size):
                mode: Literal["create", "overwrite"] = "create" if create_only else "overwrite"
                result = await obstore.put_async(
                    self._write_store, key, feed.whole(), mode=mode, use_multipart=False
                )
            else:
                if create_only and await self._exists(key):
                    raise ObjectExists(f"{key!r} already exists in origin {self.name}")
                result = await obstore.put_async(
                    self._write_store,
                    key,
                    feed.pieces(),
                    use_multipart=True,
                    chunk_size=self.part_size,
                    max_concurrency=self.upload_concurrency,
                )
        except AlreadyExistsError:
            raise ObjectExists(f"{key!r} already exists in origin {self.name}") from None
        except BaseError as exc:
            if feed.error is not None:  # the body's own failure (a checksum, a client gone), as raised
                raise feed.error from None
            raise OriginUnavailable(f"origin {self.name} failed storing {key!r}: {exc}") from exc
        etag = result.get("e_tag")
        if not etag:
            return await self.stat(key)
        return ObjectInfo(key=key, size=feed.size, etag=etag, mtime=time.time())

    async def _exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._store, key)
        except (FileNotFoundError, NotFoundError):
            return False
        return True

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._write_store, key)
        except (FileNotFoundError, NotFoundError):
            return
        except BaseError as exc:
            raise OriginUnavailable(f"origin {self.name} failed deleting {key!r}: {exc}") from exc

    async def close(self) -> None:
        return None


class _Feed:
    """An upload's chunks for obstore, gathered into pieces (each one handed over costs a round trip
    between Python and obstore's runtime), with the body's own exception kept (obstore reports it
    wrapped in an error of its own).

    The pieces read ahead to tell a single PUT from a multipart upload are held only until obstore
    has taken them: obstore copies what it is given into its part buffers, so the upload holds about
    ``part_size x (upload_concurrency + 1)`` bytes, never a second copy of the first part.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._pieces = gathered(chunks)
        self._ahead: deque[bytes] = deque()
        self.error: BaseException | None = None
        #: Bytes taken from the body so far.
        self.size = 0

    async def _next(self) -> bytes | None:
        try:
            piece = await anext(self._pieces, None)
        except BaseException as exc:
            self.error = exc
            raise
        if piece is not None:
            self.size += len(piece)
        return piece

    async def ends_within(self, limit: int) -> bool:
        """Read ahead until the body ended (True if it has ``limit`` bytes or fewer) or has more."""
        while self.size <= limit:
            piece = await self._next()
            if piece is None:
                return True
            self._ahead.append(piece)
        return False

    def whole(self) -> bytes:
        """The body, once ``ends_within`` said it ended."""
        body = b"".join(self._ahead)
        self._ahead.clear()
        return body

    async def pieces(self) -> AsyncIterator[bytes]:
        """Every piece of the body: those read ahead (let go as they are handed over), then the rest."""
        while self._ahead:
            yield self._ahead.popleft()
        while (piece := await self._next()) is not None:
            yield piece


async def _chunks(result: GetResult, chunk_size: int) -> AsyncIterator[bytes]:
    async for chunk in result.stream(min_chunk_size=chunk_size):
        yield bytes(chunk) if not isinstance(chunk, bytes) else chunk


def _client_options(settings: OriginSettings, allow_http: bool) -> ClientConfig:
    return {
        "allow_http": allow_http,
        "connect_timeout": timedelta(seconds=settings.connect_timeout),
        # Bounds the wait for headers and for each body read; the fill loop also applies it per chunk.
        "read_timeout": timedelta(seconds=settings.read_timeout),
        "pool_idle_timeout": timedelta(seconds=60),
    }


_NO_RETRIES: RetryConfig = {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}
_WRITE_RETRIES: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}


def open_origin(
    name: str,
    mount: MountSettings,
    settings: OriginSettings,
    small_object_size: int,
    storage: StorageSettings | None = None,
) -> Origin:
    """Build the origin for ``mount.origin``: ``s3://bucket/prefix``, ``file:///path`` or ``http(s)://…``.

    ``small_object_size`` is the largest object an HTTP origin that ignores ``Range`` is read from;
    ``storage`` gives S3 uploads their part size and concurrency (default: the config's defaults).
    """
    url = mount.origin
    try:
        check_origin(url)  # the config's rule, for settings built without validation
    except ValueError as exc:
        raise InvalidOrigin(f"mount {name!r}: {exc}") from None
    identity = f"{url}@{mount.endpoint_url or os.environ.get('AWS_ENDPOINT_URL', '')}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        store = _s3_store(parts.netloc, parts.path.strip("/"), mount, settings, _NO_RETRIES)
        write_store = _s3_store(
            parts.netloc, parts.path.strip("/"), mount, settings, _WRITE_RETRIES, for_writes=True
        )
        uploads = storage or StorageSettings()
        return ObjectStoreOrigin(
            name,
            identity,
            store,
            bucket=parts.netloc,
            part_size=uploads.part_size,
            upload_concurrency=uploads.upload_concurrency,
            write_store=write_store,
        )
    if scheme in ("http", "https"):
        return HttpOrigin(name, url, settings, whole_limit=small_object_size)
    raw = url[len("file://") :] if scheme == "file" else url  # a file:// URL or a plain folder
    folder = Path(raw).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOrigin(f"mount {name!r}: cannot use folder {str(folder)!r}: {exc.strerror}") from None
    return LocalOrigin(name, str(folder))


def _s3_store(
    bucket: str,
    prefix: str,
    mount: MountSettings,
    settings: OriginSettings,
    retries: RetryConfig,
    *,
    for_writes: bool = False,
) -> S3Store:
    """``for_writes``: every upload (each part of a multipart one) is sent with its SHA-256
    (``x-amz-checksum-sha256``), which S3 checks before it keeps the bytes. obstore computes
    that digest once and signs the request with it too, so it costs nothing over the signature's own
    hash; and a store told the algorithm when a multipart upload starts combines the parts' digests
    instead of reading the whole object again (moto, without it, copies and checksums the object
    whole: a third more of its CPU time per uploaded byte). A store that refuses checksum headers
    (older S3-compatible servers) needs the mount's ``upload_checksums = false``."""
    endpoint = mount.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    config: S3Config = {"virtual_hosted_style_request": not mount.path_style}
    if for_writes and mount.upload_checksums:
        config["checksum_algorithm"] = "sha256"
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
        retry_config=retries,
    )


async def warn_about_missing_buckets(origins: Iterable[Origin]) -> None:
    """Log a warning for each S3 origin whose bucket does not exist (one listing request each)."""
    for origin in origins:
        if not isinstance(origin, ObjectStoreOrigin):
            continue
        try:
            exists = await origin.bucket_exists()
        except Exception as exc:
            log.warning("cannot check the bucket of origin %s: %s", origin.name, exc)
            continue
        if not exists:
            log.warning(
                "bucket %r of origin %s does not exist: its objects are answered with 404",
                origin.bucket,
                origin.name,
            )
