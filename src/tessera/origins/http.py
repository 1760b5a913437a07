"""Plain HTTP(S) origins through httpx: keys are appended to a base URL.

A version is the response's ``ETag``; a server that sends none (``python -m http.server``) gets a weak
tag made of the size and ``Last-Modified``. Ranged GETs carry ``If-Match`` for a strong tag, and the
validators of every response are compared with the version being read (weak tags cannot be sent,
and some servers ignore ``If-Match``). A server that ignores ``Range`` answers 200 with the whole body:
objects up to ``whole_limit`` bytes (``cache.small_object_size``, which the engine fetches whole in
one request anyway) are read whole and the asked range is cut from them; larger ones are refused with
a clear error, since every block would cost a download of the whole object.

Error messages name the mount, never the URL (they reach clients); URLs go to the log.
"""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx

from tessera.config import OriginSettings
from tessera.errors import (
    ObjectNotFound,
    OriginUnavailable,
    OriginUnsupported,
    ReadOnlyOrigin,
    VersionChanged,
)
from tessera.origins.base import ObjectInfo, RangeBody

log = logging.getLogger(__name__)

#: Default chunk size of a body stream; the engine asks for whole blocks.
STREAM_CHUNK = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class RangeNotSupported(OriginUnsupported):
    """The origin ignores ``Range`` and the object is too large to be fetched whole for each read."""


class HttpOrigin:
    """Objects at ``base_url + key``, read with ranged GETs over one pooled httpx client."""

    def __init__(self, name: str, base_url: str, settings: OriginSettings, whole_limit: int) -> None:
        self.name = name
        self.identity = base_url
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._whole_limit = whole_limit
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(
                max_connections=settings.max_concurrency,
                max_keepalive_connections=settings.max_concurrency,
                keepalive_expiry=60,
            ),
            follow_redirects=True,
            # Byte ranges are of the stored bytes: no transfer compression.
            headers={"Accept-Encoding": "identity"},
        )

    def _url(self, key: str) -> str:
        return self._base + quote(key, safe="/")

    async def stat(self, key: str) -> ObjectInfo:
        url = self._url(key)
        response = await self._client.head(url)
        if response.history and str(response.url) == url + "/":
            # A web server's redirect from ``name`` to ``name/`` (``python -m http.server``, nginx's
            # autoindex) says it is a directory, whose index page is no object of ours.
            raise ObjectNotFound(f"{key!r} is a directory at origin {self.name}, not an object")
        self._raise_for_status(key, response)
        length = response.headers.get("content-length")
        if length is None or not length.isdigit():
            raise self._failed(key, response, "sent no Content-Length")
        return _info(key, int(length), response.headers)

    async def read_range(
        self, key: str, start: int, end: int, if_match: str | None, chunk_size: int = STREAM_CHUNK
    ) -> RangeBody:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if if_match and not if_match.startswith("W/"):
            headers["If-Match"] = if_match
        request = self._client.build_request("GET", self._url(key), headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code in (412, 416):
                # 416: the object is now shorter than the version being read.
                raise VersionChanged(f"{key!r} changed at origin {self.name} while being read")
            self._raise_for_status(key, response)
            if response.status_code == 206:
                body = self._ranged(key, response, start, chunk_size)
            else:
                body = await self._whole(key, response, start, end, chunk_size)
            if if_match and body.info.etag != if_match:
                raise VersionChanged(f"{key!r} changed at origin {self.name} while being read")
        except BaseException:
            await response.aclose()
            raise
        return body

    def _ranged(self, key: str, response: httpx.Response, start: int, chunk_size: int) -> RangeBody:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if match is None or int(match[1]) != start:
            raise self._failed(key, response, "answered a different range than asked")
        first, last, size = (int(group) for group in match.groups())
        info = _info(key, size, response.headers)
        return RangeBody(info=info, start=first, end=last + 1, chunks=_stream(response, chunk_size))

    async def _whole(
        self, key: str, response: httpx.Response, start: int, end: int, chunk_size: int
    ) -> RangeBody:
        """A 200 to a ranged GET: the whole object. Cut the range from it if the object is small."""
        length = response.headers.get("content-length", "")
        size = int(length) if length.isdigit() else None
        if start == 0 and size == end:
            # What was asked is the whole object: a server may rightly answer that with a 200.
            info = _info(key, size, response.headers)
            return RangeBody(info=info, start=0, end=size, chunks=_stream(response, chunk_size))
        if size is not None and size > self._whole_limit:
            raise self._range_not_supported(key, response)
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) > self._whole_limit:
                raise self._range_not_supported(key, response)
        await response.aclose()
        info = _info(key, len(data), response.headers)
        end = min(end, len(data))
        part = bytes(data[start:end])
        return RangeBody(info=info, start=start, end=end, chunks=_pieces(part, chunk_size))

    def _raise_for_status(self, key: str, response: httpx.Response) -> None:
        if response.status_code in (404, 410):
            raise ObjectNotFound(f"no object {key!r} in origin {self.name}")
        if response.status_code >= 300:
            raise self._failed(key, response, f"answered {response.status_code}")

    def _failed(self, key: str, response: httpx.Response, what: str) -> OriginUnavailable:
        log.warning("origin %s %s for %s", self.name, what, response.request.url)
        return OriginUnavailable(f"origin {self.name} {what} for {key!r}")

    def _range_not_supported(self, key: str, response: httpx.Response) -> RangeNotSupported:
        log.warning(
            "origin %s ignores Range requests (%s): objects over %d bytes cannot be read from it",
            self.name,
            response.request.url,
            self._whole_limit,
        )
        return RangeNotSupported(
            f"origin {self.name} does not support ranged requests, and {key!r} is larger than "
            f"{self._whole_limit} bytes (cache.small_object_size), the most it fetches whole"
        )

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        raise self._no_listing(prefix)
        yield  # type: ignore[unreachable]  # an async generator like every other origin's ``list``

    async def list_dir(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        raise self._no_listing(prefix)

    def _no_listing(self, prefix: str) -> OriginUnavailable:
        return OriginUnavailable(f"origin {self.name} cannot list {prefix or '/'!r}: HTTP has no listing")

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, create_only: bool = False) -> ObjectInfo:
        raise ReadOnlyOrigin(f"mount {self.name} is read-only: its origin is plain HTTP")

    async def delete(self, key: str) -> None:
        raise ReadOnlyOrigin(f"mount {self.name} is read-only: its origin is plain HTTP")

    async def close(self) -> None:
        await self._client.aclose()


def _info(key: str, size: int, headers: httpx.Headers) -> ObjectInfo:
    modified = headers.get("last-modified")
    try:
        mtime = parsedate_to_datetime(modified).timestamp() if modified else 0.0
    except (TypeError, ValueError):
        mtime = 0.0
    # Without an ETag a version is told apart by its size and modification time (a weak tag).
    etag = headers.get("etag") or f'W/"{size}-{modified or ""}"'
    return ObjectInfo(key=key, size=size, etag=etag, mtime=mtime)


async def _stream(response: httpx.Response, chunk_size: int) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw(chunk_size):
            yield chunk
    finally:
        await response.aclose()


async def _pieces(data: bytes, chunk_size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), chunk_size):
        yield data[offset : offset + chunk_size]
