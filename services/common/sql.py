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
database); concurrent starters serialize on a lock (PostgreSQL: an advisory lock per store;
SQLite: the write lock), so replicas starting together apply each migration once.

`migrate` refuses to start, with a `DatabaseStartError` (a `ConfigError` of one line), when the
database cannot be reached (the URL printed with its password hidden), when PostgreSQL's search
path names a schema that does not exist and the role may not create it (it is created when the
role may), and when the database has migrations this build does not know (a newer release
migrated it). Composition roots name the setting with `DatabaseStartError.naming`.
"""

import asyncio
import fcntl
import os
import sqlite3
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.common.config import ENV_PREFIX, ConfigError
from services.common.errors import NotFound

_SCHEMA_LOCK = zlib.crc32(b"genai-platform: create schema")
"""Advisory lock key under which stores create a missing PostgreSQL schema (one at a time)."""
_INSUFFICIENT_PRIVILEGE = "42501"


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


async def row_or_not_found(
    conn: AsyncConnection, query: sa.Executable, not_found: Callable[[], NotFound]
) -> sa.RowMapping:
    """The first row of `query`, as a mapping; raises `not_found()` when there is none."""
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise not_found()
    return row


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


class DatabaseStartError(ConfigError):
    """A store cannot start on its database: it cannot be reached, its PostgreSQL schema is
    missing and cannot be created, or it is at a newer schema version than this build knows.

    Printed as one line (`genai serve` exits 2). `setting` is the store setting that fixes it
    (`database_url` or `database_schema`); `naming` puts its environment variable in front.
    Never carries a password."""

    def __init__(self, problem: str, *, setting: str = "database_url", where: str = "") -> None:
        self.problem = problem
        self.setting = setting
        self.where = where
        self.line = f"{where}: {problem}" if where else problem
        super().__init__([self.line])

    def __str__(self) -> str:
        return self.line

    def naming(self, section: str) -> "DatabaseStartError":
        """This error led by the environment variable of its setting in the `section`
        settings (`prompt` -> `GENAI_PROMPT__DATABASE_URL: ...`); itself if already named."""
        if self.where:
            return self
        variable = f"{ENV_PREFIX}{section.upper()}__{self.setting.upper()}"
        return DatabaseStartError(self.problem, setting=self.setting, where=variable)


@contextmanager
def database_setting(section: str) -> Iterator[None]:
    """Names the setting of the `section` settings (`prompt`, `gateway`, ...) in a
    `DatabaseStartError` raised inside: `with database_setting("prompt"): await store.migrate()`."""
    try:
        yield
    except DatabaseStartError as error:
        raise error.naming(section) from None


def _root_cause(error: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrappers (asyncpg's, sqlite3's, OSError)."""
    seen = {id(error)}
    while True:
        inner = getattr(error, "orig", None) or error.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _reason(error: BaseException) -> str:
    """One line saying why, from the driver's exception."""
    root = _root_cause(error)
    text = str(root).strip()
    return text.splitlines()[0] if text else type(root).__name__


