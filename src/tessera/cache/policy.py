"""Which cached object versions leave the disk tier first.

The engine talks to a policy only through this small interface, so the admission/eviction policy can
be swapped without touching the fill path. ``LruPolicy`` is the baseline: least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol


class EvictionPolicy(Protocol):
    def insert(self, vid: int) -> None: ...

    def touch(self, vid: int) -> None: ...

    def remove(self, vid: int) -> None: ...

    def victims(self) -> Iterator[int]:
        """Candidates in eviction order; the engine skips the ones it cannot evict right now."""
        ...


class LruPolicy:
    """Least recently used first; every operation is O(1)."""

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def insert(self, vid: int) -> None:
        self._order[vid] = None

    def touch(self, vid: int) -> None:
        if vid in self._order:
            self._order.move_to_end(vid)

    def remove(self, vid: int) -> None:
        self._order.pop(vid, None)

    def victims(self) -> Iterator[int]:
        yield from list(self._order)

    def __len__(self) -> int:
        return len(self._order)
