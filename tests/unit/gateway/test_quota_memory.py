"""Tenant quotas in one process, on a fake clock. `SCENARIOS` is the behaviour every
`QuotaLimiter` must have (the Redis limiter's tests play the same table): windows sliding in
1-second buckets, retry delays, the UTC day, requests that can never fit, settling up and down.
Then the error's shape, and concurrent reserves that admit exactly the limit."""

import asyncio
from dataclasses import dataclass

import pytest

from services.common.errors import QuotaViolation, ResourceExhausted
from services.gateway.core.quota import (
    InMemoryQuotaLimiter,
    QuotaLimiter,
    Reservation,
    Usage,
    next_utc_midnight,
)
from services.gateway.core.tenants import MAX_COST_MICROS, UNLIMITED, TenantQuota

MIDNIGHT = 1_767_225_600.0
"""2026-01-01T00:00:00Z."""
NOON = MIDNIGHT + 12 * 3600
TENANT = "acme"


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Reserve:
    """At `at` seconds into the scenario, reserve `usage`: admitted when `exceeded` is empty,
    else rejected for exactly those limits with `retry_after` (None: never fits)."""

    at: float
    usage: Usage
    exceeded: tuple[str, ...] = ()
    retry_after: float | None = None
    tenant: str = TENANT
    quota: TenantQuota | None = None
    """Overrides the scenario's quota for this step."""


@dataclass(frozen=True)
class Settle:
    """At `at`, settle the `reservation`-th admitted reservation with `actual`."""

    at: float
    reservation: int
    actual: Usage


@dataclass(frozen=True)
class Scenario:
    name: str
    quota: TenantQuota
    steps: tuple[Reserve | Settle, ...]
    start: float = NOON


RPM = "requests_per_minute"
TPM = "tokens_per_minute"
CPD = "cost_per_day"


MAX_COST = TenantQuota(cost_per_day_micros=MAX_COST_MICROS)


def tokens(n: int) -> Usage:
    return Usage(requests=1, tokens=n)


