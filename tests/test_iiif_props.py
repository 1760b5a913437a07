"""Property-based tests of the IIIF parser and planner (3.0 and 2.1) against a small reference of the
specs' arithmetic written here, independently of ``tessera.images.request``; and "nothing but the
documented errors" for arbitrary paths. Pure: no I/O. Example counts are bounded so CI stays fast.

The reference (``expect``) encodes the specs' rules and the decisions documented at the top of
``request.py``: percentage regions rounded by edges, half up; clipping; a region starting outside is
400; scaled dimensions rounded half up, at least 1 px; 3.0 upscaling only with ``^``; explicit sizes
beyond a limit 400 (3.0) or 404 (2.1); ``gif``/``jp2``/``pdf`` 501 once everything else has parsed.
Numbers are written the ways a client may write them (``.5``, ``5.``, ``05``, trailing zeros, %-escapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.images.request import (
    FORMATS,
    QUALITIES,
    IIIFError,
    canonical_path,
    parse_image_request,
    resolve,
)
from tessera.web.iiif import UnknownVersion, parse_iiif_path

EXAMPLES = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


class Refused(Exception):
    """The reference's verdict: the request is refused with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def rnd(value: Fraction) -> int:
    """Round half up, in integers: floor(p/q + 1/2) = (2p + q) // 2q."""
    return (2 * value.numerator + value.denominator) // (2 * value.denominator)


# ---------------------------------------------------------------------------------------------
# Requests as values, and the text a client may write for them


@dataclass(frozen=True)
class Number:
    """A non-negative decimal and the way it is written."""

    value: Fraction
    text: str

    @property
    def used(self) -> Fraction:
        """The value computed with: the nearest double's shortest decimal (``request.py``: numbers)."""
        return Fraction(repr(float(self.value)))


@st.composite
def integers(draw: st.DrawFn, top: int = 6000) -> Number:
    value = draw(st.integers(0, top))
    text = str(value).zfill(draw(st.integers(0, 3)) + len(str(value)))  # leading zeros are digits too
    return Number(Fraction(value), text)


@st.composite
def decimals(draw: st.DrawFn, top: int = 150) -> Number:
    """A client's numbers: 33.3, 12.5, 0.25, 100, and computed ones of 17 digits and more."""
    places = draw(st.integers(0, 6) | st.integers(7, 25))
    units = draw(st.integers(0, top * 10**places))
    value = Decimal(units).scaleb(-places)
    text = format(value, "f")
    if "." in text and draw(st.booleans()):
        text += "0" * draw(st.integers(1, 3))  # 12.50
    if text.startswith("0.") and draw(st.booleans()):
        text = text[1:]  # .5
    if "." not in text and draw(st.booleans()):
        text += "."  # 5.
    return Number(Fraction(value), text)


@st.composite
def regions(draw: st.DrawFn) -> tuple[str, tuple]:
    kind = draw(st.sampled_from(["full", "square", "pixels", "pixels", "percent", "percent"]))
    if kind in ("full", "square"):
        return kind, (kind,)
    numbers = draw(st.lists(integers() if kind == "pixels" else decimals(), min_size=4, max_size=4))
    text = ",".join(n.text for n in numbers)
    return ("pct:" if kind == "percent" else "") + text, (kind, *numbers)


@st.composite
def sizes(draw: st.DrawFn, version: str) -> tuple[str, tuple]:
    forms = ["max", "w", "h", "pct", "wh", "confined"] + (["full"] if version == "2" else [])
    kind = draw(st.sampled_from(forms))
    upscale = version == "3" and draw(st.booleans())
    caret = "^" if upscale else ""
    if kind in ("max", "full"):
        return caret + kind, ("max", upscale)
    if kind == "pct":
        n = draw(decimals(top=250))
        return f"{caret}pct:{n.text}", ("pct", upscale, n)
    w, h = draw(integers(top=9000)), draw(integers(top=9000))
    text = {
        "w": f"{w.text},",
        "h": f",{h.text}",
        "wh": f"{w.text},{h.text}",
        "confined": f"!{w.text},{h.text}",
    }
    return caret + text[kind], (kind, upscale, w.value, h.value)


@st.composite
def rotations(draw: st.DrawFn) -> tuple[str, tuple]:
    degrees = draw(decimals(top=400))
    mirror = draw(st.booleans())
    return ("!" if mirror else "") + degrees.text, (degrees.value, mirror)


quality_formats = st.tuples(
    st.sampled_from([*sorted(QUALITIES), "grey", "native", "Default"]),
    st.sampled_from([*sorted(FORMATS), "jpeg", "JPG", "bmp", ""]),
)


# ---------------------------------------------------------------------------------------------
# The reference


