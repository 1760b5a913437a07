"""Hit ratio of N nodes with disk D each ÷ one node with disk N x D, on the same Zipf trace (issue 13).

Every request of a seeded Zipf trace over ``--objects`` small files is routed to a node exactly as the
front routes it: ``deploy.nginx.object_key`` of the object's virtual path, then the node that nginx's
``hash … consistent`` ring picks (``deploy.ring.Ring``, the same points nginx computes) among the
``--names`` of the nodes. The reference is one node with the sum of their disks on the same trace.

Two models (``--model``):

* ``engine`` (default): real ``CacheEngine`` instances in this process, one per node plus the big one,
  each with its own cache directory, on one local-folder origin. A request reads the whole object
  through its node's engine; it is a hit when no byte came from the origin (the engine's own
  ``tessera_origin_bytes_total``), and the bytes it did not fetch are its byte hits. Memory tiers are
  kept tiny (``--memory-fraction`` of each disk) so the figure is about the disk tiers.
* ``policy``: the engine's policy classes driven exactly as ``bench/hit_ratio.py`` drives them
  (``hit_ratio.replay``), byte-exact capacities and no watermarks: fast enough for long traces, and
  it separates the ring's effect from the engine's (watermarks, block granularity).

The first ``--warmup`` fraction of the trace fills the caches and is not counted. Alongside the
ratios, the ring's balance: each node's share of the requests, of the distinct objects and of their
bytes (1/N each if perfectly even).

    .venv/bin/python bench/cluster_hit_ratio.py                       # engine, 3 nodes, alpha 0.8 and 1.0
    .venv/bin/python bench/cluster_hit_ratio.py --model policy --requests 2000000 --objects 200000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import platform
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from hit_ratio import POLICIES, make_zipf, replay
from support.engines import open_engine

from tessera.cache import CacheEngine
from tessera.deploy.nginx import object_key
from tessera.deploy.ring import Ring

GOAL = 0.95
KB = 1024
MOUNT = "data"
BLOCK = 64 * KB
#: Log-normal object sizes (median, sigma, clip), independent of popularity rank.
SIZE_MEDIAN, SIZE_SIGMA, MIN_SIZE, MAX_SIZE = 24 * KB, 1.0, 2 * KB, 512 * KB
#: Names nginx's ``server`` lines would carry: a cluster of three hosts, or the shards of one node.
NAME_SETS = {
    "hosts": ["10.0.0.{n}:8080"],
    "ports": ["127.0.0.1:{port}"],
    "shards": ["unix:/var/cache/tessera/shard-{k}/http.sock"],
}


def node_names(scheme: str, count: int) -> list[str]:
    template = NAME_SETS[scheme][0]
    return [template.format(n=k + 1, port=8080 + k, k=k) for k in range(count)]


def make_sizes(objects: int, seed: int) -> list[int]:
    rng = random.Random(f"cluster-sizes-{seed}")
    mu = math.log(SIZE_MEDIAN)
    return [min(MAX_SIZE, max(MIN_SIZE, int(rng.lognormvariate(mu, SIZE_SIGMA)))) for _ in range(objects)]


def object_path(i: int) -> str:
    return f"/{MOUNT}/o{i:07d}.bin"


@dataclass
class Outcome:
    """Hits over the measured part of the trace."""

    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0
    #: engine: the largest index + directory bytes a node's disk tier counted
    overhead: int = 0

    def add(self, size: int, fetched: int) -> None:
        self.requests += 1
        self.hits += fetched == 0
        self.bytes_requested += size
        self.bytes_hit += max(0, size - fetched)

    @property
    def ohr(self) -> float:
        return self.hits / self.requests if self.requests else float("nan")

    @property
    def bhr(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else float("nan")


# ------------------------------------------------------------------------------------------ engine


def write_objects(folder: Path, sizes: Sequence[int]) -> None:
    payload = random.Random(7).randbytes(MAX_SIZE)
    for i, size in enumerate(sizes):
        (folder / object_path(i).removeprefix(f"/{MOUNT}/")).write_bytes(payload[:size])


def origin_bytes(engine: CacheEngine) -> int:
    return int(engine.metrics.registry.get_sample_value("tessera_origin_bytes_total", {"origin": MOUNT}) or 0)


async def replay_engines(
    root: Path,
    origin: Path,
    keys: list[int],
    sizes: list[int],
    route: list[int],
    disk: int,
    policy: str,
    args,
) -> Outcome:
    """Replay ``keys`` on ``max(route) + 1`` engines of ``disk`` bytes each; ``route[k]``: k's node."""
    mounts = {MOUNT: {"origin": origin.as_uri()}}
    cache = {
        "disk_size": str(disk),
        "memory_size": str(max(BLOCK, int(disk * args.memory_fraction))),
        "block_size": str(BLOCK),
        "small_object_size": str(BLOCK),
        "metadata_ttl": "1h",
        "metadata_size": "256MB",
        "policy": policy,
        "verify_on_start": False,
    }
    count = max(route) + 1
    engines: list[CacheEngine] = []
    outcome = Outcome()
    overheads = [0] * count
    warm = int(len(keys) * args.warmup)
    contexts = [open_engine(root / f"node-{n}", mounts, **cache) for n in range(count)]
    try:
        for context in contexts:
            engines.append(await context.__aenter__())
        for t, k in enumerate(keys):
            engine = engines[route[k]]
            tier = engine.tiers[0]
            overheads[route[k]] = max(overheads[route[k]], tier.overhead)
            if args.index == "blocks":  # D for blocks, whatever the index and directories take
                tier.limit = disk + tier.overhead
            before = origin_bytes(engine)
            data = await engine.read(object_path(k))
            if len(data) != sizes[k]:
                raise AssertionError(f"{object_path(k)}: {len(data)} bytes, expected {sizes[k]}")
            if t >= warm:
                outcome.add(sizes[k], origin_bytes(engine) - before)
    finally:
        for context in reversed(contexts[: len(engines)]):
            await context.__aexit__(None, None, None)
    outcome.overhead = max(overheads)
    return outcome


