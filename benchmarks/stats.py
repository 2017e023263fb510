"""What every benchmark shares: percentiles, the result record, JSON and PNG output, progress.

Latencies are in microseconds throughout. A comparison sets a candidate (the platform path)
against a baseline (the direct path) measured in the same run; its ratio is candidate/baseline
for every metric, so a latency ratio above 1 and a throughput ratio below 1 both mean the
platform is slower.
"""

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

PERCENTILES = (50.0, 90.0, 99.0)
"""The percentiles every latency summary reports (besides mean and max)."""


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The `p`-th percentile (0..100) of ascending `sorted_values`, interpolating linearly
    between the two nearest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is outside 0..100")
    rank = p / 100.0 * (len(sorted_values) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(sorted_values) - 1)
    low, high = sorted_values[below], sorted_values[above]
    return low + (high - low) * (rank - below)


@dataclass(frozen=True)
class LatencySummary:
    """The distribution of one series of latencies, in microseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "LatencySummary":
        """Summarizes `values`; raises ValueError when there are none."""
        ordered = sorted(values)
        if not ordered:
            raise ValueError("no latencies to summarize")
        p50, p90, p99 = (percentile(ordered, p) for p in PERCENTILES)
        return cls(
            count=len(ordered),
            mean=math.fsum(ordered) / len(ordered),
            p50=p50,
            p90=p90,
            p99=p99,
            max=ordered[-1],
        )


@dataclass(frozen=True)
class Measurement:
    """One variant of one scenario at one concurrency.

    `latency_us` summarizes all rounds together; `rates` are per second over all rounds
    (e.g. `{"streams_per_s": ..., "messages_per_s": ...}`); `rounds` keeps each round's own
    figures, which show how much the machine's noise moved them.
    """

    scenario: str
    variant: str
    concurrency: int
    latency_metric: str | None = None
    """What `latency_us` times, e.g. "latency" or "time to first message"."""
    latency_us: LatencySummary | None = None
    rates: Mapping[str, float] = field(default_factory=dict)
    rounds: Sequence[Mapping[str, float]] = ()


@dataclass(frozen=True)
class Comparison:
    """One metric of the candidate path against the baseline path, measured in the same run."""

    scenario: str
    concurrency: int
    metric: str
    unit: str
    baseline: float
    candidate: float
    overhead: float
    """What the candidate adds, in `overhead_unit` (for a rate: the time added per item)."""
    overhead_unit: str
    ratio: float
    """candidate / baseline."""
    round_ratios: Sequence[float] = ()
    """The ratio of each interleaved round on its own: its spread is the run's noise."""

    @classmethod
    def of_latency(
        cls,
        scenario: str,
        concurrency: int,
        metric: str,
        baseline: float,
        candidate: float,
        round_ratios: Sequence[float] = (),
    ) -> "Comparison":
        """Compares two latencies in µs: the overhead is their difference."""
        return cls(
            scenario=scenario,
            concurrency=concurrency,
            metric=metric,
            unit="µs",
            baseline=baseline,
            candidate=candidate,
            overhead=candidate - baseline,
            overhead_unit="µs",
            ratio=_ratio(candidate, baseline),
            round_ratios=tuple(round_ratios),
        )

    @classmethod
    def of_rate(
        cls,
        scenario: str,
        concurrency: int,
        metric: str,
        item: str,
        baseline: float,
        candidate: float,
        round_ratios: Sequence[float] = (),
    ) -> "Comparison":
        """Compares two rates of `item`s ("stream") per second: the overhead is the time each
        item costs more, in µs, at that concurrency (1/candidate - 1/baseline)."""
        overhead = (
            (1.0 / candidate - 1.0 / baseline) * 1e6 if baseline > 0 and candidate > 0 else math.nan
        )
        return cls(
            scenario=scenario,
            concurrency=concurrency,
            metric=metric,
            unit=f"{item}s/s",
            baseline=baseline,
            candidate=candidate,
            overhead=overhead,
            overhead_unit=f"µs/{item}",
            ratio=_ratio(candidate, baseline),
            round_ratios=tuple(round_ratios),
        )


def _ratio(candidate: float, baseline: float) -> float:
    return candidate / baseline if baseline else math.nan


def round_ratios(baseline: Sequence[float], candidate: Sequence[float]) -> list[float]:
    """candidate/baseline of each round, pairing the rounds in order."""
    if len(baseline) != len(candidate):
        raise ValueError("both paths need the same number of rounds")
    return [_ratio(c, b) for b, c in zip(baseline, candidate, strict=True)]


