"""The one table from domain error class to status code, and the rich status it builds."""

import inspect

import grpc
from google.rpc import error_details_pb2

from services.common import errors, reasons
from services.common.status import (
    INTERNAL_MESSAGE,
    STATUS_CODES,
    status_code_of,
    to_grpc_status,
    to_rpc_status,
)


def domain_error_classes() -> set[type[errors.DomainError]]:
    return {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DomainError) and cls is not errors.DomainError
    }


def test_every_domain_error_class_has_one_distinct_code() -> None:
    assert set(STATUS_CODES) == domain_error_classes()
    assert len(set(STATUS_CODES.values())) == len(STATUS_CODES)
    assert grpc.StatusCode.OK not in STATUS_CODES.values()
    assert grpc.StatusCode.UNKNOWN not in STATUS_CODES.values()


def test_a_service_specific_subclass_inherits_its_bases_code() -> None:
    class PromptNotFound(errors.NotFound):
        default_reason = "PROMPT_NOT_FOUND"

    error = PromptNotFound("no prompt greeting")

    assert status_code_of(error) == grpc.StatusCode.NOT_FOUND
    status = to_rpc_status(error)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (status.code, status.message, info.reason) == (
        grpc.StatusCode.NOT_FOUND.value[0],
        "no prompt greeting",
        "PROMPT_NOT_FOUND",
    )


def test_an_unexpected_exception_becomes_a_generic_internal_status() -> None:
    status = to_rpc_status(ValueError("db password is hunter2"))

    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (status.code, status.message, len(status.details)) == (
        grpc.StatusCode.INTERNAL.value[0],
        INTERNAL_MESSAGE,
        1,
    )
    assert (info.reason, info.domain, dict(info.metadata)) == (
        reasons.INTERNAL_ERROR,
        reasons.ERROR_DOMAIN,
        {},
    )


def test_retry_after_becomes_an_exact_retry_delay() -> None:
    status = to_rpc_status(errors.ResourceExhausted("slow down", retry_after=1.25))

    retry = error_details_pb2.RetryInfo()
    assert [detail.Unpack(retry) for detail in status.details] == [False, True]
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 250_000_000)


def test_grpc_status_carries_the_rich_status_in_trailing_metadata() -> None:
    status = to_grpc_status(errors.Conflict("version moved"))

    assert (status.code, status.details) == (grpc.StatusCode.ABORTED, "version moved")
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert value == to_rpc_status(errors.Conflict("version moved")).SerializeToString()
