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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


class DecoderConfig(Protocol):
    """What the cache and the batcher read of a model's config (Llama's, Gemma 3's)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def num_hidden_layers(self) -> int: ...
    @property
    def num_key_value_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def max_position_embeddings(self) -> int: ...
    @property
    def eos_token_id(self) -> int | None: ...


class Decoder(Protocol):
    """A decoder the batcher drives (`LlamaModel`, `genai_triton.engine.gemma.GemmaModel`)."""

    @property
    def config(self) -> DecoderConfig: ...
    @property
    def backend(self) -> str: ...
    @property
    def weight_only(self) -> str: ...

    def prefill(
        self, cache: KVCache, slot: int, token_ids: torch.Tensor, start: int
    ) -> torch.Tensor: ...

    def prefill_many(
        self, cache: KVCache, segments: Sequence[tuple[int, torch.Tensor, int]]
    ) -> torch.Tensor: ...

    def decode(
        self,
        cache: KVCache,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        write_slots: torch.Tensor,
        length: int,
    ) -> torch.Tensor: ...


class KVCache:
    """Keys and values of every layer for `slots` sequences of up to `max_len` tokens, plus one
    scratch slot. The memory comes from anonymous mappings: zero-filled, and only the pages
    that sequences write to become resident, so a long `max_len` costs nothing until used."""

    def __init__(self, config: DecoderConfig, slots: int, max_len: int) -> None:
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


WEIGHT_ONLY_PRECISIONS = ("", "int8", "int4", "int8_dynamic")
"""Values of the `weight_only_precision` model parameter (TensorRT-LLM's `trtllm-build
--weight_only_precision` names, plus one CPU mode): see `Linear`."""

OUTLIER_THRESHOLD = 3.0
"""`int8_dynamic`: input features whose magnitude exceeds this during calibration skip
quantization. LLM.int8() uses 6 (measured on features found per call); with features found
once, SmolLM2's greedy answers stay closest to fp32's at 3 (27 of 32 tokens of a story prompt
the same, against 0 at 6 and none kept in fp32), at the same speed as 4."""

INT4_GROUP_SIZE = 32
"""Input features that share one int4 scale and zero point."""


class Linear:
    """`x @ weight.T` for small batches, in one of four precisions (`weight_only_precision`):

    - `""`: fp32 weights. The default backend packs the weight once for oneDNN
      (`mkldnn._linear_pointwise`): on these CPUs it is 2-3x faster than MKL's sgemm for 2-16
      rows, and each row's result does not depend on how many rows are in the batch (MKL's
      does), so a sequence decodes the same tokens alone or in any batch. `backend="mkl"` uses
      `F.linear`, exactly what `transformers` computes.
    - `"int8"`: weight-only int8 (TensorRT-LLM's W8A16): int8 weights with one fp scale per
      output feature, bf16 activations (`aten._weight_int8pack_mm`).
    - `"int4"`: weight-only int4 (W4A16): asymmetric int4 in groups of `INT4_GROUP_SIZE` input
      features, bf16 activations (`aten._weight_int4pack_mm_for_cpu`).
    - `"int8_dynamic"`: int8 weights per output feature, and activations quantized to int8
      per call with a scale taken from the batch (fbgemm's dynamic quantized linear, what
      `torch.ao.quantization.quantize_dynamic` makes): the fastest on CPUs with VNNI, and
      not weight-only, since activations lose precision too. Rows of one batch share the
      activation scale, so a sequence's tokens may depend on its batch neighbours.
    """

    __slots__ = ("_call", "out_features", "precision")

    def __init__(
        self,
        weight: torch.Tensor,
        backend: str,
        weight_only: str = "",
        outliers: torch.Tensor | None = None,
    ) -> None:
        """`outliers` (`int8_dynamic` only): input features multiplied in fp32, never
        quantized (found by `calibrate_outliers`)."""
        self.out_features = int(weight.shape[0])
        self.precision = weight_only
        weight = weight.to(torch.float32)
        if weight_only == "":
            self._call = self._fp32(weight, backend)
        elif weight_only == "int8":
            self._call = self._int8(weight)
        elif weight_only == "int4":
            self._call = self._int4(weight)
        elif weight_only == "int8_dynamic":
            self._call = self._int8_dynamic(weight, outliers)
        else:
            raise ValueError(
                f"unknown weight_only_precision {weight_only!r}; expected one of "
                f"{', '.join(repr(p) for p in WEIGHT_ONLY_PRECISIONS)}"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self._call(x)
        return result

    @staticmethod
    def _fp32(weight: torch.Tensor, backend: str) -> Any:
        if backend == "onednn":
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
            linear_pointwise = torch.ops.mkldnn._linear_pointwise

            def onednn(x: torch.Tensor) -> torch.Tensor:
                result: torch.Tensor = linear_pointwise(x, packed, None, "none", [], "")
                return result

            return onednn
        if backend == "mkl":
            return lambda x: F.linear(x, weight)
        raise ValueError(f"unknown linear backend {backend!r}")

    @staticmethod
    def _int8(weight: torch.Tensor) -> Any:
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bf16_scales = scales.to(torch.bfloat16)
        int8_mm = torch._weight_int8pack_mm

        def int8(x: torch.Tensor) -> torch.Tensor:
            return int8_mm(x.to(torch.bfloat16), quantized, bf16_scales).to(torch.float32)

        return int8

    @staticmethod
    def _int4(weight: torch.Tensor) -> Any:
        rows, features = weight.shape
        group = INT4_GROUP_SIZE
        if features % group:
            raise ValueError(f"int4 needs input features divisible by {group}, got {features}")
        grouped = weight.view(rows, features // group, group)
        low = grouped.amin(dim=-1, keepdim=True)
        high = grouped.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)
        levels = torch.round((grouped - low) / scale).clamp(0, 15).to(torch.int32)
        # The kernel computes (level - 8) * scale + zero: the zero is the group's midpoint.
        zero = low + 8 * scale
        packed = torch._convert_weight_to_int4pack_for_cpu(levels.view(rows, features), 1)
        scales_and_zeros = (
            torch.stack([scale.view(rows, -1).t(), zero.view(rows, -1).t()], dim=-1)
            .contiguous()
            .to(torch.bfloat16)
        )
        int4_mm = torch._weight_int4pack_mm_for_cpu

        def int4(x: torch.Tensor) -> torch.Tensor:
            return int4_mm(x.to(torch.bfloat16), packed, group, scales_and_zeros).to(torch.float32)

        return int4

    @staticmethod
    def _int8_dynamic(weight: torch.Tensor, outliers: torch.Tensor | None) -> Any:
        rows = weight.shape[0]
        channels = outliers if outliers is not None else torch.zeros(0, dtype=torch.long)
        inlier_weight = weight.index_fill(1, channels, 0.0) if channels.numel() else weight
        scales = (inlier_weight.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensor creation is deprecated, not gone
            quantized = torch.quantize_per_channel(
                inlier_weight, scales, torch.zeros(rows, dtype=torch.long), 0, torch.qint8
            )
            params = torch.ops.quantized.linear_prepack(quantized, None)
        linear_dynamic = torch.ops.quantized.linear_dynamic
        if not channels.numel():

            def int8_dynamic(x: torch.Tensor) -> torch.Tensor:
                result: torch.Tensor = linear_dynamic(x.contiguous(), params, False)
                return result

            return int8_dynamic
        outlier_weight = weight.index_select(1, channels).t().contiguous()  # [k, out]

        def int8_dynamic_with_outliers(x: torch.Tensor) -> torch.Tensor:
            # LLM.int8()'s decomposition: the few input features that carry most of the
            # magnitude go through fp32; the rest are quantized with a scale they no longer
            # dominate.
            x = x.contiguous()
            result: torch.Tensor = linear_dynamic(x.index_fill(1, channels, 0.0), params, False)
            return result.addmm_(x.index_select(1, channels), outlier_weight)

        return int8_dynamic_with_outliers


class _InputRange:
    """Wraps a `Linear` and records the largest magnitude each input feature reaches."""

    __slots__ = ("amax", "linear")

    def __init__(self, linear: Linear) -> None:
        self.linear = linear
        self.amax: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.detach().abs().amax(dim=0)
        self.amax = seen if self.amax is None else torch.maximum(self.amax, seen)
        return self.linear(x)


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
        self,
        config: LlamaConfig,
        weights: dict[str, torch.Tensor],
        backend: str | None = None,
        weight_only: str = "",
        calibration_ids: Sequence[int] = (),
    ) -> None:
        """`weight_only`: see `Linear`. For `int8_dynamic` the model first runs fp32 over
        `calibration_ids` (a prompt, or `CALIBRATION_TEXT` tokenized by `load_model`) and
        keeps in fp32 the input features of each product that go beyond `OUTLIER_THRESHOLD`
        there (`calibrate_outliers`)."""
        self.config = config
        self.backend = backend or default_backend()
        self.weight_only = weight_only
        dynamic = weight_only == "int8_dynamic"
        precision = "" if dynamic else weight_only
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
        self._raw: dict[str, torch.Tensor] = {}
        head = self.embed if c.tie_word_embeddings else take("lm_head.weight")
        self._raw["lm_head"] = head
        self.lm_head = Linear(head, self.backend, precision)
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
            o = take(p + "self_attn.o_proj.weight")
            down = take(p + "mlp.down_proj.weight")
            for name, tensor in (("qkv", qkv), ("o", o), ("gate_up", gate_up), ("down", down)):
                self._raw[f"{i}.{name}"] = tensor
            self.layers.append(
                _Layer(
                    take(p + "input_layernorm.weight"),
                    Linear(qkv, self.backend, precision),
                    Linear(o, self.backend, precision),
                    take(p + "post_attention_layernorm.weight"),
                    Linear(gate_up, self.backend, precision),
                    Linear(down, self.backend, precision),
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
        self.outlier_features = 0
        """Input features kept in fp32 over every product (`int8_dynamic`)."""
        if dynamic:
            self.calibrate_outliers(calibration_ids or list(range(1, 65)))
        self._raw.clear()

    _PRODUCTS = ("qkv", "o", "gate_up", "down")

    def calibrate_outliers(self, token_ids: Sequence[int]) -> None:
        """Runs the fp32 products over `token_ids`, then replaces every product by its
        `int8_dynamic` form with the input features that exceeded `OUTLIER_THRESHOLD` kept in
        fp32 (LLM.int8(): such features are few and the same from one input to the next)."""
        ranges: dict[str, _InputRange] = {"lm_head": _InputRange(self.lm_head)}
        self.lm_head = ranges["lm_head"]  # type: ignore[assignment]
        for i, layer in enumerate(self.layers):
            for name in self._PRODUCTS:
                ranges[f"{i}.{name}"] = _InputRange(getattr(layer, name))
                setattr(layer, name, ranges[f"{i}.{name}"])
        ids = torch.tensor(list(token_ids)[: self.config.max_position_embeddings - 1])
        with torch.inference_mode():
            self.prefill_many(KVCache(self.config, 1, len(ids) + 1), [(0, ids, 0)])

        def quantized(key: str) -> Linear:
            amax = ranges[key].amax
            assert amax is not None
            outliers = (amax > OUTLIER_THRESHOLD).nonzero().view(-1)
            self.outlier_features += int(outliers.numel())
            return Linear(self._raw[key], self.backend, "int8_dynamic", outliers)

        self.lm_head = quantized("lm_head")
        for i, layer in enumerate(self.layers):
            for name in self._PRODUCTS:
                setattr(layer, name, quantized(f"{i}.{name}"))

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
        return self.prefill_many(cache, [(slot, token_ids, start)])[0]

    def prefill_many(
        self, cache: KVCache, segments: Sequence[tuple[int, torch.Tensor, int]]
    ) -> torch.Tensor:
        """Prompt chunks of several sequences in one forward: each segment `(slot, token_ids,
        start)` runs its tokens at positions `start ..` of its slot. The matrix products take
        every segment's tokens as one batch; attention runs per segment (causal over the
        slot's earlier positions and the chunk). Returns the logits `[segments, vocab]` of each
        segment's last position."""
        c = self.config
        heads, kv_heads, dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        spans: list[tuple[int, int, int, int]] = []  # slot, start, end, offset in the batch
        positions: list[torch.Tensor] = []
        offset = 0
        for slot, token_ids, begin in segments:
            n = int(token_ids.shape[0])
            if n < 1:
                raise ValueError("a prefill segment needs at least one token")
            if begin + n > cache.max_len:
                raise ValueError(
                    f"positions up to {begin + n} exceed the cache length {cache.max_len}"
                )
            spans.append((slot, begin, begin + n, offset))
            positions.append(torch.arange(begin, begin + n))
            offset += n
        total = offset
        position = torch.cat(positions) if len(positions) > 1 else positions[0]
        cos = self.cos[position].unsqueeze(1)  # [total, 1, half]
        sin = self.sin[position].unsqueeze(1)
        masks: list[torch.Tensor | None] = []
        for _, begin, end, _ in spans:
            if begin == 0:
                masks.append(None)
            else:
                rows = torch.arange(begin, end).unsqueeze(1)
                masks.append(torch.arange(end).unsqueeze(0) <= rows)  # [n, end]
        ids = torch.cat([t for _, t, _ in segments]) if len(segments) > 1 else segments[0][1]
        x = F.embedding(ids, self.embed)  # [total, hidden]
        qk_size = self.q_size + self.kv_size
        for index, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer.input_norm)
            qkv = layer.qkv(h)
            qk = self._rotate(qkv[:, :qk_size].view(total, heads + kv_heads, dim), cos, sin)
            v_all = qkv[:, qk_size:].view(total, kv_heads, dim)
            outputs: list[torch.Tensor] = []
            for (slot, begin, end, at), mask in zip(spans, masks, strict=True):
                n = end - begin
                cache.k[index, slot, :, begin:end] = qk[at : at + n, heads:].transpose(0, 1)
                cache.v[index, slot, :, begin:end] = v_all[at : at + n].transpose(0, 1)
                attention = F.scaled_dot_product_attention(
                    qk[at : at + n, :heads].transpose(0, 1).unsqueeze(0),
                    cache.k[index, slot, :, :end].unsqueeze(0),
                    cache.v[index, slot, :, :end].unsqueeze(0),
                    attn_mask=mask,
                    is_causal=mask is None,
                    scale=self.scale,
                    enable_gqa=True,
                )  # [1, heads, n, dim]
                outputs.append(attention[0].transpose(0, 1).reshape(n, self.q_size))
            x = x + layer.o(torch.cat(outputs) if len(outputs) > 1 else outputs[0])
            x = x + self._mlp(layer, x)
        last = torch.tensor([at + end - begin - 1 for _, begin, end, at in spans])
        return self.lm_head(self._rms_norm(x.index_select(0, last), self.norm))

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


def load_model(directory: Path, backend: str | None = None, weight_only: str = "") -> Decoder:
    """The model of a prepared directory (`config.json` + `model.safetensors`): a `LlamaModel`,
    or a `GemmaModel` for `model_type` gemma3_text. `backend` is the matrix-product backend
    (`onednn` or `mkl`, default: `default_backend()`), `weight_only` the precision of the
    matrix products' weights (`Linear`)."""

    data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if str(data.get("model_type", "llama")).startswith("gemma3"):
        from genai_triton.engine.gemma import load_gemma

        return load_gemma(directory, backend, weight_only)
    return load_llama(directory, backend, weight_only)


def load_llama(directory: Path, backend: str | None = None, weight_only: str = "") -> LlamaModel:
    """The `LlamaModel` of a prepared directory (see `load_model`)."""
    from safetensors.torch import load_file

    config = LlamaConfig.from_file(directory / "config.json")
    weights = load_file(str(directory / "model.safetensors"))
    calibration: list[int] = []
    if weight_only == "int8_dynamic":
        calibration = calibration_ids(directory)
    return LlamaModel(config, weights, backend, weight_only, calibration)


CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; "
    'Neil Armstrong said: "That\'s one small step for man." Here is a list: 1) apples, '
    '2) bread, 3) coffee. def add(a, b):\n    return a + b\n{"name": "Ada", "age": 36}'
)
"""Text the int8_dynamic calibration runs (prose, digits, punctuation, code, JSON)."""


def calibration_ids(directory: Path) -> list[int]:
    """`CALIBRATION_TEXT` as a user turn of the model's chat template (where it has one), in
    the model's tokens."""
    from genai_triton.tokenization import TextTokenizer

    tokenizer = TextTokenizer(directory)
    if tokenizer.chat_template:
        question = [{"role": "user", "content": CALIBRATION_TEXT}]
        return tokenizer.encode(tokenizer.apply_chat_template(question)) + tokenizer.encode(
            "Sure! " + CALIBRATION_TEXT
        )
    return tokenizer.prompt_ids(CALIBRATION_TEXT)
