"""The machine's load in every benchmark's report: the load average at the start and the end
(`load_average_text`, `run_subtitle`), and the warning a run started on a loaded machine gets
(`starved`): in the JSON's environment and under the printed report, PASS/FAIL lines unchanged.
The `chain` and `router` reports here; the others' beside their own tests."""

from datetime import UTC, datetime
from typing import Any

import pytest

from benchmarks import chain, router
from benchmarks.stats import (
    STARVED_MARGIN,
    BenchmarkResult,
    LatencySummary,
    Measurement,
    load_average_text,
    run_subtitle,
    starved,
    starved_lines,
    with_load_at_end,
)

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
QUIET = {
    "cpu_count": 2,
    "python": "3.11.7",
    "grpcio": "1.81.1",
    "load_average_at_start": [0.4, 0.3, 0.2],
    "load_average_at_end": [1.9, 0.8, 0.3],
}
BUSY = {**QUIET, "load_average_at_start": [3.25, 2.0, 1.0]}
WARNING = "baseline may be starved: load average 3.25 at start on 2 cores; ratios not reportable"


def test_the_load_average_is_shown_from_start_to_end() -> None:
    assert load_average_text(QUIET) == "load average 0.4 -> 1.9"
    assert load_average_text({"load_average_at_start": [0.4]}) == "load average 0.4"
    assert load_average_text({"load_average_at_start": []}) == ""
    assert load_average_text({}) == ""


def test_the_subtitle_says_when_and_where_with_the_load() -> None:
    assert run_subtitle(STARTED, QUIET) == (
        "2026-01-02 03:04 UTC, 2 CPUs, load average 0.4 -> 1.9, Python 3.11.7, grpcio 1.81.1"
    )
    assert "load average" not in run_subtitle(STARTED, {"cpu_count": 2})


@pytest.mark.parametrize(
    ("load", "cores", "starved_run"),
    [
        (0.0, 2, False),
        (2 - STARVED_MARGIN, 2, False),  # at the bound: still reportable
        (1.51, 2, True),
        (3.25, 2, True),
        (3.25, 4, False),
        (3.51, 4, True),
        (0.6, 1, True),
    ],
)
def test_a_run_started_above_the_cores_less_the_margin_is_starved(
    load: float, cores: int, starved_run: bool
) -> None:
    environment = {"cpu_count": cores, "load_average_at_start": [load, 0.0, 0.0]}

    warning = starved(environment)

    assert (warning is not None) == starved_run
    if warning is not None:
        assert warning == (
            f"baseline may be starved: load average {load:.2f} at start on {cores} cores; "
            "ratios not reportable"
        )
        assert starved_lines(environment) == ["", warning]
    else:
        assert starved_lines(environment) == []


@pytest.mark.parametrize(
    "environment",
    [{}, {"cpu_count": 2}, {"load_average_at_start": [9.0]}, {"cpu_count": None}],
)
def test_an_environment_that_does_not_say_is_not_starved(environment: dict[str, Any]) -> None:
    assert starved(environment) is None


def test_the_environment_at_the_end_carries_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.getloadavg", lambda: (5.0, 4.0, 3.0))

    busy = with_load_at_end(BUSY)
    quiet = with_load_at_end(QUIET)

    assert busy["load_average_at_end"] == [5.0, 4.0, 3.0]
    assert busy["baseline_starved"] == WARNING
    assert quiet["baseline_starved"] is None  # judged by the start, not by the end
    assert BUSY["load_average_at_end"] == [1.9, 0.8, 0.3]  # the argument is left alone


def _result(environment: dict[str, Any], measurements: list[Measurement]) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark="demo",
        started_at=STARTED,
        duration_s=12.0,
        baseline="direct",
        candidate="platform",
        config={"rounds": 4},
        environment=environment,
        measurements=measurements,
        comparisons=[],
    )


def test_the_chain_report_shows_the_load_and_warns_when_starved() -> None:
    quiet = chain.report(_result(QUIET, []))
    busy = chain.report(_result(BUSY, []))

    first = quiet.splitlines()[0]
    assert "load average 0.4 -> 1.9" in first
    assert "4 interleaved rounds" in first
    assert "starved" not in quiet
    assert busy.splitlines()[-1] == WARNING


def test_the_router_report_keeps_its_verdict_and_warns_under_it() -> None:
    decision = Measurement(
        scenario="router",
        variant="decision",
        concurrency=1,
        latency_metric="decision",
        latency_us=LatencySummary.of([50.0, 60.0, 70.0]),
    )

    quiet = router.report(_result(QUIET, [decision]))
    busy = router.report(_result(BUSY, [decision]))

    assert "load average 0.4 -> 1.9" in quiet.splitlines()[0]
    assert "  PASS  decision p99" in quiet
    assert "  PASS  decision p99" in busy  # the verdict stands; the warning goes beside it
    assert busy.splitlines()[-1] == WARNING
    assert "starved" not in quiet
