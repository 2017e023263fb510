"""Composition root of InferenceService: settings -> Triton adapter -> engine -> servicer."""

from collections.abc import Callable

import grpc
from genai.inference.v1 import inference_service_pb2_grpc
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from services.common.server import ServiceRegistration
from services.inference.adapters.chat_templates import (
    ChatTemplate,
    JinjaChatTemplates,
    load_chat_template,
)
from services.inference.adapters.triton import TritonBackend
from services.inference.config import InferenceSettings, ModelSettings
from services.inference.core.engine import InferenceEngine
from services.inference.core.model import BackendSpec, ModelSpec, Task
from services.inference.servicer import SERVICE_NAME, InferenceServicer


def registration(
    *,
    settings: InferenceSettings,
    local_triton: str | None,
    channel_for: Callable[[str], grpc.aio.Channel],
    tracer_provider: TracerProvider | None = None,
) -> ServiceRegistration:
    """Returns InferenceService ready to be added to a server.

    A backend with no endpoint uses `local_triton`, the gRPC address of the Triton this
    process launched; without one, every backend needs its endpoint (else ValueError).
    `channel_for` gives the channel to a Triton endpoint (see `triton_channel`); calls to
    Triton are traced with `tracer_provider` (None: OpenTelemetry's global provider).
    """
    models = [_model_spec(m, local_triton) for m in settings.models]
    engine = InferenceEngine(
        models=models,
        backend=TritonBackend(
            channel_for=channel_for,
            tracer=trace.get_tracer(__name__, tracer_provider=tracer_provider),
        ),
        chat_templates=JinjaChatTemplates(
            {m.name: _chat_template(m.chat_template) for m in settings.models if m.chat_template}
        ),
    )
    servicer = InferenceServicer(engine)
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        ),
    )


def _model_spec(model: ModelSettings, local_triton: str | None) -> ModelSpec:
    for backend in model.backends:
        if not backend.endpoint and local_triton is None:
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
                endpoint=backend.endpoint or local_triton or "",
                backend_model=backend.triton_model,
                max_in_flight=backend.max_in_flight,
            )
            for backend in model.backends
        ),
        max_context_tokens=model.max_context_tokens,
        max_output_tokens=model.max_output_tokens,
        default_max_tokens=model.default_max_tokens,
    )


def _chat_template(location: str) -> ChatTemplate:
    if location == "prepared:smollm2":
        # The tokenizer files of the SmolLM2 weights that the setup step prepared.
        from genai_triton.prepare import prepared_model_dir

        return load_chat_template(str(prepared_model_dir()))
    return load_chat_template(location)
