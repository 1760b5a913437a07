"""Fills: fetching missing blocks from the origin, once per block, and landing them in the tiers.

A fill is one ranged GET for a run of contiguous blocks, sent with ``If-Match``. Each block is handed
to every waiter the moment it is complete, then written to the version's file and marked present.
Failures are retried with backoff and full jitter, resuming after the blocks that already landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tessera.cache.diskstore import write_block
from tessera.cache.partial import STREAM_CHUNK, PartialBlock, block_pieces, stream_chunk
from tessera.cache.version import Version, allocated_size
from tessera.errors import (
    ObjectNotFound,
    OriginTimeout,
    OriginUnavailable,
    OriginUnsupported,
    TesseraError,
    VersionChanged,
)
from tessera.origins import Origin

log = logging.getLogger(__name__)
T = TypeVar("T")


class FillMixin:
    """The fill half of ``CacheEngine`` (state lives on the engine)."""

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, version: Version, first: int, last: int, split_at: int | None = None) -> None:
        """Fetch blocks ``[first, last]`` with one ranged GET, resuming after the last landed block.

        ``split_at``: a reader's offset in the run, fetched first (see ``_stream_run``; first try only).
        The caller has counted the fill as a user of the version (``busy``); it is released here.
        """
        origin = self._origins[version.origin]
        settings = self.settings.origin
        next_index, attempt = first, 0
        started = time.monotonic()
        try:
            while next_index <= last:
                resume_from = next_index
                try:
                    async with self._origin_slots:
                        # A retry after a split GET asks only up to the last block still missing.
                        upto = self._last_pending(version, next_index, last)
                        await self._stream_run(origin, version, next_index, upto, split_at)
                    split_at = None
                    next_index = self._first_pending(version, next_index, last)
                    if next_index <= last:
                        raise OriginUnavailable(f"origin {origin.name} sent a short body for {version.key}")
                except (ObjectNotFound, VersionChanged) as exc:
                    self._forget((version.origin, version.key))
                    self._fail(version, next_index, last, exc)
                    return
                except OriginUnsupported as exc:
                    self._fail(version, next_index, last, exc)  # asking again would not help
                    return
                except Exception as exc:
                    split_at = None
                    # Blocks that landed before the failure are kept; the retry asks only for the rest,
                    # and progress earns the run a fresh set of retries.
                    next_index = self._first_pending(version, next_index, last)
                    attempt = 1 if next_index > resume_from else attempt + 1
                    timeout = isinstance(exc, TimeoutError | OriginTimeout)
                    self.metrics.origin_errors.labels(origin.name, "timeout" if timeout else "error").inc()
                    if attempt > settings.retries:
                        error: TesseraError = (
                            OriginTimeout(f"origin {origin.name} timed out reading {version.key}")
                            if timeout
                            else OriginUnavailable(
                                f"origin {origin.name} failed reading {version.key}: {exc}"
                            )
                        )
                        self._fail(version, next_index, last, error)
                        return
                    await asyncio.sleep(_backoff(attempt, settings.backoff, settings.max_backoff))
        finally:
            self._release(version)
            self._fail(version, next_index, last, OriginUnavailable("fill cancelled"))
            self.metrics.fill_seconds.observe(time.monotonic() - started)

    def _first_pending(self, version: Version, first: int, last: int) -> int:
        """The first block of ``[first, last]`` whose fill has not delivered it yet."""
        index = first
        while index <= last:
            future = self._inflight.get((version.vid, index))
            if future is not None and not future.done():
                break
            index += 1
        return index

    def _last_pending(self, version: Version, first: int, last: int) -> int:
        """The last block of ``[first, last]`` whose fill has not delivered it yet (``first`` if none)."""
        index = last
        while index > first:
            future = self._inflight.get((version.vid, index))
            if future is not None and not future.done():
                break
            index -= 1
        return index

    async def _stream_run(
        self, origin: Origin, version: Version, first: int, last: int, split_at: int | None = None
    ) -> None:
        """Fetch blocks ``[first, last]``, handing each block on as soon as it is complete.

        Early delivery (``partial.py``): every chunk goes into its block's in-flight buffer at once,
        so a reader waiting for part of a block is served when that part has arrived. With
        ``split_at`` (the offset a reader waits for, inside the run), the run is fetched as two GETs,
        ``[split_at, end)`` first, then ``[start, split_at)``: the reader's bytes come first and the
        origin sends the same bytes as for one GET.
        """
        start, end = version.bounds(first)[0], version.bounds(last)[1]
        if split_at is not None and start + STREAM_CHUNK <= split_at < end:
            await self._stream_range(origin, version, split_at, end)
            await self._stream_range(origin, version, start, split_at)
        else:
            await self._stream_range(origin, version, start, end)

    async def _stream_range(self, origin: Origin, version: Version, start: int, end: int) -> None:
        """One ranged GET of bytes ``[start, end)``, written into the blocks still in flight."""
        timeout = self.settings.origin.read_timeout
        self.metrics.origin_requests.labels(origin.name, "GET").inc()
        chunk_size = stream_chunk(end - start, version.block_size)
        async with asyncio.timeout(timeout):
            body = await origin.read_range(version.key, start, end, version.etag, chunk_size=chunk_size)
        chunks = body.chunks
        position = start
        try:
            while position < end:
                async with asyncio.timeout(timeout):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                self.metrics.origin_bytes.labels(origin.name).inc(len(chunk))
                chunk = chunk[: end - position]
                for index, at, piece in block_pieces(position, chunk, version.block_size):
                    key = (version.vid, index)
                    future = self._inflight.get(key)
                    if future is None or future.done():
                        continue  # landed already (a retry resumes at the start of a block)
                    if len(piece) == version.block_length(index):  # a whole block in one chunk
                        await self._land(version, index, chunk if len(piece) == len(chunk) else bytes(piece))
                        continue
                    partial = self._partials.get(key, version.block_length(index))
                    partial.write(at, piece)
                    if partial.complete:
                        await self._land(version, index, partial.bytes())
                position += len(chunk)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]

    def _early_block(self, version: Version, index: int) -> PartialBlock | None:
        """The in-flight buffer of a block that only a fill can give now, for a reader of part of it
        (``partial.py``); None if the block is in memory, on disk, or not being fetched."""
        key = (version.vid, index)
        future = self._inflight.get(key)
        if future is None or future.done() or version.present[index] or key in self.memory:
            return None
        if key in self._awaited:
            self.metrics.coalesced.inc()
        else:
            self._awaited.add(key)
        self.metrics.disk_misses.inc()
        return self._partials.get(key, version.block_length(index))

    async def _land(self, version: Version, index: int, data: bytes) -> None:
        """A block arrived: hand it to every waiter at once, then make it durable on disk."""
        key = (version.vid, index)
        if version.alive:
            self.memory.put(version.vid, index, data)
        future = self._inflight.get(key)
        if future is not None and not future.done():
            future.set_result(data)
        self._partials.landed(key, data)
        try:
            if self._storable(version, index):
                await self._store(version, index, data)
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
                self._awaited.discard(key)
            stored = self._stored.pop(key, None)
            if stored is not None and not stored.done():
                stored.set_result(None)

    def _storable(self, version: Version, index: int) -> bool:
        """Whether a landed block goes to disk: a live, admitted (or pinned) version not being moved."""
        if not version.alive or version.moving or version.present[index]:
            return False
        return version.pinned or version.vid in self.tiers[version.tier].policy

    async def _store(self, version: Version, index: int, data: bytes) -> None:
        length = allocated_size(len(data))
        for attempt in range(2):
            tier = self.tiers[version.tier]
            if not await self._reserve(version, length):
                break
            try:
                crc = await asyncio.to_thread(
                    write_block, tier.store, version.file, version.bounds(index)[0], data
                )
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    log.warning("cannot write cache file %s: %s; serving uncached", version.file, exc)
                    break
                if attempt == 0:
                    # The filesystem is fuller than our accounting (other users of the disk): make room.
                    self._scavenge(version.tier, length, exclude=version, force=True)
                continue
            finally:
                tier.reserved -= length
                if version.pinned:
                    self._pin_reserved -= length
            if version.alive and not version.moving and tier is self.tiers[version.tier]:
                added = version.mark_present(index, crc)
                tier.used += added
                if version.pinned:
                    self.pinned_bytes += added
                else:
                    tier.policy.resize(version.vid, version.disk_bytes)
                self._dirty.add(version.vid)
                self._publish_usage()
            elif not version.alive or tier is not self.tiers[version.tier]:
                # Dropped, or moved to another tier, while the block was being written: the write
                # may have created a file nobody will ever account for.
                await asyncio.to_thread(tier.store.remove, version.file)
            return
        self.metrics.bypassed.inc(len(data))

    async def _until_stored(self, version: Version, index: int) -> None:
        key = (version.vid, index)
        if key not in self._stored:
            self._stored[key] = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._stored[key])

    def _fail(self, version: Version, first: int, last: int, error: Exception) -> None:
        for index in range(first, last + 1):
            future = self._inflight.pop((version.vid, index), None)
            self._awaited.discard((version.vid, index))
            self._partials.failed((version.vid, index), error)
            if future is not None and not future.done():
                future.set_exception(error)

    async def _retrying(self, origin: Origin, method: str, call: Callable[[], Awaitable[T]]) -> T:
        settings = self.settings.origin
        attempt = 0
        while True:
            self.metrics.origin_requests.labels(origin.name, method).inc()
            try:
                async with self._origin_slots, asyncio.timeout(settings.read_timeout):
                    return await call()
            except (ObjectNotFound, VersionChanged, OriginUnsupported):
                raise
            except Exception as exc:
                attempt += 1
                timeout = isinstance(exc, TimeoutError)
                self.metrics.origin_errors.labels(origin.name, "timeout" if timeout else "error").inc()
                if attempt > settings.retries:
                    if timeout:
                        raise OriginTimeout(f"origin {origin.name} did not answer in time") from exc
                    raise OriginUnavailable(f"origin {origin.name} failed: {exc}") from exc
                await asyncio.sleep(_backoff(attempt, settings.backoff, settings.max_backoff))


def consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
