"""The experiments pages: every experiment of the tenant, and one experiment with its variants,
metrics, results and the sample-ratio check, started and stopped from there.

| route | what it calls (with the visitor's key) |
|---|---|
| `GET /experiments` | `ListExperiments` (paginated, optionally of one state) |
| `GET /experiments/{name}` | `GetExperiment`, `GetExperimentResults`; `PromptService.GetPrompt` for the version the `production` label points to |
| `POST /experiments/{name}/start` | `StartExperiment` (tenant admin) |
| `POST /experiments/{name}/stop` | `StopExperiment` (tenant admin) |

The results show only what `GetExperimentResults` returns: per metric, each variant's
outcomes, mean (a rate in percent for boolean metrics) with its interval, the difference to the
control (in percentage points for rates) with its interval, the fixed-horizon and the
always-valid p-values. The verdict is read from the always-valid p-value (safe however often
the page is reloaded) against 1 - the confidence level, in the direction the metric declares
better. A sample-ratio mismatch is an alert above everything: such results must not be trusted.

Where the platform runs no ExperimentService the pages say so (503) rather than fail.
"""

import math
from dataclasses import dataclass
from typing import Final

import grpc
from genai.common.v1 import statistics_pb2
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2
from genai.prompt.v1 import prompt_service_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.console.charts import IntervalRow, interval_chart
from services.console.formatting import enum_name, pretty_json
from services.console.pages import common
from services.console.pages.common import link, optional, quote, status_of
from services.console.web import (
    PREFIX,
    Console,
    ExperimentStub,
    Failure,
    Visitor,
    form_text,
    redirect,
)
from services.experiment.core.model import MAX_STOP_REASON

pb = experiment_pb2
spb = experiment_service_pb2

START_RPC: Final = "/genai.experiment.v1.ExperimentService/StartExperiment"
STOP_RPC: Final = "/genai.experiment.v1.ExperimentService/StopExperiment"
PAGE_SIZE: Final = 50
CONFIDENCE_LEVELS: Final = (0.9, 0.95, 0.99)
"""The confidence levels the results page offers (the service's default is 0.95)."""
DEFAULT_CONFIDENCE: Final = 0.95
STOP_REASON_LIMIT: Final = MAX_STOP_REASON
"""Longest stop reason (the service checks it too, answering a field violation of `reason`)."""
STATES: Final = {
    "draft": pb.EXPERIMENT_STATE_DRAFT,
    "running": pb.EXPERIMENT_STATE_RUNNING,
    "stopped": pb.EXPERIMENT_STATE_STOPPED,
}
"""The state filter of the list: query value -> proto state."""
STATE_TONES: Final = {
    pb.EXPERIMENT_STATE_DRAFT: "state-warn",
    pb.EXPERIMENT_STATE_RUNNING: "state-good",
    pb.EXPERIMENT_STATE_STOPPED: "muted",
}
NOT_DEPLOYED: Final = Failure(
    503,
    "UNAVAILABLE",
    "Experiments are not deployed on this platform: no ExperimentService is hosted or "
    "configured (gateway.targets.experiment).",
    reason="SERVICE_NOT_DEPLOYED",
)


