"""Untrusted sources and heavy requests against a real ``tessera serve``: refused in time, bounded, healthy.

Every file of the generated hostile corpus (``tests/support/hostile_files.py``) is asked for its
info.json, a tile, the whole image and a thumbnail: each answer is a 4xx with a reason, the server
keeps serving, and its peak memory and temporary files stay within generous bounds.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import pyvips

from tessera.images.jpeg_tiles import JpegTiles, frame_size
from tessera.images.limits import rotated_canvas
from tessera.images.render import LevelRegion
from tessera.images.stored_tiles import covering_tiles
from tests.support.hostile_files import patch_jpeg_frame, write_corpus
from tests.support.moto_server import free_port
from tests.support.tessera_server import tessera_process

#: Files whose header is whole (only their pixels are damaged or lie): info.json, which decodes no
#: pixel, may describe them; every pixel request is refused.
HEADER_INTACT = frozenset(
    {
        "truncated.jpg",
        "truncated.png",
        "corrupt.webp",
        "truncated.jp2",
        "corrupt.jp2",
        "cut-tiles.tif",
        "lying-tile.tif",
    }
)
GIB = 1 << 30
#: The largest file libvips (or anything else) may write while serving the corpus.
MAX_TEMP_FILE = 100 << 20
#: What each hostile file is asked for: its info.json, a tile, the whole image, a thumbnail.
REQUESTS = (
    "/iiif/3/{id}/info.json",
    "/iiif/3/{id}/0,0,256,256/256,256/0/default.jpg",
    "/iiif/3/{id}/full/max/0/default.png",
    "/iiif/2/{id}/full/200,/0/default.jpg",
    "/thumbs/{id}/full/100,/0/default.jpg",
)


@dataclass
class Served:
    base: str
    pid: int
    folder: Path
    scratch: list[Path]
    #: The largest temporary file seen open by the server (``TempWatch``).
    largest_temp: list[int] = field(default_factory=lambda: [0])

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=120)

    def peak_rss(self) -> int:
        """The server process's peak resident memory (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")


class TempWatch(threading.Thread):
    """Samples the sizes of the files the server holds open under its scratch folders (deleted or not).

    libvips unlinks its temporary files as soon as it opens them, so they show only through
    ``/proc/PID/fd``.
    """

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.done = threading.Event()

    def run(self) -> None:
        fds = Path(f"/proc/{self.served.pid}/fd")
        roots = tuple(str(root) for root in self.served.scratch)
        while not self.done.wait(0.02):
            for fd in fds.iterdir():
                try:
                    if os.readlink(fd).startswith(roots):
                        size = os.stat(fd).st_size
                        self.served.largest_temp[0] = max(self.served.largest_temp[0], size)
                except OSError:  # closed meanwhile
                    continue

    def __enter__(self) -> TempWatch:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.join()


def _config(tmp: Path, port: int, folder: Path, images: str) -> Path:
    config = tmp / "tessera.toml"
    config.write_text(
        f"""
[server]
port = {port}
[cache]
dir = "{tmp / "cache"}"
block_size = "256KB"
small_object_size = "256KB"
[images]
{images}
[mounts.img]
origin = "file://{folder}"
"""
    )
    return config


@contextmanager
def serve(tmp: Path, folder: Path, images: str) -> Iterator[Served]:
    """``tessera serve`` on ``folder`` (mount ``img``), its temporary files kept under ``tmp/scratch``."""
    scratch = tmp / "scratch"
    scratch.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(scratch)}
    config = _config(tmp, port, folder, images)
    with tessera_process(config, port, tmp / "serve.log", env=env) as (base, process):
        yield Served(base, process.pid, folder, [scratch, tmp / "cache"])


def good_picture() -> pyvips.Image:
    return (pyvips.Image.xyz(1200, 800) % 256).cast("uchar").bandjoin_const([64])[0:3]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hostile")
    folder = tmp / "img"
    folder.mkdir()
    write_corpus(folder)
    good_picture().jpegsave(str(folder / "good.jpg"))
    good_picture().tiffsave(str(folder / "good.tif"), tile=True, pyramid=True, compression="jpeg")
    with serve(tmp, folder, 'max_area = 25000000\nrender_timeout = "20s"') as served:
        yield served


