"""The experiment statistics against scipy: distributions, intervals, tests, the mSPRT
sequential p-value (closed form, and safety under peeking) and the sample-ratio check."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats  # type: ignore[import-untyped]

from services.experiment.core.statistics import (
    SEQUENTIAL_TUNING_UNITS,
    TWO_PROPORTION_Z,
    WELCH_T,
    MeanSummary,
    ProportionSummary,
    always_valid_p_value,
    chi_square_sf,
    default_mixing_variance,
    mean_interval,
    normal_ppf,
    normal_sf,
    proportion_interval,
    running_p_value,
    sample_ratio_mismatch,
    student_t_ppf,
    student_t_sf,
    two_proportion_test,
    welch_test,
    wilson_interval,
)

REL = 1e-8
"""Relative agreement with scipy demanded of the distribution functions."""

sample = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False),
    min_size=2,
    max_size=40,
)


def assert_close(actual: float, expected: float, rel: float = REL, abs_: float = 0.0) -> None:
    assert math.isfinite(actual)
    assert actual == pytest.approx(expected, rel=rel, abs=abs_)


# ---------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("df", [2, 2.5, 3, 4.7, 10, 29.3, 100, 1e3, 1e5, 1e6, 2e7, 1e9])
@pytest.mark.parametrize(
    "p", [1e-12, 1e-6, 0.001, 0.025, 0.1, 0.4, 0.5, 0.6, 0.9, 0.975, 0.995, 0.9995, 1 - 1e-9]
)
def test_student_t_ppf_matches_scipy(df: float, p: float) -> None:
    expected = stats.t.ppf(p, df)
    assert abs(student_t_ppf(p, df) - expected) <= REL * max(1.0, abs(expected))


@pytest.mark.parametrize("p", [1e-9, 0.025, 0.3, 0.975, 1 - 1e-9])
@pytest.mark.parametrize("df", [1, 2, math.inf])
def test_student_t_ppf_closed_forms(df: float, p: float) -> None:
    assert_close(
        student_t_ppf(p, df), stats.t.ppf(p, df) if math.isfinite(df) else stats.norm.ppf(p)
    )


@settings(max_examples=300, deadline=None)
@given(
    p=st.floats(min_value=1e-12, max_value=1 - 1e-12),
    df=st.floats(min_value=1.0, max_value=1e7),
)
def test_student_t_ppf_matches_scipy_anywhere(p: float, df: float) -> None:
    expected = stats.t.ppf(p, df)
    assert abs(student_t_ppf(p, df) - expected) <= REL * max(1.0, abs(expected))


@settings(max_examples=300, deadline=None)
@given(
    t=st.floats(min_value=-200.0, max_value=200.0),
    df=st.floats(min_value=0.5, max_value=1e7),
)
def test_student_t_sf_matches_scipy(t: float, df: float) -> None:
    expected = stats.t.sf(t, df)
    assume(expected > 1e-290)
    assert_close(student_t_sf(t, df), expected)


def test_student_t_sf_keeps_far_tails_precise() -> None:
    assert_close(student_t_sf(40.0, 3), stats.t.sf(40.0, 3))
    assert_close(student_t_sf(12.0, 1e6), stats.t.sf(12.0, 1e6))
    assert_close(student_t_sf(-30.0, 5), stats.t.sf(-30.0, 5))
    assert student_t_sf(0.0, 7) == 0.5


@settings(max_examples=300, deadline=None)
@given(
    x=st.floats(min_value=0.0, max_value=3000.0),
    df=st.integers(min_value=1, max_value=1000),
)
def test_chi_square_sf_matches_scipy(x: float, df: int) -> None:
    expected = stats.chi2.sf(x, df)
    assume(expected > 1e-290)
    assert_close(chi_square_sf(x, df), expected, abs_=1e-300)


@pytest.mark.parametrize("z", [-8.0, -1.96, 0.0, 0.5, 1.96, 5.0, 20.0])
def test_normal_sf_and_ppf_match_scipy(z: float) -> None:
    assert_close(normal_sf(z), stats.norm.sf(z))
    p = stats.norm.cdf(z)
    if 0 < p < 1:
        assert_close(normal_ppf(p), stats.norm.ppf(p), abs_=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: student_t_ppf(0.0, 5), "p must be in"),
        (lambda: student_t_ppf(1.0, 5), "p must be in"),
        (lambda: student_t_ppf(0.5, 0.0), "degrees of freedom"),
        (lambda: student_t_sf(1.0, -1.0), "degrees of freedom"),
        (lambda: chi_square_sf(1.0, 0), "degrees of freedom"),
        (lambda: normal_ppf(1.5), "p must be in"),
    ],
)
def test_distributions_reject_invalid_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# -------------------------------------------------------------------------------- summaries


@given(sample)
def test_mean_summary_matches_numpy(values: list[float]) -> None:
    summary = MeanSummary.of(values)
    assert summary.n == len(values)
    assert_close(summary.mean, float(np.mean(values)), rel=1e-9, abs_=1e-9)
    assert summary.variance == pytest.approx(np.var(values, ddof=1), rel=1e-6, abs=1e-6)
    assert summary.variance >= 0.0


@pytest.mark.parametrize("value", [0.1, 1e6 + 0.3, -7.25, 0.0])
def test_constant_values_have_exactly_zero_variance(value: float) -> None:
    assert MeanSummary.of([value] * 1000).variance == 0.0


def test_thin_summaries_have_zero_mean_and_variance() -> None:
    assert MeanSummary(0, 0.0, 0.0).mean == 0.0
    assert MeanSummary(0, 0.0, 0.0).variance == 0.0
    assert MeanSummary(1, 4.0, 16.0).variance == 0.0
    assert ProportionSummary(0, 0).mean == 0.0
    assert ProportionSummary(8, 6).mean == 0.75


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MeanSummary(-1, 0.0, 0.0), "n must be >= 0"),
        (lambda: MeanSummary(0, 1.0, 1.0), "zero sums"),
        (lambda: MeanSummary(3, 1.0, -1.0), "total_squares must be >= 0"),
        (lambda: MeanSummary(3, math.nan, 1.0), "finite"),
        (lambda: ProportionSummary(-2, 0), "n must be >= 0"),
        (lambda: ProportionSummary(3, 4), "successes must be in"),
        (lambda: ProportionSummary(3, -1), "successes must be in"),
    ],
)
def test_summaries_reject_invalid_input(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -------------------------------------------------------------------------------- intervals


@given(sample, st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_mean_interval_matches_scipy(values: list[float], confidence: float) -> None:
    assume(np.var(values) > 1e-2)
    interval = mean_interval(MeanSummary.of(values), confidence)
    low, high = stats.t.interval(
        confidence, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    assert interval.defined
    assert interval.confidence_level == confidence
    assert_close(interval.lower, low, rel=1e-6, abs_=1e-9)
    assert_close(interval.upper, high, rel=1e-6, abs_=1e-9)


def test_mean_interval_known_value() -> None:
    interval = mean_interval(MeanSummary.of([1.0, 2.0, 3.0, 4.0, 5.0]))
    half = stats.t.ppf(0.975, 4) * math.sqrt(2.5 / 5)
    assert (interval.lower, interval.upper) == pytest.approx((3 - half, 3 + half), rel=1e-12)


@pytest.mark.parametrize(
    ("summary", "reason"),
    [(MeanSummary(0, 0.0, 0.0), "has 0"), (MeanSummary(1, 3.0, 9.0), "has 1")],
)
def test_mean_interval_is_undefined_below_two_outcomes(summary: MeanSummary, reason: str) -> None:
    interval = mean_interval(summary)
    assert not interval.defined
    assert reason in interval.reason
    assert interval.lower == interval.upper == summary.mean


def test_mean_interval_of_constant_values_has_zero_width() -> None:
    interval = mean_interval(MeanSummary.of([2.5] * 10))
    assert interval.defined
    assert interval.lower == interval.upper == 2.5


@pytest.mark.parametrize(
    ("successes", "n"), [(0, 1), (0, 20), (1, 20), (7, 20), (20, 20), (431, 1000), (1, 10**6)]
)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.999])
def test_proportion_interval_matches_scipy_wilson(
    successes: int, n: int, confidence: float
) -> None:
    interval = proportion_interval(ProportionSummary(n, successes), confidence)
    expected = stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")
    assert interval.defined
    assert_close(interval.lower, expected.low, rel=1e-9, abs_=1e-12)
    assert_close(interval.upper, expected.high, rel=1e-9, abs_=1e-12)
    assert 0.0 <= interval.lower <= successes / n <= interval.upper <= 1.0


def test_wilson_interval_of_a_fractional_rate_is_the_wilson_formula() -> None:
    # A mean of per-example pass shares (repeats) goes in as the rate; integer counts give
    # exactly the proportion interval.
    assert wilson_interval(7 / 20, 20) == proportion_interval(ProportionSummary(20, 7))
    z = stats.norm.ppf(0.975)
    p, n = 0.625, 4
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    interval = wilson_interval(p, n)
    assert_close(interval.lower, center - half, rel=1e-12, abs_=1e-15)
    assert_close(interval.upper, center + half, rel=1e-12, abs_=1e-15)
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match="rate"):
            wilson_interval(bad, 3)
    assert not wilson_interval(0.0, 0).defined


def test_proportion_interval_is_undefined_without_outcomes() -> None:
    interval = proportion_interval(ProportionSummary(0, 0))
    assert not interval.defined
    assert interval.reason == "no outcomes"


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 95.0])
def test_intervals_reject_invalid_confidence(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        mean_interval(MeanSummary.of([1.0, 2.0]), confidence)
    with pytest.raises(ValueError, match="confidence"):
        proportion_interval(ProportionSummary(2, 1), confidence)


# ------------------------------------------------------------------------------ Welch t-test


def assert_matches_ttest(
    control: list[float], treatment: list[float], confidence: float = 0.95
) -> None:
    comparison = welch_test(MeanSummary.of(control), MeanSummary.of(treatment), confidence)
    expected = stats.ttest_ind(treatment, control, equal_var=False)
    interval = expected.confidence_interval(confidence)
    assert comparison.defined
    assert comparison.test == WELCH_T
    assert_close(comparison.difference, float(np.mean(treatment) - np.mean(control)), 1e-9, 1e-9)
    assert_close(comparison.statistic, expected.statistic, rel=1e-6, abs_=1e-9)
    assert comparison.degrees_of_freedom is not None
    assert_close(comparison.degrees_of_freedom, expected.df, rel=1e-6)
    assert_close(comparison.p_value, expected.pvalue, rel=1e-6, abs_=1e-12)
    assert_close(comparison.difference_interval.lower, interval.low, rel=1e-6, abs_=1e-9)
    assert_close(comparison.difference_interval.upper, interval.high, rel=1e-6, abs_=1e-9)
    assert comparison.difference_interval.confidence_level == confidence


def test_welch_test_known_values() -> None:
    assert_matches_ttest([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 3.0, 4.0, 5.0, 6.0])
    assert_matches_ttest([10.0, 12.0, 9.5, 11.0], [15.0, 14.0, 18.5, 13.0, 16.0, 17.5], 0.9)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on [5, 5, 5]
def test_welch_test_with_one_constant_arm() -> None:
    # One arm without variance is still a test: the other arm carries the uncertainty.
    assert_matches_ttest([5.0, 5.0, 5.0], [4.0, 6.5, 5.5, 7.0])


@settings(max_examples=200, deadline=None)
@given(sample, sample, st.sampled_from([0.9, 0.95, 0.99]))
def test_welch_test_matches_scipy(
    control: list[float], treatment: list[float], confidence: float
) -> None:
    assume(np.var(control) > 1e-2 and np.var(treatment) > 1e-2)
    assert_matches_ttest(control, treatment, confidence)


def test_welch_test_detects_a_planted_regression() -> None:
    rng = np.random.default_rng(7)
    control = rng.normal(100.0, 20.0, 2000)
    treatment = rng.normal(97.0, 20.0, 2000)  # 0.15 standard deviations worse
    comparison = welch_test(MeanSummary.of(control), MeanSummary.of(treatment))
    assert comparison.p_value < 0.05
    assert comparison.difference_interval.upper < 0.0
    assert comparison.relative_lift is not None
    assert -0.05 < comparison.relative_lift < -0.01


def test_welch_test_rejects_about_five_percent_without_an_effect() -> None:
    rng = np.random.default_rng(11)
    outcomes = rng.normal(100.0, 20.0, (300, 2, 2000))
    comparisons = [
        welch_test(MeanSummary.of(control), MeanSummary.of(treatment))
        for control, treatment in outcomes
    ]
    rejected = sum(c.p_value < 0.05 for c in comparisons) / len(comparisons)
    excluding_zero = sum(
        c.difference_interval.lower > 0 or c.difference_interval.upper < 0 for c in comparisons
    ) / len(comparisons)
    assert 0.02 <= rejected <= 0.09
    assert excluding_zero == rejected  # the interval and the p-value agree


@pytest.mark.parametrize(
    ("control", "treatment", "reason"),
    [
        (MeanSummary(0, 0.0, 0.0), MeanSummary.of([1.0, 2.0]), "control needs at least 2"),
        (MeanSummary.of([1.0, 2.0]), MeanSummary.of([3.0]), "treatment needs at least 2"),
        (MeanSummary.of([4.0] * 5), MeanSummary.of([6.0] * 7), "no variance in either arm"),
    ],
)
def test_welch_test_is_undefined_on_thin_data(
    control: MeanSummary, treatment: MeanSummary, reason: str
) -> None:
    comparison = welch_test(control, treatment)
    assert not comparison.defined
    assert reason in comparison.reason
    assert comparison.p_value == comparison.sequential_p_value == 1.0
    assert comparison.difference == treatment.mean - control.mean
    assert comparison.difference_interval.lower == comparison.difference_interval.upper
    assert not comparison.difference_interval.defined
    assert all(
        math.isfinite(x) for x in (comparison.difference, comparison.statistic, comparison.p_value)
    )


def test_relative_lift_takes_the_sign_of_the_difference() -> None:
    positive = welch_test(MeanSummary.of([10.0, 12.0]), MeanSummary.of([12.0, 13.0]))
    negative_control = welch_test(MeanSummary.of([-10.0, -12.0]), MeanSummary.of([-9.0, -8.0]))
    zero_control = welch_test(MeanSummary.of([-1.0, 1.0]), MeanSummary.of([2.0, 3.0]))
    assert positive.relative_lift == pytest.approx(1.5 / 11)
    assert negative_control.relative_lift == pytest.approx(2.5 / 11)
    assert zero_control.relative_lift is None


# ----------------------------------------------------------------------- two-proportion test


def two_proportion_by_hand(
    xc: int, nc: int, xt: int, nt: int, confidence: float
) -> tuple[float, float, float]:
    pc, pt = xc / nc, xt / nt
    pooled = (xc + xt) / (nc + nt)
    z = (pt - pc) / math.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / nt))
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(pc * (1 - pc) / nc + pt * (1 - pt) / nt)
    return 2 * stats.norm.sf(abs(z)), pt - pc - half, pt - pc + half


@pytest.mark.parametrize(
    ("xc", "nc", "xt", "nt"),
    [(430, 1000, 470, 1000), (45, 100, 30, 120), (1, 50, 9, 60), (5000, 10000, 5150, 10000)],
)
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_two_proportion_test_matches_a_hand_computed_z_test(
    xc: int, nc: int, xt: int, nt: int, confidence: float
) -> None:
    comparison = two_proportion_test(
        ProportionSummary(nc, xc), ProportionSummary(nt, xt), confidence
    )
    p_value, low, high = two_proportion_by_hand(xc, nc, xt, nt, confidence)
    assert comparison.defined
    assert comparison.test == TWO_PROPORTION_Z
    assert comparison.degrees_of_freedom is None
    assert_close(comparison.difference, xt / nt - xc / nc, rel=1e-12)
    assert_close(comparison.p_value, p_value, rel=1e-9)
    assert_close(comparison.difference_interval.lower, low, rel=1e-9)
    assert_close(comparison.difference_interval.upper, high, rel=1e-9)
    # The pooled z-test is the uncorrected chi-square test of the 2x2 table.
    table = [[xc, nc - xc], [xt, nt - xt]]
    chi2 = stats.chi2_contingency(table, correction=False)
    assert_close(comparison.p_value, chi2.pvalue, rel=1e-9)
    assert_close(comparison.statistic**2, chi2.statistic, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    nc=st.integers(1, 5000),
    nt=st.integers(1, 5000),
    control_rate=st.floats(0, 1),
    treatment_rate=st.floats(0, 1),
)
def test_two_proportion_test_matches_chi_square_of_the_table(
    nc: int, nt: int, control_rate: float, treatment_rate: float
) -> None:
    xc, xt = round(nc * control_rate), round(nt * treatment_rate)
    assume(0 < xc + xt < nc + nt)
    comparison = two_proportion_test(ProportionSummary(nc, xc), ProportionSummary(nt, xt))
    chi2 = stats.chi2_contingency([[xc, nc - xc], [xt, nt - xt]], correction=False)
    assert comparison.defined
    assert_close(comparison.p_value, min(1.0, chi2.pvalue), rel=1e-7, abs_=1e-15)


def test_two_proportion_test_edge_cases() -> None:
    everyone = two_proportion_test(ProportionSummary(40, 40), ProportionSummary(50, 50))
    nobody = two_proportion_test(ProportionSummary(40, 0), ProportionSummary(50, 0))
    empty = two_proportion_test(ProportionSummary(0, 0), ProportionSummary(50, 20))
    for comparison, reason in (
        (everyone, "every outcome of both arms is equal"),
        (nobody, "every outcome of both arms is equal"),
        (empty, "no control outcomes"),
    ):
        assert not comparison.defined
        assert comparison.reason == reason
        assert comparison.p_value == comparison.sequential_p_value == 1.0
    # Opposite certainties: a real, defined difference whose Wald interval is a point.
    opposite = two_proportion_test(ProportionSummary(100, 0), ProportionSummary(100, 100))
    assert opposite.defined
    assert opposite.p_value < 1e-40
    assert opposite.difference == 1.0
    assert opposite.difference_interval.lower == opposite.difference_interval.upper == 1.0
    assert opposite.relative_lift is None
    assert two_proportion_test(
        ProportionSummary(100, 40), ProportionSummary(100, 50)
    ).relative_lift == pytest.approx(0.25)


# ---------------------------------------------------------------------- sequential p-value


def mixture_likelihood_ratio(difference: float, s2: float, tau2: float) -> float:
    """Λ by numerical integration: the N(θ, s²) likelihood of the observed difference under a
    N(0, τ²) mixture over θ, against its likelihood under θ = 0."""
    sd = math.sqrt(s2)
    numerator, _ = integrate.quad(
        lambda theta: (
            stats.norm.pdf(difference, theta, sd) * stats.norm.pdf(theta, 0, math.sqrt(tau2))
        ),
        -np.inf,
        np.inf,
        epsabs=0,
        epsrel=1e-12,
        points=None,
    )
    return float(numerator / stats.norm.pdf(difference, 0, sd))


@pytest.mark.parametrize("tau2", [0.01, 0.5, 4.0])
@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3])
def test_always_valid_p_value_is_the_inverse_mixture_likelihood_ratio(
    tau2: float, shift: float
) -> None:
    rng = np.random.default_rng(3)
    control = MeanSummary.of(rng.normal(0.0, 1.0, 400))
    treatment = MeanSummary.of(rng.normal(shift, 1.5, 300))
    s2 = control.variance / control.n + treatment.variance / treatment.n
    ratio = mixture_likelihood_ratio(treatment.mean - control.mean, s2, tau2)
    p_value = always_valid_p_value(control, treatment, mixing_variance=tau2)
    assert_close(p_value, min(1.0, 1.0 / ratio), rel=1e-6)


def test_always_valid_p_value_of_rates_uses_the_pooled_variance() -> None:
    control, treatment = ProportionSummary(2000, 800), ProportionSummary(2100, 960)
    pooled = 1760 / 4100
    s2 = pooled * (1 - pooled) * (1 / 2000 + 1 / 2100)
    tau2 = 0.0004
    ratio = mixture_likelihood_ratio(960 / 2100 - 0.4, s2, tau2)
    p_value = always_valid_p_value(control, treatment, mixing_variance=tau2)
    assert_close(p_value, 1.0 / ratio, rel=1e-6)
    assert p_value < 0.05
    assert two_proportion_test(control, treatment).sequential_p_value == pytest.approx(
        always_valid_p_value(control, treatment)
    )


def test_default_mixing_variance_is_tuned_to_5000_units_per_arm() -> None:
    control, treatment = MeanSummary.of([1.0, 3.0, 5.0]), MeanSummary.of([2.0, 2.5, 9.0, 4.0])
    two_log = 2 * math.log(20)
    rho = (two_log + math.log(two_log + 1)) / SEQUENTIAL_TUNING_UNITS
    assert rho == pytest.approx(0.001588, rel=1e-3)
    tau2 = default_mixing_variance(control, treatment)
    assert tau2 == pytest.approx(rho * (control.variance + treatment.variance), rel=1e-12)
    assert always_valid_p_value(control, treatment) == always_valid_p_value(
        control, treatment, mixing_variance=tau2
    )
    rates = default_mixing_variance(ProportionSummary(10, 5), ProportionSummary(30, 15))
    assert rates == pytest.approx(rho * 2 * 0.25)
    assert default_mixing_variance(ProportionSummary(0, 0), ProportionSummary(0, 0)) == 0.0


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        (MeanSummary.of([1.0]), MeanSummary.of([1.0, 5.0])),
        (MeanSummary.of([2.0, 2.0]), MeanSummary.of([3.0, 3.0])),
        (ProportionSummary(0, 0), ProportionSummary(10, 3)),
        (ProportionSummary(10, 10), ProportionSummary(10, 10)),
    ],
)
def test_always_valid_p_value_is_one_without_evidence(control, treatment) -> None:
    assert always_valid_p_value(control, treatment) == 1.0


def test_always_valid_p_value_rejects_invalid_arguments() -> None:
    control, treatment = MeanSummary.of([1.0, 2.0]), MeanSummary.of([3.0, 5.0])
    for tau2 in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="mixing_variance"):
            always_valid_p_value(control, treatment, mixing_variance=tau2)
    with pytest.raises(TypeError, match="both be"):
        always_valid_p_value(control, ProportionSummary(2, 1))  # type: ignore[call-overload]


def test_running_p_value_keeps_the_minimum() -> None:
    assert running_p_value(None, 0.4) == 0.4
    assert running_p_value(0.4, 0.7) == 0.4
    assert running_p_value(0.4, 0.02) == 0.02
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        running_p_value(1.2, 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        running_p_value(0.5, -0.1)


def peeking_crossings(effect: float, seed: int) -> tuple[float, float]:
    """200 experiments, 20 looks each at 100, 200, ..., 2000 units per arm of N(0, 1)
    control and N(effect, 1) treatment outcomes: the share of experiments whose always-valid
    p-value, and whose fixed-horizon Welch p-value, was below 0.05 at some look."""
    experiments, looks, step = 200, 20, 100
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, (experiments, 2, looks * step))
    data[:, 1, :] += effect
    at_looks = np.arange(step, looks * step + 1, step) - 1
    totals = np.cumsum(data, axis=2)[:, :, at_looks]
    squares = np.cumsum(data * data, axis=2)[:, :, at_looks]
    sequential_crossed = naive_crossed = 0
    for e in range(experiments):
        sequential, naive = 1.0, 1.0
        for look in range(looks):
            n = (look + 1) * step
            control = MeanSummary(n, float(totals[e, 0, look]), float(squares[e, 0, look]))
            treatment = MeanSummary(n, float(totals[e, 1, look]), float(squares[e, 1, look]))
            comparison = welch_test(control, treatment)
            sequential = running_p_value(sequential, comparison.sequential_p_value)
            naive = min(naive, comparison.p_value)
        sequential_crossed += sequential < 0.05
        naive_crossed += naive < 0.05
    return sequential_crossed / experiments, naive_crossed / experiments


def test_peeking_at_the_always_valid_p_value_is_safe() -> None:
    sequential, naive = peeking_crossings(effect=0.0, seed=2017)
    assert sequential <= 0.06
    assert naive >= 0.15  # peeking at the fixed-horizon p-value inflates false positives


def test_the_always_valid_p_value_still_finds_real_effects() -> None:
    sequential, naive = peeking_crossings(effect=0.2, seed=5)
    assert sequential >= 0.9
    assert naive == 1.0


# --------------------------------------------------------------------- sample-ratio mismatch


@pytest.mark.parametrize(
    ("counts", "alarm"), [((5200, 4800), True), ((5020, 4980), False), ((4830, 5170), True)]
)
def test_sample_ratio_mismatch_planted_at_even_weights(
    counts: tuple[int, int], alarm: bool
) -> None:
    result = sample_ratio_mismatch(counts, [1.0, 1.0])
    expected = stats.chisquare(counts)
    assert result.defined
    assert result.degrees_of_freedom == 1
    assert result.expected == (5000.0, 5000.0)
    assert_close(result.chi_square, expected.statistic, rel=1e-12)
    assert_close(result.p_value, expected.pvalue, rel=1e-9)
    assert result.mismatch is alarm


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20000), st.floats(0.01, 100.0)), min_size=2, max_size=16))
def test_sample_ratio_mismatch_matches_scipy(arms: list[tuple[int, float]]) -> None:
    counts = [count for count, _ in arms]
    weights = [weight for _, weight in arms]
    assume(sum(counts) > 0)
    result = sample_ratio_mismatch(counts, weights)
    expected_counts = np.array(weights) / sum(weights) * sum(counts)
    expected = stats.chisquare(counts, expected_counts)
    assert result.degrees_of_freedom == len(arms) - 1
    assert_close(result.chi_square, expected.statistic, rel=1e-9, abs_=1e-9)
    assert_close(result.p_value, expected.pvalue, rel=1e-7, abs_=1e-300)
    assert result.mismatch == (expected.pvalue < 0.001)


def test_sample_ratio_mismatch_accepts_expected_counts_as_weights() -> None:
    by_counts = sample_ratio_mismatch([610, 390, 1000], [600.0, 400.0, 1000.0])
    by_weights = sample_ratio_mismatch([610, 390, 1000], [3.0, 2.0, 5.0])
    assert by_counts.chi_square == pytest.approx(by_weights.chi_square, rel=1e-12)
    assert by_counts.expected == pytest.approx((600.0, 400.0, 1000.0))


def test_sample_ratio_mismatch_without_units_is_undefined() -> None:
    for weights in ([1.0, 3.0], [0.0, 0.0]):
        result = sample_ratio_mismatch([0, 0], weights)
        assert not result.defined
        assert result.reason == "no units"
        assert (result.chi_square, result.p_value, result.mismatch) == (0.0, 1.0, False)


@pytest.mark.parametrize(
    ("counts", "weights", "message"),
    [
        ([10, 20], [1.0], "one per arm"),
        ([10], [1.0], "at least 2 arms"),
        ([10, -1], [1.0, 1.0], "counts must be >= 0"),
        ([10, 20], [1.0, -1.0], "weights must be >= 0"),
        ([10, 20], [1.0, math.inf], "weights must be >= 0"),
        ([10, 20], [1.0, 0.0], "weights must be > 0"),
    ],
)
def test_sample_ratio_mismatch_rejects_invalid_input(
    counts: list[int], weights: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sample_ratio_mismatch(counts, weights)
