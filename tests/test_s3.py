"""The engine against a real S3 server (moto's standalone server), counted by a proxy in front of it."""

from __future__ import annotations

import asyncio
import random
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from tessera.cache import CacheEngine
from tessera.errors import VersionChanged
from tests.support.engines import open_engine
from tests.support.moto_server import MotoServer
from tests.support.proxy import CountingProxy

BLOCK = 64 * 1024


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    moto.make_bucket(name)
    return name


def s3_engine(
    tmp_path: Path, proxy: CountingProxy, bucket: str, prefix: str = "pre", **cache: Any
) -> AbstractAsyncContextManager[CacheEngine]:
    """An engine over ``s3://bucket/prefix`` (through ``proxy``) mounted as ``/s3``."""
    mount = {
        "origin": f"s3://{bucket}/{prefix}",
        "endpoint_url": proxy.url.rstrip("/"),
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    return open_engine(tmp_path / "cache", {"s3": mount}, **cache)


@pytest.mark.anyio
async def test_s3_single_flight_200_readers(
    moto: MotoServer, s3_proxy: CountingProxy, bucket: str, tmp_path: Path
) -> None:
    data = random.Random(3).randbytes(48 * BLOCK + 11)
    moto.client().put_object(Bucket=bucket, Key="pre/maps/chart.bin", Body=data)

    async def reader(engine: CacheEngine) -> bytes:
        handle = await engine.open("/s3/maps/chart.bin")
        return b"".join([chunk async for chunk in handle.iter_range()])

    async with s3_engine(tmp_path, s3_proxy, bucket) as engine:
        results = await asyncio.gather(*(reader(engine) for _ in range(200)))
        assert all(r == data for r in results)
    key_path = f"/{bucket}/pre/maps/chart.bin"
    gets = [r for r in s3_proxy.requests(method="GET") if r.path == key_path]
    heads = [r for r in s3_proxy.requests(method="HEAD") if r.path == key_path]
    assert len(heads) == 1
    assert sum(r.bytes_sent for r in gets) == len(data)  # one fetch per block
    # each GET is a ranged GET of whole blocks
    assert all(r.range and r.range.startswith("bytes=") for r in gets)


@pytest.mark.anyio
async def test_s3_if_match_detects_overwrite(
    moto: MotoServer, s3_proxy: CountingProxy, bucket: str, tmp_path: Path
) -> None:
    client = moto.client()
    client.put_object(Bucket=bucket, Key="pre/x.bin", Body=b"a" * (4 * BLOCK))

    async with s3_engine(tmp_path, s3_proxy, bucket, metadata_ttl="200ms") as engine:
        handle = await engine.open("/s3/x.bin")
        assert await handle.pread(0, 10) == b"a" * 10
        client.put_object(Bucket=bucket, Key="pre/x.bin", Body=b"b" * (4 * BLOCK))
        with pytest.raises(VersionChanged):
            await handle.pread(3 * BLOCK, 10)
        await asyncio.sleep(0.25)
        assert await engine.read("/s3/x.bin", 3 * BLOCK, 10) == b"b" * 10


@pytest.mark.anyio
async def test_s3_warm_prefix_and_purge(
    moto: MotoServer, s3_proxy: CountingProxy, bucket: str, tmp_path: Path
) -> None:
    client = moto.client()
    for i in range(5):
        client.put_object(Bucket=bucket, Key=f"pre/set/{i}.bin", Body=bytes([i]) * (3 * BLOCK))
    client.put_object(Bucket=bucket, Key="pre/other.bin", Body=b"z")

    async with s3_engine(tmp_path, s3_proxy, bucket) as engine:
        seen: list[int] = []
        objects, nbytes = await engine.warm("/s3/set/", progress=lambda n, b: seen.append(b))
        assert (objects, nbytes) == (5, 15 * BLOCK)
        assert sum(seen) == 15 * BLOCK
        assert engine.disk_used == 15 * BLOCK
        s3_proxy.reset_log()
        assert await engine.read("/s3/set/2.bin") == bytes([2]) * (3 * BLOCK)
        assert s3_proxy.requests(method="GET") == []
        assert await engine.purge("/s3/set") == 5
        assert engine.disk_used == 0
