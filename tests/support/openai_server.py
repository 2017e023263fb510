"""A small OpenAI-compatible chat completions server for tests: the streaming protocol of
`POST /v1/chat/completions` (server-sent events over HTTP/1.1 chunked transfer-encoding, with
keep-alive) and `GET /v1/models`, on the stdlib's asyncio streams.

It streams the tokens it is told to, at a pace, the way OpenAI and vLLM do: a role chunk, one
chunk per token, a chunk with the finish reason, a usage chunk with empty `choices` when the
request asks for it (`stream_options.include_usage`), then `data: [DONE]`. It can answer with
an HTTP error instead (with `Retry-After`), break the connection mid-stream, or send an error
event mid-stream. It records every request (headers, JSON body) and whether the client closed
the connection before the response was complete.

Structured outputs: a `response_format` is checked as OpenAI checks it (type `text`,
`json_object` or `json_schema`; a `json_schema` needs a `name` of 1 to 64 letters, digits, `_`
and `-` and an object `schema`), else 400 with `param: response_format`. A request asking for
JSON gets `Behaviour.json_tokens` when set, as a provider that decodes under the format does,
or `Behaviour.response_format_error` (a provider that cannot compile the schema).

    async with OpenAICompatibleServer(Behaviour(tokens=counted(5))) as server:
        ...  # point a backend at server.base_url
        assert server.requests[0].body["stream"] is True
"""

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

MODEL = "test-model"
"""The model the server serves unless told otherwise."""


def counted(n: int) -> tuple[str, ...]:
    """`n` tokens `tok0 `, `tok1 `, ...: their text says how many came."""
    return tuple(f"tok{i} " for i in range(n))


@dataclass
class Behaviour:
    """How the server answers the next requests (change it between requests at will)."""

    tokens: Sequence[str] = ("Hello", ",", " world", "!")
    """The tokens to stream, one chunk each; cut to the request's max_tokens."""
    replies: Sequence[Sequence[str]] = ()
    """Tokens of successive chat completions since this behaviour was set, one list each
    (consumed in order); once they are used up, `tokens`."""
    pace: float = 0.0
    """Seconds between tokens."""
    finish_reason: str | None = "stop"
    """The finish reason when every token was sent (`length` when max_tokens cut them);
    None sends no finish chunk at all (a provider that broke the protocol)."""
    stop_reason: str | None = None
    """vLLM's `stop_reason` on the finish chunk (the stop string that matched), if any."""
    usage: bool = True
    """Send the usage chunk when the request asks for it."""
    prompt_tokens: int | None = None
    """Usage's prompt_tokens; None: the words of the request's messages."""
    completion_tokens: int | None = None
    """Usage's completion_tokens; None: the tokens streamed."""
    status: int = 200
    """An HTTP status other than 200 answers every chat completion with that error."""
    error_body: Mapping[str, Any] | None = None
    """The JSON body of the error answer; None: an OpenAI-style error for the status."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """More headers of the answer, e.g. `Retry-After`."""
    break_after: int | None = None
    """Break the connection (no end of the chunked body) after this many tokens."""
    error_after: int | None = None
    """Send an error event after this many tokens, then `[DONE]`."""
    done: bool = True
    """End the stream with `data: [DONE]`."""
    multiline: bool = False
    """Spread each event's JSON over several `data:` lines, with CRLF line endings and
    comment lines in between (both are valid SSE)."""
    models: tuple[str, ...] = (MODEL,)
    """The models served: listed by `GET /models`; others get 404 `model_not_found`."""
    json_tokens: Sequence[str] | None = None
    """The tokens streamed to a request whose `response_format` asks for JSON (`json_object`
    or `json_schema`); None: `replies` and `tokens`, as for any request."""
    response_format_error: str | None = None
    """Answer a request whose `response_format` asks for JSON with a 400 carrying this message
    and `param: response_format` (a provider that cannot use the schema)."""


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: Any
    """The JSON body, None when there was none."""
    connection: int
    """Which connection (1, 2, ...) carried it."""
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client closed the connection before the response was complete."""
    disconnected_at: float | None = None
    """`time.monotonic()` when the server saw that."""
    completed: bool = False
    """Whether the whole response was sent."""


