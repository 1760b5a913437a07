"""A throw-away PostgreSQL server for tests: ``initdb`` in a temporary folder, ``pg_ctl start`` on a free
port of 127.0.0.1, ``pg_ctl stop`` and the folder removed afterwards.

PostgreSQL refuses to run as root; when the tests run as root (CI does) the server runs as the
``postgres`` user of Debian's package, in a folder that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.moto_server import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (scripts/setup test does)")
    return found


class PostgresServer:
    """One PostgreSQL cluster; ``url()`` gives a fresh empty database's connection string."""

    def __init__(self) -> None:
        self.port = free_port()
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="tessera-pg-"))
        self.data = self.dir / "data"
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str) -> None:
        kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid} if self._user is not None else {}
        subprocess.run(args, check=True, capture_output=True, cwd=self.dir, **kwargs)  # type: ignore[call-overload]

    def start(self) -> None:
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "tessera", "--auth=trust", "-E", "UTF8")
        self.resume()

    def halt(self) -> None:
        """Stop the server (as a crash would: immediate), keeping its data for ``resume``."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l", str(self.dir / "log"), "start"
        )

    def stop(self) -> None:
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self) -> str:
        """A new database in this cluster, so tests never see each other's jobs."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self._dsn(name)

    def _dsn(self, database: str) -> str:
        return f"postgresql://tessera@127.0.0.1:{self.port}/{database}"


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
