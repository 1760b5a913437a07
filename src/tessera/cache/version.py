"""One cached object version: ``(origin, key, etag)`` split into fixed-size blocks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tessera.cache.blocks import block_bounds, block_count
from tessera.origins import ObjectInfo


def version_id(origin: str, key: str, etag: str) -> int:
    """A stable 63-bit id for a version: the same version always gets the same id (and file).

    Stable ids let the eviction policy remember an evicted version (S3-FIFO's ghost queue) and let a
    restart find a version's file without a lookup table.
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

    ``present`` has one byte per block. A block's byte turns 1 only after its bytes are written to the
    version's file, so another thread may read a present block through a file descriptor without
    asking the event loop (see ``CachedFile``). ``alive`` turns False, and every byte 0, before the
    file is unlinked.
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
    present_bytes: int = 0
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
    #: Being copied to another tier: no block is written to it meanwhile.
    moving: bool = False

    def __post_init__(self) -> None:
        if not self.present:
            self.present = bytearray(self.nblocks)

    @property
    def file(self) -> str:
        """The version's file name under the tier's data directory."""
        name = f"{self.vid:016x}"
        return f"{name[:2]}/{name[2:4]}/{name}"

    @property
    def nblocks(self) -> int:
        return block_count(self.size, self.block_size)

    @property
    def complete(self) -> bool:
        return self.present_count == self.nblocks

    def bounds(self, index: int) -> tuple[int, int]:
        return block_bounds(index, self.block_size, self.size)

    def block_length(self, index: int) -> int:
        start, end = self.bounds(index)
        return end - start

    def mark_present(self, index: int) -> int:
        """Record block ``index`` as on disk; returns the bytes newly accounted."""
        if self.present[index]:
            return 0
        self.present[index] = 1
        self.present_count += 1
        length = self.block_length(index)
        self.present_bytes += length
        return length

    def recount(self) -> None:
        self.present_count = sum(self.present)
        self.present_bytes = sum(self.block_length(i) for i, bit in enumerate(self.present) if bit)
