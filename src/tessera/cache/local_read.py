"""Reads of blocks already on disk, straight from the version's file, without the engine's event loop.

Used where a round trip through the loop would dominate the cost of a hit: the blocking file API
(another thread) and the FUSE view (many small kernel reads).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tessera.cache.blocks import block_span
from tessera.cache.version import PRESENT, Version

if TYPE_CHECKING:
    from tessera.cache.engine import CacheEngine
    from tessera.cache.handle import Handle

#: Hits served here are reported to the eviction policy once per this many reads.
TOUCH_EVERY = 256


class LocalReader:
    """Holds one descriptor on the file of the version a handle reads.

    Safe without the loop: a block's state turns ``PRESENT`` only after its bytes are written, and an
    evicted version's slot is freed (its views turn dead) before its file is unlinked. So if the
    version is still alive after the descriptor was opened, the descriptor is that version's file; and
    a descriptor keeps reading its file even after an unlink.
    """

    def __init__(self, engine: CacheEngine) -> None:
        self._engine = engine
        self._fd: int | None = None
        self._version: Version | None = None
        self._reads = 0

    def read(self, handle: Handle, offset: int, end: int) -> bytes | None:
        """Bytes ``[offset, end)`` if every block they need is on disk, else None (ask the engine)."""
        version = handle.known_version
        if version is None:
            return None
        span = block_span(offset, end, version.block_size)
        if not all(version.state(i) == PRESENT for i in span):  # unchecked or dead: the engine
            return None
        if self._version is not version:
            self.close()
            try:
                fd = os.open(self._engine.file_path(version), os.O_RDONLY)
            except FileNotFoundError:
                return None
            if not version.alive:
                os.close(fd)
                return None
            self._fd, self._version = fd, version
        assert self._fd is not None
        data = os.pread(self._fd, end - offset, offset)
        if len(data) != end - offset:
            return None
        handle.pattern.served_locally(offset, end)
        self._reads += 1
        if self._reads % TOUCH_EVERY == 1:
            self._engine.touch_threadsafe(version)
        self._engine.metrics.disk_hits.inc()
        self._engine.metrics.block_read(version.origin, True)
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._version = None, None
