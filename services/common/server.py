"""Builds, starts and stops a grpc.aio server the same way for every service.

Each server gets the given interceptor chain (see `default_interceptors`), the standard health
service (every registered service SERVING, plus the overall `""`), and server reflection
(v1alpha, which grpcurl uses) listing every service.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # stubs lag
from grpc_reflection.v1alpha import reflection as grpc_reflection

from services.common.grpc_types import ServerInterceptor

if TYPE_CHECKING:  # a type only: the gRPC server needs no uvicorn
    from services.common.http import HttpContext

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest message a server accepts or sends (long prompts and completions fit easily)."""

SERVER_OPTIONS: Final[Sequence[tuple[str, int]]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Accept the keepalive pings of `clients.create_channel` (every 30 s, also when idle)
    # instead of closing the connection with "too many pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Close each connection after about 5 minutes (GOAWAY; gRPC adds +-10 % jitter), letting
    # its calls finish for up to 15 more: clients then reconnect and resolve `dns:///` targets
    # again, so replicas added behind a headless Service (a scale-out) get their share of the
    # calls instead of none until some connection breaks. Long-lived watch streams resume.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 900_000),
)


@dataclass(frozen=True)
class ServiceRegistration:
    """One service to serve: its full proto name and how to add its servicer to a server.

    `name` is e.g. `"genai.prompt.v1.PromptService"`; `add_to_server` is typically a lambda
    around the generated `add_<Service>Servicer_to_server(servicer, server)`.
    """

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]
    start: Callable[[], Awaitable[None]] | None = None
    """Runs before the server serves (e.g. migrating a database); failing aborts start-up."""
    stop: Callable[[], Awaitable[None]] | None = None
    """Runs after the server has stopped serving (e.g. closing database connections)."""
    servicer: object | None = None
    """The servicer instance, for callers in the same process (`services.common.local`)."""
    http_routes: "Callable[[HttpContext], Sequence[Any]] | None" = None
    """The service's HTTP routes (Starlette `BaseRoute`s), made once at start with the
    process's `HttpContext`; the platform serves every service's routes on one HTTP server at
    `server.http_port` (`services.common.http`)."""


ReflectionRegistrar = Callable[[grpc.aio.Server, Sequence[str]], None]
"""Adds a server reflection service listing the given service names to a server."""


def enable_standard_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """grpcio-reflection's v1alpha servicer, answering from the default descriptor pool."""
    grpc_reflection.enable_server_reflection(service_names, server)


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS from PEM files; with `client_ca` clients must present a certificate it signed."""

    certificate_chain: Path
    private_key: Path
    client_ca: Path | None = None


class RunningServer:
    """A started server: where it listens, and how to stop it gracefully."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: Any,  # grpc_health.v1.health.aio.HealthServicer (untyped)
        *,
        port: int,
        address: str,
        grace: float,
        names: Sequence[str] = (),
    ) -> None:
        self._server = server
        self._health = health_servicer
        self._names = tuple(names)
        self._grace = grace
        self.port = port
        """The bound port (the real one when the bind address asked for port 0)."""
        self.address = address
        """A `host:port` target that clients on this machine can dial."""

    async def set_serving(self, serving: bool) -> None:
        """Reports every service (and the overall `""`) SERVING or NOT_SERVING to health
        checks, without stopping: balancing clients send new calls elsewhere while it is not
        serving."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [*self._names, health.OVERALL_HEALTH]:
            await self._health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING to health checks, then stops.

        New RPCs are refused at once; in-flight RPCs may finish within `grace` seconds (default:
        the grace given to `start_server`) and are cancelled after it.
        """
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace if grace is None else grace)

    async def wait_for_termination(self) -> None:
        """Returns once the server has stopped."""
        await self._server.wait_for_termination()


async def start_server(
    *,
    bind: str,
    registrations: Sequence[ServiceRegistration],
    interceptors: Sequence[ServerInterceptor],
    tls: TlsConfig | None = None,
    grace: float,
    reflection: ReflectionRegistrar = enable_standard_reflection,
) -> RunningServer:
    """Starts a server on `bind` (`"[::]:50051"`; port 0 picks a free port) and returns it.

    `grace` is the default drain period, in seconds, of `RunningServer.stop`. `reflection`
    adds the reflection service; pass another registrar to replace grpcio-reflection's, e.g.
    by one that serves the contract's comments.
    """
    names = [registration.name for registration in registrations]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"services registered twice: {', '.join(duplicates)}")

    server = grpc.aio.server(interceptors=list(interceptors), options=list(SERVER_OPTIONS))
    for registration in registrations:
        registration.add_to_server(server)

    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*names, health.OVERALL_HEALTH]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection(server, [*names, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME])

    if tls is None:
        port = server.add_insecure_port(bind)
    else:
        credentials = await asyncio.to_thread(_server_credentials, tls)
        port = server.add_secure_port(bind, credentials)
    await server.start()
    return RunningServer(
        server,
        health_servicer,
        port=port,
        address=_dialable(bind, port),
        grace=grace,
        names=names,
    )


def _server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    key_and_chain = (tls.private_key.read_bytes(), tls.certificate_chain.read_bytes())
    client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [key_and_chain], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _dialable(bind: str, port: int) -> str:
    host = bind.rpartition(":")[0]
    if host in ("", "[::]", "0.0.0.0"):
        host = "localhost"
    return f"{host}:{port}"