def routes(console: Console) -> list[BaseRoute]:
    """The experiments pages (paths under the `/console` mount)."""
    guarded = common.guarded(console, lambda stubs: stubs.experiments, NOT_DEPLOYED, "Experiments")

    @guarded
    async def list_view(request: Request, visitor: Visitor, stub: ExperimentStub) -> Response:
        state_name = request.query_params.get("state", "")
        if state_name not in STATES:
            state_name = ""
        page_token = request.query_params.get("page_token", "")
        listed = await stub.ListExperiments(
            spb.ListExperimentsRequest(
                page_size=PAGE_SIZE,
                page_token=page_token,
                state=STATES.get(state_name, pb.EXPERIMENT_STATE_UNSPECIFIED),
            ),
            **visitor.read(),
        )
        path = f"{PREFIX}/experiments"
        return console.render(
            request,
            "experiments.html",
            visitor,
            title="Experiments",
            experiments=[_summary(experiment) for experiment in listed.experiments],
            states=list(STATES),
            state=state_name,
            next_url=link(path, state=state_name, page_token=listed.next_page_token)
            if listed.next_page_token
            else "",
            first_url=link(path, state=state_name) if page_token else "",
            done=request.query_params.get("done", ""),
        )

    @guarded
    async def detail_view(request: Request, visitor: Visitor, stub: ExperimentStub) -> Response:
        return await _detail(console, request, visitor, stub)

    @guarded
    async def start_view(request: Request, visitor: Visitor, stub: ExperimentStub) -> Response:
        name = request.path_params["name"]
        try:
            await stub.StartExperiment(spb.StartExperimentRequest(name=name), **visitor.write())
        except grpc.aio.AioRpcError as error:
            return await _detail(console, request, visitor, stub, failure=Failure.of_rpc(error))
        return redirect(f"{PREFIX}/experiments/{quote(name)}", done=f"Started {name}.")

    @guarded
    async def stop_view(request: Request, visitor: Visitor, stub: ExperimentStub) -> Response:
        name = request.path_params["name"]
        reason = form_text(await request.form(), "reason").strip()
        try:
            await stub.StopExperiment(
                spb.StopExperimentRequest(name=name, reason=reason), **visitor.write()
            )
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
            return await _detail(console, request, visitor, stub, failure=failure, reason=reason)
        return redirect(f"{PREFIX}/experiments/{quote(name)}", done=f"Stopped {name}.")

    return [
        Route("/experiments", console.page(list_view), methods=["GET"]),
        Route("/experiments/{name}", console.page(detail_view), methods=["GET"]),
        Route("/experiments/{name}/start", console.action(START_RPC, start_view), methods=["POST"]),
        Route("/experiments/{name}/stop", console.action(STOP_RPC, stop_view), methods=["POST"]),
    ]


# -- the list ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantLine:
    """A variant as the pages list it."""

    name: str
    weight: float
    share: float
    """weight / the sum of the weights: the share of the units that are not held out."""
    prompt_version: int
    """0: the version the prompt's `production` label points to."""
    resolved_version: int
    """The version `production` points to now for `prompt_version` 0 (0 when unknown)."""
    model: str
    parameters: str
    """The sampling parameters the variant overrides, as JSON; '' when none."""
    control: bool


@dataclass(frozen=True)
class Summary:
    """An experiment as a row of the list."""

    name: str
    description: str
    state: str
    state_tone: str
    prompt: str
    variants: list[VariantLine]
    create_time: object
    start_time: object
    stop_time: object


def _summary(experiment: pb.Experiment, production: int = 0) -> Summary:
    return Summary(
        name=experiment.name,
        description=experiment.description,
        state=_state_name(experiment.state),
        state_tone=STATE_TONES.get(experiment.state, ""),
        prompt=experiment.prompt,
        variants=_variants(experiment, production),
        create_time=experiment.create_time,
        start_time=experiment.start_time,
        stop_time=experiment.stop_time,
    )


def _variants(experiment: pb.Experiment, production: int) -> list[VariantLine]:
    total = math.fsum(variant.weight for variant in experiment.variants)
    lines = []
    for variant in experiment.variants:
        parameters = ""
        if variant.HasField("parameters") and variant.parameters.ListFields():
            parameters = pretty_json(variant.parameters)
        lines.append(
            VariantLine(
                name=variant.name,
                weight=variant.weight,
                share=variant.weight / total if total > 0 else 0.0,
                prompt_version=variant.prompt_version,
                resolved_version=production if variant.prompt_version == 0 else 0,
                model=variant.model,
                parameters=parameters,
                control=variant.name == experiment.control_variant,
            )
        )
    return lines


