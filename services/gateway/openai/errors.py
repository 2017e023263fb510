"""Errors on the OpenAI wire: every failure as OpenAI's JSON error, with the HTTP status, the
retry hints both SDKs read, and the platform's own details under `genai`.

One table (`_MAPPING` with `_mapping`) takes a `DomainError` to its status, OpenAI `type` and
headers; `WireError` is what this layer refuses itself (a body that does not parse, an
unsupported parameter, an unknown route), already in OpenAI's terms.

    {"error": {"message", "type", "param", "code",
               "genai": {"reason", "metadata", "violations", "retry_after"}}}

- `param` is the OpenAI request parameter at fault: the first violation's field through
  `param_of` (the engine's request fields, `parameters.temperature`, back to the body's,
  `temperature`).
- `code` is the reason in lower case, except `invalid_api_key` (401) and
  `rate_limit_exceeded` (a quota).
- `Retry-After` (whole seconds, rounded up) and `retry-after-ms` where the error says when to
  retry; `x-should-retry: false` where retrying cannot help, so that the SDKs, which retry
  408, 409, 429 and 5xx by default, do not.

A stream that fails after its headers went out ends with `sse_error_event(error)`: the same
body as one SSE `data:` line (no `event:` line, no `[DONE]`), which openai-python and
openai-node raise as `APIError`.
"""

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.common import reasons
from services.common.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from services.common.status import INTERNAL_MESSAGE, status_code_of

_logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS: Final = 1000
"""Characters of an error message sent at most."""
MAX_VIOLATIONS: Final = 20
"""Field or quota violations sent at most (a hostile request may cause millions)."""
MAX_TEXT_CHARS: Final = 200
"""Characters of one violation's field or description, or of a metadata value, at most."""
MAX_METADATA: Final = 16

INVALID_REQUEST: Final = "invalid_request_error"
AUTHENTICATION: Final = "authentication_error"
PERMISSION: Final = "permission_error"
RATE_LIMIT: Final = "rate_limit_error"
SERVER: Final = "server_error"

JSON_CONTENT: Final = (b"content-type", b"application/json")

_MODEL_PARAM: Final = frozenset({"prompt", "label", "version", "routing.model", "model"})
_NOT_FOUND_PARAM: Final[Mapping[str, str]] = {
    reasons.PROMPT_NOT_FOUND: "model",
    reasons.LABEL_NOT_FOUND: "model",
    reasons.PROMPT_VERSION_NOT_FOUND: "model",
    reasons.MODEL_NOT_FOUND: "model",
    reasons.EXPERIMENT_NOT_FOUND: "genai.experiment",
    reasons.VARIANT_NOT_FOUND: "genai.experiment",
}
_PREFIXES: Final = (
    ("parameters.", ""),
    ("inline.text", "prompt"),
    ("dimensions", "dimensions"),
    ("variables", "genai.variables"),
    ("output_schema", "response_format"),
    ("user_id", "user"),
    ("tags", "metadata"),
    ("inputs", "input"),
    ("experiment", "genai.experiment"),
    ("session_id", "genai.session_id"),
)
_INDEXED: Final = re.compile(r"messages(\[|\Z)")


def param_of(field_path: str) -> str | None:
    """The OpenAI parameter behind a field of the engine's request (`FieldViolation.field`):
    `prompt`, `label`, `version` and `routing.model` are `model`; `parameters.X` is `X`;
    `messages[i]...` keeps its path; `variables.X` is `genai.variables.X`; `output_schema` is
    `response_format`; `user_id` is `user`, `tags` is `metadata`, `inputs[i]` is `input[i]`;
    `inline.text` (an inline text completion's) is `prompt`. Anything else has none (None)."""
    if field_path in _MODEL_PARAM:
        return "model"
    if _INDEXED.match(field_path):
        return field_path
    for prefix, replacement in _PREFIXES:
        if field_path.startswith(prefix):
            rest = field_path[len(prefix) :]
            if replacement and rest and rest[0] not in ".[":
                continue  # `variables_x` is another field
            return (replacement + rest) or None
    return None


