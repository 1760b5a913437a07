"""Admission and eviction policies, driven the way the engine drives them."""

from __future__ import annotations

from collections.abc import Hashable

import pytest

from tessera.cache.policy import (
    AdmitAfter,
    EvictionPolicy,
    LruPolicy,
    S3FifoPolicy,
    WTinyLfuPolicy,
    make_policy,
)


class Tier:
    """A byte-limited tier driven by a policy exactly as the engine drives one."""

    def __init__(self, policy: EvictionPolicy, capacity: int) -> None:
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
            if self.used > self.capacity:
                for victim in self.policy.victims():
                    if victim == key or victim in self.busy:
                        continue
                    self.policy.remove(victim, evicted=True)
                    self.used -= self.sizes.pop(victim)
                    if self.used <= self.capacity:
                        break
        return False


@pytest.mark.parametrize("policy", [LruPolicy(), S3FifoPolicy(10), WTinyLfuPolicy(10)])
def test_victims_respect_capacity_and_skips(policy: EvictionPolicy) -> None:
    tier = Tier(policy, capacity=10)
    tier.busy = {0}
    for key in range(100):
        tier.request(key)
        assert tier.used <= 10
        assert set(tier.sizes) == {k for k in tier.sizes if k in policy}
    assert 0 in tier.sizes  # in use the whole time: never evicted
    assert len(policy) == len(tier.sizes)


def test_s3fifo_resists_a_scan_that_flushes_lru() -> None:
    hot = [f"hot{i}" for i in range(50)]
    results = {}
    for name, policy in (
        ("lru", LruPolicy()),
        ("s3fifo", S3FifoPolicy(100)),
        ("wtinylfu", WTinyLfuPolicy(100)),
    ):
        tier = Tier(policy, capacity=100)
        for _ in range(5):
            for key in hot:
                tier.request(key)
        for i in range(1000):  # a one-off scan of the tail
            tier.request(f"tail{i}")
        results[name] = sum(tier.request(key) for key in hot)
    assert results["lru"] == 0
    assert results["s3fifo"] == len(hot)
    assert results["wtinylfu"] == len(hot)


def test_s3fifo_ghost_brings_a_quick_return_into_main() -> None:
    policy = S3FifoPolicy(10)
    tier = Tier(policy, capacity=10)
    for i in range(11):
        tier.request(i)  # 0 is evicted from the small queue, into the ghost
    assert 0 not in tier.sizes
    tier.request(0)
    assert policy._entries[0][2] == 1  # straight into main


def test_s3fifo_tracks_bytes_when_entries_grow() -> None:
    policy = S3FifoPolicy(100)
    policy.insert("a", 0)
    policy.resize("a", 60)
    assert policy._small_bytes == 60
    policy.remove("a")
    assert policy._small_bytes == 0 and "a" not in policy


def test_admit_after_keeps_one_hit_wonders_out() -> None:
    policy = AdmitAfter(S3FifoPolicy(100), hits=2)
    tier = Tier(policy, capacity=100)
    for i in range(50):
        tier.request(f"once{i}")
    assert tier.used == 0
    tier.request("twice")
    tier.request("twice")
    assert "twice" in tier.sizes


def test_make_policy() -> None:
    assert isinstance(make_policy("lru", 10), LruPolicy)
    assert isinstance(make_policy("wtinylfu", 10), WTinyLfuPolicy)
    assert isinstance(make_policy("s3fifo", 10, admit_after=3), AdmitAfter)
    with pytest.raises(ValueError):
        make_policy("random", 10)
