"""``info.json`` documents for IIIF Image API 3.0 and 2.1 (compliance level 2), from header facts only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # source brings libvips and tifffile
    from tessera.images.source import ImageInfo

CONTEXT = {"3": "http://iiif.io/api/image/3/context.json", "2": "http://iiif.io/api/image/2/context.json"}
PROFILE_URI = {"3": "http://iiif.io/api/image/3/level2.json", "2": "http://iiif.io/api/image/2/level2.json"}
#: Tile size advertised for sources that are not tiled.
DEFAULT_TILE = 512
#: Features beyond level 2 that this server supports (3.0 names; 2.1 lists all under "supports").
EXTRA_FEATURES = [
    "baseUriRedirect",
    "canonicalLinkHeader",
    "cors",
    "jsonldMediaType",
    "mirroring",
    "profileLinkHeader",
    "rotationArbitrary",
    "sizeUpscaling",
]
LEVEL2_FEATURES_21 = [
    "regionByPct",
    "regionByPx",
    "regionSquare",
    "rotationBy90s",
    "sizeByConfinedWh",
    "sizeByDistortedWh",
    "sizeByH",
    "sizeByPct",
    "sizeByW",
    "sizeByWh",
]


def sizes(info: ImageInfo, limit: tuple[int, int] | None) -> list[dict[str, int]]:
    """The stored levels, smallest first, within the size limits (cheap sizes for a client to ask)."""
    out = []
    for width, height in sorted(info.levels):
        if limit is None or (width <= limit[0] and height <= limit[1]):
            out.append({"width": width, "height": height})
    return out


def tiles(info: ImageInfo) -> list[dict[str, Any]]:
    width, height = info.tile or (DEFAULT_TILE, DEFAULT_TILE)
    factors = [1]
    while max(info.width, info.height) / (factors[-1] * 2) >= min(width, height) / 2 and len(factors) < 16:
        factors.append(factors[-1] * 2)
    return [{"width": width, "height": height, "scaleFactors": factors}]


def info_json(
    version: str,
    base: str,
    info: ImageInfo,
    max_width: int | None,
    max_height: int | None,
    max_area: int | None,
) -> dict[str, Any]:
    limit = (max_width, max_height or max_width) if max_width else None
    limits: dict[str, int] = {}
    if max_width:
        limits["maxWidth"] = max_width
    if max_height:
        limits["maxHeight"] = max_height
    if max_area:
        limits["maxArea"] = max_area
    if version == "3":
        return {
            "@context": CONTEXT["3"],
            "id": base,
            "type": "ImageService3",
            "protocol": "http://iiif.io/api/image",
            "profile": "level2",
            "width": info.width,
            "height": info.height,
            **limits,
            "sizes": sizes(info, limit),
            "tiles": tiles(info),
            "extraQualities": ["color", "gray", "bitonal"],
            "extraFormats": ["webp", "tif"],
            "extraFeatures": EXTRA_FEATURES,
        }
    return {
        "@context": CONTEXT["2"],
        "@id": base,
        "protocol": "http://iiif.io/api/image",
        "width": info.width,
        "height": info.height,
        "sizes": sizes(info, limit),
        "tiles": tiles(info),
        "profile": [
            PROFILE_URI["2"],
            {
                "formats": ["jpg", "png", "webp", "tif"],
                "qualities": ["default", "color", "gray", "bitonal"],
                "supports": sorted(
                    {*EXTRA_FEATURES, *LEVEL2_FEATURES_21, "sizeAboveFull"} - {"sizeUpscaling"}
                ),
                **limits,
            },
        ],
    }
