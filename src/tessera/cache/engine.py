"""The cache engine: every consumer (files API, IIIF, FUSE, CLI) reads objects through it.

One asyncio event loop owns all engine state, so the bookkeeping needs no locks; disk I/O runs in
worker threads and origin I/O is async. ``CacheEngine`` is a facade over parts that each own their
state, passed what they need:

* ``VersionTable`` (``table.py``): the resident index, every version's numbers in columns by slot;
* ``Catalog`` (``catalog.py``): sizes and ETags of objects, kept for recently asked ones within a
  byte budget (``metadata.py``), trusted for ``metadata_ttl`` and then revalidated with one HEAD
  however many readers ask; it reports objects that changed, whose old versions the engine drops;
* ``Fills`` (``fills.py``): missing blocks fetched in contiguous runs with one ranged GET each, sent
  with ``If-Match`` so the bytes of two versions never mix; one fill per block, whose waiters all get
  it the moment it lands; ``Retry`` (``retry.py``) is the one retry policy;
* ``Space`` (``space.py``): tiers, reservations, the scavenger, moves between tiers, the pin budget;
* ``IndexSync`` (``index_sync.py``): the SQLite index loaded at start, written in batches, and the
  disk checked against it;
* ``Pinning`` (``pins.py``): pins, their rows, and which versions they cover (``targets.py``: what a
  path names for purge and pin);
* ``MemoryTier`` (``memory.py``).

What stays here is the versions' lifecycle (register, touch, release, drop) and the read paths.

Consumers use ``open`` and the ``Handle`` it returns (``handle.py``), ``CachedFile`` for blocking
code (``cached_file.py``), and the operations below; nothing else of the package.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tessera.cache.blocks import block_span
from tessera.cache.catalog import Catalog
from tessera.cache.derivatives import DERIVATIVES, DerivativeOrigin
from tessera.cache.diskstore import read_block
from tessera.cache.fills import Fills
from tessera.cache.handle import Handle
from tessera.cache.index_sync import IndexSync
from tessera.cache.memory import MemoryTier
from tessera.cache.pins import Pinning, PinSet
from tessera.cache.policy import EvictionPolicy, Fingerprint, keyed_policy, make_policy
from tessera.cache.retry import Retry
from tessera.cache.space import Space
from tessera.cache.table import BLOCKS_IN_INDEX, IN_INDEX, MOVING, PINNED, SUPERSEDED, VersionTable
from tessera.cache.targets import Target
from tessera.cache.tiers import DiskTier
from tessera.cache.version import UNCHECKED, Version, file_name, version_id
from tessera.config import Settings
from tessera.errors import CacheFull, ObjectNotFound, TesseraError
from tessera.metrics import Metrics
from tessera.namespace import Namespace
from tessera.origins import ObjectInfo, Origin

log = logging.getLogger(__name__)

#: Views of versions kept for reuse (``version_for``); the set is simply emptied when full.
_VIEWS = 4096
#: ``usage_by_origin`` scans the index at most this often (seconds).
USAGE_TTL = 30.0
#: Builds a disk tier's policy over the table's slots (tests and benchmarks pass their own).
PolicyFactory = Callable[[Fingerprint], EvictionPolicy]


class SharedAdmission(Protocol):
    """Reads counted beyond this process (a cluster's Redis: ``tessera.cluster.admission``)."""

    def counted(self, vid: int) -> bool:
        """Note a read of a version the disk tier has not admitted (without waiting); True once the
        shared count has reached ``cache.admit_after``."""
        ...


class CacheEngine:
    def __init__(
        self,
        settings: Settings,
        namespace: Namespace | None = None,
        metrics: Metrics | None = None,
        policy: PolicyFactory | None = None,
        admission: SharedAdmission | None = None,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.namespace = namespace or Namespace(
            settings.mounts, settings.origin, settings.cache.small_object_size, settings.storage
        )
        self.metrics = metrics or Metrics()
        cache = settings.cache
        self.block_size = cache.block_size
        self.table = VersionTable()
        fingerprint = self.table.vid.__getitem__
        self.memory = MemoryTier(cache.memory_size, keyed_policy(cache.memory_policy, cache.memory_size))
        fsync = cache.fsync == "always"
        high, low = cache.high_watermark, cache.low_watermark
        # Policies size their queues by what the tier holds after a scavenge: the low watermark.
        first = (
            policy or (lambda f: make_policy(cache.policy, int(cache.disk_size * low), f, cache.admit_after))
        )(fingerprint)
        #: Disk tiers, fastest first: evictions from one tier demote into the next; hits promote back.
        tiers = [DiskTier.open("disk", Path(cache.dir), cache.disk_size, first, high, low, fsync)]
        if cache.second_dir is not None:
            second = make_policy(cache.policy, int(cache.second_size * low), fingerprint)
            tiers.append(
                DiskTier.open("disk2", Path(cache.second_dir), cache.second_size, second, high, low, fsync)
            )
        self.tiers = tiers
        self.disk_limit = cache.disk_size
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[Any]] = []
        self.space = Space(
            cache,
            tiers,
            self.table,
            self.memory,
            self.metrics,
            self._spawn,
            drop=self._drop_slot,
            changed=lambda slot: self.sync.touched(slot),
            blocks_changed=lambda version: self.sync.blocks_changed(version),
            present_ranges=lambda slot: self.sync.present_ranges(slot),
        )
        self.sync = IndexSync(
            Path(cache.dir), self.table, self.space, self._drop_slot, lambda v: self.catalog.validated_at(v)
        )
        self._derivative_origin = DerivativeOrigin()
        self._origins: dict[str, Origin] = {
            self.namespace.origin(m).identity: self.namespace.origin(m) for m in self.namespace.mounts
        }
        self._origins[self._derivative_origin.identity] = self._derivative_origin
        self.metrics.origin_names.update((identity, o.name) for identity, o in self._origins.items())
        self.retry = Retry(settings.origin, self.metrics)
        self.catalog = Catalog(cache, self.metrics, self.table, self.sync, self.retry, self._changed)
        self.fills = Fills(
            settings,
            self.metrics,
            self.memory,
            self.space,
            self.retry,
            self._origins,
            self._spawn,
            release=self._release,
            on_changed=lambda origin, key: self.catalog.forget((origin, key)),
        )
        self.pins = PinSet()
        self.pinning = Pinning(self.pins, self.table, self.space, self.sync, self._unindexed)
        #: Versions registered by this process that have no index row yet (their strings are only
        #: here): purge and ETag changes find them through this, the rest through the index.
        self._fresh: dict[int, Version] = {}
        #: Views of recently used versions by id, so a hit does not build one afresh.
        self._views: dict[int, Version] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._usage: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._usage_scan: asyncio.Future[dict[str, tuple[int, int]]] | None = None
        self._last_gen = 0

    @property
    def disk_used(self) -> int:
        """Bytes held by the first disk tier."""
        return self.tiers[0].used

    @property
    def blocks_in_flight(self) -> int:
        """Blocks being fetched from origins right now (the fills under way)."""
        return self.fills.blocks_in_flight

    def cached_bytes(self, handle: Handle) -> int:
        """Bytes of the handle's version held by the disk tiers (0 if none; also for a version whose
        index row has not loaded since a start yet)."""
        slot = self.table.find(handle.version_id)
        return int(self.table.present_bytes[slot]) if slot >= 0 else 0

    @property
    def loaded(self) -> asyncio.Event:
        """Set once every row of the index is in memory."""
        return self.sync.loaded

    @property
    def verified(self) -> asyncio.Event:
        """Set once the disk has been checked against the index after the start."""
        return self.sync.verified

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Take the cache directory, open the index and start the background tasks."""
        self.loop = asyncio.get_running_loop()
        await self.sync.open()
        assert self.sync.index is not None
        for origin, pattern in await asyncio.to_thread(self.sync.index.load_pins):
            self.pins.add(origin, pattern)
        await self.sync.measure_overhead()
        self.space.publish()
        self._background = [
            asyncio.create_task(self._flush_loop(), name="tessera-index-flush"),
            asyncio.create_task(self._load(), name="tessera-index-load"),
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
            await self.sync.close()
        finally:
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

    async def _load(self) -> None:
        def fill_policies(order: np.ndarray) -> None:
            table = self.table
            flags = np.frombuffer(table.flags, np.uint8)[order]
            # Rows from the index that are not pinned (a version registered meanwhile and not
            # admitted must stay out: the policy decides about it on its reads)
            evictable = (flags & (PINNED | IN_INDEX)) == IN_INDEX
            tiers = np.frombuffer(table.tier, np.uint8)[order]
            sizes = np.frombuffer(table.disk_bytes, np.int64)
            for number, tier in enumerate(self.tiers):
                slots = order[evictable & (tiers == number)]
                slots = slots[[s not in tier.policy for s in slots.tolist()]] if len(tier.policy) else slots
                tier.policy.load(slots, sizes[slots].copy())

        await self.sync.load(fill_policies)
        self.space.publish()
        for number, tier in enumerate(self.tiers):
            if tier.above_high(0):
                self.space.scavenge(number, 0)
        if self.settings.cache.verify_on_start:
            await self.sync.verify()
        else:
            self.sync.verified.set()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cache.index_flush_interval)
            try:
                await self.sync.flush()
                self._unindexed()  # let go of the views of versions the flush saved
                await self.sync.measure_overhead()
            except Exception:
                log.exception("writing the cache index failed; will retry")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ public API

    async def stat(self, path: str) -> ObjectInfo:
        resolved = self.namespace.resolve(path)
        return (await self.catalog.current(resolved)).info

    async def open(self, path: str) -> Handle:
        """Open the current version of ``path`` (revalidated once its metadata is older than the TTL)."""
        resolved = self.namespace.resolve(path)
        meta = await self.catalog.current(resolved)
        if meta.vid < 0:
            meta.vid = version_id(resolved.origin.identity, meta.info.key, meta.info.etag)
        return Handle(self, resolved, meta.info, meta.vid)

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
        with self._using(handle.version) as version:
            self._touch(version, admit=True)
            window = max(1, 4 * self.settings.cache.max_fill // version.block_size)
            for index in range(version.nblocks):
                self.fills.start(version, index, index, min(version.nblocks - 1, index + window - 1))
                if version.state(index) == UNCHECKED:
                    await self._read_stored(version, index)  # a block failing its check is refetched
                if not version.state(index):
                    await self._block(version, index)
                    await self.fills.until_stored(version, index)
            if not version.complete:
                raise CacheFull(f"{path} ({version.size} bytes) does not fit in the disk tier right now")
            return self.file_path(version)

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
                await self.catalog.current(resolved)
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
        target = Target.of(self.namespace.resolve_prefix(path), path)
        rows = await self.sync.rows_under(target.origin, target.key, target.prefix)
        dropped = 0
        for row in rows:
            slot = self.table.find(row.vid)
            if slot >= 0 and self.table.gen[slot] == row.gen:
                self._drop_slot(slot, False)
                dropped += 1
        for version in self._unindexed():
            if version.origin == target.origin and target.matches(version.key):
                self._drop_slot(version.slot, False)
                dropped += 1
        self.space.notify()
        self.catalog.forget_matching(target.origin, target.matches)
        self.space.publish()
        return dropped

    async def stats(self, top: int = 10) -> dict[str, Any]:
        def sample(name: str, **labels: str) -> int:
            return int(self.metrics.registry.get_sample_value(name, labels) or 0)

        table = self.table
        ranked = table.most_hit(top)
        names = {v.slot: (v.origin, v.key) for v in self._unindexed()}
        rows = await self.sync.rows_by_id([table.vid[s] for s in ranked if s not in names])
        names.update((table.find(row.vid), (row.origin, row.key)) for row in rows)
        counts = table.tier_counts(len(self.tiers))
        return {
            "tiers": {
                "memory": {"bytes": self.memory.used, "limit": self.memory.limit},
                **{
                    tier.name: {"bytes": tier.used, "limit": tier.limit, "objects": counts[number]}
                    for number, tier in enumerate(self.tiers)
                },
            },
            "pinned": {
                "bytes": self.space.pinned_bytes,
                "limit": self.space.pin_limit,
                "pins": [{"origin": origin, "pattern": pattern} for origin, pattern in self.pins],
            },
            "metadata": {
                "bytes": self.catalog.meta.used,
                "limit": self.catalog.meta.max_bytes,
                "entries": len(self.catalog.meta),
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
                {
                    "origin": names[s][0],
                    "key": names[s][1],
                    "size": table.size[s],
                    "cached": table.present_bytes[s],
                    "hits": table.hits[s],
                    "tier": self.tiers[table.tier[s]].name,
                }
                for s in ranked
                if s in names
            ],
        }

    async def usage_by_origin(self) -> dict[str, tuple[int, int]]:
        """``origin identity -> (versions, bytes)`` held by the disk tiers: from a scan of the index
        (redone at most every ``USAGE_TTL`` seconds, however many ask), plus versions not in it yet."""
        now = time.monotonic()
        if self._usage is None or now - self._usage[0] > USAGE_TTL:
            if self._usage_scan is None or self._usage_scan.done():
                self._usage_scan = asyncio.ensure_future(self.sync.usage_by_origin())
            scanned = await asyncio.shield(self._usage_scan)
            self._usage = (time.monotonic(), scanned)
        usage = dict(self._usage[1])
        for version in self._unindexed():
            cached = self.table.present_bytes[version.slot]
            if cached:
                count, total = usage.get(version.origin, (0, 0))
                usage[version.origin] = (count + 1, total + cached)
        return usage

    # ------------------------------------------------------------------ pins

    async def pin(self, path: str) -> tuple[int, int]:
        """Pin an object or prefix (kept out of eviction, within ``cache.pin_size``) and warm it.

        An object path that names no object is pinned as a prefix. Returns what ``warm`` returns. All or
        nothing: if the warm fails for any reason (the objects do not fit in the budget, which raises
        ``CacheFull``; a missing object; an origin error), a pin this call added is withdrawn again, from
        memory and from the index, and the error is raised.
        """
        await self.loaded.wait()
        resolved = self.namespace.resolve_prefix(path)
        pattern = Target.of(resolved, path).pattern
        if pattern and not pattern.endswith("/"):
            try:
                await self.catalog.current(resolved)
            except ObjectNotFound:
                pattern += "/"
        origin = resolved.origin.identity
        added = await self.pinning.add(origin, pattern)
        try:
            return await self.warm(path)
        except BaseException as exc:
            if added:
                await self.pinning.remove(origin, pattern)
            if isinstance(exc, CacheFull):
                raise CacheFull(
                    f"pinning {path} needs more than the pin budget allows "
                    f"({self.space.pinned_bytes} of {self.space.pin_limit} bytes in use; see cache.pin_size)"
                ) from None
            raise

    async def unpin(self, path: str) -> int:
        """Remove the pin of exactly this object or prefix; its versions become evictable again."""
        await self.loaded.wait()
        resolved = self.namespace.resolve_prefix(path)
        pattern = Target.of(resolved, path).pattern
        origin = resolved.origin.identity
        for candidate in (pattern, pattern + "/"):
            if (origin, candidate) in self.pins:
                return await self.pinning.remove(origin, candidate)
        return 0

    # ------------------------------------------------------------------ derivatives

    async def get_derivative(self, key: str, tag: str) -> bytes | None:
        """The derivative stored under ``key`` for source version ``tag``, if it is still cached.

        A derivative is stored as an object version of the internal origin ``tessera:derivatives``
        whose key names what it is (for example the canonical IIIF request) and whose tag is the
        source's ETag, so a new version of the source never gets an old derivative.
        """
        vid = version_id(DERIVATIVES, key, tag)
        slot = self.table.find(vid)
        if slot < 0:
            return None
        info = ObjectInfo(key=key, size=self.table.size[slot], etag=tag, mtime=0.0)
        with self._using(self.version_for(self._derivative_origin, info, vid)) as version:
            if not version.all_present:
                return None
            self._touch(version)
            try:
                parts = [await self._block(version, index) for index in range(version.nblocks)]
            except (OSError, TesseraError):
                return None
        return b"".join(parts)

    async def put_derivative(self, key: str, tag: str, data: bytes) -> None:
        info = ObjectInfo(key=key, size=len(data), etag=tag, mtime=time.time())
        vid = version_id(DERIVATIVES, key, tag)
        with self._using(self.version_for(self._derivative_origin, info, vid)) as version:
            if version.all_present:
                return
            self._touch(version, admit=True)
            for index in range(version.nblocks):
                start, end = version.bounds(index)
                block = data[start:end]
                self.memory.put(version.vid, index, block)
                if self.space.storable(version, index):
                    await self.fills.store(version, index, block)

    # ------------------------------------------------------------------ changed objects

    def note_listing(self, origin: Origin, infos: list[ObjectInfo], listed_at: float) -> None:
        """Take object metadata from a listing, so a ``stat`` of each listed object needs no HEAD."""
        self.catalog.note_listing(origin, infos, listed_at)

    async def superseded(self, path: str, info: ObjectInfo | None) -> None:
        """``path`` was just written (``info``: its new version) or deleted (None) through Tessera.

        Reads from now on see the change at once, not after ``metadata_ttl``: the new metadata counts
        as validated, and the object's other versions are dropped; one being read is only taken out
        of lookups and dropped when its last reader is done (readers in flight finish on the version
        they started). Derivatives of an old version are keyed by its ETag: unreachable from now on.
        """
        await self.loaded.wait()
        resolved = self.namespace.resolve(path)
        key = (resolved.origin.identity, resolved.key)
        self.catalog.replace(key, info)
        keep = info.etag if info is not None else None
        slots = [v.slot for v in self._unindexed() if (v.origin, v.key) == key and v.etag != keep]
        for row in await self.sync.rows_under(key[0], key[1], None):
            slot = self.table.find(row.vid)
            if row.etag != keep and slot >= 0 and self.table.gen[slot] == row.gen:
                slots.append(slot)
        for slot in slots:
            if self.table.busy[slot]:
                self.table.flags[slot] |= SUPERSEDED
            else:
                self._drop_slot(slot, False)
        self.space.publish()

    def revalidate_all(self, before: float | None = None) -> None:
        """Take every object's metadata confirmed before ``before`` (default: now) as stale, so each
        next read checks the origin's ETag once; cached blocks of unchanged versions stay usable.

        For changes made elsewhere that this process may have missed (a cluster node back after the
        invalidation stream moved past it)."""
        self.catalog.revalidate_before(time.time() if before is None else before)

    def _changed(self, key: tuple[str, str]) -> None:
        """The object changed or vanished: drop the versions of it nobody is reading.

        Only that object's versions are looked at: those not in the index yet at once, the others
        through the index (in the background).
        """
        for version in self._unindexed():
            if (version.origin, version.key) == key and not version.busy:
                self._drop_slot(version.slot, False)
        if self.sync.index is not None:
            self._spawn(self._drop_versions_of(key))

    async def _drop_versions_of(self, key: tuple[str, str]) -> None:
        rows = await self.sync.rows_under(key[0], key[1], None)
        current = self.catalog.etag(key)
        for row in rows:
            if row.etag == current:
                continue
            slot = self.table.find(row.vid)
            if slot >= 0 and self.table.gen[slot] == row.gen and not self.table.busy[slot]:
                self._drop_slot(slot, False)
        self.space.publish()

    # ------------------------------------------------------------------ versions

    def version_for(self, origin: Origin, info: ObjectInfo, vid: int) -> Version:
        """The live version of ``info`` (id ``vid``), registered afresh (no blocks, no file yet) if there
        is none; its block state is in memory once this returns."""
        view = self._views.get(vid)
        if view is not None and view.table.gen[view.slot] == view.gen:  # still alive
            return view
        table = self.table
        slot = table.find(vid)
        if slot < 0:
            pinned = PINNED if self.pins.matches(origin.identity, info.key) else 0
            slot = table.add(vid, self._next_gen(), info.size, self.block_size, flags=pinned)
            view = Version(table, slot, origin.identity, info.key, info.etag, info.mtime)
            self._fresh[slot] = view
        else:
            if table.flags[slot] & BLOCKS_IN_INDEX:
                self.sync.load_blocks(slot)
            view = Version(table, slot, origin.identity, info.key, info.etag, info.mtime)
        if len(self._views) >= _VIEWS:
            self._views.clear()
        self._views[vid] = view
        return view

    def _unindexed(self) -> list[Version]:
        """The live versions that have no index row yet (see ``_fresh``)."""
        for slot, version in list(self._fresh.items()):
            if not version.alive or self.table.flags[slot] & IN_INDEX:
                del self._fresh[slot]
        return list(self._fresh.values())

    def _next_gen(self) -> int:
        """A file incarnation number never used before, in this process or an earlier one."""
        self._last_gen = max(time.time_ns(), self._last_gen + 1)
        return self._last_gen

    def _drop_slot(self, slot: int, evicted: bool = False) -> None:
        """Drop a version from every tier (``evicted``: for space, which the policy may remember).

        The slot is freed (views of it turn dead) before the file goes.
        """
        table = self.table
        gen = table.gen[slot]
        if not gen:
            return
        number, vid = table.tier[slot], table.vid[slot]
        tier = self.tiers[number]
        self.space.released(slot)
        self.memory.discard_version(vid, -(-table.size[slot] // table.block_size[slot]))
        tier.policy.remove(slot, evicted=evicted)
        self.sync.dropped(slot)
        self._fresh.pop(slot, None)
        table.free(slot)
        tier.store.remove(file_name(vid, gen))
        if evicted:
            self.metrics.evictions.labels(tier.name).inc()

    def _touch(self, version: Version, admit: bool = False) -> None:
        """Count a read. A version the disk tier has not admitted asks for admission (``admit`` forces it)."""
        table, slot = self.table, version.slot
        if not version.alive:
            return
        table.last_access[slot] = int(time.time())
        if table.hits[slot] < 0xFFFFFFFF:
            table.hits[slot] += 1
        number = table.tier[slot]
        tier = self.tiers[number]
        if table.flags[slot] & (PINNED | MOVING):
            pass
        elif slot in tier.policy:
            tier.policy.touch(slot)
            if number > 0:  # a hit in a slower tier moves the object up (reads go on meanwhile)
                self.space.start_move(slot, number - 1)
        else:
            shared = (
                self.admission is not None and not number and self.admission.counted(int(table.vid[slot]))
            )
            if admit or tier.policy.admit(slot) or shared:
                tier.policy.insert(slot, table.disk_bytes[slot])
                self._spawn(self._write_back(version))
        self.sync.touched(slot)

    async def _write_back(self, version: Version) -> None:
        """A version just admitted to disk: store the blocks it already has in the memory tier."""
        for index in range(version.nblocks):
            data = self.memory.get(version.vid, index) if (version.vid, index) in self.memory else None
            if data is not None and self.space.storable(version, index):
                await self.fills.store(version, index, data)

    def file_path(self, version: Version) -> Path:
        """Where the version's file is now (the tier can change: demotion, promotion)."""
        store = self.tiers[version.tier].store
        return store.path(version.file) if version.size else store.empty

    def _using(self, version: Version) -> _InUse:
        """Hold a version for a read or a write (``with``): a version in use is never evicted."""
        return _InUse(version, self._release)

    def _release(self, version: Version) -> None:
        """A read or fill of ``version`` ended; once nobody uses it, it can be evicted again.

        A version that then holds nothing on disk and is not waiting for its first block (not
        admitted, not pinned) is forgotten, so reads that never reach the disk tier leave no state.
        """
        if not version.alive:
            self.space.notify()
            return
        table, slot = self.table, version.slot
        table.busy[slot] -= 1
        if table.busy[slot]:
            return
        if table.flags[slot] & SUPERSEDED or (
            not table.present_count[slot]
            and not table.flags[slot] & (PINNED | MOVING)
            and slot not in self.tiers[table.tier[slot]].policy
            and not self.sync.pending(slot)
        ):
            self._drop_slot(slot)
        self.space.notify()

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
        window = handle.pattern.observe(offset, end)
        with self._using(handle.version) as version:
            block_size = version.block_size
            span = block_span(offset, end, block_size)
            last_ahead = span[-1]
            if window and end < size:
                last_ahead = (min(size, end + window) - 1) // block_size
            self._touch(version)
            self.fills.start(version, span[0], span[-1], last_ahead, at=offset)
            parts = []
            for index in span:
                start, stop = version.bounds(index)
                lo, hi = max(0, offset - start), min(end, stop) - start
                # A block only a fill can give serves part of it as soon as that part has arrived
                # (a reader of the whole block waits for it and shares its bytes object: no copy).
                early = self.fills.early(version, index) if hi - lo < stop - start else None
                if early is not None:
                    parts.append(await early.read(lo, hi))
                    continue
                block = await self._block(version, index)
                parts.append(block[lo:hi])
            return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_range(self, handle: Handle, start: int, end: int) -> AsyncIterator[bytes]:
        end = min(end, handle.size)
        if start >= end:
            return
        version = handle.version
        version.busy += 1
        try:
            self._touch(version)
            window = max(1, self.settings.cache.readahead // version.block_size)
            span = block_span(start, end, version.block_size)
            for index in span:
                if not version.alive:
                    self._release(version)
                    version = handle.version
                    version.busy += 1
                self.fills.start(version, index, index, min(span[-1], index + window - 1))
                block = await self._block(version, index)
                block_start, _ = version.bounds(index)
                yield block[max(0, start - block_start) : end - block_start]
        finally:
            self._release(version)

    async def _block(self, version: Version, index: int) -> bytes:
        while True:
            data = self.memory.get(version.vid, index)
            if data is not None:
                self.metrics.memory_hits.inc()
                self.metrics.block_read(version.origin, True)
                return data
            if version.state(index):
                data = await self._read_stored(version, index)
                if data is not None:
                    self.metrics.disk_hits.inc()
                    self.metrics.block_read(version.origin, True)
                    self.memory.put(version.vid, index, data)
                    return data
            if self.fills.in_flight(version, index) or self.fills.missing(version, index):
                return await self.fills.wait(version, index)

    async def _read_stored(self, version: Version, index: int) -> bytes | None:
        """A present block from disk, checked against its CRC-32 if it is ``UNCHECKED``.

        None when it cannot be served from disk: purged meanwhile, or unreadable or wrong (a block
        lost by a crash or damaged on disk), in which case it is forgotten so a fill replaces it.
        """
        start, end = version.bounds(index)
        store = self.tiers[version.tier].store
        unchecked = version.state(index) == UNCHECKED
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
        if unchecked and version.state(index) == UNCHECKED and not version.check(index, crc):
            log.warning("block %d of cached %s failed its checksum; fetching it again", index, version.key)
            self.metrics.corrupt_blocks.inc()
            self._forget_block(version, index)
            return None
        return data

    def _forget_block(self, version: Version, index: int) -> None:
        if version.alive and not version.moving:
            self.space.forgot_block(version, index)


class _InUse:
    """``CacheEngine._using``: a class rather than a generator, as it wraps every read (a generator
    context manager costs a few microseconds of a hit's budget)."""

    __slots__ = ("_release", "version")

    def __init__(self, version: Version, release: Callable[[Version], None]) -> None:
        self.version = version
        self._release = release

    def __enter__(self) -> Version:
        self.version.busy += 1
        return self.version

    def __exit__(self, *exc: object) -> None:
        self._release(self.version)
