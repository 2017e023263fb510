"""The model catalog as the router sees it: what each model can do, costs and promises, and the
backends (Triton replicas or OpenAI-compatible endpoints) that serve it."""

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Capability(StrEnum):
    """Something a model can do (`genai.common.v1.Capability`)."""

    CHAT = "chat"
    JSON_OUTPUT = "json_output"
    STREAMING = "streaming"
    EMBEDDINGS = "embeddings"
    COMPLETION = "completion"
    """Continues raw text (no chat template): what text prompts need."""


class BackendKind(StrEnum):
    """The protocol a backend speaks."""

    TRITON = "triton"
    OPENAI_COMPATIBLE = "openai_compatible"


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """One endpoint serving a catalog model."""

    id: str
    kind: BackendKind
    endpoint: str
    """`host:port` for Triton, a base URL for OpenAI-compatible endpoints."""
    backend_model: str


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One catalog model."""

    name: str
    display_name: str
    capabilities: frozenset[Capability]
    languages: tuple[str, ...]
    max_context_tokens: int
    max_output_tokens: int
    input_price: Decimal
    """Price per million input tokens, in the catalog's currency."""
    output_price: Decimal
    """Price per million output tokens."""
    quality_tier: int
    first_token_target_s: float
    """Expected time to first token, used until live statistics exist."""
    per_token_target_s: float
    """Expected time per output token after the first."""
    weight: float
    backends: tuple[BackendEntry, ...]
    pinned_only: bool = False
    """Routed only to requests that pin it by name (test and benchmark models)."""

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """What a request costs at catalog prices."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1_000_000


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every model, by name, with one currency for all prices."""

    currency: str
    models: tuple[ModelEntry, ...]

    def model(self, name: str) -> ModelEntry | None:
        """The model called `name`, if any."""
        return next((m for m in self.models if m.name == name), None)
