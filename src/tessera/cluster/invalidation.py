"""The invalidation stream: changes made through any node applied on every other, through a Redis Stream.

A stream rather than pub/sub, because a node that was away (stopped, killed, cut off from Redis)
must catch up: it reads on from the last entry it applied, whose id it keeps in ``cache.dir``
(``position.py``). When it cannot know what it missed (the stream was trimmed past its position,
Redis lost its data, or it has no saved position but holds objects) it revalidates every object
instead: each next read checks the origin's ETag once; cached blocks of unchanged versions stay.

``Publisher`` sends a node's changes (in the background: a write never waits for Redis, and while
Redis is away the changes wait in a bounded backlog); ``Subscriber`` reads everyone's, skips the
node's own, and applies the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from tessera.cache import CacheEngine
from tessera.cluster.changes import Change
from tessera.cluster.metrics import ClusterMetrics
from tessera.cluster.position import START, Position, PositionFile, stream_id

log = logging.getLogger(__name__)

#: The stream every node writes its changes to and reads the others' from.
STREAM = "tessera:invalidations"
#: A token made by the first node to find none: a Redis that lost its data has a new one.
EPOCH = "tessera:epoch"
#: Changes kept while Redis is away; past it they are replaced by one ``everything``.
BACKLOG = 10_000
#: Entries sent or read per round trip.
BATCH = 500
#: How long one XREAD waits for new entries (milliseconds).
BLOCK_MS = 1000
#: The position is saved (and checked against trimming) at most this often (seconds).
CHECK_INTERVAL = 1.0
#: Retry delays while Redis cannot be reached (seconds).
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0

Apply = Callable[[Change], Awaitable[None]]
ERRORS = (RedisError, OSError)


def stop_if_cancelled() -> None:
    """Raise the cancellation of the current task if a Redis call swallowed it (redis-py 8 can let a
    read that was cancelled return normally), so loops around Redis calls still stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def current_epoch(redis: Redis) -> str:
    await redis.set(EPOCH, secrets.token_hex(8), nx=True)
    value = await redis.get(EPOCH)
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamState:
    last_id: str
    length: int
    #: Entries ever added (Redis 7): more than ``length`` once trimming removed some.
    added: int


async def stream_state(redis: Redis) -> StreamState | None:
    """The stream's last id and counts; None if there is no stream."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(STREAM)
    except ResponseError as error:
        if "no such key" in str(error).lower():
            return None
        raise
    last = info["last-generated-id"]
    length = int(info["length"])
    return StreamState(
        last.decode() if isinstance(last, bytes) else str(last),
        length,
        int(info.get("entries-added", length)),
    )


async def trimmed_after(redis: Redis, position: str, state: StreamState) -> bool:
    """Whether entries after ``position`` were trimmed away. Trimming removes the oldest entries
    first, so none after it were as long as the position's own entry is still there."""
    if position == START:
        return state.added > state.length
    return not await redis.xrange(STREAM, position, position)


class Publisher:
    """Sends a node's changes to the stream, in order, in batches; keeps them while Redis is away."""

    def __init__(self, redis: Redis, node: str, stream_length: int, metrics: ClusterMetrics) -> None:
        self.redis = redis
        self.node = node
        self.stream_length = stream_length
        self.metrics = metrics
        self._queue: deque[Change] = deque()
        self._pending = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def announce(self, change: Change) -> None:
        self._queue.append(change)
        self._bound()
        self._idle.clear()
        self._pending.set()

    def _bound(self) -> None:
        if len(self._queue) > BACKLOG:
            log.warning(
                "more than %d changes could not be sent to Redis: the other nodes will revalidate "
                "every object instead",
                BACKLOG,
            )
            self._queue.clear()
            self._queue.append(Change("everything"))
        self.metrics.backlog.set(len(self._queue))

    async def run(self) -> None:
        backoff, failing = FIRST_BACKOFF, False
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._queue:
                stop_if_cancelled()
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for change in batch:
                            fields: Any = change.fields(self.node)
                            pipe.xadd(STREAM, fields, maxlen=self.stream_length, approximate=True)
                        await pipe.execute()
                except ERRORS as error:
                    self._queue.extendleft(reversed(batch))
                    self._bound()
                    self.metrics.publish_errors.inc()
                    if not failing:
                        log.warning(
                            "cannot send changes to Redis (%s); they wait and go when it is back", error
                        )
                    failing = True
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    continue
                if failing:
                    log.warning("sending changes to Redis again")
                backoff, failing = FIRST_BACKOFF, False
                self.metrics.backlog.set(len(self._queue))
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until every change announced so far was sent."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)


