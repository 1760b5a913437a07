"""``ObjectStoreOrigin.put`` against moto: a body within one part is one PUT, a longer one a multipart
upload; either way the version it answers is the one the store holds (no HEAD needed after it)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import boto3
import pytest

from tessera.config import MountSettings, OriginSettings
from tessera.origins import ObjectStoreOrigin, open_origin
from tests.support.moto_server import MotoServer
from tests.support.proxy import CountingProxy

pytestmark = pytest.mark.anyio
PART = 5 * 1024 * 1024


async def pieces(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("length", [0, 100_000, PART, PART + 1, 2 * PART + 12345])
async def test_put_answers_the_stored_version(moto: MotoServer, s3_proxy: CountingProxy, length: int) -> None:
    boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="puts")
    mount = MountSettings(
        origin="s3://puts/p",
        endpoint_url=s3_proxy.endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    origin = open_origin("puts", mount, OriginSettings(), 1 << 20)
    assert isinstance(origin, ObjectStoreOrigin)
    origin.part_size = PART
    data = os.urandom(length)
    before = len(s3_proxy.requests())
    info = await origin.put(f"k{length}", pieces(data))
    methods = [r.method for r in s3_proxy.requests()[before:]]
    assert methods == (["PUT"] if length <= PART else ["POST", *["PUT"] * (length // PART + 1), "POST"])
    stat = await origin.stat(f"k{length}")
    assert (info.size, info.etag) == (stat.size, stat.etag) == (length, stat.etag)
    if length:  # (a ranged GET of an empty object is not a thing to ask)
        body = await origin.read_range(f"k{length}", 0, length, if_match=info.etag)
        assert b"".join([chunk async for chunk in body.chunks]) == data
