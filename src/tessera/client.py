"""Blocking access to the cache for code that is not async (image libraries, scripts, FUSE workers).

``Tessera`` runs a ``CacheEngine`` on an event loop in a background thread. ``CachedFile`` is a
seekable binary file object: reads of blocks already on disk go straight to the cached file through
a descriptor (no event loop round trip), everything else asks the engine.

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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tessera.cache import CacheEngine, Handle
from tessera.cache.blocks import block_span
from tessera.cache.version import Version
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
        return CachedFile(self, self._call(self.engine.open(path)))

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
    """A read-only, seekable view of one object version."""

    def __init__(self, owner: Tessera, handle: Handle) -> None:
        super().__init__()
        self._owner = owner
        self._handle = handle
        self._fd: int | None = None
        self._fd_version: Version | None = None
        self._local_reads = 0
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
        data = self._read_local(offset, end)
        if data is not None:
            return data
        return self._owner._call(self._handle.pread(offset, end - offset))

    def _read_local(self, offset: int, end: int) -> bytes | None:
        """Serve the read from the cached file if every block it needs is on disk, else None.

        Safe without the loop: present bits only turn on after the bytes are written, and an evicted
        version turns ``alive`` off before its file is unlinked. So if the version is still alive after
        the descriptor was opened, the descriptor is that version's file; and a descriptor keeps
        reading its file even after an unlink.
        """
        version = self._handle.version
        present = version.present
        if not version.alive or not all(present[i] for i in block_span(offset, end, version.block_size)):
            return None
        if self._fd_version is not version:
            self._close_fd()
            try:
                fd = os.open(self._owner.engine.disk.path(version.file), os.O_RDONLY)
            except FileNotFoundError:
                return None
            if not version.alive:
                os.close(fd)
                return None
            self._fd, self._fd_version = fd, version
        assert self._fd is not None
        data = os.pread(self._fd, end - offset, offset)
        if len(data) != end - offset:
            return None
        self._handle.last_end = end
        self._local_reads += 1
        if self._local_reads % 256 == 1:
            self._owner.engine.touch_threadsafe(version)
        self._owner.engine.metrics.disk_hits.inc()
        return data

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._fd_version = None, None

    def close(self) -> None:
        self._close_fd()
        super().close()
