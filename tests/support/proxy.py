"""Counting HTTP/1.1 reverse proxy with a request log and fault injection (e.g. in front of moto S3)."""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from ._base import (
    CHUNK_SIZE,
    BackgroundHTTPServer,
    BaseTestHandler,
    RequestRecord,
    declared_length,
    write_body,
)

__all__ = ["CountingProxy", "RequestRecord"]

# Hop-by-hop headers (RFC 9110 section 7.6.1) are never forwarded; the proxy frames bodies itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers handled by the proxy itself: the body is read fully (so Expect was already answered)
# and re-sent with a Content-Length.
_NOT_FORWARDED_REQUEST = _HOP_BY_HOP | {"expect", "content-length"}
_NOT_FORWARDED_RESPONSE = _HOP_BY_HOP | {"content-length"}


class _ProxyHandler(BaseTestHandler):
    """Forwards each request to the owner's upstream over one upstream connection per client connection."""

    owner: CountingProxy  # type: ignore[assignment]
    _upstream: http.client.HTTPConnection | None = None
    _upstream_used = False
    _status = 502
    _sent = 0
    _fault_name: str | None = None

    def finish(self) -> None:
        """Close the upstream connection with the client connection."""
        self._drop_upstream()
        super().finish()

    def _forward(self) -> None:
        owner = self.owner
        recorder = self.start_record()
        self._status, self._sent, self._fault_name = 502, 0, None
        try:
            body = self._read_request_body()
            is_get = self.command == "GET"
            if is_get or (owner.fail_writes and self.command in ("PUT", "POST")):
                failure = owner.faults.take_failure()
                delay = owner.faults.delay
                if delay:
                    time.sleep(delay)
                if failure is not None:
                    self._status, self._fault_name = failure, "fail"
                    self._sent = self.send_text(failure, f"injected failure {failure}\n", fault="fail")
                    return
            try:
                resp = self._send_upstream(body)
            except (OSError, http.client.HTTPException) as exc:
                self._drop_upstream()
                self._status = 502
                self._sent = self.send_text(502, f"upstream error: {exc!r}\n")
                return
            self._relay(resp, is_get)
        except OSError:
            self.close_connection = True
            self._drop_upstream()
        finally:
            recorder.commit(self._status, self._sent, self._fault_name)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _forward

    def _relay(self, resp: http.client.HTTPResponse, is_get: bool) -> None:
        """Send the upstream response to the client; the outcome is kept for the log record."""
        status = self._status = resp.status
        no_body = self.command == "HEAD" or status in (204, 304) or status < 200
        self.send_response_only(status, resp.reason)
        if no_body:
            for name, value in resp.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            resp.read()
            self.recorder.commit(status, 0)
            self.end_headers()
            self._after_response(resp, complete=True)
            return
        chunks: Iterator[bytes] | list[bytes]
        if resp.length is not None and not resp.chunked:
            total = resp.length
            chunks = iter(lambda: resp.read(CHUNK_SIZE), b"")
        else:
            data = resp.read()
            total, chunks = len(data), [data]
        fault = self.owner.faults.take_body_fault() if is_get and status in (200, 206) else None
        fault_name = self._fault_name = fault.kind if fault else None
        declared = declared_length(total, fault)
        for name, value in resp.getheaders():
            if name.lower() not in _NOT_FORWARDED_RESPONSE:
                self.send_header(name, value)
        self.send_header("Content-Length", str(declared))
        self._sent, complete = write_body(
            self, chunks, declared, fault, lambda n: self.recorder.commit(status, n, fault_name)
        )
        if not complete:
            # A fault, an upstream that ended early or a client that went away: framing is broken.
            self.close_connection = True
        self._after_response(resp, complete=complete)

    def _after_response(self, resp: http.client.HTTPResponse, complete: bool) -> None:
        """Keep the upstream connection only if its response was consumed completely."""
        if not complete or not resp.isclosed():
            self._drop_upstream()

    def _read_request_body(self) -> bytes | None:
        """Read the whole request body (Content-Length or chunked); None when there is none."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # discard trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        return self.rfile.read(int(length))

    def _send_upstream(self, body: bytes | None) -> http.client.HTTPResponse:
        """Send the request upstream, retrying once if a reused keep-alive connection was closed."""
        owner = self.owner
        target = owner.upstream_prefix + self.path
        for attempt in range(2):
            if self._upstream is None:
                self._upstream = owner._new_upstream_connection()
                self._upstream_used = False
            conn, reused = self._upstream, self._upstream_used
            try:
                conn.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _NOT_FORWARDED_REQUEST:
                        conn.putheader(name, value)
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
            except ConnectionError:
                self._drop_upstream()
                if attempt or not reused:
                    raise
                continue
            self._upstream_used = True
            return resp
        raise AssertionError("unreachable")

    def _drop_upstream(self) -> None:
        conn, self._upstream = self._upstream, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()


class CountingProxy(BackgroundHTTPServer):
    """Threaded HTTP/1.1 reverse proxy on 127.0.0.1 that forwards everything to ``upstream_base_url``.

    Method, path + query, headers (Host included, unchanged) and body are forwarded as received, except
    hop-by-hop headers and ``Expect`` (the body is read fully and re-sent with a Content-Length). The
    upstream response keeps its status, reason and headers and is streamed back with a Content-Length
    (chunked upstream responses are read fully first). Each client connection gets its own upstream
    keep-alive connection. Records are logged like :class:`ObjectHTTPServer`'s; ``key`` is the
    URL-decoded path without its leading ``/`` (``"bucket/object/key"`` for path-style S3).

    Fault injection (``fail_next``, ``delay``, ``stall_after``, ``reset_after``, ``short_body``) applies to
    GET requests only (``fail_writes = True``: ``fail_next`` and ``delay`` apply to PUT and POST too, to
    fail an upload); a ``fail_next`` failure is answered by the proxy without contacting upstream, and
    the body faults only hit 200/206 GET responses.
    """

    handler_class = _ProxyHandler

    def __init__(
        self, upstream_base_url: str, host: str = "127.0.0.1", port: int = 0, upstream_timeout: float = 60.0
    ) -> None:
        super().__init__(host, port)
        parts = urlsplit(upstream_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL: {upstream_base_url!r}")
        self.upstream_base_url = upstream_base_url
        self._scheme = parts.scheme
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port
        self.upstream_prefix = parts.path.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self.fail_writes = False

    @property
    def endpoint(self) -> str:
        """Base URL without a trailing slash (handy as an S3 ``endpoint_url``)."""
        return self.url.rstrip("/")

    def _new_upstream_connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._upstream_host, self._upstream_port, timeout=self.upstream_timeout)
