"""Streaming response processing: stop sequences, maximum length, PII redaction, output schema.

The gateway runs a model's output through the stages of `genai.prompt.v1.ResponseProcessing`,
in the contract's order: stop sequences (`genai.common.v1.SamplingParameters.stop`), maximum
length, PII redaction, and at the end of the stream output schema validation.
`ResponseProcessor.feed` takes each streamed chunk and returns the text that is safe to send
now; `ResponseProcessor.finish` returns the rest. However the output is split into chunks, the
concatenated result is the same as for the output in one piece: each stage holds back only the
shortest tail that later text could still change.

- Stop sequences end the output before the first completed occurrence of any of them (among
  sequences completed at the same character, the longest); the sequence and everything after it
  are dropped. The held-back tail is the longest suffix that is a proper prefix of a sequence.
- The maximum length counts Unicode code points (Python `str` characters) of the output after
  the stop sequences, before redaction.
- Redaction replaces matches with `[EMAIL]`, `[PHONE]`, `[CARD_NUMBER]` or `[<pattern name>]`,
  leftmost match first; at one position the first detector in the order e-mail, card number,
  phone, custom patterns (in configuration order) wins. Custom patterns are Python `re`
  expressions (the contract asks for RE2-compatible ones; RE2 syntax that Python lacks is
  rejected, Python-only syntax is accepted). A detector's result at a position is final once it
  has seen `horizon` characters from there (the longest possible match plus its lookahead) or,
  for the built-ins, a character that no match can contain (e.g. a letter for a phone number),
  so ordinary prose is held back by at most a word. Streaming is exact for patterns whose match
  at a position never depends on more than `max_match_length + 1` characters from it (a
  trailing `\\b` or one-character lookahead is fine; `\\d+` with a longer run is not) and whose
  lookbehinds span at most `CONTEXT_CHARS` characters.

The configuration (`ProcessingConfig`) and its checks live in
`services.prompt.core.processing_config`, which the prompt registry shares. This module imports
neither grpc nor generated code.
"""

import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from services.common import reasons
from services.common.errors import FailedPrecondition
from services.prompt.core.processing_config import (
    PiiKind,
    PiiRedaction,
    ProcessingConfig,
    validate_config,
)

CONTEXT_CHARS: Final = 32
"""Characters of already released output kept for the lookbehinds of redaction patterns."""
_MAX_SCHEMA_DETAIL_CHARS: Final = 300


class FinishOverride(enum.Enum):
    """Why processing ended the output early (`genai.common.v1.FinishReason`)."""

    STOP_SEQUENCE = "stop_sequence"
    """A stop sequence matched: FINISH_REASON_STOP_SEQUENCE."""
    LENGTH = "length"
    """`max_output_chars` cut the output: FINISH_REASON_LENGTH."""


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """Why an output failed its output schema."""

    json_path: str
    """JSON path of the first failing value (`$` for the whole output or unparseable JSON)."""
    detail: str
    """What is wrong, in words."""


class OutputSchemaViolation(FailedPrecondition):
    """The final output does not validate against the output schema (FAILED_PRECONDITION,
    reason OUTPUT_SCHEMA_VIOLATION); `violation` says where and why."""

    default_reason = reasons.OUTPUT_SCHEMA_VIOLATION

    def __init__(self, violation: SchemaViolation) -> None:
        super().__init__(
            f"the output does not match the output schema at {violation.json_path}: "
            f"{violation.detail}",
            metadata={"json_path": violation.json_path},
        )
        self.violation = violation


# --------------------------------------------------------------------------------------------
# Stop sequences and maximum length
# --------------------------------------------------------------------------------------------


