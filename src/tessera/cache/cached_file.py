"""A blocking, seekable file object over one open object version, for code outside the engine's loop
(image libraries, the blocking client, FUSE workers).

Reads of blocks already on disk go straight to the cached file (``LocalReader``); everything else asks
the engine on its loop.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tessera.cache.handle import Handle


class CachedFile(io.RawIOBase):
    """A read-only, seekable view of one object version, for code running outside the engine's loop.

    ``call`` runs a coroutine on the engine's event loop and waits for its result (``Tessera`` runs
    the loop in a thread; the HTTP server passes ``run_coroutine_threadsafe`` onto its own loop).
    """

    def __init__(self, handle: Handle, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__()
        self._call = call
        self._handle = handle
        #: The last error of a read (kept for callers, such as libvips callbacks, that only see b"").
        self.read_error: Exception | None = None
        #: The version's plain local file, when the caller knows it is wholly cached.
        self.local_file: Path | None = None
        self.name = handle.resolved.path

    @property
    def size(self) -> int:
        return self._handle.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def read(self, size: int | None = -1) -> bytes:
        """Return the bytes as read (``RawIOBase.read`` would copy them twice more through ``readinto``)."""
        if size is None or size < 0:
            return self.readall()
        data = self.pread(self._handle.position, size)
        self._handle.position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(self._handle.position, len(view))
        view[: len(data)] = data
        self._handle.position += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self.pread(self._handle.position, self.size - self._handle.position)
        self._handle.position += len(data)
        return data

    def pread(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        data = self._handle.read_cached(offset, end)
        if data is not None:
            return data
        fetched: bytes = self._call(self._handle.pread(offset, end - offset))
        return fetched

    def close(self) -> None:
        self._handle.close()
        super().close()
