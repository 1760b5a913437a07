"""Parse, resolve and canonicalise IIIF Image API requests (3.0 and 2.1, compliance level 2).

Pure code: no I/O, no clock, no configuration. The web layer hands in the raw path and the image's
full size plus the configured size limits; everything here is a function of those arguments.

Section references below are to https://iiif.io/api/image/3.0/ ("3.0 §n") and
https://iiif.io/api/image/2.1/ ("2.1 §n"); implementation notes are
https://iiif.io/api/image/3.0/implementation/ ("3.0 notes §n").

Decisions (the specs leave these to the implementation):

* Numbers. Pixel values are ASCII decimal digits only (3.0 §4 "Size and region parameters in pixels
  MUST be non-negative integers"). Percentages and rotation are decimal digits with at most one "."
  (3.0 §4.7 "MUST consist only of decimal digits and '.' (e.g. 0.9 not +0.9)"; 2.1 §4). So "+5",
  "-1", "1e3", "0x10", " 5", "inf" and "nan" are 400. A missing leading zero (".5") or a trailing "."
  ("5.") only break a SHOULD and are accepted; canonical URIs normalise them. Integers longer than
  15 digits and decimals longer than 32 characters are 400 (3.0 §10: early rejection of
  out-of-range parameters). Parse-time checks (zero, a size over 100 %, a rotation over 360)
  use the exact value written; the arithmetic below uses the nearest double's shortest decimal
  (``33.333333333333333333`` is ``33.333333333333336``), exact to the 15-17 significant digits any
  client computes, so requests that are equal values share a memo entry and a canonical form.
* Percentage regions are rounded by *edges*: left = round(x% of width), right = round((x+w)% of
  width), width = right - left, rounding halves up, computed exactly (fractions, not floats). This
  reproduces the spec's own example (3.0 §4.1: pct:41.6,7.5,40,70 of 300x200 is 125,15,120,140;
  pct:41.6,7.5,66.6,100 returns 175x185), and regions that share a percentage edge abut without a
  gap or an overlap. The region is never empty: at least 1 px in each dimension.
* Regions that extend beyond the image are clipped; a region starting at or beyond the right or
  bottom edge is 400 (3.0 §4.1, 2.1 §4.1). `square` is the largest centred square, the offset
  rounded down (3.0 §4.1 "centered is often a reasonable default").
* Scaled sizes: the dimension a client did not give ("w,", ",h", "!w,h") is round-half-up of the
  exact proportional value and at least 1 px, keeping the aspect ratio "as closely as possible"
  (3.0 §4.2). For "pct:n" both dimensions are derived; if either rounds to 0 the request is 400
  (3.0 §4.2 "MUST NOT be less than 1 pixel"; 2.1 §4.2 "If the resulting height or width is zero").
* Limits. If only maxWidth is set, maxHeight = maxWidth (3.0 §5.2, 2.1 §5.3). "max" (and 2.1
  "full", which is treated as "max"), "^max" and "!w,h" are *scaled down* to fit the limits
  preserving the aspect ratio (3.0 §4.2 "max ... unless it is constrained to a smaller size";
  "!w,h ... not larger than ... server-imposed limits"): linear limits by an exact scale factor
  rounded half up, maxArea by the factor sqrt(maxArea / (w·h)) with floored dimensions. Any other
  size beyond a limit raises LimitExceeded: 400 for 3.0 (3.0 §4.2 "greater than the server-imposed
  limits ... SHOULD result in a 400"), 404 for 2.1 (2.1 §7.2 lists 404 for "the requested size is
  greater than the limits specified", and 2.1 §4.2 says nothing).
* Upscaling. 3.0 without "^": "w,", ",h", "w,h" larger than the region are 400 and "pct:n" with
  n > 100 is 400 at parse time (3.0 §4.2); "max" and "!w,h" are capped at the region size instead.
  "^max" without any configured limit is the region size. 2.1 allows scaling above full size
  (2.1 §4.2 "MAY support scaling above the full size"), except "full"/"max" which never upscale.
* Formats: jpg, png, webp, tif are served; gif, jp2, pdf are valid IIIF formats we do not implement
  (501, 3.0 §7.3 "a valid IIIF request that is not implemented"); anything else is 400. The 501 is
  raised only once the rest of the request has parsed, so a request with two problems gets 400.
* Canonical form (3.0 §4.8, 2.1 §4.7): see canonical_path().
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal
from urllib.parse import unquote_to_bytes

from tessera.errors import TesseraError

__all__ = [
    "FORMATS",
    "QUALITIES",
    "SUPPORTED_FORMATS",
    "BadRequest",
    "IIIFError",
    "ImageRequest",
    "LimitExceeded",
    "NotImplementedFeature",
    "Plan",
    "Region",
    "Rotation",
    "Size",
    "canonical_path",
    "format_number",
    "parse_image_request",
    "parse_path",
    "parse_quality_format",
    "parse_region",
    "parse_rotation",
    "parse_size",
    "resolve",
    "validate_identifier",
]

Version = Literal["2", "3"]

#: Quality values of both versions (3.0 §4.4, 2.1 §4.4). "grey" is not one of them.
QUALITIES = frozenset({"default", "color", "gray", "bitonal"})
#: Format values defined by both versions (3.0 §4.5, 2.1 §4.5).
FORMATS = frozenset({"jpg", "tif", "png", "gif", "jp2", "pdf", "webp"})
#: The formats this server renders; the rest of FORMATS answers 501.
SUPPORTED_FORMATS = frozenset({"jpg", "png", "webp", "tif"})

_MAX_INT_DIGITS = 15
_MAX_DECIMAL_CHARS = 32
_INT = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HALF = Fraction(1, 2)

_PATH_HINT = (
    "expected {identifier}, {identifier}/info.json or "
    "{identifier}/{region}/{size}/{rotation}/{quality}.{format}; "
    "a slash inside the identifier must be URL-encoded as %2F"
)


# ---------------------------------------------------------------------------------------------
# Errors


class IIIFError(TesseraError):
    """A request the IIIF layer refuses; ``status`` is the HTTP status, ``message`` says why."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(IIIFError):
    """Syntax error or a parameter out of range for this image (400)."""

    status = 400


