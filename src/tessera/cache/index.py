"""The persistent index: SQLite in WAL mode, written in batches off the hot path.

The resident table (``tessera.cache.table``) is the truth while the process runs; this index is a lagging copy
so a restart keeps the warm cache. Lagging is safe by construction: a block is marked present in
memory only after its bytes are in the file, and the index only ever copies the in-memory state, so
the index can miss blocks that are on disk (the start-up check punches them out) but never claims a
block that is not.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: 2: file incarnations (``gen``), CRC-32 per block (``sums``), disk bytes in allocation units.
#: 3: usage totals kept by triggers (start-up reads them instead of summing every row), and each
#: version's count of present blocks (the start-up load needs no block states of whole versions).
#: An index of another schema is dropped at start (with the files it described): a cache can always
#: be refilled.
SCHEMA_VERSION = 3
#: Disk tiers the usage figures have rows for (the config allows two).
MAX_TIERS = 4

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
    present_count INTEGER NOT NULL,
    UNIQUE (origin, key, etag)
);
CREATE TABLE IF NOT EXISTS pins (origin TEXT NOT NULL, pattern TEXT NOT NULL, PRIMARY KEY (origin, pattern));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Usage by (tier, pinned): bytes and rows, kept exact by triggers in the same transactions as the rows.
-- Its rows exist from the start (see SqliteIndex), so the triggers only UPDATE.
CREATE TABLE IF NOT EXISTS usage (
    tier INTEGER NOT NULL, pinned INTEGER NOT NULL, bytes INTEGER NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (tier, pinned)
);
CREATE TRIGGER IF NOT EXISTS usage_insert AFTER INSERT ON versions BEGIN
    UPDATE usage SET bytes = bytes + new.cached_bytes, rows = rows + 1
        WHERE tier = new.tier AND pinned = new.pinned;
END;
CREATE TRIGGER IF NOT EXISTS usage_delete AFTER DELETE ON versions BEGIN
    UPDATE usage SET bytes = bytes - old.cached_bytes, rows = rows - 1
        WHERE tier = old.tier AND pinned = old.pinned;
END;
CREATE TRIGGER IF NOT EXISTS usage_update AFTER UPDATE OF cached_bytes, tier, pinned ON versions BEGIN
    UPDATE usage SET bytes = bytes - old.cached_bytes, rows = rows - 1
        WHERE tier = old.tier AND pinned = old.pinned;
    UPDATE usage SET bytes = bytes + new.cached_bytes, rows = rows + 1
        WHERE tier = new.tier AND pinned = new.pinned;
END;
"""


@dataclass(slots=True)
class VersionRow:
    """One version as the index stores it: a snapshot taken on the event loop, written by a thread."""

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
    present_count: int


@dataclass(slots=True)
class StatsRow:
    """What changes on a hit or a move of a version whose blocks did not change (an UPDATE by id)."""

    vid: int
    last_access: float
    validated_at: float
    hits: int
    tier: int
    pinned: int


#: The columns the resident table loads at start: no strings, and the block states only of versions
#: partly cached (for the others, every block is present).
LOAD_COLUMNS = (
    "vid, gen, size, block_size, present_count, cached_bytes, last_access, hits, tier, pinned, "
    "CASE WHEN present_count * block_size < size THEN present END"
)

_COLUMNS = (
    "vid, origin, key, etag, size, mtime, block_size, present, cached_bytes, last_access, validated_at, "
    "hits, tier, pinned, gen, sums, present_count"
)


