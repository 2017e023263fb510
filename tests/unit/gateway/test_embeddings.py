"""`EmbeddingEngine`: the gateway's embeddings, priced from the shipped router catalog (the real
RouterService, called in process), under the tenant's quota (the in-memory limiter), logged by
the log's content policy and measured; InferenceService's `Embed` is a stand-in that answers
like the real one (or fails as it would). Every outcome, success or not, is logged and settled
before the caller hears of it."""

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai.common.v1 import generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2
from genai.router.v1 import router_service_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from services.common import reasons
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.local import local_stub, rpc_error
from services.gateway.accounting import Accounting
from services.gateway.core.quota import InMemoryQuotaLimiter, Reservation, Usage
from services.gateway.core.request_log import RequestLogRecord, RequestLogTotals
from services.gateway.core.tenants import Tenant, TenantQuota
from services.gateway.embeddings import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingEngine,
    EmbeddingRequest,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.outcome import OPENAI_EMBEDDINGS_METHOD, Caller
from services.gateway.tenancy import PriceBook, TenantDirectory
from services.router.config import DEFAULT_CATALOG, load_catalog
from services.router.core.router import Router
from services.router.servicer import RouterServicer

MODEL = "all-minilm-l6-v2"
CALLER = Caller(
    tenant_id="acme", metadata=(("x-genai-tenant", "acme"),), method=OPENAI_EMBEDDINGS_METHOD
)
DIMENSIONS = 384


class Inference:
    """InferenceService.Embed as the real one answers: one unit vector per text, word counts as
    tokens (plus [CLS] and [SEP]); `fail` raises instead, `gate` holds the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Any]] = []
        self.fail: DomainError | None = None
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def Embed(
        self, request: inference_service_pb2.EmbedRequest, **kwargs: Any
    ) -> inference_service_pb2.EmbedResponse:
        self.calls.append((list(request.inputs), kwargs))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise rpc_error(self.fail)
        vectors = [
            inference_pb2.Embedding(values=[1.0 if i == n % DIMENSIONS else 0.0 for i in range(8)])
            for n, _ in enumerate(request.inputs)
        ]
        for vector in vectors:
            vector.values.extend([0.0] * (DIMENSIONS - 8))
        return inference_service_pb2.EmbedResponse(
            embeddings=vectors,
            dimensions=DIMENSIONS,
            usage=generation_pb2.TokenUsage(
                input_tokens=sum(len(t.split()) + 2 for t in request.inputs),
                usage_source=generation_pb2.USAGE_SOURCE_PROVIDER,
            ),
            model=request.model,
        )


class Log:
    """A request log that keeps what it is handed."""

    def __init__(self) -> None:
        self.records: list[RequestLogRecord] = []

    def submit(self, record: RequestLogRecord) -> bool:
        self.records.append(record)
        return True

    def submit_confirmed(self, record: RequestLogRecord) -> "asyncio.Future[bool]":
        self.records.append(record)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(True)
        return done

    async def aclose(self, timeout: float = 10.0) -> RequestLogTotals:  # noqa: ASYNC109
        raise NotImplementedError


class Quota(InMemoryQuotaLimiter):
    """The in-memory limiter, noting what was reserved and settled."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved: list[Usage] = []
        self.settled: list[Usage] = []

    async def reserve(
        self, tenant_id: str, quota: TenantQuota, usage: Usage, *, request_id: str = ""
    ) -> Reservation:
        reservation = await super().reserve(tenant_id, quota, usage, request_id=request_id)
        self.reserved.append(usage)
        return reservation

    async def settle(self, reservation: Reservation, actual: Usage) -> None:
        if not reservation.settled:
            self.settled.append(actual)
        await super().settle(reservation, actual)


