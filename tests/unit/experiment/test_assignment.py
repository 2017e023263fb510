"""Experiment assignment and domain rules: the documented bucket hash, uniform buckets, shares
that follow the weights (chi-square goodness of fit over 100,000 units), the holdout share,
independence between salts, and the validation of experiments, weight changes and outcomes."""

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
from scipy import stats  # type: ignore[import-untyped]  # scipy ships no type stubs

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.experiment.core.assignment import (
    BUCKETS,
    BucketRange,
    assign,
    bucket,
    bucket_ranges,
    variant_of_bucket,
    variant_shares,
)
from services.experiment.core.model import (
    AssignmentUnit,
    Experiment,
    ExperimentState,
    MetricKind,
    MetricSpec,
    NewExperiment,
    Variant,
    require_running,
    validate_new_experiment,
    validate_outcome,
    validate_weight_change,
)

UNITS = 100_000
ALPHA = 0.001
"""Tests of randomness reject at p < ALPHA: with fixed ids they pass or fail deterministically."""


def _experiment(
    weights: Sequence[float],
    *,
    holdout_share: float = 0.0,
    salt: str = "salt",
    state: ExperimentState = ExperimentState.RUNNING,
) -> Experiment:
    arms = tuple(Variant(f"v{i}", w, prompt_version=i + 1) for i, w in enumerate(weights))
    return Experiment(
        tenant_id="acme",
        name="exp",
        description="",
        state=state,
        prompt="chat",
        variants=arms,
        control_variant="v0",
        holdout_share=holdout_share,
        salt=salt,
        unit=AssignmentUnit.USER,
        metrics=(
            MetricSpec("latency", MetricKind.NUMERIC, False),
            MetricSpec("thumbs_up", MetricKind.BOOLEAN, True),
        ),
        weights_version=1,
        create_time=datetime(2025, 1, 1, tzinfo=UTC),
    )


def _unit_ids(prefix: str = "user") -> list[str]:
    return [f"{prefix}-{i}" for i in range(UNITS)]


# ------------------------------------------------------------------------------------ hashing


def test_bucket_is_the_documented_sha256_and_never_changes() -> None:
    # Golden values: a change of the hash would move every unit of every running experiment.
    assert bucket("salt", "unit-1") == 1681
    assert bucket("", "") == 4368
    assert bucket("s", "ü") == 9370
    for salt, unit in [("a", "b"), ("x:y", "z"), ("", "user-42")]:
        digest = hashlib.sha256(f"{salt}:{unit}".encode()).digest()
        assert bucket(salt, unit) == int.from_bytes(digest[:8], "big") % 10_000


def test_buckets_are_deterministic_and_uniform() -> None:
    ids = _unit_ids()
    values = [bucket("salt", u) for u in ids]
    assert values == [bucket("salt", u) for u in ids]
    assert min(values) >= 0
    assert max(values) < BUCKETS
    counts = Counter(values)
    observed = [counts.get(b, 0) for b in range(BUCKETS)]
    assert stats.chisquare(observed).pvalue > ALPHA


# ------------------------------------------------------------------------------------ ranges


def test_bucket_ranges_cut_the_holdout_first_then_each_weight_share() -> None:
    arms = [Variant("a", 1), Variant("b", 1)]
    assert bucket_ranges(0.1, arms) == (
        BucketRange("", 0, 1000),
        BucketRange("a", 1000, 5500),
        BucketRange("b", 5500, 10_000),
    )
    assert variant_shares(0.1, arms) == {"a": 0.5, "b": 0.5}
    ranges = bucket_ranges(0.25, [Variant("a", 1), Variant("b", 2), Variant("c", 3)])
    assert [r.start for r in ranges[1:]] == [r.stop for r in ranges[:-1]]  # contiguous
    assert (ranges[0].start, ranges[-1].stop) == (0, BUCKETS)
    assert [r.size for r in ranges] == [2500, 1250, 2500, 3750]
    assert variant_of_bucket(2499, ranges) == ""
    assert variant_of_bucket(2500, ranges) == "a"
    assert variant_of_bucket(9999, ranges) == "c"
    with pytest.raises(ValueError, match="outside"):
        variant_of_bucket(BUCKETS, ranges)


WEIGHT_VECTORS = [
    ((1.0, 1.0), 0.0),
    ((1.0, 2.0, 3.0), 0.0),
    ((0.9, 0.1), 0.0),
    ((5.0, 5.0, 1.0, 0.5), 0.2),
    ((1.0,) * 16, 0.5),
    ((0.7, 0.3), 0.05),
]


