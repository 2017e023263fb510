"""Experiment statistics from sufficient statistics: intervals, tests, sequential p-values, SRM.

Every function takes aggregates (count, sum, sum of squares; or count and successes), so the
store can compute them in SQL. Pure Python and `math`: the Student-t, normal and chi-square
distributions are implemented here (regularized incomplete beta and gamma functions), not taken
from scipy.

Invalid input (negative counts, successes above the count, a confidence outside (0, 1)) raises
`ValueError`. Input that is valid but too thin for a statistic (no outcomes, one outcome, no
variance) never raises and never yields NaN: the result says `defined=False` and why in
`reason`, its p-values are 1.0 (no evidence) and its intervals collapse to the point estimate.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import overload

DEFAULT_CONFIDENCE = 0.95
"""Confidence level of intervals when the caller gives none."""

SRM_ALARM_P_VALUE = 0.001
"""A sample-ratio check with a p-value below this raises the mismatch alarm."""

SEQUENTIAL_TUNING_UNITS = 5_000
"""Units per arm at which the default mSPRT mixture is tuned to reject soonest (see
`default_mixing_variance`)."""

SEQUENTIAL_TUNING_ALPHA = 0.05
"""Significance level the default mSPRT mixture is tuned for."""

WELCH_T = "welch_t"
"""`Comparison.test` of numeric metrics: Welch's unequal-variances t-test."""

TWO_PROPORTION_Z = "two_proportion_z"
"""`Comparison.test` of boolean metrics: the pooled two-proportion z-test."""

_EPSILON = 1e-15
_TINY = 1e-300
_ZERO_VARIANCE_RESOLUTION = 1e-12


# ------------------------------------------------------------------------------ summaries


