"""Per-sequence sampling: penalties, banned words, greedy or seeded random choice.

Semantics (the facade's sampling inputs):
- `temperature` 0 (or `top_k` 1): greedy, the most likely token.
- otherwise logits / temperature, then the `top_k` most likely tokens (0: all), then the
  smallest set whose probability reaches `top_p` (1: all), then one draw from a
  `torch.Generator` owned by the sequence and seeded from `seed` (a random seed when absent),
  so the same seed and prompt give the same text whatever else is being decoded.
- `repetition_penalty` (multiplicative, 1 neutral, as in Hugging Face / TensorRT-LLM): the logit
  of every token in the prompt or the output is divided by it when positive, multiplied when
  negative.
- `presence_penalty` / `frequency_penalty` (additive, as in OpenAI / vLLM): subtracted once for
  every token already in the output, and once per occurrence.
- banned token sequences (`bad_words`): the last token of a sequence is never chosen when the
  tokens before it are the end of the text so far (a one-token sequence is never chosen).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "SequenceSampler"]

_NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def problems(self) -> list[str]:
        """What is wrong with these values (field name first), empty when they are valid."""
        found: list[str] = []
        checks = (
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", math.isfinite(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
            (
                "repetition_penalty",
                math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                "> 0",
            ),
            ("presence_penalty", math.isfinite(self.presence_penalty), "finite"),
            ("frequency_penalty", math.isfinite(self.frequency_penalty), "finite"),
            ("seed", self.seed is None or 0 <= self.seed < 2**64, "in [0, 2^64)"),
        )
        for name, ok, rule in checks:
            if not ok:
                found.append(f"{name} must be {rule}, got {getattr(self, name)}")
        return found


class SequenceSampler:
    """The sampling state of one sequence: its generator, token counts and banned words."""

    __slots__ = (
        "_bad_multi",
        "_bad_single",
        "_counts",
        "_generator",
        "_seen",
        "params",
        "tokens",
    )

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        vocab_size: int,
        bad_words: Sequence[Sequence[int]] = (),
    ) -> None:
        self.params = params
        self.tokens: list[int] = list(prompt_ids)
        """Prompt and output so far (for banned sequences)."""
        self._generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else random.getrandbits(63)
            self._generator = torch.Generator().manual_seed(seed % 2**64)
        self._counts: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None
        if params.penalized:
            self._counts = torch.zeros(vocab_size, dtype=torch.float32)
            self._seen = torch.zeros(vocab_size, dtype=torch.bool)
            prompt = [t for t in prompt_ids if 0 <= t < vocab_size]
            if prompt:
                self._seen[torch.tensor(prompt)] = True
        singles = sorted({w[0] for w in bad_words if len(w) == 1 and 0 <= w[0] < vocab_size})
        self._bad_single = torch.tensor(singles, dtype=torch.long) if singles else None
        self._bad_multi = [tuple(w) for w in bad_words if len(w) > 1]

    @property
    def needs_logits_processing(self) -> bool:
        return self._counts is not None or self._bad_single is not None or bool(self._bad_multi)

    def process(self, logits: torch.Tensor) -> None:
        """Applies penalties and bans to one row of logits, in place."""
        params = self.params
        if self._counts is not None and self._seen is not None:
            if params.repetition_penalty != 1.0:
                seen = self._seen
                selected = logits[seen]
                logits[seen] = torch.where(
                    selected > 0,
                    selected / params.repetition_penalty,
                    selected * params.repetition_penalty,
                )
            if params.frequency_penalty != 0.0:
                logits.sub_(self._counts * params.frequency_penalty)
            if params.presence_penalty != 0.0:
                logits.sub_((self._counts > 0).float() * params.presence_penalty)
        if self._bad_single is not None:
            logits[self._bad_single] = _NEG_INF
        for word in self._bad_multi:
            prefix = word[:-1]
            if len(self.tokens) >= len(prefix) and tuple(self.tokens[-len(prefix) :]) == prefix:
                logits[word[-1]] = _NEG_INF

    def choose(self, logits: torch.Tensor) -> int:
        """Draws the next token from one processed row of logits (not greedy)."""
        params = self.params
        scaled = logits / params.temperature
        vocab = scaled.shape[0]
        if 0 < params.top_k < vocab:
            values, indices = torch.topk(scaled, params.top_k)
        else:
            values, indices = scaled, None
        probabilities = torch.softmax(values, dim=-1)
        if params.top_p < 1.0:
            probabilities, indices = _nucleus(probabilities, indices, params.top_p)
        choice = _draw(probabilities, self._generator)
        return int(indices[choice]) if indices is not None else choice

    def observe(self, token: int) -> None:
        """Records a chosen token."""
        self.tokens.append(token)
        if self._counts is not None and self._seen is not None and token >= 0:
            self._counts[token] += 1
            self._seen[token] = True


def _draw(probabilities: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn with the given (unnormalised) probabilities: the inverse transform of
    one uniform number from `generator` (`torch.multinomial` takes ~20 ms on 49k tokens here).
    The first index whose cumulative sum exceeds the number always has a probability above 0,
    so banned tokens are never drawn."""
    cumulative = torch.cumsum(probabilities, dim=0)
    uniform = float(torch.rand(1, generator=generator, dtype=torch.float64))
    target = torch.tensor([uniform * float(cumulative[-1])], dtype=cumulative.dtype)
    index = int(torch.searchsorted(cumulative, target, right=True))
    if index >= probabilities.shape[0]:  # rounding at the very top
        index = int(torch.nonzero(probabilities).max())
    return index


def _nucleus(
    probabilities: torch.Tensor, indices: torch.Tensor | None, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest most-likely set reaching `top_p` (renormalised) and its token ids. Sorts
    only as many candidates as needed: a few hundred tokens usually hold the mass."""
    size = probabilities.shape[0]
    candidates = 64
    while True:
        k = min(candidates, size)
        top, order = torch.topk(probabilities, k)
        cumulative = torch.cumsum(top, dim=0)
        if k == size or float(cumulative[-1]) >= top_p:
            break
        candidates *= 8
    # Keep tokens whose preceding mass is below top_p (the first one always stays).
    keep = int(torch.searchsorted(cumulative, torch.tensor([top_p]), right=False)) + 1
    keep = max(1, min(keep, k))
    kept = top[:keep]
    token_ids = order[:keep] if indices is None else indices[order[:keep]]
    return kept / kept.sum(), token_ids
