"""The request log's batching writer against an in-memory store that can be slowed, hung and
failed at will: batches close on size or delay, `submit` never waits, a full queue drops and
counts, a failed batch is retried whole and stored once, `aclose` flushes (or gives up after its
timeout) and the metrics say what happened. Real databases: tests/integration/gateway."""

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import InvalidArgument
from services.gateway.core.request_log import (
    BatchWriter,
    RequestLogQuery,
    RequestLogRecord,
    RequestLogSink,
    RequestLogTotals,
)

LOGGER = "services.gateway.core.request_log"


class MemoryStore:
    """A request log store in a dict; `failures` fails that many calls, `gate` (when set)
    holds every call until it is set."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], RequestLogRecord] = {}
        self.attempts: list[list[str]] = []
        """Request ids of every call, failed ones included, in order."""
        self.attempt_times: list[float] = []
        self.batches: list[list[str]] = []
        """Request ids of every call that succeeded."""
        self.failures = 0
        self.gate: asyncio.Event | None = None

    async def insert_many(self, records: Sequence[RequestLogRecord]) -> int:
        ids = [r.request_id for r in records]
        self.attempts.append(ids)
        self.attempt_times.append(time.monotonic())
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database is down")
        self.batches.append(ids)
        new = 0
        for record in records:
            new += (record.tenant_id, record.request_id) not in self.rows
            self.rows.setdefault((record.tenant_id, record.request_id), record)
        return new

    @property
    def written(self) -> list[str]:
        """Every request id stored, in batch order, duplicates included."""
        return [i for batch in self.batches for i in batch]


def record(number: int) -> RequestLogRecord:
    return RequestLogRecord(
        request_id=f"req-{number:05d}",
        tenant_id="acme",
        method="genai.gateway.v1.GatewayService/Complete",
        status="OK",
        create_time=datetime(2025, 1, 1, tzinfo=UTC),
    )


def ids(numbers: range) -> list[str]:
    return [f"req-{n:05d}" for n in numbers]


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5.0
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def outcome(registry: CollectorRegistry, name: str) -> float:
    return sample(registry, "genai_request_log_records_total", outcome=name)


async def test_a_full_batch_goes_at_once_and_the_rest_after_the_delay() -> None:
    store = MemoryStore()
    writer = BatchWriter(store, max_batch=10, max_delay_seconds=0.5)
    writer.start()
    started = time.monotonic()
    assert all(writer.submit(record(n)) for n in range(25))
    await wait_until(lambda: len(store.batches) == 3)
    assert store.batches == [ids(range(10)), ids(range(10, 20)), ids(range(20, 25))]
    _, second, third = (t - started for t in store.attempt_times)
    assert second < 0.4  # full batches do not wait for the delay
    assert third >= 0.5  # the rest waits for it
    assert await writer.aclose() == RequestLogTotals(written=25, dropped=0, failed=0)


async def test_a_lone_record_waits_for_the_delay_then_goes_alone() -> None:
    store = MemoryStore()
    writer = BatchWriter(store, max_batch=100, max_delay_seconds=0.05)
    writer.start()
    started = time.monotonic()
    writer.submit(record(0))
    await wait_until(lambda: store.batches == [ids(range(1))])
    assert store.attempt_times[0] - started >= 0.05
    await writer.aclose()


async def test_submit_never_waits_for_a_hanging_store_and_drops_past_capacity() -> None:
    assert not inspect.iscoroutinefunction(BatchWriter.submit)
    store = MemoryStore()
    store.gate = asyncio.Event()  # every write hangs until the end of the test
    registry = CollectorRegistry()
    writer = BatchWriter(store, capacity=50, max_batch=10, max_delay_seconds=0.0, registry=registry)
    writer.start()
    started = time.monotonic()
    accepted = [writer.submit(record(n)) for n in range(100)]
    assert time.monotonic() - started < 0.5
    assert accepted == [True] * 50 + [False] * 50

    await wait_until(lambda: len(store.attempts) == 1)  # one batch taken, and hanging
    assert store.attempts == [ids(range(10))]
    assert writer.queue_depth == 40
    assert [writer.submit(record(n)) for n in range(100, 120)] == [True] * 10 + [False] * 10
    assert outcome(registry, "dropped") == 60
    assert sample(registry, "genai_request_log_queue_depth") == 50

    store.gate.set()
    totals = await writer.aclose()
    assert totals == RequestLogTotals(written=60, dropped=60, failed=0)
    assert store.written == ids(range(50)) + ids(range(100, 110))


async def test_a_failed_batch_is_retried_whole_and_stored_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = MemoryStore()
    store.failures = 3
    registry = CollectorRegistry()
    writer = BatchWriter(
        store,
        max_batch=10,
        max_delay_seconds=0.0,
        registry=registry,
        backoff_initial_seconds=0.04,
        backoff_max_seconds=0.08,
    )
    writer.start()
    for n in range(10):
        writer.submit(record(n))
    await wait_until(lambda: len(store.attempts) == 2)  # failing, between retries
    assert all(writer.submit(record(n)) for n in range(10, 15))  # still taking records
    assert writer.queue_depth == 5
    await wait_until(lambda: len(store.batches) == 2)

    assert store.attempts[:4] == [ids(range(10))] * 4  # the same batch, whole, each time
    assert store.written == ids(range(15))  # every record exactly once
    gaps = [b - a for a, b in itertools.pairwise(store.attempt_times[:4])]
    least = (0.02, 0.04, 0.04)  # 50% of the backoff: 0.04 s, doubled, capped at 0.08 s
    assert all(gap >= bound for gap, bound in zip(gaps, least, strict=True)), gaps
    failures = [r for r in caplog.records if "request log records failed" in r.getMessage()]
    assert len(failures) == 3  # once per round, not once per record
    assert "attempt 3" in failures[-1].getMessage()
    assert sample(registry, "genai_request_log_write_errors_total") == 3
    assert sample(registry, "genai_request_log_batch_seconds_count") == 5
    assert await writer.aclose() == RequestLogTotals(written=15, dropped=0, failed=0)
    assert outcome(registry, "written") == 15


async def test_aclose_flushes_everything_without_waiting_for_the_delay() -> None:
    store = MemoryStore()
    registry = CollectorRegistry()
    writer = BatchWriter(store, max_batch=64, max_delay_seconds=30.0, registry=registry)
    for n in range(1000):  # queued before the writer even starts
        assert writer.submit(record(n))
    assert sample(registry, "genai_request_log_queue_depth") == 1000
    started = time.monotonic()
    totals = await writer.aclose()
    assert time.monotonic() - started < 5.0
    assert totals == RequestLogTotals(written=1000, dropped=0, failed=0)
    assert store.written == ids(range(1000))
    assert max(len(b) for b in store.batches) == 64
    assert len(store.batches) == 16
    assert sample(registry, "genai_request_log_queue_depth") == 0
    assert sample(registry, "genai_request_log_batch_seconds_count") == 16

    assert writer.submit(record(1000)) is False  # closed: refused and counted
    assert outcome(registry, "dropped") == 1
    assert await writer.aclose() == totals  # a second close reports the first's totals


async def test_aclose_abandons_what_a_dead_store_never_took_after_its_timeout() -> None:
    store = MemoryStore()
    store.gate = asyncio.Event()
    registry = CollectorRegistry()
    writer = BatchWriter(store, max_batch=10, max_delay_seconds=0.0, registry=registry)
    writer.start()
    for n in range(30):
        writer.submit(record(n))
    started = time.monotonic()
    totals = await writer.aclose(timeout=0.2)
    assert 0.19 <= time.monotonic() - started < 2.0
    assert totals == RequestLogTotals(written=0, dropped=0, failed=30)
    assert outcome(registry, "failed") == 30
    assert outcome(registry, "written") == 0
    assert sample(registry, "genai_request_log_queue_depth") == 0


async def test_metrics_start_at_zero_in_the_given_registry_and_count_as_a_sink() -> None:
    registry = CollectorRegistry()
    store = MemoryStore()
    writer = BatchWriter(store, registry=registry)
    assert writer.metrics_registry is registry
    for name in ("written", "dropped", "failed"):
        assert outcome(registry, name) == 0
    assert sample(registry, "genai_request_log_batch_seconds_count") == 0
    assert sample(registry, "genai_request_log_write_errors_total") == 0
    sink: RequestLogSink = writer  # what the servicer holds (mypy checks the protocol)
    assert sink.submit(record(0))
    assert await sink.aclose() == RequestLogTotals(written=1, dropped=0, failed=0)
    assert outcome(registry, "written") == 1
    assert store.written == ids(range(1))


@pytest.mark.parametrize(
    "options",
    [
        {"capacity": 0},
        {"max_batch": 0},
        {"max_delay_seconds": -1.0},
        {"backoff_initial_seconds": 0.0},
        {"backoff_initial_seconds": 2.0, "backoff_max_seconds": 1.0},
    ],
)
def test_writer_options_out_of_range_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is for people
        BatchWriter(MemoryStore(), **options)  # type: ignore[arg-type]


def test_records_and_queries_refuse_what_cannot_be_stored_or_asked() -> None:
    good = record(0)
    for change in (
        {"request_id": ""},
        {"tenant_id": ""},
        {"create_time": datetime(2025, 1, 1)},  # naive
        {"total_ms": float("nan")},
        {"first_token_ms": -1.0},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            replace(good, **change)
    with pytest.raises(InvalidArgument) as raised:
        RequestLogQuery(tenant_id="acme", page_size=0, start_time=datetime(2025, 1, 1))
    assert [v.field for v in raised.value.violations] == ["page_size", "start_time"]
    assert RequestLogQuery(tenant_id="acme", page_size=1000).page_size == 1000


async def test_a_confirmed_record_is_written_at_once_and_its_future_says_so() -> None:
    store = MemoryStore()
    writer = BatchWriter(store, max_batch=100, max_delay_seconds=30)  # batches would wait 30 s
    writer.start()
    writer.submit(record(0))  # an unconfirmed record waits for its batch...
    confirmed = writer.submit_confirmed(record(1))  # ...until a confirmed one comes
    assert await asyncio.wait_for(confirmed, 2) is True
    assert store.batches == [ids(range(2))]
    await writer.aclose()


async def test_confirmed_records_queued_during_a_write_share_the_next_one() -> None:
    store = MemoryStore()
    store.gate = asyncio.Event()
    writer = BatchWriter(store, max_batch=100, max_delay_seconds=30)
    writer.start()
    first = writer.submit_confirmed(record(0))
    await wait_until(lambda: len(store.attempts) == 1)  # the first write is under way
    waiting = [writer.submit_confirmed(record(n)) for n in range(1, 6)]
    store.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *waiting), 2) == [True] * 6
    assert store.batches == [ids(range(1)), ids(range(1, 6))]  # group commit: one more write
    await writer.aclose()


async def test_a_confirmation_waits_through_retries_and_fails_when_abandoned() -> None:
    store = MemoryStore()
    store.failures = 2
    writer = BatchWriter(store, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    writer.start()
    assert await asyncio.wait_for(writer.submit_confirmed(record(0)), 2) is True
    assert len(store.attempts) == 3

    store.gate = asyncio.Event()  # a hung store
    hung = writer.submit_confirmed(record(1))
    await wait_until(lambda: len(store.attempts) == 4)
    totals = await writer.aclose(timeout=0.05)
    assert totals.failed == 1
    assert hung.done()
    assert hung.result() is False
    refused = writer.submit_confirmed(record(2))  # closed: dropped at once
    assert refused.done()
    assert refused.result() is False
