"""A 3-node cluster on 127.0.0.1, every part a real process started here: three ``tessera serve`` on one
config (``[cluster] nodes``), a moto S3 origin behind a counting proxy (the origin's request log), an
nginx front from ``tessera front-config``, ``redis-server`` and PostgreSQL (``initdb``/``pg_ctl``).

One cluster serves the whole module, in order: a cold 64-reader flood; an overwrite seen through the
front's cache; a node SIGKILLed under load and started again; a node SIGKILLed while it runs a job.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pyvips

from tessera.deploy.nginx import CLUSTER_FRESH, object_key
from tessera.deploy.ring import Ring
from tests.support.cluster import Node, cluster_nodes
from tests.support.front import Front, nginx_front
from tests.support.moto_server import MotoServer
from tests.support.postgres import PostgresServer
from tests.support.proxy import CountingProxy, RequestRecord
from tests.support.redis_server import redis_server

TOKEN = "cluster-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUCKET, PREFIX = "cluster", "data"
HOSTED_BUCKET = "cluster-hosted"
BLOCK = 16 * 1024
FAIL_TIMEOUT = 2.0
#: Long: a change must reach the front through the invalidation stream, not by metadata expiry.
METADATA_TTL = 60.0
#: A change is applied on every node within this (Redis stream; measured 0.03-0.17 s).
INVALIDATION = 1.0
LEASE = 2.0
_rng = random.Random(13)
OBJECTS = {f"obj{i:02d}.bin": _rng.randbytes(4 * BLOCK + 1000 + 37 * i) for i in range(15)}
PICTURE = "pic.tif"
IMPORT_FILES = 1500
START_TIMEOUT = 90  # a node imports its modules in 2-3 s on an idle machine, far longer on a busy one


@dataclass
class Cluster:
    nodes: list[Node]
    front: Front
    proxy: CountingProxy
    moto: MotoServer
    incoming: Path
    target: Path
    ring: Ring = field(init=False)

    def __post_init__(self) -> None:
        self.ring = Ring([node.address for node in self.nodes])

    def home(self, name: str, down: tuple[int, ...] = ()) -> int:
        """The node the front sends mount ``s3``'s object ``name`` to (with the nodes ``down`` out)."""
        return self.ring.node(object_key(f"/s3/{name}"), down)

    def gets(self, name: str, since: float = 0.0) -> list[RequestRecord]:
        """The origin GETs of object ``name`` that arrived at or after ``since`` (wall clock)."""
        path = f"/{BUCKET}/{PREFIX}/{name}"
        return [r for r in self.proxy.requests(method="GET") if r.path == path and r.time >= since]

    def cached(self, node: Node) -> set[str]:
        """The names of the objects of ``OBJECTS`` that ``node``'s cache holds."""
        stats = httpx.get(f"{node.base}/api/v1/cache/stats", params={"top": 1000}, headers=AUTH).json()
        return {row["key"].rsplit("/", 1)[-1] for row in stats["top"] if row["cached"] > 0} & set(OBJECTS)

    def hits(self, node: Node) -> float:
        text = httpx.get(f"{node.base}/metrics").text
        return sum(float(v) for v in re.findall(r"^tessera_cache_hits_total\{[^}]*\} (\S+)$", text, re.M))


def _picture(colour: list[int]) -> bytes:
    image = pyvips.Image.black(512, 384, bands=3).linear(1, colour).cast("uchar")
    data: bytes = image.tiffsave_buffer(
        tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256
    )
    return data


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoServer, postgres: PostgresServer
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    incoming, target = tmp / "incoming", tmp / "target"
    target.mkdir()
    for i in range(IMPORT_FILES):
        (incoming / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (incoming / f"d{i % 10}" / f"f{i:05d}.bin").write_bytes(bytes([i % 251]) * 2000)
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=HOSTED_BUCKET)
    for name, data in OBJECTS.items():
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}", Body=data)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{PICTURE}", Body=_picture([200, 40, 90]))
    with CountingProxy(moto.endpoint) as proxy, redis_server() as redis:
        sections = f"""
[cluster]
redis_url = "{redis.url}"
database_url = "{postgres.url()}"
fail_timeout = "{FAIL_TIMEOUT}s"
[cache]
disk_size = "16MB"
block_size = "{BLOCK}"
small_object_size = "{BLOCK}"
metadata_ttl = "{METADATA_TTL}s"
[images]
derivative_cache = true
[jobs]
lease = "{LEASE}s"
workers = 1
concurrency = 1
[storage]
ingest_allow = ["file://{incoming}/"]
[mounts.s3]
origin = "s3://{BUCKET}/{PREFIX}"
endpoint_url = "{proxy.endpoint}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
[mounts.dst]
origin = "file://{target}"
[hosting]
formats = ["jpeg"]
eager_formats = ["jpeg"]
[mounts.hosted]
origin = "s3://{HOSTED_BUCKET}"
endpoint_url = "{moto.endpoint}"
region = "us-east-1"
access_key_id = "testing"
secret_access_key = "testing"
public = false
"""
        with cluster_nodes(tmp, sections, count=3, start=False) as nodes:
            for node in nodes:
                node.env = {k: v for k, v in node.env.items() if not k.startswith("AWS_")}
                node.env["TESSERA_SERVER__TOKEN"] = TOKEN
            with ThreadPoolExecutor(len(nodes)) as starting:  # at once: each takes seconds to import
                list(starting.map(lambda node: node.start(timeout=START_TIMEOUT), nodes))
            with nginx_front(nodes[0].config, tmp / "front") as front:
                yield Cluster(nodes, front, proxy, moto, incoming, target)


