"""genai_triton.facade without Triton: reading facade inputs, stop words, outputs, tagged
errors. `pb_utils` is a small stand-in for the Python backend's module."""

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from genai_triton import facade
from genai_triton.guides import Guide
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray


class FakeTensor:
    def __init__(self, name: str, array: NDArray[Any]) -> None:
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> NDArray[Any]:
        return self._array


class FakeTritonError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message = message
        self.code = code


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: Any = None) -> None:
        self.output_tensors = output_tensors
        self.error = error


pb_utils = SimpleNamespace(
    Tensor=FakeTensor,
    TritonError=FakeTritonError,
    InferenceResponse=FakeResponse,
    get_input_tensor_by_name=lambda request, name: request.get(name),
)


def text(*values: str | bytes, shape: tuple[int, ...] | None = None) -> NDArray[Any]:
    encoded = [v.encode() if isinstance(v, str) else v for v in values]
    return np.array(encoded, dtype=np.object_).reshape(shape or (1, len(encoded)))


def scalar(value: Any, dtype: Any) -> NDArray[Any]:
    return np.array([[value]], dtype=dtype)


def request(**arrays: NDArray[Any]) -> dict[str, NDArray[Any]]:
    base = {"text_input": text("Hello there"), "max_tokens": scalar(8, np.int32)}
    base.update(arrays)
    return base


def violation(arrays: Mapping[str, NDArray[Any]]) -> facade.FacadeError:
    with pytest.raises(facade.FacadeError) as caught:
        facade.read_generation_request(arrays)
    assert caught.value.reason == facade.FIELD_VIOLATION
    return caught.value


# -- tagged errors -----------------------------------------------------------------------------


def test_facade_error_reads_reason_tag_then_message() -> None:
    error = facade.FacadeError("FIELD_VIOLATION", "max_tokens must be >= 1")

    assert str(error) == "[FIELD_VIOLATION] max_tokens must be >= 1"
    assert (error.reason, error.message) == ("FIELD_VIOLATION", "max_tokens must be >= 1")


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("FIELD_VIOLATION", "INVALID_ARG"),
        ("CONTEXT_LENGTH_EXCEEDED", "INVALID_ARG"),
        ("CANCELLED", "CANCELLED"),
        ("INTERNAL_ERROR", "INTERNAL"),
        ("BACKEND_OVERLOADED", "INTERNAL"),
    ],
)
def test_facade_error_becomes_a_triton_error_with_a_matching_code(reason: str, code: str) -> None:
    triton_error = facade.FacadeError(reason, "text").to_triton_error(pb_utils)

    assert triton_error.message == f"[{reason}] text"
    assert triton_error.code == code


def test_facade_error_without_triton_error_codes_has_just_the_message() -> None:
    class CodelessError:
        def __init__(self, message: str) -> None:
            self.message = message

    triton_error = facade.FacadeError("FIELD_VIOLATION", "x").to_triton_error(
        SimpleNamespace(TritonError=CodelessError)
    )

    assert triton_error.message == "[FIELD_VIOLATION] x"


def test_error_response_carries_the_error_and_no_outputs() -> None:
    response = facade.error_response(pb_utils, facade.FacadeError("FIELD_VIOLATION", "bad"))

    assert response.output_tensors == []
    assert response.error.message == "[FIELD_VIOLATION] bad"


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        (
            "[FIELD_VIOLATION] max_tokens must be >= 1",
            ("FIELD_VIOLATION", "max_tokens must be >= 1"),
        ),
        ("[CONTEXT_LENGTH_EXCEEDED] a [b] c", ("CONTEXT_LENGTH_EXCEEDED", "a [b] c")),
        ("unknown model 'x'", (None, "unknown model 'x'")),
        ("[not a tag] x", (None, "[not a tag] x")),
        ("[] x", (None, "[] x")),
        ("[FIELD_VIOLATION]no space", (None, "[FIELD_VIOLATION]no space")),
    ],
)
def test_parse_tagged_splits_reason_and_text(message: str, parsed: tuple[str | None, str]) -> None:
    assert facade.parse_tagged(message) == parsed


