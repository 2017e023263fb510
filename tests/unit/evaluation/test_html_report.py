"""The HTML report of `genai eval` and the view it renders from: each output beside its example's
inputs and reference (and ids alone without the examples), regressed examples with their
inputs, scorer units from the run's kinds or from the values, and plots that keep 0..1 scores
and seconds apart (checked on the data that goes into each plot and on its axes)."""

import re
from collections.abc import Sequence
from typing import Any

import pytest
from genai.common.v1 import money_pb2
from genai.evaluation.v1 import evaluation_pb2 as pb
from matplotlib.patches import Rectangle

from services.common.wire import duration
from services.evaluation import html_report
from services.evaluation.html_report import (
    LATENCY_ALT,
    SCORES_ALT,
    latency_figure,
    render_html,
    score_figure,
)
from services.evaluation.report_view import (
    ExampleRow,
    RegressedExampleRow,
    ScoreSeries,
    ScoreUnit,
    example_rows,
    latency_seconds,
    regressed_example_rows,
    score_series,
    scorer_units,
)

# (example id, output, answer score or None, judge score, latency s, cost)
OUTPUTS = [
    ("ex-1", "Paris", 1.0, 0.9, 2.5, 0.002),
    ("ex-2", "Milan <b>", 0.0, 0.4, 4.0, 0.003),
    ("ex-3", "", None, 0.0, 0.0, 0.0),  # failed generation
]
RUN_SCORERS = [
    pb.Scorer(name="answer", contains=pb.ContainsScorer()),
    pb.Scorer(name="judge", llm_judge=pb.LlmJudgeScorer(rubric_prompt="rubric")),
    pb.Scorer(name="latency", latency=pb.LatencyScorer()),
    pb.Scorer(name="cost", cost=pb.CostScorer()),
]


def example(example_id: str, inputs: dict[str, Any], reference: str = "") -> pb.Example:
    message = pb.Example(id=example_id, reference=reference)
    message.inputs.update(inputs)
    return message


EXAMPLES = {
    "ex-1": example("ex-1", {"country": "France", "hints": ["europe"]}, "Paris"),
    "ex-2": example("ex-2", {"country": "Italy"}, "Rome"),
    "ex-3": example("ex-3", {"country": "Peru"}),
}


def money(amount: float) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=0, nanos=round(amount * 1e9))


def evaluation_report(*, with_comparison: bool = False) -> pb.EvaluationReport:
    report = pb.EvaluationReport(
        id="rep-2", run_id="run-2", prompt="capital", prompt_version=3, dataset="capitals"
    )
    for example_id, output, answer, judge, seconds, cost in OUTPUTS:
        failed = answer is None
        result = report.results.add(
            example_id=example_id,
            output=output,
            latency=duration(seconds),
            error="backend unavailable" if failed else "",
        )
        if not failed:
            result.cost.CopyFrom(money(cost))
        result.scores.extend(
            [
                pb.Score(scorer="answer", value=answer or 0.0, scored=not failed),
                pb.Score(scorer="judge", value=judge, scored=not failed),
                pb.Score(scorer="latency", value=seconds, scored=not failed),
                pb.Score(scorer="cost", value=cost, scored=not failed),
            ]
        )
    for name, mean in [("answer", 0.5), ("judge", 0.65), ("latency", 3.25), ("cost", 0.0025)]:
        report.summaries.add(scorer=name, count=2, mean=mean)
    report.summaries[1].mean_interval.lower = 0.2
    report.summaries[1].mean_interval.upper = 1.0
    if with_comparison:
        report.baseline_comparison.baseline_report_id = "rep-1"
        report.baseline_comparison.example_regressions.add(
            example_id="ex-2", scorer="answer", baseline_value=1.0, candidate_value=0.0
        )
    return report


def table_row(page: str, containing: str) -> str:
    """The one `<tr>` of `page` that contains `containing`."""
    rows: list[str] = [r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if containing in r]
    assert len(rows) == 1, rows
    return rows[0]


def test_example_rows_carry_inputs_and_reference_beside_output_and_scores() -> None:
    rows = example_rows(evaluation_report(), EXAMPLES)

    assert rows[0] == ExampleRow(
        example_id="ex-1",
        repeat=0,
        inputs={"country": "France", "hints": ["europe"]},
        reference="Paris",
        output="Paris",
        error="",
        scores=[("answer", 1.0), ("judge", 0.9), ("latency", 2.5), ("cost", 0.002)],
    )
    assert rows[2].reference is None  # the example has no reference
    assert rows[2].error == "backend unavailable"
    assert rows[2].scores == [("answer", None), ("judge", None), ("latency", None), ("cost", None)]


