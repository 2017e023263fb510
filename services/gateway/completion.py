"""Composition of one completion: prompt -> route -> quota -> stream -> process -> account.

`CompletionEngine.stream` is the whole of `StreamComplete` (and, collected, of `Complete`):

1. validate the request; resolve the prompt version (label, number) through the tenant's
   `PromptClient` (a push-invalidated cache: no RPC on the hot path) and render it locally;
2. merge the version's sampling parameters and routing preferences with the request's (the
   request wins field by field), and ask the router for a ranked decision;
3. reserve the tenant's quota (one request, input plus maximum output tokens, the first
   candidate's estimated cost), refusing with RESOURCE_EXHAUSTED before anything streams;
4. send `start`, then stream from InferenceService through `RoutedGenerator` (failover before
   the first token, STREAM_INTERRUPTED after it), running every chunk through the version's
   `ResponseProcessor` (stop sequences, length limit, PII redaction); a stop sequence or the
   length limit cancels the backend's generation at once;
5. validate the output against the version's JSON schema, with one repair attempt when the
   version asks for it (such outputs are held back until they validate, since streamed text
   cannot be taken back). The schema also goes to InferenceService as the request's output
   constraint, for the candidates whose model decodes under one (`GuidedDecodingBook`), so
   that the output matches by construction; the check and the repair stay as the safety net
   (for outputs cut short, and for models that cannot be constrained);
6. store the request-log record (group-committed with other requests' records), settle the
   quota with the real usage, then send `final` with prompt version, model, backend, usage,
   cost at catalog prices, TTFT, total time, attempts and what processing did: a caller that
   saw `final` is logged and accounted, even if this process dies the next moment;
7. whatever else happened (an error, the client cancelling), log and settle the same way
   before the status goes out; in every case record the GenAI metrics and span attributes.
   A shared quota store reads the tokens used so far in the background
   (`QuotaLimiter.track`; nothing is done per token) to settle the reservation should this
   process die mid-stream (at the logged usage when the record made it, else at the last
   count).

Deadlines propagate: every downstream call gets the time the caller has left. A cancelled
client stream cancels the generation on the backend (`RoutedGenerator` cancels its call).

A request with a `request_id` is idempotent (`services.gateway.core.idempotency`, scope
`completion`, shared by Complete and StreamComplete): before step 1 it claims its id in the
gateway's database, shared by every replica. A retry of a request that succeeded is answered
from the stored outcome (`start`, one delta with the whole text, the same `final`) with nothing
generated, charged or logged again; a retry while the first still runs fails with ABORTED
(REQUEST_IN_PROGRESS, `RetryInfo`); the same id on a different request fails with
FAILED_PRECONDITION (REQUEST_ID_REUSED). The outcome is stored after step 6, before `final`
goes out; a request that fails in any way releases its claim, so that a retry runs again.
Without a `request_id` the gateway makes one up and touches no idempotency store.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import grpc
from genai.common.v1 import chat_pb2, generation_pb2, routing_pb2
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2
from genai.prompt.v1 import prompt_pb2
from genai.router.v1 import router_service_pb2
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from services.common import reasons
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unimplemented,
)
from services.common.status import remote_error, status_code_of
from services.common.wire import decimal_amount, duration, money
from services.evaluation.core.online import FeedbackRecord, OnlineEvaluator, OnlineRecord
from services.gateway.core.idempotency import (
    Claim,
    Idempotency,
    Replay,
    RequestInProgress,
    fingerprint,
)
from services.gateway.core.processing import (
    FinishOverride,
    OutputSchemaViolation,
    PiiKind,
    PiiRedaction,
    ProcessingConfig,
    RedactionPattern,
    ResponseProcessor,
    repair_instruction,
)
from services.gateway.core.quota import QuotaLimiter, Reservation, Usage
from services.gateway.core.request_log import RequestLogRecord, RequestLogSink
from services.gateway.core.tenants import TenantQuota
from services.gateway.metrics import GatewayMetrics
from services.gateway.tenancy import GuidedDecodingBook, PriceBook, TenantDirectory
from services.prompt.client import RenderedPrompt
from services.router.failover import RoutedGenerator, RoutedStream
from services.router.preferences import merge_preferences

_logger = logging.getLogger(__name__)

STREAM_METHOD: Final = "/genai.gateway.v1.GatewayService/StreamComplete"
UNARY_METHOD: Final = "/genai.gateway.v1.GatewayService/Complete"
FEEDBACK_METHOD: Final = "/genai.gateway.v1.GatewayService/RecordFeedback"
MAX_UNIT_ID_CHARS: Final = 256
MAX_REQUEST_ID_CHARS: Final = 128
MAX_TAGS: Final = 16
MAX_TAG_CHARS: Final = 128
MAX_EXTRA_MESSAGES: Final = 64
EXPERIMENT_CACHE_S: Final = 5.0
RECENT_REQUESTS: Final = 10_000
IDEMPOTENCY_SCOPE: Final = "completion"
"""The idempotency scope of Complete and StreamComplete (a retry of one may be the other)."""
MAX_CONSTRAINT_SCHEMA_BYTES: Final = 64 * 1024
"""The contract's limit on `OutputConstraint.json_schema` (compact JSON): a larger output
schema is checked, but does not constrain decoding."""

_PII_KINDS: Final = {
    prompt_pb2.PII_KIND_EMAIL: PiiKind.EMAIL,
    prompt_pb2.PII_KIND_PHONE: PiiKind.PHONE,
    prompt_pb2.PII_KIND_CARD_NUMBER: PiiKind.CARD_NUMBER,
}
_FINISH: Final = {
    FinishOverride.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishOverride.STOP_SEQUENCE: generation_pb2.FINISH_REASON_STOP_SEQUENCE,
}
_LOG_REDACTION: Final = ProcessingConfig(pii_redaction=PiiRedaction(kinds=tuple(PiiKind)))
"""What the `redacted` request-log policy removes from inputs and outputs."""

Request = gateway_service_pb2.StreamCompleteRequest
Response = gateway_service_pb2.StreamCompleteResponse


@dataclass(frozen=True)
class Caller:
    """Who asks, and how the engine calls the platform on their behalf."""

    tenant_id: str
    metadata: Sequence[tuple[str, str]]
    """Metadata for every downstream call (the internal token and tenant)."""
    method: str = STREAM_METHOD


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """What feedback on a served request needs: its prompt version and model (online
    evaluation), and its experiment, variant and unit (experiment outcomes)."""

    prompt: str
    prompt_version: int
    model: str
    experiment: str = ""
    variant: str = ""
    unit_id: str = ""


@dataclass
class _Outcome:
    """What one completion did, filled in as it goes; logged and accounted at the end."""

    started: float
    request_id: str
    trace_id: str
    request: Request
    arrived: datetime
    rendered: RenderedPrompt | None = None
    label: str = ""
    experiment: str = ""
    variant: str = ""
    unit_id: str = ""
    input_messages: list[chat_pb2.ChatMessage] = field(default_factory=list)
    routed: list[RoutedStream] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    first_token: float | None = None
    last_chunk: float | None = None
    final: gateway_pb2.CompletionMetadata | None = None
    cost: Decimal = Decimal(0)
    currency: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    reservation: Reservation | None = None
    logged: bool = False
    """The request-log record was handed over already (before `final`)."""
    schema_result: str = ""
    """The output schema check: `valid`, `repaired` or `invalid`; empty: none ran."""
    claim: Claim | None = None
    """The request's idempotency claim, until its outcome is stored (None: there is none)."""

    def tokens_used(self) -> int:
        """Input plus output tokens of every attempt so far."""
        return sum(r.usage.input_tokens + r.usage.output_tokens for r in self.routed)

    @property
    def usage(self) -> generation_pb2.TokenUsage:
        total = generation_pb2.TokenUsage()
        for routed in self.routed:
            total.input_tokens += routed.usage.input_tokens
            total.output_tokens += routed.usage.output_tokens
        return total

    @property
    def constrained(self) -> bool:
        """Whether the first generation decoded under the output schema."""
        return bool(self.routed) and self.routed[0].constrained

    @property
    def model(self) -> str:
        for routed in reversed(self.routed):
            if routed.attempts:
                return routed.attempts[-1].model
        return ""


