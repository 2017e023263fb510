"""Platform settings for tests that run the services without a Triton server, or with one
serving the zero-compute model alone."""

import json
from pathlib import Path
from typing import Any

UNREACHABLE_TRITON = "127.0.0.1:9"
"""The discard port: connections are refused at once, so calls fail fast with UNAVAILABLE."""
CATALOG_ZERO_UNREACHABLE = Path(__file__).with_name("catalog_zero_unreachable.yaml")
"""The router catalog that matches `inference_without_triton()`."""
CATALOG_ZERO_LOCAL = Path(__file__).with_name("catalog_zero_local.yaml")
"""The router catalog of a platform that launches Triton and serves only the zero model."""


def router_without_triton() -> dict[str, Any]:
    """`router` settings whose catalog matches `inference_without_triton()`."""
    return {"catalog_file": str(CATALOG_ZERO_UNREACHABLE)}


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


ZERO_ONLY: dict[str, str] = {
    "GENAI_INFERENCE__TRITON__MODELS": json.dumps(["zero_llm"]),
    "GENAI_INFERENCE__TRITON__GRPC_PORT": "0",
    "GENAI_INFERENCE__TRITON__HTTP_PORT": "0",
    "GENAI_INFERENCE__TRITON__METRICS_PORT": "0",
    "GENAI_ROUTER__CATALOG_FILE": str(CATALOG_ZERO_LOCAL),
    "GENAI_INFERENCE__MODELS": json.dumps(
        [
            {
                "name": "zero",
                "backends": [{"id": "triton-0", "triton_model": "zero_llm"}],
                "chat_template": "builtin:chatml",
                "max_output_tokens": 100000,
            }
        ]
    ),
}
"""Environment of a `genai serve` launching Triton with only zero_llm (starts in seconds), and
a router catalog of that model alone."""
