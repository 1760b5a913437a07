"""``tessera serve`` as a real process for tests, started on a config file and stopped afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.moto_server import free_port

TESSERA = str(Path(sys.executable).with_name("tessera"))


def write_config(tmp_path: Path, sections: str, server: str = "access_log = false") -> tuple[Path, int]:
    """``tmp_path/tessera.toml``: ``[server]`` on a free port of 127.0.0.1 (plus the ``server`` lines),
    then ``sections`` (the test's ``[cache]``, ``[mounts.…]`` and so on, ``{cache}`` standing for the
    cache directory ``tmp_path/cache``). Returns the file and the port."""
    port = free_port()
    config = tmp_path / "tessera.toml"
    body = sections.replace("{cache}", str(tmp_path / "cache"))
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n{server}\n{body}\n')
    return config, port


@contextmanager
def tessera_server(config: Path, port: int, log: Path, timeout: float = 30) -> Iterator[str]:
    """Run ``tessera serve --config CONFIG`` until it answers ``/healthz``; yields its base URL."""
    with tessera_process(config, port, log, timeout) as (base, _process):
        yield base


@contextmanager
def tessera_process(
    config: Path, port: int, log: Path, timeout: float = 30, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like ``tessera_server``, also yielding the process (for its pid); ``env`` replaces the environment."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [TESSERA, "serve", "--config", str(config)], stdout=out, stderr=out, env=env
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, log, timeout)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=20)


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Until ``base/healthz`` answers 200; fails with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()[-5000:]
        assert time.monotonic() < deadline, f"server did not start: {log.read_text()[-5000:]}"
        time.sleep(0.1)
