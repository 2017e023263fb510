"""Benchmark `inference`: what InferenceService costs a generation stream, and what the CPU
SmolLM2 deployment delivers against plain `transformers`.

Part `zero` (the platform's own overhead). Triton, launched here with just `zero_llm` (the
generation facade with zero compute: `tokens` tokens per stream, no pause between them), is
called three ways in one run:
- `direct`: `tritonclient.grpc.aio` `stream_infer`, one bidirectional stream per request;
- `hop`: the same client through a bare grpc.aio relay in a process of its own
  (`benchmarks.passthrough`: bytes in, bytes out, no work at all), the floor of any Python gRPC
  hop in front of Triton;
- `platform`: InferenceService `GenerateStream`, with InferenceService in a process of its own
  (`genai serve --service inference`, API keys on as by default: every call carries the
  development key that `genai serve` creates, and the server verifies it) calling the same
  Triton.
Rounds alternate the paths (and their order). At concurrency 1 streams run one after
another; at 16 and 64 that many are kept in flight (closed loop: each finished stream starts the
next) and only the streams that end within a measured window count. Each stream gives its time
to first token (TTFT: from the call to the first message carrying text), its total latency
(to the final message) and its token count; rounds give streams/s and tokens/s, and the CPU time
each process spent (this client, InferenceService, Triton with its Python stubs), from /proc.

Part `smollm2` (the real model). Triton serves `smollm2-135m-instruct` through the CPU
repository's `smollm2` model (the facade and the engine in one stub, with the precision it ships
with); InferenceService streams greedy completions of fixed chat prompts (`max_tokens` each):
one after another for the single-stream figures, then waves of 4, 8 and 16 concurrent streams
for the aggregate tokens/s that in-flight batching reaches. Two peers run while Triton is idle:
`LlamaForCausalLM.generate` in fp32 on the same prepared weights (greedy, the same prompts
rendered with the same chat template, `min_new_tokens` = `max_new_tokens`, torch threads 2) at
batch 1 and 16 in a separate process (`benchmarks.transformers_generate`), each batch-1 call
alternating with a single stream on the same prompt; and `transformers serve
--continuous-batching` (`benchmarks.transformers_serve`, transformers' own OpenAI-compatible
server) on the same weights, streamed at 1 and 16 concurrent streams.

The report ends with a PASS/FAIL line per target of the issue: InferenceService adds at most
0.5 ms to TTFT p50 at concurrency 1 and keeps >= 80% of direct streams/s at concurrency 64
(zero), with what the bare relay adds beside it (the floor); and (smollm2) tokens/s at 1 and 16
streams >= 2x transformers fp32 at batch 1 and 16, >= 250 tokens/s and >= 2x `transformers
serve --continuous-batching` at 16 streams, TTFT p50 at one stream <= transformers' time to
first token, >= 1.8 CPU cores busy at 16 streams. Greedy agreement with fp32 transformers is
printed per concurrency.
"""

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
import grpc.aio
from genai.common.v1 import chat_pb2, generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc

from benchmarks.cli import ROOT, benchmark_parser, shown
from benchmarks.processes import development_key, genai_serve, group_cpu_seconds
from benchmarks.serving import ServerProcess, server_process
from benchmarks.stats import (
    BenchmarkResult,
    Comparison,
    LatencySummary,
    Measurement,
    Progress,
    comparison_table,
    environment,
    format_number,
    format_ratio,
    format_rounds,
    format_table,
    latency_table,
    output_paths,
    percentile,
    round_ratios,
    run_subtitle,
    starved_lines,
    with_load_at_end,
)
from benchmarks.transformers_generate import GenerateRequest, GenerateResult

if TYPE_CHECKING:
    from benchmarks.transformers_generate import TransformersWorker
    from services.inference.adapters.tritonserver import TritonServer

T = TypeVar("T")

NAME: Final = "inference"
DESCRIPTION: Final = (
    "InferenceService's cost per generation stream against direct tritonclient calls to Triton "
    "(zero-compute model), and SmolLM2 through InferenceService against transformers generate."
)
DIRECT: Final = "direct"
PLATFORM: Final = "platform"
TRANSFORMERS: Final = "transformers"
HOP: Final = "hop"
PATHS: Final = (DIRECT, PLATFORM)
"""Part zero's compared paths, baseline first: the issue's targets are platform / direct."""
ZERO_PATHS: Final = (DIRECT, HOP, PLATFORM)
"""Part zero's measured paths: `hop` is the direct client through a bare grpc.aio relay
(`benchmarks.passthrough`), the floor of any Python gRPC hop in front of Triton."""

CPU_REPOSITORY: Final = ROOT / "triton_models" / "cpu"
RUN_ROOT: Final = ROOT / ".run"
ZERO_TRITON_MODEL: Final = "zero_llm"
ZERO_MODEL: Final = "zero"
SMOLLM2_TRITON_MODELS: Final = ("smollm2",)
"""The CPU repository's SmolLM2 model: the generation facade and the engine in one stub."""
SMOLLM2_MODEL: Final = "smollm2-135m-instruct"
ZERO_PROMPT: Final = "Benchmark the platform's streaming path with a prompt of a few words"
STREAM_DEADLINE_S: Final = 120.0
"""Deadline of every benchmark stream, on both paths (clients in production set one too)."""

SMOLLM2_PROMPTS: Final = tuple(
    f"Write a long, detailed story about {subject}."
    for subject in (
        "a lighthouse keeper who finds a message in a bottle",
        "a robot learning to paint",
        "a city that floats above the clouds",
        "two friends crossing a desert",
        "a dragon who is afraid of fire",
        "the last bookshop on Earth",
        "a scientist who discovers a new color",
        "a cat who becomes the mayor of a small town",
        "a ship lost in a storm",
        "a child who can talk to trees",
        "an astronaut alone on Mars",
        "a baker whose bread grants wishes",
        "a detective solving a mystery in Venice",
        "a musician who hears colors",
        "a village under the sea",
        "a clockmaker who can stop time",
    )
)
"""User messages that draw long answers, so that greedy streams rarely end before max_tokens."""

TTFT_TARGET_US: Final = 500.0
THROUGHPUT_TARGET: Final = 0.80
PEER_TARGET: Final = 2.0
"""tokens/s through InferenceService over transformers fp32 at the same batch (1 and 16), and
at 16 streams over `transformers serve --continuous-batching`."""
WIDE_STREAMS: Final = 16
WIDE_TOKENS_PER_S: Final = 250.0
CORES_TARGET: Final = 1.8
SERVE: Final = "transformers-serve"
"""`transformers serve --continuous-batching` on the same weights (benchmarks.transformers_serve)."""


# ------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class ZeroConfig:
    """Part zero. Counts and seconds are per path, split evenly over the rounds."""

    tokens: int = 16
    """Tokens per stream (`max_tokens`)."""
    streams: int = 600
    """Streams at concurrency 1."""
    rounds: int = 10
    """Interleaved rounds at concurrency 1, after an unmeasured warm-up of each path."""
    concurrencies: tuple[int, ...] = (16, 64)
    """Streams in flight for the throughput scenarios."""
    load_seconds: float = 6.0
    """Measured seconds at each of `concurrencies`."""
    load_rounds: int = 4
    """Interleaved rounds of each throughput scenario."""

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.rounds < 1 or self.streams < self.rounds:
            raise ValueError("part zero needs tokens, rounds and a stream per round")
        if self.load_rounds < 1 or self.load_seconds <= 0 or any(c < 2 for c in self.concurrencies):
            raise ValueError("load scenarios need rounds, a positive duration, concurrency >= 2")


