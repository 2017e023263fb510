"""`GatewayApi`, the gateway's wire-free front door (what the OpenAI-compatible HTTP API calls),
on an in-process platform with API-key auth: `chat` (a Triton model with a chat template) and
`base` (one without, text only) on a stand-in Triton that records each prompt as it arrives,
and `all-minilm-l6-v2` on a stand-in Triton that embeds like the `minilm` facade.

Inline prompts run through the same pipeline as StreamComplete: the request's messages are the
whole conversation (raw text for a text completion), routed to the pinned model, under the
tenant's quota, processed, logged with the transport's method, measured and replayable by
`request_id` (the fingerprint covers the inline prompt and the schema). A request's output
schema is checked like a version's. Embeddings are priced from the catalog, reserved and
settled in the quota, and logged; the catalog comes from RouterService."""

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from genai.common.v1 import chat_pb2, routing_pb2
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common import reasons
from services.common.auth import Principal, principal_scope
from services.common.clients import api_key_metadata, create_channel
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.common.policy import Role
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.adapters.tenant_store import SqlTenantStore
from services.gateway.api import GatewayApi
from services.gateway.core.auth import ApiKeyAuthenticator
from services.gateway.core.request_log import RequestLogQuery, RequestLogRecord
from services.gateway.core.tenants import TenantQuota
from services.gateway.embeddings import EmbeddingRequest
from services.gateway.inline import InlinePrompt
from services.gateway.outcome import (
    OPENAI_CHAT_METHOD,
    OPENAI_COMPLETIONS_METHOD,
    OPENAI_EMBEDDINGS_METHOD,
    STREAM_METHOD,
    Caller,
    Outcome,
    Request,
    Response,
)
from services.gateway.servicer import SERVICE_NAME, GatewayServicer
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.fake_triton import FakeTriton

gs = gateway_service_pb2
EMBEDDING_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 384
CATALOG = """
currency: USD
models:
  - name: chat
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{triton}", backend_model: zero_llm}}
  - name: base
    capabilities: [completion, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{triton}", backend_model: zero_llm}}
  - name: all-minilm-l6-v2
    capabilities: [embeddings]
    max_context_tokens: 256
    max_output_tokens: 1
    price_per_million_tokens: {{input: 2, output: 0}}
    weight: 0
    pinned_only: true
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{embedder}", backend_model: minilm}}
"""
PROMPTS = {
    "ask.yaml": """
name: ask
messages:
  - {role: system, content: Be brief.}
  - {role: user, content: "{{ question }}"}
variables:
  - {name: question, type: string, required: true}
""",
    "extract.yaml": """
name: extract
messages:
  - {role: user, content: "City of {{ text }}?"}
variables:
  - {name: text, type: string, required: true}
output_schema:
  type: object
  properties: {city: {type: string}}
  required: [city]
""",
}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


class _Embedder(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The `minilm` facade's interface (text_input [n, 1] -> embedding FP32 [n, 384],
    num_input_tokens INT32 [n, 1]): a unit vector per text, at a position its hash picks, and
    its words plus [CLS] and [SEP] as its tokens."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelStatistics(
        self, request: Any, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        return service_pb2.ModelStatisticsResponse()

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: Any
    ) -> service_pb2.ModelInferResponse:
        raw = request.raw_input_contents[0]
        texts = []
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            texts.append(raw[offset + 4 : offset + 4 + length].decode())
            offset += 4 + length
        self.texts.extend(texts)
        vectors = b""
        for text in texts:
            values = [0.0] * DIMENSIONS
            values[position(text)] = 1.0
            vectors += struct.pack(f"<{DIMENSIONS}f", *values)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="embedding", datatype="FP32", shape=[len(texts), DIMENSIONS])
        response.raw_output_contents.append(vectors)
        response.outputs.add(name="num_input_tokens", datatype="INT32", shape=[len(texts), 1])
        response.raw_output_contents.append(
            struct.pack(f"<{len(texts)}i", *(len(t.split()) + 2 for t in texts))
        )
        return response


def position(text: str) -> int:
    """Where `_Embedder` puts the 1 of `text`'s vector."""
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % DIMENSIONS