@dataclass(frozen=True)
class BenchmarkResult:
    """Everything a benchmark run found, as written to its JSON file."""

    benchmark: str
    started_at: datetime
    duration_s: float
    baseline: str
    """The variant every comparison is relative to (the direct path)."""
    candidate: str
    config: Mapping[str, Any]
    environment: Mapping[str, Any]
    measurements: Sequence[Measurement]
    comparisons: Sequence[Comparison]
    notes: Sequence[str] = ()

    def to_json_dict(self) -> dict[str, Any]:
        """The result as plain JSON types (NaN becomes null)."""
        document = asdict(self)
        document["started_at"] = self.started_at.isoformat()
        cleaned: dict[str, Any] = _json_safe(document)
        return cleaned


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_json(result: BenchmarkResult, path: Path) -> None:
    """Writes `result` to `path` (its folder is created), indented for reading and diffing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json_dict(), indent=2, ensure_ascii=False) + "\n")


def environment() -> dict[str, Any]:
    """The facts about this machine and run that a reader needs to compare two results."""
    import grpc  # the benchmarks measure gRPC paths; recorded, not otherwise needed here

    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load,
    }


def with_load_at_end(environment: Mapping[str, Any]) -> dict[str, Any]:
    """`environment` (see `environment()`) with the load average as the run ended, and
    `baseline_starved`: the warning of `starved` (None when the start was quiet enough)."""
    ended = dict(environment)
    with contextlib.suppress(OSError):
        ended["load_average_at_end"] = list(os.getloadavg())
    ended["baseline_starved"] = starved(ended)
    return ended


STARVED_MARGIN = 0.5
"""A run whose 1-minute load average at its start exceeds the machine's cores less this was
started beside other work: that work takes CPU from the baseline and the candidate unevenly."""


def load_average_text(environment: Mapping[str, Any]) -> str:
    """The 1-minute load average at the start and the end of a run, as a report prints it:
    "load average 0.4 -> 1.9" ("load average 0.4" without the end, "" without the start)."""
    start = environment.get("load_average_at_start") or []
    end = environment.get("load_average_at_end") or []
    if not start:
        return ""
    return f"load average {start[0]:.1f}" + (f" -> {end[0]:.1f}" if end else "")


def run_subtitle(started_at: datetime, environment: Mapping[str, Any]) -> str:
    """When and where a run ran, for a report's first line and a plot's subtitle:
    "2026-01-02 03:04 UTC, 2 CPUs, load average 0.4 -> 1.9, Python 3.11.7, grpcio 1.81.0"."""
    load = load_average_text(environment)
    return (
        f"{started_at:%Y-%m-%d %H:%M} UTC, {environment.get('cpu_count')} CPUs"
        f"{', ' + load if load else ''}, Python {environment.get('python')}, "
        f"grpcio {environment.get('grpcio')}"
    )


def starved(environment: Mapping[str, Any]) -> str | None:
    """A warning when the run started on a loaded machine (its 1-minute load average above
    the cores less `STARVED_MARGIN`): other processes may have starved the baseline, so its
    ratios are not to be quoted. A run's PASS/FAIL lines stand; this line goes beside them.
    None when the load was lower, or when the environment does not say."""
    start = environment.get("load_average_at_start") or []
    cores = environment.get("cpu_count")
    if not start or not cores:
        return None
    if start[0] <= cores - STARVED_MARGIN:
        return None
    return (
        f"baseline may be starved: load average {start[0]:.2f} at start on {cores} cores; "
        "ratios not reportable"
    )


def starved_lines(environment: Mapping[str, Any]) -> list[str]:
    """The lines a report ends with for `starved` (a blank line and the warning), or none."""
    warning = starved(environment)
    return ["", warning] if warning else []


def output_paths(out_dir: Path, benchmark: str, started_at: datetime) -> tuple[Path, Path]:
    """The JSON and PNG paths of a run: `OUT/NAME-YYYYmmddTHHMMSSZ.{json,png}`."""
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = out_dir / f"{benchmark}-{stamp}"
    return stem.with_suffix(".json"), stem.with_suffix(".png")


# ------------------------------------------------------------------------------------ tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [len(header) for header in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells, not {len(headers)}")
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def format_number(value: float) -> str:
    """A figure with as many digits as a reader can use: 3 significant ones, at least."""
    if not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_signed(value: float) -> str:
    """A difference, with its sign: "+212.4", "-3.1", "+32,140"."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+,.0f}" if abs(value) >= 1000 else f"{value:+.1f}"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if math.isfinite(ratio) else "n/a"


