"""Response processing, table-driven: every case gives the same output however it is chunked
(in one piece, one character at a time, split at every position), stop sequences, the length
limit, PII redaction with its hold-back bounds, output schema validation and config errors."""

import itertools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition, InvalidArgument
from services.gateway.core import processing
from services.gateway.core.processing import (
    BUILTIN_HOLDBACK,
    FinishOverride,
    OutputSchemaViolation,
    ResponseProcessor,
    SchemaViolation,
    check_output,
    repair_instruction,
)
from services.prompt.core.processing_config import (
    PiiKind,
    PiiRedaction,
    ProcessingConfig,
    RedactionPattern,
)

ALL_PII = PiiRedaction(kinds=tuple(PiiKind))
SECRET = RedactionPattern("SECRET", r"sk-[a-z0-9]{8}\b", 12)
FULL = ProcessingConfig(pii_redaction=PiiRedaction(kinds=tuple(PiiKind), patterns=(SECRET,)))


def run(
    config: ProcessingConfig, chunks: Sequence[str]
) -> tuple[str, FinishOverride | None, dict[str, int]]:
    processor = ResponseProcessor(config)
    out = "".join(processor.feed(chunk) for chunk in chunks) + processor.finish()
    return out, processor.finish_reason, dict(processor.redactions)


def chunkings(text: str) -> Iterator[list[str]]:
    """In one piece, one character at a time, split at every position (and, for short texts,
    at every pair of positions)."""
    yield [text]
    yield list(text)
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    if len(text) <= 40:
        for i, j in itertools.combinations(range(1, len(text)), 2):
            yield [text[:i], text[i:j], text[j:]]


def assert_chunk_invariant(
    config: ProcessingConfig,
    text: str,
    expected: str,
    reason: FinishOverride | None = None,
    counts: dict[str, int] | None = None,
) -> None:
    for chunks in chunkings(text):
        assert run(config, chunks) == (expected, reason, counts or {}), chunks


# --------------------------------------------------------------------------------------------
# Stop sequences and maximum length
# --------------------------------------------------------------------------------------------

STOP = FinishOverride.STOP_SEQUENCE
LENGTH = FinishOverride.LENGTH


@pytest.mark.parametrize(
    ("config", "text", "expected", "reason"),
    [
        pytest.param(ProcessingConfig(), "plain text", "plain text", None, id="no-stages"),
        pytest.param(ProcessingConfig(stop=("END",)), "hi END there", "hi ", STOP, id="stop"),
        pytest.param(ProcessingConfig(stop=("END",)), "ENDING", "", STOP, id="stop-at-start"),
        pytest.param(ProcessingConfig(stop=("END",)), "hi EN", "hi EN", None, id="prefix-at-end"),
        pytest.param(ProcessingConfig(stop=("END",)), "hi ENEND", "hi EN", STOP, id="restart"),
        pytest.param(ProcessingConfig(stop=("aab",)), "xaaab", "xa", STOP, id="self-overlap"),
        pytest.param(ProcessingConfig(stop=("abab",)), "xabababab", "x", STOP, id="periodic"),
        pytest.param(ProcessingConfig(stop=("abc", "ab")), "xxabcx", "xx", STOP, id="prefix-seqs"),
        pytest.param(
            ProcessingConfig(stop=("abcd", "bc")), "abcd", "a", STOP, id="first-completed-wins"
        ),
        pytest.param(
            ProcessingConfig(stop=("c", "abc")), "xabc", "x", STOP, id="longest-of-same-end"
        ),
        pytest.param(ProcessingConfig(stop=("🛑",)), "go 😀 🛑 no", "go 😀 ", STOP, id="emoji"),
        pytest.param(ProcessingConfig(max_output_chars=5), "hello", "hello", None, id="exact"),
        pytest.param(ProcessingConfig(max_output_chars=5), "hello!", "hello", LENGTH, id="cut"),
        pytest.param(
            ProcessingConfig(max_output_chars=4), "héllo wörld", "héll", LENGTH, id="cut-accents"
        ),
        pytest.param(
            ProcessingConfig(max_output_chars=3), "👨‍👩‍👧x", "👨‍👩", LENGTH, id="code-points"
        ),
        pytest.param(
            ProcessingConfig(stop=("!",), max_output_chars=5),
            "hello!",
            "hello",
            STOP,
            id="stop-at-exact-length",
        ),
        pytest.param(
            ProcessingConfig(stop=("STOP",), max_output_chars=3),
            "abcdSTOP",
            "abc",
            LENGTH,
            id="length-before-stop",
        ),
    ],
)
def test_stop_and_length(
    config: ProcessingConfig, text: str, expected: str, reason: FinishOverride | None
) -> None:
    assert_chunk_invariant(config, text, expected, reason)