class Running:
    """The platform, its `GatewayApi`, the stand-ins, and callers of two tenants."""

    def __init__(
        self,
        platform: Platform,
        triton: FakeTriton,
        embedder: _Embedder,
        data: Path,
        dev_key: str,
    ) -> None:
        self.platform = platform
        self.triton = triton
        self.embedder = embedder
        servicer = next(r.servicer for r in platform.registrations if r.name == SERVICE_NAME)
        assert isinstance(servicer, GatewayServicer)
        self.api: GatewayApi = servicer.api
        self.log = SqlRequestLogStore.from_url(f"sqlite+aiosqlite:///{data / 'gateway.db'}")
        self.channel = create_channel(platform.address, metadata=api_key_metadata(dev_key))
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.principals: dict[str, Principal] = {}
        self.keys: dict[str, str] = {}

    def caller(self, tenant: str = "acme", method: str = OPENAI_CHAT_METHOD) -> Caller:
        return self.api.caller(self.principals[tenant], method)

    async def logged(self, tenant: str, request_id: str) -> RequestLogRecord:
        for _ in range(300):
            record = await self.log.get(tenant, request_id)
            if record is not None:
                return record
            await asyncio.sleep(0.02)
        raise AssertionError(f"request {request_id} is not in the request log")

    async def logged_with(self, tenant: str, status: str) -> RequestLogRecord:
        """The tenant's newest logged request with `status` (waiting for the log's writer)."""
        for _ in range(300):
            page = await self.log.list(
                RequestLogQuery(tenant_id=tenant, status=status, page_size=1)
            )
            if page.entries:
                return page.entries[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"tenant {tenant} has no logged request with status {status}")

    def sample(self, name: str, **labels: str) -> float:
        assert self.platform.metrics_registry is not None
        return self.platform.metrics_registry.get_sample_value(name, labels) or 0.0


def _settings(triton: FakeTriton, embedder: str, data: Path) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(triton=triton.address, embedder=embedder))
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key"},
            "services": ["prompt", "router", "inference", "gateway"],
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01, "content": "full"},
                "online_evaluation": {"share": 0},
            },
            "router": {"catalog_file": str(catalog), "health_check_seconds": 60},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {
                        "name": "chat",
                        "backends": [
                            {
                                "id": "triton-0",
                                "endpoint": triton.address,
                                "triton_model": "zero_llm",
                            }
                        ],
                        "chat_template": "builtin:chatml",
                    },
                    {
                        "name": "base",
                        "backends": [
                            {
                                "id": "triton-0",
                                "endpoint": triton.address,
                                "triton_model": "zero_llm",
                            }
                        ],
                    },
                    {
                        "name": EMBEDDING_MODEL,
                        "task": "embedding",
                        "backends": [
                            {"id": "triton-0", "endpoint": embedder, "triton_model": "minilm"}
                        ],
                        "max_context_tokens": 256,
                        "max_output_tokens": 1,
                        "default_max_tokens": 1,
                    },
                ],
            },
        }
    )


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    embedder = _Embedder()
    embedding_server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(embedder, embedding_server)
    port = embedding_server.add_insecure_port("127.0.0.1:0")
    await embedding_server.start()
    try:
        async with FakeTriton(reply=[" Paris", "."]) as triton:
            platform = await start_platform(_settings(triton, f"127.0.0.1:{port}", tmp_path))
            tenants = platform.tenants
            assert tenants is not None
            dev = await ensure_dev_credentials(tenants, tmp_path / "dev-key")
            started = Running(platform, triton, embedder, tmp_path, dev.secret)
            try:
                await _tenants(started, tenants)
                await _seed(started, tenants, tmp_path / "prompts")
                yield started
            finally:
                await started.channel.close(None)
                await platform.stop(grace=1)
                await started.log.close()
    finally:
        await embedding_server.stop(grace=None)


async def _tenants(running: Running, tenants: SqlTenantStore) -> None:
    """Tenants `acme` (no limits) and `tight` (one request a minute), each with a member key,
    and their principals as the API-key authenticator makes them."""
    authenticator = ApiKeyAuthenticator(tenants)
    for tenant, quota in (("acme", TenantQuota()), ("tight", TenantQuota(requests_per_minute=1))):
        await tenants.create_tenant(tenant, tenant)
        await tenants.update_quota(tenant, quota)
        _, secret = await tenants.create_api_key(tenant, "http", role=Role.MEMBER)
        running.keys[tenant] = secret
        running.principals[tenant] = await authenticator.authenticate(
            STREAM_METHOD, {"authorization": f"Bearer {secret}"}
        )


