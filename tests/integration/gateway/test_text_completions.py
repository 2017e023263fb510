"""Text (completion) prompts through GatewayService, on an in-process platform with two models:
`base`, a Triton model without a chat template (a base model, like Gemma 3 270M) on a stand-in
Triton that records each prompt exactly as it arrives, and `hosted`, an OpenAI-compatible
backend (a protocol-faithful local server that records its requests) that takes chat and text.
A text prompt reaches the model as raw text, with no chat template, and the request log records
`{"text": ...}`; a chat prompt pinned to the base model is INVALID_ARGUMENT naming
`routing.model` (not INTERNAL) and never reaches Triton; unpinned, a chat prompt is never routed
to the base model and a text prompt only to models that continue text (the gateway requires
CAPABILITY_CHAT or CAPABILITY_COMPLETION); a text prompt takes no extra turns;
`genai complete` streams a text prompt."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import chat_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format, struct_pb2

from services import cli
from services.common import reasons
from services.common.status import ParsedError, error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.fake_triton import FakeTriton
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2

PROMPTS = {
    "capital-of.yaml": """
name: capital-of
description: A text prompt for a base model to continue.
text: "The capital of {{ country }} is"
variables:
  - {name: country, type: string, required: true}
parameters: {max_tokens: 8}
""",
    "ask.yaml": """
name: ask
description: A chat prompt.
messages:
  - {role: system, content: Be brief.}
  - {role: user, content: "{{ question }}"}
variables:
  - {name: question, type: string, required: true}
""",
    "complete.yaml": (Path(__file__).parents[3] / "prompts" / "complete.yaml").read_text(),
}

CATALOG = """
currency: USD
models:
  - name: hosted
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: good-0, kind: openai_compatible, endpoint: "{url}", backend_model: {model}}}
  - name: base
    capabilities: [completion, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 0, output: 0}}
    quality_tier: 9
    backends:
      - {{id: triton-base, kind: triton, endpoint: "{triton}", backend_model: zero_llm}}
"""


def _settings(backend: OpenAICompatibleServer, triton: FakeTriton, data: Path) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(url=backend.base_url, model=MODEL, triton=triton.address))
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt", "router", "inference", "gateway"],
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},  # content: redacted
                "online_evaluation": {"share": 0},
            },
            "router": {
                "catalog_file": str(catalog),
                "health_check_seconds": 60,
                "breaker_failures": 1000,
            },
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {
                        "name": "hosted",
                        "backends": [
                            {
                                "id": "good-0",
                                "kind": "openai_compatible",
                                "endpoint": backend.base_url,
                                "provider_model": MODEL,
                            }
                        ],
                    },
                    {
                        "name": "base",
                        "backends": [
                            {
                                "id": "triton-base",
                                "endpoint": triton.address,
                                "triton_model": "zero_llm",
                            }
                        ],
                    },
                ],
            },
        }
    )


class Running:
    """The platform, a gateway stub, and the two backends."""

    def __init__(
        self, platform: Platform, backend: OpenAICompatibleServer, triton: FakeTriton
    ) -> None:
        self.platform = platform
        self.backend = backend
        self.triton = triton
        self.channel = grpc.aio.insecure_channel(platform.address)
        self.stub: Stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)

    def generations(self) -> list[Any]:
        """The backend's chat completion calls (not its health checks)."""
        return [r for r in self.backend.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with (
        OpenAICompatibleServer(Behaviour(tokens=[" Paris", "."])) as backend,
        FakeTriton(reply=[" Rome", "."]) as triton,
    ):
        platform = await start_platform(_settings(backend, triton, tmp_path))
        started = Running(platform, backend, triton)
        try:
            folder = tmp_path / "prompts"
            folder.mkdir()
            for name, text in PROMPTS.items():
                (folder / name).write_text(text)
            report = await prompts_cli.seed_prompts(started.channel, folder)
            assert report.failures == 0, report.lines
            yield started
        finally:
            await started.channel.close(None)
            await platform.stop(grace=1)


def _request(prompt: str, model: str = "", **variables: Any) -> gs.StreamCompleteRequest:
    request = gs.StreamCompleteRequest(prompt=prompt)
    if model:
        request.routing.model = model
    request.variables.update(variables)
    return request


async def _stream(stub: Stub, request: gs.StreamCompleteRequest) -> list[Any]:
    return [m async for m in stub.StreamComplete(request, timeout=30)]


async def _failure(stub: Stub, request: gs.StreamCompleteRequest) -> tuple[ParsedError, list[str]]:
    received: list[str] = []

    async def drain() -> None:
        async for message in stub.StreamComplete(request, timeout=30):
            received.append(message.WhichOneof("event"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await drain()
    return error_details(raised.value), received


def _json(value: struct_pb2.Value) -> Any:
    """A logged input as plain JSON (a list of messages, or an object with the text)."""
    return json.loads(json_format.MessageToJson(value))


async def _last(running: Running) -> str:
    """The id of the newest logged request."""
    for _ in range(200):
        entries = (
            await running.stub.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=5)
        ).entries
        if entries:
            return entries[0].request_id
        await asyncio.sleep(0.02)
    raise AssertionError("the request log is empty")


async def _log(stub: Stub, request_id: str) -> gateway_pb2.RequestLogEntry:
    for _ in range(200):
        entries = (await stub.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=5)).entries
        for entry in entries:
            if entry.request_id == request_id:
                return entry
        await asyncio.sleep(0.02)
    raise AssertionError(f"request {request_id} is not in the request log")


async def test_a_text_prompt_reaches_a_base_model_as_raw_text_and_is_logged_as_text(
    running: Running,
) -> None:
    messages = await _stream(running.stub, _request("capital-of", "base", country="Italy"))

    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == " Rome."
    final = messages[-1].final
    assert (final.prompt, final.prompt_version, final.model) == ("capital-of", 1, "base")
    assert final.usage.input_tokens == 5  # the five words, no chat template around them
    assert running.triton.prompts == ["The capital of Italy is"]

    entry = await _log(running.stub, final.request_id)
    assert entry.status == "OK"
    assert _json(entry.input) == {"text": "The capital of Italy is"}
    assert entry.output == " Rome.", entry


async def test_the_logged_text_is_redacted_like_chat_messages(running: Running) -> None:
    messages = await _stream(
        running.stub, _request("capital-of", "base", country="ann@example.com's country")
    )

    assert running.triton.prompts == ["The capital of ann@example.com's country is"]
    entry = await _log(running.stub, messages[-1].final.request_id)
    assert _json(entry.input) == {"text": "The capital of [EMAIL]'s country is"}


async def test_a_text_prompt_on_an_openai_compatible_model_is_one_plain_turn(
    running: Running,
) -> None:
    messages = await _stream(running.stub, _request("capital-of", "hosted", country="France"))

    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == " Paris."
    # InferenceService got `text`: the OpenAI-compatible adapter sends it as the only turn.
    (call,) = running.generations()
    assert call.body["messages"] == [{"role": "user", "content": "The capital of France is"}]
    assert call.body["max_tokens"] == 8


async def test_a_chat_prompt_still_goes_as_chat_messages(running: Running) -> None:
    messages = await _stream(running.stub, _request("ask", "hosted", question="Capital?"))

    (call,) = running.generations()
    assert call.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital?"},
    ]
    entry = await _log(running.stub, messages[-1].final.request_id)
    assert _json(entry.input) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital?"},
    ]


