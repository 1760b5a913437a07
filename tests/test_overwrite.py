"""Overwrites at S3 and HTTP origins while readers go on: every answer is one version whole.

The local-folder case (in place, rename-over) is in ``test_local_origin.py`` and FUSE readers in
``test_fuse*.py``; both use the same checker (``tests/support/overwrites.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.moto_server import MotoServer
from tests.support.origin_server import ObjectHTTPServer
from tests.support.overwrites import OverwriteReaders, version_bytes
from tests.support.tessera_server import tessera_server, write_config

#: Longer, shorter and same-size versions in turn. Fills of one 64 KiB block each (``max_fill``) make
#: every read of a version span many GETs, so an overwrite lands between them all the time.
SIZES = [1_500_000, 2_200_000, 900_000, 900_000]


def config_for(tmp_path: Path, mount: str) -> tuple[Path, int]:
    return write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
metadata_ttl = "0s"
memory_size = "4MB"
block_size = "64KB"
small_object_size = "64KB"
max_fill = "64KB"
readahead = "128KB"
[origin]
retries = 1
backoff = "10ms"
{mount}
""",
    )


def overwrite_rounds(tmp_path: Path, mount: str, put: Callable[[bytes], None], url: str) -> None:
    first = version_bytes(0, 1_200_000)
    put(first)
    config, port = config_for(tmp_path, mount)
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        with OverwriteReaders(base, url, first) as readers:
            for round_number in range(1, 25):
                data = version_bytes(round_number, SIZES[round_number % 4])
                readers.new_version(data)
                put(data)
                readers.wait(0.2)
        final = httpx.get(f"{base}{url}", timeout=30)
    assert not readers.mixed, f"{len(readers.mixed)} mixed responses, e.g. {readers.mixed[:5]}"
    assert readers.whole > 24
    assert final.status_code == 200 and final.content == readers.versions[-1]


def test_s3_overwrites_never_mix(tmp_path: Path, moto: MotoServer) -> None:
    bucket = f"ow-{uuid.uuid4().hex[:10]}"
    moto.make_bucket(bucket)
    client = moto.client()
    mount = (
        f'[mounts.s3]\norigin = "s3://{bucket}/pre"\nendpoint_url = "{moto.endpoint}"\n'
        'region = "us-east-1"\naccess_key_id = "testing"\nsecret_access_key = "testing"'
    )

    def put(data: bytes) -> None:
        client.put_object(Bucket=bucket, Key="pre/moving.bin", Body=data)

    overwrite_rounds(tmp_path, mount, put, "/api/v1/files/s3/moving.bin")


def test_http_overwrites_never_mix(tmp_path: Path, http_origin: ObjectHTTPServer) -> None:
    def put(data: bytes) -> None:
        http_origin.put("moving.bin", data)

    overwrite_rounds(
        tmp_path, f'[mounts.web]\norigin = "{http_origin.url}"', put, "/api/v1/files/web/moving.bin"
    )