class Subscriber:
    """Reads the stream from the node's saved position and applies the other nodes' changes."""

    def __init__(
        self,
        redis: Redis,
        node: str,
        positions: PositionFile,
        engine: CacheEngine,
        apply: Apply,
        metrics: ClusterMetrics,
    ) -> None:
        self.redis = redis
        self.node = node
        self.positions = positions
        self.engine = engine
        self.apply = apply
        self.metrics = metrics
        #: Set once the entries that were in the stream at the start are applied.
        self.caught_up = asyncio.Event()
        self.position: Position | None = None
        self._saved: Position | None = None

    async def run(self) -> None:
        saved = await asyncio.to_thread(self.positions.load)
        if saved is not None and saved.stale_before:
            self.engine.revalidate_all(saved.stale_before)  # a revalidation the last run did not finish
        self.position = self._saved = saved
        backoff, failing, checked_at = FIRST_BACKOFF, False, 0.0
        while True:
            stop_if_cancelled()
            try:
                if time.monotonic() - checked_at >= CHECK_INTERVAL:
                    await self.check()
                    checked_at = time.monotonic()
                await self._read()
                if failing:
                    log.warning("reading the invalidation stream again")
                backoff, failing = FIRST_BACKOFF, False
            except ERRORS as error:
                self.metrics.redis_errors.labels("stream").inc()
                if not failing:
                    log.warning("cannot read the invalidation stream (%s); retrying", error)
                failing, checked_at = True, 0.0
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    async def check(self) -> None:
        """Make sure no entry after the position was lost (else revalidate everything and go on from
        the stream's end), then save the position if it moved."""
        epoch = await current_epoch(self.redis)
        state = await stream_state(self.redis)
        position = self.position
        reason = None
        if position is None:
            await self.engine.loaded.wait()
            if len(self.engine.table):
                reason = "this cache holds objects but has no saved stream position"
        elif position.epoch != epoch:
            reason = "Redis lost the stream (its epoch changed)"
        elif state is None and position.last_id != START:
            reason = "the stream is gone"
        elif state is not None and await trimmed_after(self.redis, position.last_id, state):
            reason = "the stream was trimmed past this node's position"
        if position is not None and reason is None:
            self.position = dataclasses.replace(position, epoch=epoch)
        else:
            stale_before = position.stale_before if position is not None else 0.0
            if reason is not None:
                log.warning("revalidating every cached object: %s", reason)
                stale_before = time.time()
                self.engine.revalidate_all(stale_before)
                self.metrics.revalidations.inc()
            self.position = Position(epoch, state.last_id if state is not None else START, stale_before)
        await self.save()

    async def save(self) -> None:
        if self.position is not None and self.position != self._saved:
            position = self.position
            await asyncio.to_thread(self.positions.save, position)
            self._saved = position

    async def _read(self) -> None:
        assert self.position is not None
        block = BLOCK_MS if self.caught_up.is_set() else None
        reply: Any = await self.redis.xread({STREAM: self.position.last_id}, count=BATCH, block=block)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        for _stream, stream_entries in reply or []:
            entries.extend(stream_entries)
        for entry_id, fields in entries:
            await self._apply(entry_id.decode(), fields)
        if len(entries) < BATCH:
            self.caught_up.set()

    async def _apply(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            sender, change = Change.from_fields(fields)
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            log.warning("skipping the malformed stream entry %s: %s", entry_id, error)
            sender, change = self.node, None
        if change is not None and sender != self.node:
            try:
                await self.apply(change)
            except Exception:
                log.exception("applying %s %s from another node failed", change.kind, change.subject)
            else:
                self.metrics.applied.labels(change.kind).inc()
            self.metrics.lag.set(max(0.0, time.time() - stream_id(entry_id)[0] / 1000))
        assert self.position is not None
        self.position = dataclasses.replace(self.position, last_id=entry_id)
