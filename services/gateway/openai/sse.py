"""The HTTP exchange under the OpenAI routes, on raw ASGI: a bounded body read, a watch for
the client going away, and sends that give up on a client that stops reading.

uvicorn's `send()` returns silently once the client has gone, and blocks while the transport
buffer is over its high-water mark. So:

- `read_body` refuses a body over `max_bytes` (by its Content-Length first, then by what
  arrives: 413) or slower than the body timeout (408);
- `DisconnectWatch`, started once the body is read, awaits `receive()` in a child task: on
  `http.disconnect` it cancels the handler's task, so the engine sees `CancelledError` at its
  await (or `aclose()` at its yield), records CANCELLED and cancels the backend's generation,
  as a gRPC cancel does. It covers the wait for the first token and non-streaming routes too;
- `Sender` runs every send under a timeout: a client that does not read for that long raises
  `SlowClient`, and the handler closes the generation. A stalled reader thus holds a
  generation at most the send timeout after its buffers (the transport's and the kernel's)
  fill.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final

from services.gateway.openai.errors import WireError

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

CLOSE: Final = (b"connection", b"close")
SSE_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class SlowClient(Exception):
    """A send waited past the send timeout: the client stopped reading."""


def request_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers, names in lower case (the first of repeated ones), values
    decoded as latin-1 (HTTP's)."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


async def read_body(
    receive: Receive, headers: Mapping[str, str], *, max_bytes: int, seconds: float
) -> bytes:
    """The whole request body. Raises `WireError` 413 beyond `max_bytes` (Content-Length is
    checked before anything is read), 408 when it takes longer than `seconds`, and
    `ClientGone` when the client disconnects meanwhile."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WireError("the Content-Length header is not a number", headers=(CLOSE,))
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                part = message.get("body", b"")
                size += len(part)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                parts.append(part)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise WireError(
            f"the request body did not arrive within {seconds:g} s",
            status=408,
            code="request_timeout",
            headers=(CLOSE,),
        ) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(max_bytes: int) -> WireError:
    return WireError(
        f"the request body is larger than {max_bytes:,} bytes",
        status=413,
        code="request_too_large",
    )


class DisconnectWatch:
    """Cancels the current task when the client disconnects (see the module docstring).

    Start it once the body is read, `stop()` it before the last send (uvicorn also answers
    `receive()` with `http.disconnect` once the response is complete). The handler that
    catches the `CancelledError` asks `disconnected` whether this watch caused it, and then
    `absorb()`s the cancellation to return normally."""

    __slots__ = ("_armed", "_target", "_task", "disconnected")

    def __init__(self, receive: Receive) -> None:
        target = asyncio.current_task()
        assert target is not None, "DisconnectWatch runs in a task"
        self._target = target
        self._armed = True
        self.disconnected = False
        """The client went away while the watch was armed (the task was cancelled)."""
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._armed:
            self.disconnected = True
            self._target.cancel()

    def stop(self) -> None:
        """Disarms the watch and ends its task."""
        self._armed = False
        self._task.cancel()

    def absorb(self) -> None:
        """Takes back the cancellation the watch caused, so the task goes on (and returns)."""
        self._target.uncancel()


class Sender:
    """Sends the response, every message under `timeout` seconds (`SlowClient` past it)."""

    __slots__ = ("_send", "_timeout", "started")

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        self._timeout = timeout
        self.started = False
        """The status line and headers went out."""

    async def start(self, status: int, headers: Headers) -> None:
        """Sends the status line and headers."""
        self.started = True
        await self._guarded({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = True) -> None:
        """Sends a part of the body (`more=False`: the last)."""
        await self._guarded({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(self, status: int, headers: Headers, body: bytes) -> None:
        """Sends a whole response."""
        await self.start(status, headers)
        await self.body(body, more=False)

    async def _guarded(self, message: Message) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._send(message)
        except TimeoutError:
            raise SlowClient from None
