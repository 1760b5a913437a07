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
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tessera.cache import CachedFile, CacheEngine
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
        return CachedFile(self._call(self.engine.open(path)), self._call)

    def stat(self, path: str) -> ObjectInfo:
        return self._call(self.engine.stat(path))

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        return self._call(self.engine.read(path, offset, length))

    def local_path(self, path: str) -> Path:
        return self._call(self.engine.local_path(path))

    def purge(self, path: str) -> int:
        return self._call(self.engine.purge(path))

    def stats(self, top: int = 10) -> dict[str, Any]:
        return self._call(self.engine.stats(top))

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
