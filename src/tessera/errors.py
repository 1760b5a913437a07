"""Errors a user can act on. Each carries the HTTP status the web layer answers with."""

from __future__ import annotations


class TesseraError(Exception):
    """Base class; ``status`` is the HTTP status that reports this error."""

    status = 500


class InvalidPath(TesseraError):
    """A virtual path that is malformed or tries to escape its mount."""

    status = 400


class UnknownMount(TesseraError):
    status = 404


class ObjectNotFound(TesseraError):
    status = 404


class BucketNotFound(ObjectNotFound):
    """The S3 bucket of a mount does not exist, so no key of it can."""


class ObjectExists(TesseraError):
    """A create-only write (``If-None-Match: *``) found an object already at the path."""

    status = 412


class ReadOnlyOrigin(TesseraError):
    """The mount's origin cannot be written (plain HTTP)."""

    status = 405


class ChecksumMismatch(TesseraError):
    """An upload's bytes do not match the checksum the client sent with them; nothing was stored."""

    status = 400


class UploadTooLarge(TesseraError):
    """An upload over ``storage.max_upload_size``."""

    status = 413


class InvalidOrigin(TesseraError):
    """A mount's origin cannot be used as configured: an unknown scheme, no bucket, no usable folder."""


class OriginUnavailable(TesseraError):
    """The origin failed (5xx, reset, short body) after every retry."""

    status = 502


class OriginUnsupported(OriginUnavailable):
    """The origin cannot serve this request at all (retrying would ask the same thing again)."""


class OriginTimeout(TesseraError):
    """The origin did not answer, or stalled mid-body, within the deadline after every retry."""

    status = 504


class VersionChanged(TesseraError):
    """The object was overwritten at the origin while it was being read.

    Raised instead of returning bytes of two versions; a new open sees the new version.
    """

    status = 502


class CacheFull(TesseraError):
    """The disk tier cannot hold an object that must be local (``local_path``)."""

    status = 507


class CacheLocked(TesseraError):
    """Another process owns the cache directory."""

    status = 503
