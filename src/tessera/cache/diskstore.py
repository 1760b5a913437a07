"""The disk tier's files: one sparse file per object version under ``<cache dir>/data``.

A fully cached version is an ordinary file with the object's bytes, so its path can be handed to
libvips or any other program. Blocks are written with ``pwrite`` at their offset; holes stand for
blocks not fetched yet. A file is created by its first block (a HEAD or a stat creates nothing), and
a directory is removed when its last file goes, so what ``du`` sees is what the tier accounts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class DiskStore:
    def __init__(self, root: Path, fsync: bool = False) -> None:
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        #: The local file of every empty object (which has no block, so no file of its own).
        self.empty = root / "empty"
        self.empty.touch()

    def path(self, file: str) -> Path:
        return self.data / file

    def create(self, file: str, size: int) -> None:
        """Start a version's file empty, ``size`` bytes long (all holes)."""
        fd = self._open_for_write(file, os.O_TRUNC)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _open_for_write(self, file: str, flags: int = 0) -> int:
        """Open (creating it, and its directory, if need be) a version's file for writing."""
        path = self.path(file)
        for _ in range(8):  # a concurrent remove may take the directory away between mkdir and open
            try:
                return os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)

    def write(self, file: str, offset: int, data: bytes) -> None:
        fd = self._open_for_write(file)
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def read(self, file: str, offset: int, length: int) -> bytes:
        fd = os.open(self.path(file), os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read of cached file {file}")
        return data

    def remove(self, file: str) -> None:
        """Delete a version's file, and its directory once that is empty."""
        path = self.path(file)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):  # not empty (the usual case), or already gone
            path.parent.rmdir()

    def clear(self) -> None:
        """Remove every file (the index that described them is gone)."""
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True, exist_ok=True)

    def overhead(self) -> int:
        """Bytes the filesystem holds for the directories (what ``du`` adds to the files' blocks)."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            total += self.data.stat().st_blocks * 512
            with os.scandir(self.data) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        if entry.is_dir(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
        return total

    def allocated(self, file: str) -> int:
        """Bytes the filesystem really holds for the file (holes excluded); -1 when it is missing."""
        try:
            return self.path(file).stat().st_blocks * 512
        except FileNotFoundError:
            return -1

    def punch(self, file: str, ranges: list[tuple[int, int]]) -> None:
        """Free the disk space of byte ranges, leaving holes (used for blocks the index does not know)."""
        fd = os.open(self.path(file), os.O_WRONLY)
        try:
            for start, end in ranges:
                if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, end - start) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def walk(self) -> Iterator[str]:
        """Every file under the data directory, as the relative name ``create`` takes."""
        for dirpath, _dirs, files in os.walk(self.data):
            for name in files:
                yield os.path.relpath(os.path.join(dirpath, name), self.data)


def read_block(store: DiskStore, file: str, offset: int, length: int, with_crc: bool) -> tuple[bytes, int]:
    """A block from a version's file, with its CRC-32 when asked (0 otherwise): one call for a thread."""
    data = store.read(file, offset, length)
    return data, zlib.crc32(data) if with_crc else 0


def write_block(store: DiskStore, file: str, offset: int, data: bytes) -> int:
    """Write a block to a version's file; returns its CRC-32, kept to check the block after a restart."""
    store.write(file, offset, data)
    return zlib.crc32(data)


def copy_blocks(
    source: DiskStore, target: DiskStore, file: str, size: int, ranges: list[tuple[int, int]]
) -> None:
    """Copy the byte ranges of a version's file to another tier, keeping holes as holes."""
    target.create(file, size)
    src = os.open(source.path(file), os.O_RDONLY)
    dst = os.open(target.path(file), os.O_WRONLY)
    try:
        for start, end in ranges:
            offset = start
            while offset < end:
                chunk = os.pread(src, min(4 << 20, end - offset), offset)
                if not chunk:
                    raise OSError(errno.EIO, f"short read copying {file}")
                os.pwrite(dst, chunk, offset)
                offset += len(chunk)
        if target.fsync:
            os.fdatasync(dst)
    finally:
        os.close(src)
        os.close(dst)
