"""`scripts/bench structured`: structured outputs with and without constrained decoding.

The `extract-invoice` prompt (prompts/extract-invoice.yaml) on the examples of
prompts/evals/extract-invoice.jsonl, served by SmolLM2-135M on the CPU Triton repository
through InferenceService, greedy, one stream at a time. Each example runs twice, in turns:
- `free`: the prompt alone (today's path for a model without guided decoding);
- `constrained`: the same request with `constraint.json_schema` = the version's output schema,
  so the engine masks every token that would leave it (xgrammar).

Each output goes through the gateway's own schema check (`check_output`): an invalid output
is one the gateway would have to repair with a second generation (or fail). Reported: the
schema-valid rate of each variant, the repairs constrained decoding saves, finish reasons, and
the cost: output tokens/s of a single stream (constrained / free, per example pair) and time
to first token. Target: 100% schema-valid under constraint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
from genai.common.v1 import chat_pb2, generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc
from google.protobuf import json_format, struct_pb2

from benchmarks.cli import ROOT, benchmark_parser, shown, write_outputs
from benchmarks.inference import (
    CPU_REPOSITORY,
    SMOLLM2_TRITON_MODELS,
    ModelsMissingError,
    inference_env,
    served_model,
    smollm2_missing,
)
from benchmarks.processes import genai_serve
from benchmarks.stats import (
    BenchmarkResult,
    Comparison,
    LatencySummary,
    Measurement,
    Progress,
    environment,
    format_table,
    run_subtitle,
    starved_lines,
    with_load_at_end,
)
from services.gateway.core.processing import check_output
from services.prompt.core.registry import render_version
from services.prompt.files import load_prompt_file

NAME: Final = "structured"
DESCRIPTION: Final = (
    "schema-valid rate, repairs saved and tokens/s of SmolLM2 on extract-invoice, "
    "with and without constrained decoding"
)
PROMPT_FILE: Final = ROOT / "prompts" / "extract-invoice.yaml"
DATASET: Final = ROOT / "prompts" / "evals" / "extract-invoice.jsonl"
MODEL: Final = "smollm2"
FREE: Final = "free"
CONSTRAINED: Final = "constrained"
VARIANTS: Final = (FREE, CONSTRAINED)
STREAM_DEADLINE_S: Final = 600.0


@dataclass(frozen=True)
class StructuredConfig:
    examples: int = 0
    """Examples of the dataset to run (0: all)."""
    free_examples: int = 0
    """Of those, how many also run unconstrained (0: all)."""
    max_tokens: int = 0
    """Overrides the version's `max_tokens` when > 0."""


QUICK: Final = StructuredConfig(examples=0, free_examples=2)
"""All examples constrained (the 100% target is about every one), two also free."""


@dataclass
class Outcome:
    """One generation."""

    example: int
    variant: str
    valid: bool
    problem: str
    finish_reason: str
    output_tokens: int
    seconds: float
    ttft_s: float
    text: str

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Run:
    config: StructuredConfig
    outcomes: list[Outcome] = field(default_factory=list)

    def of(self, variant: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.variant == variant]


def load_examples(limit: int = 0) -> list[Mapping[str, Any]]:
    rows = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


def _requests(
    examples: Sequence[Mapping[str, Any]], max_tokens: int, prompt_file: Path = PROMPT_FILE
) -> tuple[list[inference_service_pb2.GenerateStreamRequest], dict[str, Any]]:
    """The unconstrained request of each example, rendered and parameterised as the gateway
    serves the version (its messages and `parameters`; `max_tokens` > 0 overrides), and the
    version's output schema."""
    prompt = load_prompt_file(prompt_file)
    content = json_format.MessageToDict(prompt.version, preserving_proto_field_name=True)
    schema = content["output_schema"]
    parameters = json_format.ParseDict(
        content.get("parameters", {}), generation_pb2.SamplingParameters()
    )
    if max_tokens:
        parameters.max_tokens = max_tokens
    requests = []
    for example in examples:
        messages = render_version(content, example["inputs"])
        requests.append(
            inference_service_pb2.GenerateStreamRequest(
                model=MODEL,
                chat=inference_pb2.ChatInput(
                    messages=[
                        chat_pb2.ChatMessage(role=_role(m.role), content=m.content)
                        for m in messages
                    ]
                ),
                parameters=parameters,
            )
        )
    return requests, schema