def _read_all(front: Front, names: list[str], failures: list[str]) -> None:
    with httpx.Client(base_url=front.url, timeout=60) as client:
        for name in names:
            response = client.get(f"/api/v1/files/s3/{name}")
            if response.status_code != 200 or response.content != OBJECTS[name]:
                failures.append(f"{name}: {response.status_code}")


def test_flood_fetches_each_block_once_and_spreads_objects_with_no_copies(cluster: Cluster) -> None:
    cluster.proxy.reset_log()
    failures: list[str] = []
    readers = []
    for k in range(64):
        names = list(OBJECTS)
        random.Random(k).shuffle(names)
        readers.append(threading.Thread(target=_read_all, args=(cluster.front, names, failures)))
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert failures == []
    for name, data in OBJECTS.items():
        gets = cluster.gets(name)
        # Each block once in the whole cluster: the GETs' bytes add up to the object, no more.
        assert sum(r.bytes_sent for r in gets) == len(data), (name, [(r.range, r.bytes_sent) for r in gets])
    held = [cluster.cached(node) for node in cluster.nodes]
    assert all(held), held  # every node holds some ...
    assert sum(len(h) for h in held) == len(OBJECTS)  # ... none is held twice ...
    for k, names in enumerate(held):  # ... and each is held by its home on nginx's ring
        assert {cluster.home(name) for name in names} == {k}


TILE = f"/iiif/3/s3%2F{PICTURE}/0,0,256,256/256,/0/default.jpg"


def _tile(front: Front) -> httpx.Response:
    return front.get(TILE)


def test_overwrite_through_another_node_shows_at_the_front_within_its_bound(cluster: Cluster) -> None:
    """nginx cannot purge: the front keeps a rendering ``CLUSTER_FRESH`` (plus up to 1 s: whole
    seconds), then revalidates it with the home node, which sees the change once the invalidation
    stream has reached it (``metadata_ttl`` is a minute here: only the stream can make it in time)."""
    old = _tile(cluster.front)
    assert old.status_code == 200, old.text
    assert _tile(cluster.front).headers["x-cache-status"] == "HIT"
    home = cluster.home(PICTURE)
    writer = cluster.nodes[(home + 1) % 3]
    put = httpx.put(
        f"{writer.base}/api/v1/files/s3/{PICTURE}", content=_picture([10, 200, 30]), headers=AUTH, timeout=60
    )
    assert put.status_code == 201, put.text
    written = time.monotonic()
    bound = CLUSTER_FRESH + 1 + INVALIDATION
    while (new := _tile(cluster.front)).content == old.content:
        # The bound, and 2 s for a busy machine's renders and revalidations.
        assert time.monotonic() - written < bound + 2, (
            f"the front still serves the old tile after {bound + 2}s"
        )
        time.sleep(0.05)
    took = time.monotonic() - written
    print(f"overwrite seen through the front after {took:.2f}s (bound {bound:.0f}s and a render)")
    assert new.status_code == 200
    assert httpx.get(f"{cluster.nodes[home].base}{TILE}").content == new.content
    green = pyvips.Image.new_from_buffer(new.content, "").getpoint(100, 100)
    assert green[1] > 150 and green[0] < 60, green


def _front_lines(cluster: Cluster, since_line: int = 0) -> list[str]:
    """The front's access log from line ``since_line`` on."""
    time.sleep(1.3)  # the access log is flushed every second
    return (cluster.front.prefix / "access.log").read_text().splitlines()[since_line:]


def _front_log(cluster: Cluster, since_line: int) -> list[tuple[str, str]]:
    """(request line, the node that answered) of the requests the front logged after ``since_line``."""
    found = (
        re.search(r'"(\w+ \S+) HTTP.* upstream=(.+?) urt=', line)
        for line in _front_lines(cluster, since_line)
    )
    return [(m[1], m[2].split(", ")[-1]) for m in found if m]


