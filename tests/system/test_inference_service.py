"""InferenceService over a real Triton (the zero-compute and MiniLM models): streaming,
validation, admission, cancellation and failure statuses, through real gRPC."""

import asyncio
import re
import shutil
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import chat_pb2, generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc

from services.common import reasons
from services.common.status import error_details
from services.inference.adapters.tritonserver import TritonServer
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.triton import CPU_REPOSITORY, triton_server

pytestmark = pytest.mark.system

if TYPE_CHECKING:
    Stub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    Stub = inference_service_pb2_grpc.InferenceServiceStub

SLOW_INTERVAL_US = 20_000
"""Pace of `zero_llm_slow`: 50 tokens/s, slow enough to cancel mid-stream."""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU repository's zero_llm and minilm, plus `zero_llm_slow`: the same model paced."""
    root = tmp_path_factory.mktemp("repository")
    for model in ("zero_llm", "minilm"):
        shutil.copytree(CPU_REPOSITORY / model, root / model, symlinks=True)
    slow = root / "zero_llm_slow"
    shutil.copytree(CPU_REPOSITORY / "zero_llm", slow)
    config = (slow / "config.pbtxt").read_text()
    config = re.sub(r'name: "zero_llm"', 'name: "zero_llm_slow"', config)
    config = re.sub(
        r'(key: "token_interval_us"\s*value: \{ string_value: )"\d+"',
        rf'\1"{SLOW_INTERVAL_US}"',
        config,
    )
    assert f'"{SLOW_INTERVAL_US}"' in config
    (slow / "config.pbtxt").write_text(config)
    return root


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with triton_server(tmp_path_factory.mktemp("triton-log"), None, repository=repository) as s:
        yield s


def _settings(endpoint: str, *, slow_in_flight: int = 2) -> PlatformSettings:
    def model(name: str, triton_model: str, **more: Any) -> dict[str, Any]:
        backend = {"id": "triton-0", "endpoint": endpoint, "triton_model": triton_model}
        backend.update(more.pop("backend", {}))
        return {"name": name, "backends": [backend], **more}

    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["inference"],
            "server": {"port": 0},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    model("zero", "zero_llm", chat_template="builtin:chatml"),
                    model(
                        "zero-slow",
                        "zero_llm_slow",
                        backend={"max_in_flight": slow_in_flight},
                        max_output_tokens=100_000,
                    ),
                    model("minilm", "minilm", task="embedding"),
                ],
            },
        }
    )


@pytest.fixture
async def platform(triton: TritonServer) -> AsyncIterator[Platform]:
    running = await start_platform(_settings(triton.grpc_address))
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def stub(
    platform: Platform,
) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(platform.address) as channel:
        yield inference_service_pb2_grpc.InferenceServiceStub(channel)


def _request(
    text: str = "one two three", model: str = "zero", **parameters: Any
) -> inference_service_pb2.GenerateStreamRequest:
    return inference_service_pb2.GenerateStreamRequest(
        model=model, text=text, parameters=generation_pb2.SamplingParameters(**parameters)
    )


def _constrained(**constraint: Any) -> inference_service_pb2.GenerateStreamRequest:
    request = _request()
    request.constraint.CopyFrom(generation_pb2.OutputConstraint(**constraint))
    return request


async def _collect(
    stub: Stub,
    request: inference_service_pb2.GenerateStreamRequest,
) -> list[inference_service_pb2.GenerateStreamResponse]:
    return [response async for response in stub.GenerateStream(request, timeout=30)]


async def _failure(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


async def test_stream_is_one_start_deltas_and_one_final(
    stub: Stub,
) -> None:
    responses = await _collect(stub, _request(max_tokens=5))
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds == ["start", "delta", "delta", "delta", "delta", "delta", "final"]
    start, final = responses[0].start, responses[-1].final
    assert (start.model, start.backend_id, start.input_tokens) == ("zero", "triton-0", 3)
    assert "".join(r.delta.text for r in responses[1:-1]) == "tok0 tok1 tok2 tok3 tok4 "
    assert [r.delta.token_count for r in responses[1:-1]] == [1] * 5
    assert final.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 5)
    ttft = final.timings.first_token_duration.ToTimedelta()
    assert ttft <= final.timings.total_duration.ToTimedelta()


