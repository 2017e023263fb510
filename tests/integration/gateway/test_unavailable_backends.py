"""A model whose backends are all down, through GatewayService, on an in-process platform with
two models: `up`, an OpenAI-compatible backend (a protocol-faithful local server), and `down`,
whose only endpoint refuses connections, so that its health check fails from the start.

A request pinned to `down` could be served once its backend is back, so the router's answer,
UNAVAILABLE (BACKEND_UNAVAILABLE) with a RetryInfo until the backend's next health probe,
reaches the caller of StreamComplete and Complete with its metadata: the backend and why it is
out, `next_probe_seconds`, and `up`'s static reason. Nothing is streamed, and no backend is
asked to generate."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc

from services.common import reasons
from services.common.status import ParsedError, error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.openai_server import MODEL, OpenAICompatibleServer

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2

HEALTH_CHECK_S = 30.0
NOWHERE = "http://127.0.0.1:1/v1"
"""Nothing listens on port 1: connections are refused."""

PROMPT = """
name: ask
description: A chat prompt.
messages:
  - {role: user, content: "{{ question }}"}
variables:
  - {name: question, type: string, required: true}
"""

CATALOG = """
currency: USD
models:
  - name: up
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: up-0, kind: openai_compatible, endpoint: "{url}", backend_model: {model}}}
  - name: down
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: down-0, kind: openai_compatible, endpoint: "{nowhere}", backend_model: {model}}}
"""


def _settings(backend: OpenAICompatibleServer, data: Path) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(url=backend.base_url, nowhere=NOWHERE, model=MODEL))
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt", "router", "inference", "gateway"],
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},
                "online_evaluation": {"share": 0},
            },
            "router": {"catalog_file": str(catalog), "health_check_seconds": HEALTH_CHECK_S},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {
                        "name": name,
                        "backends": [
                            {
                                "id": f"{name}-0",
                                "kind": "openai_compatible",
                                "endpoint": endpoint,
                                "provider_model": MODEL,
                            }
                        ],
                    }
                    for name, endpoint in (("up", backend.base_url), ("down", NOWHERE))
                ],
            },
        }
    )


class Running:
    """The platform, a gateway stub, and the backend that is up."""

    def __init__(self, platform: Platform, backend: OpenAICompatibleServer) -> None:
        self.platform = platform
        self.backend = backend
        self.channel = grpc.aio.insecure_channel(platform.address)
        self.stub: Stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)

    def generations(self) -> list[Any]:
        """The backend's chat completion calls (not its health checks)."""
        return [r for r in self.backend.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with OpenAICompatibleServer() as backend:
        platform = await start_platform(_settings(backend, tmp_path))
        started = Running(platform, backend)
        try:
            folder = tmp_path / "prompts"
            folder.mkdir()
            (folder / "ask.yaml").write_text(PROMPT)
            report = await prompts_cli.seed_prompts(started.channel, folder)
            assert report.failures == 0, report.lines
            yield started
        finally:
            await started.channel.close(None)
            await platform.stop(grace=1)


def _pinned_to_down() -> gs.StreamCompleteRequest:
    request = gs.StreamCompleteRequest(prompt="ask")
    request.routing.model = "down"
    request.variables.update({"question": "Capital of France?"})
    return request


def _assert_backend_unavailable(error: ParsedError) -> None:
    assert (error.code, error.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        reasons.BACKEND_UNAVAILABLE,
    ), error
    assert error.retry_after is not None
    assert HEALTH_CHECK_S - 20 < error.retry_after <= HEALTH_CHECK_S
    next_probe = error.metadata["next_probe_seconds"]
    assert float(next_probe) == pytest.approx(error.retry_after, abs=0.051)
    assert error.metadata["down/down-0"] == (
        f"failing health checks (last check: ConnectError), next probe in {next_probe} s"
    )
    assert error.metadata["up"] == "not the pinned model down"
    assert "down/down-0: failing health checks" in error.message


async def test_a_stream_pinned_to_a_model_whose_backend_is_down_is_unavailable_with_retry_info(
    running: Running,
) -> None:
    received: list[str] = []

    async def drain() -> None:
        async for message in running.stub.StreamComplete(_pinned_to_down(), timeout=30):
            received.append(message.WhichOneof("event"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await drain()

    _assert_backend_unavailable(error_details(raised.value))
    assert received == []
    assert running.generations() == []


async def test_a_unary_completion_pinned_to_a_model_whose_backend_is_down_is_unavailable(
    running: Running,
) -> None:
    unary = gs.CompleteRequest.FromString(_pinned_to_down().SerializeToString())

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await running.stub.Complete(unary, timeout=30)

    _assert_backend_unavailable(error_details(raised.value))
    assert running.generations() == []
