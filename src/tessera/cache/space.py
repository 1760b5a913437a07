"""Space: reservations, the scavenger, moves between disk tiers, and pins.

Every block write reserves its bytes first. Past a tier's high watermark the scavenger evicts in policy
order down to the low watermark (demoting to the next tier where there is one), skipping what is in
use; a fill that finds no room waits for it (``cache.fill_wait``) rather than overshoot the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tessera.cache.blocks import contiguous_runs
from tessera.cache.diskstore import copy_blocks
from tessera.cache.tiers import DiskTier
from tessera.cache.version import Version
from tessera.errors import CacheFull, ObjectNotFound
from tessera.namespace import Resolved

log = logging.getLogger(__name__)


class SpaceMixin:
    """The space half of ``CacheEngine`` (state lives on the engine)."""

    async def _reserve(self, version: Version, length: int) -> bool:
        """Promise ``length`` bytes of the version's tier to a write, evicting past the high watermark.

        When nothing can be evicted right now (every candidate is being read or filled), the write
        waits up to ``cache.fill_wait`` for room instead of overshooting the limit; after that the
        block is served without being cached.
        """
        deadline = time.monotonic() + self.settings.cache.fill_wait
        while True:
            tier = self.tiers[version.tier]
            if version.pinned and self.pinned_bytes + self._pin_reserved + length > self.pin_limit:
                return False
            in_use = False
            if tier.above_high(length):
                in_use = self._scavenge(version.tier, length, exclude=version)
            if tier.fits(length):
                tier.reserved += length
                if version.pinned:
                    self._pin_reserved += length
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not (in_use or tier.leaving):
                return False  # nothing will free up by waiting
            await self._space_freed(remaining)

    def _scavenge(self, number: int, incoming: int, exclude: Version | None, force: bool = False) -> bool:
        """Evict from tier ``number`` in policy order until it is under its low watermark.

        From a tier with a slower one behind it, victims are demoted (moved) rather than dropped.
        Returns whether candidates were passed over because they are in use (room may come later).
        """
        tier = self.tiers[number]
        demote = number + 1 < len(self.tiers)
        in_use = False
        for vid in tier.policy.victims():
            if tier.committed(incoming) <= tier.target and not force:
                break
            version = self._versions.get(vid)
            if version is None or version.tier != number:
                tier.policy.remove(vid)
                continue
            if version is exclude:
                continue
            if version.busy or version.moving:
                in_use = True
                continue
            if demote and version.disk_bytes:
                self._start_move(version, number + 1)
            else:
                self._drop(version, evicted=True)
            force = False
        self._publish_usage()
        return in_use

    async def _until_fits(self, tier: DiskTier, nbytes: int) -> None:
        """Wait (up to ``cache.fill_wait``) for the moves out of ``tier`` to make room for ``nbytes``."""
        deadline = time.monotonic() + self.settings.cache.fill_wait
        while not tier.fits(nbytes) and tier.leaving > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self._space_freed(remaining)

    async def _space_freed(self, timeout: float) -> None:
        """Wait until space may have been freed (an eviction, a move, a version released), or ``timeout``."""
        freed = self._space
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(freed.wait(), timeout)

    def _promote(self, version: Version) -> None:
        self._start_move(version, version.tier - 1)

    def _start_move(self, version: Version, target: int) -> None:
        source = self.tiers[version.tier]
        source.policy.remove(version.vid, evicted=target > version.tier)
        version.moving = True
        source.leaving += version.disk_bytes
        self._spawn(self._move(version, target, version.disk_bytes))

    async def _move(self, version: Version, target: int, nbytes: int) -> None:
        """Copy a version's present blocks to another tier, then switch it over and free the old file."""
        source_number = version.tier
        source, destination = self.tiers[source_number], self.tiers[target]
        reserved = False
        try:
            if destination.above_high(nbytes):
                self._scavenge(target, nbytes, exclude=version)
            await self._until_fits(destination, nbytes)
            if not destination.fits(nbytes):
                if target > source_number:  # no room further down: the demotion becomes an eviction
                    self._drop(version, evicted=True)
                return
            destination.reserved += nbytes
            reserved = True
            ranges = [
                (version.bounds(a)[0], version.bounds(b)[1])
                for a, b in contiguous_runs(
                    [i for i, bit in enumerate(version.present) if bit], version.nblocks
                )
            ]
            await asyncio.to_thread(
                copy_blocks, source.store, destination.store, version.file, version.size, ranges
            )
            if not version.alive:
                destination.store.remove(version.file)
                return
            source.used -= version.disk_bytes
            destination.used += version.disk_bytes
            version.tier = target
            destination.policy.insert(version.vid, version.disk_bytes)
            source.store.remove(version.file)
            self._dirty.add(version.vid)
        except Exception:
            log.exception("moving %s to tier %s failed", version.key, destination.name)
            if version.alive and version.tier == source_number:
                source.policy.insert(version.vid, version.disk_bytes)
        finally:
            version.moving = False
            source.leaving -= nbytes
            if reserved:
                destination.reserved -= nbytes
            self._publish_usage()
            self._notify_space()

    def _publish_usage(self) -> None:
        for tier in self.tiers:
            self.metrics.cache_bytes.labels(tier.name).set(tier.used)
        self.metrics.cache_bytes.labels("memory").set(self.memory.used)
        self.metrics.cache_objects.set(len(self._versions))

    def _pattern(self, path: str) -> tuple[Resolved, str]:
        """A pin pattern for ``path``: the key of one object, or ``prefix/`` (``""`` for a whole mount)."""
        resolved = self.namespace.resolve_prefix(path)
        key = resolved.key
        if not key or path.endswith("/"):
            return resolved, f"{key}/" if key else ""
        return resolved, key

    async def pin(self, path: str, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Pin an object or prefix (kept out of eviction, within ``cache.pin_size``) and warm it.

        An object path that names no object is pinned as a prefix. Returns what ``warm`` returns. All or
        nothing: if the warm fails for any reason (the objects do not fit in the budget, which raises
        ``CacheFull``; a missing object; an origin error), a pin this call added is withdrawn again, from
        memory and from the index, and the error is raised.
        """
        await self.loaded.wait()
        resolved, pattern = self._pattern(path)
        if pattern and not pattern.endswith("/"):
            try:
                await self._current_info(resolved)
            except ObjectNotFound:
                pattern += "/"
        origin = resolved.origin.identity
        added = (origin, pattern) not in self.pins
        self.pins.add(origin, pattern)
        assert self._index is not None
        await asyncio.to_thread(self._index.save_pin, origin, pattern, True)
        for version in list(self._versions.values()):
            if version.origin == origin and self.pins.matches(origin, version.key):
                self._set_pinned(version, True)
        try:
            return await self.warm(path)
        except BaseException as exc:
            if added:
                self.pins.discard(origin, pattern)
                await self._forget_pin(origin, pattern)
            if isinstance(exc, CacheFull):
                raise CacheFull(
                    f"pinning {path} needs more than the pin budget allows "
                    f"({self.pinned_bytes} of {self.pin_limit} bytes in use; see cache.pin_size)"
                ) from None
            raise

    async def unpin(self, path: str) -> int:
        """Remove the pin of exactly this object or prefix; its versions become evictable again."""
        await self.loaded.wait()
        resolved, pattern = self._pattern(path)
        origin = resolved.origin.identity
        for candidate in (pattern, pattern + "/"):
            if self.pins.discard(origin, candidate):
                return await self._forget_pin(origin, candidate)
        return 0

    async def _forget_pin(self, origin: str, pattern: str) -> int:
        """After ``pattern`` left the pin set: drop it from the index and make the versions no other pin
        matches evictable again; returns how many."""
        assert self._index is not None
        await asyncio.to_thread(self._index.save_pin, origin, pattern, False)
        count = 0
        for version in list(self._versions.values()):
            if version.pinned and not self.pins.matches(version.origin, version.key):
                self._set_pinned(version, False)
                count += 1
        return count

    def _set_pinned(self, version: Version, pinned: bool) -> None:
        if version.pinned == pinned or not version.alive:
            return
        tier = self.tiers[version.tier]
        version.pinned = pinned
        self._dirty.add(version.vid)
        if pinned:
            tier.policy.remove(version.vid)
            self.pinned_bytes += version.disk_bytes
        else:
            self.pinned_bytes -= version.disk_bytes
            tier.policy.insert(version.vid, version.disk_bytes)
