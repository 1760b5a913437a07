"""Admission and eviction policies, driven the way the engine drives them."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.cache.policy import (
    AdmitAfter,
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
