"""Token counts for backends that report none: who counted (`UsageSource`), and the counters.

Triton's engine counts every request's tokens itself, and so do OpenAI-compatible providers
that send `usage` (asked for with `stream_options.include_usage`). Some do not (llama.cpp's
server ignores the option), and a request billed on what they send would cost nothing and use
no quota. For those, InferenceService counts itself, with the model's own tokenizer when its
settings name one (`TokenizerCounter` in `services.inference.adapters.tokenizer_counter`), else
with `EstimateCounter`, an estimate that never undercounts. The provider's own counts always
win when they come.
"""

from collections.abc import Sequence
from enum import StrEnum
from typing import Final, Protocol

from services.inference.core.model import ChatTurn, FinishReason

ESTIMATE_TOKENS_PER_MESSAGE: Final = 8
"""Tokens the estimate adds per chat message for the template's markers around it (ChatML,
Llama 3 and Gemma use 4 to 6)."""
ESTIMATE_TOKENS_PER_REQUEST: Final = 64
"""Tokens the estimate adds per request for what the template adds once: the assistant turn's
opener, a BOS token, a default system message (SmolLM2's is 16 tokens)."""


class UsageSource(StrEnum):
    """Who counted a request's tokens (`genai.common.v1.UsageSource`), from most to least
    exact."""

    PROVIDER = "provider"
    """The backend: Triton's engine, or the `usage` an OpenAI-compatible provider sent."""
    TOKENIZER = "tokenizer"
    """InferenceService, with the model's own tokenizer."""
    ESTIMATE = "estimate"
    """InferenceService, by `EstimateCounter`'s rule."""


class TokenCounter(Protocol):
    """Counts a request's tokens the way the model's provider would, for providers that report
    no usage."""

    @property
    def source(self) -> UsageSource:
        """What its counts are: TOKENIZER or ESTIMATE."""
        ...

    def count_input(self, messages: Sequence[ChatTurn]) -> int:
        """Tokens of the prompt the provider renders from `messages` (its chat template
        applied, the assistant turn opened)."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of a piece of output text (a streamed delta), at least 1."""
        ...

    def count_output(self, text: str, finish_reason: FinishReason) -> int:
        """Tokens of a whole output, the end-of-sequence token included when the generation
        stopped on it (`FinishReason.STOP`): providers count it as generated."""
        ...


class EstimateCounter:
    """A conservative estimate that never undercounts a tokenizer whose every token covers at
    least one byte of text (byte-level BPE as in Llama, SmolLM2, GPT; SentencePiece with byte
    fallback as in Gemma): one token per UTF-8 byte, plus `ESTIMATE_TOKENS_PER_MESSAGE` per chat
    message and `ESTIMATE_TOKENS_PER_REQUEST` per request for the chat template, and one for
    the end-of-sequence token. It overcounts ordinary English about four times: a model served
    this way should name its tokenizer instead (the `tokenizer` setting)."""

    @property
    def source(self) -> UsageSource:
        """Always ESTIMATE."""
        return UsageSource.ESTIMATE

    def count_input(self, messages: Sequence[ChatTurn]) -> int:
        """Bytes of every role and content, plus the template allowances."""
        return ESTIMATE_TOKENS_PER_REQUEST + sum(
            len(m.role.encode()) + len(m.content.encode()) + ESTIMATE_TOKENS_PER_MESSAGE
            for m in messages
        )

    def count_text(self, text: str) -> int:
        """Bytes of `text`, at least 1."""
        return max(len(text.encode()), 1)

    def count_output(self, text: str, finish_reason: FinishReason) -> int:
        """Bytes of `text`, plus 1 for the end-of-sequence token (whatever the finish reason:
        an estimate never undercounts)."""
        return len(text.encode()) + 1
