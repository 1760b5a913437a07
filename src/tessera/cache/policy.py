"""Which entries a tier keeps: admission and eviction policies, free of I/O, on compact state.

Entries are slots (small non-negative integers: the resident index's slot of a version), so a policy's
state is a few typed arrays indexed by slot and linked lists threaded through them (17 bytes per
entry; W-TinyLFU's frequency sketch adds 8; about 29 bytes per entry in all at a million entries,
``bench/policy_state.py``), rather than a dictionary node per key. ``fingerprint(slot)`` gives a
stable 63-bit id of the entry in a slot (the version id), which is what the frequency sketch and the
ghost filter remember once the slot is gone. ``Keyed`` wraps a policy for any hashable keys (the memory tier's
``(version, block)`` pairs and ``bench/hit_ratio.py``'s traces).

The engine talks to a policy only through ``EvictionPolicy``:

* ``admit(slot)``: on a miss, may the entry be stored in this tier? (``AdmitAfter`` keeps one-hit
  wonders off the disk.)
* ``insert(slot, size)``, ``resize(slot, size)`` (a partly cached object grows as blocks land),
  ``touch(slot)`` on every hit, ``remove(slot, evicted=...)``.
* ``victims()``: a lazy stream of eviction candidates. The caller evicts a candidate by calling
  ``remove(slot, evicted=True)``; a candidate it cannot evict now (being read) is simply skipped, and
  the policy treats it as recently used. Every step is O(1) amortised.

``WTinyLfuPolicy`` is the disk default, ``S3FifoPolicy`` the memory default; ``LruPolicy`` is there to
compare against (``bench/hit_ratio.py``).
"""

from __future__ import annotations

import array
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np

Fingerprint = Callable[[int], int]
K = TypeVar("K", bound=Hashable)

_MASK64 = (1 << 64) - 1
#: Odd 64-bit multipliers that spread a fingerprint over the rows of a sketch or the bits of a filter
#: (the top bits of the 64-bit product: Fibonacci hashing, good for sequential version ids too).
_MIXERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)


class EvictionPolicy(Protocol):
    def admit(self, slot: int) -> bool: ...

    def insert(self, slot: int, size: int) -> None: ...

    def resize(self, slot: int, size: int) -> None: ...

    def touch(self, slot: int) -> None: ...

    def remove(self, slot: int, evicted: bool = False) -> None: ...

    def victims(self) -> Iterator[int]: ...

    def load(self, slots: np.ndarray, sizes: np.ndarray) -> None: ...

    def __contains__(self, slot: int) -> bool: ...

    def __len__(self) -> int: ...


