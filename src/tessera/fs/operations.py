"""The read-only FUSE file system: one mount of the namespace, every read through the cache engine.

Runs on the engine's own asyncio loop (pyfuse3 in asyncio mode), so a kernel read of a block that is
already on disk is a ``pread`` on the cached file and a miss joins the engine's single-flight fills.
``keep_cache`` lets the kernel page cache serve hot files across opens for as long as the object's
ETag is unchanged; ``KernelVersions`` keeps the kernel's size and pages of a file to one version, so
every open file reads the version it opened, whole.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import pyfuse3

from tessera.cache import CacheEngine, Handle
from tessera.cache.local_read import LocalReader
from tessera.config import Settings
from tessera.errors import InvalidPath, ObjectNotFound, TesseraError
from tessera.fs.inodes import ROOT_INODE, InodeTable
from tessera.fs.listing import Listing, ListingCache
from tessera.fs.versions import KernelVersions, OpenMode
from tessera.origins import ObjectInfo

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def _eio_on_failure(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn a failure no handler expects into EIO for that one request.

    pyfuse3 never answers a request whose handler raised anything but ``FUSEError`` (the caller hangs)
    and ends the session task that ran it; one bug or disk error would stall the whole mount.
    """

    @functools.wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("FUSE %s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return guarded


@dataclass(slots=True)
class _OpenFile:
    inode: int
    handle: Handle
    local: LocalReader
    mode: OpenMode


class TesseraFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        engine: CacheEngine,
        mount: str,
        settings: Settings,
        on_init: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        #: Called on the loop right after the kernel's FUSE_INIT has been answered.
        self._on_init = on_init
        #: Read requests served, and the largest one (logged at unmount: how the kernel reads us).
        self.reads = 0
        self.largest_read = 0
        self.mount = mount
        self.origin = engine.namespace.origin(mount)
        self.attr_ttl = settings.cache.metadata_ttl
        self.dir_ttl = settings.fs.listing_ttl
        self.read_deadline = settings.fs.read_deadline
        self.inodes = InodeTable()
        self.listings = ListingCache(
            mount,
            self.origin,
            settings.fs.listing_ttl,
            settings.fs.max_listing,
            on_objects=lambda infos, at: engine.note_listing(self.origin, infos, at),
        )
        self.versions = KernelVersions(pyfuse3.invalidate_inode, self.attr_ttl)
        self._open: dict[int, _OpenFile] = {}
        self._next_fh = 1
        self._uid, self._gid = os.getuid(), os.getgid()

    def init(self) -> None:
        # pyfuse3 calls this inside its FUSE_INIT handler, before libfuse sends the reply; settings
        # the kernel takes from that reply (the readahead window) can only be changed after it.
        if self._on_init is not None:
            asyncio.get_running_loop().call_soon(self._on_init)

    # ------------------------------------------------------------------ names and attributes

    def _path(self, key: str) -> str:
        return f"/{self.mount}/{key}"

    def _dir_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_nlink = 2
        attr.st_uid, attr.st_gid = self._uid, self._gid
        attr.st_blksize = 4096
        attr.entry_timeout = attr.attr_timeout = self.dir_ttl
        return attr

    def _file_attr(self, inode: int, info: ObjectInfo, seen_at: float) -> pyfuse3.EntryAttributes:
        """Attributes of a file known as ``info`` at ``seen_at``, as far as the kernel may see them."""
        info, timeout = self.versions.attributes(inode, info, seen_at)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = stat.S_IFREG | 0o444
        attr.st_nlink = 1
        attr.st_uid, attr.st_gid = self._uid, self._gid
        attr.st_size = info.size
        attr.st_blocks = (info.size + 511) // 512
        attr.st_blksize = self.engine.block_size
        mtime_ns = int(info.mtime * 1e9)
        attr.st_mtime_ns = attr.st_ctime_ns = attr.st_atime_ns = mtime_ns
        attr.entry_timeout = self.attr_ttl
        attr.attr_timeout = timeout
        return attr

    @staticmethod
    def _join(directory: str, name: str) -> str:
        return f"{directory}/{name}" if directory else name

    async def _stat(self, key: str) -> ObjectInfo:
        info = await self._stat_or_none(key)
        if info is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return info

    async def _stat_or_none(self, key: str) -> ObjectInfo | None:
        """The object at ``key``, or None if there is none."""
        try:
            return await self.engine.stat(self._path(key))
        except ObjectNotFound:
            return None
        except InvalidPath:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except TesseraError as exc:
            log.warning("stat of %s failed: %s", key, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def _listing(self, directory: str) -> Listing:
        return await self.listings.get(directory)

    @_eio_on_failure
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        directory = self.inodes.key(parent_inode)
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None  # keys are UTF-8: no object has this name
        listing = await self._listing(directory)
        key = self._join(directory, text)
        if text in listing.dirs:
            return self._dir_attr(self._looked_up(key, is_dir=True))
        info, seen_at = listing.files.get(text), listing.fetched
        if info is None:
            if listing.complete:
                raise pyfuse3.FUSEError(errno.ENOENT)
            # An origin that cannot list cannot say which prefixes exist either: a name that is not
            # an object there is taken for a directory, so paths at any depth can be looked up.
            info, seen_at = await self._stat_or_none(key), time.monotonic()
            listing.remember(text, info, self.listings.max_names)
            if info is None:
                return self._dir_attr(self._looked_up(key, is_dir=True))
        return self._file_attr(self._looked_up(key, is_dir=False), info, seen_at)

    def _looked_up(self, key: str, is_dir: bool) -> int:
        """The inode a lookup reply gives the kernel (counted until the kernel forgets it)."""
        return self.inodes.looked_up(self.inodes.inode(key, is_dir))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self._forget(inode, count)

    def _forget(self, inode: int, count: int) -> None:
        if self.inodes.forget(inode, count):
            self.versions.forget(inode)

    @_eio_on_failure
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.inodes.is_dir(inode):
            return self._dir_attr(inode)
        info = await self._stat(self.inodes.key(inode))
        return self._file_attr(inode, info, time.monotonic())

    @_eio_on_failure
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.inodes.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_eio_on_failure
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self.inodes.key(fh)
        listing = await self._listing(directory)
        entries = listing.names()
        for index in range(start_id, len(entries)):
            name, info = entries[index]
            key = self._join(directory, name)
            inode = self.inodes.inode(key, is_dir=info is None)
            attr = self._dir_attr(inode) if info is None else self._file_attr(inode, info, listing.fetched)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, index + 1):
                self._forget(inode, 0)  # not sent: an inode the kernel does not hold goes again
                break
            self.inodes.looked_up(inode)

    @_eio_on_failure
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = self.engine.disk_limit // 4096
        data.f_bfree = data.f_bavail = max(0, self.engine.disk_limit - self.engine.disk_used) // 4096
        data.f_files = len(self.inodes)
        data.f_namemax = 255
        return data

    # ------------------------------------------------------------------ reading

    @_eio_on_failure
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise _erofs()
        if self.inodes.is_dir(inode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        key = self.inodes.key(inode)
        try:
            handle = await self.engine.open(self._path(key))
        except (ObjectNotFound, InvalidPath):
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except TesseraError as exc:
            log.warning("open of %s failed: %s", key, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        mode = await self.versions.open(inode, handle.info)
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = _OpenFile(inode, handle, LocalReader(self.engine), mode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=mode.keep_cache, direct_io=mode.direct_io)

    @_eio_on_failure
    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._open.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        self.reads += 1
        self.largest_read = max(self.largest_read, size)
        handle = opened.handle
        end = min(handle.size, off + size)
        if off >= end:
            return b""
        data = opened.local.read(handle, off, end)
        if data is not None:
            return data
        try:
            async with asyncio.timeout(self.read_deadline):
                return await handle.pread(off, end - off)
        except TimeoutError:
            log.warning("read of %s timed out after %ss", handle.resolved.path, self.read_deadline)
        except TesseraError as exc:
            log.warning("read of %s failed: %s", handle.resolved.path, exc)
        raise pyfuse3.FUSEError(errno.EIO)

    @_eio_on_failure
    async def release(self, fh: int) -> None:
        opened = self._open.pop(fh, None)
        if opened is not None:
            opened.local.close()
            self.versions.release(opened.inode, opened.mode)

    async def releasedir(self, fh: int) -> None:
        return None

    # ------------------------------------------------------------------ read-only

    async def setattr(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mknod(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mkdir(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def create(
        self, *args: object, **kwargs: object
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _erofs()

    async def unlink(self, *args: object, **kwargs: object) -> None:
        raise _erofs()

    async def rmdir(self, *args: object, **kwargs: object) -> None:
        raise _erofs()

    async def rename(self, *args: object, **kwargs: object) -> None:
        raise _erofs()

    async def symlink(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def link(self, *args: object, **kwargs: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def write(self, *args: object, **kwargs: object) -> int:
        raise _erofs()

    async def setxattr(self, *args: object, **kwargs: object) -> None:
        raise _erofs()

    async def removexattr(self, *args: object, **kwargs: object) -> None:
        raise _erofs()


__all__ = ["ROOT_INODE", "TesseraFS"]