SCENARIOS = (
    Scenario(
        "requests slide out of the window with their second",
        TenantQuota(requests_per_minute=3),
        (
            Reserve(0.5, Usage()),
            Reserve(10.2, Usage()),
            Reserve(20.0, Usage()),
            Reserve(30.0, Usage(), (RPM,), retry_after=30.0),
            Reserve(59.99, Usage(), (RPM,), retry_after=0.01),
            Reserve(60.0, Usage()),  # second 0 has left: the window is seconds 1..60
            Reserve(61.0, Usage(), (RPM,), retry_after=9.0),  # second 10 leaves at 70
        ),
    ),
    Scenario(
        "the window is the current second and the 59 before it",
        TenantQuota(requests_per_minute=1),
        (
            Reserve(0.999, Usage()),
            Reserve(59.999, Usage(), (RPM,), retry_after=0.001),
            Reserve(60.0, Usage()),
        ),
    ),
    Scenario(
        "tokens wait for enough of the oldest buckets to leave",
        TenantQuota(tokens_per_minute=1000),
        (
            Reserve(0, tokens(400)),
            Reserve(5, tokens(300)),
            Reserve(10, tokens(200)),
            Reserve(20, tokens(500), (TPM,), retry_after=40.0),  # second 0 frees 400
            Reserve(20, tokens(701), (TPM,), retry_after=45.0),  # seconds 0 and 5 free 700
            Reserve(20, tokens(100)),
            Reserve(65, tokens(700)),  # 200 + 100 left in the window
        ),
    ),
    Scenario(
        "every exceeded limit is reported, and the retry waits for all of them",
        TenantQuota(requests_per_minute=1, tokens_per_minute=100, cost_per_day_micros=1000),
        (
            Reserve(0, Usage(1, 50, 600)),
            Reserve(1, Usage(1, 60, 500), (RPM, TPM, CPD), retry_after=12 * 3600 - 1),
            Reserve(1, Usage(0, 60, 400), (TPM,), retry_after=59.0),
        ),
    ),
    Scenario(
        "cost per day refills at the next UTC midnight",
        TenantQuota(cost_per_day_micros=1_000_000),
        (
            Reserve(0, Usage(cost_micros=600_000)),
            Reserve(10, Usage(cost_micros=500_000), (CPD,), retry_after=90.0),
            Reserve(10, Usage(cost_micros=400_000)),
            Reserve(99.5, Usage(cost_micros=1), (CPD,), retry_after=0.5),
            Reserve(100, Usage(cost_micros=1_000_000)),  # a new UTC day
        ),
        start=MIDNIGHT - 100,
    ),
    Scenario(
        "a request larger than a whole limit can never fit",
        TenantQuota(requests_per_minute=1, tokens_per_minute=100),
        (
            Reserve(0, tokens(101), (TPM,), retry_after=None),
            Reserve(1, tokens(100)),
            Reserve(2, tokens(101), (RPM, TPM), retry_after=None),
            Reserve(3, Usage(requests=2, tokens=0), (RPM,), retry_after=None),
        ),
    ),
    Scenario(
        "settling lower frees room at once",
        TenantQuota(tokens_per_minute=1000),
        (
            Reserve(0, tokens(800)),
            Reserve(1, tokens(300), (TPM,), retry_after=59.0),
            Settle(2, 0, tokens(100)),
            Reserve(3, tokens(300)),
            Reserve(3, tokens(601), (TPM,), retry_after=57.0),  # second 0 now holds 100
            Reserve(3, tokens(600)),
        ),
    ),
    Scenario(
        "settling higher counts the overrun, also against requests that use no tokens",
        TenantQuota(tokens_per_minute=1000),
        (
            Reserve(0, tokens(100)),
            Settle(1, 0, tokens(1200)),
            Reserve(2, tokens(0), (TPM,), retry_after=58.0),
            Reserve(60, tokens(1000)),
        ),
    ),
    Scenario(
        "settling also replaces requests and cost",
        TenantQuota(requests_per_minute=2, cost_per_day_micros=1000),
        (
            Reserve(0, Usage(1, 0, 900)),
            Settle(1, 0, Usage(0, 0, 100)),
            Reserve(2, Usage(2, 0, 900)),
            Reserve(3, Usage(1, 0, 1), (RPM, CPD), retry_after=12 * 3600 - 3),
        ),
    ),
    Scenario(
        "only the first settle of a reservation counts",
        TenantQuota(tokens_per_minute=1000),
        (
            Reserve(0, tokens(500)),
            Settle(1, 0, tokens(100)),
            Settle(2, 0, tokens(900)),
            Reserve(3, tokens(900)),
        ),
    ),
    Scenario(
        "a settle after its bucket left the window changes nothing",
        TenantQuota(tokens_per_minute=100),
        (
            Reserve(0, tokens(100)),
            Reserve(60, tokens(100)),
            Settle(61, 0, tokens(0)),  # must not take 100 from second 60
            Reserve(62, tokens(1), (TPM,), retry_after=58.0),
            Reserve(63, tokens(0)),
        ),
    ),
    Scenario(
        "a settle after its UTC day ended changes nothing",
        TenantQuota(cost_per_day_micros=1000),
        (
            Reserve(0, Usage(cost_micros=1000)),
            Reserve(10, Usage(cost_micros=1000)),  # the next day
            Settle(11, 0, Usage(cost_micros=0)),
            Reserve(12, Usage(cost_micros=1), (CPD,), retry_after=86_400 - 2),
        ),
        start=MIDNIGHT - 10,
    ),
    Scenario(
        "usage under no limit still counts once a limit is set",
        UNLIMITED,
        (
            Reserve(0, Usage(1, 600, 10**12)),
            Reserve(1, Usage(1, 600, 0)),
            Reserve(2, tokens(600), (TPM,), retry_after=58.0, quota=TenantQuota(0, 1500, 0)),
            Reserve(3, tokens(300), quota=TenantQuota(0, 1500, 0)),
            # The largest cost limit is exact to the last micro.
            Reserve(4, Usage(0, 0, MAX_COST_MICROS - 10**12), quota=MAX_COST),
            Reserve(5, Usage(0, 0, 1), (CPD,), retry_after=12 * 3600 - 5, quota=MAX_COST),
        ),
    ),
    Scenario(
        "tenants are counted apart",
        TenantQuota(requests_per_minute=1),
        (
            Reserve(0, Usage()),
            Reserve(0, Usage(), tenant="globex"),
            Reserve(1, Usage(), (RPM,), retry_after=59.0),
            Reserve(1, Usage(), (RPM,), retry_after=59.0, tenant="globex"),
        ),
    ),
)


async def play(limiter: QuotaLimiter, clock: FakeClock, scenario: Scenario) -> None:
    """Runs `scenario`'s steps against `limiter`, asserting each expectation."""
    admitted: list[Reservation] = []
    for number, step in enumerate(scenario.steps):
        clock.now = scenario.start + step.at
        where = f"{scenario.name}: step {number}"
        if isinstance(step, Settle):
            await limiter.settle(admitted[step.reservation], step.actual)
            continue
        quota = step.quota or scenario.quota
        if not step.exceeded:
            reservation = await limiter.reserve(step.tenant, quota, step.usage)
            assert (reservation.tenant_id, reservation.usage) == (step.tenant, step.usage), where
            admitted.append(reservation)
            continue
        with pytest.raises(ResourceExhausted) as raised:
            await limiter.reserve(step.tenant, quota, step.usage)
        error = raised.value
        names = tuple(v.description.split(":")[0] for v in error.violations)
        assert names == step.exceeded, where
        assert {v.subject for v in error.violations} == {f"tenant:{step.tenant}"}, where
        if step.retry_after is None:
            assert error.retry_after is None, where
        else:
            assert error.retry_after == pytest.approx(step.retry_after, abs=1e-3), where


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_behaviour(scenario: Scenario) -> None:
    clock = FakeClock()
    await play(InMemoryQuotaLimiter(clock), clock, scenario)


