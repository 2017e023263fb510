"""Adapters of the prompt registry: storage (SQLite, PostgreSQL) and the template sandbox."""
