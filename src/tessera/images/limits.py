"""Pixel limits checked before anything is decoded: the output canvas, the source, every stored tile.

Sources are untrusted: a few bytes of header may claim any size. ``images.max_area`` (and
``max_width`` / ``max_height`` when set) bound both what a request may make (the canvas after
rotation) and what a decoder may be asked to hold at once (a source that is decoded whole, or one of
its tiles), so the memory of a render stays bounded by the limits whatever the file says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tessera.config import ImagesSettings
from tessera.errors import TesseraError
from tessera.images.request import LimitExceeded, Plan
from tessera.images.source import ImageInfo


class SourceTooLarge(TesseraError):
    """A source (or one of its tiles) declares more pixels than the server decodes at once."""

    status = 415


@dataclass(frozen=True)
class PixelLimits:
    """The limits of ``[images]``, with maxHeight defaulting as the request planner defaults it."""

    max_width: int | None
    max_height: int | None
    max_area: int | None

    @classmethod
    def from_settings(cls, settings: ImagesSettings) -> PixelLimits:
        # As in ``request.resolve``: maxHeight defaults to maxWidth (IIIF 3.0 §5.2).
        max_height = settings.max_height if settings.max_height is not None else settings.max_width
        return cls(settings.max_width, max_height, settings.max_area)

    def excess(self, width: int, height: int) -> str | None:
        """Why ``width`` x ``height`` pixels are over the limits, or None when they are within them."""
        if self.max_width is not None and width > self.max_width:
            return f"width {width} is over images.max_width {self.max_width}"
        if self.max_height is not None and height > self.max_height:
            return f"height {height} is over images.max_height {self.max_height}"
        if self.max_area is not None and width * height > self.max_area:
            return f"{width}x{height} = {width * height} pixels are over images.max_area {self.max_area}"
        return None


def rotated_canvas(size: tuple[int, int], degrees: float) -> tuple[int, int]:
    """The width and height of the bounding box of a ``size`` image rotated by ``degrees`` (libvips')."""
    w, h = size
    turn = degrees % 360
    if turn in (0, 180):
        return w, h
    if turn in (90, 270):
        return h, w
    cos, sin = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
    # Round up, forgiving float noise: never smaller than what libvips will allocate.
    return math.ceil(w * cos + h * sin - 1e-6), math.ceil(w * sin + h * cos - 1e-6)


def check_canvas(plan: Plan, limits: PixelLimits) -> None:
    """Refuse (400) a request whose output, after rotation, is over the limits.

    ``request.resolve`` bounds the size before rotation; a rotation by an angle that is not a
    multiple of 90 grows the canvas (a 60000 x 1 strip at 45 degrees is 42427 x 42427 pixels), and
    one by 90 swaps the axes that ``max_width`` and ``max_height`` bound.
    """
    canvas = rotated_canvas(plan.size, plan.rotation.degrees)
    reason = limits.excess(*canvas)
    if reason is not None:
        raise LimitExceeded(
            f"the {plan.size[0]}x{plan.size[1]} output rotated by {plan.rotation.degrees:g} degrees "
            f"needs a larger canvas: {reason}"
        )


def check_decode_unit(width: int, height: int, what: str, limits: PixelLimits) -> None:
    """Refuse (415) a source whose decoder would hold ``width`` x ``height`` pixels at once."""
    reason = limits.excess(width, height)
    if reason is not None:
        raise SourceTooLarge(f"not rendered: {what}: {reason}")


def check_source(info: ImageInfo, limits: PixelLimits) -> None:
    """Refuse (415) a source whose decoder would have to hold more pixels at once than the limits allow.

    That is the source's own tile (TIFF tags, JPEG 2000 SIZ marker, every level's stored JPEG tiles),
    or the whole image when the source is not tiled: libvips decodes a JPEG, PNG or WebP, a strip
    TIFF and an untiled JPEG 2000 whole to cut any region of it.
    """
    if info.tile is not None:
        check_decode_unit(*info.tile, "a tile of the source", limits)
    else:
        check_decode_unit(info.width, info.height, "the source (not tiled, so decoded whole)", limits)
    for tiles in info.jpeg_tiles:
        if tiles is not None:
            check_decode_unit(tiles.tile_width, tiles.tile_height, "a tile of the source", limits)
