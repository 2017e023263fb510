"""The gateway's request log in SQLite or PostgreSQL (`services.common.sql`).

One row per (tenant, request id): `insert_many` writes a batch in one transaction with
`INSERT ... ON CONFLICT DO NOTHING`, so a retried batch, or a request logged twice, never
duplicates a row and never fails on one. JSON values (`input`, `metadata`, `tags`) are TEXT;
times are microseconds since the epoch.

A record the database would refuse must not block the log behind it (the writer retries a
failed batch until it is stored), so nothing in a record can fail its insert: text columns
are unbounded, NUL characters (which PostgreSQL text cannot hold) become U+FFFD and lone
surrogates `?`, and JSON values that are not JSON-able are stored as their `str()`.

Listing is newest first, by (`create_time_us`, `id`) descending, and pages by keyset: a page
token encodes the last row's (create_time_us, id) plus a digest of the tenant and filters it
was issued for, so pages stay stable while rows are added and a token is refused with other
filters. The indexes (tenant, time, id) and (tenant, prompt, time, id) serve both orders.
"""

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection as SyncConnection

from services.common.errors import FieldViolation, InvalidArgument
from services.common.sql import Migration, SqlStore, create_engine, time_from_us
from services.gateway.core.request_log import RequestLogPage, RequestLogQuery, RequestLogRecord

metadata = sa.MetaData()

request_log = sa.Table(
    "gateway_request_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("tenant_id", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("trace_id", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("prompt_version", sa.Integer, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("output_tokens", sa.Integer, nullable=False),
    sa.Column("first_token_ms", sa.Float, nullable=True),
    sa.Column("total_ms", sa.Float, nullable=False),
    sa.UniqueConstraint("tenant_id", "request_id", name="uq_gateway_request_log_request"),
)
sa.Index(
    "ix_gateway_request_log_tenant_time",
    request_log.c.tenant_id,
    request_log.c.create_time_us.desc(),
    request_log.c.id.desc(),
)
sa.Index(
    "ix_gateway_request_log_tenant_prompt_time",
    request_log.c.tenant_id,
    request_log.c.prompt,
    request_log.c.create_time_us,
    request_log.c.id,
)

_BY_MODEL: Final = sa.Index(
    "ix_gateway_request_log_tenant_model_time",
    request_log.c.tenant_id,
    request_log.c.model,
    request_log.c.create_time_us,
    request_log.c.id,
)
"""For `ListRequestLogs` by model (migration 2)."""


def _initial_schema(connection: SyncConnection) -> None:
    metadata.create_all(connection)


def _model_index(connection: SyncConnection) -> None:
    # A database made after this index joined the table's metadata has it from migration 1.
    _BY_MODEL.create(connection, checkfirst=True)