class StopSequenceStage:
    """Ends the output before the first stop sequence, also across chunk boundaries."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._held = ""
        self.hit = False
        """Whether a stop sequence matched; nothing more is emitted."""

    def feed(self, chunk: str) -> str:
        """Returns the text before any (possible) stop sequence; holds back a possible prefix."""
        if self.hit or not self._stops:
            return "" if self.hit else chunk
        text = self._held + chunk
        cut = self._first_stop(text)
        if cut is not None:
            self.hit = True
            self._held = ""
            return text[:cut]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def finish(self) -> str:
        """Returns what was held back: at the end of the stream it is no stop sequence."""
        held, self._held = self._held, ""
        return held

    def _first_stop(self, text: str) -> int | None:
        """Start of the stop sequence that completes first (the longest among ties)."""
        best: tuple[int, int] | None = None  # (end, -length)
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0:
                key = (start + len(stop), -len(stop))
                if best is None or key < best:
                    best = key
        return None if best is None else best[0] + best[1]

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop sequence."""
        if not text:
            return 0
        last = text[-1]
        longest = 0
        for stop in self._stops:
            # Candidate prefix lengths end with `last`; try the longest first.
            end = min(len(stop) - 1, len(text))
            while end > longest:
                end = stop.rfind(last, 0, end) + 1
                if end <= longest:
                    break
                if text.endswith(stop[:end]):
                    longest = end
                    break
                end -= 1
        return longest


