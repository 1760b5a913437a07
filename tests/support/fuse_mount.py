"""``tessera mount`` as a real process for tests: mounted on a temporary folder, unmounted afterwards."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support._base import RequestRecord
from tests.support.moto_server import MotoServer
from tests.support.proxy import CountingProxy
from tests.support.tessera_server import TESSERA


def is_mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


@contextmanager
def tessera_mount(
    source: str, mountpoint: Path, cache_dir: Path, log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``tessera mount SOURCE MOUNTPOINT`` in the foreground with ``env`` added to the environment.

    Yields the process once the mount shows in ``/proc/mounts``; unmounts (and waits for the process)
    afterwards, lazily if it does not exit.
    """
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                TESSERA,
                "mount",
                source,
                str(mountpoint),
                "--cache-dir",
                str(cache_dir),
                "--cache-size",
                "256MB",
                "--log-level",
                "info",
            ],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mountpoint):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "mount did not appear"
            time.sleep(0.05)
        yield process
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
            raise


@dataclass
class S3Mount:
    """A bucket in the moto server, reached through a counting proxy and mounted by ``tessera mount``."""

    mountpoint: Path
    bucket: str
    cache_dir: Path
    process: subprocess.Popen[bytes]
    proxy: CountingProxy
    moto: MotoServer

    def put(self, key: str, data: bytes) -> None:
        self.moto.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def origin_requests(self, method: str, key: str | None = None) -> list[RequestRecord]:
        path = f"/{self.bucket}/{key}" if key else None
        return [r for r in self.proxy.requests(method=method) if path is None or r.path == path]


#: Quick settings for mounts in tests: short TTLs, one retry, short timeouts.
QUICK = {
    "TESSERA_CACHE__METADATA_TTL": "1s",
    "TESSERA_FS__LISTING_TTL": "1s",
    "TESSERA_FS__READ_DEADLINE": "3s",
    "TESSERA_ORIGIN__RETRIES": "1",
    "TESSERA_ORIGIN__BACKOFF": "10ms",
    "TESSERA_ORIGIN__READ_TIMEOUT": "2s",
}


@contextmanager
def s3_mount(tmp_path: Path, moto: MotoServer, proxy: CountingProxy, **settings: str) -> Iterator[S3Mount]:
    """Mount a new bucket at ``tmp_path/mnt``; ``settings`` override ``QUICK`` (``TESSERA_…`` names)."""
    bucket = f"fs-{uuid.uuid4().hex[:10]}"
    moto.make_bucket(bucket)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": proxy.endpoint,
        **QUICK,
        **settings,
    }
    cache_dir = tmp_path / "cache"
    with tessera_mount(f"s3://{bucket}", mountpoint, cache_dir, tmp_path / "mount.log", env) as process:
        yield S3Mount(mountpoint, bucket, cache_dir, process, proxy, moto)
