"""Machine-readable error reasons sent in `google.rpc.ErrorInfo.reason`.

Each value is the name of a `genai.common.v1.ErrorReason` enum value, so that clients in any
language can switch on it. This module imports neither grpc nor generated code: core packages
use these constants through `services.common.errors`.
"""

from typing import Final

ERROR_DOMAIN: Final = "genai.platform"
"""`ErrorInfo.domain` of every error the platform raises."""

FIELD_VIOLATION: Final = "FIELD_VIOLATION"
"""One or more request fields are invalid; `BadRequest` lists them."""
RESOURCE_NOT_FOUND: Final = "RESOURCE_NOT_FOUND"
"""The addressed resource does not exist."""
RESOURCE_ALREADY_EXISTS: Final = "RESOURCE_ALREADY_EXISTS"
"""A resource with the requested name already exists."""
CONCURRENT_MODIFICATION: Final = "CONCURRENT_MODIFICATION"
"""The resource changed since the client read it (e.g. an expected-version check failed)."""
FAILED_PRECONDITION: Final = "FAILED_PRECONDITION"
"""The system is not in the state the operation requires."""
QUOTA_EXCEEDED: Final = "QUOTA_EXCEEDED"
"""A quota or rate limit is exhausted; `QuotaFailure` and `RetryInfo` say which and when."""
UNAUTHENTICATED: Final = "UNAUTHENTICATED"
"""The request carries no valid credentials."""
PERMISSION_DENIED: Final = "PERMISSION_DENIED"
"""The caller is authenticated but may not perform the operation."""
SERVICE_UNAVAILABLE: Final = "SERVICE_UNAVAILABLE"
"""A dependency is unavailable; the request may be retried (see `RetryInfo`)."""
DEADLINE_EXCEEDED: Final = "DEADLINE_EXCEEDED"
"""The operation did not finish within its deadline."""
CANCELLED: Final = "CANCELLED"
"""The operation was cancelled, usually by the caller."""
NOT_IMPLEMENTED: Final = "NOT_IMPLEMENTED"
"""The method exists in the contract but is not implemented yet."""
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
"""An unexpected server error; details are in the server logs, never in the response."""

MODEL_NOT_FOUND: Final = "MODEL_NOT_FOUND"
"""The model is not in the catalog, or not served by the backend."""
CONTEXT_LENGTH_EXCEEDED: Final = "CONTEXT_LENGTH_EXCEEDED"
"""Prompt tokens plus max_tokens exceed the model's context window."""
BACKEND_UNAVAILABLE: Final = "BACKEND_UNAVAILABLE"
"""The model backend is down or unreachable; safe to retry."""
BACKEND_OVERLOADED: Final = "BACKEND_OVERLOADED"
"""The backend's bounded in-flight limit is reached; `RetryInfo` says when to retry."""
BACKEND_ERROR: Final = "BACKEND_ERROR"
"""The backend reported an error for this request."""
NO_ELIGIBLE_MODEL: Final = "NO_ELIGIBLE_MODEL"
"""No catalog model satisfies the request; the metadata says why each model was rejected."""
STREAM_INTERRUPTED: Final = "STREAM_INTERRUPTED"
"""The backend failed after tokens had streamed; the tokens sent are accounted."""
OUTPUT_SCHEMA_VIOLATION: Final = "OUTPUT_SCHEMA_VIOLATION"
"""The final output did not validate against the prompt version's output JSON schema."""

PROMPT_NOT_FOUND: Final = "PROMPT_NOT_FOUND"
"""No prompt with that name exists in the caller's tenant."""
PROMPT_VERSION_NOT_FOUND: Final = "PROMPT_VERSION_NOT_FOUND"
"""The prompt exists but the requested version does not."""
LABEL_NOT_FOUND: Final = "LABEL_NOT_FOUND"
"""The prompt has no label with that name."""
PROMPT_ALREADY_EXISTS: Final = "PROMPT_ALREADY_EXISTS"
"""A prompt with that name already exists in the tenant."""
LABEL_VERSION_MISMATCH: Final = "LABEL_VERSION_MISMATCH"
"""A label move's expected current version did not match (metadata: expected, actual)."""
TEMPLATE_INVALID: Final = "TEMPLATE_INVALID"
"""A message template does not parse or uses constructs the sandbox forbids."""
VARIABLE_INVALID: Final = "VARIABLE_INVALID"
"""Template variables are missing, unknown or of the wrong type."""
EVALUATION_GATE_FAILED: Final = "EVALUATION_GATE_FAILED"
"""The label is protected and the target version has no passing evaluation report."""
NO_ROLLBACK_TARGET: Final = "NO_ROLLBACK_TARGET"
"""A rollback found no earlier version in the label's history."""

