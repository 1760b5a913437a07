"""An nginx front from ``tessera front-config``, run in the foreground for a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.moto_server import free_port
from tests.support.tessera_server import TESSERA

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
AS_ROOT = ["--user", "root"] if os.geteuid() == 0 else []  # workers must reach the pytest tmp dirs


@dataclass
class Front:
    url: str
    prefix: Path
    conf: Path

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)  # type: ignore[arg-type]


@contextmanager
def nginx_front(config: Path, run: Path, *options: str) -> Iterator[Front]:
    """``tessera front-config`` into ``run/nginx.conf``, then nginx on it in the foreground until the end."""
    port = free_port()
    run.mkdir()
    conf, prefix = run / "nginx.conf", run / "prefix"
    generate = [TESSERA, "front-config", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    generate += [
        "--cache-dir",
        str(run / "cache"),
        "--prefix",
        str(prefix),
        "--workers",
        "1",
        "-o",
        str(conf),
    ]
    made = subprocess.run([*generate, *AS_ROOT, *options], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    with open(run / "nginx.out", "wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            logs = f"{(run / 'nginx.out').read_text()}{read_text(prefix / 'error.log')}"
            assert process.poll() is None, logs
            assert time.monotonic() < deadline, f"nginx did not start: {logs}"
            time.sleep(0.05)
        yield Front(url, prefix, conf)
    finally:
        process.terminate()
        process.wait(timeout=20)


def read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
