"""Derivatives: bytes made from an object (rendered tiles, image headers) kept in the same tiers.

A derivative is stored as an object version of the internal origin ``tessera:derivatives`` whose
key names what it is (for example the canonical IIIF request) and whose tag is the source's ETag, so
a new version of the source never gets an old derivative. Derivatives are admitted, evicted and
persisted like any other cached object.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from tessera.errors import ObjectNotFound, TesseraError
from tessera.origins import ObjectInfo, RangeBody

DERIVATIVES = "tessera:derivatives"


class DerivativeOrigin:
    """The internal origin of derivatives: everything it holds was put there by the cache itself."""

    name = "derivatives"
    identity = DERIVATIVES

    async def stat(self, key: str) -> ObjectInfo:
        raise ObjectNotFound(f"no derivative {key!r}")

    async def read_range(
        self, key: str, start: int, end: int, if_match: str | None, chunk_size: int = 0
    ) -> RangeBody:
        raise ObjectNotFound(f"no derivative {key!r}")

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        return
        yield

    async def list_dir(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        return [], []

    async def put(self, key: str, data: bytes) -> ObjectInfo:
        raise ObjectNotFound("derivatives are stored through the engine")

    async def delete(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None


class DerivativeMixin:
    """The derivative half of ``CacheEngine`` (state lives on the engine)."""

    async def get_derivative(self, key: str, tag: str) -> bytes | None:
        """The derivative stored under ``key`` for source version ``tag``, if it is still cached."""
        version = self._by_identity.get((DERIVATIVES, key, tag))
        if version is None or not version.alive or not version.all_present:
            return None
        version.busy += 1
        try:
            self._touch(version)
            parts = [await self._block(version, index) for index in range(version.nblocks)]
        except (OSError, TesseraError):
            return None
        finally:
            self._release(version)
        return b"".join(parts)

    async def put_derivative(self, key: str, tag: str, data: bytes) -> None:
        info = ObjectInfo(key=key, size=len(data), etag=tag, mtime=time.time())
        version = self.version_for(self._derivative_origin, info)
        if version.all_present:
            return
        version.busy += 1
        try:
            self._touch(version, admit=True)
            for index in range(version.nblocks):
                start, end = version.bounds(index)
                block = data[start:end]
                self.memory.put(version.vid, index, block)
                if self._storable(version, index):
                    await self._store(version, index, block)
        finally:
            self._release(version)