async def _seed(running: Running, tenants: SqlTenantStore, folder: Path) -> None:
    """acme's registry prompts, seeded with a key of its admin."""
    await asyncio.to_thread(_write_prompts, folder)
    _, secret = await tenants.create_api_key("acme", "admin", role=Role.TENANT_ADMIN)
    channel = create_channel(running.platform.address, metadata=api_key_metadata(secret))
    try:
        assert (await prompts_cli.seed_prompts(channel, folder)).failures == 0
    finally:
        await channel.close(None)


def _write_prompts(folder: Path) -> None:
    folder.mkdir()
    for name, text in PROMPTS.items():
        (folder / name).write_text(text)


def _chat(*turns: tuple[int, str], model: str = "chat", **fields: Any) -> Request:
    request = Request(**fields)
    request.routing.model = model
    for role, content in turns:
        request.messages.add(role=role, content=content)
    return request


USER = chat_pb2.CHAT_ROLE_USER
SYSTEM = chat_pb2.CHAT_ROLE_SYSTEM


async def _complete(
    running: Running,
    request: Request,
    *,
    tenant: str = "acme",
    method: str = OPENAI_CHAT_METHOD,
    inline: InlinePrompt | None = None,
    output_schema: Mapping[str, Any] | None = None,
    observed: list[tuple[str, str, str]] | None = None,
) -> list[Response]:
    """Runs one completion as the tenant's member (the principal current, as the HTTP API
    makes it); `observed` gets (event, model, backend) as each message comes."""
    outcomes: list[Outcome] = []
    messages: list[Response] = []
    with principal_scope(running.principals[tenant]):
        stream = running.api.complete(
            request,
            running.caller(tenant, method),
            time_left=30,
            inline=inline,
            output_schema=output_schema,
            observe=outcomes.append,
        )
        async for message in stream:
            messages.append(message)
            if observed is not None:
                [outcome] = outcomes
                event = message.WhichOneof("event") or ""
                observed.append((event, outcome.model, outcome.backend_id))
    assert len(outcomes) == 1
    return messages


async def _failure(
    running: Running, request: Request, *, tenant: str = "acme", **more: Any
) -> tuple[DomainError, list[str]]:
    """Runs one completion that must fail; returns the error and the events sent before."""
    received: list[str] = []

    async def run() -> None:
        with principal_scope(running.principals[tenant]):
            async for message in running.api.complete(
                request, running.caller(tenant), time_left=30, **more
            ):
                received.append(message.WhichOneof("event") or "")

    with pytest.raises(DomainError) as raised:
        await run()
    return raised.value, received


def _text(messages: list[Response]) -> str:
    return "".join(m.delta.text for m in messages if m.HasField("delta"))


# ------------------------------------------------------------------------------ inline chat


async def test_an_inline_conversation_runs_the_pipeline_and_is_logged_with_its_method(
    running: Running,
) -> None:
    observed: list[tuple[str, str, str]] = []
    request = _chat((SYSTEM, "Be brief."), (USER, "Capital of France?"), user_id="u-7")
    request.parameters.max_tokens = 5
    request.tags["app"] = "docs"

    messages = await _complete(running, request, inline=InlinePrompt(), observed=observed)

    assert [m.WhichOneof("event") for m in messages] == ["start", "delta", "delta", "final"]
    start, final = messages[0].start, messages[-1].final
    assert (start.prompt, start.prompt_version) == ("", 0)
    assert _text(messages) == " Paris."
    assert (final.model, final.backend_id, final.prompt) == ("chat", "triton-0", "")
    assert final.usage.output_tokens == 2
    assert final.cost.currency_code == "USD"
    # What serves is known at the first delta (for the HTTP API's headers).
    assert observed[1] == ("delta", "chat", "triton-0")
    # The conversation alone, rendered with the model's chat template.
    [prompt] = running.triton.prompts
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt
    assert "<|im_start|>user\nCapital of France?<|im_end|>" in prompt

    record = await running.logged("acme", final.request_id)
    assert (record.method, record.status, record.prompt) == ("openai/v1/chat/completions", "OK", "")
    assert record.input == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert (record.output, record.model, record.user_id) == (" Paris.", "chat", "u-7")
    assert dict(record.tags) == {"app": "docs"}
    assert (
        running.sample(
            "genai_gateway_requests_total", tenant="acme", method=OPENAI_CHAT_METHOD, code="OK"
        )
        == 1
    )
    assert running.sample("genai_gateway_in_flight", method=OPENAI_CHAT_METHOD) == 0


