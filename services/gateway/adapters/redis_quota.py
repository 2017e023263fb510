"""Tenant quotas shared by several gateway replicas, in Redis.

The same windows as `services.gateway.core.quota` (1-second buckets over a rolling minute, a
counter per UTC day). Each tenant has three hashes, `<prefix>{<tenant>}:requests` and
`:tokens` (epoch second -> usage) and `:cost` (UTC day -> USD micros); the `{tenant}` hash tag
keeps them in one cluster slot. `reserve` and `settle` are each one Lua script (EVALSHA,
loaded again after a Redis restart), so a check and its booking are atomic across replicas:
concurrent replicas never over-admit. Minute hashes expire 60 s after their last write plus a
margin, day hashes an hour after their day ends.

Time: by default the scripts read the Redis server's clock, one clock for every replica; a
`clock` (epoch seconds) replaces it, e.g. in tests. Redis failures raise `Unavailable`
(SERVICE_UNAVAILABLE); the details go to the log, not to the caller.

Replicas die (a SIGKILL, an OOM kill, a lost node) with reservations unsettled. So every
reservation is also recorded in the tenant's `:inflight` hash with its owner, the limiter's
random id; a started limiter keeps `<prefix>owner:<id>` alive (a key with a `lease_seconds`
expiry, refreshed four times per lease) and reports each in-flight reservation's tokens so far
to `:progress` every `report_seconds`. Settling deletes the record in the same script, and
every started limiter sweeps (every `sweep_seconds`) for records whose owner's key has expired.
Each is settled by one script that deletes the record, so a reservation is settled exactly
once, by its owner or by a sweep: at the request's usage in the request log when the owner
logged it before dying (`logged_usage`; the gateway logs before it settles), else at its last
reported tokens (cost in proportion to the estimate), which `:usage` also counts as
`reclaimed_*`. `:usage` sums what was settled, for accounting (requests, tokens, cost micros).
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from services.common import reasons
from services.common.background import every
from services.common.errors import Unavailable
from services.gateway.core.quota import (
    DAY_SECONDS,
    WINDOW_SECONDS,
    LimitExcess,
    Reservation,
    Usage,
    quota_exceeded,
)
from services.gateway.core.tenants import TenantQuota

_logger = logging.getLogger(__name__)

MINUTE_KEY_TTL: Final = WINDOW_SECONDS + 60
"""Seconds a minute hash lives after its last write: its window plus a margin."""
DAY_KEY_MARGIN: Final = 3600
"""Seconds a day hash outlives its UTC day."""
RETRY_AFTER_UNAVAILABLE: Final = 1.0
"""Retry delay suggested when Redis does not answer."""

_CLOCK_LUA: Final = """
local function clock(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tonumber(arg)
end
"""

RESERVE_LUA: Final = (
    _CLOCK_LUA
    + """
-- KEYS: requests, tokens (epoch second -> usage), cost (UTC day -> micros), inflight (id ->
--       "requests tokens cost second day owner request") hashes of a tenant.
-- ARGV: now ('' = this server's clock), requests_per_minute, tokens_per_minute, cost_per_day,
--       requests, tokens, cost, window seconds, minute key ttl, day key margin, day seconds,
--       reservation id ('' = not recorded), owner, request id ('-' = none).
-- Returns {1, second, day} when booked, else {0, second, day, then per exceeded limit: name,
-- limit, used, requested, retry delay ('' = never fits)}.
local now = clock(ARGV[1])
local window, day_seconds = tonumber(ARGV[8]), tonumber(ARGV[11])
local second = math.floor(now)
local day = math.floor(now / day_seconds)
local second_field = string.format('%d', second)
local day_field = string.format('%d', day)

-- The buckets of a hash at or after `oldest`, oldest first, and their sum; older ones go.
local function live(key, oldest)
  local flat = redis.call('HGETALL', key)
  local buckets, stale, used = {}, {}, 0
  for i = 1, #flat, 2 do
    local at, value = tonumber(flat[i]), tonumber(flat[i + 1])
    if at < oldest then
      stale[#stale + 1] = flat[i]
    else
      buckets[#buckets + 1] = {at, value}
      used = used + value
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return buckets, used
end

local excesses = {}
local function exceed(name, limit, used, requested, retry)
  for _, value in ipairs({name, limit, used, requested, retry}) do
    excesses[#excesses + 1] = value
  end
end

local function check_window(name, key, limit, requested)
  local buckets, used = live(key, second - window + 1)
  if limit == 0 or used + requested <= limit then
    return
  end
  local retry = ''
  if requested <= limit then
    local needed, freed = used + requested - limit, 0
    for _, bucket in ipairs(buckets) do
      freed = freed + bucket[2]
      if freed >= needed then
        retry = string.format('%.6f', math.max(bucket[1] + window - now, 0))
        break
      end
    end
  end
  exceed(name, limit, used, requested, retry)
end

local function check_day(name, key, limit, requested)
  local days, _ = live(key, day)
  local used = 0
  for _, bucket in ipairs(days) do
    if bucket[1] == day then
      used = bucket[2]
    end
  end
  if limit == 0 or used + requested <= limit then
    return
  end
  local retry = ''
  if requested <= limit then
    retry = string.format('%.6f', (day + 1) * day_seconds - now)
  end
  exceed(name, limit, used, requested, retry)
end

check_window('requests_per_minute', KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[5]))
check_window('tokens_per_minute', KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[6]))
check_day('cost_per_day', KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[7]))
if #excesses > 0 then
  local reply = {0, second, day}
  for _, value in ipairs(excesses) do
    reply[#reply + 1] = value
  end
  return reply
end

local function book(key, field, amount, ttl)
  if tonumber(amount) > 0 then
    redis.call('HINCRBY', key, field, amount)
    redis.call('EXPIRE', key, ttl)
  end
end
local day_ttl = string.format('%d', math.ceil((day + 1) * day_seconds - now) + tonumber(ARGV[10]))
book(KEYS[1], second_field, ARGV[5], ARGV[9])
book(KEYS[2], second_field, ARGV[6], ARGV[9])
book(KEYS[3], day_field, ARGV[7], day_ttl)
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[12], string.format('%s %s %s %d %d %s %s', ARGV[5], ARGV[6],
             ARGV[7], second, day, ARGV[13], ARGV[14]))
end
return {1, second, day}
"""
)
"""Checks every limit of a tenant and books the estimate, atomically."""

_REBOOK_LUA: Final = """
-- Moves a reservation's booking from its estimate to the actual usage, where it is still
-- counted, and adds the actual usage to the totals.
-- KEYS: requests, tokens, cost, inflight, progress, usage hashes of the tenant.
local function adjust(key, field, delta, ttl)
  if tonumber(delta) == 0 then
    return
  end
  local total = redis.call('HINCRBY', key, field, delta)
  if total <= 0 then
    redis.call('HDEL', key, field)
  else
    redis.call('EXPIRE', key, ttl)
  end
end

local function rebook(now, booked_second, booked_day, booked, actual, window, minute_ttl,
                      day_margin, day_seconds)
  local second = math.floor(now)
  local day = math.floor(now / day_seconds)
  if booked_second > second - window then
    local field = string.format('%d', booked_second)
    adjust(KEYS[1], field, actual[1] - booked[1], minute_ttl)
    adjust(KEYS[2], field, actual[2] - booked[2], minute_ttl)
  end
  if booked_day == day then
    local day_ttl = string.format('%d', math.ceil((day + 1) * day_seconds - now) + day_margin)
    adjust(KEYS[3], string.format('%d', booked_day), actual[3] - booked[3], day_ttl)
  end
  redis.call('HINCRBY', KEYS[6], 'requests', actual[1])
  redis.call('HINCRBY', KEYS[6], 'tokens', actual[2])
  redis.call('HINCRBY', KEYS[6], 'cost_micros', actual[3])
end
"""

SETTLE_LUA: Final = (
    _CLOCK_LUA
    + _REBOOK_LUA
    + """
-- ARGV: now ('' = this server's clock), the reservation's second and day, booked requests,
--       tokens and cost, actual requests, tokens and cost, window seconds, minute key ttl,
--       day key margin, day seconds, the reservation's id ('' = not recorded in flight).
-- Returns 1 when settled, 0 when a sweep settled it already.
if ARGV[14] ~= '' then
  if redis.call('HDEL', KEYS[4], ARGV[14]) == 0 then
    return 0
  end
  redis.call('HDEL', KEYS[5], ARGV[14])
end
rebook(clock(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
       {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])},
       {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])},
       tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]))
