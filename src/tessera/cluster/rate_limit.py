"""The hosting upload limit behind one async interface: this process' buckets on a single node,
Redis' in a cluster (``shared_rate.py``)."""

from __future__ import annotations

from typing import Protocol

from tessera.hosting.rate_limit import RateLimit


class UploadRate(Protocol):
    async def take(self, client: str) -> float:
        """Take one upload for ``client``: 0 if it may go on, else the seconds until it may."""
        ...


class LocalRate:
    """This process' token buckets (a single node)."""

    def __init__(self, per_minute: int) -> None:
        self.limit = RateLimit(per_minute)

    async def take(self, client: str) -> float:
        return self.limit.take(client)