def _role(role: str) -> Any:
    return chat_pb2.ChatRole.Value(f"CHAT_ROLE_{role.upper()}")


async def _generate(
    stub: inference_service_pb2_grpc.InferenceServiceAsyncStub,
    request: inference_service_pb2.GenerateStreamRequest,
) -> tuple[str, inference_pb2.GenerationFinal, float, float]:
    sent = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    final = inference_pb2.GenerationFinal()
    async for response in stub.GenerateStream(request, timeout=STREAM_DEADLINE_S):
        event = response.WhichOneof("event")
        if event == "delta":
            first = first or time.perf_counter()
            parts.append(response.delta.text)
        elif event == "final":
            final = response.final
    done = time.perf_counter()
    return "".join(parts), final, done - sent, (first or done) - sent


async def measure(address: str, config: StructuredConfig, progress: Progress, run: Run) -> None:
    examples = load_examples(config.examples)
    requests, schema = _requests(examples, config.max_tokens)
    constraint = generation_pb2.OutputConstraint(json_schema=_struct(schema))
    free_count = config.free_examples or len(examples)
    async with grpc.aio.insecure_channel(address) as channel:
        stub: inference_service_pb2_grpc.InferenceServiceAsyncStub = (
            inference_service_pb2_grpc.InferenceServiceStub(channel)
        )
        await _generate_warm(stub, requests[0])
        total = len(examples) + free_count
        progress.step("generating", total)
        for index, request in enumerate(requests):
            variants = VARIANTS if index < free_count else (CONSTRAINED,)
            # Alternate which variant goes first, so drift in the machine's speed is shared.
            for variant in variants if index % 2 == 0 else tuple(reversed(variants)):
                sent = inference_service_pb2.GenerateStreamRequest()
                sent.CopyFrom(request)
                if variant == CONSTRAINED:
                    sent.constraint.CopyFrom(constraint)
                text, final, seconds, ttft = await _generate(stub, sent)
                violation = check_output(text, schema)
                run.outcomes.append(
                    Outcome(
                        example=index,
                        variant=variant,
                        valid=violation is None,
                        problem=""
                        if violation is None
                        else f"{violation.json_path}: {violation.detail}",
                        finish_reason=generation_pb2.FinishReason.Name(final.finish_reason),
                        output_tokens=final.usage.output_tokens,
                        seconds=seconds,
                        ttft_s=ttft,
                        text=text,
                    )
                )
                progress.advance()


async def _generate_warm(
    stub: inference_service_pb2_grpc.InferenceServiceAsyncStub,
    request: inference_service_pb2.GenerateStreamRequest,
) -> None:
    """One short request first: the model's first request pays for lazy initialisation."""
    warm = inference_service_pb2.GenerateStreamRequest()
    warm.CopyFrom(request)
    warm.parameters.max_tokens = 4
    async for _ in stub.GenerateStream(warm, timeout=STREAM_DEADLINE_S):
        pass


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


