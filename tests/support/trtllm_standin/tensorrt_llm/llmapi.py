"""`tensorrt_llm.llmapi` of the stand-in: the names v1.0.0 documents under it."""

from . import (
    LLM,
    CompletionOutput,
    GuidedDecodingParams,
    KvCacheConfig,
    RequestOutput,
    SamplingParams,
)

__all__ = [
    "LLM",
    "CompletionOutput",
    "GuidedDecodingParams",
    "KvCacheConfig",
    "RequestOutput",
    "SamplingParams",
]
