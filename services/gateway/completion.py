"""Composition of one completion: prompt -> route -> quota -> stream -> process -> account.

`CompletionEngine.stream` is the whole of `StreamComplete` (and, collected, of `Complete`). The
engine is the pipeline; two parts of their own, which it builds, do the rest: `Experiments`
(`services.gateway.experiments`: assignment, exposures, outcomes) and `Accounting`
(`services.gateway.accounting`: quota, cost, request log, metrics, online evaluation). What
they share, the `Caller` and the `Outcome` the pipeline fills in as it goes, is in
`services.gateway.outcome`.

1. validate the request; resolve the prompt version (label, number, or the variant that
   `Experiments` assigns the request's unit) through the tenant's `PromptClient` (a
   push-invalidated cache: no RPC on the hot path) and render it locally: a chat prompt into
   messages (sent as `chat` input, with the request's extra turns), a text prompt (a version
   with a `text_template`) into raw text (sent as `text` input; it takes no extra turns);
2. merge the version's sampling parameters and routing preferences with the request's (the
   request wins field by field: `services.router.preferences`), and ask the router for a
   ranked decision; unless a model is pinned, the candidates must have the input's capability
   (CAPABILITY_CHAT for a chat prompt, CAPABILITY_COMPLETION for a text prompt), so that a
   base model without a chat template never gets a chat prompt by routing. A chat prompt
   pinned to such a model fails with INVALID_ARGUMENT naming `routing.model`;
3. reserve the tenant's quota (`Accounting.reserve`: one request, input plus maximum output
   tokens, the first candidate's estimated cost), refusing with RESOURCE_EXHAUSTED before
   anything streams; a variant's exposure is recorded in the background;
4. send `start`, then stream from InferenceService through `RoutedGenerator` (failover before
   the first token, STREAM_INTERRUPTED after it), running every chunk through the version's
   `ResponseProcessor` (stop sequences, length limit, PII redaction; one `Generation` per
   generation); a stop sequence or the length limit cancels the backend's generation at once;
5. validate the output against the version's JSON schema, with one repair attempt when the
   version asks for it (such outputs are held back until they validate, since streamed text
   cannot be taken back). The schema also goes to InferenceService as the request's output
   constraint, for the candidates whose model decodes under one (`GuidedDecodingBook`), so
   that the output matches by construction; the check and the repair stay as the safety net
   (for outputs cut short, and for models that cannot be constrained);
6. store the request-log record (group-committed with other requests' records), settle the
   quota with the real usage (`Accounting.commit`), then send `final` with prompt version,
   model, backend, usage, cost at catalog prices, TTFT, total time, attempts and what
   processing did: a caller that saw `final` is logged and accounted, even if this process
   dies the next moment;
7. whatever else happened (an error, the client cancelling), log and settle the same way
   before the status goes out; in every case record the GenAI metrics and span attributes
   (`Accounting.account`). A shared quota store reads the tokens used so far in the
   background (`QuotaLimiter.track`; nothing is done per token) to settle the reservation
   should this process die mid-stream (at the logged usage when the record made it, else at
   the last count).

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

An inline request (`InlinePrompt`, `services.gateway.inline`: the OpenAI-compatible HTTP API
addressing a catalog model) has no registry version: step 1 takes the request's messages as the
whole conversation (or the inline text as raw text), with no version, experiment or label, and
the model must be pinned (`routing.model`); every later step is the same. A request may also
bring its own output schema (`output_schema`, for a version without one), which step 5 then
applies as it would the version's. Its retry fingerprint covers both, so that the same
`request_id` with another inline prompt or schema is REQUEST_ID_REUSED.

Feedback on a served request (`record_feedback`) goes to its experiment as an outcome
(`Experiments`) and, yes or no, to online evaluation (`Accounting`; a request served from a
registry version only).
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from genai.common.v1 import chat_pb2, generation_pb2, routing_pb2
from genai.experiment.v1 import experiment_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2
from genai.prompt.v1 import prompt_pb2
from genai.router.v1 import router_pb2, router_service_pb2
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from services.common import reasons
from services.common.deadlines import time_until
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from services.common.status import remote_error, status_code_of
from services.common.wire import decimal_amount, duration, money, usage_source_name
from services.gateway.accounting import Accounting, micros
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
    ResponseProcessor,
    repair_instruction,
)
from services.gateway.core.quota import Usage
from services.gateway.experiments import Experiments
from services.gateway.inline import (
    OUTPUT_SCHEMA_FIELD,
    InlinePrompt,
    inline_rendered,
    inline_violations,
    output_schema_violations,
    with_output_schema,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.outcome import (
    FEEDBACK_METHOD,
    STREAM_METHOD,
    UNARY_METHOD,
    Caller,
    Outcome,
    Request,
    Response,
    ServedRequest,
)
from services.gateway.tenancy import GuidedDecodingBook, TenantDirectory
from services.prompt.client import RenderedPrompt
from services.prompt.core.processing_config import (
    PiiKind,
    PiiRedaction,
    ProcessingConfig,
    RedactionPattern,
)
from services.router.failover import Attempt, RoutedGenerator, RoutedStream
from services.router.preferences import merge_parameters, merge_preferences

__all__ = [
    "FEEDBACK_METHOD",
    "IDEMPOTENCY_SCOPE",
    "MAX_CONSTRAINT_SCHEMA_BYTES",
    "MAX_EXTRA_MESSAGES",
    "MAX_INLINE_MESSAGES",
    "MAX_REQUEST_ID_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_UNIT_ID_CHARS",
    "STREAM_METHOD",
    "UNARY_METHOD",
    "Caller",
    "CompletionEngine",
    "Generation",
    "InlinePrompt",
    "Request",
    "Response",
    "ServedRequest",
    "estimate_text_tokens",
    "estimate_tokens",
    "processing_config",
    "replayed",
    "replayed_outcome",
    "tag_violations",
    "with_input_capability",
]

_logger = logging.getLogger(__name__)

MAX_UNIT_ID_CHARS: Final = 256
MAX_REQUEST_ID_CHARS: Final = 128
MAX_TAGS: Final = 16
MAX_TAG_CHARS: Final = 128
MAX_EXTRA_MESSAGES: Final = 64
"""The most turns a request adds to its version's."""
MAX_INLINE_MESSAGES: Final = 1024
"""The most turns of an inline prompt's conversation (the whole of it)."""
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


