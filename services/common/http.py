"""The platform's HTTP server: uvicorn serving services' HTTP routes inside the process's loop.

A service offers routes through `ServiceRegistration.http_routes` (the gateway's
OpenAI-compatible API under `/v1`); `start_platform` serves all of them on one `HttpServer` at
`server.http_port`, on the gRPC server's host and with its TLS, and stops it with the gRPC
server: in-flight responses (streams included) may finish within the grace period, and the
ones still running after it are cancelled.

uvicorn's `Server.serve()` is never called: it swaps the process's SIGINT and SIGTERM handlers
(those of `genai serve` and of the workers) for its own through `signal.signal`, and raises the
signals again once it stops. `HttpServer` runs the same steps itself: `startup()` on a socket
it bound, a `main_loop()` task (it refreshes the `date` header every second), `shutdown()`.
"""

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Final, Self, cast

import uvicorn
from pydantic import Field
from starlette.types import ASGIApp

from services.common.auth import Authenticator
from services.common.config import ConfigError, Settings
from services.common.server import TlsConfig

_logger = logging.getLogger(__name__)

DEFAULT_HTTP_PORT: Final = 8080
"""`server.http_port` unless set (Triton's HTTP endpoint holds 8000 on a development machine)."""
HTTP_PORT_ADVICE: Final = (
    "choose another port (server.http_port, GENAI_SERVER__HTTP_PORT, `genai serve --http-port "
    "N`), or serve no HTTP API (server.http_port: null, `genai serve --no-http`)"
)
"""What a `ConfigError` about an HTTP port that cannot be bound suggests."""
SETTLE_SECONDS: Final = 5.0
"""How long `HttpServer.stop` waits for the handlers it cancelled after the grace period to
finish (each records its request as cancelled) before it returns."""


class HttpSettings(Settings):
    """Limits of the HTTP server and of its handlers (the OpenAI-compatible API)."""

    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body accepted, in bytes (413 above it): Content-Length is "
        "checked first, then the bytes as they arrive.",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long reading a request's body may take (408 after it).",
    )
    request_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="Deadline of a request's work, as a gRPC deadline is (504 when it passes); "
        "the OpenAI SDKs' own default timeout.",
    )
    send_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long one write to a client may wait while its buffers are full: a "
        "stream to a reader that stalls longer is abandoned and its generation cancelled, so it "
        "holds a generation slot no longer.",
    )
    keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="How long an idle keep-alive connection stays open.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Connections (and requests in progress) at most; a request beyond them is "
        "answered 503 at once.",
    )


@dataclass(frozen=True)
class HttpContext:
    """What a service's HTTP routes get from the process that serves them."""

    authenticator: Authenticator
    """The process's authenticator, the gRPC auth interceptor's: the same API keys, cache,
    revocations and roles."""
    settings: HttpSettings
    """The limits of `server.http`."""
    secure: bool = False
    """Whether browsers reach it over HTTPS: the server serves TLS, or a proxy in front
    terminates it (`server.tls_terminated_upstream`). Cookies are then marked Secure."""


