"""The OpenAI-compatible HTTP API on an in-process platform (port 0), driven by the `openai`
SDK and httpx: `hosted` and `flaky` are OpenAI-compatible backends (the protocol-faithful
local server of `tests/support/openai_server.py`), `base` a text model on a stand-in Triton,
and `all-minilm-l6-v2` an embedding model on a stand-in Triton that embeds.

Inline chat and text completions, `prompt:` models (variables, `@label`, `@version`), the
experiment header, `response_format`, idempotent replays, embeddings (logged and charged),
the catalog, every error status (401, 403, 404, 429, 503 with the backend's Retry-After, 504),
a stream that breaks mid-way (an error event, no `[DONE]`), and the client that goes away or
stops reading (the generation cancelled and logged so)."""

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import openai
import pytest
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from openai.types.chat import ChatCompletionUserMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.fake_triton import FakeTriton
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer, counted

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2
KEY_ENV = "GENAI_TEST_PROVIDER_KEY"
EMBEDDER = "all-minilm-l6-v2"

PROMPTS = {
    "greet.yaml": """
name: greet
messages:
  - role: user
    content: "Say hello to {{ who }}."
variables:
  - {name: who, type: string, required: true}
""",
    "complete.yaml": (Path(__file__).parents[3] / "prompts" / "complete.yaml").read_text(),
}

CATALOG = """
currency: USD
models:
  - name: hosted
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: good-0, kind: openai_compatible, endpoint: "{good}", backend_model: {model}}}
  - name: flaky
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    quality_tier: 5
    pinned_only: true
    backends:
      - {{id: bad-0, kind: openai_compatible, endpoint: "{bad}", backend_model: {model}}}
  - name: base
    capabilities: [completion, streaming]
    max_context_tokens: 100000
    max_output_tokens: 100000
    price_per_million_tokens: {{input: 0, output: 0}}
    quality_tier: 3
    backends:
      - {{id: triton-base, kind: triton, endpoint: "{triton}", backend_model: zero_llm}}
  - name: {embedder}
    capabilities: [embeddings]
    max_context_tokens: 256
    max_output_tokens: 1
    price_per_million_tokens: {{input: 1000, output: 0}}
    quality_tier: 1
    weight: 0
    pinned_only: true
    backends:
      - {{id: triton-minilm, kind: triton, endpoint: "{embeddings}", backend_model: minilm}}
"""


