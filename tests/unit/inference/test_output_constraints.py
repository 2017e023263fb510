"""Output constraints (guided decoding) in InferenceService's core and adapters: the engine
passes a constraint only to models whose settings say `guided_decoding` and refuses it for the
others; the Triton adapter sends the facade's two guided-decoding tensors and maps the facade's
guide errors to the `constraint` field; the OpenAI-compatible adapter sends `response_format`
and refuses what the OpenAI API cannot express."""

import struct
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import FailedPrecondition, InvalidArgument
from services.inference import server
from services.inference.adapters.openai_compat import chat_completion_body, http_error
from services.inference.adapters.triton import backend_error, generation_request
from services.inference.config import DEFAULT_MODELS, InferenceSettings, ModelSettings
from services.inference.core.engine import Finished, InferenceEngine
from services.inference.core.model import (
    BackendChunk,
    BackendKind,
    BackendRequest,
    BackendSpec,
    ChatTurn,
    ConstraintKind,
    Embeddings,
    FinishReason,
    GenerationRequest,
    ModelSpec,
    ModelState,
    OutputConstraint,
    Sampling,
    Task,
)

TRITON = BackendSpec("triton-0", "127.0.0.1:1", "ensemble", 4)
OPENAI = BackendSpec("openai-0", "http://127.0.0.1:1/v1", "m", 4, BackendKind.OPENAI_COMPATIBLE)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_SCHEMA = OutputConstraint(ConstraintKind.JSON_SCHEMA, schema=SCHEMA)


class Recording:
    """A backend that records its requests and streams one token."""

    def __init__(self) -> None:
        self.requests: list[BackendRequest] = []

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        self.requests.append(request)
        yield BackendChunk("{}", 3, 1, None)
        yield BackendChunk("", 3, 1, FinishReason.STOP)

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        raise NotImplementedError

    async def model_state(self, spec: BackendSpec) -> ModelState:
        return ModelState.READY


class Templates:
    def render(self, model: str, messages: Sequence[ChatTurn]) -> str:
        return "prompt"


@pytest.fixture
def backend() -> Recording:
    return Recording()


@pytest.fixture
def engine(backend: Recording) -> InferenceEngine:
    def model(name: str, guided: bool) -> ModelSpec:
        return ModelSpec(name, Task.GENERATION, (TRITON,), 2048, 512, 16, guided_decoding=guided)

    return InferenceEngine(
        models=[model("guided", True), model("plain", False)],
        backend=backend,
        chat_templates=Templates(),
    )


async def _finished(engine: InferenceEngine, request: GenerationRequest) -> Finished:
    events = [event async for event in engine.stream(request)]
    assert isinstance(events[-1], Finished)
    return events[-1]


async def test_a_guided_model_gets_the_constraint_and_the_final_says_so(
    engine: InferenceEngine, backend: Recording
) -> None:
    constrained = await _finished(
        engine, GenerationRequest("guided", text="x", constraint=JSON_SCHEMA)
    )
    free = await _finished(engine, GenerationRequest("guided", text="x"))

    assert [r.constraint for r in backend.requests] == [JSON_SCHEMA, None]
    assert (constrained.constrained, free.constrained) == (True, False)


async def test_a_model_without_guided_decoding_refuses_a_constraint_before_the_backend(
    engine: InferenceEngine, backend: Recording
) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        await _finished(engine, GenerationRequest("plain", text="x", constraint=JSON_SCHEMA))

    assert "model 'plain' does not support guided decoding" in str(raised.value)
    assert raised.value.metadata == {"model": "plain", "field": "constraint"}
    assert backend.requests == []
    # The refusal took no backend slot: the model still serves up to its bound.
    for _ in range(TRITON.max_in_flight + 1):
        await _finished(engine, GenerationRequest("plain", text="x"))


