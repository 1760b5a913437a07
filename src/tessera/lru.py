"""A mapping bounded in bytes that forgets the least recently used entry first (for memoised facts).

Keys and values of memos often come from clients (paths, parsed requests), so a bound on the number
of entries is no bound on memory: a path can be 60 kB. Every entry is weighed when it is stored
(``approx_size`` of key and value, plus a fixed per-entry overhead) and the total is kept within
``max_bytes``. Shared by threads (decoded JPEG 2000 tiles are stored by render threads), hence a lock
held only for the dictionary operations.
"""

from __future__ import annotations

import array
import dataclasses
import sys
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: What an entry costs besides its key and value: the ordered dictionary's node and hash slot, the
#: (value, weight) pair. Measured at about 150 bytes on CPython 3.11; rounded up.
ENTRY_OVERHEAD = 200
#: Metadata of a dataclass field that refers to an object weighed where it is owned (not counted again).
SHARED = {"lru_shared": True}
#: What a reference to an object that is not plain data costs (the object itself is owned elsewhere).
_REFERENCE = 8


def approx_size(value: object) -> int:
    """Bytes held by ``value``: strings, bytes, numbers, tuples, lists, sets, dicts, dataclasses and
    arrays are followed (each object once); any other object is a reference to something owned
    elsewhere (an origin, a lock) and counts as one pointer. Dataclass fields marked ``SHARED`` too."""
    seen: set[int] = set()

    def size(obj: object) -> int:
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        if obj is None or isinstance(obj, str | bytes | bytearray | int | float | array.array):
            return sys.getsizeof(obj)
        nbytes = getattr(obj, "nbytes", None)  # numpy arrays: a view's size leaves out its data
        if isinstance(nbytes, int):
            return max(sys.getsizeof(obj), nbytes)
        if isinstance(obj, tuple | list | set | frozenset):
            return sys.getsizeof(obj) + sum(size(item) for item in obj)
        if isinstance(obj, dict):
            return sys.getsizeof(obj) + sum(size(k) + size(v) for k, v in obj.items())
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return sys.getsizeof(obj) + sum(
                _REFERENCE if field.metadata.get("lru_shared") else size(getattr(obj, field.name))
                for field in dataclasses.fields(obj)
            )
        return _REFERENCE

    return size(value)


class LRU(Generic[K, V]):
    """Least recently used entries dropped first once the entries weigh more than ``max_bytes``.

    An entry heavier than the whole budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V) -> None:
        weight = approx_size(key) + approx_size(value) + ENTRY_OVERHEAD
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]
            if weight > self.max_bytes:
                return
            self._items[key] = (value, weight)
            self.used += weight
            while self.used > self.max_bytes:
                _key, (_value, dropped) = self._items.popitem(last=False)
                self.used -= dropped

    def discard(self, key: K) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]

    def __len__(self) -> int:
        return len(self._items)
