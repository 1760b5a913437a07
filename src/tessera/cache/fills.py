"""Fills: fetching missing blocks from the origin, once per block, and landing them in the tiers.

A fill is one ranged GET for a run of contiguous blocks, sent with ``If-Match`` (two for a random
miss: from the reader's offset first). Each block is handed to every waiter the moment it is
complete, and a reader of part of a block gets that part as soon as it has arrived (``partial.py``);
then the block is written to the version's file and marked present.
Failures are retried (``Retry``), resuming after the blocks that already landed. ``Fills`` owns the
blocks in flight; it asks ``Space`` for room before a write and tells its owner (``on_changed``)
when the origin says the object changed or vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tessera.cache.blocks import contiguous_runs
from tessera.cache.diskstore import write_block
from tessera.cache.memory import MemoryTier
from tessera.cache.partial import STREAM_CHUNK, PartialBlock, PartialBlocks, block_pieces, stream_chunk
from tessera.cache.retry import Retry
from tessera.cache.space import Space
from tessera.cache.version import Version, allocated_size
from tessera.config import Settings
from tessera.errors import ObjectNotFound, OriginUnavailable, OriginUnsupported, VersionChanged
from tessera.metrics import Metrics
from tessera.origins import Origin

log = logging.getLogger(__name__)

BlockKey = tuple[int, int]


class Fills:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        memory: MemoryTier,
        space: Space,
        retry: Retry,
        origins: dict[str, Origin],
        spawn: Callable[[Awaitable[Any]], None],
        release: Callable[[Version], None],
        on_changed: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.memory = memory
        self.space = space
        self.retry = retry
        self.origins = origins
        self._spawn = spawn
        self._release = release
        self._on_changed = on_changed
        self._inflight: dict[BlockKey, asyncio.Future[bytes]] = {}
        #: In-flight blocks someone already waits for: later waiters count as coalesced.
        self._awaited: set[BlockKey] = set()
        #: Waiters for a landed block's disk write to finish (``local_path`` needs the file complete).
        self._stored: dict[BlockKey, asyncio.Future[None]] = {}
        #: Early delivery (``partial.py``): the bytes of in-flight blocks so far, readable by range.
        self._partials = PartialBlocks()

    @property
    def blocks_in_flight(self) -> int:
        return len(self._inflight)

    def in_flight(self, version: Version, index: int) -> bool:
        return (version.vid, index) in self._inflight

    def missing(self, version: Version, index: int) -> bool:
        """Neither on disk, nor in memory, nor on its way."""
        return (
            not version.state(index)
            and (version.vid, index) not in self._inflight
            and (version.vid, index) not in self.memory
        )

    def start(self, version: Version, first: int, last: int, ahead_last: int, at: int | None = None) -> None:
        """Start fills for the missing blocks of ``[first, last]`` and, past it, up to ``ahead_last``.

        Readahead only starts once at least half of the window beyond ``last`` is uncovered, so a
        sequential reader causes a few large GETs rather than one GET per block. ``at``: the offset
        the reader needs first; a fill whose run starts in that block fetches from there first.
        """
        if version.size <= self.settings.cache.small_object_size:
            first, last, ahead_last, at = 0, version.nblocks - 1, version.nblocks - 1, None
        needed = [i for i in range(first, last + 1) if self.missing(version, i)]
        ahead = [i for i in range(last + 1, ahead_last + 1) if self.missing(version, i)]
        if 2 * len(ahead) < ahead_last - last:
            ahead = []
        max_run = max(1, self.settings.cache.max_fill // version.block_size)
        loop = asyncio.get_running_loop()
        for run_first, run_last in contiguous_runs(needed + ahead, max_run):
            for index in range(run_first, run_last + 1):
                future: asyncio.Future[bytes] = loop.create_future()
                future.add_done_callback(_consume_exception)
                self._inflight[(version.vid, index)] = future
            version.busy += 1  # from now, not when the task first runs: the fill holds the version
            split = at if at is not None and at // version.block_size == run_first else None
            self._spawn(self._fill(version, run_first, run_last, split))

    async def wait(self, version: Version, index: int) -> bytes:
        """The block ``index`` from its fill (started here if none is under way)."""
        key = (version.vid, index)
        if key not in self._inflight:
            self.start(version, index, index, index)
        future = self._inflight[key]
        if key in self._awaited:
            self.metrics.coalesced.inc()
        else:
            self._awaited.add(key)
        self.metrics.disk_misses.inc()
        self.metrics.block_read(version.origin, False)
        return await asyncio.shield(future)

    def early(self, version: Version, index: int) -> PartialBlock | None:
        """The in-flight buffer of a block that only a fill can give now, for a reader of part of it
        (``partial.py``); None if the block is in memory, on disk, or not being fetched."""
        key = (version.vid, index)
        future = self._inflight.get(key)
        if future is None or future.done() or version.state(index) or key in self.memory:
            return None
        if key in self._awaited:
            self.metrics.coalesced.inc()
        else:
            self._awaited.add(key)
        self.metrics.disk_misses.inc()
        self.metrics.block_read(version.origin, False)
        return self._partials.get(key, version.block_length(index))

    async def until_stored(self, version: Version, index: int) -> None:
        """Wait until a block in flight is written to disk (or was not cached after all)."""
        key = (version.vid, index)
        if key not in self._inflight:
            return
        if key not in self._stored:
            self._stored[key] = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._stored[key])

    async def _fill(self, version: Version, first: int, last: int, split_at: int | None = None) -> None:
        """Fetch blocks ``[first, last]`` with one ranged GET, resuming after the last landed block.

        ``split_at``: a reader's offset in the run, fetched first (see ``_stream_run``; first try only).
        The caller has counted the fill as a user of the version (``busy``); it is released here.
        """
        origin = self.origins[version.origin]
        next_index, attempt = first, 0
        started = time.monotonic()
        try:
            while next_index <= last:
                resume_from = next_index
                try:
                    async with self.retry.slots:
                        # A retry after a split GET asks only up to the last block still missing.
                        upto = self._last_pending(version, next_index, last)
                        await self._stream_run(origin, version, next_index, upto, split_at)
                    split_at = None
                    next_index = self._first_pending(version, next_index, last)
                    if next_index <= last:
                        raise OriginUnavailable(f"origin {origin.name} sent a short body for {version.key}")
                except (ObjectNotFound, VersionChanged) as exc:
                    self._on_changed(version.origin, version.key)
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
                    error = self.retry.failed(origin, exc, attempt, f"reading {version.key}")
                    if error is not None:
                        self._fail(version, next_index, last, error)
                        return
                    await self.retry.pause(attempt)
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
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                body = await origin.read_range(version.key, start, end, version.etag, chunk_size=chunk_size)
        finally:
            self.metrics.origin_seconds.labels(origin.name, "GET").observe(time.monotonic() - started)
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
                        await self._land(version, index, partial.whole())
                position += len(chunk)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]  # async generators have it

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
            if self.space.storable(version, index):
                await self.store(version, index, data)
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
                self._awaited.discard(key)
            stored = self._stored.pop(key, None)
            if stored is not None and not stored.done():
                stored.set_result(None)

    async def store(self, version: Version, index: int, data: bytes) -> None:
        """Write a block to the version's file within the tier's bound (or leave it uncached)."""
        space = self.space
        length = allocated_size(len(data))
        for attempt in range(2):
            reservation = await space.reserve(version, length)
            if reservation is None:
                break
            tier = reservation.tier
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
                    space.scavenge(version.tier, length, exclude=version.slot, force=True)
                continue
            finally:
                space.release(reservation)
            if version.alive and not version.moving and tier is space.tiers[version.tier]:
                space.landed(version, index, crc)
            elif not version.alive or tier is not space.tiers[version.tier]:
                # Dropped, or moved to another tier, while the block was being written: the write
                # may have created a file nobody will ever account for.
                await asyncio.to_thread(tier.store.remove, version.file)
            return
        self.metrics.bypassed.inc(len(data))

    def _fail(self, version: Version, first: int, last: int, error: Exception) -> None:
        for index in range(first, last + 1):
            future = self._inflight.pop((version.vid, index), None)
            self._awaited.discard((version.vid, index))
            self._partials.failed((version.vid, index), error)
            if future is not None and not future.done():
                future.set_exception(error)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
