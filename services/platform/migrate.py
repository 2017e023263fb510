"""`genai migrate`: apply every database migration of the platform's stores and exit, so that a
deployment migrates once, in a Job that runs before its rollout, instead of in whichever replica
starts first.

Replicas still check their stores at start (`SqlStore.migrate` is a no-op on a migrated
database, and refuses a database with migrations the build does not know), so running the Job
is what an operator does before rolling out a new release, not a condition of starting.

With `bootstrap_admin_key`, it also makes a platform-admin API key for the `default` tenant and
returns its secret (once; only its hash is stored): the first key of a deployment whose replicas
run with `auth.development_key` off.
"""

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.common.auth import DEFAULT_TENANT
from services.common.errors import AlreadyExists, NotFound
from services.common.policy import Role
from services.common.sql import database_setting
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.experiment.adapters.sql_store import SqlExperimentStore
from services.gateway.adapters.idempotency_store import SqlIdempotencyStore
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.platform.settings import PlatformSettings
from services.prompt.adapters.sql_store import SqlPromptStore

BOOTSTRAP_KEY_NAME = "genai migrate bootstrap key"


class _Store(Protocol):
    async def migrate(self) -> list[int]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class StoreSpec:
    """One store: the setting section that names its database, and how to open it."""

    name: str
    setting: str
    open: Callable[[PlatformSettings], _Store]


class _Openable(Protocol):
    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> _Store: ...


def _opener(store: type[_Openable], section: str) -> Callable[[PlatformSettings], _Store]:
    """Opens `store` on the database that the settings section `section` names."""

    def open_store(settings: PlatformSettings) -> _Store:
        config = getattr(settings, section)
        return store.from_url(config.resolved_database_url(), schema=config.database_schema or None)

    return open_store


STORES: tuple[StoreSpec, ...] = (
    StoreSpec("tenants, API keys and audit log", "gateway", _opener(SqlTenantStore, "gateway")),
    StoreSpec("request log", "gateway", _opener(SqlRequestLogStore, "gateway")),
    StoreSpec("idempotency records", "gateway", _opener(SqlIdempotencyStore, "gateway")),
    StoreSpec("prompts", "prompt", _opener(SqlPromptStore, "prompt")),
    StoreSpec("experiments", "experiment", _opener(SqlExperimentStore, "experiment")),
    StoreSpec(
        "evaluations and quality alerts", "evaluation", _opener(SqlEvaluationStore, "evaluation")
    ),
)
"""Every store of the platform, in the order `genai migrate` migrates them."""


@dataclass
class MigrationReport:
    """What `migrate_all` did: the migrations applied per store (empty: it was current), and
    the bootstrap key's secret when one was made."""

    applied: list[tuple[str, list[int]]] = field(default_factory=list)
    bootstrap_secret: str = ""

    def lines(self) -> list[str]:
        out = []
        for name, versions in self.applied:
            done = ", ".join(str(v) for v in versions) if versions else "none (up to date)"
            out.append(f"{name}: applied {done}")
        return out


async def migrate_all(
    settings: PlatformSettings,
    *,
    bootstrap_admin_key: bool = False,
    sections: Sequence[str] | None = None,
) -> MigrationReport:
    """Migrates every store (`STORES`; with `sections`, those of these settings sections), one
    at a time; raises the first store's `DatabaseStartError` (naming its setting) and leaves
    the rest as they were."""
    report = MigrationReport()
    for spec in STORES:
        if sections is not None and spec.setting not in sections:
            continue
        store = spec.open(settings)
        try:
            with database_setting(spec.setting):
                report.applied.append((spec.name, await store.migrate()))
            if bootstrap_admin_key and isinstance(store, SqlTenantStore):
                report.bootstrap_secret = await _bootstrap_key(store)
        finally:
            await store.close()
    return report


async def _bootstrap_key(tenants: SqlTenantStore) -> str:
    try:
        await tenants.get_tenant(DEFAULT_TENANT)
    except NotFound:
        with contextlib.suppress(AlreadyExists):
            await tenants.create_tenant(DEFAULT_TENANT, "Default tenant")
    _, secret = await tenants.create_api_key(
        DEFAULT_TENANT, BOOTSTRAP_KEY_NAME, role=Role.PLATFORM_ADMIN
    )
    return secret