async def test_the_error_names_each_limit_with_its_numbers() -> None:
    clock = FakeClock()
    limiter = InMemoryQuotaLimiter(clock)
    quota = TenantQuota(
        requests_per_minute=100, tokens_per_minute=1000, cost_per_day_micros=2_500_000
    )
    await limiter.reserve(TENANT, quota, Usage(1, 980, 2_000_000))
    clock.now += 12.5
    with pytest.raises(ResourceExhausted) as raised:
        await limiter.reserve(TENANT, quota, Usage(1, 50, 1_000_000))
    error = raised.value
    assert error.reason == "QUOTA_EXCEEDED"
    assert error.violations == (
        QuotaViolation("tenant:acme", "tokens_per_minute: 1,000 limit, 980 used, 50 requested"),
        QuotaViolation(
            "tenant:acme", "cost_per_day: $2.500000 limit, $2.000000 used, $1.000000 requested"
        ),
    )
    assert error.retry_after == pytest.approx(next_utc_midnight(clock.now) - clock.now)
    assert error.metadata == {"tenant": "acme", "limits": "tokens_per_minute,cost_per_day"}
    assert error.message.startswith("tenant 'acme' is over its quota: tokens_per_minute: 1,000")
    assert error.message.endswith("(fits again in 43187.5 s)")

    with pytest.raises(ResourceExhausted) as raised:
        await limiter.reserve(TENANT, quota, Usage(1, 5000, 0))
    assert raised.value.violations == (
        QuotaViolation("tenant:acme", "tokens_per_minute: 5,000 requested can never fit the 1,000 limit"),
    )  # fmt: skip
    assert raised.value.retry_after is None
    assert "fits again" not in raised.value.message


async def test_a_rejected_reservation_books_nothing() -> None:
    clock = FakeClock()
    limiter = InMemoryQuotaLimiter(clock)
    quota = TenantQuota(requests_per_minute=2, tokens_per_minute=100)
    await limiter.reserve(TENANT, quota, tokens(60))
    for _ in range(5):
        with pytest.raises(ResourceExhausted):
            await limiter.reserve(TENANT, quota, tokens(50))  # tokens exceeded, requests not
    await limiter.reserve(TENANT, quota, tokens(40))  # the rejections took no request


async def test_two_hundred_concurrent_reserves_admit_exactly_the_limit() -> None:
    limiter = InMemoryQuotaLimiter()  # the real clock
    quota = TenantQuota(requests_per_minute=50, tokens_per_minute=100_000)
    results = await asyncio.gather(
        *(limiter.reserve(TENANT, quota, tokens(10)) for _ in range(200)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    rejected = [r for r in results if isinstance(r, ResourceExhausted)]
    assert (len(admitted), len(rejected)) == (50, 150)
    assert all(r.retry_after is not None and 58 < r.retry_after <= 60 for r in rejected)


async def test_concurrent_reserves_and_settles_keep_exact_totals() -> None:
    clock = FakeClock()
    limiter = InMemoryQuotaLimiter(clock)
    quota = TenantQuota(tokens_per_minute=10_000)

    async def request() -> None:
        reservation = await limiter.reserve(TENANT, quota, tokens(100))
        await asyncio.sleep(0)
        await limiter.settle(reservation, tokens(40))

    await asyncio.gather(*(request() for _ in range(100)))  # 100 x 100 fits exactly
    # Settled at 40 each: 4,000 used, so 6,000 more fit and 6,001 does not.
    with pytest.raises(ResourceExhausted) as raised:
        await limiter.reserve(TENANT, quota, tokens(6001))
    assert "4,000 used" in raised.value.violations[0].description
    await limiter.reserve(TENANT, quota, tokens(6000))


@pytest.mark.parametrize("usage", [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
def test_usage_is_never_negative(usage: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        Usage(*usage)


@pytest.mark.parametrize(
    ("now", "midnight"),
    [(MIDNIGHT, MIDNIGHT + 86_400), (MIDNIGHT - 0.5, MIDNIGHT), (NOON, MIDNIGHT + 86_400)],
)
def test_next_utc_midnight(now: float, midnight: float) -> None:
    assert next_utc_midnight(now) == midnight
