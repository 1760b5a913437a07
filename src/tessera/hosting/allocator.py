"""Hands out link numbers (and their links) in blocks leased from the link map.

Each allocator holds one block at a time, leased atomically from the database, and tracks the offsets
it handed out in a ``pyroaring.BitMap``; the database is touched once per block, not once per link. A
clean ``close()`` releases the block with its bitmap, and the next lease of any holder (of any process
or node) prefers released blocks and hands out only their free numbers. A holder that crashes never
releases its block: those numbers are simply never used (a block of 1,000 out of 62**8 = 2.2e14 is
nothing), which keeps the rule simple: a number leaves the database at most once, so no two holders
can ever hand out the same one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from pyroaring import BitMap

from tessera.hosting.linkmap import Block, LinkMap
from tessera.hosting.permutation import LinkPermutation


class LinkAllocator:
    """``allocate()`` gives ``(number, link)`` pairs never given before, by anyone; thread-safe.
    ``holder`` names this allocator in ``link_blocks`` (make it unique per process: host, pid, …)."""

    def __init__(self, linkmap: LinkMap, permutation: LinkPermutation, holder: str, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block size {block_size} is below 1")
        self.linkmap = linkmap
        self.permutation = permutation
        self.holder = holder
        self.block_size = block_size
        self._lock = threading.Lock()
        self._block: Block | None = None
        self._used = BitMap()
        self._free: Iterator[int] = iter(())

    def allocate(self) -> tuple[int, str]:
        with self._lock:
            offset = next(self._free, None)
            while offset is None:
                self._next_block()
                offset = next(self._free, None)
            self._used.add(offset)
            assert self._block is not None
            number = self._block.start + offset
        return number, self.permutation.link(number)

    def _next_block(self) -> None:
        """Lease another block, forgetting the exhausted one (if any) in the same transaction."""
        finished = None if self._block is None else self._block.start
        self._block = None
        block = self.linkmap.lease_block(self.holder, self.block_size, self.permutation.capacity, finished)
        used = BitMap() if block.used is None else BitMap.deserialize(block.used)
        # Offsets are relative to the block start, so the 32-bit bitmap fits any block size.
        free = BitMap(range(block.size)) - used
        self._block, self._used, self._free = block, used, iter(free)

    def close(self) -> None:
        """Release the held block with its used offsets (or forget it when every offset is used)."""
        with self._lock:
            block, self._block = self._block, None
            self._free = iter(())
            if block is None:
                return
            if len(self._used) >= block.size:
                self.linkmap.finish_block(block.start, self.holder)
            else:
                self.linkmap.release_block(block.start, self.holder, self._used.serialize())
