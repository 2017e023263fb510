"""The trivial service the overhead benchmarks call, served bare or the platform's way.

The service is declared with gRPC's generic handler API and `StringValue` messages, so it needs
no generated code and does no work of its own: `Echo` (unary) returns its request; `Stream`
(server streaming) answers with a fixed number of small messages. What a call then costs is the
serving path itself.

Variants:
- `direct`: a bare `grpc.aio.server` with the platform's server options and no interceptors.
- `platform`: `services.common.server.start_server` with `default_interceptors` (tracing by an
  SDK `TracerProvider` without exporter, as `configure_tracing` builds by default, anonymous
  auth, error mapping, and a validator on each method that finds nothing), plus the health and
  reflection services every platform server has.

As a process (`python -m benchmarks.echo --variant platform`) it prints one JSON line,
`{"port": N, "pid": N}`, once it serves, and stops when its standard input closes.
"""

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import StringValue

from services.common.auth import AnonymousAuthenticator
from services.common.errors import FieldViolation
from services.common.grpc_types import MethodHandler, ServicerContext
from services.common.interceptors import default_interceptors
from services.common.policy import Role, Rule
from services.common.server import SERVER_OPTIONS, ServiceRegistration, start_server
from services.common.telemetry import configure_tracing
from services.common.validation import Validators

SERVICE: Final = "benchmarks.echo.v1.EchoService"
ECHO_METHOD: Final = f"/{SERVICE}/Echo"
STREAM_METHOD: Final = f"/{SERVICE}/Stream"
DEFAULT_STREAM_MESSAGES: Final = 16
BIND: Final = "127.0.0.1:0"
"""Loopback IPv4 for every variant, so that name resolution never differs between them."""


class Variant(StrEnum):
    """How the echo service is served."""

    DIRECT = "direct"
    PLATFORM = "platform"


def handlers(stream_messages: int = DEFAULT_STREAM_MESSAGES) -> dict[str, MethodHandler]:
    """The echo service's method handlers, by method name."""
    replies = [StringValue(value=f"token-{index}") for index in range(stream_messages)]

    async def echo(request: StringValue, context: ServicerContext) -> StringValue:
        return request

    async def stream(request: StringValue, context: ServicerContext) -> AsyncIterator[StringValue]:
        for reply in replies:
            yield reply

    serializers: dict[str, Any] = {
        "request_deserializer": StringValue.FromString,
        "response_serializer": StringValue.SerializeToString,
    }
    return {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, **serializers),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, **serializers),
    }


def _finds_nothing(request: object) -> Iterable[FieldViolation]:
    """A validator that accepts every request: the validation layer's own cost, no checks."""
    return ()


@dataclass
class EchoServer:
    """A started echo server: its port, and how to stop it."""

    port: int
    stop: Callable[[], Awaitable[None]]


async def start_echo_server(
    variant: Variant, *, stream_messages: int = DEFAULT_STREAM_MESSAGES
) -> EchoServer:
    """Starts the echo service on a free loopback port, served as `variant` says."""
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers(stream_messages))
    if variant is Variant.DIRECT:
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        server.add_generic_rpc_handlers((generic,))
        port = server.add_insecure_port(BIND)
        await server.start()

        async def stop_direct() -> None:
            await server.stop(0.5)

        return EchoServer(port=port, stop=stop_direct)

    provider = configure_tracing("bench-echo", env={})
    validators = Validators({ECHO_METHOD: _finds_nothing, STREAM_METHOD: _finds_nothing})
    running = await start_server(
        bind=BIND,
        registrations=[
            ServiceRegistration(SERVICE, lambda s: s.add_generic_rpc_handlers((generic,)))
        ],
        interceptors=default_interceptors(
            authenticator=AnonymousAuthenticator(),
            validators=validators,
            tracer_provider=provider,
            policy={
                method.removeprefix("/"): Rule(Role.MEMBER)
                for method in (ECHO_METHOD, STREAM_METHOD)
            },
        ),
        grace=0.5,
    )

    async def stop_platform() -> None:
        await running.stop()
        provider.shutdown()

    return EchoServer(port=running.port, stop=stop_platform)


async def serve(variant: Variant, stream_messages: int) -> None:
    """Serves until standard input closes (the benchmark closes it, or the benchmark died)."""
    server = await start_echo_server(variant, stream_messages=stream_messages)
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    try:
        await asyncio.to_thread(sys.stdin.buffer.read)
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.echo", description="Serve the benchmarks' echo service."
    )
    parser.add_argument("--variant", type=Variant, choices=list(Variant), required=True)
    parser.add_argument("--stream-messages", type=int, default=DEFAULT_STREAM_MESSAGES)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.variant, args.stream_messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
