"""``POST /api/v1/retrieve``: objects made local for processors on this node, under a lease;
``DELETE /api/v1/retrieve/{lease}`` ends a lease early.

Retrieve needs a token with the ``write`` scope, on public mounts too: it takes disk space of the
shared cache (pins, up to ``cache.pin_size``) for up to a day, which an anonymous reader must not be
able to do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Self

from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import BaseModel, Field, model_validator

from tessera.storage.leases import Lease
from tessera.storage.retrieve import Retrieved
from tessera.web.auth import Scope, authorize, require
from tessera.web.openapi import error_responses

#: The scope a retrieve needs (see the module's docstring).
RETRIEVE_SCOPE: Scope = "write"

router = APIRouter(prefix="/api/v1/retrieve", tags=["storage"], dependencies=[require(RETRIEVE_SCOPE)])
MAX_LEASE_SECONDS = 86_400
#: Most objects one request retrieves.
MAX_PATHS = 1000

VirtualPath = Annotated[str, Field(min_length=1, max_length=1100, examples=["/images/maps/chart.jp2"])]


class RetrieveRequest(BaseModel):
    """Exactly one of ``path`` (answered with one object) and ``paths`` (answered with a list)."""

    path: VirtualPath | None = Field(None, description="One object.")
    paths: list[VirtualPath] | None = Field(
        None, min_length=1, max_length=MAX_PATHS, description="Several objects (a product's files)."
    )
    lease: int = Field(
        3600,
        ge=1,
        le=MAX_LEASE_SECONDS,
        description="Seconds the files stay pinned; then they are evictable again.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give either path or paths")
        return self


class RetrievedFile(BaseModel):
    path: str = Field(description="The object's virtual path.")
    local_path: str = Field(description="Its file on this node; read it while the lease runs.")
    size: int
    sha256: str = Field(description="Of the local file's bytes, hex.")
    lease: str = Field(description="The lease's id (for DELETE /api/v1/retrieve/{lease}).")
    expires: datetime = Field(description="When the lease ends (UTC).")

    @classmethod
    def of(cls, retrieved: Retrieved, lease: Lease) -> RetrievedFile:
        return cls(
            path=retrieved.path,
            local_path=str(retrieved.local_path),
            size=retrieved.size,
            sha256=retrieved.sha256,
            lease=lease.id,
            expires=datetime.fromtimestamp(lease.expires, UTC),
        )


@router.post(
    "",
    response_model=RetrievedFile | list[RetrievedFile],
    responses=error_responses(400, 401, 403, 404, 502, 504, 507),
)
async def retrieve(body: RetrieveRequest, request: Request) -> RetrievedFile | list[RetrievedFile]:
    """Fetch objects whole into the disk tier and pin them for ``lease`` seconds: their local paths,
    sizes and SHA-256 (an object for ``path``, a list in the same order for ``paths``).

    507 when they do not fit in ``cache.pin_size``; nothing stays pinned after any error.
    """
    paths = [body.path] if body.path is not None else list(body.paths or ())
    authorize(request, RETRIEVE_SCOPE, paths)
    lease, files = await request.app.state.retriever.retrieve(paths, body.lease)
    answers = [RetrievedFile.of(retrieved, lease) for retrieved in files]
    return answers[0] if body.path is not None else answers


@router.delete("/{lease}", status_code=204, responses=error_responses(401, 403, 404))
async def release(
    request: Request,
    lease: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A lease's id.")],
) -> Response:
    """End a lease now: its files become evictable unless another lease holds them."""
    leases = request.app.state.retriever.leases
    held = await leases.get(lease)
    if held is None:
        raise HTTPException(404, "no such lease (unknown, released or run out)")
    authorize(request, RETRIEVE_SCOPE, held.paths)
    await leases.release(lease)
    return Response(status_code=204)