class NotImplementedFeature(IIIFError):
    """A valid IIIF request this server does not implement (501)."""

    status = 501


class LimitExceeded(IIIFError):
    """An explicit size beyond maxWidth / maxHeight / maxArea: 400 for 3.0, 404 for 2.1."""

    status = 400


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Region:
    """The region parameter. ``pixels`` holds ints, ``percent`` floats; full/square ignore x,y,w,h."""

    kind: Literal["full", "square", "pixels", "percent"]
    x: float = 0
    y: float = 0
    w: float = 0
    h: float = 0


@dataclass(frozen=True)
class Size:
    """The size parameter.

    kind: ``max`` ("max", "^max"; 2.1 "full" and "max"), ``w`` ("w,"), ``h`` (",h"), ``pct``
    ("pct:n"), ``wh`` ("w,h"), ``confined`` ("!w,h"). ``upscale`` is the 3.0 "^" prefix.
    """

    kind: Literal["max", "w", "h", "pct", "wh", "confined"]
    w: int | None = None
    h: int | None = None
    pct: float | None = None
    upscale: bool = False


@dataclass(frozen=True)
class Rotation:
    """Clockwise degrees in [0, 360]; ``mirror`` reflects on the vertical axis before rotating."""

    degrees: float = 0.0
    mirror: bool = False


@dataclass(frozen=True)
class ImageRequest:
    version: Version
    identifier: str
    region: Region
    size: Size
    rotation: Rotation
    quality: str
    format: str


