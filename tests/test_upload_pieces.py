"""The write path's pieces: a body's small chunks gathered with one copy (``tessera.pieces``), an S3
multipart upload that holds no more than its parts in flight and the one filling, and uploads that
carry their SHA-256 to the store (S3 checks it, and keeps it as the object's checksum)."""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest

from tessera.config import MountSettings, OriginSettings
from tessera.origins import ObjectStoreOrigin, open_origin
from tessera.pieces import PIECE, gathered
from tests.support.moto_server import MotoServer

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024
PART = 5 * MiB


async def chunked(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for size in sizes:
        yield data[start : start + size]
        start += size
    assert start == len(data)


async def test_gathered_joins_small_chunks_and_passes_large_ones_uncopied() -> None:
    data = os.urandom(3 * PIECE + 5000)
    big = data[: 2 * PIECE]
    source = [
        big,
        data[2 * PIECE : 9 * PIECE // 4],
        b"",
        data[9 * PIECE // 4 : 5 * PIECE // 2],
        data[5 * PIECE // 2 :],
    ]
    assert b"".join(source) == data

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in source:
            yield chunk

    pieces = [piece async for piece in gathered(chunks())]
    assert b"".join(pieces) == data
    assert [len(piece) for piece in pieces] == [2 * PIECE, PIECE + 5000]
    assert pieces[0] is big  # arrived whole with nothing pending: handed on as it is


async def test_gathered_sizes_from_64k_chunks() -> None:
    data = os.urandom(5 * PIECE + 1)
    pieces = [piece async for piece in gathered(chunked(data, [64 * 1024] * 80 + [1]))]
    assert b"".join(pieces) == data
    assert [len(piece) for piece in pieces] == [PIECE] * 5 + [1]


def s3_client(moto: MotoServer) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _origin(
    moto: MotoServer, bucket: str, endpoint: str | None = None, checksums: bool = True
) -> ObjectStoreOrigin:
    mount = MountSettings(
        origin=f"s3://{bucket}/p",
        endpoint_url=endpoint or moto.endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        upload_checksums=checksums,
    )
    origin = open_origin(bucket, mount, OriginSettings(), 1 << 20)
    assert isinstance(origin, ObjectStoreOrigin)
    return origin


async def test_multipart_put_holds_parts_in_flight_only(moto: MotoServer) -> None:
    s3_client(moto).create_bucket(Bucket="held-once")
    origin = _origin(moto, "held-once")
    origin.part_size, origin.upload_concurrency = 8 * MiB, 1
    total, digest = 4 * origin.part_size + 12345, hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:  # a request body's 64 KiB chunks, made as they are asked for
        sent = 0
        while sent < total:
            chunk = os.urandom(min(64 * 1024, total - sent))
            digest.update(chunk)
            sent += len(chunk)
            yield chunk

    tracemalloc.start()
    try:
        info = await origin.put("big", body())
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # obstore keeps the pieces it is given (no copy) until their part is stored: parts in flight and
    # the one filling, plus a piece being gathered. The former feed also held the first part, read
    # ahead into a buffer and copied, until the whole upload was done.
    assert peak < origin.part_size * (origin.upload_concurrency + 1) + 2 * MiB, peak
    assert info.size == total
    read = await origin.read_range("big", 0, total, if_match=info.etag)
    assert hashlib.sha256(b"".join([chunk async for chunk in read.chunks])).digest() == digest.digest()


async def test_multipart_uploads_carry_their_parts_sha256_to_the_store(moto: MotoServer) -> None:
    length = 2 * PART + 4321
    s3 = s3_client(moto)
    s3.create_bucket(Bucket="summed")
    origin = _origin(moto, "summed")
    origin.part_size = PART
    data = os.urandom(length)
    await origin.put("k", chunked(data, [64 * 1024] * (length // (64 * 1024)) + [length % (64 * 1024)]))
    head = s3.head_object(Bucket="summed", Key="p/k", ChecksumMode="ENABLED")
    # The parts' SHA-256s, combined: S3's composite checksum (moto keeps none for a single PUT
    # that does not name the algorithm in an SDK header, although obstore sends that PUT's digest).
    digests = b"".join(
        hashlib.sha256(data[start : start + PART]).digest() for start in range(0, length, PART)
    )
    composite = base64.b64encode(hashlib.sha256(digests).digest()).decode()
    assert head["ChecksumSHA256"].removesuffix("-3") == composite  # S3 adds the part count, moto not


async def test_checksums_can_be_left_out_for_stores_that_refuse_them(moto: MotoServer) -> None:
    length = 2 * PART + 99
    s3 = s3_client(moto)
    s3.create_bucket(Bucket="plain")
    origin = _origin(moto, "plain", checksums=False)
    origin.part_size = PART
    data = os.urandom(length)
    await origin.put("k", chunked(data, [64 * 1024] * (length // (64 * 1024)) + [length % (64 * 1024)]))
    head = s3.head_object(Bucket="plain", Key="p/k", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head
    assert s3.get_object(Bucket="plain", Key="p/k")["Body"].read() == data
