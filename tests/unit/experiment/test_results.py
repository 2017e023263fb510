"""`analyze_experiment`: per-variant aggregates in, proto-shaped results out."""

from datetime import UTC, datetime

import numpy as np
import pytest

from services.experiment.core.model import MetricKind
from services.experiment.core.results import (
    MetricData,
    VariantData,
    analyze_experiment,
)
from services.experiment.core.statistics import (
    TWO_PROPORTION_Z,
    WELCH_T,
    MeanSummary,
    ProportionSummary,
    mean_interval,
    proportion_interval,
    sample_ratio_mismatch,
    two_proportion_test,
    welch_test,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
METRICS = {"latency_ms": MetricKind.NUMERIC, "thumbs_up": MetricKind.BOOLEAN}

_RNG = np.random.default_rng(42)
CONTROL_LATENCY = MeanSummary.of(_RNG.normal(800.0, 40.0, 400))
TREATMENT_LATENCY = MeanSummary.of(_RNG.normal(790.0, 40.0, 380))
CONTROL_THUMBS = ProportionSummary(400, 172)
TREATMENT_THUMBS = ProportionSummary(380, 190)


def variants() -> list[VariantData]:
    return [
        VariantData(
            name="short",
            units=410,
            exposures=700,
            exposed_units=390,
            expected_exposed_units=400.0,
            metrics={
                "latency_ms": MetricData(TREATMENT_LATENCY, 700),
                "thumbs_up": MetricData(TREATMENT_THUMBS, 380),
            },
        ),
        VariantData(
            name="control",
            units=420,
            exposures=760,
            exposed_units=410,
            expected_exposed_units=400.0,
            metrics={
                "latency_ms": MetricData(CONTROL_LATENCY, 760),
                "thumbs_up": MetricData(CONTROL_THUMBS, 400),
            },
        ),
        VariantData(
            name="empty", units=0, exposures=0, exposed_units=0, expected_exposed_units=200.0
        ),
    ]


def test_results_mirror_the_proto_and_put_the_control_first() -> None:
    results = analyze_experiment(
        "checkout", variants()[:2], METRICS, control="control", compute_time=NOW
    )
    assert results.experiment == "checkout"
    assert results.compute_time == NOW
    assert [v.variant for v in results.variants] == ["control", "short"]
    assert results.control.variant == "control"
    control, short = results.variants
    assert (control.units, control.exposures) == (420, 760)
    assert (short.units, short.exposures) == (410, 700)
    assert [m.metric for m in short.metrics] == ["latency_ms", "thumbs_up"]

    latency, thumbs = short.metrics
    assert (latency.kind, latency.count, latency.units) == (MetricKind.NUMERIC, 700, 380)
    assert latency.mean == TREATMENT_LATENCY.mean
    assert latency.mean_interval == mean_interval(TREATMENT_LATENCY)
    assert latency.comparison is not None
    assert latency.comparison == welch_test(CONTROL_LATENCY, TREATMENT_LATENCY)
    assert latency.comparison.test == WELCH_T
    assert (thumbs.kind, thumbs.count, thumbs.units) == (MetricKind.BOOLEAN, 380, 380)
    assert thumbs.mean == 0.5
    assert thumbs.mean_interval == proportion_interval(TREATMENT_THUMBS)
    assert thumbs.comparison is not None
    assert thumbs.comparison == two_proportion_test(CONTROL_THUMBS, TREATMENT_THUMBS)
    assert thumbs.comparison.test == TWO_PROPORTION_Z
    assert all(m.comparison is None for m in control.metrics)

    assert results.sample_ratio == sample_ratio_mismatch([390, 410], [400.0, 400.0])


def test_confidence_reaches_every_interval() -> None:
    results = analyze_experiment(
        "checkout", variants()[:2], METRICS, control="control", compute_time=NOW, confidence=0.8
    )
    for variant in results.variants:
        for metric in variant.metrics:
            assert metric.mean_interval.confidence_level == 0.8
            if metric.comparison is not None:
                assert metric.comparison.difference_interval.confidence_level == 0.8
    narrow = results.variants[1].metrics[0].mean_interval
    wide = mean_interval(TREATMENT_LATENCY, 0.95)
    assert narrow.upper - narrow.lower < wide.upper - wide.lower


def test_a_variant_without_data_gets_undefined_results() -> None:
    results = analyze_experiment(
        "checkout", variants(), METRICS, control="control", compute_time=NOW
    )
    empty = results.variants[2]
    assert empty.variant == "empty"
    for metric in empty.metrics:
        assert (metric.count, metric.units, metric.mean) == (0, 0, 0.0)
        assert not metric.mean_interval.defined
        assert metric.comparison is not None
        assert not metric.comparison.defined
        assert metric.comparison.sequential_p_value == 1.0


def test_previous_results_make_sequential_p_values_a_running_minimum() -> None:
    first = analyze_experiment(
        "checkout", variants()[:2], METRICS, control="control", compute_time=NOW
    )
    before = first.variants[1].metrics[0].comparison
    assert before is not None
    assert before.sequential_p_value < 0.5
    # Later the treatment looks exactly like the control: on its own its sequential p-value
    # would be 1.
    later_variants = variants()[:2]
    later_variants[0] = VariantData(
        name="short",
        units=410,
        exposures=700,
        exposed_units=390,
        expected_exposed_units=400.0,
        metrics={"latency_ms": MetricData(CONTROL_LATENCY, 760)},
    )
    alone = analyze_experiment(
        "checkout", later_variants, METRICS, control="control", compute_time=NOW
    )
    kept = analyze_experiment(
        "checkout", later_variants, METRICS, control="control", compute_time=NOW, previous=first
    )
    alone_latency = alone.variants[1].metrics[0].comparison
    kept_latency = kept.variants[1].metrics[0].comparison
    assert alone_latency is not None
    assert kept_latency is not None
    assert alone_latency.sequential_p_value == 1.0
    assert kept_latency.sequential_p_value == before.sequential_p_value
    assert kept_latency.p_value == alone_latency.p_value  # fixed-horizon values are not carried
    # Thumbs-up has no treatment data now: an undefined comparison keeps its own 1.0.
    kept_thumbs = kept.variants[1].metrics[1].comparison
    assert kept_thumbs is not None
    assert not kept_thumbs.defined
    assert kept_thumbs.sequential_p_value == 1.0


def test_mixing_variances_override_the_tuned_default() -> None:
    tuned = analyze_experiment(
        "checkout", variants()[:2], METRICS, control="control", compute_time=NOW
    )
    wide = analyze_experiment(
        "checkout",
        variants()[:2],
        METRICS,
        control="control",
        compute_time=NOW,
        mixing_variances={"latency_ms": 400.0},
    )
    tuned_latency, wide_latency = (r.variants[1].metrics[0].comparison for r in (tuned, wide))
    assert tuned_latency is not None
    assert wide_latency is not None
    assert (
        wide_latency.sequential_p_value
        == welch_test(CONTROL_LATENCY, TREATMENT_LATENCY, mixing_variance=400.0).sequential_p_value
    )
    assert wide_latency.sequential_p_value != tuned_latency.sequential_p_value
    assert wide.variants[1].metrics[1] == tuned.variants[1].metrics[1]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"control": "nope"}, ValueError, "control variant 'nope'"),
        ({"metrics": {"latency_ms": MetricKind.UNSPECIFIED}}, ValueError, "have no kind"),
        ({"metrics": {"latency_ms": MetricKind.NUMERIC}}, ValueError, "unknown metrics"),
        (
            {"metrics": {"latency_ms": MetricKind.BOOLEAN, "thumbs_up": MetricKind.BOOLEAN}},
            TypeError,
            "needs a ProportionSummary, got a MeanSummary",
        ),
        ({"variants": variants()[:2] * 2}, ValueError, "unique"),
    ],
)
def test_invalid_input_is_rejected(change: dict[str, object], error: type, message: str) -> None:
    arguments: dict[str, object] = {
        "experiment": "checkout",
        "variants": variants()[:2],
        "metrics": METRICS,
        "control": "control",
        "compute_time": NOW,
    } | change
    with pytest.raises(error, match=message):
        analyze_experiment(**arguments)  # type: ignore[arg-type]


def test_previous_results_of_another_experiment_are_rejected() -> None:
    other = analyze_experiment(
        "other", variants()[:2], METRICS, control="control", compute_time=NOW
    )
    with pytest.raises(ValueError, match="previous results are of 'other'"):
        analyze_experiment(
            "checkout", variants()[:2], METRICS, control="control", compute_time=NOW, previous=other
        )
