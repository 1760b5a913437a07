"""The cache engine: every consumer (files API, IIIF, FUSE, CLI) reads objects through it.

One asyncio event loop owns all engine state, so the bookkeeping needs no locks; disk I/O runs in
worker threads and origin I/O is async. The pieces:

* metadata: an object's size and ETag, trusted for ``metadata_ttl`` and then revalidated with a HEAD
  (one HEAD however many readers ask: single-flight);
* versions: ``(origin, key, etag)`` split into blocks, stored in one sparse file each (``DiskStore``),
  recent blocks also kept in memory (``MemoryTier``);
* fills: missing blocks are fetched in contiguous runs with one ranged GET each, sent with
  ``If-Match`` so the bytes of two versions never mix; every block has at most one fill in flight and
  every reader of it awaits that fill's future, which resolves the moment the block lands;
* the scavenger: before a block is written, space is reserved; past the high watermark versions are
  evicted (policy order) down to the low watermark, so usage never passes the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tessera.cache.blocks import block_span, contiguous_runs
from tessera.cache.diskstore import copy_blocks
from tessera.cache.index import SqliteIndex, VersionRow
from tessera.cache.memory import MemoryTier
from tessera.cache.pins import PinSet
from tessera.cache.policy import EvictionPolicy, make_policy
from tessera.cache.tiers import DiskTier
from tessera.cache.version import Version, version_id
from tessera.config import Settings
from tessera.errors import (
    CacheFull,
    CacheLocked,
    ObjectNotFound,
    OriginTimeout,
    OriginUnavailable,
    TesseraError,
    VersionChanged,
)
from tessera.metrics import Metrics
from tessera.namespace import Namespace, Resolved
from tessera.origins import ObjectInfo, Origin

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class _Meta:
    info: ObjectInfo
    validated_at: float


class Handle:
    """An open object version: reads never mix versions, whatever happens at the origin meanwhile.

    Tracks the reader's pattern: a read that starts where the last one ended grows the readahead
    window (doubling up to ``cache.readahead``); any other read resets it.
    """

    def __init__(self, engine: CacheEngine, resolved: Resolved, info: ObjectInfo, version: Version) -> None:
        self.engine = engine
        self.resolved = resolved
        self.info = info
        self.version = version
        self.position = 0
        self.last_end = -1
        self.window = 0

    @property
    def size(self) -> int:
        return self.info.size

    async def pread(self, offset: int, length: int) -> bytes:
        return await self.engine.pread(self, offset, length)

    async def read(self, length: int = -1) -> bytes:
        if length < 0:
            length = self.size - self.position
        data = await self.pread(self.position, length)
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def iter_range(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` block by block, fetching ahead while the caller consumes."""
        return self.engine.iter_range(self, start, self.size if end is None else end)


