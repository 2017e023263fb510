"""An evaluation report as one self-contained HTML page: summary table, per-scorer means with
their confidence intervals (and the baseline's, when compared), the score distribution per
scorer, the latency distribution, regressions, and every example's inputs and reference beside
its output and scores. Plots are PNGs inlined as data URIs, so the file can be attached to a
pull request or a CI run as it is.

Quality scores (0 to 1) and latency (seconds) are never drawn on one axis: the scores plot
has only quality scorers, on a fixed 0..1 axis, and latency has a plot of its own. Cost
scorers are in the tables only. What goes into the plots and rows comes from `report_view`."""

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from genai.evaluation.v1 import evaluation_pb2

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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCORES_ALT = "mean score with 95% CI and score distribution per scorer, on a 0 to 1 axis"
LATENCY_ALT = "latency distribution, in seconds"


def render_html(
    report: evaluation_pb2.EvaluationReport,
    examples: Mapping[str, evaluation_pb2.Example] | None = None,
    scorers: Iterable[evaluation_pb2.Scorer] = (),
) -> str:
    """The page for `report` (with its baseline comparison, when it has one). `examples` (the
    dataset's, by id) puts each output beside its example's inputs and reference; without them
    the examples table shows ids only. `scorers` (the run's) say which scorers measure latency
    or cost; without them `scorer_units` reads it from the values."""
    comparison = report.baseline_comparison if report.HasField("baseline_comparison") else None
    units = scorer_units(report, scorers)
    currency = report.cost.currency_code
    rows = []
    for summary in report.summaries:
        unit = units.get(summary.scorer, ScoreUnit.QUALITY)
        interval = (
            f"[{_value(summary.mean_interval.lower, unit, currency)}, "
            f"{_value(summary.mean_interval.upper, unit, currency)}]"
            if summary.HasField("mean_interval")
            else "n/a"
        )
        rows.append(
            "<tr>"
            f"<td>{_e(summary.scorer)}</td><td>{_e(unit.value)}</td><td>{summary.count}</td>"
            f"<td>{_value(summary.mean, unit, currency)}</td><td>{interval}</td>"
            f"<td>{summary.flakiness:.3f}</td></tr>"
        )
    regression_rows = []
    if comparison is not None:
        for scorer in comparison.scorers:
            mark = "REGRESSED" if scorer.regressed else ""
            regression_rows.append(
                f"<tr class='{'bad' if scorer.regressed else ''}'>"
                f"<td>{_e(scorer.scorer)}</td><td>{scorer.baseline_mean:.3f}</td>"
                f"<td>{scorer.candidate_mean:.3f}</td><td>{scorer.difference:+.3f}</td>"
                f"<td>{scorer.p_value:.4f}</td><td>{mark}</td></tr>"
            )
    known = examples is not None
    regressed = (
        _regressed_table(regressed_example_rows(comparison, examples or {}), known)
        if comparison is not None
        else ""
    )
    cost = report.cost.units + report.cost.nanos / 1e9
    title = f"{report.prompt} v{report.prompt_version} on {report.dataset}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation: {_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
