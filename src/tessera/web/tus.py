"""Resumable uploads with the tus 1.0 protocol at ``/api/v1/uploads/``: core, creation, termination,
checksum and expiration extensions.

``POST /api/v1/uploads/`` creates an upload of ``Upload-Length`` bytes whose target is the virtual path
in its ``path`` metadata value; ``PATCH`` appends bytes at ``Upload-Offset`` (staged on this node, see
``storage.uploads``), ``HEAD`` tells the durable offset, ``DELETE`` terminates. Every request needs a
token that may write the target path, as a ``PUT`` would.

When the last byte arrives, the staged file is streamed into the mount's origin through the
``StorageManager`` (the same size and checksum checks as a ``PUT``, with the whole file's SHA-256 if the
``sha256`` metadata value gives one) before the final ``PATCH`` is answered. If the origin fails, the
bytes stay staged and the answer is the origin's error with ``Upload-Offset`` equal to the length: an
empty ``PATCH`` at that offset retries the commit. An upload that can never be stored (its checksum
does not match, the target became invalid) is removed.

A ``PATCH`` cut off mid-body keeps what arrived (unless it carried an ``Upload-Checksum``, which only
the whole body can satisfy); received bytes are made durable every ``COMMIT_BYTES`` too, so even a
killed server resumes close to where it was.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tessera.errors import ChecksumMismatch, ReadOnlyOrigin, TesseraError, UploadTooLarge
from tessera.origins.http import HttpOrigin
from tessera.storage import Expected, StorageManager
from tessera.storage.relay import Relays
from tessera.storage.uploads import Taken, Upload, UploadBusy, UploadStore
from tessera.web.auth import authorize, registry
from tessera.web.base_url import request_base
from tessera.web.errors import error_response, public_detail
from tessera.web.limits import streams_body
from tessera.web.openapi import error_responses

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
PREFIX = "/api/v1/uploads"
EXTENSIONS = "creation,termination,checksum,expiration"
CHECKSUMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": functools.partial(hashlib.md5, usedforsecurity=False),
}
OFFSET_TYPE = "application/offset+octet-stream"
#: Received bytes are fsynced and counted at least this often during a long PATCH.
COMMIT_BYTES = 32 * 1024 * 1024
#: Received bytes are gathered into writes of this size.
WRITE_BYTES = 1024 * 1024
#: A HEAD waits this long for a PATCH in progress to end (typically one whose client was cut off and
#: is about to resume: its last bytes are being fsynced), so that it answers the offset the resumed
#: PATCH must start from rather than one that makes it fail with 409 after sending its body.
HEAD_WAIT = 10.0
MAX_METADATA = 8192
_METADATA_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass
class TusState:
    """What the routes share: the staging store, a lock that keeps the staging-space check and the
    creation it allows together, and the uploads being stored while they arrive."""

    store: UploadStore
    creating: asyncio.Lock
    relays: Relays


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    root = settings.storage.uploads_dir or settings.cache.dir / "uploads"
    store = UploadStore(root, settings.storage.staging_size, settings.storage.upload_expiry)
    state = TusState(store, asyncio.Lock(), Relays(app.state.storage))
    app.state.tus = state
    sweeper = asyncio.create_task(_sweep_forever(state))
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await state.relays.close()


async def _sweep_forever(state: TusState) -> None:
    """Remove expired uploads now and then (every quarter of the expiry, between 0.25 s and a minute),
    and stop storing those whose clients paused."""
    store = state.store
    interval = min(60.0, max(0.25, store.expiry / 4))
    while True:
        try:
            removed = await asyncio.to_thread(store.sweep)
        except OSError:
            log.exception("sweeping expired uploads in %s failed", store.root)
            removed = []
        for upload_id in removed:
            await state.relays.cancel(upload_id)
        if removed:
            log.info("removed %d expired uploads", len(removed))
        await state.relays.cancel_idle()
        await asyncio.sleep(interval)


router = APIRouter(tags=["uploads"], lifespan=_lifespan)


class TusError(Exception):
    """A protocol-level refusal (the statuses ``HTTPStatus`` does not know, 460, included)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def _tus(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Every answer carries ``Tus-Resumable``; errors are the JSON error body with it."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            response = await handler(*args, **kwargs)
        except TusError as exc:
            response = error_response(exc.status, exc.error, exc.detail)
            response.headers.update(exc.headers)
        except HTTPException as exc:  # authorize's 401 and 403
            name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
            response = error_response(exc.status_code, name, str(exc.detail))
            response.headers.update(exc.headers or {})
        except TesseraError as exc:
            response = error_response(exc.status, type(exc).__name__, public_detail(exc, None))
        response.headers["Tus-Resumable"] = TUS_VERSION
        return response

    return wrapped


def _check_version(version: str | None) -> None:
    if version != TUS_VERSION:
        raise TusError(
            412,
            "UnsupportedVersion",
            f"this server speaks tus {TUS_VERSION}: send Tus-Resumable: {TUS_VERSION}",
            {"Tus-Version": TUS_VERSION},
        )


def _state(request: Request) -> TusState:
    state: TusState = request.app.state.tus
    return state


def _count(value: str | None, header: str) -> int:
    if value is None or not _DIGITS.fullmatch(value.strip()):
        raise TusError(400, "InvalidRequest", f"{header} must be a non-negative integer")
    return int(value)


def parse_metadata(header: str | None) -> dict[str, bytes]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (the value may be left out)."""
    if not header or not header.strip():
        return {}
    if len(header) > MAX_METADATA:
        raise TusError(400, "InvalidMetadata", f"Upload-Metadata is longer than {MAX_METADATA} characters")
    metadata: dict[str, bytes] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        value = value.strip()
        if not _METADATA_KEY.fullmatch(key) or key in metadata:
            raise TusError(400, "InvalidMetadata", "Upload-Metadata keys must be unique, non-empty ASCII")
        try:
            if not _BASE64.fullmatch(value):
                raise ValueError(value)
            metadata[key] = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise TusError(400, "InvalidMetadata", f"Upload-Metadata value of {key} is not base64") from None
    return metadata


def _expected(metadata: dict[str, bytes]) -> Expected:
    """The whole file's SHA-256 from the ``sha256`` metadata value (hex or base64), if given."""
    digest = metadata.get("sha256")
    if digest is None:
        return Expected()
    try:
        text = digest.decode("ascii")
    except UnicodeDecodeError:
        raise ChecksumMismatch("the sha256 metadata value is not a hex or base64 digest") from None
    return Expected.from_headers(None, text)


def _owner(request: Request) -> str:
    """The name of the token that created an upload (``server.token`` or a ``[tokens.NAME]``)."""
    grant = registry(request.app.state).identify(request.headers.get("authorization"))
    return grant.name if grant is not None else ""


def _expires(upload: Upload, store: UploadStore) -> dict[str, str]:
    if upload.done:
        return {}
    return {"Upload-Expires": formatdate(upload.expires(store.expiry), usegmt=True)}


# ---------------------------------------------------------------- routes

_VERSION = Annotated[str | None, Header(alias="Tus-Resumable", description=f"`{TUS_VERSION}`")]


def _responses(ok: int, ok_text: str, *errors: int) -> dict[int | str, dict[str, Any]]:
    documented: dict[int | str, dict[str, Any]] = {ok: {"description": ok_text}}
    documented.update(error_responses(*(status for status in errors if status != 460)))
    if 460 in errors:
        documented[460] = {**error_responses(400)[400], "description": "Checksum Mismatch"}
    return documented


@router.options(
    PREFIX + "/",
    status_code=204,
    response_class=Response,
    responses=_responses(204, "What this server supports."),
    operation_id="tus_options",
)
@router.options(PREFIX + "/{upload_id}", status_code=204, response_class=Response, include_in_schema=False)
async def tus_options(request: Request) -> Response:
    """The tus versions, extensions, size limit and checksum algorithms this server supports."""
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(request.app.state.settings.storage.max_upload_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }
    return Response(status_code=204, headers=headers)


@router.post(
    PREFIX + "/",
    status_code=201,
    response_class=Response,
    responses=_responses(
        201, "Created; `Location` is the upload's URL.", 400, 401, 403, 404, 405, 412, 413, 507
    ),
    operation_id="tus_create",
)
@router.post(PREFIX, status_code=201, response_class=Response, include_in_schema=False)
@_tus
async def tus_create(
    request: Request,
    tus_resumable: _VERSION = None,
    upload_length: Annotated[str | None, Header(alias="Upload-Length")] = None,
    upload_metadata: Annotated[
        str | None, Header(alias="Upload-Metadata", description="Must have `path` (the target virtual path).")
    ] = None,
    upload_defer_length: Annotated[str | None, Header(alias="Upload-Defer-Length")] = None,
) -> Response:
    """Create an upload of ``Upload-Length`` bytes to the virtual path in the ``path`` metadata value
    (base64, as tus encodes metadata values); an optional ``sha256`` value is checked against the whole
    file when it is stored."""
    _check_version(tus_resumable)
    authorize(request, "write")
    if upload_defer_length is not None:
        raise TusError(400, "InvalidRequest", "Upload-Defer-Length is not supported: send Upload-Length")
    length = _count(upload_length, "Upload-Length")
    metadata = parse_metadata(upload_metadata)
    if "path" not in metadata:
        raise TusError(400, "InvalidMetadata", "Upload-Metadata needs a path value (the target virtual path)")
    try:
        path = metadata["path"].decode()
    except UnicodeDecodeError:
        raise TusError(400, "InvalidMetadata", "the path metadata value is not UTF-8") from None
    storage: StorageManager = request.app.state.storage
    resolved = storage.engine.namespace.resolve(path if path.startswith("/") else "/" + path)
    authorize(request, "write", [resolved.path])
    if length > storage.max_upload_size:
        raise UploadTooLarge(
            f"upload of {length} bytes is over storage.max_upload_size ({storage.max_upload_size})"
        )
    if isinstance(resolved.origin, HttpOrigin):
        raise ReadOnlyOrigin(f"mount {resolved.mount} is read-only: its origin is plain HTTP")
    _expected(metadata)
    state = _state(request)
    async with state.creating:
        upload = await asyncio.to_thread(
            state.store.create, resolved.path, length, upload_metadata or "", _owner(request)
        )
    if length == 0:
        taken = await _take(state.store, upload.id)
        with taken:
            await _complete(request, taken)
    base = request_base(request.scope, request.app.state.settings.server.public_url)
    headers = {"Location": f"{base}{PREFIX}/{upload.id}", **_expires(upload, state.store)}
    return Response(status_code=201, headers=headers)


@router.head(
    PREFIX + "/{upload_id}",
    response_class=Response,
    responses=_responses(200, "`Upload-Offset`, `Upload-Length`, `Upload-Metadata`.", 401, 403, 404, 412),
    operation_id="tus_offset",
)
@_tus
async def tus_offset(upload_id: str, request: Request, tus_resumable: _VERSION = None) -> Response:
    """The upload's durable offset (where the next ``PATCH`` must start) and length."""
    _check_version(tus_resumable)
    store = _state(request).store
    upload = _find(request, upload_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_WAIT
    while True:
        try:
            taken = await asyncio.to_thread(store.take, upload_id)
        except UploadBusy:
            if loop.time() < deadline:
                await asyncio.sleep(0.02)
                continue
            upload = store.get(upload_id) or upload  # still busy: the offset durable so far
            break
        if taken is None:
            raise _not_found(upload_id)
        with taken:
            upload = taken.upload
        break
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Cache-Control": "no-store",
        **_expires(upload, store),
    }
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    return Response(status_code=200, headers=headers)


@router.patch(
    PREFIX + "/{upload_id}",
    status_code=204,
    response_class=Response,
    responses=_responses(
        204,
        "Stored; `Upload-Offset` is the new offset.",
        400,
        401,
        403,
        404,
        405,
        408,
        409,
        412,
        413,
        415,
        460,
        502,
        504,
    ),
    operation_id="tus_append",
)
@streams_body  # bounded here, by what the upload still lacks
@_tus
async def tus_append(
    upload_id: str,
    request: Request,
    tus_resumable: _VERSION = None,
    upload_offset: Annotated[str | None, Header(alias="Upload-Offset")] = None,
    upload_checksum: Annotated[
        str | None,
        Header(alias="Upload-Checksum", description="`sha1|sha256|md5 <base64 digest>` of this body"),
    ] = None,
    content_type: Annotated[str | None, Header(alias="Content-Type")] = None,
) -> Response:
    """Append the body (``Content-Type: application/offset+octet-stream``) at ``Upload-Offset``. The
    request that brings the last byte stores the file at its path before it is answered."""
    _check_version(tus_resumable)
    authorize(request, "write")
    if (content_type or "").split(";")[0].strip().lower() != OFFSET_TYPE:
        raise TusError(415, "UnsupportedMediaType", f"PATCH bodies must be {OFFSET_TYPE}")
    offset = _count(upload_offset, "Upload-Offset")
    checksum = _checksum(upload_checksum)
    store = _state(request).store
    _find(request, upload_id)
    taken = await _take(store, upload_id)
    with taken:
        upload = taken.upload
        if offset != upload.offset:
            raise TusError(
                409,
                "OffsetMismatch",
                f"the upload is at offset {upload.offset}, not {offset}",
                {"Upload-Offset": str(upload.offset)},
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > taken.remaining:
            raise TusError(413, "TooLarge", f"the upload lacks only {taken.remaining} bytes")
        if upload.done:
            return Response(status_code=204, headers={"Upload-Offset": str(upload.offset)})
        relays = _state(request).relays
        if upload.offset < upload.length:
            relays.start(upload, store.data_path(upload_id), _expected(parse_metadata(upload.metadata)))
        try:
            await _receive(request, taken, checksum, relays)
        except ClientDisconnect:  # nobody reads this answer; the next HEAD tells the offset kept
            detail = f"the body was cut off; the upload is at offset {taken.upload.offset}"
            return error_response(408, "RequestTimeout", detail)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            await asyncio.to_thread(taken.discard)
            detail = f"no space left to stage uploads; the upload stays at offset {taken.upload.offset}"
            raise TusError(
                507, "InsufficientStorage", detail, {"Upload-Offset": str(taken.upload.offset)}
            ) from None
        upload = taken.upload
        if upload.offset == upload.length:
            await _complete(request, taken)
        return Response(
            status_code=204, headers={"Upload-Offset": str(upload.offset), **_expires(upload, store)}
        )


@router.post(PREFIX + "/{upload_id}", response_class=Response, include_in_schema=False)
@streams_body
async def tus_override(upload_id: str, request: Request) -> Response:
    """``POST`` with ``X-HTTP-Method-Override: PATCH|DELETE|HEAD``, for clients that cannot send those."""
    headers = request.headers
    version = headers.get("tus-resumable")
    match headers.get("x-http-method-override", "").upper():
        case "PATCH":
            offset, checksum = headers.get("upload-offset"), headers.get("upload-checksum")
            return await tus_append(
                upload_id, request, version, offset, checksum, headers.get("content-type")
            )
        case "DELETE":
            return await tus_terminate(upload_id, request, version)
        case "HEAD":
            return await tus_offset(upload_id, request, version)
    response = error_response(
        405, "MethodNotAllowed", "POST here needs X-HTTP-Method-Override: PATCH or DELETE"
    )
    response.headers.update({"Allow": "HEAD, PATCH, DELETE, OPTIONS", "Tus-Resumable": TUS_VERSION})
    return response


@router.delete(
    PREFIX + "/{upload_id}",
    status_code=204,
    response_class=Response,
    responses=_responses(204, "Terminated; the staged bytes are removed.", 401, 403, 404, 409, 412),
    operation_id="tus_terminate",
)
@_tus
async def tus_terminate(upload_id: str, request: Request, tus_resumable: _VERSION = None) -> Response:
    """Terminate the upload: its staged bytes are removed, and the URL answers 404 from then on."""
    _check_version(tus_resumable)
    store = _state(request).store
    _find(request, upload_id)
    taken = await _take(store, upload_id)
    with taken:
        await _state(request).relays.cancel(upload_id)
        await asyncio.to_thread(taken.remove)
    return Response(status_code=204)


# ---------------------------------------------------------------- steps


def _not_found(upload_id: str) -> TusError:
    return TusError(
        404, "NotFound", f"no upload {upload_id[:40]!r} (finished long ago, expired or terminated)"
    )


def _find(request: Request, upload_id: str) -> Upload:
    """The upload, if the request's token may write its path (401 before anything else without one)."""
    authorize(request, "write")
    upload = _state(request).store.get(upload_id)
    if upload is None:
        raise _not_found(upload_id)
    authorize(request, "write", [upload.path])
    return upload


async def _take(store: UploadStore, upload_id: str) -> Taken:
    taken = await asyncio.to_thread(store.take, upload_id)
    if taken is None:
        raise _not_found(upload_id)
    return taken


def _checksum(header: str | None) -> tuple[Callable[[], Any], bytes] | None:
    """``Upload-Checksum: ALGORITHM BASE64``: the hash constructor and the digest expected."""
    if header is None:
        return None
    name, _, value = header.strip().partition(" ")
    if name not in CHECKSUMS:
        raise TusError(400, "UnsupportedChecksum", f"Upload-Checksum algorithms: {', '.join(CHECKSUMS)}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise TusError(400, "InvalidChecksum", "the Upload-Checksum digest is not base64") from None
    return CHECKSUMS[name], digest


async def _receive(
    request: Request,
    taken: Taken,
    checksum: tuple[Callable[[], Any], bytes] | None,
    relays: Relays,
) -> None:
    """Write the body at the upload's offset and count it (or, with a checksum that does not match,
    drop it). A body cut off keeps what arrived, unless a checksum covers it. Without a checksum,
    bytes are counted every ``COMMIT_BYTES`` by a commit that runs while the body goes on arriving."""
    hasher = checksum[0]() if checksum else None
    buffer = bytearray()
    committing: asyncio.Task[Upload] | None = None

    async def settle() -> None:
        """Wait for the commit in the background, if any (its errors are the request's)."""
        nonlocal committing
        if committing is not None:
            task, committing = committing, None
            upload = await task
            relays.advance(upload.id, upload.offset)

    try:
        async for chunk in request.stream():
            if len(buffer) + len(chunk) > taken.remaining:
                await settle()
                await asyncio.to_thread(taken.discard)
                raise TusError(
                    413, "TooLarge", f"the body is longer than the {taken.upload.length} bytes announced"
                )
            if hasher is not None:
                hasher.update(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_BYTES:
                await asyncio.to_thread(taken.write, buffer)
                buffer.clear()
                due = hasher is None and taken.pending >= COMMIT_BYTES
                if due and (committing is None or committing.done()):
                    await settle()
                    committing = asyncio.create_task(asyncio.to_thread(taken.commit))
        await settle()
    except ClientDisconnect:
        await settle()
        if hasher is not None:
            await asyncio.to_thread(taken.discard)
        else:
            upload = await asyncio.to_thread(_flush, taken, buffer)
            relays.advance(upload.id, upload.offset)
        raise
    finally:
        if committing is not None:  # an error elsewhere: the commit must not outlive the request
            await asyncio.wait([committing])
            if not committing.cancelled():
                committing.exception()
    if checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
        await asyncio.to_thread(taken.discard)
        raise TusError(460, "ChecksumMismatch", "the body does not match Upload-Checksum; it was discarded")
    upload = await asyncio.to_thread(_flush, taken, buffer)
    relays.advance(upload.id, upload.offset)


def _flush(taken: Taken, buffer: bytearray) -> Upload:
    if buffer:
        taken.write(buffer)
    return taken.commit()


async def _complete(request: Request, taken: Taken) -> None:
    """Store the whole staged file at its path (done already if a relay stored it as it arrived); on
    success keep only the record (``done``). An error that retrying cannot cure removes the upload; any
    other keeps its bytes for a retry."""
    upload = taken.upload
    if await _state(request).relays.result(upload.id) is not None:
        await asyncio.to_thread(taken.finish)
        return
    storage: StorageManager = request.app.state.storage
    expected = _expected(parse_metadata(upload.metadata))
    try:
        await storage.put(upload.path, _in_thread(taken.chunks()), size=upload.length, expected=expected)
    except TesseraError as exc:
        if exc.status < 500:
            await asyncio.to_thread(taken.remove)
            raise
        log.warning("upload %s to %s not stored yet: %s", upload.id, upload.path, exc)
        raise _kept(upload, exc.status, type(exc).__name__, public_detail(exc, upload.path)) from exc
    except Exception as exc:  # an origin error its origin did not translate
        log.exception("upload %s to %s not stored yet", upload.id, upload.path)
        raise _kept(upload, 502, "OriginUnavailable", f"storing {upload.path} failed") from exc
    await asyncio.to_thread(taken.finish)


def _kept(upload: Upload, status: int, error: str, detail: str) -> TusError:
    retry = f" (the bytes are kept: an empty PATCH at offset {upload.length} retries)"
    return TusError(status, error, detail + retry, {"Upload-Offset": str(upload.offset)})


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk
