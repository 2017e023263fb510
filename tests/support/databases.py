"""Real databases for storage tests: a SQLite file per test, and a schema of its own per test
in the PostgreSQL that these machines and CI run at 127.0.0.1:5432 (trust auth, database
`test`; `GENAI_TEST_POSTGRES_URL` points elsewhere). A missing PostgreSQL fails the tests that
need it, saying so: it is never skipped."""

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES_URL = os.environ.get(
    "GENAI_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class Database:
    """Where a test's store lives: a URL, and for PostgreSQL the schema (search path)."""

    backend: str
    url: str
    schema: str | None = None


@asynccontextmanager
async def database(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, empty database of `backend`, dropped afterwards (PostgreSQL)."""
    if backend == "sqlite":
        yield Database(backend, f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(POSTGRES_URL)
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except (OSError, sa.exc.DBAPIError) as error:
        await admin.dispose()
        pytest.fail(
            f"PostgreSQL is required at {POSTGRES_URL} (set GENAI_TEST_POSTGRES_URL): {error}",
            pytrace=False,
        )
    try:
        yield Database(backend, POSTGRES_URL, schema)
    finally:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
