"""The job queue inside ``tessera serve``: opened with the app, its worker run in the background, every
job's outcome counted in ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tessera.config import Settings
from tessera.jobs.queue import Handler, Job, JobCancelled, JobContext, JobQueue
from tessera.metrics import Metrics

log = logging.getLogger(__name__)


def open_queue(settings: Settings) -> JobQueue:
    """The queue ``jobs.database_url`` names (default: ``jobs.sqlite`` under ``cache.dir``)."""
    url = settings.jobs.database_url
    lease = settings.jobs.lease
    if url is not None and url.startswith(("postgresql://", "postgres://")):
        from tessera.jobs.postgres_queue import ProcrastinateQueue

        try:
            return ProcrastinateQueue(url, lease)
        except ImportError as exc:
            raise RuntimeError(
                f"jobs.database_url is PostgreSQL but {exc.name} is not installed: "
                "pip install 'tessera[postgres]'"
            ) from None
    from tessera.jobs.sqlite_queue import SqliteQueue

    path = Path(url[len("sqlite:///") :]) if url else settings.cache.dir / "jobs.sqlite"
    return SqliteQueue(path, lease)


class JobService:
    """Owns the queue and its worker task; ``enqueue`` counts queued jobs, the handlers' wrapper
    counts how each job ended (``tessera_jobs_total{kind,state}``)."""

    #: How often ended jobs older than ``keep_finished`` are deleted.
    PRUNE_INTERVAL = 3600.0

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        workers: int,
        metrics: Metrics,
        keep_finished: float = 7 * 86400.0,
    ):
        self.queue = queue
        self.metrics = metrics
        self.keep_finished = keep_finished
        self._handlers = {kind: self._counted(kind, handler) for kind, handler in handlers.items()}
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.queue.open()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._prune())]

    async def _prune(self) -> None:
        while True:
            try:
                await self.queue.prune(self.keep_finished)
            except Exception as exc:
                log.warning("could not delete old jobs: %s", exc)
            await asyncio.sleep(self.PRUNE_INTERVAL)

    async def _run(self) -> None:
        while True:
            try:
                await self.queue.run(self._handlers, self._workers)
            except Exception:
                log.exception("job worker stopped; starting it again in 5 s")
                await asyncio.sleep(5)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.queue.close()

    async def enqueue(self, kind: str, payload: Mapping[str, Any]) -> str:
        job_id = await self.queue.enqueue(kind, payload)
        self.metrics.jobs.labels(kind, "queued").inc()
        return job_id

    async def cancel(self, job_id: str) -> Job | None:
        before = await self.queue.get(job_id)
        job = await self.queue.cancel(job_id)
        if before is not None and job is not None and before.state != job.state == "cancelled":
            self.metrics.jobs.labels(job.kind, "cancelled").inc()
        return job

    def _counted(self, kind: str, handler: Handler) -> Handler:
        async def run(context: JobContext) -> None:
            try:
                await handler(context)
            except (JobCancelled, asyncio.CancelledError):
                raise  # counted by ``cancel``, or the server is stopping (the job runs again)
            except Exception:
                self.metrics.jobs.labels(kind, "failed").inc()
                raise
            self.metrics.jobs.labels(kind, "done").inc()

        return run