async def test_an_inline_text_goes_to_a_base_model_as_raw_text(running: Running) -> None:
    request = Request()
    request.routing.model = "base"

    messages = await _complete(
        running,
        request,
        method=OPENAI_COMPLETIONS_METHOD,
        inline=InlinePrompt(text="The capital of France is"),
    )

    assert _text(messages) == " Paris."
    assert running.triton.prompts == ["The capital of France is"]
    final = messages[-1].final
    assert final.usage.input_tokens == 5
    record = await running.logged("acme", final.request_id)
    assert record.method == "openai/v1/completions"
    assert record.input == {"text": "The capital of France is"}


async def test_an_inline_conversation_pinned_to_a_text_only_model_names_the_model(
    running: Running,
) -> None:
    error, received = await _failure(
        running, _chat((USER, "Hi"), model="base"), inline=InlinePrompt()
    )

    assert isinstance(error, InvalidArgument)
    [violation] = error.violations
    assert violation.field == "routing.model"
    assert "model 'base' takes text input only" in violation.description
    assert "/v1/completions" in violation.description
    assert received == ["start"]
    assert running.triton.prompts == []
    assert await running.logged_with("acme", "INVALID_ARGUMENT")


async def test_an_inline_conversation_pinned_to_an_embedding_model_names_the_model(
    running: Running,
) -> None:
    request = _chat((USER, "Hi"), model=EMBEDDING_MODEL)
    request.parameters.max_tokens = 1  # within the catalog's limits: InferenceService answers

    error, _ = await _failure(running, request, inline=InlinePrompt())

    assert isinstance(error, InvalidArgument)
    [violation] = error.violations
    assert violation.field == "routing.model"
    assert f"model {EMBEDDING_MODEL!r} is an embedding model" in violation.description
    assert running.embedder.texts == []


@pytest.mark.parametrize(
    ("request_", "inline", "fields"),
    [
        (_chat((USER, "Hi"), model=""), InlinePrompt(), ["routing.model"]),
        (_chat(model="chat"), InlinePrompt(), ["messages"]),
        (_chat((USER, "Hi"), prompt="ask"), InlinePrompt(), ["prompt"]),
        (_chat((USER, "Hi"), label="production"), InlinePrompt(), ["label"]),
        (_chat((USER, "Hi"), model="base"), InlinePrompt(text="Once"), ["messages"]),
        (_chat(model="base"), InlinePrompt(text=" "), ["inline.text"]),
    ],
    ids=["unpinned", "no-turns", "named-prompt", "label", "text-with-turns", "blank-text"],
)
async def test_a_bad_inline_request_is_refused_before_start_and_logged(
    running: Running, request_: Request, inline: InlinePrompt, fields: list[str]
) -> None:
    error, received = await _failure(running, request_, inline=inline)

    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == fields
    assert received == []
    assert running.triton.prompts == []
    assert await running.logged_with("acme", "INVALID_ARGUMENT")


async def test_a_closed_stream_is_logged_cancelled(running: Running) -> None:
    running.triton.reply = [" one", " two", " three"]
    with principal_scope(running.principals["acme"]):
        stream = running.api.complete(
            _chat((USER, "Count")), running.caller(), time_left=30, inline=InlinePrompt()
        )
        async for message in stream:
            if message.HasField("delta"):
                break
        await stream.aclose()

    record = await running.logged_with("acme", "CANCELLED")
    assert record.method == "openai/v1/chat/completions"
    assert running.sample("genai_gateway_in_flight", method=OPENAI_CHAT_METHOD) == 0


