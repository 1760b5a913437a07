"""The reference for the kit's ``random`` scenario: the same 64 KiB reads as direct ranged GETs.

The kit times ``os.pread`` through each mount but not the origin itself. This script times ranged
GETs of the very same offsets (the kit's ``random.Random(rep)`` draw) against the same endpoint (the
counting proxy), with obstore, the S3 client Tessera uses, on one kept-alive connection; then it
divides the p50 of every ``random`` line of the results file by the p50 of that rep's direct GETs.

    .venv/bin/python bench/fuse/direct_random.py RESULTS.jsonl [--label tessera]

``bench/fuse/run.sh`` runs it after the kit when the scenarios include ``random``. Its GETs go through
the proxy after the kit has read the log, so they count against no tool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time

import obstore
from obstore.store import S3Store


async def direct_p50(endpoint: str, bucket: str, key: str, rep: int, reads: int, size: int) -> float:
    store = S3Store(
        bucket,
        config={
            "endpoint": endpoint,
            "region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )
    meta = await obstore.head_async(store, key)  # opens the connection, untimed
    rng = random.Random(rep)
    offsets = [rng.randrange(0, meta["size"] - size) for _ in range(reads)]
    latencies = []
    for offset in offsets:
        started = time.perf_counter()
        await obstore.get_range_async(store, key, start=offset, length=size)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the kit's jsonl results (e.g. last-run.jsonl)")
    parser.add_argument("--label", default="tessera")
    args = parser.parse_args()
    endpoint = os.environ.get("ORIGIN_URL", "http://127.0.0.1:19001")
    bucket = os.environ.get("BUCKET", "images")
    with open(args.results) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    runs = [r for r in lines if r.get("scenario") == "random" and r.get("label") == args.label]
    if not runs:
        print(f"no random runs of {args.label} in {args.results}")
        return 0
    print(f"\n### random: {args.label} p50 ÷ direct ranged GET p50 (same offsets, obstore via the proxy)\n")
    print("| rep | mount p50 ms | direct p50 ms | ratio |\n|---|---|---|---|")
    ratios = []
    for run in runs:
        direct = asyncio.run(
            direct_p50(endpoint, bucket, run["key"], run["seed"], run["reads"], run["read_size"])
        )
        ratios.append(run["lat_ms_p50"] / direct)
        print(f"| {run['rep']} | {run['lat_ms_p50']:.2f} | {direct:.2f} | {ratios[-1]:.2f}x |")
    print(f"\nmedian ratio {statistics.median(ratios):.2f}x (goal ≤ 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
