"""Scorers: each turns one generated output of one example into a `Score`.

Quality scorers yield values in [0, 1]: exact match, contains, regex and JSON-schema validity
are 1 or 0; embedding similarity is the cosine of output and reference embeddings clamped to
[0, 1]; the LLM judge's grade is normalised to [0, 1]. Latency and cost yield the raw measure
(seconds, currency units), as the contract says; budgets on them are gate thresholds, not
scorer settings.

A scorer that cannot score an output (no reference to compare with, a judge reply that does
not parse, an embedding or judge call that failed) returns `scored=False` with an
explanation rather than raising: such scores are left out of summaries. The embedding model
and the judge are injected (`Embedder`, `Judge`): the servicer backs them with
InferenceService.Embed and a gateway completion of the rubric prompt.

This module imports neither grpc nor generated code.
"""

import asyncio
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Protocol

import regex  # type: ignore[import-untyped]  # ships no type stubs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from services.common.errors import DomainError
from services.evaluation.core.model import (
    Contains,
    Cost,
    EmbeddingSimilarity,
    ExactMatch,
    Example,
    ExampleResult,
    JsonSchema,
    Latency,
    LlmJudge,
    Regex,
    Score,
    ScorerSpec,
    TokenUsage,
)

MAX_REGEX_INPUT_CHARS: Final = 20_000
"""The regex scorer searches at most this many leading characters of an output."""
REGEX_TIMEOUT_SECONDS: Final = 2.0
"""A regex search still running after this is abandoned (the output is left unscored)."""
MAX_EXPLANATION_CHARS: Final = 500
"""Explanations are cut to this length (judge reasoning included)."""


@dataclass(frozen=True, slots=True)
class GenerationOutput:
    """What one generation produced, as the scorers see it."""

    text: str
    """The output after the gateway's response processing."""
    parsed: Any = None
    """The output as JSON when response processing parsed it; None means `text` is parsed
    where JSON is needed."""
    first_token_seconds: float = 0.0
    """Time to first token."""
    latency_seconds: float = 0.0
    """End-to-end latency."""
    cost: Decimal = Decimal(0)
    currency: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str = ""


class Scorer(Protocol):
    """Scores outputs for one configured scorer of a run."""

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        ...

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """The score of `output`, generated for `example`."""
        ...


class Embedder(Protocol):
    """Embeds texts with a model (empty: the platform's default); one vector per text."""

    async def __call__(self, texts: Sequence[str], model: str) -> Sequence[Sequence[float]]: ...


class Judge(Protocol):
    """Renders the rubric prompt of `settings` with `variables` (`input`, `output`,
    `reference`), has the judge model complete it and returns the reply text."""

    async def __call__(self, settings: LlmJudge, variables: Mapping[str, str]) -> str: ...


def build_scorer(
    spec: ScorerSpec,
    *,
    output_schema: Mapping[str, Any] | None = None,
    embed: Embedder | None = None,
    judge: Judge | None = None,
) -> Scorer:
    """The scorer for `spec`. `output_schema` is the evaluated version's output schema (for
    the JSON-schema scorer); `embed` and `judge` are required by the scorers that use them
    (ValueError otherwise: a wiring mistake, not a caller's)."""
    match spec.settings:
        case ExactMatch() as settings:
            return ExactMatchScorer(spec.name, settings)
        case Contains() as settings:
            return ContainsScorer(spec.name, settings)
        case Regex() as settings:
            return RegexScorer(spec.name, settings)
        case JsonSchema():
            return JsonSchemaScorer(spec.name, output_schema)
        case EmbeddingSimilarity() as settings:
            if embed is None:
                raise ValueError(f"scorer {spec.name!r} needs an embedder")
            return EmbeddingSimilarityScorer(spec.name, settings, embed)
        case Latency():
            return LatencyScorer(spec.name)
        case Cost():
            return CostScorer(spec.name)
        case LlmJudge() as settings:
            if judge is None:
                raise ValueError(f"scorer {spec.name!r} needs a judge")
            return LlmJudgeScorer(spec.name, settings, judge)
    raise ValueError(f"scorer {spec.name!r} has no kind")


async def score_output(
    scorers: Sequence[Scorer], example: Example, output: GenerationOutput
) -> tuple[Score, ...]:
    """Every scorer's score of one output, in `scorers` order, computed concurrently. A
    scorer that raises yields `scored=False` with the error's message: one broken scorer
    (or judge call) never loses the other scores."""
    results = await asyncio.gather(
        *(scorer.score(example, output) for scorer in scorers), return_exceptions=True
    )
    scores: list[Score] = []
    for scorer, result in zip(scorers, results, strict=True):
        if isinstance(result, Score):
            scores.append(result)
        elif isinstance(result, Exception):
            scores.append(_unscored(scorer.name, f"scorer failed: {_message(result)}"))
        else:  # a BaseException (cancellation): not ours to swallow
            raise result
    return tuple(scores)


def failed_generation(
    scorers: Sequence[Scorer], example_id: str, repeat: int, error: str, model: str = ""
) -> ExampleResult:
    """The result of an output whose generation failed: every score unscored, so the failure
    counts in the run's progress but not in any scorer's mean."""
    reason = f"generation failed: {error}"
    return ExampleResult(
        example_id=example_id,
        repeat=repeat,
        output="",
        scores=tuple(_unscored(scorer.name, reason) for scorer in scorers),
        model=model,
        error=error[:2000],
    )


# ------------------------------------------------------------------------------- scorers


class ExactMatchScorer:
    """1 when the output equals the reference after normalisation: both trimmed unless
    `keep_whitespace`, both case-folded unless `case_sensitive`."""

    def __init__(self, name: str, settings: ExactMatch) -> None:
        self._name = name
        self._settings = settings

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """1.0 on a match, 0.0 otherwise; unscored without a reference."""
        if not example.reference:
            return _unscored(self._name, "the example has no reference")
        if self._normalise(output.text) == self._normalise(example.reference):
            return Score(self._name, 1.0, explanation="matches the reference")
        return Score(self._name, 0.0, explanation="differs from the reference")

    def _normalise(self, text: str) -> str:
        if not self._settings.keep_whitespace:
            text = text.strip()
        return text if self._settings.case_sensitive else text.casefold()


class ContainsScorer:
    """1 when the output contains every substring (the example's reference when the scorer
    lists none), case-folded unless `case_sensitive`."""

    def __init__(self, name: str, settings: Contains) -> None:
        self._name = name
        self._settings = settings

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """1.0 when nothing is missing, else 0.0 naming what is; unscored when there is
        nothing to look for."""
        wanted = self._settings.substrings or ((example.reference,) if example.reference else ())
        if not wanted:
            return _unscored(self._name, "no substrings and the example has no reference")
        fold = not self._settings.case_sensitive
        text = output.text.casefold() if fold else output.text
        missing = [w for w in wanted if (w.casefold() if fold else w) not in text]
        if not missing:
            return Score(self._name, 1.0, explanation=f"contains all {len(wanted)}")
        shown = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
        return Score(self._name, 0.0, explanation=_cut(f"missing {shown}"))


