"""The HTTP cache tier: ``tessera front-config`` output run by a real nginx in front of real servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pyvips

from tessera.deploy.nginx import parse_address, render_nginx_conf
from tessera.deploy.ring import Ring
from tests.support.front import AS_ROOT, NGINX, Front, nginx_front
from tests.support.moto_server import free_port
from tests.support.tessera_server import TESSERA, tessera_server

IMAGES = [f"img{i}.tif" for i in range(8)]
FILE_BYTES = bytes(range(256)) * 64


@dataclass
class Node:
    base: str
    config: Path
    log: Path


def tile(name: str = "img0.tif", x: int = 0) -> str:
    return f"/iiif/3/img%2F{name}/{x},0,256,256/256,/0/default.jpg"


def make_node(tmp: Path, folder: Path) -> tuple[Path, int]:
    port = free_port()
    config = tmp / "tessera.toml"
    config.write_text(
        f"""
[server]
port = {port}
access_log = true  # the tests read Tessera's access log for nginx's revalidations
[cache]
dir = "{tmp / "cache"}"
[images]
derivative_cache = true
[mounts.img]
origin = "file://{folder}"
"""
    )
    return config, port


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("front-src")
    picture = (
        pyvips.Image.black(600, 400, bands=3)
        .linear(1, [200, 40, 90])
        .cast("uchar")
        .draw_rect([20, 200, 240], 100, 100, 200, 120, fill=True)
    )
    picture.tiffsave(
        str(folder / IMAGES[0]), tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256
    )
    for name in IMAGES[1:]:
        shutil.copyfile(folder / IMAGES[0], folder / name)
    (folder / "data.bin").write_bytes(FILE_BYTES)
    return folder


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("front-node")
    config, port = make_node(tmp, folder)
    with tessera_server(config, port, tmp / "serve.log") as base:
        yield Node(base, config, tmp / "serve.log")


@pytest.fixture(scope="module")
def front(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with nginx_front(node.config, tmp_path_factory.mktemp("front") / "run") as running:
        yield running


def test_tile_is_a_miss_then_a_hit_with_the_same_bytes(front: Front, node: Node) -> None:
    first = front.get(tile())
    assert first.status_code == 200, first.text
    assert first.headers["x-cache-status"] == "MISS"
    assert first.headers["content-type"] == "image/jpeg"
    second = front.get(tile())
    assert second.status_code == 200
    assert second.headers["x-cache-status"] == "HIT"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert httpx.get(f"{node.base}{tile()}").content == first.content
    image = pyvips.Image.new_from_buffer(second.content, "")
    assert (image.width, image.height) == (256, 256)
    # Browsers still get Tessera's own Cache-Control.
    assert second.headers["cache-control"] == "public, max-age=86400"


def test_thumbnail_is_cached(front: Front) -> None:
    path = "/thumbs/img%2Fimg0.tif/full/max/0/default.jpg"
    first, second = front.get(path), front.get(path)
    assert first.status_code == 200, first.text
    assert (first.headers["x-cache-status"], second.headers["x-cache-status"]) == ("MISS", "HIT")
    assert second.content == first.content


def test_info_json_names_the_front_and_each_host_has_its_own_entry(front: Front) -> None:
    path = "/iiif/3/img%2Fimg1.tif/info.json"
    first = front.get(path)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/json")
    info = first.json()
    assert info["id"] == f"{front.url}/iiif/3/img%2Fimg1.tif"
    assert (info["width"], info["height"]) == (600, 400)
    assert front.get(path).headers["x-cache-status"] == "HIT"
    # Another Host is another cache entry: no client can plant its host in everyone's info.json.
    other = front.get(path, headers={"Host": "iiif.example.org"})
    assert other.headers["x-cache-status"] == "MISS"
    assert other.json()["id"] == "http://iiif.example.org/iiif/3/img%2Fimg1.tif"
    assert front.get(path).json()["id"] == info["id"]
    # JSON-LD by Accept is a separate entry too (Tessera sends no Vary).
    linked = front.get(path, headers={"Accept": "application/ld+json"})
    assert linked.headers["content-type"].startswith("application/ld+json")
    assert front.get(path).headers["content-type"].startswith("application/json")


def test_base_uri_redirect_names_the_front(front: Front) -> None:
    response = front.get("/iiif/3/img%2Fimg1.tif")
    assert response.status_code == 303
    assert response.headers["location"] == f"{front.url}/iiif/3/img%2Fimg1.tif/info.json"


def test_errors_pass_through_and_only_404_is_cached(front: Front) -> None:
    bad = "/iiif/3/img%2Fimg0.tif/full/max/abc/default.jpg"
    first, second = front.get(bad), front.get(bad)
    assert (first.status_code, second.status_code) == (400, 400)
    assert first.text == second.text
    assert second.headers["x-cache-status"] != "HIT"
    missing = "/iiif/3/img%2Fnope.tif/info.json"
    first, second = front.get(missing), front.get(missing)
    assert (first.status_code, second.status_code) == (404, 404)
    assert (first.headers["x-cache-status"], second.headers["x-cache-status"]) == ("MISS", "HIT")


def test_files_api_range_passes_through_uncached(front: Front) -> None:
    response = front.get("/api/v1/files/img/data.bin", headers={"Range": "bytes=1000-4999"})
    assert response.status_code == 206
    assert response.content == FILE_BYTES[1000:5000]
    assert response.headers["content-range"] == f"bytes 1000-4999/{len(FILE_BYTES)}"
    assert "x-cache-status" not in response.headers
    whole = front.get("/api/v1/files/img/data.bin")
    assert whole.status_code == 200
    assert whole.content == FILE_BYTES
    assert front.get("/api/v1/cache/stats").json()["tiers"]


def _log_since(log: Path, start: int) -> str:
    return log.read_text()[start:]


def _tessera_answered_304(log: Path, start: int, name: str) -> bool:
    """The access log has the path as sent (``/iiif/3/img%2FNAME/…``) and the status."""
    lines = _log_since(log, start).splitlines()
    return any(f"%2F{name}/" in line and '" 304' in line for line in lines)


def _mentions(log_text: str, name: str) -> int:
    """Requests about image ``name`` in an access log (paths as sent: IIIF ids keep their ``%2F``)."""
    return log_text.count(f"/{name}") + log_text.count(f"%2F{name}")


def _until_hit(front: Front, path: str) -> httpx.Response:
    deadline = time.monotonic() + 10
    while (response := front.get(path)).headers["x-cache-status"] != "HIT":
        assert response.headers["x-cache-status"] in ("STALE", "UPDATING"), response.headers
        assert time.monotonic() < deadline, "the revalidated entry never became a HIT"
        time.sleep(0.05)
    return response


def test_expired_entry_is_revalidated_with_a_304(node: Node, tmp_path: Path) -> None:
    path, start = tile("img2.tif", 256), len(node.log.read_text())
    with nginx_front(node.config, tmp_path / "run", "--fresh", "1s") as front:
        first = front.get(path)
        assert first.headers["x-cache-status"] == "MISS"
        assert front.get(path).headers["x-cache-status"] == "HIT"
        time.sleep(2.1)  # nginx counts whole seconds: "1s" ends 1 to 2 s after the fill
        revalidated = front.get(path)
        assert revalidated.headers["x-cache-status"] == "REVALIDATED"
        assert revalidated.content == first.content
        assert _tessera_answered_304(node.log, start, "img2.tif"), "nginx's revalidation got no 304"
        assert front.get(path).headers["x-cache-status"] == "HIT"


def test_with_background_update_the_stale_copy_goes_out_at_once(node: Node, tmp_path: Path) -> None:
    path, start, port = tile("img3.tif", 256), len(node.log.read_text()), free_port()
    conf = render_nginx_conf(
        nodes=[node.base.removeprefix("http://")],
        cache_dir=tmp_path / "cache",
        prefix=tmp_path / "prefix",
        fresh=1,
        listen=f"127.0.0.1:{port}",
        worker_processes=1,
        user="root" if AS_ROOT else None,
        background_update=True,
    )
    assert "proxy_cache_background_update on;" in conf
    (tmp_path / "prefix").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path / "prefix"), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    front = Front(f"http://127.0.0.1:{port}", tmp_path / "prefix", tmp_path / "nginx.conf")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                first = front.get(path)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        assert first.headers["x-cache-status"] == "MISS"
        time.sleep(2.1)  # nginx counts whole seconds: "1s" ends 1 to 2 s after the fill
        stale = front.get(path)  # the expired copy goes out at once while nginx revalidates it
        assert stale.headers["x-cache-status"] == "STALE"
        assert stale.content == first.content
        assert _until_hit(front, path).content == first.content
        assert _tessera_answered_304(node.log, start, "img3.tif"), "nginx's revalidation got no 304"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_two_nodes_each_object_has_one_home(
    folder: Path, node: Node, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("front-node2")
    start = len(node.log.read_text())
    config2, port2 = make_node(tmp, folder)
    with tessera_server(config2, port2, tmp / "serve.log") as base2:
        nodes = [node.base.removeprefix("http://"), base2.removeprefix("http://")]
        run = tmp / "run"
        with nginx_front(node.config, run, "--node", nodes[0], "--node", nodes[1]) as front:
            assert "hash $tessera_image consistent;" in front.conf.read_text()
            for name in IMAGES:
                for path in (
                    tile(name, 0),
                    f"/iiif/2/img%2F{name}/info.json",
                    f"/thumbs/img%2F{name}/info.json",
                    f"/api/v1/files/img/{name}",
                ):
                    response = front.get(path, headers={"Range": "bytes=0-99"})
                    assert response.status_code in (200, 206), (path, response.text)
        logs = {node.log: _log_since(node.log, start), tmp / "serve.log": (tmp / "serve.log").read_text()}
    homes = {}
    for name in IMAGES:
        served_by = {log for log, text in logs.items() if _mentions(text, name)}
        assert len(served_by) == 1, f"{name} reached {len(served_by)} nodes"
        for text in logs.values():
            if _mentions(text, name):
                assert _mentions(text, name) >= 4  # the tile, info.json, thumbs and the files API
        homes[name] = served_by.pop()
    assert len(set(homes.values())) == 2, "every image went to the same node"


def test_config_unit_one_node_no_hash_two_nodes_consistent_hash(tmp_path: Path) -> None:
    common = {"cache_dir": tmp_path / "cache", "prefix": tmp_path / "run", "fresh": 60}
    one = render_nginx_conf(nodes=["127.0.0.1:8080"], **common)
    assert "hash " not in one
    assert "server 127.0.0.1:8080;" in one
    assert "proxy_next_upstream" not in one and "location = /api/v1/images" not in one
    two = render_nginx_conf(
        nodes=["10.0.0.1:8080", "10.0.0.2:8080"],
        cache_size="20GB",
        keys_zone="64MB",
        fail_timeout=2.5,
        **common,
    )
    upstream = two.split("upstream tessera {", 1)[1].split("}", 1)[0]
    lines = [line.strip() for line in upstream.strip().splitlines()]
    assert lines == [
        "hash $tessera_image consistent;",
        "zone tessera_nodes 256k;",  # the nginx workers share which node failed
        "server 10.0.0.1:8080 max_fails=1 fail_timeout=3s;",
        "server 10.0.0.2:8080 max_fails=1 fail_timeout=3s;",
        "keepalive 64;",
        "keepalive_timeout 4s;",  # below Tessera's own 5 s: nginx never reuses a closing connection
    ]
    for line in (
        "proxy_next_upstream error timeout;",
        "proxy_next_upstream_tries 2;",
        "proxy_connect_timeout 1s;",
    ):
        assert f"        {line}\n" in two
    assert "non_idempotent" not in two  # an upload or tus PATCH that reached a node is never sent twice
    # New hosted images go to the least busy node, not to one constant home.
    anyone = two.split("upstream tessera_any {", 1)[1].split("}", 1)[0]
    assert "least_conn;" in anyone and "server 10.0.0.2:8080 max_fails=1 fail_timeout=3s;" in anyone
    uploads = two.split("location = /api/v1/images {", 1)[1].split("}", 1)[0]
    assert "proxy_pass http://tessera_any;" in uploads
    assert f"proxy_cache_path {tmp_path / 'cache'} levels=1:2 keys_zone=tessera:64m max_size=20g" in two
    assert "inactive=86400s use_temp_path=off;" in two
    assert two.count("proxy_cache_valid 200 301 302 303 60s;") == 2
    assert f"access_log {tmp_path / 'run'}/access.log tessera buffer=64k flush=1s;" in two
    quiet = render_nginx_conf(nodes=["127.0.0.1:8080"], access_log=False, **common)
    assert "access_log off;" in quiet
    odd = render_nginx_conf(nodes=["h:1"], cache_size="1.5GB", keys_zone=100_000, **{**common, "fresh": 0.25})
    assert "keys_zone=tessera:100000 max_size=1536m" in odd
    assert odd.count("proxy_cache_valid 200 301 302 303 1s;") == 2
    (tmp_path / "run").mkdir()
    (tmp_path / "nginx.conf").write_text(
        render_nginx_conf(
            nodes=["127.0.0.1:8080", "127.0.0.1:8090"], user="root" if AS_ROOT else None, **common
        )
    )
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path / "run"), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": []}, "at least one"),
        ({"nodes": ["127.0.0.1"]}, "not an address"),
        ({"nodes": ["127.0.0.1:0"]}, "not an address"),
        ({"nodes": ["a:1", "a:1"]}, "twice"),
        ({"listen": "localhost:70000"}, "not an address"),
        ({"cache_dir": "relative/cache"}, "absolute"),
        ({"cache_size": "lots"}, "not a size"),
        ({"fresh": 0}, "positive"),
        ({"worker_processes": 0}, "worker_processes"),
    ],
)
def test_config_rejects_bad_parameters(kwargs: dict, message: str, tmp_path: Path) -> None:
    params = {"nodes": ["127.0.0.1:8080"], "cache_dir": tmp_path, "prefix": tmp_path, "fresh": 60, **kwargs}
    with pytest.raises(ValueError, match=message):
        render_nginx_conf(**params)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:8080") == ("[::1]", 8080)
    assert parse_address("tessera-3.internal:80") == ("tessera-3.internal", 80)
    assert parse_address("8081", listen=True) == (None, 8081)
    assert parse_address("*:8081", listen=True) == ("*", 8081)
    with pytest.raises(ValueError):
        parse_address("8081")


def test_cli_defaults_and_bad_node(tmp_path: Path) -> None:
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 8123\n[cache]\ndir = "{tmp_path / "c"}"\nmetadata_ttl = "90s"'
    )
    made = subprocess.run([TESSERA, "front-config", "--config", str(config)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "server 127.0.0.1:8123;" in made.stdout
    assert "listen 127.0.0.1:8081;" in made.stdout
    assert f"proxy_cache_path {tmp_path / 'c' / 'front'} " in made.stdout
    assert f"pid {tmp_path / 'c' / 'front-run'}/nginx.pid;" in made.stdout
    assert "max_size=1g" in made.stdout
    assert "proxy_cache_valid 200 301 302 303 90s;" in made.stdout
    assert "proxy_cache_valid 404 10s;" in made.stdout
    for bad in (
        ["--node", "127.0.0.1"],
        ["--node", "host:port"],
        ["--listen", "1.2.3.4:0"],
        ["--fresh", "x"],
    ):
        failed = subprocess.run(
            [TESSERA, "front-config", "--config", str(config), *bad], capture_output=True, text=True
        )
        assert failed.returncode == 2, (bad, failed.stdout, failed.stderr)
        assert failed.stdout == ""


def test_cli_takes_the_cluster_nodes_with_short_freshness_and_their_fail_timeout(tmp_path: Path) -> None:
    config = tmp_path / "tessera.toml"
    config.write_text(
        f'[cache]\ndir = "{tmp_path / "c"}"\nmetadata_ttl = "90s"\n[cluster]\n'
        'nodes = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]\nfail_timeout = "7s"\n'
        'redis_url = "redis://10.0.0.9:6379/0"\ndatabase_url = "postgresql://t@10.0.0.9/t"\n'
    )
    made = subprocess.run([TESSERA, "front-config", "--config", str(config)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for k in (1, 2, 3):
        assert f"server 10.0.0.{k}:8080 max_fails=1 fail_timeout=7s;" in made.stdout
    assert "hash $tessera_image consistent;" in made.stdout
    # nginx cannot purge: the front keeps a rendering 1 s, not metadata_ttl, before asking its home.
    assert "proxy_cache_valid 200 301 302 303 1s;" in made.stdout
    assert "proxy_cache_valid 404 1s;" in made.stdout
    assert "proxy_next_upstream_tries 3;" in made.stdout
    chosen = subprocess.run(
        [TESSERA, "front-config", "--config", str(config), "--fresh", "5s", "--node", "10.0.0.7:80"],
        capture_output=True,
        text=True,
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "server 10.0.0.7:80;" in chosen.stdout and "10.0.0.1" not in chosen.stdout
    assert "proxy_cache_valid 200 301 302 303 5s;" in chosen.stdout
    helped = subprocess.run(
        [TESSERA, "front-config", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "(default: the config's cluster.nodes, else server.host:server.port)" in helped.stdout


def test_ring_next_home_when_a_node_is_down() -> None:
    ring = Ring(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
    moved_to: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for i in range(3000):
        key = f"images/{i:05d}.tif"
        home = ring.node(key)
        for down in range(3):
            if down != home:
                assert ring.node(key, down=[down]) == home  # only the node's own objects move
        moved_to[home].add(ring.node(key, down=[home]))
    # Each node's objects spread over the others, none stays on it.
    assert all(targets == {0, 1, 2} - {k} for k, targets in moved_to.items()), moved_to
    with pytest.raises(ValueError, match="every node is down"):
        ring.node("images/a.tif", down=[0, 1, 2])
