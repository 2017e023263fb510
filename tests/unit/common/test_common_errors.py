"""Domain errors: defaults, messages, and no grpc in the modules that cores import."""

import subprocess
import sys

import pytest

from services.common import errors, reasons
from services.common.errors import FieldViolation, QuotaViolation


@pytest.mark.parametrize(
    "module",
    [
        "services.common.errors",
        "services.common.reasons",
        "services.common.auth",
        "services.common.validation",
        "services.common.config",
    ],
)
def test_core_facing_modules_import_neither_grpc_nor_generated_code(module: str) -> None:
    check = (
        f"import sys, {module}; "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'genai')); "
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.InvalidArgument(violations=[]), reasons.FIELD_VIOLATION),
        (errors.NotFound("x"), reasons.RESOURCE_NOT_FOUND),
        (errors.AlreadyExists("x"), reasons.RESOURCE_ALREADY_EXISTS),
        (errors.Conflict("x"), reasons.CONCURRENT_MODIFICATION),
        (errors.FailedPrecondition("x"), reasons.FAILED_PRECONDITION),
        (errors.ResourceExhausted("x"), reasons.QUOTA_EXCEEDED),
        (errors.Unauthenticated("x"), reasons.UNAUTHENTICATED),
        (errors.PermissionDenied("x"), reasons.PERMISSION_DENIED),
        (errors.Unavailable("x"), reasons.SERVICE_UNAVAILABLE),
        (errors.DeadlineExceeded("x"), reasons.DEADLINE_EXCEEDED),
        (errors.Cancelled("x"), reasons.CANCELLED),
        (errors.Unimplemented(method="m", missing="n"), reasons.NOT_IMPLEMENTED),
        (errors.Internal("x"), reasons.INTERNAL_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, errors.DomainError) else "",
)
def test_each_class_has_its_default_reason(error: errors.DomainError, reason: str) -> None:
    assert error.reason == reason
    assert reason in reasons.ALL_REASONS


def test_an_explicit_reason_and_metadata_override_the_defaults() -> None:
    metadata = {"prompt": "greeting"}
    error = errors.NotFound("no prompt greeting", reason="PROMPT_NOT_FOUND", metadata=metadata)
    metadata["prompt"] = "changed later"

    assert (error.message, str(error), error.reason, error.metadata) == (
        "no prompt greeting",
        "no prompt greeting",
        "PROMPT_NOT_FOUND",
        {"prompt": "greeting"},
    )


def test_unimplemented_names_the_method_and_what_is_missing() -> None:
    error = errors.Unimplemented(
        method="genai.prompt.v1.PromptService/CreatePrompt",
        missing="the prompt registry (issue #4)",
        metadata={"milestone": "2"},
    )

    assert error.message == (
        "genai.prompt.v1.PromptService/CreatePrompt is not implemented yet: "
        "it needs the prompt registry (issue #4)"
    )
    assert error.metadata == {
        "milestone": "2",
        "method": "genai.prompt.v1.PromptService/CreatePrompt",
        "missing": "the prompt registry (issue #4)",
    }


def test_invalid_argument_summarizes_its_violations_when_given_no_message() -> None:
    error = errors.InvalidArgument(
        violations=[FieldViolation("name", "is required"), FieldViolation("top_p", "> 1")]
    )

    assert error.message == "invalid request: name: is required; top_p: > 1"
    assert error.violations == (
        FieldViolation("name", "is required"),
        FieldViolation("top_p", "> 1"),
    )
    assert errors.InvalidArgument("custom").message == "custom"


def test_resource_exhausted_carries_retry_after_and_quota_violations() -> None:
    error = errors.ResourceExhausted(
        "slow down", retry_after=2.5, violations=[QuotaViolation("tenant:acme", "60 rpm")]
    )

    assert (error.retry_after, error.violations) == (
        2.5,
        (QuotaViolation("tenant:acme", "60 rpm"),),
    )
    assert errors.Unavailable("down", retry_after=1.0).retry_after == 1.0
    assert errors.Unavailable("down").retry_after is None


def test_reasons_are_upper_snake_case_enum_names() -> None:
    for reason in reasons.ALL_REASONS:
        assert reason.isupper()
        assert reason.replace("_", "").isalpha()
    assert reasons.ERROR_DOMAIN == "genai.platform"