async def test_a_chat_prompt_pinned_to_a_text_only_model_is_invalid_argument(
    running: Running,
) -> None:
    error, received = await _failure(running.stub, _request("ask", "base", question="Capital?"))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == reasons.FIELD_VIOLATION
    assert [v.field for v in error.field_violations] == ["routing.model"]
    description = error.field_violations[0].description
    assert "model 'base' takes text input only (it has no chat template)" in description
    assert "prompt 'ask' version 1 is a chat prompt" in description
    assert error.metadata["model"] == "base"
    assert received == ["start"]  # refused before any token
    assert running.triton.prompts == []

    entry = await _log(running.stub, await _last(running))
    assert entry.status == "INVALID_ARGUMENT"


async def test_an_unpinned_chat_prompt_never_routes_to_a_model_without_chat(
    running: Running,
) -> None:
    """Only `base` is at quality tier 9: without the chat requirement the router would pick
    it; with it, no model qualifies, and the router says why for each."""
    request = _request("ask", question="Capital?")
    request.routing.min_quality_tier = 9

    error, received = await _failure(running.stub, request)

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION, error
    assert error.reason == reasons.NO_ELIGIBLE_MODEL
    assert error.metadata["base"] == "lacks chat"
    assert "quality tier 5 < floor 9" in error.metadata["hosted"]
    assert received == []


async def test_unpinned_prompts_route_by_their_input(running: Running) -> None:
    """`base` is free and `hosted` is not: the cost policy would pick `base` for both, but
    only `base` continues raw text (completion) and only `hosted` takes chat."""
    text = await _stream(running.stub, _request("capital-of", country="Italy"))
    chat = await _stream(running.stub, _request("ask", question="Capital?"))

    assert (text[-1].final.model, chat[-1].final.model) == ("base", "hosted")
    assert running.triton.prompts == ["The capital of Italy is"]
    assert len(running.generations()) == 1


async def test_a_text_prompt_takes_no_extra_conversation_turns(running: Running) -> None:
    request = _request("capital-of", "hosted", country="France")
    request.messages.add(role=chat_pb2.CHAT_ROLE_USER, content="And Italy?")

    error, received = await _failure(running.stub, request)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["messages"]
    assert "is a text prompt (text_template)" in error.field_violations[0].description
    assert received == []
    assert not running.generations()


async def test_genai_complete_streams_a_text_completion(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [
        *("complete", "The capital of France is", "--model", "hosted", "--max-tokens", "5"),
        *("--target", running.platform.address),
    ]
    # The command runs its own event loop: in a thread, while this loop serves the platform.
    assert await asyncio.to_thread(cli.main, arguments) == 0

    captured = capsys.readouterr()
    assert captured.out.startswith(" Paris.")
    assert "[complete v1 on hosted/good-0: STOP" in captured.err
    (call,) = running.generations()
    assert call.body["messages"] == [{"role": "user", "content": "The capital of France is"}]
    assert call.body["max_tokens"] == 5


async def test_genai_complete_names_the_field_when_the_prompt_is_wrong(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["complete", "--prompt", "ask", "--model", "base"]
    arguments += ["--var", "question=Hi", "--target", running.platform.address]

    assert await asyncio.to_thread(cli.main, arguments) == 1

    assert "INVALID_ARGUMENT" in capsys.readouterr().err