return 1
"""
)
"""Replaces a reservation's estimate with the actual usage, where it is still counted."""

RECLAIM_LUA: Final = (
    _CLOCK_LUA
    + _REBOOK_LUA
    + """
-- ARGV: now ('' = this server's clock), reservation id, the owner it must still have, window
--       seconds, minute key ttl, day key margin, day seconds, and the request's logged
--       requests, tokens and cost ('' = not logged).
-- Settles an in-flight reservation of a dead owner: at the request's logged usage when it
-- was logged, else at its last reported tokens (counted as reclaimed). Returns the tokens
-- settled, or -1 when it is no longer in flight (its owner settled it) or changed owner.
local record = redis.call('HGET', KEYS[4], ARGV[2])
if not record then
  return -1
end
local f = {}
for word in string.gmatch(record, '%S+') do
  f[#f + 1] = word
end
if f[6] ~= ARGV[3] then
  return -1
end
local booked = {tonumber(f[1]), tonumber(f[2]), tonumber(f[3])}
local actual
if ARGV[8] ~= '' then
  actual = {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])}
else
  local tokens = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0')
  local cost = 0
  if booked[2] > 0 then
    cost = math.floor(booked[3] * math.min(tokens, booked[2]) / booked[2])
  end
  actual = {booked[1], tokens, cost}
  redis.call('HINCRBY', KEYS[6], 'reclaimed_requests', booked[1])
  redis.call('HINCRBY', KEYS[6], 'reclaimed_tokens', tokens)
end
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
rebook(clock(ARGV[1]), tonumber(f[4]), tonumber(f[5]), booked, actual,
       tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
return actual[2]
"""
)
"""Settles a dead replica's reservation at its last reported usage."""