EXPERIMENT_NOT_FOUND: Final = "EXPERIMENT_NOT_FOUND"
"""No experiment with that name exists in the caller's tenant."""
EXPERIMENT_ALREADY_EXISTS: Final = "EXPERIMENT_ALREADY_EXISTS"
"""An experiment with that name already exists in the tenant."""
EXPERIMENT_NOT_RUNNING: Final = "EXPERIMENT_NOT_RUNNING"
"""The experiment is not running (not started, or stopped): it assigns and records nothing."""
VARIANT_NOT_FOUND: Final = "VARIANT_NOT_FOUND"
"""The experiment has no variant with that name."""
METRIC_NOT_FOUND: Final = "METRIC_NOT_FOUND"
"""The experiment declares no metric with that name."""

DATASET_NOT_FOUND: Final = "DATASET_NOT_FOUND"
"""No evaluation dataset with that name exists in the caller's tenant."""
DATASET_ALREADY_EXISTS: Final = "DATASET_ALREADY_EXISTS"
"""An evaluation dataset with that name already exists in the tenant."""
EVALUATION_RUN_NOT_FOUND: Final = "EVALUATION_RUN_NOT_FOUND"
"""No evaluation run with that id exists in the caller's tenant."""
EVALUATION_REPORT_NOT_FOUND: Final = "EVALUATION_REPORT_NOT_FOUND"
"""No evaluation report with that id exists in the caller's tenant."""

TENANT_NOT_FOUND: Final = "TENANT_NOT_FOUND"
"""No tenant with that id exists."""
API_KEY_NOT_FOUND: Final = "API_KEY_NOT_FOUND"
"""No API key with that id exists in the tenant."""

REQUEST_IN_PROGRESS: Final = "REQUEST_IN_PROGRESS"
"""A request with the same `request_id` is still running; `RetryInfo` says when to ask again
for its outcome."""
REQUEST_ID_REUSED: Final = "REQUEST_ID_REUSED"
"""The `request_id` was used within its retention for a different request."""

ALL_REASONS: Final = frozenset(
    {
        FIELD_VIOLATION,
        RESOURCE_NOT_FOUND,
        RESOURCE_ALREADY_EXISTS,
        CONCURRENT_MODIFICATION,
        FAILED_PRECONDITION,
        QUOTA_EXCEEDED,
        UNAUTHENTICATED,
        PERMISSION_DENIED,
        SERVICE_UNAVAILABLE,
        DEADLINE_EXCEEDED,
        CANCELLED,
        NOT_IMPLEMENTED,
        INTERNAL_ERROR,
        MODEL_NOT_FOUND,
        CONTEXT_LENGTH_EXCEEDED,
        BACKEND_UNAVAILABLE,
        BACKEND_OVERLOADED,
        BACKEND_ERROR,
        NO_ELIGIBLE_MODEL,
        STREAM_INTERRUPTED,
        OUTPUT_SCHEMA_VIOLATION,
        PROMPT_NOT_FOUND,
        PROMPT_VERSION_NOT_FOUND,
        LABEL_NOT_FOUND,
        PROMPT_ALREADY_EXISTS,
        LABEL_VERSION_MISMATCH,
        TEMPLATE_INVALID,
        VARIABLE_INVALID,
        EVALUATION_GATE_FAILED,
        NO_ROLLBACK_TARGET,
        EXPERIMENT_NOT_FOUND,
        EXPERIMENT_ALREADY_EXISTS,
        EXPERIMENT_NOT_RUNNING,
        VARIANT_NOT_FOUND,
        METRIC_NOT_FOUND,
        DATASET_NOT_FOUND,
        DATASET_ALREADY_EXISTS,
        EVALUATION_RUN_NOT_FOUND,
        EVALUATION_REPORT_NOT_FOUND,
        TENANT_NOT_FOUND,
        API_KEY_NOT_FOUND,
        REQUEST_IN_PROGRESS,
        REQUEST_ID_REUSED,
    }
)
"""Every reason above; a contract test checks each is a `genai.common.v1.ErrorReason` name."""
