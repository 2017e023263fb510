"""The gateway's request log store on real SQLite and real PostgreSQL: every field round trips,
inserts are idempotent per (tenant, request id), filters and keyset pages (equal timestamps
included) are exact, foreign or forged page tokens are refused, tenants never see each other's
requests, and the batching writer stores every record of many concurrent submitters once."""

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.core.request_log import (
    BatchWriter,
    RequestLogQuery,
    RequestLogReader,
    RequestLogRecord,
    RequestLogTotals,
)
from tests.support.databases import BACKENDS, Database, database

TENANT = "acme"
T0 = datetime(2025, 3, 1, 12, 0, 0, 123457, tzinfo=UTC)


def record(number: int, **changes: Any) -> RequestLogRecord:
    base = RequestLogRecord(
        request_id=f"req-{number:04d}",
        tenant_id=TENANT,
        method="genai.gateway.v1.GatewayService/Complete",
        status="OK",
        prompt="summarize",
        prompt_version=2,
        model="smollm2-135m-instruct",
        create_time=T0 + timedelta(seconds=number),
    )
    return replace(base, **changes)


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def store(db: Database) -> AsyncIterator[SqlRequestLogStore]:
    store = SqlRequestLogStore.from_url(db.url, schema=db.schema)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def all_ids(store: RequestLogReader, query: RequestLogQuery) -> list[str]:
    """Request ids of every page of `query`, in order (through the protocol the servicer
    uses, so mypy checks that the store implements it)."""
    found: list[str] = []
    while True:
        page = await store.list(query)
        found += [e.request_id for e in page.entries]
        if not page.next_page_token:
            return found
        query = replace(query, page_token=page.next_page_token)


