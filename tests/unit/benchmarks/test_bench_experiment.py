"""`scripts/bench experiment` without a platform (the run itself: tests/system/
test_bench_quick_runs.py): what counts as correct, the requests it plans, the prompt versions and
the experiment it creates, the per-example breakdown, and the report, JSON and plot."""

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks import experiment
from benchmarks.experiment import (
    GEMMA,
    MODELS,
    SALT,
    SMOLLM2,
    ExperimentConfig,
    ExperimentRun,
    Sent,
)
from benchmarks.stats import environment, with_load_at_end
from services.evaluation.core.model import Contains, Example
from services.evaluation.core.scorers import ContainsScorer, GenerationOutput
from services.experiment.cli import results_from_proto
from services.experiment.core.assignment import bucket as bucket_of
from services.experiment.core.assignment import bucket_ranges, variant_of_bucket
from services.experiment.core.model import MetricKind, Variant, validate_new_experiment
from services.experiment.core.results import MetricData, VariantData, analyze_experiment
from services.experiment.core.statistics import MeanSummary, ProportionSummary
from services.experiment.servicer import _new_experiment, results_proto
from services.prompt.files import load_prompt_file, version_hash

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        (" Paris, the city of light.", "Paris", True),
        (" paris.", "Paris", True),  # case-folded
        (" Rome.\nThe capital of France is Paris", "Paris", True),  # anywhere in the output
        (" Lyon.", "Paris", False),
        ("", "Paris", False),
        (" da Vinci", "Vinci", True),
        (" Armstrong-like", "Armstrong", True),  # a substring, as the scorer defines it
    ],
)
def test_correct_is_the_complete_facts_contains_scorer(
    output: str, reference: str, expected: bool
) -> None:
    scorer = ContainsScorer("answer", Contains((), False))
    score = asyncio.run(
        scorer.score(Example(id="0", inputs={}, reference=reference), GenerationOutput(output))
    )

    assert experiment.is_correct(output, reference) is expected
    assert score.value == (1.0 if expected else 0.0)


def test_an_empty_reference_is_never_correct() -> None:
    assert not experiment.is_correct("anything", "")


def test_the_dataset_is_complete_facts() -> None:
    rows = experiment.load_examples()

    assert len(rows) == 16
    assert rows[0] == {
        "inputs": {"text": "The capital of France is"},
        "reference": "Paris",
        "tags": {"topic": "geography"},
    }
    assert experiment.load_examples(limit=3) == rows[:3]


def test_the_plan_sends_every_example_once_per_round_by_distinct_users() -> None:
    plan = experiment.planned_requests(3, 2)

    assert plan == [
        (0, "facts-00-0"),
        (1, "facts-01-0"),
        (2, "facts-02-0"),
        (0, "facts-00-1"),
        (1, "facts-01-1"),
        (2, "facts-02-1"),
    ]
    assert len({unit for _, unit in experiment.planned_requests(16, 3)}) == 48


def test_the_fixed_salt_splits_the_full_run_and_the_quick_run_across_both_variants() -> None:
    ranges = bucket_ranges(0.0, [Variant(SMOLLM2, 1.0), Variant(GEMMA, 1.0)])

    def split(examples: int, units: int) -> dict[str, int]:
        counts = dict.fromkeys(MODELS, 0)
        for _, unit in experiment.planned_requests(examples, units):
            counts[variant_of_bucket(bucket_of(SALT, unit), ranges)] += 1
        return counts

    # What the README's run shows: 26 users on SmolLM2, 22 on Gemma (the same every run).
    assert split(16, 3) == {SMOLLM2: 26, GEMMA: 22}
    quick = split(experiment.QUICK.examples, experiment.QUICK.units)
    assert quick[SMOLLM2] > 0
    assert quick[GEMMA] > 0


def test_the_pinned_versions_differ_from_the_sample_prompt_only_in_the_model() -> None:
    base = load_prompt_file(experiment.BASE_PROMPT).version
    smollm2 = experiment.pinned_version(base, SMOLLM2)
    gemma = experiment.pinned_version(base, GEMMA)

    assert smollm2.routing.model == SMOLLM2
    assert gemma.routing.model == GEMMA
    assert smollm2.text_template == base.text_template == "{{ text }}"
    assert smollm2.parameters == base.parameters
    assert smollm2.author == experiment.AUTHOR
    assert version_hash(smollm2) != version_hash(gemma)
    gemma.routing.model = SMOLLM2
    gemma.commit_message = smollm2.commit_message
    assert gemma == smollm2
    assert not base.routing.model  # the base is not changed


