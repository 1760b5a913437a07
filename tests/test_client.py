"""The blocking Python API: a seekable file object and local_path, over a local folder origin."""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

from tessera.client import Tessera
from tests.support.engines import make_settings

BLOCK = 64 * 1024


def test_cached_file_is_a_seekable_binary_file(tmp_path: Path) -> None:
    folder = tmp_path / "origin"
    folder.mkdir()
    data = os.urandom(20 * BLOCK + 17)
    (folder / "obj.bin").write_bytes(data)
    settings = make_settings(tmp_path / "cache", {"local": {"origin": f"file://{folder}"}})
    with Tessera(settings) as cache:
        with cache.open("/local/obj.bin") as f:
            assert f.size == len(data)
            assert f.read(10) == data[:10]
            f.seek(3 * BLOCK - 5)
            assert f.read(10) == data[3 * BLOCK - 5 : 3 * BLOCK + 5]
            f.seek(-7, io.SEEK_END)
            assert f.read() == data[-7:]
            assert f.read(5) == b""
            f.seek(0)
            buffered = io.BufferedReader(f, buffer_size=BLOCK)
            assert buffered.read() == data
        # now fully cached: reads go straight to the file, and still return the right bytes
        with cache.open("/local/obj.bin") as f:
            f.seek(12345)
            assert f.read(BLOCK) == data[12345 : 12345 + BLOCK]
        path = cache.local_path("/local/obj.bin")
        assert path.read_bytes() == data
        # the disk tier counts what the filesystem allocates: the last 17-byte block takes 4 KiB
        assert cache.engine.disk_used == 20 * BLOCK + 4096


def test_many_threads_share_one_cold_object(tmp_path: Path) -> None:
    folder = tmp_path / "origin"
    folder.mkdir()
    data = os.urandom(32 * BLOCK)
    (folder / "obj.bin").write_bytes(data)
    settings = make_settings(tmp_path / "cache", {"local": {"origin": f"file://{folder}"}})
    results: list[bytes] = []
    with Tessera(settings) as cache:

        def reader() -> None:
            with cache.open("/local/obj.bin") as f:
                results.append(f.read())

        threads = [threading.Thread(target=reader) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        registry = cache.engine.metrics.registry
        assert registry.get_sample_value("tessera_origin_bytes_total", {"origin": "local"}) == len(data)
    assert results == [data] * 16


def test_open_file_survives_eviction(tmp_path: Path) -> None:
    folder = tmp_path / "origin"
    folder.mkdir()
    data = os.urandom(8 * BLOCK)
    (folder / "obj.bin").write_bytes(data)
    settings = make_settings(tmp_path / "cache", {"local": {"origin": f"file://{folder}"}})
    with Tessera(settings) as cache:
        cache.local_path("/local/obj.bin")
        with cache.open("/local/obj.bin") as f:
            assert f.read(BLOCK) == data[:BLOCK]
            cache.purge("/local/obj.bin")
            shutil.rmtree(tmp_path / "cache" / "data")
            # evicted and even deleted: the version is fetched again, never read as zeros
            assert f.read() == data[BLOCK:]
