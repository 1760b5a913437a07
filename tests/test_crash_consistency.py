"""SIGKILL at random points of fills, purges, refills, evictions and index flushes: never a wrong byte.

A real ``tessera serve`` process reads a fixed set of objects from a real origin (moto's S3 server, or a
local folder) while a client drives a random mix of whole and ranged reads, purges and refills, with a
disk tier small enough that reads evict each other. The server is killed with SIGKILL at a random
moment, restarted on the same cache directory, and every byte it then serves is compared with the
origin: first at once (before the start-up check has run), then after it.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.moto_server import MotoServer, free_port
from tests.support.tessera_server import TESSERA

BLOCK = 64 * 1024
TOKEN = "crash-token"
ROUNDS = int(os.environ.get("TESSERA_CRASH_ROUNDS", "24"))


def make_objects(seed: int) -> dict[str, bytes]:
    """Objects of 1 byte to 40 blocks, some not block-aligned: 4.4 MiB in all, for a 2 MiB disk tier."""
    rng = random.Random(seed)
    sizes = [1, 4000, BLOCK, BLOCK + 1, 3 * BLOCK - 7, 10 * BLOCK, 16 * BLOCK + 123, 40 * BLOCK]
    return {f"obj/{i:02d}-{size}.bin": rng.randbytes(size) for i, size in enumerate(sizes)}


def write_config(tmp_path: Path, mount: str, port: int, flush: str) -> Path:
    config = tmp_path / "tessera.toml"
    config.write_text(
        f"""
[server]
port = {port}
token = "{TOKEN}"
access_log = false
[cache]
dir = "{tmp_path / "cache"}"
disk_size = "2MB"
memory_size = "256KB"
block_size = "64KB"
small_object_size = "64KB"
readahead = "256KB"
max_fill = "256KB"
index_flush_interval = "{flush}"
fill_wait = "50ms"
[origin]
retries = 2
backoff = "10ms"
max_backoff = "20ms"
{mount}
"""
    )
    return config


class Server:
    """One ``tessera serve`` process on a config file; ``kill`` is SIGKILL, never a clean stop."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [TESSERA, "serve", "--config", str(config)], stdout=out, stderr=out
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def drive(base: str, objects: dict[str, bytes], rng: random.Random, stop: threading.Event) -> None:
    """A random mix of reads, ranged reads and purges until ``stop``; answers are checked as they come."""
    names = sorted(objects)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            name = rng.choice(names)
            data = objects[name]
            try:
                op = rng.random()
                if op < 0.2:
                    client.post("/api/v1/cache/purge", json={"path": f"/m/{name}"}, headers=auth)
                elif op < 0.25:
                    client.post("/api/v1/cache/purge", json={"path": "/m/obj/"}, headers=auth)
                elif op < 0.6:
                    start = rng.randrange(len(data))
                    end = rng.randrange(start, len(data))
                    got = client.get(f"/api/v1/files/m/{name}", headers={"Range": f"bytes={start}-{end}"})
                    if got.status_code == 206:
                        assert got.content == data[start : end + 1], f"wrong bytes in {name} before kill"
                else:
                    got = client.get(f"/api/v1/files/m/{name}")
                    if got.status_code == 200:
                        assert got.content == data, f"wrong bytes in {name} before kill"
            except httpx.HTTPError:
                return  # the server was killed under us


def check_every_byte(base: str, objects: dict[str, bytes], rng: random.Random) -> list[str]:
    """Every object whole and in random ranges; returns what differed from the origin."""
    wrong = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, data in objects.items():
            for _ in range(3):
                start = rng.randrange(len(data))
                got = client.get(f"/api/v1/files/m/{name}", headers={"Range": f"bytes={start}-"})
                assert got.status_code == 206, got.text
                if got.content != data[start:]:
                    wrong.append(f"{name} from {start}")
            whole = client.get(f"/api/v1/files/m/{name}")
            assert whole.status_code == 200, whole.text
            if hashlib.sha256(whole.content).digest() != hashlib.sha256(data).digest():
                wrong.append(name)
    return wrong


