"""The cache engine against a real HTTP origin on 127.0.0.1, counting what the origin serves."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import subprocess
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from tessera.cache import CacheEngine
from tessera.cache.diskstore import DiskStore
from tessera.errors import ObjectNotFound, OriginTimeout, OriginUnavailable, VersionChanged
from tests.support.engines import open_engine
from tests.support.origin_server import ObjectHTTPServer

BLOCK = 64 * 1024


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def engine_for(
    server: ObjectHTTPServer, tmp_path: Path, **overrides: Any
) -> AbstractAsyncContextManager[CacheEngine]:
    """An engine over ``server`` mounted as ``/web``, its cache in ``tmp_path / "cache"``."""
    return open_engine(tmp_path / "cache", {"web": {"origin": server.url}}, **overrides)


def gets(origin: ObjectHTTPServer, key: str) -> list:
    return [r for r in origin.requests(method="GET", key=key) if r.status in (200, 206)]


@pytest.mark.anyio
async def test_reads_are_correct_and_fetch_only_needed_blocks(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(40 * BLOCK + 123)
    http_origin.put("big.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        handle = await engine.open("/web/big.bin")
        assert await handle.pread(5 * BLOCK + 10, 100) == data[5 * BLOCK + 10 : 5 * BLOCK + 110]
        # a random read costs one block, not the object
        assert http_origin.bytes_sent("big.bin") == BLOCK
        # the same block again: no origin traffic
        assert await handle.pread(5 * BLOCK, 50) == data[5 * BLOCK : 5 * BLOCK + 50]
        assert http_origin.bytes_sent("big.bin") == BLOCK
        # a read across blocks 7..9 fetches them in one ranged GET
        assert await handle.pread(7 * BLOCK + 1, 2 * BLOCK + 5) == data[7 * BLOCK + 1 : 9 * BLOCK + 6]
        assert len(gets(http_origin, "big.bin")) == 2
        # reading everything yields the object; the tail block is short
        assert await engine.read("/web/big.bin") == data


@pytest.mark.anyio
async def test_small_objects_come_in_one_request(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    data = payload(3 * BLOCK)
    http_origin.put("small.bin", data)

    async with engine_for(http_origin, tmp_path, small_object_size="256KB") as engine:
        assert await engine.read("/web/small.bin", 10, 10) == data[10:20]
        # The read returns once its block has landed; the origin logs the GET when its body
        # ends, which may be a moment later.
        for _ in range(100):
            if gets(http_origin, "small.bin"):
                break
            await asyncio.sleep(0.02)
        assert len(gets(http_origin, "small.bin")) == 1, http_origin.requests()
        assert await engine.read("/web/small.bin") == data
        assert len(gets(http_origin, "small.bin")) == 1, http_origin.requests()


@pytest.mark.anyio
async def test_single_flight_200_readers_one_fetch_per_block(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(64 * BLOCK + 7)
    http_origin.put("flood.bin", data)

    async def reader(engine: CacheEngine, seed: int) -> bytes:
        handle = await engine.open("/web/flood.bin")
        chunks = []
        step = random.Random(seed).choice([4096, 65536, 100_000])
        while chunk := await handle.read(step):
            chunks.append(chunk)
        return b"".join(chunks)

    async with engine_for(http_origin, tmp_path) as engine:
        results = await asyncio.gather(*(reader(engine, i) for i in range(200)))
        assert all(result == data for result in results)
        assert (await engine.stats())["coalesced"] > 0
    assert len(http_origin.requests(method="HEAD", key="flood.bin")) == 1
    # every byte came from the origin exactly once: one fetch per block
    assert http_origin.bytes_sent("flood.bin") == len(data)


@pytest.mark.anyio
async def test_sequential_reader_gets_readahead(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    data = payload(256 * BLOCK)
    http_origin.put("seq.bin", data)

    async with engine_for(http_origin, tmp_path, readahead="1MB", max_fill="1MB") as engine:
        handle = await engine.open("/web/seq.bin")
        out = bytearray()
        while chunk := await handle.read(16 * 1024):
            out += chunk
        assert out == data
    requests = gets(http_origin, "seq.bin")
    # readahead turns 256 block reads into a few large GETs, fetching each byte once
    assert len(requests) <= 40
    assert http_origin.bytes_sent("seq.bin") == len(data)


@pytest.mark.anyio
async def test_missing_object_is_not_found(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    async with engine_for(http_origin, tmp_path) as engine:
        with pytest.raises(ObjectNotFound):
            await engine.read("/web/nope.bin")


@pytest.mark.anyio
async def test_transient_errors_are_retried(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    data = payload(10 * BLOCK)
    http_origin.put("flaky.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        await engine.stat("/web/flaky.bin")
        http_origin.fail_next(2, status=503)
        assert await engine.read("/web/flaky.bin") == data


@pytest.mark.parametrize("fault", ["reset", "short"])
@pytest.mark.anyio
async def test_broken_bodies_resume_after_landed_blocks(
    http_origin: ObjectHTTPServer, tmp_path: Path, fault: str
) -> None:
    data = payload(20 * BLOCK)
    http_origin.put("cut.bin", data)

    async with engine_for(http_origin, tmp_path, max_fill="2MB") as engine:
        await engine.stat("/web/cut.bin")
        if fault == "reset":
            http_origin.reset_after(5 * BLOCK + 100)
        else:
            http_origin.short_body(nbytes=5 * BLOCK + 100)
        handle = await engine.open("/web/cut.bin")
        assert await handle.pread(0, len(data)) == data
    requests = gets(http_origin, "cut.bin")
    assert len(requests) == 2
    # the retry asked only for what had not landed: it starts at a block boundary past the first blocks
    # (the client may drop the last partial chunk it buffered before the error)
    start = int(requests[1].range.removeprefix("bytes=").split("-")[0])
    assert start % BLOCK == 0 and 3 * BLOCK <= start <= 5 * BLOCK


@pytest.mark.anyio
async def test_persistent_failure_reaches_every_waiter_and_caches_nothing(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(8 * BLOCK)
    http_origin.put("down.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        await engine.stat("/web/down.bin")
        http_origin.fail_next(100, status=500)
        handles = [await engine.open("/web/down.bin") for _ in range(20)]
        results = await asyncio.gather(*(h.pread(0, 3 * BLOCK) for h in handles), return_exceptions=True)
        assert all(isinstance(r, OriginUnavailable) for r in results)
        assert {str(r) for r in results} == {str(results[0])}
        assert engine.disk_used == 0
        # 1 + retries attempts for the one shared fill, not one per reader
        assert len(http_origin.requests(method="GET", key="down.bin")) == 4
        http_origin.clear_faults()
        assert await engine.read("/web/down.bin") == data


@pytest.mark.anyio
async def test_stalled_origin_times_out(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    data = payload(4 * BLOCK)
    http_origin.put("slow.bin", data)
    quick = {"read_timeout": "500ms", "retries": 1}

    async with engine_for(http_origin, tmp_path, origin=quick) as engine:
        await engine.stat("/web/slow.bin")
        http_origin.stall_after(100, 3.0)
        http_origin.stall_after(100, 3.0)
        with pytest.raises(OriginTimeout):
            await engine.read("/web/slow.bin", 0, 10)
        assert engine.disk_used == 0
        http_origin.delay = 0.2  # slow but inside the deadline: served
        assert await engine.read("/web/slow.bin", 0, 10) == data[:10]


@pytest.mark.anyio
async def test_overwrite_is_never_mixed_and_new_version_shows_after_ttl(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    old, new = payload(10 * BLOCK, 1), payload(10 * BLOCK, 2)
    http_origin.put("obj.bin", old)

    async with engine_for(http_origin, tmp_path, metadata_ttl="300ms") as engine:
        handle = await engine.open("/web/obj.bin")
        assert await handle.pread(0, BLOCK) == old[:BLOCK]
        http_origin.put("obj.bin", new)
        # cached block of the old version: still the old bytes, consistently
        assert await handle.pread(0, BLOCK) == old[:BLOCK]
        # uncached block: If-Match fails, so no new bytes are returned under the old version
        with pytest.raises(VersionChanged):
            await handle.pread(5 * BLOCK, BLOCK)
        await asyncio.sleep(0.35)
        assert await engine.read("/web/obj.bin") == new


@pytest.mark.anyio
async def test_cache_survives_restart(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    data = payload(12 * BLOCK)
    http_origin.put("keep.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        assert await engine.read("/web/keep.bin") == data
    before = http_origin.bytes_sent("keep.bin")
    # a second engine on the same directory, once the first has closed: a restart
    async with engine_for(http_origin, tmp_path) as engine:
        assert engine.disk_used == len(data)
        assert await engine.read("/web/keep.bin") == data
        path = await engine.local_path("/web/keep.bin")
        assert path.read_bytes() == data
    assert http_origin.bytes_sent("keep.bin") == before


@pytest.mark.anyio
async def test_disk_tier_stays_under_its_limit(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    objects = {f"o{i}.bin": payload(8 * BLOCK, i) for i in range(30)}  # 30 objects of 512 KiB: 15 MiB
    for key, data in objects.items():
        http_origin.put(key, data)

    async with engine_for(http_origin, tmp_path, disk_size="2MB") as engine:
        for key, data in objects.items():
            assert await engine.read(f"/web/{key}") == data
            assert engine.disk_used <= 2 * 1024 * 1024
        allocated = sum(
            f.stat().st_blocks * 512 for f in (tmp_path / "cache" / "data").rglob("*") if f.is_file()
        )
        assert allocated <= 2 * 1024 * 1024
        assert engine.disk_used >= 1024 * 1024  # it is used, down to about the low watermark


@pytest.mark.anyio
async def test_disk_full_still_serves_reads(
    http_origin: ObjectHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(6 * BLOCK)
    http_origin.put("full.bin", data)

    def no_space(self: DiskStore, file: str, offset: int, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(DiskStore, "write", no_space)

    async with engine_for(http_origin, tmp_path) as engine:
        assert await engine.read("/web/full.bin") == data
    # closing waits for the fills' last writes
    assert engine.disk_used == 0
    assert engine.metrics.registry.get_sample_value("tessera_cache_bypassed_bytes_total") == len(data)


@pytest.mark.anyio
async def test_local_path_is_a_plain_file_and_purge_drops_it(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(9 * BLOCK + 5)
    http_origin.put("dir/a.bin", data)
    http_origin.put("dir/b.bin", data[:100])

    async with engine_for(http_origin, tmp_path) as engine:
        path = await engine.local_path("/web/dir/a.bin")
        assert path.read_bytes() == data
        await engine.read("/web/dir/b.bin")
        assert await engine.purge("/web/dir/") == 2
        assert engine.disk_used == 0
        assert not path.exists()


@pytest.mark.anyio
async def test_real_full_filesystem_evicts_then_bypasses(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    """A disk tier configured larger than its filesystem: ENOSPC makes room, else reads bypass the cache."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        first, second, big = payload(8 * BLOCK, 1), payload(8 * BLOCK, 2), payload(24 * BLOCK, 3)
        for key, data in (("first.bin", first), ("second.bin", second), ("big.bin", big)):
            http_origin.put(key, data)
        async with engine_for(http_origin, small, disk_size="64MB") as engine:
            assert await engine.read("/web/first.bin") == first
            await engine.local_path("/web/first.bin")
            # the filesystem cannot hold both: ENOSPC evicts the older object and the write is retried
            assert (await engine.local_path("/web/second.bin")).read_bytes() == second
            # larger than the whole filesystem: served from the origin stream, not cached
            assert await engine.read("/web/big.bin") == big
        assert engine.metrics.registry.get_sample_value("tessera_cache_bypassed_bytes_total") > 0
        assert (
            engine.metrics.registry.get_sample_value("tessera_cache_evictions_total", {"tier": "disk"}) >= 1
        )
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.anyio
async def test_empty_object_and_unlistable_http_prefix(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    http_origin.put("empty.bin", b"")

    async with engine_for(http_origin, tmp_path) as engine:
        assert await engine.read("/web/empty.bin") == b""
        handle = await engine.open("/web/empty.bin")
        assert [chunk async for chunk in handle.iter_range()] == []
        assert (await engine.local_path("/web/empty.bin")).read_bytes() == b""
        with pytest.raises(OriginUnavailable, match="cannot list"):
            await engine.warm("/web/some/prefix/")


def origin_heads(engine: CacheEngine, mount: str = "web") -> int:
    sample = engine.metrics.registry.get_sample_value(
        "tessera_origin_requests_total", {"origin": mount, "method": "HEAD"}
    )
    return int(sample or 0)


@pytest.mark.anyio
async def test_metadata_stays_in_its_budget_and_cached_objects_need_no_head(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    for i in range(400):
        http_origin.put(f"many/{i:04d}-{'x' * 60}.bin", b"m" * 10)
    http_origin.put("kept.bin", payload(3 * BLOCK))

    settings = {"metadata_size": "32KB", "metadata_ttl": "5m", "index_flush_interval": "100ms"}
    async with engine_for(http_origin, tmp_path, **settings) as engine:
        assert await engine.read("/web/kept.bin") == payload(3 * BLOCK)
        await asyncio.sleep(0.5)  # the blocks land on disk, and the index has the version
        for i in range(400):
            await engine.stat(f"/web/many/{i:04d}-{'x' * 60}.bin")
            figure = engine.metrics.registry.get_sample_value("tessera_metadata_bytes")
            assert figure is not None and 0 < figure <= 32 * 1024
        entries = engine.metrics.registry.get_sample_value("tessera_metadata_entries")
        assert entries is not None and 0 < entries < 100  # most were forgotten
        heads = origin_heads(engine)
        # kept.bin's metadata was forgotten long ago; the index still knows it, so no HEAD
        assert await engine.read("/web/kept.bin") == payload(3 * BLOCK)
        assert origin_heads(engine) == heads
        # an object never cached has nothing in the index: forgotten, it costs a HEAD again
        await engine.stat(f"/web/many/{0:04d}-{'x' * 60}.bin")
        assert origin_heads(engine) == heads + 1


@pytest.mark.anyio
async def test_an_etag_change_drops_the_old_version_at_once(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    http_origin.put("a.bin", payload(4 * BLOCK, seed=1))
    http_origin.put("b.bin", payload(4 * BLOCK, seed=2))
    async with engine_for(http_origin, tmp_path, metadata_ttl="50ms") as engine:
        await engine.local_path("/web/a.bin")
        await engine.local_path("/web/b.bin")
        used = engine.disk_used
        http_origin.put("a.bin", payload(BLOCK, seed=3))
        await asyncio.sleep(0.1)
        assert await engine.read("/web/a.bin") == payload(BLOCK, seed=3)
        await asyncio.sleep(0.2)  # the new version's block lands; the old one is gone
        assert engine.disk_used < used
        assert await engine.read("/web/b.bin") == payload(4 * BLOCK, seed=2)  # untouched
