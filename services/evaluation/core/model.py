"""The evaluation domain: datasets of examples, scorers, runs, per-output results, reports,
their comparison, gates and quality alerts (`genai.evaluation.v1`), with request validation.

Field names follow the proto so that the servicer converts mechanically; where the domain
holds more (a scorer's kind in its summary, the test behind a comparison) the extra fields say
so. Validation raises `InvalidArgument` with one `FieldViolation` per bad field, paths rooted
at the request field (`run.scorers[1].regex.pattern`).

This module imports neither grpc nor generated code.
"""

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, TypeAlias

from services.common.errors import FieldViolation, InvalidArgument
from services.experiment.core.statistics import Interval

NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
"""Dataset, prompt, label and scorer names: 1 to 64 of `a-z 0-9 . _ -`, starting with a
letter."""
NAME_RULE: Final = "must be 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter"
MAX_DESCRIPTION: Final = 1024
MAX_REQUEST_ID: Final = 128
MAX_MODEL: Final = 128
MAX_EXAMPLES_PER_BATCH: Final = 1000
MAX_REFERENCE_CHARS: Final = 100_000
MAX_TAGS: Final = 32
MAX_TAG_CHARS: Final = 256
MAX_INPUTS_CHARS: Final = 1_000_000
"""Canonical JSON size of one example's inputs (the prompt's own value limits apply too)."""
MAX_SCORERS: Final = 32
MAX_REPEATS: Final = 10
MAX_SUBSTRINGS: Final = 64
MAX_PATTERN_CHARS: Final = 1000
MAX_ERROR_CHARS: Final = 2000
DEFAULT_LABEL: Final = "production"
"""The label a run evaluates when it names neither a version nor a label."""


def raise_if(violations: Sequence[FieldViolation]) -> None:
    """InvalidArgument listing `violations`, if there are any."""
    if violations:
        raise InvalidArgument(violations=violations)


# ------------------------------------------------------------------------------- datasets


@dataclass(frozen=True, slots=True)
class NewDataset:
    """A dataset to create (`CreateDatasetRequest.dataset` without output-only fields)."""

    name: str
    prompt: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Dataset:
    """A named set of examples for evaluating one prompt (`Dataset`)."""

    name: str
    description: str
    prompt: str
    example_count: int
    create_time: datetime


@dataclass(frozen=True, slots=True)
class NewExample:
    """An example to add (`Example` without its output-only id)."""

    inputs: Mapping[str, Any]
    """Template variables (JSON values), checked against the prompt's variable schema."""
    reference: str = ""
    """Expected output for reference-based scorers; empty means none."""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Example:
    """One evaluation case of a dataset (`Example`).

    `id` is derived from the content (see `datasets.example_id`), so adding the same example
    twice stores it once.
    """

    id: str
    inputs: Mapping[str, Any]
    reference: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


def dataset_violations(dataset: NewDataset, field: str = "dataset") -> list[FieldViolation]:
    """What is wrong with a dataset to create."""
    return (
        name_violations(f"{field}.name", dataset.name)
        + name_violations(f"{field}.prompt", dataset.prompt)
        + length_violations(f"{field}.description", dataset.description, MAX_DESCRIPTION)
    )


def example_violations(
    examples: Sequence[NewExample], field: str = "examples"
) -> list[FieldViolation]:
    """What is wrong with a batch of examples apart from their inputs' schema: 1 to 1000
    examples, each as `single_example_violations` says."""
    if not examples:
        return [FieldViolation(field, "at least one example is required")]
    if len(examples) > MAX_EXAMPLES_PER_BATCH:
        return [FieldViolation(field, f"at most {MAX_EXAMPLES_PER_BATCH} examples per call")]
    return [
        violation
        for index, example in enumerate(examples)
        for violation in single_example_violations(example, f"{field}[{index}]")
    ]


def single_example_violations(example: NewExample, at: str) -> list[FieldViolation]:
    """What is wrong with one example apart from its inputs' schema (inputs of bounded
    size, bounded reference and tags); paths start with `at`."""
    violations: list[FieldViolation] = []
    if len(json.dumps(example.inputs, default=str)) > MAX_INPUTS_CHARS:
        violations.append(FieldViolation(f"{at}.inputs", f"over {MAX_INPUTS_CHARS} characters"))
    violations += length_violations(f"{at}.reference", example.reference, MAX_REFERENCE_CHARS)
    if len(example.tags) > MAX_TAGS:
        violations.append(FieldViolation(f"{at}.tags", f"at most {MAX_TAGS} tags"))
    for key, value in example.tags.items():
        if not key or len(key) > MAX_TAG_CHARS:
            violations.append(
                FieldViolation(f"{at}.tags", f"keys must be 1 to {MAX_TAG_CHARS} characters")
            )
        elif len(value) > MAX_TAG_CHARS:
            violations.append(
                FieldViolation(f"{at}.tags.{key[:64]}", f"at most {MAX_TAG_CHARS} characters")
            )
    return violations


