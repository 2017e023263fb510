"""The results of an experiment, analysed from per-variant aggregates.

`ExperimentResults`, `VariantResults` and `MetricResults` mirror the proto messages
`ExperimentResults`, `VariantResult` and `MetricResult` field by field (same names), with
`statistics.Interval`, `statistics.Comparison` and `statistics.SrmResult` standing for
`ConfidenceInterval`, `ControlComparison` and `SampleRatioCheck`. Converting to protos is
mechanical: `MetricKind.X` (the domain model's) is `METRIC_KIND_X`; an `Interval` or `Comparison` with
`defined=False` (or a None comparison) leaves its proto field unset; extra fields (reasons,
degrees of freedom, relative lift) have no proto counterpart.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.experiment.core.model import MetricKind
from services.experiment.core.statistics import (
    DEFAULT_CONFIDENCE,
    Comparison,
    Interval,
    MeanSummary,
    ProportionSummary,
    SrmResult,
    mean_interval,
    proportion_interval,
    running_p_value,
    sample_ratio_mismatch,
    two_proportion_test,
    welch_test,
)


@dataclass(frozen=True, slots=True)
class MetricResults:
    """One metric of one variant (proto `MetricResult`)."""

    metric: str
    kind: MetricKind
    count: int
    """Outcomes recorded."""
    mean: float
    """Mean over the analysed units (the success rate for boolean metrics); 0.0 without
    any."""
    mean_interval: Interval
    comparison: Comparison | None
    """Against the control's same metric; None for the control itself."""
    units: int
    """Extra: units analysed, the n of the statistics (one value per unit)."""


@dataclass(frozen=True, slots=True)
class VariantResults:
    """One variant (proto `VariantResult`)."""

    variant: str
    units: int
    """Distinct units assigned to the variant."""
    exposures: int
    """Recorded exposures."""
    metrics: tuple[MetricResults, ...]
    """One per metric of the experiment, in the experiment's order."""


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    """The analysis of an experiment at one moment (proto `ExperimentResults`)."""

    experiment: str
    variants: tuple[VariantResults, ...]
    """Control first, then the others in the experiment's order."""
    sample_ratio: SrmResult
    compute_time: datetime

    @property
    def control(self) -> VariantResults:
        """The control variant's results."""
        return self.variants[0]


@dataclass(frozen=True, slots=True)
class MetricData:
    """What the store aggregated for one metric of one variant."""

    summary: MeanSummary | ProportionSummary
    """One value per unit: `MeanSummary` for numeric metrics, `ProportionSummary` for boolean
    ones."""
    outcomes: int
    """Outcomes recorded (several per unit possible): `MetricResults.count`."""


@dataclass(frozen=True, slots=True)
class VariantData:
    """What the store aggregated for one variant: the input of `analyze_experiment`."""

    name: str
    units: int
    """Distinct units assigned."""
    exposures: int
    """Recorded exposures."""
    exposed_units: int
    """Distinct exposed units: the observed count of the sample-ratio check."""
    expected_exposed_units: float
    """Exposed units expected under the weights (or just the weight: only the proportions
    between variants matter)."""
    metrics: Mapping[str, MetricData] = field(default_factory=dict)
    """Per metric name; a metric without an entry has no outcomes yet."""


