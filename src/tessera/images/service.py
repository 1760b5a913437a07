"""The IIIF image service: image headers, rendering with a bounded queue, and the derivative cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pyvips
from glymur.lib.openjp2 import OpenJPEGLibraryError
from PIL import Image

from tessera.cache import CachedFile, CacheEngine, Handle
from tessera.config import ImagesSettings
from tessera.errors import TesseraError
from tessera.images.jp2_regions import MAX_DIRECT_PIXELS, DecodedTiles, DirectDecodeFailed, render_jp2
from tessera.images.jpeg_tiles import JpegTiles, jpeg_file
from tessera.images.lazy import MADE_BY
from tessera.images.limits import PixelLimits, check_canvas, check_source
from tessera.images.quick_jpeg import is_plain_crop
from tessera.images.render import (
    MEDIA_TYPES,
    LevelRegion,
    level_region,
    render,
    render_stopped,
    stop_renders_at,
)
from tessera.images.request import ImageRequest, Plan, canonical_path, parse_image_request, resolve
from tessera.images.source import ImageInfo, read_info
from tessera.images.stored_tiles import (
    covering_tiles,
    crop_tile,
    render_from_tiles,
    stored_tile,
)
from tessera.lru import LRU, SHARED

logger = logging.getLogger(__name__)
_T = TypeVar("_T")  # what a job run by ``_run`` returns


class UnreadableImage(TesseraError):
    """The object exists but is not an image this server can decode."""

    status = 415


class BadSize(TesseraError):
    status = 400


class Busy(TesseraError):
    """Too many renders queued or a render slot did not come in time."""

    status = 503


@dataclass(frozen=True)
class _Resolution:
    """What an image request comes to for one source version: pure arithmetic, so kept (``LRU``)."""

    plan: Plan
    canonical: str
    #: The derivative key (canonical request) and the response's ETag.
    key: str
    etag: str
    area: LevelRegion
    tiles: JpegTiles | None = field(metadata=SHARED)  # weighed with the source's header facts
    #: (offset, length) of the stored tile that is the whole answer, if one is.
    stored: tuple[int, int] | None


@dataclass(frozen=True)
class Rendered:
    #: None when the client's copy is current (answer 304).
    data: bytes | None
    media_type: str
    canonical: str
    etag: str
    mtime: float


class ImageService:
    def __init__(self, engine: CacheEngine, settings: ImagesSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._limits = PixelLimits.from_settings(settings)
        self._slots = asyncio.Semaphore(settings.render_concurrency)
        self._waiting = 0
        #: Header facts of recently used sources, keyed by (path, ETag); also kept as derivatives.
        self._infos: LRU[tuple[str, str], ImageInfo] = LRU(64 * 1024 * 1024)
        #: Resolved requests, keyed by (request, source ETag): a viewer asks the same tiles again.
        self._resolutions: LRU[tuple[ImageRequest, str], _Resolution] = LRU(32 * 1024 * 1024)
        self._decoded = DecodedTiles(settings.decoded_cache)
        counts = engine.metrics.image_responses
        self._made = {path: counts.labels(path) for path in MADE_BY}
        #: Sources being fetched whole (``_fetch_whole``) and the tasks doing it.
        self._fetching: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    def _file(self, handle: Handle) -> CachedFile:
        loop = asyncio.get_running_loop()
        file = CachedFile(handle, lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result())
        file.local_file = handle.local_file()  # wholly cached: libvips may open the plain file
        return file

    async def source(self, identifier: str) -> tuple[Handle, ImageInfo]:
        """Open the source of ``identifier`` (a virtual path without a leading slash) and its header facts."""
        path = "/" + identifier
        handle = await self.engine.open(path)
        key = (path, handle.info.etag)
        info = self._infos.get(key)
        if info is None:
            stored = await self.engine.get_derivative(f"info2:{path}", handle.info.etag)
            if stored is not None:
                info = ImageInfo.from_json(json.loads(stored))
            else:
                file = self._file(handle)
                info = await self._run(read_info, file, file=file)
                await self.engine.put_derivative(
                    f"info2:{path}", handle.info.etag, json.dumps(info.to_json()).encode()
                )
            self._infos.put(key, info)
        check_source(info, self._limits)
        return handle, info

    async def image(
        self, request: ImageRequest, not_modified: Callable[[str], bool] | None = None
    ) -> Rendered:
        """Answer an image request: a stored tile as is, a cached derivative, or a fresh rendering.

        ``not_modified(etag)`` says whether the client already holds the response with that ETag; if
        so nothing is read or rendered and ``data`` is None.
        """
        handle, info = await self.source(request.identifier)
        limits = self.settings
        tag = handle.info.etag
        known = self._resolutions.get((request, tag))
        if known is None:
            known = self._resolve(request, info, tag)
            self._resolutions.put((request, tag), known)
        plan, canonical, etag = known.plan, known.canonical, known.etag

        def answer(data: bytes | None) -> Rendered:
            return Rendered(data, MEDIA_TYPES[plan.format], canonical, etag, handle.info.mtime)

        if not_modified is not None and not_modified(etag):
            return answer(None)
        tiles = known.tiles
        if known.stored is not None and tiles is not None:
            offset, length = known.stored
            stream = await handle.pread(offset, length)
            try:
                if len(stream) != length:
                    raise ValueError("a stored tile of this TIFF is cut short")
                stored = jpeg_file(tiles, stream)
            except ValueError as exc:
                raise UnreadableImage(f"cannot decode the image: {exc}") from None
            self._made["stored"].inc()
            return answer(stored)
        key, area = known.key, known.area
        data = await self.engine.get_derivative(key, tag) if limits.derivative_cache else None
        if data is not None:
            self._made["derivative"].inc()
        else:
            data = await self._render(handle, info, plan, area, tiles)
            if limits.derivative_cache:
                await self.engine.put_derivative(key, tag, data)
        return answer(data)

    async def _render(
        self, handle: Handle, info: ImageInfo, plan: Plan, area: LevelRegion, tiles: JpegTiles | None
    ) -> bytes:
        quality = self.settings.jpeg_quality
        direct = info.jp2_direct and area.width * area.height <= MAX_DIRECT_PIXELS
        path = handle.local_file() if direct else None
        if direct and path is None:
            self._fetch_whole(handle)
        if path is not None:
            try:
                decoded, vid = self._decoded, handle.version_id
                data = await self._run(render_jp2, path, info, area, plan, quality, decoded, vid)
                self._made["openjpeg"].inc()
                return data
            except DirectDecodeFailed as exc:
                if isinstance(exc.__cause__, OpenJPEGLibraryError):
                    # A damaged codestream: libvips may render it with black fill rather than fail.
                    raise UnreadableImage(f"cannot decode the image: {_first_line(exc)}") from None
                logger.info("OpenJPEG could not decode %s directly (%s); rendering with libvips", path, exc)
        keys = covering_tiles(tiles, area) if tiles is not None else None
        if tiles is None or keys is None:
            file = self._file(handle)
            self._made["libvips"].inc()
            return await self._run(render, file, info, plan, quality, file=file)

        async def stored(key: tuple[int, int]) -> bytes:  # a tile the TIFF leaves out (length 0) is b""
            offset, length = tiles.extent(*key)
            return await handle.pread(offset, length) if length else b""

        by_key = dict(zip(keys, await asyncio.gather(*map(stored, keys)), strict=True))
        if len(keys) == 1 and is_plain_crop(area, plan, tiles.bands) and by_key[keys[0]]:
            self._made["crop"].inc()
            return await self._run(crop_tile, tiles, keys[0], by_key[keys[0]], area, plan.size, quality)
        self._made["tiles"].inc()
        return await self._run(render_from_tiles, tiles, by_key, area, plan, quality)

    def _fetch_whole(self, handle: Handle) -> None:
        """Start fetching a JPEG 2000 source whole (once at a time), so the next requests decode directly."""
        path = handle.resolved.path
        if handle.size > self.settings.jp2_whole_file_size or path in self._fetching:
            return
        self._fetching.add(path)

        async def fetch() -> None:
            try:
                await self.engine.local_path(path)
            except Exception as exc:  # the requests go on through libvips meanwhile
                logger.info("could not fetch %s whole: %s", path, exc)
            finally:
                self._fetching.discard(path)

        task = asyncio.ensure_future(fetch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _resolve(self, request: ImageRequest, info: ImageInfo, tag: str) -> _Resolution:
        limits = self.settings
        plan = resolve(
            request,
            info.width,
            info.height,
            max_width=limits.max_width,
            max_height=limits.max_height,
            max_area=limits.max_area,
        )
        check_canvas(plan, self._limits)
        canonical = canonical_path(plan, request, info.width, info.height)
        key = f"iiif{request.version}:{request.identifier}/{canonical}"
        etag = '"' + hashlib.sha256(f"{key}\0{tag}".encode()).hexdigest()[:32] + '"'
        area = level_region(info, plan)
        tiles = info.jpeg_tiles[area.level] if area.level < len(info.jpeg_tiles) else None
        stored = None
        if tiles is not None and limits.tile_passthrough:
            at = stored_tile(tiles, area, plan)
            extent = tiles.extent(*at) if at is not None else (0, 0)
            stored = extent if extent[1] else None
        return _Resolution(plan, canonical, key, etag, area, tiles, stored)

    def thumbnail_sizes(self, info: ImageInfo) -> list[tuple[int, int]]:
        """The pre-generated thumbnail sizes of an image (long edge as configured, never upscaled)."""
        out = set()
        for edge in self.settings.thumbnail_sizes:
            scale = min(1.0, edge / max(info.width, info.height))
            out.add((max(1, round(info.width * scale)), max(1, round(info.height * scale))))
        return sorted(out)

    async def thumbnail(
        self, identifier: str, size: tuple[int, int], not_modified: Callable[[str], bool] | None = None
    ) -> Rendered:
        """One pre-generated thumbnail (made and kept as a derivative on first use)."""
        _handle, info = await self.source(identifier)
        if size not in self.thumbnail_sizes(info):
            raise BadSize(f"no {size[0]}x{size[1]} thumbnail; the sizes are listed in info.json")
        request = parse_image_request("3", identifier, "full", f"{size[0]},{size[1]}", "0", "default.jpg")
        return await self.image(request, not_modified)

    async def make_thumbnails(self, identifier: str) -> int:
        _handle, info = await self.source(identifier)
        sizes = self.thumbnail_sizes(info)
        for size in sizes:
            await self.thumbnail(identifier, size)
        return len(sizes)

    async def _run(self, function: Callable[..., _T], *args: object, file: CachedFile | None = None) -> _T:
        """Run a libvips job in a worker thread, within the render slots, the queue and the deadline.

        A read error inside libvips (the origin failed, seen by ``file``) is reported as that error,
        not as a bad image.
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
        remaining = max(0.0, deadline - loop.time())
        stop_at = time.monotonic() + remaining  # the thread's clock (the loop's may differ)
        job = asyncio.ensure_future(asyncio.to_thread(_guarded, function, args, file, stop_at))
        job.add_done_callback(self._job_done)
        try:
            return await asyncio.wait_for(asyncio.shield(job), remaining)
        except TimeoutError:
            raise Busy("rendering took longer than images.render_timeout") from None

    def _job_done(self, job: asyncio.Future[_T]) -> None:
        """The slot is held until the thread ends (a render past its deadline stops within a tile)."""
        self._slots.release()
        if not job.cancelled():
            job.exception()  # retrieved: the request that timed out has answered already


