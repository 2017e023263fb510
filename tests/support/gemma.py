"""The Gemma 3 270M weights that `scripts/setup models` prepares, for tests that load them."""

from pathlib import Path

import pytest
from genai_triton.prepare import GEMMA_MODEL_NAME, PrepareError, prepare, prepared_model_dir


def gemma_dir() -> Path:
    """The prepared model directory, preparing it first (about 90 s, once per machine) when
    the wheels are installed but the cache is empty; fails the test (never skips) saying how
    to fix a missing model."""
    try:
        return prepared_model_dir(model=GEMMA_MODEL_NAME)
    except PrepareError:
        try:
            return prepare(model=GEMMA_MODEL_NAME, quiet=True)
        except PrepareError as error:
            pytest.fail(f"Gemma 3 270M is not prepared (run scripts/setup models): {error}")