def _sqlstate(error: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of `error` or of an exception under it, if any."""
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            return state
        inner = getattr(current, "orig", None) or current.__cause__
        current = inner if isinstance(inner, BaseException) else None
    return None


_SQLITE_WRITERS: "weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock]" = (
    weakref.WeakValueDictionary()
)
"""The in-process writer lock of each SQLite file, per event loop (see `_sqlite_writer`)."""


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

    def describe_database(self) -> str:
        """The database, for messages: its URL with the password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    async def migrate(self) -> list[int]:
        """Applies the migrations this database lacks; returns their numbers.

        Creates a missing PostgreSQL schema that the search path names (when the role may).
        Raises `DatabaseStartError` when the database cannot be reached, the schema is missing
        and cannot be created, or the database has migrations this build does not know."""
        table = sa.Table(
            self.MIGRATIONS_TABLE,
            sa.MetaData(),
            sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("applied_at_us", sa.BigInteger, nullable=False),
        )
        applied: list[int] = []
        await self._check_reachable()
        where = self.describe_database()
        async with self._write() as conn:
            if self._postgres:
                where += f", schema {await self._ensure_schema(conn)}"
                lock = zlib.crc32(self.MIGRATIONS_TABLE.encode())
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
            await conn.run_sync(lambda c: table.create(c, checkfirst=True))
            done = set((await conn.execute(sa.select(table.c.version))).scalars())
            self._refuse_newer(done, where)
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

    async def _check_reachable(self) -> None:
        """Opens one connection (SQLite: prepares the file first), or raises
        `DatabaseStartError` saying why it cannot."""
        try:
            if not self._postgres:
                path = self._engine.url.database or ""
                if path and path != ":memory:" and not Path(path).parent.is_dir():
                    raise DatabaseStartError(
                        f"cannot open {self.describe_database()}: folder {Path(path).parent} "
                        "does not exist"
                    )
                await asyncio.to_thread(_prepare_sqlite_file, path)
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except DatabaseStartError:
            raise
        except Exception as error:  # whatever the driver raises: refused, unknown host, auth...
            raise DatabaseStartError(
                f"cannot connect to {self.describe_database()}: {_reason(error)}"
            ) from error

    async def _ensure_schema(self, conn: AsyncConnection) -> str:
        """The schema the tables go to (PostgreSQL): the first existing one of the search path,
        or the one it names, created (under a lock, so that stores starting together do not
        collide). Raises `DatabaseStartError` naming `database_schema` when that is
        impossible."""
        row = (
            await conn.execute(
                sa.text("SELECT current_schema(), current_setting('search_path'), current_user")
            )
        ).one()
        current, path, user = row
        if current is not None:
            return str(current)
        where = self.describe_database()
        if "," in path or path.strip().strip('"').startswith("$user"):
            raise DatabaseStartError(
                f"the search path of {where} ({path}) names no schema that exists: create one, "
                "or name an existing schema",
                setting="database_schema",
            )
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
        name = ""
        try:
            parsed = await conn.execute(sa.text("SELECT (parse_ident(:path))[1]"), {"path": path})
            name = str(parsed.scalar_one())
            quoted = conn.dialect.identifier_preparer.quote_identifier(name)
            await conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            return name
        except sa.exc.DBAPIError as error:
            if not name:
                raise DatabaseStartError(
                    f"{path!r} is not a PostgreSQL schema name ({_reason(error)})",
                    setting="database_schema",
                ) from error
            how = (
                f'create it (CREATE SCHEMA "{name}" AUTHORIZATION "{user}") or name an '
                "existing schema"
                if _sqlstate(error) == _INSUFFICIENT_PRIVILEGE
                else "create it, or name an existing schema"
            )
            raise DatabaseStartError(
                f'schema "{name}" does not exist in {where} and role "{user}" cannot create it '
                f"({_reason(error)}): {how}",
                setting="database_schema",
            ) from error

    def _refuse_newer(self, done: set[int], where: str) -> None:
        """Raises `DatabaseStartError` when the database (`where`) has migrations this build
        lacks."""
        known = {migration.version for migration in self.MIGRATIONS}
        unknown = done - known
        if not unknown:
            return
        raise DatabaseStartError(
            f"the {type(self).__name__} tables in {where} are at schema "
            f"version {max(done)} (table {self.MIGRATIONS_TABLE}), newer than this build, "
            f"which knows versions up to {max(known, default=0)}: a newer release migrated this "
            "database. Run that release (or a newer one), or restore the backup taken before "
            "the upgrade"
        )

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (SQLite: `BEGIN IMMEDIATE`, one at a time per file in this
        process, see `_sqlite_writer`)."""
        async with self._sqlite_writer(), self._engine.connect() as conn:
            conn = await conn.execution_options(genai_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _sqlite_writer(self) -> AsyncIterator[None]:
        """SQLite has one writer per file. Stores of one process that share a file (a gateway's
        tenant, idempotency and request-log stores; replicas in a test) take turns here, in
        the event loop, instead of in SQLite's busy handler, whose sleeps add latency and, with
        several connections of one process waiting in it at once, were seen to stall a write
        for the whole busy timeout. Other processes still wait in the busy handler."""
        if self._postgres:
            yield
            return
        key = (id(asyncio.get_running_loop()), str(self._engine.url.database))
        lock = _SQLITE_WRITERS.get(key)
        if lock is None:
            lock = _SQLITE_WRITERS[key] = asyncio.Lock()
        async with lock:
            yield

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction."""
        async with self._engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction whose every query sees the same data: REPEATABLE READ on
        PostgreSQL (its default, READ COMMITTED, takes a snapshot per statement); SQLite's
        read transactions are snapshots already."""
        if not self._postgres:
            async with self._read() as conn:
                yield conn
            return
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn
