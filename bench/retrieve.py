"""Retrieve over HTTP from an S3 origin (moto) ÷ what a processor does without Tessera: a boto3
download of the same object to a local file, then its SHA-256. Measured in the same run.

    .venv/bin/python bench/retrieve.py [--size-mib 256] [--reps 3]

Rows: a cold retrieve (fetch, pin, hash) against the reference; a repeated retrieve of the same
version (the file is local and its hash remembered: no origin bytes, no rehash).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx
from botocore.config import Config

BIN = Path(sys.executable).parent
TOKEN = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def reference(s3: object, bucket: str, key: str, target: Path) -> tuple[float, str]:
    started = time.perf_counter()
    s3.download_file(bucket, key, str(target))  # type: ignore[attr-defined]
    digest = hashlib.sha256()
    with open(target, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed, digest.hexdigest()


def retrieve(base: str, path: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    response = httpx.post(
        f"{base}/api/v1/retrieve",
        json={"path": path, "lease": 600},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="tessera-bench-retrieve-") as scratch:
        root = Path(scratch)
        moto_port = free_port()
        moto = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{moto_port}"
        servers: list[subprocess.Popen[bytes]] = [moto]
        try:
            wait_http(endpoint, moto)
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}),
            )
            s3.create_bucket(Bucket="bench")
            data = os.urandom(size)
            expected = hashlib.sha256(data).hexdigest()
            rows = []
            for rep in range(args.reps):
                key = f"rep{rep}.bin"  # a new object each rep: every cold retrieve is cold
                s3.put_object(Bucket="bench", Key=key, Body=data)
                ref_time, ref_digest = reference(s3, "bench", key, root / "download.bin")
                assert ref_digest == expected
                port = free_port()
                config = root / f"tessera-{rep}.toml"
                config.write_text(
                    f'[server]\nport = {port}\ntoken = "{TOKEN}"\naccess_log = false\n'
                    f'[cache]\ndir = "{root / f"cache-{rep}"}"\ndisk_size = "{4 * args.size_mib}MB"\n'
                    f'pin_size = "{2 * args.size_mib}MB"\n'
                    f'[mounts.s3]\norigin = "s3://bench"\nendpoint_url = "{endpoint}"\n'
                    'access_key_id = "testing"\nsecret_access_key = "testing"\nregion = "us-east-1"\n'
                )
                tessera = subprocess.Popen(
                    [str(BIN / "tessera"), "serve", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                servers.append(tessera)
                base = f"http://127.0.0.1:{port}"
                wait_http(f"{base}/healthz", tessera)
                cold, answer = retrieve(base, f"/s3/{key}")
                assert answer["sha256"] == expected and answer["size"] == size
                warm, again = retrieve(base, f"/s3/{key}")
                assert again["local_path"] == answer["local_path"]
                tessera.terminate()
                tessera.wait(timeout=30)
                rows.append((cold, warm, ref_time))
                s3.delete_object(Bucket="bench", Key=key)
                print(
                    f"rep {rep}: cold {cold:.2f} s, repeated {warm * 1000:.1f} ms, "
                    f"boto3+sha256 {ref_time:.2f} s",
                    file=sys.stderr,
                )
        finally:
            for process in servers:
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=30)
    ratios = [cold / ref for cold, _warm, ref in rows]
    load = os.getloadavg()[0]
    print(f"\n{args.size_mib} MiB object, {args.reps} reps, load average {load:.2f}\n")
    print("| measurement | Tessera | reference (same run) | ratio median [min-max] |")
    print("|---|---|---|---|")
    print(
        f"| cold retrieve ÷ boto3 download + sha256 | {statistics.median(r[0] for r in rows):.2f} s "
        f"| {statistics.median(r[2] for r in rows):.2f} s "
        f"| {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}] |"
    )
    print(
        f"| repeated retrieve (local, hash remembered) "
        f"| {statistics.median(r[1] for r in rows) * 1000:.1f} ms | — | — |"
    )


if __name__ == "__main__":
    main()