async def test_unary_generate_returns_the_same_text(
    stub: Stub,
) -> None:
    request = inference_service_pb2.GenerateRequest(
        model="zero", text="a b", parameters=generation_pb2.SamplingParameters(max_tokens=3)
    )
    response = await stub.Generate(request, timeout=30)
    assert response.text == "tok0 tok1 tok2 "
    assert response.final.usage.output_tokens == 3
    assert response.final.finish_reason == generation_pb2.FINISH_REASON_LENGTH


async def test_stop_sequence_ends_the_stream_without_the_sequence(
    stub: Stub,
) -> None:
    responses = await _collect(stub, _request(max_tokens=20, stop=["tok3"]))
    text = "".join(r.delta.text for r in responses if r.HasField("delta"))
    assert text == "tok0 tok1 tok2 "
    assert responses[-1].final.finish_reason == generation_pb2.FINISH_REASON_STOP_SEQUENCE


async def test_chat_input_is_rendered_with_the_models_template(
    stub: Stub,
) -> None:
    request = inference_service_pb2.GenerateStreamRequest(
        model="zero",
        chat=inference_pb2.ChatInput(
            messages=[chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content="hi there")]
        ),
        parameters=generation_pb2.SamplingParameters(max_tokens=1),
    )
    responses = await _collect(stub, request)
    # ChatML around "hi there": "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    # is 4 whitespace-separated words for the zero-compute model.
    assert responses[0].start.input_tokens == 4


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        (_request(model="nope"), grpc.StatusCode.NOT_FOUND, reasons.MODEL_NOT_FOUND, None),
        (_request(model=""), grpc.StatusCode.INVALID_ARGUMENT, reasons.FIELD_VIOLATION, "model"),
        (_request(text=""), grpc.StatusCode.INVALID_ARGUMENT, reasons.FIELD_VIOLATION, "text"),
        (
            _request(max_tokens=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.FIELD_VIOLATION,
            "parameters.max_tokens",
        ),
        (
            _request(max_tokens=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.FIELD_VIOLATION,
            "parameters.max_tokens",
        ),
        (
            _request(max_tokens=10**6),
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.FIELD_VIOLATION,
            "parameters.max_tokens",
        ),
        (
            _request(model="minilm"),
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.FAILED_PRECONDITION,
            None,
        ),
        (
            _constrained(json_object=True),
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.FAILED_PRECONDITION,
            None,
        ),
        (
            _constrained(),
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.FIELD_VIOLATION,
            "constraint",
        ),
        (
            _constrained(regex="x" * 70_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.FIELD_VIOLATION,
            "constraint.regex",
        ),
    ],
    ids=[
        "unknown-model",
        "no-model",
        "empty-prompt",
        "max-tokens-0",
        "max-tokens-negative",
        "max-tokens-over-limit",
        "embedding-model",
        "constraint-on-a-model-without-guided-decoding",
        "constraint-without-a-kind",
        "constraint-regex-over-64k",
    ],
)
async def test_bad_requests_get_precise_statuses(
    stub: Stub,
    request_: inference_service_pb2.GenerateStreamRequest,
    code: grpc.StatusCode,
    reason: str,
    field: str | None,
) -> None:
    error = await _failure(_collect(stub, request_))
    assert (error.code, error.reason) == (code, reason)
    if field is not None:
        assert field in [v.field for v in error.field_violations]


async def _in_flight(triton: TritonServer, model: str) -> float:
    assert triton.metrics_url is not None
    url = triton.metrics_url

    def read() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(read)
    match = re.search(rf'genai_llm_requests_in_flight\{{[^}}]*model="{model}"[^}}]*\}} (\S+)', text)
    assert match is not None, text
    return float(match.group(1))


async def test_cancelling_the_caller_cancels_the_triton_request(
    stub: Stub, triton: TritonServer
) -> None:
    call = stub.GenerateStream(_request(model="zero-slow", max_tokens=10_000), timeout=60)
    received = 0
    async for response in call:
        received += response.HasField("delta")
        if received == 3:
            break
    assert await _in_flight(triton, "zero_llm_slow") == 1
    call.cancel()
    cancelled = time.monotonic()
    while await _in_flight(triton, "zero_llm_slow") != 0:
        assert time.monotonic() - cancelled < 0.2, "Triton still generates 200 ms after cancel"
        await asyncio.sleep(0.01)


async def test_requests_past_the_in_flight_bound_are_refused_with_retry_info(
    stub: Stub,
) -> None:
    running = [
        stub.GenerateStream(_request(model="zero-slow", max_tokens=10_000), timeout=60)
        for _ in range(2)
    ]
    for call in running:  # both admitted and streaming
        await call.read()
    error = await _failure(_collect(stub, _request(model="zero-slow", max_tokens=1)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == reasons.BACKEND_OVERLOADED
    assert error.retry_after is not None
    assert error.retry_after > 0
    for call in running:
        call.cancel()
    await asyncio.sleep(0.05)  # the cancellations reach the server
    responses = await _collect(stub, _request(model="zero-slow", max_tokens=1))
    assert responses[-1].HasField("final")


async def test_deadline_is_passed_on_and_reported(
    stub: Stub,
) -> None:
    call = stub.GenerateStream(_request(model="zero-slow", max_tokens=10_000), timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_triton_that_is_down_is_unavailable_within_the_deadline() -> None:
    platform = await start_platform(_settings("127.0.0.1:9"))
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            started = time.monotonic()
            error = await _failure(_collect(stub, _request()))
            assert time.monotonic() - started < 5
            assert error.code == grpc.StatusCode.UNAVAILABLE
            assert error.reason == reasons.BACKEND_UNAVAILABLE
            assert error.retry_after is not None
            status = await stub.GetModelStatus(
                inference_service_pb2.GetModelStatusRequest(model="zero"), timeout=10
            )
            assert status.models[0].state == inference_pb2.MODEL_STATE_UNAVAILABLE
    finally:
        await platform.stop(grace=0)


async def test_embed_returns_normalised_vectors_in_order(
    stub: Stub,
) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell."]
    response = await stub.Embed(
        inference_service_pb2.EmbedRequest(model="minilm", inputs=texts), timeout=30
    )
    assert response.dimensions == 384
    vectors = [list(e.values) for e in response.embeddings]
    assert len(vectors) == 3
    norms = [sum(v * v for v in vector) ** 0.5 for vector in vectors]
    assert all(abs(n - 1) < 1e-4 for n in norms)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert response.usage.input_tokens > 0


async def test_list_models_and_status(
    stub: Stub,
) -> None:
    listed = await stub.ListModels(inference_service_pb2.ListModelsRequest(), timeout=10)
    by_name = {m.name: m for m in listed.models}
    assert set(by_name) == {"zero", "zero-slow", "minilm"}
    assert all(m.state == inference_pb2.MODEL_STATE_READY for m in listed.models)
    assert by_name["minilm"].task == inference_pb2.MODEL_TASK_EMBEDDING
    assert by_name["zero-slow"].max_in_flight == 2
    assert not any(m.guided_decoding for m in listed.models)  # none is configured for it
    first = await stub.ListModels(inference_service_pb2.ListModelsRequest(page_size=2), timeout=10)
    second = await stub.ListModels(
        inference_service_pb2.ListModelsRequest(page_size=2, page_token=first.next_page_token),
        timeout=10,
    )
    assert (len(first.models), len(second.models)) == (2, 1)
    assert not second.next_page_token
    error = await _failure(
        stub.GetModelStatus(inference_service_pb2.GetModelStatusRequest(model="nope"), timeout=10)
    )
    assert error.code == grpc.StatusCode.NOT_FOUND
