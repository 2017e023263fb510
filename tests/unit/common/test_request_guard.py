"""The contract-wide request guard: which values it rejects, and the field paths it names."""

import math
from typing import cast

import pytest
from genai.common.v1 import chat_pb2
from genai.gateway.v1 import gateway_service_pb2
from genai.prompt.v1 import prompt_service_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from services.common.request_guard import (
    MAX_STRUCT_DEPTH,
    MAX_VIOLATIONS,
    guards,
    request_violations,
)


def _descriptor(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)  # the stubs add upb's own class


def _complete(**fields: object) -> gateway_service_pb2.CompleteRequest:
    return gateway_service_pb2.CompleteRequest(**fields)  # type: ignore[arg-type]


def _logs(seconds: int, nanos: int = 0) -> gateway_service_pb2.ListRequestLogsRequest:
    request = gateway_service_pb2.ListRequestLogsRequest()
    request.start_time.seconds, request.start_time.nanos = seconds, nanos
    return request


def _nested(depth: int) -> prompt_service_pb2.RenderPromptRequest:
    request = prompt_service_pb2.RenderPromptRequest(prompt="p")
    struct = request.variables
    for _ in range(depth - 1):
        struct = struct.fields["a"].struct_value
    struct.fields["b"].string_value = "x"
    return request


def _with_temperature(value: float) -> gateway_service_pb2.CompleteRequest:
    request = _complete(prompt="p")
    request.parameters.temperature = value
    return request


def _with_message_role(role: int) -> gateway_service_pb2.CompleteRequest:
    request = _complete()
    request.messages.add(role=role, content="hi")
    return request


def _with_variable(key: str, number: float) -> prompt_service_pb2.RenderPromptRequest:
    request = prompt_service_pb2.RenderPromptRequest(prompt="p")
    request.variables.fields[key].number_value = number
    return request


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (_logs(1_099_511_627_776), "start_time"),
        (_logs(-62_135_596_801), "start_time"),
        (_logs(0, -1), "start_time"),
        (_logs(0, 1_000_000_000), "start_time"),
        (_with_temperature(math.nan), "parameters.temperature"),
        (_with_temperature(-math.inf), "parameters.temperature"),
        (_with_message_role(99), "messages[0].role"),
        (_with_variable("a", math.inf), "variables.a"),
        (_with_variable("not an identifier", math.nan), 'variables["not an identifier"]'),
        (_nested(MAX_STRUCT_DEPTH + 1), "variables" + ".a" * MAX_STRUCT_DEPTH),
    ],
)
def test_rejects_values_no_field_may_hold_and_names_the_field(
    request_message: Message, field: str
) -> None:
    violations = request_violations(request_message)
    assert [v.field for v in violations] == [field], violations
    assert all(v.description for v in violations)


@pytest.mark.parametrize(
    "request_message",
    [
        _logs(253_402_300_799, 999_999_999),
        _logs(-62_135_596_800),
        _with_temperature(0.7),
        _with_message_role(chat_pb2.CHAT_ROLE_USER),
        _with_variable("a", 1e308),
        _nested(MAX_STRUCT_DEPTH),
        _complete(),
    ],
)
def test_accepts_values_in_range(request_message: Message) -> None:
    assert request_violations(request_message) == []


def test_a_value_without_kind_and_an_undeclared_null_are_rejected() -> None:
    request = prompt_service_pb2.RenderPromptRequest(prompt="p")
    request.variables.fields["empty"].SetInParent()
    request.variables.fields["null"].null_value = 7  # type: ignore[assignment]
    fields = sorted(v.field for v in request_violations(request))
    assert fields == ["variables.empty", "variables.null"]


def test_reports_a_bounded_number_of_violations() -> None:
    request = _complete()
    for _ in range(10_000):
        request.messages.add(role=99)
    violations = request_violations(request)
    assert len(violations) == MAX_VIOLATIONS
    assert violations[-1].field == f"messages[{MAX_VIOLATIONS - 1}].role"


def test_request_types_that_cannot_hold_checked_values_are_not_walked() -> None:
    assert not guards(_descriptor(prompt_service_pb2.GetPromptRequest()))
    assert guards(_descriptor(prompt_service_pb2.RenderPromptRequest()))
    assert guards(_descriptor(gateway_service_pb2.ListRequestLogsRequest()))
