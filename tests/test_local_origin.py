"""Local-folder origins: confinement to the folder, non-regular files, and one version per response.

Everything goes through a real ``tessera serve`` (or ``tessera warm``) on a real folder, except the
listing tests, which call the origin on that folder directly.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tessera.errors import ObjectNotFound
from tessera.origins.local import LocalOrigin
from tests.support.overwrites import OverwriteReaders, version_bytes
from tests.support.tessera_server import TESSERA, tessera_server, write_config

SECRET = f"outside-{uuid.uuid4().hex}".encode()
INSIDE = b"inside the folder\n"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def make_folder(tmp_path: Path) -> Path:
    """A folder with links that stay inside it, links that leave it, loops, a FIFO and a directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "picture.png").write_bytes(_png())
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(INSIDE)
    (root / "sub" / "inner.txt").write_bytes(INSIDE * 2)
    (root / "sub" / "picture.png").write_bytes(_png())
    links = {
        "passwd": "/etc/passwd",  # absolute, to a file
        "etclink": "/etc",  # absolute, to a directory
        "secret.txt": "../outside/secret.txt",  # relative, out
        "outdir": "../outside",  # relative, to a directory out
        "sub/deeper": "../../outside/secret.txt",  # relative from a subdirectory
        "picture.png": "../outside/picture.png",  # an image out (IIIF)
        "loop": "loop",  # a link to itself
        "ping": "pong",
        "pong": "ping",
        "dangling": "nothing-here",
        "alias.txt": "sub/inner.txt",  # stays inside: works
        "subalias": "sub",  # a directory inside: works
        "sub/up": "..",  # a directory inside, but an ancestor: readable, never walked
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    os.mkfifo(root / "fifo")
    return root


ESCAPES = [
    "passwd",
    "etclink/passwd",
    "etclink/hostname",
    "secret.txt",
    "outdir/secret.txt",
    "sub/deeper",
    "subalias/deeper",
    "picture.png",
    "loop",
    "ping",
    "dangling",
]
INSIDE_LINKS = {
    "alias.txt": INSIDE * 2,
    "subalias/inner.txt": INSIDE * 2,
    "sub/up/hello.txt": INSIDE,
    "sub/up/sub/inner.txt": INSIDE * 2,
}
#: Every regular file a walk of the folder may reach (links inside counted under their own names).
LISTED = {
    "alias.txt",
    "hello.txt",
    "sub/inner.txt",
    "sub/picture.png",
    "subalias/inner.txt",
    "subalias/picture.png",
}


def config_for(tmp_path: Path, root: Path, **cache: str) -> tuple[Path, int]:
    extra = "".join(f'{key} = "{value}"\n' for key, value in cache.items())
    return write_config(
        tmp_path,
        f"""
[cache]
dir = "{{cache}}"
disk_size = "64MB"
block_size = "64KB"
small_object_size = "64KB"
{extra}
[mounts.files]
origin = "file://{root}"
""",
        server='token = "s3cret"\naccess_log = false',
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    config, port = config_for(tmp_path, make_folder(tmp_path))
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        yield base, config


def cache_holds(cache_dir: Path, needle: bytes) -> bool:
    return any(needle in path.read_bytes() for path in cache_dir.rglob("*") if path.is_file())


def test_links_out_of_the_folder_are_missing_objects(served: tuple[str, Path]) -> None:
    base, _ = served
    with httpx.Client(base_url=base, timeout=10) as client:
        for key in ESCAPES:
            response = client.get(f"/api/v1/files/files/{key}")
            assert response.status_code == 404, (key, response.text)
            assert response.json()["error"] == "ObjectNotFound"
            # The answer never names where the link points.
            for target in ("/etc", "outside", "secret", "nothing-here", "pong"):
                assert target not in response.json()["detail"].replace(key, ""), (key, response.text)
            assert SECRET not in response.content and b"root:" not in response.content
            assert client.head(f"/api/v1/files/files/{key}").status_code == 404
        for key, body in INSIDE_LINKS.items():
            response = client.get(f"/api/v1/files/files/{key}")
            assert (response.status_code, response.content) == (200, body), key
        # The image server reads through the same origin: an image out of the folder is not there.
        assert client.get("/iiif/3/files%2Fpicture.png/info.json").status_code == 404
        assert client.get("/iiif/3/files%2Fpicture.png/full/max/0/default.jpg").status_code == 404
        inside = client.get("/iiif/3/files%2Fsub%2Fpicture.png/info.json")
        assert inside.status_code == 200 and inside.json()["width"] == 64


def test_warm_of_the_folder_caches_nothing_from_outside(served: tuple[str, Path]) -> None:
    _, config = served
    cache_dir = config.parent / "cache"
    result = subprocess.run(
        [TESSERA, "warm", "/files/", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"warmed {len(LISTED)} objects" in result.stderr
    assert not cache_holds(cache_dir, SECRET)
    assert not cache_holds(cache_dir, Path("/etc/passwd").read_bytes()[:64])
    assert cache_holds(cache_dir, INSIDE * 2)


@pytest.mark.anyio
async def test_listings_skip_links_out_loops_and_special_files(tmp_path: Path) -> None:
    origin = LocalOrigin("files", str(make_folder(tmp_path)))

    async def walk(prefix: str) -> list[str]:
        return [info.key async for info in origin.list(prefix)]

    assert sorted(await walk("")) == sorted(LISTED)
    assert sorted(await walk("sub")) == [
        "sub/inner.txt",
        "sub/picture.png",
        "subalias/inner.txt",
        "subalias/picture.png",
    ]
    assert await walk("etclink/") == []
    assert await walk("outdir/") == []
    dirs, files = await origin.list_dir("")
    assert dirs == ["sub", "subalias"]
    assert [info.key for info in files] == ["alias.txt", "hello.txt"]
    dirs, files = await origin.list_dir("sub/")
    assert dirs == [] and [info.key for info in files] == ["sub/inner.txt", "sub/picture.png"]
    assert await origin.list_dir("etclink/") == ([], [])


@pytest.mark.anyio
async def test_the_root_given_through_a_link_keeps_its_real_identity(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (tmp_path / "via").symlink_to(root)
    origin = LocalOrigin("files", str(tmp_path / "via"))
    assert origin.identity == f"file://{root.resolve()}"
    assert (await origin.stat("hello.txt")).size == len(INSIDE)


def test_fifo_and_directory_are_refused_at_once(served: tuple[str, Path]) -> None:
    base, _ = served
    # A hang would exceed the client's timeout and fail the test.
    with httpx.Client(base_url=base, timeout=5) as client:
        for _ in range(3):
            for key in ("fifo", "sub", "subalias"):
                response = client.get(f"/api/v1/files/files/{key}")
                assert response.status_code == 404, (key, response.text)
                assert "not a regular file" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/files/files/hello.txt").content == INSIDE


# ---------------------------------------------------------------------------- overwrites


def overwrite(path: Path, data: bytes, how: str) -> None:
    if how == "rename":
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return
    with open(path, "r+b") as out:  # in place: the file passes through states of neither version
        for offset in range(0, len(data), 256 * 1024):
            out.write(data[offset : offset + 256 * 1024])
        out.truncate(len(data))


def test_readers_during_overwrites_get_one_version_whole(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    target = root / "moving.bin"
    # By round % 4: renamed over, longer in place, shorter in place, same size in place.
    sizes = [1_500_000, 2_200_000, 900_000, 900_000]
    modes = ["inplace", "inplace", "inplace", "rename"]
    first = version_bytes(0, 1_200_000)
    target.write_bytes(first)
    config, port = config_for(tmp_path, root, metadata_ttl="0s", memory_size="4MB")
    with tessera_server(config, port, tmp_path / "serve.log") as base:
        with OverwriteReaders(base, "/api/v1/files/files/moving.bin", first) as readers:
            for round_number in range(1, 41):
                data = version_bytes(round_number, sizes[round_number % 4])
                readers.new_version(data)
                overwrite(target, data, modes[round_number % 4])
                readers.wait(0.15)
        final = httpx.get(f"{base}/api/v1/files/files/moving.bin", timeout=30)
    assert not readers.mixed, f"{len(readers.mixed)} mixed responses, e.g. {readers.mixed[:5]}"
    assert readers.whole > 40
    assert final.status_code == 200 and final.content == readers.versions[-1]


@pytest.mark.anyio
async def test_swapping_a_file_or_directory_for_a_link_never_escapes(tmp_path: Path) -> None:
    """A writer keeps replacing a file and a directory by links out of the folder while reads go on."""
    root = make_folder(tmp_path)
    (root / "swap").mkdir()
    (root / "swap" / "secret.txt").write_bytes(INSIDE)
    (root / "file.txt").write_bytes(INSIDE)
    outside = tmp_path / "outside"
    origin = LocalOrigin("files", str(root))
    stop = threading.Event()

    def swapper() -> None:
        # Between a resolve and the open, a checked real file or directory may become a link out:
        # a file is replaced atomically; a directory is moved away and a link put in its place.
        flip = False
        while not stop.is_set():
            flip = not flip
            fresh = root / ".file.new"
            if flip:
                fresh.symlink_to(outside / "secret.txt")
                os.replace(root / "swap", root / "parked")
                (root / "swap").symlink_to(outside)
            else:
                fresh.write_bytes(INSIDE)
                (root / "swap").unlink()
                os.replace(root / "parked", root / "swap")
            os.replace(fresh, root / "file.txt")

    async def stats() -> tuple[int, int]:
        # stat opens the file as a read does (and waits for no settling): the size tells which file.
        served = refused = 0
        for _ in range(3000):
            for key in ("swap/secret.txt", "file.txt"):
                try:
                    info = await origin.stat(key)
                except ObjectNotFound:
                    refused += 1
                    continue
                assert info.size == len(INSIDE) != len(SECRET)
                served += 1
        return served, refused

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        served, refused = await stats()
    finally:
        stop.set()
        thread.join()
    assert served and refused  # both states were met, and the outside one was never read
