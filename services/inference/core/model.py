"""What InferenceService serves: models, their backends, and the requests they take."""

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Task(StrEnum):
    """What a served model produces."""

    GENERATION = "generation"
    EMBEDDING = "embedding"


class InputKind(StrEnum):
    """A kind of input a generation model takes (`genai.inference.v1.InputKind`)."""

    TEXT = "text"
    """Raw prompt text, sent as it is."""
    CHAT = "chat"
    """A conversation, rendered with the model's chat template (or by the backend)."""


class FinishReason(StrEnum):
    """Why generation ended; the values are the facade's `finish_reason` strings."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_words"
    CONTENT_FILTER = "content_filter"
    """The provider withheld the rest of the output by policy (OpenAI-compatible backends)."""
    CANCELLED = "cancelled"


class ModelState(StrEnum):
    """Whether a backend can take requests for a model."""

    READY = "ready"
    LOADING = "loading"
    UNAVAILABLE = "unavailable"


class BackendKind(StrEnum):
    """What serves a backend: the protocol InferenceService speaks to it."""

    TRITON = "triton"
    """NVIDIA Triton's KServe v2 gRPC, against the generation facade."""
    OPENAI_COMPATIBLE = "openai_compatible"
    """An OpenAI-compatible HTTP endpoint (vLLM, TGI, trtllm-serve, hosted providers) with
    streaming chat completions. It applies the model's chat template itself."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One endpoint serving a model."""

    id: str
    """Unique id, e.g. `triton-0/smollm2`."""
    endpoint: str
    """`host:port` of the Triton server; the base URL (`http://host:8000/v1`) of an
    OpenAI-compatible endpoint."""
    backend_model: str
    """The model's name on the backend (the Triton facade model, the provider's model id)."""
    max_in_flight: int
    """Requests InferenceService lets run at once on this backend; more are refused."""
    kind: BackendKind = BackendKind.TRITON
    """The protocol of the backend; the dispatching backend picks the adapter by it."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model InferenceService serves, under its catalog name."""

    name: str
    task: Task
    backends: tuple[BackendSpec, ...]
    max_context_tokens: int
    max_output_tokens: int
    default_max_tokens: int
    streaming: bool = True
    guided_decoding: bool = False
    """Whether its engines constrain decoding to an `OutputConstraint`; requests with one for
    a model without are refused, never served unconstrained."""
    has_chat_template: bool = True
    """Whether InferenceService holds the model's chat template (its `chat_template`
    setting), which chat input on a Triton backend needs. False: on Triton the model takes
    text only (a base model); OpenAI-compatible backends apply their own template."""

    def input_kinds(self, backend: BackendSpec) -> tuple[InputKind, ...]:
        """What the model takes on `backend`: text always, chat where a template applies."""
        if self.task is Task.GENERATION and (
            self.has_chat_template or backend.kind is BackendKind.OPENAI_COMPATIBLE
        ):
            return (InputKind.TEXT, InputKind.CHAT)
        return (InputKind.TEXT,)


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of a conversation to complete."""

    role: str
    """`system`, `user` or `assistant`."""
    content: str


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding parameters; None means the model's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()


class ConstraintKind(StrEnum):
    """The language an output is constrained to; the values are the facade's
    `guided_decoding_guide_type` strings."""

    JSON = "json"
    """Any JSON (the engine's built-in grammar); no guide."""
    JSON_SCHEMA = "json_schema"
    REGEX = "regex"
    EBNF_GRAMMAR = "ebnf_grammar"


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """What guided decoding keeps the output to. `kind` None is a constraint that names no
    kind (refused by validation)."""

    kind: ConstraintKind | None
    schema: Mapping[str, Any] | None = None
    """JSON_SCHEMA: the schema, integral numbers as ints."""
    text: str = ""
    """REGEX: the expression; EBNF_GRAMMAR: the grammar."""

    @property
    def guide(self) -> str:
        """The engine's guide: the schema as compact JSON, the expression or the grammar;
        empty for JSON."""
        if self.kind is ConstraintKind.JSON_SCHEMA:
            return json.dumps(self.schema, separators=(",", ":"), ensure_ascii=False)
        return self.text


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A caller's request, before validation. Exactly one of `text` and `messages` is set."""

    model: str
    text: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    backend_id: str = ""
    request_id: str = ""
    constraint: OutputConstraint | None = None
    """None: unconstrained decoding."""


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """What a backend is asked to generate: the final prompt text and resolved limits."""

    prompt: str
    """The prompt text: the caller's text, or the conversation rendered with the model's chat
    template; empty when `messages` is set."""
    max_tokens: int
    sampling: Sampling
    request_id: str
    stream: bool
    timeout: float | None
    """Seconds left of the caller's deadline, passed on to the backend."""
    messages: tuple[ChatTurn, ...] | None = None
    """The conversation as the caller sent it, for backends that apply the chat template
    themselves (OpenAI-compatible ones); None for text input and for Triton backends."""
    constraint: OutputConstraint | None = None
    """The validated constraint decoding must follow; None: unconstrained."""


@dataclass(frozen=True, slots=True)
class BackendChunk:
    """One response of a backend: new text and the counts so far."""

    text: str
    input_tokens: int
    output_tokens: int
    """Tokens generated so far, cumulative."""
    finish_reason: FinishReason | None
    """Set on the last chunk only."""
    counted: bool = True
    """Whether the counts are the backend's own (Triton's always are; an OpenAI-compatible
    provider's once it sent `usage`). False: `input_tokens` is 0 and `output_tokens` counts
    provider chunks, and InferenceService counts itself (`services.inference.core.usage`)."""


class GenerationBackend(Protocol):
    """A backend that generates text (Triton's facade, an OpenAI-compatible endpoint, ...).

    `generate` yields chunks until one carries a finish reason. Closing the iterator early,
    or cancelling the task consuming it, cancels the backend request.
    """

    def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        """Streams the generation of `request` on `spec`."""
        ...

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> "Embeddings":
        """Embeds `texts` with the embedding model on `spec`."""
        ...

    async def model_state(self, spec: BackendSpec) -> ModelState:
        """Asks the backend whether the model is ready."""
        ...


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors for a list of texts, in order."""

    vectors: tuple[tuple[float, ...], ...]
    input_tokens: int
