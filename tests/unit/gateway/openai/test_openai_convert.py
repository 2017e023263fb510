"""OpenAI request bodies to the gateway's completion request: every parameter, the ones the
platform refuses (400 naming them) unless they hold OpenAI's default, unknown keys, content
parts, the `genai` extension and the headers."""

import json
from typing import Any

import pytest
from genai.common.v1 import chat_pb2, routing_pb2

from services.gateway.inline import InlinePrompt
from services.gateway.openai import convert
from services.gateway.openai.convert import Completion
from services.gateway.openai.errors import WireError, http_error
from services.gateway.openai.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
)

USER = {"role": "user", "content": "Hi"}
MODEL = "smollm2-135m-instruct"


def chat(headers: dict[str, str] | None = None, **body: Any) -> Completion:
    body.setdefault("model", MODEL)
    body.setdefault("messages", [USER])
    parsed = convert.parse(ChatCompletionRequest, json.dumps(body).encode())
    return convert.chat_completion(parsed, headers or {})


def text(headers: dict[str, str] | None = None, **body: Any) -> Completion:
    body.setdefault("model", "gemma3-270m")
    body.setdefault("prompt", "The capital of France is")
    parsed = convert.parse(CompletionRequest, json.dumps(body).encode())
    return convert.text_completion(parsed, headers or {})


def refused(build: Any, **body: Any) -> WireError:
    with pytest.raises(WireError) as raised:
        build(**body)
    assert raised.value.status == 400
    return raised.value


# ------------------------------------------------------------------------------ chat


def test_a_catalog_model_is_an_inline_conversation_pinned_to_it() -> None:
    completion = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "No lists."},
            USER,
            {"role": "assistant", "content": "Hello."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Name"}, {"type": "text", "text": "two"}],
            },
        ]
    )
    request = completion.request
    assert completion.inline == InlinePrompt()
    assert request.prompt == ""
    assert request.WhichOneof("selector") is None
    assert request.routing.model == MODEL
    assert [(m.role, m.content) for m in request.messages] == [
        (chat_pb2.CHAT_ROLE_SYSTEM, "Be brief."),
        (chat_pb2.CHAT_ROLE_SYSTEM, "No lists."),
        (chat_pb2.CHAT_ROLE_USER, "Hi"),
        (chat_pb2.CHAT_ROLE_ASSISTANT, "Hello."),
        (chat_pb2.CHAT_ROLE_USER, "Name\ntwo"),
    ]
    assert (completion.stream, completion.include_usage, completion.output_schema) == (
        False,
        False,
        None,
    )


def test_every_sampling_parameter_maps_across() -> None:
    request = chat(
        max_tokens=12,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        presence_penalty=0.25,
        frequency_penalty=-0.5,
        stop=["\n", "END"],
        genai={"top_k": 40, "repetition_penalty": 1.1},
    ).request
    p = request.parameters
    assert (p.max_tokens, p.seed, p.top_k, list(p.stop)) == (12, 7, 40, ["\n", "END"])
    assert p.temperature == pytest.approx(0.5)
    assert p.top_p == pytest.approx(0.9)
    assert p.presence_penalty == pytest.approx(0.25)
    assert p.frequency_penalty == pytest.approx(-0.5)
    assert p.repetition_penalty == pytest.approx(1.1)


def test_unset_parameters_stay_unset_so_the_version_and_model_decide() -> None:
    p = chat().request.parameters
    for name in ("max_tokens", "temperature", "top_p", "seed", "top_k"):
        assert not p.HasField(name), name
    assert list(p.stop) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_completion_tokens": 9}, 9),
        ({"max_tokens": 9, "max_completion_tokens": 9}, 9),
        ({"stop": "END"}, None),
    ],
)
def test_max_completion_tokens_and_a_single_stop_string(
    body: dict[str, Any], expected: Any
) -> None:
    p = chat(**body).request.parameters
    if expected is not None:
        assert p.max_tokens == expected
    else:
        assert list(p.stop) == ["END"]


@pytest.mark.parametrize(
    "defaults",
    [
        {"n": 1},
        {"logprobs": False},
        {"top_logprobs": 0},
        {"tools": []},
        {"functions": []},
        {"tool_choice": "none"},
        {"tool_choice": "auto"},
        {"parallel_tool_calls": True},
        {"logit_bias": {}},
        {"modalities": ["text"]},
        {"service_tier": "auto"},
        {"service_tier": "default"},
        {"store": False},
        {"audio": None, "prediction": None, "reasoning_effort": None},
        {"response_format": {"type": "text"}},
        {"stream": False},
        {"messages": [{**USER, "name": None, "tool_calls": None, "refusal": None}]},
    ],
)
def test_openai_defaults_sent_explicitly_are_accepted(defaults: dict[str, Any]) -> None:
    assert chat(**defaults).request.routing.model == MODEL


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": [str(i) for i in range(17)]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"messages": []}, "messages"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_what_the_platform_cannot_honour_is_400_naming_the_param(
    body: dict[str, Any], param: str
) -> None:
    error = refused(chat, **body)
    assert error.param == param
    assert param in error.message


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "42", "tool_call_id": "c1"}, "messages[1].role"),
        ({"role": "function", "content": "42", "name": "f"}, "messages[1].role"),
        ({"role": "user", "content": "x", "name": "ann"}, "messages[1].name"),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            "messages[1].tool_calls",
        ),
        ({"role": "assistant", "content": "x", "refusal": "no"}, "messages[1].refusal"),
        ({"role": "narrator", "content": "x"}, "messages[1].role"),
        ({"role": "user"}, "messages[1].content"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "messages[1].content[0].type",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]},
            "messages[1].content[1].type",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]},
            "messages[1].content[0].cache_control",
        ),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[1].content[0].text"),
    ],
)
def test_unsupported_message_parts_are_400_with_their_exact_path(
    message: dict[str, Any], param: str
) -> None:
    error = refused(chat, messages=[USER, message])
    assert error.param == param


