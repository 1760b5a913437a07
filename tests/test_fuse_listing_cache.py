"""The FUSE listing cache is bounded in bytes: a real ``tessera mount`` of a local folder with many names,
its figures read from the mount's own ``/metrics`` (``fs.metrics_port``)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tessera.fs.listing import ListingCache
from tessera.origins.local import LocalOrigin
from tests.support.fuse_mount import QUICK, tessera_mount
from tests.support.moto_server import free_port

DIRS = 24
NAMES = 400  # per directory: about 160 kB of listing each
BUDGET = 1024 * 1024  # room for about six of them
BIG = 3000  # names in the directory read across an eviction


@dataclass
class LocalMount:
    folder: Path
    mountpoint: Path
    metrics_url: str

    def figures(self) -> dict[str, float]:
        text = httpx.get(self.metrics_url, timeout=5).text
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("tessera_listing_cache_")
        }


def names_in(index: int) -> list[str]:
    return [f"scan-{index:03d}-{n:05d}.tif" for n in range(NAMES)]


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[LocalMount]:
    folder = tmp_path / "origin"
    for index in range(DIRS):
        directory = folder / f"d{index:03d}"
        directory.mkdir(parents=True)
        for name in names_in(index):
            (directory / name).touch()
    (folder / "big").mkdir()
    for n in range(BIG):
        (folder / "big" / f"page-with-a-longish-name-{n:06d}.jp2").touch()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    port = free_port()
    env = {
        **QUICK,
        "TESSERA_FS__LISTING_TTL": "5m",  # an eviction, not the TTL, is what makes a listing go
        "TESSERA_CACHE__METADATA_TTL": "5m",
        "TESSERA_FS__LISTING_CACHE_SIZE": str(BUDGET),
        "TESSERA_FS__METRICS_PORT": str(port),
    }
    with tessera_mount(str(folder), mountpoint, tmp_path / "cache", tmp_path / "mount.log", env):
        yield LocalMount(folder, mountpoint, f"http://127.0.0.1:{port}/metrics")


def test_listings_stay_within_the_budget_and_evicted_ones_list_again(mounted: LocalMount) -> None:
    assert mounted.figures() == {"tessera_listing_cache_bytes": 0.0, "tessera_listing_cache_entries": 0.0}
    for index in range(DIRS):
        assert sorted(os.listdir(mounted.mountpoint / f"d{index:03d}")) == names_in(index)
        figures = mounted.figures()
        assert 0 < figures["tessera_listing_cache_bytes"] <= BUDGET
    kept = figures["tessera_listing_cache_entries"]
    assert 2 <= kept < DIRS / 2, figures  # several kept, most evicted
    # A name added at the origin shows only where the listing was fetched again: in the least recently
    # listed directory (evicted), not in the last one (kept for the listing TTL of 5 minutes).
    first, last = f"d{0:03d}", f"d{DIRS - 1:03d}"
    (mounted.folder / first / "added.tif").touch()
    (mounted.folder / last / "added.tif").touch()
    assert sorted(os.listdir(mounted.mountpoint / first)) == sorted([*names_in(0), "added.tif"])
    assert sorted(os.listdir(mounted.mountpoint / last)) == names_in(DIRS - 1)
    assert (mounted.mountpoint / first / "added.tif").stat().st_size == 0
    assert mounted.figures()["tessera_listing_cache_bytes"] <= BUDGET


def test_a_readdir_in_progress_across_an_eviction_sees_its_listing_once(mounted: LocalMount) -> None:
    big = mounted.mountpoint / "big"
    expected = sorted(os.listdir(mounted.folder / "big"))
    seen: list[str] = []
    with os.scandir(big) as entries:
        for entry in entries:
            seen.append(entry.name)
            if len(seen) == 100:
                # The origin changes and every other directory is listed: "big" is evicted meanwhile.
                (mounted.folder / "big" / expected[-1]).unlink()
                (mounted.folder / "big" / "aaa-new.jp2").touch()
                for index in range(DIRS):
                    os.listdir(mounted.mountpoint / f"d{index:03d}")
                assert mounted.figures()["tessera_listing_cache_bytes"] <= BUDGET
    assert len(seen) == len(expected) == BIG
    assert sorted(seen) == expected  # every name exactly once, from the listing the readdir started with
    # Once that directory is closed, a new listing is fetched (the kernel sends the release shortly).
    now = sorted([*expected[:-1], "aaa-new.jp2"])
    deadline = time.monotonic() + 10
    while sorted(os.listdir(big)) != now:
        assert time.monotonic() < deadline, "the evicted listing was not fetched again"
        time.sleep(0.1)


def _listing_cache(root: Path, max_bytes: int) -> ListingCache:
    return ListingCache("m", LocalOrigin("m", str(root)), ttl=300, max_names=10**6, max_bytes=max_bytes)


@pytest.mark.parametrize(("directory", "count"), [("", 5462), ("sub", 5462), ("sub", 1500)])
def test_the_estimate_is_what_tracemalloc_measures(tmp_path: Path, directory: str, count: int) -> None:
    """The per-name constants of ``listing_bytes`` were measured this way; the estimate stays an upper
    bound within 10 %. 5462 names is just past a doubling of the files dict (its most costly size)."""
    folder = tmp_path / directory
    folder.mkdir(exist_ok=True)
    for n in range(count):
        (folder / f"{'é' if n % 7 == 0 else 'e'}-{n:0{n % 13 + 1}d}.png").touch()
    for n in range(count // 10):
        (folder / f"dir-{n}").mkdir()
    cache = _listing_cache(tmp_path, 10**12)

    async def measure() -> tuple[int, int]:
        await cache.get("missing")  # the first call's one-off allocations (thread pool, imports)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            listing = await cache.get(directory)
            listing.names()  # the readdir order is part of what a listing holds
            await asyncio.sleep(0)  # the fetch task's done callbacks run
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before, listing.weight
        finally:
            tracemalloc.stop()

    measured, estimate = asyncio.run(measure())
    assert measured <= estimate <= 1.10 * measured, (measured, estimate)


def test_a_listing_larger_than_the_budget_is_served_not_kept(tmp_path: Path) -> None:
    for n in range(200):
        (tmp_path / f"{n}.bin").touch()
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "one.bin").touch()
    cache = _listing_cache(tmp_path, max_bytes=20_000)

    async def main() -> None:
        root = await cache.get("")
        assert len(root.files) == 200 and root.weight > cache.max_bytes
        assert len(cache) == 0 and cache.used == 0
        assert await cache.get("") is root  # still held (here, by this test): not fetched again
        small = await cache.get("small")
        assert list(small.files) == ["one.bin"]
        assert len(cache) == 1 and cache.used == small.weight <= cache.max_bytes

    asyncio.run(main())
