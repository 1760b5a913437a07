"""The two small read-only JSON endpoints the pages need beyond the existing API.

``GET /api/v1/cached/{virtual path}``: how many bytes of an object the disk tiers hold (the viewer's
"cached" fact). ``GET /api/v1/stats/history``: the last hour of hit ratio, origin traffic and fills
in 5 s steps (``sampler.py``) and the job queue's counts by state (the dashboard). Both are figures
without names, readable as the object or ``/api/v1/cache/stats`` totals are.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tessera.cache import CacheEngine
from tessera.web.auth import authorize, read_allowed
from tessera.web.openapi import error_responses
from tessera.web.ui.sampler import INTERVAL

router = APIRouter(prefix="/api/v1")


class Cached(BaseModel):
    path: str
    size: int = Field(description="The current version's size in bytes.")
    cached: int = Field(description="Its bytes held by the disk tiers.")


class Point(BaseModel):
    t: float = Field(description="End of the interval, seconds since the epoch.")
    reads: int = Field(description="Block reads in the interval.")
    hit_ratio: float | None = Field(description="Share served from a cache tier (None without reads).")
    origin_bytes: int
    origin_errors: int
    fills: int = Field(description="Blocks being fetched from origins at the end of the interval.")


class History(BaseModel):
    interval: float = Field(description="Seconds between points.")
    points: list[Point] = Field(description="Oldest first, at most an hour of them.")
    jobs: dict[str, int] = Field(description="Jobs in the queue by state: queued, running, done, failed…")


@router.get(
    "/cached/{path:path}",
    tags=["cache"],
    response_model=Cached,
    responses=error_responses(400, 401, 403, 404, 502, 504),
)
async def cached(path: str, request: Request) -> Cached:
    """How much of an object the disk tiers hold. Opening it may ask the origin for its size (HEAD),
    never for its bytes."""
    if not read_allowed(request.app.state.settings, path):
        authorize(request, "read", ["/" + path])
    engine: CacheEngine = request.app.state.engine
    handle = await engine.open("/" + path)
    return Cached(path="/" + path, size=handle.size, cached=engine.cached_bytes(handle))


async def _job_counts(request: Request) -> dict[str, int]:
    """The queue's counts, asked at most once per interval however many dashboards are open (a count
    reads the whole state index, which every finished job stays in)."""
    state = request.app.state
    memo: tuple[float, dict[str, int]] | None = getattr(state, "ui_job_counts", None)
    if memo is None or time.monotonic() - memo[0] >= INTERVAL:
        memo = state.ui_job_counts = (time.monotonic(), dict(await state.jobs.queue.counts()))
    return memo[1]


@router.get("/stats/history", tags=["ops"], response_model=History)
async def history(request: Request) -> dict[str, Any]:
    """Hit ratio, block reads, origin bytes and errors per 5 s over the last hour; jobs by state."""
    sampler = getattr(request.app.state, "sampler", None)
    jobs = await _job_counts(request)
    return {"interval": INTERVAL, "points": sampler.series() if sampler else [], "jobs": jobs}
