"""Link allocation (issue 12, "Links"): speed on one node, and 1M links from 4 processes sharing PostgreSQL
with no duplicate and none guessable from its neighbour.

1. ``one node``: ``LinkAllocator.allocate()`` in one process (the whole path: block leases from the
   database, the bitmap, the keyed permutation), on the embedded SQLite link map and on PostgreSQL, with
   the default block of 1,000. Goal >= 50,000 links/s. Beside it, in the same run, the permutation alone
   (what the allocator adds on top of it).
2. ``4 processes``: 4 spawned processes share one PostgreSQL database (started here with ``initdb``) and
   allocate 1,000,000 links in all; every number and every link must be distinct (asserted).
3. ``neighbours``: for every pair of consecutive numbers among those 1M, how much their links share
   (prefix, characters in place, distance of their base62 values) against what chance gives, and the
   same figures for a plain base62 counter (what sqids-like or sequential schemes leak).

There is no external reference implementation to run: the issue names none (sqids/hashids are excluded
by design); the counter is the baseline.

    .venv/bin/python bench/links.py [--total 1000000] [--processes 4] [--one-node 200000] [--block 1000]
                                [--reps 3]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from tessera.hosting.allocator import LinkAllocator
from tessera.hosting.linkmap import LinkMap
from tessera.hosting.permutation import ALPHABET, LinkPermutation
from tests.support.postgres import postgres_server

LENGTH = 8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_node(url: str, count: int, block: int) -> tuple[float, float]:
    """Links per second of wall time and per CPU second of one allocator in this process."""
    linkmap = LinkMap.open(url)
    try:
        permutation = LinkPermutation(linkmap.link_key(lambda: os.urandom(32)), LENGTH)
        allocator = LinkAllocator(linkmap, permutation, f"bench-{os.getpid()}", block)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            allocator.allocate()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        allocator.close()
        return count / elapsed, count / cpu
    finally:
        linkmap.close()


def permutation_alone(count: int) -> tuple[float, float]:
    permutation = LinkPermutation(os.urandom(32), LENGTH)
    started, cpu = time.perf_counter(), time.process_time()
    for number in range(count):
        permutation.link(number)
    return count / (time.perf_counter() - started), count / (time.process_time() - cpu)


def worker(url: str, holder: str, count: int, block: int, start_at: float) -> tuple[float, float, bytes, str]:
    """One of the processes: its allocation time and CPU time, its numbers (int64 array) and its links
    (joined)."""
    linkmap = LinkMap.open(url)
    try:
        permutation = LinkPermutation(linkmap.link_key(lambda: os.urandom(32)), LENGTH)
        allocator = LinkAllocator(linkmap, permutation, holder, block)
        time.sleep(max(0.0, start_at - time.time()))
        numbers = array("q")
        links: list[str] = []
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            number, link = allocator.allocate()
            numbers.append(number)
            links.append(link)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        allocator.close()
        return elapsed, cpu, numbers.tobytes(), "".join(links)
    finally:
        linkmap.close()


def shared_prefix(left: str, right: str) -> int:
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        if a != b:
            return index
    return len(left)


def value(link: str) -> int:
    result = 0
    for char in link:
        result = result * 62 + ALPHABET.index(char)
    return result


def neighbours(by_number: list[str]) -> dict[str, float]:
    """How much consecutive numbers' links reveal of each other."""
    pairs = list(itertools.pairwise(by_number))
    values = [value(link) for link in by_number]
    capacity = 62**LENGTH
    prefixes = [shared_prefix(a, b) for a, b in pairs]
    return {
        "mean shared prefix (chars)": sum(prefixes) / len(pairs),
        "max shared prefix (chars)": max(prefixes),
        "pairs sharing >= 2 leading chars": sum(p >= 2 for p in prefixes) / len(pairs),
        "chars equal in place": sum(a == b for x, y in pairs for a, b in zip(x, y, strict=True))
        / (len(pairs) * LENGTH),
        "next = this + 1 (base62)": sum(b - a == 1 for a, b in itertools.pairwise(values)) / len(pairs),
        "|next - this| < 0.1 % of the space": sum(
            abs(b - a) < capacity // 1000 for a, b in itertools.pairwise(values)
        )
        / len(pairs),
    }


