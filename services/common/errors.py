"""Domain exceptions raised by service cores and mapped to gRPC statuses at the edge.

Handlers and core code raise these; the error interceptor turns each class into one canonical
status code plus a `google.rpc.Status` with `ErrorInfo` (reason, domain, metadata) and, where they
apply, `BadRequest`, `QuotaFailure` and `RetryInfo` details (see `services.common.status`).

This module must import neither grpc nor generated code: every service core imports it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from services.common import reasons


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: `BadRequest.FieldViolation` in the rich status.

    `field` is a dotted path into the request (`"messages[2].role"`).
    """

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota: `QuotaFailure.Violation` in the rich status.

    `subject` names what the quota applies to (`"tenant:acme"`, `"model:smollm2"`).
    """

    subject: str
    description: str


class DomainError(Exception):
    """Base of every error a service reports to its callers on purpose.

    `message` is shown to the client, so it must not contain secrets or internals. `reason` is
    a `services.common.reasons` constant (default: the class's `default_reason`), `metadata`
    adds machine-readable context to `ErrorInfo`. A `DomainError` whose class has no status
    mapping is reported like an unexpected exception: INTERNAL, with the message withheld.
    """

    default_reason: ClassVar[str] = reasons.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason if reason is not None else self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(DomainError):
    """The request is malformed; `violations` names every invalid field (INVALID_ARGUMENT)."""

    default_reason = reasons.FIELD_VIOLATION

    def __init__(
        self,
        message: str | None = None,
        *,
        violations: Iterable[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.violations = tuple(violations)
        if message is None:
            message = "invalid request: " + (
                "; ".join(f"{v.field}: {v.description}" for v in self.violations) or "no details"
            )
        super().__init__(message, reason=reason, metadata=metadata)


class NotFound(DomainError):
    """The addressed resource does not exist (NOT_FOUND)."""

    default_reason = reasons.RESOURCE_NOT_FOUND


class AlreadyExists(DomainError):
    """The resource to create exists already (ALREADY_EXISTS)."""

    default_reason = reasons.RESOURCE_ALREADY_EXISTS


class Conflict(DomainError):
    """A concurrent change won, e.g. an expected-version check failed (ABORTED; retry the
    read-modify-write cycle), or a concurrent request holds what this one needs.

    `retry_after` (seconds), when set, becomes `RetryInfo.retry_delay`.
    """

    default_reason = reasons.CONCURRENT_MODIFICATION

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the operation (FAILED_PRECONDITION)."""

    default_reason = reasons.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    """A quota or rate limit is exhausted (RESOURCE_EXHAUSTED).

    `retry_after` (seconds) becomes `RetryInfo.retry_delay`; `violations` become `QuotaFailure`.
    """

    default_reason = reasons.QUOTA_EXCEEDED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        violations: Iterable[QuotaViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
        self.violations = tuple(violations)


class Unauthenticated(DomainError):
    """The request has no valid credentials (UNAUTHENTICATED)."""

    default_reason = reasons.UNAUTHENTICATED


class PermissionDenied(DomainError):
    """The caller may not perform the operation (PERMISSION_DENIED)."""

    default_reason = reasons.PERMISSION_DENIED


class Unavailable(DomainError):
    """A dependency is down or overloaded; safe to retry (UNAVAILABLE).

    `retry_after` (seconds), when known, becomes `RetryInfo.retry_delay`.
    """

    default_reason = reasons.SERVICE_UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class DeadlineExceeded(DomainError):
    """The operation ran out of time (DEADLINE_EXCEEDED)."""

    default_reason = reasons.DEADLINE_EXCEEDED


class Cancelled(DomainError):
    """The operation was cancelled, e.g. by an upstream dependency (CANCELLED)."""

    default_reason = reasons.CANCELLED


class Unimplemented(DomainError):
    """The method is in the contract but not implemented yet (UNIMPLEMENTED).

    `Unimplemented(method="genai.prompt.v1.PromptService/CreatePrompt",
    missing="the prompt registry (issue #4)")` tells the client what is missing, in the message
    and in `ErrorInfo.metadata` (`method`, `missing`).
    """

    default_reason = reasons.NOT_IMPLEMENTED

    def __init__(
        self,
        message: str | None = None,
        *,
        method: str,
        missing: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if message is None:
            message = f"{method} is not implemented yet: it needs {missing}"
        super().__init__(
            message,
            reason=reason,
            metadata={**(metadata or {}), "method": method, "missing": missing},
        )
        self.method = method
        self.missing = missing


class Internal(DomainError):
    """A broken invariant the service detected itself (INTERNAL).

    Unlike an unexpected exception, its message is sent to the client: keep it free of
    internals.
    """

    default_reason = reasons.INTERNAL_ERROR
