"""Guided decoding requests (structured outputs): which guide types exist and when a request's
pair of `guided_decoding_guide_type` / `guided_decoding_guide` is well formed.

The names and types are TensorRT-LLM's (`GuidedDecodingParams.GuideType`). This module is the
floor that the facade (`facade.py`), the `tensorrt_llm` stand-in (`serving.py`) and the engine
share: it imports neither Triton nor torch nor xgrammar. Whether a guide compiles (a valid
schema, regex or grammar) is only known to the engine (`engine/guided.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EBNF_GRAMMAR",
    "GUIDE",
    "GUIDE_TYPE",
    "GUIDE_TYPES",
    "JSON",
    "JSON_SCHEMA",
    "REGEX",
    "Guide",
    "GuideError",
    "read_guide",
]

# The two request tensors (facade and tensorrt_llm alike).
GUIDE_TYPE = "guided_decoding_guide_type"
GUIDE = "guided_decoding_guide"

JSON = "json"
"""Any JSON object or array; the guide is ignored."""
JSON_SCHEMA = "json_schema"
"""JSON valid against the guide, a JSON Schema as JSON text."""
REGEX = "regex"
"""Text matching the guide, a regular expression, whole."""
EBNF_GRAMMAR = "ebnf_grammar"
"""Text of the guide's grammar (xgrammar's GBNF dialect, start rule `root`)."""
GUIDE_TYPES = (JSON, JSON_SCHEMA, REGEX, EBNF_GRAMMAR)


@dataclass(frozen=True, slots=True)
class Guide:
    """What a constrained request's output must match."""

    type: str
    """One of `GUIDE_TYPES`."""
    text: str = ""
    """The schema, regex or grammar; empty for `json`."""


class GuideError(ValueError):
    """A malformed or uncompilable guide; `str()` is `<field>: <why>`, `field` names the
    request tensor at fault."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


def read_guide(guide_type: str | None, guide: str | None) -> Guide | None:
    """The guide of a request from its two optional inputs; None (unconstrained) when the type
    is absent or empty and there is no guide. Raises `GuideError` for an unknown type, a type
    that needs a guide without one, or a guide without a type."""
    kind = (guide_type or "").strip()
    text = guide or ""
    if not kind:
        if text:
            raise GuideError(GUIDE_TYPE, f"is required when {GUIDE} is set")
        return None
    if kind not in GUIDE_TYPES:
        raise GuideError(
            GUIDE_TYPE, f"unknown guide type {kind!r}, expected one of {', '.join(GUIDE_TYPES)}"
        )
    if kind == JSON:
        return Guide(JSON)
    if not text.strip():
        raise GuideError(GUIDE, f"is required for guide type {kind} ({_WHAT[kind]})")
    return Guide(kind, text)


_WHAT = {
    JSON_SCHEMA: "a JSON Schema",
    REGEX: "a regular expression",
    EBNF_GRAMMAR: "an EBNF grammar",
}
