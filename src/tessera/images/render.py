"""Rendering a resolved IIIF request with libvips: pick the level, decode the region, scale, rotate, encode.

Runs in a worker thread (libvips releases the GIL). Only the needed resolution level is opened (a
TIFF pyramid page or a JPEG 2000 reduction), and libvips decodes only the tiles under the region.
A render stops at its thread's deadline (``stop_renders_at``): libvips checks it as it computes.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyvips

from tessera.images.request import Plan
from tessera.images.source import ImageInfo, open_level

# No libvips operation cache: it would hand one render's images to the next, with the kill signal
# connected by the first (``_stoppable``; its Python handler gone, libvips would call freed memory)
# and, in libvips 8.14, a load that failed or was stopped, which then renders black without an error.
pyvips.cache_set_max(0)

MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tif": "image/tiff"}


def choose_level(info: ImageInfo, region: tuple[int, int], size: tuple[int, int]) -> int:
    """The smallest stored level from which a region of (w, h) full-resolution pixels gives ``size``.

    A level pixel covers ``2**level`` full-resolution pixels; a level is good enough when the region
    holds the output's pixels there. Rounding is forgiven: a viewer asks ``ceil(w / s)`` pixels and
    the other side follows from the aspect ratio, and pyramid levels round down (10315 -> 5157). So a
    level may be one pixel short on one side and, on the other, up to 10 % (a narrow edge tile whose
    width was rounded up from 9.4 to 10 px asks for 6 % more height than its level holds).
    """
    w, h = region
    out_w, out_h = size
    chosen = 0
    for index in range(1, len(info.levels)):
        factor = 1 << index
        level_w, level_h = w / factor, h / factor
        if not (level_w >= 0.9 * out_w and level_h >= 0.9 * out_h):
            continue
        if level_w >= out_w - 1 or level_h >= out_h - 1:
            chosen = index
    return chosen


@dataclass(frozen=True)
class LevelRegion:
    """The pixels of one stored level that a request needs: ``[left, right) x [top, bottom)``."""

    level: int
    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def level_region(info: ImageInfo, plan: Plan) -> LevelRegion:
    """Choose the level for ``plan`` and map its full-resolution region onto that level."""
    x, y, w, h = plan.region
    level = choose_level(info, (w, h), plan.size)
    level_w, level_h = info.levels[level]
    # Each level halves the one above (``read_info`` keeps only such pages), and a level pixel covers
    # 2**level full-resolution pixels from the origin, whether the sizes were rounded down (libvips
    # pyramids) or up (JPEG 2000 reductions).
    factor = 1 << level
    left, top = min(level_w - 1, x // factor), min(level_h - 1, y // factor)
    right = max(left + 1, min(level_w, -(-(x + w) // factor)))
    bottom = max(top + 1, min(level_h, -(-(y + h) // factor)))
    return LevelRegion(level, left, top, right, bottom)


def render(file: io.RawIOBase, info: ImageInfo, plan: Plan, jpeg_quality: int = 85) -> bytes:
    """Render ``plan`` by opening the source's chosen level with libvips (any format libvips reads)."""
    area = level_region(info, plan)
    image = open_level(file, info, area.level).crop(area.left, area.top, area.width, area.height)
    return finish(image, plan, jpeg_quality)


_deadline = threading.local()


@contextmanager
def stop_renders_at(deadline: float) -> Iterator[None]:
    """Within the block, renders this thread finishes stop once ``time.monotonic()`` passes ``deadline``.

    A stopped render raises ``pyvips.Error``; ``render_stopped()`` then says it was the deadline.
    """
    _deadline.at = deadline
    try:
        yield
    finally:
        del _deadline.at


def render_stopped() -> bool:
    """Whether this thread's render deadline has passed."""
    at = getattr(_deadline, "at", None)
    return at is not None and time.monotonic() > at


def _stoppable(image: pyvips.Image) -> pyvips.Image:
    """``image``, set to be killed (libvips stops computing it) at this thread's deadline, if it has one.

    libvips reports progress (an "eval" signal) as it computes the tiles of the image being encoded,
    so a render stops within one tile's work of its deadline and its render slot comes free.
    """
    if getattr(_deadline, "at", None) is None:
        return image

    def on_eval(evaluated: pyvips.Image, _progress: object) -> None:
        if render_stopped():
            evaluated.set_kill(True)

    image.set_progress(True)
    image.signal_connect("eval", on_eval)
    return image


def finish(image: pyvips.Image, plan: Plan, jpeg_quality: int) -> bytes:
    """Scale the decoded region to the output size, then colour, mirror, rotate and encode it."""
    out_w, out_h = plan.size
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
    return _encode(_stoppable(image), plan.format, jpeg_quality)


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
