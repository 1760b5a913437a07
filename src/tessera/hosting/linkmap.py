"""The link map in SQL (SQLAlchemy Core, synchronous: the service calls it through ``asyncio.to_thread``).

SQLite by default (one file, WAL, a busy timeout, so several processes of one node can share it), or
PostgreSQL for several nodes. ``LinkMap.open`` runs the Alembic migrations in ``migrations/`` to the
head, under a lock, so processes starting together do not trip over each other.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite

from tessera.hosting.model import ImageType

Status = Literal["processing", "ready", "failed", "deleted"]
MIGRATIONS = Path(__file__).with_name("migrations")
#: Alembic's bookkeeping table, named so it cannot clash with another user of the same database.
VERSION_TABLE = "tessera_hosting_version"
#: Key of ``pg_advisory_xact_lock`` taken while migrating (any constant; "tessera" in ASCII).
_PG_MIGRATION_LOCK = 0x74657373657261

_metadata = sa.MetaData()
images = sa.Table(
    "images",
    _metadata,
    sa.Column("link", sa.String(16), primary_key=True),
    sa.Column("number", sa.BigInteger, nullable=False, unique=True),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("owner", sa.Text),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("delete_token_hash", sa.Text),
    sa.Column("derivatives", sa.JSON, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
    sa.Column("updated", sa.Double, nullable=False),
)
link_blocks = sa.Table(
    "link_blocks",
    _metadata,
    sa.Column("start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("holder", sa.Text),
    sa.Column("used", sa.LargeBinary),
    sa.Column("leased_at", sa.Double),
)
link_counter = sa.Table(
    "link_counter",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_block", sa.BigInteger, nullable=False),
)
meta = sa.Table(
    "meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(slots=True)
class ImageRow:
    """One uploaded image. ``derivatives`` are the file names made so far (``["1024.jpg", …]``)."""

    link: str
    number: int
    object_key: str
    owner: str | None
    type: ImageType
    width: int
    height: int
    bytes: int
    sha256: str
    status: Status
    delete_token_hash: str | None = None
    derivatives: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Block:
    """A leased range of link numbers ``[start, start + size)``; ``used`` is the serialized bitmap of
    offsets already handed out (``None``: a fresh block)."""

    start: int
    size: int
    used: bytes | None


class LinkSpaceExhausted(RuntimeError):
    """Every number below the permutation's capacity has been leased."""


def _row(mapping: sa.RowMapping) -> ImageRow:
    values = dict(mapping)
    derivatives = values["derivatives"]
    values["derivatives"] = list(json.loads(derivatives) if isinstance(derivatives, str) else derivatives)
    return ImageRow(**values)