@dataclass(frozen=True)
class SmolConfig:
    """Part smollm2."""

    max_tokens: int = 32
    """Tokens each stream (and each transformers sequence) generates. 32, not more, by
    default: transformers batch 8 decodes at about a second per step on a busy 2-core
    machine, and the whole run should stay within about 4 minutes."""
    single_streams: int = 2
    """Streams (and transformers batch-1 calls) one after another, for single-stream figures."""
    concurrencies: tuple[int, ...] = (4, 8, 16)
    """Sizes of the waves of concurrent streams (besides the single streams)."""
    transformers_batches: tuple[int, ...] = (1, 16)
    """Batch sizes of the transformers baseline."""
    serve_concurrencies: tuple[int, ...] = (1, 16)
    """Concurrent streams of the `transformers serve --continuous-batching` variant."""
    threads: int = 2
    """torch threads of the transformers baseline."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.single_streams < 1 or self.threads < 1:
            raise ValueError("part smollm2 needs tokens, a single stream and a thread")
        sizes = (*self.concurrencies, *self.transformers_batches, *self.serve_concurrencies)
        if any(not 1 <= n <= len(SMOLLM2_PROMPTS) for n in sizes):
            raise ValueError(f"waves and batches hold 1 to {len(SMOLLM2_PROMPTS)} streams")


@dataclass(frozen=True)
class InferenceConfig:
    """What both parts measure."""

    zero: ZeroConfig = field(default_factory=ZeroConfig)
    smollm2: SmolConfig = field(default_factory=SmolConfig)


DEFAULT = InferenceConfig()
"""About 2.5 minutes on an otherwise idle 2-core machine (part zero about 60 s). Other load
stretches the transformers baseline most: its batch 8 took 7 s in one run here, 130 s in the
next."""
QUICK = InferenceConfig(
    zero=ZeroConfig(streams=120, rounds=4, load_seconds=1.0, load_rounds=1),
    smollm2=SmolConfig(
        max_tokens=8,
        single_streams=1,
        concurrencies=(8,),
        transformers_batches=(1,),
        serve_concurrencies=(2,),
    ),
)
"""About a minute: to check that the benchmark works, not to quote its figures (transformers
runs batch 1 only: its batch 8 alone would take half a minute)."""


# ------------------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """One finished stream."""

    ttft_us: float
    """From the call to the first message carrying text."""
    total_us: float
    """From the call to the final message."""
    tokens: int
    messages: int = 0
    """Messages carrying text (tokens / messages: how many tokens a relay coalesced into one);
    0 where not counted."""


@dataclass
class StreamRound:
    """What one path did in one round of part zero."""

    streams: list[StreamTiming]
    """The streams that count: at concurrency 1 all, under load those ending in the window."""
    elapsed_s: float
    served: int
    """Every stream of the round (ramp-up and ramp-down ones too), for CPU per stream."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent over the round: client, inference, triton."""

    @property
    def streams_per_s(self) -> float:
        return _per_s(len(self.streams), self.elapsed_s)

    @property
    def tokens_per_s(self) -> float:
        return _per_s(sum(s.tokens for s in self.streams), self.elapsed_s)


@dataclass
class Scenario:
    """The rounds of one part-zero scenario, by path."""

    concurrency: int
    rounds: dict[str, list[StreamRound]] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        """The measured paths, in `ZERO_PATHS` order."""
        return [p for p in ZERO_PATHS if p in self.rounds]

    def timings(self, path: str) -> list[StreamTiming]:
        return [s for r in self.rounds[path] for s in r.streams]

    def streams_per_s(self, path: str) -> float:
        rounds = self.rounds[path]
        return _per_s(sum(len(r.streams) for r in rounds), math.fsum(r.elapsed_s for r in rounds))

    def tokens_per_s(self, path: str) -> float:
        rounds = self.rounds[path]
        tokens = sum(s.tokens for r in rounds for s in r.streams)
        return _per_s(tokens, math.fsum(r.elapsed_s for r in rounds))

    def cpu_us_per_stream(self, path: str, process: str) -> float:
        """CPU µs a process spent per stream of this path (all rounds; nan when unknown)."""
        rounds = self.rounds[path]
        served = sum(r.served for r in rounds)
        if not served or any(process not in r.cpu_s for r in rounds):
            return math.nan
        return math.fsum(r.cpu_s[process] for r in rounds) / served * 1e6


@dataclass(frozen=True)
class Wave:
    """Streams (or one transformers batch) that ran at the same time in part smollm2."""

    variant: str
    concurrency: int
    wall_s: float
    """From the first call to the last final message (transformers: the generate call)."""
    ttft_s: Sequence[float]
    output_tokens: Sequence[int]
    input_tokens: Sequence[int]
    texts: Sequence[str]
    finished_early: int = 0
    """Streams that ended (end of sequence) before max_tokens."""
    cpu_s: float = math.nan
    """CPU seconds the serving processes spent over the wave: Triton (with its Python stubs)
    and InferenceService; transformers: its worker process."""

    @property
    def tokens_per_s(self) -> float:
        """Aggregate: every stream's tokens over the wave's wall time."""
        return _per_s(sum(self.output_tokens), self.wall_s)

    @property
    def cores(self) -> float:
        """CPU cores the serving processes kept busy on average (2 at most here): below that,
        other processes on the machine took the rest."""
        return _per_s(self.cpu_s, self.wall_s)


def pool_waves(waves: Sequence[Wave]) -> Wave:
    """Waves of one variant and concurrency run one after another, as one: their tokens over
    their summed wall time (at concurrency 1: the single-stream rate over several streams)."""
    if not waves or len({(w.variant, w.concurrency) for w in waves}) != 1:
        raise ValueError("pool waves of one variant and concurrency")
    return Wave(
        variant=waves[0].variant,
        concurrency=waves[0].concurrency,
        wall_s=math.fsum(w.wall_s for w in waves),
        ttft_s=[t for w in waves for t in w.ttft_s],
        output_tokens=[n for w in waves for n in w.output_tokens],
        input_tokens=[n for w in waves for n in w.input_tokens],
        texts=[t for w in waves for t in w.texts],
        finished_early=sum(w.finished_early for w in waves),
        cpu_s=math.fsum(w.cpu_s for w in waves),
    )


def wave_of(result: GenerateResult) -> Wave:
    """One transformers `generate` call as a wave."""
    return Wave(
        variant=TRANSFORMERS,
        concurrency=result.batch,
        wall_s=result.seconds,
        ttft_s=[result.first_token_seconds] * result.batch,
        output_tokens=list(result.output_tokens),
        input_tokens=list(result.input_tokens),
        texts=list(result.texts),
        cpu_s=result.cpu_seconds,
    )


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue, and whether this run met it."""

    name: str
    target: str
    measured: float
    threshold: float
    unit: str
    passed: bool | None
    """None when the run could not measure it."""
    detail: str = ""

    def line(self) -> str:
        verdict = "n/a " if self.passed is None else "PASS" if self.passed else "FAIL"
        measured = format_number(self.measured)
        detail = f"; {self.detail}" if self.detail else ""
        return f"{verdict}  {self.name}: {measured} {self.unit} (target {self.target}){detail}"


def check_at_most(
    name: str, measured: float, threshold: float, unit: str, **kw: str
) -> TargetCheck:
    passed = measured <= threshold if math.isfinite(measured) else None
    return TargetCheck(
        name, f"<= {format_number(threshold)} {unit}", measured, threshold, unit, passed, **kw
    )


def check_at_least(
    name: str, measured: float, threshold: float, unit: str, **kw: str
) -> TargetCheck:
    passed = measured >= threshold if math.isfinite(measured) else None
    return TargetCheck(
        name, f">= {format_number(threshold)} {unit}", measured, threshold, unit, passed, **kw
    )


def _per_s(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def inference_env(models: Sequence[Mapping[str, Any]], data: Path | None = None) -> dict[str, str]:
    """The environment of a `genai serve --service inference` that launches no Triton and
    serves `models` (InferenceService model settings, as in its YAML), with API keys on (the
    platform's default, set here so that a caller's environment cannot turn it off). With
    `data`, XDG_DATA_HOME points there: the tenant store (SQLite) and the development key
    `genai serve` creates stay in that folder, out of the user's own."""
    env = {
        "GENAI_AUTH__MODE": "api_key",
        "GENAI_INFERENCE__TRITON__LAUNCH": "false",
        "GENAI_INFERENCE__MODELS": json.dumps(list(map(dict, models))),
        "GENAI_SERVER__GRACE_SECONDS": "1",
    }
    if data is not None:
        env["XDG_DATA_HOME"] = str(data)
    return env


def served_model(name: str, endpoint: str, triton_model: str, **settings: Any) -> dict[str, Any]:
    """One InferenceService model on one Triton backend."""
    backend = {
        "id": "triton-0",
        "endpoint": endpoint,
        "triton_model": triton_model,
        "max_in_flight": settings.pop("max_in_flight", 256),
    }
    return {"name": name, "backends": [backend], **settings}


class TritonDiedError(RuntimeError):
    """Triton exited while the benchmark used it; the message ends with its log's end."""


