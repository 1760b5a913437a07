"""``tessera serve`` loads the image libraries on the first image request, not at start, and never
loads tuspy's client (requests, aiohttp), which only ``tessera put`` uses; warming thumbnails and the
IIIF answers still work once they are loaded. Loaded native libraries are read from /proc/PID/maps."""

from __future__ import annotations

from pathlib import Path

import httpx
import pyvips

from tests.support.tessera_server import tessera_process, write_config

TOKEN = "lean-token"
#: A piece of each library's file name as it appears in the process's memory map.
IMAGE_LIBRARIES = ("libvips", "PIL/_imaging", "openjp2")
TUS_CLIENT_LIBRARIES = ("aiohttp/",)


def loaded(pid: int, pieces: tuple[str, ...]) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {piece for piece in pieces if piece in maps}


def test_image_libraries_load_with_the_first_image(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    pyvips.Image.black(64, 48).write_to_file(str(files / "pic.png"))
    config, port = write_config(
        tmp_path,
        f'[cache]\ndir = "{{cache}}"\ndisk_size = "64MB"\n[mounts.files]\norigin = "file://{files}"\n',
        server=f'access_log = false\ntoken = "{TOKEN}"',
    )
    with tessera_process(config, port, tmp_path / "serve.log") as (base, process):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        stored = httpx.put(f"{base}/api/v1/files/files/up.bin", content=b"x" * 3_000_000, headers=auth)
        assert stored.status_code == 201, stored.text
        assert httpx.get(f"{base}/api/v1/files/files/up.bin").content == b"x" * 3_000_000
        metrics = httpx.get(f"{base}/metrics").text
        assert 'tessera_iiif_responses_total{path="libvips"} 0.0' in metrics  # listed before any image
        assert loaded(process.pid, IMAGE_LIBRARIES + TUS_CLIENT_LIBRARIES) == set()

        info = httpx.get(f"{base}/iiif/3/files%2Fpic.png/info.json")
        assert info.status_code == 200, info.text
        assert (info.json()["width"], info.json()["height"]) == (64, 48)
        image = httpx.get(f"{base}/iiif/3/files%2Fpic.png/full/32,/0/default.jpg")
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        warmed = httpx.post(
            f"{base}/api/v1/cache/warm", json={"path": "/files/pic.png", "thumbs": True}, headers=auth
        )
        assert warmed.status_code == 200 and warmed.json()["thumbnails"] > 0, warmed.text
        assert "libvips" in loaded(process.pid, IMAGE_LIBRARIES)
        assert loaded(process.pid, TUS_CLIENT_LIBRARIES) == set()
