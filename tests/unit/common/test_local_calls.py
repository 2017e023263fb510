"""In-process calls (services/common/local.py): the same results, errors, deadlines and
cancellation a caller would see over gRPC, with the servicer called directly."""

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import pytest
from genai.inference.v1 import inference_pb2, inference_service_pb2
from genai.router.v1 import router_service_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import reasons
from services.common.auth import Principal, current_principal, principal_scope
from services.common.errors import FieldViolation, InvalidArgument, Unauthenticated, Unavailable
from services.common.local import local_stub
from services.common.status import error_details

INFERENCE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"]
ROUTER = router_service_pb2.DESCRIPTOR.services_by_name["RouterService"]
Response = inference_service_pb2.GenerateStreamResponse


class FakeInference:
    """Streams `tokens` deltas, each after `pause` seconds; records what it saw."""

    def __init__(self, tokens: int = 3, pause: float = 0.0, fail_after: int | None = None):
        self.tokens, self.pause, self.fail_after = tokens, pause, fail_after
        self.closed = asyncio.Event()
        self.seen: list[tuple[str, float | None]] = []

    async def GenerateStream(
        self, request: inference_service_pb2.GenerateStreamRequest, context: Any
    ) -> AsyncGenerator[Response, None]:
        try:
            tenant = current_principal().tenant_id
        except Unauthenticated:
            tenant = ""
        self.seen.append((tenant, context.time_remaining()))
        try:
            yield Response(start=inference_pb2.GenerationStart(model=request.model))
            for index in range(self.tokens):
                if index == self.fail_after:
                    raise Unavailable("backend went away", reason=reasons.BACKEND_UNAVAILABLE)
                await asyncio.sleep(self.pause)
                yield Response(delta=inference_pb2.TokenDelta(text=f"t{index} ", token_count=1))
            yield Response(final=inference_pb2.GenerationFinal(model=request.model))
        finally:
            self.closed.set()


class FakeRouter:
    async def Route(
        self, request: router_service_pb2.RouteRequest, context: Any
    ) -> router_service_pb2.RouteResponse:
        if request.max_output_tokens < 1:
            raise InvalidArgument(violations=[FieldViolation("max_output_tokens", "must be >= 1")])
        await asyncio.sleep(10 if request.prompt == "slow" else 0)
        return router_service_pb2.RouteResponse()


@pytest.fixture
def spans() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_a_stream_yields_the_servicers_messages_as_the_callers_principal(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = spans
    servicer = FakeInference()
    stub = local_stub(servicer, INFERENCE, tracer)

    with principal_scope(Principal(tenant_id="acme", subject="k")):
        call = stub.GenerateStream(
            inference_service_pb2.GenerateStreamRequest(model="m"), timeout=5
        )
        kinds = [m.WhichOneof("event") async for m in call]

    assert kinds == ["start", "delta", "delta", "delta", "final"]
    [(tenant, left)] = servicer.seen
    assert tenant == "acme"
    assert left is not None
    assert 4 < left <= 5
    assert [s.name for s in exporter.get_finished_spans()] == [
        "/genai.inference.v1.InferenceService/GenerateStream"
    ]


async def test_a_domain_error_is_the_rpc_error_a_remote_caller_would_get(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    stub = local_stub(FakeInference(fail_after=1), INFERENCE, spans[0])
    router = local_stub(FakeRouter(), ROUTER, spans[0])

    received: list[str | None] = []

    async def drain() -> None:
        async for message in stub.GenerateStream(inference_service_pb2.GenerateStreamRequest()):
            received.append(message.WhichOneof("event"))

    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await drain()
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await router.Route(router_service_pb2.RouteRequest())

    assert received == ["start", "delta"]
    stream_error = error_details(streamed.value)
    assert (stream_error.code, stream_error.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_UNAVAILABLE,
    )
    unary_error = error_details(unary.value)
    assert unary_error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in unary_error.field_violations] == ["max_output_tokens"]


async def test_deadlines_bound_local_calls(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    stub = local_stub(FakeInference(tokens=100, pause=0.05), INFERENCE, spans[0])
    router = local_stub(FakeRouter(), ROUTER, spans[0])

    async def drain() -> None:
        async for _ in stub.GenerateStream(
            inference_service_pb2.GenerateStreamRequest(), timeout=0.2
        ):
            continue

    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await drain()
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await router.Route(
            router_service_pb2.RouteRequest(prompt="slow", max_output_tokens=1), timeout=0.05
        )

    assert streamed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert unary.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_cancel_closes_the_servicers_generator(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    servicer = FakeInference(tokens=1000, pause=0.01)
    call = local_stub(servicer, INFERENCE, spans[0]).GenerateStream(
        inference_service_pb2.GenerateStreamRequest()
    )
    async for message in call:
        if message.HasField("delta"):
            break

    assert call.cancel() is True
    await asyncio.wait_for(servicer.closed.wait(), 1)
    assert call.cancel() is False


async def test_a_deadline_passing_between_messages_ends_the_stream_at_the_next_read(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    servicer = FakeInference(tokens=100)
    call = local_stub(servicer, INFERENCE, spans[0]).GenerateStream(
        inference_service_pb2.GenerateStreamRequest(), timeout=0.1
    )
    first = await anext(call)
    await asyncio.sleep(0.2)  # the caller is busy (not reading) when the deadline passes

    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await anext(call)

    assert first.HasField("start")
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(servicer.closed.wait(), 1)
    assert [s.status.status_code for s in spans[1].get_finished_spans()] == [trace.StatusCode.ERROR]


async def test_the_callers_own_cancellation_stays_a_cancellation(
    spans: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    servicer = FakeInference(tokens=100, pause=10)
    call = local_stub(servicer, INFERENCE, spans[0]).GenerateStream(
        inference_service_pb2.GenerateStreamRequest(), timeout=30
    )

    async def read_all() -> None:
        async for _ in call:
            continue

    task = asyncio.create_task(read_all())
    await asyncio.sleep(0.05)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(servicer.closed.wait(), 1)
