"""The OpenAI-compatible HTTP API of the gateway: `openai_routes(api, ctx)` gives the routes
that `start_platform` serves (`ServiceRegistration.http_routes`).

| route | the rule it follows (`services.common.policy`) | call |
|---|---|---|
| `POST /v1/chat/completions` | `GatewayService/StreamComplete` (member) | `api.complete` |
| `POST /v1/completions` | `GatewayService/StreamComplete` (member) | `api.complete`, text |
| `POST /v1/embeddings` | `InferenceService/Embed` (member) | `api.embed` |
| `GET /v1/models`, `/v1/models/{id}` | `RouterService/ListModels`, `GetModel` (viewer) | `api.models`, `api.model` |

Any other path under `/v1`, or another method, is OpenAI's 404 or 405.

Handlers are thin: read the body (`sse.read_body`), authorize (`auth.authorize`), parse and
convert it (`schema`, `convert`), call the gateway, answer (`chunks`, or `errors` for any
failure). Each request runs in a server span (`POST /v1/chat/completions`, continuing a W3C
`traceparent`), so the engine's `chat {model}` span nests inside, and under the
`request_timeout_seconds` deadline (504). A streamed completion sends its status line and
headers only with the first delta, so that every error before the first token has its own
status; a stream that fails later ends with an error event. A client that disconnects cancels
the generation (`sse.DisconnectWatch`); one that stops reading has it cancelled after
`send_timeout_seconds` (`sse.Sender`).

Response headers: `X-Request-Id`, `X-GenAI-Trace-Id`, `X-GenAI-Model` (the catalog model that
served), `X-GenAI-Backend`, and where they apply `X-GenAI-Prompt: NAME@VERSION` and
`X-GenAI-Variant`.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from genai.gateway.v1 import gateway_pb2
from genai.router.v1 import router_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute, Route

from services.common import reasons
from services.common.auth import Principal
from services.common.errors import DeadlineExceeded, DomainError, Internal
from services.common.http import HttpContext
from services.gateway.embeddings import EmbeddingRequest, EmbeddingResult
from services.gateway.inline import InlinePrompt
from services.gateway.openai import chunks, convert
from services.gateway.openai.auth import (
    EMBED_RPC,
    GET_MODEL_RPC,
    LIST_MODELS_RPC,
    STREAM_COMPLETE_RPC,
    authorize,
)
from services.gateway.openai.errors import JSON_CONTENT, WireError, http_error, sse_error_event
from services.gateway.openai.metrics import CLIENT_GONE, SLOW_CLIENT, STREAM_ERROR, HttpMetrics
from services.gateway.openai.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
)
from services.gateway.openai.sse import (
    SSE_HEADERS,
    ClientGone,
    DisconnectWatch,
    Headers,
    Receive,
    Send,
    Sender,
    SlowClient,
    read_body,
    request_headers,
)
from services.gateway.outcome import (
    OPENAI_CHAT_METHOD,
    OPENAI_COMPLETIONS_METHOD,
    OPENAI_EMBEDDINGS_METHOD,
    Caller,
    Outcome,
    Request,
    Response,
)

__all__ = ["MODELS_METHOD", "CompletionApi", "openai_routes", "served_by"]

_logger = logging.getLogger(__name__)

MODELS_METHOD: Final = "/openai/v1/models"
"""The `Caller.method` of the catalog routes."""
DISCONNECTED: Final = 499
"""The status the metrics count for a request whose client went away before any status went
out (nginx's "client closed request")."""


class CompletionApi(Protocol):
    """What the routes need of the gateway (`services.gateway.api.GatewayApi`)."""

    def caller(self, principal: Principal, method: str) -> Caller: ...

    def complete(
        self,
        request: Request,
        caller: Caller,
        *,
        time_left: float | None,
        inline: InlinePrompt | None = None,
        output_schema: Mapping[str, Any] | None = None,
        observe: Callable[[Outcome], None] | None = None,
    ) -> AsyncIterator[Response]: ...

    async def embed(
        self, request: EmbeddingRequest, caller: Caller, *, time_left: float | None
    ) -> EmbeddingResult: ...

    async def models(self, caller: Caller) -> list[router_pb2.Model]: ...

    async def model(self, name: str, caller: Caller) -> router_pb2.Model: ...


def openai_routes(
    api: CompletionApi,
    ctx: HttpContext,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> list[BaseRoute]:
    """The routes of the OpenAI-compatible API (see the module docstring), the `/v1`
    catch-all last. Metrics go to `registry` (None: a registry of their own), spans to
    `tracer_provider` (None: OpenTelemetry's global one)."""
    return _OpenAIApi(api, ctx, HttpMetrics(registry), tracer_provider).routes()


Handler = Callable[["_Exchange"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Route:
    path: str
    """The route template, the `http.route` of spans and the `route` of metrics."""
    method: str | None
    """The one method it serves (None: any, the catch-all)."""
    handler: Handler


class _Endpoint:
    """The ASGI app of one route (Starlette serves a class instance as raw ASGI)."""

    __slots__ = ("_route", "_server")

    def __init__(self, server: "_OpenAIApi", route: _Route) -> None:
        self._server = server
        self._route = route

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        await self._server.serve(scope, receive, send, self._route)


class _Exchange:
    """One request being answered."""

    __slots__ = (
        "body",
        "created",
        "deadline",
        "headers",
        "observed",
        "scope",
        "sender",
        "status",
        "streaming",
        "trace_id",
        "watch",
    )

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        headers: dict[str, str],
        sender: Sender,
        *,
        deadline: float,
        trace_id: str,
    ) -> None:
        self.scope = scope
        self.headers = headers
        self.sender = sender
        self.deadline = deadline
        """Loop time by which the request's work must be done."""
        self.trace_id = trace_id
        self.body = b""
        self.created = int(time.time())
        self.status = DISCONNECTED
        """The status line sent (`DISCONNECTED` until one is)."""
        self.streaming = False
        """An SSE response has begun: failures end it with an error event."""
        self.watch: DisconnectWatch | None = None
        self.observed: list[Outcome] = []
        """The completion's outcome, once the engine made it (`observe`)."""

    def time_left(self) -> float:
        return max(self.deadline - asyncio.get_running_loop().time(), 0.0)

    def stop_watch(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    def request_id(self) -> str:
        """The request's id where known (the outcome's, else the Idempotency-Key)."""
        if self.observed:
            return self.observed[0].request_id
        return self.headers.get(convert.IDEMPOTENCY_HEADER, "")

    async def reply(self, status: int, body: bytes, headers: Headers) -> None:
        """Sends a whole JSON response (the last send: the watch stops first)."""
        self.stop_watch()
        self.status = status
        await self.sender.whole(status, [JSON_CONTENT, *headers], body)

    async def open_stream(self, headers: Headers) -> None:
        """Sends the status line and headers of an SSE response."""
        self.streaming = True
        self.status = 200
        await self.sender.start(200, [*SSE_HEADERS, *headers])

    async def last(self, data: bytes) -> None:
        """Sends the last part of the body (the watch stops first)."""
        self.stop_watch()
        await self.sender.body(data, more=False)


class _OpenAIApi:
    """The handlers (see the module docstring)."""

    def __init__(
        self,
        api: CompletionApi,
        ctx: HttpContext,
        metrics: HttpMetrics,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self._api = api
        self._ctx = ctx
        self._settings = ctx.settings
        self._metrics = metrics
        self._tracer = trace.get_tracer("genai.gateway.openai", tracer_provider=tracer_provider)

    def routes(self) -> list[BaseRoute]:
        table = (
            _Route("/v1/chat/completions", "POST", self._chat),
            _Route("/v1/completions", "POST", self._text),
            _Route("/v1/embeddings", "POST", self._embeddings),
            _Route("/v1/models", "GET", self._models),
            _Route("/v1/models/{model_id}", "GET", self._model),
            _Route("/v1/{path:path}", None, self._unknown),
        )
        return [Route(r.path, _Endpoint(self, r), name=f"openai {r.path}") for r in table]

    # ------------------------------------------------------------------------------ exchange

    async def serve(
        self, scope: MutableMapping[str, Any], receive: Receive, send: Send, route: _Route
    ) -> None:
        """Answers one request, in its server span, and counts it."""
        arrived = time.perf_counter()
        loop = asyncio.get_running_loop()
        headers = request_headers(scope)
        method = scope["method"]
        with self._tracer.start_as_current_span(
            f"{method} {route.path}",
            kind=SpanKind.SERVER,
            context=propagate.extract(headers),
            attributes=_span_attributes(scope, headers, route.path),
        ) as span:
            context = span.get_span_context()
            exchange = _Exchange(
                scope,
                headers,
                Sender(send, self._settings.send_timeout_seconds),
                deadline=loop.time() + self._settings.request_timeout_seconds,
                trace_id=f"{context.trace_id:032x}" if context.is_valid else "",
            )
            await self._exchange(exchange, receive, route)
            status = exchange.status
            if status != DISCONNECTED:
                span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
        self._metrics.responses.labels(route.path, str(status)).inc()
        self._metrics.duration.labels(route.path).observe(time.perf_counter() - arrived)

    async def _exchange(self, exchange: _Exchange, receive: Receive, route: _Route) -> None:
        settings = self._settings
        try:
            try:
                if route.method is not None and exchange.scope["method"] != route.method:
                    raise WireError(
                        f"{exchange.scope['method']} is not allowed on {route.path}: "
                        f"use {route.method}",
                        status=405,
                        code="method_not_allowed",
                        reason=reasons.RESOURCE_NOT_FOUND,
                        headers=((b"allow", route.method.encode()),),
                    )
                if route.method == "POST":
                    exchange.body = await read_body(
                        receive,
                        exchange.headers,
                        max_bytes=settings.max_body_bytes,
                        seconds=settings.body_timeout_seconds,
                    )
                exchange.watch = DisconnectWatch(receive)
                try:
                    async with asyncio.timeout_at(exchange.deadline):
                        await route.handler(exchange)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the request took longer than {settings.request_timeout_seconds:g} s "
                        "(server.http.request_timeout_seconds)",
                        reason=reasons.DEADLINE_EXCEEDED,
                    ) from None
            except (SlowClient, ClientGone, asyncio.CancelledError):
                raise
            except Exception as error:
                exchange.stop_watch()
                await self._fail(exchange, error)
        except asyncio.CancelledError:
            watch = exchange.watch
            if watch is None or not watch.disconnected:
                raise
            watch.absorb()  # the client went away: nothing more to send, nothing to raise
            self._metrics.stream_aborts.labels(CLIENT_GONE).inc()
        except SlowClient:
            self._metrics.stream_aborts.labels(SLOW_CLIENT).inc()
            _logger.info(
                "%s %s: the client read nothing for %g s; its response is abandoned",
                exchange.scope["method"],
                route.path,
                settings.send_timeout_seconds,
            )
        except ClientGone:
            pass  # while its body was read: nothing started
        finally:
            exchange.stop_watch()

    async def _fail(self, exchange: _Exchange, error: Exception) -> None:
        """Answers `error`: its JSON error response, or, once an SSE response has begun, the
        error event that ends it."""
        if isinstance(error, DomainError | WireError):
            _logger.debug("%s failed: %r", exchange.scope["path"], error)
        if exchange.streaming:
            self._metrics.stream_aborts.labels(STREAM_ERROR).inc()
            await exchange.last(sse_error_event(error))
            return
        if exchange.sender.started:
            return  # a whole response was half sent: there is nothing to add
        problem = http_error(error)
        await exchange.reply(
            problem.status,
            problem.encoded(),
            [*problem.headers, *_ids(exchange.request_id(), exchange.trace_id)],
        )

    # ------------------------------------------------------------------------------ routes

    async def _chat(self, exchange: _Exchange) -> None:
        principal = await authorize(self._ctx, exchange.headers, STREAM_COMPLETE_RPC)
        body = convert.parse(ChatCompletionRequest, exchange.body)
        completion = convert.chat_completion(body, exchange.headers)
        caller = self._api.caller(principal, OPENAI_CHAT_METHOD)
        await self._complete(exchange, completion, caller, chat=True)

    async def _text(self, exchange: _Exchange) -> None:
        principal = await authorize(self._ctx, exchange.headers, STREAM_COMPLETE_RPC)
        body = convert.parse(CompletionRequest, exchange.body)
        completion = convert.text_completion(body, exchange.headers)
        caller = self._api.caller(principal, OPENAI_COMPLETIONS_METHOD)
        await self._complete(exchange, completion, caller, chat=False)

    async def _embeddings(self, exchange: _Exchange) -> None:
        principal = await authorize(self._ctx, exchange.headers, EMBED_RPC)
        body = convert.parse(EmbeddingsRequest, exchange.body)
        inputs = convert.embedding_inputs(body)
        caller = self._api.caller(principal, OPENAI_EMBEDDINGS_METHOD)
        result = await self._api.embed(
            EmbeddingRequest(
                model=inputs.model,
                inputs=inputs.inputs,
                dimensions=inputs.dimensions,
                user_id=body.user or "",
            ),
            caller,
            time_left=exchange.time_left(),
        )
        payload = chunks.embeddings(
            result.model, result.vectors, result.input_tokens, as_base64=inputs.base64
        )
        headers = [
            *_ids(result.request_id, result.trace_id or exchange.trace_id),
            (b"x-genai-model", _latin1(result.model)),
        ]
        await exchange.reply(200, chunks.dumps(payload), headers)

    async def _models(self, exchange: _Exchange) -> None:
        principal = await authorize(self._ctx, exchange.headers, LIST_MODELS_RPC)
        models = await self._api.models(self._api.caller(principal, MODELS_METHOD))
        await exchange.reply(
            200, chunks.dumps(chunks.model_list(models)), _ids("", exchange.trace_id)
        )

    async def _model(self, exchange: _Exchange) -> None:
        principal = await authorize(self._ctx, exchange.headers, GET_MODEL_RPC)
        name = str(exchange.scope["path_params"]["model_id"])
        model = await self._api.model(name, self._api.caller(principal, MODELS_METHOD))
        await exchange.reply(
            200, chunks.dumps(chunks.model_object(model)), _ids("", exchange.trace_id)
        )

    async def _unknown(self, exchange: _Exchange) -> None:
        raise WireError(
            f"Invalid URL ({exchange.scope['method']} {exchange.scope['path']})",
            status=404,
            code="unknown_url",
            reason=reasons.RESOURCE_NOT_FOUND,
        )

    # ------------------------------------------------------------------------------ completions

    async def _complete(
        self, exchange: _Exchange, completion: convert.Completion, caller: Caller, *, chat: bool
    ) -> None:
        stream = self._api.complete(
            completion.request,
            caller,
            time_left=exchange.time_left(),
            inline=completion.inline,
            output_schema=completion.output_schema,
            observe=exchange.observed.append,
        )
        try:
            if completion.stream:
                await self._stream(exchange, stream, completion.include_usage, chat=chat)
            else:
                await self._whole(exchange, stream, chat=chat)
        finally:
            # Closing the engine's generator early (a slow client, an error here) cancels the
            # generation; after the stream ended or raised, it is a no-op.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _whole(
        self, exchange: _Exchange, stream: AsyncIterator[Response], *, chat: bool
    ) -> None:
        parts: list[str] = []
        final: gateway_pb2.CompletionMetadata | None = None
        async for message in stream:
            kind = message.WhichOneof("event")
            if kind == "delta":
                parts.append(message.delta.text)
            elif kind == "final":
                final = message.final
        if final is None:
            raise Internal("the completion ended without its final message")
        build = chunks.chat_completion if chat else chunks.text_completion
        body = build(
            _completion_id(final.request_id, chat), exchange.created, "".join(parts), final
        )
        headers = _served(
            final.request_id,
            final.trace_id or exchange.trace_id,
            final.model,
            final.backend_id,
            final.prompt,
            final.prompt_version,
            final.variant,
        )
        await exchange.reply(200, chunks.dumps(body), headers)

    async def _stream(
        self,
        exchange: _Exchange,
        stream: AsyncIterator[Response],
        include_usage: bool,
        *,
        chat: bool,
    ) -> None:
        """Streams the completion as SSE. The headers go out with the first delta, once the
        outcome names the model that serves (a replayed outcome names it at once); until
        then, and should it never, deltas are held back until the final."""
        send = exchange.sender.body
        observed = exchange.observed
        start = gateway_pb2.CompletionStart()
        sse: chunks.StreamChunks | None = None
        held: list[str] = []
        final: gateway_pb2.CompletionMetadata | None = None
        async for message in stream:
            kind = message.WhichOneof("event")
            if kind == "delta":
                if sse is not None:
                    await send(sse.delta(message.delta.text))
                    continue
                held.append(message.delta.text)
                serving = served_by(observed[0]) if observed else None
                if serving is not None:
                    model, backend = serving
                    sse = await self._open(exchange, start, model, backend, include_usage, chat)
                    await send(sse.first("".join(held)))
            elif kind == "start":
                start = message.start
            elif kind == "final":
                final = message.final
        if final is None:
            raise Internal("the completion ended without its final message")
        if sse is None:
            sse = await self._open(
                exchange, start, final.model, final.backend_id, include_usage, chat
            )
            await send(sse.first("".join(held)))
        await exchange.last(sse.end(final))

    async def _open(
        self,
        exchange: _Exchange,
        start: gateway_pb2.CompletionStart,
        model: str,
        backend: str,
        include_usage: bool,
        chat: bool,
    ) -> chunks.StreamChunks:
        request_id = start.request_id or exchange.request_id()
        sse = chunks.StreamChunks(
            completion_id=_completion_id(request_id, chat),
            created=exchange.created,
            model=model,
            chat=chat,
            include_usage=include_usage,
        )
        await exchange.open_stream(
            _served(
                request_id,
                start.trace_id or exchange.trace_id,
                model,
                backend,
                start.prompt,
                start.prompt_version,
                start.variant,
            )
        )
        return sse


def _completion_id(request_id: str, chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + request_id


def served_by(outcome: Outcome) -> tuple[str, str] | None:
    """The catalog model and backend serving `outcome`'s current generation once it streams:
    what the attempt's InferenceService `start` named (`Outcome.serving`, set at its first
    delta), or the final's once the completion ended (a held-back output sent whole, a
    replayed outcome); None before either."""
    if outcome.final is not None:
        return outcome.final.model, outcome.final.backend_id
    return outcome.serving


def _latin1(value: str) -> bytes:
    return value.encode("latin-1", errors="replace")


def _ids(request_id: str, trace_id: str) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if request_id:
        headers.append((b"x-request-id", _latin1(request_id)))
    if trace_id:
        headers.append((b"x-genai-trace-id", _latin1(trace_id)))
    return headers


def _served(
    request_id: str,
    trace_id: str,
    model: str,
    backend: str,
    prompt: str,
    version: int,
    variant: str,
) -> list[tuple[bytes, bytes]]:
    """The headers saying what served a completion."""
    headers = _ids(request_id, trace_id)
    if model:
        headers.append((b"x-genai-model", _latin1(model)))
    if backend:
        headers.append((b"x-genai-backend", _latin1(backend)))
    if prompt:
        headers.append((b"x-genai-prompt", _latin1(f"{prompt}@{version}")))
    if variant:
        headers.append((b"x-genai-variant", _latin1(variant)))
    return headers


def _span_attributes(
    scope: Mapping[str, Any], headers: Mapping[str, str], route: str
) -> dict[str, str]:
    attributes = {
        "http.request.method": str(scope["method"]),
        "http.route": route,
        "url.path": str(scope["path"]),
        "url.scheme": str(scope.get("scheme", "http")),
        "network.protocol.version": str(scope.get("http_version", "1.1")),
    }
    client = scope.get("client")
    if client:
        attributes["client.address"] = str(client[0])
    agent = headers.get("user-agent")
    if agent:
        attributes["user_agent.original"] = agent[:256]
    return attributes
