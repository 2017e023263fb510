"""The facade I/O contract of the CPU Triton models (see `triton_models/README.md`).

Every generation model reads its request with `read_generation_request`, answers with
`generation_outputs`, and reports bad requests as a `FacadeError`, whose text is
`[REASON] message` so that InferenceService can map the tag to a gRPC status. The embedding
model uses `read_texts` and `embedding_outputs`.

This module imports neither Triton nor torch: functions that build Triton objects take the
Python backend's `triton_python_backend_utils` module as their `pb_utils` argument, so the
module is unit-tested with a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from genai_triton import guides
from genai_triton.guides import Guide, GuideError

T = TypeVar("T")
D = TypeVar("D")

# Inputs of the generation facade.
TEXT_INPUT = "text_input"
MAX_TOKENS = "max_tokens"
STREAM = "stream"
END_ID = "end_id"
PAD_ID = "pad_id"
TEMPERATURE = "temperature"
TOP_K = "top_k"
TOP_P = "top_p"
REPETITION_PENALTY = "repetition_penalty"
PRESENCE_PENALTY = "presence_penalty"
FREQUENCY_PENALTY = "frequency_penalty"
SEED = "seed"
STOP_WORDS = "stop_words"
BAD_WORDS = "bad_words"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
GUIDED_DECODING_GUIDE_TYPE = guides.GUIDE_TYPE
GUIDED_DECODING_GUIDE = guides.GUIDE
GENERATION_INPUTS = (
    TEXT_INPUT,
    MAX_TOKENS,
    STREAM,
    END_ID,
    PAD_ID,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    REPETITION_PENALTY,
    PRESENCE_PENALTY,
    FREQUENCY_PENALTY,
    SEED,
    STOP_WORDS,
    BAD_WORDS,
    EXCLUDE_INPUT_IN_OUTPUT,
    GUIDED_DECODING_GUIDE_TYPE,
    GUIDED_DECODING_GUIDE,
)

# Outputs.
TEXT_OUTPUT = "text_output"
NUM_INPUT_TOKENS = "num_input_tokens"
NUM_OUTPUT_TOKENS = "num_output_tokens"
FINISH_REASON = "finish_reason"
EMBEDDING = "embedding"

# Values of `finish_reason` (empty until the last response).
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_STOP_WORDS = "stop_words"
FINISH_CANCELLED = "cancelled"

# Reason tags (names of `genai.common.v1.ErrorReason`) the models use.
FIELD_VIOLATION = "FIELD_VIOLATION"
CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"
CANCELLED = "CANCELLED"
INTERNAL_ERROR = "INTERNAL_ERROR"

_TRITON_CODES = {
    FIELD_VIOLATION: "INVALID_ARG",
    CONTEXT_LENGTH_EXCEEDED: "INVALID_ARG",
    CANCELLED: "CANCELLED",
}
"""`pb_utils.TritonError` code per reason (INTERNAL for the others); it becomes the gRPC status
when a client sends the `triton_grpc_error: true` header."""


class FacadeError(Exception):
    """A request the model refuses; `str()` gives `[REASON] message`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.message = message

    def to_triton_error(self, pb_utils: Any) -> Any:
        """This error as a `pb_utils.TritonError` with a matching code."""
        error_class = pb_utils.TritonError
        code = getattr(error_class, _TRITON_CODES.get(self.reason, "INTERNAL"), None)
        return error_class(str(self)) if code is None else error_class(str(self), code)


def parse_tagged(message: str) -> tuple[str | None, str]:
    """Splits `[REASON] message` into its reason and text; (None, message) without a tag."""
    if message.startswith("["):
        end = message.find("] ")
        tag = message[1:end] if end > 1 else ""
        if tag and tag.replace("_", "").isalnum() and tag.isupper():
            return tag, message[end + 2 :]
    return None, message


def error_response(pb_utils: Any, error: FacadeError) -> Any:
    """An `InferenceResponse` carrying `error` and no outputs."""
    return pb_utils.InferenceResponse(output_tensors=[], error=error.to_triton_error(pb_utils))


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------


def request_arrays(
    pb_utils: Any, request: Any, names: Iterable[str] = GENERATION_INPUTS
) -> dict[str, NDArray[Any]]:
    """The inputs of a Triton request present among `names`, as numpy arrays."""
    arrays: dict[str, NDArray[Any]] = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            arrays[name] = tensor.as_numpy()
    return arrays


