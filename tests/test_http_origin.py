"""Plain HTTP origins: a server that ignores ``Range`` (``python -m http.server``) and one that honours it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tessera.config import OriginSettings
from tessera.errors import VersionChanged
from tessera.origins.http import HttpOrigin
from tests.support.moto_server import free_port
from tests.support.origin_server import ObjectHTTPServer
from tests.support.tessera_server import tessera_server, write_config

SMALL = bytes(range(256)) * 800  # 200 KiB: four 64 KiB blocks, under small_object_size
BIG = bytes(range(251)) * 4200  # about 1 MiB: over small_object_size


@dataclass
class PlainServer:
    """``python -m http.server`` serving ``folder``; it logs one line per request to ``log``."""

    url: str
    folder: Path
    log: Path

    def gets(self, name: str) -> int:
        return sum(f'"GET /{name} ' in line for line in self.log.read_text().splitlines())


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[PlainServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "six.txt").write_bytes(b"hello\n")
    (folder / "small.bin").write_bytes(SMALL)
    (folder / "big.bin").write_bytes(BIG)
    (folder / "maps").mkdir()
    (folder / "maps" / "a.txt").write_bytes(b"inside maps\n")
    port, log = free_port(), tmp_path / "http-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", folder],
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.head(url + "six.txt")
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield PlainServer(url, folder, log)
    finally:
        process.terminate()
        process.wait(timeout=10)


def serve_config(tmp_path: Path, origin_url: str) -> tuple[Path, int]:
    return write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
block_size = "64KB"
small_object_size = "256KB"
metadata_ttl = "0s"
[origin]
retries = 1
backoff = "10ms"
[mounts.web]
origin = "{origin_url}"
""",
        server="",
    )


def test_a_server_without_range_support_serves_small_objects(
    tmp_path: Path, plain_server: PlainServer
) -> None:
    config, port = serve_config(tmp_path, plain_server.url)
    with tessera_server(config, port, tmp_path / "serve.log") as base, httpx.Client(base_url=base) as client:
        six = client.get("/api/v1/files/web/six.txt")
        assert (six.status_code, six.content) == (200, b"hello\n")
        head = client.head("/api/v1/files/web/small.bin")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(SMALL))
        assert head.headers["etag"].startswith('W/"')  # http.server sends no ETag: size + Last-Modified

        # Many readers of a new object, asking for different ranges: one whole GET, sliced for each.
        results: dict[int, httpx.Response] = {}

        def read(first: int) -> None:
            with httpx.Client(base_url=base) as own:
                headers = {"Range": f"bytes={first}-{first + 70_000}"}
                results[first] = own.get("/api/v1/files/web/small.bin", headers=headers)

        threads = [threading.Thread(target=read, args=(first,)) for first in range(0, 120_000, 10_000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for first, response in results.items():
            assert response.status_code == 206
            assert response.content == SMALL[first : first + 70_001]
        assert plain_server.gets("small.bin") == 1
        assert client.get("/api/v1/files/web/small.bin").content == SMALL

        # A new version (other size) is seen, whole, through the weak tag.
        (plain_server.folder / "six.txt").write_bytes(b"hello, world\n")
        assert client.get("/api/v1/files/web/six.txt").content == b"hello, world\n"


def test_a_directory_page_is_not_an_object(tmp_path: Path, plain_server: PlainServer) -> None:
    """``http.server`` answers ``maps`` with a redirect to ``maps/`` and an HTML index: a directory."""
    config, port = serve_config(tmp_path, plain_server.url)
    with tessera_server(config, port, tmp_path / "serve.log") as base, httpx.Client(base_url=base) as client:
        directory = client.get("/api/v1/files/web/maps")
        assert directory.status_code == 404 and "directory" in directory.json()["detail"]
        assert client.get("/api/v1/files/web/maps/a.txt").content == b"inside maps\n"


def test_a_big_object_on_a_server_without_range_support_is_a_clear_502(
    tmp_path: Path, plain_server: PlainServer
) -> None:
    config, port = serve_config(tmp_path, plain_server.url)
    log = tmp_path / "serve.log"
    with tessera_server(config, port, log) as base:
        response = httpx.get(f"{base}/api/v1/files/web/big.bin", headers={"Range": "bytes=0-99"})
        assert response.status_code == 502
        assert "does not support ranged requests" in response.json()["detail"]
        assert "127.0.0.1" not in response.text  # the origin's URL stays in the log
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert plain_server.gets("big.bin") == 1  # not retried: asking again cannot help
    assert f"{plain_server.url}big.bin" in log.read_text()


@pytest.mark.anyio
async def test_a_weak_tag_is_checked_against_the_response(plain_server: PlainServer) -> None:
    origin = HttpOrigin("web", plain_server.url, OriginSettings(), whole_limit=1 << 20)

    info = await origin.stat("small.bin")
    assert info.size == len(SMALL) and info.etag.startswith('W/"')
    body = await origin.read_range("small.bin", 100, 300, info.etag)
    assert b"".join([chunk async for chunk in body.chunks]) == SMALL[100:300]
    (plain_server.folder / "small.bin").write_bytes(SMALL[:-1])  # another size, maybe the same second
    with pytest.raises(VersionChanged):
        await origin.read_range("small.bin", 0, 100, info.etag)


@pytest.mark.anyio
async def test_a_server_honouring_range_and_if_match(http_origin: ObjectHTTPServer) -> None:
    http_origin.put("dir/obj.bin", BIG)
    origin = HttpOrigin("web", http_origin.url, OriginSettings(), whole_limit=1024)

    info = await origin.stat("dir/obj.bin")
    assert info.size == len(BIG) and info.etag == http_origin.etag("dir/obj.bin")
    body = await origin.read_range("dir/obj.bin", 500_000, 700_000, info.etag, chunk_size=65536)
    assert (body.start, body.end) == (500_000, 700_000)
    assert b"".join([chunk async for chunk in body.chunks]) == BIG[500_000:700_000]
    http_origin.put("dir/obj.bin", BIG[::-1])
    with pytest.raises(VersionChanged):
        await origin.read_range("dir/obj.bin", 0, 100, info.etag)
    ranged = [record for record in http_origin.log.select("GET") if record.status == 206]
    assert ranged and all(record.range for record in ranged)
