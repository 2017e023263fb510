"""Typed settings of ExperimentService: where experiments, assignments and outcomes are kept."""

from pydantic import Field

from services.common.config import Settings
from services.common.sql import database_url


class ExperimentSettings(Settings):
    """Where ExperimentService keeps its data."""

    database_url: str = Field(
        default="",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path.db or "
        "postgresql+asyncpg://user@host:5432/db; empty: SQLite in "
        "$XDG_DATA_HOME/genai-platform/experiments.db.",
    )
    database_schema: str = Field(
        default="", description="PostgreSQL schema (search path) of the experiment tables."
    )

    def resolved_database_url(self) -> str:
        """`database_url`, or SQLite in $XDG_DATA_HOME/genai-platform/experiments.db."""
        return database_url(self.database_url, "experiments.db")
