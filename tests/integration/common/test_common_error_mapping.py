"""Domain errors reach clients as rich statuses through a real server, for every RPC kind."""

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from services.common import errors, reasons
from services.common.errors import FieldViolation, QuotaViolation
from services.common.status import INTERNAL_MESSAGE, ParsedError, error_details
from tests.integration.common.harness import (
    Serve,
    drain,
    stream_stream,
    stream_unary,
    unary_stream,
    unary_unary,
)

REQUEST = StringValue(value="hello")


@dataclass(frozen=True)
class Row:
    """One domain error and what the client must read back."""

    error: errors.DomainError
    code: grpc.StatusCode
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    quota_violations: tuple[QuotaViolation, ...] = ()
    retry_after: float | None = None


ROWS = [
    Row(
        errors.InvalidArgument(
            "bad prompt",
            violations=[
                FieldViolation("name", "must not be empty"),
                FieldViolation("messages[1].role", "ROLE_UNSPECIFIED is not allowed"),
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.FIELD_VIOLATION,
        field_violations=(
            FieldViolation("name", "must not be empty"),
            FieldViolation("messages[1].role", "ROLE_UNSPECIFIED is not allowed"),
        ),
    ),
    Row(
        errors.NotFound("prompt greeting not found", metadata={"prompt": "greeting"}),
        grpc.StatusCode.NOT_FOUND,
        reasons.RESOURCE_NOT_FOUND,
        metadata={"prompt": "greeting"},
    ),
    Row(
        errors.AlreadyExists("prompt greeting exists"),
        grpc.StatusCode.ALREADY_EXISTS,
        reasons.RESOURCE_ALREADY_EXISTS,
    ),
    Row(
        errors.Conflict("label moved", metadata={"expected_version": "3", "actual_version": "4"}),
        grpc.StatusCode.ABORTED,
        reasons.CONCURRENT_MODIFICATION,
        metadata={"expected_version": "3", "actual_version": "4"},
    ),
    Row(
        errors.FailedPrecondition("version is not approved"),
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.FAILED_PRECONDITION,
    ),
    Row(
        errors.ResourceExhausted(
            "token quota exhausted",
            retry_after=1.5,
            violations=[QuotaViolation("tenant:acme", "100000 tokens per minute")],
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reasons.QUOTA_EXCEEDED,
        quota_violations=(QuotaViolation("tenant:acme", "100000 tokens per minute"),),
        retry_after=1.5,
    ),
    Row(
        errors.Unauthenticated("missing API key"),
        grpc.StatusCode.UNAUTHENTICATED,
        reasons.UNAUTHENTICATED,
    ),
    Row(
        errors.PermissionDenied("tenant acme may not use model x"),
        grpc.StatusCode.PERMISSION_DENIED,
        reasons.PERMISSION_DENIED,
    ),
    Row(
        errors.Unavailable("no healthy Triton instance", retry_after=0.25),
        grpc.StatusCode.UNAVAILABLE,
        reasons.SERVICE_UNAVAILABLE,
        retry_after=0.25,
    ),
    Row(
        errors.Unavailable("no healthy Triton instance"),
        grpc.StatusCode.UNAVAILABLE,
        reasons.SERVICE_UNAVAILABLE,
    ),
    Row(
        errors.DeadlineExceeded("generation timed out"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        reasons.DEADLINE_EXCEEDED,
    ),
    Row(
        errors.Cancelled("upstream cancelled"),
        grpc.StatusCode.CANCELLED,
        reasons.CANCELLED,
    ),
    Row(
        errors.Unimplemented(
            method="genai.prompt.v1.PromptService/CreatePrompt",
            missing="the prompt registry (issue #4)",
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        reasons.NOT_IMPLEMENTED,
        metadata={
            "method": "genai.prompt.v1.PromptService/CreatePrompt",
            "missing": "the prompt registry (issue #4)",
        },
    ),
    Row(
        errors.Internal("the stored template is corrupt"),
        grpc.StatusCode.INTERNAL,
        reasons.INTERNAL_ERROR,
    ),
    Row(
        errors.NotFound("custom reason", reason="MODEL_NOT_FOUND"),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    ),
]


def expected(row: Row) -> ParsedError:
    return ParsedError(
        code=row.code,
        message=row.error.message,
        reason=row.reason,
        domain=reasons.ERROR_DOMAIN,
        metadata=dict(row.metadata),
        field_violations=row.field_violations,
        quota_violations=row.quota_violations,
        retry_after=row.retry_after,
    )


async def rejected(call: Any) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return error_details(caught.value)


def test_table_covers_every_domain_error() -> None:
    classes = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.DomainError)
    }
    assert {type(row.error) for row in ROWS} == classes - {errors.DomainError}


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{type(row.error).__name__}")
async def test_domain_error_becomes_rich_status(serve: Serve, row: Row) -> None:
    async def fail(request: StringValue, context: Any) -> StringValue:
        raise row.error

    harness = await serve({"Fail": unary_unary(fail)})

    assert await rejected(harness.unary_unary("Fail")(REQUEST)) == expected(row)


async def test_unexpected_exception_is_internal_without_its_text(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(request: StringValue, context: Any) -> StringValue:
        raise RuntimeError("password=hunter2 in /srv/secret.txt")

    harness = await serve({"Crash": unary_unary(crash)})

    with caplog.at_level(logging.ERROR, logger="services.common.interceptors"):
        parsed = await rejected(harness.unary_unary("Crash")(REQUEST))

    assert parsed == ParsedError(
        code=grpc.StatusCode.INTERNAL,
        message=INTERNAL_MESSAGE,
        reason=reasons.INTERNAL_ERROR,
        domain=reasons.ERROR_DOMAIN,
    )
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])
    assert "/test.common.v1.TestService/Crash" in record.getMessage()


async def test_domain_error_without_a_mapped_class_is_internal(serve: Serve) -> None:
    async def fail(request: StringValue, context: Any) -> StringValue:
        raise errors.DomainError("internal detail", reason="SOMETHING")

    harness = await serve({"Fail": unary_unary(fail)})

    parsed = await rejected(harness.unary_unary("Fail")(REQUEST))
    assert (parsed.code, parsed.message, parsed.reason) == (
        grpc.StatusCode.INTERNAL,
        INTERNAL_MESSAGE,
        reasons.INTERNAL_ERROR,
    )


async def test_a_generated_base_method_is_unimplemented_not_internal(serve: Serve) -> None:
    def generated_default(request: StringValue, context: Any) -> StringValue:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("Method not implemented!")
        raise NotImplementedError("Method not implemented!")

    harness = await serve({"Later": unary_unary(generated_default)})

    parsed = await rejected(harness.unary_unary("Later")(REQUEST))
    assert (parsed.code, parsed.reason, parsed.metadata) == (
        grpc.StatusCode.UNIMPLEMENTED,
        reasons.NOT_IMPLEMENTED,
        {"method": "test.common.v1.TestService/Later", "missing": "an implementation"},
    )


async def test_stream_that_fails_after_two_messages_ends_with_the_mapped_status(
    serve: Serve,
) -> None:
    async def watch(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        yield StringValue(value="one")
        yield StringValue(value="two")
        raise errors.NotFound("label prod is gone", metadata={"label": "prod"})

    harness = await serve({"Watch": unary_stream(watch)})
    call = harness.unary_stream("Watch")(REQUEST)

    received, error = await drain(call)

    assert received == ["one", "two"]
    assert error is not None
    parsed = error_details(error)
    assert (parsed.code, parsed.message, parsed.reason, parsed.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "label prod is gone",
        reasons.RESOURCE_NOT_FOUND,
        {"label": "prod"},
    )


async def test_stream_written_with_context_write_is_mapped(serve: Serve) -> None:
    async def watch(request: StringValue, context: Any) -> None:
        await context.write(StringValue(value="one"))
        raise errors.Unavailable("backend restarting", retry_after=2.0)

    harness = await serve({"Watch": unary_stream(watch)})
    received, error = await drain(harness.unary_stream("Watch")(REQUEST))

    assert received == ["one"]
    assert error is not None
    parsed = error_details(error)
    assert (parsed.code, parsed.retry_after) == (grpc.StatusCode.UNAVAILABLE, 2.0)


async def test_client_and_bidi_streams_are_mapped(serve: Serve) -> None:
    async def collect(requests: AsyncIterator[StringValue], context: Any) -> StringValue:
        async for _ in requests:
            raise errors.FailedPrecondition("stream closed for writes")
        return StringValue()

    async def chat(
        requests: AsyncIterator[StringValue], context: Any
    ) -> AsyncIterator[StringValue]:
        async for request in requests:
            yield StringValue(value=request.value.upper())
        raise errors.Conflict("conversation changed")

    harness = await serve({"Collect": stream_unary(collect), "Chat": stream_stream(chat)})

    async def two() -> AsyncIterator[StringValue]:
        yield StringValue(value="a")
        yield StringValue(value="b")

    collected = await rejected(harness.stream_unary("Collect")(two()))
    assert collected.code == grpc.StatusCode.FAILED_PRECONDITION

    replies, error = await drain(harness.stream_stream("Chat")(two()))
    assert replies == ["A", "B"]
    assert error is not None
    assert error_details(error).reason == reasons.CONCURRENT_MODIFICATION


async def test_a_handlers_own_abort_passes_through(serve: Serve) -> None:
    async def abort(request: StringValue, context: Any) -> StringValue:
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "page token expired")
        raise AssertionError("abort returned")

    harness = await serve({"Abort": unary_unary(abort)})

    parsed = await rejected(harness.unary_unary("Abort")(REQUEST))
    assert parsed == ParsedError(code=grpc.StatusCode.OUT_OF_RANGE, message="page token expired")
