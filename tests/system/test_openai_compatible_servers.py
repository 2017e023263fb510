"""Real third-party OpenAI-compatible servers behind the gateway (issue 18): `transformers
serve` on the prepared SmolLM2, alone, behind a proxy that makes it send no usage (standing in
for llama.cpp's server: see `tests.support.openai_servers`), and beside Triton serving the same
weights, all through GatewayService over real gRPC with an API key.

Streaming and the provider's usage, stop sequences and max_tokens, cancellation reaching the
server (its CPU falls to idle), failover before the first token both ways between it and
Triton, its death mid-stream (UNAVAILABLE STREAM_INTERRUPTED with the tokens sent, accounted in
the request log), and usage counted by InferenceService when the server reports none: with the
model's tokenizer (exactly the server's own counts) or with the conservative estimate.

One `transformers serve` and one Triton serve the whole module (the death test kills a server
of its own); every generation is greedy and short.
"""

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import tritonclient.grpc.aio as aioclient
from genai.common.v1 import generation_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc

from services.common import reasons
from services.common.clients import api_key_metadata, create_channel
from services.common.status import error_details
from services.inference.adapters.tritonserver import TritonServer
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import REPOSITORY_ROOT, Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.openai_servers import (
    TransformersServe,
    UsageStrippingProxy,
    running_transformers_serve,
    running_usage_stripping_proxy,
)
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import CPU_REPOSITORY, requires_triton, triton_server

pytestmark = [pytest.mark.system, requires_triton]

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2
PROVIDER = generation_pb2.USAGE_SOURCE_PROVIDER
TOKENIZER = generation_pb2.USAGE_SOURCE_TOKENIZER
ESTIMATE = generation_pb2.USAGE_SOURCE_ESTIMATE

TRITON = "smollm2-triton"
"""SmolLM2 on Triton (the CPU repository's `smollm2` model)."""
SERVED = "smollm2-transformers"
"""SmolLM2 on `transformers serve`, which reports usage."""
NO_USAGE = "smollm2-no-usage"
"""The same server behind the usage-stripping proxy; counted with SmolLM2's tokenizer."""
NO_USAGE_ESTIMATE = "smollm2-no-usage-estimate"
"""The same proxy, with no tokenizer setting: counted with the estimate."""
TO_TRITON = "smollm2-failover-to-triton"
"""An endpoint in front of `transformers serve` that goes away, and Triton."""
TO_SERVED = "smollm2-failover-to-transformers"
"""A Triton model that is unloaded, and `transformers serve`."""
DOOMED = "smollm2-doomed"
"""A `transformers serve` of its own, killed mid-stream."""
REPLICA = "smollm2_replica"
"""A second copy of Triton's `smollm2`, loaded and unloaded by the failover test."""

QUESTION = "What is the capital of France?"
STORY = "Write a very long story about a dragon who learns to count, with many chapters."
LONG = 1000
"""max_tokens of generations that must still be running when a test cuts them."""
HEALTH_CHECK_SECONDS = 300.0
"""The router checks each backend once at start and not again within a test: a backend
that goes away during one is found out by the requests alone, as between two checks."""
IDLE_CORES = 0.05
"""Cores an idle `transformers serve` keeps busy at most (measured: 0.00 to 0.01); one that
generates keeps one to two busy."""
FAILOVER_TRIES = 16
"""Requests sent until one meets the broken backend first: the router puts one of a model's
two backends first at random (power of two choices), so all of them miss with 2^-16."""


@dataclass(frozen=True)
class Backends:
    """The servers the module shares."""

    triton: TritonServer
    served: TransformersServe
    proxy: UsageStrippingProxy


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """Triton with SmolLM2 (and a copy of it, `REPLICA`, in its repository, not loaded),
    `transformers serve`, and the proxy in front of it; the two servers load at once."""
    smollm2_dir()  # prepared, or the test fails saying how to prepare it
    repository = tmp_path_factory.mktemp("repository")
    shutil.copytree(CPU_REPOSITORY / "smollm2", repository / "smollm2", symlinks=True)
    shutil.copytree(CPU_REPOSITORY / "smollm2", repository / REPLICA, symlinks=True)
    config = repository / REPLICA / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "smollm2"', f'name: "{REPLICA}"', 1))
    started = time.monotonic()
    with (
        running_transformers_serve(tmp_path_factory.mktemp("transformers"), wait=False) as served,
        triton_server(
            tmp_path_factory.mktemp("triton-log"), ["smollm2"], repository=repository
        ) as triton,
    ):
        served.wait_until_serving()
        print(f"\nTriton and transformers serve ready in {time.monotonic() - started:.1f} s")
        with running_usage_stripping_proxy(served.base_url) as proxy:
            yield Backends(triton=triton, served=served, proxy=proxy)


