"""``HostingService``: uploads checked and stored, derivatives made by the job queue or on first view,
links handed out and kept in the link map, views read through the cache.

An upload is checked in the request: its type sniffed and its header probed (no decoding), then
decoded once with libvips' fail-on checks (shrink-on-load to the largest width), which also gives the
JPEG derivatives at once. Only then is anything stored: the original and those derivatives under
``{link}/`` in the hosting mount, the row in the link map, and a durable job for the other eager
formats. So a rejected upload leaves nothing, and an accepted one (answered 201) survives a crash:
its job is in the queue and resumes; a derivative a crash left unmade is rendered on its first view.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.cache import CacheEngine
from tessera.cluster import Change
from tessera.config import HostingSettings, Settings
from tessera.errors import ObjectNotFound
from tessera.hosting.allocator import LinkAllocator
from tessera.hosting.linkmap import ImageRow, LinkMap
from tessera.hosting.model import MEDIA_TYPES, SUFFIXES, Format, Limits, Probe, Rejected, effective_width
from tessera.hosting.permutation import LinkPermutation
from tessera.jobs import JobContext, JobService
from tessera.lru import LRU
from tessera.origins.local import LocalOrigin
from tessera.storage import StorageManager

if TYPE_CHECKING:  # loaded with the first upload or view: see ``formats``
    from tessera.hosting.background import BackgroundRenderer
    from tessera.hosting.derivatives import Rendition

log = logging.getLogger(__name__)

#: The job kind that makes an upload's eager derivatives.
DERIVE_JOB = "hosting.derive"
ORIGINAL = "original"
#: Memory for link-map rows of recently viewed links (a view then costs no database query).
ROW_CACHE_BYTES = 32 << 20
#: Uploads in progress allowed per decode slot (receiving, waiting for a slot, storing).
UPLOADS_PER_DECODE = 8
#: File suffix of each derivative format.
SUFFIX: dict[Format, str] = {fmt: suffix for suffix, fmt in SUFFIXES.items()}


class Slots:
    """At most ``limit`` holders at once, refused (not queued) past it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def acquire_nowait(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1


class LinkGone(Exception):
    """The link was deleted: it answers 410 forever."""


@dataclass(frozen=True, slots=True)
class Uploaded:
    """What an upload answers (``delete_token`` only to the uploader, only once)."""

    row: ImageRow
    delete_token: str | None
    created: bool


@dataclass(frozen=True, slots=True)
class View:
    """What a view answers with: an object of the hosting mount, read through the cache."""

    path: str
    media_type: str


def derivative_name(width: int, fmt: Format) -> str:
    return f"{width}.{SUFFIX[fmt]}"


class HostingService:
    """Image hosting over one mount of the cache (see the module doc)."""

    def __init__(
        self,
        engine: CacheEngine,
        storage: StorageManager,
        settings: HostingSettings,
        linkmap: LinkMap,
        permutation: LinkPermutation,
        allocator: LinkAllocator,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.settings = settings
        self.linkmap = linkmap
        self.allocator = allocator
        self.permutation = permutation
        self.metrics = engine.metrics
        self.jobs: JobService | None = None
        self.limits = Limits(
            max_bytes=settings.max_upload_size,
            max_pixels=settings.max_pixels,
            max_width=settings.max_width,
            max_height=settings.max_height,
            max_frames=settings.max_frames,
        )
        self.qualities: dict[Format, int] = {
            "jpeg": settings.jpeg_quality,
            "webp": settings.webp_quality,
            "avif": settings.avif_quality,
        }
        self._decoding = asyncio.Semaphore(settings.processing_concurrency)
        #: Uploads being received or processed: each holds its body (up to ``max_upload_size``), so
        #: their number bounds the memory uploads take; past it, 503 at once.
        self.uploads = Slots(UPLOADS_PER_DECODE * settings.processing_concurrency)
        #: Threads of their own for decodes, so they never hold up the I/O pool's cache reads.
        self._decoders = ThreadPoolExecutor(
            settings.processing_concurrency, thread_name_prefix="hosting-decode"
        )
        self._rows: LRU[str, ImageRow] = LRU(ROW_CACHE_BYTES)
        self._background: BackgroundRenderer | None = None
        self._rendering: dict[str, asyncio.Future[None]] = {}

    @classmethod
    async def open(cls, engine: CacheEngine, storage: StorageManager, settings: Settings) -> HostingService:
        """Open the link map (migrating it), read or make the link key, and start leasing link blocks."""
        hosting = settings.hosting
        linkmap = await asyncio.to_thread(LinkMap.open, hosting.database_url)
        try:
            if hosting.link_key is not None:
                key = bytes.fromhex(hosting.link_key)
            else:
                key = await asyncio.to_thread(linkmap.link_key, lambda: secrets.token_bytes(32))
            holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
            permutation = LinkPermutation(key, hosting.link_length)
            allocator = LinkAllocator(linkmap, permutation, holder, hosting.link_block)
        except BaseException:
            await asyncio.to_thread(linkmap.close)
            raise
        return cls(engine, storage, hosting, linkmap, permutation, allocator)

    @functools.cached_property
    def formats(self) -> list[Format]:
        """The derivative formats served (AVIF only if libvips encodes it: the first use loads the
        image libraries, which an idle server does not hold)."""
        from tessera.hosting import derivatives

        return derivatives.available_formats(list(self.settings.formats))

    @functools.cached_property
    def eager(self) -> list[Format]:
        """The formats made at once (JPEG at the upload, the others by the job)."""
        return [fmt for fmt in self.settings.eager_formats if fmt in self.formats]

    async def close(self) -> None:
        if self._background is not None:
            self._background.close()
        self._decoders.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.allocator.close)
        await asyncio.to_thread(self.linkmap.close)

    # ------------------------------------------------------------------ paths

    def _path(self, link: str, name: str) -> str:
        return f"/{self.settings.mount}/{link}/{name}"

    # ------------------------------------------------------------------ uploads

    def check(self, data: bytes) -> Probe:
        """Type and header checks, before anything is decoded (``Rejected`` with the reason)."""
        if not data:
            raise Rejected(415, "empty body: send the image's bytes (multipart field `file` or raw)")
        from tessera.hosting.probe import probe
        from tessera.hosting.sniff import sniff

        kind = sniff(data[:64])
        found = probe(data, self.limits)
        if found.type != kind:
            raise Rejected(415, f"the bytes start like {kind} but read as {found.type}")
        return found

    async def upload(self, data: bytes, owner: str | None) -> Uploaded:
        """Check, decode and store an upload; ``Rejected`` (nothing stored) if it is refused."""
        found = self.check(data)
        sha256 = hashlib.sha256(data).hexdigest()
        if owner is not None:
            existing = await asyncio.to_thread(self.linkmap.find_duplicate, owner, sha256)
            if existing is not None:
                return Uploaded(existing, None, created=False)
        jpegs = await self._render(data, found, ["jpeg"] if "jpeg" in self.eager else [], "upload")
        number, link = await asyncio.to_thread(self.allocator.allocate)
        width, height = found.display_size
        delete_token = secrets.token_urlsafe(24)
        now = time.time()
        row = ImageRow(
            link=link,
            number=number,
            object_key=f"{link}/",
            owner=owner,
            type=found.type,
            width=width,
            height=height,
            bytes=len(data),
            sha256=sha256,
            status="processing",
            delete_token_hash=_token_hash(delete_token),
            derivatives=[],
            created=now,
            updated=now,
        )
        await self._store(self._path(link, ORIGINAL), [data], create_only=True)
        made = await self._store_renditions(link, jpegs)
        row = _replace(row, derivatives=made)
        await asyncio.to_thread(self.linkmap.insert, row)
        if self.jobs is not None and set(self.eager) - {"jpeg"}:
            await self.jobs.enqueue(DERIVE_JOB, {"link": link})
        else:
            row = _replace(row, status="ready")
            await asyncio.to_thread(self.linkmap.update, link, status="ready")
        self._rows.put(link, row)
        return Uploaded(row, delete_token, created=True)

    async def _render(
        self,
        data: bytes,
        found: Probe,
        formats: list[Format],
        when: str,
        widths: Iterable[int] | None = None,
    ) -> list[Rendition]:
        """Decode once (fail-on checks: ``Rejected`` 422 for a corrupt file) and render ``formats``
        (``when``: upload, job or view, for ``tessera_hosting_renders_total``)."""
        wanted = list(widths if widths is not None else self.settings.widths)
        async with self._decoding:
            from tessera.hosting import derivatives

            renditions = await asyncio.get_running_loop().run_in_executor(
                self._decoders,
                derivatives.decode_and_render,
                data,
                found,
                wanted,
                formats,
                self.qualities,
                self.settings.keep_copyright,
            )
        for rendition in renditions:
            self.metrics.hosting_renders.labels(rendition.format, when).inc()
        return renditions

    async def _store(self, path: str, pieces: list[bytes], *, create_only: bool = False) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        await self.storage.put(path, chunks(), size=sum(map(len, pieces)), create_only=create_only)

    async def _store_renditions(self, link: str, renditions: list[Rendition]) -> list[str]:
        names = []
        for rendition in renditions:
            name = derivative_name(rendition.width, rendition.format)
            await self._store(self._path(link, name), [rendition.data])
            names.append(name)
        return names

    # ------------------------------------------------------------------ the job

    async def derive(self, context: JobContext) -> None:
        """The ``hosting.derive`` job: make the eager derivatives not made yet, then mark the row ready.

        Idempotent: after a crash it runs again and skips what was stored (the row lists it)."""
        link = str(context.payload["link"])
        row = await self.row(link, fresh=True)
        if row is None or row.status == "deleted":
            return
        missing = [fmt for fmt in self.eager if not self._has_all(row, fmt)]
        made = list(row.derivatives)
        if missing:
            data = await self.engine.read(self._path(link, ORIGINAL))
            s = self.settings
            if self._background is None:
                from tessera.hosting.background import BackgroundRenderer

                self._background = BackgroundRenderer(s.job_processes)
            renditions = await self._background.render(
                data, self.limits, list(s.widths), missing, self.qualities, s.keep_copyright
            )
            for rendition in renditions:
                self.metrics.hosting_renders.labels(rendition.format, "job").inc()
            made += [name for name in await self._store_renditions(link, renditions) if name not in made]
        updated = await asyncio.to_thread(self.linkmap.update, link, status="ready", derivatives=made)
        if updated is None:  # deleted while this job rendered: remove what it stored meanwhile too
            await self._remove_objects(row)
            return
        self._rows.put(link, _replace(row, status="ready", derivatives=made))
        self.storage.announcer.announce(Change.link(link))

    def _has_all(self, row: ImageRow, fmt: Format) -> bool:
        return all(
            derivative_name(effective_width(width, row.width), fmt) in row.derivatives
            for width in self.settings.widths
        )

    # ------------------------------------------------------------------ views

    async def row(self, link: str, *, fresh: bool = False) -> ImageRow | None:
        """The link's row (None: no such link); from memory unless ``fresh``."""
        if not fresh:
            cached = self._rows.get(link)
            if cached is not None:
                return cached
        try:
            self.permutation.number(link)
        except ValueError:
            return None  # not a link we could have made: no database query
        row = await asyncio.to_thread(self.linkmap.get, link)
        # A row still processing is not kept: the job may finish in another process (a shard of
        # ``--workers``, which has no invalidation stream), and would leave it "processing" here.
        if row is not None and row.status != "processing":
            self._rows.put(link, row)
        return row

    def forget_row(self, link: str) -> None:
        """Another node changed the link's row: read it from the link map next time."""
        self._rows.discard(link)

    async def _live_row(self, link: str) -> ImageRow:
        row = await self.row(link)
        if row is None:
            raise ObjectNotFound(f"no image {link}")
        if row.status == "deleted":
            raise LinkGone(f"image {link} was deleted")
        return row

    async def original(self, link: str) -> View:
        row = await self._live_row(link)
        return View(self._path(link, ORIGINAL), _media_type(row.type))

    async def derivative(self, link: str, width: int, fmt: Format) -> View:
        """A derivative of a configured width and format (``ObjectNotFound`` for any other), rendered
        now if it was not made yet (once however many ask at the same time)."""
        if width not in self.settings.widths or fmt not in self.formats:
            raise ObjectNotFound(f"no {width} px {fmt} derivative: widths {self.settings.widths}")
        row = await self._live_row(link)
        name = derivative_name(effective_width(width, row.width), fmt)
        path = self._path(link, name)
        media_type = f"image/{fmt}"
        if name in row.derivatives:
            return View(path, media_type)
        try:
            await self.engine.stat(path)
            return View(path, media_type)
        except ObjectNotFound:
            pass
        flight = self._rendering.get(path)
        if flight is None:
            flight = self._rendering[path] = asyncio.ensure_future(self._render_one(link, width, fmt))
            flight.add_done_callback(lambda _done: self._rendering.pop(path, None))
        await asyncio.shield(flight)
        return View(path, media_type)

    async def _render_one(self, link: str, width: int, fmt: Format) -> None:
        data = await self.engine.read(self._path(link, ORIGINAL))
        found = self.check(data)
        (rendition,) = await self._render(data, found, [fmt], "view", [width])
        await self._store(self._path(link, derivative_name(rendition.width, fmt)), [rendition.data])

    def default_format(self, accept: str) -> Format:
        """The format ``GET /i/{link}`` answers with for an ``Accept`` header: AVIF, then WebP, if the
        client takes them and they are served; JPEG otherwise."""
        accepted = accept.lower()
        preferred: tuple[Format, ...] = ("avif", "webp")
        for fmt in preferred:
            if fmt in self.formats and f"image/{fmt}" in accepted:
                return fmt
        return "jpeg" if "jpeg" in self.formats else self.formats[0]

    # ------------------------------------------------------------------ delete and list

    def may_delete(self, row: ImageRow, owner: str | None, delete_token: str | None) -> bool:
        if owner is not None and row.owner == owner:
            return True
        expected = row.delete_token_hash
        if delete_token is None or expected is None:
            return False
        return hmac.compare_digest(_token_hash(delete_token), expected)

    async def delete(self, row: ImageRow) -> None:
        """Mark the link deleted (every view answers 410 from then on), then remove its objects and
        purge them from the cache."""
        await asyncio.to_thread(self.linkmap.mark_deleted, row.link)
        self._rows.put(row.link, _replace(row, status="deleted"))
        self.storage.announcer.announce(Change.link(row.link))
        await self._remove_objects(row)

    async def _remove_objects(self, row: ImageRow) -> None:
        names = [ORIGINAL, *row.derivatives, *self._possible_derivatives(row)]
        for name in dict.fromkeys(names):
            with contextlib.suppress(ObjectNotFound):
                await self.storage.delete(self._path(row.link, name))

    def _possible_derivatives(self, row: ImageRow) -> list[str]:
        """Every derivative a view could have rendered (those are not listed in the row)."""
        return [
            derivative_name(effective_width(width, row.width), fmt)
            for width in self.settings.widths
            for fmt in self.formats
        ]

    async def owned(self, owner: str, cursor: str | None, limit: int) -> tuple[list[ImageRow], str | None]:
        return await asyncio.to_thread(self.linkmap.list_owned, owner, cursor, limit)


async def open_hosting(
    engine: CacheEngine, storage: StorageManager, settings: Settings
) -> HostingService | None:
    """The hosting service, or None (with a warning) when ``[hosting] mount`` names no mount."""
    if settings.hosting.mount not in settings.mounts:
        log.warning(
            "image hosting is off: [hosting] mount %r is not one of the mounts (%s)",
            settings.hosting.mount,
            ", ".join(settings.mounts),
        )
        return None
    origin = engine.namespace.origin(settings.hosting.mount)
    if isinstance(origin, LocalOrigin):  # a new install has no ./var/hosted yet
        await asyncio.to_thread(os.makedirs, origin.root, exist_ok=True)
    return await HostingService.open(engine, storage, settings)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _media_type(kind: str) -> str:
    return MEDIA_TYPES.get(kind, "application/octet-stream")


def _replace(row: ImageRow, **changes: object) -> ImageRow:
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]