def test_the_experiment_is_valid_and_splits_evenly() -> None:
    spec = experiment.experiment_spec("smollm2-vs-gemma3", "complete-ab", {SMOLLM2: 1, GEMMA: 2})

    validated = validate_new_experiment(_new_experiment(spec))
    assert [(v.name, v.weight, v.prompt_version) for v in validated.variants] == [
        (SMOLLM2, 1.0, 1),
        (GEMMA, 1.0, 2),
    ]
    assert validated.control_variant == SMOLLM2
    assert validated.salt == SALT
    assert [(m.name, m.kind, m.higher_is_better) for m in validated.metrics] == [
        ("correct", MetricKind.BOOLEAN, True),
        ("latency_s", MetricKind.NUMERIC, False),
    ]
    assert all(not v.HasField("parameters") for v in spec.variants)

    capped = experiment.experiment_spec("x", "complete-ab", {SMOLLM2: 1, GEMMA: 2}, 6)
    assert [v.parameters.max_tokens for v in capped.variants] == [6, 6]


def test_a_taken_name_gets_a_timestamp() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    assert experiment.experiment_name("smollm2-vs-gemma3", False, now) == "smollm2-vs-gemma3"
    assert (
        experiment.experiment_name("smollm2-vs-gemma3", True, now)
        == "smollm2-vs-gemma3-20260102-030405"
    )


def sent(example: int, unit: str, model: str, output: str, reference: str = "Paris") -> Sent:
    item = Sent(example=example, unit=unit, reference=reference, variant=model, model=model)
    item.output = output
    item.correct = experiment.is_correct(output, reference)
    item.latency_s = 1.5 if model == SMOLLM2 else 2.5
    item.output_tokens = 32
    return item


SENT = [
    sent(0, "facts-00-0", SMOLLM2, " Paris."),
    sent(0, "facts-00-1", GEMMA, " Paris, France."),
    sent(1, "facts-01-0", SMOLLM2, " a big planet", "Jupiter"),
    sent(1, "facts-01-1", SMOLLM2, " a big planet", "Jupiter"),
    sent(1, "facts-01-2", GEMMA, " Jupiter.", "Jupiter"),
]


def test_by_example_counts_distinct_examples_not_users() -> None:
    found = {f.model: f for f in experiment.by_example(SENT, MODELS)}

    assert (found[SMOLLM2].examples, found[SMOLLM2].correct, found[SMOLLM2].mixed) == (2, 1, 0)
    assert (found[GEMMA].examples, found[GEMMA].correct, found[GEMMA].mixed) == (2, 2, 0)


def test_example_rows_show_right_over_served_and_the_first_output() -> None:
    failed = Sent(example=2, unit="facts-02-0", reference="Shakespeare", error="UNAVAILABLE: x")
    examples = [
        {"inputs": {"text": "The capital of France is"}, "reference": "Paris"},
        {"inputs": {"text": "The largest planet in our solar system is"}, "reference": "Jupiter"},
        {"inputs": {"text": "Romeo and Juliet was written by William"}, "reference": "Shakespeare"},
    ]

    rows = experiment.example_rows([*SENT, failed], examples, MODELS)

    assert rows[0] == [
        "The capital of France is",
        "Paris",
        "1/1",
        "1/1",
        "'Paris.'",
        "'Paris, France.'",
    ]
    assert rows[1][2:4] == ["0/2", "1/1"]
    assert rows[2][2:] == ["-", "-", "-", "-"]  # the failed request served no model


def results_of(name: str) -> ExperimentRun:
    """A run whose results went through the proto, as GetExperimentResults returns them."""
    analysed = analyze_experiment(
        name,
        [
            VariantData(
                SMOLLM2,
                units=26,
                exposures=26,
                exposed_units=26,
                expected_exposed_units=1.0,
                metrics={
                    "correct": MetricData(ProportionSummary(26, 9), 26),
                    "latency_s": MetricData(MeanSummary.of([1.5] * 20 + [1.7] * 6), 26),
                },
            ),
            VariantData(
                GEMMA,
                units=22,
                exposures=22,
                exposed_units=22,
                expected_exposed_units=1.0,
                metrics={
                    "correct": MetricData(ProportionSummary(22, 15), 22),
                    "latency_s": MetricData(MeanSummary.of([2.5] * 12 + [2.9] * 10), 22),
                },
            ),
        ],
        {"correct": MetricKind.BOOLEAN, "latency_s": MetricKind.NUMERIC},
        control=SMOLLM2,
        compute_time=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    )
    run = ExperimentRun(config=ExperimentConfig(examples=2, units=3), name=name)
    run.versions = {SMOLLM2: 1, GEMMA: 2}
    run.examples = [
        {"inputs": {"text": "The capital of France is"}, "reference": "Paris"},
        {"inputs": {"text": "The largest planet in our solar system is"}, "reference": "Jupiter"},
    ]
    run.sent = list(SENT)
    run.results = results_from_proto(results_proto(analysed), 0.95)
    return run


