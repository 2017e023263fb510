"""Which model and backend serve a completion while it streams (the stream's headers name
them before the final does): what the serving attempt's `start` named, or the final."""

from datetime import UTC, datetime

from genai.gateway.v1 import gateway_pb2

from services.gateway.openai.app import served_by
from services.gateway.outcome import Outcome, Request


def outcome() -> Outcome:
    return Outcome(
        started=0.0, request_id="r", trace_id="", request=Request(), arrived=datetime.now(UTC)
    )


def test_nothing_serves_before_the_first_delta() -> None:
    assert served_by(outcome()) is None


def test_the_streaming_attempt_serves() -> None:
    streaming = outcome()
    streaming.serving = ("a", "a-1")
    assert served_by(streaming) == ("a", "a-1")


def test_the_final_names_what_served_once_it_exists() -> None:
    ended = outcome()
    ended.serving = None
    ended.final = gateway_pb2.CompletionMetadata(model="b", backend_id="b-0")
    assert served_by(ended) == ("b", "b-0")
