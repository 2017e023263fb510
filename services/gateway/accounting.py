"""A completion's accounting, for `services.gateway.completion`: the tenant's quota reserved
before anything streams and settled with the real usage, the cost at catalog prices, the
request-log record (redacted by the log's content policy), the GenAI metrics, the online
evaluation of served requests and of feedback on them, and the recent requests this gateway
served (for feedback that arrives before the request log has their rows).

`commit` logs, then settles (before a successful request's `final`); `account` does what
`commit` did not do yet and records the rest, at the end of every request. Requests of an
inline prompt (no registry version) are not evaluated online.

The quota and log primitives (`reserve_usage`, `settle_usage`, `log`, `redact_for_log`) serve
the gateway's embeddings too (`services.gateway.embeddings`)."""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal
from typing import Final

import grpc
from genai.gateway.v1 import gateway_pb2
from google.protobuf import json_format
from opentelemetry import trace

from services.common.errors import ResourceExhausted
from services.common.wire import chat_role_name, duration, money, usage_source_name
from services.evaluation.core.online import FeedbackRecord, OnlineEvaluator, OnlineRecord
from services.gateway.core.processing import ResponseProcessor
from services.gateway.core.quota import QuotaLimiter, Reservation, Usage
from services.gateway.core.request_log import RequestLogRecord, RequestLogSink
from services.gateway.core.tenants import TenantQuota
from services.gateway.metrics import GatewayMetrics
from services.gateway.outcome import Caller, Outcome, ServedRequest
from services.gateway.tenancy import PriceBook
from services.prompt.client import RenderedPrompt
from services.prompt.core.processing_config import PiiKind, PiiRedaction, ProcessingConfig

_logger = logging.getLogger(__name__)

RECENT_REQUESTS: Final = 10_000
"""How many recent requests `served` remembers."""
_LOG_REDACTION: Final = ProcessingConfig(pii_redaction=PiiRedaction(kinds=tuple(PiiKind)))
"""What the `redacted` request-log policy removes from inputs and outputs."""