# -- one experiment ----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricLine:
    """One variant's row of a metric's results table."""

    variant: str
    control: bool
    count: int
    mean: str
    mean_interval: str
    difference: str
    difference_interval: str
    p_value: str
    sequential_p_value: str
    test: str
    verdict: str
    verdict_tone: str


@dataclass(frozen=True)
class MetricTable:
    """One metric's results: its table and its charts."""

    name: str
    kind: str
    higher_is_better: bool | None
    """From the experiment's metric spec; None when the spec is not there."""
    rate: bool
    lines: list[MetricLine]
    tests: list[str]
    differences_chart: object
    means_chart: object


@dataclass(frozen=True)
class RatioLine:
    """One variant's row of the sample-ratio table. The service's check counts distinct
    exposed units against the weights they were assigned under, which the API does not
    return; recorded exposures split by the current weights are what the page can show."""

    variant: str
    units: int
    """Distinct units assigned."""
    exposures: int
    """Recorded exposures (observed)."""
    share: float
    """The variant's share of all exposures."""
    configured_share: float
    """weight / the sum of the weights, at the current weights."""
    expected_exposures: float
    """All exposures split by the current weights."""


async def _detail(
    console: Console,
    request: Request,
    visitor: Visitor,
    stub: ExperimentStub,
    *,
    failure: Failure | None = None,
    reason: str = "",
) -> Response:
    """The experiment page; after a refused start or stop, with the failure shown and the
    HTTP status of the failure."""
    name = request.path_params["name"]
    confidence = _confidence(request.query_params.get("confidence", ""))
    experiment = (
        await stub.GetExperiment(spb.GetExperimentRequest(name=name), **visitor.read())
    ).experiment
    production, prompt_problem = await _production_version(visitor, experiment)
    results, results_failure = await optional(_results(stub, visitor, name, confidence))
    level = f"{confidence * 100:g}%"
    tables: list[MetricTable] = []
    ratio: list[RatioLine] = []
    if results is not None:
        specs = {metric.name: metric for metric in experiment.metrics}
        tables = _metric_tables(results, specs, confidence, level)
        ratio = _ratio_lines(results, experiment)
    running = experiment.state == pb.EXPERIMENT_STATE_RUNNING
    draft = experiment.state == pb.EXPERIMENT_STATE_DRAFT
    return console.render(
        request,
        "experiment.html",
        visitor,
        status=status_of(failure),
        title=f"Experiment {experiment.name}",
        experiment=_summary(experiment, production),
        control=experiment.control_variant,
        holdout_share=experiment.holdout_share,
        unit=enum_name(pb.AssignmentUnit.Name(experiment.unit), "ASSIGNMENT_UNIT_"),
        metrics=[
            {
                "name": metric.name,
                "kind": enum_name(pb.MetricKind.Name(metric.kind), "METRIC_KIND_"),
                "better": "higher" if metric.higher_is_better else "lower",
            }
            for metric in experiment.metrics
        ],
        prompt_problem=prompt_problem,
        results=results,
        results_failure=results_failure,
        srm_p=_p_value(results.sample_ratio.p_value) if results is not None else "",
        srm_chi=f"{results.sample_ratio.chi_square:.2f}" if results is not None else "",
        assigned=results is not None and any(v.units for v in results.variants),
        exposed=results is not None and any(v.exposures for v in results.variants),
        tables=tables,
        ratio=ratio,
        level=level,
        confidence=confidence,
        confidence_levels=[(value, f"{value * 100:g}%") for value in CONFIDENCE_LEVELS],
        may_start=draft and visitor.may(START_RPC),
        may_stop=(draft or running) and visitor.may(STOP_RPC),
        failure=failure,
        reason=reason,
        reason_errors=failure.errors_for("reason") if failure is not None else [],
        reason_limit=STOP_REASON_LIMIT,
        done=request.query_params.get("done", ""),
    )


