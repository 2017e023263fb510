"""Real third-party OpenAI-compatible servers for system tests: `transformers serve` on the
prepared SmolLM2, and a proxy in front of it that makes it a server that reports no usage.

`running_transformers_serve(log_dir)` starts `transformers serve` (transformers' own server,
from `transformers[serving]`, the version the project pins) offline on a free port of
127.0.0.1, with the prepared SmolLM2 directory as its only, preloaded model, and waits until it
answers a chat completion. Requests name the model by that directory's path, exactly as given
on the command line (`TransformersServe.model`; `GET /v1/models` lists it alone). What it does,
measured on this version (transformers 5.25):

- one streamed chunk per generated token (a stream that falls behind joins the waiting texts
  into one chunk), no `data: [DONE]` at the end, and with `stream_options.include_usage` a
  last chunk with the usage and empty `choices`;
- `prompt_tokens` is the length of the chat template's rendering with the generation prompt;
  `completion_tokens` counts every generated token: the end-of-sequence token when the model
  stopped on it (whose text is empty), exactly `max_tokens` at `length`, and no end-of-sequence
  token when a stop string ended it;
- `stop` strings end the generation with finish reason `stop` (not told apart from the end of
  sequence) and the stop string itself in the output; with `--continuous-batching` they are
  ignored;
- sampling needs `do_sample` in the model's generation config, which the prepared SmolLM2 lacks:
  every request is greedy whatever its `temperature` and `seed`;
- a client that goes away cancels the generation (its `CancelOnDisconnect` middleware), with
  and without continuous batching: the process group's CPU falls from one to two cores to idle
  within a second.

`running_usage_stripping_proxy(upstream)` stands in for llama.cpp's server, which streams but
ignores `stream_options.include_usage` and so sends no usage at all. Issue 18 asks for that
server where its build fits CI's time; llama-cpp-python builds from source in about 10 minutes
on CI's 2 cores (and crashed when built natively), so the tests use `transformers serve` behind
this proxy instead. The proxy forwards `GET /v1/models` and `POST /v1/chat/completions`, drops
`stream_options` from the request, and passes the event stream through event by event as it
arrives, with every `usage` field removed and the usage-only chunk dropped. A client that goes
away closes the proxy's upstream request, so the server behind it stops too; the proxy counts
such disconnects.

Both are plain (synchronous) context managers, like `tests.support.triton.triton_server`, so
module-scoped fixtures can share them; the proxy runs its own event loop on a thread.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from benchmarks.processes import group_cpu_seconds
from tests.support.smollm2 import smollm2_dir

STARTUP_TIMEOUT = 180.0
"""Seconds `transformers serve` may take to load SmolLM2 and answer (about 20 s when idle)."""
STOP_TIMEOUT = 10.0
"""Seconds `transformers serve` gets to exit after SIGTERM before its process group is killed."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""Nothing is downloaded: the model is a local directory."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class TransformersServe:
    """A `transformers serve` started by `running_transformers_serve`."""

    process: "subprocess.Popen[bytes]"
    """The server's process, leader of a process group of its own (the model runs in a
    child process that exits with it)."""
    port: int
    model: str
    """The provider model id requests send: the model directory, as on the command line."""
    log_file: Path
    """Its stdout and stderr."""

    @property
    def base_url(self) -> str:
        """The base URL to configure a backend with (`http://127.0.0.1:PORT/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by its process group (the server, its model's process and
        their helpers)."""
        seconds = group_cpu_seconds(self.process.pid)
        assert seconds is not None, "/proc is needed to read the CPU time of a process group"
        return seconds

    def kill(self) -> None:
        """SIGKILLs its whole process group at once: the server dies without a word to its
        clients, as in a crash or an OOM kill."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log, for failure messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until_serving(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Waits until `GET /v1/models` answers and one chat completion succeeds (the first
        one after a start pays for torch's warm-up); fails the test with the end of the log
        when the server exits or does not answer in time."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"transformers serve exited with status {self.process.returncode} "
                        f"before serving; its log ({self.log_file}):\n{self.log_tail()}",
                        pytrace=False,
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/models").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    self._fail_to_start(timeout)
                time.sleep(0.25)
            warm_up = {
                "model": self.model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
            }
            left = max(deadline - time.monotonic(), 1.0)
            try:
                answer = client.post("/chat/completions", json=warm_up, timeout=left)
            except httpx.HTTPError as error:
                pytest.fail(
                    f"transformers serve did not answer its first chat completion ({error!r}); "
                    f"its log ({self.log_file}):\n{self.log_tail()}",
                    pytrace=False,
                )
            if answer.status_code != 200:
                pytest.fail(
                    f"transformers serve answered its first chat completion with HTTP "
                    f"{answer.status_code}: {answer.text[:500]}; its log:\n{self.log_tail()}",
                    pytrace=False,
                )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group after `STOP_TIMEOUT` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        # What is left of the group (its model's process, should it linger) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _fail_to_start(self, timeout: float) -> None:
        self.stop()
        pytest.fail(
            f"transformers serve did not answer within {timeout:.0f} s; its log "
            f"({self.log_file}):\n{self.log_tail()}",
            pytrace=False,
        )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_transformers_serve(
    log_dir: Path,
    model_dir: Path | None = None,
    *,
    continuous_batching: bool = False,
    wait: bool = True,
) -> Iterator[TransformersServe]:
    """`transformers serve MODEL_DIR` offline on a free port of 127.0.0.1, logging to
    `log_dir/transformers-serve.log`, stopped on exit (SIGTERM, then SIGKILL).

    `model_dir` defaults to the prepared SmolLM2 directory. With `wait` (the default) it has
    answered a chat completion when the block starts; without, the caller calls
    `wait_until_serving()` itself, e.g. after starting Triton, so that both load at once.
    """
    model = model_dir or smollm2_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "transformers-serve.log"
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--continuous-batching" if continuous_batching else "--no-continuous-batching",
    ]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **OFFLINE},
            start_new_session=True,  # a process group of its own: its CPU counted, killed whole
        )
    server = TransformersServe(process=process, port=port, model=str(model), log_file=log_file)
    try:
        if wait:
            server.wait_until_serving()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# A server that sends no usage: transformers serve behind a proxy that strips it
# --------------------------------------------------------------------------------------------


@dataclass
class ProxiedRequest:
    """One chat completion the proxy forwarded."""

    received: dict[str, Any]
    """The JSON body the client sent."""
    forwarded: dict[str, Any]
    """The body sent upstream (without `stream_options`)."""
    usage_removed: int = 0
    """How many `usage` fields the proxy took out of the answer."""
    completed: bool = False
    """Whether the whole answer went to the client."""
    client_left: bool = False
    """Whether the client went away before the answer was complete (the proxy then closed its
    upstream request)."""


@dataclass
class UsageStrippingProxy:
    """The proxy's ASGI application and what it saw; see `running_usage_stripping_proxy`."""

    upstream: str
    """The upstream base URL, e.g. `http://127.0.0.1:8000/v1`."""
    port: int = 0
    requests: list[ProxiedRequest] = field(default_factory=list)
    """Every chat completion, in arrival order (appended on the proxy's thread)."""
    _server: uvicorn.Server | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """The base URL to configure a backend with (`http://127.0.0.1:PORT/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        """Stops serving and closes the port (connections to it are then refused), e.g. to
        make a backend go away before the block ends; nothing happens the second time."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/v1/models":
            await self._models(send)
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat_completion(receive, send)
        else:
            await _respond(send, 404, b'{"error": {"message": "Not Found"}}')

    async def _models(self, send: Send) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            try:
                answer = await client.get(f"{self.upstream}/models")
            except httpx.HTTPError as error:
                await _respond(send, 502, json.dumps({"error": {"message": repr(error)}}).encode())
                return
        await _respond(send, answer.status_code, answer.content, answer.headers["content-type"])

    async def _chat_completion(self, receive: Receive, send: Send) -> None:
        received = json.loads(await _body(receive))
        forwarded = {name: value for name, value in received.items() if name != "stream_options"}
        record = ProxiedRequest(received=received, forwarded=forwarded)
        self.requests.append(record)
        timeout = httpx.Timeout(connect=10.0, read=None, write=10.0, pool=None)
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("POST", f"{self.upstream}/chat/completions", json=forwarded) as answer,
        ):
            content_type = answer.headers.get("content-type", "application/json")
            if not content_type.startswith("text/event-stream"):
                body = await answer.aread()
                with contextlib.suppress(ValueError, AttributeError):
                    payload = json.loads(body)
                    if payload.pop("usage", None) is not None:
                        record.usage_removed += 1
                        body = json.dumps(payload).encode()
                await _respond(send, answer.status_code, body, content_type)
                record.completed = True
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status_code,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            relay = asyncio.create_task(self._relay(answer, send, record))
            left = asyncio.create_task(_disconnect(receive))
            await asyncio.wait({relay, left}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                # The client went away: leaving the `async with` closes the upstream request.
                record.client_left = True
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
                return
            left.cancel()
            relay.result()  # an upstream that broke mid-stream breaks this answer too
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record.completed = True

    async def _relay(self, answer: httpx.Response, send: Send, record: ProxiedRequest) -> None:
        """Passes the upstream events on as they come, each without its usage."""
        event: list[str] = []
        async for line in answer.aiter_lines():
            if line:
                event.append(line)
                continue
            kept = _without_usage(event, record)
            event = []
            if kept is not None:
                body = ("\n".join(kept) + "\n\n").encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
        if event and (kept := _without_usage(event, record)) is not None:
            body = ("\n".join(kept) + "\n\n").encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})


