"""The figures of `scripts/bench structured`, from outcomes made up here (the run itself needs
Triton: tests/system/test_structured_bench_run.py)."""

from datetime import UTC, datetime

from benchmarks import structured
from benchmarks.structured import CONSTRAINED, FREE, Outcome, Run, StructuredConfig


def _outcome(example: int, variant: str, valid: bool, tokens: int, seconds: float) -> Outcome:
    return Outcome(
        example=example,
        variant=variant,
        valid=valid,
        problem="" if valid else "$: the output is not valid JSON",
        finish_reason="FINISH_REASON_STOP" if valid else "FINISH_REASON_LENGTH",
        output_tokens=tokens,
        seconds=seconds,
        ttft_s=0.1,
        text="{}" if valid else "The invoice",
    )


def _run() -> Run:
    run = Run(StructuredConfig(free_examples=2))
    run.outcomes += [
        _outcome(0, FREE, False, 100, 5.0),
        _outcome(0, CONSTRAINED, True, 90, 5.0),
        _outcome(1, FREE, True, 100, 4.0),
        _outcome(1, CONSTRAINED, True, 100, 5.0),
        _outcome(2, CONSTRAINED, False, 1000, 50.0),
    ]
    return run


def test_the_summary_counts_valid_outputs_and_repairs_per_variant() -> None:
    figures = structured.summary(_run())

    assert figures[FREE]["schema_valid"] == 1
    assert figures[FREE]["repairs_needed"] == 1
    assert figures[CONSTRAINED]["generations"] == 3
    assert figures[CONSTRAINED]["schema_valid_rate"] == 2 / 3
    assert figures[CONSTRAINED]["finish_reasons"] == {
        "FINISH_REASON_STOP": 2,
        "FINISH_REASON_LENGTH": 1,
    }
    assert figures[CONSTRAINED]["tokens_per_s"] == 1190 / 60


def test_speed_is_compared_per_example_that_ran_both_ways() -> None:
    assert structured.paired_speed_ratios(_run()) == [18 / 20, 20 / 25]


def test_the_target_is_every_constrained_output_valid() -> None:
    run = _run()
    (failed,) = structured.targets(structured.summary(run))
    run.outcomes.pop()
    (passed,) = structured.targets(structured.summary(run))

    assert failed == (False, "schema-valid under constraint: 2/3 (67%), target 100%")
    assert passed[0] is True


def test_the_report_prints_the_repairs_saved_and_the_verdict() -> None:
    run = _run()
    result = structured.build_result(
        run, datetime.now(UTC), 1.0, {"load_average_at_start": [0.5], "load_average_at_end": [1]}
    )

    text = structured.report(run, result)

    assert "FAIL  schema-valid under constraint: 2/3" in text
    assert "repairs saved on the 2 examples run both ways: 1" in text
    assert any("example 2 invalid" in note for note in result.notes)
    assert result.comparisons[0].ratio == (1190 / 60) / (200 / 9)


def test_the_report_shows_the_load_and_warns_when_the_run_started_loaded() -> None:
    run = _run()
    environment = {"cpu_count": 2, "load_average_at_start": [0.5], "load_average_at_end": [1]}
    quiet = structured.report(
        run, structured.build_result(run, datetime.now(UTC), 1.0, environment)
    )
    busy = structured.report(
        run,
        structured.build_result(
            run, datetime.now(UTC), 1.0, {**environment, "load_average_at_start": [2.0]}
        ),
    )

    assert "load average 0.5 -> 1.0" in quiet.splitlines()[0]
    assert "starved" not in quiet
    assert "FAIL  schema-valid under constraint: 2/3" in busy  # the verdict stands
    assert busy.splitlines()[-1] == (
        "baseline may be starved: load average 2.00 at start on 2 cores; ratios not reportable"
    )
