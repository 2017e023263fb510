"""Claims and outcomes of idempotent requests in SQLite or PostgreSQL, on `services.common.sql`
(see `services.gateway.core.idempotency` for what they mean).

One row per key `(tenant_id, scope, request_id)` in `gateway_idempotency`: while its request
runs, the row holds the claim (`owner` process, `token`, `expire_time_us` = the lease's end);
once it succeeded, the `outcome` bytes and `expire_time_us` = the end of its retention. A row
whose `expire_time_us` has passed counts as absent: a claim takes it over (one conditional
UPDATE, so two claimants never both win) and `sweep` deletes it. Claims are atomic on both
databases: `INSERT ... ON CONFLICT DO NOTHING` (PostgreSQL makes a second inserter of the same
key wait for the first to commit), then the takeover UPDATE, then a read, in one transaction
(SQLite: under the write lock). Times are the wall clock of the process (microseconds), so
replicas' clocks should agree to well within a lease.

Schema changes are the numbered `MIGRATIONS`, recorded in `gateway_idempotency_migrations`.
"""

import uuid
from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.sql import Migration, SqlStore, create_engine, now_us
from services.gateway.core.idempotency import (
    Claim,
    Claimed,
    ClaimResult,
    InProgress,
    Mismatch,
    Replay,
)

metadata = sa.MetaData()

idempotency = sa.Table(
    "gateway_idempotency",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("token", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(32), nullable=True),  # the claim's process; NULL once done
    sa.Column("outcome", sa.LargeBinary, nullable=True),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("expire_time_us", sa.BigInteger, nullable=False),
    sa.Index("ix_gateway_idempotency_owner", "owner"),
    sa.Index("ix_gateway_idempotency_expire", "expire_time_us"),
)


def _initial_schema(connection: SyncConnection) -> None:
    metadata.create_all(connection, tables=[idempotency])


MIGRATIONS: Final[Sequence[Migration]] = (Migration(1, "idempotency claims", _initial_schema),)
"""Every migration, in order. Append; never edit one that has shipped."""

SWEEP_BATCH: Final = 1000
"""Rows one sweep transaction deletes at most (short transactions, short write locks)."""
_CLAIM_ROUNDS: Final = 3
"""Tries of a claim whose row vanished between its statements (released meanwhile)."""


