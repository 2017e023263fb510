"""The results report: the fixed-width text table and the PNG chart."""

import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from services.experiment.core.model import MetricKind
from services.experiment.core.results import (
    ExperimentResults,
    MetricData,
    VariantData,
    analyze_experiment,
)
from services.experiment.core.statistics import MeanSummary, ProportionSummary
from services.experiment.report import plot_results, results_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = {"latency_ms": MetricKind.NUMERIC, "thumbs_up": MetricKind.BOOLEAN}


def results(
    exposed: tuple[int, int, int] = (5020, 4980, 1),
    metrics: dict[str, MetricKind] = METRICS,
) -> ExperimentResults:
    """control: latency 1..5, 40/100 thumbs up; short: latency 2..6, 55/100; tiny: one
    latency outcome. Exposed units against 5000 : 5000 : 1 expected."""

    def variant(name: str, index: int, data: dict[str, MetricData]) -> VariantData:
        return VariantData(
            name=name,
            units=exposed[index] + 7,
            exposures=2 * exposed[index],
            exposed_units=exposed[index],
            expected_exposed_units=(5000.0, 5000.0, 1.0)[index],
            metrics={name: value for name, value in data.items() if name in metrics},
        )

    return analyze_experiment(
        "checkout",
        [
            variant(
                "control",
                0,
                {
                    "latency_ms": MetricData(MeanSummary.of([1.0, 2.0, 3.0, 4.0, 5.0]), 5),
                    "thumbs_up": MetricData(ProportionSummary(100, 40), 100),
                },
            ),
            variant(
                "short",
                1,
                {
                    "latency_ms": MetricData(MeanSummary.of([2.0, 3.0, 4.0, 5.0, 6.0]), 5),
                    "thumbs_up": MetricData(ProportionSummary(100, 55), 100),
                },
            ),
            variant("tiny", 2, {"latency_ms": MetricData(MeanSummary.of([9.0]), 1)}),
        ],
        metrics,
        control="control",
        compute_time=datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC),
    )


def metric_section(table: str, metric: str) -> list[str]:
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Metric {metric} "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def row(section: list[str], variant: str) -> str:
    return next(line for line in section if line.startswith(f"{variant} "))


def test_table_header_units_and_exposures() -> None:
    table = results_table(results())
    lines = table.splitlines()
    assert lines[0] == "Experiment checkout: results at 2026-03-01 12:30:05 UTC"
    assert lines[1].startswith("Sample ratio: chi-square ")
    assert lines[1].endswith("ok")
    assert "ALARM" not in table
    assert lines[3].split() == ["variant", "units", "exposures"]
    assert lines[5].split() == ["control", "5,027", "10,040"]
    assert lines[6].split() == ["short", "4,987", "9,960"]
    assert lines[7].split() == ["tiny", "8", "2"]


def test_table_numeric_metric() -> None:
    section = metric_section(results_table(results()), "latency_ms")
    assert section[0] == (
        "Metric latency_ms (numeric, welch_t; n = units with outcomes; "
        "differences are variant - control)"
    )
    assert section[1].split()[:6] == ["variant", "n", "outcomes", "mean", "[95%", "CI]"]
    # t(0.975, 4) · √(2.5/5) = 1.9632; Welch: se 1, df 8, t(0.975, 8) = 2.3060, p = 0.3466.
    assert row(section, "control").split() == [
        "control",
        "5",
        "5",
        "3.000",
        "[1.037,",
        "4.963]",
        "(control)",
    ]
    short = row(section, "short").split()
    assert short[:9] == [
        "short",
        "5",
        "5",
        "4.000",
        "[2.037,",
        "5.963]",
        "+1.000",
        "[-1.306,",
        "+3.306]",
    ]
    assert short[9:11] == ["+33.3%", "0.347"]
    assert 0.347 <= float(short[11]) <= 1.0  # the always-valid p-value is the more cautious
    assert row(section, "tiny").split() == [
        "tiny", "1", "1", "9.000", "[n/a]", "n/a:", "treatment", "needs", "at", "least", "2", "outcomes"
    ]  # fmt: skip


def test_table_boolean_metric_in_percent() -> None:
    section = metric_section(results_table(results()), "thumbs_up")
    assert section[0].startswith("Metric thumbs_up (boolean, two_proportion_z;")
    # Wilson 40/100 and 55/100; Wald interval of +15 pp; pooled z-test p = 0.0337.
    assert row(section, "control").split()[:6] == [
        "control", "100", "100", "40.00%", "[30.94%,", "49.80%]"
    ]  # fmt: skip
    short = row(section, "short").split()
    assert short[:6] == ["short", "100", "100", "55.00%", "[45.24%,", "64.39%]"]
    assert short[6:12] == ["+15.00", "pp", "[+1.32", "pp,", "+28.68", "pp]"]
    assert short[12:14] == ["+37.5%", "0.034"]
    assert row(section, "tiny").split()[:6] == ["tiny", "0", "0", "0.00%", "[n/a]", "n/a:"]


def test_table_columns_are_fixed_width() -> None:
    section = metric_section(results_table(results()), "latency_ms")
    header, rule, _, short, _ = section[1:]
    assert len(header) == len(rule) == len(short)  # last column right-aligned to the rule
    for column in ("p-value", "always-valid p"):
        end = header.index(column) + len(column)
        assert short[end - 1] != " "
        assert end == len(short) or short[end] == " "


def test_table_marks_a_sample_ratio_mismatch() -> None:
    table = results_table(results(exposed=(5200, 4800, 1)))
    srm = table.splitlines()[1]
    assert srm.startswith("Sample ratio: chi-square 16.00, df 2, p ")
    assert "ALARM: sample ratio mismatch (p < 0.001)" in srm
    assert "do not trust these results" in srm


def test_table_without_units_and_metrics() -> None:
    table = results_table(results(exposed=(0, 0, 0), metrics={}))
    assert table.splitlines()[1] == "Sample ratio: not checked (no units)"
    assert "Metric" not in table


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png_with_a_row_per_metric(tmp_path: Path) -> None:
    path = tmp_path / "charts" / "checkout.png"
    plot_results(results(), path)
    assert path.stat().st_size > 10_000
    assert png_size(path) == (1100, 720)  # 11 x 3.6 inches per metric row, 100 dpi


def test_plot_handles_an_alarm_and_no_metrics(tmp_path: Path) -> None:
    alarm = tmp_path / "alarm.png"
    plot_results(results(exposed=(5200, 4800, 1)), str(alarm))
    assert png_size(alarm) == (1100, 720)
    empty = tmp_path / "empty.png"
    plot_results(results(exposed=(0, 0, 0), metrics={}), empty)
    assert png_size(empty) == (1100, 360)  # units and exposures only


def test_importing_the_report_does_not_import_matplotlib() -> None:
    code = "import sys, services.experiment.report; print('matplotlib' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert found.stdout.strip() == "False"
