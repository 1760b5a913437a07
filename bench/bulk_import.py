"""Bulk import of a local tree into S3 (moto) through Tessera ÷ boto3 uploading the same tree with the
same concurrency (the ``aws s3 sync`` way: one PUT per file, N threads), in the same run.

    .venv/bin/python bench/bulk_import.py [--files 10000] [--size 100KB] [--concurrency 8]

Tessera's figure runs from the ``POST /api/v1/jobs/import`` to the job's ``done`` as seen by polling
its status every 50 ms; it includes listing the tree, and each file's PUT, the HEAD that reads the new
version back and the job's bookkeeping. Prints one JSON line and a Markdown row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tessera.config import parse_size
from tests.support.moto_server import MotoServer
from tests.support.tessera_server import tessera_process, write_config

TOKEN = "bench-token"


def make_tree(root: Path, files: int, size: int) -> list[Path]:
    paths = []
    for i in range(files):
        path = root / f"d{i % 100:02d}" / f"f{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def boto3_upload(endpoint: str, root: Path, paths: list[Path], concurrency: int) -> float:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=boto3.session.Config(max_pool_connections=concurrency),
    )
    s3.create_bucket(Bucket="reference")

    def upload(path: Path) -> None:
        s3.upload_file(str(path), "reference", str(path.relative_to(root)))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(upload, paths))
    return time.perf_counter() - start


def tessera_import(endpoint: str, root: Path, work: Path, concurrency: int, files: int) -> float:
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="tessera")
    config, port = write_config(
        work,
        f"""
[cache]
dir = "{{cache}}"
[storage]
ingest_allow = ["file://{root}/"]
[jobs]
concurrency = {concurrency}
[mounts.s3]
origin = "s3://tessera"
endpoint_url = "{endpoint}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        tessera_process(config, port, work / "serve.log") as (base, _),
        httpx.Client(base_url=base) as client,
    ):
        start = time.perf_counter()
        answer = client.post(
            "/api/v1/jobs/import", json={"source": f"file://{root}", "path": "/s3/t"}, headers=auth
        )
        answer.raise_for_status()
        while (job := client.get(answer.json()["status_url"], headers=auth).json())["state"] in (
            "queued",
            "running",
        ):
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
    if (job["state"], job["done"]) != ("done", files):
        raise SystemExit(f"import did not complete: {job}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", default="100KB")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp, MotoServer() as moto:
        work = Path(tmp)
        root = work / "tree"
        paths = make_tree(root, args.files, size)
        reference = boto3_upload(moto.endpoint, root, paths, args.concurrency)
        tessera = tessera_import(moto.endpoint, root, work, args.concurrency, args.files)
    result = {
        "files": args.files,
        "size": size,
        "concurrency": args.concurrency,
        "boto3_files_per_s": round(args.files / reference, 1),
        "tessera_files_per_s": round(args.files / tessera, 1),
        "ratio": round(reference / tessera, 3),
        "load": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    print(
        f"| {args.files} x {args.size}, concurrency {args.concurrency} "
        f"| {result['tessera_files_per_s']} files/s | {result['boto3_files_per_s']} files/s "
        f"| {result['ratio']} | {result['load']} |"
    )


if __name__ == "__main__":
    main()
