"""Embeddings through the gateway: the catalog's embedding models (all-MiniLM-L6-v2 on Triton),
priced, under the tenant's quota, logged and measured like completions.

`EmbeddingEngine.embed`:

1. validate the request: a model, 1 to `MAX_EMBEDDING_INPUTS` non-empty texts, the unit id and
   tags of completions, and, when the caller asks for a number of dimensions, the model's own
   where it is known already (from an earlier response: models are not shortened);
2. price the model at the catalog's prices (RouterService `GetModel` through the `PriceBook`:
   NOT_FOUND, MODEL_NOT_FOUND, for a model the catalog lacks);
3. reserve the tenant's quota: one request, the texts' estimated tokens, and what they would
   cost (RESOURCE_EXHAUSTED before anything is sent);
4. call InferenceService `Embed` with the time the caller has left and its metadata; its errors
   become the matching domain errors (a catalog model that is not an embedding model is
   INVALID_ARGUMENT on `model`);
5. log the request (method `openai/v1/embeddings` for the HTTP API; the texts under the log's
   content policy, only their count under `metadata`; no output; model, dimensions, usage and
   cost as metadata), then settle the quota at the tokens the model read, before the result
   goes out. Whatever else happened (an error, the caller cancelling), it is logged and settled
   the same way before the error does.

Every request is counted in `genai_gateway_in_flight` while it runs, and in the GenAI metrics
(operation `embeddings`) at its end, inside a span `embeddings {model}`.
"""

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import grpc
from genai.common.v1 import generation_pb2
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from google.protobuf import json_format
from opentelemetry import trace

from services.common.deadlines import time_until
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from services.common.status import remote_error, status_code_of
from services.common.wire import duration, money, usage_source_name
from services.gateway.accounting import Accounting, micros, redact_for_log
from services.gateway.completion import MAX_UNIT_ID_CHARS, estimate_text_tokens, tag_violations
from services.gateway.core.quota import Reservation, Usage
from services.gateway.core.request_log import RequestLogRecord
from services.gateway.metrics import GatewayMetrics
from services.gateway.outcome import Caller
from services.gateway.tenancy import PriceBook, TenantDirectory

if TYPE_CHECKING:
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "OPERATION",
    "EmbeddingEngine",
    "EmbeddingRequest",
    "EmbeddingResult",
]

