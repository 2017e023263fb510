"""The tenant feed between two replicas on one database (SQLite file, PostgreSQL schema): quota
changes and revocations made through one store reach the other replica's caches within a second,
in commit order, although those caches would keep their entries for five minutes."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.common.errors import Unauthenticated
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.gateway.core.auth import ApiKeyAuthenticator
from services.gateway.core.tenants import TenantEventKind, TenantQuota
from services.gateway.tenancy import TenantDirectory
from services.platform.runner import TenantFeed
from tests.support.databases import BACKENDS, Database, database


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def stores(db: Database) -> AsyncIterator[tuple[SqlTenantStore, SqlTenantStore]]:
    """Two replicas' stores (engines of their own) on one database."""
    a = SqlTenantStore.from_url(db.url, schema=db.schema)
    b = SqlTenantStore.from_url(db.url, schema=db.schema)
    await asyncio.gather(a.migrate(), b.migrate())
    yield a, b
    await a.close()
    await b.close()


async def _delay_until(check: Callable[[], Awaitable[bool]], limit_s: float = 3.0) -> float:
    """Seconds until `check()` holds (asked every 5 ms); fails after `limit_s`."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"not seen within {limit_s} s")


async def test_changes_through_one_replica_reach_the_other_replicas_caches(
    db: Database, stores: tuple[SqlTenantStore, SqlTenantStore]
) -> None:
    a, b = stores
    await a.create_tenant("acme", quota=TenantQuota(requests_per_minute=100))
    key, secret = await a.create_api_key("acme")

    feed = TenantFeed(b, db.url, poll_seconds=0.5)
    authenticator = ApiKeyAuthenticator(b, cache_ttl=300)
    directory = TenantDirectory(
        client_for=lambda _tenant: pytest.fail("no prompt client is needed"),
        tenant_lookup=b.get_tenant,
        cache_seconds=300,
    )
    feed.changes.on_key_revoked(authenticator.forget)
    feed.changes.on_quota_changed(directory.forget)
    await feed.start()
    try:
        assert (await directory.quota("acme")).requests_per_minute == 100  # cached from now on
        principal = await authenticator.authenticate("/m", {"authorization": f"Bearer {secret}"})
        assert principal.tenant_id == "acme"

        async def quota_seen() -> bool:
            return (await directory.quota("acme")).requests_per_minute == 7

        async def key_refused() -> bool:
            try:
                await authenticator.authenticate("/m", {"authorization": f"Bearer {secret}"})
            except Unauthenticated:
                return True
            return False

        await a.update_quota("acme", TenantQuota(requests_per_minute=7))
        quota_delay = await _delay_until(quota_seen)
        await a.revoke_api_key(key.id)
        revoke_delay = await _delay_until(key_refused)
        assert quota_delay < 1.0
        assert revoke_delay < 1.0
        if db.backend == "postgres":  # NOTIFY, not the half-second poll
            assert max(quota_delay, revoke_delay) < 0.3, (quota_delay, revoke_delay)
    finally:
        await feed.close()
        await directory.close()


async def test_the_feed_holds_each_change_once_in_commit_order(
    stores: tuple[SqlTenantStore, SqlTenantStore],
) -> None:
    a, b = stores
    start = await b.last_tenant_event()
    await a.create_tenant("acme")
    key, _ = await a.create_api_key("acme")

    async def change(index: int) -> None:
        store = (a, b)[index % 2]
        await store.update_quota("acme", TenantQuota(tokens_per_minute=index + 1))

    await asyncio.gather(*(change(i) for i in range(20)))
    await a.revoke_api_key(key.id)
    await b.revoke_api_key(key.id)  # already revoked: no second event
    events = await b.tenant_events_after(start)
    assert [e.kind for e in events] == [TenantEventKind.QUOTA_CHANGED] * 20 + [
        TenantEventKind.API_KEY_REVOKED
    ]
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert events[-1].key_id == key.id
    assert events[-1].tenant_id == "acme"
    assert await b.last_tenant_event() == events[-1].sequence


async def test_a_database_from_before_the_feed_gains_it(db: Database) -> None:
    store = SqlTenantStore.from_url(db.url, schema=db.schema)
    try:
        old = SqlTenantStore.from_url(db.url, schema=db.schema)
        old.MIGRATIONS = old.MIGRATIONS[:1]  # the store as it shipped before the feed
        await old.migrate()
        await old.close()
        await store.create_tenant("acme")
        assert await store.migrate() == [2, 3]
        await store.update_quota("acme", TenantQuota(requests_per_minute=1))
        assert [e.kind for e in await store.tenant_events_after(0)] == [
            TenantEventKind.QUOTA_CHANGED
        ]
        async with store._engine.connect() as conn:  # the old tables were kept
            count = await conn.execute(sa.text("SELECT count(*) FROM gateway_tenants"))
            assert count.scalar_one() == 1
    finally:
        await store.close()
