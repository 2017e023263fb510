"""Completions without a registry version, for transports that address a catalog model
directly (the OpenAI-compatible HTTP API, `services.gateway.openai`), and output schemas that
come with the request rather than with the version.

An inline prompt has no name, version, parameters, routing preferences or response processing:
the request's messages are the whole conversation (chat), or `InlinePrompt.text` is sent to the
model as raw text (a text completion). `inline_rendered` gives the pipeline the
`RenderedPrompt` that stands for it, so that everything after rendering (input, parameters, the
pinned route, quota, processing, the request log, metrics and spans) runs as for any version.

`with_output_schema` puts a request's JSON Schema where a version's own would be, so that the
pipeline's output schema handling applies unchanged: guided decoding where the model supports
it, the check at the end, and a repair only if the version asks for one.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Final

from genai.prompt.v1 import prompt_pb2
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from services.common.errors import FieldViolation
from services.gateway.outcome import Request
from services.prompt.client import RenderedPrompt, ResolvedVersion

__all__ = [
    "INLINE_TEXT_FIELD",
    "OUTPUT_SCHEMA_FIELD",
    "InlinePrompt",
    "inline_rendered",
    "inline_violations",
    "output_schema_violations",
    "with_output_schema",
]

INLINE_TEXT_FIELD: Final = "inline.text"
"""The field path that violations of an inline prompt's text name."""
OUTPUT_SCHEMA_FIELD: Final = "output_schema"
"""The field path that violations of a request's output schema name."""
_EMPTY_VERSION: Final = ResolvedVersion(prompt_pb2.PromptVersion(), {})


@dataclass(frozen=True, slots=True)
class InlinePrompt:
    """No registry version: request.messages are the whole conversation, or `text` is sent
    as raw text."""

    text: str | None = None
    """The raw text of a text completion; None: a chat completion of `request.messages`."""


def inline_rendered(inline: InlinePrompt) -> RenderedPrompt:
    """The rendered prompt that stands for `inline`: no name (`prompt` is empty), version 0,
    no rendered messages, and the inline text (None for chat)."""
    return RenderedPrompt(
        prompt="",
        version=0,
        content_hash="",
        messages=(),
        source=_EMPTY_VERSION,
        text=inline.text,
    )


def inline_violations(request: Request, inline: InlinePrompt) -> list[FieldViolation]:
    """What a request with an inline prompt may not have: a prompt name, a version selector
    (label, version or experiment), an unpinned model (`routing.model`), and, for chat, an
    empty conversation or a blank turn; for text, blank text (field `inline.text`) or
    conversation turns."""
    violations: list[FieldViolation] = []
    if request.prompt:
        violations.append(
            FieldViolation("prompt", "must be empty: the request has an inline prompt")
        )
    selector = request.WhichOneof("selector")
    if selector is not None:
        violations.append(
            FieldViolation(selector, "applies to registry prompts only, not an inline prompt")
        )
    if not request.routing.model:
        violations.append(
            FieldViolation("routing.model", "is required: an inline prompt names its model")
        )
    if inline.text is None:
        if not request.messages:
            violations.append(
                FieldViolation("messages", "at least one message is required (the conversation)")
            )
        violations.extend(
            FieldViolation(f"messages[{index}].content", "must not be empty")
            for index, message in enumerate(request.messages)
            if not message.content.strip()
        )
    else:
        if not inline.text.strip():
            violations.append(FieldViolation(INLINE_TEXT_FIELD, "must not be empty"))
        if request.messages:
            violations.append(
                FieldViolation(
                    "messages",
                    "a text completion takes no conversation turns (its text is the input)",
                )
            )
    return violations


def output_schema_violations(schema: Mapping[str, Any]) -> list[FieldViolation]:
    """Why a request's output schema cannot be used (empty when it can): it must be a JSON
    object that is a valid JSON Schema (draft 2020-12)."""
    try:
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        return [FieldViolation(OUTPUT_SCHEMA_FIELD, f"is not JSON: {error}")]
    problem = _schema_problem(canonical)
    return [FieldViolation(OUTPUT_SCHEMA_FIELD, problem)] if problem else []


@lru_cache(maxsize=256)
def _schema_problem(canonical: str) -> str:
    """Why `canonical` (sorted, compact JSON) is not a valid JSON Schema; empty when it is.
    Cached: clients send the same few schemas again and again."""
    try:
        Draft202012Validator.check_schema(json.loads(canonical))
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        return (
            f"is not a valid JSON Schema (draft 2020-12){f' at {where}' if where else ''}: "
            f"{error.message[:300]}"
        )
    return ""


def with_output_schema(rendered: RenderedPrompt, schema: Mapping[str, Any]) -> RenderedPrompt:
    """`rendered` with `schema` as its version's output schema (a copy: the cached version is
    shared and never modified). The caller has checked that the version has none of its own and
    that `schema` is valid (`output_schema_violations`)."""
    proto = prompt_pb2.PromptVersion()
    proto.CopyFrom(rendered.source.proto)
    json_format.ParseDict(dict(schema), proto.output_schema)
    return replace(rendered, source=replace(rendered.source, proto=proto))