MAX_EMBEDDING_INPUTS: Final = 256
"""The most texts one request embeds (the contract's limit on `EmbedRequest.inputs`)."""
OPERATION: Final = "embeddings"
"""The GenAI operation name (`gen_ai.operation.name`) of embeddings."""
_SERVICE: Final = "genai.inference.v1.InferenceService"


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts to embed with one catalog model."""

    model: str
    """Catalog name of an embedding model (required)."""
    inputs: Sequence[str]
    """The texts, 1 to `MAX_EMBEDDING_INPUTS`, none empty."""
    dimensions: int | None = None
    """The number of dimensions the caller requires; None: the model's own. A model is never
    shortened, so any other number is INVALID_ARGUMENT on `dimensions`."""
    user_id: str = ""
    """The caller's user, for the request log (at most `MAX_UNIT_ID_CHARS`)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """The caller's tags, for the request log (the rules of completion tags)."""


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """What an embedding request produced, and what it cost."""

    request_id: str
    """The id the gateway gave the request (its request-log entry)."""
    trace_id: str
    """W3C trace id, hex (empty without tracing)."""
    model: str
    """Catalog name of the model that embedded."""
    vectors: tuple[tuple[float, ...], ...]
    """One L2-normalised embedding per input, in input order."""
    dimensions: int
    """Components of each embedding."""
    input_tokens: int
    """Tokens the model read (the model's own count)."""
    cost: Decimal
    """Cost at catalog prices, in `currency`."""
    currency: str


@dataclass
class _Progress:
    """What one request did so far, filled in as it goes; logged and measured at the end."""

    request_id: str
    trace_id: str
    started: float
    arrived: datetime
    code: grpc.StatusCode = grpc.StatusCode.OK
    called: bool = False
    """InferenceService was asked (the request reached the model)."""
    reservation: Reservation | None = None
    usage: generation_pb2.TokenUsage = field(default_factory=generation_pb2.TokenUsage)
    dimensions: int = 0
    cost: Decimal = Decimal(0)
    currency: str = ""


class EmbeddingEngine:
    """Runs embedding requests (see the module docstring). One per gateway; its
    `Accounting` is the completions' (same quota, request log and metrics)."""

    def __init__(
        self,
        *,
        inference: InferenceStub,
        prices: PriceBook,
        directory: TenantDirectory,
        accounting: Accounting,
        metrics: GatewayMetrics,
        tracer_provider: trace.TracerProvider | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._inference = inference
        self._prices = prices
        self._directory = directory
        self._accounting = accounting
        self._metrics = metrics
        self._clock = clock
        self._tracer = trace.get_tracer("genai.gateway", tracer_provider=tracer_provider)
        self._dimensions: dict[str, int] = {}
        """model -> the number of dimensions of its embeddings (from its responses)."""

    async def embed(
        self, request: EmbeddingRequest, caller: Caller, *, time_left: float | None
    ) -> EmbeddingResult:
        """Embeds `request.inputs` (see the module docstring); raises `DomainError`s, after
        the request was logged and its quota settled."""
        in_flight = self._metrics.in_flight.labels(caller.method)
        in_flight.inc()
        try:
            started = self._clock()
            deadline = None if time_left is None else started + time_left
            with self._tracer.start_as_current_span(
                f"{OPERATION} {request.model}", kind=trace.SpanKind.CLIENT
            ) as span:
                span_context = span.get_span_context()
                progress = _Progress(
                    request_id=uuid.uuid4().hex,
                    trace_id=f"{span_context.trace_id:032x}" if span_context.is_valid else "",
                    started=started,
                    arrived=datetime.now(UTC),
                )
                span.set_attributes(
                    {
                        "gen_ai.operation.name": OPERATION,
                        "gen_ai.provider.name": "genai-platform",
                        "gen_ai.request.model": request.model,
                        "genai.embeddings.inputs": len(request.inputs),
                    }
                )
                try:
                    result = await self._run(request, caller, progress, deadline)
                    span.set_attributes(
                        {
                            "gen_ai.response.model": result.model,
                            "gen_ai.response.id": result.request_id,
                            "gen_ai.usage.input_tokens": result.input_tokens,
                            "gen_ai.embeddings.dimension.count": result.dimensions,
                            "genai.cost": float(result.cost),
                        }
                    )
                    return result
                except DomainError as error:
                    progress.code = status_code_of(error) or grpc.StatusCode.INTERNAL
                    raise
                except asyncio.CancelledError:
                    progress.code = grpc.StatusCode.CANCELLED
                    raise
                except Exception:
                    progress.code = grpc.StatusCode.INTERNAL
                    raise
                finally:
                    await asyncio.shield(self._end(request, caller, progress))
        finally:
            in_flight.dec()

    async def _run(
        self,
        request: EmbeddingRequest,
        caller: Caller,
        progress: _Progress,
        deadline: float | None,
    ) -> EmbeddingResult:
        """Steps 1 to 4 of the module docstring."""
        model = request.model
        violations = _violations(request)
        known = self._dimensions.get(model)
        if request.dimensions is not None and known is not None and request.dimensions != known:
            violations.append(_dimensions_violation(model, known, request.dimensions))
        if violations:
            raise InvalidArgument(violations=violations)
        price = await self._prices.price(model, caller.metadata)
        progress.currency = price.currency
        estimate = sum(estimate_text_tokens(text) for text in request.inputs)
        limits = await self._directory.quota(caller.tenant_id)
        progress.reservation = await self._accounting.reserve_usage(
            caller,
            limits,
            Usage(requests=1, tokens=estimate, cost_micros=micros(price.cost(estimate, 0))),
            request_id=progress.request_id,
        )
        progress.called = True
        try:
            response = await self._inference.Embed(
                inference_service_pb2.EmbedRequest(model=model, inputs=list(request.inputs)),
                timeout=time_until(deadline, self._clock),
                metadata=caller.metadata or None,
            )
        except grpc.aio.AioRpcError as error:
            raise _refused(remote_error(error, service=_SERVICE, what="inference"), model) from None
        progress.usage.CopyFrom(response.usage)
        progress.dimensions = response.dimensions
        progress.cost = price.cost(response.usage.input_tokens, 0)
        self._dimensions[model] = response.dimensions
        if request.dimensions is not None and request.dimensions != response.dimensions:
            raise InvalidArgument(
                violations=[_dimensions_violation(model, response.dimensions, request.dimensions)]
            )
        return EmbeddingResult(
            request_id=progress.request_id,
            trace_id=progress.trace_id,
            model=response.model or model,
            vectors=tuple(tuple(embedding.values) for embedding in response.embeddings),
            dimensions=response.dimensions,
            input_tokens=response.usage.input_tokens,
            cost=progress.cost,
            currency=progress.currency,
        )

    async def _end(self, request: EmbeddingRequest, caller: Caller, progress: _Progress) -> None:
        """Step 5 of the module docstring, and the metrics; never raises but for
        cancellation."""
        elapsed = self._clock() - progress.started
        await self._accounting.log(self._log_record(request, caller, progress, elapsed))
        tokens = progress.usage.input_tokens
        if progress.reservation is not None:
            await self._accounting.settle_usage(
                caller,
                progress.reservation,
                Usage(requests=1, tokens=tokens, cost_micros=micros(progress.cost)),
                request_id=progress.request_id,
            )
        model = request.model if progress.called else "unknown"
        error_type = "" if progress.code == grpc.StatusCode.OK else progress.code.name
        metrics = self._metrics
        metrics.operation_duration.labels(OPERATION, model, error_type).observe(elapsed)
        metrics.requests.labels(caller.tenant_id, caller.method, progress.code.name).inc()
        if tokens:
            metrics.token_usage.labels(OPERATION, model, "input").observe(tokens)
            source = usage_source_name(progress.usage)
            metrics.usage_tokens.labels(model, "input", source).inc(tokens)
            metrics.cost.labels(caller.tenant_id, model).inc(float(progress.cost))

    def _log_record(
        self, request: EmbeddingRequest, caller: Caller, progress: _Progress, elapsed: float
    ) -> RequestLogRecord:
        """The request's record, its texts under the log's content policy."""
        content = self._accounting.log_content
        texts: dict[str, Any]
        if content == "metadata":
            texts = {"count": len(request.inputs)}
        elif content == "redacted":
            texts = {"texts": [redact_for_log(text) for text in request.inputs]}
        else:
            texts = {"texts": list(request.inputs)}
        model = request.model if progress.called else ""
        metadata: dict[str, Any] = {
            "requestId": progress.request_id,
            "model": model,
            "dimensions": progress.dimensions,
            "inputs": len(request.inputs),
            "usage": json_format.MessageToDict(progress.usage),
            "cost": json_format.MessageToDict(money(progress.cost, progress.currency)),
            "totalDuration": json_format.MessageToDict(duration(elapsed)),
        }
        if progress.trace_id:
            metadata["traceId"] = progress.trace_id
        return RequestLogRecord(
            request_id=progress.request_id,
            trace_id=progress.trace_id,
            tenant_id=caller.tenant_id,
            method=caller.method.lstrip("/"),
            status=progress.code.name,
            model=model,
            input=texts,
            output="",
            metadata=metadata,
            user_id=request.user_id,
            tags=dict(request.tags),
            create_time=progress.arrived,
            cost_micros=micros(progress.cost),
            input_tokens=progress.usage.input_tokens,
            total_ms=elapsed * 1e3,
        )


def _violations(request: EmbeddingRequest) -> list[FieldViolation]:
    """What is wrong with the request itself (step 1 of the module docstring)."""
    violations: list[FieldViolation] = []
    if not request.model:
        violations.append(FieldViolation("model", "is required"))
    if not request.inputs:
        violations.append(FieldViolation("inputs", "at least one text is required"))
    elif len(request.inputs) > MAX_EMBEDDING_INPUTS:
        violations.append(
            FieldViolation(
                "inputs", f"at most {MAX_EMBEDDING_INPUTS} texts, not {len(request.inputs)}"
            )
        )
    for index, text in enumerate(request.inputs):
        if not text.strip():
            violations.append(FieldViolation(f"inputs[{index}]", "must not be empty"))
    if request.dimensions is not None and request.dimensions < 1:
        violations.append(FieldViolation("dimensions", "must be at least 1 when set"))
    if len(request.user_id) > MAX_UNIT_ID_CHARS:
        violations.append(FieldViolation("user_id", f"at most {MAX_UNIT_ID_CHARS} characters"))
    violations.extend(tag_violations(request.tags))
    return violations


def _dimensions_violation(model: str, dimensions: int, requested: int) -> FieldViolation:
    return FieldViolation(
        "dimensions",
        f"model {model!r} embeds in {dimensions} dimensions and cannot shorten them to "
        f"{requested}: leave dimensions unset, or set it to {dimensions}",
    )


def _refused(error: DomainError, model: str) -> DomainError:
    """InferenceService's refusal of a model that does not embed (FAILED_PRECONDITION with
    the model's task) as INVALID_ARGUMENT on `model`; any other error as it is."""
    if isinstance(error, FailedPrecondition) and error.metadata.get("task"):
        task = error.metadata["task"]
        return InvalidArgument(
            violations=[
                FieldViolation(
                    "model",
                    f"model {model!r} is a {task} model, not an embedding model: embed with a "
                    "model whose capabilities include embeddings",
                )
            ],
            metadata={**error.metadata, "model": model},
        )
    return error
