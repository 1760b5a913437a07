"""``POST /api/v1/retrieve`` against a real server: local files with the right bytes and SHA-256, pinned
while a lease runs (also across a restart), evictable after it, and the errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.storage import retrieve as retrieve_module
from tessera.storage.leases import LeaseBook, LeaseStore
from tessera.storage.retrieve import Retriever
from tests.support.engines import open_engine
from tests.support.moto_server import MotoServer
from tests.support.tessera_server import TESSERA, tessera_server, write_config

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KB = 1024
#: Other objects of 128 KB, read to fill the disk tier past its size.
FILLERS = 24
#: A disk tier of 2 MB in blocks of 64 KB, 1 MB of it for pins, evicting least recently used first
#: (a frequency-aware policy could keep the leased file after its lease for its many reads).
CACHE = """
[cache]
dir = "{cache}"
disk_size = "2MB"
pin_size = "1MB"
memory_size = "256KB"
block_size = "64KB"
small_object_size = "64KB"
policy = "lru"
index_flush_interval = "100ms"
"""


def content(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "product").mkdir(parents=True)
    (root / "product" / "a.bin").write_bytes(content("a", 300 * KB))
    (root / "product" / "b.bin").write_bytes(content("b", 200 * KB + 7))
    (root / "big.bin").write_bytes(content("big", 1200 * KB))
    (root / "empty.bin").write_bytes(b"")
    for number in range(FILLERS):
        (root / "filler" / f"{number}.bin").parent.mkdir(exist_ok=True)
        (root / "filler" / f"{number}.bin").write_bytes(content(f"f{number}", 128 * KB))
    return root


def config(tmp_path: Path, root: Path, extra: str = "") -> tuple[Path, int]:
    mounts = f'[mounts.local]\norigin = "file://{root}"\n{extra}'
    return write_config(tmp_path, CACHE + mounts, server=f'access_log = false\ntoken = "{TOKEN}"')


@pytest.fixture
def server(tmp_path: Path, origin: Path) -> Iterator[str]:
    path, port = config(tmp_path, origin)
    with tessera_server(path, port, tmp_path / "serve.log") as base:
        yield base


def retrieve(base: str, body: dict[str, Any], status: int = 200) -> Any:
    response = httpx.post(f"{base}/api/v1/retrieve", json=body, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    return response.json()


def fill_cache(base: str) -> None:
    """Read every filler object: 3 MB through a 2 MB disk tier."""
    for number in range(FILLERS):
        response = httpx.get(f"{base}/api/v1/files/local/filler/{number}.bin", timeout=30)
        assert response.status_code == 200


def pins(base: str) -> int:
    return int(httpx.get(f"{base}/api/v1/stats").json()["pins"])


def wait_for(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_retrieve_makes_local_files_with_their_bytes_and_sha256(server: str, origin: Path) -> None:
    one = retrieve(server, {"path": "/local/product/a.bin", "lease": 60})
    data = (origin / "product" / "a.bin").read_bytes()
    assert one["path"] == "/local/product/a.bin"
    assert one["size"] == len(data)
    assert one["sha256"] == hashlib.sha256(data).hexdigest()
    assert Path(one["local_path"]).read_bytes() == data
    assert one["lease"] and one["expires"].startswith(time.strftime("%Y", time.gmtime()))

    several = retrieve(
        server, {"paths": ["/local/product/b.bin", "/local/empty.bin", "/local/product/a.bin"]}
    )
    assert [item["path"] for item in several] == [
        "/local/product/b.bin",
        "/local/empty.bin",
        "/local/product/a.bin",
    ]
    for item in several:
        expected = (origin / item["path"].removeprefix("/local/")).read_bytes()
        assert Path(item["local_path"]).read_bytes() == expected
        assert item["sha256"] == hashlib.sha256(expected).hexdigest()
        assert item["size"] == len(expected)
    assert len({item["lease"] for item in several}) == 1
    assert several[2]["local_path"] == one["local_path"]


def test_the_cli_retrieves_through_the_server(server: str, origin: Path) -> None:
    done = subprocess.run(
        [TESSERA, "retrieve", "/local/product/b.bin", "--lease", "30", "--server", server, "--token", TOKEN],
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(done.stdout)
    data = (origin / "product" / "b.bin").read_bytes()
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert Path(answer["local_path"]).read_bytes() == data
    missing = [TESSERA, "retrieve", "/local/nope.bin", "--server", server, "--token", TOKEN]
    assert subprocess.run(missing, capture_output=True).returncode == 3  # not found


def test_a_leased_file_stays_through_eviction_and_goes_after(server: str, origin: Path) -> None:
    leased = retrieve(server, {"path": "/local/product/a.bin", "lease": 600})
    kept = Path(leased["local_path"])
    fill_cache(server)
    assert kept.read_bytes() == (origin / "product" / "a.bin").read_bytes()
    assert pins(server) == 1
    assert httpx.delete(f"{server}/api/v1/retrieve/{leased['lease']}", headers=AUTH).status_code == 204
    assert pins(server) == 0
    fill_cache(server)
    assert not kept.exists()
    disk = httpx.get(f"{server}/api/v1/stats").json()["tiers"]["disk"]
    assert disk["bytes"] <= disk["capacity"]


def test_the_last_of_several_leases_unpins(server: str) -> None:
    short = retrieve(server, {"path": "/local/product/a.bin", "lease": 1})
    longer = retrieve(server, {"path": "/local/product/a.bin", "lease": 4})
    released = retrieve(server, {"path": "/local/product/a.bin", "lease": 600})
    assert len({short["lease"], longer["lease"], released["lease"]}) == 3
    response = httpx.delete(f"{server}/api/v1/retrieve/{released['lease']}", headers=AUTH)
    assert response.status_code == 204
    assert httpx.delete(f"{server}/api/v1/retrieve/{released['lease']}", headers=AUTH).status_code == 404
    time.sleep(2)
    assert pins(server) == 1  # the first ran out, the second still holds it
    wait_for(lambda: pins(server) == 0)


def test_a_pin_made_by_hand_outlives_the_leases(server: str) -> None:
    response = httpx.post(f"{server}/api/v1/cache/pin", json={"path": "/local/product/b.bin"}, headers=AUTH)
    assert response.status_code == 200
    lease = retrieve(server, {"path": "/local/product/b.bin", "lease": 60})
    assert httpx.delete(f"{server}/api/v1/retrieve/{lease['lease']}", headers=AUTH).status_code == 204
    assert pins(server) == 1
    assert httpx.post(
        f"{server}/api/v1/cache/unpin", json={"path": "/local/product/b.bin"}, headers=AUTH
    ).json() == {"unpinned": 1}


def test_leases_outlive_a_restart_and_run_out_while_it_is_down(tmp_path: Path, origin: Path) -> None:
    path, port = config(tmp_path, origin)
    with tessera_server(path, port, tmp_path / "serve-1.log") as base:
        held = retrieve(base, {"path": "/local/product/a.bin", "lease": 600})
        lapsing = retrieve(base, {"path": "/local/product/b.bin", "lease": 2})
        assert pins(base) == 2
    time.sleep(2.5)  # the second lease runs out while the server is down
    with tessera_server(path, port, tmp_path / "serve-2.log") as base:
        wait_for(lambda: pins(base) == 1)
        fill_cache(base)
        assert Path(held["local_path"]).read_bytes() == (origin / "product" / "a.bin").read_bytes()
        assert not Path(lapsing["local_path"]).exists()
        assert httpx.delete(f"{base}/api/v1/retrieve/{lapsing['lease']}", headers=AUTH).status_code == 404
        assert httpx.delete(f"{base}/api/v1/retrieve/{held['lease']}", headers=AUTH).status_code == 204
        assert pins(base) == 0


BAD_REQUESTS: list[tuple[dict[str, Any], int]] = [
    ({"path": "/local/product/missing.bin"}, 404),
    ({"path": "/local/product"}, 404),  # a prefix is not an object
    ({"path": "/nomount/a.bin"}, 404),
    ({"path": "/local/../etc/passwd"}, 400),
    ({"path": "/local/product/a.bin", "paths": ["/local/product/b.bin"]}, 400),
    ({}, 400),
    ({"path": "/local/product/a.bin", "lease": 0}, 400),
    ({"path": "/local/product/a.bin", "lease": 86_401}, 400),
    ({"paths": []}, 400),
    ({"paths": ["/local/product/a.bin", "/local/missing.bin"]}, 404),
    ({"path": "/local/big.bin"}, 507),  # 1.2 MB: more than cache.pin_size
    ({"paths": ["/local/product/a.bin", "/local/big.bin"]}, 507),
]


def test_bad_requests_pin_nothing(server: str) -> None:
    for body, status in BAD_REQUESTS:
        answer = retrieve(server, body, status)
        assert set(answer) == {"error", "detail"}, body
        assert pins(server) == 0, body


def test_retrieve_needs_a_token(server: str) -> None:
    body = {"path": "/local/product/a.bin"}
    assert httpx.post(f"{server}/api/v1/retrieve", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{server}/api/v1/retrieve", json=body, headers=wrong).status_code == 401
    assert httpx.delete(f"{server}/api/v1/retrieve/abc").status_code == 401
    assert pins(server) == 0


def test_retrieve_needs_the_write_scope_on_every_path(tmp_path: Path, origin: Path) -> None:
    tokens = {}
    sections = ""
    for name, scopes, prefixes in (("reader", "read,admin", []), ("product", "write", ["/local/product"])):
        args = [TESSERA, "token", "new", name, "--scopes", scopes]
        for prefix in prefixes:
            args += ["--prefix", prefix]
        token, _blank, *section = subprocess.run(
            args, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        tokens[name] = {"Authorization": f"Bearer {token}"}
        sections += "\n".join(section) + "\n"
    path, port = config(tmp_path, origin, sections)
    with tessera_server(path, port, tmp_path / "serve.log") as base:
        url = f"{base}/api/v1/retrieve"
        assert (
            httpx.post(url, json={"path": "/local/product/a.bin"}, headers=tokens["reader"]).status_code
            == 403
        )
        outside = {"paths": ["/local/product/a.bin", "/local/empty.bin"]}
        assert httpx.post(url, json=outside, headers=tokens["product"]).status_code == 403
        assert pins(base) == 0
        inside = httpx.post(url, json={"path": "/local/product/a.bin"}, headers=tokens["product"])
        assert inside.status_code == 200
        lease = inside.json()["lease"]
        assert httpx.delete(f"{url}/{lease}", headers=tokens["reader"]).status_code == 403
        assert httpx.delete(f"{url}/{lease}", headers=tokens["product"]).status_code == 204


def test_retrieve_from_s3(tmp_path: Path, origin: Path, moto: MotoServer) -> None:
    moto.make_bucket("retrieve-products")
    files = {f"prod/{n}.dat": content(f"s3-{n}", 150 * KB + n) for n in range(3)}
    for key, data in files.items():
        moto.client().put_object(Bucket="retrieve-products", Key=key, Body=data)
    s3 = (
        f'[mounts.s3]\norigin = "s3://retrieve-products"\nendpoint_url = "{moto.endpoint}"\n'
        'region = "us-east-1"\naccess_key_id = "testing"\nsecret_access_key = "testing"\n'
    )
    path, port = config(tmp_path, origin, s3)
    with tessera_server(path, port, tmp_path / "serve.log") as base:
        answer = retrieve(base, {"paths": [f"/s3/{key}" for key in files], "lease": 30})
    for item, (key, data) in zip(answer, files.items(), strict=True):
        assert item["path"] == f"/s3/{key}"
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        assert Path(item["local_path"]).read_bytes() == data


@pytest.mark.anyio
async def test_a_version_is_hashed_once(
    tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[Path] = []
    real = retrieve_module.file_sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(retrieve_module, "file_sha256", counting)
    mounts = {"local": {"origin": f"file://{origin}"}}
    async with open_engine(tmp_path / "cache", mounts, disk_size="2MB", pin_size="1MB") as engine:
        book = LeaseBook(engine, LeaseStore(tmp_path / "leases.sqlite"))
        retriever = Retriever(engine, book)
        first = await retriever.retrieve(["/local/product/a.bin"], 60)
        second = await retriever.retrieve(["/local/product/a.bin", "/local/product/a.bin"], 60)
        assert len(hashed) == 1
        assert {r.sha256 for r in first[1] + second[1]} == {
            hashlib.sha256((origin / "product" / "a.bin").read_bytes()).hexdigest()
        }
        (origin / "product" / "a.bin").write_bytes(b"changed")  # a new version is hashed afresh
        os.utime(origin / "product" / "a.bin", (1, 1))
        await engine.superseded(
            "/local/product/a.bin", await engine.namespace.origin("local").stat("product/a.bin")
        )
        third = await retriever.retrieve(["/local/product/a.bin"], 60)
        assert third[1][0].sha256 == hashlib.sha256(b"changed").hexdigest()
        assert len(hashed) == 2
        for lease in (first[0], second[0], third[0]):
            assert await book.release(lease.id)
        await book.close()
