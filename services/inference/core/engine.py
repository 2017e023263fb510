"""InferenceService's core: validates requests, picks a backend, admits within its bound,
renders chat input (or passes it on to backends that apply their own template), and turns
backend chunks into one start, deltas and one final, counting the tokens itself where the
backend reports none (see `services.inference.core.usage`)."""

import json
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from services.common import reasons
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.inference.core.model import (
    BackendKind,
    BackendRequest,
    BackendSpec,
    ChatTurn,
    ConstraintKind,
    Embeddings,
    FinishReason,
    GenerationBackend,
    GenerationRequest,
    InputKind,
    ModelSpec,
    ModelState,
    OutputConstraint,
    Task,
)
from services.inference.core.usage import EstimateCounter, TokenCounter, UsageSource

MAX_STOP_SEQUENCES = 16
MAX_STOP_BYTES = 256
MAX_REQUEST_ID = 128
MAX_EMBED_INPUTS = 256
CHAT_ROLES = ("system", "user", "assistant")
MAX_GUIDE_BYTES = 64 * 1024
"""The largest JSON Schema (as compact JSON), regular expression or grammar of a constraint."""
OVERLOADED_RETRY_AFTER = 0.5
"""Seconds a caller refused for load should wait before retrying."""


class ChatTemplates(Protocol):
    """Renders a conversation with a model's own chat template."""

    def render(self, model: str, messages: Sequence[ChatTurn]) -> str:
        """Returns the prompt text, ending with the assistant's turn opener."""
        ...


@dataclass(frozen=True, slots=True)
class Started:
    """First event of a stream: where the request runs."""

    model: str
    backend_id: str
    input_tokens: int
    input_source: UsageSource = UsageSource.PROVIDER
    """Who counted `input_tokens`."""


@dataclass(frozen=True, slots=True)
class Delta:
    """New text and the number of tokens it covers."""

    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class Finished:
    """Last event of a successful stream."""

    model: str
    backend_id: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    first_token_seconds: float
    total_seconds: float
    constrained: bool = False
    """Whether decoding followed the request's constraint."""
    usage_source: UsageSource = UsageSource.PROVIDER
    """Who counted `input_tokens` and `output_tokens` (the least exact of the two)."""


Event = Started | Delta | Finished


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """A model on one of its backends, as InferenceService sees it now."""

    model: ModelSpec
    backend: BackendSpec
    state: ModelState
    in_flight: int


_ESTIMATE: TokenCounter = EstimateCounter()


