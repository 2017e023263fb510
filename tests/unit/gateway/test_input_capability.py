"""The capability the gateway requires of routing candidates for a prompt's input: CHAT for a
chat prompt, COMPLETION for a text prompt, so that an unpinned chat prompt never lands on a base
model without a chat template; a pinned model is left to InferenceService, which refuses an
input the model cannot take."""

import pytest
from genai.common.v1 import routing_pb2

from services.gateway.completion import with_input_capability

CHAT = routing_pb2.CAPABILITY_CHAT
COMPLETION = routing_pb2.CAPABILITY_COMPLETION
JSON = routing_pb2.CAPABILITY_JSON_OUTPUT


@pytest.mark.parametrize(("text", "needed"), [(False, CHAT), (True, COMPLETION)])
def test_an_unpinned_request_requires_its_input_capability(text: bool, needed: int) -> None:
    preferences = routing_pb2.RoutingPreferences(required_capabilities=[JSON])

    merged = with_input_capability(preferences, text=text)

    assert list(merged.required_capabilities) == [JSON, needed]


def test_a_capability_asked_for_already_is_not_repeated() -> None:
    preferences = routing_pb2.RoutingPreferences(required_capabilities=[COMPLETION])

    merged = with_input_capability(preferences, text=True)

    assert list(merged.required_capabilities) == [COMPLETION]


@pytest.mark.parametrize("text", [False, True])
def test_a_pinned_model_gets_no_implicit_requirement(text: bool) -> None:
    preferences = routing_pb2.RoutingPreferences(model="gemma3-270m")

    merged = with_input_capability(preferences, text=text)

    assert list(merged.required_capabilities) == []