# -- reading inputs ----------------------------------------------------------------------------


def test_request_arrays_reads_the_inputs_present() -> None:
    arrays = facade.request_arrays(
        pb_utils,
        {
            "text_input": FakeTensor("text_input", text("hi")),
            "other": FakeTensor("other", text("x")),
        },
    )

    assert list(arrays) == ["text_input"]


def test_a_minimal_request_gets_the_documented_defaults() -> None:
    generation = facade.read_generation_request(request())

    assert generation == facade.GenerationRequest(prompt="Hello there", max_tokens=8)
    assert generation.stream is False
    assert generation.exclude_input_in_output is False
    assert (generation.temperature, generation.top_k, generation.top_p) == (0.0, 0, 1.0)
    assert generation.stop_words == ()


def test_every_facade_input_is_read() -> None:
    generation = facade.read_generation_request(
        request(
            stream=scalar(True, np.bool_),
            end_id=scalar(2, np.int32),
            pad_id=scalar(0, np.int32),
            temperature=scalar(0.7, np.float32),
            top_k=scalar(40, np.int32),
            top_p=scalar(0.9, np.float32),
            repetition_penalty=scalar(1.1, np.float32),
            presence_penalty=scalar(0.5, np.float32),
            frequency_penalty=scalar(-0.5, np.float32),
            seed=scalar(2**63 + 5, np.uint64),
            stop_words=text("\n\n", "", "User:"),
            bad_words=text("darn"),
            exclude_input_in_output=scalar(True, np.bool_),
        )
    )

    assert generation.stream is True
    assert (generation.end_id, generation.pad_id) == (2, 0)
    assert generation.temperature == pytest.approx(0.7)
    assert generation.top_k == 40
    assert generation.top_p == pytest.approx(0.9)
    assert generation.repetition_penalty == pytest.approx(1.1)
    assert generation.presence_penalty == pytest.approx(0.5)
    assert generation.frequency_penalty == pytest.approx(-0.5)
    assert generation.seed == 2**63 + 5
    assert generation.stop_words == ("\n\n", "User:")  # empty words are dropped
    assert generation.bad_words == ("darn",)
    assert generation.exclude_input_in_output is True
    assert isinstance(generation.max_tokens, int)
    assert isinstance(generation.stream, bool)


def test_text_is_decoded_as_utf8() -> None:
    generation = facade.read_generation_request(request(text_input=text("naïve café 東京 🚀")))

    assert generation.prompt == "naïve café 東京 🚀"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (request(max_tokens=scalar(0, np.int32)), "max_tokens must be >= 1, got 0"),
        (request(max_tokens=scalar(-4, np.int32)), "max_tokens must be >= 1, got -4"),
        ({"text_input": text("p")}, "max_tokens is required"),
        ({"max_tokens": scalar(3, np.int32)}, "text_input is required"),
        (request(text_input=text("a", "b")), "text_input must hold one element, got 2"),
        (request(text_input=text(b"\xff\xfe")), "text_input is not valid UTF-8"),
        (request(stop_words=text(b"\xc3")), "stop_words is not valid UTF-8"),
        (
            request(max_tokens=np.array([[3, 4]], dtype=np.int32)),
            "max_tokens must hold one element, got 2",
        ),
        (request(temperature=scalar(-0.1, np.float32)), "temperature must be >= 0"),
        (request(temperature=scalar(np.nan, np.float32)), "temperature must be >= 0, got nan"),
        (request(top_k=scalar(-1, np.int32)), "top_k must be >= 0, got -1"),
        (request(top_p=scalar(0.0, np.float32)), "top_p must be in (0, 1], got 0"),
        (request(top_p=scalar(1.5, np.float32)), "top_p must be in (0, 1], got 1.5"),
        (request(repetition_penalty=scalar(0, np.float32)), "repetition_penalty must be > 0"),
    ],
)
def test_bad_inputs_are_field_violations_naming_the_field(
    arrays: dict[str, NDArray[Any]], message: str
) -> None:
    error = violation(arrays)

    assert error.message.startswith(message)
    assert str(error).startswith(f"[FIELD_VIOLATION] {message}")


