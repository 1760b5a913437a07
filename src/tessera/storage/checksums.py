"""Checking an upload while it streams: its size against the limit, its digests against what the
client announced. A failed check raises inside the stream, so the origin never makes the object
visible (see ``Origin.put``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tessera.errors import ChecksumMismatch, UploadTooLarge
from tessera.pieces import gathered


@dataclass(frozen=True, slots=True)
class Expected:
    """Digests a client sent with an upload (raw bytes; None: not sent)."""

    md5: bytes | None = None
    sha256: bytes | None = None

    @classmethod
    def from_headers(cls, content_md5: str | None, sha256: str | None) -> Expected:
        """From ``Content-MD5`` (base64) and ``x-amz-checksum-sha256`` (base64) or a hex SHA-256."""
        return cls(
            md5=_digest(content_md5, 16, "Content-MD5") if content_md5 else None,
            sha256=_digest(sha256, 32, "x-amz-checksum-sha256") if sha256 else None,
        )


def _digest(text: str, length: int, header: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 2 * length else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != length:
        raise ChecksumMismatch(f"{header} is not a base64 (or hex) digest of {length} bytes")
    return raw


class CheckedStream:
    """Wraps an upload's chunks: counts them against ``max_size``, hashes them, and at the end raises
    ``ChecksumMismatch`` if a digest differs from ``expected`` (before the origin commits).

    The chunks come out gathered into pieces of ``tessera.pieces.PIECE`` bytes: hashing and the
    origin's work per piece then cost the same for a body sent in 64 KiB chunks as in 1 MiB ones.
    """

    def __init__(
        self, chunks: AsyncIterator[bytes], max_size: int, expected: Expected, declared: int | None
    ) -> None:
        self._chunks = chunks
        self.max_size = max_size
        self.expected = expected
        self.declared = declared
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if expected.md5 is not None else None

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in gathered(self._chunks):
            self.size += len(chunk)
            if self.size > self.max_size:
                raise UploadTooLarge(f"upload larger than storage.max_upload_size ({self.max_size} bytes)")
            self._sha256.update(chunk)
            if self._md5 is not None:
                self._md5.update(chunk)
            yield chunk
        if self.declared is not None and self.size != self.declared:
            raise ChecksumMismatch(f"body has {self.size} bytes, {self.declared} were announced")
        if self._md5 is not None and self._md5.digest() != self.expected.md5:
            raise ChecksumMismatch("body does not match Content-MD5")
        if self.expected.sha256 is not None and self._sha256.digest() != self.expected.sha256:
            raise ChecksumMismatch("body does not match the SHA-256 sent with it")
