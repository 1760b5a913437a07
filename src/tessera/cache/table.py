"""The resident index: every cached version's state in columns by slot, found by its 64-bit id.

A cache of 1 TB of 30 KB tiles holds 33 million versions, so what each one costs in memory decides
whether the engine fits in a machine at all. A Python object per version costs about 1.4 kB; here a
version is one slot of typed arrays (``array.array``: 8-byte counters, 4-byte times, 1-byte flags,
about 70 bytes in all), found through an open-addressing hash table of 4-byte slot numbers keyed by the
version id (itself a hash, so its low bits are uniform). Strings (origin, key, ETag) are not resident:
the SQLite index holds them, and a version being read has them from its reader (``Version``).

Per-block state (which blocks are on disk, their CRC-32) is kept only for versions that need it: those
partly cached, those with blocks not checked since a restart, those whose blocks changed since the
last index flush. A version wholly cached, checked and saved needs none: every block is on disk.

One event loop owns the table; nothing here locks. ``LocalReader`` reads ``gen`` and the block state
from other threads, which is safe because a slot's ``gen`` changes before its file goes.
"""

from __future__ import annotations

import array
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

#: ``flags`` bits.
PINNED = 1
#: The version has a row in the SQLite index (its strings and blocks are there).
IN_INDEX = 2
#: Being copied to another tier (or checked): no block is written to it meanwhile.
MOVING = 8
#: The block state is in the index only (loaded at start, not read since): every listed block is
#: on disk but not checked yet. ``blocks_for`` loads it.
BLOCKS_IN_INDEX = 4
#: Replaced or deleted through Tessera while being read: no longer found by lookups, dropped once its
#: last reader is done.
SUPERSEDED = 16

#: An empty slot of the hash table (table entries hold slot + 1).
_EMPTY = 0


@dataclass(slots=True)
class BlockState:
    """Which blocks of a version are on disk (``ABSENT``/``PRESENT``/``UNCHECKED`` per block) and the
    CRC-32 each was stored with (4 bytes little-endian per block, empty until the first block)."""

    present: bytearray
    sums: bytearray = field(default_factory=bytearray)


def _zeros(typecode: str, n: int) -> array.array:  # type: ignore[type-arg]  # typecode varies
    return array.array(typecode, bytes(array.array(typecode).itemsize * n))


