"""A corpus of hostile image files, generated (nothing binary is committed): damaged, cut short, lying.

Each file is made from a small good image with libvips, then cut or patched where its format keeps
the fact to lie about (a JPEG frame header, a PNG IHDR, TIFF tags, a JPEG 2000 SIZ marker).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pyvips
import tifffile

#: Width and height that headers claim: 65500 x 65500 is 4.3 Gpx, past any limit.
HUGE = 65500


def _picture(width: int = 600, height: int = 400) -> pyvips.Image:
    """A small picture with detail, so that every format compresses it to more than a few bytes."""
    return (pyvips.Image.xyz(width, height) % 256).cast("uchar").bandjoin_const([128])[0:3]


def _jpeg() -> bytes:
    return _picture().jpegsave_buffer(Q=90)


def patch_jpeg_frame(stream: bytes, width: int, height: int) -> bytes:
    """``stream`` with the size in its frame header (SOF0) replaced."""
    at = stream.index(b"\xff\xc0")
    return stream[: at + 5] + struct.pack(">HH", height, width) + stream[at + 9 :]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: a grey PNG of ``width`` x ``height`` zeros, a few hundred kB."""
    row = b"\x00" * (width + 1)  # filter byte, then the pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims ``width`` x ``height`` (CRC fixed, so only the size lies)."""
    data = _picture().pngsave_buffer()
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]


def _patch_tiff_number(data: bytes, tag: int, value: int, page: int = 0) -> bytes:
    """A little-endian classic TIFF with the (SHORT or LONG) value of ``tag`` replaced."""
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        found = tiff.pages[page].tags[tag]
        at, fmt = found.valueoffset, "<H" if int(found.dtype) == 3 else "<I"
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


def _tiled_jpeg_tiff() -> bytes:
    return _picture(512, 512).tiffsave_buffer(tile=True, tile_width=256, tile_height=256, compression="jpeg")


def _deflate_pyramid() -> bytes:
    return _picture(1024, 1024).tiffsave_buffer(
        tile=True, tile_width=256, tile_height=256, pyramid=True, compression="deflate"
    )


def _tiff_with_cut_tiles() -> bytes:
    """A JPEG-tiled TIFF whose every tile lost its end (EOI marker and last bytes of entropy data)."""
    data = bytearray(_tiled_jpeg_tiff())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tiff:
        page = tiff.pages[0]
        extents = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    for offset, count in extents:
        data[offset + count - 16 : offset + count] = bytes(16)
    return bytes(data)


def _tiff_with_lying_tile() -> bytes:
    """A JPEG-tiled TIFF whose every tile's frame header claims 30000 x 30000 (the TIFF says 256)."""
    data = bytearray(_tiled_jpeg_tiff())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tiff:
        page = tiff.pages[0]
        extents = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    for offset, count in extents:
        tile = bytes(data[offset : offset + count])
        data[offset : offset + count] = patch_jpeg_frame(tile, 30000, 30000)
    return bytes(data)


def _webp_claiming(size: int) -> bytes:
    """A lossy WebP whose VP8 frame header claims ``size`` x ``size`` pixels (at most 16383)."""
    data = _picture().webpsave_buffer(Q=90)
    at = data.index(b"\x9d\x01\x2a") + 3  # the VP8 key frame start code, then width and height
    return data[:at] + struct.pack("<HH", size, size) + data[at + 4 :]


def _jp2() -> bytes:
    return _picture(512, 512).jp2ksave_buffer(tile_width=256, tile_height=256)


def _jp2_claiming(size: int) -> bytes:
    """A JPEG 2000 file whose SIZ marker claims ``size`` x ``size`` pixels (and one tile of that)."""
    data = _jp2()
    siz = data.index(b"\xff\x4f\xff\x51") + 4
    # SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz ...
    patched = struct.pack(">IIIIII", size, size, 0, 0, size, size)
    return data[: siz + 4] + patched + data[siz + 28 :]


def _corrupt_middle(data: bytes) -> bytes:
    """``data`` with a run of its middle bytes overwritten, so headers parse and pixels do not."""
    start, length = len(data) // 3, max(64, len(data) // 3)
    return data[:start] + bytes((i * 151 + 17) % 256 for i in range(length)) + data[start + length :]


def _cut(data: bytes) -> bytes:
    return data[: len(data) * 3 // 5]


#: File name -> how to make it. Names carry the extension a client would expect.
CORPUS: dict[str, Callable[[], bytes]] = {
    "empty.jpg": lambda: b"",
    "text.jpg": lambda: b"this is plain text, not a JPEG\n" * 20,
    # Formats libvips (or ImageMagick through it) would read, but that are not sources here.
    "svg.png": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="20000" height="20000"/>',
    "gif.jpg": lambda: _picture().gifsave_buffer(),
    "ppm.tif": lambda: b"P6\n600 400\n255\n" + _picture().write_to_memory(),
    "truncated.jpg": lambda: _cut(_jpeg()),
    "sof-65500.jpg": lambda: patch_jpeg_frame(_jpeg(), HUGE, HUGE),
    "truncated.png": lambda: _cut(_picture().pngsave_buffer()),
    "ihdr-65500.png": lambda: _png_claiming(HUGE, HUGE),
    "bomb-6000.png": lambda: png_bomb(6000, 6000),
    "truncated.webp": lambda: _cut(_picture().webpsave_buffer(Q=90)),
    "corrupt.webp": lambda: _corrupt_middle(_picture().webpsave_buffer(Q=90)),
    "vp8-16383.webp": lambda: _webp_claiming(16383),
    "truncated.tif": lambda: _cut(_picture().tiffsave_buffer(compression="deflate")),
    "truncated-tiled.tif": lambda: _cut(_tiled_jpeg_tiff()),
    "cut-tiles.tif": _tiff_with_cut_tiles,
    "tags-65500.tif": lambda: _patch_tiff_number(
        _patch_tiff_number(_picture().tiffsave_buffer(), 256, HUGE), 257, HUGE
    ),
    "tile-tags-30000.tif": lambda: _patch_tiff_number(
        _patch_tiff_number(_tiled_jpeg_tiff(), 322, 30000 // 16 * 16), 323, 30000 // 16 * 16
    ),
    "lying-tile.tif": _tiff_with_lying_tile,
    "level-tile-30000.tif": lambda: _patch_tiff_number(
        _patch_tiff_number(_deflate_pyramid(), 322, 30000 // 16 * 16, page=1), 323, 30000 // 16 * 16, page=1
    ),
    "truncated.jp2": lambda: _cut(_jp2()),
    "corrupt.jp2": lambda: _corrupt_middle(_jp2()),
    "siz-65500.jp2": lambda: _jp2_claiming(HUGE),
}


def write_corpus(folder: Path) -> list[str]:
    """Write every hostile file into ``folder``; returns their names."""
    for name, make in CORPUS.items():
        (folder / name).write_bytes(make())
    return list(CORPUS)