def test_example_rows_of_unknown_examples_have_ids_only() -> None:
    rows = example_rows(evaluation_report(), {"ex-1": EXAMPLES["ex-1"]})

    assert [(r.example_id, r.inputs, r.reference) for r in rows[1:]] == [
        ("ex-2", {}, None),
        ("ex-3", {}, None),
    ]


def test_regressed_example_rows_carry_inputs() -> None:
    comparison = evaluation_report(with_comparison=True).baseline_comparison

    assert regressed_example_rows(comparison, EXAMPLES) == [
        RegressedExampleRow("ex-2", "answer", 1.0, 0.0, {"country": "Italy"}, "Rome")
    ]


def test_html_shows_each_outputs_inputs_and_reference_in_its_row() -> None:
    page = render_html(evaluation_report(with_comparison=True), EXAMPLES, RUN_SCORERS)

    first = table_row(page, "<td>ex-1</td>")
    cells = re.findall(r"<td>(.*?)</td>", first, re.S)
    assert cells[:5] == [
        "ex-1",
        "0",
        "<pre>country: France\nhints: [&quot;europe&quot;]</pre>",  # inputs, by name
        "<pre>Paris</pre>",  # reference
        "<pre>Paris</pre>",  # output
    ]
    assert "answer=1.000" in cells[5]
    assert "latency=2.500 s" in cells[5]
    second = table_row(page, "Milan &lt;b&gt;")  # outputs are escaped
    assert "country: Italy" in second
    assert "<pre>Rome</pre>" in second
    regressed = table_row(page, "1.000 -> 0.000")
    assert "country: Italy" in regressed
    assert "Rome" in regressed
    assert "<th>inputs</th><th>reference</th>" in page


def test_html_without_examples_falls_back_to_ids() -> None:
    page = render_html(evaluation_report())

    assert "<th>inputs</th>" not in page
    row = table_row(page, "<td>ex-1</td>")
    assert re.findall(r"<td>(.*?)</td>", row, re.S)[:3] == ["ex-1", "0", "<pre>Paris</pre>"]


@pytest.mark.parametrize("scorers", [RUN_SCORERS, []], ids=["run kinds", "read from values"])
def test_scorer_units(scorers: Sequence[pb.Scorer]) -> None:
    assert scorer_units(evaluation_report(), scorers) == {
        "answer": ScoreUnit.QUALITY,
        "judge": ScoreUnit.QUALITY,
        "latency": ScoreUnit.SECONDS,
        "cost": ScoreUnit.CURRENCY,
    }


def test_plot_data_keeps_scores_and_seconds_apart() -> None:
    report = evaluation_report()

    series = score_series(report, scorer_units(report, RUN_SCORERS))

    assert series == [
        ScoreSeries("answer", [1.0, 0.0], 0.5, None),
        ScoreSeries("judge", [0.9, 0.4], 0.65, (0.2, 1.0)),
    ]
    assert latency_seconds(report) == [2.5, 4.0]  # the failed generation is left out


def test_html_plots_scores_and_latency_separately(monkeypatch: pytest.MonkeyPatch) -> None:
    plotted: dict[str, Any] = {}

    def record(name: str, draw: Any) -> Any:
        def recorded(data: Any) -> Any:
            plotted[name] = data
            return draw(data)

        return recorded

    monkeypatch.setattr(html_report, "score_figure", record("scores", score_figure))
    monkeypatch.setattr(html_report, "latency_figure", record("latency", latency_figure))

    page = render_html(evaluation_report(), EXAMPLES)  # units read from the values

    assert [s.scorer for s in plotted["scores"]] == ["answer", "judge"]
    assert all(0.0 <= v <= 1.0 for s in plotted["scores"] for v in s.values)
    assert plotted["latency"] == [2.5, 4.0]
    assert page.count("data:image/png;base64,") == 2
    assert f'alt="{SCORES_ALT}"' in page
    assert f'alt="{LATENCY_ALT}"' in page


def test_score_axes_are_0_to_1_and_latency_axis_is_seconds() -> None:
    report = evaluation_report()
    scores = score_figure(score_series(report, scorer_units(report)))
    latency = latency_figure(latency_seconds(report))

    assert [a.get_xlim() for a in scores.axes] == [(0.0, 1.0), (0.0, 1.0)]
    assert {a.get_xlabel() for a in scores.axes} == {"score (0 to 1)"}
    assert [a.get_xlabel() for a in latency.axes] == ["seconds"]
    (axis,) = latency.axes
    assert sum(bar.get_height() for bar in axis.patches if isinstance(bar, Rectangle)) == 2


def test_html_without_quality_scorers_or_latencies_has_no_plots() -> None:
    report = pb.EvaluationReport(id="r", dataset="d")
    report.summaries.add(scorer="latency", count=0, mean=0.0)

    page = render_html(report, {}, [pb.Scorer(name="latency", latency=pb.LatencyScorer())])

    assert "data:image/png" not in page
