"""The gateway's durable request log: what one logged request holds, how logs are queried, and
the batching writer that takes records off the request path.

A request's record is handed to a `RequestLogSink` when the request ends; `submit` never blocks
or awaits, so logging cannot slow a request down or stall the event loop. `BatchWriter` is the
sink: a bounded queue (`capacity` records) drained by one background task, which writes up to
`max_batch` records at a time, after at most `max_delay_seconds`, with the store's
`insert_many`. `submit_confirmed` queues a record the same way and returns a future that
resolves once it is stored: the gateway waits for it before it sends a completion's `final`, so
a request whose caller saw it succeed is in the log even if the process dies a moment later.
Such a record does not wait for its batch to fill: the writer takes everything queued as soon
as it is free (group commit), so under load one write confirms many records. A failed write keeps its batch and is retried with capped exponential backoff
(with jitter) until it succeeds; meanwhile new records queue up to `capacity`, and past it they
are dropped and counted, never waited for. Stores skip records whose (tenant, request id) they
hold already, so a retried batch that had in fact been committed writes nothing twice.

Metrics (Prometheus, in the writer's own `CollectorRegistry` unless given one):
`genai_request_log_records_total{outcome}` (`written`: stored; `dropped`: refused by `submit`
because the queue was full or the writer closed; `failed`: accepted but abandoned when `aclose`
ran out of time), `genai_request_log_write_errors_total` (failed `insert_many` calls),
`genai_request_log_queue_depth` (records waiting, not counting a batch being written) and
`genai_request_log_batch_seconds` (duration of each `insert_many` call, failed ones included).

Records are redacted by the caller: this module stores what it is given. It imports neither
grpc nor generated code.
"""

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.errors import FieldViolation, InvalidArgument

_logger = logging.getLogger(__name__)

MAX_PAGE_SIZE: Final = 1000
"""Most entries one `RequestLogQuery` page may ask for."""
DEFAULT_PAGE_SIZE: Final = 100
"""Entries per page when a caller asks for none in particular."""
_BATCH_SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass(frozen=True, kw_only=True)
class RequestLogRecord:
    """One logged gateway request, already redacted by policy.

    `input` is the rendered messages sent to the model and `metadata` the `CompletionMetadata`
    as protobuf's JSON mapping, both JSON-able and returned exactly as given. The numeric fields
    repeat what queries and dashboards need without parsing `metadata`. `ValueError` without a
    request or tenant id, for a naive `create_time`, or a negative or non-finite duration.
    """

    request_id: str
    """Id of the request; unique per tenant (required)."""
    trace_id: str = ""
    """W3C trace id, hex."""
    tenant_id: str
    """Tenant of the caller (required)."""
    method: str
    """Full RPC name, e.g. `genai.gateway.v1.GatewayService/StreamComplete`."""
    status: str
    """Canonical status code name of the request: `OK`, `UNAVAILABLE`, ..."""
    prompt: str = ""
    """Name of the prompt; empty when the request failed before one was resolved."""
    prompt_version: int = 0
    """The version rendered; 0 when unknown."""
    model: str = ""
    """Catalog name of the model that produced the output; empty when none did."""
    input: Any = None
    """The rendered messages as sent to the model (JSON-able)."""
    output: str = ""
    """The output as returned to the caller."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The completion's `CompletionMetadata` in protobuf's JSON mapping."""
    user_id: str = ""
    """The caller's user id."""
    session_id: str = ""
    """The caller's session id."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """The caller's tags."""
    create_time: datetime
    """When the request arrived (timezone-aware)."""
    cost_micros: int = 0
    """Cost at catalog prices, all attempts included, in millionths of the currency unit."""
    input_tokens: int = 0
    """Prompt tokens of the successful attempt."""
    output_tokens: int = 0
    """Generated tokens (of the successful attempt, or streamed before a failure)."""
    first_token_ms: float | None = None
    """Milliseconds from arrival to the first delta; None when no token was sent."""
    total_ms: float = 0.0
    """Milliseconds from arrival to the end of the request."""

    def __post_init__(self) -> None:
        if not self.request_id or not self.tenant_id:
            raise ValueError("a request log record needs a request_id and a tenant_id")
        if self.create_time.utcoffset() is None:
            raise ValueError("create_time must be timezone-aware")
        durations = (self.total_ms, 0.0 if self.first_token_ms is None else self.first_token_ms)
        if not all(math.isfinite(d) and d >= 0 for d in durations):
            raise ValueError("total_ms and first_token_ms must be finite and >= 0")


@dataclass(frozen=True, kw_only=True)
class RequestLogQuery:
    """One page of a tenant's request log, newest first.

    `start_time` is inclusive, `end_time` exclusive; empty `prompt`/`status`/`model`/
    `request_id` match every request (`model`: the model recorded with the entry, the one that
    served or was tried last). `page_token` is a previous page's `next_page_token`, valid only with the same
    tenant and filters. Invalid values raise `InvalidArgument` naming each field.
    """

    tenant_id: str
    prompt: str = ""
    status: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""
    model: str = ""
    request_id: str = ""

    def __post_init__(self) -> None:
        violations = []
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("page_size", f"must be in [1, {MAX_PAGE_SIZE}]"))
        for name in ("start_time", "end_time"):
            moment: datetime | None = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                violations.append(FieldViolation(name, "must be timezone-aware"))
        for name, limit in (("model", MAX_MODEL_CHARS), ("request_id", MAX_REQUEST_ID_CHARS)):
            if len(getattr(self, name)) > limit:
                violations.append(FieldViolation(name, f"must be at most {limit} characters"))
        if violations:
            raise InvalidArgument(violations=violations)


