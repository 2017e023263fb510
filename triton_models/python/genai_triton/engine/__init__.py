"""The CPU generation engine: a Llama forward in plain torch with a slot-based KV cache and an
in-flight batcher (`Engine`). Importable without Triton. Guided decoding lives in
`genai_triton.engine.guided` (`Grammars`), imported only by who sets it up: it loads xgrammar."""

from __future__ import annotations

from genai_triton.engine.model import (
    Decoder,
    KVCache,
    LlamaConfig,
    LlamaModel,
    default_backend,
    load_llama,
    load_model,
)
from genai_triton.engine.prefix_cache import PrefixCache
from genai_triton.engine.sampling import SamplingParams, SequenceSampler
from genai_triton.engine.scheduler import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOP_WORDS,
    ContextLengthExceededError,
    Engine,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    Update,
)

__all__ = [
    "FINISH_CANCELLED",
    "FINISH_ERROR",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "FINISH_STOP_WORDS",
    "ContextLengthExceededError",
    "Decoder",
    "Engine",
    "EngineError",
    "EngineRequest",
    "InvalidRequestError",
    "KVCache",
    "LlamaConfig",
    "LlamaModel",
    "PrefixCache",
    "SamplingParams",
    "SequenceSampler",
    "Update",
    "default_backend",
    "load_llama",
    "load_model",
]
