"""Dataset files and example checks: JSONL and YAML parsing with line numbers, content-derived
ids, and example inputs checked against a prompt version's variable schema (every bad example
named, by index or by file line)."""

from typing import Any

import pytest

from services.common import reasons
from services.common.errors import FieldViolation, InvalidArgument
from services.evaluation.core.datasets import (
    SourcedExample,
    check_examples,
    check_sourced_examples,
    example_id,
    format_of,
    parse_examples,
    raise_for_examples,
)
from services.evaluation.core.model import NewExample, example_violations

CONTENT: dict[str, Any] = {
    "messages": [
        {"role": "CHAT_ROLE_SYSTEM", "content": "Answer in a {{ tone }} tone."},
        {
            "role": "CHAT_ROLE_USER",
            "content": "{{ question }}{% for t in topics %} #{{ t }}{% endfor %}"
            " (at most {{ words }} words)",
        },
    ],
    "variables": [
        {"name": "question", "type": "VARIABLE_TYPE_STRING", "required": True, "max_length": 50},
        {
            "name": "tone",
            "type": "VARIABLE_TYPE_ENUM",
            "enum_values": ["formal", "friendly"],
            "default_value": "formal",
        },
        {"name": "words", "type": "VARIABLE_TYPE_INTEGER", "default_value": 20},
        {"name": "topics", "type": "VARIABLE_TYPE_STRING_LIST", "default_value": []},
    ],
}

JSONL = """\
{"inputs": {"question": "Capital of France?"}, "reference": "Paris", "tags": {"topic": "geo"}}

{"inputs": {"question": "2 + 2?", "words": 3}, "reference": "4"}
{"inputs": {"question": "Largest planet?", "tone": "friendly", "topics": ["space"]}}
"""

YAML = """\
# geography
- inputs:
    question: Capital of France?
  reference: Paris
  tags: {topic: geo, level: 1}
- inputs: {question: "2 + 2?", words: 3}
  reference:
    answer: 4
"""


def test_jsonl_examples_with_their_lines() -> None:
    found = parse_examples(JSONL, "jsonl", "golden.jsonl")
    assert [e.line for e in found] == [1, 3, 4]
    assert found[0].example == NewExample(
        {"question": "Capital of France?"}, "Paris", {"topic": "geo"}
    )
    assert found[2].example.reference == ""


def test_yaml_examples_with_their_lines() -> None:
    found = parse_examples(YAML, "yaml", "golden.yaml")
    assert [e.line for e in found] == [2, 6]
    assert found[0].example.tags == {"topic": "geo", "level": "1"}
    # A structured reference is kept as canonical JSON text.
    assert found[1].example.reference == '{"answer":4}'
    wrapped = parse_examples("examples:\n" + YAML.replace("\n", "\n  "), "yaml", "w.yaml")
    assert [e.example for e in wrapped] == [e.example for e in found]
    assert [e.line for e in wrapped] == [3, 7]


