"""Origins that cannot work as configured: a bucket that does not exist, a scheme Tessera cannot read."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.moto_server import MotoServer, free_port
from tests.support.tessera_server import TESSERA, tessera_server


def s3_mount(name: str, bucket: str, endpoint: str) -> str:
    return f"""
[mounts.{name}]
origin = "s3://{bucket}/prefix"
endpoint_url = "{endpoint}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
"""


def test_a_missing_bucket_is_named_and_warned_about(moto: MotoServer, tmp_path: Path) -> None:
    present, missing = f"b-{uuid.uuid4().hex[:12]}", f"gone-{uuid.uuid4().hex[:12]}"
    moto.make_bucket(present)
    moto.client().put_object(Bucket=present, Key="prefix/a.txt", Body=b"here\n")
    port = free_port()
    config = tmp_path / "tessera.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
token = "s3cret"
[cache]
dir = "{tmp_path / "cache"}"
[origin]
retries = 1
backoff = "10ms"
"""
        + s3_mount("real", present, moto.endpoint)
        + s3_mount("gone", missing, moto.endpoint)
    )
    log = tmp_path / "serve.log"
    with tessera_server(config, port, log) as base, httpx.Client(base_url=base, timeout=30) as client:
        for path in ("/api/v1/files/gone/a.txt", "/api/v1/files/gone/other.txt"):
            response = client.get(path)
            assert response.status_code == 404
            assert response.json()["error"] == "BucketNotFound"
            assert f"bucket '{missing}' of origin gone does not exist" in response.json()["detail"]
        assert client.head("/api/v1/files/gone/a.txt").status_code == 404
        warm = client.post(
            "/api/v1/cache/warm", json={"path": "/gone/"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert warm.status_code == 404 and "does not exist" in warm.json()["detail"]
        # The bucket that exists still tells a missing key from a present one.
        assert client.get("/api/v1/files/real/a.txt").content == b"here\n"
        response = client.get("/api/v1/files/real/nothing.txt")
        assert response.status_code == 404 and response.json()["error"] == "ObjectNotFound"
        deadline = time.monotonic() + 10
        while "does not exist: its objects" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    warnings = [line for line in log.read_text().splitlines() if "does not exist: its objects" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and missing in warnings[0]


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("ftp://example.org/pub", "unsupported origin 'ftp://example.org/pub'"),
        ("s3:///prefix", "origin 's3:///prefix' names no bucket"),
        ("file://{tmp}/plain.txt/files", "cannot use folder '{tmp}/plain.txt/files': Not a directory"),
    ],
)
def test_an_unusable_origin_is_one_line_naming_the_mount(tmp_path: Path, origin: str, expected: str) -> None:
    (tmp_path / "plain.txt").write_text("a file, not a folder\n")
    config = tmp_path / "tessera.toml"
    config.write_text(
        f"""
[cache]
dir = "{tmp_path / "cache"}"
[mounts.archive]
origin = "{origin.format(tmp=tmp_path)}"
"""
    )
    result = subprocess.run(
        [TESSERA, "cat", "/archive/a.txt", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # A config check (exit 2) or the origin itself (exit 1) refuses it; either way one line naming it.
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    message = "".join(result.stderr.split())  # rich wraps long lines, anywhere
    assert "archive" in message
    assert "".join(expected.format(tmp=tmp_path).split()) in message
