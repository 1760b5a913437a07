"""``tessera serve`` as a real process, and the other CLI commands, driven as a user's scripts would."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.moto_server import free_port
from tests.support.origin_server import ObjectHTTPServer
from tests.support.tessera_server import TESSERA, tessera_server

DATA = bytes(range(256)) * 4096  # 1 MiB


def write_config(tmp_path: Path, origin_url: str) -> Path:
    files = tmp_path / "files"
    (files / "docs").mkdir(parents=True)
    (files / "docs" / "one.bin").write_bytes(DATA)
    (files / "hello.txt").write_text("hello\n")
    config = tmp_path / "tessera.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {free_port()}
token = "s3cret"
[cache]
dir = "{tmp_path / "cache"}"
disk_size = "64MB"
block_size = "256KB"
[origin]
retries = 1
backoff = "10ms"
[mounts.local]
origin = "file://{files}"
[mounts.web]
origin = "{origin_url}"
"""
    )
    return config


@pytest.fixture
def server(tmp_path: Path, http_origin: ObjectHTTPServer) -> Iterator[tuple[str, Path]]:
    config = write_config(tmp_path, http_origin.url)
    port = int(config.read_text().split("port = ")[1].split()[0])
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        yield base, config


def test_files_api_ranges_and_etags(server: tuple[str, Path]) -> None:
    base, _ = server
    url = f"{base}/api/v1/files/local/docs/one.bin"
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == DATA
    etag = whole.headers["etag"]
    assert whole.headers["accept-ranges"] == "bytes"

    part = httpx.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == DATA[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(DATA)}"

    suffix = httpx.get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == DATA[-10:]

    beyond = httpx.get(url, headers={"Range": f"bytes={len(DATA)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(DATA)}"

    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    stale = httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == len(DATA)

    head = httpx.head(url)
    assert (
        head.status_code == 200 and head.headers["content-length"] == str(len(DATA)) and head.content == b""
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("local/nope.bin", 404),
        ("nomount/x", 404),
        ("local/docs/..%2F..%2Fetc%2Fpasswd", 400),
        ("local/a%00b", 400),
        ("local/" + "x" * 300, 400),
        ("local", 400),
    ],
)
def test_bad_paths_get_clear_errors(server: tuple[str, Path], path: str, status: int) -> None:
    base, _ = server
    response = httpx.get(f"{base}/api/v1/files/{path}")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]


def test_origin_failure_is_502_and_server_recovers(
    server: tuple[str, Path], http_origin: ObjectHTTPServer
) -> None:
    base, _ = server
    http_origin.put("x.bin", DATA)
    assert httpx.head(f"{base}/api/v1/files/web/x.bin").status_code == 200
    http_origin.fail_next(10, status=503)
    response = httpx.get(f"{base}/api/v1/files/web/x.bin")
    assert response.status_code == 502
    assert response.json()["error"] == "OriginUnavailable"
    http_origin.clear_faults()
    assert httpx.get(f"{base}/api/v1/files/web/x.bin").content == DATA


def test_metrics_and_openapi(server: tuple[str, Path]) -> None:
    base, _ = server
    httpx.get(f"{base}/api/v1/files/local/hello.txt")
    httpx.get(f"{base}/api/v1/files/local/hello.txt")
    metrics = httpx.get(f"{base}/metrics").text
    for name in (
        "tessera_origin_requests_total",
        "tessera_origin_bytes_total",
        "tessera_cache_hits_total",
        "tessera_cache_misses_total",
        "tessera_cache_bytes",
    ):
        assert f"\n{name}" in metrics
    assert 'tessera_origin_bytes_total{origin="local"} 6.0' in metrics
    assert "/api/v1/files/{path}" in httpx.get(f"{base}/openapi.json").json()["paths"]


def test_cli_talks_to_running_server(server: tuple[str, Path]) -> None:
    _, config = server
    out = subprocess.run(
        [TESSERA, "cat", "/local/hello.txt", "--config", str(config)], capture_output=True, check=True
    )
    assert out.stdout == b"hello\n"
    stats = subprocess.run(
        [TESSERA, "stats", "--json", "--config", str(config)], capture_output=True, check=True, text=True
    )
    assert json.loads(stats.stdout)["tiers"]["disk"]["bytes"] == 4096  # what the 6 bytes take on disk
    warmed = subprocess.run([TESSERA, "warm", "/local/docs/", "--config", str(config)], capture_output=True)
    assert warmed.returncode == 0 and b"warmed 1 objects" in warmed.stderr, warmed.stderr
    purged = subprocess.run([TESSERA, "purge", "/local/", "--config", str(config)], capture_output=True)
    assert purged.returncode == 0 and b"purged 2" in purged.stderr, purged.stderr


def test_write_endpoints_need_the_token(server: tuple[str, Path]) -> None:
    base, _ = server
    url = f"{base}/api/v1/cache/purge"
    assert httpx.post(url, json={"path": "/local/"}).status_code == 401
    assert (
        httpx.post(url, json={"path": "/local/"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    ok = httpx.post(url, json={"path": "/local/"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json() == {"purged": 0}
    auth = {"Authorization": "Bearer s3cret"}
    pinned = httpx.post(f"{base}/api/v1/cache/pin", json={"path": "/local/docs/"}, headers=auth)
    assert pinned.status_code == 200 and pinned.json() == {"objects": 1, "bytes": len(DATA)}
    stats = httpx.get(f"{base}/api/v1/cache/stats").json()
    assert stats["pinned"]["bytes"] == len(DATA)
    unpinned = httpx.post(f"{base}/api/v1/cache/unpin", json={"path": "/local/docs/"}, headers=auth)
    assert unpinned.json() == {"unpinned": 1}
    assert httpx.post(f"{base}/api/v1/cache/pin", json={"path": "/local/docs/"}).status_code == 401
    bad = httpx.post(url, json={"path": "/local/../x"}, headers={"Authorization": "Bearer s3cret"})
    assert bad.status_code == 400
    assert httpx.get(f"{base}/no/such/route").json()["error"] == "NotFound"


def test_cli_commands_on_the_cache_directory(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://example.invalid/")
    env = {**os.environ, "TESSERA_CONFIG": str(config)}

    def tessera(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([TESSERA, *args], capture_output=True, env=env, timeout=60)

    assert tessera("cat", "/local/docs/one.bin").stdout == DATA
    warmed = tessera("warm", "/local/")
    assert warmed.returncode == 0, warmed.stderr
    assert b"warmed 2 objects" in warmed.stderr
    figures = json.loads(tessera("stats", "--json").stdout)
    assert figures["tiers"]["disk"]["bytes"] == len(DATA) + 4096  # disk allocation, 4 KiB units
    assert figures["top"][0]["key"] == "docs/one.bin"
    assert b"purged 1" in tessera("purge", "/local/docs").stderr
    assert json.loads(tessera("stats", "--json").stdout)["tiers"]["disk"]["bytes"] == 4096
    missing = tessera("cat", "/local/missing")
    assert missing.returncode == 1 and missing.stderr.startswith(b"error: no object")
    help_text = tessera("--help").stdout.decode()
    for command in ("serve", "mount", "cat", "warm", "pin", "unpin", "purge", "stats"):
        assert command in help_text
