"""Response bodies of the OpenAI-compatible API, and the SSE events of a streamed completion.

A streamed completion sends one event per delta. Its bytes are `prefix + json.dumps(text) +
suffix`, where prefix and suffix are built once per request by encoding the whole chunk around
a placeholder, so a chunk is byte for byte what `json.dumps` of the whole object would give
(compact separators) at the cost of one string encoding.

Chat completion chunks, in order:

1. `delta {"role": "assistant", "content": ...}` with the first text;
2. `delta {"content": ...}` for every further delta;
3. `delta {}` with the `finish_reason`, and `genai` (the `CompletionMetadata` as proto JSON);
4. with `stream_options.include_usage`, `choices: []` and the `usage` (every earlier chunk
   then has `"usage": null`);
5. `data: [DONE]`.

Text completion chunks are the same with `choices[0].text` instead of a delta.
"""

import base64
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from genai.common.v1 import generation_pb2, routing_pb2
from genai.gateway.v1 import gateway_pb2
from genai.router.v1 import router_pb2
from google.protobuf import json_format

DONE: Final = b"data: [DONE]\n\n"
OWNED_BY: Final = "genai-platform"
"""`owned_by` of every model."""

_PLACEHOLDER: Final = "\x00genai-text\x00"
_ENCODED_PLACEHOLDER: Final = json.dumps(_PLACEHOLDER).encode()
_FINISH: Final[Mapping[int, str]] = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}


def dumps(value: Any) -> bytes:
    """Compact JSON, as every body and chunk is encoded."""
    return json.dumps(value, separators=(",", ":")).encode()


def finish_reason(reason: int) -> str:
    """OpenAI's finish reason for the platform's (`stop` where it says none)."""
    return _FINISH.get(reason, "stop")


def usage(tokens: generation_pb2.TokenUsage) -> dict[str, int]:
    """OpenAI's `usage` object."""
    return {
        "prompt_tokens": tokens.input_tokens,
        "completion_tokens": tokens.output_tokens,
        "total_tokens": tokens.input_tokens + tokens.output_tokens,
    }


def metadata(final: gateway_pb2.CompletionMetadata) -> dict[str, Any]:
    """The `genai` member: what served the request and what it cost, as proto JSON."""
    return json_format.MessageToDict(final)


class _Template:
    """`prefix + json.dumps(text) + suffix`, with prefix and suffix encoded once."""

    __slots__ = ("_prefix", "_suffix")

    def __init__(self, chunk: dict[str, Any]) -> None:
        encoded = b"data: " + dumps(chunk) + b"\n\n"
        prefix, found, suffix = encoded.partition(_ENCODED_PLACEHOLDER)
        assert found, "the chunk holds its placeholder"
        assert _ENCODED_PLACEHOLDER not in suffix, "the chunk holds one placeholder only"
        self._prefix = prefix
        self._suffix = suffix

    def event(self, text: str) -> bytes:
        return self._prefix + json.dumps(text).encode() + self._suffix


class StreamChunks:
    """The SSE events of one streamed completion (see the module docstring): `first`, `delta`
    and `end` for a chat completion (`chat`) or a text completion."""

    __slots__ = ("_base", "_chat", "_first", "_include_usage", "_next")

    def __init__(
        self, *, completion_id: str, created: int, model: str, chat: bool, include_usage: bool
    ) -> None:
        self._chat = chat
        self._include_usage = include_usage
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        if chat:
            self._first = _Template(
                self._chunk({"role": "assistant", "content": _PLACEHOLDER}, None, None)
            )
            self._next = _Template(self._chunk({"content": _PLACEHOLDER}, None, None))
        else:
            self._first = self._next = _Template(self._chunk(None, _PLACEHOLDER, None))

    def first(self, text: str) -> bytes:
        """The event of the first text (a chat chunk also says the role)."""
        return self._first.event(text)

    def delta(self, text: str) -> bytes:
        """The event of every further text."""
        return self._next.event(text)

    def end(self, final: gateway_pb2.CompletionMetadata) -> bytes:
        """The events after the last text: the finish reason with `genai`, the usage chunk if
        asked for, and `[DONE]`."""
        last = self._chunk({} if self._chat else None, "", finish_reason(final.finish_reason))
        last["genai"] = metadata(final)
        events = b"data: " + dumps(last) + b"\n\n"
        if self._include_usage:
            events += b"data: " + dumps({**self._base, "choices": [], "usage": usage(final.usage)})
            events += b"\n\n"
        return events + DONE

    def _chunk(
        self, delta: dict[str, Any] | None, text: str | None, finish: str | None
    ) -> dict[str, Any]:
        choice: dict[str, Any]
        if self._chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        chunk = {**self._base, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def chat_completion(
    completion_id: str, created: int, text: str, final: gateway_pb2.CompletionMetadata
) -> dict[str, Any]:
    """The body of a whole chat completion."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": final.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(final.finish_reason),
            }
        ],
        "usage": usage(final.usage),
        "genai": metadata(final),
    }


def text_completion(
    completion_id: str, created: int, text: str, final: gateway_pb2.CompletionMetadata
) -> dict[str, Any]:
    """The body of a whole text completion."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": final.model,
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": None,
                "finish_reason": finish_reason(final.finish_reason),
            }
        ],
        "usage": usage(final.usage),
        "genai": metadata(final),
    }


def embeddings(
    model: str,
    vectors: Sequence[Sequence[float]],
    input_tokens: int,
    *,
    as_base64: bool,
) -> dict[str, Any]:
    """The body of an embeddings response; `as_base64` packs each vector as little-endian
    float32, base64-encoded (what `encoding_format: base64` asks for)."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _packed(vector) if as_base64 else list(vector),
        }
        for index, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
    }


def _packed(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def model_object(model: router_pb2.Model) -> dict[str, Any]:
    """One entry of `/v1/models`, with what the catalog says about it under `genai` (never
    its backends: their endpoints are the platform's business)."""
    details: dict[str, Any] = {
        "capabilities": [
            routing_pb2.Capability.Name(c).removeprefix("CAPABILITY_").lower()
            for c in model.capabilities
        ],
        "max_context_tokens": model.max_context_tokens,
        "max_output_tokens": model.max_output_tokens,
        "quality_tier": model.quality_tier,
    }
    if model.display_name:
        details["display_name"] = model.display_name
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": OWNED_BY,
        "genai": details,
    }


def model_list(models: Sequence[router_pb2.Model]) -> dict[str, Any]:
    """The body of `GET /v1/models`."""
    return {"object": "list", "data": [model_object(model) for model in models]}
