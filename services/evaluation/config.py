"""Typed settings of EvaluationService: where datasets, runs and reports are kept, and how runs
generate and score."""

from pydantic import Field

from services.common.config import Settings
from services.common.sql import database_url


class EvaluationTargets(Settings):
    """Where EvaluationService reaches the services its runs call. Empty means this very
    process (which must then host the service)."""

    gateway: str = Field(
        default="",
        description="Target of the GatewayService that runs generations and judge calls "
        "(host:port, a list, or dns:///name:port).",
    )
    inference: str = Field(
        default="", description="Target of the InferenceService that computes embeddings."
    )
    prompt: str = Field(
        default="",
        description="Target of PromptService (empty: gateway.targets.prompt, else this process).",
    )


class EvaluationSettings(Settings):
    """Where EvaluationService keeps its data and how its runs call the other services."""

    targets: EvaluationTargets = Field(
        default_factory=EvaluationTargets,
        description="Addresses of the services runs call; empty: this process.",
    )

    database_url: str = Field(
        default="",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path.db or "
        "postgresql+asyncpg://user@host:5432/db; empty: SQLite in "
        "$XDG_DATA_HOME/genai-platform/evaluation.db.",
    )
    database_schema: str = Field(
        default="", description="PostgreSQL schema (search path) of the evaluation tables."
    )
    max_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Generations (with their scoring) in flight at once, per run.",
    )
    embedding_model: str = Field(
        default="all-minilm-l6-v2",
        min_length=1,
        description="Embedding model of the embedding-similarity scorer when the scorer names "
        "none (a model InferenceService serves).",
    )
    generation_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Deadline of each GatewayService.Complete call of a run (generations and "
        "judge calls); an output that misses it is recorded as failed.",
    )
    result_batch_size: int = Field(
        default=25,
        ge=1,
        le=1000,
        description="Results stored (and progress streamed) per write, at most.",
    )
    run_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A run whose replica has not renewed it for this long (the replica died) "
        "is marked failed by another replica; replicas renew their runs every third of it.",
    )
    result_flush_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Longest a finished result waits before it is stored.",
    )

    def resolved_database_url(self) -> str:
        """`database_url`, or SQLite in $XDG_DATA_HOME/genai-platform/evaluation.db."""
        return database_url(self.database_url, "evaluation.db")