class Harness:
    def __init__(
        self,
        content: str = "full",
        limits: TenantQuota | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        router = local_stub(
            RouterServicer(Router(load_catalog(DEFAULT_CATALOG))),
            router_service_pb2.DESCRIPTOR.services_by_name["RouterService"],
            trace.get_tracer("test"),
        )
        self.inference = Inference()
        self.log = Log()
        self.quota = Quota()
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        quota = limits or TenantQuota()

        async def tenant(tenant_id: str) -> Tenant:
            return Tenant(tenant_id, tenant_id, quota, datetime.now(UTC))

        prices = PriceBook(router)
        directory = TenantDirectory(client_for=_no_prompts, tenant_lookup=tenant, cache_seconds=0)
        self.engine = EmbeddingEngine(
            inference=self.inference,  # type: ignore[arg-type]
            prices=prices,
            directory=directory,
            accounting=Accounting(
                prices=prices,
                quota=self.quota,
                log=self.log,
                log_content=content,
                metrics=self.metrics,
            ),
            metrics=self.metrics,
            tracer_provider=tracer_provider,
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def _no_prompts(tenant_id: str) -> Any:
    raise AssertionError("embeddings need no prompt client")


def _request(*texts: str, model: str = MODEL, **more: Any) -> EmbeddingRequest:
    return EmbeddingRequest(model=model, inputs=texts, **more)


async def _failure(harness: Harness, request: EmbeddingRequest) -> DomainError:
    with pytest.raises(DomainError) as raised:
        await harness.engine.embed(request, CALLER, time_left=10)
    return raised.value


async def test_texts_are_embedded_priced_settled_logged_and_measured() -> None:
    harness = Harness()

    result = await harness.engine.embed(
        _request("The cat sat.", "A dog ran far away.", user_id="u-1", tags={"team": "a"}),
        CALLER,
        time_left=7.5,
    )

    assert (result.model, result.dimensions, len(result.vectors)) == (MODEL, DIMENSIONS, 2)
    assert all(len(v) == DIMENSIONS for v in result.vectors)
    assert (result.vectors[0][0], result.vectors[1][1]) == (1.0, 1.0)
    assert result.input_tokens == 5 + 7
    price = load_catalog(DEFAULT_CATALOG).model(MODEL)
    assert price is not None
    assert result.cost == Decimal(12) * price.input_price / 1_000_000 > 0
    assert result.currency == "USD"
    (texts, kwargs) = harness.inference.calls[0]
    assert texts == ["The cat sat.", "A dog ran far away."]
    assert 7 < kwargs["timeout"] <= 7.5
    assert kwargs["metadata"] == CALLER.metadata

    # Reserved at the estimate, settled at the model's count.
    [reserved] = harness.quota.reserved
    assert (reserved.requests, reserved.tokens) == (1, (12 // 3 + 4) + (19 // 3 + 4))
    [settled] = harness.quota.settled
    assert (settled.requests, settled.tokens) == (1, 12)

    [record] = harness.log.records
    assert (record.method, record.status, record.model) == ("openai/v1/embeddings", "OK", MODEL)
    assert (record.request_id, record.tenant_id) == (result.request_id, "acme")
    assert record.input == {"texts": ["The cat sat.", "A dog ran far away."]}
    assert record.output == ""
    assert (record.input_tokens, record.output_tokens) == (12, 0)
    assert record.cost_micros == round(result.cost * 1_000_000)
    assert (record.user_id, dict(record.tags)) == ("u-1", {"team": "a"})
    assert record.metadata["model"] == MODEL
    assert record.metadata["dimensions"] == DIMENSIONS
    assert record.metadata["inputs"] == 2
    assert record.metadata["usage"] == {"inputTokens": 12, "usageSource": "USAGE_SOURCE_PROVIDER"}
    assert record.metadata["cost"]["currencyCode"] == "USD"

    assert (
        harness.sample(
            "genai_gateway_requests_total",
            tenant="acme",
            method=OPENAI_EMBEDDINGS_METHOD,
            code="OK",
        )
        == 1
    )
    assert (
        harness.sample(
            "gen_ai_client_token_usage_sum",
            gen_ai_operation_name="embeddings",
            gen_ai_request_model=MODEL,
            gen_ai_token_type="input",
        )
        == 12
    )
    assert (
        harness.sample(
            "gen_ai_client_operation_duration_seconds_count",
            gen_ai_operation_name="embeddings",
            gen_ai_request_model=MODEL,
            error_type="",
        )
        == 1
    )
    assert harness.sample("genai_gateway_in_flight", method=OPENAI_EMBEDDINGS_METHOD) == 0


@pytest.mark.parametrize(
    ("content", "logged"),
    [
        ("full", {"texts": ["mail ann@example.com"]}),
        ("redacted", {"texts": ["mail [EMAIL]"]}),
        ("metadata", {"count": 1}),
    ],
)
async def test_the_texts_are_logged_by_the_content_policy(
    content: str, logged: dict[str, Any]
) -> None:
    harness = Harness(content)

    await harness.engine.embed(_request("mail ann@example.com"), CALLER, time_left=None)

    assert harness.log.records[0].input == logged
    assert harness.inference.calls[0][1]["timeout"] is None


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (_request("x", model=""), ["model"]),
        (_request(), ["inputs"]),
        (_request(*["x"] * (MAX_EMBEDDING_INPUTS + 1)), ["inputs"]),
        (_request("x", " ", "", "y"), ["inputs[1]", "inputs[2]"]),
        (_request("x", dimensions=0), ["dimensions"]),
        (_request("x", user_id="u" * 257), ["user_id"]),
        (_request("x", tags={f"k{i}": "v" for i in range(17)}), ["tags"]),
        (_request("x", tags={"": "v"}), ["tags[]"]),
    ],
    ids=["model", "none", "too-many", "blank", "dimensions", "user", "tags", "tag-key"],
)
async def test_a_bad_request_names_each_field_and_reaches_nothing(
    request_: EmbeddingRequest, fields: list[str]
) -> None:
    harness = Harness()

    error = await _failure(harness, request_)

    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == fields
    assert (harness.inference.calls, harness.quota.reserved) == ([], [])
    [record] = harness.log.records
    assert (record.status, record.model, record.input_tokens) == ("INVALID_ARGUMENT", "", 0)
    assert (
        harness.sample(
            "genai_gateway_requests_total",
            tenant="acme",
            method=OPENAI_EMBEDDINGS_METHOD,
            code="INVALID_ARGUMENT",
        )
        == 1
    )


async def test_a_model_the_catalog_lacks_is_not_found_before_any_quota() -> None:
    harness = Harness()

    error = await _failure(harness, _request("x", model="no-such-model"))

    assert isinstance(error, NotFound)
    assert error.reason == reasons.MODEL_NOT_FOUND
    assert error.metadata["model"] == "no-such-model"
    assert (harness.inference.calls, harness.quota.reserved) == ([], [])
    assert harness.log.records[0].status == "NOT_FOUND"


async def test_a_generation_model_is_invalid_argument_on_model_and_charged_nothing() -> None:
    harness = Harness()
    harness.inference.fail = FailedPrecondition(
        "model 'smollm2-135m-instruct' is an generation model, not a embedding model",
        metadata={"model": "smollm2-135m-instruct", "task": "generation"},
    )

    error = await _failure(harness, _request("x", model="smollm2-135m-instruct"))

    assert isinstance(error, InvalidArgument)
    [violation] = error.violations
    assert violation.field == "model"
    assert "is a generation model, not an embedding model" in violation.description
    assert [u.tokens for u in harness.quota.settled] == [0]
    assert harness.log.records[0].status == "INVALID_ARGUMENT"
    assert harness.log.records[0].model == "smollm2-135m-instruct"


async def test_an_inference_failure_is_its_domain_error_and_settles_at_nothing() -> None:
    harness = Harness()
    harness.inference.fail = Unavailable(
        "backend triton-0 is unreachable", retry_after=2.0, reason=reasons.BACKEND_UNAVAILABLE
    )

    error = await _failure(harness, _request("x"))

    assert isinstance(error, Unavailable)
    assert (error.reason, error.retry_after) == (reasons.BACKEND_UNAVAILABLE, 2.0)
    assert [(u.requests, u.tokens, u.cost_micros) for u in harness.quota.settled] == [(1, 0, 0)]
    [record] = harness.log.records
    assert (record.status, record.input_tokens, record.cost_micros) == ("UNAVAILABLE", 0, 0)
    assert (
        harness.sample(
            "gen_ai_client_operation_duration_seconds_count",
            gen_ai_operation_name="embeddings",
            gen_ai_request_model=MODEL,
            error_type="UNAVAILABLE",
        )
        == 1
    )


async def test_the_quota_refuses_before_inference_and_counts_the_rejection() -> None:
    harness = Harness(limits=TenantQuota(tokens_per_minute=10))

    error = await _failure(harness, _request("one two three four five six seven eight nine ten"))

    assert isinstance(error, ResourceExhausted)
    assert error.reason == reasons.QUOTA_EXCEEDED
    assert harness.inference.calls == []
    assert harness.log.records[0].status == "RESOURCE_EXHAUSTED"
    assert harness.sample("genai_gateway_quota_rejections_total", tenant="acme") == 1


async def test_other_dimensions_are_refused_after_the_first_answer_then_before_any_call() -> None:
    harness = Harness()

    first = await _failure(harness, _request("x", dimensions=256))
    second = await _failure(harness, _request("x", dimensions=256))
    same = await harness.engine.embed(_request("x", dimensions=DIMENSIONS), CALLER, time_left=5)

    for error in (first, second):
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["dimensions"]
        assert "embeds in 384 dimensions" in error.violations[0].description
    assert same.dimensions == DIMENSIONS
    assert len(harness.inference.calls) == 2  # the second refusal reached nothing
    # The first read the text: it is logged and charged for it; the second is not.
    assert [(r.status, r.input_tokens) for r in harness.log.records] == [
        ("INVALID_ARGUMENT", 3),
        ("INVALID_ARGUMENT", 0),
        ("OK", 3),
    ]


async def test_a_cancelled_request_is_logged_cancelled_and_settled() -> None:
    harness = Harness()
    harness.inference.gate = asyncio.Event()
    task = asyncio.create_task(harness.engine.embed(_request("x"), CALLER, time_left=None))
    await harness.inference.called.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [record] = harness.log.records
    assert record.status == "CANCELLED"
    assert [u.tokens for u in harness.quota.settled] == [0]
    assert harness.sample("genai_gateway_in_flight", method=OPENAI_EMBEDDINGS_METHOD) == 0


async def test_the_span_names_the_operation_model_usage_and_dimensions() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    harness = Harness(tracer_provider=provider)

    result = await harness.engine.embed(_request("a b c"), CALLER, time_left=None)

    [span] = [s for s in exporter.get_finished_spans() if s.name == f"embeddings {MODEL}"]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == 5
    assert attributes["gen_ai.embeddings.dimension.count"] == DIMENSIONS
    assert result.trace_id == f"{span.context.trace_id:032x}"
    assert harness.log.records[0].trace_id == result.trace_id