def expect_region(region: tuple, width: int, height: int) -> tuple[int, int, int, int]:
    kind = region[0]
    if kind == "full":
        return 0, 0, width, height
    if kind == "square":
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    if kind == "pixels":
        x, y, w, h = (n.value for n in region[1:])
        if x >= width or y >= height:
            raise Refused(400)
        return int(x), int(y), int(min(w, width - x)), int(min(h, height - y))
    x, y, w, h = (n.used for n in region[1:])
    if x >= 100 or y >= 100:
        raise Refused(400)
    left = min(rnd(x * width / 100), width - 1)
    top = min(rnd(y * height / 100), height - 1)
    right = min(rnd((x + w) * width / 100), width)
    bottom = min(rnd((y + h) * height / 100), height)
    return left, top, max(1, right - left), max(1, bottom - top)


def expect_size(version: str, size: tuple, rw: int, rh: int) -> tuple[int, int]:
    """The output size without server limits."""
    kind, upscale = size[0], size[1]
    if kind == "max":
        return rw, rh
    if kind == "pct":
        out = rnd(rw * size[2].used / 100), rnd(rh * size[2].used / 100)
        if min(out) < 1:
            raise Refused(400)
    elif kind == "w":
        out = size[2], max(1, rnd(Fraction(rh) * size[2] / rw))
    elif kind == "h":
        out = max(1, rnd(Fraction(rw) * size[3] / rh)), size[3]
    elif kind == "wh":
        out = size[2], size[3]
    else:  # !w,h: the largest size of the region's shape inside the box
        scale = min(Fraction(size[2]) / rw, Fraction(size[3]) / rh)
        out = max(1, rnd(rw * scale)), max(1, rnd(rh * scale))
    if version == "3" and not upscale and (out[0] > rw or out[1] > rh):
        raise Refused(400)
    return int(out[0]), int(out[1])


def parse_errors(version: str, region: tuple, size: tuple, rotation: tuple, quality: str, fmt: str) -> None:
    """What is refused before the image is known."""
    if region[0] in ("pixels", "percent") and (region[3].value == 0 or region[4].value == 0):
        raise Refused(400)
    kind = size[0]
    if kind == "pct" and (size[2].value == 0 or (version == "3" and size[2].value > 100 and not size[1])):
        raise Refused(400)
    if (kind in ("w", "wh", "confined") and size[2] == 0) or (
        kind in ("h", "wh", "confined") and size[3] == 0
    ):
        raise Refused(400)
    if rotation[0] > 360 or quality not in QUALITIES or fmt not in FORMATS:
        raise Refused(400)
    if fmt in ("gif", "jp2", "pdf"):
        raise Refused(501)


def size_text_is_version_syntax(version: str, text: str) -> bool:
    return not (version == "3" and text.lstrip("^") == "full")


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def requests(draw: st.DrawFn, version: str) -> tuple:
    region = draw(regions())
    size = draw(sizes(version))
    rotation = draw(rotations())
    quality, fmt = draw(quality_formats)
    return region, size, rotation, quality, fmt


def run(version: str, request: tuple, width: int, height: int, **limits: int) -> tuple:
    """(status, region, size) the implementation gives; status 200 when it answers."""
    (region_text, _), (size_text, _), (rotation_text, _), quality, fmt = request
    try:
        parsed = parse_image_request(version, "id", region_text, size_text, rotation_text, f"{quality}.{fmt}")
        plan = resolve(parsed, width, height, **limits)
    except IIIFError as exc:
        return exc.status, None, None
    return 200, plan.region, plan.size


def reference(version: str, request: tuple, width: int, height: int) -> tuple:
    (_, region), (_, size), (_, rotation), quality, fmt = request
    try:
        parse_errors(version, region, size, rotation, quality, fmt)
        box = expect_region(region, width, height)
        return 200, box, expect_size(version, size, box[2], box[3])
    except Refused as refused:
        return refused.status, None, None


image_sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@EXAMPLES
@given(st.sampled_from(["3", "2"]).flatmap(lambda v: st.tuples(st.just(v), requests(v))), image_sizes)
def test_parser_and_planner_match_the_reference_without_limits(case: tuple, image: tuple[int, int]) -> None:
    version, request = case
    expected = reference(version, request, *image)
    assert run(version, request, *image) == expected
    if expected[0] == 200:  # rotation (degrees, mirroring), quality and format carried as asked
        (region, _), (size, _), (rotation, (degrees, mirror)), quality, fmt = request
        plan = resolve(parse_image_request(version, "id", region, size, rotation, f"{quality}.{fmt}"), *image)
        assert (plan.rotation.degrees, plan.rotation.mirror) == (float(degrees), mirror)
        assert (plan.quality, plan.format) == (quality, fmt)


def binding(out: tuple[int, int], limit_w: int | None, limit_h: int | None, max_area: int | None) -> bool:
    """Whether a limit stops ``out`` from growing by a pixel (it is as large as the limits allow)."""
    width, height = out
    return (
        (limit_w is not None and width >= limit_w - 1)
        or (limit_h is not None and height >= limit_h - 1)
        or (max_area is not None and (width + 1) * (height + 1) > max_area)
    )


