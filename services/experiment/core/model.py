"""The experiment engine's domain: experiments over prompt versions and models, their variants,
metrics and lifecycle, and the rules that new experiments, weight changes and recorded events
follow.

The types mirror `genai.experiment.v1` (`Experiment`, `Variant`, `MetricSpec`). Violations name
request fields (`experiment.variants[1].weight`, `weights[b]`, `unit_id`), so a servicer passes
them on unchanged.
"""

import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from services.common import reasons
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

JsonObject = Mapping[str, Any]

NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
"""Experiment and prompt names: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter."""
VARIANT_NAME_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,64}")
"""Variant names: 1 to 64 of `a-z 0-9 _ -`."""
METRIC_NAME_PATTERN: Final = re.compile(r"[a-z0-9._-]{1,64}")
"""Metric names: 1 to 64 of `a-z 0-9 . _ -`."""
MIN_VARIANTS: Final = 2
MAX_VARIANTS: Final = 16
MAX_WEIGHT: Final = 1e9
"""Weights are relative; the bound keeps their sum finite and exact enough."""
MAX_HOLDOUT_SHARE: Final = 0.5
MAX_DESCRIPTION: Final = 1024
MAX_MODEL: Final = 128
MAX_SALT: Final = 128
MAX_METRICS: Final = 32
MAX_UNIT_ID: Final = 256
MAX_REQUEST_ID: Final = 128
MAX_STOP_REASON: Final = 1024
SALT_BYTES: Final = 16
"""Random bytes of a generated salt (hex-encoded: 32 characters)."""


class ExperimentState(StrEnum):
    """Lifecycle state: draft -> running -> stopped (a draft may also stop directly)."""

    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"


class AssignmentUnit(StrEnum):
    """Which id of a request stays on one variant."""

    UNSPECIFIED = "unspecified"
    """Not set: rejected by validation, never stored."""
    USER = "user"
    SESSION = "session"


class MetricKind(StrEnum):
    """Statistical type of an outcome metric."""

    UNSPECIFIED = "unspecified"
    """Not set: rejected by validation, never stored."""
    NUMERIC = "numeric"
    BOOLEAN = "boolean"


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of an experiment. Everything but `weight` is immutable once created."""

    name: str
    weight: float
    """Relative weight, > 0: the arm's share is weight / sum of weights."""
    prompt_version: int = 0
    """0: the version of the prompt's `production` label."""
    model: str = ""
    """Catalog model the arm pins; empty leaves the choice to the router."""
    parameters: JsonObject = field(default_factory=dict)
    """Sampling parameter overrides, `genai.common.v1.SamplingParameters` as JSON (proto field
    names); stored as given."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One outcome metric of an experiment."""

    name: str
    kind: MetricKind
    higher_is_better: bool


@dataclass(frozen=True, slots=True)
class NewExperiment:
    """An experiment to create; its state, salt (when empty) and times come from the store."""

    name: str
    prompt: str
    variants: tuple[Variant, ...]
    control_variant: str
    unit: AssignmentUnit
    description: str = ""
    holdout_share: float = 0.0
    salt: str = ""
    """Empty: a random salt (see `validate_new_experiment`)."""
    metrics: tuple[MetricSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Experiment:
    """A stored experiment of one tenant."""

    tenant_id: str
    name: str
    description: str
    state: ExperimentState
    prompt: str
    variants: tuple[Variant, ...]
    control_variant: str
    holdout_share: float
    salt: str
    unit: AssignmentUnit
    metrics: tuple[MetricSpec, ...]
    weights_version: int
    """1 at creation, +1 per weight change; each assignment records the version it was made
    under, so the sample-ratio check can expect each unit's share at its time."""
    create_time: datetime
    start_time: datetime | None = None
    stop_time: datetime | None = None
    stop_reason: str = ""

    @property
    def weights(self) -> dict[str, float]:
        """Current weight per variant name, in variant order."""
        return {v.name: v.weight for v in self.variants}

    def variant(self, name: str) -> Variant:
        """The variant called `name`; NotFound (VARIANT_NOT_FOUND) when there is none."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise NotFound(
            f"experiment {self.name!r} has no variant {name!r}",
            reason=reasons.VARIANT_NOT_FOUND,
            metadata={"experiment": self.name, "variant": name},
        )

    def metric(self, name: str) -> MetricSpec:
        """The metric called `name`; NotFound (METRIC_NOT_FOUND) when there is none."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise NotFound(
            f"experiment {self.name!r} has no metric {name!r}",
            reason=reasons.METRIC_NOT_FOUND,
            metadata={"experiment": self.name, "metric": name},
        )


