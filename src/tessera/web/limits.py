"""Bounds on what requests may take, counted in the application rather than by uvicorn: requests in
progress, and request body bytes.

Idle and half-open connections are the protocol's business (``web.connections``); ``RequestLimit``
counts only requests being answered (streaming responses included), so that they cannot pile up
without bound, while ``/healthz`` keeps answering even when the server is at its limit.
``BodyLimit`` caps request bodies, which FastAPI reads whole into memory before any check of the
route runs (the bearer token included). Routes that stream their body themselves (uploads) say so
with ``@streams_body`` and answer for its size under a limit of their own (``storage.max_upload_size``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from http import HTTPStatus
from typing import Any, TypeVar

from starlette.exceptions import HTTPException

from tessera.web.asgi import ASGIApp, Receive, Scope, Send

#: Paths answered whatever the load: a load balancer must be able to tell "busy" from "dead".
ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz"})
RETRY_AFTER_SECONDS = 1
#: Largest request body: every body the API takes is a small JSON document.
MAX_BODY_BYTES = 1024 * 1024
_BODILESS = frozenset({"GET", "HEAD"})
#: Set on the endpoint of a route that streams its body and bounds it itself.
_STREAMS_BODY = "tessera_streams_body"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def streams_body(endpoint: Endpoint) -> Endpoint:
    """Mark a route's endpoint as reading its body as a stream, under a size limit of its own:
    ``BodyLimit`` lets its requests through whatever their length."""
    setattr(endpoint, _STREAMS_BODY, True)
    return endpoint


class RequestLimit:
    """ASGI middleware: at most ``max_requests`` HTTP requests in progress; past it, 503 at once."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_requests:
            await _busy(send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is refused with 413, by its ``Content-Length`` before
    anything is read, or (a chunked body) as soon as the application has read past the limit.

    The check runs when the application first asks for the body, which is after routing: by then the
    scope names the endpoint, and one marked ``@streams_body`` gets its body unbounded here.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODILESS:
            await self.app(scope, receive, send)  # no route reads their bodies; uvicorn buffers 64 KiB
            return
        received = 0
        bounded: bool | None = None  # decided at the first read

        async def counted() -> MutableMapping[str, Any]:
            nonlocal received, bounded
            if bounded is None:
                bounded = not getattr(scope.get("endpoint"), _STREAMS_BODY, False)
                if bounded and self._announced_too_much(scope):
                    raise HTTPException(413, self._reason())  # FastAPI answers it like a route's own error
            message = await receive()
            received += len(message.get("body", b""))
            if bounded and received > self.max_bytes:
                raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counted, send)

    def _announced_too_much(self, scope: Scope) -> bool:
        length = dict(scope["headers"]).get(b"content-length", b"0").strip()
        return not length.isdigit() or len(length) > len(str(self.max_bytes)) or int(length) > self.max_bytes

    def _reason(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes"


async def _busy(send: Send) -> None:
    retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
    await _json_error(send, 503, "too many requests in progress; retry shortly", retry)


async def _json_error(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """The JSON error body the application's own handlers send (``web.errors``)."""
    error = HTTPStatus(status).phrase.replace(" ", "")
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
