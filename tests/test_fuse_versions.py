"""Overwrites seen through a real ``tessera mount`` of moto S3: every read gets one version, whole.

A file handle keeps reading the version it opened (or fails with EIO); an open after the change and the
TTL reads the new version whole, and ``stat`` agrees with it once no handle of the old version is open.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.fs.versions import KernelVersions
from tessera.origins import ObjectInfo
from tests.support.fuse_mount import S3Mount, s3_mount
from tests.support.moto_server import MotoServer
from tests.support.proxy import CountingProxy

MiB = 1024 * 1024


@pytest.fixture
def mounted(tmp_path: Path, moto: MotoServer, s3_proxy: CountingProxy) -> Iterator[S3Mount]:
    with s3_mount(tmp_path, moto, s3_proxy) as mount:
        yield mount


def read_whole(path: Path) -> tuple[int, bytes]:
    """``fstat`` size and content of one fresh open of ``path``."""
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_size, f.read()


def wait_for(path: Path, versions: list[bytes], wanted: bytes, timeout: float) -> None:
    """Open ``path`` until it reads ``wanted``; every read before must be one of ``versions`` whole."""
    deadline = time.monotonic() + timeout
    while True:
        size, content = read_whole(path)
        whole = content in versions
        assert whole, f"a read of {len(content)} bytes is no version whole"
        if content == wanted:
            assert size == len(wanted), "stat disagrees with the bytes read"
            return
        assert time.monotonic() < deadline, "the new version did not show within the TTL"
        time.sleep(0.1)


def test_longer_overwrite_is_read_whole_with_its_new_size(
    tmp_path: Path, moto: MotoServer, s3_proxy: CountingProxy
) -> None:
    """Defect 3a: with a 3 s TTL, the new longer body was read cut to the old size for a whole TTL.

    The listing (kept 60 s) still gives the old size to the kernel's lookups after the object's own
    metadata expired and an open found the new version.
    """
    ttl = {"TESSERA_CACHE__METADATA_TTL": "3s", "TESSERA_FS__LISTING_TTL": "60s"}
    with s3_mount(tmp_path, moto, s3_proxy, **ttl) as mounted:
        old, new = os.urandom(MiB + 3), os.urandom(3 * MiB + 7)
        mounted.put("grow.bin", old)
        path = mounted.mountpoint / "grow.bin"
        assert read_whole(path) == (len(old), old)
        mounted.put("grow.bin", new)
        wait_for(path, [old, new], new, timeout=10)


@pytest.mark.parametrize("new_size", [MiB // 2, 2 * MiB, 3 * MiB], ids=["shorter", "same-size", "longer"])
def test_open_handle_keeps_its_version_while_new_opens_read_the_new_one(
    mounted: S3Mount, new_size: int
) -> None:
    old, new = os.urandom(2 * MiB), os.urandom(new_size)
    mounted.put("keep.bin", old)
    path = mounted.mountpoint / "keep.bin"
    with open(path, "rb") as early:
        assert early.read(MiB) == old[:MiB]
        mounted.put("keep.bin", new)
        time.sleep(1.5)  # past the 1 s TTL: the next open revalidates
        assert read_whole(path)[1] == new
        with open(path, "rb") as late:
            # the rest of the old version, or EIO; never the new bytes, never cut short
            try:
                rest = early.read()
            except OSError as exc:
                assert exc.errno == errno.EIO
            else:
                assert rest == old[MiB:]
            assert late.read() == new
    assert read_whole(path) == (len(new), new)


def test_readers_during_and_after_overwrites_never_see_a_mix(mounted: S3Mount) -> None:
    """Many readers (fresh opens and one slow handle) across longer, shorter and same-size overwrites."""
    sizes = [MiB + 5, 2 * MiB + 9, MiB // 3, MiB // 3, 3 * MiB, 64 * 1024, 2 * MiB]
    versions = [os.urandom(size) for size in sizes]
    mounted.put("hot.bin", versions[0])
    path = mounted.mountpoint / "hot.bin"
    assert read_whole(path)[1] == versions[0]
    stop = threading.Event()
    reads: list[int] = []
    mixed: list[str] = []

    def fresh_opens() -> None:
        while not stop.is_set():
            _size, content = read_whole(path)
            reads.append(len(content))
            if content not in versions:
                mixed.append(f"fresh open read {len(content)} bytes of no version")

    def slow_handle() -> None:
        while not stop.is_set():
            chunks = []
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(256 * 1024):
                        chunks.append(chunk)
                        time.sleep(0.05)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    mixed.append(f"slow handle failed with {exc}")
                continue
            content = b"".join(chunks)
            reads.append(len(content))
            if content not in versions:
                mixed.append(f"slow handle read {len(content)} bytes of no version")

    threads = [threading.Thread(target=fresh_opens) for _ in range(3)]
    threads.append(threading.Thread(target=slow_handle))
    for thread in threads:
        thread.start()
    try:
        for version in versions[1:]:
            mounted.put("hot.bin", version)
            time.sleep(1.3)  # readers see the change after the 1 s TTL
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert mixed == []
    assert len(reads) > 10  # the readers did read
    wait_for(path, versions, versions[-1], timeout=5)


@pytest.mark.anyio
async def test_kernel_versions_keep_the_kernel_on_one_version_per_file() -> None:
    """The rules of ``KernelVersions`` on their own (no kernel: invalidations are recorded)."""
    dropped: list[int] = []
    versions = KernelVersions(dropped.append, ttl=60.0)
    v1, v2 = ObjectInfo("k", 10, '"1"', 1.0), ObjectInfo("k", 20, '"2"', 2.0)
    listed_at = time.monotonic()

    assert versions.attributes(7, v1, listed_at)[0] == v1
    first = await versions.open(7, v1)  # what the kernel was told: nothing to drop
    assert (first.direct_io, dropped) == (False, [])
    again = await versions.open(7, v1)
    assert (again.direct_io, again.keep_cache) == (False, True)
    # a new version while v1 is read through the page cache: direct I/O, the kernel keeps v1's size
    newer = await versions.open(7, v2)
    assert (newer.direct_io, dropped) == (True, [])
    assert versions.attributes(7, v1, listed_at) == (v1, 0.0)
    for mode in (first, again, newer):
        versions.release(7, mode)
    # v1's readers are gone: v2 is reported (a listing older than the open does not bring v1 back)
    info, timeout = versions.attributes(7, v1, listed_at)
    assert info == v2 and 0 < timeout <= 60
    after = await versions.open(7, v2)
    assert (after.direct_io, after.keep_cache, dropped) == (False, False, [7])
