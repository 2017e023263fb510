"""Benchmark `gateway`: what GatewayService adds to a completion stream, against InferenceService
alone and against Triton itself.

Triton, launched here with `zero_llm` (the generation facade with zero compute: `tokens`
tokens per stream, no pause between them) and `zero_llm_paced` (the same, its tokens 10 ms
apart, as a GPU decodes), is called five ways in one run:
- `direct`: `tritonclient.grpc.aio` `stream_infer` of the chat prompt as ChatML text;
- `hop`: the same client through a bare grpc.aio relay in a process of its own
  (`benchmarks.passthrough`: bytes in, bytes out), the floor of any Python gRPC hop (at
  concurrency 1 only);
- `inference`: InferenceService `GenerateStream` of the same chat messages;
- `gateway`: GatewayService `StreamComplete` of the sample `chat` prompt (label `production`),
  pinned to model `zero` (`routing.model`), `max_tokens` = `tokens`: prompt rendering,
  routing, quota reservation and settlement, response processing (the prompt's PII
  redaction), pricing, metrics and the request log, then InferenceService -> Triton;
- `http`: the same completion through the OpenAI-compatible HTTP API (`POST
  /v1/chat/completions` of model `prompt:chat` with the same variable, `max_tokens` and
  routing in `genai`, streamed as server-sent events with a usage chunk), from a lean asyncio
  HTTP/1.1 client (`benchmarks.openai_http`): the same engine behind uvicorn instead of
  grpc.aio.
The platform runs as an operator starts it (`genai serve`, every service in one process of its
own) with API keys on, the request log on (SQLite in a temporary folder) and in-memory quotas;
a tenant with generous limits and a key of its own is created for the run and the sample
prompts are pushed for it. Both platform paths call with that key. The client (this process),
the platform process and Triton share the machine's cores.

Rounds alternate the paths (and their order). At concurrency 1 streams run one after another;
at 16 and 64 that many are kept in flight (closed loop) and only streams ending within a
measured window count. Each stream gives its time to first token (TTFT: from the call to the
first message carrying text), its stream latency (to the final message) and its tokens;
rounds give streams/s and tokens/s, and the CPU time each process spent, from /proc. Before
measuring, one stream on each path is parsed in full: the same text everywhere, and on `http`
the same usage as StreamComplete's final.

The paced part (`benchmarks.paced`) then runs the paced model at several stream lengths and
concurrencies, and fits the platform's CPU per request and per relayed token, the inter-token
latency each path shows, and the tokens relayed per platform core.

The report ends with a PASS/FAIL line per target: on the gateway path, platform CPU <= 100 µs
per relayed token and <= 2 ms per request (the fit at concurrency 64), inter-token latency added
over direct <= 1 ms p99 (paced, concurrency 64); TTFT p50 at concurrency 1 at most 0.5 ms above
the bare relay's; at concurrency 64 unpaced, streams/s >= 1.2x direct tritonclient's and >= 0.8x
InferenceService alone's; and the HTTP API's TTFT p50 at concurrency 1 at most 0.5 ms above
StreamComplete's (its streams/s at 1 and 64 are reported beside it).
"""

import asyncio
import json
import math
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from genai.common.v1 import chat_pb2, generation_pb2, money_pb2, routing_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc

from benchmarks.cli import ROOT, benchmark_parser, shown, write_outputs
from benchmarks.deployment import zero_catalog
from benchmarks.inference import (
    CPU_REPOSITORY,
    RUN_ROOT,
    STREAM_DEADLINE_S,
    ZERO_MODEL,
    ZERO_TRITON_MODEL,
    CpuProbe,
    DirectPath,
    Scenario,
    StreamFn,
    StreamRound,
    StreamTiming,
    TargetCheck,
    check_at_least,
    check_at_most,
    interleave,
    loader,
    sequential,
    served_model,
    while_alive,
)
from benchmarks.openai_http import HttpSsePath, SseCompletion
from benchmarks.paced import (
    PACE_US,
    PACED_MODEL,
    PACED_TRITON_MODEL,
    Messages,
    PacedConfig,
    PacedRun,
    Profiler,
    cells_table,
    fit_table,
    ramp_s,
    run_cell,
    zero_repository,
)
from benchmarks.processes import genai_serve, group_cpu_seconds
from benchmarks.serving import ServerProcess, server_process
from benchmarks.stats import (
    BenchmarkResult,
    Comparison,
    LatencyPanel,
    LatencySummary,
    Measurement,
    Progress,
    RatePanel,
    environment,
    format_number,
    format_ratio,
    format_rounds,
    format_table,
    percentile,
    round_ratios,
    starved_lines,
    with_load_at_end,
)

if TYPE_CHECKING:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

NAME: Final = "gateway"
DESCRIPTION: Final = (
    "GatewayService StreamComplete (sample `chat` prompt pinned to the zero-compute model) "
    "against InferenceService GenerateStream and direct tritonclient calls to Triton, and the "
    "same completion through the OpenAI-compatible HTTP API (SSE)."
)
DIRECT: Final = "direct"
HOP: Final = "hop"
INFERENCE: Final = "inference"
GATEWAY: Final = "gateway"
HTTP: Final = "http"
PATHS: Final = (DIRECT, HOP, INFERENCE, GATEWAY, HTTP)
"""The measured paths, baseline first."""
PAIRS: Final = (
    (DIRECT, GATEWAY),
    (HOP, GATEWAY),
    (INFERENCE, GATEWAY),
    (DIRECT, INFERENCE),
    (DIRECT, HOP),
    (GATEWAY, HTTP),
)
"""(baseline, candidate) of each comparison: the gateway over Triton, over the floor of one
Python hop, the gateway's own cost (over InferenceService alone), InferenceService over
Triton, the floor itself, and the OpenAI-compatible HTTP API over gRPC StreamComplete."""
PROCESSES: Final = ("client", "platform", "hop", "triton")
"""Whose CPU time is measured: this client, the `genai serve` process, the bare relay and
Triton's group."""
PACED_PATHS: Final = (DIRECT, HOP, INFERENCE, GATEWAY)
"""The paced part's paths: the bare relay's CPU per token is the floor of any Python hop."""

PROMPT: Final = "chat"
PROMPTS_FOLDER: Final = ROOT / "prompts"
MESSAGE: Final = "Benchmark the gateway's streaming path with a prompt of a few words"
"""The `message` variable of the `chat` prompt."""
TENANT: Final = "bench"
TENANT_QUOTA: Final = gateway_pb2.TenantQuota(
    requests_per_minute=1_000_000,
    tokens_per_minute=1_000_000_000,
    cost_per_day=money_pb2.Money(currency_code="USD", units=1_000_000),
)
"""Limits the run never reaches, yet every request is checked and counted against them."""

TOKEN_CPU_TARGET_US: Final = 100.0
"""Gateway path, platform CPU per relayed token (paced, the fit at `TARGET_CONCURRENCY`)."""
REQUEST_CPU_TARGET_US: Final = 2000.0
"""Gateway path, platform CPU per request (the same fit)."""
ITL_ADDED_TARGET_MS: Final = 1.0
"""Inter-token latency p99 the gateway path adds over direct (paced)."""
HOP_TTFT_TARGET_MS: Final = 0.5
"""TTFT p50 at concurrency 1 above the bare relay's."""
HTTP_TTFT_TARGET_MS: Final = 0.5
"""TTFT p50 at concurrency 1 of the HTTP API (SSE) above StreamComplete's."""
DIRECT_THROUGHPUT_TARGET: Final = 1.2
INFERENCE_THROUGHPUT_TARGET: Final = 0.8
TARGET_CONCURRENCY: Final = 64


# ------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class GatewayConfig:
    """How much to measure. Counts and seconds are per path, split evenly over the rounds."""

    tokens: int = 16
    """Tokens per stream (`max_tokens`)."""
    streams: int = 1500
    """Streams at concurrency 1."""
    rounds: int = 8
    """Interleaved rounds at concurrency 1 (alternating which path goes first), after an
    unmeasured warm-up of each path."""
    concurrencies: tuple[int, ...] = (16, 64)
    """Streams in flight for the throughput scenarios."""
    load_seconds: float = 16.0
    """Measured seconds at each of `concurrencies`."""
    load_rounds: int = 4
    """Interleaved rounds of each throughput scenario. Fewer and longer than `rounds`: at
    concurrency 64 a gateway stream lasts about half a second here, and a round's window must
    hold many of them, or the streams ending in waves make its count jump."""
    paced: PacedConfig | None = field(default_factory=PacedConfig)
    """The paced part (None: left out)."""

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.rounds < 1 or self.streams < self.rounds:
            raise ValueError("the benchmark needs tokens, rounds and a stream per round")
        if self.load_rounds < 1 or self.load_seconds <= 0 or any(c < 2 for c in self.concurrencies):
            raise ValueError("load scenarios need rounds, a positive duration, concurrency >= 2")


