"""Storing a resumable upload while it arrives, so that its last ``PATCH`` does not wait for a copy of
the whole file into the origin (minutes for many GB into S3, longer than proxies wait for an answer).

A ``Relay`` runs one ``StorageManager.put`` of an upload from the start of its staged file, reading
only bytes already counted (``advance``: never bytes a checksum may still discard) and waiting for
more. The object becomes visible only when the put ends, after the last byte, as with any put. A relay
is only a head start: when there is none (the server restarted, too many were running, the client
paused and it was dropped) or it failed, the upload is stored from its staged file at the end instead,
which also reports the real error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tessera.storage.checksums import Expected
from tessera.storage.manager import StorageManager, Stored
from tessera.storage.uploads import READ_CHUNK, Upload

log = logging.getLogger(__name__)

#: Relays at once: each holds an origin upload open (S3: up to part_size x upload_concurrency bytes).
MAX_RELAYS = 8
#: A relay whose upload has received nothing for this long is dropped (its client paused or left).
RELAY_IDLE = 60.0


class Relay:
    def __init__(self, storage: StorageManager, upload: Upload, data: Path, expected: Expected) -> None:
        self.length = upload.length
        self.readable = upload.offset
        self.touched = time.monotonic()
        self._advanced = asyncio.Event()
        chunks = self._chunks(data)
        self.task = asyncio.create_task(
            storage.put(upload.path, chunks, size=upload.length, expected=expected)
        )
        self.task.add_done_callback(_note_failure)

    def advance(self, offset: int) -> None:
        """Bytes up to ``offset`` are counted: the relay may store them."""
        self.readable = offset
        self.touched = time.monotonic()
        self._advanced.set()

    @property
    def failed(self) -> bool:
        return self.task.done() and (self.task.cancelled() or self.task.exception() is not None)

    async def _chunks(self, data: Path) -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, data, os.O_RDONLY)
        try:
            position = 0
            while position < self.length:
                if position >= self.readable:
                    self._advanced.clear()
                    await self._advanced.wait()
                    continue
                size = min(READ_CHUNK, self.readable - position)
                chunk = await asyncio.to_thread(os.pread, fd, size, position)
                if not chunk:
                    raise OSError(f"staged upload {data.name} is shorter than its offset")
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)


def _note_failure(task: asyncio.Task[Stored]) -> None:
    """Retrieve a relay's error (the upload is then stored at its end, which reports it)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.info("storing an upload while it arrived failed (it is stored at its end instead): %s", error)


class Relays:
    """The running relays, by upload id."""

    def __init__(self, storage: StorageManager, limit: int = MAX_RELAYS, idle: float = RELAY_IDLE) -> None:
        self.storage = storage
        self.limit = limit
        self.idle = idle
        self._relays: dict[str, Relay] = {}

    def start(self, upload: Upload, data: Path, expected: Expected) -> None:
        """Start relaying ``upload`` unless a relay of it runs already or too many do."""
        relay = self._relays.get(upload.id)
        if relay is not None and not relay.failed:
            return
        self._relays.pop(upload.id, None)
        if len(self._relays) < self.limit:
            self._relays[upload.id] = Relay(self.storage, upload, data, expected)

    def advance(self, upload_id: str, offset: int) -> None:
        if (relay := self._relays.get(upload_id)) is not None:
            relay.advance(offset)

    async def result(self, upload_id: str) -> Stored | None:
        """What the relay of a complete upload stored; None when there is none or it failed."""
        relay = self._relays.pop(upload_id, None)
        if relay is None:
            return None
        with contextlib.suppress(Exception):
            return await relay.task
        return None

    async def cancel(self, upload_id: str) -> None:
        """Stop relaying (the upload is terminated or expired); the origin keeps nothing of it."""
        relay = self._relays.pop(upload_id, None)
        if relay is not None:
            relay.task.cancel()
            await asyncio.wait([relay.task])  # the origin has cleaned up when it returns

    async def cancel_idle(self) -> None:
        now = time.monotonic()
        for upload_id, relay in list(self._relays.items()):
            if relay.failed or now - relay.touched > self.idle:
                await self.cancel(upload_id)

    async def close(self) -> None:
        for upload_id in list(self._relays):
            await self.cancel(upload_id)
