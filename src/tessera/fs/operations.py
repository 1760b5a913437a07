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
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from tessera.cache import CacheEngine, Handle
from tessera.config import Settings
from tessera.errors import InvalidPath, ObjectNotFound, TesseraError
from tessera.fs.inodes import INODE_SHARE, ROOT_INODE, InodeTable
from tessera.fs.listing import Listing, ListingCache
from tessera.fs.versions import KernelVersions, OpenMode
from tessera.origins import ObjectInfo

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def _eio_on_failure(handler: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
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
    mode: OpenMode


@dataclass(slots=True)
class _OpenDir:
    """An open directory: the listing its readdir started with, which later pages index into (kept
    alive here, so the listing cache evicting or refreshing it cannot shift the offsets)."""

    inode: int
    listing: Listing | None = None


#: ``st_blksize`` of directories: the largest getdents buffer glibc takes as a hint (see ``_dir_attr``).
DIR_BLOCK_SIZE = 1 << 20


def _set_version(attr: pyfuse3.EntryAttributes, info: ObjectInfo, timeout: float) -> None:
    """A file's size and times as ``info`` has them, kept by the kernel for ``timeout`` seconds."""
    attr.st_size = info.size
    attr.st_blocks = (info.size + 511) // 512
    mtime_ns = int(info.mtime * 1e9)
    attr.st_mtime_ns = attr.st_ctime_ns = attr.st_atime_ns = mtime_ns
    attr.attr_timeout = timeout


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
        # The listings kept and the inode table share ``fs.listing_cache_size``: the table takes up to
        # INODE_SHARE of it (past that the kernel is asked to drop entries), the listings what it leaves.
        budget = settings.fs.listing_cache_size
        self.inodes = InodeTable(budget * INODE_SHARE, self._drop_entry)
        self.listings = ListingCache(
            mount,
            self.origin,
            settings.fs.listing_ttl,
            settings.fs.max_listing,
            settings.fs.listing_cache_size,
            on_objects=lambda infos, at: engine.note_listing(self.origin, infos, at),
            metrics=engine.metrics,
            shared=lambda: self.inodes.bytes,
        )
        metrics = engine.metrics
        metrics.fs_inodes.set_function(lambda: len(self.inodes))
        metrics.fs_inode_bytes.set_function(lambda: self.inodes.bytes)
        self._invalidations = metrics.fs_inode_invalidations
        self.versions = KernelVersions(pyfuse3.invalidate_inode, self.attr_ttl, self.inodes.charge)
        self._open: dict[int, _OpenFile] = {}
        self._next_fh = 1
        self._dirs: dict[int, _OpenDir] = {}
        self._next_dh = 1
        self._uid, self._gid = os.getuid(), os.getgid()

    def init(self) -> None:
        # pyfuse3 calls this inside its FUSE_INIT handler, before libfuse sends the reply; settings
        # the kernel takes from that reply (the readahead window) can only be changed after it.
        if self._on_init is not None:
            asyncio.get_running_loop().call_soon(self._on_init)

    # ------------------------------------------------------------------ names and attributes

    def _drop_entry(self, parent: int, name: str) -> None:
        """Ask the kernel to drop a name (the inode table is over its budget); ``forget`` follows.

        Queued for pyfuse3's notify thread: the kernel takes the directory's lock for it, which a
        request handler waiting for it could hold (the readdir being answered).
        """
        pyfuse3.invalidate_entry_async(parent, name.encode("utf-8", "surrogateescape"), ignore_enoent=True)
        self._invalidations.inc()

    def _path(self, key: str) -> str:
        return f"/{self.mount}/{key}"

    def _dir_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_nlink = 2
        attr.st_uid, attr.st_gid = self._uid, self._gid
        # glibc sizes its getdents buffer by the directory's st_blksize (32 KiB up to 1 MiB), and the
        # kernel sizes the readdir request by that buffer: 32 times fewer round trips per ``ls``.
        attr.st_blksize = DIR_BLOCK_SIZE
        attr.entry_timeout = attr.attr_timeout = self.dir_ttl
        return attr

    def _file_attr(self, inode: int, info: ObjectInfo, seen_at: float) -> pyfuse3.EntryAttributes:
        """Attributes of a file known as ``info`` at ``seen_at``, as far as the kernel may see them."""
        info, timeout = self.versions.attributes(inode, info, seen_at)
        attr = self._new_file_attr()
        attr.st_ino = inode
        _set_version(attr, info, timeout)
        return attr

    def _new_file_attr(self) -> pyfuse3.EntryAttributes:
        """A file's attributes without its number and version (``_set_version``)."""
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = stat.S_IFREG | 0o444
        attr.st_nlink = 1
        attr.st_uid, attr.st_gid = self._uid, self._gid
        attr.st_blksize = self.engine.block_size
        attr.entry_timeout = self.attr_ttl
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
        attr = await self._lookup(parent_inode, directory, text, listing)
        self.listings.fit()  # the inode table grew
        return attr

    async def _lookup(
        self, parent_inode: int, directory: str, text: str, listing: Listing
    ) -> pyfuse3.EntryAttributes:
        if text in listing.dirs:
            return self._dir_attr(self.inodes.give(parent_inode, text, is_dir=True))
        info, seen_at = listing.files.get(text), listing.fetched
        if info is None:
            if listing.complete:
                raise pyfuse3.FUSEError(errno.ENOENT)
            # An origin that cannot list cannot say which prefixes exist either: a name that is not
            # an object there is taken for a directory, so paths at any depth can be looked up.
            info, seen_at = await self._stat_or_none(self._join(directory, text)), time.monotonic()
            self.listings.remember(directory, listing, text, info)
            if info is None:
                return self._dir_attr(self.inodes.give(parent_inode, text, is_dir=True))
        return self._file_attr(self.inodes.give(parent_inode, text, is_dir=False), info, seen_at)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self._forget(inode, count)

    def _forget(self, inode: int, count: int) -> None:
        if self.inodes.forget(inode, count):
            self.versions.forget(inode)

    @_eio_on_failure
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.inodes.touch(inode)
        if self.inodes.is_dir(inode):
            return self._dir_attr(inode)
        info = await self._stat(self.inodes.key(inode))
        return self._file_attr(inode, info, time.monotonic())

    @_eio_on_failure
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.inodes.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_dh
        self._next_dh += 1
        self._dirs[fh] = _OpenDir(inode)
        return fh

    @_eio_on_failure
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        opened = self._dirs.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if opened.listing is None or start_id == 0:  # the first page, or a rewinddir
            opened.listing = await self._listing(self.inodes.key(opened.inode))
        self._reply_entries(opened.inode, opened.listing, start_id, token)
        self.listings.fit()  # the inode table grew

    def _reply_entries(self, parent: int, listing: Listing, start: int, token: pyfuse3.ReaddirToken) -> None:
        """As many entries from ``start`` on as the kernel's buffer takes.

        The hot loop of ``ls``: one attributes object per kind is filled in place for every entry
        (``readdir_reply`` copies it), and an inode the versions table does not track gets the
        listing's version without a state kept for it.
        """
        entries = listing.names()
        give, listed, reply = self.inodes.give, self.versions.listed, pyfuse3.readdir_reply
        fetched = listing.fetched
        timeout = max(0.0, self.attr_ttl - (time.monotonic() - fetched))
        dir_attr, file_attr = self._dir_attr(0), self._new_file_attr()
        for index in range(start, len(entries)):
            name, info = entries[index]
            if info is None:
                attr = dir_attr
                inode = give(parent, name, True)
            else:
                attr = file_attr
                inode = give(parent, name, False)
                shown = listed(inode, info, fetched)
                if shown is None:
                    _set_version(attr, info, timeout)
                else:
                    _set_version(attr, *shown)
            attr.st_ino = inode
            if not reply(token, name.encode("utf-8", "surrogateescape"), attr, index + 1):
                self._forget(inode, 1)  # not sent: the kernel did not get this one
                break

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
        self.inodes.touch(inode)
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
        self._open[fh] = _OpenFile(inode, handle, mode)
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
        data = handle.read_cached(off, end)
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
            opened.handle.close()
            self.versions.release(opened.inode, opened.mode)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

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
