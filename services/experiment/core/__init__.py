"""Experiment domain: bucketing, sticky assignment, statistics. No grpc, no generated code."""
