"""The reference for the kit's ``random`` scenario: the mount's reads interleaved with direct GETs.

The kit times ``os.pread`` through each mount but not the origin itself, and on this shared 2-core
machine a reference measured minutes apart says little. So this repeats the kit's reads (one
``open``, 200 ``pread(64 KiB)`` at ``random.Random(rep)`` offsets in the cold 1 GiB object) on a
fresh Tessera mount, and times a direct ranged GET of the very same bytes right after each read (or
before it: the order alternates), against the same endpoint (the counting proxy) with obstore, the S3
client Tessera uses. Every read is also checked against its direct GET.

    direct_random.py measure --mnt MNT --rep N --out FILE.jsonl   # one rep on a fresh mount
    direct_random.py summary FILE.jsonl                           # p50/p90 ratios per rep, median

``bench/fuse/run.sh`` runs it (through the kit's adapter, fresh mount and empty cache for each rep)
when the scenarios include ``random``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from typing import Any

import obstore
from obstore.store import S3Store


def _store() -> S3Store:
    return S3Store(
        os.environ.get("BUCKET", "images"),
        config={
            "endpoint": os.environ.get("ORIGIN_URL", "http://127.0.0.1:19001"),
            "region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3


async def measure(mnt: str, rep: int, reads: int, size: int) -> dict[str, Any]:
    key = os.environ.get("KEY_RANDOM", "big/obj1g.bin")
    store = _store()
    await obstore.head_async(store, key)  # the direct client's connection, opened untimed
    fd = os.open(os.path.join(mnt, key), os.O_RDONLY)
    try:
        rng = random.Random(rep)
        offsets = [rng.randrange(0, os.fstat(fd).st_size - size) for _ in range(reads)]
        mount_lat: list[float] = []
        direct_lat: list[float] = []
        wrong = 0
        for i, offset in enumerate(offsets):
            got: dict[str, bytes] = {}
            for name in ("mount", "direct") if i % 2 == 0 else ("direct", "mount"):
                started = time.perf_counter()
                if name == "mount":
                    got[name] = os.pread(fd, size, offset)
                    mount_lat.append(time.perf_counter() - started)
                else:
                    got[name] = bytes(await obstore.get_range_async(store, key, start=offset, length=size))
                    direct_lat.append(time.perf_counter() - started)
            wrong += got["mount"] != got["direct"]
    finally:
        os.close(fd)
    return {
        "rep": rep,
        "reads": reads,
        "read_size": size,
        "wrong_reads": wrong,
        "loadavg_start": os.getloadavg()[0],
        **{f"mount_p{q}_ms": _pct(mount_lat, q / 100) for q in (50, 90, 99)},
        **{f"direct_p{q}_ms": _pct(direct_lat, q / 100) for q in (50, 90, 99)},
    }


def summary(path: str) -> None:
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    print("\n### random, interleaved: Tessera mount pread ÷ direct ranged GET of the same bytes\n")
    print("| rep | mount p50 ms | direct p50 ms | p50 ratio | p90 ratio | wrong reads | load |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for run in runs:
        ratios.append(run["mount_p50_ms"] / run["direct_p50_ms"])
        p90 = run["mount_p90_ms"] / run["direct_p90_ms"]
        print(
            f"| {run['rep']} | {run['mount_p50_ms']:.2f} | {run['direct_p50_ms']:.2f} | {ratios[-1]:.2f}x "
            f"| {p90:.2f}x | {run['wrong_reads']} | {run['loadavg_start']:.1f} |"
        )
    if ratios:
        print(f"\np50 ratio, median of {len(ratios)} reps: {statistics.median(ratios):.2f}x (goal ≤ 1.3)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("measure")
    one.add_argument("--mnt", required=True)
    one.add_argument("--rep", type=int, required=True)
    one.add_argument("--n", type=int, default=200)
    one.add_argument("--size", type=int, default=65536)
    one.add_argument("--out", required=True)
    table = sub.add_parser("summary")
    table.add_argument("results")
    args = parser.parse_args()
    if args.command == "summary":
        summary(args.results)
        return 0
    result = asyncio.run(measure(args.mnt, args.rep, args.n, args.size))
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
