"""GenAI platform services: one package per gRPC service, plus the shared runtime in `common`."""