MIGRATIONS: Final[Sequence[Migration]] = (
    Migration(1, "request log table and indexes", _initial_schema),
    Migration(2, "index by model", _model_index),
)
"""Every migration, in order. Append; never edit one that has shipped."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_TOKEN_VERSION: Final = "1"
_BAD_TOKEN: Final = "is not a token this service issued for these filters"


class SqlRequestLogStore(SqlStore):
    """The request log in SQLite or PostgreSQL. Call `migrate()` once first."""

    MIGRATIONS = MIGRATIONS
    MIGRATIONS_TABLE = "gateway_request_log_migrations"

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "SqlRequestLogStore":
        """A store on a new engine for `url` (see `create_engine`)."""
        return cls(create_engine(url, schema=schema))

    async def insert_many(self, records: Sequence[RequestLogRecord]) -> int:
        """Stores `records` in one transaction, skipping each whose (tenant_id, request_id) is
        stored already or earlier in `records`; returns how many rows were added."""
        if not records:
            return 0
        dialect = postgresql if self._postgres else sqlite
        statement = (
            dialect.insert(request_log)
            .on_conflict_do_nothing(index_elements=["tenant_id", "request_id"])
            .returning(request_log.c.id)
        )
        async with self._write() as conn:
            result = await conn.execute(statement, [_row(r) for r in records])
            return len(result.all())

    async def get(self, tenant_id: str, request_id: str) -> RequestLogRecord | None:
        """The tenant's record of one request, None when there is none."""
        query = sa.select(request_log).where(
            request_log.c.tenant_id == tenant_id, request_log.c.request_id == request_id
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _record(row)

    async def list(self, query: RequestLogQuery) -> RequestLogPage:
        """One page of the tenant's records matching `query`, newest first; `InvalidArgument`
        (on `page_token`) for a token this store did not issue for the same tenant and
        filters."""
        digest = _filter_digest(query)
        table = request_log.c
        select = (
            sa.select(request_log)
            .where(table.tenant_id == query.tenant_id)
            .order_by(table.create_time_us.desc(), table.id.desc())
            .limit(query.page_size + 1)
        )
        if query.prompt:
            select = select.where(table.prompt == query.prompt)
        if query.status:
            select = select.where(table.status == query.status)
        if query.model:
            select = select.where(table.model == query.model)
        if query.request_id:
            select = select.where(table.request_id == query.request_id)
        if query.start_time is not None:
            select = select.where(table.create_time_us >= _to_us(query.start_time))
        if query.end_time is not None:
            select = select.where(table.create_time_us < _to_us(query.end_time))
        if query.page_token:
            time_us, row_id = _decode_token(query.page_token, digest)
            # The redundant `<=` lets an index on the time bound the scan.
            select = select.where(
                table.create_time_us <= time_us,
                sa.or_(
                    table.create_time_us < time_us,
                    sa.and_(table.create_time_us == time_us, table.id < row_id),
                ),
            )
        async with self._read() as conn:
            rows = (await conn.execute(select)).mappings().all()
        more = len(rows) > query.page_size
        rows = rows[: query.page_size]
        token = _encode_token(rows[-1]["create_time_us"], rows[-1]["id"], digest) if more else ""
        return RequestLogPage([_record(r) for r in rows], token)


def _row(record: RequestLogRecord) -> dict[str, Any]:
    return {
        "tenant_id": _text(record.tenant_id),
        "request_id": _text(record.request_id),
        "trace_id": _text(record.trace_id),
        "method": _text(record.method),
        "status": _text(record.status),
        "prompt": _text(record.prompt),
        "prompt_version": record.prompt_version,
        "model": _text(record.model),
        "input": _json(record.input),
        "output": _text(record.output),
        "metadata": _json(dict(record.metadata)),
        "user_id": _text(record.user_id),
        "session_id": _text(record.session_id),
        "tags": _json(dict(record.tags)),
        "create_time_us": _to_us(record.create_time),
        "cost_micros": record.cost_micros,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "first_token_ms": record.first_token_ms,
        "total_ms": record.total_ms,
    }


def _record(row: Mapping[Any, Any]) -> RequestLogRecord:
    first_token_ms = row["first_token_ms"]
    return RequestLogRecord(
        request_id=row["request_id"],
        trace_id=row["trace_id"],
        tenant_id=row["tenant_id"],
        method=row["method"],
        status=row["status"],
        prompt=row["prompt"],
        prompt_version=row["prompt_version"],
        model=row["model"],
        input=json.loads(row["input"]),
        output=row["output"],
        metadata=json.loads(row["metadata"]),
        user_id=row["user_id"],
        session_id=row["session_id"],
        tags=json.loads(row["tags"]),
        create_time=time_from_us(int(row["create_time_us"])),
        cost_micros=int(row["cost_micros"]),
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        first_token_ms=None if first_token_ms is None else float(first_token_ms),
        total_ms=float(row["total_ms"]),
    )


def _text(value: str) -> str:
    """`value` as text both databases take: no NUL, no lone surrogate (it has no UTF-8)."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _json(value: Any) -> str:
    """`value` as JSON text; ASCII escapes keep NULs and lone surrogates storable."""
    return json.dumps(value, default=str)


def _to_us(moment: datetime) -> int:
    """An aware datetime in microseconds since the epoch, exactly."""
    return (moment - _EPOCH) // _MICROSECOND


def _filter_digest(query: RequestLogQuery) -> str:
    """What a page token is bound to: the tenant and every filter (not the page size)."""
    bounds = [None if t is None else _to_us(t) for t in (query.start_time, query.end_time)]
    later = [query.model, query.request_id] if query.model or query.request_id else []
    # Filters added later join the key only when set: tokens issued before stay valid.
    key = json.dumps([query.tenant_id, query.prompt, query.status, *bounds, *later])
    return hashlib.blake2s(key.encode(), digest_size=8).hexdigest()


def _encode_token(time_us: int, row_id: int, digest: str) -> str:
    raw = f"{_TOKEN_VERSION}:{time_us}:{row_id}:{digest}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, digest: str) -> tuple[int, int]:
    """(create_time_us, id) of the last row of the page before; raises `InvalidArgument`."""
    invalid = InvalidArgument(violations=[FieldViolation("page_token", _BAD_TOKEN)])
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, time_us, row_id, token_digest = raw.split(":")
        position = int(time_us), int(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if version != _TOKEN_VERSION or token_digest != digest:
        raise invalid
    return position
