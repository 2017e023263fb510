"""The request bodies of the OpenAI-compatible API, as pydantic models.

Every model forbids unknown keys: a parameter the platform does not know is refused (400
"Unrecognized request argument supplied: K", as OpenAI answers), never ignored. Parameters
that OpenAI has but the platform cannot honour are declared loosely here and refused by
`services.gateway.openai.convert` only when they differ from OpenAI's default, so that a
client library sending `n: 1` or `logprobs: false` explicitly still works.

Types are strict where a value could silently change meaning (`"1"` is not a number, `1` is
not a string); numbers keep pydantic's lax int/float coercion so that `temperature: 1` is a
float.

The `genai` object (`extra_body={"genai": {...}}` in the SDKs) carries what OpenAI's API has
no words for: prompt variables, routing preferences, the experiment and its unit, tags, and
sampling parameters beyond OpenAI's.
"""

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_STOP: Final = 16
"""Stop sequences at most (OpenAI allows 4; the platform 16)."""
MAX_METADATA: Final = 16
"""`metadata` pairs at most, as OpenAI."""
MAX_EMBEDDING_INPUTS: Final = 256
"""Texts one embeddings request may hold at most (InferenceService.Embed's limit)."""


class _Body(BaseModel):
    """A request object: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GenAIExtension(_Body):
    """`genai`: the platform's parameters beyond OpenAI's. The body wins over the headers."""

    variables: dict[str, Any] | None = None
    """Template variables of a `prompt:` model (the version's schema checks them)."""
    input_variable: StrictStr | None = None
    """Bind the last user message (chat), or the `prompt` text (/v1/completions), to this
    variable of a `prompt:` model, instead of appending it as a turn. /v1/completions binds
    `text` by default."""
    routing: dict[str, Any] | None = None
    """`RoutingPreferences` in proto JSON (`{"policy": "ROUTING_POLICY_COST"}`)."""
    experiment: StrictStr | None = None
    """Serve the variant of this experiment assigned to the request's unit (`prompt:NAME`
    without `@`)."""
    user_id: StrictStr | None = None
    """The end user (the unit of user-level experiments); `user` says the same."""
    session_id: StrictStr | None = None
    """The session (the unit of session-level experiments)."""
    tags: dict[StrictStr, StrictStr] | None = None
    """Request-log tags, merged over `metadata`."""
    top_k: StrictInt | None = None
    """Sample from the top_k most likely tokens."""
    repetition_penalty: float | None = None
    """Multiplicative penalty on tokens already generated."""


class TextPart(BaseModel):
    """One part of a message's content; only `text` parts are served."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: StrictStr
    text: StrictStr | None = None


class Message(BaseModel):
    """One chat message. Tool calls and names are declared to be refused with their path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: StrictStr
    content: StrictStr | list[TextPart] | None = None
    name: Any = None
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    refusal: Any = None
    audio: Any = None


class JsonSchemaFormat(_Body):
    """`response_format.json_schema`."""

    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Body):
    """`response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body):
    """`stream_options` (only with `stream: true`)."""

    include_usage: StrictBool | None = None


class _Sampling(_Body):
    """What both completion endpoints share."""

    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: StrictInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    n: StrictInt | None = None
    logit_bias: dict[str, Any] | None = None
    genai: GenAIExtension | None = None


class ChatCompletionRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[Message]
    max_completion_tokens: StrictInt | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    store: StrictBool | None = None
    # Refused unless they hold OpenAI's default:
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    parallel_tool_calls: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    audio: Any = None
    modalities: list[StrictStr] | None = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    service_tier: StrictStr | None = None


class CompletionRequest(_Sampling):
    """`POST /v1/completions` (legacy text completions)."""

    prompt: StrictStr | list[Any]
    # Refused unless they hold OpenAI's default:
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    logprobs: StrictInt | None = None


class EmbeddingsRequest(_Body):
    """`POST /v1/embeddings`."""

    model: StrictStr
    input: StrictStr | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
