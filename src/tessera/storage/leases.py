"""Retrieve leases: a retrieved file stays pinned in the cache while a lease on it is held.

A lease names one or more virtual paths and ends at a wall-clock time (or when released early). A path
is pinned (``CacheEngine.pin``) while at least one lease on it runs, and unpinned when the last one
ends. The engine keeps pins in its index, so they outlive a restart; the leases therefore do too: they
are kept in ``leases.sqlite`` in the cache directory, and after a start the leases still running go on
while the pins of those that ran out meanwhile are withdrawn at once.

The book withdraws only the pins it made: a path already pinned by other means (``tessera pin``) when
its first lease began keeps its pin after the last lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.cache import CacheEngine

log = logging.getLogger(__name__)

#: Longest sleep of the expiry task when no lease runs out sooner (new leases wake it anyway).
_IDLE_WAKE = 3600.0
#: Paths pinned (and fetched) at once for one lease.
PIN_CONCURRENCY = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (id TEXT NOT NULL, path TEXT NOT NULL, expires REAL NOT NULL,
                                   PRIMARY KEY (id, path));
CREATE INDEX IF NOT EXISTS leases_expires ON leases (expires);
CREATE INDEX IF NOT EXISTS leases_path ON leases (path);
CREATE TABLE IF NOT EXISTS held (path TEXT PRIMARY KEY, owned INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    paths: tuple[str, ...]
    #: Unix time at which the lease ends.
    expires: float


class LeaseStore:
    """The lease rows (``leases``) and the paths they hold with whether the book pinned them (``held``).

    Blocking SQLite calls, made from worker threads one at a time.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def held(self, path: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM held WHERE path = ?", (path,)).fetchone() is not None

    def add(self, lease: Lease, new_holds: dict[str, bool]) -> None:
        """Record ``lease``, and the paths it holds first (``path -> owned``: whether the book pins it)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO held VALUES (?, ?)", [(p, int(o)) for p, o in new_holds.items()]
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO leases VALUES (?, ?, ?)",
                [(lease.id, path, lease.expires) for path in lease.paths],
            )

    def get(self, lease_id: str) -> Lease | None:
        with self._lock:
            rows = self._db.execute("SELECT path, expires FROM leases WHERE id = ?", (lease_id,)).fetchall()
        if not rows:
            return None
        return Lease(lease_id, tuple(path for path, _ in rows), rows[0][1])

    def unheld_by_removing(self, lease_id: str) -> list[str]:
        """The paths that ``remove(lease_id)`` would leave without a lease and that the book pinned."""
        with self._lock:
            return [
                path
                for (path,) in self._db.execute(
                    "SELECT l.path FROM leases l JOIN held h ON h.path = l.path WHERE l.id = ? AND h.owned"
                    " AND NOT EXISTS (SELECT 1 FROM leases o WHERE o.path = l.path AND o.id != l.id)",
                    (lease_id,),
                )
            ]

    def remove(self, lease_id: str) -> None:
        """End a lease; the paths it leaves without a lease are no longer held."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            paths = [p for (p,) in self._db.execute("SELECT path FROM leases WHERE id = ?", (lease_id,))]
            self._db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            self._db.executemany(
                "DELETE FROM held WHERE path = ? AND NOT EXISTS (SELECT 1 FROM leases WHERE path = ?)",
                [(path, path) for path in paths],
            )

    def expired(self, now: float) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT id FROM leases WHERE expires <= ?", (now,))
            return [lease_id for (lease_id,) in rows]

    def next_expiry(self) -> float | None:
        with self._lock:
            value = self._db.execute("SELECT MIN(expires) FROM leases").fetchone()[0]
        return float(value) if value is not None else None


class LeaseBook:
    """Leases over the engine's pins, with a task that ends them when they run out."""

    def __init__(
        self, engine: CacheEngine, store: LeaseStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        #: Serialises the decisions "first lease on a path: pin it" and "last lease ended: unpin it".
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, engine: CacheEngine, path: Path) -> LeaseBook:
        """Open the book at ``path`` and start ending leases (those that ran out while the server was
        down first)."""
        book = cls(engine, await asyncio.to_thread(LeaseStore, path))
        book._task = asyncio.create_task(book._expire_loop(), name="tessera-lease-expiry")
        return book

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.store.close)

    async def acquire(self, paths: Sequence[str], seconds: float) -> Lease:
        """Lease ``paths`` (resolved virtual paths of objects) for ``seconds``: each is pinned and fetched
        whole. All or nothing: if any pin fails (``CacheFull`` past ``cache.pin_size``, a missing object,
        an origin error), the lease is ended again and the error raised."""
        lease = Lease(secrets.token_urlsafe(16), tuple(dict.fromkeys(paths)), self.clock() + seconds)
        async with self._lock:
            new_holds = {}
            for path in lease.paths:
                if not await asyncio.to_thread(self.store.held, path):
                    new_holds[path] = not await self._pinned_already(path)
            await asyncio.to_thread(self.store.add, lease, new_holds)
        self._wake.set()
        slots = asyncio.Semaphore(PIN_CONCURRENCY)

        async def pin(path: str) -> None:
            async with slots:
                await self.engine.pin(path)

        try:
            await asyncio.gather(*(pin(path) for path in lease.paths))
        except BaseException:
            await self.release(lease.id)
            raise
        return lease

    async def get(self, lease_id: str) -> Lease | None:
        return await asyncio.to_thread(self.store.get, lease_id)

    async def release(self, lease_id: str) -> bool:
        """End a lease now; False if there is no such lease (unknown, released or run out)."""
        async with self._lock:
            if await asyncio.to_thread(self.store.get, lease_id) is None:
                return False
            # Unpinned before the rows go: a crash in between leaves a lease that ends again at the
            # next start (unpinning twice is harmless), never a pin without a lease.
            for path in await asyncio.to_thread(self.store.unheld_by_removing, lease_id):
                try:
                    await self.engine.unpin(path)
                except Exception:
                    log.exception("unpinning %s at the end of its lease failed; unpin it by hand", path)
            await asyncio.to_thread(self.store.remove, lease_id)
        return True

    async def _pinned_already(self, path: str) -> bool:
        """Whether exactly this object is pinned already (by ``tessera pin``: the book holds no lease
        on it). A pin of a prefix around it does not count: the book's own pin is then a separate one."""
        resolved = self.engine.namespace.resolve(path)
        pins = (await self.engine.stats(top=0))["pinned"]["pins"]
        return any(p["origin"] == resolved.origin.identity and p["pattern"] == resolved.key for p in pins)

    async def _expire_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                for lease_id in await asyncio.to_thread(self.store.expired, self.clock()):
                    await self.release(lease_id)
                next_end = await asyncio.to_thread(self.store.next_expiry)
            except Exception:
                log.exception("ending run-out leases failed; will retry")
                next_end = self.clock() + 1
            delay = _IDLE_WAKE if next_end is None else min(_IDLE_WAKE, max(0.0, next_end - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
