"""Opening an image through the cache: libvips reads only the bytes it needs, via a custom source.

The file object given is a blocking, seekable view of one cached object version (``CachedFile``),
so a tile of a cold 1 GB pyramid costs the origin the blocks of that tile, not the file.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Any

import pyvips
import tifffile

from tessera.images.headers import JP2_GREYSCALE, JP2_SRGB, jp2_colourspace, jp2_tile_size, tiff_tile_size
from tessera.images.jpeg_tiles import JpegTiles, read_jpeg_tiles

logger = logging.getLogger(__name__)

#: Bytes read from the start of a file to find its tile size.
HEAD_BYTES = 64 * 1024
#: Options of every libvips load. ``fail_on``: any decode error fails the render, so a cut-short
#: or corrupt file is refused rather than served with grey fill (libjpeg's recoverable warnings are
#: not errors). ``memory``: a source decoded whole goes to memory, never to a temporary file; the
#: pixel limits (``limits.check_source``) bound how much that is.
LOAD_OPTIONS: dict[str, Any] = {"fail_on": "error", "memory": True}
#: The libvips loaders this process may run: the source formats the IIIF server serves, and the GIF
#: and AVIF/HEIF loaders that image hosting decodes uploads with (their type sniffed from the bytes
#: first). Every other loader (ImageMagick, PDF, SVG, ...: each a large attack surface of its own, for
#: formats nothing here claims) is blocked in the process.
ALLOWED_LOADERS = (
    "VipsForeignLoadJpeg",
    "VipsForeignLoadPng",
    "VipsForeignLoadWebp",
    "VipsForeignLoadTiff",
    "VipsForeignLoadJp2k",
    "VipsForeignLoadNsgif",
    "VipsForeignLoadHeif",
)
pyvips.operation_block_set("VipsForeignLoad", True)
for _loader in ALLOWED_LOADERS:
    pyvips.operation_block_set(_loader, False)
#: ``vips-loader`` names of the IIIF source formats: any other object is a 415 whatever its bytes are.
SOURCE_LOADERS = ("jpegload", "pngload", "webpload", "tiffload", "jp2kload")


@dataclass(frozen=True)
class ImageInfo:
    """What ``info.json`` and the renderer need to know about a source, without touching its pixels."""

    width: int
    height: int
    #: (width, height) of each resolution level the source holds, full size first.
    levels: tuple[tuple[int, int], ...]
    #: The source's own tile size, when it is tiled.
    tile: tuple[int, int] | None
    loader: str
    #: Per level, the stored JPEG tiles of a tiled JPEG TIFF (None where a level is not such tiles).
    jpeg_tiles: tuple[JpegTiles | None, ...] = ()
    #: A JPEG 2000 file OpenJPEG's output needs nothing more for (8-bit, grey or sRGB): see jp2_regions.
    jp2_direct: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "levels": [list(level) for level in self.levels],
            "tile": list(self.tile) if self.tile else None,
            "loader": self.loader,
            "jpeg_tiles": [tiles.to_json() if tiles else None for tiles in self.jpeg_tiles],
            "jp2_direct": self.jp2_direct,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        return cls(
            width=data["width"],
            height=data["height"],
            levels=tuple(tuple(level) for level in data["levels"]),
            tile=tuple(data["tile"]) if data["tile"] else None,
            loader=data["loader"],
            jpeg_tiles=tuple(
                JpegTiles.from_json(tiles) if tiles else None for tiles in data.get("jpeg_tiles", [])
            ),
            jp2_direct=data.get("jp2_direct", False),
        )


def vips_source(file: io.RawIOBase) -> pyvips.Source:
    """A libvips source reading from ``file``; libvips seeks and reads only what it decodes."""
    source = pyvips.SourceCustom()

    def on_read(size: int) -> bytes:
        try:
            return file.read(size) or b""
        except Exception as exc:  # libvips sees a failed read; the caller gets the real error
            if hasattr(file, "read_error"):
                file.read_error = exc
            raise

    def on_seek(offset: int, whence: int) -> int:
        return file.seek(offset, whence)

    source.on_read(on_read)
    source.on_seek(on_seek)
    return source


def open_page(file: io.RawIOBase, page: int) -> pyvips.Image:
    """Open one page (a TIFF pyramid level or a JPEG 2000 reduction) for random access.

    A file that is wholly in the cache is opened by path (``file.local_file``), so libvips reads the
    local file directly. Otherwise libvips reads through the cache.
    """
    options: dict[str, Any] = {"access": "random", **LOAD_OPTIONS}
    if page:
        options["page"] = page
    local = getattr(file, "local_file", None)
    if local is not None:
        image = pyvips.Image.new_from_file(str(local), **options)
    else:
        file.seek(0)
        image = pyvips.Image.new_from_source(vips_source(file), "", **options)
    loader = str(image.get("vips-loader"))
    if not loader.startswith(SOURCE_LOADERS):
        raise pyvips.Error(f"{loader}: not a source format this server serves")
    return image


def open_level(file: io.RawIOBase, info: ImageInfo, level: int) -> pyvips.Image:
    return open_page(file, level if len(info.levels) > 1 else 0)


def read_info(file: io.RawIOBase) -> ImageInfo:
    """Read the header facts of an image: size, levels (pages that halve), tile size."""
    file.seek(0)
    head = file.read(HEAD_BYTES) or b""
    image = open_page(file, 0)
    loader = str(image.get("vips-loader"))
    levels = [(image.width, image.height)]
    pages = image.get("n-pages") if "n-pages" in image.get_fields() else 1
    if pages > 1 and (loader.startswith("tiff") or loader.startswith("jp2k")):
        for page in range(1, pages):
            level = open_page(file, page)
            previous = levels[-1]
            # A pyramid level is about half the one before; other pages (a multi-page TIFF) are not levels.
            if not (abs(level.width * 2 - previous[0]) <= 2 and abs(level.height * 2 - previous[1]) <= 2):
                break
            levels.append((level.width, level.height))

    def read_at(offset: int, length: int) -> bytes:
        file.seek(offset)
        return file.read(length) or b""

    tile = tiff_tile_size(read_at) if loader.startswith("tiff") else jp2_tile_size(head)
    jpeg_tiles: tuple[JpegTiles | None, ...] = ()
    if loader.startswith("tiff") and tile is not None:
        try:
            jpeg_tiles = read_jpeg_tiles(file, len(levels))
        except (
            tifffile.TiffFileError,
            ValueError,
            struct.error,
        ) as exc:  # libvips reads it: render with that
            logger.info("no stored-tile path for this TIFF: %s", exc)
    jp2_direct = (
        loader.startswith("jp2k")
        and image.format == "uchar"
        and image.bands in (1, 3)
        # No colour space, or 0 (libvips 8.14 writes that), is taken for sRGB or grey, as libvips does.
        and jp2_colourspace(head) in (None, 0, JP2_SRGB, JP2_GREYSCALE)
    )
    return ImageInfo(image.width, image.height, tuple(levels), tile, loader, jpeg_tiles, jp2_direct)
