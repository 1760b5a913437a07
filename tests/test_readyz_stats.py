"""``/readyz`` (origins, cache directories, registered checks) and ``GET /api/v1/stats`` (per mount and
per tier) against real servers; the pieces they are made of on their own."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tessera.config import load_settings
from tessera.web.app import create_app
from tessera.web.readiness import READY_TTL, NotReady, ReadyChecks, ready_checks
from tessera.web.stats import quantile
from tests.support.moto_server import MotoServer
from tests.support.tessera_server import tessera_server, write_config

TOKEN = "s3cret"
CACHE = '[cache]\ndir = "{cache}"\ndisk_size = "64MB"\nblock_size = "64KB"\nsmall_object_size = "64KB"\n'


def s3_mount(moto: MotoServer, bucket: str) -> str:
    return (
        f'[mounts.s3]\norigin = "s3://{bucket}/pre"\nendpoint_url = "{moto.endpoint}"\nregion = "us-east-1"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n'
        '[origin]\nretries = 0\nconnect_timeout = "500ms"\nread_timeout = "1s"\n'
    )


@contextmanager
def server(tmp_path: Path, mounts: str) -> Iterator[str]:
    root = tmp_path / "files"
    root.mkdir(exist_ok=True)
    (root / "hello.txt").write_bytes(b"hello\n")
    config, port = write_config(
        tmp_path,
        f'{CACHE}[mounts.local]\norigin = "file://{root}"\n{mounts}',
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        yield base


def readyz(base: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{base}/readyz", timeout=10)
    return response.status_code, response.json()


def wait_ready(base: str, ready: bool) -> dict[str, Any]:
    deadline = time.monotonic() + 4 * READY_TTL + 5
    while True:
        status, body = readyz(base)
        if body["ready"] == ready:
            assert status == (200 if ready else 503)
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


@contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """``directory`` refuses new files, for this user (root ignores modes: the immutable flag then)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(mode)


def test_readyz_names_a_dead_origin_and_an_unwritable_cache(tmp_path: Path) -> None:
    with MotoServer() as moto:
        moto.make_bucket("ready")
        with server(tmp_path, s3_mount(moto, "ready")) as base:
            body = wait_ready(base, True)
            assert body == {
                "ready": True,
                "failing": [],
                "checks": {"cache:disk": "ok", "jobs": "ok", "origin:local": "ok", "origin:s3": "ok"},
            }
            with unwritable(tmp_path / "cache" / "data"):
                body = wait_ready(base, False)
                assert body["failing"] == ["cache:disk"]
                assert body["checks"]["cache:disk"].startswith("cannot write to the cache directory")
            wait_ready(base, True)
            moto.stop()
            body = wait_ready(base, False)
            assert body["failing"] == ["origin:s3"]
            assert str(moto.port) not in str(body)  # no endpoint in a public answer
            assert httpx.get(f"{base}/healthz").status_code == 200  # alive all the same


def test_readyz_names_a_missing_bucket(tmp_path: Path, moto: MotoServer) -> None:
    with server(tmp_path, s3_mount(moto, "no-such-bucket-ready")) as base:
        deadline = time.monotonic() + 30
        while "no-such-bucket-ready" not in (body := wait_ready(base, False))["checks"]["origin:s3"]:
            assert time.monotonic() < deadline, body  # a slow moto may time out first
            time.sleep(READY_TTL)
        assert body["failing"] == ["origin:s3"]


def fastapi_of(app: Any) -> FastAPI:
    """The FastAPI application inside ``create_app``'s ASGI layers."""
    while not isinstance(app, FastAPI):
        app = app.app
    return app


