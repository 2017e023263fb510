"""The test service of the shared runtime's tests and a client harness for it.

The test service is declared with the generic handler API and `StringValue` messages, so these
tests depend on no generated project code.
"""

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.auth import Authenticator
from services.common.grpc_types import (
    MethodHandler,
    ServerInterceptor,
    StreamStreamMultiCallable,
    StreamUnaryMultiCallable,
    UnaryStreamMultiCallable,
    UnaryUnaryMultiCallable,
)
from services.common.policy import Role, Rule
from services.common.server import RunningServer
from services.common.validation import Validators

SERVICE = "test.common.v1.TestService"


def open_policy(handlers: Mapping[str, Any]) -> dict[str, Rule]:
    """An access policy that lets any caller call the test service's methods (these tests are
    about the other layers; the access layer has tests of its own)."""
    return {f"{SERVICE}/{name}": Rule(Role.NONE) for name in handlers}


_SERIALIZERS: dict[str, Any] = {
    "request_deserializer": StringValue.FromString,
    "response_serializer": StringValue.SerializeToString,
}


def unary_unary(behaviour: Callable[..., Any]) -> MethodHandler:
    return grpc.unary_unary_rpc_method_handler(behaviour, **_SERIALIZERS)


def unary_stream(behaviour: Callable[..., Any]) -> MethodHandler:
    return grpc.unary_stream_rpc_method_handler(behaviour, **_SERIALIZERS)


def stream_unary(behaviour: Callable[..., Any]) -> MethodHandler:
    return grpc.stream_unary_rpc_method_handler(behaviour, **_SERIALIZERS)


def stream_stream(behaviour: Callable[..., Any]) -> MethodHandler:
    return grpc.stream_stream_rpc_method_handler(behaviour, **_SERIALIZERS)


async def drain(
    call: AsyncIterable[StringValue],
) -> tuple[list[str], grpc.aio.AioRpcError | None]:
    """Reads a response stream to its end: the values received, and the error it ended with."""
    received: list[str] = []
    try:
        async for message in call:
            received.append(message.value)
    except grpc.aio.AioRpcError as error:
        return received, error
    return received, None


async def read_value(call: grpc.aio.UnaryStreamCall[Any, Any]) -> str:
    """Reads the next message of a response stream; fails at the end of the stream."""
    message = await call.read()
    assert isinstance(message, StringValue), f"expected a message, got {message!r}"
    return message.value


def method(name: str) -> str:
    """The full gRPC method name of `name` in the test service."""
    return f"/{SERVICE}/{name}"


@dataclass
class Harness:
    """A running test server and a channel to it."""

    server: RunningServer
    channel: grpc.aio.Channel

    def unary_unary(self, name: str) -> UnaryUnaryMultiCallable:
        return self.channel.unary_unary(
            method(name),
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )

    def unary_stream(self, name: str) -> UnaryStreamMultiCallable:
        return self.channel.unary_stream(
            method(name),
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )

    def stream_unary(self, name: str) -> StreamUnaryMultiCallable:
        return self.channel.stream_unary(
            method(name),
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )

    def stream_stream(self, name: str) -> StreamStreamMultiCallable:
        return self.channel.stream_stream(
            method(name),
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )


class Serve(Protocol):
    """The `serve` fixture: starts the test service with `handlers`; returns a harness."""

    def __call__(
        self,
        handlers: Mapping[str, MethodHandler],
        *,
        authenticator: Authenticator | None = None,
        validators: Validators | None = None,
        tracer_provider: TracerProvider | None = None,
        interceptors: Sequence[ServerInterceptor] | None = None,
        grace: float = 1.0,
    ) -> Awaitable[Harness]: ...


@dataclass
class Tracing:
    """A tracer provider and the exporter that keeps its finished spans."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