async def _production_version(visitor: Visitor, experiment: pb.Experiment) -> tuple[int, str]:
    """The version the prompt's `production` label points to, when a variant serves it (0
    and why not, when that cannot be told)."""
    if not experiment.prompt or all(v.prompt_version for v in experiment.variants):
        return 0, ""
    try:
        prompt = (
            await visitor.stubs.prompts.GetPrompt(
                prompt_service_pb2.GetPromptRequest(name=experiment.prompt), **visitor.read()
            )
        ).prompt
    except grpc.aio.AioRpcError as error:
        return 0, f"{error.code().name}: {error.details() or ''}".strip()
    version = prompt.labels.get("production", 0)
    return version, "" if version else "the prompt has no production label"


async def _results(
    stub: ExperimentStub, visitor: Visitor, name: str, confidence: float
) -> pb.ExperimentResults:
    response = await stub.GetExperimentResults(
        spb.GetExperimentResultsRequest(name=name, confidence_level=confidence),
        **visitor.read(),
    )
    return response.results


def _metric_tables(
    results: pb.ExperimentResults,
    specs: dict[str, pb.MetricSpec],
    confidence: float,
    level: str,
) -> list[MetricTable]:
    """One table (and its charts) per metric, in the order of the control's metrics."""
    if not results.variants:
        return []
    alpha = 1.0 - confidence
    mismatch = results.sample_ratio.mismatch
    control = results.variants[0].variant
    tables = []
    for index, first in enumerate(results.variants[0].metrics):
        spec = specs.get(first.metric)
        higher_is_better = spec.higher_is_better if spec is not None else None
        rate = first.kind == pb.METRIC_KIND_BOOLEAN
        lines = []
        mean_rows = []
        difference_rows = []
        tests: set[str] = set()
        for position, variant in enumerate(results.variants):
            if index >= len(variant.metrics):
                continue
            metric = variant.metrics[index]
            is_control = position == 0
            has_mean_interval = metric.HasField("mean_interval")
            scale = 100.0 if rate else 1.0
            mean_rows.append(
                IntervalRow(
                    label=variant.variant,
                    estimate=metric.mean * scale,
                    lower=metric.mean_interval.lower * scale if has_mean_interval else None,
                    upper=metric.mean_interval.upper * scale if has_mean_interval else None,
                )
            )
            verdict, tone = _verdict(metric, is_control, alpha, higher_is_better, mismatch)
            comparison = metric.comparison if metric.HasField("comparison") else None
            if comparison is not None:
                if comparison.test:
                    tests.add(comparison.test)
                has_interval = comparison.HasField("difference_interval")
                difference_rows.append(
                    IntervalRow(
                        label=f"{variant.variant} - {control}",
                        estimate=comparison.difference * scale,
                        lower=comparison.difference_interval.lower * scale
                        if has_interval
                        else None,
                        upper=comparison.difference_interval.upper * scale
                        if has_interval
                        else None,
                        tone=tone if tone in ("good", "bad") else "",
                    )
                )
            elif not is_control:
                difference_rows.append(
                    IntervalRow(label=f"{variant.variant} - {control} (n/a)", estimate=math.nan)
                )
            lines.append(
                MetricLine(
                    variant=variant.variant,
                    control=is_control,
                    count=metric.count,
                    mean=_value(metric.mean, rate),
                    mean_interval=_interval(metric.mean_interval, rate)
                    if has_mean_interval
                    else "n/a",
                    difference=""
                    if is_control
                    else (
                        _value(comparison.difference, rate, signed=True)
                        if comparison is not None
                        else "n/a"
                    ),
                    difference_interval=""
                    if is_control or comparison is None
                    else (
                        _interval(comparison.difference_interval, rate, signed=True)
                        if comparison.HasField("difference_interval")
                        else "n/a"
                    ),
                    p_value="" if comparison is None else _p_value(comparison.p_value),
                    sequential_p_value=""
                    if comparison is None
                    else _p_value(comparison.sequential_p_value),
                    test=comparison.test if comparison is not None else "",
                    verdict=verdict,
                    verdict_tone=tone,
                )
            )
        unit = "percentage points" if rate else first.metric
        tables.append(
            MetricTable(
                name=first.metric,
                kind=enum_name(pb.MetricKind.Name(first.kind), "METRIC_KIND_"),
                higher_is_better=higher_is_better,
                rate=rate,
                lines=lines,
                tests=sorted(tests),
                differences_chart=interval_chart(
                    difference_rows,
                    title=f"{first.metric}: difference to {control}, {level} interval",
                    axis_label=f"difference in {unit}",
                    reference=0.0,
                ),
                means_chart=interval_chart(
                    mean_rows,
                    title=f"{first.metric}: {'rate' if rate else 'mean'} per variant, "
                    f"{level} interval",
                    axis_label="rate in %" if rate else f"mean {first.metric}",
                    domain=(0.0, 100.0) if rate else None,
                ),
            )
        )
    return tables