@pytest.mark.parametrize(("weights", "holdout"), WEIGHT_VECTORS, ids=str)
def test_assignment_follows_the_weights_and_the_holdout_share(
    weights: tuple[float, ...], holdout: float
) -> None:
    experiment = _experiment(weights, holdout_share=holdout)
    counts = Counter(assign(experiment, u).variant_name for u in _unit_ids())

    held_out = counts.pop("", 0)
    if holdout:
        assert stats.binomtest(held_out, UNITS, holdout).pvalue > ALPHA
    else:
        assert held_out == 0
    assigned = UNITS - held_out
    total = sum(weights)
    observed = [counts.get(f"v{i}", 0) for i in range(len(weights))]
    expected = [assigned * w / total for w in weights]
    assert stats.chisquare(observed, expected).pvalue > ALPHA


def test_a_skewed_assignment_is_detected() -> None:
    # The goodness-of-fit check above can fail: 50/50 counts against 60/40 weights are rejected.
    experiment = _experiment((1.0, 1.0))
    counts = Counter(assign(experiment, u).variant_name for u in _unit_ids())
    assert stats.chisquare([counts["v0"], counts["v1"]], [0.6 * UNITS, 0.4 * UNITS]).pvalue < 1e-9


def test_different_salts_assign_independently_and_equal_salts_identically() -> None:
    first = _experiment((1.0, 1.0, 2.0), salt="first")
    second = _experiment((1.0, 1.0, 2.0), salt="second")
    ids = _unit_ids()
    pairs = Counter((assign(first, u).variant_name, assign(second, u).variant_name) for u in ids)
    names = ["v0", "v1", "v2"]
    table = [[pairs[(a, b)] for b in names] for a in names]
    assert stats.chi2_contingency(table).pvalue > ALPHA
    same = sum(table[i][i] for i in range(3)) / UNITS
    assert math.isclose(same, 0.25**2 + 0.25**2 + 0.5**2, abs_tol=0.01)

    twin = _experiment((1.0, 1.0, 2.0), salt="first")
    assert all(assign(first, u) == assign(twin, u) for u in ids[:2000])


def test_holdout_membership_is_independent_of_the_variant_hash_of_another_salt() -> None:
    held = _experiment((1.0, 1.0), holdout_share=0.3, salt="h")
    other = _experiment((1.0, 1.0), salt="o")
    table = Counter((assign(held, u).holdout, assign(other, u).variant_name) for u in _unit_ids())
    contingency = [[table[(h, v)] for v in ("v0", "v1")] for h in (False, True)]
    assert stats.chi2_contingency(contingency).pvalue > ALPHA


def test_assign_reports_the_variant_the_bucket_falls_in() -> None:
    experiment = _experiment((1.0, 3.0), holdout_share=0.1)
    ranges = bucket_ranges(0.1, experiment.variants)
    for unit in ("alice", "bob", "carol", "dave", "erin"):
        result = assign(experiment, unit)
        assert result.bucket == bucket("salt", unit)
        assert result.variant_name == variant_of_bucket(result.bucket, ranges)
        assert result.holdout == (result.bucket < 1000)
        assert (result.experiment, result.prompt, result.unit_id) == ("exp", "chat", unit)
        if result.variant is not None:
            assert result.variant == experiment.variant(result.variant_name)


def test_pure_assignment_moves_units_when_weights_change_so_the_store_must_keep_them() -> None:
    before = _experiment((1.0, 1.0), holdout_share=0.1)
    after = dataclasses.replace(before, variants=(Variant("v0", 9.0), Variant("v1", 1.0)))
    ids = _unit_ids()[:5000]
    moved = [u for u in ids if assign(before, u).variant_name != assign(after, u).variant_name]
    # Buckets [5500, 9100) change from v1 to v0: about 36% of the units.
    assert 0.3 < len(moved) / len(ids) < 0.42
    assert all(assign(before, u).variant_name == "v1" for u in moved)
    # Holdout membership depends on the holdout share only.
    assert [assign(before, u).holdout for u in ids] == [assign(after, u).holdout for u in ids]


# -------------------------------------------------------------------------------- validation


VALID = NewExperiment(
    name="checkout.tone-v2",
    prompt="chat",
    variants=(Variant("control", 1.0), Variant("treatment", 1.0, prompt_version=3, model="m")),
    control_variant="control",
    unit=AssignmentUnit.USER,
    holdout_share=0.1,
    metrics=(MetricSpec("latency_ms", MetricKind.NUMERIC, False),),
)