class SqliteIndex:
    """Owns one SQLite connection; every method may be called from any single thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
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
                self._db.execute("DROP TABLE IF EXISTS usage")
                self._db.execute("DELETE FROM meta")
                self.reset = True
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._db.executemany(
            "INSERT OR IGNORE INTO usage VALUES (?, ?, 0, 0)",
            [(tier, pinned) for tier in range(MAX_TIERS) for pinned in (0, 1)],
        )

    def usage(self) -> list[tuple[int, int, int, int]]:
        """``(tier, pinned, bytes, rows)``: the usage figures, known before the rows are loaded."""
        with self._lock:
            return self._db.execute("SELECT tier, pinned, bytes, rows FROM usage WHERE rows > 0").fetchall()

    def rows_for(self, origin: str, key: str) -> list[VersionRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM versions WHERE origin = ? AND key = ?", (origin, key)
            ).fetchall()
        return [VersionRow(*row) for row in rows]

    def rows_under(self, origin: str, key: str, prefix: str | None) -> list[VersionRow]:
        """Rows of the object ``key`` and of every object under ``prefix`` (``""``: all; None: none)."""
        query = f"SELECT {_COLUMNS} FROM versions WHERE origin = ? AND (key = ? OR key >= ? AND key < ?)"
        low, high = (prefix, prefix + "\U0010ffff") if prefix is not None else ("", "")
        with self._lock:
            rows = self._db.execute(query, (origin, key, low, high)).fetchall()
        return [VersionRow(*row) for row in rows]

    def rows_by_id(self, vids: list[int]) -> list[VersionRow]:
        with self._lock:
            rows = [
                self._db.execute(f"SELECT {_COLUMNS} FROM versions WHERE vid = ?", (vid,)).fetchone()
                for vid in vids
            ]
        return [VersionRow(*row) for row in rows if row is not None]

    def blocks_of(self, vid: int) -> tuple[bytes, bytes] | None:
        """``(present, sums)`` of one version, on a connection of the caller's thread's own (the event
        loop asks, and must not wait for a flush holding the writer's lock)."""
        reader = getattr(self._local, "db", None)
        if reader is None:
            reader = self._local.db = sqlite3.connect(self.path, check_same_thread=False)
            self._readers.append(reader)
        row = reader.execute("SELECT present, sums FROM versions WHERE vid = ?", (vid,)).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row is not None else None

    def usage_by_origin(self) -> dict[str, tuple[int, int]]:
        """``origin -> (versions, bytes)`` of what the disk tiers hold, by a scan on a connection of its
        own (seconds at tens of millions of rows: flushes go on meanwhile)."""
        reader = sqlite3.connect(self.path, check_same_thread=False)
        try:
            rows = reader.execute(
                "SELECT origin, COUNT(*), SUM(cached_bytes) FROM versions"
                " WHERE cached_bytes > 0 GROUP BY origin"
            ).fetchall()
        finally:
            reader.close()
        return {origin: (count, total) for origin, count, total in rows}

    def batches(self, size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """Every row's ``LOAD_COLUMNS``, in batches, on a connection of its own."""
        reader = sqlite3.connect(self.path, check_same_thread=False)
        try:
            cursor = reader.execute(f"SELECT {LOAD_COLUMNS} FROM versions")
            while rows := cursor.fetchmany(size):
                yield rows
        finally:
            reader.close()

    def apply(self, upserts: list[VersionRow], deletes: list[int], stats: Sequence[StatsRow] = ()) -> None:
        """Write one batch in a single transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM versions WHERE vid = ?", [(vid,) for vid in deletes])
                self._db.executemany(
                    "UPDATE versions SET last_access = ?, validated_at = MAX(validated_at, ?), hits = ?, "
                    "tier = ?, pinned = ? WHERE vid = ?",
                    [(r.last_access, r.validated_at, r.hits, r.tier, r.pinned, r.vid) for r in stats],
                )
                self._db.executemany(
                    # An upsert, so the usage triggers see an UPDATE, and a validation time already
                    # recorded is never moved back.
                    "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (vid) DO "
                    "UPDATE SET present = excluded.present, cached_bytes = excluded.cached_bytes, "
                    "last_access = excluded.last_access, validated_at = MAX(validated_at, "
                    "excluded.validated_at), hits = excluded.hits, tier = excluded.tier, "
                    "pinned = excluded.pinned, gen = excluded.gen, sums = excluded.sums, "
                    "present_count = excluded.present_count",
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
                            r.present_count,
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
            for reader in self._readers:
                reader.close()