@dataclass(frozen=True)
class Backend:
    """One backend, as the router's catalog and InferenceService's settings both name it."""

    catalog: str
    """The catalog's entry, a YAML flow mapping."""
    settings: dict[str, Any]
    """InferenceService's entry."""


def _triton(triton: TritonServer, triton_model: str = "smollm2") -> Backend:
    endpoint = triton.grpc_address
    return Backend(
        f'{{id: triton-0, kind: triton, endpoint: "{endpoint}", backend_model: {triton_model}}}',
        {"id": "triton-0", "endpoint": endpoint, "triton_model": triton_model},
    )


def _http(backend_id: str, endpoint: str, served: TransformersServe) -> Backend:
    return Backend(
        f'{{id: {backend_id}, kind: openai_compatible, endpoint: "{endpoint}", '
        f'backend_model: "{served.model}"}}',
        {
            "id": backend_id,
            "kind": "openai_compatible",
            "endpoint": endpoint,
            "provider_model": served.model,
        },
    )


@dataclass(frozen=True)
class Model:
    """One model of the catalog and of InferenceService."""

    name: str
    backends: tuple[Backend, ...]
    fields: dict[str, Any]
    """More InferenceService settings: `tokenizer`, `chat_template`."""

    def catalog(self) -> str:
        return (
            f"  - name: {self.name}\n"
            "    capabilities: [chat, streaming]\n"
            "    max_context_tokens: 2048\n"
            "    max_output_tokens: 1024\n"
            "    price_per_million_tokens: {input: 0.02, output: 0.04}\n"
            "    quality_tier: 2\n"
            "    backends:\n" + "".join(f"      - {b.catalog}\n" for b in self.backends)
        )

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backends": [b.settings for b in self.backends],
            "max_context_tokens": 2048,
            "max_output_tokens": 1024,
            **self.fields,
        }


TOKENIZER_SETTING = {"tokenizer": "prepared:smollm2"}
TEMPLATE_SETTING = {"chat_template": "prepared:smollm2"}


def _models(backends: Backends) -> list[Model]:
    """The models every test has."""
    served, proxy = backends.served, backends.proxy
    return [
        Model(TRITON, (_triton(backends.triton),), TEMPLATE_SETTING),
        Model(SERVED, (_http("transformers", served.base_url, served),), TOKENIZER_SETTING),
        Model(NO_USAGE, (_http("no-usage", proxy.base_url, served),), TOKENIZER_SETTING),
        Model(NO_USAGE_ESTIMATE, (_http("no-usage", proxy.base_url, served),), {}),
    ]


def _settings(data: Path, models: Sequence[Model]) -> PlatformSettings:
    """A platform serving `models`, with API keys and its databases under `data`."""
    catalog = data / "catalog.yaml"
    catalog.write_text("currency: USD\nmodels:\n" + "".join(m.catalog() for m in models))
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},
            },
            "router": {"catalog_file": str(catalog), "health_check_seconds": HEALTH_CHECK_SECONDS},
            "inference": {"triton": {"launch": False}, "models": [m.settings() for m in models]},
        }
    )


@dataclass
class Gateway:
    """A running platform and a stub with the development tenant's admin key."""

    platform: Platform
    stub: Stub
    channel: grpc.aio.Channel


@asynccontextmanager
async def _gateway(settings: PlatformSettings, data: Path) -> AsyncIterator[Gateway]:
    """The platform of `settings`, with the sample prompts pushed for the development tenant."""
    platform = await start_platform(settings)
    try:
        assert platform.tenants is not None
        credentials = await ensure_dev_credentials(platform.tenants, data / "dev-key")
        channel = create_channel(platform.address, metadata=api_key_metadata(credentials.secret))
        try:
            report = await prompts_cli.seed_prompts(channel, REPOSITORY_ROOT / "prompts")
            assert report.failures == 0, report.lines
            yield Gateway(platform, gateway_service_pb2_grpc.GatewayServiceStub(channel), channel)
        finally:
            await channel.close(None)
    finally:
        await platform.stop(grace=0)


