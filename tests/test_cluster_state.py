"""The cluster's shared state, piece by piece, against a real redis-server: the change entries, the
saved stream position, the subscriber's catch-up and its revalidation when changes were lost, the
publisher's backlog while Redis is away, the Lua token bucket and the shared admission counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tessera.cache import CacheEngine
from tessera.cluster import SOLO, Change, SoloNode, open_cluster
from tessera.cluster.admission import SharedAdmission, count_key
from tessera.cluster.changes import KINDS
from tessera.cluster.invalidation import EPOCH, STREAM, Publisher, Subscriber, current_epoch
from tessera.cluster.metrics import ClusterMetrics
from tessera.cluster.position import Position, PositionFile, stream_id
from tessera.cluster.shared_rate import SharedRate
from tessera.config import ConfigError, load_settings
from tessera.metrics import Metrics
from tessera.origins import ObjectInfo
from tests.support.engines import make_settings, open_engine
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(url, socket_connect_timeout=1)
    try:
        yield redis
    finally:
        await redis.aclose()


def metrics() -> ClusterMetrics:
    return ClusterMetrics(Metrics().registry)


# ------------------------------------------------------------------ entries and positions


def test_changes_survive_the_trip_through_stream_fields() -> None:
    info = ObjectInfo("docs/a.txt", 12, '"abc"', 1700000000.123456)
    changes = [
        Change.written("/files/docs/a.txt", info),
        Change.deleted("/files/docs/a.txt"),
        Change.purged("/files/docs/"),
        Change.link("AbCd1234"),
        Change("everything"),
    ]
    assert {change.kind for change in changes} == set(KINDS)
    for change in changes:
        fields = {k.encode(): v.encode() for k, v in change.fields("node-1").items()}
        assert Change.from_fields(fields) == ("node-1", change)
    with pytest.raises(ValueError, match="unknown change kind"):
        Change.from_fields({b"node": b"x", b"kind": b"explode"})


def test_the_position_file_is_replaced_whole(tmp_path: Path) -> None:
    positions = PositionFile(tmp_path)
    assert positions.load() is None
    positions.save(Position("e1", "1700000000000-3", 12.5))
    assert positions.load() == Position("e1", "1700000000000-3", 12.5)
    positions.save(Position("e1", "1700000000001-0"))
    assert positions.load() == Position("e1", "1700000000001-0", 0.0)
    assert [p.name for p in tmp_path.iterdir()] == ["cluster-position.json"]  # no temporary left
    positions.path.write_text('{"epoch": "e1", "last_id": "not-an-id"')
    assert positions.load() is None  # unreadable: as good as lost (the node revalidates)


def test_stream_ids_compare_in_stream_order() -> None:
    assert stream_id("9-5") < stream_id("10-0") < stream_id("10-1")
    assert stream_id("1700000000000-0") > stream_id("999999999999-99")


# ------------------------------------------------------------------ the subscriber


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stamp = time.time() - 10  # not "in the middle of a write" for the local origin
    os.utime(path, (stamp, stamp))


@contextlib.asynccontextmanager
async def cached_engine(tmp_path: Path) -> AsyncIterator[tuple[CacheEngine, Path]]:
    """An engine that trusts metadata for an hour, having read ``/files/a.txt`` ("old") once."""
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)
    write(folder / "a.txt", "old")
    async with open_engine(
        tmp_path / "cache", {"files": {"origin": str(folder)}}, metadata_ttl="1h"
    ) as engine:
        assert await engine.read("/files/a.txt") == b"old"
        yield engine, folder


async def changed_behind_its_back(engine: CacheEngine, folder: Path) -> None:
    write(folder / "a.txt", "new!")
    assert await engine.read("/files/a.txt") == b"old"  # metadata trusted: nobody told it


async def entry_ids(redis: Redis, count: int, node: str = "other") -> list[str]:
    ids = []
    for n in range(count):
        fields: dict[str | bytes, str | bytes | int | float] = dict(
            Change.purged(f"/files/none-{n}").fields(node).items()
        )
        ids.append((await redis.xadd(STREAM, fields)).decode())
    return ids


async def subscribe(
    engine: CacheEngine, redis_url: str, tmp_path: Path, applied: list[Change] | None = None
) -> tuple[Subscriber, ClusterMetrics]:
    """A subscriber that has run its start-up check and caught up; then stopped."""
    counters = metrics()

    async def apply(change: Change) -> None:
        if applied is not None:
            applied.append(change)
        if change.kind == "written":
            await engine.superseded(change.subject, change.info)

    async with client(redis_url) as redis:
        subscriber = Subscriber(redis, "me", PositionFile(tmp_path / "cache"), engine, apply, counters)
        task = asyncio.create_task(subscriber.run())
        await asyncio.wait_for(subscriber.caught_up.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await subscriber.save()
    return subscriber, counters


async def test_a_saved_position_resumes_and_applies_only_the_other_nodes_changes(
    tmp_path: Path, redis_url: str
) -> None:
    async with cached_engine(tmp_path) as (engine, folder), client(redis_url) as redis:
        epoch = await current_epoch(redis)
        (start,) = await entry_ids(redis, 1)
        PositionFile(tmp_path / "cache").save(Position(epoch, start))
        await changed_behind_its_back(engine, folder)
        # What another node that wrote the new version sends: its size and ETag
        new = await engine.namespace.resolve("/files/a.txt").origin.stat("a.txt")
        await redis.xadd(STREAM, dict(Change.purged("/files/mine").fields("me")))  # its own: skipped
        await redis.xadd(STREAM, dict(Change.written("/files/a.txt", new).fields("other")))
        applied: list[Change] = []
        subscriber, counters = await subscribe(engine, redis_url, tmp_path, applied)
        assert applied == [Change.written("/files/a.txt", new)]
        assert await engine.read("/files/a.txt") == b"new!"
        assert counters.revalidations._value.get() == 0
        last = (await redis.xinfo_stream(STREAM))["last-generated-id"].decode()
        assert PositionFile(tmp_path / "cache").load() == Position(epoch, last)
        assert subscriber.position == Position(epoch, last)


async def test_a_stream_trimmed_past_the_position_revalidates_everything(
    tmp_path: Path, redis_url: str
) -> None:
    async with cached_engine(tmp_path) as (engine, folder), client(redis_url) as redis:
        epoch = await current_epoch(redis)
        first, *_ = await entry_ids(redis, 5)
        PositionFile(tmp_path / "cache").save(Position(epoch, first))
        await redis.xtrim(STREAM, maxlen=2, approximate=False)  # entries after the position are lost
        await changed_behind_its_back(engine, folder)
        _subscriber, counters = await subscribe(engine, redis_url, tmp_path)
        assert counters.revalidations._value.get() == 1
        assert await engine.read("/files/a.txt") == b"new!"  # one HEAD saw the new ETag
        saved = PositionFile(tmp_path / "cache").load()
        assert saved is not None and saved.stale_before > 0  # kept, in case of a crash right now


async def test_a_stream_trimmed_only_before_the_position_loses_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    async with cached_engine(tmp_path) as (engine, folder), client(redis_url) as redis:
        epoch = await current_epoch(redis)
        ids = await entry_ids(redis, 5)
        await redis.xtrim(STREAM, maxlen=2, approximate=False)  # removes ids[0..2]
        PositionFile(tmp_path / "cache").save(Position(epoch, ids[3]))  # still there: nothing lost
        await changed_behind_its_back(engine, folder)
        _subscriber, counters = await subscribe(engine, redis_url, tmp_path)
        assert counters.revalidations._value.get() == 0
        assert await engine.read("/files/a.txt") == b"old"


@pytest.mark.parametrize("lost", ["no position", "another epoch"])
async def test_a_cache_that_cannot_know_what_it_missed_revalidates(
    tmp_path: Path, redis_url: str, lost: str
) -> None:
    async with cached_engine(tmp_path) as (engine, folder), client(redis_url) as redis:
        await entry_ids(redis, 3)
        if lost == "another epoch":  # Redis lost its data since (and a new epoch was made)
            PositionFile(tmp_path / "cache").save(Position("gone", "1-0"))
        await changed_behind_its_back(engine, folder)
        _subscriber, counters = await subscribe(engine, redis_url, tmp_path)
        assert counters.revalidations._value.get() == 1
        assert await engine.read("/files/a.txt") == b"new!"


async def test_an_empty_cache_without_a_position_starts_at_the_end(tmp_path: Path, redis_url: str) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    async with (
        open_engine(tmp_path / "cache", {"files": {"origin": str(folder)}}) as engine,
        client(redis_url) as redis,
    ):
        ids = await entry_ids(redis, 3)
        applied: list[Change] = []
        subscriber, counters = await subscribe(engine, redis_url, tmp_path, applied)
        assert applied == [] and counters.revalidations._value.get() == 0
        epoch = (await redis.get(EPOCH)).decode()
        assert subscriber.position == Position(epoch, ids[-1])


async def test_a_revalidation_cut_short_by_a_crash_is_taken_up_after_the_restart(
    tmp_path: Path, redis_url: str
) -> None:
    async with cached_engine(tmp_path) as (engine, folder), client(redis_url) as redis:
        epoch = await current_epoch(redis)
        await changed_behind_its_back(engine, folder)
        PositionFile(tmp_path / "cache").save(Position(epoch, "0-0", time.time()))
        await subscribe(engine, redis_url, tmp_path)
        assert await engine.read("/files/a.txt") == b"new!"


# ------------------------------------------------------------------ the publisher


async def test_changes_wait_while_redis_is_away_and_go_when_it_is_back() -> None:
    server = RedisServer()
    server.start()
    try:
        counters = metrics()
        async with client(server.url) as redis:
            publisher = Publisher(redis, "me", 1000, counters)
            task = asyncio.create_task(publisher.run())
            publisher.announce(Change.deleted("/files/before"))
            await publisher.drain(5)
            assert await redis.xlen(STREAM) == 1
            assert server.process is not None
            server.process.kill()
            server.process.wait()
            publisher.announce(Change.deleted("/files/during"))
            await asyncio.sleep(0.5)
            assert counters.publish_errors._value.get() >= 1
            assert counters.backlog._value.get() == 1
            server.start()  # empty again: as a Redis without persistence comes back
            await publisher.drain(10)
            entries = await redis.xrange(STREAM)
            assert [Change.from_fields(fields)[1] for _id, fields in entries] == [
                Change.deleted("/files/during")
            ]
            task.cancel()
    finally:
        server.stop()


async def test_an_overflowing_backlog_becomes_one_revalidation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tessera.cluster.invalidation.BACKLOG", 3)
    counters = metrics()
    publisher = Publisher(Redis.from_url("redis://127.0.0.1:1/0"), "me", 1000, counters)
    for n in range(5):
        publisher.announce(Change.deleted(f"/files/{n}"))
    assert list(publisher._queue) == [Change("everything"), Change.deleted("/files/4")]


# ------------------------------------------------------------------ the shared token bucket


async def test_the_lua_bucket_is_one_limit_for_every_node(redis_url: str) -> None:
    async with client(redis_url) as first, client(redis_url) as second:
        nodes = [SharedRate(first, 6, metrics(), "t:"), SharedRate(second, 6, metrics(), "t:")]
        waits = [await nodes[n % 2].take("203.0.113.9") for n in range(8)]
        assert waits[:6] == [0.0] * 6
        assert 9.0 < waits[6] <= 10.0 and 9.0 < waits[7] <= 10.0  # one token every 10 s
        assert await nodes[0].take("198.51.100.1") == 0.0  # another client has its own bucket
        ttl = await first.pttl("t:203.0.113.9")
        assert 50_000 < ttl <= 61_000  # gone once it would be full again


async def test_the_bucket_refills_on_redis_clock(redis_url: str) -> None:
    async with client(redis_url) as redis:
        limit = SharedRate(redis, 600, metrics(), "t:")  # 10 a second
        while await limit.take("c") == 0.0:
            pass
        await asyncio.sleep(0.25)
        assert await limit.take("c") == 0.0  # refilled meanwhile
        assert await limit.take("c") == 0.0


async def test_without_redis_each_node_keeps_its_own_limit() -> None:
    counters = metrics()
    limit = SharedRate(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), 2, counters, "t:")
    assert [await limit.take("c") > 0 for _ in range(3)] == [False, False, True]
    assert counters.redis_errors.labels("rate_limit")._value.get() == 3


# ------------------------------------------------------------------ shared admission counts


async def test_reads_elsewhere_count_toward_admission(redis_url: str) -> None:
    async with client(redis_url) as first, client(redis_url) as second:
        here, there = SharedAdmission(first, 3, metrics()), SharedAdmission(second, 3, metrics())
        assert not there.counted(42) and not there.counted(42)
        await there.flush()
        assert not here.counted(42)  # not known here yet
        await here.flush()
        assert here.counted(42)  # 3 reads in the cluster
        assert int(await first.get(count_key(42))) == 3  # the last read is sent with the next flush
        assert 3500 < await first.ttl(count_key(42)) <= 3600


async def test_the_engine_admits_late_when_the_cluster_count_is_reached(
    tmp_path: Path, redis_url: str
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    write(folder / "a.bin", "x" * 100_000)
    async with client(redis_url) as redis:
        counts = SharedAdmission(redis, 3, metrics())
        settings = make_settings(tmp_path / "cache", {"files": {"origin": str(folder)}}, admit_after=3)
        async with CacheEngine(settings, admission=counts) as engine:
            vid = (await engine.open("/files/a.bin")).version_id
            await redis.set(count_key(vid), 5)  # read twice on the object's old home, say
            await engine.read("/files/a.bin")
            assert engine.disk_used == 0  # one read here: neither count is known to be enough
            await counts.flush()
            await engine.read("/files/a.bin")  # the local count is 2, the cluster's 7
            for _ in range(50):
                if engine.disk_used:
                    break
                await asyncio.sleep(0.05)
            assert engine.disk_used > 0


# ------------------------------------------------------------------ settings


def test_a_single_node_shares_nothing() -> None:
    node = open_cluster(load_settings(None), Metrics())
    assert type(node) is SoloNode and node.admission is None
    SOLO.announce(Change.deleted("/files/x"))  # a no-op, never a failure


def test_a_cluster_node_from_the_settings(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        cluster={
            "nodes": ["10.0.0.1:8080", "10.0.0.2:8080"],
            "redis_url": "redis://127.0.0.1:1/0",
            "database_url": "postgresql://tessera@127.0.0.1:1/tessera",
        },
        cache={"dir": str(tmp_path), "admit_after": 2},
    )
    node = open_cluster(settings, Metrics())
    assert type(node).__name__ == "ClusterNode" and node.admission is not None


def test_a_cluster_without_redis_is_refused() -> None:
    with pytest.raises(ConfigError, match="redis_url is needed"):
        load_settings(
            None,
            cluster={"nodes": ["a:1", "b:1"], "database_url": "postgresql://t@127.0.0.1/t"},
        )
