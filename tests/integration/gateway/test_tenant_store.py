"""The gateway's tenant and API key store on real SQLite and real PostgreSQL: migrations, tenant
rules and errors, keys stored only as hashes, newest-first keyset paging that survives
concurrent inserts, idempotent revocation, and concurrent key creation."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.sql import create_engine
from services.gateway.adapters.tenant_store import SqlTenantStore, api_keys
from services.gateway.core.tenants import UNLIMITED, ApiKey, TenantQuota, parse_secret
from tests.support.databases import BACKENDS, Database, database

QUOTA = TenantQuota(requests_per_minute=60, tokens_per_minute=40_000, cost_per_day_micros=5_000_000)


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def store(db: Database) -> AsyncIterator[SqlTenantStore]:
    store = SqlTenantStore.from_url(db.url, schema=db.schema)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def all_keys(store: SqlTenantStore, tenant_id: str, page_size: int) -> list[ApiKey]:
    keys, token = await store.list_api_keys(tenant_id, page_size)
    while token:
        page, token = await store.list_api_keys(tenant_id, page_size, token)
        assert page, "a page token never leads to an empty page"
        keys += page
    return keys


async def test_migrations_apply_once_even_when_replicas_start_together(db: Database) -> None:
    stores = [SqlTenantStore.from_url(db.url, schema=db.schema) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        assert sorted(applied) == [[], [], [1, 2, 3]]
        assert await stores[0].migrate() == []
    finally:
        for s in stores:
            await s.close()


async def test_tenants_are_created_once_and_read_back(store: SqlTenantStore) -> None:
    created = await store.create_tenant("acme", "Acme Corp", QUOTA)
    assert (created.id, created.display_name, created.quota) == ("acme", "Acme Corp", QUOTA)
    assert created.create_time.tzinfo is not None
    assert await store.get_tenant("acme") == created
    assert (await store.create_tenant("globex")).quota == UNLIMITED

    with pytest.raises(AlreadyExists) as exists:
        await store.create_tenant("acme", "again")
    assert (exists.value.reason, exists.value.metadata) == (
        "RESOURCE_ALREADY_EXISTS",
        {"tenant": "acme"},
    )
    assert (await store.get_tenant("acme")).display_name == "Acme Corp"
    with pytest.raises(NotFound) as missing:
        await store.get_tenant("initech")
    assert missing.value.reason == "TENANT_NOT_FOUND"


async def test_invalid_tenants_and_quotas_never_reach_the_database(store: SqlTenantStore) -> None:
    with pytest.raises(InvalidArgument) as invalid:
        await store.create_tenant("Not Valid", "x" * 129, TenantQuota(requests_per_minute=-1))
    assert [v.field for v in invalid.value.violations] == [
        "tenant.id",
        "tenant.display_name",
        "tenant.quota.requests_per_minute",
    ]
    await store.create_tenant("acme")
    with pytest.raises(InvalidArgument) as invalid:
        await store.update_quota("acme", TenantQuota(tokens_per_minute=-5))
    assert [v.field for v in invalid.value.violations] == ["quota.tokens_per_minute"]
    with pytest.raises(InvalidArgument):
        await store.create_api_key("acme", "k" * 129)
    assert (await store.get_tenant("acme")).quota == UNLIMITED
    assert await store.list_api_keys("acme") == ([], "")


async def test_a_quota_is_replaced_whole(store: SqlTenantStore) -> None:
    await store.create_tenant("acme", "Acme", QUOTA)
    big = TenantQuota(requests_per_minute=2**31 - 1, cost_per_day_micros=10**15)
    updated = await store.update_quota("acme", big)
    assert updated.quota == big
    assert (await store.get_tenant("acme")).quota == big
    assert updated.display_name == "Acme"
    with pytest.raises(NotFound) as missing:
        await store.update_quota("initech", QUOTA)
    assert missing.value.reason == "TENANT_NOT_FOUND"


async def test_a_key_is_stored_as_the_hash_of_its_secret(
    store: SqlTenantStore, db: Database
) -> None:
    await store.create_tenant("acme")
    key, secret = await store.create_api_key("acme", "checkout-service", admin=True)
    assert parse_secret(secret) == key.id
    assert (key.tenant_id, key.display_name, key.admin, key.revoke_time) == (
        "acme",
        "checkout-service",
        True,
        None,
    )
    found = await store.find_api_key(key.id)
    assert found == (key, hashlib.sha256(secret.encode()).hexdigest(), "")
    assert await store.find_api_key("abcdefgh2345") is None

    engine = create_engine(db.url, schema=db.schema)  # what a database dump would show
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys))).mappings().all()
    finally:
        await engine.dispose()
    assert [r["secret_hash"] for r in rows] == [found[1]]
    assert secret not in repr([dict(r) for r in rows])

    with pytest.raises(NotFound) as missing:
        await store.create_api_key("initech", "k")
    assert missing.value.reason == "TENANT_NOT_FOUND"


async def test_keys_are_listed_newest_first_in_pages(store: SqlTenantStore) -> None:
    await store.create_tenant("acme")
    await store.create_tenant("globex")
    created = [(await store.create_api_key("acme", f"key-{i}"))[0] for i in range(7)]
    await store.create_api_key("globex", "theirs")
    newest_first = [k.id for k in reversed(created)]

    first, token = await store.list_api_keys("acme", page_size=3)
    assert [k.id for k in first] == newest_first[:3]
    assert token
    assert [k.id for k in await all_keys(store, "acme", 3)] == newest_first
    assert [k.id for k in await all_keys(store, "acme", 7)] == newest_first
    assert [k.id for k in (await store.list_api_keys("acme"))[0]] == newest_first
    assert (await store.list_api_keys("acme", 7))[1] == ""
    assert [k.display_name for k in (await store.list_api_keys("globex"))[0]] == ["theirs"]

    # Keys created while a client pages neither repeat nor shift the pages it has yet to read.
    page, token = await store.list_api_keys("acme", page_size=2)
    await store.create_api_key("acme", "newer")
    rest = await store.list_api_keys("acme", 100, token)
    assert [k.id for k in page + rest[0]] == newest_first

    with pytest.raises(NotFound) as missing:
        await store.list_api_keys("initech")
    assert missing.value.reason == "TENANT_NOT_FOUND"


@pytest.mark.parametrize(
    ("page_size", "page_token", "fields"),
    [
        (-1, "", ["page_size"]),
        (1001, "", ["page_size"]),
        (10, "not-a-token", ["page_token"]),
        (10, "MTIzNA", ["page_token"]),  # base64 of "1234": no key id
        (10, "é", ["page_token"]),
        (-5, "%%%", ["page_size", "page_token"]),
    ],
)
async def test_bad_page_requests_name_their_fields(
    store: SqlTenantStore, page_size: int, page_token: str, fields: list[str]
) -> None:
    await store.create_tenant("acme")
    with pytest.raises(InvalidArgument) as invalid:
        await store.list_api_keys("acme", page_size, page_token)
    assert [v.field for v in invalid.value.violations] == fields


async def test_revoking_is_idempotent_and_keeps_the_first_time(store: SqlTenantStore) -> None:
    await store.create_tenant("acme")
    await store.create_tenant("globex")
    key, _ = await store.create_api_key("acme", "ci")
    other, _ = await store.create_api_key("acme", "other")

    revoked = await store.revoke_api_key(key.id)
    assert revoked.revoked
    assert revoked.revoke_time is not None
    assert revoked.revoke_time >= key.create_time
    again = await store.revoke_api_key(key.id)
    assert again == revoked
    found = await store.find_api_key(key.id)
    assert found is not None
    assert found[0] == revoked
    unchanged = await store.find_api_key(other.id)
    assert unchanged is not None
    assert not unchanged[0].revoked

    with pytest.raises(NotFound) as missing:
        await store.revoke_api_key("abcdefgh2345")
    assert (missing.value.reason, missing.value.metadata) == (
        "API_KEY_NOT_FOUND",
        {"api_key_id": "abcdefgh2345"},
    )
    # Scoped to a tenant, another tenant's key is not found, and stays valid.
    with pytest.raises(NotFound):
        await store.revoke_api_key(other.id, tenant_id="globex")
    assert (await store.revoke_api_key(other.id, tenant_id="acme")).revoked


async def test_concurrent_revokes_agree_on_one_time(store: SqlTenantStore) -> None:
    await store.create_tenant("acme")
    key, _ = await store.create_api_key("acme", "ci")
    results = await asyncio.gather(*(store.revoke_api_key(key.id) for _ in range(10)))
    assert len({r.revoke_time for r in results}) == 1


async def test_concurrent_key_creation_from_several_replicas(db: Database) -> None:
    stores = [SqlTenantStore.from_url(db.url, schema=db.schema) for _ in range(3)]
    try:
        await stores[0].migrate()
        await stores[0].create_tenant("acme")
        created = await asyncio.gather(
            *(stores[i % 3].create_api_key("acme", f"k{i}") for i in range(30))
        )
        listed = await all_keys(stores[1], "acme", 7)
        assert sorted(k.id for k in listed) == sorted(k.id for k, _ in created)
        assert len({secret for _, secret in created}) == 30
    finally:
        for s in stores:
            await s.close()


async def test_replicas_starting_together_both_get_a_development_key(
    db: Database, tmp_path: Path
) -> None:
    from services.platform.bootstrap import ensure_dev_credentials

    stores = [SqlTenantStore.from_url(db.url, schema=db.schema) for _ in range(4)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        made = await asyncio.gather(
            *(ensure_dev_credentials(s, tmp_path / f"key-{i}") for i, s in enumerate(stores))
        )
        assert {m.tenant_id for m in made} == {"default"}
        for store, credentials in zip(stores, made, strict=True):
            key_id = parse_secret(credentials.secret)
            assert key_id is not None
            found = await store.find_api_key(key_id)
            assert found is not None
            assert found[0].admin
    finally:
        for s in stores:
            await s.close()


async def test_a_database_from_before_roles_gains_them_and_its_admin_keys_stay_in_their_tenant(
    db: Database,
) -> None:
    engine = create_engine(db.url, schema=db.schema)
    try:
        async with engine.begin() as conn:  # the tables as migrations 1 and 2 shipped them
            await conn.exec_driver_sql(
                "CREATE TABLE gateway_tenants (id VARCHAR(64) PRIMARY KEY, display_name "
                "VARCHAR(128) NOT NULL, requests_per_minute INTEGER NOT NULL, tokens_per_minute "
                "INTEGER NOT NULL, cost_per_day_micros BIGINT NOT NULL, create_time_us BIGINT "
                "NOT NULL, update_time_us BIGINT NOT NULL)"
            )
            await conn.exec_driver_sql(
                "CREATE TABLE gateway_api_keys (id VARCHAR(16) PRIMARY KEY, tenant_id VARCHAR(64) "
                "NOT NULL REFERENCES gateway_tenants (id), display_name VARCHAR(128) NOT NULL, "
                "admin BOOLEAN NOT NULL, secret_hash VARCHAR(64) NOT NULL, create_time_us BIGINT "
                "NOT NULL, revoke_time_us BIGINT)"
            )
            await conn.exec_driver_sql(
                "INSERT INTO gateway_tenants VALUES ('acme', 'Acme', 0, 0, 0, 1, 1)"
            )
            for key_id, admin in (("aaaaaaaaaaaa", True), ("bbbbbbbbbbbb", False)):
                await conn.execute(
                    api_keys.insert().values(
                        id=key_id,
                        tenant_id="acme",
                        display_name="old",
                        admin=admin,
                        secret_hash="0" * 64,
                        create_time_us=1,
                    )
                )
            old = SqlTenantStore(engine, schema=db.schema)
            old.MIGRATIONS = old.MIGRATIONS[:2]
        await old.migrate()
        store = SqlTenantStore(engine, schema=db.schema)
        assert await store.migrate() == [3]
        found_admin = await store.find_api_key("aaaaaaaaaaaa")
        found_member = await store.find_api_key("bbbbbbbbbbbb")
        assert found_admin is not None
        assert found_admin.key.role.label == "tenant_admin"
        assert found_member is not None
        assert found_member.key.role.label == "member"
    finally:
        await engine.dispose()


async def test_the_audit_log_is_append_only_in_the_database_itself(
    store: SqlTenantStore, db: Database
) -> None:
    from datetime import UTC, datetime

    from services.common.audit import AuditQuery, AuditRecord
    from services.common.policy import Role

    for outcome in ("OK", "PERMISSION_DENIED", "OK"):
        await store.append_audit_record(
            AuditRecord(
                time=datetime.now(UTC),
                tenant_id="acme",
                actor="apikey:aaaaaaaaaaaa",
                actor_tenant_id="acme",
                actor_role=Role.TENANT_ADMIN,
                action="genai.gateway.v1.GatewayService/CreateApiKey",
                target="api_key/x",
                request_id="r",
                outcome=outcome,
            )
        )
    first = await store.list_audit_records(AuditQuery("acme", page_size=2))
    assert [r.outcome for r in first.records] == ["OK", "PERMISSION_DENIED"]
    rest = await store.list_audit_records(
        AuditQuery("acme", page_size=2, page_token=first.next_page_token)
    )
    assert [r.outcome for r in rest.records] == ["OK"]
    assert rest.next_page_token == ""
    denied = await store.list_audit_records(AuditQuery("acme", outcome="PERMISSION_DENIED"))
    assert len(denied.records) == 1
    assert (await store.list_audit_records(AuditQuery("globex"))).records == []
    with pytest.raises(InvalidArgument):  # a token is bound to its filters
        await store.list_audit_records(
            AuditQuery("acme", page_size=2, page_token=first.next_page_token, outcome="OK")
        )

    engine = create_engine(db.url, schema=db.schema)
    try:
        for statement in (
            "UPDATE gateway_audit_events SET outcome = 'OK'",
            "DELETE FROM gateway_audit_events",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()
    assert len((await store.list_audit_records(AuditQuery("acme"))).records) == 3
