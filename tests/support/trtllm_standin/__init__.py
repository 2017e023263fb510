"""A stand-in `tensorrt_llm` package for tests on machines without a GPU.

`tensorrt_llm/` below has the names and shapes of TensorRT-LLM v1.0.0's LLM API that
triton_models/gpu/llmapi uses. Put this directory on a Python path to import it as
`tensorrt_llm` (the llmapi system test does so for Triton's Python backend), or import it as
`tests.support.trtllm_standin.tensorrt_llm`.
"""

from pathlib import Path

STANDIN_PATH = Path(__file__).resolve().parent
"""The directory to put on a Python path so that `import tensorrt_llm` finds the stand-in."""
