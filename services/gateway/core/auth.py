"""API key authentication: `authorization: Bearer gk_<id>_<random>` to the key's `Principal`.

A verified key is cached in this process for `cache_ttl` seconds (default 5), keyed by the
SHA-256 of its secret, so the hot path does no database read. The price is that a revocation
reaches a process's cache within `cache_ttl`: a revoked key keeps working on a replica that
verified it at most that long after the revoke (`forget` drops it at once where the revoking
process knows it). Failures are never cached: an unknown, revoked or wrong secret is looked up
each time.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from services.common.auth import Principal
from services.common.errors import Unauthenticated
from services.common.policy import ROLE
from services.gateway.core.tenants import StoredApiKey, parse_secret, secret_hash

AUTHORIZATION: Final = "authorization"
"""The metadata key that carries the API key."""
API_KEY_ID: Final = "api_key_id"
"""`Principal.attributes` key: the public id of the caller's API key."""
DEFAULT_CACHE_TTL: Final = 5.0
DEFAULT_CACHE_SIZE: Final = 10_000


class ApiKeyFinder(Protocol):
    """Finds stored keys (`services.gateway.adapters.tenant_store.SqlTenantStore`)."""

    async def find_api_key(self, key_id: str) -> StoredApiKey | None:
        """The key with that id and the SHA-256 (hex) of its secrets; None when unknown."""
        ...


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: Principal
    key_id: str
    expires_at: float


class ApiKeyAuthenticator:
    """An `services.common.auth.Authenticator` for the gateway's API keys.

    `clock` (monotonic seconds) times the cache; `cache_size` bounds it (the entries closest
    to expiry go first); `wall_clock` (Unix seconds) decides expiry. A cached key is never
    trusted past its `expire_time`, nor an old secret past the end of its rotation grace.
    """

    def __init__(
        self,
        keys: ApiKeyFinder,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._wall_clock = wall_clock
        self._ttl = cache_ttl
        self._size = cache_size
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
        """The principal of the request's API key; `Unauthenticated` saying what is wrong
        (missing, not Bearer, malformed, unknown, revoked, expired, wrong secret) otherwise."""
        secret = bearer_token(metadata)
        hashed = secret_hash(secret)
        now = self._clock()
        cached = self._cache.get(hashed)
        if cached is not None:
            if now < cached.expires_at:
                return cached.principal
            del self._cache[hashed]

        key_id = parse_secret(secret)
        if key_id is None:
            raise Unauthenticated(
                "the API key is malformed: expected gk_<key id>_<secret> as created by CreateApiKey"
            )
        found = await self._keys.find_api_key(key_id)
        if found is None:
            raise _rejected(f"unknown API key {key_id!r}", key_id)
        wall = self._wall_clock()
        moment = datetime.fromtimestamp(wall, UTC)
        key = found.key
        if not found.accepts(secret, moment):
            raise _rejected(f"the secret of API key {key_id!r} is wrong", key_id)
        if key.revoke_time is not None:
            raise _rejected(
                f"API key {key_id!r} was revoked at {key.revoke_time.isoformat()}", key_id
            )
        if key.expire_time is not None and moment >= key.expire_time:
            raise _rejected(f"API key {key_id!r} expired at {key.expire_time.isoformat()}", key_id)
        principal = Principal(
            tenant_id=key.tenant_id,
            subject=f"apikey:{key.id}",
            attributes={API_KEY_ID: key.id, ROLE: key.role.label},
        )
        if self._ttl > 0:
            trusted_until = now + self._ttl
            limits = [key.expire_time]
            if secret_hash(secret) != found.secret_hash:  # an old secret, in its grace period
                limits.append(key.previous_secret_expire_time)
            for limit in limits:
                if limit is not None:
                    trusted_until = min(trusted_until, now + (limit.timestamp() - wall))
            self._remember(hashed, _Cached(principal, key.id, trusted_until), now)
        return principal

    def forget(self, key_id: str) -> None:
        """Drops a key from this process's cache, e.g. right after revoking it here."""
        for hashed in [h for h, c in self._cache.items() if c.key_id == key_id]:
            del self._cache[hashed]

    def _remember(self, hashed: str, entry: _Cached, now: float) -> None:
        if hashed not in self._cache and len(self._cache) >= self._size:
            for stale in [h for h, c in self._cache.items() if c.expires_at <= now]:
                del self._cache[stale]
            if len(self._cache) >= self._size:
                # Entries share one TTL, so the first inserted is the closest to expiry.
                del self._cache[next(iter(self._cache))]
        self._cache[hashed] = entry


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The API key in `authorization: Bearer <key>` metadata (keys in lower case);
    `Unauthenticated` saying what is wrong when there is none."""
    value = metadata.get(AUTHORIZATION)
    if value is None or not value.strip():
        raise Unauthenticated("missing API key: send it as `authorization: Bearer <key>` metadata")
    scheme, *rest = value.split(None, 1)
    if scheme.lower() != "bearer":
        raise Unauthenticated("the authorization metadata must use the Bearer scheme")
    token = rest[0].strip() if rest else ""
    if not token:
        raise Unauthenticated("the authorization metadata has no API key after `Bearer`")
    return token


def _rejected(message: str, key_id: str) -> Unauthenticated:
    return Unauthenticated(message, metadata={API_KEY_ID: key_id})