@dataclass(frozen=True)
class Plan:
    """A request resolved against an image of known full size.

    ``region`` is x, y, w, h in full-resolution pixels, clipped to the image; ``size`` is the output
    width, height before rotation. ``max_size`` / ``upscaled_max_size`` are what "max" / "^max"
    give for this region under the limits in force; canonical_path() needs them.
    """

    region: tuple[int, int, int, int]
    size: tuple[int, int]
    rotation: Rotation
    quality: str
    format: str
    max_size: tuple[int, int] | None = None
    upscaled_max_size: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------
# Numbers


def _int(text: str, what: str) -> int:
    if not _INT.fullmatch(text):
        raise BadRequest(f"{what} {text!r} is not a non-negative integer (decimal digits only)")
    if len(text) > _MAX_INT_DIGITS:
        raise BadRequest(f"{what} {text!r} is out of range")
    return int(text)


def _decimal(text: str, what: str) -> Fraction:
    """The exact value of a decimal; range checks use it, the dataclasses store float(value)."""
    if not _DECIMAL.fullmatch(text):
        raise BadRequest(f"{what} {text!r} is not a non-negative number (decimal digits and '.' only)")
    if len(text) > _MAX_DECIMAL_CHARS:
        raise BadRequest(f"{what} {text!r} is too long")
    return Fraction(text)


def _exact(value: float) -> Fraction:
    """The decimal value the client wrote (floats parsed from short decimals round-trip via repr)."""
    return Fraction(repr(float(value)))


def _round(value: Fraction) -> int:
    """Round half up; exact."""
    return math.floor(value + _HALF)


def format_number(value: float) -> str:
    """A number as 3.0 §4.7 / 2.1 §4.7 want it: an integer if possible, else no trailing zeros and a
    leading 0 below 1, never an exponent. ``90.0`` → ``"90"``, ``0.5`` → ``"0.5"``, ``1e-07`` →
    ``"0.0000001"``."""
    number = Decimal(repr(float(value)))
    if number == number.to_integral_value():
        return str(int(number))
    return format(number, "f").rstrip("0")


# ---------------------------------------------------------------------------------------------
# Parsing


def _check_version(version: str) -> Version:
    if version == "2":
        return "2"
    if version == "3":
        return "3"
    raise ValueError(f"IIIF Image API version must be '2' or '3', not {version!r}")


def validate_identifier(identifier: str) -> str:
    """Reject identifiers that are empty, contain control characters, are absolute, or contain
    "." / ".." segments (3.0 §10: avoid directory traversal). Returns the identifier."""
    if not identifier:
        raise BadRequest("the identifier is empty")
    if _CONTROL.search(identifier):
        raise BadRequest("the identifier contains control characters")
    if identifier.startswith("/"):
        raise BadRequest("the identifier must not start with '/'")
    if any(segment in (".", "..") for segment in re.split(r"[/\\]", identifier)):
        raise BadRequest("the identifier must not contain '.' or '..' path segments")
    return identifier


def _percent_decode(segment: str, what: str) -> str:
    if _BAD_PERCENT.search(segment):
        raise BadRequest(f"{what} has a '%' that is not followed by two hex digits; encode '%' as %25")
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not valid UTF-8 after percent-decoding") from None


