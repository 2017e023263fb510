"""Prompt files (`services.prompt.files`): the YAML format, its round trip through the protos,
and errors that name the file and the key."""

import re
from pathlib import Path

import pytest
from genai.common.v1 import chat_pb2
from genai.prompt.v1 import prompt_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from services.prompt.core.registry import content_violations, parse_content, processing_violations
from services.prompt.core.templates import check_version
from services.prompt.files import (
    PromptFileError,
    dump_prompt_file,
    find_prompt_files,
    load_prompt_file,
    parse_prompt_file,
    version_hash,
)
from services.prompt.wire import version_content

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "prompts"

EVERYTHING = """\
# A file that sets every field of the format.
name: everything
description: Sets every field.
protected_labels: [production, canary]
evaluation_gate:
  dataset: golden
  thresholds:
    - {scorer: exact_match, min_mean: 0.75}
    - {scorer: judge, min_mean: 4}
messages:
  - role: system
    content: |
      Speak {{ tone }}.{% if shout %} LOUDLY.{% endif %}
      Be brief.
  - role: user
    content: "{{ question }} ({{ count }}, {{ ratio }}) {{ topics | join(', ') }}"
  - role: assistant
    content: "Noted: {{ question | upper }}\\nTrailing spaces stay:   \\n"
variables:
  - {name: tone, type: enum, values: [calm, "yes", "no"], default: calm, description: How.}
  - {name: shout, type: boolean, default: false}
  - {name: question, type: string, required: true, max_length: 500}
  - {name: count, type: integer, default: 3}
  - {name: ratio, type: number, default: 0.5}
  - {name: topics, type: string_list, max_items: 4, max_length: 20, default: [a, b]}
parameters:
  temperature: 0
  top_p: 0.95
  top_k: 40
  max_tokens: 256
  stop: ["\\n\\n", "###"]
  seed: 18446744073709551615
  repetition_penalty: 1.1
  presence_penalty: -0.5
  frequency_penalty: 0.25
routing:
  model: smollm2-135m-instruct
  policy: weighted
  required_capabilities: [chat, json_output]
  min_quality_tier: 2
  max_cost: {currency_code: USD, units: 0, nanos: 5000000}
  max_first_token_duration: 1.5
  max_total_duration: 30s
output_schema:
  type: object
  required: [answer]
  properties:
    answer: {type: string, maxLength: 200}
    score: {type: number, minimum: 0.5, maximum: 10}
    tags: {type: array, items: {type: string}, maxItems: 3}
    nothing: null
processing:
  max_output_chars: 1000
  repair_invalid_json: true
  pii_redaction:
    kinds: [email, phone, card_number]
    patterns:
      - {name: order, regex: "ORD-[0-9]{8}", max_match_length: 12}
"""


def _parse(text: str, name: str = "p") -> prompt_pb2.PromptVersion:
    return parse_prompt_file(text, Path(f"prompts/{name}.yaml")).version


def _problems(text: str, name: str = "p") -> list[str]:
    path = Path(f"some/dir/{name}.yaml")
    with pytest.raises(PromptFileError) as raised:
        parse_prompt_file(text, path)
    lines = str(raised.value).splitlines()
    assert lines, "an error without a message"
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    assert raised.value.path == path
    return list(raised.value.problems)


def test_every_field_maps_onto_the_protos() -> None:
    loaded = parse_prompt_file(EVERYTHING, Path("everything.yaml"))
    prompt, version = loaded.prompt, loaded.version
    assert prompt.name == "everything"
    assert list(prompt.protected_labels) == ["production", "canary"]
    assert prompt.evaluation_gate.thresholds[1].min_mean == 4
    assert [m.role for m in version.messages] == [
        chat_pb2.CHAT_ROLE_SYSTEM,
        chat_pb2.CHAT_ROLE_USER,
        chat_pb2.CHAT_ROLE_ASSISTANT,
    ]
    assert version.messages[0].content.endswith(".{% endif %}\nBe brief.\n")
    assert version.messages[2].content.endswith("Trailing spaces stay:   \n")
    tone = version.variables[0]
    assert (tone.type, list(tone.enum_values), tone.default_value.string_value) == (
        prompt_pb2.VARIABLE_TYPE_ENUM,
        ["calm", "yes", "no"],
        "calm",
    )
    assert version.variables[5].default_value.list_value.values[1].string_value == "b"
    parameters = version.parameters
    assert parameters.HasField("temperature")
    assert parameters.temperature == 0
    assert parameters.seed == 2**64 - 1
    assert list(parameters.stop) == ["\n\n", "###"]
    assert version.routing.max_first_token_duration.ToMilliseconds() == 1500
    assert version.routing.max_total_duration.seconds == 30
    assert version.routing.max_cost.nanos == 5_000_000
    schema = json_format.MessageToDict(version.output_schema)
    assert schema["properties"]["score"]["maximum"] == 10
    assert version.processing.pii_redaction.patterns[0].max_match_length == 12
    messages, variables, shape = parse_content(version_content(version))
    assert shape == []
    assert check_version(messages, variables) == []
    assert not version.author
    assert not version.content_hash


