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
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from services.common import reasons
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
-- KEYS: requests, tokens (epoch second -> usage), cost (UTC day -> micros) hashes of a tenant.
-- ARGV: now ('' = this server's clock), requests_per_minute, tokens_per_minute, cost_per_day,
--       requests, tokens, cost, window seconds, minute key ttl, day key margin, day seconds.
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
return {1, second, day}
"""
)
"""Checks every limit of a tenant and books the estimate, atomically."""

SETTLE_LUA: Final = (
    _CLOCK_LUA
    + """
-- KEYS: as for reserve. ARGV: now ('' = this server's clock), the reservation's second and day,
--       requests, tokens and cost deltas, window seconds, minute key ttl, day key margin,
--       day seconds.
local now = clock(ARGV[1])
local window, day_seconds = tonumber(ARGV[7]), tonumber(ARGV[10])
local second = math.floor(now)
local day = math.floor(now / day_seconds)

-- Adds `delta` to a bucket; a total at or below zero deletes the bucket.
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

if tonumber(ARGV[2]) > second - window then
  adjust(KEYS[1], ARGV[2], ARGV[4], ARGV[8])
  adjust(KEYS[2], ARGV[2], ARGV[5], ARGV[8])
end
if tonumber(ARGV[3]) == day then
  local day_ttl = string.format('%d', math.ceil((day + 1) * day_seconds - now) + tonumber(ARGV[9]))
  adjust(KEYS[3], ARGV[3], ARGV[6], day_ttl)
end
return 1
"""
)
"""Replaces a reservation's estimate with the actual usage, where it is still counted."""


class RedisQuotaLimiter:
    """A `services.gateway.core.quota.QuotaLimiter` shared by every replica using the same
    Redis and `key_prefix`.

    `clock` (epoch seconds) replaces the Redis server's clock; `timeout` bounds each Redis
    call (connecting included), so a hung Redis fails requests instead of stalling them.
    """

    def __init__(
        self,
        redis_url: str,
        key_prefix: str = "genai:quota:",
        clock: Callable[[], float] | None = None,
        *,
        timeout: float = 1.0,
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

    async def aclose(self) -> None:
        """Closes the connections to Redis."""
        await self._redis.aclose()

    def keys(self, tenant_id: str) -> list[str]:
        """The Redis keys of a tenant's requests, tokens and cost."""
        base = f"{self._prefix}{{{tenant_id}}}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:cost"]

    async def reserve(self, tenant_id: str, quota: TenantQuota, usage: Usage) -> Reservation:
        """See `QuotaLimiter.reserve`; `Unavailable` when Redis does not answer."""
        reply = await self._run(
            self._reserve,
            self.keys(tenant_id),
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
            ],
        )
        admitted, second, day, *details = reply
        if not admitted:
            raise quota_exceeded(tenant_id, _excesses(details))
        return Reservation(tenant_id, usage, int(second), int(day))

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        """See `QuotaLimiter.settle`; `Unavailable` when Redis does not answer (the
        reservation then stays unsettled, and settling may be tried again)."""
        if reservation.settled:
            return
        reservation.settled = True
        booked = reservation.usage
        try:
            await self._run(
                self._settle,
                self.keys(reservation.tenant_id),
                [
                    self._now(),
                    reservation.second,
                    reservation.day,
                    actual.requests - booked.requests,
                    actual.tokens - booked.tokens,
                    actual.cost_micros - booked.cost_micros,
                    WINDOW_SECONDS,
                    MINUTE_KEY_TTL,
                    DAY_KEY_MARGIN,
                    DAY_SECONDS,
                ],
            )
        except Unavailable:
            reservation.settled = False
            raise

    def _now(self) -> str:
        return "" if self._clock is None else f"{self._clock():.6f}"

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as error:
            _logger.warning("quota store at %s failed: %r", self._where, error)
            raise Unavailable(
                "tenant quotas cannot be checked: their Redis store failed "
                f"({type(error).__name__}); retry later",
                reason=reasons.SERVICE_UNAVAILABLE,
                retry_after=RETRY_AFTER_UNAVAILABLE,
            ) from error


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
