"""InferenceService with an OpenAI-compatible backend, through real gRPC and real HTTP: a
platform serving the test provider of `tests.support.openai_server` next to a Triton model
(whose Triton is down), streaming, forwarding, authentication, error mapping, cancellation
and deadlines."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import chat_pb2, generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc

from services.common import reasons
from services.common.config import ConfigError
from services.common.status import ParsedError, error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer, counted
from tests.support.settings import UNREACHABLE_TRITON
from tests.support.smollm2 import smollm2_dir

if TYPE_CHECKING:
    Stub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    Stub = inference_service_pb2_grpc.InferenceServiceStub

KEY_ENV = "TEST_PROVIDER_API_KEY"
KEY = "sk-test-4f1c9a0b7e2d"
PACED = Behaviour(tokens=counted(1000), pace=0.02)
"""50 tokens/s: slow enough to cancel, or to run out of time, mid-stream."""


def _settings(base_url: str) -> PlatformSettings:
    def openai(backend_id: str, endpoint: str = base_url, **more: Any) -> dict[str, Any]:
        return {
            "id": backend_id,
            "kind": "openai_compatible",
            "endpoint": endpoint,
            "provider_model": MODEL,
            "api_key_env": KEY_ENV,
            **more,
        }

    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["inference"],
            "server": {"port": 0},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {"name": "hosted", "backends": [openai("openai-0", max_in_flight=4)]},
                    {
                        "name": "hosted-limited",
                        "backends": [openai("openai-1", timeout_seconds=0.3)],
                    },
                    {
                        "name": "hosted-counted",
                        "backends": [openai("openai-0")],
                        "tokenizer": "prepared:smollm2",
                    },
                    {"name": "down", "backends": [openai("openai-down", "http://127.0.0.1:9/v1")]},
                    {
                        "name": "zero",
                        "backends": [
                            {
                                "id": "triton-0",
                                "endpoint": UNREACHABLE_TRITON,
                                "triton_model": "zero_llm",
                            }
                        ],
                        "chat_template": "builtin:chatml",
                    },
                ],
            },
        }
    )


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, as transformers loads it from the prepared directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir()))


@pytest.fixture
async def provider() -> AsyncIterator[OpenAICompatibleServer]:
    async with OpenAICompatibleServer(api_key=KEY) as server:
        yield server


@pytest.fixture
async def platform(
    provider: OpenAICompatibleServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Platform]:
    monkeypatch.setenv(KEY_ENV, KEY)
    running = await start_platform(_settings(provider.base_url))
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def stub(platform: Platform) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(platform.address) as channel:
        yield inference_service_pb2_grpc.InferenceServiceStub(channel)


def _request(
    text: str = "one two three", model: str = "hosted", **parameters: Any
) -> inference_service_pb2.GenerateStreamRequest:
    return inference_service_pb2.GenerateStreamRequest(
        model=model, text=text, parameters=generation_pb2.SamplingParameters(**parameters)
    )


async def _collect(
    stub: Stub, request: inference_service_pb2.GenerateStreamRequest, deadline: float = 10
) -> list[inference_service_pb2.GenerateStreamResponse]:
    return [response async for response in stub.GenerateStream(request, timeout=deadline)]


async def _failure(
    stub: Stub, request: inference_service_pb2.GenerateStreamRequest
) -> tuple[ParsedError, list[inference_service_pb2.GenerateStreamResponse]]:
    """The error a stream ends with, and what it sent before."""
    received: list[inference_service_pb2.GenerateStreamResponse] = []

    async def consume() -> None:
        async for response in stub.GenerateStream(request, timeout=10):
            received.append(response)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await consume()
    return error_details(raised.value), received


def _text(responses: list[inference_service_pb2.GenerateStreamResponse]) -> str:
    return "".join(r.delta.text for r in responses if r.HasField("delta"))


async def test_streams_the_providers_tokens_and_reports_its_usage(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    tokens = ("Bon", "jour", ", ", "le ", "monde ✓")
    provider.behaviour = Behaviour(tokens=tokens, prompt_tokens=12, completion_tokens=7)
    responses = await _collect(stub, _request(max_tokens=50))

    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds == ["start", "delta", "delta", "delta", "delta", "delta", "final"]
    start, final = responses[0].start, responses[-1].final
    assert (start.model, start.backend_id) == ("hosted", "openai-0")
    assert [r.delta.text for r in responses[1:-1]] == list(tokens)
    # Until the provider's usage comes, InferenceService counts: `hosted` names no tokenizer,
    # so by the estimate (one token per byte, 64 + 8 per message for the template).
    assert start.input_tokens == 64 + len("user") + len("one two three") + 8
    assert start.input_tokens_source == generation_pb2.USAGE_SOURCE_ESTIMATE
    assert [r.delta.token_count for r in responses[1:-1]] == [len(t.encode()) for t in tokens]
    assert final.finish_reason == generation_pb2.FINISH_REASON_STOP
    # The counts are the provider's, from its final usage chunk, not the deltas counted.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert final.usage.usage_source == generation_pb2.USAGE_SOURCE_PROVIDER
    assert (final.model, final.backend_id) == ("hosted", "openai-0")


async def test_the_request_carries_the_input_the_parameters_and_the_key(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    request = _request(
        "Say hi",
        max_tokens=3,
        temperature=0.25,
        top_p=0.5,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        stop=["###"],
    )
    request.request_id = "req-42"
    await _collect(stub, request)

    [recorded] = provider.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert recorded.headers["x-request-id"] == "req-42"
    assert recorded.headers["accept"] == "text/event-stream"
    assert recorded.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
        "temperature": 0.25,
        "top_p": 0.5,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["###"],
    }


async def test_chat_messages_are_forwarded_as_messages_not_rendered(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    turns = [
        (chat_pb2.CHAT_ROLE_SYSTEM, "You are terse."),
        (chat_pb2.CHAT_ROLE_USER, "Hi"),
        (chat_pb2.CHAT_ROLE_ASSISTANT, "Hello."),
        (chat_pb2.CHAT_ROLE_USER, "Name a colour."),
    ]
    request = inference_service_pb2.GenerateStreamRequest(
        model="hosted",
        chat=inference_pb2.ChatInput(
            messages=[chat_pb2.ChatMessage(role=role, content=text) for role, text in turns]
        ),
    )
    responses = await _collect(stub, request)
    assert responses[-1].HasField("final")
    assert provider.requests[0].body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ]
    # The test provider counts the words of the messages as prompt tokens.
    assert responses[-1].final.usage.input_tokens == 8


async def test_without_usage_and_tokenizer_the_estimate_never_undercounts(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = Behaviour(tokens=counted(4), usage=False)
    responses = await _collect(stub, _request())
    start, final = responses[0].start, responses[-1].final
    assert _text(responses) == "tok0 tok1 tok2 tok3 "
    # One token per UTF-8 byte, the template's allowance, and the end-of-sequence token.
    expected_input = 64 + len("user") + len("one two three") + 8
    assert (final.usage.input_tokens, final.usage.output_tokens) == (expected_input, 20 + 1)
    assert final.usage.usage_source == generation_pb2.USAGE_SOURCE_ESTIMATE
    assert (start.input_tokens, start.input_tokens_source) == (
        expected_input,
        generation_pb2.USAGE_SOURCE_ESTIMATE,
    )
    assert [r.delta.token_count for r in responses[1:-1]] == [5, 5, 5, 5]


async def test_without_usage_the_models_tokenizer_counts(
    stub: Stub, provider: OpenAICompatibleServer, smollm2_tokenizer: Any
) -> None:
    """`hosted-counted` names SmolLM2's tokenizer: the prompt is counted as its chat template
    renders it (what `transformers serve` counts), the output re-tokenized, plus the
    end-of-sequence token when the model stopped on it."""
    provider.behaviour = Behaviour(tokens=(" The", " capital", " is", " Paris", "."), usage=False)
    responses = await _collect(stub, _request("Capital of France?", model="hosted-counted"))
    start, final = responses[0].start, responses[-1].final

    prompt = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Capital of France?"}], add_generation_prompt=True
    )["input_ids"]
    output = smollm2_tokenizer(" The capital is Paris.", add_special_tokens=False)["input_ids"]
    assert final.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert (final.usage.input_tokens, final.usage.output_tokens) == (len(prompt), len(output) + 1)
    assert final.usage.usage_source == generation_pb2.USAGE_SOURCE_TOKENIZER
    assert (start.input_tokens, start.input_tokens_source) == (
        len(prompt),
        generation_pb2.USAGE_SOURCE_TOKENIZER,
    )
    assert [r.delta.token_count for r in responses[1:-1]] == [1] * 5

    # Cut by max_tokens: no end-of-sequence token was generated.
    responses = await _collect(stub, _request("Capital of France?", "hosted-counted", max_tokens=2))
    assert responses[-1].final.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert responses[-1].final.usage.output_tokens == 2


@pytest.mark.parametrize(
    ("behaviour", "max_tokens", "finish"),
    [
        (Behaviour(tokens=counted(9)), 3, generation_pb2.FINISH_REASON_LENGTH),
        (
            Behaviour(finish_reason="content_filter"),
            50,
            generation_pb2.FINISH_REASON_CONTENT_FILTER,
        ),
        (Behaviour(stop_reason="###"), 50, generation_pb2.FINISH_REASON_STOP_SEQUENCE),
    ],
    ids=["length", "content-filter", "stop-sequence"],
)
async def test_finish_reasons_are_mapped(
    stub: Stub, provider: OpenAICompatibleServer, behaviour: Behaviour, max_tokens: int, finish: int
) -> None:
    provider.behaviour = behaviour
    responses = await _collect(stub, _request(max_tokens=max_tokens))
    assert responses[-1].final.finish_reason == finish


async def test_multiline_events_crlf_and_comments_read_the_same(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = Behaviour(tokens=("a\nb", " ü"), multiline=True, prompt_tokens=2)
    responses = await _collect(stub, _request())
    assert _text(responses) == "a\nb ü"
    assert responses[-1].final.usage.output_tokens == 2


async def test_unary_generate_and_pooled_connections(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = Behaviour(tokens=counted(3))
    for _ in range(3):
        response = await stub.Generate(
            inference_service_pb2.GenerateRequest(model="hosted", text="x"), timeout=10
        )
        assert response.text == "tok0 tok1 tok2 "
        assert response.final.usage.output_tokens == 3
    assert provider.connections == 1  # each stream was read to its end: keep-alive reuse


async def test_triton_and_openai_models_side_by_side(stub: Stub) -> None:
    listed = await stub.ListModels(inference_service_pb2.ListModelsRequest(), timeout=10)
    by_name = {m.name: m for m in listed.models}
    assert by_name["hosted"].backend_model == MODEL
    assert by_name["hosted"].state == inference_pb2.MODEL_STATE_READY
    assert by_name["down"].state == inference_pb2.MODEL_STATE_UNAVAILABLE
    assert by_name["zero"].state == inference_pb2.MODEL_STATE_UNAVAILABLE  # its Triton is down
    error, _ = await _failure(stub, _request(model="zero"))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.BACKEND_UNAVAILABLE)
    assert (await _collect(stub, _request()))[-1].HasField("final")


ERROR_CASES = {
    "400": (
        Behaviour(status=400),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.FIELD_VIOLATION,
        None,
        0,
    ),
    "422": (
        Behaviour(status=422, error_body={"detail": [{"loc": ["body", "x"], "msg": "bad"}]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.FIELD_VIOLATION,
        None,
        0,
    ),
    "401": (
        Behaviour(status=401, error_body={"error": {"message": f"Incorrect API key: {KEY}"}}),
        grpc.StatusCode.INTERNAL,
        reasons.BACKEND_ERROR,
        None,
        0,
    ),
    "403": (Behaviour(status=403), grpc.StatusCode.INTERNAL, reasons.BACKEND_ERROR, None, 0),
    "404-model": (
        Behaviour(models=("another-model",)),
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_UNAVAILABLE,
        1.0,
        0,
    ),
    "429": (
        Behaviour(status=429, headers={"Retry-After": "7"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reasons.BACKEND_OVERLOADED,
        7.0,
        0,
    ),
    "500": (
        Behaviour(status=500),
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_UNAVAILABLE,
        1.0,
        0,
    ),
    "503-retry-after": (
        Behaviour(status=503, headers={"Retry-After": "2"}),
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_UNAVAILABLE,
        2.0,
        0,
    ),
    "broken-mid-stream": (
        Behaviour(tokens=counted(5), break_after=2),
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_UNAVAILABLE,
        1.0,
        2,
    ),
    "error-event-mid-stream": (
        Behaviour(tokens=counted(5), error_after=2),
        grpc.StatusCode.INTERNAL,
        reasons.BACKEND_ERROR,
        None,
        2,
    ),
    "no-finish": (
        Behaviour(tokens=counted(3), finish_reason=None),
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_ERROR,
        1.0,
        3,
    ),
}


@pytest.mark.parametrize(
    ("behaviour", "code", "reason", "retry_after", "deltas"),
    list(ERROR_CASES.values()),
    ids=list(ERROR_CASES),
)
async def test_provider_failures_get_precise_statuses(
    stub: Stub,
    provider: OpenAICompatibleServer,
    behaviour: Behaviour,
    code: grpc.StatusCode,
    reason: str,
    retry_after: float | None,
    deltas: int,
) -> None:
    provider.behaviour = behaviour
    error, received = await _failure(stub, _request())
    assert (error.code, error.reason, error.retry_after) == (code, reason, retry_after)
    assert error.metadata["backend_id"] == "openai-0"
    assert sum(r.HasField("delta") for r in received) == deltas
    assert KEY not in error.message
    assert KEY not in str(error.metadata)


async def test_a_rejected_key_is_not_leaked(stub: Stub, provider: OpenAICompatibleServer) -> None:
    provider.api_key = "sk-the-right-one"  # the provider answers 401, quoting the key it got
    error, _ = await _failure(stub, _request())
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, reasons.BACKEND_ERROR)
    assert error.metadata["http_status"] == "401"
    assert KEY not in error.message


async def test_an_unreachable_provider_is_unavailable_with_retry_info(stub: Stub) -> None:
    started = time.monotonic()
    error, _ = await _failure(stub, _request(model="down"))
    assert time.monotonic() - started < 5
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.BACKEND_UNAVAILABLE)
    assert error.retry_after == 1.0


async def test_cancelling_the_caller_closes_the_provider_connection(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = PACED
    call = stub.GenerateStream(_request(), timeout=30)
    received = 0
    async for response in call:
        received += response.HasField("delta")
        if received == 3:
            break
    [upstream] = provider.requests
    assert not upstream.disconnected.is_set()
    call.cancel()
    cancelled = time.monotonic()
    await asyncio.wait_for(upstream.disconnected.wait(), 2)
    assert upstream.disconnected_at is not None
    assert upstream.disconnected_at - cancelled < 0.2, "the provider still streams 200 ms on"
    assert not upstream.completed
    # The slot is free again: the backend takes its full bound of requests.
    provider.behaviour = Behaviour()
    for _ in range(4):
        assert (await _collect(stub, _request()))[-1].HasField("final")


async def test_the_callers_deadline_ends_the_provider_request(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = PACED
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _collect(stub, _request(), deadline=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [upstream] = provider.requests
    await asyncio.wait_for(upstream.disconnected.wait(), 2)
    assert upstream.disconnected_at is not None
    assert upstream.disconnected_at - started < 0.6


async def test_the_backends_own_timeout_ends_a_request_the_caller_would_wait_for(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = PACED
    error, received = await _failure(stub, _request(model="hosted-limited"))
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout of 0.3 s" in error.message
    assert 1 <= sum(r.HasField("delta") for r in received) <= 20
    [upstream] = provider.requests
    await asyncio.wait_for(upstream.disconnected.wait(), 2)


async def test_a_missing_api_key_variable_stops_the_start(
    provider: OpenAICompatibleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        await start_platform(_settings(provider.base_url))