async def test_an_inline_request_is_under_the_tenants_quota(running: Running) -> None:
    await _complete(running, _chat((USER, "Hi")), tenant="tight", inline=InlinePrompt())

    error, received = await _failure(
        running, _chat((USER, "Again")), tenant="tight", inline=InlinePrompt()
    )

    assert isinstance(error, ResourceExhausted)
    assert error.reason == reasons.QUOTA_EXCEEDED
    assert received == []
    assert len(running.triton.prompts) == 1


async def test_feedback_on_an_inline_request_says_nothing_can_score_it(running: Running) -> None:
    messages = await _complete(running, _chat((USER, "Hi")), inline=InlinePrompt())
    feedback = gs.RecordFeedbackRequest(
        request_id=messages[-1].final.request_id, metric="thumbs", boolean_value=True
    )
    member = create_channel(
        running.platform.address, metadata=api_key_metadata(running.keys["acme"])
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway_service_pb2_grpc.GatewayServiceStub(member).RecordFeedback(
            feedback, timeout=10
        )
    await member.close(None)

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "served no registry prompt" in (raised.value.details() or "")


# ------------------------------------------------------------------------------ output schema


async def test_a_request_schema_checks_the_output_and_fills_output_json(running: Running) -> None:
    running.triton.reply = ['{"city": ', '"Paris"}']

    messages = await _complete(
        running, _chat((USER, "Where?")), inline=InlinePrompt(), output_schema=CITY
    )

    final = messages[-1].final
    assert final.processing.schema_valid
    assert json_format.MessageToDict(final.output_json) == {"city": "Paris"}


async def test_an_output_that_fails_the_request_schema_is_output_schema_violation(
    running: Running,
) -> None:
    error, received = await _failure(
        running, _chat((USER, "Where?")), inline=InlinePrompt(), output_schema=CITY
    )

    assert isinstance(error, FailedPrecondition)
    assert error.reason == reasons.OUTPUT_SCHEMA_VIOLATION
    assert received == ["start", "delta", "delta"]  # streamed: inline prompts never repair
    assert await running.logged_with("acme", "FAILED_PRECONDITION")


async def test_a_request_schema_must_be_valid_and_the_versions_own_wins_no_contest(
    running: Running,
) -> None:
    invalid, _ = await _failure(
        running, _chat((USER, "Hi")), inline=InlinePrompt(), output_schema={"type": 7}
    )
    versioned = Request(prompt="extract")
    versioned.variables.update({"text": "Paris"})
    with principal_scope(running.principals["acme"]):
        with pytest.raises(InvalidArgument) as raised:
            async for _ in running.api.complete(
                versioned, running.caller(), time_left=30, output_schema=CITY
            ):
                pass

    assert isinstance(invalid, InvalidArgument)
    assert [v.field for v in invalid.violations] == ["output_schema"]
    [violation] = raised.value.violations
    assert violation.field == "output_schema"
    assert "prompt 'extract' version 1 has an output schema of its own" in violation.description


async def test_a_registry_prompt_takes_a_request_schema_when_it_has_none(running: Running) -> None:
    running.triton.reply = ['{"city": "Paris"}']
    request = Request(prompt="ask")
    request.variables.update({"question": "Capital?"})

    messages = await _complete(running, request, output_schema=CITY)

    final = messages[-1].final
    assert (final.prompt, final.prompt_version) == ("ask", 1)
    assert final.processing.schema_valid


# ------------------------------------------------------------------------------ idempotency


async def test_an_inline_retry_replays_and_another_body_is_refused(running: Running) -> None:
    first = await _complete(running, _chat((USER, "Hi"), request_id="k-1"), inline=InlinePrompt())
    observed: list[tuple[str, str, str]] = []
    replay = await _complete(
        running, _chat((USER, "Hi"), request_id="k-1"), inline=InlinePrompt(), observed=observed
    )

    assert [m.WhichOneof("event") for m in replay] == ["start", "delta", "final"]
    assert replay[-1].final == first[-1].final
    assert observed[0] == ("start", "chat", "triton-0")
    assert len(running.triton.prompts) == 1

    # The same request proto, with another inline text or a schema: another request.
    text = Request(request_id="k-2")
    text.routing.model = "base"
    await _complete(running, text, inline=InlinePrompt(text="Once"))
    other_text, _ = await _failure(running, text, inline=InlinePrompt(text="Twice"))
    with_schema, _ = await _failure(
        running, _chat((USER, "Hi"), request_id="k-1"), inline=InlinePrompt(), output_schema=CITY
    )
    for error in (other_text, with_schema):
        assert isinstance(error, FailedPrecondition)
        assert error.reason == reasons.REQUEST_ID_REUSED
    assert len(running.triton.prompts) == 2


# ------------------------------------------------------------------------------ embeddings


async def test_embeddings_are_priced_settled_and_logged(running: Running) -> None:
    caller = running.caller(method=OPENAI_EMBEDDINGS_METHOD)
    with principal_scope(running.principals["acme"]):
        result = await running.api.embed(
            EmbeddingRequest(
                model=EMBEDDING_MODEL,
                inputs=["The cat sat.", "A dog ran far away."],
                user_id="u-1",
            ),
            caller,
            time_left=10,
        )

    assert (result.model, result.dimensions, result.input_tokens) == (EMBEDDING_MODEL, 384, 12)
    assert [v.index(1.0) for v in result.vectors] == [
        position("The cat sat."),
        position("A dog ran far away."),
    ]
    assert (result.cost, result.currency) == (Decimal("0.000024"), "USD")  # 12 at 2 per million
    assert running.embedder.texts == ["The cat sat.", "A dog ran far away."]
    record = await running.logged("acme", result.request_id)
    assert (record.method, record.status, record.model) == (
        "openai/v1/embeddings",
        "OK",
        EMBEDDING_MODEL,
    )
    assert record.input == {"texts": ["The cat sat.", "A dog ran far away."]}
    assert (record.input_tokens, record.cost_micros, record.user_id) == (12, 24, "u-1")
    assert record.metadata["dimensions"] == 384
    assert running.sample("genai_gateway_quota_settled_tokens_total", tenant="acme") == 12
    assert (
        running.sample(
            "genai_gateway_requests_total",
            tenant="acme",
            method=OPENAI_EMBEDDINGS_METHOD,
            code="OK",
        )
        == 1
    )


async def test_embeddings_are_under_the_tenants_quota(running: Running) -> None:
    request = EmbeddingRequest(model=EMBEDDING_MODEL, inputs=["x"])
    caller = running.caller("tight", OPENAI_EMBEDDINGS_METHOD)
    with principal_scope(running.principals["tight"]):
        await running.api.embed(request, caller, time_left=10)
        with pytest.raises(ResourceExhausted) as raised:
            await running.api.embed(request, caller, time_left=10)

    assert raised.value.reason == reasons.QUOTA_EXCEEDED
    assert running.embedder.texts == ["x"]
    assert await running.logged_with("tight", "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize(
    ("model", "error", "detail"),
    [
        ("chat", InvalidArgument, "is a generation model, not an embedding model"),
        ("nope", NotFound, "no catalog model named 'nope'"),
    ],
    ids=["generation-model", "unknown"],
)
async def test_embeddings_name_a_model_that_cannot_embed(
    running: Running, model: str, error: type[DomainError], detail: str
) -> None:
    with principal_scope(running.principals["acme"]):
        with pytest.raises(error) as raised:
            await running.api.embed(
                EmbeddingRequest(model=model, inputs=["x"]),
                running.caller(method=OPENAI_EMBEDDINGS_METHOD),
                time_left=10,
            )

    assert detail in str(raised.value) + " ".join(
        v.description for v in getattr(raised.value, "violations", [])
    )
    assert running.embedder.texts == []


# ------------------------------------------------------------------------------ catalog


async def test_the_catalog_lists_every_model_and_finds_one(running: Running) -> None:
    caller = running.caller(method="/openai/v1/models")
    with principal_scope(running.principals["acme"]):
        models = await running.api.models(caller)
        embedding = await running.api.model(EMBEDDING_MODEL, caller)
        with pytest.raises(NotFound) as raised:
            await running.api.model("nope", caller)

    assert [m.name for m in models] == [EMBEDDING_MODEL, "base", "chat"]
    assert list(embedding.capabilities) == [routing_pb2.CAPABILITY_EMBEDDINGS]
    assert embedding.input_price_per_million_tokens.units == 2
    assert raised.value.reason == reasons.MODEL_NOT_FOUND