def counter_link(number: int) -> str:
    chars = []
    for _ in range(LENGTH):
        number, digit = divmod(number, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


CHANCE = {
    "mean shared prefix (chars)": sum(62.0**-k for k in range(1, LENGTH + 1)),
    "max shared prefix (chars)": float("nan"),  # about log62(pairs): set in main()
    "pairs sharing >= 2 leading chars": 62.0**-2,
    "chars equal in place": 1 / 62,
    "next = this + 1 (base62)": 62.0**-LENGTH,
    "|next - this| < 0.1 % of the space": 0.002,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--one-node", type=int, default=200_000)
    parser.add_argument("--block", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 shared cores)")

    with tempfile.TemporaryDirectory(prefix="tessera-links-") as tmp, postgres_server() as server:
        rates: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgres": [], "alone": []}
        for rep in range(args.reps):  # interleaved, so a busy moment of the shared cores hits all three
            log(f"one node, rep {rep + 1}/{args.reps}")
            rates["sqlite"].append(one_node(f"sqlite:///{tmp}/h{rep}.sqlite", args.one_node, args.block))
            rates["postgres"].append(one_node(server.url(), args.one_node, args.block))
            rates["alone"].append(permutation_alone(args.one_node))
        heading = f"{args.one_node:,} links, median [min-max] of {args.reps}"
        print(f"\n## One node (one process, one core; {heading})\n")
        print("| path | links/s (wall) | links per CPU second | goal |")
        print("|---|---|---|---|")
        for name, label, goal in (
            ("sqlite", f"allocate(), SQLite link map, block {args.block}", ">= 50,000"),
            ("postgres", f"allocate(), PostgreSQL link map, block {args.block}", ">= 50,000"),
            ("alone", "the permutation alone (`link(n)`)", "(reference)"),
        ):
            cells = []
            for column in (0, 1):
                values = [rate[column] for rate in rates[name]]
                cells.append(f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]")
            print(f"| {label} | {cells[0]} | {cells[1]} | {goal} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")

        url = server.url()
        per_process = args.total // args.processes
        log(f"{args.processes} processes x {per_process:,} links on PostgreSQL")
        start_at = time.time() + 3
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            jobs = [(url, f"bench-{i}", per_process, args.block, start_at) for i in range(args.processes)]
            results = pool.starmap(worker, jobs)
    numbers = array("q")
    links: list[str] = []
    for _elapsed, _cpu, packed, joined in results:
        numbers.frombytes(packed)
        links += [joined[i : i + LENGTH] for i in range(0, len(joined), LENGTH)]
    total = per_process * args.processes
    assert len(numbers) == len(links) == total
    distinct_numbers, distinct_links = len(set(numbers)), len(set(links))
    assert distinct_numbers == total, f"{total - distinct_numbers} duplicate numbers"
    assert distinct_links == total, f"{total - distinct_links} duplicate links"
    slowest = max(result[0] for result in results)
    cpu = sum(result[1] for result in results)
    print(f"\n## {args.processes} processes sharing PostgreSQL, block {args.block}\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| links allocated | {total:,} |")
    print(f"| distinct numbers / distinct links | {distinct_numbers:,} / {distinct_links:,} (asserted) |")
    print(f"| highest number (unused numbers below it) | {max(numbers):,} ({max(numbers) + 1 - total:,}) |")
    print(f"| slowest process, allocation time | {slowest:.2f} s |")
    print(f"| together (total ÷ slowest process) | {total / slowest:,.0f} links/s |")
    print(
        f"| CPU seconds of the 4 allocating loops | {cpu:.2f} s ({total / cpu:,.0f} links per CPU second) |"
    )

    log("neighbours")
    ordered = sorted(zip(numbers, links, strict=True))
    assert [number for number, _ in ordered[:3]] == [0, 1, 2]
    ours = neighbours([link for _, link in ordered])
    counter = neighbours([counter_link(number) for number, _ in ordered])
    print(f"\n## Consecutive numbers' links ({total - 1:,} pairs)\n")
    print("| figure | keyed permutation | chance | base62 counter (baseline) |")
    print("|---|---|---|---|")
    chances = {**CHANCE, "max shared prefix (chars)": math.log(total - 1, 62)}
    for name, figure in ours.items():
        chance_text = f"{chances[name]:.3g}"
        print(f"| {name} | {figure:.4g} | {chance_text} | {counter[name]:.4g} |")
    assert ours["mean shared prefix (chars)"] < 2 * CHANCE["mean shared prefix (chars)"]
    assert ours["next = this + 1 (base62)"] == 0


if __name__ == "__main__":
    main()
