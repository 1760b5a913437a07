"""The bytes of an image upload: a raw body, or the ``file`` field of a ``multipart/form-data`` one.

The body is parsed as it arrives (python-multipart's streaming parser) and only the file's bytes are
kept, so memory per upload is bounded by the size limit, whatever else the client sends; past the
limit the upload stops at once with ``UploadTooLarge`` (413).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError

from tessera.errors import InvalidPath, UploadTooLarge

if TYPE_CHECKING:  # a typing-only name of python-multipart
    from python_multipart.multipart import MultipartCallbacks

#: The multipart field that holds the image.
FILE_FIELD = b"file"
#: Bytes of a multipart body besides the file (boundaries, headers, small fields) that are accepted.
FORM_SLACK = 64 << 10


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The uploaded file's bytes (``InvalidPath``, a 400, for a malformed form)."""
    content_type = request.headers.get("content-type", "")
    length = request.headers.get("content-length", "")
    boundary = _boundary(content_type)
    limit = max_bytes + (FORM_SLACK if boundary is not None else 0)
    if length.isdigit() and int(length) > limit:
        raise UploadTooLarge(f"upload of {length} bytes is over hosting.max_upload_size ({max_bytes})")
    if boundary is None:
        return await _read_raw(request, max_bytes)
    return await _read_form(request, boundary, max_bytes)


def _too_large(max_bytes: int) -> UploadTooLarge:
    return UploadTooLarge(f"upload is over hosting.max_upload_size ({max_bytes} bytes)")


async def _read_raw(request: Request, max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)


def _boundary(content_type: str) -> bytes | None:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    raise InvalidPath("multipart/form-data without a boundary")


async def _read_form(request: Request, boundary: bytes, max_bytes: int) -> bytes:
    """The ``file`` field of a form, read as it streams in (the other fields are skipped)."""
    state = _FormState(max_bytes)
    parser = MultipartParser(boundary, state.callbacks(), max_size=max_bytes + FORM_SLACK)
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes + FORM_SLACK:
                raise _too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidPath(f"malformed multipart body: {exc}") from None
    if state.file is None:
        raise InvalidPath("multipart body without a `file` field: send the image as field `file`")
    return bytes(state.file)


class _FormState:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.file: bytearray | None = None
        self._header_name = b""
        self._header_value = b""
        self._in_file = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._in_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        disposition = self._header_name.lower() == b"content-disposition"
        if disposition and _field_name(self._header_value) == FILE_FIELD:
            if self.file is not None:
                raise InvalidPath("more than one `file` field: upload one image per request")
            self._in_file = True
            self.file = bytearray()
        self._header_name = self._header_value = b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.file is not None:
            self.file += data[start:end]
            if len(self.file) > self.max_bytes:
                raise _too_large(self.max_bytes)


def _field_name(disposition: bytes) -> bytes | None:
    for param in disposition.split(b";")[1:]:
        name, _, value = param.strip().partition(b"=")
        if name.strip().lower() == b"name":
            return value.strip().strip(b'"')
    return None
