"""Fixtures: in-process grpc.aio servers on port 0 behind the default interceptor chain."""

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.auth import AnonymousAuthenticator, Authenticator
from services.common.clients import create_channel
from services.common.grpc_types import (
    MethodHandler,
    ServerInterceptor,
)
from services.common.interceptors import default_interceptors
from services.common.server import ServiceRegistration, start_server
from services.common.validation import Validators
from tests.integration.common.harness import SERVICE, Harness, Serve, Tracing, open_policy


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts the test service with the given handlers behind the default interceptor chain."""
    harnesses: list[Harness] = []

    async def start(
        handlers: Mapping[str, MethodHandler],
        *,
        authenticator: Authenticator | None = None,
        validators: Validators | None = None,
        tracer_provider: TracerProvider | None = None,
        interceptors: Sequence[ServerInterceptor] | None = None,
        grace: float = 1.0,
    ) -> Harness:
        generic = grpc.method_handlers_generic_handler(SERVICE, dict(handlers))
        if interceptors is None:
            interceptors = default_interceptors(
                authenticator=authenticator or AnonymousAuthenticator(),
                validators=validators or Validators(),
                tracer_provider=tracer_provider or TracerProvider(),
                policy=open_policy(handlers),
            )
        server = await start_server(
            bind="127.0.0.1:0",
            registrations=[
                ServiceRegistration(
                    name=SERVICE, add_to_server=lambda s: s.add_generic_rpc_handlers((generic,))
                )
            ],
            interceptors=interceptors,
            grace=grace,
        )
        harness = Harness(server=server, channel=create_channel(server.address))
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await harness.channel.close(None)
        await harness.server.stop(0)


@pytest.fixture
def tracing() -> Tracing:
    """A tracer provider whose finished spans can be read back."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider=provider, exporter=exporter)
