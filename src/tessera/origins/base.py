"""The one small async interface every origin implements."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the cache needs to know about one object version."""

    key: str
    size: int
    etag: str
    mtime: float


@dataclass(slots=True)
class RangeBody:
    """An open ranged GET: the version it belongs to and its body as a stream of chunks."""

    info: ObjectInfo
    start: int
    end: int
    chunks: AsyncIterator[bytes]


class Origin(Protocol):
    """An object store seen through keys relative to a mount's prefix.

    Implementations raise ``ObjectNotFound`` for missing keys, ``VersionChanged`` when ``if_match``
    does not hold, and any other exception for failures worth retrying.
    """

    name: str
    identity: str

    async def stat(self, key: str) -> ObjectInfo: ...

    async def read_range(
        self, key: str, start: int, end: int, if_match: str | None, chunk_size: int = ...
    ) -> RangeBody:
        """Open a GET of bytes ``[start, end)``; the caller consumes ``chunks`` of about ``chunk_size``."""
        ...

    def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in ascending key order (by code
        point, which is S3's UTF-8 byte order); ``start_after``: only keys greater than it, skipped
        at the origin (S3's ``start-after``, a local walk that does not enter folders before it)."""
        ...

    async def list_dir(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        """One level under ``prefix``: names of sub-prefixes, and the objects directly in it."""
        ...

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, create_only: bool = False) -> ObjectInfo:
        """Store the bytes ``chunks`` yields as ``key``, streamed, and return the new version.

        The object appears whole or not at all: it becomes visible only once ``chunks`` is exhausted
        without raising. If ``chunks`` raises (a checksum that does not match, a client that went
        away, a size limit) or the origin fails, nothing is visible, temporary parts are removed
        (S3: the multipart upload is aborted), and the exception propagates. ``create_only``: raise
        ``ObjectExists`` instead of replacing an object already there. Read-only origins raise
        ``ReadOnlyOrigin``.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a key that does not exist is not an error (deletes are idempotent)."""
        ...

    async def close(self) -> None:
        """Release connections and other resources (the engine calls it once, when it closes)."""
        ...
