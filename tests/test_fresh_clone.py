"""The README's set-up on a fresh clone: ``scripts/serve`` with only the runtime profile, then Try it.

The clone is of the committed HEAD (uncommitted changes are not in it). The server listens on a free
port (``TESSERA_SERVER__PORT``) rather than 8080, which another server on the machine may hold; the
README's Try-it commands are taken from the README and run as written, with that port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.moto_server import free_port

REPO = Path(__file__).resolve().parents[1]
#: Creating the runtime .venv (pip's local cache, no test extras) takes about a minute on a quiet machine.
SET_UP_SECONDS = 900


def try_it_commands() -> list[str]:
    """The shell commands of the README's "Try it" line(s), in order."""
    text = (REPO / "README.md").read_text()
    paragraph = text[text.index("Try it:") :].split("\n\n")[0]
    return re.findall(r"`([^`]+)`", paragraph)


def clean_environment(port: int) -> dict[str, str]:
    """This process's environment without its virtualenv and without TESSERA_/AWS_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "AWS_", "VIRTUAL_ENV"))}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["TESSERA_SERVER__PORT"] = str(port)
    return env


@contextmanager
def serve(clone: Path, env: dict[str, str], log: Path, port: int) -> Iterator[None]:
    """Run ``scripts/serve`` in ``clone`` until it answers ``/healthz``, then stop it with SIGINT."""
    with open(log, "wb") as out:
        process = subprocess.Popen(["scripts/serve"], cwd=clone, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + SET_UP_SECONDS
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"scripts/serve did not answer: {log.read_text()}"
            time.sleep(0.5)
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def installed_state(clone: Path) -> dict[str, int]:
    """Modification times of what an install would touch: the set-up stamps, site-packages and the
    web pages' libraries."""
    venv = clone / ".venv"
    entries = [
        *venv.glob(".tessera-installed-*"),
        *venv.glob("lib/python*/site-packages/*"),
        *(clone / "src/tessera/web/ui/static/vendor").glob("*"),
        *(clone / "src/tessera/web/ui/static/vendor").glob(".installed"),
    ]
    return {str(path.relative_to(clone)): path.stat().st_mtime_ns for path in entries}


@pytest.mark.slow
@pytest.mark.timeout(2 * SET_UP_SECONDS + 300)
def test_readme_set_up_and_try_it_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "tessera"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    port = free_port()
    env = clean_environment(port)
    make_file, request = try_it_commands()
    assert "8080" in request
    request = request.replace("8080", str(port))

    first_log = tmp_path / "first.log"
    with serve(clone, env, first_log, port):
        subprocess.run(["bash", "-c", make_file], cwd=clone, check=True)
        answer = subprocess.run(["bash", "-c", request], cwd=clone, capture_output=True, text=True)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout == "hello\n"
        # The web pages, with the libraries scripts/setup brought from the npm registry.
        assert "<title>Browse · Tessera</title>" in httpx.get(f"http://127.0.0.1:{port}/").text
        for name in ("openseadragon.min.js", "tus.min.js", "uPlot.iife.min.js", "uPlot.min.css"):
            assert httpx.get(f"http://127.0.0.1:{port}/ui/vendor/{name}").status_code == 200, name
    assert "Traceback" not in first_log.read_text()

    # Only the runtime profile was installed, and it satisfies every import of the runtime code.
    python = str(clone / ".venv" / "bin" / "python")
    imports = subprocess.run(
        [
            python,
            "-c",
            "import importlib, importlib.util, pkgutil, tessera\n"
            "for module in pkgutil.walk_packages(tessera.__path__, 'tessera.'):\n"
            "    importlib.import_module(module.name)\n"
            "assert importlib.util.find_spec('pytest') is None, 'test extras installed'\n",
        ],
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stderr
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout

    # The second run installs nothing and serves the same.
    before = installed_state(clone)
    second_log = tmp_path / "second.log"
    with serve(clone, env, second_log, port):
        assert subprocess.run(["bash", "-c", request], capture_output=True, text=True).stdout == "hello\n"
    assert installed_state(clone) == before
    assert "Traceback" not in second_log.read_text()
