"""Human-readable experiment results: a fixed-width text table and a PNG chart.

Both read a `services.experiment.core.results.ExperimentResults`. Rates of boolean metrics are
shown in percent and their differences in percentage points (pp).
"""

import math
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from services.experiment.core.model import MetricKind
from services.experiment.core.results import ExperimentResults, MetricResults
from services.experiment.core.statistics import SRM_ALARM_P_VALUE, Interval, SrmResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_NOT_APPLICABLE = "n/a"


def results_table(results: ExperimentResults) -> str:
    """The results as text: a header, the sample-ratio line (with an ALARM marker on a
    mismatch), units and exposures per variant, then one table per metric with each variant's
    n (units with outcomes), outcomes, mean [CI], difference to the control [CI], relative
    lift, p-value and always-valid p-value."""
    compute_time = results.compute_time
    if compute_time.tzinfo is not None:
        compute_time = compute_time.astimezone(UTC)
    lines = [
        f"Experiment {results.experiment}: results at "
        f"{compute_time:%Y-%m-%d %H:%M:%S}{' UTC' if compute_time.tzinfo else ''}",
        _sample_ratio_line(results.sample_ratio),
        "",
        *_table(
            ["variant", "units", "exposures"],
            [[v.variant, f"{v.units:,}", f"{v.exposures:,}"] for v in results.variants],
            right=[False, True, True],
        ),
    ]
    control = results.control.variant
    for index, first in enumerate(results.control.metrics):
        rows = [(variant.variant, variant.metrics[index]) for variant in results.variants]
        level = _confidence_label(first.mean_interval)
        tests = sorted({m.comparison.test for _, m in rows if m.comparison is not None})
        lines += [
            "",
            f"Metric {first.metric} ({first.kind.value}"
            + (f", {', '.join(tests)}" if tests else "")
            + f"; n = units with outcomes; differences are variant - {control})",
            *_table(
                [
                    "variant",
                    "n",
                    "outcomes",
                    f"mean [{level} CI]",
                    f"difference [{level} CI]",
                    "lift",
                    "p-value",
                    "always-valid p",
                ],
                [_metric_row(name, metric, name == control) for name, metric in rows],
                right=[False, True, True, False, False, True, True, True],
            ),
        ]
    return "\n".join(lines) + "\n"