DEFAULT = GatewayConfig()
"""About three minutes on a busy 2-core machine, start-up included (a few seconds), and one to
two more for the HTTP path (942 s in all, paced part included, at a load average of 7 to 4)."""
QUICK = GatewayConfig(
    streams=90,
    rounds=3,
    load_seconds=2.0,
    load_rounds=1,
    paced=PacedConfig(lengths=(4, 12), concurrencies=(1, 8), seconds=1.0),
)
"""About half a minute: to check that the benchmark works, not to quote its figures."""


# ------------------------------------------------------------------------------------ records


class PathScenario(Scenario):
    """The rounds of one scenario, by path (this benchmark's paths, in `PATHS` order)."""

    @property
    def paths(self) -> list[str]:
        return [p for p in PATHS if p in self.rounds]


def _ratio(candidate: float, baseline: float) -> float:
    return candidate / baseline if baseline else math.nan


def _p(values: Sequence[float], p: float) -> float:
    return percentile(sorted(values), p) if values else math.nan


def latency_of(timings: Sequence[StreamTiming], metric: str, p: float) -> float:
    """The `p`-th percentile of `metric` ("ttft" or "total") of `timings`, in µs."""
    return _p([getattr(t, f"{metric}_us") for t in timings], p)


def added(
    scenario: Scenario, baseline: str, candidate: str, metric: str = "ttft", p: float = 50.0
) -> tuple[float, float, list[float]]:
    """The `p`-th percentile of `metric` on `baseline` and `candidate` over all rounds (µs),
    and each round's own difference, candidate - baseline (rounds pair in order)."""
    base, cand = (latency_of(scenario.timings(path), metric, p) for path in (baseline, candidate))
    differences = [
        latency_of(c.streams, metric, p) - latency_of(b.streams, metric, p)
        for b, c in zip(scenario.rounds[baseline], scenario.rounds[candidate], strict=False)
        if b.streams and c.streams
    ]
    return base, cand, differences


def rate_ratios(scenario: Scenario, baseline: str, candidate: str) -> list[float]:
    """streams/s of `candidate` over `baseline`, round by round."""
    return round_ratios(
        *([r.streams_per_s for r in scenario.rounds[path]] for path in (baseline, candidate))
    )


