"""Bytes of policy state per cached entry (tracemalloc), for the slot policies as the engine builds them.

Inserts ``--entries`` slots of size 1 into a policy of that capacity, then a fifth more, each evicting
one victim (so W-TinyLFU's contest losers and S3-FIFO's ghost filter are in use), touching every sixth
slot on the way; then reports the traced bytes held by the policy per entry it holds.

    .venv/bin/python bench/policy_state.py [--entries N] [--policy NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

from tessera.cache.policy import EvictionPolicy, make_policy


def fingerprint(slot: int) -> int:
    return (slot * 0x9E3779B97F4A7C15) & ((1 << 63) - 1)


def fill(policy: EvictionPolicy, entries: int) -> None:
    used = 0
    for slot in range(entries + entries // 5):
        policy.insert(slot, 1)
        used += 1
        if used > entries:
            victim = next(v for v in policy.victims() if v != slot)
            policy.remove(victim, evicted=True)
            used -= 1
        if slot % 3 == 0 and slot // 2 in policy:
            policy.touch(slot // 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--policy", nargs="+", default=["wtinylfu", "s3fifo", "lru"])
    args = parser.parse_args(argv)
    print("| policy | entries | bytes per entry | time |\n|---|---|---|---|")
    for name in args.policy:
        started = time.perf_counter()
        tracemalloc.start()
        policy = make_policy(name, args.entries, fingerprint)
        fill(policy, args.entries)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(
            f"| {name} | {len(policy):,} | {held / len(policy):.1f} | {time.perf_counter() - started:.0f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
