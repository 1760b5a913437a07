"""``tessera serve --workers N``: real shard processes behind a real nginx, started by the tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pyvips

from tessera.deploy.nginx import CONTROL_KEY, render_nginx_conf
from tessera.deploy.ring import Ring
from tessera.deploy.shards import shard_nodes
from tests.support.moto_server import free_port
from tests.support.tessera_server import TESSERA, tessera_server

IMAGES = [f"img{i}.tif" for i in range(6)]
FILES = [f"data{i}.bin" for i in range(24)]
TOKEN = "workers-test-token"


def _bytes(i: int) -> bytes:
    return bytes((i * 7 + j) % 251 for j in range(40_000 + 997 * i))


@dataclass
class Node:
    """A running ``tessera serve --workers 2``."""

    url: str
    cache: Path
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)  # type: ignore[arg-type]

    def shard_pid(self, k: int) -> int:
        """The pid the shard's cache engine wrote into its lock file."""
        return int((self.cache / f"shard-{k}" / "lock").read_text().strip() or 0)

    def ring(self) -> Ring:
        return Ring(shard_nodes(self.cache, 2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("src")
    picture = (
        pyvips.Image.black(700, 500, bands=3)
        .linear(1, [30, 140, 200])
        .cast("uchar")
        .draw_rect([240, 60, 20], 120, 90, 300, 200, fill=True)
    )
    picture.tiffsave(
        str(folder / IMAGES[0]), tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256
    )
    for name in IMAGES[1:]:
        (folder / name).write_bytes((folder / IMAGES[0]).read_bytes())
    for i, name in enumerate(FILES):
        (folder / name).write_bytes(_bytes(i))
    return folder


def _config(tmp: Path, folder: Path, port: int) -> Path:
    config = tmp / "tessera.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
access_log = true  # the front's access log names the shard each request went to
public_stats = true
token = "{TOKEN}"
[cache]
dir = "{tmp / "cache"}"
disk_size = "64MB"
memory_size = "16MB"
[images]
derivative_cache = false
[mounts.img]
origin = "file://{folder}"
"""
    )
    return config


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{url} never answered: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def _start(tmp: Path, folder: Path) -> Node:
    port = free_port()
    config = _config(tmp, folder, port)
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [TESSERA, "serve", "--config", str(config), "--workers", "2"], stdout=out, stderr=out
        )
    node = Node(f"http://127.0.0.1:{port}", tmp / "cache", process, log)
    for path in ("/healthz", "/shards/0/healthz", "/shards/1/healthz"):
        _wait(f"{node.url}{path}", process, log)
    return node


def _stop(node: Node) -> None:
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        node.process.wait(timeout=30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[Node]:
    running = _start(tmp_path_factory.mktemp("workers"), folder)
    try:
        yield running
    finally:
        _stop(running)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("single")
    port = free_port()
    config = _config(tmp, folder, port)
    with tessera_server(config, port, tmp / "serve.log") as base:
        yield base


def _tile(name: str, x: int = 0) -> str:
    return f"/iiif/3/img%2F{name}/{x},0,256,256/256,/0/default.jpg"


def _front_log(node: Node) -> list[tuple[str, str]]:
    """(request line, upstream socket) of every request the front logged (it flushes every second)."""
    time.sleep(1.3)
    text = (node.cache / "front-run" / "access.log").read_text()
    return re.findall(r'"(\w+ \S+) HTTP/[\d.]+" .* upstream=(\S+) ', text)


def _shard_of(upstream: str) -> int:
    match = re.search(r"/shard-(\d+)/http\.sock", upstream)
    assert match, upstream
    return int(match.group(1))


def test_two_workers_serve_the_same_bytes_as_one(node: Node, single: str) -> None:
    for i, name in enumerate(FILES[:6]):
        mine, theirs = node.get(f"/api/v1/files/img/{name}"), httpx.get(f"{single}/api/v1/files/img/{name}")
        assert mine.status_code == theirs.status_code == 200
        assert mine.content == theirs.content == _bytes(i)
        assert mine.headers["etag"] == theirs.headers["etag"]
        ranged = node.get(f"/api/v1/files/img/{name}", headers={"Range": "bytes=100-2099"})
        assert ranged.status_code == 206
        assert ranged.content == _bytes(i)[100:2100]
    for name in IMAGES[:3]:
        for path in (_tile(name), _tile(name, 256), f"/iiif/2/img%2F{name}/full/200,/0/default.png"):
            mine, theirs = node.get(path), httpx.get(f"{single}{path}")
            assert mine.status_code == theirs.status_code == 200, mine.text
            assert mine.content == theirs.content
            assert mine.headers["content-type"] == theirs.headers["content-type"]
        info = f"/iiif/3/img%2F{name}/info.json"
        mine, theirs = node.get(info).json(), httpx.get(f"{single}{info}").json()
        assert mine["id"] == f"{node.url}/iiif/3/img%2F{name}"  # the front's address, not a socket
        assert {**mine, "id": ""} == {**theirs, "id": ""}
        assert (mine["width"], mine["height"]) == (700, 500)
    assert node.get("/api/v1/files/img/nope.bin").status_code == 404


def test_objects_spread_over_both_shards_and_none_is_cached_twice(node: Node) -> None:
    for name in FILES:
        assert node.get(f"/api/v1/files/img/{name}").status_code == 200
        assert node.get(f"/api/v1/files/img/{name}").status_code == 200  # a hit, on the same shard
    cached: list[set[str]] = []
    for k in (0, 1):
        stats = node.get(f"/shards/{k}/api/v1/cache/stats", params={"top": 1000}).json()
        cached.append({row["key"] for row in stats["top"] if row["key"] in FILES})
    assert cached[0] and cached[1], cached  # both shards hold some ...
    assert not cached[0] & cached[1]  # ... none is held by both ...
    assert cached[0] | cached[1] == set(FILES)  # ... and every one is held
    ring = node.ring()
    for k in (0, 1):  # nginx's choice is the ring's: the Python ring is nginx's algorithm
        assert all(ring.node(f"img/{name}") == k for name in cached[k])
    for k in (0, 1):  # and each shard's cache directory is its own
        assert (node.cache / f"shard-{k}" / "lock").exists()
        assert node.shard_pid(k) != node.process.pid


def _cached(node: Node) -> list[set[str]]:
    """The keys of the mount's objects each shard holds."""
    stats = [node.get(f"/shards/{k}/api/v1/cache/stats", params={"top": 1000}).json() for k in (0, 1)]
    return [{row["key"] for row in shard["top"] if row["key"] in FILES + IMAGES} for shard in stats]


def test_cache_commands_reach_the_shards_that_hold_the_objects(node: Node) -> None:
    config = node.cache.parent / "tessera.toml"

    def tessera(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [TESSERA, *args, "--config", str(config)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done

    for name in FILES[:4]:
        assert node.get(f"/api/v1/files/img/{name}").status_code == 200
    assert all(_cached(node)), "both shards hold objects before the purge"
    tessera("purge", "/img/")
    assert _cached(node) == [set(), set()]  # through the front it would have reached one shard only
    warmed = tessera("warm", "/img/")
    assert f"warmed {len(FILES) + len(IMAGES)} objects" in warmed.stderr
    cached, ring = _cached(node), node.ring()
    assert cached[0] | cached[1] == set(FILES + IMAGES)
    assert not cached[0] & cached[1]
    for k in (0, 1):
        assert all(ring.node(f"img/{name}") == k for name in cached[k])
    tessera("warm", f"/img/{FILES[1]}")  # one object: its home only
    assert not _cached(node)[0] & _cached(node)[1]
    figures = json.loads(tessera("stats", "--json").stdout)
    shards = [node.get(f"/shards/{k}/api/v1/cache/stats").json() for k in (0, 1)]
    assert figures["tiers"]["disk"]["bytes"] == sum(s["tiers"]["disk"]["bytes"] for s in shards)
    assert figures["tiers"]["disk"]["limit"] == sum(s["tiers"]["disk"]["limit"] for s in shards) == 64 * 2**20


def test_one_image_one_home_hosted_links_one_home_control_requests_one_shard(node: Node) -> None:
    requests = [
        _tile(IMAGES[3]),
        f"/iiif/3/img%2F{IMAGES[3]}/info.json",
        f"/iiif/2/img%2F{IMAGES[3]}/full/100,/0/default.jpg",
        f"/api/v1/files/img/{IMAGES[3]}",
        "/i/Ab3dE9xQ",
        "/i/Ab3dE9xQ/800.webp",
        "/api/v1/images/Ab3dE9xQ",
        "/api/v1/files/hosted/Ab3dE9xQ/original",
        "/iiif/3/hosted%2FAb3dE9xQ%2Foriginal/info.json",
        "/api/v1/uploads/3f1c",
        "/api/v1/jobs/123",
        "/api/v1/list/img/",
        "/api/v1/cache/stats",
    ]
    for path in requests:
        node.get(path)
    httpx.post(f"{node.url}/api/v1/uploads/", headers={"Tus-Resumable": "1.0.0"}, timeout=30)
    httpx.post(f"{node.url}/api/v1/ingest", json={"source": "x", "path": "/img/y"}, timeout=30)
    httpx.post(f"{node.url}/api/v1/cache/purge", json={"path": "/img/y"}, timeout=30)
    seen: dict[str, set[int]] = {}
    for line, upstream in _front_log(node):
        if not line.split(" ", 1)[1].startswith(("/healthz", "/shards/")):
            seen.setdefault(line.split(" ", 1)[1], set()).add(_shard_of(upstream))
    ring = node.ring()
    image = {seen[path].pop() for path in requests[:4]}
    assert image == {ring.node(f"img/{IMAGES[3]}")}
    hosted = {seen[path].pop() for path in requests[4:9]}
    assert hosted == {ring.node("link:Ab3dE9xQ")}
    control = {seen[path].pop() for path in [*requests[9:], "/api/v1/uploads/", "/api/v1/ingest"]}
    assert control == {ring.node(CONTROL_KEY)}


def test_a_killed_shard_is_restarted_and_serves_again(node: Node) -> None:
    ring = node.ring()
    name = next(n for n in FILES if ring.node(f"img/{n}") == 0)
    assert node.get(f"/api/v1/files/img/{name}").status_code == 200
    before = node.shard_pid(0)
    os.kill(before, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if node.shard_pid(0) not in (before, 0) and node.get("/shards/0/healthz").status_code == 200:
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert time.monotonic() < deadline, node.log.read_text()[-3000:]
        time.sleep(0.1)
    response = node.get(f"/api/v1/files/img/{name}")
    assert response.status_code == 200
    assert response.content == _bytes(FILES.index(name))
    assert "shard 0 exited (killed by SIGKILL); restarting" in node.log.read_text()
    assert node.process.poll() is None


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        children = {p for p, parent in parents.items() if parent == current}
        found |= children
        todo += children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_killed_nginx_is_restarted_and_a_stop_signal_ends_every_process(
    stop: signal.Signals, tmp_path: Path, folder: Path
) -> None:
    node = _start(tmp_path, folder)
    try:
        master = int((node.cache / "front-run" / "nginx.pid").read_text())
        workers = _descendants(master)
        assert workers, "nginx has no workers"
        os.kill(master, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not all(not _alive(w) for w in workers):  # its workers go with it
            assert time.monotonic() < deadline, "nginx's workers outlived their master"
            time.sleep(0.1)
        _wait(f"{node.url}/healthz", node.process, node.log)
        assert node.get(f"/api/v1/files/img/{FILES[0]}").content == _bytes(0)
        assert "nginx exited (killed by SIGKILL); restarting" in node.log.read_text()
        family = _descendants(node.process.pid)
        assert len(family) >= 4  # two shards, nginx and at least one nginx worker
        node.process.send_signal(stop)
        assert node.process.wait(timeout=30) == 0
        time.sleep(0.2)
        assert [pid for pid in family if _alive(pid)] == []
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{node.url}/healthz", timeout=2)
    finally:
        _stop(node)


def test_without_nginx_a_clear_error_and_exit_code_2(tmp_path: Path, folder: Path) -> None:
    config = _config(tmp_path, folder, free_port())
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(
        [TESSERA, "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(empty)},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "nginx is not installed" in result.stderr
    assert "apt-get install nginx" in result.stderr
    assert not (tmp_path / "cache" / "shard-0").exists()


def test_bad_worker_counts_and_shards(tmp_path: Path, folder: Path) -> None:
    config = _config(tmp_path, folder, free_port())
    for options, message in (
        (["--workers", "0"], "positive number or auto"),
        (["--workers", "x"], "positive number or auto"),
        (["--shard", "2", "--workers", "2"], "between 0 and 1"),
    ):
        result = subprocess.run(
            [TESSERA, "serve", "--config", str(config), *options], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, (options, result.stderr)
        assert message in result.stderr
    config.write_text(config.read_text().replace('disk_size = "64MB"', 'disk_size = "20MB"'))
    command = [TESSERA, "serve", "--config", str(config), "--workers", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "split over 2 shards" in result.stderr


def test_changing_the_shard_count_moves_about_one_object_in_n(tmp_path: Path) -> None:
    """On the servers of the rendered configs: from 2 to 3 shards a third of the objects move, all of
    them to the new shard; from 3 back to 2 they move back."""
    keys = [f"images/{i:05d}.tif" for i in range(6000)]
    homes = {}
    for count in (2, 3, 4):
        conf = render_nginx_conf(
            nodes=shard_nodes(tmp_path / "cache", count),
            cache_dir=tmp_path / "front",
            prefix=tmp_path / "run",
            fresh=60,
        )
        upstream = conf.split("upstream tessera {", 1)[1].split("}", 1)[0]
        servers = re.findall(r"server ([^\s;]+)", upstream)
        assert len(servers) == count
        ring = Ring(servers)
        homes[count] = [servers[ring.node(key)] for key in keys]
    for before, after in ((2, 3), (3, 4)):
        moved = [(a, b) for a, b in zip(homes[before], homes[after], strict=True) if a != b]
        assert 0.5 / after < len(moved) / len(keys) < 1.5 / after, (before, after, len(moved))
        assert {b for _, b in moved} == {f"unix:{tmp_path.resolve() / 'cache'}/shard-{before}/http.sock"}
    spread = {home: homes[3].count(home) for home in set(homes[3])}
    assert all(1000 < n < 3000 for n in spread.values()), spread


def test_shards_by_hand_behind_front_config(tmp_path: Path, folder: Path) -> None:
    """The systemd way: ``serve --shard K --workers 2`` twice, ``front-config --shards 2``, nginx."""
    port = free_port()
    config = _config(tmp_path, folder, port)
    log = tmp_path / "shards.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with open(log, "wb") as out:
            for k in (0, 1):
                command = [TESSERA, "serve", "--config", str(config), "--shard", str(k), "--workers", "2"]
                processes.append(subprocess.Popen(command, stdout=out, stderr=out))
        sockets = [tmp_path / "cache" / f"shard-{k}" / "http.sock" for k in (0, 1)]
        for process, socket in zip(processes, sockets, strict=True):
            deadline = time.monotonic() + 40
            while True:
                try:
                    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as client:
                        if client.get("http://shard/healthz").status_code == 200:
                            break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        conf = tmp_path / "front.conf"
        root = ["--user", "root"] if os.geteuid() == 0 else []
        options = ["--shards", "2", "--listen", f"127.0.0.1:{port}", *root, "-o", str(conf)]
        made = subprocess.run(
            [TESSERA, "front-config", "--config", str(config), *options],
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr
        assert all(f"server unix:{socket};" in conf.read_text() for socket in sockets)
        run_dir = tmp_path / "cache" / "front-run"
        with open(tmp_path / "nginx.log", "wb") as out:
            nginx = subprocess.Popen(
                [shutil.which("nginx") or "nginx", "-p", str(run_dir), "-c", str(conf), "-g", "daemon off;"],
                stdout=out,
                stderr=out,
            )
        processes.append(nginx)
        _wait(f"http://127.0.0.1:{port}/healthz", nginx, tmp_path / "nginx.log")
        for i, name in enumerate(FILES[:8]):
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/files/img/{name}").content == _bytes(i)
        node = Node(f"http://127.0.0.1:{port}", tmp_path / "cache", nginx, log)
        cached = _cached(node)
        assert cached[0] and cached[1] and not cached[0] & cached[1]
        assert cached[0] | cached[1] == set(FILES[:8])
        # No supervisor holds cache.dir: the commands still find the shards.
        purged = subprocess.run(
            [TESSERA, "purge", "/img/", "--config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert purged.returncode == 0, purged.stderr
        assert "purged 8 cached object versions" in purged.stderr
        assert _cached(node) == [set(), set()]
        assert not (tmp_path / "cache" / "index.sqlite").exists()  # nothing opened cache.dir as a cache
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
