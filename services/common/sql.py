"""One SQL layer for every durable store of the platform (SQLAlchemy Core, async), over SQLite
and PostgreSQL.

- SQLite (`sqlite+aiosqlite:///path.db`) is the embedded default: WAL journal (switched on by
  `migrate`), synchronous FULL (a committed transaction survives a killed process and a crashed
  machine), foreign keys on. Every write transaction starts with `BEGIN IMMEDIATE`, taking the
  database's write lock up front, so concurrent writers queue (busy timeout) instead of failing
  on lock upgrades.
- PostgreSQL (`postgresql+asyncpg://...`) serves several replicas; stores lock rows
  (`SELECT ... FOR UPDATE`) where they need serial order.

Schema changes are numbered migrations applied at start-up (`SqlStore.migrate`), each in a
transaction, recorded in a migrations table of the store's own (several stores may share one
database); concurrent starters serialize on a lock.
"""

import asyncio
import fcntl
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


@dataclass(frozen=True)
class Migration:
    """One schema change, applied once, in a transaction."""

    version: int
    name: str
    apply: Callable[[SyncConnection], None]


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch, the platform's stored time unit."""
    return time.time_ns() // 1000


def time_from_us(us: int) -> datetime:
    """A stored microsecond time as an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1e6, tz=UTC)


def database_url(configured: str, filename: str) -> str:
    """`configured`, or, when it is empty, the embedded default: SQLite file `filename` in
    `$XDG_DATA_HOME/genai-platform/` (`~/.local/share/...` when XDG_DATA_HOME is unset), its
    folder created."""
    if configured:
        return configured
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    folder = Path(base) / "genai-platform"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / filename}"


def create_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    """An engine for `url` with the settings the stores rely on (see the module docstring);
    `schema` sets PostgreSQL's search path (several deployments in one database)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30.0})
        _configure_sqlite(engine)
        return engine
    connect_args = {"server_settings": {"search_path": schema}} if schema else {}
    return create_async_engine(
        url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=connect_args
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        # Let this module issue BEGIN itself (the driver's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA busy_timeout=30000",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin(connection: SyncConnection) -> None:
        write = connection.get_execution_options().get("genai_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _prepare_sqlite_file(path: str) -> None:
    """Switches a SQLite file to WAL (a lasting property of the file) under an exclusive file
    lock: connections switching a new file at the same time can deadlock in SQLite's locking."""
    if not path or path == ":memory:":
        return
    with open(f"{path}.lock", "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            connection = sqlite3.connect(path, timeout=30.0)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
            finally:
                connection.close()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


class SqlStore:
    """Base of a store: an engine, its migrations, and read/write transactions.

    Subclasses set `MIGRATIONS` (in order; append, never edit one that has shipped) and
    `MIGRATIONS_TABLE` (unique per store, so stores can share a database).
    """

    MIGRATIONS: Sequence[Migration] = ()
    MIGRATIONS_TABLE: str = "schema_migrations"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self._engine.dispose()

    async def migrate(self) -> list[int]:
        """Applies the migrations this database lacks; returns their numbers."""
        table = sa.Table(
            self.MIGRATIONS_TABLE,
            sa.MetaData(),
            sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("applied_at_us", sa.BigInteger, nullable=False),
        )
        applied: list[int] = []
        if not self._postgres:
            await asyncio.to_thread(_prepare_sqlite_file, self._engine.url.database or "")
        async with self._write() as conn:
            if self._postgres:
                lock = zlib.crc32(self.MIGRATIONS_TABLE.encode())
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
            await conn.run_sync(lambda c: table.create(c, checkfirst=True))
            done = set((await conn.execute(sa.select(table.c.version))).scalars())
            for migration in self.MIGRATIONS:
                if migration.version in done:
                    continue
                await conn.run_sync(migration.apply)
                await conn.execute(
                    table.insert().values(
                        version=migration.version, name=migration.name, applied_at_us=now_us()
                    )
                )
                applied.append(migration.version)
        return applied

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (SQLite: `BEGIN IMMEDIATE`)."""
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(genai_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction."""
        async with self._engine.connect() as conn, conn.begin():
            yield conn