def test_stop_holds_back_only_a_possible_prefix() -> None:
    processor = ResponseProcessor(ProcessingConfig(stop=("END", "STOP")))
    assert processor.feed("abc E") == "abc "
    assert processor.feed("x ST") == "Ex "
    assert processor.feed("O") == ""
    assert processor.feed("P and more") == ""
    assert processor.done
    assert processor.feed("ignored") == ""
    assert processor.finish() == ""
    assert processor.finish_reason is STOP


def test_done_after_length_and_feed_after_finish() -> None:
    processor = ResponseProcessor(ProcessingConfig(max_output_chars=3))
    # (A tuple each time: mypy would narrow `processor.done` across plain asserts.)
    assert (processor.feed("abc"), processor.done) == ("abc", False)
    assert (processor.feed(""), processor.done) == ("", False)
    assert (processor.feed("d"), processor.done) == ("", True)
    assert processor.finish() == ""
    assert processor.finish_reason is LENGTH
    with pytest.raises(RuntimeError):
        processor.feed("x")


# --------------------------------------------------------------------------------------------
# PII redaction
# --------------------------------------------------------------------------------------------

EMAIL = PiiRedaction(kinds=(PiiKind.EMAIL,))
PHONE = PiiRedaction(kinds=(PiiKind.PHONE,))
CARD = PiiRedaction(kinds=(PiiKind.CARD_NUMBER,))


@pytest.mark.parametrize(
    ("redaction", "text", "expected", "counts"),
    [
        (EMAIL, "mail john.doe@example.com now", "mail [EMAIL] now", {"EMAIL": 1}),
        (EMAIL, "to a.b-c+tag@mail.example.co.uk.", "to [EMAIL].", {"EMAIL": 1}),
        (EMAIL, "x@y.io,z@w.de", "[EMAIL],[EMAIL]", {"EMAIL": 2}),
        (EMAIL, "no @ here, a@b, user@localhost", "no @ here, a@b, user@localhost", {}),
        (PHONE, "call +44 20 7946 0958.", "call [PHONE].", {"PHONE": 1}),
        (PHONE, "call +14155552671 now", "call [PHONE] now", {"PHONE": 1}),
        (PHONE, "+1 (415) 555-2671", "[PHONE]", {"PHONE": 1}),
        (PHONE, "(555) 123-4567 or 555.123.4567", "[PHONE] or [PHONE]", {"PHONE": 2}),
        (PHONE, "tel: 06 12 34 56 78", "tel: [PHONE]", {"PHONE": 1}),
        (PHONE, "030 1234567", "[PHONE]", {"PHONE": 1}),
        (PHONE, "in 2024 room 12 call 555-1234", "in 2024 room 12 call 555-1234", {}),
        (PHONE, "costs $1 299 or 1 000 000 €", "costs $1 299 or 1 000 000 €", {}),
        (PHONE, "at 2024-01-15 10:30, 12.05.2024", "at 2024-01-15 10:30, 12.05.2024", {}),
        (PHONE, "in 1999 2000 2001", "in 1999 2000 2001", {}),
        (PHONE, "pi is 3.14159265358", "pi is 3.14159265358", {}),
        (CARD, "card 4111 1111 1111 1111!", "card [CARD_NUMBER]!", {"CARD_NUMBER": 1}),
        (CARD, "4111-1111-1111-1111", "[CARD_NUMBER]", {"CARD_NUMBER": 1}),
        (CARD, "4111111111111111", "[CARD_NUMBER]", {"CARD_NUMBER": 1}),
        (CARD, "amex 378282246310005", "amex [CARD_NUMBER]", {"CARD_NUMBER": 1}),
        (CARD, "bad 4111 1111 1111 1112", "bad 4111 1111 1111 1112", {}),
        (CARD, "id 41111111111111110000", "id 41111111111111110000", {}),  # 22 digits
        (
            ALL_PII,
            "a@b.io 4111 1111 1111 1111 +1 415 555 2671",
            "[EMAIL] [CARD_NUMBER] [PHONE]",
            {"EMAIL": 1, "CARD_NUMBER": 1, "PHONE": 1},
        ),
        (
            PiiRedaction(patterns=(SECRET,)),
            "key sk-abcd1234, not sk-abcd12345",
            "key [SECRET], not sk-abcd12345",
            {"SECRET": 1},
        ),
        (
            PiiRedaction(patterns=(SECRET, RedactionPattern("ID", r"ID-\d{4}", 7))),
            "ID-1234 sk-00000000 ID-9 sk-00000000ID-1234",
            "[ID] [SECRET] ID-9 sk-00000000[ID]",
            {"ID": 2, "SECRET": 1},
        ),
        (
            ALL_PII,
            "naïve café 😀👍🏽 👨‍👩‍👧 — ok «ça» 中文 ١٢٣٤٥٦٧٨٩٠",
            "naïve café 😀👍🏽 👨‍👩‍👧 — ok «ça» 中文 ١٢٣٤٥٦٧٨٩٠",
            {},
        ),
        (ALL_PII, "é@ü.de 😀a@b.de😀", "é@ü.de 😀[EMAIL]😀", {"EMAIL": 1}),
    ],
)
def test_redaction(
    redaction: PiiRedaction, text: str, expected: str, counts: dict[str, int]
) -> None:
    assert_chunk_invariant(ProcessingConfig(pii_redaction=redaction), text, expected, None, counts)


