"""Evaluation reports: summaries over examples (checked against scipy), gates against
thresholds, and comparisons of a candidate with a baseline, paired by example (scipy's paired
t-test) or not (Welch), naming a planted regression."""

import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from scipy import stats  # type: ignore[import-untyped]  # scipy ships no type stubs

from services.common.errors import InvalidArgument
from services.evaluation.core.model import (
    Contains,
    EvaluationGate,
    EvaluationReport,
    EvaluationRun,
    ExactMatch,
    ExampleResult,
    GateFailure,
    GateThreshold,
    Latency,
    LlmJudge,
    RunProgress,
    RunSpec,
    RunState,
    Score,
    ScorerSpec,
    TokenUsage,
)
from services.evaluation.core.reports import (
    PAIRED_T,
    build_report,
    compare_reports,
    evaluate_gate,
    gate_failures,
    summarize,
)
from services.experiment.core.statistics import WELCH_T

NOW = datetime(2025, 1, 1, tzinfo=UTC)
SCORERS = (
    ScorerSpec("judge", LlmJudge("rubric")),
    ScorerSpec("latency", Latency()),
    ScorerSpec("exact", ExactMatch()),
)


def results(table: Mapping[str, Mapping[str, Sequence[float | None]]]) -> list[ExampleResult]:
    """Results from {example: {scorer: [value per repeat, None for unscored]}}."""
    found = []
    for example, by_scorer in table.items():
        repeats = max(len(v) for v in by_scorer.values())
        for repeat in range(repeats):
            scores = tuple(
                Score(name, 0.0, scored=False, explanation="no")
                if values[repeat] is None
                else Score(name, float(values[repeat] or 0.0))
                for name, values in by_scorer.items()
            )
            found.append(
                ExampleResult(
                    example,
                    repeat,
                    "out",
                    scores,
                    usage=TokenUsage(10, 2),
                    cost=Decimal("0.001"),
                    currency="USD",
                )
            )
    return found


def run(scorers: Sequence[ScorerSpec] = SCORERS, run_id: str = "r1") -> EvaluationRun:
    return EvaluationRun(
        id=run_id,
        spec=RunSpec("chat", "golden", tuple(scorers), prompt_version=2, model="m"),
        state=RunState.RUNNING,
        progress=RunProgress(),
        resolved_prompt_version=2,
        report_id="",
        error="",
        create_time=NOW,
        end_time=None,
    )


def report(
    table: Mapping[str, Mapping[str, Sequence[float | None]]],
    report_id: str,
    scorers: Sequence[ScorerSpec] = SCORERS,
    baseline: EvaluationReport | None = None,
) -> EvaluationReport:
    return build_report(
        run(scorers, f"run-{report_id}"),
        results(table),
        report_id=report_id,
        prompt_version=2,
        prompt_content_hash="h",
        create_time=NOW,
        baseline=baseline,
    )


JUDGE: dict[str, list[float | None]] = {
    "a": [1.0, 0.5, 0.75],
    "b": [0.25, 0.25, 0.25],
    "c": [0.0, 1.0, None],
    "d": [0.5, 0.75, 1.0],
    "e": [None, None, None],
}


def test_summary_is_over_example_means_and_matches_scipy() -> None:
    (summary,) = summarize([SCORERS[0]], results({k: {"judge": v} for k, v in JUDGE.items()}))
    means = [
        statistics.fmean(v for v in values if v is not None)
        for k, values in JUDGE.items()
        if k != "e"
    ]
    assert summary.count == 11  # scored outputs; "e" has none
    assert summary.mean == pytest.approx(statistics.fmean(means))
    low, high = stats.t.interval(
        0.95, len(means) - 1, loc=statistics.fmean(means), scale=stats.sem(means)
    )
    assert summary.mean_interval.defined
    assert summary.mean_interval.lower == pytest.approx(low, rel=1e-9)
    assert summary.mean_interval.upper == pytest.approx(high, rel=1e-9)
    spreads = [statistics.pstdev([1.0, 0.5, 0.75]), 0.0, 0.5, statistics.pstdev([0.5, 0.75, 1.0])]
    assert summary.flakiness == pytest.approx(statistics.fmean(spreads))


