"""The gateway constrains decoding to a prompt version's output schema where the model can
follow it: on an in-process platform in front of an OpenAI-compatible test provider (which
decodes under `response_format` the way hosted providers do), a version with an output schema
routed to a model whose InferenceService settings say `guided_decoding` sends the schema as the
request's constraint; other models get none and rely on the schema check and repair, which stay
as the safety net everywhere. The final metadata, the request log and the metrics say whether
decoding was constrained, so the repairs it saved can be counted."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import routing_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc

from services.common import reasons
from services.common.clients import api_key_metadata, create_channel
from services.common.status import error_details
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2
KEY_ENV = "GENAI_TEST_PROVIDER_KEY"
SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
CITY = ['{"city": ', '"Paris"}']
PROSE = ["Paris", " is the capital"]

PROMPTS = {
    "city.yaml": """
name: city
messages:
  - role: user
    content: "Name the capital of {{ country }} as JSON."
variables:
  - {name: country, type: string, required: true}
output_schema:
  type: object
  required: [city]
  properties: {city: {type: string}}
processing:
  repair_invalid_json: true
""",
    "city-strict.yaml": """
name: city-strict
messages:
  - role: user
    content: "Name the capital of {{ country }} as JSON."
variables:
  - {name: country, type: string, required: true}
output_schema:
  type: object
  required: [city]
  properties: {city: {type: string}}
""",
    "chat.yaml": """
name: chat
messages:
  - role: user
    content: "{{ message }}"
variables:
  - {name: message, type: string, required: true}
""",
}

CATALOG = """
currency: USD
models:
  - name: guided
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 100000
    max_output_tokens: 1000
    quality_tier: 5
    pinned_only: true
    backends:
      - {{id: good-0, kind: openai_compatible, endpoint: "{good}", backend_model: {model}}}
  - name: plain
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    quality_tier: 7
    backends:
      - {{id: good-1, kind: openai_compatible, endpoint: "{good}", backend_model: {model}}}
  - name: guided-down
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 100000
    max_output_tokens: 1000
    quality_tier: 9
    backends:
      - {{id: bad-0, kind: openai_compatible, endpoint: "{bad}", backend_model: {model}}}
"""


def _backend(backend_id: str, endpoint: str) -> dict[str, Any]:
    return {
        "id": backend_id,
        "kind": "openai_compatible",
        "endpoint": endpoint,
        "provider_model": MODEL,
        "api_key_env": KEY_ENV,
    }


class Running:
    """The platform, the dev tenant's gateway stub and the two providers."""

    def __init__(
        self,
        platform: Platform,
        key: str,
        good: OpenAICompatibleServer,
        bad: OpenAICompatibleServer,
    ) -> None:
        self.platform = platform
        self.good = good
        self.bad = bad
        self.channel = create_channel(platform.address, metadata=api_key_metadata(key))
        self.stub: Stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)

    def checks(self, model: str, constrained: str, result: str) -> float:
        registry = self.platform.metrics_registry
        assert registry is not None
        labels = {"gen_ai_request_model": model, "constrained": constrained, "result": result}
        return registry.get_sample_value("genai_gateway_output_schema_checks_total", labels) or 0

    def chat_requests(self, server: OpenAICompatibleServer) -> list[dict[str, Any]]:
        return [r.body for r in server.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    async with (
        OpenAICompatibleServer(Behaviour(), api_key="sk-test") as good,
        OpenAICompatibleServer(Behaviour(status=503), api_key="sk-test") as bad,
    ):
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(CATALOG.format(good=good.base_url, bad=bad.base_url, model=MODEL))
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
                "server": {"port": 0, "grace_seconds": 2},
                "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
                "gateway": {
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
                    "request_log": {"max_delay_seconds": 0.01},
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
                            "name": "guided",
                            "backends": [_backend("good-0", good.base_url)],
                            "guided_decoding": True,
                        },
                        {"name": "plain", "backends": [_backend("good-1", good.base_url)]},
                        {
                            "name": "guided-down",
                            "backends": [_backend("bad-0", bad.base_url)],
                            "guided_decoding": True,
                        },
                    ],
                },
            }
        )
        platform = await start_platform(settings)
        assert platform.tenants is not None
        credentials = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
        started = Running(platform, credentials.secret, good, bad)
        folder = tmp_path / "prompts"
        folder.mkdir()
        for name, text in PROMPTS.items():
            (folder / name).write_text(text)
        report = await prompts_cli.seed_prompts(started.channel, folder)
        assert report.failures == 0, report.lines
        try:
            yield started
        finally:
            await started.channel.close(None)
            await platform.stop(grace=1)


def _request(prompt: str = "city", model: str = "guided", **variables: Any) -> Any:
    request = gs.StreamCompleteRequest(prompt=prompt)
    if model:
        request.routing.model = model
    request.variables.update(variables or {"country": "France"})
    return request