pre {{ white-space: pre-wrap; max-width: 60em; margin: 0; }}
.bad {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>Evaluation: {_e(title)}</h1>
<p>Report {_e(report.id)} of run {_e(report.run_id)}; model {_e(report.model or "routed")};
content hash {_e(report.prompt_content_hash[:12])}; {report.usage.input_tokens} input and
{report.usage.output_tokens} output tokens; cost {cost:.6f} {_e(currency)}.</p>
<h2>Scorers</h2>
<table><tr><th>scorer</th><th>unit</th><th>n</th><th>mean</th><th>95% CI</th>
<th>flakiness</th></tr>
{"".join(rows)}</table>
<p>Intervals: Wilson score over examples for pass/fail scorers (every score 0 or 1), else
Student's t over example means, within the scorer's range.</p>
{_plots(report, units)}
{_comparison_section(regression_rows, regressed, comparison)}
<h2>Examples</h2>
{_examples_table(example_rows(report, examples or {}), known, units, currency)}
</body></html>
"""


def score_figure(series: Sequence[ScoreSeries]) -> "Figure":
    """Quality scorers only, both panels on a 0..1 axis: each mean with its confidence
    interval (left) and the distribution of the scored values (right)."""
    from matplotlib.figure import Figure

    names = [s.scorer for s in series]
    figure = Figure(figsize=(11, 0.6 * len(names) + 2))
    means, spread = figure.subplots(1, 2, sharey=True)
    for index, item in enumerate(series):
        low, high = item.interval or (item.mean, item.mean)
        means.errorbar(
            item.mean, index, xerr=[[item.mean - low], [high - item.mean]], fmt="o", color="C0"
        )
    spread.boxplot(
        [s.values or [float("nan")] for s in series],
        orientation="horizontal",
        positions=range(len(series)),
    )
    means.set_yticks(range(len(names)), names)
    means.set_title("mean score with 95% CI")
    spread.set_title("score distribution")
    for axis in (means, spread):
        axis.set_xlim(0.0, 1.0)
        axis.set_xlabel("score (0 to 1)")
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def latency_figure(seconds: Sequence[float]) -> "Figure":
    """A histogram of the outputs' end-to-end latency, in seconds, on its own axis."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3))
    axis = figure.subplots()
    axis.hist(seconds, bins=min(30, max(1, len(seconds))), color="C1")
    axis.set_title("latency per output")
    axis.set_xlabel("seconds")
    axis.set_ylabel("outputs")
    axis.set_xlim(left=0.0)
    figure.tight_layout()
    return figure


def _plots(report: evaluation_pb2.EvaluationReport, units: Mapping[str, ScoreUnit]) -> str:
    series = score_series(report, units)
    seconds = latency_seconds(report)
    parts = []
    if series:
        parts.append(
            f'<img alt="{SCORES_ALT}" src="data:image/png;base64,{_png(score_figure(series))}">'
        )
    if seconds:
        parts.append(
            f'<img alt="{LATENCY_ALT}" src="data:image/png;base64,{_png(latency_figure(seconds))}">'
        )
    return "\n".join(parts)


def _comparison_section(
    rows: list[str], regressed: str, comparison: evaluation_pb2.ReportComparison | None
) -> str:
    if comparison is None:
        return ""
    verdict = (
        "<p class='bad'>Regressed against the baseline.</p>"
        if comparison.regressed
        else "<p>No regression against the baseline.</p>"
    )
    return (
        f"<h2>Against baseline {_e(comparison.baseline_report_id)}</h2>{verdict}"
        "<table><tr><th>scorer</th><th>baseline</th><th>candidate</th><th>difference</th>"
        f"<th>p-value</th><th></th></tr>{''.join(rows)}</table>"
        + (f"<h3>Examples that got worse</h3>{regressed}" if regressed else "")
    )


def _regressed_table(rows: list[RegressedExampleRow], known: bool) -> str:
    if not rows:
        return ""
    head = "<th>example</th>" + ("<th>inputs</th><th>reference</th>" if known else "")
    body = "".join(
        f"<tr><td>{_e(r.example_id)}</td>"
        + (f"<td>{_inputs(r.inputs)}</td><td>{_reference(r.reference)}</td>" if known else "")
        + f"<td>{_e(r.scorer)}</td><td>{r.baseline_value:.3f} -> {r.candidate_value:.3f}</td></tr>"
        for r in rows
    )
    return f"<table><tr>{head}<th>scorer</th><th>baseline -> candidate</th></tr>{body}</table>"


def _examples_table(
    rows: list[ExampleRow], known: bool, units: Mapping[str, ScoreUnit], currency: str
) -> str:
    head = "<th>example</th><th>repeat</th>" + (
        "<th>inputs</th><th>reference</th>" if known else ""
    )
    body = []
    for row in rows:
        scores = "<br>".join(
            f"{_e(scorer)}="
            + (
                "n/a"
                if value is None
                else _value(value, units.get(scorer, ScoreUnit.QUALITY), currency)
            )
            for scorer, value in row.scores
        )
        error = f"<div class='bad'>{_e(row.error)}</div>" if row.error else ""
        body.append(
            f"<tr><td>{_e(row.example_id)}</td><td>{row.repeat}</td>"
            + (
                f"<td>{_inputs(row.inputs)}</td><td>{_reference(row.reference)}</td>"
                if known
                else ""
            )
            + f"<td><pre>{_e(row.output)}</pre>{error}</td><td>{scores}</td></tr>"
        )
    return f"<table><tr>{head}<th>output</th><th>scores</th></tr>{''.join(body)}</table>"


def _inputs(inputs: Mapping[str, Any]) -> str:
    lines = (
        f"{name}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
        for name, value in inputs.items()
    )
    return f"<pre>{_e(chr(10).join(lines))}</pre>"


def _reference(reference: str | None) -> str:
    return "" if reference is None else f"<pre>{_e(reference)}</pre>"


def _value(value: float, unit: ScoreUnit, currency: str) -> str:
    if unit is ScoreUnit.SECONDS:
        return f"{value:.3f} s"
    if unit is ScoreUnit.CURRENCY:
        return _e(f"{value:.6f} {currency}".rstrip())
    return f"{value:.3f}"


def _png(figure: "Figure") -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _e(text: str) -> str:
    return html.escape(text, quote=True)
