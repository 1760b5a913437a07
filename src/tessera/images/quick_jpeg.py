"""Small JPEG answers with Pillow: a decoded piece of a tile, cropped, maybe grown a pixel, encoded.

Most non-trivial tile requests of a deep-zoom viewer are "this part of one stored tile, as a JPEG":
no scaling beyond rounding, no rotation, no colour change. For a 256 px tile Pillow's per-call
overhead is a third of libvips' (about 1 ms against 3-4 ms for decode plus encode, measured here), so
those go through here and everything else through the libvips pipeline (``render.finish``).
"""

from __future__ import annotations

import io

from PIL import Image

from tessera.images.render import LevelRegion
from tessera.images.request import Plan


def is_plain_crop(area: LevelRegion, plan: Plan, bands: int) -> bool:
    """Whether ``plan`` is ``area`` of a level at about its own size, as a JPEG in the source's colours.

    "About": ``choose_level`` lets a level be a little short of the output (rounding), so the piece
    may need a few pixels more, never fewer.
    """
    out_w, out_h = plan.size
    return (
        plan.format == "jpg"
        and not plan.rotation.mirror
        and not plan.rotation.degrees % 360
        and area.width <= out_w <= 1.12 * area.width + 1
        and area.height <= out_h <= 1.12 * area.height + 1
        and plan.quality in ("default", "color" if bands == 3 else "gray")
    )


def encode_piece(piece: Image.Image, size: tuple[int, int], jpeg_quality: int) -> bytes:
    """Encode ``piece`` as a JPEG of ``size`` pixels (at least its own size).

    A piece one pixel short (the last row or column a pyramid level rounded away) gets its edge
    repeated; one more pixels short is resampled.
    """
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
