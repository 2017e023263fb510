"""`scripts/bench experiment`: SmolLM2-135M-Instruct against Gemma 3 270M as the two variants of
one text prompt, an A/B experiment run end to end through the gateway.

1. prompt `complete-ab`: the sample `complete` prompt (`prompts/complete.yaml`: raw text, greedy,
   32 tokens at most) in two versions that differ only in `routing.model`, one pinned to
   `smollm2-135m-instruct`, one to `gemma3-270m` (reused where the registry already has a
   version of that content: a second run adds nothing);
2. experiment `smollm2-vs-gemma3` on that prompt: one variant per version, weights 50/50, the
   user as the unit, a fixed salt (the same users land on the same variants every run), metrics
   `correct` (boolean, higher is better) and `latency_s` (numeric); started;
3. every example of `prompts/evals/complete-facts.jsonl` (16 factual sentences to continue)
   sent by `--units` distinct users each through `GatewayService.StreamComplete` with
   `experiment` set: ExperimentService assigns each user a variant, the gateway serves that
   variant's version (and so its model) and records the exposure;
4. per request, two `GatewayService.RecordFeedback` calls, which become the experiment's
   outcomes: `correct` (the example's reference appears in the output, case-insensitively: the
   `contains` scorer of `complete-facts.run.yaml`) and `latency_s` (the gateway's total time);
5. `ExperimentService.GetExperimentResults`: the table `genai experiments results` prints (per
   variant users and exposures; per metric n, mean with its 95% interval, difference to the
   control with its interval, p-value, always-valid p-value; the sample-ratio check) and the
   PNG it writes, beside the benchmark's JSON; then a per-example breakdown. The experiment is
   left running (on a platform given with `--target`, more requests can join it by hand;
   `genai experiments stop NAME` ends it).

By default it starts the platform itself (`genai serve`, every service, Triton with both models,
stores in a fresh temporary folder), as the other benchmarks do; `--target HOST:PORT` runs it
against a platform already serving (API key from `--api-key` or $GENAI_API_KEY, a tenant-admin
key: it creates a prompt and an experiment), after which `genai experiments results NAME` shows
the same results again.

At temperature 0 a model's continuation of an example is fixed, so the users who send the same
example to the same variant repeat one observation: the tests treat every user as independent,
so with several users per example their intervals are narrower and their p-values smaller than
the 16 distinct examples warrant. The report says how many distinct examples each model got
right, which is the sturdier comparison.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format

from benchmarks.cli import ROOT, benchmark_parser, shown, write_outputs
from benchmarks.processes import development_key, genai_serve
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
from services.experiment.core.model import MetricKind
from services.experiment.core.results import ExperimentResults
from services.experiment.core.statistics import TWO_PROPORTION_Z, WELCH_T, Comparison, Interval

if TYPE_CHECKING:
    ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceAsyncStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

NAME: Final = "experiment"
DESCRIPTION: Final = (
    "an A/B experiment through the gateway: SmolLM2 against Gemma 3 as two versions of one "
    "text prompt on complete-facts; the results table and plot of `genai experiments results`"
)
DATASET: Final = ROOT / "prompts" / "evals" / "complete-facts.jsonl"
BASE_PROMPT: Final = ROOT / "prompts" / "complete.yaml"
PROMPT: Final = "complete-ab"
EXPERIMENT: Final = "smollm2-vs-gemma3"
SMOLLM2: Final = "smollm2-135m-instruct"
GEMMA: Final = "gemma3-270m"
MODELS: Final = (SMOLLM2, GEMMA)
"""The variants' models, control first; each variant is named after its model."""
SALT: Final = "scripts-bench-experiment"
"""The assignment hash's salt: fixed, so every run splits the same users the same way."""
CORRECT: Final = "correct"
LATENCY: Final = "latency_s"
AUTHOR: Final = "scripts/bench experiment"
CALL_DEADLINE_S: Final = 300.0
START_TIMEOUT_S: Final = 600.0
EXPOSURE_PATIENCE_S: Final = 15.0
"""How long to wait for the gateway's background exposure records before reading results."""
WARM_UP_REQUESTS: Final = 2
"""Requests per model before the experiment starts (not part of it)."""
OUTPUT_CHARS: Final = 60
"""How much of each output the report and the JSON keep."""


@dataclass(frozen=True)
class ExperimentConfig:
    examples: int = 0
    """complete-facts examples to send (0: all 16)."""
    units: int = 3
    """Distinct users sending each example (each a unit of the experiment)."""
    max_tokens: int = 0
    """Overrides the prompt's max_tokens in both variants (0: the prompt's own, 32)."""
    concurrency: int = 1
    """Requests in flight at once."""


QUICK: Final = ExperimentConfig(examples=4, units=2, max_tokens=6)


# ------------------------------------------------------------------------------- pure parts


def is_correct(output: str, reference: str) -> bool:
    """Whether `output` names `reference`: the `contains` scorer of complete-facts.run.yaml
    (the reference as a substring, case-folded). An empty reference is never matched."""
    return bool(reference) and reference.casefold() in output.casefold()


def load_examples(path: Path = DATASET, limit: int = 0) -> list[dict[str, Any]]:
    """The dataset's rows (`inputs`, `reference`, `tags`), the first `limit` (0: all)."""
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return rows[:limit] if limit else rows


def unit_id(example: int, repeat: int) -> str:
    """The user who sends example `example` for the `repeat`-th time: `facts-EE-R`."""
    return f"facts-{example:02d}-{repeat}"


def planned_requests(examples: int, units: int) -> list[tuple[int, str]]:
    """(example index, user) of every request, round by round: each example once per round,
    so a run cut short still covers every example."""
    return [(e, unit_id(e, r)) for r in range(units) for e in range(examples)]


def pinned_version(base: prompt_pb2.PromptVersion, model: str) -> prompt_pb2.PromptVersion:
    """`base`'s content with `routing.model` pinned to `model` (and nothing else changed)."""
    version = prompt_pb2.PromptVersion()
    version.CopyFrom(base)
    version.routing.model = model
    version.author = AUTHOR
    version.commit_message = f"{base.prompt or 'complete'}, pinned to {model}"
    return version


def variant_name(model: str) -> str:
    """A variant's name: its model's catalog name (valid as a variant name)."""
    return model


def experiment_spec(
    name: str, prompt: str, versions: Mapping[str, int], max_tokens: int = 0
) -> experiment_pb2.Experiment:
    """The experiment: one variant per (model, prompt version) in `versions` order, equal
    weights, the first the control; by user, fixed salt; metrics correct and latency_s."""
    experiment = experiment_pb2.Experiment(
        name=name,
        description=(
            f"Which model serves the text prompt {prompt} better: "
            + " against ".join(versions)
            + " on complete-facts (scripts/bench experiment)"
        ),
        prompt=prompt,
        control_variant=variant_name(next(iter(versions))),
        holdout_share=0.0,
        salt=SALT,
        unit=experiment_pb2.ASSIGNMENT_UNIT_USER,
        metrics=[
            experiment_pb2.MetricSpec(
                name=CORRECT, kind=experiment_pb2.METRIC_KIND_BOOLEAN, higher_is_better=True
            ),
            experiment_pb2.MetricSpec(
                name=LATENCY, kind=experiment_pb2.METRIC_KIND_NUMERIC, higher_is_better=False
            ),
        ],
    )
    for model, version in versions.items():
        variant = experiment.variants.add(
            name=variant_name(model), weight=1.0, prompt_version=version
        )
        if max_tokens:
            variant.parameters.max_tokens = max_tokens
    return experiment


def experiment_name(base: str, taken: bool, now: datetime) -> str:
    """`base`, or `base-YYYYmmdd-HHMMSS` when the tenant already has an experiment `base`
    (names are unique and experiments are never deleted)."""
    return f"{base}-{now.astimezone(UTC):%Y%m%d-%H%M%S}" if taken else base


@dataclass
class Sent:
    """One request of the experiment."""

    example: int
    unit: str
    reference: str
    variant: str = ""
    model: str = ""
    prompt_version: int = 0
    request_id: str = ""
    output: str = ""
    correct: bool | None = None
    """None: the request failed (no outcome recorded)."""
    latency_s: float = math.nan
    """The gateway's total time (CompletionMetadata.total_duration)."""
    first_token_s: float = math.nan
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    error: str = ""
    feedback_error: str = ""