def _guarded(
    function: Callable[..., _T], args: tuple[object, ...], file: CachedFile | None, stop_at: float
) -> _T:
    try:
        with stop_renders_at(stop_at):
            try:
                return function(*args)
            except pyvips.Error:
                if file is None or file.local_file is None or render_stopped():
                    raise
                file.local_file = None  # evicted meanwhile: read through the cache instead
                return function(*args)
    except (pyvips.Error, OSError, ValueError, Image.DecompressionBombError) as exc:
        # libvips, or Pillow / a stored tile's bytes
        if file is not None and file.read_error is not None:
            raise file.read_error from None
        if isinstance(exc, pyvips.Error) and time.monotonic() > stop_at:
            raise Busy("rendering took longer than images.render_timeout; it was stopped") from None
        raise UnreadableImage(f"cannot decode the image: {_first_line(exc)}") from None


#: A file path in a decoder's message (quoted, maybe as Python bytes): the client is not told it.
_PATH = re.compile(r"""b?["'`]?/[^\s"'`]+["'`]?""")


def _first_line(exc: Exception) -> str:
    """What went wrong, in one line without file paths: libvips' own detail where it gives one."""
    text = exc.detail if isinstance(exc, pyvips.Error) and exc.detail.strip() else str(exc)
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return _PATH.sub("(file)", line)
