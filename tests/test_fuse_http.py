"""``tessera mount`` of a plain HTTP origin (no listings): paths at any depth, through a real mount."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fuse_mount import QUICK, tessera_mount
from tests.support.origin_server import ObjectHTTPServer


@pytest.fixture
def mountpoint(tmp_path: Path, http_origin: ObjectHTTPServer) -> Iterator[Path]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with tessera_mount(http_origin.url, mountpoint, tmp_path / "cache", tmp_path / "mount.log", QUICK):
        yield mountpoint


def test_nested_paths_of_an_unlistable_origin_are_read(
    http_origin: ObjectHTTPServer, mountpoint: Path
) -> None:
    deep = os.urandom(300 * 1024)
    http_origin.put("maps/europe/1900/chart.bin", deep)
    http_origin.put("top.txt", b"top\n")
    chart = mountpoint / "maps" / "europe" / "1900" / "chart.bin"
    assert chart.stat().st_size == len(deep)
    assert chart.read_bytes() == deep
    assert (mountpoint / "top.txt").read_bytes() == b"top\n"
    # A name that is no object is a directory (an HTTP origin cannot say which prefixes exist) ...
    assert (mountpoint / "maps" / "europe").is_dir()
    # ... whose listing holds the names looked up in it so far.
    assert os.listdir(mountpoint / "maps" / "europe") == ["1900"]
    assert os.listdir(mountpoint / "maps" / "europe" / "1900") == ["chart.bin"]
    with pytest.raises(IsADirectoryError):
        (mountpoint / "maps" / "europe" / "missing.bin").read_bytes()
    assert os.listdir(mountpoint / "maps" / "europe" / "missing.bin") == []
    with pytest.raises(FileNotFoundError):  # not UTF-8: no key has this name (it was EIO)
        os.stat(os.fsencode(mountpoint) + b"/\xff\xfe")


def test_origin_failure_during_a_lookup_is_eio_not_a_directory(
    http_origin: ObjectHTTPServer, mountpoint: Path
) -> None:
    http_origin.put("a/b.bin", b"b")
    http_origin.fail_next(100, status=503)
    with pytest.raises(OSError) as caught:
        (mountpoint / "a" / "b.bin").stat()
    assert caught.value.errno == errno.EIO
    http_origin.clear_faults()
    assert (mountpoint / "a" / "b.bin").read_bytes() == b"b"
