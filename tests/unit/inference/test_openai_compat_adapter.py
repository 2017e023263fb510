"""The OpenAI-compatible adapter's pure parts: the SSE decoder, the mapping of stream events to
chunks, the request body, and the mapping of HTTP errors to domain errors."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common import reasons
from services.common.errors import (
    DomainError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.inference.adapters.openai_compat import (
    MAX_RETRY_AFTER,
    CompletionStream,
    SSEDecoder,
    SSEEvent,
    chat_completion_body,
    endpoint_url,
    http_error,
    retry_after_seconds,
)
from services.inference.core.model import (
    BackendChunk,
    BackendKind,
    BackendRequest,
    BackendSpec,
    ChatTurn,
    FinishReason,
    Sampling,
)

SPEC = BackendSpec(
    "openai-0", "http://127.0.0.1:1/v1", "test-model", 4, BackendKind.OPENAI_COMPATIBLE
)
KEY = "sk-test-0123456789"


def _decode_in_pieces(raw: bytes, cut: int) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) + decoder.close()


# -- SSE decoding -----------------------------------------------------------------------------

STREAM = (
    "\ufeff: a comment, ignored\r\n"
    'data: {"a": 1}\r\n'
    "\r\n"
    "event: ping\n"
    "data: x\n"
    "id: 7\n"
    "retry: 100\n"
    "\n"
    "data:no-space\r"
    "data:  two spaces\r"
    "\r"
    "data: first line\n"
    "data: héllo ✓ 🙂\n"
    "\n"
    "data:\n"
    "\n"
    ": only a comment\n"
    "\n"
    "data: [DONE]\n"
    "\n"
).encode()
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("x", "ping"),
    SSEEvent("no-space\n two spaces"),
    SSEEvent("first line\nhéllo ✓ 🙂"),
    SSEEvent(""),
    SSEEvent("[DONE]"),
]


def test_sse_decoder_reads_every_line_ending_comments_fields_and_multiline_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(STREAM) + decoder.close() == EXPECTED


def test_sse_decoder_gives_the_same_events_however_the_bytes_are_split() -> None:
    # Every cut: inside CRLF, between CR and the next line, inside multi-byte UTF-8 characters.
    for cut in range(len(STREAM) + 1):
        assert _decode_in_pieces(STREAM, cut) == EXPECTED, cut


def test_sse_decoder_byte_by_byte() -> None:
    decoder = SSEDecoder()
    events = [event for i in range(len(STREAM)) for event in decoder.feed(STREAM[i : i + 1])]
    assert events + decoder.close() == EXPECTED


def test_sse_decoder_completes_a_last_event_without_its_blank_line_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"b": 2}\n\ndata: [DONE]') == [SSEEvent('{"b": 2}')]
    assert decoder.close() == [SSEEvent("[DONE]")]
    lone_cr = SSEDecoder()
    assert lone_cr.feed(b"data: x\r") == []
    assert lone_cr.close() == [SSEEvent("x")]


def test_sse_decoder_emits_nothing_for_an_event_without_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: named\nid: 3\n\n: c\n\n") == []
    assert decoder.feed(b"data: y\n\n") == [SSEEvent("y")]  # the event type was reset


# -- stream events to chunks ------------------------------------------------------------------


def _chunk(content: str | None = None, finish: str | None = None, **more: Any) -> SSEEvent:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **more.pop("choice", {})}
    return SSEEvent(json.dumps({"object": "chat.completion.chunk", "choices": [choice], **more}))


def _usage(prompt: int, completion: int) -> SSEEvent:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return SSEEvent(json.dumps({"choices": [], "usage": usage}))


def _run(events: list[SSEEvent]) -> tuple[list[BackendChunk], CompletionStream]:
    stream = CompletionStream(SPEC, secrets=[KEY])
    chunks = [chunk for event in events for chunk in stream.on_event(event)]
    return chunks, stream


def test_deltas_become_chunks_and_the_final_usage_the_final_counts() -> None:
    role = SSEEvent(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    chunks, stream = _run(
        [
            role,
            _chunk("Hel"),
            _chunk("lo", usage=None),
            _chunk(""),
            _chunk(None, "stop"),
            _usage(11, 3),
            SSEEvent("[DONE]"),
        ]
    )
    assert chunks == [
        # Not counted until the usage comes: InferenceService counts meanwhile.
        BackendChunk("", 0, 0, None, counted=False),  # the role chunk: the generation runs
        BackendChunk("Hel", 0, 1, None, counted=False),
        BackendChunk("lo", 0, 2, None, counted=False),
    ]
    assert stream.done()
    assert stream.final() == BackendChunk("", 11, 3, FinishReason.STOP)


def test_without_usage_the_final_says_the_counts_are_not_the_providers() -> None:
    _, stream = _run([_chunk("a"), _chunk("b"), _chunk("c", "length"), SSEEvent("[DONE]")])
    assert stream.final() == BackendChunk("", 0, 3, FinishReason.LENGTH, counted=False)


def test_running_usage_on_every_chunk_wins_over_counting() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    chunks, stream = _run([_chunk("ab", usage=usage), _chunk(None, "stop")])
    assert chunks == [BackendChunk("ab", 5, 2, None)]
    assert stream.final() == BackendChunk("", 5, 2, FinishReason.STOP)


def test_content_on_the_finish_chunk_comes_before_the_final() -> None:
    chunks, stream = _run([_chunk("last", "stop")])
    assert chunks == [BackendChunk("last", 0, 1, None, counted=False)]
    assert stream.final().finish_reason is FinishReason.STOP


@pytest.mark.parametrize(
    ("finish", "stop_reason", "expected"),
    [
        ("stop", None, FinishReason.STOP),
        ("stop", "###", FinishReason.STOP_SEQUENCE),  # vLLM names the matched stop string
        ("stop", 128009, FinishReason.STOP),  # vLLM: a stop token id is an end of sequence
        ("length", None, FinishReason.LENGTH),
        ("content_filter", None, FinishReason.CONTENT_FILTER),
        ("eos_token", None, FinishReason.STOP),
        ("stop_sequence", None, FinishReason.STOP_SEQUENCE),
        ("tool_calls", None, FinishReason.STOP),
        ("something_new", None, FinishReason.STOP),
    ],
)
def test_finish_reasons(finish: str, stop_reason: object, expected: FinishReason) -> None:
    _, stream = _run([_chunk("x", finish, choice={"stop_reason": stop_reason})])
    assert stream.final().finish_reason is expected


def test_an_aborted_generation_is_unavailable() -> None:
    with pytest.raises(Unavailable) as raised:
        _run([_chunk("x", "abort")])
    assert raised.value.reason == reasons.BACKEND_ERROR


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent(json.dumps({"error": {"message": f"engine died; key {KEY}", "code": 500}})),
        SSEEvent(json.dumps({"object": "error", "message": "x"}), "error"),
        SSEEvent("plain words", "error"),
    ],
    ids=["error-object", "error-event-json", "error-event-text"],
)
def test_an_error_event_mid_stream_is_a_backend_error(event: SSEEvent) -> None:
    with pytest.raises(Internal) as raised:
        _run([_chunk("x"), event])
    assert raised.value.reason == reasons.BACKEND_ERROR
    assert KEY not in raised.value.message


@pytest.mark.parametrize("data", ["{not json", "[1, 2]"])
def test_an_unreadable_event_is_a_backend_error(data: str) -> None:
    with pytest.raises(Internal) as raised:
        _run([SSEEvent(data)])
    assert raised.value.reason == reasons.BACKEND_ERROR


def test_events_of_other_types_and_other_choices_are_ignored() -> None:
    other = SSEEvent(json.dumps({"choices": [{"index": 1, "delta": {"content": "n=2"}}]}))
    chunks, _ = _run([SSEEvent("{}", "ping"), other, _chunk("x")])
    assert [c.text for c in chunks] == ["x"]


def test_a_stream_that_ends_without_a_finish_reason_is_unavailable() -> None:
    _, stream = _run([_chunk("x"), SSEEvent("[DONE]")])
    with pytest.raises(Unavailable) as raised:
        stream.final()
    assert raised.value.reason == reasons.BACKEND_ERROR
    assert raised.value.retry_after is not None


# -- the request ------------------------------------------------------------------------------


def _request(**fields: Any) -> BackendRequest:
    values: dict[str, Any] = {
        "prompt": "Say hi",
        "max_tokens": 7,
        "sampling": Sampling(),
        "request_id": "r-1",
        "stream": True,
        "timeout": None,
        **fields,
    }
    return BackendRequest(**values)


def test_text_input_is_one_user_message_and_unset_parameters_are_left_out() -> None:
    assert chat_completion_body(SPEC, _request()) == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 7,
    }


def test_chat_input_goes_out_as_messages_with_every_sampling_parameter() -> None:
    sampling = Sampling(
        temperature=0.5,
        top_p=0.9,
        seed=42,
        presence_penalty=0.1,
        frequency_penalty=-0.2,
        stop=("###", "\n\n"),
    )
    messages = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hi"))
    body = chat_completion_body(SPEC, _request(prompt="", messages=messages, sampling=sampling))
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert {k: v for k, v in body.items() if k not in ("model", "messages", "stream_options")} == {
        "stream": True,
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 42,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.2,
        "stop": ["###", "\n\n"],
    }


def test_parameters_the_openai_api_lacks_are_refused_not_dropped() -> None:
    with pytest.raises(InvalidArgument) as raised:
        chat_completion_body(SPEC, _request(sampling=Sampling(top_k=5, repetition_penalty=1.1)))
    assert [v.field for v in raised.value.violations] == [
        "parameters.top_k",
        "parameters.repetition_penalty",
    ]


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1/chat/completions"),
    ],
)
def test_endpoint_url(base: str, url: str) -> None:
    assert endpoint_url(base, "chat/completions") == url


# -- HTTP errors ------------------------------------------------------------------------------


def _error_body(message: str, code: str | None = None, param: str | None = None) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "reason", "retry_after"),
    [
        (400, {}, _error_body("bad temperature"), InvalidArgument, reasons.FIELD_VIOLATION, None),
        (422, {}, b'{"detail": [{"loc": ["body"]}]}', InvalidArgument, "FIELD_VIOLATION", None),
        (
            400,
            {},
            _error_body("This model's maximum context length is 2048 tokens", None, "messages"),
            InvalidArgument,
            reasons.CONTEXT_LENGTH_EXCEEDED,
            None,
        ),
        (401, {}, _error_body(f"Incorrect API key {KEY}"), Internal, reasons.BACKEND_ERROR, None),
        (403, {}, b"forbidden", Internal, reasons.BACKEND_ERROR, None),
        (404, {}, _error_body("no such model"), Unavailable, reasons.BACKEND_UNAVAILABLE, 1.0),
        (
            429,
            {"retry-after": "7"},
            _error_body("slow down"),
            ResourceExhausted,
            reasons.BACKEND_OVERLOADED,
            7.0,
        ),
        (429, {}, b"", ResourceExhausted, reasons.BACKEND_OVERLOADED, 1.0),
        (500, {}, b"boom", Unavailable, reasons.BACKEND_UNAVAILABLE, 1.0),
        (503, {"retry-after": "3"}, b"", Unavailable, reasons.BACKEND_UNAVAILABLE, 3.0),
        (418, {}, b"teapot", Internal, reasons.BACKEND_ERROR, None),
    ],
)
def test_http_errors_map_to_domain_errors(
    status: int,
    headers: dict[str, str],
    body: bytes,
    kind: type[DomainError],
    reason: str,
    retry_after: float | None,
) -> None:
    error = http_error(SPEC, status, headers, body, input_field="chat.messages", secrets=[KEY])
    assert type(error) is kind
    assert error.reason == reason
    assert getattr(error, "retry_after", None) == retry_after
    assert error.metadata == {"backend_id": "openai-0", "http_status": str(status)}
    assert KEY not in error.message


def test_credential_errors_name_neither_key_nor_provider_message() -> None:
    error = http_error(SPEC, 401, {}, _error_body(f"Incorrect API key provided: {KEY[:6]}"))
    assert "Incorrect" not in error.message
    assert KEY[:6] not in error.message


def test_provider_messages_lose_secrets_and_length() -> None:
    error = http_error(SPEC, 400, {}, _error_body(f"bad {KEY} " + "x" * 2000), secrets=[KEY])
    assert KEY not in error.message
    assert "[redacted]" in error.message
    assert len(error.message) < 600


def test_field_violations_name_the_parameter_and_context_length_the_input() -> None:
    bad = http_error(SPEC, 400, {}, _error_body("too hot", param="temperature"))
    assert isinstance(bad, InvalidArgument)
    assert [v.field for v in bad.violations] == ["parameters.temperature"]
    long = http_error(
        SPEC, 400, {}, _error_body("too long", code="context_length_exceeded"), input_field="text"
    )
    assert isinstance(long, InvalidArgument)
    assert long.reason == reasons.CONTEXT_LENGTH_EXCEEDED
    assert [v.field for v in long.violations] == ["text"]


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Wed, 01 Jan 2025 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Wed, 01 Jan 2025 11:00:00 GMT"}, 0.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "99999999"}, MAX_RETRY_AFTER),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers, now=NOW) == seconds
