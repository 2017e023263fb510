"""The Triton adapter against a real Triton (zero_llm): one client span per request, its W3C
`traceparent` on the wire to Triton, chunks parsed from the facade's responses, and channels
that Triton's keepalive policy accepts."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common.errors import Unavailable
from services.common.grpc_types import UnaryStreamClientInterceptor
from services.inference.adapters.triton import (
    TRITON_CHANNEL_OPTIONS,
    TritonBackend,
    triton_channel,
)
from services.inference.core.model import BackendRequest, BackendSpec, FinishReason, Sampling
from tests.support.triton import running_triton

pytestmark = pytest.mark.system


class _RecordMetadata(UnaryStreamClientInterceptor):
    """Keeps the metadata of every call made through the channel (the test's window on the
    wire; the adapter's own channels carry no interceptors)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        self.calls.append(dict(client_call_details.metadata or ()))
        return await continuation(client_call_details, request)


def _request(max_tokens: int) -> BackendRequest:
    return BackendRequest(
        prompt="one two three",
        max_tokens=max_tokens,
        sampling=Sampling(),
        request_id="r-1",
        stream=True,
        timeout=30.0,
    )


async def test_generate_traces_each_request_and_passes_its_traceparent(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = _RecordMetadata()
    async with running_triton(tmp_path, ["zero_llm"], http_port=None) as triton:
        channel = grpc.aio.insecure_channel(
            triton.grpc_address,
            options=TRITON_CHANNEL_OPTIONS,
            interceptors=[recorder],  # type: ignore[list-item]
        )
        backend = TritonBackend(channel_for=lambda _: channel, tracer=provider.get_tracer("t"))
        spec = BackendSpec("triton-0", triton.grpc_address, "zero_llm", max_in_flight=4)
        try:
            chunks = [c async for c in backend.generate(spec, _request(5))]
        finally:
            await channel.close(None)

    assert [c.output_tokens for c in chunks] == [1, 2, 3, 4, 5]
    assert all(c.text for c in chunks)
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[0].input_tokens > 0
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.CLIENT
    assert span.name == "inference.GRPCInferenceService/ModelStreamInfer"
    assert span.attributes is not None
    assert span.attributes["genai.backend.model"] == "zero_llm"
    assert span.status.status_code is StatusCode.UNSET
    (metadata,) = recorder.calls
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == span.context.trace_id
    assert int(span_id, 16) == span.context.span_id


async def test_a_triton_that_is_down_is_unavailable_and_the_span_says_so() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    channel = triton_channel("127.0.0.1:1")  # nothing listens on port 1
    backend = TritonBackend(channel_for=lambda _: channel, tracer=provider.get_tracer("t"))
    spec = BackendSpec("triton-0", "127.0.0.1:1", "zero_llm", max_in_flight=4)
    try:
        with pytest.raises(Unavailable):
            async for _ in backend.generate(spec, _request(5)):
                pass
    finally:
        await channel.close(None)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


def test_triton_channels_never_ping_an_idle_triton() -> None:
    # Triton answers pings without calls, or more often than every 5 minutes without data,
    # with GOAWAY "too_many_pings" (its default keepalive policy).
    options = dict(TRITON_CHANNEL_OPTIONS)
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert options["grpc.keepalive_time_ms"] >= 300_000
