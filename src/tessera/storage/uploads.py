"""Staging of unfinished resumable (tus) uploads on this node.

Each upload is two files in the staging folder: ``ID.data`` (the bytes received so far) and ``ID.json``
(its record: target path, length, durable offset, metadata, owner, times). The record's offset only
ever moves forward after the data up to it has been fsynced, and the record is replaced atomically, so
a crash at any moment leaves an offset no larger than the bytes durably written; bytes past it (written
but not yet counted) are cut off the next time the upload is taken (``UploadStore.take``).

A request that changes an upload holds an exclusive ``flock`` on its data file (``Taken``): a second
one, from this process or another worker, is refused at once (``UploadBusy``), and a process that dies
releases it with its descriptors. All methods block on the filesystem: the web layer calls the ones
that write or fsync from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tessera.errors import TesseraError

#: What ``secrets.token_urlsafe(ID_BYTES)`` produces; anything else never touches the filesystem.
ID_BYTES = 24
_ID = re.compile(r"[A-Za-z0-9_-]{32}")
#: A data file with no record (a creation that crashed between the two) is removed after this long.
ORPHAN_AGE = 60.0
READ_CHUNK = 1024 * 1024


class StagingFull(TesseraError):
    """The unfinished uploads already reserve ``storage.staging_size``."""

    status = 507


class UploadBusy(TesseraError):
    """Another request is writing to, completing or terminating this upload."""

    status = 409


@dataclass(frozen=True, slots=True)
class Upload:
    """One upload's record. ``done``: stored at ``path``; the record stays (without its bytes) until it
    expires, so a client that asks again learns that the upload is complete."""

    id: str
    path: str
    length: int
    offset: int
    #: The ``Upload-Metadata`` header as the client sent it (already validated), answered on ``HEAD``.
    metadata: str
    #: The name of the token that created it.
    owner: str
    created: float
    #: Last time bytes were received: the upload expires ``expiry`` seconds after it.
    touched: float
    done: bool = False

    def expires(self, expiry: float) -> float:
        return self.touched + expiry


class UploadStore:
    """The staging folder ``root``: at most ``staging_size`` bytes reserved by unfinished uploads
    (their whole lengths, from creation on); an upload that receives nothing for ``expiry`` seconds is
    removed by ``sweep``."""

    def __init__(self, root: Path, staging_size: int, expiry: float) -> None:
        self.root = root
        self.staging_size = staging_size
        self.expiry = expiry
        root.mkdir(parents=True, exist_ok=True)

    def create(self, path: str, length: int, metadata: str, owner: str) -> Upload:
        """A new, empty upload to ``path``; raises ``StagingFull`` when its length does not fit.

        Not atomic with respect to other creations: callers in one process serialise them."""
        reserved = self.reserved()
        if reserved + length > self.staging_size:
            free = max(0, self.staging_size - reserved)
            raise StagingFull(
                f"staging space for unfinished uploads is full ({free} of {self.staging_size} bytes free,"
                f" {length} asked); retry later or finish other uploads"
            )
        now = time.time()
        upload = Upload(secrets.token_urlsafe(ID_BYTES), path, length, 0, metadata, owner, now, now)
        fd = os.open(self._data(upload.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        self._write_record(upload)
        _fsync_dir(self.root)
        return upload

    def get(self, upload_id: str) -> Upload | None:
        """The record of ``upload_id``, or None (unknown, malformed id, removed)."""
        if not _ID.fullmatch(upload_id):
            return None
        try:
            raw = json.loads(self._record(upload_id).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return Upload(**raw)

    def take(self, upload_id: str) -> Taken | None:
        """Exclusive hold of an upload (None: there is no such upload); raises ``UploadBusy``.

        Bytes past the durable offset (a request cut off, or killed, before it counted them) are cut
        off here, so the next write starts exactly at the offset the client is told."""
        if not _ID.fullmatch(upload_id):
            return None
        try:
            fd = os.open(self._data(upload_id), os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UploadBusy(f"upload {upload_id} is busy with another request") from None
        upload = self.get(upload_id)  # read again under the lock: the last holder may have changed it
        if upload is None:
            os.close(fd)
            return None
        size = os.fstat(fd).st_size
        if size > upload.offset:
            os.ftruncate(fd, upload.offset)
        elif size < upload.offset and not upload.done:  # the record outlived its bytes: trust the bytes
            upload = replace(upload, offset=size)
            self._write_record(upload)
        return Taken(self, upload, fd)

    def reserved(self) -> int:
        """Bytes reserved by unfinished uploads (their whole lengths)."""
        return sum(upload.length for upload in self.uploads() if not upload.done)

    def uploads(self) -> Iterator[Upload]:
        for entry in os.scandir(self.root):
            name, _, suffix = entry.name.partition(".")
            if suffix == "json" and (upload := self.get(name)) is not None:
                yield upload

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove expired uploads (and complete ones whose record has expired), data files left without
        a record and temporary records of a crash; uploads held by a request are left alone. Returns
        the ids of the uploads removed."""
        now = time.time() if now is None else now
        removed = []
        for upload in list(self.uploads()):
            if upload.expires(self.expiry) > now:
                continue
            with contextlib.suppress(UploadBusy):
                taken = self.take(upload.id)
                if taken is not None:
                    with taken:
                        if taken.upload.expires(self.expiry) <= now:
                            taken.remove()
                            removed.append(upload.id)
        for entry in os.scandir(self.root):
            name, _, suffix = entry.name.partition(".")
            orphan = suffix == "data" and not self._record(name).exists()
            if (orphan or suffix == "json.tmp") and now - entry.stat().st_mtime > ORPHAN_AGE:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return removed

    def data_path(self, upload_id: str) -> Path:
        """The staged bytes of an upload (read them only up to its offset)."""
        return self._data(upload_id)

    def _data(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.data"

    def _record(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.json"

    def _write_record(self, upload: Upload) -> None:
        """Replace the record atomically (a crash leaves the old one or the new one, whole)."""
        temporary = self.root / f"{upload.id}.json.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(asdict(upload)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self._record(upload.id))


class Taken:
    """An upload held exclusively: bytes are appended at its offset (``write``), counted once durable
    (``commit``) or dropped (``discard``); ``release`` (or leaving the ``with`` block) lets it go.

    One ``commit`` may run (in a thread) while ``write`` goes on in another: it counts the bytes
    written when it started, and ``offset + pending`` (where the next write goes) never changes under
    a writer.
    """

    def __init__(self, store: UploadStore, upload: Upload, fd: int) -> None:
        self.store = store
        self.upload = upload
        self.fd = fd
        #: Bytes written past ``upload.offset`` and not yet counted.
        self.pending = 0
        self._lock = threading.Lock()

    def __enter__(self) -> Taken:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    @property
    def remaining(self) -> int:
        """Bytes the upload may still receive, pending ones included."""
        return self.upload.length - self.upload.offset - self.pending

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        with self._lock:
            position = self.upload.offset + self.pending
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written
        with self._lock:
            self.pending += len(data)

    def commit(self) -> Upload:
        """Count the bytes pending now: fsync them, then move the recorded offset past them."""
        with self._lock:
            counted = self.pending
        if counted:
            os.fdatasync(self.fd)
            with self._lock:
                self.upload = replace(self.upload, offset=self.upload.offset + counted, touched=time.time())
                self.pending -= counted
                upload = self.upload
            self.store._write_record(upload)
        return self.upload

    def discard(self) -> None:
        """Drop the pending bytes."""
        os.ftruncate(self.fd, self.upload.offset)
        self.pending = 0

    def chunks(self) -> Iterator[bytes]:
        """The whole staged upload, from the start, in pieces of ``READ_CHUNK`` bytes."""
        position = 0
        while position < self.upload.offset:
            chunk = os.pread(self.fd, min(READ_CHUNK, self.upload.offset - position), position)
            if not chunk:
                raise OSError(f"staged upload {self.upload.id} is shorter than its offset")
            yield chunk
            position += len(chunk)

    def finish(self) -> Upload:
        """The upload is stored at its path: free its bytes, keep its record (``done``) until it expires."""
        self.upload = replace(self.upload, done=True, touched=time.time())
        self.store._write_record(self.upload)
        os.ftruncate(self.fd, 0)
        return self.upload

    def remove(self) -> None:
        """Remove the upload altogether (termination, expiry, an upload that can never be stored)."""
        for path in (self.store._record(self.upload.id), self.store._data(self.upload.id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock
            self.fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