class WireError(Exception):
    """A request this layer refuses before the platform sees it, in OpenAI's terms: a body
    that does not parse or is too large, an unsupported parameter, an unknown route."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        error_type: str = INVALID_REQUEST,
        reason: str = reasons.FIELD_VIOLATION,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.error_type = error_type
        self.reason = reason
        """The `genai.reason` of the body: what the platform's own status would say."""
        self.headers = tuple(headers)


def unsupported(param: str, description: str) -> WireError:
    """400 naming `param`: a parameter (or value) the platform does not support."""
    return WireError(f"{param}: {description}", param=param, code="unsupported_parameter")


def invalid(param: str | None, description: str) -> WireError:
    """400 naming `param`: an invalid value."""
    prefix = f"{param}: " if param else ""
    return WireError(prefix + description, param=param, code="invalid_value")


@dataclass(frozen=True, slots=True)
class HttpError:
    """One error as it goes out: status, headers (beside the content type) and JSON body."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())

    def encoded(self) -> bytes:
        """The JSON body."""
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class _Mapped:
    status: int
    error_type: str
    retry_after: float | None = None
    """Seconds to send in Retry-After (None: none)."""
    should_retry: bool | None = None
    """`x-should-retry` (None: not sent, the SDK's default applies)."""


def http_error(error: BaseException) -> HttpError:
    """The response reporting `error`: a `WireError` as it says, a `DomainError` through the
    table of the module docstring, anything else (an unexpected exception, logged here with
    its traceback) as 500 "internal error"."""
    if isinstance(error, WireError):
        return _response(
            error.status,
            error.error_type,
            error.message,
            error.param,
            error.code,
            {"reason": error.reason},
            error.headers,
        )
    if not isinstance(error, DomainError) or status_code_of(error) is None:
        _logger.error("an OpenAI API request failed unexpectedly", exc_info=error)
        return _response(
            500,
            SERVER,
            INTERNAL_MESSAGE,
            None,
            reasons.INTERNAL_ERROR.lower(),
            {"reason": reasons.INTERNAL_ERROR},
        )
    mapped = _mapping(error)
    headers: list[tuple[bytes, bytes]] = []
    if mapped.retry_after is not None:
        headers += retry_headers(mapped.retry_after)
    if mapped.should_retry is not None:
        headers.append((b"x-should-retry", b"true" if mapped.should_retry else b"false"))
    if mapped.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return _response(
        mapped.status,
        mapped.error_type,
        error.message,
        _param(error),
        _code(error, mapped.status),
        _details(error),
        headers,
    )


def error_body(error: BaseException) -> dict[str, Any]:
    """`http_error(error).body`."""
    return http_error(error).body


def sse_error_event(error: BaseException) -> bytes:
    """The event that ends a stream failing after its headers went out: `data: {"error":
    {...}}` and a blank line, no `event:` line, no `[DONE]`."""
    return b"data: " + http_error(error).encoded() + b"\n\n"


def retry_headers(seconds: float) -> list[tuple[bytes, bytes]]:
    """`Retry-After` in whole seconds (rounded up) and `retry-after-ms`."""
    seconds = max(seconds, 0.0)
    return [
        (b"retry-after", str(math.ceil(seconds)).encode()),
        (b"retry-after-ms", str(math.ceil(seconds * 1000)).encode()),
    ]


def _mapping(error: DomainError) -> _Mapped:
    reason = error.reason
    if isinstance(error, InvalidArgument):
        return _Mapped(400, INVALID_REQUEST, should_retry=False)
    if isinstance(error, FailedPrecondition):
        if reason == reasons.REQUEST_ID_REUSED:
            return _Mapped(409, INVALID_REQUEST, should_retry=False)
        if reason == reasons.OUTPUT_SCHEMA_VIOLATION:
            return _Mapped(422, INVALID_REQUEST, should_retry=False)
        return _Mapped(400, INVALID_REQUEST, should_retry=False)
    if isinstance(error, Unauthenticated):
        return _Mapped(401, AUTHENTICATION, should_retry=False)
    if isinstance(error, PermissionDenied):
        return _Mapped(403, PERMISSION, should_retry=False)
    if isinstance(error, NotFound):
        return _Mapped(404, INVALID_REQUEST, should_retry=False)
    if isinstance(error, Conflict):
        if reason == reasons.REQUEST_IN_PROGRESS:
            return _Mapped(409, INVALID_REQUEST, retry_after=_after(error.retry_after, 1.0))
        return _Mapped(409, INVALID_REQUEST, retry_after=error.retry_after)
    if isinstance(error, AlreadyExists):
        return _Mapped(409, INVALID_REQUEST, should_retry=False)
    if isinstance(error, ResourceExhausted):
        if reason == reasons.BACKEND_OVERLOADED:
            return _Mapped(503, SERVER, retry_after=_after(error.retry_after, 1.0))
        return _Mapped(429, RATE_LIMIT, retry_after=error.retry_after)
    if isinstance(error, Unavailable):
        if reason == reasons.DEADLINE_EXCEEDED:
            return _Mapped(504, SERVER)
        return _Mapped(503, SERVER, retry_after=_after(error.retry_after, 1.0))
    if isinstance(error, DeadlineExceeded):
        return _Mapped(504, SERVER)
    if isinstance(error, Unimplemented):
        return _Mapped(501, SERVER, should_retry=False)
    if isinstance(error, Cancelled):
        return _Mapped(503, SERVER)
    assert isinstance(error, Internal)  # every other class of STATUS_CODES is above
    return _Mapped(500, SERVER)


def _after(retry_after: float | None, default: float) -> float:
    return default if retry_after is None else retry_after


def _param(error: DomainError) -> str | None:
    if isinstance(error, NotFound):
        return _NOT_FOUND_PARAM.get(error.reason)
    if isinstance(error, InvalidArgument | FailedPrecondition):
        violations = getattr(error, "violations", ())
        if violations:
            return param_of(violations[0].field)
        if error.reason == reasons.OUTPUT_SCHEMA_VIOLATION:
            return "response_format"
    return None


def _code(error: DomainError, status: int) -> str:
    if status == 401:
        return "invalid_api_key"
    if isinstance(error, ResourceExhausted) and status == 429:
        return "rate_limit_exceeded"
    return error.reason.lower()


def _details(error: DomainError) -> dict[str, Any]:
    details: dict[str, Any] = {"reason": error.reason}
    if error.metadata:
        details["metadata"] = {
            str(key)[:MAX_TEXT_CHARS]: _clip(str(value), MAX_TEXT_CHARS)
            for key, value in list(error.metadata.items())[:MAX_METADATA]
        }
    if isinstance(error, InvalidArgument) and error.violations:
        details["violations"] = [
            {
                "field": _clip(v.field, MAX_TEXT_CHARS),
                "description": _clip(v.description, MAX_TEXT_CHARS),
            }
            for v in error.violations[:MAX_VIOLATIONS]
        ]
    elif isinstance(error, ResourceExhausted) and error.violations:
        details["violations"] = [
            {
                "subject": _clip(v.subject, MAX_TEXT_CHARS),
                "description": _clip(v.description, MAX_TEXT_CHARS),
            }
            for v in error.violations[:MAX_VIOLATIONS]
        ]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        details["retry_after"] = retry_after
    return details


def _response(
    status: int,
    error_type: str,
    message: str,
    param: str | None,
    code: str | None,
    details: dict[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> HttpError:
    body = {
        "error": {
            "message": _clip(message, MAX_MESSAGE_CHARS),
            "type": error_type,
            "param": param,
            "code": code,
            "genai": details,
        }
    }
    return HttpError(status, body, tuple(headers))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
