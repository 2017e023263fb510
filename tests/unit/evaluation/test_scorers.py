"""The evaluation scorers, table-driven: exact match, contains, regex (with the RE2 checks and
the search timeout), JSON-schema validity, latency, cost, embedding similarity, the LLM judge
and the parsing of its replies, repeats, and run-spec validation."""

import math
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.evaluation.core.model import (
    DEFAULT_LABEL,
    Contains,
    Cost,
    EmbeddingSimilarity,
    ExactMatch,
    Example,
    JsonSchema,
    Latency,
    LlmJudge,
    Regex,
    RunSpec,
    Score,
    ScorerSettings,
    ScorerSpec,
    TokenUsage,
    pattern_problem,
    validate_run_spec,
)
from services.evaluation.core.scorers import (
    MAX_REGEX_INPUT_CHARS,
    REGEX_TIMEOUT_SECONDS,
    GenerationOutput,
    aggregate_repeats,
    build_scorer,
    cosine_similarity,
    failed_generation,
    parse_judgement,
    score_output,
)

EXAMPLE = Example("e1", {"question": "capital of France?"}, reference="Paris")
NO_REFERENCE = Example("e2", {"question": "anything"})


async def score(
    settings: ScorerSettings,
    text: str,
    example: Example = EXAMPLE,
    **kwargs: Any,
) -> Score:
    scorer = build_scorer(ScorerSpec("s", settings), **kwargs)
    return await scorer.score(example, GenerationOutput(text))


@pytest.mark.parametrize(
    ("settings", "text", "value"),
    [
        (ExactMatch(), "Paris", 1.0),
        (ExactMatch(), "  paris\n", 1.0),
        (ExactMatch(case_sensitive=True), "paris", 0.0),
        (ExactMatch(keep_whitespace=True), " Paris", 0.0),
        (ExactMatch(case_sensitive=True, keep_whitespace=True), "Paris", 1.0),
        (ExactMatch(), "Paris, France", 0.0),
        (Contains(), "It is PARIS.", 1.0),
        (Contains(case_sensitive=True), "It is PARIS.", 0.0),
        (Contains(substrings=("capital", "France")), "The capital of France is Paris", 1.0),
        (Contains(substrings=("capital", "Spain")), "The capital of France is Paris", 0.0),
        (Regex(r"\bParis\b"), "It is Paris.", 1.0),
        (Regex(r"^\d{4}$"), "2024", 1.0),
        (Regex(r"^\d{4}$"), "in 2024", 0.0),
        (Regex(r"(?i)paris"), "PARIS", 1.0),
    ],
)
async def test_string_scorers(settings: ScorerSettings, text: str, value: float) -> None:
    result = await score(settings, text)
    assert result.scored
    assert result.value == value
    assert result.scorer == "s"


@pytest.mark.parametrize(
    ("settings", "text", "explained"),
    [
        (Contains(substrings=("capital", "Spain", "Madrid")), "capital", "'Spain', 'Madrid'"),
        (Regex(r"\d+"), "none here", "no match"),
        (Regex(r"\d+"), "abc 123 def", "'123'"),
        (ExactMatch(), "London", "differs"),
    ],
)
async def test_explanations_name_what_happened(
    settings: ScorerSettings, text: str, explained: str
) -> None:
    assert explained in (await score(settings, text)).explanation


@pytest.mark.parametrize(
    "settings", [ExactMatch(), Contains(), EmbeddingSimilarity()], ids=lambda s: type(s).__name__
)
async def test_reference_scorers_without_reference_are_unscored(
    settings: ScorerSettings,
) -> None:
    result = await score(settings, "Paris", NO_REFERENCE, embed=Embeddings({}))
    assert not result.scored
    assert "no reference" in result.explanation


async def test_regex_reads_only_a_bounded_prefix() -> None:
    text = "x" * MAX_REGEX_INPUT_CHARS + "needle"
    assert (await score(Regex("needle"), text)).value == 0.0
    assert (await score(Regex("needle"), text[-100:])).value == 1.0


