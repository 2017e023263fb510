"""Text (completion) prompts in the registry's core and the file format: a version is chat
messages or one text template, never both; the text template gets the same sandbox, variable
checks and render errors as message contents; content hashes of chat versions are what they
were before text templates existed, and a text template is part of a text version's hash;
diffs show it; prompt files write it as `text`."""

import hashlib
import json
from pathlib import Path

import pytest
from genai.prompt.v1 import prompt_pb2
from google.protobuf import json_format

from services.common import reasons
from services.common.errors import FieldViolation, InvalidArgument
from services.prompt.core.model import content_hash
from services.prompt.core.registry import (
    Change,
    RenderedContent,
    content_violations,
    diff_content,
    processing_violations,
    render_content,
    render_version,
)
from services.prompt.core.templates import (
    MAX_TEMPLATE_CHARS,
    MessageTemplate,
    VariableSpec,
    VariableType,
    check_version,
    render_text,
)
from services.prompt.files import PromptFileError, dump_prompt_file, parse_prompt_file
from services.prompt.wire import version_content

ROOT = Path(__file__).resolve().parents[3]
COUNTRY = VariableSpec("country", VariableType.STRING, required=True)
STRING = "VARIABLE_TYPE_STRING"
TEXT_CONTENT = {
    "text_template": "The capital of {{ country }} is",
    "variables": [{"name": "country", "type": STRING, "required": True}],
}


def _pairs(violations: list[FieldViolation]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in violations]


# ---------------------------------------------------------------------------------- checks


def test_a_text_template_alone_is_a_valid_version() -> None:
    assert check_version([], [COUNTRY], text_template="The capital of {{ country }} is") == []


def test_messages_and_a_text_template_together_are_refused() -> None:
    violations = check_version(
        [MessageTemplate("user", "{{ country }}")], [COUNTRY], text_template="{{ country }}"
    )

    assert _pairs(violations) == [
        (
            "version.text_template",
            "set either messages (a chat prompt) or text_template (a text prompt), not both",
        )
    ]


def test_neither_messages_nor_a_text_template_is_refused() -> None:
    assert _pairs(check_version([], [])) == [
        (
            "version.messages",
            "at least one message is required (or a text_template, for a text prompt)",
        )
    ]


@pytest.mark.parametrize(
    ("template", "description"),
    [
        ("{{ country }} and {{ city }}", "line 1: variable 'city' is not declared"),
        ("{{ country }}{% include 'x' %}", "{% include %} is not supported"),
        ("{{ country.__class__ }}", "attributes starting with '_' are not accessible"),
        ("{{ country }", "line 1: unexpected '}'"),
        ("{{ country }}" + "a" * MAX_TEMPLATE_CHARS, f"longer than {MAX_TEMPLATE_CHARS}"),
    ],
)
def test_the_text_template_is_checked_like_a_message(template: str, description: str) -> None:
    violations = _pairs(check_version([], [COUNTRY], text_template=template))

    assert any(f == "version.text_template" and description in d for f, d in violations), violations


def test_every_declared_variable_must_be_used_by_the_text_template() -> None:
    unused = VariableSpec("city", VariableType.STRING)

    violations = check_version([], [COUNTRY, unused], text_template="{{ country }}")

    assert _pairs(violations) == [
        ("version.variables[1].name", "variable 'city' is not referenced by the text template")
    ]


def test_a_text_prompt_cannot_ask_for_a_repair() -> None:
    content = {**TEXT_CONTENT, "processing": {"repair_invalid_json": True}}

    assert content_violations(content) == []
    (violation,) = processing_violations(content)
    assert violation.field == "version.processing.repair_invalid_json"
    assert "a text prompt (text_template) cannot ask for a repair" in violation.description


# --------------------------------------------------------------------------------- render


def test_render_text_checks_values_and_renders() -> None:
    assert render_text("Hi {{ country }}!", [COUNTRY], {"country": "Peru"}) == "Hi Peru!"

    with pytest.raises(InvalidArgument) as missing:
        render_text("Hi {{ country }}!", [COUNTRY], {})
    assert missing.value.reason == reasons.VARIABLE_INVALID
    assert [v.field for v in missing.value.violations] == ["variables.country"]


def test_a_render_failure_names_the_text_template() -> None:
    with pytest.raises(InvalidArgument) as failed:
        render_text("{{ country * 2000000 }}", [COUNTRY], {"country": "Peru"})

    assert failed.value.reason == reasons.TEMPLATE_INVALID
    assert [v.field for v in failed.value.violations] == ["text_template"]


def test_whitespace_of_the_text_is_kept() -> None:
    rendered = render_text("Q: {{ country }}\nA:", [COUNTRY], {"country": "Chile"})

    assert rendered == "Q: Chile\nA:"
    assert render_text("{{ country }}\n", [COUNTRY], {"country": "x"}) == "x\n"