@pytest.mark.parametrize(
    ("text", "file_format", "fields"),
    [
        ('{"inputs": {}}\nnot json\n{"inputs": 3}\n', "jsonl", ["f:2", "f:3.inputs"]),
        ('[1, 2]\n{"inputs": {}}', "jsonl", ["f:1"]),
        ('{"inputs": {}, "expected": "x"}', "jsonl", ["f:1.expected"]),
        ('{"inputs": {}, "tags": {"a": [1]}}', "jsonl", ["f:1.tags.a"]),
        ('{"inputs": {}, "tags": "geo"}', "jsonl", ["f:1.tags"]),
        ("- inputs: {a: 1}\n- reference: x\n", "yaml", ["f:2.inputs"]),
        ("- inputs: {when: 2024-01-01}\n", "yaml", ["f:1.inputs"]),
        ("inputs: {a: 1}\n", "yaml", ["f"]),
        ("- inputs: [\n", "yaml", ["f:2"]),
        ("", "jsonl", ["f"]),
    ],
)
def test_malformed_files_name_every_bad_line(
    text: str, file_format: Any, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_examples(text, file_format, "f")
    assert [v.field for v in raised.value.violations] == fields


@pytest.mark.parametrize(
    ("name", "found"),
    [("a.jsonl", "jsonl"), ("A.NDJSON", "jsonl"), ("x/golden.yaml", "yaml"), ("b.yml", "yaml")],
)
def test_format_of(name: str, found: str) -> None:
    assert format_of(name) == found


def test_format_of_refuses_other_files() -> None:
    with pytest.raises(ValueError, match=r"not a \.jsonl or \.yaml"):
        format_of("golden.csv")


def test_example_ids_follow_content() -> None:
    first = NewExample({"question": "a", "words": 3}, "x", {"t": "1"})
    same = NewExample({"words": 3, "question": "a"}, "x", {"t": "1"})
    assert example_id(first) == example_id(same)
    assert len(example_id(first)) == 24
    for changed in (
        NewExample({"question": "b", "words": 3}, "x", {"t": "1"}),
        NewExample({"question": "a", "words": 3}, "y", {"t": "1"}),
        NewExample({"question": "a", "words": 3}, "x", {"t": "2"}),
    ):
        assert example_id(changed) != example_id(first)


def test_valid_examples_pass_the_schema() -> None:
    found = parse_examples(JSONL, "jsonl", "golden.jsonl")
    assert check_examples(CONTENT, [e.example for e in found]) == []


@pytest.mark.parametrize(
    ("inputs", "violations"),
    [
        ({}, [("examples[0].inputs.question", "required")]),
        ({"question": 3}, [("examples[0].inputs.question", "must be a string")]),
        ({"question": "x" * 51}, [("examples[0].inputs.question", "longer than 50 characters")]),
        ({"question": "q", "tone": "rude"}, [("examples[0].inputs.tone", "must be one of")]),
        ({"question": "q", "words": 2.5}, [("examples[0].inputs.words", "must be an integer")]),
        ({"question": "q", "topics": "x"}, [("examples[0].inputs.topics", "must be a list")]),
        ({"question": "q", "extra": 1}, [("examples[0].inputs.extra", "not a declared variable")]),
        (
            {"tone": 1, "words": "many"},
            [
                ("examples[0].inputs.question", "required"),
                ("examples[0].inputs.tone", "must be a string"),
                ("examples[0].inputs.words", "must be an integer"),
            ],
        ),
    ],
)
def test_inputs_against_the_variable_schema(
    inputs: dict[str, Any], violations: list[tuple[str, str]]
) -> None:
    found = check_examples(CONTENT, [NewExample(inputs)])
    assert sorted(v.field for v in found) == sorted(f for f, _ in violations)
    for (field, description), violation in zip(
        sorted(violations), sorted(found, key=lambda v: v.field), strict=True
    ):
        assert violation.field == field
        assert description in violation.description


def test_every_bad_example_of_a_batch_is_named() -> None:
    batch = [
        NewExample({"question": "fine"}),
        NewExample({"question": 1}),
        NewExample({"question": "fine too"}),
        NewExample({"words": 1}),
    ]
    found = check_examples(CONTENT, batch)
    assert [v.field for v in found] == [
        "examples[1].inputs.question",
        "examples[3].inputs.question",
    ]
    with pytest.raises(InvalidArgument) as raised:
        raise_for_examples(found)
    assert raised.value.reason == reasons.VARIABLE_INVALID
    raise_for_examples([])  # nothing to report: returns


def test_file_examples_are_named_by_line() -> None:
    text = (
        '{"inputs": {"question": "ok"}}\n'
        '{"inputs": {"question": "ok", "tone": "loud"}}\n'
        "\n"
        '{"inputs": {"question": 7}}\n'
    )
    found = parse_examples(text, "jsonl", "golden.jsonl")
    assert check_sourced_examples(CONTENT, found, "golden.jsonl") == [
        FieldViolation("golden.jsonl:2.inputs.tone", "must be one of 'formal', 'friendly'"),
        FieldViolation("golden.jsonl:4.inputs.question", "must be a string"),
    ]


def test_inputs_the_templates_cannot_render_are_reported() -> None:
    content = {
        "messages": [{"role": "CHAT_ROLE_USER", "content": "{{ n * 'ab' * n }}"}],
        "variables": [{"name": "n", "type": "VARIABLE_TYPE_INTEGER", "required": True}],
    }
    assert check_examples(content, [NewExample({"n": 2})]) == []
    found = check_sourced_examples(content, [SourcedExample(5, NewExample({"n": 10**6}))], "f")
    assert [v.field for v in found] == ["f:5.inputs"]
    assert found[0].description.startswith("the prompt does not render with these inputs")


def test_a_corrupted_version_is_an_error_not_a_bad_example() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_examples({"messages": [{"role": "nobody", "content": "x"}]}, [NewExample({})])
    assert raised.value.reason == reasons.TEMPLATE_INVALID


@pytest.mark.parametrize(
    ("batch", "fields"),
    [
        ([], ["examples"]),
        ([NewExample({})] * 1001, ["examples"]),
        ([NewExample({}, reference="x" * 100_001)], ["examples[0].reference"]),
        ([NewExample({}, tags={str(i): "" for i in range(33)})], ["examples[0].tags"]),
        ([NewExample({}, tags={"": "x"})], ["examples[0].tags"]),
        ([NewExample({}, tags={"k": "x" * 257})], ["examples[0].tags.k"]),
        ([NewExample({"q": "x" * 1_000_001})], ["examples[0].inputs"]),
    ],
)
def test_example_shape_limits(batch: list[NewExample], fields: list[str]) -> None:
    assert [v.field for v in example_violations(batch)] == fields
