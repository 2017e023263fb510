"""OpenAI-compatible backends: streaming chat completions over HTTP, as server-sent events.

One `POST {base}/chat/completions` with `"stream": true` per caller request (vLLM, TGI,
trtllm-serve and hosted providers speak it). The provider applies the model's chat template
itself, so chat input goes out as `messages`; text input goes out as one user message. A
request's output constraint goes out as `response_format` (JSON and JSON Schema only).

Each `choices[0].delta.content` becomes a chunk; the choice's `finish_reason` ends the
generation, and the exact token counts come from the `usage` the provider sends at the end of
the stream (asked for with `stream_options.include_usage`). Closing the chunk iterator, or
cancelling the task that reads it, closes the HTTP response and so the connection: the
provider sees the client go away and stops generating.

Token counts: chunks carry the provider's own counts once it sent `usage` (on any chunk: some
send running usage with every chunk, most only at the end), marked `counted`. Until then, and
to the end for a provider that sends none, a chunk says 0 input tokens and one output token per
provider chunk, not `counted`: InferenceService's engine then counts itself, with the model's
tokenizer or a conservative estimate (`services.inference.core.usage`).
"""

import asyncio
import codecs
import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common import reasons
from services.common.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.inference.core.model import (
    BackendChunk,
    BackendRequest,
    BackendSpec,
    ConstraintKind,
    Embeddings,
    FinishReason,
    ModelState,
    OutputConstraint,
)

UNAVAILABLE_RETRY_AFTER = 1.0
"""Seconds a caller should wait before retrying a backend that is down (no `Retry-After`)."""
RATE_LIMITED_RETRY_AFTER = 1.0
"""Seconds a caller should wait after a provider's 429 that carries no `Retry-After`."""
MAX_RETRY_AFTER = 3600.0
"""The longest `Retry-After` passed on to callers, in seconds."""
CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection, when the caller's deadline leaves more."""
STATUS_TIMEOUT = 2.0
"""Seconds a model status check may take."""
DRAIN_TIMEOUT = 0.5
"""Seconds to read the rest of a response after `[DONE]`, so that its connection is reused."""
MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error response read to find the provider's message."""
MAX_ERROR_MESSAGE = 500
"""Characters of a provider's error message passed on to callers."""
DONE: Final = "[DONE]"
"""The `data` of the event that ends an OpenAI stream."""

_logger = logging.getLogger(__name__)
_LINE_END = re.compile(r"\r\n|\r|\n")
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_FINISH_REASONS: Final = {
    "stop": FinishReason.STOP,
    "eos_token": FinishReason.STOP,  # TGI
    "eos": FinishReason.STOP,
    "end_turn": FinishReason.STOP,
    "tool_calls": FinishReason.STOP,
    "function_call": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "max_tokens": FinishReason.LENGTH,
    "stop_sequence": FinishReason.STOP_SEQUENCE,  # TGI
    "content_filter": FinishReason.CONTENT_FILTER,
}
"""Provider finish reasons; any other one (but `abort`) ends the generation as STOP."""
_ABORTED = frozenset({"abort", "error"})
"""Finish reasons that say the provider gave up on the request (vLLM's `abort`)."""
_PARAMETER_FIELDS: Final = {
    "max_tokens": "parameters.max_tokens",
    "max_completion_tokens": "parameters.max_tokens",
    "temperature": "parameters.temperature",
    "top_p": "parameters.top_p",
    "seed": "parameters.seed",
    "stop": "parameters.stop",
    "presence_penalty": "parameters.presence_penalty",
    "frequency_penalty": "parameters.frequency_penalty",
    "response_format": "constraint",
}
"""Request fields of the OpenAI API as the fields of InferenceService's request."""
SCHEMA_NAME: Final = "output"
"""`response_format.json_schema.name`: the OpenAI API requires one; the schema is the
caller's, so one fixed name."""


@dataclass(frozen=True, slots=True)
class ProviderAccess:
    """How InferenceService calls one OpenAI-compatible backend, besides its spec."""

    api_key: str | None = field(default=None, repr=False)
    """Sent as `Authorization: Bearer <key>`; None sends no Authorization header."""
    timeout: float | None = None
    """Seconds one request may take at most; the caller's deadline applies when shorter."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: its type (`message` unless named) and its data lines joined."""

    data: str
    event: str = "message"


