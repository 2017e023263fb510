"""The platform's HTTP server in-process: `start_platform` serves the hosted services' HTTP routes
(here a dummy route added to the gateway's registration) on `server.http_port`, hands them the
process's authenticator, drains them before the services stop, and cleans up when the port
cannot be bound."""

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from services.common.auth import AnonymousAuthenticator
from services.common.config import ConfigError
from services.common.http import HttpContext
from services.common.server import ServiceRegistration
from services.gateway import server as gateway_server
from services.platform.runner import start_platform
from services.platform.settings import PlatformSettings
from tests.support.settings import inference_without_triton, router_without_triton


def _settings(**server: Any) -> PlatformSettings:
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "server": {"port": 0, "grace_seconds": 5, **server},
            "inference": inference_without_triton(),
            "router": router_without_triton(),
        }
    )


class DummyRoutes:
    """HTTP routes the gateway's registration gets in these tests, and what happened to them."""

    def __init__(self) -> None:
        self.contexts: list[HttpContext] = []
        self.events: list[str] = []
        self.streaming = asyncio.Event()

    def routes(self, context: HttpContext) -> list[BaseRoute]:
        self.contexts.append(context)
        return [Route("/v1/ping", self.ping), Route("/v1/slow", self.slow)]

    async def ping(self, request: Request) -> Response:
        return PlainTextResponse("pong")

    async def slow(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            self.streaming.set()
            for index in range(8):
                yield f"data: {index}\n\n".encode()
                await asyncio.sleep(0.1)
            self.events.append("stream complete")

        return StreamingResponse(body(), media_type="text/event-stream")

    def wrap(self, original: Callable[..., ServiceRegistration]) -> Callable[..., Any]:
        def registration(**kwargs: Any) -> ServiceRegistration:
            made = original(**kwargs)
            stop = made.stop

            async def stopped() -> None:
                self.events.append("gateway stopped")
                if stop is not None:
                    await stop()

            return dataclasses.replace(made, http_routes=self.routes, stop=stopped)

        return registration


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch) -> DummyRoutes:
    routes = DummyRoutes()
    monkeypatch.setattr(gateway_server, "registration", routes.wrap(gateway_server.registration))
    return routes


async def test_serves_the_routes_on_a_free_port_with_the_process_authenticator(
    dummy: DummyRoutes,
) -> None:
    authenticator = AnonymousAuthenticator("acme", "ann")
    platform = await start_platform(_settings(), authenticator=authenticator)
    try:
        assert platform.http is not None
        assert platform.http_port == platform.http.port
        assert platform.http_port not in (0, 8080)
        async with httpx.AsyncClient(base_url=platform.http.url) as client:
            response = await client.get("/v1/ping")
        assert (response.status_code, response.text) == (200, "pong")
        (context,) = dummy.contexts
        assert context.authenticator is authenticator
        assert context.settings == _settings().server.http
    finally:
        await platform.stop(grace=0)


async def test_no_http_server_when_the_port_is_null_or_no_service_has_routes(
    dummy: DummyRoutes,
) -> None:
    platform = await start_platform(_settings(http_port=None))
    try:
        assert (platform.http, platform.http_port) == (None, None)
        assert dummy.contexts == []  # the routes are not even made
    finally:
        await platform.stop(grace=0)
    prompt_only = _settings().model_copy(update={"services": ("prompt",)})
    platform = await start_platform(prompt_only)
    try:
        assert platform.http_port is None
    finally:
        await platform.stop(grace=0)


async def test_stop_drains_streams_before_the_services_stop(dummy: DummyRoutes) -> None:
    platform = await start_platform(_settings())
    assert platform.http is not None
    async with httpx.AsyncClient(base_url=platform.http.url) as client:
        reading = asyncio.create_task(client.get("/v1/slow"))
        await dummy.streaming.wait()
        await platform.stop(grace=5)
        response = await reading
    assert response.text == "".join(f"data: {i}\n\n" for i in range(8))
    assert dummy.events == ["stream complete", "gateway stopped"]


async def test_an_http_port_in_use_fails_the_start_and_frees_the_grpc_port(
    dummy: DummyRoutes,
) -> None:
    with socket.socket() as grpc_port, socket.socket() as taken:
        grpc_port.bind(("127.0.0.1", 0))
        port = grpc_port.getsockname()[1]
        grpc_port.close()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            await start_platform(_settings(port=port, http_port=http_port))
        (problem,) = raised.value.problems
        assert problem.startswith(f"server.http_port {http_port} on 127.0.0.1: cannot bind it")
        assert dummy.events == ["gateway stopped"]  # the started services were stopped
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # the gRPC server let its port go