async def run_structured(config: StructuredConfig, progress: Progress, run_dir: Path) -> Run:
    from services.inference.adapters.tritonserver import TritonServer

    missing = smollm2_missing()
    if missing:
        raise ModelsMissingError(f"{CPU_REPOSITORY} lacks the SmolLM2 models {missing}")
    run = Run(config)
    progress.stage("starting Triton (SmolLM2) and InferenceService")
    triton = TritonServer()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(triton.stop)
        await triton.start(
            CPU_REPOSITORY,
            models=list(SMOLLM2_TRITON_MODELS),
            http_port=None,
            log_file=run_dir / "triton.log",
        )
        env = inference_env(
            [
                served_model(
                    MODEL,
                    triton.grpc_address,
                    SMOLLM2_TRITON_MODELS[0],
                    max_in_flight=8,
                    chat_template="prepared:smollm2",
                    guided_decoding=True,
                )
            ]
        )
        # InferenceService alone on loopback, for this process only: no API keys.
        env["GENAI_AUTH__MODE"] = "none"
        service = await stack.enter_async_context(
            genai_serve(["inference"], env, log_file=run_dir / "genai.log")
        )
        await measure(f"127.0.0.1:{service.port}", config, progress, run)
    return run


# ------------------------------------------------------------------------------------ report


def summary(run: Run) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        outcomes = run.of(variant)
        if not outcomes:
            continue
        valid = sum(o.valid for o in outcomes)
        tokens = sum(o.output_tokens for o in outcomes)
        seconds = sum(o.seconds for o in outcomes)
        figures[variant] = {
            "generations": len(outcomes),
            "schema_valid": valid,
            "schema_valid_rate": valid / len(outcomes),
            "repairs_needed": len(outcomes) - valid,
            "finish_reasons": _count(o.finish_reason for o in outcomes),
            "output_tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "ttft_ms_p50": statistics.median(o.ttft_s * 1000 for o in outcomes),
        }
    return figures


def _count(values: Any) -> dict[str, int]:
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return counted


def repairs_saved(run: Run) -> int:
    """Invalid free outputs minus invalid constrained ones, on the examples run both ways:
    the repairs (second generations) the gateway would not have to make."""
    free = {o.example: o for o in run.of(FREE)}
    paired = [o for o in run.of(CONSTRAINED) if o.example in free]
    return sum(not free[o.example].valid for o in paired) - sum(not o.valid for o in paired)


def paired_speed_ratios(run: Run) -> list[float]:
    """constrained/free tokens/s of each example that ran both ways."""
    free = {o.example: o for o in run.of(FREE)}
    return [
        o.tokens_per_s / free[o.example].tokens_per_s
        for o in run.of(CONSTRAINED)
        if o.example in free and free[o.example].tokens_per_s > 0
    ]


def targets(figures: Mapping[str, Mapping[str, Any]]) -> list[tuple[bool, str]]:
    constrained = figures[CONSTRAINED]
    rate = constrained["schema_valid_rate"]
    return [
        (
            rate == 1.0,
            f"schema-valid under constraint: {constrained['schema_valid']}/"
            f"{constrained['generations']} ({rate:.0%}), target 100%",
        )
    ]


def build_result(
    run: Run, started_at: datetime, duration_s: float, env: Mapping[str, Any]
) -> BenchmarkResult:
    figures = summary(run)
    ratios = paired_speed_ratios(run)
    measurements = [
        Measurement(
            scenario="extract-invoice",
            variant=variant,
            concurrency=1,
            latency_metric="ttft",
            latency_us=LatencySummary.of(o.ttft_s * 1e6 for o in run.of(variant)),
            rates={
                "tokens_per_s": figures[variant]["tokens_per_s"],
                "schema_valid_rate": figures[variant]["schema_valid_rate"],
            },
            rounds=[
                {
                    "example": o.example,
                    "valid": float(o.valid),
                    "output_tokens": o.output_tokens,
                    "seconds": o.seconds,
                }
                for o in run.of(variant)
            ],
        )
        for variant in figures
    ]
    comparisons = []
    if FREE in figures:
        comparisons.append(
            Comparison.of_rate(
                "extract-invoice",
                1,
                "output tokens",
                "token",
                figures[FREE]["tokens_per_s"],
                figures[CONSTRAINED]["tokens_per_s"],
                ratios,
            )
        )
    notes = [
        f"{variant}: {json.dumps(figures[variant], sort_keys=True)}" for variant in figures
    ] + [
        f"{o.variant} example {o.example} invalid ({o.finish_reason}): {o.problem}; "
        f"output {o.text[:300]!r}{'...' if len(o.text) > 300 else ''}"
        for o in run.outcomes
        if not o.valid
    ]
    return BenchmarkResult(
        benchmark=NAME,
        started_at=started_at,
        duration_s=duration_s,
        baseline=FREE,
        candidate=CONSTRAINED,
        config={
            "examples": run.config.examples or len(load_examples()),
            "free_examples": run.config.free_examples,
            "max_tokens": run.config.max_tokens or "the version's",
            "model": "SmolLM2-135M-Instruct (CPU Triton repository, greedy)",
        },
        environment=env,
        measurements=measurements,
        comparisons=comparisons,
        notes=notes,
    )


