"""The hosting upload limit shared by every node through Redis, so N nodes together allow
``uploads_per_minute`` per client (not N times that).

The bucket is one Lua script (atomic in Redis, on Redis' clock so the nodes' clocks do not matter),
a hash per client that expires once the bucket would be full again.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tessera.cluster.metrics import ClusterMetrics
from tessera.hosting.rate_limit import RateLimit

log = logging.getLogger(__name__)

#: A Redis answer slower than this falls back to the local bucket (seconds).
TIMEOUT = 0.5

#: KEYS[1] the client's bucket; ARGV rate (tokens a second), burst. Returns the wait in seconds
#: (0: a token was taken), as a string (Lua numbers become integers on the way out).
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class SharedRate:
    """One token bucket per client in Redis for every node; this process' bucket while Redis fails."""

    def __init__(self, redis: Redis, per_minute: int, metrics: ClusterMetrics, prefix: str) -> None:
        self.rate = per_minute / 60.0
        self.burst = per_minute
        self.prefix = prefix
        self.metrics = metrics
        self.fallback = RateLimit(per_minute)
        self._failing = False
        self._script = redis.register_script(TOKEN_BUCKET)

    async def take(self, client: str) -> float:
        try:
            async with asyncio.timeout(TIMEOUT):
                answer = await self._script(keys=[f"{self.prefix}{client}"], args=[self.rate, self.burst])
        except (RedisError, OSError, TimeoutError) as error:
            self.metrics.redis_errors.labels("rate_limit").inc()
            if not self._failing:
                log.warning("shared rate limit unavailable (%s): each node limits on its own", error)
            self._failing = True
            return self.fallback.take(client)
        self._failing = False
        return float(answer)
