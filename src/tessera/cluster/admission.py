"""Admission counts shared by the nodes: with ``cache.admit_after`` > 1, reads of an object are counted
in Redis too, so an object whose home moved (a node lost, the node list changed) is admitted by its
new home from the cluster's count rather than from zero.

The engine asks ``counted`` on every read of a version its disk tier has not admitted; that only
notes the read and answers from counts Redis already returned, so a read never waits for Redis. The
noted reads go to Redis in one pipelined round trip every ``FLUSH_INTERVAL`` (INCRBY, with a TTL
renewed at each count), and the answers become the known counts: the object is admitted on its
first read after the cluster's count reached ``admit_after``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tessera.cluster.invalidation import stop_if_cancelled
from tessera.cluster.metrics import ClusterMetrics

log = logging.getLogger(__name__)

#: Counts of an object not read anywhere for this long are forgotten (seconds).
COUNT_TTL = 3600
#: Noted reads are sent this often (seconds).
FLUSH_INTERVAL = 0.05
#: Objects with reads waiting to be sent; past it further reads are not counted in Redis until the
#: next send (the local count still is).
MAX_PENDING = 50_000
#: Objects whose cluster count is remembered here.
MAX_KNOWN = 100_000


def count_key(vid: int) -> str:
    return f"tessera:admit:{vid & 0xFFFFFFFFFFFFFFFF:016x}"


class SharedAdmission:
    def __init__(self, redis: Redis, admit_after: int, metrics: ClusterMetrics) -> None:
        self.redis = redis
        self.admit_after = admit_after
        self.metrics = metrics
        self._pending: dict[int, int] = {}
        self._known: OrderedDict[int, int] = OrderedDict()

    def counted(self, vid: int) -> bool:
        """Note one read of version ``vid``; True once the cluster's count has reached ``admit_after``."""
        if vid in self._pending:
            self._pending[vid] += 1
        elif len(self._pending) < MAX_PENDING:
            self._pending[vid] = 1
        return self._known.get(vid, 0) >= self.admit_after

    async def run(self) -> None:
        failing = False
        while True:
            stop_if_cancelled()
            await asyncio.sleep(FLUSH_INTERVAL)
            if not self._pending:
                continue
            try:
                await self.flush()
                failing = False
            except (RedisError, OSError) as error:
                self.metrics.redis_errors.labels("admission").inc()
                if not failing:
                    log.warning("cannot count reads in Redis (%s): admission uses local counts", error)
                failing = True

    async def flush(self) -> None:
        """Send the noted reads (dropped if Redis fails: counts are a hint) and keep the totals."""
        batch, self._pending = self._pending, {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for vid, reads in batch.items():
                pipe.incrby(count_key(vid), reads)
                pipe.expire(count_key(vid), COUNT_TTL)
            answers = await pipe.execute()
        for vid, total in zip(batch, answers[::2], strict=True):
            self._known[vid] = int(total)
            self._known.move_to_end(vid)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
