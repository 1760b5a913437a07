"""One log line per request, with the path exactly as the client sent it.

uvicorn's access log prints the percent-decoded path (re-quoted), so a IIIF identifier such as
``images%2Fa.tif`` is logged as ``images/a.tif`` and the logged URL no longer names the same resource.
This layer logs the raw request target instead; bytes outside printable ASCII are percent-encoded, so
a line can be neither forged (no control characters) nor mis-pasted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

from tessera.web.asgi import ASGIApp, Receive, Scope, Send

log = logging.getLogger("tessera.access")

_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]")


def request_target(scope: Scope) -> str:
    """The path and query of a request as sent, with unprintable bytes percent-encoded."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        raw += b"?" + scope["query_string"]
    return _UNPRINTABLE.sub(lambda m: b"%%%02X" % m[0][0], raw).decode("ascii")


class AccessLog:
    """ASGI middleware: logs ``client - "METHOD target HTTP/v" status`` once the response has started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def logged_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                client = scope.get("client")
                log.info(
                    '%s - "%s %s HTTP/%s" %d',
                    f"{client[0]}:{client[1]}" if client else "-",
                    scope["method"],
                    request_target(scope),
                    scope.get("http_version", "1.1"),
                    message["status"],
                )
            await send(message)

        await self.app(scope, receive, logged_send)