async def _stream(stub: Stub, request: gs.StreamCompleteRequest) -> list[Any]:
    return [m async for m in stub.StreamComplete(request, timeout=30)]


async def _logged(
    stub: Stub, request_id: str = "", status: str = "OK"
) -> gateway_pb2.RequestLogEntry:
    """The request log's entry of `request_id` (any request's when empty) with `status`; a
    failed request's record is written as its error goes out, so it may come a moment later."""
    for _ in range(200):
        entries = (await stub.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=5)).entries
        for entry in entries:
            if entry.request_id == (request_id or entry.request_id) and entry.status == status:
                return entry
        await asyncio.sleep(0.02)
    raise AssertionError(f"no request {request_id} with status {status} in the request log")


async def test_a_guided_model_decodes_under_the_schema_and_needs_no_repair(
    running: Running,
) -> None:
    running.good.behaviour = Behaviour(tokens=PROSE, json_tokens=CITY)

    messages = await _stream(running.stub, _request())

    final = messages[-1].final
    assert [m.delta.text for m in messages if m.HasField("delta")] == ['{"city": "Paris"}']
    processing = final.processing
    assert (processing.constrained_decoding, processing.schema_valid, processing.repaired) == (
        True,
        True,
        False,
    )
    [sent] = running.chat_requests(running.good)
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }
    logged = await _logged(running.stub, final.request_id)
    assert logged.metadata.processing.constrained_decoding is True
    assert running.checks("guided", "true", "valid") == 1


async def test_a_model_without_guided_decoding_gets_no_constraint_and_the_repair_steps_in(
    running: Running,
) -> None:
    running.good.behaviour = Behaviour(replies=[PROSE, CITY], json_tokens=CITY)

    final = (await _stream(running.stub, _request(model="plain")))[-1].final

    processing = final.processing
    assert (processing.constrained_decoding, processing.schema_valid, processing.repaired) == (
        False,
        True,
        True,
    )
    assert [("response_format" in body) for body in running.chat_requests(running.good)] == [
        False,
        False,
    ]
    logged = await _logged(running.stub, final.request_id)
    assert logged.metadata.processing.constrained_decoding is False
    assert running.checks("plain", "false", "repaired") == 1


async def test_a_prompt_without_an_output_schema_is_never_constrained(running: Running) -> None:
    running.good.behaviour = Behaviour(tokens=PROSE, json_tokens=CITY)

    final = (await _stream(running.stub, _request("chat", message="Hi")))[-1].final

    assert final.processing.constrained_decoding is False
    assert "response_format" not in running.chat_requests(running.good)[0]
    assert (
        running.checks("guided", "false", "valid") == running.checks("guided", "true", "valid") == 0
    )


async def test_a_constrained_output_that_still_fails_the_schema_fails_the_request(
    running: Running,
) -> None:
    """Constraining does not replace the check: an output cut short (here: a provider that did
    not keep to the schema) still fails with OUTPUT_SCHEMA_VIOLATION, logged (with that
    status, not INTERNAL) as constrained."""
    running.good.behaviour = Behaviour(json_tokens=['{"town": "Paris"}'])

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _stream(running.stub, _request("city-strict"))

    error = error_details(raised.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.OUTPUT_SCHEMA_VIOLATION,
    )
    entry = await _logged(running.stub, status="FAILED_PRECONDITION")
    assert entry.metadata.processing.constrained_decoding is True
    assert running.checks("guided", "true", "invalid") == 1


async def test_a_schema_the_provider_refuses_is_retried_on_the_same_backend_without_it(
    running: Running,
) -> None:
    running.good.behaviour = Behaviour(tokens=CITY, response_format_error="schema too complex")

    final = (await _stream(running.stub, _request()))[-1].final

    assert [(a.backend_id, a.status) for a in final.attempts] == [
        ("good-0", "INVALID_ARGUMENT"),
        ("good-0", "OK"),
    ]
    assert "schema too complex" in final.attempts[0].error
    assert (final.processing.constrained_decoding, final.processing.schema_valid) == (False, True)
    assert [("response_format" in body) for body in running.chat_requests(running.good)] == [
        True,
        False,
    ]


async def test_failover_sends_the_constraint_only_to_candidates_that_can_follow_it(
    running: Running,
) -> None:
    """The best candidate (guided, but down) gets the schema; the next one, whose model has no
    guided decoding, gets the request without it."""
    running.good.behaviour = Behaviour(replies=[PROSE, CITY])
    request = _request(model="")
    request.routing.policy = routing_pb2.ROUTING_POLICY_QUALITY

    final = (await _stream(running.stub, request))[-1].final

    assert [(a.backend_id, a.status) for a in final.attempts[:2]] == [
        ("bad-0", "UNAVAILABLE"),
        ("good-1", "OK"),
    ]
    assert "response_format" in running.chat_requests(running.bad)[0]
    assert "response_format" not in running.chat_requests(running.good)[0]
    assert (final.processing.constrained_decoding, final.processing.repaired) == (False, True)
