"""The benchmarks' statistics and outputs, and a tiny real run of the `chain` benchmark."""

import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.chain import VARIANTS, ChainConfig, report, run_chain
from benchmarks.stats import (
    BenchmarkResult,
    Comparison,
    LatencySummary,
    Measurement,
    Progress,
    format_rounds,
    format_table,
    output_paths,
    percentile,
    round_ratios,
    write_json,
)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([7.0], 0, 7.0),
        ([7.0], 99, 7.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 90, 46.0),
        (list(map(float, range(1, 101))), 99, 99.01),
        (list(map(float, range(1, 101))), 50, 50.5),
    ],
)
def test_percentile_interpolates_between_ranks(values: list[float], p: float, expected: float):
    assert percentile(values, p) == pytest.approx(expected)
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


@given(
    st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_agrees_with_numpy(values: list[float], p: float):
    ordered = sorted(values)

    assert percentile(ordered, p) == pytest.approx(float(np.percentile(ordered, p)), abs=1e-6)


def test_summary_matches_numpy():
    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=6.0, sigma=0.5, size=5001).tolist()

    summary = LatencySummary.of(samples)

    assert summary.count == 5001
    assert summary.mean == pytest.approx(float(np.mean(samples)))
    assert summary.max == max(samples)
    for p, value in ((50, summary.p50), (90, summary.p90), (99, summary.p99)):
        assert value == pytest.approx(float(np.percentile(samples, p)))


def test_summary_of_nothing_and_percentiles_out_of_range_are_errors():
    with pytest.raises(ValueError, match="no latencies"):
        LatencySummary.of([])
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_latency_comparison_reports_difference_and_ratio():
    comparison = Comparison.of_latency("unary", 1, "latency p50", 200.0, 300.0, [1.4, 1.6])

    assert comparison.overhead == pytest.approx(100.0)
    assert comparison.overhead_unit == "µs"
    assert comparison.ratio == pytest.approx(1.5)
    assert comparison.round_ratios == (1.4, 1.6)


def test_rate_comparison_reports_time_added_per_item():
    # 1000/s -> 1000 µs each; 800/s -> 1250 µs each: 250 µs more per stream.
    comparison = Comparison.of_rate("stream", 16, "rate", "stream", 1000.0, 800.0)

    assert comparison.unit == "streams/s"
    assert comparison.overhead == pytest.approx(250.0)
    assert comparison.overhead_unit == "µs/stream"
    assert comparison.ratio == pytest.approx(0.8)
    assert math.isnan(Comparison.of_rate("stream", 16, "rate", "stream", 0.0, 800.0).ratio)


def test_round_ratios_pair_rounds_in_order():
    assert round_ratios([100.0, 200.0], [150.0, 220.0]) == pytest.approx([1.5, 1.1])
    with pytest.raises(ValueError, match="same number"):
        round_ratios([1.0], [1.0, 2.0])


def test_rounds_show_median_and_range_of_the_finite_ratios():
    assert format_rounds([1.5, 1.1, 1.3, math.nan]) == "1.30 (1.10-1.50)"
    assert format_rounds([math.nan]) == "-"


def test_output_paths_name_the_benchmark_and_utc_time():
    started = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)

    json_path, png_path = output_paths(Path("out"), "chain", started)

    assert json_path == Path("out/chain-20250304T050607Z.json")
    assert png_path == Path("out/chain-20250304T050607Z.png")


def test_json_output_is_plain_json_with_nan_as_null(tmp_path: Path):
    result = BenchmarkResult(
        benchmark="demo",
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        duration_s=1.5,
        baseline="direct",
        candidate="platform",
        config={"rounds": 2},
        environment={"cpu_count": 2},
        measurements=[
            Measurement(
                "unary",
                "direct",
                1,
                "latency",
                LatencySummary.of([1.0, 2.0]),
                {"calls_per_s": math.nan},
            )
        ],
        comparisons=[Comparison.of_latency("unary", 1, "latency p50", 1.0, 2.0)],
    )
    path = tmp_path / "nested" / "demo.json"

    write_json(result, path)

    document = json.loads(path.read_text())
    assert document["started_at"] == "2025-01-01T00:00:00+00:00"
    assert document["measurements"][0]["latency_us"]["p50"] == 1.5
    assert document["measurements"][0]["rates"]["calls_per_s"] is None
    assert document["comparisons"][0]["ratio"] == 2.0


