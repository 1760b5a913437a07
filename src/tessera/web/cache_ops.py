"""Cache management: statistics (public); warm, pin, unpin and purge (token required)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from tessera.images.warm_thumbs import make_thumbnails_at
from tessera.web.auth import require_token

router = APIRouter(prefix="/api/v1/cache", tags=["cache"])


class WarmRequest(BaseModel):
    path: str = Field(description="An object (/images/a.jp2) or a prefix (/images/maps/).", max_length=1100)
    concurrency: int = Field(4, ge=1, le=64)
    thumbs: bool = Field(False, description="Make the IIIF thumbnails of each image instead.")


class PathRequest(BaseModel):
    path: str = Field(description="An object or a prefix.", max_length=1100)


@router.get("/stats")
async def cache_stats(request: Request, top: int = 10) -> dict[str, Any]:
    return request.app.state.engine.stats(top=max(0, min(top, 1000)))


@router.post("/warm", dependencies=[Depends(require_token)])
async def warm(body: WarmRequest, request: Request) -> dict[str, Any]:
    """Fetch an object or prefix into the disk tier; with ``thumbs``, make its images' thumbnails.

    ``thumbs`` answers ``{"objects", "thumbnails", "skipped": {path: reason}}``.
    """
    if body.thumbs:
        report = await make_thumbnails_at(request.app.state.images, body.path)
        return {"objects": report.objects, "thumbnails": report.thumbnails, "skipped": report.skipped}
    objects, nbytes = await request.app.state.engine.warm(body.path, concurrency=body.concurrency)
    return {"objects": objects, "bytes": nbytes}


@router.post("/pin", dependencies=[Depends(require_token)])
async def pin(body: PathRequest, request: Request) -> dict[str, int]:
    """Pin an object or prefix (kept out of eviction, within ``cache.pin_size``) and fetch it."""
    objects, nbytes = await request.app.state.engine.pin(body.path)
    return {"objects": objects, "bytes": nbytes}


@router.post("/unpin", dependencies=[Depends(require_token)])
async def unpin(body: PathRequest, request: Request) -> dict[str, int]:
    return {"unpinned": await request.app.state.engine.unpin(body.path)}


@router.post("/purge", dependencies=[Depends(require_token)])
async def purge(body: PathRequest, request: Request) -> dict[str, int]:
    return {"purged": await request.app.state.engine.purge(body.path)}
