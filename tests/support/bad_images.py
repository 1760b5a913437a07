"""Upload corpus for image hosting (issue 12), built in memory: hostile files and good ones.

``bad_corpus()`` maps a file name (with the extension a client might claim) to ``(bytes, status)``: the
4xx status an upload of it must get under ``LIMITS`` (the ``[hosting]`` defaults). 413 is too large a
body, 415 not an image type we take, 422 an image refused from its header or structure (a bomb, a
truncated or damaged file, a polyglot). ``good_corpus()`` maps names to bytes that must be accepted, and
``good_probes()`` to what ``probe`` must say about each (type, size, frames, EXIF orientation).

Both are built once per process (the 50,000 x 50,000 PNG bomb takes about a second to compress) and
shared: the validation tests, the HTTP tests and the derivatives tests use the same files. Nothing
binary is committed.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib

import pyvips
from PIL import ExifTags, Image

from tessera.hosting.model import Limits, Probe
from tests.support.hostile_files import patch_jpeg_frame

#: The ``[hosting]`` defaults.
LIMITS = Limits(
    max_bytes=40 * 1024 * 1024, max_pixels=50_000_000, max_width=16_384, max_height=16_384, max_frames=100
)
#: Frames of the GIF bomb.
BOMB_FRAMES = 10_000


def _picture(width: int = 600, height: int = 400) -> pyvips.Image:
    """A small RGB picture with detail (so that every format gives more than a few bytes)."""
    return (pyvips.Image.xyz(width, height) % 256).cast("uchar").bandjoin_const([128])[0:3]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 50_000) -> bytes:
    """A real 1-bit ``side`` x ``side`` PNG of zeros: 2.5 Gpx in about 300 KB (zlib's 1:1032 at most).

    Compressed rows at a time, as a bomb maker would, and split into 64 KB IDAT chunks.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    rows_per_call = 256
    parts = [packer.compress(row * min(rows_per_call, side - done)) for done in range(0, side, rows_per_call)]
    stream = b"".join(parts) + packer.flush()
    idat = b"".join(_png_chunk(b"IDAT", stream[at : at + 65536]) for at in range(0, len(stream), 65536))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + idat + _png_chunk(b"IEND", b"")


def gif_bomb(frames: int = BOMB_FRAMES) -> bytes:
    """A 64 x 64 GIF of ``frames`` one-pixel frames (a control extension, a descriptor, 5 bytes of LZW)."""
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW: minimum code size 2, clear, index 0, end
    )
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    screen = struct.pack("<HHBBB", 64, 64, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return b"GIF89a" + screen + loop + frame * frames + b"\x3b"


def _jpeg(**options: object) -> bytes:
    return bytes(_picture().jpegsave_buffer(Q=85, **options))


def _png() -> bytes:
    return bytes(_picture().pngsave_buffer())


def _webp(**options: object) -> bytes:
    return bytes(_picture().webpsave_buffer(**options))


def _gif() -> bytes:
    return bytes(_picture().gifsave_buffer())


def _animated(frames: int, width: int = 32, height: int = 24) -> pyvips.Image:
    pages = [
        pyvips.Image.black(width, height).new_from_image([index * 40 % 256, 80, 160]).cast("uchar")
        for index in range(frames)
    ]
    strip = pyvips.Image.arrayjoin(pages, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [100] * frames)
    return strip


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _png_bad_ihdr_crc() -> bytes:
    data = bytearray(_png())
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims ``width`` x ``height`` (with a correct CRC: only the size lies)."""
    data = _png()
    return data[:8] + _png_chunk(b"IHDR", struct.pack(">II", width, height) + data[24:29]) + data[33:]


def _webp_claiming(side: int) -> bytes:
    """A lossy WebP whose VP8 frame header claims ``side`` x ``side`` (at most 16383)."""
    data = _webp(Q=80)
    at = data.index(b"\x9d\x01\x2a") + 3
    return data[:at] + struct.pack("<HH", side, side) + data[at + 4 :]


def _riff_padded(webp: bytes, count: int) -> bytes:
    """``webp`` with ``count`` empty ``JUNK`` chunks before its end (the RIFF size grown to match)."""
    body = webp[12:] + b"JUNK\x00\x00\x00\x00" * count
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _gif_commented(gif: bytes, sub_blocks: bytes) -> bytes:
    """``gif`` with a comment extension made of ``sub_blocks`` after its header and colour table."""
    packed = gif[10]
    at = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    return gif[:at] + b"\x21\xfe" + sub_blocks + b"\x00" + gif[at:]


def _heif_claiming(compression: str, side: int) -> bytes:
    """An AVIF or HEIC whose every ``ispe`` (image spatial extent) property claims ``side`` x ``side``."""
    data = bytearray(_picture(64, 48).heifsave_buffer(compression=compression))
    at = data.find(b"ispe")
    while at >= 0:
        data[at + 8 : at + 16] = struct.pack(">II", side, side)
        at = data.find(b"ispe", at + 4)
    return bytes(data)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", "<script>alert(document.cookie)</script>")
    return buffer.getvalue()


def _exif_jpeg(orientation: int = 1, gps: bool = False, width: int = 640, height: int = 480) -> bytes:
    """A camera-like JPEG from Pillow with an EXIF orientation and, if asked, GPS tags."""
    image = Image.new("RGB", (width, height), (200, 120, 40))
    image.paste((20, 60, 200), (0, 0, width // 3, height // 2))  # a corner mark, to see rotations
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Tessera"
    exif[ExifTags.Base.Model] = "Test Phone"
    exif[ExifTags.Base.Orientation] = orientation
    if gps:
        position = exif.get_ifd(ExifTags.IFD.GPSInfo)
        position[ExifTags.GPS.GPSLatitudeRef] = "N"
        position[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
        position[ExifTags.GPS.GPSLongitudeRef] = "E"
        position[ExifTags.GPS.GPSLongitude] = (2.0, 21.0, 7.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, exif=exif)
    return buffer.getvalue()


def _converted(data: bytes, suffix: str) -> bytes:
    """``data`` saved by libvips in another format, its metadata (EXIF orientation included) kept."""
    return bytes(pyvips.Image.new_from_buffer(data, "").write_to_buffer(suffix))


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (300, 200), (10, 200, 30, 5)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _pillow_animated_gif(frames: int) -> bytes:
    pictures = [
        Image.new("RGB", (40, 30), (index * 7 % 256, 255 - index * 5 % 256, 90)) for index in range(frames)
    ]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "GIF", save_all=True, append_images=pictures[1:], duration=100, loop=0)
    return buffer.getvalue()


@functools.cache
def bad_corpus() -> dict[str, tuple[bytes, int]]:
    """Hostile uploads: name -> (bytes, the status an upload of it gets under ``LIMITS``)."""
    jpeg, png, webp, gif = _jpeg(), _png(), _webp(Q=80), _gif()
    scan = jpeg.index(b"\xff\xda")
    return {
        # Bombs: refused from the header alone.
        "bomb-50000x50000.png": (png_bomb(), 422),
        "sof-65000x65000.jpg": (patch_jpeg_frame(jpeg, 65000, 65000), 422),
        "frames-10000.gif": (gif_bomb(), 422),
        "ihdr-65500x65500.png": (_png_claiming(65500, 65500), 422),
        "ihdr-20000x1.png": (_png_claiming(20000, 1), 422),  # few pixels, but too wide
        "vp8-16383x16383.webp": (_webp_claiming(16383), 422),
        "ispe-60000x60000.avif": (_heif_claiming("av1", 60000), 422),
        "ispe-60000x60000.heic": (_heif_claiming("hevc", 60000), 422),
        "frames-150.webp": (bytes(_animated(150, 8, 8).webpsave_buffer()), 422),
        "oversize.jpg": (jpeg + bytes(LIMITS.max_bytes), 413),
        # Millions of tiny chunks: cheap to make, costly to walk; refused past a budget per byte.
        "tiny-segments.jpg": (jpeg[:2] + b"\xff\xfe\x00\x02" * 500_000 + jpeg[2:], 422),
        "tiny-chunks.png": (png[:33] + _png_chunk(b"prIv", b"") * 200_000 + png[33:], 422),
        "tiny-sub-blocks.gif": (_gif_commented(gif, b"\x01 " * 1_000_000), 422),
        "tiny-chunks.webp": (_riff_padded(webp, 300_000), 422),
        # Cut short: before the size, in the middle of the image data, just before the end.
        "truncated-header.jpg": (jpeg[:20], 422),
        "truncated-before-scan.jpg": (jpeg[: scan + 4], 422),
        "truncated-mid-scan.jpg": (_cut(jpeg, 0.6), 422),
        "truncated-no-eoi.jpg": (jpeg[:-2], 422),
        "truncated-header.png": (png[:20], 422),
        "truncated-mid-idat.png": (_cut(png, 0.6), 422),
        "truncated-no-iend.png": (png[:-12], 422),
        "truncated-header.webp": (webp[:24], 422),
        "truncated-mid-data.webp": (_cut(webp, 0.6), 422),
        "truncated-last-byte.webp": (webp[:-1], 422),
        "truncated-mid-frame.gif": (_cut(gif, 0.6), 422),
        # Damaged.
        "bad-ihdr-crc.png": (_png_bad_ihdr_crc(), 422),
        "jpeg-dnl-height-0.jpg": (patch_jpeg_frame(jpeg, 600, 0), 422),
        # Not images, whatever the name says.
        "empty.jpg": (b"", 415),
        "page.html.jpg": (b"<!DOCTYPE html>\n<html><body><script>alert(1)</script></body></html>\n", 415),
        "drawing.svg.jpg": (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b"<script>alert(1)</script></svg>\n",
            415,
        ),
        "notes.txt.png": (b"just some text\n" * 10, 415),
        "archive.zip.jpg": (_zip(), 415),
        "document.pdf.png": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415),
        "movie.mp4.jpg": (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(32), 415),
        "tiff.tif.jpg": (bytes(_picture(16, 16).tiffsave_buffer()), 415),
        # Polyglots: a valid image, then another file (refused: see tessera.hosting.probe).
        "polyglot-zip.jpg": (jpeg + _zip(), 422),
        "polyglot-script.jpg": (jpeg + b"<script>alert(1)</script>", 422),
        "polyglot-html.png": (png + b"<html><script>alert(1)</script></html>", 422),
        "polyglot-zip.gif": (gif + _zip(), 422),
        "polyglot-script.webp": (webp + b"<script>alert(1)</script>", 422),
    }


@functools.cache
def _good() -> dict[str, tuple[bytes, Probe]]:
    jpeg = _jpeg()
    return {
        "pixel-1x1.png": (bytes(pyvips.Image.black(1, 1).pngsave_buffer()), Probe("png", 1, 1)),
        "pixel-1x1.gif": (bytes(pyvips.Image.black(1, 1).gifsave_buffer()), Probe("gif", 1, 1)),
        "plain.jpg": (jpeg, Probe("jpeg", 600, 400)),
        "progressive.jpg": (_jpeg(interlace=True), Probe("jpeg", 600, 400)),
        "cmyk.jpg": (_cmyk_jpeg(), Probe("jpeg", 300, 200)),
        "phone-orientation-6.jpg": (_exif_jpeg(orientation=6), Probe("jpeg", 640, 480, orientation=6)),
        "gps.jpg": (_exif_jpeg(gps=True), Probe("jpeg", 640, 480)),
        "phone-orientation-6.webp": (
            _converted(_exif_jpeg(orientation=6), ".webp"),
            Probe("webp", 640, 480, orientation=6),
        ),
        "phone-orientation-6.png": (
            _converted(_exif_jpeg(orientation=6), ".png"),
            Probe("png", 640, 480, orientation=6),
        ),
        "mpf-two-images.jpg": (jpeg + _jpeg(), Probe("jpeg", 600, 400)),
        "padded.jpg": (jpeg + b"\x00" * 64, Probe("jpeg", 600, 400)),
        "plain.png": (_png(), Probe("png", 600, 400)),
        "16bit.png": (
            bytes((_picture() * 256).cast("ushort").copy(interpretation="rgb16").pngsave_buffer(bitdepth=16)),
            Probe("png", 600, 400),
        ),
        "interlaced.png": (bytes(_picture().pngsave_buffer(interlace=True)), Probe("png", 600, 400)),
        "plain.gif": (_gif(), Probe("gif", 600, 400)),
        "animated-5.gif": (_pillow_animated_gif(5), Probe("gif", 40, 30, frames=5)),
        "animated-100.gif": (_pillow_animated_gif(100), Probe("gif", 40, 30, frames=100)),
        "lossy.webp": (_webp(Q=80), Probe("webp", 600, 400)),
        "lossless.webp": (_webp(lossless=True), Probe("webp", 600, 400)),
        "alpha.webp": (bytes(_picture().bandjoin_const([200]).webpsave_buffer()), Probe("webp", 600, 400)),
        "animated-4.webp": (bytes(_animated(4).webpsave_buffer()), Probe("webp", 32, 24, frames=4)),
        "plain.avif": (bytes(_picture(64, 48).heifsave_buffer(compression="av1")), Probe("avif", 64, 48)),
        "plain.heic": (bytes(_picture(64, 48).heifsave_buffer(compression="hevc")), Probe("heif", 64, 48)),
        "largest-allowed.png": (png_bomb(7071), Probe("png", 7071, 7071)),  # 49.998 MP, under 50 MP
    }


def good_corpus() -> dict[str, bytes]:
    """Uploads that must be accepted: name -> bytes."""
    return {name: data for name, (data, _) in _good().items()}


def good_probes() -> dict[str, Probe]:
    """What ``probe`` must say about each file of ``good_corpus()``."""
    return {name: expected for name, (_, expected) in _good().items()}
