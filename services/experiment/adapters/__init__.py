"""Adapters of the experiment service: assignment and outcome storage."""