@pytest.mark.parametrize(
    ("values", "count", "mean", "defined", "flakiness"),
    [
        ({"a": [0.5]}, 1, 0.5, False, 0.0),  # one example, not pass/fail: no interval
        ({"a": [1.0]}, 1, 1.0, True, 0.0),  # one pass/fail example: Wilson is defined
        ({"a": [None]}, 0, 0.0, False, 0.0),
        ({"a": [0.5, 0.5], "b": [0.5, 0.5]}, 4, 0.5, True, 0.0),  # zero width, defined
        ({"a": [1.0, 0.0], "b": [0.0, 1.0]}, 4, 0.5, True, 0.5),
    ],
)
def test_summary_edges(
    values: dict[str, list[float | None]], count: int, mean: float, defined: bool, flakiness: float
) -> None:
    (summary,) = summarize([SCORERS[0]], results({k: {"judge": v} for k, v in values.items()}))
    assert (summary.count, summary.mean_interval.defined) == (count, defined)
    assert summary.mean == pytest.approx(mean)
    assert summary.flakiness == pytest.approx(flakiness)


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval, written out independently of the code under test."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def test_pass_fail_scores_get_the_wilson_interval_inside_0_1() -> None:
    # `genai eval run` on chat-basics: 5 of 8 answers contain their reference. Student's t
    # gave [0.192, 1.058]; Wilson stays inside [0, 1].
    table = {f"e{i}": {"exact": [1.0 if i < 5 else 0.0]} for i in range(8)}
    (summary,) = summarize([SCORERS[2]], results(table))

    assert summary.mean == pytest.approx(0.625)
    low, high = wilson(5, 8)
    assert summary.mean_interval.lower == pytest.approx(low, rel=1e-9)
    assert summary.mean_interval.upper == pytest.approx(high, rel=1e-9)
    assert (round(low, 3), round(high, 3)) == (0.306, 0.863)
    # statsmodels' proportion_confint(5, 8, method="wilson") gives the same bounds.


@pytest.mark.parametrize(("passes", "n"), [(0, 5), (5, 5), (1, 1), (0, 1), (3, 40)])
def test_wilson_at_the_edges_stays_in_0_1_and_keeps_the_exact_bound(passes: int, n: int) -> None:
    table = {f"e{i}": {"exact": [1.0 if i < passes else 0.0]} for i in range(n)}
    (summary,) = summarize([SCORERS[2]], results(table))
    interval = summary.mean_interval

    assert interval.defined
    assert 0.0 <= interval.lower <= summary.mean <= interval.upper <= 1.0
    assert interval.lower < interval.upper
    if passes == 0:
        assert interval.lower == 0.0
    if passes == n:
        assert interval.upper == 1.0
    low, high = wilson(passes, n)
    assert interval.lower == pytest.approx(low, abs=1e-12)
    assert interval.upper == pytest.approx(high, abs=1e-12)


def test_pass_fail_with_repeats_is_wilson_over_examples() -> None:
    # The unit is the example: 4 examples whose pass shares are 1, 1/2, 0 and 1.
    table = {
        "a": {"exact": [1.0, 1.0]},
        "b": {"exact": [1.0, 0.0]},
        "c": {"exact": [0.0, 0.0]},
        "d": {"exact": [1.0, 1.0]},
    }
    (summary,) = summarize([SCORERS[2]], results(table))

    assert summary.count == 8
    assert summary.mean == pytest.approx(0.625)
    low, high = wilson(2.5, 4)
    assert summary.mean_interval.lower == pytest.approx(low, rel=1e-9)
    assert summary.mean_interval.upper == pytest.approx(high, rel=1e-9)


def test_continuous_quality_scores_keep_student_t_clamped_to_0_1() -> None:
    table = {"a": {"judge": [0.95]}, "b": {"judge": [1.0]}, "c": {"judge": [0.5]}}
    (summary,) = summarize([SCORERS[0]], results(table))
    means = [0.95, 1.0, 0.5]
    low, high = stats.t.interval(
        0.95, len(means) - 1, loc=statistics.fmean(means), scale=stats.sem(means)
    )
    assert high > 1.0  # t alone would leave the scorer's range

    assert summary.mean_interval.lower == pytest.approx(low, rel=1e-9)
    assert summary.mean_interval.upper == 1.0


def test_latency_and_cost_are_never_wilson_and_stay_non_negative() -> None:
    # 0/1 values of a latency or cost scorer are seconds and money, not passes.
    table = {f"e{i}": {"latency": [1.0 if i == 0 else 0.0]} for i in range(3)}
    (summary,) = summarize([SCORERS[1]], results(table))
    low, high = stats.t.interval(0.95, 2, loc=1 / 3, scale=stats.sem([1.0, 0.0, 0.0]))

    assert low < 0.0
    assert summary.mean_interval.lower == 0.0
    assert summary.mean_interval.upper == pytest.approx(high, rel=1e-9)
    assert summary.mean_interval.upper > 1.0  # no [0, 1] clamp for seconds


