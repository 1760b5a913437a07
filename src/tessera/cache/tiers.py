"""A disk tier: its files, its byte limit and watermarks, its usage, and its eviction policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tessera.cache.diskstore import DiskStore
from tessera.cache.policy import EvictionPolicy


@dataclass(eq=False)
class DiskTier:
    name: str
    store: DiskStore
    limit: int
    policy: EvictionPolicy
    high_watermark: float
    low_watermark: float
    #: Disk bytes of the present blocks of the versions that live here.
    used: int = 0
    #: Bytes on the same disk budget that are not blocks: directories, and for the first tier the
    #: index database. Measured (``DiskStore.overhead``), refreshed with every index flush.
    overhead: int = 0
    #: Bytes promised to writes under way (reserved before the write, so usage never passes the limit).
    reserved: int = 0
    #: Bytes of versions being moved out to another tier (still here until the move completes).
    leaving: int = 0

    @classmethod
    def open(
        cls, name: str, root: Path, limit: int, policy: EvictionPolicy, high: float, low: float, fsync: bool
    ) -> DiskTier:
        return cls(name, DiskStore(root, fsync=fsync), limit, policy, high, low)

    def committed(self, incoming: int = 0) -> int:
        """Usage once writes under way land and moves out complete, plus ``incoming``."""
        return self.used + self.overhead - self.leaving + self.reserved + incoming

    def above_high(self, incoming: int) -> bool:
        return self.used + self.overhead + self.reserved + incoming > self.limit * self.high_watermark

    def fits(self, incoming: int) -> bool:
        return self.used + self.overhead + self.reserved + incoming <= self.limit

    @property
    def target(self) -> float:
        return self.limit * self.low_watermark