class CacheEngine:
    def __init__(
        self,
        settings: Settings,
        namespace: Namespace | None = None,
        metrics: Metrics | None = None,
        policy: EvictionPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.namespace = namespace or Namespace(settings.mounts, settings.origin)
        self.metrics = metrics or Metrics()
        cache = settings.cache
        self.root = Path(cache.dir)
        self.block_size = cache.block_size
        self.memory = MemoryTier(cache.memory_size, make_policy(cache.memory_policy, cache.memory_size))
        fsync = cache.fsync == "always"
        high, low = cache.high_watermark, cache.low_watermark
        first_policy = policy or make_policy(cache.policy, cache.disk_size, cache.admit_after)
        #: Disk tiers, fastest first: evictions from one tier demote into the next; hits promote back.
        self.tiers = [DiskTier.open("disk", self.root, cache.disk_size, first_policy, high, low, fsync)]
        if cache.second_dir is not None:
            second_policy = make_policy(cache.policy, cache.second_size)
            self.tiers.append(
                DiskTier.open(
                    "disk2", Path(cache.second_dir), cache.second_size, second_policy, high, low, fsync
                )
            )
        self.disk = self.tiers[0].store
        self.policy = self.tiers[0].policy
        self.disk_limit = cache.disk_size
        self.pins = PinSet()
        self.pin_limit = cache.pin_size if cache.pin_size is not None else cache.disk_size // 10
        self.pinned_bytes = 0
        self._pin_reserved = 0
        #: Replaced (after being set) whenever space may have been freed; fills short of room wait on it.
        self._space = asyncio.Event()
        self._index: SqliteIndex | None = None
        self._lock_fd: int | None = None
        self._meta: dict[tuple[str, str], _Meta] = {}
        self._versions: dict[int, Version] = {}
        self._by_identity: dict[tuple[str, str, str], Version] = {}
        self._inflight: dict[tuple[int, int], asyncio.Future[bytes]] = {}
        #: In-flight blocks someone already waits for: later waiters count as coalesced.
        self._awaited: set[tuple[int, int]] = set()
        #: Waiters for a landed block's disk write to finish (``local_path`` needs the file complete).
        self._stored: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._stat_flights: dict[tuple[str, str], asyncio.Task[ObjectInfo]] = {}
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()
        self._origins = {
            self.namespace.origin(m).identity: self.namespace.origin(m) for m in self.namespace.mounts
        }
        self._origin_slots = asyncio.Semaphore(settings.origin.max_concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[Any]] = []
        self.verified = asyncio.Event()
        #: Set once every row of the index is in memory.
        self.loaded = asyncio.Event()
        self._dropped_early: set[int] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        for tier in self.tiers:
            self.metrics.cache_limit.labels(tier.name).set(tier.limit)
        self.metrics.cache_limit.labels("memory").set(self.memory.limit)

    @property
    def disk_used(self) -> int:
        """Bytes held by the first disk tier."""
        return self.tiers[0].used

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Take the cache directory, load the index and start the background tasks."""
        self.loop = asyncio.get_running_loop()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.root)
        self._index = await asyncio.to_thread(SqliteIndex, self.root / "index.sqlite")
        for origin, pattern in await asyncio.to_thread(self._index.load_pins):
            self.pins.add(origin, pattern)
        # Usage comes from one aggregate query; the rows themselves load in the background, and until
        # they have, a lookup of an object not loaded yet asks the index for that object's rows.
        for number, pinned, nbytes in await asyncio.to_thread(self._index.usage):
            self.tiers[min(number, len(self.tiers) - 1)].used += nbytes
            if pinned:
                self.pinned_bytes += nbytes
        self._publish_usage()
        self._background = [
            asyncio.create_task(self._flush_loop(), name="tessera-index-flush"),
            asyncio.create_task(self._load_index(), name="tessera-index-load"),
        ]

    async def _load_index(self) -> None:
        batches = self._index.batches() if self._index is not None else iter(())
        while batch := await asyncio.to_thread(next, batches, None):
            for row in batch:
                if row.vid not in self._versions and row.vid not in self._dropped_early:
                    self._adopt(row)
            await asyncio.sleep(0)
        self._dropped_early.clear()
        self.loaded.set()
        self._publish_usage()
        for number, tier in enumerate(self.tiers):
            if tier.above_high(0):
                self._scavenge(number, 0, exclude=None)
        if self.settings.cache.verify_on_start:
            await self._verify()
        else:
            self.verified.set()

    async def close(self, grace: float = 5.0) -> None:
        """Let fills under way finish (up to ``grace`` seconds), write the index and release the directory."""
        for task in self._background:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._background, *self._tasks, return_exceptions=True)
        try:
            if self._index is not None:
                try:
                    await self._flush()
                except sqlite3.OperationalError:
                    await self._flush()  # the first failure made room if the disk was full
        except Exception:
            log.exception("final write of the cache index failed; the next start re-checks the disk")
        finally:
            if self._index is not None:
                await asyncio.to_thread(self._index.close)
                self._index = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def __aenter__(self) -> CacheEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _adopt(self, row: VersionRow) -> None:
        """Take a version from the index (its bytes are already in the usage figures)."""
        version = row.to_version()
        self._versions[version.vid] = version
        self._by_identity[(version.origin, version.key, version.etag)] = version
        if version.tier >= len(self.tiers):  # the second tier was removed from the config
            version.tier = len(self.tiers) - 1
        if not version.pinned:
            self.tiers[version.tier].policy.insert(version.vid, version.present_bytes)
        current = self._meta.get((version.origin, version.key))
        if current is None or current.validated_at <= row.validated_at:
            info = ObjectInfo(version.key, version.size, version.etag, version.mtime)
            self._meta[(version.origin, version.key)] = _Meta(info, row.validated_at)

    # ------------------------------------------------------------------ public API

    async def stat(self, path: str) -> ObjectInfo:
        resolved = self.namespace.resolve(path)
        return await self._current_info(resolved)

    async def open(self, path: str) -> Handle:
        """Open the current version of ``path`` (revalidated once its metadata is older than the TTL)."""
        resolved = self.namespace.resolve(path)
        info = await self._current_info(resolved)
        return Handle(self, resolved, info, self._version_for(resolved.origin, info))

    async def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        handle = await self.open(path)
        if length < 0:
            length = handle.size - offset
        return await handle.pread(offset, length)

    async def local_path(self, path: str) -> Path:
        """Make sure the whole object is cached and return its local file (a plain file of its bytes).

        The file stays until the scavenger evicts it; a descriptor opened on it stays valid even then.
        """
        handle = await self.open(path)
        version = self._live(handle)
        version.busy += 1
        try:
            self._touch(version, admit=True)
            window = max(1, 4 * self.settings.cache.max_fill // self.block_size)
            for index in range(version.nblocks):
                self._prefetch(version, index, index, min(version.nblocks - 1, index + window - 1))
                if not version.present[index]:
                    await self._block(version, index)
                    if (version.vid, index) in self._inflight:
                        await self._until_stored(version, index)
            if not version.complete:
                raise CacheFull(f"{path} ({version.size} bytes) does not fit in the disk tier right now")
            return self.file_path(version)
        finally:
            self._release(version)

    async def warm(
        self, path: str, concurrency: int = 4, progress: Callable[[int, int], None] | None = None
    ) -> tuple[int, int]:
        """Fetch an object, or every object under a prefix, into the disk tier; returns (objects, bytes)."""
        resolved = self.namespace.resolve_prefix(path)
        targets: list[str] = []
        if resolved.key and not path.endswith("/"):
            try:
                await self._current_info(resolved)
                targets.append(resolved.path)
            except ObjectNotFound:
                pass
        if not targets:
            prefix = resolved.key + "/" if resolved.key and not resolved.key.endswith("/") else resolved.key
            async for info in resolved.origin.list(prefix):
                targets.append(f"/{resolved.mount}/{info.key}")
        if not targets:
            raise ObjectNotFound(f"nothing at {path}")
        slots = asyncio.Semaphore(concurrency)
        done_bytes = 0

        async def one(target: str) -> None:
            nonlocal done_bytes
            async with slots:
                local = await self.local_path(target)
                done_bytes += local.stat().st_size
                if progress:
                    progress(1, local.stat().st_size)

        await asyncio.gather(*(one(t) for t in targets))
        return len(targets), done_bytes

    async def purge(self, path: str) -> int:
        """Drop an object, or everything under a prefix, from every tier; returns versions dropped."""
        await self.loaded.wait()
        resolved = self.namespace.resolve_prefix(path)
        origin, key = resolved.origin.identity, resolved.key
        exact = bool(key) and not path.endswith("/")
        prefix = key if not key or key.endswith("/") else key + "/"

        def matches(candidate: str) -> bool:
            return (exact and candidate == key) or candidate.startswith(prefix)

        dropped = [v for v in self._versions.values() if v.origin == origin and matches(v.key)]
        for version in dropped:
            self._drop(version)
        self._notify_space()
        for meta_key in [k for k in self._meta if k[0] == origin and matches(k[1])]:
            del self._meta[meta_key]
        self._publish_usage()
        return len(dropped)

    def _pattern(self, path: str) -> tuple[Resolved, str]:
        """A pin pattern for ``path``: the key of one object, or ``prefix/`` (``""`` for a whole mount)."""
        resolved = self.namespace.resolve_prefix(path)
        key = resolved.key
        if not key or path.endswith("/"):
            return resolved, f"{key}/" if key else ""
        return resolved, key

    async def pin(self, path: str, progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Pin an object or prefix (kept out of eviction, within ``cache.pin_size``) and warm it.

        An object path that names no object is pinned as a prefix. Returns what ``warm`` returns; a pin
        whose objects do not fit in the budget is withdrawn and raises ``CacheFull``.
        """
        await self.loaded.wait()
        resolved, pattern = self._pattern(path)
        if pattern and not pattern.endswith("/"):
            try:
                await self._current_info(resolved)
            except ObjectNotFound:
                pattern += "/"
        origin = resolved.origin.identity
        self.pins.add(origin, pattern)
        assert self._index is not None
        await asyncio.to_thread(self._index.save_pin, origin, pattern, True)
        for version in list(self._versions.values()):
            if version.origin == origin and self.pins.matches(origin, version.key):
                self._set_pinned(version, True)
        try:
            return await self.warm(path)
        except CacheFull:
            await self.unpin(path)  # all or nothing: a pin that does not fit is not kept
            raise CacheFull(
                f"pinning {path} needs more than the pin budget allows "
                f"({self.pinned_bytes} of {self.pin_limit} bytes in use; see cache.pin_size)"
            ) from None

    async def unpin(self, path: str) -> int:
        """Remove the pin of exactly this object or prefix; its versions become evictable again."""
        await self.loaded.wait()
        resolved, pattern = self._pattern(path)
        origin = resolved.origin.identity
        removed = self.pins.discard(origin, pattern) or self.pins.discard(origin, pattern + "/")
        if not removed:
            return 0
        assert self._index is not None
        await asyncio.to_thread(self._index.save_pin, origin, pattern, False)
        await asyncio.to_thread(self._index.save_pin, origin, pattern + "/", False)
        count = 0
        for version in list(self._versions.values()):
            if version.pinned and not self.pins.matches(version.origin, version.key):
                self._set_pinned(version, False)
                count += 1
        return count

    def _set_pinned(self, version: Version, pinned: bool) -> None:
        if version.pinned == pinned or not version.alive:
            return
        tier = self.tiers[version.tier]
        version.pinned = pinned
        self._dirty.add(version.vid)
        if pinned:
            tier.policy.remove(version.vid)
            self.pinned_bytes += version.present_bytes
        else:
            self.pinned_bytes -= version.present_bytes
            tier.policy.insert(version.vid, version.present_bytes)

    def stats(self, top: int = 10) -> dict[str, Any]:
        def sample(name: str, **labels: str) -> int:
            return int(self.metrics.registry.get_sample_value(name, labels) or 0)

        ranked = sorted(self._versions.values(), key=lambda v: v.hits, reverse=True)[:top]
        return {
            "tiers": {
                "memory": {"bytes": self.memory.used, "limit": self.memory.limit},
                **{
                    tier.name: {
                        "bytes": tier.used,
                        "limit": tier.limit,
                        "objects": sum(1 for v in self._versions.values() if v.tier == number),
                    }
                    for number, tier in enumerate(self.tiers)
                },
            },
            "pinned": {
                "bytes": self.pinned_bytes,
                "limit": self.pin_limit,
                "pins": [{"origin": origin, "pattern": pattern} for origin, pattern in self.pins],
            },
            "hits": {t: sample("tessera_cache_hits_total", tier=t) for t in ("memory", "disk")},
            "misses": sample("tessera_cache_misses_total", tier="disk"),
            "coalesced": sample("tessera_cache_coalesced_total"),
            "origin_bytes": sum(
                sample("tessera_origin_bytes_total", origin=o.name) for o in self._origins.values()
            ),
            "loaded": self.loaded.is_set(),
            "verified": self.verified.is_set(),
            "top": [
                {"origin": v.origin, "key": v.key, "size": v.size, "cached": v.present_bytes, "hits": v.hits}
                for v in ranked
                if v.hits
            ],
        }

    # ------------------------------------------------------------------ metadata

    async def _current_info(self, resolved: Resolved) -> ObjectInfo:
        key = (resolved.origin.identity, resolved.key)
        meta = self._meta.get(key)
        if meta is None and not self.loaded.is_set() and self._index is not None:
            for row in await asyncio.to_thread(self._index.rows_for, *key):
                if row.vid not in self._versions and row.vid not in self._dropped_early:
                    self._adopt(row)
            meta = self._meta.get(key)
        if meta is not None and time.time() - meta.validated_at < self.settings.cache.metadata_ttl:
            return meta.info
        task = self._stat_flights.get(key)
        if task is None:
            task = asyncio.create_task(self._revalidate(resolved, key))
            self._stat_flights[key] = task
            task.add_done_callback(lambda _t: self._stat_flights.pop(key, None))
        return await asyncio.shield(task)

    async def _revalidate(self, resolved: Resolved, key: tuple[str, str]) -> ObjectInfo:
        origin = resolved.origin
        try:
            info = await self._retrying(origin, "HEAD", lambda: origin.stat(resolved.key))
        except ObjectNotFound:
            self._forget(key)
            raise
        old = self._meta.get(key)
        if old is not None and old.info.etag != info.etag:
            self._forget(key)
        self._meta[key] = _Meta(info, time.time())
        current = self._by_identity.get((origin.identity, info.key, info.etag))
        if current is not None:
            self._dirty.add(current.vid)
        return info

    def note_listing(self, origin: Origin, infos: list[ObjectInfo], listed_at: float) -> None:
        """Take object metadata from a listing, so a ``stat`` of each listed object needs no HEAD."""
        for info in infos:
            key = (origin.identity, info.key)
            meta = self._meta.get(key)
            if meta is not None and meta.validated_at >= listed_at:
                continue
            if meta is not None and meta.info.etag != info.etag:
                self._forget(key)
            self._meta[key] = _Meta(info, listed_at)

    def _forget(self, key: tuple[str, str]) -> None:
        """The object changed or vanished: drop its metadata and the versions nobody is reading."""
        self._meta.pop(key, None)
        for version in [v for v in self._versions.values() if (v.origin, v.key) == key]:
            if not version.busy:
                self._drop(version)

    # ------------------------------------------------------------------ versions

    def _version_for(self, origin: Origin, info: ObjectInfo) -> Version:
        identity = (origin.identity, info.key, info.etag)
        version = self._by_identity.get(identity)
        if version is not None and version.alive:
            return version
        vid = version_id(*identity)
        while vid in self._versions:  # another identity with the same 63-bit id: astronomically rare
            vid = (vid + 1) & ((1 << 63) - 1)
        version = Version(
            vid=vid,
            origin=origin.identity,
            key=info.key,
            etag=info.etag,
            size=info.size,
            mtime=info.mtime,
            block_size=self.block_size,
            last_access=time.time(),
            pinned=self.pins.matches(origin.identity, info.key),
        )
        self.disk.create(version.file, info.size)
        self._versions[version.vid] = version
        self._by_identity[identity] = version
        self._dirty.add(version.vid)
        return version

    def _live(self, handle: Handle) -> Version:
        """The handle's version, re-created (same ETag, empty) if it was evicted since the open."""
        if not handle.version.alive:
            handle.version = self._version_for(handle.resolved.origin, handle.info)
        return handle.version

    def _drop(self, version: Version, evicted: bool = False) -> None:
        """Drop a version from every tier (``evicted``: for space, which the policy may remember).

        Present bits are cleared before the file goes.
        """
        if not version.alive:
            return
        version.alive = False
        tier = self.tiers[version.tier]
        tier.used -= version.present_bytes
        if version.pinned:
            self.pinned_bytes -= version.present_bytes
        if not self.loaded.is_set():
            self._dropped_early.add(version.vid)
        version.present[:] = bytes(len(version.present))
        version.present_count = version.present_bytes = 0
        self.memory.discard_version(version.vid, version.nblocks)
        self._versions.pop(version.vid, None)
        identity = (version.origin, version.key, version.etag)
        if self._by_identity.get(identity) is version:
            del self._by_identity[identity]
        tier.policy.remove(version.vid, evicted=evicted)
        self._dirty.discard(version.vid)
        self._deleted.add(version.vid)
        tier.store.remove(version.file)
        if evicted:
            self.metrics.evictions.labels(tier.name).inc()

    def _touch(self, version: Version, admit: bool = False) -> None:
        """Count a read. A version the disk tier has not admitted asks for admission (``admit`` forces it)."""
        version.last_access = time.time()
        version.hits += 1
        tier = self.tiers[version.tier]
        if version.pinned or not version.alive or version.moving:
            pass
        elif version.vid in tier.policy:
            tier.policy.touch(version.vid)
            if version.tier > 0:  # a hit in a slower tier moves the object up (reads go on meanwhile)
                self._promote(version)
        elif admit or tier.policy.admit(version.vid):
            tier.policy.insert(version.vid, version.present_bytes)
            self._spawn(self._write_back(version))
        self._dirty.add(version.vid)

    async def _write_back(self, version: Version) -> None:
        """A version just admitted to disk: store the blocks it already has in the memory tier."""
        for index in range(version.nblocks):
            data = self.memory.get(version.vid, index) if (version.vid, index) in self.memory else None
            if data is not None and self._storable(version, index):
                await self._store(version, index, data)

    def file_path(self, version: Version) -> Path:
        """Where the version's file is now (the tier can change: demotion, promotion)."""
        return self.tiers[version.tier].store.path(version.file)

    def _release(self, version: Version) -> None:
        """A read or fill of ``version`` ended; once nobody uses it, it can be evicted again."""
        version.busy -= 1
        if not version.busy:
            self._notify_space()

    def _notify_space(self) -> None:
        self._space.set()
        self._space = asyncio.Event()

    def touch_threadsafe(self, version: Version) -> None:
        """Record a hit served outside the loop (``CachedFile``'s descriptor fast path)."""
        if self.loop is not None and version.alive:
            self.loop.call_soon_threadsafe(self._touch, version)

    # ------------------------------------------------------------------ reads

    async def pread(self, handle: Handle, offset: int, length: int) -> bytes:
        size = handle.size
        end = min(size, offset + max(0, length))
        if offset >= end:
            return b""
        if offset == handle.last_end:
            handle.window = min(max(2 * handle.window, self.block_size), self.settings.cache.readahead)
        else:
            handle.window = 0
        handle.last_end = end
        version = self._live(handle)
        version.busy += 1
        try:
            span = block_span(offset, end, self.block_size)
            last_ahead = span[-1]
            if handle.window and end < size:
                last_ahead = (min(size, end + handle.window) - 1) // self.block_size
            self._touch(version)
            self._prefetch(version, span[0], span[-1], last_ahead)
            parts = []
            for index in span:
                block = await self._block(version, index)
                start, _ = version.bounds(index)
                parts.append(block[max(0, offset - start) : end - start])
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            self._release(version)

    async def iter_range(self, handle: Handle, start: int, end: int) -> AsyncIterator[bytes]:
        end = min(end, handle.size)
        if start >= end:
            return
        version = self._live(handle)
        version.busy += 1
        try:
            self._touch(version)
            window = max(1, self.settings.cache.readahead // self.block_size)
            span = block_span(start, end, self.block_size)
            for index in span:
                if not version.alive:
                    self._release(version)
                    version = self._live(handle)
                    version.busy += 1
                self._prefetch(version, index, index, min(span[-1], index + window - 1))
                block = await self._block(version, index)
                block_start, _ = version.bounds(index)
                yield block[max(0, start - block_start) : end - block_start]
        finally:
            self._release(version)

    def _missing(self, version: Version, index: int) -> bool:
        return (
            not version.present[index]
            and (version.vid, index) not in self._inflight
            and (version.vid, index) not in self.memory
        )

    def _prefetch(self, version: Version, first: int, last: int, ahead_last: int) -> None:
        """Start fills for the missing blocks of ``[first, last]`` and, past it, up to ``ahead_last``.

        Readahead only starts once at least half of the window beyond ``last`` is uncovered, so a
        sequential reader causes a few large GETs rather than one GET per block.
        """
        if version.size <= self.settings.cache.small_object_size:
            first, last, ahead_last = 0, version.nblocks - 1, version.nblocks - 1
        needed = [i for i in range(first, last + 1) if self._missing(version, i)]
        ahead = [i for i in range(last + 1, ahead_last + 1) if self._missing(version, i)]
        if 2 * len(ahead) < ahead_last - last:
            ahead = []
        max_run = max(1, self.settings.cache.max_fill // self.block_size)
        for run_first, run_last in contiguous_runs(needed + ahead, max_run):
            loop = asyncio.get_running_loop()
            for index in range(run_first, run_last + 1):
                future: asyncio.Future[bytes] = loop.create_future()
                future.add_done_callback(_consume_exception)
                self._inflight[(version.vid, index)] = future
            self._spawn(self._fill(version, run_first, run_last))

    async def _block(self, version: Version, index: int) -> bytes:
        data = self.memory.get(version.vid, index)
        if data is not None:
            self.metrics.memory_hits.inc()
            return data
        if version.present[index]:
            start, end = version.bounds(index)
            try:
                store = self.tiers[version.tier].store
                data = await asyncio.to_thread(store.read, version.file, start, end - start)
            except FileNotFoundError:
                data = None  # purged while we read: fall through to the origin
            if data is not None:
                self.metrics.disk_hits.inc()
                self.memory.put(version.vid, index, data)
                return data
        key = (version.vid, index)
        if key not in self._inflight:
            self._prefetch(version, index, index, index)
        future = self._inflight[key]
        if key in self._awaited:
            self.metrics.coalesced.inc()
        else:
            self._awaited.add(key)
        self.metrics.disk_misses.inc()
        return await asyncio.shield(future)

    # ------------------------------------------------------------------ fills

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, version: Version, first: int, last: int) -> None:
        """Fetch blocks ``[first, last]`` with one ranged GET, resuming after the last landed block."""
        origin = self._origins[version.origin]
        settings = self.settings.origin
        next_index, attempt = first, 0
        started = time.monotonic()
        version.busy += 1
        try:
            while next_index <= last:
                resume_from = next_index
                try:
                    async with self._origin_slots:
                        await self._stream_run(origin, version, next_index, last)
                    next_index = self._first_pending(version, next_index, last)
                    if next_index <= last:
                        raise OriginUnavailable(f"origin {origin.name} sent a short body for {version.key}")
                except (ObjectNotFound, VersionChanged) as exc:
                    self._forget((version.origin, version.key))
                    self._fail(version, next_index, last, exc)
                    return
                except Exception as exc:
                    # Blocks that landed before the failure are kept; the retry asks only for the rest,
                    # and progress earns the run a fresh set of retries.
                    next_index = self._first_pending(version, next_index, last)
                    attempt = 1 if next_index > resume_from else attempt + 1
                    timeout = isinstance(exc, TimeoutError | OriginTimeout)
                    self.metrics.origin_errors.labels(origin.name, "timeout" if timeout else "error").inc()
                    if attempt > settings.retries:
                        error: TesseraError = (
                            OriginTimeout(f"origin {origin.name} timed out reading {version.key}")
                            if timeout
                            else OriginUnavailable(
                                f"origin {origin.name} failed reading {version.key}: {exc}"
                            )
                        )
                        self._fail(version, next_index, last, error)
                        return
                    await asyncio.sleep(_backoff(attempt, settings.backoff, settings.max_backoff))
        finally:
            self._release(version)
            self._fail(version, next_index, last, OriginUnavailable("fill cancelled"))
            self.metrics.fill_seconds.observe(time.monotonic() - started)

    def _first_pending(self, version: Version, first: int, last: int) -> int:
        """The first block of ``[first, last]`` whose fill has not delivered it yet."""
        index = first
        while index <= last:
            future = self._inflight.get((version.vid, index))
            if future is not None and not future.done():
                break
            index += 1
        return index

    async def _stream_run(self, origin: Origin, version: Version, first: int, last: int) -> None:
        """One ranged GET for blocks ``[first, last]``, handing each block on as soon as it is complete."""
        timeout = self.settings.origin.read_timeout
        start, end = version.bounds(first)[0], version.bounds(last)[1]
        self.metrics.origin_requests.labels(origin.name, "GET").inc()
        async with asyncio.timeout(timeout):
            # Chunks of a whole block: a partial block is dropped on failure anyway, and fewer chunks
            # mean less per-chunk overhead on the loop.
            body = await origin.read_range(
                version.key, start, end, version.etag, chunk_size=version.block_size
            )
        chunks = body.chunks
        buffer = bytearray()
        index = first
        try:
            while index <= last:
                async with asyncio.timeout(timeout):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                self.metrics.origin_bytes.labels(origin.name).inc(len(chunk))
                buffer += chunk
                while index <= last and len(buffer) >= version.block_length(index):
                    length = version.block_length(index)
                    data = bytes(buffer[:length])
                    del buffer[:length]
                    await self._land(version, index, data)
                    index += 1
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]

    async def _land(self, version: Version, index: int, data: bytes) -> None:
        """A block arrived: hand it to every waiter at once, then make it durable on disk."""
        key = (version.vid, index)
        if version.alive:
            self.memory.put(version.vid, index, data)
        future = self._inflight.get(key)
        if future is not None and not future.done():
            future.set_result(data)
        try:
            if self._storable(version, index):
                await self._store(version, index, data)
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
                self._awaited.discard(key)
            stored = self._stored.pop(key, None)
            if stored is not None and not stored.done():
                stored.set_result(None)

    def _storable(self, version: Version, index: int) -> bool:
        """Whether a landed block goes to disk: a live, admitted (or pinned) version not being moved."""
        if not version.alive or version.moving or version.present[index]:
            return False
        return version.pinned or version.vid in self.tiers[version.tier].policy

    async def _store(self, version: Version, index: int, data: bytes) -> None:
        length = len(data)
        for attempt in range(2):
            tier = self.tiers[version.tier]
            if not await self._reserve(version, length):
                break
            try:
                await asyncio.to_thread(tier.store.write, version.file, version.bounds(index)[0], data)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    log.warning("cannot write cache file %s: %s; serving uncached", version.file, exc)
                    break
                if attempt == 0:
                    # The filesystem is fuller than our accounting (other users of the disk): make room.
                    self._scavenge(version.tier, length, exclude=version, force=True)
                continue
            finally:
                tier.reserved -= length
                if version.pinned:
                    self._pin_reserved -= length
            if version.alive and not version.moving and tier is self.tiers[version.tier]:
                added = version.mark_present(index)
                tier.used += added
                if version.pinned:
                    self.pinned_bytes += added
                else:
                    tier.policy.resize(version.vid, version.present_bytes)
                self._dirty.add(version.vid)
                self._publish_usage()
            return
        self.metrics.bypassed.inc(length)

    async def _until_stored(self, version: Version, index: int) -> None:
        key = (version.vid, index)
        if key not in self._stored:
            self._stored[key] = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._stored[key])

    def _fail(self, version: Version, first: int, last: int, error: Exception) -> None:
        for index in range(first, last + 1):
            future = self._inflight.pop((version.vid, index), None)
            self._awaited.discard((version.vid, index))
            if future is not None and not future.done():
                future.set_exception(error)

    async def _retrying(self, origin: Origin, method: str, call: Callable[[], Awaitable[T]]) -> T:
        settings = self.settings.origin
        attempt = 0
        while True:
            self.metrics.origin_requests.labels(origin.name, method).inc()
            try:
                async with self._origin_slots, asyncio.timeout(settings.read_timeout):
                    return await call()
            except (ObjectNotFound, VersionChanged):
                raise
            except Exception as exc:
                attempt += 1
                timeout = isinstance(exc, TimeoutError)
                self.metrics.origin_errors.labels(origin.name, "timeout" if timeout else "error").inc()
                if attempt > settings.retries:
                    if timeout:
                        raise OriginTimeout(f"origin {origin.name} did not answer in time") from exc
                    raise OriginUnavailable(f"origin {origin.name} failed: {exc}") from exc
                await asyncio.sleep(_backoff(attempt, settings.backoff, settings.max_backoff))

    # ------------------------------------------------------------------ space

    async def _reserve(self, version: Version, length: int) -> bool:
        """Promise ``length`` bytes of the version's tier to a write, evicting past the high watermark.

        When nothing can be evicted right now (every candidate is being read or filled), the write
        waits up to ``cache.fill_wait`` for room instead of overshooting the limit; after that the
        block is served without being cached.
        """
        deadline = time.monotonic() + self.settings.cache.fill_wait
        while True:
            tier = self.tiers[version.tier]
            if version.pinned and self.pinned_bytes + self._pin_reserved + length > self.pin_limit:
                return False
            in_use = False
            if tier.above_high(length):
                in_use = self._scavenge(version.tier, length, exclude=version)
            if tier.fits(length):
                tier.reserved += length
                if version.pinned:
                    self._pin_reserved += length
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not (in_use or tier.leaving):
                return False  # nothing will free up by waiting
            freed = self._space
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), remaining)

    def _scavenge(self, number: int, incoming: int, exclude: Version | None, force: bool = False) -> bool:
        """Evict from tier ``number`` in policy order until it is under its low watermark.

        From a tier with a slower one behind it, victims are demoted (moved) rather than dropped.
        Returns whether candidates were passed over because they are in use (room may come later).
        """
        tier = self.tiers[number]
        demote = number + 1 < len(self.tiers)
        in_use = False
        for vid in tier.policy.victims():
            if tier.committed(incoming) <= tier.target and not force:
                break
            version = self._versions.get(vid)
            if version is None or version.tier != number:
                tier.policy.remove(vid)
                continue
            if version is exclude:
                continue
            if version.busy or version.moving:
                in_use = True
                continue
            if demote and version.present_bytes:
                self._start_move(version, number + 1)
            else:
                self._drop(version, evicted=True)
            force = False
        self._publish_usage()
        return in_use

    def _promote(self, version: Version) -> None:
        self._start_move(version, version.tier - 1)

    def _start_move(self, version: Version, target: int) -> None:
        source = self.tiers[version.tier]
        source.policy.remove(version.vid, evicted=target > version.tier)
        version.moving = True
        source.leaving += version.present_bytes
        self._spawn(self._move(version, target, version.present_bytes))

    async def _move(self, version: Version, target: int, nbytes: int) -> None:
        """Copy a version's present blocks to another tier, then switch it over and free the old file."""
        source_number = version.tier
        source, destination = self.tiers[source_number], self.tiers[target]
        reserved = False
        try:
            if destination.above_high(nbytes):
                self._scavenge(target, nbytes, exclude=version)
            if not destination.fits(nbytes):
                if target > source_number:  # no room further down: the demotion becomes an eviction
                    self._drop(version, evicted=True)
                return
            destination.reserved += nbytes
            reserved = True
            ranges = [
                (version.bounds(a)[0], version.bounds(b)[1])
                for a, b in contiguous_runs(
                    [i for i, bit in enumerate(version.present) if bit], version.nblocks
                )
            ]
            await asyncio.to_thread(
                copy_blocks, source.store, destination.store, version.file, version.size, ranges
            )
            if not version.alive:
                destination.store.remove(version.file)
                return
            source.used -= version.present_bytes
            destination.used += version.present_bytes
            version.tier = target
            destination.policy.insert(version.vid, version.present_bytes)
            source.store.remove(version.file)
            self._dirty.add(version.vid)
        except Exception:
            log.exception("moving %s to tier %s failed", version.key, destination.name)
            if version.alive and version.tier == source_number:
                source.policy.insert(version.vid, version.present_bytes)
        finally:
            version.moving = False
            source.leaving -= nbytes
            if reserved:
                destination.reserved -= nbytes
            self._publish_usage()
            self._notify_space()

    def _publish_usage(self) -> None:
        for tier in self.tiers:
            self.metrics.cache_bytes.labels(tier.name).set(tier.used)
        self.metrics.cache_bytes.labels("memory").set(self.memory.used)
        self.metrics.cache_objects.set(len(self._versions))

    # ------------------------------------------------------------------ persistence

    async def _flush(self) -> None:
        if self._index is None or not (self._dirty or self._deleted):
            return
        rows = []
        for vid in self._dirty:
            version = self._versions.get(vid)
            if version is None:
                continue
            meta = self._meta.get((version.origin, version.key))
            validated = meta.validated_at if meta and meta.info.etag == version.etag else 0.0
            rows.append(VersionRow.of(version, validated))
        deletes = list(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        try:
            await asyncio.to_thread(self._index.apply, rows, deletes)
        except sqlite3.OperationalError as exc:
            # Not written: keep the batch for the next flush. A full filesystem gets room made first.
            self._dirty.update(row.vid for row in rows if row.vid in self._versions)
            self._deleted.update(deletes)
            if "full" in str(exc):
                self._scavenge(0, 0, exclude=None, force=True)
            raise

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cache.index_flush_interval)
            try:
                await self._flush()
            except Exception:
                log.exception("writing the cache index failed; will retry")

    async def _verify(self) -> None:
        """Bring the disk in line with the index after a restart, in the background.

        Bytes written after the last index flush of a killed process are on disk but not in the index;
        they are punched out so the usage figures match the disk. Files the index does not know are
        removed; versions whose file vanished are dropped.
        """
        for version in list(self._versions.values()):
            await asyncio.sleep(0)
            if not version.alive or version.busy or version.moving:
                continue
            store = self.tiers[version.tier].store
            allocated = await asyncio.to_thread(store.allocated, version.file)
            if allocated < 0:
                self._drop(version)
            elif allocated > version.present_bytes + 4096 * (version.nblocks - version.present_count + 1):
                holes = [
                    (version.bounds(a)[0], version.bounds(b)[1])
                    for a, b in contiguous_runs(
                        [i for i in range(version.nblocks) if not version.present[i]], version.nblocks
                    )
                ]
                if not version.busy and not version.moving:
                    await asyncio.to_thread(store.punch, version.file, holes)
        for number, tier in enumerate(self.tiers):
            names = await asyncio.to_thread(lambda store=tier.store: list(store.walk()))
            # taken after the walk, with no await until the end: files created meanwhile are known
            known = {v.file for v in self._versions.values() if v.tier == number or v.moving}
            for name in names:
                if name not in known:
                    tier.store.remove(name)
        self._publish_usage()
        self.verified.set()


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def _lock_directory(root: Path) -> int:
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise CacheLocked(
            f"cache directory {root} is in use by another process (pid {owner or '?'})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
