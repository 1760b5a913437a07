"""The memory tier: recently used blocks as bytes, least recently used out first, within a byte limit."""

from __future__ import annotations

from collections import OrderedDict


class MemoryTier:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.evictions = 0
        self._blocks: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def get(self, vid: int, index: int) -> bytes | None:
        data = self._blocks.get((vid, index))
        if data is not None:
            self._blocks.move_to_end((vid, index))
        return data

    def __contains__(self, key: tuple[int, int]) -> bool:
        """Presence check that does not count as a use."""
        return key in self._blocks

    def put(self, vid: int, index: int, data: bytes) -> None:
        if len(data) > self.limit:
            return
        key = (vid, index)
        old = self._blocks.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._blocks[key] = data
        self.used += len(data)
        while self.used > self.limit:
            _, dropped = self._blocks.popitem(last=False)
            self.used -= len(dropped)
            self.evictions += 1

    def discard_version(self, vid: int, nblocks: int) -> None:
        for index in range(nblocks):
            data = self._blocks.pop((vid, index), None)
            if data is not None:
                self.used -= len(data)