class SSEDecoder:
    """Incremental decoder of a `text/event-stream` body (WHATWG HTML, "server-sent events").

    Bytes go in as they arrive, split anywhere (inside a line, a CRLF or a UTF-8 character);
    complete events come out. Lines end with CRLF, LF or CR; `:` starts a comment; `data`
    lines of one event are joined with LF; `event` names the event type; `id` and `retry` are
    read and ignored. At the end of the stream an event that lacks its closing blank line is
    still dispatched (some servers close right after `data: [DONE]`).
    """

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._first = True

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events that `data` completes."""
        return self._lines(self._text.decode(data))

    def close(self) -> list[SSEEvent]:
        """The events still pending at the end of the stream."""
        # A final "\n" completes a last line without its line ending (or after a lone "\r"),
        # and a second one dispatches the event that lacked its blank line.
        return self._lines(self._text.decode(b"", final=True) + "\n\n")

    def _lines(self, text: str) -> list[SSEEvent]:
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        buffer = self._buffer + text
        events: list[SSEEvent] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.end() == len(buffer) and match.group() == "\r":
                break  # maybe the first half of a CRLF: wait for the next bytes
            event = self._line(buffer[start : match.start()])
            start = match.end()
            if event is not None:
                events.append(event)
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message")


class CompletionStream:
    """Turns the events of one streamed chat completion into chunks.

    `on_event` returns the chunks an event makes (raising a domain error for an error event or
    an event it cannot read); `done()` tells when `[DONE]` came; `final` returns the last chunk
    once the stream is over, or raises when the provider never finished the generation.
    """

    def __init__(self, spec: BackendSpec, *, secrets: Sequence[str] = ()) -> None:
        self._spec = spec
        self._secrets = tuple(s for s in secrets if s)
        self._started = False
        self._deltas = 0
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._finish: FinishReason | None = None
        self._done = False

    def done(self) -> bool:
        """Whether the `[DONE]` event came."""
        return self._done

    def on_event(self, event: SSEEvent) -> list[BackendChunk]:
        """The chunks of one event (none for `[DONE]`, usage-only and ignored events)."""
        if event.event == "error":
            raise self._error_event(event.data)
        if event.event != "message" or not event.data.strip():
            return []
        if event.data.strip() == DONE:
            self._done = True
            return []
        try:
            payload = json.loads(event.data)
        except ValueError:
            raise protocol_error(self._spec, "an event that is not JSON") from None
        if not isinstance(payload, dict):
            raise protocol_error(self._spec, "an event that is not a JSON object")
        if "error" in payload and "choices" not in payload:
            raise self._error_event(payload)
        self._read_usage(payload.get("usage"))
        choice = _first_choice(payload.get("choices"))
        if choice is None:
            return []  # e.g. the usage chunk, whose `choices` is empty
        chunks: list[BackendChunk] = []
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content and self._finish is None:
            self._deltas += 1
            chunks.append(self._chunk(content, self._output(), None))
        elif not self._started:
            # The first chunk (usually the assistant's role): the generation runs.
            chunks.append(self._chunk("", 0, None))
        self._started = True
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason and self._finish is None:
            self._finish = self._finish_reason(reason, choice.get("stop_reason"))
        return chunks

    def final(self) -> BackendChunk:
        """The last chunk: the finish reason and the exact counts, as far as they are known.

        Raises `Unavailable` when the stream ended without a finish reason."""
        if self._finish is None:
            raise Unavailable(
                f"backend {self._spec.id} ended the stream before the generation finished",
                reason=reasons.BACKEND_ERROR,
                retry_after=UNAVAILABLE_RETRY_AFTER,
                metadata={"backend_id": self._spec.id},
            )
        return self._chunk("", self._output(), self._finish)

    def _chunk(self, text: str, output_tokens: int, finish: FinishReason | None) -> BackendChunk:
        return BackendChunk(
            text,
            self._input_tokens if self._input_tokens is not None else 0,
            output_tokens,
            finish_reason=finish,
            counted=self._input_tokens is not None and self._output_tokens is not None,
        )

    def _output(self) -> int:
        return self._output_tokens if self._output_tokens is not None else self._deltas

    def _read_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if _count(prompt):
            self._input_tokens = prompt
        if _count(completion):
            self._output_tokens = completion

    def _finish_reason(self, reason: str, stop_reason: object) -> FinishReason:
        if reason in _ABORTED:
            raise Unavailable(
                f"backend {self._spec.id} aborted the generation ({reason})",
                reason=reasons.BACKEND_ERROR,
                retry_after=UNAVAILABLE_RETRY_AFTER,
                metadata={"backend_id": self._spec.id},
            )
        finish = _FINISH_REASONS.get(reason, FinishReason.STOP)
        if finish is FinishReason.STOP and isinstance(stop_reason, str) and stop_reason:
            return FinishReason.STOP_SEQUENCE  # vLLM names the stop string that matched
        return finish

    def _error_event(self, payload: object) -> DomainError:
        if isinstance(payload, str):
            with contextlib.suppress(ValueError):
                payload = json.loads(payload)
        message = _provider_message(payload, self._secrets) or "no details"
        return Internal(
            f"backend {self._spec.id} failed during the generation: {message}",
            reason=reasons.BACKEND_ERROR,
            metadata={"backend_id": self._spec.id},
        )


class OpenAICompatibleBackend:
    """Generates through OpenAI-compatible HTTP endpoints.

    `access` holds the API key and timeout of each backend by backend id (a backend not in it
    is called without a key); `client` is the shared HTTP client (one with pooled, unbounded
    connections is made when None; the engine bounds the requests in flight); `tracer` makes a
    client span per request. `aclose` closes the client this backend made.
    """

    def __init__(
        self,
        *,
        access: Mapping[str, ProviderAccess] | None = None,
        client: httpx.AsyncClient | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._access = dict(access or {})
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
        )
        self._tracer = tracer or trace.get_tracer(__name__)

    async def aclose(self) -> None:
        """Closes the HTTP client, when this backend made it."""
        if self._owns_client:
            await self._client.aclose()

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        """Streams the chat completion of `request` from `spec` as chunks; closes the HTTP
        response (and its connection) when the consumer stops early or is cancelled."""
        access = self._access.get(spec.id, ProviderAccess())
        loop = asyncio.get_running_loop()
        limits = [t for t in (request.timeout, access.timeout) if t is not None]
        deadline = loop.time() + min(limits) if limits else None
        own_limit = access.timeout is not None and access.timeout == min(limits, default=0)
        body = chat_completion_body(spec, request)
        url = endpoint_url(spec.endpoint, "chat/completions")
        span = self._tracer.start_span(
            "POST chat/completions",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": url,
                "genai.backend.id": spec.id,
                "genai.backend.model": spec.backend_model,
            },
        )
        headers = _headers(access, request_id=request.request_id, accept="text/event-stream")
        headers["accept-encoding"] = "identity"  # compressing would hold tokens back
        _TRACE_CONTEXT.inject(headers, context=trace.set_span_in_context(span))
        secrets = (access.api_key,) if access.api_key else ()
        stream = CompletionStream(spec, secrets=secrets)
        response: httpx.Response | None = None
        body_bytes: AsyncIterator[bytes] | None = None
        chunks: AsyncGenerator[list[SSEEvent], None] | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._client.send(
                        self._client.build_request("POST", url, json=body, headers=headers),
                        stream=True,
                    )
                    span.set_attribute("http.response.status_code", response.status_code)
                    if not response.is_success:
                        raise http_error(
                            spec,
                            response.status_code,
                            response.headers,
                            await _read_some(response),
                            input_field="chat.messages" if request.messages else "text",
                            secrets=secrets,
                        )
                if response.headers.get("content-type", "").startswith("application/json"):
                    raise protocol_error(spec, "a JSON body, not an event stream")
                body_bytes = response.aiter_bytes()
                chunks = _events(body_bytes)
                while not stream.done():
                    async with asyncio.timeout_at(deadline):
                        events = await anext(chunks, None)
                    if events is None:
                        break
                    for event in events:
                        for chunk in stream.on_event(event):
                            yield chunk
                        if stream.done():
                            break  # anything after [DONE] is not part of the stream
                final = stream.final()
                if stream.done():
                    await _drain(chunks)  # the rest of the body: the connection is reused
                yield final
            except TimeoutError:
                raise DeadlineExceeded(
                    f"backend {spec.id} did not finish within "
                    + (f"its timeout of {access.timeout:g} s" if own_limit else "the deadline"),
                    metadata={"backend_id": spec.id},
                ) from None
            except httpx.RequestError as error:
                raise Unavailable(
                    f"backend {spec.id} at {_origin(spec.endpoint)} is unavailable "
                    f"({type(error).__name__})",
                    reason=reasons.BACKEND_UNAVAILABLE,
                    retry_after=UNAVAILABLE_RETRY_AFTER,
                    metadata={"backend_id": spec.id},
                ) from None
        except DomainError as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            if chunks is not None:
                await chunks.aclose()
            if isinstance(body_bytes, AsyncGenerator):
                await body_bytes.aclose()
            if response is not None:
                await response.aclose()
            span.end()

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        """Not offered: OpenAI-compatible backends serve generation models only (the settings
        refuse embedding models on them)."""
        raise FailedPrecondition(
            f"backend {spec.id} is OpenAI-compatible and serves generation models only",
            metadata={"backend_id": spec.id},
        )

    async def model_state(self, spec: BackendSpec) -> ModelState:
        """READY when `GET {base}/models` answers and lists the provider model (or lists
        nothing readable); UNAVAILABLE when it lists other models only or cannot be asked."""
        access = self._access.get(spec.id, ProviderAccess())
        try:
            response = await self._client.get(
                endpoint_url(spec.endpoint, "models"),
                headers=_headers(access, request_id="", accept="application/json"),
                timeout=STATUS_TIMEOUT,
            )
        except httpx.HTTPError:
            return ModelState.UNAVAILABLE
        if not response.is_success:
            return ModelState.UNAVAILABLE
        try:
            listed = response.json().get("data")
            ids = {m.get("id") for m in listed if isinstance(m, dict)}
        except (ValueError, AttributeError, TypeError):
            return ModelState.READY  # it answers; the list is not one we can read
        return ModelState.READY if not ids or spec.backend_model in ids else ModelState.UNAVAILABLE


def protocol_error(spec: BackendSpec, what: str) -> DomainError:
    """A provider that broke the streaming protocol: INTERNAL (BACKEND_ERROR)."""
    return Internal(
        f"backend {spec.id} sent {what}",
        reason=reasons.BACKEND_ERROR,
        metadata={"backend_id": spec.id},
    )


def endpoint_url(base: str, path: str) -> str:
    """`base` (e.g. `http://host:8000/v1`) joined with `path` (`chat/completions`)."""
    return f"{base.rstrip('/')}/{path}"


def chat_completion_body(spec: BackendSpec, request: BackendRequest) -> dict[str, Any]:
    """The JSON body of the streamed chat completion for `request`.

    Raises `InvalidArgument` for sampling parameters the OpenAI API lacks (top_k,
    repetition_penalty), rather than dropping them silently, and `FailedPrecondition` for a
    constraint it cannot express (see `response_format`)."""
    s = request.sampling
    unsupported = [
        FieldViolation(name, f"is not supported by the OpenAI-compatible backend {spec.id}")
        for name, value in (
            ("parameters.top_k", s.top_k),
            ("parameters.repetition_penalty", s.repetition_penalty),
        )
        if value is not None
    ]
    if unsupported:
        raise InvalidArgument(violations=unsupported, metadata={"backend_id": spec.id})
    if request.messages is not None:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
    else:
        messages = [{"role": "user", "content": request.prompt}]
    body: dict[str, Any] = {
        "model": spec.backend_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": request.max_tokens,
    }
    optional: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "stop": list(s.stop) or None,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if request.constraint is not None:
        body["response_format"] = response_format(spec, request.constraint)
    return body


def response_format(spec: BackendSpec, constraint: OutputConstraint) -> dict[str, Any]:
    """The OpenAI `response_format` of a constraint: `json_object`, or `json_schema` in strict
    mode (the provider decodes under the schema). Regular expressions and grammars have no
    OpenAI form (vLLM's `guided_regex` and `guided_grammar` are its own extensions): they are
    refused with FAILED_PRECONDITION rather than sent unconstrained."""
    if constraint.kind is ConstraintKind.JSON:
        return {"type": "json_object"}
    if constraint.kind is ConstraintKind.JSON_SCHEMA:
        return {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": constraint.schema, "strict": True},
        }
    kind = constraint.kind.value if constraint.kind is not None else "none"
    raise FailedPrecondition(
        f"backend {spec.id} is OpenAI-compatible, whose API constrains output to JSON and JSON "
        f"Schema only, not to {'a regular expression' if kind == 'regex' else 'a grammar'}; "
        "send such constraints to a model served by Triton",
        metadata={"backend_id": spec.id, "field": f"constraint.{kind}"},
    )


def http_error(
    spec: BackendSpec,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    input_field: str = "text",
    secrets: Sequence[str] = (),
) -> DomainError:
    """A provider's HTTP error answer as a domain error.

    400/422: INVALID_ARGUMENT (CONTEXT_LENGTH_EXCEEDED when the provider says so);
    401/403: INTERNAL (BACKEND_ERROR), naming neither the key nor the provider's message, which
    may quote it; 404: UNAVAILABLE (BACKEND_UNAVAILABLE), the backend does not serve the model;
    429: RESOURCE_EXHAUSTED (BACKEND_OVERLOADED) with the provider's `Retry-After`; 408, 409
    and 5xx: UNAVAILABLE (BACKEND_UNAVAILABLE) with `Retry-After` or a default; anything else:
    INTERNAL (BACKEND_ERROR). `secrets` are blanked out of provider messages.
    """
    metadata = {"backend_id": spec.id, "http_status": str(status)}
    payload: object = None
    try:
        payload = json.loads(body)
    except ValueError:
        payload = body.decode(errors="replace")
    message = _provider_message(payload, secrets) or f"HTTP {status}"
    retry = retry_after_seconds(headers)
    if status in (400, 422):
        # `{"error": {...}}` (OpenAI, newer vLLM) or the error object itself (older vLLM).
        error = payload.get("error", payload) if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        param = error.get("param") if isinstance(error, dict) else None
        lowered = message.lower()
        if code == "context_length_exceeded" or "context length" in lowered:
            return InvalidArgument(
                f"backend {spec.id}: {message}",
                violations=[FieldViolation(input_field, message)],
                reason=reasons.CONTEXT_LENGTH_EXCEEDED,
                metadata=metadata,
            )
        field = input_field if param == "messages" else _PARAMETER_FIELDS.get(str(param))
        return InvalidArgument(
            f"backend {spec.id} refused the request: {message}",
            violations=[FieldViolation(field or "parameters", message)],
            metadata=metadata,
        )
    if status in (401, 403):
        _logger.warning(
            "backend %s at %s refused InferenceService's credentials (HTTP %d)",
            spec.id,
            _origin(spec.endpoint),
            status,
        )
        return Internal(
            f"backend {spec.id} refused InferenceService's credentials (HTTP {status}); "
            "its API key needs fixing",
            reason=reasons.BACKEND_ERROR,
            metadata=metadata,
        )
    if status == 404:
        return Unavailable(
            f"backend {spec.id} does not serve {spec.backend_model!r} now (HTTP 404): {message}",
            reason=reasons.BACKEND_UNAVAILABLE,
            retry_after=retry if retry is not None else UNAVAILABLE_RETRY_AFTER,
            metadata=metadata,
        )
    if status == 429:
        return ResourceExhausted(
            f"backend {spec.id} is rate limited (HTTP 429): {message}",
            reason=reasons.BACKEND_OVERLOADED,
            retry_after=retry if retry is not None else RATE_LIMITED_RETRY_AFTER,
            metadata=metadata,
        )
    if status in (408, 409) or status >= 500:
        return Unavailable(
            f"backend {spec.id} is unavailable (HTTP {status}): {message}",
            reason=reasons.BACKEND_UNAVAILABLE,
            retry_after=retry if retry is not None else UNAVAILABLE_RETRY_AFTER,
            metadata=metadata,
        )
    return Internal(
        f"backend {spec.id} failed (HTTP {status}): {message}",
        reason=reasons.BACKEND_ERROR,
        metadata=metadata,
    )


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), at
    most `MAX_RETRY_AFTER`; None when neither is there or readable."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return None


async def _events(chunks: AsyncIterator[bytes]) -> AsyncGenerator[list[SSEEvent], None]:
    """The events of a body, one list per network read; the last list holds the events that
    were pending at the end."""
    decoder = SSEDecoder()
    async for data in chunks:
        events = decoder.feed(data)
        if events:
            yield events
    yield decoder.close()


async def _drain(events: AsyncGenerator[list[SSEEvent], None]) -> None:
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            async for _ in events:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the response is closed anyway, and its connection with it


async def _read_some(response: httpx.Response) -> bytes:
    """Up to `MAX_ERROR_BODY` bytes of an error response."""
    body = bytearray()
    try:
        async for data in response.aiter_bytes():
            body += data
            if len(body) >= MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    return bytes(body[:MAX_ERROR_BODY])


def _headers(access: ProviderAccess, *, request_id: str, accept: str) -> dict[str, str]:
    headers = {"accept": accept}
    if access.api_key:
        headers["authorization"] = f"Bearer {access.api_key}"
    if request_id:
        headers["x-request-id"] = request_id
    return headers


def _origin(endpoint: str) -> str:
    """`scheme://host:port` of an endpoint, without user info, path or query."""
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL:
        return "?"
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def _first_choice(choices: object) -> dict[str, Any] | None:
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _provider_message(payload: object, secrets: Sequence[str]) -> str:
    """The provider's error message (`{"error": {"message": ...}}`, `{"message": ...}`,
    FastAPI's `{"detail": ...}` or plain text), shortened, with `secrets` blanked out."""
    message: object = payload
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
    if not isinstance(message, str):
        message = json.dumps(message) if message else ""
    text = " ".join(message.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[: MAX_ERROR_MESSAGE - 1] + "…"
    return text
