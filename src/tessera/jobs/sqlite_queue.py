"""The embedded job queue: one SQLite table of jobs with leases, run by ``LeaseWorker``.

Every state change is one SQL statement guarded by the job's state and owner, so a worker that lost its
lease (or whose job was cancelled) can no longer write anything for it. WAL mode and a busy timeout let
several processes share the file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tessera.jobs.queue import Handler, Job, JobState, Progress
from tessera.jobs.worker import Claimed, LeaseWorker

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tessera_jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS tessera_jobs_claim ON tessera_jobs (state, created);
CREATE TABLE IF NOT EXISTS tessera_job_marks (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
) WITHOUT ROWID;
"""

_CLAIM = """
UPDATE tessera_jobs SET state = 'running', owner = ?, lease_until = ?, updated = ?
WHERE id = (
    SELECT id FROM tessera_jobs
    WHERE state = 'queued' OR (state = 'running' AND lease_until < ?)
    ORDER BY created LIMIT 1
)
RETURNING id, kind, payload, progress
"""

_MINE = "id = ? AND owner = ? AND state = 'running'"


class SqliteQueue:
    """``JobQueue`` on a SQLite file (``path``); statements run in a thread, one at a time."""

    def __init__(self, path: Path, lease: float) -> None:
        self.path = path
        self.worker = LeaseWorker(self, lease)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ plumbing

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db

        self._db = await asyncio.to_thread(connect)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            if self._db is None:
                raise RuntimeError("job queue is closed")
            with self._lock:
                return self._db.execute(sql, args).fetchall()

        return await asyncio.to_thread(run)

    async def _changed(self, sql: str, *args: Any) -> bool:
        def run() -> bool:
            if self._db is None:
                raise RuntimeError("job queue is closed")
            with self._lock:
                return self._db.execute(sql, args).rowcount > 0

        return await asyncio.to_thread(run)

    async def ping(self) -> None:
        await self._run("SELECT 1 FROM tessera_jobs LIMIT 1")

    # ------------------------------------------------------------------ the queue

    async def enqueue(self, kind: str, payload: Mapping[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        await self._run(
            "INSERT INTO tessera_jobs (id, kind, payload, state, created, updated)"
            " VALUES (?, ?, ?, 'queued', ?, ?)",
            job_id,
            kind,
            json.dumps(dict(payload)),
            now,
            now,
        )
        self.worker.wake()
        return job_id

    async def get(self, job_id: str) -> Job | None:
        rows = await self._run(
            "SELECT id, kind, state, payload, progress, error FROM tessera_jobs WHERE id = ?", job_id
        )
        if not rows:
            return None
        id_, kind, state, payload, progress, error = rows[0]
        return Job(id_, kind, state, json.loads(payload), Progress.from_json(json.loads(progress)), error)

    async def counts(self) -> dict[JobState, int]:
        rows = await self._run("SELECT state, count(*) FROM tessera_jobs GROUP BY state")
        return {state: count for state, count in rows}

    async def cancel(self, job_id: str) -> Job | None:
        await self._run(
            "UPDATE tessera_jobs SET state = 'cancelled', owner = NULL, lease_until = NULL, updated = ?"
            " WHERE id = ? AND state IN ('queued', 'running')",
            time.time(),
            job_id,
        )
        return await self.get(job_id)

    async def run(self, handlers: Mapping[str, Handler], workers: int) -> None:
        await self.worker.run(handlers, workers)

    # ------------------------------------------------------------------ LeaseStore

    async def claim(self, owner: str, lease: float) -> Claimed | None:
        now = time.time()
        rows = await self._run(_CLAIM, owner, now + lease, now, now)
        if not rows:
            return None
        job_id, kind, payload, progress = rows[0]
        return Claimed(job_id, kind, json.loads(payload), Progress.from_json(json.loads(progress)))

    async def renew(self, job_id: str, owner: str, lease: float) -> bool:
        return await self._changed(
            f"UPDATE tessera_jobs SET lease_until = ? WHERE {_MINE}", time.time() + lease, job_id, owner
        )

    async def save(self, job_id: str, owner: str, progress: Progress, lease: float) -> bool:
        now = time.time()
        return await self._changed(
            f"UPDATE tessera_jobs SET progress = ?, updated = ?, lease_until = ? WHERE {_MINE}",
            json.dumps(progress.to_json()),
            now,
            now + lease,
            job_id,
            owner,
        )

    async def finish(
        self, job_id: str, owner: str, state: JobState, progress: Progress, error: str | None
    ) -> bool:
        return await self._changed(
            "UPDATE tessera_jobs SET state = ?, progress = ?, error = ?, updated = ?, owner = NULL,"
            f" lease_until = NULL WHERE {_MINE}",
            state,
            json.dumps(progress.to_json()),
            error,
            time.time(),
            job_id,
            owner,
        )

    async def prune(self, older_than: float) -> None:
        ended = "SELECT id FROM tessera_jobs WHERE state IN ('done', 'failed', 'cancelled') AND updated < ?"
        cutoff = time.time() - older_than

        def run() -> None:
            if self._db is None:
                raise RuntimeError("job queue is closed")
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(f"DELETE FROM tessera_job_marks WHERE job_id IN ({ended})", (cutoff,))
                    self._db.execute(f"DELETE FROM tessera_jobs WHERE id IN ({ended})", (cutoff,))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

        await asyncio.to_thread(run)

    async def release(self, job_id: str, owner: str) -> None:
        await self._changed(
            f"UPDATE tessera_jobs SET state = 'queued', owner = NULL, lease_until = NULL WHERE {_MINE}",
            job_id,
            owner,
        )

    async def remembered(self, job_id: str) -> dict[str, str]:
        rows = await self._run("SELECT key, value FROM tessera_job_marks WHERE job_id = ?", job_id)
        return {key: value for key, value in rows}

    async def remember(self, job_id: str, items: Mapping[str, str]) -> None:
        def run() -> None:
            if self._db is None:
                raise RuntimeError("job queue is closed")
            with self._lock:
                self._db.executemany(
                    "INSERT OR REPLACE INTO tessera_job_marks (job_id, key, value) VALUES (?, ?, ?)",
                    [(job_id, key, value) for key, value in items.items()],
                )

        await asyncio.to_thread(run)
