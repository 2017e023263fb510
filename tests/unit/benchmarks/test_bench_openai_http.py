"""The `gateway` benchmark's HTTP path (`benchmarks.openai_http`): its lean HTTP/1.1 client
against the platform's own HTTP server (`HttpServer`: uvicorn, h11) on port 0, answering with
the OpenAI API's own SSE chunks (`StreamChunks`), so that the client parses the bytes that the
real route sends: timing, text, usage, keep-alive reuse, a connection the server closed while
idle, and failures."""

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from genai.common.v1 import generation_pb2
from genai.gateway.v1 import gateway_pb2

from benchmarks.openai_http import CHAT_COMPLETIONS, HttpSsePath, HttpStreamError, chat_request
from services.common.http import HttpServer, HttpSettings
from services.gateway.openai.chunks import StreamChunks, dumps
from services.gateway.openai.errors import sse_error_event
from services.gateway.openai.sse import SSE_HEADERS, Sender, read_body, request_headers

BODY = {"model": "prompt:chat", "messages": [], "max_tokens": 3, "stream": True}
KEY = (("authorization", "Bearer secret"),)
TEXTS = ("tok0 ", "tok1 ", "tok2 ")


def _final() -> gateway_pb2.CompletionMetadata:
    return gateway_pb2.CompletionMetadata(
        model="zero",
        backend_id="triton-0",
        finish_reason=generation_pb2.FINISH_REASON_LENGTH,
        usage=generation_pb2.TokenUsage(input_tokens=26, output_tokens=3),
    )


@dataclass
class OpenAIStub:
    """`POST /v1/chat/completions` answered as the real route answers a stream of `TEXTS`,
    one send per event; `status` other than 200 answers an OpenAI error instead, `fail` ends
    the stream with an error event after the first text."""

    status: int = 200
    fail: bool = False
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        headers = request_headers(scope)
        body = await read_body(receive, headers, max_bytes=1 << 20, seconds=5.0)
        self.requests.append((headers, body))
        sender = Sender(send, timeout=5.0)
        if self.status != 200:
            error = {"error": {"message": "Invalid API key", "type": "invalid_request_error"}}
            await sender.whole(self.status, [(b"content-type", b"application/json")], dumps(error))
            return
        chunks = StreamChunks(
            completion_id="chatcmpl-1", created=1, model="zero", chat=True, include_usage=True
        )
        await sender.start(200, list(SSE_HEADERS))
        await sender.body(chunks.first(TEXTS[0]))
        if self.fail:
            await sender.body(sse_error_event(RuntimeError("backend gone")), more=False)
            return
        for text in TEXTS[1:]:
            await sender.body(chunks.delta(text))
        await sender.body(chunks.end(_final()), more=False)


async def _serve(stub: OpenAIStub, **settings: int) -> HttpServer:
    return await HttpServer.start(
        stub,
        host="127.0.0.1",
        port=0,
        tls=None,
        settings=HttpSettings.model_validate(settings),
        grace=0.0,
    )


@pytest.fixture
def stub() -> OpenAIStub:
    return OpenAIStub()


@pytest.fixture
async def server(stub: OpenAIStub) -> AsyncIterator[HttpServer]:
    running = await _serve(stub)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def path(server: HttpServer) -> AsyncIterator[HttpSsePath]:
    client = HttpSsePath("127.0.0.1", server.port, BODY, KEY)
    yield client
    await client.close()


def test_the_request_is_built_once_with_its_headers_and_compact_body():
    request = chat_request("127.0.0.1", 8080, BODY, KEY)

    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")

    assert lines[0] == f"POST {CHAT_COMPLETIONS} HTTP/1.1"
    assert "Host: 127.0.0.1:8080" in lines
    assert "authorization: Bearer secret" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == BODY
    assert b", " not in body  # compact
    assert b": " not in body


async def test_a_stream_is_timed_at_its_first_text_and_done_with_usage_tokens(
    path: HttpSsePath, stub: OpenAIStub
):
    timing = await path.stream()

    assert 0 < timing.ttft_us <= timing.total_us
    assert timing.tokens == 3  # usage.completion_tokens
    assert timing.messages == len(TEXTS)
    headers, body = stub.requests[0]
    assert headers["authorization"] == "Bearer secret"
    assert json.loads(body) == BODY


async def test_check_parses_every_chunk(path: HttpSsePath):
    completion = await path.check()

    assert completion.text == "".join(TEXTS)
    assert completion.deltas == len(TEXTS)
    assert completion.finish_reason == "length"
    assert completion.usage == {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29}
    assert completion.genai["model"] == "zero"
    assert completion.headers["content-type"].startswith("text/event-stream")


async def test_one_keep_alive_connection_per_stream_in_flight(path: HttpSsePath):
    for _ in range(5):
        await path.stream()
    assert path.connections_opened == 1

    timings = await asyncio.gather(*(path.stream() for _ in range(4)))

    assert [t.tokens for t in timings] == [3] * 4
    assert path.connections_opened == 4  # the idle one, and three more
    await asyncio.gather(*(path.stream() for _ in range(4)))
    assert path.connections_opened == 4


async def test_a_connection_the_server_closed_while_idle_is_replaced(stub: OpenAIStub):
    server = await _serve(stub, keep_alive_seconds=1)
    path = HttpSsePath("127.0.0.1", server.port, BODY, KEY)
    try:
        await path.stream()
        await asyncio.sleep(1.6)  # past uvicorn's keep-alive: it closes the connection

        timing = await path.stream()

        assert timing.tokens == 3
        assert path.connections_opened == 2
    finally:
        await path.close()
        await server.stop(grace=0)


async def test_an_error_status_raises_with_the_servers_message(path: HttpSsePath, stub: OpenAIStub):
    stub.status = 401

    with pytest.raises(HttpStreamError, match=r"answered 401: .*Invalid API key"):
        await path.stream()
    with pytest.raises(HttpStreamError, match="answered 401"):
        await path.check()


async def test_a_stream_ending_in_an_error_event_raises(path: HttpSsePath, stub: OpenAIStub):
    stub.fail = True

    with pytest.raises(HttpStreamError, match="the stream failed"):
        await path.stream()
    with pytest.raises(HttpStreamError, match="the stream failed"):
        await path.check()
    stub.fail = False
    assert (await path.stream()).tokens == 3  # the broken connection was not kept