MAX_MODEL_CHARS: Final = 256
"""The longest `model` filter (`ListRequestLogsRequest.model`)."""
MAX_REQUEST_ID_CHARS: Final = 128
"""The longest `request_id` filter (`ListRequestLogsRequest.request_id`)."""


@dataclass(frozen=True)
class RequestLogPage:
    """One page of request log entries, newest first; `next_page_token` is empty on the last."""

    entries: Sequence[RequestLogRecord]
    next_page_token: str = ""


@dataclass(frozen=True)
class RequestLogTotals:
    """What a `BatchWriter` did with the records offered to it, over its whole life."""

    written: int
    """Records stored (a record the store held already counts as stored)."""
    dropped: int
    """Records `submit` refused: the queue was full or the writer was closing."""
    failed: int
    """Records accepted but never stored: `aclose` ran out of time writing them."""


class RequestLogSink(Protocol):
    """Where the gateway hands each finished request's record."""

    def submit(self, record: RequestLogRecord) -> bool:
        """Takes `record` for writing without blocking; False when it was dropped."""
        ...

    def submit_confirmed(self, record: RequestLogRecord) -> "asyncio.Future[bool]":
        """Takes `record` for writing at once; the future is True once it is stored, False
        (already) when it was dropped or (at close) abandoned."""
        ...

    # A grace period, not a deadline around the call: what is left at its end is counted.
    async def aclose(self, timeout: float = 10.0) -> RequestLogTotals:  # noqa: ASYNC109
        """Stops taking records and writes what was taken, for at most `timeout` seconds."""
        ...


class RequestLogInserter(Protocol):
    """The write side of a request log store, all `BatchWriter` needs."""

    async def insert_many(self, records: Sequence[RequestLogRecord]) -> int:
        """Stores `records` in one transaction, skipping any whose (tenant_id, request_id) is
        stored already; returns how many were new."""
        ...


class RequestLogReader(Protocol):
    """The read side of a request log store, what `ListRequestLogs` needs."""

    async def list(self, query: RequestLogQuery) -> RequestLogPage:
        """One page of the tenant's records matching `query`, newest first."""
        ...

    async def get(self, tenant_id: str, request_id: str) -> RequestLogRecord | None:
        """The tenant's record of one request, None when there is none."""
        ...


