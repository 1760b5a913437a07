"""Keeping the long tail out: policies in the engine, pinning, the second disk tier, fill pressure."""

from __future__ import annotations

import asyncio
import random
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from tessera.cache import CacheEngine
from tessera.errors import CacheFull
from tests.support.engines import open_engine

BLOCK = 64 * 1024
OBJECT = 4 * BLOCK  # 256 KiB


def fill_origin(folder: Path, names: list[str]) -> dict[str, bytes]:
    objects = {name: random.Random(name).randbytes(OBJECT) for name in names}
    for name, data in objects.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return objects


def engine(folder: Path, tmp_path: Path, **cache: Any) -> AbstractAsyncContextManager[CacheEngine]:
    """An engine over ``folder`` mounted as ``/web``, its cache in ``tmp_path / "cache"``."""
    return open_engine(tmp_path / "cache", {"web": {"origin": f"file://{folder}"}}, **cache)


def origin_bytes(cache: CacheEngine) -> int:
    return int(cache.metrics.registry.get_sample_value("tessera_origin_bytes_total", {"origin": "web"}) or 0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    path.mkdir()
    return path


@pytest.mark.parametrize("policy", ["wtinylfu", "s3fifo", "lru"])
@pytest.mark.anyio
async def test_a_scan_keeps_pinned_and_hot_objects_under_the_modern_policies(
    folder: Path, tmp_path: Path, policy: str
) -> None:
    hot = [f"hot/{i}.bin" for i in range(4)]
    tail = [f"tail/{i}.bin" for i in range(60)]
    objects = fill_origin(folder, [*hot, "ref/a.bin", "ref/b.bin", *tail])

    async with engine(folder, tmp_path, disk_size="4MB", pin_size="1MB", policy=policy) as cache:
        await cache.pin("/web/ref/")
        for _ in range(3):
            for name in hot:
                await cache.read(f"/web/{name}")
        for name in tail:  # a crawler walks the long tail once: 15 MiB through a 4 MiB tier
            assert await cache.read(f"/web/{name}") == objects[name]
            assert cache.disk_used <= 4 * 1024 * 1024
        before = origin_bytes(cache)
        for name in ["ref/a.bin", "ref/b.bin"]:
            assert await cache.read(f"/web/{name}") == objects[name]
        assert origin_bytes(cache) == before  # pinned data survives any policy
        for name in hot:
            assert await cache.read(f"/web/{name}") == objects[name]
        refetched = origin_bytes(cache) - before
    if policy != "lru":
        assert refetched == 0  # the hot set survived the scan
    else:
        assert refetched == len(hot) * OBJECT  # LRU let the scan flush it


@pytest.mark.anyio
async def test_pins_have_a_budget_persist_and_unpin(folder: Path, tmp_path: Path) -> None:
    fill_origin(folder, [f"big/{i}.bin" for i in range(6)] + ["one.bin"])

    async with engine(folder, tmp_path, disk_size="8MB", pin_size="1MB") as cache:
        with pytest.raises(CacheFull, match="pin budget"):
            await cache.pin("/web/big/")  # 1.5 MiB of objects for a 1 MiB pin budget
        assert (await cache.stats())["pinned"]["bytes"] == 0 and (await cache.stats())["pinned"][
            "pins"
        ] == []  # withdrawn
        await cache.pin("/web/big/2.bin")
        await cache.pin("/web/one.bin")
        assert (await cache.stats())["pinned"]["bytes"] == 2 * OBJECT

    # a second engine on the same directory, once the first has closed: the pins persisted
    async with engine(folder, tmp_path, disk_size="8MB", pin_size="1MB") as cache:
        patterns = {p["pattern"] for p in (await cache.stats())["pinned"]["pins"]}
        assert patterns == {"big/2.bin", "one.bin"}
        assert (await cache.stats())["pinned"]["bytes"] == 2 * OBJECT
        assert await cache.unpin("/web/big/2.bin") == 1
        assert await cache.unpin("/web/one.bin") == 1
        assert (await cache.stats())["pinned"]["bytes"] == 0
        assert (await cache.stats())["pinned"]["pins"] == []


@pytest.mark.anyio
async def test_admission_after_two_reads(folder: Path, tmp_path: Path) -> None:
    objects = fill_origin(folder, ["x.bin"])

    async with engine(folder, tmp_path, admit_after=2) as cache:
        assert await cache.read("/web/x.bin") == objects["x.bin"]
        await asyncio.sleep(0.05)
        assert cache.disk_used == 0  # a one-hit wonder stays off the disk
        assert await cache.read("/web/x.bin") == objects["x.bin"]
        await asyncio.sleep(0.05)
        assert cache.disk_used == OBJECT


@pytest.mark.anyio
async def test_second_tier_demotes_and_promotes(folder: Path, tmp_path: Path) -> None:
    names = [f"o{i}.bin" for i in range(12)]  # 3 MiB through a 1 MiB first tier
    objects = fill_origin(folder, names)
    second = tmp_path / "hdd"

    async with engine(folder, tmp_path, disk_size="1MB", second_dir=str(second), second_size="8MB") as cache:
        for name in names:
            assert await cache.read(f"/web/{name}") == objects[name]
            await asyncio.sleep(0.02)  # let demotions finish
        await moves_settled(cache)
        assert cache.tiers[0].used <= 1024 * 1024
        assert cache.tiers[1].used > 0
        demoted = [entry["key"] for entry in (await cache.stats(top=100))["top"] if entry["tier"] == "disk2"]
        assert demoted and len(list((second / "data").rglob("*-*"))) == len(demoted)
        assert cache.tiers[0].used + cache.tiers[1].used == len(names) * OBJECT  # nothing dropped
        before = origin_bytes(cache)
        victim = demoted[0]
        assert await cache.read(f"/web/{victim}") == objects[victim]
        assert origin_bytes(cache) == before  # served from the second tier
        await moves_settled(cache)
        tiers = {entry["key"]: entry["tier"] for entry in (await cache.stats(top=100))["top"]}
        assert tiers[victim] == "disk"  # promoted on the hit
        assert (await cache.local_path(f"/web/{victim}")).read_bytes() == objects[victim]
        assert origin_bytes(cache) == before


async def moves_settled(cache: CacheEngine) -> None:
    """Wait until no version is being moved between tiers."""
    for _ in range(200):
        if not any(tier.leaving for tier in cache.tiers):
            await asyncio.sleep(0.02)  # the move's last step (switching tiers) follows its copy
            return
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_fill_pressure_never_overshoots_the_limit(folder: Path, tmp_path: Path) -> None:
    names = [f"p{i}.bin" for i in range(64)]
    objects = fill_origin(folder, names)
    limit = 1024 * 1024

    async with engine(folder, tmp_path, disk_size="1MB", fill_wait="200ms") as cache:
        peak = used_peak = 0
        done = False

        async def sample() -> None:
            nonlocal peak, used_peak
            while not done:
                peak = max(peak, cache.disk_used + cache.tiers[0].reserved)
                used_peak = max(used_peak, cache.disk_used)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(cache.read(f"/web/{name}") for name in names))
        # A read returns once its blocks have landed in memory; their disk writes may still be
        # waiting for room (up to fill_wait each): keep sampling until they have settled.
        for _ in range(500):
            if used_peak > 0 and not cache.tiers[0].reserved:
                break
            await asyncio.sleep(0.02)
        done = True
        await sampler
        assert results == [objects[name] for name in names]
        assert peak <= limit
        assert used_peak > 0  # under pressure the tier is still used, not bypassed altogether