def test_build_report_totals_and_fields() -> None:
    table = {"a": {"judge": [1.0, 0.5], "latency": [1.0, 3.0], "exact": [1.0, 1.0]}}
    built = report(table, "rep1")
    assert (built.id, built.run_id, built.prompt, built.prompt_version, built.dataset) == (
        "rep1",
        "run-rep1",
        "chat",
        2,
        "golden",
    )
    assert [s.scorer for s in built.summaries] == ["judge", "latency", "exact"]
    assert built.summary("latency") is not None
    assert built.summary("nope") is None
    assert built.usage == TokenUsage(20, 4)
    assert (built.cost, built.currency) == (Decimal("0.002"), "USD")
    assert built.baseline_comparison is None
    assert len(built.results) == 2


GATE = EvaluationGate("golden", (GateThreshold("judge", 0.6), GateThreshold("exact", 0.9)))


@pytest.mark.parametrize(
    ("table", "failures"),
    [
        ({"a": {"judge": [0.7], "exact": [1.0]}}, ()),
        ({"a": {"judge": [0.6], "exact": [0.9]}}, ()),  # at the bound passes
        ({"a": {"judge": [0.5], "exact": [1.0]}}, (GateFailure("judge", 0.6, 0.5),)),
        (
            {"a": {"judge": [0.1], "exact": [0.0]}},
            (GateFailure("judge", 0.6, 0.1), GateFailure("exact", 0.9, 0.0)),
        ),
        ({"a": {"judge": [None], "exact": [1.0]}}, (GateFailure("judge", 0.6, None),)),
        ({"a": {"judge": [1.0]}}, (GateFailure("exact", 0.9, None),)),
    ],
)
def test_gate(
    table: Mapping[str, Mapping[str, Sequence[float | None]]], failures: tuple[GateFailure, ...]
) -> None:
    scorers = [s for s in SCORERS if s.name in table["a"]]
    built = report(table, "rep", scorers)
    outcome = evaluate_gate(built, GATE)
    assert outcome.failures == tuple(
        GateFailure(f.scorer, f.min_mean, pytest.approx(f.mean) if f.mean is not None else None)  # type: ignore[arg-type]
        for f in failures
    )
    assert outcome.passed is (not failures)
    assert outcome.report_id == "rep"
    assert gate_failures(built.summaries, GATE.thresholds) == outcome.failures


def test_gate_refuses_a_report_on_another_dataset() -> None:
    with pytest.raises(ValueError, match="not 'other'"):
        evaluate_gate(
            report({"a": {"judge": [1.0]}}, "rep", SCORERS[:1]), EvaluationGate("other", ())
        )


@pytest.mark.parametrize(
    ("document", "fields"),
    [
        ({"dataset": "golden", "thresholds": [{"scorer": "judge", "min_mean": 0.8}]}, []),
        ({"dataset": "golden", "thresholds": [{"scorer": "judge"}]}, []),  # proto default 0
        ({"thresholds": [{"scorer": "judge"}]}, ["evaluation_gate.dataset"]),
        ({"dataset": "golden", "thresholds": []}, ["evaluation_gate.thresholds"]),
        (
            {
                "dataset": "golden",
                "thresholds": [{"min_mean": 1}, {"scorer": "x", "min_mean": "hi"}],
            },
            ["evaluation_gate.thresholds[0].scorer", "evaluation_gate.thresholds[1].min_mean"],
        ),
    ],
)
def test_gate_from_json(document: dict[str, Any], fields: list[str]) -> None:
    if not fields:
        gate = EvaluationGate.from_json(document)
        assert gate.dataset == "golden"
        assert gate.thresholds[0].scorer == "judge"
        assert gate.thresholds[0].min_mean == document["thresholds"][0].get("min_mean", 0.0)
        return
    with pytest.raises(InvalidArgument) as raised:
        EvaluationGate.from_json(document)
    assert [v.field for v in raised.value.violations] == fields


# Twelve examples; the candidate drops "q07" from passing to failing on both scorers and is
# slower on every example.
BASE_JUDGE = [0.9, 0.8, 0.7, 0.95, 0.85, 0.6, 0.75, 0.9, 0.8, 0.7, 0.65, 0.85]
CAND_JUDGE = [0.85, 0.8, 0.6, 0.9, 0.7, 0.55, 0.1, 0.8, 0.75, 0.72, 0.5, 0.8]
IDS = [f"q{i:02d}" for i in range(12)]


def paired_tables() -> tuple[dict[str, Any], dict[str, Any]]:
    baseline = {
        k: {"judge": [b, b], "latency": [1.0 + i / 10, 1.1 + i / 10], "exact": [1.0, 1.0]}
        for i, (k, b) in enumerate(zip(IDS, BASE_JUDGE, strict=True))
    }
    candidate = {
        k: {
            "judge": [c, c],
            "latency": [2.0 + i / 10, 2.2 + i / 10],
            "exact": [0.0 if k == "q06" else 1.0] * 2,
        }
        for i, (k, c) in enumerate(zip(IDS, CAND_JUDGE, strict=True))
    }
    return baseline, candidate