def test_dump_then_load_gives_equal_protos_and_a_stable_text() -> None:
    loaded = parse_prompt_file(EVERYTHING, Path("everything.yaml"))
    text = dump_prompt_file(loaded.prompt, loaded.version, header="pulled\nby a test")
    assert text.startswith("# pulled\n# by a test\nname: everything\n")
    again = parse_prompt_file(text, Path("everything.yaml"))
    assert (again.prompt, again.version) == (loaded.prompt, loaded.version)
    assert again.content_hash == loaded.content_hash
    assert dump_prompt_file(again.prompt, again.version) == dump_prompt_file(
        loaded.prompt, loaded.version
    )
    assert "content: |\n    Speak {{ tone }}" in text  # templates stay readable blocks
    assert "default: calm" in text
    assert "enum_values: [calm, 'yes', 'no']" in text
    assert "seed: 18446744073709551615" in text
    assert "maxLength: 200" in text
    assert "stop: [\"\\n\\n\", '###']" in text


@settings(max_examples=200, deadline=None)
@given(
    contents=st.lists(st.text(), min_size=1, max_size=3),
    description=st.text(max_size=40),
    temperature=st.floats(0, 2, width=32),
    stop=st.lists(st.text(max_size=5), max_size=3),
    schema=st.dictionaries(
        st.text(max_size=8),
        st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        max_size=4,
    ),
)
def test_any_text_and_numbers_survive_dump_and_load(
    contents: list[str],
    description: str,
    temperature: float,
    stop: list[str],
    schema: dict[str, bool | float | str | None],
) -> None:
    """Pull then push creates nothing, whatever the templates hold (quotes, line breaks,
    trailing spaces, unicode, YAML look-alikes such as `yes` or `1.0`)."""
    prompt = prompt_pb2.Prompt(name="p", description=description)
    version = prompt_pb2.PromptVersion(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=c) for c in contents]
    )
    version.parameters.temperature = temperature
    version.parameters.stop.extend(stop)
    version.output_schema.update(schema)
    again = parse_prompt_file(dump_prompt_file(prompt, version), Path("p.yaml"))
    assert (again.prompt, again.version) == (prompt, version)


def test_a_stored_version_round_trips_without_its_output_only_fields() -> None:
    """What pull writes: a version as the server returns it (number, author, hash, time)."""
    stored = prompt_pb2.PromptVersion()
    stored.CopyFrom(_parse(EVERYTHING, "everything"))
    # The server keeps content as JSON: parse it back the way `version_proto` does.
    stored = json_format.ParseDict(version_content(stored), prompt_pb2.PromptVersion())
    stored.prompt, stored.version, stored.author = "everything", 7, "ann"
    stored.commit_message, stored.content_hash = "tweak", version_hash(stored)
    stored.create_time.GetCurrentTime()
    prompt = prompt_pb2.Prompt(name="everything", tenant_id="acme", latest_version=7)
    prompt.labels["production"] = 7

    text = dump_prompt_file(prompt, stored)
    for output_only in ("version:", "author", "commit_message", "content_hash", "labels", "acme"):
        assert output_only not in text
    again = parse_prompt_file(text, Path("everything.yaml"))
    assert again.content_hash == stored.content_hash
    assert again.prompt == prompt_pb2.Prompt(name="everything")


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_sample_prompts_pass_the_registry_checks_and_round_trip(path: Path) -> None:
    loaded = load_prompt_file(path)
    assert loaded.name == path.stem
    assert loaded.prompt.description
    content = version_content(loaded.version)
    assert content_violations(content) == []
    assert processing_violations(content) == []
    text = dump_prompt_file(loaded.prompt, loaded.version)
    assert parse_prompt_file(text, path).content_hash == loaded.content_hash