async def test_a_backtracking_regex_is_cut_off_by_the_timeout() -> None:
    # Overlapping alternatives pass the static check but backtrack exponentially.
    assert pattern_problem(r"(\w|\w\w)*\d$") is None
    started = time.monotonic()
    result = await score(Regex(r"(\w|\w\w)*\d$"), "a" * 5000 + "!")
    assert time.monotonic() - started < REGEX_TIMEOUT_SECONDS + 2.0
    assert not result.scored
    assert "took over" in result.explanation


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"\bParis\b", None),
        (r"[(+*]+x", None),
        (r"(ab)+c", None),
        (r"(a|b)*", None),
        (r"\(a+\)+", None),
        (r"(a{3})+", None),
        ("", "required"),
        ("(", "not a valid regular expression"),
        (r"(?=a)b", "not RE2"),
        (r"(?<!a)b", "not RE2"),
        (r"(a)\1", "backreferences"),
        (r"(?P<x>a)(?P=x)", "not RE2"),
        (r"(a+)+b", "nested"),
        (r"(?:x(a*))*", "nested"),
        (r"(a{1,9}){2,}", "nested"),
        ("x" * 1001, "at most 1000"),
    ],
)
def test_pattern_problems(pattern: str, problem: str | None) -> None:
    found = pattern_problem(pattern)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer"],
}


@pytest.mark.parametrize(
    ("schema", "text", "value", "explained"),
    [
        (SCHEMA, '{"answer": "Paris", "confidence": 0.9}', 1.0, "valid"),
        (SCHEMA, '{"confidence": 0.9}', 0.0, "'answer' is a required property"),
        (SCHEMA, '{"answer": 3}', 0.0, "at answer"),
        (SCHEMA, "Paris", 0.0, "not JSON"),
        (None, "[1, 2]", 1.0, "valid JSON"),
        (None, "{broken", 0.0, "not JSON"),
    ],
)
async def test_json_schema(
    schema: Mapping[str, Any] | None, text: str, value: float, explained: str
) -> None:
    result = await score(JsonSchema(), text, output_schema=schema)
    assert result.scored
    assert result.value == value
    assert explained in result.explanation


async def test_json_schema_uses_the_parsed_output_when_given() -> None:
    scorer = build_scorer(ScorerSpec("s", JsonSchema()), output_schema=SCHEMA)
    output = GenerationOutput("not json at all", parsed={"answer": "Paris"})
    assert (await scorer.score(EXAMPLE, output)).value == 1.0


async def test_an_invalid_output_schema_leaves_outputs_unscored() -> None:
    result = await score(JsonSchema(), "{}", output_schema={"type": "nonsense"})
    assert not result.scored
    assert "output schema is invalid" in result.explanation


async def test_latency_and_cost_yield_their_measures() -> None:
    output = GenerationOutput(
        "x",
        first_token_seconds=0.125,
        latency_seconds=1.5,
        cost=Decimal("0.000123"),
        currency="USD",
        usage=TokenUsage(10, 5),
    )
    latency = await build_scorer(ScorerSpec("latency", Latency())).score(EXAMPLE, output)
    cost = await build_scorer(ScorerSpec("cost", Cost())).score(EXAMPLE, output)
    assert (latency.value, latency.scored) == (1.5, True)
    assert "0.125" in latency.explanation
    assert cost.value == pytest.approx(0.000123)
    assert cost.explanation == "0.000123 USD"


class Embeddings:
    """Embeds by table lookup, recording the calls."""

    def __init__(self, table: Mapping[str, Sequence[float]]) -> None:
        self.table = table
        self.calls: list[tuple[list[str], str]] = []

    async def __call__(self, texts: Sequence[str], model: str) -> Sequence[Sequence[float]]:
        self.calls.append((list(texts), model))
        return [self.table[t] for t in texts]


@pytest.mark.parametrize(
    ("output", "reference", "value"),
    [
        ([1.0, 0.0], [1.0, 0.0], 1.0),
        ([1.0, 1.0], [1.0, 0.0], 1 / math.sqrt(2)),
        ([0.0, 1.0], [1.0, 0.0], 0.0),
        ([-1.0, 0.0], [1.0, 0.0], 0.0),  # opposite: clamped
    ],
)
async def test_embedding_similarity(
    output: list[float], reference: list[float], value: float
) -> None:
    embed = Embeddings({"out": output, "Paris": reference})
    result = await score(EmbeddingSimilarity(model="minilm"), "out", embed=embed)
    assert result.scored
    assert result.value == pytest.approx(value)
    assert embed.calls == [(["out", "Paris"], "minilm")]


