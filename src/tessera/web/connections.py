"""Connection hygiene that uvicorn lacks: a deadline for sending a request, one for taking the
response, a size cap for request headers, and a cap on open connections that closes idle ones first.

uvicorn's only guard, ``limit_concurrency``, counts every open socket, idle ones included, and answers
503 once the count is reached; and nothing closes a connection that never completes a request (uvicorn
times out keep-alive connections between requests, but not before the first one nor while headers
trickle in byte by byte, "slowloris", nor while a declared body never comes). So ~1,000 silent
sockets shut every other client out for as long as they were held. uvicorn has no option for either,
hence this subclass of its httptools protocol: it hooks only the connection events and the parser
callbacks, and the request cycle stays uvicorn's. Requests in progress are limited in the application
instead (``web.limits``), where ``/healthz`` can be let through.

The deadline (``server.header_timeout``) runs from the connection's opening, or from the first byte
of a later request on a kept-alive connection, until the request's headers are complete. A body then
gets the same time between two of its pieces, as nginx's ``client_body_timeout`` (an upload of many
GB takes as long as it needs while it moves); the time does not run while the server itself has
paused reading it (uvicorn's flow control, when the application is not taking the body that fast). Likewise a
client that stops reading a response holds its request slot only for ``server.send_timeout``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: Idle connections closed at once when a new one finds the server at ``max_connections`` (as nginx
#: drains its reusable connections), so the next arrivals do not each scan every connection.
DRAIN_BATCH = 32
#: Descriptors kept free of client connections (cache files, origin sockets, the index, logs): this
#: many, or a quarter of a lower open-file limit.
RESERVED_FDS = 1024
#: Largest request head (request line and headers), as nginx's default ``large_client_header_buffers``
#: allows about 32 KiB: longer ones get 431.
MAX_HEADER_BYTES = 64 * 1024
#: Seconds between two warnings that connections are being closed or refused.
WARN_EVERY = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """``server.header_timeout``, ``max_connections`` (as capped) and ``send_timeout``; the head cap."""

    header_timeout: float
    max_connections: int
    send_timeout: float
    max_header_bytes: int = MAX_HEADER_BYTES


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a connection cap."""

    limits: ClassVar[ConnectionLimits]
    _last_warning: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._send_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._idle_since = time.monotonic()

    # ---------------------------------------------------------------- connection events

    def connection_made(  # type: ignore[override]  # narrowed as uvicorn's own HttpToolsProtocol does
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self._warn("%d connections open, all busy: refusing new ones", len(self.connections))
            transport.close()
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self._disarm_send_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client takes no more bytes for now; if that lasts ``send_timeout``, the connection goes."""
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.limits.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        self._disarm_send_deadline()
        super().resume_writing()

    def on_response_complete(self) -> None:
        self._idle_since = time.monotonic()
        super().on_response_complete()

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_deadline is None:  # a later request on a kept-alive connection
            self._arm_head_deadline()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if self._head_deadline is not None:  # the body moves: its next piece gets the time afresh
            self._head_deadline.cancel()
            self._arm_head_deadline()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_bytes > self.limits.max_header_bytes:
            reason = f"request headers larger than {self.limits.max_header_bytes} bytes"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(reason), reason.encode())
            )
            self.transport.close()
            return
        super().send_400_response(msg)

    # ---------------------------------------------------------------- helpers

    def _count_head(self, nbytes: int) -> None:
        """Raising here makes the parser fail the request; ``send_400_response`` then answers 431."""
        self._head_bytes += nbytes
        if self._head_bytes > self.limits.max_header_bytes:
            raise ValueError("request headers too large")

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.flow is not None and self.flow.read_paused:  # waiting for the server, not the client
            self._arm_head_deadline()
            return
        if not self.transport.is_closing():
            self.transport.close()

    def _disarm_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_timed_out(self) -> None:
        """Abort, not close: a close would wait for the unsent bytes the client never takes."""
        self._send_deadline = None
        self.transport.abort()

    def _is_idle(self) -> bool:
        """No request of this connection is being answered (it waits for one, or for its headers)."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _make_room(self) -> bool:
        """Close the connections idle longest so that this one fits; False if too few are idle.

        Closing takes effect on the next loop iteration, so connections already closing are not counted.
        """
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        excess = len(others) + 1 - self.limits.max_connections
        if excess <= 0:
            return True
        idle = (c for c in others if isinstance(c, GuardedProtocol) and c._is_idle())
        oldest = heapq.nsmallest(max(excess, DRAIN_BATCH), idle, key=lambda c: c._idle_since)
        for connection in oldest:
            connection.transport.close()
        self._warn("%d connections open: closed the %d idle longest", len(others) + 1, len(oldest))
        return len(oldest) >= excess

    @classmethod
    def _warn(cls, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - cls._last_warning >= WARN_EVERY:
            cls._last_warning = now
            log.warning(message, *args)


def protocol_class(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """The protocol class to pass to uvicorn as ``http=``, bound to ``limits``."""
    return type("BoundGuardedProtocol", (GuardedProtocol,), {"limits": limits})


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the new soft limit.

    Idle sockets must not be able to exhaust descriptors before ``max_connections`` closes them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # not on Linux, where nr_open bounds the hard limit
        return soft
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft
    return hard


def connection_cap(max_connections: int, open_file_limit: int) -> int:
    """``max_connections``, lowered if needed so client sockets leave descriptors for everything else."""
    room = open_file_limit - min(RESERVED_FDS, open_file_limit // 4)
    if max_connections > room:
        log.warning(
            "server.max_connections %d lowered to %d: the open-file limit is %d",
            max_connections,
            room,
            open_file_limit,
        )
    return min(max_connections, room)
