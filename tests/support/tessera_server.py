"""``tessera serve`` as a real process for tests, started on a config file and stopped afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

TESSERA = str(Path(sys.executable).with_name("tessera"))


@contextmanager
def tessera_server(config: Path, port: int, log: Path, timeout: float = 30) -> Iterator[str]:
    """Run ``tessera serve --config CONFIG`` until it answers ``/healthz``; yields its base URL."""
    with tessera_process(config, port, log, timeout) as (base, _process):
        yield base


@contextmanager
def tessera_process(
    config: Path, port: int, log: Path, timeout: float = 30
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`tessera_server` that also yields the process (for tests that inspect it)."""
    with open(log, "wb") as out:
        process = subprocess.Popen([TESSERA, "serve", "--config", str(config)], stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"server did not start: {log.read_text()}"
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=20)
