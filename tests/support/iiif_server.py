"""A ``tessera serve`` for the IIIF tests: a local folder mounted as ``img``, a moto bucket as ``s3``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.moto_server import MotoServer, free_port
from tests.support.proxy import CountingProxy
from tests.support.tessera_server import tessera_server


@dataclass
class IiifServer:
    base: str
    folder: Path
    bucket: str
    #: Counts the requests that reach the bucket.
    proxy: CountingProxy
    moto: MotoServer

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=60, **kwargs)  # type: ignore[arg-type]

    def made(self, path: str) -> float:
        """``tessera_iiif_responses_total{path=...}`` from the server's /metrics."""
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(f'tessera_iiif_responses_total{{path="{path}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextmanager
def iiif_server(tmp: Path, folder: Path, moto: MotoServer, settings: str = "") -> Iterator[IiifServer]:
    """Serve ``folder`` and a fresh bucket; ``settings`` is more TOML (``[cache]`` and ``[images]`` keys)."""
    bucket = f"iiif-{uuid.uuid4().hex[:8]}"
    moto.make_bucket(bucket)
    proxy = CountingProxy(moto.endpoint).start()
    port = free_port()
    config = tmp / "tessera.toml"
    config.write_text(
        f"""
[server]
port = {port}
[cache]
dir = "{tmp / "cache"}"
{settings}
[mounts.img]
origin = "file://{folder}"
[mounts.s3]
origin = "s3://{bucket}"
endpoint_url = "{proxy.endpoint}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
"""
    )
    try:
        with tessera_server(config, port, tmp / "serve.log") as base:
            yield IiifServer(base, folder, bucket, proxy, moto)
    finally:
        proxy.stop()