class RequestLogMetrics:
    """The request log writer's Prometheus metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        records = Counter(
            "genai_request_log_records",
            "Request log records by outcome: written (stored), dropped (refused because the "
            "queue was full or the writer was closing), failed (abandoned unwritten at close).",
            ["outcome"],
            registry=registry,
        )
        self.written = records.labels(outcome="written")
        self.dropped = records.labels(outcome="dropped")
        self.failed = records.labels(outcome="failed")
        self.write_errors = Counter(
            "genai_request_log_write_errors",
            "Batch writes of the request log that failed (each is retried).",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "genai_request_log_queue_depth",
            "Request log records waiting to be written, not counting a batch being written.",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "genai_request_log_batch_seconds",
            "Duration of each batch write of the request log, failed ones included.",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=registry,
        )


class BatchWriter:
    """A `RequestLogSink` that writes records to a store in batches (see the module docstring).

    Use it from one event loop: `start()` in the loop, `submit` from its tasks or callbacks,
    `aclose()` at shutdown.
    """

    def __init__(
        self,
        store: RequestLogInserter,
        *,
        capacity: int = 10_000,
        max_batch: int = 256,
        max_delay_seconds: float = 0.05,
        registry: CollectorRegistry | None = None,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 5.0,
    ) -> None:
        """`capacity` bounds the records waiting (a batch being written is held apart from
        them); a batch is written once it has `max_batch` records or its first record has
        waited `max_delay_seconds`. Retries of a failed write wait about
        `backoff_initial_seconds`, doubling up to `backoff_max_seconds` (each 50-100%)."""
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be at least 1")
        if max_delay_seconds < 0 or backoff_initial_seconds <= 0:
            raise ValueError("max_delay_seconds must be >= 0, backoff_initial_seconds > 0")
        if backoff_max_seconds < backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_initial_seconds")
        self._store = store
        self._capacity = capacity
        self._max_batch = max_batch
        self._max_delay = max_delay_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._metrics = RequestLogMetrics(
            registry if registry is not None else CollectorRegistry(auto_describe=True)
        )
        self._queue: deque[RequestLogRecord] = deque()
        self._confirmations: dict[int, asyncio.Future[bool]] = {}
        """`id(record)` -> the future of each queued or batched record someone waits for."""
        self._wakeup = asyncio.Event()
        """Set when the collector may have something to do: a first record, a full batch, or
        closing."""
        self._batch: Sequence[RequestLogRecord] = ()
        """The batch being written (or retried)."""
        self._head_since = 0.0
        """`time.monotonic()` when the oldest waiting record arrived (or, after a batch left
        records behind, when that batch was taken)."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._full_logged = False
        self._totals: RequestLogTotals | None = None
        self._written = 0
        self._dropped = 0
        self._failed = 0

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The registry that holds the writer's metrics (expose it to scrape them)."""
        return self._metrics.registry

    @property
    def queue_depth(self) -> int:
        """Records waiting to be written, not counting a batch being written."""
        return len(self._queue)

    def start(self) -> None:
        """Starts the background writer task in the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="request-log-writer"
            )
            self._task.add_done_callback(_log_unexpected_end)

    def submit(self, record: RequestLogRecord) -> bool:
        """Queues `record` for writing; never blocks. False (and counted as dropped) when the
        queue is full or the writer is closing."""
        if self._closing or len(self._queue) >= self._capacity:
            self._dropped += 1
            self._metrics.dropped.inc()
            if not self._closing and not self._full_logged:
                self._full_logged = True
                _logger.warning(
                    "request log queue full (%d records): dropping records until it drains",
                    self._capacity,
                )
            return False
        self._queue.append(record)
        depth = len(self._queue)
        self._metrics.queue_depth.set(depth)
        if depth == 1:
            self._head_since = time.monotonic()
            self._wakeup.set()
        elif depth >= self._max_batch:
            self._wakeup.set()
        return True

    def submit_confirmed(self, record: RequestLogRecord) -> "asyncio.Future[bool]":
        """Queues `record` like `submit`, to be written without waiting for its batch to fill;
        the future resolves True once it is stored (False at once when it was dropped, and
        at `aclose` when it was abandoned). A failing store keeps it pending while the write
        is retried: wait for it with a timeout."""
        confirmed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self.submit(record):
            confirmed.set_result(False)
            return confirmed
        self._confirmations[id(record)] = confirmed
        self._wakeup.set()
        return confirmed

    async def aclose(self, timeout: float = 10.0) -> RequestLogTotals:  # noqa: ASYNC109
        """Stops taking records, writes every record taken, and returns the totals. Records
        still unwritten after `timeout` seconds are abandoned and counted as failed (a write
        cut short that way may have committed all the same). Later calls return the same."""
        if self._totals is not None:
            return self._totals
        self._closing = True
        self._wakeup.set()
        self.start()  # records submitted before start() are flushed too
        task = self._task
        assert task is not None
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        lost = len(self._batch) + len(self._queue)  # none unless cut short (or crashed)
        for waiting in self._confirmations.values():
            if not waiting.done():
                waiting.set_result(False)
        self._confirmations.clear()
        if lost:
            self._batch = ()
            self._queue.clear()
            self._metrics.queue_depth.set(0)
            self._failed += lost
            self._metrics.failed.inc(lost)
            _logger.error("request log writer closed with %d records unwritten", lost)
        self._totals = RequestLogTotals(self._written, self._dropped, self._failed)
        return self._totals

    async def _run(self) -> None:
        """Collects and writes batches until closing and the queue is empty."""
        while True:
            batch = await self._next_batch()
            if not batch:
                return
            await self._write(batch)

    async def _next_batch(self) -> list[RequestLogRecord]:
        """The next batch: up to `max_batch` records, once there are that many or the first
        has waited `max_delay_seconds` (at once when closing); empty when closed and drained."""
        while not self._queue:
            if self._closing:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._head_since + self._max_delay
        while len(self._queue) < self._max_batch and not self._closing and not self._confirmations:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        self._head_since = time.monotonic()
        self._metrics.queue_depth.set(len(self._queue))
        self._full_logged = False
        return batch

    async def _write(self, batch: Sequence[RequestLogRecord]) -> None:
        """Writes `batch`, retrying with capped exponential backoff until it is stored."""
        self._batch = batch
        loop = asyncio.get_running_loop()
        delay = self._backoff_initial
        attempt = 0
        while True:
            attempt += 1
            started = loop.time()
            try:
                await self._store.insert_many(batch)
            except Exception as error:
                self._metrics.batch_seconds.observe(loop.time() - started)
                self._metrics.write_errors.inc()
                pause = delay * random.uniform(0.5, 1.0)
                _logger.warning(
                    "writing %d request log records failed (attempt %d), retrying in %.2f s: %r",
                    len(batch),
                    attempt,
                    pause,
                    error,
                    exc_info=attempt == 1,
                )
                await asyncio.sleep(pause)
                delay = min(delay * 2, self._backoff_max)
                continue
            self._metrics.batch_seconds.observe(loop.time() - started)
            break
        if attempt > 1:
            _logger.info("request log writes recovered after %d attempts", attempt)
        self._batch = ()
        self._written += len(batch)
        self._metrics.written.inc(len(batch))
        if self._confirmations:
            for record in batch:
                waiting = self._confirmations.pop(id(record), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(True)


def _log_unexpected_end(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        _logger.error("request log writer stopped", exc_info=task.exception())
