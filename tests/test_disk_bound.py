"""The disk tier's bound holds by ``du`` for any mix of objects, and looking at an object stores nothing.

A real ``tessera serve`` process reads 2,000 small objects (12 MiB) and renders hundreds of small IIIF
derivatives through an 8 MiB disk tier; what the filesystem then holds for the cache directory (files,
directories, the index) must stay within 1.05 x ``disk_size``. HEAD requests and stats of objects
never read must create no file, no directory and no index row.
"""

from __future__ import annotations

import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyvips

from tests.support.tessera_server import tessera_server, write_config

DISK_SIZE = 8 * 1024 * 1024


def du(directory: Path) -> int:
    """What ``du`` counts: the allocated blocks of every file and directory below ``directory``."""
    return sum(p.lstat().st_blocks * 512 for p in [directory, *directory.rglob("*")])


def cache_files(cache: Path) -> list[Path]:
    return [p for p in (cache / "data").rglob("*") if p.is_file()]


def index_rows(cache: Path) -> int:
    with sqlite3.connect(cache / "index.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]


def config_for(tmp_path: Path, folder: Path) -> tuple[Path, int]:
    return write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "8MB"
memory_size = "1MB"
block_size = "64KB"
small_object_size = "64KB"
index_flush_interval = "100ms"
[mounts.m]
origin = "file://{folder}"
""",
    )


def test_small_objects_and_derivatives_stay_within_the_bound_by_du(tmp_path: Path) -> None:
    rng = random.Random(5)
    folder = tmp_path / "origin"
    (folder / "small").mkdir(parents=True)
    names = [f"small/{i:05d}.bin" for i in range(2000)]
    for name in names:
        (folder / name).write_bytes(rng.randbytes(rng.randrange(1, 12000)))
    pyvips.Image.black(320, 240).draw_rect([200, 30, 30], 0, 0, 160, 120, fill=True).write_to_file(
        str(folder / "tiny.png")
    )
    config, port = config_for(tmp_path, folder)
    cache = tmp_path / "cache"
    with tessera_server(config, port, tmp_path / "serve.log") as base:

        def read(name: str) -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                got = client.get(f"/api/v1/files/m/{name}")
                assert got.content == (folder / name).read_bytes()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(read, names))
        with httpx.Client(base_url=base, timeout=30) as client:
            for width in range(1, 201):  # 200 distinct small derivatives
                got = client.get(f"/iiif/3/m%2Ftiny.png/full/{width},/0/default.png")
                assert got.status_code == 200, got.text
    assert du(cache) <= 1.05 * DISK_SIZE, du(cache)


def test_head_and_stat_store_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "origin"
    (folder / "many").mkdir(parents=True)
    for i in range(2000):
        (folder / "many" / f"{i}.txt").write_text(f"object {i}\n")
    config, port = config_for(tmp_path, folder)
    cache = tmp_path / "cache"
    with tessera_server(config, port, tmp_path / "serve.log") as base, httpx.Client(base_url=base) as client:
        for i in range(2000):
            head = client.head(f"/api/v1/files/m/many/{i}.txt")
            assert head.status_code == 200 and head.headers["content-length"] == str(len(f"object {i}\n"))
        assert client.get("/api/v1/files/m/many/7.txt").text == "object 7\n"
        stats = client.get("/api/v1/cache/stats").json()
    assert [p.name for p in cache_files(cache)] and len(cache_files(cache)) == 1  # only the one read
    assert len([p for p in (cache / "data").iterdir()]) == 1  # one directory, for that one file
    assert index_rows(cache) == 1
    assert stats["tiers"]["disk"]["objects"] == 1
