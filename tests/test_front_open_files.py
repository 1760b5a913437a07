"""The front keeps its hits' cache files open (``open_file_cache``): a changed source still reaches the
client, and the hits after it carry the new bytes, not those of the file nginx had open."""

from __future__ import annotations

import time
from pathlib import Path

import pyvips

from tessera.deploy.nginx import render_nginx_conf
from tests.support.front import nginx_front
from tests.support.tessera_server import tessera_server, write_config
from tests.test_front import tile


def _tiff(path: Path, colour: list[int]) -> None:
    picture = pyvips.Image.black(512, 256, bands=3).linear(1, colour).cast("uchar")
    picture.tiffsave(str(path), tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256)


def test_the_conf_keeps_cache_files_open_within_the_descriptor_limit(tmp_path: Path) -> None:
    conf = render_nginx_conf(
        nodes=["127.0.0.1:8080"],
        cache_dir=tmp_path / "c",
        prefix=tmp_path / "p",
        fresh=60,
        worker_connections=512,
    )
    assert conf.count("open_file_cache max=10000 inactive=60s;") == 2  # /iiif/ and /thumbs/
    assert "worker_rlimit_nofile 11088;" in conf  # 2 x 512 connections + 10000 files + 64
    uncached = render_nginx_conf(
        nodes=["127.0.0.1:8080"], cache_dir=tmp_path / "c", prefix=tmp_path / "p", fresh=60, http_cache=False
    )
    assert "open_file_cache" not in uncached


def test_a_changed_source_replaces_the_open_cache_file(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    _tiff(folder / "a.tif", [200, 40, 90])
    config, port = write_config(
        tmp_path,
        f'[cache]\ndir = "{{cache}}"\nmetadata_ttl = "1s"\n[images]\nderivative_cache = true\n'
        f'[mounts.img]\norigin = "file://{folder}"\n',
    )
    path = tile("a.tif")
    with (
        tessera_server(config, port, tmp_path / "serve.log"),
        nginx_front(config, tmp_path / "run", "--fresh", "1s") as front,
    ):
        first = front.get(path)
        assert first.headers["x-cache-status"] == "MISS"
        for _ in range(3):  # hits: nginx now holds the cache file open
            hit = front.get(path)
            assert hit.headers["x-cache-status"] == "HIT"
            assert hit.content == first.content
        _tiff(folder / "a.tif", [20, 160, 240])
        time.sleep(2.1)  # past nginx's freshness (whole seconds) and Tessera's metadata_ttl
        changed = front.get(path)
        assert changed.status_code == 200
        assert changed.headers["x-cache-status"] == "EXPIRED"
        assert changed.content != first.content
        for _ in range(3):
            again = front.get(path)
            assert again.headers["x-cache-status"] == "HIT"
            assert again.content == changed.content
