"""Bulk import as durable jobs: ``POST /api/v1/jobs/import`` → 202, ``GET``/``DELETE /api/v1/jobs/{id}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tessera.ingest import bulk_import
from tessera.ingest.sources import open_source
from tessera.jobs import Job, JobService
from tessera.web.auth import authorize
from tessera.web.openapi import error_responses

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


class ImportRequest(BaseModel):
    source: str = Field(
        description="file:///dir or s3://bucket/prefix, allowed by storage.ingest_allow", max_length=2048
    )
    path: str = Field(description="The virtual prefix the tree lands under: /mount/prefix", max_length=1100)


class ImportAccepted(BaseModel):
    id: str
    status_url: str


class JobStatus(BaseModel):
    id: str
    kind: str
    state: str = Field(description="queued, running, done, failed or cancelled")
    total: int = Field(description="Files found so far (final once the source is listed)")
    done: int = Field(description="Files copied, or found already copied by an earlier run")
    failed: int
    skipped: int = Field(description="Files of `done` already copied by an earlier run of the job")
    bytes: int
    errors: list[dict[str, str]] = Field(description="The first per-file errors: {path, reason}")
    error: str | None = Field(description="Why the job failed as a whole")


def _service(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


@router.post("/import", status_code=202, responses=error_responses(400, 401, 403, 404))
async def start_import(body: ImportRequest, request: Request) -> JSONResponse:
    """Queue a bulk import of a tree; follow it at ``status_url``."""
    prefix = body.path.rstrip("/")
    authorize(request, "write", [prefix or "/"])
    storage = request.app.state.storage
    storage.engine.namespace.resolve_prefix(prefix + "/")
    source = open_source(body.source, request.app.state.settings)  # 403 now rather than a failed job
    await source.origin.close()
    job_id = await _service(request).enqueue(bulk_import.KIND, {"source": body.source, "path": prefix})
    status_url = str(request.url_for("get_job", job_id=job_id))
    return JSONResponse({"id": job_id, "status_url": status_url}, status_code=202)


async def _job(request: Request, job_id: str) -> Job:
    authorize(request, "write")  # before the lookup: no token, no word on which ids exist
    job = await _service(request).queue.get(job_id) if len(job_id) <= 64 else None
    if job is None:
        raise HTTPException(404, f"no job {job_id[:64]!r}")
    authorize(request, "write", [job.payload.get("path") or "/"])
    return job


@router.get("/{job_id}", response_model=JobStatus, responses=error_responses(401, 403, 404))
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """A job's state and progress."""
    return (await _job(request, job_id)).to_json()


@router.delete("/{job_id}", response_model=JobStatus, responses=error_responses(401, 403, 404))
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel a queued or running job (files already copied stay); a finished job is left as it is."""
    await _job(request, job_id)
    job = await _service(request).cancel(job_id)
    assert job is not None
    return job.to_json()
