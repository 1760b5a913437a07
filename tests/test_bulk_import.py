"""Bulk import through a real ``tessera serve``: a local tree (nested folders, links leaving the tree),
a moto S3 bucket, progress figures, cancel, and SIGKILL of the server mid-import (on the SQLite queue
and on PostgreSQL)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import boto3
import httpx
import pytest

from tests.support.moto_server import MotoServer
from tests.support.postgres import PostgresServer
from tests.support.tessera_server import tessera_process, write_config

TOKEN = "import-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_tree(root: Path, count: int, size: int, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        relative = f"d{i % 3}/sub{i % 2}/f{i:05d}.bin"
        data = rng.randbytes(size + i % 7)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        files[relative] = data
    return files


def config(tmp_path: Path, source_root: Path, jobs: str = "", extra: str = "") -> tuple[Path, int]:
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    return write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[storage]
ingest_allow = ["file://{source_root}/", "s3://src/"]
[jobs]
lease = "2s"
{jobs if "concurrency" in jobs else jobs + chr(10) + "concurrency = 4"}
[mounts.data]
origin = "file://{target}"
{extra}
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )


def wait_job(client: httpx.Client, url: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(url, headers=AUTH).json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgres"])
def jobs_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres")
    return f'database_url = "{server.url()}"'


def test_import_local_tree(tmp_path: Path, jobs_backend: str) -> None:
    source = tmp_path / "incoming"
    files = make_tree(source, 40, 3000)
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not for import")
    (source / "d0" / "escape.txt").symlink_to(outside)
    (source / "inside-link.bin").symlink_to(source / "d1" / "sub1" / "f00001.bin")
    files["inside-link.bin"] = files["d1/sub1/f00001.bin"]
    cfg, port = config(tmp_path, source, jobs_backend)
    with (
        tessera_process(cfg, port, tmp_path / "serve.log") as (base, _),
        httpx.Client(base_url=base) as client,
    ):
        body = {"source": f"file://{source}", "path": "/data/imported"}
        assert client.post("/api/v1/jobs/import", json=body).status_code == 401
        refused = client.post(
            "/api/v1/jobs/import", json={**body, "source": f"file://{tmp_path}"}, headers=AUTH
        )
        assert refused.status_code == 403, refused.text
        started = client.post("/api/v1/jobs/import", json=body, headers=AUTH)
        assert started.status_code == 202, started.text
        job = wait_job(client, started.json()["status_url"], {"done", "failed"})
        assert job["state"] == "done", job
        assert (job["total"], job["done"], job["failed"]) == (41, 41, 0)
        assert job["bytes"] == sum(len(data) for data in files.values())
        for relative, data in files.items():
            got = client.get(f"/api/v1/files/data/imported/{relative}")
            assert got.status_code == 200 and got.content == data, relative
        assert client.get("/api/v1/files/data/imported/d0/escape.txt").status_code == 404
        assert not (tmp_path / "target" / "imported" / "d0" / "escape.txt").exists()
        metrics = client.get("/metrics").text
        assert 'tessera_import_files_total{result="copied"} 41.0' in metrics
        assert 'tessera_jobs_total{kind="import",state="done"} 1.0' in metrics
        # The same import again: every file is found already copied.
        again = client.post("/api/v1/jobs/import", json=body, headers=AUTH).json()
        job = wait_job(client, again["status_url"], {"done", "failed"})
        assert (job["state"], job["done"], job["skipped"]) == ("done", 41, 0)  # a new job remembers nothing
        assert client.get("/api/v1/jobs/nope", headers=AUTH).status_code == 404


def test_import_from_moto_s3_and_cancel(tmp_path: Path, moto: MotoServer) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="src")
    objects = {f"set/{i:03d}/part.dat": os.urandom(1000 + i) for i in range(30)}
    for key, data in objects.items():
        s3.put_object(Bucket="src", Key=key, Body=data)
    source = tmp_path / "incoming"
    make_tree(source, 3000, 10)
    extra = f"""[mounts.src]
origin = "s3://src"
endpoint_url = "{moto.endpoint}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
"""
    cfg, port = config(tmp_path, source, "workers = 1\nconcurrency = 1", extra)
    with (
        tessera_process(cfg, port, tmp_path / "serve.log") as (base, _),
        httpx.Client(base_url=base) as client,
    ):
        started = client.post(
            "/api/v1/jobs/import", json={"source": "s3://src/set", "path": "/data/from-s3"}, headers=AUTH
        ).json()
        job = wait_job(client, started["status_url"], {"done", "failed"})
        assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 30, 30, 0), job
        for key, data in objects.items():
            assert client.get(f"/api/v1/files/data/from-s3/{key.removeprefix('set/')}").content == data
        # A large local import, cancelled while it runs: it stops short of the end.
        big = client.post(
            "/api/v1/jobs/import", json={"source": f"file://{source}", "path": "/data/big"}, headers=AUTH
        ).json()
        wait_job(client, big["status_url"], {"running"})
        cancelled = client.delete(big["status_url"], headers=AUTH)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        time.sleep(1.5)
        job = client.get(big["status_url"], headers=AUTH).json()
        assert job["state"] == "cancelled" and job["done"] < 3000, job
        assert 'tessera_jobs_total{kind="import",state="cancelled"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_mid_import_then_restart_completes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    jobs = ""
    if backend == "postgres":
        jobs = f'database_url = "{request.getfixturevalue("postgres").url()}"'
    source = tmp_path / "incoming"
    files = make_tree(source, 600, 20_000, seed=7)
    cfg, port = config(tmp_path, source, jobs + "\nconcurrency = 2")
    log = tmp_path / "serve.log"
    with tessera_process(cfg, port, log) as (base, process), httpx.Client(base_url=base) as client:
        started = client.post(
            "/api/v1/jobs/import", json={"source": f"file://{source}", "path": "/data/k"}, headers=AUTH
        ).json()
        deadline = time.monotonic() + 60
        while (job := client.get(started["status_url"], headers=AUTH).json())["done"] < 100:
            assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert job["done"] < 600
    with tessera_process(cfg, port, log) as (base, _), httpx.Client(base_url=base) as client:
        job = wait_job(client, started["status_url"], {"done", "failed"}, timeout=120)
        assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 600, 600, 0), job
        assert job["skipped"] >= 50  # files the killed run had copied and recorded were not copied again
    target = tmp_path / "target" / "k"
    for relative, data in files.items():
        assert (target / relative).read_bytes() == data, relative
    leftovers = [p for p in target.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] or all(p.name.startswith(".") for p in leftovers)
