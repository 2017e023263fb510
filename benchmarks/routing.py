"""`scripts/bench routing`: what each routing policy buys, in money, quality and latency, on the
sample evaluation datasets and on one that suits a completion-style base model.

The platform runs as `genai serve` (every service, Triton launched by it) with the shipped
catalog: SmolLM2-135M-Instruct and Gemma 3 270M (base, text prompts only) when both are there;
until Gemma is served, SmolLM2 beside the zero-compute model `zero` made routable (`dev` pair,
said in the report). Then:

1. prices: each model's CPU-seconds per input and per output token, measured on Triton's
   process group through InferenceService (`benchmarks.pricing`), and the catalog prices they
   imply at `DOLLARS_PER_CPU_HOUR`, beside the catalog's own;
2. learning: an evaluation run of each dataset on each model that can take its prompt (chat
   prompts need `chat`, text prompts `completion`), through EvaluationService: the reports the
   quality-floor policy reads (each finished run refreshes the router's scores at once: they
   share the process);
3. policies: every example of every dataset through GatewayService.Complete, one at a time,
   under each policy: `always-largest` and `always-cheapest` pin the model (most parameters;
   lowest catalog price) among those that can take the prompt, `cost` and `quality-floor` ask
   the router (the latter with `min_quality_score` = `--floor` on the dataset's reports). The
   router's own decision for each is recorded with its reasons. Every policy sees the engines'
   prefix caches warmed alike: the learning phase sent every example to every model first.

Reported per dataset and policy and over all datasets: total cost at catalog prices, the mean
of the dataset's quality scorer with its 95% interval (Wilson for pass/fail scorers, as
`genai eval` reports), p50 latency and the models that served; as a table and a PNG.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import yaml
from genai.common.v1 import routing_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.router.v1 import router_service_pb2, router_service_pb2_grpc
from google.protobuf import json_format

from benchmarks.cli import ROOT, benchmark_parser, shown, write_outputs
from benchmarks.pricing import DOLLARS_PER_CPU_HOUR, CpuCost, Probe, cpu_cost
from benchmarks.processes import development_key, genai_serve, group_cpu_seconds
from benchmarks.stats import (
    BenchmarkResult,
    LatencySummary,
    Measurement,
    Progress,
    environment,
    format_table,
    run_subtitle,
    starved_lines,
    with_load_at_end,
)

if TYPE_CHECKING:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
else:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub
    RouterStub = router_service_pb2_grpc.RouterServiceStub

NAME: Final = "routing"
DESCRIPTION: Final = (
    "total cost, mean score (95% interval) and p50 latency of always-largest, always-cheapest, "
    "cost and quality-floor routing on the evaluation datasets"
)
EVALS: Final = ROOT / "prompts" / "evals"
PROMPTS: Final = ROOT / "prompts"
DATASETS: Final = ("chat-basics", "extract-invoice", "complete-facts")
"""The sample evaluation datasets, and the one for a completion-style base model."""
POLICIES: Final = ("always-largest", "always-cheapest", "cost", "quality-floor")
SMOLLM2: Final = "smollm2-135m-instruct"
GEMMA: Final = "gemma3-270m"
ZERO: Final = "zero"
PARAMETERS: Final = {GEMMA: 268_000_000, SMOLLM2: 135_000_000, ZERO: 0}
"""Model sizes, for `always-largest`."""
CAPABILITIES: Final = {
    "chat": routing_pb2.CAPABILITY_CHAT,
    "completion": routing_pb2.CAPABILITY_COMPLETION,
    "json_output": routing_pb2.CAPABILITY_JSON_OUTPUT,
    "streaming": routing_pb2.CAPABILITY_STREAMING,
    "embeddings": routing_pb2.CAPABILITY_EMBEDDINGS,
}
CALL_DEADLINE_S: Final = 600.0
START_TIMEOUT_S: Final = 600.0
SHORT_PROMPT: Final = "Count from one to one hundred: one, two, three,"
LONG_PROMPT: Final = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)


@dataclass(frozen=True)
class RoutingConfig:
    examples: int = 0
    """Examples per dataset (0: all)."""
    floor: float = 0.5
    """`min_quality_score` of the quality-floor policy."""
    price_repeats: int = 3
    """Requests per price probe (medians are used)."""
    price_tokens: int = 64
    """max_tokens of the decode probe."""
    max_tokens: int = 0
    """Caps every sample prompt's `max_tokens` (0: the prompts' own), for quick runs: the
    platform then serves copies of the sample prompts with the cap."""


QUICK: Final = RoutingConfig(examples=2, price_repeats=1, price_tokens=16, max_tokens=16)


# ------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class Dataset:
    """One evaluation dataset with its run file's scorers and its prompt file."""

    name: str
    prompt: str
    run: evaluation_pb2.EvaluationRun
    examples: tuple[Mapping[str, Any], ...]
    text_prompt: bool
    """A text (completion) prompt rather than a chat prompt."""
    required: tuple[str, ...]
    """Capabilities the prompt's own routing requires (`json_output`, ...)."""
    output_schema: Mapping[str, Any] | None

    @property
    def quality_scorer(self) -> str:
        """The run's first quality scorer (what `genai eval` gates and the router reads)."""
        return next(
            s.name for s in self.run.scorers if s.WhichOneof("kind") not in ("latency", "cost")
        )

    @property
    def needs(self) -> frozenset[str]:
        """Capabilities a model needs to take the prompt."""
        return frozenset({"completion" if self.text_prompt else "chat", *self.required})


