"""IIIF Image API 3.0 under ``/iiif/3/{id}/…``, 2.1 under ``/iiif/2/{id}/…``, thumbnails under ``/thumbs/``.

These paths are answered by a plain ASGI layer in front of the FastAPI application: a deep-zoom
viewer sends hundreds of tile requests a second, most of them answered from the cache in well under
a millisecond, and the framework's routing, dependency and middleware machinery would cost more than
the answer itself. Everything else goes on to the application.

``{id}`` is the URL-encoded virtual path (``images%2Fmaps%2Fchart.jp2``), so routing works on the raw,
still-encoded request path. Errors are plain text with the status the specs give (400 bad syntax,
404 unknown identifier, 501 unsupported), every response carries CORS, and image responses carry
the canonical and profile ``Link`` headers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from tessera.errors import InvalidPath, ObjectNotFound, TesseraError, UnknownMount
from tessera.images.info_json import CONTEXT, PROFILE_URI, info_json
from tessera.images.request import ImageRequest, parse_image_request, parse_path
from tessera.images.service import ImageService, Rendered
from tessera.web.ranges import etag_matches

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

CACHE_CONTROL = "public, max-age=86400"
_CORS = [(b"access-control-allow-origin", b"*")]


class Reply:
    """One response: status, headers (text) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


class UnknownVersion(TesseraError):
    status = 404


def _error(status: int, message: str) -> Reply:
    return Reply(status, f"{message}\n".encode(), {"Content-Type": "text/plain; charset=utf-8"})


def _status(exc: TesseraError) -> int:
    """An identifier that names no object, whatever the reason (no such mount, not a valid path), is 404."""
    if isinstance(exc, ObjectNotFound | UnknownMount | InvalidPath):
        return 404
    return exc.status


class IiifRoutes:
    """ASGI layer answering ``/iiif/`` and ``/thumbs/`` itself and passing every other request on."""

    def __init__(self, app: Any) -> None:
        self.app = app  # the FastAPI application; its state holds the image service once started

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/iiif/"):
            handler = _iiif
        elif path.startswith("/thumbs/"):
            handler = _thumbs
        else:
            await self.app(scope, receive, send)
            return
        request = _Request(scope)
        if request.method not in ("GET", "HEAD"):
            reply = _error(405, "IIIF resources are read with GET or HEAD")
            reply.headers["Allow"] = "GET, HEAD"
        else:
            try:
                reply = await handler(request, self.app.state.images)
            except TesseraError as exc:
                reply = _error(_status(exc), str(exc))
            except Exception:
                log.exception("unexpected error answering %s", path)
                reply = _error(500, "unexpected server error; see the server log")
        await _send(send, reply, request.method == "HEAD")


class _Request:
    """What the IIIF handlers read of an ASGI request."""

    __slots__ = ("base", "headers", "method", "raw_path")

    def __init__(self, scope: Scope) -> None:
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        self.raw_path: str = raw.decode("latin-1").split("?", 1)[0]
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        host = self.headers.get(b"host")
        if host is None:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}".encode()
        self.base = f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}{scope.get('root_path', '')}"

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None


async def _send(send: Any, reply: Reply, head_only: bool) -> None:
    headers = [(name.lower().encode(), value.encode("latin-1")) for name, value in reply.headers.items()]
    headers += _CORS
    if reply.status != 304:
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else reply.body})


def _redirect(location: str) -> Reply:
    return Reply(303, b"", {"Location": location})


@functools.lru_cache(maxsize=50_000)
def _parse(raw_path: str) -> tuple[str, str, str | None, ImageRequest | None]:
    """(version, identifier, "info.json" / "" for the base URI / None, image request) of a raw IIIF path.

    Pure, so kept: a viewer asks for the same tiles again. Bad paths raise (and are not kept).
    """
    version, _, raw_rest = raw_path.removeprefix("/iiif/").partition("/")
    if version not in ("2", "3"):
        raise UnknownVersion("IIIF Image API versions here: /iiif/3/ and /iiif/2/")
    identifier, tail = parse_path(version, raw_rest)
    if tail is None:
        return version, identifier, "", None
    if tail == "info.json":
        return version, identifier, "info.json", None
    return version, identifier, None, parse_image_request(version, identifier, *tail)


@functools.lru_cache(maxsize=10_000)
def _quoted_id(identifier: str) -> str:
    return quote(identifier, safe="")


@functools.lru_cache(maxsize=50_000)
def _quoted(canonical: str) -> str:
    return quote(canonical, safe="/,!:")


@functools.lru_cache(maxsize=10_000)
def _http_date(mtime: float) -> str:
    return formatdate(mtime, usegmt=True)


async def _iiif(request: _Request, service: ImageService) -> Reply:
    version, identifier, document, image_request = _parse(request.raw_path)
    base = f"{request.base}/iiif/{version}/{_quoted_id(identifier)}"
    if document == "":
        return _redirect(f"{base}/info.json")
    if document == "info.json" or image_request is None:
        return await _info(version, identifier, base, request, service)
    if_none_match = request.header(b"if-none-match")
    rendered = await service.image(image_request, lambda etag: etag_matches(if_none_match, etag))
    headers = {
        "Link": f'<{base}/{_quoted(rendered.canonical)}>;rel="canonical", '
        f'<{PROFILE_URI[version]}>;rel="profile"',
        "Last-Modified": _http_date(rendered.mtime),
    }
    return _image_reply(rendered, headers)


def _image_reply(rendered: Rendered, headers: dict[str, str]) -> Reply:
    headers["ETag"] = rendered.etag
    headers["Cache-Control"] = CACHE_CONTROL
    if rendered.data is None:
        return Reply(304, b"", headers)
    headers["Content-Type"] = rendered.media_type
    return Reply(200, rendered.data, headers)


async def _thumbs(request: _Request, service: ImageService) -> Reply:
    """Pre-generated thumbnails only: a IIIF 3.0 level-0 service listing its sizes."""
    identifier, tail = parse_path("3", request.raw_path.removeprefix("/thumbs/"))
    base = f"{request.base}/thumbs/{_quoted_id(identifier)}"
    if tail is None:
        return _redirect(f"{base}/info.json")
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
        return Reply(200, json.dumps(document).encode(), {"Content-Type": "application/json"})
    region, size, rotation, quality_format = tail
    if (region, rotation, quality_format) != ("full", "0", "default.jpg"):
        return _error(400, "thumbnails are served as full/{size}/0/default.jpg only")
    wanted = _thumbnail_size(size, sizes)
    if wanted is None:
        return _error(404, f"no {size} thumbnail; the available sizes are listed in info.json")
    if_none_match = request.header(b"if-none-match")
    rendered = await service.thumbnail(identifier, wanted, lambda etag: etag_matches(if_none_match, etag))
    return _image_reply(rendered, {})


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


async def _info(version: str, identifier: str, base: str, request: _Request, service: ImageService) -> Reply:
    handle, info = await service.source(identifier)
    limits = service.settings
    document = info_json(version, base, info, limits.max_width, limits.max_height, limits.max_area)
    wants_ld = "application/ld+json" in (request.header(b"accept") or "")
    media_type = f'application/ld+json;profile="{CONTEXT[version]}"' if wants_ld else "application/json"
    headers = {
        "Content-Type": media_type,
        "Link": f'<{PROFILE_URI[version]}>;rel="profile"',
        "Last-Modified": _http_date(handle.info.mtime),
        "Cache-Control": CACHE_CONTROL,
    }
    return Reply(200, json.dumps(document).encode(), headers)
