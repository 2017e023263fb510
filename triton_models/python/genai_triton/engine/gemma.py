"""A Gemma 3 text decoder (Gemma 3 270M, prepared by `genai_triton.prepare --model
gemma3-270m`) in plain torch, with the interface of `LlamaModel`: `prefill` and batched
`decode` over the same slot-based `KVCache` (see `genai_triton.engine.model` for the slots, the
scratch slot and the cache views), and `prefill_many` for prompt chunks of several sequences in
one forward.

Numerics follow `transformers`' `Gemma3ForCausalLM` in fp32:

- the embeddings are multiplied by `sqrt(hidden_size)` (a tensor in the weights' dtype);
- Gemma's RMSNorm scales by `1 + weight` (kept precomputed), in fp32; four norms per layer
  (input, post-attention, pre-feedforward, post-feedforward) and a per-head norm of the
  queries and keys before the rotary embedding;
- the MLP is `down(gelu_tanh(gate(x)) * up(x))`; attention scores are scaled by
  `query_pre_attn_scalar ** -0.5`; grouped-query attention (4 query heads share 1 key/value
  head in the 270M);
- `layer_types` mixes sliding-window layers (a row sees the last `sliding_window` positions,
  itself included; rotary base `rope_local_base_freq`) with global layers (every earlier
  position; rotary base `rope_theta`, with the linear scaling a config may declare);
- the logits are soft-capped when `final_logit_softcapping` is set (the 270M does not).

The cache keeps every position of every layer (the sliding layers' keys are masked, not
dropped), so prefix reuse and the scheduler work as for Llama. The sliding layers only read the
keys from the earliest position a row of the batch can see (rounded down to a multiple of
`_KEY_ALIGN`, so a row's reductions group its keys the same way whatever the batch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genai_triton.engine.model import KVCache, Linear, default_backend

__all__ = ["GemmaConfig", "GemmaModel", "load_gemma"]

SLIDING = "sliding_attention"
FULL = "full_attention"
_KEY_ALIGN = 128


@dataclass(frozen=True, slots=True)
class GemmaConfig:
    """The fields of a Hugging Face Gemma 3 text `config.json` (`model_type` `gemma3_text`)
    that the forward uses."""

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
    """Rotary base of the global (full attention) layers."""
    rope_local_theta: float
    """Rotary base of the sliding-window layers."""
    rope_factor: float
    """Linear rotary scaling of the global layers (1.0: none)."""
    rope_local_factor: float
    sliding_window: int
    layer_types: tuple[str, ...]
    query_pre_attn_scalar: float
    final_logit_softcapping: float | None
    tie_word_embeddings: bool
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmaConfig:
        if data.get("model_type") != "gemma3_text":
            raise ValueError(f"not a gemma3_text config: model_type={data.get('model_type')!r}")
        activation = data.get("hidden_activation") or data.get("hidden_act")
        if activation not in (None, "gelu_pytorch_tanh"):
            raise ValueError(f"activation {activation!r} is not supported")
        if data.get("attn_logit_softcapping") is not None:
            raise ValueError("attention logit soft-capping is not supported")
        if data.get("use_bidirectional_attention"):
            raise ValueError("bidirectional attention is not supported")
        layers = int(data["num_hidden_layers"])
        layer_types = data.get("layer_types")
        if layer_types is None:
            pattern = int(
                data.get("sliding_window_pattern", data.get("_sliding_window_pattern", 6))
            )
            layer_types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
        if len(layer_types) != layers or not set(layer_types) <= {SLIDING, FULL}:
            raise ValueError(f"unexpected layer_types {layer_types!r}")
        full, local = _rope_parameters(data)
        full_theta, full_factor = _rope(full, 1_000_000.0)
        local_theta, local_factor = _rope(local, 10_000.0)
        heads = int(data["num_attention_heads"])
        hidden = int(data["hidden_size"])
        head_dim = int(data.get("head_dim") or hidden // heads)
        softcap = data.get("final_logit_softcapping")

        def optional_id(name: str) -> int | None:
            value = data.get(name)
            if isinstance(value, list):
                value = value[0] if value else None
            return None if value is None else int(value)

        return cls(
            vocab_size=int(data["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(data["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(data.get("num_key_value_heads", heads)),
            head_dim=head_dim,
            max_position_embeddings=int(data["max_position_embeddings"]),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            rope_theta=full_theta,
            rope_local_theta=local_theta,
            rope_factor=full_factor,
            rope_local_factor=local_factor,
            sliding_window=int(data.get("sliding_window") or 4096),
            layer_types=tuple(layer_types),
            query_pre_attn_scalar=float(data.get("query_pre_attn_scalar", 256)),
            final_logit_softcapping=None if softcap is None else float(softcap),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", True)),
            bos_token_id=optional_id("bos_token_id"),
            eos_token_id=optional_id("eos_token_id"),
            pad_token_id=optional_id("pad_token_id"),
        )

    @classmethod
    def from_file(cls, path: Path) -> GemmaConfig:
        return cls.from_dict(json.loads(path.read_text()))


def _rope_parameters(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rotary parameters of the global and of the sliding layers, from transformers 5's
    `rope_parameters` (one entry per layer type) or the older `rope_theta`,
    `rope_local_base_freq` and `rope_scaling` (which applies to the global layers only)."""
    parameters = data.get("rope_parameters")
    if isinstance(parameters, dict) and (FULL in parameters or SLIDING in parameters):
        return dict(parameters.get(FULL) or {}), dict(parameters.get(SLIDING) or {})
    full = dict(data.get("rope_scaling") or {})
    if "rope_theta" in data:
        full.setdefault("rope_theta", data["rope_theta"])
    local: dict[str, Any] = {"rope_type": "default"}
    if "rope_local_base_freq" in data:
        local["rope_theta"] = data["rope_local_base_freq"]
    return full, local