@dataclass(frozen=True)
class ModelExamples:
    """What one model did over the distinct examples it was sent."""

    model: str
    examples: int
    """Distinct examples it served at least once."""
    correct: int
    """Of those, the ones it got right every time it served them."""
    mixed: int
    """Of those, the ones it got right only sometimes (0 at temperature 0)."""


def by_example(sent: Sequence[Sent], models: Sequence[str]) -> list[ModelExamples]:
    """Per model, the distinct examples it served and got right: the comparison that does not
    count one greedy output several times."""
    found = []
    for model in models:
        outcomes: dict[int, list[bool]] = {}
        for s in sent:
            if s.model == model and s.correct is not None:
                outcomes.setdefault(s.example, []).append(s.correct)
        found.append(
            ModelExamples(
                model=model,
                examples=len(outcomes),
                correct=sum(1 for v in outcomes.values() if all(v)),
                mixed=sum(1 for v in outcomes.values() if any(v) and not all(v)),
            )
        )
    return found


def example_rows(
    sent: Sequence[Sent], examples: Sequence[Mapping[str, Any]], models: Sequence[str]
) -> list[list[str]]:
    """The per-example table: the text, the reference, per model `right/served` and the
    model's first output (or `-` where it served the example to no user)."""
    rows = []
    for index, row in enumerate(examples):
        cells = [_cut(str(row["inputs"]["text"]), 44), str(row.get("reference", ""))]
        outputs = []
        for model in models:
            mine = [s for s in sent if s.example == index and s.model == model]
            scored = [s for s in mine if s.correct is not None]
            cells.append(f"{sum(1 for s in scored if s.correct)}/{len(scored)}" if mine else "-")
            outputs.append(repr(_cut(mine[0].output, 36)) if scored else "-")
        rows.append(cells + outputs)
    return rows


TESTS: Final = {MetricKind.BOOLEAN: TWO_PROPORTION_Z, MetricKind.NUMERIC: WELCH_T}
"""The fixed-horizon test ExperimentService uses per metric kind (what its results name)."""


def with_undefined_comparisons(results: ExperimentResults) -> ExperimentResults:
    """`results` where each variant after the control has a comparison for every metric: an
    undefined one where the server sent none (too few outcomes on either side). Read back from
    the proto, a missing comparison is None, which the report's table shows as `(control)` and
    its plot refuses."""
    variants = [results.control]
    for variant in results.variants[1:]:
        metrics = tuple(
            metric
            if metric.comparison is not None
            else replace(
                metric,
                comparison=Comparison(
                    difference=0.0,
                    difference_interval=Interval(
                        0.0, 0.0, metric.mean_interval.confidence_level, defined=False
                    ),
                    p_value=1.0,
                    sequential_p_value=1.0,
                    test=TESTS.get(metric.kind, ""),
                    relative_lift=None,
                    statistic=math.nan,
                    degrees_of_freedom=None,
                    defined=False,
                    reason="too few outcomes to compare",
                ),
            )
            for metric in variant.metrics
        )
        variants.append(replace(variant, metrics=metrics))
    return replace(results, variants=tuple(variants))


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -------------------------------------------------------------------------------------- run


@dataclass
class ExperimentRun:
    config: ExperimentConfig
    name: str = EXPERIMENT
    target: str = ""
    """The platform's address when it was given (`--target`); empty: started here."""
    versions: dict[str, int] = field(default_factory=dict)
    """Model -> the prompt version pinned to it."""
    created_versions: list[int] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    results: ExperimentResults | None = None
    results_proto: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    """Time spent sending the requests and feedback."""


async def run_experiment(
    config: ExperimentConfig,
    progress: Progress,
    run_dir: Path,
    *,
    target: str = "",
    api_key: str = "",
) -> ExperimentRun:
    """The whole run, on the platform at `target` or on one started here."""
    from services.common.clients import api_key_metadata, create_channel

    run = ExperimentRun(config=config, target=target)
    run.examples = load_examples(limit=config.examples)
    if target:
        channel = create_channel(target, metadata=api_key_metadata(api_key))
        try:
            await _measure(channel, run, progress)
        finally:
            await channel.close(None)
        return run
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as folder:
        env = {
            "GENAI_AUTH__MODE": "api_key",
            "GENAI_SERVER__GRACE_SECONDS": "1",
            "XDG_DATA_HOME": folder,
            "GENAI_GATEWAY__QUOTA__BACKEND": "memory",
            "GENAI_INFERENCE__TRITON__LOG_FILE": str(run_dir / "triton.log"),
        }
        progress.stage(f"starting the platform (genai serve, every service; {', '.join(MODELS)})")
        async with genai_serve(
            [], env, log_file=run_dir / "genai.log", start_timeout=START_TIMEOUT_S
        ) as server:
            key = await development_key(server)
            channel = create_channel(server.address, metadata=api_key_metadata(key))
            try:
                await _measure(channel, run, progress)
            finally:
                await channel.close(None)
    return run


