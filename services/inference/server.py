"""Composition root of InferenceService: settings -> adapters (Triton, OpenAI-compatible)
behind one dispatching backend -> engine -> servicer."""

import os
from collections.abc import Callable, Mapping

import grpc
from genai.inference.v1 import inference_service_pb2_grpc
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from services.common.config import ConfigError
from services.common.server import ServiceRegistration
from services.inference.adapters.chat_templates import (
    ChatTemplate,
    JinjaChatTemplates,
    load_chat_template,
)
from services.inference.adapters.openai_compat import OpenAICompatibleBackend, ProviderAccess
from services.inference.adapters.tokenizer_counter import (
    PREPARED_PREFIX,
    TokenizerCounter,
    tokenizer_directory,
)
from services.inference.adapters.triton import TritonBackend
from services.inference.config import InferenceSettings, ModelSettings
from services.inference.core.dispatch import DispatchingBackend
from services.inference.core.engine import InferenceEngine
from services.inference.core.model import (
    BackendKind,
    BackendSpec,
    GenerationBackend,
    ModelSpec,
    Task,
)
from services.inference.servicer import SERVICE_NAME, InferenceServicer


def registration(
    *,
    settings: InferenceSettings,
    local_triton: str | None,
    channel_for: Callable[[str], grpc.aio.Channel],
    tracer_provider: TracerProvider | None = None,
    env: Mapping[str, str] | None = None,
) -> ServiceRegistration:
    """Returns InferenceService ready to be added to a server.

    A Triton backend with no endpoint uses `local_triton`, the gRPC address of the Triton this
    process launched; without one, every Triton backend needs its endpoint (else ValueError).
    `channel_for` gives the channel to a Triton endpoint (see `triton_channel`); calls to
    backends are traced with `tracer_provider` (None: OpenTelemetry's global provider). The
    API keys of OpenAI-compatible backends are read now from `env` (None: `os.environ`); a
    variable that is missing or empty raises `ConfigError`.
    """
    models = [_model_spec(m, local_triton) for m in settings.models]
    tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
    backends: dict[BackendKind, GenerationBackend] = {
        BackendKind.TRITON: TritonBackend(channel_for=channel_for, tracer=tracer)
    }
    access = _provider_access(settings, os.environ if env is None else env)
    openai: OpenAICompatibleBackend | None = None
    if access is not None:
        openai = OpenAICompatibleBackend(access=access, tracer=tracer)
        backends[BackendKind.OPENAI_COMPATIBLE] = openai
    engine = InferenceEngine(
        models=models,
        backend=DispatchingBackend(backends),
        chat_templates=JinjaChatTemplates(
            {m.name: _chat_template(m.chat_template) for m in settings.models if m.chat_template}
        ),
        counters=_token_counters(settings),
    )
    servicer = InferenceServicer(engine)
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        ),
        stop=openai.aclose if openai is not None else None,
        servicer=servicer,
    )


def _provider_access(
    settings: InferenceSettings, env: Mapping[str, str]
) -> dict[str, ProviderAccess] | None:
    """The API key and timeout of every OpenAI-compatible backend by id; None when there is
    none. Raises `ConfigError` naming each API key variable that is not set."""
    access: dict[str, ProviderAccess] = {}
    problems: list[str] = []
    for m, model in enumerate(settings.models):
        for b, backend in enumerate(model.backends):
            if backend.kind != "openai_compatible" or backend.id in access:
                continue
            key: str | None = None
            if backend.api_key_env:
                key = env.get(backend.api_key_env, "")
                if not key:
                    problems.append(
                        f"inference.models[{m}].backends[{b}].api_key_env: the environment "
                        f"variable {backend.api_key_env} (API key of backend {backend.id} of "
                        f"model {model.name}) is not set"
                    )
            access[backend.id] = ProviderAccess(api_key=key, timeout=backend.timeout_seconds)
    if problems:
        raise ConfigError(problems)
    return access or None


def _model_spec(model: ModelSettings, local_triton: str | None) -> ModelSpec:
    for backend in model.backends:
        if backend.kind == "triton" and not backend.endpoint and local_triton is None:
            raise ValueError(
                f"backend {backend.id} of model {model.name} has no endpoint and this process "
                "launches no Triton (inference.triton.launch is false)"
            )
    return ModelSpec(
        name=model.name,
        task=Task(model.task),
        backends=tuple(
            BackendSpec(
                id=backend.id,
                endpoint=backend.endpoint,
                backend_model=backend.provider_model,
                max_in_flight=backend.max_in_flight,
                kind=BackendKind.OPENAI_COMPATIBLE,
            )
            if backend.kind == "openai_compatible"
            else BackendSpec(
                id=backend.id,
                endpoint=backend.endpoint or local_triton or "",
                backend_model=backend.triton_model,
                max_in_flight=backend.max_in_flight,
            )
            for backend in model.backends
        ),
        max_context_tokens=model.max_context_tokens,
        max_output_tokens=model.max_output_tokens,
        default_max_tokens=model.default_max_tokens,
        guided_decoding=model.guided_decoding,
        has_chat_template=bool(model.chat_template),
    )


def _chat_template(location: str) -> ChatTemplate:
    if location.startswith(PREPARED_PREFIX):
        # The tokenizer files of the weights that the setup step prepared.
        return load_chat_template(str(tokenizer_directory(location)))
    return load_chat_template(location)


def _token_counters(settings: InferenceSettings) -> dict[str, TokenizerCounter]:
    """The tokenizer counter of every model that names a tokenizer; raises `ConfigError`
    naming each one that cannot be loaded."""
    counters: dict[str, TokenizerCounter] = {}
    problems: list[str] = []
    for index, model in enumerate(settings.models):
        if not model.tokenizer:
            continue
        try:
            counters[model.name] = TokenizerCounter.from_directory(
                tokenizer_directory(model.tokenizer)
            )
        except (OSError, ValueError) as error:
            problems.append(f"inference.models[{index}].tokenizer: {error}")
    if problems:
        raise ConfigError(problems)
    return counters