def test_the_readme_example_is_a_valid_file() -> None:
    readme = (SAMPLES / "README.md").read_text()
    example = re.search(r"## File format\n\n```yaml\n(.*?)```", readme, re.DOTALL)
    assert example is not None
    loaded = parse_prompt_file(example.group(1), Path("support-answer.yaml"))
    messages, variables, shape = parse_content(version_content(loaded.version))
    assert shape == []
    assert check_version(messages, variables) == []
    assert loaded.version.processing.pii_redaction.patterns[0].name == "order-id"


def test_the_name_defaults_to_the_file_name() -> None:
    loaded = parse_prompt_file("messages: [{role: user, content: hi}]", Path("d/greet.yml"))
    assert loaded.name == "greet"
    assert loaded.prompt == prompt_pb2.Prompt(name="greet")


def test_a_default_of_null_is_kept_apart_from_no_default() -> None:
    base = "messages: [{role: user, content: '{{ x }}'}]\nvariables: [{name: x, type: string%s}]"
    with_null, without = _parse(base % ", default: null"), _parse(base % "")
    assert with_null.variables[0].HasField("default_value")
    assert not without.variables[0].HasField("default_value")
    assert version_hash(with_null) != version_hash(without)
    text = dump_prompt_file(prompt_pb2.Prompt(name="p"), with_null)
    assert "default: null" in text
    assert version_hash(_parse(text)) == version_hash(with_null)


UNKNOWN_KEYS = [
    ("temprature: 0.2\nmessages: [{role: user, content: hi}]", "temprature: unknown key"),
    (
        "messages: [{role: user, content: hi}]\nparameters: {temprature: 0.2}",
        "parameters.temprature: unknown key; expected one of: temperature, top_p",
    ),
    (
        "messages: [{role: user, content: hi, name: bob}]",
        "messages[0].name: unknown key; expected one of: role, content",
    ),
    (
        "messages: [{role: user, content: '{{ x }}'}]\nvariables: [{name: x, kind: string}]",
        "variables[0].kind: unknown key",
    ),
    (
        "messages: [{role: user, content: hi}]\nversion: 3",
        "version: unknown key; expected one of: name, description",
    ),
    (
        "messages: [{role: user, content: hi}]\nlabels: {production: 1}",
        "labels: unknown key",
    ),
    (
        "messages: [{role: user, content: hi}]\nrouting: {max_cost: {currency: USD}}",
        "routing.max_cost.currency: unknown key; expected one of: currency_code, units, nanos",
    ),
]


@pytest.mark.parametrize(("text", "problem"), UNKNOWN_KEYS)
def test_unknown_keys_are_rejected_with_their_path(text: str, problem: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(problem) for p in problems), problems


