"""The internal origin of derivatives: bytes made from an object (rendered tiles, image headers).

A derivative is stored as an object version of the origin ``tessera:derivatives`` whose key names
what it is (for example the canonical IIIF request) and whose tag is the source's ETag, so a new
version of the source never gets an old derivative (``CacheEngine.get_derivative``). Derivatives are
admitted, evicted and persisted like any other cached object.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator

from tessera.errors import ObjectNotFound, ReadOnlyOrigin
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

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return
        yield

    async def list_dir(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        return [], []

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, create_only: bool = False) -> ObjectInfo:
        raise ReadOnlyOrigin("derivatives are stored through the engine")

    async def delete(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None
