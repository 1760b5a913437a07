"""The ``tessera`` command as a user runs it: user errors in one line (never a traceback), size floors,
``warm --thumbs`` and failed pins against a running server, each by running the real command."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tessera.cli_errors import describe
from tessera.config import ConfigError
from tessera.errors import OriginUnavailable
from tests.support.moto_server import free_port
from tests.support.origin_server import ObjectHTTPServer
from tests.support.tessera_server import TESSERA, tessera_server

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tessera(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TESSERA, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of stderr that report an error; the whole output must hold no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return [line for line in result.stderr.splitlines() if "error:" in line]


def test_config_typos_end_the_command_with_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "tessera.toml"
    config.write_text(
        '[server]\nprot = 9000\n[cache]\ndisk_sise = "1TB"\n'
        '[mounts.images]\norigin = "s3://bucket"\nendpoint = "http://127.0.0.1:9000"\n'
    )
    result = tessera("stats", "--config", str(config), cwd=tmp_path, env={"TESSERA_ORIGIN__RETRIEZ": "2"})
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == [
        "configuration error: unknown key cache.disk_sise (did you mean disk_size?)",
        "configuration error: unknown key mounts.images.endpoint (did you mean endpoint_url?)",
        "configuration error: unknown key origin.retriez (did you mean retries?) in TESSERA_ORIGIN__RETRIEZ",
        "configuration error: unknown key server.prot (did you mean port?)",
    ]


@dataclass(frozen=True)
class Problem:
    config: str
    message: str


PROBLEMS = {
    "unsupported origin": Problem(
        '[mounts.x]\norigin = "ftp://host/x"\n',
        "configuration error: mounts.x.origin: unsupported origin 'ftp://host/x' "
        "(use s3://bucket/prefix, file:///folder, a folder, or http(s)://host/base/)",
    ),
    # sysfs refuses a new directory even to root: a real PermissionError, whoever runs the tests.
    "unwritable cache dir": Problem(
        '[cache]\ndir = "/sys/tessera-test/cache"\n', f"error: /sys/tessera-test: {os.strerror(errno.EPERM)}"
    ),
}
COMMANDS = [
    ["stats"],
    ["cat", "/files/a"],
    ["warm", "/files/"],
    ["pin", "/files/a"],
    ["purge", "/files/"],
    ["serve"],
]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_user_errors_are_one_line_for_every_command(tmp_path: Path, problem: str, command: list[str]) -> None:
    """``serve`` included: there the cache directory error is raised while the application starts."""
    config = tmp_path / "tessera.toml"
    config.write_text(f"[server]\nport = {free_port()}\n{PROBLEMS[problem].config}")
    result = tessera(*command, "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert error_lines(result) == [PROBLEMS[problem].message]


def test_mount_cache_size_without_unit_is_refused_with_the_unit_suggested(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    cache_dir = str(tmp_path / "c")
    result = tessera(
        "mount",
        str(tmp_path),
        str(tmp_path / "mnt"),
        "--cache-dir",
        cache_dir,
        "--cache-size",
        "10",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert error_lines(result) == [
        "configuration error: cache.disk_size: 10 bytes is too small for a cache "
        "(at least 16MB: 16 blocks of cache.block_size); did you mean 10GB?"
    ]


@dataclass(frozen=True)
class Served:
    base: str
    config: Path
    folder: Path


@pytest.fixture
def served(tmp_path: Path, http_origin: ObjectHTTPServer) -> Iterator[Served]:
    """``tessera serve`` with a local folder mount ``local``, an HTTP mount ``web`` and a 1MB pin budget."""
    folder = tmp_path / "files"
    folder.mkdir()
    port = free_port()
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'[server]\nport = {port}\ntoken = "{TOKEN}"\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\ndisk_size = "64MB"\nblock_size = "256KB"\npin_size = "1MB"\n'
        '[origin]\nretries = 1\nbackoff = "10ms"\n'
        f'[mounts.local]\norigin = "file://{folder}"\n[mounts.web]\norigin = "{http_origin.url}"\n'
    )
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        yield Served(base, config, folder)


def warm_thumbs(config: Path, folder: Path) -> None:
    Image.new("RGB", (300, 200), "teal").save(folder / "pic.jpg")
    (folder / "notes.txt").write_text("not an image")
    result = tessera("warm", "--thumbs", "/local/", "--config", str(config), cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    # 100, 200 and (never upscaled) 300 px on the long edge; the text file is skipped with its reason.
    assert lines[-1] == "made 3 thumbnails of 2 objects"
    assert any(line.startswith("skipped /local/notes.txt: ") for line in lines)


def test_warm_thumbs_on_the_cache_directory(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    config = tmp_path / "tessera.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n[mounts.local]\norigin = "file://{folder}"\n')
    warm_thumbs(config, folder)


def test_a_second_server_on_an_owned_cache_directory_says_so_in_one_line(served: Served) -> None:
    """A ``TesseraError`` (``CacheLocked``) raised while ``serve`` starts."""
    other = tessera("serve", "--config", str(served.config), "--port", str(free_port()), cwd=served.folder)
    assert other.returncode == 1
    (line,) = error_lines(other)
    assert line.startswith("error: ") and str(served.config.parent / "cache") in line


def test_warm_thumbs_works_through_the_running_server(served: Served) -> None:
    warm_thumbs(served.config, served.folder)
    thumb = httpx.get(f"{served.base}/thumbs/local%2Fpic.jpg/full/100,67/0/default.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def pins(base: str) -> list[dict[str, str]]:
    return httpx.get(f"{base}/api/v1/cache/stats", headers=AUTH).json()["pinned"]["pins"]


def test_a_failed_pin_leaves_no_pin_behind(served: Served, http_origin: ObjectHTTPServer) -> None:
    (served.folder / "small.txt").write_text("reference data")
    (served.folder / "big.bin").write_bytes(os.urandom(2 * 2**20))  # more than the 1MB pin budget
    http_origin.put("flaky.bin", b"x" * 300_000)
    http_origin.reset_after(0, count=100)  # the HEAD answers, every GET of the body is cut

    def pin(path: str) -> subprocess.CompletedProcess[str]:
        return tessera("pin", path, "--config", str(served.config), cwd=served.folder)

    kept = pin("/local/small.txt")
    assert kept.returncode == 0, kept.stderr
    assert len(pins(served.base)) == 1
    for path, status in [("/local/big.bin", 507), ("/local/no-such-thing", 404), ("/web/flaky.bin", 502)]:
        failed = pin(path)
        assert failed.returncode == 1
        (line,) = error_lines(failed)
        assert line.startswith(f"error: server answered {status}: ")
        assert [p["pattern"] for p in pins(served.base)] == ["small.txt"], path
    http_origin.clear_faults()


def test_no_pin_left_in_the_index_after_a_restart(tmp_path: Path, http_origin: ObjectHTTPServer) -> None:
    """The index, not only the server's memory: the command reads it once the server has stopped."""
    folder = tmp_path / "files"
    folder.mkdir()
    port = free_port()
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'[server]\nport = {port}\ntoken = "{TOKEN}"\n[cache]\ndir = "{tmp_path / "cache"}"\n'
        f'[mounts.local]\norigin = "file://{folder}"\n'
    )
    with tessera_server(config, port, tmp_path / "serve.log"):
        assert tessera("pin", "/local/missing", "--config", str(config), cwd=tmp_path).returncode == 1
    figures = tessera("stats", "--json", "--config", str(config), cwd=tmp_path)
    assert figures.returncode == 0, figures.stderr
    assert json.loads(figures.stdout)["pinned"]["pins"] == []


def test_describe_gives_one_line_per_problem() -> None:
    """Pure: a multi-line origin message stays one line; a config error keeps its one line per key."""
    assert describe(OriginUnavailable("origin web failed:\n  Generic {\n    source: reset\n  }")) == [
        "origin web failed: Generic { source: reset }"
    ]
    assert describe(ConfigError("unknown key a.b\nunknown key a.c")) == ["unknown key a.b", "unknown key a.c"]
    assert describe(PermissionError(13, "Permission denied", "/srv/cache")) == [
        "/srv/cache: Permission denied"
    ]
