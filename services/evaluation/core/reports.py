"""Reports from per-output results: per-scorer summaries with confidence intervals, gates
against thresholds, and the comparison of a candidate report with a baseline.

The unit of analysis is the example, not the output: repeats of one example share its input
and are not independent draws. So a scorer's mean is the mean over examples of each example's
mean over its scored repeats (the plain mean of outputs when every output was scored), and
`count` is the number of scored outputs. Unscored outputs (failed generations, unparseable
judge replies) are left out; an example with no scored output does not count.

The interval of the mean depends on the scores (`mean_interval_of`):
- a quality scorer whose every score is 0 or 1 (exact match, contains, regex, JSON schema; a
  judge that only ever said yes or no) gets the Wilson score interval of the pass rate over
  the examples, which stays inside [0, 1] and is informative at 0% and 100% and for small
  samples, where Student's t is neither (5 of 8 passing gave [0.19, 1.06] with t; Wilson
  gives [0.31, 0.86]). With repeats, the rate is the mean of the examples' pass shares and n
  the number of examples;
- any other scorer gets Student's t over the example means, clamped to the scorer's range:
  [0, 1] for quality scorers, [0, inf) for latency and cost (t's symmetric interval can cross
  a bound the scores cannot).

Comparisons pair by example when both reports scored the same examples with a scorer (the usual
case: one dataset): the difference's interval and p-value are a paired t-test on per-example
differences. Otherwise they are Welch's test on per-example means. A scorer regressed when the
candidate is worse (lower quality; higher latency or cost) with p < `SIGNIFICANCE`.

Statistics come from `services.experiment.core.statistics`. This module imports neither grpc
nor generated code.
"""

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Final

from services.evaluation.core.model import (
    EvaluationGate,
    EvaluationReport,
    EvaluationRun,
    ExampleRegression,
    ExampleResult,
    GateFailure,
    GateOutcome,
    GateThreshold,
    ReportComparison,
    ScorerComparison,
    ScorerKind,
    ScorerSpec,
    ScorerSummary,
    TokenUsage,
)
from services.experiment.core.statistics import (
    DEFAULT_CONFIDENCE,
    WELCH_T,
    Interval,
    MeanSummary,
    mean_interval,
    student_t_sf,
    welch_test,
    wilson_interval,
)

SIGNIFICANCE: Final = 0.05
"""A scorer regressed when the candidate is worse with a two-sided p-value below this."""
PAIRED_T: Final = "paired_t"
"""`ScorerComparison.test` of a comparison paired by example."""
REGRESSION_TOLERANCE: Final = 1e-9
"""An example regressed when its mean dropped by more than this (float noise is not a drop)."""


def example_means(results: Sequence[ExampleResult], scorer: str) -> dict[str, list[float]]:
    """Each example's scored values of `scorer` over its repeats (examples with none are
    absent)."""
    values: dict[str, list[float]] = defaultdict(list)
    for result in results:
        for score in result.scores:
            if score.scorer == scorer and score.scored:
                values[result.example_id].append(score.value)
    return dict(values)