# -------------------------------------------------------------------------------- scorers


class ScorerKind(StrEnum):
    """Which scorer a `ScorerSpec` configures (the `Scorer.kind` oneof)."""

    EXACT_MATCH = "exact_match"
    CONTAINS = "contains"
    REGEX = "regex"
    JSON_SCHEMA = "json_schema"
    EMBEDDING_SIMILARITY = "embedding_similarity"
    LATENCY = "latency"
    COST = "cost"
    LLM_JUDGE = "llm_judge"

    @property
    def lower_is_better(self) -> bool:
        """Latency (seconds) and cost (currency units) improve downwards; every other scorer
        yields a quality in [0, 1] that improves upwards."""
        return self in (ScorerKind.LATENCY, ScorerKind.COST)


@dataclass(frozen=True, slots=True)
class ExactMatch:
    """1 when the output equals the reference: by default case-insensitively, both trimmed."""

    case_sensitive: bool = False
    keep_whitespace: bool = False


@dataclass(frozen=True, slots=True)
class Contains:
    """1 when the output contains every substring (the reference when there are none)."""

    substrings: tuple[str, ...] = ()
    case_sensitive: bool = False


@dataclass(frozen=True, slots=True)
class Regex:
    """1 when `pattern` (RE2 syntax, see `pattern_problem`) is found in the output."""

    pattern: str


@dataclass(frozen=True, slots=True)
class JsonSchema:
    """1 when the output is JSON valid against the version's output schema (any JSON when the
    version has none)."""


@dataclass(frozen=True, slots=True)
class EmbeddingSimilarity:
    """Cosine similarity of output and reference embeddings, clamped to [0, 1]."""

    model: str = ""
    """Embedding model; empty means the platform's default."""


@dataclass(frozen=True, slots=True)
class Latency:
    """End-to-end latency of the request, in seconds."""


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost of the request, in currency units."""


@dataclass(frozen=True, slots=True)
class LlmJudge:
    """A grade from a judge model; the rubric is a registry prompt rendered with `input`,
    `output` and `reference`."""

    rubric_prompt: str
    rubric_label: str = ""
    """Empty means `production`."""
    model: str = ""
    """Empty means the router's choice."""


ScorerSettings: TypeAlias = (
    ExactMatch | Contains | Regex | JsonSchema | EmbeddingSimilarity | Latency | Cost | LlmJudge
)

KIND_OF: Final[Mapping[type, ScorerKind]] = {
    ExactMatch: ScorerKind.EXACT_MATCH,
    Contains: ScorerKind.CONTAINS,
    Regex: ScorerKind.REGEX,
    JsonSchema: ScorerKind.JSON_SCHEMA,
    EmbeddingSimilarity: ScorerKind.EMBEDDING_SIMILARITY,
    Latency: ScorerKind.LATENCY,
    Cost: ScorerKind.COST,
    LlmJudge: ScorerKind.LLM_JUDGE,
}


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """One configured scorer of a run (`Scorer`): its name in reports and gates, and its
    settings."""

    name: str
    settings: ScorerSettings

    @property
    def kind(self) -> ScorerKind:
        """Which scorer the settings configure."""
        return KIND_OF[type(self.settings)]


_LOOKAROUND_OR_BACKREF: Final = re.compile(r"\(\?(?:[=!]|<[=!]|P=|>|\()")
_REPEAT: Final = re.compile(r"[*+]|\{\d*,\d*\}")
"""A quantifier that repeats more than a fixed number of times (`?` and `{n}` do not)."""


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is unfit for the regex scorer, or None.

    The contract promises RE2 syntax, which matches in linear time; Python's `re` backtracks.
    So a pattern is refused when it uses what RE2 lacks (lookaround, backreferences, atomic
    groups, possessive quantifiers, conditionals) or repeats a group that holds a repeating
    quantifier (`(a+)+`, `(a{1,9})*`), the usual catastrophic shape. What still backtracks
    (overlapping alternatives under a repeat, `(a|aa)*`) is cut off by the scorer's search
    timeout (`scorers.REGEX_TIMEOUT_SECONDS`).
    """
    if not pattern:
        return "required"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"at most {MAX_PATTERN_CHARS} characters"
    try:
        re.compile(pattern)
    except re.error as e:
        return f"is not a valid regular expression: {e}"
    return _re2_problem(pattern)


def _re2_problem(pattern: str) -> str | None:
    """Scans the pattern once, tracking groups, classes and escapes."""
    groups: list[bool] = []  # per open group: whether it holds a repeating quantifier
    last_group_unbounded = False  # the atom just closed was a group holding one
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            following = pattern[index + 1 : index + 2]
            if not in_class and following.isdigit() and following != "0":
                return "backreferences are not RE2 syntax"
            index += 2
            last_group_unbounded = False
            continue
        if in_class:
            in_class = char != "]"
            index += 1
            continue
        if char == "[":
            in_class = True
            # A leading ']' (or '^]') is a literal inside the class.
            index += 1
            if pattern[index : index + 1] == "^":
                index += 1
            if pattern[index : index + 1] == "]":
                index += 1
            last_group_unbounded = False
            continue
        if char == "(":
            if _LOOKAROUND_OR_BACKREF.match(pattern, index):
                return "lookaround, backreferences, atomic groups and conditionals are not RE2"
            groups.append(False)
            last_group_unbounded = False
            index += 1
            continue
        if char == ")":
            inner = groups.pop() if groups else False
            last_group_unbounded = inner
            if groups and inner:
                groups[-1] = True
            index += 1
            continue
        quantifier = _REPEAT.match(pattern, index)
        if quantifier:
            end = quantifier.end()
            if pattern[end : end + 1] == "+":
                return "possessive quantifiers are not RE2 syntax"
            if last_group_unbounded:
                return "nested unbounded quantifiers (like (a+)+) can take exponential time"
            if groups:
                groups[-1] = True
            index = end
            last_group_unbounded = False
            continue
        if char in "?}" and pattern[index + 1 : index + 2] == "+":
            return "possessive quantifiers are not RE2 syntax"
        last_group_unbounded = False
        index += 1
    return None


def scorer_violations(scorers: Sequence[ScorerSpec], field: str) -> list[FieldViolation]:
    """What is wrong with a run's scorers: 1 to 32, unique names, valid settings."""
    if not scorers:
        return [FieldViolation(field, "at least one scorer is required")]
    if len(scorers) > MAX_SCORERS:
        return [FieldViolation(field, f"at most {MAX_SCORERS} scorers")]
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for index, scorer in enumerate(scorers):
        at = f"{field}[{index}]"
        violations += name_violations(f"{at}.name", scorer.name)
        if scorer.name in seen:
            violations.append(FieldViolation(f"{at}.name", f"duplicate scorer {scorer.name!r}"))
        seen.add(scorer.name)
        settings = scorer.settings
        if type(settings) not in KIND_OF:
            violations.append(FieldViolation(at, "a scorer kind is required"))
            continue
        where = f"{at}.{KIND_OF[type(settings)].value}"
        match settings:
            case Contains(substrings=substrings):
                if len(substrings) > MAX_SUBSTRINGS:
                    violations.append(
                        FieldViolation(f"{where}.substrings", f"at most {MAX_SUBSTRINGS}")
                    )
                violations += [
                    FieldViolation(f"{where}.substrings[{i}]", "must not be empty")
                    for i, text in enumerate(substrings)
                    if not text
                ]
            case Regex(pattern=pattern):
                problem = pattern_problem(pattern)
                if problem:
                    violations.append(FieldViolation(f"{where}.pattern", problem))
            case EmbeddingSimilarity(model=model):
                violations += length_violations(f"{where}.model", model, MAX_MODEL)
            case LlmJudge(rubric_prompt=rubric, rubric_label=label, model=model):
                violations += name_violations(f"{where}.rubric_prompt", rubric)
                if label:
                    violations += name_violations(f"{where}.rubric_label", label)
                violations += length_violations(f"{where}.model", model, MAX_MODEL)
    return violations


# ----------------------------------------------------------------------------------- runs


