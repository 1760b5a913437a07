"""Rendering a resolved IIIF request with libvips: pick the level, decode the region, scale, rotate, encode.

Runs in a worker thread (libvips releases the GIL). Only the needed resolution level is opened (a
TIFF pyramid page or a JPEG 2000 reduction), and libvips decodes only the tiles under the region.
"""

from __future__ import annotations

import io
import math

import pyvips

from tessera.images.request import Plan
from tessera.images.source import ImageInfo, open_level

MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tif": "image/tiff"}


def choose_level(info: ImageInfo, scale: float) -> int:
    """The smallest stored level that still has at least the output's resolution."""
    chosen = 0
    for index, (width, _height) in enumerate(info.levels):
        if (width + 1) / info.width >= scale - 1e-9:  # libvips rounds level sizes down
            chosen = index
    return chosen


def render(file: io.RawIOBase, info: ImageInfo, plan: Plan, jpeg_quality: int = 85) -> bytes:
    x, y, w, h = plan.region
    out_w, out_h = plan.size
    level = choose_level(info, max(out_w / w, out_h / h))
    level_w, level_h = info.levels[level]
    fx, fy = level_w / info.width, level_h / info.height
    image = open_level(file, info, level)
    left, top = min(level_w - 1, math.floor(x * fx)), min(level_h - 1, math.floor(y * fy))
    right = max(left + 1, min(level_w, math.ceil((x + w) * fx)))
    bottom = max(top + 1, min(level_h, math.ceil((y + h) * fy)))
    image = image.crop(left, top, right - left, bottom - top)
    if (image.width, image.height) != (out_w, out_h):
        image = image.thumbnail_image(out_w, height=out_h, size="force")
    image = _colour(image, plan.quality, keep_alpha=plan.format in ("png", "webp", "tif"))
    if plan.rotation.mirror:
        image = image.fliphor()
    degrees = plan.rotation.degrees % 360
    if degrees in (90, 180, 270):
        image = image.rot(f"d{int(degrees)}")
    elif degrees:
        background = [0] * image.bands if image.hasalpha() else [255] * image.bands
        image = image.rotate(degrees, background=background)
    return _encode(image, plan.format, jpeg_quality)


def _colour(image: pyvips.Image, quality: str, keep_alpha: bool) -> pyvips.Image:
    if image.hasalpha() and not keep_alpha:
        image = image.flatten(background=[255] * (image.bands - 1))
    if quality in ("gray", "bitonal"):
        image = image.colourspace("b-w")
        if quality == "bitonal":
            grey = image[0] if image.bands > 1 else image
            return (grey > 127).cast("uchar")
        return image.cast("uchar") if image.format != "uchar" else image
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("srgb")
    return image


def _encode(image: pyvips.Image, fmt: str, jpeg_quality: int) -> bytes:
    if fmt == "jpg":
        return image.jpegsave_buffer(Q=jpeg_quality, strip=True)
    if fmt == "png":
        return image.pngsave_buffer(compression=6, strip=True)
    if fmt == "webp":
        return image.webpsave_buffer(Q=jpeg_quality, strip=True)
    return image.tiffsave_buffer(compression="deflate", strip=True)
