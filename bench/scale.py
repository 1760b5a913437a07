"""Scale of the cache index: start-up time, resident memory and hit-path lookups with 1M object versions.

    .venv/bin/python bench/scale.py [--versions 1000000] [--blocks-per-version 10]

Builds an index of N cached object versions (``--blocks-per-version`` present blocks each, so 1M
versions hold 10M blocks) straight into SQLite, then in a fresh process measures:

* start-up: ``CacheEngine.start()`` until the first hit is served (goal <= 2 s);
* resident memory of that process once the index is loaded (goal: <= 200 MB at 1M versions, <= 2 GB
  at 10M, so <= 200 bytes per version), next to the RSS of the same interpreter with everything
  imported but no index, as the reference;
* hit-path lookups per second on one core: ``open`` of an object whose metadata is fresh and whose
  version is cached (1,000 objects, each opened once before timing, so the persistent index is not
  touched; no origin request); goal: at least the 172k/s of the engine before the resident table.

Data files are not created (1M files would measure the filesystem); the engine's background check of
untrusted state is switched off for the run, as an operator may do for a trusted cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tessera.cache.index import _SCHEMA, SqliteIndex
from tessera.cache.version import version_id

ORIGIN = "file:///srv/collection"
BLOCK = 1024 * 1024


def key_of(i: int) -> str:
    return f"collection/{i % 1000:04d}/image_{i:08d}.jp2"


def build(db: Path, versions: int, blocks: int) -> None:
    SqliteIndex(db).close()  # the schema, as the engine makes it
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    # Rows go in without the usage trigger (a quicker build), and the usage figures are summed after.
    con.execute("DROP TRIGGER usage_insert")
    now = time.time()
    present = b"\x01" * blocks
    sums = bytes(4 * blocks)
    rows = (
        (
            version_id(ORIGIN, key_of(i), f'"{i:032x}"'),
            ORIGIN,
            key_of(i),
            f'"{i:032x}"',
            blocks * BLOCK,
            now - i,
            BLOCK,
            present,
            blocks * BLOCK,
            now - i,
            now,
            0,
            0,
            0,
            i + 1,  # gen: the file incarnation
            sums,
            blocks,  # present_count
        )
        for i in range(versions)
    )
    con.executemany("INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.execute(
        "UPDATE usage SET bytes = (SELECT COALESCE(SUM(cached_bytes), 0) FROM versions v "
        "WHERE v.tier = usage.tier AND v.pinned = usage.pinned), rows = (SELECT COUNT(*) FROM versions v "
        "WHERE v.tier = usage.tier AND v.pinned = usage.pinned)"
    )
    con.commit()
    con.executescript(_SCHEMA)  # the trigger back
    con.close()


PROBE = r"""
import asyncio, json, os, sys, time
from tessera.cache import CacheEngine
from tessera.config import load_settings

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

cache_dir, versions, lookups, load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
settings = load_settings(None, cache={"dir": cache_dir, "disk_size": "100000TB", "block_size": "1MB",
                                      "verify_on_start": False, "metadata_ttl": "1d"},
                         mounts={"c": {"origin": "file:///srv/collection"}})
baseline = rss()

async def main():
    engine = CacheEngine(settings)
    started = time.perf_counter()
    await engine.start()
    key = f"/c/collection/0000/image_{0:08d}.jp2"
    handle = await engine.open(key)
    first_hit = time.perf_counter() - started
    await engine.loaded.wait()
    loaded = time.perf_counter() - started
    resident = rss()
    step = max(1, versions // 1000)
    paths = [f"/c/collection/{i % 1000:04d}/image_{i:08d}.jp2" for i in range(0, versions, step)]
    for path in paths:  # one pass first: metadata and block states come from the index once
        assert (await engine.open(path)).version.all_present
    t0 = time.perf_counter()
    n = 0
    while n < lookups:
        for path in paths:
            h = await engine.open(path)
            assert h.version.all_present
        n += len(paths)
    per_second = n / (time.perf_counter() - t0)
    print(json.dumps({"first_hit_s": first_hit, "loaded_s": loaded, "rss": resident, "baseline_rss": baseline,
                      "versions": len(engine.table), "lookups_per_s": per_second,
                      "origin_requests": engine.metrics.registry.get_sample_value(
                          "tessera_origin_requests_total", {"origin": "c", "method": "HEAD"}) or 0}))
    await engine.close(grace=0)

asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--versions", type=int, default=1_000_000)
    parser.add_argument("--blocks-per-version", type=int, default=10)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument(
        "--keep",
        type=Path,
        help="build the index in this folder once and reuse it in later runs (10M versions take 20 min)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-scale-") as tmp:
        cache_dir = args.keep or Path(tmp) / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not (cache_dir / "index.sqlite").exists():
            started = time.perf_counter()
            build(cache_dir / "index.sqlite", args.versions, args.blocks_per_version)
            print(
                f"built an index of {args.versions:,} versions in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(cache_dir), str(args.versions), str(args.lookups), "1"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        if out.returncode:
            sys.exit(f"the probe failed:\n{out.stderr}")
        result = json.loads(out.stdout)
    mib = 1024 * 1024
    print(f"\n### scale: {args.versions:,} versions, {args.versions * args.blocks_per_version:,} blocks\n")
    print("| metric | value | goal | result |")
    print("|---|---|---|---|")
    print(
        f"| start-up to first hit | {result['first_hit_s']:.2f} s | <= 2 s | "
        f"{'pass' if result['first_hit_s'] <= 2 else 'FAIL'} |"
    )
    print(f"| whole index in memory (background load) | {result['loaded_s']:.2f} s | — | — |")
    index_rss = result["rss"] - result["baseline_rss"]
    goal = 200e6 if args.versions <= 1_000_000 else 200 * args.versions
    print(
        f"| resident memory, index loaded | {result['rss'] / mib:.0f} MiB "
        f"(imports: {result['baseline_rss'] / mib:.0f} MiB; index: {index_rss / mib:.0f} MiB) "
        f"| <= {goal / 1e6:,.0f} MB | {'pass' if result['rss'] <= goal else 'FAIL'} |"
    )
    per_version = index_rss / args.versions
    verdict = "pass" if per_version <= 200 else "FAIL"
    print(f"| bytes per cached version | {per_version:.0f} B | <= 200 B | {verdict} |")
    print(
        f"| hit-path lookups per second (one core) | {result['lookups_per_s']:,.0f} | >= 172,000 | "
        f"{'pass' if result['lookups_per_s'] >= 172_000 else 'FAIL'} |"
    )
    print(
        f"| origin requests during lookups | {int(result['origin_requests'])} | 0 | "
        f"{'pass' if not result['origin_requests'] else 'FAIL'} |"
    )
    print(
        f"| versions in the index | {result['versions']:,} | {args.versions:,} | "
        f"{'pass' if result['versions'] == args.versions else 'FAIL'} |"
    )


if __name__ == "__main__":
    main()