@dataclass(frozen=True, slots=True)
class _Plan:
    """What steps 1 to 3 decided: the rendered version, the effective sampling parameters, and
    the route with the router's decision."""

    rendered: RenderedPrompt
    parameters: generation_pb2.SamplingParameters
    route: router_service_pb2.RouteRequest
    decision: router_pb2.RouteDecision


class Generation:
    """One generation streamed through a fresh `ResponseProcessor` (see
    `CompletionEngine._generate`). Iterate `texts()` once; after it ends, `text` is the whole
    processed output, `finish` its finish reason, and `summary` says what processing did."""

    __slots__ = (
        "_checks_schema",
        "_clock",
        "_emit",
        "_messages",
        "_metrics",
        "_outcome",
        "_processor",
        "_record",
        "finish",
        "text",
    )

    def __init__(
        self,
        messages: AsyncGenerator[inference_service_pb2.GenerateStreamResponse],
        processor: ResponseProcessor,
        outcome: Outcome,
        record: RoutedStream,
        *,
        checks_schema: bool,
        emit: bool,
        metrics: GatewayMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._messages = messages
        self._processor = processor
        self._outcome = outcome
        self._record = record
        self._checks_schema = checks_schema
        self._emit = emit
        self._metrics = metrics
        self._clock = clock
        self.text = ""
        """The whole processed output (once `texts()` ended)."""
        self.finish: int = generation_pb2.FINISH_REASON_UNSPECIFIED
        """The finish reason: the backend's, or the processor's override (once `texts()`
        ended)."""

    async def texts(self) -> AsyncIterator[str]:
        """Streams the generation. With `emit`, yields each processed chunk for the caller and
        marks the outcome's first and last chunk times; without, yields nothing (the text is
        held back). Every chunk goes to `outcome.output` as it comes. Raises
        `OutputSchemaViolation` when the output fails the schema."""
        processor = self._processor
        outcome = self._outcome
        output = outcome.output
        start = len(output)
        emit = self._emit
        clock = self._clock
        finish: int = generation_pb2.FINISH_REASON_UNSPECIFIED
        messages = self._messages
        attempt: inference_pb2.GenerationStart | None = None  # the latest start, till a delta
        try:
            async with contextlib.aclosing(messages):
                async for message in messages:
                    kind = message.WhichOneof("event")
                    if kind == "delta":
                        if attempt is not None:  # the first delta: this attempt serves
                            outcome.serving = (attempt.model, attempt.backend_id)
                            attempt = None
                        text = processor.feed(message.delta.text)
                        if text:
                            output.append(text)
                            if emit:
                                outcome.sent(clock())
                                yield text
                        if processor.done:
                            break  # aclosing cancels the backend's generation
                    elif kind == "start":
                        attempt = message.start
                    elif kind == "final":
                        finish = message.final.finish_reason
        except grpc.aio.AioRpcError as error:
            raise _input_refused(
                remote_error(
                    error, service="genai.inference.v1.InferenceService", what="inference"
                ),
                outcome,
            ) from None
        finally:
            outcome.serving = None  # ended: `routed` records the attempt
            self._metrics.failovers.labels(outcome.model or "unknown").inc(
                max(len(self._record.attempts) - 1, 0)
            )
        rest = processor.finish()  # raises OutputSchemaViolation
        if rest:
            output.append(rest)
            if emit:
                outcome.sent(clock())
                yield rest
        override = processor.finish_reason
        if override is not None:
            finish = _FINISH[override]
        self.finish = finish
        self.text = "".join(output[start:])

    def summary(
        self, *, repaired: bool, constrained_decoding: bool
    ) -> gateway_pb2.ProcessingSummary:
        """What processing did (once `texts()` ended), with what the caller knows: whether
        this generation repaired an invalid output, and whether the request decoded under the
        output schema."""
        return gateway_pb2.ProcessingSummary(
            redaction_count=sum(self._processor.redactions.values()),
            truncated=self._processor.finish_reason is FinishOverride.LENGTH,
            # The backend honours stop sequences itself; the gateway's stage catches the rest.
            stop_sequence_matched=self.finish == generation_pb2.FINISH_REASON_STOP_SEQUENCE,
            schema_valid=self._checks_schema,
            repaired=repaired,
            constrained_decoding=constrained_decoding,
        )


class CompletionEngine:
    """Runs completions (see the module docstring): the pipeline, with its `Experiments` (built
    here) and its `Accounting` (shared with the gateway's embeddings). One per gateway."""

    def __init__(
        self,
        *,
        generator: RoutedGenerator,
        directory: TenantDirectory,
        accounting: Accounting,
        metrics: GatewayMetrics,
        default_max_output_tokens: int,
        experiments: Any = None,
        idempotency: Idempotency | None = None,
        guided_decoding: GuidedDecodingBook | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._generator = generator
        self._guided = guided_decoding
        """Which models decode under an output schema (None: the gateway never asks)."""
        self._directory = directory
        self._metrics = metrics
        self._default_max_output_tokens = default_max_output_tokens
        self._idempotency = idempotency
        """Claims and outcomes of requests with a `request_id` (None: every request runs)."""
        self._experiments = Experiments(experiments, clock=clock)
        """Assignment, exposures and outcomes (`experiments`: the ExperimentService stub, or
        None when this gateway reaches none)."""
        self._accounting = accounting
        self._clock = clock
        self._tracer = trace.get_tracer("genai.gateway", tracer_provider=tracer_provider)

    async def stream(
        self,
        request: Request,
        caller: Caller,
        *,
        time_left: float | None,
        inline: InlinePrompt | None = None,
        output_schema: Mapping[str, Any] | None = None,
        observe: Callable[[Outcome], None] | None = None,
    ) -> AsyncGenerator[Response]:
        """Yields `start`, the processed deltas and `final`; raises `DomainError`s (the error
        interceptor turns them into statuses) after which nothing more is sent. Counted in
        `genai_gateway_in_flight` from the call to its end.

        `inline`: the request has no registry version (see the module docstring).
        `output_schema`: a JSON Schema the output must meet, for a version without its own
        (INVALID_ARGUMENT on `output_schema` otherwise). `observe` is called once with the
        request's `Outcome` as soon as it exists (before validation), so that a transport can
        read what serves it as the stream goes: from the first delta, `outcome.model` and
        `outcome.backend_id` name the model and backend (`Outcome.serving`). A replayed
        request's outcome is rebuilt from its stored `final` (`replayed_outcome`)."""
        in_flight = self._metrics.in_flight.labels(caller.method)
        in_flight.inc()
        try:
            started = self._clock()
            claim: Claim | None = None
            if (
                request.request_id
                and self._idempotency is not None
                and _claimable(request, inline, output_schema)
            ):
                begun = await self._begin(self._idempotency, request, caller, inline, output_schema)
                if isinstance(begun, Replay):
                    self._metrics.idempotent_replays.labels(caller.tenant_id, caller.method).inc()
                    messages = replayed(begun.outcome)
                    if observe is not None:
                        observe(replayed_outcome(request, messages[-1].final, started))
                    for message in messages:
                        yield message
                    return
                claim = begun
            span_context = trace.get_current_span().get_span_context()
            outcome = Outcome(
                started=started,
                request_id=request.request_id or uuid.uuid4().hex,
                trace_id=f"{span_context.trace_id:032x}" if span_context.is_valid else "",
                request=request,
                arrived=datetime.now(UTC),
                claim=claim,
            )
            deadline = None if time_left is None else started + time_left
            try:
                if observe is not None:
                    observe(outcome)
                plan = await self._plan(request, caller, outcome, deadline, inline, output_schema)
                rendered, parameters = plan.rendered, plan.parameters
                if outcome.variant:
                    self._experiments.record_exposure(outcome, caller)
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
                inference_request = inference_service_pb2.GenerateStreamRequest(
                    parameters=parameters, request_id=outcome.request_id
                )
                if outcome.input_text is not None:
                    inference_request.text = outcome.input_text
                else:
                    inference_request.chat.messages.extend(outcome.input_messages)
                if self._guided is not None and _constrains(config):
                    assert rendered.output_schema is not None  # _constrains: there is a schema
                    inference_request.constraint.json_schema.CopyFrom(rendered.output_schema)
                model = plan.decision.candidates[0].model
                with self._tracer.start_as_current_span(
                    f"{outcome.operation} {model}", kind=trace.SpanKind.CLIENT
                ) as span:
                    _request_attributes(span, rendered, parameters, model, outcome.operation)
                    repaired = False
                    generation = self._generate(
                        inference_request,
                        plan.route,
                        plan.decision,
                        config,
                        outcome,
                        caller,
                        deadline,
                        emit=not hold,
                    )
                    try:
                        async for text in generation.texts():
                            # Built in place: one message per chunk, no TextDelta to copy in.
                            delta = Response()
                            delta.delta.text = text
                            yield delta
                    except OutputSchemaViolation as violation:
                        if not _repairs(rendered) or config.output_schema is None:
                            raise
                        repaired = True
                        repair = _repair_request(
                            inference_request,
                            "".join(outcome.output),
                            violation,
                            config.output_schema,
                        )
                        outcome.output.clear()
                        generation = self._generate(
                            repair, plan.route, None, config, outcome, caller, deadline, emit=False
                        )
                        async for _held in generation.texts():  # emit=False: nothing comes out
                            raise RuntimeError("a held-back generation emitted text") from None
                    if config.output_schema is not None:
                        outcome.schema_result = "repaired" if repaired else "valid"
                    summary = generation.summary(
                        repaired=repaired, constrained_decoding=outcome.constrained
                    )
                    if hold:
                        outcome.first_token = outcome.first_token or self._clock()
                        yield Response(delta=gateway_pb2.TextDelta(text=generation.text))
                    outcome.cost, outcome.currency = await self._accounting.cost(outcome, caller)
                    final = self._final(
                        outcome, rendered, generation.finish, summary, generation.text
                    )
                    _response_attributes(span, outcome, final)
                outcome.final = final
                await self._accounting.commit(outcome, caller)
                if outcome.claim is not None:
                    await self._store_outcome(outcome, outcome.claim, generation.text, final)
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
            except Exception:
                outcome.code = grpc.StatusCode.INTERNAL  # a bug: logged as what the caller gets
                raise
            finally:
                await asyncio.shield(self._end(outcome, caller))
        finally:
            in_flight.dec()

    # ------------------------------------------------------------------------------ steps 1-3

    async def _plan(
        self,
        request: Request,
        caller: Caller,
        outcome: Outcome,
        deadline: float | None,
        inline: InlinePrompt | None,
        output_schema: Mapping[str, Any] | None,
    ) -> _Plan:
        """Validates the request, resolves and renders its prompt version (or takes the inline
        prompt), merges parameters and preferences, routes, and reserves the quota (steps 1 to
        3 of the module docstring), noting in `outcome` what it learns."""
        _validate(request, inline, output_schema)
        assigned: experiment_pb2.Assignment | None = None
        if inline is not None:
            rendered = inline_rendered(inline)
        else:
            rendered, assigned = await self._render(request, caller, outcome, deadline)
        if output_schema is not None:
            if rendered.output_schema is not None:
                raise InvalidArgument(
                    violations=[
                        FieldViolation(
                            OUTPUT_SCHEMA_FIELD,
                            f"prompt {rendered.prompt!r} version {rendered.version} has an "
                            "output schema of its own: leave the request's unset",
                        )
                    ]
                )
            rendered = with_output_schema(rendered, output_schema)
        outcome.rendered = rendered
        if rendered.text is not None:
            if request.messages:
                raise InvalidArgument(
                    violations=[
                        FieldViolation(
                            "messages",
                            f"prompt {rendered.prompt!r} version {rendered.version} is a text "
                            "prompt (text_template), which takes no extra conversation turns",
                        )
                    ]
                )
            outcome.input_text = rendered.text
        else:
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
        if outcome.input_text is not None:
            input_estimate = estimate_text_tokens(outcome.input_text)
        else:
            input_estimate = estimate_tokens(outcome.input_messages)
        route = router_service_pb2.RouteRequest(
            preferences=with_input_capability(
                merge_preferences(rendered.routing, routing), text=outcome.input_text is not None
            ),
            input_tokens=input_estimate,
            max_output_tokens=max_output,
            prompt=request.prompt,
            unit_id=request.user_id or request.session_id,
        )
        try:
            decision = await self._generator.route(
                route, time_left=time_until(deadline, self._clock), metadata=caller.metadata
            )
        except grpc.aio.AioRpcError as error:
            raise remote_error(
                error, service="genai.router.v1.RouterService", what="the router"
            ) from None
        first = decision.candidates[0]
        outcome.currency = first.estimated_cost.currency_code
        limits = await self._directory.quota(caller.tenant_id)
        await self._accounting.reserve(
            outcome,
            caller,
            limits,
            Usage(
                requests=1,
                tokens=input_estimate + max_output,
                cost_micros=micros(decimal_amount(first.estimated_cost)),
            ),
        )
        return _Plan(rendered, parameters, route, decision)

    async def _render(
        self, request: Request, caller: Caller, outcome: Outcome, deadline: float | None
    ) -> tuple[RenderedPrompt, experiment_pb2.Assignment | None]:
        """Resolves the request's version (label, number, or the variant its experiment
        assigns) and renders it; returns it with the experiment's assignment, if any."""
        client = await self._directory.prompts(caller.tenant_id)
        selector = request.WhichOneof("selector")
        outcome.label = request.label if selector == "label" else ""
        version = request.version if selector == "version" else None
        assigned: experiment_pb2.Assignment | None = None
        if selector == "experiment":
            assigned, unit_id = await self._experiments.assign(request, caller, deadline)
            outcome.experiment, outcome.variant = request.experiment, assigned.variant
            outcome.unit_id = unit_id
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
        return rendered, assigned

    # ------------------------------------------------------------------------------ steps 4-5

    def _generate(
        self,
        request: inference_service_pb2.GenerateStreamRequest,
        route: router_service_pb2.RouteRequest,
        decision: router_pb2.RouteDecision | None,
        config: ProcessingConfig,
        outcome: Outcome,
        caller: Caller,
        deadline: float | None,
        *,
        emit: bool,
    ) -> Generation:
        """One generation of `request` through a fresh processor, recorded in
        `outcome.routed`; `decision` is the router's (None: route again). With `emit`, its
        `texts()` yields each processed chunk for the caller."""
        processor = ResponseProcessor(config)
        record = RoutedStream()
        outcome.routed.append(record)
        messages = self._generator.stream(
            request,
            route,
            record,
            time_left=time_until(deadline, self._clock),
            decision=decision,
            metadata=caller.metadata,
            constrains=self._constrainable(caller) if request.HasField("constraint") else None,
        )
        return Generation(
            messages,
            processor,
            outcome,
            record,
            checks_schema=config.output_schema is not None,
            emit=emit,
            metrics=self._metrics,
            clock=self._clock,
        )

    def _constrainable(self, caller: Caller) -> Callable[[str], Awaitable[bool]]:
        """Whether a candidate model decodes under the output schema."""
        guided = self._guided
        assert guided is not None  # only requests with a constraint ask

        async def constrains(model: str) -> bool:
            return await guided.supports(model, caller.metadata)

        return constrains

    # ------------------------------------------------------------------------------ step 6

    def _final(
        self,
        outcome: Outcome,
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
            attempts=outcome.attempts(),
            processing=summary,
        )
        if outcome.first_token is not None:
            final.first_token_duration.CopyFrom(duration(outcome.first_token - outcome.started))
        if summary.schema_valid:
            final.output_json.CopyFrom(json_format.Parse(text, struct_pb2.Value()))
        return final

    # ------------------------------------------------------------------------------ idempotency

    async def _begin(
        self,
        idempotency: Idempotency,
        request: Request,
        caller: Caller,
        inline: InlinePrompt | None,
        output_schema: Mapping[str, Any] | None,
    ) -> Claim | Replay:
        """Claims the request's id (see the module docstring). The fingerprint covers the
        request without its id, then the inline prompt and the output schema, if any (a
        request with neither has the fingerprint it always had)."""
        without_id = Request()
        without_id.CopyFrom(request)
        without_id.ClearField("request_id")
        serialized = without_id.SerializeToString(deterministic=True)
        if inline is not None or output_schema is not None:
            extra = {
                "inline": None if inline is None else {"text": inline.text},
                "schema": None if output_schema is None else dict(output_schema),
            }
            serialized += json.dumps(extra, sort_keys=True, separators=(",", ":")).encode()
        try:
            return await idempotency.begin(
                caller.tenant_id,
                IDEMPOTENCY_SCOPE,
                request.request_id,
                fingerprint(serialized),
            )
        except RequestInProgress:
            self._metrics.idempotent_in_progress.labels(caller.tenant_id, caller.method).inc()
            raise

    async def _store_outcome(
        self, outcome: Outcome, claim: Claim, text: str, final: gateway_pb2.CompletionMetadata
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

    async def _end(self, outcome: Outcome, caller: Caller) -> None:
        """Accounts the request, then releases its claim if its outcome was not stored (it
        failed, or was cancelled), so that a retry runs again."""
        await self._accounting.account(outcome, caller)
        if outcome.claim is not None and self._idempotency is not None:
            await self._idempotency.release(outcome.claim)
            outcome.claim = None

    # ------------------------------------------------------------------------------ feedback

    def served(self, tenant_id: str, request_id: str) -> ServedRequest | None:
        """A recent request of this gateway (None when it is not remembered)."""
        return self._accounting.served(tenant_id, request_id)

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
        online = self._accounting.scores_online
        if isinstance(value, bool) and served.prompt:  # inline requests are not scored
            self._accounting.submit_feedback(caller, request_id, served, value)
        if not served.experiment or not served.variant:
            if isinstance(value, bool) and online and served.prompt:
                return
            if not served.prompt:
                why = ", and served no registry prompt, so online evaluation has none to score"
            elif online:
                why = ", and only yes/no feedback is scored online"
            else:
                why = ""
            raise FailedPrecondition(
                f"request {request_id!r} took part in no experiment variant{why}",
                reason=reasons.FAILED_PRECONDITION,
                metadata={"request_id": request_id},
            )
        await self._experiments.record_outcome(caller, request_id, metric, value, served)

    async def unit_of(self, caller: Caller, experiment: str, user_id: str, session_id: str) -> str:
        """The unit id a request of `experiment` was assigned by (its user or its session)."""
        return await self._experiments.unit_of(caller, experiment, user_id, session_id)

    async def drain(self) -> None:
        """Waits for background exposure records (at shutdown)."""
        await self._experiments.drain()


# ------------------------------------------------------------------------------------------
# Request rules and conversions
# ------------------------------------------------------------------------------------------


def _claimable(
    request: Request, inline: InlinePrompt | None, output_schema: Mapping[str, Any] | None
) -> bool:
    """Whether the request is valid, so that it is worth claiming its id (an invalid one
    fails, and is logged, without touching the idempotency store)."""
    try:
        _validate(request, inline, output_schema)
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


def replayed_outcome(
    request: Request, final: gateway_pb2.CompletionMetadata, started: float
) -> Outcome:
    """The outcome of a replayed request, as its stored `final` tells it (for `observe`):
    its ids, label, experiment and variant, and one routed generation with the attempts it
    made, the last of which served (`rendered` is None: the `start` message names the prompt
    version)."""
    outcome = Outcome(
        started=started,
        request_id=final.request_id,
        trace_id=final.trace_id,
        request=request,
        arrived=datetime.now(UTC),
        label=final.label,
        experiment=final.experiment,
        variant=final.variant,
        final=final,
    )
    routed = RoutedStream()
    routed.usage.CopyFrom(final.usage)
    routed.attempts.extend(
        Attempt(
            attempt.model,
            attempt.backend_id,
            router_service_pb2.ATTEMPT_RESULT_SUCCESS
            if attempt.status == "OK"
            else router_service_pb2.ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN,
            attempt.error,
        )
        for attempt in final.attempts
    )
    if not routed.attempts:  # stored before attempts were listed: the serving one
        routed.attempts.append(
            Attempt(final.model, final.backend_id, router_service_pb2.ATTEMPT_RESULT_SUCCESS)
        )
    outcome.routed.append(routed)
    return outcome


def _validate(
    request: Request,
    inline: InlinePrompt | None = None,
    output_schema: Mapping[str, Any] | None = None,
) -> None:
    """Raises `InvalidArgument` naming every bad field of a completion request (with its
    inline prompt and output schema, if any)."""
    violations: list[FieldViolation] = []
    selector = request.WhichOneof("selector")
    if inline is None:
        if not request.prompt:
            violations.append(FieldViolation("prompt", "is required"))
    else:
        violations.extend(inline_violations(request, inline))
    if output_schema is not None:
        violations.extend(output_schema_violations(output_schema))
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
    violations.extend(tag_violations(request.tags))
    most = MAX_EXTRA_MESSAGES if inline is None else MAX_INLINE_MESSAGES
    if len(request.messages) > most:
        violations.append(FieldViolation("messages", f"at most {most} messages"))
    for index, message in enumerate(request.messages):
        if message.role == chat_pb2.CHAT_ROLE_UNSPECIFIED:
            violations.append(FieldViolation(f"messages[{index}].role", "is required"))
    if selector == "experiment" and not (request.user_id or request.session_id):
        violations.append(
            FieldViolation("user_id", "an experiment needs the unit: set user_id or session_id")
        )
    if violations:
        raise InvalidArgument(violations=violations)


def tag_violations(tags: Mapping[str, str]) -> list[FieldViolation]:
    """What is wrong with a request's `tags` (at most `MAX_TAGS`, keys 1 to `MAX_TAG_CHARS`
    characters, values at most that)."""
    violations: list[FieldViolation] = []
    if len(tags) > MAX_TAGS:
        violations.append(FieldViolation("tags", f"at most {MAX_TAGS} tags"))
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_CHARS or len(value) > MAX_TAG_CHARS:
            violations.append(
                FieldViolation(
                    f"tags[{key[:32]}]",
                    f"keys 1 to {MAX_TAG_CHARS}, values at most {MAX_TAG_CHARS}",
                )
            )
    return violations


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


def _routing_or_none(request: Request) -> routing_pb2.RoutingPreferences | None:
    return request.routing if request.HasField("routing") else None


def with_input_capability(
    preferences: routing_pb2.RoutingPreferences, *, text: bool
) -> routing_pb2.RoutingPreferences:
    """`preferences` (modified in place) requiring the capability of the prompt's input of
    every candidate: CAPABILITY_COMPLETION for a text prompt, CAPABILITY_CHAT for a chat
    prompt. A pinned model is left to InferenceService, which refuses an input the model
    cannot take as INVALID_ARGUMENT (see `_input_refused`)."""
    if preferences.model:
        return preferences
    needed = routing_pb2.CAPABILITY_COMPLETION if text else routing_pb2.CAPABILITY_CHAT
    if needed not in preferences.required_capabilities:
        preferences.required_capabilities.append(needed)
    return preferences


def _input_refused(error: DomainError, outcome: Outcome) -> DomainError:
    """InferenceService's refusal of the request's input as a violation of this request's
    pinned model (`routing.model`): chat input to a model that takes text only
    (INVALID_ARGUMENT on `chat`: the model has no chat template), or any input to an embedding
    model (FAILED_PRECONDITION with the model's task); any other error as it is."""
    rendered = outcome.rendered
    inline = rendered is not None and not rendered.prompt
    if isinstance(error, FailedPrecondition) and error.metadata.get("task") == "embedding":
        model = error.metadata.get("model") or outcome.model or "the pinned model"
        return InvalidArgument(
            violations=[
                FieldViolation(
                    "routing.model",
                    f"model {model!r} is an embedding model: it embeds texts, it does not "
                    "generate; pin a model that generates"
                    + (", or embed with /v1/embeddings" if inline else ""),
                )
            ],
            metadata={**error.metadata, "model": model},
        )
    if not isinstance(error, InvalidArgument) or not any(
        v.field == "chat" for v in error.violations
    ):
        return error
    model = error.metadata.get("model") or outcome.model or "the pinned model"
    if inline:
        why = (
            f"model {model!r} takes text input only (it has no chat template): use "
            "/v1/completions, or pin a model that takes chat"
        )
    else:
        prompt = (
            f"prompt {rendered.prompt!r} version {rendered.version}" if rendered else "the prompt"
        )
        why = (
            f"model {model!r} takes text input only (it has no chat template), and {prompt} "
            "is a chat prompt: pin a model that takes chat, leave the choice to routing, or "
            "serve a text prompt (a version with a text_template)"
        )
    return InvalidArgument(
        violations=[FieldViolation("routing.model", why)],
        metadata={**error.metadata, "model": model},
    )


def estimate_text_tokens(text: str) -> int:
    """`estimate_tokens` for the raw text of a text prompt (no chat template around it)."""
    return len(text) // 3 + 4


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


def _repair_request(
    request: inference_service_pb2.GenerateStreamRequest,
    output: str,
    violation: OutputSchemaViolation,
    schema: Mapping[str, Any],
) -> inference_service_pb2.GenerateStreamRequest:
    """`request` again, with the invalid `output` and the instruction to repair it."""
    repair = inference_service_pb2.GenerateStreamRequest()
    repair.CopyFrom(request)
    repair.chat.messages.extend(
        [
            chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_ASSISTANT, content=output),
            chat_pb2.ChatMessage(
                role=chat_pb2.CHAT_ROLE_USER,
                content=repair_instruction(violation.violation, schema),
            ),
        ]
    )
    return repair


def _constrains(config: ProcessingConfig) -> bool:
    """Whether the output schema can go to InferenceService as an output constraint (it is
    within the contract's size limit)."""
    schema = config.output_schema
    if schema is None:
        return False
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    return size <= MAX_CONSTRAINT_SCHEMA_BYTES


def _repairs(rendered: RenderedPrompt) -> bool:
    # A repair is a chat turn: text prompts cannot ask for one (the registry refuses it).
    processing = rendered.processing
    return processing is not None and processing.repair_invalid_json and rendered.text is None


def _request_attributes(
    span: trace.Span,
    rendered: RenderedPrompt,
    parameters: generation_pb2.SamplingParameters,
    model: str,
    operation: str,
) -> None:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "genai-platform",
        "gen_ai.request.model": model,
    }
    if rendered.prompt:  # an inline prompt has neither
        attributes["gen_ai.prompt.name"] = rendered.prompt
        attributes["gen_ai.prompt.version"] = rendered.version
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        if parameters.HasField(name):
            attributes[f"gen_ai.request.{name}"] = getattr(parameters, name)
    if parameters.stop:
        attributes["gen_ai.request.stop_sequences"] = list(parameters.stop)
    span.set_attributes(attributes)


def _response_attributes(
    span: trace.Span, outcome: Outcome, final: gateway_pb2.CompletionMetadata
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
            "genai.usage.source": usage_source_name(final.usage),
            "genai.backend.id": final.backend_id,
            "genai.cost": float(outcome.cost),
            "genai.attempts": len(final.attempts),
            "genai.constrained_decoding": final.processing.constrained_decoding,
        }
    )