def analyze_experiment(
    experiment: str,
    variants: Sequence[VariantData],
    metrics: Mapping[str, MetricKind],
    *,
    control: str,
    compute_time: datetime,
    confidence: float = DEFAULT_CONFIDENCE,
    previous: ExperimentResults | None = None,
    mixing_variances: Mapping[str, float] | None = None,
) -> ExperimentResults:
    """Analyses every metric of every variant against `control`, plus the sample-ratio check.

    `metrics` maps each metric name to its kind, in the experiment's order; a numeric metric's
    summaries must be `MeanSummary`s, a boolean one's `ProportionSummary`s. The sample-ratio
    check compares exposed units with expected exposed units. With `previous` results (the last
    ones reported), each defined sequential p-value becomes the running minimum with the
    previous one of the same variant and metric, as the always-valid guarantee requires.
    `mixing_variances` overrides the mSPRT τ² per metric name (default: the tuned one).

    Raises ValueError for an unknown control, duplicate variant names, data of unknown metrics,
    an UNSPECIFIED kind or previous results of another experiment, and TypeError for a summary of the wrong kind.
    """
    if previous is not None and previous.experiment != experiment:
        raise ValueError(f"previous results are of {previous.experiment!r}, not {experiment!r}")
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    if control not in names:
        raise ValueError(f"control variant {control!r} is not one of {names}")
    unspecified = sorted(name for name, kind in metrics.items() if kind is MetricKind.UNSPECIFIED)
    if unspecified:
        raise ValueError(f"metrics {unspecified} have no kind")
    for variant in variants:
        unknown = sorted(set(variant.metrics) - set(metrics))
        if unknown:
            raise ValueError(f"variant {variant.name!r} has data of unknown metrics {unknown}")
    sample_ratio = sample_ratio_mismatch(
        [variant.exposed_units for variant in variants],
        [variant.expected_exposed_units for variant in variants],
    )

    ordered = sorted(variants, key=lambda variant: variant.name != control)
    control_data = ordered[0]
    previous_p = _sequential_p_values(previous)
    mixing = mixing_variances or {}
    results = []
    for variant in ordered:
        metric_results = []
        for metric, kind in metrics.items():
            data = _metric_data(variant, metric, kind)
            summary = data.summary
            comparison = None
            if variant is not control_data:
                comparison = _compare(
                    _metric_data(control_data, metric, kind).summary,
                    summary,
                    confidence,
                    mixing.get(metric),
                )
                earlier = previous_p.get((variant.name, metric))
                if comparison.defined and earlier is not None:
                    comparison = replace(
                        comparison,
                        sequential_p_value=running_p_value(earlier, comparison.sequential_p_value),
                    )
            metric_results.append(
                MetricResults(
                    metric=metric,
                    kind=kind,
                    count=data.outcomes,
                    mean=summary.mean,
                    mean_interval=(
                        mean_interval(summary, confidence)
                        if isinstance(summary, MeanSummary)
                        else proportion_interval(summary, confidence)
                    ),
                    comparison=comparison,
                    units=summary.n,
                )
            )
        results.append(
            VariantResults(variant.name, variant.units, variant.exposures, tuple(metric_results))
        )
    return ExperimentResults(experiment, tuple(results), sample_ratio, compute_time)


def _metric_data(variant: VariantData, metric: str, kind: MetricKind) -> MetricData:
    data = variant.metrics.get(metric)
    if data is None:
        empty = MeanSummary(0, 0.0, 0.0) if kind is MetricKind.NUMERIC else ProportionSummary(0, 0)
        return MetricData(empty, 0)
    expected = MeanSummary if kind is MetricKind.NUMERIC else ProportionSummary
    if not isinstance(data.summary, expected):
        raise TypeError(
            f"metric {metric!r} of variant {variant.name!r} is {kind.value}: "
            f"needs a {expected.__name__}, got a {type(data.summary).__name__}"
        )
    return data


def _compare(
    control: MeanSummary | ProportionSummary,
    treatment: MeanSummary | ProportionSummary,
    confidence: float,
    mixing_variance: float | None,
) -> Comparison:
    if isinstance(control, MeanSummary) and isinstance(treatment, MeanSummary):
        return welch_test(control, treatment, confidence, mixing_variance=mixing_variance)
    if isinstance(control, ProportionSummary) and isinstance(treatment, ProportionSummary):
        return two_proportion_test(control, treatment, confidence, mixing_variance=mixing_variance)
    raise TypeError("control and treatment summaries differ in kind")


def _sequential_p_values(results: ExperimentResults | None) -> dict[tuple[str, str], float]:
    if results is None:
        return {}
    return {
        (variant.variant, metric.metric): metric.comparison.sequential_p_value
        for variant in results.variants
        for metric in variant.metrics
        if metric.comparison is not None and metric.comparison.defined
    }