class OpenAICompatibleServer:
    """The server, on 127.0.0.1 and a free port, from `start` (or `async with`) to `stop`.

    With `api_key`, requests must carry `Authorization: Bearer <api_key>`; others get a 401
    whose message quotes the key they sent, as careless providers do.
    """

    def __init__(self, behaviour: Behaviour | None = None, *, api_key: str | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self._replies_of: Behaviour | None = None
        self._replies_used = 0
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """The base URL to configure a backend with (`http://127.0.0.1:PORT/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        """Listens on a free port."""
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def stop(self) -> None:
        """Stops listening and drops every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # the handlers see the connection end and return
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        number = self.connections
        try:
            while True:
                request = await _read_request(reader, number)
                if request is None:
                    break
                self.requests.append(request)
                keep_alive = await self._respond(request, reader, writer)
                if not keep_alive or request.headers.get("connection", "") == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _respond(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        behaviour = self.behaviour
        prefix = "/v1"
        if self.api_key is not None:
            sent = request.headers.get("authorization", "")
            if sent != f"Bearer {self.api_key}":
                key = sent.removeprefix("Bearer ")
                await _json(
                    writer,
                    401,
                    _error(f"Incorrect API key provided: {key}.", "invalid_request_error", None),
                )
                request.completed = True
                return True
        if request.method == "GET" and request.path == f"{prefix}/models":
            listed = [{"id": m, "object": "model", "owned_by": "tests"} for m in behaviour.models]
            await _json(writer, 200, {"object": "list", "data": listed})
        elif request.method == "POST" and request.path == f"{prefix}/chat/completions":
            return await self._chat_completion(request, reader, writer, behaviour)
        else:
            await _json(writer, 404, _error("Not Found", "invalid_request_error", None))
        request.completed = True
        return True

    async def _chat_completion(
        self,
        request: RecordedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        behaviour: Behaviour,
    ) -> bool:
        body = request.body if isinstance(request.body, dict) else {}
        if behaviour.status != 200:
            error = behaviour.error_body or _error(
                f"error {behaviour.status} from the test server", "server_error", None
            )
            await _json(writer, behaviour.status, error, behaviour.headers)
            request.completed = True
            return True
        model = body.get("model")
        if model not in behaviour.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            await _json(writer, 404, _error(message, "invalid_request_error", "model_not_found"))
            request.completed = True
            return True
        if body.get("stream") is not True:
            await _json(writer, 400, _error("this test server streams only", "invalid", None))
            request.completed = True
            return True
        problem = _response_format_problem(body.get("response_format"))
        if problem is None and _asks_for_json(body) and behaviour.response_format_error:
            problem = behaviour.response_format_error
        if problem is not None:
            error = _error(problem, "invalid_request_error", "invalid_value")
            error["error"]["param"] = "response_format"
            await _json(writer, 400, error)
            request.completed = True
            return True

        head = [
            "HTTP/1.1 200 OK",
            "content-type: text/event-stream; charset=utf-8",
            "cache-control: no-cache",
            "transfer-encoding: chunked",
            *(f"{name}: {value}" for name, value in behaviour.headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        watcher = asyncio.create_task(_watch(reader, request))
        try:
            return await self._stream(request, writer, behaviour, body)
        except ConnectionError:
            _disconnected(request)
            return False
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _stream(
        self,
        request: RecordedRequest,
        writer: asyncio.StreamWriter,
        behaviour: Behaviour,
        body: Mapping[str, Any],
    ) -> bool:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        max_tokens = body.get("max_tokens")
        if self._replies_of is not behaviour:  # a new behaviour: its replies start over
            self._replies_of, self._replies_used = behaviour, 0
        replies = behaviour.replies
        index, self._replies_used = self._replies_used, self._replies_used + 1
        tokens = list(replies[index] if index < len(replies) else behaviour.tokens)
        if behaviour.json_tokens is not None and _asks_for_json(body):
            tokens = list(behaviour.json_tokens)
        finish = behaviour.finish_reason
        if isinstance(max_tokens, int) and max_tokens < len(tokens) and finish is not None:
            tokens, finish = tokens[:max_tokens], "length"
        base = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }

        async def send(payload: object) -> bool:
            """Sends one event; False when the client has gone."""
            if request.disconnected.is_set():
                return False
            writer.write(_chunk(_event(payload, behaviour.multiline)))
            await writer.drain()
            return not request.disconnected.is_set()

        def chunk(delta: Mapping[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": dict(delta),
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            if finish_reason is not None and behaviour.stop_reason is not None:
                choice["stop_reason"] = behaviour.stop_reason
            payload = {**base, "choices": [choice]}
            if include_usage:
                payload["usage"] = None
            return payload

        if not await send(chunk({"role": "assistant", "content": ""})):
            return False
        for index, token in enumerate(tokens):
            if index == behaviour.break_after:
                writer.transport.abort()  # no end of the chunked body: a broken stream
                return False
            if index == behaviour.error_after:
                error = _error("the engine failed mid-stream", "internal_error", None)
                await send(error)
                await send("[DONE]")
                return await _end(writer, request)
            if index and behaviour.pace:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(request.disconnected.wait(), behaviour.pace)
            if not await send(chunk({"content": token})):
                return False
        if behaviour.break_after is not None and behaviour.break_after >= len(tokens):
            writer.transport.abort()
            return False
        if finish is not None and not await send(chunk({}, finish)):
            return False
        if include_usage and behaviour.usage:
            prompt = behaviour.prompt_tokens
            if prompt is None:
                prompt = sum(
                    len(str(m.get("content", "")).split())
                    for m in body.get("messages", [])
                    if isinstance(m, dict)
                )
            completion = behaviour.completion_tokens
            if completion is None:
                completion = len(tokens)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            if not await send({**base, "choices": [], "usage": usage}):
                return False
        if behaviour.done and not await send("[DONE]"):
            return False
        return await _end(writer, request)


_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _response_format_problem(response_format: object) -> str | None:
    """What OpenAI would refuse in a `response_format` (None: nothing, or none was sent)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        return "Invalid type for 'response_format': expected an object."
    kind = response_format.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        return f"Invalid value for 'response_format.type': {kind!r}."
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        return "Missing required parameter: 'response_format.json_schema'."
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        return "Invalid 'response_format.json_schema.name': letters, digits, _ and -, 1 to 64."
    if not isinstance(spec.get("schema"), dict):
        return "Invalid type for 'response_format.json_schema.schema': expected an object."
    return None


def _asks_for_json(body: Mapping[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


async def _read_request(reader: asyncio.StreamReader, connection: int) -> RecordedRequest | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not header:
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    body = json.loads(raw) if raw else None
    return RecordedRequest(method, path, headers, body, connection)


async def _end(writer: asyncio.StreamWriter, request: RecordedRequest) -> bool:
    """Ends the chunked body; the connection stays open for the next request."""
    request.completed = True  # from here on, the client may close the connection
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


async def _watch(reader: asyncio.StreamReader, request: RecordedRequest) -> None:
    """Waits for the client to close the connection while the response is being sent."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(1024):
            pass  # a well-behaved HTTP/1.1 client sends nothing more before the response ends
    _disconnected(request)


def _disconnected(request: RecordedRequest) -> None:
    if not request.completed and not request.disconnected.is_set():
        request.disconnected_at = time.monotonic()
        request.disconnected.set()


def _event(payload: object, multiline: bool) -> bytes:
    if isinstance(payload, str):
        text = f"data: {payload}\n\n"
    elif multiline:
        lines = json.dumps(payload, indent=1).split("\n")
        text = ": a comment\r\n" + "".join(f"data: {line}\r\n" for line in lines) + "\r\n"
    else:
        text = f"data: {json.dumps(payload)}\n\n"
    return text.encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def _json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: object,
    headers: Mapping[str, str] | None = None,
) -> None:
    data = json.dumps(payload).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
        "content-type: application/json",
        f"content-length: {len(data)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
