"""IIIF Image API 3.0 / 2.1 request parsing, resolution and canonical paths (pure, no I/O)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tessera.errors import TesseraError
from tessera.images.request import (
    BadRequest,
    IIIFError,
    ImageRequest,
    LimitExceeded,
    NotImplementedFeature,
    Plan,
    Region,
    Rotation,
    Size,
    canonical_path,
    format_number,
    parse_image_request,
    parse_path,
    parse_region,
    parse_size,
    resolve,
)


def req(
    version: str,
    region: str = "full",
    size: str = "max",
    rotation: str = "0",
    quality_format: str = "default.jpg",
    identifier: str = "id",
) -> ImageRequest:
    return parse_image_request(version, identifier, region, size, rotation, quality_format)


def plan_for(version: str, region: str, size: str, width: int, height: int, **limits: Any) -> Plan:
    return resolve(req(version, region, size), width, height, **limits)


# ---------------------------------------------------------------------------------------------
# Errors


def test_error_classes() -> None:
    assert BadRequest("x").status == 400
    assert NotImplementedFeature("x").status == 501
    assert LimitExceeded("x").status == 400
    assert LimitExceeded("x", status=404).status == 404
    err = BadRequest("why")
    assert err.message == "why" and str(err) == "why"
    assert isinstance(err, IIIFError) and isinstance(err, TesseraError)


# ---------------------------------------------------------------------------------------------
# Region parsing (same grammar in both versions)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("full", Region("full")),
        ("square", Region("square")),
        ("0,0,10,10", Region("pixels", 0, 0, 10, 10)),
        ("125,15,120,140", Region("pixels", 125, 15, 120, 140)),
        ("007,0,1,1", Region("pixels", 7, 0, 1, 1)),
        ("pct:41.6,7.5,40,70", Region("percent", 41.6, 7.5, 40, 70)),
        ("pct:0,0,100,100", Region("percent", 0, 0, 100, 100)),
        ("pct:10,10,200,200", Region("percent", 10, 10, 200, 200)),
        ("pct:.5,0,5.,1", Region("percent", 0.5, 0, 5, 1)),
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_parse_region_valid(version: str, text: str, expected: Region) -> None:
    assert req(version, region=text).region == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Full",
        "FULL",
        "square ",
        "pct:",
        "pct:1,2,3",
        "1,2,3",
        "1,2,3,4,5",
        "0,0,0,10",
        "0,0,10,0",
        "pct:0,0,0,10",
        "pct:0,0,10,0.0",
        "pct:0,0,10,0.00000000000000000000000000",
        "-1,0,10,10",
        "+1,0,10,10",
        " 1,0,10,10",
        "1,0,10,10 ",
        "1e3,0,10,10",
        "0x10,0,10,10",
        "1.5,0,10,10",
        "1_0,0,10,10",
        "\u0661,0,10,10",
        "1234567890123456,0,1,1",
        "10,10,10,10\n",
        "pct:1e3,0,10,10",
        "pct:-1,0,10,10",
        "pct:+1,0,10,10",
        "pct:1,,2,3",
        "pct:1.2.3,0,1,1",
        "pct:.,0,1,1",
        "pct:nan,0,1,1",
        "pct:inf,0,1,1",
        "PCT:1,2,3,4",
        "pct: 1,2,3,4",
    ],
)
def test_parse_region_invalid(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_region(text)


# ---------------------------------------------------------------------------------------------
# Size parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max", Size("max")),
        ("^max", Size("max", upscale=True)),
        ("150,", Size("w", w=150)),
        ("^360,", Size("w", w=360, upscale=True)),
        (",150", Size("h", h=150)),
        ("^,240", Size("h", h=240, upscale=True)),
        ("pct:50", Size("pct", pct=50)),
        ("pct:100", Size("pct", pct=100)),
        ("pct:0.5", Size("pct", pct=0.5)),
        ("^pct:120", Size("pct", pct=120, upscale=True)),
        ("^pct:50", Size("pct", pct=50, upscale=True)),
        ("225,100", Size("wh", w=225, h=100)),
        ("^360,360", Size("wh", w=360, h=360, upscale=True)),
        ("!225,100", Size("confined", w=225, h=100)),
        ("^!360,360", Size("confined", w=360, h=360, upscale=True)),
    ],
)
def test_parse_size_v3_valid(text: str, expected: Size) -> None:
    assert parse_size("3", text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "full",  # 3.0 replaced it by max
        "^full",
        "pct:120",  # > 100 needs ^ in 3.0
        "pct:100.5",
        "pct:100.0000000000000001",  # compared exactly, not as a float
        "pct:0",
        "^pct:0",
        "pct:0.0",
        "pct:",
        "^pct:",
        "pct:-5",
        "pct:1e2",
        "0,",
        ",0",
        "0,10",
        "10,0",
        "^0,",
        "!0,10",
        "!10,",
        "!,10",
        "^!10,",
        ",",
        "",
        "^",
        "^^max",
        "!^10,10",
        "!!10,10",
        ",^240",  # the example in 3.0 §4.2 has this typo; the grammar is ^,h
        "10,10,",
        "10",
        "-10,",
        "+10,",
        "1e3,",
        "0x10,",
        " 10,",
        "10 ,",
        "10.5,",
        "MAX",
        "Max",
    ],
)
def test_parse_size_v3_invalid(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_size("3", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("full", Size("max")),
        ("max", Size("max")),
        ("150,", Size("w", w=150)),
        (",150", Size("h", h=150)),
        ("pct:50", Size("pct", pct=50)),
        ("pct:120", Size("pct", pct=120)),  # 2.1 may scale above full
        ("225,100", Size("wh", w=225, h=100)),
        ("!225,100", Size("confined", w=225, h=100)),
    ],
)
def test_parse_size_v2_valid(text: str, expected: Size) -> None:
    assert parse_size("2", text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "^max",
        "^150,",
        "^,150",
        "^pct:50",
        "^225,100",
        "^!225,100",
        "^full",
        "pct:0",
        "0,",
        ",0",
        "!10,",
        "",
        "fulll",
    ],
)
def test_parse_size_v2_invalid(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_size("2", text)


# ---------------------------------------------------------------------------------------------
# Rotation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Rotation(0, False)),
        ("90", Rotation(90, False)),
        ("180", Rotation(180, False)),
        ("270", Rotation(270, False)),
        ("!0", Rotation(0, True)),
        ("!180", Rotation(180, True)),
        ("22.5", Rotation(22.5, False)),
        ("!345", Rotation(345, True)),
        ("360", Rotation(360, False)),
        ("360.0", Rotation(360, False)),
        ("0.5", Rotation(0.5, False)),
        (".5", Rotation(0.5, False)),
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_rotation_valid(version: str, text: str, expected: Rotation) -> None:
    assert req(version, rotation=text).rotation == expected


@pytest.mark.parametrize(
    "text",
    [
        "361",
        "-1",
        "360.0001",
        "360.0000000000000001",
        "!361",
        "!-1",
        "!",
        "",
        "+90",
        "1e2",
        "90 ",
        " 90",
        "!!90",
        "abc",
        "nan",
        "inf",
        "0x5A",
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_rotation_invalid(version: str, text: str) -> None:
    with pytest.raises(BadRequest):
        req(version, rotation=text)


# ---------------------------------------------------------------------------------------------
# Quality and format


@pytest.mark.parametrize("quality", ["default", "color", "gray", "bitonal"])
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tif"])
@pytest.mark.parametrize("version", ["2", "3"])
def test_quality_format_supported(version: str, quality: str, fmt: str) -> None:
    parsed = req(version, quality_format=f"{quality}.{fmt}")
    assert (parsed.quality, parsed.format) == (quality, fmt)


@pytest.mark.parametrize("fmt", ["gif", "jp2", "pdf"])
@pytest.mark.parametrize("version", ["2", "3"])
def test_known_but_unsupported_format_is_501(version: str, fmt: str) -> None:
    with pytest.raises(NotImplementedFeature) as info:
        req(version, quality_format=f"default.{fmt}")
    assert info.value.status == 501


@pytest.mark.parametrize(
    "text",
    [
        "default.xyz",
        "default.JPG",
        "default.jpeg",
        "default.",
        "default",
        ".jpg",
        "grey.jpg",
        "Default.jpg",
        "colour.jpg",
        "default.jpg.png",
        "",
        "native.jpg",  # 1.x quality, gone since 2.0
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_quality_format_invalid(version: str, text: str) -> None:
    with pytest.raises(BadRequest):
        req(version, quality_format=text)


@pytest.mark.parametrize(
    ("region", "size", "quality_format"),
    [("0,0,0,0", "max", "default.gif"), ("full", "full", "default.pdf"), ("full", "max", "grey.jp2")],
)
def test_syntax_errors_win_over_501(region: str, size: str, quality_format: str) -> None:
    with pytest.raises(BadRequest):
        req("3", region, size, quality_format=quality_format)


def test_parse_image_request_checks_identifier_and_version() -> None:
    with pytest.raises(BadRequest):
        req("3", identifier="")
    with pytest.raises(BadRequest):
        req("3", identifier="a/../b")
    with pytest.raises(ValueError):
        req("4")
    full = req("2", "full", "full", "!90", "gray.png", identifier="a b")
    assert full == ImageRequest("2", "a b", Region("full"), Size("max"), Rotation(90, True), "gray", "png")


# ---------------------------------------------------------------------------------------------
# Region resolution


@pytest.mark.parametrize(
    ("region", "width", "height", "expected"),
    [
        ("full", 300, 200, (0, 0, 300, 200)),
        ("square", 300, 200, (50, 0, 200, 200)),  # landscape: centred horizontally
        ("square", 200, 300, (0, 50, 200, 200)),  # portrait: centred vertically
        ("square", 301, 200, (50, 0, 200, 200)),  # odd margin rounds down
        ("square", 100, 100, (0, 0, 100, 100)),
        ("125,15,120,140", 300, 200, (125, 15, 120, 140)),
        ("125,15,200,200", 300, 200, (125, 15, 175, 185)),  # 3.0 §4.1 example 5: clipped
        ("0,0,1000,1000", 300, 200, (0, 0, 300, 200)),
        ("299,199,5,5", 300, 200, (299, 199, 1, 1)),
        ("0,0,1,1", 300, 200, (0, 0, 1, 1)),
        ("pct:41.6,7.5,40,70", 300, 200, (125, 15, 120, 140)),  # 3.0 §4.1 example 4
        ("pct:41.6,7.5,66.6,100", 300, 200, (125, 15, 175, 185)),  # example 6: clipped
        ("pct:0,0,100,100", 300, 200, (0, 0, 300, 200)),
        ("pct:10,10,200,200", 300, 200, (30, 20, 270, 180)),
        ("pct:0,0,50,50", 301, 201, (0, 0, 151, 101)),  # 150.5 rounds half up
        ("pct:50,50,50,50", 301, 201, (151, 101, 150, 100)),  # abuts the previous one exactly
        ("pct:33.3333,0,33.3333,100", 1000, 10, (333, 0, 334, 10)),
        ("pct:0,0,0.01,0.01", 100, 100, (0, 0, 1, 1)),  # never empty
        ("pct:99.99,99.99,50,50", 100, 100, (99, 99, 1, 1)),  # rounds onto the edge: still 1 px
        ("pct:0.1,0.1,0.1,0.1", 10000, 10000, (10, 10, 10, 10)),
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_resolve_region(version: str, region: str, width: int, height: int, expected: tuple) -> None:
    assert plan_for(version, region, "max", width, height).region == expected


@pytest.mark.parametrize(
    "region",
    ["300,0,10,10", "0,200,10,10", "1000,1000,1,1", "pct:100,0,10,10", "pct:0,100,1,1", "pct:150,0,1,1"],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_region_entirely_outside_is_400(version: str, region: str) -> None:
    with pytest.raises(BadRequest, match="outside"):
        plan_for(version, region, "max", 300, 200)


@pytest.mark.parametrize("width", [1, 7, 99, 100, 101, 333, 1001, 4097])
def test_percent_regions_tile_without_gaps(width: int) -> None:
    """Adjacent percentage regions sharing an edge never overlap and cover the image."""
    cuts = [0, 12.5, 33.3, 50, 66.7, 87.5, 100]
    edges = []
    for left, right in itertools.pairwise(cuts):
        x, _, w, _ = plan_for("3", f"pct:{left},0,{right - left:.4f},100", "max", width, 5).region
        edges.append((x, x + w))
    if width >= len(edges):
        assert edges[0][0] == 0 and edges[-1][1] == width
        assert all(a[1] == b[0] for a, b in itertools.pairwise(edges) if a[1] > a[0])


def test_resolve_rejects_bad_image_size_and_limits() -> None:
    with pytest.raises(ValueError):
        resolve(req("3"), 0, 10)
    with pytest.raises(ValueError):
        resolve(req("3"), 10, 10, max_area=0)


# ---------------------------------------------------------------------------------------------
# Size resolution


@pytest.mark.parametrize(
    ("version", "region", "size", "width", "height", "expected"),
    [
        # 3.0 §4.2 examples on a 300x200 image
        ("3", "full", "max", 300, 200, (300, 200)),
        ("3", "full", "150,", 300, 200, (150, 100)),
        ("3", "full", ",150", 300, 200, (225, 150)),
        ("3", "full", "pct:50", 300, 200, (150, 100)),
        ("3", "full", "225,100", 300, 200, (225, 100)),
        ("3", "full", "!225,100", 300, 200, (150, 100)),
        ("3", "full", "^!360,360", 300, 200, (360, 240)),
        ("3", "full", "^360,", 300, 200, (360, 240)),
        ("3", "full", "^,240", 300, 200, (360, 240)),
        ("3", "full", "^pct:120", 300, 200, (360, 240)),
        ("3", "full", "^360,360", 300, 200, (360, 360)),
        ("3", "full", "!400,200", 300, 200, (300, 200)),  # fits the region exactly: no upscaling
        ("3", "full", "^max", 300, 200, (300, 200)),  # no limits configured
        ("3", "full", "^50,", 300, 200, (50, 33)),  # ^ allows but does not force upscaling
        ("3", "full", "1,", 300, 200, (1, 1)),  # 0.67 rounds to 1
        ("3", "full", ",1", 300, 200, (2, 1)),  # 1.5 rounds half up
        ("3", "full", "300,200", 300, 200, (300, 200)),
        ("3", "full", "pct:100", 300, 200, (300, 200)),
        ("3", "full", "pct:0.5", 300, 200, (2, 1)),
        ("3", "125,15,120,140", "90,", 300, 200, (90, 105)),  # 3.0 §4.6 example
        ("3", "0,0,10000,1", "100,", 10000, 10, (100, 1)),  # derived dimension at least 1 px
        ("3", "0,0,10000,1", "!100,100", 10000, 10, (100, 1)),
        ("3", "1,0,1,10000", ",100", 10, 10000, (1, 100)),
        # 2.1 on the same image
        ("2", "full", "full", 300, 200, (300, 200)),
        ("2", "full", "max", 300, 200, (300, 200)),
        ("2", "full", "150,", 300, 200, (150, 100)),
        ("2", "full", "301,", 300, 200, (301, 201)),  # upscaling allowed in 2.1
        ("2", "full", ",400", 300, 200, (600, 400)),
        ("2", "full", "pct:200", 300, 200, (600, 400)),
        ("2", "full", "600,600", 300, 200, (600, 600)),
        ("2", "full", "!600,600", 300, 200, (600, 400)),
        ("2", "full", "!225,100", 300, 200, (150, 100)),
        ("2", "square", "100,", 300, 200, (100, 100)),
    ],
)
def test_resolve_size(
    version: str, region: str, size: str, width: int, height: int, expected: tuple[int, int]
) -> None:
    assert plan_for(version, region, size, width, height).size == expected


@pytest.mark.parametrize(
    ("region", "size"),
    [
        ("full", "301,"),
        ("full", ",201"),
        ("full", "301,200"),
        ("full", "300,201"),
        ("full", "150,201"),
        ("0,0,100,100", "101,"),
        ("0,0,100,100", "101,100"),
        ("pct:0,0,50,50", "151,"),
    ],
)
def test_v3_upscaling_without_caret_is_400(region: str, size: str) -> None:
    with pytest.raises(BadRequest, match=r"\^"):
        plan_for("3", region, size, 300, 200)
    caret = plan_for("3", region, "^" + size, 300, 200)  # the same with ^ is fine
    assert caret.size[0] >= 1


@pytest.mark.parametrize(("version", "size"), [("3", "pct:1"), ("3", "^pct:0.001"), ("2", "pct:1")])
def test_pct_size_rounding_to_zero_is_400(version: str, size: str) -> None:
    with pytest.raises(BadRequest, match="1 pixel"):
        plan_for(version, "0,0,10000,1", size, 10000, 10)


@pytest.mark.parametrize(
    ("version", "size", "width", "height", "limits", "expected"),
    [
        # max scales down, preserving the aspect ratio; maxHeight defaults to maxWidth
        ("3", "max", 300, 200, {"max_width": 200}, (200, 133)),
        ("3", "max", 200, 300, {"max_width": 200}, (133, 200)),
        ("3", "max", 300, 200, {"max_width": 1000}, (300, 200)),
        ("3", "max", 300, 200, {"max_height": 100}, (150, 100)),
        ("3", "max", 300, 200, {"max_width": 1000, "max_height": 100}, (150, 100)),
        ("3", "max", 1000, 1000, {"max_area": 250_000}, (500, 500)),
        ("3", "max", 1000, 1000, {"max_area": 2_000_000}, (1000, 1000)),
        # the 3.0 §5.2 example: 6000x4000 with maxWidth 3000, maxHeight 2000, maxArea 4000000
        (
            "3",
            "max",
            6000,
            4000,
            {"max_width": 3000, "max_height": 2000, "max_area": 4_000_000},
            (2449, 1632),
        ),
        ("3", "max", 10000, 1, {"max_area": 100}, (100, 1)),
        ("2", "max", 300, 200, {"max_width": 200}, (200, 133)),
        ("2", "full", 300, 200, {"max_width": 200}, (200, 133)),
        ("2", "full", 6000, 4000, {"max_area": 6_000_000}, (3000, 2000)),  # exactly on the limit
        ("2", "full", 6000, 4000, {"max_area": 5_000_000}, (2738, 1825)),
        # ^max scales to the limits, up or down
        ("3", "^max", 300, 200, {"max_width": 360}, (360, 240)),  # 3.0 §4.2 example
        ("3", "^max", 300, 200, {"max_width": 200}, (200, 133)),
        ("3", "^max", 300, 200, {"max_area": 240_000}, (600, 400)),
        ("3", "^max", 300, 200, {"max_width": 1000, "max_height": 300}, (450, 300)),
        # !w,h is confined by the limits too
        ("3", "!1000,1000", 300, 200, {"max_width": 150}, (150, 100)),
        ("3", "^!1000,1000", 300, 200, {"max_width": 600}, (600, 400)),
        ("3", "^!1000,1000", 300, 200, {"max_area": 60_000}, (300, 200)),
        ("2", "!1000,1000", 300, 200, {"max_width": 600}, (600, 400)),
        # explicit sizes within the limits are served as asked
        ("3", "200,", 300, 200, {"max_width": 200}, (200, 133)),
        ("3", "^,300", 300, 200, {"max_width": 450, "max_height": 300}, (450, 300)),
        ("2", "450,", 300, 200, {"max_width": 450}, (450, 300)),
    ],
)
def test_resolve_with_limits(
    version: str, size: str, width: int, height: int, limits: dict, expected: tuple[int, int]
) -> None:
    out = plan_for(version, "full", size, width, height, **limits)
    assert out.size == expected
    w, h = out.size
    max_w = limits.get("max_width")
    assert max_w is None or w <= max_w
    max_h = limits.get("max_height", max_w)
    assert max_h is None or h <= max_h
    assert limits.get("max_area") is None or w * h <= limits["max_area"]


@pytest.mark.parametrize(
    ("size", "limits", "named"),
    [
        ("250,", {"max_width": 200}, "maxWidth"),
        (",150", {"max_height": 100, "max_width": 1000}, "maxHeight"),
        (",150", {"max_width": 120}, "maxWidth"),  # maxHeight defaults to maxWidth
        ("300,200", {"max_width": 250}, "maxWidth"),
        ("200,200", {"max_area": 30_000}, "maxArea"),
        ("^pct:200", {"max_area": 100_000}, "maxArea"),
        ("^400,", {"max_width": 360}, "maxWidth"),
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_explicit_size_beyond_limits(version: str, size: str, limits: dict, named: str) -> None:
    if version == "2":
        size = size.lstrip("^")
    with pytest.raises(LimitExceeded, match=named) as info:
        plan_for(version, "full", size, 300, 200, **limits)
    assert info.value.status == (404 if version == "2" else 400)


def test_plan_carries_rotation_quality_format() -> None:
    plan = resolve(req("3", "full", "max", "!22.5", "gray.png"), 10, 10)
    assert (plan.rotation, plan.quality, plan.format) == (Rotation(22.5, True), "gray", "png")


# ---------------------------------------------------------------------------------------------
# Canonical paths


@pytest.mark.parametrize(
    ("version", "region", "size", "rotation", "quality_format", "width", "height", "limits", "expected"),
    [
        ("3", "full", "max", "0", "default.jpg", 1000, 1000, {}, "full/max/0/default.jpg"),
        ("3", "0,0,1000,1000", "500,", "0", "default.jpg", 1000, 1000, {}, "full/500,500/0/default.jpg"),
        ("3", "0,0,1000,1000", "max", "0", "default.jpg", 1000, 1000, {}, "full/max/0/default.jpg"),
        ("3", "pct:0,0,100,100", "pct:100", "0", "default.jpg", 300, 200, {}, "full/max/0/default.jpg"),
        ("3", "full", "300,200", "0", "default.jpg", 300, 200, {}, "full/max/0/default.jpg"),
        ("3", "full", "^max", "0", "default.jpg", 300, 200, {}, "full/max/0/default.jpg"),
        ("3", "full", "^!1000,1000", "0", "default.jpg", 300, 200, {}, "full/^1000,667/0/default.jpg"),
        ("3", "full", "!300,300", "0", "default.jpg", 300, 200, {}, "full/max/0/default.jpg"),
        ("3", "full", "150,100", "0", "default.jpg", 300, 200, {}, "full/150,100/0/default.jpg"),
        ("3", "full", "!225,100", "0", "default.jpg", 300, 200, {}, "full/150,100/0/default.jpg"),
        ("3", "full", ",150", "0", "default.jpg", 300, 200, {}, "full/225,150/0/default.jpg"),
        ("3", "full", "^50,", "0", "default.jpg", 300, 200, {}, "full/50,33/0/default.jpg"),
        ("3", "full", "^360,", "0", "default.jpg", 300, 200, {}, "full/^360,240/0/default.jpg"),
        ("3", "full", "^300,201", "0", "default.jpg", 300, 200, {}, "full/^300,201/0/default.jpg"),
        ("3", "square", "max", "0", "default.jpg", 1000, 1000, {}, "full/max/0/default.jpg"),
        ("3", "square", "max", "0", "default.jpg", 300, 200, {}, "50,0,200,200/max/0/default.jpg"),
        (
            "3",
            "pct:41.6,7.5,40,70",
            "max",
            "0",
            "default.jpg",
            300,
            200,
            {},
            "125,15,120,140/max/0/default.jpg",
        ),
        ("3", "125,15,200,200", "max", "0", "default.jpg", 300, 200, {}, "125,15,175,185/max/0/default.jpg"),
        ("3", "full", "max", "0", "default.jpg", 300, 200, {"max_width": 200}, "full/max/0/default.jpg"),
        ("3", "full", "200,133", "0", "default.jpg", 300, 200, {"max_width": 200}, "full/max/0/default.jpg"),
        ("3", "full", "^max", "0", "default.jpg", 300, 200, {"max_width": 360}, "full/^max/0/default.jpg"),
        (
            "3",
            "full",
            "^360,240",
            "0",
            "default.jpg",
            300,
            200,
            {"max_width": 360},
            "full/^max/0/default.jpg",
        ),
        ("3", "full", "^max", "0", "default.jpg", 300, 200, {"max_width": 200}, "full/max/0/default.jpg"),
        ("3", "full", "max", "90", "default.jpg", 300, 200, {}, "full/max/90/default.jpg"),
        ("3", "full", "max", "!180", "default.jpg", 300, 200, {}, "full/max/!180/default.jpg"),
        ("3", "full", "max", "22.50", "default.png", 300, 200, {}, "full/max/22.5/default.png"),
        ("3", "full", "max", "360", "default.jpg", 300, 200, {}, "full/max/360/default.jpg"),
        ("3", "full", "max", "0.0", "default.jpg", 300, 200, {}, "full/max/0/default.jpg"),
        ("3", "full", "max", ".5", "default.jpg", 300, 200, {}, "full/max/0.5/default.jpg"),
        ("3", "full", "max", "!005", "default.jpg", 300, 200, {}, "full/max/!5/default.jpg"),
        ("3", "full", "max", "90.", "default.jpg", 300, 200, {}, "full/max/90/default.jpg"),
        ("3", "full", "max", "0", "color.jpg", 300, 200, {}, "full/max/0/default.jpg"),
        ("3", "full", "max", "0", "gray.webp", 300, 200, {}, "full/max/0/gray.webp"),
        ("3", "full", "max", "0", "bitonal.tif", 300, 200, {}, "full/max/0/bitonal.tif"),
        ("2", "full", "full", "0", "default.jpg", 1000, 1000, {}, "full/full/0/default.jpg"),
        ("2", "full", "max", "0", "default.jpg", 1000, 1000, {}, "full/full/0/default.jpg"),
        ("2", "0,0,1000,1000", "500,", "0", "default.jpg", 1000, 1000, {}, "full/500,/0/default.jpg"),
        ("2", "full", ",500", "0", "default.jpg", 1000, 1000, {}, "full/500,/0/default.jpg"),
        ("2", "full", "500,500", "0", "default.jpg", 1000, 1000, {}, "full/500,/0/default.jpg"),
        ("2", "full", "pct:50", "0", "default.jpg", 300, 200, {}, "full/150,/0/default.jpg"),
        ("2", "full", "pct:100", "0", "default.jpg", 300, 200, {}, "full/full/0/default.jpg"),
        ("2", "full", "225,100", "0", "default.jpg", 300, 200, {}, "full/225,100/0/default.jpg"),
        ("2", "full", "!225,100", "0", "default.jpg", 300, 200, {}, "full/150,/0/default.jpg"),
        ("2", "full", "600,", "0", "default.jpg", 300, 200, {}, "full/600,/0/default.jpg"),
        ("2", "full", "max", "0", "default.jpg", 300, 200, {"max_width": 200}, "full/200,/0/default.jpg"),
        ("2", "full", "full", "0", "default.jpg", 300, 200, {"max_width": 200}, "full/200,/0/default.jpg"),
        ("2", "square", "full", "0", "default.jpg", 300, 200, {}, "50,0,200,200/full/0/default.jpg"),
        ("2", "square", "full", "0", "default.jpg", 200, 200, {}, "full/full/0/default.jpg"),
        ("2", "full", "full", "!22.500", "gray.png", 200, 200, {}, "full/full/!22.5/gray.png"),
        ("2", "full", "full", "0", "color.jpg", 200, 200, {}, "full/full/0/default.jpg"),
    ],
)
def test_canonical_path(
    version: str,
    region: str,
    size: str,
    rotation: str,
    quality_format: str,
    width: int,
    height: int,
    limits: dict,
    expected: str,
) -> None:
    request = req(version, region, size, rotation, quality_format)
    plan = resolve(request, width, height, **limits)
    assert canonical_path(plan, request, width, height) == expected


@pytest.mark.parametrize(
    ("quality", "default_quality", "expected"),
    [("gray", "gray", "default"), ("color", "gray", "color"), ("default", "gray", "default")],
)
def test_canonical_quality_follows_the_servers_default(
    quality: str, default_quality: str, expected: str
) -> None:
    request = req("3", quality_format=f"{quality}.jpg")
    plan = resolve(request, 10, 10)
    assert (
        canonical_path(plan, request, 10, 10, default_quality=default_quality) == f"full/max/0/{expected}.jpg"
    )


ROUND_TRIP = [
    (version, region, size, width, height, limits)
    for version, sizes in (
        (
            "3",
            [
                "max",
                "^max",
                "150,",
                ",77",
                "pct:33.3",
                "^pct:150",
                "225,100",
                "!225,100",
                "^!500,500",
                "^301,",
            ],
        ),
        (
            "2",
            ["full", "max", "150,", ",77", "pct:33.3", "pct:150", "225,100", "!225,100", "!500,500", "301,"],
        ),
    )
    for size in sizes
    for region in ["full", "square", "10,20,250,150", "pct:12.5,3.3,50.1,90", "250,150,500,500"]
    for width, height in [(300, 200), (257, 419)]
    for limits in [{}, {"max_width": 450, "max_area": 120_000}]
]


@pytest.mark.parametrize(("version", "region", "size", "width", "height", "limits"), ROUND_TRIP)
def test_canonical_path_resolves_to_the_same_plan(
    version: str, region: str, size: str, width: int, height: int, limits: dict
) -> None:
    """The canonical path is a sound cache key: parsed and resolved again it gives the same image."""
    request = req(version, region, size, "!7.50", "gray.png")
    try:
        plan = resolve(request, width, height, **limits)
    except (BadRequest, LimitExceeded):
        return
    path = canonical_path(plan, request, width, height)
    again_request = req(version, *path.split("/"))
    again = resolve(again_request, width, height, **limits)
    assert (again.region, again.size, again.rotation) == (plan.region, plan.size, plan.rotation)
    assert canonical_path(again, again_request, width, height) == path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (90.0, "90"),
        (360, "360"),
        (22.5, "22.5"),
        (0.5, "0.5"),
        (1e-07, "0.0000001"),
        (12.25, "12.25"),
    ],
)
def test_format_number(value: float, expected: str) -> None:
    assert format_number(value) == expected


# ---------------------------------------------------------------------------------------------
# parse_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc", ("abc", None)),
        ("abc/", ("abc", None)),
        ("abc/info.json", ("abc", "info.json")),
        ("info.json", ("info.json", None)),
        ("abc/full/max/0/default.jpg", ("abc", ("full", "max", "0", "default.jpg"))),
        ("ark:%2F12025%2F654xz321/info.json", ("ark:/12025/654xz321", "info.json")),
        (
            "ark:%2f12025%2f654xz321/full/max/0/default.jpg",
            ("ark:/12025/654xz321", ("full", "max", "0", "default.jpg")),
        ),
        ("urn:foo:a123,456/full/max/0/default", ("urn:foo:a123,456", ("full", "max", "0", "default"))),
        (
            "urn:sici:1046-8188(199501)13:1%253C69:FTTHBI%253E2.0.TX;2-4/info.json",
            ("urn:sici:1046-8188(199501)13:1%3C69:FTTHBI%3E2.0.TX;2-4", "info.json"),
        ),
        ("http:%2F%2Fexample.com%2F%3F54%23a/info.json", ("http://example.com/?54#a", "info.json")),
        ("caf%C3%A9/info.json", ("café", "info.json")),
        ("café/info.json", ("café", "info.json")),
        ("a%20b", ("a b", None)),
        ("dir%2F..x%2Fy", ("dir/..x/y", None)),
        ("id/full/%5Emax/%2190/default.jpg", ("id", ("full", "^max", "!90", "default.jpg"))),
        ("id/pct%3A1,2,3,4/max/0/default.jpg", ("id", ("pct:1,2,3,4", "max", "0", "default.jpg"))),
        ("id/full//0/default.jpg", ("id", ("full", "", "0", "default.jpg"))),  # parse_image_request rejects
    ],
)
@pytest.mark.parametrize("version", ["2", "3"])
def test_parse_path(version: str, raw: str, expected: tuple) -> None:
    assert parse_path(version, raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "a/b",
        "a/b/info.json",
        "ark:/12025/654xz321/info.json",
        "a/b/full/max/0/default.jpg",
        "a/full/max/0",
        "a/full/max",
        "a/b/c/d/info.json",
        "a/full/max/0/default.jpg/",
        "a//full/max/0/default.jpg",
    ],
)
def test_parse_path_unencoded_slash_says_to_encode(raw: str) -> None:
    with pytest.raises(IIIFError, match="%2F") as caught:
        parse_path("3", raw)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("/info.json", "empty"),
        ("%00abc", "control"),
        ("a%0Ab/info.json", "control"),
        ("a%7Fb", "control"),
        ("a%C2%85b", "control"),
        ("a\tb", "control"),
        ("..", r"'\.\.'"),
        (".", r"'\.\.'"),
        ("%2E%2E/info.json", r"'\.\.'"),
        ("..%2Fetc%2Fpasswd", r"'\.\.'"),
        ("a%2F..%2Fb", r"'\.\.'"),
        ("a%2F.%2Fb", r"'\.\.'"),
        ("a%2F..", r"'\.\.'"),
        ("a%5C..%5Cb", r"'\.\.'"),
        ("%2Fetc%2Fpasswd", "start"),
        ("a%zz", "hex"),
        ("a%", "hex"),
        ("a%2", "hex"),
        ("%FF%FE", "UTF-8"),
        ("id/full/%FF/0/default.jpg", "UTF-8"),
    ],
)
def test_parse_path_rejects_bad_identifiers(raw: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_path("3", raw)


def test_parse_path_rejects_unknown_version() -> None:
    with pytest.raises(ValueError):
        parse_path("4", "abc")


@pytest.mark.parametrize(
    ("version", "raw", "status"),
    [
        ("3", "id/full/max/0/default.jpg", None),
        ("3", "id/full/full/0/default.jpg", 400),
        ("2", "id/full/full/0/default.jpg", None),
        ("2", "id/full/%5Emax/0/default.jpg", 400),
        ("3", "id/full/%5Emax/0/default.jpg", None),
        ("3", "ark:%2F1%2F2/0,0,10,10/5,/!90/gray.webp", None),
        ("3", "id/full/max/0/default.gif", 501),
        ("2", "id/full/max/0/default.pdf", 501),
        ("3", "id/full/max/0/default.bmp", 400),
        ("3", "id/full/max/400/default.jpg", 400),
    ],
)
def test_path_to_request_end_to_end(version: str, raw: str, status: int | None) -> None:
    identifier, tail = parse_path(version, raw)
    assert isinstance(tail, tuple)
    if status is None:
        parsed = parse_image_request(version, identifier, *tail)
        assert parsed.version == version and parsed.identifier == identifier
    else:
        with pytest.raises(IIIFError) as info:
            parse_image_request(version, identifier, *tail)
        assert info.value.status == status


def test_confined_size_that_would_upscale_needs_caret_in_3() -> None:
    """The validator's size_noup: "!w,h" beyond the region without "^" is a 400 in 3.0."""
    request = parse_image_request("3", "id", "full", "!400,400", "0", "default.jpg")
    with pytest.raises(BadRequest, match="upscale"):
        resolve(request, 300, 200)
