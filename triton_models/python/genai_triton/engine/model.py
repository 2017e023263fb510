"""A Llama decoder in plain torch over the prepared SmolLM2 weights, with a slot-based KV cache.

The cache is preallocated once: `k` and `v` are `[layers, slots + 1, kv_heads, max_len,
head_dim]` (fp32). Slot `slots` is a scratch slot that rows without a sequence write to. A
sequence owns one slot for its whole life:

- `prefill(slot, token_ids, start)` runs a chunk of its prompt alone (causal attention over the
  slot's earlier positions and the chunk) and returns the logits of the chunk's last position;
- `decode(...)` advances many slots by one token in one batched forward: every linear layer is
  one matrix product over the batch, and attention reads each row's own slot, masked to its
  own length. The batch covers the slots `0 .. rows-1` (views into the cache, no copies); a row
  without a sequence computes garbage that nobody reads and writes to the scratch slot.

Numerics follow `transformers`' `LlamaForCausalLM` (fp32, same RMSNorm, rotary tables and
operation order), so greedy decoding gives the same tokens (checked by the unit tests).
"""

from __future__ import annotations

import json
import math
import mmap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["KVCache", "LlamaConfig", "LlamaModel", "load_model"]


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """The fields of a Hugging Face Llama `config.json` that the forward uses."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaConfig:
        if data.get("model_type", "llama") != "llama":
            raise ValueError(f"not a llama config: model_type={data.get('model_type')!r}")
        rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"rope type {rope_type!r} is not supported")
        theta = rope.get("rope_theta", data.get("rope_theta", 10000.0))
        heads = int(data["num_attention_heads"])
        hidden = int(data["hidden_size"])

        def optional_id(name: str) -> int | None:
            value = data.get(name)
            if isinstance(value, list):
                value = value[0] if value else None
            return None if value is None else int(value)

        return cls(
            vocab_size=int(data["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(data["intermediate_size"]),
            num_hidden_layers=int(data["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(data.get("num_key_value_heads", heads)),
            head_dim=int(data.get("head_dim") or hidden // heads),
            max_position_embeddings=int(data["max_position_embeddings"]),
            rms_norm_eps=float(data["rms_norm_eps"]),
            rope_theta=float(theta),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            bos_token_id=optional_id("bos_token_id"),
            eos_token_id=optional_id("eos_token_id"),
            pad_token_id=optional_id("pad_token_id"),
        )

    @classmethod
    def from_file(cls, path: Path) -> LlamaConfig:
        return cls.from_dict(json.loads(path.read_text()))


class KVCache:
    """Keys and values of every layer for `slots` sequences of up to `max_len` tokens, plus one
    scratch slot. The memory comes from anonymous mappings: zero-filled, and only the pages
    that sequences write to become resident, so a long `max_len` costs nothing until used."""

    def __init__(self, config: LlamaConfig, slots: int, max_len: int) -> None:
        if slots < 1 or max_len < 2:
            raise ValueError("the KV cache needs at least one slot and two positions")
        shape = (
            config.num_hidden_layers,
            slots + 1,
            config.num_key_value_heads,
            max_len,
            config.head_dim,
        )
        self.slots = slots
        self.max_len = max_len
        self.scratch = slots
        self._maps: list[mmap.mmap] = []
        self.k = self._zeros(shape)
        self.v = self._zeros(shape)

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        count = math.prod(shape)
        mapping = mmap.mmap(-1, count * 4)
        self._maps.append(mapping)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-writable buffer": an mmap is writable
            return torch.frombuffer(mapping, dtype=torch.float32, count=count).view(shape)

    @property
    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class Linear:
    """`x @ weight.T` for small batches. The default backend packs the weight once for oneDNN
    (`mkldnn._linear_pointwise`): on these CPUs it is 2-3x faster than MKL's sgemm for 2-16
    rows, and each row's result does not depend on how many rows are in the batch (MKL's
    does), so a sequence decodes the same tokens alone or in any batch. `backend="mkl"` uses
    `F.linear`, exactly what `transformers` computes."""

    __slots__ = ("_packed", "_weight", "out_features")

    def __init__(self, weight: torch.Tensor, backend: str) -> None:
        self.out_features = int(weight.shape[0])
        self._packed: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None
        if backend == "onednn":
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        elif backend == "mkl":
            self._weight = weight
        else:
            raise ValueError(f"unknown linear backend {backend!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self._packed, None, "none", [], ""
            )
            return result
        assert self._weight is not None
        return F.linear(x, self._weight)


def default_backend() -> str:
    """`onednn` when this torch can pack linear weights for oneDNN, else `mkl`."""
    try:
        probe = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(2, 2), None)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 2), probe, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return "mkl"
    return "onednn" if torch.backends.mkldnn.is_available() else "mkl"  # type: ignore[no-untyped-call]


class _Layer:
    __slots__ = ("down", "gate_up", "input_norm", "o", "post_norm", "qkv")

    def __init__(
        self,
        input_norm: torch.Tensor,
        qkv: Linear,
        o: Linear,
        post_norm: torch.Tensor,
        gate_up: Linear,
        down: Linear,
    ) -> None:
        self.input_norm = input_norm
        self.qkv = qkv
        self.o = o
        self.post_norm = post_norm
        self.gate_up = gate_up
        self.down = down


class LlamaModel:
    """The decoder: `prefill` and batched `decode` over a `KVCache` (see the module doc)."""

    def __init__(
        self, config: LlamaConfig, weights: dict[str, torch.Tensor], backend: str | None = None
    ) -> None:
        self.config = config
        self.backend = backend or default_backend()
        c = config
        self.q_size = c.num_attention_heads * c.head_dim
        self.kv_size = c.num_key_value_heads * c.head_dim
        self.group = c.num_attention_heads // c.num_key_value_heads
        self.scale = 1.0 / math.sqrt(c.head_dim)
        self._norm_shape = (c.hidden_size,)

        def take(name: str) -> torch.Tensor:
            tensor = weights.get(name)
            if tensor is None:
                raise ValueError(f"the weights lack {name}")
            return tensor.to(torch.float32).contiguous()

        self.embed = take("model.embed_tokens.weight")
        self.lm_head = Linear(
            self.embed if c.tie_word_embeddings else take("lm_head.weight"), self.backend
        )
        self.norm = take("model.norm.weight")
        self.layers: list[_Layer] = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat(
                [
                    take(p + "self_attn.q_proj.weight"),
                    take(p + "self_attn.k_proj.weight"),
                    take(p + "self_attn.v_proj.weight"),
                ]
            ).contiguous()
            gate_up = torch.cat(
                [take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]
            ).contiguous()
            self.layers.append(
                _Layer(
                    take(p + "input_layernorm.weight"),
                    Linear(qkv, self.backend),
                    Linear(take(p + "self_attn.o_proj.weight"), self.backend),
                    take(p + "post_attention_layernorm.weight"),
                    Linear(gate_up, self.backend),
                    Linear(take(p + "mlp.down_proj.weight"), self.backend),
                )
            )
        half = c.head_dim // 2
        inv_freq = 1.0 / (
            c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float) / c.head_dim)
        )
        positions = torch.arange(c.max_position_embeddings, dtype=torch.float)
        freqs = positions[:, None] * inv_freq[None, :]
        # Only the first half of HF's duplicated [cos, cos] / [sin, sin] tables is needed.
        self.cos = freqs.cos().contiguous()
        self.sin = freqs.sin().contiguous()
        assert self.cos.shape[1] == half

    # -- building blocks -----------------------------------------------------------------------

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel; the same values as transformers' x * rsqrt(mean(x^2) + eps) * w.
        return F.rms_norm(x, self._norm_shape, weight, self.config.rms_norm_eps)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding in HF's rotate-half layout; `cos`/`sin` hold the first half."""
        half = x.shape[-1] // 2
        x1 = x[..., :half]
        x2 = x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms_norm(x, layer.post_norm)
        gate, up = layer.gate_up(h).chunk(2, dim=-1)
        return layer.down(F.silu(gate) * up)

    # -- prefill -------------------------------------------------------------------------------

    def prefill(
        self, cache: KVCache, slot: int, token_ids: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Runs `token_ids` (1-D int64) at positions `start ..` of `slot`, writing their keys
        and values; returns the logits `[vocab]` of the last position."""
        c = self.config
        n = int(token_ids.shape[0])
        end = start + n
        if end > cache.max_len:
            raise ValueError(f"positions up to {end} exceed the cache length {cache.max_len}")
        kv_heads, dim = c.num_key_value_heads, c.head_dim
        cos = self.cos[start:end].unsqueeze(0)  # [1, n, half]
        sin = self.sin[start:end].unsqueeze(0)
        mask: torch.Tensor | None = None
        if start > 0:
            rows = torch.arange(start, end).unsqueeze(1)
            mask = torch.arange(end).unsqueeze(0) <= rows  # [n, end]
        x = F.embedding(token_ids, self.embed)  # [n, hidden]
        for index, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer.input_norm)
            q, k, v = layer.qkv(h).split_with_sizes(
                [self.q_size, self.kv_size, self.kv_size], dim=-1
            )
            q = self._rotate(q.view(n, c.num_attention_heads, dim).transpose(0, 1), cos, sin)
            k = self._rotate(k.view(n, kv_heads, dim).transpose(0, 1), cos, sin)
            cache.k[index, slot, :, start:end] = k
            cache.v[index, slot, :, start:end] = v.view(n, kv_heads, dim).transpose(0, 1)
            keys = cache.k[index, slot, :, :end].unsqueeze(0)  # [1, kv_heads, end, dim]
            values = cache.v[index, slot, :, :end].unsqueeze(0)
            attention = F.scaled_dot_product_attention(
                q.unsqueeze(0),
                keys,
                values,
                attn_mask=mask,
                is_causal=mask is None,
                scale=self.scale,
                enable_gqa=True,
            )  # [1, heads, n, dim]
            x = x + layer.o(attention[0].transpose(0, 1).reshape(n, self.q_size))
            x = x + self._mlp(layer, x)
        last = self._rms_norm(x[-1:], self.norm)
        return self.lm_head(last)[0]

    # -- batched decode ------------------------------------------------------------------------

    def decode(
        self,
        cache: KVCache,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        write_slots: torch.Tensor,
        length: int,
    ) -> torch.Tensor:
        """One decoding step for rows `0 .. B-1` = slots `0 .. B-1`.

        `token_ids`, `positions` (int64 `[B]`): the token each row feeds and its position;
        `write_slots` (int64 `[B]`): the slot each row writes its key/value to (its own, or the
        scratch slot for rows without a sequence); `length`: attention span, more than every
        row's position. Returns the logits `[B, vocab]`.
        """
        c = self.config
        rows = int(token_ids.shape[0])
        heads, kv_heads, dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        group = self.group
        qk_size = self.q_size + self.kv_size
        cos = self.cos[positions].unsqueeze(1)  # [B, 1, half]
        sin = self.sin[positions].unsqueeze(1)
        # Additive mask, one row per query head: row b sees positions 0 .. positions[b].
        visible = torch.arange(length).unsqueeze(0) <= positions.unsqueeze(1)
        mask = (
            torch.zeros(visible.shape, dtype=torch.float32)
            .masked_fill_(~visible, float("-inf"))[:, None, None, :]
            .expand(rows, kv_heads, group, length)
            .reshape(rows * kv_heads, group, length)
        )
        x = F.embedding(token_ids, self.embed)  # [B, hidden]
        for index, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer.input_norm)
            qkv = layer.qkv(h)
            # Queries and keys rotate together: [B, heads + kv_heads, dim].
            qk = self._rotate(qkv[:, :qk_size].view(rows, heads + kv_heads, dim), cos, sin)
            layer_k = cache.k[index]
            layer_v = cache.v[index]
            layer_k[write_slots, :, positions] = qk[:, heads:]
            layer_v[write_slots, :, positions] = qkv[:, qk_size:].view(rows, kv_heads, dim)
            # Each slot's keys/values, as views [B * kv_heads, length, dim] (no copies).
            keys = layer_k[:rows, :, :length].reshape(rows * kv_heads, length, dim)
            values = layer_v[:rows, :, :length].reshape(rows * kv_heads, length, dim)
            # Grouped-query attention without repeating keys: the query heads that share a
            # key/value head are the rows of one small matrix product.
            queries = qk[:, :heads].reshape(rows * kv_heads, group, dim)
            scores = torch.baddbmm(mask, queries, keys.transpose(1, 2), alpha=self.scale)
            attention = torch.bmm(torch.softmax(scores, dim=-1), values)
            x = x + layer.o(attention.view(rows, self.q_size))
            x = x + self._mlp(layer, x)
        return self.lm_head(self._rms_norm(x, self.norm))


def load_model(directory: Path, backend: str | None = None) -> LlamaModel:
    """The model of a prepared directory (`config.json` + `model.safetensors`); `backend` is
    the matrix-product backend (`onednn` or `mkl`, default: `default_backend()`)."""
    from safetensors.torch import load_file

    config = LlamaConfig.from_file(directory / "config.json")
    weights = load_file(str(directory / "model.safetensors"))
    return LlamaModel(config, weights, backend)