class MaxLengthStage:
    """Drops the output past `limit` characters (0 = no limit)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._left = limit
        self.cut = False
        """Whether text past the limit arrived (and was dropped)."""

    def feed(self, text: str) -> str:
        """Returns the part of `text` within the limit."""
        if self._limit == 0:
            return text
        if len(text) <= self._left:
            self._left -= len(text)
            return text
        if text:
            self.cut = True
        kept = text[: self._left]
        self._left = 0
        return kept


# --------------------------------------------------------------------------------------------
# PII redaction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Detector:
    label: str
    regex: re.Pattern[str]
    horizon: int
    """Characters from a start position its match attempt may examine, plus one (end of text)."""
    charset: str | None
    """Characters a match may contain; any other one ends every attempt that reaches it."""
    accept: Callable[[str], bool] | None = None

    def find(self, text: str, pos: int) -> re.Match[str] | None:
        """The leftmost accepted, non-empty match at or after `pos`."""
        while True:
            match = self.regex.search(text, pos)
            if match is None:
                return None
            if match.end() > match.start() and (self.accept is None or self.accept(match[0])):
                return match
            pos = match.start() + 1

    def undecided_from(self, text: str, pos: int) -> int:
        """First position at or after `pos` whose result more text could still change."""
        first = len(text) - self.horizon + 1
        if self.charset is not None:
            # Just past the last character a match cannot contain (stripping runs in C).
            first = max(first, len(text.rstrip(self.charset)))
        return max(first, pos)


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if "0" <= c <= "9"]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


_THOUSANDS = re.compile(r"[0-9]{1,3}(?:([ .])[0-9]{3})(?:\1[0-9]{3})*")
_YEARS = re.compile(r"(?:(?:19|20)[0-9]{2}[ .-])+(?:19|20)[0-9]{2}")


def _phone_ok(number: str) -> bool:
    digits = sum("0" <= c <= "9" for c in number)
    if number.startswith("+"):
        return 8 <= digits <= 15
    if _THOUSANDS.fullmatch(number) or _YEARS.fullmatch(number):
        return False  # 1 000 000, 1.234.567; 1999 2000 2001
    return 9 <= digits <= 12


# Each built-in: the regex, its longest match, its lookahead's reach past a match. None of them
# consumes or looks past a character outside its charset, which makes those characters barriers.
_EMAIL_RE: Final = (
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
    r"(?:[A-Za-z0-9-]{1,63}\.){1,4}[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_EMAIL_MAX: Final = 64 + 1 + 4 * 64 + 24
_CARD_RE: Final = r"(?<![0-9])(?<![0-9][ -])[1-9](?:[ -]?[0-9]){12,18}(?![ -]?[0-9])"
_CARD_MAX: Final = 1 + 18 * 2
_PHONE_RE: Final = (
    r"(?<![\w+$€£¥])"
    r"(?:\+[1-9][0-9]{0,2}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,6})){1,5}"
    r"|(?<![0-9][ .,-])(?:\([0-9]{2,5}\)[ .-]?|[0-9]{2,5}[ .-])(?:[0-9]{2,8}[ .-]){0,3}[0-9]{2,8})"
    r"(?![0-9:/]|[ .,-][0-9])"
)
_PHONE_MAX: Final = max(3 + 5 * 7, 8 + 3 * 9 + 8)
_LOOKAHEAD: Final = 2

_DIGITS: Final = "0123456789"
_BUILTINS: Final[dict[PiiKind, _Detector]] = {
    PiiKind.EMAIL: _Detector(
        "EMAIL",
        re.compile(_EMAIL_RE),
        _EMAIL_MAX + _LOOKAHEAD + 1,
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" + _DIGITS + "._%+@-",
    ),
    PiiKind.CARD_NUMBER: _Detector(
        "CARD_NUMBER",
        re.compile(_CARD_RE),
        _CARD_MAX + _LOOKAHEAD + 1,
        _DIGITS + " -",
        _luhn_ok,
    ),
    PiiKind.PHONE: _Detector(
        "PHONE",
        re.compile(_PHONE_RE),
        _PHONE_MAX + _LOOKAHEAD + 1,
        _DIGITS + "+() .,-",
        _phone_ok,
    ),
}
"""The built-in detectors, in priority order."""

BUILTIN_HOLDBACK: Final = {kind: d.horizon - 1 for kind, d in _BUILTINS.items()}
"""Most characters each built-in detector holds back (only within a run of characters a match
may contain: `[A-Za-z0-9._%+@-]` for e-mail, digits, space and `-` for cards, digits, space and
`+().,-` for phones)."""


class RedactionStage:
    """Replaces personal data, holding back only a tail a match could still start in."""

    def __init__(self, redaction: PiiRedaction) -> None:
        detectors = [d for kind, d in _BUILTINS.items() if kind in redaction.kinds]
        detectors += [
            _Detector(p.name, re.compile(p.regex), p.max_match_length + 2, None)
            for p in redaction.patterns
        ]
        self._detectors = tuple(detectors)
        self._buf = ""  # context (released text) + pending text, unredacted
        self._pos = 0  # start of the pending text in `_buf`
        self.counts: dict[str, int] = {}
        """Redactions so far, by label (`EMAIL`, `PHONE`, `CARD_NUMBER`, pattern name)."""

    def feed(self, text: str) -> str:
        """Returns the redacted text that no later text can change."""
        if not self._detectors:
            return text
        self._buf += text
        return self._run(final=False)

    def finish(self) -> str:
        """Returns the rest, redacted."""
        if not self._detectors:
            return ""
        return self._run(final=True)

    def _run(self, *, final: bool) -> str:
        buf, pos = self._buf, self._pos
        avail = len(buf)
        undecided = [avail if final else d.undecided_from(buf, pos) for d in self._detectors]
        found: list[re.Match[str] | None] = [None] * len(self._detectors)
        searched_from = [-1] * len(self._detectors)
        out: list[str] = []
        while pos < avail:
            best: tuple[int, int, re.Match[str]] | None = None  # (start, priority, match)
            known: list[int] = []  # detector i has no match in [pos, known[i])
            for i, detector in enumerate(self._detectors):
                limit = max(pos, undecided[i])
                if limit == pos:  # undecided already at `pos`
                    known.append(pos)
                    continue
                match = found[i]
                if searched_from[i] < 0 or (match is not None and match.start() < pos):
                    # A search result stays valid until a redaction passes its start.
                    match = found[i] = detector.find(buf, pos)
                    searched_from[i] = pos
                if match is not None and match.start() < limit:
                    known.append(match.start())
                    if best is None or match.start() < best[0]:
                        best = (match.start(), i, match)
                else:
                    known.append(limit)
            if (
                best is not None
                and min(known) >= best[0]
                and all(known[i] > best[0] for i in range(best[1]))
            ):
                start, i, match = best
                label = self._detectors[i].label
                out += (buf[pos:start], f"[{label}]")
                self.counts[label] = self.counts.get(label, 0) + 1
                pos = match.end()
                continue
            safe = min(known)
            out.append(buf[pos:safe])
            pos = safe
            break
        drop = max(0, pos - CONTEXT_CHARS)
        self._buf, self._pos = buf[drop:], pos - drop
        return "".join(out)


# --------------------------------------------------------------------------------------------
# Output schema
# --------------------------------------------------------------------------------------------


def check_output(text: str, schema: Mapping[str, Any]) -> SchemaViolation | None:
    """Parses `text` as JSON and validates it against `schema` (draft 2020-12).

    Returns None when it is valid, else where and why it is not (the most relevant error,
    as `jsonschema.exceptions.best_match` picks it).
    """
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        return SchemaViolation("$", f"the output is not valid JSON: {error}")
    first = best_match(Draft202012Validator(schema).iter_errors(document))
    if first is None:
        return None
    detail = first.message
    if len(detail) > _MAX_SCHEMA_DETAIL_CHARS:
        detail = detail[: _MAX_SCHEMA_DETAIL_CHARS - 3] + "..."
    return SchemaViolation(first.json_path, detail)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def repair_instruction(violation: SchemaViolation, schema: Mapping[str, Any]) -> str:
    """The user message of the one-shot repair call: what was wrong and the schema to meet.

    The gateway sends it after the failed output (as the assistant's turn) and runs the reply
    through a fresh `ResponseProcessor`.
    """
    return (
        "Your previous reply does not match the required JSON Schema: "
        f"at {violation.json_path}, {violation.detail}\n"
        "Reply again with only the corrected JSON value: no code fences, no explanations. "
        "It must validate against this JSON Schema (draft 2020-12):\n"
        + json.dumps(schema, sort_keys=True, ensure_ascii=False)
    )


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


class ResponseProcessor:
    """Runs one response's output through the processing stages, chunk by chunk.

    Call `feed` with each streamed chunk and send what it returns; stop the upstream generation
    once `done` is true (a stop sequence matched or the length limit was passed); call `finish`
    once at the end and send what it returns. `finish_reason` then overrides the backend's
    finish reason when set, and `redactions` counts the replacements per label.
    """

    def __init__(self, config: ProcessingConfig) -> None:
        validate_config(config)
        self._stop = StopSequenceStage(config.stop)
        self._length = MaxLengthStage(config.max_output_chars)
        self._redaction = RedactionStage(config.pii_redaction)
        self._schema = config.output_schema
        self._output: list[str] | None = [] if self._schema is not None else None
        self._finished = False

    @property
    def done(self) -> bool:
        """Whether the output is complete: later chunks are ignored, stop the upstream."""
        return self._stop.hit or self._length.cut

    @property
    def finish_reason(self) -> FinishOverride | None:
        """`LENGTH` when the limit cut the output, else `STOP_SEQUENCE` when a stop sequence
        matched, else None (keep the backend's reason)."""
        if self._length.cut:
            return FinishOverride.LENGTH
        if self._stop.hit:
            return FinishOverride.STOP_SEQUENCE
        return None

    @property
    def redactions(self) -> Mapping[str, int]:
        """Redactions so far by label: `EMAIL`, `PHONE`, `CARD_NUMBER` or a pattern's name."""
        return dict(self._redaction.counts)

    def feed(self, chunk: str) -> str:
        """Processes one chunk; returns the text that is safe to send now (maybe empty)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self.done:
            return ""
        return self._emit(self._redaction.feed(self._length.feed(self._stop.feed(chunk))))

    def finish(self) -> str:
        """Ends the stream; returns the rest of the output.

        Raises `OutputSchemaViolation` when an output schema is configured and the whole
        processed output does not parse as JSON or does not validate.
        """
        if self._finished:
            return ""
        self._finished = True
        text = self._redaction.feed(self._length.feed(self._stop.finish()))
        rest = self._emit(text + self._redaction.finish())
        if self._output is not None and self._schema is not None:
            violation = check_output("".join(self._output), self._schema)
            if violation is not None:
                raise OutputSchemaViolation(violation)
        return rest

    def _emit(self, text: str) -> str:
        if self._output is not None and text:
            self._output.append(text)
        return text
