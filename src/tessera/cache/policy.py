"""Which entries a tier keeps: admission and eviction policies, free of I/O.

The engine (and ``bench/hit_ratio.py``, which replays traces through these very classes) talks to a
policy only through ``EvictionPolicy``:

* ``admit(key)``: on a miss, may the entry be stored in this tier? (``AdmitAfter`` keeps one-hit
  wonders off the disk.)
* ``insert(key, size)``, ``resize(key, size)`` (a partly cached object grows as blocks land),
  ``touch(key)`` on every hit, ``remove(key, evicted=...)``.
* ``victims()``: a lazy stream of eviction candidates. The caller evicts a candidate by calling
  ``remove(key, evicted=True)``; a candidate it cannot evict now (being read) is simply skipped, and
  the policy treats it as recently used. Every step is O(1) amortised.

``S3FifoPolicy`` is the default: a small FIFO queue takes new entries; an entry hit again while in it
moves to the main queue, one that is not leaves at once (and is remembered in a ghost queue, so a
quick return goes straight to main). Main is a FIFO with a little frequency (0 to 3) that buys reinsertion
instead of eviction. A scan of the long tail therefore passes through the small queue without
touching the hot set in main; LRU, by contrast, lets every scanned object push a hot one out. (Yang
et al., "FIFO queues are all you need for cache eviction", SOSP 2023.)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator
from typing import Protocol

Key = Hashable


class EvictionPolicy(Protocol):
    def admit(self, key: Key) -> bool: ...

    def insert(self, key: Key, size: int) -> None: ...

    def resize(self, key: Key, size: int) -> None: ...

    def touch(self, key: Key) -> None: ...

    def remove(self, key: Key, evicted: bool = False) -> None: ...

    def victims(self) -> Iterator[Key]: ...

    def __contains__(self, key: Key) -> bool: ...

    def __len__(self) -> int: ...


class LruPolicy:
    """Least recently used first."""

    def __init__(self, capacity: int = 0) -> None:
        self._sizes: OrderedDict[Key, int] = OrderedDict()

    def admit(self, key: Key) -> bool:
        return True

    def insert(self, key: Key, size: int) -> None:
        self._sizes[key] = size
        self._sizes.move_to_end(key)

    def resize(self, key: Key, size: int) -> None:
        if key in self._sizes:
            self._sizes[key] = size

    def touch(self, key: Key) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def remove(self, key: Key, evicted: bool = False) -> None:
        self._sizes.pop(key, None)

    def victims(self) -> Iterator[Key]:
        skipped = 0
        while self._sizes and skipped < len(self._sizes):
            key = next(iter(self._sizes))
            yield key  # closing the stream here leaves the candidate where it is
            if key in self._sizes:  # not evicted: in use, so treat it as used now
                self._sizes.move_to_end(key)
                skipped += 1
            else:
                skipped = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)


_SMALL, _MAIN = 0, 1
_MAX_FREQ = 3


class S3FifoPolicy:
    """S3-FIFO by bytes: a small queue (``small_ratio`` of the capacity), a main queue, a ghost queue."""

    def __init__(self, capacity: int, small_ratio: float = 0.1) -> None:
        self.capacity = capacity
        self.small_target = max(1, int(capacity * small_ratio))
        #: Queues hold (key, token); a token that no longer matches its entry's marks a stale slot
        #: (the key was removed, or re-queued), skipped when it reaches the head.
        self._small: deque[tuple[Key, int]] = deque()
        self._main: deque[tuple[Key, int]] = deque()
        #: key -> [size, freq, queue, token]
        self._entries: dict[Key, list[int]] = {}
        self._tokens = 0
        self._small_bytes = 0
        self._ghost: OrderedDict[Key, None] = OrderedDict()

    def admit(self, key: Key) -> bool:
        return True

    def insert(self, key: Key, size: int) -> None:
        if key in self._entries:
            self.resize(key, size)
            return
        entry = [size, 0, _SMALL, 0]
        self._entries[key] = entry
        if key in self._ghost:
            del self._ghost[key]
            self._enqueue(key, entry, _MAIN)
        else:
            self._enqueue(key, entry, _SMALL)
            self._small_bytes += size

    def _enqueue(self, key: Key, entry: list[int], queue: int) -> None:
        self._tokens += 1
        entry[2], entry[3] = queue, self._tokens
        (self._small if queue == _SMALL else self._main).append((key, self._tokens))

    def resize(self, key: Key, size: int) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry[2] == _SMALL:
            self._small_bytes += size - entry[0]
        entry[0] = size

    def touch(self, key: Key) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] < _MAX_FREQ:
            entry[1] += 1

    def remove(self, key: Key, evicted: bool = False) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if entry[2] == _SMALL:
            self._small_bytes -= entry[0]
            if evicted:
                self._remember(key)
        # The key stays in its deque as a stale reference; ``victims`` skips keys no longer present.

    def _remember(self, key: Key) -> None:
        self._ghost[key] = None
        while len(self._ghost) > max(len(self._entries), 1):
            self._ghost.popitem(last=False)

    def victims(self) -> Iterator[Key]:
        # Skipped candidates (in use) go round again; an entry may need up to _MAX_FREQ laps in main
        # before it is offered, so the stream ends only after that many rounds of nothing but skips.
        skipped = 0
        small_skipped = 0  # consecutive skips in the small queue: past its length, turn to main
        while self._entries and skipped <= (_MAX_FREQ + 1) * len(self._entries):
            from_small = (
                self._small_bytes > self.small_target and small_skipped < len(self._small)
            ) or not self._main
            queue = self._small if from_small else self._main
            if not queue:
                queue = self._main if from_small else self._small
                from_small = not from_small
            key, token = queue.popleft()
            entry = self._entries.get(key)
            if entry is None or entry[3] != token:
                continue  # stale slot
            if from_small and entry[1] > 0:  # hit while in the small queue: it earns a place in main
                entry[1] = 0
                self._small_bytes -= entry[0]
                self._enqueue(key, entry, _MAIN)
                continue
            if not from_small and entry[1] > 0:  # hit while in main: one more lap
                entry[1] -= 1
                self._enqueue(key, entry, _MAIN)
                continue
            try:
                yield key
            except GeneratorExit:  # the caller has room now: the candidate keeps its place at the head
                if self._entries.get(key) is entry:
                    self._tokens += 1
                    entry[3] = self._tokens
                    (self._small if entry[2] == _SMALL else self._main).appendleft((key, self._tokens))
                raise
            if self._entries.get(key) is entry:  # skipped by the caller (in use): round again
                self._enqueue(key, entry, entry[2])
                skipped += 1
                small_skipped += from_small
            else:
                skipped = small_skipped = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class AdmitAfter:
    """Admission by frequency: an entry is stored only on its ``hits``-th request.

    Requests of entries not stored are counted in a bounded table (oldest counts forgotten first), so
    one-hit wonders of a scan never reach the tier. Everything else is delegated to ``inner``.
    """

    def __init__(self, inner: EvictionPolicy, hits: int, memory: int = 1_000_000) -> None:
        self.inner = inner
        self.hits = hits
        self.memory = memory
        self._counts: OrderedDict[Key, int] = OrderedDict()

    def admit(self, key: Key) -> bool:
        if self.hits <= 1 or key in self.inner:
            return True
        count = self._counts.pop(key, 0) + 1
        if count >= self.hits:
            return True
        self._counts[key] = count
        if len(self._counts) > self.memory:
            self._counts.popitem(last=False)
        return False

    def insert(self, key: Key, size: int) -> None:
        self._counts.pop(key, None)
        self.inner.insert(key, size)

    def resize(self, key: Key, size: int) -> None:
        self.inner.resize(key, size)

    def touch(self, key: Key) -> None:
        self.inner.touch(key)

    def remove(self, key: Key, evicted: bool = False) -> None:
        self.inner.remove(key, evicted)

    def victims(self) -> Iterator[Key]:
        return self.inner.victims()

    def __contains__(self, key: Key) -> bool:
        return key in self.inner

    def __len__(self) -> int:
        return len(self.inner)


def make_policy(name: str, capacity: int, admit_after: int = 1) -> EvictionPolicy:
    """Build a tier's policy from its config: ``"s3fifo"`` or ``"lru"``, plus admission after N hits."""
    policies = {"s3fifo": S3FifoPolicy, "lru": LruPolicy}
    if name not in policies:
        raise ValueError(f"unknown cache policy {name!r} (choose s3fifo or lru)")
    policy: EvictionPolicy = policies[name](capacity)
    return AdmitAfter(policy, admit_after) if admit_after > 1 else policy