BAD_VALUES = [
    ("messages: [{role: robot, content: hi}]", "messages[0].role: must be one of system, user"),
    ("messages: [{role: user, content: 42}]", "messages[0].content: must be a string (quote it)"),
    ("messages: {role: user, content: hi}", "messages: must be a list"),
    ("messages: []\ndescription: [a]", "description: must be a string"),
    (
        "messages: [{role: user, content: '{{ x }}'}]\nvariables: [{name: x, type: str}]",
        "variables[0].type: must be one of string, integer, number, boolean, enum, string_list",
    ),
    (
        "messages: [{role: user, content: '{{ x }}'}]\n"
        "variables: [{name: x, type: string, max_length: '10'}]",
        "variables[0].max_length: must be a whole number (got '10')",
    ),
    (
        "messages: [{role: user, content: '{{ x }}'}]\n"
        "variables: [{name: x, type: string, required: 'yes'}]",
        "variables[0].required: must be true or false",
    ),
    (
        "messages: [{role: user, content: '{{ x }}'}]\n"
        "variables: [{name: x, type: enum, enum_values: [yes, no]}]",
        "variables[0].enum_values[0]: must be a string (quote it) (got True)",
    ),
    (
        "messages: [{role: user, content: '{{ x }}'}]\n"
        "variables: [{name: x, type: enum, values: [a], enum_values: [b]}]",
        "variables[0].enum_values: sets enum_values a second time",
    ),
    (
        "messages: [{role: user, content: hi}]\nparameters: {temperature: hot}",
        "parameters.temperature: must be a finite number",
    ),
    (
        "messages: [{role: user, content: hi}]\nparameters: {temperature: .nan}",
        "parameters.temperature: must be a finite number",
    ),
    (
        "messages: [{role: user, content: hi}]\nparameters: {max_tokens: 1.5}",
        "parameters.max_tokens: must be a whole number",
    ),
    (
        "messages: [{role: user, content: hi}]\nparameters: {max_tokens: 3000000000}",
        "parameters.max_tokens: must be a whole number",
    ),
    (
        "messages: [{role: user, content: hi}]\nparameters: {seed: -1}",
        "parameters.seed: must be a whole number >= 0",
    ),
    ("messages: [{role: user, content: hi}]\nparameters: {stop: '###'}", "parameters.stop: must"),
    ("messages: [{role: user, content: hi}]\nparameters: 0.2", "parameters: must be a mapping"),
    (
        "messages: [{role: user, content: hi}]\nrouting: {max_total_duration: soon}",
        "routing.max_total_duration: must be a duration",
    ),
    (
        "messages: [{role: user, content: hi}]\nrouting: {required_capabilities: [vision]}",
        "routing.required_capabilities[0]: must be one of chat, json_output, streaming",
    ),
    ("messages: [{role: user, content: hi}]\noutput_schema: [1]", "output_schema: must be a"),
    (
        "messages: [{role: user, content: hi}]\noutput_schema: {since: 2024-01-01}",
        "output_schema.since: must be a JSON value",
    ),
    (
        "messages: [{role: user, content: hi}]\noutput_schema: {1: a}",
        "output_schema: key 1 must be a string",
    ),
    (
        "messages: [{role: user, content: hi}]\nprocessing: {pii_redaction: {kinds: [ssn]}}",
        "processing.pii_redaction.kinds[0]: must be one of email, phone, card_number",
    ),
    (
        "messages: [{role: user, content: hi}]\nevaluation_gate: {thresholds: [{min_mean: x}]}",
        "evaluation_gate.thresholds[0].min_mean: must be a finite number",
    ),
    ("name: other\nmessages: [{role: user, content: hi}]", "name: 'other' differs from the file"),
    ("description: no messages", "messages: required"),
    ("", "is empty"),
    ("- a\n- b", "must be a mapping of keys"),
    ("messages: [{role: user, content: hi}\n", "invalid YAML: "),
    (
        "messages: [{role: user, content: hi}]\nmessages: []",
        "invalid YAML: duplicate key 'messages' (line 2, column 1)",
    ),
    (
        "messages: [{role: user, content: hi, role: system}]",
        "invalid YAML: duplicate key 'role'",
    ),
]


@pytest.mark.parametrize(("text", "problem"), BAD_VALUES)
def test_bad_values_are_rejected_naming_the_file_and_the_key(text: str, problem: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(problem) for p in problems), problems


def test_the_file_name_must_be_a_prompt_name() -> None:
    problems = _problems("messages: [{role: user, content: hi}]", name="Bad Name")
    assert problems[0].startswith("name: 'Bad Name' is not a prompt name: 1 to 64 of a-z")


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    problems = _problems(
        "messages: [{role: robot, content: 1}]\nparameters: {temperature: x, top_k: y}\nfoo: 1"
    )
    assert len(problems) == 5, problems


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"description: caf\xe9\n")
    with pytest.raises(PromptFileError, match=r"latin1\.yaml: cannot read"):
        load_prompt_file(path)
    with pytest.raises(PromptFileError, match=r"missing\.yaml: cannot read"):
        load_prompt_file(tmp_path / "missing.yaml")


def test_a_folder_stands_for_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "README.md", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("x")
    assert find_prompt_files([tmp_path]) == [tmp_path / "a.yml", tmp_path / "b.yaml"]
    assert find_prompt_files([tmp_path / "sub" / "c.yaml"]) == [tmp_path / "sub" / "c.yaml"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_prompt_files([tmp_path / "nowhere"])
