"""OpenAI request bodies (and the `X-GenAI-*` headers) to the gateway's completion request.

`chat_completion` and `text_completion` return a `Completion`: the `StreamCompleteRequest` the
engine runs, the `InlinePrompt` when the body names a catalog model (no registry version:
the messages are the whole conversation, or the prompt text is sent as raw text), the output
schema of `response_format`, and how to answer (streamed, with a usage chunk).

Model addressing (catalog names never contain `:`):

- `smollm2-135m-instruct`: that catalog model, pinned (`routing.model`), with an inline
  prompt;
- `prompt:NAME` serves NAME's `production` label, `prompt:NAME@LABEL` that label, and
  `prompt:NAME@7` version 7. The chat messages are appended after the version's rendered
  turns; `genai.input_variable` binds the last user message (or, on /v1/completions, the
  prompt text, to `text` by default) to a template variable instead.

Parameters OpenAI has and the platform cannot honour are refused with 400 naming them, but
only when they differ from OpenAI's default (`n: 1`, `logprobs: false`, `tools: []` pass).
The converted request then goes through the contract-wide request guard, as a gRPC request
does in the validation layer; everything else (ranges, limits, variables) the engine checks,
and `services.gateway.openai.errors.param_of` names the body's parameter in its errors.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from genai.common.v1 import chat_pb2, generation_pb2, routing_pb2
from google.protobuf import json_format
from pydantic import BaseModel, ValidationError

from services.common.errors import FieldViolation, InvalidArgument
from services.common.request_guard import request_violations
from services.common.validation import validate
from services.gateway.inline import InlinePrompt
from services.gateway.openai.errors import WireError, invalid, param_of, unsupported
from services.gateway.openai.schema import (
    MAX_EMBEDDING_INPUTS,
    MAX_METADATA,
    MAX_STOP,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    GenAIExtension,
    Message,
)
from services.gateway.outcome import Request

PROMPT_PREFIX: Final = "prompt:"
DEFAULT_TEXT_VARIABLE: Final = "text"
"""The variable /v1/completions binds its prompt text to on a `prompt:` model (the sample
`complete` prompt's)."""
MAX_IDEMPOTENCY_KEY_CHARS: Final = 128

ROUTING_POLICY_HEADER: Final = "x-genai-routing-policy"
EXPERIMENT_HEADER: Final = "x-genai-experiment"
USER_HEADER: Final = "x-genai-user"
SESSION_HEADER: Final = "x-genai-session"
IDEMPOTENCY_HEADER: Final = "idempotency-key"

_INT32_MAX: Final = 2**31 - 1
_UINT64_MAX: Final = 2**64 - 1
_POLICIES: Final[Mapping[str, int]] = {
    "cost": routing_pb2.ROUTING_POLICY_COST,
    "latency": routing_pb2.ROUTING_POLICY_LATENCY,
    "quality": routing_pb2.ROUTING_POLICY_QUALITY,
    "weighted": routing_pb2.ROUTING_POLICY_WEIGHTED,
    "quality_floor": routing_pb2.ROUTING_POLICY_QUALITY_FLOOR,
}
_ROLES: Final[Mapping[str, int]] = {
    "system": chat_pb2.CHAT_ROLE_SYSTEM,
    "developer": chat_pb2.CHAT_ROLE_SYSTEM,
    "user": chat_pb2.CHAT_ROLE_USER,
    "assistant": chat_pb2.CHAT_ROLE_ASSISTANT,
}
_UNSERVED_FIELDS: Final = (
    "name",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "audio",
    "refusal",
)
_UNION_TAG: Final = re.compile(r"[a-z][a-z0-9_-]*\[.*\]\Z|(str|int|float|bool|none)\Z|[A-Z]")
_Body = TypeVar("_Body", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ModelAddress:
    """What `model` names: a catalog model, or a prompt version by label or number."""

    catalog: str = ""
    """The catalog model (empty: a prompt)."""
    prompt: str = ""
    label: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    """What the engine runs for one completion request, and how to answer it."""

    request: Request
    inline: InlinePrompt | None
    """Set for a catalog model: no registry version."""
    output_schema: Mapping[str, Any] | None
    """From `response_format` (None: free text)."""
    stream: bool
    include_usage: bool
    """`stream_options.include_usage`: a last chunk with the usage."""


@dataclass(frozen=True, slots=True)
class EmbeddingInputs:
    """An embeddings request in the platform's terms."""

    model: str
    inputs: tuple[str, ...]
    base64: bool
    """`encoding_format: base64`: packed little-endian float32."""
    dimensions: int | None
    """The dimensions the client expects (None: the model's)."""


def parse(body_type: type[_Body], raw: bytes) -> _Body:
    """The request body as `body_type`; a `WireError` (400) naming the first parameter at
    fault when it is not JSON or does not fit."""
    try:
        return body_type.model_validate_json(raw)
    except ValidationError as error:
        raise _wire_error(error) from None


def model_address(model: str) -> ModelAddress:
    """Parses `model` (see the module docstring); 400 on a malformed `prompt:` address."""
    if not model.startswith(PROMPT_PREFIX):
        if not model:
            raise invalid("model", "must name a catalog model or prompt:NAME")
        return ModelAddress(catalog=model)
    name, at, selector = model[len(PROMPT_PREFIX) :].partition("@")
    if not name:
        raise invalid("model", "prompt:NAME needs the prompt's name")
    if not at:
        return ModelAddress(prompt=name)
    if not selector:
        raise invalid("model", "prompt:NAME@ needs a label or a version number after @")
    if selector.isdigit():
        version = int(selector)
        if not 1 <= version <= _INT32_MAX:
            raise invalid("model", f"version {selector} is not a version number (>= 1)")
        return ModelAddress(prompt=name, version=version)
    return ModelAddress(prompt=name, label=selector)


def chat_completion(body: ChatCompletionRequest, headers: Mapping[str, str]) -> Completion:
    """The completion a `POST /v1/chat/completions` body asks for."""
    _refuse_chat_extras(body)
    address = model_address(body.model)
    genai = body.genai or GenAIExtension()
    request = _addressed(address, genai, headers)
    messages = [_message(index, message) for index, message in enumerate(body.messages)]
    if address.catalog:
        if not messages:
            raise invalid("messages", "a catalog model needs at least one message")
        if genai.input_variable is not None:
            raise unsupported("genai.input_variable", "only a prompt: model has variables")
    elif genai.input_variable is not None:
        last = _last_user(messages)
        if last is None:
            raise invalid("messages", "genai.input_variable binds the last user message: none")
        _bind(request, genai, genai.input_variable, messages.pop(last).content)
    request.messages.extend(messages)
    both = body.max_tokens is not None and body.max_completion_tokens is not None
    if both and body.max_tokens != body.max_completion_tokens:
        raise invalid("max_completion_tokens", "differs from max_tokens: set one of them")
    max_tokens = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
    _sampling(request.parameters, body, genai, max_tokens)
    _identity(request, body.user, genai, headers, body.metadata)
    stream = _stream(body)
    return _checked(
        Completion(
            request=request,
            inline=InlinePrompt() if address.catalog else None,
            output_schema=_output_schema(body),
            stream=stream,
            include_usage=stream
            and bool(body.stream_options and body.stream_options.include_usage),
        )
    )


def text_completion(body: CompletionRequest, headers: Mapping[str, str]) -> Completion:
    """The completion a `POST /v1/completions` body asks for: raw text in, text out."""
    _refuse_text_extras(body)
    address = model_address(body.model)
    genai = body.genai or GenAIExtension()
    text = _prompt_text(body.prompt)
    request = _addressed(address, genai, headers)
    if address.catalog:
        if genai.input_variable is not None:
            raise unsupported("genai.input_variable", "only a prompt: model has variables")
        if not text:
            raise invalid("prompt", "must not be empty")
    else:
        _bind(request, genai, genai.input_variable or DEFAULT_TEXT_VARIABLE, text)
    _sampling(request.parameters, body, genai, body.max_tokens)
    _identity(request, body.user, genai, headers, None)
    stream = _stream(body)
    return _checked(
        Completion(
            request=request,
            inline=InlinePrompt(text=text) if address.catalog else None,
            output_schema=None,
            stream=stream,
            include_usage=stream
            and bool(body.stream_options and body.stream_options.include_usage),
        )
    )


def embedding_inputs(body: EmbeddingsRequest) -> EmbeddingInputs:
    """The texts a `POST /v1/embeddings` body asks to embed (1 to 256 strings; token ids are
    refused)."""
    if body.model.startswith(PROMPT_PREFIX):
        raise invalid("model", "embeddings need a catalog model, not a prompt")
    if isinstance(body.input, str):
        inputs: tuple[str, ...] = (body.input,)
    else:
        if not body.input:
            raise invalid("input", "needs at least one text")
        if len(body.input) > MAX_EMBEDDING_INPUTS:
            raise invalid("input", f"at most {MAX_EMBEDDING_INPUTS} texts, not {len(body.input)}")
        for index, item in enumerate(body.input):
            if not isinstance(item, str):
                raise unsupported(f"input[{index}]", "token ids are not supported: send text")
        inputs = tuple(body.input)
    if body.dimensions is not None and body.dimensions < 1:
        raise invalid("dimensions", "must be at least 1")
    return EmbeddingInputs(
        model=body.model,
        inputs=inputs,
        base64=body.encoding_format == "base64",
        dimensions=body.dimensions,
    )


def idempotency_key(headers: Mapping[str, str]) -> str:
    """The `Idempotency-Key` header (empty: none); at most 128 characters."""
    key = headers.get(IDEMPOTENCY_HEADER, "")
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise WireError(
            f"the Idempotency-Key header has at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )
    return key


# ------------------------------------------------------------------------------ the parts


def _addressed(address: ModelAddress, genai: GenAIExtension, headers: Mapping[str, str]) -> Request:
    """A request for the addressed model or prompt version, with the routing, the experiment
    and the idempotency key."""
    request = Request(request_id=idempotency_key(headers))
    routing = _routing(genai, headers)
    experiment = (
        genai.experiment if genai.experiment is not None else headers.get(EXPERIMENT_HEADER)
    )
    if address.catalog:
        if routing.model and routing.model != address.catalog:
            raise invalid("genai.routing.model", f"differs from model {address.catalog!r}")
        routing.model = address.catalog
        if genai.variables is not None:
            raise unsupported("genai.variables", "only a prompt: model has variables")
        if experiment:
            raise unsupported("genai.experiment", "experiments serve prompt: models only")
    else:
        request.prompt = address.prompt
        if experiment:
            if address.label or address.version:
                raise invalid(
                    "genai.experiment",
                    "an experiment chooses the version: address the model as prompt:NAME",
                )
            request.experiment = experiment
        elif address.version:
            request.version = address.version
        elif address.label:
            request.label = address.label
        if genai.variables is not None:
            try:
                request.variables.update(genai.variables)
            except (ValueError, TypeError) as error:
                raise invalid("genai.variables", f"not JSON values: {error}") from None
    if routing.ByteSize():
        request.routing.CopyFrom(routing)
    return request


def _routing(genai: GenAIExtension, headers: Mapping[str, str]) -> routing_pb2.RoutingPreferences:
    routing = routing_pb2.RoutingPreferences()
    if genai.routing is not None:
        try:
            json_format.ParseDict(genai.routing, routing)
        except json_format.ParseError as error:
            raise invalid("genai.routing", str(error)) from None
    policy = headers.get(ROUTING_POLICY_HEADER)
    if policy is not None and not routing.policy:
        number = _POLICIES.get(policy.strip().lower())
        if number is None:
            raise WireError(
                f"X-GenAI-Routing-Policy: {policy[:64]!r} is none of {', '.join(_POLICIES)}"
            )
        routing.policy = number  # type: ignore[assignment]  # an enum number
    return routing


def _message(index: int, message: Message) -> chat_pb2.ChatMessage:
    path = f"messages[{index}]"
    role = _ROLES.get(message.role)
    if role is None:
        if message.role in ("tool", "function"):
            raise unsupported(
                f"{path}.role", f"role {message.role!r}: the platform serves no tools"
            )
        raise invalid(f"{path}.role", f"{message.role[:32]!r} is none of {', '.join(_ROLES)}")
    for name in _UNSERVED_FIELDS:
        if getattr(message, name) is not None:
            raise unsupported(f"{path}.{name}", "is not supported")
    content = message.content
    if content is None:
        raise invalid(f"{path}.content", "is required")
    if not isinstance(content, str):
        texts: list[str] = []
        for part_index, part in enumerate(content):
            part_path = f"{path}.content[{part_index}]"
            if part.type != "text":
                raise unsupported(
                    f"{part_path}.type", f"only text parts are served, not {part.type[:32]!r}"
                )
            if part.model_extra:
                raise unsupported(f"{part_path}.{next(iter(part.model_extra))}", "is not supported")
            if part.text is None:
                raise invalid(f"{part_path}.text", "is required")
            texts.append(part.text)
        content = "\n".join(texts)
    return chat_pb2.ChatMessage(role=role, content=content)  # type: ignore[arg-type]


def _last_user(messages: Sequence[chat_pb2.ChatMessage]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == chat_pb2.CHAT_ROLE_USER:
            return index
    return None


def _bind(request: Request, genai: GenAIExtension, variable: str, text: str) -> None:
    if not variable:
        raise invalid("genai.input_variable", "must name a variable")
    if genai.variables is not None and variable in genai.variables:
        raise invalid(
            "genai.input_variable", f"variable {variable!r} is set in genai.variables already"
        )
    request.variables[variable] = text


def _prompt_text(prompt: str | list[Any]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if prompt and all(isinstance(item, str) for item in prompt):
        raise unsupported("prompt", "one prompt per request: send a string or a one-string list")
    if not prompt:
        raise invalid("prompt", "must not be empty")
    raise unsupported("prompt", "token ids are not supported: send text")


def _sampling(
    parameters: generation_pb2.SamplingParameters,
    body: ChatCompletionRequest | CompletionRequest,
    genai: GenAIExtension,
    max_tokens: int | None,
) -> None:
    if max_tokens is not None:
        if not 1 <= max_tokens <= _INT32_MAX:
            raise invalid("max_tokens", "must be at least 1")
        parameters.max_tokens = max_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(parameters, name, value)
    if body.seed is not None:
        if not 0 <= body.seed <= _UINT64_MAX:
            raise unsupported("seed", "must be in [0, 2^64)")
        parameters.seed = body.seed
    if body.stop is not None:
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        if len(stop) > MAX_STOP:
            raise invalid("stop", f"at most {MAX_STOP} stop sequences")
        parameters.stop.extend(stop)
    if genai.top_k is not None:
        if not 0 <= genai.top_k <= _INT32_MAX:
            raise invalid("genai.top_k", "must be in [0, 1000]")
        parameters.top_k = genai.top_k
    if genai.repetition_penalty is not None:
        parameters.repetition_penalty = genai.repetition_penalty


def _identity(
    request: Request,
    user: str | None,
    genai: GenAIExtension,
    headers: Mapping[str, str],
    metadata: Mapping[str, str] | None,
) -> None:
    """The end user, the session, and the request-log tags (`metadata` under `genai.tags`)."""
    if genai.user_id is not None:
        request.user_id = genai.user_id
    elif user is not None:
        request.user_id = user
    else:
        request.user_id = headers.get(USER_HEADER, "")
    if genai.session_id is not None:
        request.session_id = genai.session_id
    else:
        request.session_id = headers.get(SESSION_HEADER, "")
    if metadata is not None and len(metadata) > MAX_METADATA:
        raise invalid("metadata", f"at most {MAX_METADATA} pairs")
    tags = {**(metadata or {}), **(genai.tags or {})}
    if len(tags) > MAX_METADATA:
        raise invalid("metadata", f"at most {MAX_METADATA} tags with genai.tags")
    request.tags.update(tags)


def _stream(body: ChatCompletionRequest | CompletionRequest) -> bool:
    if body.stream_options is not None and not body.stream:
        raise invalid("stream_options", "is only allowed with stream: true")
    return bool(body.stream)


def _output_schema(body: ChatCompletionRequest) -> Mapping[str, Any] | None:
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        if response_format is not None and response_format.json_schema is not None:
            raise invalid("response_format.json_schema", "needs type json_schema")
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    json_schema = response_format.json_schema
    if json_schema is None:
        raise invalid("response_format.json_schema", "is required with type json_schema")
    if json_schema.schema_ is None:
        raise invalid("response_format.json_schema.schema", "is required")
    return json_schema.schema_


def _checked(completion: Completion) -> Completion:
    """Runs the contract-wide request guard over the converted request (NaN and infinite
    numbers, Struct depth), naming the body's parameters."""
    try:
        validate(request_violations, completion.request)
    except InvalidArgument as error:
        first: FieldViolation = error.violations[0]
        raise invalid(param_of(first.field) or first.field, first.description) from None
    return completion


# ------------------------------------------------------------------------------ refusals


def _refuse_chat_extras(body: ChatCompletionRequest) -> None:
    _refuse_common(body)
    if body.tools:
        raise unsupported("tools", "the catalog has no model with tool calling")
    if body.functions:
        raise unsupported("functions", "the catalog has no model with tool calling")
    if body.tool_choice not in (None, "none", "auto"):
        raise unsupported("tool_choice", "the catalog has no model with tool calling")
    if body.function_call not in (None, "none", "auto"):
        raise unsupported("function_call", "the catalog has no model with tool calling")
    if body.logprobs:
        raise unsupported("logprobs", "log probabilities are not served")
    if body.top_logprobs:
        raise unsupported("top_logprobs", "log probabilities are not served")
    if body.audio is not None:
        raise unsupported("audio", "only text output is served")
    if body.modalities is not None and body.modalities != ["text"]:
        raise unsupported("modalities", "only text output is served")
    for name in ("prediction", "reasoning_effort", "web_search_options"):
        if getattr(body, name) is not None:
            raise unsupported(name, "is not supported")
    if body.service_tier not in (None, "auto", "default"):
        raise unsupported("service_tier", "only auto and default are served")


def _refuse_text_extras(body: CompletionRequest) -> None:
    _refuse_common(body)
    if body.echo:
        raise unsupported("echo", "is not supported")
    if body.suffix:
        raise unsupported("suffix", "is not supported")
    if body.best_of is not None and body.best_of != 1:
        raise unsupported("best_of", "only best_of=1 is served")
    if body.logprobs is not None:
        raise unsupported("logprobs", "log probabilities are not served")


def _refuse_common(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.n is not None and body.n != 1:
        raise unsupported("n", "only n=1 is served: one choice per request")
    if body.logit_bias:
        raise unsupported("logit_bias", "is not supported")


# ------------------------------------------------------------------------------ body errors


def _wire_error(error: ValidationError) -> WireError:
    """The first error of a body that did not validate, in OpenAI's words."""
    details = error.errors(include_url=False, include_context=False, include_input=False)
    first = details[0]
    kind = first["type"]
    if kind == "json_invalid":
        return WireError(
            "We could not parse the JSON body of your request: it is not valid JSON.",
            code="invalid_json",
        )
    path = _path(first["loc"])
    if not path:
        return WireError("The request body must be a JSON object.", code="invalid_json")
    if kind == "extra_forbidden":
        return WireError(
            f"Unrecognized request argument supplied: {path}",
            param=path,
            code="unknown_parameter",
        )
    if kind == "missing":
        return WireError(
            f"Missing required parameter: '{path}'.", param=path, code="missing_required_parameter"
        )
    messages = [d["msg"] for d in details if _path(d["loc"]) == path]
    return WireError(
        f"Invalid value for '{path}': " + "; or ".join(dict.fromkeys(messages)),
        param=path,
        code="invalid_type" if kind.endswith("_type") else "invalid_value",
    )


def _path(loc: Sequence[int | str]) -> str:
    """`('messages', 2, 'content', 'list[TextPart]', 0)` as `messages[2].content[0]`: pydantic
    puts the union member it tried into the location."""
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif _UNION_TAG.match(item):
            continue
        else:
            path += f".{item}" if path else item
    return path