def spread(values: Sequence[float], spec: str = "+.2f") -> str:
    """Median (lowest..highest) of `values`, each formatted with `spec`."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return "-"
    return f"{percentile(finite, 50):{spec}} ({finite[0]:{spec}}..{finite[-1]:{spec}})"


# ------------------------------------------------------------------------------------ paths


def chatml(messages: Sequence[chat_pb2.ChatMessage]) -> str:
    """`messages` laid out as InferenceService's `builtin:chatml` template lays them out for
    Triton (with the generation prompt), so that the direct path sends Triton the same text."""
    turns = "".join(
        f"<|im_start|>{chat_pb2.ChatRole.Name(m.role).removeprefix('CHAT_ROLE_').lower()}\n"
        f"{m.content}<|im_end|>\n"
        for m in messages
    )
    return turns + "<|im_start|>assistant\n"


class InferencePath:
    """Streams through InferenceService `GenerateStream`, with the tenant's API key."""

    def __init__(
        self,
        address: str,
        request: inference_service_pb2.GenerateStreamRequest,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub: InferenceStub = InferenceStub(self._channel)
        self._request = request
        self._metadata = tuple(metadata)

    async def close(self) -> None:
        await self._channel.close(None)

    def call(self) -> AsyncIterator[inference_service_pb2.GenerateStreamResponse]:
        """One stream of the request, its messages as they come."""
        return self._stub.GenerateStream(  # type: ignore[return-value]
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )

    async def stream(self) -> StreamTiming:
        """One stream of the request, timed (its text is not kept)."""
        sent = time.perf_counter_ns()
        first = final = 0
        tokens = deltas = 0
        call = self._stub.GenerateStream(
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )
        async for response in call:
            event = response.WhichOneof("event")
            if event == "delta":
                deltas += 1
                if not first:
                    first = time.perf_counter_ns()
            elif event == "final":
                final = time.perf_counter_ns()
                tokens = response.final.usage.output_tokens
        if not final:
            raise RuntimeError("InferenceService ended a stream without a final message")
        return StreamTiming((first - sent) / 1000, (final - sent) / 1000, tokens, deltas)

    async def check(self) -> tuple[str, inference_pb2.GenerationFinal]:
        """One stream, parsed in full: its text and its final message."""
        parts: list[str] = []
        final = inference_pb2.GenerationFinal()
        call = self._stub.GenerateStream(
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )
        async for response in call:
            event = response.WhichOneof("event")
            if event == "delta":
                parts.append(response.delta.text)
            elif event == "final":
                final = response.final
        return "".join(parts), final


class GatewayPath:
    """Streams through GatewayService `StreamComplete`, with the tenant's API key."""

    def __init__(
        self,
        address: str,
        request: gateway_service_pb2.StreamCompleteRequest,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub: GatewayStub = GatewayStub(self._channel)
        self._request = request
        self._metadata = tuple(metadata)

    async def close(self) -> None:
        await self._channel.close(None)

    def call(self) -> AsyncIterator[gateway_service_pb2.StreamCompleteResponse]:
        """One completion, its messages as they come."""
        return self._stub.StreamComplete(  # type: ignore[return-value]
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )

    async def stream(self) -> StreamTiming:
        """One completion, timed: TTFT at the first delta (not at `start`, which the gateway
        sends before it calls InferenceService)."""
        sent = time.perf_counter_ns()
        first = final = 0
        tokens = deltas = 0
        call = self._stub.StreamComplete(
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )
        async for response in call:
            event = response.WhichOneof("event")
            if event == "delta":
                deltas += 1
                if not first:
                    first = time.perf_counter_ns()
            elif event == "final":
                final = time.perf_counter_ns()
                tokens = response.final.usage.output_tokens
        if not final:
            raise RuntimeError("GatewayService ended a stream without a final message")
        return StreamTiming((first - sent) / 1000, (final - sent) / 1000, tokens, deltas)

    async def check(self) -> tuple[str, int, gateway_pb2.CompletionMetadata]:
        """One completion, parsed in full: its text, its number of deltas, its final message."""
        parts: list[str] = []
        final = gateway_pb2.CompletionMetadata()
        call = self._stub.StreamComplete(
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )
        async for response in call:
            event = response.WhichOneof("event")
            if event == "delta":
                parts.append(response.delta.text)
            elif event == "final":
                final = response.final
        return "".join(parts), len(parts), final


# ------------------------------------------------------------------------------------ platform


def catalog_text(endpoint: str) -> str:
    """The router's catalog (`benchmarks.deployment.zero_catalog`) of the unpaced and the
    paced zero model, for a Triton at `endpoint`."""
    return zero_catalog(
        [endpoint], [(ZERO_MODEL, ZERO_TRITON_MODEL), (PACED_MODEL, PACED_TRITON_MODEL)]
    )


def platform_env(triton_address: str, catalog_file: Path, data: Path) -> dict[str, str]:
    """The environment of a `genai serve` with every service: API keys, the request log and
    the prompt registry in SQLite under `data`, in-memory quotas, the router's catalog from
    `catalog_file`, InferenceService serving `zero` from the Triton at `triton_address` (which
    it does not launch). XDG_DATA_HOME keeps its development key under `data` too."""
    models = [
        served_model(
            name,
            triton_address,
            triton_model,
            max_output_tokens=100_000,
            chat_template="builtin:chatml",
            max_in_flight=1024,
        )
        for name, triton_model in (
            (ZERO_MODEL, ZERO_TRITON_MODEL),
            (PACED_MODEL, PACED_TRITON_MODEL),
        )
    ]
    return {
        "GENAI_AUTH__MODE": "api_key",
        "GENAI_SERVER__GRACE_SECONDS": "1",
        "GENAI_PROMPT__DATABASE_URL": f"sqlite+aiosqlite:///{data / 'prompts.db'}",
        "GENAI_GATEWAY__DATABASE_URL": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
        "GENAI_GATEWAY__QUOTA__BACKEND": "memory",
        "GENAI_GATEWAY__REQUEST_LOG__ENABLED": "true",
        "GENAI_ROUTER__CATALOG_FILE": str(catalog_file),
        "GENAI_INFERENCE__TRITON__LAUNCH": "false",
        "GENAI_INFERENCE__MODELS": json.dumps(models),
        "XDG_DATA_HOME": str(data / "xdg"),
    }


def completion_request(
    tokens: int, model: str = ZERO_MODEL
) -> gateway_service_pb2.StreamCompleteRequest:
    """The gateway path's request: the `chat` prompt at `production`, pinned to `model`."""
    request = gateway_service_pb2.StreamCompleteRequest(
        prompt=PROMPT,
        routing=routing_pb2.RoutingPreferences(model=model),
        parameters=generation_pb2.SamplingParameters(max_tokens=tokens),
    )
    request.variables.update({"message": MESSAGE})
    return request


def chat_body(tokens: int, model: str = ZERO_MODEL) -> dict[str, Any]:
    """The HTTP path's body: what `completion_request(tokens, model)` asks for, as a streamed
    OpenAI chat completion of `prompt:chat` (no messages beyond the prompt's own) with a usage
    chunk."""
    return {
        "model": f"prompt:{PROMPT}",
        "messages": [],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "genai": {"variables": {"message": MESSAGE}, "routing": {"model": model}},
    }


def http_path(
    platform: ServerProcess, body: Mapping[str, Any], metadata: Sequence[tuple[str, str]]
) -> HttpSsePath:
    """The HTTP path to the platform's OpenAI-compatible API (the port its ready file
    names), sending `body` with the same API key (`metadata`) as the gRPC paths."""
    port = platform.ready.get("http_port")
    if not port:
        raise RuntimeError("genai serve reported no HTTP port (is the HTTP API off?)")
    return HttpSsePath("127.0.0.1", int(port), body, metadata)


async def create_tenant(address: str, admin_key: str) -> str:
    """Creates the benchmark's tenant (generous limits) and a key of its own, pushes the
    sample prompts for it, and returns the key."""
    from services.common.clients import api_key_metadata, create_channel
    from services.prompt.cli import seed_prompts

    async with grpc.aio.insecure_channel(address) as channel:
        admin = GatewayStub(channel)
        metadata = api_key_metadata(admin_key)
        await admin.CreateTenant(
            gateway_service_pb2.CreateTenantRequest(
                tenant=gateway_pb2.Tenant(
                    id=TENANT, display_name="scripts/bench gateway", quota=TENANT_QUOTA
                )
            ),
            timeout=30,
            metadata=metadata,
        )
        created = await admin.CreateApiKey(
            gateway_service_pb2.CreateApiKeyRequest(tenant_id=TENANT, display_name="bench"),
            timeout=30,
            metadata=metadata,
        )
    key: str = created.secret
    seeding = create_channel(address, metadata=api_key_metadata(key))
    try:
        report = await seed_prompts(seeding, PROMPTS_FOLDER)
    finally:
        await seeding.close(None)
    if report.failures:
        raise RuntimeError("pushing the sample prompts failed:\n" + "\n".join(report.lines))
    return key


async def rendered_chat(
    address: str, metadata: Sequence[tuple[str, str]]
) -> prompt_service_pb2.RenderPromptResponse:
    """The `chat` prompt at `production` rendered by PromptService: the messages and
    parameters the gateway sends InferenceService."""
    async with grpc.aio.insecure_channel(address) as channel:
        request = prompt_service_pb2.RenderPromptRequest(prompt=PROMPT)
        request.variables.update({"message": MESSAGE})
        response: prompt_service_pb2.RenderPromptResponse = await PromptStub(channel).RenderPrompt(
            request, timeout=30, metadata=tuple(metadata)
        )
    return response


def generation_request(
    rendered: prompt_service_pb2.RenderPromptResponse, tokens: int, model: str = ZERO_MODEL
) -> inference_service_pb2.GenerateStreamRequest:
    """The inference path's request: what the gateway sends for `completion_request(tokens)`
    (the rendered messages, the version's sampling parameters with max_tokens = `tokens`)."""
    parameters = generation_pb2.SamplingParameters()
    parameters.CopyFrom(rendered.parameters)
    parameters.max_tokens = tokens
    return inference_service_pb2.GenerateStreamRequest(
        model=model,
        chat=inference_pb2.ChatInput(messages=rendered.messages),
        parameters=parameters,
    )


def scrape(metrics_url: str) -> dict[str, float]:
    """The gateway's counters of interest from the platform's Prometheus endpoint, summed by
    name and the one label that matters (e.g. `genai_gateway_requests_total{code=OK}`)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "genai_gateway_requests_total": "code",
        "genai_request_log_records_total": "outcome",
        "genai_request_log_write_errors_total": "",
        "genai_request_log_queue_depth": "",
        "genai_gateway_quota_rejections_total": "",
        "genai_gateway_failovers_total": "",
    }
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            label = wanted[sample.name]
            key = (
                f"{sample.name}{{{label}={sample.labels.get(label, '')}}}" if label else sample.name
            )
            figures[key] = figures.get(key, 0.0) + sample.value
    return figures


async def settled_metrics(metrics_url: str, patience_s: float = 10.0) -> dict[str, float]:
    """`scrape` once the request log's queue is empty (its writer is asynchronous)."""
    deadline = time.monotonic() + patience_s
    while True:
        figures = await asyncio.to_thread(scrape, metrics_url)
        if not figures.get("genai_request_log_queue_depth") or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------------ the run


@dataclass
class GatewayRun:
    """A finished run: its scenarios, and what the platform's own counters said."""

    config: GatewayConfig
    started_at: datetime
    duration_s: float
    environment: Mapping[str, Any]
    run_dir: Path
    """Where Triton's and the platform's logs are."""
    scenarios: list[PathScenario]
    paced: PacedRun | None = None
    """The paced part (None: left out)."""
    counters: Mapping[str, float] = field(default_factory=dict)
    """The gateway's Prometheus counters after the run (see `scrape`)."""
    checks: list[str] = field(default_factory=list)
    """What the streams checked before measuring showed (texts, token counts, deltas)."""

    @property
    def targets(self) -> list[TargetCheck]:
        return gateway_targets(self.scenarios, self.paced)

    @property
    def result(self) -> "GatewayResult":
        return gateway_result(self)

    def plot(self, path: Path) -> None:
        from benchmarks.inference_plot import plot_panels

        plot_panels(
            path,
            "GatewayService (gRPC and HTTP SSE) vs InferenceService vs direct Triton (zero_llm)",
            panels(self),
            subtitle=_subtitle(self.started_at, self.environment, self.config),
        )


async def run_gateway(
    config: GatewayConfig, progress: Progress | None = None, *, profile: Path | None = None
) -> GatewayRun:
    """Starts Triton (zero_llm, zero_llm_paced), the platform and the bare relay, sets up a
    tenant, measures the paths, reads the gateway's counters, and stops them all. With
    `profile` (a folder), py-spy records a flame graph of the platform during the paced
    gateway cell at `TARGET_CONCURRENCY` (or the nearest below) and the longest streams."""
    from services.inference.adapters.tritonserver import TritonServer

    progress = progress or Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    run_dir = RUN_ROOT / f"bench-{NAME}-{started_at:%Y%m%dT%H%M%SZ}-{os.getpid()}"
    env_before = environment()
    try:
        progress.stage("starting Triton (zero_llm, zero_llm_paced)")
        triton = TritonServer()
        models = tempfile.TemporaryDirectory(prefix="bench-gateway-models-")
        await triton.start(
            zero_repository(Path(models.name), CPU_REPOSITORY),
            models=[ZERO_TRITON_MODEL, PACED_TRITON_MODEL],
            http_port=None,
            log_file=run_dir / "triton.log",
        )
        try:
            with tempfile.TemporaryDirectory(prefix="bench-gateway-") as folder:
                data = Path(folder)
                catalog = data / "catalog.yaml"
                catalog.write_text(catalog_text(triton.grpc_address))
                progress.stage("starting the platform (genai serve, every service)")
                env = platform_env(triton.grpc_address, catalog, data)
                async with (
                    genai_serve([], env, log_file=run_dir / "genai.log") as platform,
                    server_process(
                        "benchmarks.passthrough", ["--target", triton.grpc_address]
                    ) as hop,
                ):
                    pid = triton.pid
                    assert pid is not None
                    probes: dict[str, CpuProbe] = {
                        "platform": platform.cpu_seconds,
                        "hop": hop.cpu_seconds,
                        "triton": lambda: group_cpu_seconds(pid),
                    }
                    checks: list[str] = []
                    addresses = {DIRECT: triton.grpc_address, HOP: hop.address}
                    profiler = None
                    if profile is not None and platform.process.pid is not None:
                        stem = f"{NAME}-{started_at:%Y%m%dT%H%M%SZ}"
                        profiler = Profiler(platform.process.pid, profile, stem)
                    scenarios, paced = await while_alive(
                        triton,
                        _measure(config, addresses, platform, progress, probes, checks, profiler),
                    )
                    if profiler is not None:
                        checks += [f"flame graph: {shown(path)}" for path in profiler.written]
                    counters: dict[str, float] = {}
                    metrics_port = platform.ready.get("metrics_port")
                    if metrics_port:
                        url = f"http://127.0.0.1:{metrics_port}/metrics"
                        try:
                            counters = await settled_metrics(url)
                        except (OSError, ValueError) as error:  # keep the figures anyway
                            progress.note(f"reading the platform's metrics failed: {error}")
        finally:
            await triton.stop()
            models.cleanup()
    finally:
        progress.close()
    env_after = with_load_at_end(env_before)
    return GatewayRun(
        config=config,
        started_at=started_at,
        duration_s=time.monotonic() - started,
        environment=env_after,
        run_dir=run_dir,
        scenarios=scenarios,
        paced=paced,
        counters=counters,
        checks=checks,
    )


async def _measure(
    config: GatewayConfig,
    addresses: Mapping[str, str],
    platform: ServerProcess,
    progress: Progress,
    probes: Mapping[str, CpuProbe],
    checks: list[str],
    profiler: Profiler | None = None,
) -> tuple[list[PathScenario], PacedRun | None]:
    from services.common.clients import api_key_metadata

    progress.stage(f"creating tenant {TENANT!r} and pushing the sample prompts")
    # The ready file names the development key's file; the secret itself is only there.
    key_file = str(platform.ready.get("api_key_file", ""))
    admin_key = (await asyncio.to_thread(Path(key_file).read_text)).strip() if key_file else ""
    if not admin_key:
        raise RuntimeError("genai serve reported no development key (is auth mode api_key?)")
    metadata = api_key_metadata(await create_tenant(platform.address, admin_key))
    rendered = await rendered_chat(platform.address, metadata)
    prompt = chatml(rendered.messages)
    generation = generation_request(rendered, config.tokens)
    http = http_path(platform, chat_body(config.tokens), metadata)
    direct = DirectPath(addresses[DIRECT], ZERO_TRITON_MODEL, prompt, config.tokens)
    hop = DirectPath(addresses[HOP], ZERO_TRITON_MODEL, prompt, config.tokens)
    inference = InferencePath(platform.address, generation, metadata)
    gateway = GatewayPath(platform.address, completion_request(config.tokens), metadata)
    try:
        checks += await check_paths(direct, inference, gateway, config.tokens, http=http)
        if await hop.check() != await direct.check():
            raise RuntimeError("the bare relay streamed another text than Triton itself")
        paths: dict[str, StreamFn] = {
            DIRECT: direct.stream,
            HOP: hop.stream,
            INFERENCE: inference.stream,
            GATEWAY: gateway.stream,
            HTTP: http.stream,
        }
        loaded = {name: stream for name, stream in paths.items() if name != HOP}
        per_round = config.streams // config.rounds
        load_s = config.load_seconds / config.load_rounds

        def one_by_one(stream: StreamFn, done: Callable[[int], None]) -> Awaitable[StreamRound]:
            return sequential(stream, per_round, done)

        scenarios = [
            await interleave(
                PathScenario(1),
                paths,
                config.rounds,
                progress,
                probes,
                run=one_by_one,
                warm=one_by_one,
                total=per_round,
                label="c=1",
                headline=headline,
            )
        ]
        for concurrency in config.concurrencies:
            scenarios.append(
                await interleave(
                    PathScenario(concurrency),
                    loaded,
                    config.load_rounds,
                    progress,
                    probes,
                    run=loader(concurrency, load_s),
                    warm=loader(concurrency, min(load_s, 1.0) / 2),
                    label=f"c={concurrency}",
                    headline=headline,
                )
            )
    finally:
        await direct.close()
        await hop.close()
        await inference.close()
        await gateway.close()
        await http.close()
    checks.append(
        f"http: {http.connections_opened} connections opened (one per stream in flight, and "
        "again after the server closed an idle one)"
    )
    paced = None
    if config.paced is not None:
        paced = await measure_paced(
            config.paced,
            addresses,
            platform.address,
            rendered,
            metadata,
            progress,
            probes,
            profiler,
        )
        checks.append(
            f"paced: every path streamed the paced model's {max(config.paced.lengths)} tokens "
            "with the same text (checked before measuring)"
        )
    return scenarios, paced


# ------------------------------------------------------------------------------------ paced


def direct_messages(path: DirectPath) -> Messages:
    """Direct Triton: one token per response (zero_llm's contract, checked before)."""

    async def messages() -> AsyncIterator[int]:
        async for _arrived, _result in path.responses():
            yield 1

    return messages


def inference_messages(path: "InferencePath") -> Messages:
    """InferenceService: each delta's `token_count`."""

    async def messages() -> AsyncIterator[int]:
        async for response in path.call():
            if response.WhichOneof("event") == "delta":
                yield response.delta.token_count

    return messages


def gateway_messages(path: "GatewayPath") -> Messages:
    """The gateway: each delta's tokens, counted in its text (zero_llm's tokens are `tokN `,
    one space each; the check before measuring holds the count to the final's usage)."""

    async def messages() -> AsyncIterator[int]:
        async for response in path.call():
            if response.WhichOneof("event") == "delta":
                yield response.delta.text.count(" ")

    return messages


async def measure_paced(
    config: PacedConfig,
    addresses: Mapping[str, str],
    platform_address: str,
    rendered: prompt_service_pb2.RenderPromptResponse,
    metadata: Sequence[tuple[str, str]],
    progress: Progress,
    probes: Mapping[str, CpuProbe],
    profiler: Profiler | None = None,
) -> PacedRun:
    """Every (length, concurrency) of `config` on each paced path (see `benchmarks.paced`);
    `profiler` records the gateway cell of `profiled(config)`."""
    run = PacedRun(config)
    profiled_cell = profiled(config)
    prompt = chatml(rendered.messages)
    cells = len(config.lengths) * len(config.concurrencies)
    progress.stage(
        f"paced: {cells} (length, concurrency) cells x {len(PACED_PATHS)} paths, "
        f"{config.seconds:g} s each"
    )
    for length in config.lengths:
        direct = DirectPath(addresses[DIRECT], PACED_TRITON_MODEL, prompt, length)
        hop = DirectPath(addresses[HOP], PACED_TRITON_MODEL, prompt, length)
        inference = InferencePath(
            platform_address, generation_request(rendered, length, PACED_MODEL), metadata
        )
        gateway = GatewayPath(platform_address, completion_request(length, PACED_MODEL), metadata)
        try:
            await check_paths(direct, inference, gateway, length, model=PACED_MODEL)
            streams: dict[str, Messages] = {
                DIRECT: direct_messages(direct),
                HOP: direct_messages(hop),
                INFERENCE: inference_messages(inference),
                GATEWAY: gateway_messages(gateway),
            }
            for turn, concurrency in enumerate(config.concurrencies):
                # Alternate which path goes first, as the unpaced rounds do.
                order = PACED_PATHS if (turn + len(run.cells)) % 2 == 0 else PACED_PATHS[::-1]
                for name in order:
                    progress.step(f"paced {length} tokens c={concurrency} {name}")
                    recording = None
                    if profiler is not None and (name, length, concurrency) == profiled_cell:
                        recording = profiler.record(
                            f"paced-c{concurrency}-{length}", config.seconds + ramp_s(length)
                        )
                    cell = await run_cell(
                        name, streams[name], length, concurrency, config.seconds, probes
                    )
                    if recording is not None:
                        await recording
                    run.cells.append(cell)
        finally:
            await direct.close()
            await hop.close()
            await inference.close()
            await gateway.close()
    progress.note(paced_headline(run))
    return run


def profiled(config: PacedConfig) -> tuple[str, int, int]:
    """The paced cell a profile records: the gateway, the longest streams, at
    `TARGET_CONCURRENCY` or the highest concurrency below it (the lowest if none is)."""
    below = [c for c in config.concurrencies if c <= TARGET_CONCURRENCY]
    concurrency = max(below) if below else min(config.concurrencies)
    return GATEWAY, max(config.lengths), concurrency


def paced_headline(run: PacedRun) -> str:
    fits = [f for f in run.fits("platform") if f.path == GATEWAY]
    return "paced, gateway path, platform CPU: " + "; ".join(
        f"c={f.concurrency} {f.per_request_us:,.0f} µs/request + {f.per_token_us:,.1f} µs/token"
        for f in fits
    )


async def check_paths(
    direct: DirectPath,
    inference: InferencePath,
    gateway: GatewayPath,
    tokens: int,
    *,
    model: str = ZERO_MODEL,
    http: HttpSsePath | None = None,
) -> list[str]:
    """One stream on each path, parsed in full: the same text and token count everywhere, the
    gateway's stream served by `zero`, and (with `http`) the HTTP API's the same text and
    usage as StreamComplete's; returns what they showed. Raises when a path is wrong."""
    expected = await direct.check()
    text, final = await inference.check()
    if text != expected or final.usage.output_tokens != tokens:
        raise RuntimeError(f"inference streamed {text!r}, direct {expected!r}")
    relayed, deltas, metadata = await gateway.check()
    if relayed != expected or metadata.usage.output_tokens != tokens:
        raise RuntimeError(f"gateway streamed {relayed!r}, direct {expected!r}")
    if metadata.model != model:
        raise RuntimeError(f"the gateway routed to {metadata.model!r}, not {model!r}")
    if relayed.count(" ") != tokens:
        raise RuntimeError(f"the gateway's text has {relayed.count(' ')} tokens, not {tokens}")
    same_input = metadata.usage.input_tokens == final.usage.input_tokens
    lines = [
        f"every path streamed the same {tokens} tokens ({expected[:24]!r}...); the gateway sent "
        f"them in {deltas} deltas (its PII redaction holds back a chunk's trailing digits "
        f"until the next chunk), served by {metadata.model}/{metadata.backend_id} (prompt "
        f"{metadata.prompt} v{metadata.prompt_version}, label {metadata.label})",
        f"input tokens: inference {final.usage.input_tokens}, gateway "
        f"{metadata.usage.input_tokens} ("
        + ("the same rendered chat input)" if same_input else "NOT the same input)"),
    ]
    if http is not None:
        lines.append(http_check(await http.check(), relayed, metadata))
    return lines


def http_check(
    completion: SseCompletion, expected: str, metadata: gateway_pb2.CompletionMetadata
) -> str:
    """What the HTTP API's stream showed, once it is held to StreamComplete's (`expected`
    text, `metadata`): the same text, usage and model. Raises when it differs."""
    usage = {
        "prompt_tokens": metadata.usage.input_tokens,
        "completion_tokens": metadata.usage.output_tokens,
        "total_tokens": metadata.usage.input_tokens + metadata.usage.output_tokens,
    }
    if completion.text != expected:
        raise RuntimeError(f"the HTTP API streamed {completion.text!r}, gRPC {expected!r}")
    if dict(completion.usage) != usage:
        raise RuntimeError(f"the HTTP API's usage is {dict(completion.usage)}, gRPC's {usage}")
    served = completion.genai.get("model")
    if served != metadata.model:
        raise RuntimeError(
            f"the HTTP API's stream was served by {served!r}, not {metadata.model!r}"
        )
    return (
        f"http: the same text and usage as StreamComplete ({usage['prompt_tokens']} + "
        f"{usage['completion_tokens']} tokens) in {completion.deltas} chunks, finish_reason "
        f"{completion.finish_reason!r}, served by {served} "
        f"({completion.headers.get('content-type', '?')})"
    )


def headline(scenario: Scenario) -> str:
    """One progress line: TTFT p50 and streams/s of each path."""
    parts = [
        f"{p} {latency_of(scenario.timings(p), 'ttft', 50) / 1000:.2f} ms "
        f"{scenario.streams_per_s(p):,.0f}/s"
        for p in scenario.paths
    ]
    return f"c={scenario.concurrency}: TTFT p50, streams/s: " + "; ".join(parts)


# ------------------------------------------------------------------------------------ results


def gateway_targets(
    scenarios: Sequence[Scenario], paced: PacedRun | None = None
) -> list[TargetCheck]:
    """The targets (see the module docstring); a target the run did not measure is left out."""
    checks = []
    if paced is not None:
        checks += paced_targets(paced)
    single = next((s for s in scenarios if s.concurrency == 1), None)
    if single is not None and {HOP, GATEWAY} <= set(single.rounds):
        base, cand, differences = added(single, HOP, GATEWAY, "ttft", 50.0)
        checks.append(
            check_at_most(
                "c=1: TTFT p50 of the gateway above the bare relay's",
                (cand - base) / 1000,
                HOP_TTFT_TARGET_MS,
                "ms",
                detail=f"bare relay {base / 1000:.2f} -> gateway {cand / 1000:.2f} ms; rounds "
                f"{spread([d / 1000 for d in differences])} ms",
            )
        )
    loaded = next((s for s in scenarios if s.concurrency == TARGET_CONCURRENCY), None)
    if loaded is not None:
        for baseline, limit in (
            (DIRECT, DIRECT_THROUGHPUT_TARGET),
            (INFERENCE, INFERENCE_THROUGHPUT_TARGET),
        ):
            if not {baseline, GATEWAY} <= set(loaded.rounds):
                continue
            base, cand = (loaded.streams_per_s(p) for p in (baseline, GATEWAY))
            checks.append(
                check_at_least(
                    f"c={TARGET_CONCURRENCY}: streams/s through the gateway / {baseline}",
                    _ratio(cand, base),
                    limit,
                    "x",
                    detail=f"{base:,.0f} vs {cand:,.0f} streams/s; rounds "
                    f"{format_rounds(rate_ratios(loaded, baseline, GATEWAY))}",
                )
            )
    if single is not None and {GATEWAY, HTTP} <= set(single.rounds):
        checks.append(http_target(single, [s for s in scenarios if s is not single]))
    return checks


def http_target(single: Scenario, loaded: Sequence[Scenario]) -> TargetCheck:
    """The HTTP API's TTFT p50 at concurrency 1 above StreamComplete's, with both paths'
    streams/s at 1 and at `TARGET_CONCURRENCY` (where measured) beside it."""
    base, cand, differences = added(single, GATEWAY, HTTP, "ttft", 50.0)
    rates = [
        f"c={s.concurrency} {s.streams_per_s(GATEWAY):,.0f} vs {s.streams_per_s(HTTP):,.0f} "
        f"({format_ratio(_ratio(s.streams_per_s(HTTP), s.streams_per_s(GATEWAY)))})"
        for s in (single, *loaded)
        if {GATEWAY, HTTP} <= set(s.rounds) and s.concurrency in (1, TARGET_CONCURRENCY)
    ]
    return check_at_most(
        "c=1: TTFT p50 of the HTTP API (SSE) above gRPC StreamComplete's",
        (cand - base) / 1000,
        HTTP_TTFT_TARGET_MS,
        "ms",
        detail=f"StreamComplete {base / 1000:.2f} -> HTTP {cand / 1000:.2f} ms; rounds "
        f"{spread([d / 1000 for d in differences])} ms; streams/s StreamComplete vs HTTP: "
        + "; ".join(rates),
    )


def paced_targets(paced: PacedRun) -> list[TargetCheck]:
    """Gateway path, paced, at `TARGET_CONCURRENCY`: platform CPU per token and per request
    (the fit), and the inter-token latency p99 added over direct."""
    fits = {f.path: f for f in paced.fits("platform") if f.concurrency == TARGET_CONCURRENCY}
    gateway = fits.get(GATEWAY)
    if gateway is None:
        return []
    inference = fits.get(INFERENCE)
    beside = (
        f"; InferenceService alone {inference.per_token_us:,.1f} µs/token, "
        f"{inference.per_request_us:,.0f} µs/request"
        if inference is not None
        else ""
    )
    lengths = "/".join(str(n) for n in paced.config.lengths)
    floor = next(
        (f for f in paced.fits("hop") if f.path == HOP and f.concurrency == TARGET_CONCURRENCY),
        None,
    )
    if floor is not None:
        beside += (
            f"; the floor, a bare relay: {floor.per_token_us:,.1f} µs/token, "
            f"{floor.per_request_us:,.0f} µs/request"
        )
    checks = [
        check_at_most(
            f"paced c={TARGET_CONCURRENCY}: gateway path, platform CPU per relayed token",
            gateway.per_token_us,
            TOKEN_CPU_TARGET_US,
            "µs",
            detail=f"fit over {lengths}-token streams{beside}",
        ),
        check_at_most(
            f"paced c={TARGET_CONCURRENCY}: gateway path, platform CPU per request",
            gateway.per_request_us,
            REQUEST_CPU_TARGET_US,
            "µs",
            detail=f"the same fit; {paced.tokens_per_core_s(GATEWAY, TARGET_CONCURRENCY, 'platform'):,.0f} "
            "tokens/s per platform core",
        ),
    ]
    base = paced.gap_us(DIRECT, TARGET_CONCURRENCY, 99.0)
    cand = paced.gap_us(GATEWAY, TARGET_CONCURRENCY, 99.0)
    checks.append(
        check_at_most(
            f"paced c={TARGET_CONCURRENCY}: inter-token latency p99 added by the gateway path",
            (cand - base) / 1000,
            ITL_ADDED_TARGET_MS,
            "ms",
            detail=f"direct {base / 1000:.2f} -> gateway {cand / 1000:.2f} ms (p50 "
            f"{paced.gap_us(DIRECT, TARGET_CONCURRENCY, 50.0) / 1000:.2f} -> "
            f"{paced.gap_us(GATEWAY, TARGET_CONCURRENCY, 50.0) / 1000:.2f} ms)",
        )
    )
    return checks


def overheads(scenarios: Sequence[Scenario]) -> list[dict[str, Any]]:
    """Each pair of `PAIRS` in each scenario: TTFT p50/p99 and stream-latency p99 added (ms,
    with each round's own difference) and the streams/s ratio (with each round's)."""
    rows = []
    for scenario in scenarios:
        for baseline, candidate in PAIRS:
            if not {baseline, candidate} <= set(scenario.rounds):
                continue
            row: dict[str, Any] = {
                "concurrency": scenario.concurrency,
                "baseline": baseline,
                "candidate": candidate,
            }
            for metric, p in (("ttft", 50.0), ("ttft", 99.0), ("total", 50.0), ("total", 99.0)):
                base, cand, differences = added(scenario, baseline, candidate, metric, p)
                key = f"{metric}_p{p:.0f}"
                row[f"{key}_added_ms"] = (cand - base) / 1000
                row[f"{key}_rounds_added_ms"] = [d / 1000 for d in differences]
            row["streams_per_s_ratio"] = _ratio(
                scenario.streams_per_s(candidate), scenario.streams_per_s(baseline)
            )
            row["streams_per_s_rounds_ratio"] = rate_ratios(scenario, baseline, candidate)
            row["platform_cpu_us_per_stream_added"] = scenario.cpu_us_per_stream(
                candidate, "platform"
            ) - scenario.cpu_us_per_stream(baseline, "platform")
            rows.append(row)
    return rows


def round_figures(r: StreamRound) -> dict[str, float]:
    """One round's own figures, for the JSON file."""
    figures = {
        "streams": float(len(r.streams)),
        "served": float(r.served),
        "elapsed_s": r.elapsed_s,
        "streams_per_s": r.streams_per_s,
        "tokens_per_s": r.tokens_per_s,
    }
    for process in PROCESSES:
        if process in r.cpu_s and r.served:
            figures[f"{process}_cpu_us_per_stream"] = r.cpu_s[process] / r.served * 1e6
    for metric in ("ttft", "total"):
        figures[f"{metric}_p50_us"] = latency_of(r.streams, metric, 50)
        figures[f"{metric}_p99_us"] = latency_of(r.streams, metric, 99)
    return figures


def measurements(scenario: Scenario, path: str) -> list[Measurement]:
    """TTFT and stream latency of one path in one scenario (rates and rounds with TTFT)."""
    timings = scenario.timings(path)
    rates = {
        "streams_per_s": scenario.streams_per_s(path),
        "tokens_per_s": scenario.tokens_per_s(path),
        **{
            f"{process}_cpu_us_per_stream": scenario.cpu_us_per_stream(path, process)
            for process in PROCESSES
        },
    }
    rounds = [round_figures(r) for r in scenario.rounds[path]]
    return [
        Measurement(
            scenario=NAME,
            variant=path,
            concurrency=scenario.concurrency,
            latency_metric=metric,
            latency_us=LatencySummary.of(getattr(t, f"{attribute}_us") for t in timings)
            if timings
            else None,
            rates=rates if metric == "TTFT" else {},
            rounds=rounds if metric == "TTFT" else (),
        )
        for metric, attribute in (("TTFT", "ttft"), ("stream", "total"))
    ]


def comparisons(scenario: Scenario) -> list[Comparison]:
    """Every pair of `PAIRS`: TTFT and stream latency p50/p99, streams/s and tokens/s, each
    with its rounds' ratios. The scenario label names the pair ("gateway/direct")."""
    found = []
    for baseline, candidate in PAIRS:
        if not {baseline, candidate} <= set(scenario.rounds):
            continue
        label = f"{candidate}/{baseline}"
        figures = {
            path: [round_figures(r) for r in scenario.rounds[path]]
            for path in (baseline, candidate)
        }
        for metric, name in (("ttft", "TTFT"), ("total", "stream")):
            for p in (50.0, 99.0):
                base, cand, _ = added(scenario, baseline, candidate, metric, p)
                key = f"{metric}_p{p:.0f}_us"
                found.append(
                    Comparison.of_latency(
                        label,
                        scenario.concurrency,
                        f"{name} p{p:.0f}",
                        base,
                        cand,
                        round_ratios(
                            [f[key] for f in figures[baseline]],
                            [f[key] for f in figures[candidate]],
                        ),
                    )
                )
        for item, key in (("stream", "streams_per_s"), ("token", "tokens_per_s")):
            base, cand = (
                scenario.streams_per_s(p) if item == "stream" else scenario.tokens_per_s(p)
                for p in (baseline, candidate)
            )
            found.append(
                Comparison.of_rate(
                    label,
                    scenario.concurrency,
                    "rate",
                    item,
                    base,
                    cand,
                    round_ratios(
                        [f[key] for f in figures[baseline]], [f[key] for f in figures[candidate]]
                    ),
                )
            )
    return found


@dataclass(frozen=True)
class GatewayResult(BenchmarkResult):
    """The JSON file: the shared result record, plus the targets, the overhead of each pair
    and the gateway's counters after the run."""

    targets: Sequence[Mapping[str, Any]] = ()
    overheads: Sequence[Mapping[str, Any]] = ()
    counters: Mapping[str, float] = field(default_factory=dict)
    checks: Sequence[str] = ()
    logs: str = ""
    paced: Mapping[str, Any] = field(default_factory=dict)
    """The paced part: each cell's figures and each fit (µs per request and per token)."""


def gateway_result(run: GatewayRun) -> GatewayResult:
    """The run as the record `write_outputs` writes."""
    config = run.config
    return GatewayResult(
        benchmark=NAME,
        started_at=run.started_at,
        duration_s=run.duration_s,
        baseline=DIRECT,
        candidate=GATEWAY,
        config=asdict(config),
        environment=dict(run.environment),
        measurements=[m for s in run.scenarios for p in s.paths for m in measurements(s, p)],
        comparisons=[c for s in run.scenarios for c in comparisons(s)],
        notes=notes(config),
        targets=[asdict(t) for t in run.targets],
        overheads=overheads(run.scenarios),
        counters=dict(run.counters),
        checks=list(run.checks),
        logs=shown(run.run_dir),
        paced=paced_figures(run.paced),
    )


def paced_figures(paced: PacedRun | None) -> dict[str, Any]:
    """The paced part for the JSON file."""
    if paced is None:
        return {}
    return {
        "config": asdict(paced.config),
        "cells": [c.figures() for c in paced.cells],
        "fits": [asdict(f) for process in PROCESSES for f in paced.fits(process)],
        "tokens_per_platform_core_s": {
            f"{path} c={c}": paced.tokens_per_core_s(path, c, "platform")
            for path in PACED_PATHS
            for c in paced.config.concurrencies
        },
    }


def notes(config: GatewayConfig) -> list[str]:
    return [
        f"zero_llm in Triton, {config.tokens} tokens per stream, no pause between tokens. "
        "direct: tritonclient.grpc.aio stream_infer of the chat prompt as ChatML text; "
        "inference: InferenceService GenerateStream of the rendered chat messages; gateway: "
        f"GatewayService StreamComplete of prompt {PROMPT!r} (label production) pinned to "
        f"{ZERO_MODEL!r}; http: POST /v1/chat/completions of model 'prompt:{PROMPT}' with the "
        "same variable, max_tokens and routing in `genai`, streamed (SSE, usage chunk), from a "
        "lean asyncio HTTP/1.1 client (a keep-alive connection per stream in flight; opening "
        "one is not timed). The platform paths: the same `genai serve` process (every "
        f"service), API key of tenant {TENANT!r}, request log on (SQLite), in-memory quotas.",
        "TTFT: call to the first message with text (the gateway's `start` comes before it; "
        "http: the first chunk with non-empty content); stream: call to the final message "
        "(http: `data: [DONE]`). Rounds alternate the paths' order; overheads "
        "pool all rounds, 'rounds' gives each round's own difference or ratio: median "
        "(lowest..highest).",
        "CPU: user+system time per stream served (ramp-up and ramp-down streams too) of this "
        "client, the platform process and Triton's process group (with its Python stubs), from "
        "/proc (10 ms ticks, summed over all rounds).",
    ]


# ------------------------------------------------------------------------------------ report


def _subtitle(started_at: datetime, env: Mapping[str, Any], config: GatewayConfig) -> str:
    start, end = env.get("load_average_at_start") or [], env.get("load_average_at_end") or []
    load_text = f", load average {start[0]:.1f}" if start else ""
    load_text += f" -> {end[0]:.1f}" if start and end else ""
    return (
        f"{started_at:%Y-%m-%d %H:%M} UTC, {env.get('cpu_count')} CPUs{load_text}, "
        f"Python {env.get('python')}, grpcio {env.get('grpcio')}, {config.rounds} interleaved "
        f"rounds at c=1, {config.load_rounds} under load"
    )


def _ms(value_us: float) -> str:
    return format_number(value_us / 1000)


def _signed_ms(value_ms: float) -> str:
    return f"{value_ms:+.2f}" if math.isfinite(value_ms) else "n/a"


def figures_table(scenarios: Sequence[Scenario]) -> str:
    """Each path's latencies (ms) and rates at each concurrency."""
    headers = [
        "conc",
        "path",
        "streams",
        "TTFT p50",
        "TTFT p99",
        "stream p50",
        "stream p99 ms",
        "streams/s",
        "tokens/s",
        "tokens/msg",
        "x direct (rounds)",
    ]
    rows = []
    for s in scenarios:
        for path in s.paths:
            timings = s.timings(path)
            ratio = (
                format_rounds(rate_ratios(s, DIRECT, path))
                if DIRECT in s.rounds and path != DIRECT
                else ""
            )
            rows.append(
                [
                    str(s.concurrency),
                    path,
                    str(len(timings)),
                    *(
                        _ms(latency_of(timings, metric, p))
                        for metric, p in (("ttft", 50), ("ttft", 99), ("total", 50), ("total", 99))
                    ),
                    format_number(s.streams_per_s(path)),
                    format_number(s.tokens_per_s(path)),
                    tokens_per_message(timings),
                    ratio,
                ]
            )
    return format_table(headers, rows)


def tokens_per_message(timings: Sequence[StreamTiming]) -> str:
    """Tokens per message carrying text, over `timings` ("-" where messages were not counted:
    the direct paths, one response per token by zero_llm's contract)."""
    messages = sum(t.messages for t in timings)
    return f"{sum(t.tokens for t in timings) / messages:.2f}" if messages else "-"


def overhead_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """What each candidate adds over its baseline: latencies in ms, rates as ratios."""
    headers = [
        "conc",
        "candidate - baseline",
        "TTFT p50 ms",
        "rounds",
        "TTFT p99 ms",
        "rounds",
        "stream p99 ms",
        "streams/s ratio (rounds)",
        "platform CPU µs/stream",
    ]
    table = []
    for row in rows:
        table.append(
            [
                str(row["concurrency"]),
                f"{row['candidate']} - {row['baseline']}",
                _signed_ms(row["ttft_p50_added_ms"]),
                spread(row["ttft_p50_rounds_added_ms"]),
                _signed_ms(row["ttft_p99_added_ms"]),
                spread(row["ttft_p99_rounds_added_ms"]),
                _signed_ms(row["total_p99_added_ms"]),
                f"{format_ratio(row['streams_per_s_ratio'])} "
                f"({format_rounds(row['streams_per_s_rounds_ratio'])})",
                _signed_us(row["platform_cpu_us_per_stream_added"]),
            ]
        )
    return format_table(headers, table)


def _signed_us(value: float) -> str:
    return f"{value:+,.0f}" if math.isfinite(value) else "n/a"


def cpu_table(scenarios: Sequence[Scenario]) -> str:
    """CPU time per stream of each process, by concurrency and path."""
    headers = ["conc", "path", *(f"{p} CPU µs/stream" for p in PROCESSES), "all"]
    rows = []
    for s in scenarios:
        for path in s.paths:
            cpu = [s.cpu_us_per_stream(path, p) for p in PROCESSES]
            rows.append(
                [
                    str(s.concurrency),
                    path,
                    *(format_number(c) for c in cpu),
                    format_number(math.fsum(c for c in cpu if math.isfinite(c))),
                ]
            )
    return format_table(headers, rows)


def own_cost(
    rows: Sequence[Mapping[str, Any]], baseline: str = INFERENCE, candidate: str = GATEWAY
) -> list[str]:
    """What `candidate` adds beyond `baseline`, per concurrency: by default the gateway's own
    cost (over InferenceService alone)."""
    lines = []
    for row in rows:
        if (row["baseline"], row["candidate"]) != (baseline, candidate):
            continue
        lines.append(
            f"c={row['concurrency']}: TTFT p50 {_signed_ms(row['ttft_p50_added_ms'])} ms "
            f"(rounds {spread(row['ttft_p50_rounds_added_ms'])}), p99 "
            f"{_signed_ms(row['ttft_p99_added_ms'])} ms; stream p50 "
            f"{_signed_ms(row['total_p50_added_ms'])} ms, p99 "
            f"{_signed_ms(row['total_p99_added_ms'])} ms; streams/s {candidate}/{baseline} "
            f"{format_ratio(row['streams_per_s_ratio'])}; platform CPU "
            f"{_signed_us(row['platform_cpu_us_per_stream_added'])} µs per stream"
        )
    return lines


def counter_lines(counters: Mapping[str, float]) -> list[str]:
    """The gateway's own counters after the run, in words."""
    if not counters:
        return ["(the platform's metrics could not be read)"]
    codes = {
        key.split("code=")[1].rstrip("}"): value
        for key, value in counters.items()
        if key.startswith("genai_gateway_requests_total{")
    }
    records = {
        key.split("outcome=")[1].rstrip("}"): value
        for key, value in counters.items()
        if key.startswith("genai_request_log_records_total{")
    }
    return [
        "gateway completions by status: "
        + (", ".join(f"{code} {value:,.0f}" for code, value in sorted(codes.items())) or "none"),
        "request log records: "
        + (", ".join(f"{name} {value:,.0f}" for name, value in sorted(records.items())) or "none")
        + f"; write errors {counters.get('genai_request_log_write_errors_total', 0):,.0f}, "
        f"still queued {counters.get('genai_request_log_queue_depth', 0):,.0f}",
        f"quota rejections {counters.get('genai_gateway_quota_rejections_total', 0):,.0f}, "
        f"failovers {counters.get('genai_gateway_failovers_total', 0):,.0f}",
    ]


def report(run: GatewayRun) -> str:
    """The printed summary: figures, overheads, CPU, the gateway's own cost and counters,
    then a PASS/FAIL line per target."""
    rows = overheads(run.scenarios)
    return "\n".join(
        [
            f"benchmark {NAME}: "
            f"{_subtitle(run.started_at, run.environment, run.config)}, {run.duration_s:.0f} s",
            f"zero_llm, {run.config.tokens} tokens per stream: direct (tritonclient -> Triton), "
            "inference (InferenceService -> Triton), gateway (GatewayService `chat` pinned to "
            "zero -> RouterService, InferenceService -> Triton), http (the same completion "
            "through POST /v1/chat/completions, SSE); platform: genai serve, one process",
            "",
            figures_table(run.scenarios),
            "",
            "overhead (all rounds pooled; rounds: each round's own difference, median "
            "(lowest..highest)):",
            overhead_table(rows),
            "",
            cpu_table(run.scenarios),
            "",
            "the gateway's own cost (gateway - InferenceService alone, same process, same Triton):",
            *(f"  {line}" for line in own_cost(rows)),
            "",
            "the OpenAI-compatible HTTP API (http SSE - gRPC StreamComplete, same engine, same "
            "process):",
            *(f"  {line}" for line in own_cost(rows, GATEWAY, HTTP)),
            "",
            *paced_lines(run.paced),
            "checks:",
            *(f"  {line}" for line in run.checks),
            *(f"  {line}" for line in counter_lines(run.counters)),
            "",
            *(f"- {note}" for note in notes(run.config)),
            "",
            "targets:",
            *(f"  {check.line()}" for check in run.targets),
            *starved_lines(run.environment),
        ]
    )


def paced_lines(paced: PacedRun | None) -> list[str]:
    """The paced part of the report: each cell, then the fit per path and concurrency."""
    if paced is None:
        return []
    return [
        f"paced model ({PACE_US / 1000:g} ms between tokens), windows of "
        f"{paced.config.seconds:g} s; CPU per token of each process over each window:",
        cells_table(paced, PROCESSES),
        "",
        "per request and per token (least squares over the lengths; gaps: every inter-message "
        "gap inside the windows):",
        fit_table(paced, (INFERENCE, GATEWAY), "platform"),
        "the floor, a bare grpc.aio relay in front of Triton (the same two gRPC legs per token "
        "as the platform, no work):",
        fit_table(paced, (HOP,), "hop"),
        "",
    ]


def panels(run: GatewayRun) -> list[Any]:
    """The PNG's panels: latency CDFs per path, streams/s and tokens/s bars, CPU per stream."""
    from benchmarks.inference_plot import StackedPanel

    scenarios = run.scenarios
    single = next((s for s in scenarios if s.concurrency == 1), None)
    busiest = max(scenarios, key=lambda s: s.concurrency)
    found: list[Any] = []
    if single is not None:
        found += [
            LatencyPanel(
                "concurrency 1: time to first token",
                {p: [t.ttft_us for t in single.timings(p)] for p in single.paths},
                xlabel="TTFT",
            ),
            LatencyPanel(
                f"concurrency 1: whole stream ({run.config.tokens} tokens)",
                {p: [t.total_us for t in single.timings(p)] for p in single.paths},
                xlabel="stream latency",
            ),
        ]
    if busiest is not single:
        found.append(
            LatencyPanel(
                f"concurrency {busiest.concurrency}: whole stream",
                {p: [t.total_us for t in busiest.timings(p)] for p in busiest.paths},
                xlabel="stream latency",
            )
        )

    def ratios(
        rate: Callable[[Scenario, str], float], baseline: str = DIRECT, candidate: str = GATEWAY
    ) -> str:
        return ", ".join(
            f"c={s.concurrency} {format_ratio(_ratio(rate(s, candidate), rate(s, baseline)))}"
            for s in scenarios
            if {baseline, candidate} <= set(s.rounds)
        )

    def streams(s: Scenario, p: str) -> float:
        return s.streams_per_s(p)

    def tokens(s: Scenario, p: str) -> float:
        return s.tokens_per_s(p)

    paced = run.paced
    if paced is not None:
        loaded_c = max(paced.config.concurrencies)
        shown_c = (
            TARGET_CONCURRENCY if TARGET_CONCURRENCY in paced.config.concurrencies else loaded_c
        )
        found.append(
            LatencyPanel(
                f"paced, concurrency {shown_c}: gap between two messages of a stream",
                {p: [g for c in paced.of(p, shown_c) for g in c.gaps_us] for p in PACED_PATHS},
                xlabel="inter-token latency",
            )
        )
        found.append(
            RatePanel(
                "paced: platform CPU per relayed token (fit)",
                "µs/token",
                {
                    f"c={f.concurrency}": {
                        g.path: g.per_token_us
                        for g in paced.fits("platform")
                        if g.concurrency == f.concurrency and g.path != DIRECT
                    }
                    for f in paced.fits("platform")
                },
            )
        )
    http_vs_grpc = [s for s in scenarios if {GATEWAY, HTTP} <= set(s.rounds)]
    if http_vs_grpc:
        found.append(
            RatePanel(
                f"TTFT p50, http vs gateway (target c=1: +{HTTP_TTFT_TARGET_MS:g} ms)\n"
                f"streams/s http/gateway {ratios(streams, GATEWAY, HTTP)}",
                "µs",
                {
                    f"c={s.concurrency}": {
                        p: latency_of(s.timings(p), "ttft", 50) for p in (GATEWAY, HTTP)
                    }
                    for s in http_vs_grpc
                },
            )
        )
    found += [
        RatePanel(
            f"streams/s (gateway/direct: {ratios(streams)})",
            "streams/s",
            {f"c={s.concurrency}": {p: s.streams_per_s(p) for p in s.paths} for s in scenarios},
        ),
        RatePanel(
            f"tokens/s relayed (gateway/direct: {ratios(tokens)})",
            "tokens/s",
            {f"c={s.concurrency}": {p: s.tokens_per_s(p) for p in s.paths} for s in scenarios},
        ),
        StackedPanel(
            "CPU time per stream, by process",
            "CPU µs per stream",
            {
                f"c={s.concurrency}": {
                    p: {proc: s.cpu_us_per_stream(p, proc) for proc in PROCESSES} for p in s.paths
                }
                for s in scenarios
            },
        ),
    ]
    return found


# ------------------------------------------------------------------------------------ command


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    for action in parser._actions:  # this benchmark's quick run is longer than most
        if "--quick" in action.option_strings:
            action.help = "a short run (under a minute, mostly start-up) to check that it works"
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds at concurrency 1 (default {DEFAULT.rounds}; quick "
        f"{QUICK.rounds})",
    )
    parser.add_argument(
        "--load-rounds",
        type=int,
        help=f"interleaved rounds at concurrency 16 and 64 (default {DEFAULT.load_rounds}; "
        f"quick {QUICK.load_rounds})",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="measured seconds per path at each of concurrency 16 and 64 (default "
        f"{DEFAULT.load_seconds:g}; quick {QUICK.load_seconds:g})",
    )
    parser.add_argument(
        "--streams",
        type=int,
        help=f"streams per path at concurrency 1 (default {DEFAULT.streams}; quick "
        f"{QUICK.streams})",
    )
    parser.add_argument(
        "--tokens",
        type=int,
        help=f"tokens per stream (default {DEFAULT.tokens}); runs at two lengths give the CPU "
        "per request and per token (deploy/README.md, Sizing)",
    )
    parser.add_argument(
        "--paced-seconds",
        type=float,
        help="measured seconds of each paced (length, concurrency, path) cell (default "
        f"{PacedConfig().seconds:g})",
    )
    parser.add_argument(
        "--paced-concurrency",
        type=int,
        nargs="+",
        help=f"concurrencies of the paced part (default {' '.join(map(str, PacedConfig().concurrencies))})",
    )
    parser.add_argument("--no-paced", action="store_true", help="leave the paced part out")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record a flame graph (py-spy) of the platform during the paced gateway cell at "
        f"c={TARGET_CONCURRENCY} with the longest streams, beside the JSON",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    if args.no_paced:
        config = replace(config, paced=None)
    elif config.paced is not None and (args.paced_seconds or args.paced_concurrency):
        try:
            paced = replace(config.paced, seconds=args.paced_seconds or config.paced.seconds)
            if args.paced_concurrency:
                paced = replace(paced, concurrencies=tuple(args.paced_concurrency))
        except ValueError as error:
            parser.error(str(error))
        config = replace(config, paced=paced)
    overrides = {
        "tokens": args.tokens,
        "rounds": args.rounds,
        "load_rounds": args.load_rounds,
        "load_seconds": args.seconds,
        "streams": args.streams,
    }
    try:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:
        parser.error(str(error))
    run = asyncio.run(run_gateway(config, profile=args.out if args.profile else None))
    json_path, png_path = write_outputs(run.result, args.out, run.plot, run.started_at)
    print(report(run))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}\nlogs  {shown(run.run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
