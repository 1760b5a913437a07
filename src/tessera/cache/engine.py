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
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from tessera.cache.blocks import block_span, contiguous_runs
from tessera.cache.derivatives import DerivativeMixin, DerivativeOrigin
from tessera.cache.diskstore import read_block
from tessera.cache.fills import FillMixin, consume_exception
from tessera.cache.handle import Handle
from tessera.cache.index import SqliteIndex
from tessera.cache.memory import MemoryTier
from tessera.cache.partial import PartialBlocks
from tessera.cache.persistence import PersistenceMixin, lock_directory
from tessera.cache.pins import PinSet
from tessera.cache.policy import EvictionPolicy, make_policy
from tessera.cache.space import SpaceMixin
from tessera.cache.tiers import DiskTier
from tessera.cache.version import UNCHECKED, Metadata, Version, version_id
from tessera.config import Settings
from tessera.errors import (
    CacheFull,
    ObjectNotFound,
)
from tessera.metrics import Metrics
from tessera.namespace import Namespace, Resolved
from tessera.origins import ObjectInfo, Origin

log = logging.getLogger(__name__)
T = TypeVar("T")


class CacheEngine(FillMixin, SpaceMixin, PersistenceMixin, DerivativeMixin):
    def __init__(
        self,
        settings: Settings,
        namespace: Namespace | None = None,
        metrics: Metrics | None = None,
        policy: EvictionPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.namespace = namespace or Namespace(
            settings.mounts, settings.origin, settings.cache.small_object_size
        )
        self.metrics = metrics or Metrics()
        cache = settings.cache
        self.root = Path(cache.dir)
        self.block_size = cache.block_size
        self.memory = MemoryTier(cache.memory_size, make_policy(cache.memory_policy, cache.memory_size))
        fsync = cache.fsync == "always"
        high, low = cache.high_watermark, cache.low_watermark
        # Policies size their queues by what the tier holds after a scavenge: the low watermark.
        first_policy = policy or make_policy(cache.policy, int(cache.disk_size * low), cache.admit_after)
        #: Disk tiers, fastest first: evictions from one tier demote into the next; hits promote back.
        self.tiers = [DiskTier.open("disk", self.root, cache.disk_size, first_policy, high, low, fsync)]
        if cache.second_dir is not None:
            second_policy = make_policy(cache.policy, int(cache.second_size * low))
            self.tiers.append(
                DiskTier.open(
                    "disk2", Path(cache.second_dir), cache.second_size, second_policy, high, low, fsync
                )
            )
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
        self._meta: dict[tuple[str, str], Metadata] = {}
        self._versions: dict[int, Version] = {}
        self._by_identity: dict[tuple[str, str, str], Version] = {}
        self._inflight: dict[tuple[int, int], asyncio.Future[bytes]] = {}
        #: Early delivery (partial.py): the bytes of in-flight blocks so far, readable by range.
        self._partials = PartialBlocks()
        #: In-flight blocks someone already waits for: later waiters count as coalesced.
        self._awaited: set[tuple[int, int]] = set()
        #: Waiters for a landed block's disk write to finish (``local_path`` needs the file complete).
        self._stored: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._stat_flights: dict[tuple[str, str], asyncio.Task[ObjectInfo]] = {}
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()
        self._derivative_origin = DerivativeOrigin()
        self._origins: dict[str, Origin] = {
            self.namespace.origin(m).identity: self.namespace.origin(m) for m in self.namespace.mounts
        }
        self._origins[self._derivative_origin.identity] = self._derivative_origin
        self._origin_slots = asyncio.Semaphore(settings.origin.max_concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[Any]] = []
        self.verified = asyncio.Event()
        #: Set once every row of the index is in memory.
        self.loaded = asyncio.Event()
        self._dropped_early: set[int] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._last_gen = 0
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
        self._lock_fd = lock_directory(self.root)
        self._index = await asyncio.to_thread(SqliteIndex, self.root / "index.sqlite")
        if self._index.reset:
            log.warning("cache index %s was of an older format: starting with an empty cache", self.root)
            for tier in self.tiers:
                await asyncio.to_thread(tier.store.clear)
        for origin, pattern in await asyncio.to_thread(self._index.load_pins):
            self.pins.add(origin, pattern)
        # Usage comes from one aggregate query; the rows themselves load in the background, and until
        # they have, a lookup of an object not loaded yet asks the index for that object's rows.
        for number, pinned, nbytes in await asyncio.to_thread(self._index.usage):
            self.tiers[min(number, len(self.tiers) - 1)].used += nbytes
            if pinned:
                self.pinned_bytes += nbytes
        await self._measure_overhead()
        self._publish_usage()
        self._background = [
            asyncio.create_task(self._flush_loop(), name="tessera-index-flush"),
            asyncio.create_task(self._load_index(), name="tessera-index-load"),
        ]

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
            for origin in self._origins.values():
                try:
                    await origin.close()
                except Exception:
                    log.exception("closing origin %s failed", origin.name)

    async def __aenter__(self) -> CacheEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ public API

    async def stat(self, path: str) -> ObjectInfo:
        resolved = self.namespace.resolve(path)
        return await self._current_info(resolved)

    async def open(self, path: str) -> Handle:
        """Open the current version of ``path`` (revalidated once its metadata is older than the TTL)."""
        resolved = self.namespace.resolve(path)
        info = await self._current_info(resolved)
        return Handle(self, resolved, info)

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
        version = handle.version
        version.busy += 1
        try:
            self._touch(version, admit=True)
            window = max(1, 4 * self.settings.cache.max_fill // self.block_size)
            for index in range(version.nblocks):
                self._prefetch(version, index, index, min(version.nblocks - 1, index + window - 1))
                if version.present[index] == UNCHECKED:
                    await self._read_stored(version, index)  # a block failing its check is refetched
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
        targets = await self.objects_at(path)
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

    async def objects_at(self, path: str) -> list[str]:
        """The virtual paths of the object at ``path``, or of every object under that prefix."""
        resolved = self.namespace.resolve_prefix(path)
        if resolved.key and not path.endswith("/"):
            try:
                await self._current_info(resolved)
                return [resolved.path]
            except ObjectNotFound:
                pass
        prefix = resolved.key + "/" if resolved.key and not resolved.key.endswith("/") else resolved.key
        targets = [f"/{resolved.mount}/{info.key}" async for info in resolved.origin.list(prefix)]
        if not targets:
            raise ObjectNotFound(f"nothing at {path}")
        return targets

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
        self._meta[key] = Metadata(info, time.time())
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
            self._meta[key] = Metadata(info, listed_at)

    def _forget(self, key: tuple[str, str]) -> None:
        """The object changed or vanished: drop its metadata and the versions nobody is reading."""
        self._meta.pop(key, None)
        for version in [v for v in self._versions.values() if (v.origin, v.key) == key]:
            if not version.busy:
                self._drop(version)

    # ------------------------------------------------------------------ versions

    def version_for(self, origin: Origin, info: ObjectInfo) -> Version:
        """The live version of ``info``, registered afresh (no blocks, no file yet) if there is none."""
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
            gen=self._next_gen(),
        )
        self._versions[version.vid] = version
        self._by_identity[identity] = version
        return version

    def _next_gen(self) -> int:
        """A file incarnation number never used before, in this process or an earlier one."""
        self._last_gen = max(time.time_ns(), self._last_gen + 1)
        return self._last_gen

    def _drop(self, version: Version, evicted: bool = False) -> None:
        """Drop a version from every tier (``evicted``: for space, which the policy may remember).

        Present bits are cleared before the file goes.
        """
        if not version.alive:
            return
        self._unregister(version)
        tier = self.tiers[version.tier]
        tier.used -= version.disk_bytes
        if version.pinned:
            self.pinned_bytes -= version.disk_bytes
        if not self.loaded.is_set():
            self._dropped_early.add(version.vid)
        version.clear()
        self.memory.discard_version(version.vid, version.nblocks)
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
            tier.policy.insert(version.vid, version.disk_bytes)
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
        store = self.tiers[version.tier].store
        return store.path(version.file) if version.size else store.empty

    def _release(self, version: Version) -> None:
        """A read or fill of ``version`` ended; once nobody uses it, it can be evicted again.

        A version that then holds nothing on disk and is not waiting for its first block (not
        admitted, not pinned) is forgotten, so reads that never reach the disk tier leave no state.
        """
        version.busy -= 1
        if version.busy:
            return
        if (
            version.alive
            and not version.present_count
            and not version.pinned
            and not version.moving
            and version.vid not in self.tiers[version.tier].policy
        ):
            self._unregister(version)
        self._notify_space()

    def _unregister(self, version: Version) -> None:
        """Forget a version's state; a handle still holding it registers a fresh one on its next read."""
        version.alive = False
        self._versions.pop(version.vid, None)
        identity = (version.origin, version.key, version.etag)
        if self._by_identity.get(identity) is version:
            del self._by_identity[identity]

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
        # Sequential if it starts near where the last read ended: readers such as the kernel's FUSE
        # readahead issue several reads of one stream at once, and they may arrive out of order.
        # So a read counts if it starts at (or a little past) the end of the stream read so far, or
        # ends right before its start; re-reading inside it does not.
        reach = max(handle.window, self.block_size)
        forward = 0 <= offset - handle.last_end <= self.block_size
        backward = 0 <= handle.last_start - end <= reach
        if handle.last_end >= 0 and (forward or backward):
            handle.window = min(max(2 * handle.window, self.block_size), self.settings.cache.readahead)
            handle.last_start = min(handle.last_start, offset)
            handle.last_end = max(handle.last_end, end)
        else:
            handle.window = 0
            handle.last_start, handle.last_end = offset, end
        version = handle.version
        version.busy += 1
        try:
            span = block_span(offset, end, self.block_size)
            last_ahead = span[-1]
            if handle.window and end < size:
                last_ahead = (min(size, end + handle.window) - 1) // self.block_size
            self._touch(version)
            self._prefetch(version, span[0], span[-1], last_ahead, at=offset)
            parts = []
            for index in span:
                start, stop = version.bounds(index)
                lo, hi = max(0, offset - start), min(end, stop) - start
                # Early delivery (partial.py): a block only a fill can give serves [lo, hi) as soon as
                # those bytes have arrived, not once the whole block has. (A reader of the whole block
                # waits for it as before and shares its bytes object: no copy per reader.)
                early = self._early_block(version, index) if hi - lo < stop - start else None
                if early is not None:
                    parts.append(await early.read(lo, hi))
                    continue
                block = await self._block(version, index)
                parts.append(block[lo:hi])
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            self._release(version)

    async def iter_range(self, handle: Handle, start: int, end: int) -> AsyncIterator[bytes]:
        end = min(end, handle.size)
        if start >= end:
            return
        version = handle.version
        version.busy += 1
        try:
            self._touch(version)
            window = max(1, self.settings.cache.readahead // self.block_size)
            span = block_span(start, end, self.block_size)
            for index in span:
                if not version.alive:
                    self._release(version)
                    version = handle.version
                    version.busy += 1
                self._prefetch(version, index, index, min(span[-1], index + window - 1))
                block = await self._block(version, index)
                block_start, _ = version.bounds(index)
                yield block[max(0, start - block_start) : end - block_start]
        finally:
            self._release(version)

    async def _read_stored(self, version: Version, index: int) -> bytes | None:
        """A present block from disk, checked against its CRC-32 if it is ``UNCHECKED``.

        None when it cannot be served from disk: purged meanwhile, or unreadable or wrong (a block
        lost by a crash or damaged on disk), in which case it is forgotten so a fill replaces it.
        """
        start, end = version.bounds(index)
        store = self.tiers[version.tier].store
        unchecked = version.present[index] == UNCHECKED
        try:
            data, crc = await asyncio.to_thread(
                read_block, store, version.file, start, end - start, unchecked
            )
        except FileNotFoundError:
            return None  # purged while we read: fall through to the origin
        except OSError as exc:
            log.warning("cannot read block %d of cached %s (%s); fetching it again", index, version.key, exc)
            self._forget_block(version, index)
            return None
        if unchecked and version.present[index] == UNCHECKED and not version.check(index, crc):
            log.warning("block %d of cached %s failed its checksum; fetching it again", index, version.key)
            self.metrics.corrupt_blocks.inc()
            self._forget_block(version, index)
            return None
        return data

    def _forget_block(self, version: Version, index: int) -> None:
        """A present block turned out unusable: account it as absent (a fill will write it again)."""
        if not version.alive or version.moving:
            return
        freed = version.mark_absent(index)
        tier = self.tiers[version.tier]
        tier.used -= freed
        if version.pinned:
            self.pinned_bytes -= freed
        elif version.vid in tier.policy:
            tier.policy.resize(version.vid, version.disk_bytes)
        self._dirty.add(version.vid)
        self._publish_usage()

    def _missing(self, version: Version, index: int) -> bool:
        return (
            not version.present[index]
            and (version.vid, index) not in self._inflight
            and (version.vid, index) not in self.memory
        )

    def _prefetch(
        self, version: Version, first: int, last: int, ahead_last: int, at: int | None = None
    ) -> None:
        """Start fills for the missing blocks of ``[first, last]`` and, past it, up to ``ahead_last``.

        Readahead only starts once at least half of the window beyond ``last`` is uncovered, so a
        sequential reader causes a few large GETs rather than one GET per block. ``at``: the offset
        the reader needs first; a fill whose run starts in that block fetches from there first.
        """
        if version.size <= self.settings.cache.small_object_size:
            first, last, ahead_last, at = 0, version.nblocks - 1, version.nblocks - 1, None
        needed = [i for i in range(first, last + 1) if self._missing(version, i)]
        ahead = [i for i in range(last + 1, ahead_last + 1) if self._missing(version, i)]
        if 2 * len(ahead) < ahead_last - last:
            ahead = []
        max_run = max(1, self.settings.cache.max_fill // self.block_size)
        for run_first, run_last in contiguous_runs(needed + ahead, max_run):
            loop = asyncio.get_running_loop()
            for index in range(run_first, run_last + 1):
                future: asyncio.Future[bytes] = loop.create_future()
                future.add_done_callback(consume_exception)
                self._inflight[(version.vid, index)] = future
            version.busy += 1  # from now, not when the task first runs: the fill holds the version
            split = at if at is not None and at // self.block_size == run_first else None
            self._spawn(self._fill(version, run_first, run_last, split))

    async def _block(self, version: Version, index: int) -> bytes:
        data = self.memory.get(version.vid, index)
        if data is not None:
            self.metrics.memory_hits.inc()
            return data
        if version.present[index]:
            data = await self._read_stored(version, index)
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
