"""A bound on requests in progress, counted in the application rather than by uvicorn.

Idle and half-open connections are the protocol's business (``web.connections``); this counts only
requests being answered (streaming bodies included), so that they cannot pile up without bound, while
``/healthz`` keeps answering even when the server is at its limit.
"""

from __future__ import annotations

import json

from tessera.web.asgi import ASGIApp, Receive, Scope, Send

#: Paths answered whatever the load: a load balancer must be able to tell "busy" from "dead".
ALWAYS_ANSWERED = frozenset({"/healthz"})
RETRY_AFTER_SECONDS = 1

_BUSY_BODY = json.dumps(
    {"error": "ServiceUnavailable", "detail": "too many requests in progress; retry shortly"}
).encode()


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


async def _busy(send: Send) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_BUSY_BODY)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _BUSY_BODY})
