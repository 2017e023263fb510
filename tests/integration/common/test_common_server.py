"""start_server: health, reflection, graceful stop, TLS; create_channel: trace propagation."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.trace import SpanKind

from services.common.auth import AnonymousAuthenticator
from services.common.clients import ClientTlsConfig, create_channel
from services.common.interceptors import default_interceptors
from services.common.server import ServiceRegistration, TlsConfig, start_server
from services.common.validation import Validators
from tests.integration.common.harness import (
    SERVICE,
    Serve,
    Tracing,
    drain,
    read_value,
    unary_stream,
    unary_unary,
)
from tests.support.tls import make_certificates

REQUEST = StringValue(value="hello")


async def echo(request: StringValue, context: Any) -> StringValue:
    return request


async def test_health_reports_every_service_and_the_server_as_serving(serve: Serve) -> None:
    harness = await serve({"Echo": unary_unary(echo)})
    stub = health_pb2_grpc.HealthStub(harness.channel)

    for service in ["", SERVICE]:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service(serve: Serve) -> None:
    harness = await serve({"Echo": unary_unary(echo)})
    stub = reflection_pb2_grpc.ServerReflectionStub(harness.channel)

    async def list_services() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    [response] = [response async for response in stub.ServerReflectionInfo(list_services())]

    assert {service.name for service in response.list_services_response.service} == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_a_custom_reflection_replaces_the_standard_one() -> None:
    listed: list[str] = []
    server = await start_server(
        bind="127.0.0.1:0",
        registrations=[ServiceRegistration(name=SERVICE, add_to_server=lambda server: None)],
        interceptors=[],
        grace=0,
        reflection=lambda server, names: listed.extend(names),
    )
    try:
        assert listed == [
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            received, error = await drain(stub.ServerReflectionInfo(iter([])))
        assert received == []
        assert error is not None
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop()


async def test_port_zero_binds_a_free_port_and_the_address_is_dialable() -> None:
    server = await start_server(bind="[::]:0", registrations=[], interceptors=[], grace=0)
    try:
        assert server.port > 0
        assert server.address == f"localhost:{server.port}"
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop()


async def test_a_service_registered_twice_is_refused() -> None:
    registration = ServiceRegistration(name=SERVICE, add_to_server=lambda server: None)

    with pytest.raises(ValueError, match=re.escape(SERVICE)):
        await start_server(
            bind="127.0.0.1:0",
            registrations=[registration, registration],
            interceptors=[],
            grace=0,
        )


async def test_stop_reports_not_serving_then_drains_an_in_flight_stream(serve: Serve) -> None:
    release = asyncio.Event()

    async def tokens(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        yield StringValue(value="first")
        await release.wait()
        yield StringValue(value="second")

    harness = await serve({"Tokens": unary_stream(tokens), "Echo": unary_unary(echo)})
    watch = health_pb2_grpc.HealthStub(harness.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE)
    )
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stream = harness.unary_stream("Tokens")(REQUEST)
    assert await read_value(stream) == "first"

    started = time.monotonic()
    stopping = asyncio.create_task(harness.server.stop(grace=10))

    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    assert await refused(harness.unary_unary("Echo")) == grpc.StatusCode.UNAVAILABLE
    release.set()
    assert await drain(stream) == (["second"], None)
    await asyncio.wait_for(stopping, 5)
    assert time.monotonic() - started < 5


async def refused(echo_call: Any) -> grpc.StatusCode:
    """Waits until the stopping server refuses a new RPC; returns the refusal's code."""
    for _ in range(50):
        try:
            await echo_call(REQUEST, timeout=1)
        except grpc.aio.AioRpcError as error:
            return error.code()
        await asyncio.sleep(0.05)
    raise AssertionError("the stopping server still accepts new RPCs")


async def test_stop_cancels_what_is_still_running_when_the_grace_period_ends(
    serve: Serve,
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(request: StringValue, context: Any) -> StringValue:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return request

    harness = await serve({"Hang": unary_unary(hang)})
    call = harness.unary_unary("Hang")(REQUEST)
    await asyncio.wait_for(started.wait(), 5)

    began = time.monotonic()
    await asyncio.wait_for(harness.server.stop(grace=0.3), 5)

    assert 0.2 < time.monotonic() - began < 3
    await asyncio.wait_for(cancelled.wait(), 5)
    with pytest.raises(grpc.aio.AioRpcError):
        await call


async def test_channel_propagates_the_trace_to_the_server(serve: Serve, tracing: Tracing) -> None:
    harness = await serve({"Echo": unary_unary(echo)}, tracer_provider=tracing.provider)
    channel = create_channel(harness.server.address, tracer_provider=tracing.provider)
    try:
        await channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )(REQUEST)
    finally:
        await channel.close(None)

    spans = {span.kind: span for span in tracing.exporter.get_finished_spans()}
    client, server = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert client.context is not None
    assert server.context is not None
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A self-signed certificate and key for `localhost` (and one for a client), via openssl."""
    return make_certificates(tmp_path)


async def test_mutual_tls(certificates: Path) -> None:
    server = await start_server(
        bind="localhost:0",
        registrations=[],
        interceptors=default_interceptors(
            authenticator=AnonymousAuthenticator(), validators=Validators()
        ),
        tls=TlsConfig(
            certificate_chain=certificates / "server.crt",
            private_key=certificates / "server.key",
            client_ca=certificates / "client.crt",
        ),
        grace=0,
    )
    check = health_pb2.HealthCheckRequest()
    try:
        trusted = create_channel(
            server.address,
            tls=ClientTlsConfig(
                root_ca=certificates / "server.crt",
                certificate_chain=certificates / "client.crt",
                private_key=certificates / "client.key",
            ),
        )
        anonymous = create_channel(
            server.address, tls=ClientTlsConfig(root_ca=certificates / "server.crt")
        )
        async with trusted, anonymous:
            reply = await health_pb2_grpc.HealthStub(trusted).Check(check, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(anonymous).Check(check, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()
