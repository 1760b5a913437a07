"""Derivatives of an upload: one decode at the largest width needed, then each width from the last.

Everything here is blocking libvips work for worker threads (``asyncio.to_thread``): pyvips releases
the GIL around libvips calls, and no function keeps state between calls (the libvips images it
passes around are immutable), so any number of threads may decode and render at once.

The upload is decoded once, with shrink-on-load where the format has it (a JPEG decoded at the DCT
scale that still covers the widest derivative, as Pillow's ``draft()`` does; a WebP scaled by
libwebp), straight to ``min(largest width, display width)``, and kept in memory. Every smaller
width is then resized from the previous one, never from the upload again.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyvips
from PIL import Image

from tessera.hosting.model import Format, ImageType, Probe, Rejected, effective_width

logger = logging.getLogger(__name__)

# No libvips operation cache (as in ``tessera.images.render``): uploads never repeat, and a cached
# load would keep the previous upload's pixels alive.
pyvips.cache_set_max(0)

#: Encoders working beside ``render``: a width is encoded while the next one is resized, so one
#: upload's derivatives take less time than their CPU time on more than one core. Shared by every
#: call (encodes never wait for anything, so callers cannot deadlock them).
_ENCODERS = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="derivatives")
#: ``fail_on``: a truncated file or a decode error fails the load instead of being served padded
#: with grey. ``truncated`` is the lowest level that still catches everything but libjpeg warnings.
_FAIL_ON = "truncated"
#: The EXIF tag of the copyright notice (``Copyright``, IFD0).
_EXIF_COPYRIGHT = 0x8298
#: Metadata fields libvips may attach on load; none of them goes out unless asked for.
_METADATA_PREFIXES = ("exif-", "xmp-", "iptc-", "icc-", "jpeg-", "png-", "gif-", "heif-", "webp-")


@dataclass(frozen=True, slots=True)
class Decoded:
    """An upload decoded once: upright 8-bit sRGB (alpha kept), at the widest width needed."""

    image: pyvips.Image
    width: int
    height: int
    #: The upload's own (upright) size: every derivative's height follows its aspect ratio.
    source_width: int = 0
    source_height: int = 0
    #: The EXIF copyright notice of the upload, if it had one (kept only when asked for).
    copyright: str | None = None

    def height_at(self, width: int) -> int:
        """The height of a derivative ``width`` pixels wide."""
        sw, sh = (self.source_width, self.source_height) if self.source_width else (self.width, self.height)
        return max(1, round(sh * width / sw))


@dataclass(frozen=True, slots=True)
class Rendition:
    """One derivative: its width (px), format and encoded bytes."""

    width: int
    format: Format
    data: bytes
    height: int = 0


def qualities(jpeg: int, webp: int, avif: int) -> dict[Format, int]:
    """The encoder quality of each format (``[hosting] jpeg_quality`` etc.)."""
    return {"jpeg": jpeg, "webp": webp, "avif": avif}


@functools.cache
def can_encode_avif() -> bool:
    """Whether this libvips has ``heifsave`` with an AV1 encoder (libheif built with aom or rav1e)."""
    if not pyvips.type_find("VipsOperation", "heifsave_buffer"):
        return False
    try:
        pyvips.Image.black(8, 8, bands=3).heifsave_buffer(compression="av1", Q=50)
    except pyvips.Error:
        return False
    return True


def available_formats(wanted: list[Format]) -> list[Format]:
    """``wanted`` without "avif" when libvips cannot encode it (logged once)."""
    if "avif" in wanted and not can_encode_avif():
        _warn_no_avif()
        return [f for f in wanted if f != "avif"]
    return list(wanted)


@functools.cache
def _warn_no_avif() -> None:
    logger.warning(
        "libvips %s cannot encode AVIF (no heifsave with AV1): no AVIF derivatives", _vips_version()
    )


def _vips_version() -> str:
    return ".".join(str(pyvips.version(i)) for i in range(3))


def decode(data: bytes, probe: Probe, largest: int) -> Decoded:
    """Decode ``data`` once, at ``min(largest, display width)``: upright, 8-bit sRGB, metadata removed.

    A truncated or corrupt upload raises ``Rejected(422, reason)``; so does any other libvips error.
    """
    try:
        return _decode(data, probe, largest)
    except pyvips.Error as exc:
        raise Rejected(422, f"the {probe.type} image cannot be decoded: {_first_line(exc)}") from None


def _first_line(exc: pyvips.Error) -> str:
    detail = (exc.detail or "").strip().splitlines()
    # libvips' first line names the loader ("VipsJpeg: Premature end of input file"): the useful one.
    return detail[0] if detail else exc.message


def _decode(data: bytes, probe: Probe, largest: int) -> Decoded:
    # Sizes and orientation as libvips sees them (a header read, no pixels), so that shrinking,
    # turning and every derivative's height agree with what is decoded.
    header = _open(data, probe.type)
    orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    swapped = orientation >= 5
    full_w, full_h = (header.height, header.width) if swapped else (header.width, header.height)
    width = max(1, effective_width(largest, full_w))
    height = max(1, round(full_h * width / full_w))
    # The stored (not yet turned) size wanted: turning comes last, on the small image.
    want_w, want_h = (height, width) if swapped else (width, height)
    image = _open(data, probe.type, **_shrink_on_load(probe.type, header.width, want_w))
    copyright = _copyright(image)
    if image.width != want_w or image.height != want_h:
        image = _resize(image, want_w, want_h)
    image = _in_memory(_without_metadata(_to_srgb8(image)))
    if orientation != 1:
        image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
        image = image.autorot().copy_memory()
        if image.get_typeof("orientation"):
            image.remove("orientation")
    return Decoded(image, image.width, image.height, full_w, full_h, copyright)


def _open(data: bytes, kind: ImageType, **options: Any) -> pyvips.Image:
    """The first frame of the upload (read when its pixels are asked for), with the loader of its
    sniffed type, never one libvips would pick from the bytes.

    Read through a memory source: ``*load_buffer`` would first copy the whole upload into libvips.
    """
    source = pyvips.Source.new_from_memory(data)
    options |= {"access": "sequential", "fail_on": _FAIL_ON}
    if kind == "jpeg":
        return pyvips.Image.jpegload_source(source, **options)
    if kind == "webp":
        return pyvips.Image.webpload_source(source, **options)
    if kind == "png":
        return pyvips.Image.pngload_source(source, **options)
    if kind == "gif":
        return pyvips.Image.gifload_source(source, **options)
    return pyvips.Image.heifload_source(source, **options)  # avif, heif


def _shrink_on_load(kind: ImageType, stored_w: int, want_w: int) -> dict[str, Any]:
    """Loader options that decode straight to as few pixels as still give ``want_w`` columns."""
    if kind == "jpeg":
        return {"shrink": _jpeg_shrink(stored_w, want_w)}
    if kind == "webp":
        # libwebp scales while decoding; leave the last factor of two to a proper resampling filter.
        return {"scale": min(1.0, 2 * want_w / stored_w)}
    return {}


def _jpeg_shrink(stored_w: int, want_w: int) -> int:
    """The largest DCT scale (1/8 to 1) whose output is still at least ``want_w`` wide."""
    for shrink in (8, 4, 2):
        if -(-stored_w // shrink) >= want_w:  # libjpeg rounds scaled sizes up
            return shrink
    return 1


def _resize(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """``image`` resampled (Lanczos 3) to exactly ``width`` x ``height``; alpha premultiplied meanwhile.

    Both passes are vertical reductions: libvips 8.14's ``reduceh`` has no SIMD path for 8-bit
    pixels and takes about 10 times its ``reducev`` (26 vs 3 ms for 1280x875 -> 1024 px), so the
    horizontal pass is a vertical one of the image turned a quarter (two rotations cost ~1 ms).
    """
    fmt, alpha = image.format, image.hasalpha()
    if alpha:
        image = image.premultiply()
    if height != image.height:
        # In memory before turning: a sequential (streamed) load cannot be read column-wise.
        image = _in_memory(_reduce_rows(image, height))
    if width != image.width:
        image = _reduce_rows(image.rot90(), width).rot270()
    if alpha:
        image = image.unpremultiply().cast(fmt)
    return image


def _in_memory(image: pyvips.Image) -> pyvips.Image:
    """``image`` computed into memory, no longer marked as read from a sequential load (the mark
    stays on copies and makes libvips read them in order: every later resize would run 2-3 times
    slower, and turning them would have to buffer)."""
    image = image.copy_memory()
    image.remove("vips-sequential")
    return image


def _reduce_rows(image: pyvips.Image, height: int) -> pyvips.Image:
    """``image`` with ``height`` rows: box-averaged by the integer part of a large factor, then Lanczos."""
    factor = image.height / height
    if factor >= 4:
        # The Lanczos kernel grows with the factor; averaging first leaves it a factor of 2 to 4.
        image = image.shrinkv(int(factor / 2))
        factor = image.height / height
    return image.reducev(factor, kernel="lanczos3")


def _to_srgb8(image: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB (plus alpha if any), from CMYK, grey, 16-bit or a tagged colour space."""
    if image.get_typeof("icc-profile-data"):
        try:
            # The embedded profile: CMYK, Adobe RGB, Display P3 ... to sRGB, 8 bits.
            return image.icc_transform("srgb", embedded=True, intent="perceptual", depth=8)
        except pyvips.Error:
            pass  # a broken profile: convert as if there were none
    if image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _copyright(image: pyvips.Image) -> str | None:
    if not image.get_typeof("exif-data"):
        return None
    exif = Image.Exif()
    try:
        exif.load(image.get("exif-data"))
    except Exception:  # damaged EXIF: no copyright to keep
        return None
    value = exif.get(_EXIF_COPYRIGHT)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    return value.strip("\x00 ") or None


def _without_metadata(image: pyvips.Image) -> pyvips.Image:
    image = image.copy()
    for name in image.get_fields():
        if name.startswith(_METADATA_PREFIXES) or name in ("orientation", "resolution-unit"):
            image.remove(name)
    return image


def decode_and_render(
    data: bytes,
    probe: Probe,
    widths: list[int],
    formats: list[Format],
    qualities: Mapping[Format, int],
    keep_copyright: bool = False,
) -> list[Rendition]:
    """``decode`` once to the largest of ``widths``, then ``render`` (none for no ``formats``: the
    decode alone checks the upload)."""
    return render(decode(data, probe, max(widths)), widths, formats, qualities, keep_copyright)


def render(
    decoded: Decoded,
    widths: Iterable[int],
    formats: Iterable[Format],
    qualities: Mapping[Format, int],
    keep_copyright: bool = False,
) -> list[Rendition]:
    """Each distinct effective width in each format, widest first, each width resized from the last.

    Metadata is stripped; with ``keep_copyright`` the upload's EXIF copyright (only that) is kept.
    """
    formats = list(formats)
    image = decoded.image
    copyright = decoded.copyright if keep_copyright else None
    encoding: list[tuple[pyvips.Image, Format, Future[bytes]]] = []
    for width in sorted({effective_width(w, decoded.width) for w in widths}, reverse=True):
        if width != image.width:
            image = _resize(image, width, decoded.height_at(width)).copy_memory()
        for fmt in formats:
            encoding.append((image, fmt, _ENCODERS.submit(_encode, image, fmt, qualities[fmt], copyright)))
    return [Rendition(im.width, fmt, future.result(), im.height) for im, fmt, future in encoding]


def _copyright_exif(copyright: str | None) -> bytes | None:
    if not copyright:
        return None
    exif = Image.Exif()
    exif[_EXIF_COPYRIGHT] = copyright
    return b"Exif\x00\x00" + exif.tobytes()


#: Encoder efforts, measured on a 1024 x 768 photo-like image with libvips 8.14: WebP effort 2 costs
#: 44-68 ms of CPU against 66-124 ms at libvips' default 4, for files 2 % larger; AVIF effort 2
#: costs 195 ms against 1,035 ms at 4, for files 2 % larger (effort 0: 75 ms, but 46 % larger).
WEBP_EFFORT = 2
AVIF_EFFORT = 2


def _encode(image: pyvips.Image, fmt: Format, quality: int, copyright: str | None) -> bytes:
    # A header of its own: savers write metadata onto the image they are given (the EXIF rebuilt
    # for the output), and one image is encoded to several formats at once (two threads writing
    # one image's metadata abort the process).
    image = image.copy()
    if fmt == "jpeg" and image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    exif = _copyright_exif(copyright)
    if exif is not None:
        image.set_type(pyvips.GValue.blob_type, "exif-data", exif)
        # libvips rebuilds the EXIF from these fields on save, dropping tags that have none.
        image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Copyright", copyright)
    strip = exif is None
    if fmt == "jpeg":
        data = image.jpegsave_buffer(Q=quality, strip=strip, optimize_coding=False, interlace=False)
    elif fmt == "webp":
        data = image.webpsave_buffer(Q=quality, strip=strip, effort=WEBP_EFFORT)
        if strip:
            return _webp_without_metadata(bytes(data))
    else:
        data = image.heifsave_buffer(Q=quality, strip=strip, compression="av1", effort=AVIF_EFFORT)
    return bytes(data)


def _webp_without_metadata(data: bytes) -> bytes:
    """``data`` without EXIF and XMP chunks: libvips 8.14's ``webpsave`` writes its own EXIF even
    when told to strip (only default tags, but a stripped derivative should carry none)."""
    chunks, at = [], 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        chunk = data[at : at + 8 + size + (size & 1)]
        if chunk[:4] == b"VP8X":
            flags = chunk[8] & ~0x0C  # the EXIF (0x08) and XMP (0x04) present flags
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if chunk[:4] not in (b"EXIF", b"XMP "):
            chunks.append(chunk)
        at += 8 + size + (size & 1)
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body
