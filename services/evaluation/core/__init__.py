"""Evaluation domain: runs, scorers, reports, drift detection. No grpc, no generated code."""