async def _measure(channel: grpc.aio.Channel, run: ExperimentRun, progress: Progress) -> None:
    prompts: PromptStub = prompt_service_pb2_grpc.PromptServiceStub(channel)
    experiments: ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceStub(channel)
    gateway: GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub(channel)

    progress.stage(f"prompt {PROMPT}: one version per model")
    await ensure_prompt_versions(prompts, run)

    progress.stage("warming up both models (outside the experiment)")
    await warm_up(gateway, run)

    progress.stage("creating and starting the experiment")
    run.name = experiment_name(
        EXPERIMENT, await _experiment_exists(experiments, EXPERIMENT), datetime.now(UTC)
    )
    await experiments.CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(
            experiment=experiment_spec(run.name, PROMPT, run.versions, run.config.max_tokens),
            start=True,
        ),
        timeout=60,
    )

    plan = planned_requests(len(run.examples), run.config.units)
    progress.stage(
        f"{len(plan)} requests ({len(run.examples)} examples x {run.config.units} users) "
        f"through StreamComplete, {run.config.concurrency} at a time, with feedback"
    )
    progress.step("requests", len(plan))
    run.sent = [
        Sent(example=e, unit=u, reference=str(run.examples[e].get("reference", "")))
        for e, u in plan
    ]
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    for item in run.sent:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            await send(gateway, run, item)
            await feedback(gateway, item)
            progress.advance()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(max(1, run.config.concurrency))))
    run.wall_s = time.monotonic() - started

    progress.stage("results")
    served = sum(1 for s in run.sent if not s.error)
    response = await _results_once_exposed(experiments, run.name, served)
    from services.experiment.cli import results_from_proto

    run.results = with_undefined_comparisons(results_from_proto(response.results, 0.95))
    run.results_proto = json_format.MessageToDict(response.results)


async def ensure_prompt_versions(stub: PromptStub, run: ExperimentRun) -> None:
    """Creates prompt `PROMPT` if missing and a version pinned to each model unless one of
    that content exists; points `production` at the control's when the prompt has none."""
    from services.prompt.files import load_prompt_file, version_hash

    base = load_prompt_file(BASE_PROMPT)
    try:
        prompt = (
            await stub.GetPrompt(prompt_service_pb2.GetPromptRequest(name=PROMPT), timeout=30)
        ).prompt
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        prompt = (
            await stub.CreatePrompt(
                prompt_service_pb2.CreatePromptRequest(
                    prompt=prompt_pb2.Prompt(
                        name=PROMPT,
                        description=(
                            "The sample `complete` prompt, one version per model: the variants "
                            f"of experiment {EXPERIMENT} (scripts/bench experiment)."
                        ),
                    )
                ),
                timeout=30,
            )
        ).prompt
    existing: dict[str, int] = {}
    token = ""
    while True:
        page = await stub.ListPromptVersions(
            prompt_service_pb2.ListPromptVersionsRequest(
                prompt=PROMPT, page_size=1000, page_token=token
            ),
            timeout=30,
        )
        for version in page.versions:
            existing.setdefault(version.content_hash, version.version)
        token = page.next_page_token
        if not token:
            break
    for model in MODELS:
        wanted = pinned_version(base.version, model)
        number = existing.get(version_hash(wanted))
        if number is None:
            created = await stub.CreatePromptVersion(
                prompt_service_pb2.CreatePromptVersionRequest(prompt=PROMPT, version=wanted),
                timeout=30,
            )
            number = created.version.version
            if created.created:
                run.created_versions.append(number)
        run.versions[model] = number
    if "production" not in prompt.labels:
        await stub.SetLabel(
            prompt_service_pb2.SetLabelRequest(
                prompt=PROMPT,
                label="production",
                version=run.versions[MODELS[0]],
                expected_version=0,
                reason=f"{AUTHOR}: the control's version",
            ),
            timeout=30,
        )