def summarize(
    scorers: Sequence[ScorerSpec],
    results: Sequence[ExampleResult],
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[ScorerSummary, ...]:
    """One summary per scorer, in `scorers` order: `count` scored outputs, `mean` over
    examples, `mean_interval` as `mean_interval_of` says, and `flakiness`: the mean, over
    examples with at least 2 scored repeats, of the population standard deviation of their
    repeats (0 when no example has 2)."""
    summaries = []
    for spec in scorers:
        per_example = example_means(results, spec.name)
        means = [math.fsum(v) / len(v) for v in per_example.values()]
        spreads = [_pstdev(v) for v in per_example.values() if len(v) >= 2]
        summary = MeanSummary.of(means)
        summaries.append(
            ScorerSummary(
                scorer=spec.name,
                kind=spec.kind,
                count=sum(len(v) for v in per_example.values()),
                mean=summary.mean,
                mean_interval=mean_interval_of(spec.kind, per_example, confidence),
                flakiness=math.fsum(spreads) / len(spreads) if spreads else 0.0,
            )
        )
    return tuple(summaries)


def is_binary(kind: ScorerKind, per_example: Mapping[str, Sequence[float]]) -> bool:
    """Whether a scorer's scores are pass/fail: a quality scorer (not latency or cost) whose
    every score is 0 or 1 (and there is at least one)."""
    return (
        not kind.lower_is_better
        and any(per_example.values())
        and all(v in (0.0, 1.0) for values in per_example.values() for v in values)
    )


def mean_interval_of(
    kind: ScorerKind,
    per_example: Mapping[str, Sequence[float]],
    confidence: float = DEFAULT_CONFIDENCE,
) -> Interval:
    """The confidence interval of a scorer's mean over examples (see the module docstring):
    Wilson over examples for pass/fail scores (`is_binary`), else Student's t over example
    means (undefined below 2 examples) clamped to the scorer's range."""
    means = [math.fsum(v) / len(v) for v in per_example.values() if v]
    if is_binary(kind, per_example):
        rate = min(1.0, max(0.0, math.fsum(means) / len(means)))
        return wilson_interval(rate, len(means), confidence)
    interval = mean_interval(MeanSummary.of(means), confidence)
    if not interval.defined:
        return interval
    upper_bound = math.inf if kind.lower_is_better else 1.0
    return replace(
        interval,
        lower=min(max(interval.lower, 0.0), upper_bound),
        upper=min(max(interval.upper, 0.0), upper_bound),
    )


def build_report(
    run: EvaluationRun,
    results: Sequence[ExampleResult],
    *,
    report_id: str,
    prompt_version: int,
    prompt_content_hash: str,
    create_time: datetime,
    baseline: EvaluationReport | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> EvaluationReport:
    """The report of a finished run: summaries of the run's scorers, the results ordered by
    example id and repeat (the order the store reads them in), total usage and cost (in the
    results' currency), and the comparison with `baseline` when one is given."""
    usage = TokenUsage()
    for result in results:
        usage += result.usage
    report = EvaluationReport(
        id=report_id,
        run_id=run.id,
        prompt=run.spec.prompt,
        prompt_version=prompt_version,
        prompt_content_hash=prompt_content_hash,
        model=run.spec.model,
        dataset=run.spec.dataset,
        summaries=summarize(run.spec.scorers, results, confidence),
        results=tuple(sorted(results, key=lambda r: (r.example_id, r.repeat))),
        baseline_comparison=None,
        usage=usage,
        cost=sum((r.cost for r in results), Decimal(0)),
        currency=next((r.currency for r in results if r.currency), ""),
        create_time=create_time,
    )
    if baseline is None:
        return report
    return replace(
        report, baseline_comparison=compare_reports(baseline, report, confidence=confidence)
    )


# ---------------------------------------------------------------------------------- gates


def gate_failures(
    summaries: Sequence[ScorerSummary], thresholds: Sequence[GateThreshold]
) -> tuple[GateFailure, ...]:
    """The thresholds the summaries miss: a scorer's mean below `min_mean`, or a scorer the
    report lacks or scored nothing with (its `mean` None)."""
    by_name = {s.scorer: s for s in summaries}
    failures = []
    for threshold in thresholds:
        found = by_name.get(threshold.scorer)
        if found is None or found.count == 0:
            failures.append(GateFailure(threshold.scorer, threshold.min_mean, None))
        elif found.mean < threshold.min_mean:
            failures.append(GateFailure(threshold.scorer, threshold.min_mean, found.mean))
    return tuple(failures)


def evaluate_gate(report: EvaluationReport, gate: EvaluationGate) -> GateOutcome:
    """Whether `report` passes `gate`; ValueError when it is a report on another dataset."""
    if report.dataset != gate.dataset:
        raise ValueError(f"report {report.id} is on {report.dataset!r}, not {gate.dataset!r}")
    failures = gate_failures(report.summaries, gate.thresholds)
    return GateOutcome(not failures, report.id, failures)


# ---------------------------------------------------------------------------- comparison


def compare_reports(
    baseline: EvaluationReport,
    candidate: EvaluationReport,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    significance: float = SIGNIFICANCE,
) -> ReportComparison:
    """The candidate against the baseline for every scorer in both (candidate order), and
    the examples whose mean got worse on a quality scorer, worst drop first (latency and
    cost vary from call to call too much for a per-example verdict)."""
    baseline_kinds = {s.scorer: s.kind for s in baseline.summaries}
    comparisons: list[ScorerComparison] = []
    regressions: list[ExampleRegression] = []
    for summary in candidate.summaries:
        if summary.scorer not in baseline_kinds:
            continue
        before = _means(example_means(baseline.results, summary.scorer))
        after = _means(example_means(candidate.results, summary.scorer))
        comparisons.append(
            _compare(summary.scorer, summary.kind, before, after, confidence, significance)
        )
        if not summary.kind.lower_is_better:
            regressions += [
                ExampleRegression(example, summary.scorer, before[example], after[example])
                for example in sorted(before.keys() & after.keys())
                if after[example] < before[example] - REGRESSION_TOLERANCE
            ]
    regressions.sort(key=lambda r: (r.candidate_value - r.baseline_value, r.example_id, r.scorer))
    return ReportComparison(
        baseline_report_id=baseline.id,
        candidate_report_id=candidate.id,
        scorers=tuple(comparisons),
        example_regressions=tuple(regressions),
        regressed=any(c.regressed for c in comparisons),
    )


def _compare(
    scorer: str,
    kind: ScorerKind,
    before: Mapping[str, float],
    after: Mapping[str, float],
    confidence: float,
    significance: float,
) -> ScorerComparison:
    baseline = MeanSummary.of(before.values())
    candidate = MeanSummary.of(after.values())
    difference = candidate.mean - baseline.mean
    paired = len(before) >= 2 and before.keys() == after.keys()
    if paired:
        interval, p_value = _paired_t([after[k] - before[k] for k in sorted(before)], confidence)
        test = PAIRED_T
    else:
        welch = welch_test(baseline, candidate, confidence)
        interval, p_value, test = welch.difference_interval, welch.p_value, WELCH_T
        if not welch.defined and baseline.n >= 2 and candidate.n >= 2 and difference != 0.0:
            # Both arms constant and different: the sample shows a sure difference.
            interval, p_value = Interval(difference, difference, confidence), 0.0
    worse = difference > 0.0 if kind.lower_is_better else difference < 0.0
    return ScorerComparison(
        scorer=scorer,
        baseline_mean=baseline.mean,
        candidate_mean=candidate.mean,
        difference=difference,
        difference_interval=interval,
        p_value=p_value,
        regressed=worse and p_value < significance,
        paired=paired,
        test=test,
    )


def _paired_t(differences: Sequence[float], confidence: float) -> tuple[Interval, float]:
    """Student-t interval of the mean difference and the two-sided p-value of a paired
    t-test. Constant differences give a zero-width interval and p 0 (1 when they are 0)."""
    summary = MeanSummary.of(differences)
    interval = mean_interval(summary, confidence)
    if summary.variance == 0.0:
        return interval, 1.0 if summary.mean == 0.0 else 0.0
    t = summary.mean / math.sqrt(summary.variance / summary.n)
    return interval, min(1.0, 2.0 * student_t_sf(abs(t), summary.n - 1))


def _means(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {example: math.fsum(v) / len(v) for example, v in values.items()}


def _pstdev(values: Sequence[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
