"""One cached object version: ``(origin, key, etag)`` split into fixed-size blocks.

``Version`` is a view of one slot of the ``VersionTable`` together with the strings its reader knows
(origin, key, ETag): the numbers live in the table, so a version costs the same few bytes whether or
not anybody holds a view of it, and any number of views of one version agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tessera.cache.blocks import block_bounds, block_count
from tessera.cache.table import BLOCKS_IN_INDEX, MOVING, PINNED, BlockState, VersionTable
from tessera.origins import ObjectInfo

#: States of a block (``Version.state``).
ABSENT, PRESENT, UNCHECKED = 0, 1, 2

#: Filesystems allocate whole blocks of this size (ext4, XFS and tmpfs by default); the disk tier
#: accounts each cached block rounded up to it, so its bound holds by ``du`` for small objects too.
ALLOCATION_UNIT = 4096


def allocated_size(length: int) -> int:
    """Bytes a filesystem allocates for ``length`` bytes written at an aligned offset."""
    return -(-length // ALLOCATION_UNIT) * ALLOCATION_UNIT


def version_id(origin: str, key: str, etag: str) -> int:
    """A stable 63-bit id for a version: the same version always gets the same id.

    The id is the version's identity in the resident index (two versions sharing one would need a
    63-bit collision: about one chance in 10^5 among 10 million versions, and the worst it does is
    serve one as a miss of the other, as the ETag in every fill's ``If-Match`` still guards the bytes).
    Stable ids also let the eviction policies remember an evicted version (ghosts, frequency sketch).
    """
    digest = hashlib.sha256(f"{origin}\0{key}\0{etag}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def file_name(vid: int, gen: int) -> str:
    """A version file's name under its tier's data directory."""
    name = f"{vid:016x}"
    return f"{name[:2]}/{name}-{gen:x}"


@dataclass(slots=True)
class Metadata:
    """An object's size and ETag as last seen at the origin, and when."""

    info: ObjectInfo
    validated_at: float
    #: ``version_id`` of this ETag, once someone asked (saves a hash per open).
    vid: int = -1


class Version:
    """A live view of one cached version (see the module docstring).

    Blocks: ``state(index)`` is ``ABSENT``, ``PRESENT`` or ``UNCHECKED``. A block turns ``PRESENT``
    only after its bytes are written to the version's file, so another thread may read a ``PRESENT``
    block through a file descriptor without asking the event loop (``CachedFile``). Blocks taken from
    the index after a restart are ``UNCHECKED`` until a read has compared them with their CRC-32 (kept
    from when the block was fetched): a crash or power cut that lost bytes the index still lists is
    caught there, and the block is fetched again. ``alive`` turns False before the file is unlinked.
    """

    __slots__ = (
        "block_size",
        "etag",
        "gen",
        "key",
        "mtime",
        "nblocks",
        "origin",
        "size",
        "slot",
        "table",
        "vid",
    )

    def __init__(
        self, table: VersionTable, slot: int, origin: str, key: str, etag: str, mtime: float
    ) -> None:
        self.table = table
        self.slot = slot
        self.vid = table.vid[slot]
        self.gen = table.gen[slot]
        #: A version's size and block size never change (a new ETag is a new version).
        self.size = table.size[slot]
        self.block_size = table.block_size[slot]
        self.nblocks = block_count(self.size, self.block_size)
        self.origin = origin
        self.key = key
        self.etag = etag
        self.mtime = mtime

    @property
    def alive(self) -> bool:
        return self.table.gen[self.slot] == self.gen

    @property
    def busy(self) -> int:
        """Reads and fills under way (0 once dropped); a busy version is never evicted."""
        return self.table.busy[self.slot] if self.alive else 0

    @busy.setter
    def busy(self, count: int) -> None:
        if self.alive:
            self.table.busy[self.slot] = count

    @property
    def moving(self) -> bool:
        """Being copied to another tier (or checked): no block is written to it meanwhile."""
        return self.alive and bool(self.table.flags[self.slot] & MOVING)

    @property
    def file(self) -> str:
        return file_name(self.vid, self.gen)

    @property
    def tier(self) -> int:
        return self.table.tier[self.slot]

    @property
    def pinned(self) -> bool:
        return bool(self.table.flags[self.slot] & PINNED)

    @property
    def disk_bytes(self) -> int:
        return self.table.disk_bytes[self.slot]

    @property
    def present_bytes(self) -> int:
        return self.table.present_bytes[self.slot]

    @property
    def present_count(self) -> int:
        return self.table.present_count[self.slot]

    @property
    def hits(self) -> int:
        return self.table.hits[self.slot]

    @property
    def complete(self) -> bool:
        """Every block on disk and checked: the file may be handed to other programs as it is."""
        table, slot = self.table, self.slot
        return (
            table.gen[slot] == self.gen
            and table.present_count[slot] == self.nblocks
            and not table.unchecked[slot]
        )

    @property
    def all_present(self) -> bool:
        """Every block on disk (some perhaps still to be checked by a read through the engine)."""
        table, slot = self.table, self.slot
        return table.present_count[slot] == self.nblocks and table.gen[slot] == self.gen

    @property
    def blocks_loaded(self) -> bool:
        """Whether the block state is in memory (false for a version loaded from the index and not
        read since; ``CacheEngine`` loads it before anyone looks at blocks)."""
        return not self.table.flags[self.slot] & BLOCKS_IN_INDEX

    def bounds(self, index: int) -> tuple[int, int]:
        return block_bounds(index, self.block_size, self.size)

    def block_length(self, index: int) -> int:
        start, end = self.bounds(index)
        return end - start

    def state(self, index: int) -> int:
        """``ABSENT``, ``PRESENT`` or ``UNCHECKED`` (safe from any thread)."""
        blocks = self.table.blocks.get(self.slot)
        if blocks is not None:
            return blocks.present[index]
        if not self.alive:
            return ABSENT
        if not self.blocks_loaded:
            return UNCHECKED  # the engine loads the state before its own reads; other threads ask it
        return PRESENT if self.all_present else ABSENT

    def _blocks(self) -> BlockState:
        """The block state, created when the first block changes."""
        blocks = self.table.blocks.get(self.slot)
        if blocks is None:
            nblocks = self.nblocks
            fill = PRESENT if self.all_present else ABSENT
            blocks = self.table.blocks[self.slot] = BlockState(bytearray([fill]) * nblocks)
        return blocks

    def mark_present(self, index: int, crc: int) -> int:
        """Record block ``index`` (CRC-32 ``crc``) as on disk; returns the disk bytes newly accounted."""
        blocks = self._blocks()
        if blocks.present[index]:
            return 0
        if not blocks.sums:
            blocks.sums = bytearray(4 * self.nblocks)
        blocks.sums[4 * index : 4 * index + 4] = crc.to_bytes(4, "little")
        blocks.present[index] = PRESENT
        length = self.block_length(index)
        table, slot = self.table, self.slot
        table.present_count[slot] += 1
        table.present_bytes[slot] += length
        table.disk_bytes[slot] += allocated_size(length)
        return allocated_size(length)

    def mark_absent(self, index: int) -> int:
        """Forget block ``index`` (it failed its check); returns the disk bytes no longer accounted."""
        blocks = self._blocks()
        state = blocks.present[index]
        if not state:
            return 0
        blocks.present[index] = ABSENT
        length = self.block_length(index)
        table, slot = self.table, self.slot
        table.present_count[slot] -= 1
        table.unchecked[slot] -= state == UNCHECKED
        table.present_bytes[slot] -= length
        table.disk_bytes[slot] -= allocated_size(length)
        return allocated_size(length)

    def check(self, index: int, crc: int) -> bool:
        """Compare the CRC-32 of a block read from disk with the one it was stored with; a match makes
        an ``UNCHECKED`` block ``PRESENT``."""
        blocks = self._blocks()
        if crc != int.from_bytes(blocks.sums[4 * index : 4 * index + 4], "little"):
            return False
        if blocks.present[index] == UNCHECKED:
            blocks.present[index] = PRESENT
            self.table.unchecked[self.slot] -= 1
        return True
