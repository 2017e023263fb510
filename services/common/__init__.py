"""Shared runtime of every service: domain errors, status mapping, interceptors, server, config."""