async def warm_up(stub: GatewayStub, run: ExperimentRun) -> None:
    """A few requests of each model's version, outside the experiment, so that no variant's
    latency carries a model's first-request costs (lazy initialisation, cold caches)."""
    for model in MODELS:
        for _ in range(WARM_UP_REQUESTS):
            request = gateway_service_pb2.StreamCompleteRequest(
                prompt=PROMPT, version=run.versions[model]
            )
            request.variables.update({"text": "Warm-up: one, two, three,"})
            request.parameters.max_tokens = 4
            request.tags["benchmark"] = f"{NAME}-warm-up"
            async for _ in stub.StreamComplete(request, timeout=CALL_DEADLINE_S):
                pass


async def _experiment_exists(stub: ExperimentStub, name: str) -> bool:
    try:
        await stub.GetExperiment(experiment_service_pb2.GetExperimentRequest(name=name), timeout=30)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


async def send(stub: GatewayStub, run: ExperimentRun, item: Sent) -> None:
    """One StreamComplete of the experiment for `item`'s user; fills in what served it."""
    request = gateway_service_pb2.StreamCompleteRequest(
        prompt=PROMPT, experiment=run.name, user_id=item.unit
    )
    request.variables.update(run.examples[item.example]["inputs"])
    request.tags["benchmark"] = NAME
    chunks: list[str] = []
    final: gateway_pb2.CompletionMetadata | None = None
    try:
        async for response in stub.StreamComplete(request, timeout=CALL_DEADLINE_S):
            kind = response.WhichOneof("event")
            if kind == "start":
                item.request_id = response.start.request_id
                item.variant = response.start.variant
                item.prompt_version = response.start.prompt_version
            elif kind == "delta":
                chunks.append(response.delta.text)
            elif kind == "final":
                final = response.final
    except grpc.aio.AioRpcError as error:
        item.error = f"{error.code().name}: {error.details()}"[:300]
        return
    if final is None:
        item.error = "the stream ended without a final message"
        return
    item.output = "".join(chunks)
    item.model = final.model
    item.variant = final.variant or item.variant
    item.request_id = final.request_id or item.request_id
    item.latency_s = final.total_duration.ToTimedelta().total_seconds()
    item.first_token_s = final.first_token_duration.ToTimedelta().total_seconds()
    item.output_tokens = final.usage.output_tokens
    item.cost = Decimal(final.cost.units) + Decimal(final.cost.nanos) / Decimal(1_000_000_000)
    item.correct = is_correct(item.output, item.reference)


async def feedback(stub: GatewayStub, item: Sent) -> None:
    """RecordFeedback of `item`'s outcomes (correct, latency_s); failures noted, not raised."""
    if item.correct is None:
        return
    try:
        await stub.RecordFeedback(
            gateway_service_pb2.RecordFeedbackRequest(
                request_id=item.request_id, metric=CORRECT, boolean_value=item.correct
            ),
            timeout=30,
        )
        await stub.RecordFeedback(
            gateway_service_pb2.RecordFeedbackRequest(
                request_id=item.request_id, metric=LATENCY, numeric_value=item.latency_s
            ),
            timeout=30,
        )
    except grpc.aio.AioRpcError as error:
        item.feedback_error = f"{error.code().name}: {error.details()}"[:300]


async def _results_once_exposed(
    stub: ExperimentStub, name: str, served: int
) -> experiment_service_pb2.GetExperimentResultsResponse:
    """The results once every served request's exposure is recorded (the gateway records them
    in the background), or after `EXPOSURE_PATIENCE_S` with what there is."""
    deadline = time.monotonic() + EXPOSURE_PATIENCE_S
    while True:
        response: experiment_service_pb2.GetExperimentResultsResponse = (
            await stub.GetExperimentResults(
                experiment_service_pb2.GetExperimentResultsRequest(
                    name=name, confidence_level=0.95
                ),
                timeout=60,
            )
        )
        exposures = sum(v.exposures for v in response.results.variants)
        if exposures >= served or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.5)