def plot_results(results: ExperimentResults, path: Path | str) -> None:
    """Writes a PNG: per metric, each variant's mean with its CI (left) and each variant's
    difference to the control with its CI against a zero line (right). Without metrics it
    shows units and exposures per variant. The title carries the sample-ratio check, in red
    on a mismatch. Variants whose interval is undefined are not drawn; their tick says n/a."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    metric_count = len(results.control.metrics)
    rows = max(1, metric_count)
    figure, axes = plt.subplots(rows, 2, figsize=(11.0, 3.6 * rows), squeeze=False)
    names = [variant.variant for variant in results.variants]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {name: colors[i % len(colors)] for i, name in enumerate(names)}

    if metric_count == 0:
        units_axis, exposures_axis = axes[0]
        for axis, label, values in (
            (units_axis, "units", [v.units for v in results.variants]),
            (exposures_axis, "exposures", [v.exposures for v in results.variants]),
        ):
            axis.bar(names, values, color=[color_of[name] for name in names])
            axis.set_title(f"{label} per variant", fontsize=11)
            axis.grid(True, axis="y", alpha=0.3)

    for row, first in enumerate(results.control.metrics):
        means_axis, differences_axis = axes[row]
        scale, unit = (100.0, " (%)") if first.kind is MetricKind.BOOLEAN else (1.0, "")
        level = _confidence_label(first.mean_interval)
        labels = []
        for position, variant in enumerate(results.variants):
            metric = variant.metrics[row]
            labels.append(
                _error_bar(
                    means_axis,
                    position,
                    variant.variant,
                    metric.mean,
                    metric.mean_interval,
                    scale,
                    color_of[variant.variant],
                )
            )
        means_axis.set_xticks(range(len(labels)), labels)
        means_axis.set_xlim(-0.5, len(labels) - 0.5)
        means_axis.set_title(f"{first.metric}: mean, {level} CI", fontsize=11)
        means_axis.set_ylabel(f"{first.metric}{unit}")
        means_axis.grid(True, axis="y", alpha=0.3)

        labels = []
        for position, variant in enumerate(results.variants[1:]):
            comparison = variant.metrics[row].comparison
            assert comparison is not None  # every variant after the control has one
            labels.append(
                _error_bar(
                    differences_axis,
                    position,
                    variant.variant,
                    comparison.difference,
                    comparison.difference_interval,
                    scale,
                    color_of[variant.variant],
                )
            )
        differences_axis.axhline(0.0, color="0.4", linewidth=1.0, linestyle="--")
        low, high = differences_axis.get_ylim()
        margin = 0.05 * (high - low)
        differences_axis.set_ylim(min(low, -margin), max(high, margin))  # zero line inside
        differences_axis.set_xticks(range(len(labels)), labels)
        differences_axis.set_xlim(-0.5, max(0.5, len(labels) - 0.5))
        differences_axis.set_title(
            f"{first.metric}: difference to {results.control.variant}, {level} CI", fontsize=11
        )
        differences_axis.set_ylabel("pp" if first.kind is MetricKind.BOOLEAN else "difference")
        differences_axis.grid(True, axis="y", alpha=0.3)

    srm = results.sample_ratio
    if not srm.defined:
        srm_title = f"sample ratio: not checked ({srm.reason})"
    else:
        srm_title = f"sample ratio: p {_p_value(srm.p_value)}" + (
            "  ALARM: sample ratio mismatch, do not trust these results" if srm.mismatch else "  ok"
        )
    figure.suptitle(
        f"Experiment {results.experiment}\n{srm_title}",
        fontsize=11,
        color="red" if srm.mismatch else "black",
    )
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)


def _error_bar(
    axis: "Axes",
    position: int,
    label: str,
    value: float,
    interval: Interval,
    scale: float,
    color: str,
) -> str:
    """Draws value ± interval at `position` when the interval is defined; returns the tick
    label (marked n/a when there was nothing to draw)."""
    if not interval.defined:
        return f"{label}\n({_NOT_APPLICABLE})"
    errors = [[(value - interval.lower) * scale], [(interval.upper - value) * scale]]
    axis.errorbar([position], [value * scale], yerr=errors, fmt="o", capsize=6, color=color)
    return label


def _sample_ratio_line(srm: SrmResult) -> str:
    if not srm.defined:
        return f"Sample ratio: not checked ({srm.reason})"
    line = (
        f"Sample ratio: chi-square {srm.chi_square:.2f}, df {srm.degrees_of_freedom}, "
        f"p {_p_value(srm.p_value)}"
    )
    if srm.mismatch:
        return (
            f"{line}  ALARM: sample ratio mismatch (p < {SRM_ALARM_P_VALUE}): units did not reach "
            "the variants in the configured proportions; do not trust these results"
        )
    return f"{line}  ok"


def _metric_row(variant: str, metric: MetricResults, is_control: bool) -> list[str]:
    rate = metric.kind is MetricKind.BOOLEAN
    counts = [variant, f"{metric.units:,}", f"{metric.count:,}"]
    mean = _value(metric.mean, rate) + " " + _bracket(metric.mean_interval, rate)
    comparison = metric.comparison
    if is_control or comparison is None:
        return [*counts, mean, "(control)", "", "", ""]
    if not comparison.defined:
        return [
            *counts,
            mean,
            f"{_NOT_APPLICABLE}: {comparison.reason}",
            "",
            "",
            "",
        ]
    difference = (
        _value(comparison.difference, rate, signed=True)
        + " "
        + _bracket(comparison.difference_interval, rate, difference=True)
    )
    lift = "" if comparison.relative_lift is None else f"{comparison.relative_lift:+.1%}"
    return [
        *counts,
        mean,
        difference,
        lift,
        _p_value(comparison.p_value),
        _p_value(comparison.sequential_p_value),
    ]


def _bracket(interval: Interval, rate: bool, *, difference: bool = False) -> str:
    if not interval.defined:
        return f"[{_NOT_APPLICABLE}]"
    lower = _value(interval.lower, rate, signed=difference)
    return f"[{lower}, {_value(interval.upper, rate, signed=difference)}]"


def _value(value: float, rate: bool, *, signed: bool = False) -> str:
    """A rate in percent (a difference of rates in pp), anything else to 4 significant
    digits."""
    sign = "+" if signed else ""
    if rate:
        return f"{value * 100:{sign}.2f}" + (" pp" if signed else "%")
    magnitude = abs(value)
    if magnitude == 0.0:
        return f"{0.0:{sign}.0f}"
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:{sign}.3e}"
    decimals = max(0, 3 - math.floor(math.log10(magnitude)))
    return f"{value:{sign}.{decimals}f}"


def _p_value(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _confidence_label(interval: Interval) -> str:
    return f"{interval.confidence_level * 100:g}%"


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]
) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if align_right else cell.ljust(width)
            for cell, width, align_right in zip(cells, widths, right, strict=True)
        ).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *[line(row) for row in rows]]
