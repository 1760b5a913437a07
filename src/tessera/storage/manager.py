"""``StorageManager``: writes and deletes through a mount's origin, keeping the cache coherent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from tessera.cache import CacheEngine
from tessera.cluster import SOLO, Announcer, Change
from tessera.config import Settings
from tessera.errors import UploadTooLarge
from tessera.storage.checksums import CheckedStream, Expected

NOTHING_EXPECTED = Expected()


@dataclass(frozen=True, slots=True)
class Stored:
    """What a write stored: the JSON answer of ``PUT /api/v1/files/…``."""

    path: str
    size: int
    etag: str
    sha256: str


class StorageManager:
    """The one way anything in Tessera writes to an origin (files API, tus, ingest, import).

    After a write or a delete the cache is told at once (``CacheEngine.superseded``): the next read
    sees the new object, not the one cached before, however long ``cache.metadata_ttl`` is. So are
    the other nodes of a cluster (``announcer``).
    """

    def __init__(self, engine: CacheEngine, settings: Settings, announcer: Announcer = SOLO) -> None:
        self.engine = engine
        self.announcer = announcer
        self.max_upload_size = settings.storage.max_upload_size

    async def put(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        size: int | None = None,
        expected: Expected = NOTHING_EXPECTED,
        create_only: bool = False,
    ) -> Stored:
        """Stream ``chunks`` into the object at ``path`` (``size``: the length announced, if any).

        Raises ``InvalidPath``/``UnknownMount`` for a bad path, ``UploadTooLarge`` (before reading
        anything when ``size`` says so), ``ChecksumMismatch``, ``ObjectExists`` (``create_only``),
        ``ReadOnlyOrigin``; in every failure nothing is stored.
        """
        resolved = self.engine.namespace.resolve(path)
        if size is not None and size > self.max_upload_size:
            raise UploadTooLarge(f"upload of {size} bytes is over storage.max_upload_size")
        stream = CheckedStream(chunks, self.max_upload_size, expected, size)
        info = await resolved.origin.put(resolved.key, aiter(stream), create_only=create_only)
        await self.engine.superseded(resolved.path, info)
        self.announcer.announce(Change.written(resolved.path, info))
        return Stored(resolved.path, info.size, info.etag, stream.sha256)

    async def delete(self, path: str) -> None:
        """Delete the object at ``path`` (idempotent: nothing there is not an error)."""
        resolved = self.engine.namespace.resolve(path)
        await resolved.origin.delete(resolved.key)
        await self.engine.superseded(resolved.path, None)
        self.announcer.announce(Change.deleted(resolved.path))