Change = Callable[[NewExperiment], NewExperiment]


def _with(**changes: object) -> Change:
    return lambda new: dataclasses.replace(new, **changes)  # type: ignore[arg-type]


def _variants(*arms: Variant) -> Change:
    return lambda new: dataclasses.replace(new, variants=arms, control_variant=arms[0].name)


INVALID: list[tuple[str, Change, set[str]]] = [
    ("no name", _with(name=""), {"experiment.name"}),
    ("name not starting with a letter", _with(name="1exp"), {"experiment.name"}),
    ("upper-case name", _with(name="Exp"), {"experiment.name"}),
    ("65-character name", _with(name="e" * 65), {"experiment.name"}),
    ("long description", _with(description="d" * 1025), {"experiment.description"}),
    ("no prompt", _with(prompt=""), {"experiment.prompt"}),
    ("one variant", _variants(Variant("a", 1)), {"experiment.variants"}),
    (
        "17 variants",
        _variants(*(Variant(f"v{i}", 1) for i in range(17))),
        {"experiment.variants"},
    ),
    (
        "duplicate variant",
        _variants(Variant("a", 1), Variant("a", 2)),
        {"experiment.variants[1].name"},
    ),
    (
        "bad variant name",
        _variants(Variant("a", 1), Variant("B.x", 1)),
        {"experiment.variants[1].name"},
    ),
    (
        "empty variant name",
        _variants(Variant("a", 1), Variant("", 1)),
        {"experiment.variants[1].name"},
    ),
    ("zero weight", _variants(Variant("a", 1), Variant("b", 0)), {"experiment.variants[1].weight"}),
    (
        "negative weight",
        _variants(Variant("a", -1), Variant("b", 1)),
        {"experiment.variants[0].weight"},
    ),
    (
        "infinite weight",
        _variants(Variant("a", math.inf), Variant("b", 1)),
        {"experiment.variants[0].weight"},
    ),
    (
        "NaN weight",
        _variants(Variant("a", math.nan), Variant("b", 1)),
        {"experiment.variants[0].weight"},
    ),
    (
        "negative prompt version",
        _variants(Variant("a", 1), Variant("b", 1, prompt_version=-1)),
        {"experiment.variants[1].prompt_version"},
    ),
    (
        "long model",
        _variants(Variant("a", 1), Variant("b", 1, model="m" * 129)),
        {"experiment.variants[1].model"},
    ),
    ("no control", _with(control_variant=""), {"experiment.control_variant"}),
    ("unknown control", _with(control_variant="nope"), {"experiment.control_variant"}),
    ("negative holdout", _with(holdout_share=-0.1), {"experiment.holdout_share"}),
    ("holdout above one half", _with(holdout_share=0.51), {"experiment.holdout_share"}),
    ("NaN holdout", _with(holdout_share=math.nan), {"experiment.holdout_share"}),
    ("long salt", _with(salt="s" * 129), {"experiment.salt"}),
    ("unit unspecified", _with(unit=AssignmentUnit.UNSPECIFIED), {"experiment.unit"}),
    (
        "metric kind unspecified",
        _with(metrics=(MetricSpec("m", MetricKind.UNSPECIFIED, True),)),
        {"experiment.metrics[0].kind"},
    ),
    (
        "duplicate metric",
        _with(
            metrics=(
                MetricSpec("m", MetricKind.NUMERIC, True),
                MetricSpec("m", MetricKind.BOOLEAN, True),
            )
        ),
        {"experiment.metrics[1].name"},
    ),
    (
        "bad metric name",
        _with(metrics=(MetricSpec("M!", MetricKind.NUMERIC, True),)),
        {"experiment.metrics[0].name"},
    ),
    (
        "33 metrics",
        _with(metrics=tuple(MetricSpec(f"m{i}", MetricKind.NUMERIC, True) for i in range(33))),
        {"experiment.metrics"},
    ),
    (
        "everything at once",
        _with(name="", prompt="", holdout_share=0.9, unit=AssignmentUnit.UNSPECIFIED),
        {"experiment.name", "experiment.prompt", "experiment.holdout_share", "experiment.unit"},
    ),
]


