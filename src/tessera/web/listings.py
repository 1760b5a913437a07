"""``GET /api/v1/list/{virtual prefix}``: the objects under a prefix, a page at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from tessera.cache import CacheEngine
from tessera.errors import InvalidPath
from tessera.origins.http import HttpOrigin
from tessera.storage.listing import list_page
from tessera.web.auth import authorize, read_allowed
from tessera.web.openapi import error_responses

router = APIRouter()

MAX_LIMIT = 1000


class ListedObject(BaseModel):
    path: str
    size: int
    etag: str
    #: Last modification, RFC 3339 in UTC.
    modified: str


class Listing(BaseModel):
    """One page: objects, sub-prefixes (with ``delimiter``), and the cursor of the next page (null: the
    last page)."""

    items: list[ListedObject]
    prefixes: list[str]
    next: str | None


_RESPONSES: dict[int | str, dict[str, Any]] = {**error_responses(400, 401, 403, 404, 502, 504)}


@router.get(
    "/api/v1/list/{prefix:path}",
    tags=["files"],
    operation_id="list_files",
    response_model=Listing,
    responses=_RESPONSES,
)
async def list_files(
    prefix: str,
    request: Request,
    delimiter: Annotated[
        str | None, Query(description="`/`: roll keys up into sub-prefixes at the next `/`.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most entries in one page.")] = MAX_LIMIT,
    cursor: Annotated[str | None, Query(description="The `next` of the page before.")] = None,
) -> Listing:
    """Objects whose virtual path starts with the prefix (`/images/maps/`, or a partial name), in key
    order; without `delimiter`, every object below it. The prefix `/` (empty) lists the mounts."""
    if delimiter not in (None, "/"):
        raise InvalidPath("the only delimiter is /")
    engine: CacheEngine = request.app.state.engine
    if not prefix.strip("/"):
        mounts = [f"/{mount}/" for mount in engine.namespace.mounts]
        return Listing(items=[], prefixes=mounts if delimiter else [], next=None)
    if not read_allowed(request.app.state.settings, prefix):
        authorize(request, "read", ["/" + prefix])
    resolved = engine.namespace.resolve_prefix("/" + prefix)
    key_prefix = resolved.key + ("/" if resolved.key and prefix.endswith("/") else "")
    if isinstance(resolved.origin, HttpOrigin):
        raise InvalidPath(f"mount {resolved.mount} cannot be listed: its origin is plain HTTP")
    page = await list_page(resolved.origin, key_prefix, delimiter=delimiter, limit=limit, cursor=cursor)
    base = f"/{resolved.mount}/"
    return Listing(
        items=[
            ListedObject(
                path=base + info.key,
                size=info.size,
                etag=info.etag,
                modified=datetime.fromtimestamp(info.mtime, UTC).isoformat().replace("+00:00", "Z"),
            )
            for info in page.items
        ],
        prefixes=[base + sub for sub in page.prefixes],
        next=page.next,
    )
