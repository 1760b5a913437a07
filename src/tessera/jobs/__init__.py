"""Durable background jobs: one small queue interface (``queue``), an embedded SQLite backend and a
PostgreSQL one (Procrastinate), and the service that runs them inside ``tessera serve``."""

from tessera.jobs.queue import Handler, Job, JobCancelled, JobContext, JobQueue, JobState, Progress
from tessera.jobs.service import JobService, open_queue

__all__ = [
    "Handler",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobQueue",
    "JobService",
    "JobState",
    "Progress",
    "open_queue",
]