def test_every_hostile_file_gets_a_4xx_and_the_server_stays_bounded_and_healthy(hostile: Served) -> None:
    names = sorted(path.name for path in hostile.folder.iterdir() if not path.name.startswith("good"))
    asked = [
        (name, template.format(id=quote("img/" + name, safe=""))) for name in names for template in REQUESTS
    ]

    def wrong_answer(name: str, path: str) -> str | None:
        response = hostile.get(path)
        text = response.text.strip()
        # A refusal says why, and names no file of the server.
        refused = 400 <= response.status_code < 500 and text and str(hostile.folder.parent) not in text
        if refused or (path.endswith("info.json") and name in HEADER_INTACT):
            return None
        return f"{path}: {response.status_code} {response.text.strip()[:200]!r}"

    with TempWatch(hostile), ThreadPoolExecutor(4) as clients:  # several at once, as an attacker would
        wrong = [answer for answer in clients.map(wrong_answer, *zip(*asked, strict=True)) if answer]
    assert not wrong, wrong
    assert hostile.get("/healthz").status_code == 200
    for good in ("good.jpg", "good.tif"):
        image = hostile.get(f"/iiif/3/img%2F{good}/full/max/0/default.jpg")
        assert image.status_code == 200, image.text
        assert pyvips.Image.new_from_buffer(image.content, "").width == 1200
    assert hostile.peak_rss() < GIB
    assert hostile.largest_temp[0] < MAX_TEMP_FILE
    for root in hostile.scratch:
        largest = max((path.stat().st_size for path in root.rglob("*") if path.is_file()), default=0)
        assert largest < MAX_TEMP_FILE, root


@pytest.mark.parametrize("degrees", [0, 1, 30, 45, 90, 135, 200, 271.5, 359])
@pytest.mark.parametrize("size", [(60, 1), (300, 200), (7, 1000)])
def test_rotated_canvas_is_the_size_libvips_makes(size: tuple[int, int], degrees: float) -> None:
    canvas = rotated_canvas(size, degrees)
    if degrees % 90 == 0:
        assert canvas == (size if degrees % 180 == 0 else size[::-1])
    else:
        rotated = pyvips.Image.black(*size).rotate(degrees)
        assert rotated.width <= canvas[0] <= rotated.width + 1
        assert rotated.height <= canvas[1] <= rotated.height + 1


def test_rotation_cannot_make_a_canvas_beyond_max_area(hostile: Served) -> None:
    # 60000 x 1 is within max_area (25 Mpx); rotated by 45 degrees it is a 42427 x 42427 canvas (1.8 Gpx).
    response = hostile.get("/iiif/3/img%2Fgood.jpg/0,0,1,1/^60000,1/45/default.tif")
    assert response.status_code == 400
    assert "rotated by 45 degrees" in response.text and "max_area" in response.text
    assert hostile.get("/iiif/3/img%2Fgood.jpg/0,0,1,1/^4000,1/45/default.png").status_code == 200
    assert hostile.peak_rss() < GIB


def test_a_render_past_its_timeout_is_stopped_and_frees_its_slot(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    good_picture().jpegsave(str(folder / "good.jpg"))
    settings = 'max_area = 400000000\nrender_concurrency = 1\nrender_timeout = "2s"\nderivative_cache = false'
    with serve(tmp_path, folder, settings) as served:
        # About a minute of work for libvips: a 20000 x 13333 upscale encoded as PNG.
        heavy = served.get("/iiif/3/img%2Fgood.jpg/full/^20000,/0/default.png")
        assert heavy.status_code == 503
        assert "render_timeout" in heavy.text
        # With the one render slot still busy, this would wait its 2 s out and get 503 too.
        cheap = served.get("/iiif/3/img%2Fgood.jpg/0,0,256,256/256,/0/default.jpg")
        assert cheap.status_code == 200, cheap.text


def test_frame_size_reads_the_sof_of_any_jpeg_process() -> None:
    picture = good_picture()
    for options in ({}, {"interlace": True}, {"optimize_coding": True}):
        assert frame_size(picture.jpegsave_buffer(**options)) == (1200, 800)
    stream = picture.jpegsave_buffer()
    with pytest.raises(ValueError, match="no JPEG frame header"):
        frame_size(stream[:2] + stream[stream.index(b"\xff\xda") :])  # straight to the scan
    with pytest.raises(ValueError, match="no width or height"):
        frame_size(patch_jpeg_frame(stream, 0, 800))


def test_tiles_decoded_whole_for_one_request_are_bounded_in_pixels() -> None:
    def level(tile: int) -> JpegTiles:
        columns = -(-8192 // tile)
        empty = array("Q", [0] * columns * columns)
        return JpegTiles(8192, 8192, tile, tile, 3, False, b"", empty, empty)

    area = LevelRegion(0, 0, 0, 1024, 1024)
    assert covering_tiles(level(256), area) == [(c, r) for r in range(4) for c in range(4)]
    # Four 4096 px tiles are 64 Mpx decoded at once: left to libvips, which decodes them lazily.
    assert covering_tiles(level(4096), LevelRegion(0, 4000, 4000, 4200, 4200)) is None
    assert covering_tiles(level(4096), LevelRegion(0, 0, 0, 100, 100)) == [(0, 0)]
