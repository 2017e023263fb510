"""Adapters of the evaluation service: storage and the prompt, router and inference clients."""
