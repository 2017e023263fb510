"""The embedded platform in-process: every service on one server, reached over real gRPC."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common import reasons
from services.common.config import ConfigError
from services.common.contract import contract_digest, contract_services
from services.common.reasons import ERROR_DOMAIN
from services.common.status import error_details
from services.platform.runner import SERVICE_NAMES, Platform, platform_version, start_platform
from services.platform.settings import PlatformSettings, ServerSettings
from tests.support.settings import inference_without_triton, router_without_triton
from tests.support.tls import make_certificates


def _settings(**fields: object) -> PlatformSettings:
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "server": ServerSettings(port=0),
            "inference": inference_without_triton(),
            "router": router_without_triton(),
            **fields,
        }
    )


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    running = await start_platform(_settings())
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(platform: Platform) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(platform.address) as channel:
        yield channel


async def test_hosts_all_six_services_with_health(
    platform: Platform, channel: grpc.aio.Channel
) -> None:
    assert set(platform.hosted_services) == set(SERVICE_NAMES.values())
    health = health_pb2_grpc.HealthStub(channel)
    for service in [*SERVICE_NAMES.values(), ""]:
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    listed = {s.name for s in response.list_services_response.service}
    assert listed == {
        *SERVICE_NAMES.values(),
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_server_info_reports_version_contract_and_healthy_dependencies(
    platform: Platform, channel: grpc.aio.Channel
) -> None:
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    info = await stub.GetServerInfo(gateway_service_pb2.GetServerInfoRequest(), timeout=5)

    assert info.version == platform_version()
    assert info.contract_digest == contract_digest()
    assert len(info.contract_digest) == 64
    assert list(info.hosted_services) == sorted(SERVICE_NAMES.values())
    assert info.uptime.ToTimedelta().total_seconds() >= 0
    assert info.start_time.seconds > 0
    by_service = {d.service: d for d in info.dependencies}
    assert set(by_service) == set(SERVICE_NAMES.values()) - {"genai.gateway.v1.GatewayService"}
    for dependency in by_service.values():
        assert dependency.status == "SERVING", dependency
        assert dependency.target == platform.address


async def test_split_deployment_reaches_dependencies_by_configured_address() -> None:
    prompt_only = await start_platform(_settings(services=("prompt",)))
    gateway_only = await start_platform(
        _settings(services=("gateway",), gateway={"targets": {"prompt": prompt_only.address}})
    )
    try:
        async with grpc.aio.insecure_channel(gateway_only.address) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            info = await stub.GetServerInfo(gateway_service_pb2.GetServerInfoRequest(), timeout=5)
        statuses = {d.service: (d.status, d.target) for d in info.dependencies}
        assert statuses["genai.prompt.v1.PromptService"] == ("SERVING", prompt_only.address)
        # Not hosted here and no address configured: reported, not guessed.
        assert statuses["genai.router.v1.RouterService"] == ("UNREACHABLE", "")
        assert list(info.hosted_services) == ["genai.gateway.v1.GatewayService"]
    finally:
        await gateway_only.stop(grace=0)
        await prompt_only.stop(grace=0)


async def test_a_configured_address_that_hosts_something_else_is_service_unknown() -> None:
    router_only = await start_platform(_settings(services=("router",)))
    gateway_only = await start_platform(
        _settings(services=("gateway",), gateway={"targets": {"prompt": router_only.address}})
    )
    try:
        async with grpc.aio.insecure_channel(gateway_only.address) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            info = await stub.GetServerInfo(gateway_service_pb2.GetServerInfoRequest(), timeout=5)
        statuses = {d.service: d.status for d in info.dependencies}
        assert statuses["genai.prompt.v1.PromptService"] == "SERVICE_UNKNOWN"
    finally:
        await gateway_only.stop(grace=0)
        await router_only.stop(grace=0)


def _methods() -> list[MethodDescriptor]:
    return [m for s in contract_services() for m in s.methods]


@pytest.mark.parametrize("method", _methods(), ids=lambda m: m.full_name)
async def test_every_contract_rpc_is_built_and_answers_an_empty_request_precisely(
    channel: grpc.aio.Channel, method: MethodDescriptor
) -> None:
    """No RPC of the contract answers UNIMPLEMENTED any more, and an empty request (which is
    invalid for most of them) never gets UNKNOWN or INTERNAL: either a real answer or a
    precise status with the platform's ErrorInfo."""
    full_method = f"/{method.containing_service.full_name}/{method.name}"
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    if method.server_streaming:
        stream = channel.unary_stream(
            full_method,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )

        async def call() -> None:
            async for _ in stream(request_class(), timeout=5):
                return  # a stream that answers (WatchLabels' snapshot) is built

    else:
        unary = channel.unary_unary(
            full_method,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )

        async def call() -> None:
            await unary(request_class(), timeout=5)

    try:
        await call()
    except grpc.aio.AioRpcError as raised:
        error = error_details(raised)
        assert error.code not in (
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), (full_method, error)
        assert error.domain == ERROR_DOMAIN, (full_method, error)


