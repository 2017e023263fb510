"""Typed settings of InferenceService: the models it serves, their backends, and the Triton
server it may launch itself."""

from typing import Literal

from pydantic import Field

from services.common.config import Settings


class BackendSettings(Settings):
    """One Triton endpoint serving a model."""

    id: str = Field(default="triton-0", description="Unique backend id, e.g. `triton-0`.")
    endpoint: str = Field(
        default="", description="host:port of Triton's gRPC; empty: the Triton launched here."
    )
    triton_model: str = Field(default="ensemble", description="The facade model on Triton.")
    max_in_flight: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Requests let through at once; more get RESOURCE_EXHAUSTED, not a queue.",
    )


class ModelSettings(Settings):
    """One served model."""

    name: str = Field(default="", min_length=1, description="Catalog name callers use.")
    task: Literal["generation", "embedding"] = Field(
        default="generation", description="What the model produces."
    )
    backends: tuple[BackendSettings, ...] = Field(
        default=(BackendSettings(),), min_length=1, description="Endpoints serving the model."
    )
    max_context_tokens: int = Field(default=2048, ge=1, description="Prompt plus output tokens.")
    max_output_tokens: int = Field(default=1024, ge=1, description="Largest max_tokens allowed.")
    default_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens when a request sets none."
    )
    chat_template: str = Field(
        default="",
        description="Chat template: `builtin:chatml`, `prepared:smollm2` (the prepared "
        "SmolLM2 tokenizer), a tokenizer dir, a .jinja or tokenizer_config.json file; "
        "empty: the model takes text only.",
    )


DEFAULT_MODELS = (
    ModelSettings(
        name="smollm2-135m-instruct",
        backends=(BackendSettings(id="triton-0", triton_model="ensemble"),),
        max_context_tokens=2048,
        max_output_tokens=1024,
        default_max_tokens=256,
        chat_template="prepared:smollm2",
    ),
    ModelSettings(
        name="zero",
        backends=(BackendSettings(id="triton-0", triton_model="zero_llm", max_in_flight=256),),
        max_context_tokens=1_000_000,
        max_output_tokens=100_000,
        default_max_tokens=16,
        chat_template="builtin:chatml",
    ),
    ModelSettings(
        name="all-minilm-l6-v2",
        task="embedding",
        backends=(BackendSettings(id="triton-0", triton_model="minilm"),),
        max_context_tokens=256,
        max_output_tokens=1,
        default_max_tokens=1,
    ),
)


class TritonLaunchSettings(Settings):
    """The Triton server this process launches and supervises, when `launch` is true."""

    launch: bool = Field(default=True, description="Launch Triton with the platform.")
    model_repository: str = Field(
        default="triton_models/cpu", description="Model repository, relative to the repo root."
    )
    models: tuple[str, ...] = Field(
        default=(), description="Models to load (explicit control); empty: every model."
    )
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="0 picks a free port.")
    http_port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port.")
    metrics_port: int = Field(default=8002, ge=0, le=65535, description="0 picks a free port.")
    log_file: str = Field(default="", description="Triton's log; empty: a file under .run/.")
    startup_timeout_seconds: float = Field(
        default=180, gt=0, description="How long to wait for Triton and its models to be ready."
    )


class InferenceSettings(Settings):
    """Settings of InferenceService."""

    models: tuple[ModelSettings, ...] = Field(
        default=DEFAULT_MODELS, min_length=1, description="The served models."
    )
    triton: TritonLaunchSettings = Field(
        default_factory=TritonLaunchSettings, description="The Triton launched here."
    )
