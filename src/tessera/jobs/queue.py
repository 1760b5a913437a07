"""The one small job-queue interface: enqueue, look up, cancel, and run handlers with leases.

Two backends implement it: ``SqliteQueue`` (embedded, the default: no server) and
``ProcrastinateQueue`` (PostgreSQL, for several nodes). Jobs are generic: a ``kind`` names the
handler, a JSON ``payload`` its input. A handler reports progress through its ``JobContext`` and can
``remember`` small facts (the files it has copied) that survive a crash, so a job taken again after
its worker died resumes instead of starting over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

JobState = Literal["queued", "running", "done", "failed", "cancelled"]

#: Per-file errors kept in a job's progress (the first ones; ``failed`` still counts them all).
MAX_ERRORS = 100


class JobCancelled(Exception):
    """Raised in a handler by ``JobContext.report`` once the job was cancelled (or its lease lost)."""


@dataclass(slots=True)
class Progress:
    """How far a job is: files seen, copied and failed, bytes copied, the first per-file errors."""

    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def error(self, path: str, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"path": path, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Progress:
        data = data or {}
        return cls(
            total=int(data.get("total", 0)),
            done=int(data.get("done", 0)),
            failed=int(data.get("failed", 0)),
            skipped=int(data.get("skipped", 0)),
            bytes=int(data.get("bytes", 0)),
            errors=list(data.get("errors", [])),
        )


@dataclass(slots=True)
class Job:
    """What ``get`` answers about one job."""

    id: str
    kind: str
    state: JobState
    payload: dict[str, Any]
    progress: Progress
    #: Why a failed job failed (the handler's exception), else None.
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            **self.progress.to_json(),
            "error": self.error,
        }


class JobContext(Protocol):
    """What a running handler sees of its job."""

    id: str
    kind: str
    payload: dict[str, Any]
    progress: Progress

    async def report(self) -> None:
        """Save ``progress``; raise ``JobCancelled`` if the job was cancelled meanwhile."""
        ...

    async def remembered(self) -> dict[str, str]:
        """Everything ``remember`` stored for this job, by earlier runs of it included."""
        ...

    async def remember(self, items: Mapping[str, str]) -> None:
        """Store ``key -> value`` facts for this job (replacing earlier values of the same keys)."""
        ...


Handler = Callable[[JobContext], Awaitable[None]]


class JobQueue(Protocol):
    """A durable queue of jobs; ``run`` is the worker loop (until cancelled)."""

    async def open(self) -> None:
        """Connect, and create the tables if they are missing."""
        ...

    async def close(self) -> None: ...

    async def enqueue(self, kind: str, payload: Mapping[str, Any]) -> str:
        """Queue a job; its id."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (a finished one stays as it is); the job after it, or None."""
        ...

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (states without any are left out)."""
        ...

    async def run(self, handlers: Mapping[str, Handler], workers: int) -> None:
        """Run up to ``workers`` jobs at once with ``handlers`` by kind, until cancelled."""
        ...

    async def ping(self) -> None:
        """Raise if the job store cannot be reached (``/readyz``)."""
        ...

    async def prune(self, older_than: float) -> None:
        """Delete the jobs that ended (done, failed, cancelled) more than ``older_than`` seconds ago."""
        ...