class _Lists:
    """Doubly linked lists threaded through slots (each slot on at most one), plus each slot's size."""

    def __init__(self, count: int) -> None:
        self.prev = array.array("i")
        self.next = array.array("i")
        #: The list a slot is on, -1 for none.
        self.on = array.array("b")
        self.size = array.array("q")
        self.head = [-1] * count
        self.tail = [-1] * count
        self.length = [0] * count

    def has(self, slot: int) -> bool:
        return slot < len(self.on) and self.on[slot] >= 0

    def push(self, which: int, slot: int, size: int | None = None) -> None:
        """Append ``slot`` to the tail of list ``which`` (it must be on none)."""
        if slot >= len(self.on):
            grow = slot + 1 - len(self.on)
            self.prev.extend([-1] * grow)
            self.next.extend([-1] * grow)
            self.on.extend([-1] * grow)
            self.size.extend([0] * grow)
        if size is not None:
            self.size[slot] = size
        tail = self.tail[which]
        self.prev[slot], self.next[slot], self.on[slot] = tail, -1, which
        if tail < 0:
            self.head[which] = slot
        else:
            self.next[tail] = slot
        self.tail[which] = slot
        self.length[which] += 1

    def append_run(self, which: int, slots: np.ndarray, sizes: np.ndarray) -> None:
        """Append many slots (on no list yet, no repeats) to list ``which`` in order, at array speed."""
        if not len(slots):
            return
        top = int(slots.max()) + 1
        if top > len(self.on):
            grow = top - len(self.on)
            self.prev.extend([-1] * grow)
            self.next.extend([-1] * grow)
            self.on.extend([-1] * grow)
            self.size.extend([0] * grow)
        prev, nxt = np.frombuffer(self.prev, np.int32), np.frombuffer(self.next, np.int32)
        on, size = np.frombuffer(self.on, np.int8), np.frombuffer(self.size, np.int64)
        tail = self.tail[which]
        prev[slots] = np.concatenate(([tail], slots[:-1]))
        nxt[slots] = np.concatenate((slots[1:], [-1]))
        on[slots] = which
        size[slots] = sizes
        del prev, nxt, on, size  # let go of the arrays' buffers (they must stay resizable)
        if tail < 0:
            self.head[which] = int(slots[0])
        else:
            self.next[tail] = int(slots[0])
        self.tail[which] = int(slots[-1])
        self.length[which] += len(slots)

    def unlink(self, slot: int) -> int:
        """Take ``slot`` off its list; returns the list it was on."""
        which = self.on[slot]
        before, after = self.prev[slot], self.next[slot]
        if before < 0:
            self.head[which] = after
        else:
            self.next[before] = after
        if after < 0:
            self.tail[which] = before
        else:
            self.prev[after] = before
        self.on[slot] = -1
        self.length[which] -= 1
        return which

    def move(self, which: int, slot: int) -> None:
        """Move ``slot`` to the tail of list ``which``."""
        self.unlink(slot)
        self.push(which, slot)

    def total(self) -> int:
        return sum(self.length)


class LruPolicy:
    """Least recently used first."""

    def __init__(self, capacity: int = 0, fingerprint: Fingerprint | None = None) -> None:
        self._lists = _Lists(1)

    def admit(self, slot: int) -> bool:
        return True

    def insert(self, slot: int, size: int) -> None:
        if self._lists.has(slot):
            self._lists.size[slot] = size
            self._lists.move(0, slot)
        else:
            self._lists.push(0, slot, size)

    def resize(self, slot: int, size: int) -> None:
        if self._lists.has(slot):
            self._lists.size[slot] = size

    def touch(self, slot: int) -> None:
        if self._lists.has(slot):
            self._lists.move(0, slot)

    def remove(self, slot: int, evicted: bool = False) -> None:
        if self._lists.has(slot):
            self._lists.unlink(slot)

    def victims(self) -> Iterator[int]:
        lists = self._lists
        skipped = 0
        while lists.length[0] and skipped < lists.length[0]:
            slot = lists.head[0]
            yield slot  # closing the stream here leaves the candidate where it is
            if lists.has(slot) and lists.head[0] == slot:  # not evicted: in use, so used now
                lists.move(0, slot)
                skipped += 1
            else:
                skipped = 0

    def load(self, slots: np.ndarray, sizes: np.ndarray) -> None:
        """Take many entries at once, least recently used first (the start-up load)."""
        self._lists.append_run(0, slots, sizes)

    def __contains__(self, slot: int) -> bool:
        return self._lists.has(slot)

    def __len__(self) -> int:
        return self._lists.length[0]