def test_registered_checks_take_part(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    settings = load_settings(
        None,
        cache={"dir": str(tmp_path / "cache"), "disk_size": "16MB"},
        mounts={"local": {"origin": f"file://{tmp_path / 'files'}"}},
    )
    asgi = create_app(settings)
    state = {"archive": "down"}

    async def archive() -> None:
        if state["archive"] == "down":
            raise NotReady("archive unreachable")

    ready_checks(fastapi_of(asgi)).add("archive", archive)
    with TestClient(asgi) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["failing"] == ["archive"]
        assert response.json()["checks"]["archive"] == "archive unreachable"
        state["archive"] = "up"
        time.sleep(READY_TTL + 0.1)
        assert client.get("/readyz").json() == {
            "ready": True,
            "failing": [],
            "checks": {"archive": "ok", "cache:disk": "ok", "jobs": "ok", "origin:local": "ok"},
        }


@pytest.mark.anyio
async def test_checks_are_bounded_shared_and_reused() -> None:
    calls: dict[str, int] = {"ok": 0, "slow": 0, "broken": 0, "refused": 0}

    async def ok() -> None:
        calls["ok"] += 1
        await asyncio.sleep(0.05)

    async def slow() -> None:
        calls["slow"] += 1
        await asyncio.sleep(10)

    async def broken() -> None:
        calls["broken"] += 1
        raise RuntimeError("http://secret.internal:9000 said no")

    async def refused() -> None:
        calls["refused"] += 1
        raise NotReady("queue paused")

    checks = ReadyChecks(ttl=0.5, timeout=0.2)
    for name, check in (("ok", ok), ("slow", slow), ("broken", broken), ("refused", refused)):
        checks.add(name, check)
    started = time.monotonic()
    results = await asyncio.gather(*(checks.run() for _ in range(50)))
    assert time.monotonic() - started < 1
    assert all(result == results[0] for result in results)
    assert results[0] == {
        "broken": "failed (details in the server log)",
        "ok": "ok",
        "refused": "queue paused",
        "slow": "no answer within 0.2 s",
    }
    assert calls == {"ok": 1, "slow": 1, "broken": 1, "refused": 1}
    await checks.run()
    assert calls["ok"] == 1  # reused within the ttl
    await asyncio.sleep(0.6)
    await checks.run()
    assert calls["ok"] == 2


def test_quantile_interpolates_inside_buckets() -> None:
    inf = float("inf")
    assert quantile([(1.0, 0), (inf, 0)], 0.5) is None
    assert quantile([], 0.5) is None
    buckets = [(0.1, 50), (0.2, 90), (1.0, 100), (inf, 100)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.7) == pytest.approx(0.15)
    assert quantile(buckets, 0.95) == pytest.approx(0.6)
    assert quantile(buckets, 0.25) == pytest.approx(0.05)
    assert quantile([(0.1, 0), (0.2, 10), (inf, 20)], 0.99) == pytest.approx(0.2)  # past the last bound


def test_stats_follow_reads(tmp_path: Path, moto: MotoServer) -> None:
    moto.make_bucket("stats")
    data = hashlib.sha256(b"x").digest() * 20_000  # 640,000 bytes: 10 blocks
    moto.client().put_object(Bucket="stats", Key="pre/a.bin", Body=data)
    with server(tmp_path, s3_mount(moto, "stats")) as base:
        before = httpx.get(f"{base}/api/v1/stats").json()
        assert set(before["mounts"]) == {"local", "s3"}
        s3 = before["mounts"]["s3"]
        assert s3["origin"] is None  # names a bucket: only with the token
        assert s3["origin_bytes"] == 0 and s3["origin_latency"]["p50"] is None
        assert before["tiers"]["disk"]["capacity"] == 64 * 1024 * 1024
        assert before["hit_ratio"] is None

        assert httpx.get(f"{base}/api/v1/files/s3/a.bin").content == data
        first = httpx.get(f"{base}/api/v1/stats").json()
        s3 = first["mounts"]["s3"]
        assert s3["origin_bytes"] == len(data)
        assert s3["origin_requests"]["GET"] >= 1 and s3["origin_requests"]["HEAD"] == 1
        latency = s3["origin_latency"]
        assert latency["requests"] == sum(s3["origin_requests"].values())
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= 1
        assert first["mounts"]["local"]["origin_bytes"] == 0
        disk = first["tiers"]["disk"]
        assert disk["bytes"] >= len(data) and disk["objects"] == 1
        assert disk["usage_percent"] == pytest.approx(100 * disk["bytes"] / disk["capacity"], abs=0.01)
        assert first["hit_ratio"] == 0
        assert s3["block_reads"] == 10 and s3["hit_ratio"] == 0
        assert s3["cached_objects"] == 1 and s3["cached_bytes"] >= len(data)  # whole blocks on disk
        assert first["mounts"]["local"]["cached_objects"] == 0

        assert httpx.get(f"{base}/api/v1/files/s3/a.bin").content == data
        second = httpx.get(f"{base}/api/v1/stats").json()
        assert second["mounts"]["s3"]["origin_bytes"] == len(data)  # served from the cache
        assert second["hit_ratio"] == 0.5
        assert second["mounts"]["s3"]["hit_ratio"] == 0.5 and second["mounts"]["s3"]["block_reads"] == 20
        assert second["mounts"]["local"]["hit_ratio"] is None  # no reads of it yet

        detailed = httpx.get(f"{base}/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert "stats" in detailed["mounts"]["s3"]["origin"]
        metrics = httpx.get(f"{base}/metrics").text
        assert 'tessera_origin_request_seconds_count{method="GET",origin="s3"}' in metrics
        assert 'tessera_origin_block_reads_total{origin="s3",result="hit"} 10.0' in metrics


def test_openapi_documents_the_new_routes(tmp_path: Path) -> None:
    with server(tmp_path, "") as base:
        paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert {"200", "400", "401", "404", "507"} <= set(paths["/api/v1/retrieve"]["post"]["responses"])
    assert "204" in paths["/api/v1/retrieve/{lease}"]["delete"]["responses"]
    assert "200" in paths["/api/v1/stats"]["get"]["responses"]
