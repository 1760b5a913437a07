"""The type of an upload, from its first bytes alone (never its name or ``Content-Type``)."""

from __future__ import annotations

import functools
import struct

import pyvips

from tessera.hosting.model import ImageType, Rejected

#: Bytes ``sniff`` needs to see: enough for every signature and an ``ftyp`` box with a few brands.
SNIFF_BYTES = 64

_ACCEPTED = "JPEG, PNG, WebP, GIF, AVIF or HEIF"
#: ``ftyp`` brands (major or compatible) of each ISO BMFF still-image type libheif reads.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def sniff(head: bytes) -> ImageType:
    """The image type the bytes start with; ``Rejected(415)`` for anything else.

    ``head`` is the start of the body (``SNIFF_BYTES`` are enough; more is fine).
    """
    if not head:
        raise Rejected(415, "the upload is empty (0 bytes)")
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        kind = _bmff_type(head)
        if kind is not None:
            if not heif_readable(kind):
                raise Rejected(415, f"{kind.upper()} images cannot be read by this server; send {_ACCEPTED}")
            return kind
    raise Rejected(415, f"not a supported image ({_describe(head)}); send {_ACCEPTED}")


def _bmff_type(head: bytes) -> ImageType | None:
    """``avif`` or ``heif`` from the brands of the leading ``ftyp`` box, if it names one."""
    size = struct.unpack(">I", head[:4])[0]
    end = min(len(head), size) if size >= 16 else 0
    brands = {head[8:12]} | {head[at : at + 4] for at in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None


@functools.cache
def heif_readable(kind: ImageType) -> bool:
    """Whether the installed libvips reads ``kind`` (AVIF needs libheif's AV1 decoder, HEIF its HEVC one).

    Checked once: a 2 x 2 image is encoded and read back. When libvips cannot encode it, the presence
    of the loader decides.
    """
    if not pyvips.type_find("VipsOperation", "heifload_buffer"):
        return False
    compression = "av1" if kind == "avif" else "hevc"
    try:
        sample = pyvips.Image.black(2, 2, bands=3).heifsave_buffer(compression=compression)
    except pyvips.Error:
        return True
    try:
        pyvips.Image.new_from_buffer(sample, "").avg()
    except pyvips.Error:
        return False
    return True


def _describe(head: bytes) -> str:
    """A short guess at what was sent instead, for the reason string."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG is not accepted"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "this is HTML"
    if text.startswith(b"<"):
        return "this looks like XML or HTML"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return f"this is {name}"
    if head[4:8] == b"ftyp":
        return "an ISO media file that is not an AVIF or HEIF image"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head[:SNIFF_BYTES]):
        return "this is text"
    return "unknown binary data"


_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (b"8BPS", "a Photoshop document"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
)
