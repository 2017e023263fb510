"""Typed settings of InferenceService: the models it serves, their backends (Triton servers
and OpenAI-compatible HTTP endpoints), and the Triton server it may launch itself."""

import re
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from services.common.config import Settings

DEFAULT_TRITON_MODEL = "ensemble"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BackendSettings(Settings):
    """One endpoint serving a model: a Triton server (`kind: triton`, the default) or an
    OpenAI-compatible HTTP endpoint with streaming chat completions (`kind: openai_compatible`:
    vLLM, TGI, trtllm-serve, hosted providers)."""

    id: str = Field(default="triton-0", description="Unique backend id, e.g. `triton-0`.")
    kind: Literal["triton", "openai_compatible"] = Field(
        default="triton", description="The protocol: `triton` or `openai_compatible`."
    )
    endpoint: str = Field(
        default="",
        description="triton: host:port of Triton's gRPC, empty: the Triton launched here; "
        "openai_compatible: the base URL, e.g. `http://127.0.0.1:8000/v1` (required).",
    )
    triton_model: str = Field(
        default=DEFAULT_TRITON_MODEL, description="triton: the facade model on Triton."
    )
    provider_model: str = Field(
        default="",
        description="openai_compatible: the provider's model id, sent as `model` (required).",
    )
    api_key_env: str = Field(
        default="",
        description="openai_compatible: the environment variable holding the API key, read at "
        "start (a missing variable stops the start); empty: no Authorization header.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="openai_compatible: the longest one request may take; the caller's "
        "deadline applies when shorter. None: the caller's deadline only.",
    )
    max_in_flight: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Requests let through at once; more get RESOURCE_EXHAUSTED, not a queue.",
    )

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> Self:
        if self.kind == "triton":
            misplaced = [
                name
                for name, value in (
                    ("provider_model", self.provider_model),
                    ("api_key_env", self.api_key_env),
                    ("timeout_seconds", self.timeout_seconds),
                )
                if value not in ("", None)
            ]
            if misplaced:
                raise ValueError(
                    f"backend {self.id}: {', '.join(misplaced)} apply to openai_compatible "
                    "backends only"
                )
            return self
        if self.triton_model != DEFAULT_TRITON_MODEL:
            raise ValueError(
                f"backend {self.id}: triton_model applies to triton backends; an "
                "openai_compatible backend names its model with provider_model"
            )
        if not self.provider_model:
            raise ValueError(
                f"backend {self.id}: an openai_compatible backend needs provider_model"
            )
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"backend {self.id}: the endpoint of an openai_compatible backend is a base URL "
                "such as http://127.0.0.1:8000/v1"
            )
        if url.query or url.fragment or url.username or url.password:
            raise ValueError(
                f"backend {self.id}: the endpoint must carry no query, fragment or credentials "
                "(put the API key in the variable named by api_key_env)"
            )
        if self.api_key_env and not _ENV_NAME.match(self.api_key_env):
            raise ValueError(
                f"backend {self.id}: api_key_env must name an environment variable "
                "(letters, digits and _)"
            )
        return self


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
        "empty: the model takes text only. Used by triton backends only: "
        "openai_compatible ones apply the provider's own template to chat input.",
    )
    tokenizer: str = Field(
        default="",
        description="openai_compatible backends: the model's tokenizer, which counts a "
        "request's tokens when the provider sends no `usage` (usage_source TOKENIZER): "
        "`prepared:smollm2` or `prepared:gemma3-270m` (prepared by scripts/setup), or a "
        "directory with tokenizer.json and the chat template the provider renders with "
        "(chat_template.jinja or tokenizer_config.json). Empty: such requests are counted "
        "with a conservative estimate that never undercounts (usage_source ESTIMATE).",
    )
    guided_decoding: bool = Field(
        default=False,
        description="Whether every backend of the model constrains decoding to a request's "
        "OutputConstraint (triton: the facade's guided_decoding_* inputs, which the engine "
        "must implement; openai_compatible: response_format, JSON and JSON Schema only). "
        "false: requests with a constraint get FAILED_PRECONDITION. The gateway reads it to "
        "decide whether to constrain prompts with an output schema.",
    )

    @model_validator(mode="after")
    def _backends_fit_the_task(self) -> Self:
        kinds = {backend.kind for backend in self.backends}
        if self.task == "embedding" and "openai_compatible" in kinds:
            raise ValueError(
                f"model {self.name}: openai_compatible backends serve generation models only"
            )
        if self.task == "embedding" and self.guided_decoding:
            raise ValueError(
                f"model {self.name}: guided_decoding applies to generation models only"
            )
        if self.tokenizer and "openai_compatible" not in kinds:
            raise ValueError(
                f"model {self.name}: tokenizer is unused, since Triton backends count tokens "
                "themselves; it applies to openai_compatible backends"
            )
        if self.chat_template and "triton" not in kinds:
            raise ValueError(
                f"model {self.name}: chat_template is unused, since its openai_compatible "
                "backends apply the provider's own template"
            )
        return self


