"""Index sync: the resident table loaded from the SQLite index at start, written back in batches, and
the disk checked against it after a restart.

The table is the truth while the process runs; the index is a lagging copy that never claims a block
the disk does not hold (see ``tessera.cache.index``). Rows are written in three kinds: full rows (a
version whose blocks changed: strings, block states and checksums), small updates (hits, last access,
tier, pin of a version whose blocks did not change) and deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import itertools
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tessera.cache.blocks import block_count, byte_ranges
from tessera.cache.diskstore import DiskStore
from tessera.cache.index import SqliteIndex, StatsRow, VersionRow
from tessera.cache.space import Space
from tessera.cache.table import (
    BLOCKS_IN_INDEX,
    IN_INDEX,
    MOVING,
    PINNED,
    SUPERSEDED,
    BlockState,
    VersionTable,
)
from tessera.cache.version import ALLOCATION_UNIT, UNCHECKED, Metadata, Version, file_name
from tessera.errors import CacheLocked
from tessera.origins import ObjectInfo

log = logging.getLogger(__name__)

#: ``present`` bytes of an index row -> block states in memory: every listed block ``UNCHECKED``.
_AS_UNCHECKED = bytes([0] + [UNCHECKED] * 255)
#: Rows taken into the table per step of the background load (the loop serves reads in between).
_LOAD_STEP = 20_000


class IndexSync:
    def __init__(
        self,
        root: Path,
        table: VersionTable,
        space: Space,
        drop: Callable[[int, bool], None],
        validated: Callable[[Version], float],
    ) -> None:
        self.root = root
        #: When a version's metadata was last confirmed at the origin (0: not known here).
        self._validated = validated
        self.table = table
        self.space = space
        self._drop = drop
        self.index: SqliteIndex | None = None
        self._lock_fd: int | None = None
        #: Versions whose blocks changed since the last flush, with the strings their row needs.
        self._unsaved: dict[int, Version] = {}
        #: Versions of the index whose hits, tier or pin changed: slot -> validation time to record.
        self._touched: dict[int, float] = {}
        self._deleted: set[int] = set()
        #: Set once every row of the index is in the table.
        self.loaded = asyncio.Event()
        #: Set once the disk has been checked against the index after a start.
        self.verified = asyncio.Event()
        #: Versions dropped before the load reached their row (the row must not bring them back).
        self._dropped_early: set[int] = set()

    # ------------------------------------------------------------------ start and stop

    async def open(self) -> None:
        """Take the cache directory, open the index and take its usage figures (not the rows yet)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.root)
        self.index = await asyncio.to_thread(SqliteIndex, self.root / "index.sqlite")
        if self.index.reset:
            log.warning("cache index %s was of an older format: starting with an empty cache", self.root)
            for tier in self.space.tiers:
                await asyncio.to_thread(tier.store.clear)
        rows = 0
        for number, pinned, nbytes, count in await asyncio.to_thread(self.index.usage):
            self.space.tiers[min(number, len(self.space.tiers) - 1)].used += nbytes
            if pinned:
                self.space.pinned_bytes += nbytes
            rows += count
        self.table.reserve(rows)

    async def close(self) -> None:
        try:
            if self.index is not None:
                try:
                    await self.flush()
                except sqlite3.OperationalError:
                    await self.flush()  # the first failure made room if the disk was full
        except Exception:
            log.exception("final write of the cache index failed; the next start re-checks the disk")
        finally:
            if self.index is not None:
                await asyncio.to_thread(self.index.close)
                self.index = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def load(self, fill_policies: Callable[[np.ndarray], None]) -> None:
        """Take every row into the table (in the background: reads are served meanwhile), then fill
        the policies, least recently used first."""
        batches = self.index.batches() if self.index is not None else iter(())
        while batch := await asyncio.to_thread(next, batches, None):
            for start in range(0, len(batch), _LOAD_STEP):
                self._take(batch[start : start + _LOAD_STEP])
                await asyncio.sleep(0)
        self._dropped_early.clear()
        fill_policies(self.table.last_access_order())
        _return_free_memory()
        self.loaded.set()

    def _take(self, rows: list[tuple[Any, ...]]) -> None:
        """Add index rows (``LOAD_COLUMNS``) to the table, column by column, skipping versions the
        table has already (adopted early, or registered afresh) and versions dropped meanwhile."""
        table = self.table
        columns = list(zip(*rows, strict=True))
        vids = np.array(columns[0], dtype=np.int64)
        known = [vid for vid in columns[0] if table.find(vid) >= 0] + list(self._dropped_early)
        keep = ~np.isin(vids, np.array(known, dtype=np.int64)) if known else np.ones(len(vids), dtype=bool)
        if not keep.any():
            return
        gen, size, block_size, present_count, cached, last_access, hits, tier, pinned, present = (
            np.array(column, dtype=object if n == 9 else None)[keep] for n, column in enumerate(columns[1:])
        )
        size = size.astype(np.int64)
        block_size = block_size.astype(np.int64)
        present_count = present_count.astype(np.int64)
        present_bytes = size.copy()
        for i in np.flatnonzero(present_count * block_size < size):  # partly cached: count its blocks
            present_bytes[i] = _present_bytes(present[i], int(size[i]), int(block_size[i]))
        flags = IN_INDEX | BLOCKS_IN_INDEX | np.where(pinned.astype(np.int64) != 0, PINNED, 0)
        table.extend(
            vid=vids[keep],
            gen=gen,
            size=size,
            block_size=block_size,
            present_count=present_count,
            unchecked=present_count,
            present_bytes=present_bytes,
            disk_bytes=cached,
            last_access=last_access,
            hits=np.minimum(hits.astype(np.int64), 0xFFFFFFFF),
            tier=np.minimum(tier.astype(np.int64), len(self.space.tiers) - 1),
            flags=flags,
        )

    def adopt(self, row: VersionRow) -> int:
        """Take one row into the table before the load reached it (a read asked for it); its slot."""
        slot = self.table.find(row.vid)
        if slot >= 0 or row.vid in self._dropped_early:
            return slot
        flags = IN_INDEX | BLOCKS_IN_INDEX | (PINNED if row.pinned else 0)
        tier = min(row.tier, len(self.space.tiers) - 1)
        slot = self.table.add(
            row.vid,
            row.gen,
            row.size,
            row.block_size,
            tier=tier,
            flags=flags,
            last_access=row.last_access,
            hits=row.hits,
        )
        table = self.table
        table.disk_bytes[slot] = row.cached_bytes
        table.present_count[slot] = table.unchecked[slot] = row.present_count
        table.present_bytes[slot] = _present_bytes(row.present, row.size, row.block_size)
        return slot

    def dropped(self, slot: int) -> None:
        """A version is being dropped: its row goes with the next flush."""
        vid = self.table.vid[slot]
        if not self.loaded.is_set():
            self._dropped_early.add(vid)
        self._unsaved.pop(slot, None)
        self._touched.pop(slot, None)
        self._deleted.add(vid)

    # ------------------------------------------------------------------ what the index knows

    async def metadata(self, origin: str, key: str) -> Metadata | None:
        """The most recently validated version of ``(origin, key)`` the index knows (taken into the
        table if the load has not reached it)."""
        if self.index is None:
            return None
        rows = await asyncio.to_thread(self.index.rows_for, origin, key)
        best: Metadata | None = None
        for row in rows:
            if not self.loaded.is_set():
                self.adopt(row)
            slot = self.table.find(row.vid)
            if slot < 0 or self.table.flags[slot] & SUPERSEDED:
                continue  # dropped or replaced since the row was written
            if best is None or row.validated_at > best.validated_at:
                info = ObjectInfo(row.key, row.size, row.etag, row.mtime)
                best = Metadata(info, row.validated_at, row.vid)
        return best

    async def rows_under(self, origin: str, key: str, prefix: str | None) -> list[VersionRow]:
        """Index rows of the object ``key`` and of the objects under ``prefix`` (None: none). Versions
        that have no row yet are the engine's to add (``CacheEngine._unindexed``): no flush here."""
        assert self.index is not None
        return await asyncio.to_thread(self.index.rows_under, origin, key, prefix)

    async def usage_by_origin(self) -> dict[str, tuple[int, int]]:
        """Versions and bytes on disk per origin, as of the last flush (see ``SqliteIndex``)."""
        if self.index is None:
            return {}
        return await asyncio.to_thread(self.index.usage_by_origin)

    async def rows_by_id(self, vids: list[int]) -> list[VersionRow]:
        if self.index is None or not vids:
            return []
        return await asyncio.to_thread(self.index.rows_by_id, vids)

    def load_blocks(self, slot: int) -> None:
        """Bring a version's block state from the index into memory (one indexed read, on the loop's
        own connection: no wait for a flush)."""
        table = self.table
        if not table.flags[slot] & BLOCKS_IN_INDEX:
            return
        table.flags[slot] &= ~BLOCKS_IN_INDEX
        assert self.index is not None
        found = self.index.blocks_of(table.vid[slot])
        nblocks = block_count(table.size[slot], table.block_size[slot])
        if found is None or len(found[0]) != nblocks:  # no row (dropped meanwhile): nothing is usable
            present, sums = bytearray(nblocks), bytearray()
            self.space.released(slot)
            table.present_count[slot] = table.unchecked[slot] = 0
            table.present_bytes[slot] = table.disk_bytes[slot] = 0
        else:
            present, sums = bytearray(found[0].translate(_AS_UNCHECKED)), bytearray(found[1])
        table.blocks[slot] = BlockState(present, sums)

    async def present_ranges(self, slot: int) -> list[tuple[int, int]]:
        """Byte ranges of a version's present blocks (what a move copies)."""
        table = self.table
        self.load_blocks(slot)
        size, block_size = table.size[slot], table.block_size[slot]
        blocks = table.blocks.get(slot)
        if blocks is None:
            return [(0, size)] if table.present_count[slot] else []
        return byte_ranges([i for i, state in enumerate(blocks.present) if state], block_size, size)

    # ------------------------------------------------------------------ writing

    def blocks_changed(self, version: Version) -> None:
        self._unsaved[version.slot] = version

    def pending(self, slot: int) -> bool:
        """Whether the slot has block changes the index has not seen yet."""
        return slot in self._unsaved

    def touched(self, slot: int, validated_at: float = 0.0) -> None:
        if self.table.flags[slot] & IN_INDEX:
            self._touched[slot] = max(validated_at, self._touched.get(slot, 0.0))

    async def flush(self) -> None:
        if self.index is None or not (self._unsaved or self._touched or self._deleted):
            return
        table = self.table
        rows: list[VersionRow] = []
        saved: list[tuple[int, int]] = []
        for slot, version in self._unsaved.items():
            if not version.alive:
                continue
            blocks = table.blocks.get(slot)
            if not version.present_count or blocks is None:
                if table.flags[slot] & IN_INDEX:  # every block forgotten: no row (nor file)
                    self._deleted.add(version.vid)
                    table.flags[slot] &= ~IN_INDEX
                continue
            rows.append(
                VersionRow(
                    version.vid,
                    version.origin,
                    version.key,
                    version.etag,
                    version.size,
                    version.mtime,
                    version.block_size,
                    bytes(blocks.present),
                    version.disk_bytes,
                    float(table.last_access[slot]),
                    max(self._touched.get(slot, 0.0), self._validated(version)),
                    version.hits,
                    version.tier,
                    int(version.pinned),
                    version.gen,
                    bytes(blocks.sums),
                    version.present_count,
                )
            )
            saved.append((slot, version.gen))
        stats = [
            StatsRow(
                table.vid[slot],
                float(table.last_access[slot]),
                validated,
                table.hits[slot],
                table.tier[slot],
                int(bool(table.flags[slot] & PINNED)),
            )
            for slot, validated in self._touched.items()
            if table.gen[slot] and slot not in self._unsaved and table.flags[slot] & IN_INDEX
        ]
        deletes = list(self._deleted)
        unsaved, touched = self._unsaved, self._touched
        self._unsaved, self._touched, self._deleted = {}, {}, set()
        try:
            await asyncio.to_thread(self.index.apply, rows, deletes, stats)
        except sqlite3.OperationalError as exc:
            # Not written: keep the batch for the next flush. A full filesystem gets room made first.
            for slot, version in unsaved.items():
                self._unsaved.setdefault(slot, version)
            for slot, validated in touched.items():
                self._touched[slot] = max(validated, self._touched.get(slot, 0.0))
            self._deleted.update(deletes)
            if "full" in str(exc):
                self.space.scavenge(0, 0, force=True)
            raise
        for slot, gen in saved:
            if table.gen[slot] != gen:
                continue
            table.flags[slot] |= IN_INDEX
            # A version wholly cached and checked, saved as such, needs no block state in memory.
            if (
                slot not in self._unsaved
                and not table.unchecked[slot]
                and table.present_count[slot] == block_count(table.size[slot], table.block_size[slot])
            ):
                table.blocks.pop(slot, None)

    async def measure_overhead(self) -> None:
        """Count what the disk holds besides blocks (directories, the index) against each tier's bound."""
        for number, tier in enumerate(self.space.tiers):
            overhead = await asyncio.to_thread(tier.store.overhead)
            if number == 0 and self.index is not None:
                overhead += await asyncio.to_thread(self.index.disk_bytes)
            tier.overhead = overhead
            if tier.above_high(0):
                self.space.scavenge(number, 0)

    # ------------------------------------------------------------------ checking the disk

    async def verify(self) -> None:
        """Bring the disk in line with the index after a restart, in the background.

        Bytes written after the last index flush of a killed process are on disk but not in the index;
        they are punched out so the usage figures match the disk. Files the index does not know are
        removed; versions whose file vanished are dropped.
        """
        table = self.table
        for step, slot in enumerate(table.slots()):
            if step % 256 == 0:
                await asyncio.sleep(0)
            gen = table.gen[slot]
            if not gen or table.busy[slot] or table.flags[slot] & MOVING or not table.present_count[slot]:
                continue
            store = self.space.tiers[table.tier[slot]].store
            file = file_name(table.vid[slot], gen)
            allocated = await asyncio.to_thread(store.allocated, file)
            if table.gen[slot] != gen:
                continue
            if allocated < 0:
                self._drop(slot, False)  # dropped by the process before, which died before its index flush
            elif allocated < table.present_bytes[slot]:
                # The file holds less than the index vouches for (a write-back lost in a power cut, a
                # file damaged by hand): nothing of it can be trusted.
                log.warning("cache file %s lacks bytes the index lists; dropping it", file)
                self._drop(slot, False)
            elif allocated > table.disk_bytes[slot] + ALLOCATION_UNIT:
                await self._punch_unlisted(slot, gen, file)
        for number, tier in enumerate(self.space.tiers):
            await self._remove_unknown(number, tier.store)
        self.space.publish()
        self.verified.set()

    async def _punch_unlisted(self, slot: int, gen: int, file: str) -> None:
        """Free the bytes of a version's file in blocks the index does not list."""
        table = self.table
        self.load_blocks(slot)
        blocks = table.blocks.get(slot)
        if blocks is None:
            return
        size, block_size = table.size[slot], table.block_size[slot]
        holes = byte_ranges([i for i, state in enumerate(blocks.present) if not state], block_size, size)
        if not holes or table.busy[slot] or table.flags[slot] & MOVING:
            return
        # No block may be written while its range could still be punched out.
        table.flags[slot] |= MOVING
        try:
            await asyncio.to_thread(self.space.tiers[table.tier[slot]].store.punch, file, holes)
        finally:
            if table.gen[slot] == gen:
                table.flags[slot] &= ~MOVING

    async def _remove_unknown(self, number: int, store: DiskStore) -> None:
        """Remove the files of tier ``number`` that belong to no live version of it."""
        names = store.walk()
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(names, 10_000))):
            for name in batch:
                if not _known(self.table, name, number):
                    store.remove(name)
            await asyncio.sleep(0)


def _known(table: VersionTable, name: str, number: int) -> bool:
    """Whether a file under a tier's data directory belongs to a live version of that tier (or one
    moving: its file may be in either tier for a while)."""
    base = name.rsplit("/", 1)[-1]
    vid_hex, _, gen_hex = base.partition("-")
    try:
        vid, gen = int(vid_hex, 16), int(gen_hex, 16)
    except ValueError:
        return False
    slot = table.find(vid)
    if slot < 0 or table.gen[slot] != gen:
        return False
    return table.tier[slot] == number or bool(table.flags[slot] & MOVING)


def _return_free_memory() -> None:
    """Give the heap the load left free back to the operating system (glibc keeps freed memory of
    many small allocations, such as the rows the load read in batches, for later use: tens of MB
    of resident memory at a million versions)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _present_bytes(present: bytes, size: int, block_size: int) -> int:
    return sum(min(size, (i + 1) * block_size) - i * block_size for i, state in enumerate(present) if state)


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
