"""Space: the disk tiers' bounds, reservations, the scavenger, moves between tiers, the pin budget.

Every block write reserves its bytes first. Past a tier's high watermark the scavenger evicts in policy
order down to the low watermark (demoting to the next tier where there is one), skipping what is in
use; a fill that finds no room waits for it (``cache.fill_wait``) rather than overshoot the limit.
``Space`` works on slots of the ``VersionTable`` (eviction needs no strings); dropping a version is
its owner's job (``drop``), as that touches the memory tier and the index too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tessera.cache.diskstore import copy_blocks
from tessera.cache.memory import MemoryTier
from tessera.cache.table import MOVING, PINNED, VersionTable
from tessera.cache.tiers import DiskTier
from tessera.cache.version import Version, file_name
from tessera.config import CacheSettings
from tessera.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Bytes of a tier promised to one block write (``Space.reserve``), and whether against the pin
    budget."""

    tier: DiskTier
    length: int
    pinned: bool


class Space:
    def __init__(
        self,
        settings: CacheSettings,
        tiers: list[DiskTier],
        table: VersionTable,
        memory: MemoryTier,
        metrics: Metrics,
        spawn: Callable[[Awaitable[Any]], None],
        drop: Callable[[int, bool], None],
        changed: Callable[[int], None],
        blocks_changed: Callable[[Version], None],
        present_ranges: Callable[[int], Awaitable[list[tuple[int, int]]]],
    ) -> None:
        self.settings = settings
        self.tiers = tiers
        self.table = table
        self.memory = memory
        self.metrics = metrics
        self._spawn = spawn
        self._drop = drop
        #: A version's tier or pin changed / its blocks changed: its index row needs writing.
        self._changed = changed
        self._blocks_changed = blocks_changed
        self._present_ranges = present_ranges
        self.pin_limit = settings.pin_size if settings.pin_size is not None else settings.disk_size // 10
        self.pinned_bytes = 0
        self._pin_reserved = 0
        #: Replaced (after being set) whenever space may have been freed; fills short of room wait on it.
        self._freed = asyncio.Event()
        for tier in tiers:
            metrics.cache_limit.labels(tier.name).set(tier.limit)
        metrics.cache_limit.labels("memory").set(memory.limit)

    # ------------------------------------------------------------------ accounting

    def storable(self, version: Version, index: int) -> bool:
        """Whether a landed block goes to disk: a live, admitted (or pinned) version not being moved."""
        if not version.alive or version.moving or version.state(index):
            return False
        return version.pinned or version.slot in self.tiers[version.tier].policy

    def landed(self, version: Version, index: int, crc: int) -> None:
        """A block is written to the version's file: account it."""
        added = version.mark_present(index, crc)
        tier = self.tiers[version.tier]
        tier.used += added
        if version.pinned:
            self.pinned_bytes += added
        else:
            tier.policy.resize(version.slot, version.disk_bytes)
        self._blocks_changed(version)
        self.publish()

    def forgot_block(self, version: Version, index: int) -> None:
        """A present block turned out unusable: account it as absent (a fill will write it again)."""
        freed = version.mark_absent(index)
        tier = self.tiers[version.tier]
        tier.used -= freed
        if version.pinned:
            self.pinned_bytes -= freed
        elif version.slot in tier.policy:
            tier.policy.resize(version.slot, version.disk_bytes)
        self._blocks_changed(version)
        self.publish()

    def released(self, slot: int) -> None:
        """A slot's bytes left its tier (the version was dropped)."""
        table = self.table
        tier = self.tiers[table.tier[slot]]
        tier.used -= table.disk_bytes[slot]
        if table.flags[slot] & PINNED:
            self.pinned_bytes -= table.disk_bytes[slot]

    def set_pinned(self, slot: int, pinned: bool) -> None:
        table = self.table
        if bool(table.flags[slot] & PINNED) == pinned:
            return
        tier = self.tiers[table.tier[slot]]
        if pinned:
            table.flags[slot] |= PINNED
            tier.policy.remove(slot)
            self.pinned_bytes += table.disk_bytes[slot]
        else:
            table.flags[slot] &= ~PINNED
            self.pinned_bytes -= table.disk_bytes[slot]
            tier.policy.insert(slot, table.disk_bytes[slot])
        self._changed(slot)

    def publish(self) -> None:
        for tier in self.tiers:
            self.metrics.cache_bytes.labels(tier.name).set(tier.used)
        self.metrics.cache_bytes.labels("memory").set(self.memory.used)
        self.metrics.cache_objects.set(len(self.table))

    # ------------------------------------------------------------------ reservations

    async def reserve(self, version: Version, length: int) -> Reservation | None:
        """Promise ``length`` bytes of the version's tier to a write, evicting past the high watermark.

        When nothing can be evicted right now (every candidate is being read or filled), the write
        waits up to ``cache.fill_wait`` for room instead of overshooting the limit; after that the
        block is served without being cached.
        """
        deadline = time.monotonic() + self.settings.fill_wait
        while version.alive:
            tier = self.tiers[version.tier]
            pinned = version.pinned
            if pinned and self.pinned_bytes + self._pin_reserved + length > self.pin_limit:
                return None
            in_use = False
            if tier.above_high(length):
                in_use = self.scavenge(version.tier, length, exclude=version.slot)
            if tier.fits(length):
                tier.reserved += length
                if pinned:
                    self._pin_reserved += length
                return Reservation(tier, length, pinned)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not (in_use or tier.leaving):
                return None  # nothing will free up by waiting
            await self.freed(remaining)
        return None

    def release(self, reservation: Reservation) -> None:
        """The write a reservation was for is done (or failed): its bytes are no longer promised.
        (Taken back as they were promised: the version may have been pinned or unpinned since.)"""
        reservation.tier.reserved -= reservation.length
        if reservation.pinned:
            self._pin_reserved -= reservation.length

    def scavenge(self, number: int, incoming: int, exclude: int = -1, force: bool = False) -> bool:
        """Evict from tier ``number`` in policy order until it is under its low watermark.

        From a tier with a slower one behind it, victims are demoted (moved) rather than dropped.
        Returns whether candidates were passed over because they are in use (room may come later).
        """
        tier, table = self.tiers[number], self.table
        demote = number + 1 < len(self.tiers)
        in_use = False
        for slot in tier.policy.victims():
            if tier.committed(incoming) <= tier.target and not force:
                break
            if not table.gen[slot] or table.tier[slot] != number:
                tier.policy.remove(slot)
                continue
            if slot == exclude:
                continue
            if table.busy[slot] or table.flags[slot] & MOVING:
                in_use = True
                continue
            if demote and table.disk_bytes[slot]:
                self.start_move(slot, number + 1)
            else:
                self._drop(slot, True)
            force = False
        self.publish()
        return in_use

    async def freed(self, timeout: float) -> None:
        """Wait until space may have been freed (an eviction, a move, a version released), or ``timeout``."""
        freed = self._freed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(freed.wait(), timeout)

    def notify(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()

    # ------------------------------------------------------------------ moves between tiers

    def start_move(self, slot: int, target: int) -> None:
        table = self.table
        source = self.tiers[table.tier[slot]]
        source.policy.remove(slot, evicted=target > table.tier[slot])
        table.flags[slot] |= MOVING
        nbytes = table.disk_bytes[slot]
        source.leaving += nbytes
        self._spawn(self._move(slot, table.gen[slot], target, nbytes))

    async def _move(self, slot: int, gen: int, target: int, nbytes: int) -> None:
        """Copy a version's present blocks to another tier, then switch it over and free the old file."""
        table = self.table
        source_number = table.tier[slot]
        source, destination = self.tiers[source_number], self.tiers[target]
        file = file_name(table.vid[slot], gen)
        reserved = False
        try:
            if destination.above_high(nbytes):
                self.scavenge(target, nbytes, exclude=slot)
            await self._until_fits(destination, nbytes)
            if table.gen[slot] != gen:
                return
            if not destination.fits(nbytes):
                if target > source_number:  # no room further down: the demotion becomes an eviction
                    self._drop(slot, True)
                return
            destination.reserved += nbytes
            reserved = True
            ranges = await self._present_ranges(slot)
            size = table.size[slot]
            await asyncio.to_thread(copy_blocks, source.store, destination.store, file, size, ranges)
            if table.gen[slot] != gen:
                destination.store.remove(file)
                return
            source.used -= table.disk_bytes[slot]
            destination.used += table.disk_bytes[slot]
            table.tier[slot] = target
            destination.policy.insert(slot, table.disk_bytes[slot])
            source.store.remove(file)
            self._changed(slot)
        except Exception:
            log.exception("moving cache file %s to tier %s failed", file, destination.name)
            if table.gen[slot] == gen and table.tier[slot] == source_number:
                source.policy.insert(slot, table.disk_bytes[slot])
        finally:
            if table.gen[slot] == gen:
                table.flags[slot] &= ~MOVING
            source.leaving -= nbytes
            if reserved:
                destination.reserved -= nbytes
            self.publish()
            self.notify()

    async def _until_fits(self, tier: DiskTier, nbytes: int) -> None:
        """Wait (up to ``cache.fill_wait``) for the moves out of ``tier`` to make room for ``nbytes``."""
        deadline = time.monotonic() + self.settings.fill_wait
        while not tier.fits(nbytes) and tier.leaving > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self.freed(remaining)
