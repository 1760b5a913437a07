"""The memory tier: recently used blocks as bytes within a byte limit, evicted by a policy."""

from __future__ import annotations

from tessera.cache.policy import Keyed, keyed_policy


class MemoryTier:
    def __init__(self, limit: int, policy: Keyed[tuple[int, int]] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.policy = policy or keyed_policy("lru", limit)
        self._blocks: dict[tuple[int, int], bytes] = {}

    def get(self, vid: int, index: int) -> bytes | None:
        data = self._blocks.get((vid, index))
        if data is not None:
            self.policy.touch((vid, index))
        return data

    def __contains__(self, key: tuple[int, int]) -> bool:
        """Presence check that does not count as a use."""
        return key in self._blocks

    def put(self, vid: int, index: int, data: bytes) -> None:
        key = (vid, index)
        if len(data) > self.limit or key in self._blocks or not self.policy.admit(key):
            return
        self._blocks[key] = data
        self.used += len(data)
        self.policy.insert(key, len(data))
        if self.used > self.limit:
            for victim in self.policy.victims():
                if victim == key:
                    continue
                self._discard(victim, evicted=True)
                if self.used <= self.limit:
                    break

    def _discard(self, key: tuple[int, int], evicted: bool = False) -> None:
        data = self._blocks.pop(key, None)
        if data is not None:
            self.used -= len(data)
        self.policy.remove(key, evicted=evicted)

    def discard_version(self, vid: int, nblocks: int) -> None:
        for index in range(nblocks):
            if (vid, index) in self._blocks:
                self._discard((vid, index))
