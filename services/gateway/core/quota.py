"""Tenant quotas: reserve a request's estimated usage before it runs, settle the real usage
after.

Windows:

- Requests and tokens per rolling minute count usage in 1-second buckets: the window at time
  `t` is the bucket of `t`'s second and the 59 before it, so usage leaves the window between 59
  and 60 seconds after it was booked (exactly 60 s after the start of its second). The retry
  delay is when enough of the oldest buckets have left for the request to fit.
- Cost per day counts per UTC date; it refills at the next UTC midnight.

`reserve` checks every limit and books the estimate in one atomic step, so concurrent requests
never over-admit. `settle` replaces the estimate with the real usage in the buckets it was
booked in (while they are still in their window); totals never go below zero. A limit of 0 is
no limit; usage is still counted, so a limit set later applies to usage already made.
"""

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from services.common import reasons
from services.common.errors import QuotaViolation, ResourceExhausted
from services.gateway.core.tenants import TenantQuota

WINDOW_SECONDS: Final = 60
"""Length of the rolling window of the per-minute limits, in 1-second buckets."""
DAY_SECONDS: Final = 86_400

REQUESTS_PER_MINUTE: Final = "requests_per_minute"
TOKENS_PER_MINUTE: Final = "tokens_per_minute"
COST_PER_DAY: Final = "cost_per_day"


@dataclass(frozen=True, slots=True)
class Usage:
    """What a request uses: itself, its input plus output tokens, its cost in USD micros
    (by default one request, nothing else)."""

    requests: int = 1
    tokens: int = 0
    cost_micros: int = 0

    def __post_init__(self) -> None:
        if min(self.requests, self.tokens, self.cost_micros) < 0:
            raise ValueError(f"usage cannot be negative: {self}")


@dataclass(slots=True)
class Reservation:
    """A booked estimate, to settle once with `QuotaLimiter.settle`.

    Opaque to callers: `second` (epoch second of the minute buckets) and `day` (UTC days since
    the epoch) say where the estimate was booked; `id` names it in a shared store, which
    settles it for a replica that died before settling (see `QuotaLimiter.progress`).
    """

    tenant_id: str
    usage: Usage
    second: int
    day: int
    settled: bool = field(default=False, compare=False)
    """Set by `settle`; settling again changes nothing."""
    id: str = ""
    """The reservation's name in a shared store ("" in memory)."""


class QuotaLimiter(Protocol):
    """Admits requests within their tenant's quota.

    Usage is settled by the process that reserved it. A shared store also settles the
    reservations of a process that died without settling them, at the usage that process last
    reported (read through `track`): `start` and `aclose` run what that needs (heartbeats, reports,
    the sweep); a limiter of one process needs nothing of the kind.
    """

    async def start(self) -> None:
        """Starts the limiter's background work (idempotent)."""
        ...

    async def aclose(self) -> None:
        """Stops it (reservations should be settled first)."""
        ...

    def track(self, reservation: Reservation, used: Callable[[], int]) -> None:
        """Tells the limiter how to read the tokens (input plus output) `reservation` has
        used so far; a shared store reads it in the background until the reservation is
        settled (nothing is done per token)."""
        ...

    async def reserve(
        self, tenant_id: str, quota: TenantQuota, usage: Usage, *, request_id: str = ""
    ) -> Reservation:
        """Books `usage` if it fits every limit of `quota`, atomically; otherwise raises
        `ResourceExhausted` (QUOTA_EXCEEDED) with one violation per exceeded limit and the
        delay after which all of them fit (None when the request can never fit).
        `request_id` names the request the reservation is for (what a shared store looks up
        in the request log should the reserving process die)."""
        ...

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        """Replaces the reservation's estimate with the `actual` usage (higher or lower).
        Only the first call counts."""
        ...


@dataclass(frozen=True, slots=True)
class LimitExcess:
    """One limit a request would exceed."""

    name: str
    """`requests_per_minute`, `tokens_per_minute` or `cost_per_day`."""
    limit: int
    used: int
    requested: int
    retry_after: float | None
    """Seconds until the request fits this limit; None when it never can."""

    def description(self) -> str:
        """What is exceeded, in words, e.g. `tokens_per_minute: 1,000 limit, 980 used, 50
        requested`."""
        show = _usd if self.name == COST_PER_DAY else _count
        if self.retry_after is None:
            return (
                f"{self.name}: {show(self.requested)} requested can never fit the "
                f"{show(self.limit)} limit"
            )
        return (
            f"{self.name}: {show(self.limit)} limit, {show(self.used)} used, "
            f"{show(self.requested)} requested"
        )


def quota_exceeded(tenant_id: str, excesses: Sequence[LimitExcess]) -> ResourceExhausted:
    """The error of a reservation that exceeds `excesses`: one `QuotaViolation` each, retry
    after the longest delay (none when one of them can never fit)."""
    delays = [e.retry_after for e in excesses]
    retry_after = None if None in delays else max(d for d in delays if d is not None)
    descriptions = [e.description() for e in excesses]
    message = f"tenant {tenant_id!r} is over its quota: " + "; ".join(descriptions)
    if retry_after is not None:
        message += f" (fits again in {retry_after:.1f} s)"
    return ResourceExhausted(
        message,
        reason=reasons.QUOTA_EXCEEDED,
        retry_after=retry_after,
        violations=[QuotaViolation(f"tenant:{tenant_id}", d) for d in descriptions],
        metadata={"tenant": tenant_id, "limits": ",".join(e.name for e in excesses)},
    )


