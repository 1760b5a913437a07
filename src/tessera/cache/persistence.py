"""Persistence: loading the index in the background, writing it in batches, checking the disk.

The in-memory versions are the truth while the process runs; the SQLite index is a lagging copy that
never claims a block the disk does not hold (see ``tessera.cache.index``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from tessera.cache.blocks import contiguous_runs
from tessera.cache.index import VersionRow
from tessera.cache.version import ALLOCATION_UNIT, Metadata
from tessera.errors import CacheLocked
from tessera.origins import ObjectInfo

log = logging.getLogger(__name__)


class PersistenceMixin:
    """The persistence half of ``CacheEngine`` (state lives on the engine)."""

    async def _load_index(self) -> None:
        batches = self._index.batches() if self._index is not None else iter(())
        while batch := await asyncio.to_thread(next, batches, None):
            for row in batch:
                if row.vid not in self._versions and row.vid not in self._dropped_early:
                    self._adopt(row)
            await asyncio.sleep(0)
        self._dropped_early.clear()
        self.loaded.set()
        self._publish_usage()
        for number, tier in enumerate(self.tiers):
            if tier.above_high(0):
                self._scavenge(number, 0, exclude=None)
        if self.settings.cache.verify_on_start:
            await self._verify()
        else:
            self.verified.set()

    def _adopt(self, row: VersionRow) -> None:
        """Take a version from the index (its bytes are already in the usage figures)."""
        version = row.to_version()
        self._versions[version.vid] = version
        self._by_identity[(version.origin, version.key, version.etag)] = version
        if version.tier >= len(self.tiers):  # the second tier was removed from the config
            version.tier = len(self.tiers) - 1
        if not version.pinned:
            self.tiers[version.tier].policy.insert(version.vid, version.disk_bytes)
        current = self._meta.get((version.origin, version.key))
        if current is None or current.validated_at <= row.validated_at:
            info = ObjectInfo(version.key, version.size, version.etag, version.mtime)
            self._meta[(version.origin, version.key)] = Metadata(info, row.validated_at)

    async def _flush(self) -> None:
        if self._index is None or not (self._dirty or self._deleted):
            return
        rows = []
        for vid in self._dirty:
            version = self._versions.get(vid)
            if version is None or not version.present_count:
                continue  # a version with nothing on disk has no row (nor file)
            meta = self._meta.get((version.origin, version.key))
            validated = meta.validated_at if meta and meta.info.etag == version.etag else 0.0
            rows.append(VersionRow.of(version, validated))
        deletes = list(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        try:
            await asyncio.to_thread(self._index.apply, rows, deletes)
        except sqlite3.OperationalError as exc:
            # Not written: keep the batch for the next flush. A full filesystem gets room made first.
            self._dirty.update(row.vid for row in rows if row.vid in self._versions)
            self._deleted.update(deletes)
            if "full" in str(exc):
                self._scavenge(0, 0, exclude=None, force=True)
            raise

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cache.index_flush_interval)
            try:
                await self._flush()
                await self._measure_overhead()
            except Exception:
                log.exception("writing the cache index failed; will retry")

    async def _measure_overhead(self) -> None:
        """Count what the disk holds besides blocks (directories, the index) against each tier's bound."""
        for number, tier in enumerate(self.tiers):
            overhead = await asyncio.to_thread(tier.store.overhead)
            if number == 0 and self._index is not None:
                overhead += await asyncio.to_thread(self._index.disk_bytes)
            tier.overhead = overhead
            if tier.above_high(0):
                self._scavenge(number, 0, exclude=None)

    async def _verify(self) -> None:
        """Bring the disk in line with the index after a restart, in the background.

        Bytes written after the last index flush of a killed process are on disk but not in the index;
        they are punched out so the usage figures match the disk. Files the index does not know are
        removed; versions whose file vanished are dropped.
        """
        for version in list(self._versions.values()):
            await asyncio.sleep(0)
            if not version.alive or version.busy or version.moving or not version.present_count:
                continue
            store = self.tiers[version.tier].store
            allocated = await asyncio.to_thread(store.allocated, version.file)
            if allocated < 0:
                self._drop(version)  # dropped by the process before, which died before its index flush
            elif allocated < version.present_bytes:
                # The file holds less than the index vouches for (a write-back lost in a power cut, a
                # file damaged by hand): nothing of it can be trusted.
                log.warning("cache file of %s lacks bytes the index lists; dropping it", version.key)
                self._drop(version)
            elif allocated > version.disk_bytes + ALLOCATION_UNIT:
                holes = [
                    (version.bounds(a)[0], version.bounds(b)[1])
                    for a, b in contiguous_runs(
                        [i for i in range(version.nblocks) if not version.present[i]], version.nblocks
                    )
                ]
                if holes and version.alive and not version.busy and not version.moving:
                    # No block may be written while its range could still be punched out.
                    version.moving = True
                    try:
                        await asyncio.to_thread(store.punch, version.file, holes)
                    finally:
                        version.moving = False
        for number, tier in enumerate(self.tiers):
            names = await asyncio.to_thread(lambda store=tier.store: list(store.walk()))
            # taken after the walk, with no await until the end: files created meanwhile are known
            known = {v.file for v in self._versions.values() if v.tier == number or v.moving}
            for name in names:
                if name not in known:
                    tier.store.remove(name)
        self._publish_usage()
        self.verified.set()


def lock_directory(root: Path) -> int:
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise CacheLocked(
            f"cache directory {root} is in use by another process (pid {owner or '?'})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
