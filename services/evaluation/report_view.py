"""What a reader of an evaluation report looks at, without the transport: each output beside its
example's inputs and reference, the regressed examples with their inputs, which unit each
scorer measures in, and the values to plot, split by unit so that a 0..1 score never shares an
axis with seconds or money. The HTML report (`html_report`) and the web console both render
from here.

A report holds results by example id only; the examples themselves come from the dataset
(`ListExamples`), and the scorers' kinds from the report's run (`GetEvaluationRun`). Both are
optional: without examples a row has no inputs or reference, and without the run's scorers a
scorer's unit is read from its values (`scorer_units`).
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from genai.evaluation.v1 import evaluation_pb2
from google.protobuf import json_format

from services.common.wire import decimal_amount, seconds

MATCH_TOLERANCE_S = 1e-3
"""A scorer is read as latency when each of its values is within this of the output's latency."""


class ScoreUnit(StrEnum):
    """What a scorer's values measure (the `Score.value` contract)."""

    QUALITY = "score"
    """A quality in [0, 1], higher is better."""
    SECONDS = "seconds"
    """End-to-end latency (the latency scorer)."""
    CURRENCY = "currency"
    """Cost in currency units at catalog prices (the cost scorer)."""


@dataclass(frozen=True, slots=True)
class ExampleRow:
    """One output of a report beside the example it answered."""

    example_id: str
    repeat: int
    inputs: dict[str, Any]
    """The example's template variables as JSON values, by name; empty when the example is
    unknown."""
    reference: str | None
    """The expected output; None when the example has none or is unknown."""
    output: str
    error: str
    """Why generation failed; empty on success."""
    scores: list[tuple[str, float | None]]
    """(scorer, value) in the result's order; the value is None when the output was not scored."""


@dataclass(frozen=True, slots=True)
class RegressedExampleRow:
    """One example whose mean score dropped against the baseline, with its inputs."""

    example_id: str
    scorer: str
    baseline_value: float
    candidate_value: float
    inputs: dict[str, Any]
    """As in `ExampleRow.inputs`."""
    reference: str | None
    """As in `ExampleRow.reference`."""


@dataclass(frozen=True, slots=True)
class ScoreSeries:
    """A quality scorer's values for a plot on a 0..1 axis."""

    scorer: str
    values: list[float]
    """Every scored value, in report order."""
    mean: float
    """The summary's mean over examples."""
    interval: tuple[float, float] | None
    """The summary's confidence interval of the mean; None when undefined."""


def example_rows(
    report: evaluation_pb2.EvaluationReport, examples: Mapping[str, evaluation_pb2.Example]
) -> list[ExampleRow]:
    """One row per result of `report`, in its order, with the inputs and reference of the
    result's example from `examples` (by id; an id missing from it gets none)."""
    rows = []
    for result in report.results:
        inputs, reference = _example_fields(examples.get(result.example_id))
        rows.append(
            ExampleRow(
                example_id=result.example_id,
                repeat=result.repeat,
                inputs=inputs,
                reference=reference,
                output=result.output,
                error=result.error,
                scores=[(s.scorer, s.value if s.scored else None) for s in result.scores],
            )
        )
    return rows


def regressed_example_rows(
    comparison: evaluation_pb2.ReportComparison, examples: Mapping[str, evaluation_pb2.Example]
) -> list[RegressedExampleRow]:
    """The comparison's example regressions, worst first as it orders them, with the inputs
    and reference of each example from `examples`."""
    rows = []
    for regression in comparison.example_regressions:
        inputs, reference = _example_fields(examples.get(regression.example_id))
        rows.append(
            RegressedExampleRow(
                example_id=regression.example_id,
                scorer=regression.scorer,
                baseline_value=regression.baseline_value,
                candidate_value=regression.candidate_value,
                inputs=inputs,
                reference=reference,
            )
        )
    return rows


def scorer_units(
    report: evaluation_pb2.EvaluationReport, scorers: Iterable[evaluation_pb2.Scorer] = ()
) -> dict[str, ScoreUnit]:
    """The unit of each scorer of `report`'s summaries, in their order. A scorer configured in
    `scorers` (the run's) has its kind's unit; any other is read from its values: latency when
    every value equals its output's latency, cost when every value equals its output's cost,
    else a quality score."""
    kinds = {s.name: _unit_of(s) for s in scorers}
    names = [s.scorer for s in report.summaries]
    for result in report.results:
        names.extend(s.scorer for s in result.scores if s.scorer not in names)
    return {name: kinds[name] if name in kinds else _inferred_unit(report, name) for name in names}


def score_series(
    report: evaluation_pb2.EvaluationReport, units: Mapping[str, ScoreUnit]
) -> list[ScoreSeries]:
    """One series per quality scorer (by `units`; a scorer missing from it counts as quality),
    in the order of the report's summaries. Latency and cost scorers are left out: they are not
    on a 0..1 scale."""
    values: dict[str, list[float]] = {}
    for result in report.results:
        for score in result.scores:
            if score.scored:
                values.setdefault(score.scorer, []).append(score.value)
    return [
        ScoreSeries(
            scorer=summary.scorer,
            values=values.get(summary.scorer, []),
            mean=summary.mean,
            interval=(
                (summary.mean_interval.lower, summary.mean_interval.upper)
                if summary.HasField("mean_interval")
                else None
            ),
        )
        for summary in report.summaries
        if units.get(summary.scorer, ScoreUnit.QUALITY) is ScoreUnit.QUALITY
    ]


def latency_seconds(report: evaluation_pb2.EvaluationReport) -> list[float]:
    """The end-to-end latency in seconds of every generated output (failed generations are
    left out), in report order."""
    return [seconds(r.latency) for r in report.results if not r.error]


def _example_fields(example: evaluation_pb2.Example | None) -> tuple[dict[str, Any], str | None]:
    if example is None:
        return {}, None
    inputs = json_format.MessageToDict(example.inputs)
    return dict(sorted(inputs.items())), example.reference or None


def _unit_of(scorer: evaluation_pb2.Scorer) -> ScoreUnit:
    kind = scorer.WhichOneof("kind")
    if kind == "latency":
        return ScoreUnit.SECONDS
    if kind == "cost":
        return ScoreUnit.CURRENCY
    return ScoreUnit.QUALITY


def _inferred_unit(report: evaluation_pb2.EvaluationReport, scorer: str) -> ScoreUnit:
    values = []
    latencies = []
    costs: list[float | None] = []
    for result in report.results:
        for score in result.scores:
            if score.scorer == scorer and score.scored:
                values.append(score.value)
                latencies.append(seconds(result.latency))
                costs.append(
                    float(decimal_amount(result.cost)) if result.HasField("cost") else None
                )
    if any(latencies) and all(
        abs(v - s) <= MATCH_TOLERANCE_S for v, s in zip(values, latencies, strict=True)
    ):
        return ScoreUnit.SECONDS
    # Pass/fail values are never read as cost: a failing quality scorer would match the zero
    # cost of a free model.
    if any(v not in (0.0, 1.0) for v in values) and all(
        c is not None and math.isclose(v, c) for v, c in zip(values, costs, strict=True)
    ):
        return ScoreUnit.CURRENCY
    return ScoreUnit.QUALITY
