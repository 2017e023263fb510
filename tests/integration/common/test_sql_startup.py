"""Start-up of the SQL stores on real databases: a database at a newer schema version is
refused, replicas migrating together apply each migration once, a missing PostgreSQL schema is
created (or refused with how to create it), and an unreachable database is one line naming
the setting, its password hidden."""

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.sql import DatabaseStartError, Migration, SqlStore, create_engine
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.experiment.adapters.sql_store import SqlExperimentStore
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.prompt.adapters.sql_store import SqlPromptStore
from tests.support.databases import BACKENDS, POSTGRES_URL, Database, database

ROOT = Path(__file__).resolve().parents[3]
PLATFORM_STORES: Sequence[type[SqlStore]] = (
    SqlPromptStore,
    SqlTenantStore,
    SqlRequestLogStore,
    SqlExperimentStore,
    SqlEvaluationStore,
)


def _creates(table: str) -> Migration:
    """A migration that creates `table` and records that it ran (once: a second run fails)."""

    def apply(conn: SyncConnection) -> None:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO probe_runs (migration) VALUES ('{table}')")

    return Migration(int(table.rsplit("_", 1)[1]), f"create {table}", apply)


def _runs_table(conn: SyncConnection) -> None:
    conn.exec_driver_sql("CREATE TABLE probe_runs (migration VARCHAR(32) NOT NULL)")


class OldProbeStore(SqlStore):
    """A store as an older release built it: migrations 1 and 2."""

    MIGRATIONS_TABLE = "probe_migrations"
    MIGRATIONS: Sequence[Migration] = (Migration(1, "runs", _runs_table), _creates("probe_2"))


class NewProbeStore(OldProbeStore):
    """The same store one release later: migration 3 added."""

    MIGRATIONS = (*OldProbeStore.MIGRATIONS, _creates("probe_3"))


def _store(cls: type[SqlStore], db: Database) -> SqlStore:
    return cls(create_engine(db.url, schema=db.schema))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_database_at_a_newer_schema_version_is_refused_with_what_to_do(
    backend: str, tmp_path: Path
) -> None:
    async with database(backend, tmp_path) as db:
        new = _store(NewProbeStore, db)
        assert await new.migrate() == [1, 2, 3]
        await new.close()
        old = _store(OldProbeStore, db)
        try:
            with pytest.raises(DatabaseStartError) as refused:
                await old.migrate()
            assert refused.value.setting == "database_url"
            line = str(refused.value.naming("prompt"))
            assert line.startswith("GENAI_PROMPT__DATABASE_URL: the OldProbeStore tables in ")
            assert "at schema version 3 (table probe_migrations)" in line
            assert "knows versions up to 2" in line
            assert "a newer release migrated this database" in line
            assert "\n" not in line
            # Nothing was applied or rolled back: the newer build still starts.
            again = _store(NewProbeStore, db)
            assert await again.migrate() == []
            await again.close()
        finally:
            await old.close()


@pytest.fixture
async def fresh_schema() -> AsyncIterator[str]:
    """The name of a PostgreSQL schema that does not exist yet; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    admin = create_async_engine(POSTGRES_URL)
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await admin.dispose()


async def _rows(url: str, schema: str | None, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(url, schema=schema)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(sa.text(query))).all()]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_stores_migrating_together_apply_each_migration_once(
    backend: str, tmp_path: Path, fresh_schema: str
) -> None:
    """Eight replicas (an engine each) migrate one fresh database at once; on PostgreSQL the
    schema does not exist yet, so they also create it together."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}" if backend == "sqlite" else POSTGRES_URL
    schema = fresh_schema if backend == "postgres" else None
    stores = [NewProbeStore(create_engine(url, schema=schema)) for _ in range(8)]
    try:
        applied = await asyncio.gather(*(store.migrate() for store in stores))
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    assert sorted(v for versions in applied for v in versions) == [1, 2, 3]
    runs = await _rows(url, schema, "SELECT migration FROM probe_runs ORDER BY migration")
    assert runs == [("probe_2",), ("probe_3",)]
    recorded = await _rows(url, schema, "SELECT version FROM probe_migrations ORDER BY version")
    assert recorded == [(1,), (2,), (3,)]


