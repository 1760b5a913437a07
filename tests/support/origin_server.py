"""In-memory HTTP object origin with ranges, conditional requests, a request log and fault injection."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import quote

from ._base import (
    CHUNK_SIZE,
    BackgroundHTTPServer,
    BaseTestHandler,
    RequestRecord,
    declared_length,
    write_body,
)

__all__ = ["ObjectHTTPServer", "RequestRecord", "StoredObject", "make_etag", "parse_range"]


def make_etag(data: bytes) -> str:
    """Strong ETag used by :class:`ObjectHTTPServer`: quoted first 32 hex digits of sha256."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class StoredObject:
    """One object version held by the server."""

    data: bytes
    etag: str
    last_modified: str


def _etag_list(header: str) -> list[str]:
    """Split an If-Match / If-None-Match value into entity tags (``*`` kept as is)."""
    return [part.strip() for part in header.split(",") if part.strip()]


def _strong_match(header: str, etag: str) -> bool:
    """If-Match semantics: ``*`` or a strong tag equal to ``etag`` (weak tags never match)."""
    tags = _etag_list(header)
    return "*" in tags or etag in tags


def _weak_match(header: str, etag: str) -> bool:
    """If-None-Match semantics: ``*`` or any tag equal to ``etag`` ignoring the ``W/`` prefix."""
    tags = _etag_list(header)
    return "*" in tags or etag in [t.removeprefix("W/") for t in tags]


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Resolve a ``Range`` header against an object of ``size`` bytes.

    Returns ``(first, last)`` (inclusive) for one satisfiable range, ``"unsatisfiable"``, or ``None``
    when the header must be ignored (malformed, not ``bytes``, or several ranges).
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s.isdigit() or first_s == "") or not (last_s.isdigit() or last_s == ""):
        return None
    if first_s == "":
        if last_s == "":
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


class _ObjectHandler(BaseTestHandler):
    """Serves GET/HEAD of the owner's objects."""

    owner: ObjectHTTPServer  # type: ignore[assignment]

    def do_GET(self) -> None:
        """GET an object (full, or one byte range)."""
        self._serve()

    def do_HEAD(self) -> None:
        """HEAD an object."""
        self._serve()

    def _not_allowed(self) -> None:
        self.discard_request_body()
        self.close_connection = True
        self.send_text(405, "method not allowed\n", {"Allow": "GET, HEAD"})

    do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _serve(self) -> None:
        owner = self.owner
        recorder = self.start_record()
        range_header = self.headers.get("Range")
        status, sent, fault_name = 500, 0, None
        try:
            self.discard_request_body()
            failure = owner.faults.take_failure()
            delay = owner.faults.delay
            if delay:
                time.sleep(delay)
            if failure is not None:
                status, fault_name = failure, "fail"
                sent = self.send_text(status, f"injected failure {status}\n", fault=fault_name)
                return
            obj = owner.get_object(recorder.key)
            if obj is None:
                status = 404
                sent = self.send_text(status, "not found\n")
                return
            validators = {"ETag": obj.etag, "Last-Modified": obj.last_modified}
            if_match = self.headers.get("If-Match")
            if if_match is not None and not _strong_match(if_match, obj.etag):
                status = 412
                sent = self.send_text(status, "precondition failed\n", validators)
                return
            if_none_match = self.headers.get("If-None-Match")
            if if_none_match is not None and _weak_match(if_none_match, obj.etag):
                status = 304
                self.send_response(status)
                for name, value in validators.items():
                    self.send_header(name, value)
                recorder.commit(status, 0)
                self.end_headers()
                return
            size = len(obj.data)
            byte_range = None
            if range_header is not None and self._if_range_ok(obj):
                byte_range = parse_range(range_header, size)
            if byte_range == "unsatisfiable":
                status = 416
                sent = self.send_text(status, "", {"Content-Range": f"bytes */{size}", **validators})
                return
            if isinstance(byte_range, tuple):
                first, last = byte_range
                status = 206
            else:
                first, last = 0, size - 1
                status = 200
            body = memoryview(obj.data)[first : last + 1]
            fault = owner.faults.take_body_fault() if self.command == "GET" else None
            fault_name = fault.kind if fault else None
            declared = declared_length(len(body), fault)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(declared))
            self.send_header("Accept-Ranges", "bytes")
            for name, value in validators.items():
                self.send_header(name, value)
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            if self.command == "HEAD":
                recorder.commit(status, 0)
                self.end_headers()
                return
            chunks = (body[i : i + CHUNK_SIZE] for i in range(0, len(body), CHUNK_SIZE))
            sent, _complete = write_body(
                self, chunks, declared, fault, lambda n: recorder.commit(status, n, fault_name)
            )
        except OSError:
            self.close_connection = True
        finally:
            recorder.commit(status, sent, fault_name)

    def _if_range_ok(self, obj: StoredObject) -> bool:
        """False when an ``If-Range`` validator is present and does not match (serve the full object)."""
        if_range = self.headers.get("If-Range")
        if if_range is None:
            return True
        if_range = if_range.strip()
        if if_range.startswith('"'):
            return if_range == obj.etag
        return if_range == obj.last_modified


class ObjectHTTPServer(BackgroundHTTPServer):
    """Threaded HTTP/1.1 server on 127.0.0.1 serving an in-memory ``key -> bytes`` dict at ``url + key``.

    GET/HEAD answer 200 (or 206 for one ``Range: bytes=a-b | a- | -n``) with Content-Length, ETag,
    Last-Modified, Accept-Ranges and Content-Type; 416 with ``Content-Range: bytes */size`` for an
    unsatisfiable range; 412 when ``If-Match`` does not match; 304 when ``If-None-Match`` matches;
    404 for a missing key. Several ranges or a malformed Range header are ignored (200, full body), as
    is a Range whose ``If-Range`` does not match. Other methods get 405.

    Fault injection (``fail_next``, ``delay``, ``stall_after``, ``reset_after``, ``short_body``) applies to
    GET and HEAD for ``fail_next``/``delay`` and to GETs that carry a body (200/206) for the body faults.
    """

    handler_class = _ObjectHandler

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._objects_lock = threading.Lock()
        self._objects: dict[str, StoredObject] = {}

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` with a fresh ETag and Last-Modified; returns the ETag."""
        obj = StoredObject(bytes(data), make_etag(data), formatdate(usegmt=True))
        with self._objects_lock:
            self._objects[key] = obj
        return obj.etag

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if missing)."""
        with self._objects_lock:
            self._objects.pop(key, None)

    def get_object(self, key: str) -> StoredObject | None:
        """The stored object for ``key``, or None."""
        with self._objects_lock:
            return self._objects.get(key)

    def etag(self, key: str) -> str:
        """Current ETag of ``key`` (KeyError if missing)."""
        obj = self.get_object(key)
        if obj is None:
            raise KeyError(key)
        return obj.etag

    def keys(self) -> list[str]:
        """Sorted list of stored keys."""
        with self._objects_lock:
            return sorted(self._objects)

    def object_url(self, key: str) -> str:
        """Full URL of ``key`` (percent-encoded, ``/`` kept)."""
        return self.url + quote(key, safe="/")