def test_table_aligns_columns():
    table = format_table(["name", "value"], [["a", "1"], ["longer", "1,234"]])

    assert table.splitlines() == [
        "name    value",
        "------  -----",
        "a           1",
        "longer  1,234",
    ]
    with pytest.raises(ValueError, match="cells"):
        format_table(["a", "b"], [["only one"]])


def test_progress_prints_only_stages_and_notes_off_a_terminal():
    stream = io.StringIO()
    progress = Progress("demo", stream, interactive=False)

    progress.stage("unary c=1")
    progress.step("round 1/2 direct", total=10)
    progress.advance(5)
    progress.note("unary c=1: done")
    progress.close()

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[demo]")
    assert lines[0].endswith("unary c=1")
    assert lines[1] == "[demo] unary c=1: done"


def test_progress_rewrites_one_line_on_a_terminal():
    stream = io.StringIO()
    progress = Progress("demo", stream, interactive=True)

    progress.stage("unary c=1")
    progress.step("round 1/2 direct", total=10)
    progress.close()

    output = stream.getvalue()
    assert "\n" not in output
    assert "unary c=1 | round 1/2 direct | 0/10" in output
    assert output.endswith("\r")  # the status line is wiped at the end


async def test_a_tiny_chain_run_gives_a_well_formed_result(tmp_path: Path):
    config = ChainConfig(
        unary_calls=20,
        streams=10,
        stream_messages=4,
        concurrencies=(4,),
        load_seconds=0.2,
        rounds=2,
        load_rounds=1,
    )

    run = await run_chain(config, Progress("chain", io.StringIO(), interactive=False))

    result = run.result
    assert (result.baseline, result.candidate) == ("direct", "platform")
    scenarios = [(m.scenario, m.concurrency, m.variant) for m in result.measurements]
    assert scenarios == [
        (name, concurrency, variant.value)
        for name, concurrency in (("unary", 1), ("stream", 1), ("stream", 4))
        for variant in VARIANTS
    ]
    by_key = {(m.scenario, m.concurrency, m.variant): m for m in result.measurements}
    for variant in ("direct", "platform"):
        unary = by_key[("unary", 1, variant)]
        streams = by_key[("stream", 1, variant)]
        loaded = by_key[("stream", 4, variant)]
        assert unary.latency_us is not None
        assert unary.latency_us.count == 20
        assert streams.latency_us is not None
        assert streams.latency_us.count == 10
        assert streams.rates["messages_per_s"] == pytest.approx(4 * streams.rates["calls_per_s"])
        assert len(unary.rounds) == 2
        assert len(loaded.rounds) == 1
        assert loaded.rates["calls_per_s"] > 0
        summary = unary.latency_us
        assert 0 < summary.p50 <= summary.p90 <= summary.p99 <= summary.max
    metrics = {(c.scenario, c.concurrency, c.metric) for c in result.comparisons}
    assert ("unary", 1, "latency p50") in metrics
    assert ("stream", 1, "TTFM p99") in metrics
    assert ("stream", 4, "rate") in metrics
    for comparison in result.comparisons:
        if comparison.unit == "µs" and not comparison.metric.startswith("server CPU"):
            assert comparison.ratio > 0
            assert comparison.overhead == pytest.approx(comparison.candidate - comparison.baseline)
    printed = report(result)
    assert "latency p50" in printed
    assert "platform/direct" in printed

    json_path = tmp_path / "chain.json"
    png_path = tmp_path / "chain.png"
    write_json(result, json_path)
    run.plot(png_path)
    assert json.loads(json_path.read_text())["benchmark"] == "chain"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