def test_render_content_gives_a_text_prompt_text_and_a_chat_prompt_messages() -> None:
    chat = {
        "messages": [{"role": "CHAT_ROLE_USER", "content": "Capital of {{ country }}?"}],
        "variables": TEXT_CONTENT["variables"],
    }

    text = render_content(TEXT_CONTENT, {"country": "France"})
    conversation = render_content(chat, {"country": "France"})

    assert text == RenderedContent([], "The capital of France is")
    assert conversation.text is None
    assert [(m.role, m.content) for m in conversation.messages] == [("user", "Capital of France?")]
    assert render_version(chat, {"country": "France"}) == conversation.messages


# --------------------------------------------------------------------------------- hashes


def test_chat_versions_keep_the_content_hash_they_had_before_text_templates() -> None:
    """The hash of this version, computed by the registry before `text_template` existed."""
    version = json_format.ParseDict(
        {
            "messages": [
                {"role": "CHAT_ROLE_SYSTEM", "content": "Be brief."},
                {"role": "CHAT_ROLE_USER", "content": "{{ question }}"},
            ],
            "variables": [{"name": "question", "type": STRING, "required": True}],
            "parameters": {"temperature": 0.2, "max_tokens": 64},
        },
        prompt_pb2.PromptVersion(),
    )

    content = version_content(version)

    assert "text_template" not in content
    assert content_hash(content) == (
        "099fcf6ee4ba8ea0380c8ef0f74963b0014ee331b81280100ebacb9859cd0340"
    )


def test_the_text_template_is_part_of_the_hash() -> None:
    version = prompt_pb2.PromptVersion(text_template="The capital of {{ country }} is")
    json_format.ParseDict(TEXT_CONTENT["variables"][0], version.variables.add())
    other = prompt_pb2.PromptVersion()
    other.CopyFrom(version)
    other.text_template = "The capital city of {{ country }} is"

    content = version_content(version)

    assert content == TEXT_CONTENT
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert content_hash(content) == hashlib.sha256(canonical.encode()).hexdigest()
    assert content_hash(content) != content_hash(version_content(other))


# ---------------------------------------------------------------------------------- diffs


def test_diffs_show_the_text_template() -> None:
    newer = {**TEXT_CONTENT, "text_template": "Capital of {{ country }}:"}
    chat = {"messages": [{"role": "CHAT_ROLE_USER", "content": "{{ country }}?"}]}

    assert diff_content(TEXT_CONTENT, newer) == [
        Change("text_template", "modified", TEXT_CONTENT["text_template"], newer["text_template"])
    ]
    changes = diff_content({**chat, "variables": TEXT_CONTENT["variables"]}, TEXT_CONTENT)
    assert changes == [
        Change("messages[0].content", "removed", "{{ country }}?", None),
        Change("messages[0].role", "removed", "CHAT_ROLE_USER", None),
        Change("text_template", "added", None, TEXT_CONTENT["text_template"]),
    ]


# ---------------------------------------------------------------------------------- files

TEXT_FILE = """\
name: capital-of
description: Lets a base model name a capital.
text: |-
  Q: What is the capital of {{ country }}?
  A:
variables:
  - {name: country, type: string, required: true}
parameters: {temperature: 0, max_tokens: 8, stop: ["\\n"]}
"""


def test_a_prompt_file_writes_the_text_template_as_text_and_round_trips() -> None:
    loaded = parse_prompt_file(TEXT_FILE, Path("capital-of.yaml"))

    assert loaded.version.text_template == "Q: What is the capital of {{ country }}?\nA:"
    assert not loaded.version.messages
    assert content_violations(version_content(loaded.version)) == []
    written = dump_prompt_file(loaded.prompt, loaded.version)
    assert "\ntext: |-\n  Q: What is the capital of {{ country }}?\n  A:\nvariables:" in written
    assert "text_template" not in written
    again = parse_prompt_file(written, Path("capital-of.yaml"))
    assert again.content_hash == loaded.content_hash
    assert again.version == loaded.version


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "description: d\n",
            "messages: required (at least one message), or text for a text prompt",
        ),
        (
            "text: hi\nmessages: [{role: user, content: hi}]\n",
            "text: a file has either messages (a chat prompt) or text (a text prompt), not both",
        ),
        ("text: [hi]\n", "text: must be a string"),
        ("text_template: hi\n", "text_template: unknown key; expected one of: "),
    ],
)
def test_prompt_file_errors_about_text(text: str, problem: str) -> None:
    with pytest.raises(PromptFileError) as raised:
        parse_prompt_file(text, Path("p.yaml"))

    assert any(line.startswith(problem) for line in raised.value.problems), raised.value.problems


def test_the_readme_text_prompt_example_is_a_valid_file() -> None:
    readme = (ROOT / "prompts" / "README.md").read_text()
    start = readme.index("### Text (completion) prompts")
    example = readme[start:].split("```yaml\n", 1)[1].split("```", 1)[0]

    loaded = parse_prompt_file(example, Path("capital-of.yaml"))

    content = version_content(loaded.version)
    assert content_violations(content) == []
    assert render_content(content, {"country": "Peru"}).text == "The capital of Peru is"
    assert list(loaded.version.parameters.stop) == ["\n"]
