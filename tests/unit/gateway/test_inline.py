"""Inline prompts and request output schemas (`services.gateway.inline`): the rendered prompt
that stands for a request without a registry version, what such a request may not carry, the
request's schema put where a version's would be (the cached version untouched), the schema's
own check, and a replayed request's outcome for transports that observe it."""

from typing import Any

import pytest
from genai.common.v1 import chat_pb2, generation_pb2
from genai.gateway.v1 import gateway_pb2
from genai.prompt.v1 import prompt_pb2
from genai.router.v1 import router_service_pb2
from google.protobuf import json_format

from services.gateway.completion import processing_config, replayed_outcome, tag_violations
from services.gateway.inline import (
    INLINE_TEXT_FIELD,
    OUTPUT_SCHEMA_FIELD,
    InlinePrompt,
    inline_rendered,
    inline_violations,
    output_schema_violations,
    with_output_schema,
)
from services.gateway.outcome import Request
from services.prompt.client import RenderedPrompt, ResolvedVersion

USER = chat_pb2.CHAT_ROLE_USER
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _request(model: str = "smollm2-135m-instruct", *contents: str, **fields: Any) -> Request:
    request = Request(**fields)
    if model:
        request.routing.model = model
    for content in contents:
        request.messages.add(role=USER, content=content)
    return request


def test_an_inline_chat_prompt_renders_to_nothing_but_the_requests_turns() -> None:
    rendered = inline_rendered(InlinePrompt())

    assert (rendered.prompt, rendered.version, rendered.content_hash) == ("", 0, "")
    assert (rendered.messages, rendered.text, rendered.is_text) == ((), None, False)
    assert rendered.chat_messages() == []
    assert (rendered.parameters, rendered.routing) == (None, None)
    assert (rendered.output_schema, rendered.processing) == (None, None)


def test_an_inline_text_prompt_is_its_raw_text() -> None:
    rendered = inline_rendered(InlinePrompt(text="The capital of France is"))

    assert (rendered.text, rendered.is_text, rendered.prompt) == (
        "The capital of France is",
        True,
        "",
    )


@pytest.mark.parametrize(
    ("request_", "inline", "fields"),
    [
        (_request("m", "Hi"), InlinePrompt(), []),
        (_request("m"), InlinePrompt(text="Once upon a time"), []),
        (_request("m"), InlinePrompt(), ["messages"]),
        (_request("m", "Hi", "  "), InlinePrompt(), ["messages[1].content"]),
        (_request("", "Hi"), InlinePrompt(), ["routing.model"]),
        (_request("m", "Hi", prompt="chat"), InlinePrompt(), ["prompt"]),
        (_request("m", "Hi", label="production"), InlinePrompt(), ["label"]),
        (_request("m", "Hi", version=3), InlinePrompt(), ["version"]),
        (_request("m", "Hi", experiment="e"), InlinePrompt(), ["experiment"]),
        (_request("m"), InlinePrompt(text=" \n"), [INLINE_TEXT_FIELD]),
        (_request("m", "Hi"), InlinePrompt(text="Once"), ["messages"]),
        (
            _request("", prompt="x"),
            InlinePrompt(text=""),
            ["prompt", "routing.model", "inline.text"],
        ),
    ],
    ids=[
        "chat",
        "text",
        "no-turns",
        "blank-turn",
        "unpinned",
        "prompt",
        "label",
        "version",
        "experiment",
        "blank-text",
        "text-with-turns",
        "all-at-once",
    ],
)
def test_what_an_inline_request_may_not_carry(
    request_: Request, inline: InlinePrompt, fields: list[str]
) -> None:
    assert [v.field for v in inline_violations(request_, inline)] == fields


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (SCHEMA, ""),
        ({"type": "object"}, ""),
        ({}, ""),
        ({"type": "nonsense"}, "is not a valid JSON Schema (draft 2020-12) at type"),
        ({"properties": {"a": {"minLength": -1}}}, "at properties/a/minLength"),
        ({"enum": {1, 2}}, "is not JSON"),
        ({"maximum": float("nan")}, "is not JSON"),
    ],
    ids=["object", "any-object", "empty", "bad-type", "nested", "set", "nan"],
)
def test_a_request_schema_must_be_a_valid_json_schema(schema: Any, problem: str) -> None:
    violations = output_schema_violations(schema)

    if not problem:
        assert violations == []
    else:
        [violation] = violations
        assert violation.field == OUTPUT_SCHEMA_FIELD
        assert problem in violation.description


