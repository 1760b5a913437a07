"""Retrieve: make objects wholly local for processors on this node, pinned under a lease.

A processor gets the cached file's local path, its size and its SHA-256, and may read the file
directly while the lease runs (the engine never evicts a pinned version; it may replace the object
with a new version if the origin's object changes, but a descriptor opened on the file stays valid).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.cache import CacheEngine
from tessera.errors import VersionChanged
from tessera.lru import LRU
from tessera.storage.leases import Lease, LeaseBook

#: Memory for the SHA-256 of retrieved versions (about 400 bytes each: thousands of versions), so a
#: repeated retrieve of a large file does not hash it again.
DIGEST_MEMO_BYTES = 1024 * 1024
#: Attempts at a version that stays the same from its open to its local file.
_ATTEMPTS = 3
_READ = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Retrieved:
    path: str
    local_path: Path
    size: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


class Retriever:
    def __init__(self, engine: CacheEngine, leases: LeaseBook) -> None:
        self.engine = engine
        self.leases = leases
        self._digests: LRU[int, str] = LRU(DIGEST_MEMO_BYTES)
        #: Hashes under way by version id: concurrent retrieves of one version hash it once.
        self._hashing: dict[int, asyncio.Future[str]] = {}

    async def retrieve(self, paths: Sequence[str], lease_seconds: float) -> tuple[Lease, list[Retrieved]]:
        """Pin and fetch every object of ``paths`` under one new lease; their local files, in order.

        Raises ``InvalidPath`` (400), ``UnknownMount``/``ObjectNotFound`` (404, also for a prefix),
        ``CacheFull`` (507: past ``cache.pin_size`` or the disk tier), origin errors; then nothing
        stays pinned for this call.
        """
        resolved = [self.engine.namespace.resolve(path).path for path in paths]
        for path in resolved:
            await self.engine.open(path)  # a missing object is a 404 before anything is pinned
        lease = await self.leases.acquire(resolved, lease_seconds)
        try:
            return lease, [await self._local(path) for path in resolved]
        except BaseException:
            await self.leases.release(lease.id)
            raise

    async def _local(self, path: str) -> Retrieved:
        for _attempt in range(_ATTEMPTS):
            handle = await self.engine.open(path)
            local = await self.engine.local_path(path)
            if (await self.engine.open(path)).version_id == handle.version_id:
                return Retrieved(path, local, handle.size, await self._sha256(handle.version_id, local))
        raise VersionChanged(f"{path} kept changing at its origin while it was retrieved")

    async def _sha256(self, vid: int, local: Path) -> str:
        known = self._digests.get(vid)
        if known is not None:
            return known
        pending = self._hashing.get(vid)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(file_sha256, local))
            self._hashing[vid] = pending
            pending.add_done_callback(lambda done: self._hashed(vid, done))
        return await asyncio.shield(pending)

    def _hashed(self, vid: int, done: asyncio.Future[str]) -> None:
        self._hashing.pop(vid, None)
        if not done.cancelled() and done.exception() is None:
            self._digests.put(vid, done.result())
