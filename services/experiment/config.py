"""Typed settings of ExperimentService: where experiments, assignments and outcomes are kept."""

import os
from pathlib import Path

from pydantic import Field

from services.common.config import Settings


def default_database_url() -> str:
    """SQLite in the user's data directory: `$XDG_DATA_HOME/genai-platform/experiments.db`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite+aiosqlite:///{Path(base) / 'genai-platform' / 'experiments.db'}"


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
        """`database_url`, or the default SQLite file (its folder created)."""
        if self.database_url:
            return self.database_url
        url = default_database_url()
        Path(url.removeprefix("sqlite+aiosqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return url
