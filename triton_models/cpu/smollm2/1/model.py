"""smollm2: the generation facade and the CPU engine in one model.

The logic lives in `genai_triton.serving.LlmModel` (unit-tested without Triton).
"""

import sys
from pathlib import Path

try:
    import genai_triton  # noqa: F401
except ImportError:  # not on the stub's path: use the repository's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))

import triton_python_backend_utils as pb_utils
from genai_triton.serving import LlmModel


class TritonPythonModel(LlmModel):
    def __init__(self) -> None:
        super().__init__(pb_utils)
