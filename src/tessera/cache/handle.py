"""An open object version: the file-like face of the engine."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tessera.cache.version import Version
from tessera.namespace import Resolved
from tessera.origins import ObjectInfo

if TYPE_CHECKING:
    from tessera.cache.engine import CacheEngine


class Handle:
    """An open object version: reads never mix versions, whatever happens at the origin meanwhile.

    Tracks the reader's pattern: a read that starts where the last one ended grows the readahead
    window (doubling up to ``cache.readahead``); any other read resets it.
    """

    def __init__(self, engine: CacheEngine, resolved: Resolved, info: ObjectInfo) -> None:
        self.engine = engine
        self.resolved = resolved
        self.info = info
        self._version: Version | None = None
        self.position = 0
        self.last_start = -1
        self.last_end = -1
        self.window = 0

    @property
    def version(self) -> Version:
        """The cache's state of the opened version, taken on first use (an open that only looks at
        ``info``, as a HEAD does, registers nothing) and again if it was dropped since."""
        version = self._version
        if version is None or not version.alive:
            version = self._version = self.engine.version_for(self.resolved.origin, self.info)
        return version

    @property
    def known_version(self) -> Version | None:
        """The version state if already taken and still alive; never registers one, so any thread
        may ask (the engine's state belongs to its event loop)."""
        version = self._version
        return version if version is not None and version.alive else None

    @property
    def size(self) -> int:
        return self.info.size

    async def pread(self, offset: int, length: int) -> bytes:
        return await self.engine.pread(self, offset, length)

    async def read(self, length: int = -1) -> bytes:
        if length < 0:
            length = self.size - self.position
        data = await self.pread(self.position, length)
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def iter_range(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` block by block, fetching ahead while the caller consumes."""
        return self.engine.iter_range(self, start, self.size if end is None else end)
