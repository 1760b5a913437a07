"""The one retry policy for origin requests: which failures are retried, how often, how long apart."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tessera.config import OriginSettings
from tessera.errors import (
    ObjectNotFound,
    OriginTimeout,
    OriginUnavailable,
    OriginUnsupported,
    TesseraError,
    VersionChanged,
)
from tessera.metrics import Metrics
from tessera.origins import Origin

T = TypeVar("T")

#: Answers that asking again would not change.
FINAL = (ObjectNotFound, VersionChanged, OriginUnsupported)


class Retry:
    """Backoff with full jitter, ``origin.retries`` attempts after the first; every failure counted."""

    def __init__(self, settings: OriginSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        #: At most ``origin.max_concurrency`` requests to origins at once.
        self.slots = asyncio.Semaphore(settings.max_concurrency)

    def failed(self, origin: Origin, exc: BaseException, attempt: int, what: str) -> TesseraError | None:
        """Count failure number ``attempt`` of a request; the error to give up with once the attempts
        are spent, None while another attempt is due."""
        timeout = isinstance(exc, TimeoutError | OriginTimeout)
        self.metrics.origin_errors.labels(origin.name, "timeout" if timeout else "error").inc()
        if attempt <= self.settings.retries:
            return None
        if timeout:
            return OriginTimeout(f"origin {origin.name} timed out {what}")
        return OriginUnavailable(f"origin {origin.name} failed {what}: {exc}")

    async def pause(self, attempt: int) -> None:
        cap = min(self.settings.max_backoff, self.settings.backoff * 2 ** (attempt - 1))
        await asyncio.sleep(random.uniform(0, cap))

    async def call(self, origin: Origin, method: str, call: Callable[[], Awaitable[T]], what: str) -> T:
        """One request (``method`` for the metrics), retried until it answers or the attempts are spent."""
        attempt = 0
        while True:
            self.metrics.origin_requests.labels(origin.name, method).inc()
            try:
                async with self.slots, asyncio.timeout(self.settings.read_timeout):
                    started = time.monotonic()
                    try:
                        return await call()
                    finally:
                        self.metrics.origin_seconds.labels(origin.name, method).observe(
                            time.monotonic() - started
                        )
            except FINAL:
                raise
            except Exception as exc:
                attempt += 1
                error = self.failed(origin, exc, attempt, what)
                if error is not None:
                    raise error from exc
                await self.pause(attempt)