@dataclass(frozen=True, slots=True)
class WeightChange:
    """One entry of an experiment's weight history (version 1: the weights at creation)."""

    version: int
    weights: Mapping[str, float]
    change_time: datetime


# ------------------------------------------------------------------------------------- rules


def random_salt() -> str:
    """A fresh random salt: 32 hex characters."""
    return secrets.token_hex(SALT_BYTES)


def validate_new_experiment(new: NewExperiment, field: str = "experiment") -> NewExperiment:
    """`new` with a random salt when it has none; InvalidArgument naming every bad field of
    `field` (`experiment.variants[0].name`, ...)."""
    raise_if(new_experiment_violations(new, field))
    return new if new.salt else replace(new, salt=random_salt())


def new_experiment_violations(
    new: NewExperiment, field: str = "experiment"
) -> list[FieldViolation]:
    """Every rule `new` breaks, as violations of fields under `field`."""
    at = f"{field}." if field else ""
    violations = name_violations(f"{at}name", new.name)
    violations += _length_violations(f"{at}description", new.description, MAX_DESCRIPTION)
    violations += name_violations(f"{at}prompt", new.prompt)
    violations += _variants_violations(f"{at}variants", new.variants)
    if not new.control_variant:
        violations.append(FieldViolation(f"{at}control_variant", "is required"))
    elif new.control_variant not in {v.name for v in new.variants}:
        violations.append(
            FieldViolation(f"{at}control_variant", f"names no variant: {new.control_variant!r}")
        )
    if not (math.isfinite(new.holdout_share) and 0.0 <= new.holdout_share <= MAX_HOLDOUT_SHARE):
        violations.append(
            FieldViolation(f"{at}holdout_share", f"must be in [0, {MAX_HOLDOUT_SHARE}]")
        )
    violations += _length_violations(f"{at}salt", new.salt, MAX_SALT)
    if new.unit is AssignmentUnit.UNSPECIFIED:
        violations.append(FieldViolation(f"{at}unit", "is required (user or session)"))
    violations += _metrics_violations(f"{at}metrics", new.metrics)
    return violations


def name_violations(field: str, name: str) -> list[FieldViolation]:
    """What is wrong with an experiment or prompt name, as violations of `field`."""
    if not name:
        return [FieldViolation(field, "is required")]
    if NAME_PATTERN.fullmatch(name) is None:
        return [
            FieldViolation(
                field, "must be 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter"
            )
        ]
    return []


def weight_violations(field: str, weight: float) -> list[FieldViolation]:
    """What is wrong with one variant weight, as violations of `field`."""
    if not (math.isfinite(weight) and 0.0 < weight <= MAX_WEIGHT):
        return [FieldViolation(field, f"must be > 0 and at most {MAX_WEIGHT:g}")]
    return []


def validate_weight_change(experiment: Experiment, weights: Mapping[str, float]) -> None:
    """Checks a SetVariantWeights change against `experiment`: InvalidArgument for no or bad
    weights (`weights[<name>]`), NotFound (VARIANT_NOT_FOUND) for a name that is no variant,
    FailedPrecondition (EXPERIMENT_NOT_RUNNING) once the experiment is stopped."""
    violations = [] if weights else [FieldViolation("weights", "is required")]
    for name, weight in weights.items():
        violations += weight_violations(f"weights[{name}]", weight)
    raise_if(violations)
    for name in weights:
        experiment.variant(name)
    if experiment.state is ExperimentState.STOPPED:
        raise FailedPrecondition(
            f"experiment {experiment.name!r} is stopped: its weights are final",
            reason=reasons.EXPERIMENT_NOT_RUNNING,
            metadata={"experiment": experiment.name, "state": experiment.state.value},
        )


