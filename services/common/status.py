"""Domain errors <-> rich gRPC statuses (`google.rpc.Status` with error details).

`STATUS_CODES` is the one table from exception class to canonical code. `to_rpc_status` builds
the status the error interceptor sends; `error_details` parses it back on the client side.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, cast

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import reasons
from services.common.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

STATUS_CODES: Final[Mapping[type[DomainError], grpc.StatusCode]] = MappingProxyType(
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        NotFound: grpc.StatusCode.NOT_FOUND,
        AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
        Conflict: grpc.StatusCode.ABORTED,
        FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
        ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
        Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
        DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
        Cancelled: grpc.StatusCode.CANCELLED,
        Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
        Internal: grpc.StatusCode.INTERNAL,
    }
)
"""The status code of each domain error class; subclasses inherit their base's code."""

INTERNAL_MESSAGE: Final = "internal error"
"""The only message a client sees for an unexpected exception."""


def status_code_of(error: DomainError) -> grpc.StatusCode | None:
    """Returns the code of the nearest mapped class in `error`'s MRO, None if none is mapped."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return None


def to_rpc_status(error: BaseException) -> status_pb2.Status:
    """Returns the rich status reporting `error` to a client.

    A mapped `DomainError` keeps its message and carries `ErrorInfo` plus the details that its
    class defines. Anything else becomes INTERNAL with a generic message and reason
    INTERNAL_ERROR: its text never reaches the client (the caller logs it).
    """
    code = status_code_of(error) if isinstance(error, DomainError) else None
    if not isinstance(error, DomainError) or code is None:
        return _status(
            grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, _error_info(reasons.INTERNAL_ERROR)
        )

    details: list[Message] = [_error_info(error.reason, error.metadata)]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, ResourceExhausted) and error.violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=v.subject, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if (
        isinstance(error, ResourceExhausted | Unavailable | Conflict)
        and error.retry_after is not None
    ):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(error.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return _status(code, error.message, *details)


def to_grpc_status(error: BaseException) -> grpc.Status:
    """Returns `to_rpc_status(error)` as a `grpc.Status` (code, details, trailing metadata)."""
    return rpc_status.to_status(to_rpc_status(error))


def _error_info(
    reason: str, metadata: Mapping[str, str] | None = None
) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(
        reason=reason, domain=reasons.ERROR_DOMAIN, metadata=dict(metadata or {})
    )


def _status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    status = status_pb2.Status(code=_code_number(code), message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert isinstance(number, int)
    return number


@dataclass(frozen=True)
class ParsedError:
    """What a client can read from a failed RPC's status: code, message and rich details.

    `reason`/`domain` are None when the server sent no `ErrorInfo` (e.g. a transport error).
    """

    code: grpc.StatusCode
    message: str
    reason: str | None = None
    domain: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    quota_violations: tuple[QuotaViolation, ...] = ()
    retry_after: float | None = None
    """Seconds to wait before retrying, from `RetryInfo`."""


def error_details(error: grpc.aio.AioRpcError) -> ParsedError:
    """Parses the rich status of a failed RPC (ErrorInfo, BadRequest, QuotaFailure, RetryInfo)."""
    code = error.code()
    message = error.details() or ""
    try:
        # AioRpcError offers the synchronous code()/details()/trailing_metadata() that
        # from_call reads; the stubs only declare grpc.Call for it.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:  # the status proto disagrees with the status line: trust the line
        status = None
    if status is None:
        return ParsedError(code=code, message=message)

    result = ParsedError(code=code, message=message)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result = replace(
                result, reason=info.reason, domain=info.domain, metadata=dict(info.metadata)
            )
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations = tuple(
                FieldViolation(field=v.field, description=v.description)
                for v in bad_request.field_violations
            )
            result = replace(result, field_violations=violations)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota_failure = error_details_pb2.QuotaFailure()
            detail.Unpack(quota_failure)
            quota_violations = tuple(
                QuotaViolation(subject=v.subject, description=v.description)
                for v in quota_failure.violations
            )
            result = replace(result, quota_violations=quota_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            result = replace(result, retry_after=retry_info.retry_delay.ToNanoseconds() / 1e9)
    return result


UNREACHABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
"""Codes that mean the called service could not answer (rather than refused the request)."""


def remote_error(error: grpc.aio.AioRpcError, *, service: str, what: str) -> DomainError:
    """The domain exception for a failed call to another platform service, keeping the
    server's reason, metadata and details, so that re-raising it answers the caller with the
    same status. UNAVAILABLE and DEADLINE_EXCEEDED become `Unavailable` ("`what` is
    unreachable"), with `service` in the metadata, unless the service answered UNAVAILABLE
    itself with a reason (the router's BACKEND_UNAVAILABLE: it is reachable, what it needs is
    not), which is passed on with its own message."""
    parsed = error_details(error)
    code, message = parsed.code, parsed.message
    metadata = dict(parsed.metadata)
    reason = parsed.reason
    if code == grpc.StatusCode.UNAVAILABLE and reason:
        return Unavailable(
            message, retry_after=parsed.retry_after, reason=reason, metadata=metadata
        )
    if code in UNREACHABLE_CODES:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            reason = reasons.DEADLINE_EXCEEDED
        return Unavailable(
            f"{what} is unreachable: {message or code.name}",
            retry_after=parsed.retry_after,
            reason=reason,
            metadata={"service": service, **metadata},
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(
            message, violations=parsed.field_violations, reason=reason, metadata=metadata
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(
            message,
            retry_after=parsed.retry_after,
            violations=parsed.quota_violations,
            reason=reason,
            metadata=metadata,
        )
    if code == grpc.StatusCode.ABORTED:
        return Conflict(
            message or code.name, retry_after=parsed.retry_after, reason=reason, metadata=metadata
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(
            message,
            method=metadata.get("method", ""),
            missing=metadata.get("missing", ""),
            reason=reason,
            metadata=metadata,
        )
    simple: dict[grpc.StatusCode, type[DomainError]] = {
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.CANCELLED: Cancelled,
    }
    return simple.get(code, Internal)(message or code.name, reason=reason, metadata=metadata)
