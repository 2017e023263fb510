"""Routing domain: catalog, policies, live statistics, breakers. No grpc, no generated code."""
