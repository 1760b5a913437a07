"""Readdir and the compact inode table: a real ``tessera mount`` of a local folder, and the table itself."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest

from tessera.fs.inodes import ROOT_INODE, InodeTable
from tests.support.fuse_mount import QUICK, tessera_mount

BIG = 20_000  # names in one directory: several 1 MiB readdir pages
DEEP = ("a", "b", "c", "d", "e", "f")


@dataclass
class LocalMount:
    folder: Path
    mountpoint: Path


def size_of(n: int) -> int:
    return (n * 7919) % 5000


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[LocalMount]:
    folder = tmp_path / "origin"
    big = folder / "big"
    big.mkdir(parents=True)
    for n in range(BIG):
        (big / f"IMG_{n:06d}.tif").write_bytes(b"x" * size_of(n))
    for n in range(3):
        (big / f"sub-{n}").mkdir()
    deep = folder.joinpath(*DEEP)
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_bytes(b"deep leaf\n")
    (folder / "a" / "top.txt").write_bytes(b"top\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**QUICK, "TESSERA_FS__LISTING_TTL": "5m", "TESSERA_CACHE__METADATA_TTL": "5m"}
    with tessera_mount(str(folder), mountpoint, tmp_path / "cache", tmp_path / "mount.log", env):
        yield LocalMount(folder, mountpoint)


def test_readdir_of_a_large_directory_gives_every_name_once_with_its_size(mounted: LocalMount) -> None:
    big = mounted.mountpoint / "big"
    assert os.stat(big).st_blksize == 1 << 20  # glibc's getdents buffer, and so the kernel's pages
    for _ in range(2):  # the first listing, then the same listing from the cache
        seen: dict[str, tuple[int, bool, int]] = {}
        with os.scandir(big) as entries:
            for entry in entries:
                assert entry.name not in seen
                info = entry.stat(follow_symlinks=False)
                seen[entry.name] = (info.st_size, entry.is_dir(follow_symlinks=False), info.st_ino)
        expected = {f"IMG_{n:06d}.tif": (size_of(n), False) for n in range(BIG)}
        expected.update({f"sub-{n}": (0, True) for n in range(3)})
        assert {name: (size, is_dir) for name, (size, is_dir, _ino) in seen.items() if not is_dir} == {
            name: value for name, value in expected.items() if not value[1]
        }
        assert {name for name, (_s, is_dir, _i) in seen.items() if is_dir} == {"sub-0", "sub-1", "sub-2"}
        inodes = [ino for _s, _d, ino in seen.values()]
        assert len(set(inodes)) == len(inodes)  # one number per name
    assert os.statvfs(mounted.mountpoint).f_files >= BIG  # the kernel holds every entry it was given


def test_deep_paths_are_looked_up_stat_and_read(mounted: LocalMount) -> None:
    leaf = mounted.mountpoint.joinpath(*DEEP, "leaf.txt")
    assert leaf.stat().st_size == len(b"deep leaf\n")
    assert leaf.read_bytes() == b"deep leaf\n"
    assert (mounted.mountpoint / "a" / "top.txt").read_bytes() == b"top\n"
    assert sorted(os.listdir(mounted.mountpoint.joinpath(*DEEP[:3]))) == ["d"]
    with pytest.raises(FileNotFoundError):
        mounted.mountpoint.joinpath(*DEEP, "missing.txt").stat()
    with pytest.raises(NotADirectoryError):
        os.listdir(leaf)


def test_after_the_kernel_forgets_names_are_looked_up_again(mounted: LocalMount) -> None:
    leaf = mounted.mountpoint.joinpath(*DEEP, "leaf.txt")
    first_leaf = leaf.stat().st_ino
    assert len(os.listdir(mounted.mountpoint / "big")) == BIG + 3
    held = os.statvfs(mounted.mountpoint).f_files
    assert held >= BIG
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # the kernel drops unused dentries and inodes
    deadline = time.monotonic() + 10
    while (after := os.statvfs(mounted.mountpoint).f_files) > held / 10:  # its forgets empty the table
        assert time.monotonic() < deadline, (held, after)
        time.sleep(0.1)
    again = leaf.stat()
    assert again.st_ino != first_leaf  # a forgotten number is not given again
    assert again.st_size == len(b"deep leaf\n")
    assert leaf.read_bytes() == b"deep leaf\n"
    assert (mounted.mountpoint / "big" / "IMG_000007.tif").stat().st_size == size_of(7)
    assert len(os.listdir(mounted.mountpoint / "big")) == BIG + 3


def test_the_table_counts_what_the_kernel_holds() -> None:
    table = InodeTable()
    a = table.give(ROOT_INODE, "a", is_dir=True)
    b = table.give(a, "b", is_dir=True)
    leaf = table.give(b, "leaf.txt", is_dir=False)
    assert table.give(b, "leaf.txt", is_dir=False) == leaf  # counted twice, same number
    assert table.key(leaf) == "a/b/leaf.txt" and table.key(ROOT_INODE) == ""
    assert table.is_dir(b) and not table.is_dir(leaf)
    assert len(table) == 4
    # The parent is forgotten before its child: it stays (the child's path goes through it), and a
    # lookup of it meanwhile gets the same number.
    assert table.forget(b, 1) is True
    assert table.key(leaf) == "a/b/leaf.txt"
    assert table.give(a, "b", is_dir=True) == b
    assert table.forget(b, 1) is True
    assert table.forget(leaf, 1) is False  # one of the two references left
    assert table.forget(leaf, 1) is True
    assert table.forget(a, 1) is True
    assert len(table) == 1  # every entry freed, b with its last child, a with b
    for gone in (a, b, leaf):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            table.key(gone)
        assert caught.value.errno == errno.ENOENT
        assert not table.is_dir(gone)
    again = table.give(ROOT_INODE, "a", is_dir=True)
    assert again not in (a, b, leaf)  # slots are reused, numbers are not
    assert table.key(again) == "a"
    assert table.forget(ROOT_INODE, 5) is False and table.key(ROOT_INODE) == ""
    with pytest.raises(pyfuse3.FUSEError):
        table.give(b, "x", is_dir=False)  # under a forgotten directory: ENOENT