# ------------------------------------------------------------------------------------------ policy


def replay_policies(
    keys: list[int], sizes: list[int], route: list[int], capacity: int, policy: str, args
) -> Outcome:
    """Each node's share of the trace through its own policy instance of ``capacity`` bytes."""
    count = max(route) + 1
    warm = int(len(keys) * args.warmup)
    outcome = Outcome()
    for node in range(count):
        positions = [t for t, k in enumerate(keys) if route[k] == node]
        sub = [keys[t] for t in positions]
        hit = replay(POLICIES[policy](capacity, None), sub, sizes, capacity, [0])
        for t, k, h in zip(positions, sub, hit, strict=True):
            if t >= warm:
                outcome.add(sizes[k], 0 if h else sizes[k])
    return outcome


# ------------------------------------------------------------------------------------------ report


def balance(keys: list[int], sizes: list[int], route: list[int], count: int) -> str:
    requests = [0] * count
    objects = [0] * count
    nbytes = [0] * count
    for k in set(keys):
        objects[route[k]] += 1
        nbytes[route[k]] += sizes[k]
    for k in keys:
        requests[route[k]] += 1

    def shares(values: list[int]) -> str:
        total = sum(values)
        return " / ".join(f"{v / total:.3f}" for v in values)

    return f"requests {shares(requests)}; objects {shares(objects)}; bytes {shares(nbytes)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["engine", "policy"], default="engine")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--names", choices=sorted(NAME_SETS), default="hosts", help="the nodes' server names")
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=150_000)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.8, 1.0])
    parser.add_argument(
        "--policy", nargs="+", choices=["wtinylfu", "s3fifo", "lru"], default=["wtinylfu", "s3fifo"]
    )
    parser.add_argument("--cache-fraction", type=float, default=0.05, help="the big node's disk ÷ all bytes")
    parser.add_argument("--memory-fraction", type=float, default=0.02, help="engine: memory tier ÷ disk")
    parser.add_argument(
        "--index",
        choices=["blocks", "counted"],
        default="blocks",
        help="engine: D holds blocks only (each tier's limit follows D + its measured index and directory "
        "bytes), or D holds those too, as configured (a fixed per-node cost: the index's WAL reaches 4 MiB)",
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="fraction of the trace not counted")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    sizes = make_sizes(args.objects, args.seed)
    total = sum(sizes)
    big = int(total * args.cache_fraction)
    small = big // args.nodes
    names = node_names(args.names, args.nodes)
    ring = Ring(names)
    route = [ring.node(object_key(object_path(i))) for i in range(args.objects)]
    now = datetime.datetime.now(datetime.UTC)
    print(
        f"# cluster_hit_ratio.py {' '.join(sys.argv[1:])}, {now:%Y-%m-%d %H:%M} UTC, "
        f"Python {platform.python_version()}\n\n"
        f"{args.objects:,} objects, {total / 2**20:.1f} MiB (log-normal median {SIZE_MEDIAN // KB} KiB, "
        f"sigma {SIZE_SIGMA}, [{MIN_SIZE // KB}, {MAX_SIZE // KB}] KiB); {args.requests:,} requests, the "
        f"first {args.warmup:.0%} warm-up; one node of {big / 2**20:.2f} MiB ({args.cache_fraction:.0%} of "
        f"the bytes) against {args.nodes} of {small / 2**20:.2f} MiB routed by the nginx ring over "
        f"{', '.join(names)}; model {args.model}, index {args.index}."
    )
    print(
        f"\n| policy | alpha | 1 node: objects / bytes | {args.nodes} nodes: objects / bytes | "
        f"ratio objects / bytes | goal ≥ {GOAL} | index MiB 1 / N | time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    notes = []
    worst = math.inf
    for alpha in args.alpha:
        keys = make_zipf(args.objects, args.requests, alpha, args.seed)
        notes.append(f"alpha {alpha:g}: {balance(keys, sizes, route, args.nodes)}")
        for policy in args.policy:
            started = time.perf_counter()
            if args.model == "engine":
                with tempfile.TemporaryDirectory(prefix="cluster-hit-") as tmp:
                    root = Path(tmp)
                    origin = root / "origin"
                    origin.mkdir()
                    write_objects(origin, sizes)
                    one = asyncio.run(
                        replay_engines(
                            root / "one", origin, keys, sizes, [0] * args.objects, big, policy, args
                        )
                    )
                    many = asyncio.run(
                        replay_engines(root / "many", origin, keys, sizes, route, small, policy, args)
                    )
            else:
                one = replay_policies(keys, sizes, [0] * args.objects, big, policy, args)
                many = replay_policies(keys, sizes, route, small, policy, args)
            ratio_o, ratio_b = many.ohr / one.ohr, many.bhr / one.bhr
            worst = min(worst, ratio_o, ratio_b)
            verdict = "pass" if min(ratio_o, ratio_b) >= GOAL else "**FAIL**"
            print(
                f"| {policy} | {alpha:g} | {one.ohr:.2%} / {one.bhr:.2%} | {many.ohr:.2%} / {many.bhr:.2%} | "
                f"{ratio_o:.3f} / {ratio_b:.3f} | {verdict} | "
                f"{one.overhead / 2**20:.1f} / {many.overhead / 2**20:.1f} | "
                f"{time.perf_counter() - started:.0f} s |",
                flush=True,
            )
    print("\nRing balance (each node's share):\n")
    for line in notes:
        print(f"- {line}")
    print(f"\nWorst ratio {worst:.3f} (goal ≥ {GOAL}): {'pass' if worst >= GOAL else 'FAIL'}")
    return 0 if worst >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
