"""The two facts libvips does not report about a source: its own tile size (TIFF tags, JPEG 2000 SIZ).

Pure functions over the first bytes of a file. Tiles in ``info.json`` that match the source's own
tiles let a viewer's requests line up with what the decoder reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}


def tiff_tile_size(read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
    """Tile width and height from the first IFD of a (Big)TIFF, or None if it is not tiled.

    ``read(offset, length)`` returns bytes of the file: the IFD may sit anywhere (libvips writes it
    after the pixel data), so it is read where the header points.
    """
    head = read(0, 16)
    if len(head) < 16 or head[:2] not in (b"II", b"MM"):
        return None
    endian = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack_from(endian + "H", head, 2)[0]
    try:
        if magic == 42:
            offset = struct.unpack_from(endian + "I", head, 4)[0]
            count = struct.unpack_from(endian + "H", read(offset, 2), 0)[0]
            entry_size, first, fmt, value_at = 12, offset + 2, "HHI", 8
        elif magic == 43:  # BigTIFF
            offset = struct.unpack_from(endian + "Q", head, 8)[0]
            count = struct.unpack_from(endian + "Q", read(offset, 8), 0)[0]
            entry_size, first, fmt, value_at = 20, offset + 8, "HHQ", 12
        else:
            return None
        count = min(count, 512)
        entries = read(first, count * entry_size)
        found: dict[int, int] = {}
        for i in range(count):
            tag, kind, _n = struct.unpack_from(endian + fmt, entries, i * entry_size)
            if tag in (_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH) and kind in _TIFF_TYPES:
                found[tag] = struct.unpack_from(
                    endian + _TIFF_TYPES[kind], entries, i * entry_size + value_at
                )[0]
    except struct.error:
        return None
    if _TIFF_TILE_WIDTH in found and _TIFF_TILE_LENGTH in found:
        return found[_TIFF_TILE_WIDTH], found[_TIFF_TILE_LENGTH]
    return None


def jp2_tile_size(head: bytes) -> tuple[int, int] | None:
    """Tile width and height from the SIZ marker of a JPEG 2000 codestream (raw or in a JP2 box)."""
    at = head.find(b"\xff\x4f\xff\x51")  # start of codestream, then SIZ
    if at < 0 or len(head) < at + 4 + 38:
        return None
    siz = at + 4
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz = struct.unpack_from(">HHIIIIII", head, siz)
    return min(xtsiz, xsiz - xosiz), min(ytsiz, ysiz - yosiz)


#: Enumerated colour spaces of a JP2 ``colr`` box that need no conversion after decoding.
JP2_SRGB, JP2_GREYSCALE = 16, 17


def jp2_colourspace(head: bytes) -> int | None:
    """The enumerated colour space of a JP2 file's ``colr`` box (16 sRGB, 17 grey, 18 sYCC), if it has one."""
    at = head.find(b"colr")
    if at < 0 or len(head) < at + 11 or head[at + 4] != 1:  # method 1: enumerated
        return None
    return struct.unpack_from(">I", head, at + 7)[0]
