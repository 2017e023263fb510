"""A prompt version's response processing configuration, and its limits.

The configuration types mirror `genai.prompt.v1.ResponseProcessing` (plus the stop sequences of
the sampling parameters and the version's output schema). The prompt registry checks a version's
configuration with `config_violations` before it stores it; the gateway's response processing
(`services.gateway.core.processing`) runs it.

This module imports neither grpc nor generated code: the configuration is plain dataclasses,
built from the protos by the gateway and from a version's JSON content by the registry.
"""

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from services.common.errors import FieldViolation, InvalidArgument

MAX_STOP_SEQUENCES: Final = 16
"""Most stop sequences per request."""
MAX_STOP_SEQUENCE_BYTES: Final = 256
"""Longest stop sequence, in bytes of UTF-8."""
MAX_PATTERN_REGEX_CHARS: Final = 512
"""Longest custom redaction regex, in characters."""
MAX_PATTERN_MATCH_LENGTH: Final = 256
"""Largest `max_match_length` of a custom redaction pattern."""
MAX_PATTERN_NAME_CHARS: Final = 64
"""Longest custom redaction pattern name."""
MAX_REDACTION_PATTERNS: Final = 64
"""Custom redaction patterns of one prompt version."""


class PiiKind(enum.Enum):
    """A built-in class of personal data (`genai.prompt.v1.PiiKind`)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CARD_NUMBER = "CARD_NUMBER"


@dataclass(frozen=True, slots=True)
class RedactionPattern:
    """A custom redaction rule (`genai.prompt.v1.RedactionPattern`)."""

    name: str
    """Name used in the replacement (`[name]`) and in the redaction counts."""
    regex: str
    """A Python `re` regular expression, at most `MAX_PATTERN_REGEX_CHARS` characters."""
    max_match_length: int
    """The most characters one match can span, in [1, `MAX_PATTERN_MATCH_LENGTH`]."""


@dataclass(frozen=True, slots=True)
class PiiRedaction:
    """Which personal data to replace (`genai.prompt.v1.PiiRedaction`)."""

    kinds: tuple[PiiKind, ...] = ()
    patterns: tuple[RedactionPattern, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessingConfig:
    """Everything that shapes the processing of one response.

    `stop` comes from the effective sampling parameters, `max_output_chars` and `pii_redaction`
    from `ResponseProcessing`, `output_schema` (a JSON Schema, draft 2020-12) from the prompt
    version. The defaults process nothing.
    """

    stop: tuple[str, ...] = ()
    max_output_chars: int = 0
    """Maximum output length in characters; 0 means no limit."""
    pii_redaction: PiiRedaction = field(default_factory=PiiRedaction)
    output_schema: Mapping[str, Any] | None = None


def validate_config(config: ProcessingConfig) -> None:
    """Checks a configuration; raises `InvalidArgument` naming every invalid field.

    Field names are those of `genai.prompt.v1.PromptVersion` (`parameters.stop[0]`,
    `processing.pii_redaction.patterns[1].regex`, `output_schema`).
    """
    violations = config_violations(config)
    if violations:
        raise InvalidArgument(violations=violations)


def config_violations(config: ProcessingConfig, prefix: str = "") -> list[FieldViolation]:
    """Every problem of a configuration (see `validate_config`), field names after `prefix`
    (the prompt registry checks a version's configuration with `prefix="version."`)."""
    return [FieldViolation(prefix + v.field, v.description) for v in _config_violations(config)]


def _config_violations(config: ProcessingConfig) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if len(config.stop) > MAX_STOP_SEQUENCES:
        violations.append(
            FieldViolation("parameters.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        )
    for i, stop in enumerate(config.stop):
        if not 1 <= len(stop.encode()) <= MAX_STOP_SEQUENCE_BYTES:
            violations.append(
                FieldViolation(
                    f"parameters.stop[{i}]",
                    f"must be 1 to {MAX_STOP_SEQUENCE_BYTES} bytes of UTF-8",
                )
            )
    if config.max_output_chars < 0:
        violations.append(
            FieldViolation("processing.max_output_chars", "must not be negative (0 = no limit)")
        )
    seen: set[str] = set()
    if len(config.pii_redaction.patterns) > MAX_REDACTION_PATTERNS:
        violations.append(
            FieldViolation(
                "processing.pii_redaction.patterns",
                f"at most {MAX_REDACTION_PATTERNS} patterns are allowed",
            )
        )
    for i, pattern in enumerate(config.pii_redaction.patterns[:MAX_REDACTION_PATTERNS]):
        where = f"processing.pii_redaction.patterns[{i}]"
        if not 1 <= len(pattern.name) <= MAX_PATTERN_NAME_CHARS:
            violations.append(
                FieldViolation(f"{where}.name", f"must be 1 to {MAX_PATTERN_NAME_CHARS} characters")
            )
        elif pattern.name in seen:
            violations.append(FieldViolation(f"{where}.name", "duplicate pattern name"))
        seen.add(pattern.name)
        if not 1 <= pattern.max_match_length <= MAX_PATTERN_MATCH_LENGTH:
            violations.append(
                FieldViolation(
                    f"{where}.max_match_length", f"must be in [1, {MAX_PATTERN_MATCH_LENGTH}]"
                )
            )
        problem = _regex_problem(pattern.regex)
        if problem is not None:
            violations.append(FieldViolation(f"{where}.regex", problem))
    if config.output_schema is not None:
        try:
            Draft202012Validator.check_schema(config.output_schema)
        except SchemaError as error:
            violations.append(
                FieldViolation(
                    "output_schema",
                    f"not a valid JSON Schema (draft 2020-12) at {error.json_path}: "
                    f"{error.message}",
                )
            )
    return violations


def _regex_problem(regex: str) -> str | None:
    if not regex:
        return "required"
    if len(regex) > MAX_PATTERN_REGEX_CHARS:
        return f"at most {MAX_PATTERN_REGEX_CHARS} characters"
    try:
        compiled = re.compile(regex)
    except re.error as error:
        return f"not a valid Python regular expression: {error.msg} at position {error.pos}"
    if compiled.match("") is not None:
        return "must not match the empty string"
    return None