SCHEMA = '{"type": "object", "properties": {"name": {"type": "string"}}}'


@pytest.mark.parametrize(
    ("arrays", "guide"),
    [
        ({}, None),
        ({"guided_decoding_guide_type": text("")}, None),
        ({"guided_decoding_guide_type": text(""), "guided_decoding_guide": text("")}, None),
        ({"guided_decoding_guide_type": text("json")}, Guide("json")),
        (
            {"guided_decoding_guide_type": text("json"), "guided_decoding_guide": text("x")},
            Guide("json"),  # a json guide needs no guide text and ignores one
        ),
        (
            {
                "guided_decoding_guide_type": text("json_schema"),
                "guided_decoding_guide": text(SCHEMA),
            },
            Guide("json_schema", SCHEMA),
        ),
        (
            {
                "guided_decoding_guide_type": text("regex"),
                "guided_decoding_guide": text(r"\d{3}"),
            },
            Guide("regex", r"\d{3}"),
        ),
        (
            {
                "guided_decoding_guide_type": text("ebnf_grammar"),
                "guided_decoding_guide": text('root ::= "yes" | "no"'),
            },
            Guide("ebnf_grammar", 'root ::= "yes" | "no"'),
        ),
    ],
)
def test_the_guided_decoding_inputs_become_a_guide(
    arrays: dict[str, NDArray[Any]], guide: Guide | None
) -> None:
    generation = facade.read_generation_request(request(**arrays))

    assert generation.guide == guide


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"guided_decoding_guide_type": text("xml")},
            "guided_decoding_guide_type: unknown guide type 'xml', expected one of json, "
            "json_schema, regex, ebnf_grammar",
        ),
        (
            {"guided_decoding_guide_type": text("JSON")},
            "guided_decoding_guide_type: unknown guide type 'JSON'",
        ),
        (
            {"guided_decoding_guide_type": text("json_schema")},
            "guided_decoding_guide: is required for guide type json_schema (a JSON Schema)",
        ),
        (
            {"guided_decoding_guide_type": text("regex"), "guided_decoding_guide": text(" ")},
            "guided_decoding_guide: is required for guide type regex (a regular expression)",
        ),
        (
            {"guided_decoding_guide_type": text("ebnf_grammar")},
            "guided_decoding_guide: is required for guide type ebnf_grammar (an EBNF grammar)",
        ),
        (
            {"guided_decoding_guide": text(SCHEMA)},
            "guided_decoding_guide_type: is required when guided_decoding_guide is set",
        ),
        (
            {"guided_decoding_guide_type": text("json", "regex")},
            "guided_decoding_guide_type must hold one element, got 2",
        ),
        (
            {"guided_decoding_guide_type": text("regex"), "guided_decoding_guide": text(b"\xff")},
            "guided_decoding_guide is not valid UTF-8",
        ),
    ],
)
def test_malformed_guides_are_field_violations_naming_the_input(
    arrays: dict[str, NDArray[Any]], message: str
) -> None:
    error = violation(request(**arrays))

    assert str(error).startswith(f"[FIELD_VIOLATION] {message}")


def test_read_texts_reads_one_text_per_batch_row() -> None:
    arrays = {"text_input": text("one", "two", "three", shape=(3, 1))}

    assert facade.read_texts(arrays) == ["one", "two", "three"]


def test_read_scalar_gives_the_default_when_absent() -> None:
    assert facade.read_scalar({}, "seed", int, None) is None
    assert facade.read_scalar({}, "top_p", float, 1.0) == 1.0