def test_an_unknown_key_is_refused_as_openai_does() -> None:
    error = refused(chat, frobnicate=True)
    assert error.message == "Unrecognized request argument supplied: frobnicate"
    assert error.param == "frobnicate"
    nested = refused(chat, genai={"colour": "red"})
    assert nested.param == "genai.colour"
    deep = refused(chat, stream=True, stream_options={"include_usage": True, "x": 1})
    assert deep.param == "stream_options.x"


@pytest.mark.parametrize(
    ("raw", "param", "fragment"),
    [
        (b"{", None, "could not parse the JSON body"),
        (b"[]", None, "must be a JSON object"),
        (b'{"messages": []}', "model", "Missing required parameter: 'model'"),
        (json.dumps({"model": MODEL}).encode(), "messages", "Missing required parameter"),
        (json.dumps({"model": 5, "messages": []}).encode(), "model", "Invalid value for 'model'"),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 5}]}).encode(),
            "messages[0].content",
            "Invalid value for 'messages[0].content'",
        ),
        (
            json.dumps({"model": MODEL, "messages": [], "stream": "yes"}).encode(),
            "stream",
            "Invalid value",
        ),
    ],
)
def test_bodies_that_do_not_parse_name_the_first_param(
    raw: bytes, param: str | None, fragment: str
) -> None:
    with pytest.raises(WireError) as raised:
        convert.parse(ChatCompletionRequest, raw)
    assert raised.value.param == param
    assert fragment in raised.value.message
    assert http_error(raised.value).status == 400


def test_response_formats_become_the_output_schema() -> None:
    assert chat(response_format={"type": "json_object"}).output_schema == {"type": "object"}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    completion = chat(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        }
    )
    assert completion.output_schema == schema


def test_streaming_with_usage() -> None:
    completion = chat(stream=True, stream_options={"include_usage": True})
    assert (completion.stream, completion.include_usage) == (True, True)
    assert chat(stream=True).include_usage is False


def test_identity_tags_and_headers_map_with_the_body_winning() -> None:
    headers = {
        "x-genai-user": "header-user",
        "x-genai-session": "header-session",
        "idempotency-key": "req-1",
        "x-genai-routing-policy": "cost",
    }
    request = chat(
        headers,
        user="ann",
        metadata={"team": "a", "env": "dev"},
        genai={"tags": {"env": "prod"}, "session_id": "s-9"},
    ).request
    assert (request.user_id, request.session_id, request.request_id) == ("ann", "s-9", "req-1")
    assert dict(request.tags) == {"team": "a", "env": "prod"}
    assert request.routing.policy == routing_pb2.ROUTING_POLICY_COST
    from_headers = chat(headers).request
    assert (from_headers.user_id, from_headers.session_id) == ("header-user", "header-session")
    body_policy = chat(headers, genai={"routing": {"policy": "ROUTING_POLICY_LATENCY"}}).request
    assert body_policy.routing.policy == routing_pb2.ROUTING_POLICY_LATENCY
    assert chat(headers, genai={"user_id": "u-2"}, user="ann").request.user_id == "u-2"


