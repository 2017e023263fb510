"""Gateway domain: composition, response processing, quotas. No grpc, no generated code."""
