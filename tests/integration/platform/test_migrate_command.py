"""`genai migrate`: the deployment's migration Job. It migrates every store once, seeds the
prompt files, makes a bootstrap key on request, and is a no-op on a migrated database; on
SQLite and on a PostgreSQL schema of its own, as the Job runs it (a subprocess, settings from
GENAI_* variables)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.auth import DEFAULT_TENANT
from services.common.policy import Role
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.gateway.core.tenants import parse_secret, secret_matches
from services.platform.migrate import STORES
from tests.support.databases import BACKENDS, Database, database

ROOT = Path(__file__).resolve().parents[3]


def _env(db: Database, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env |= {
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "GENAI_AUTH__INTERNAL_TOKEN": "i" * 43,
        "GENAI_AUTH__DEVELOPMENT_KEY": "false",
    }
    for section in ("GATEWAY", "PROMPT", "EXPERIMENT", "EVALUATION"):
        env[f"GENAI_{section}__DATABASE_URL"] = db.url
        if db.schema:
            env[f"GENAI_{section}__DATABASE_SCHEMA"] = db.schema
    return env


def _migrate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("backend", BACKENDS)
async def test_it_migrates_once_seeds_and_bootstraps_a_key(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path) as db:
        env = _env(db, tmp_path)
        first = _migrate(env, "--prompts", str(ROOT / "prompts"), "--bootstrap-admin-key")
        assert first.returncode == 0, first.stderr
        for spec in STORES:
            assert re.search(rf"^{re.escape(spec.name)}: applied \d", first.stdout, re.M), spec
        assert "chat: created prompt; created v1; production -> v1" in first.stdout
        found = re.search(r"export GENAI_API_KEY=(\S+)", first.stdout)
        assert found is not None
        secret = found.group(1)

        again = _migrate(env, "--prompts", str(ROOT / "prompts"))
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("none (up to date)") == len(STORES)
        assert "GENAI_API_KEY" not in again.stdout  # no key unless asked for
        assert "created v1" not in again.stdout  # the same files change nothing

        tenants = SqlTenantStore.from_url(db.url, schema=db.schema)
        try:
            key_id = parse_secret(secret)
            assert key_id is not None
            stored = await tenants.find_api_key(key_id)
            assert stored is not None
            assert stored.key.tenant_id == DEFAULT_TENANT
            assert stored.key.role is Role.PLATFORM_ADMIN
            assert secret_matches(secret, stored.secret_hash)
        finally:
            await tenants.close()
        assert not (tmp_path / "xdg" / "genai-platform" / "dev-api-key").exists()

        gateway_only = _migrate(env, "--store", "gateway", "--bootstrap-admin-key")
        assert gateway_only.returncode == 0, gateway_only.stderr
        assert "prompts:" not in gateway_only.stdout
        assert "tenants, API keys and audit log: applied none" in gateway_only.stdout
        assert re.search(r"export GENAI_API_KEY=gk_", gateway_only.stdout)


def test_an_unreachable_database_fails_naming_its_setting(tmp_path: Path) -> None:
    env = _env(Database("postgres", "postgresql+asyncpg://nobody@127.0.0.1:1/none"), tmp_path)
    result = _migrate(env)
    assert result.returncode == 2  # the CLI's status for a configuration error
    assert "GENAI_GATEWAY__DATABASE_URL: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr
