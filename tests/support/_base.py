"""Shared plumbing for the local test servers: request log, fault injection and lifecycle."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import unquote

CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class RequestRecord:
    """One request as seen by a test server.

    A record is published just before the server's last write for the response (so it is already in the
    log when the client has seen the whole response) and amended if that write then fails.
    ``bytes_sent`` counts body bytes only (headers excluded). ``fault`` names the injected fault
    applied to the response, if any: ``"fail"``, ``"reset"``, ``"short"`` or ``"stall"``. ``time`` is the
    wall-clock arrival time, ``duration`` the seconds until the record was (last) published.
    """

    method: str
    path: str
    key: str
    query: str
    range: str | None
    status: int
    bytes_sent: int
    time: float
    duration: float
    fault: str | None = None


class RequestLog:
    """Thread-safe list of :class:`RequestRecord`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        """Append one record."""
        with self._lock:
            self._records.append(record)

    def replace(self, old: RequestRecord, new: RequestRecord) -> None:
        """Swap ``old`` (compared by identity) for ``new``; append ``new`` if ``old`` is gone."""
        with self._lock:
            for i in range(len(self._records) - 1, -1, -1):
                if self._records[i] is old:
                    self._records[i] = new
                    return
            self._records.append(new)

    def select(self, method: str | None = None, key: str | None = None) -> list[RequestRecord]:
        """Records matching ``method`` (case-insensitive) and exact ``key``, oldest first."""
        with self._lock:
            records = list(self._records)
        if method is not None:
            records = [r for r in records if r.method == method.upper()]
        if key is not None:
            records = [r for r in records if r.key == key]
        return records

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()


class RequestRecorder:
    """Publishes the record of one request; :meth:`commit` may be called again to amend it."""

    def __init__(self, log: RequestLog, method: str, path: str, key: str, query: str, range_: str | None):
        self._log = log
        self.key = key
        self._fields = (method, path, key, query, range_)
        self._time = time.time()
        self._t0 = time.monotonic()
        self._record: RequestRecord | None = None

    def commit(self, status: int, bytes_sent: int, fault: str | None = None) -> None:
        """Publish (or amend) the record with these outcome values."""
        old = self._record
        if old is not None and (old.status, old.bytes_sent, old.fault) == (status, bytes_sent, fault):
            return
        new = RequestRecord(*self._fields, status, bytes_sent, self._time, time.monotonic() - self._t0, fault)
        self._record = new
        if old is None:
            self._log.add(new)
        else:
            self._log.replace(old, new)


@dataclass(frozen=True)
class BodyFault:
    """A fault applied while sending one response body."""

    kind: str  # "reset" | "short" | "stall"
    nbytes: int | None
    seconds: float = 0.0


class FaultInjector:
    """Thread-safe store of armed faults; each armed fault is consumed by exactly one request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: deque[int] = deque()
        self._body_faults: deque[BodyFault] = deque()
        self._delay = 0.0

    @property
    def delay(self) -> float:
        """Seconds to sleep before sending response headers."""
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            self._delay = float(seconds)

    def fail_next(self, n: int, status: int = 503) -> None:
        """Arm ``n`` failure responses with ``status``."""
        with self._lock:
            self._failures.extend([status] * n)

    def add_body_fault(self, fault: BodyFault, count: int = 1) -> None:
        """Arm ``count`` copies of a body fault."""
        if fault.nbytes is not None and fault.nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        with self._lock:
            self._body_faults.extend([fault] * count)

    def take_failure(self) -> int | None:
        """Consume the next armed failure status, if any."""
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def take_body_fault(self) -> BodyFault | None:
        """Consume the next armed body fault, if any (faults are used in the order they were armed)."""
        with self._lock:
            return self._body_faults.popleft() if self._body_faults else None

    def pending(self) -> tuple[int, int]:
        """Number of armed (failures, body faults) not consumed yet."""
        with self._lock:
            return len(self._failures), len(self._body_faults)

    def clear(self) -> None:
        """Disarm every fault and reset the delay to zero."""
        with self._lock:
            self._failures.clear()
            self._body_faults.clear()
            self._delay = 0.0


def declared_length(total: int, fault: BodyFault | None) -> int:
    """Content-Length to announce for a body of ``total`` bytes under ``fault``."""
    if fault is not None and fault.kind == "short" and total == 0:
        return 1
    return total


def _fault_limit(fault: BodyFault | None, declared: int) -> int | None:
    """Body bytes to send before the fault triggers."""
    if fault is None:
        return None
    if fault.kind == "short":
        wanted = declared // 2 if fault.nbytes is None else fault.nbytes
        return max(0, min(wanted, declared - 1))
    return fault.nbytes or 0


def _wait_send_queue_drained(sock: socket.socket, timeout: float) -> None:
    """Best effort (Linux): wait until the kernel has delivered what we wrote, so a RST does not drop it."""
    try:
        import fcntl
        import termios
    except ImportError:  # pragma: no cover - non-POSIX
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
        except OSError:
            return
        if struct.unpack("i", buf)[0] == 0:
            return
        time.sleep(0.002)


def abort_connection(handler: BaseHTTPRequestHandler) -> None:
    """Close the client socket abruptly: SO_LINGER=0 makes the kernel send a TCP RST instead of a FIN."""
    sock = handler.connection
    handler.close_connection = True
    _wait_send_queue_drained(sock, 0.5)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # rfile holds a reference on the socket; without closing it, sock.close() would not close the fd.
    with contextlib.suppress(OSError):
        handler.rfile.close()
    with contextlib.suppress(OSError):
        sock.close()


def close_cleanly(handler: BaseHTTPRequestHandler) -> None:
    """End the connection with a FIN after the current (possibly truncated) response."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_WR)


def write_body(
    handler: BaseHTTPRequestHandler,
    chunks: Iterable[bytes],
    declared: int,
    fault: BodyFault | None,
    before_last: Callable[[int], None],
) -> tuple[int, bool]:
    """Finish the headers (``end_headers``) and send ``chunks`` as the response body, applying ``fault``.

    ``before_last(n)`` is called just before the write (or the close) that lets the client see the end
    of the response, with the body bytes it will have received by then.
    Returns ``(body bytes sent, complete)``; ``complete`` is False when the body was cut short (by a
    fault or because the client went away), in which case the connection is no longer reusable.
    """
    limit = _fault_limit(fault, declared)
    sent = 0
    stalled = False
    announced = declared == 0
    try:
        if announced:
            before_last(0)
        handler.end_headers()
        for chunk in chunks:
            if fault is not None and limit is not None and not stalled and sent + len(chunk) >= limit:
                head, chunk = chunk[: limit - sent], chunk[limit - sent :]
                if head:
                    handler.wfile.write(head)
                    sent += len(head)
                if fault.kind != "stall":
                    before_last(sent)
                    if fault.kind == "reset":
                        abort_connection(handler)
                    else:
                        close_cleanly(handler)
                    return sent, False
                stalled = True
                time.sleep(fault.seconds)
            if chunk:
                if sent + len(chunk) >= declared:
                    before_last(sent + len(chunk))
                    announced = True
                handler.wfile.write(chunk)
                sent += len(chunk)
    except OSError:
        handler.close_connection = True
        return sent, False
    if fault is not None and not stalled:
        # The body ended before the fault's byte offset was reached.
        if fault.kind == "stall":
            time.sleep(fault.seconds)
        else:
            before_last(sent)
            if fault.kind == "reset":
                abort_connection(handler)
            else:
                close_cleanly(handler)
            return sent, False
    if not announced:
        before_last(sent)
    return sent, sent == declared


class BaseTestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: quiet, TCP_NODELAY, registered with its server for ``stop()``."""

    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections are dropped after this many seconds
    server: _ThreadingServer

    @property
    def owner(self) -> BackgroundHTTPServer:
        """The :class:`BackgroundHTTPServer` this handler serves for."""
        return self.server.owner

    def setup(self) -> None:
        """Set up the socket and register the connection."""
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._track(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        self.owner._untrack(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Do not log requests (the servers keep their own request log)."""

    def start_record(self) -> RequestRecorder:
        """Begin the log record of the current request (method, path, decoded key, query, Range)."""
        path, _, query = self.path.partition("?")
        key = unquote(path).removeprefix("/")
        self.recorder = RequestRecorder(
            self.owner.log, self.command, path, key, query, self.headers.get("Range")
        )
        return self.recorder

    def send_text(
        self, status: int, text: str, headers: dict[str, str] | None = None, fault: str | None = None
    ) -> int:
        """Send a complete small text response (no body for HEAD) and log it; returns body bytes sent."""
        body = b"" if self.command == "HEAD" else text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text.encode())))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.recorder.commit(status, len(body), fault)  # before any write: the client cannot be ahead
        self.end_headers()
        if body:
            self.wfile.write(body)
        return len(body)

    def discard_request_body(self) -> None:
        """Read and drop a Content-Length request body so the connection can be reused."""
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        elif length:
            self.rfile.read(length)


class _ThreadingServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a big listen backlog, daemon threads and quiet disconnect handling."""

    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: BackgroundHTTPServer
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Ignore client disconnects; print anything else to stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class BackgroundHTTPServer:
    """Base for a threaded HTTP server on 127.0.0.1 served from a background thread.

    Subclasses set ``handler_class``. Provides start/stop, a context manager, the request log helpers
    and the fault-injection API.
    """

    handler_class: type[BaseHTTPRequestHandler]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._httpd: _ThreadingServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.log = RequestLog()
        self.faults = FaultInjector()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (port 0 means an ephemeral port) and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._httpd = _ThreadingServer(self._address, self.handler_class, self)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listening socket and cut every open client connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """Bound host."""
        return self._address[0]

    @property
    def port(self) -> int:
        """Bound port (known once started; kept after ``stop()``)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, with a trailing slash."""
        return f"http://{self.host}:{self.port}/"

    def _track(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.discard(conn)

    # -- request log ------------------------------------------------------------------------------

    def requests(self, method: str | None = None, key: str | None = None) -> list[RequestRecord]:
        """Logged requests, oldest first, optionally filtered by method and exact key.

        A request is logged just before the client can see the end of its response, so right after a
        client got a response its record is already here.
        """
        return self.log.select(method=method, key=key)

    def bytes_sent(self, key: str | None = None) -> int:
        """Total response body bytes sent (all methods), optionally for one key."""
        return sum(r.bytes_sent for r in self.log.select(key=key))

    def reset_log(self) -> None:
        """Forget the request log."""
        self.log.clear()

    # -- fault injection ----------------------------------------------------------------------------

    @property
    def delay(self) -> float:
        """Seconds slept before sending the headers of each affected response (0 disables)."""
        return self.faults.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` affected requests with ``status`` and a short text body.

        Calls add up: failures are queued and consumed in order, before any other fault.
        """
        self.faults.fail_next(n, status)

    def stall_after(self, nbytes: int, seconds: float) -> None:
        """For the next GET with a body: send headers and ``nbytes`` of body, sleep ``seconds``, then send
        the rest normally (a slow/stalled download). If the body is shorter, the sleep comes after it."""
        self.faults.add_body_fault(BodyFault("stall", nbytes, seconds))

    def reset_after(self, nbytes: int, count: int = 1) -> None:
        """For the next ``count`` GETs with a body: send headers and ``nbytes`` of body, then reset the TCP
        connection (SO_LINGER=0 + close, so the peer gets an RST). The client reads at most ``nbytes`` of
        body, then gets a connection-reset error (or an incomplete-body error)."""
        self.faults.add_body_fault(BodyFault("reset", nbytes), count)

    def short_body(self, count: int = 1, nbytes: int | None = None) -> None:
        """For the next ``count`` GETs with a body: announce the full Content-Length but send only
        ``nbytes`` (default: half the body; never all of it), then close the connection cleanly (FIN).
        The client sees an incomplete body / premature EOF, not a reset."""
        self.faults.add_body_fault(BodyFault("short", nbytes), count)

    def clear_faults(self) -> None:
        """Disarm every pending fault and set ``delay`` back to 0."""
        self.faults.clear()
