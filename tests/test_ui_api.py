"""The JSON the pages need beyond the API: how much of an object is cached, and the dashboard's
last hour (the sampler's series, job counts)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tessera.web.ui.sampler import Sample, series
from tests.support.tessera_server import tessera_server, write_config

TOKEN = "ui-api-t0ken"


def test_series_turns_running_totals_into_figures_per_interval() -> None:
    samples = [
        Sample(t=100.0, hits=10, misses=10, origin_bytes=1000, origin_errors=0, fills=0),
        Sample(t=105.0, hits=40, misses=20, origin_bytes=6000, origin_errors=2, fills=3),
        Sample(t=110.0, hits=40, misses=20, origin_bytes=6000, origin_errors=2, fills=0),
    ]
    assert series(samples) == [
        {"t": 105.0, "reads": 40, "hit_ratio": 0.75, "origin_bytes": 5000, "origin_errors": 2, "fills": 3},
        {"t": 110.0, "reads": 0, "hit_ratio": None, "origin_bytes": 0, "origin_errors": 0, "fills": 0},
    ]
    assert series(samples[:1]) == []


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ui-api")
    (tmp / "open").mkdir()
    (tmp / "open" / "big.bin").write_bytes(bytes(range(256)) * 20_000)  # 5 MB: 5 blocks
    (tmp / "closed").mkdir()
    (tmp / "closed" / "secret.txt").write_text("secret")
    config, port = write_config(
        tmp,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
small_object_size = "1MB"
[mounts.open]
origin = "file://{tmp / "open"}"
[mounts.closed]
origin = "file://{tmp / "closed"}"
public = false
""",
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    with tessera_server(config, port, tmp / "serve.log") as url:
        yield url


def test_cached_counts_the_bytes_on_disk(base: str) -> None:
    assert httpx.get(f"{base}/api/v1/cached/open/big.bin").json() == {
        "path": "/open/big.bin",
        "size": 5_120_000,
        "cached": 0,
    }
    assert httpx.get(f"{base}/api/v1/files/open/big.bin", headers={"Range": "bytes=0-99"}).status_code == 206
    deadline = time.monotonic() + 10
    while (cached := httpx.get(f"{base}/api/v1/cached/open/big.bin").json()["cached"]) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 0 < cached < 5_120_000  # the first block (and what was read ahead), not the whole object
    assert httpx.get(f"{base}/api/v1/files/open/big.bin").status_code == 200
    deadline = time.monotonic() + 10
    while httpx.get(f"{base}/api/v1/cached/open/big.bin").json()["cached"] < 5_120_000:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_cached_is_read_like_the_object(base: str) -> None:
    assert httpx.get(f"{base}/api/v1/cached/open/missing.bin").status_code == 404
    assert httpx.get(f"{base}/api/v1/cached/closed/secret.txt").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{base}/api/v1/cached/closed/secret.txt", headers=auth).json()["size"] == 6
    assert httpx.get(f"{base}/api/v1/cached/open/../x").status_code in (400, 404)


def test_history_samples_every_five_seconds(base: str) -> None:
    httpx.get(f"{base}/api/v1/files/open/big.bin")
    deadline = time.monotonic() + 15
    while not (history := httpx.get(f"{base}/api/v1/stats/history").json())["points"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert history["interval"] == 5.0
    point = history["points"][-1]
    assert set(point) == {"t", "reads", "hit_ratio", "origin_bytes", "origin_errors", "fills"}
    assert abs(point["t"] - time.time()) < 10
    assert sum(p["reads"] for p in history["points"]) > 0
    assert history["jobs"] == {}


def test_pages_answer_html_that_never_repeats_the_request(base: str) -> None:
    for path in ["/", "/view/open%2Fbig.bin", "/upload", "/v/abcdefgh", "/dashboard"]:
        page = httpx.get(base + path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/ui/common.js"></script>' in page.text
        assert "big.bin" not in page.text and "abcdefgh" not in page.text  # the script reads the URL
    assert httpx.get(f"{base}/ui/common.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base}/ui/nothing.js").status_code == 404
