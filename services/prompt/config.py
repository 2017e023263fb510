"""Typed settings of PromptService: where the registry is stored and how watches poll."""

from pydantic import Field

from services.common.config import Settings
from services.common.sql import database_url


class PromptSettings(Settings):
    """Where PromptService keeps prompts."""

    database_url: str = Field(
        default="",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path.db (embedded) or "
        "postgresql+asyncpg://user@host:5432/db (several replicas); empty: SQLite in "
        "$XDG_DATA_HOME/genai-platform/prompts.db.",
    )
    database_schema: str = Field(
        default="", description="PostgreSQL schema (search path) of the registry's tables."
    )
    watch_poll_seconds: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="How often watches look for label moves made by other replicas (moves "
        "made by this process reach its watchers at once).",
    )

    evaluation_target: str = Field(
        default="",
        description="host:port of the EvaluationService that gates protected labels; empty: "
        "the one this process hosts (protected labels cannot move without one).",
    )

    def resolved_database_url(self) -> str:
        """`database_url`, or SQLite in $XDG_DATA_HOME/genai-platform/prompts.db."""
        return database_url(self.database_url, "prompts.db")
