"""The IIIF fast paths, against a real ``tessera serve``: stored JPEG tiles of a TIFF passed through or
cropped with Pillow, JPEG 2000 decoded by OpenJPEG with shared codestream tiles, and the pure pieces
(level choice, JPEG splicing, the decoded-tile cache) on their own.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import pyvips
import tifffile
from PIL import Image

from tessera.images import jp2_regions
from tessera.images.jpeg_tiles import JpegTiles, jpeg_file, read_jpeg_tiles
from tessera.images.render import LevelRegion, choose_level
from tessera.images.source import ImageInfo, read_info
from tests.support.iiif_server import IiifServer, iiif_server
from tests.support.moto_server import MotoServer

#: Odd sizes, so that the pyramid levels round down (3001 -> 1500 -> 750) as real images' do.
WIDTH, HEIGHT = 3001, 2001


def picture(bands: int = 3) -> pyvips.Image:
    """A picture with detail everywhere, so a wrong pixel shows in the comparisons."""
    xyz = pyvips.Image.xyz(WIDTH, HEIGHT)
    x, y = xyz[0], xyz[1]
    noise = pyvips.Image.gaussnoise(WIDTH, HEIGHT, mean=0, sigma=6)  # luminance grain
    waves = ((x * 2.1 + y * 0.7).sin(), (x * 0.9 - y * 1.7).sin(), ((x + y) * 1.3).sin())  # degrees
    channels = [wave * 90 + 128 + noise for wave in waves]
    return (channels[0].bandjoin(channels[1:bands]) if bands > 1 else channels[0]).cast("uchar")


def pyramid(path: Path, image: pyvips.Image, **options: object) -> None:
    image.tiffsave(
        str(path),
        tile=True,
        pyramid=True,
        compression="jpeg",
        Q=90,
        tile_width=256,
        tile_height=256,
        **options,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, moto: MotoServer) -> Iterator[IiifServer]:
    tmp = tmp_path_factory.mktemp("fast")
    folder = tmp / "img"
    folder.mkdir()
    colour, grey = picture(), picture(1)
    pyramid(folder / "ycc.tif", colour)
    pyramid(folder / "rgb.tif", colour, rgbjpeg=True)
    pyramid(folder / "grey.tif", grey)
    colour.jp2ksave(str(folder / "colour.jp2"), tile_width=512, tile_height=512)
    grey.jp2ksave(str(folder / "grey.jp2"), tile_width=512, tile_height=512)
    with iiif_server(tmp, folder, moto, "[images]\nderivative_cache = false") as running:
        yield running


def decoded(response: httpx.Response) -> pyvips.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    return pyvips.Image.new_from_buffer(response.content, "")


def difference(a: pyvips.Image, b: pyvips.Image) -> float:
    assert (a.width, a.height, a.bands) == (b.width, b.height, b.bands)
    return (a.cast("float") - b.cast("float")).abs().avg()


def stored_tile_bytes(path: Path, page: int, column: int, row: int) -> tuple[bytes, bytes]:
    """A stored tile's bytes and the page's JPEG tables, read with tifffile alone."""
    with tifffile.TiffFile(path) as tiff:
        level = tiff.pages[page]
        index = row * -(-level.imagewidth // level.tilewidth) + column
        with open(path, "rb") as file:
            file.seek(level.dataoffsets[index])
            return file.read(level.databytecounts[index]), bytes(level.jpegtables or b"")


@pytest.mark.parametrize("name", ["ycc.tif", "rgb.tif", "grey.tif"])
def test_a_tile_that_is_a_stored_tile_is_sent_as_stored(server: IiifServer, name: str) -> None:
    # Level 1 (scale factor 2), tile column 1, row 2: full-resolution region 512,1024,512,512.
    before = server.made("stored")
    response = server.get(f"/iiif/2/img%2F{name}/512,1024,512,512/256,/0/default.jpg")
    assert server.made("stored") == before + 1
    stream, tables = stored_tile_bytes(server.folder / name, 1, 1, 2)
    # Not decoded and re-encoded: the stored entropy-coded data is the response's tail, unchanged.
    assert response.content.endswith(stream[2:])
    assert len(response.content) <= len(stream) + len(tables) + 16
    level = pyvips.Image.new_from_file(str(server.folder / name), page=1)
    assert difference(decoded(response), level.crop(256, 512, 256, 256)) == 0
    # A second decoder (Pillow, the same libjpeg as browsers) reads the colours the same way:
    # photometric RGB tiles carry the Adobe marker that says they are not YCbCr.
    other = Image.open(io.BytesIO(response.content))
    reference = level.crop(256, 512, 256, 256)
    pixel = other.getpixel((100, 100))
    expected = reference.getpoint(100, 100)
    assert all(
        abs(a - b) <= 1 for a, b in zip(pixel if isinstance(pixel, tuple) else [pixel], expected, strict=True)
    )


@pytest.mark.parametrize("name", ["ycc.tif", "rgb.tif", "grey.tif"])
def test_edge_tiles_and_other_requests_match_a_libvips_rendering(server: IiifServer, name: str) -> None:
    full = pyvips.Image.new_from_file(str(server.folder / name))
    level1 = pyvips.Image.new_from_file(str(server.folder / name), page=1)  # 1500 x 1000
    cases = [
        # The right edge at full resolution: a piece of a stored tile (Pillow crop).
        ("2816,1792,185,209/185,", full.crop(2816, 1792, 185, 209), 3.0),
        # The bottom-right edge at level 1: IIIF asks ceil(441 / 2) = 221 px where the level holds
        # 220, so the last column is repeated.
        (
            "2560,1536,441,465/221,",
            level1.crop(1280, 768, 220, 232).embed(0, 0, 221, 233, extend="copy"),
            3.0,
        ),
        # Not one stored tile: assembled from four and scaled by libvips.
        ("384,384,512,512/200,", full.crop(384, 384, 512, 512).resize(200 / 512), 4.0),
    ]
    for region, expected, tolerance in cases:
        got = decoded(server.get(f"/iiif/2/img%2F{name}/{region}/0/default.jpg"))
        assert difference(got, expected) < tolerance, region
    grey = decoded(server.get(f"/iiif/3/img%2F{name}/512,1024,512,512/256,/0/gray.jpg"))
    assert grey.bands == 1
    turned = decoded(server.get(f"/iiif/3/img%2F{name}/512,1024,512,512/256,/90/default.jpg"))
    assert difference(turned, level1.crop(256, 512, 256, 256).rot("d90")) < 3.0


@pytest.mark.parametrize("name", ["colour.jp2", "grey.jp2"])
def test_jpeg_2000_tiles_at_every_reduction_match_libvips(server: IiifServer, name: str) -> None:
    assert server.get(f"/iiif/2/img%2F{name}/info.json").status_code == 200
    # The first image request starts fetching the file whole; then OpenJPEG reads it directly.
    server.get(f"/iiif/2/img%2F{name}/0,0,256,256/256,/0/default.jpg")
    time.sleep(0.5)
    source = pyvips.Image.new_from_file(str(server.folder / name))
    before = server.made("openjpeg")
    for region, size, step in [
        ("256,256,256,256", "256,", 1),  # inside one 512 px codestream tile ...
        ("512,256,256,256", "256,", 1),  # ... and its neighbour in another
        ("256,512,256,256", "256,", 1),
        ("1024,512,512,512", "256,", 2),
        ("2048,1024,953,977", "239,", 4),  # the bottom-right edge at reduction 2
    ]:
        x, y, w, h = (int(v) for v in region.split(","))
        got = decoded(server.get(f"/iiif/2/img%2F{name}/{region}/{size}/0/default.jpg"))
        expected = source.crop(x, y, w, h).resize(got.width / w, vscale=got.height / h)
        assert difference(got, expected) < 4.0 + 2 * step, region
    assert server.made("openjpeg") == before + 5


def test_a_cold_jpeg_2000_in_s3_is_fetched_whole_once_then_read_locally(server: IiifServer) -> None:
    data = (server.folder / "colour.jp2").read_bytes()
    server.moto.client().put_object(Bucket=server.bucket, Key="cold.jp2", Body=data)
    first = server.get("/iiif/3/s3%2Fcold.jp2/1024,1024,512,512/256,/0/default.jpg")
    assert first.status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the background fetch of the whole file
        fetched = sum(r.bytes_sent for r in server.proxy.requests(method="GET") if r.status in (200, 206))
        if fetched >= len(data):
            break
        time.sleep(0.1)
    before, direct = len(server.proxy.requests()), server.made("openjpeg")
    for x in range(0, 2048, 256):
        assert server.get(f"/iiif/3/s3%2Fcold.jp2/{x},0,256,256/256,/0/default.jpg").status_code == 200
    assert len(server.proxy.requests()) == before  # no origin request: read from the local file
    assert server.made("openjpeg") == direct + 8


def test_not_modified_is_answered_before_any_rendering(server: IiifServer) -> None:
    path = "/iiif/3/img%2Fycc.tif/100,100,700,500/300,/0/default.png"
    first = server.get(path)
    assert first.status_code == 200
    again = server.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]


# ---------------------------------------------------------------------------------------------
# The pure pieces


def levels_info(width: int, height: int, count: int) -> ImageInfo:
    levels, (w, h) = [], (width, height)
    for _ in range(count):
        levels.append((w, h))
        w, h = w // 2, h // 2
    return ImageInfo(width, height, tuple(levels), (256, 256), "tiffload")


@pytest.mark.parametrize(
    ("region", "size", "level"),
    [
        ((512, 512), (256, 256), 1),
        ((512, 393), (256, 197), 1),  # bottom edge: ceil(393 / 2) = 197 where the level holds 196.5
        ((75, 512), (38, 259), 1),  # right edge: the height follows the width rounded up
        ((75, 2048), (10, 273), 3),  # 6 % short in height at level 3: still that level
        ((10315, 7049), (162, 111), 6),  # OpenSeadragon's whole-image request at the smallest level
        ((1, 1), (1, 1), 0),  # one pixel stays one pixel of the full resolution
        ((1000, 1000), (900, 900), 0),  # between levels: the larger one
        ((4096, 4096), (256, 256), 4),
    ],
)
def test_level_choice_forgives_only_rounding(
    region: tuple[int, int], size: tuple[int, int], level: int
) -> None:
    assert choose_level(levels_info(10315, 7049, 7), region, size) == level


def test_stored_tiles_round_trip_and_splice(tmp_path: Path) -> None:
    path = tmp_path / "p.tif"
    pyramid(path, picture(), rgbjpeg=True)
    with open(path, "rb") as file:
        tiles = read_jpeg_tiles(file, 3)
    level = tiles[0]
    assert level is not None and level.rgb and level.bands == 3
    assert (level.columns, level.rows) == (12, 8)
    again = JpegTiles.from_json(level.to_json())
    assert again == level
    offset, length = level.extent(3, 2)
    stream = path.read_bytes()[offset : offset + length]
    spliced = jpeg_file(level, stream)
    assert spliced.startswith(b"\xff\xd8") and spliced.endswith(stream[2:])
    assert b"Adobe" in spliced
    with pytest.raises(ValueError, match="SOI"):
        jpeg_file(level, b"not a jpeg")
    with open(path, "rb") as file:
        info = read_info(file)
    assert len(info.jpeg_tiles) == len(info.levels) and all(info.jpeg_tiles)
    assert ImageInfo.from_json(info.to_json()) == info


def test_neighbouring_jpeg_2000_tiles_share_one_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.jp2"
    picture().jp2ksave(str(path), tile_width=512, tile_height=512)
    with open(path, "rb") as file:
        info = read_info(file)
    assert info.jp2_direct and info.tile == (512, 512)
    reads: list[tuple[int, ...]] = []
    real_read = jp2_regions._read

    def counting(*args):  # type: ignore[no-untyped-def]
        reads.append(args[1:])
        return real_read(*args)

    monkeypatch.setattr(jp2_regions, "_read", counting)
    cache = jp2_regions.DecodedTiles(64 * 1024 * 1024)
    source = pyvips.Image.new_from_file(str(path))
    for left, top in [(0, 0), (256, 0), (0, 256), (256, 256)]:  # the four quarters of codestream tile 0
        pixels = jp2_regions.decode_region(
            path, info, LevelRegion(0, left, top, left + 256, top + 256), cache, 1
        )
        assert pixels.shape == (256, 256, 3)
        expected = source.crop(left, top, 256, 256)
        got = pyvips.Image.new_from_memory(pixels.tobytes(), 256, 256, 3, "uchar")
        assert difference(got, expected) == 0
    assert len(reads) == 1  # one decode of the whole codestream tile
    # Across two codestream tiles: exactly the area, not cached.
    jp2_regions.decode_region(path, info, LevelRegion(0, 384, 0, 640, 256), cache, 1)
    assert len(reads) == 2
    # The budget holds: a cache smaller than one decoded tile keeps nothing.
    small = jp2_regions.DecodedTiles(1000)
    jp2_regions.decode_region(path, info, LevelRegion(1, 0, 0, 128, 128), small, 1)
    assert small.used == 0
    # A codestream tile larger than a direct decode may be (an untiled file: one tile the size of the
    # image) is never decoded whole for a small area: only the area is.
    monkeypatch.setattr(jp2_regions, "MAX_DIRECT_PIXELS", 256 * 256)
    reads.clear()
    pixels = jp2_regions.decode_region(path, info, LevelRegion(0, 256, 256, 512, 512), cache, 2)
    assert reads == [(256, 256, 512, 512, 1)] and pixels.shape == (256, 256, 3)


def test_a_damaged_stored_tile_is_a_415_not_a_crash(server: IiifServer) -> None:
    damaged = server.folder / "damaged.tif"
    data = bytearray((server.folder / "ycc.tif").read_bytes())
    with tifffile.TiffFile(server.folder / "ycc.tif") as tiff:
        for page, column, row in ((1, 1, 2), (0, 11, 7)):  # a whole stored tile, an edge tile
            level = tiff.pages[page]
            index = row * -(-level.imagewidth // level.tilewidth) + column
            offset = level.dataoffsets[index]
            data[offset : offset + 16] = b"not a JPEG tile!"
    damaged.write_bytes(bytes(data))
    for region in ("512,1024,512,512/256,", "2816,1792,185,209/185,"):
        response = server.get(f"/iiif/2/img%2Fdamaged.tif/{region}/0/default.jpg")
        assert response.status_code == 415, (region, response.status_code, response.text)
        assert response.headers["content-type"].startswith("text/plain")
    # The rest of the image is still served.
    assert server.get("/iiif/2/img%2Fdamaged.tif/0,0,256,256/256,/0/default.jpg").status_code == 200