class EmbeddingTriton(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """A stand-in Triton serving `minilm`: each text's embedding is (words, 1, 0.5), its input
    tokens its words."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    async def __aenter__(self) -> "EmbeddingTriton":
        await self._server.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._server.stop(grace=None)

    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelStatistics(
        self, request: Any, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        return service_pb2.ModelStatisticsResponse()

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: Any
    ) -> service_pb2.ModelInferResponse:
        raw = request.raw_input_contents[0]
        texts: list[str] = []
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            texts.append(raw[offset + 4 : offset + 4 + length].decode())
            offset += 4 + length
        self.texts.extend(texts)
        words = [len(text.split()) for text in texts]
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="embedding", datatype="FP32", shape=[len(texts), 3])
        response.raw_output_contents.append(
            b"".join(struct.pack("<3f", float(n), 1.0, 0.5) for n in words)
        )
        response.outputs.add(name="num_input_tokens", datatype="INT32", shape=[len(texts), 1])
        response.raw_output_contents.append(struct.pack(f"<{len(words)}i", *words))
        return response


def _backend(backend_id: str, endpoint: str) -> dict[str, Any]:
    return {
        "id": backend_id,
        "kind": "openai_compatible",
        "endpoint": endpoint,
        "provider_model": MODEL,
        "api_key_env": KEY_ENV,
    }


def _settings(
    good: OpenAICompatibleServer,
    bad: OpenAICompatibleServer,
    triton: FakeTriton,
    embeddings: EmbeddingTriton,
    data: Path,
    **http: Any,
) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(
        CATALOG.format(
            good=good.base_url,
            bad=bad.base_url,
            model=MODEL,
            triton=triton.address,
            embeddings=f"127.0.0.1:{embeddings.port}",
            embedder=EMBEDDER,
        )
    )
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
            "server": {
                "port": 0,
                "grace_seconds": 1,
                "http": {"send_timeout_seconds": 0.5, **http},
            },
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
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
                    {"name": "hosted", "backends": [_backend("good-0", good.base_url)]},
                    {"name": "flaky", "backends": [_backend("bad-0", bad.base_url)]},
                    {
                        "name": "base",
                        "backends": [
                            {
                                "id": "triton-base",
                                "endpoint": triton.address,
                                "triton_model": "zero_llm",
                            }
                        ],
                        "max_output_tokens": 100000,
                    },
                    {
                        "name": EMBEDDER,
                        "task": "embedding",
                        "backends": [
                            {
                                "id": "triton-minilm",
                                "endpoint": f"127.0.0.1:{embeddings.port}",
                                "triton_model": "minilm",
                            }
                        ],
                        "max_context_tokens": 256,
                        "max_output_tokens": 1,
                        "default_max_tokens": 1,
                    },
                ],
            },
        }
    )


class Running:
    """The platform, its HTTP API, the backends, and keys: the development platform admin of
    tenant `default`, a viewer of it, and a member of `acme` (one request per minute)."""

    def __init__(
        self,
        platform: Platform,
        admin: str,
        good: OpenAICompatibleServer,
        bad: OpenAICompatibleServer,
        triton: FakeTriton,
        embeddings: EmbeddingTriton,
    ) -> None:
        assert platform.http_port is not None, "the platform serves no HTTP API"
        self.platform = platform
        self.admin = admin
        self.good = good
        self.bad = bad
        self.triton = triton
        self.embeddings = embeddings
        self.url = f"http://127.0.0.1:{platform.http_port}"
        self.viewer = ""
        self.acme = ""
        self.channel = create_channel(platform.address, metadata=api_key_metadata(admin))
        self.stub: Stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.http = httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {admin}"}, timeout=30
        )
        self._clients: list[openai.AsyncOpenAI] = []

    def sdk(self, key: str = "") -> openai.AsyncOpenAI:
        """An SDK client with `key` (default: the admin's), closed with the platform."""
        client = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=key or self.admin, max_retries=0, timeout=30
        )
        self._clients.append(client)
        return client

    def metric(self, name: str, **labels: str) -> float:
        registry = self.platform.metrics_registry
        assert registry is not None
        return registry.get_sample_value(name, labels) or 0.0

    async def logs(self, count: int) -> list[gateway_pb2.RequestLogEntry]:
        """The newest `count` request-log entries, newest first (waiting for them)."""
        for _ in range(300):
            page = await self.stub.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=5)
            if len(page.entries) >= count:
                return list(page.entries)
            await asyncio.sleep(0.02)
        raise AssertionError(f"the request log has fewer than {count} entries")

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        await self.http.aclose()
        await self.channel.close(None)
        await self.platform.stop(grace=1)


async def _start(
    tmp_path: Path,
    good: OpenAICompatibleServer,
    bad: OpenAICompatibleServer,
    triton: FakeTriton,
    embeddings: EmbeddingTriton,
    **http: Any,
) -> Running:
    platform = await start_platform(_settings(good, bad, triton, embeddings, tmp_path, **http))
    assert platform.tenants is not None
    dev = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
    running = Running(platform, dev.secret, good, bad, triton, embeddings)
    try:
        viewer = await running.stub.CreateApiKey(
            gs.CreateApiKeyRequest(display_name="viewer", role=gateway_pb2.ROLE_VIEWER),
            timeout=10,
        )
        running.viewer = viewer.secret
        await running.stub.CreateTenant(
            gs.CreateTenantRequest(
                tenant=gateway_pb2.Tenant(
                    id="acme", quota=gateway_pb2.TenantQuota(requests_per_minute=1)
                )
            ),
            timeout=10,
        )
        member = await running.stub.CreateApiKey(
            gs.CreateApiKeyRequest(tenant_id="acme", role=gateway_pb2.ROLE_MEMBER), timeout=10
        )
        running.acme = member.secret
        folder = tmp_path / "prompts"
        folder.mkdir(exist_ok=True)
        for name, text in PROMPTS.items():
            (folder / name).write_text(text)
        report = await prompts_cli.seed_prompts(running.channel, folder)
        assert report.failures == 0, report.lines
    except BaseException:
        await running.close()
        raise
    return running


@pytest.fixture
async def backends(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[OpenAICompatibleServer, OpenAICompatibleServer, FakeTriton, Any]]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    async with (
        OpenAICompatibleServer(Behaviour(), api_key="sk-test") as good,
        OpenAICompatibleServer(
            Behaviour(status=503, headers={"Retry-After": "7"}), api_key="sk-test"
        ) as bad,
        FakeTriton(reply=[" Paris", "."]) as triton,
        EmbeddingTriton() as embeddings,
    ):
        yield good, bad, triton, embeddings