# ----------------------------------------------------------------------------------- report


def findings(run: ExperimentRun) -> list[str]:
    """What the run shows, in words."""
    lines = []
    failed = [s for s in run.sent if s.error]
    if failed:
        lines.append(f"{len(failed)} of {len(run.sent)} requests failed: {failed[0].error}")
    feedback_failed = [s for s in run.sent if s.feedback_error]
    if feedback_failed:
        lines.append(
            f"{len(feedback_failed)} feedback calls failed: {feedback_failed[0].feedback_error}"
        )
    results = run.results
    if results is not None and len(results.variants) > 1:
        control = results.control
        for variant in results.variants[1:]:
            for index, metric in enumerate(variant.metrics):
                base = control.metrics[index]
                comparison = metric.comparison
                if comparison is None or not comparison.defined:
                    lines.append(
                        f"{metric.metric}: {variant.variant} against {control.variant}: not "
                        "enough outcomes to compare"
                    )
                    continue
                rate = metric.metric == CORRECT
                diff = comparison.difference_interval
                unit = " pp" if rate else " s"
                scale = 100.0 if rate else 1.0
                interval = (
                    f" [{diff.lower * scale:+.1f}, {diff.upper * scale:+.1f}]{unit}"
                    if diff.defined
                    else ""
                )
                lines.append(
                    f"{metric.metric}: {variant.variant} {_mean(metric.mean, rate)} (n "
                    f"{metric.units}) against {control.variant} {_mean(base.mean, rate)} (n "
                    f"{base.units}): "
                    f"{comparison.difference * scale:+.1f}{unit}{interval}, p "
                    f"{comparison.p_value:.3g}, always-valid p {comparison.sequential_p_value:.3g}"
                )
        srm = results.sample_ratio
        lines.append(
            "sample ratio: "
            + (
                "MISMATCH (p < 0.001): do not trust these results"
                if srm.mismatch
                else f"ok (p {srm.p_value:.3g})"
            )
        )
    for found in by_example(run.sent, MODELS):
        lines.append(
            f"{found.model}: right on {found.correct} of the {found.examples} distinct examples "
            "it served" + (f" ({found.mixed} only sometimes)" if found.mixed else "")
        )
    return lines


def _mean(value: float, rate: bool) -> str:
    return f"{value:.1%}" if rate else f"{value:.2f} s"


def report(run: ExperimentRun, result: BenchmarkResult) -> str:
    from services.experiment.report import results_table

    versions = ", ".join(f"{m} v{v}" for m, v in run.versions.items())
    lines = [
        f"{NAME}: {' against '.join(MODELS)} as variants of prompt {PROMPT} ({versions}), "
        f"experiment {run.name}; {len(run.examples)} complete-facts examples x "
        f"{run.config.units} users = {len(run.sent)} requests through the gateway; "
        f"{run_subtitle(result.started_at, result.environment)}",
        *(
            [
                f"both variants capped at max_tokens {run.config.max_tokens} (a check that the "
                "benchmark works, not the models' scores)"
            ]
            if run.config.max_tokens
            else []
        ),
        "",
        "genai experiments results " + run.name + ":",
        results_table(run.results).rstrip() if run.results is not None else "(no results)",
        "",
        f"per example (users right/served per model, and each model's first output; "
        f"{run.wall_s:.0f} s for the requests):",
        format_table(
            ["example", "reference", *MODELS, *(f"{m} output" for m in MODELS)],
            example_rows(run.sent, run.examples, MODELS),
        ),
        "",
        *findings(run),
    ]
    if run.target:
        lines += [
            "",
            f"again: genai experiments results {run.name} --target {run.target} "
            f"--png {run.name}.png",
            f"the experiment is left running; to end it: genai experiments stop {run.name} "
            f"--target {run.target}",
        ]
    lines += starved_lines(result.environment)
    return "\n".join(lines)