PROGRESS_LUA: Final = """
-- KEYS: inflight, progress hashes of a tenant. ARGV: reservation id, tokens so far.
-- Records progress only while the reservation is in flight (never after its settlement).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"""
"""Reports how many tokens an in-flight reservation has used."""


class RedisQuotaLimiter:
    """A `services.gateway.core.quota.QuotaLimiter` shared by every replica using the same
    Redis and `key_prefix`.

    `clock` (epoch seconds) replaces the Redis server's clock; `timeout` bounds each Redis
    call (connecting included), so a hung Redis fails requests instead of stalling them.
    `lease_seconds`, `report_seconds` and `sweep_seconds` time the settlement of dead
    replicas' reservations, and `logged_usage` finds a request's usage in the request log
    (see the module docstring); they take effect once `start()` ran.
    """

    def __init__(
        self,
        redis_url: str,
        key_prefix: str = "genai:quota:",
        clock: Callable[[], float] | None = None,
        *,
        timeout: float = 1.0,
        lease_seconds: float = 10.0,
        report_seconds: float = 0.1,
        sweep_seconds: float = 5.0,
        logged_usage: Callable[[str, str], Awaitable[Usage | None]] | None = None,
    ) -> None:
        self._redis: Redis = Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._prefix = key_prefix
        self._clock = clock
        self._where = _redacted(redis_url)
        self._reserve = self._redis.register_script(RESERVE_LUA)
        self._settle = self._redis.register_script(SETTLE_LUA)
        self._reclaim = self._redis.register_script(RECLAIM_LUA)
        self._progress_script = self._redis.register_script(PROGRESS_LUA)
        self.owner = uuid.uuid4().hex
        """This limiter's id, the owner of its in-flight reservations."""
        self._logged_usage = logged_usage
        """(tenant, request id) -> the request's usage in the request log, None if absent."""
        self._lease_seconds = lease_seconds
        self._report_seconds = report_seconds
        self._sweep_seconds = sweep_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._known_tenants: set[str] = set()
        self._tracked: dict[str, tuple[Reservation, Callable[[], int], int]] = {}
        """Reservation id -> (the reservation, how to read its tokens so far, the tokens
        last reported), until it is settled."""
        self._unsettled: dict[str, tuple[Reservation, Usage]] = {}
        """Settlements Redis failed, retried in the background until they succeed."""
        self.swept = 0
        """Reservations of dead replicas this limiter settled."""

    async def start(self) -> None:
        """Keeps this limiter's reservations owned, reports their progress, and sweeps for
        dead replicas' reservations, in the background (idempotent)."""
        if self._tasks:
            return
        await self._heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._every(self._lease_seconds / 4, self._heartbeat_once)),
            asyncio.create_task(self._every(self._report_seconds, self._report_progress)),
            asyncio.create_task(self._every(self._sweep_seconds, self.sweep)),
        ]

    async def aclose(self) -> None:
        """Stops the background work, settles what Redis failed to take before (once more),
        gives up the owner key (every reservation of a draining gateway is settled by then;
        one still unsettled is left to a sweep), and closes the connections to Redis."""
        for reservation, actual in list(self._unsettled.values()):
            with contextlib.suppress(Unavailable):
                await self.settle(reservation, actual)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if tasks:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._owner_key(self.owner))
        await self._redis.aclose()

    def keys(self, tenant_id: str) -> list[str]:
        """The Redis keys of a tenant's requests, tokens and cost."""
        return self._tenant_keys(tenant_id)[:3]

    def _tenant_keys(self, tenant_id: str) -> list[str]:
        base = f"{self._prefix}{{{tenant_id}}}"
        return [
            f"{base}:{name}"
            for name in ("requests", "tokens", "cost", "inflight", "progress", "usage")
        ]

    async def usage(self, tenant_id: str) -> Usage:
        """What was settled for the tenant so far, by every replica (totals since the
        usage key was created)."""
        totals = await self._call(self._redis.hgetall(self._tenant_keys(tenant_id)[5]))
        return Usage(
            requests=int(totals.get("requests", 0)),
            tokens=int(totals.get("tokens", 0)),
            cost_micros=int(totals.get("cost_micros", 0)),
        )

    async def reclaimed(self, tenant_id: str) -> Usage:
        """The part of `usage` that sweeps settled for replicas that died (requests and
        their last reported tokens)."""
        totals = await self._call(self._redis.hgetall(self._tenant_keys(tenant_id)[5]))
        return Usage(
            requests=int(totals.get("reclaimed_requests", 0)),
            tokens=int(totals.get("reclaimed_tokens", 0)),
        )

    async def in_flight(self, tenant_id: str) -> int:
        """How many of the tenant's reservations no one has settled yet."""
        count: int = await self._call(self._redis.hlen(self._tenant_keys(tenant_id)[3]))
        return count

    async def reserve(
        self, tenant_id: str, quota: TenantQuota, usage: Usage, *, request_id: str = ""
    ) -> Reservation:
        """See `QuotaLimiter.reserve`; `Unavailable` when Redis does not answer."""
        if tenant_id not in self._known_tenants:  # where sweeps look for reservations
            await self._call(self._redis.sadd(self._tenants_key, tenant_id))
            self._known_tenants.add(tenant_id)
        reservation_id = uuid.uuid4().hex
        reply = await self._run(
            self._reserve,
            self._tenant_keys(tenant_id)[:4],
            [
                self._now(),
                quota.requests_per_minute,
                quota.tokens_per_minute,
                quota.cost_per_day_micros,
                usage.requests,
                usage.tokens,
                usage.cost_micros,
                WINDOW_SECONDS,
                MINUTE_KEY_TTL,
                DAY_KEY_MARGIN,
                DAY_SECONDS,
                reservation_id,
                self.owner,
                _word(request_id),
            ],
        )
        admitted, second, day, *details = reply
        if not admitted:
            raise quota_exceeded(tenant_id, _excesses(details))
        return Reservation(tenant_id, usage, int(second), int(day), id=reservation_id)

    def track(self, reservation: Reservation, used: Callable[[], int]) -> None:
        """See `QuotaLimiter.track`: read and reported every `report_seconds` (when it
        changed) until the reservation is settled."""
        if reservation.id and not reservation.settled:
            self._tracked[reservation.id] = (reservation, used, 0)

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        """See `QuotaLimiter.settle`; `Unavailable` when Redis does not answer: the
        reservation then stays unsettled, and a started limiter tries again every
        `report_seconds` until Redis takes it. A reservation that a sweep settled already (its
        owner looked dead) is left as the sweep settled it."""
        if reservation.settled:
            return
        reservation.settled = True
        self._tracked.pop(reservation.id, None)
        self._unsettled.pop(reservation.id, None)
        booked = reservation.usage
        try:
            await self._run(
                self._settle,
                self._tenant_keys(reservation.tenant_id),
                [
                    self._now(),
                    reservation.second,
                    reservation.day,
                    booked.requests,
                    booked.tokens,
                    booked.cost_micros,
                    actual.requests,
                    actual.tokens,
                    actual.cost_micros,
                    WINDOW_SECONDS,
                    MINUTE_KEY_TTL,
                    DAY_KEY_MARGIN,
                    DAY_SECONDS,
                    reservation.id,
                ],
            )
        except Unavailable:
            reservation.settled = False
            if reservation.id:
                self._unsettled[reservation.id] = (reservation, actual)
            raise

    async def sweep(self) -> int:
        """Settles every in-flight reservation whose owner's lease has expired (see the module
        docstring); returns how many."""
        tenants = await self._call(self._redis.smembers(self._tenants_key))
        settled = 0
        for tenant_id in sorted(tenants):
            keys = self._tenant_keys(tenant_id)
            records: dict[str, str] = await self._call(self._redis.hgetall(keys[3]))
            owners = {record.split()[5] for record in records.values()} - {self.owner}
            if not owners:
                continue
            ordered = sorted(owners)
            alive = await self._call(
                self._redis.mget([self._owner_key(owner) for owner in ordered])
            )
            dead = {owner for owner, key in zip(ordered, alive, strict=True) if key is None}
            for reservation_id, record in records.items():
                fields = record.split()
                owner, request_id = fields[5], fields[6] if len(fields) > 6 else "-"
                if owner not in dead:
                    continue
                logged: Usage | None = None
                if self._logged_usage is not None and request_id != "-":
                    try:
                        logged = await self._logged_usage(tenant_id, request_id)
                    except Exception as error:  # the log is down: settle at the next sweep
                        _logger.warning("looking up request %s failed: %r", request_id, error)
                        continue
                override: list[str | int] = (
                    ["", "", ""]
                    if logged is None
                    else [logged.requests, logged.tokens, logged.cost_micros]
                )
                tokens = await self._run(
                    self._reclaim,
                    keys,
                    [
                        self._now(),
                        reservation_id,
                        owner,
                        WINDOW_SECONDS,
                        MINUTE_KEY_TTL,
                        DAY_KEY_MARGIN,
                        DAY_SECONDS,
                        *override,
                    ],
                )
                if int(tokens) >= 0:
                    settled += 1
                    _logger.warning(
                        "settled reservation %s (request %s) of tenant %s at %s tokens, %s: "
                        "its gateway replica %s stopped without settling it",
                        reservation_id,
                        request_id,
                        tenant_id,
                        tokens,
                        "as logged" if logged is not None else "as last reported",
                        owner,
                    )
        self.swept += settled
        return settled

    @property
    def _tenants_key(self) -> str:
        return f"{self._prefix}tenants"

    def _owner_key(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    async def _heartbeat_once(self) -> None:
        """Renews the owner key, and names again the tenants this limiter reserved for (a
        Redis restarted without its data forgets them, and sweeps would not look there)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._owner_key(self.owner), "1", px=max(1, round(self._lease_seconds * 1000)))
            if self._known_tenants:
                pipe.sadd(self._tenants_key, *sorted(self._known_tenants))
            await self._call(pipe.execute())

    async def _report_progress(self) -> None:
        for reservation, actual in list(self._unsettled.values()):
            await self.settle(reservation, actual)  # Unavailable: kept for the next time
        reports = []
        for reservation_id, (reservation, used, reported) in list(self._tracked.items()):
            tokens = used()
            if tokens != reported:
                reports.append((reservation, tokens))
                self._tracked[reservation_id] = (reservation, used, tokens)
        if not reports:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for reservation, tokens in reports:
                keys = self._tenant_keys(reservation.tenant_id)
                await self._progress_script(
                    keys=[keys[3], keys[4]], args=[reservation.id, tokens], client=pipe
                )
            await self._call(pipe.execute())

    async def _every(self, seconds: float, work: Callable[[], Awaitable[Any]]) -> None:
        # Unavailable: logged where it was raised, tried again next time.
        await every(seconds, work, name="quota background work", expected=(Unavailable,))

    def _now(self) -> str:
        return "" if self._clock is None else f"{self._clock():.6f}"

    async def _call(self, awaitable: Any) -> Any:
        """Awaits a Redis command (redis-py types the asyncio client's replies as "awaitable
        or not"), its failures as `Unavailable`."""
        try:
            return await awaitable
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from error

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: BaseException) -> Unavailable:
        _logger.warning("quota store at %s failed: %r", self._where, error)
        return Unavailable(
            "tenant quotas cannot be checked: their Redis store failed "
            f"({type(error).__name__}); retry later",
            reason=reasons.SERVICE_UNAVAILABLE,
            retry_after=RETRY_AFTER_UNAVAILABLE,
        )


def _word(text: str) -> str:
    """`text` as one word of a reservation record (`-` for none)."""
    return "".join(text.split()) or "-"


def _excesses(details: Sequence[Any]) -> list[LimitExcess]:
    return [
        LimitExcess(
            name=str(details[i]),
            limit=int(details[i + 1]),
            used=int(details[i + 2]),
            requested=int(details[i + 3]),
            retry_after=float(details[i + 4]) if details[i + 4] != "" else None,
        )
        for i in range(0, len(details), 5)
    ]


def _redacted(url: str) -> str:
    """`url` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