def test_stages_compose_in_contract_order() -> None:
    config = ProcessingConfig(stop=("STOP",), max_output_chars=30, pii_redaction=ALL_PII)
    text = "mail me@x.com STOP a@b.com"
    assert_chunk_invariant(config, text, "mail [EMAIL] ", STOP, {"EMAIL": 1})
    # The length limit counts the model's characters, before redaction.
    config = ProcessingConfig(max_output_chars=21, pii_redaction=ALL_PII)
    text = "mail me@example.com  and more"
    assert_chunk_invariant(config, text, "mail [EMAIL]  ", LENGTH, {"EMAIL": 1})


def test_prose_is_held_back_by_at_most_a_word() -> None:
    processor = ResponseProcessor(ProcessingConfig(pii_redaction=ALL_PII))
    sent = "".join(processor.feed(c) for c in "Hello world, how are")
    assert sent == "Hello world, how "
    assert processor.feed(" you") == "are "
    assert processor.finish() == "you"


def test_hold_back_is_bounded_by_the_longest_match() -> None:
    config = ProcessingConfig(pii_redaction=PiiRedaction(patterns=(SECRET,)))
    processor = ResponseProcessor(config)
    sent = "".join(processor.feed(c) for c in "x" * 100)
    assert len(sent) == 100 - (SECRET.max_match_length + 1)
    for kind, holdback in BUILTIN_HOLDBACK.items():
        processor = ResponseProcessor(ProcessingConfig(pii_redaction=PiiRedaction(kinds=(kind,))))
        sent = "".join(processor.feed(c) for c in "1" * 500)
        assert len(sent) == 500 - holdback, kind


def test_builtin_bounds_cover_every_match() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sre_parse

    for regex, longest in [
        (processing._EMAIL_RE, processing._EMAIL_MAX),
        (processing._CARD_RE, processing._CARD_MAX),
        (processing._PHONE_RE, processing._PHONE_MAX),
    ]:
        assert sre_parse.parse(regex).getwidth()[1] == longest
    assert BUILTIN_HOLDBACK == {
        PiiKind.EMAIL: processing._EMAIL_MAX + 2,
        PiiKind.CARD_NUMBER: processing._CARD_MAX + 2,
        PiiKind.PHONE: processing._PHONE_MAX + 2,
    }


def test_many_chunks_stay_linear() -> None:
    processor = ResponseProcessor(FULL)
    text = "word a@b.io 4111 1111 1111 1111 +1 415 555 2671 and more\n" * 400
    out = "".join(processor.feed(c) for c in text) + processor.finish()
    assert out.count("[EMAIL]") == 400
    assert processor.redactions == {"EMAIL": 400, "CARD_NUMBER": 400, "PHONE": 400}


# --------------------------------------------------------------------------------------------
# Output schema
# --------------------------------------------------------------------------------------------

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "items": {"type": "array", "items": {"type": "object", "properties": {"n": {}}}},
    },
    "required": ["name"],
}
SCHEMA["properties"]["items"]["items"]["properties"]["n"] = {"type": "integer"}


def test_schema_valid_output_passes() -> None:
    text = '{"name": "a@b.io", "items": [{"n": 1}]}'
    config = ProcessingConfig(output_schema=SCHEMA, pii_redaction=ALL_PII)
    expected = '{"name": "[EMAIL]", "items": [{"n": 1}]}'
    assert_chunk_invariant(config, text, expected, None, {"EMAIL": 1})


@pytest.mark.parametrize(
    ("text", "path", "detail"),
    [
        ('{"name": "x", "items": [{"n": 1}, {"n": "2"}]}', "$.items[1].n", "is not of type"),
        ('{"items": []}', "$", "'name' is a required property"),
        ('{"name": 1}', "$.name", "is not of type 'string'"),
        ('{"name": "x"', "$", "not valid JSON"),
        ('```json\n{"name": "x"}\n```', "$", "not valid JSON"),
        ('{"name": "x", "items": [{"n": NaN}]}', "$", "not valid JSON"),
        ("", "$", "not valid JSON"),
    ],
)
def test_schema_violation(text: str, path: str, detail: str) -> None:
    processor = ResponseProcessor(ProcessingConfig(output_schema=SCHEMA))
    assert processor.feed(text) == text
    with pytest.raises(OutputSchemaViolation) as caught:
        processor.finish()
    error = caught.value
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "OUTPUT_SCHEMA_VIOLATION"
    assert error.violation.json_path == path
    assert detail in error.violation.detail
    assert error.metadata == {"json_path": path}
    assert path in error.message
    assert check_output(text, SCHEMA) == error.violation


