"""Answering a request from the source's own JPEG tiles (tiled JPEG TIFF pyramids).

Two cases, both without opening the TIFF with libvips:

* **Pass-through.** The request is exactly one stored tile at its own size, unrotated, as a JPEG in
  the source's colours: the stored JPEG stream (with its tables) *is* the answer, so nothing is
  decoded or re-encoded. This is most of a deep-zoom viewer's requests; the bytes keep the source's
  own JPEG quality.
* **Crop.** The request is part of one stored tile at its own resolution (the edge tiles of every
  level, which the TIFF pads to the full tile size): the tile is decoded, cropped and re-encoded with
  Pillow, whose per-call overhead on a 256 px tile is a third of libvips' (about 1 ms against 3-4 ms
  for decode plus encode, measured here), and this is one request in ten of a viewer's.
* **Assembly.** Otherwise, when the region at the chosen level lies under at most ``MAX_TILES``
  stored tiles, those tiles are read through the cache, decoded with libjpeg, joined and cropped,
  then scaled, coloured, rotated and encoded like any render (libvips).
"""

from __future__ import annotations

import io

import pyvips
from PIL import Image

from tessera.images.jpeg_tiles import JpegTiles, jpeg_file
from tessera.images.render import LevelRegion, finish
from tessera.images.request import Plan

#: Regions under more stored tiles than this are rendered by libvips from the TIFF page instead.
MAX_TILES = 16

TileKey = tuple[int, int]


def covering_tiles(tiles: JpegTiles, area: LevelRegion) -> list[TileKey] | None:
    """The (column, row) of every stored tile under ``area``, or None when there are too many."""
    first_col, last_col = area.left // tiles.tile_width, (area.right - 1) // tiles.tile_width
    first_row, last_row = area.top // tiles.tile_height, (area.bottom - 1) // tiles.tile_height
    if (last_col - first_col + 1) * (last_row - first_row + 1) > MAX_TILES:
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


def is_plain_crop(tiles: JpegTiles, area: LevelRegion, plan: Plan, keys: list[TileKey]) -> bool:
    """Whether ``plan`` is a piece of one stored tile at about the level's own size, as a plain JPEG.

    "About": ``choose_level`` lets a level be a little short of the output (rounding), so the piece
    may need a few pixels more, never fewer.
    """
    out_w, out_h = plan.size
    return (
        len(keys) == 1
        and plan.format == "jpg"
        and not plan.rotation.mirror
        and not plan.rotation.degrees % 360
        and area.width <= out_w <= 1.12 * area.width + 1
        and area.height <= out_h <= 1.12 * area.height + 1
        and plan.quality in ("default", "color" if tiles.bands == 3 else "gray")
    )


def crop_tile(
    tiles: JpegTiles, key: TileKey, stream: bytes, area: LevelRegion, size: tuple[int, int], jpeg_quality: int
) -> bytes:
    """Decode one stored tile, cut ``area`` out of it and encode that as a JPEG of ``size`` pixels.

    Runs in a worker thread. A piece one pixel short of ``size`` (the last row or column a pyramid
    level rounded away) gets its edge repeated; one more pixels short is resampled.
    """
    left, top = area.left - key[0] * tiles.tile_width, area.top - key[1] * tiles.tile_height
    with Image.open(io.BytesIO(jpeg_file(tiles, stream)), formats=["JPEG"]) as image:
        piece = image.crop((left, top, left + area.width, top + area.height))
    if size[0] - piece.width > 1 or size[1] - piece.height > 1:
        piece = piece.resize(size, Image.Resampling.BICUBIC)
    elif size != piece.size:
        grown = Image.new(piece.mode, size)
        grown.paste(piece, (0, 0))
        if size[0] > piece.width:  # repeat the last column, then the last row
            grown.paste(piece.crop((piece.width - 1, 0, piece.width, piece.height)), (piece.width, 0))
        if size[1] > piece.height:
            grown.paste(grown.crop((0, piece.height - 1, size[0], piece.height)), (0, piece.height))
        piece = grown
    out = io.BytesIO()
    piece.save(out, "JPEG", quality=jpeg_quality)
    return out.getvalue()


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
            image = pyvips.Image.jpegload_buffer(jpeg_file(tiles, stream), access="sequential").copy_memory()
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