async def test_migrations_apply_once_in_their_own_table(db: Database) -> None:
    stores = [SqlRequestLogStore.from_url(db.url, schema=db.schema) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        assert sorted(applied) == [[], [], [1, 2]]
        assert await stores[0].migrate() == []
    finally:
        for s in stores:
            await s.close()


async def test_every_field_round_trips(store: SqlRequestLogStore) -> None:
    full = RequestLogRecord(
        request_id="req-1",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        tenant_id=TENANT,
        method="genai.gateway.v1.GatewayService/StreamComplete",
        status="UNAVAILABLE",
        prompt="summarize",
        prompt_version=7,
        model="smollm2-135m-instruct",
        input=[
            {"role": "system", "content": "Be brief. ünïcødé ✓"},
            {"role": "user", "content": "Mail [EMAIL]", "n": 1.5, "ok": True, "none": None},
        ],
        output="The cat sat.\n\ttabbed",
        metadata={
            "requestId": "req-1",
            "usage": {"inputTokens": 12, "outputTokens": 3},
            "cost": {"currencyCode": "USD", "nanos": 1234},
            "firstTokenDuration": "0.012s",
            "attempts": [{"backendId": "cpu-0", "status": "UNAVAILABLE"}, {"backendId": "cpu-1"}],
        },
        user_id="user-9",
        session_id="session-3",
        tags={"team": "search", "env": "prod"},
        create_time=T0,
        cost_micros=1_234_567_890_123,
        input_tokens=12,
        output_tokens=3,
        first_token_ms=12.25,
        total_ms=250.5,
    )
    assert await store.insert_many([full]) == 1
    assert await store.get(TENANT, "req-1") == full
    page = await store.list(RequestLogQuery(tenant_id=TENANT))
    assert list(page.entries) == [full]
    assert page.next_page_token == ""
    fetched = await store.get(TENANT, "req-1")
    assert fetched is not None
    assert fetched.create_time == T0  # to the microsecond

    sparse = record(1, prompt="", prompt_version=0, model="", input=None, first_token_ms=None)
    await store.insert_many([sparse])
    assert await store.get(TENANT, sparse.request_id) == sparse
    assert await store.get(TENANT, "req-missing") is None


async def test_what_a_database_would_refuse_is_stored_anyway(store: SqlRequestLogStore) -> None:
    odd = record(1, output="nul\x00here \ud800", tags={"k": "v\x00"}, input={"at": T0})
    assert await store.insert_many([odd]) == 1  # never a poison batch that blocks the log
    stored = await store.get(TENANT, odd.request_id)
    assert stored is not None
    assert stored.output == "nul\ufffdhere ?"
    assert stored.tags == {"k": "v\x00"}  # JSON escapes NUL
    assert stored.input == {"at": str(T0)}


async def test_inserts_are_idempotent_per_tenant_and_request_id(
    store: SqlRequestLogStore,
) -> None:
    batch = [record(n) for n in range(5)]
    assert await store.insert_many(batch) == 5
    assert await store.insert_many(batch) == 0  # a retried batch adds nothing
    changed = record(2, status="INTERNAL", output="second try")
    assert await store.insert_many([changed, record(5), record(5), record(6)]) == 2
    stored = await store.get(TENANT, "req-0002")
    assert stored == record(2)  # the first write wins
    assert await store.insert_many([]) == 0
    ids = await all_ids(store, RequestLogQuery(tenant_id=TENANT))
    assert ids == [f"req-{n:04d}" for n in reversed(range(7))]


async def test_filters_select_by_prompt_status_and_time(store: SqlRequestLogStore) -> None:
    await store.insert_many(
        [
            record(0),
            record(1, prompt="translate"),
            record(2, status="UNAVAILABLE"),
            record(3, prompt="translate", status="UNAVAILABLE", model="gemma-3-270m"),
            record(4, model="gemma-3-270m"),
        ]
    )

    async def ids(**filters: Any) -> list[int]:
        found = await all_ids(store, RequestLogQuery(tenant_id=TENANT, page_size=2, **filters))
        return [int(i.removeprefix("req-")) for i in found]

    assert await ids() == [4, 3, 2, 1, 0]
    assert await ids(prompt="translate") == [3, 1]
    assert await ids(status="UNAVAILABLE") == [3, 2]
    assert await ids(prompt="translate", status="UNAVAILABLE") == [3]
    assert await ids(prompt="nothing") == []
    assert await ids(model="gemma-3-270m") == [4, 3]
    assert await ids(model="gemma-3-270m", status="UNAVAILABLE") == [3]
    assert await ids(model="smollm2-135m-instruct") == [2, 1, 0]
    assert await ids(request_id="req-0002") == [2]
    assert await ids(request_id="req-0002", prompt="translate") == []
    assert await ids(request_id="req-9999") == []
    at_1, at_3 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=3)
    assert await ids(start_time=at_1) == [4, 3, 2, 1]  # inclusive
    assert await ids(end_time=at_3) == [2, 1, 0]  # exclusive
    assert await ids(start_time=at_1, end_time=at_3, prompt="summarize") == [2]
    assert await ids(start_time=at_1 - timedelta(microseconds=1), end_time=at_1) == []
    at_3_in_paris = datetime(2025, 3, 1, 13, 0, 3, 123457, tzinfo=timezone(timedelta(hours=1)))
    assert await ids(start_time=at_3_in_paris) == [4, 3]


def test_filters_longer_than_their_limits_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgument) as raised:
        RequestLogQuery(tenant_id=TENANT, model="m" * 257, request_id="r" * 129)
    assert [v.field for v in raised.value.violations] == ["model", "request_id"]