_REPLICA = """
import asyncio, json, sys
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.experiment.adapters.sql_store import SqlExperimentStore
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.prompt.adapters.sql_store import SqlPromptStore

async def main(url, schema):
    stores = [
        cls.from_url(url, schema=schema or None)
        for cls in (SqlPromptStore, SqlTenantStore, SqlRequestLogStore, SqlExperimentStore,
                    SqlEvaluationStore)
    ]
    print("ready", flush=True)
    sys.stdin.readline()  # every replica starts migrating at the same moment
    applied = await asyncio.gather(*(store.migrate() for store in stores))
    await asyncio.gather(*(store.close() for store in stores))
    print(json.dumps({s.MIGRATIONS_TABLE: a for s, a in zip(stores, applied)}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_replica_processes_starting_together_migrate_every_platform_store_once(
    backend: str, tmp_path: Path, fresh_schema: str
) -> None:
    """Four processes, each with every store of the platform on one database (PostgreSQL: a
    schema that does not exist yet), released together once all have started."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}" if backend == "sqlite" else POSTGRES_URL
    schema = fresh_schema if backend == "postgres" else ""
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", _REPLICA, url, schema],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None
            assert replica.stdout.readline().strip() == "ready", replica.communicate()[1]
        for replica in replicas:
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        results = [replica.communicate(timeout=120) for replica in replicas]
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.kill()
                replica.communicate()
    for replica, (_out, err) in zip(replicas, results, strict=True):
        assert replica.returncode == 0, err
    reports = [json.loads(out) for out, _err in results]
    for cls in PLATFORM_STORES:
        versions = sorted(v for report in reports for v in report[cls.MIGRATIONS_TABLE])
        assert versions == [m.version for m in cls.MIGRATIONS], cls.__name__


async def test_a_missing_postgres_schema_is_created_when_the_role_may(fresh_schema: str) -> None:
    store = SqlPromptStore.from_url(POSTGRES_URL, schema=fresh_schema)
    try:
        assert await store.migrate() == [m.version for m in SqlPromptStore.MIGRATIONS]
    finally:
        await store.close()
    tables = await _rows(
        POSTGRES_URL,
        None,
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{fresh_schema}'",
    )
    assert ("schema_migrations",) in tables
    assert ("prompts",) in tables


@pytest.fixture
async def role_without_create() -> AsyncIterator[str]:
    """A PostgreSQL role that may log in to the test database but create nothing in it."""
    role = f"genai_nocreate_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_URL)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        yield role
    finally:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP ROLE "{role}"'))
        await admin.dispose()


async def test_a_missing_schema_the_role_cannot_create_is_refused_saying_how(
    role_without_create: str, fresh_schema: str
) -> None:
    url = make_url(POSTGRES_URL).set(username=role_without_create, password="s3cret-pw")
    store = SqlPromptStore.from_url(url.render_as_string(hide_password=False), schema=fresh_schema)
    try:
        with pytest.raises(DatabaseStartError) as refused:
            await store.migrate()
    finally:
        await store.close()
    assert refused.value.setting == "database_schema"
    line = str(refused.value.naming("prompt"))
    assert line.startswith(f'GENAI_PROMPT__DATABASE_SCHEMA: schema "{fresh_schema}" does not')
    assert f'role "{role_without_create}" cannot create it' in line
    assert f'CREATE SCHEMA "{fresh_schema}" AUTHORIZATION "{role_without_create}"' in line
    assert "s3cret-pw" not in line
    assert "\n" not in line


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port bound by no listener: connections to it are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _postgres(**parts: Any) -> str:
    return make_url(POSTGRES_URL).set(**parts).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("refused", "Connect call failed"),
        ("unknown host", "cannot connect to postgresql+asyncpg://postgres:***@genai-nowhere"),
        ("unknown role", 'role "genai_nobody" does not exist'),
        ("missing database", 'database "genai_no_such_db" does not exist'),
        ("missing folder", "folder /nonexistent-genai-dir does not exist"),
    ],
)
async def test_an_unreachable_database_is_one_line_naming_the_setting_without_the_password(
    case: str, expected: str, refusing_port: int
) -> None:
    url = {
        "refused": _postgres(password="s3cret-pw", port=refusing_port),
        "unknown host": _postgres(password="s3cret-pw", host="genai-nowhere.invalid"),
        "unknown role": _postgres(username="genai_nobody", password="s3cret-pw"),
        "missing database": _postgres(password="s3cret-pw", database="genai_no_such_db"),
        "missing folder": "sqlite+aiosqlite:////nonexistent-genai-dir/gateway.db",
    }[case]
    store = SqlTenantStore.from_url(url)
    try:
        with pytest.raises(DatabaseStartError) as refused:
            await store.migrate()
    finally:
        await store.close()
    line = str(refused.value.naming("gateway"))
    assert line.startswith("GENAI_GATEWAY__DATABASE_URL: cannot "), line
    assert expected in line
    assert "s3cret-pw" not in line
    assert "\n" not in line
