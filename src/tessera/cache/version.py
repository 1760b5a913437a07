"""One cached object version: ``(origin, key, etag)`` split into fixed-size blocks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tessera.cache.blocks import block_bounds, block_count
from tessera.origins import ObjectInfo

#: States of a block in ``Version.present``.
ABSENT, PRESENT, UNCHECKED = 0, 1, 2

#: Filesystems allocate whole blocks of this size (ext4, XFS and tmpfs by default); the disk tier
#: accounts each cached block rounded up to it, so its bound holds by ``du`` for small objects too.
ALLOCATION_UNIT = 4096


def allocated_size(length: int) -> int:
    """Bytes a filesystem allocates for ``length`` bytes written at an aligned offset."""
    return -(-length // ALLOCATION_UNIT) * ALLOCATION_UNIT


def version_id(origin: str, key: str, etag: str) -> int:
    """A stable 63-bit id for a version: the same version always gets the same id.

    Stable ids let the eviction policies remember an evicted version (ghost queues, frequency
    sketches) and key the memory tier's blocks.
    """
    digest = hashlib.sha256(f"{origin}\0{key}\0{etag}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(slots=True)
class Metadata:
    """An object's size and ETag as last seen at the origin, and when."""

    info: ObjectInfo
    validated_at: float


@dataclass(eq=False, slots=True)
class Version:
    """In-memory state of one cached version; the persistent index mirrors it lazily.

    ``present`` has one byte per block: ``ABSENT``, ``PRESENT`` or ``UNCHECKED``. A block turns
    ``PRESENT`` only after its bytes are written to the version's file, so another thread may read a
    ``PRESENT`` block through a file descriptor without asking the event loop (see ``CachedFile``).
    Blocks taken from the index after a restart are ``UNCHECKED`` until a read has compared them with
    their CRC-32 (``sums``, kept from when the block was fetched): a crash or power cut that lost bytes
    the index still lists is caught there, and the block is fetched again. ``alive`` turns False, and
    every byte ``ABSENT``, before the file is unlinked.
    """

    vid: int
    origin: str
    key: str
    etag: str
    size: int
    mtime: float
    block_size: int
    present: bytearray = field(default_factory=bytearray)
    present_count: int = 0
    #: Present blocks not checked against their CRC-32 since the index was loaded.
    unchecked: int = 0
    #: CRC-32 of each present block, 4 bytes little-endian per block (empty until the first block).
    sums: bytearray = field(default_factory=bytearray)
    #: Bytes of the present blocks (the object's bytes, as reported to users).
    present_bytes: int = 0
    #: What the present blocks take on disk (each rounded up to ``ALLOCATION_UNIT``): the figure the
    #: tier's bound, the policies and the pin budget count.
    disk_bytes: int = 0
    last_access: float = 0.0
    alive: bool = True
    #: Reads since the version was cached (``tessera stats`` ranks objects by it).
    hits: int = 0
    #: Reads and fills under way; a busy version is never evicted.
    busy: int = 0
    #: Which disk tier holds the file (0: the first).
    tier: int = 0
    #: Kept out of eviction (``cache.pin_size`` budget).
    pinned: bool = False
    #: Being copied to another tier (or checked): no block is written to it meanwhile.
    moving: bool = False
    #: Incarnation of the version's file. Every time a version is created afresh it gets a new one,
    #: so a file that an index row (even a stale one of a dropped incarnation) points to is never
    #: reused or truncated: the index can lag, but it can never vouch for bytes the disk lacks.
    gen: int = 0

    def __post_init__(self) -> None:
        if not self.present:
            self.present = bytearray(self.nblocks)

    @property
    def file(self) -> str:
        """The version's file name under the tier's data directory."""
        name = f"{self.vid:016x}"
        return f"{name[:2]}/{name}-{self.gen:x}"

    @property
    def nblocks(self) -> int:
        return block_count(self.size, self.block_size)

    @property
    def complete(self) -> bool:
        """Every block on disk and checked: the file may be handed to other programs as it is."""
        return self.present_count == self.nblocks and not self.unchecked

    @property
    def all_present(self) -> bool:
        """Every block on disk (some perhaps still to be checked by a read through the engine)."""
        return self.present_count == self.nblocks

    def bounds(self, index: int) -> tuple[int, int]:
        return block_bounds(index, self.block_size, self.size)

    def block_length(self, index: int) -> int:
        start, end = self.bounds(index)
        return end - start

    def mark_present(self, index: int, crc: int) -> int:
        """Record block ``index`` (CRC-32 ``crc``) as on disk; returns the disk bytes newly accounted."""
        if self.present[index]:
            return 0
        if not self.sums:
            self.sums = bytearray(4 * self.nblocks)
        self.sums[4 * index : 4 * index + 4] = crc.to_bytes(4, "little")
        self.present[index] = PRESENT
        self.present_count += 1
        length = self.block_length(index)
        self.present_bytes += length
        self.disk_bytes += allocated_size(length)
        return allocated_size(length)

    def mark_absent(self, index: int) -> int:
        """Forget block ``index`` (it failed its check); returns the disk bytes no longer accounted."""
        state = self.present[index]
        if not state:
            return 0
        self.present[index] = ABSENT
        self.present_count -= 1
        self.unchecked -= state == UNCHECKED
        length = self.block_length(index)
        self.present_bytes -= length
        self.disk_bytes -= allocated_size(length)
        return allocated_size(length)

    def check(self, index: int, crc: int) -> bool:
        """Compare the CRC-32 of a block read from disk with the one it was stored with; a match makes
        an ``UNCHECKED`` block ``PRESENT``."""
        if crc != int.from_bytes(self.sums[4 * index : 4 * index + 4], "little"):
            return False
        if self.present[index] == UNCHECKED:
            self.present[index] = PRESENT
            self.unchecked -= 1
        return True

    def clear(self) -> None:
        """Forget every block (the version is being dropped)."""
        self.present[:] = bytes(len(self.present))
        self.present_count = self.present_bytes = self.disk_bytes = self.unchecked = 0

    def recount(self) -> None:
        """Take ``present`` from the index: every listed block is ``UNCHECKED`` until a read checks it."""
        lengths = []
        for index, state in enumerate(self.present):
            if state:
                self.present[index] = UNCHECKED
                lengths.append(self.block_length(index))
        self.present_count = self.unchecked = len(lengths)
        self.present_bytes = sum(lengths)
        self.disk_bytes = sum(allocated_size(length) for length in lengths)