def _verdict(
    metric: pb.MetricResult,
    is_control: bool,
    alpha: float,
    higher_is_better: bool | None,
    mismatch: bool,
) -> tuple[str, str]:
    """What one variant's comparison says, and its tone ("good", "bad", "warn", "")."""
    if is_control:
        return "control", ""
    if not metric.HasField("comparison"):
        return "not enough data", ""
    if mismatch:
        return "not trustworthy: sample-ratio mismatch", "warn"
    comparison = metric.comparison
    if comparison.sequential_p_value >= alpha:
        return "no detectable difference yet", ""
    if comparison.difference == 0 or higher_is_better is None:
        return "different", ""
    better = (comparison.difference > 0) == higher_is_better
    return ("better than control", "good") if better else ("worse than control", "bad")


def _ratio_lines(results: pb.ExperimentResults, experiment: pb.Experiment) -> list[RatioLine]:
    """Exposures per variant against the split the current weights expect."""
    weights = {variant.name: variant.weight for variant in experiment.variants}
    total_weight = math.fsum(weights.get(v.variant, 0.0) for v in results.variants)
    total = sum(v.exposures for v in results.variants)
    lines = []
    for variant in results.variants:
        configured = weights.get(variant.variant, 0.0) / total_weight if total_weight else 0.0
        lines.append(
            RatioLine(
                variant=variant.variant,
                units=variant.units,
                exposures=variant.exposures,
                share=variant.exposures / total if total else 0.0,
                configured_share=configured,
                expected_exposures=total * configured,
            )
        )
    return lines


# -- formatting --------------------------------------------------------------------------


def _confidence(text: str) -> float:
    """The confidence level a query asked for, when it is one the page offers."""
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_CONFIDENCE
    return next(
        (level for level in CONFIDENCE_LEVELS if abs(level - value) < 1e-9), DEFAULT_CONFIDENCE
    )


def _state_name(state: int) -> str:
    return enum_name(pb.ExperimentState.Name(state), "EXPERIMENT_STATE_")


def _value(value: float, rate: bool, *, signed: bool = False) -> str:
    """A rate in percent (a difference of rates in pp), anything else to 4 significant
    digits (as the CLI's report writes them)."""
    sign = "+" if signed else ""
    if not math.isfinite(value):
        return "n/a"
    if rate:
        return f"{value * 100:{sign}.2f}" + (" pp" if signed else "%")
    magnitude = abs(value)
    if magnitude == 0.0:
        return f"{0.0:{sign}.0f}"
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:{sign}.3e}"
    decimals = max(0, 3 - math.floor(math.log10(magnitude)))
    return f"{value:{sign}.{decimals}f}"


def _interval(
    interval: statistics_pb2.ConfidenceInterval, rate: bool, *, signed: bool = False
) -> str:
    lower = _value(interval.lower, rate, signed=signed)
    return f"[{lower}, {_value(interval.upper, rate, signed=signed)}]"


def _p_value(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
