"""tus upload of a large file over a link that drops the connection every 100 MiB (tuspy resumes each
time) versus one uninterrupted upload of the same file, in the same run against the same server.

Goal (issue 11): time ÷ the uninterrupted ``PUT /api/v1/files/…`` ≤ 1.3, bytes sent ≤ 1.05 x the file.
The reference is that ``PUT`` when the server has it (its OpenAPI document lists the route); otherwise an
uninterrupted tus upload (one PATCH), and the output says which. Both go through the same counting TCP
proxy (``tests/support/cutting_proxy.py``), which cuts only in the interrupted run, into a local-folder
mount and into moto S3 (started here); every stored file is checked byte for byte (SHA-256).

    .venv/bin/python bench/tus.py [--size 1GB] [--cut-every 100MB] [--rounds 1] [--mounts local,s3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from tusclient.client import TusClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.config import format_size, parse_size
from tests.support.cutting_proxy import CuttingProxy
from tests.support.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.support.tessera_server import tessera_process, write_config

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PIECE = 8 * 1024 * 1024


def make_file(path: Path, size: int) -> str:
    """``size`` pseudo-random bytes (incompressible, repeatable); returns their SHA-256."""
    digest = hashlib.sha256()
    seed = hashlib.sha256(b"tessera tus bench").digest()
    with open(path, "wb") as out:
        written = 0
        while written < size:
            piece = hashlib.shake_256(seed + written.to_bytes(8, "big")).digest(min(PIECE, size - written))
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while piece := source.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def tus_upload(endpoint: str, source: Path, target: str, chunk_size: int) -> None:
    client = TusClient(f"{endpoint}/api/v1/uploads/", headers=AUTH)
    uploader = client.uploader(
        file_path=str(source), metadata={"path": target}, chunk_size=chunk_size, retries=100, retry_delay=0
    )
    uploader.upload()


def put_upload(endpoint: str, source: Path, target: str, _chunk_size: int) -> None:
    def body() -> Iterator[bytes]:
        with open(source, "rb") as data:
            while piece := data.read(1024 * 1024):
                yield piece

    headers = {**AUTH, "Content-Length": str(source.stat().st_size)}
    response = httpx.put(f"{endpoint}/api/v1/files{target}", content=body(), headers=headers, timeout=600)
    response.raise_for_status()


def has_put(base: str) -> bool:
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    return "put" in paths.get("/api/v1/files/{path}", {})


def timed(
    run: str, upload: object, port: int, cut_every: int | None, source: Path, target: str, chunk_size: int
) -> dict:
    with CuttingProxy(port, cut_every) as proxy:
        start = time.perf_counter()
        upload(proxy.url, source, target, chunk_size)  # type: ignore[operator]
        seconds = time.perf_counter() - start
    return {"run": run, "seconds": seconds, "sent": proxy.sent, "cuts": proxy.cuts}


def stored_sha256(mount: str, files: Path, moto: MotoServer, bucket: str, key: str) -> str:
    """SHA-256 of the stored object, which is then deleted."""
    if mount == "local":
        stored = files / key
        digest = sha256_of(stored)
        stored.unlink()
        return digest
    s3 = moto.client()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    while piece := body.read(PIECE):
        digest.update(piece)
    s3.delete_object(Bucket=bucket, Key=key)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--cut-every", default="100MB")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (reference, interrupted)")
    parser.add_argument("--mounts", default="local,s3", help="local (a folder) and/or s3 (moto)")
    parser.add_argument(
        "--chunk-size",
        default="64MB",
        help="tuspy's chunk_size (bytes per PATCH; it reads each into memory, and a resumed PATCH reads"
        " the rest of its chunk again); 0: the whole file in one PATCH, tuspy's default",
    )
    args = parser.parse_args()
    size, cut_every = parse_size(args.size), parse_size(args.cut_every)
    chunk_size = parse_size(args.chunk_size) or sys.maxsize
    mounts = args.mounts.split(",")
    bucket = "tus-bench"
    with (
        tempfile.TemporaryDirectory(prefix="tus-bench-", dir=os.environ.get("BENCH_DIR")) as tmp,
        MotoServer() as moto,
    ):
        moto.make_bucket(bucket)
        root = Path(tmp)
        files = root / "files"
        files.mkdir()
        source = root / "source.bin"
        expected = make_file(source, size)
        sections = f"""
[cache]
dir = "{{cache}}"
disk_size = "256MB"
[storage]
max_upload_size = "{size}"
staging_size = "{2 * size}"
[mounts.local]
origin = "file://{files}"
[mounts.s3]
origin = "s3://{bucket}"
endpoint_url = "{moto.endpoint}"
region = "{REGION}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
"""
        config, port = write_config(root, sections, server=f'access_log = false\ntoken = "{TOKEN}"')
        results = []
        with tessera_process(config, port, root / "serve.log") as (base, _):
            reference = ("PUT", put_upload) if has_put(base) else ("tus, uninterrupted", tus_upload)
            for round_ in range(args.rounds):
                for mount in mounts:
                    runs = [
                        (reference[0], reference[1], None),
                        (f"tus, cut every {format_size(cut_every)}", tus_upload, cut_every),
                    ]
                    for name, upload, cut in runs:
                        key = f"r{round_}.bin"
                        result = timed(name, upload, port, cut, source, f"/{mount}/{key}", chunk_size)
                        result["mount"] = mount
                        assert stored_sha256(mount, files, moto, bucket, key) == expected, f"{name}: differs"
                        results.append(result)
                        print(json.dumps(result), flush=True)
        load = os.getloadavg()[0]
    chunks = "whole file" if chunk_size == sys.maxsize else format_size(chunk_size)
    print(f"\nfile {format_size(size)}, tuspy chunk_size {chunks}, 1-min load {load:.2f}\n")
    print("| mount | run | seconds | MB/s | bytes sent ÷ file | cuts |")
    print("|---|---|---|---|---|---|")
    for result in results:
        rate = size / result["seconds"] / 1e6
        sent = result["sent"] / size
        print(
            f"| {result['mount']} | {result['run']} | {result['seconds']:.2f} | {rate:.0f} | {sent:.3f}"
            f" | {result['cuts']} |"
        )
    for mount in mounts:
        mine = [result for result in results if result["mount"] == mount]
        pairs = list(zip(mine[::2], mine[1::2], strict=True))
        ratios = ", ".join(f"{cut['seconds'] / ref['seconds']:.2f}" for ref, cut in pairs)
        sent = ", ".join(f"{cut['sent'] / size:.4f}" for _, cut in pairs)
        print(f"\n{mount}: time ratio (cut ÷ {reference[0]}): {ratios}; bytes sent ÷ file (cut): {sent}")


if __name__ == "__main__":
    main()
