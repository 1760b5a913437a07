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

import itertools
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
#: How many of the oldest probation entries W-TinyLFU compares when it picks a victim.
_PROBATION_SAMPLE = 4
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


class FrequencySketch:
    """Approximate recent request counts (0 to 15) per key, halved every ``sample`` records (aging).

    A plain dict rather than a count-min sketch: it holds only keys seen since the last halving, at
    most ``sample`` of them, and halving drops the ones that fall to zero.
    """

    def __init__(self, sample: int, cap: int = 15) -> None:
        self.sample = max(1000, sample)
        self.cap = cap
        self._counts: dict[Key, int] = {}
        self._records = 0

    def record(self, key: Key) -> None:
        count = self._counts.get(key, 0)
        if count < self.cap:
            self._counts[key] = count + 1
        self._records += 1
        if self._records >= self.sample:
            self._counts = {k: c >> 1 for k, c in self._counts.items() if c > 1}
            self._records //= 2

    def __getitem__(self, key: Key) -> int:
        return self._counts.get(key, 0)


class WTinyLfuPolicy:
    """W-TinyLFU by bytes (Einziger, Friedman, Manes, "TinyLFU", ACM ToS 2017).

    New entries go to a small LRU window (1 % of the capacity). An entry leaving the window enters the
    main region; when main is full it competes with main's next victim, and the one requested less
    often recently is marked to go first. Main is a segmented LRU (probation, then protected once hit
    again, 80 % of main). Frequency is what protects the hot set, so a scan of objects seen once
    never displaces it, and on steady long-tailed traffic it keeps close to the most popular objects.
    """

    def __init__(self, capacity: int, window_ratio: float = 0.01, protected_ratio: float = 0.8) -> None:
        self.window_target = max(1, int(capacity * window_ratio))
        self.main_target = max(1, capacity - self.window_target)
        self.protected_target = max(1, int(self.main_target * protected_ratio))
        self._window: OrderedDict[Key, int] = OrderedDict()
        self._probation: OrderedDict[Key, int] = OrderedDict()
        self._protected: OrderedDict[Key, int] = OrderedDict()
        self._window_bytes = 0
        self._main_bytes = 0
        self._protected_bytes = 0
        #: Losers of admission contests, offered as victims first.
        self._doomed: deque[Key] = deque()
        self._sketch = FrequencySketch(100000, cap=255)

    def _segment(self, key: Key) -> OrderedDict[Key, int] | None:
        for segment in (self._window, self._probation, self._protected):
            if key in segment:
                return segment
        return None

    def admit(self, key: Key) -> bool:
        return True

    def insert(self, key: Key, size: int) -> None:
        if self._segment(key) is not None:
            self.resize(key, size)
            return
        self._sketch.record(key)
        self._sketch.sample = max(self._sketch.sample, 10 * len(self))
        self._window[key] = size
        self._window_bytes += size
        self._drain_window()

    def _drain_window(self) -> None:
        """Move the window's oldest entries to main; once main is full, each one contests a victim."""
        # The newest entry stays in the window even when it alone is larger (it is being filled).
        while self._window_bytes > self.window_target and len(self._window) > 1:
            candidate, cand_size = self._window.popitem(last=False)
            self._window_bytes -= cand_size
            victim = next(iter(self._probation), None)
            self._probation[candidate] = cand_size
            self._main_bytes += cand_size
            if self._main_bytes > self.main_target and victim is not None:
                loser = candidate if self._sketch[candidate] <= self._sketch[victim] else victim
                self._doomed.append(loser)

    def resize(self, key: Key, size: int) -> None:
        segment = self._segment(key)
        if segment is None:
            return
        delta = size - segment[key]
        segment[key] = size
        if segment is self._window:
            self._window_bytes += delta
            self._drain_window()  # entries grow as their blocks land
        else:
            self._main_bytes += delta
            if segment is self._protected:
                self._protected_bytes += delta

    def touch(self, key: Key) -> None:
        self._sketch.record(key)
        segment = self._segment(key)
        if segment is self._window or segment is self._protected:
            segment.move_to_end(key)
        elif segment is self._probation:
            size = self._probation.pop(key)
            self._protected[key] = size
            self._protected_bytes += size
            while self._protected_bytes > self.protected_target and len(self._protected) > 1:
                demoted, demoted_size = self._protected.popitem(last=False)
                self._protected_bytes -= demoted_size
                self._probation[demoted] = demoted_size

    def remove(self, key: Key, evicted: bool = False) -> None:
        segment = self._segment(key)
        if segment is None:
            return
        size = segment.pop(key)
        if segment is self._window:
            self._window_bytes -= size
        else:
            self._main_bytes -= size
            if segment is self._protected:
                self._protected_bytes -= size

    def _next_victim(self) -> Key | None:
        while self._doomed:
            key = self._doomed.popleft()
            if key in self._probation:  # still there and not hit since (a hit moves it to protected)
                return key
        if self._probation:
            # Of the oldest few on probation, the least requested recently goes first (ties: the oldest),
            # so an entry that won its admission contest is not evicted just for being older.
            oldest = itertools.islice(self._probation, _PROBATION_SAMPLE)
            return min(oldest, key=self._sketch.__getitem__)
        for segment in (self._window, self._protected):  # the proven hot set last
            if segment:
                return next(iter(segment))
        return None

    def victims(self) -> Iterator[Key]:
        skipped = 0
        while len(self) and skipped <= len(self):
            victim = self._next_victim()
            if victim is None:
                return
            yield victim
            segment = self._segment(victim)
            if segment is not None:  # skipped by the caller (in use): treat it as used now
                segment.move_to_end(victim)
                skipped += 1
            else:
                skipped = 0

    def __contains__(self, key: Key) -> bool:
        return self._segment(key) is not None

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)


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
    """Build a tier's policy from its config: ``"s3fifo"``, ``"wtinylfu"`` or ``"lru"``, plus admission."""
    policies = {"s3fifo": S3FifoPolicy, "wtinylfu": WTinyLfuPolicy, "lru": LruPolicy}
    if name not in policies:
        raise ValueError(f"unknown cache policy {name!r} (choose s3fifo, wtinylfu or lru)")
    policy: EvictionPolicy = policies[name](capacity)
    return AdmitAfter(policy, admit_after) if admit_after > 1 else policy
