"""The IIIF Image API 3.0 and 2.1 server: the official validator, every source format, errors, the cache."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pyvips

from tests.support.iiif_server import IiifServer, iiif_server
from tests.support.moto_server import MotoServer
from tests.support.tessera_server import TESSERA

TEST_IMAGE = "67352ccc-d1b0-11e1-89ae-279075081939.png"
COLOUR = (200, 40, 90)


def solid(width: int, height: int, colour: tuple[int, int, int] = COLOUR) -> pyvips.Image:
    return pyvips.Image.black(width, height, bands=3).linear(1, list(colour)).cast("uchar")


def validator_image() -> pyvips.Image:
    """The validator's test image, rebuilt from the colour table the validator checks against."""
    from iiif_validator.validator import ValidationInfo

    colours = ValidationInfo().colorInfo  # colours[column][row] of the 10 x 10 squares of 100 px
    squares = [solid(100, 100, tuple(colours[x][y])) for y in range(10) for x in range(10)]
    return pyvips.Image.arrayjoin(squares, across=10)


def make_sources(folder: Path) -> None:
    validator_image().pngsave(str(folder / TEST_IMAGE))
    picture = solid(3000, 2000)
    picture.tiffsave(
        str(folder / "pyramid.tif"),
        tile=True,
        pyramid=True,
        compression="jpeg",
        tile_width=256,
        tile_height=256,
    )
    picture.tiffsave(
        str(folder / "deflate.tif"),
        tile=True,
        pyramid=True,
        compression="deflate",
        tile_width=512,
        tile_height=512,
    )
    picture.jp2ksave(str(folder / "picture.jp2"), tile_width=512, tile_height=512)
    picture.jpegsave(str(folder / "picture.jpg"))
    picture.pngsave(str(folder / "picture.png"))
    picture.webpsave(str(folder / "picture.webp"))
    picture.tiffsave(str(folder / "plain.tif"))
    (folder / "not-an-image.tif").write_bytes(b"this is text, not a TIFF")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[IiifServer]:
    tmp = tmp_path_factory.mktemp("iiif")
    folder = tmp / "img"
    folder.mkdir()
    make_sources(folder)
    settings = """
block_size = "256KB"
small_object_size = "256KB"
[images]
max_area = 25000000
"""
    with iiif_server(tmp, folder, moto, settings) as running:
        yield running


@pytest.mark.parametrize("version", ["3.0", "2.0"])
def test_official_validator_level2(server: IiifServer, version: str) -> None:
    from iiif_validator.validator import ImageAPI, TestSuite, ValidationInfo

    suite = TestSuite(ValidationInfo())
    host = server.base.removeprefix("http://")
    prefix = "iiif/3" if version == "3.0" else "iiif/2"
    ran, failures = 0, []
    for name, test in suite.list_tests(version).items():
        if test.get("level", 0) > 2:
            continue
        result = ImageAPI(f"img%2F{TEST_IMAGE}", host, prefix, "http", "", version, debug=False)
        suite.run_test(name, result)
        ran += 1
        if result.exception:
            failure = result.exception
            failures.append((name, failure.type, failure.got, failure.expected))
    assert ran >= 30
    assert failures == []


@pytest.mark.parametrize(
    ("name", "levels", "tile"),
    [
        ("pyramid.tif", 5, 256),
        ("deflate.tif", 4, 512),
        ("picture.jp2", 5, 512),
        ("picture.jpg", 1, 512),
        ("picture.png", 1, 512),
        ("picture.webp", 1, 512),
        ("plain.tif", 1, 512),
    ],
)
def test_every_source_format(server: IiifServer, name: str, levels: int, tile: int) -> None:
    for version in ("3", "2"):
        info = server.get(f"/iiif/{version}/img%2F{name}/info.json").json()
        assert (info["width"], info["height"]) == (3000, 2000)
        assert info["tiles"][0]["width"] == tile
        assert len(info["sizes"]) == levels
        assert info["@context"] == f"http://iiif.io/api/image/{version}/context.json"
    tile_response = server.get(f"/iiif/3/img%2F{name}/512,512,512,512/256,/90/default.png")
    assert tile_response.status_code == 200, tile_response.text
    assert tile_response.headers["content-type"] == "image/png"
    image = pyvips.Image.new_from_buffer(tile_response.content, "")
    assert (image.width, image.height) == (256, 256)
    assert all(abs(image.extract_band(b).avg() - COLOUR[b]) < 4 for b in range(3))
    thumb = server.get(f"/iiif/2/img%2F{name}/full/!200,200/0/gray.jpg")
    image = pyvips.Image.new_from_buffer(thumb.content, "")
    assert (image.width, image.height, image.bands) == (200, 133, 1)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/iiif/3/img%2Fpyramid.tif/full/max/0/default.jpg", 200),
        ("/iiif/3/img%2Fnope.tif/info.json", 404),
        ("/iiif/3/nomount%2Fx.tif/info.json", 404),
        ("/iiif/3/img%2Fpyramid.tif/bogus/max/0/default.jpg", 400),
        ("/iiif/3/img%2Fpyramid.tif/full/bogus/0/default.jpg", 400),
        ("/iiif/3/img%2Fpyramid.tif/full/full/0/default.jpg", 400),  # "full" is 2.1 only
        ("/iiif/3/img%2Fpyramid.tif/full/max/361/default.jpg", 400),
        ("/iiif/3/img%2Fpyramid.tif/full/max/0/sepia.jpg", 400),
        ("/iiif/3/img%2Fpyramid.tif/full/max/0/default.gif", 501),
        ("/iiif/3/img%2Fpyramid.tif/full/max/0/default.xyz", 400),
        ("/iiif/3/img%2Fpyramid.tif/5000,5000,10,10/max/0/default.jpg", 400),  # entirely outside
        ("/iiif/3/img%2Fpyramid.tif/full/4000,/0/default.jpg", 400),  # upscaling without ^
        ("/iiif/3/img%2Fpyramid.tif/full/^7000,7000/0/default.jpg", 400),  # over maxArea
        ("/iiif/2/img%2Fpyramid.tif/full/^100,/0/default.jpg", 400),  # ^ is 3.0 only
        ("/iiif/3/img%2Fnot-an-image.tif/info.json", 415),
        ("/iiif/4/img%2Fpyramid.tif/info.json", 404),
    ],
)
def test_errors_per_spec(server: IiifServer, path: str, status: int) -> None:
    response = server.get(path)
    assert response.status_code == status, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    if status != 200:
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.strip()
        assert str(server.folder) not in response.text  # no filesystem paths leak


