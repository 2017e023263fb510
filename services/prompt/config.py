"""Typed settings of PromptService: where the registry is stored and how watches poll."""

import os
from pathlib import Path

from pydantic import Field

from services.common.config import Settings


def default_database_url() -> str:
    """SQLite in the user's data directory: `$XDG_DATA_HOME/genai-platform/prompts.db`
    (`~/.local/share/...` when XDG_DATA_HOME is unset)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite+aiosqlite:///{Path(base) / 'genai-platform' / 'prompts.db'}"


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
        """`database_url`, or the default SQLite file (its folder created)."""
        if self.database_url:
            return self.database_url
        url = default_database_url()
        Path(url.removeprefix("sqlite+aiosqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return url