async def while_alive(triton: "TritonServer", work: Awaitable[T], poll_s: float = 0.5) -> T:
    """Runs `work`; when Triton dies meanwhile, stops it and raises `TritonDiedError` at once
    (rather than after the streams' deadlines) with the end of Triton's log."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=poll_s)
            if not triton.running:
                break
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    failed = task.cancelled() or task.exception() is not None
    if triton.running or not failed:
        return task.result()  # the work's own error, when Triton is fine
    raise TritonDiedError(
        f"Triton exited (code {triton.returncode}) during the benchmark; from its log "
        f"{shown(triton.log_file) if triton.log_file else ''}:\n{death_notice(triton.log_tail(60))}"
    ) from (None if task.cancelled() else task.exception())


def death_notice(log_tail: str, frames: int = 4) -> str:
    """The lines of Triton's log that say how it died: the signal and the top of its stack
    when it crashed, else the last few lines."""
    lines = log_tail.splitlines()
    crash = next((i for i, line in enumerate(lines) if line.startswith("Signal (")), None)
    chosen = lines[crash : crash + 1 + frames] if crash is not None else lines[-8:]
    return "\n".join(f"  {line.strip()}" for line in chosen)


# ------------------------------------------------------------------------------------ paths


class DirectPath:
    """Streams from Triton through `tritonclient.grpc.aio` (the baseline)."""

    def __init__(self, address: str, model: str, prompt: str, tokens: int) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        def tensor(name: str, datatype: str, value: Any) -> Any:
            t = grpcclient.InferInput(name, [1, 1], datatype)
            t.set_data_from_numpy(value)
            return t

        self._client = aioclient.InferenceServerClient(address)
        self._model = model
        self._tokens = tokens
        self._inputs = [
            tensor("text_input", "BYTES", np.array([[prompt.encode()]], dtype=np.object_)),
            tensor("max_tokens", "INT32", np.array([[tokens]], dtype=np.int32)),
            tensor("stream", "BOOL", np.array([[True]], dtype=np.bool_)),
            tensor("exclude_input_in_output", "BOOL", np.array([[True]], dtype=np.bool_)),
        ]

    async def close(self) -> None:
        await self._client.close()

    async def responses(self) -> AsyncIterator[tuple[int, Any]]:
        """(arrival ns, InferResult) of each response of one request, to the stream's end."""

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self._model, "inputs": self._inputs}

        stream = self._client.stream_infer(requests(), stream_timeout=STREAM_DEADLINE_S)
        async for result, error in stream:
            if error is not None:
                raise error
            yield time.perf_counter_ns(), result

    async def stream(self) -> StreamTiming:
        # zero_llm's responses carry a token each (checked before measuring): the first
        # response is the first token. Read to the stream's end, as Triton closes it after
        # the final response (no cancellation needed).
        sent = time.perf_counter_ns()
        first = final = 0
        tokens = 0
        async for arrived, result in self.responses():
            if not first:
                first = arrived
            if result.get_response().parameters["triton_final_response"].bool_param:
                final = arrived
                tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
        if not final:
            raise RuntimeError("Triton ended a stream without a final response")
        return StreamTiming((first - sent) / 1000, (final - sent) / 1000, tokens)

    async def check(self) -> str:
        """One stream, parsed in full; returns its text, or raises when it breaks the facade."""
        texts = []
        finish = ""
        async for _, result in self.responses():
            text = result.as_numpy("text_output").reshape(-1)[0].decode()
            if not text:
                raise RuntimeError("zero_llm sent a response without a token")
            texts.append(text)
            finish = result.as_numpy("finish_reason").reshape(-1)[0].decode()
        if len(texts) != self._tokens or finish != "length":
            raise RuntimeError(f"direct: {len(texts)} responses ending {finish!r}")
        return "".join(texts)


class PlatformPath:
    """Streams through InferenceService `GenerateStream` (the candidate), every call with
    `metadata` (the API key: `services.common.clients.api_key_metadata`)."""

    def __init__(
        self,
        address: str,
        request: inference_service_pb2.GenerateStreamRequest,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = inference_service_pb2_grpc.InferenceServiceStub(self._channel)
        self._request = request
        self._metadata = tuple(metadata)

    async def ready(self, patience_s: float = 10.0) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), patience_s)

    async def close(self) -> None:
        await self._channel.close(None)

    async def stream(self) -> StreamTiming:
        """One stream of the request given at construction, timed (the text is not kept)."""
        sent = time.perf_counter_ns()
        first = final = 0
        tokens = 0
        call = self._stub.GenerateStream(
            self._request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )
        async for response in call:
            event = response.WhichOneof("event")
            if event == "delta":
                if not first:
                    first = time.perf_counter_ns()
            elif event == "final":
                final = time.perf_counter_ns()
                tokens = response.final.usage.output_tokens
        if not final:
            raise RuntimeError("InferenceService ended a stream without a final message")
        return StreamTiming((first - sent) / 1000, (final - sent) / 1000, tokens)

    async def generate(
        self,
        request: inference_service_pb2.GenerateStreamRequest,
        on_delta: Callable[[int], None] | None = None,
    ) -> tuple[StreamTiming, str, inference_pb2.GenerationFinal, int]:
        """One stream with its text: (timing, text, final message, input tokens); `on_delta`
        gets each delta's token count."""
        sent = time.perf_counter_ns()
        first = 0
        parts: list[str] = []
        final = inference_pb2.GenerationFinal()
        input_tokens = 0
        call = self._stub.GenerateStream(
            request, timeout=STREAM_DEADLINE_S, metadata=self._metadata
        )
        async for response in call:
            event = response.WhichOneof("event")
            if event == "start":
                input_tokens = response.start.input_tokens
            elif event == "delta":
                if not first:
                    first = time.perf_counter_ns()
                parts.append(response.delta.text)
                if on_delta is not None:
                    on_delta(response.delta.token_count)
            elif event == "final":
                final = response.final
        done = time.perf_counter_ns()
        timing = StreamTiming(
            ((first or done) - sent) / 1000, (done - sent) / 1000, final.usage.output_tokens
        )
        return timing, "".join(parts), final, input_tokens


# ------------------------------------------------------------------------------------ part zero

StreamFn = Callable[[], Awaitable[StreamTiming]]
"""Runs one stream on one path."""
CpuProbe = Callable[[], float | None]
"""CPU seconds a process (group) has used so far; None where unknown."""
RoundRunner = Callable[[StreamFn, Callable[[int], None]], Awaitable[StreamRound]]
"""Runs one round on one path, reporting finished streams through the callback."""


async def sequential(stream: StreamFn, count: int, done: Callable[[int], None]) -> StreamRound:
    """`count` streams one after another."""
    timings = []
    started = time.perf_counter()
    for _ in range(count):
        timings.append(await stream())
        done(1)
    return StreamRound(timings, elapsed_s=time.perf_counter() - started, served=count)


async def closed_loop(
    stream: StreamFn, concurrency: int, seconds: float, done: Callable[[int], None]
) -> StreamRound:
    """Keeps `concurrency` streams in flight for a ramp-up and then a window of `seconds`.

    Only streams that end within the window count, and rates are over the window alone: the
    ramp-up (a quarter of the window, when all streams start at once) and the streams still in
    flight after it count for nothing.
    """
    counted: list[StreamTiming] = []
    served = [0]
    window_start = time.perf_counter() + seconds / 4
    deadline = window_start + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            timing = await stream()
            served[0] += 1
            if window_start <= time.perf_counter() <= deadline:
                counted.append(timing)
                done(1)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return StreamRound(counted, elapsed_s=seconds, served=served[0])


ScenarioT = TypeVar("ScenarioT", bound=Scenario)


async def interleave(
    scenario: ScenarioT,
    paths: Mapping[str, StreamFn],
    rounds: int,
    progress: Progress,
    probes: Mapping[str, CpuProbe],
    *,
    run: RoundRunner,
    warm: RoundRunner,
    total: int = 0,
    label: str = "",
    headline: Callable[[Scenario], str] | None = None,
) -> ScenarioT:
    """A warm-up of each path, then `rounds` rounds alternating which path goes first; the
    CPU each process spent in each round is measured with `probes` (and this client's own).
    `label` names the scenario in the progress lines ("zero c=N" by default); `headline`
    makes the line noted at its end (part zero's by default)."""
    label = label or f"zero c={scenario.concurrency}"
    names = list(paths)
    progress.stage(f"{label}: warm-up, then {rounds} rounds x {len(names)} paths")
    for name in names:
        progress.step(f"warm-up {name}")
        await warm(paths[name], progress.advance)
    scenario.rounds = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            progress.step(f"round {index + 1}/{rounds} {name}", total)
            before = {process: probe() for process, probe in probes.items()}
            client_before = time.process_time()
            outcome = await run(paths[name], progress.advance)
            outcome.cpu_s["client"] = time.process_time() - client_before
            for process, probe in probes.items():
                first, last = before[process], probe()
                if first is not None and last is not None:
                    outcome.cpu_s[process] = last - first
            scenario.rounds[name].append(outcome)
    progress.note((headline or _zero_headline)(scenario))
    return scenario


def _zero_headline(scenario: Scenario) -> str:
    label = f"zero c={scenario.concurrency}"
    direct, platform = (
        percentile(sorted(t.ttft_us for t in scenario.timings(p)), 50) for p in PATHS
    )
    rate_d, rate_p = (scenario.streams_per_s(p) for p in PATHS)
    return (
        f"{label}: TTFT p50 {direct:,.0f} vs {platform:,.0f} µs, "
        f"{rate_d:,.0f} vs {rate_p:,.0f} streams/s "
        f"(platform/direct {format_ratio(_ratio(rate_p, rate_d))})"
    )


def _ratio(candidate: float, baseline: float) -> float:
    return candidate / baseline if baseline else math.nan


@dataclass
class ZeroRun:
    """Part zero, finished."""

    result: BenchmarkResult
    scenarios: list[Scenario]


async def run_zero(config: ZeroConfig, progress: Progress, run_dir: Path) -> ZeroRun:
    """Starts Triton (zero_llm) and InferenceService, measures both paths, stops both."""
    from services.inference.adapters.tritonserver import TritonServer

    started_at = datetime.now(UTC)
    started = time.monotonic()
    progress.stage("zero: starting Triton (zero_llm) and InferenceService (genai serve)")
    triton = TritonServer()
    await triton.start(
        CPU_REPOSITORY,
        models=[ZERO_TRITON_MODEL],
        http_port=None,
        log_file=run_dir / "triton-zero.log",
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bench-inference-") as data:
            env = inference_env(
                [
                    served_model(
                        ZERO_MODEL,
                        triton.grpc_address,
                        ZERO_TRITON_MODEL,
                        max_output_tokens=100_000,
                    )
                ],
                Path(data),
            )
            async with (
                genai_serve(["inference"], env, log_file=run_dir / "genai-zero.log") as service,
                server_process("benchmarks.passthrough", ["--target", triton.grpc_address]) as hop,
            ):
                pid = triton.pid
                assert pid is not None
                probes: dict[str, CpuProbe] = {
                    "inference": service.cpu_seconds,
                    "hop": hop.cpu_seconds,
                    "triton": lambda: group_cpu_seconds(pid),
                }
                addresses = {DIRECT: triton.grpc_address, HOP: hop.address}
                scenarios = await while_alive(
                    triton, _measure_zero(config, addresses, service, progress, probes)
                )
    finally:
        await triton.stop()
    return zero_run(config, scenarios, started_at, time.monotonic() - started)


def zero_run(
    config: ZeroConfig, scenarios: list[Scenario], started_at: datetime, duration_s: float
) -> ZeroRun:
    """Part zero's result from its scenarios."""
    measurements = [m for s in scenarios for p in s.paths for m in _zero_measurements(s, p)]
    result = BenchmarkResult(
        benchmark=f"{NAME}.zero",
        started_at=started_at,
        duration_s=duration_s,
        baseline=DIRECT,
        candidate=PLATFORM,
        config=asdict(config),
        environment={},
        measurements=measurements,
        comparisons=[
            c
            for s in scenarios
            for c in (
                *_zero_comparisons(s),
                *(_zero_comparisons(s, (DIRECT, HOP), "zero hop") if HOP in s.rounds else ()),
            )
        ],
        notes=[
            f"zero_llm in Triton, {config.tokens} tokens per stream, no pause between tokens. "
            "direct: tritonclient.grpc.aio stream_infer; platform: InferenceService "
            "GenerateStream (genai serve, own process, API key auth) -> the same Triton; hop: "
            "the direct client through a bare grpc.aio relay (own process) -> the same Triton, "
            "the floor of any Python gRPC hop (scenario 'zero hop': hop vs direct).",
            "TTFT: call to first message with text; total: call to final message. Rounds "
            "alternate the paths; rounds column: each round's ratio, median (min-max).",
            "overhead: platform - direct; for a rate, the time added per item.",
        ],
    )
    return ZeroRun(result, scenarios)


async def _measure_zero(
    config: ZeroConfig,
    addresses: Mapping[str, str],
    service: ServerProcess,
    progress: Progress,
    probes: Mapping[str, CpuProbe],
) -> list[Scenario]:
    request = inference_service_pb2.GenerateStreamRequest(
        model=ZERO_MODEL,
        text=ZERO_PROMPT,
        parameters=generation_pb2.SamplingParameters(max_tokens=config.tokens),
    )
    direct, hop = (
        DirectPath(addresses[p], ZERO_TRITON_MODEL, ZERO_PROMPT, config.tokens)
        for p in (DIRECT, HOP)
    )
    from services.common.clients import api_key_metadata

    metadata = api_key_metadata(await development_key(service))
    platform = PlatformPath(service.address, request, metadata)
    try:
        await platform.ready()
        expected = await direct.check()
        if (relayed := await hop.check()) != expected:
            raise RuntimeError(f"hop streamed {relayed!r}, direct {expected!r}")
        _, text, final, _ = await platform.generate(request)
        if text != expected or final.usage.output_tokens != config.tokens:
            raise RuntimeError(f"platform streamed {text!r}, direct {expected!r}")
        paths: dict[str, StreamFn] = {
            DIRECT: direct.stream,
            HOP: hop.stream,
            PLATFORM: platform.stream,
        }
        per_round = config.streams // config.rounds
        load_s = config.load_seconds / config.load_rounds

        def sequential_run(stream: StreamFn, done: Callable[[int], None]) -> Awaitable[StreamRound]:
            return sequential(stream, per_round, done)

        scenarios = [
            await interleave(
                Scenario(1),
                paths,
                config.rounds,
                progress,
                probes,
                run=sequential_run,
                warm=sequential_run,
                total=per_round,
            )
        ]
        for concurrency in config.concurrencies:
            scenarios.append(
                await interleave(
                    Scenario(concurrency),
                    paths,
                    config.load_rounds,
                    progress,
                    probes,
                    run=loader(concurrency, load_s),
                    warm=loader(concurrency, min(load_s, 1.0) / 2),
                )
            )
        return scenarios
    finally:
        await direct.close()
        await hop.close()
        await platform.close()


def loader(concurrency: int, seconds: float) -> RoundRunner:
    """A round runner keeping `concurrency` streams in flight for `seconds` (`closed_loop`)."""

    def run(stream: StreamFn, done: Callable[[int], None]) -> Awaitable[StreamRound]:
        return closed_loop(stream, concurrency, seconds, done)

    return run


PROCESSES: Final = ("client", "inference", "hop", "triton")


def _round_figures(r: StreamRound) -> dict[str, float]:
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
    if r.streams:
        for metric in ("ttft", "total"):
            ordered = sorted(getattr(s, f"{metric}_us") for s in r.streams)
            figures[f"{metric}_p50_us"] = percentile(ordered, 50)
            figures[f"{metric}_p99_us"] = percentile(ordered, 99)
    return figures


def _zero_measurements(scenario: Scenario, path: str) -> list[Measurement]:
    timings = scenario.timings(path)
    rates = {
        "streams_per_s": scenario.streams_per_s(path),
        "tokens_per_s": scenario.tokens_per_s(path),
        **{
            f"{process}_cpu_us_per_stream": scenario.cpu_us_per_stream(path, process)
            for process in PROCESSES
        },
    }
    rounds = [_round_figures(r) for r in scenario.rounds[path]]
    return [
        Measurement(
            scenario="zero",
            variant=path,
            concurrency=scenario.concurrency,
            latency_metric=metric,
            latency_us=LatencySummary.of(getattr(t, f"{attribute}_us") for t in timings)
            if timings
            else None,
            rates=rates if metric == "TTFT" else {},
            rounds=rounds if metric == "TTFT" else (),
        )
        for metric, attribute in (("TTFT", "ttft"), ("total", "total"))
    ]


def _zero_comparisons(
    scenario: Scenario, paths: tuple[str, str] = PATHS, label: str = "zero"
) -> list[Comparison]:
    """`paths[1]` against `paths[0]` (the baseline) in `scenario`."""
    direct, platform = (scenario.rounds[p] for p in paths)
    concurrency = scenario.concurrency

    def figures(rounds: list[StreamRound], key: str) -> list[float]:
        return [_round_figures(r).get(key, math.nan) for r in rounds]

    def latency(metric: str, p: float) -> Comparison:
        base, cand = (
            percentile(sorted(getattr(t, f"{metric}_us") for t in scenario.timings(path)), p)
            for path in paths
        )
        key = f"{metric}_p{p:.0f}_us"
        return Comparison.of_latency(
            label,
            concurrency,
            f"{'TTFT' if metric == 'ttft' else 'total'} p{p:.0f}",
            base,
            cand,
            round_ratios(figures(direct, key), figures(platform, key)),
        )

    def rate(item: str, key: str) -> Comparison:
        base, cand = (
            scenario.streams_per_s(p) if item == "stream" else scenario.tokens_per_s(p)
            for p in paths
        )
        return Comparison.of_rate(
            label,
            concurrency,
            "rate",
            item,
            base,
            cand,
            round_ratios(figures(direct, key), figures(platform, key)),
        )

    return [
        latency("ttft", 50),
        latency("ttft", 99),
        latency("total", 50),
        latency("total", 99),
        rate("stream", "streams_per_s"),
        rate("token", "tokens_per_s"),
    ]


def zero_targets(scenarios: Sequence[Scenario]) -> list[TargetCheck]:
    """The issue's targets for part zero: TTFT p50 added at concurrency 1, and the share of
    direct streams/s kept at concurrency 64 (each with its rounds' spread)."""
    checks = []
    single = next((s for s in scenarios if s.concurrency == 1), None)
    if single is not None:
        base, cand, differences = ttft_added(single, *PATHS)
        checks.append(
            check_at_most(
                "zero c=1: TTFT p50 added by InferenceService",
                cand - base,
                TTFT_TARGET_US,
                "µs",
                detail=f"{base:,.0f} -> {cand:,.0f} µs; rounds {_spread(differences, '+.0f')} µs",
            )
        )
    loaded = next((s for s in scenarios if s.concurrency == 64), None)
    if loaded is not None:
        base, cand = (loaded.streams_per_s(p) for p in PATHS)
        ratios = round_ratios(*([r.streams_per_s for r in loaded.rounds[p]] for p in PATHS))
        checks.append(
            check_at_least(
                "zero c=64: streams/s through InferenceService / direct",
                _ratio(cand, base),
                THROUGHPUT_TARGET,
                "x",
                detail=f"{base:,.0f} vs {cand:,.0f} streams/s; rounds {format_rounds(ratios)}",
            )
        )
    return checks


def ttft_added(
    scenario: Scenario, baseline: str, candidate: str
) -> tuple[float, float, list[float]]:
    """TTFT p50 of `baseline` and `candidate` over all rounds, and each round's difference."""
    base, cand = (
        percentile(sorted(t.ttft_us for t in scenario.timings(p)), 50)
        for p in (baseline, candidate)
    )
    differences = [
        c - b
        for b, c in zip(
            *(
                [_round_figures(r)["ttft_p50_us"] for r in scenario.rounds[p] if r.streams]
                for p in (baseline, candidate)
            ),
            strict=False,
        )
    ]
    return base, cand, differences


def zero_floor(scenarios: Sequence[Scenario]) -> list[str]:
    """What the bare relay adds at each concurrency (the floor of a Python gRPC hop), and what
    InferenceService adds beyond it."""
    lines = []
    for scenario in scenarios:
        if HOP not in scenario.rounds:
            continue
        direct, hop, hop_rounds = ttft_added(scenario, DIRECT, HOP)
        _, platform, own_rounds = ttft_added(scenario, HOP, PLATFORM)
        rates = {p: scenario.streams_per_s(p) for p in scenario.paths}
        lines.append(
            f"c={scenario.concurrency}: TTFT p50 direct {direct:,.0f}, hop {hop:,.0f}, platform "
            f"{platform:,.0f} µs: the bare hop adds {hop - direct:+,.0f} µs (rounds "
            f"{_spread(hop_rounds, '+.0f')}), InferenceService {platform - hop:+,.0f} µs beyond "
            f"it (rounds {_spread(own_rounds, '+.0f')}); streams/s hop/direct "
            f"{format_ratio(_ratio(rates[HOP], rates[DIRECT]))}, platform/hop "
            f"{format_ratio(_ratio(rates[PLATFORM], rates[HOP]))}"
        )
    return lines


def _spread(values: Sequence[float], spec: str) -> str:
    """Median (lowest..highest) of `values`, each formatted with `spec`."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return "-"
    return f"median {percentile(finite, 50):{spec}} ({finite[0]:{spec}}..{finite[-1]:{spec}})"


# ------------------------------------------------------------------------------------ part smollm2


class ModelsMissingError(RuntimeError):
    """The CPU repository lacks the SmolLM2 models (or the weights are not prepared)."""


def smollm2_missing(repository: Path = CPU_REPOSITORY) -> list[str]:
    """The SmolLM2 facade models that `repository` lacks (empty when it has them all)."""
    return [m for m in SMOLLM2_TRITON_MODELS if not (repository / m / "config.pbtxt").is_file()]


@dataclass
class SmolRun:
    """Part smollm2, finished."""

    result: BenchmarkResult
    waves: dict[tuple[str, int], Wave]
    """Pooled waves by (variant, concurrency)."""
    baseline_info: Mapping[str, Any]
    aborted: str = ""
    """Why the part stopped before its last wave (Triton died), if it did."""


def _conversation(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _smollm2_request(prompt: str, max_tokens: int) -> inference_service_pb2.GenerateStreamRequest:
    return inference_service_pb2.GenerateStreamRequest(
        model=SMOLLM2_MODEL,
        chat=inference_pb2.ChatInput(
            messages=[chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=prompt)]
        ),
        parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens, temperature=0.0),
    )


async def platform_wave(
    platform: PlatformPath,
    prompts: Sequence[str],
    max_tokens: int,
    concurrency: int,
    progress: Progress,
    probes: Mapping[str, CpuProbe],
) -> Wave:
    """`len(prompts)` streams started at once; the wave lasts until the last one ends.

    An unmeasured 1-token stream goes first: after Triton idled (while transformers ran), the
    channel from InferenceService to Triton may be closed and must reconnect (Triton answers
    the platform's keepalive pings on an idle connection with GOAWAY `too_many_pings`).
    """
    await platform.generate(_smollm2_request(prompts[0], 1))
    progress.step(
        f"platform, {len(prompts)} stream(s) x {max_tokens} tokens", len(prompts) * max_tokens
    )
    cpu_before = [probe() for probe in probes.values()]
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(platform.generate(_smollm2_request(p, max_tokens), progress.advance) for p in prompts)
    )
    wall = time.perf_counter() - started
    cpu = [
        after - before
        for before, after in zip(cpu_before, (probe() for probe in probes.values()), strict=True)
        if before is not None and after is not None
    ]
    return Wave(
        variant=PLATFORM,
        concurrency=concurrency,
        wall_s=wall,
        ttft_s=[timing.ttft_us / 1e6 for timing, *_ in outcomes],
        output_tokens=[timing.tokens for timing, *_ in outcomes],
        input_tokens=[input_tokens for *_, input_tokens in outcomes],
        texts=[text for _, text, _, _ in outcomes],
        finished_early=sum(
            final.finish_reason != generation_pb2.FINISH_REASON_LENGTH
            for _, _, final, _ in outcomes
        ),
        cpu_s=math.fsum(cpu) if len(cpu) == len(probes) else math.nan,
    )


async def run_smollm2(config: SmolConfig, progress: Progress, run_dir: Path) -> SmolRun:
    """Starts Triton (SmolLM2), InferenceService and the transformers worker; measures the
    platform's single streams and waves, and the transformers batches in between."""
    from genai_triton.prepare import PrepareError, prepared_model_dir

    from benchmarks.transformers_generate import transformers_worker
    from services.common.clients import api_key_metadata
    from services.inference.adapters.tritonserver import TritonServer

    missing = smollm2_missing()
    if missing:
        raise ModelsMissingError(f"{CPU_REPOSITORY} lacks the SmolLM2 models {missing}")
    try:
        model_dir = prepared_model_dir()
    except PrepareError as error:
        raise ModelsMissingError(str(error)) from None
    started_at = datetime.now(UTC)
    started = time.monotonic()
    progress.stage("smollm2: starting Triton (smollm2), InferenceService, transformers worker")
    triton = TritonServer()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(triton.stop)  # also when the worker fails while it starts
        async with asyncio.TaskGroup() as group:
            group.create_task(
                triton.start(
                    CPU_REPOSITORY,
                    models=list(SMOLLM2_TRITON_MODELS),
                    http_port=None,
                    log_file=run_dir / "triton-smollm2.log",
                )
            )
            starting_worker = group.create_task(
                stack.enter_async_context(
                    transformers_worker(
                        model_dir, threads=config.threads, log_file=run_dir / "transformers.log"
                    )
                )
            )
        worker = starting_worker.result()
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-inference-"))
        env = inference_env(
            [
                served_model(
                    SMOLLM2_MODEL,
                    triton.grpc_address,
                    SMOLLM2_TRITON_MODELS[0],
                    max_in_flight=64,
                    chat_template="prepared:smollm2",
                )
            ],
            Path(data),
        )
        service = await stack.enter_async_context(
            genai_serve(["inference"], env, log_file=run_dir / "genai-smollm2.log")
        )
        platform = PlatformPath(
            service.address,
            _smollm2_request(SMOLLM2_PROMPTS[0], 1),
            api_key_metadata(await development_key(service)),
        )
        stack.push_async_callback(platform.close)
        await platform.ready()
        waves: list[Wave] = []
        try:
            pid = triton.pid
            assert pid is not None
            probes: dict[str, CpuProbe] = {
                "inference": service.cpu_seconds,
                "triton": lambda: group_cpu_seconds(pid),
            }
            await while_alive(
                triton, _measure_smollm2(config, platform, worker, progress, probes, waves)
            )
            await _measure_serve(config, model_dir, run_dir, progress, waves)
        except TritonDiedError as error:
            if not any(w.variant == PLATFORM for w in waves):
                raise
            aborted = str(error)  # keep what was measured before Triton died
            progress.note(f"part smollm2 stopped early: {aborted.splitlines()[0]}")
        else:
            aborted = ""
    run = smollm2_run(config, waves, worker.ready, started_at, time.monotonic() - started)
    run.aborted = aborted
    return run


def smollm2_run(
    config: SmolConfig,
    waves: Sequence[Wave],
    baseline_info: Mapping[str, Any],
    started_at: datetime,
    duration_s: float,
) -> SmolRun:
    """Part smollm2's result from its waves, in the order they ran."""
    pooled = {
        key: pool_waves([w for w in waves if (w.variant, w.concurrency) == key])
        for key in dict.fromkeys((w.variant, w.concurrency) for w in waves)
    }
    result = BenchmarkResult(
        benchmark=f"{NAME}.smollm2",
        started_at=started_at,
        duration_s=duration_s,
        baseline=TRANSFORMERS,
        candidate=PLATFORM,
        config=asdict(config),
        environment={"transformers_worker": dict(baseline_info)},
        measurements=[_wave_measurement(w, pooled) for w in pooled.values()],
        comparisons=_smollm2_comparisons(waves, pooled),
        notes=[
            f"{SMOLLM2_MODEL}: Triton CPU repository `smollm2` (facade and engine in one stub) "
            "through InferenceService GenerateStream (chat input, greedy, "
            f"max_tokens {config.max_tokens}); transformers: LlamaForCausalLM.generate on the "
            f"prepared weights, greedy, min_new_tokens = max_new_tokens, {config.threads} torch "
            "threads, its own process, run while Triton is idle.",
            "tokens/s: output tokens of all streams of a wave over its wall time (first call "
            "to last final message; transformers: the generate call), prefill included.",
            "CPU cores: CPU time of the serving processes over the wave / its wall time "
            "(platform: Triton with its stubs plus InferenceService; transformers: its "
            "process); below 2, other processes on the machine had the rest.",
        ],
    )
    return SmolRun(result, pooled, baseline_info)


async def _measure_smollm2(
    config: SmolConfig,
    platform: PlatformPath,
    worker: "TransformersWorker",
    progress: Progress,
    probes: Mapping[str, CpuProbe],
    waves: list[Wave],
) -> None:
    """Appends each wave to `waves` as it ends (so that a crash keeps the earlier ones)."""
    progress.stage("smollm2: warm-up stream")
    timing, text, _, _ = await platform.generate(_smollm2_request(SMOLLM2_PROMPTS[0], 4))
    if not text or timing.tokens < 1:
        raise RuntimeError("SmolLM2 through InferenceService generated nothing")
    batches = list(config.transformers_batches)

    async def transformers(batch: int, prompts: Sequence[str]) -> None:
        progress.step(f"transformers generate, batch {batch} (Triton idle)")
        request = GenerateRequest(
            conversations=[_conversation(p) for p in prompts],
            max_new_tokens=config.max_tokens,
            min_new_tokens=config.max_tokens,
        )
        waves.append(wave_of(await worker.generate(request)))
        progress.note(_wave_headline(waves[-1]))

    # Single streams alternate with transformers batch-1 calls on the same prompt (and which
    # goes first), so that the machine's noise falls on both alike.
    peer_single = 1 in batches
    if peer_single:
        batches.remove(1)
    progress.stage(f"smollm2: {config.single_streams} single stream(s), each beside batch 1")
    for index in range(config.single_streams):
        prompt = SMOLLM2_PROMPTS[index % len(SMOLLM2_PROMPTS)]
        if peer_single and index % 2 == 1:
            await transformers(1, [prompt])
        waves.append(
            await platform_wave(platform, [prompt], config.max_tokens, 1, progress, probes)
        )
        progress.note(_wave_headline(waves[-1]))
        if peer_single and index % 2 == 0:
            await transformers(1, [prompt])
    for concurrency in config.concurrencies:
        progress.stage(f"smollm2: {concurrency} concurrent streams")
        prompts = SMOLLM2_PROMPTS[:concurrency]
        waves.append(
            await platform_wave(platform, prompts, config.max_tokens, concurrency, progress, probes)
        )
        progress.note(_wave_headline(waves[-1]))
        if concurrency in batches:
            batches.remove(concurrency)
            await transformers(concurrency, prompts)
    for batch in batches:
        progress.stage(f"smollm2: transformers batch {batch}")
        await transformers(batch, SMOLLM2_PROMPTS[:batch])


async def _measure_serve(
    config: SmolConfig, model_dir: Path, run_dir: Path, progress: Progress, waves: list[Wave]
) -> None:
    """`transformers serve --continuous-batching` on the same weights (Triton idle): waves of
    `serve_concurrencies` streams of the same prompts, greedy, `max_tokens` each."""
    if not config.serve_concurrencies:
        return
    from benchmarks.transformers_serve import transformers_serve

    progress.stage("smollm2: starting transformers serve --continuous-batching")
    async with transformers_serve(model_dir, log_file=run_dir / "transformers-serve.log") as serve:
        await serve.stream(_conversation(SMOLLM2_PROMPTS[0]), 2)  # warm-up
        for concurrency in config.serve_concurrencies:
            progress.stage(f"smollm2: transformers serve, {concurrency} concurrent streams")
            prompts = SMOLLM2_PROMPTS[:concurrency]
            cpu_before = serve.cpu_seconds()
            started = time.perf_counter()
            streams = await asyncio.gather(
                *(serve.stream(_conversation(p), config.max_tokens) for p in prompts)
            )
            wall = time.perf_counter() - started
            cpu_after = serve.cpu_seconds()
            waves.append(
                Wave(
                    variant=SERVE,
                    concurrency=concurrency,
                    wall_s=wall,
                    ttft_s=[stream.ttft_s for stream in streams],
                    output_tokens=[stream.output_tokens for stream in streams],
                    input_tokens=[stream.input_tokens for stream in streams],
                    texts=[stream.text for stream in streams],
                    finished_early=sum(stream.finish_reason != "length" for stream in streams),
                    cpu_s=(
                        cpu_after - cpu_before
                        if cpu_before is not None and cpu_after is not None
                        else math.nan
                    ),
                )
            )
            progress.note(_wave_headline(waves[-1]))


def _wave_headline(wave: Wave) -> str:
    return (
        f"smollm2 {wave.variant} x{wave.concurrency}: {wave.tokens_per_s:.1f} tokens/s "
        f"({sum(wave.output_tokens)} tokens in {wave.wall_s:.1f} s), "
        f"TTFT p50 {percentile(sorted(wave.ttft_s), 50) * 1000:,.0f} ms, "
        f"{wave.cores:.2f} CPU cores busy"
    )


def _wave_measurement(wave: Wave, pooled: Mapping[tuple[str, int], Wave]) -> Measurement:
    single = pooled.get((wave.variant, 1))
    return Measurement(
        scenario="smollm2",
        variant=wave.variant,
        concurrency=wave.concurrency,
        latency_metric="TTFT",
        latency_us=LatencySummary.of(t * 1e6 for t in wave.ttft_s),
        rates={
            "tokens_per_s": wave.tokens_per_s,
            "gain_over_single_stream": _ratio(wave.tokens_per_s, single.tokens_per_s)
            if single
            else math.nan,
            "output_tokens": float(sum(wave.output_tokens)),
            "wall_s": wave.wall_s,
            "streams": float(len(wave.output_tokens)),
            "finished_early": float(wave.finished_early),
            "input_tokens_mean": math.fsum(wave.input_tokens) / len(wave.input_tokens),
            "cpu_cores": wave.cores,
        },
    )


def _smollm2_comparisons(
    waves: Sequence[Wave], pooled: Mapping[tuple[str, int], Wave]
) -> list[Comparison]:
    comparisons = []
    for (variant, concurrency), baseline in pooled.items():
        candidate = pooled.get((PLATFORM, concurrency))
        if variant != TRANSFORMERS or candidate is None:
            continue
        singles = [
            [w.tokens_per_s for w in waves if (w.variant, w.concurrency) == (v, concurrency)]
            for v in (TRANSFORMERS, PLATFORM)
        ]
        comparisons.append(
            Comparison.of_rate(
                "smollm2",
                concurrency,
                "rate",
                "token",
                baseline.tokens_per_s,
                candidate.tokens_per_s,
                round_ratios(*singles) if len(singles[0]) == len(singles[1]) else (),
            )
        )
        for p in (50.0, 99.0):
            comparisons.append(
                Comparison.of_latency(
                    "smollm2",
                    concurrency,
                    f"TTFT p{p:.0f}",
                    percentile(sorted(t * 1e6 for t in baseline.ttft_s), p),
                    percentile(sorted(t * 1e6 for t in candidate.ttft_s), p),
                )
            )
    return comparisons


def smollm2_targets(pooled: Mapping[tuple[str, int], Wave]) -> list[TargetCheck]:
    """The issue's targets for part smollm2: tokens/s against transformers fp32 at batch 1 and
    16 and against `transformers serve --continuous-batching` at 16 streams, 250 tokens/s at
    16 streams, TTFT at one stream against transformers', and the cores kept busy."""
    checks = []
    single = pooled.get((PLATFORM, 1))
    wide = pooled.get((PLATFORM, WIDE_STREAMS))
    for streams, platform in ((1, single), (WIDE_STREAMS, wide)):
        peer = pooled.get((TRANSFORMERS, streams))
        if platform is not None and peer is not None:
            checks.append(
                check_at_least(
                    f"smollm2: tokens/s at {streams} stream(s) through InferenceService / "
                    f"transformers fp32 batch {streams}",
                    _ratio(platform.tokens_per_s, peer.tokens_per_s),
                    PEER_TARGET,
                    "x",
                    detail=f"{platform.tokens_per_s:.1f} vs {peer.tokens_per_s:.1f} tokens/s",
                )
            )
    if wide is not None:
        checks.append(
            check_at_least(
                f"smollm2: tokens/s at {WIDE_STREAMS} streams",
                wide.tokens_per_s,
                WIDE_TOKENS_PER_S,
                "",
            )
        )
        serve = pooled.get((SERVE, WIDE_STREAMS))
        if serve is not None:
            checks.append(
                check_at_least(
                    f"smollm2: tokens/s at {WIDE_STREAMS} streams / transformers serve "
                    "--continuous-batching",
                    _ratio(wide.tokens_per_s, serve.tokens_per_s),
                    PEER_TARGET,
                    "x",
                    detail=f"{wide.tokens_per_s:.1f} vs {serve.tokens_per_s:.1f} tokens/s",
                )
            )
        checks.append(
            check_at_least(
                f"smollm2: CPU cores busy serving {WIDE_STREAMS} streams",
                wide.cores,
                CORES_TARGET,
                "",
            )
        )
    peer_single = pooled.get((TRANSFORMERS, 1))
    if single is not None and peer_single is not None:
        ours = percentile(sorted(single.ttft_s), 50) * 1000
        theirs = percentile(sorted(peer_single.ttft_s), 50) * 1000
        checks.append(
            check_at_least(
                "smollm2: transformers batch-1 time to first token / TTFT p50 at 1 stream",
                _ratio(theirs, ours),
                1.0,
                "x",
                detail=f"{ours:.1f} ms vs transformers {theirs:.1f} ms",
            )
        )
    return checks


def _shared_prefix(a: str, b: str) -> int:
    """Characters at the start of `a` and `b` that are the same."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def same_texts(pooled: Mapping[tuple[str, int], Wave]) -> list[str]:
    """Whether greedy decoding gave the same text on both sides, per shared concurrency."""
    lines = []
    for (variant, concurrency), platform in pooled.items():
        peer = pooled.get((TRANSFORMERS, concurrency))
        if variant != PLATFORM or peer is None:
            continue
        pairs = list(zip(platform.texts, peer.texts, strict=False))
        identical = sum(a == b for a, b in pairs)
        prefix = sum(a.startswith(b) or b.startswith(a) for a, b in pairs)
        inputs = sum(a == b for a, b in zip(platform.input_tokens, peer.input_tokens, strict=False))
        shared = [_shared_prefix(a, b) / max(len(a), len(b), 1) for a, b in pairs]
        lines.append(
            f"greedy texts against transformers fp32 at {concurrency} stream(s): "
            f"{identical}/{len(pairs)} identical, {prefix}/{len(pairs)} one a prefix of the "
            f"other, {100 * math.fsum(shared) / max(len(shared), 1):.0f}% of the text shared "
            f"before they part (mean); prompt token counts equal in {inputs}/{len(pairs)}"
        )
    return lines


# ------------------------------------------------------------------------------------ the run

PARTS: Final = ("zero", "smollm2")


@dataclass
class InferenceRun:
    """A finished run: the parts that ran, and why any did not."""

    started_at: datetime
    duration_s: float
    config: InferenceConfig
    environment: Mapping[str, Any]
    run_dir: Path
    """Where Triton's, InferenceService's and the transformers worker's logs are."""
    zero: ZeroRun | None = None
    smollm2: SmolRun | None = None
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Parts that broke (with their error), when the other part ran."""

    @property
    def complete(self) -> bool:
        """Whether every part asked for ran to its end."""
        return not self.failed and not (self.smollm2 and self.smollm2.aborted)

    @property
    def targets(self) -> list[TargetCheck]:
        checks = zero_targets(self.zero.scenarios) if self.zero else []
        return checks + (smollm2_targets(self.smollm2.waves) if self.smollm2 else [])

    def document(self) -> dict[str, Any]:
        """The JSON file: each part as a benchmark result of its own, and the targets."""
        parts = {
            name: part.result.to_json_dict()
            for name, part in (("zero", self.zero), ("smollm2", self.smollm2))
            if part is not None
        }
        return {
            "benchmark": NAME,
            "started_at": self.started_at.isoformat(),
            "duration_s": self.duration_s,
            "config": asdict(self.config),
            "environment": dict(self.environment),
            "logs": str(self.run_dir),
            "parts": parts,
            "targets": [
                {**asdict(t), "measured": t.measured if math.isfinite(t.measured) else None}
                for t in self.targets
            ],
            "floor": zero_floor(self.zero.scenarios) if self.zero else [],
            "skipped": list(self.skipped),
            "failed": list(self.failed),
            "aborted": self.smollm2.aborted if self.smollm2 else "",
        }

    def plot(self, path: Path) -> None:
        from benchmarks.inference_plot import plot_panels

        titles = [
            title
            for title, part in (
                ("InferenceService vs direct Triton (zero_llm)", self.zero),
                ("SmolLM2 through InferenceService vs transformers", self.smollm2),
            )
            if part is not None
        ]
        plot_panels(path, "; ".join(titles), _panels(self), subtitle=_subtitle(self))


async def run_inference(
    config: InferenceConfig, parts: Sequence[str], progress: Progress | None = None
) -> InferenceRun:
    """Runs the parts asked for; part smollm2 is skipped (with a note) when its models are
    missing and the other part runs, and raises ModelsMissingError when it is the only one."""
    progress = progress or Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    run_dir = RUN_ROOT / f"bench-{NAME}-{started_at:%Y%m%dT%H%M%SZ}-{os.getpid()}"
    run = InferenceRun(started_at, 0.0, config, environment(), run_dir)
    try:
        for part in parts:
            try:
                if part == "zero":
                    run.zero = await run_zero(config.zero, progress, run_dir)
                    continue
                missing = smollm2_missing()
                if missing and len(parts) > 1:
                    run.skipped.append(f"smollm2: {shown(CPU_REPOSITORY)} lacks {missing}")
                    progress.note(f"part smollm2 skipped: the repository lacks {missing}")
                else:
                    run.smollm2 = await run_smollm2(config.smollm2, progress, run_dir)
            except (ModelsMissingError, asyncio.CancelledError):
                raise
            except Exception as error:  # one broken part must not lose the other's figures
                if len(parts) == 1:
                    raise
                run.failed.append(f"{part}: {type(error).__name__}: {error}")
                progress.note(f"part {part} failed: {str(error).splitlines()[0]}")
    finally:
        progress.close()
    run.duration_s = time.monotonic() - started
    run.environment = with_load_at_end(run.environment)
    return run


# ------------------------------------------------------------------------------------ report


def _subtitle(run: InferenceRun) -> str:
    return run_subtitle(run.started_at, run.environment)


def cpu_table(scenarios: Sequence[Scenario]) -> str:
    """Rates and CPU time per stream of each process, by concurrency and path."""
    headers = [
        "conc",
        "path",
        "streams/s",
        "tokens/s",
        *(f"{p} CPU µs/stream" for p in PROCESSES),
        "all CPU µs/stream",
    ]
    rows = []
    for scenario in scenarios:
        for path in scenario.paths:
            cpu = [scenario.cpu_us_per_stream(path, p) for p in PROCESSES]
            rows.append(
                [
                    str(scenario.concurrency),
                    path,
                    format_number(scenario.streams_per_s(path)),
                    format_number(scenario.tokens_per_s(path)),
                    *(format_number(c) for c in cpu),
                    format_number(math.fsum(c for c in cpu if math.isfinite(c))),
                ]
            )
    return format_table(headers, rows)


def smollm2_table(waves: Mapping[tuple[str, int], Wave]) -> str:
    """Each variant's tokens/s at each concurrency (batch size), with TTFT and the gain over
    its single stream."""
    headers = [
        "variant",
        "streams",
        "tokens",
        "wall s",
        "tokens/s",
        "x single",
        "TTFT p50 ms",
        "TTFT max ms",
        "ended early",
        "CPU cores",
    ]
    rows = []
    for (variant, concurrency), wave in sorted(waves.items()):
        single = waves.get((variant, 1))
        ttft = sorted(t * 1000 for t in wave.ttft_s)
        rows.append(
            [
                variant,
                str(concurrency),
                str(sum(wave.output_tokens)),
                format_number(wave.wall_s),
                format_number(wave.tokens_per_s),
                format_ratio(
                    _ratio(wave.tokens_per_s, single.tokens_per_s) if single else math.nan
                ),
                format_number(percentile(ttft, 50)),
                format_number(ttft[-1]),
                str(wave.finished_early),
                format_number(wave.cores),
            ]
        )
    return format_table(headers, rows)


def report(run: InferenceRun) -> str:
    """The printed summary: each part's tables, then a PASS/FAIL line per target."""
    lines = [f"benchmark {NAME}: {_subtitle(run)}, {run.duration_s:.0f} s", ""]
    if run.zero is not None:
        zero = run.zero
        lines += [
            f"== part zero: {ZERO_TRITON_MODEL}, {run.config.zero.tokens} tokens per stream, "
            f"direct (tritonclient -> Triton) vs platform (InferenceService -> Triton) "
            f"[{zero.result.duration_s:.0f} s]",
            "",
            latency_table(zero.result.measurements),
            "",
            comparison_table(zero.result),
            "",
            cpu_table(zero.scenarios),
            "",
            "floor (a bare grpc.aio relay in front of Triton, same rounds):",
            *(f"  {line}" for line in zero_floor(zero.scenarios)),
            "",
            *(f"- {note}" for note in zero.result.notes),
            "- CPU: user+system time per stream served (ramp-up and ramp-down streams too) of "
            "this client, InferenceService's process, the relay of the hop path and Triton's "
            "process group (with its Python stubs), from /proc (10 ms ticks, summed over all "
            "rounds).",
            "",
        ]
    if run.smollm2 is not None:
        smol = run.smollm2
        info = smol.baseline_info
        lines += [
            f"== part smollm2: {SMOLLM2_MODEL}, max_tokens {run.config.smollm2.max_tokens}, "
            f"platform (InferenceService -> Triton smollm2) vs transformers "
            f"{info.get('transformers')} (torch {info.get('torch')}, {info.get('threads')} "
            f"threads, {info.get('dtype')}) [{smol.result.duration_s:.0f} s]",
            "",
            smollm2_table(smol.waves),
            "",
            comparison_table(smol.result),
            "",
            *(f"- {line}" for line in same_texts(smol.waves)),
            *(f"- {note}" for note in smol.result.notes),
            "",
        ]
    if run.smollm2 is not None and run.smollm2.aborted:
        lines += [f"- part smollm2 stopped early, after the waves above: {run.smollm2.aborted}"]
    lines += [f"- skipped {reason}" for reason in run.skipped]
    lines += [f"- FAILED {reason}" for reason in run.failed]
    lines += ["", "targets:", *(f"  {check.line()}" for check in run.targets)]
    lines += starved_lines(run.environment)
    return "\n".join(lines)


def _panels(run: InferenceRun) -> list[Any]:
    from benchmarks.inference_plot import ScalingPanel, StackedPanel
    from benchmarks.stats import LatencyPanel, RatePanel

    panels: list[Any] = []
    if run.zero is not None:
        scenarios = run.zero.scenarios
        single = next(s for s in scenarios if s.concurrency == 1)
        busiest = max(scenarios, key=lambda s: s.concurrency)
        tokens = run.config.zero.tokens
        panels += [
            LatencyPanel(
                "zero_llm, concurrency 1: time to first token",
                {p: [t.ttft_us for t in single.timings(p)] for p in single.paths},
                xlabel="TTFT",
            ),
            LatencyPanel(
                f"zero_llm, concurrency 1: whole stream ({tokens} tokens)",
                {p: [t.total_us for t in single.timings(p)] for p in single.paths},
                xlabel="total latency",
            ),
        ]
        if busiest is not single:
            panels.append(
                LatencyPanel(
                    f"zero_llm, concurrency {busiest.concurrency}: time to first token",
                    {p: [t.ttft_us for t in busiest.timings(p)] for p in busiest.paths},
                    xlabel="TTFT",
                )
            )
        panels += [
            RatePanel(
                f"zero_llm streams per second ({tokens} tokens each)",
                "streams/s",
                {
                    f"concurrency {s.concurrency}": {p: s.streams_per_s(p) for p in s.paths}
                    for s in scenarios
                },
            ),
            StackedPanel(
                "CPU time per stream, by process",
                "CPU µs per stream",
                {
                    f"c={s.concurrency}": {
                        p: {proc: s.cpu_us_per_stream(p, proc) for proc in PROCESSES}
                        for p in s.paths
                    }
                    for s in scenarios
                },
            ),
        ]
    if run.smollm2 is not None:
        waves = run.smollm2.waves
        platform = {c: w.tokens_per_s for (v, c), w in waves.items() if v == PLATFORM}
        peers = {
            f"transformers batch {c}": w.tokens_per_s
            for (v, c), w in sorted(waves.items())
            if v == TRANSFORMERS
        }
        peers.update(
            {
                f"transformers serve --continuous-batching, {c} streams": w.tokens_per_s
                for (v, c), w in sorted(waves.items())
                if v == SERVE
            }
        )
        panels.append(
            ScalingPanel(
                f"{SMOLLM2_MODEL}: aggregate tokens/s (max_tokens {run.config.smollm2.max_tokens})",
                "tokens/s",
                "concurrent streams",
                "platform (InferenceService -> Triton)",
                platform,
                peers,
                target=(
                    (
                        WIDE_STREAMS,
                        WIDE_TOKENS_PER_S,
                        f"target at {WIDE_STREAMS} streams: {WIDE_TOKENS_PER_S:g} tokens/s",
                    )
                    if WIDE_STREAMS in platform
                    else None
                ),
            )
        )
    return panels


# ------------------------------------------------------------------------------------ command


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    for action in parser._actions:  # this benchmark's quick run is longer than most
        if "--quick" in action.option_strings:
            action.help = "a short run (about a minute) to check that it works"
    parser.add_argument(
        "--part",
        choices=(*PARTS, "all"),
        default="all",
        help="zero: InferenceService vs direct Triton on zero_llm; smollm2: SmolLM2 vs "
        "transformers; all (default): both (smollm2 skipped when its models are missing)",
    )
    parser.add_argument("--rounds", type=int, help="zero: interleaved rounds at concurrency 1")
    parser.add_argument("--streams", type=int, help="zero: streams per path at concurrency 1")
    parser.add_argument(
        "--load-seconds", type=float, help="zero: measured seconds per path and concurrency"
    )
    parser.add_argument("--max-tokens", type=int, help="smollm2: tokens per stream (default 32)")
    parser.add_argument(
        "--single-streams", type=int, help="smollm2: single streams (and batch-1 calls)"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    zero_overrides = {
        "rounds": args.rounds,
        "streams": args.streams,
        "load_seconds": args.load_seconds,
    }
    smol_overrides = {"max_tokens": args.max_tokens, "single_streams": args.single_streams}
    try:
        config = InferenceConfig(
            zero=replace(config.zero, **{k: v for k, v in zero_overrides.items() if v is not None}),
            smollm2=replace(
                config.smollm2, **{k: v for k, v in smol_overrides.items() if v is not None}
            ),
        )
    except ValueError as error:
        parser.error(str(error))
    parts = PARTS if args.part == "all" else (args.part,)
    try:
        run = asyncio.run(run_inference(config, parts))
    except ModelsMissingError as error:
        print(f"scripts/bench {NAME}: {error}", file=sys.stderr)
        return 1
    if run.zero is None and run.smollm2 is None:
        print(f"scripts/bench {NAME}: nothing was measured", file=sys.stderr)
        print("\n".join([*run.failed, *run.skipped]), file=sys.stderr)
        return 1
    json_path, png_path = output_paths(args.out, NAME, run.started_at)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(run.document(), indent=2, ensure_ascii=False) + "\n")
    run.plot(png_path)
    print(report(run))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}\nlogs  {shown(run.run_dir)}")
    return 0 if run.complete else 1


if __name__ == "__main__":
    sys.exit(main())
