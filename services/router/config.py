"""Typed settings of RouterService and the YAML model catalog it loads (unknown keys rejected).

Catalog file layout (see `services/router/catalog.yaml`, the shipped one):

    currency: USD
    models:
      - name: smollm2-135m-instruct
        display_name: SmolLM2 135M Instruct on the local Triton (CPU)
        capabilities: [chat, streaming]
        languages: [en]
        max_context_tokens: 8192
        max_output_tokens: 1024
        price_per_million_tokens: {input: 0.02, output: 0.04}
        quality_tier: 2
        latency_targets: {first_token_ms: 150, per_output_token_ms: 75}
        weight: 1
        pinned_only: false         # true: only requests that pin it by name
        backends:
          - {id: triton-0, kind: triton, endpoint: "", backend_model: ensemble}
"""

import re
from decimal import Decimal
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from services.common.config import ConfigError, Settings
from services.router.core.catalog import (
    BackendEntry,
    BackendKind,
    Capability,
    Catalog,
    ModelEntry,
)

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DEFAULT_CATALOG = Path(__file__).resolve().parent / "catalog.yaml"


class PriceSettings(Settings):
    """Price per million tokens."""

    input: Decimal = Field(default=Decimal(0), ge=0, description="Per million input tokens.")
    output: Decimal = Field(default=Decimal(0), ge=0, description="Per million output tokens.")


class LatencyTargetSettings(Settings):
    """What a model is expected to meet before live statistics exist."""

    first_token_ms: float = Field(default=500.0, gt=0, description="Time to first token.")
    per_output_token_ms: float = Field(default=50.0, gt=0, description="Per output token.")


class BackendEntrySettings(Settings):
    """One backend of a catalog model."""

    id: str = Field(default="", min_length=1, max_length=128, description="Unique backend id.")
    kind: Literal["triton", "openai_compatible"] = Field(default="triton")
    endpoint: str = Field(
        default="", description="host:port (Triton) or base URL; empty: the local Triton."
    )
    backend_model: str = Field(default="", min_length=1, description="Model name there.")


class ModelEntrySettings(Settings):
    """One catalog model."""

    name: str = Field(default="", description="Catalog name.")
    display_name: str = Field(default="")
    capabilities: tuple[
        Literal["chat", "json_output", "streaming", "embeddings", "completion"], ...
    ] = ()
    languages: tuple[str, ...] = ()
    max_context_tokens: int = Field(default=2048, ge=1)
    max_output_tokens: int = Field(default=1024, ge=1)
    price_per_million_tokens: PriceSettings = Field(default_factory=PriceSettings)
    quality_tier: int = Field(default=1, ge=1, le=10)
    latency_targets: LatencyTargetSettings = Field(default_factory=LatencyTargetSettings)
    weight: float = Field(default=1.0, ge=0)
    pinned_only: bool = Field(
        default=False, description="Route only requests that pin this model by name."
    )
    backends: tuple[BackendEntrySettings, ...] = Field(default=(), min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if NAME.fullmatch(value) is None:
            raise ValueError("1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _output_fits_context(self) -> Self:
        if self.max_output_tokens > self.max_context_tokens:
            raise ValueError("max_output_tokens exceeds max_context_tokens")
        return self


class CatalogSettings(Settings):
    """The whole catalog file."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    models: tuple[ModelEntrySettings, ...] = Field(default=(), min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("a model name is used twice")
        for model in self.models:
            ids = [b.id for b in model.backends]
            if len(set(ids)) != len(ids):
                raise ValueError(f"model {model.name} lists a backend id twice")
        return self


class RouterSettings(Settings):
    """RouterService: its catalog and how it watches backends."""

    catalog_file: str = Field(
        default="",
        description="YAML model catalog; empty: the shipped services/router/catalog.yaml.",
    )
    health_check_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Interval of active health checks per backend."
    )
    breaker_failures: int = Field(
        default=5, ge=1, le=1000, description="Consecutive failures that open a backend's circuit."
    )
    breaker_failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Failure share over the recent window that opens it."
    )
    breaker_window: int = Field(default=20, ge=2, le=10_000, description="Recent outcomes kept.")
    breaker_cooldown_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How long an open circuit stays open."
    )
    breaker_probes: int = Field(
        default=1, ge=1, le=100, description="Requests let through while half-open."
    )
    evaluation_target: str = Field(
        default="",
        description="EvaluationService whose reports the quality-floor policy reads; empty: "
        "gateway.targets.evaluation, else the one in this process, if any (else that policy "
        "falls back to cost).",
    )
    prompt_target: str = Field(
        default="",
        description="PromptService that names a prompt's gate dataset for the quality-floor "
        "policy; empty: gateway.targets.prompt, else the one in this process.",
    )
    quality_scores_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How long evaluation scores are used before they are read again: the "
        "staleness bound across processes (a run finishing in this process pushes at once).",
    )


def load_catalog(path: Path, *, local_triton: str = "") -> Catalog:
    """Reads and validates a catalog file; raises `ConfigError` naming every problem. Triton
    backends with an empty endpoint get `local_triton`."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError([f"{path}: {error}"]) from None
    try:
        settings = CatalogSettings.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        raise ConfigError(
            [
                f"{path}: {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                for e in error.errors()
            ]
        ) from None
    return catalog_from_settings(settings, local_triton=local_triton)


def catalog_from_settings(settings: CatalogSettings, *, local_triton: str = "") -> Catalog:
    """The domain catalog of validated settings."""
    return Catalog(
        currency=settings.currency,
        models=tuple(
            ModelEntry(
                name=m.name,
                display_name=m.display_name or m.name,
                capabilities=frozenset(Capability(c) for c in m.capabilities),
                languages=m.languages,
                max_context_tokens=m.max_context_tokens,
                max_output_tokens=m.max_output_tokens,
                input_price=m.price_per_million_tokens.input,
                output_price=m.price_per_million_tokens.output,
                quality_tier=m.quality_tier,
                first_token_target_s=m.latency_targets.first_token_ms / 1000,
                per_token_target_s=m.latency_targets.per_output_token_ms / 1000,
                weight=m.weight,
                pinned_only=m.pinned_only,
                backends=tuple(
                    BackendEntry(
                        id=b.id,
                        kind=BackendKind(b.kind),
                        endpoint=b.endpoint or (local_triton if b.kind == "triton" else ""),
                        backend_model=b.backend_model,
                    )
                    for b in m.backends
                ),
            )
            for m in settings.models
        ),
    )
