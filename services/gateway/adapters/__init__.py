"""Adapters of the gateway: clients of the platform's other services."""
