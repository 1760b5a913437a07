"""JPEG 2000 regions decoded with OpenJPEG directly (glymur), with a bounded cache of decoded tiles.

libvips (8.14 here) decodes a JPEG 2000 resolution reduction slowly: a 64 px codestream tile at
reduction 3 costs it over 100 ms, where OpenJPEG asked for that area at that reduction costs 20-25 ms
(measured on the benchmark image). So a source that is wholly in the cache, 8-bit, grey or sRGB, is
decoded here: exactly the request's area at the chosen reduction.

A deep-zoom viewer's tiles (256 px) are smaller than the codestream tiles most libraries write
(512 or 1024 px), and OpenJPEG's cost is mostly per codestream tile touched, not per pixel. So a
request that lies inside one codestream tile decodes that whole tile once, keeps it in
``DecodedTiles`` (a byte-bounded LRU, ``images.decoded_cache``) and cuts its neighbours from it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import glymur
import numpy as np
import pyvips
from PIL import Image

from tessera.images.quick_jpeg import encode_piece, is_plain_crop
from tessera.images.render import LevelRegion, finish
from tessera.images.request import Plan
from tessera.images.source import ImageInfo
from tessera.lru import LRU

# One OpenJPEG thread per decode: the render slots already keep every core busy.
glymur.set_option("lib.num_threads", 1)
# glymur warns on every open of a file with an unusual but harmless header (libvips 8.14 writes colour
# space 0); the decision to decode directly is made once, in ``read_info``.
warnings.filterwarnings("ignore", category=UserWarning, module="glymur")

TileId = tuple[int, int, int, int]  # (version id, reduction, column, row)

#: Larger areas are left to libvips, which decodes them tile by tile within its memory bounds:
#: OpenJPEG holds a whole decode area as 32-bit samples (a 72 MP image would take 870 MB).
MAX_DIRECT_PIXELS = 2048 * 2048


class DecodedTiles(LRU[TileId, np.ndarray]):
    """Decoded codestream tiles, least recently used dropped first once past ``max_bytes``.

    Shared by the render threads (``LRU`` holds a lock for its dictionary operations).
    """


def decode_region(
    path: Path, info: ImageInfo, area: LevelRegion, cache: DecodedTiles, version_id: int
) -> np.ndarray:
    """The pixels of ``area`` (at reduction ``area.level``) as an (h, w, bands) uint8 array."""
    step = 1 << area.level
    # Full-resolution bounds of the area; the reduced image's pixel i covers [i * step, (i + 1) * step).
    x0, y0 = area.left * step, area.top * step
    x1, y1 = min(info.width, area.right * step), min(info.height, area.bottom * step)
    tile = info.tile
    if tile is not None and cache.max_bytes > 0:
        tw, th = tile
        column, row = x0 // tw, y0 // th
        # A codestream tile larger than a direct decode may be (an untiled file is one tile the size
        # of the image) is not decoded whole: only the area is, so memory stays bounded per request.
        small = -(-tw // step) * -(-th // step) <= MAX_DIRECT_PIXELS
        if small and (x1 - 1) // tw == column and (y1 - 1) // th == row:
            key = (version_id, area.level, column, row)
            decoded = cache.get(key)
            tx0, ty0 = column * tw, row * th
            if decoded is None:
                tx1, ty1 = min(info.width, tx0 + tw), min(info.height, ty0 + th)
                decoded = _read(path, ty0, tx0, ty1, tx1, step)
                cache.put(key, decoded)
            left, top = area.left - -(-tx0 // step), area.top - -(-ty0 // step)
            return _exact(decoded[top : top + area.height, left : left + area.width], area)
    return _exact(_read(path, y0, x0, y1, x1, step), area)


def _read(path: Path, y0: int, x0: int, y1: int, x1: int, step: int) -> np.ndarray:
    pixels = glymur.Jp2k(str(path))[y0:y1:step, x0:x1:step]
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    return np.ascontiguousarray(pixels)


def _exact(pixels: np.ndarray, area: LevelRegion) -> np.ndarray:
    """``pixels`` at exactly the area's size (OpenJPEG's rounding at a reduction may differ by a pixel),
    in one C-contiguous buffer: a piece cut from a decoded tile is a strided view, which libvips
    (``new_from_memory``) cannot take."""
    height, width = pixels.shape[:2]
    if (width, height) == (area.width, area.height):
        return np.ascontiguousarray(pixels)
    pixels = pixels[: area.height, : area.width]
    pad_h, pad_w = area.height - pixels.shape[0], area.width - pixels.shape[1]
    if pad_h > 0 or pad_w > 0:
        pixels = np.pad(pixels, ((0, max(0, pad_h)), (0, max(0, pad_w)), (0, 0)), mode="edge")
    return np.ascontiguousarray(pixels)


class DirectDecodeFailed(Exception):
    """OpenJPEG could not decode the area (or the file went away): render with libvips instead."""


def render_jp2(
    path: Path,
    info: ImageInfo,
    area: LevelRegion,
    plan: Plan,
    jpeg_quality: int,
    cache: DecodedTiles,
    version_id: int,
) -> bytes:
    """Decode ``area`` with OpenJPEG and finish the render (a worker thread's job)."""
    try:
        pixels = decode_region(path, info, area, cache, version_id)
    except (OSError, RuntimeError, ValueError, IndexError) as exc:  # glymur reports OpenJPEG errors so
        raise DirectDecodeFailed(str(exc)) from exc
    bands = pixels.shape[2]
    if pixels.dtype != np.uint8 or bands not in (1, 3):
        raise DirectDecodeFailed(f"{bands} components of {pixels.dtype}")
    if is_plain_crop(area, plan, bands):
        return encode_piece(
            Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels), plan.size, jpeg_quality
        )
    image = pyvips.Image.new_from_memory(pixels.data, area.width, area.height, bands, "uchar")
    return finish(image.copy(interpretation="srgb" if bands == 3 else "b-w"), plan, jpeg_quality)
