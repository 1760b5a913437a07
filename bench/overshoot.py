"""Fill pressure: 256 concurrent fills of 4 MiB blocks against a 256 MiB disk tier.

    .venv/bin/python bench/overshoot.py [--fills 256] [--limit-mb 256]

Each fill reads a different cold 4 MiB object (one block each) from a local folder origin, all at
once, so the tier passes its high watermark while most objects in it are still being filled. The
engine's own usage figure (plus space reserved for writes under way) and the real allocation of the
cache's data directory are sampled throughout; the reference is the configured limit.
Goal: maximum usage / limit <= 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from tessera.cache import CacheEngine
from tessera.config import load_settings

MIB = 1024 * 1024


def allocated(directory: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


async def run(folder: Path, cache_dir: Path, fills: int, limit: int) -> dict[str, float]:
    settings = load_settings(
        None,
        cache={"dir": str(cache_dir), "disk_size": limit, "block_size": "4MB", "small_object_size": "4MB"},
        mounts={"src": {"origin": f"file://{folder}"}},
    )
    async with CacheEngine(settings) as engine:
        peak_engine = 0
        peak_disk = 0
        stop = threading.Event()

        def sample_disk() -> None:
            nonlocal peak_disk
            while not stop.is_set():
                peak_disk = max(peak_disk, allocated(cache_dir / "data"))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample_disk)
        sampler.start()

        async def read(i: int) -> None:
            nonlocal peak_engine
            data = await engine.read(f"/src/obj{i:04d}.bin")
            assert len(data) == 4 * MIB
            tier = engine.tiers[0]
            peak_engine = max(peak_engine, tier.used + tier.reserved)

        async def watch() -> None:
            nonlocal peak_engine
            while True:
                tier = engine.tiers[0]
                peak_engine = max(peak_engine, tier.used + tier.reserved)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        await asyncio.gather(*(read(i) for i in range(fills)))
        elapsed = time.perf_counter() - started
        watcher.cancel()
        stop.set()
        sampler.join()
        cached = engine.disk_used
    return {"peak_engine": peak_engine, "peak_disk": peak_disk, "elapsed": elapsed, "cached_end": cached}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fills", type=int, default=256)
    parser.add_argument("--limit-mb", type=int, default=256)
    args = parser.parse_args()
    limit = args.limit_mb * MIB
    with tempfile.TemporaryDirectory(prefix="tessera-overshoot-") as tmp:
        folder = Path(tmp) / "origin"
        folder.mkdir()
        block = os.urandom(4 * MIB)
        for i in range(args.fills):
            (folder / f"obj{i:04d}.bin").write_bytes(block[i:] + block[:i])
        print(f"{args.fills} objects of 4 MiB written", file=sys.stderr)
        result = asyncio.run(run(folder, Path(tmp) / "cache", args.fills, limit))
    print(f"\n### overshoot: {args.fills} concurrent fills of 4 MiB blocks, {args.limit_mb} MiB disk tier\n")
    print("| metric | value | reference (limit) | ratio | goal | result |")
    print("|---|---|---|---|---|---|")
    for label, key in (
        ("engine usage + reserved, peak", "peak_engine"),
        ("data directory allocation, peak", "peak_disk"),
    ):
        ratio = result[key] / limit
        verdict = "pass" if ratio <= 1.05 else "FAIL"
        value = f"{result[key] / MIB:.1f} MiB"
        print(f"| {label} | {value} | {args.limit_mb} MiB | {ratio:.3f} | <= 1.05 | {verdict} |")
    print(f"| cached at the end | {result['cached_end'] / MIB:.1f} MiB | — | — | — | — |")
    print(f"| wall time of the fills | {result['elapsed']:.2f} s | — | — | — | — |")


if __name__ == "__main__":
    main()
