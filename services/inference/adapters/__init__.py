"""Adapters of inference: Triton over tritonclient.grpc.aio, OpenAI-compatible HTTP."""