@pytest.fixture
async def running(backends: Any, tmp_path: Path) -> AsyncIterator[Running]:
    started = await _start(tmp_path, *backends)
    try:
        yield started
    finally:
        await started.close()


def _generations(server: OpenAICompatibleServer) -> list[Any]:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def _events(text: str) -> list[str]:
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.strip()]


USER: ChatCompletionUserMessageParam = {"role": "user", "content": "Say hi."}


# ------------------------------------------------------------------------------ completions


async def test_an_inline_chat_through_the_sdk_whole_and_streamed(running: Running) -> None:
    client = running.sdk()
    raw = await client.chat.completions.with_raw_response.create(
        model="hosted",
        messages=[{"role": "system", "content": "Be brief."}, USER],
        max_tokens=20,
        temperature=0,
        n=1,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.model == "hosted"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-genai-model"] == "hosted"
    assert raw.headers["x-genai-backend"] == "good-0"
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert (completion.model_extra or {})["genai"]["backendId"] == "good-0"
    sent = _generations(running.good)[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, USER]
    assert sent["max_tokens"] == 20

    stream = await client.chat.completions.create(
        model="hosted", messages=[USER], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    entries = await running.logs(2)
    assert [e.method for e in entries] == ["openai/v1/chat/completions"] * 2
    assert entries[0].metadata.model == "hosted"


async def test_an_inline_text_completion_reaches_the_model_as_raw_text(running: Running) -> None:
    completion = await running.sdk().completions.create(
        model="base", prompt="The capital of France is", max_tokens=8
    )
    assert completion.choices[0].text == " Paris."
    assert completion.model == "base"
    assert running.triton.prompts[-1] == "The capital of France is"
    (entry,) = await running.logs(1)
    assert entry.method == "openai/v1/completions"


async def test_prompt_models_with_variables_labels_and_versions(running: Running) -> None:
    client = running.sdk()
    for model in ("prompt:greet", "prompt:greet@production", "prompt:greet@1"):
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[], extra_body={"genai": {"variables": {"who": "Ann"}}}
        )
        assert raw.headers["x-genai-prompt"] == "greet@1"
        assert raw.parse().model == "hosted"  # the served catalog model, not the address
        assert _generations(running.good)[-1].body["messages"] == [
            {"role": "user", "content": "Say hello to Ann."}
        ]
    text = await client.completions.create(model="prompt:complete", prompt="Rome is")
    assert text.choices[0].text == " Paris."
    assert running.triton.prompts[-1] == "Rome is"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="prompt:greet@9", messages=[])
    assert missing.value.code == "prompt_version_not_found"
    assert missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="prompt:greet", messages=[])
    assert "who" in bad.value.message


async def test_the_experiment_header_serves_the_units_variant(running: Running) -> None:
    experiments = experiment_service_pb2_grpc.ExperimentServiceStub(running.channel)
    await experiments.CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                name="greeting",
                prompt="greet",
                variants=[
                    experiment_pb2.Variant(name="control", weight=1),
                    experiment_pb2.Variant(name="warm", weight=1, parameters={"temperature": 1}),
                ],
                control_variant="control",
                unit=experiment_pb2.ASSIGNMENT_UNIT_USER,
            ),
            start=True,
        ),
        timeout=5,
    )
    variants = set()
    for user in ("ann", "bob", "cyd", "dan", "eve", "fay"):
        response = await running.http.post(
            "/v1/chat/completions",
            json={"model": "prompt:greet", "messages": [], "genai": {"variables": {"who": user}}},
            headers={"x-genai-experiment": "greeting", "x-genai-user": user},
        )
        assert response.status_code == 200, response.text
        variant = response.headers["x-genai-variant"]
        assert response.json()["genai"]["variant"] == variant
        variants.add(variant)
    assert variants <= {"control", "warm"}


