"""Blocking access to the cache for code that is not async (image libraries, scripts, FUSE workers).

``Tessera`` runs a ``CacheEngine`` on an event loop in a background thread. ``CachedFile`` is a
seekable binary file object: reads of blocks already on disk go straight to the cached file
(``LocalReader``), everything else asks the engine.

    with Tessera(load_settings()) as cache:
        with cache.open("/images/maps/chart.jp2") as f:
            header = f.read(4096)
        path = cache.local_path("/images/maps/chart.jp2")
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tessera.cache import CacheEngine, Handle
from tessera.cache.local_read import LocalReader
from tessera.config import Settings
from tessera.origins import ObjectInfo

T = TypeVar("T")


class Tessera:
    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tessera-engine", daemon=True)
        self._thread.start()
        self.engine = CacheEngine(settings)
        try:
            self._call(self.engine.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def open(self, path: str) -> CachedFile:
        return CachedFile(self.engine, self._call(self.engine.open(path)), self._call)

    def stat(self, path: str) -> ObjectInfo:
        return self._call(self.engine.stat(path))

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        return self._call(self.engine.read(path, offset, length))

    def local_path(self, path: str) -> Path:
        return self._call(self.engine.local_path(path))

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self.engine.close())
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Tessera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CachedFile(io.RawIOBase):
    """A read-only, seekable view of one object version, for code running outside the engine's loop.

    ``call`` runs a coroutine on the engine's event loop and waits for its result (``Tessera`` runs
    the loop in a thread; the HTTP server passes ``run_coroutine_threadsafe`` onto its own loop).
    """

    def __init__(
        self, engine: CacheEngine, handle: Handle, call: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        super().__init__()
        self._call = call
        self._handle = handle
        self._local = LocalReader(engine)
        #: The last error of a read (kept for callers, such as libvips callbacks, that only see b"").
        self.read_error: Exception | None = None
        #: The version's plain local file, when the caller knows it is wholly cached.
        self.local_file: Path | None = None
        self.name = handle.resolved.path

    @property
    def size(self) -> int:
        return self._handle.size

    @property
    def etag(self) -> str:
        return self._handle.info.etag

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
        data = self._local.read(self._handle, offset, end)
        if data is not None:
            return data
        return self._call(self._handle.pread(offset, end - offset))

    def close(self) -> None:
        self._local.close()
        super().close()
