"""Early delivery: a reader of part of a block in flight gets its bytes once that part has arrived.

The engine runs against a real HTTP origin on 127.0.0.1 with 1 MiB blocks; the origin's fault
injection stalls, truncates and resets bodies part-way through a block.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from tessera.cache import CacheEngine
from tessera.cache.partial import PartialBlock
from tessera.errors import OriginTimeout, OriginUnavailable
from tests.support.engines import open_engine
from tests.support.origin_server import ObjectHTTPServer

MB = 1024 * 1024
KB = 1024


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def engine_for(origin: ObjectHTTPServer, tmp_path: Path) -> AbstractAsyncContextManager[CacheEngine]:
    return open_engine(tmp_path / "cache", {"web": {"origin": origin.url}}, block_size="1MB")


def ranged_gets(origin: ObjectHTTPServer, key: str) -> list[str | None]:
    return [r.range for r in origin.requests(method="GET", key=key) if r.status in (200, 206)]


async def settled_bytes(origin: ObjectHTTPServer, key: str, expected: int) -> int:
    """Bytes the origin sent for ``key`` once it has logged ``expected`` (bodies are logged at their end)."""
    for _ in range(200):
        if origin.bytes_sent(key) >= expected:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    return origin.bytes_sent(key)


@pytest.mark.anyio
async def test_partial_block_serves_each_range_once_it_has_arrived() -> None:
    data = bytes(range(100))

    block = PartialBlock(100)
    head = asyncio.ensure_future(block.read(10, 20))
    tail = asyncio.ensure_future(block.read(90, 100))
    across = asyncio.ensure_future(block.read(40, 60))
    await asyncio.sleep(0)
    block.write(50, data[50:])  # the part a split fill fetches first
    await asyncio.sleep(0)
    assert tail.done() and tail.result() == data[90:]
    assert not head.done() and not across.done()
    block.write(0, data[:30])
    await asyncio.sleep(0)
    assert head.result() == data[10:20]
    assert not across.done() and not block.complete
    block.write(0, data[:50])  # a retried GET writes the same bytes again, completing the block
    await asyncio.sleep(0)
    assert block.complete and not across.done()  # left to the landing of the whole block
    landed = block.whole()
    block.close(landed)
    assert await across == data[40:60]
    assert await block.read(0, 100) == data == landed

    failing = PartialBlock(100)
    failing.write(0, data[:10])
    early = await failing.read(0, 10)
    late = asyncio.ensure_future(failing.read(5, 50))
    await asyncio.sleep(0)
    failing.close(None, OriginUnavailable("gone"))
    assert early == data[:10]
    with pytest.raises(OriginUnavailable):
        await late


@pytest.mark.anyio
async def test_a_reader_is_served_before_its_block_has_arrived(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(4 * MB)
    http_origin.put("big.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        handle = await engine.open("/web/big.bin")
        http_origin.stall_after(256 * KB, 3.0)  # the block's GET stops for 3 s after 256 KiB
        started = time.monotonic()
        assert await handle.pread(MB + 1000, 64 * KB) == data[MB + 1000 : MB + 1000 + 64 * KB]
        assert time.monotonic() - started < 2.0, "the reader waited for the whole block"
        # A second reader of the same block, past the stall: served when its bytes arrive. (Another
        # handle: for this one the read would look sequential and fetch ahead.)
        late = MB + 900 * KB
        other = await engine.open("/web/big.bin")
        assert await other.pread(late, 64 * KB) == data[late : late + 64 * KB]
        assert time.monotonic() - started >= 2.5
        assert ranged_gets(http_origin, "big.bin") == [f"bytes={MB}-{2 * MB - 1}"]
        assert await settled_bytes(http_origin, "big.bin", MB) == MB


@pytest.mark.anyio
async def test_reads_at_start_middle_end_and_across_blocks(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    size = 5 * MB + 123  # a short last block
    data = payload(size)
    http_origin.put("big.bin", data)
    reads = [
        (0, 64 * KB),  # start of block 0
        (2 * MB + 600 * KB, 64 * KB),  # middle of block 2
        (MB - 64 * KB, 64 * KB),  # end of block 0 (cached by now)
        (4 * MB - 10 * KB, 20 * KB),  # across blocks 3 and 4
        (size - 100, 100),  # end of the object
        (size - 50, 500),  # past it: cut at the end
    ]

    async with engine_for(http_origin, tmp_path) as engine:
        for offset, length in reads:
            handle = await engine.open("/web/big.bin")  # a fresh handle: no read looks sequential
            assert await handle.pread(offset, length) == data[offset : offset + length], (offset, length)
        # Every block was fetched once, whole, however the GETs were cut.
        assert await settled_bytes(http_origin, "big.bin", size - MB) == size - MB
        # The middle read's block came as two GETs, the reader's part first; the same bytes.
        gets = {r.range: r.time for r in http_origin.requests(method="GET", key="big.bin")}
        first, second = (
            f"bytes={2 * MB + 600 * KB}-{3 * MB - 1}",
            f"bytes={2 * MB}-{2 * MB + 600 * KB - 1}",
        )
        assert gets[first] <= gets[second]
        assert await handle.pread(0, size) == data
        assert await settled_bytes(http_origin, "big.bin", size) == size


@pytest.mark.anyio
async def test_a_truncated_body_is_resumed_and_early_bytes_are_right(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(3 * MB)
    http_origin.put("big.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        handle = await engine.open("/web/big.bin")
        http_origin.short_body(nbytes=300 * KB)  # the first GET ends cleanly after 300 KiB
        offsets = [MB + 500 * KB, MB + 600 * KB, MB + 950 * KB, MB + 100 * KB, MB]
        got = await asyncio.gather(*(handle.pread(offset, 64 * KB) for offset in offsets))
        for offset, chunk in zip(offsets, got, strict=True):
            assert chunk == data[offset : offset + 64 * KB], offset
        assert await handle.pread(MB, MB) == data[MB : 2 * MB]
        assert await handle.pread(0, 3 * MB) == data


@pytest.mark.anyio
async def test_a_failing_origin_fails_waiting_readers_but_not_served_ones(
    http_origin: ObjectHTTPServer, tmp_path: Path
) -> None:
    data = payload(3 * MB)
    http_origin.put("big.bin", data)

    async with engine_for(http_origin, tmp_path) as engine:
        handle = await engine.open("/web/big.bin")
        http_origin.reset_after(100 * KB, count=4)  # the first try and all 3 retries break
        other = await engine.open("/web/big.bin")  # not a sequential reader: no readahead GETs
        early = asyncio.ensure_future(handle.pread(MB + 10 * KB, 20 * KB))
        late = asyncio.ensure_future(other.pread(MB + 500 * KB, 20 * KB))
        assert await early == data[MB + 10 * KB : MB + 30 * KB]
        with pytest.raises((OriginUnavailable, OriginTimeout)):
            await late
        assert http_origin.faults.pending() == (0, 0)
        # The origin is healthy again: the block is fetched afresh and served whole.
        assert await handle.pread(MB + 500 * KB, 20 * KB) == data[MB + 500 * KB : MB + 520 * KB]
        assert await handle.pread(MB, MB) == data[MB : 2 * MB]


@pytest.mark.anyio
async def test_concurrent_readers_of_blocks_in_flight(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    data = payload(4 * MB)
    http_origin.put("big.bin", data)
    rng = random.Random(3)
    reads = [(rng.randrange(MB, 3 * MB - 64 * KB), rng.randrange(1, 64 * KB)) for _ in range(40)]

    async with engine_for(http_origin, tmp_path) as engine:
        # A handle per read: none looks sequential, so nothing is fetched ahead.
        handles = [await engine.open("/web/big.bin") for _ in reads]
        http_origin.delay = 0.05  # every GET waits before its headers: the readers pile up
        got = await asyncio.gather(
            *(handle.pread(offset, length) for handle, (offset, length) in zip(handles, reads, strict=True))
        )
        for (offset, length), chunk in zip(reads, got, strict=True):
            assert chunk == data[offset : offset + length]
        # Blocks 1 and 2, each fetched once (in one or two GETs each): no byte twice.
        assert await settled_bytes(http_origin, "big.bin", 2 * MB) == 2 * MB
