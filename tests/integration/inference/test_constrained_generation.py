"""Output constraints (guided decoding) through InferenceService's real gRPC API, against the
test provider of `tests.support.openai_server`: validation with precise field violations,
FAILED_PRECONDITION for models without guided decoding, `response_format` on the wire, the
final's `constrained`, and `ServedModel.guided_decoding`."""

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import generation_pb2
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from google.protobuf import struct_pb2

from services.common import reasons
from services.common.status import ParsedError, error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer

if TYPE_CHECKING:
    Stub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    Stub = inference_service_pb2_grpc.InferenceServiceStub

gen = generation_pb2
SCHEMA = {
    "type": "object",
    "required": ["city"],
    "properties": {"city": {"type": "string", "minLength": 3}},
    "additionalProperties": False,
}
CITY = ['{"city": ', '"Paris"}']


def _settings(base_url: str) -> PlatformSettings:
    def openai(backend_id: str) -> dict[str, Any]:
        return {
            "id": backend_id,
            "kind": "openai_compatible",
            "endpoint": base_url,
            "provider_model": MODEL,
        }

    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["inference"],
            "server": {"port": 0},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {"name": "guided", "backends": [openai("openai-0")], "guided_decoding": True},
                    {"name": "plain", "backends": [openai("openai-1")]},
                ],
            },
        }
    )


@pytest.fixture
async def provider() -> AsyncIterator[OpenAICompatibleServer]:
    async with OpenAICompatibleServer(Behaviour(tokens=["Paris"], json_tokens=CITY)) as server:
        yield server


@pytest.fixture
async def platform(provider: OpenAICompatibleServer) -> AsyncIterator[Platform]:
    running = await start_platform(_settings(provider.base_url))
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def stub(platform: Platform) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(platform.address) as channel:
        yield inference_service_pb2_grpc.InferenceServiceStub(channel)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _request(
    model: str = "guided", **constraint: Any
) -> inference_service_pb2.GenerateStreamRequest:
    request = inference_service_pb2.GenerateStreamRequest(
        model=model, text="Name the capital of France as JSON."
    )
    if constraint:
        request.constraint.CopyFrom(gen.OutputConstraint(**constraint))
    return request


async def _collect(
    stub: Stub, request: inference_service_pb2.GenerateStreamRequest
) -> list[inference_service_pb2.GenerateStreamResponse]:
    return [response async for response in stub.GenerateStream(request, timeout=10)]


async def _failure(stub: Stub, request: inference_service_pb2.GenerateStreamRequest) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _collect(stub, request)
    return error_details(raised.value)


async def test_a_json_schema_goes_out_as_a_strict_response_format_and_the_final_says_so(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    responses = await _collect(stub, _request(json_schema=_struct(SCHEMA)))

    text = "".join(r.delta.text for r in responses if r.HasField("delta"))
    assert json.loads(text) == {"city": "Paris"}
    assert responses[-1].final.constrained is True
    [recorded] = provider.requests
    assert recorded.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }
    # A Struct holds numbers as doubles; the schema goes out with its whole numbers whole.
    min_length = recorded.body["response_format"]["json_schema"]["schema"]["properties"]["city"]
    assert type(min_length["minLength"]) is int


async def test_json_object_goes_out_as_the_json_object_format(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    responses = await _collect(stub, _request(json_object=True))

    assert responses[-1].final.constrained is True
    assert provider.requests[0].body["response_format"] == {"type": "json_object"}


async def test_an_unconstrained_request_has_no_response_format_and_is_not_constrained(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    responses = await _collect(stub, _request())

    assert responses[-1].final.constrained is False
    assert "response_format" not in provider.requests[0].body


@pytest.mark.parametrize(
    ("constraint", "field", "description"),
    [
        (gen.OutputConstraint(), "constraint", "exactly one of json_object (true), json_schema"),
        (gen.OutputConstraint(json_object=False), "constraint", "exactly one of json_object"),
        (
            gen.OutputConstraint(json_schema=_struct({"type": "numbr"})),
            "constraint.json_schema",
            "is not a valid JSON Schema (draft 2020-12) at type:",
        ),
        (
            gen.OutputConstraint(json_schema=_struct({"enum": ["x" * 70_000]})),
            "constraint.json_schema",
            "at most 65,536 bytes as compact JSON, not 70,013",
        ),
        (
            gen.OutputConstraint(json_schema=_struct({"enum": [0] * 60_000})),
            "constraint.json_schema",
            "at most 65,536 bytes as compact JSON; this one is 660,",
        ),
        (gen.OutputConstraint(regex=""), "constraint.regex", "must not be empty"),
        (
            gen.OutputConstraint(regex="a" * 70_000),
            "constraint.regex",
            "at most 65,536 bytes of UTF-8, not 70,000",
        ),
        (
            gen.OutputConstraint(ebnf_grammar="root ::= " + '"a" ' * 20_000),
            "constraint.ebnf_grammar",
            "at most 65,536 bytes of UTF-8",
        ),
    ],
    ids=[
        "oneof-unset",
        "json-object-false",
        "bad-schema",
        "schema-over-64k",
        "schema-far-over-on-the-wire",
        "empty-regex",
        "oversized-regex",
        "oversized-grammar",
    ],
)
async def test_invalid_constraints_are_invalid_argument_naming_the_field(
    stub: Stub,
    provider: OpenAICompatibleServer,
    constraint: gen.OutputConstraint,
    field: str,
    description: str,
) -> None:
    request = _request()
    request.constraint.CopyFrom(constraint)

    error = await _failure(stub, request)

    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.FIELD_VIOLATION,
    )
    [violation] = error.field_violations
    assert violation.field == field
    assert description in violation.description
    assert provider.requests == []


async def test_a_model_without_guided_decoding_is_a_failed_precondition(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    error = await _failure(stub, _request("plain", json_schema=_struct(SCHEMA)))

    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.FAILED_PRECONDITION,
    )
    assert "model 'plain' does not support guided decoding" in error.message
    assert dict(error.metadata) == {"model": "plain", "field": "constraint"}
    assert provider.requests == []  # refused, never sent unconstrained


async def test_a_regex_on_an_openai_compatible_backend_is_a_failed_precondition(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    error = await _failure(stub, _request(regex="[A-Z][a-z]+"))

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "not to a regular expression" in error.message
    assert error.metadata["field"] == "constraint.regex"
    assert provider.requests == []


async def test_a_provider_that_refuses_the_schema_is_invalid_argument_on_the_constraint(
    stub: Stub, provider: OpenAICompatibleServer
) -> None:
    provider.behaviour = Behaviour(response_format_error="'minLength' is not permitted.")

    error = await _failure(stub, _request(json_schema=_struct(SCHEMA)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("constraint", "'minLength' is not permitted.")
    ]


async def test_served_models_say_whether_they_take_a_constraint(stub: Stub) -> None:
    listed = await stub.ListModels(inference_service_pb2.ListModelsRequest(), timeout=10)

    assert {m.name: m.guided_decoding for m in listed.models} == {"guided": True, "plain": False}