def _without_usage(lines: list[str], record: ProxiedRequest) -> list[str] | None:
    """One SSE event with `usage` taken out of its JSON data; None to drop an event that
    carried usage only (empty `choices`)."""
    data = [line for line in lines if line.startswith("data:")]
    if len(data) != 1:
        return lines  # comments, [DONE] and multi-line data pass as they are
    try:
        payload = json.loads(data[0].removeprefix("data:").strip())
    except ValueError:
        return lines
    if not isinstance(payload, dict) or "usage" not in payload:
        return lines
    if payload.pop("usage") is not None:
        record.usage_removed += 1
    if not payload.get("choices"):
        return None
    return [line for line in lines if not line.startswith("data:")] + [
        f"data: {json.dumps(payload, ensure_ascii=False)}"
    ]


async def _body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body)


async def _disconnect(receive: Receive) -> None:
    """Returns when the client goes away (ASGI `http.disconnect`)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    send: Send, status: int, body: bytes, content_type: str = "application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


@contextmanager
def running_usage_stripping_proxy(upstream_base_url: str) -> Iterator[UsageStrippingProxy]:
    """The usage-stripping proxy in front of `upstream_base_url`, on a free port of 127.0.0.1,
    served by uvicorn on a thread of its own until the block ends."""
    proxy = UsageStrippingProxy(upstream=upstream_base_url.rstrip("/"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    proxy.port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            proxy,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="usage-stripping-proxy"
    )
    proxy._server, proxy._thread = server, thread
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the usage-stripping proxy did not start", pytrace=False)
            time.sleep(0.01)
        yield proxy
    finally:
        proxy.stop()
        listener.close()
