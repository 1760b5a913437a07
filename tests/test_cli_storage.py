"""``tessera put/get/ls/rm/import`` against a real server: bytes round-trip, listings page, jobs are
followed to the end, and every outcome has the exit code scripts rely on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tessera_server import TESSERA, tessera_server, write_config

TOKEN = "cli-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "origin").mkdir()
    incoming = tmp_path / "incoming"
    (incoming / "run1" / "deep").mkdir(parents=True)
    for n in range(5):
        (incoming / "run1" / f"f{n}.bin").write_bytes(os.urandom(1000 + n))
    (incoming / "run1" / "deep" / "g.bin").write_bytes(b"deep")
    config, port = write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
[storage]
ingest_allow = ["file://{incoming}/"]
[mounts.files]
origin = "file://{tmp_path / "origin"}"
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        yield base


def tessera(
    server: str, *args: str, token: str | None = TOKEN, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["TESSERA_SERVER_URL"] = server
    if token:
        env["TESSERA_TOKEN"] = token
    return subprocess.run([TESSERA, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_put_get_ls_rm_round_trip(server: str, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "scan.tif"
    source.write_bytes(data)
    put = tessera(server, "put", str(source), "/files/scans/scan.tif")
    assert put.returncode == 0, put.stderr
    stored = json.loads(put.stdout)
    assert stored["size"] == len(data) and stored["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "origin" / "scans" / "scan.tif").read_bytes() == data

    got = tessera(server, "get", "/files/scans/scan.tif", str(tmp_path / "back.tif"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back.tif").read_bytes() == data
    assert not list(tmp_path.glob(".back.tif.part"))
    to_stdout = subprocess.run(
        [TESSERA, "get", "/files/scans/scan.tif", "-", "--server", server], capture_output=True, timeout=60
    )
    assert to_stdout.returncode == 0 and to_stdout.stdout == data

    tessera(server, "put", str(source), "/files/scans/b/other.tif")
    listed = tessera(server, "ls", "/files/scans/")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["/files/scans/b/", "/files/scans/scan.tif"]
    recursive = tessera(server, "ls", "-r", "--json", "/files/scans/")
    entries = [json.loads(line) for line in recursive.stdout.splitlines()]
    assert sorted(e["path"] for e in entries) == ["/files/scans/b/other.tif", "/files/scans/scan.tif"]
    assert all(e["size"] == len(data) for e in entries)

    assert tessera(server, "rm", "/files/scans/scan.tif").returncode == 0
    assert tessera(server, "get", "/files/scans/scan.tif", str(tmp_path / "gone")).returncode == 3
    assert not (tmp_path / "gone").exists()


def test_exit_codes_say_what_went_wrong(server: str, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc")
    assert tessera(server, "put", str(source), "/files/a.bin", token=None).returncode == 4  # no token
    assert tessera(server, "put", str(source), "/files/a.bin", token="wrong").returncode == 4
    assert tessera(server, "put", str(source), "/files/a.bin").returncode == 0
    exists = tessera(server, "put", "--create-only", str(source), "/files/a.bin")
    assert exists.returncode == 5 and "exists" in exists.stderr
    assert tessera(server, "put", str(source), "/files/../etc/passwd").returncode == 6  # bad path
    assert tessera(server, "put", str(source), "/nomount/a.bin").returncode == 3
    assert tessera("http://127.0.0.1:9", "ls", "/files/").returncode == 8  # no server there


def test_import_follows_the_job_to_the_end(server: str, tmp_path: Path) -> None:
    source = f"file://{tmp_path / 'incoming' / 'run1'}"
    done = tessera(server, "import", source, "/files/run1")
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout)
    assert final["state"] == "done" and final["done"] == 6 and final["failed"] == 0
    for local in (tmp_path / "incoming" / "run1").rglob("*.bin"):
        relative = local.relative_to(tmp_path / "incoming" / "run1")
        assert (tmp_path / "origin" / "run1" / relative).read_bytes() == local.read_bytes()
    refused = tessera(server, "import", f"file://{tmp_path / 'origin'}", "/files/copy")
    assert refused.returncode == 4  # not in storage.ingest_allow: 403
