"""Adapters of the router: the catalog file and backend health probes (Triton, HTTP)."""