class RegexScorer:
    """1 when the pattern is found in the output's first `MAX_REGEX_INPUT_CHARS`
    characters. The pattern is compiled once, with the `regex` engine (Python's `re` syntax,
    plus a search timeout): the search runs in a worker thread that releases the GIL and
    gives up after `REGEX_TIMEOUT_SECONDS`, so no pattern can stall the event loop or the
    process however it backtracks."""

    def __init__(self, name: str, settings: Regex) -> None:
        self._name = name
        self._pattern = regex.compile(settings.pattern)

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """1.0 on a match (showing it), 0.0 otherwise; unscored when the search times out."""
        try:
            found = await asyncio.to_thread(
                self._pattern.search,
                output.text[:MAX_REGEX_INPUT_CHARS],
                concurrent=True,
                timeout=REGEX_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            return _unscored(self._name, f"the search took over {REGEX_TIMEOUT_SECONDS:g} s")
        if found is None:
            return Score(self._name, 0.0, explanation="no match")
        return Score(self._name, 1.0, explanation=_cut(f"matched {found.group(0)!r}"))


class JsonSchemaScorer:
    """1 when the output is JSON valid against the version's output schema (draft 2020-12),
    or any JSON when the version has none; 0 with the first violation otherwise."""

    def __init__(self, name: str, schema: Mapping[str, Any] | None) -> None:
        self._name = name
        self._problem = ""
        self._validator: Draft202012Validator | None = None
        if schema is not None:
            try:
                Draft202012Validator.check_schema(schema)
                self._validator = Draft202012Validator(schema)
            except SchemaError as e:
                self._problem = f"the version's output schema is invalid: {e.message}"

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """1.0 for valid JSON, 0.0 naming the problem; unscored when the schema is broken."""
        if self._problem:
            return _unscored(self._name, _cut(self._problem))
        value = output.parsed
        if value is None:
            try:
                value = json.loads(output.text)
            except ValueError as e:
                return Score(self._name, 0.0, explanation=_cut(f"not JSON: {e}"))
        if self._validator is None:
            return Score(self._name, 1.0, explanation="valid JSON")
        error = best_match(self._validator.iter_errors(value))
        if error is None:
            return Score(self._name, 1.0, explanation="valid against the output schema")
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return Score(self._name, 0.0, explanation=_cut(f"at {where}: {error.message}"))


class EmbeddingSimilarityScorer:
    """Cosine similarity of the output's and the reference's embeddings, negative values
    clamped to 0 (opposite meaning scores like unrelated meaning)."""

    def __init__(self, name: str, settings: EmbeddingSimilarity, embed: Embedder) -> None:
        self._name = name
        self._model = settings.model
        self._embed = embed

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """The clamped cosine; unscored without a reference or with a degenerate vector."""
        if not example.reference:
            return _unscored(self._name, "the example has no reference")
        vectors = await self._embed([output.text, example.reference], self._model)
        if len(vectors) != 2:
            return _unscored(self._name, f"the embedder returned {len(vectors)} vectors, not 2")
        similarity = cosine_similarity(vectors[0], vectors[1])
        if similarity is None:
            return _unscored(self._name, "an embedding is empty, zero or of another length")
        return Score(
            self._name,
            min(1.0, max(0.0, similarity)),
            explanation=f"cosine similarity {similarity:.4f}",
        )


class LatencyScorer:
    """The output's end-to-end latency in seconds."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """`latency_seconds`, with time to first token in the explanation."""
        return Score(
            self._name,
            max(0.0, output.latency_seconds),
            explanation=f"first token after {output.first_token_seconds:.3f} s",
        )


class CostScorer:
    """The output's cost in currency units at catalog prices."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """The cost as a float, its exact amount and currency in the explanation."""
        return Score(self._name, float(output.cost), explanation=f"{output.cost} {output.currency}")


class LlmJudgeScorer:
    """A judge model's grade of the output: the rubric prompt is rendered with `input` (the
    example's inputs as canonical JSON), `output` and `reference`; the reply is read by
    `parse_judgement`. A reply that does not parse leaves the output unscored."""

    def __init__(self, name: str, settings: LlmJudge, judge: Judge) -> None:
        self._name = name
        self._settings = settings
        self._judge = judge

    @property
    def name(self) -> str:
        """The scorer's name in the run."""
        return self._name

    async def score(self, example: Example, output: GenerationOutput) -> Score:
        """The normalised grade with the judge's reason as explanation."""
        variables = {
            "input": json.dumps(
                dict(example.inputs), sort_keys=True, ensure_ascii=False, default=str
            ),
            "output": output.text,
            "reference": example.reference,
        }
        reply = await self._judge(self._settings, variables)
        try:
            value, reason = parse_judgement(reply)
        except ValueError as e:
            return _unscored(self._name, _cut(f"unreadable judge reply: {e}"))
        return Score(self._name, value, explanation=_cut(reason))


# ---------------------------------------------------------------------------- judgements

_FENCE: Final = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_NUMBER: Final = r"[-+]?\d+(?:\.\d+)?"
_LEADING: Final = re.compile(
    rf"^[\s*_#>`\"']*(?:(?:score|rating|grade)\b[\s*]*(?:[:=]|is)?[\s*]*)?(?P<value>{_NUMBER})"
    rf"\s*(?:(?:/|out of)\s*(?P<scale>{_NUMBER})|(?P<percent>%))?",
    re.IGNORECASE,
)
_MAX_JSON_STARTS: Final = 20


def parse_judgement(reply: str) -> tuple[float, str]:
    """(score in [0, 1], reason) from a judge's reply; ValueError saying why when there is
    none.

    Read in order: a JSON object with `score` (and optionally `max_score`, and `reason` or
    `explanation`), anywhere in the reply (code fences allowed); else a leading number,
    optionally after `score:`/`rating:`/`grade:`, the rest of the reply being the reason.
    A score is taken as it is when in [0, 1]; as a fraction when a scale is given (`4/5`,
    `4 out of 5`, `"max_score": 5`); as a percentage with `%`. Anything else (a bare `4`) is
    refused rather than guessed: `1` could be the top of [0, 1] or the bottom of 1-5, so
    rubric prompts must ask for [0, 1] or state the scale.
    """
    text = _FENCE.sub("", reply.strip()).strip()
    if not text:
        raise ValueError("the reply is empty")
    found = _json_object(text)
    if found is not None:
        if "score" not in found:
            raise ValueError("the JSON object has no 'score'")
        reason = found.get("reason", found.get("explanation", ""))
        value = _normalise(_as_number(found["score"]), _optional_number(found.get("max_score")))
        return value, str(reason) if reason is not None else ""
    match = _LEADING.match(text)
    if match is None:
        raise ValueError("no JSON object with a score and no leading number")
    scale = match.group("scale")
    value = float(match.group("value"))
    if match.group("percent"):
        value, scale_value = value / 100.0, None
    else:
        scale_value = float(scale) if scale is not None else None
    reason = text[match.end() :].lstrip(" \t\r\n.,;:-*)]").strip()
    return _normalise(value, scale_value), reason


def _json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(_MAX_JSON_STARTS):
        if start < 0:
            return None
        try:
            found, _end = decoder.raw_decode(text, start)
        except ValueError:
            found = None
        if isinstance(found, dict):
            return found
        start = text.find("{", start + 1)
    return None


def _as_number(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("the score is a boolean, not a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _LEADING.match(value.strip())
        if match is not None and match.end() == len(value.strip()):
            number = float(match.group("value"))
            if match.group("percent"):
                return number / 100.0
            if match.group("scale") is not None:
                return _normalise(number, float(match.group("scale")))
            return number
    raise ValueError(f"the score {str(value)[:40]!r} is not a number")


def _optional_number(value: object) -> float | None:
    return None if value is None else _as_number(value)


def _normalise(value: float, scale: float | None) -> float:
    if not math.isfinite(value):
        raise ValueError("the score is not finite")
    if scale is not None:
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"the scale {scale:g} is not a positive number")
        if not 0.0 <= value <= scale:
            raise ValueError(f"the score {value:g} is outside [0, {scale:g}]")
        return value / scale
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"the score {value:g} is outside [0, 1]; give a value in [0, 1] or a scale (4/5)"
        )
    return value


# ------------------------------------------------------------------------------- repeats


@dataclass(frozen=True, slots=True)
class RepeatAggregate:
    """One scorer on one example over its repeats: the scored repeats' `count`, `mean` and
    population standard deviation `spread` (0 when every repeat scored the same)."""

    count: int
    mean: float
    spread: float

    def passes(self, threshold: float) -> bool:
        """Whether the example passes a bound on its mean (a quality scorer's example passes
        with mean >= `threshold`; the mean, not a majority vote, so that one flaky repeat
        moves the verdict only as much as it moves the mean)."""
        return self.count > 0 and self.mean >= threshold


def aggregate_repeats(scores: Sequence[Score]) -> RepeatAggregate:
    """The aggregate of one scorer's scores of one example's repeats; unscored repeats are
    left out (count 0, mean 0 when none is scored)."""
    values = [s.value for s in scores if s.scored]
    if not values:
        return RepeatAggregate(0, 0.0, 0.0)
    return RepeatAggregate(len(values), math.fsum(values) / len(values), statistics.pstdev(values))


# ------------------------------------------------------------------------------- helpers


def cosine_similarity(a: Sequence[float], b: Sequence[float]) -> float | None:
    """cos(a, b), None when the vectors are empty, of different lengths, zero or not
    finite."""
    if not a or len(a) != len(b):
        return None
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if norm == 0.0 or not math.isfinite(norm) or not math.isfinite(dot):
        return None
    return max(-1.0, min(1.0, dot / norm))


def _unscored(scorer: str, explanation: str) -> Score:
    return Score(scorer, 0.0, scored=False, explanation=explanation)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_EXPLANATION_CHARS else text[: MAX_EXPLANATION_CHARS - 3] + "..."


def _message(error: Exception) -> str:
    """A domain error's message (meant for callers); only the class name of anything else,
    which may carry internals."""
    if isinstance(error, DomainError):
        return _cut(error.message)
    return f"unexpected {type(error).__name__}"
