"""Tenants and API keys in SQLite or PostgreSQL, on `services.common.sql`.

Keys are stored with the SHA-256 of their secret, never the secret. Key lists are newest first
and paged by keyset (creation time, then id), so keys created while a client pages through the
list neither repeat nor shift a page. Schema changes are the numbered `MIGRATIONS`, recorded in
`gateway_tenant_migrations`.

Keys have a role, may expire, and may be rotated: the secret before the last rotation keeps
working until its grace period ends. The audit log (`gateway_audit_events`) is append-only:
triggers refuse every UPDATE and DELETE of it, on SQLite and PostgreSQL alike.

Revocations and quota changes also append to the tenant feed (`gateway_tenant_events`, a
`services.common.feeds` feed) in the same transaction, and notify `TENANT_EVENTS_CHANNEL` on
PostgreSQL: every replica follows it to drop the keys and limits it cached.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import reasons
from services.common.audit import AuditPage, AuditQuery, AuditRecord
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.common.feeds import lock_feed, notify
from services.common.policy import Role
from services.common.sql import (
    Migration,
    SqlStore,
    create_engine,
    now_us,
    row_or_not_found,
    time_from_us,
)
from services.common.wire import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.gateway.core.tenants import (
    UNLIMITED,
    ApiKey,
    StoredApiKey,
    Tenant,
    TenantEvent,
    TenantEventKind,
    TenantQuota,
    check_new_api_key,
    check_new_tenant,
    check_quota_update,
    check_rotation_grace,
    key_role,
    new_api_key_secret,
)

metadata = sa.MetaData()

tenants = sa.Table(
    "gateway_tenants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("requests_per_minute", sa.Integer, nullable=False),
    sa.Column("tokens_per_minute", sa.Integer, nullable=False),
    sa.Column("cost_per_day_micros", sa.BigInteger, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "gateway_api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("gateway_tenants.id"), nullable=False),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("revoke_time_us", sa.BigInteger, nullable=True),
    # Migration 3:
    sa.Column("role", sa.String(32), nullable=True),
    sa.Column("expire_time_us", sa.BigInteger, nullable=True),
    sa.Column("rotate_time_us", sa.BigInteger, nullable=True),
    sa.Column("previous_secret_hash", sa.String(64), nullable=True),
    sa.Column("previous_secret_expire_us", sa.BigInteger, nullable=True),
    sa.Index("ix_gateway_api_keys_tenant_created", "tenant_id", "create_time_us", "id"),
)
_KEY_COLUMNS_OF_MIGRATION_3: Final = (
    "role",
    "expire_time_us",
    "rotate_time_us",
    "previous_secret_hash",
    "previous_secret_expire_us",
)


tenant_events = sa.Table(
    "gateway_tenant_events",
    metadata,
    sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("event_time_us", sa.BigInteger, nullable=False),
)

audit_events = sa.Table(
    "gateway_audit_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("time_us", sa.BigInteger, nullable=False),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("actor_tenant_id", sa.String(64), nullable=False),
    sa.Column("actor_role", sa.String(32), nullable=False),
    sa.Column("action", sa.String(256), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_gateway_audit_events_tenant", "tenant_id", "id"),
)

TENANT_EVENTS_CHANNEL: Final = "genai_tenant_events"
"""The PostgreSQL NOTIFY channel of the tenant feed; the payload is the store's schema."""


def _initial_schema(connection: SyncConnection) -> None:
    metadata.create_all(connection, tables=[tenants, api_keys])


def _tenant_events(connection: SyncConnection) -> None:
    tenant_events.create(connection)


def _roles_expiry_rotation_audit(connection: SyncConnection) -> None:
    # A database created by this build got the columns from migration 1 (which creates the
    # table as declared above); one created before has to add them.
    present = {column["name"] for column in sa.inspect(connection).get_columns(api_keys.name)}
    for name in _KEY_COLUMNS_OF_MIGRATION_3:
        if name not in present:
            kind = api_keys.c[name].type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f"ALTER TABLE {api_keys.name} ADD COLUMN {name} {kind}")
    # Admin keys before roles become their own tenant's admins, not the platform's.
    connection.exec_driver_sql(
        "UPDATE gateway_api_keys SET role = CASE WHEN admin THEN 'tenant_admin' ELSE 'member' END"
    )
    audit_events.create(connection)
    refuse = "the audit log is append-only"
    if connection.dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            connection.exec_driver_sql(
                f"CREATE TRIGGER gateway_audit_events_no_{verb.lower()} BEFORE {verb} ON "
                f"gateway_audit_events BEGIN SELECT RAISE(ABORT, '{refuse}'); END"
            )
    else:
        connection.exec_driver_sql(
            "CREATE FUNCTION gateway_audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{refuse}'; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER gateway_audit_events_append_only BEFORE UPDATE OR DELETE OR "
            "TRUNCATE ON gateway_audit_events FOR EACH STATEMENT "
            "EXECUTE FUNCTION gateway_audit_events_refuse()"
        )


