"""The engine with Triton and OpenAI-compatible backends side by side: the dispatching backend
picks the adapter by kind, and chat input is rendered for Triton but passed on as messages to
OpenAI-compatible backends. Also the settings of the two kinds."""

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.config import ConfigError
from services.common.errors import FailedPrecondition
from services.inference import server
from services.inference.config import BackendSettings, InferenceSettings, ModelSettings
from services.inference.core.dispatch import DispatchingBackend
from services.inference.core.engine import Delta, Finished, InferenceEngine, Started
from services.inference.core.model import (
    BackendChunk,
    BackendKind,
    BackendRequest,
    BackendSpec,
    ChatTurn,
    Embeddings,
    FinishReason,
    GenerationRequest,
    ModelSpec,
    ModelState,
    Task,
)

TRITON = BackendSpec("triton-0", "127.0.0.1:1", "zero_llm", 4)
OPENAI = BackendSpec("openai-0", "http://127.0.0.1:1/v1", "m", 4, BackendKind.OPENAI_COMPATIBLE)


class Recording:
    """A backend that records its requests and streams two tokens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[tuple[BackendSpec, BackendRequest]] = []

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        self.requests.append((spec, request))
        yield BackendChunk("a", 3, 1, None)
        yield BackendChunk("b", 3, 2, None)
        yield BackendChunk("", 3, 2, FinishReason.STOP)

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        raise NotImplementedError

    async def model_state(self, spec: BackendSpec) -> ModelState:
        return ModelState.READY if self.name == "triton" else ModelState.LOADING


class Templates:
    def render(self, model: str, messages: Sequence[ChatTurn]) -> str:
        return "|".join(f"{m.role}:{m.content}" for m in messages) + "|assistant:"


def _model(name: str, backend: BackendSpec) -> ModelSpec:
    return ModelSpec(name, Task.GENERATION, (backend,), 2048, 512, 16)


@pytest.fixture
def backends() -> dict[BackendKind, Recording]:
    return {BackendKind.TRITON: Recording("triton"), BackendKind.OPENAI_COMPATIBLE: Recording("o")}


@pytest.fixture
def engine(backends: dict[BackendKind, Recording]) -> InferenceEngine:
    return InferenceEngine(
        models=[_model("local", TRITON), _model("hosted", OPENAI)],
        backend=DispatchingBackend(backends),
        chat_templates=Templates(),
    )


CHAT = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hi"))


async def test_chat_is_rendered_for_triton_and_passed_on_as_messages_to_openai(
    engine: InferenceEngine, backends: dict[BackendKind, Recording]
) -> None:
    local = [e async for e in engine.stream(GenerationRequest("local", messages=CHAT))]
    hosted = [e async for e in engine.stream(GenerationRequest("hosted", messages=CHAT))]

    assert (
        [type(e) for e in local] == [type(e) for e in hosted] == [Started, Delta, Delta, Finished]
    )
    [(spec, request)] = backends[BackendKind.TRITON].requests
    assert spec is TRITON
    assert (request.prompt, request.messages) == ("system:Be brief.|user:Hi|assistant:", None)
    [(spec, request)] = backends[BackendKind.OPENAI_COMPATIBLE].requests
    assert spec is OPENAI
    assert (request.prompt, request.messages) == ("", CHAT)


async def test_text_input_is_the_prompt_for_both_kinds(
    engine: InferenceEngine, backends: dict[BackendKind, Recording]
) -> None:
    for model in ("local", "hosted"):
        events = [e async for e in engine.stream(GenerationRequest(model, text="hello"))]
        assert isinstance(events[-1], Finished)
    for backend in backends.values():
        [(_, request)] = backend.requests
        assert (request.prompt, request.messages) == ("hello", None)


async def test_status_asks_the_adapter_of_each_kind(engine: InferenceEngine) -> None:
    states = {s.model.name: s.state for s in await engine.status()}
    assert states == {"local": ModelState.READY, "hosted": ModelState.LOADING}


async def test_a_kind_without_an_adapter_is_a_failed_precondition() -> None:
    dispatcher = DispatchingBackend({BackendKind.TRITON: Recording("triton")})
    assert dispatcher.kinds == {BackendKind.TRITON}
    with pytest.raises(FailedPrecondition):
        await dispatcher.model_state(OPENAI)
    engine = InferenceEngine(
        models=[_model("hosted", OPENAI)], backend=dispatcher, chat_templates=Templates()
    )
    for _ in range(OPENAI.max_in_flight + 1):  # each failure releases its slot
        with pytest.raises(FailedPrecondition):
            async for _ in engine.stream(GenerationRequest("hosted", text="x")):
                pass


# -- settings ---------------------------------------------------------------------------------


def _openai(**fields: Any) -> dict[str, Any]:
    return {
        "id": "openai-0",
        "kind": "openai_compatible",
        "endpoint": "http://127.0.0.1:8000/v1",
        "provider_model": "meta-llama/Llama-3.1-8B-Instruct",
        **fields,
    }


def test_an_openai_backend_with_its_settings_loads() -> None:
    backend = BackendSettings.model_validate(
        _openai(api_key_env="OPENAI_API_KEY", timeout_seconds=30, max_in_flight=8)
    )
    assert (backend.kind, backend.provider_model, backend.api_key_env) == (
        "openai_compatible",
        "meta-llama/Llama-3.1-8B-Instruct",
        "OPENAI_API_KEY",
    )
    # A dump validates again unchanged (the CLI rebuilds the settings this way).
    assert BackendSettings.model_validate(backend.model_dump()) == backend
    assert BackendSettings().kind == "triton"  # existing settings keep their meaning


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (_openai(provider_model=""), "needs provider_model"),
        (_openai(endpoint=""), "base URL"),
        (_openai(endpoint="127.0.0.1:8000"), "base URL"),
        (_openai(endpoint="ftp://h/v1"), "base URL"),
        (_openai(endpoint="https://user:secret@h/v1"), "credentials"),
        (_openai(endpoint="https://h/v1?key=1"), "query"),
        (_openai(triton_model="zero_llm"), "triton_model applies to triton"),
        (_openai(api_key_env="NOT-A-NAME"), "api_key_env"),
        (_openai(timeout_seconds=0), "greater than 0"),
        (_openai(kind="grpc"), "kind"),
        ({"id": "t", "provider_model": "x"}, "provider_model apply to openai_compatible"),
        ({"id": "t", "api_key_env": "K", "timeout_seconds": 3}, "api_key_env, timeout_seconds"),
    ],
)
def test_invalid_backends_are_refused_at_load(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BackendSettings.model_validate(fields)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "e", "task": "embedding", "backends": [_openai()]}], "generation models only"),
        ([{"name": "c", "chat_template": "builtin:chatml", "backends": [_openai()]}], "unused"),
        (
            [
                {"name": "a", "backends": [_openai()]},
                {"name": "b", "backends": [{"id": "openai-0", "endpoint": "h:1"}]},
            ],
            "is openai_compatible in one model and triton in another",
        ),
        (
            [
                {"name": "a", "backends": [_openai()]},
                {"name": "b", "backends": [_openai(api_key_env="OTHER")]},
            ],
            "same endpoint, api_key_env and timeout_seconds",
        ),
    ],
)
def test_inconsistent_models_are_refused_at_load(
    models: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        InferenceSettings.model_validate({"models": models})


def test_a_model_may_mix_kinds_and_keep_its_template_for_triton() -> None:
    settings = ModelSettings.model_validate(
        {
            "name": "mixed",
            "chat_template": "builtin:chatml",
            "backends": [{"id": "triton-0", "endpoint": "h:8001"}, _openai()],
        }
    )
    assert [b.kind for b in settings.backends] == ["triton", "openai_compatible"]


def _registration(env: dict[str, str]) -> None:
    settings = InferenceSettings.model_validate(
        {
            "triton": {"launch": False},
            "models": [
                {"name": "a", "backends": [_openai(api_key_env="PROVIDER_KEY")]},
                {"name": "b", "backends": [_openai(id="openai-1", api_key_env="OTHER_KEY")]},
            ],
        }
    )
    server.registration(
        settings=settings,
        local_triton=None,
        channel_for=lambda _: pytest.fail("no channel"),
        env=env,
    )


def test_a_missing_api_key_variable_stops_the_start_naming_it() -> None:
    with pytest.raises(ConfigError) as raised:
        _registration({"PROVIDER_KEY": "sk-1", "OTHER_KEY": ""})
    assert raised.value.problems == [
        "inference.models[1].backends[0].api_key_env: the environment variable OTHER_KEY "
        "(API key of backend openai-1 of model b) is not set"
    ]
    assert "sk-1" not in str(raised.value)
    _registration({"PROVIDER_KEY": "sk-1", "OTHER_KEY": "sk-2"})
