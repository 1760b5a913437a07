"""``/readyz``: whether this node can serve (``/healthz`` only says that it is alive).

Named checks, each an async callable that returns when its part is ready and raises when it is not:
every mount's origin answers (``origin:NAME``, one cheap request with a short timeout), every cache
tier's directory takes a new file (``cache:TIER``), plus any check another part registers, such as
the job store's::

    from tessera.web.readiness import NotReady, ready_checks
    ready_checks(app).add("jobs", check_job_store)   # raise NotReady("why") when not ready

Results are kept for ``READY_TTL`` seconds and concurrent probes share one run, so a storm of
probes sends each origin one request every few seconds at most. Reasons are public (a load
balancer sees them): a check says what is wrong in the node's terms; anything else it raises is
logged and reported as a failure without its message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tessera.errors import BucketNotFound, ObjectNotFound
from tessera.origins import Origin

log = logging.getLogger(__name__)

router = APIRouter(tags=["ops"])

#: Seconds a readiness result is reused.
READY_TTL = 3.0
#: Longest a single check may take before it counts as failed.
CHECK_TIMEOUT = 2.0
#: The key an origin check asks for (its absence is the expected answer).
PROBE_KEY = ".tessera-readyz-probe"

Check = Callable[[], Awaitable[None]]


class NotReady(Exception):
    """A check's failure, with a reason that may be shown to anyone."""


class ReadyChecks:
    """The named checks of ``/readyz`` and their last results."""

    def __init__(self, ttl: float = READY_TTL, timeout: float = CHECK_TIMEOUT) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.checks: dict[str, Check] = {}
        self._result: tuple[float, dict[str, str]] | None = None
        self._running: asyncio.Future[dict[str, str]] | None = None

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) the check ``name``."""
        self.checks[name] = check
        self._result = None

    async def run(self) -> dict[str, str]:
        """``name -> "ok"`` or the reason it is not ready; reused for ``ttl`` seconds."""
        if self._result is not None and time.monotonic() - self._result[0] < self.ttl:
            return self._result[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run_all())
            self._running.add_done_callback(self._ran)
        return await asyncio.shield(self._running)

    def _ran(self, done: asyncio.Future[dict[str, str]]) -> None:
        self._running = None
        if not done.cancelled() and done.exception() is None:
            self._result = (time.monotonic(), done.result())

    async def _run_all(self) -> dict[str, str]:
        names = sorted(self.checks)
        outcomes = await asyncio.gather(*(self._one(name) for name in names))
        return dict(zip(names, outcomes, strict=True))

    async def _one(self, name: str) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                await self.checks[name]()
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except NotReady as exc:
            return str(exc)
        except Exception as exc:
            log.warning("readiness check %s failed: %r", name, exc)
            return "failed (details in the server log)"
        return "ok"


def ready_checks(app: FastAPI) -> ReadyChecks:
    """The application's checks (made on first use, so any part may register before the first probe)."""
    checks: ReadyChecks | None = getattr(app.state, "ready_checks", None)
    if checks is None:
        checks = app.state.ready_checks = ReadyChecks()
    return checks


def origin_check(origin: Origin) -> Check:
    """The origin answers a stat of a key that is not there (a 404 is an answer; a missing bucket is not)."""

    async def check() -> None:
        try:
            await origin.stat(PROBE_KEY)
        except BucketNotFound as exc:
            raise NotReady(str(exc)) from None
        except ObjectNotFound:
            pass

    return check


def directory_check(directory: Path) -> Check:
    """A new file can be created, written and removed in ``directory`` (a tier's data directory, where
    blocks are written)."""

    def probe() -> None:
        name = directory / f".readyz-{os.getpid()}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ready")
            finally:
                os.close(fd)
            os.unlink(name)
        except FileNotFoundError:
            pass  # the start-up check of the disk removed it meanwhile: it was written
        except OSError as exc:
            raise NotReady(f"cannot write to the cache directory: {exc.strerror}") from None

    async def check() -> None:
        await asyncio.to_thread(probe)

    return check


def _add_builtin_checks(app: FastAPI) -> None:
    checks = ready_checks(app)
    engine = app.state.engine
    for mount in engine.namespace.mounts:
        checks.checks.setdefault(f"origin:{mount}", origin_check(engine.namespace.origin(mount)))
    for tier in engine.tiers:
        checks.checks.setdefault(f"cache:{tier.name}", directory_check(tier.store.data))
    app.state.ready_builtin = True


class Readiness(BaseModel):
    ready: bool
    failing: list[str] = Field(description="Names of the checks that failed.")
    checks: dict[str, str] = Field(description='Each check: "ok" or why it is not ready.')


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the failing checks are named."}},
)
async def readyz(request: Request) -> Any:
    """Ready to serve: every origin answers, every cache directory is writable, and every registered
    check (the job store's) passes; 503 naming the failing ones otherwise."""
    app = request.app
    if not getattr(app.state, "ready_builtin", False):
        _add_builtin_checks(app)
    results = await ready_checks(app).run()
    failing = [name for name, outcome in results.items() if outcome != "ok"]
    body = Readiness(ready=not failing, failing=failing, checks=results)
    return JSONResponse(body.model_dump(), status_code=503 if failing else 200)