def _version(**fields: Any) -> RenderedPrompt:
    proto = prompt_pb2.PromptVersion(prompt="extract", version=4, **fields)
    return RenderedPrompt(
        prompt="extract",
        version=4,
        content_hash="h",
        messages=(),
        source=ResolvedVersion(proto, {}),
    )


def test_a_request_schema_goes_where_the_versions_own_would_and_the_cache_is_untouched() -> None:
    version = _version(parameters=generation_pb2.SamplingParameters(max_tokens=9))

    schemed = with_output_schema(version, SCHEMA)

    assert schemed.output_schema is not None
    assert json_format.MessageToDict(schemed.output_schema) == SCHEMA
    assert schemed.parameters == generation_pb2.SamplingParameters(max_tokens=9)
    assert (schemed.prompt, schemed.version) == ("extract", 4)
    assert version.output_schema is None  # the cached version is shared: never modified
    assert not version.source.proto.HasField("output_schema")
    config = processing_config(schemed, generation_pb2.SamplingParameters())
    assert config.output_schema == SCHEMA


def test_an_inline_prompt_with_a_schema_is_checked_like_a_version() -> None:
    schemed = with_output_schema(inline_rendered(InlinePrompt()), {"type": "object"})

    assert schemed.prompt == ""
    assert processing_config(schemed, generation_pb2.SamplingParameters()).output_schema == {
        "type": "object"
    }
    assert inline_rendered(InlinePrompt()).output_schema is None  # the shared empty version


def test_a_replayed_outcome_names_what_served_from_the_stored_final() -> None:
    final = gateway_pb2.CompletionMetadata(
        request_id="r-1",
        trace_id="t" * 32,
        prompt="chat",
        prompt_version=2,
        label="production",
        model="smollm2-135m-instruct",
        backend_id="triton-1",
        usage=generation_pb2.TokenUsage(input_tokens=7, output_tokens=3),
        attempts=[
            gateway_pb2.Attempt(
                model="smollm2-135m-instruct",
                backend_id="triton-0",
                status="UNAVAILABLE",
                error="UNAVAILABLE: down",
            ),
            gateway_pb2.Attempt(model="smollm2-135m-instruct", backend_id="triton-1", status="OK"),
        ],
    )

    outcome = replayed_outcome(Request(request_id="r-1"), final, 5.0)

    assert (outcome.request_id, outcome.trace_id, outcome.label) == ("r-1", "t" * 32, "production")
    assert outcome.final is final
    assert outcome.model == "smollm2-135m-instruct"
    assert outcome.backend_id == "triton-1"
    assert [a.result for a in outcome.routed[-1].attempts] == [
        router_service_pb2.ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN,
        router_service_pb2.ATTEMPT_RESULT_SUCCESS,
    ]
    assert outcome.attempts() == list(final.attempts)
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (7, 3)


def test_a_replayed_outcome_without_listed_attempts_names_the_serving_backend() -> None:
    final = gateway_pb2.CompletionMetadata(request_id="r", model="zero", backend_id="triton-0")

    outcome = replayed_outcome(Request(), final, 0.0)

    assert (outcome.model, outcome.backend_id) == ("zero", "triton-0")


@pytest.mark.parametrize(
    ("tags", "fields"),
    [
        ({"team": "a"}, []),
        ({f"k{i}": "v" for i in range(17)}, ["tags"]),
        ({"": "v", "k" * 129: "v", "ok": "v" * 129}, ["tags[]", f"tags[{'k' * 32}]", "tags[ok]"]),
    ],
    ids=["fine", "too-many", "bad-keys-and-values"],
)
def test_tags_follow_one_rule_for_completions_and_embeddings(
    tags: dict[str, str], fields: list[str]
) -> None:
    assert [v.field for v in tag_violations(tags)] == fields
