"""The persistent index: SQLite in WAL mode, written in batches off the hot path.

The in-memory ``Version`` objects are the truth while the process runs; this index is a lagging copy
so a restart keeps the warm cache. Lagging is safe by construction: a block is marked present in
memory only after its bytes are in the file, and the index only ever copies the in-memory state, so
the index can miss blocks that are on disk (the start-up check punches them out) but never claims a
block that is not.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tessera.cache.version import Version

#: 2: file incarnations (``gen``), CRC-32 per block (``sums``), disk bytes in allocation units.
#: An index of another schema is dropped at start (with the files it described): a cache can always
#: be refilled.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    vid INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    block_size INTEGER NOT NULL,
    present BLOB NOT NULL,
    cached_bytes INTEGER NOT NULL,
    last_access REAL NOT NULL,
    validated_at REAL NOT NULL,
    hits INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    pinned INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    sums BLOB NOT NULL,
    UNIQUE (origin, key, etag)
);
CREATE TABLE IF NOT EXISTS pins (origin TEXT NOT NULL, pattern TEXT NOT NULL, PRIMARY KEY (origin, pattern));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True)
class VersionRow:
    """A snapshot of one version, taken on the event loop and written by the flusher thread."""

    vid: int
    origin: str
    key: str
    etag: str
    size: int
    mtime: float
    block_size: int
    present: bytes
    cached_bytes: int
    last_access: float
    validated_at: float
    hits: int
    tier: int
    pinned: int
    gen: int
    sums: bytes

    @classmethod
    def of(cls, version: Version, validated_at: float) -> VersionRow:
        return cls(
            version.vid,
            version.origin,
            version.key,
            version.etag,
            version.size,
            version.mtime,
            version.block_size,
            bytes(version.present),
            version.disk_bytes,
            version.last_access,
            validated_at,
            version.hits,
            version.tier,
            int(version.pinned),
            version.gen,
            bytes(version.sums),
        )

    def to_version(self) -> Version:
        version = Version(
            vid=self.vid,
            origin=self.origin,
            key=self.key,
            etag=self.etag,
            size=self.size,
            mtime=self.mtime,
            block_size=self.block_size,
            present=bytearray(self.present),
            last_access=self.last_access,
            hits=self.hits,
            tier=self.tier,
            pinned=bool(self.pinned),
            gen=self.gen,
            sums=bytearray(self.sums),
        )
        version.recount()
        return version


_COLUMNS = (
    "vid, origin, key, etag, size, mtime, block_size, present, cached_bytes, last_access, validated_at, "
    "hits, tier, pinned, gen, sums"
)


class SqliteIndex:
    """Owns one SQLite connection; every method may be called from any single thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The write-ahead log counts against the disk bound: truncate it after each checkpoint.
        self._db.execute("PRAGMA journal_size_limit=1048576")
        #: True when the index on disk was of another schema and was emptied: the files it described
        #: are unknown now and must go (see ``CacheEngine.start``).
        self.reset = False
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
        if has_meta:
            row = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                self._db.execute("DROP TABLE IF EXISTS versions")
                self._db.execute("DELETE FROM meta")
                self.reset = True
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def usage(self) -> list[tuple[int, int, int]]:
        """``(tier, pinned, bytes)`` sums: the usage figures, known before the rows are loaded."""
        with self._lock:
            return self._db.execute(
                "SELECT tier, pinned, COALESCE(SUM(cached_bytes), 0) FROM versions GROUP BY tier, pinned"
            ).fetchall()

    def rows_for(self, origin: str, key: str) -> list[VersionRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM versions WHERE origin = ? AND key = ?", (origin, key)
            ).fetchall()
        return [VersionRow(*row) for row in rows]

    def batches(self, size: int = 20_000) -> Iterator[list[VersionRow]]:
        """Every row, least recently used first, in batches, on a connection of its own."""
        reader = sqlite3.connect(self.path, check_same_thread=False)
        try:
            cursor = reader.execute(f"SELECT {_COLUMNS} FROM versions ORDER BY last_access")
            while rows := cursor.fetchmany(size):
                yield [VersionRow(*row) for row in rows]
        finally:
            reader.close()

    def apply(self, upserts: list[VersionRow], deletes: list[int]) -> None:
        """Write one batch in a single transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM versions WHERE vid = ?", [(vid,) for vid in deletes])
                self._db.executemany(
                    # REPLACE also drops an older row of the same (origin, key, etag).
                    "INSERT OR REPLACE INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            r.vid,
                            r.origin,
                            r.key,
                            r.etag,
                            r.size,
                            r.mtime,
                            r.block_size,
                            r.present,
                            r.cached_bytes,
                            r.last_access,
                            r.validated_at,
                            r.hits,
                            r.tier,
                            r.pinned,
                            r.gen,
                            r.sums,
                        )
                        for r in upserts
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def disk_bytes(self) -> int:
        """What the index's files (database, write-ahead log, shared memory) take on disk."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_blocks * 512
        return total

    def load_pins(self) -> list[tuple[str, str]]:
        with self._lock:
            return self._db.execute("SELECT origin, pattern FROM pins").fetchall()

    def save_pin(self, origin: str, pattern: str, pinned: bool) -> None:
        with self._lock:
            if pinned:
                self._db.execute("INSERT OR IGNORE INTO pins VALUES (?, ?)", (origin, pattern))
            else:
                self._db.execute("DELETE FROM pins WHERE origin = ? AND pattern = ?", (origin, pattern))

    def close(self) -> None:
        with self._lock:
            self._db.close()