async def test_response_format_json_schema_is_checked(running: Running) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "required": ["city"],
        "properties": {"city": {"type": "string"}},
    }
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema},
    }
    running.good.behaviour = Behaviour(tokens=['{"city": ', '"Paris"}'])
    completion = await running.sdk().chat.completions.create(
        model="hosted",
        messages=[USER],
        response_format=response_format,
    )
    assert json.loads(completion.choices[0].message.content or "") == {"city": "Paris"}
    assert (completion.model_extra or {})["genai"]["outputJson"] == {"city": "Paris"}
    running.good.behaviour = Behaviour(tokens=["not", " json"])
    response = await running.http.post(
        "/v1/chat/completions",
        json={"model": "hosted", "messages": [USER], "response_format": response_format},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "output_schema_violation"


async def test_an_idempotency_key_replays_and_refuses_another_body(running: Running) -> None:
    headers = {"idempotency-key": "order-17"}
    body = {"model": "hosted", "messages": [USER]}
    first = await running.http.post("/v1/chat/completions", json=body, headers=headers)
    again = await running.http.post("/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"] == "chatcmpl-order-17"
    assert again.json()["choices"] == first.json()["choices"]
    assert again.headers["x-genai-model"] == "hosted"
    streamed = await running.http.post(
        "/v1/chat/completions", json={**body, "stream": True}, headers=headers
    )
    events = _events(streamed.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hello, world!"
    assert len(_generations(running.good)) == 1  # generated once
    other = await running.http.post(
        "/v1/chat/completions", json={**body, "max_tokens": 3}, headers=headers
    )
    assert other.status_code == 409
    assert other.headers["x-should-retry"] == "false"
    assert other.json()["error"]["code"] == "request_id_reused"


# ------------------------------------------------------------------------------ other routes


async def test_embeddings_are_logged_and_charged(running: Running) -> None:
    settled = running.metric("genai_gateway_quota_settled_tokens_total", tenant="default")
    result = await running.sdk().embeddings.create(model=EMBEDDER, input=["one two", "three"])
    assert [d.embedding for d in result.data] == [[2.0, 1.0, 0.5], [1.0, 1.0, 0.5]]
    assert result.model == EMBEDDER
    assert result.usage.prompt_tokens == 3
    assert running.embeddings.texts == ["one two", "three"]
    floats = await running.http.post(
        "/v1/embeddings", json={"model": EMBEDDER, "input": "four", "encoding_format": "float"}
    )
    assert floats.json()["data"][0]["embedding"] == [1.0, 1.0, 0.5]
    entries = await running.logs(2)
    assert [e.method for e in entries] == ["openai/v1/embeddings"] * 2
    assert entries[1].metadata.usage.input_tokens == 3
    assert running.metric("genai_gateway_quota_settled_tokens_total", tenant="default") == (
        settled + 4
    )
    wrong = await running.http.post(
        "/v1/embeddings", json={"model": EMBEDDER, "input": "x", "dimensions": 3}
    )
    assert wrong.status_code == 200
    refused = await running.http.post(
        "/v1/embeddings", json={"model": EMBEDDER, "input": "x", "dimensions": 384}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "dimensions"


async def test_the_catalog(running: Running) -> None:
    client = running.sdk(running.viewer)
    listed = [model.id async for model in client.models.list()]
    assert {"hosted", "flaky", "base", EMBEDDER} <= set(listed)
    model = await client.models.retrieve("hosted")
    assert (model.id, model.owned_by) == ("hosted", "genai-platform")
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-9")


# ------------------------------------------------------------------------------ error statuses


async def test_each_error_has_its_status(running: Running) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown_key:
        await running.sdk("gk_nope_nope").chat.completions.create(model="hosted", messages=[USER])
    assert unknown_key.value.response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.PermissionDeniedError):
        await running.sdk(running.viewer).chat.completions.create(model="hosted", messages=[USER])
    with pytest.raises(openai.NotFoundError) as unknown_model:
        await running.sdk().chat.completions.create(model="gpt-9", messages=[USER])
    assert unknown_model.value.param == "model"
    with pytest.raises(openai.BadRequestError) as tools:
        await running.sdk().chat.completions.create(
            model="hosted",
            messages=[USER],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert tools.value.param == "tools"

    acme = running.sdk(running.acme)
    await acme.chat.completions.create(model="hosted", messages=[USER])
    with pytest.raises(openai.RateLimitError) as limited:
        await acme.chat.completions.create(model="hosted", messages=[USER])
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.code == "rate_limit_exceeded"

    unavailable = await running.http.post(
        "/v1/chat/completions", json={"model": "flaky", "messages": [USER], "stream": True}
    )
    assert unavailable.status_code == 503
    # The gateway's own hint, as gRPC's RetryInfo says it (failover does not pass on the
    # backend's Retry-After: 7).
    assert unavailable.headers["retry-after"] == "1"
    assert unavailable.headers["retry-after-ms"] == "1000"
    assert unavailable.json()["error"]["type"] == "server_error"
    assert unavailable.json()["error"]["genai"]["reason"] == "BACKEND_UNAVAILABLE"


async def test_another_tenants_key_cannot_reach_this_tenants_prompts(running: Running) -> None:
    """`greet` is a prompt of tenant `default`: a member key of `acme` gets 404 for it, as
    for a prompt that does not exist (nothing says it exists elsewhere), and nothing is
    charged to `acme` for it."""
    served = await running.sdk().chat.completions.create(
        model="prompt:greet", messages=[], extra_body={"genai": {"variables": {"who": "Ann"}}}
    )
    assert served.choices[0].message.content

    with pytest.raises(openai.NotFoundError) as refused:
        await running.sdk(running.acme).chat.completions.create(
            model="prompt:greet", messages=[], extra_body={"genai": {"variables": {"who": "Ann"}}}
        )
    assert refused.value.code == "prompt_not_found"
    assert refused.value.param == "model"
    assert running.metric("genai_gateway_quota_settled_tokens_total", tenant="acme") == 0


async def test_the_request_deadline_is_504(backends: Any, tmp_path: Path) -> None:
    good = backends[0]
    good.behaviour = Behaviour(pace=2.0)
    running = await _start(tmp_path, *backends, request_timeout_seconds=0.5)
    try:
        response = await running.http.post(
            "/v1/chat/completions", json={"model": "hosted", "messages": [USER]}
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
    finally:
        await running.close()


# ------------------------------------------------------------------------------ streams


async def test_a_stream_that_breaks_mid_way_ends_with_an_error_event(running: Running) -> None:
    running.good.behaviour = Behaviour(tokens=counted(6), break_after=2)
    response = await running.http.post(
        "/v1/chat/completions", json={"model": "hosted", "messages": [USER], "stream": True}
    )
    assert response.status_code == 200, response.text
    events = _events(response.text)
    assert "[DONE]" not in events
    texts = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(texts) == "tok0 tok1 "
    error = json.loads(events[-1])["error"]
    assert error["type"] == "server_error"
    assert error["genai"]["reason"] == "STREAM_INTERRUPTED"

    stream = await running.sdk().chat.completions.create(
        model="hosted", messages=[USER], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_a_client_that_goes_away_cancels_the_generation(running: Running) -> None:
    running.good.behaviour = Behaviour(tokens=counted(500), pace=0.02)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.platform.http_port)
    writer.write(
        _raw_request(running.admin, {"model": "hosted", "messages": [USER], "stream": True})
    )
    await reader.readuntil(b"tok2")
    writer.close()
    generation = _generations(running.good)[-1]
    await asyncio.wait_for(generation.disconnected.wait(), 5)  # the backend call was cancelled
    (entry,) = await running.logs(1)
    assert entry.status == "CANCELLED"
    assert running.metric("genai_http_stream_aborts_total", reason="client_disconnect") == 1
    await _in_flight_drops_to_zero(running)


async def test_a_client_that_stops_reading_is_cut_off_and_logged_cancelled(
    running: Running,
) -> None:
    running.triton.reply = ["x" * 4096] * 20_000  # 80 MB: more than any socket buffers
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(client, ("127.0.0.1", running.platform.http_port))
        body = {"model": "base", "prompt": "Go", "stream": True}
        await loop.sock_sendall(client, _raw_request(running.admin, body, "/v1/completions"))
        (entry,) = await running.logs(1)  # never reading a byte
    finally:
        client.close()
    assert entry.status == "CANCELLED"
    assert entry.method == "openai/v1/completions"
    assert running.metric("genai_http_stream_aborts_total", reason="slow_client") == 1
    await _in_flight_drops_to_zero(running)


def _raw_request(key: str, body: Mapping[str, Any], path: str = "/v1/chat/completions") -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


async def _in_flight_drops_to_zero(running: Running) -> None:
    registry = running.platform.metrics_registry
    assert registry is not None
    for _ in range(100):
        values = [
            sample.value
            for metric in registry.collect()
            if metric.name == "genai_gateway_in_flight"
            for sample in metric.samples
        ]
        if not any(values):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"genai_gateway_in_flight stays at {values}")