DEFAULT_MODELS = (
    ModelSettings(
        name="smollm2-135m-instruct",
        backends=(BackendSettings(id="triton-0", triton_model="smollm2"),),
        max_context_tokens=2048,
        max_output_tokens=1024,
        default_max_tokens=256,
        chat_template="prepared:smollm2",
        guided_decoding=True,
    ),
    ModelSettings(
        # A base model: text (completion) input only; a chat request is INVALID_ARGUMENT.
        name="gemma3-270m",
        backends=(BackendSettings(id="triton-0", triton_model="gemma3_270m"),),
        max_context_tokens=4096,
        max_output_tokens=1024,
        default_max_tokens=256,
        guided_decoding=True,
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
    trace_url: str = Field(
        default="",
        description="OTLP/HTTP traces endpoint (host:port/v1/traces) that Triton exports its "
        "own spans to, in OpenTelemetry mode, continuing the trace of each request (W3C "
        "traceparent); empty: Triton's tracing stays off.",
    )
    trace_rate: int = Field(
        default=1,
        ge=1,
        le=1_000_000,
        description="Triton traces one request in this many (1: every request).",
    )

    def trace_args(self) -> tuple[str, ...]:
        """Triton's command-line flags for `trace_url` and `trace_rate`."""
        if not self.trace_url:
            return ()
        url = self.trace_url.removeprefix("http://")
        return (
            "--trace-config=mode=opentelemetry",
            f"--trace-config=rate={self.trace_rate}",
            "--trace-config=level=TIMESTAMPS",
            "--trace-config=count=-1",
            f"--trace-config=opentelemetry,url={url}",
            "--trace-config=opentelemetry,resource=service.name=triton",
        )


class InferenceSettings(Settings):
    """Settings of InferenceService."""

    models: tuple[ModelSettings, ...] = Field(
        default=DEFAULT_MODELS, min_length=1, description="The served models."
    )
    triton: TritonLaunchSettings = Field(
        default_factory=TritonLaunchSettings, description="The Triton launched here."
    )

    @model_validator(mode="after")
    def _one_endpoint_per_backend_id(self) -> Self:
        # Models share a backend (and its in-flight count) by id: an OpenAI-compatible one
        # must then be the same endpoint, called the same way, in every model.
        seen: dict[str, BackendSettings] = {}
        for model in self.models:
            for backend in model.backends:
                first = seen.setdefault(backend.id, backend)
                if first.kind != backend.kind:
                    raise ValueError(
                        f"backend {backend.id} is {first.kind} in one model and {backend.kind} "
                        "in another"
                    )
                if backend.kind == "openai_compatible" and (
                    first.endpoint,
                    first.api_key_env,
                    first.timeout_seconds,
                ) != (backend.endpoint, backend.api_key_env, backend.timeout_seconds):
                    raise ValueError(
                        f"backend {backend.id}: models that share it must give it the same "
                        "endpoint, api_key_env and timeout_seconds"
                    )
        return self
