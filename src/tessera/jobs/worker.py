"""The worker loop over a store of leased jobs (the embedded backend's; Procrastinate has its own).

A worker claims a job with a lease, renews it every third of the lease while the handler runs, and
writes the outcome. A worker that dies (SIGKILL) stops renewing: once its lease has run out, any worker
claims the job again and the handler resumes from what it ``remember``-ed. A job whose row is no longer
this worker's (cancelled, or its lease lost to another worker) has its handler stopped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tessera.jobs.queue import Handler, JobCancelled, JobState, Progress

log = logging.getLogger(__name__)

#: How often an idle worker looks for queued jobs (a job enqueued in this process wakes it at once).
POLL_SECONDS = 0.5


@dataclass(slots=True)
class Claimed:
    id: str
    kind: str
    payload: dict[str, Any]
    progress: Progress


class LeaseStore(Protocol):
    """The operations the loop needs; each returns False when the job is no longer ``owner``'s."""

    async def claim(self, owner: str, lease: float) -> Claimed | None: ...

    async def renew(self, job_id: str, owner: str, lease: float) -> bool: ...

    async def save(self, job_id: str, owner: str, progress: Progress, lease: float) -> bool: ...

    async def finish(
        self, job_id: str, owner: str, state: JobState, progress: Progress, error: str | None
    ) -> bool: ...

    async def release(self, job_id: str, owner: str) -> None: ...

    async def remembered(self, job_id: str) -> dict[str, str]: ...

    async def remember(self, job_id: str, items: Mapping[str, str]) -> None: ...


class LeasedContext:
    """``JobContext`` of a job held under a lease."""

    def __init__(self, store: LeaseStore, claimed: Claimed, owner: str, lease: float) -> None:
        self.id = claimed.id
        self.kind = claimed.kind
        self.payload = claimed.payload
        self.progress = claimed.progress
        self._store = store
        self._owner = owner
        self._lease = lease

    async def report(self) -> None:
        if not await self._store.save(self.id, self._owner, self.progress, self._lease):
            raise JobCancelled(self.id)

    async def remembered(self) -> dict[str, str]:
        return await self._store.remembered(self.id)

    async def remember(self, items: Mapping[str, str]) -> None:
        await self._store.remember(self.id, items)


class LeaseWorker:
    """Runs up to ``workers`` jobs at once from ``store`` (``wake`` after an enqueue in this process)."""

    def __init__(self, store: LeaseStore, lease: float) -> None:
        self.store = store
        self.lease = lease
        self.owner = uuid.uuid4().hex
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, handlers: Mapping[str, Handler], workers: int) -> None:
        slots = asyncio.Semaphore(workers)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                claimed = await self.store.claim(self.owner, self.lease)
                if claimed is None:
                    slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
                    self._wake.clear()
                    continue
                task = asyncio.create_task(self._run_one(claimed, handlers))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _task: slots.release())
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _run_one(self, claimed: Claimed, handlers: Mapping[str, Handler]) -> None:
        context = LeasedContext(self.store, claimed, self.owner, self.lease)
        handler = handlers.get(claimed.kind)
        if handler is None:
            await self.store.finish(
                claimed.id, self.owner, "failed", claimed.progress, f"no handler for {claimed.kind!r}"
            )
            return
        work: asyncio.Task[None] = asyncio.ensure_future(handler(context))
        beat = asyncio.create_task(self._heartbeat(claimed.id, work))
        state: JobState = "done"
        error: str | None = None
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.cancelled() and beat.done():  # the heartbeat stopped it: cancelled, or lease lost
                return
            # The server is stopping: hand the job back so the next start resumes it at once.
            beat.cancel()
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            await asyncio.shield(self.store.release(claimed.id, self.owner))
            raise
        except JobCancelled:
            return
        except Exception as exc:
            log.exception("job %s (%s) failed", claimed.id, claimed.kind)
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            beat.cancel()
        await self.store.finish(claimed.id, self.owner, state, context.progress, error)

    async def _heartbeat(self, job_id: str, work: asyncio.Task[None]) -> None:
        while not work.done():
            await asyncio.sleep(self.lease / 3)
            if not await self.store.renew(job_id, self.owner, self.lease):
                work.cancel()
                return
