"""Readdir and the compact, bounded inode table: a real ``tessera mount`` of a local folder, and the table."""

from __future__ import annotations

import errno
import gc
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
import pyfuse3
import pytest

from tessera.config import parse_size
from tessera.fs.inodes import ENTRY_BYTES, INODE_SHARE, ROOT_INODE, InodeTable
from tessera.fs.versions import STATE_BYTES, KernelVersions
from tessera.origins import ObjectInfo
from tests.support.fuse_mount import QUICK, tessera_mount
from tests.support.moto_server import free_port

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


# ---------------------------------------------------------------------------- the budget

SHARDS, PER_SHARD = 40, 500  # 20k files, far more inodes than the budget below holds
BUDGET = "2MB"  # fs.listing_cache_size: the inode table may take half of it


def shard_file(shard: int, n: int) -> str:
    return f"shard-{shard:02d}/f-{n:05d}.bin"


def body_of(shard: int, n: int) -> bytes:
    return f"{shard}/{n}\n".encode() * (n % 5)


@dataclass
class BoundedMount:
    folder: Path
    mountpoint: Path
    metrics_url: str

    def figures(self) -> dict[str, float]:
        text = httpx.get(self.metrics_url, timeout=5).text
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("tessera_fs_", "tessera_listing_cache_bytes"))
        }


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[BoundedMount]:
    folder = tmp_path / "origin"
    for shard in range(SHARDS):
        (folder / f"shard-{shard:02d}").mkdir(parents=True)
        for n in range(PER_SHARD):
            (folder / shard_file(shard, n)).write_bytes(body_of(shard, n))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    port = free_port()
    env = {
        **QUICK,
        "TESSERA_FS__LISTING_TTL": "5m",
        "TESSERA_CACHE__METADATA_TTL": "5m",
        "TESSERA_FS__LISTING_CACHE_SIZE": BUDGET,
        "TESSERA_FS__METRICS_PORT": str(port),
    }
    with tessera_mount(str(folder), mountpoint, tmp_path / "cache", tmp_path / "mount.log", env):
        yield BoundedMount(folder, mountpoint, f"http://127.0.0.1:{port}/metrics")


def held(mounted: BoundedMount) -> int:
    """Inodes the mount holds (its statfs reports them as ``f_files``)."""
    return os.statvfs(mounted.mountpoint).f_files