class SqlIdempotencyStore(SqlStore):
    """A `services.gateway.core.idempotency.IdempotencyStore` in SQLite or PostgreSQL, for any
    operation (`scope`) whose outcome fits in bytes. Call `migrate()` once first.

    - `claim(tenant_id, scope, request_id, fingerprint, owner=, lease_seconds=)` ->
      `Claimed(Claim) | Replay(outcome bytes) | InProgress(lease_left) | Mismatch()`;
    - `complete(claim, outcome, retention_seconds=)` -> stored (False: the claim was lost);
    - `release(claim)` -> released (False: lost already);
    - `renew(owner, lease_seconds)` -> leases extended (every running claim of the owner);
    - `sweep()` -> rows deleted (expired outcomes, lapsed claims).
    """

    MIGRATIONS = MIGRATIONS
    MIGRATIONS_TABLE = "gateway_idempotency_migrations"

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "SqlIdempotencyStore":
        """A store on a new engine for `url` (see `services.common.sql.create_engine`)."""
        return cls(create_engine(url, schema=schema))

    async def claim(
        self,
        tenant_id: str,
        scope: str,
        request_id: str,
        fingerprint: str,
        *,
        owner: str,
        lease_seconds: float,
    ) -> ClaimResult:
        """See the class docstring; one statement when the key is new."""
        now = now_us()
        token = uuid.uuid4().hex
        claimed = Claimed(Claim(tenant_id, scope, request_id, owner, token))
        held = {
            "fingerprint": fingerprint,
            "token": token,
            "owner": owner,
            "outcome": None,
            "create_time_us": now,
            "expire_time_us": now + round(lease_seconds * 1e6),
        }
        key = _key(tenant_id, scope, request_id)
        dialect = postgresql if self._postgres else sqlite
        insert = (
            dialect.insert(idempotency)
            .values(tenant_id=tenant_id, scope=scope, request_id=request_id, **held)
            .on_conflict_do_nothing(index_elements=["tenant_id", "scope", "request_id"])
            .returning(idempotency.c.token)
        )
        take_over = (
            sa.update(idempotency)
            .where(key, idempotency.c.expire_time_us < now)
            .values(**held)
            .returning(idempotency.c.token)
        )
        read = sa.select(
            idempotency.c.fingerprint, idempotency.c.outcome, idempotency.c.expire_time_us
        ).where(key)
        async with self._write() as conn:
            for _ in range(_CLAIM_ROUNDS):
                if (await conn.execute(insert)).first() is not None:
                    return claimed
                if (await conn.execute(take_over)).first() is not None:
                    return claimed
                row = (await conn.execute(read)).first()
                if row is None:  # released between the statements: claim it again
                    continue
                if row.fingerprint != fingerprint:
                    return Mismatch()
                if row.outcome is not None:
                    return Replay(bytes(row.outcome))
                return InProgress(max(row.expire_time_us - now, 0) / 1e6)
        raise RuntimeError(f"claiming request {request_id!r} kept racing with its releases")

    async def complete(self, claim: Claim, outcome: bytes, *, retention_seconds: float) -> bool:
        """See the class docstring."""
        statement = (
            sa.update(idempotency)
            .where(*_held(claim))
            .values(
                outcome=outcome,
                owner=None,
                expire_time_us=now_us() + round(retention_seconds * 1e6),
            )
        )
        async with self._write() as conn:
            return await _changed(conn, statement) == 1

    async def release(self, claim: Claim) -> bool:
        """See the class docstring."""
        async with self._write() as conn:
            return await _changed(conn, sa.delete(idempotency).where(*_held(claim))) == 1

    async def renew(self, owner: str, lease_seconds: float) -> int:
        """See the class docstring."""
        statement = (
            sa.update(idempotency)
            .where(idempotency.c.owner == owner, idempotency.c.outcome.is_(None))
            .values(expire_time_us=now_us() + round(lease_seconds * 1e6))
        )
        async with self._write() as conn:
            return await _changed(conn, statement)

    async def sweep(self) -> int:
        """See the class docstring; deletes in batches of `SWEEP_BATCH`."""
        total = 0
        columns = (idempotency.c.tenant_id, idempotency.c.scope, idempotency.c.request_id)
        while True:
            expired = (
                sa.select(*columns)
                .where(idempotency.c.expire_time_us < now_us())
                .limit(SWEEP_BATCH)
            )
            statement = sa.delete(idempotency).where(sa.tuple_(*columns).in_(expired))
            async with self._write() as conn:
                deleted = await _changed(conn, statement)
            total += deleted
            if deleted < SWEEP_BATCH:
                return total

    async def get(self, tenant_id: str, scope: str, request_id: str) -> bytes | None:
        """The stored outcome of a key (expired or not), None when there is none; for
        inspection and tests."""
        query = sa.select(idempotency.c.outcome).where(_key(tenant_id, scope, request_id))
        async with self._read() as conn:
            outcome = (await conn.execute(query)).scalar()
        return None if outcome is None else bytes(outcome)


def _key(tenant_id: str, scope: str, request_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        idempotency.c.tenant_id == tenant_id,
        idempotency.c.scope == scope,
        idempotency.c.request_id == request_id,
    )


def _held(claim: Claim) -> tuple[sa.ColumnElement[bool], ...]:
    """Conditions of a row that `claim` still holds."""
    return (
        _key(claim.tenant_id, claim.scope, claim.request_id),
        idempotency.c.token == claim.token,
        idempotency.c.outcome.is_(None),
    )


async def _changed(conn: AsyncConnection, statement: sa.Executable) -> int:
    """Rows an UPDATE or DELETE changed."""
    result = await conn.execute(statement)
    return int(result.rowcount)