class HttpServer:
    """A started uvicorn server on a socket of its own; made by `start`, drained by `stop`."""

    def __init__(
        self,
        server: uvicorn.Server,
        listener: socket.socket,
        main_loop: "asyncio.Task[None]",
        *,
        url: str,
        grace: float,
    ) -> None:
        self._server = server
        self._listener = listener
        self._main_loop = main_loop
        self._grace = grace
        self._stopped = False
        self.port: int = listener.getsockname()[1]
        """The bound port (the real one when port 0 was asked for)."""
        self.url = url
        """`http://HOST:PORT` (https with TLS) that clients on this machine can reach."""

    @classmethod
    async def start(
        cls,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        tls: TlsConfig | None,
        settings: HttpSettings,
        grace: float,
        reuse_port: bool = False,
    ) -> Self:
        """Serves `app` on `host:port` (0: a free port) and returns once it accepts connections.

        `grace` is the default drain period of `stop`. With `reuse_port` the socket is bound
        with SO_REUSEPORT, so that several processes (`genai serve --workers`) serve the port
        together. A port that cannot be bound is a `ConfigError` naming `server.http_port`.
        """
        listener = await asyncio.to_thread(bind_listener, host, port, reuse_port)
        try:
            config = uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,  # the process's logging: uvicorn.error propagates to the root
                access_log=False,
                proxy_headers=False,
                server_header=False,
                http="h11",
                ws="none",
                timeout_keep_alive=settings.keep_alive_seconds,
                # uvicorn counts the connection asking too: N serves N - 1 connections
                limit_concurrency=settings.max_connections + 1,
                reset_contextvars=True,  # no context (a principal, a span) leaks into requests
                **_ssl_options(tls),
            )
            await asyncio.to_thread(config.load)  # reads the TLS files
            server = uvicorn.Server(config)
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[listener])
        except BaseException:
            listener.close()
            raise
        bound = listener.getsockname()[1]
        main_loop = asyncio.create_task(server.main_loop(), name=f"uvicorn on port {bound}")
        return cls(
            server, listener, main_loop, url=http_url(host, bound, tls=tls is not None), grace=grace
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting connections and closes idle ones; responses in flight (streams
        included) may finish within `grace` seconds (default: `start`'s), and are cancelled
        after it. Returns once their handlers have ended (`SETTLE_SECONDS` at most after the
        cancellation)."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        server.should_exit = True
        self._main_loop.cancel()
        await asyncio.wait([self._main_loop])
        # uvicorn annotates it `int | None`; it goes to asyncio.timeout, which takes any float.
        server.config.timeout_graceful_shutdown = cast(int, self._grace if grace is None else grace)
        await server.shutdown(sockets=[self._listener])
        # shutdown() cancels what outlived the grace without waiting for it: the cancelled
        # handlers still record their requests, which the services' stop hooks then flush.
        cancelled = set(server.server_state.tasks)
        if cancelled:
            _, pending = await asyncio.wait(cancelled, timeout=SETTLE_SECONDS)
            if pending:
                _logger.error("%d HTTP handlers did not end after cancellation", len(pending))
        for connection in list(server.server_state.connections):
            with contextlib.suppress(Exception):
                connection.transport.close()


def bind_listener(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket listening on `host:port` (an IPv6 wildcard also takes IPv4 where the system
    allows it). Raises `ConfigError` naming `server.http_port` when the port cannot be bound."""
    name = host.strip("[]")
    try:
        family, _, _, _, address = socket.getaddrinfo(
            name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        dualstack = (
            family == socket.AF_INET6
            and _unspecified(str(address[0]))
            and socket.has_dualstack_ipv6()
        )
        listener = socket.create_server(
            address, family=family, reuse_port=reuse_port, dualstack_ipv6=dualstack
        )
        # Accepted sockets inherit it (Linux). asyncio sets it only on sockets it sees as TCP,
        # which a `create_server` socket (proto 0) is not: without it, each small SSE write
        # waits for the client's delayed ACK, about 40 ms.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return listener
    except OSError as error:
        raise ConfigError(
            [
                f"server.http_port {port} on {host}: cannot bind it "
                f"({error.strerror or error}): {HTTP_PORT_ADVICE}"
            ]
        ) from None


def http_url(host: str, port: int, *, tls: bool = False) -> str:
    """`http://HOST:PORT` (https with `tls`) for a server on `host`, reachable from this machine:
    a wildcard host becomes 127.0.0.1."""
    name = host.strip("[]")
    if not name or _unspecified(name):
        name = "127.0.0.1"
    elif ":" in name:
        name = f"[{name}]"
    return f"{'https' if tls else 'http'}://{name}:{port}"


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _ssl_options(tls: TlsConfig | None) -> dict[str, Any]:
    """uvicorn's TLS options for the gRPC server's certificate (and client CA: mutual TLS)."""
    if tls is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(tls.certificate_chain),
        "ssl_keyfile": str(tls.private_key),
    }
    if tls.client_ca is not None:
        options["ssl_ca_certs"] = str(tls.client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
