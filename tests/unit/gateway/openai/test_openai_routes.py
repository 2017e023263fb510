"""The OpenAI routes over a real uvicorn (`HttpServer` on port 0) in front of a stand-in
gateway that plays scripted completions: headers deferred to the first delta, the real status
of an error before it, an error event after it, the client going away or not reading, the
body limits, auth and roles, the catch-all and the server span."""

import asyncio
import base64
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from genai.common.v1 import generation_pb2
from genai.gateway.v1 import gateway_pb2
from genai.router.v1 import router_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from services.common import reasons
from services.common.auth import Principal, current_principal
from services.common.errors import (
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.http import HttpContext, HttpServer, HttpSettings
from services.gateway.embeddings import EmbeddingRequest, EmbeddingResult
from services.gateway.inline import InlinePrompt
from services.gateway.openai.app import openai_routes
from services.gateway.outcome import Caller, Outcome, Request, Response

Script = Callable[[Outcome], AsyncIterator[Response]]
MODEL = "smollm2-135m-instruct"
BACKEND = "triton-0/smollm2"
KEYS = {"member-key": "member", "viewer-key": "viewer"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


class KeyAuthenticator:
    """Two keys of the `acme` tenant, one per role."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
        self.seen.append((method, dict(metadata)))
        key = metadata.get("authorization", "").removeprefix("Bearer ")
        if key not in KEYS:
            raise Unauthenticated("unknown API key")
        return Principal("acme", f"key:{key}", {"role": KEYS[key]})


def served(outcome: Outcome) -> None:
    """What the engine knows once a backend streams: the serving attempt's `start`, recorded
    at its first delta."""
    outcome.serving = (MODEL, BACKEND)


def delta(text: str) -> Response:
    return Response(delta=gateway_pb2.TextDelta(text=text))


def final(outcome: Outcome, **fields: Any) -> Response:
    return Response(
        final=gateway_pb2.CompletionMetadata(
            request_id=outcome.request_id,
            model=MODEL,
            backend_id=BACKEND,
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            usage=generation_pb2.TokenUsage(input_tokens=5, output_tokens=2),
            **fields,
        )
    )


def tokens(*texts: str, pause: float = 0.0) -> Script:
    async def script(outcome: Outcome) -> AsyncIterator[Response]:
        served(outcome)
        for text in texts:
            if pause:
                await asyncio.sleep(pause)
            yield delta(text)
        yield final(outcome)

    return script


def failing(error: BaseException, *, after: tuple[str, ...] = (), wait: float = 0.0) -> Script:
    async def script(outcome: Outcome) -> AsyncIterator[Response]:
        await asyncio.sleep(wait)
        if after:
            served(outcome)
        for text in after:
            yield delta(text)
        raise error

    return script


class FakeGateway:
    """Plays `script` for every completion and notes how each one ended."""

    def __init__(self) -> None:
        self.script: Script = tokens("Hello", ", world")
        self.requests: list[tuple[Request, Caller, InlinePrompt | None, Any]] = []
        self.principals: list[Principal] = []
        self.endings: list[str] = []
        self.ended = asyncio.Event()
        self.embedded: list[EmbeddingRequest] = []
        self.time_left: list[float | None] = []

    def caller(self, principal: Principal, method: str) -> Caller:
        return Caller(principal.tenant_id, (), method)

    def complete(
        self,
        request: Request,
        caller: Caller,
        *,
        time_left: float | None,
        inline: InlinePrompt | None = None,
        output_schema: Mapping[str, Any] | None = None,
        observe: Callable[[Outcome], None] | None = None,
    ) -> AsyncIterator[Response]:
        self.requests.append((request, caller, inline, output_schema))
        self.principals.append(current_principal())
        self.time_left.append(time_left)
        return self._run(request, observe)

    async def _run(
        self, request: Request, observe: Callable[[Outcome], None] | None
    ) -> AsyncIterator[Response]:
        outcome = Outcome(
            started=0.0,
            request_id=request.request_id or "r-1",
            trace_id="",
            request=request,
            arrived=datetime.now(UTC),
        )
        if observe is not None:
            observe(outcome)
        how = "done"
        try:
            yield Response(
                start=gateway_pb2.CompletionStart(
                    request_id=outcome.request_id,
                    prompt=request.prompt,
                    prompt_version=3 if request.prompt else 0,
                )
            )
            async for message in self.script(outcome):
                yield message
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        except GeneratorExit:
            how = "closed"
            raise
        except BaseException:
            how = "failed"
            raise
        finally:
            self.endings.append(how)
            self.ended.set()

    async def embed(
        self, request: EmbeddingRequest, caller: Caller, *, time_left: float | None
    ) -> EmbeddingResult:
        self.embedded.append(request)
        return EmbeddingResult(
            request_id="e-1",
            trace_id="",
            model=request.model,
            vectors=tuple((0.5, -0.25, float(i)) for i, _ in enumerate(request.inputs)),
            dimensions=3,
            input_tokens=4,
            cost=Decimal(0),
            currency="USD",
        )

    async def models(self, caller: Caller) -> list[router_pb2.Model]:
        return [router_pb2.Model(name=MODEL), router_pb2.Model(name="gemma3-270m")]

    async def model(self, name: str, caller: Caller) -> router_pb2.Model:
        if name != MODEL:
            raise NotFound(f"model {name!r} not found", reason=reasons.MODEL_NOT_FOUND)
        return router_pb2.Model(name=MODEL)


class Served:
    def __init__(
        self, server: HttpServer, gateway: FakeGateway, registry: CollectorRegistry
    ) -> None:
        self.server = server
        self.gateway = gateway
        self.registry = registry
        self.client = httpx.AsyncClient(
            base_url=server.url, headers={"authorization": "Bearer member-key"}, timeout=10
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def serving(
    tracer_provider: TracerProvider | None = None, **limits: Any
) -> AsyncIterator[Served]:
    gateway = FakeGateway()
    registry = CollectorRegistry()
    context = HttpContext(KeyAuthenticator(), HttpSettings(**limits))
    routes = openai_routes(gateway, context, registry=registry, tracer_provider=tracer_provider)
    server = await HttpServer.start(
        Starlette(routes=routes),
        host="127.0.0.1",
        port=0,
        tls=None,
        settings=context.settings,
        grace=1,
    )
    served_ = Served(server, gateway, registry)
    try:
        yield served_
    finally:
        await served_.client.aclose()
        await server.stop(1)


@pytest.fixture
async def api() -> AsyncIterator[Served]:
    async with serving() as served_:
        yield served_


def events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]


# ------------------------------------------------------------------------------ completions


async def test_a_whole_chat_completion(api: Served) -> None:
    response = await api.client.post(
        "/v1/chat/completions", json=CHAT, headers={"idempotency-key": "req-7"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "chatcmpl-req-7"
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == "Hello, world"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert body["genai"]["backendId"] == BACKEND
    assert response.headers["x-request-id"] == "req-7"
    assert response.headers["x-genai-model"] == MODEL
    assert response.headers["x-genai-backend"] == BACKEND
    assert "x-genai-prompt" not in response.headers
    request, caller, inline, _ = api.gateway.requests[0]
    assert inline == InlinePrompt()
    assert request.routing.model == MODEL
    assert caller.method == "/openai/v1/chat/completions"
    assert api.gateway.principals[0].subject == "key:member-key"
    assert 0 < (api.gateway.time_left[0] or 0) <= 600
    assert api.gateway.endings == ["done"]
    assert api.metric("genai_http_responses_total", route="/v1/chat/completions", status="200") == 1


async def test_a_streamed_chat_completion(api: Served) -> None:
    body = {**CHAT, "model": "prompt:chat@7", "stream": True}
    body["stream_options"] = {"include_usage": True}
    async with api.client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = (await response.aread()).decode()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-genai-prompt"] == "chat@3"
    assert response.headers["x-genai-model"] == MODEL
    assert response.headers["x-genai-backend"] == BACKEND  # the one streaming, known at once
    sent = events(text)
    assert sent[-1] == "[DONE]"
    assert sent.count("[DONE]") == 1
    chunks = [json.loads(event) for event in sent[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert chunks[1]["choices"][0]["delta"] == {"content": ", world"}
    assert chunks[2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[2]["genai"]["model"] == MODEL
    assert chunks[3]["choices"] == []
    assert chunks[3]["usage"]["total_tokens"] == 7
    assert all(c["model"] == MODEL and c["id"] == "chatcmpl-r-1" for c in chunks)
    assert all("usage" in c for c in chunks)


async def test_a_streamed_text_completion(api: Served) -> None:
    api.gateway.script = tokens(" Paris", ".")
    body = {"model": "gemma3-270m", "prompt": "The capital of France is", "stream": True}
    response = await api.client.post("/v1/completions", json=body)
    chunks = [json.loads(e) for e in events(response.text)[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == [" Paris", ".", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-r-1" for c in chunks)
    _, caller, inline, _ = api.gateway.requests[0]
    assert inline == InlinePrompt(text="The capital of France is")
    assert caller.method == "/openai/v1/completions"


async def test_an_error_before_the_first_token_of_a_stream_has_its_own_status(
    api: Served,
) -> None:
    api.gateway.script = failing(ResourceExhausted("tenant quota", retry_after=2.5))
    response = await api.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "3"
    assert response.headers["retry-after-ms"] == "2500"
    assert response.headers["x-request-id"] == "r-1"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_a_mid_stream_failure_ends_with_an_error_event_and_no_done(api: Served) -> None:
    api.gateway.script = failing(
        Unavailable("the backend broke", reason=reasons.STREAM_INTERRUPTED), after=("a", "b")
    )
    response = await api.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    sent = events(response.text)
    assert "[DONE]" not in sent
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in sent[:2]] == ["a", "b"]
    error = json.loads(sent[-1])["error"]
    assert (error["message"], error["code"]) == ("the backend broke", "stream_interrupted")
    assert api.metric("genai_http_stream_aborts_total", reason="error") == 1


async def test_an_unexpected_failure_is_500_with_nothing_of_it(api: Served) -> None:
    api.gateway.script = failing(RuntimeError("secret internals"))
    response = await api.client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "internal error"
    assert "secret" not in response.text


async def test_unsupported_parameters_never_reach_the_gateway(api: Served) -> None:
    response = await api.client.post("/v1/chat/completions", json={**CHAT, "n": 2})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    response = await api.client.post("/v1/chat/completions", json={**CHAT, "colour": 1})
    assert response.json()["error"]["message"] == "Unrecognized request argument supplied: colour"
    assert api.gateway.requests == []


async def test_the_request_deadline_is_504() -> None:
    async with serving(request_timeout_seconds=0.2) as quick:
        quick.gateway.script = tokens("late", pause=5)
        response = await quick.client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        await asyncio.wait_for(quick.gateway.ended.wait(), 5)
        assert quick.gateway.endings == ["cancelled"]


# ------------------------------------------------------------------------------ auth


async def test_only_the_authorization_header_reaches_the_authenticator() -> None:
    authenticator = KeyAuthenticator()
    context = HttpContext(authenticator, HttpSettings())
    routes = openai_routes(FakeGateway(), context)
    server = await HttpServer.start(
        Starlette(routes=routes),
        host="127.0.0.1",
        port=0,
        tls=None,
        settings=context.settings,
        grace=1,
    )
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={
                    "authorization": "Bearer member-key",
                    "x-genai-internal-token": "guess",
                    "x-genai-tenant": "other",
                },
            )
    finally:
        await server.stop(1)
    assert authenticator.seen == [
        ("/genai.gateway.v1.GatewayService/StreamComplete", {"authorization": "Bearer member-key"})
    ]


async def test_a_bad_key_is_401_and_a_viewer_may_only_read_the_catalog(api: Served) -> None:
    anonymous = await api.client.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": ""}
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    viewer = {"authorization": "Bearer viewer-key"}
    refused = await api.client.post("/v1/chat/completions", json=CHAT, headers=viewer)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    refused = await api.client.post(
        "/v1/embeddings", json={"model": "m", "input": "x"}, headers=viewer
    )
    assert refused.status_code == 403
    listed = await api.client.get("/v1/models", headers=viewer)
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == [MODEL, "gemma3-270m"]


# ------------------------------------------------------------------------------ other routes


async def test_embeddings_as_floats_and_base64(api: Served) -> None:
    response = await api.client.post(
        "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a", "b"], "user": "ann"}
    )
    assert response.status_code == 200
    body = response.json()
    assert [d["embedding"] for d in body["data"]] == [[0.5, -0.25, 0.0], [0.5, -0.25, 1.0]]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert response.headers["x-request-id"] == "e-1"
    assert api.gateway.embedded[0].inputs == ("a", "b")
    assert api.gateway.embedded[0].user_id == "ann"
    packed = await api.client.post(
        "/v1/embeddings",
        json={
            "model": "all-minilm-l6-v2",
            "input": "a",
            "encoding_format": "base64",
            "dimensions": 3,
        },
    )
    vector = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert struct.unpack("<3f", vector) == (0.5, -0.25, 0.0)
    assert api.gateway.embedded[1].dimensions == 3


async def test_a_model_and_an_unknown_one(api: Served) -> None:
    found = await api.client.get(f"/v1/models/{MODEL}")
    assert found.json()["id"] == MODEL
    missing = await api.client.get("/v1/models/gpt-9")
    assert missing.status_code == 404
    assert (missing.json()["error"]["param"], missing.json()["error"]["code"]) == (
        "model",
        "model_not_found",
    )


async def test_unknown_urls_and_wrong_methods_are_openai_errors(api: Served) -> None:
    unknown = await api.client.post("/v1/assistants", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (POST /v1/assistants)"
    wrong = await api.client.get("/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------ limits


async def test_a_body_over_the_limit_is_413_by_length_or_by_count() -> None:
    async with serving(max_body_bytes=2048) as small:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        by_length = await small.client.post("/v1/chat/completions", json=big)
        assert by_length.status_code == 413

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b" " * 512

        by_count = await small.client.post("/v1/chat/completions", content=chunked())
        assert by_count.status_code == 413
        assert by_count.json()["error"]["code"] == "request_too_large"
        assert small.gateway.requests == []


async def test_a_body_that_never_arrives_is_408() -> None:
    async with serving(body_timeout_seconds=0.2) as quick:
        reader, writer = await _connect(quick.server.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"authorization: Bearer member-key\r\ncontent-length: 100\r\n\r\n{"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")


# ------------------------------------------------------------------------------ cancellation


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def _request(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer member-key\r\n"
        b"content-type: application/json\r\ncontent-length: "
        + str(len(raw)).encode()
        + b"\r\n\r\n"
        + raw
    )


async def test_a_client_that_goes_away_mid_stream_cancels_the_generation(api: Served) -> None:
    api.gateway.script = tokens(*["tok "] * 1000, pause=0.01)
    reader, writer = await _connect(api.server.port)
    writer.write(_request({**CHAT, "stream": True}))
    await reader.readuntil(b"data: ")
    writer.close()
    await asyncio.wait_for(api.gateway.ended.wait(), 2)
    # Cancelled at its await, or closed at its yield should the send have been waiting.
    assert api.gateway.endings[0] in ("cancelled", "closed")
    await _eventually(
        lambda: api.metric("genai_http_stream_aborts_total", reason="client_disconnect") == 1
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_goes_away_before_the_first_token_cancels_too(
    api: Served, stream: bool
) -> None:
    api.gateway.script = tokens("never", pause=30)
    _, writer = await _connect(api.server.port)
    writer.write(_request({**CHAT, "stream": stream}))
    await _eventually(lambda: bool(api.gateway.requests))
    writer.close()
    await asyncio.wait_for(api.gateway.ended.wait(), 2)
    assert api.gateway.endings == ["cancelled"]
    await _eventually(
        lambda: (
            api.metric("genai_http_responses_total", route="/v1/chat/completions", status="499")
            == 1
        )
    )


async def test_a_client_that_stops_reading_is_abandoned_after_the_send_timeout() -> None:
    async with serving(send_timeout_seconds=0.3) as slow:

        async def endless(outcome: Outcome) -> AsyncIterator[Response]:
            served(outcome)
            while True:
                yield delta("x" * 65536)
                await asyncio.sleep(0)

        slow.gateway.script = endless
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, ("127.0.0.1", slow.server.port))
        await loop.sock_sendall(client, _request({**CHAT, "stream": True}))
        try:
            await asyncio.wait_for(slow.gateway.ended.wait(), 10)  # never read a byte
        finally:
            client.close()
        assert slow.gateway.endings == ["closed"]
        assert slow.metric("genai_http_stream_aborts_total", reason="slow_client") == 1


# ------------------------------------------------------------------------------ tracing


async def test_each_request_runs_in_a_server_span_continuing_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with serving(tracer_provider=provider) as traced:
        response = await traced.client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
    assert response.headers["x-genai-trace-id"] == trace_id
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /v1/chat/completions"
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/chat/completions"
    assert span.attributes["http.response.status_code"] == 200


async def _eventually(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()