def load_dataset(name: str, limit: int = 0) -> Dataset:
    """The dataset `prompts/evals/NAME.jsonl` with its run file and prompt file."""
    document = yaml.safe_load((EVALS / f"{name}.run.yaml").read_text()) or {}
    run = json_format.ParseDict(document, evaluation_pb2.EvaluationRun())
    rows = [
        json.loads(line)
        for line in (EVALS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    prompt = yaml.safe_load((PROMPTS / f"{run.prompt}.yaml").read_text()) or {}
    routing = prompt.get("routing") or {}
    return Dataset(
        name=name,
        prompt=run.prompt,
        run=run,
        examples=tuple(rows[:limit] if limit else rows),
        text_prompt="text" in prompt or "text_template" in prompt,
        required=tuple(str(c) for c in routing.get("required_capabilities", [])),
        output_schema=prompt.get("output_schema"),
    )


def example_proto(row: Mapping[str, Any]) -> evaluation_pb2.Example:
    example = evaluation_pb2.Example(reference=row.get("reference", ""), tags=row.get("tags", {}))
    example.inputs.update(row["inputs"])
    return example


# -------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class CatalogModel:
    name: str
    capabilities: frozenset[str]
    input_price: Decimal
    output_price: Decimal

    @property
    def price(self) -> Decimal:
        """What `always-cheapest` compares: input plus output price per million tokens."""
        return self.input_price + self.output_price


def shipped_catalog() -> dict[str, Any]:
    from services.router.config import DEFAULT_CATALOG

    document: dict[str, Any] = yaml.safe_load(DEFAULT_CATALOG.read_text())
    return document


def model_pair() -> tuple[str, tuple[str, str]]:
    """`real` and (SmolLM2, Gemma) when the shipped catalog and InferenceService both have
    Gemma; else `dev` and (SmolLM2, zero)."""
    from services.inference.config import InferenceSettings

    in_catalog = {m["name"] for m in shipped_catalog().get("models", [])}
    served = {m.name for m in InferenceSettings().models}
    if GEMMA in in_catalog and GEMMA in served:
        return "real", (SMOLLM2, GEMMA)
    return "dev", (SMOLLM2, ZERO)


def dev_catalog() -> str:
    """The shipped catalog's SmolLM2 and `zero` entries, both routable and taking text
    prompts too (SmolLM2 continues raw text; `zero` answers anything), for developing this
    benchmark before Gemma is served."""
    document = shipped_catalog()
    models = []
    for entry in document["models"]:
        if entry["name"] not in (SMOLLM2, ZERO):
            continue
        entry = dict(entry)
        entry["capabilities"] = sorted({*entry.get("capabilities", []), "completion"})
        entry["pinned_only"] = False
        entry["weight"] = 1
        models.append(entry)
    return yaml.safe_dump({"currency": document.get("currency", "USD"), "models": models})


def _decimal(money: Any) -> Decimal:
    return Decimal(money.units) + Decimal(money.nanos) / Decimal(1_000_000_000)


# ---------------------------------------------------------------------------------- run


@dataclass
class Generation:
    """One example under one policy."""

    dataset: str
    policy: str
    example: int
    model: str
    score: float | None
    """The dataset's quality score (None: unscored or failed)."""
    cost: Decimal
    latency_s: float
    error: str = ""
    output: str = ""
    """The output's first 200 characters (kept in the JSON, to see what was scored)."""


@dataclass
class ModelReport:
    """What the learning phase's evaluation of one model on one dataset found."""

    dataset: str
    model: str
    report_id: str
    scorer: str
    mean: float
    interval: tuple[float, float] | None
    count: int
    cost: Decimal


@dataclass
class RoutingRun:
    config: RoutingConfig
    mode: str
    models: tuple[str, ...]
    catalog: dict[str, CatalogModel] = field(default_factory=dict)
    costs: dict[str, CpuCost] = field(default_factory=dict)
    price_errors: dict[str, str] = field(default_factory=dict)
    reports: list[ModelReport] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    decisions: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(dataset, policy) -> the router's decision: fallback (if any) and each candidate's
    reason, for the policies that ask the router."""
    failed_evaluations: dict[tuple[str, str], str] = field(default_factory=dict)
    """(dataset, model) -> why its evaluation run failed (it left no report)."""
    pinned: dict[tuple[str, str], str] = field(default_factory=dict)
    """(dataset, policy) -> the model a pinning policy chose."""
    currency: str = "USD"

    def of(self, dataset: str | None, policy: str) -> list[Generation]:
        return [
            g
            for g in self.generations
            if g.policy == policy and (dataset is None or g.dataset == dataset)
        ]


def eligible(dataset: Dataset, run: RoutingRun) -> list[str]:
    """The benchmark's models that can take the dataset's prompt, in catalog order."""
    return [
        m for m in run.models if m in run.catalog and dataset.needs <= run.catalog[m].capabilities
    ]


def pinned_model(policy: str, dataset: Dataset, run: RoutingRun) -> str:
    models = eligible(dataset, run)
    if not models:
        return ""
    if policy == "always-largest":
        return max(models, key=lambda m: (PARAMETERS.get(m, 0), m))
    return min(models, key=lambda m: (run.catalog[m].price, m))


def preferences(
    policy: str, dataset: Dataset, run: RoutingRun
) -> routing_pb2.RoutingPreferences | None:
    """The request's routing preferences under `policy` (None: nothing can take it)."""
    if policy in ("always-largest", "always-cheapest"):
        model = pinned_model(policy, dataset, run)
        return routing_pb2.RoutingPreferences(model=model) if model else None
    if policy == "cost":
        return routing_pb2.RoutingPreferences(policy=routing_pb2.ROUTING_POLICY_COST)
    return routing_pb2.RoutingPreferences(
        policy=routing_pb2.ROUTING_POLICY_QUALITY_FLOOR,
        min_quality_score=run.config.floor,
        quality_dataset=dataset.name,
        quality_scorer=dataset.quality_scorer,
    )


async def run_routing(config: RoutingConfig, progress: Progress, run_dir: Path) -> RoutingRun:
    mode, models = model_pair()
    run = RoutingRun(config=config, mode=mode, models=models)
    datasets = [load_dataset(name, config.examples) for name in DATASETS]
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as folder:
        await _serve_and_measure(Path(folder), datasets, run, progress, run_dir)
    return run


async def _serve_and_measure(
    data: Path,
    datasets: Sequence[Dataset],
    run: RoutingRun,
    progress: Progress,
    run_dir: Path,
) -> None:
    """`genai serve` with its stores in `data` (a fresh folder: every run starts empty), then
    the measurements."""
    env = {
        "GENAI_AUTH__MODE": "api_key",
        "GENAI_SERVER__GRACE_SECONDS": "1",
        "XDG_DATA_HOME": str(data),
        "GENAI_GATEWAY__QUOTA__BACKEND": "memory",
        "GENAI_INFERENCE__TRITON__LOG_FILE": str(run_dir / "triton.log"),
    }
    if run.mode == "dev":
        catalog = data / "catalog.yaml"
        catalog.write_text(dev_catalog())
        env["GENAI_ROUTER__CATALOG_FILE"] = str(catalog)
    progress.stage(
        f"starting the platform (genai serve, every service; models {', '.join(run.models)})"
    )
    arguments: list[str] = []
    if run.config.max_tokens:
        arguments = ["--prompts", str(capped_prompts(data / "prompts", run.config.max_tokens))]
    async with genai_serve(
        [], env, log_file=run_dir / "genai.log", start_timeout=START_TIMEOUT_S, arguments=arguments
    ) as server:
        from services.common.clients import api_key_metadata, create_channel

        key = await development_key(server)
        channel = create_channel(server.address, metadata=api_key_metadata(key))
        try:
            await _measure(channel, server.process.pid, datasets, run, progress)
        finally:
            await channel.close(None)


async def _measure(
    channel: grpc.aio.Channel,
    serve_pid: int | None,
    datasets: Sequence[Dataset],
    run: RoutingRun,
    progress: Progress,
) -> None:
    router: RouterStub = router_service_pb2_grpc.RouterServiceStub(channel)
    listed = await router.ListModels(router_service_pb2.ListModelsRequest(), timeout=30)
    for entry in listed.models:
        run.currency = entry.input_price_per_million_tokens.currency_code or run.currency
        run.catalog[entry.name] = CatalogModel(
            name=entry.name,
            capabilities=frozenset(
                routing_pb2.Capability.Name(c).removeprefix("CAPABILITY_").lower()
                for c in entry.capabilities
            ),
            input_price=_decimal(entry.input_price_per_million_tokens),
            output_price=_decimal(entry.output_price_per_million_tokens),
        )
    missing = [m for m in run.models if m not in run.catalog]
    if missing:
        raise RuntimeError(f"the router's catalog lacks {missing}")

    triton = triton_group(serve_pid) if serve_pid is not None else None
    inference: InferenceStub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    for model in run.models:
        progress.stage(f"prices: CPU per token of {model}")
        if triton is None:
            run.price_errors[model] = "Triton's process was not found"
            continue
        try:
            run.costs[model] = await measure_cpu_cost(inference, model, triton, run.config)
        except (ValueError, grpc.aio.AioRpcError) as error:
            run.price_errors[model] = str(error)[:300]

    evaluation: EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
    for dataset in datasets:
        await evaluation.CreateDataset(
            evaluation_service_pb2.CreateDatasetRequest(
                dataset=evaluation_pb2.Dataset(name=dataset.name, prompt=dataset.prompt)
            ),
            timeout=60,
        )
        await evaluation.AddExamples(
            evaluation_service_pb2.AddExamplesRequest(
                dataset=dataset.name, examples=[example_proto(r) for r in dataset.examples]
            ),
            timeout=60,
        )
    for dataset in datasets:
        for model in eligible(dataset, run):
            progress.stage(f"learning: evaluation of {dataset.name} on {model}")
            try:
                run.reports.append(await evaluate(evaluation, dataset, model, progress))
            except grpc.aio.AioRpcError as error:  # no report: quality-floor falls back
                run.failed_evaluations[(dataset.name, model)] = (
                    f"{error.code().name}: {error.details()}"[:300]
                )

    gateway: GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    for dataset in datasets:
        scorers = local_scorers(dataset)
        for policy in POLICIES:
            progress.stage(f"policies: {dataset.name} under {policy}")
            wanted = preferences(policy, dataset, run)
            if wanted is None:
                continue
            if wanted.model:
                run.pinned[(dataset.name, policy)] = wanted.model
            else:
                run.decisions[(dataset.name, policy)] = await decision_reasons(
                    router, dataset, wanted
                )
            progress.step("examples", len(dataset.examples))
            for index, row in enumerate(dataset.examples):
                run.generations.append(
                    await generate(gateway, dataset, policy, index, row, wanted, scorers)
                )
                progress.advance()


def capped_prompts(folder: Path, max_tokens: int) -> Path:
    """Copies of the sample prompt files in `folder`, each asking for at most `max_tokens`."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(PROMPTS.glob("*.yaml")):
        document = yaml.safe_load(path.read_text()) or {}
        parameters = dict(document.get("parameters") or {})
        parameters["max_tokens"] = min(int(parameters.get("max_tokens", max_tokens)), max_tokens)
        document["parameters"] = parameters
        (folder / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


def triton_group(serve_pid: int, proc: Path = Path("/proc")) -> int | None:
    """The process group of the Triton that `genai serve` (`serve_pid`) launched: Triton runs
    in a session of its own, so its pid is its group's id."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rpartition(")")[2].split()
        if command.startswith("tritonserver") and len(fields) > 1 and int(fields[1]) == serve_pid:
            return int(entry.name)
    return None


async def measure_cpu_cost(
    stub: InferenceStub, model: str, triton_pgid: int, config: RoutingConfig
) -> CpuCost:
    """The model's CPU-seconds per input and output token (see `benchmarks.pricing`)."""

    sent = iter(range(1, 1_000_000))

    async def probe(text: str, max_tokens: int) -> Probe:
        # A fresh first word: the engine's prefix cache (KV reuse) must not serve the prompt.
        request = inference_service_pb2.GenerateStreamRequest(
            model=model, text=f"Note {next(sent)}. {text}"
        )
        request.parameters.max_tokens = max_tokens
        request.parameters.temperature = 0.0
        before = group_cpu_seconds(triton_pgid)
        usage = None
        async for response in stub.GenerateStream(request, timeout=CALL_DEADLINE_S):
            if response.WhichOneof("event") == "final":
                usage = response.final.usage
        after = group_cpu_seconds(triton_pgid)
        if usage is None or before is None or after is None:
            raise ValueError("no usage or CPU reading")
        return Probe(usage.input_tokens, usage.output_tokens, after - before)

    await probe(SHORT_PROMPT, 2)  # the first request pays for lazy initialisation
    short_one, short_many, long_one = [], [], []
    for _ in range(config.price_repeats):
        short_one.append(await probe(SHORT_PROMPT, 1))
        short_many.append(await probe(SHORT_PROMPT, config.price_tokens))
        long_one.append(await probe(LONG_PROMPT, 1))
    return cpu_cost(short_one, short_many, long_one)


async def evaluate(
    stub: EvaluationStub, dataset: Dataset, model: str, progress: Progress
) -> ModelReport:
    run = evaluation_pb2.EvaluationRun()
    run.CopyFrom(dataset.run)
    run.model = model
    report: evaluation_pb2.EvaluationReport | None = None
    progress.step("examples", len(dataset.examples))
    async for event in stub.StartEvaluationRun(
        evaluation_service_pb2.StartEvaluationRunRequest(run=run), timeout=CALL_DEADLINE_S
    ):
        kind = event.WhichOneof("event")
        if kind == "result":
            progress.advance()
        elif kind == "report":
            report = event.report
    if report is None:
        raise RuntimeError(f"the evaluation of {dataset.name} on {model} sent no report")
    summary = next(s for s in report.summaries if s.scorer == dataset.quality_scorer)
    return ModelReport(
        dataset=dataset.name,
        model=model,
        report_id=report.id,
        scorer=summary.scorer,
        mean=summary.mean,
        interval=(summary.mean_interval.lower, summary.mean_interval.upper)
        if summary.HasField("mean_interval")
        else None,
        count=summary.count,
        cost=_decimal(report.cost),
    )


async def decision_reasons(
    router: RouterStub, dataset: Dataset, wanted: routing_pb2.RoutingPreferences
) -> list[str]:
    """What the router answers the gateway for this dataset's prompt and preferences: the
    fallback (if any) and each candidate's model and reason."""
    merged = routing_pb2.RoutingPreferences()
    merged.CopyFrom(wanted)
    for name in sorted(dataset.needs):
        capability = CAPABILITIES[name]
        if capability not in merged.required_capabilities:
            merged.required_capabilities.append(capability)
    try:
        decision = (
            await router.Route(
                router_service_pb2.RouteRequest(
                    prompt=dataset.prompt,
                    input_tokens=100,
                    max_output_tokens=32,
                    preferences=merged,
                ),
                timeout=30,
            )
        ).decision
    except grpc.aio.AioRpcError as error:
        return [f"Route failed: {error.code().name}: {error.details()}"]
    first = decision.candidates[0]
    await router.ReportOutcome(  # nothing was sent: the decision is not left in flight
        router_service_pb2.ReportOutcomeRequest(
            decision_id=decision.decision_id,
            model=first.model,
            backend_id=first.backend.id,
            result=router_service_pb2.ATTEMPT_RESULT_CANCELLED,
        ),
        timeout=30,
    )
    lines = [f"fallback: {decision.fallback}"] if decision.fallback else []
    seen: set[str] = set()
    for candidate in decision.candidates:
        if candidate.model not in seen:
            seen.add(candidate.model)
            lines.append(f"{candidate.model}: {candidate.reason}")
    lines += [f"rejected {r.model}: {r.reason}" for r in decision.rejected]
    return lines


def local_scorers(dataset: Dataset) -> list[Any]:
    """The dataset's quality scorer, as EvaluationService builds it."""
    from services.evaluation.core.scorers import build_scorer
    from services.evaluation.servicer import scorer_spec

    spec = next(s for s in dataset.run.scorers if s.name == dataset.quality_scorer)
    return [build_scorer(scorer_spec(spec), output_schema=dataset.output_schema)]


async def generate(
    stub: GatewayStub,
    dataset: Dataset,
    policy: str,
    index: int,
    row: Mapping[str, Any],
    wanted: routing_pb2.RoutingPreferences,
    scorers: Sequence[Any],
) -> Generation:
    from services.evaluation.core.model import Example
    from services.evaluation.core.scorers import GenerationOutput, score_output

    request = gateway_service_pb2.CompleteRequest(prompt=dataset.prompt, routing=wanted)
    request.variables.update(row["inputs"])
    sent = time.perf_counter()
    try:
        response = await stub.Complete(request, timeout=CALL_DEADLINE_S)
    except grpc.aio.AioRpcError as error:
        return Generation(
            dataset.name,
            policy,
            index,
            "",
            None,
            Decimal(0),
            time.perf_counter() - sent,
            error=f"{error.code().name}: {error.details()}",
        )
    latency = time.perf_counter() - sent
    metadata = response.metadata
    parsed = (
        json_format.MessageToDict(metadata.output_json)
        if metadata.HasField("output_json")
        else None
    )
    example = Example(id=str(index), inputs=row["inputs"], reference=row.get("reference", ""))
    (score,) = await score_output(
        scorers, example, GenerationOutput(text=response.text, parsed=parsed)
    )
    return Generation(
        dataset.name,
        policy,
        index,
        metadata.model,
        score.value if score.scored else None,
        _decimal(metadata.cost),
        latency,
        output=response.text[:200],
    )


# ---------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class PolicySummary:
    n: int
    failed: int
    cost: Decimal
    mean: float
    interval: tuple[float, float] | None
    p50_latency_s: float
    models: Mapping[str, int]


def summarize(generations: Sequence[Generation]) -> PolicySummary:
    """Totals of one policy's generations: cost, the mean score with its 95% interval over
    examples (Wilson for pass/fail scores, else Student's t in [0, 1], as evaluation reports
    compute it), p50 latency and which models served."""
    from services.evaluation.core.model import ScorerKind
    from services.evaluation.core.reports import mean_interval_of

    scored = {f"{g.dataset}/{g.example}": [g.score] for g in generations if g.score is not None}
    values = [v[0] for v in scored.values()]
    interval = mean_interval_of(ScorerKind.CONTAINS, scored) if scored else None
    latencies = sorted(g.latency_s for g in generations if not g.error)
    return PolicySummary(
        n=len(generations),
        failed=sum(1 for g in generations if g.error),
        cost=sum((g.cost for g in generations), Decimal(0)),
        mean=math.fsum(values) / len(values) if values else math.nan,
        interval=(interval.lower, interval.upper)
        if interval is not None and interval.defined
        else None,
        p50_latency_s=statistics.median(latencies) if latencies else math.nan,
        models=dict(Counter(g.model or "(failed)" for g in generations)),
    )


def _interval_text(summary: PolicySummary) -> str:
    if math.isnan(summary.mean):
        return "n/a"
    if summary.interval is None:
        return f"{summary.mean:.3f}"
    return f"{summary.mean:.3f} [{summary.interval[0]:.3f}, {summary.interval[1]:.3f}]"


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount:.6f} {currency}"


def rows(run: RoutingRun) -> list[tuple[str, str, PolicySummary]]:
    found = []
    for dataset in [*DATASETS, None]:
        for policy in POLICIES:
            generations = run.of(dataset, policy)
            if generations:
                found.append((dataset or "all", policy, summarize(generations)))
    return found


def price_lines(run: RoutingRun) -> list[str]:
    lines = [
        f"prices from measured CPU per token (Triton's processes, one request at a time, at "
        f"{DOLLARS_PER_CPU_HOUR} {run.currency} per CPU-hour), per million tokens:"
    ]
    table = []
    for model in run.models:
        catalog = run.catalog.get(model)
        listed = f"{catalog.input_price} / {catalog.output_price}" if catalog is not None else "n/a"
        cost = run.costs.get(model)
        if cost is None:
            table.append([model, "n/a", "n/a", "n/a", listed])
            continue
        input_price, output_price = cost.prices()
        table.append(
            [
                model,
                f"{cost.input_cpu_s_per_token * 1000:.2f}",
                f"{cost.output_cpu_s_per_token * 1000:.1f}",
                f"{input_price} / {output_price}",
                listed,
            ]
        )
    lines.append(
        format_table(
            ["model", "CPU ms/input tok", "CPU ms/output tok", "measured in/out", "catalog in/out"],
            table,
        )
    )
    lines += [f"{model}: price not measured: {why}" for model, why in run.price_errors.items()]
    return lines


def report(run: RoutingRun, result: BenchmarkResult) -> str:
    pair = ", ".join(run.models)
    lines = [
        f"{NAME}: {len(DATASETS)} datasets x {len(POLICIES)} policies on {pair} "
        f"({'real models' if run.mode == 'real' else 'dev pair: Gemma 3 270M is not served yet'}"
        f"); {run_subtitle(result.started_at, result.environment)}",
        *(
            [
                f"every prompt's max_tokens capped at {run.config.max_tokens} (a check that the "
                "benchmark works: JSON outputs are cut and fail, scores are not the models')"
            ]
            if run.config.max_tokens
            else []
        ),
        "",
        *price_lines(run),
        "",
        f"learning: evaluation reports per model (what quality-floor reads, floor "
        f"{run.config.floor:g}):",
        format_table(
            ["dataset", "model", "report", "scorer", "n", "mean [95% CI]", "cost"],
            [
                [
                    r.dataset,
                    r.model,
                    r.report_id,
                    r.scorer,
                    str(r.count),
                    f"{r.mean:.3f}"
                    + (f" [{r.interval[0]:.3f}, {r.interval[1]:.3f}]" if r.interval else ""),
                    _money(r.cost, run.currency),
                ]
                for r in run.reports
            ],
        ),
        *[
            f"{dataset} on {model}: the evaluation failed, no report: {why}"
            for (dataset, model), why in sorted(run.failed_evaluations.items())
        ],
        "",
        "policies (every example through the gateway, one at a time):",
        format_table(
            [
                "dataset",
                "policy",
                "n",
                "total cost",
                "mean score [95% CI]",
                "p50 latency",
                "models",
            ],
            [
                [
                    dataset,
                    policy,
                    str(s.n) + (f" ({s.failed} failed)" if s.failed else ""),
                    _money(s.cost, run.currency),
                    _interval_text(s),
                    _ms(s.p50_latency_s),
                    ", ".join(f"{m} {c}" for m, c in sorted(s.models.items())),
                ]
                for dataset, policy, s in rows(run)
            ],
        ),
        "",
        "the router's decisions:",
    ]
    for (dataset, policy), reasons in sorted(run.decisions.items()):
        lines.append(f"  {dataset} / {policy}:")
        lines += [f"    {reason}" for reason in reasons]
    for (dataset, policy), model in sorted(run.pinned.items()):
        lines.append(f"  {dataset} / {policy}: pinned {model}")
    lines += ["", *findings(run)]
    lines += starved_lines(result.environment)
    return "\n".join(lines)


def findings(run: RoutingRun) -> list[str]:
    """What the run shows, in words: the cheapest policy, the best-scoring one, and what
    quality-floor cost and scored against each."""
    totals = {
        policy: summarize(run.of(None, policy)) for policy in POLICIES if run.of(None, policy)
    }
    if not totals:
        return ["no generations"]
    cheapest = min(totals, key=lambda p: (totals[p].cost, p))
    scored = {p: s for p, s in totals.items() if not math.isnan(s.mean)}
    lines = [
        f"cheapest over all datasets: {cheapest} ({_money(totals[cheapest].cost, run.currency)})"
    ]
    if scored:
        best = max(scored, key=lambda p: (scored[p].mean, p))
        lines.append(f"best mean score over all datasets: {best} ({_interval_text(scored[best])})")
    floor = totals.get("quality-floor")
    if floor is not None:
        for other in ("always-largest", "always-cheapest", "cost"):
            if other in totals:
                o = totals[other]
                ratio = f"{float(floor.cost / o.cost):.2f}x" if o.cost else "n/a (0 cost)"
                lines.append(
                    f"quality-floor vs {other}: cost {ratio}, mean score "
                    f"{floor.mean:.3f} vs {o.mean:.3f}, p50 latency "
                    f"{_ms(floor.p50_latency_s)} vs {_ms(o.p50_latency_s)}"
                )
    winners = Counter(g.model for g in run.generations if g.policy == "quality-floor" and g.model)
    if winners:
        lines.append(
            "quality-floor served: " + ", ".join(f"{m} {c}" for m, c in winners.most_common())
        )
    return lines


def build_result(
    run: RoutingRun, started_at: datetime, duration_s: float, env: Mapping[str, Any]
) -> BenchmarkResult:
    measurements = []
    for dataset, policy, s in rows(run):
        generations = [
            g for g in run.of(None if dataset == "all" else dataset, policy) if not g.error
        ]
        measurements.append(
            Measurement(
                scenario=dataset,
                variant=policy,
                concurrency=1,
                latency_metric="latency",
                latency_us=LatencySummary.of(g.latency_s * 1e6 for g in generations)
                if generations
                else None,
                rates={
                    "total_cost": float(s.cost),
                    "mean_score": s.mean,
                    "mean_score_lower": s.interval[0] if s.interval else math.nan,
                    "mean_score_upper": s.interval[1] if s.interval else math.nan,
                    "p50_latency_s": s.p50_latency_s,
                    "examples": float(s.n),
                    "failed": float(s.failed),
                },
                rounds=[
                    {
                        "example": float(g.example),
                        "score": g.score if g.score is not None else math.nan,
                        "cost": float(g.cost),
                        "latency_s": g.latency_s,
                    }
                    for g in run.of(None if dataset == "all" else dataset, policy)
                ],
            )
        )
    notes = [
        *price_lines(run),
        *[
            f"report {r.report_id}: {r.dataset} on {r.model}: {r.scorer} {r.mean:.3f}"
            for r in run.reports
        ],
        *[
            f"{dataset} / {policy}: {reason}"
            for (dataset, policy), reasons in sorted(run.decisions.items())
            for reason in reasons
        ],
        *[f"{d} / {p}: pinned {m}" for (d, p), m in sorted(run.pinned.items())],
        *[
            f"evaluation of {d} on {m} failed: {why}"
            for (d, m), why in sorted(run.failed_evaluations.items())
        ],
        *[
            f"{g.dataset} / {g.policy} example {g.example} failed: {g.error}"
            for g in run.generations
            if g.error
        ],
        *[
            f"{g.dataset} / {g.policy} example {g.example} on {g.model} scored {g.score}: "
            f"{g.output!r}"
            for g in run.generations
            if not g.error and g.example < 2
        ],
        *findings(run),
    ]
    return BenchmarkResult(
        benchmark=NAME,
        started_at=started_at,
        duration_s=duration_s,
        baseline="always-largest",
        candidate="quality-floor",
        config={
            "mode": run.mode,
            "models": list(run.models),
            "datasets": list(DATASETS),
            "policies": list(POLICIES),
            "examples_per_dataset": run.config.examples or "all",
            "floor": run.config.floor,
            "max_tokens": run.config.max_tokens or "the prompts' own",
            "dollars_per_cpu_hour": str(DOLLARS_PER_CPU_HOUR),
            "catalog": {
                m: {
                    "capabilities": sorted(c.capabilities),
                    "price_in": str(c.input_price),
                    "price_out": str(c.output_price),
                }
                for m, c in run.catalog.items()
                if m in run.models
            },
            "measured_prices": {
                m: {
                    "input_cpu_s_per_token": c.input_cpu_s_per_token,
                    "output_cpu_s_per_token": c.output_cpu_s_per_token,
                    "price_in": str(c.prices()[0]),
                    "price_out": str(c.prices()[1]),
                }
                for m, c in run.costs.items()
            },
        },
        environment=env,
        measurements=measurements,
        comparisons=[],
        notes=notes,
    )


def plot(path: Path, run: RoutingRun, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [d for d in [*DATASETS, "all"] if any(r[0] == d for r in rows(run))]
    table = {(d, p): s for d, p, s in rows(run)}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / len(POLICIES)
    for index, policy in enumerate(POLICIES):
        xs = [g + (index - (len(POLICIES) - 1) / 2) * width for g in range(len(groups))]
        present = [(x, table.get((g, policy))) for x, g in zip(xs, groups, strict=True)]
        color = colors[index % len(colors)]
        axes[0].bar(
            [x for x, s in present if s],
            [float(s.cost) for _, s in present if s],
            width,
            label=policy,
            color=color,
        )
        means = [(x, s) for x, s in present if s and not math.isnan(s.mean)]
        axes[1].bar(
            [x for x, _ in means], [s.mean for _, s in means], width, label=policy, color=color
        )
        for x, s in means:
            if s.interval is not None:
                axes[1].errorbar(
                    x,
                    s.mean,
                    yerr=[[s.mean - s.interval[0]], [s.interval[1] - s.mean]],
                    color="black",
                    capsize=3,
                    linewidth=1,
                )
        axes[2].bar(
            [x for x, s in present if s],
            [s.p50_latency_s * 1000 for _, s in present if s],
            width,
            label=policy,
            color=color,
        )
    titles = (
        f"total cost ({run.currency})",
        "mean score, 95% interval (Wilson for pass/fail)",
        "p50 latency (ms)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title, fontsize=11)
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].set_ylim(0, 1.05)
    axes[0].legend(fontsize=9)
    fig.suptitle(
        f"routing policies on {', '.join(run.models)} ({run.mode})\n{subtitle}", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    parser.add_argument("--examples", type=int, default=0, help="examples per dataset (0: all)")
    parser.add_argument(
        "--floor",
        type=float,
        default=RoutingConfig.floor,
        help=f"quality-floor's min_quality_score (default {RoutingConfig.floor})",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="cap every sample prompt's max_tokens (default: none; --quick: 16)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else RoutingConfig()
    config = RoutingConfig(
        examples=args.examples or base.examples,
        floor=args.floor,
        price_repeats=base.price_repeats,
        price_tokens=base.price_tokens,
        max_tokens=args.max_tokens if args.max_tokens is not None else base.max_tokens,
    )
    progress = Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    env = environment()
    run_dir = args.out / f"{NAME}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    run = asyncio.run(run_routing(config, progress, run_dir))
    progress.close()
    result = build_result(run, started_at, time.monotonic() - started, with_load_at_end(env))
    subtitle = run_subtitle(started_at, result.environment)
    json_path, png_path = write_outputs(result, args.out, lambda path: plot(path, run, subtitle))
    print(report(run, result))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}")
    failed = sum(1 for g in run.generations if g.error)
    return 0 if run.generations and failed < len(run.generations) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