@pytest.mark.parametrize(
    ("headers", "body", "param"),
    [
        ({"x-genai-routing-policy": "fastest"}, {}, None),
        ({"idempotency-key": "k" * 129}, {}, None),
        ({}, {"genai": {"routing": {"policy": "NOPE"}}}, "genai.routing"),
        ({}, {"genai": {"routing": {"model": "gemma3-270m"}}}, "genai.routing.model"),
        ({}, {"genai": {"variables": {"a": 1}}}, "genai.variables"),
        ({}, {"genai": {"experiment": "e"}}, "genai.experiment"),
        ({"x-genai-experiment": "e"}, {}, "genai.experiment"),
        ({}, {"genai": {"input_variable": "message"}}, "genai.input_variable"),
    ],
)
def test_bad_headers_and_extension_values_for_a_catalog_model(
    headers: dict[str, str], body: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(WireError) as raised:
        chat(headers, **body)
    assert raised.value.param == param


# ------------------------------------------------------------------------------ prompt: models


def test_a_prompt_model_serves_its_production_label_with_the_messages_appended() -> None:
    completion = chat(
        model="prompt:chat",
        messages=[USER],
        genai={"variables": {"message": "Name three colours."}, "routing": {"model": "zero"}},
    )
    request = completion.request
    assert completion.inline is None
    assert request.prompt == "chat"
    assert request.WhichOneof("selector") is None  # the engine's default: production
    assert dict(request.variables) == {"message": "Name three colours."}
    assert request.routing.model == "zero"
    assert [m.content for m in request.messages] == ["Hi"]


def test_a_prompt_model_may_have_no_messages() -> None:
    assert chat(model="prompt:chat", messages=[]).request.messages == []


@pytest.mark.parametrize(
    ("model", "selector", "value"),
    [("prompt:chat@staging", "label", "staging"), ("prompt:chat@7", "version", 7)],
)
def test_a_prompt_model_addresses_a_label_or_version(model: str, selector: str, value: Any) -> None:
    request = chat(model=model).request
    assert request.WhichOneof("selector") == selector
    assert getattr(request, selector) == value


def test_an_experiment_assigns_the_version_from_the_body_or_the_header() -> None:
    request = chat({"x-genai-experiment": "tone"}, model="prompt:chat", user="ann").request
    assert (request.WhichOneof("selector"), request.experiment) == ("experiment", "tone")
    body = chat({"x-genai-experiment": "tone"}, model="prompt:chat", genai={"experiment": "b"})
    assert body.request.experiment == "b"
    error = refused(chat, model="prompt:chat@production", genai={"experiment": "tone"})
    assert error.param == "genai.experiment"


def test_the_input_variable_binds_the_last_user_message_instead_of_appending_it() -> None:
    request = chat(
        model="prompt:chat",
        messages=[{"role": "assistant", "content": "Earlier."}, USER],
        genai={"input_variable": "message"},
    ).request
    assert dict(request.variables) == {"message": "Hi"}
    assert [m.content for m in request.messages] == ["Earlier."]
    error = refused(
        chat,
        model="prompt:chat",
        messages=[USER],
        genai={"input_variable": "message", "variables": {"message": "x"}},
    )
    assert error.param == "genai.input_variable"
    assert refused(chat, model="prompt:chat", messages=[], genai={"input_variable": "m"}).param == (
        "messages"
    )


# ------------------------------------------------------------------------------ text completions


def test_a_text_completion_of_a_catalog_model_is_inline_text() -> None:
    completion = text(max_tokens=8, stop="\n", stream=True)
    assert completion.inline == InlinePrompt(text="The capital of France is")
    assert completion.request.routing.model == "gemma3-270m"
    assert list(completion.request.messages) == []
    assert completion.request.parameters.max_tokens == 8
    assert completion.stream
    assert text(prompt=["One prompt"]).inline == InlinePrompt(text="One prompt")


def test_a_text_completion_of_a_prompt_binds_its_text_to_a_variable() -> None:
    default = text(model="prompt:complete").request
    assert dict(default.variables) == {"text": "The capital of France is"}
    named = text(model="prompt:summarize@3", genai={"input_variable": "body"}).request
    assert dict(named.variables) == {"body": "The capital of France is"}
    assert named.version == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"echo": True}, "echo"),
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"logprobs": 1}, "logprobs"),
        ({"n": 3}, "n"),
        ({"logit_bias": {"1": 1}}, "logit_bias"),
        ({"messages": [USER]}, "messages"),
    ],
)
def test_text_completion_refusals(body: dict[str, Any], param: str) -> None:
    assert refused(text, **body).param == param


def test_text_completion_defaults_are_accepted() -> None:
    completion = text(echo=False, suffix="", best_of=1, n=1, logit_bias={})
    assert completion.inline is not None


# ------------------------------------------------------------------------------ embeddings


def embeddings(**body: Any) -> convert.EmbeddingInputs:
    body.setdefault("model", "all-minilm-l6-v2")
    return convert.embedding_inputs(convert.parse(EmbeddingsRequest, json.dumps(body).encode()))


def test_embedding_inputs() -> None:
    one = embeddings(input="hello")
    assert (one.inputs, one.base64, one.dimensions) == (("hello",), False, None)
    many = embeddings(input=["a", "b"], encoding_format="base64", dimensions=384)
    assert (many.inputs, many.base64, many.dimensions) == (("a", "b"), True, 384)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [1, 2]}, "input[0]"),
        ({"input": ["a", [1, 2]]}, "input[1]"),
        ({"input": []}, "input"),
        ({"input": ["x"] * 257}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "model": "prompt:chat"}, "model"),
        ({"input": "x", "frob": 1}, "frob"),
    ],
)
def test_embedding_refusals(body: dict[str, Any], param: str) -> None:
    with pytest.raises(WireError) as raised:
        embeddings(**body)
    assert raised.value.param == param