def test_schema_checks_the_processed_output() -> None:
    config = ProcessingConfig(stop=("\n",), output_schema=SCHEMA)
    assert run(config, ['{"name": "x"}\nSure, here', " it is"]) == ('{"name": "x"}', STOP, {})


def test_repair_instruction() -> None:
    violation = SchemaViolation("$.items[1].n", "'2' is not of type 'integer'")
    text = repair_instruction(violation, SCHEMA)
    assert "$.items[1].n" in text
    assert "'2' is not of type 'integer'" in text
    assert '"required": ["name"]' in text


# --------------------------------------------------------------------------------------------
# Configuration errors
# --------------------------------------------------------------------------------------------

PATTERNS = "processing.pii_redaction.patterns"


def _patterns(*patterns: RedactionPattern) -> ProcessingConfig:
    return ProcessingConfig(pii_redaction=PiiRedaction(patterns=patterns))


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        (ProcessingConfig(stop=("",)), ["parameters.stop[0]"]),
        (ProcessingConfig(stop=("ok", "é" * 129)), ["parameters.stop[1]"]),
        (ProcessingConfig(stop=tuple(str(i) for i in range(17))), ["parameters.stop"]),
        (ProcessingConfig(max_output_chars=-1), ["processing.max_output_chars"]),
        (_patterns(RedactionPattern("A", "(", 5)), [f"{PATTERNS}[0].regex"]),
        (_patterns(RedactionPattern("A", r"\pL", 5)), [f"{PATTERNS}[0].regex"]),
        (_patterns(RedactionPattern("A", "", 5)), [f"{PATTERNS}[0].regex"]),
        (_patterns(RedactionPattern("A", "x?", 5)), [f"{PATTERNS}[0].regex"]),
        (_patterns(RedactionPattern("A", "x" * 513, 5)), [f"{PATTERNS}[0].regex"]),
        (_patterns(RedactionPattern("A", "x", 0)), [f"{PATTERNS}[0].max_match_length"]),
        (_patterns(RedactionPattern("A", "x", 257)), [f"{PATTERNS}[0].max_match_length"]),
        (_patterns(RedactionPattern("", "x", 1)), [f"{PATTERNS}[0].name"]),
        (
            _patterns(RedactionPattern("A", "x", 1), RedactionPattern("A", "y", 1)),
            [f"{PATTERNS}[1].name"],
        ),
        (ProcessingConfig(output_schema={"type": "nope"}), ["output_schema"]),
        (
            ProcessingConfig(
                stop=("",), max_output_chars=-5, pii_redaction=PiiRedaction(patterns=(SECRET,))
            ),
            ["parameters.stop[0]", "processing.max_output_chars"],
        ),
    ],
)
def test_bad_config_is_rejected(config: ProcessingConfig, fields: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ResponseProcessor(config)
    assert [v.field for v in caught.value.violations] == fields
    for field in fields:
        assert field in caught.value.message


def test_regex_errors_say_it_is_python_re() -> None:
    with pytest.raises(InvalidArgument) as caught:
        ResponseProcessor(_patterns(RedactionPattern("A", "(", 5)))
    assert "Python regular expression" in caught.value.violations[0].description


# --------------------------------------------------------------------------------------------
# Property: chunking never changes the result
# --------------------------------------------------------------------------------------------

FRAGMENTS = [
    "john.doe@example.com",
    "a@b.io",
    "+1 415 555 2671",
    "(555) 123-4567",
    "4111 1111 1111 1111",
    "4111-1111-1111-1112",
    "sk-abcd1234",
    "END",
    "EN",
    "2024",
    "😀",
    "é",
    " ",
    ".",
    "\n",
]
text_strategy = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(alphabet="ab1 @.-+()ENDsk😀é,:/$", max_size=4),
    ),
    max_size=12,
).map("".join)
config_strategy = st.builds(
    ProcessingConfig,
    stop=st.sampled_from([(), ("END",), ("END", "D@", "5 5")]),
    max_output_chars=st.sampled_from([0, 7, 40]),
    pii_redaction=st.sampled_from([PiiRedaction(), FULL.pii_redaction, EMAIL, PHONE]),
)


@settings(max_examples=300, deadline=None)
@given(config=config_strategy, text=text_strategy, data=st.data())
def test_chunking_never_changes_the_result(
    config: ProcessingConfig, text: str, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    chunks = [text[i:j] for i, j in itertools.pairwise([0, *cuts, len(text)])]
    assert run(config, chunks) == run(config, [text])
