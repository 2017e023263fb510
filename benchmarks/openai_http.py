"""The OpenAI-compatible HTTP path of `scripts/bench gateway`: streamed chat completions
(`POST /v1/chat/completions`, server-sent events) through a lean asyncio HTTP/1.1 client.

httpx spends about 0.3 ms of client CPU on a request, as much as the difference the benchmark
looks for. This client keeps one keep-alive connection per stream in flight, writes a request
whose bytes are built once, and parses the chunked transfer coding and the SSE events itself,
so that what it times is the server:

- TTFT: from writing the request to the first chunk whose delta has non-empty `content`;
- stream latency: to `data: [DONE]`;
- tokens: `usage.completion_tokens` of the usage chunk (`stream_options.include_usage`).

Opening a connection is not timed (the gRPC paths' channels connect once too). A connection
the server closed while it was idle (uvicorn's keep-alive timeout) is replaced, and a request
that found its kept-alive connection closed before any byte of the response came back is sent
once more on a new one, as HTTP clients do.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from benchmarks.inference import StreamTiming

CHAT_COMPLETIONS: Final = "/v1/chat/completions"
DONE: Final = b"data: [DONE]"
_DATA: Final = b"data: "
_DELTA_TEXT: Final = (b'"delta":{"role":"assistant","content":"', b'"delta":{"content":"')
"""How a chunk with text begins its delta (the first chunk names the role)."""
_USAGE: Final = b'"choices":[],'
"""Only the usage chunk has no choice (the finish chunk's `genai` has a `usage` too)."""
_ERROR: Final = b'data: {"error"'
_STALE: Final = (ConnectionError, asyncio.IncompleteReadError)
"""What a request on a kept-alive connection that the server has closed meets."""


class HttpStreamError(RuntimeError):
    """The server answered with another status than 200, or broke the stream's format."""


@dataclass(frozen=True)
class SseCompletion:
    """One streamed chat completion, parsed in full (`HttpSsePath.check`)."""

    headers: Mapping[str, str]
    """The response's headers, names in lower case."""
    text: str
    """The deltas' content, joined."""
    deltas: int
    """Chunks whose delta carried text."""
    finish_reason: str
    usage: Mapping[str, int]
    """The usage chunk's `usage`."""
    genai: Mapping[str, Any] = field(default_factory=dict)
    """The finish chunk's `genai` member (the `CompletionMetadata` as proto JSON)."""


def chat_request(
    host: str, port: int, body: Mapping[str, Any], headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The bytes of a `POST /v1/chat/completions` of `body` (compact JSON), with `headers`
    (e.g. the API key's `authorization`) besides Host, Content-Type and Content-Length."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        f"POST {CHAT_COMPLETIONS} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        *(f"{name}: {value}" for name, value in headers),
        f"Content-Length: {len(payload)}",
    ]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + payload


class _Connection:
    """One keep-alive HTTP/1.1 connection."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def open(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class HttpSsePath:
    """Streams chat completions from the OpenAI-compatible API at `host:port`: the same
    request each time, on a pool of keep-alive connections (one per stream in flight)."""

    def __init__(
        self,
        host: str,
        port: int,
        body: Mapping[str, Any],
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._host = host
        self._port = port
        self._request = chat_request(host, port, body, headers)
        self._idle: list[_Connection] = []
        self.connections_opened = 0
        """Connections opened so far (one per stream in flight, plus those re-opened after
        the server closed an idle one)."""

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()

    async def stream(self) -> StreamTiming:
        """One completion, timed (its text is not kept: only its chunks are recognised)."""
        connection, sent, head = await self._send()
        first = done = 0
        deltas = 0
        tokens = -1
        try:
            async for arrived, events in _sse_events(connection.reader):
                for event in events:
                    if _has_text(event):
                        deltas += 1
                        if not first:
                            first = arrived
                    elif event == DONE:
                        done = arrived
                    elif _USAGE in event:
                        tokens = json.loads(event[len(_DATA) :])["usage"]["completion_tokens"]
                    elif event.startswith(_ERROR):
                        raise HttpStreamError(f"the stream failed: {event.decode()}")
        except BaseException:
            connection.close()
            raise
        self._release(connection, head)
        if not (first and done) or tokens < 0:
            raise HttpStreamError(
                "the stream ended without text, usage or [DONE] "
                f"(text {bool(first)}, usage {tokens >= 0}, [DONE] {bool(done)})"
            )
        return StreamTiming((first - sent) / 1000, (done - sent) / 1000, tokens, deltas)

    async def check(self) -> SseCompletion:
        """One completion, every chunk parsed as JSON; raises `HttpStreamError` when the
        stream breaks the format (a chunk after `[DONE]`, no `[DONE]`, no usage chunk)."""
        connection, _sent, head = await self._send()
        parts: list[str] = []
        finish = ""
        usage: dict[str, int] = {}
        genai: dict[str, Any] = {}
        ended = False
        try:
            async for _arrived, events in _sse_events(connection.reader):
                for event in events:
                    if ended:
                        raise HttpStreamError(f"an event after [DONE]: {event!r}")
                    if event == DONE:
                        ended = True
                        continue
                    if not event.startswith(_DATA):
                        raise HttpStreamError(f"not a data event: {event!r}")
                    chunk = json.loads(event[len(_DATA) :])
                    if "error" in chunk:
                        raise HttpStreamError(f"the stream failed: {chunk['error']}")
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk["choices"]:
                        content = choice["delta"].get("content")
                        if content:
                            parts.append(content)
                        finish = choice["finish_reason"] or finish
                    genai = chunk.get("genai", genai)
        except BaseException:
            connection.close()
            raise
        self._release(connection, head)
        if not ended or not usage:
            raise HttpStreamError(f"the stream ended without [DONE] ({ended}) or usage ({usage})")
        return SseCompletion(head[1], "".join(parts), len(parts), finish, usage, genai)

    async def _send(self) -> tuple[_Connection, int, tuple[int, dict[str, str]]]:
        """Writes the request on an idle connection (a new one if none is) and reads the
        response's head: (the connection, when the request was written, (status, headers)).
        Raises `HttpStreamError` for another status than 200."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.open:
                connection.close()
                continue
            sent = time.perf_counter_ns()
            connection.writer.write(self._request)
            try:
                head = await _response_head(connection.reader)
            except _STALE:
                connection.close()  # closed by the server while idle: send it once more
                break
            return connection, sent, await _checked(connection, head)
        connection = await self._connect()
        sent = time.perf_counter_ns()
        connection.writer.write(self._request)
        try:
            head = await _response_head(connection.reader)
        except BaseException:
            connection.close()
            raise
        return connection, sent, await _checked(connection, head)

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        self.connections_opened += 1
        return _Connection(reader, writer)

    def _release(self, connection: _Connection, head: tuple[int, dict[str, str]]) -> None:
        """Keeps `connection` for the next stream, unless the server said it closes it."""
        if head[1].get("connection", "").lower() == "close" or not connection.open:
            connection.close()
        else:
            self._idle.append(connection)


def _has_text(event: bytes) -> bool:
    """Whether `event` is a chunk whose delta has non-empty content."""
    for marker in _DELTA_TEXT:
        at = event.find(marker)
        if at >= 0:
            return event[at + len(marker) : at + len(marker) + 1] != b'"'
    return False


async def _checked(
    connection: _Connection, head: tuple[int, dict[str, str]]
) -> tuple[int, dict[str, str]]:
    """`head` if it is a 200 with a chunked body; else closes `connection` and raises with
    the response's body (an OpenAI error object)."""
    status, headers = head
    if status == 200 and headers.get("transfer-encoding") == "chunked":
        return head
    parts: list[bytes] = []
    with contextlib.suppress(ValueError, OSError, TimeoutError, asyncio.IncompleteReadError):
        async with asyncio.timeout(5.0):
            if headers.get("transfer-encoding") == "chunked":
                async for part in _chunks(connection.reader):
                    parts.append(part)
            else:
                length = int(headers.get("content-length", "0"))
                parts.append(await connection.reader.readexactly(length))
    connection.close()
    body = b"".join(parts).decode(errors="replace")
    raise HttpStreamError(f"POST {CHAT_COMPLETIONS} answered {status}: {body}")


async def _response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of the response on `reader`."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(status_line.split(" ", 2)[1]), headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The parts of a body in the chunked transfer coding, as they arrive, to its end (the
    trailer is read too)."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if not size:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
                pass
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def _sse_events(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, list[bytes]]]:
    """The SSE events of a chunked response body, as they arrive: (arrival ns, the events
    completed by one chunk), to the body's end."""
    rest = b""
    async for data in _chunks(reader):
        arrived = time.perf_counter_ns()
        events = (rest + data if rest else data).split(b"\n\n")
        rest = events.pop()
        if events:
            yield arrived, events
    if rest.strip():
        raise HttpStreamError(f"the body ended inside an event: {rest!r}")