@dataclass
class _Generated:
    """The result of one generation: its processed text and finish reason."""

    text: str = ""
    finish: int = generation_pb2.FINISH_REASON_UNSPECIFIED


class CompletionEngine:
    """Runs completions (see the module docstring). One per gateway."""

    def __init__(
        self,
        *,
        generator: RoutedGenerator,
        directory: TenantDirectory,
        prices: PriceBook,
        quota: QuotaLimiter,
        log: RequestLogSink | None,
        log_content: str,
        log_confirm_seconds: float | None = None,
        metrics: GatewayMetrics,
        default_max_output_tokens: int,
        experiments: Any = None,
        online: OnlineEvaluator | None = None,
        idempotency: Idempotency | None = None,
        guided_decoding: GuidedDecodingBook | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._generator = generator
        self._guided = guided_decoding
        """Which models decode under an output schema (None: the gateway never asks)."""
        self._directory = directory
        self._prices = prices
        self._quota = quota
        self._log = log
        self._log_content = log_content
        self._log_confirm_seconds = log_confirm_seconds
        """How long `final` waits for its request-log record to be stored (None: it does
        not wait)."""
        self._metrics = metrics
        self._default_max_output_tokens = default_max_output_tokens
        self._experiments = experiments
        self._online = online
        self._idempotency = idempotency
        """Claims and outcomes of requests with a `request_id` (None: every request runs)."""
        self._experiment_units: dict[tuple[str, str], tuple[float, int]] = {}
        """(tenant, experiment) -> (expiry, the experiment's assignment unit), briefly cached."""
        self._served: OrderedDict[tuple[str, str], ServedRequest] = OrderedDict()
        """(tenant, request id) -> the recent requests of this gateway, for feedback that
        arrives before the request log has the row."""
        self._background: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._tracer = trace.get_tracer("genai.gateway", tracer_provider=tracer_provider)

    async def stream(
        self, request: Request, caller: Caller, *, time_left: float | None
    ) -> AsyncIterator[Response]:
        """Yields `start`, the processed deltas and `final`; raises `DomainError`s (the error
        interceptor turns them into statuses) after which nothing more is sent. Counted in
        `genai_gateway_in_flight` from the call to its end."""
        in_flight = self._metrics.in_flight.labels(caller.method)
        in_flight.inc()
        try:
            async for message in self._stream(request, caller, time_left=time_left):
                yield message
        finally:
            in_flight.dec()

    async def _stream(
        self, request: Request, caller: Caller, *, time_left: float | None
    ) -> AsyncIterator[Response]:
        started = self._clock()
        claim: Claim | None = None
        if request.request_id and self._idempotency is not None and _claimable(request):
            begun = await self._begin(self._idempotency, request, caller)
            if isinstance(begun, Replay):
                self._metrics.idempotent_replays.labels(caller.tenant_id, caller.method).inc()
                for message in replayed(begun.outcome):
                    yield message
                return
            claim = begun
        span_context = trace.get_current_span().get_span_context()
        outcome = _Outcome(
            started=started,
            request_id=request.request_id or uuid.uuid4().hex,
            trace_id=f"{span_context.trace_id:032x}" if span_context.is_valid else "",
            request=request,
            arrived=datetime.now(UTC),
            claim=claim,
        )
        deadline = None if time_left is None else started + time_left
        try:
            _validate(request)
            client = await self._directory.prompts(caller.tenant_id)
            selector = request.WhichOneof("selector")
            outcome.label = request.label if selector == "label" else ""
            version = request.version if selector == "version" else None
            assigned: experiment_pb2.Assignment | None = None
            if selector == "experiment":
                assigned = await self._assign(request, caller, outcome, deadline)
                if assigned.variant and assigned.prompt_version:
                    version = assigned.prompt_version
            if version is None and not outcome.label:
                outcome.label = "production"
            try:
                rendered = await client.render(
                    request.prompt,
                    json_format.MessageToDict(request.variables),
                    label=outcome.label or None,
                    version=version,
                )
            except InvalidArgument as error:
                raise _prefixed(error, "variables") from None
            outcome.rendered = rendered
            outcome.input_messages = [*rendered.chat_messages(), *request.messages]
            base_parameters = rendered.parameters
            routing = _routing_or_none(request)
            if assigned is not None and assigned.variant:
                # The variant's settings sit between the version's and the request's.
                base_parameters = merge_parameters(base_parameters, assigned.parameters)
                if assigned.model and not (routing is not None and routing.model):
                    pinned = routing_pb2.RoutingPreferences(model=assigned.model)
                    routing = merge_preferences(routing, pinned)
            parameters = merge_parameters(base_parameters, request.parameters)
            max_output = (
                parameters.max_tokens
                if parameters.HasField("max_tokens")
                else self._default_max_output_tokens
            )
            input_estimate = estimate_tokens(outcome.input_messages)
            route = router_service_pb2.RouteRequest(
                preferences=merge_preferences(rendered.routing, routing),
                input_tokens=input_estimate,
                max_output_tokens=max_output,
                prompt=request.prompt,
                unit_id=request.user_id or request.session_id,
            )
            decision = await self._call(
                self._generator.route(
                    route, time_left=_left(deadline, self._clock), metadata=caller.metadata
                ),
                "the router",
                "genai.router.v1.RouterService",
            )
            first = decision.candidates[0]
            outcome.currency = first.estimated_cost.currency_code
            limits = await self._directory.quota(caller.tenant_id)
            outcome.reservation = await self._reserve(
                caller.tenant_id,
                outcome.request_id,
                limits,
                Usage(
                    requests=1,
                    tokens=input_estimate + max_output,
                    cost_micros=_micros(decimal_amount(first.estimated_cost)),
                ),
            )
            self._quota.track(outcome.reservation, outcome.tokens_used)
            if outcome.variant:
                self._record_exposure(outcome, caller)
            yield Response(
                start=gateway_pb2.CompletionStart(
                    request_id=outcome.request_id,
                    trace_id=outcome.trace_id,
                    prompt=rendered.prompt,
                    prompt_version=rendered.version,
                    experiment=outcome.experiment,
                    variant=outcome.variant,
                )
            )
            config = processing_config(rendered, parameters)
            hold = config.output_schema is not None and _repairs(rendered)
            generation = inference_service_pb2.GenerateStreamRequest(
                chat=inference_pb2.ChatInput(messages=outcome.input_messages),
                parameters=parameters,
                request_id=outcome.request_id,
            )
            if self._guided is not None and _constrains(config):
                assert rendered.output_schema is not None  # _constrains: there is a schema
                generation.constraint.json_schema.CopyFrom(rendered.output_schema)
            with self._tracer.start_as_current_span(
                f"chat {first.model}", kind=trace.SpanKind.CLIENT
            ) as span:
                _request_attributes(span, rendered, parameters, first.model)
                summary = gateway_pb2.ProcessingSummary()
                result = _Generated()
                try:
                    async for text in self._generate(
                        generation, route, decision, config, outcome, caller, deadline, summary,
                        result, emit=not hold,
                    ):  # fmt: skip
                        yield Response(delta=gateway_pb2.TextDelta(text=text))
                except OutputSchemaViolation as violation:
                    if not _repairs(rendered) or config.output_schema is None:
                        raise
                    summary.repaired = True
                    repair = inference_service_pb2.GenerateStreamRequest()
                    repair.CopyFrom(generation)
                    repair.chat.messages.extend(
                        [
                            chat_pb2.ChatMessage(
                                role=chat_pb2.CHAT_ROLE_ASSISTANT, content="".join(outcome.output)
                            ),
                            chat_pb2.ChatMessage(
                                role=chat_pb2.CHAT_ROLE_USER,
                                content=repair_instruction(
                                    violation.violation, config.output_schema
                                ),
                            ),
                        ]
                    )
                    outcome.output.clear()
                    result = _Generated()
                    held = self._generate(
                        repair, route, None, config, outcome, caller, deadline, summary,
                        result, emit=False,
                    )  # fmt: skip
                    async for _held in held:  # emit=False: nothing comes out, text is kept
                        raise RuntimeError("a held-back generation emitted text") from None
                if config.output_schema is not None:
                    outcome.schema_result = "repaired" if summary.repaired else "valid"
                summary.constrained_decoding = outcome.constrained
                if hold:
                    outcome.first_token = outcome.first_token or self._clock()
                    yield Response(delta=gateway_pb2.TextDelta(text=result.text))
                outcome.cost, outcome.currency = await self._cost(outcome, caller)
                final = self._final(outcome, rendered, result.finish, summary, result.text)
                _response_attributes(span, outcome, final)
            outcome.final = final
            await self._commit(outcome, caller)
            if outcome.claim is not None:
                await self._store_outcome(outcome, outcome.claim, result.text, final)
            yield Response(final=final)
        except DomainError as error:
            # The nearest mapped class: OUTPUT_SCHEMA_VIOLATION is a FailedPrecondition.
            outcome.code = status_code_of(error) or grpc.StatusCode.INTERNAL
            if isinstance(error, OutputSchemaViolation):
                outcome.schema_result = "invalid"
            raise
        except asyncio.CancelledError:
            outcome.code = grpc.StatusCode.CANCELLED
            raise
        except GeneratorExit:
            outcome.code = grpc.StatusCode.CANCELLED
            raise
        finally:
            await asyncio.shield(self._end(outcome, caller))

    # ------------------------------------------------------------------------------ idempotency

    async def _begin(
        self, idempotency: Idempotency, request: Request, caller: Caller
    ) -> Claim | Replay:
        """Claims the request's id (see the module docstring)."""
        without_id = Request()
        without_id.CopyFrom(request)
        without_id.ClearField("request_id")
        try:
            return await idempotency.begin(
                caller.tenant_id,
                IDEMPOTENCY_SCOPE,
                request.request_id,
                fingerprint(without_id.SerializeToString(deterministic=True)),
            )
        except RequestInProgress:
            self._metrics.idempotent_in_progress.labels(caller.tenant_id, caller.method).inc()
            raise

    async def _store_outcome(
        self, outcome: _Outcome, claim: Claim, text: str, final: gateway_pb2.CompletionMetadata
    ) -> None:
        """Stores a successful request's outcome for its retries; a store that fails leaves
        the claim to be released (a retry then runs again), never failing the request."""
        assert self._idempotency is not None
        stored = gateway_service_pb2.CompleteResponse(text=text, metadata=final)
        try:
            kept = await self._idempotency.complete(
                claim, stored.SerializeToString(deterministic=True)
            )
        except Exception:
            _logger.exception("storing the outcome of request %s failed", outcome.request_id)
            kept = False
        else:
            outcome.claim = None
        if not kept:
            self._metrics.idempotent_unstored.inc()

    async def _end(self, outcome: _Outcome, caller: Caller) -> None:
        """Accounts the request, then releases its claim if its outcome was not stored (it
        failed, or was cancelled), so that a retry runs again."""
        await self._account(outcome, caller)
        if outcome.claim is not None and self._idempotency is not None:
            await self._idempotency.release(outcome.claim)
            outcome.claim = None

    # ------------------------------------------------------------------------------ experiments

    async def _assign(
        self, request: Request, caller: Caller, outcome: _Outcome, deadline: float | None
    ) -> experiment_pb2.Assignment:
        """The unit's variant of `request.experiment` (ExperimentService: sticky, deterministic);
        the unit is the user or the session, as the experiment says."""
        if self._experiments is None:
            raise Unimplemented(
                "this gateway reaches no ExperimentService",
                method=caller.method,
                missing="an ExperimentService (gateway.targets.experiment)",
            )
        name = request.experiment
        unit = await self._experiment_unit(name, caller, deadline)
        if unit == experiment_pb2.ASSIGNMENT_UNIT_SESSION:
            unit_id, field = request.session_id, "session_id"
        else:
            unit_id, field = request.user_id, "user_id"
        if not unit_id:
            raise InvalidArgument(
                violations=[FieldViolation(field, f"experiment {name!r} assigns by {field}")]
            )
        response = await self._call(
            self._experiments.AssignVariant(
                experiment_service_pb2.AssignVariantRequest(experiment=name, unit_id=unit_id),
                timeout=_left(deadline, self._clock),
                metadata=caller.metadata,
            ),
            "the experiment service",
            "genai.experiment.v1.ExperimentService",
        )
        assigned: experiment_pb2.Assignment = response.assignment
        outcome.experiment, outcome.variant, outcome.unit_id = name, assigned.variant, unit_id
        return assigned

    async def _experiment_unit(self, name: str, caller: Caller, deadline: float | None) -> int:
        key = (caller.tenant_id, name)
        cached = self._experiment_units.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        response = await self._call(
            self._experiments.GetExperiment(
                experiment_service_pb2.GetExperimentRequest(name=name),
                timeout=_left(deadline, self._clock),
                metadata=caller.metadata,
            ),
            "the experiment service",
            "genai.experiment.v1.ExperimentService",
        )
        unit: int = response.experiment.unit
        self._experiment_units[key] = (now + EXPERIMENT_CACHE_S, unit)
        return unit

    def _record_exposure(self, outcome: _Outcome, caller: Caller) -> None:
        """Records, in the background, that the unit was served its variant."""
        request = experiment_service_pb2.RecordExposureRequest(
            experiment=outcome.experiment,
            unit_id=outcome.unit_id,
            variant=outcome.variant,
            request_id=outcome.request_id,
        )

        async def record() -> None:
            try:
                await self._experiments.RecordExposure(
                    request, timeout=5.0, metadata=caller.metadata
                )
            except grpc.aio.AioRpcError as error:
                _logger.warning(
                    "recording the exposure of request %s failed: %s",
                    outcome.request_id,
                    error.code().name,
                )

        task = asyncio.create_task(record())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def served(self, tenant_id: str, request_id: str) -> ServedRequest | None:
        """A recent request of this gateway (None when it is not remembered)."""
        return self._served.get((tenant_id, request_id))

    def _remember(self, outcome: _Outcome, caller: Caller) -> None:
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

    async def record_feedback(
        self,
        caller: Caller,
        request_id: str,
        metric: str,
        value: float | bool,
        served: ServedRequest,
    ) -> None:
        """Records feedback on a served request: as an outcome of its experiment (if it took
        part in one), and as a score of online evaluation (thumbs up or down). Raises
        FailedPrecondition when neither applies."""
        if isinstance(value, bool):
            self.submit_feedback(caller, request_id, served, value)
        if not served.experiment or not served.variant:
            if isinstance(value, bool) and self._online is not None:
                return
            raise FailedPrecondition(
                f"request {request_id!r} took part in no experiment variant"
                + ("" if self._online is None else ", and only yes/no feedback is scored online"),
                reason=reasons.FAILED_PRECONDITION,
                metadata={"request_id": request_id},
            )
        experiment, unit_id = served.experiment, served.unit_id
        if self._experiments is None:
            raise Unimplemented(
                "this gateway reaches no ExperimentService",
                method=caller.method,
                missing="an ExperimentService (gateway.targets.experiment)",
            )
        request = experiment_service_pb2.RecordOutcomeRequest(
            experiment=experiment, unit_id=unit_id, metric=metric, request_id=request_id
        )
        if isinstance(value, bool):
            request.boolean_value = value
        else:
            request.numeric_value = value
        await self._call(
            self._experiments.RecordOutcome(request, timeout=5.0, metadata=caller.metadata),
            "the experiment service",
            "genai.experiment.v1.ExperimentService",
        )

    async def unit_of(self, caller: Caller, experiment: str, user_id: str, session_id: str) -> str:
        """The unit id a request of `experiment` was assigned by (its user or its session)."""
        if self._experiments is None:
            raise Unimplemented(
                "this gateway reaches no ExperimentService",
                method=caller.method,
                missing="an ExperimentService (gateway.targets.experiment)",
            )
        unit = await self._experiment_unit(experiment, caller, None)
        return session_id if unit == experiment_pb2.ASSIGNMENT_UNIT_SESSION else user_id

    async def drain(self) -> None:
        """Waits for background exposure records (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------------------------ stages

    async def _generate(
        self,
        generation: inference_service_pb2.GenerateStreamRequest,
        route: router_service_pb2.RouteRequest,
        decision: Any,
        config: ProcessingConfig,
        outcome: _Outcome,
        caller: Caller,
        deadline: float | None,
        summary: gateway_pb2.ProcessingSummary,
        result: "_Generated",
        *,
        emit: bool,
    ) -> AsyncIterator[str]:
        """Streams one generation through a fresh processor. With `emit`, yields each
        processed chunk for the caller; the whole text and the finish reason end up in
        `result`. Raises `OutputSchemaViolation` when the output fails the schema."""
        processor = ResponseProcessor(config)
        record = RoutedStream()
        outcome.routed.append(record)
        finish: int = generation_pb2.FINISH_REASON_UNSPECIFIED
        parts: list[str] = []
        messages = self._generator.stream(
            generation,
            route,
            record,
            time_left=_left(deadline, self._clock),
            decision=decision,
            metadata=caller.metadata,
            constrains=self._constrainable(caller) if generation.HasField("constraint") else None,
        )
        try:
            async with contextlib.aclosing(messages):
                async for message in messages:
                    kind = message.WhichOneof("event")
                    if kind == "delta":
                        text = processor.feed(message.delta.text)
                        if text:
                            parts.append(text)
                            outcome.output.append(text)
                            if emit:
                                self._sent(outcome)
                                yield text
                        if processor.done:
                            break  # aclosing cancels the backend's generation
                    elif kind == "final":
                        finish = message.final.finish_reason
        except grpc.aio.AioRpcError as error:
            raise remote_error(
                error, service="genai.inference.v1.InferenceService", what="inference"
            ) from None
        finally:
            self._metrics.failovers.labels(outcome.model or "unknown").inc(
                max(len(record.attempts) - 1, 0)
            )
        rest = processor.finish()  # raises OutputSchemaViolation
        if rest:
            parts.append(rest)
            outcome.output.append(rest)
            if emit:
                self._sent(outcome)
                yield rest
        summary.redaction_count += sum(processor.redactions.values())
        override = processor.finish_reason
        if override is not None:
            finish = _FINISH[override]
            summary.truncated = override is FinishOverride.LENGTH
        # The backend honours stop sequences itself; the gateway's stage catches the rest.
        summary.stop_sequence_matched = finish == generation_pb2.FINISH_REASON_STOP_SEQUENCE
        summary.schema_valid = config.output_schema is not None
        result.text = "".join(parts)
        result.finish = finish

    def _constrainable(self, caller: Caller) -> Callable[[str], Awaitable[bool]]:
        """Whether a candidate model decodes under the output schema."""
        guided = self._guided
        assert guided is not None  # only requests with a constraint ask

        async def constrains(model: str) -> bool:
            return await guided.supports(model, caller.metadata)

        return constrains

    def _sent(self, outcome: _Outcome) -> None:
        now = self._clock()
        if outcome.first_token is None:
            outcome.first_token = now
        outcome.last_chunk = now

    async def _reserve(
        self, tenant_id: str, request_id: str, limits: TenantQuota, usage: Usage
    ) -> Reservation:
        try:
            return await self._quota.reserve(tenant_id, limits, usage, request_id=request_id)
        except ResourceExhausted:
            self._metrics.quota_rejections.labels(tenant_id).inc()
            raise

    async def _cost(self, outcome: _Outcome, caller: Caller) -> tuple[Decimal, str]:
        """Cost at catalog prices of every attempt that consumed tokens."""
        total, currency = Decimal(0), outcome.currency
        for routed in outcome.routed:
            if not routed.attempts or not (routed.usage.input_tokens or routed.usage.output_tokens):
                continue
            price = await self._prices.price(routed.attempts[-1].model, caller.metadata)
            currency = price.currency
            total += price.cost(routed.usage.input_tokens, routed.usage.output_tokens)
        return total, currency

    def _final(
        self,
        outcome: _Outcome,
        rendered: RenderedPrompt,
        finish: int,
        summary: gateway_pb2.ProcessingSummary,
        text: str,
    ) -> gateway_pb2.CompletionMetadata:
        last = outcome.routed[-1]
        served = last.attempts[-1]
        final = gateway_pb2.CompletionMetadata(
            request_id=outcome.request_id,
            trace_id=outcome.trace_id,
            prompt=rendered.prompt,
            prompt_version=rendered.version,
            label=outcome.label,
            experiment=outcome.experiment,
            variant=outcome.variant,
            model=served.model,
            backend_id=served.backend_id,
            finish_reason=finish,  # type: ignore[arg-type]
            usage=outcome.usage,
            cost=money(outcome.cost, outcome.currency),
            total_duration=duration(self._clock() - outcome.started),
            attempts=[
                gateway_pb2.Attempt(
                    model=a.model,
                    backend_id=a.backend_id,
                    status="OK" if not a.error else a.error.split(":", 1)[0],
                    error=a.error,
                )
                for routed in outcome.routed
                for a in routed.attempts
            ],
            processing=summary,
        )
        if outcome.first_token is not None:
            final.first_token_duration.CopyFrom(duration(outcome.first_token - outcome.started))
        if summary.schema_valid:
            final.output_json.CopyFrom(json_format.Parse(text, struct_pb2.Value()))
        return final

    # ------------------------------------------------------------------------------ accounting

    async def _commit(self, outcome: _Outcome, caller: Caller) -> None:
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
            if self._log_confirm_seconds is None:
                self._log.submit(record)
            else:
                await self._confirm(self._log.submit_confirmed(record), outcome.request_id)
        if outcome.reservation is not None:
            await self._settle(outcome, caller, outcome.reservation)

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

    async def _settle(self, outcome: _Outcome, caller: Caller, reservation: Reservation) -> None:
        """Replaces the reservation's estimate with the real usage (once); never raises but
        for cancellation."""
        if reservation.settled:
            return
        usage = outcome.usage
        tokens = usage.input_tokens + usage.output_tokens
        try:
            await self._quota.settle(
                reservation, Usage(requests=1, tokens=tokens, cost_micros=_micros(outcome.cost))
            )
            self._metrics.settled_tokens.labels(caller.tenant_id).inc(tokens)
        except Exception:
            _logger.exception("settling the quota of request %s failed", outcome.request_id)

    async def _account(self, outcome: _Outcome, caller: Caller) -> None:
        """Logs the request and settles the quota where `_commit` did not already, and
        records metrics; never raises."""
        usage = outcome.usage
        model = outcome.model or "unknown"
        try:
            if outcome.cost == 0 and outcome.code != grpc.StatusCode.OK:
                outcome.cost, outcome.currency = await self._cost(outcome, caller)
        except Exception:  # accounting must not hide the request's own outcome
            _logger.exception("pricing request %s failed", outcome.request_id)
        await self._commit(outcome, caller)
        elapsed = self._clock() - outcome.started
        error_type = "" if outcome.code == grpc.StatusCode.OK else outcome.code.name
        self._metrics.operation_duration.labels("chat", model, error_type).observe(elapsed)
        self._metrics.requests.labels(caller.tenant_id, caller.method, outcome.code.name).inc()
        if outcome.schema_result:
            self._metrics.output_schema_checks.labels(
                model, "true" if outcome.constrained else "false", outcome.schema_result
            ).inc()
        if outcome.routed:
            self._metrics.token_usage.labels("chat", model, "input").observe(usage.input_tokens)
            self._metrics.token_usage.labels("chat", model, "output").observe(usage.output_tokens)
            self._metrics.cost.labels(caller.tenant_id, model).inc(float(outcome.cost))
        if outcome.first_token is not None:
            self._metrics.time_to_first_chunk.labels("chat", model).observe(
                outcome.first_token - outcome.started
            )
            chunks = max(len(outcome.output) - 1, 0)
            if chunks and outcome.last_chunk is not None:
                self._metrics.time_per_output_chunk.labels("chat", model).observe(
                    (outcome.last_chunk - outcome.first_token) / chunks
                )
        self._remember(outcome, caller)
        if self._online is not None and outcome.rendered is not None:
            self._submit_online(self._online, outcome, outcome.rendered, caller, elapsed)

    def _submit_online(
        self,
        online: OnlineEvaluator,
        outcome: _Outcome,
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

    def _log_record(self, outcome: _Outcome, caller: Caller, elapsed: float) -> RequestLogRecord:
        """The request's record, redacted by the log's content policy."""
        rendered = outcome.rendered
        content = self._log_content
        messages: list[dict[str, str]] = []
        output = ""
        if content != "metadata":
            messages = [
                {
                    "role": chat_pb2.ChatRole.Name(m.role).removeprefix("CHAT_ROLE_").lower(),
                    "content": _redact(m.content) if content == "redacted" else m.content,
                }
                for m in outcome.input_messages
            ]
            output = "".join(outcome.output)
            if content == "redacted":
                output = _redact(output)
        metadata = outcome.final or gateway_pb2.CompletionMetadata(
            request_id=outcome.request_id,
            trace_id=outcome.trace_id,
            prompt=rendered.prompt if rendered else "",
            prompt_version=rendered.version if rendered else 0,
            label=outcome.label,
            experiment=outcome.experiment,
            variant=outcome.variant,
            model=outcome.model,
            usage=outcome.usage,
            cost=money(outcome.cost, outcome.currency),
            total_duration=duration(elapsed),
            processing=gateway_pb2.ProcessingSummary(constrained_decoding=outcome.constrained),
        )
        usage = outcome.usage
        return RequestLogRecord(
            request_id=outcome.request_id,
            trace_id=outcome.trace_id,
            tenant_id=caller.tenant_id,
            method=caller.method.lstrip("/"),
            status=outcome.code.name,
            prompt=metadata.prompt,
            prompt_version=metadata.prompt_version,
            model=metadata.model,
            input=messages,
            output=output,
            metadata=json_format.MessageToDict(metadata),
            user_id=outcome.request.user_id,
            session_id=outcome.request.session_id,
            tags=dict(outcome.request.tags),
            create_time=outcome.arrived,
            cost_micros=_micros(outcome.cost),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            first_token_ms=None
            if outcome.first_token is None
            else (outcome.first_token - outcome.started) * 1e3,
            total_ms=elapsed * 1e3,
        )

    async def _call(self, awaitable: Any, what: str, service: str) -> Any:
        try:
            return await awaitable
        except grpc.aio.AioRpcError as error:
            raise remote_error(error, service=service, what=what) from None


# ------------------------------------------------------------------------------------------
# Request rules and conversions
# ------------------------------------------------------------------------------------------


def _claimable(request: Request) -> bool:
    """Whether the request is valid, so that it is worth claiming its id (an invalid one
    fails, and is logged, without touching the idempotency store)."""
    try:
        _validate(request)
    except InvalidArgument:
        return False
    return True


def replayed(outcome: bytes) -> list[Response]:
    """The stream that answers a retry from a stored outcome (a serialized `CompleteResponse`):
    `start`, one delta with the whole text, and the first request's `final`."""
    stored = gateway_service_pb2.CompleteResponse.FromString(outcome)
    final = stored.metadata
    return [
        Response(
            start=gateway_pb2.CompletionStart(
                request_id=final.request_id,
                trace_id=final.trace_id,
                prompt=final.prompt,
                prompt_version=final.prompt_version,
                experiment=final.experiment,
                variant=final.variant,
            )
        ),
        Response(delta=gateway_pb2.TextDelta(text=stored.text)),
        Response(final=final),
    ]


def _validate(request: Request) -> None:
    """Raises `InvalidArgument` naming every bad field of a completion request."""
    violations: list[FieldViolation] = []
    if not request.prompt:
        violations.append(FieldViolation("prompt", "is required"))
    selector = request.WhichOneof("selector")
    if selector == "label" and not request.label:
        violations.append(FieldViolation("label", "must not be empty when set"))
    if selector == "version" and request.version < 1:
        violations.append(FieldViolation("version", "must be a version number (>= 1)"))
    for name in ("user_id", "session_id"):
        if len(getattr(request, name)) > MAX_UNIT_ID_CHARS:
            violations.append(FieldViolation(name, f"at most {MAX_UNIT_ID_CHARS} characters"))
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        violations.append(
            FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
        )
    if len(request.tags) > MAX_TAGS:
        violations.append(FieldViolation("tags", f"at most {MAX_TAGS} tags"))
    for key, value in request.tags.items():
        if not key or len(key) > MAX_TAG_CHARS or len(value) > MAX_TAG_CHARS:
            violations.append(
                FieldViolation(
                    f"tags[{key[:32]}]",
                    f"keys 1 to {MAX_TAG_CHARS}, values at most {MAX_TAG_CHARS}",
                )
            )
    if len(request.messages) > MAX_EXTRA_MESSAGES:
        violations.append(FieldViolation("messages", f"at most {MAX_EXTRA_MESSAGES} messages"))
    for index, message in enumerate(request.messages):
        if message.role == chat_pb2.CHAT_ROLE_UNSPECIFIED:
            violations.append(FieldViolation(f"messages[{index}].role", "is required"))
    if selector == "experiment" and not (request.user_id or request.session_id):
        violations.append(
            FieldViolation("user_id", "an experiment needs the unit: set user_id or session_id")
        )
    if violations:
        raise InvalidArgument(violations=violations)


def _prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    """The registry's variable errors, with field paths relative to this request."""
    violations = [
        FieldViolation(
            v.field if v.field.startswith(prefix) else f"{prefix}.{v.field}", v.description
        )
        for v in error.violations
    ]
    return InvalidArgument(
        str(error), violations=violations, reason=error.reason, metadata=dict(error.metadata)
    )


def merge_parameters(
    version: generation_pb2.SamplingParameters | None,
    request: generation_pb2.SamplingParameters,
) -> generation_pb2.SamplingParameters:
    """The version's sampling parameters with the request's set fields on top (a non-empty
    `stop` list replaces the version's); neither argument is modified."""
    merged = generation_pb2.SamplingParameters()
    if version is not None:
        merged.CopyFrom(version)
    for descriptor, value in request.ListFields():
        if descriptor.name == "stop":
            del merged.stop[:]
            merged.stop.extend(value)
        else:
            setattr(merged, descriptor.name, value)
    return merged


def _routing_or_none(request: Request) -> routing_pb2.RoutingPreferences | None:
    return request.routing if request.HasField("routing") else None


def estimate_tokens(messages: Sequence[chat_pb2.ChatMessage]) -> int:
    """A cheap upper-leaning estimate for routing and quota reservations (about four
    characters per token, plus the chat template's few tokens per turn); the real count comes
    from the model's tokenizer and settles the quota."""
    return sum(len(m.content) // 3 + 6 for m in messages) + 4


def processing_config(
    rendered: RenderedPrompt, parameters: generation_pb2.SamplingParameters
) -> ProcessingConfig:
    """The version's response processing, with the effective stop sequences."""
    processing = rendered.processing
    schema = rendered.output_schema
    redaction = PiiRedaction()
    max_chars = 0
    if processing is not None:
        max_chars = processing.max_output_chars
        redaction = PiiRedaction(
            kinds=tuple(_PII_KINDS[k] for k in processing.pii_redaction.kinds if k in _PII_KINDS),
            patterns=tuple(
                RedactionPattern(p.name, p.regex, p.max_match_length)
                for p in processing.pii_redaction.patterns
            ),
        )
    return ProcessingConfig(
        stop=tuple(parameters.stop),
        max_output_chars=max_chars,
        pii_redaction=redaction,
        output_schema=None if schema is None else json_format.MessageToDict(schema),
    )


def _constrains(config: ProcessingConfig) -> bool:
    """Whether the output schema can go to InferenceService as an output constraint (it is
    within the contract's size limit)."""
    schema = config.output_schema
    if schema is None:
        return False
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    return size <= MAX_CONSTRAINT_SCHEMA_BYTES


def _repairs(rendered: RenderedPrompt) -> bool:
    processing = rendered.processing
    return processing is not None and processing.repair_invalid_json


def _redact(text: str) -> str:
    processor = ResponseProcessor(_LOG_REDACTION)
    return processor.feed(text) + processor.finish()


def _micros(amount: Decimal) -> int:
    return int((amount * 1_000_000).to_integral_value())


def _left(deadline: float | None, clock: Callable[[], float]) -> float | None:
    return None if deadline is None else max(deadline - clock(), 0.0)


def _request_attributes(
    span: trace.Span,
    rendered: RenderedPrompt,
    parameters: generation_pb2.SamplingParameters,
    model: str,
) -> None:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "genai-platform",
        "gen_ai.request.model": model,
        "gen_ai.prompt.name": rendered.prompt,
        "gen_ai.prompt.version": rendered.version,
    }
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        if parameters.HasField(name):
            attributes[f"gen_ai.request.{name}"] = getattr(parameters, name)
    if parameters.stop:
        attributes["gen_ai.request.stop_sequences"] = list(parameters.stop)
    span.set_attributes(attributes)


def _response_attributes(
    span: trace.Span, outcome: _Outcome, final: gateway_pb2.CompletionMetadata
) -> None:
    span.set_attributes(
        {
            "gen_ai.response.model": final.model,
            "gen_ai.response.id": final.request_id,
            "gen_ai.response.finish_reasons": [
                generation_pb2.FinishReason.Name(final.finish_reason)
                .removeprefix("FINISH_REASON_")
                .lower()
            ],
            "gen_ai.usage.input_tokens": final.usage.input_tokens,
            "gen_ai.usage.output_tokens": final.usage.output_tokens,
            "genai.backend.id": final.backend_id,
            "genai.cost": float(outcome.cost),
            "genai.attempts": len(final.attempts),
            "genai.constrained_decoding": final.processing.constrained_decoding,
        }
    )