class InferenceEngine:
    """Serves the configured models through their backends. `counters` count the tokens of a
    model's requests on backends that report no usage (by model name; `EstimateCounter` for
    a model without one)."""

    def __init__(
        self,
        *,
        models: Sequence[ModelSpec],
        backend: GenerationBackend,
        chat_templates: ChatTemplates,
        counters: Mapping[str, TokenCounter] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._models: dict[str, ModelSpec] = {m.name: m for m in models}
        self._backend = backend
        self._chat = chat_templates
        self._counters = dict(counters or {})
        self._clock = clock
        self._in_flight: dict[str, int] = {b.id: 0 for m in models for b in m.backends}
        self._next: dict[str, int] = {}

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        """The served models by name."""
        return self._models

    async def stream(
        self, request: GenerationRequest, *, time_left: float | None = None
    ) -> AsyncGenerator[Event, None]:
        """Validates, admits and runs `request`: one `Started`, `Delta`s, one `Finished`.

        Raises `NotFound` for an unknown model, `InvalidArgument` for a bad request,
        `FailedPrecondition` for a constraint the model cannot apply and `ResourceExhausted`
        when the backend is at its in-flight bound; backend failures come as the backend's
        domain errors.
        """
        received = self._clock()
        model = self._model(request.model, Task.GENERATION)
        backend = self._pick_backend(model, request.backend_id)
        backend_request = self._backend_request(model, backend, request, time_left=time_left)
        # A backend that may report no usage: count the prompt now, so that the start (and a
        # stream that breaks before the end) has a count, and keep the output to count it.
        counter: TokenCounter | None = None
        counted_input = 0
        output: list[str] = []
        if backend.kind is BackendKind.OPENAI_COMPATIBLE:
            counter = self._counters.get(model.name, _ESTIMATE)
            counted_input = counter.count_input(_as_messages(backend_request))
        self._admit(backend)
        try:
            first_token: float | None = None
            started = False
            reported_tokens = 0  # backends count cumulatively; a delta covers the rest
            async with aclosing(self._backend.generate(backend, backend_request)) as chunks:
                async for chunk in chunks:
                    if not started:
                        started = True
                        if chunk.counted or counter is None:
                            yield Started(model.name, backend.id, chunk.input_tokens)
                        else:
                            yield Started(model.name, backend.id, counted_input, counter.source)
                    if chunk.text:
                        if first_token is None:
                            first_token = self._clock()
                        if counter is not None:
                            output.append(chunk.text)
                        if chunk.counted or counter is None:
                            tokens = max(chunk.output_tokens - reported_tokens, 1)
                            reported_tokens = chunk.output_tokens
                        else:
                            tokens = counter.count_text(chunk.text)
                            reported_tokens += tokens
                        yield Delta(chunk.text, tokens)
                    if chunk.finish_reason is not None:
                        now = self._clock()
                        input_tokens, output_tokens = chunk.input_tokens, chunk.output_tokens
                        source = UsageSource.PROVIDER
                        if counter is not None and not chunk.counted:
                            input_tokens, source = counted_input, counter.source
                            text = "".join(output)
                            output_tokens = counter.count_output(
                                text, _stopped_by(text, chunk.finish_reason, request.sampling.stop)
                            )
                        yield Finished(
                            model=model.name,
                            backend_id=backend.id,
                            finish_reason=chunk.finish_reason,
                            input_tokens=input_tokens,
                            output_tokens=output_tokens,
                            first_token_seconds=(first_token or now) - received,
                            total_seconds=now - received,
                            constrained=backend_request.constraint is not None,
                            usage_source=source,
                        )
                        return
        finally:
            self._in_flight[backend.id] -= 1

    async def embed(self, model_name: str, texts: Sequence[str]) -> tuple[ModelSpec, Embeddings]:
        """Embeds `texts` with an embedding model."""
        model = self._model(model_name, Task.EMBEDDING)
        violations = []
        if not texts:
            violations.append(FieldViolation("inputs", "at least one text is required"))
        if len(texts) > MAX_EMBED_INPUTS:
            violations.append(FieldViolation("inputs", f"at most {MAX_EMBED_INPUTS} texts"))
        for index, text in enumerate(texts):
            if not text.strip():
                violations.append(FieldViolation(f"inputs[{index}]", "must not be empty"))
        if violations:
            raise InvalidArgument(violations=violations)
        backend = self._pick_backend(model, "")
        self._admit(backend)
        try:
            return model, await self._backend.embed(backend, texts)
        finally:
            self._in_flight[backend.id] -= 1

    async def status(self, model_name: str = "", backend_id: str = "") -> list[BackendStatus]:
        """The state of every backend of `model_name` (all models when empty)."""
        if model_name:
            models = [self._model(model_name, None)]
        else:
            models = sorted(self._models.values(), key=lambda m: m.name)
        statuses = []
        for model in models:
            for backend in model.backends:
                if backend_id and backend.id != backend_id:
                    continue
                state = await self._backend.model_state(backend)
                statuses.append(BackendStatus(model, backend, state, self._in_flight[backend.id]))
        if backend_id and not statuses:
            raise NotFound(
                f"model {model_name!r} has no backend {backend_id!r}",
                reason=reasons.RESOURCE_NOT_FOUND,
                metadata={"model": model_name, "backend_id": backend_id},
            )
        return statuses

    def _model(self, name: str, task: Task | None) -> ModelSpec:
        if not name:
            raise InvalidArgument(violations=[FieldViolation("model", "is required")])
        model = self._models.get(name)
        if model is None:
            raise NotFound(
                f"no model named {name!r}; served: {', '.join(sorted(self._models))}",
                reason=reasons.MODEL_NOT_FOUND,
                metadata={"model": name},
            )
        if task is not None and model.task is not task:
            raise FailedPrecondition(
                f"model {name!r} is an {model.task.value} model, not a {task.value} model",
                metadata={"model": name, "task": model.task.value},
            )
        return model

    def _pick_backend(self, model: ModelSpec, backend_id: str) -> BackendSpec:
        if backend_id:
            for backend in model.backends:
                if backend.id == backend_id:
                    return backend
            raise NotFound(
                f"model {model.name!r} has no backend {backend_id!r}",
                reason=reasons.RESOURCE_NOT_FOUND,
                metadata={"model": model.name, "backend_id": backend_id},
            )
        # Least loaded, round robin among equals (the router does the health-aware choice).
        start = self._next.get(model.name, 0)
        self._next[model.name] = start + 1
        backends = (
            model.backends[start % len(model.backends) :]
            + model.backends[: start % len(model.backends)]
        )
        return min(backends, key=lambda b: self._in_flight[b.id] / b.max_in_flight)

    def _admit(self, backend: BackendSpec) -> None:
        if self._in_flight[backend.id] >= backend.max_in_flight:
            raise ResourceExhausted(
                f"backend {backend.id} is at its limit of {backend.max_in_flight} requests "
                "in flight",
                reason=reasons.BACKEND_OVERLOADED,
                retry_after=OVERLOADED_RETRY_AFTER,
                metadata={"backend_id": backend.id, "max_in_flight": str(backend.max_in_flight)},
            )
        self._in_flight[backend.id] += 1

    def _backend_request(
        self,
        model: ModelSpec,
        backend: BackendSpec,
        request: GenerationRequest,
        *,
        time_left: float | None,
    ) -> BackendRequest:
        violations = validate_generation(model, request)
        metadata: dict[str, str] = {}
        if request.messages is not None and InputKind.CHAT not in model.input_kinds(backend):
            violations.insert(0, _no_chat_template(model))
            metadata = {"model": model.name, "input_kinds": InputKind.TEXT.value}
        if violations:
            raise InvalidArgument(violations=violations, metadata=metadata)
        if request.constraint is not None and not model.guided_decoding:
            raise FailedPrecondition(
                f"model {model.name!r} does not support guided decoding, so it cannot follow "
                "the request's constraint (its InferenceService settings have guided_decoding: "
                "false); send the request without `constraint`, or to a model whose "
                "ServedModel.guided_decoding is true",
                metadata={"model": model.name, "field": "constraint"},
            )
        messages: tuple[ChatTurn, ...] | None = None
        if request.messages is not None and backend.kind is BackendKind.OPENAI_COMPATIBLE:
            # The provider applies the model's chat template itself: pass the turns on.
            prompt, messages = "", request.messages
        elif request.messages is not None:
            prompt = self._chat.render(model.name, request.messages)
        else:
            assert request.text is not None  # validated: exactly one input is set
            prompt = request.text
        sampling = request.sampling
        return BackendRequest(
            prompt=prompt,
            max_tokens=sampling.max_tokens or model.default_max_tokens,
            sampling=sampling,
            request_id=request.request_id,
            stream=True,
            timeout=time_left,
            messages=messages,
            constraint=request.constraint,
        )


def _stopped_by(text: str, finish: FinishReason, stop: Sequence[str]) -> FinishReason:
    """The finish reason to count an output by: STOP_SEQUENCE (no end-of-sequence token was
    generated) for an output that ends with one of the request's stop sequences, as some
    providers (`transformers serve`) stream the stop string and report `stop` as for the
    end-of-sequence token."""
    if finish is FinishReason.STOP and any(text.endswith(s) for s in stop):
        return FinishReason.STOP_SEQUENCE
    return finish


def _as_messages(request: BackendRequest) -> tuple[ChatTurn, ...]:
    """The conversation an OpenAI-compatible backend is sent: text input goes as one user
    message (see `services.inference.adapters.openai_compat`)."""
    if request.messages is not None:
        return request.messages
    return (ChatTurn("user", request.prompt),)


def _no_chat_template(model: ModelSpec) -> FieldViolation:
    return FieldViolation(
        "chat",
        f"model {model.name!r} has no chat template, so it takes `text` input only (raw "
        "prompt text, sent as it is): send the prompt as `text`, or chat to a model whose "
        "ServedModel.input_kinds lists INPUT_KIND_CHAT",
    )


def validate_generation(model: ModelSpec, request: GenerationRequest) -> list[FieldViolation]:
    """Every problem with `request` for `model`, as field violations."""
    violations: list[FieldViolation] = []
    add = violations.append
    if (request.text is None) == (request.messages is None):
        add(FieldViolation("input", "exactly one of text and chat is required"))
    elif request.text is not None and not request.text.strip():
        add(FieldViolation("text", "must not be empty"))
    elif request.messages is not None:
        if not request.messages:
            add(FieldViolation("chat.messages", "at least one message is required"))
        for index, turn in enumerate(request.messages):
            if turn.role not in CHAT_ROLES:
                add(FieldViolation(f"chat.messages[{index}].role", "must be set"))
            if not turn.content.strip():
                add(FieldViolation(f"chat.messages[{index}].content", "must not be empty"))
    s = request.sampling
    if s.max_tokens is not None and not 1 <= s.max_tokens <= model.max_output_tokens:
        add(
            FieldViolation(
                "parameters.max_tokens",
                f"must be in [1, {model.max_output_tokens}] for {model.name}",
            )
        )
    _check_range(add, "parameters.temperature", s.temperature, 0.0, 2.0)
    _check_range(add, "parameters.top_p", s.top_p, 0.0, 1.0, low_open=True)
    _check_range(add, "parameters.top_k", s.top_k, 0, 1000)
    _check_range(add, "parameters.repetition_penalty", s.repetition_penalty, 0.5, 2.0)
    _check_range(add, "parameters.presence_penalty", s.presence_penalty, -2.0, 2.0)
    _check_range(add, "parameters.frequency_penalty", s.frequency_penalty, -2.0, 2.0)
    if len(s.stop) > MAX_STOP_SEQUENCES:
        add(FieldViolation("parameters.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences"))
    for index, stop in enumerate(s.stop):
        if not 1 <= len(stop.encode()) <= MAX_STOP_BYTES:
            add(
                FieldViolation(
                    f"parameters.stop[{index}]", f"must be 1 to {MAX_STOP_BYTES} bytes of UTF-8"
                )
            )
    if len(request.request_id) > MAX_REQUEST_ID:
        add(FieldViolation("request_id", f"at most {MAX_REQUEST_ID} characters"))
    if request.constraint is not None:
        violations.extend(constraint_violations(request.constraint))
    return violations


def constraint_violations(constraint: OutputConstraint) -> list[FieldViolation]:
    """Every problem with a request's `constraint`, as field violations. What the engine
    alone can tell (a regular expression or grammar that does not compile, schema keywords it
    does not support) it reports itself, as INVALID_ARGUMENT too."""
    kind = constraint.kind
    if kind is None:
        return [
            FieldViolation(
                "constraint",
                "exactly one of json_object (true), json_schema, regex and ebnf_grammar is "
                "required; leave constraint unset for unconstrained decoding",
            )
        ]
    if kind is ConstraintKind.JSON:
        return []
    field = "constraint." + kind.value
    size = len(constraint.guide.encode())
    if kind is ConstraintKind.JSON_SCHEMA:
        if size > MAX_GUIDE_BYTES:
            return [
                FieldViolation(
                    field, f"at most {MAX_GUIDE_BYTES:,} bytes as compact JSON, not {size:,}"
                )
            ]
        problem = _schema_problem(constraint.guide)
        return [FieldViolation(field, problem)] if problem else []
    if not constraint.text.strip():
        return [FieldViolation(field, "must not be empty")]
    if size > MAX_GUIDE_BYTES:
        return [FieldViolation(field, f"at most {MAX_GUIDE_BYTES:,} bytes of UTF-8, not {size:,}")]
    return []


@lru_cache(maxsize=256)
def _schema_problem(schema: str) -> str:
    """Why `schema` (compact JSON) is not a valid JSON Schema (draft 2020-12); empty when it
    is. Cached: callers such as the gateway send the same few schemas again and again."""
    try:
        Draft202012Validator.check_schema(json.loads(schema))
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        return (
            f"is not a valid JSON Schema (draft 2020-12){f' at {where}' if where else ''}: "
            f"{error.message[:300]}"
        )
    return ""


def _check_range(
    add: Callable[[FieldViolation], None],
    field: str,
    value: float | None,
    low: float,
    high: float,
    *,
    low_open: bool = False,
) -> None:
    if value is None:
        return
    below = value <= low if low_open else value < low
    if math.isnan(value) or below or value > high:
        bracket = "(" if low_open else "["
        add(FieldViolation(field, f"must be in {bracket}{low:g}, {high:g}]"))