# -- stop words --------------------------------------------------------------------------------


def feed(stop_words: list[str], deltas: list[str]) -> tuple[str, bool]:
    """Streams `deltas` through a filter the way a model does; (text emitted, stopped)."""
    stops = facade.StopWordFilter(stop_words)
    emitted = []
    for delta in deltas:
        out, stopped = stops.push(delta)
        emitted.append(out)
        if stopped:
            return "".join(emitted), True
    emitted.append(stops.flush())
    return "".join(emitted), False


def test_without_stop_words_text_passes_straight_through() -> None:
    stops = facade.StopWordFilter(["", ""])

    assert stops.push("abc") == ("abc", False)
    assert stops.flush() == ""


def test_a_stop_word_inside_one_delta_cuts_the_text_before_it() -> None:
    stops = facade.StopWordFilter(["STOP"])

    assert stops.push("hello STOP world") == ("hello ", True)


def test_a_possible_stop_word_start_is_held_back_then_released() -> None:
    stops = facade.StopWordFilter(["</s>"])

    assert stops.push("a </") == ("a ", False)
    assert stops.push("b>") == ("</b>", False)
    assert stops.push("<") == ("", False)
    assert stops.flush() == "<"


def test_a_stop_word_across_deltas_is_never_emitted() -> None:
    assert feed(["User:"], ["Hi", " Us", "er", ": more"]) == ("Hi ", True)


def test_the_earliest_of_several_stop_words_wins() -> None:
    assert feed(["world", "lo w"], ["hello world"]) == ("hel", True)


@given(
    deltas=st.lists(st.text(alphabet="ab c", max_size=4), max_size=12),
    stop_words=st.lists(st.text(alphabet="ab c", min_size=1, max_size=3), max_size=3),
)
def test_streamed_text_is_the_whole_text_up_to_the_first_stop_word(
    deltas: list[str], stop_words: list[str]
) -> None:
    whole = "".join(deltas)
    hits = [i for i in (whole.find(w) for w in stop_words) if i >= 0]

    emitted, stopped = feed(stop_words, deltas)

    assert stopped == bool(hits)
    assert emitted == (whole[: min(hits)] if hits else whole)


# -- outputs -----------------------------------------------------------------------------------


def test_generation_outputs_are_the_four_facade_tensors_of_shape_1_1() -> None:
    tensors = facade.generation_outputs(
        pb_utils, "héllo ", num_input_tokens=3, num_output_tokens=7, finish_reason="length"
    )

    by_name = {t.name(): t.as_numpy() for t in tensors}
    assert list(by_name) == [
        "text_output",
        "num_input_tokens",
        "num_output_tokens",
        "finish_reason",
    ]
    assert all(a.shape == (1, 1) for a in by_name.values())
    assert by_name["text_output"][0, 0] == "héllo ".encode()
    assert by_name["num_input_tokens"].dtype == np.int32
    assert by_name["num_output_tokens"][0, 0] == 7
    assert by_name["finish_reason"][0, 0] == b"length"


def test_generation_response_has_an_empty_finish_reason_until_the_end() -> None:
    response = facade.generation_response(pb_utils, "x", num_input_tokens=1, num_output_tokens=1)

    finish = {t.name(): t.as_numpy() for t in response.output_tensors}["finish_reason"]
    assert finish[0, 0] == b""


def test_embedding_outputs_have_one_row_per_text() -> None:
    embedding, tokens = facade.embedding_outputs(
        pb_utils, np.ones((2, 384), dtype=np.float64), [5, 9]
    )

    assert embedding.name() == "embedding"
    assert embedding.as_numpy().dtype == np.float32
    assert embedding.as_numpy().shape == (2, 384)
    assert tokens.name() == "num_input_tokens"
    assert tokens.as_numpy().tolist() == [[5], [9]]
    assert tokens.as_numpy().dtype == np.int32
