"""Platform settings for tests that run the services without a Triton server."""

from typing import Any

UNREACHABLE_TRITON = "127.0.0.1:9"
"""The discard port: connections are refused at once, so calls fail fast with UNAVAILABLE."""


def inference_without_triton(endpoint: str = UNREACHABLE_TRITON) -> dict[str, Any]:
    """`inference` settings that launch no Triton and point every model at `endpoint`."""
    return {
        "triton": {"launch": False},
        "models": [
            {
                "name": "zero",
                "backends": [{"id": "triton-0", "endpoint": endpoint, "triton_model": "zero_llm"}],
                "chat_template": "builtin:chatml",
            }
        ],
    }
