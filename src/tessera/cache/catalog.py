"""What the cache knows of objects: size and ETag, from memory, the index or the origin, kept fresh.

An object's metadata is trusted for ``cache.metadata_ttl`` after it was last confirmed, then
revalidated with one HEAD however many readers ask (single-flight). Recently asked objects are kept
in a ``MetadataCache`` within ``cache.metadata_size``; one forgotten there is read back from the
index (a cached object: no HEAD while fresh). When the origin answers with another ETag, or no
object, the catalog tells its owner (``changed``), which drops the object's old versions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tessera.cache.index_sync import IndexSync
from tessera.cache.metadata import MetadataCache
from tessera.cache.retry import Retry
from tessera.cache.table import VersionTable
from tessera.cache.version import Metadata, Version, version_id
from tessera.config import CacheSettings
from tessera.errors import ObjectNotFound
from tessera.metrics import Metrics
from tessera.namespace import Resolved
from tessera.origins import ObjectInfo, Origin

MetaKey = tuple[str, str]


class Catalog:
    def __init__(
        self,
        settings: CacheSettings,
        metrics: Metrics,
        table: VersionTable,
        sync: IndexSync,
        retry: Retry,
        changed: Callable[[MetaKey], None],
    ) -> None:
        self.ttl = settings.metadata_ttl
        self.metrics = metrics
        self.table = table
        self.sync = sync
        self.retry = retry
        self._changed = changed
        self.meta = MetadataCache(settings.metadata_size, on_change=self._publish)
        self._flights: dict[MetaKey, asyncio.Task[Metadata]] = {}
        #: Metadata confirmed before this time is stale whatever its age (``revalidate_before``).
        self.stale_before = 0.0

    async def current(self, resolved: Resolved) -> Metadata:
        """The object's metadata: from memory or the index while fresh, else from the origin (one
        lookup however many ask at once)."""
        key = (resolved.origin.identity, resolved.key)
        meta = self.meta.get(key)
        if meta is not None and self._fresh(meta):
            return meta
        task = self._flights.get(key)
        if task is None:
            task = asyncio.create_task(self._look_up(resolved, key, meta is None))
            self._flights[key] = task
            task.add_done_callback(lambda _t: self._flights.pop(key, None))
        return await asyncio.shield(task)

    async def _look_up(self, resolved: Resolved, key: MetaKey, ask_index: bool) -> Metadata:
        if ask_index:
            meta = await self.sync.metadata(*key)
            if meta is not None:
                self.meta.put(key, meta)
                if self._fresh(meta):
                    return meta
        return await self._revalidate(resolved, key)

    async def _revalidate(self, resolved: Resolved, key: MetaKey) -> Metadata:
        origin = resolved.origin
        try:
            info = await self.retry.call(
                origin, "HEAD", lambda: origin.stat(resolved.key), "answering a HEAD"
            )
        except ObjectNotFound:
            self.forget(key)
            raise
        old = self.meta.peek(key)
        if old is not None and old.info.etag != info.etag:
            self.forget(key)
        now = time.time()
        meta = Metadata(info, now, version_id(origin.identity, info.key, info.etag))
        self.meta.put(key, meta)
        slot = self.table.find(meta.vid)
        if slot >= 0:
            self.sync.touched(slot, validated_at=now)
        return meta

    def _fresh(self, meta: Metadata) -> bool:
        return meta.validated_at > self.stale_before and time.time() - meta.validated_at < self.ttl

    def revalidate_before(self, when: float) -> None:
        """Take metadata confirmed before ``when`` as stale: its next use asks the origin."""
        self.stale_before = max(self.stale_before, when)

    def note_listing(self, origin: Origin, infos: list[ObjectInfo], listed_at: float) -> None:
        """Take object metadata from a listing, so a ``stat`` of each listed object needs no HEAD."""
        for info in infos:
            key = (origin.identity, info.key)
            meta = self.meta.peek(key)
            if meta is not None and meta.validated_at >= listed_at:
                continue
            if meta is not None and meta.info.etag != info.etag:
                self.forget(key)
            self.meta.put(key, Metadata(info, listed_at))

    def forget(self, key: MetaKey) -> None:
        """The object changed or vanished: drop what is known of it, and tell the owner."""
        self.meta.pop(key)
        self._changed(key)

    def replace(self, key: MetaKey, info: ObjectInfo | None) -> None:
        """The object was written (``info``) or deleted (None) here: take that as validated now."""
        self.meta.pop(key)
        if info is not None:
            self.meta.put(key, Metadata(info, time.time(), version_id(key[0], info.key, info.etag)))

    def forget_matching(self, origin: str, matches: Callable[[str], bool]) -> None:
        """Drop the metadata of every object of ``origin`` whose key ``matches`` (a purge)."""
        for key in self.meta.snapshot():
            if key[0] == origin and matches(key[1]):
                self.meta.pop(key)

    def etag(self, key: MetaKey) -> str | None:
        """The ETag last seen for the object, if still known here."""
        meta = self.meta.peek(key)
        return meta.info.etag if meta is not None else None

    def validated_at(self, version: Version) -> float:
        """When ``version`` was last confirmed as the object's current one (0: not known here)."""
        meta = self.meta.peek((version.origin, version.key))
        return meta.validated_at if meta is not None and meta.info.etag == version.etag else 0.0

    def _publish(self, meta: MetadataCache) -> None:
        self.metrics.metadata_bytes.set(meta.used)
        self.metrics.metadata_entries.set(len(meta))
