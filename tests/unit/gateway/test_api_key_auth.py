"""API key authentication against the real tenant store (SQLite): every way a credential can be
wrong gives a precise UNAUTHENTICATED that never echoes the secret, a verified key is served
from the cache without a database read, and a revocation takes effect within the cache TTL."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.auth import Principal
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.policy import Role, require
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.gateway.core.auth import ApiKeyAuthenticator
from services.gateway.core.tenants import StoredApiKey

METHOD = "/genai.gateway.v1.GatewayService/Complete"


class CountingStore:
    """The real store, counting the key lookups that reach it."""

    def __init__(self, store: SqlTenantStore) -> None:
        self.store = store
        self.lookups = 0

    async def find_api_key(self, key_id: str) -> StoredApiKey | None:
        self.lookups += 1
        return await self.store.find_api_key(key_id)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlTenantStore]:
    store = SqlTenantStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'tenants.db'}")
    await store.migrate()
    await store.create_tenant("acme", "Acme")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def counting(store: SqlTenantStore) -> CountingStore:
    return CountingStore(store)


@pytest.fixture
def auth(counting: CountingStore, clock: FakeClock) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(counting, cache_ttl=5.0, clock=clock)


def bearer(secret: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"authorization": f"{scheme} {secret}"}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_a_valid_key_authenticates_as_its_tenant(
    store: SqlTenantStore, auth: ApiKeyAuthenticator, scheme: str
) -> None:
    key, secret = await store.create_api_key("acme", "ci", admin=False)
    principal = await auth.authenticate(METHOD, bearer(secret, scheme))
    assert principal == Principal(
        tenant_id="acme",
        subject=f"apikey:{key.id}",
        attributes={"api_key_id": key.id, "role": "member"},
    )
    admin_key, admin_secret = await store.create_api_key("acme", "ops", admin=True)
    admin = await auth.authenticate(METHOD, {"authorization": f" Bearer \t {admin_secret}  "})
    assert admin.attributes == {"api_key_id": admin_key.id, "role": "tenant_admin"}
    viewer_key, viewer_secret = await store.create_api_key("acme", "bi", role=Role.VIEWER)
    viewer = await auth.authenticate(METHOD, bearer(viewer_secret))
    assert viewer.attributes == {"api_key_id": viewer_key.id, "role": "viewer"}


async def test_each_bad_credential_says_what_is_wrong_without_echoing_it(
    store: SqlTenantStore, auth: ApiKeyAuthenticator
) -> None:
    key, secret = await store.create_api_key("acme", "ci")
    revoked_key, revoked_secret = await store.create_api_key("acme", "old")
    await store.revoke_api_key(revoked_key.id)
    unknown = "gk_abcdefgh2345_" + "Z" * 43
    wrong = f"gk_{key.id}_" + "W" * 43
    cases = [
        ({}, "missing API key"),
        ({"authorization": ""}, "missing API key"),
        ({"authorization": f"Basic {secret}"}, "must use the Bearer scheme"),
        ({"authorization": secret}, "must use the Bearer scheme"),
        ({"authorization": "Bearer "}, "no API key after `Bearer`"),
        ({"authorization": "Bearer"}, "no API key after `Bearer`"),
        (bearer("sk-not-a-platform-key"), "the API key is malformed"),
        (bearer(secret[:-20]), "the API key is malformed"),
        (bearer(unknown), "unknown API key 'abcdefgh2345'"),
        (bearer(wrong), f"the secret of API key {key.id!r} is wrong"),
        (bearer(revoked_secret), f"API key {revoked_key.id!r} was revoked at"),
    ]
    for metadata, message in cases:
        with pytest.raises(Unauthenticated) as raised:
            await auth.authenticate(METHOD, metadata)
        assert message in raised.value.message, metadata
        assert raised.value.reason == "UNAUTHENTICATED"
        for value in metadata.values():
            token = value.split()[-1] if value.split() else ""
            if len(token) > 12:
                assert token not in raised.value.message
                assert token not in str(raised.value.metadata)


async def test_a_verified_key_is_served_from_the_cache_until_its_ttl_ends(
    store: SqlTenantStore, auth: ApiKeyAuthenticator, counting: CountingStore, clock: FakeClock
) -> None:
    key, secret = await store.create_api_key("acme", "ci")
    for _ in range(100):
        await auth.authenticate(METHOD, bearer(secret))
    assert counting.lookups == 1

    # Revoked elsewhere: this process still accepts the key until its cache entry expires.
    await store.revoke_api_key(key.id)
    clock.now += 4.9
    assert (await auth.authenticate(METHOD, bearer(secret))).tenant_id == "acme"
    assert counting.lookups == 1
    clock.now += 0.1
    with pytest.raises(Unauthenticated, match="was revoked"):
        await auth.authenticate(METHOD, bearer(secret))
    assert counting.lookups == 2


async def test_failures_are_never_cached_and_a_wrong_secret_misses_the_cache(
    store: SqlTenantStore, auth: ApiKeyAuthenticator, counting: CountingStore
) -> None:
    key, secret = await store.create_api_key("acme", "ci")
    await auth.authenticate(METHOD, bearer(secret))
    wrong = f"gk_{key.id}_" + "W" * 43  # the cached key's id, another secret
    for expected_lookups in (2, 3):
        with pytest.raises(Unauthenticated, match="is wrong"):
            await auth.authenticate(METHOD, bearer(wrong))
        assert counting.lookups == expected_lookups
    with pytest.raises(Unauthenticated, match="malformed"):
        await auth.authenticate(METHOD, bearer("gk_nope"))
    assert counting.lookups == 3  # a malformed key never reaches the store


async def test_forget_drops_a_key_from_the_cache_at_once(
    store: SqlTenantStore, auth: ApiKeyAuthenticator
) -> None:
    key, secret = await store.create_api_key("acme", "ci")
    other, other_secret = await store.create_api_key("acme", "other")
    await auth.authenticate(METHOD, bearer(secret))
    await auth.authenticate(METHOD, bearer(other_secret))
    await store.revoke_api_key(key.id)
    auth.forget(key.id)
    with pytest.raises(Unauthenticated, match="was revoked"):
        await auth.authenticate(METHOD, bearer(secret))
    assert (await auth.authenticate(METHOD, bearer(other_secret))).subject == f"apikey:{other.id}"


async def test_a_zero_ttl_reads_the_store_every_time(
    store: SqlTenantStore, counting: CountingStore, clock: FakeClock
) -> None:
    auth = ApiKeyAuthenticator(counting, cache_ttl=0, clock=clock)
    _, secret = await store.create_api_key("acme", "ci")
    for _ in range(3):
        await auth.authenticate(METHOD, bearer(secret))
    assert counting.lookups == 3


async def test_the_cache_holds_at_most_its_size_evicting_the_oldest(
    store: SqlTenantStore, counting: CountingStore, clock: FakeClock
) -> None:
    auth = ApiKeyAuthenticator(counting, cache_size=2, clock=clock)
    secrets = [(await store.create_api_key("acme", f"k{i}"))[1] for i in range(3)]
    for secret in secrets:
        await auth.authenticate(METHOD, bearer(secret))
        clock.now += 1
    assert counting.lookups == 3
    await auth.authenticate(METHOD, bearer(secrets[2]))
    await auth.authenticate(METHOD, bearer(secrets[1]))
    assert counting.lookups == 3  # the two newest are cached
    await auth.authenticate(METHOD, bearer(secrets[0]))
    assert counting.lookups == 4  # the oldest was evicted


@pytest.mark.parametrize(
    ("attributes", "needed", "allowed"),
    [
        ({"role": "platform_admin"}, Role.PLATFORM_ADMIN, True),
        ({"role": "tenant_admin"}, Role.PLATFORM_ADMIN, False),
        ({"role": "tenant_admin"}, Role.MEMBER, True),
        ({"role": "viewer"}, Role.MEMBER, False),
        ({"internal": "true"}, Role.PLATFORM_ADMIN, True),
        ({}, Role.VIEWER, False),
        ({"role": "Platform_Admin "}, Role.VIEWER, False),
        ({"admin": "true"}, Role.VIEWER, False),
    ],
)
def test_a_role_allows_what_the_roles_below_it_allow_and_nothing_else(
    attributes: dict[str, str], needed: Role, allowed: bool
) -> None:
    principal = Principal("acme", "apikey:k", attributes)
    if allowed:
        require(principal, needed, action="Call")
        return
    with pytest.raises(PermissionDenied) as raised:
        require(principal, needed, action="Call")
    assert raised.value.reason == "PERMISSION_DENIED"
    assert raised.value.metadata["required_role"] == needed.label
    assert f"needs the {needed.label} role" in raised.value.message


async def test_an_expired_key_is_refused_and_never_trusted_from_the_cache_past_its_expiry(
    store: SqlTenantStore, counting: CountingStore, clock: FakeClock
) -> None:
    wall = FakeClock()
    wall.now = datetime.now(UTC).timestamp()
    auth = ApiKeyAuthenticator(counting, cache_ttl=60.0, clock=clock, wall_clock=wall)
    expires = datetime.fromtimestamp(wall.now, UTC) + timedelta(seconds=10)
    key, secret = await store.create_api_key("acme", "temp", expire_time=expires)
    assert key.expire_time is not None
    await auth.authenticate(METHOD, bearer(secret))
    clock.now += 9
    wall.now += 9
    await auth.authenticate(METHOD, bearer(secret))
    assert counting.lookups == 1  # cached, within both the TTL and the expiry
    clock.now += 1.5
    wall.now += 1.5
    with pytest.raises(Unauthenticated, match="expired at"):
        await auth.authenticate(METHOD, bearer(secret))


async def test_a_rotated_key_accepts_its_old_secret_only_for_the_grace_period(
    store: SqlTenantStore, counting: CountingStore, clock: FakeClock
) -> None:
    wall = FakeClock()
    wall.now = datetime.now(UTC).timestamp()
    auth = ApiKeyAuthenticator(counting, cache_ttl=0.0, clock=clock, wall_clock=wall)
    key, old = await store.create_api_key("acme", "ci")
    rotated, new = await store.rotate_api_key(key.id, timedelta(hours=1))
    assert rotated.id == key.id
    assert new != old
    assert new.startswith(f"gk_{key.id}_")
    assert rotated.rotate_time is not None
    assert rotated.previous_secret_expire_time is not None
    assert (await auth.authenticate(METHOD, bearer(new))).subject == f"apikey:{key.id}"
    assert (await auth.authenticate(METHOD, bearer(old))).subject == f"apikey:{key.id}"
    wall.now += 3601
    with pytest.raises(Unauthenticated, match="is wrong"):
        await auth.authenticate(METHOD, bearer(old))
    await auth.authenticate(METHOD, bearer(new))
    # A second rotation without grace stops the secret before it at once.
    _, newest = await store.rotate_api_key(key.id, timedelta(0))
    with pytest.raises(Unauthenticated, match="is wrong"):
        await auth.authenticate(METHOD, bearer(new))
    await auth.authenticate(METHOD, bearer(newest))
