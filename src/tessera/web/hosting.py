"""Image hosting over HTTP: ``POST /api/v1/images`` (uploads), ``/i/{link}…`` (public views), and
``GET``/``DELETE /api/v1/images/{link}``.

Uploads need a token with the ``write`` scope, or none when ``[hosting] anonymous_uploads`` is on
(then limited per client address: 429 with ``Retry-After``). Refused uploads answer JSON
``{"error": reason}`` and store nothing. Views are public and immutable (a link never changes what it
shows; a deleted link answers 410 forever), so they carry ``Cache-Control: public, max-age=31536000,
immutable`` and strong ETags, and every byte is read through the tiered cache.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from tessera.cluster.rate_limit import UploadRate
from tessera.errors import ObjectNotFound, UploadTooLarge
from tessera.hosting.linkmap import ImageRow
from tessera.hosting.model import SUFFIXES, Rejected, effective_width
from tessera.hosting.service import HostingService, LinkGone, Uploaded, View
from tessera.web.auth import BearerCredentials, authorize, registry
from tessera.web.base_url import request_base
from tessera.web.files import respond_object
from tessera.web.limits import streams_body
from tessera.web.openapi import error_responses
from tessera.web.upload_body import read_upload

router = APIRouter()

IMMUTABLE = {
    "Cache-Control": "public, max-age=31536000, immutable",
    # Uploaded bytes are the public's: never let a browser take them for anything but their type.
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}
_IMAGE = {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}
_VIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The image.", **_IMAGE},
    304: {"description": "Not Modified (If-None-Match)."},
    410: {"description": "The link was deleted."},
    **error_responses(404, 502, 504),
}


def service_of(request: Request) -> HostingService:
    service: HostingService | None = request.app.state.hosting
    if service is None:
        mount = request.app.state.settings.hosting.mount
        raise HTTPException(404, f"hosting is off: [hosting] mount {mount!r} names no configured mount")
    return service


def _rejection(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _derivative_urls(base: str, row: ImageRow, widths: list[int]) -> list[str]:
    """The view URLs of the derivatives made so far. A URL names the configured width; the file made
    for it is never wider than the image (``1024.jpg`` of a 900 px image is stored as ``900.jpg``)."""
    made = set(row.derivatives)
    return [
        f"{base}/i/{row.link}/{width}.{suffix}"
        for width in widths
        for suffix in SUFFIXES
        if f"{effective_width(width, row.width)}.{suffix}" in made
    ]


def _answer(request: Request, row: ImageRow, delete_token: str | None = None) -> dict[str, Any]:
    settings = request.app.state.settings
    base = request_base(request.scope, settings.server.public_url)
    body: dict[str, Any] = {
        "link": row.link,
        "url": f"{base}/i/{row.link}",
        "status_url": f"{base}/api/v1/images/{row.link}",
        "width": row.width,
        "height": row.height,
        "type": row.type,
        "bytes": row.bytes,
        "sha256": row.sha256,
        "status": row.status,
        "derivatives": _derivative_urls(base, row, settings.hosting.widths),
        "created": row.created,
    }
    if delete_token is not None:
        body["delete_token"] = delete_token
    return body


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart field `file`, or the raw bytes as the body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/api/v1/images",
    tags=["hosting"],
    status_code=201,
    operation_id="upload_image",
    responses={
        200: {"description": "The same image was uploaded by this owner before: its link."},
        **error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
    },
    openapi_extra=_UPLOAD_BODY,
)
@streams_body
async def upload_image(request: Request, _credentials: BearerCredentials) -> Response:
    """Upload an image: its type is sniffed from the bytes, its header checked against the limits
    before anything is decoded, then it is decoded once with truncation checks. Answers 201 with its
    link, view URL, status URL and a delete token (shown only here); refused uploads store nothing."""
    service = service_of(request)
    settings, metrics = service.settings, service.metrics
    grant = registry(request.app.state).identify(request.headers.get("authorization"))
    owner: str | None = None
    if grant is not None or not settings.anonymous_uploads:
        authorize(request, "write", [f"/{settings.mount}"])
        owner = grant.name if grant is not None else None
    else:
        limit: UploadRate = request.app.state.upload_rate
        client = request.client.host if request.client is not None else "unknown"
        wait = await limit.take(client)
        if wait > 0:
            metrics.hosting_uploads.labels("429").inc()
            seconds = math.ceil(wait)
            reason = f"too many uploads from {client}: try again in {seconds} s"
            return _rejection(429, reason, {"Retry-After": str(seconds)})
    if not service.uploads.acquire_nowait():
        metrics.hosting_uploads.labels("503").inc()
        reason = f"{service.uploads.limit} uploads are in progress: try again in a second"
        return _rejection(503, reason, {"Retry-After": "1"})
    try:
        data = await read_upload(request, settings.max_upload_size)
        uploaded: Uploaded = await service.upload(data, owner)
    except Rejected as refused:
        metrics.hosting_uploads.labels(str(refused.status)).inc()
        return _rejection(refused.status, refused.reason)
    except UploadTooLarge as refused:
        metrics.hosting_uploads.labels("413").inc()
        return _rejection(413, str(refused))
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is left to read it; nothing was stored
    finally:
        service.uploads.release()
    metrics.hosting_uploads.labels("stored" if uploaded.created else "duplicate").inc()
    body = _answer(request, uploaded.row, uploaded.delete_token)
    status = 201 if uploaded.created else 200
    return JSONResponse(body, status_code=status, headers={"Location": body["url"]})


@router.get(
    "/api/v1/images",
    tags=["hosting"],
    operation_id="list_images",
    responses=error_responses(400, 401, 403, 404),
)
async def list_images(
    request: Request,
    _credentials: BearerCredentials,
    mine: Annotated[str | None, Query(description="List the caller's own uploads (required).")] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """The uploads of the token's owner, newest first: ``{"items": [...], "next": cursor-or-null}``."""
    service = service_of(request)
    if mine is None:
        raise HTTPException(400, "only your own uploads can be listed: add ?mine")
    authorize(request, "write", [f"/{service.settings.mount}"])
    grant = registry(request.app.state).identify(request.headers.get("authorization"))
    assert grant is not None  # authorize let it through
    rows, after = await service.owned(grant.name, cursor, limit)
    return JSONResponse({"items": [_answer(request, row) for row in rows], "next": after})


