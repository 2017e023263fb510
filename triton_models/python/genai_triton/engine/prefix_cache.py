"""Reuse of prompt keys/values across requests (TensorRT-LLM's `enable_kv_cache_reuse`).

Prompts that start alike (the chat template's system prompt, few-shot examples) need not be
prefilled again. After a prompt is prefilled, its keys and values are kept per block of
`block` tokens, each block identified exactly by its tokens and the block before it (a chain,
so a block only matches after the same prefix). A new prompt copies the longest chain of
matching blocks into its slot and prefills only the rest; at least its last token is always
computed (its logits give the first output token).

Results are bit-identical to prefilling the whole prompt: every row of the engine's matrix
products is computed the same way whatever the number of rows, and a query's attention only
reads earlier positions. Blocks are evicted least recently used beyond `capacity` tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from genai_triton.engine.model import KVCache

__all__ = ["PrefixCache"]

_Key = tuple[int, tuple[int, ...]]


@dataclass(slots=True)
class _Block:
    ident: int
    k: torch.Tensor  # [layers, kv_heads, block, head_dim]
    v: torch.Tensor


class PrefixCache:
    def __init__(self, capacity_tokens: int, block: int = 16) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.block = block
        self.capacity = max(0, capacity_tokens) // block
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()
        self._next_ident = 1
        self.reused_tokens = 0
        """Prompt tokens whose prefill was skipped so far."""

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _keys(self, prompt: Sequence[int], limit: int) -> list[tuple[int, tuple[int, ...]]]:
        """(start, tokens) of the whole blocks in `prompt[:limit]`."""
        size = self.block
        return [
            (start, tuple(prompt[start : start + size]))
            for start in range(0, limit - size + 1, size)
        ]

    def restore(self, cache: KVCache, slot: int, prompt: Sequence[int]) -> int:
        """Copies the longest cached prefix of `prompt` (leaving at least its last token) into
        `slot`; returns its length in tokens (0: nothing cached)."""
        if not self.enabled:
            return 0
        parent = 0
        restored = 0
        for start, tokens in self._keys(prompt, len(prompt) - 1):
            block = self._blocks.get((parent, tokens))
            if block is None:
                break
            self._blocks.move_to_end((parent, tokens))
            end = start + self.block
            cache.k[:, slot, :, start:end] = block.k
            cache.v[:, slot, :, start:end] = block.v
            parent = block.ident
            restored = end
        self.reused_tokens += restored
        return restored

    def store(self, cache: KVCache, slot: int, prompt: Sequence[int]) -> None:
        """Keeps the whole blocks of a prefilled `prompt` (those not kept yet)."""
        if not self.enabled:
            return
        parent = 0
        for start, tokens in self._keys(prompt, len(prompt)):
            key = (parent, tokens)
            block = self._blocks.get(key)
            if block is None:
                end = start + self.block
                block = _Block(
                    self._next_ident,
                    cache.k[:, slot, :, start:end].clone(),
                    cache.v[:, slot, :, start:end].clone(),
                )
                self._next_ident += 1
                self._blocks[key] = block
                while len(self._blocks) > self.capacity:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(key)
            parent = block.ident