class Accounting:
    """Quota, cost, request log, metrics and online evaluation of completions (see the module
    docstring). One per gateway."""

    def __init__(
        self,
        *,
        prices: PriceBook,
        quota: QuotaLimiter,
        log: RequestLogSink | None,
        log_content: str,
        log_confirm_seconds: float | None = None,
        metrics: GatewayMetrics,
        online: OnlineEvaluator | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._prices = prices
        self._quota = quota
        self._log = log
        self._log_content = log_content
        self._log_confirm_seconds = log_confirm_seconds
        """How long `final` waits for its request-log record to be stored (None: it does
        not wait)."""
        self._metrics = metrics
        self._online = online
        self._served: OrderedDict[tuple[str, str], ServedRequest] = OrderedDict()
        """(tenant, request id) -> the recent requests of this gateway, for feedback that
        arrives before the request log has the row."""
        self._clock = clock

    @property
    def scores_online(self) -> bool:
        """Whether served requests and yes/no feedback go to online evaluation."""
        return self._online is not None

    @property
    def log_content(self) -> str:
        """The request log's content policy: `full`, `redacted` or `metadata`."""
        return self._log_content

    # ------------------------------------------------------------------------------ quota

    async def reserve(
        self, outcome: Outcome, caller: Caller, limits: TenantQuota, usage: Usage
    ) -> None:
        """Reserves `usage` of the caller's quota for the request (`outcome.reservation`;
        RESOURCE_EXHAUSTED over a limit, counted), then has the quota store follow the tokens
        it has used so far (`QuotaLimiter.track`)."""
        outcome.reservation = await self.reserve_usage(
            caller, limits, usage, request_id=outcome.request_id
        )
        self._quota.track(outcome.reservation, outcome.tokens_used)

    async def reserve_usage(
        self, caller: Caller, limits: TenantQuota, usage: Usage, *, request_id: str
    ) -> Reservation:
        """Reserves `usage` of the caller's quota for request `request_id`;
        RESOURCE_EXHAUSTED over a limit (counted in `quota_rejections`)."""
        try:
            return await self._quota.reserve(caller.tenant_id, limits, usage, request_id=request_id)
        except ResourceExhausted:
            self._metrics.quota_rejections.labels(caller.tenant_id).inc()
            raise

    async def cost(self, outcome: Outcome, caller: Caller) -> tuple[Decimal, str]:
        """Cost at catalog prices of every attempt that consumed tokens."""
        total, currency = Decimal(0), outcome.currency
        for routed in outcome.routed:
            if not routed.attempts or not (routed.usage.input_tokens or routed.usage.output_tokens):
                continue
            price = await self._prices.price(routed.attempts[-1].model, caller.metadata)
            currency = price.currency
            total += price.cost(routed.usage.input_tokens, routed.usage.output_tokens)
        return total, currency

    # ------------------------------------------------------------------------------ log, settle

    async def commit(self, outcome: Outcome, caller: Caller) -> None:
        """Logs the request, then settles its quota (before a successful request's `final`;
        at the end of any other). The record goes first: should this process die between the
        two, the sweep that settles its reservation finds the record and settles at its usage
        (see `RedisQuotaLimiter`), so the quota always agrees with the log. With
        `log_confirm_seconds`, the record is stored before the settlement (waiting at most that
        long; a record not confirmed by then is still written, later, and counted); without,
        it is queued. Never raises but for cancellation."""
        if self._log is not None and not outcome.logged:
            record = self._log_record(outcome, caller, self._clock() - outcome.started)
            outcome.logged = True
            await self.log(record)
        if outcome.reservation is not None:
            await self._settle(outcome, caller, outcome.reservation)

    async def log(self, record: RequestLogRecord) -> None:
        """Hands `record` to the request log (nothing without one): stored before this returns
        with `log_confirm_seconds` (waiting at most that long), else queued. Never raises but
        for cancellation."""
        if self._log is None:
            return
        if self._log_confirm_seconds is None:
            self._log.submit(record)
        else:
            await self._confirm(self._log.submit_confirmed(record), record.request_id)

    async def _confirm(self, confirmed: "asyncio.Future[bool]", request_id: str) -> None:
        assert self._log_confirm_seconds is not None
        try:
            stored = await asyncio.wait_for(asyncio.shield(confirmed), self._log_confirm_seconds)
        except TimeoutError:
            stored = False
        if not stored:
            self._metrics.log_unconfirmed.inc()
            _logger.warning(
                "request %s: its request-log record was not confirmed within %.1f s; going on",
                request_id,
                self._log_confirm_seconds,
            )

    async def _settle(self, outcome: Outcome, caller: Caller, reservation: Reservation) -> None:
        """Replaces the reservation's estimate with the real usage (once); never raises but
        for cancellation."""
        usage = outcome.usage
        tokens = usage.input_tokens + usage.output_tokens
        await self.settle_usage(
            caller,
            reservation,
            Usage(requests=1, tokens=tokens, cost_micros=micros(outcome.cost)),
            request_id=outcome.request_id,
        )

    async def settle_usage(
        self, caller: Caller, reservation: Reservation, actual: Usage, *, request_id: str
    ) -> None:
        """Replaces the reservation's estimate with the `actual` usage (once); never raises
        but for cancellation."""
        if reservation.settled:
            return
        try:
            await self._quota.settle(reservation, actual)
            self._metrics.settled_tokens.labels(caller.tenant_id).inc(actual.tokens)
        except Exception:
            _logger.exception("settling the quota of request %s failed", request_id)

    async def account(self, outcome: Outcome, caller: Caller) -> None:
        """Logs the request and settles the quota where `commit` did not already, records
        metrics, remembers the request (`served`) and hands it to online evaluation; never
        raises but for cancellation."""
        usage = outcome.usage
        model = outcome.model or "unknown"
        operation = outcome.operation
        try:
            if outcome.cost == 0 and outcome.code != grpc.StatusCode.OK:
                outcome.cost, outcome.currency = await self.cost(outcome, caller)
        except Exception:  # accounting must not hide the request's own outcome
            _logger.exception("pricing request %s failed", outcome.request_id)
        await self.commit(outcome, caller)
        elapsed = self._clock() - outcome.started
        error_type = "" if outcome.code == grpc.StatusCode.OK else outcome.code.name
        self._metrics.operation_duration.labels(operation, model, error_type).observe(elapsed)
        self._metrics.requests.labels(caller.tenant_id, caller.method, outcome.code.name).inc()
        if outcome.schema_result:
            self._metrics.output_schema_checks.labels(
                model, "true" if outcome.constrained else "false", outcome.schema_result
            ).inc()
        if outcome.routed:
            self._metrics.token_usage.labels(operation, model, "input").observe(usage.input_tokens)
            self._metrics.token_usage.labels(operation, model, "output").observe(
                usage.output_tokens
            )
            source = usage_source_name(usage)
            self._metrics.usage_tokens.labels(model, "input", source).inc(usage.input_tokens)
            self._metrics.usage_tokens.labels(model, "output", source).inc(usage.output_tokens)
            self._metrics.cost.labels(caller.tenant_id, model).inc(float(outcome.cost))
        if outcome.first_token is not None:
            self._metrics.time_to_first_chunk.labels(operation, model).observe(
                outcome.first_token - outcome.started
            )
            chunks = max(len(outcome.output) - 1, 0)
            if chunks and outcome.last_chunk is not None:
                self._metrics.time_per_output_chunk.labels(operation, model).observe(
                    (outcome.last_chunk - outcome.first_token) / chunks
                )
        self._remember(outcome, caller)
        rendered = outcome.rendered
        if self._online is not None and rendered is not None and rendered.prompt:
            self._submit_online(self._online, outcome, rendered, caller, elapsed)

    # ------------------------------------------------------------------------------ served

    def served(self, tenant_id: str, request_id: str) -> ServedRequest | None:
        """A recent request of this gateway (None when it is not remembered)."""
        return self._served.get((tenant_id, request_id))

    def _remember(self, outcome: Outcome, caller: Caller) -> None:
        if outcome.rendered is None:
            return
        self._served[(caller.tenant_id, outcome.request_id)] = ServedRequest(
            prompt=outcome.rendered.prompt,
            prompt_version=outcome.rendered.version,
            model=outcome.model,
            experiment=outcome.experiment,
            variant=outcome.variant,
            unit_id=outcome.unit_id,
        )
        while len(self._served) > RECENT_REQUESTS:
            self._served.popitem(last=False)

    # ------------------------------------------------------------------------------ online

    def _submit_online(
        self,
        online: OnlineEvaluator,
        outcome: Outcome,
        rendered: RenderedPrompt,
        caller: Caller,
        elapsed: float,
    ) -> None:
        final = outcome.final
        schema: bool | None = None
        if rendered.output_schema is not None:
            schema = final is not None and final.processing.schema_valid
        span = trace.get_current_span().get_span_context()
        online.submit(
            OnlineRecord(
                tenant_id=caller.tenant_id,
                request_id=outcome.request_id,
                trace_id=outcome.trace_id,
                span_id=f"{span.span_id:016x}" if span.is_valid else "",
                prompt=rendered.prompt,
                prompt_version=rendered.version,
                model=outcome.model,
                status=outcome.code.name,
                output="".join(outcome.output),
                schema_valid=schema,
                truncated=final is not None and final.processing.truncated,
                total_ms=elapsed * 1e3,
                first_token_ms=None
                if outcome.first_token is None
                else (outcome.first_token - outcome.started) * 1e3,
            )
        )

    def submit_feedback(
        self, caller: Caller, request_id: str, served: ServedRequest, up: bool
    ) -> None:
        """Hands a thumbs up or down to online evaluation (never sampled out)."""
        if self._online is not None:
            self._online.submit(
                FeedbackRecord(
                    tenant_id=caller.tenant_id,
                    request_id=request_id,
                    prompt=served.prompt,
                    prompt_version=served.prompt_version,
                    model=served.model,
                    thumbs_up=up,
                )
            )

    # ------------------------------------------------------------------------------ request log

    def _log_record(self, outcome: Outcome, caller: Caller, elapsed: float) -> RequestLogRecord:
        """The request's record, redacted by the log's content policy."""
        rendered = outcome.rendered
        content = self._log_content
        messages: list[dict[str, str]] | dict[str, str] = []
        output = ""
        if content != "metadata":
            if outcome.input_text is not None:  # a text prompt: what went to the model as text
                text = outcome.input_text
                messages = {"text": redact_for_log(text) if content == "redacted" else text}
            else:
                messages = [
                    {
                        "role": chat_role_name(m.role),
                        "content": redact_for_log(m.content)
                        if content == "redacted"
                        else m.content,
                    }
                    for m in outcome.input_messages
                ]
            output = "".join(outcome.output)
            if content == "redacted":
                output = redact_for_log(output)
        attempts = outcome.attempts()
        metadata = outcome.final or gateway_pb2.CompletionMetadata(
            request_id=outcome.request_id,
            trace_id=outcome.trace_id,
            prompt=rendered.prompt if rendered else "",
            prompt_version=rendered.version if rendered else 0,
            label=outcome.label,
            experiment=outcome.experiment,
            variant=outcome.variant,
            model=outcome.model,
            backend_id=attempts[-1].backend_id if attempts else "",
            usage=outcome.usage,
            cost=money(outcome.cost, outcome.currency),
            total_duration=duration(elapsed),
            attempts=attempts,
            processing=gateway_pb2.ProcessingSummary(constrained_decoding=outcome.constrained),
        )
        if outcome.final is None and outcome.first_token is not None:
            metadata.first_token_duration.CopyFrom(duration(outcome.first_token - outcome.started))
        usage = outcome.usage
        return RequestLogRecord(
            request_id=outcome.request_id,
            trace_id=outcome.trace_id,
            tenant_id=caller.tenant_id,
            method=caller.method.lstrip("/"),
            status=outcome.code.name,
            prompt=metadata.prompt,
            prompt_version=metadata.prompt_version,
            # A request refused before any attempt is still found by the model it pinned.
            model=metadata.model or outcome.request.routing.model,
            input=messages,
            output=output,
            metadata=json_format.MessageToDict(metadata),
            user_id=outcome.request.user_id,
            session_id=outcome.request.session_id,
            tags=dict(outcome.request.tags),
            create_time=outcome.arrived,
            cost_micros=micros(outcome.cost),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            first_token_ms=None
            if outcome.first_token is None
            else (outcome.first_token - outcome.started) * 1e3,
            total_ms=elapsed * 1e3,
        )


def micros(amount: Decimal) -> int:
    """`amount` in millionths, as quotas count cost."""
    return int((amount * 1_000_000).to_integral_value())


def redact_for_log(text: str) -> str:
    """`text` with what the `redacted` request-log policy removes (e-mail addresses, phone
    numbers, card numbers) replaced by their kind."""
    processor = ResponseProcessor(_LOG_REDACTION)
    return processor.feed(text) + processor.finish()