@pytest.mark.parametrize(
    ("change", "fields"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_experiments_name_every_bad_field(change: Change, fields: set[str]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_experiment(change(VALID))
    assert {v.field for v in raised.value.violations} == fields
    assert raised.value.reason == "FIELD_VIOLATION"


VALID_CHANGES: list[tuple[str, Change]] = [
    ("as it is", _with()),
    ("holdout one half", _with(holdout_share=0.5)),
    ("no metrics", _with(metrics=())),
    ("64-character name with dots", _with(name="e" + ".x" * 31 + "y")),
    ("16 variants", _variants(*(Variant(f"v-{i}_x", 0.001 * (i + 1)) for i in range(16)))),
    ("variant names starting with a digit", _variants(Variant("0", 1), Variant("1", 1))),
]


@pytest.mark.parametrize("change", [c[1] for c in VALID_CHANGES], ids=[c[0] for c in VALID_CHANGES])
def test_valid_experiments_pass(change: Change) -> None:
    new = change(VALID)
    checked = validate_new_experiment(new)
    assert dataclasses.replace(checked, salt="") == new


def test_an_empty_salt_becomes_random_and_a_given_salt_stays() -> None:
    first, second = validate_new_experiment(VALID), validate_new_experiment(VALID)
    assert len(first.salt) == 32
    assert int(first.salt, 16) >= 0
    assert first.salt != second.salt
    assert validate_new_experiment(dataclasses.replace(VALID, salt="mine")).salt == "mine"


@pytest.mark.parametrize(
    ("weights", "fields"),
    [
        ({}, {"weights"}),
        ({"v0": 0.0}, {"weights[v0]"}),
        ({"v0": -1.0, "v1": math.inf}, {"weights[v0]", "weights[v1]"}),
        ({"v0": 2e9}, {"weights[v0]"}),
    ],
    ids=["none", "zero", "negative and infinite", "too large"],
)
def test_weight_changes_need_positive_finite_weights(
    weights: dict[str, float], fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_weight_change(_experiment((1.0, 1.0)), weights)
    assert {v.field for v in raised.value.violations} == fields


def test_weight_changes_need_known_variants_and_an_unstopped_experiment() -> None:
    for state in (ExperimentState.DRAFT, ExperimentState.RUNNING):
        validate_weight_change(_experiment((1.0, 1.0), state=state), {"v0": 3.0})
    with pytest.raises(NotFound) as missing:
        validate_weight_change(_experiment((1.0, 1.0)), {"v9": 1.0})
    assert (missing.value.reason, missing.value.metadata["variant"]) == ("VARIANT_NOT_FOUND", "v9")
    with pytest.raises(FailedPrecondition) as stopped:
        validate_weight_change(_experiment((1.0, 1.0), state=ExperimentState.STOPPED), {"v0": 3.0})
    assert stopped.value.reason == "EXPERIMENT_NOT_RUNNING"


@pytest.mark.parametrize("state", [ExperimentState.DRAFT, ExperimentState.STOPPED])
def test_only_a_running_experiment_takes_units(state: ExperimentState) -> None:
    require_running("exp", ExperimentState.RUNNING)
    with pytest.raises(FailedPrecondition) as raised:
        require_running("exp", state)
    assert raised.value.reason == "EXPERIMENT_NOT_RUNNING"
    assert raised.value.metadata == {"experiment": "exp", "state": state.value}


@pytest.mark.parametrize(
    ("metric", "value", "stored", "field"),
    [
        ("latency", 12.5, 12.5, None),
        ("latency", 3, 3.0, None),
        ("thumbs_up", True, 1.0, None),
        ("thumbs_up", False, 0.0, None),
        ("latency", True, None, "value"),
        ("thumbs_up", 1.0, None, "value"),
        ("latency", math.nan, None, "numeric_value"),
        ("latency", -math.inf, None, "numeric_value"),
    ],
)
def test_outcomes_must_match_their_metric_kind(
    metric: str, value: float | bool, stored: float | None, field: str | None
) -> None:
    spec = _experiment((1.0, 1.0)).metric(metric)
    if field is None:
        assert validate_outcome(spec, value) == stored
        return
    with pytest.raises(InvalidArgument) as raised:
        validate_outcome(spec, value)
    assert [v.field for v in raised.value.violations] == [field]


def test_unknown_variants_and_metrics_are_not_found_with_their_reasons() -> None:
    experiment = _experiment((1.0, 1.0))
    assert experiment.variant("v1").prompt_version == 2
    assert experiment.weights == {"v0": 1.0, "v1": 1.0}
    with pytest.raises(NotFound) as variant:
        experiment.variant("nope")
    assert variant.value.reason == "VARIANT_NOT_FOUND"
    with pytest.raises(NotFound) as metric:
        experiment.metric("nope")
    assert metric.value.reason == "METRIC_NOT_FOUND"