@EXAMPLES
@given(
    st.sampled_from(["3", "2"]).flatmap(lambda v: st.tuples(st.just(v), requests(v))),
    image_sizes,
    st.one_of(st.none(), st.integers(1, 4000)),
    st.one_of(st.none(), st.integers(1, 4000)),
    st.one_of(st.none(), st.integers(1, 4_000_000)),
)
def test_server_limits_are_kept_and_shapes_preserved(
    case: tuple, image: tuple[int, int], max_width: int | None, max_height: int | None, max_area: int | None
) -> None:
    version, request = case
    limits = {"max_width": max_width, "max_height": max_height, "max_area": max_area}
    status, box, out = run(version, request, *image, **limits)
    ref_status, ref_box, ref_out = reference(version, request, *image)
    limit_w, limit_h = max_width, max_height if max_height is not None else max_width
    kind, upscale = request[1][1][:2]
    if status == 200:
        width, height = out
        rw, rh = box[2], box[3]
        assert (limit_w is None or width <= limit_w) and (limit_h is None or height <= limit_h)
        assert max_area is None or width * height <= max_area
    if ref_status != 200:  # refused without limits: refused with them too, for the same reason ...
        if not (kind == "confined" and status == 200):  # ... unless the limits shrink "!w,h" to fit
            assert status == ref_status
        return
    over = (
        (limit_w is not None and ref_out[0] > limit_w)
        or (limit_h is not None and ref_out[1] > limit_h)
        or (max_area is not None and ref_out[0] * ref_out[1] > max_area)
    )
    if kind not in ("max", "confined"):  # explicit sizes: as asked, or refused if beyond a limit
        assert (status, out) == ((400 if version == "3" else 404), None) if over else (200, ref_out)
        return
    # "max", "^max" and "!w,h" are scaled to fit the limits instead, keeping the region's shape.
    assert status == 200 and box == ref_box
    assert abs(width * rh - height * rw) <= max(rw, rh)
    if kind == "max" and upscale:  # "^max": as large as the limits allow (the region with none)
        assert binding(out, limit_w, limit_h, max_area) or (
            (limit_w, limit_h, max_area) == (None, None, None) and out == (rw, rh)
        )
    elif over:
        assert width <= ref_out[0] and height <= ref_out[1] and binding(out, limit_w, limit_h, max_area)
    else:
        assert out == ref_out


@EXAMPLES
@given(st.sampled_from(["3", "2"]).flatmap(lambda v: st.tuples(st.just(v), requests(v))), image_sizes)
def test_canonical_paths_resolve_to_the_same_plan(case: tuple, image: tuple[int, int]) -> None:
    version, request = case
    (region, _), (size, _), (rotation, _), quality, fmt = request
    try:
        parsed = parse_image_request(version, "id", region, size, rotation, f"{quality}.{fmt}")
        plan = resolve(parsed, *image, max_width=3000, max_area=5_000_000)
    except IIIFError:
        return
    canonical = canonical_path(plan, parsed, *image)
    again = parse_image_request(version, "id", *canonical.split("/"))
    plan_again = resolve(again, *image, max_width=3000, max_area=5_000_000)
    assert (plan_again.region, plan_again.size, plan_again.rotation) == (
        plan.region,
        plan.size,
        plan.rotation,
    )
    assert canonical_path(plan_again, again, *image) == canonical


# Arbitrary and hostile path segments: every answer is a documented IIIF error or a request.
hostile = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789.,!^:%pctmaxfulsqr-+eE", max_size=40),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-1",
            "1e999",
            "9" * 400,
            "%00",
            "%",
            "%zz",
            "%2F",
            "..",
            ".",
            "%2e%2e",
            "\u0660",
            "\uff11",
        ]
    ),
    st.integers(-(10**30), 10**30).map(str),
)


@EXAMPLES
@given(
    st.sampled_from(["3", "2", "1", "", "\uff13"]),
    st.one_of(
        st.text(max_size=30), st.text(max_size=30).map(lambda s: quote(s, safe="")), st.just("img%2Fa.jpg")
    ),
    st.lists(hostile, min_size=0, max_size=5),
    image_sizes,
)
def test_arbitrary_paths_raise_only_documented_errors(
    version: str, identifier: str, segments: list[str], image: tuple[int, int]
) -> None:
    try:
        parsed = parse_iiif_path("/".join([f"/iiif/{version}", identifier, *segments]))
        if parsed.image_request is not None:
            plan = resolve(parsed.image_request, *image, max_width=4000, max_area=10_000_000)
            canonical_path(plan, parsed.image_request, *image)
    except (IIIFError, UnknownVersion) as exc:
        assert exc.status in (400, 404, 501) and str(exc)
