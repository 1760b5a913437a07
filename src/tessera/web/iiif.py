"""IIIF Image API 3.0 under ``/iiif/3/{id}/…`` and 2.1 under ``/iiif/2/{id}/…``.

``{id}`` is the URL-encoded virtual path (``images%2Fmaps%2Fchart.jp2``), so routing works on the raw,
still-encoded request path. Errors are plain text with the status the specs give (400 bad syntax,
404 unknown identifier, 501 unsupported), every response carries CORS, and image responses carry
the canonical and profile ``Link`` headers.
"""

from __future__ import annotations

import json
from email.utils import formatdate
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from tessera.errors import InvalidPath, ObjectNotFound, TesseraError, UnknownMount
from tessera.images.info_json import CONTEXT, PROFILE_URI, info_json
from tessera.images.request import parse_image_request, parse_path
from tessera.images.service import ImageService
from tessera.web.ranges import etag_matches

router = APIRouter(tags=["iiif"])
CORS = {"Access-Control-Allow-Origin": "*"}
CACHE_CONTROL = "public, max-age=86400"


def _error(status: int, message: str) -> Response:
    return Response(f"{message}\n", status_code=status, media_type="text/plain", headers=CORS)


def _status(exc: TesseraError) -> int:
    """An identifier that names no object, whatever the reason (no such mount, not a valid path), is 404."""
    if isinstance(exc, ObjectNotFound | UnknownMount | InvalidPath):
        return 404
    return exc.status


@router.api_route("/iiif/{version}/{rest:path}", methods=["GET", "HEAD"])
async def iiif(version: str, rest: str, request: Request) -> Response:
    if version not in ("2", "3"):
        return _error(404, "IIIF Image API versions here: /iiif/3/ and /iiif/2/")
    raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    raw_rest = raw.split(f"/iiif/{version}/", 1)[1] if f"/iiif/{version}/" in raw else rest
    service: ImageService = request.app.state.images
    try:
        identifier, tail = parse_path(version, raw_rest)
        base = f"{str(request.base_url).rstrip('/')}/iiif/{version}/{quote(identifier, safe='')}"
        if tail is None:
            return RedirectResponse(f"{base}/info.json", status_code=303, headers=CORS)
        if tail == "info.json":
            return await _info(version, identifier, base, request, service)
        image_request = parse_image_request(version, identifier, *tail)
        rendered = await service.image(image_request)
    except TesseraError as exc:
        return _error(_status(exc), str(exc))
    headers = {
        **CORS,
        "Link": f'<{base}/{quote(rendered.canonical, safe="/,!:")}>;rel="canonical", '
        f'<{PROFILE_URI[version]}>;rel="profile"',
        "ETag": rendered.etag,
        "Last-Modified": formatdate(rendered.mtime, usegmt=True),
        "Cache-Control": CACHE_CONTROL,
    }
    if etag_matches(request.headers.get("if-none-match"), rendered.etag):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else rendered.data
    headers["Content-Length"] = str(len(rendered.data))
    return Response(body, media_type=rendered.media_type, headers=headers)


@router.api_route("/thumbs/{rest:path}", methods=["GET", "HEAD"])
async def thumbs(rest: str, request: Request) -> Response:
    """Pre-generated thumbnails only: a IIIF 3.0 level-0 service listing its sizes."""
    raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    raw_rest = raw.split("/thumbs/", 1)[1] if "/thumbs/" in raw else rest
    service: ImageService = request.app.state.images
    try:
        identifier, tail = parse_path("3", raw_rest)
        base = f"{str(request.base_url).rstrip('/')}/thumbs/{quote(identifier, safe='')}"
        if tail is None:
            return RedirectResponse(f"{base}/info.json", status_code=303, headers=CORS)
        _handle, info = await service.source(identifier)
        sizes = service.thumbnail_sizes(info)
        if tail == "info.json":
            document = {
                "@context": CONTEXT["3"],
                "id": base,
                "type": "ImageService3",
                "protocol": "http://iiif.io/api/image",
                "profile": "level0",
                "width": info.width,
                "height": info.height,
                "sizes": [{"width": w, "height": h} for w, h in sizes],
            }
            return Response(json.dumps(document), media_type="application/json", headers=CORS)
        region, size, rotation, quality_format = tail
        if (region, rotation, quality_format) != ("full", "0", "default.jpg"):
            return _error(400, "thumbnails are served as full/{size}/0/default.jpg only")
        wanted = _thumbnail_size(size, sizes)
        if wanted is None:
            return _error(404, f"no {size} thumbnail; the available sizes are listed in info.json")
        rendered = await service.thumbnail(identifier, wanted)
    except TesseraError as exc:
        return _error(_status(exc), str(exc))
    headers = {**CORS, "ETag": rendered.etag, "Cache-Control": CACHE_CONTROL}
    if etag_matches(request.headers.get("if-none-match"), rendered.etag):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else rendered.data
    headers["Content-Length"] = str(len(rendered.data))
    return Response(body, media_type=rendered.media_type, headers=headers)


def _thumbnail_size(size: str, sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Match "max", "w,h", "w," or ",h" against the pre-generated sizes."""
    if size == "max":
        return max(sizes)
    width, _, height = size.partition(",")
    if not (width or height):
        return None
    for candidate in sizes:
        if (not width or width == str(candidate[0])) and (not height or height == str(candidate[1])):
            return candidate
    return None


async def _info(
    version: str, identifier: str, base: str, request: Request, service: ImageService
) -> Response:
    handle, info = await service.source(identifier)
    limits = service.settings
    document = info_json(version, base, info, limits.max_width, limits.max_height, limits.max_area)
    wants_ld = "application/ld+json" in request.headers.get("accept", "")
    media_type = f'application/ld+json;profile="{CONTEXT[version]}"' if wants_ld else "application/json"
    headers = {
        **CORS,
        "Link": f'<{PROFILE_URI[version]}>;rel="profile"',
        "Last-Modified": formatdate(handle.info.mtime, usegmt=True),
        "Cache-Control": CACHE_CONTROL,
    }
    return Response(json.dumps(document), media_type=media_type, headers=headers)
