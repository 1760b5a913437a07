"""Answering a request from the source's own JPEG tiles (tiled JPEG TIFF pyramids).

Three cases, none of which opens the TIFF with libvips:

* **Pass-through.** The request is exactly one stored tile at its own size, unrotated, as a JPEG in
  the source's colours: the stored JPEG stream (with its tables) *is* the answer, so nothing is
  decoded or re-encoded. This is most of a deep-zoom viewer's requests; the bytes keep the source's
  own JPEG quality.
* **Crop.** The request is part of one stored tile at its own resolution (the edge tiles of every
  level, which the TIFF pads to the full tile size; one request in ten of a viewer's): the tile is
  decoded, cropped and re-encoded with Pillow (``quick_jpeg``).
* **Assembly.** Otherwise, when the region at the chosen level lies under at most ``MAX_TILES``
  stored tiles, those tiles are read through the cache, decoded with libjpeg, joined and cropped,
  then scaled, coloured, rotated and encoded like any render (libvips).
"""

from __future__ import annotations

import io

import pyvips
from PIL import Image

from tessera.images.jpeg_tiles import JpegTiles, jpeg_file
from tessera.images.quick_jpeg import encode_piece
from tessera.images.render import LevelRegion, finish
from tessera.images.request import Plan
from tessera.images.source import LOAD_OPTIONS

#: Regions under more stored tiles than this, or more decoded pixels than ``MAX_TILE_PIXELS`` (every
#: tile is decoded whole into memory), are rendered by libvips from the TIFF page instead.
MAX_TILES = 16
MAX_TILE_PIXELS = 16 * 1024 * 1024

TileKey = tuple[int, int]


def covering_tiles(tiles: JpegTiles, area: LevelRegion) -> list[TileKey] | None:
    """The (column, row) of every stored tile under ``area``, or None when there are too many."""
    first_col, last_col = area.left // tiles.tile_width, (area.right - 1) // tiles.tile_width
    first_row, last_row = area.top // tiles.tile_height, (area.bottom - 1) // tiles.tile_height
    count = (last_col - first_col + 1) * (last_row - first_row + 1)
    if count > MAX_TILES or count * tiles.tile_width * tiles.tile_height > MAX_TILE_PIXELS:
        return None
    return [(c, r) for r in range(first_row, last_row + 1) for c in range(first_col, last_col + 1)]


def stored_tile(tiles: JpegTiles, area: LevelRegion, plan: Plan) -> TileKey | None:
    """The tile whose stored bytes answer ``plan`` unchanged, if there is one."""
    tw, th = tiles.tile_width, tiles.tile_height
    if (
        plan.format != "jpg"
        or plan.rotation.mirror
        or plan.rotation.degrees % 360
        or plan.size != (tw, th)
        or (area.width, area.height) != (tw, th)
        or area.left % tw
        or area.top % th
    ):
        return None
    if plan.quality not in ("default", "color" if tiles.bands == 3 else "gray"):
        return None
    return area.left // tw, area.top // th


def crop_tile(
    tiles: JpegTiles, key: TileKey, stream: bytes, area: LevelRegion, size: tuple[int, int], jpeg_quality: int
) -> bytes:
    """Decode one stored tile and answer with ``area`` of it as a JPEG of ``size`` (a worker thread's job)."""
    left, top = area.left - key[0] * tiles.tile_width, area.top - key[1] * tiles.tile_height
    with Image.open(io.BytesIO(jpeg_file(tiles, stream)), formats=["JPEG"]) as image:
        piece = image.crop((left, top, left + area.width, top + area.height))
    return encode_piece(piece, size, jpeg_quality)


def render_from_tiles(
    tiles: JpegTiles, streams: dict[TileKey, bytes], area: LevelRegion, plan: Plan, jpeg_quality: int
) -> bytes:
    """Decode the stored tiles under ``area`` (``streams`` holds their bytes), crop, and finish the render.

    Runs in a worker thread. A tile the TIFF leaves out (length 0) is black.
    """
    keys = sorted(streams, key=lambda key: (key[1], key[0]))
    first_col, first_row = keys[0]
    columns = keys[-1][0] - first_col + 1
    images = []
    for key in keys:
        stream = streams[key]
        if stream:
            # Decoded at once into memory: the crop and the shrink after it then read plain pixels
            # (a lazily decoded JPEG would be decoded again for each region libvips asks for).
            image = pyvips.Image.jpegload_buffer(
                jpeg_file(tiles, stream), access="sequential", **LOAD_OPTIONS
            ).copy_memory()
            if (image.width, image.height) != (tiles.tile_width, tiles.tile_height):
                image = image.embed(0, 0, tiles.tile_width, tiles.tile_height)
        else:
            image = pyvips.Image.black(tiles.tile_width, tiles.tile_height, bands=tiles.bands)
        images.append(image)
    joined = images[0] if len(images) == 1 else pyvips.Image.arrayjoin(images, across=columns)
    region = joined.crop(
        area.left - first_col * tiles.tile_width,
        area.top - first_row * tiles.tile_height,
        area.width,
        area.height,
    )
    region = region.copy(interpretation="srgb" if tiles.bands == 3 else "b-w")
    return finish(region, plan, jpeg_quality)
