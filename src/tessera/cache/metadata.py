"""Object metadata (size, ETag, when last validated) for the objects asked about recently, in a byte budget.

Every stat, open and listed object adds an entry, so over a bucket of millions of keys the map must
forget: past ``cache.metadata_size`` the least recently used entries go. Forgetting costs little: the
next open of a cached object finds its metadata in the index (``IndexSync.metadata``), and only an
object unknown there, or validated longer ago than ``cache.metadata_ttl``, costs a HEAD.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator

from tessera.cache.version import Metadata

#: What an entry costs besides its strings: the ordered dictionary's node, the key tuple, the
#: ``Metadata`` and ``ObjectInfo`` objects and their numbers (measured with tracemalloc on CPython 3.11:
#: about 450 bytes), rounded up.
ENTRY_OVERHEAD = 480

MetaKey = tuple[str, str]


def weight(key: MetaKey, meta: Metadata) -> int:
    """Bytes an entry holds (the key string counted twice: the origin's listing or HEAD gives its own)."""
    return ENTRY_OVERHEAD + 2 * sys.getsizeof(key[1]) + sys.getsizeof(meta.info.etag)


class MetadataCache:
    """``(origin, key) -> Metadata``, least recently used dropped first past ``max_bytes``."""

    def __init__(self, max_bytes: int, on_change: Callable[[MetadataCache], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._entries: OrderedDict[MetaKey, tuple[Metadata, int]] = OrderedDict()
        self._on_change = on_change

    def get(self, key: MetaKey) -> Metadata | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def peek(self, key: MetaKey) -> Metadata | None:
        """The entry without counting a use."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    def put(self, key: MetaKey, meta: Metadata) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= old[1]
        size = weight(key, meta)
        self._entries[key] = (meta, size)
        self.used += size
        while self.used > self.max_bytes and self._entries:
            _key, (_meta, dropped) = self._entries.popitem(last=False)
            self.used -= dropped
        if self._on_change is not None:
            self._on_change(self)

    def pop(self, key: MetaKey) -> Metadata | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.used -= entry[1]
        if self._on_change is not None:
            self._on_change(self)
        return entry[0]

    def snapshot(self) -> Iterator[MetaKey]:
        """A snapshot of the keys (entries may be popped while iterating it)."""
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