def _engine_url(url: str) -> tuple[str, str]:
    """``(dialect, SQLAlchemy URL)`` for a ``[hosting] database_url``."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return "sqlite", f"sqlite:///{path}"
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise RuntimeError(
                    "hosting.database_url is PostgreSQL but psycopg is not installed: "
                    "pip install 'tessera[postgres]'"
                ) from None
            return "postgresql", "postgresql+psycopg://" + url[len(scheme) :]
    raise ValueError(f"hosting.database_url {url!r} is neither sqlite:///PATH nor postgresql://…")


class LinkMap:
    """Rows of uploaded images, the leased link blocks and the link key, in SQLite or PostgreSQL."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, url: str) -> LinkMap:
        """Connect to ``sqlite:///path`` (the folder is made) or ``postgresql://…``, and migrate to head."""
        dialect, engine_url = _engine_url(url)
        if dialect == "sqlite":
            engine = sa.create_engine(engine_url, connect_args={"timeout": 30, "check_same_thread": False})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = sa.create_engine(engine_url, pool_pre_ping=True)
        linkmap = cls(engine)
        try:
            linkmap.migrate()
        except BaseException:
            engine.dispose()
            raise
        return linkmap

    def migrate(self) -> None:
        """Run the migrations to head, one process at a time (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
        advisory lock), so a process that waited finds the schema already there."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["version_table"] = VERSION_TABLE
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction; on SQLite it takes the write lock at once (``BEGIN IMMEDIATE``), waiting
        up to the busy timeout, so it never fails half-way on a lock upgrade."""
        with self.engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                yield conn

    # -- the link key --------------------------------------------------------------------------------

    def link_key(self, generate: Callable[[], bytes]) -> bytes:
        """The stored link key: the first caller (of any process) stores ``generate()``; the rest read it."""
        key = "link_key"
        with self._write() as conn:
            conn.execute(self._insert(meta).values(key=key, value=generate().hex()).on_conflict_do_nothing())
            value = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar_one()
        return bytes.fromhex(value)

    def _insert(self, table: sa.Table) -> Any:
        """An INSERT with ``on_conflict_do_nothing`` in this dialect."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # -- images --------------------------------------------------------------------------------------

    def insert(self, row: ImageRow) -> None:
        """Add a row; ``sqlalchemy.exc.IntegrityError`` when its link or number exists already."""
        values = {column.name: getattr(row, column.name) for column in images.columns}
        with self._write() as conn:
            conn.execute(images.insert().values(values))

    def get(self, link: str) -> ImageRow | None:
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(images).where(images.c.link == link)).mappings().first()
        return None if found is None else _row(found)

    def find_duplicate(self, owner: str | None, sha256: str) -> ImageRow | None:
        """The owner's newest image with these bytes that is not deleted. Anonymous uploads (no owner)
        are never deduplicated: answering one with another uploader's link would hand out an image the
        caller cannot delete (its delete token was given to someone else)."""
        if owner is None:
            return None
        query = (
            sa.select(images)
            .where(images.c.owner == owner, images.c.sha256 == sha256, images.c.status != "deleted")
            .order_by(images.c.created.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).mappings().first()
        return None if found is None else _row(found)

    def update(
        self, link: str, *, status: Status | None = None, derivatives: list[str] | None = None
    ) -> ImageRow | None:
        """Change the status and/or the derivative list; the updated row, or ``None`` when the link is
        unknown or deleted (a worker finishing after a delete must not bring the image back)."""
        values: dict[str, object] = {"updated": time.time()}
        if status is not None:
            values["status"] = status
        if derivatives is not None:
            values["derivatives"] = list(derivatives)
        query = (
            sa.update(images)
            .where(images.c.link == link, images.c.status != "deleted")
            .values(values)
            .returning(*images.columns)
        )
        with self._write() as conn:
            found = conn.execute(query).mappings().first()
        return None if found is None else _row(found)

    def mark_deleted(self, link: str) -> ImageRow | None:
        """Mark the image deleted (the row stays: its link then answers 410 and is never reused). The row
        as it is now, with the derivatives to remove; ``None`` for an unknown link. Idempotent."""
        query = (
            sa.update(images)
            .where(images.c.link == link)
            .values(status="deleted", updated=time.time())
            .returning(*images.columns)
        )
        with self._write() as conn:
            found = conn.execute(query).mappings().first()
        return None if found is None else _row(found)

    def list_owned(self, owner: str, cursor: str | None, limit: int) -> tuple[list[ImageRow], str | None]:
        """The owner's images that are not deleted, newest first, ``limit`` at a time; ``cursor`` is the
        ``next_cursor`` of the previous page (``None`` at the start and after the last page). Keyset
        pagination on ``(created, link)``: rows added meanwhile never shift or repeat a page.
        ``ValueError`` for a malformed cursor."""
        if limit < 1:
            raise ValueError(f"limit {limit} is below 1")
        query = sa.select(images).where(images.c.owner == owner, images.c.status != "deleted")
        if cursor is not None:
            created, link = _parse_cursor(cursor)
            query = query.where(
                sa.or_(
                    images.c.created < created,
                    sa.and_(images.c.created == created, images.c.link < link),
                )
            )
        query = query.order_by(images.c.created.desc(), images.c.link.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [_row(found) for found in conn.execute(query).mappings()]
        if len(rows) <= limit:
            return rows, None
        last = rows[limit - 1]
        return rows[:limit], f"{last.created!r}~{last.link}"

    # -- link blocks ---------------------------------------------------------------------------------

    def lease_block(self, holder: str, size: int, capacity: int, finished: int | None = None) -> Block:
        """Lease a block to ``holder``: a released one when there is any (its ``used`` bitmap comes with
        it), else a fresh one from the counter. Atomic across processes: on PostgreSQL the released row
        is picked with ``FOR UPDATE SKIP LOCKED``, on SQLite in the same single UPDATE (under the write
        lock); the counter moves with ``UPDATE … RETURNING``. ``LinkSpaceExhausted`` once the counter
        passed ``capacity`` and no block was released. ``finished``: the start of the holder's block
        whose every number was handed out, forgotten in the same transaction (one commit per block)."""
        now = time.time()
        released = (
            sa.select(link_blocks.c.start)
            .where(link_blocks.c.holder.is_(None))
            .order_by(link_blocks.c.start)
            .limit(1)
        )
        if self.dialect == "postgresql":
            released = released.with_for_update(skip_locked=True)
        take = (
            sa.update(link_blocks)
            .where(link_blocks.c.start == released.scalar_subquery(), link_blocks.c.holder.is_(None))
            .values(holder=holder, leased_at=now)
            .returning(link_blocks.c.start, link_blocks.c.size, link_blocks.c.used)
        )
        advance = (
            sa.update(link_counter)
            .where(link_counter.c.id == 1)
            .values(next_block=link_counter.c.next_block + size)
            .returning(link_counter.c.next_block)
        )
        with self._write() as conn:
            if finished is not None:
                conn.execute(self._forget(finished, holder))
            found = conn.execute(take).first()
            if found is not None:
                return Block(found.start, found.size, found.used)
            end = conn.execute(advance).scalar_one()
            start = end - size
            if start >= capacity:
                raise LinkSpaceExhausted(f"all {capacity} link numbers have been leased")
            size = min(size, capacity - start)
            conn.execute(link_blocks.insert().values(start=start, size=size, holder=holder, leased_at=now))
        return Block(start, size, None)

    def release_block(self, start: int, holder: str, used: bytes) -> None:
        """Give a block back with the bitmap of its used offsets, for another holder to lease."""
        query = (
            sa.update(link_blocks)
            .where(link_blocks.c.start == start, link_blocks.c.holder == holder)
            .values(holder=None, used=used, leased_at=None)
        )
        with self._write() as conn:
            conn.execute(query)

    def finish_block(self, start: int, holder: str) -> None:
        """Forget a block whose every number was handed out (the counter never gives it again)."""
        with self._write() as conn:
            conn.execute(self._forget(start, holder))

    def _forget(self, start: int, holder: str) -> sa.Delete:
        return sa.delete(link_blocks).where(link_blocks.c.start == start, link_blocks.c.holder == holder)


def _parse_cursor(cursor: str) -> tuple[float, str]:
    created, sep, link = cursor.partition("~")
    try:
        if not sep or not link:
            raise ValueError
        return float(created), link
    except ValueError:
        raise ValueError(f"malformed cursor {cursor!r}") from None


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own transaction handling defers it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The wait first: switching to WAL takes the database's lock, which another process opening it
    # at the same moment may hold.
    cursor.execute("PRAGMA busy_timeout=30000")
    # WAL is a property of the file, set once; processes creating it together can see SQLITE_BUSY
    # from the switch without the busy handler being asked, so it is tried again for a while.
    for attempt in range(100):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                break
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    immediate = cast(bool, conn.get_execution_options().get("immediate", False))
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