def parse_path(
    version: str, raw_path: str
) -> tuple[str, tuple[str, str, str, str] | Literal["info.json"] | None]:
    """Split the raw (still percent-encoded) path after ``/iiif/{version}/``.

    Returns ``(identifier, None)`` for the base URI (a single trailing slash is tolerated),
    ``(identifier, "info.json")`` for the information request, or
    ``(identifier, (region, size, rotation, quality.format))`` for an image request. The identifier
    and the parameters are percent-decoded (clients may encode e.g. "^" as %5E; 3.0 §9 "Percent-
    encoding other characters introduces no ambiguity"). The path is read from the right (3.0 notes
    §1): the identifier must be exactly one segment, so an unencoded "/" in it is a 404 that says to
    encode it.
    """
    _check_version(version)
    parts = raw_path.split("/")
    tail: tuple[str, str, str, str] | Literal["info.json"] | None
    if len(parts) == 1 or (len(parts) == 2 and parts[1] == ""):
        tail = None
    elif len(parts) == 2 and parts[1] == "info.json":
        tail = "info.json"
    elif len(parts) == 5 and parts[4] != "info.json":
        names = ("region", "size", "rotation", "quality.format")
        region, size, rotation, quality_format = (
            _percent_decode(part, name) for part, name in zip(parts[1:], names, strict=True)
        )
        tail = (region, size, rotation, quality_format)
    else:
        # An unencoded "/" leaves no known identifier: 404 (the validator test id_error_escapedslash).
        raise IIIFError(f"no image at {raw_path!r}: {_PATH_HINT}", status=404)
    identifier = validate_identifier(_percent_decode(parts[0], "the identifier"))
    return identifier, tail


def parse_region(text: str) -> Region:
    """``full`` | ``square`` | ``x,y,w,h`` | ``pct:x,y,w,h`` (3.0 §4.1, 2.1 §4.1)."""
    if text == "full":
        return Region("full")
    if text == "square":
        return Region("square")
    percent = text.startswith("pct:")
    parts = (text[4:] if percent else text).split(",")
    if len(parts) != 4:
        raise BadRequest(f"region {text!r} is not full, square, x,y,w,h or pct:x,y,w,h")
    if percent:
        x, y, w, h = (_decimal(p, f"region pct {n}") for p, n in zip(parts, "xywh", strict=True))
        if w == 0 or h == 0:
            raise BadRequest(f"region {text!r} has zero width or height")
        return Region("percent", float(x), float(y), float(w), float(h))
    px, py, pw, ph = (_int(p, f"region {n}") for p, n in zip(parts, "xywh", strict=True))
    if pw == 0 or ph == 0:
        raise BadRequest(f"region {text!r} has zero width or height")
    return Region("pixels", px, py, pw, ph)


def parse_size(version: str, text: str) -> Size:
    """3.0 §4.2: ``[^]max``, ``[^]w,``, ``[^],h``, ``[^]pct:n``, ``[^]w,h``, ``[^]!w,h``.
    2.1 §4.2: ``full``, ``max``, ``w,``, ``,h``, ``pct:n``, ``w,h``, ``!w,h``."""
    v = _check_version(version)
    body = text
    upscale = body.startswith("^")
    if upscale:
        if v == "2":
            raise BadRequest(f"size {text!r}: the '^' prefix is IIIF Image API 3.0 syntax, not 2.1")
        body = body[1:]
    if body == "max":
        return Size("max", upscale=upscale)
    if body == "full":
        if v == "2":
            return Size("max")
        raise BadRequest(f"size {text!r} is not valid in IIIF Image API 3.0; use 'max'")
    if body.startswith("pct:"):
        n = _decimal(body[4:], "size pct")
        if n == 0:
            raise BadRequest(f"size {text!r}: the percentage must be greater than zero")
        if v == "3" and n > 100 and not upscale:
            raise BadRequest(f"size {text!r}: more than 100 percent needs the '^' (upscaling) prefix")
        return Size("pct", pct=float(n), upscale=upscale)
    confined = body.startswith("!")
    if confined:
        body = body[1:]
    w_text, comma, h_text = body.partition(",")
    if not comma or not (w_text or h_text):
        raise BadRequest(f"size {text!r} is not one of max, w,  ,h  pct:n  w,h  !w,h")
    w = _int(w_text, "size width") if w_text else None
    h = _int(h_text, "size height") if h_text else None
    if w == 0 or h == 0:
        raise BadRequest(f"size {text!r}: width and height must be greater than zero")
    if confined:
        if w is None or h is None:
            raise BadRequest(f"size {text!r}: '!w,h' needs both a width and a height")
        return Size("confined", w=w, h=h, upscale=upscale)
    if h is None:
        return Size("w", w=w, upscale=upscale)
    if w is None:
        return Size("h", h=h, upscale=upscale)
    return Size("wh", w=w, h=h, upscale=upscale)


def parse_rotation(text: str) -> Rotation:
    """``n`` or ``!n``, n a number from 0 to 360 inclusive (3.0 §4.3, 2.1 §4.3)."""
    mirror = text.startswith("!")
    body = text[1:] if mirror else text
    if not _DECIMAL.fullmatch(body) or len(body) > _MAX_DECIMAL_CHARS:
        raise BadRequest(f"rotation {text!r} must be a number from 0 to 360, optionally prefixed by '!'")
    degrees = Fraction(body)
    if degrees > 360:
        raise BadRequest(f"rotation {text!r} is out of range: it must be from 0 to 360")
    return Rotation(float(degrees), mirror)


def parse_quality_format(text: str) -> tuple[str, str]:
    """``quality.format``; both values checked against QUALITIES / FORMATS (400 if unknown)."""
    quality, dot, fmt = text.rpartition(".")
    if not dot:
        raise BadRequest(f"{text!r} must be quality.format, e.g. default.jpg")
    if quality not in QUALITIES:
        raise BadRequest(f"unknown quality {quality!r}: use one of {', '.join(sorted(QUALITIES))}")
    if fmt not in FORMATS:
        raise BadRequest(f"unknown format {fmt!r}: use one of {', '.join(sorted(SUPPORTED_FORMATS))}")
    return quality, fmt


def parse_image_request(
    version: str, identifier: str, region: str, size: str, rotation: str, quality_format: str
) -> ImageRequest:
    """Parse the (percent-decoded) parameters of an image request.

    Raises BadRequest for anything syntactically wrong and NotImplementedFeature for a valid IIIF
    format we do not render (only after everything else parsed).
    """
    v = _check_version(version)
    checked_identifier = validate_identifier(identifier)
    parsed_region = parse_region(region)
    parsed_size = parse_size(v, size)
    parsed_rotation = parse_rotation(rotation)
    quality, fmt = parse_quality_format(quality_format)
    if fmt not in SUPPORTED_FORMATS:
        raise NotImplementedFeature(
            f"format {fmt!r} is not implemented by this server: use one of "
            f"{', '.join(sorted(SUPPORTED_FORMATS))}"
        )
    return ImageRequest(v, checked_identifier, parsed_region, parsed_size, parsed_rotation, quality, fmt)


# ---------------------------------------------------------------------------------------------
# Resolution


def _resolve_region(region: Region, width: int, height: int) -> tuple[int, int, int, int]:
    if region.kind == "full":
        return 0, 0, width, height
    if region.kind == "square":
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    if region.w <= 0 or region.h <= 0 or region.x < 0 or region.y < 0:
        raise BadRequest("the region must have a non-negative origin and a positive width and height")
    if region.kind == "pixels":
        x, y, w, h = int(region.x), int(region.y), int(region.w), int(region.h)
        if x >= width or y >= height:
            raise BadRequest(f"region {x},{y},{w},{h} lies entirely outside the {width}x{height} image")
        return x, y, min(w, width - x), min(h, height - y)
    px, py, pw, ph = (_exact(v) for v in (region.x, region.y, region.w, region.h))
    if px >= 100 or py >= 100:
        raise BadRequest(
            f"region pct:{format_number(region.x)},{format_number(region.y)},... "
            f"lies entirely outside the image"
        )
    left = min(_round(px * width / 100), width - 1)
    top = min(_round(py * height / 100), height - 1)
    right = min(_round((px + pw) * width / 100), width)
    bottom = min(_round((py + ph) * height / 100), height)
    return left, top, max(1, right - left), max(1, bottom - top)