def test_stat_of_more_files_than_the_budget_holds_keeps_the_table_bounded(bounded: BoundedMount) -> None:
    budget = parse_size(BUDGET) * INODE_SHARE
    fits = int(budget // (ENTRY_BYTES + sys.getsizeof("f-00000.bin")))  # about 6k of the 20k files
    assert fits < SHARDS * PER_SHARD / 3
    with (bounded.mountpoint / shard_file(0, 7)).open("rb") as kept_open:  # its entry goes, not its inode
        walk_past_the_budget(bounded, budget, fits, kept_open)
    # Every name is looked up again as needed: each file stats and reads as before, in another order.
    for shard in reversed(range(SHARDS)):
        for n in range(0, PER_SHARD, 1 if shard % 8 == 0 else 37):
            path = bounded.mountpoint / shard_file(shard, n)
            assert path.stat().st_size == len(body_of(shard, n))
            assert path.read_bytes() == body_of(shard, n)
    assert held(bounded) <= fits + 2 * PER_SHARD
    assert sorted(os.listdir(bounded.mountpoint / "shard-39")) == [f"f-{n:05d}.bin" for n in range(PER_SHARD)]


def walk_past_the_budget(bounded: BoundedMount, budget: float, fits: int, kept_open: BinaryIO) -> None:
    most = 0
    for shard in range(SHARDS):
        with os.scandir(bounded.mountpoint / f"shard-{shard:02d}") as entries:
            for entry in entries:
                assert entry.stat().st_size == len(body_of(shard, int(entry.name[2:7])))
        most = max(most, held(bounded))
        # What the kernel was asked to drop comes back as forgets: the table stays near its budget
        # (plus one directory's names given at once and those whose forget is on its way).
        assert most <= fits + 2 * PER_SHARD, (shard, most, fits)
    figures = bounded.figures()
    assert figures["tessera_fs_inode_invalidations_total"] >= SHARDS * PER_SHARD - fits - PER_SHARD
    # Once the forgets asked for have come back (the kernel sends them when it gets to it), the table
    # is within its budget.
    deadline = time.monotonic() + 10
    while held(bounded) > fits * 1.05 or bounded.figures()["tessera_fs_inode_bytes"] > budget * 1.1:
        assert time.monotonic() < deadline, (held(bounded), fits, bounded.figures())
        time.sleep(0.1)
    figures = bounded.figures()
    # The listings kept and the inode table share fs.listing_cache_size.
    assert figures["tessera_listing_cache_bytes"] + figures["tessera_fs_inode_bytes"] <= parse_size(BUDGET)
    assert figures["tessera_fs_inodes"] == held(bounded)
    # The open file's inode was kept for it: it reads on.
    assert kept_open.read() == body_of(0, 7)


def test_past_its_budget_the_table_asks_to_drop_the_leaves_used_longest_ago() -> None:
    asked: list[tuple[int, str]] = []
    one = ENTRY_BYTES + sys.getsizeof("f-0.bin")
    table = InodeTable(max_bytes=4 * one, invalidate=lambda parent, name: asked.append((parent, name)))
    a = table.give(ROOT_INODE, "a", is_dir=True)  # a directory with children: never asked for
    files = [table.give(a, f"f-{n}.bin", is_dir=False) for n in range(3)]
    assert asked == []
    more = table.give(a, "f-3.bin", is_dir=False)  # over the budget: the clock passes every entry
    # once (clearing its mark), then asks for the first leaf it meets unmarked, passing a over.
    assert asked == [(a, "f-0.bin")]
    assert table.key(files[0]) == "a/f-0.bin"  # asked, not freed: only a forget frees
    table.give(a, "f-4.bin", is_dir=False)
    assert asked == [(a, "f-0.bin"), (a, "f-1.bin")]
    assert table.forget(files[0], 1) and table.forget(files[1], 1)
    with pytest.raises(pyfuse3.FUSEError):
        table.key(files[0])
    table.give(a, "f-5.bin", is_dir=False)
    table.give(a, "f-6.bin", is_dir=False)
    assert asked[2:] == [(a, "f-2.bin"), (a, "f-3.bin")]
    # An entry asked for but given again before its forget is held once more, and counted: another goes.
    assert table.give(a, "f-2.bin", is_dir=False) == files[2]
    assert asked[4:] == [(a, "f-4.bin")]
    assert table.forget(more, 1) and len(table) == 6  # root, a, f-2, f-4 (asked), f-5, f-6


def test_a_directory_whose_last_child_went_may_be_asked_for_the_root_never() -> None:
    asked: list[tuple[int, str]] = []
    table = InodeTable(invalidate=lambda parent, name: asked.append((parent, name)))
    a = table.give(ROOT_INODE, "a", is_dir=True)
    f = table.give(a, "f.bin", is_dir=False)
    table.give(ROOT_INODE, "g.bin", is_dir=False)
    table.max_bytes = table.bytes - 1
    h = table.give(ROOT_INODE, "h.bin", is_dir=False)
    assert asked == [(a, "f.bin"), (ROOT_INODE, "g.bin")]
    assert table.forget(f, 1)  # a has no child left, and the kernel still holds it: a leaf
    table.touch(h)  # used again: spared by the hand once more
    table.give(ROOT_INODE, "i.bin", is_dir=False)
    assert asked[2:] == [(ROOT_INODE, "a")]
    assert table.key(a) == "a" and table.is_dir(a)


def test_a_table_that_only_holds_directories_with_children_stops_looking() -> None:
    asked: list[tuple[int, str]] = []
    table = InodeTable(invalidate=lambda parent, name: asked.append((parent, name)))
    chain = [ROOT_INODE]
    for depth in range(50):
        chain.append(table.give(chain[-1], f"d{depth}", is_dir=True))
    table.max_bytes = ENTRY_BYTES
    assert table.give(chain[-2], "d49", is_dir=True) == chain[-1]  # over budget: two turns of the clock
    assert asked == [(chain[-2], "d49")]  # the one leaf; the others have children
    assert len(table) == 51


@pytest.mark.parametrize(("shards", "per_shard"), [(1, 5462), (100, 1000), (1, 174763)])
def test_the_estimate_is_what_tracemalloc_measures(shards: int, per_shard: int) -> None:
    """``ENTRY_BYTES`` was measured this way; the estimate stays an upper bound within 12 % (5462 and
    174763 entries are just past doublings of a directory's dict, its most costly sizes)."""
    names = [[f"object-{s * per_shard + n:09d}.jp2" for n in range(per_shard)] for s in range(shards)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = InodeTable()
        for shard in range(shards):
            directory = table.give(ROOT_INODE, f"shard-{shard:06d}", is_dir=True)
            for name in names[shard]:
                table.give(directory, name, is_dir=False)
        gc.collect()
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The names are the listing's own strings in a readdir; here they are held by the test too.
    measured += sum(sys.getsizeof(name) for shard in names for name in shard)
    assert measured <= table.bytes <= 1.12 * measured, (measured, table.bytes)


def test_the_version_state_of_a_file_counts_in_the_budget_while_its_inode_lives() -> None:
    table = InodeTable()
    versions = KernelVersions(lambda inode: None, ttl=60.0, charge=table.charge)
    inode = table.give(ROOT_INODE, "f.bin", is_dir=False)
    alone = table.bytes
    info = ObjectInfo(key="f.bin", size=1, etag='"a"', mtime=0.0)
    versions.attributes(inode, info, 0.0)  # a getattr: the state of what the kernel was told is kept
    versions.attributes(inode, info, 1.0)
    assert table.bytes == alone + STATE_BYTES
    assert table.forget(inode, 1)
    versions.forget(inode)
    versions.forget(inode)
    assert table.bytes == 0


def test_a_charge_past_the_budget_asks_for_drops_at_once() -> None:
    """The state a walk's last ``stat`` calls keep is charged after the last ``give``: it trims too."""
    asked: list[tuple[int, str]] = []
    table = InodeTable(max_bytes=math.inf, invalidate=lambda parent, name: asked.append((parent, name)))
    inodes = [table.give(ROOT_INODE, f"f-{n}.bin", is_dir=False) for n in range(4)]
    table.max_bytes = table.bytes  # exactly full
    versions = KernelVersions(lambda inode: None, ttl=60.0, charge=table.charge)
    info = ObjectInfo(key="f-3.bin", size=1, etag='"a"', mtime=0.0)
    table.touch(inodes[3])
    versions.attributes(inodes[3], info, 0.0)
    assert asked and all(name != "f-3.bin" for _parent, name in asked)
    assert table.bytes - sum(ENTRY_BYTES + sys.getsizeof(name) for _p, name in asked) <= table.max_bytes