class RunState(StrEnum):
    """Lifecycle state of an evaluation run (`RunState`)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the run has ended (succeeded, failed or cancelled)."""
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What a caller asks to evaluate (`EvaluationRun` without output-only fields).

    At most one of `prompt_version` (0: unset) and `prompt_label` (empty: unset) is set;
    `validate_run_spec` fills in `production` when neither is and `repeats` 1 for 0.
    """

    prompt: str
    dataset: str
    scorers: tuple[ScorerSpec, ...]
    prompt_version: int = 0
    prompt_label: str = ""
    model: str = ""
    repeats: int = 1
    baseline_report_id: str = ""


@dataclass(frozen=True, slots=True)
class RunProgress:
    """Work of a run (`RunProgress`): outputs to generate, done, and failed (counted done)."""

    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class EvaluationRun:
    """One evaluation run with its state (`EvaluationRun`). `resolved_prompt_version` is 0
    until the run starts; `report_id` empty until it succeeds; `end_time` None until it
    ends."""

    id: str
    spec: RunSpec
    state: RunState
    progress: RunProgress
    resolved_prompt_version: int
    report_id: str
    error: str
    create_time: datetime
    end_time: datetime | None


def validate_run_spec(spec: RunSpec, field: str = "run") -> RunSpec:
    """The spec with defaults applied (label `production` when no version or label is
    given, 1 repeat for 0); InvalidArgument naming every bad field."""
    violations = name_violations(f"{field}.prompt", spec.prompt) + name_violations(
        f"{field}.dataset", spec.dataset
    )
    if spec.prompt_version < 0:
        violations.append(FieldViolation(f"{field}.prompt_version", "must be >= 1"))
    if spec.prompt_version and spec.prompt_label:
        violations.append(
            FieldViolation(f"{field}.prompt_label", "give a version or a label, not both")
        )
    if spec.prompt_label:
        violations += name_violations(f"{field}.prompt_label", spec.prompt_label)
    violations += length_violations(f"{field}.model", spec.model, MAX_MODEL)
    if not 0 <= spec.repeats <= MAX_REPEATS:
        violations.append(FieldViolation(f"{field}.repeats", f"must be in [0, {MAX_REPEATS}]"))
    violations += length_violations(
        f"{field}.baseline_report_id", spec.baseline_report_id, MAX_REQUEST_ID
    )
    violations += scorer_violations(spec.scorers, f"{field}.scorers")
    raise_if(violations)
    return replace(
        spec,
        prompt_label=spec.prompt_label or ("" if spec.prompt_version else DEFAULT_LABEL),
        repeats=spec.repeats or 1,
    )


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of a generation (`genai.common.v1.TokenUsage`)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class Score:
    """The value one scorer gave one output (`Score`).

    `value` is in [0, 1] for quality scorers, seconds for latency, currency units for cost.
    `scored` is False when the scorer could not score the output (`explanation` says why);
    such scores are left out of every summary.
    """

    scorer: str
    value: float
    scored: bool = True
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class ExampleResult:
    """One output of one example with its scores (`ExampleResult`). `error` is non-empty
    when generation failed."""

    example_id: str
    repeat: int
    output: str
    scores: tuple[Score, ...]
    usage: TokenUsage = TokenUsage()
    cost: Decimal = Decimal(0)
    currency: str = ""
    latency_seconds: float = 0.0
    model: str = ""
    error: str = ""


# ---------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class ScorerSummary:
    """One scorer over a run (`ScorerSummary`); see `reports.summarize` for the statistics.

    `kind` is extra (not in the proto): comparisons need each scorer's direction.
    """

    scorer: str
    kind: ScorerKind
    count: int
    mean: float
    mean_interval: Interval
    flakiness: float


@dataclass(frozen=True, slots=True)
class ScorerComparison:
    """One scorer across a baseline and a candidate report (`ScorerComparison`).

    `paired` and `test` are extra: whether the difference was paired by example, and the
    test (`paired_t` or `welch_t`).
    """

    scorer: str
    baseline_mean: float
    candidate_mean: float
    difference: float
    difference_interval: Interval
    p_value: float
    regressed: bool
    paired: bool = False
    test: str = ""


@dataclass(frozen=True, slots=True)
class ExampleRegression:
    """One example whose mean score over repeats got worse (`ExampleRegression`)."""

    example_id: str
    scorer: str
    baseline_value: float
    candidate_value: float


@dataclass(frozen=True, slots=True)
class ReportComparison:
    """A candidate report against a baseline (`ReportComparison`)."""

    baseline_report_id: str
    candidate_report_id: str
    scorers: tuple[ScorerComparison, ...]
    example_regressions: tuple[ExampleRegression, ...]
    regressed: bool


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """The immutable result of a finished run (`EvaluationReport`)."""

    id: str
    run_id: str
    prompt: str
    prompt_version: int
    prompt_content_hash: str
    model: str
    dataset: str
    summaries: tuple[ScorerSummary, ...]
    results: tuple[ExampleResult, ...]
    baseline_comparison: ReportComparison | None
    usage: TokenUsage
    cost: Decimal
    currency: str
    create_time: datetime

    def summary(self, scorer: str) -> ScorerSummary | None:
        """The summary of `scorer`, None when the report has none."""
        return next((s for s in self.summaries if s.scorer == scorer), None)


# ------------------------------------------------------------------------------- gates


@dataclass(frozen=True, slots=True)
class GateThreshold:
    """A lower bound on one scorer's mean (`genai.prompt.v1.GateThreshold`)."""

    scorer: str
    min_mean: float


@dataclass(frozen=True, slots=True)
class EvaluationGate:
    """The evaluation a version must pass before a protected label may point to it
    (`genai.prompt.v1.EvaluationGate`)."""

    dataset: str
    thresholds: tuple[GateThreshold, ...]

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "EvaluationGate":
        """The gate from its JSON form as the prompt registry keeps it (`Prompt.
        evaluation_gate`: proto field names, `thresholds` a list of `{scorer, min_mean}`);
        InvalidArgument when it is malformed."""
        violations: list[FieldViolation] = []
        dataset = document.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            violations.append(FieldViolation("evaluation_gate.dataset", "required"))
        raw = document.get("thresholds")
        thresholds: list[GateThreshold] = []
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            violations.append(FieldViolation("evaluation_gate.thresholds", "at least one"))
            raw = []
        for index, item in enumerate(raw):
            at = f"evaluation_gate.thresholds[{index}]"
            scorer = item.get("scorer") if isinstance(item, Mapping) else None
            bound = item.get("min_mean", 0.0) if isinstance(item, Mapping) else None
            if not isinstance(scorer, str) or not scorer:
                violations.append(FieldViolation(f"{at}.scorer", "required"))
            elif (
                isinstance(bound, bool)
                or not isinstance(bound, int | float)
                or not math.isfinite(bound)
            ):
                violations.append(FieldViolation(f"{at}.min_mean", "must be a finite number"))
            else:
                thresholds.append(GateThreshold(scorer, float(bound)))
        raise_if(violations)
        return cls(str(dataset), tuple(thresholds))


@dataclass(frozen=True, slots=True)
class GateFailure:
    """One threshold a report misses: `mean` is None when the report lacks the scorer or
    scored no output with it."""

    scorer: str
    min_mean: float
    mean: float | None


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """The gate's answer for one prompt version.

    `report_id` is the newest passing report when `passed`; otherwise the newest report of
    the version on the gate's dataset (empty when there is none) and `failures` its misses.
    """

    passed: bool
    report_id: str
    failures: tuple[GateFailure, ...] = ()


# ------------------------------------------------------------------------------ alerts


class AlertState(StrEnum):
    """Lifecycle of a quality alert (`AlertState`)."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class NewQualityAlert:
    """A drift detection to record as a firing alert."""

    prompt: str
    prompt_version: int
    scorer: str
    detector: str
    baseline_mean: float
    observed_mean: float
    sample_count: int


@dataclass(frozen=True, slots=True)
class QualityAlert:
    """Online scores of a prompt version drifted below its evaluation baseline
    (`QualityAlert`)."""

    id: str
    prompt: str
    prompt_version: int
    scorer: str
    detector: str
    baseline_mean: float
    observed_mean: float
    sample_count: int
    state: AlertState
    fire_time: datetime
    resolve_time: datetime | None


# ---------------------------------------------------------------------------- helpers


def name_violations(field: str, name: str) -> list[FieldViolation]:
    """`required` or the name rule, for a name that must match `NAME_PATTERN`."""
    if not name:
        return [FieldViolation(field, "required")]
    if NAME_PATTERN.fullmatch(name) is None:
        return [FieldViolation(field, NAME_RULE)]
    return []


def length_violations(field: str, text: str, limit: int) -> list[FieldViolation]:
    """`at most N characters` when `text` is longer than `limit`."""
    if len(text) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    return []


def new_id() -> str:
    """A fresh id for a run, report or alert: 32 random hex digits."""
    return uuid.uuid4().hex
