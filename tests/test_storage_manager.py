"""The write path's core on a local folder: streamed, atomic, checked, and coherent with the cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.errors import ChecksumMismatch, InvalidPath, ObjectExists, ObjectNotFound, UploadTooLarge
from tessera.storage import Expected, StorageManager
from tests.support.engines import make_settings, open_engine

pytestmark = pytest.mark.anyio


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def leftovers(root: Path) -> list[str]:
    return [name for name in os.listdir(root) if name.endswith(".tmp")]


async def test_a_write_is_seen_at_once_by_a_cached_reader(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "a.bin").write_bytes(b"old" * 1000)
    mounts = {"m": {"origin": f"file://{root}"}}
    async with open_engine(tmp_path / "cache", mounts, metadata_ttl="1h") as engine:
        storage = StorageManager(engine, make_settings(tmp_path / "cache", mounts))
        assert await engine.read("/m/a.bin") == b"old" * 1000
        stored = await storage.put("/m/a.bin", pieces(b"new", b"!" * 5000))
        assert stored.size == 5003
        assert stored.sha256 == hashlib.sha256(b"new" + b"!" * 5000).hexdigest()
        assert await engine.read("/m/a.bin") == b"new" + b"!" * 5000
        await storage.delete("/m/a.bin")
        with pytest.raises(ObjectNotFound):
            await engine.read("/m/a.bin")
        await storage.delete("/m/a.bin")  # idempotent
    assert leftovers(root) == []


async def test_failed_checks_store_nothing(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    mounts = {"m": {"origin": f"file://{root}"}}
    async with open_engine(tmp_path / "cache", mounts) as engine:
        settings = make_settings(tmp_path / "cache", mounts)
        settings.storage.max_upload_size = 10_000
        storage = StorageManager(engine, settings)
        wrong = Expected.from_headers(base64.b64encode(hashlib.md5(b"other").digest()).decode(), None)
        with pytest.raises(ChecksumMismatch):
            await storage.put("/m/x", pieces(b"data"), expected=wrong)
        with pytest.raises(UploadTooLarge):
            await storage.put("/m/x", pieces(b"x" * 6000, b"y" * 6000))
        with pytest.raises(UploadTooLarge):
            await storage.put("/m/x", pieces(b""), size=10_001)
        with pytest.raises(ChecksumMismatch):
            await storage.put("/m/x", pieces(b"abc"), size=4)
        assert not (root / "x").exists()
        right = Expected.from_headers(None, hashlib.sha256(b"data").hexdigest())
        await storage.put("/m/sub/x", pieces(b"data"), expected=right, create_only=True)
        with pytest.raises(ObjectExists):
            await storage.put("/m/sub/x", pieces(b"other"), create_only=True)
        assert (root / "sub" / "x").read_bytes() == b"data"
        assert leftovers(root) == [] and leftovers(root / "sub") == []


async def test_a_reader_in_flight_finishes_on_the_version_it_started(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    old = os.urandom(64 * 1024 * 8)
    (root / "a.bin").write_bytes(old)
    mounts = {"m": {"origin": f"file://{root}"}}
    async with open_engine(tmp_path / "cache", mounts, metadata_ttl="1h") as engine:
        storage = StorageManager(engine, make_settings(tmp_path / "cache", mounts))
        assert await engine.read("/m/a.bin") == old
        handle = await engine.open("/m/a.bin")
        stream = handle.iter_range(0, len(old))
        first = await anext(stream)
        await storage.put("/m/a.bin", pieces(b"new"))
        rest = b"".join([chunk async for chunk in stream])
        assert first + rest == old
        assert await engine.read("/m/a.bin") == b"new"
        await engine.read("/m/a.bin")
        versions = [entry for entry in (await engine.stats())["top"] if entry["key"] == "a.bin"]
    assert [entry["size"] for entry in versions] == [3]  # the old one went with its last reader


async def test_usage_by_origin_counts_what_the_disk_holds(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(200_000))
    (root / "b.bin").write_bytes(os.urandom(300_000))
    mounts = {"m": {"origin": f"file://{root}"}}
    async with open_engine(tmp_path / "cache", mounts, index_flush_interval="50ms") as engine:
        for name in ("a.bin", "b.bin"):
            await engine.local_path(f"/m/{name}")
        await asyncio.sleep(0.5)  # flushed: the figures now come from the index's scan
        versions, on_disk = (await engine.usage_by_origin())[engine.namespace.origin("m").identity]
        assert versions == 2 and 500_000 <= on_disk < 500_000 + 2 * 64 * 1024  # whole blocks
    async with open_engine(tmp_path / "cache", mounts) as engine:  # after a restart, from the index
        await engine.loaded.wait()
        assert (await engine.usage_by_origin())[engine.namespace.origin("m").identity] == (2, on_disk)


async def test_an_upload_in_progress_is_never_an_object(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    mounts = {"m": {"origin": f"file://{root}"}}
    arrived, finish = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        arrived.set()
        await finish.wait()
        yield b"y"

    async with open_engine(tmp_path / "cache", mounts) as engine:
        storage = StorageManager(engine, make_settings(tmp_path / "cache", mounts))
        upload = asyncio.create_task(storage.put("/m/big.bin", slow()))
        await arrived.wait()
        await asyncio.sleep(0.3)  # past the local origin's settle time: the bytes sit still on disk
        (temporary,) = leftovers(root)
        origin = engine.namespace.origin("m")
        assert [info.key async for info in origin.list("")] == []
        with pytest.raises(ObjectNotFound):
            await engine.read(f"/m/{temporary}")
        finish.set()
        assert (await upload).size == 100_001
        assert [info.key async for info in origin.list("")] == ["big.bin"]

        # One a crash left behind goes with a listing of its folder, once it is an hour old.
        stale, fresh = root / f".a.bin.{'0' * 32}.tmp", root / f".b.bin.{'1' * 32}.tmp"
        stale.write_bytes(b"half")
        fresh.write_bytes(b"half")
        os.utime(stale, (0, time.time() - 7200))
        assert [info.key async for info in origin.list("")] == ["big.bin"]
        assert not stale.exists() and fresh.exists()
        with pytest.raises(InvalidPath):
            await storage.put(f"/m/.c.{'2' * 32}.tmp", pieces(b"no"))
