"""The `inference` benchmark's figure: latency CDFs and rate bars (as `stats.plot_results`
draws them), CPU time per stream stacked by process, and aggregate tokens/s against the number
of concurrent streams with reference lines, in one PNG."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.stats import LatencyPanel, LatencySummary, RatePanel, percentile


@dataclass(frozen=True)
class StackedPanel:
    """Bars per group and variant, each stacked from parts (e.g. CPU time by process)."""

    title: str
    unit: str
    groups: Mapping[str, Mapping[str, Mapping[str, float]]]
    """group label -> variant -> part -> value."""


@dataclass(frozen=True)
class ScalingPanel:
    """A rate against a count (e.g. tokens/s against concurrent streams), with horizontal
    reference lines (e.g. a baseline's figures) and an optional target point."""

    title: str
    unit: str
    xlabel: str
    label: str
    series: Mapping[int, float]
    references: Mapping[str, float]
    target: tuple[int, float, str] | None = None
    """(x, y, label): where the series should reach at least."""


Panel = LatencyPanel | RatePanel | StackedPanel | ScalingPanel

VARIANT_COLORS = {
    "direct": "C0",
    "platform": "C1",
    "transformers": "C2",
    "gateway": "C6",
    "http": "C7",
}
"""Fixed colours, so that a variant looks the same in every panel (`gateway` and `http` keep
the colours of their places among the gateway benchmark's five paths)."""
PART_COLORS = {"client": "0.65", "inference": "C1", "triton": "C0"}


def plot_panels(path: Path, title: str, panels: Sequence[Panel], *, subtitle: str = "") -> None:
    """Writes a PNG with one axes per panel, three to a row."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("nothing to plot")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    # At least 11 inches wide, so that the title fits above a single panel.
    figure, grid = plt.subplots(
        rows, columns, figsize=(max(5.6 * columns, 11.0), 4.4 * rows), squeeze=False
    )
    axes = [ax for row in grid for ax in row]
    for ax, panel in zip(axes, panels, strict=False):
        if isinstance(panel, LatencyPanel):
            _cdf(ax, panel)
        elif isinstance(panel, RatePanel):
            _bars(ax, panel)
        elif isinstance(panel, StackedPanel):
            _stacked(ax, panel)
        else:
            _scaling(ax, panel)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=12)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _color(label: str, index: int) -> str:
    return VARIANT_COLORS.get(label, f"C{index + 3}")


def _decimals(value: float) -> int:
    return 0 if value >= 100 else 1 if value >= 10 else 2


def _cdf(ax: Any, panel: LatencyPanel) -> None:
    ordered_series = {label: sorted(s) for label, s in panel.series.items() if s}
    largest_p99 = max((percentile(s, 99) for s in ordered_series.values()), default=0.0)
    scale, unit = (1000.0, "ms") if largest_p99 >= 20_000 else (1.0, "µs")
    left = math.inf
    for index, (label, ordered) in enumerate(ordered_series.items()):
        summary = LatencySummary.of(ordered)
        p50, p99 = summary.p50 / scale, summary.p99 / scale
        ax.step(
            [value / scale for value in ordered],
            [(i + 1) / len(ordered) for i in range(len(ordered))],
            where="post",
            color=_color(label, index),
            label=f"{label}: p50 {p50:,.{_decimals(p50)}f}, p99 {p99:,.{_decimals(p99)}f} {unit}",
        )
        left = min(left, ordered[0] / scale)
    for level in (0.5, 0.99):
        ax.axhline(level, color="0.75", linewidth=0.8, linestyle="--")
    if math.isfinite(left):
        ax.set_xlim(left * 0.95, largest_p99 / scale * 1.3)
    ax.set_ylim(0, 1.01)
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel(f"{panel.xlabel} ({unit})")
    ax.set_ylabel("fraction of streams")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _bars(ax: Any, panel: RatePanel) -> None:
    groups = list(panel.groups)
    labels = list(dict.fromkeys(label for g in groups for label in panel.groups[g]))
    width = 0.8 / max(1, len(labels))
    top = max((v for g in groups for v in panel.groups[g].values() if math.isfinite(v)), default=0)
    for index, label in enumerate(labels):
        xs = [g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        heights = [panel.groups[g].get(label, math.nan) for g in groups]
        bars = ax.bar(xs, heights, width, label=label, color=_color(label, index))
        ax.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=8)
    if len(labels) == 2:
        first, last = labels
        for g, group in enumerate(groups):
            base, other = panel.groups[group].get(first), panel.groups[group].get(last)
            if base and other:
                ax.text(g, top * 1.12, f"{other / base:.2f}x", ha="center", fontweight="bold")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, top * 1.35 if top else 1)
    ax.set_title(panel.title, fontsize=11)
    ax.set_ylabel(panel.unit)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=len(labels))


def _stacked(ax: Any, panel: StackedPanel) -> None:
    groups = list(panel.groups)
    variants = list(dict.fromkeys(v for g in groups for v in panel.groups[g]))
    parts = list(dict.fromkeys(p for g in groups for v in panel.groups[g].values() for p in v))
    width = 0.8 / max(1, len(variants))
    top = 0.0
    ticks, tick_labels = [], []
    for index, variant in enumerate(variants):
        xs = [g + (index - (len(variants) - 1) / 2) * width for g in range(len(groups))]
        bottoms = [0.0] * len(groups)
        for part_index, part in enumerate(parts):
            heights = [_finite(panel.groups[g].get(variant, {}).get(part, 0.0)) for g in groups]
            ax.bar(
                xs,
                heights,
                width * 0.95,
                bottom=bottoms,
                color=PART_COLORS.get(part, f"C{part_index + 3}"),
                edgecolor="white",
                label=part if index == 0 else None,
            )
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        for x, total in zip(xs, bottoms, strict=True):
            ax.text(x, total, f"{total:,.0f}", ha="center", va="bottom", fontsize=7)
        top = max([top, *bottoms])
        ticks += xs
        tick_labels += [f"{variant}\n{g}" for g in groups]
    ax.set_xticks(ticks, tick_labels, fontsize=7)
    ax.set_ylim(0, top * 1.2 if top else 1)
    ax.set_title(panel.title, fontsize=11)
    ax.set_ylabel(panel.unit)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=len(parts))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _scaling(ax: Any, panel: ScalingPanel) -> None:
    xs = sorted(panel.series)
    ys = [panel.series[x] for x in xs]
    ax.plot(xs, ys, marker="o", color=_color("platform", 0), label=panel.label)
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center")
    top = max([*ys, *panel.references.values(), 0.0])
    styles = ("--", ":", "-.")
    for index, (label, value) in enumerate(panel.references.items()):
        ax.axhline(
            value,
            color=_color("transformers", 0),
            linestyle=styles[index % len(styles)],
            linewidth=1.4,
            label=f"{label}: {value:.1f}",
        )
    if panel.target is not None:
        x, y, label = panel.target
        ax.plot([x], [y], marker="_", markersize=24, markeredgewidth=2.5, color="C3", label=label)
        top = max(top, y)
    ax.set_xticks(xs)
    ax.set_ylim(0, top * 1.25 if top else 1)
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.unit)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
