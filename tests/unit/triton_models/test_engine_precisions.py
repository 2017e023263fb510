"""The engine's matrix-product precisions (`weight_only_precision`: fp32, int8 and int4
weight-only, int8 dynamic) and its batched prefill, on the real SmolLM2 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from genai_triton.engine import Engine, EngineRequest, KVCache, load_model
from genai_triton.engine.model import WEIGHT_ONLY_PRECISIONS, Linear
from genai_triton.tokenization import TextTokenizer

from tests.support.smollm2 import smollm2_dir

QUESTIONS = (
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return smollm2_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer(model_dir)


@pytest.mark.parametrize("precision", [p for p in WEIGHT_ONLY_PRECISIONS if p])
def test_quantized_products_stay_close_to_fp32(precision: str) -> None:
    torch.manual_seed(0)
    weight = torch.randn(256, 192) * 0.05
    exact = Linear(weight, "mkl")
    quantized = Linear(weight, "onednn", precision)
    for rows in (1, 5, 16):
        x = torch.randn(rows, 192)
        reference = exact(x)
        error = (quantized(x) - reference).norm() / reference.norm()
        # int8 with a scale per output feature loses ~1% at most; int4 in groups of 32 ~10%.
        assert error < (0.15 if precision == "int4" else 0.03), (precision, rows, error)
        assert quantized(x).dtype == torch.float32


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="weight_only_precision 'fp8'"):
        Linear(torch.zeros(4, 32), "onednn", "fp8")


def test_batched_prefill_equals_one_prefill_per_sequence(
    model_dir: Path, tokenizer: TextTokenizer
) -> None:
    model = load_model(model_dir)
    prompts = [
        torch.tensor(
            tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}]))
        )
        for q in QUESTIONS
    ]
    alone_cache = KVCache(model.config, 4, 256)
    alone = torch.stack([model.prefill(alone_cache, i, p, 0) for i, p in enumerate(prompts)])
    together_cache = KVCache(model.config, 4, 256)
    # The second sequence continues from a first chunk, as chunked prefill does.
    first, rest = prompts[1][:7], prompts[1][7:]
    model.prefill(together_cache, 1, first, 0)
    together = model.prefill_many(
        together_cache, [(0, prompts[0], 0), (1, rest, 7), (2, prompts[2], 0)]
    )
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    for slot, prompt in enumerate(prompts):
        n = len(prompt)
        torch.testing.assert_close(
            together_cache.k[:, slot, :, :n], alone_cache.k[:, slot, :, :n], rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("precision", ["int8", "int8_dynamic"])
def test_greedy_answers_agree_with_fp32(
    model_dir: Path, tokenizer: TextTokenizer, precision: str
) -> None:
    """Quantized weights change logits a little: greedy answers keep their start (where the
    model is sure) and name the same capital."""
    answers = {}
    for name in ("", precision):
        engine = Engine(load_model(model_dir, None, name), slots=4, max_len=256, threads=2)
        engine.start()
        texts = []
        for question in QUESTIONS:
            prompt = tokenizer.encode(
                tokenizer.apply_chat_template([{"role": "user", "content": question}])
            )
            updates = list(engine.generate(EngineRequest(prompt, 12, end_id=tokenizer.eos_id)))
            texts.append([t for u in updates for t in u.token_ids])
        engine.stop()
        answers[name] = texts
    assert "Paris" in tokenizer.decode(answers[precision][0])
    assert all(a[:2] == b[:2] for a, b in zip(answers[""], answers[precision], strict=True))