def test_hosted_uploads_go_to_any_node_and_views_to_the_link_home(cluster: Cluster) -> None:
    start = len(_front_lines(cluster))
    links = []
    for i in range(6):
        picture = pyvips.Image.black(300, 200, bands=3).linear(1, [40 * i, 90, 200]).cast("uchar")
        files = {"file": ("p.jpg", picture.jpegsave_buffer(), "image/jpeg")}
        made = httpx.post(f"{cluster.front.url}/api/v1/images", files=files, headers=AUTH, timeout=60)
        assert made.status_code in (201, 202), made.text
        links.append(made.json()["link"])
    for link in links:
        view = cluster.front.get(f"/i/{link}")
        assert view.status_code == 200, view.text
        assert view.headers["content-type"] == "image/jpeg"
    logged = _front_log(cluster, start)
    takers = {node for line, node in logged if line == "POST /api/v1/images"}
    # Uploads name no object yet: the least busy node takes each (here, one after the other: all three).
    assert len(takers) == 3, logged
    for link in links:  # a link's views go to the link's home
        home = cluster.nodes[cluster.ring.node(f"link:{link}")].address
        assert {node for line, node in logged if line == f"GET /i/{link}"} == {home}


@dataclass
class _Outcome:
    name: str
    start: float
    end: float
    error: str | None


def _load(front: Front, stop: threading.Event, seed: int, outcomes: list[_Outcome]) -> None:
    rng = random.Random(seed)
    names = list(OBJECTS)
    with httpx.Client(base_url=front.url, timeout=30) as client:
        while not stop.is_set():
            name = rng.choice(names)
            start = time.time()
            error = None
            try:
                response = client.get(f"/api/v1/files/s3/{name}")
                if response.status_code != 200 or response.content != OBJECTS[name]:
                    error = f"HTTP {response.status_code}, {len(response.content)} bytes"
            except httpx.HTTPError as exc:
                error = repr(exc)
            outcomes.append(_Outcome(name, start, time.time(), error))


@dataclass
class _Try:
    """A request the front sent to a node that failed it, then to another node."""

    start: float  # when the front got the request (wall clock)
    failed: float  # when the front gave up on the node


def _failed_tries(cluster: Cluster, address: str, since_line: int) -> list[_Try]:
    """The requests the front logged after line ``since_line`` that ``address`` failed (it is not last
    in their ``$upstream_addr`` list): their start, and when the front moved on to the next node."""
    tries = []
    for line in _front_lines(cluster, since_line):
        match = re.search(r" rt=(\S+) upstream=(.+?) urt=(.+?) t=(\S+)$", line)
        assert match, line
        upstreams, times = match.group(2).split(", "), match.group(3).split(", ")
        if address in upstreams[:-1]:
            start = float(match.group(4)) - float(match.group(1))
            spent = sum(float(t) for t in times[: upstreams.index(address) + 1] if t != "-")
            tries.append(_Try(start, start + spent))
    return tries