def build_result(
    run: ExperimentRun, started_at: datetime, duration_s: float, env: Mapping[str, Any]
) -> BenchmarkResult:
    measurements = []
    for model in MODELS:
        mine = [s for s in run.sent if s.model == model or (s.error and s.variant == model)]
        ok = [s for s in mine if not s.error]
        correct = [s for s in ok if s.correct]
        measurements.append(
            Measurement(
                scenario="complete-facts",
                variant=variant_name(model),
                concurrency=run.config.concurrency,
                latency_metric="gateway total time",
                latency_us=LatencySummary.of(s.latency_s * 1e6 for s in ok) if ok else None,
                rates={
                    "requests": float(len(mine)),
                    "failed": float(len(mine) - len(ok)),
                    "correct_rate": len(correct) / len(ok) if ok else math.nan,
                    "mean_output_tokens": (
                        sum(s.output_tokens for s in ok) / len(ok) if ok else math.nan
                    ),
                    "total_cost": float(sum((s.cost for s in ok), Decimal(0))),
                },
                rounds=[
                    {
                        "example": float(s.example),
                        "correct": float(s.correct) if s.correct is not None else math.nan,
                        "latency_s": s.latency_s,
                        "first_token_s": s.first_token_s,
                        "output_tokens": float(s.output_tokens),
                    }
                    for s in mine
                ],
            )
        )
    notes = [
        *findings(run),
        *[
            f"{s.unit} (example {s.example}, {s.variant or '?'} on {s.model or '?'}): "
            + (f"failed: {s.error}" if s.error else f"{'right' if s.correct else 'wrong'}: ")
            + ("" if s.error else repr(s.output[:OUTPUT_CHARS]))
            for s in run.sent
        ],
    ]
    return BenchmarkResult(
        benchmark=NAME,
        started_at=started_at,
        duration_s=duration_s,
        baseline=variant_name(MODELS[0]),
        candidate=variant_name(MODELS[1]),
        config={
            "experiment": run.name,
            "prompt": PROMPT,
            "prompt_versions": dict(run.versions),
            "created_versions": list(run.created_versions),
            "salt": SALT,
            "examples": len(run.examples),
            "users_per_example": run.config.units,
            "concurrency": run.config.concurrency,
            "max_tokens": run.config.max_tokens or "the prompt's own",
            "target": run.target or "started here",
            "results": run.results_proto,
        },
        environment=env,
        measurements=measurements,
        comparisons=[],
        notes=notes,
    )


def plot(path: Path, run: ExperimentRun) -> None:
    """The PNG `genai experiments results` writes (per metric, each variant's mean with its
    interval and its difference to the control)."""
    from services.experiment.report import plot_results

    if run.results is None:
        raise RuntimeError("no results to plot")
    plot_results(run.results, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(NAME, DESCRIPTION)
    parser.add_argument(
        "--examples", type=int, default=None, help="complete-facts examples to send (0: all 16)"
    )
    parser.add_argument(
        "--units",
        type=int,
        default=None,
        help=f"users sending each example (default {ExperimentConfig.units}; --quick: "
        f"{QUICK.units})",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"cap both variants' max_tokens (default: the prompt's own; --quick: "
        f"{QUICK.max_tokens})",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight at once (default 1)"
    )
    parser.add_argument(
        "--target",
        default="",
        metavar="HOST:PORT",
        help="a platform already serving (default: start one here with genai serve)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GENAI_API_KEY", ""),
        help="with --target: a tenant-admin API key (default: $GENAI_API_KEY)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else ExperimentConfig()
    config = ExperimentConfig(
        examples=args.examples if args.examples is not None else base.examples,
        units=args.units if args.units is not None else base.units,
        max_tokens=args.max_tokens if args.max_tokens is not None else base.max_tokens,
        concurrency=args.concurrency,
    )
    if config.units < 1 or config.examples < 0 or config.concurrency < 1:
        parser.error("--units and --concurrency must be at least 1, --examples at least 0")
    progress = Progress(NAME)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    env = environment()
    run_dir = args.out / f"{NAME}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    run = asyncio.run(
        run_experiment(config, progress, run_dir, target=args.target, api_key=args.api_key)
    )
    progress.close()
    result = build_result(run, started_at, time.monotonic() - started, with_load_at_end(env))
    json_path, png_path = write_outputs(result, args.out, lambda path: plot(path, run))
    print(report(run, result))
    print(f"\nwrote {shown(json_path)}\n      {shown(png_path)}")
    served = sum(1 for s in run.sent if not s.error)
    return 0 if served and not any(s.feedback_error for s in run.sent) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
