"""Admission and eviction policies, driven the way the engine drives them."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.cache.policy import (
    AdmitAfter,
    FrequencySketch,
    GhostFilter,
    Keyed,
    LruPolicy,
    S3FifoPolicy,
    WTinyLfuPolicy,
    keyed_policy,
    make_policy,
)

POLICIES = ["lru", "s3fifo", "wtinylfu"]


class Tier:
    """A byte-limited tier driven by a policy exactly as the engine drives one."""

    def __init__(self, policy: Keyed[Any], capacity: int) -> None:
        self.policy, self.capacity, self.used = policy, capacity, 0
        self.sizes: dict[Hashable, int] = {}
        self.busy: set[Hashable] = set()

    def request(self, key: Hashable, size: int = 1) -> bool:
        if key in self.sizes:
            self.policy.touch(key)
            return True
        if self.policy.admit(key):
            self.policy.insert(key, size)
            self.sizes[key] = size
            self.used += size
            self.make_room(keep=key)
        return False

    def resize(self, key: Hashable, size: int) -> None:
        if key in self.sizes:
            self.policy.resize(key, size)
            self.used += size - self.sizes[key]
            self.sizes[key] = size
            self.make_room(keep=key)

    def make_room(self, keep: Hashable) -> None:
        if self.used <= self.capacity:
            return
        for victim in self.policy.victims():
            if victim == keep or victim in self.busy:
                continue
            self.policy.remove(victim, evicted=True)
            self.used -= self.sizes.pop(victim)
            if self.used <= self.capacity:
                break


@pytest.mark.parametrize("name", POLICIES)
def test_victims_respect_capacity_and_skips(name: str) -> None:
    policy = keyed_policy(name, 10)
    tier = Tier(policy, capacity=10)
    tier.busy = {0}
    for key in range(100):
        tier.request(key)
        assert tier.used <= 10
        assert set(tier.sizes) == {k for k in tier.sizes if k in policy}
    assert 0 in tier.sizes  # in use the whole time: never evicted
    assert len(policy) == len(tier.sizes)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(POLICIES),
    ops=st.lists(
        st.tuples(st.sampled_from(["request", "resize", "busy"]), st.integers(0, 40), st.integers(0, 30)),
        max_size=300,
    ),
)
def test_policies_keep_exactly_what_the_tier_holds(name: str, ops: list[tuple[str, int, int]]) -> None:
    """Whatever the requests, growths and pins: the policy holds exactly the tier's entries, and the
    tier stays within its capacity whenever something not in use could be evicted."""
    policy = keyed_policy(name, 100)
    tier = Tier(policy, capacity=100)
    for op, key, size in ops:
        if op == "request":
            tier.request(key, size)
        elif op == "resize":
            tier.resize(key, size)
        else:
            tier.busy ^= {key}
        assert len(policy) == len(tier.sizes)
        assert all(k in policy for k in tier.sizes)
        evictable = sum(s for k, s in tier.sizes.items() if k not in tier.busy)
        if evictable > max(tier.sizes.values(), default=0):
            assert tier.used <= tier.capacity or tier.used - evictable <= tier.capacity


def test_s3fifo_resists_a_scan_that_flushes_lru() -> None:
    hot = [f"hot{i}" for i in range(50)]
    results = {}
    for name in POLICIES:
        tier = Tier(keyed_policy(name, 100), capacity=100)
        for _ in range(5):
            for key in hot:
                tier.request(key)
        for i in range(1000):  # a one-off scan of the tail
            tier.request(f"tail{i}")
        results[name] = sum(tier.request(key) for key in hot)
    assert results["lru"] == 0
    assert results["s3fifo"] == len(hot)
    assert results["wtinylfu"] == len(hot)


@pytest.mark.parametrize("ghost", [True, False])
def test_s3fifo_ghost_brings_a_quick_return_into_main(ghost: bool) -> None:
    tier = Tier(keyed_policy("s3fifo", 100), capacity=100)
    for i in range(101):
        tier.request(i)  # 0 is evicted from the small queue (into the ghost)
    assert 0 not in tier.sizes
    if ghost:
        tier.request(0)  # a quick return: straight into main
    else:
        tier.request("new")  # a first request: into the small queue
    for i in range(200):
        tier.request(f"scan{i}")
    # main is left alone by a scan; the small queue is not
    assert (0 in tier.sizes) is ghost and "new" not in tier.sizes


def test_admit_after_keeps_one_hit_wonders_out() -> None:
    tier = Tier(keyed_policy("s3fifo", 100, admit_after=2), capacity=100)
    for i in range(50):
        tier.request(f"once{i}")
    assert tier.used == 0
    tier.request("twice")
    tier.request("twice")
    assert "twice" in tier.sizes


def test_make_policy() -> None:
    def fingerprint(slot: int) -> int:
        return slot

    assert isinstance(make_policy("lru", 10, fingerprint), LruPolicy)
    assert isinstance(make_policy("wtinylfu", 10, fingerprint), WTinyLfuPolicy)
    assert isinstance(make_policy("s3fifo", 10, fingerprint), S3FifoPolicy)
    assert isinstance(make_policy("s3fifo", 10, fingerprint, admit_after=3), AdmitAfter)
    with pytest.raises(ValueError):
        make_policy("random", 10, fingerprint)


def _ids(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(63) for _ in range(count)]


@pytest.mark.parametrize("sequential", [True, False])
def test_sketch_never_under_counts_and_over_counts_little(sequential: bool) -> None:
    """Five times as many keys as the sketch is fitted for (engine fingerprints are sequential
    version ids; Keyed's are hashes): no estimate falls below the true count since the last halving,
    and conservative update keeps the excess small."""
    sketch = FrequencySketch(1000)
    keys = list(range(1, 5001)) if sequential else _ids(5000, 1)
    rng = random.Random(2)
    true = {key: rng.randint(1, 6) for key in keys}
    requests = [key for key, n in true.items() for _ in range(n)]
    rng.shuffle(requests)
    assert len(requests) < sketch.sample  # no halving yet
    for key in requests:
        sketch.record(key)
    excess = [sketch[key] - n for key, n in true.items()]
    assert min(excess) >= 0
    assert sum(excess) / len(excess) < 0.5
    assert sketch[0 if not sequential else 10**9] <= 2  # never recorded


def test_sketch_counts_saturate_and_halve_with_age() -> None:
    sketch = FrequencySketch(256)
    hot, cold = 7, 8
    for _ in range(20):
        sketch.record(hot)
    for _ in range(3):
        sketch.record(cold)
    assert sketch[hot] == 15 and sketch[cold] >= 3
    for filler in range(sketch.sample - 23):  # exactly up to the next halving
        sketch.record(1000 + filler)
    assert sketch[hot] == 7  # 15 halved (the filler cannot raise a saturated counter)
    assert sketch[cold] >= 1  # never below half its count (the filler may add to it)


def test_sketch_grows_to_fit_its_entries() -> None:
    sketch = FrequencySketch(256)
    sample = sketch.sample
    sketch.fit(100)
    assert sketch.sample == sample
    sketch.fit(3000)
    assert sketch.entries == 4096 and sketch.sample == 10 * 4 * 4096


@pytest.mark.parametrize("sequential", [True, False])
def test_ghost_remembers_about_the_last_capacity_evictions(sequential: bool) -> None:
    capacity = 2000
    ghost = GhostFilter(capacity)
    added = list(range(1, 20001)) if sequential else _ids(20000, 3)
    for fingerprint in added:
        ghost.add(fingerprint)
    assert all(fingerprint in ghost for fingerprint in added[-capacity // 2 :])  # no false negatives
    forgotten = added[:-capacity]
    false_positives = sum(fingerprint in ghost for fingerprint in forgotten)
    assert false_positives < 0.01 * len(forgotten)
    strangers = range(10**12, 10**12 + 10000) if sequential else _ids(10000, 4)
    assert sum(fingerprint in ghost for fingerprint in strangers) < 100


def test_ghost_follows_a_growing_capacity() -> None:
    ghost = GhostFilter(100)
    ghost.fit(10000)
    added = list(range(1, 30001))
    for fingerprint in added:
        ghost.add(fingerprint)
    assert all(fingerprint in ghost for fingerprint in added[-5000:])
    assert sum(fingerprint in ghost for fingerprint in added[:10000]) < 100


def test_wtinylfu_does_not_evict_a_reused_slot_for_its_former_entry() -> None:
    """A contest loser's slot given to a new entry: the new entry is not offered in its place."""
    ids = {slot: slot for slot in range(20)}
    policy = WTinyLfuPolicy(10, ids.__getitem__)  # window 1, main 9
    for slot in range(11):
        policy.insert(slot, 1)  # 9 leaves the window for main, loses its contest against 0
    policy.remove(9)
    ids[9] = 100  # slot 9 now holds another entry
    policy.insert(9, 1)  # 10 leaves the window and loses against 0
    for _ in range(3):
        policy.touch(9)
    policy.insert(11, 1)  # the new 9 leaves the window and wins against 0
    assert next(policy.victims()) == 10
