"""``GET/HEAD /api/v1/files/{virtual path}``: objects read through the cache, with ranges and ETags
(writes: ``web.writes``)."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from tessera.cache import CacheEngine, Handle
from tessera.errors import VersionChanged
from tessera.web.auth import authorize, read_allowed
from tessera.web.errors import error_response
from tessera.web.openapi import error_responses
from tessera.web.ranges import Unsatisfiable, etag_matches, parse_range

router = APIRouter()


_OBJECT = {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}


_ROUTE = "/api/v1/files/{path:path}"
#: Shared caches may keep a public mount's objects (revalidating each time), never a private one's.
_CACHE_CONTROL = {
    True: "public, max-age=0, must-revalidate",
    False: "private, max-age=0, must-revalidate",
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole object.", **_OBJECT},
    206: {"description": "The requested range.", **_OBJECT},
    304: {"description": "Not Modified (If-None-Match)."},
    **error_responses(400, 401, 403, 404, 413, 416, 502, 504),
}


@router.get(_ROUTE, tags=["files"], response_class=Response, responses=_RESPONSES, operation_id="read_file")
@router.head(_ROUTE, tags=["files"], response_class=Response, responses=_RESPONSES, operation_id="head_file")
async def read_file(path: str, request: Request) -> Response:
    """Read an object through the cache. Supports a single ``Range``, ``If-None-Match`` and ``If-Range``.

    If the object is overwritten at the origin before the first byte goes out, the request is answered
    again from the new version; once bytes are sent, a change aborts the response rather than mixing.

    A mount with ``public = false`` needs a token with the ``read`` scope covering the path.
    """
    public = read_allowed(request.app.state.settings, path)
    if not public:
        authorize(request, "read", ["/" + path])
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return await respond_object("/" + path, request, {"Cache-Control": _CACHE_CONTROL[public]}, media_type)


async def respond_object(
    path: str, request: Request, extra_headers: dict[str, str], media_type: str
) -> Response:
    """Answer a GET or HEAD of the object at virtual ``path`` through the cache (Range, ETag, 304);
    an overwrite seen before the first byte goes out is answered from the new version."""
    try:
        return await _respond(path, request, extra_headers, media_type)
    except VersionChanged:
        return await _respond(path, request, extra_headers, media_type)


async def _respond(path: str, request: Request, extra_headers: dict[str, str], media_type: str) -> Response:
    engine: CacheEngine = request.app.state.engine
    handle = await engine.open(path)
    info = handle.info
    headers = {
        "ETag": info.etag,
        "Last-Modified": formatdate(info.mtime, usegmt=True),
        "Accept-Ranges": "bytes",
        **extra_headers,
    }
    if etag_matches(request.headers.get("if-none-match"), info.etag):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != info.etag:
        range_header = None
    try:
        byte_range = parse_range(range_header, info.size)
    except Unsatisfiable:
        response = error_response(416, "RangeNotSatisfiable", f"object has {info.size} bytes")
        response.headers["Content-Range"] = f"bytes */{info.size}"
        return response
    status = 200
    start, end = 0, info.size
    if byte_range is not None:
        status, (start, end) = 206, byte_range
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    if end - start > engine.settings.server.max_request_bytes:
        return error_response(413, "TooLarge", "ask for a smaller Range")
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD" or start == end:
        return Response(status_code=status, headers=headers, media_type=media_type)
    body = await _start_stream(handle, start, end)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


async def _start_stream(handle: Handle, start: int, end: int) -> AsyncIterator[bytes]:
    """Fetch the first chunk before the status line goes out, so origin errors become proper statuses."""
    stream = handle.iter_range(start, end)
    first = await anext(stream, b"")

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in stream:
            yield chunk

    return body()
