"""A process killed with SIGKILL in the middle of fills restarts into a consistent cache."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.engines import open_engine
from tests.support.origin_server import ObjectHTTPServer

BLOCK = 64 * 1024
DATA = os.urandom(64 * BLOCK)

FILLER = textwrap.dedent(
    """
    import asyncio, sys
    from tests.support.engines import open_engine

    async def main():
        mounts = {"web": {"origin": sys.argv[2]}}
        # killed inside this block (the reads stall for 30 s): the engine never closes
        async with open_engine(sys.argv[1], mounts, index_flush_interval="1h") as engine:
            handle = await engine.open("/web/big.bin")
            reads = [asyncio.ensure_future(handle.pread(i * 8 * BLOCK, 8 * BLOCK)) for i in range(8)]
            while engine.disk_used < 20 * BLOCK:
                await asyncio.sleep(0.01)
            print("filling", engine.disk_used, flush=True)
            await asyncio.gather(*reads)

    asyncio.run(main())
    """
).replace("BLOCK", str(BLOCK))


def allocated(directory: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in (directory / "data").rglob("*") if f.is_file())


@pytest.mark.anyio
async def test_sigkill_mid_fill_restarts_consistent(http_origin: ObjectHTTPServer, tmp_path: Path) -> None:
    http_origin.put("big.bin", DATA)
    cache_dir = tmp_path / "cache"
    mounts = {"web": {"origin": http_origin.url}}

    async with open_engine(cache_dir, mounts) as engine:
        assert await engine.read("/web/big.bin", 0, 16 * BLOCK) == DATA[: 16 * BLOCK]
    # cleanly closed: blocks 0..15 are in the index

    # The second process fills more blocks, but its index is never flushed, and each GET stalls
    # half-way: it is killed with fills in flight and bytes on disk that no index knows.
    for _ in range(8):
        http_origin.stall_after(4 * BLOCK, 30)
    process = subprocess.Popen(
        [sys.executable, "-c", FILLER, str(cache_dir), http_origin.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(b"filling"), process.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    http_origin.clear_faults()
    assert allocated(cache_dir) > 16 * BLOCK  # the killed process did write more than the index holds

    # a third engine on the directory, in this process: the restart
    async with open_engine(cache_dir, mounts) as engine:
        assert engine.disk_used == 16 * BLOCK  # usage from the index: only what it vouches for
        await asyncio.wait_for(engine.verified.wait(), 10)
        assert abs(allocated(cache_dir) - engine.disk_used) <= 8 * 4096  # the disk agrees
        http_origin.reset_log()
        assert await engine.read("/web/big.bin") == DATA  # every block matches the origin
        # only the blocks the index did not vouch for were fetched again
        assert http_origin.bytes_sent("big.bin") == len(DATA) - 16 * BLOCK
