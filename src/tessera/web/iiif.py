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

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tessera.errors import InvalidPath, ObjectNotFound, TesseraError, UnknownMount
from tessera.images.info_json import CONTEXT, PROFILE_URI, info_json
from tessera.images.request import ImageRequest, parse_image_request, parse_path
from tessera.lru import LRU
from tessera.web.auth import denial_for, read_allowed
from tessera.web.base_url import request_base
from tessera.web.errors import public_detail
from tessera.web.ranges import etag_matches

if TYPE_CHECKING:  # the service (libvips and the other image libraries) is loaded on first use
    from tessera.images.service import ImageService, Rendered

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


#: Longest raw path answered under /iiif/ and /thumbs/ (414 beyond): an identifier of the longest
#: virtual path (1,024 bytes) with every byte percent-encoded, plus the longest parameters, fits.
MAX_PATH_CHARS = 4096
#: Memory for the parsed paths kept (only of requests that were answered: the identifier named an image).
PARSED_MEMO_BYTES = 16 * 1024 * 1024
#: Memory for the URL-encoded canonical requests and the HTTP dates kept.
SMALL_MEMO_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ParsedPath:
    """A raw IIIF path taken apart: version, identifier (decoded and URL-encoded), what it asks for."""

    version: str
    identifier: str
    quoted_id: str
    #: "info.json", "" for the base URI, or None for an image request.
    document: str | None
    image_request: ImageRequest | None


def parse_iiif_path(raw_path: str) -> ParsedPath:
    """Take a raw ``/iiif/{version}/…`` path apart; raises ``IIIFError`` (or ``UnknownVersion``) if bad."""
    version, _, raw_rest = raw_path.removeprefix("/iiif/").partition("/")
    if version not in ("2", "3"):
        raise UnknownVersion("IIIF Image API versions here: /iiif/3/ and /iiif/2/")
    identifier, tail = parse_path(version, raw_rest)
    quoted_id = quote(identifier, safe="")
    if tail is None or tail == "info.json":
        return ParsedPath(version, identifier, quoted_id, tail or "", None)
    return ParsedPath(version, identifier, quoted_id, None, parse_image_request(version, identifier, *tail))