def crash_rounds(tmp_path: Path, mount: str, objects: dict[str, bytes], seed: int) -> None:
    rng = random.Random(seed)
    port = free_port()
    log = tmp_path / "serve.log"
    for round_number in range(ROUNDS):
        flush = rng.choice(["20ms", "300ms", "1h"])
        config = write_config(tmp_path, mount, port, flush)
        server = Server(config, port, log)
        wrong = check_every_byte(server.base, objects, rng)  # straight after the restart
        assert not wrong, f"round {round_number}: wrong bytes after restart: {wrong}"
        stop = threading.Event()
        drivers = [
            threading.Thread(target=drive, args=(server.base, objects, random.Random(rng.random()), stop))
            for _ in range(3)
        ]
        for thread in drivers:
            thread.start()
        time.sleep(rng.uniform(0.05, 0.8))
        server.kill()
        stop.set()
        for thread in drivers:
            thread.join(10)
    server = Server(write_config(tmp_path, mount, port, "1s"), port, log)
    try:
        assert not check_every_byte(server.base, objects, rng)
        # After the start-up check too, the disk agrees with what the server vouches for.
        deadline = time.monotonic() + 20
        while not httpx.get(f"{server.base}/api/v1/cache/stats").json().get("verified"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert not check_every_byte(server.base, objects, rng)
    finally:
        server.kill()


def test_sigkill_anywhere_local_origin(tmp_path: Path) -> None:
    objects = make_objects(1)
    folder = tmp_path / "origin"
    for name, data in objects.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    crash_rounds(tmp_path, f'[mounts.m]\norigin = "file://{folder}"', objects, seed=11)


def test_sigkill_anywhere_s3_origin(tmp_path: Path, moto: MotoServer) -> None:
    objects = make_objects(2)
    bucket = f"crash-{uuid.uuid4().hex[:10]}"
    moto.make_bucket(bucket)
    client = moto.client()
    for name, data in objects.items():
        client.put_object(Bucket=bucket, Key=f"pre/{name}", Body=data)
    mount = (
        f'[mounts.m]\norigin = "s3://{bucket}/pre"\nendpoint_url = "{moto.endpoint}"\n'
        'region = "us-east-1"\naccess_key_id = "testing"\nsecret_access_key = "testing"'
    )
    crash_rounds(tmp_path, mount, objects, seed=12)


@pytest.mark.parametrize("kill_after", [0.05, 0.15, 0.3])
def test_purge_refill_kill_keeps_no_stale_complete_row(tmp_path: Path, kill_after: float) -> None:
    """The issue's reproduction: a fully cached object is purged, its first blocks are read again, the
    server is killed before the index is written; after a restart the whole object must be right."""
    rng = random.Random(7)
    data = rng.randbytes(100 * BLOCK)
    folder = tmp_path / "origin"
    (folder / "obj").mkdir(parents=True)
    (folder / "obj" / "big.bin").write_bytes(data)
    port = free_port()
    mount = f'[mounts.m]\norigin = "file://{folder}"'
    config = write_config(tmp_path, mount, port, "1h")
    config.write_text(config.read_text().replace('disk_size = "2MB"', 'disk_size = "64MB"'))
    log = tmp_path / "serve.log"
    server = Server(config, port, log)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base, timeout=30) as client:
        assert client.get("/api/v1/files/m/obj/big.bin").content == data
        server.process.send_signal(signal.SIGTERM)  # a clean stop: the complete row is written
        server.process.wait()
        server = Server(config, port, log)
        client.post("/api/v1/cache/purge", json={"path": "/m/obj/big.bin"}, headers=auth)
        part = client.get("/api/v1/files/m/obj/big.bin", headers={"Range": f"bytes=0-{10 * BLOCK - 1}"})
        assert part.content == data[: 10 * BLOCK]
        time.sleep(kill_after)
        server.kill()
    server = Server(config, port, log)
    try:
        assert check_every_byte(server.base, {"obj/big.bin": data}, rng) == []
    finally:
        server.kill()


def test_damaged_cache_file_is_caught_by_block_checksums(tmp_path: Path) -> None:
    """Bytes the index lists but the disk lost or changed (a power cut with ``fsync = "none"``, a file
    damaged by hand) are caught by the first read after a restart and fetched again."""
    data = random.Random(9).randbytes(20 * BLOCK)
    folder = tmp_path / "origin"
    folder.mkdir()
    (folder / "big.bin").write_bytes(data)
    port = free_port()
    config = write_config(tmp_path, f'[mounts.m]\norigin = "file://{folder}"', port, "1s")
    config.write_text(config.read_text().replace('disk_size = "2MB"', 'disk_size = "64MB"'))
    log = tmp_path / "serve.log"
    server = Server(config, port, log)
    assert httpx.get(f"{server.base}/api/v1/files/m/big.bin").content == data
    server.process.send_signal(signal.SIGTERM)
    server.process.wait()
    (cached,) = [p for p in (tmp_path / "cache" / "data").rglob("*") if p.is_file()]
    with open(cached, "r+b") as file:  # same size, same allocation: only a checksum can tell
        file.seek(5 * BLOCK + 100)
        file.write(b"\0" * 1000)
        file.seek(17 * BLOCK)
        file.write(bytes(255 - b for b in data[17 * BLOCK : 17 * BLOCK + 10]))
    server = Server(config, port, log)
    try:
        assert httpx.get(f"{server.base}/api/v1/files/m/big.bin").content == data
        metrics = httpx.get(f"{server.base}/metrics").text
        assert "tessera_cache_corrupt_blocks_total 2.0" in metrics
        again = httpx.get(f"{server.base}/api/v1/files/m/big.bin", headers={"Range": "bytes=327680-"})
        assert again.content == data[5 * BLOCK :]
    finally:
        server.kill()
    assert cached.read_bytes() == data  # the two blocks were written again
