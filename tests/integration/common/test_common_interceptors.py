"""The interceptor chain on a real server: cancellation, auth, validation and its fixed order."""

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import reasons
from services.common.access import AccessInterceptor
from services.common.auth import Principal, current_principal
from services.common.errors import FieldViolation, Unauthenticated
from services.common.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    ValidationInterceptor,
    default_interceptors,
)
from services.common.status import ParsedError, error_details
from services.common.validation import Validators
from tests.integration.common.harness import (
    SERVICE,
    Serve,
    Tracing,
    drain,
    method,
    read_value,
    stream_unary,
    unary_stream,
    unary_unary,
)

REQUEST = StringValue(value="hello")


class TokenAuthenticator:
    """Accepts `authorization: Bearer <tenant>.<subject>`; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Mapping[str, str]]] = []

    async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
        self.calls.append((method, metadata))
        token = metadata.get("authorization", "").removeprefix("Bearer ")
        tenant, _, subject = token.partition(".")
        if not subject:
            raise Unauthenticated("missing or malformed bearer token")
        return Principal(tenant_id=tenant, subject=subject, attributes={"scheme": "bearer"})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def whoami(request: StringValue, context: Any) -> StringValue:
    principal = current_principal()
    return StringValue(value=f"{principal.tenant_id}/{principal.subject}")


async def rejected(call: Any) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return error_details(caught.value)


def name_is_required(request: StringValue) -> Iterable[FieldViolation]:
    if not request.value:
        yield FieldViolation("value", "must not be empty")
    if request.value != request.value.strip():
        yield FieldViolation("value", "must not start or end with spaces")


# Cancellation


async def test_client_cancellation_reaches_a_unary_handler_as_cancelled_error(
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
        return StringValue()

    harness = await serve({"Hang": unary_unary(hang)})
    call = harness.unary_unary("Hang")(REQUEST)
    await asyncio.wait_for(started.wait(), 5)

    call.cancel()

    await asyncio.wait_for(cancelled.wait(), 5)
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_client_cancellation_reaches_a_streaming_handler(serve: Serve) -> None:
    waiting, cancelled = asyncio.Event(), asyncio.Event()

    async def tokens(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        yield StringValue(value="first")
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield StringValue(value="never")

    harness = await serve({"Tokens": unary_stream(tokens)})
    call = harness.unary_stream("Tokens")(REQUEST)
    assert await read_value(call) == "first"
    # Cancel while the handler awaits: suspended at a `yield`, it would get GeneratorExit.
    await asyncio.wait_for(waiting.wait(), 5)

    call.cancel()

    await asyncio.wait_for(cancelled.wait(), 5)
    assert call.cancelled()


# Auth


async def test_a_valid_token_sets_the_principal_of_the_handler(serve: Serve) -> None:
    authenticator = TokenAuthenticator()
    harness = await serve({"WhoAmI": unary_unary(whoami)}, authenticator=authenticator)

    reply = await harness.unary_unary("WhoAmI")(
        REQUEST, metadata=(*bearer("acme.alice"), ("x-request-id", "r1"))
    )

    assert reply.value == "acme/alice"
    [(called_method, metadata)] = authenticator.calls
    assert called_method == method("WhoAmI")
    assert metadata["x-request-id"] == "r1"


async def test_a_missing_token_is_unauthenticated_before_the_handler_runs(serve: Serve) -> None:
    ran = False

    async def handler(request: StringValue, context: Any) -> StringValue:
        nonlocal ran
        ran = True
        return request

    harness = await serve({"Echo": unary_unary(handler)}, authenticator=TokenAuthenticator())

    parsed = await rejected(harness.unary_unary("Echo")(REQUEST))

    assert (parsed.code, parsed.message, parsed.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or malformed bearer token",
        reasons.UNAUTHENTICATED,
    )
    assert not ran


async def test_a_streaming_rpc_is_authenticated_too(serve: Serve) -> None:
    async def tokens(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        yield StringValue(value=current_principal().subject)

    harness = await serve({"Tokens": unary_stream(tokens)}, authenticator=TokenAuthenticator())

    assert await drain(harness.unary_stream("Tokens")(REQUEST, metadata=bearer("a.bob"))) == (
        ["bob"],
        None,
    )
    received, error = await drain(harness.unary_stream("Tokens")(REQUEST))
    assert received == []
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_authenticator_crash_is_internal_without_its_text(serve: Serve) -> None:
    class Broken:
        async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
            raise ConnectionError("key store at 10.0.0.7 refused")

    harness = await serve({"WhoAmI": unary_unary(whoami)}, authenticator=Broken())

    parsed = await rejected(harness.unary_unary("WhoAmI")(REQUEST))

    assert (parsed.code, parsed.reason) == (grpc.StatusCode.INTERNAL, reasons.INTERNAL_ERROR)
    assert "10.0.0.7" not in parsed.message


async def test_health_checks_skip_auth(serve: Serve) -> None:
    authenticator = TokenAuthenticator()
    harness = await serve({"WhoAmI": unary_unary(whoami)}, authenticator=authenticator)

    reply = await health_pb2_grpc.HealthStub(harness.channel).Check(
        health_pb2.HealthCheckRequest(service="")
    )

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert authenticator.calls == []


async def test_concurrent_rpcs_each_see_their_own_principal(serve: Serve) -> None:
    both_started = asyncio.Barrier(2)

    async def slow_whoami(request: StringValue, context: Any) -> StringValue:
        await both_started.wait()
        return await whoami(request, context)

    harness = await serve({"WhoAmI": unary_unary(slow_whoami)}, authenticator=TokenAuthenticator())
    call = harness.unary_unary("WhoAmI")

    replies = await asyncio.wait_for(
        asyncio.gather(
            call(REQUEST, metadata=bearer("acme.alice")),
            call(REQUEST, metadata=bearer("globex.bob")),
        ),
        5,
    )

    assert [reply.value for reply in replies] == ["acme/alice", "globex/bob"]


# Validation


async def test_invalid_request_lists_every_violation_before_the_handler_runs(
    serve: Serve,
) -> None:
    ran = False

    async def create(request: StringValue, context: Any) -> StringValue:
        nonlocal ran
        ran = True
        return request

    validators = Validators({f"{SERVICE}/Create": name_is_required})
    harness = await serve({"Create": unary_unary(create)}, validators=validators)

    parsed = await rejected(harness.unary_unary("Create")(StringValue(value=" padded ")))

    assert (parsed.code, parsed.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.FIELD_VIOLATION,
    )
    assert parsed.field_violations == (
        FieldViolation("value", "must not start or end with spaces"),
    )
    assert not ran
    assert (await harness.unary_unary("Create")(StringValue(value="ok"))).value == "ok"


async def test_validation_reports_all_violations_of_a_request(serve: Serve) -> None:
    def two_rules(request: StringValue) -> list[FieldViolation]:
        return [
            FieldViolation("value", "must be at least 3 characters"),
            FieldViolation("value", "must be lower case"),
        ]

    harness = await serve(
        {"Create": unary_unary(whoami)},
        validators=Validators({f"/{SERVICE}/Create": two_rules}),
    )

    parsed = await rejected(harness.unary_unary("Create")(StringValue(value="X")))

    assert [v.description for v in parsed.field_violations] == [
        "must be at least 3 characters",
        "must be lower case",
    ]
    assert parsed.message == (
        "invalid request: value: must be at least 3 characters; value: must be lower case"
    )


async def test_each_message_of_a_request_stream_is_validated(serve: Serve) -> None:
    seen: list[str] = []

    async def collect(requests: AsyncIterator[StringValue], context: Any) -> StringValue:
        async for request in requests:
            seen.append(request.value)
        return StringValue(value=",".join(seen))

    harness = await serve(
        {"Collect": stream_unary(collect)},
        validators=Validators({f"{SERVICE}/Collect": name_is_required}),
    )

    async def messages() -> AsyncIterator[StringValue]:
        for value in ["a", "", "c"]:
            yield StringValue(value=value)

    parsed = await rejected(harness.stream_unary("Collect")(messages()))

    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed.field_violations == (FieldViolation("value", "must not be empty"),)
    assert seen == ["a"]


# Order: tracing, auth, errors, access, validation


def test_default_chain_order() -> None:
    chain = default_interceptors(authenticator=TokenAuthenticator(), validators=Validators())

    assert [type(interceptor).__name__ for interceptor in chain] == [
        "OpenTelemetryAioServerInterceptor",
        AuthInterceptor.__name__,
        ErrorInterceptor.__name__,
        AccessInterceptor.__name__,
        ValidationInterceptor.__name__,
    ]


async def test_tracing_comes_first_so_an_rpc_rejected_by_auth_has_a_span(
    serve: Serve, tracing: Tracing
) -> None:
    harness = await serve(
        {"WhoAmI": unary_unary(whoami)},
        authenticator=TokenAuthenticator(),
        tracer_provider=tracing.provider,
    )

    parsed = await rejected(harness.unary_unary("WhoAmI")(REQUEST))
    await health_pb2_grpc.HealthStub(harness.channel).Check(health_pb2.HealthCheckRequest())

    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    server_spans = [
        span
        for span in tracing.exporter.get_finished_spans()
        if span.attributes and span.attributes.get("rpc.system") == "grpc"
    ]
    assert [span.name for span in server_spans] == [method("WhoAmI")]
    assert server_spans[0].attributes is not None
    assert (
        server_spans[0].attributes["rpc.grpc.status_code"]
        == (grpc.StatusCode.UNAUTHENTICATED.value[0])
    )


async def test_auth_comes_before_validation(serve: Serve) -> None:
    validated: list[StringValue] = []

    def record(request: StringValue) -> list[FieldViolation]:
        validated.append(request)
        return [FieldViolation("value", "always wrong")]

    harness = await serve(
        {"WhoAmI": unary_unary(whoami)},
        authenticator=TokenAuthenticator(),
        validators=Validators({f"{SERVICE}/WhoAmI": record}),
    )

    parsed = await rejected(harness.unary_unary("WhoAmI")(REQUEST))

    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert validated == []


async def test_errors_wrap_validation_so_a_crashing_validator_is_internal(
    serve: Serve,
) -> None:
    def crash(request: StringValue) -> list[FieldViolation]:
        raise KeyError("validator bug")

    harness = await serve(
        {"WhoAmI": unary_unary(whoami)},
        validators=Validators({f"{SERVICE}/WhoAmI": crash}),
    )

    parsed = await rejected(harness.unary_unary("WhoAmI")(REQUEST))

    assert (parsed.code, parsed.reason) == (grpc.StatusCode.INTERNAL, reasons.INTERNAL_ERROR)
    assert "validator bug" not in parsed.message


async def test_a_method_without_an_access_rule_is_refused_and_a_role_below_the_rule_too(
    serve: Serve,
) -> None:
    from services.common.auth import AnonymousAuthenticator
    from services.common.policy import Role, Rule

    closed = await serve(
        {"WhoAmI": unary_unary(whoami)},
        interceptors=default_interceptors(
            authenticator=AnonymousAuthenticator(), validators=Validators(), policy={}
        ),
    )
    parsed = await rejected(closed.unary_unary("WhoAmI")(REQUEST))
    assert parsed.code == grpc.StatusCode.PERMISSION_DENIED
    assert "has no access rule" in parsed.message

    viewer_only = await serve(
        {"WhoAmI": unary_unary(whoami)},
        interceptors=default_interceptors(
            authenticator=AnonymousAuthenticator(role="viewer"),
            validators=Validators(),
            policy={f"{SERVICE}/WhoAmI": Rule(Role.MEMBER)},
        ),
    )
    parsed = await rejected(viewer_only.unary_unary("WhoAmI")(REQUEST))
    assert parsed.code == grpc.StatusCode.PERMISSION_DENIED
    assert parsed.metadata["required_role"] == "member"
    assert parsed.metadata["role"] == "viewer"
