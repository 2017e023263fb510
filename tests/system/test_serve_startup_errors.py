"""`genai serve` refusing to start on a database it cannot use: one line on stderr naming the
setting (its password hidden), exit status 2, no traceback; and a missing PostgreSQL schema
created when the role may."""

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.databases import POSTGRES_URL
from tests.support.serve import ROOT, genai_serve

PASSWORD = "s3cret-pw"


def _admin(*statements: str) -> list[tuple[object, ...]]:
    """Runs `statements` on the test PostgreSQL as its superuser; the last one's rows."""

    async def run() -> list[tuple[object, ...]]:
        engine = create_async_engine(POSTGRES_URL)
        try:
            async with engine.begin() as conn:
                result = None
                for statement in statements:
                    result = await conn.execute(sa.text(statement))
                return [tuple(row) for row in result] if result and result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture
def fresh_schema() -> Iterator[str]:
    """A PostgreSQL schema name that does not exist yet; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def role_without_create() -> Iterator[str]:
    """A role that may log in to the test database but create nothing in it."""
    role = f"genai_nocreate_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE ROLE "{role}" LOGIN')
    yield role
    _admin(f'DROP ROLE "{role}"')


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port bound by no listener: connections to it are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _url(**parts: object) -> str:
    return make_url(POSTGRES_URL).set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


def _serve_refused(env: dict[str, str], *args: str) -> str:
    """Runs `genai serve` (PromptService only) expecting it to refuse; returns its one
    `genai:` line after checking the exit status and that no traceback was printed."""
    command = [sys.executable, "-m", "services.cli", "serve", "--port", "0", "--no-prompts"]
    result = subprocess.run(
        [*command, "--service", "prompt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("genai: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_unreachable_prompt_database_is_one_line_naming_its_setting(
    refusing_port: int,
) -> None:
    line = _serve_refused(
        {"GENAI_PROMPT__DATABASE_URL": _url(password=PASSWORD, port=refusing_port)}
    )
    assert line.startswith(
        "genai: GENAI_PROMPT__DATABASE_URL: cannot connect to "
        f"postgresql+asyncpg://postgres:***@127.0.0.1:{refusing_port}/test: "
    ), line


def test_a_missing_gateway_database_is_one_line_naming_its_setting() -> None:
    line = _serve_refused(
        {"GENAI_GATEWAY__DATABASE_URL": _url(password=PASSWORD, database="genai_no_such_db")}
    )
    assert line.startswith("genai: GENAI_GATEWAY__DATABASE_URL: cannot connect to "), line
    assert 'database "genai_no_such_db" does not exist' in line


def test_a_schema_the_role_cannot_create_names_the_schema_setting_and_how(
    role_without_create: str, fresh_schema: str
) -> None:
    line = _serve_refused(
        {
            "GENAI_PROMPT__DATABASE_URL": _url(username=role_without_create, password=PASSWORD),
            "GENAI_PROMPT__DATABASE_SCHEMA": fresh_schema,
        }
    )
    assert line.startswith(f'genai: GENAI_PROMPT__DATABASE_SCHEMA: schema "{fresh_schema}"'), line
    assert f'CREATE SCHEMA "{fresh_schema}" AUTHORIZATION "{role_without_create}"' in line


def _newer_prompt_database(path: Path) -> None:
    """A prompt registry file that a newer release (migration 999) has migrated."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR(128) "
            "NOT NULL, applied_at_us BIGINT NOT NULL)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    conn.close()


def test_a_database_at_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "prompts.db"
    _newer_prompt_database(registry)
    line = _serve_refused({"GENAI_PROMPT__DATABASE_URL": f"sqlite+aiosqlite:///{registry}"})
    assert line.startswith("genai: GENAI_PROMPT__DATABASE_URL: the SqlPromptStore tables in "), line
    assert "at schema version 999" in line
    assert "Run that release (or a newer one), or restore the backup" in line


def test_with_workers_a_start_up_error_is_printed_once(refusing_port: int) -> None:
    """Worker 0 meets the error first; the supervisor prints it once and starts no other."""
    line = _serve_refused(
        {"GENAI_PROMPT__DATABASE_URL": _url(password=PASSWORD, port=refusing_port)},
        "--workers",
        "2",
    )
    assert line.startswith("genai: GENAI_PROMPT__DATABASE_URL: cannot connect to "), line


def test_a_missing_schema_is_created_and_served(tmp_path: Path, fresh_schema: str) -> None:
    """Today's `InvalidSchemaNameError: no schema has been selected to create in` is gone."""
    env = {
        **os.environ,
        "GENAI_PROMPT__DATABASE_URL": POSTGRES_URL,
        "GENAI_PROMPT__DATABASE_SCHEMA": fresh_schema,
    }
    with genai_serve(tmp_path, "--service", "prompt", "--no-prompts", env=env) as served:
        assert served.services == ("genai.prompt.v1.PromptService",)
    tables = _admin(
        "SELECT table_name FROM information_schema.tables "
        f"WHERE table_schema = '{fresh_schema}' ORDER BY table_name"
    )
    assert ("schema_migrations",) in tables
    assert ("prompts",) in tables


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_api_keys_in_plaintext_on_a_network_address_are_refused(workers: list[str]) -> None:
    command = [sys.executable, "-m", "services.cli", "serve", "--port", "0", "--no-prompts"]
    result = subprocess.run(
        [*command, "--service", "prompt", "--host", "0.0.0.0", *workers],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert "server.host '0.0.0.0' is not a loopback address and API keys are on" in message
    assert "GENAI_SERVER__TLS_TERMINATED_UPSTREAM=true" in message


def test_tls_ended_in_front_of_the_server_is_a_named_logged_choice(tmp_path: Path) -> None:
    env = {
        "GENAI_SERVER__TLS_TERMINATED_UPSTREAM": "true",
        "GENAI_INFERENCE__TRITON__LAUNCH": "false",
    }
    with genai_serve(
        tmp_path, "--host", "0.0.0.0", "--service", "prompt", "--no-prompts", env=env
    ) as served:
        served.process.send_signal(2)
        output, _ = served.process.communicate(timeout=60)
    assert "serving API keys without TLS on 0.0.0.0" in output, output
