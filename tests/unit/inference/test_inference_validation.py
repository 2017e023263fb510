"""Request validation of InferenceService's core, one row per rule (output constraints
included)."""

import pytest

from services.inference.core.engine import MAX_GUIDE_BYTES, validate_generation
from services.inference.core.model import (
    BackendSpec,
    ChatTurn,
    ConstraintKind,
    GenerationRequest,
    ModelSpec,
    OutputConstraint,
    Sampling,
    Task,
)

MODEL = ModelSpec(
    name="m",
    task=Task.GENERATION,
    backends=(BackendSpec("b", "localhost:1", "ensemble", 4),),
    max_context_tokens=2048,
    max_output_tokens=512,
    default_max_tokens=64,
)


def _fields(request: GenerationRequest) -> list[str]:
    return [v.field for v in validate_generation(MODEL, request)]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (GenerationRequest("m", text="hello"), []),
        (GenerationRequest("m", messages=(ChatTurn("user", "hi"),)), []),
        (GenerationRequest("m"), ["input"]),
        (GenerationRequest("m", text="x", messages=(ChatTurn("user", "hi"),)), ["input"]),
        (GenerationRequest("m", text="   "), ["text"]),
        (GenerationRequest("m", messages=()), ["chat.messages"]),
        (GenerationRequest("m", messages=(ChatTurn("", "hi"),)), ["chat.messages[0].role"]),
        (GenerationRequest("m", messages=(ChatTurn("user", " "),)), ["chat.messages[0].content"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=0)), ["parameters.max_tokens"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=-5)), ["parameters.max_tokens"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=513)), ["parameters.max_tokens"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=512)), []),
        (
            GenerationRequest("m", "x", sampling=Sampling(temperature=2.5)),
            ["parameters.temperature"],
        ),
        (GenerationRequest("m", "x", sampling=Sampling(temperature=0.0)), []),
        (
            GenerationRequest("m", "x", sampling=Sampling(temperature=float("nan"))),
            ["parameters.temperature"],
        ),
        (GenerationRequest("m", "x", sampling=Sampling(top_p=0.0)), ["parameters.top_p"]),
        (GenerationRequest("m", "x", sampling=Sampling(top_p=1.0)), []),
        (GenerationRequest("m", "x", sampling=Sampling(top_k=1001)), ["parameters.top_k"]),
        (
            GenerationRequest("m", "x", sampling=Sampling(repetition_penalty=0.1)),
            ["parameters.repetition_penalty"],
        ),
        (
            GenerationRequest("m", "x", sampling=Sampling(presence_penalty=3.0)),
            ["parameters.presence_penalty"],
        ),
        (
            GenerationRequest("m", "x", sampling=Sampling(frequency_penalty=-3.0)),
            ["parameters.frequency_penalty"],
        ),
        (GenerationRequest("m", "x", sampling=Sampling(stop=("",))), ["parameters.stop[0]"]),
        (GenerationRequest("m", "x", sampling=Sampling(stop=("é" * 129,))), ["parameters.stop[0]"]),
        (GenerationRequest("m", "x", sampling=Sampling(stop=("a",) * 17)), ["parameters.stop"]),
        (GenerationRequest("m", "x", request_id="r" * 129), ["request_id"]),
        (
            GenerationRequest("m", "", sampling=Sampling(max_tokens=0, top_k=-1)),
            ["text", "parameters.max_tokens", "parameters.top_k"],
        ),
    ],
)
def test_validation_names_every_offending_field(
    request_: GenerationRequest, fields: list[str]
) -> None:
    assert _fields(request_) == fields


LIMIT = MAX_GUIDE_BYTES
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _constrained(constraint: OutputConstraint) -> GenerationRequest:
    return GenerationRequest("m", text="x", constraint=constraint)


@pytest.mark.parametrize(
    ("constraint", "fields"),
    [
        (OutputConstraint(ConstraintKind.JSON), []),
        (OutputConstraint(ConstraintKind.JSON_SCHEMA, schema=SCHEMA), []),
        (OutputConstraint(ConstraintKind.JSON_SCHEMA, schema={}), []),
        (OutputConstraint(ConstraintKind.REGEX, text=r"\d{4}-\d{2}"), []),
        (OutputConstraint(ConstraintKind.EBNF_GRAMMAR, text='root ::= "yes" | "no"'), []),
        (OutputConstraint(None), ["constraint"]),  # no kind set, or json_object false
        (
            OutputConstraint(ConstraintKind.JSON_SCHEMA, schema={"type": "numbr"}),
            ["constraint.json_schema"],
        ),
        (
            OutputConstraint(ConstraintKind.JSON_SCHEMA, schema={"properties": {"a": 3}}),
            ["constraint.json_schema"],
        ),
        (
            OutputConstraint(ConstraintKind.JSON_SCHEMA, schema={"enum": ["é" * (LIMIT // 2)]}),
            ["constraint.json_schema"],
        ),
        (OutputConstraint(ConstraintKind.REGEX, text=""), ["constraint.regex"]),
        (OutputConstraint(ConstraintKind.REGEX, text="a" * LIMIT), []),
        (OutputConstraint(ConstraintKind.REGEX, text="a" * (LIMIT + 1)), ["constraint.regex"]),
        (OutputConstraint(ConstraintKind.EBNF_GRAMMAR, text="  "), ["constraint.ebnf_grammar"]),
        (
            OutputConstraint(ConstraintKind.EBNF_GRAMMAR, text="é" * (LIMIT // 2 + 1)),
            ["constraint.ebnf_grammar"],
        ),
    ],
    ids=[
        "json",
        "schema",
        "empty-schema",
        "regex",
        "grammar",
        "no-kind",
        "unknown-type",
        "property-not-a-schema",
        "schema-over-64k-as-json",
        "empty-regex",
        "regex-at-the-limit",
        "regex-over-the-limit",
        "blank-grammar",
        "grammar-over-the-limit-in-bytes",
    ],
)
def test_constraint_validation_names_the_field(
    constraint: OutputConstraint, fields: list[str]
) -> None:
    assert _fields(_constrained(constraint)) == fields


def test_an_invalid_schema_says_where_and_why() -> None:
    bad = OutputConstraint(ConstraintKind.JSON_SCHEMA, schema={"properties": {"total": 3}})

    [violation] = validate_generation(MODEL, _constrained(bad))

    assert violation.description.startswith(
        "is not a valid JSON Schema (draft 2020-12) at properties/total:"
    )


def test_the_schema_guide_is_compact_json_that_keeps_unicode() -> None:
    constraint = OutputConstraint(ConstraintKind.JSON_SCHEMA, schema={"enum": ["é", 3]})

    assert constraint.guide == '{"enum":["é",3]}'
    assert OutputConstraint(ConstraintKind.JSON).guide == ""