async def test_tls_end_to_end_with_the_embedded_services_calling_each_other(
    tmp_path: Path,
) -> None:
    certificates = make_certificates(tmp_path)
    server_certificate = str(certificates / "server.crt")
    platform = await start_platform(
        _settings(
            server={
                "port": 0,
                "host": "localhost",
                "tls_certificate_file": server_certificate,
                "tls_private_key_file": str(certificates / "server.key"),
            },
            clients={"tls": True, "tls_ca_file": server_certificate},
        )
    )
    try:
        root = await asyncio.to_thread(Path(server_certificate).read_bytes)
        credentials = grpc.ssl_channel_credentials(root)
        async with grpc.aio.secure_channel(platform.address, credentials) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            info = await stub.GetServerInfo(gateway_service_pb2.GetServerInfoRequest(), timeout=5)
        assert {d.status for d in info.dependencies} == {"SERVING"}

        async with grpc.aio.insecure_channel(platform.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway_service_pb2_grpc.GatewayServiceStub(plaintext).GetServerInfo(
                    gateway_service_pb2.GetServerInfoRequest(), timeout=5
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await platform.stop(grace=0)


@pytest.mark.parametrize(
    "raw",
    [
        # GenerateStreamRequest{model: "m", text: "hi", parameters: {stop: [b"\xff\xfe"]}}
        b"\x0a\x01m\x1a\x02hi\x2a\x04\x2a\x02\xff\xfe",
        # a length prefix that runs past the end of the message
        b"\x0a\x7fm",
    ],
    ids=["invalid-utf8-in-a-string", "truncated"],
)
async def test_a_request_that_does_not_parse_is_invalid_argument_not_unknown(
    channel: grpc.aio.Channel, raw: bytes
) -> None:
    call = channel.unary_stream(
        "/genai.inference.v1.InferenceService/GenerateStream",
        request_serializer=lambda message: message,
        response_deserializer=lambda message: message,
    )

    async def consume() -> None:
        async for _ in call(raw, timeout=5):
            pytest.fail("an unparseable request got a response")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await consume()
    error = error_details(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reasons.FIELD_VIOLATION
    assert error.field_violations[0].field == "request"
    assert "genai.inference.v1.GenerateStreamRequest" in error.field_violations[0].description


async def test_a_router_catalog_that_disagrees_with_the_served_models_is_refused_at_start() -> None:
    """The shipped catalog lists SmolLM2 on the local Triton; these settings serve only the
    zero model, on another endpoint: start-up fails naming both problems, before serving."""
    with pytest.raises(ConfigError) as refused:
        await start_platform(_settings(router={}))

    problems = refused.value.problems
    assert any("'smollm2-135m-instruct' is not in inference.models" in p for p in problems)
    assert any("'zero' backend 'triton-0' is at (local Triton)" in p for p in problems)