async def test_an_invalid_constraint_is_invalid_argument_even_for_a_model_without_support(
    engine: InferenceEngine,
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await _finished(
            engine, GenerationRequest("plain", text="x", constraint=OutputConstraint(None))
        )
    assert [v.field for v in raised.value.violations] == ["constraint"]


# -- settings ---------------------------------------------------------------------------------


def test_the_cpu_engine_models_are_guided_by_default_and_the_others_are_not() -> None:
    guided = {m.name: m.guided_decoding for m in DEFAULT_MODELS}
    assert guided == {
        "smollm2-135m-instruct": True,
        "gemma3-270m": True,
        "zero": False,
        "all-minilm-l6-v2": False,
    }
    specs = {m.name: server._model_spec(m, "127.0.0.1:8001") for m in InferenceSettings().models}
    assert specs["smollm2-135m-instruct"].guided_decoding is True
    assert specs["zero"].guided_decoding is False


def test_guided_decoding_is_for_generation_models_only() -> None:
    with pytest.raises(ValidationError, match="guided_decoding applies to generation models"):
        ModelSettings(name="minilm", task="embedding", guided_decoding=True)


# -- the Triton adapter -----------------------------------------------------------------------


def _backend_request(constraint: OutputConstraint | None) -> BackendRequest:
    return BackendRequest(
        prompt="Name a city.",
        max_tokens=8,
        sampling=Sampling(),
        request_id="r-1",
        stream=True,
        timeout=None,
        constraint=constraint,
    )


def _tensors(constraint: OutputConstraint | None) -> dict[str, tuple[str, list[int], bytes]]:
    """The facade request's inputs: name -> (datatype, shape, raw contents)."""
    infer = generation_request(TRITON, _backend_request(constraint))
    return {
        tensor.name: (tensor.datatype, list(tensor.shape), raw)
        for tensor, raw in zip(infer.inputs, infer.raw_input_contents, strict=True)
    }


def _bytes_tensor(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<I", len(data)) + data


@pytest.mark.parametrize(
    ("constraint", "guide_type", "guide"),
    [
        (JSON_SCHEMA, "json_schema", '{"type":"object","properties":{"city":{"type":"string"}},'
         '"required":["city"]}'),
        (OutputConstraint(ConstraintKind.REGEX, text=r"\d+ é"), "regex", r"\d+ é"),
        (
            OutputConstraint(ConstraintKind.EBNF_GRAMMAR, text='root ::= "a"'),
            "ebnf_grammar",
            'root ::= "a"',
        ),
        (OutputConstraint(ConstraintKind.JSON), "json", None),
    ],
    ids=["json-schema", "regex", "grammar", "json"],
)  # fmt: skip
def test_the_triton_request_carries_the_guide_type_and_the_guide(
    constraint: OutputConstraint, guide_type: str, guide: str | None
) -> None:
    tensors = _tensors(constraint)

    assert tensors["guided_decoding_guide_type"] == ("BYTES", [1, 1], _bytes_tensor(guide_type))
    if guide is None:  # the built-in JSON grammar takes no guide
        assert "guided_decoding_guide" not in tensors
    else:
        assert tensors["guided_decoding_guide"] == ("BYTES", [1, 1], _bytes_tensor(guide))
    assert tensors["text_input"] == ("BYTES", [1, 1], _bytes_tensor("Name a city."))


def test_an_unconstrained_triton_request_has_no_guided_decoding_tensors() -> None:
    assert not {"guided_decoding_guide_type", "guided_decoding_guide"} & set(_tensors(None))


@pytest.mark.parametrize(
    "message",
    [
        "[FIELD_VIOLATION] guided_decoding_guide: not a valid JSON Schema: unsupported keyword",
        "[FIELD_VIOLATION] guided_decoding_guide_type: unknown guide type 'yaml'",
    ],
)
def test_the_facades_guide_errors_are_invalid_argument_on_the_constraint(message: str) -> None:
    error = backend_error(TRITON, message)

    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["constraint"]
    assert error.violations[0].description == message.removeprefix("[FIELD_VIOLATION] ")


def test_other_facade_field_violations_stay_on_the_parameters() -> None:
    error = backend_error(TRITON, "[FIELD_VIOLATION] max_tokens must be >= 1")
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["parameters"]


def test_a_triton_model_without_the_guided_inputs_is_a_failed_precondition() -> None:
    error = backend_error(
        TRITON,
        "[request id: r-1] unexpected inference input 'guided_decoding_guide_type' for model "
        "'ensemble'",
    )

    assert isinstance(error, FailedPrecondition)
    assert "'ensemble' on Triton takes no guided-decoding inputs" in str(error)
    assert error.metadata == {"backend_id": "triton-0", "field": "constraint"}


# -- the OpenAI-compatible adapter ------------------------------------------------------------


def _body(constraint: OutputConstraint) -> dict[str, Any]:
    return chat_completion_body(OPENAI, _backend_request(constraint))


def test_json_object_is_the_json_object_response_format() -> None:
    assert _body(OutputConstraint(ConstraintKind.JSON))["response_format"] == {
        "type": "json_object"
    }


def test_a_json_schema_is_a_strict_json_schema_response_format() -> None:
    body = _body(JSON_SCHEMA)

    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }


def test_an_unconstrained_body_has_no_response_format() -> None:
    assert "response_format" not in chat_completion_body(OPENAI, _backend_request(None))


@pytest.mark.parametrize(
    ("constraint", "field", "what"),
    [
        (OutputConstraint(ConstraintKind.REGEX, text="a+"), "constraint.regex", "expression"),
        (
            OutputConstraint(ConstraintKind.EBNF_GRAMMAR, text='root ::= "a"'),
            "constraint.ebnf_grammar",
            "grammar",
        ),
    ],
)
def test_regex_and_grammar_constraints_are_refused_on_openai_compatible_backends(
    constraint: OutputConstraint, field: str, what: str
) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        _body(constraint)

    assert what in str(raised.value)
    assert raised.value.metadata == {"backend_id": "openai-0", "field": field}


def test_a_provider_refusing_the_response_format_names_the_constraint() -> None:
    error = http_error(
        OPENAI,
        400,
        {},
        b'{"error": {"message": "Invalid schema for response_format \'output\'", '
        b'"param": "response_format", "code": "invalid_value"}}',
    )

    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["constraint"]
