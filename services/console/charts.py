"""Plots as inline SVG, drawn on the server: no plotting library at request time, no script,
text a screen reader can read (`role="img"` with a title and a description listing every
value), and sharp at every width.

- `interval_chart`: one row per item, a point estimate with its interval, on one axis of one
  unit (an experiment's differences against control, a report's scorer means).
- `histogram`: how values of one unit are spread.

Callers never mix units on one axis: 0-1 scores, seconds and money each get their own chart.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from markupsafe import Markup

_WIDTH: Final = 640
_LABEL_WIDTH: Final = 170
_LABEL_CHARS: Final = 22
"""Characters of a row's label that fit left of the plot at 12 px (longer ones end in …;
the description keeps them whole)."""
_RIGHT: Final = 24
_ROW: Final = 30
_TOP: Final = 34
_BOTTOM: Final = 46
_COLOURS: Final = {"good": "#0a6b2d", "bad": "#a50e0e", "": "#0b57d0"}
_ids = iter(range(1, 1 << 62))


@dataclass(frozen=True)
class IntervalRow:
    """One item of an interval chart: its estimate and interval (None when it has none)."""

    label: str
    estimate: float
    lower: float | None = None
    upper: float | None = None
    tone: str = ""
    """"good", "bad" or "" (neutral): the colour of the mark."""


def interval_chart(
    rows: Sequence[IntervalRow],
    *,
    title: str,
    axis_label: str,
    domain: tuple[float, float] | None = None,
    reference: float | None = None,
) -> Markup:
    """Estimates with their intervals, one row each, on a shared axis (`domain`, else fitted
    to the values), with a dashed line at `reference` (0 for differences)."""
    finite = [
        v
        for row in rows
        for v in (row.estimate, row.lower, row.upper)
        if v is not None and math.isfinite(v)
    ]
    if reference is not None:
        finite.append(reference)
    low, high = domain if domain is not None else _fit(finite)
    height = _TOP + _ROW * max(1, len(rows)) + _BOTTOM
    plot_right = _WIDTH - _RIGHT

    def x(value: float) -> float:
        value = min(max(value, low), high)
        return _LABEL_WIDTH + (value - low) / (high - low) * (plot_right - _LABEL_WIDTH)

    parts = _axis(low, high, x, top=_TOP - 8, bottom=height - _BOTTOM, label=axis_label)
    if reference is not None and low <= reference <= high:
        parts.append(
            f'<line x1="{x(reference):.1f}" x2="{x(reference):.1f}" y1="{_TOP - 8}" '
            f'y2="{height - _BOTTOM}" stroke="#555e69" stroke-dasharray="4 3"/>'
        )
    described = []
    for index, row in enumerate(rows):
        y = _TOP + _ROW * index + _ROW / 2
        colour = _COLOURS.get(row.tone, _COLOURS[""])
        parts.append(
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12" '
            f'fill="#1b1f24">{escape(_clip(row.label, _LABEL_CHARS))}</text>'
        )
        if row.lower is not None and row.upper is not None:
            parts.append(
                f'<line x1="{x(row.lower):.1f}" x2="{x(row.upper):.1f}" y1="{y:.1f}" '
                f'y2="{y:.1f}" stroke="{colour}" stroke-width="2.5"/>'
            )
            for end in (row.lower, row.upper):
                parts.append(
                    f'<line x1="{x(end):.1f}" x2="{x(end):.1f}" y1="{y - 6:.1f}" '
                    f'y2="{y + 6:.1f}" stroke="{colour}" stroke-width="2"/>'
                )
        if math.isfinite(row.estimate):
            parts.append(f'<circle cx="{x(row.estimate):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        interval = (
            f" (interval {_n(row.lower)} to {_n(row.upper)})"
            if row.lower is not None and row.upper is not None
            else ""
        )
        described.append(f"{row.label}: {_n(row.estimate)}{interval}")
    return _svg(title, "; ".join(described) or "no data", height, parts)


def histogram(
    values: Sequence[float],
    *,
    title: str,
    axis_label: str,
    bins: int = 10,
    domain: tuple[float, float] | None = None,
) -> Markup:
    """How `values` (one unit) spread over `bins` equal bins of `domain` (else fitted)."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = domain if domain is not None else _fit(finite)
    counts = [0] * bins
    for value in finite:
        position = int((min(max(value, low), high) - low) / (high - low) * bins)
        counts[min(position, bins - 1)] += 1
    tallest = max(counts) if counts and max(counts) > 0 else 1
    height = 220
    plot_top, plot_bottom = 20, height - _BOTTOM
    plot_right = _WIDTH - _RIGHT
    left = 50

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * (plot_right - left)

    parts = _axis(low, high, x, top=plot_top, bottom=plot_bottom, label=axis_label)
    parts.append(
        f'<text x="{left - 6}" y="{plot_top + 10}" text-anchor="end" font-size="11" '
        f'fill="#555e69">{tallest}</text>'
    )
    width = (plot_right - left) / bins
    described = []
    for index, count in enumerate(counts):
        bar = (plot_bottom - plot_top) * count / tallest
        start = low + (high - low) * index / bins
        end = low + (high - low) * (index + 1) / bins
        parts.append(
            f'<rect x="{left + width * index + 1:.1f}" y="{plot_bottom - bar:.1f}" '
            f'width="{width - 2:.1f}" height="{bar:.1f}" fill="#0b57d0"/>'
        )
        if count:
            described.append(f"{_n(start)} to {_n(end)}: {count}")
    summary = f"{len(finite)} values. " + "; ".join(described)
    return _svg(title, summary, height, parts)


def _axis(
    low: float, high: float, x: Callable[[float], float], *, top: float, bottom: float, label: str
) -> list[str]:
    parts = [
        f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{bottom}" y2="{bottom}" stroke="#555e69"/>'
    ]
    for tick in _ticks(low, high):
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{bottom}" '
            'stroke="#d0d7de"/>'
        )
        parts.append(
            f'<text x="{x(tick):.1f}" y="{bottom + 15}" text-anchor="middle" font-size="11" '
            f'fill="#555e69">{_n(tick)}</text>'
        )
    parts.append(
        f'<text x="{(x(low) + x(high)) / 2:.1f}" y="{bottom + 34}" text-anchor="middle" '
        f'font-size="12" fill="#1b1f24">{escape(label)}</text>'
    )
    return parts


def _svg(title: str, description: str, height: int, parts: list[str]) -> Markup:
    ident = next(_ids)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" height="{height}" role="img" '
        f'aria-labelledby="chart-title-{ident} chart-desc-{ident}">'
        f'<title id="chart-title-{ident}">{escape(title)}</title>'
        f'<desc id="chart-desc-{ident}">{escape(description)}</desc>'
        f"{''.join(parts)}</svg>"
    )


def _fit(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return low - pad, high + pad


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _n(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