def _decode(value: object, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise FacadeError(FIELD_VIOLATION, f"{name} is not valid UTF-8") from None
    return str(value)


def read_texts(arrays: Mapping[str, NDArray[Any]], name: str = TEXT_INPUT) -> list[str]:
    """Every element of a string input, decoded (one per batch row for `[n, 1]` tensors)."""
    if name not in arrays:
        raise FacadeError(FIELD_VIOLATION, f"{name} is required")
    return [_decode(v, name) for v in arrays[name].reshape(-1)]


def read_text(arrays: Mapping[str, NDArray[Any]], name: str = TEXT_INPUT) -> str:
    """A required string input holding exactly one element."""
    texts = read_texts(arrays, name)
    if len(texts) != 1:
        raise FacadeError(FIELD_VIOLATION, f"{name} must hold one element, got {len(texts)}")
    return texts[0]


def read_optional_text(arrays: Mapping[str, NDArray[Any]], name: str) -> str | None:
    """An optional string input holding exactly one element; None when it is absent."""
    return read_text(arrays, name) if name in arrays else None


def read_words(arrays: Mapping[str, NDArray[Any]], name: str) -> tuple[str, ...]:
    """An optional word list (`[1, n]`); empty strings are dropped, absent gives ()."""
    if name not in arrays:
        return ()
    return tuple(word for word in (_decode(v, name) for v in arrays[name].reshape(-1)) if word)


def read_scalar(
    arrays: Mapping[str, NDArray[Any]], name: str, kind: Callable[[Any], T], default: D
) -> T | D:
    """An optional scalar input converted with `kind` (int, float or bool); `default` when it
    is absent. The tensor must hold exactly one element."""
    if name not in arrays:
        return default
    values = arrays[name].reshape(-1)
    if values.size != 1:
        raise FacadeError(FIELD_VIOLATION, f"{name} must hold one element, got {values.size}")
    return kind(values[0].item())


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated generation request of the facade."""

    prompt: str
    max_tokens: int
    stream: bool = False
    end_id: int | None = None
    pad_id: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop_words: tuple[str, ...] = ()
    bad_words: tuple[str, ...] = ()
    exclude_input_in_output: bool = False
    """Absent means false, as in TensorRT-LLM: the prompt is prepended to a non-streamed
    output. InferenceService always sends true."""
    guide: Guide | None = None
    """What the output must match (`guided_decoding_guide_type` and `guided_decoding_guide`);
    None: unconstrained."""


def read_generation_request(arrays: Mapping[str, NDArray[Any]]) -> GenerationRequest:
    """Reads and validates the facade inputs of one request (see the README's input table);
    raises `FacadeError(FIELD_VIOLATION, ...)` naming the first bad field."""
    prompt = read_text(arrays, TEXT_INPUT)
    max_tokens = read_scalar(arrays, MAX_TOKENS, int, None)
    if max_tokens is None:
        raise FacadeError(FIELD_VIOLATION, f"{MAX_TOKENS} is required")
    if max_tokens < 1:
        raise FacadeError(FIELD_VIOLATION, f"{MAX_TOKENS} must be >= 1, got {max_tokens}")
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        stream=read_scalar(arrays, STREAM, bool, False),
        end_id=read_scalar(arrays, END_ID, int, None),
        pad_id=read_scalar(arrays, PAD_ID, int, None),
        temperature=read_scalar(arrays, TEMPERATURE, float, 0.0),
        top_k=read_scalar(arrays, TOP_K, int, 0),
        top_p=read_scalar(arrays, TOP_P, float, 1.0),
        repetition_penalty=read_scalar(arrays, REPETITION_PENALTY, float, 1.0),
        presence_penalty=read_scalar(arrays, PRESENCE_PENALTY, float, 0.0),
        frequency_penalty=read_scalar(arrays, FREQUENCY_PENALTY, float, 0.0),
        seed=read_scalar(arrays, SEED, int, None),
        stop_words=read_words(arrays, STOP_WORDS),
        bad_words=read_words(arrays, BAD_WORDS),
        exclude_input_in_output=read_scalar(arrays, EXCLUDE_INPUT_IN_OUTPUT, bool, False),
        guide=read_request_guide(arrays),
    )
    _check_sampling(request)
    return request


def read_request_guide(arrays: Mapping[str, NDArray[Any]]) -> Guide | None:
    """The guided decoding inputs as a `Guide` (None: unconstrained); a malformed pair is a
    `FacadeError(FIELD_VIOLATION, "<input>: <why>")`. Whether the guide compiles is the
    engine's to say."""
    try:
        return guides.read_guide(
            read_optional_text(arrays, GUIDED_DECODING_GUIDE_TYPE),
            read_optional_text(arrays, GUIDED_DECODING_GUIDE),
        )
    except GuideError as error:
        raise FacadeError(FIELD_VIOLATION, str(error)) from None


def _check_sampling(request: GenerationRequest) -> None:
    checks = (
        (TEMPERATURE, request.temperature >= 0, ">= 0", request.temperature),
        (TOP_K, request.top_k >= 0, ">= 0", request.top_k),
        (TOP_P, 0 < request.top_p <= 1, "in (0, 1]", request.top_p),
        (REPETITION_PENALTY, request.repetition_penalty > 0, "> 0", request.repetition_penalty),
    )
    for name, ok, rule, value in checks:
        if not ok:
            raise FacadeError(FIELD_VIOLATION, f"{name} must be {rule}, got {value:g}")


# --------------------------------------------------------------------------------------------
# Stop words
# --------------------------------------------------------------------------------------------


# gpu/inflight_batcher_llm/ensemble/1/decoding.py has a copy of this class and _overlap;
# tests/unit/triton_models/test_stop_word_filter_copies.py keeps them equal.
class StopWordFilter:
    """Text-level stop words for streamed text: `push` returns the part of the new text that can
    no longer become the start of a stop word, holding back a possible partial match, and says
    when a stop word appeared (the stop word and what follows are never returned)."""

    def __init__(self, stop_words: Sequence[str]) -> None:
        self._words = tuple(word for word in stop_words if word)
        self._held = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """Adds generated text; returns (text to emit now, whether a stop word was reached)."""
        if not self._words:
            return delta, False
        text = self._held + delta
        hits = [index for index in (text.find(word) for word in self._words) if index >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = max((_overlap(text, word) for word in self._words), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The text held back; call once generation ended without a stop word."""
        held, self._held = self._held, ""
        return held


def _overlap(text: str, word: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `word`."""
    for size in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:size]):
            return size
    return 0


# --------------------------------------------------------------------------------------------
# Building outputs
# --------------------------------------------------------------------------------------------


def generation_outputs(
    pb_utils: Any,
    text: str,
    *,
    num_input_tokens: int,
    num_output_tokens: int,
    finish_reason: str = "",
) -> list[Any]:
    """The four output tensors of one generation response, each of shape [1, 1]."""
    return [
        pb_utils.Tensor(TEXT_OUTPUT, np.array([[text.encode("utf-8")]], dtype=np.object_)),
        pb_utils.Tensor(NUM_INPUT_TOKENS, np.array([[num_input_tokens]], dtype=np.int32)),
        pb_utils.Tensor(NUM_OUTPUT_TOKENS, np.array([[num_output_tokens]], dtype=np.int32)),
        pb_utils.Tensor(FINISH_REASON, np.array([[finish_reason.encode()]], dtype=np.object_)),
    ]


def generation_response(
    pb_utils: Any,
    text: str,
    *,
    num_input_tokens: int,
    num_output_tokens: int,
    finish_reason: str = "",
) -> Any:
    """One generation `InferenceResponse` (see `generation_outputs`)."""
    return pb_utils.InferenceResponse(
        output_tensors=generation_outputs(
            pb_utils,
            text,
            num_input_tokens=num_input_tokens,
            num_output_tokens=num_output_tokens,
            finish_reason=finish_reason,
        )
    )


def embedding_outputs(
    pb_utils: Any, embeddings: NDArray[Any], token_counts: Sequence[int]
) -> list[Any]:
    """`embedding` FP32 [n, dim] and `num_input_tokens` INT32 [n, 1] for n texts."""
    return [
        pb_utils.Tensor(EMBEDDING, np.ascontiguousarray(embeddings, dtype=np.float32)),
        pb_utils.Tensor(NUM_INPUT_TOKENS, np.asarray(token_counts, dtype=np.int32).reshape(-1, 1)),
    ]