class VersionTable:
    """Columns of per-version state indexed by slot, with a hash index from version id to slot.

    A slot is free when its ``gen`` is 0; every registration gets a fresh ``gen`` (the file
    incarnation), so a ``Version`` view knows it is still alive by comparing its own ``gen`` with the
    slot's: a slot reused by another version, or the same version registered again, does not match.
    """

    def __init__(self, expected: int = 0) -> None:
        self.vid = array.array("q")
        self.gen = array.array("q")
        self.size = array.array("q")
        #: What the present blocks take on disk (each rounded up to the allocation unit).
        self.disk_bytes = array.array("q")
        #: Bytes of the present blocks (the object's bytes, as reported to users).
        self.present_bytes = array.array("q")
        self.present_count = array.array("i")
        #: Present blocks not checked against their CRC-32 since the index was loaded.
        self.unchecked = array.array("i")
        self.block_size = array.array("i")
        self.hits = array.array("I")
        #: Seconds since the epoch (one-second resolution is all the policies and ``stats`` need).
        self.last_access = array.array("I")
        #: Reads and fills under way; a busy version is never evicted.
        self.busy = array.array("I")
        self.tier = array.array("B")
        self.flags = array.array("B")
        self._columns = list(self._named().values())
        self._free: list[int] = []
        #: Slots ever used (the columns hold more: room to grow without reallocating).
        self._end = 0
        self.count = 0
        #: Block state of the versions that need one (see the module docstring).
        self.blocks: dict[int, BlockState] = {}
        self._mask = 0
        self._slots = array.array("i")
        self._rehash(max(1024, 2 * expected))

    # ------------------------------------------------------------------ hash index

    def find(self, vid: int) -> int:
        """The slot of version ``vid``, or -1."""
        slots, vids = self._slots, self.vid
        i = vid & self._mask
        while entry := slots[i]:
            if vids[entry - 1] == vid:
                return entry - 1
            i += 1
        return -1

    def _rehash(self, capacity: int) -> None:
        """Rebuild the hash index with at least ``capacity`` buckets (a power of two).

        Linear probing without wrap-around: a probe runs past the last bucket into a tail that grows
        as needed, so the table can be built at once with NumPy (sorted by home bucket, an entry's
        bucket is ``i + max(home_j - j for j <= i)``), which keeps a rebuild of millions of entries to a
        fraction of a second.
        """
        buckets = 1 << max(10, (capacity - 1).bit_length())
        self._mask = buckets - 1
        live = np.flatnonzero(np.frombuffer(self.gen, dtype=np.int64) != 0) if self.count else None
        if live is None or not len(live):
            self._slots = _zeros("i", buckets + 1)
            return
        homes = np.frombuffer(self.vid, dtype=np.int64)[live] & self._mask
        order = np.argsort(homes, kind="stable")
        homes, live = homes[order], live[order]
        steps = np.arange(len(homes), dtype=np.int64)
        buckets_of = steps + np.maximum.accumulate(homes - steps)
        table = np.zeros(max(buckets, int(buckets_of[-1]) + 1) + 1, dtype=np.int32)
        table[buckets_of] = live + 1
        self._slots = array.array("i", table.tobytes())

    def _insert_slot(self, slot: int) -> None:
        if 5 * (self.count + 1) > 3 * (self._mask + 1):  # keep the load under 0.6: short probes
            self._rehash(2 * (self.count + 1))
            return  # the rebuild placed every live slot, this one included
        slots = self._slots
        i = self.vid[slot] & self._mask
        while slots[i]:
            i += 1
        slots[i] = slot + 1
        if i == len(slots) - 1:
            slots.append(_EMPTY)  # a probe always ends on an empty bucket

    def _remove_slot(self, slot: int) -> None:
        """Take ``slot`` out of the hash index, shifting later entries of its probe run back."""
        slots, vids, mask = self._slots, self.vid, self._mask
        i = vids[slot] & mask
        while slots[i] != slot + 1:
            i += 1
        hole, j = i, i + 1
        while entry := slots[j]:
            if vids[entry - 1] & mask <= hole:
                slots[hole] = entry
                hole = j
            j += 1
        slots[hole] = _EMPTY

    # ------------------------------------------------------------------ slots

    def add(
        self,
        vid: int,
        gen: int,
        size: int,
        block_size: int,
        *,
        tier: int = 0,
        flags: int = 0,
        last_access: float | None = None,
        hits: int = 0,
    ) -> int:
        """Register a version (not yet present); returns its slot."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._end == len(self.vid):
                self._grow(max(1024, len(self.vid) // 2))
            slot = self._end
            self._end += 1
        self.vid[slot] = vid
        self.gen[slot] = gen
        self.size[slot] = size
        self.block_size[slot] = block_size
        self.tier[slot] = tier
        self.flags[slot] = flags
        self.hits[slot] = min(hits, 0xFFFFFFFF)
        self.last_access[slot] = int(time.time() if last_access is None else last_access)
        self.disk_bytes[slot] = self.present_bytes[slot] = 0
        self.present_count[slot] = self.unchecked[slot] = self.busy[slot] = 0
        self.count += 1
        self._insert_slot(slot)
        return slot

    def extend(self, **columns: np.ndarray) -> None:
        """Add many versions at once (the start-up load): one array per column, all of one length;
        columns not given start at 0."""
        count = len(columns["vid"])
        first = self._end
        if first + count > len(self.vid):
            self._grow(max(first + count - len(self.vid), len(self.vid) // 2))
        for name, column in self._named().items():
            values = columns.get(name)
            if values is not None:
                view = np.frombuffer(column, dtype=column.typecode)
                view[first : first + count] = np.asarray(values).astype(column.typecode)
                del view  # let go of the buffer: the column must stay resizable
        self._end += count
        self.count += count
        if 5 * self.count > 3 * (self._mask + 1):
            self._rehash(2 * self.count)
        else:
            for slot in range(first, first + count):
                self._insert_slot(slot)

    def _grow(self, extra: int) -> None:
        """Make room for ``extra`` more slots in every column, at once (zeros: free slots)."""
        for column in self._columns:
            column.frombytes(bytes(column.itemsize * extra))

    def _named(self) -> dict[str, array.array]:  # type: ignore[type-arg]  # columns of several types
        return {
            "vid": self.vid,
            "gen": self.gen,
            "size": self.size,
            "disk_bytes": self.disk_bytes,
            "present_bytes": self.present_bytes,
            "present_count": self.present_count,
            "unchecked": self.unchecked,
            "block_size": self.block_size,
            "hits": self.hits,
            "last_access": self.last_access,
            "busy": self.busy,
            "tier": self.tier,
            "flags": self.flags,
        }

    def free(self, slot: int) -> None:
        """Forget the version in ``slot`` (its views turn dead: their ``gen`` no longer matches)."""
        self._remove_slot(slot)
        self.gen[slot] = 0
        self.vid[slot] = -1
        self.blocks.pop(slot, None)
        self.count -= 1
        self._free.append(slot)

    def __len__(self) -> int:
        return self.count

    def slots(self) -> Iterator[int]:
        """Every live slot (a snapshot: slots freed while iterating are still yielded; check ``gen``)."""
        live = np.flatnonzero(np.frombuffer(self.gen, dtype=np.int64) != 0)
        return iter(live.tolist())

    def reserve(self, expected: int) -> None:
        """Make room for ``expected`` versions at once (before a bulk load): each column is allocated
        once rather than grown step by step, which would leave the heap full of holes."""
        if expected > len(self.vid):
            self._grow(expected + expected // 16 + 1024 - len(self.vid))
        if 5 * expected > 3 * (self._mask + 1):
            self._rehash(2 * expected)

    # ------------------------------------------------------------------ figures

    def tier_counts(self, tiers: int) -> list[int]:
        live = np.frombuffer(self.gen, dtype=np.int64) != 0
        counts = np.bincount(np.frombuffer(self.tier, dtype=np.uint8)[live], minlength=tiers)
        return [int(c) for c in counts[:tiers]]

    def most_hit(self, top: int) -> list[int]:
        """Slots of the ``top`` versions read most often (ties in any order), most first."""
        if not self.count or top <= 0:
            return []
        hits = np.frombuffer(self.hits, dtype=np.uint32).astype(np.int64)
        hits[np.frombuffer(self.gen, dtype=np.int64) == 0] = -1
        top = min(top, len(hits))
        best = np.argpartition(-hits, top - 1)[:top]
        best = best[np.argsort(-hits[best], kind="stable")]
        return [int(s) for s in best if hits[s] > 0]

    def last_access_order(self) -> np.ndarray:
        """Live slots, least recently used first (the order policies are filled in at start)."""
        live = np.flatnonzero(np.frombuffer(self.gen, dtype=np.int64) != 0)
        order = np.argsort(np.frombuffer(self.last_access, dtype=np.uint32)[live], kind="stable")
        return live[order]