def _fit(
    w: int, h: int, box_w: int | None, box_h: int | None, max_area: int | None, *, upscale: bool
) -> tuple[int, int]:
    """The largest size with w:h's aspect ratio (as closely as integers allow) within box_w x box_h
    and max_area; never larger than w x h unless ``upscale``. With nothing to bound it: w x h."""
    bounds: list[Fraction] = []
    if box_w is not None:
        bounds.append(Fraction(box_w, w))
    if box_h is not None:
        bounds.append(Fraction(box_h, h))
    if not upscale or (not bounds and max_area is None):
        bounds.append(Fraction(1))
    scale = min(bounds) if bounds else None
    if scale is not None:
        out_w, out_h = max(1, _round(w * scale)), max(1, _round(h * scale))
        if max_area is None or out_w * out_h <= max_area:
            return out_w, out_h
    assert max_area is not None
    area_scale = math.sqrt(max_area / (w * h))
    if scale is not None:
        area_scale = min(area_scale, float(scale))
    out_w, out_h = max(1, math.floor(w * area_scale)), max(1, math.floor(h * area_scale))
    if out_w * out_h > max_area:  # a dimension was raised to 1 px, or float error
        if out_w >= out_h:
            out_w = max(1, max_area // out_h)
        else:
            out_h = max(1, max_area // out_w)
    return out_w, out_h


def _min_limit(value: int | None, limit: int | None) -> int | None:
    if value is None:
        return limit
    return value if limit is None else min(value, limit)


def resolve(
    request: ImageRequest,
    width: int,
    height: int,
    *,
    max_width: int | None = None,
    max_height: int | None = None,
    max_area: int | None = None,
) -> Plan:
    """Resolve ``request`` against an image of full size ``width`` x ``height``.

    ``max_height`` defaults to ``max_width`` (3.0 §5.2). Raises BadRequest for a region entirely
    outside the image, a 3.0 size that upscales without "^", or a size rounding to 0 px; and
    LimitExceeded for an explicit size beyond the limits. See the module docstring for rounding.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    for name, limit in (("max_width", max_width), ("max_height", max_height), ("max_area", max_area)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be positive or None, not {limit}")
    if max_height is None:
        max_height = max_width

    region = _resolve_region(request.region, width, height)
    rw, rh = region[2], region[3]
    max_size = _fit(rw, rh, max_width, max_height, max_area, upscale=False)
    upscaled_max_size = _fit(rw, rh, max_width, max_height, max_area, upscale=True)

    size = request.size
    allow_upscale = size.upscale or request.version == "2"
    if size.kind == "max":
        out = upscaled_max_size if size.upscale else max_size
    elif size.kind == "confined":
        assert size.w is not None and size.h is not None
        box_w, box_h = _min_limit(size.w, max_width), _min_limit(size.h, max_height)
        out = _fit(rw, rh, box_w, box_h, max_area, upscale=True)
        if not allow_upscale and (out[0] > rw or out[1] > rh):
            # 3.0 §4.2 reads as "cap at the region", but the official validator (size_noup) wants a
            # 400 for "!w,h" that would upscale without "^"; we follow the validator.
            raise BadRequest(
                f"size !{size.w},{size.h} would upscale the {rw}x{rh} region; "
                f"prefix the size with '^' to allow upscaling"
            )
    else:
        out = _explicit_size(size, rw, rh)
        if not allow_upscale and (out[0] > rw or out[1] > rh):
            raise BadRequest(
                f"size {out[0]}x{out[1]} is larger than the {rw}x{rh} region; "
                f"prefix the size with '^' to allow upscaling"
            )
        _check_limits(out, max_width, max_height, max_area, request.version)
    return Plan(
        region=region,
        size=out,
        rotation=request.rotation,
        quality=request.quality,
        format=request.format,
        max_size=max_size,
        upscaled_max_size=upscaled_max_size,
    )


def _explicit_size(size: Size, rw: int, rh: int) -> tuple[int, int]:
    if size.kind == "w":
        assert size.w is not None
        return size.w, max(1, _round(Fraction(rh * size.w, rw)))
    if size.kind == "h":
        assert size.h is not None
        return max(1, _round(Fraction(rw * size.h, rh))), size.h
    if size.kind == "pct":
        assert size.pct is not None
        scale = _exact(size.pct) / 100
        out = _round(rw * scale), _round(rh * scale)
        if out[0] < 1 or out[1] < 1:
            raise BadRequest(
                f"size pct:{format_number(size.pct)} of the {rw}x{rh} region is less than 1 pixel"
            )
        return out
    assert size.kind == "wh" and size.w is not None and size.h is not None
    return size.w, size.h


def _check_limits(
    out: tuple[int, int], max_width: int | None, max_height: int | None, max_area: int | None, version: str
) -> None:
    status = 404 if version == "2" else 400
    w, h = out
    if max_width is not None and w > max_width:
        raise LimitExceeded(f"requested width {w} exceeds maxWidth {max_width}", status=status)
    if max_height is not None and h > max_height:
        raise LimitExceeded(f"requested height {h} exceeds maxHeight {max_height}", status=status)
    if max_area is not None and w * h > max_area:
        raise LimitExceeded(f"requested area {w}x{h} = {w * h} exceeds maxArea {max_area}", status=status)


# ---------------------------------------------------------------------------------------------
# Canonical form


def canonical_path(
    plan: Plan, request: ImageRequest, width: int, height: int, *, default_quality: str = "color"
) -> str:
    """The canonical ``region/size/rotation/quality.format`` for a resolved request.

    region (3.0 §4.8, 2.1 §4.7): ``full`` if the plan covers the whole image (so a square of a square
    image is ``full``), else ``x,y,w,h`` of the clipped region.

    size, 3.0 §4.8: ``max`` if the output is the maximum size without upscaling, ``^max`` if it is
    the maximum upscaled size, else ``w,h``, prefixed by ``^`` if larger than the region in either
    dimension. So ``pct:100`` or ``1000,1000`` of an unlimited 1000x1000 image are ``max``.

    size, 2.1 §4.7 and the "full" deprecation warning in 2.1 §4.2: ``full`` if the output is the
    region's size, else ``w,`` if ``w,`` gives back exactly this height (the aspect ratio is kept),
    else ``w,h``. 2.1 "max" under limits is therefore ``w,``.

    rotation: ``!`` if mirrored, then an integer if possible, else a decimal without trailing zeros
    and with a leading 0 (3.0 §4.7). quality: ``default`` if the server's default quality
    (``default_quality``, "color" unless the caller knows better for this image) was asked for.

    Every canonical path resolves again (same image, same limits) to the same plan.
    """
    x, y, rw, rh = plan.region
    region = "full" if plan.region == (0, 0, width, height) else f"{x},{y},{rw},{rh}"
    out_w, out_h = plan.size
    if request.version == "3":
        max_size = plan.max_size or (rw, rh)
        if plan.size == max_size:
            size = "max"
        elif plan.size == plan.upscaled_max_size:
            size = "^max"
        elif out_w <= rw and out_h <= rh:
            size = f"{out_w},{out_h}"
        else:
            size = f"^{out_w},{out_h}"
    elif plan.size == (rw, rh):
        size = "full"
    elif max(1, _round(Fraction(rh * out_w, rw))) == out_h:
        size = f"{out_w},"
    else:
        size = f"{out_w},{out_h}"
    rotation = ("!" if plan.rotation.mirror else "") + format_number(plan.rotation.degrees)
    quality = "default" if plan.quality in ("default", default_quality) else plan.quality
    return f"{region}/{size}/{rotation}/{quality}.{plan.format}"
