"""Every row of the error table: domain errors to OpenAI's error JSON, the HTTP status, the
retry hints, and the `param` of the engine's field paths."""

import json
from typing import Any

import pytest

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
from services.gateway.openai.errors import (
    WireError,
    http_error,
    param_of,
    retry_headers,
    sse_error_event,
)


def _field(name: str) -> InvalidArgument:
    return InvalidArgument(violations=[FieldViolation(name, "is bad")])


ROWS: list[tuple[BaseException, int, str, str | None, str | None, dict[str, str]]] = [
    # error, status, type, param, code, headers
    (_field("parameters.temperature"), 400, "invalid_request_error", "temperature", "field_violation", {"x-should-retry": "false"}),
    (
        InvalidArgument("too long", reason=reasons.CONTEXT_LENGTH_EXCEEDED, violations=[FieldViolation("parameters.max_tokens", "x")]),
        400, "invalid_request_error", "max_tokens", "context_length_exceeded", {},
    ),
    (FailedPrecondition("none fit", reason=reasons.NO_ELIGIBLE_MODEL), 400, "invalid_request_error", None, "no_eligible_model", {}),
    (FailedPrecondition("state"), 400, "invalid_request_error", None, "failed_precondition", {}),
    (Unauthenticated("bad key"), 401, "authentication_error", None, "invalid_api_key", {"www-authenticate": "Bearer"}),
    (PermissionDenied("viewer"), 403, "permission_error", None, "permission_denied", {}),
    (NotFound("no prompt", reason=reasons.PROMPT_NOT_FOUND), 404, "invalid_request_error", "model", "prompt_not_found", {}),
    (NotFound("no label", reason=reasons.LABEL_NOT_FOUND), 404, "invalid_request_error", "model", "label_not_found", {}),
    (NotFound("no version", reason=reasons.PROMPT_VERSION_NOT_FOUND), 404, "invalid_request_error", "model", "prompt_version_not_found", {}),
    (NotFound("no model", reason=reasons.MODEL_NOT_FOUND), 404, "invalid_request_error", "model", "model_not_found", {}),
    (NotFound("no exp", reason=reasons.EXPERIMENT_NOT_FOUND), 404, "invalid_request_error", "genai.experiment", "experiment_not_found", {}),
    (
        Conflict("running", reason=reasons.REQUEST_IN_PROGRESS, retry_after=0.3),
        409, "invalid_request_error", None, "request_in_progress", {"retry-after": "1", "retry-after-ms": "300"},
    ),
    (AlreadyExists("exists"), 409, "invalid_request_error", None, "resource_already_exists", {"x-should-retry": "false"}),
    (
        FailedPrecondition("reused", reason=reasons.REQUEST_ID_REUSED),
        409, "invalid_request_error", None, "request_id_reused", {"x-should-retry": "false"},
    ),
    (
        FailedPrecondition("bad json", reason=reasons.OUTPUT_SCHEMA_VIOLATION),
        422, "invalid_request_error", "response_format", "output_schema_violation", {},
    ),
    (
        ResourceExhausted("quota", retry_after=12.2, violations=[QuotaViolation("tenant:acme", "rpm")]),
        429, "rate_limit_error", None, "rate_limit_exceeded", {"retry-after": "13", "retry-after-ms": "12200"},
    ),
    (
        ResourceExhausted("busy", reason=reasons.BACKEND_OVERLOADED, retry_after=2),
        503, "server_error", None, "backend_overloaded", {"retry-after": "2"},
    ),
    (
        ResourceExhausted("busy", reason=reasons.BACKEND_OVERLOADED),
        503, "server_error", None, "backend_overloaded", {"retry-after": "1", "retry-after-ms": "1000"},
    ),
    (
        Unavailable("down", reason=reasons.BACKEND_UNAVAILABLE, retry_after=4),
        503, "server_error", None, "backend_unavailable", {"retry-after": "4"},
    ),
    (Unavailable("down"), 503, "server_error", None, "service_unavailable", {"retry-after": "1"}),
    (Unavailable("slow", reason=reasons.DEADLINE_EXCEEDED), 504, "server_error", None, "deadline_exceeded", {}),
    (DeadlineExceeded("late"), 504, "server_error", None, "deadline_exceeded", {}),
    (Unimplemented(method="m", missing="x"), 501, "server_error", None, "not_implemented", {"x-should-retry": "false"}),
    (Cancelled("upstream"), 503, "server_error", None, "cancelled", {}),
    (Internal("broken invariant"), 500, "server_error", None, "internal_error", {}),
    (WireError("too big", status=413, code="request_too_large"), 413, "invalid_request_error", None, "request_too_large", {}),
    (WireError("slow body", status=408), 408, "invalid_request_error", None, None, {}),
    (WireError("Invalid URL (GET /v1/x)", status=404), 404, "invalid_request_error", None, None, {}),
    (WireError("use POST", status=405), 405, "invalid_request_error", None, None, {}),
]  # fmt: skip


