"""``ClusterNode``: a node of a cluster, sharing through Redis (``[cluster] redis_url``) its changes
(the invalidation stream), the upload rate limit and the admission counts."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Any

from redis.asyncio import Redis

from tessera.cache import CacheEngine
from tessera.cluster.admission import SharedAdmission
from tessera.cluster.changes import Change
from tessera.cluster.invalidation import BLOCK_MS, Publisher, Subscriber
from tessera.cluster.metrics import ClusterMetrics
from tessera.cluster.node import SoloNode
from tessera.cluster.position import PositionFile
from tessera.cluster.rate_limit import UploadRate
from tessera.cluster.shared_rate import SharedRate
from tessera.config import Settings
from tessera.hosting.service import HostingService
from tessera.metrics import Metrics

log = logging.getLogger(__name__)

#: How long a start waits to apply the changes it missed before serving (seconds).
CATCH_UP_WAIT = 10.0
#: How long a stop waits to send the changes not sent yet (seconds).
DRAIN_WAIT = 2.0
#: Redis connect and call timeouts (seconds); a blocking read waits ``BLOCK_MS`` on top.
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 5.0


class ClusterNode(SoloNode):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        cluster = settings.cluster
        assert cluster.redis_url is not None  # the settings check it for a cluster
        #: Made at each start: entries this process sent are skipped when read back.
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.cache_dir = settings.cache.dir
        self.metrics = ClusterMetrics(metrics.registry)
        timeouts: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": CALL_TIMEOUT}
        self.redis = Redis.from_url(cluster.redis_url, **timeouts)
        # Its own connection for the blocking reads, which would hold a shared one for a second each.
        timeouts["socket_timeout"] = CALL_TIMEOUT + BLOCK_MS / 1000
        self.reader = Redis.from_url(cluster.redis_url, **timeouts)
        self.publisher = Publisher(self.redis, self.node, cluster.stream_length, self.metrics)
        #: The engine's hook (``admission``) and the task that sends its counts.
        self.counts: SharedAdmission | None = None
        if settings.cache.admit_after > 1:
            self.admission = self.counts = SharedAdmission(
                self.redis, settings.cache.admit_after, self.metrics
            )
        self.engine: CacheEngine | None = None
        self.hosting: HostingService | None = None
        self.subscriber: Subscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def announce(self, change: Change) -> None:
        self.publisher.announce(change)

    def upload_rate(self, per_minute: int) -> UploadRate:
        return SharedRate(self.redis, per_minute, self.metrics, "tessera:rate:upload:")

    async def start(self, engine: CacheEngine, hosting: HostingService | None) -> None:
        """Start the tasks, and wait (up to ``CATCH_UP_WAIT``) until the changes made while this node
        was away are applied, so it does not serve what they replaced."""
        self.engine, self.hosting = engine, hosting
        self.subscriber = Subscriber(
            self.reader, self.node, PositionFile(self.cache_dir), engine, self.apply, self.metrics
        )
        self._tasks = [
            asyncio.create_task(self.publisher.run(), name="tessera-cluster-publish"),
            asyncio.create_task(self.subscriber.run(), name="tessera-cluster-subscribe"),
        ]
        if self.counts is not None:
            self._tasks.append(asyncio.create_task(self.counts.run(), name="tessera-cluster-admission"))
        try:
            await asyncio.wait_for(self.subscriber.caught_up.wait(), CATCH_UP_WAIT)
        except TimeoutError:
            log.warning(
                "serving before catching up with the invalidation stream (is Redis up?): objects "
                "changed meanwhile may be served as cached until cache.metadata_ttl"
            )

    async def apply(self, change: Change) -> None:
        """Apply a change made through another node."""
        engine = self.engine
        assert engine is not None
        if change.kind == "written":
            await engine.superseded(change.subject, change.info)
        elif change.kind == "deleted":
            await engine.superseded(change.subject, None)
        elif change.kind == "purged":
            await engine.purge(change.subject)
        elif change.kind == "link":
            if self.hosting is not None:
                self.hosting.forget_row(change.subject)
        else:
            engine.revalidate_all()

    async def close(self) -> None:
        await self.publisher.drain(DRAIN_WAIT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.subscriber is not None:
            try:
                await self.subscriber.save()
            except OSError:
                log.exception("saving the stream position failed")
        await self.redis.aclose()
        await self.reader.aclose()