def require_running(name: str, state: ExperimentState) -> None:
    """FailedPrecondition (EXPERIMENT_NOT_RUNNING) unless experiment `name` is running."""
    if state is not ExperimentState.RUNNING:
        raise FailedPrecondition(
            f"experiment {name!r} is {state.value}, not running",
            reason=reasons.EXPERIMENT_NOT_RUNNING,
            metadata={"experiment": name, "state": state.value},
        )


def unit_id_violations(unit_id: str, field: str = "unit_id") -> list[FieldViolation]:
    """What is wrong with a unit id (required, at most 256 characters)."""
    if not unit_id:
        return [FieldViolation(field, "is required")]
    return _length_violations(field, unit_id, MAX_UNIT_ID)


def request_id_violations(request_id: str, field: str = "request_id") -> list[FieldViolation]:
    """What is wrong with an idempotency key (optional, at most 128 characters)."""
    return _length_violations(field, request_id, MAX_REQUEST_ID)


def validate_outcome(metric: MetricSpec, value: float | bool) -> float:
    """The stored value of one outcome (booleans as 0.0 and 1.0); InvalidArgument when `value`
    is not of the metric's kind (`value`) or is not finite (`numeric_value`)."""
    if metric.kind is MetricKind.BOOLEAN:
        if not isinstance(value, bool):
            raise InvalidArgument(
                violations=[
                    FieldViolation("value", f"metric {metric.name!r} is boolean: send a boolean")
                ]
            )
        return 1.0 if value else 0.0
    if isinstance(value, bool):
        raise InvalidArgument(
            violations=[
                FieldViolation("value", f"metric {metric.name!r} is numeric: send a number")
            ]
        )
    if not math.isfinite(value):
        raise InvalidArgument(violations=[FieldViolation("numeric_value", "must be finite")])
    return float(value)


def stop_reason_violations(reason: str, field: str = "reason") -> list[FieldViolation]:
    """What is wrong with a stop reason (at most 1024 characters)."""
    return _length_violations(field, reason, MAX_STOP_REASON)


def raise_if(violations: list[FieldViolation]) -> None:
    """InvalidArgument listing `violations`, if there are any."""
    if violations:
        raise InvalidArgument(violations=violations)


def _length_violations(field: str, text: str, limit: int) -> list[FieldViolation]:
    if len(text) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    return []


def _variants_violations(field: str, variants: Sequence[Variant]) -> list[FieldViolation]:
    violations = []
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        violations.append(
            FieldViolation(field, f"must have {MIN_VARIANTS} to {MAX_VARIANTS} variants")
        )
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        at = f"{field}[{index}]"
        if not variant.name:
            violations.append(FieldViolation(f"{at}.name", "is required"))
        elif VARIANT_NAME_PATTERN.fullmatch(variant.name) is None:
            violations.append(
                FieldViolation(f"{at}.name", "must be 1 to 64 of a-z, 0-9, '_' and '-'")
            )
        elif variant.name in seen:
            violations.append(FieldViolation(f"{at}.name", f"duplicate variant {variant.name!r}"))
        seen.add(variant.name)
        violations += weight_violations(f"{at}.weight", variant.weight)
        if variant.prompt_version < 0:
            violations.append(
                FieldViolation(f"{at}.prompt_version", "must be >= 0 (0: the production label)")
            )
        violations += _length_violations(f"{at}.model", variant.model, MAX_MODEL)
    return violations


def _metrics_violations(field: str, metrics: Sequence[MetricSpec]) -> list[FieldViolation]:
    violations = []
    if len(metrics) > MAX_METRICS:
        violations.append(FieldViolation(field, f"at most {MAX_METRICS} metrics"))
    seen: set[str] = set()
    for index, metric in enumerate(metrics):
        at = f"{field}[{index}]"
        if not metric.name:
            violations.append(FieldViolation(f"{at}.name", "is required"))
        elif METRIC_NAME_PATTERN.fullmatch(metric.name) is None:
            violations.append(
                FieldViolation(f"{at}.name", "must be 1 to 64 of a-z, 0-9, '.', '_' and '-'")
            )
        elif metric.name in seen:
            violations.append(FieldViolation(f"{at}.name", f"duplicate metric {metric.name!r}"))
        seen.add(metric.name)
        if metric.kind is MetricKind.UNSPECIFIED:
            violations.append(FieldViolation(f"{at}.kind", "is required (numeric or boolean)"))
    return violations
