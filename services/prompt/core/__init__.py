"""Prompt registry domain: versions, labels, rendering. Pure Python: no grpc, no generated code."""
