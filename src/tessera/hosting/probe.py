"""What an upload's header says (type, size, frames, EXIF orientation), read without decoding pixels.

Why small parsers and not libvips' header-only load (``bench/hosting_rejection.py`` measures both):
``pyvips.Image.new_from_buffer(data, "", access="sequential")`` costs 130-250 µs of CPU per call even
for a 300 KB PNG bomb (pyvips/GObject per-call overhead), and for a GIF it scans every frame (400-600
µs for 10,000 frames) and stops counting at 4,097. The parsers below take 4-160 µs per bomb, stop
at the first limit crossed (frame ``max_frames + 1``), and check what a header-only load does not: the
PNG chunk CRCs, that the file ends where its format says (JPEG EOI, PNG IEND, GIF trailer, RIFF size),
and that nothing follows that end. They never decompress anything. Corrupt pixel data is left to the
full decode with libvips' fail-on settings (the derivatives side).

AVIF and HEIF go through libvips' header load (libheif parses the box tree; at ~200 µs it meets the
bound): their size lives behind ``meta``/``iprp``/``ipco``/``ipma`` indirections, not worth a parser.

Polyglots: a file that goes on past its format's end (a JPEG followed by a ZIP, an HTML page or a
script) is refused with 422, whatever follows, instead of being stripped: the original is served as
uploaded at ``/i/{link}/original``, and refusing needs no second copy of the body and no rule about
which trailers are harmless. Only padding (NUL, 0xFF, whitespace) and, for JPEG, further complete
JPEG images (the MPF previews and depth maps cameras append after the first image) may follow. Phone
"motion photos" (a video after the JPEG) are therefore refused too; the reason says why.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

import pyvips

from tessera.config import format_size
from tessera.hosting.model import ImageType, Limits, Probe, Rejected
from tessera.hosting.sniff import SNIFF_BYTES, sniff

_NAMES: dict[ImageType, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WebP",
    "gif": "GIF",
    "avif": "AVIF",
    "heif": "HEIF",
}
#: The first byte after an image's end that is not padding some encoders leave (searched, not copied).
_NOT_PADDING = re.compile(rb"[^\x00\xff \t\r\n]")
#: The same before an appended JPEG, whose first byte is 0xFF.
_NOT_PADDING_BEFORE_JPEG = re.compile(rb"[^\x00 \t\r\n]")
#: Complete JPEG images allowed after the first one (MPF: previews, depth maps, gain maps).
_MAX_APPENDED_JPEGS = 8


def probe(data: bytes, limits: Limits) -> Probe:
    """Type, size, frames and orientation of ``data``; ``Rejected`` (413, 415, 422) when it breaks a limit.

    Never decodes pixels: the CPU it takes depends on the structure of the file, not on its pixels.
    """
    if len(data) > limits.max_bytes:
        limit = format_size(limits.max_bytes)
        raise Rejected(413, f"the upload is {len(data):,} bytes, over the {limit} limit")
    kind = sniff(data[:SNIFF_BYTES])
    return _READERS[kind](data, limits)


def check_size(kind: ImageType, width: int, height: int, limits: Limits) -> None:
    """``Rejected(422)`` when a ``width`` x ``height`` image breaks ``limits`` (or is empty)."""
    name = _NAMES[kind]
    if width <= 0 or height <= 0:
        raise Rejected(422, f"the {name} header declares an empty image ({width} x {height})")
    if width * height > limits.max_pixels:
        raise Rejected(
            422,
            f"image is {width} x {height} = {_megapixels(width * height)} MP, "
            f"over the {_megapixels(limits.max_pixels)} MP limit",
        )
    if width > limits.max_width:
        raise Rejected(422, f"image is {width} x {height}: wider than the {limits.max_width} px limit")
    if height > limits.max_height:
        raise Rejected(422, f"image is {width} x {height}: higher than the {limits.max_height} px limit")


def _megapixels(pixels: int) -> str:
    value = pixels / 1e6
    return f"{round(value):,}" if value >= 100 else f"{value:.3g}"


def _too_many_frames(kind: ImageType, limits: Limits) -> Rejected:
    limit = limits.max_frames
    return Rejected(422, f"the {_NAMES[kind]} animation has more than {limit} frames (the limit is {limit})")


def _cut_short(kind: ImageType, what: str) -> Rejected:
    return Rejected(422, f"the {_NAMES[kind]} file is cut short ({what}): upload the whole file")


def _check_end(kind: ImageType, data: bytes, end: int) -> None:
    """``Rejected(422)`` when anything but padding follows the image's ``end``."""
    if _NOT_PADDING.search(data, end):
        raise Rejected(
            422,
            f"{len(data) - end:,} bytes follow the end of the {_NAMES[kind]} image (at byte {end:,}): "
            "data appended to an image (another file, a script, a video) is not accepted",
        )


class _Steps:
    """A bound on the segments, chunks or blocks a walk visits: ``BASE + len(data) // bytes_per_step``.

    Real encoders write few large chunks (PNG IDAT of 8 KB and more, GIF sub-blocks of 256 bytes), so
    they stay far below it; a file of millions of empty chunks would otherwise cost seconds of Python
    (about 1 µs a step: a 40 MB body is held to about 0.2 s).
    """

    BASE = 10_000

    __slots__ = ("bytes_per_step", "kind", "left")

    def __init__(self, kind: ImageType, data: bytes, bytes_per_step: int = 256) -> None:
        self.kind, self.bytes_per_step = kind, bytes_per_step
        self.left = self.BASE + len(data) // bytes_per_step

    def take(self, count: int = 1) -> None:
        self.left -= count
        if self.left < 0:
            raise Rejected(
                422,
                f"the {_NAMES[self.kind]} file is made of too many small chunks for its size "
                f"(more than {self.BASE:,} + 1 per {self.bytes_per_step} bytes)",
            )


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block; 1 when absent or unreadable."""
    if tiff[:4] == b"II*\x00":
        order = "<"
    elif tiff[:4] == b"MM\x00*":
        order = ">"
    else:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for index in range(min(count, 512)):
            tag, kind, number = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * index)
            if tag == 0x0112:
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 10 + 12 * index)
                return value if kind == 3 and number == 1 and 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


# --- JPEG -----------------------------------------------------------------------------------------

#: Frame headers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOS, _EOI, _APP1 = 0xDA, 0xD9, 0xE1
#: Markers without a length: TEM and RST0-7.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: The end of entropy-coded data: 0xFF (maybe repeated) then anything but a stuffed 0 or a restart.
#: Written with a literal first byte so that the regex engine searches for it at C speed (``\xff+``
#: first makes it try every position: 24 times slower, 23 ms for a 2.8 MB JPEG).
_SCAN_END = re.compile(rb"\xff(?:\xff)*[^\x00\xd0-\xd7\xff]")


def _jpeg(data: bytes, limits: Limits) -> Probe:
    def check(width: int, height: int) -> None:
        check_size("jpeg", width, height, limits)

    steps = _Steps("jpeg", data)
    width, height, orientation, end = _walk_jpeg(data, 0, check, steps)
    for _ in range(_MAX_APPENDED_JPEGS):
        found = _NOT_PADDING_BEFORE_JPEG.search(data, end)
        if found is None or not data.startswith(b"\xff\xd8\xff", found.start()):
            break
        end = _walk_jpeg(data, found.start(), None, steps)[3]
    _check_end("jpeg", data, end)
    return Probe("jpeg", width, height, orientation=orientation)


def _walk_jpeg(
    data: bytes, start: int, check: Callable[[int, int], None] | None, steps: _Steps
) -> tuple[int, int, int, int]:
    """Walk the markers of the JPEG at ``start`` to its EOI: ``(width, height, orientation, end)``.

    ``check`` sees the frame size as soon as the frame header is read (before any scan is walked).
    """
    size: tuple[int, int] | None = None
    orientation = 1
    pos = start + 2
    while True:
        steps.take()
        if pos >= len(data):
            raise _cut_short("jpeg", "no end-of-image marker" if size else "it ends before the image size")
        if data[pos] != 0xFF:
            raise Rejected(422, f"the JPEG file is corrupt: no marker at byte {pos:,} where one must be")
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            continue
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            if size is None:
                raise Rejected(422, "the JPEG file ends before any image data")
            return size[0], size[1], orientation, pos
        if marker in _STANDALONE:
            continue
        if pos + 2 > len(data):
            raise _cut_short("jpeg", "in the middle of a header segment")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise Rejected(422, f"the JPEG file is corrupt: a segment at byte {pos:,} has length {length}")
        segment = data[pos + 2 : pos + length]
        if len(segment) < length - 2:
            raise _cut_short("jpeg", "in the middle of a header segment")
        if marker in _SOF:
            if size is not None:
                raise Rejected(422, "the JPEG file is corrupt: it has two frame headers")
            if len(segment) < 6:
                raise Rejected(422, "the JPEG file is corrupt: its frame header is too short")
            height, width = struct.unpack_from(">HH", segment, 1)
            if height == 0:
                raise Rejected(422, "the JPEG frame header leaves the height to a DNL marker (not supported)")
            if check is not None:
                check(width, height)
            size = (width, height)
        elif marker == _APP1 and segment.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(segment[6:])
        pos += length
        if marker == _SOS:
            if size is None:
                raise Rejected(422, "the JPEG file is corrupt: image data comes before the frame header")
            scan_end = _SCAN_END.search(data, pos)
            if scan_end is None:
                raise _cut_short("jpeg", "in the middle of the image data")
            pos = scan_end.end() - 2


# --- PNG ------------------------------------------------------------------------------------------

#: Bit depths each PNG colour type allows.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_MAX = 2**31 - 1


def _png(data: bytes, limits: Limits) -> Probe:
    if len(data) < 33:
        raise _cut_short("png", "it ends before the image size")
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise Rejected(422, "the PNG file is corrupt: it does not start with an IHDR header of 13 bytes")
    if _stored_crc(data, 33) != _crc(data, 12, 29):
        raise Rejected(422, "the PNG header (IHDR) fails its CRC check: the file is damaged")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if width > _PNG_MAX or height > _PNG_MAX:
        raise Rejected(422, f"the PNG header declares an impossible size ({width} x {height})")
    check_size("png", width, height, limits)
    if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise Rejected(
            422,
            f"the PNG header is invalid (colour type {colour}, bit depth {depth}, methods {compression}/"
            f"{filtering}/{interlace})",
        )
    frames, orientation, seen_data = 1, 1, False
    steps = _Steps("png", data)
    pos = 33
    while True:
        steps.take()
        if pos + 12 > len(data):
            raise _cut_short("png", "no IEND chunk" if seen_data else "it ends before the image data")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > _PNG_MAX or end > len(data):
            raise _cut_short("png", f"the {kind!r} chunk at byte {pos:,} goes past the end")
        if not kind.isalpha():
            raise Rejected(422, f"the PNG file is corrupt: no chunk at byte {pos:,}")
        # Image data (IDAT, fdAT) is not checked here: the decode checks it, and it is most of the bytes.
        if kind not in (b"IDAT", b"fdAT") and _stored_crc(data, end) != _crc(data, pos + 4, end - 4):
            name = kind.decode("latin-1")
            raise Rejected(422, f"the PNG {name} chunk fails its CRC check: the file is damaged")
        if kind == b"IDAT":
            seen_data = True
        elif kind == b"acTL" and length >= 8:
            frames = max(1, struct.unpack_from(">I", data, pos + 8)[0])
            if frames > limits.max_frames:
                raise _too_many_frames("png", limits)
        elif kind == b"eXIf":
            orientation = _exif_orientation(data[pos + 8 : end - 4])
        elif kind == b"IEND":
            if not seen_data:
                raise Rejected(422, "the PNG file has no image data (IDAT)")
            _check_end("png", data, end)
            return Probe("png", width, height, frames=frames, orientation=orientation)
        pos = end


def _stored_crc(data: bytes, chunk_end: int) -> int:
    return int(struct.unpack_from(">I", data, chunk_end - 4)[0])


def _crc(data: bytes, start: int, end: int) -> int:
    return zlib.crc32(memoryview(data)[start:end])


# --- GIF ------------------------------------------------------------------------------------------


def _gif(data: bytes, limits: Limits) -> Probe:
    if len(data) < 13:
        raise _cut_short("gif", "it ends before the image size")
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    check_size("gif", width, height, limits)
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames = 0
    steps = _Steps("gif", data, bytes_per_step=128)  # full sub-blocks are 256 bytes
    while True:
        steps.take()
        if pos >= len(data):
            raise _cut_short("gif", "no trailer" if frames else "it ends before the first frame")
        block = data[pos]
        if block == 0x3B:
            if not frames:
                raise Rejected(422, "the GIF file has no frames")
            _check_end("gif", data, pos + 1)
            return Probe("gif", width, height, frames=frames)
        if block == 0x21:
            pos = _skip_sub_blocks(data, pos + 2, steps)
        elif block == 0x2C:
            if pos + 11 > len(data):
                raise _cut_short("gif", "in a frame header")
            left, top, frame_width, frame_height, packed = struct.unpack_from("<HHHHB", data, pos + 1)
            if left + frame_width > width or top + frame_height > height:
                # Decoders grow the canvas to the frame, so the frame's extent is held to the limits too.
                width, height = max(width, left + frame_width), max(height, top + frame_height)
                check_size("gif", width, height, limits)
            frames += 1
            if frames > limits.max_frames:
                raise _too_many_frames("gif", limits)
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1, steps)  # after the LZW minimum code size
        else:
            raise Rejected(422, f"the GIF file is corrupt: unknown block 0x{block:02x} at byte {pos:,}")


def _skip_sub_blocks(data: bytes, pos: int, steps: _Steps) -> int:
    """The position after the chain of data sub-blocks at ``pos`` (each: a length byte, then the bytes)."""
    size, visited = len(data), 0
    while pos < size:
        length = data[pos]
        pos += 1 + length
        visited += 1
        if length == 0:
            steps.take(visited)
            return pos
        if visited > steps.left:
            steps.take(visited)
    raise _cut_short("gif", "in the middle of a frame")


# --- WebP -----------------------------------------------------------------------------------------

_ANIMATION, _EXIF = 0x02, 0x08


def _webp(data: bytes, limits: Limits) -> Probe:
    if len(data) < 30:
        raise _cut_short("webp", "it ends before the image size")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    first = data[12:16]
    if first == b"VP8X":
        flags = data[20]
        canvas: tuple[int, int] | None = (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    elif first in (b"VP8 ", b"VP8L"):
        flags, canvas = 0, None
    else:
        raise Rejected(422, f"the WebP file is corrupt: it starts with a {first!r} chunk")
    width, height = canvas or _bitstream_size(data, 12)
    check_size("webp", width, height, limits)
    end = 8 + riff_size + (riff_size & 1)
    if end > len(data):
        raise _cut_short("webp", f"its header says {end:,} bytes, {len(data):,} were sent")
    frames, orientation = 0, 1
    steps = _Steps("webp", data)
    pos = 12
    while pos + 8 <= end:
        steps.take()
        kind, length = struct.unpack_from("<4sI", data, pos)
        chunk_end = pos + 8 + length + (length & 1)
        if chunk_end > end:
            raise Rejected(422, f"the WebP file is corrupt: the {kind!r} chunk goes past the end of the file")
        if kind == b"ANMF":
            frames += 1
            if frames > limits.max_frames:
                raise _too_many_frames("webp", limits)
        elif kind in (b"VP8 ", b"VP8L") and canvas is not None:
            # A still image in an extended file: its bitstream must be the canvas' size (libwebp checks).
            if _bitstream_size(data, pos) != canvas:
                stream_width, stream_height = _bitstream_size(data, pos)
                check_size("webp", stream_width, stream_height, limits)
                raise Rejected(
                    422,
                    f"the WebP file is corrupt: its image is {stream_width} x {stream_height}, "
                    f"its canvas {width} x {height}",
                )
        elif kind == b"EXIF" and flags & _EXIF:
            exif = data[pos + 8 : pos + 8 + length]
            orientation = _exif_orientation(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        pos = chunk_end
    if flags & _ANIMATION and not frames:
        raise Rejected(422, "the WebP file says it is animated but has no frames")
    _check_end("webp", data, end)
    return Probe("webp", width, height, frames=max(frames, 1), orientation=orientation)


def _bitstream_size(data: bytes, pos: int) -> tuple[int, int]:
    """Width and height from the ``VP8 `` (lossy) or ``VP8L`` (lossless) chunk at ``pos``."""
    if len(data) < pos + 18:
        raise _cut_short("webp", "it ends before the image size")
    if data[pos : pos + 4] == b"VP8 ":
        if data[pos + 11 : pos + 14] != b"\x9d\x01\x2a":
            raise Rejected(422, "the WebP file is corrupt: its VP8 frame has no key frame start code")
        width, height = struct.unpack_from("<HH", data, pos + 14)
        return width & 0x3FFF, height & 0x3FFF
    if data[pos + 8] != 0x2F:
        raise Rejected(422, "the WebP file is corrupt: its lossless stream has no signature")
    (bits,) = struct.unpack_from("<I", data, pos + 9)
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1


# --- AVIF, HEIF -----------------------------------------------------------------------------------


def _heif(kind: ImageType, data: bytes, limits: Limits) -> Probe:
    try:
        image = pyvips.Image.new_from_buffer(data, "", access="sequential")  # reads the header only
    except pyvips.Error as error:
        detail = _libvips_reason(str(error))
        raise Rejected(422, f"the {_NAMES[kind]} header cannot be read ({detail})") from None
    check_size(kind, image.width, image.height, limits)
    # libheif applies the irot/imir transforms itself, so there is no orientation left to apply.
    return Probe(kind, image.width, image.height)


def _libvips_reason(message: str) -> str:
    """The useful line of a libvips error (``heif: … Image size 60000x60000 exceeds …``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if line.startswith("heif:")] or lines[1:] or ["unreadable"]
    return re.sub(r"\s*\(\d+\.\d+\)$", "", useful[0].removeprefix("heif: "))


_READERS: dict[ImageType, Callable[[bytes, Limits], Probe]] = {
    "jpeg": _jpeg,
    "png": _png,
    "gif": _gif,
    "webp": _webp,
    "avif": lambda data, limits: _heif("avif", data, limits),
    "heif": lambda data, limits: _heif("heif", data, limits),
}
