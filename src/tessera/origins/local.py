"""A local (or NFS) folder as an origin, confined to the folder's real path.

Confinement: a key is resolved (every symlink followed) and must land inside the root's real path;
the resolved path is then opened without following a final link, and what was actually opened is
checked again (the descriptor's real path under ``/proc/self/fd``, and ``fstat`` saying it is a
regular file), so swapping a file or a directory for a link between the check and the open cannot
escape. Links that stay inside the root work; links that leave it or loop read as missing objects
and are left out of listings, as are FIFOs, sockets and devices, and the hidden temporary files of
uploads in progress (``put``; those a crash left behind are removed by the listing of their folder
an hour later).

Versions: the ETag is the file's identity (size, mtime, ctime, inode, device). ``read_range`` checks
it against ``if_match`` on open, waits until the file has been unchanged for ``SETTLE_SECONDS`` (a
write in progress is not read), and re-checks it with ``fstat`` after every chunk it reads, so no
chunk read while the file changed is ever handed on.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import io
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator

from tessera.errors import InvalidPath, ObjectExists, ObjectNotFound, OriginUnavailable, VersionChanged
from tessera.origins.base import ObjectInfo, RangeBody

#: Default chunk size of a read; the engine asks for whole blocks.
STREAM_CHUNK = 64 * 1024
#: A file changed less than this long ago may be in the middle of a write: reads wait until it is not.
SETTLE_SECONDS = 0.1

#: Bytes of a file's name kept in the name of its temporary file.
TEMPORARY_STEM = 200
#: Errors of a write that say the key names something the folder cannot hold (a 400, not an outage).
_BAD_NAME = frozenset(
    {errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP, errno.EEXIST, errno.EILSEQ}
)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def file_etag(st: os.stat_result) -> str:
    """The version of a file as a strong ETag: any write, truncation or replacement changes it."""
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}-{st.st_ino:x}-{st.st_dev:x}"'


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, etag=file_etag(st), mtime=st.st_mtime)


#: The hidden file an upload in progress is written to (``.NAME.<32 hex digits>.tmp``): never an
#: object, so a half-written upload cannot be listed or read, and no key may take that form.
_IN_PROGRESS = re.compile(r"\..*\.[0-9a-f]{32}\.tmp", re.DOTALL)
#: An upload's temporary file untouched this long was left by a crash: a listing of its folder removes
#: it (an upload in progress writes at least every few seconds, or its connection is closed).
STALE_UPLOAD_SECONDS = 3600.0


def _valid_key(key: str) -> bool:
    parts = key.split("/")
    return (
        bool(key)
        and "\0" not in key
        and all(part not in ("", ".", "..") for part in parts)
        and not _IN_PROGRESS.fullmatch(parts[-1])
    )


class LocalOrigin:
    """The files under one folder; keys are paths relative to it with ``/`` separators."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = os.path.realpath(root)
        self.identity = f"file://{self.root}"

    # ------------------------------------------------------------------ confinement

    def _inside(self, real: str) -> bool:
        return _contains(self.root, real)

    def _missing(self, key: str) -> ObjectNotFound:
        # The same answer for a missing file and a link out of the root: the target is never revealed.
        return ObjectNotFound(f"no object {key!r} in origin {self.name}")

    def _real(self, key: str) -> str | None:
        """The real path ``key`` names, or None if it does not exist, loops or leaves the root."""
        if not _valid_key(key):
            return None
        try:
            real = os.path.realpath(os.path.join(self.root, key), strict=True)
        except (OSError, ValueError):
            return None
        return real if self._inside(real) else None

    def _open(self, key: str) -> tuple[io.FileIO, os.stat_result]:
        """Open the regular file ``key`` names, confined to the root (see the module docstring)."""
        real = self._real(key)
        if real is None:
            raise self._missing(key)
        try:
            # Checked before opening so a device or FIFO is never opened at all; fstat below decides.
            if not stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode):
                raise ObjectNotFound(f"{key!r} in origin {self.name} is not a regular file")
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:
            raise self._missing(key) from None
        file = io.FileIO(fd, "rb", closefd=True)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(f"{key!r} in origin {self.name} is not a regular file")
            if not self._inside(os.readlink(f"/proc/self/fd/{fd}")):
                raise self._missing(key)
        except BaseException:
            file.close()
            raise
        return file, st

    def _real_dir(self, prefix: str) -> str | None:
        """The real path of the directory ``prefix`` (``""`` or ending in ``/``) names, if confined."""
        relative = prefix.rstrip("/")
        real = self.root if not relative else self._real(relative)
        return real if real is not None and os.path.isdir(real) else None

    # ------------------------------------------------------------------ reads

    async def stat(self, key: str) -> ObjectInfo:
        def stat_file() -> os.stat_result:
            file, st = self._open(key)
            file.close()
            return st

        return _info(key, await asyncio.to_thread(stat_file))

    async def read_range(
        self, key: str, start: int, end: int, if_match: str | None, chunk_size: int = STREAM_CHUNK
    ) -> RangeBody:
        file, st = await asyncio.to_thread(self._open, key)
        try:
            etag = if_match or file_etag(st)
            self._check(key, st, etag)
            unsettled = SETTLE_SECONDS - (time.time_ns() - st.st_ctime_ns) / 1e9
            if unsettled > 0:
                await asyncio.sleep(min(unsettled, SETTLE_SECONDS))
                st = await asyncio.to_thread(os.fstat, file.fileno())
                self._check(key, st, etag)
        except BaseException:
            file.close()
            raise
        end = min(end, st.st_size)
        chunks = self._chunks(file, key, etag, start, end, chunk_size)
        return RangeBody(info=_info(key, st), start=start, end=end, chunks=chunks)

    def _check(self, key: str, st: os.stat_result, etag: str) -> None:
        if file_etag(st) != etag:
            raise VersionChanged(f"{key!r} changed at origin {self.name} while being read")

    async def _chunks(
        self, file: io.FileIO, key: str, etag: str, start: int, end: int, chunk_size: int
    ) -> AsyncIterator[bytes]:
        def read(position: int, length: int) -> tuple[bytes, os.stat_result]:
            data = os.pread(file.fileno(), length, position)
            return data, os.fstat(file.fileno())

        with file:
            position = start
            while position < end:
                data, st = await asyncio.to_thread(read, position, min(chunk_size, end - position))
                # After the read: a chunk read while the file changed never leaves this loop.
                self._check(key, st, etag)
                if not data:
                    return
                position += len(data)
                yield data

    # ------------------------------------------------------------------ listings

    def _scan(self, real_dir: str, prefix: str) -> tuple[list[tuple[str, str]], list[ObjectInfo]]:
        """One directory: its confined subdirectories as (name, real path), and its regular files.

        Links to a directory that contains this one are left out, so a walk never loops.
        """
        dirs: list[tuple[str, str]] = []
        files: list[ObjectInfo] = []
        try:
            with os.scandir(real_dir) as entries:
                ordered = sorted(entries, key=lambda entry: entry.name)
        except OSError:
            return dirs, files
        for entry in ordered:
            try:
                if entry.is_symlink():
                    real = os.path.realpath(entry.path, strict=True)
                    if not self._inside(real):
                        continue
                    st = os.stat(real, follow_symlinks=False)
                else:
                    real, st = entry.path, entry.stat(follow_symlinks=False)
            except (OSError, ValueError):
                continue
            if _IN_PROGRESS.fullmatch(entry.name):
                if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > STALE_UPLOAD_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if stat.S_ISREG(st.st_mode):
                files.append(_info(prefix + entry.name, st))
            elif stat.S_ISDIR(st.st_mode) and not _contains(real, real_dir):
                dirs.append((entry.name, real))
        return dirs, files

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """A walk in key order: each folder's entries sorted as their keys sort (a folder ``d`` as
        ``d/``), so ``start_after`` skips whole folders that lie before it without entering them."""
        base = prefix[: prefix.rfind("/") + 1]
        start = await asyncio.to_thread(self._real_dir, base)
        if start is not None:
            async for info in self._walk(start, base, frozenset((start,)), prefix, start_after or ""):
                yield info

    async def _walk(
        self, real_dir: str, directory: str, walked: frozenset[str], prefix: str, after: str
    ) -> AsyncIterator[ObjectInfo]:
        dirs, files = await asyncio.to_thread(self._scan, real_dir, directory)
        entries: list[tuple[str, ObjectInfo | str]] = [(info.key, info) for info in files]
        entries += [(f"{directory}{name}/", real) for name, real in dirs]
        entries.sort(key=lambda entry: entry[0])
        for key, entry in entries:
            if isinstance(entry, ObjectInfo):
                if key > after and key.startswith(prefix):
                    yield entry
            elif (
                entry not in walked
                and (key.startswith(prefix) or prefix.startswith(key))
                and (key > after or after.startswith(key))  # else every key inside is <= after
            ):
                async for info in self._walk(entry, key, walked | {entry}, prefix, after):
                    yield info

    async def list_dir(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        real_dir = await asyncio.to_thread(self._real_dir, prefix)
        if real_dir is None:
            return [], []
        dirs, files = await asyncio.to_thread(self._scan, real_dir, prefix)
        return [name for name, _ in dirs], files

    # ------------------------------------------------------------------ writes

    def _parent(self, key: str, create: bool) -> tuple[int, str]:
        """A descriptor of ``key``'s directory, reached without following any link, and the file name."""
        if not _valid_key(key):
            raise InvalidPath(f"{key!r} is not a valid key")
        *parents, name = key.split("/")
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parents:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, create_only: bool = False) -> ObjectInfo:
        """Write ``key`` through a hidden temporary file in its folder, made visible when complete:
        renamed over the old file, or (``create_only``) hard-linked so an existing file is never
        replaced. The data is flushed to disk before it becomes visible. A name the folder cannot
        hold (a file where a folder is needed, a link on the way, too long) is ``InvalidPath``;
        any other failure of the filesystem is ``OriginUnavailable``."""
        try:
            return await self._put(key, chunks, create_only)
        except OSError as exc:
            if exc.errno in _BAD_NAME:
                raise InvalidPath(f"{key!r} cannot be stored in origin {self.name}: {exc.strerror}") from None
            raise OriginUnavailable(f"origin {self.name} failed storing {key!r}: {exc}") from exc

    async def _put(self, key: str, chunks: AsyncIterator[bytes], create_only: bool) -> ObjectInfo:
        fd, name = await asyncio.to_thread(self._parent, key, True)
        short = name.encode()[:TEMPORARY_STEM].decode(errors="ignore")  # a 255-byte name still fits
        temporary = f".{short}.{uuid.uuid4().hex}.tmp"
        try:
            out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=fd)
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(_write_all, out, chunk)
                await asyncio.to_thread(os.fsync, out)
                await asyncio.to_thread(self._publish, fd, temporary, name, create_only)
                st = os.fstat(out)  # after the rename or link, which change the ctime (the ETag)
            finally:
                os.close(out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=fd)
            raise
        finally:
            os.close(fd)
        return _info(key, st)

    def _publish(self, fd: int, temporary: str, name: str, create_only: bool) -> None:
        if create_only:
            try:
                os.link(temporary, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                raise ObjectExists(f"{name!r} already exists") from None
            os.unlink(temporary, dir_fd=fd)
        else:
            os.replace(temporary, name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)

    async def delete(self, key: str) -> None:
        def unlink() -> None:
            try:
                fd, name = self._parent(key, create=False)
            except FileNotFoundError:
                return
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(unlink)

    async def close(self) -> None:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _contains(outer: str, inner: str) -> bool:
    """Whether the real path ``inner`` is ``outer`` or lies under it."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")