def test_sigkill_mid_load_then_restart(cluster: Cluster) -> None:
    victim_index = 1
    victim = cluster.nodes[victim_index]
    theirs = [name for name in OBJECTS if cluster.home(name) == victim_index]
    others = [name for name in OBJECTS if name not in theirs]
    assert theirs and others
    for name in OBJECTS:  # all cached at their homes (the flood did it; this test also runs alone)
        assert cluster.front.get(f"/api/v1/files/s3/{name}").content == OBJECTS[name]
    log_start = len(_front_lines(cluster))
    stop, outcomes = threading.Event(), []
    readers = [threading.Thread(target=_load, args=(cluster.front, stop, k, outcomes)) for k in range(12)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30
    while len(outcomes) < 200:  # the load is on
        assert time.monotonic() < deadline, len(outcomes)
        time.sleep(0.05)
    killed = time.time()
    victim.kill()
    time.sleep(FAIL_TIMEOUT * 1.5 + 1)  # nginx tries the dead node again after fail_timeout
    stop.set()
    for reader in readers:
        reader.join()
    after = [o for o in outcomes if o.start >= killed]
    served = [o for o in after if o.name in theirs and o.error is None]
    assert served, "none of the dead node's objects was served after the kill"
    back = min(o.end for o in served) - killed
    failed = [o for o in outcomes if o.error is not None]
    in_flight = sum(1 for o in outcomes if o.start < killed < o.end)
    print(
        f"{len(outcomes)} requests, {in_flight} in flight at the kill, {len(after)} after it, "
        f"{len(failed)} failed "
        f"({[o.error for o in failed][:3]}); first of the dead node's objects served again "
        f"{back * 1000:.0f} ms after the kill"
    )
    # No request fails: those in flight at the kill and those sent to the dead node are retried by nginx
    # on the next home (proxy_next_upstream), before and after it marked the node failed.
    assert failed == []
    # Detection: the first request the dead node failed; from then on the front leaves it out for
    # fail_timeout, sends one request to try it again, leaves it out again, and so on.
    window = time.time() - killed
    tries = _failed_tries(cluster, victim.address, log_start)
    assert tries, "the front never noticed the dead node"
    detected = min(t.failed for t in tries)
    probes = [t for t in tries if t.start > detected]
    print(
        f"the dead node failed {len(tries)} requests in {window:.1f}s: "
        f"{len(tries) - len(probes)} sent before "
        f"the front noticed, {(detected - killed) * 1000:.0f} ms after the kill, then {len(probes)} tries "
        f"(fail_timeout {FAIL_TIMEOUT}s); each retried on the next node"
    )
    assert detected - killed < 1.0
    assert len(probes) <= window / FAIL_TIMEOUT + 1, probes
    # Its objects were served cold by their next home, once each; nothing else moved.
    for name in theirs:
        assert sum(r.bytes_sent for r in cluster.gets(name, since=killed)) == len(OBJECTS[name]), name
    for name in others:
        assert cluster.gets(name, since=killed) == [], name
    for name in theirs:
        assert name in cluster.cached(cluster.nodes[cluster.home(name, down=(victim_index,))])

    # Back: after fail_timeout nginx tries it again, and its objects are hits in its still warm cache.
    victim.start(timeout=START_TIMEOUT)
    before = cluster.hits(victim)
    deadline = time.monotonic() + FAIL_TIMEOUT + 5
    while cluster.hits(victim) == before:
        assert time.monotonic() < deadline, "the front never sent to the restarted node"
        assert cluster.front.get(f"/api/v1/files/s3/{theirs[0]}").content == OBJECTS[theirs[0]]
        time.sleep(0.2)
    returned = time.time()
    before = cluster.hits(victim)
    for name in theirs:
        assert cluster.front.get(f"/api/v1/files/s3/{name}").content == OBJECTS[name]
        assert cluster.gets(name, since=returned) == [], f"{name} was fetched again from the origin"
    assert cluster.hits(victim) >= before + len(theirs)
    assert set(theirs) <= cluster.cached(victim)


def _job_runner(cluster: Cluster, job_id: str, alive: list[Node]) -> Node | None:
    """The node whose log says Procrastinate's worker started job ``job_id`` last."""
    last: tuple[int, Node] | None = None
    for node in alive:
        text = node.log.read_text()
        for match in re.finditer(rf"Starting job \S*\[{job_id}\]", text):
            # Logs have wall-clock times at the start of each line.
            stamp = text.rfind("\n", 0, match.start()) + 1
            key = int(re.sub(r"\D", "", text[stamp : stamp + 23]) or 0)
            if last is None or key > last[0]:
                last = (key, node)
    return None if last is None else last[1]


def test_job_of_a_killed_node_is_taken_by_another_after_its_lease(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.front.url, headers=AUTH, timeout=30) as client:
        started = client.post(
            "/api/v1/jobs/import", json={"source": f"file://{cluster.incoming}", "path": "/dst/k"}
        )
        assert started.status_code == 202, started.text
        job_id, status_url = started.json()["id"], started.json()["status_url"]
        deadline = time.monotonic() + 60
        while (job := client.get(status_url).json())["done"] < 100:
            assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.05)
        runner = _job_runner(
            cluster, job_id, [n for n in cluster.nodes if n.process and n.process.poll() is None]
        )
        assert runner is not None, "no node's log says it started the job"
        runner.kill()
        killed, done_at_kill = time.monotonic(), client.get(status_url).json()["done"]
        assert done_at_kill < IMPORT_FILES, "the import ended before its node was killed: make it longer"
        while (job := client.get(status_url).json())["done"] <= done_at_kill + 5:
            assert job["state"] in ("queued", "running") and time.monotonic() - killed < 60, job
            time.sleep(0.1)
        resumed = time.monotonic() - killed
        while job["state"] not in ("done", "failed"):
            assert time.monotonic() - killed < 120, job
            time.sleep(0.2)
            job = client.get(status_url).json()
    print(
        f"job {job_id}: node {runner.index} killed at {done_at_kill} files, "
        f"resumed elsewhere after {resumed:.1f}s"
    )
    assert (job["state"], job["total"], job["done"], job["failed"]) == (
        "done",
        IMPORT_FILES,
        IMPORT_FILES,
        0,
    ), job
    alive = [
        node for node in cluster.nodes if node is not runner and node.process and node.process.poll() is None
    ]
    heir = _job_runner(cluster, job_id, alive)
    assert heir is not None and heir is not runner
    assert job["skipped"] >= done_at_kill // 2  # it resumed: what the dead node had copied was kept
    assert resumed >= LEASE * 0.5  # not before the dead node's lease ran out
    copied = sorted(p.relative_to(cluster.target / "k") for p in (cluster.target / "k").rglob("*.bin"))
    assert len(copied) == IMPORT_FILES