def format_rounds(ratios: Sequence[float]) -> str:
    """The median, lowest and highest of the rounds' ratios, e.g. "1.41 (1.38-1.52)"."""
    finite = sorted(ratio for ratio in ratios if math.isfinite(ratio))
    if not finite:
        return "-"
    return f"{percentile(finite, 50):.2f} ({finite[0]:.2f}-{finite[-1]:.2f})"


def latency_table(measurements: Sequence[Measurement]) -> str:
    """Each measured latency distribution: count, mean and the percentiles, in µs."""
    headers = ["scenario", "variant", "conc", "metric", "n", "mean", "p50", "p90", "p99", "max"]
    rows = []
    for m in measurements:
        if m.latency_us is None:
            continue
        s = m.latency_us
        rows.append(
            [
                m.scenario,
                m.variant,
                str(m.concurrency),
                f"{m.latency_metric or 'latency'} µs",
                str(s.count),
                *(format_number(v) for v in (s.mean, s.p50, s.p90, s.p99, s.max)),
            ]
        )
    return format_table(headers, rows)


def comparison_table(result: BenchmarkResult) -> str:
    """The candidate against the baseline, metric by metric, with the single rounds' ratios:
    their median resists a round that the machine's noise spoiled, their range shows the noise."""
    headers = [
        "scenario",
        "conc",
        "metric",
        result.baseline,
        result.candidate,
        "overhead",
        f"{result.candidate}/{result.baseline}",
        "rounds: median (min-max)",
    ]
    rows = [
        [
            c.scenario,
            str(c.concurrency),
            f"{c.metric} {c.unit}",
            format_number(c.baseline),
            format_number(c.candidate),
            f"{format_signed(c.overhead)} {c.overhead_unit}",
            format_ratio(c.ratio),
            format_rounds(c.round_ratios),
        ]
        for c in result.comparisons
    ]
    return format_table(headers, rows)


# ------------------------------------------------------------------------------------ plots


@dataclass(frozen=True)
class LatencyPanel:
    """One plot panel: the latency CDF of each variant (label -> samples in µs)."""

    title: str
    series: Mapping[str, Sequence[float]]
    xlabel: str = "latency"
    """What the samples time; the unit (µs, or ms for long ones) is added to it."""


@dataclass(frozen=True)
class RatePanel:
    """One plot panel: bars of a rate per group (e.g. concurrency) and variant."""

    title: str
    unit: str
    groups: Mapping[str, Mapping[str, float]]
    """group label -> variant -> value."""