class IiifRoutes:
    """ASGI layer answering ``/iiif/`` and ``/thumbs/`` itself and passing every other request on.

    Parsed paths are kept (a viewer asks the same tiles again), but only once the request was
    answered, so paths naming no image (unknown mounts, missing objects, bad syntax) never fill the
    memo; every memo here is bounded in bytes (``LRU``).
    """

    def __init__(self, app: Any) -> None:
        self.app = app  # the FastAPI application; its state holds the image service once started
        self._parsed: LRU[str, ParsedPath] = LRU(PARSED_MEMO_BYTES)
        self._quoted: LRU[str, str] = LRU(SMALL_MEMO_BYTES)
        self._dates: LRU[float, str] = LRU(SMALL_MEMO_BYTES)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/iiif/"):
            handler = self._iiif
        elif path.startswith("/thumbs/"):
            handler = self._thumbs
        else:
            await self.app(scope, receive, send)
            return
        request = _Request(scope, self.app.state.settings.server.public_url)
        if len(request.raw_path) > MAX_PATH_CHARS:
            reply = _error(414, f"the request path is longer than {MAX_PATH_CHARS} characters")
        elif request.method not in ("GET", "HEAD"):
            reply = _error(405, "IIIF resources are read with GET or HEAD")
            reply.headers["Allow"] = "GET, HEAD"
        else:
            try:
                reply = await handler(request, self.app.state.images.get())
            except TesseraError as exc:
                detail = public_detail(exc, None)  # origin failures: no URLs or library dumps
                if detail != str(exc):
                    log.warning("%s %s: %s", request.method, path, exc)
                reply = _error(_status(exc), detail)
            except Exception:
                log.exception("unexpected error answering %s", path)
                reply = _error(500, "unexpected server error; see the server log")
        await _send(send, reply, request.method == "HEAD")

    async def _iiif(self, request: _Request, service: ImageService) -> Reply:
        parsed = self._parsed.get(request.raw_path)
        known = parsed is not None
        if parsed is None:
            parsed = parse_iiif_path(request.raw_path)
        version, identifier = parsed.version, parsed.identifier
        private = not read_allowed(self.app.state.settings, identifier)
        if private and (denied := self._denied(request, identifier)) is not None:
            return denied
        base = f"{request.base}/iiif/{version}/{parsed.quoted_id}"
        if parsed.document == "":
            return _redirect(f"{base}/info.json")
        if parsed.image_request is None:
            reply = await self._info(version, identifier, base, request, service)
        else:
            if_none_match = request.header(b"if-none-match")
            rendered = await service.image(
                parsed.image_request, lambda etag: etag_matches(if_none_match, etag)
            )
            headers = {
                "Link": f'<{base}/{self._quote(rendered.canonical)}>;rel="canonical", '
                f'<{PROFILE_URI[version]}>;rel="profile"',
                "Last-Modified": self._http_date(rendered.mtime),
            }
            reply = _image_reply(rendered, headers)
        if not known:  # answered: the identifier names an image, so the path is worth keeping
            self._parsed.put(request.raw_path, parsed)
        return _kept_private(reply) if private else reply

    async def _thumbs(self, request: _Request, service: ImageService) -> Reply:
        """Pre-generated thumbnails only: a IIIF 3.0 level-0 service listing its sizes."""
        identifier, tail = parse_path("3", request.raw_path.removeprefix("/thumbs/"))
        private = not read_allowed(self.app.state.settings, identifier)
        if private and (denied := self._denied(request, identifier)) is not None:
            return denied
        base = f"{request.base}/thumbs/{quote(identifier, safe='')}"
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
            reply = Reply(200, json.dumps(document).encode(), {"Content-Type": "application/json"})
            return _kept_private(reply) if private else reply
        region, size, rotation, quality_format = tail
        if (region, rotation, quality_format) != ("full", "0", "default.jpg"):
            return _error(400, "thumbnails are served as full/{size}/0/default.jpg only")
        wanted = _thumbnail_size(size, sizes)
        if wanted is None:
            return _error(404, f"no {size} thumbnail; the available sizes are listed in info.json")
        if_none_match = request.header(b"if-none-match")
        rendered = await service.thumbnail(identifier, wanted, lambda etag: etag_matches(if_none_match, etag))
        reply = _image_reply(rendered, {})
        return _kept_private(reply) if private else reply

    def _denied(self, request: _Request, identifier: str) -> Reply | None:
        """For an image of a non-public mount: the 401 or 403 unless the request's token may read it."""
        denial = denial_for(self.app.state, request.header(b"authorization"), "read", ["/" + identifier])
        if denial is None:
            return None
        reply = _error(denial.status, denial.detail)
        if denial.status == 401:
            reply.headers["WWW-Authenticate"] = "Bearer"
        return reply

    async def _info(
        self, version: str, identifier: str, base: str, request: _Request, service: ImageService
    ) -> Reply:
        handle, info = await service.source(identifier)
        limits = service.settings
        document = info_json(version, base, info, limits.max_width, limits.max_height, limits.max_area)
        wants_ld = "application/ld+json" in (request.header(b"accept") or "")
        media_type = f'application/ld+json;profile="{CONTEXT[version]}"' if wants_ld else "application/json"
        headers = {
            "Content-Type": media_type,
            "Link": f'<{PROFILE_URI[version]}>;rel="profile"',
            "Last-Modified": self._http_date(handle.info.mtime),
            "Cache-Control": CACHE_CONTROL,
        }
        return Reply(200, json.dumps(document).encode(), headers)

    def _quote(self, canonical: str) -> str:
        quoted = self._quoted.get(canonical)
        if quoted is None:
            quoted = quote(canonical, safe="/,!:")
            self._quoted.put(canonical, quoted)
        return quoted

    def _http_date(self, mtime: float) -> str:
        date = self._dates.get(mtime)
        if date is None:
            date = formatdate(mtime, usegmt=True)
            self._dates.put(mtime, date)
        return date


class _Request:
    """What the IIIF handlers read of an ASGI request."""

    __slots__ = ("base", "headers", "method", "raw_path")

    def __init__(self, scope: Scope, public_url: str | None) -> None:
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        self.raw_path: str = raw.decode("latin-1").split("?", 1)[0]
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.base = request_base(scope, public_url)

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


def _image_reply(rendered: Rendered, headers: dict[str, str]) -> Reply:
    headers["ETag"] = rendered.etag
    headers["Cache-Control"] = CACHE_CONTROL
    if rendered.data is None:
        return Reply(304, b"", headers)
    headers["Content-Type"] = rendered.media_type
    return Reply(200, rendered.data, headers)


def _kept_private(reply: Reply) -> Reply:
    """A non-public mount's answer may be kept by the browser that asked, never by a shared cache."""
    reply.headers["Cache-Control"] = "private, max-age=86400"
    return reply


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