def test_report_json_and_plot(tmp_path: Path) -> None:
    run = results_of("smollm2-vs-gemma3")
    started = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    result = experiment.build_result(run, started, 60.0, with_load_at_end(environment()))

    text = experiment.report(run, result)

    assert "load average" in text
    assert "genai experiments results smollm2-vs-gemma3:" in text
    assert "Experiment smollm2-vs-gemma3: results at 2026-01-02 03:04:00 UTC" in text
    assert "Metric correct (boolean, two_proportion_z" in text
    assert "correct: gemma3-270m 68.2% (n 22) against smollm2-135m-instruct 34.6% (n 26)" in text
    assert f"{GEMMA}: right on 2 of the 2 distinct examples it served" in text
    assert "sample ratio: ok" in text
    document = result.to_json_dict()
    assert document["benchmark"] == "experiment"
    assert document["config"]["prompt_versions"] == {SMOLLM2: 1, GEMMA: 2}
    by_variant = {m["variant"]: m for m in document["measurements"]}
    assert by_variant[SMOLLM2]["rates"]["correct_rate"] == pytest.approx(1 / 3)
    assert by_variant[GEMMA]["rates"]["requests"] == 2.0
    png = tmp_path / "experiment.png"
    experiment.plot(png, run)
    assert png.read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC


def test_a_run_against_a_given_platform_says_how_to_see_the_results_again() -> None:
    run = results_of("smollm2-vs-gemma3-20260102-030405")
    run.target = "127.0.0.1:50051"
    result = experiment.build_result(
        run, datetime(2026, 1, 2, tzinfo=UTC), 1.0, with_load_at_end(environment())
    )

    assert (
        "again: genai experiments results smollm2-vs-gemma3-20260102-030405 --target "
        "127.0.0.1:50051" in experiment.report(run, result)
    )


def test_a_variant_without_outcomes_is_reported_not_to_compare(tmp_path: Path) -> None:
    """Read back from the proto, a comparison the server left unset is None: the table then
    says `(control)` and the plot fails; the benchmark makes it an undefined comparison."""
    analysed = analyze_experiment(
        "smollm2-vs-gemma3",
        [
            VariantData(SMOLLM2, 0, 0, 0, 1.0, {}),
            VariantData(
                GEMMA,
                2,
                2,
                2,
                1.0,
                {
                    "correct": MetricData(ProportionSummary(2, 1), 2),
                    "latency_s": MetricData(MeanSummary.of([1.0, 2.0]), 2),
                },
            ),
        ],
        {"correct": MetricKind.BOOLEAN, "latency_s": MetricKind.NUMERIC},
        control=SMOLLM2,
        compute_time=datetime(2026, 1, 2, tzinfo=UTC),
    )
    read_back = results_from_proto(results_proto(analysed), 0.95)
    assert read_back.variants[1].metrics[0].comparison is None

    run = results_of("smollm2-vs-gemma3")
    run.results = experiment.with_undefined_comparisons(read_back)
    result = experiment.build_result(
        run, datetime(2026, 1, 2, tzinfo=UTC), 1.0, with_load_at_end(environment())
    )

    comparisons = [m.comparison for m in run.results.variants[1].metrics]
    assert all(c is not None and not c.defined for c in comparisons)
    assert run.results.control == read_back.control
    text = experiment.report(run, result)
    assert "n/a: too few outcomes to compare" in text
    assert "Metric correct (boolean, two_proportion_z;" in text
    assert "Metric latency_s (numeric, welch_t;" in text
    assert "correct: gemma3-270m against smollm2-135m-instruct: not enough outcomes" in text
    experiment.plot(tmp_path / "experiment.png", run)
    assert (tmp_path / "experiment.png").read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC
