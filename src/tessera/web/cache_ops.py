"""Cache management: statistics (totals public, details with an ``admin`` token covering every path);
warm, pin, unpin and purge (an ``admin`` token covering the path)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from tessera.cluster import Change
from tessera.images.warm_thumbs import make_thumbnails_at
from tessera.web.auth import BearerCredentials, authorize, require, token_given
from tessera.web.openapi import error_responses

router = APIRouter(prefix="/api/v1/cache", tags=["cache"])

#: What a cache operation may answer besides 200: bad input, no or a wrong token, no such mount or
#: object, origin trouble, a pin that does not fit.
_OPERATION_ERRORS = error_responses(400, 401, 403, 404, 502, 504, 507)


class WarmRequest(BaseModel):
    path: str = Field(description="An object (/images/a.jp2) or a prefix (/images/maps/).", max_length=1100)
    concurrency: int = Field(4, ge=1, le=64)
    thumbs: bool = Field(False, description="Make the IIIF thumbnails of each image instead.")


class PathRequest(BaseModel):
    path: str = Field(description="An object or a prefix.", max_length=1100)


@router.get("/stats")
async def cache_stats(
    request: Request,
    _credentials: BearerCredentials,
    top: Annotated[int, Query(description="How many of the most read objects (0 to 1000).")] = 10,
) -> dict[str, Any]:
    """Bytes per tier, hits and misses. With an ``admin`` token for every path (or ``server.public_stats``)
    also the most read objects and the pins, which name origins and keys."""
    figures: dict[str, Any] = await request.app.state.engine.stats(top=max(0, min(top, 1000)))
    if request.app.state.settings.server.public_stats or token_given(request, scope="admin"):
        return figures
    return totals_only(figures)


def totals_only(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures without what names an origin, a key or a pin."""
    totals = {name: value for name, value in figures.items() if name != "top"}
    totals["pinned"] = {name: value for name, value in figures["pinned"].items() if name != "pins"}
    return totals


@router.post("/warm", dependencies=[require("admin")], responses=_OPERATION_ERRORS)
async def warm(body: WarmRequest, request: Request) -> dict[str, Any]:
    """Fetch an object or prefix into the disk tier; with ``thumbs``, make its images' thumbnails.

    ``thumbs`` answers ``{"objects", "thumbnails", "skipped": {path: reason}}``.
    """
    authorize(request, "admin", [body.path])
    if body.thumbs:
        report = await make_thumbnails_at(request.app.state.images.get(), body.path)
        return {"objects": report.objects, "thumbnails": report.thumbnails, "skipped": report.skipped}
    objects, nbytes = await request.app.state.engine.warm(body.path, concurrency=body.concurrency)
    return {"objects": objects, "bytes": nbytes}


@router.post("/pin", dependencies=[require("admin")], responses=_OPERATION_ERRORS)
async def pin(body: PathRequest, request: Request) -> dict[str, int]:
    """Pin an object or prefix (kept out of eviction, within ``cache.pin_size``) and fetch it."""
    authorize(request, "admin", [body.path])
    objects, nbytes = await request.app.state.engine.pin(body.path)
    return {"objects": objects, "bytes": nbytes}


@router.post("/unpin", dependencies=[require("admin")], responses=_OPERATION_ERRORS)
async def unpin(body: PathRequest, request: Request) -> dict[str, int]:
    authorize(request, "admin", [body.path])
    return {"unpinned": await request.app.state.engine.unpin(body.path)}


@router.post("/purge", dependencies=[require("admin")], responses=_OPERATION_ERRORS)
async def purge(body: PathRequest, request: Request) -> dict[str, int]:
    """Drop an object or prefix from every tier (on every node of a cluster)."""
    authorize(request, "admin", [body.path])
    purged: int = await request.app.state.engine.purge(body.path)
    request.app.state.cluster.announce(Change.purged(body.path))
    return {"purged": purged}