def window_excess(
    name: str, limit: int, buckets: Mapping[int, int], requested: int, now: float
) -> LimitExcess | None:
    """How `requested` more would exceed a rolling-minute `limit` whose window holds
    `buckets` (epoch second -> usage); None when it fits or `limit` is 0."""
    used = sum(buckets.values())
    if limit == 0 or used + requested <= limit:
        return None
    if requested > limit:
        return LimitExcess(name, limit, used, requested, None)
    needed = used + requested - limit
    freed = 0
    retry_after = 0.0
    for second in sorted(buckets):
        freed += buckets[second]
        if freed >= needed:
            retry_after = max(second + WINDOW_SECONDS - now, 0.0)
            break
    return LimitExcess(name, limit, used, requested, retry_after)


def day_excess(name: str, limit: int, used: int, requested: int, now: float) -> LimitExcess | None:
    """How `requested` more would exceed a per-UTC-day `limit` with `used` booked today; None
    when it fits or `limit` is 0."""
    if limit == 0 or used + requested <= limit:
        return None
    if requested > limit:
        return LimitExcess(name, limit, used, requested, None)
    return LimitExcess(name, limit, used, requested, next_utc_midnight(now) - now)


def next_utc_midnight(now: float) -> float:
    """The epoch time of the UTC midnight after `now`."""
    return float((math.floor(now / DAY_SECONDS) + 1) * DAY_SECONDS)


@dataclass(slots=True)
class _Books:
    """One tenant's counted usage."""

    requests: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    cost: dict[int, int] = field(default_factory=dict)
    """UTC day -> cost micros."""

    def prune(self, second: int, day: int) -> None:
        oldest = second - WINDOW_SECONDS + 1
        for buckets in (self.requests, self.tokens):
            for stale in [s for s in buckets if s < oldest]:
                del buckets[stale]
        for stale in [d for d in self.cost if d < day]:
            del self.cost[stale]


class InMemoryQuotaLimiter:
    """A `QuotaLimiter` for one process (the embedded default); `clock` gives epoch seconds.

    Memory per tenant is bounded: at most 60 buckets per minute window and one day counter.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = asyncio.Lock()
        self._books: dict[str, _Books] = {}

    async def start(self) -> None:
        """Nothing to start: reservations die with the process that made them."""

    async def aclose(self) -> None:
        """Nothing to stop."""

    def track(self, reservation: Reservation, used: Callable[[], int]) -> None:
        """Nothing to track: a process that dies takes its books with it."""

    async def reserve(
        self, tenant_id: str, quota: TenantQuota, usage: Usage, *, request_id: str = ""
    ) -> Reservation:
        """See `QuotaLimiter.reserve`."""
        async with self._lock:
            now = self._clock()
            second, day = math.floor(now), math.floor(now / DAY_SECONDS)
            books = self._books.setdefault(tenant_id, _Books())
            books.prune(second, day)
            excesses = _present(
                window_excess(
                    REQUESTS_PER_MINUTE,
                    quota.requests_per_minute,
                    books.requests,
                    usage.requests,
                    now,
                ),
                window_excess(
                    TOKENS_PER_MINUTE, quota.tokens_per_minute, books.tokens, usage.tokens, now
                ),
                day_excess(
                    COST_PER_DAY,
                    quota.cost_per_day_micros,
                    books.cost.get(day, 0),
                    usage.cost_micros,
                    now,
                ),
            )
            if excesses:
                raise quota_exceeded(tenant_id, excesses)
            _add(books.requests, second, usage.requests)
            _add(books.tokens, second, usage.tokens)
            _add(books.cost, day, usage.cost_micros)
            return Reservation(tenant_id, usage, second, day)

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        """See `QuotaLimiter.settle`."""
        async with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            now = self._clock()
            second, day = math.floor(now), math.floor(now / DAY_SECONDS)
            books = self._books.setdefault(reservation.tenant_id, _Books())
            books.prune(second, day)
            booked = reservation.usage
            if reservation.second > second - WINDOW_SECONDS:
                _add(books.requests, reservation.second, actual.requests - booked.requests)
                _add(books.tokens, reservation.second, actual.tokens - booked.tokens)
            if reservation.day == day:
                _add(books.cost, day, actual.cost_micros - booked.cost_micros)


def _add(buckets: dict[int, int], key: int, delta: int) -> None:
    """Adds `delta` to a bucket, never below zero; empty buckets are dropped."""
    if delta == 0:
        return
    total = buckets.get(key, 0) + delta
    if total > 0:
        buckets[key] = total
    else:
        buckets.pop(key, None)


def _present(*excesses: LimitExcess | None) -> list[LimitExcess]:
    return [e for e in excesses if e is not None]


def _count(value: int) -> str:
    return f"{value:,}"


def _usd(micros: int) -> str:
    return f"${micros // 1_000_000:,}.{micros % 1_000_000:06d}"
