"""An open object version: the file-like face of the engine, and what it knows of its reader."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.cache.local_read import LocalReader
from tessera.cache.version import Version
from tessera.namespace import Resolved
from tessera.origins import ObjectInfo

if TYPE_CHECKING:
    from tessera.cache.engine import CacheEngine


class ReadPattern:
    """Whether a reader reads sequentially, and how far ahead to fetch for it (a pure object).

    A read that starts where the reads so far ended (or a little past it), or ends right before
    where they started, continues the stream: readers such as the kernel's FUSE readahead issue
    several reads of one stream at once, and they may arrive out of order. Each one doubles the
    readahead window up to ``limit``; any other read resets it.
    """

    def __init__(self, block_size: int, limit: int) -> None:
        self.block_size = block_size
        self.limit = limit
        self.start = -1
        self.end = -1
        self.window = 0

    def observe(self, offset: int, end: int) -> int:
        """Note a read of ``[offset, end)`` through the engine; returns the readahead window in bytes."""
        reach = max(self.window, self.block_size)
        forward = 0 <= offset - self.end <= self.block_size
        backward = 0 <= self.start - end <= reach
        if self.end >= 0 and (forward or backward):
            self.window = min(max(2 * self.window, self.block_size), self.limit)
            self.start = min(self.start, offset)
            self.end = max(self.end, end)
        else:
            self.window = 0
            self.start, self.end = offset, end
        return self.window

    def served_locally(self, offset: int, end: int) -> None:
        """Note a read served from the cached file without the engine (the stream goes on)."""
        if offset != self.end:
            self.start = offset
        self.end = end


class Handle:
    """An open object version: reads never mix versions, whatever happens at the origin meanwhile."""

    def __init__(self, engine: CacheEngine, resolved: Resolved, info: ObjectInfo, vid: int) -> None:
        self.engine = engine
        self.resolved = resolved
        self.info = info
        self._vid = vid
        self._version: Version | None = None
        self.position = 0
        self._pattern: ReadPattern | None = None
        self._local: LocalReader | None = None

    @property
    def pattern(self) -> ReadPattern:
        """The reader's pattern (made on the first read: many handles are only opened and looked at)."""
        if self._pattern is None:
            self._pattern = ReadPattern(self.engine.block_size, self.engine.settings.cache.readahead)
        return self._pattern

    @property
    def version_id(self) -> int:
        """The opened version's id: stable for ``(origin, key, etag)``, so a key for memos."""
        return self._vid

    @property
    def version(self) -> Version:
        """The cache's state of the opened version, taken on first use (an open that only looks at
        ``info``, as a HEAD does, registers nothing) and again if it was dropped since. Engine only."""
        version = self._version
        if version is None or version.table.gen[version.slot] != version.gen:  # none yet, or dropped
            version = self._version = self.engine.version_for(self.resolved.origin, self.info, self._vid)
        return version

    @property
    def known_version(self) -> Version | None:
        """The version state if already taken and still alive; never registers one, so any thread
        may ask (the engine's state belongs to its event loop)."""
        version = self._version
        return version if version is not None and version.alive else None

    def local_file(self) -> Path | None:
        """The version's plain local file if it is wholly cached (and checked), else None. The file
        may be evicted later; a descriptor opened on it keeps reading the same bytes."""
        version = self.version
        return self.engine.file_path(version) if version.complete else None

    def read_cached(self, offset: int, end: int) -> bytes | None:
        """Bytes ``[offset, end)`` straight from the cached file if every block they need is on disk,
        else None (then ``pread``). Needs no event loop: any one thread at a time may call it."""
        if self._local is None:
            self._local = LocalReader(self.engine)
        return self._local.read(self, offset, end)

    def close(self) -> None:
        """Let go of the cached file's descriptor ``read_cached`` holds."""
        if self._local is not None:
            self._local.close()

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
