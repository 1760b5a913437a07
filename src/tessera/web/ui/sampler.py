"""The dashboard's memory of the last hour: the cache's running totals, sampled every few seconds.

``/metrics`` holds totals since the start; a chart of the hit ratio or origin traffic needs them over
time. ``Sampler`` reads the engine's counters every ``interval`` seconds (a few dictionary look-ups,
no I/O) and keeps the last ``points`` samples; ``series`` turns consecutive samples into per-interval
figures. Each process samples its own engine (with ``serve --workers N``, each shard its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from tessera.cache import CacheEngine

INTERVAL = 5.0
POINTS = 720  # an hour at 5 s


@dataclass(frozen=True, slots=True)
class Sample:
    """Running totals at one moment (``fills``: blocks in flight then)."""

    t: float
    hits: float
    misses: float
    origin_bytes: float
    origin_errors: float
    fills: int


def _total(counter: Counter) -> float:
    """A counter's ``_total`` summed over all its labels."""
    return sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total"))


def take(engine: CacheEngine) -> Sample:
    metrics = engine.metrics
    return Sample(
        t=time.time(),
        hits=_total(metrics.hits),
        misses=_total(metrics.misses),
        origin_bytes=_total(metrics.origin_bytes),
        origin_errors=_total(metrics.origin_errors),
        fills=engine.blocks_in_flight,
    )


def series(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Per interval between consecutive samples: when it ended, block reads, the share served from a
    cache tier (None without reads), origin bytes and errors, and the blocks in flight at its end."""
    points = []
    before: Sample | None = None
    for sample in samples:
        if before is not None:
            hits, misses = sample.hits - before.hits, sample.misses - before.misses
            reads = hits + misses
            points.append(
                {
                    "t": round(sample.t, 3),
                    "reads": int(reads),
                    "hit_ratio": round(hits / reads, 4) if reads > 0 else None,
                    "origin_bytes": int(sample.origin_bytes - before.origin_bytes),
                    "origin_errors": int(sample.origin_errors - before.origin_errors),
                    "fills": sample.fills,
                }
            )
        before = sample
    return points


class Sampler:
    """Samples ``engine`` every ``interval`` seconds in a task of the running loop (``start``/``stop``)."""

    def __init__(self, engine: CacheEngine, interval: float = INTERVAL, points: int = POINTS) -> None:
        self.engine = engine
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=points + 1)  # one more: the first interval's start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Sampler:
        self.samples.append(take(self.engine))
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.samples.append(take(self.engine))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def series(self) -> list[dict[str, Any]]:
        return series(self.samples)