def _rope(parameters: dict[str, Any], default_theta: float) -> tuple[float, float]:
    """(base, linear factor) of one layer type's rotary embedding."""
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    theta = float(parameters.get("rope_theta", default_theta))
    if kind in ("default", None):
        return theta, 1.0
    if kind == "linear":
        return theta, float(parameters["factor"])
    raise ValueError(f"rope type {kind!r} is not supported")


def _rotary_tables(
    theta: float, factor: float, dim: int, positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[positions, dim / 2]`: the first half of transformers' duplicated tables."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    if factor != 1.0:
        inv_freq = inv_freq / factor
    freqs = torch.arange(positions, dtype=torch.float)[:, None] * inv_freq[None, :]
    return freqs.cos().contiguous(), freqs.sin().contiguous()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in HF's rotate-half layout; `cos`/`sin` hold the first half."""
    half = x.shape[-1] // 2
    x1 = x[..., :half]
    x2 = x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _align_down(position: int) -> int:
    return position // _KEY_ALIGN * _KEY_ALIGN


class _Layer:
    __slots__ = (
        "down",
        "gate_up",
        "input_norm",
        "k_norm",
        "o",
        "post_attention_norm",
        "post_feedforward_norm",
        "pre_feedforward_norm",
        "q_norm",
        "qkv",
        "sliding",
    )

    def __init__(
        self,
        *,
        sliding: bool,
        input_norm: torch.Tensor,
        qkv: Linear,
        q_norm: torch.Tensor,
        k_norm: torch.Tensor,
        o: Linear,
        post_attention_norm: torch.Tensor,
        pre_feedforward_norm: torch.Tensor,
        gate_up: Linear,
        down: Linear,
        post_feedforward_norm: torch.Tensor,
    ) -> None:
        self.sliding = sliding
        self.input_norm = input_norm
        self.qkv = qkv
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.o = o
        self.post_attention_norm = post_attention_norm
        self.pre_feedforward_norm = pre_feedforward_norm
        self.gate_up = gate_up
        self.down = down
        self.post_feedforward_norm = post_feedforward_norm


class _Span:
    """One prefill segment: its slot, positions `start .. end - 1`, its rows in the batch
    (from `offset`), and what its rows attend to on each kind of layer."""

    __slots__ = ("end", "global_mask", "local_mask", "local_start", "offset", "slot", "start")

    def __init__(self, slot: int, start: int, end: int, offset: int, window: int) -> None:
        self.slot = slot
        self.start = start
        self.end = end
        self.offset = offset
        rows = torch.arange(start, end).unsqueeze(1)
        # Global layers: causal over 0 .. end (is_causal when the chunk starts the sequence).
        self.global_mask: torch.Tensor | None = None
        if start > 0:
            self.global_mask = torch.arange(end).unsqueeze(0) <= rows  # [n, end]
        # Sliding layers: keys from `local_start` on, each row seeing (row - window, row].
        self.local_start = 0
        self.local_mask: torch.Tensor | None = None
        if start > 0 or end > window:
            self.local_start = _align_down(max(0, start - window + 1))
            columns = torch.arange(self.local_start, end).unsqueeze(0)
            self.local_mask = (columns <= rows) & (columns > rows - window)

    def attention(self, sliding: bool) -> tuple[int, torch.Tensor | None]:
        """The first key position and the mask (None: causal) on a sliding or global layer."""
        if sliding:
            return self.local_start, self.local_mask
        return 0, self.global_mask


class GemmaModel:
    """The decoder: `prefill` and batched `decode` over a `KVCache`, like `LlamaModel`.

    `weights`: Hugging Face `Gemma3ForCausalLM` names; `backend`: the matrix-product backend of
    `Linear` (`onednn` or `mkl`, default: `default_backend()`); `weight_only`: the precision
    of every `Linear`'s weights (`WEIGHT_ONLY_PRECISIONS`: "" for fp32, "int8", "int4",
    "int8_dynamic"), the output projection included: with tied embeddings it is built from
    the embedding table, which stays fp32 for the lookups."""

    def __init__(
        self,
        config: GemmaConfig,
        weights: dict[str, torch.Tensor],
        backend: str | None = None,
        weight_only: str = "",
    ) -> None:
        self.config = config
        self.backend = backend or default_backend()
        self.weight_only = weight_only
        c = config
        self.q_size = c.num_attention_heads * c.head_dim
        self.kv_size = c.num_key_value_heads * c.head_dim
        self.group = c.num_attention_heads // c.num_key_value_heads
        self.scale = c.query_pre_attn_scalar**-0.5
        self._norm_shape = (c.hidden_size,)
        self._head_shape = (c.head_dim,)

        def take(name: str) -> torch.Tensor:
            tensor = weights.get(name)
            if tensor is None:
                raise ValueError(f"the weights lack {name}")
            return tensor.to(torch.float32).contiguous()

        def norm(name: str) -> torch.Tensor:
            return 1.0 + take(name)

        self.embed = take("model.embed_tokens.weight")
        # transformers: a tensor of sqrt(hidden) cast to the weights' dtype.
        self.embed_scale = torch.tensor(c.hidden_size**0.5).to(self.embed.dtype)
        self.lm_head = self._linear(self.embed if c.tie_word_embeddings else take("lm_head.weight"))
        self.norm = norm("model.norm.weight")
        self.layers: list[_Layer] = []
        for i, layer_type in enumerate(c.layer_types):
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
                    sliding=layer_type == SLIDING,
                    input_norm=norm(p + "input_layernorm.weight"),
                    qkv=self._linear(qkv),
                    q_norm=norm(p + "self_attn.q_norm.weight"),
                    k_norm=norm(p + "self_attn.k_norm.weight"),
                    o=self._linear(take(p + "self_attn.o_proj.weight")),
                    post_attention_norm=norm(p + "post_attention_layernorm.weight"),
                    pre_feedforward_norm=norm(p + "pre_feedforward_layernorm.weight"),
                    gate_up=self._linear(gate_up),
                    down=self._linear(take(p + "mlp.down_proj.weight")),
                    post_feedforward_norm=norm(p + "post_feedforward_layernorm.weight"),
                )
            )
        positions = c.max_position_embeddings
        self.cos, self.sin = _rotary_tables(c.rope_theta, c.rope_factor, c.head_dim, positions)
        self.local_cos, self.local_sin = _rotary_tables(
            c.rope_local_theta, c.rope_local_factor, c.head_dim, positions
        )

    def _linear(self, weight: torch.Tensor) -> Linear:
        return Linear(weight, self.backend, self.weight_only)

    # -- building blocks -----------------------------------------------------------------------

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Gemma's RMSNorm over the hidden size; `weight` is already `1 + w`."""
        return F.rms_norm(x, self._norm_shape, weight, self.config.rms_norm_eps)

    def _head_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The per-head RMSNorm of queries or keys `[..., heads, head_dim]`."""
        return F.rms_norm(x, self._head_shape, weight, self.config.rms_norm_eps)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms_norm(x, layer.pre_feedforward_norm)
        gate, up = layer.gate_up(h).chunk(2, dim=-1)
        out = layer.down(F.gelu(gate, approximate="tanh") * up)
        return self._rms_norm(out, layer.post_feedforward_norm)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self._rms_norm(x, self.norm))
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- prefill -------------------------------------------------------------------------------

    def prefill(
        self, cache: KVCache, slot: int, token_ids: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Runs `token_ids` (1-D int64) at positions `start ..` of `slot`, writing their keys
        and values; returns the logits `[vocab]` of the last position."""
        return self.prefill_many(cache, [(slot, token_ids, start)])[0]

    def prefill_many(
        self, cache: KVCache, segments: Sequence[tuple[int, torch.Tensor, int]]
    ) -> torch.Tensor:
        """Prompt chunks of several sequences in one forward: each segment `(slot, token_ids,
        start)` runs its tokens at positions `start ..` of its slot. The matrix products take
        every segment's tokens as one batch; attention runs per segment (over the slot's
        earlier positions and the chunk, the last `sliding_window` of them on sliding layers).
        Returns the logits `[segments, vocab]` of each segment's last position."""
        c = self.config
        heads, kv_heads, dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        spans: list[_Span] = []
        offset = 0
        for slot, token_ids, start in segments:
            n = int(token_ids.shape[0])
            if n < 1:
                raise ValueError("a prefill segment needs at least one token")
            if start + n > cache.max_len:
                raise ValueError(
                    f"positions up to {start + n} exceed the cache length {cache.max_len}"
                )
            spans.append(_Span(slot, start, start + n, offset, c.sliding_window))
            offset += n
        total = offset
        position = torch.cat([torch.arange(s.start, s.end) for s in spans])
        tables = {
            False: (self.cos[position].unsqueeze(1), self.sin[position].unsqueeze(1)),
            True: (self.local_cos[position].unsqueeze(1), self.local_sin[position].unsqueeze(1)),
        }  # [total, 1, half]
        ids = torch.cat([token_ids for _, token_ids, _ in segments])
        x = F.embedding(ids, self.embed) * self.embed_scale  # [total, hidden]
        for index, layer in enumerate(self.layers):
            cos, sin = tables[layer.sliding]
            h = self._rms_norm(x, layer.input_norm)
            q, k, v = layer.qkv(h).split_with_sizes(
                [self.q_size, self.kv_size, self.kv_size], dim=-1
            )
            q = _rotate(self._head_norm(q.view(total, heads, dim), layer.q_norm), cos, sin)
            k = _rotate(self._head_norm(k.view(total, kv_heads, dim), layer.k_norm), cos, sin)
            v = v.view(total, kv_heads, dim)
            outputs: list[torch.Tensor] = []
            for span in spans:
                rows = slice(span.offset, span.offset + span.end - span.start)
                cache.k[index, span.slot, :, span.start : span.end] = k[rows].transpose(0, 1)
                cache.v[index, span.slot, :, span.start : span.end] = v[rows].transpose(0, 1)
                first, mask = span.attention(layer.sliding)
                attention = F.scaled_dot_product_attention(
                    q[rows].transpose(0, 1).unsqueeze(0),
                    cache.k[index, span.slot, :, first : span.end].unsqueeze(0),
                    cache.v[index, span.slot, :, first : span.end].unsqueeze(0),
                    attn_mask=mask,
                    is_causal=mask is None,
                    scale=self.scale,
                    enable_gqa=True,
                )  # [1, heads, n, dim]
                outputs.append(attention[0].transpose(0, 1).reshape(-1, self.q_size))
            out = layer.o(torch.cat(outputs) if len(outputs) > 1 else outputs[0])
            x = x + self._rms_norm(out, layer.post_attention_norm)
            x = x + self._mlp(layer, x)
        last = torch.tensor([span.offset + span.end - span.start - 1 for span in spans])
        return self._logits(x.index_select(0, last))

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
        window = c.sliding_window
        # Sliding layers read keys from the earliest position that a row with a sequence sees.
        real = positions[write_slots != cache.scratch]
        local_start = _align_down(max(0, int(real.min()) - window + 1)) if real.numel() else 0
        position = positions.unsqueeze(1)
        visible = torch.arange(length).unsqueeze(0) <= position  # [B, length]
        columns = torch.arange(local_start, length).unsqueeze(0)
        local_visible = (columns <= position) & (columns > position - window)
        # A row without a sequence may see nothing there: let it see everything (no NaNs).
        local_visible |= ~local_visible.any(dim=-1, keepdim=True)
        global_mask = self._additive_mask(visible, rows)
        local_mask = self._additive_mask(local_visible, rows)
        tables = {
            False: (self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)),
            True: (self.local_cos[positions].unsqueeze(1), self.local_sin[positions].unsqueeze(1)),
        }  # [B, 1, half]
        x = F.embedding(token_ids, self.embed) * self.embed_scale  # [B, hidden]
        for index, layer in enumerate(self.layers):
            cos, sin = tables[layer.sliding]
            h = self._rms_norm(x, layer.input_norm)
            q, k, v = layer.qkv(h).split_with_sizes(
                [self.q_size, self.kv_size, self.kv_size], dim=-1
            )
            q = _rotate(self._head_norm(q.view(rows, heads, dim), layer.q_norm), cos, sin)
            k = _rotate(self._head_norm(k.view(rows, kv_heads, dim), layer.k_norm), cos, sin)
            layer_k = cache.k[index]
            layer_v = cache.v[index]
            layer_k[write_slots, :, positions] = k
            layer_v[write_slots, :, positions] = v.view(rows, kv_heads, dim)
            first, mask = (local_start, local_mask) if layer.sliding else (0, global_mask)
            span = length - first
            # Each slot's keys/values, as views [B * kv_heads, span, dim] (no copies).
            keys = layer_k[:rows, :, first:length].reshape(rows * kv_heads, span, dim)
            values = layer_v[:rows, :, first:length].reshape(rows * kv_heads, span, dim)
            # Grouped-query attention without repeating keys: the query heads that share a
            # key/value head are the rows of one small matrix product.
            queries = q.reshape(rows * kv_heads, group, dim)
            scores = torch.baddbmm(mask, queries, keys.transpose(1, 2), alpha=self.scale)
            attention = torch.bmm(torch.softmax(scores, dim=-1), values)
            out = layer.o(attention.view(rows, self.q_size))
            x = x + self._rms_norm(out, layer.post_attention_norm)
            x = x + self._mlp(layer, x)
        return self._logits(x)

    def _additive_mask(self, visible: torch.Tensor, rows: int) -> torch.Tensor:
        """`[B, keys]` visibility as an additive mask `[B * kv_heads, group, keys]`."""
        kv_heads = self.config.num_key_value_heads
        keys = int(visible.shape[1])
        return (
            torch.zeros(visible.shape, dtype=torch.float32)
            .masked_fill_(~visible, float("-inf"))[:, None, None, :]
            .expand(rows, kv_heads, self.group, keys)
            .reshape(rows * kv_heads, self.group, keys)
        )


def load_gemma(directory: Path, backend: str | None = None, weight_only: str = "") -> GemmaModel:
    """The model of a prepared Gemma 3 directory (`config.json` + `model.safetensors`);
    `backend`: the matrix-product backend (`onednn` or `mkl`, default: `default_backend()`);
    `weight_only`: the precision of every linear layer's weights (see `Linear`)."""
    from safetensors.torch import load_file

    config = GemmaConfig.from_file(directory / "config.json")
    weights = load_file(str(directory / "model.safetensors"))
    return GemmaModel(config, weights, backend, weight_only)
