"""Tenant quotas in the real Redis: the behaviour table the in-process limiter passes
(`tests/unit/gateway/test_quota_memory.py`), then what only a shared store has: several replicas
reserving at once never over-admit, keys expire after their window, lost keys never make totals
negative, a flushed script cache is reloaded, and a Redis that does not answer is UNAVAILABLE."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import pytest

from services.common.errors import ResourceExhausted, Unavailable
from services.gateway.adapters.redis_quota import DAY_KEY_MARGIN, MINUTE_KEY_TTL, RedisQuotaLimiter
from services.gateway.core.quota import Reservation, Usage
from services.gateway.core.tenants import TenantQuota
from tests.support.redis import RedisNamespace, redis_namespace
from tests.unit.gateway.test_quota_memory import NOON, SCENARIOS, FakeClock, Scenario, play

TENANT = "acme"


@pytest.fixture
async def namespace() -> AsyncIterator[RedisNamespace]:
    async with redis_namespace() as found:
        yield found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limiter(namespace: RedisNamespace, clock: FakeClock) -> AsyncIterator[RedisQuotaLimiter]:
    limiter = RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix, clock=clock)
    try:
        yield limiter
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_behaviour(limiter: RedisQuotaLimiter, clock: FakeClock, scenario: Scenario) -> None:
    await play(limiter, clock, scenario)


@pytest.mark.parametrize("replicas", [1, 2, 3])
async def test_concurrent_replicas_never_over_admit(
    namespace: RedisNamespace, replicas: int
) -> None:
    # The Redis server's clock, as in production; each replica has its own connections.
    limiters = [RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix) for _ in range(replicas)]  # fmt: skip
    quota = TenantQuota(requests_per_minute=50, tokens_per_minute=100_000)
    try:
        results = await asyncio.gather(
            *(limiters[i % replicas].reserve(TENANT, quota, Usage(1, 10)) for i in range(200)),
            return_exceptions=True,
        )
        admitted = [r for r in results if isinstance(r, Reservation)]
        rejected = [r for r in results if isinstance(r, ResourceExhausted)]
        assert (len(admitted), len(rejected)) == (50, 150)
        assert all(r.retry_after is not None and 58 < r.retry_after <= 60 for r in rejected)
        requests, tokens, _ = limiters[0].keys(TENANT)
        assert await namespace.total(requests) == 50
        assert await namespace.total(tokens) == 500
        # Every reservation is in the server clock's current second (or the one before).
        assert all(abs(r.second - time.time()) < 5 for r in admitted)
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_concurrent_replicas_share_every_limit(namespace: RedisNamespace) -> None:
    limiters = [RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix) for _ in range(2)]
    # Tokens allow 100 requests, cost allows 40: cost decides.
    quota = TenantQuota(tokens_per_minute=1000, cost_per_day_micros=40_000)

    async def request(i: int) -> bool:
        limiter = limiters[i % 2]
        try:
            reservation = await limiter.reserve(TENANT, quota, Usage(1, 10, 1000))
        except ResourceExhausted:
            return False
        await limiter.settle(reservation, Usage(1, 5, 1000))
        return True

    try:
        outcomes = await asyncio.gather(*(request(i) for i in range(120)))
        assert outcomes.count(True) == 40
        _, tokens, cost = limiters[0].keys(TENANT)
        assert await namespace.total(tokens) == 200
        assert await namespace.total(cost) == 40_000
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_keys_expire_after_their_window(
    limiter: RedisQuotaLimiter, namespace: RedisNamespace
) -> None:
    quota = TenantQuota(requests_per_minute=10, tokens_per_minute=1000, cost_per_day_micros=10)
    reservation = await limiter.reserve(TENANT, quota, Usage(1, 100, 5))
    requests, tokens, cost = limiter.keys(TENANT)
    inflight = f"{namespace.prefix}{{acme}}:inflight"
    tenants = f"{namespace.prefix}tenants"
    assert await namespace.keys() == sorted([requests, tokens, cost, inflight, tenants])
    assert await cast("Awaitable[list[str]]", namespace.client.hkeys(inflight)) == [
        reservation.id  # until settled
    ]
    assert requests.startswith(namespace.prefix)
    assert "{acme}" in requests
    for key in (requests, tokens):
        assert 60 < await namespace.client.ttl(key) <= MINUTE_KEY_TTL
    # The fake clock says noon UTC: the day key lives 12 hours, plus the margin.
    assert 12 * 3600 < await namespace.client.ttl(cost) <= 12 * 3600 + DAY_KEY_MARGIN


async def test_lost_keys_never_make_totals_negative(
    limiter: RedisQuotaLimiter, namespace: RedisNamespace, clock: FakeClock
) -> None:
    quota = TenantQuota(tokens_per_minute=1000, cost_per_day_micros=1000)
    reservation = await limiter.reserve(TENANT, quota, Usage(1, 500, 500))
    await namespace.client.delete(*limiter.keys(TENANT))  # e.g. a Redis restart without data
    await limiter.settle(reservation, Usage(1, 100, 100))
    assert await namespace.keys() == [
        f"{namespace.prefix}tenants",
        f"{namespace.prefix}{{acme}}:usage",  # the settled totals
    ]
    assert await limiter.usage(TENANT) == Usage(1, 100, 100)
    clock.now += 1
    await limiter.reserve(TENANT, quota, Usage(1, 1000, 1000))  # the whole limit fits
    with pytest.raises(ResourceExhausted):
        await limiter.reserve(TENANT, quota, Usage(1, 1, 0))


async def test_a_flushed_script_cache_is_reloaded(
    limiter: RedisQuotaLimiter, namespace: RedisNamespace
) -> None:
    quota = TenantQuota(requests_per_minute=2)
    reservation = await limiter.reserve(TENANT, quota, Usage())
    await namespace.client.script_flush()
    await limiter.settle(reservation, Usage(requests=0))
    await namespace.client.script_flush()
    await limiter.reserve(TENANT, quota, Usage())
    await limiter.reserve(TENANT, quota, Usage())
    with pytest.raises(ResourceExhausted):
        await limiter.reserve(TENANT, quota, Usage())


async def test_the_server_clock_is_the_default(namespace: RedisNamespace) -> None:
    limiter = RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix)
    try:
        reservation = await limiter.reserve(TENANT, TenantQuota(), Usage())
        (seconds, _) = await namespace.client.time()
        assert seconds - 2 <= reservation.second <= seconds
        assert reservation.day == reservation.second // 86_400
    finally:
        await limiter.aclose()


async def test_an_unreachable_redis_is_unavailable_never_a_crash() -> None:
    # Port 1 refuses connections; the password must not leak into the error.
    limiter = RedisQuotaLimiter("redis://:hunter2@127.0.0.1:1/0", clock=lambda: NOON, timeout=0.5)
    try:
        with pytest.raises(Unavailable) as raised:
            await limiter.reserve(TENANT, TenantQuota(requests_per_minute=1), Usage())
        error = raised.value
        assert error.reason == "SERVICE_UNAVAILABLE"
        assert error.retry_after == 1.0
        assert "their Redis store failed (ConnectionError)" in error.message
        assert "hunter2" not in error.message
        assert "127.0.0.1" not in error.message

        reservation = Reservation(TENANT, Usage(), second=int(NOON), day=int(NOON) // 86_400)
        with pytest.raises(Unavailable):
            await limiter.settle(reservation, Usage(requests=0))
        assert not reservation.settled  # may be settled again once Redis is back
    finally:
        await limiter.aclose()


async def _killed(limiter: RedisQuotaLimiter) -> None:
    """Stops a limiter as a SIGKILL would: no more heartbeats or reports, nothing released."""
    for task in limiter._tasks:
        task.cancel()
    await asyncio.gather(*limiter._tasks, return_exceptions=True)
    limiter._tasks = []
    await limiter._redis.aclose()


async def test_a_dead_replicas_reservation_is_settled_once_at_its_last_report(
    namespace: RedisNamespace,
) -> None:
    def replica() -> RedisQuotaLimiter:
        return RedisQuotaLimiter(
            namespace.url,
            key_prefix=namespace.prefix,
            lease_seconds=0.3,
            report_seconds=0.02,
            sweep_seconds=3600,  # swept by hand below
        )

    survivor, doomed = replica(), replica()
    await survivor.start()
    await doomed.start()
    quota = TenantQuota(tokens_per_minute=10_000, cost_per_day_micros=1_000_000)
    try:
        live = await survivor.reserve(TENANT, quota, Usage(1, 500, 1000))
        cut = await doomed.reserve(TENANT, quota, Usage(1, 500, 1000))
        cut_used, live_used = [30], [12]
        doomed.track(cut, lambda: cut_used[-1])
        survivor.track(live, lambda: live_used[-1])
        await asyncio.sleep(0.1)  # both are reported
        cut_used.append(37)  # the last report before the kill
        await asyncio.sleep(0.1)
        assert await survivor.sweep() == 0  # every owner is alive
        await _killed(doomed)
        await asyncio.sleep(0.4)  # the doomed replica's lease expires
        assert await survivor.sweep() == 1
        assert await survivor.sweep() == 0  # once
        assert await survivor.in_flight(TENANT) == 1  # the survivor's own request goes on
        assert await survivor.usage(TENANT) == Usage(1, 37, 74)  # cost in proportion
        assert await survivor.reclaimed(TENANT) == Usage(1, 37)
        await survivor.settle(live, Usage(1, 200, 400))
        assert await survivor.usage(TENANT) == Usage(2, 237, 474)
        assert await survivor.in_flight(TENANT) == 0
        requests, tokens, cost = survivor.keys(TENANT)
        assert await namespace.total(tokens) == 237  # the window holds what was used
        assert await namespace.total(requests) == 2
        assert await namespace.total(cost) == 474
    finally:
        await survivor.aclose()


async def test_an_owner_settling_after_a_sweep_changes_nothing(namespace: RedisNamespace) -> None:
    limiter = RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix, lease_seconds=0.2)
    sweeper = RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix)
    try:
        reservation = await limiter.reserve(TENANT, TenantQuota(), Usage(1, 100, 0))
        # Never started: no heartbeat, as if its lease had expired during a long pause.
        assert await sweeper.sweep() == 1
        await limiter.settle(reservation, Usage(1, 60, 0))  # too late: swept at 0 tokens
        limiter.track(reservation, lambda: 80)
        await limiter._report_progress()  # a late report does not bring it back
        assert await sweeper.usage(TENANT) == Usage(1, 0, 0)
        assert await sweeper.in_flight(TENANT) == 0
    finally:
        await limiter.aclose()
        await sweeper.aclose()


async def test_a_settlement_redis_failed_is_retried_until_it_takes(
    namespace: RedisNamespace,
) -> None:
    limiter = RedisQuotaLimiter(
        namespace.url, key_prefix=namespace.prefix, timeout=0.3, report_seconds=0.05
    )
    await limiter.start()
    try:
        reservation = await limiter.reserve(TENANT, TenantQuota(), Usage(1, 500, 100))
        await namespace.client.client_pause(1000, all=False)  # Redis holds every write
        with pytest.raises(Unavailable):
            await limiter.settle(reservation, Usage(1, 42, 10))
        assert not reservation.settled

        def settled() -> bool:  # read anew each time (the background retry sets it)
            return reservation.settled

        await namespace.client.client_unpause()
        for _ in range(100):
            if settled():
                break
            await asyncio.sleep(0.02)
        assert settled()
        assert await limiter.usage(TENANT) == Usage(1, 42, 10)
        assert await limiter.in_flight(TENANT) == 0
    finally:
        await namespace.client.client_unpause()
        await limiter.aclose()


async def test_a_dead_replicas_logged_request_is_settled_as_logged(
    namespace: RedisNamespace,
) -> None:
    """The gateway logs a request before it settles: a replica that died between the two
    leaves a reservation that the sweep settles at the logged usage, not at the last report
    (and does not count as reclaimed)."""
    log = {("acme", "req-logged"): Usage(1, 91, 182)}

    async def logged_usage(tenant_id: str, request_id: str) -> Usage | None:
        return log.get((tenant_id, request_id))

    doomed = RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix, lease_seconds=0.2)
    sweeper = RedisQuotaLimiter(
        namespace.url, key_prefix=namespace.prefix, logged_usage=logged_usage
    )
    try:
        logged = await doomed.reserve(
            TENANT, TenantQuota(), Usage(1, 500, 1000), request_id="req-logged"
        )
        await doomed.reserve(TENANT, TenantQuota(), Usage(1, 500, 1000), request_id="req-cut")
        doomed.track(logged, lambda: 30)  # never reported: the replica is never started
        assert await sweeper.sweep() == 2
        assert await sweeper.usage(TENANT) == Usage(2, 91, 182)  # logged + cut at 0 reported
        assert await sweeper.reclaimed(TENANT) == Usage(1, 0)  # only the one not logged
    finally:
        await doomed.aclose()
        await sweeper.aclose()


async def test_heartbeats_name_the_tenants_again_after_redis_forgot_them(
    namespace: RedisNamespace,
) -> None:
    limiter = RedisQuotaLimiter(namespace.url, key_prefix=namespace.prefix, lease_seconds=0.2)
    await limiter.start()
    try:
        await limiter.reserve(TENANT, TenantQuota(), Usage(1, 10, 0))
        tenants = f"{namespace.prefix}tenants"
        await namespace.client.delete(tenants)  # a Redis restarted without its data
        for _ in range(50):
            if await cast("Awaitable[int]", namespace.client.sismember(tenants, TENANT)):
                break
            await asyncio.sleep(0.02)
        assert await cast("Awaitable[int]", namespace.client.sismember(tenants, TENANT))
    finally:
        await limiter.aclose()
