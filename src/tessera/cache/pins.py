"""Pinned paths: reference data that must stay local, matched by exact key or by prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from tessera.cache.table import PINNED, VersionTable
from tessera.cache.targets import Target

if TYPE_CHECKING:
    from tessera.cache.index_sync import IndexSync
    from tessera.cache.space import Space
    from tessera.cache.version import Version


class PinSet:
    """Pins are ``(origin, key)`` for one object or ``(origin, "prefix/")`` for everything below it.

    ``matches`` costs one set lookup per path segment of the key, however many pins there are.
    """

    def __init__(self) -> None:
        self._pins: set[tuple[str, str]] = set()

    def add(self, origin: str, pattern: str) -> None:
        self._pins.add((origin, pattern))

    def __contains__(self, pin: object) -> bool:
        """Whether ``(origin, pattern)`` is itself a pin (not whether some pin matches a key)."""
        return pin in self._pins

    def discard(self, origin: str, pattern: str) -> bool:
        if (origin, pattern) in self._pins:
            self._pins.remove((origin, pattern))
            return True
        return False

    def matches(self, origin: str, key: str) -> bool:
        if not self._pins:
            return False
        if (origin, key) in self._pins or (origin, "") in self._pins:
            return True
        slash = key.find("/")
        while slash != -1:
            if (origin, key[: slash + 1]) in self._pins:
                return True
            slash = key.find("/", slash + 1)
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(sorted(self._pins))

    def __len__(self) -> int:
        return len(self._pins)


class Pinning:
    """Pin and unpin (``CacheEngine.pin``/``unpin``): the pin set, its rows in the index, and the
    pinned flag of the versions each pin covers (which takes them out of eviction, within the pin
    budget ``Space`` keeps)."""

    def __init__(
        self,
        pins: PinSet,
        table: VersionTable,
        space: Space,
        sync: IndexSync,
        unindexed: Callable[[], list[Version]],
    ) -> None:
        self.pins = pins
        self.table = table
        self.space = space
        self.sync = sync
        self._unindexed = unindexed

    async def add(self, origin: str, pattern: str) -> bool:
        """Pin ``pattern`` and mark the versions it covers; returns whether it is a new pin."""
        added = (origin, pattern) not in self.pins
        self.pins.add(origin, pattern)
        assert self.sync.index is not None
        await asyncio.to_thread(self.sync.index.save_pin, origin, pattern, True)
        for slot, _key in await self._covered(origin, pattern):
            self.space.set_pinned(slot, True)
        return added

    async def remove(self, origin: str, pattern: str) -> int:
        """After ``pattern`` left the pin set: drop it from the index and make the versions no other pin
        matches evictable again; returns how many."""
        self.pins.discard(origin, pattern)
        assert self.sync.index is not None
        await asyncio.to_thread(self.sync.index.save_pin, origin, pattern, False)
        count = 0
        for slot, key in await self._covered(origin, pattern):
            if self.table.flags[slot] & PINNED and not self.pins.matches(origin, key):
                self.space.set_pinned(slot, False)
                count += 1
        return count

    async def _covered(self, origin: str, pattern: str) -> list[tuple[int, str]]:
        """``(slot, key)`` of every live version the pattern covers: from the index, and those not
        in it yet."""
        target = Target.of_pattern(origin, pattern)
        covered = []
        for row in await self.sync.rows_under(origin, target.key, target.prefix):
            slot = self.table.find(row.vid)
            if slot >= 0 and self.table.gen[slot] == row.gen:
                covered.append((slot, row.key))
        for version in self._unindexed():
            if version.origin == origin and target.matches(version.key) and version.alive:
                covered.append((version.slot, version.key))
        return covered