@dataclass(frozen=True, slots=True)
class MeanSummary:
    """Sufficient statistics of a real-valued metric: `n` outcomes, their sum and the sum of
    their squares."""

    n: int
    total: float
    total_squares: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if not (math.isfinite(self.total) and math.isfinite(self.total_squares)):
            raise ValueError("total and total_squares must be finite")
        if self.total_squares < 0:
            raise ValueError(f"total_squares must be >= 0, got {self.total_squares}")
        if self.n == 0 and (self.total != 0 or self.total_squares != 0):
            raise ValueError("a summary of no outcomes must have zero sums")

    @classmethod
    def of(cls, values: Iterable[float]) -> "MeanSummary":
        """The summary of `values` (exactly rounded sums)."""
        values = [float(v) for v in values]
        return cls(len(values), math.fsum(values), math.fsum(v * v for v in values))

    @property
    def mean(self) -> float:
        """The sample mean; 0.0 when there are no outcomes."""
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The sample variance (divisor n - 1); 0.0 when n < 2.

        Computed as (total_squares - total * mean) / (n - 1). A residual below 1e-12 of
        `total_squares` is float cancellation, not spread, and counts as zero.
        """
        if self.n < 2:
            return 0.0
        residual = self.total_squares - self.total * self.mean
        if residual <= _ZERO_VARIANCE_RESOLUTION * self.total_squares:
            return 0.0
        return residual / (self.n - 1)


@dataclass(frozen=True, slots=True)
class ProportionSummary:
    """Sufficient statistics of a yes/no metric: `successes` out of `n` outcomes."""

    n: int
    successes: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if not 0 <= self.successes <= self.n:
            raise ValueError(f"successes must be in [0, n={self.n}], got {self.successes}")

    @property
    def mean(self) -> float:
        """The success rate; 0.0 when there are no outcomes."""
        return self.successes / self.n if self.n else 0.0


# -------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Interval:
    """A two-sided confidence interval (proto `genai.common.v1.ConfidenceInterval`).

    When `defined` is false the interval is the point estimate on both sides and `reason` says
    why; a servicer leaves the proto field unset then.
    """

    lower: float
    upper: float
    confidence_level: float
    defined: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Comparison:
    """One variant's metric against the control's (proto `ControlComparison`, plus extras).

    `difference` is treatment minus control. `relative_lift` is the difference over |control
    mean| (so its sign is the difference's), None when the control mean is 0. `statistic` is
    the t or z statistic; `degrees_of_freedom` the Welch-Satterthwaite df of a t-test, None for
    a z-test. When `defined` is false (`reason` says why), both p-values are 1.0, the interval
    is the difference on both sides and the statistic is 0.0.
    """

    difference: float
    difference_interval: Interval
    p_value: float
    sequential_p_value: float
    test: str
    relative_lift: float | None
    statistic: float
    degrees_of_freedom: float | None
    defined: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Sample-ratio-mismatch check (proto `SampleRatioCheck`, plus extras).

    `chi_square` is Pearson's statistic of the observed counts against `expected` (the total
    split by the weights), with `degrees_of_freedom` = arms - 1. `mismatch` is the alarm:
    p_value < `SRM_ALARM_P_VALUE`. Without any counts the check is undefined: statistic 0,
    p-value 1, no alarm.
    """

    chi_square: float
    degrees_of_freedom: int
    p_value: float
    mismatch: bool
    expected: tuple[float, ...]
    defined: bool = True
    reason: str = ""


# ------------------------------------------------------------------------------ intervals


def mean_interval(summary: MeanSummary, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Student-t interval of the mean: mean ± t(1 - alpha/2, n - 1) · s / √n, alpha = 1 - confidence.

    Undefined (reason given) with fewer than 2 outcomes. Zero variance gives a zero-width,
    defined interval: that is what the sample shows.
    """
    _check_confidence(confidence)
    mean = summary.mean
    if summary.n < 2:
        return _point(mean, confidence, f"needs at least 2 outcomes, has {summary.n}")
    half = student_t_ppf(_upper_level(confidence), summary.n - 1) * math.sqrt(
        summary.variance / summary.n
    )
    return Interval(mean - half, mean + half, confidence)


def proportion_interval(
    summary: ProportionSummary, confidence: float = DEFAULT_CONFIDENCE
) -> Interval:
    """Wilson score interval of the success rate (no continuity correction), within [0, 1].

    Unlike the Wald interval it stays informative at 0 or n successes. Undefined without
    outcomes.
    """
    return wilson_interval(summary.mean, summary.n, confidence)


def wilson_interval(rate: float, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Wilson score interval of a rate in [0, 1] observed over `n` units, within [0, 1].

    `rate` is usually successes / n; a mean of per-unit rates (the share of an example's
    repeats that passed, averaged over examples) gives the same interval with the unit as the
    unit of analysis. Undefined when `n` is 0.
    """
    _check_confidence(confidence)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if n == 0:
        return _point(0.0, confidence, "no outcomes")
    z = normal_ppf(_upper_level(confidence))
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (rate + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(rate * (1.0 - rate) / n + z2 / (4.0 * n * n))
    # At a rate of 0 or 1 the bound on that side is exactly 0 or 1; rounding may miss it.
    lower = 0.0 if rate == 0.0 else max(0.0, center - half)
    upper = 1.0 if rate == 1.0 else min(1.0, center + half)
    return Interval(lower, upper, confidence)


# ---------------------------------------------------------------------------------- tests


def welch_test(
    control: MeanSummary,
    treatment: MeanSummary,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    mixing_variance: float | None = None,
) -> Comparison:
    """Welch's unequal-variances t-test of treatment mean minus control mean.

    t = d / se with se² = s_c²/n_c + s_t²/n_t, Welch-Satterthwaite df, two-sided p-value and
    the interval d ± t(1 - alpha/2, df) · se. `sequential_p_value` is `always_valid_p_value` with
    `mixing_variance`. Undefined with fewer than 2 outcomes in an arm or no variance in both.
    """
    _check_confidence(confidence)
    difference = treatment.mean - control.mean
    lift = _relative_lift(difference, control.mean)
    for name, arm in (("control", control), ("treatment", treatment)):
        if arm.n < 2:
            return _undefined(
                difference, lift, confidence, WELCH_T, f"{name} needs at least 2 outcomes"
            )
    control_term = control.variance / control.n
    treatment_term = treatment.variance / treatment.n
    variance = control_term + treatment_term
    if variance == 0.0:
        return _undefined(difference, lift, confidence, WELCH_T, "no variance in either arm")
    se = math.sqrt(variance)
    df = variance**2 / (control_term**2 / (control.n - 1) + treatment_term**2 / (treatment.n - 1))
    t = difference / se
    half = student_t_ppf(_upper_level(confidence), df) * se
    return Comparison(
        difference=difference,
        difference_interval=Interval(difference - half, difference + half, confidence),
        p_value=min(1.0, 2.0 * student_t_sf(abs(t), df)),
        sequential_p_value=always_valid_p_value(
            control, treatment, mixing_variance=mixing_variance
        ),
        test=WELCH_T,
        relative_lift=lift,
        statistic=t,
        degrees_of_freedom=df,
    )


def two_proportion_test(
    control: ProportionSummary,
    treatment: ProportionSummary,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    mixing_variance: float | None = None,
) -> Comparison:
    """Two-proportion z-test of treatment rate minus control rate.

    The p-value uses the pooled rate p̄ (the variance under H0: p̄(1 - p̄)(1/n_c + 1/n_t)); the
    interval is the unpooled Wald interval d ± z(1 - alpha/2) · √(p_c(1-p_c)/n_c + p_t(1-p_t)/n_t),
    which collapses to a point when both rates are 0 or 1. Undefined without outcomes in an
    arm or when every outcome of both arms is the same (p̄ is 0 or 1).
    """
    _check_confidence(confidence)
    difference = treatment.mean - control.mean
    lift = _relative_lift(difference, control.mean)
    for name, arm in (("control", control), ("treatment", treatment)):
        if arm.n == 0:
            return _undefined(difference, lift, confidence, TWO_PROPORTION_Z, f"no {name} outcomes")
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    null_variance = pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / treatment.n)
    if null_variance <= 0.0:
        return _undefined(
            difference, lift, confidence, TWO_PROPORTION_Z, "every outcome of both arms is equal"
        )
    z = difference / math.sqrt(null_variance)
    wald_se = math.sqrt(
        control.mean * (1.0 - control.mean) / control.n
        + treatment.mean * (1.0 - treatment.mean) / treatment.n
    )
    half = normal_ppf(_upper_level(confidence)) * wald_se
    return Comparison(
        difference=difference,
        difference_interval=Interval(difference - half, difference + half, confidence),
        p_value=min(1.0, 2.0 * normal_sf(abs(z))),
        sequential_p_value=always_valid_p_value(
            control, treatment, mixing_variance=mixing_variance
        ),
        test=TWO_PROPORTION_Z,
        relative_lift=lift,
        statistic=z,
        degrees_of_freedom=None,
    )


# ------------------------------------------------------------------------------ sequential


@overload
def always_valid_p_value(
    control: MeanSummary, treatment: MeanSummary, *, mixing_variance: float | None = None
) -> float: ...


@overload
def always_valid_p_value(
    control: ProportionSummary,
    treatment: ProportionSummary,
    *,
    mixing_variance: float | None = None,
) -> float: ...


def always_valid_p_value(
    control: MeanSummary | ProportionSummary,
    treatment: MeanSummary | ProportionSummary,
    *,
    mixing_variance: float | None = None,
) -> float:
    """Always-valid p-value of H0: equal means, by the mixture SPRT (Johari et al. 2017).

    With d the difference of means, s² its plug-in variance (s_c²/n_c + s_t²/n_t; for rates
    the pooled null variance p̄(1 - p̄)(1/n_c + 1/n_t)) and a N(0, τ²) mixture over the true
    difference, the mixture likelihood ratio is

        Λ = √(s² / (s² + τ²)) · exp(τ² d² / (2 s² (s² + τ²)))

    and the p-value is min(1, 1/Λ). `mixing_variance` is τ², in the metric's unit squared;
    None means `default_mixing_variance`. The guarantee, P(p ≤ alpha at any look) ≤ alpha under H0, is
    for the running minimum over looks (`running_p_value`); it holds asymptotically, as the
    plug-in variance settles. 1.0 (no evidence) with fewer than 2 outcomes in an arm (1 for
    rates) or zero variance.
    """
    if isinstance(control, ProportionSummary) and isinstance(treatment, ProportionSummary):
        if control.n == 0 or treatment.n == 0:
            return 1.0
        pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
        unit_variance_c = unit_variance_t = pooled * (1.0 - pooled)
    elif isinstance(control, MeanSummary) and isinstance(treatment, MeanSummary):
        if control.n < 2 or treatment.n < 2:
            return 1.0
        unit_variance_c, unit_variance_t = control.variance, treatment.variance
    else:
        raise TypeError("control and treatment must both be MeanSummary or ProportionSummary")
    s2 = unit_variance_c / control.n + unit_variance_t / treatment.n
    if s2 <= 0.0:
        return 1.0
    if mixing_variance is None:
        tau2 = _tuned_mixing_variance(unit_variance_c + unit_variance_t)
    elif mixing_variance > 0 and math.isfinite(mixing_variance):
        tau2 = mixing_variance
    else:
        raise ValueError(f"mixing_variance must be positive and finite, got {mixing_variance}")
    difference = treatment.mean - control.mean
    log_lambda = 0.5 * math.log(s2 / (s2 + tau2)) + tau2 * difference**2 / (2.0 * s2 * (s2 + tau2))
    return 1.0 if log_lambda <= 0.0 else math.exp(-log_lambda)


def default_mixing_variance(
    control: MeanSummary | ProportionSummary, treatment: MeanSummary | ProportionSummary
) -> float:
    """τ² that `always_valid_p_value` uses by default: rho · (s_c² + s_t²).

    s_c² and s_t² are the per-unit plug-in variances (for rates both p̄(1 - p̄)), so τ is
    scale-free: a standardized effect. rho = (2 ln(1/alpha) + ln(2 ln(1/alpha) + 1)) / N with
    alpha = `SEQUENTIAL_TUNING_ALPHA` and N = `SEQUENTIAL_TUNING_UNITS` units per arm: the
    normal-mixture choice of Howard et al. (2021) that makes the rejection boundary tightest
    at N units per arm (GrowthBook's sequential tuning of 5,000 likewise). Here rho ≈ 0.00159,
    i.e. τ ≈ 0.04 standard deviations of a pair difference. 0.0 without variance.
    """
    if isinstance(control, ProportionSummary) and isinstance(treatment, ProportionSummary):
        total = control.n + treatment.n
        pooled = (control.successes + treatment.successes) / total if total else 0.0
        return _tuned_mixing_variance(2.0 * pooled * (1.0 - pooled))
    if isinstance(control, MeanSummary) and isinstance(treatment, MeanSummary):
        return _tuned_mixing_variance(control.variance + treatment.variance)
    raise TypeError("control and treatment must both be MeanSummary or ProportionSummary")


def running_p_value(previous: float | None, current: float) -> float:
    """The sequential p-value to report and store: the minimum of every look's so far.

    The always-valid guarantee is about the first look that crosses alpha, so the running minimum
    is as valid as each look's value. `previous` is None at the first look.
    """
    for value in (previous, current):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"p-values must be in [0, 1], got {value}")
    return current if previous is None else min(previous, current)


def _tuned_mixing_variance(pair_variance: float) -> float:
    log_inverse_alpha = 2.0 * math.log(1.0 / SEQUENTIAL_TUNING_ALPHA)
    rho = (log_inverse_alpha + math.log(log_inverse_alpha + 1.0)) / SEQUENTIAL_TUNING_UNITS
    return rho * pair_variance


# -------------------------------------------------------------------------- sample ratio


def sample_ratio_mismatch(
    observed_counts: Sequence[int], expected_weights: Sequence[float]
) -> SrmResult:
    """Pearson's chi-square goodness-of-fit test of counts against their expected proportions.

    `expected_weights` are proportional to each arm's expected share: the configured weights,
    or expected counts (after weight changes, the sum over weight versions); they are rescaled
    to the observed total. df = arms - 1; `mismatch` when p < `SRM_ALARM_P_VALUE`. Undefined
    (no alarm) when every count is 0. Raises ValueError for fewer than 2 arms, lengths that
    differ, negative counts, or weights that are negative, non-finite, or 0 while there are
    counts.
    """
    if len(observed_counts) != len(expected_weights):
        raise ValueError(
            f"{len(observed_counts)} counts but {len(expected_weights)} weights: one per arm"
        )
    if len(observed_counts) < 2:
        raise ValueError("a sample-ratio check needs at least 2 arms")
    if any(count < 0 for count in observed_counts):
        raise ValueError(f"counts must be >= 0, got {list(observed_counts)}")
    if any(not (weight >= 0 and math.isfinite(weight)) for weight in expected_weights):
        raise ValueError(f"weights must be >= 0 and finite, got {list(expected_weights)}")
    df = len(observed_counts) - 1
    total = sum(observed_counts)
    if total == 0:
        zeros = (0.0,) * len(observed_counts)
        return SrmResult(0.0, df, 1.0, False, zeros, defined=False, reason="no units")
    if any(weight == 0 for weight in expected_weights):
        raise ValueError(f"weights must be > 0 when there are counts, got {list(expected_weights)}")
    weight_sum = math.fsum(expected_weights)
    expected = tuple(total * weight / weight_sum for weight in expected_weights)
    chi_square = math.fsum(
        (count - e) ** 2 / e for count, e in zip(observed_counts, expected, strict=True)
    )
    p_value = chi_square_sf(chi_square, df)
    return SrmResult(chi_square, df, p_value, p_value < SRM_ALARM_P_VALUE, expected)


# ---------------------------------------------------------------------------- distributions


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z, accurate in the far tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_ppf(p: float) -> float:
    """The p-quantile of the standard normal distribution, p in (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return NormalDist().inv_cdf(p)


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` > 0 degrees of freedom (math.inf: the normal).

    Uses P(|T| > t) = I_x(df/2, 1/2) with x = df / (df + t²), so small tails keep their
    relative precision.
    """
    _check_df(df)
    if math.isinf(df):
        return normal_sf(t)
    if t < 0:
        return 1.0 - student_t_sf(-t, df)
    t2 = t * t
    return 0.5 * _regularized_beta(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def student_t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` > 0 degrees of freedom (math.inf: the normal).

    Closed forms for df 1 and 2; otherwise the Cornish-Fisher expansion (Abramowitz & Stegun
    26.7.5), refined by safeguarded Newton steps on log P(T > t) to ~1e-12 relative; above
    1e7 df the expansion alone is exact to double precision.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    _check_df(df)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -_student_t_upper_quantile(p, df)
    return _student_t_upper_quantile(1.0 - p, df)


def _student_t_upper_quantile(tail: float, df: float) -> float:
    """t > 0 with P(T > t) = tail, for tail in (0, 0.5); tail is passed as is, not as 1 - p,
    so far-tail quantiles keep their precision."""
    if math.isinf(df):
        return -normal_ppf(tail)
    if df == 1.0:
        return 1.0 / math.tan(math.pi * tail)
    if df == 2.0:
        return (1.0 - 2.0 * tail) / math.sqrt(2.0 * tail * (1.0 - tail))
    t = max(_cornish_fisher_t(tail, df), _EPSILON)
    if df > 1e7:
        return t
    log_tail = math.log(tail)
    low, high = 0.0, math.inf
    for _ in range(200):
        sf = student_t_sf(t, df)
        if sf > tail:
            low = t
        else:
            high = t
        density = _student_t_pdf(t, df)
        candidate = t + (math.log(sf) - log_tail) * sf / density if sf > 0 < density else high
        if not low < candidate < high:
            candidate = 2.0 * low + 1.0 if math.isinf(high) else 0.5 * (low + high)
        if abs(candidate - t) <= 1e-13 * max(1.0, t):
            return candidate
        t = candidate
    return t


def chi_square_sf(x: float, df: float) -> float:
    """P(X > x) for a chi-square X with `df` > 0 degrees of freedom: Q(df/2, x/2)."""
    _check_df(df)
    if math.isinf(df):
        raise ValueError("df must be finite")
    if 0.5 * x <= 0.0:  # also a subnormal x, whose half is 0
        return 1.0
    return _regularized_upper_gamma(0.5 * df, 0.5 * x)


def _student_t_pdf(t: float, df: float) -> float:
    log_density = (
        _log_gamma_ratio(0.5 * df, 0.5)
        - 0.5 * math.log(df * math.pi)
        - 0.5 * (df + 1.0) * math.log1p(t * t / df)
    )
    return math.exp(log_density)


def _cornish_fisher_t(tail: float, df: float) -> float:
    z = -normal_ppf(tail)
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df


def _regularized_beta(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b), with y = 1 - x given exactly by the caller (no cancellation near 1)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    if a >= b:
        log_beta = math.lgamma(b) - _log_gamma_ratio(a, b)
    else:
        log_beta = math.lgamma(a) - _log_gamma_ratio(b, a)
    log_front = a * log_x + b * log_y - log_beta
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def _log_gamma_ratio(a: float, b: float) -> float:
    """log Γ(a + b) - log Γ(a), without the cancellation of two large lgamma values when
    a ≫ b (Stirling's series, exact to double precision from a = 100)."""
    if a < 100.0:
        return math.lgamma(a + b) - math.lgamma(a)

    def stirling_correction(z: float) -> float:
        z2 = z * z
        return (1.0 / 12.0 - (1.0 / 360.0 - 1.0 / (1260.0 * z2)) / z2) / z

    return (
        (a - 0.5) * math.log1p(b / a)
        + b * math.log(a + b)
        - b
        + stirling_correction(a + b)
        - stirling_correction(a)
    )


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method (Numerical Recipes
    6.4); converges in O(√max(a, b)) terms for x below (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) <= _EPSILON:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def _regularized_upper_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a): the series of P below x = a + 1, Lentz's continued fraction
    of Q above (Numerical Recipes 6.2)."""
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(100_000):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) <= abs(total) * _EPSILON:
                return max(0.0, 1.0 - total * math.exp(log_front))
        raise ArithmeticError(f"incomplete gamma series did not converge (a={a}, x={x})")
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 100_000):
        numerator = -i * (i - a)
        b += 2.0
        d = numerator * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + numerator / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= _EPSILON:
            return math.exp(log_front) * h
    raise ArithmeticError(f"incomplete gamma fraction did not converge (a={a}, x={x})")


# --------------------------------------------------------------------------------- helpers


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_df(df: float) -> None:
    if not df > 0.0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")


def _upper_level(confidence: float) -> float:
    return 0.5 + 0.5 * confidence


def _point(estimate: float, confidence: float, reason: str) -> Interval:
    return Interval(estimate, estimate, confidence, defined=False, reason=reason)


def _relative_lift(difference: float, control_mean: float) -> float | None:
    return difference / abs(control_mean) if control_mean != 0.0 else None


def _undefined(
    difference: float, lift: float | None, confidence: float, test: str, reason: str
) -> Comparison:
    return Comparison(
        difference=difference,
        difference_interval=_point(difference, confidence, reason),
        p_value=1.0,
        sequential_p_value=1.0,
        test=test,
        relative_lift=lift,
        statistic=0.0,
        degrees_of_freedom=None,
        defined=False,
        reason=reason,
    )
