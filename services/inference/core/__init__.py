"""Inference domain: requests, token streams, admission limits. No grpc, no generated code."""
