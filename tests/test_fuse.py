"""``tessera mount`` of an S3 bucket (moto behind a counting proxy), used by ordinary programs."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tessera.fs.kernel import max_request_bytes
from tests.support.fuse_mount import S3Mount, is_mounted, s3_mount
from tests.support.moto_server import MotoServer, free_port
from tests.support.proxy import CountingProxy


@pytest.fixture
def mounted(tmp_path: Path, moto: MotoServer, s3_proxy: CountingProxy) -> Iterator[S3Mount]:
    with s3_mount(tmp_path, moto, s3_proxy) as mount:
        yield mount


def test_read_only_view_of_the_bucket(mounted: S3Mount) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    mounted.put("maps/chart.bin", data)
    mounted.put("readme.txt", b"hello\n")
    mounted.put("weird//double.bin", b"x")  # not representable as a path: skipped, not a crash
    root = mounted.mountpoint
    assert sorted(os.listdir(root)) == ["maps", "readme.txt", "weird"]
    assert (root / "maps" / "chart.bin").stat().st_size == len(data)
    assert (root / "maps" / "chart.bin").read_bytes() == data
    assert (root / "readme.txt").read_text() == "hello\n"
    with pytest.raises(FileNotFoundError):
        (root / "maps" / "missing.bin").stat()
    for attempt in (
        lambda: (root / "new.txt").write_bytes(b"x"),
        lambda: open(root / "readme.txt", "r+b"),  # noqa: SIM115
        lambda: (root / "dir").mkdir(),
        lambda: (root / "readme.txt").unlink(),
        lambda: (root / "readme.txt").rename(root / "other.txt"),
    ):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS


def test_listing_is_paged_and_stat_needs_no_head(
    tmp_path: Path, moto: MotoServer, s3_proxy: CountingProxy
) -> None:
    # TTLs longer than the test: however slow the machine, `ls -l` sees one listing of the directory.
    ttl = {"TESSERA_CACHE__METADATA_TTL": "5m", "TESSERA_FS__LISTING_TTL": "5m"}
    with s3_mount(tmp_path, moto, s3_proxy, **ttl) as mounted:
        client = mounted.moto.client()
        for i in range(1100):
            client.put_object(Bucket=mounted.bucket, Key=f"many/{i:05d}.bin", Body=b"")
        mounted.proxy.reset_log()
        out = subprocess.run(
            ["ls", "-l", str(mounted.mountpoint / "many")], capture_output=True, text=True, check=True
        )
        assert len(out.stdout.splitlines()) == 1101  # "total" + 1100 entries
        gets = mounted.proxy.requests(method="GET")
        lists = [r for r in gets if "list-type=2" in r.query and "prefix=many%2F" in r.query]
        assert len(lists) == 2  # 1,000 keys a page
        assert mounted.proxy.requests(method="HEAD") == []


def test_flood_of_readers_fetches_each_byte_once(mounted: S3Mount) -> None:
    data = os.urandom(24 * 1024 * 1024)
    mounted.put("big/flood.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    path = mounted.mountpoint / "big" / "flood.bin"
    path.stat()
    mounted.proxy.reset_log()

    def sha(_: int) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(sha, range(32))) == {digest}
    gets = mounted.origin_requests("GET", "big/flood.bin")
    assert sum(r.bytes_sent for r in gets if r.status in (200, 206)) == len(data)


def test_overwrite_shows_after_ttl_and_is_never_mixed(mounted: S3Mount) -> None:
    old, new = b"o" * (2 * 1024 * 1024), b"n" * (2 * 1024 * 1024)
    mounted.put("ow.bin", old)
    path = mounted.mountpoint / "ow.bin"
    assert path.read_bytes() == old
    mounted.put("ow.bin", new)
    deadline = time.monotonic() + 10
    while True:
        content = path.read_bytes()
        assert content in (old, new), "a read mixed two versions"
        if content == new:
            break
        assert time.monotonic() < deadline, "new version not visible within the TTL"
        time.sleep(0.2)
    # unchanged and hot: opens within the TTL cost the origin nothing, so 1,000 of them cost at most
    # one HEAD per TTL (1 s) they span, however slow the machine
    mounted.proxy.reset_log()
    started = time.monotonic()
    for _ in range(1000):
        with open(path, "rb") as f:
            f.read(16)
    spanned = time.monotonic() - started
    heads = mounted.proxy.requests(method="HEAD")
    assert len(heads) <= spanned / 1.0 + 1
    assert len(mounted.proxy.requests()) == len(heads)  # nothing but revalidations


def test_origin_failure_is_eio_not_a_hang(mounted: S3Mount) -> None:
    mounted.put("fail.bin", os.urandom(4 * 1024 * 1024))
    path = mounted.mountpoint / "fail.bin"
    path.stat()
    mounted.proxy.fail_next(1000, status=503)
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    assert caught.value.errno == errno.EIO
    assert time.monotonic() - started < 10
    mounted.proxy.clear_faults()
    assert len(path.read_bytes()) == 4 * 1024 * 1024


def test_sigterm_unmounts_cleanly(mounted: S3Mount) -> None:
    mounted.process.send_signal(signal.SIGTERM)
    assert mounted.process.wait(timeout=20) == 0
    assert not is_mounted(mounted.mountpoint)


def test_iipimage_serves_a_tile_of_an_image_that_lives_only_in_the_bucket(
    mounted: S3Mount, tmp_path: Path
) -> None:
    import pyvips

    image = pyvips.Image.black(1200, 900, bands=3).linear(1, [200, 40, 90]).cast("uchar")
    pyramid = tmp_path / "upload.tif"
    image.tiffsave(str(pyramid), tile=True, pyramid=True, compression="jpeg", tile_width=256, tile_height=256)
    mounted.put("images/photo.tif", pyramid.read_bytes())
    pyramid.unlink()  # the only copy is in the bucket now

    run_dir = tmp_path / "iip"
    run_dir.mkdir()
    port = free_port()
    socket_path = run_dir / "iipsrv.sock"
    env = {
        **os.environ,
        "FILESYSTEM_PREFIX": f"{mounted.mountpoint}/",
        "LOGFILE": str(run_dir / "iipsrv.log"),
    }
    subprocess.run(
        [
            "spawn-fcgi",
            "-s",
            str(socket_path),
            "-M",
            "0666",
            "-F",
            "1",
            "-P",
            str(run_dir / "iipsrv.pid"),
            "--",
            "/usr/lib/iipimage-server/iipsrv.fcgi",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    (run_dir / "nginx.conf").write_text(NGINX_CONF.format(run=run_dir, port=port, sock=socket_path))
    subprocess.run(["nginx", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf")], check=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/iiif/images/photo.tif/0,0,256,256/256,/0/default.jpg"
                )
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        logs = [
            (run_dir / name).read_text()
            for name in ("iipsrv.log", "nginx-error.log")
            if (run_dir / name).exists()
        ]
        assert response.status_code == 200, logs
        assert response.headers["content-type"] == "image/jpeg"
        tile = pyvips.Image.new_from_buffer(response.content, "")
        assert (tile.width, tile.height) == (256, 256)
        assert abs(tile.avg() - (200 + 40 + 90) / 3) < 3
        info = httpx.get(f"http://127.0.0.1:{port}/iiif/images/photo.tif/info.json").json()
        assert (info["width"], info["height"]) == (1200, 900)
    finally:
        subprocess.run(
            ["nginx", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"), "-s", "stop"], check=False
        )
        for pid in (run_dir / "iipsrv.pid").read_text().split():
            os.kill(int(pid), signal.SIGTERM)
        shutil.rmtree(run_dir, ignore_errors=True)


NGINX_CONF = """
user root;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
daemon on;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/iiif/(.*)$ {{
            fastcgi_pass unix:{sock};
            fastcgi_param QUERY_STRING IIIF=$1;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param SCRIPT_NAME /iiif;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param SERVER_NAME localhost;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        }}
    }}
}}
"""


def test_inodes_the_kernel_forgot_are_not_kept(mounted: S3Mount) -> None:
    """The inode table holds what the kernel holds: names gone from the bucket leave it (statfs counts)."""
    client = mounted.moto.client()
    names = [mounted.mountpoint / "gone" / f"{i:03d}.bin" for i in range(100)]
    for path in names:
        client.put_object(Bucket=mounted.bucket, Key=f"gone/{path.name}", Body=b"x")
    for path in names:
        path.stat()
    assert os.statvfs(mounted.mountpoint).f_files >= 101
    for path in names:
        client.delete_object(Bucket=mounted.bucket, Key=f"gone/{path.name}")
    time.sleep(1.5)  # past the 1 s TTLs: the next lookups ask the origin again
    for path in names:
        with pytest.raises(FileNotFoundError):
            path.stat()
    deadline = time.monotonic() + 10
    while os.statvfs(mounted.mountpoint).f_files > 10:
        assert time.monotonic() < deadline, "the kernel's forgets did not shrink the inode table"
        time.sleep(0.1)


def test_an_unexpected_error_fails_the_request_not_the_mount(mounted: S3Mount) -> None:
    """A failure no handler expects (here the cache disk failing a read) is EIO; the mount serves on."""
    # Several kernel requests per read: the first of an open file asks the engine (memory tier), the
    # others read the cached file directly.
    data = os.urandom(3 * 1024 * 1024)
    mounted.put("disk.bin", data)
    mounted.put("other.txt", b"other")
    path = mounted.mountpoint / "disk.bin"
    assert path.read_bytes() == data
    deadline = time.monotonic() + 10
    while True:  # the version's file, once its bytes are written
        stored = [
            p
            for p in (mounted.cache_dir / "data").rglob("*")
            if p.is_file() and p.stat().st_blocks * 512 >= len(data)
        ]
        if stored:
            break
        assert time.monotonic() < deadline, "the object never reached the disk tier"
        time.sleep(0.05)
    stored[0].unlink()
    stored[0].mkdir()  # every read of the cached file now fails (EISDIR)
    while True:
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # past the kernel's pages
            try:
                f.read()
            except OSError as exc:
                assert exc.errno == errno.EIO
                break
        assert time.monotonic() < deadline, "no read reached the damaged file"
        time.sleep(0.05)
    assert mounted.process.poll() is None
    assert (mounted.mountpoint / "other.txt").read_bytes() == b"other"


def test_the_kernel_reads_in_large_requests(
    tmp_path: Path, moto: MotoServer, s3_proxy: CountingProxy
) -> None:
    """The mount widens the kernel's readahead: a program reading 128 KiB at a time costs the daemon
    requests of up to 1 MiB (what libfuse 3 and the kernel allow), not one request per 128 KiB."""
    size = 8 * 1024 * 1024
    data = os.urandom(size)
    with s3_mount(tmp_path, moto, s3_proxy) as mounted:
        mounted.put("big/large.bin", data)
        path = mounted.mountpoint / "big" / "large.bin"
        with open(path, "rb", buffering=0) as f:
            chunks = iter(lambda: f.read(128 * 1024), b"")
            assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
    served = re.search(r"\((\d+) reads served, largest (\d+) bytes\)", (tmp_path / "mount.log").read_text())
    assert served is not None
    reads, largest = int(served[1]), int(served[2])
    assert largest == max_request_bytes() > 128 * 1024
    assert reads <= 2 * size // largest < size // (128 * 1024)
