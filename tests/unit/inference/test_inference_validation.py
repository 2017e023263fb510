"""Request validation of InferenceService's core, one row per rule."""

import pytest

from services.inference.core.engine import validate_generation
from services.inference.core.model import (
    BackendSpec,
    ChatTurn,
    GenerationRequest,
    ModelSpec,
    Sampling,
    Task,
)

MODEL = ModelSpec(
    name="m",
    task=Task.GENERATION,
    backends=(BackendSpec("b", "localhost:1", "ensemble", 4),),
    max_context_tokens=2048,
    max_output_tokens=512,
    default_max_tokens=64,
)


def _fields(request: GenerationRequest) -> list[str]:
    return [v.field for v in validate_generation(MODEL, request)]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (GenerationRequest("m", text="hello"), []),
        (GenerationRequest("m", messages=(ChatTurn("user", "hi"),)), []),
        (GenerationRequest("m"), ["input"]),
        (GenerationRequest("m", text="x", messages=(ChatTurn("user", "hi"),)), ["input"]),
        (GenerationRequest("m", text="   "), ["text"]),
        (GenerationRequest("m", messages=()), ["chat.messages"]),
        (GenerationRequest("m", messages=(ChatTurn("", "hi"),)), ["chat.messages[0].role"]),
        (GenerationRequest("m", messages=(ChatTurn("user", " "),)), ["chat.messages[0].content"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=0)), ["parameters.max_tokens"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=-5)), ["parameters.max_tokens"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=513)), ["parameters.max_tokens"]),
        (GenerationRequest("m", "x", sampling=Sampling(max_tokens=512)), []),
        (
            GenerationRequest("m", "x", sampling=Sampling(temperature=2.5)),
            ["parameters.temperature"],
        ),
        (GenerationRequest("m", "x", sampling=Sampling(temperature=0.0)), []),
        (
            GenerationRequest("m", "x", sampling=Sampling(temperature=float("nan"))),
            ["parameters.temperature"],
        ),
        (GenerationRequest("m", "x", sampling=Sampling(top_p=0.0)), ["parameters.top_p"]),
        (GenerationRequest("m", "x", sampling=Sampling(top_p=1.0)), []),
        (GenerationRequest("m", "x", sampling=Sampling(top_k=1001)), ["parameters.top_k"]),
        (
            GenerationRequest("m", "x", sampling=Sampling(repetition_penalty=0.1)),
            ["parameters.repetition_penalty"],
        ),
        (
            GenerationRequest("m", "x", sampling=Sampling(presence_penalty=3.0)),
            ["parameters.presence_penalty"],
        ),
        (
            GenerationRequest("m", "x", sampling=Sampling(frequency_penalty=-3.0)),
            ["parameters.frequency_penalty"],
        ),
        (GenerationRequest("m", "x", sampling=Sampling(stop=("",))), ["parameters.stop[0]"]),
        (GenerationRequest("m", "x", sampling=Sampling(stop=("é" * 129,))), ["parameters.stop[0]"]),
        (GenerationRequest("m", "x", sampling=Sampling(stop=("a",) * 17)), ["parameters.stop"]),
        (GenerationRequest("m", "x", request_id="r" * 129), ["request_id"]),
        (
            GenerationRequest("m", "", sampling=Sampling(max_tokens=0, top_k=-1)),
            ["text", "parameters.max_tokens", "parameters.top_k"],
        ),
    ],
)
def test_validation_names_every_offending_field(
    request_: GenerationRequest, fields: list[str]
) -> None:
    assert _fields(request_) == fields