async def _row_or_gone(service: HostingService, link: str) -> ImageRow:
    row = await service.row(link)
    if row is None:
        raise HTTPException(404, f"no image {link}")
    if row.status == "deleted":
        raise HTTPException(410, f"image {link} was deleted")
    return row


@router.get(
    "/api/v1/images/{link}",
    tags=["hosting"],
    operation_id="get_image",
    responses=error_responses(404, 410),
)
async def get_image(link: str, request: Request) -> JSONResponse:
    """An upload's facts: size, type, status (processing, ready, failed) and its derivatives."""
    row = await _row_or_gone(service_of(request), link)
    return JSONResponse(_answer(request, row))


@router.delete(
    "/api/v1/images/{link}",
    tags=["hosting"],
    status_code=204,
    operation_id="delete_image",
    responses={204: {"description": "Deleted."}, **error_responses(401, 403, 404, 410)},
)
async def delete_image(
    link: str,
    request: Request,
    _credentials: BearerCredentials,
    x_delete_token: Annotated[str | None, Header(description="The upload's delete token.")] = None,
) -> Response:
    """Delete an image with its owner's token or its delete token (header ``X-Delete-Token``): the
    original and derivatives are removed and purged from the cache, and the link answers 410 forever
    (links are never reused)."""
    service = service_of(request)
    row = await _row_or_gone(service, link)
    grant = registry(request.app.state).identify(request.headers.get("authorization"))
    owner = grant.name if grant is not None else None
    if not service.may_delete(row, owner, x_delete_token):
        if x_delete_token is None and grant is None:
            raise HTTPException(401, "send the delete token (X-Delete-Token) or the owner's bearer token")
        raise HTTPException(403, "neither the owner's token nor this image's delete token")
    await service.delete(row)
    return Response(status_code=204)


# ---------------------------------------------------------------------- views


async def _view(request: Request, view: View, vary: bool = False) -> Response:
    headers = {**IMMUTABLE, "Vary": "Accept"} if vary else dict(IMMUTABLE)
    return await respond_object(view.path, request, headers, view.media_type)


async def _serve(request: Request, kind: str, make: Awaitable[View], *, vary: bool = False) -> Response:
    views = service_of(request).metrics.hosting_views
    try:
        view = await make
    except LinkGone as gone:
        views.labels("410").inc()
        return _rejection(410, str(gone))
    except ObjectNotFound:
        views.labels("404").inc()
        raise
    views.labels(kind).inc()
    return await _view(request, view, vary)


@router.get("/i/{link}", tags=["hosting"], response_class=Response, responses=_VIEW_RESPONSES)
@router.head("/i/{link}", tags=["hosting"], response_class=Response, responses=_VIEW_RESPONSES)
async def view_image(link: str, request: Request) -> Response:
    """The image at the default width, in the best format the client accepts (AVIF, WebP, JPEG)."""
    service = service_of(request)
    fmt = service.default_format(request.headers.get("accept", ""))
    return await _serve(
        request, "default", service.derivative(link, service.settings.served_width, fmt), vary=True
    )


@router.get("/i/{link}/original", tags=["hosting"], response_class=Response, responses=_VIEW_RESPONSES)
@router.head("/i/{link}/original", tags=["hosting"], response_class=Response, responses=_VIEW_RESPONSES)
async def view_original(link: str, request: Request) -> Response:
    """The image as uploaded."""
    return await _serve(request, "original", service_of(request).original(link))


@router.get("/i/{link}/{name}", tags=["hosting"], response_class=Response, responses=_VIEW_RESPONSES)
@router.head("/i/{link}/{name}", tags=["hosting"], response_class=Response, responses=_VIEW_RESPONSES)
async def view_derivative(link: str, name: str, request: Request) -> Response:
    """One derivative, ``{width}.{jpg|webp|avif}``: only the configured widths (others 404)."""
    service = service_of(request)
    width, _, suffix = name.partition(".")
    fmt = SUFFIXES.get(suffix)
    if fmt is None or not width.isdigit() or len(width) > 5:
        raise HTTPException(404, f"no derivative {name!r}: ask for {{width}}.jpg, .webp or .avif")
    return await _serve(request, "derivative", service.derivative(link, int(width), fmt))