async def test_degenerate_embeddings_are_unscored() -> None:
    embed = Embeddings({"out": [0.0, 0.0], "Paris": [1.0, 0.0]})
    result = await score(EmbeddingSimilarity(), "out", embed=embed)
    assert not result.scored


def test_cosine_similarity_rejects_mismatched_vectors() -> None:
    assert cosine_similarity([1.0], [1.0, 2.0]) is None
    assert cosine_similarity([], []) is None
    assert cosine_similarity([3.0, 4.0], [3.0, 4.0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("reply", "value", "reason"),
    [
        ('{"score": 0.8, "reason": "mostly right"}', 0.8, "mostly right"),
        ('Verdict:\n```json\n{"score": 1, "explanation": "exact"}\n```', 1.0, "exact"),
        ('{"score": 4, "max_score": 5, "reason": "good"}', 0.8, "good"),
        ('{"score": "3/4"}', 0.75, ""),
        ('{"score": "0.5"}', 0.5, ""),
        ("0.7 The answer is close.", 0.7, "The answer is close."),
        ("4/5 - clear and correct", 0.8, "clear and correct"),
        ("3 out of 10. Misses the point.", 0.3, "Misses the point."),
        ("Score: 0.25\nToo vague.", 0.25, "Too vague."),
        ("**Rating:** 2/4", 0.5, ""),
        ("85% correct", 0.85, "correct"),
        ("1", 1.0, ""),
        ("0", 0.0, ""),
    ],
)
def test_judge_replies_that_parse(reply: str, value: float, reason: str) -> None:
    parsed, why = parse_judgement(reply)
    assert parsed == pytest.approx(value)
    assert why == reason


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("", "empty"),
        ("The answer looks fine to me.", "no JSON object"),
        ('{"grade": 0.5}', "no 'score'"),
        ('{"score": 4}', "outside [0, 1]"),
        ("4", "outside [0, 1]"),
        ("6/5", "outside [0, 5]"),
        ('{"score": true}', "boolean"),
        ('{"score": "high"}', "not a number"),
        ("-0.5", "outside [0, 1]"),
        ("3/0", "not a positive number"),
    ],
)
def test_judge_replies_that_do_not_parse(reply: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_judgement(reply)


class Judge:
    """Replies from a script, recording what it was asked."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.asked: list[tuple[LlmJudge, Mapping[str, str]]] = []

    async def __call__(self, settings: LlmJudge, variables: Mapping[str, str]) -> str:
        self.asked.append((settings, variables))
        return self.reply


async def test_llm_judge_renders_input_output_and_reference() -> None:
    judge = Judge('{"score": 0.9, "reason": "correct capital"}')
    settings = LlmJudge("rubric", "staging", "judge-model")
    result = await score(settings, "Paris it is", judge=judge)
    assert (result.value, result.scored, result.explanation) == (0.9, True, "correct capital")
    assert judge.asked == [
        (
            settings,
            {
                "input": '{"question": "capital of France?"}',
                "output": "Paris it is",
                "reference": "Paris",
            },
        )
    ]


async def test_an_unparseable_judge_reply_is_unscored_not_an_error() -> None:
    result = await score(LlmJudge("rubric"), "Paris", judge=Judge("I cannot grade this."))
    assert not result.scored
    assert result.explanation.startswith("unreadable judge reply")


class FailingJudge:
    async def __call__(self, settings: LlmJudge, variables: Mapping[str, str]) -> str:
        raise Unavailable("judge model is down")


class BrokenJudge:
    async def __call__(self, settings: LlmJudge, variables: Mapping[str, str]) -> str:
        raise RuntimeError("secret internal detail")


async def test_score_output_keeps_other_scores_when_one_scorer_fails() -> None:
    scorers = [
        build_scorer(ScorerSpec("exact", ExactMatch())),
        build_scorer(ScorerSpec("judge", LlmJudge("rubric")), judge=FailingJudge()),
        build_scorer(ScorerSpec("judge2", LlmJudge("rubric")), judge=BrokenJudge()),
    ]
    scores = await score_output(scorers, EXAMPLE, GenerationOutput("Paris"))
    assert [s.scorer for s in scores] == ["exact", "judge", "judge2"]
    assert scores[0] == Score("exact", 1.0, True, "matches the reference")
    assert not scores[1].scored
    assert "judge model is down" in scores[1].explanation
    assert not scores[2].scored
    assert "secret" not in scores[2].explanation
    assert "RuntimeError" in scores[2].explanation


def test_failed_generation_leaves_every_scorer_unscored() -> None:
    scorers = [
        build_scorer(ScorerSpec("exact", ExactMatch())),
        build_scorer(ScorerSpec("c", Cost())),
    ]
    result = failed_generation(scorers, "e1", 2, "backend unavailable", model="m")
    assert (result.example_id, result.repeat, result.error) == ("e1", 2, "backend unavailable")
    assert [s.scored for s in result.scores] == [False, False]
    assert all("backend unavailable" in s.explanation for s in result.scores)


def test_scorers_that_need_a_dependency_refuse_to_build_without_it() -> None:
    with pytest.raises(ValueError, match="embedder"):
        build_scorer(ScorerSpec("e", EmbeddingSimilarity()))
    with pytest.raises(ValueError, match="judge"):
        build_scorer(ScorerSpec("j", LlmJudge("rubric")))


@pytest.mark.parametrize(
    ("values", "count", "mean", "spread", "passes_half"),
    [
        ([1.0, 1.0, 1.0], 3, 1.0, 0.0, True),
        ([1.0, 0.0], 2, 0.5, 0.5, True),
        ([1.0, 0.0, 0.0], 3, 1 / 3, math.sqrt(2) / 3, False),
        ([], 0, 0.0, 0.0, False),
    ],
)
def test_aggregate_repeats(
    values: list[float], count: int, mean: float, spread: float, passes_half: bool
) -> None:
    scores = [Score("s", v) for v in values] + [Score("s", 1.0, scored=False)]
    found = aggregate_repeats(scores)
    assert found.count == count
    assert found.mean == pytest.approx(mean)
    assert found.spread == pytest.approx(spread)
    assert found.passes(0.5) is passes_half


def test_validate_run_spec_applies_defaults() -> None:
    spec = validate_run_spec(
        RunSpec("chat", "golden", (ScorerSpec("exact", ExactMatch()),), repeats=0)
    )
    assert (spec.prompt_label, spec.repeats) == (DEFAULT_LABEL, 1)
    pinned = validate_run_spec(
        RunSpec("chat", "golden", (ScorerSpec("exact", ExactMatch()),), prompt_version=3)
    )
    assert (pinned.prompt_version, pinned.prompt_label) == (3, "")


def test_validate_run_spec_names_every_bad_field() -> None:
    spec = RunSpec(
        prompt="Chat!",
        dataset="",
        scorers=(
            ScorerSpec("exact", ExactMatch()),
            ScorerSpec("exact", Contains(substrings=("ok", ""))),
            ScorerSpec("re", Regex("(a+)+")),
            ScorerSpec("judge", LlmJudge("")),
        ),
        prompt_version=2,
        prompt_label="staging",
        repeats=11,
    )
    with pytest.raises(InvalidArgument) as raised:
        validate_run_spec(spec)
    fields = {v.field for v in raised.value.violations}
    assert fields == {
        "run.prompt",
        "run.dataset",
        "run.prompt_label",
        "run.repeats",
        "run.scorers[1].name",
        "run.scorers[1].contains.substrings[1]",
        "run.scorers[2].regex.pattern",
        "run.scorers[3].llm_judge.rubric_prompt",
    }


def test_validate_run_spec_requires_a_scorer() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_run_spec(RunSpec("chat", "golden", ()))
    assert [v.field for v in raised.value.violations] == ["run.scorers"]
