"""Run moto's standalone server (a real S3-compatible HTTP endpoint) as a subprocess for tests."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["MotoServer", "free_port"]

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """moto's ``moto_server`` on 127.0.0.1 at a free port; output goes to a temp log file (``log_path``,
    deleted by ``stop()`` unless ``keep_log``).

    ``start()`` waits (up to ``startup_timeout`` seconds) until the server answers HTTP. Credentials for
    clients: access key/secret ``"testing"``, region ``us-east-1``. moto does not check signatures.
    """

    def __init__(
        self, host: str = "127.0.0.1", startup_timeout: float = 30.0, keep_log: bool = False
    ) -> None:
        self.host = host
        self.keep_log = keep_log
        self.port = 0
        self.startup_timeout = startup_timeout
        self.executable = Path(sys.executable).with_name("moto_server")
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash), usable as an S3 endpoint URL."""
        if self._proc is None:
            raise RuntimeError("moto server not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Launch the subprocess and wait until it answers; retries on a port clash. Returns self."""
        if self._proc is not None:
            raise RuntimeError("moto server already started")
        if not self.executable.exists():
            raise FileNotFoundError(f"moto_server not found next to the interpreter: {self.executable}")
        fd, log_name = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        last_error = "never started"
        for _attempt in range(3):
            self.port = free_port(self.host)
            with open(self.log_path, "ab") as log:
                proc = subprocess.Popen(
                    [str(self.executable), "-H", self.host, "-p", str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self._proc = proc
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    last_error = f"moto_server exited with code {proc.returncode}"
                    break
                if self._answers():
                    return self
                time.sleep(0.05)
            else:
                last_error = f"moto_server did not answer within {self.startup_timeout} s"
            self._stop_process()
        raise RuntimeError(f"{last_error}; log: {self.log_path}\n{self.log_tail()}")

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
        try:
            conn.request("GET", "/moto-api/data.json")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """Terminate the subprocess and wait for it (kill after 10 s); delete the log unless ``keep_log``."""
        self._stop_process()
        if not self.keep_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, nbytes: int = 4000) -> str:
        """Last ``nbytes`` of the server's output (for failure messages)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[-nbytes:].decode(errors="replace")

    def reset(self) -> None:
        """Wipe all moto state (buckets, objects) via ``POST /moto-api/reset``."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset")
            resp = conn.getresponse()
            resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"moto reset failed: HTTP {resp.status}")
        finally:
            conn.close()

    def client(self, endpoint_url: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client (path-style, "testing" credentials) for this server, or for ``endpoint_url``
        (e.g. a :class:`CountingProxy` in front of it). Extra keyword arguments go to botocore ``Config``."""
        import boto3
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, **config)
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=cfg,
        )

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` (3-63 chars, lowercase, no underscores)."""
        self.client().create_bucket(Bucket=name)