async def test_pages_are_exact_across_equal_timestamps(store: SqlRequestLogStore) -> None:
    same = [record(n, create_time=T0) for n in range(7)]
    later = [record(n, create_time=T0 + timedelta(seconds=1)) for n in range(7, 10)]
    await store.insert_many(same[:4])
    await store.insert_many([*later, *same[4:]])
    query = RequestLogQuery(tenant_id=TENANT, page_size=3)
    pages: list[list[str]] = []
    while True:
        page = await store.list(query)
        pages.append([e.request_id for e in page.entries])
        if not page.next_page_token:
            break
        query = replace(query, page_token=page.next_page_token)
    # Newest first; equal times in reverse insertion order; nothing lost, nothing twice.
    later_ids = [r.request_id for r in later][::-1]
    same_ids = [r.request_id for r in [*same[4:][::-1], *same[:4][::-1]]]
    assert [i for p in pages for i in p] == later_ids + same_ids
    assert [len(p) for p in pages] == [3, 3, 3, 1]

    exact = await store.list(RequestLogQuery(tenant_id=TENANT, page_size=10))
    assert len(exact.entries) == 10
    assert exact.next_page_token == ""  # no empty last page

    # Rows added after the first page do not shift the pages after it.
    first = await store.list(RequestLogQuery(tenant_id=TENANT, page_size=4))
    await store.insert_many([record(50, create_time=T0 + timedelta(seconds=9))])
    rest = await all_ids(
        store, RequestLogQuery(tenant_id=TENANT, page_size=4, page_token=first.next_page_token)
    )
    assert [e.request_id for e in first.entries] + rest == later_ids + same_ids


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!",
        base64.urlsafe_b64encode(b"1:abc:1:0000000000000000").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"2:1:1:0000000000000000").decode(),
    ],
)
async def test_forged_page_tokens_are_invalid_arguments(
    store: SqlRequestLogStore, token: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await store.list(RequestLogQuery(tenant_id=TENANT, page_token=token))
    assert [v.field for v in raised.value.violations] == ["page_token"]


async def test_a_token_works_only_with_the_tenant_and_filters_it_came_from(
    store: SqlRequestLogStore,
) -> None:
    await store.insert_many([record(n) for n in range(3)])
    await store.insert_many([record(n, tenant_id="globex") for n in range(3)])
    query = RequestLogQuery(tenant_id=TENANT, prompt="summarize", page_size=1)
    token = (await store.list(query)).next_page_token
    assert token
    second = await store.list(replace(query, page_token=token, page_size=5))  # size may change
    assert [e.request_id for e in second.entries] == ["req-0001", "req-0000"]
    for other in (
        replace(query, tenant_id="globex"),
        replace(query, prompt=""),
        replace(query, status="OK"),
        replace(query, start_time=T0),
        replace(query, model="smollm2-135m-instruct"),
        replace(query, request_id="req-0001"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            await store.list(replace(other, page_token=token))
        assert raised.value.violations[0].field == "page_token"


async def test_tenants_never_see_each_others_requests(store: SqlRequestLogStore) -> None:
    await store.insert_many([record(n) for n in range(4)])
    # The same request ids in another tenant are other requests, stored apart.
    globex = [record(n, tenant_id="globex", output="globex's") for n in range(2, 8)]
    assert await store.insert_many(globex) == 6

    acme_ids = await all_ids(store, RequestLogQuery(tenant_id=TENANT, page_size=2))
    assert acme_ids == [f"req-{n:04d}" for n in reversed(range(4))]
    for query in (
        RequestLogQuery(tenant_id=TENANT, page_size=1000),
        RequestLogQuery(tenant_id=TENANT, prompt="summarize", status="OK"),
    ):
        page = await store.list(query)
        assert {e.tenant_id for e in page.entries} == {TENANT}
        assert all(e.output == "" for e in page.entries)
    assert await store.get(TENANT, "req-0007") is None
    mine = await store.get(TENANT, "req-0002")
    assert mine is not None
    assert mine.output == ""
    assert len(await all_ids(store, RequestLogQuery(tenant_id="globex"))) == 6
    assert await all_ids(store, RequestLogQuery(tenant_id="nobody")) == []


async def test_the_batch_writer_stores_every_record_of_concurrent_submitters_once(
    store: SqlRequestLogStore,
) -> None:
    writer = BatchWriter(store, max_batch=64, max_delay_seconds=0.01)
    writer.start()

    async def submitter(task: int) -> None:
        for n in range(100):
            assert writer.submit(record(task * 100 + n))
            if n % 7 == 0:
                await asyncio.sleep(0)  # interleave with the other submitters and the writer

    await asyncio.gather(*(submitter(t) for t in range(20)))
    totals = await writer.aclose()
    assert totals == RequestLogTotals(written=2000, dropped=0, failed=0)
    ids = await all_ids(store, RequestLogQuery(tenant_id=TENANT, page_size=1000))
    assert len(ids) == 2000
    assert set(ids) == {f"req-{n:04d}" for n in range(2000)}
