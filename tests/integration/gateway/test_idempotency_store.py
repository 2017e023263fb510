"""The idempotency store on real SQLite and real PostgreSQL: its own migrations, claims that two
stores (two replicas) racing on one key never both win, replays, fingerprints, releases,
leases that lapse and are taken over, renewals, and the sweep of expired rows."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.gateway.adapters.idempotency_store import SqlIdempotencyStore, idempotency
from services.gateway.core.idempotency import Claimed, InProgress, Mismatch, Replay
from tests.support.databases import BACKENDS, Database, database

SCOPE = "completion"


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def store(db: Database) -> AsyncIterator[SqlIdempotencyStore]:
    store = SqlIdempotencyStore.from_url(db.url, schema=db.schema)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def _claim(
    store: SqlIdempotencyStore,
    request_id: str = "r1",
    fingerprint: str = "fp",
    *,
    owner: str = "p1",
    tenant: str = "acme",
    scope: str = SCOPE,
    lease: float = 10.0,
) -> object:
    return await store.claim(
        tenant, scope, request_id, fingerprint, owner=owner, lease_seconds=lease
    )


async def test_migrations_apply_once_in_their_own_table(db: Database) -> None:
    stores = [SqlIdempotencyStore.from_url(db.url, schema=db.schema) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        assert sorted(applied) == [[], [], [1]]
        async with stores[0]._read() as conn:
            versions = await conn.execute(
                sa.text("SELECT version FROM gateway_idempotency_migrations")
            )
            assert list(versions.scalars()) == [1]
    finally:
        for s in stores:
            await s.close()


async def test_a_claimed_key_is_in_progress_then_replays_its_outcome(
    store: SqlIdempotencyStore,
) -> None:
    first = await _claim(store)
    assert isinstance(first, Claimed)
    assert (first.claim.tenant_id, first.claim.scope, first.claim.request_id) == (
        "acme",
        SCOPE,
        "r1",
    )
    waiting = await _claim(store, owner="p2")
    assert isinstance(waiting, InProgress)
    assert 9.0 < waiting.lease_left <= 10.0
    assert await _claim(store, fingerprint="other", owner="p2") == Mismatch()

    outcome = bytes(range(256)) * 4  # any bytes, NULs included
    assert await store.complete(first.claim, outcome, retention_seconds=3600)
    assert await _claim(store, owner="p2") == Replay(outcome)
    assert await _claim(store, owner="p1") == Replay(outcome)
    assert await _claim(store, fingerprint="other") == Mismatch()
    assert not await store.complete(first.claim, b"again", retention_seconds=3600)
    assert not await store.release(first.claim)  # a completed key is never freed by its claim
    assert await store.get("acme", SCOPE, "r1") == outcome


async def test_keys_are_per_tenant_and_per_scope(store: SqlIdempotencyStore) -> None:
    claims = [
        await _claim(store, tenant="acme", scope=SCOPE),
        await _claim(store, tenant="globex", scope=SCOPE),
        await _claim(store, tenant="acme", scope="GatewayService/CreateApiKey"),
    ]
    assert all(isinstance(c, Claimed) for c in claims)
    assert len({c.claim.token for c in claims if isinstance(c, Claimed)}) == 3


async def test_two_replicas_racing_on_one_key_never_both_claim_it(db: Database) -> None:
    replicas = [SqlIdempotencyStore.from_url(db.url, schema=db.schema) for _ in range(2)]
    try:
        await replicas[0].migrate()
        for round_ in range(5):
            results = await asyncio.gather(
                *(_claim(replicas[i % 2], f"race-{round_}", owner=f"p{i % 2}") for i in range(16))
            )
            claimed = [r for r in results if isinstance(r, Claimed)]
            assert len(claimed) == 1, results
            assert all(isinstance(r, InProgress) for r in results if r not in claimed)
    finally:
        for replica in replicas:
            await replica.close()


async def test_a_released_claim_lets_a_retry_run_again(store: SqlIdempotencyStore) -> None:
    first = await _claim(store)
    assert isinstance(first, Claimed)
    assert await store.release(first.claim)
    assert not await store.release(first.claim)
    second = await _claim(store, fingerprint="a different request may use the freed id")
    assert isinstance(second, Claimed)
    assert second.claim.token != first.claim.token


async def test_a_lapsed_lease_is_taken_over_and_the_old_claim_is_lost(
    store: SqlIdempotencyStore,
) -> None:
    dead = await _claim(store, owner="killed", lease=0.2)
    assert isinstance(dead, Claimed)
    assert isinstance(await _claim(store, owner="p2"), InProgress)
    await asyncio.sleep(0.3)
    taken = await _claim(store, owner="p2")
    assert isinstance(taken, Claimed)
    assert taken.claim.owner == "p2"
    # The old owner, had it survived, can neither store its outcome nor free the key.
    assert not await store.complete(dead.claim, b"late", retention_seconds=60)
    assert not await store.release(dead.claim)
    assert await store.renew("killed", 10.0) == 0
    assert await store.complete(taken.claim, b"done", retention_seconds=60)
    assert await _claim(store) == Replay(b"done")


async def test_renewing_keeps_every_running_claim_of_the_owner_held(
    store: SqlIdempotencyStore,
) -> None:
    mine = [await _claim(store, f"r{i}", owner="p1", lease=0.3) for i in range(3)]
    other = await _claim(store, "theirs", owner="p2", lease=0.3)
    assert all(isinstance(c, Claimed) for c in [*mine, other])
    done = mine[2]
    assert isinstance(done, Claimed)
    assert await store.complete(done.claim, b"x", retention_seconds=60)
    assert await store.renew("p1", 10.0) == 2  # the running ones, not the completed one
    await asyncio.sleep(0.4)
    assert isinstance(await _claim(store, "r0", owner="p3"), InProgress)
    assert isinstance(await _claim(store, "r1", owner="p3"), InProgress)
    assert isinstance(await _claim(store, "theirs", owner="p3"), Claimed)  # not renewed: lapsed


async def test_the_sweep_deletes_expired_outcomes_and_lapsed_claims_only(
    store: SqlIdempotencyStore,
) -> None:
    expired = await _claim(store, "expired")
    kept = await _claim(store, "kept")
    assert isinstance(expired, Claimed)
    assert isinstance(kept, Claimed)
    assert await store.complete(expired.claim, b"old", retention_seconds=0.1)
    assert await store.complete(kept.claim, b"new", retention_seconds=3600)
    assert isinstance(await _claim(store, "lapsed", lease=0.1), Claimed)
    assert isinstance(await _claim(store, "running", lease=60), Claimed)
    await asyncio.sleep(0.2)
    # An expired outcome is gone for retries even before a sweep deletes it.
    assert isinstance(
        await _claim(store, "expired", fingerprint="new", owner="p2", lease=60), Claimed
    )
    assert await store.sweep() == 1  # "lapsed"
    async with store._read() as conn:
        left = await conn.execute(sa.select(idempotency.c.request_id))
        assert sorted(left.scalars()) == ["expired", "kept", "running"]
    assert await store.sweep() == 0