def report(run: Run, result: BenchmarkResult) -> str:
    figures = summary(run)
    rows = [
        [
            variant,
            f"{f['schema_valid']}/{f['generations']} ({f['schema_valid_rate']:.0%})",
            str(f["repairs_needed"]),
            ", ".join(f"{k} {v}" for k, v in sorted(f["finish_reasons"].items())),
            f"{f['tokens_per_s']:.1f}",
            f"{f['ttft_ms_p50']:.0f}",
        ]
        for variant, f in figures.items()
    ]
    lines = [
        f"{NAME}: extract-invoice on SmolLM2 (CPU), one stream, greedy; "
        f"{run_subtitle(result.started_at, result.environment)}",
        "",
        format_table(
            ["variant", "schema-valid", "repairs", "finish", "tokens/s", "TTFT p50 ms"], rows
        ),
    ]
    if FREE in figures:
        paired = len(run.of(FREE))
        saved = repairs_saved(run)
        ratios = paired_speed_ratios(run)
        lines += [
            "",
            f"repairs saved on the {paired} examples run both ways: {saved}",
            f"tokens/s constrained / free, per example: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)",
        ]
    lines.append("")
    lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in targets(figures)]
    lines += starved_lines(result.environment)
    return "\n".join(lines)


def plot(path: Path, run: Run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = summary(run)
    variants = list(figures)
    fig, (valid_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 4))
    valid_ax.bar(
        variants,
        [figures[v]["schema_valid_rate"] * 100 for v in variants],
        color=["#bbb", "#4a7"][: len(variants)],
    )
    valid_ax.set_ylabel("schema-valid outputs (%)")
    valid_ax.set_ylim(0, 105)
    valid_ax.set_title("extract-invoice: schema-valid rate")
    for variant in variants:
        speeds = [o.tokens_per_s for o in run.of(variant)]
        speed_ax.scatter([variant] * len(speeds), speeds, alpha=0.6)
    speed_ax.set_ylabel("output tokens/s (one stream)")
    speed_ax.set_title("cost of the mask")
    fig.suptitle("SmolLM2-135M on CPU, with and without constrained decoding")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    parser.add_argument("--examples", type=int, default=0, help="examples to run (0: all)")
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="override the version's max_tokens"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else StructuredConfig()
    config = StructuredConfig(
        examples=args.examples or config.examples,
        free_examples=config.free_examples,
        max_tokens=args.max_tokens,
    )
    progress = Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    env = environment()
    run_dir = args.out / f"{NAME}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = asyncio.run(run_structured(config, progress, run_dir))
    except ModelsMissingError as error:
        progress.close()
        print(f"{NAME}: {error} (run scripts/setup models)", file=sys.stderr)
        return 1
    progress.close()
    result = build_result(run, started_at, time.monotonic() - started, with_load_at_end(env))
    json_path, png_path = write_outputs(result, args.out, lambda path: plot(path, run))
    print(report(run, result))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}")
    return 0 if all(ok for ok, _ in targets(summary(run))) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
