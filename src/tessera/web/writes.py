"""``PUT`` and ``DELETE /api/v1/files/{virtual path}``: uploads streamed into the mount's origin, and
deletes, through the ``StorageManager`` (size and checksum checks, cache coherence)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from tessera.errors import InvalidPath
from tessera.storage import Expected, StorageManager
from tessera.web.auth import BearerCredentials, authorize
from tessera.web.base_url import request_base
from tessera.web.limits import streams_body
from tessera.web.openapi import error_responses

router = APIRouter()

_ROUTE = "/api/v1/files/{path:path}"
_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "description": "The object's bytes, with a `Content-Length` or chunked.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class StoredBody(BaseModel):
    """What an upload stored."""

    path: str
    size: int
    etag: str
    sha256: str


@router.put(
    _ROUTE,
    tags=["files"],
    status_code=201,
    operation_id="write_file",
    response_model=StoredBody,
    responses=error_responses(400, 401, 403, 404, 405, 411, 412, 413, 502, 504),
    openapi_extra=_BINARY_BODY,
)
@streams_body
async def write_file(
    path: str,
    request: Request,
    _credentials: BearerCredentials,
    content_md5: Annotated[str | None, Header(description="Base64 MD5 of the body: checked.")] = None,
    x_amz_checksum_sha256: Annotated[
        str | None, Header(description="Base64 (or hex) SHA-256 of the body: checked.")
    ] = None,
    if_none_match: Annotated[
        str | None, Header(description="`*`: create only (412 if an object is there).")
    ] = None,
) -> Response:
    """Store the request body as the object at the path, streamed into the mount's origin.

    Nothing is visible until the whole body has arrived and matched its checksums: a body that stops
    early, fails a check or goes over `storage.max_upload_size` (413) leaves no trace. Answers 201
    with the stored size, ETag and SHA-256. HTTP mounts are read-only (405).
    """
    virtual = "/" + path
    authorize(request, "write", [virtual])  # before a single byte of the body is read
    if if_none_match is not None and if_none_match.strip() != "*":
        raise InvalidPath("If-None-Match on an upload can only be * (create only)")
    storage: StorageManager = request.app.state.storage
    try:
        stored = await storage.put(
            virtual,
            request.stream(),
            size=_content_length(request),
            expected=Expected.from_headers(content_md5, x_amz_checksum_sha256),
            create_only=if_none_match is not None,
        )
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is left to read it; nothing was stored
    base = request_base(request.scope, request.app.state.settings.server.public_url)
    location = f"{base}/api/v1/files{quote(stored.path)}"
    return JSONResponse(asdict(stored), status_code=201, headers={"ETag": stored.etag, "Location": location})


def _content_length(request: Request) -> int | None:
    length = request.headers.get("content-length")
    if length is None:
        return None
    if not length.strip().isdigit():
        raise InvalidPath("Content-Length is not a number")
    return int(length)


_DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "Deleted (or there was nothing at the path)."},
    **error_responses(400, 401, 403, 404, 405, 502, 504),
}


@router.delete(
    _ROUTE, tags=["files"], status_code=204, operation_id="delete_file", responses=_DELETE_RESPONSES
)
async def delete_file(path: str, request: Request, _credentials: BearerCredentials) -> Response:
    """Delete the object at the path; a later read is a 404. Deleting what is not there is not an error."""
    virtual = "/" + path
    authorize(request, "write", [virtual])
    storage: StorageManager = request.app.state.storage
    await storage.delete(virtual)
    return Response(status_code=204)