@pytest.mark.parametrize(("error", "status", "kind", "param", "code", "headers"), ROWS)
def test_each_error_maps_to_its_status_type_param_code_and_headers(
    error: BaseException,
    status: int,
    kind: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str],
) -> None:
    response = http_error(error)
    body = response.body["error"]
    assert response.status == status
    assert (body["type"], body["param"], body["code"]) == (kind, param, code)
    sent = {name.decode(): value.decode() for name, value in response.headers}
    assert headers.items() <= sent.items()
    if isinstance(error, DomainError):
        assert body["message"] == error.message
        assert body["genai"]["reason"] == error.reason


def test_an_unexpected_exception_is_a_generic_500_with_nothing_of_it_sent() -> None:
    response = http_error(KeyError("secret internals"))
    body = response.body["error"]
    assert response.status == 500
    assert (body["message"], body["type"], body["code"]) == (
        "internal error",
        "server_error",
        "internal_error",
    )
    assert "secret" not in response.encoded().decode()


def test_the_genai_details_carry_reason_metadata_violations_and_retry_after() -> None:
    error = ResourceExhausted(
        "quota",
        retry_after=3,
        violations=[QuotaViolation("tenant:acme", "requests_per_minute 1 reached")],
        metadata={"tenant_id": "acme"},
    )
    genai = http_error(error).body["error"]["genai"]
    assert genai == {
        "reason": "QUOTA_EXCEEDED",
        "metadata": {"tenant_id": "acme"},
        "violations": [{"subject": "tenant:acme", "description": "requests_per_minute 1 reached"}],
        "retry_after": 3,
    }
    fields = http_error(_field("messages[2].content")).body["error"]["genai"]["violations"]
    assert fields == [{"field": "messages[2].content", "description": "is bad"}]


def test_messages_and_violations_are_clipped() -> None:
    error = InvalidArgument(
        "x" * 5000, violations=[FieldViolation(f"f{i}", "d" * 500) for i in range(100)]
    )
    body = http_error(error).body["error"]
    assert len(body["message"]) == 1000
    assert len(body["genai"]["violations"]) == 20
    assert all(len(v["description"]) <= 200 for v in body["genai"]["violations"])


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("prompt", "model"),
        ("label", "model"),
        ("version", "model"),
        ("routing.model", "model"),
        ("parameters.max_tokens", "max_tokens"),
        ("parameters.stop[3]", "stop[3]"),
        ("messages", "messages"),
        ("messages[2].content", "messages[2].content"),
        ("variables.country", "genai.variables.country"),
        ("variables", "genai.variables"),
        ("output_schema", "response_format"),
        ("user_id", "user"),
        ("tags", "metadata"),
        ("tags[env]", "metadata[env]"),
        ("inputs[3]", "input[3]"),
        ("inputs", "input"),
        ("inline.text", "prompt"),
        ("dimensions", "dimensions"),
        ("request_id", None),
        ("routing.policy", None),
        ("", None),
    ],
)
def test_param_of_the_engine_fields(field: str, param: str | None) -> None:
    assert param_of(field) == param


def test_a_mid_stream_error_is_one_data_event_with_the_error_body() -> None:
    event = sse_error_event(Unavailable("the backend broke", reason=reasons.STREAM_INTERRUPTED))
    assert event.startswith(b"data: {")
    assert event.endswith(b"\n\n")
    assert b"event:" not in event
    assert b"[DONE]" not in event
    body: dict[str, Any] = json.loads(event.removeprefix(b"data: "))
    assert body["error"]["message"] == "the backend broke"
    assert body["error"]["code"] == "stream_interrupted"


def test_retry_headers_round_up() -> None:
    assert retry_headers(0.0) == [(b"retry-after", b"0"), (b"retry-after-ms", b"0")]
    assert retry_headers(1.0001) == [(b"retry-after", b"2"), (b"retry-after-ms", b"1001")]