class FrequencySketch:
    """Approximate recent request counts (0 to 15) per fingerprint: a count-min sketch of four rows
    of 4-bit counters with conservative update (only the counters at the minimum of the four go up).

    Each row has 4 counters per entry it must tell apart (``fit``; rounded up to a power of two), so
    16 counters, 8 bytes, per entry, as in Caffeine. All counts are halved every ``10 x`` row width
    records (aging), so it forgets. An estimate never falls below the true count since the last
    halving (up to 15); conservative update keeps the excess from colliding keys small.
    """

    ROWS = 4
    #: Counters per row for each entry to tell apart.
    SPREAD = 4
    #: Halving a byte halves both of its 4-bit counters.
    _HALVE = bytes((b >> 1) & 0x77 for b in range(256))

    def __init__(self, entries: int = 256) -> None:
        self._records = 0
        self._reset(entries)

    def _reset(self, entries: int) -> None:
        self.entries = 1 << max(8, (entries - 1).bit_length())
        self.width = self.SPREAD * self.entries
        self.sample = 10 * self.width
        self._shift = 64 - self.width.bit_length() + 1
        self._counts = bytearray(self.ROWS * self.width // 2)

    def fit(self, entries: int) -> None:
        """Make room for about ``entries`` distinct fingerprints (counts start over when it grows)."""
        if entries > self.entries:
            self._reset(entries)

    def _cells(self, fingerprint: int) -> tuple[int, int, int, int]:
        """The four counters of ``fingerprint`` as nibble indexes into ``_counts`` (one per row)."""
        shift, width = self._shift, self.width
        m0, m1, m2, m3 = _MIXERS
        return (
            ((fingerprint * m0) & _MASK64) >> shift,
            width + (((fingerprint * m1) & _MASK64) >> shift),
            2 * width + (((fingerprint * m2) & _MASK64) >> shift),
            3 * width + (((fingerprint * m3) & _MASK64) >> shift),
        )

    def record(self, fingerprint: int) -> None:
        counts = self._counts
        a, b, c, d = self._cells(fingerprint)
        va = counts[a >> 1] >> ((a & 1) << 2) & 15
        vb = counts[b >> 1] >> ((b & 1) << 2) & 15
        vc = counts[c >> 1] >> ((c & 1) << 2) & 15
        vd = counts[d >> 1] >> ((d & 1) << 2) & 15
        low = min(va, vb, vc, vd)
        if low < 15:
            if va == low:
                counts[a >> 1] += 1 << ((a & 1) << 2)
            if vb == low:
                counts[b >> 1] += 1 << ((b & 1) << 2)
            if vc == low:
                counts[c >> 1] += 1 << ((c & 1) << 2)
            if vd == low:
                counts[d >> 1] += 1 << ((d & 1) << 2)
        self._records += 1
        if self._records >= self.sample:
            self._counts = counts.translate(self._HALVE)
            self._records //= 2

    def __getitem__(self, fingerprint: int) -> int:
        counts = self._counts
        a, b, c, d = self._cells(fingerprint)
        return min(
            counts[a >> 1] >> ((a & 1) << 2) & 15,
            counts[b >> 1] >> ((b & 1) << 2) & 15,
            counts[c >> 1] >> ((c & 1) << 2) & 15,
            counts[d >> 1] >> ((d & 1) << 2) & 15,
        )


class GhostFilter:
    """Fingerprints of recently evicted entries, approximately: two generations of Bloom filters.

    A generation takes ``capacity / 2`` fingerprints, then a new one starts and the oldest is
    dropped, so the last ``capacity / 2`` to ``capacity`` fingerprints added are remembered (no false
    negatives among them), about as many as the old exact ghost queue of ``capacity``; remembering
    more sends too much to S3-FIFO's main queue. 16 bits and 4 hashes per fingerprint keep false
    positives (a new entry taken for a ghost) near 0.5 %; about 2 bytes per remembered entry.
    """

    #: Bits per fingerprint of a generation (each fingerprint sets one bit per mixer).
    BITS = 16

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = max(2, capacity)
        #: The generations, newest first: (bits, shift that maps a hash to a bit index).
        self._generations: list[tuple[bytearray, int]] = []
        self._added = 0
        self._limit = 0
        self._start_generation()

    def _start_generation(self) -> None:
        """Drop the oldest generation and start an empty one sized for the current capacity."""
        self._limit = self.capacity // 2
        size = 1 << max(10, (self.BITS * self._limit - 1).bit_length())
        self._generations = [(bytearray(size // 8), 65 - size.bit_length()), *self._generations[:1]]
        self._added = 0

    def fit(self, capacity: int) -> None:
        """Remember about ``capacity`` fingerprints from the next generation on."""
        self.capacity = max(2, capacity)

    def add(self, fingerprint: int) -> None:
        if self._added >= self._limit:
            self._start_generation()
        bits, shift = self._generations[0]
        for mixer in _MIXERS:
            bit = ((fingerprint * mixer) & _MASK64) >> shift
            bits[bit >> 3] |= 1 << (bit & 7)
        self._added += 1

    def __contains__(self, fingerprint: int) -> bool:
        for bits, shift in self._generations:
            for mixer in _MIXERS:
                bit = ((fingerprint * mixer) & _MASK64) >> shift
                if not bits[bit >> 3] >> (bit & 7) & 1:
                    break
            else:
                return True
        return False


_SMALL, _MAIN = 0, 1
_MAX_FREQ = 3


class S3FifoPolicy:
    """S3-FIFO by bytes: a small FIFO (``small_ratio`` of the capacity), a main FIFO, a ghost filter.

    A new entry enters the small queue; one hit again while there moves to main, one that is not
    leaves at once (and is remembered as a ghost, so a quick return goes straight to main). Main is a
    FIFO with a little frequency (0 to 3) that buys reinsertion instead of eviction. A scan of the
    long tail passes through the small queue without touching the hot set in main. (Yang et al.,
    "FIFO queues are all you need for cache eviction", SOSP 2023.)
    """

    def __init__(self, capacity: int, fingerprint: Fingerprint, small_ratio: float = 0.1) -> None:
        self.capacity = capacity
        self.small_target = max(1, int(capacity * small_ratio))
        self._fingerprint = fingerprint
        self._lists = _Lists(2)
        self._freq = bytearray()
        self._small_bytes = 0
        self._ghost = GhostFilter()

    def admit(self, slot: int) -> bool:
        return True

    def insert(self, slot: int, size: int) -> None:
        if self._lists.has(slot):
            self.resize(slot, size)
            return
        if slot >= len(self._freq):
            self._freq.extend(bytes(slot + 1 - len(self._freq)))
        self._freq[slot] = 0
        if self._fingerprint(slot) in self._ghost:
            self._lists.push(_MAIN, slot, size)
        else:
            self._lists.push(_SMALL, slot, size)
            self._small_bytes += size
        self._ghost.fit(len(self))

    def resize(self, slot: int, size: int) -> None:
        lists = self._lists
        if not lists.has(slot):
            return
        if lists.on[slot] == _SMALL:
            self._small_bytes += size - lists.size[slot]
        lists.size[slot] = size

    def touch(self, slot: int) -> None:
        if self._lists.has(slot) and self._freq[slot] < _MAX_FREQ:
            self._freq[slot] += 1

    def remove(self, slot: int, evicted: bool = False) -> None:
        lists = self._lists
        if not lists.has(slot):
            return
        if lists.unlink(slot) == _SMALL:
            self._small_bytes -= lists.size[slot]
            if evicted:
                self._ghost.add(self._fingerprint(slot))

    def victims(self) -> Iterator[int]:
        # Skipped candidates (in use) go round again; an entry may need up to _MAX_FREQ laps in main
        # before it is offered, so the stream ends only after that many rounds of nothing but skips.
        lists, freq = self._lists, self._freq
        skipped = 0
        small_skipped = 0  # consecutive skips in the small queue: past its length, turn to main
        while len(self) and skipped <= (_MAX_FREQ + 1) * len(self):
            from_small = (
                self._small_bytes > self.small_target and small_skipped < lists.length[_SMALL]
            ) or not lists.length[_MAIN]
            if not lists.length[_SMALL if from_small else _MAIN]:
                from_small = not from_small
            queue = _SMALL if from_small else _MAIN
            slot = lists.head[queue]
            if freq[slot]:
                if from_small:  # hit while in the small queue: it earns a place in main
                    freq[slot] = 0
                    self._small_bytes -= lists.size[slot]
                else:  # hit while in main: one more lap
                    freq[slot] -= 1
                lists.move(_MAIN, slot)
                continue
            yield slot  # closing the stream here leaves the candidate at the head
            if lists.has(slot) and lists.head[queue] == slot:  # skipped by the caller: round again
                lists.move(queue, slot)
                skipped += 1
                small_skipped += from_small
            else:
                skipped = small_skipped = 0

    def load(self, slots: np.ndarray, sizes: np.ndarray) -> None:
        """Take many entries at once, oldest first (the start-up load): they earned their place
        before, so they go to the main queue."""
        if len(slots) and int(slots.max()) >= len(self._freq):
            self._freq.extend(bytes(int(slots.max()) + 1 - len(self._freq)))
        self._lists.append_run(_MAIN, slots, sizes)
        self._ghost.fit(len(self))

    def __contains__(self, slot: int) -> bool:
        return self._lists.has(slot)

    def __len__(self) -> int:
        return self._lists.total()


_WINDOW, _PROBATION, _PROTECTED = 0, 1, 2
#: How many of the oldest probation entries W-TinyLFU compares when it picks a victim.
_PROBATION_SAMPLE = 4


class WTinyLfuPolicy:
    """W-TinyLFU by bytes (Einziger, Friedman, Manes, "TinyLFU", ACM ToS 2017).

    New entries go to a small LRU window (1 % of the capacity). An entry leaving the window enters the
    main region; when main is full it competes with main's next victim, and the one requested less
    often recently is marked to go first. Main is a segmented LRU (probation, then protected once hit
    again, 80 % of main). Frequency is what protects the hot set, so a scan of objects seen once
    never displaces it, and on steady long-tailed traffic it keeps close to the most popular objects.
    """

    def __init__(
        self,
        capacity: int,
        fingerprint: Fingerprint,
        window_ratio: float = 0.01,
        protected_ratio: float = 0.8,
    ) -> None:
        self.window_target = max(1, int(capacity * window_ratio))
        self.main_target = max(1, capacity - self.window_target)
        self.protected_target = max(1, int(self.main_target * protected_ratio))
        self._fingerprint = fingerprint
        self._lists = _Lists(3)
        self._window_bytes = 0
        self._main_bytes = 0
        self._protected_bytes = 0
        #: Losers of admission contests (slot, fingerprint), offered as victims first.
        self._doomed: deque[tuple[int, int]] = deque(maxlen=1 << 16)
        self._sketch = FrequencySketch()

    def admit(self, slot: int) -> bool:
        return True

    def insert(self, slot: int, size: int) -> None:
        lists = self._lists
        if lists.has(slot):
            self.resize(slot, size)
            return
        self._sketch.fit(len(self) + 1)
        self._sketch.record(self._fingerprint(slot))
        lists.push(_WINDOW, slot, size)
        self._window_bytes += size
        self._drain_window()

    def _drain_window(self) -> None:
        """Move the window's oldest entries to main; once main is full, each one contests a victim."""
        lists, sketch, fingerprint = self._lists, self._sketch, self._fingerprint
        # The newest entry stays in the window even when it alone is larger (it is being filled).
        while self._window_bytes > self.window_target and lists.length[_WINDOW] > 1:
            candidate = lists.head[_WINDOW]
            size = lists.size[candidate]
            self._window_bytes -= size
            victim = lists.head[_PROBATION]
            lists.move(_PROBATION, candidate)
            self._main_bytes += size
            if self._main_bytes > self.main_target and victim >= 0:
                loser = candidate if sketch[fingerprint(candidate)] <= sketch[fingerprint(victim)] else victim
                self._doomed.append((loser, fingerprint(loser)))

    def resize(self, slot: int, size: int) -> None:
        lists = self._lists
        if not lists.has(slot):
            return
        delta = size - lists.size[slot]
        lists.size[slot] = size
        which = lists.on[slot]
        if which == _WINDOW:
            self._window_bytes += delta
            self._drain_window()  # entries grow as their blocks land
        else:
            self._main_bytes += delta
            if which == _PROTECTED:
                self._protected_bytes += delta

    def touch(self, slot: int) -> None:
        lists = self._lists
        if not lists.has(slot):
            return
        self._sketch.record(self._fingerprint(slot))
        which = lists.on[slot]
        if which != _PROBATION:
            lists.move(which, slot)
            return
        lists.move(_PROTECTED, slot)
        self._protected_bytes += lists.size[slot]
        while self._protected_bytes > self.protected_target and lists.length[_PROTECTED] > 1:
            demoted = lists.head[_PROTECTED]
            self._protected_bytes -= lists.size[demoted]
            lists.move(_PROBATION, demoted)

    def remove(self, slot: int, evicted: bool = False) -> None:
        lists = self._lists
        if not lists.has(slot):
            return
        size = lists.size[slot]
        which = lists.unlink(slot)
        if which == _WINDOW:
            self._window_bytes -= size
        else:
            self._main_bytes -= size
            if which == _PROTECTED:
                self._protected_bytes -= size

    def _next_victim(self) -> int:
        lists, sketch, fingerprint = self._lists, self._sketch, self._fingerprint
        while self._doomed:
            slot, print_ = self._doomed.popleft()
            # still on probation and not hit since (a hit moves it to protected), and not reused
            if lists.has(slot) and lists.on[slot] == _PROBATION and fingerprint(slot) == print_:
                return slot
        if lists.length[_PROBATION]:
            # Of the oldest few on probation, the least requested recently goes first (ties: the oldest),
            # so an entry that won its admission contest is not evicted just for being older.
            best, best_count = -1, 1 << 30
            slot = lists.head[_PROBATION]
            for _ in range(_PROBATION_SAMPLE):
                if slot < 0:
                    break
                count = sketch[fingerprint(slot)]
                if count < best_count:
                    best, best_count = slot, count
                slot = lists.next[slot]
            return best
        for which in (_WINDOW, _PROTECTED):  # the proven hot set last
            if lists.length[which]:
                return lists.head[which]
        return -1

    def victims(self) -> Iterator[int]:
        lists = self._lists
        skipped = 0
        while len(self) and skipped <= len(self):
            victim = self._next_victim()
            if victim < 0:
                return
            yield victim
            if lists.has(victim):  # skipped by the caller (in use): treat it as used now
                lists.move(lists.on[victim], victim)
                skipped += 1
            else:
                skipped = 0

    def load(self, slots: np.ndarray, sizes: np.ndarray) -> None:
        """Take many entries at once, least recently used first (the start-up load): into the main
        region's probation segment, where a hit promotes them as usual."""
        self._lists.append_run(_PROBATION, slots, sizes)
        self._main_bytes += int(sizes.sum())
        self._sketch.fit(len(self))

    def __contains__(self, slot: int) -> bool:
        return self._lists.has(slot)

    def __len__(self) -> int:
        return self._lists.total()


class AdmitAfter:
    """Admission by frequency: an entry is stored only on its ``hits``-th request.

    Requests of entries not stored are counted in a frequency sketch (bounded, aging), so one-hit
    wonders of a scan never reach the tier. Everything else is delegated to ``inner``.
    """

    def __init__(self, inner: EvictionPolicy, hits: int, fingerprint: Fingerprint) -> None:
        self.inner = inner
        self.hits = hits
        self._fingerprint = fingerprint
        self._requests = FrequencySketch(1 << 16)

    def admit(self, slot: int) -> bool:
        if self.hits <= 1 or slot in self.inner:
            return True
        fingerprint = self._fingerprint(slot)
        self._requests.record(fingerprint)
        return self._requests[fingerprint] >= self.hits

    def insert(self, slot: int, size: int) -> None:
        self.inner.insert(slot, size)

    def resize(self, slot: int, size: int) -> None:
        self.inner.resize(slot, size)

    def touch(self, slot: int) -> None:
        self.inner.touch(slot)

    def remove(self, slot: int, evicted: bool = False) -> None:
        self.inner.remove(slot, evicted)

    def victims(self) -> Iterator[int]:
        return self.inner.victims()

    def load(self, slots: np.ndarray, sizes: np.ndarray) -> None:
        self.inner.load(slots, sizes)

    def __contains__(self, slot: int) -> bool:
        return slot in self.inner

    def __len__(self) -> int:
        return len(self.inner)


def make_policy(name: str, capacity: int, fingerprint: Fingerprint, admit_after: int = 1) -> EvictionPolicy:
    """Build a tier's policy from its config: ``"s3fifo"``, ``"wtinylfu"`` or ``"lru"``, plus admission."""
    if name == "s3fifo":
        policy: EvictionPolicy = S3FifoPolicy(capacity, fingerprint)
    elif name == "wtinylfu":
        policy = WTinyLfuPolicy(capacity, fingerprint)
    elif name == "lru":
        policy = LruPolicy(capacity)
    else:
        raise ValueError(f"unknown cache policy {name!r} (choose s3fifo, wtinylfu or lru)")
    return AdmitAfter(policy, admit_after, fingerprint) if admit_after > 1 else policy


class Keyed(Generic[K]):
    """A slot policy for hashable keys: each key gets a slot while it is in the policy."""

    def __init__(self, make: Callable[[Fingerprint], EvictionPolicy]) -> None:
        self._slot: dict[K, int] = {}
        self._keys: list[K | None] = []
        self._free: list[int] = []
        self.policy = make(self._fingerprint)

    def _fingerprint(self, slot: int) -> int:
        return hash(self._keys[slot]) & ((1 << 63) - 1)

    def _slot_for(self, key: K) -> int:
        slot = self._slot.get(key)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._keys[slot] = key
            else:
                slot = len(self._keys)
                self._keys.append(key)
            self._slot[key] = slot
        return slot

    def admit(self, key: K) -> bool:
        slot = self._slot_for(key)
        admitted = self.policy.admit(slot)
        if not admitted and slot not in self.policy:
            self._release(key)
        return admitted

    def insert(self, key: K, size: int) -> None:
        self.policy.insert(self._slot_for(key), size)

    def resize(self, key: K, size: int) -> None:
        slot = self._slot.get(key)
        if slot is not None:
            self.policy.resize(slot, size)

    def touch(self, key: K) -> None:
        slot = self._slot.get(key)
        if slot is not None:
            self.policy.touch(slot)

    def remove(self, key: K, evicted: bool = False) -> None:
        slot = self._slot.get(key)
        if slot is not None:
            self.policy.remove(slot, evicted)
            self._release(key)

    def _release(self, key: K) -> None:
        slot = self._slot.pop(key)
        self._keys[slot] = None
        self._free.append(slot)

    def victims(self) -> Iterator[K]:
        for slot in self.policy.victims():
            key = self._keys[slot]
            assert key is not None
            yield key

    def __contains__(self, key: object) -> bool:
        slot = self._slot.get(cast(K, key))  # any object may be asked about; a stranger is not found
        return slot is not None and slot in self.policy

    def __len__(self) -> int:
        return len(self.policy)


def keyed_policy(name: str, capacity: int, admit_after: int = 1) -> Keyed[Any]:
    """A policy by name (as ``make_policy``) for hashable keys."""
    return Keyed(lambda fingerprint: make_policy(name, capacity, fingerprint, admit_after))