def plot_results(
    path: Path,
    title: str,
    latency_panels: Sequence[LatencyPanel],
    rate_panels: Sequence[RatePanel] = (),
    *,
    subtitle: str = "",
) -> None:
    """Writes a PNG with a CDF panel per latency panel and a bar panel per rate panel.

    CDFs are cut a little past the largest p99 so that one slow outlier does not squash the
    body of the distribution; p50 and p99 of each variant are in its legend entry.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    panels = len(latency_panels) + len(rate_panels)
    if panels == 0:
        raise ValueError("nothing to plot")
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure, axes_grid = plt.subplots(
        rows, columns, figsize=(5.4 * columns, 4.2 * rows), squeeze=False
    )
    axes = [ax for row in axes_grid for ax in row]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants: list[str] = []
    for panel in latency_panels:
        variants += [label for label in panel.series if label not in variants]
    for rate_panel in rate_panels:
        for values in rate_panel.groups.values():
            variants += [label for label in values if label not in variants]
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(variants)}

    for ax, panel in zip(axes, latency_panels, strict=False):
        ordered_series = {label: sorted(s) for label, s in panel.series.items() if s}
        largest_p99 = max((percentile(s, 99) for s in ordered_series.values()), default=0.0)
        # Milliseconds once the figures get long (loaded scenarios), microseconds otherwise.
        scale, unit = (1000.0, "ms") if largest_p99 >= 20_000 else (1.0, "µs")
        left = math.inf
        for label, ordered in ordered_series.items():
            summary = LatencySummary.of(ordered)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(
                [value / scale for value in ordered],
                fractions,
                where="post",
                color=color_of[label],
                label=(
                    f"{label}: p50 {summary.p50 / scale:,.{_decimals(summary.p50 / scale)}f}, "
                    f"p99 {summary.p99 / scale:,.{_decimals(summary.p99 / scale)}f} {unit}"
                ),
            )
            left = min(left, ordered[0] / scale)
        for level in (0.5, 0.99):
            ax.axhline(level, color="0.75", linewidth=0.8, linestyle="--")
        if math.isfinite(left):
            ax.set_xlim(left * 0.95, largest_p99 / scale * 1.3)
        ax.set_ylim(0, 1.01)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(f"{panel.xlabel} ({unit})")
        ax.set_ylabel("fraction of calls")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)

    for ax, rate_panel in zip(axes[len(latency_panels) :], rate_panels, strict=False):
        groups = list(rate_panel.groups)
        labels = [label for label in variants if any(label in rate_panel.groups[g] for g in groups)]
        width = 0.8 / max(1, len(labels))
        top = 0.0
        for index, label in enumerate(labels):
            xs = [g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))]
            heights = [rate_panel.groups[g].get(label, 0.0) for g in groups]
            bars = ax.bar(xs, heights, width, label=label, color=color_of[label])
            ax.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=8)
            top = max([top, *heights])
        if len(labels) >= 2:
            first, last = labels[0], labels[-1]
            for g, group in enumerate(groups):
                base, other = (
                    rate_panel.groups[group].get(first),
                    rate_panel.groups[group].get(last),
                )
                if base and other:
                    ax.text(
                        g,
                        top * 1.12,
                        f"{other / base:.2f}x",
                        ha="center",
                        fontsize=9,
                        fontweight="bold",
                    )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylim(0, top * 1.4 if top else 1)
        ax.set_title(rate_panel.title, fontsize=11)
        ax.set_ylabel(rate_panel.unit)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=9, ncols=len(labels))

    for ax in axes[panels:]:
        ax.set_visible(False)
    figure.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=12)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _decimals(value: float) -> int:
    return 0 if value >= 100 else 1 if value >= 10 else 2


# ------------------------------------------------------------------------------------ progress


class Progress:
    """Shows how far a benchmark has got, on stderr.

    On a terminal one status line is rewritten in place (at most ten times a second); elsewhere
    (CI logs, pipes) only `stage` lines are printed, one per stage, so the log stays short.
    """

    def __init__(
        self, name: str, stream: IO[str] | None = None, *, interactive: bool | None = None
    ) -> None:
        self._name = name
        self._stream = stream if stream is not None else sys.stderr
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._started = time.monotonic()
        self._stage = ""
        self._detail = ""
        self._done = 0
        self._total = 0
        self._shown_at = 0.0
        self._line_width = 0

    def stage(self, text: str) -> None:
        """Starts a stage of the run (e.g. one scenario); always shown."""
        self._stage, self._detail, self._done, self._total = text, "", 0, 0
        if self._interactive:
            self._render(force=True)
        else:
            self._print(f"[{self._name}] {self._elapsed()} {text}")

    def step(self, detail: str, total: int = 0) -> None:
        """Starts a step within the stage (e.g. one round of one variant) of `total` items."""
        self._detail, self._done, self._total = detail, 0, total
        self._render(force=True)

    def advance(self, items: int = 1) -> None:
        """Counts `items` more done in the current step."""
        self._done += items
        self._render()

    def note(self, text: str) -> None:
        """Prints a line of its own (a finding, a warning), keeping the status line below it."""
        self._clear()
        self._print(f"[{self._name}] {text}")
        self._render(force=True)

    def close(self) -> None:
        """Removes the status line."""
        self._clear()

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self._started:5.1f}s"

    def _render(self, *, force: bool = False) -> None:
        if not self._interactive:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < 0.1:
            return
        self._shown_at = now
        parts = [f"[{self._name}] {self._elapsed()}", self._stage]
        if self._detail:
            parts.append(self._detail)
        if self._total:
            parts.append(f"{self._done}/{self._total}")
        elif self._done:
            parts.append(str(self._done))
        text = " | ".join(part for part in parts if part)
        padding = max(0, self._line_width - len(text))
        self._stream.write("\r" + text + " " * padding)
        self._stream.flush()
        self._line_width = len(text)

    def _clear(self) -> None:
        if self._interactive and self._line_width:
            self._stream.write("\r" + " " * self._line_width + "\r")
            self._stream.flush()
            self._line_width = 0

    def _print(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
