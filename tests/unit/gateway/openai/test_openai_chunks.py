"""Response bodies and SSE chunks: a pre-encoded chunk is byte for byte `json.dumps` of the
whole chunk, whatever the text holds."""

import base64
import json
import struct
from typing import Any

import pytest
from genai.common.v1 import generation_pb2, routing_pb2
from genai.gateway.v1 import gateway_pb2
from genai.router.v1 import router_pb2

from services.gateway.openai import chunks

TEXTS = ["Paris", "", ' "quoted" \\ back', "line\nbreak\ttab", "naïve café ✓ 😀", "\x00\u2028"]


def final(**fields: Any) -> gateway_pb2.CompletionMetadata:
    return gateway_pb2.CompletionMetadata(
        request_id="r1",
        model="smollm2-135m-instruct",
        backend_id="triton-0/smollm2",
        finish_reason=fields.pop("finish_reason", generation_pb2.FINISH_REASON_STOP),
        usage=generation_pb2.TokenUsage(input_tokens=11, output_tokens=3),
        **fields,
    )


def data(event: bytes) -> Any:
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    return json.loads(event[6:])


def whole(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chat_chunk_is_json_dumps_of_the_whole_chunk(text: str, include_usage: bool) -> None:
    sse = chunks.StreamChunks(
        completion_id="chatcmpl-r1",
        created=1700000000,
        model="smollm2-135m-instruct",
        chat=True,
        include_usage=include_usage,
    )
    base = {
        "id": "chatcmpl-r1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "smollm2-135m-instruct",
    }
    usage = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any]) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return {**base, "choices": [choice], **usage}

    assert sse.first(text) == whole(chunk({"role": "assistant", "content": text}))
    assert sse.delta(text) == whole(chunk({"content": text}))
    assert data(sse.delta(text))["choices"][0]["delta"]["content"] == text


@pytest.mark.parametrize("text", TEXTS)
def test_a_text_completion_chunk_is_json_dumps_of_the_whole_chunk(text: str) -> None:
    sse = chunks.StreamChunks(
        completion_id="cmpl-r1", created=5, model="gemma3-270m", chat=False, include_usage=False
    )
    expected = {
        "id": "cmpl-r1",
        "object": "text_completion",
        "created": 5,
        "model": "gemma3-270m",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": None}],
    }
    assert sse.first(text) == sse.delta(text) == whole(expected)


def test_the_end_has_the_finish_reason_genai_usage_and_done() -> None:
    sse = chunks.StreamChunks(
        completion_id="chatcmpl-r1", created=5, model="m", chat=True, include_usage=True
    )
    events = sse.end(final(finish_reason=generation_pb2.FINISH_REASON_LENGTH)).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    last, usage = data(events[0] + b"\n\n"), data(events[1] + b"\n\n")
    assert last["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    ]
    assert last["usage"] is None
    assert last["genai"]["backendId"] == "triton-0/smollm2"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    no_usage = chunks.StreamChunks(
        completion_id="cmpl-r1", created=5, model="m", chat=False, include_usage=False
    ).end(final())
    assert no_usage.count(b"data: ") == 2  # the finish chunk and [DONE]
    assert data(no_usage.split(b"\n\n")[0] + b"\n\n")["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (generation_pb2.FINISH_REASON_STOP, "stop"),
        (generation_pb2.FINISH_REASON_STOP_SEQUENCE, "stop"),
        (generation_pb2.FINISH_REASON_LENGTH, "length"),
        (generation_pb2.FINISH_REASON_CONTENT_FILTER, "content_filter"),
        (generation_pb2.FINISH_REASON_UNSPECIFIED, "stop"),
    ],
)
def test_finish_reasons(reason: int, expected: str) -> None:
    assert chunks.finish_reason(reason) == expected


def test_whole_completions() -> None:
    metadata = final(prompt="chat", prompt_version=3)
    body = chunks.chat_completion("chatcmpl-r1", 5, "Paris.", metadata)
    assert body["object"] == "chat.completion"
    assert body["model"] == "smollm2-135m-instruct"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Paris.",
        "refusal": None,
    }
    assert body["usage"]["total_tokens"] == 14
    assert body["genai"]["promptVersion"] == 3
    text = chunks.text_completion("cmpl-r1", 5, " Paris", metadata)
    assert text["choices"][0]["text"] == " Paris"
    assert text["object"] == "text_completion"


def test_embeddings_as_floats_or_base64_float32() -> None:
    vectors = [(0.5, -0.25, 1.0), (0.0, 0.125, -1.0)]
    floats = chunks.embeddings("all-minilm-l6-v2", vectors, 7, as_base64=False)
    assert floats["data"][1] == {"object": "embedding", "index": 1, "embedding": [0.0, 0.125, -1.0]}
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    packed = chunks.embeddings("all-minilm-l6-v2", vectors, 7, as_base64=True)
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.5, -0.25, 1.0)


def test_models_never_show_their_backends() -> None:
    model = router_pb2.Model(
        name="smollm2-135m-instruct",
        capabilities=[routing_pb2.CAPABILITY_CHAT, routing_pb2.CAPABILITY_STREAMING],
        max_context_tokens=8192,
        backends=[router_pb2.Backend(id="triton-0", endpoint="10.0.0.1:8001")],
    )
    body = chunks.model_list([model])
    (entry,) = body["data"]
    assert (entry["id"], entry["object"], entry["owned_by"]) == (
        "smollm2-135m-instruct",
        "model",
        "genai-platform",
    )
    assert entry["genai"]["capabilities"] == ["chat", "streaming"]
    assert "10.0.0.1" not in json.dumps(body)
