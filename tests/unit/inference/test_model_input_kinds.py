"""Which inputs a model takes (`ModelSpec.input_kinds`): every generation model takes text; chat
needs the model's chat template on Triton backends (a base model without one, such as Gemma 3
270M, takes text only), while OpenAI-compatible backends apply their own. The engine refuses
chat for a model without a template as INVALID_ARGUMENT on `chat`, before the backend is asked
or a slot is taken, and sends text as it is."""

from collections.abc import AsyncGenerator, Sequence

import pytest

from services.common import reasons
from services.common.errors import InvalidArgument
from services.inference import server
from services.inference.config import DEFAULT_MODELS, BackendSettings, ModelSettings
from services.inference.core.engine import Finished, InferenceEngine
from services.inference.core.model import (
    BackendChunk,
    BackendKind,
    BackendRequest,
    BackendSpec,
    ChatTurn,
    Embeddings,
    FinishReason,
    GenerationRequest,
    InputKind,
    ModelSpec,
    ModelState,
    Sampling,
    Task,
)

TRITON = BackendSpec("triton-0", "127.0.0.1:1", "base_llm", 4)
OPENAI = BackendSpec("openai-0", "http://127.0.0.1:1/v1", "m", 4, BackendKind.OPENAI_COMPATIBLE)
CHAT = (ChatTurn("user", "Capital of France?"),)


def _model(name: str, *backends: BackendSpec, template: bool) -> ModelSpec:
    return ModelSpec(name, Task.GENERATION, backends, 2048, 512, 16, has_chat_template=template)


class Recording:
    """A backend that records its requests and streams one token."""

    def __init__(self) -> None:
        self.requests: list[BackendRequest] = []

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        self.requests.append(request)
        yield BackendChunk(" Paris", 5, 1, None)
        yield BackendChunk("", 5, 1, FinishReason.STOP)

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        raise NotImplementedError

    async def model_state(self, spec: BackendSpec) -> ModelState:
        return ModelState.READY


class Templates:
    """Renders every conversation the same way, naming the model."""

    def __init__(self) -> None:
        self.rendered: list[str] = []

    def render(self, model: str, messages: Sequence[ChatTurn]) -> str:
        self.rendered.append(model)
        return f"<chat of {model}>"


@pytest.fixture
def backend() -> Recording:
    return Recording()


@pytest.fixture
def templates() -> Templates:
    return Templates()


@pytest.fixture
def engine(backend: Recording, templates: Templates) -> InferenceEngine:
    return InferenceEngine(
        models=[
            _model("base", TRITON, template=False),
            _model("instruct", TRITON, template=True),
            _model("hosted", OPENAI, template=False),
        ],
        backend=backend,
        chat_templates=templates,
    )


async def _finished(engine: InferenceEngine, request: GenerationRequest) -> Finished:
    events = [event async for event in engine.stream(request)]
    assert isinstance(events[-1], Finished)
    return events[-1]


@pytest.mark.parametrize(
    ("model", "backend", "kinds"),
    [
        (_model("instruct", TRITON, template=True), TRITON, (InputKind.TEXT, InputKind.CHAT)),
        (_model("base", TRITON, template=False), TRITON, (InputKind.TEXT,)),
        (_model("hosted", OPENAI, template=False), OPENAI, (InputKind.TEXT, InputKind.CHAT)),
        (
            ModelSpec("minilm", Task.EMBEDDING, (TRITON,), 256, 1, 1),
            TRITON,
            (InputKind.TEXT,),
        ),
    ],
    ids=["triton-with-template", "triton-without", "openai-compatible", "embedding"],
)
def test_input_kinds(model: ModelSpec, backend: BackendSpec, kinds: tuple[InputKind, ...]) -> None:
    assert model.input_kinds(backend) == kinds


async def test_chat_to_a_model_without_a_chat_template_is_a_violation_on_chat(
    engine: InferenceEngine, backend: Recording, templates: Templates
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await _finished(engine, GenerationRequest("base", messages=CHAT))

    error = raised.value
    assert error.reason == reasons.FIELD_VIOLATION
    assert [v.field for v in error.violations] == ["chat"]
    assert error.violations[0].description.startswith(
        "model 'base' has no chat template, so it takes `text` input only"
    )
    assert error.metadata == {"model": "base", "input_kinds": "text"}
    assert backend.requests == []
    assert templates.rendered == []
    # Refused before admission: the backend's slot is free again at once.
    assert [s.in_flight for s in await engine.status("base")] == [0]


async def test_the_chat_violation_comes_with_every_other_one(engine: InferenceEngine) -> None:
    request = GenerationRequest("base", messages=CHAT, sampling=Sampling(max_tokens=0))

    with pytest.raises(InvalidArgument) as raised:
        await _finished(engine, request)

    assert [v.field for v in raised.value.violations] == ["chat", "parameters.max_tokens"]


async def test_text_to_a_model_without_a_chat_template_is_sent_as_it_is(
    engine: InferenceEngine, backend: Recording, templates: Templates
) -> None:
    finished = await _finished(engine, GenerationRequest("base", text="The capital of France is"))

    assert finished.model == "base"
    (request,) = backend.requests
    assert (request.prompt, request.messages) == ("The capital of France is", None)
    assert templates.rendered == []


async def test_chat_to_a_model_with_a_template_is_rendered(
    engine: InferenceEngine, backend: Recording
) -> None:
    await _finished(engine, GenerationRequest("instruct", messages=CHAT))

    assert backend.requests[0].prompt == "<chat of instruct>"


async def test_an_openai_compatible_model_takes_chat_without_a_template_of_ours(
    engine: InferenceEngine, backend: Recording, templates: Templates
) -> None:
    await _finished(engine, GenerationRequest("hosted", messages=CHAT))

    assert (backend.requests[0].prompt, backend.requests[0].messages) == ("", CHAT)
    assert templates.rendered == []


def test_the_settings_decide_whether_a_triton_model_has_a_chat_template() -> None:
    base = ModelSettings(name="base", backends=(BackendSettings(triton_model="base_llm"),))
    specs = {m.name: server._model_spec(m, "127.0.0.1:8001") for m in (*DEFAULT_MODELS, base)}

    assert specs["base"].has_chat_template is False
    assert specs["base"].input_kinds(specs["base"].backends[0]) == (InputKind.TEXT,)
    assert specs["zero"].has_chat_template is True
    assert specs["smollm2-135m-instruct"].has_chat_template is True
    gemma = specs["gemma3-270m"]  # a base model: no chat template
    assert gemma.input_kinds(gemma.backends[0]) == (InputKind.TEXT,)
