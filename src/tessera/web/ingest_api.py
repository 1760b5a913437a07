"""``POST /api/v1/ingest``: server-side copy of URLs and node-local files into virtual paths.

One item answers 201 with the stored object (the JSON of a ``PUT``); a list (at most ``MAX_ITEMS``,
``CONCURRENCY`` at once) answers 201 with the list of them. Items are independent writes: when one
fails, the request answers that error and the items stored before it stay. Larger trees: bulk import.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tessera.config import Settings
from tessera.ingest.allow import AllowList, InvalidSource, split_source
from tessera.ingest.fetch import open_url
from tessera.metrics import Metrics
from tessera.origins.local import LocalOrigin
from tessera.storage import StorageManager, Stored
from tessera.web.auth import authorize
from tessera.web.openapi import error_responses
from tessera.web.writes import StoredBody

router = APIRouter(tags=["files"])

MAX_ITEMS = 100
CONCURRENCY = 4


class IngestItem(BaseModel):
    source: str = Field(
        description="http(s):// URL or file:/// path allowed by storage.ingest_allow", max_length=4096
    )
    path: str = Field(description="The virtual path to store it at", max_length=1100)


@router.post(
    "/api/v1/ingest",
    status_code=201,
    response_model=StoredBody | list[StoredBody],
    responses=error_responses(400, 401, 403, 404, 413, 502),
)
async def ingest(body: IngestItem | list[IngestItem], request: Request) -> JSONResponse:
    """Copy one source (or a list of at most 100) into Tessera, server-side."""
    items = body if isinstance(body, list) else [body]
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidSource(f"ingest takes 1 to {MAX_ITEMS} items; use a bulk import for more")
    authorize(request, "write", [item.path for item in items])
    settings: Settings = request.app.state.settings
    storage: StorageManager = request.app.state.storage
    allow = AllowList(settings.storage.ingest_allow)
    timeout = httpx.Timeout(settings.origin.read_timeout, connect=settings.origin.connect_timeout)
    slots = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:

        async def one(item: IngestItem) -> Stored:
            async with slots:
                stored = await _ingest(item, allow, storage, client)
            metrics: Metrics = storage.engine.metrics
            metrics.import_files.labels("copied").inc()
            metrics.import_bytes.inc(stored.size)
            return stored

        stored = await asyncio.gather(*(one(item) for item in items))
    answers = [dataclasses.asdict(s) for s in stored]
    return JSONResponse(answers if isinstance(body, list) else answers[0], status_code=201)


async def _ingest(
    item: IngestItem, allow: AllowList, storage: StorageManager, client: httpx.AsyncClient
) -> Stored:
    storage.engine.namespace.resolve(item.path)  # a bad target is a 400/404 before the source is read
    if split_source(item.source).scheme == "file":
        root, real = allow.local_root(item.source)
        origin = LocalOrigin("ingest", root)
        info = await origin.stat(os.path.relpath(real, root))
        body = await origin.read_range(info.key, 0, info.size, if_match=info.etag)
        return await storage.put(item.path, body.chunks, size=info.size)
    response = await open_url(item.source, allow, client)
    try:
        length = response.headers.get("content-length")
        size = int(length) if length is not None and length.isdigit() else None
        return await storage.put(item.path, _chunks(response), size=size)
    finally:
        await response.aclose()


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk
