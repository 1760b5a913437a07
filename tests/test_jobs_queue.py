"""The job queue interface on both backends for real: SQLite in a temporary folder, and Procrastinate on
a PostgreSQL server the tests start (``tests/support/postgres.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.jobs import JobCancelled, JobContext, JobQueue
from tessera.jobs.postgres_queue import ProcrastinateQueue
from tessera.jobs.sqlite_queue import SqliteQueue
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.anyio
LEASE = 1.5


@pytest.fixture(params=["sqlite", "postgres"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobQueue]:
    if request.param == "sqlite":
        made: JobQueue = SqliteQueue(tmp_path / "jobs.sqlite", LEASE)
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        made = ProcrastinateQueue(server.url(), LEASE)
    await made.open()
    try:
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def running(queue: JobQueue, handlers: dict, workers: int = 2) -> AsyncIterator[None]:
    task = asyncio.create_task(queue.run(handlers, workers))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(queue: JobQueue, job_id: str, states: set[str], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while (job := await queue.get(job_id)) is None or job.state not in states:
            await asyncio.sleep(0.05)


async def test_job_runs_to_done_with_progress(queue: JobQueue) -> None:
    async def count(context: JobContext) -> None:
        for i in range(context.payload["n"]):
            context.progress.total = context.payload["n"]
            context.progress.done += 1
            context.progress.bytes += 10
            if i == 1:
                context.progress.error("bad/file", "unreadable")
            await context.remember({f"k{i}": str(i)})
            await context.report()

    job_id = await queue.enqueue("count", {"n": 3})
    job = await queue.get(job_id)
    assert job is not None and job.state == "queued" and job.payload == {"n": 3}
    async with running(queue, {"count": count}):
        await wait_for(queue, job_id, {"done"})
    job = await queue.get(job_id)
    assert job is not None
    assert (job.progress.total, job.progress.done, job.progress.bytes, job.progress.failed) == (3, 3, 30, 1)
    assert job.progress.errors == [{"path": "bad/file", "reason": "unreadable"}]
    assert await queue.get("999999") is None


async def test_failing_handler_fails_the_job(queue: JobQueue) -> None:
    async def broken(context: JobContext) -> None:
        raise ValueError("source gone")

    job_id = await queue.enqueue("broken", {})
    async with running(queue, {"broken": broken}):
        await wait_for(queue, job_id, {"failed"})
    job = await queue.get(job_id)
    assert job is not None and "source gone" in (job.error or "")


async def test_cancel_queued_and_running(queue: JobQueue) -> None:
    started = asyncio.Event()
    stopped: list[str] = []

    async def slow(context: JobContext) -> None:
        started.set()
        try:
            while True:
                context.progress.done += 1
                await context.report()
                await asyncio.sleep(0.05)
        except (JobCancelled, asyncio.CancelledError):
            stopped.append(context.id)
            raise

    queued = await queue.enqueue("slow", {})
    cancelled = await queue.cancel(queued)
    assert cancelled is not None and cancelled.state == "cancelled"
    job_id = await queue.enqueue("slow", {})
    async with running(queue, {"slow": slow}):
        await asyncio.wait_for(started.wait(), 20)
        job = await queue.cancel(job_id)
        assert job is not None and job.state == "cancelled"
        async with asyncio.timeout(20):
            while not stopped:
                await asyncio.sleep(0.05)
    assert stopped == [job_id]  # the queued-then-cancelled job never ran
    job = await queue.get(job_id)
    assert job is not None and job.state == "cancelled"


async def test_stopped_worker_hands_its_job_back(queue: JobQueue) -> None:
    """A clean stop of the worker mid-job queues the job again; the next worker resumes it."""
    runs: list[dict[str, str]] = []
    started = asyncio.Event()

    async def resumable(context: JobContext) -> None:
        runs.append(await context.remembered())
        await context.remember({"first": "done"})
        started.set()
        if len(runs) == 1:
            await asyncio.sleep(60)

    job_id = await queue.enqueue("resumable", {})
    async with running(queue, {"resumable": resumable}):
        await asyncio.wait_for(started.wait(), 20)
    job = await queue.get(job_id)
    assert job is not None and job.state == "queued"
    async with running(queue, {"resumable": resumable}):
        await wait_for(queue, job_id, {"done"})
    assert runs == [{}, {"first": "done"}]


async def test_lease_of_a_dead_worker_runs_out(tmp_path: Path) -> None:
    """A job claimed by a worker that then died (no heartbeat) is taken again once its lease expires."""
    queue = SqliteQueue(tmp_path / "jobs.sqlite", LEASE)
    await queue.open()
    try:
        job_id = await queue.enqueue("work", {})
        claimed = await queue.claim("dead-worker", LEASE)
        assert claimed is not None and claimed.id == job_id
        await queue.remember(job_id, {"a": "1"})
        seen: list[dict[str, str]] = []

        async def work(context: JobContext) -> None:
            seen.append(await context.remembered())

        loop = asyncio.get_running_loop()
        began = loop.time()
        async with running(queue, {"work": work}):
            await wait_for(queue, job_id, {"done"})
        assert loop.time() - began >= LEASE * 0.8
        assert seen == [{"a": "1"}]
        # The dead worker cannot write for it any more.
        assert not await queue.renew(job_id, "dead-worker", LEASE)
    finally:
        await queue.close()


async def test_prune_deletes_ended_jobs_only(queue: JobQueue) -> None:
    async def quick(context: JobContext) -> None:
        await context.remember({"seen": "yes"})

    async def broken(context: JobContext) -> None:
        raise ValueError("no")

    done = await queue.enqueue("quick", {})
    failed = await queue.enqueue("broken", {})
    async with running(queue, {"quick": quick, "broken": broken}):
        await wait_for(queue, done, {"done"})
        await wait_for(queue, failed, {"failed"})
    waiting = await queue.enqueue("later", {})
    await queue.prune(3600)  # ended just now: kept
    assert await queue.get(done) is not None and await queue.get(failed) is not None
    await asyncio.sleep(0.01)
    await queue.prune(0)
    assert await queue.get(done) is None and await queue.get(failed) is None
    job = await queue.get(waiting)
    assert job is not None and job.state == "queued"


async def test_counts_by_state(queue: JobQueue) -> None:
    async def ok(context: JobContext) -> None:
        pass

    async def bad(context: JobContext) -> None:
        raise RuntimeError("broken")

    assert await queue.counts() == {}
    done, failed = await queue.enqueue("ok", {}), await queue.enqueue("bad", {})
    async with running(queue, {"ok": ok, "bad": bad}):
        await wait_for(queue, done, {"done"})
        await wait_for(queue, failed, {"failed"})
    await queue.cancel(await queue.enqueue("ok", {}))
    await queue.enqueue("ok", {})
    assert await queue.counts() == {"done": 1, "failed": 1, "cancelled": 1, "queued": 1}