MIGRATIONS: Final[Sequence[Migration]] = (
    Migration(1, "tenants and api keys", _initial_schema),
    Migration(2, "tenant events", _tenant_events),
    Migration(3, "key roles, expiry and rotation; the audit log", _roles_expiry_rotation_audit),
)
"""Every migration, in order. Append; never edit one that has shipped."""

_KEY_ID_ATTEMPTS: Final = 3
"""New ids to try when a key id is taken (60 random bits: practically never)."""
_PAGE_TOKEN: Final = re.compile(r"(\d{1,19})\.([a-z2-7]{1,16})")


class SqlTenantStore(SqlStore):
    """Tenants and their API keys in SQLite or PostgreSQL. Call `migrate()` once first."""

    MIGRATIONS = MIGRATIONS
    MIGRATIONS_TABLE = "gateway_tenant_migrations"

    def __init__(self, engine: AsyncEngine, *, schema: str | None = None) -> None:
        super().__init__(engine)
        self.schema = schema or "public"
        """The PostgreSQL schema of the tables (the payload of this store's notifications)."""

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "SqlTenantStore":
        """A store on a new engine for `url` (see `services.common.sql.create_engine`)."""
        return cls(create_engine(url, schema=schema), schema=schema)

    @property
    def postgres(self) -> bool:
        """True on PostgreSQL (whose tenant events are pushed by NOTIFY)."""
        return self._postgres

    # ------------------------------------------------------------------------------ tenants

    async def create_tenant(
        self, tenant_id: str, display_name: str = "", quota: TenantQuota = UNLIMITED
    ) -> Tenant:
        """Creates a tenant; InvalidArgument for invalid fields, AlreadyExists when the id is
        taken."""
        check_new_tenant(tenant_id, display_name, quota)
        now = now_us()
        try:
            async with self._write() as conn:
                await conn.execute(
                    tenants.insert().values(
                        id=tenant_id,
                        display_name=display_name,
                        **_quota_columns(quota),
                        create_time_us=now,
                        update_time_us=now,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(
                f"tenant {tenant_id!r} already exists",
                reason=reasons.RESOURCE_ALREADY_EXISTS,
                metadata={"tenant": tenant_id},
            ) from None
        return Tenant(tenant_id, display_name, quota, time_from_us(now))

    async def get_tenant(self, tenant_id: str) -> Tenant:
        """The tenant; NotFound (TENANT_NOT_FOUND) when there is none with that id."""
        async with self._read() as conn:
            return _tenant(await self._tenant_row(conn, tenant_id))

    async def update_quota(self, tenant_id: str, quota: TenantQuota) -> Tenant:
        """Replaces a tenant's quota whole; returns the tenant with it."""
        check_quota_update(tenant_id, quota)
        async with self._write() as conn:
            result = await conn.execute(
                tenants.update()
                .where(tenants.c.id == tenant_id)
                .values(**_quota_columns(quota), update_time_us=now_us())
            )
            if result.rowcount == 0:
                raise _no_tenant(tenant_id)
            await self._append_event(conn, TenantEventKind.QUOTA_CHANGED, tenant_id)
            return _tenant(await self._tenant_row(conn, tenant_id))

    # ------------------------------------------------------------------------------ api keys

    async def create_api_key(
        self,
        tenant_id: str,
        display_name: str = "",
        admin: bool = False,
        *,
        role: Role | None = None,
        expire_time: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Creates a key of an existing tenant with `role` (else tenant_admin for `admin`,
        else member) that stops working at `expire_time` (None: never); returns it with its
        secret, which is not stored and cannot be read again."""
        chosen = key_role(admin, role)
        check_new_api_key(tenant_id, display_name, chosen, expire_time, datetime.now(UTC))
        for _ in range(_KEY_ID_ATTEMPTS - 1):
            try:
                return await self._insert_api_key(tenant_id, display_name, chosen, expire_time)
            except IntegrityError:
                # The tenant exists (checked in the transaction; tenants are never deleted),
                # so the id was taken: draw another.
                continue
        return await self._insert_api_key(tenant_id, display_name, chosen, expire_time)

    async def list_api_keys(
        self, tenant_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ApiKey], str]:
        """One page of a tenant's keys, newest first, and the token of the next page (empty
        on the last). `page_size` is in [0, 1000], 0 meaning 100; InvalidArgument for a bad
        size or token, NotFound for an unknown tenant."""
        violations = []
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]"))
        after = _decode_page_token(page_token) if page_token else None
        if page_token and after is None:
            violations.append(FieldViolation("page_token", "is not a token this service issued"))
        if violations:
            raise InvalidArgument(violations=violations)
        size = page_size or DEFAULT_PAGE_SIZE
        query = (
            sa.select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.create_time_us.desc(), api_keys.c.id.desc())
            .limit(size + 1)
        )
        if after is not None:
            time_us, key_id = after
            query = query.where(
                sa.or_(
                    api_keys.c.create_time_us < time_us,
                    sa.and_(api_keys.c.create_time_us == time_us, api_keys.c.id < key_id),
                )
            )
        async with self._read() as conn:
            await self._tenant_row(conn, tenant_id)
            rows = (await conn.execute(query)).mappings().all()
        keys = [_api_key(row) for row in rows[:size]]
        if len(rows) <= size:
            return keys, ""
        last = rows[size - 1]
        return keys, _encode_page_token(int(last["create_time_us"]), str(last["id"]))

    async def revoke_api_key(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey:
        """Revokes a key and returns it. Revoking a revoked key changes nothing (the first
        revoke time stays). NotFound (API_KEY_NOT_FOUND) when there is no such key, or, with
        `tenant_id`, when the key belongs to another tenant."""
        async with self._write() as conn:
            where = _key_in(key_id, tenant_id)
            revoked = await conn.execute(
                api_keys.update()
                .where(where, api_keys.c.revoke_time_us.is_(None))
                .values(revoke_time_us=now_us())
            )
            row = (await conn.execute(sa.select(api_keys).where(where))).mappings().first()
            if row is not None and revoked.rowcount:
                await self._append_event(
                    conn, TenantEventKind.API_KEY_REVOKED, row["tenant_id"], key_id
                )
        if row is None:
            raise _no_key(key_id)
        return _api_key(row)

    async def rotate_api_key(
        self, key_id: str, grace: timedelta, *, tenant_id: str | None = None
    ) -> tuple[ApiKey, str]:
        """Gives a valid key a new secret and returns it; the old secret keeps working for
        `grace` (a secret from before an earlier rotation stops at once). NotFound as
        `revoke_api_key`; FailedPrecondition for a revoked or expired key."""
        check_rotation_grace(grace)
        _, secret, hashed = new_api_key_secret(key_id)
        now = now_us()
        async with self._write() as conn:
            found = await row_or_not_found(
                conn, sa.select(api_keys).where(_key_in(key_id, tenant_id)), lambda: _no_key(key_id)
            )
            key = _api_key(found)
            if key.revoked or key.expired(time_from_us(now)):
                raise FailedPrecondition(
                    f"API key {key_id!r} is {'revoked' if key.revoked else 'expired'}: create "
                    "a new key instead of rotating it",
                    reason=reasons.FAILED_PRECONDITION,
                    metadata={"api_key_id": key_id},
                )
            grace_us = int(grace / timedelta(microseconds=1))
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(
                    secret_hash=hashed,
                    previous_secret_hash=found["secret_hash"] if grace_us > 0 else None,
                    previous_secret_expire_us=now + grace_us if grace_us > 0 else None,
                    rotate_time_us=now,
                )
            )
            # Other replicas drop the key from their caches, so the old secret stops there
            # too when its grace ends.
            await self._append_event(conn, TenantEventKind.API_KEY_REVOKED, key.tenant_id, key_id)
            rotated = await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))
            return _api_key(rotated.mappings().one()), secret

    async def find_api_key(self, key_id: str) -> StoredApiKey | None:
        """The key with that id and the hashes of its secrets; None when there is none."""
        async with self._read() as conn:
            row = (
                (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return StoredApiKey(
            _api_key(row), str(row["secret_hash"]), str(row["previous_secret_hash"] or "")
        )

    # ------------------------------------------------------------------------------ audit

    async def append_audit_record(self, record: AuditRecord) -> None:
        """Appends one record to the audit log (its own transaction)."""
        async with self._write() as conn:
            await conn.execute(
                audit_events.insert().values(
                    time_us=_to_us(record.time),
                    tenant_id=record.tenant_id[:64],
                    actor=record.actor[:256],
                    actor_tenant_id=record.actor_tenant_id[:64],
                    actor_role=record.actor_role.label,
                    action=record.action[:256],
                    target=record.target,
                    request_id=record.request_id[:128],
                    outcome=record.outcome[:32],
                    detail=record.detail,
                )
            )

    async def list_audit_records(self, query: AuditQuery) -> AuditPage:
        """One page of a tenant's audit log, newest first, filtered as `query` says.
        InvalidArgument for a bad page size or token (a token is bound to its filters)."""
        violations = []
        if not 0 <= query.page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]"))
        digest = _audit_digest(query)
        before: int | None = None
        if query.page_token:
            before = _decode_audit_token(query.page_token, digest)
            if before is None:
                violations.append(
                    FieldViolation(
                        "page_token", "is not a token this service issued for these filters"
                    )
                )
        if violations:
            raise InvalidArgument(violations=violations)
        size = query.page_size or DEFAULT_PAGE_SIZE
        select = (
            sa.select(audit_events)
            .where(audit_events.c.tenant_id == query.tenant_id)
            .order_by(audit_events.c.id.desc())
            .limit(size + 1)
        )
        for column, value in (
            (audit_events.c.action, query.action),
            (audit_events.c.actor, query.actor),
            (audit_events.c.outcome, query.outcome),
        ):
            if value:
                select = select.where(column == value)
        if query.start_time is not None:
            select = select.where(audit_events.c.time_us >= _to_us(query.start_time))
        if query.end_time is not None:
            select = select.where(audit_events.c.time_us < _to_us(query.end_time))
        if before is not None:
            select = select.where(audit_events.c.id < before)
        async with self._read() as conn:
            rows = (await conn.execute(select)).mappings().all()
        records = [_audit_record(row) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            token = _encode_audit_token(int(rows[size - 1]["id"]), digest)
        return AuditPage(records, token)

    # ------------------------------------------------------------------------------ feed

    async def last_tenant_event(self) -> int:
        """The sequence of the newest tenant event (0 when there is none)."""
        async with self._read() as conn:
            last = await conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(tenant_events.c.sequence), 0))
            )
            return int(last.scalar_one())

    async def tenant_events_after(self, sequence: int, limit: int = 500) -> list[TenantEvent]:
        """The tenant events after `sequence`, oldest first, at most `limit`."""
        query = (
            sa.select(tenant_events)
            .where(tenant_events.c.sequence > sequence)
            .order_by(tenant_events.c.sequence)
            .limit(limit)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            TenantEvent(
                sequence=int(row["sequence"]),
                kind=TenantEventKind(row["kind"]),
                tenant_id=row["tenant_id"],
                key_id=row["key_id"],
            )
            for row in rows
        ]

    async def _append_event(
        self, conn: AsyncConnection, kind: TenantEventKind, tenant_id: str, key_id: str = ""
    ) -> None:
        await lock_feed(conn, tenant_events.name)  # sequence order = commit order
        await conn.execute(
            tenant_events.insert().values(
                kind=kind.value, tenant_id=tenant_id, key_id=key_id, event_time_us=now_us()
            )
        )
        await notify(conn, TENANT_EVENTS_CHANNEL, self.schema)

    # ------------------------------------------------------------------------------ helpers

    async def _insert_api_key(
        self, tenant_id: str, display_name: str, role: Role, expire_time: datetime | None
    ) -> tuple[ApiKey, str]:
        key_id, secret, hashed = new_api_key_secret()
        now = now_us()
        expire_us = None if expire_time is None else _to_us(expire_time)
        async with self._write() as conn:
            await self._tenant_row(conn, tenant_id)
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    admin=role >= Role.TENANT_ADMIN,
                    role=role.label,
                    secret_hash=hashed,
                    create_time_us=now,
                    revoke_time_us=None,
                    expire_time_us=expire_us,
                )
            )
        key = ApiKey(
            key_id,
            tenant_id,
            display_name,
            role,
            time_from_us(now),
            expire_time=None if expire_us is None else time_from_us(expire_us),
        )
        return key, secret

    async def _tenant_row(self, conn: AsyncConnection, tenant_id: str) -> Mapping[Any, Any]:
        return await row_or_not_found(
            conn, sa.select(tenants).where(tenants.c.id == tenant_id), lambda: _no_tenant(tenant_id)
        )


def _no_tenant(tenant_id: str) -> NotFound:
    return NotFound(
        f"no tenant with id {tenant_id!r}",
        reason=reasons.TENANT_NOT_FOUND,
        metadata={"tenant": tenant_id},
    )


def _quota_columns(quota: TenantQuota) -> dict[str, int]:
    return {
        "requests_per_minute": quota.requests_per_minute,
        "tokens_per_minute": quota.tokens_per_minute,
        "cost_per_day_micros": quota.cost_per_day_micros,
    }


def _tenant(row: Mapping[Any, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        display_name=row["display_name"],
        quota=TenantQuota(
            requests_per_minute=int(row["requests_per_minute"]),
            tokens_per_minute=int(row["tokens_per_minute"]),
            cost_per_day_micros=int(row["cost_per_day_micros"]),
        ),
        create_time=time_from_us(row["create_time_us"]),
    )


def _api_key(row: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        display_name=row["display_name"],
        role=Role.from_label(row["role"] or ""),
        create_time=time_from_us(row["create_time_us"]),
        revoke_time=_time(row["revoke_time_us"]),
        expire_time=_time(row["expire_time_us"]),
        rotate_time=_time(row["rotate_time_us"]),
        previous_secret_expire_time=_time(row["previous_secret_expire_us"]),
    )


def _time(us: int | None) -> datetime | None:
    return None if us is None else time_from_us(us)


def _to_us(moment: datetime) -> int:
    return int((moment - _EPOCH) / timedelta(microseconds=1))


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _key_in(key_id: str, tenant_id: str | None) -> Any:
    return sa.and_(
        api_keys.c.id == key_id,
        sa.true() if tenant_id is None else api_keys.c.tenant_id == tenant_id,
    )


def _no_key(key_id: str) -> NotFound:
    return NotFound(
        f"no API key with id {key_id!r}",
        reason=reasons.API_KEY_NOT_FOUND,
        metadata={"api_key_id": key_id},
    )


def _audit_record(row: Mapping[Any, Any]) -> AuditRecord:
    return AuditRecord(
        id=str(row["id"]),
        time=time_from_us(row["time_us"]),
        tenant_id=row["tenant_id"],
        actor=row["actor"],
        actor_tenant_id=row["actor_tenant_id"],
        actor_role=Role.from_label(row["actor_role"]),
        action=row["action"],
        target=row["target"],
        request_id=row["request_id"],
        outcome=row["outcome"],
        detail=row["detail"],
    )


def _audit_digest(query: AuditQuery) -> str:
    bound = "\x1f".join(
        (
            query.tenant_id,
            query.action,
            query.actor,
            query.outcome,
            str(None if query.start_time is None else _to_us(query.start_time)),
            str(None if query.end_time is None else _to_us(query.end_time)),
        )
    )
    return hashlib.sha256(bound.encode()).hexdigest()[:12]


def _encode_audit_token(before_id: int, digest: str) -> str:
    raw = f"{before_id}.{digest}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_audit_token(token: str, digest: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    number, _, bound = text.partition(".")
    if bound != digest or not number.isdigit() or len(number) > 19:
        return None
    return int(number)


def _encode_page_token(time_us: int, key_id: str) -> str:
    return base64.urlsafe_b64encode(f"{time_us}.{key_id}".encode()).decode("ascii").rstrip("=")


def _decode_page_token(token: str) -> tuple[int, str] | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    found = _PAGE_TOKEN.fullmatch(text)
    return None if found is None else (int(found[1]), found[2])
