"""An evaluation report as one self-contained HTML page: summary table, per-scorer means with
their confidence intervals (and the baseline's, when compared), the score distribution per
scorer, regressions, and every example's output and scores. Plots are PNGs inlined as data
URIs, so the file can be attached to a pull request or a CI run as it is."""

import base64
import html
import io
from collections import defaultdict

from genai.evaluation.v1 import evaluation_pb2


def render_html(report: evaluation_pb2.EvaluationReport) -> str:
    """The page for `report` (with its baseline comparison, when it has one)."""
    comparison = report.baseline_comparison if report.HasField("baseline_comparison") else None
    rows = []
    for summary in report.summaries:
        interval = (
            f"[{summary.mean_interval.lower:.3f}, {summary.mean_interval.upper:.3f}]"
            if summary.HasField("mean_interval")
            else "n/a"
        )
        rows.append(
            "<tr>"
            f"<td>{_e(summary.scorer)}</td><td>{summary.count}</td>"
            f"<td>{summary.mean:.3f}</td><td>{interval}</td><td>{summary.flakiness:.3f}</td>"
            "</tr>"
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
    examples = []
    for result in report.results:
        scores = ", ".join(
            f"{_e(s.scorer)}={s.value:.3f}" if s.scored else f"{_e(s.scorer)}=n/a"
            for s in result.scores
        )
        error = f"<div class='bad'>{_e(result.error)}</div>" if result.error else ""
        examples.append(
            f"<tr><td>{_e(result.example_id)}</td><td>{result.repeat}</td>"
            f"<td><pre>{_e(result.output)}</pre>{error}</td><td>{scores}</td></tr>"
        )
    regressed_examples = (
        "".join(
            f"<li>{_e(r.example_id)}: {_e(r.scorer)} {r.baseline_value:.3f} -> "
            f"{r.candidate_value:.3f}</li>"
            for r in comparison.example_regressions
        )
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
{report.usage.output_tokens} output tokens; cost {cost:.6f} {_e(report.cost.currency_code)}.</p>
<h2>Scorers</h2>
<table><tr><th>scorer</th><th>n</th><th>mean</th><th>95% CI</th><th>flakiness</th></tr>
{"".join(rows)}</table>
<p>Intervals: Wilson score over examples for pass/fail scorers (every score 0 or 1), else
Student's t over example means, within the scorer's range.</p>
<img alt="means with confidence intervals" src="data:image/png;base64,{_plot(report)}">
{_comparison_section(regression_rows, regressed_examples, comparison)}
<h2>Examples</h2>
<table><tr><th>example</th><th>repeat</th><th>output</th><th>scores</th></tr>
{"".join(examples)}</table>
</body></html>
"""


def _comparison_section(
    rows: list[str], examples: str, comparison: evaluation_pb2.ReportComparison | None
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
        + (f"<h3>Examples that got worse</h3><ul>{examples}</ul>" if examples else "")
    )


def _plot(report: evaluation_pb2.EvaluationReport) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores: dict[str, list[float]] = defaultdict(list)
    for result in report.results:
        for score in result.scores:
            if score.scored:
                scores[score.scorer].append(score.value)
    names = [s.scorer for s in report.summaries] or ["(none)"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 2))
    for index, summary in enumerate(report.summaries):
        low = summary.mean - summary.mean_interval.lower if summary.HasField("mean_interval") else 0
        high = (
            summary.mean_interval.upper - summary.mean if summary.HasField("mean_interval") else 0
        )
        left.errorbar(summary.mean, index, xerr=[[low], [high]], fmt="o", color="tab:blue")
    left.set_yticks(range(len(names)), names)
    left.set_title("mean score with 95% CI")
    left.grid(axis="x", alpha=0.3)
    right.boxplot([scores.get(name, [0.0]) for name in names], vert=False, tick_labels=names)
    right.set_title("score distribution")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _e(text: str) -> str:
    return html.escape(text, quote=True)
