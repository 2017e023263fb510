"""The platform's HTTP server (`services.common.http`): uvicorn inside the test's own event loop,
serving a dummy Starlette app on port 0. It leaves the process's signal handlers alone, drains
responses in flight within the grace period and cancels the rest, and a port it cannot bind is
a `ConfigError` naming the setting."""

import asyncio
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from services.common.auth import Principal, current_principal, principal_scope
from services.common.config import ConfigError
from services.common.errors import Unauthenticated
from services.common.http import HttpServer, HttpSettings, bind_listener, http_url
from services.common.server import TlsConfig
from tests.support.tls import make_certificates


class Dummy:
    """A Starlette app whose `/slow` streams `chunks` chunks `interval` seconds apart, and
    records how each of its streams ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.ended: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/hello", self.hello),
                Route("/slow", self.slow),
                Route("/principal", self.principal),
            ]
        )

    async def hello(self, request: Request) -> Response:
        return PlainTextResponse("hello")

    async def principal(self, request: Request) -> Response:
        try:
            return PlainTextResponse(current_principal().subject)
        except Unauthenticated:
            return PlainTextResponse("none")

    async def slow(self, request: Request) -> Response:
        chunks = int(request.query_params.get("chunks", "5"))
        interval = float(request.query_params.get("interval", "0.1"))

        async def body() -> AsyncIterator[bytes]:
            self.started.set()
            try:
                for index in range(chunks):
                    yield f"chunk {index}\n".encode()
                    await asyncio.sleep(interval)
            except asyncio.CancelledError:
                self.ended.append("cancelled")
                raise
            self.ended.append("complete")

        return StreamingResponse(body(), media_type="text/plain")


@pytest.fixture
def dummy() -> Dummy:
    return Dummy()


async def _start(dummy: Dummy, *, grace: float = 5.0, **settings: int) -> HttpServer:
    return await HttpServer.start(
        dummy.app,
        host="127.0.0.1",
        port=0,
        tls=None,
        settings=HttpSettings.model_validate(settings),
        grace=grace,
    )


@pytest.fixture
async def server(dummy: Dummy) -> AsyncIterator[HttpServer]:
    running = await _start(dummy)
    yield running
    await running.stop(grace=0)


async def _until_refused(port: int, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        writer.close()
        assert time.monotonic() < deadline, f"port {port} still accepts connections"
        await asyncio.sleep(0.01)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_serves_the_app_on_a_free_port_until_stopped(dummy: Dummy) -> None:
    server = await _start(dummy)
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/hello")
        assert (response.status_code, response.text) == (200, "hello")
        assert "server" not in response.headers  # no version banner
        assert "date" in response.headers
        assert (await client.get("/nowhere")).status_code == 404
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.0  # nothing in flight: no wait for the grace
    assert _refused(server.port)
    await server.stop()  # a second stop does nothing


@pytest.fixture
def handlers() -> Iterator[tuple[object, object]]:
    """Marks SIGINT and SIGTERM with handlers of the test's own, restored afterwards."""

    def mine(signum: int, frame: object) -> None:
        raise AssertionError(f"signal {signum} reached the test's handler")

    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    yield signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_accepted_connections_send_small_writes_at_once() -> None:
    """TCP_NODELAY on the listener reaches every accepted socket: an SSE chunk does not wait
    for the client's delayed ACK (about 40 ms a chunk without it)."""
    listener = bind_listener("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()[:2]):
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_the_process_signal_handlers_stay_in_place(
    dummy: Dummy, handlers: tuple[object, object]
) -> None:
    server = await _start(dummy)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/hello")).status_code == 200
    await server.stop()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


async def test_a_stream_in_flight_finishes_within_the_grace(dummy: Dummy) -> None:
    server = await _start(dummy)
    async with httpx.AsyncClient(base_url=server.url) as client:

        async def read_stream() -> str:
            response = await client.get("/slow", params={"chunks": 6, "interval": 0.1})
            return response.text

        reading = asyncio.create_task(read_stream())
        await dummy.started.wait()
        stopping = asyncio.create_task(server.stop(grace=5))
        await _until_refused(server.port)  # no new connections while draining
        assert not stopping.done()
        text = await reading
        await stopping
    assert text == "".join(f"chunk {i}\n" for i in range(6))
    assert dummy.ended == ["complete"]


async def test_a_stream_outliving_the_grace_is_cancelled_before_stop_returns(
    dummy: Dummy,
) -> None:
    server = await _start(dummy)
    received: list[bytes] = []

    async def read_stream() -> None:
        async with httpx.AsyncClient(base_url=server.url) as client:
            params = {"chunks": 1000, "interval": 0.05}
            async with client.stream("GET", "/slow", params=params) as response:
                async for chunk in response.aiter_bytes():
                    received.append(chunk)

    reading = asyncio.create_task(read_stream())
    await dummy.started.wait()
    started = time.monotonic()
    await server.stop(grace=0.5)
    took = time.monotonic() - started
    assert dummy.ended == ["cancelled"]  # the handler ended before stop returned
    assert 0.5 <= took < 3.0
    with pytest.raises(httpx.HTTPError):  # cut short: the chunked body never ended
        await asyncio.wait_for(reading, 5)
    assert received


async def test_idle_keep_alive_connections_do_not_hold_the_stop(dummy: Dummy) -> None:
    server = await _start(dummy)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/hello")).status_code == 200  # the connection stays open
        started = time.monotonic()
        await server.stop(grace=10)
        assert time.monotonic() - started < 1.0


async def test_requests_start_without_the_starting_task_s_context(dummy: Dummy) -> None:
    with principal_scope(Principal(tenant_id="t", subject="the-starter")):
        server = await _start(dummy)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/principal")).text == "none"
    finally:
        await server.stop()


async def test_connections_beyond_the_limit_are_answered_503(dummy: Dummy) -> None:
    server = await _start(dummy, max_connections=1)
    try:
        async with httpx.AsyncClient(base_url=server.url) as first:
            async with first.stream("GET", "/slow", params={"chunks": 20}) as streaming:
                assert streaming.status_code == 200
                async with httpx.AsyncClient(base_url=server.url) as second:
                    assert (await second.get("/hello")).status_code == 503
    finally:
        await server.stop(grace=0)


@pytest.mark.parametrize("reuse_port", [False, True])
async def test_a_port_in_use_is_a_config_error_naming_the_setting(
    server: HttpServer, reuse_port: bool
) -> None:
    with pytest.raises(ConfigError) as raised:
        await HttpServer.start(
            Dummy().app,
            host="127.0.0.1",
            port=server.port,
            tls=None,
            settings=HttpSettings(),
            grace=0,
            reuse_port=reuse_port,  # sharing needs SO_REUSEPORT on both sockets
        )
    (problem,) = raised.value.problems
    assert problem.startswith(f"server.http_port {server.port} on 127.0.0.1: cannot bind it")
    assert "Address already in use" in problem
    assert "--http-port" in problem
    assert "--no-http" in problem


async def test_with_reuse_port_several_servers_share_the_port(dummy: Dummy) -> None:
    first = await HttpServer.start(
        dummy.app,
        host="127.0.0.1",
        port=0,
        tls=None,
        settings=HttpSettings(),
        grace=0,
        reuse_port=True,
    )
    second = await HttpServer.start(
        dummy.app,
        host="127.0.0.1",
        port=first.port,
        tls=None,
        settings=HttpSettings(),
        grace=0,
        reuse_port=True,
    )
    try:
        assert second.port == first.port
        await first.stop()
        async with httpx.AsyncClient(base_url=second.url) as client:
            assert (await client.get("/hello")).text == "hello"  # the other one serves on
    finally:
        await first.stop()
        await second.stop()


async def test_serves_tls_with_the_grpc_servers_files_client_certificates_included(
    dummy: Dummy, tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path)
    server = await HttpServer.start(
        dummy.app,
        host="localhost",
        port=0,
        tls=TlsConfig(
            certificate_chain=certificates / "server.crt",
            private_key=certificates / "server.key",
            client_ca=certificates / "client.crt",
        ),
        settings=HttpSettings(),
        grace=0,
    )
    try:
        assert server.url.startswith("https://localhost:")
        trusted = ssl.create_default_context(cafile=certificates / "server.crt")
        async with httpx.AsyncClient(base_url=server.url, verify=trusted) as anonymous:
            with pytest.raises(httpx.TransportError):  # no client certificate
                await anonymous.get("/hello")
        trusted.load_cert_chain(certificates / "client.crt", certificates / "client.key")
        async with httpx.AsyncClient(base_url=server.url, verify=trusted) as client:
            assert (await client.get("/hello")).text == "hello"
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("host", "tls", "url"),
    [
        ("127.0.0.1", False, "http://127.0.0.1:8080"),
        ("0.0.0.0", False, "http://127.0.0.1:8080"),
        ("::", False, "http://127.0.0.1:8080"),
        ("[::]", False, "http://127.0.0.1:8080"),
        ("", False, "http://127.0.0.1:8080"),
        ("::1", False, "http://[::1]:8080"),
        ("[::1]", True, "https://[::1]:8080"),
        ("gateway.internal", True, "https://gateway.internal:8080"),
    ],
)
def test_the_url_is_one_this_machine_can_reach(host: str, tls: bool, url: str) -> None:
    assert http_url(host, 8080, tls=tls) == url
