"""The ``import`` job: copy a tree (``file:///dir`` or ``s3://bucket/prefix``) under a virtual prefix.

Every file goes through ``StorageManager.put`` (size and checksum checks, cache coherence), ``concurrency``
at once. For each file copied the job remembers the source version (ETag), its size and SHA-256 and the
target's ETag; a run of the job after a crash or restart skips a file whose source still has that
version and whose target still has that ETag and size, and copies everything else. A file that fails
is recorded (path and reason) and the job goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

from tessera.config import Settings
from tessera.errors import ObjectNotFound, TesseraError
from tessera.ingest.sources import open_source
from tessera.jobs.queue import JobContext
from tessera.metrics import Metrics
from tessera.origins import ObjectInfo, Origin
from tessera.storage import StorageManager

log = logging.getLogger(__name__)

KIND = "import"
#: Progress is saved (and cancellation noticed) at least this often while a job runs.
REPORT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Copied:
    """What the job remembers of one copied file."""

    source_etag: str
    size: int
    sha256: str
    target_etag: str

    def dumps(self) -> str:
        return json.dumps([self.source_etag, self.size, self.sha256, self.target_etag])

    @classmethod
    def loads(cls, text: str) -> Copied | None:
        try:
            source_etag, size, sha256, target_etag = json.loads(text)
        except (ValueError, TypeError):
            return None
        return cls(str(source_etag), int(size), str(sha256), str(target_etag))


class BulkImport:
    """The handler of ``import`` jobs (payload ``{"source": URL, "path": "/mount/prefix"}``)."""

    def __init__(self, storage: StorageManager, settings: Settings, metrics: Metrics) -> None:
        self.storage = storage
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, context: JobContext) -> None:
        source = open_source(context.payload["source"], self.settings)
        target = context.payload["path"].rstrip("/")
        try:
            await _Run(self, context, source.origin, source.prefix, target).run()
        finally:
            await source.origin.close()


class _Run:
    """One run of one import job."""

    def __init__(
        self, owner: BulkImport, context: JobContext, origin: Origin, prefix: str, target: str
    ) -> None:
        self.owner = owner
        self.context = context
        self.origin = origin
        self.prefix = prefix
        self.target = target
        self.pending: dict[str, str] = {}
        self.last_report = time.monotonic()

    async def run(self) -> None:
        progress = self.context.progress
        # Figures are counted afresh each run; files copied by an earlier run count as done (skipped).
        progress.total = progress.done = progress.failed = progress.skipped = progress.bytes = 0
        progress.errors.clear()
        copied = {
            key: c for key, text in (await self.context.remembered()).items() if (c := Copied.loads(text))
        }
        files: asyncio.Queue[ObjectInfo | None] = asyncio.Queue(maxsize=1024)
        workers = self.owner.settings.jobs.concurrency
        tasks = [asyncio.create_task(self._copier(files, copied)) for _ in range(workers)]
        try:
            async for info in self.origin.list(self.prefix):
                progress.total += 1
                await files.put(info)
                await self._maybe_report()
            for _ in tasks:
                await files.put(None)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
        await self._report()

    async def _copier(self, files: asyncio.Queue[ObjectInfo | None], copied: dict[str, Copied]) -> None:
        while (info := await files.get()) is not None:
            relative = info.key[len(self.prefix) :]
            await self._copy(info, relative, copied.get(relative))
            await self._maybe_report()

    async def _copy(self, info: ObjectInfo, relative: str, earlier: Copied | None) -> None:
        progress = self.context.progress
        metrics = self.owner.metrics
        path = f"{self.target}/{relative}"
        try:
            if earlier is not None and await self._still_there(path, info, earlier):
                progress.done += 1
                progress.skipped += 1
                progress.bytes += info.size
                metrics.import_files.labels("skipped").inc()
                return
            body = await self.origin.read_range(info.key, 0, info.size, if_match=info.etag)
            stored = await self.owner.storage.put(path, body.chunks, size=info.size)
        except (TesseraError, OSError) as exc:
            progress.error(relative, f"{type(exc).__name__}: {exc}"[:300])
            metrics.import_files.labels("failed").inc()
            return
        self.pending[relative] = Copied(info.etag, stored.size, stored.sha256, stored.etag).dumps()
        progress.done += 1
        progress.bytes += stored.size
        metrics.import_files.labels("copied").inc()
        metrics.import_bytes.inc(stored.size)

    async def _still_there(self, path: str, info: ObjectInfo, earlier: Copied) -> bool:
        """Whether the copy an earlier run made is still current: same source version, target intact."""
        if earlier.source_etag != info.etag or earlier.size != info.size:
            return False
        resolved = self.owner.storage.engine.namespace.resolve(path)
        try:
            now = await resolved.origin.stat(resolved.key)
        except ObjectNotFound:
            return False
        return now.size == earlier.size and now.etag == earlier.target_etag

    async def _maybe_report(self) -> None:
        if time.monotonic() - self.last_report >= REPORT_SECONDS:
            await self._report()

    async def _report(self) -> None:
        self.last_report = time.monotonic()
        if self.pending:
            pending, self.pending = self.pending, {}
            await self.context.remember(pending)
        await self.context.report()