@pytest.fixture
async def gateway(backends: Backends, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with _gateway(_settings(tmp_path, _models(backends)), tmp_path) as running:
        yield running


@pytest.fixture
def doomed(tmp_path: Path) -> Iterator[TransformersServe]:
    """A `transformers serve` for one test to kill."""
    with running_transformers_serve(tmp_path / "doomed") as served:
        yield served


@dataclass(frozen=True)
class Answer:
    """One streamed completion, collected."""

    text: str
    deltas: int
    final: gateway_pb2.CompletionMetadata


def _chat(message: str, model: str, **parameters: Any) -> gs.StreamCompleteRequest:
    """The sample prompt `chat`, pinned to `model`, greedy."""
    request = gs.StreamCompleteRequest(
        prompt="chat",
        routing={"model": model},
        parameters=generation_pb2.SamplingParameters(temperature=0, **parameters),
    )
    request.variables.update({"message": message})
    return request


async def _complete(stub: Stub, request: gs.StreamCompleteRequest) -> Answer:
    messages = [m async for m in stub.StreamComplete(request, timeout=120)]
    deltas = [m.delta.text for m in messages if m.HasField("delta")]
    assert messages, "the stream ended without a message"
    assert messages[-1].HasField("final"), messages[-1]
    return Answer("".join(deltas), len(deltas), messages[-1].final)


def _usage(final: gateway_pb2.CompletionMetadata) -> str:
    """A final's usage in one line, for the test's output."""
    usage = final.usage
    source = generation_pb2.UsageSource.Name(usage.usage_source)
    return (
        f"{final.model} ({final.backend_id}): {usage.input_tokens} in, {usage.output_tokens} "
        f"out, {source}, {generation_pb2.FinishReason.Name(final.finish_reason)}"
    )


async def _cpu_rate(served: TransformersServe, seconds: float = 1.0) -> float:
    """Cores the server's process group kept busy over the next `seconds`."""
    before = served.cpu_seconds()
    await asyncio.sleep(seconds)
    return (served.cpu_seconds() - before) / seconds


async def _log_entry(stub: Stub, status: str, request_id: str = "") -> gateway_pb2.RequestLogEntry:
    """The request-log entry of `request_id` (empty: the newest) with `status`; entries are
    written moments after their request ends."""
    deadline = time.monotonic() + 10
    while True:
        logs = await stub.ListRequestLogs(gs.ListRequestLogsRequest(status=status), timeout=10)
        for entry in logs.entries:
            if entry.request_id == request_id or not request_id:
                return entry
        assert time.monotonic() < deadline, f"no {status} entry {request_id} in the request log"
        await asyncio.sleep(0.05)


async def test_streams_token_by_token_with_the_servers_own_usage(gateway: Gateway) -> None:
    answer = await _complete(gateway.stub, _chat(QUESTION, SERVED, max_tokens=32))

    final = answer.final
    print(f"\n{_usage(final)}, {answer.deltas} deltas")
    assert "Paris" in answer.text
    assert answer.deltas > 1  # streamed as generated, not in one piece
    assert (final.model, final.backend_id) == (SERVED, "transformers")
    assert final.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert final.usage.usage_source == PROVIDER
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0

    # Triton renders the same chat with the same template and tokenizer: the same prompt.
    on_triton = await _complete(gateway.stub, _chat(QUESTION, TRITON, max_tokens=1))
    assert on_triton.final.usage.input_tokens == final.usage.input_tokens


async def test_a_stop_sequence_ends_the_answer_before_it(gateway: Gateway) -> None:
    """transformers serve stops at the stop string but streams it (OpenAI leaves it out): the
    gateway cuts the answer before it."""
    whole = await _complete(gateway.stub, _chat(QUESTION, SERVED, max_tokens=32))
    assert "Paris" in whole.text

    stopped = await _complete(gateway.stub, _chat(QUESTION, SERVED, max_tokens=32, stop=["Paris"]))
    assert stopped.text == whole.text[: whole.text.index("Paris")]
    assert stopped.final.finish_reason == generation_pb2.FINISH_REASON_STOP_SEQUENCE
    assert stopped.final.processing.stop_sequence_matched
    assert stopped.final.backend_id == "transformers"


async def test_max_tokens_ends_the_answer_with_exactly_that_many_tokens(gateway: Gateway) -> None:
    whole = await _complete(gateway.stub, _chat(QUESTION, SERVED, max_tokens=32))
    cut = await _complete(gateway.stub, _chat(QUESTION, SERVED, max_tokens=3))

    assert whole.text.startswith(cut.text)
    assert cut.final.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert cut.final.usage.output_tokens == 3
    assert cut.final.usage.usage_source == PROVIDER


async def test_cancelling_the_client_stream_stops_the_servers_generation(
    gateway: Gateway, backends: Backends
) -> None:
    """The client's cancel reaches the server as a closed connection, and the server stops
    generating: its CPU falls from generating to idle."""
    call = gateway.stub.StreamComplete(_chat(STORY, SERVED, max_tokens=LONG), timeout=120)
    deltas = 0
    async for message in call:
        deltas += message.HasField("delta")
        if deltas == 3:
            break
    generating = await _cpu_rate(backends.served)
    call.cancel()
    cancelled = time.monotonic()
    while await _cpu_rate(backends.served, 0.25) > IDLE_CORES:
        assert time.monotonic() - cancelled < 5, "the server still generates 5 s after the cancel"
    stopped_s = time.monotonic() - cancelled
    idle = await _cpu_rate(backends.served)

    print(
        f"\ntransformers serve: {generating:.2f} cores generating, idle {stopped_s:.2f} s after "
        f"the cancel, then {idle:.2f} cores"
    )
    assert generating > 2 * IDLE_CORES, "the server was not generating when the client cancelled"
    assert idle < IDLE_CORES, f"the server generates again after the cancel ({idle:.2f} cores)"


async def _first_failover(stub: Stub, model: str, serving: str) -> Answer:
    """Sends short requests for `model` until one fails over (its final lists two attempts);
    every one is served by `serving`."""
    for tries in range(1, FAILOVER_TRIES + 1):
        answer = await _complete(stub, _chat(QUESTION, model, max_tokens=4))
        assert answer.final.backend_id == serving, answer.final
        if len(answer.final.attempts) > 1:
            print(f"\nfailed over at request {tries}: {_usage(answer.final)}")
            return answer
    pytest.fail(f"no request for {model} failed over in {FAILOVER_TRIES} tries")


def _attempts(final: gateway_pb2.CompletionMetadata) -> list[tuple[str, str, str]]:
    return [(a.model, a.backend_id, a.status) for a in final.attempts]


async def test_fails_over_from_a_server_gone_before_the_first_token_to_triton(
    backends: Backends, tmp_path: Path
) -> None:
    """The endpoint in front of `transformers serve` answers the router's health check at
    start, then goes away (its port closes): requests that meet it first go on to Triton."""
    with running_usage_stripping_proxy(backends.served.base_url) as front:
        model = Model(
            TO_TRITON,
            (
                _http("transformers-front", front.base_url, backends.served),
                _triton(backends.triton),
            ),
            TOKENIZER_SETTING | TEMPLATE_SETTING,
        )
        settings = _settings(tmp_path, [*_models(backends), model])
        async with _gateway(settings, tmp_path) as gateway:
            front.stop()
            answer = await _first_failover(gateway.stub, TO_TRITON, "triton-0")

    assert _attempts(answer.final) == [
        (TO_TRITON, "transformers-front", "UNAVAILABLE"),
        (TO_TRITON, "triton-0", "OK"),
    ]
    assert answer.text
    assert answer.final.model == TO_TRITON
    assert answer.final.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert answer.final.usage.output_tokens == 4
    assert answer.final.usage.usage_source == PROVIDER


async def test_fails_over_from_an_unloaded_triton_model_to_the_server(
    backends: Backends, tmp_path: Path
) -> None:
    """Triton's copy of SmolLM2 is ready when the router checks it at start, then unloaded:
    requests that meet it first go on to `transformers serve`."""
    client = aioclient.InferenceServerClient(backends.triton.grpc_address)
    try:
        await client.load_model(REPLICA)
        model = Model(
            TO_SERVED,
            (
                _triton(backends.triton, REPLICA),
                _http("transformers", backends.served.base_url, backends.served),
            ),
            TOKENIZER_SETTING | TEMPLATE_SETTING,
        )
        settings = _settings(tmp_path, [*_models(backends), model])
        async with _gateway(settings, tmp_path) as gateway:
            await client.unload_model(REPLICA)
            answer = await _first_failover(gateway.stub, TO_SERVED, "transformers")
    finally:
        await client.close()

    assert _attempts(answer.final) == [
        (TO_SERVED, "triton-0", "UNAVAILABLE"),
        (TO_SERVED, "transformers", "OK"),
    ]
    assert answer.text
    assert answer.final.model == TO_SERVED
    assert answer.final.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert answer.final.usage.output_tokens == 4
    assert answer.final.usage.usage_source == PROVIDER


async def test_a_server_killed_mid_stream_ends_it_with_the_tokens_sent_accounted(
    backends: Backends, doomed: TransformersServe, tmp_path: Path
) -> None:
    model = Model(
        DOOMED, (_http("transformers-doomed", doomed.base_url, doomed),), TOKENIZER_SETTING
    )
    settings = _settings(tmp_path, [*_models(backends), model])
    async with _gateway(settings, tmp_path) as gateway:
        call = gateway.stub.StreamComplete(_chat(STORY, DOOMED, max_tokens=LONG), timeout=120)
        deltas = 0

        async def read_and_kill() -> None:
            nonlocal deltas
            async for message in call:
                if message.HasField("delta"):
                    deltas += 1
                    if deltas == 3:
                        doomed.kill()

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await read_and_kill()
        error = error_details(raised.value)
        assert error.code == grpc.StatusCode.UNAVAILABLE, error
        assert error.reason == reasons.STREAM_INTERRUPTED, error
        assert error.metadata["backend_id"] == "transformers-doomed"
        input_tokens = int(error.metadata["input_tokens"])
        output_tokens = int(error.metadata["output_tokens"])
        assert input_tokens > 0, error.metadata  # counted before the server said anything
        assert output_tokens >= deltas, error.metadata

        assert error.metadata["usage_source"] == "USAGE_SOURCE_TOKENIZER"
        print(f"\n{error.code.name} {error.reason}: {error.metadata}")

        entry = await _log_entry(gateway.stub, "UNAVAILABLE")
        assert (entry.metadata.model, entry.metadata.backend_id) == (DOOMED, "transformers-doomed")
        assert [(a.backend_id, a.status) for a in entry.metadata.attempts] == [
            ("transformers-doomed", "UNAVAILABLE")
        ]
        assert entry.metadata.HasField("first_token_duration")
        assert entry.output  # what was streamed before the server died
        assert entry.metadata.usage.input_tokens == input_tokens
        assert entry.metadata.usage.output_tokens == output_tokens
        assert entry.metadata.usage.usage_source == TOKENIZER


@pytest.mark.parametrize(
    ("message", "max_tokens", "finish_reason"),
    [
        (QUESTION, 48, generation_pb2.FINISH_REASON_STOP),
        ("Name three colours.", 5, generation_pb2.FINISH_REASON_LENGTH),
        ("Dis bonjour en français, s'il te plaît.", 24, generation_pb2.FINISH_REASON_STOP),
    ],
    ids=["end-of-sequence", "max-tokens", "non-ascii"],
)
async def test_a_server_without_usage_is_counted_with_the_models_tokenizer(
    gateway: Gateway, backends: Backends, message: str, max_tokens: int, finish_reason: int
) -> None:
    """The same greedy request to the server directly (its own usage) and through the proxy
    that strips it (InferenceService counts with SmolLM2's tokenizer): the same counts."""
    own = await _complete(gateway.stub, _chat(message, SERVED, max_tokens=max_tokens))
    seen = len(backends.proxy.requests)
    counted = await _complete(gateway.stub, _chat(message, NO_USAGE, max_tokens=max_tokens))

    print(f"\n{_usage(own.final)}\n{_usage(counted.final)}")
    [proxied] = backends.proxy.requests[seen:]
    assert proxied.received["stream_options"] == {"include_usage": True}
    assert "stream_options" not in proxied.forwarded  # ignored, as llama.cpp's server does
    assert proxied.completed

    assert counted.text == own.text
    assert counted.final.finish_reason == own.final.finish_reason == finish_reason
    assert own.final.usage.usage_source == PROVIDER
    assert counted.final.usage.usage_source == TOKENIZER
    assert (counted.final.usage.input_tokens, counted.final.usage.output_tokens) == (
        own.final.usage.input_tokens,
        own.final.usage.output_tokens,
    )
    entry = await _log_entry(gateway.stub, "OK", counted.final.request_id)
    assert entry.metadata.usage == counted.final.usage


async def test_a_server_without_usage_and_no_tokenizer_gets_the_estimate(
    gateway: Gateway,
) -> None:
    own = await _complete(gateway.stub, _chat(QUESTION, SERVED, max_tokens=48))
    estimated = await _complete(gateway.stub, _chat(QUESTION, NO_USAGE_ESTIMATE, max_tokens=48))

    print(f"\n{_usage(own.final)}\n{_usage(estimated.final)}")
    assert estimated.text == own.text
    assert estimated.final.usage.usage_source == ESTIMATE
    assert estimated.final.usage.input_tokens >= own.final.usage.input_tokens
    assert estimated.final.usage.output_tokens >= own.final.usage.output_tokens