def test_what_the_incumbent_gets_wrong(server: IiifServer) -> None:
    # a region partly outside is clipped, not mangled
    part = server.get("/iiif/3/img%2Fpyramid.tif/2900,1900,300,300/max/0/default.png")
    image = pyvips.Image.new_from_buffer(part.content, "")
    assert (image.width, image.height) == (100, 100)
    # full/max is the full image (within maxArea), not silently capped
    full = server.get("/iiif/3/img%2Fpyramid.tif/full/max/0/default.jpg")
    assert pyvips.Image.new_from_buffer(full.content, "").width == 3000
    # the server survives a region entirely outside the image
    assert server.get("/iiif/3/img%2Fpyramid.tif/9000,9000,5,5/max/0/default.jpg").status_code == 400
    assert server.get("/iiif/3/img%2Fpyramid.tif/0,0,256,256/256,/0/default.jpg").status_code == 200


def test_base_uri_canonical_link_and_revalidation(server: IiifServer) -> None:
    redirect = server.get("/iiif/3/img%2Fpyramid.tif", follow_redirects=False)
    assert redirect.status_code == 303
    assert redirect.headers["location"].endswith("/iiif/3/img%2Fpyramid.tif/info.json")
    response = server.get("/iiif/3/img%2Fpyramid.tif/0,0,3000,2000/1500,/0/default.jpg")
    assert 'full/1500,1000/0/default.jpg>;rel="canonical"' in response.headers["link"]
    assert 'rel="profile"' in response.headers["link"]
    again = server.get(
        "/iiif/3/img%2Fpyramid.tif/full/1500,1000/0/default.jpg",
        headers={"If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304  # same canonical request, same derivative
    ld = server.get("/iiif/3/img%2Fpyramid.tif/info.json", headers={"Accept": "application/ld+json"})
    assert ld.headers["content-type"].startswith("application/ld+json")


def test_cold_tile_of_a_pyramid_in_s3_costs_a_fraction_of_the_file(server: IiifServer) -> None:
    big = (
        pyvips.Image.gaussnoise(6000, 6000, mean=128, sigma=40)
        .cast("uchar")
        .bandjoin([solid(6000, 6000)[1]] * 2)
    )
    data = big.tiffsave_buffer(tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256)
    server.moto.client().put_object(Bucket=server.bucket, Key="big.tif", Body=data)
    server.proxy.reset_log()
    tile = server.get("/iiif/3/s3%2Fbig.tif/0,0,256,256/256,/0/default.jpg")
    assert tile.status_code == 200
    thumb = server.get("/iiif/3/s3%2Fbig.tif/full/200,/0/default.jpg")
    assert thumb.status_code == 200
    fetched = sum(r.bytes_sent for r in server.proxy.requests(method="GET") if r.status in (200, 206))
    assert fetched < len(data) / 4, (fetched, len(data))


def test_thumbnails_are_a_level0_service(server: IiifServer) -> None:
    info = server.get("/thumbs/img%2Fpyramid.tif/info.json").json()
    assert info["profile"] == "level0"
    sizes = [(s["width"], s["height"]) for s in info["sizes"]]
    assert sizes == [(100, 67), (200, 133), (400, 267), (1024, 683)]
    thumb = server.get("/thumbs/img%2Fpyramid.tif/full/200,133/0/default.jpg")
    assert thumb.status_code == 200
    assert pyvips.Image.new_from_buffer(thumb.content, "").width == 200
    assert server.get("/thumbs/img%2Fpyramid.tif/full/200,/0/default.jpg").status_code == 200
    assert server.get("/thumbs/img%2Fpyramid.tif/full/max/0/default.jpg").status_code == 200
    assert server.get("/thumbs/img%2Fpyramid.tif/full/300,/0/default.jpg").status_code == 404
    assert server.get("/thumbs/img%2Fpyramid.tif/0,0,10,10/200,/0/default.jpg").status_code == 400


def test_warm_thumbs_from_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    solid(800, 600).jpegsave(str(folder / "a.jpg"))
    solid(300, 300).pngsave(str(folder / "b.png"))
    env = {
        "TESSERA_CACHE__DIR": str(tmp_path / "cache"),
        "TESSERA_MOUNTS__IMG__ORIGIN": f"file://{folder}",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([TESSERA, "warm", "--thumbs", "/img/"], capture_output=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert b"made 7 thumbnails" in out.stderr  # a.jpg: 4 sizes; b.png: 100, 200 and its own 300
