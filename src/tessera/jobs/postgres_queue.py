"""The scale-out job queue: Procrastinate on PostgreSQL, with each job's progress in a table beside it.

Procrastinate owns the jobs (``procrastinate_jobs``: state, locking, its worker with heartbeats, cancel
and abort); Tessera adds ``tessera_job_progress`` (progress, error) and ``tessera_job_marks`` (what a
handler ``remember``-ed) in the same database, deleted with the job. Two things Procrastinate leaves to
its user are done here:

- a job whose worker died (its heartbeat older than ``lease``) is put back to ``todo`` by every
  running worker's watcher (``get_stalled_jobs`` + ``retry_job``), so it resumes elsewhere;
- a job interrupted by a clean stop of the server is retried at once (``_Requeue``), while one
  cancelled by a user ends ``aborted`` (``cancelled`` here).

Procrastinate and psycopg come with the ``postgres`` extra: they are imported where they are used, so
this module (and ``tessera serve`` on the default SQLite queue) imports without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tessera.jobs.queue import Handler, Job, JobCancelled, JobState, Progress

if TYPE_CHECKING:
    import procrastinate

log = logging.getLogger(__name__)

#: The Procrastinate queue Tessera's jobs go to.
QUEUE = "tessera"

_TABLES = """
CREATE TABLE IF NOT EXISTS tessera_job_progress (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    progress jsonb NOT NULL DEFAULT '{}',
    error text
);
CREATE TABLE IF NOT EXISTS tessera_job_marks (
    job_id bigint NOT NULL REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    key text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (job_id, key)
);
"""

#: Procrastinate's statuses in Tessera's words (``aborting`` is unused since Procrastinate 3).
_STATES: dict[str, JobState] = {
    "todo": "queued",
    "doing": "running",
    "succeeded": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "aborting": "cancelled",
    "aborted": "cancelled",
}


def _valid_id(job_id: str) -> bool:
    """Whether ``job_id`` can be a Procrastinate job id (a bigint)."""
    return job_id.isascii() and job_id.isdigit() and len(job_id) <= 18


class _Requeue(Exception):
    """A job stopped because its worker is shutting down: retried at once."""


class ProcrastinateQueue:
    """``JobQueue`` on Procrastinate (``url``: a ``postgresql://`` connection string)."""

    def __init__(self, url: str, lease: float) -> None:
        import procrastinate  # ImportError without the postgres extra (see ``open_queue``)

        self.lease = lease
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    async def _execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(sql, args or None)
            return list(await cursor.fetchall()) if cursor.description else []

    async def open(self) -> None:
        await self.app.open_async()
        async with (
            self.app.connector.pool.connection() as conn,  # type: ignore[attr-defined]
            conn.transaction(),
        ):
            # One node creates the schema; the others wait for it here.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tessera_jobs_schema'))")
            cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
            if (await cursor.fetchone())[0] is None:
                await conn.execute(self.app.schema_manager.get_schema())
            await conn.execute(_TABLES)

    async def close(self) -> None:
        await self.app.close_async()

    async def ping(self) -> None:
        await self._execute("SELECT 1")

    async def prune(self, older_than: float) -> None:
        # Procrastinate counts in whole hours; progress and marks go with their job (ON DELETE CASCADE).
        await self.app.job_manager.delete_old_jobs(
            nb_hours=round(older_than / 3600),
            queue=QUEUE,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )

    async def enqueue(self, kind: str, payload: Mapping[str, Any]) -> str:
        deferrer = self.app.configure_task(kind, queue=QUEUE)
        job_id = await deferrer.defer_async(payload=dict(payload))
        await self._execute(
            "INSERT INTO tessera_job_progress (job_id) VALUES (%s) ON CONFLICT DO NOTHING", job_id
        )
        return str(job_id)

    async def get(self, job_id: str) -> Job | None:
        if not _valid_id(job_id):
            return None
        rows = await self._execute(
            "SELECT j.status, j.abort_requested, j.task_name, j.args, p.progress, p.error"
            " FROM procrastinate_jobs j LEFT JOIN tessera_job_progress p ON p.job_id = j.id"
            " WHERE j.id = %s AND j.queue_name = %s",
            int(job_id),
            QUEUE,
        )
        if not rows:
            return None
        status, abort_requested, kind, args, progress, error = rows[0]
        state = "cancelled" if status == "doing" and abort_requested else _STATES[status]
        return Job(job_id, kind, state, dict(args.get("payload", {})), Progress.from_json(progress), error)

    async def counts(self) -> dict[JobState, int]:
        rows = await self._execute(
            "SELECT status, abort_requested, count(*) FROM procrastinate_jobs WHERE queue_name = %s"
            " GROUP BY status, abort_requested",
            QUEUE,
        )
        counts: dict[JobState, int] = {}
        for status, abort_requested, count in rows:
            state = "cancelled" if status == "doing" and abort_requested else _STATES[status]
            counts[state] = counts.get(state, 0) + count
        return counts

    async def cancel(self, job_id: str) -> Job | None:
        if _valid_id(job_id):
            await self.app.job_manager.cancel_job_by_id_async(int(job_id), abort=True)
        return await self.get(job_id)

    async def run(self, handlers: Mapping[str, Handler], workers: int) -> None:
        import procrastinate

        retry = procrastinate.RetryStrategy(retry_exceptions={_Requeue})
        for kind, handler in handlers.items():
            self.app.tasks.pop(kind, None)  # a worker run again gets this run's handlers
            self.app.task(name=kind, queue=QUEUE, pass_context=True, retry=retry)(self._task(handler))
        watcher = asyncio.create_task(self._requeue_stalled())
        try:
            await self.app.run_worker_async(
                queues=[QUEUE],
                concurrency=workers,
                wait=True,
                install_signal_handlers=False,
                update_heartbeat_interval=self.lease / 3,
                stalled_worker_timeout=self.lease,
                abort_job_polling_interval=1.0,
                shutdown_graceful_timeout=0.5,
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _requeue_stalled(self) -> None:
        """Put back to ``todo`` the jobs of workers whose heartbeat is older than the lease."""
        from procrastinate import exceptions as procrastinate_exceptions
        from procrastinate.utils import utcnow

        manager = self.app.job_manager
        while True:
            await asyncio.sleep(self.lease / 2)
            try:
                stalled = await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=self.lease)
                for job in stalled:
                    assert job.id is not None
                    with contextlib.suppress(procrastinate_exceptions.ConnectorException):
                        await manager.retry_job_by_id_async(job.id, utcnow())
                        log.info("job %s: its worker stopped answering, queued again", job.id)
            except procrastinate_exceptions.ConnectorException as exc:
                log.warning("cannot look for stalled jobs: %s", exc)

    def _task(self, handler: Handler) -> Any:
        from procrastinate import exceptions as procrastinate_exceptions
        from procrastinate.job_context import AbortReason

        queue = self

        async def run(context: procrastinate.JobContext, payload: dict[str, Any]) -> None:
            job = context.job
            assert job.id is not None
            rows = await queue._execute("SELECT progress FROM tessera_job_progress WHERE job_id = %s", job.id)
            progress = Progress.from_json(rows[0][0] if rows else None)
            job_context = _Context(queue, str(job.id), job.task_name, payload, progress, context)
            try:
                await handler(job_context)
            except asyncio.CancelledError:
                if context.abort_reason() == AbortReason.SHUTDOWN:
                    raise _Requeue(str(job.id)) from None
                raise
            except JobCancelled:
                raise procrastinate_exceptions.JobAborted() from None
            except Exception as exc:
                await queue._save(job.id, progress, f"{type(exc).__name__}: {exc}")
                raise
            await queue._save(job.id, progress, None)

        return run

    async def _save(self, job_id: int, progress: Progress, error: str | None) -> None:
        from psycopg.types.json import Jsonb

        await self._execute(
            "INSERT INTO tessera_job_progress (job_id, progress, error) VALUES (%s, %s, %s)"
            " ON CONFLICT (job_id) DO UPDATE SET progress = EXCLUDED.progress, error = EXCLUDED.error",
            job_id,
            Jsonb(progress.to_json()),
            error,
        )


class _Context:
    """``JobContext`` of a job run by Procrastinate's worker."""

    def __init__(
        self,
        queue: ProcrastinateQueue,
        job_id: str,
        kind: str,
        payload: dict[str, Any],
        progress: Progress,
        context: procrastinate.JobContext,
    ) -> None:
        self.id = job_id
        self.kind = kind
        self.payload = payload
        self.progress = progress
        self._queue = queue
        self._context = context

    async def report(self) -> None:
        await self._queue._save(int(self.id), self.progress, None)
        if self._context.should_abort():
            raise JobCancelled(self.id)

    async def remembered(self) -> dict[str, str]:
        rows = await self._queue._execute(
            "SELECT key, value FROM tessera_job_marks WHERE job_id = %s", int(self.id)
        )
        return {key: value for key, value in rows}

    async def remember(self, items: Mapping[str, str]) -> None:
        async with (
            self._queue.app.connector.pool.connection() as conn,  # type: ignore[attr-defined]
            conn.cursor() as cursor,
        ):
            await cursor.executemany(
                "INSERT INTO tessera_job_marks (job_id, key, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (job_id, key) DO UPDATE SET value = EXCLUDED.value",
                [(int(self.id), key, value) for key, value in items.items()],
            )
