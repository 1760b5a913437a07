"""The IIIF image service: image headers, rendering with a bounded queue, and the derivative cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import pyvips

from tessera.cache import CacheEngine, Handle
from tessera.client import CachedFile
from tessera.config import ImagesSettings
from tessera.errors import TesseraError
from tessera.images.render import MEDIA_TYPES, render
from tessera.images.request import ImageRequest, canonical_path, parse_image_request, resolve
from tessera.images.source import ImageInfo, read_info


class UnreadableImage(TesseraError):
    """The object exists but is not an image this server can decode."""

    status = 415


class BadSize(TesseraError):
    status = 400


class Busy(TesseraError):
    """Too many renders queued or a render slot did not come in time."""

    status = 503


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str
    canonical: str
    etag: str
    mtime: float


class ImageService:
    def __init__(self, engine: CacheEngine, settings: ImagesSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.render_concurrency)
        self._waiting = 0
        #: Header facts of recently used sources, keyed by (path, ETag); also kept as derivatives.
        self._infos: OrderedDict[tuple[str, str], ImageInfo] = OrderedDict()

    def _file(self, handle: Handle) -> CachedFile:
        loop = asyncio.get_running_loop()
        file = CachedFile(
            self.engine, handle, lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result()
        )
        version = handle.version
        if version.alive and version.complete:  # wholly cached: libvips may open the plain file
            file.local_file = self.engine.file_path(version)
        return file

    async def source(self, identifier: str) -> tuple[Handle, ImageInfo]:
        """Open the source of ``identifier`` (a virtual path without a leading slash) and its header facts."""
        path = "/" + identifier
        handle = await self.engine.open(path)
        key = (path, handle.info.etag)
        info = self._infos.get(key)
        if info is None:
            stored = await self.engine.get_derivative(f"info:{path}", handle.info.etag)
            if stored is not None:
                info = ImageInfo.from_json(json.loads(stored))
            else:
                info = await self._run(read_info, self._file(handle))
                await self.engine.put_derivative(
                    f"info:{path}", handle.info.etag, json.dumps(info.to_json()).encode()
                )
            self._infos[key] = info
            if len(self._infos) > 10_000:
                self._infos.popitem(last=False)
        else:
            self._infos.move_to_end(key)
        return handle, info

    async def image(self, request: ImageRequest) -> Rendered:
        handle, info = await self.source(request.identifier)
        limits = self.settings
        plan = resolve(
            request,
            info.width,
            info.height,
            max_width=limits.max_width,
            max_height=limits.max_height,
            max_area=limits.max_area,
        )
        canonical = canonical_path(plan, request, info.width, info.height)
        key = f"iiif{request.version}:{request.identifier}/{canonical}"
        tag = handle.info.etag
        etag = '"' + hashlib.sha256(f"{key}\0{tag}".encode()).hexdigest()[:32] + '"'
        data = await self.engine.get_derivative(key, tag) if limits.derivative_cache else None
        if data is None:
            data = await self._run(render, self._file(handle), info, plan, limits.jpeg_quality)
            if limits.derivative_cache:
                await self.engine.put_derivative(key, tag, data)
        return Rendered(data, MEDIA_TYPES[plan.format], canonical, etag, handle.info.mtime)

    def thumbnail_sizes(self, info: ImageInfo) -> list[tuple[int, int]]:
        """The pre-generated thumbnail sizes of an image (long edge as configured, never upscaled)."""
        out = set()
        for edge in self.settings.thumbnail_sizes:
            scale = min(1.0, edge / max(info.width, info.height))
            out.add((max(1, round(info.width * scale)), max(1, round(info.height * scale))))
        return sorted(out)

    async def thumbnail(self, identifier: str, size: tuple[int, int]) -> Rendered:
        """One pre-generated thumbnail (made and kept as a derivative on first use)."""
        _handle, info = await self.source(identifier)
        if size not in self.thumbnail_sizes(info):
            raise BadSize(f"no {size[0]}x{size[1]} thumbnail; the sizes are listed in info.json")
        request = parse_image_request("3", identifier, "full", f"{size[0]},{size[1]}", "0", "default.jpg")
        return await self.image(request)

    async def make_thumbnails(self, identifier: str) -> int:
        _handle, info = await self.source(identifier)
        sizes = self.thumbnail_sizes(info)
        for size in sizes:
            await self.thumbnail(identifier, size)
        return len(sizes)

    async def _run(self, function, file: CachedFile, *args):  # type: ignore[no-untyped-def]
        """Run a libvips job in a worker thread, within the render slots, the queue and the deadline.

        A read error inside libvips (the origin failed) is reported as that error, not as a bad image.
        """
        if self._waiting >= self.settings.max_queue:
            raise Busy("too many image requests queued; try again shortly")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.render_timeout
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.render_timeout)
        except TimeoutError:
            raise Busy("no render slot became free in time; try again shortly") from None
        finally:
            self._waiting -= 1
        job = asyncio.ensure_future(asyncio.to_thread(_guarded, function, file, *args))
        job.add_done_callback(lambda _job: self._slots.release())  # the slot is held until the thread ends
        try:
            return await asyncio.wait_for(asyncio.shield(job), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise Busy("rendering took longer than images.render_timeout") from None


def _guarded(function, file: CachedFile, *args):  # type: ignore[no-untyped-def]
    try:
        try:
            return function(file, *args)
        except pyvips.Error:
            if file.local_file is None:
                raise
            file.local_file = None  # evicted meanwhile: read through the cache instead
            return function(file, *args)
    except pyvips.Error as exc:
        if file.read_error is not None:
            raise file.read_error from None
        raise UnreadableImage(f"cannot decode the image: {str(exc).strip().splitlines()[0]}") from None