def test_paired_comparison_matches_scipy_and_names_the_regression() -> None:
    base_table, cand_table = paired_tables()
    baseline = report(base_table, "base")
    candidate = report(cand_table, "cand", baseline=baseline)
    comparison = candidate.baseline_comparison
    assert comparison is not None
    assert (comparison.baseline_report_id, comparison.candidate_report_id) == ("base", "cand")
    judge, latency, exact = comparison.scorers
    assert (judge.scorer, judge.test, judge.paired) == ("judge", PAIRED_T, True)
    expected = stats.ttest_rel(CAND_JUDGE, BASE_JUDGE)
    assert judge.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert judge.difference == pytest.approx(
        statistics.fmean(CAND_JUDGE) - statistics.fmean(BASE_JUDGE)
    )
    ci = expected.confidence_interval(0.95)
    assert judge.difference_interval.lower == pytest.approx(ci.low, rel=1e-9)
    assert judge.difference_interval.upper == pytest.approx(ci.high, rel=1e-9)
    assert expected.pvalue < 0.05
    assert judge.regressed
    # Latency went up by exactly 1.05 s on every example: certain, and worse.
    assert latency.difference == pytest.approx(1.05)
    assert (latency.p_value, latency.regressed) == (0.0, True)
    # One example of twelve fell: not significant on its own.
    assert not exact.regressed
    assert comparison.regressed
    # Per-example regressions: quality scorers only, worst drop first.
    regressions = [(r.example_id, r.scorer) for r in comparison.example_regressions]
    assert regressions[:2] == [("q06", "exact"), ("q06", "judge")]
    assert "latency" not in {r.scorer for r in comparison.example_regressions}
    dropped = {k for k, b, c in zip(IDS, BASE_JUDGE, CAND_JUDGE, strict=True) if c < b}
    assert {r.example_id for r in comparison.example_regressions if r.scorer == "judge"} == dropped
    first = comparison.example_regressions[0]
    assert (first.baseline_value, first.candidate_value) == (1.0, 0.0)


def test_unpaired_comparison_is_welch_and_matches_scipy() -> None:
    base = {f"b{i}": {"judge": [v]} for i, v in enumerate([0.2, 0.4, 0.3, 0.5, 0.45])}
    cand = {f"c{i}": {"judge": [v]} for i, v in enumerate([0.8, 0.7, 0.9, 0.75])}
    comparison = compare_reports(
        report(base, "base", SCORERS[:1]), report(cand, "cand", SCORERS[:1])
    )
    (judge,) = comparison.scorers
    expected = stats.ttest_ind([0.8, 0.7, 0.9, 0.75], [0.2, 0.4, 0.3, 0.5, 0.45], equal_var=False)
    assert (judge.test, judge.paired) == (WELCH_T, False)
    assert judge.p_value == pytest.approx(expected.pvalue, rel=1e-8)
    assert judge.difference > 0
    assert not judge.regressed  # significantly better is no regression
    assert not comparison.regressed
    assert comparison.example_regressions == ()  # no example in common


def test_identical_reports_do_not_regress() -> None:
    table, _ = paired_tables()
    comparison = compare_reports(report(table, "a"), report(table, "b"))
    assert not comparison.regressed
    assert comparison.example_regressions == ()
    for scorer in comparison.scorers:
        assert (scorer.difference, scorer.p_value) == (0.0, 1.0)


def test_constant_unpaired_arms_that_differ_are_a_sure_difference() -> None:
    base = {f"b{i}": {"exact": [1.0]} for i in range(3)}
    cand = {f"c{i}": {"exact": [0.0]} for i in range(3)}
    (exact,) = compare_reports(
        report(base, "a", SCORERS[2:]), report(cand, "b", SCORERS[2:])
    ).scorers
    assert (exact.difference, exact.p_value, exact.regressed) == (-1.0, 0.0, True)


def test_only_scorers_in_both_reports_are_compared() -> None:
    contains = ScorerSpec("contains", Contains(("x",)))
    base = report({"a": {"judge": [1.0], "contains": [1.0]}}, "a", [SCORERS[0], contains])
    cand = report({"a": {"judge": [0.0], "exact": [1.0]}}, "b", [SCORERS[0], SCORERS[2]])
    comparison = compare_reports(base, cand)
    assert [s.scorer for s in comparison.scorers] == ["judge"]
    # One example only: no test is possible, so no significant regression either.
    assert comparison.scorers[0].p_value == 1.0
    assert not comparison.regressed
    assert [(r.example_id, r.scorer) for r in comparison.example_regressions] == [("a", "judge")]
    assert math.isclose(comparison.scorers[0].difference, -1.0)
