"""Every route in ``/openapi.json`` fuzzed by schemathesis against a real ``tessera serve`` process:
no 5xx, every response as documented (status, content type, body schema), memory bounded.

Examples are bounded and derandomized so the run is quick and a failure reproduces. Routes with a
query or a body also get requests that break the schema (each must be a documented 4xx); the IIIF
routes get a round with a real image as the identifier, so their other segments reach the parser
and the renderer instead of stopping at a 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from PIL import Image
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.moto_server import free_port
from tests.support.tessera_server import tessera_process

TOKEN = "fuzz-token"
EXAMPLES = 25
#: Requests that break the schema (wrong types, missing fields): each must be a 4xx.
NEGATIVE_EXAMPLES = 10
#: Growth of the server's resident memory allowed over the whole run (libvips and Pillow caches,
#: memoised IIIF requests): a leak per request would pass this within a few hundred requests.
RSS_GROWTH_LIMIT = 256 * 1024 * 1024
IMAGE = "local/pictures/photo.png"

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    files = tmp_path / "files"
    (files / "pictures").mkdir(parents=True)
    Image.new("RGB", (300, 200), (200, 120, 40)).save(files / "pictures" / "photo.png")
    (files / "notes.txt").write_text("hello\n")
    port = free_port()
    config = tmp_path / "tessera.toml"
    config.write_text(
        f"""
[server]
port = {port}
token = "{TOKEN}"
access_log = false
[cache]
dir = "{tmp_path / "cache"}"
disk_size = "64MB"
[images]
max_area = 4000000
thumbnail_sizes = [50, 100]
[mounts.local]
origin = "file://{files}"
"""
    )
    with tessera_process(config, port, tmp_path / "serve.log") as (base, process):
        yield base, process.pid


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _fuzz(operation: Any, base: str, examples: int, **fixed: Any) -> int:
    """Send ``examples`` generated requests for one operation; returns how many were sent."""
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(**fixed))
    def run(case: Any) -> None:
        nonlocal sent
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        sent += 1
        assert response.status_code < 500, f"{case.as_curl_command()} answered {response.status_code}"
        case.validate_response(response, checks=CHECKS)

    run()
    return sent


def test_every_route_survives_fuzzing(server: tuple[str, int]) -> None:
    base, pid = server
    assert httpx.get(f"{base}/iiif/3/{IMAGE.replace('/', '%2F')}/info.json").status_code == 200
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {
        "GET /api/v1/files/{path}",
        "POST /api/v1/cache/warm",
        "GET /thumbs/{identifier}/info.json",
    } <= labels
    before = _rss(pid)
    sent = 0
    for operation in operations:
        sent += _fuzz(operation, base, EXAMPLES)
        if operation.query or operation.body:  # a path's strings and optional headers cannot be broken
            sent += _fuzz(operation, base, NEGATIVE_EXAMPLES, generation_mode=GenerationMode.NEGATIVE)
        if "{identifier}" in operation.path:
            sent += _fuzz(operation, base, EXAMPLES, path_parameters={"identifier": IMAGE})
    assert sent >= len(operations) * 5  # generation really ran for every route
    assert _rss(pid) - before < RSS_GROWTH_LIMIT
    assert httpx.get(f"{base}/healthz").status_code == 200
