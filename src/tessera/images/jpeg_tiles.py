"""The stored JPEG tiles of a tiled TIFF pyramid: where each tile is, and how to make it a JPEG file.

A JPEG-compressed tiled TIFF keeps every tile as an abbreviated JPEG stream (the shared Huffman and
quantisation tables live once, in the ``JPEGTables`` tag). Knowing each level's tile offsets lets the
server read exactly the bytes of the tiles under a request through the cache, decode only those with
libjpeg (or not at all, when the request *is* one stored tile), instead of opening the TIFF with
libvips for every request, which costs more than the tile itself.

The structure is read once per source version with tifffile and kept with the other header facts.
"""

from __future__ import annotations

import base64
import io
import struct
from array import array
from dataclasses import dataclass
from typing import Any

import tifffile

_JPEG = 7
_MINISBLACK, _RGB, _YCBCR = 1, 2, 6
#: APP14 "Adobe" segment with transform 0: the components are RGB, not YCbCr. libtiff writes no
#: colour marker, and a decoder otherwise takes three components for YCbCr.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
#: Levels with more tiles than this are left to libvips (the table would not be worth keeping).
MAX_TILES_PER_LEVEL = 4_000_000


@dataclass(frozen=True)
class JpegTiles:
    """The stored 8-bit JPEG tiles of one pyramid level (a TIFF page)."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    bands: int
    #: The components are stored as RGB (photometric RGB) rather than YCbCr.
    rgb: bool
    tables: bytes
    offsets: array
    counts: array

    @property
    def columns(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_height)

    def extent(self, column: int, row: int) -> tuple[int, int]:
        """Where tile (column, row) sits in the file: (offset, length); length 0 for a missing tile."""
        index = row * self.columns + column
        return self.offsets[index], self.counts[index]

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "tile": [self.tile_width, self.tile_height],
            "bands": self.bands,
            "rgb": self.rgb,
            "tables": base64.b64encode(self.tables).decode(),
            "offsets": base64.b64encode(_little_endian(self.offsets)).decode(),
            "counts": base64.b64encode(_little_endian(self.counts)).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JpegTiles:
        return cls(
            width=data["width"],
            height=data["height"],
            tile_width=data["tile"][0],
            tile_height=data["tile"][1],
            bands=data["bands"],
            rgb=data["rgb"],
            tables=base64.b64decode(data["tables"]),
            offsets=_from_little_endian(base64.b64decode(data["offsets"])),
            counts=_from_little_endian(base64.b64decode(data["counts"])),
        )


def _little_endian(values: array) -> bytes:
    out = array("Q", values)
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        out.byteswap()
    return out.tobytes()


def _from_little_endian(data: bytes) -> array:
    out = array("Q")
    out.frombytes(data)
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        out.byteswap()
    return out


def read_jpeg_tiles(file: io.RawIOBase, levels: int) -> tuple[JpegTiles | None, ...]:
    """The JPEG tile tables of the first ``levels`` pages; None for a page that is not plain JPEG tiles."""
    file.seek(0)
    out: list[JpegTiles | None] = []
    with tifffile.TiffFile(file) as tiff:  # type: ignore[arg-type]  # any seekable file; RawIOBase isn't IO[bytes]
        for index in range(levels):  # not len(tiff.pages): that would read every IFD of the file
            try:
                page = tiff.pages[index]
            except IndexError:
                break
            out.append(_level(page) if isinstance(page, tifffile.TiffPage) else None)
    return tuple(out)


def _level(page: tifffile.TiffPage) -> JpegTiles | None:
    photometric, bands = int(page.photometric), page.samplesperpixel
    colour_ok = (photometric == _MINISBLACK and bands == 1) or (photometric in (_RGB, _YCBCR) and bands == 3)
    if not (
        page.is_tiled
        and int(page.compression) == _JPEG
        and page.bitspersample == 8
        and colour_ok
        and not page.extrasamples
        and page.imagedepth == 1
        and page.tiledepth == 1
        and len(page.dataoffsets) <= MAX_TILES_PER_LEVEL
    ):
        return None
    tiles = JpegTiles(
        width=page.imagewidth,
        height=page.imagelength,
        tile_width=page.tilewidth,
        tile_height=page.tilelength,
        bands=bands,
        rgb=photometric == _RGB,
        tables=bytes(page.jpegtables or b""),
        offsets=array("Q", page.dataoffsets),
        counts=array("Q", page.databytecounts),
    )
    if len(tiles.offsets) != tiles.columns * tiles.rows:
        return None
    return tiles


#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field: TEM and the restart markers.
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))


def frame_size(stream: bytes) -> tuple[int, int]:
    """The (width, height) a JPEG stream's frame header (SOF) declares, read before any decoding.

    Raises ValueError when the stream has no readable frame header before its first scan.
    """
    at = 2  # after SOI
    while at + 4 <= len(stream):
        if stream[at] != 0xFF:
            raise ValueError("a stored tile's JPEG markers are damaged")
        marker = stream[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in _SOF_MARKERS:
            if at + 9 > len(stream):
                break
            height, width = struct.unpack_from(">HH", stream, at + 5)
            if not (width and height):
                raise ValueError("a stored tile's JPEG frame declares no width or height")
            return width, height
        if marker == 0xDA:  # start of scan: no frame header came first
            break
        at += 2 + struct.unpack_from(">H", stream, at + 2)[0]
    raise ValueError("a stored tile has no JPEG frame header")


def jpeg_file(tiles: JpegTiles, stream: bytes) -> bytes:
    """A complete JPEG file from one stored tile: the shared tables spliced in after its SOI marker.

    The tile's frame header must declare at most the tile size the TIFF declares: a decoder
    allocates what the frame says, so a tile that claims more is refused before anything decodes it.
    """
    if stream[:2] != b"\xff\xd8" or stream[-2:] != b"\xff\xd9":
        raise ValueError("a stored tile is not a whole JPEG stream (no SOI or EOI marker)")
    width, height = frame_size(stream)
    if width > tiles.tile_width or height > tiles.tile_height:
        raise ValueError(
            f"a stored tile declares {width}x{height} pixels in a TIFF of "
            f"{tiles.tile_width}x{tiles.tile_height} tiles"
        )
    head = b"\xff\xd8"
    if tiles.tables[:2] == b"\xff\xd8" and tiles.tables[-2:] == b"\xff\xd9":
        head += tiles.tables[2:-2]
    if tiles.rgb:
        head += _ADOBE_RGB
    return head + stream[2:]
